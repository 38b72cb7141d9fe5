//! The AVX-512 BF16 kernel: activations rounded with `vcvtne2ps2bf16`, products summed with
//! `vdpbf16ps`, which multiplies 16 pairs of bf16 by 16 pairs and adds both products of each pair
//! to one f32 lane: 32 multiply-adds an instruction, twice an f32 fused multiply-add.

use std::arch::x86_64::*;

use super::{Tile, COLS, GROUP, TILE_ROWS};
use crate::element::Bf16;

/// Whether this CPU has the instructions the kernel uses.
pub(super) fn detected() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bf16")
}

/// Rows of `k` values of `x` rounded to bf16 (ties to even) as pairs, `k.div_ceil(2)` a row.
///
/// Only called with a kernel made after [`detected`].
pub(super) fn convert(x: &[f32], k: usize, pairs: &mut [u32]) {
    let kp = k.div_ceil(GROUP);
    if kp == 0 {
        return;
    }
    assert!(
        x.len().is_multiple_of(k) && pairs.len() == x.len() / k * kp,
        "bf16 convert: rows"
    );
    for (x, p) in x.chunks_exact(k).zip(pairs.chunks_exact_mut(kp)) {
        // SAFETY: a `Bf16Kernel` of this kind is made only after `detected`; `p` holds
        // `k.div_ceil(2)` pairs for the `k` values of `x`, as `convert_row` reads and writes.
        unsafe { convert_row(x, p) }
    }
}

/// One row: 32 values at a time into 16 pairs, the tail through masked loads and a masked store.
///
/// # Safety
/// The CPU has AVX-512F and AVX-512 BF16; `pairs.len() == x.len().div_ceil(2)`.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn convert_row(x: &[f32], pairs: &mut [u32]) {
    let (k, px, pp) = (x.len(), x.as_ptr(), pairs.as_mut_ptr());
    let mut i = 0;
    while i + 32 <= k {
        let lo = _mm512_loadu_ps(px.add(i));
        let hi = _mm512_loadu_ps(px.add(i + 16));
        // Element 2g of the result is x[i + 2g]: the low half of pair g.
        let v = from_bh(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_storeu_si512(pp.add(i / 2).cast(), v);
        i += 32;
    }
    if i < k {
        let rest = k - i;
        let lo_mask = mask16(rest.min(16));
        let hi_mask = mask16(rest.saturating_sub(16));
        // Masked-off lanes are not read (and load as zero, the odd tail's padding). The upper
        // half may start past the end of `x`, where `add` would not be sound to compute.
        let lo = _mm512_maskz_loadu_ps(lo_mask, px.add(i));
        let hi = _mm512_maskz_loadu_ps(hi_mask, px.wrapping_add(i + 16));
        let v = from_bh(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_mask_storeu_epi32(pp.add(i / 2).cast(), mask16(rest.div_ceil(2)), v);
    }
}

/// 32 bf16 as the integer vector that holds their bits.
#[inline(always)]
fn from_bh(v: __m512bh) -> __m512i {
    // SAFETY: both are 64 bytes of plain bits, any pattern valid.
    unsafe { std::mem::transmute::<__m512bh, __m512i>(v) }
}

/// 32 bf16 from the integer vector that holds their bits.
#[inline(always)]
fn to_bh(v: __m512i) -> __m512bh {
    // SAFETY: both are 64 bytes of plain bits, any pattern valid.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}

/// The low `n` (at most 16) lanes.
#[inline(always)]
fn mask16(n: usize) -> __mmask16 {
    ((1u32 << n) - 1) as __mmask16
}

/// The sums of `m` rows of pairs with one panel; lengths checked by the caller.
pub(super) fn tile(m: usize, pairs: &[u32], kp: usize, panel: &[Bf16], tile: &mut Tile) {
    let (a, w, t) = (pairs.as_ptr(), panel.as_ptr(), tile.as_mut_ptr());
    // SAFETY: a kernel of this kind is made only after `detected`; the caller checked that
    // `pairs` holds `m * kp` pairs and `panel` `kp * 128` values, and `tile` holds
    // `TILE_ROWS * 64 >= m * 64` sums, which is what `rows` reads and writes.
    unsafe {
        match m {
            1 => rows::<1>(a, kp, w, t),
            2 => rows::<2>(a, kp, w, t),
            3 => rows::<3>(a, kp, w, t),
            4 => rows::<4>(a, kp, w, t),
            5 => rows::<5>(a, kp, w, t),
            _ => rows::<TILE_ROWS>(a, kp, w, t),
        }
    }
}

/// `R` rows of 64 sums, 4 vectors each, held in registers over all of `k`: per pair of `k`, four
/// vectors of panel weights, and each row's pair broadcast to every lane.
///
/// # Safety
/// The CPU has AVX-512F and AVX-512 BF16; `a` points at `R * kp` pairs, `w` at `kp * 128` bf16 and
/// `t` at `R * 64` writable f32.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn rows<const R: usize>(a: *const u32, kp: usize, w: *const Bf16, t: *mut f32) {
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    for g in 0..kp {
        let wg = w.add(g * COLS * GROUP);
        let mut wv = [to_bh(_mm512_setzero_si512()); 4];
        for (q, v) in wv.iter_mut().enumerate() {
            *v = to_bh(_mm512_loadu_si512(wg.add(32 * q).cast()));
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = to_bh(_mm512_set1_epi32(*a.add(r * kp + g) as i32));
            for (s, v) in acc.iter_mut().zip(&wv) {
                *s = _mm512_dpbf16_ps(*s, x, *v);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (q, s) in acc.iter().enumerate() {
            _mm512_storeu_ps(t.add(r * COLS + 16 * q), *s);
        }
    }
}
