//! int8 GEMM (`fff_ops::quant::int8`) against the f32 panel GEMM (`fff_ops::panels`) on the
//! projection shapes of a BERT-base encoder at sequence 128, batch 1 and 8 (128 and 1024 rows), on 1
//! and 2 threads, in the same run, variants alternating, weights warm in cache. "int8" multiplies
//! rows quantised beforehand; "+ quantise" includes quantising the f32 rows (`linear_i8`). Then
//! every int8 kernel this CPU runs (AMX-INT8 first where the CPU and OS allow it), on 1 and 2
//! threads. "u8" is the path of ONNX-quantised models (`gemm_u8`: u8 activations with one zero
//! point, weights of any int8 code, `pack_codes`); "+ dynamic" includes DynamicQuantizeLinear of
//! the f32 rows (`dynamic_quantize_u8`). Prints Markdown tables of medians, in GMAC/s
//! (multiply-adds: rows x k x n).
//!
//!   cargo bench -p fff-ops --bench quant [-- ROWSxKxN,..]

use std::time::Instant;

use fff_ops::panels::{best_cols, gemm_panels, pack_panels_of, Panels};
use fff_ops::quant::int8::{
    dynamic_quantize_u8, gemm_i8, gemm_i8_with, gemm_u8, gemm_u8_with, kernels, linear_i8,
    pack_codes, quantize_pack, I8Kernel, PackedI8, QuantRows,
};
use fff_ops::quant::Epilogue;

/// The weights as ONNX brings them: codes over the whole int8 range, one scale per column.
fn onnx_weights(k: usize, n: usize) -> PackedI8 {
    let codes: Vec<i8> = (0..k * n).map(|i| (i * 37 % 256) as u8 as i8).collect();
    pack_codes(&codes, &vec![1e-3; n], k, n).expect("codes of [k, n]")
}

fn median(mut t: Vec<f64>) -> f64 {
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
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
                (1, 768, 768),
                (1024, 768, 768),
                (1024, 768, 3072),
                (1024, 3072, 768),
            ],
        };
    println!("int8 kernel: {:?}", I8Kernel::best());
    println!();
    println!("| rows x k x n | threads | f32 panels ms | GMAC/s | int8 ms | GMAC/s | speed-up | + quantise ms | speed-up | u8 ms | GMAC/s | + dynamic ms | speed-up |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for &(m, k, n) in &shapes {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1 - 0.6).collect();
        let w: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
        let cols = best_cols();
        let panels = pack_panels_of(&w, k, n, cols);
        let panels = Panels::new(&panels, k, n, cols).expect("packed");
        let packed = quantize_pack(&w, k, n);
        let onnx = onnx_weights(k, n);
        let mut q = QuantRows::default();
        q.quantize(&x, m, k);
        let mut xu = vec![0u8; m * k];
        let (_, zero) = dynamic_quantize_u8(&x, &mut xu);
        let mut out = vec![0.0f32; m * n];
        let macs = (m * n * k) as f64;
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            let runs = ((2e10 / macs) as usize).clamp(10, 2000);
            let mut times = [(); 5].map(|_| Vec::with_capacity(runs));
            let mut codes = vec![0u8; m * k];
            pool.install(|| {
                for _ in 0..runs + 2 {
                    let t = Instant::now();
                    gemm_panels(&x, m, panels, &mut out, 0.0);
                    times[0].push(t.elapsed().as_secs_f64());
                    let t = Instant::now();
                    gemm_i8(&q, packed.view(), Epilogue::default(), &mut out);
                    times[1].push(t.elapsed().as_secs_f64());
                    let t = Instant::now();
                    linear_i8(&x, m, packed.view(), Epilogue::default(), &mut out);
                    times[2].push(t.elapsed().as_secs_f64());
                    let t = Instant::now();
                    gemm_u8(&xu, m, zero, onnx.view(), Epilogue::default(), &mut out);
                    times[3].push(t.elapsed().as_secs_f64());
                    let t = Instant::now();
                    let (_, z) = dynamic_quantize_u8(&x, &mut codes);
                    gemm_u8(&codes, m, z, onnx.view(), Epilogue::default(), &mut out);
                    times[4].push(t.elapsed().as_secs_f64());
                }
            });
            let [f, i, l, u, d] = times.map(median);
            println!(
                "| {m}x{k}x{n} | {threads} | {:.3} | {:.0} | {:.3} | {:.0} | {:.2}x | {:.3} | {:.2}x | {:.3} | {:.0} | {:.3} | {:.2}x |",
                f * 1e3,
                macs / f / 1e9,
                i * 1e3,
                macs / i / 1e9,
                f / i,
                l * 1e3,
                f / l,
                u * 1e3,
                macs / u / 1e9,
                d * 1e3,
                f / d
            );
        }
    }
    println!();
    println!("Every kernel, rows quantised beforehand, kernels alternating: GMAC/s of the int8 path (QuantRows) and of the u8 path (gemm_u8)");
    println!();
    let all = kernels();
    print!("| rows x k x n | threads |");
    for kernel in &all {
        print!(" {kernel:?} int8 | u8 |");
    }
    println!();
    println!("| --- | --- |{}", " --- | --- |".repeat(all.len()));
    for &(m, k, n) in &shapes {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1 - 0.6).collect();
        let w: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
        let packed = quantize_pack(&w, k, n);
        let onnx = onnx_weights(k, n);
        let mut q = QuantRows::default();
        q.quantize(&x, m, k);
        let mut xu = vec![0u8; m * k];
        let (_, zero) = dynamic_quantize_u8(&x, &mut xu);
        let mut out = vec![0.0f32; m * n];
        let macs = (m * n * k) as f64;
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            // The slow kernels run three times only; the fast ones alternate for about 2e10
            // multiply-adds each.
            let slow = |kernel: I8Kernel| matches!(kernel.name(), "portable" | "avx2");
            let runs = ((2e10 / macs) as usize).clamp(10, 2000);
            let mut times = vec![[Vec::with_capacity(runs), Vec::with_capacity(runs)]; all.len()];
            pool.install(|| {
                for run in 0..runs + 2 {
                    for (kernel, [ti, tu]) in all.iter().zip(&mut times) {
                        if slow(*kernel) && run >= 3 {
                            continue;
                        }
                        let t = Instant::now();
                        gemm_i8_with(*kernel, &q, packed.view(), Epilogue::default(), &mut out);
                        ti.push(t.elapsed().as_secs_f64());
                        let t = Instant::now();
                        let epi = Epilogue::default();
                        gemm_u8_with(*kernel, &xu, m, zero, onnx.view(), epi, &mut out);
                        tu.push(t.elapsed().as_secs_f64());
                    }
                }
            });
            print!("| {m}x{k}x{n} | {threads} |");
            for [ti, tu] in times {
                let (ti, tu) = (median(ti), median(tu));
                print!(" {:.0} | {:.0} |", macs / ti / 1e9, macs / tu / 1e9);
            }
            println!();
        }
    }
}
