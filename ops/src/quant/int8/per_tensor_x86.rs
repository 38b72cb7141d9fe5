//! [`super::per_tensor`]'s passes written for AVX-512F and AVX2. They give the scalar definitions'
//! results exactly: the quotient is clamped to `[min - zero, max - zero]` first (`maxps` returns
//! its second operand when the first is NaN, so NaN gives the bottom code), then `vcvtps2dq`
//! rounds half to even (Rust keeps the default rounding mode) and the zero point is added in i32;
//! with integer bounds, clamping before rounding equals clamping after. Codes are stored as their
//! low byte, which is the u8 or the i8 code.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

/// `(min(0, min x), max(0, max x), the largest |v| bits)`, as [`super::per_tensor::min_max_scalar`].
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn min_max_avx512(x: &[f32]) -> (f32, f32, u32) {
    let magnitude = _mm512_set1_epi32(0x7fff_ffff);
    let mut lo = [_mm512_setzero_ps(); 2];
    let mut hi = [_mm512_setzero_ps(); 2];
    let mut bits = _mm512_setzero_si512();
    let mut chunks = x.chunks_exact(32);
    for chunk in &mut chunks {
        for i in 0..2 {
            // SAFETY: 16 values at `16 i` of a 32-value chunk.
            let v = unsafe { _mm512_loadu_ps(chunk.as_ptr().add(16 * i)) };
            lo[i] = _mm512_min_ps(lo[i], v);
            hi[i] = _mm512_max_ps(hi[i], v);
            bits = _mm512_max_epu32(bits, _mm512_and_si512(_mm512_castps_si512(v), magnitude));
        }
    }
    for tail in chunks.remainder().chunks(16) {
        let mask = ((1u32 << tail.len()) - 1) as __mmask16;
        // SAFETY: the mask's lanes are the values of `tail`; the others read as 0, which the
        // extremes include anyway.
        let v = unsafe { _mm512_maskz_loadu_ps(mask, tail.as_ptr()) };
        lo[0] = _mm512_min_ps(lo[0], v);
        hi[0] = _mm512_max_ps(hi[0], v);
        bits = _mm512_max_epu32(bits, _mm512_and_si512(_mm512_castps_si512(v), magnitude));
    }
    // Lane order does not matter to a minimum or maximum without NaN (with one, `bits` says so).
    let lo = _mm512_reduce_min_ps(_mm512_min_ps(lo[0], lo[1]));
    let hi = _mm512_reduce_max_ps(_mm512_max_ps(hi[0], hi[1]));
    (lo, hi, _mm512_reduce_max_epu32(bits))
}

/// [`min_max_avx512`] with AVX2; the last values (fewer than 8) go through `scalar`.
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn min_max_avx2(
    x: &[f32],
    scalar: fn(&[f32]) -> (f32, f32, u32),
) -> (f32, f32, u32) {
    let magnitude = _mm256_set1_epi32(0x7fff_ffff);
    let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut bits = _mm256_setzero_si256();
    let mut chunks = x.chunks_exact(8);
    for chunk in &mut chunks {
        // SAFETY: 8 values.
        let v = unsafe { _mm256_loadu_ps(chunk.as_ptr()) };
        lo = _mm256_min_ps(lo, v);
        hi = _mm256_max_ps(hi, v);
        bits = _mm256_max_epu32(bits, _mm256_and_si256(_mm256_castps_si256(v), magnitude));
    }
    let (mut l, mut h, mut b) = ([0.0f32; 8], [0.0f32; 8], [0u32; 8]);
    // SAFETY: each array holds 8 values.
    unsafe {
        _mm256_storeu_ps(l.as_mut_ptr(), lo);
        _mm256_storeu_ps(h.as_mut_ptr(), hi);
        _mm256_storeu_si256(b.as_mut_ptr().cast(), bits);
    }
    let (tl, th, tb) = scalar(chunks.remainder());
    (
        l.into_iter().fold(tl, f32::min),
        h.into_iter().fold(th, f32::max),
        b.into_iter().fold(tb, u32::max),
    )
}

/// The codes of `x` at `scale` and `zero`, within `min..=max`, as bytes at `out`.
///
/// # Safety
/// The CPU has AVX-512F; `out` addresses `x.len()` writable bytes.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn quantize_avx512(
    x: &[f32],
    scale: f32,
    zero: i32,
    min: i32,
    max: i32,
    out: *mut u8,
) {
    let s = _mm512_set1_ps(scale);
    let lo = _mm512_set1_ps((min - zero) as f32);
    let hi = _mm512_set1_ps((max - zero) as f32);
    let z = _mm512_set1_epi32(zero);
    for (i, part) in x.chunks(16).enumerate() {
        let mask = ((1u32 << part.len()) - 1) as __mmask16;
        // SAFETY: the mask's lanes are the values of `part` and bytes `16 i..16 i + part.len()`
        // at `out`, which holds `x.len()`.
        unsafe {
            let v = _mm512_maskz_loadu_ps(mask, part.as_ptr());
            let q = _mm512_min_ps(_mm512_max_ps(_mm512_div_ps(v, s), lo), hi);
            let q = _mm512_add_epi32(_mm512_cvtps_epi32(q), z);
            _mm512_mask_cvtepi32_storeu_epi8(out.add(16 * i).cast(), mask, q);
        }
    }
}

