//! FastFeedForward with bf16 weights. The tree kernel is bound by fetching weight rows (see
//! `fff_tree`), so halving their bytes is the largest lever left; biases stay f32.
//!
//! The kernels widen each bf16 weight exactly to f32 (a 16-bit shift) and multiply it with the f32
//! activations in f32, so the only difference from the f32 op is the rounding of the weights: a bf16
//! layer computes exactly what [`fff_reference_bf16`] (the f32 reference on the widened weights)
//! computes, up to summation order. (`vdpbf16ps` would also need the inputs rounded to bf16. Routing
//! with it on inputs rounded as they are loaded was measured: 4–8% faster at 16384 rows, at the price
//! of twice the rows taking another path (0.8% against 0.4%) and a five times larger error in a whole
//! encoder; not kept, see `docs/PERFORMANCE.md`.)

use std::cell::RefCell;

use crate::activation::Activation;
use crate::fff::{Branch, FffLayer, FffShape, FffWeights};

/// Rounds each value to the nearest bf16 (ties to even), as bit patterns: the conversion used when
/// weights are stored in bf16. NaN stays NaN; values beyond the bf16 range become infinities.
pub fn f32_to_bf16_round_nearest_even(v: &[f32]) -> Vec<u16> {
    v.iter().map(|&x| bf16_round(x)).collect()
}

/// A bfloat16 number: the upper 16 bits of an f32, so widening it is exact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct Bf16(pub u16);

impl Bf16 {
    /// The nearest bfloat16 (ties to even); NaN stays NaN.
    pub fn from_f32(v: f32) -> Bf16 {
        Bf16(bf16_round(v))
    }

    /// The f32 this value denotes (exact).
    pub fn to_f32(self) -> f32 {
        crate::simd::bf16_to_f32(self.0)
    }
}

/// The bit patterns of bf16 values, as the kernels read them, without a copy.
pub fn bf16_bits(v: &[Bf16]) -> &[u16] {
    // SAFETY: `Bf16` is `repr(transparent)` over `u16`: the slices have the same layout and length.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u16>(), v.len()) }
}

/// One value to the nearest bf16, ties to even.
#[inline]
pub fn bf16_round(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        // Keep the sign and force a quiet NaN (truncating could leave an all-zero mantissa: infinity).
        return (b >> 16) as u16 | 0x0040;
    }
    let lsb = (b >> 16) & 1;
    ((b + 0x7fff + lsb) >> 16) as u16
}

/// bf16 bit patterns widened to f32 (exactly).
pub fn bf16_to_f32_vec(v: &[u16]) -> Vec<f32> {
    v.iter().map(|&b| crate::simd::bf16_to_f32(b)).collect()
}

/// [`FffWeights`] with `w_in` and `w_out` in bf16 (bit patterns, same node-major layout).
#[derive(Clone, Copy, Debug)]
pub struct FffWeightsBf16<'a> {
    pub w_in: &'a [u16],
    pub b_in: Option<&'a [f32]>,
    pub w_out: &'a [u16],
    pub b_out: Option<&'a [f32]>,
}

/// [`FffLayer`] with bf16 weights.
#[derive(Clone, Copy, Debug)]
pub struct FffLayerBf16<'a> {
    pub shape: FffShape,
    pub act: Activation,
    pub branch: Branch,
    pub w: FffWeightsBf16<'a>,
}

thread_local! {
    /// Widened weights for the shapes that run as GEMMs, kept per thread and grown to the largest.
    static WIDE: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Computes `rows` rows (`x`: `rows x d_in`, `out`: `rows x d_out`) with bf16 weights, choosing the
/// kernel as [`crate::fff::fff_forward`] does. Only the tree kernel reads bf16 directly; shapes that run
/// as GEMMs (depth 0, wide shallow forests) widen the weights into per-thread scratch on each call,
/// which costs more than it saves: store those layers in f32.
pub fn fff_forward_bf16(layer: &FffLayerBf16, x: &[f32], rows: usize, out: &mut [f32]) {
    if crate::fff::uses_tree_kernel(layer.shape, rows) {
        return crate::fff_tree::fff_tree_bf16(layer, x, rows, out);
    }
    let mut run = |w_in: &mut Vec<f32>, w_out: &mut Vec<f32>| {
        widen_into(layer.w.w_in, w_in);
        widen_into(layer.w.w_out, w_out);
        let wide = FffLayer {
            shape: layer.shape,
            act: layer.act,
            branch: layer.branch,
            w: FffWeights {
                w_in,
                b_in: layer.w.b_in,
                w_out,
                b_out: layer.w.b_out,
            },
        };
        crate::fff::fff_forward(&wide, x, rows, out);
    };
    WIDE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut bufs) => {
            let (a, b) = &mut *bufs;
            run(a, b)
        }
        // This thread's buffers are in use by a call waiting on the pool: fresh ones.
        Err(_) => run(&mut Vec::new(), &mut Vec::new()),
    })
}

