//! The exact widening fallback: each bf16 weight shifted into an f32 (exact), multiplied by the
//! bf16-rounded activation (exact in f32, so a fused and an unfused multiply-add round alike) and
//! summed in f32 in `k` order, compiled for each instruction set.

use super::{Tile, COLS, GROUP, TILE_ROWS};
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
        // SAFETY: an `Isa` of AVX-512 is made only after detecting AVX-512F and FMA.
        Kind::Avx512 => unsafe { tile_avx512(m, pairs, kp, panel, tile) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an `Isa` of AVX2 is made only after detecting AVX2 and FMA.
        Kind::Avx2Fma => unsafe { tile_avx2(m, pairs, kp, panel, tile) },
        #[cfg(target_arch = "aarch64")]
        Kind::Neon => tile_rows::<1, true>(m, pairs, kp, panel, tile),
        Kind::Portable => tile_rows::<1, false>(m, pairs, kp, panel, tile),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn tile_avx512(m: usize, pairs: &[u32], kp: usize, panel: &[Bf16], tile: &mut Tile) {
    // Four rows of 64 sums and the 64 widened weights of both halves of a pair: 24 registers.
    tile_rows::<4, true>(m, pairs, kp, panel, tile)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(m: usize, pairs: &[u32], kp: usize, panel: &[Bf16], tile: &mut Tile) {
    tile_rows::<1, true>(m, pairs, kp, panel, tile)
}

/// The tile's rows `N` at a time, then one at a time.
#[inline(always)]
fn tile_rows<const N: usize, const FMA: bool>(
    m: usize,
    pairs: &[u32],
    kp: usize,
    panel: &[Bf16],
    tile: &mut Tile,
) {
    debug_assert!(m <= TILE_ROWS);
    let mut r = 0;
    while r + N <= m {
        rows::<N, FMA>(
            &pairs[r * kp..(r + N) * kp],
            kp,
            panel,
            &mut tile[r * COLS..],
        );
        r += N;
    }
    while r < m {
        rows::<1, FMA>(
            &pairs[r * kp..(r + 1) * kp],
            kp,
            panel,
            &mut tile[r * COLS..],
        );
        r += 1;
    }
}

/// `N` rows of 64 sums over all of `k`, each pair of weights widened once for the `N` rows.
#[inline(always)]
fn rows<const N: usize, const FMA: bool>(
    pairs: &[u32],
    kp: usize,
    panel: &[Bf16],
    out: &mut [f32],
) {
    let mut acc = [[0.0f32; COLS]; N];
    for (g, w) in panel.chunks_exact(COLS * GROUP).enumerate().take(kp) {
        let mut even = [0.0f32; COLS];
        let mut odd = [0.0f32; COLS];
        for ((e, o), w) in even.iter_mut().zip(&mut odd).zip(w.chunks_exact(GROUP)) {
            *e = w[0].to_f32();
            *o = w[1].to_f32();
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            let p = pairs[r * kp + g];
            let x0 = f32::from_bits(p << 16);
            let x1 = f32::from_bits(p & 0xffff_0000);
            for ((s, &e), &o) in acc.iter_mut().zip(&even).zip(&odd) {
                *s = madd::<FMA>(x1, o, madd::<FMA>(x0, e, *s));
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        out[r * COLS..(r + 1) * COLS].copy_from_slice(acc);
    }
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
