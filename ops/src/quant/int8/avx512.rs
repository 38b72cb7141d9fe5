//! AVX-512 VNNI: tiles of 6 rows x 64 columns, 24 zmm of i32 sums, one `vpdpbusd` per row and 16
//! columns per group of 4 `k`.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::{Block, COLS, GROUP};

/// Rows per tile: 24 sums, the 4 weight vectors of a group and a broadcast fit the 32 registers.
const ROWS: usize = 6;

/// [`Block`]'s products, stored at `dst`, rows `dst_stride` apart.
///
/// # Safety
/// The CPU has AVX-512F, BW, VL and VNNI; `dst` addresses the block's rows of `width` values,
/// `dst_stride` apart, that nothing else reads or writes during the call.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn block(b: &Block, dst: *mut f32, dst_stride: usize) {
    let (m, groups, width) = b.shape();
    let mut r = 0;
    // SAFETY (each call): rows `r..r + R` are among the block's `m` (checked by `shape`, like
    // every slice the tile reads), and the caller's promises about `dst` carry over.
    while r + ROWS <= m {
        unsafe { tile::<ROWS>(b, groups, width, r, dst, dst_stride) };
        r += ROWS;
    }
    match m - r {
        1 => unsafe { tile::<1>(b, groups, width, r, dst, dst_stride) },
        2 => unsafe { tile::<2>(b, groups, width, r, dst, dst_stride) },
        3 => unsafe { tile::<3>(b, groups, width, r, dst, dst_stride) },
        4 => unsafe { tile::<4>(b, groups, width, r, dst, dst_stride) },
        5 => unsafe { tile::<5>(b, groups, width, r, dst, dst_stride) },
        _ => {}
    }
}

/// Rows `r0..r0 + R` of the block.
///
/// # Safety
/// As [`block`]; `shape` has checked the block and `r0 + R <= m`. Inlined into [`block`], whose
/// target features the intrinsics need.
#[inline(always)]
unsafe fn tile<const R: usize>(
    b: &Block,
    groups: usize,
    width: usize,
    r0: usize,
    dst: *mut f32,
    dst_stride: usize,
) {
    let mut acc = [[_mm512_setzero_si512(); 4]; R];
    let x = b.x.as_ptr().add(r0 * b.stride);
    let w = b.panel.as_ptr();
    for g in 0..groups {
        // SAFETY: group `g` of the panel is `COLS * GROUP` bytes at `g * COLS * GROUP`, and bytes
        // `g * GROUP..` of each row lie within the row's `stride = groups * GROUP` (`shape`).
        let wg = w.add(g * COLS * GROUP);
        let w4 = [0, 1, 2, 3].map(|v| _mm512_loadu_si512(wg.add(64 * v).cast()));
        for (r, acc) in acc.iter_mut().enumerate() {
            let a = x
                .add(r * b.stride + g * GROUP)
                .cast::<i32>()
                .read_unaligned();
            let a = _mm512_set1_epi32(a);
            for (acc, &wv) in acc.iter_mut().zip(&w4) {
                *acc = _mm512_dpbusd_epi32(*acc, a, wv);
            }
        }
    }
    // SAFETY: rows `r0..r0 + R` of the block and of `dst`, as the caller promises.
    unsafe { epilogue(b, width, r0, R, |r, v| acc[r][v], dst, dst_stride) }
}

/// The epilogue of rows `r0..r0 + rows` of the block, whose raw sums of columns `16 v..16 v + 16`
/// of row `r0 + r` are `sums(r, v)`: subtracts `x_zero col_sums`, scales by the row's and the
/// columns' scales, adds the bias, applies ReLU, adds onto the output, and stores the `width` real
/// columns. Shared with the AMX kernel, which stores its tiles' sums and reads them back.
///
/// # Safety
/// The CPU has AVX-512F; `shape` has checked the block, `r0 + rows <= m`, `width` is the block's,
/// and `dst` addresses rows `r0..r0 + rows` of `width` values, `dst_stride` apart, that nothing
/// else reads or writes during the call. Inlined into callers with AVX-512F enabled.
#[inline(always)]
pub(super) unsafe fn epilogue(
    b: &Block,
    width: usize,
    r0: usize,
    rows: usize,
    sums: impl Fn(usize, usize) -> __m512i,
    dst: *mut f32,
    dst_stride: usize,
) {
    // 16 columns at a time; lanes past the real columns are masked off, so the loads and stores
    // below touch only the `width` values of each slice and output row.
    let zero = _mm512_setzero_ps();
    let x_zero = _mm512_set1_epi32(b.x_zero);
    for v in 0..4 {
        let lanes = width.saturating_sub(16 * v).min(16);
        if lanes == 0 {
            break;
        }
        let mask = (((1u32 << lanes) - 1) & 0xffff) as __mmask16;
        let c = 16 * v;
        let offset = _mm512_mullo_epi32(
            _mm512_maskz_loadu_epi32(mask, b.col_sums.as_ptr().add(c)),
            x_zero,
        );
        let scale = _mm512_maskz_loadu_ps(mask, b.w_scales.as_ptr().add(c));
        let bias = b
            .bias
            .map(|bias| _mm512_maskz_loadu_ps(mask, bias.as_ptr().add(c)));
        for r in 0..rows {
            let out = dst.add((r0 + r) * dst_stride + c);
            let sums = _mm512_sub_epi32(sums(r, v), offset);
            let row_scale = _mm512_set1_ps(*b.x_scales.get_unchecked(r0 + r));
            let mut f = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(sums), row_scale), scale);
            if let Some(bias) = bias {
                f = _mm512_add_ps(f, bias);
            }
            if b.relu {
                // NaN becomes 0, as `f32::max` makes it.
                f = _mm512_max_ps(f, zero);
            }
            if b.accumulate {
                f = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, out), f);
            }
            _mm512_mask_storeu_ps(out, mask, f);
        }
    }
}
