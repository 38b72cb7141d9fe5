//! ONNX's quantisation of a whole tensor at one scale and zero point: QuantizeLinear,
//! DequantizeLinear and DynamicQuantizeLinear (u8), bit for bit what the operators' definitions
//! give: `y = saturate(round_half_even(x / scale) + zero)` with a division (not a multiplication
//! by the reciprocal), and `x = (y - zero) * scale`. Vectorised for AVX-512 and AVX2
//! (`per_tensor_x86.rs`) with a scalar fallback, on the pool for large tensors.

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::per_tensor_x86 as x86;

/// Values handled on the pool only from this many, in pieces of [`PIECE`].
const PARALLEL_VALUES: usize = 1 << 16;
const PIECE: usize = 1 << 14;

/// An integer code type of ONNX quantisation.
pub(super) trait Code: Copy + Default + Send + Sync {
    const MIN: i32;
    const MAX: i32;
    /// The code of `v`, which lies within `MIN..=MAX`.
    fn of(v: i32) -> Self;
    fn value(self) -> i32;
}

impl Code for u8 {
    const MIN: i32 = 0;
    const MAX: i32 = 255;
    fn of(v: i32) -> u8 {
        v as u8
    }
    fn value(self) -> i32 {
        self as i32
    }
}

impl Code for i8 {
    const MIN: i32 = -128;
    const MAX: i32 = 127;
    fn of(v: i32) -> i8 {
        v as i8
    }
    fn value(self) -> i32 {
        self as i32
    }
}

/// The instruction sets these passes are written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Width {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Width {
    fn best() -> Width {
        #[cfg(target_arch = "x86_64")]
        match crate::simd::Isa::best().kind() {
            crate::simd::Kind::Avx512 => return Width::Avx512,
            crate::simd::Kind::Avx2Fma => return Width::Avx2,
            _ => {}
        }
        Width::Scalar
    }

    /// Every width this CPU runs (tests compare them).
    #[cfg(test)]
    pub(super) fn available() -> Vec<Width> {
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut v = vec![Width::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                v.push(Width::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                v.push(Width::Avx2);
            }
        }
        v
    }
}

/// ONNX QuantizeLinear with one scale and zero point, to u8: `out[i] = saturate(
/// round_half_even(x[i] / scale) + zero)`. A NaN quotient (a NaN value or scale, or 0 / 0) gives
/// code 0, the bottom of the range, as ONNX Runtime's x86 kernel (a `maxps` against the bottom)
/// does; infinities saturate. Panics unless `out` is as long as `x`.
pub fn quantize_u8(x: &[f32], scale: f32, zero: u8, out: &mut [u8]) {
    quantize(Width::best(), x, scale, zero, out)
}

/// [`quantize_u8`] to i8: codes in [-128, 127], a NaN quotient -128.
pub fn quantize_i8(x: &[f32], scale: f32, zero: i8, out: &mut [i8]) {
    quantize(Width::best(), x, scale, zero, out)
}

/// ONNX DequantizeLinear with one scale and zero point, from u8: `out[i] = (x[i] - zero) as f32 *
/// scale`. Panics unless `out` is as long as `x`.
pub fn dequantize_u8(x: &[u8], scale: f32, zero: u8, out: &mut [f32]) {
    dequantize(Width::best(), x, scale, zero, out)
}

/// [`dequantize_u8`] from i8.
pub fn dequantize_i8(x: &[i8], scale: f32, zero: i8, out: &mut [f32]) {
    dequantize(Width::best(), x, scale, zero, out)
}

/// ONNX DynamicQuantizeLinear: quantises `x` to u8 at the scale and zero point its range gives,
/// which it returns. `x_min = min(0, min x)`, `x_max = max(0, max x)`, `scale = (x_max - x_min) /
/// 255`, `zero = saturate(round_half_even(0 - x_min / scale))`, then [`quantize_u8`], all in f32.
/// Where the definition leaves it open:
/// - a scale of 0 (x all zeros, or so small that the scale underflows) is 1.0 instead, as ONNX
///   Runtime's kernel makes it (`max == min ? 1.0f : ...`), so the codes and the zero point are 0
///   (the operator's function body would divide 0 by 0; its Python reference gives 1/255);
/// - a tensor with a NaN or an infinity anywhere gives scale NaN, zero point 0 and codes 0;
/// - finite values whose range overflows give scale infinity, zero point 0 and codes 0, as the
///   formula does.
///
/// Panics unless `out` is as long as `x`.
pub fn dynamic_quantize_u8(x: &[f32], out: &mut [u8]) -> (f32, u8) {
    dynamic_quantize(Width::best(), x, out)
}

pub(super) fn dynamic_quantize(width: Width, x: &[f32], out: &mut [u8]) -> (f32, u8) {
    assert_eq!(
        x.len(),
        out.len(),
        "dynamic_quantize_u8: out is not as long as x"
    );
    let (x_min, x_max) = match min_max(width, x) {
        Some(range) => range,
        None => {
            out.fill(0);
            return (f32::NAN, 0);
        }
    };
    let mut scale = (x_max - x_min) / 255.0;
    if scale == 0.0 {
        scale = 1.0;
    }
    let zero = (0.0 - x_min / scale).clamp(0.0, 255.0).round_ties_even() as u8;
    quantize(width, x, scale, zero, out);
    (scale, zero)
}

