//! The plain scalar product every kernel is tested against.

use super::{I8Weights, QuantRows, COLS, GROUP};
use crate::quant::Epilogue;

/// [`super::gemm_i8`] one output at a time: each code read by its index in the packed layout,
/// `acc = Σ u q - 128 col_sum` in i32, then `(acc * s[r]) * scale[c]`, plus the bias, the
/// activation ([`crate::activation::Activation::apply`]) and the residual, in that order.
pub fn gemm_i8_reference(x: &QuantRows, w: I8Weights, epi: Epilogue, out: &mut [f32]) {
    let (rows, k, n) = (x.rows(), w.k(), w.n());
    assert_eq!(x.k(), k, "gemm_i8_reference: rows and weights differ in k");
    assert_eq!(
        out.len(),
        rows * n,
        "gemm_i8_reference: out is not [rows, n]"
    );
    if let Some(bias) = epi.bias {
        assert_eq!(bias.len(), n, "gemm_i8_reference: one bias per column");
    }
    let groups = k.div_ceil(GROUP);
    let stride = x.stride();
    for r in 0..rows {
        for c in 0..n {
            let mut acc = 0i32;
            for kk in 0..k {
                let u = x.codes()[r * stride + kk] as i32;
                let at = ((c / COLS * groups + kk / GROUP) * COLS + c % COLS) * GROUP + kk % GROUP;
                acc += u * w.data()[at] as i32;
            }
            // The sums' range is checked by `I8Weights::new`, not their agreement with the codes:
            // wrapping keeps wrong sums defined.
            let acc = acc.wrapping_sub(w.col_sums()[c].wrapping_mul(128));
            let mut v = acc as f32 * x.scales()[r] * w.scales()[c];
            if let Some(bias) = epi.bias {
                v += bias[c];
            }
            if let Some(act) = epi.activation {
                v = act.apply(v);
            }
            let o = &mut out[r * n + c];
            *o = if epi.accumulate { *o + v } else { v };
        }
    }
}
