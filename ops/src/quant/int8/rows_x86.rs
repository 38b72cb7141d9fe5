//! [`super::rows`]'s two passes over a row, written for AVX-512F and AVX2: the largest magnitude
//! (as bits) and the codes. They give the scalar versions' results exactly: `vcvtps2dq` rounds half
//! to even (Rust keeps the default rounding mode), and the quotients lie well inside i32 (at most
//! about 254, when a subnormal scale lost precision), so clamping the integer equals clamping the
//! float.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

/// The largest `|v|` bits over `x`.
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn max_abs_bits_avx512(x: &[f32]) -> u32 {
    let magnitude = _mm512_set1_epi32(0x7fff_ffff);
    let mut m = [_mm512_setzero_si512(); 4];
    let mut chunks = x.chunks_exact(64);
    for chunk in &mut chunks {
        for (i, m) in m.iter_mut().enumerate() {
            // SAFETY: 16 values at `16 i` of a 64-value chunk.
            let v = unsafe { _mm512_loadu_si512(chunk.as_ptr().add(16 * i).cast()) };
            *m = _mm512_max_epu32(*m, _mm512_and_si512(v, magnitude));
        }
    }
    for tail in chunks.remainder().chunks(16) {
        let mask = ((1u32 << tail.len()) - 1) as __mmask16;
        // SAFETY: the mask's lanes are the `tail.len()` values of `tail`; the others are not read.
        let v = unsafe { _mm512_maskz_loadu_epi32(mask, tail.as_ptr().cast()) };
        m[0] = _mm512_max_epu32(m[0], _mm512_and_si512(v, magnitude));
    }
    let m = _mm512_max_epu32(_mm512_max_epu32(m[0], m[1]), _mm512_max_epu32(m[2], m[3]));
    _mm512_reduce_max_epu32(m)
}

/// Codes + 128 of `x` at the positive finite `scale` into `codes` (as long as `x`).
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn encode_avx512(x: &[f32], scale: f32, codes: &mut [u8]) {
    assert_eq!(x.len(), codes.len());
    let s = _mm512_set1_ps(scale);
    let (lo, hi, offset) = (
        _mm512_set1_epi32(-127),
        _mm512_set1_epi32(127),
        _mm512_set1_epi32(128),
    );
    let code = |v: __m512| {
        let q = _mm512_cvtps_epi32(_mm512_div_ps(v, s));
        _mm512_add_epi32(_mm512_max_epi32(_mm512_min_epi32(q, hi), lo), offset)
    };
    for (i, part) in x.chunks(16).enumerate() {
        let mask = ((1u32 << part.len()) - 1) as __mmask16;
        // SAFETY: the mask's lanes are the values of `part`, and bytes `16 i..16 i +
        // part.len()` of `codes`, which is as long as `x`.
        unsafe {
            let v = _mm512_maskz_loadu_ps(mask, part.as_ptr());
            _mm512_mask_cvtepi32_storeu_epi8(codes.as_mut_ptr().add(16 * i).cast(), mask, code(v));
        }
    }
}

/// [`max_abs_bits_avx512`] with AVX2.
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn max_abs_bits_avx2(x: &[f32]) -> u32 {
    let magnitude = _mm256_set1_epi32(0x7fff_ffff);
    let mut m = [_mm256_setzero_si256(); 4];
    let mut chunks = x.chunks_exact(32);
    for chunk in &mut chunks {
        for (i, m) in m.iter_mut().enumerate() {
            // SAFETY: 8 values at `8 i` of a 32-value chunk.
            let v = unsafe { _mm256_loadu_si256(chunk.as_ptr().add(8 * i).cast()) };
            *m = _mm256_max_epu32(*m, _mm256_and_si256(v, magnitude));
        }
    }
    let m = _mm256_max_epu32(_mm256_max_epu32(m[0], m[1]), _mm256_max_epu32(m[2], m[3]));
    let mut lanes = [0u32; 8];
    // SAFETY: `lanes` holds 8 values.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), m) };
    let tail = chunks.remainder().iter().map(|v| v.to_bits() & 0x7fff_ffff);
    lanes.into_iter().chain(tail).max().unwrap_or(0)
}

/// [`encode_avx512`] with AVX2; the last values (fewer than 16) go through `scalar`.
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn encode_avx2(
    x: &[f32],
    scale: f32,
    codes: &mut [u8],
    scalar: fn(&[f32], f32, &mut [u8]),
) {
    assert_eq!(x.len(), codes.len());
    let s = _mm256_set1_ps(scale);
    let (lo, hi, offset) = (
        _mm256_set1_epi32(-127),
        _mm256_set1_epi32(127),
        _mm256_set1_epi32(128),
    );
    let code = |v: __m256| {
        let q = _mm256_cvtps_epi32(_mm256_div_ps(v, s));
        _mm256_add_epi32(_mm256_max_epi32(_mm256_min_epi32(q, hi), lo), offset)
    };
    let mut chunks = x.chunks_exact(16);
    let mut out = codes.chunks_exact_mut(16);
    for (part, out) in (&mut chunks).zip(&mut out) {
        // SAFETY: 16 values of `part` in, 16 bytes of `out` out.
        unsafe {
            let a = code(_mm256_loadu_ps(part.as_ptr()));
            let b = code(_mm256_loadu_ps(part.as_ptr().add(8)));
            // i16 lanes [a0..a3 b0..b3 | a4..a7 b4..b7], put in order, then bytes (1 to 255).
            let pairs = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(a, b));
            let bytes = _mm_packus_epi16(
                _mm256_castsi256_si128(pairs),
                _mm256_extracti128_si256::<1>(pairs),
            );
            _mm_storeu_si128(out.as_mut_ptr().cast(), bytes);
        }
    }
    scalar(chunks.remainder(), scale, out.into_remainder());
}
