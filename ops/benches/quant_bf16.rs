//! The bf16 GEMM (`fff_ops::quant::bf16`) against the f32 panel GEMM (`fff_ops::panels`) on the
//! projections of a BERT-base encoder at batch 1 and 8 of sequence 128, on 1 and 2 threads, in the
//! same run, variants alternating: median milliseconds, GFLOP/s and the speed-up over f32 of every
//! bf16 kernel this CPU runs (AMX tiles, `vdpbf16ps`, then the widening fallback on each instruction set: what
//! CPUs without AVX-512 BF16 run). One thread runs on the calling thread, as a one-thread model
//! does, and is also timed in CPU time of that thread, which other processes sharing the cores do
//! not inflate.
//! `cargo bench -p fff-ops --bench quant_bf16 [-- MxKxN,..]`.

use std::time::Instant;

use fff_ops::panels::{best_cols, gemm_panels, pack_panels_of, Panels};
use fff_ops::quant::bf16::{gemm_bf16_with, kernels, pack, Bf16Weights};
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
    let kernels = kernels();
    println!(
        "bf16 kernels, best first: {kernels:?}; f32 panels {} columns wide",
        best_cols()
    );
    println!();
    print!("| m x k x n | threads | clock | f32 panels ms | GFLOP/s |");
    for k in &kernels {
        print!(" {k:?} ms | GFLOP/s | speed-up |");
    }
    println!();
    println!("|{}", " --- |".repeat(5 + 3 * kernels.len()));
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
            // Wall and CPU seconds of each call, per variant: f32, then each kernel.
            let mut times =
                vec![(Vec::with_capacity(runs), Vec::with_capacity(runs)); 1 + kernels.len()];
            let mut timed = |v: usize, f: &mut dyn FnMut()| {
                let (t, c) = (Instant::now(), thread_cpu());
                f();
                times[v].1.push(thread_cpu() - c);
                times[v].0.push(t.elapsed().as_secs_f64());
            };
            let all = || {
                for _ in 0..runs + 2 {
                    timed(0, &mut || gemm_panels(&x, m, panels, &mut out, 0.0));
                    for (v, &kernel) in kernels.iter().enumerate() {
                        timed(1 + v, &mut || {
                            gemm_bf16_with(kernel, &x, m, weights, Epilogue::default(), &mut out)
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
            let times: Vec<(f64, f64)> = times
                .into_iter()
                .map(|(wall, cpu)| (median(wall), median(cpu)))
                .collect();
            let row = |clock: &str, of: fn(&(f64, f64)) -> f64| {
                let f32_time = of(&times[0]);
                print!(
                    "| {m}x{k}x{n} | {threads} | {clock} | {:.3} | {:.1} |",
                    f32_time * 1e3,
                    flops / f32_time / 1e9
                );
                for t in &times[1..] {
                    let t = of(t);
                    print!(
                        " {:.3} | {:.1} | {:.2}x |",
                        t * 1e3,
                        flops / t / 1e9,
                        f32_time / t
                    );
                }
                println!();
            };
            row("wall", |t| t.0);
            if threads == 1 {
                row("cpu", |t| t.1);
            }
        }
    }
}
