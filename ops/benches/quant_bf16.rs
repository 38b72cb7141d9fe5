//! The bf16 GEMM (`fff_ops::quant::bf16`) against the f32 panel GEMM (`fff_ops::panels`) on the
//! projections of a BERT-base encoder at batch 1 and 8 of sequence 128, on 1 and 2 threads, in the
//! same run, variants alternating: median milliseconds, GFLOP/s and the bf16 speed-up. The widening
//! fallback (what CPUs with AVX-512F but not AVX-512 BF16 run) is timed too when it is not the best
//! kernel. One thread runs on the calling thread, as a one-thread model does, and is also timed in
//! CPU time of that thread, which other processes sharing the cores do not inflate.
//! `cargo bench -p fff-ops --bench quant_bf16 [-- MxKxN,..]`.

use std::time::Instant;

use fff_ops::panels::{best_cols, gemm_panels, pack_panels_of, Panels};
use fff_ops::quant::bf16::{best_kernel, gemm_bf16_with, kernels, pack, Bf16Weights};
use fff_ops::quant::Epilogue;

/// CPU time of the calling thread, in seconds.
fn thread_cpu() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write; the clock exists on every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

fn median(mut t: Vec<f64>) -> f64 {
    t.sort_by(f64::total_cmp);
    t.get(t.len() / 2).copied().unwrap_or(f64::NAN)
}

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
                (1024, 768, 768),
                (1024, 768, 3072),
                (1024, 3072, 768),
            ],
        };
    let best = best_kernel();
    // The widening fallback on the widest instruction set, when the best kernel is another one.
    let fallback = kernels()
        .into_iter()
        .find(|k| *k != best && format!("{k:?}").starts_with("widen"));
    println!(
        "bf16 kernel: {best:?}; fallback: {fallback:?}; f32 panels {} columns wide",
        best_cols()
    );
    println!();
    println!("| m x k x n | threads | clock | f32 panels ms | GFLOP/s | bf16 ms | GFLOP/s | speed-up | fallback ms | speed-up |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for &(m, k, n) in &shapes {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1 - 0.6).collect();
        let w: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
        let cols = best_cols();
        let panels = pack_panels_of(&w, k, n, cols);
        let panels = Panels::new(&panels, k, n, cols).expect("packed");
        let packed = pack(&w, k, n);
        let weights = Bf16Weights::new(&packed, k, n).expect("packed");
        let mut out = vec![0.0f32; m * n];
        let flops = 2.0 * (m * n * k) as f64;
        let runs = ((4e9 / flops) as usize).clamp(7, 400);
        for threads in [1, 2] {
            // Wall and CPU seconds of each call, per variant.
            let mut times = [(); 3].map(|_| (Vec::with_capacity(runs), Vec::with_capacity(runs)));
            let mut timed = |v: usize, f: &mut dyn FnMut()| {
                let (t, c) = (Instant::now(), thread_cpu());
                f();
                times[v].1.push(thread_cpu() - c);
                times[v].0.push(t.elapsed().as_secs_f64());
            };
            let all = || {
                for _ in 0..runs + 2 {
                    timed(0, &mut || gemm_panels(&x, m, panels, &mut out, 0.0));
                    timed(1, &mut || {
                        gemm_bf16_with(best, &x, m, weights, Epilogue::default(), &mut out)
                    });
                    if let Some(f) = fallback {
                        timed(2, &mut || {
                            gemm_bf16_with(f, &x, m, weights, Epilogue::default(), &mut out)
                        });
                    }
                }
            };
            if threads == 1 {
                fff_ops::threads::serial(all);
            } else {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("pool")
                    .install(all);
            }
            let times = times.map(|(wall, cpu)| (median(wall), median(cpu)));
            let row = |clock: &str, [a, b, c]: [f64; 3]| {
                println!(
                    "| {m}x{k}x{n} | {threads} | {clock} | {:.3} | {:.1} | {:.3} | {:.1} | {:.2}x | {:.3} | {:.2}x |",
                    a * 1e3,
                    flops / a / 1e9,
                    b * 1e3,
                    flops / b / 1e9,
                    a / b,
                    c * 1e3,
                    a / c
                )
            };
            row("wall", times.map(|t| t.0));
            if threads == 1 {
                row("cpu", times.map(|t| t.1));
            }
        }
    }
}