fn widen_into(src: &[u16], dst: &mut Vec<f32>) {
    dst.clear();
    dst.extend(src.iter().map(|&b| crate::simd::bf16_to_f32(b)));
}

/// The reference for bf16 layers: [`crate::fff::fff_reference`] on the widened weights.
pub fn fff_reference_bf16(layer: &FffLayerBf16, x: &[f32], rows: usize, out: &mut [f32]) {
    let (w_in, w_out) = (
        bf16_to_f32_vec(layer.w.w_in),
        bf16_to_f32_vec(layer.w.w_out),
    );
    let wide = FffLayer {
        shape: layer.shape,
        act: layer.act,
        branch: layer.branch,
        w: FffWeights {
            w_in: &w_in,
            b_in: layer.w.b_in,
            w_out: &w_out,
            b_out: layer.w.b_out,
        },
    };
    crate::fff::fff_reference(&wide, x, rows, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::bf16_to_f32;

    #[test]
    fn rounding_is_to_nearest_with_ties_to_even() {
        assert_eq!(bf16_round(1.0), 0x3f80);
        assert_eq!(bf16_round(-0.0), 0x8000);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even pattern (down here, up below).
        assert_eq!(bf16_round(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(bf16_round(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(bf16_round(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(bf16_round(f32::INFINITY), 0x7f80);
        assert_eq!(bf16_round(f32::MAX), 0x7f80);
        assert!(bf16_to_f32(bf16_round(f32::NAN)).is_nan());
        assert!(bf16_to_f32(bf16_round(f32::from_bits(0x7f80_0001))).is_nan());
        // Against the definition: no other bf16 is nearer.
        let mut s = 1u32;
        for _ in 0..100_000 {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let x = f32::from_bits(s);
            if !x.is_finite() || x.abs() > 1e38 {
                continue;
            }
            let r = bf16_round(x);
            let err = (bf16_to_f32(r) as f64 - x as f64).abs();
            for n in [r.wrapping_sub(1), r.wrapping_add(1)] {
                // Neighbours in magnitude with the same sign (0x8000 - 1 is a NaN, not a neighbour).
                if (n ^ r) & 0x8000 != 0 || !bf16_to_f32(n).is_finite() {
                    continue;
                }
                let other = (bf16_to_f32(n) as f64 - x as f64).abs();
                assert!(err <= other, "{x:e}: {r:#x}");
                if err == other {
                    assert_eq!(r & 1, 0, "{x:e}: ties go to even");
                }
            }
        }
    }

    #[test]
    fn every_kernel_choice_agrees_with_the_reference() {
        let mut s = 9u32;
        let mut vec = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
                })
                .collect()
        };
        // Depth 0 (GEMMs), a wide shallow forest at many rows (masked GEMM), and trees.
        for &(rows, d_in, d_out, depth, trees) in &[
            (5, 37, 20, 0, 9),
            (100, 16, 24, 1, 64),
            (3, 37, 100, 3, 2),
            (300, 100, 37, 6, 1),
        ] {
            let shape = FffShape {
                d_in,
                d_out,
                depth,
                trees,
            };
            let total = shape.total_nodes();
            let w_in = f32_to_bf16_round_nearest_even(&vec(total * d_in));
            let w_out = f32_to_bf16_round_nearest_even(&vec(total * d_out));
            let (b_in, b_out) = (vec(total), vec(d_out));
            let x = vec(rows * d_in);
            let layer = FffLayerBf16 {
                shape,
                act: Activation::GeluErf,
                branch: Branch::Greater,
                w: FffWeightsBf16 {
                    w_in: &w_in,
                    b_in: Some(&b_in),
                    w_out: &w_out,
                    b_out: Some(&b_out),
                },
            };
            let (mut want, mut got) = (vec![0.0; rows * d_out], vec![f32::NAN; rows * d_out]);
            fff_reference_bf16(&layer, &x, rows, &mut want);
            fff_forward_bf16(&layer, &x, rows, &mut got);
            for (g, e) in got.iter().zip(&want) {
                assert!(
                    (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
                    "{shape:?}: {g} vs {e}"
                );
            }
        }
    }
}