/// `(min(0, min x), max(0, max x))`, or `None` when a value is not finite.
pub(super) fn min_max(width: Width, x: &[f32]) -> Option<(f32, f32)> {
    let piece = |x: &[f32]| -> (f32, f32, u32) {
        match width {
            // SAFETY: `Width::Avx512` is chosen only after detecting AVX-512F.
            #[cfg(target_arch = "x86_64")]
            Width::Avx512 => unsafe { x86::min_max_avx512(x) },
            // SAFETY: `Width::Avx2` is chosen only after detecting AVX2.
            #[cfg(target_arch = "x86_64")]
            Width::Avx2 => unsafe { x86::min_max_avx2(x, min_max_scalar) },
            Width::Scalar => min_max_scalar(x),
        }
    };
    // Minima and maxima of pieces combine in any order to the same values (no NaN among them).
    let join = |a: (f32, f32, u32), b: (f32, f32, u32)| (a.0.min(b.0), a.1.max(b.1), a.2.max(b.2));
    let (lo, hi, bits) = if crate::threads::available() > 1 && x.len() >= PARALLEL_VALUES {
        x.par_chunks(PIECE)
            .map(piece)
            .reduce(|| (0.0, 0.0, 0), join)
    } else {
        piece(x)
    };
    (bits < f32::INFINITY.to_bits()).then_some((lo, hi))
}

/// `(min(0, min x), max(0, max x), the largest |v| bits)`: the bits tell whether a value is not
/// finite (infinity and NaN lie above every finite magnitude), when the extremes mean nothing.
pub(super) fn min_max_scalar(x: &[f32]) -> (f32, f32, u32) {
    x.iter().fold((0.0f32, 0.0f32, 0u32), |(lo, hi, bits), &v| {
        (lo.min(v), hi.max(v), bits.max(v.to_bits() & 0x7fff_ffff))
    })
}

pub(super) fn quantize<T: Code>(width: Width, x: &[f32], scale: f32, zero: T, out: &mut [T]) {
    assert_eq!(x.len(), out.len(), "quantize: out is not as long as x");
    let zero = zero.value();
    let piece = |(x, out): (&[f32], &mut [T])| match width {
        // SAFETY (both): the width was detected; `out` holds `x.len()` codes of one byte.
        #[cfg(target_arch = "x86_64")]
        Width::Avx512 => unsafe {
            x86::quantize_avx512(x, scale, zero, T::MIN, T::MAX, out.as_mut_ptr().cast())
        },
        #[cfg(target_arch = "x86_64")]
        Width::Avx2 => unsafe {
            let n = x.len() - x.len() % 16;
            x86::quantize_avx2(
                &x[..n],
                scale,
                zero,
                T::MIN,
                T::MAX,
                out.as_mut_ptr().cast(),
            );
            quantize_scalar(&x[n..], scale, zero, &mut out[n..])
        },
        Width::Scalar => quantize_scalar(x, scale, zero, out),
    };
    in_pieces(x, out, piece);
}

/// Runs `piece` on matching pieces of `x` and `out`: on the pool for large inputs, else at once.
fn in_pieces<A: Sync, B: Send>(
    x: &[A],
    out: &mut [B],
    piece: impl Fn((&[A], &mut [B])) + Sync + Send,
) {
    if crate::threads::available() > 1 && x.len() >= PARALLEL_VALUES {
        x.par_chunks(PIECE)
            .zip(out.par_chunks_mut(PIECE))
            .for_each(piece);
    } else {
        piece((x, out));
    }
}

/// The definition, one value at a time.
pub(super) fn quantize_scalar<T: Code>(x: &[f32], scale: f32, zero: i32, out: &mut [T]) {
    for (o, &v) in out.iter_mut().zip(x) {
        let q = (v / scale).round_ties_even() + zero as f32;
        *o = T::of(if q.is_nan() {
            T::MIN
        } else {
            q.clamp(T::MIN as f32, T::MAX as f32) as i32
        });
    }
}

pub(super) fn dequantize<T: Code>(width: Width, x: &[T], scale: f32, zero: T, out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "dequantize: out is not as long as x");
    let zero = zero.value();
    let signed = T::MIN < 0;
    let piece = |(x, out): (&[T], &mut [f32])| match width {
        // SAFETY (both): the width was detected; `x` holds `out.len()` codes of one byte.
        #[cfg(target_arch = "x86_64")]
        Width::Avx512 => unsafe {
            x86::dequantize_avx512(x.as_ptr().cast(), signed, scale, zero, out)
        },
        #[cfg(target_arch = "x86_64")]
        Width::Avx2 => unsafe {
            let n = x.len() - x.len() % 8;
            x86::dequantize_avx2(x.as_ptr().cast(), signed, scale, zero, &mut out[..n]);
            dequantize_scalar(&x[n..], scale, zero, &mut out[n..])
        },
        Width::Scalar => dequantize_scalar(x, scale, zero, out),
    };
    in_pieces(x, out, piece);
}

/// The definition, one value at a time.
pub(super) fn dequantize_scalar<T: Code>(x: &[T], scale: f32, zero: i32, out: &mut [f32]) {
    for (o, &q) in out.iter_mut().zip(x) {
        *o = (q.value() - zero) as f32 * scale;
    }
}
