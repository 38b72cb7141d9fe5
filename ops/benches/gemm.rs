//! GEMM on the shapes of a BERT-base encoder at sequence 128 (and 1, 16 and 1024 rows), on 1 and 2
//! threads: `X [m, k] . W [k, n]` with W row-major (the `gemm` crate packs it on every call) against W
//! packed into panels at compile time (`fff_ops::panels`, read in place), 64 columns wide as plans
//! store them and 16 wide as the runtime repacks them for CPUs without AVX-512, in the same run,
//! variants alternating. "warm" multiplies by one W, which then stays in cache; "cold" by one of as many
//! copies as fill 160 MiB, in turn, so that W comes from memory as a model's weights do.
//! `cargo bench -p fff-ops --bench gemm [-- MxKxN,..]`.

use std::time::Instant;

use fff_ops::matmul::{gemm, MatRef};
use fff_ops::panels::{best_cols, gemm_panels, pack_panels_of, Panels};

fn main() {
    let shapes: Vec<(usize, usize, usize)> =
        match std::env::args().skip(1).find(|a| a.contains('x')) {
            Some(list) => list
                .split(',')
                .map(|s| {
                    let d: Vec<usize> = s.split('x').map(|v| v.parse().expect("MxKxN")).collect();
                    (d[0], d[1], d[2])
                })
                .collect(),
            None => vec![
                (128, 768, 768),
                (128, 768, 3072),
                (128, 3072, 768),
                (1, 768, 768),
                (16, 768, 768),
                (1024, 768, 3072),
            ],
        };
    println!("The runtime's panel width on this CPU: {}", best_cols());
    println!();
    println!("| m x k x n | threads | weights | row-major ms | GFLOP/s | 64-col panels ms | speed-up | 16-col panels ms | speed-up |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for &(m, k, n) in &shapes {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1 - 0.6).collect();
        let copies = ((160 << 20) / (k * n * 4)).max(2);
        let rows: Vec<Vec<f32>> = (0..copies)
            .map(|c| (0..k * n).map(|i| ((i + c) % 7) as f32 * 0.1).collect())
            .collect();
        const WIDTHS: [usize; 2] = [64, 16];
        let panels: Vec<[Vec<f32>; 2]> = rows
            .iter()
            .map(|w| WIDTHS.map(|cols| pack_panels_of(w, k, n, cols)))
            .collect();
        let mut out = vec![0.0f32; m * n];
        let flops = 2.0 * (m * n * k) as f64;
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            for cold in [false, true] {
                let runs = ((1e10 / flops) as usize).clamp(2 * copies.min(50), 2000);
                let mut times = [(); 3].map(|_| Vec::with_capacity(runs));
                pool.install(|| {
                    for r in 0..runs + 2 {
                        let c = if cold { r % copies } else { 0 };
                        let t = Instant::now();
                        gemm(
                            MatRef::row_major(&x, m, k),
                            MatRef::row_major(&rows[c], k, n),
                            &mut out,
                            1.0,
                            0.0,
                        );
                        times[0].push(t.elapsed().as_secs_f64());
                        for (v, cols) in WIDTHS.into_iter().enumerate() {
                            let w = Panels::new(&panels[c][v], k, n, cols).expect("packed");
                            let t = Instant::now();
                            gemm_panels(&x, m, w, &mut out, 0.0);
                            times[1 + v].push(t.elapsed().as_secs_f64());
                        }
                    }
                });
                let [a, b, c] = times.map(|mut t| {
                    t.sort_by(f64::total_cmp);
                    t[t.len() / 2]
                });
                println!(
                    "| {m}x{k}x{n} | {threads} | {} | {:.3} | {:.1} | {:.3} | {:.2}x | {:.3} | {:.2}x |",
                    if cold { "cold" } else { "warm" },
                    a * 1e3,
                    flops / a / 1e9,
                    b * 1e3,
                    a / b,
                    c * 1e3,
                    a / c
                );
            }
        }
    }
}
