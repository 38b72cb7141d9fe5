//! The exact widening fallback: each bf16 weight shifted into an f32 (exact), multiplied by the
//! bf16-rounded activation (exact in f32, so a fused and an unfused multiply-add round alike) and
//! summed in f32 in `k` order, compiled for each instruction set.

use super::{Tile, COLS, GROUP};
use crate::element::Bf16;
use crate::simd::{Isa, Kind};

/// Rows of `k` values of `x` rounded to bf16 (ties to even) as pairs, `k.div_ceil(2)` a row, the
/// even `k` in the low half.
pub(super) fn convert(x: &[f32], k: usize, pairs: &mut [u32]) {
    let kp = k.div_ceil(GROUP);
    if kp == 0 {
        return;
    }
    for (x, p) in x.chunks_exact(k).zip(pairs.chunks_exact_mut(kp)) {
        for (pair, v) in p.iter_mut().zip(x.chunks(GROUP)) {
            let hi = v.get(1).map_or(0, |&h| Bf16::from_f32(h).0);
            *pair = u32::from(Bf16::from_f32(v[0]).0) | u32::from(hi) << 16;
        }
    }
}

/// The sums of `m` rows of pairs with one panel on `isa`; lengths checked by the caller.
pub(super) fn tile(isa: Isa, m: usize, pairs: &[u32], kp: usize, panel: &[Bf16], tile: &mut Tile) {
    match isa.kind() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an `Isa` of AVX-512 is made only after detecting AVX-512F and FMA; the caller
        // checked the lengths of `pairs` and `panel`.
        Kind::Avx512 => unsafe { tile_avx512(m, pairs, kp, panel, tile) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an `Isa` of AVX2 is made only after detecting AVX2 and FMA; the caller checked
        // the lengths of `pairs` and `panel`.
        Kind::Avx2Fma => unsafe { tile_avx2(m, pairs, kp, panel, tile) },
        #[cfg(target_arch = "aarch64")]
        Kind::Neon => tile_rows::<true>(m, pairs, kp, panel, tile),
        Kind::Portable => tile_rows::<false>(m, pairs, kp, panel, tile),
    }
}

/// Four rows at a time, then the rest ([`avx512::rows`]).
///
/// # Safety
/// The CPU has AVX-512F and FMA; `pairs` holds `m * kp` pairs and `panel` `kp * 128` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn tile_avx512(m: usize, pairs: &[u32], kp: usize, panel: &[Bf16], tile: &mut Tile) {
    let (a, w, t) = (pairs.as_ptr(), panel.as_ptr(), tile.as_mut_ptr());
    let mut r = 0;
    while r + 4 <= m {
        avx512::rows::<4>(a.add(r * kp), kp, w, t.add(r * COLS));
        r += 4;
    }
    match m - r {
        1 => avx512::rows::<1>(a.add(r * kp), kp, w, t.add(r * COLS)),
        2 => avx512::rows::<2>(a.add(r * kp), kp, w, t.add(r * COLS)),
        3 => avx512::rows::<3>(a.add(r * kp), kp, w, t.add(r * COLS)),
        _ => {}
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{COLS, GROUP};
    use crate::element::Bf16;

    /// `R` rows of 64 sums held in registers over all of `k`. A 512-bit load holds 16 columns'
    /// pairs: a 16-bit shift widens their even `k`, a mask their odd one, without shuffles; each
    /// column adds its even product, then its odd one, as the reference order does.
    ///
    /// # Safety
    /// The CPU has AVX-512F and FMA; `a` points at `R * kp` pairs, `w` at `kp * 128` bf16 and
    /// `t` at `R * 64` writable f32.
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    #[allow(clippy::needless_range_loop)] // Indices name a register tile's rows and quarters.
    pub(super) unsafe fn rows<const R: usize>(
        a: *const u32,
        kp: usize,
        w: *const Bf16,
        t: *mut f32,
    ) {
        let high = _mm512_set1_epi32(0xffff_0000u32 as i32);
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        for g in 0..kp {
            let mut even = [_mm512_setzero_ps(); R];
            let mut odd = [_mm512_setzero_ps(); R];
            for r in 0..R {
                let p = _mm512_set1_epi32(*a.add(r * kp + g) as i32);
                even[r] = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(p));
                odd[r] = _mm512_castsi512_ps(_mm512_and_si512(p, high));
            }
            let wg = w.add(g * COLS * GROUP);
            for q in 0..4 {
                let v = _mm512_loadu_si512(wg.add(32 * q).cast());
                let e = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v));
                let o = _mm512_castsi512_ps(_mm512_and_si512(v, high));
                for r in 0..R {
                    acc[r][q] = _mm512_fmadd_ps(even[r], e, acc[r][q]);
                    acc[r][q] = _mm512_fmadd_ps(odd[r], o, acc[r][q]);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (q, s) in acc.iter().enumerate() {
                _mm512_storeu_ps(t.add(r * COLS + 16 * q), *s);
            }
        }
    }
}

