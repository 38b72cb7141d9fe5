//! The memory floor of the tree kernel: how long fetching the weight rows a call needs takes, with no
//! arithmetic on them. A 1x11 layer at width 768 holds 4095 W_in rows and 4095 W_out rows of 3 KiB
//! (24 MiB in f32); a call on R rows with varying inputs needs the rows of every node its paths visit,
//! each at least once. Each run draws R random root-to-leaf paths, takes the nodes they visit, and
//! sums those nodes' W_in and W_out rows ([`fff_ops::simd::sum_rows`]) in the kernel's order (W_in by
//! level, then W_out), after reading the whole matrix in a random order to evict them. Also timed: the
//! same number of rows read from a set small enough for L2 (128 rows, 384 KiB, read once before), and
//! the fetched rows in address order. Prints a Markdown table of medians.
//!
//!   cargo bench -p fff-ops --bench weight_rows [-- ROWS,ROWS,...]

use std::collections::BTreeSet;
use std::time::Instant;

use fff_ops::simd::sum_rows;

const D: usize = 768;
const DEPTH: usize = 11;
const NODES: usize = (1 << (DEPTH + 1)) - 1;
const RUNS: usize = 41;

fn main() {
    let rows_list: Vec<usize> = std::env::args()
        .skip(1)
        .find(|a| a.chars().all(|c| c.is_ascii_digit() || c == ','))
        .map(|l| l.split(',').map(|v| v.parse().expect("ROWS")).collect())
        .unwrap_or_else(|| vec![1, 128, 2048, 16384]);
    // W_in and W_out as one matrix: rows 0..NODES and NODES..2 NODES.
    let w: Vec<f32> = (0..2 * NODES * D).map(|i| (i % 97) as f32 * 1e-3).collect();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    println!("| rows | nodes fetched | MiB | kernel's order ms | GB/s | same bytes from L2 ms | GB/s | address order ms | GB/s |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut sink = 0.0;
    for &rows in &rows_list {
        let mut kernel_order = Vec::with_capacity(RUNS);
        let mut l2 = Vec::with_capacity(RUNS);
        let mut ordered = Vec::with_capacity(RUNS);
        let mut fetched = 0;
        for _ in 0..RUNS {
            // The nodes the paths visit, level by level (node numbers grow with the level).
            let mut nodes = BTreeSet::new();
            for _ in 0..rows {
                let leaf = next() as usize % (1 << DEPTH);
                for level in 0..=DEPTH {
                    nodes.insert((1 << level) - 1 + (leaf >> (DEPTH - level)));
                }
            }
            let w_in: Vec<u32> = nodes.iter().map(|&n| n as u32).collect();
            let both: Vec<u32> = w_in
                .iter()
                .copied()
                .chain(w_in.iter().map(|&n| n + NODES as u32))
                .collect();
            fetched += w_in.len();
            // 128 rows (384 KiB) over and over: the same count of rows, all from L2 after the first.
            let small: Vec<u32> = (0..both.len() as u32).map(|k| k % 128).collect();
            let mut sorted = both.clone();
            sorted.sort_unstable();
            // Every row of the matrix in a random order, read before each timing: what the previous
            // read left cached is evicted.
            let mut evict: Vec<u32> = (0..2 * NODES as u32).collect();
            for i in (1..evict.len()).rev() {
                evict.swap(i, next() as usize % (i + 1));
            }
            for (times, picked, warm) in [
                (&mut kernel_order, &both, false),
                (&mut l2, &small, true),
                (&mut ordered, &sorted, false),
            ] {
                sink += sum_rows(&w, D, &evict);
                if warm {
                    sink += sum_rows(&w, D, &small[..small.len().min(128)]);
                }
                let start = Instant::now();
                sink += sum_rows(&w, D, picked);
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        // Nodes fetched, on average over the runs.
        let fetched = fetched.div_ceil(RUNS);
        let mib = 2.0 * fetched as f64 * (D * 4) as f64 / (1 << 20) as f64;
        let cell = |t: &mut Vec<f64>| {
            t.sort_by(f64::total_cmp);
            let ms = t[t.len() / 2];
            format!(
                "{ms:.4} | {:.1}",
                mib * (1 << 20) as f64 / (ms * 1e-3) / 1e9
            )
        };
        println!(
            "| {rows} | {fetched} of {NODES} | {mib:.2} | {} | {} | {} |",
            cell(&mut kernel_order),
            cell(&mut l2),
            cell(&mut ordered)
        );
    }
    // Keeps the sums live.
    assert!(sink.is_finite());
}