/// [`quantize_avx512`] with AVX2, on a multiple of 16 values.
///
/// # Safety
/// The CPU has AVX2; `x.len()` is a multiple of 16; `out` addresses `x.len()` writable bytes.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn quantize_avx2(
    x: &[f32],
    scale: f32,
    zero: i32,
    min: i32,
    max: i32,
    out: *mut u8,
) {
    let s = _mm256_set1_ps(scale);
    let lo = _mm256_set1_ps((min - zero) as f32);
    let hi = _mm256_set1_ps((max - zero) as f32);
    let z = _mm256_set1_epi32(zero);
    let code = |v: __m256| {
        let q = _mm256_min_ps(_mm256_max_ps(_mm256_div_ps(v, s), lo), hi);
        _mm256_add_epi32(_mm256_cvtps_epi32(q), z)
    };
    // The low byte of each i32 lane, lanes in order: bytes 0, 4, 8, 12 of each 128-bit half.
    let low_bytes = _mm256_setr_epi8(
        0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, //
        0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    );
    let gather = _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0);
    for (i, part) in x.chunks_exact(16).enumerate() {
        // SAFETY: 16 values of `part` in, bytes `16 i..16 i + 16` at `out` out.
        unsafe {
            let a = _mm256_permutevar8x32_epi32(
                _mm256_shuffle_epi8(code(_mm256_loadu_ps(part.as_ptr())), low_bytes),
                gather,
            );
            let b = _mm256_permutevar8x32_epi32(
                _mm256_shuffle_epi8(code(_mm256_loadu_ps(part.as_ptr().add(8))), low_bytes),
                gather,
            );
            let bytes = _mm_unpacklo_epi64(_mm256_castsi256_si128(a), _mm256_castsi256_si128(b));
            _mm_storeu_si128(out.add(16 * i).cast(), bytes);
        }
    }
}

/// `(code - zero) as f32 * scale` of the `out.len()` one-byte codes at `x` (i8 when `signed`).
///
/// # Safety
/// The CPU has AVX-512F; `x` addresses `out.len()` readable bytes.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn dequantize_avx512(
    x: *const u8,
    signed: bool,
    scale: f32,
    zero: i32,
    out: &mut [f32],
) {
    let s = _mm512_set1_ps(scale);
    let z = _mm512_set1_epi32(zero);
    for (i, part) in out.chunks_mut(16).enumerate() {
        let mask = ((1u32 << part.len()) - 1) as __mmask16;
        // SAFETY: bytes `16 i..16 i + part.len()` at `x` (a whole 16 read in place, fewer copied
        // first), and the mask's lanes are the values of `part`.
        unsafe {
            let bytes = if part.len() == 16 {
                _mm_loadu_si128(x.add(16 * i).cast())
            } else {
                let mut tail = [0u8; 16];
                std::ptr::copy_nonoverlapping(x.add(16 * i), tail.as_mut_ptr(), part.len());
                _mm_loadu_si128(tail.as_ptr().cast())
            };
            let q = if signed {
                _mm512_cvtepi8_epi32(bytes)
            } else {
                _mm512_cvtepu8_epi32(bytes)
            };
            let v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(q, z)), s);
            _mm512_mask_storeu_ps(part.as_mut_ptr(), mask, v);
        }
    }
}

/// [`dequantize_avx512`] with AVX2, on a multiple of 8 values.
///
/// # Safety
/// The CPU has AVX2; `out.len()` is a multiple of 8; `x` addresses `out.len()` readable bytes.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn dequantize_avx2(
    x: *const u8,
    signed: bool,
    scale: f32,
    zero: i32,
    out: &mut [f32],
) {
    let s = _mm256_set1_ps(scale);
    let z = _mm256_set1_epi32(zero);
    for (i, part) in out.chunks_exact_mut(8).enumerate() {
        // SAFETY: bytes `8 i..8 i + 8` at `x`, 8 values of `part`.
        unsafe {
            let bytes = _mm_loadl_epi64(x.add(8 * i).cast());
            let q = if signed {
                _mm256_cvtepi8_epi32(bytes)
            } else {
                _mm256_cvtepu8_epi32(bytes)
            };
            let v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q, z)), s);
            _mm256_storeu_ps(part.as_mut_ptr(), v);
        }
    }
}