/// Two rows at a time, then the last one ([`avx2::rows`]).
///
/// # Safety
/// The CPU has AVX2 and FMA; `pairs` holds `m * kp` pairs and `panel` `kp * 128` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(m: usize, pairs: &[u32], kp: usize, panel: &[Bf16], tile: &mut Tile) {
    let (a, w, t) = (pairs.as_ptr(), panel.as_ptr(), tile.as_mut_ptr());
    let mut r = 0;
    while r + 2 <= m {
        avx2::rows::<2>(a.add(r * kp), kp, w, t.add(r * COLS));
        r += 2;
    }
    if r < m {
        avx2::rows::<1>(a.add(r * kp), kp, w, t.add(r * COLS));
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{COLS, GROUP};
    use crate::element::Bf16;

    /// `R` rows of 64 sums, a half of 32 columns at a time (16 registers hold two rows of 32
    /// sums, the rows' activation pairs and one widened weight vector); otherwise as
    /// `avx512::rows`, with 8 columns' pairs in a 256-bit load.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `a` points at `R * kp` pairs, `w` at `kp * 128` bf16 and `t` at
    /// `R * 64` writable f32.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::needless_range_loop)] // Indices name a register tile's rows and quarters.
    pub(super) unsafe fn rows<const R: usize>(
        a: *const u32,
        kp: usize,
        w: *const Bf16,
        t: *mut f32,
    ) {
        let high = _mm256_set1_epi32(0xffff_0000u32 as i32);
        for half in 0..2 {
            let mut acc = [[_mm256_setzero_ps(); 4]; R];
            for g in 0..kp {
                let mut even = [_mm256_setzero_ps(); R];
                let mut odd = [_mm256_setzero_ps(); R];
                for r in 0..R {
                    let p = _mm256_set1_epi32(*a.add(r * kp + g) as i32);
                    even[r] = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(p));
                    odd[r] = _mm256_castsi256_ps(_mm256_and_si256(p, high));
                }
                let wg = w.add(g * COLS * GROUP + half * COLS);
                for q in 0..4 {
                    let v = _mm256_loadu_si256(wg.add(16 * q).cast());
                    let e = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(v));
                    let o = _mm256_castsi256_ps(_mm256_and_si256(v, high));
                    for r in 0..R {
                        acc[r][q] = _mm256_fmadd_ps(even[r], e, acc[r][q]);
                        acc[r][q] = _mm256_fmadd_ps(odd[r], o, acc[r][q]);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                for (q, s) in acc.iter().enumerate() {
                    _mm256_storeu_ps(t.add(r * COLS + half * 32 + 8 * q), *s);
                }
            }
        }
    }
}

/// Row by row in plain loops, for the instruction sets without a kernel of their own.
#[inline(always)]
fn tile_rows<const FMA: bool>(m: usize, pairs: &[u32], kp: usize, panel: &[Bf16], tile: &mut Tile) {
    for (a, out) in pairs
        .chunks_exact(kp.max(1))
        .zip(tile.chunks_exact_mut(COLS))
        .take(m)
    {
        row::<FMA>(a, panel, out);
    }
    if kp == 0 {
        tile[..m * COLS].fill(0.0);
    }
}

/// One row of 64 sums over all of `k`.
#[inline(always)]
fn row<const FMA: bool>(pairs: &[u32], panel: &[Bf16], out: &mut [f32]) {
    let mut acc = [0.0f32; COLS];
    for (&p, w) in pairs.iter().zip(panel.chunks_exact(COLS * GROUP)) {
        let x0 = f32::from_bits(p << 16);
        let x1 = f32::from_bits(p & 0xffff_0000);
        for (s, w) in acc.iter_mut().zip(w.chunks_exact(GROUP)) {
            *s = madd::<FMA>(x1, w[1].to_f32(), madd::<FMA>(x0, w[0].to_f32(), *s));
        }
    }
    out.copy_from_slice(&acc);
}

/// `a + x * w`, fused where the instruction set has it (the same value: the product is exact).
#[inline(always)]
fn madd<const FMA: bool>(x: f32, w: f32, a: f32) -> f32 {
    if FMA {
        x.mul_add(w, a)
    } else {
        a + x * w
    }
}
