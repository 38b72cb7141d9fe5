//! Softmax over contiguous rows, vectorised: the row maximum and the sum of exponentials are kept in
//! one lane per vector slot, and the exponential is a branch-free polynomial ([`exp`]).

use crate::simd::on_best_isa;

/// `e^x` within 2 ulp for finite `x`, without branches so that loops over slices vectorise:
/// Cody–Waite reduction to `r` in [-ln2/2, ln2/2], a degree-6 polynomial for `e^r`, and the power of
/// two put into the exponent bits. Below -87.3 (where f32 results go subnormal) it returns 0, above
/// 88.3 infinity; NaN stays NaN.
#[inline(always)]
#[allow(clippy::excessive_precision)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_375;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to an integer and leaves it in the low mantissa bits, so neither the
    // rounding nor the exponent needs a float-to-int conversion (which does not vectorise).
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.3, 88.3);
    let shifted = xc * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_15e-4f32;
    p = p * r + 1.398_199_950_7e-3;
    p = p * r + 8.333_451_907_3e-3;
    p = p * r + 4.166_579_589_4e-2;
    p = p * r + 1.666_666_545_9e-1;
    p = p * r + 5.000_000_120_1e-1;
    let er = p * r * r + r + 1.0;
    let scale = f32::from_bits(shifted.to_bits().wrapping_sub(ROUND.to_bits() - 127) << 23);
    let y = er * scale;
    if x < -87.3 {
        0.0
    } else if x > 88.3 {
        f32::INFINITY
    } else {
        y
    }
}

/// Lanes of the partial maxima and sums: one AVX-512 vector, two AVX2 ones.
const LANES: usize = 16;

/// Replaces each row of `x` (length `width`) by its softmax, subtracting the row maximum first so
/// that large logits do not overflow. A row that is all `-inf` becomes NaN, as in ONNX Runtime.
pub fn softmax_rows(x: &mut [f32], width: usize) {
    if width == 0 {
        return;
    }
    softmax_rows_widest(x, width)
}

on_best_isa!(fn softmax_rows_widest(x: &mut [f32], width: usize) => softmax_rows_generic);

#[inline(always)]
fn softmax_rows_generic(x: &mut [f32], width: usize) {
    for row in x.chunks_exact_mut(width) {
        let max = row_max(row);
        let mut sums = [0.0f32; LANES];
        let mut chunks = row.chunks_exact_mut(LANES);
        for chunk in &mut chunks {
            for (v, s) in chunk.iter_mut().zip(&mut sums) {
                *v = exp(*v - max);
                *s += *v;
            }
        }
        let mut sum = 0.0f32;
        for v in chunks.into_remainder() {
            *v = exp(*v - max);
            sum += *v;
        }
        let inv = 1.0 / (sum + halves(sums, |a, b| a + b));
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

/// The maximum of a row (`-inf` for an all-`-inf` row), in lanes.
#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut maxes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, &v) in maxes.iter_mut().zip(chunk) {
            *m = if v > *m { v } else { *m };
        }
    }
    let tail = chunks.remainder().iter().copied();
    tail.fold(halves(maxes, |a, b| if b > a { b } else { a }), f32::max)
}

/// `f` over the lanes, folded in halves (8 pairs, 4, 2, 1), which compiles to a few vector shuffles
/// instead of a chain of sixteen dependent scalar steps.
#[inline(always)]
fn halves(mut v: [f32; LANES], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            v[i] = f(v[i], v[i + width]);
        }
        width /= 2;
    }
    v[0]
}

/// Log-softmax of each row, in place.
pub fn log_softmax_rows(x: &mut [f32], width: usize) {
    if width == 0 {
        return;
    }
    for row in x.chunks_exact_mut(width) {
        let max = row_max(row);
        let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
        let log_sum = sum.ln() + max;
        for v in row.iter_mut() {
            *v -= log_sum;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_2_ulp_of_libm() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let exact = (x as f64).exp();
            let rel = ((exp(x) as f64) - exact).abs() / exact;
            worst = worst.max(rel);
            x += 0.000_37;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-1e30), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(0.0), 1.0);
    }

    /// Softmax in f64 with the standard library's exponential.
    fn reference(row: &[f32]) -> Vec<f64> {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let e: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        e.iter().map(|v| v / sum).collect()
    }

    #[test]
    fn softmax_matches_f64_reference_on_every_width() {
        for width in [1, 2, 7, 15, 16, 17, 33, 128, 131] {
            let rows = 3;
            let mut x: Vec<f32> = (0..rows * width)
                .map(|i| ((i * 7919 % 113) as f32 - 56.0) * 0.37)
                .collect();
            // A masked-out position, as an additive mask writes it.
            if width > 1 {
                x[width / 2] = f32::NEG_INFINITY;
            }
            let expected: Vec<f64> = x.chunks(width).flat_map(reference).collect();
            type Kernel = fn(&mut [f32], usize);
            let kernels: [(&str, Kernel); 2] = [
                ("dispatched", softmax_rows),
                ("portable", softmax_rows_generic),
            ];
            for (name, kernel) in kernels {
                let mut y = x.clone();
                kernel(&mut y, width);
                for (i, (&got, &want)) in y.iter().zip(&expected).enumerate() {
                    assert!(
                        (got as f64 - want).abs() <= 1e-6 * want.max(1e-3),
                        "{name}, width {width}, element {i}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn all_masked_rows_become_nan() {
        let mut x = vec![f32::NEG_INFINITY; 20];
        softmax_rows(&mut x, 20);
        assert!(x.iter().all(|v| v.is_nan()));
    }
}
