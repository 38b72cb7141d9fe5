//! GEMM throughput on the shapes of a BERT-base encoder at sequence 128 (and 1024 rows), on 1 and 2
//! threads, in GFLOP/s. `cargo bench -p fff-ops --bench gemm [-- MxKxN,..]`.

use std::time::Instant;

use fff_ops::matmul::{gemm, MatRef};

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
                (1024, 768, 3072),
                (128, 64, 128),
                (128, 128, 64),
            ],
        };
    println!("| m x k x n | threads | ms | GFLOP/s |");
    println!("| --- | --- | --- | --- |");
    for &(m, k, n) in &shapes {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.1).collect();
        let mut out = vec![0.0f32; m * n];
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            let flops = 2.0 * (m * n * k) as f64;
            let runs = ((2e10 / flops) as usize).clamp(5, 2000);
            let mut times = Vec::with_capacity(runs);
            pool.install(|| {
                for _ in 0..runs + 2 {
                    let t = Instant::now();
                    gemm(
                        MatRef::row_major(&a, m, k),
                        MatRef::row_major(&b, k, n),
                        &mut out,
                        1.0,
                        0.0,
                    );
                    times.push(t.elapsed().as_secs_f64());
                }
            });
            times.sort_by(f64::total_cmp);
            let med = times[times.len() / 2];
            println!(
                "| {m}x{k}x{n} | {threads} | {:.3} | {:.1} |",
                med * 1e3,
                flops / med / 1e9
            );
        }
    }
}
