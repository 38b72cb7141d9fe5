//! Layer normalisation over the last axis.

use rayon::prelude::*;

use crate::simd::on_best_isa;

/// Values per parallel task (about 30 µs of work): below this a thread hand-off, which costs tens of
/// µs when the other thread has gone to sleep, costs more than it saves. (At 128 rows of 768 two tasks
/// of 64 rows took 42 µs against 29 µs on one thread.)
const VALUES_PER_TASK: usize = 1 << 17;

/// Normalises each row of `x` (`rows x width`, row-major) into `out`:
/// `out = (x - mean) / sqrt(var + eps) * scale + bias`, the variance being the biased one, as ONNX's
/// `LayerNormalization` and PyTorch's `layer_norm` compute it. `bias` may be absent. Rows run in
/// parallel on the current rayon pool.
pub fn layer_norm(
    x: &[f32],
    width: usize,
    scale: &[f32],
    bias: Option<&[f32]>,
    eps: f32,
    out: &mut [f32],
) {
    assert_eq!(x.len(), out.len());
    out.copy_from_slice(x);
    layer_norm_in_place(out, width, scale, bias, eps);
}

/// [`layer_norm`] of the rows of `data`, written over them.
pub fn layer_norm_in_place(
    data: &mut [f32],
    width: usize,
    scale: &[f32],
    bias: Option<&[f32]>,
    eps: f32,
) {
    assert_eq!(scale.len(), width);
    assert!(bias.is_none_or(|b| b.len() == width));
    if width == 0 {
        return;
    }
    let rows = |chunk: &mut [f32]| {
        for row in chunk.chunks_exact_mut(width) {
            normalise_row(row, scale, bias, eps);
        }
    };
    let task = (VALUES_PER_TASK / width).max(1) * width;
    if data.len() <= task || crate::threads::available() == 1 {
        rows(data)
    } else {
        data.par_chunks_mut(task).for_each(rows);
    }
}

on_best_isa!(
    /// One row in place, with the widest instruction set the CPU has.
    fn normalise_row(row: &mut [f32], scale: &[f32], bias: Option<&[f32]>, eps: f32) => normalise_row_generic
);

/// Lanes of the partial sums: one AVX-512 vector, two AVX2 ones.
const LANES: usize = 16;

/// Sums are taken of the values less the first one and the variance around the mean, so that rows
/// far from zero keep their precision.
#[inline(always)]
fn normalise_row_generic(row: &mut [f32], scale: &[f32], bias: Option<&[f32]>, eps: f32) {
    let n = row.len() as f32;
    // `v - shift` is exact for values near the first; `m` is the mean of those differences.
    let shift = row[0];
    let m = lane_sum(row, |v| v - shift) / n;
    let var = lane_sum(row, |v| (v - shift - m) * (v - shift - m)) / n;
    let inv = 1.0 / (var + eps).sqrt();
    match bias {
        Some(b) => {
            for ((v, &s), &c) in row.iter_mut().zip(scale).zip(b) {
                *v = (*v - shift - m) * inv * s + c;
            }
        }
        None => {
            for (v, &s) in row.iter_mut().zip(scale) {
                *v = (*v - shift - m) * inv * s;
            }
        }
    }
}

/// The sum of `f` over `row`, in [`LANES`] interleaved accumulators.
#[inline(always)]
fn lane_sum(row: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += f(v);
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a plain f64 computation, on rows far from zero and of odd widths.
    #[test]
    fn agrees_with_f64_reference() {
        // 400 x 768 is several parallel tasks.
        for &(rows, width, offset) in &[
            (1, 1, 0.0),
            (3, 37, 100.0),
            (40, 768, -3.0),
            (17, 5, 1e3),
            (400, 768, 0.5),
        ] {
            let x: Vec<f32> = (0..rows * width)
                .map(|i| offset + ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                .collect();
            let scale: Vec<f32> = (0..width).map(|i| 1.0 + i as f32 * 0.01).collect();
            let bias: Vec<f32> = (0..width).map(|i| i as f32 * -0.02).collect();
            let mut got = vec![0.0; x.len()];
            layer_norm(&x, width, &scale, Some(&bias), 1e-5, &mut got);
            // The portable body must agree too (the dispatched one ran above).
            let mut portable = x.clone();
            for row in portable.chunks_exact_mut(width) {
                normalise_row_generic(row, &scale, Some(&bias), 1e-5);
            }
            for (p, g) in portable.iter().zip(&got) {
                assert!(
                    (p - g).abs() <= 1e-5 * (1.0 + g.abs()),
                    "portable {p} vs {g}"
                );
            }
            for (r, row) in x.chunks(width).enumerate() {
                let mean = row.iter().map(|&v| v as f64).sum::<f64>() / width as f64;
                let var =
                    row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / width as f64;
                for (j, &v) in row.iter().enumerate() {
                    let want =
                        (v as f64 - mean) / (var + 1e-5).sqrt() * scale[j] as f64 + bias[j] as f64;
                    let g = got[r * width + j] as f64;
                    assert!((g - want).abs() < 1e-4 * (1.0 + want.abs()), "{rows}x{width}+{offset} row {r} col {j}: {g} vs {want}, x {v}, mean {mean}");
                }
            }
        }
    }
}
