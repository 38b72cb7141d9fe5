//! The 256-bit kernels: one tile of R rows x 16 columns, written once over how a group's four
//! products are added into each column's sum ([`Dot`]) and built four times: AVX-VNNI (VEX
//! `vpdpbusd`, Alder Lake and later, Zen 5), AVX-512 VNNI on ymm (the same code on CPUs with
//! AVX-512 VNNI, where it is tested when AVX-VNNI is missing), AVX2 with `vpmaddubsw` (rows offset
//! by 128 only) and AVX2 widening to i16 (any codes, for [`super::gemm_u8`]).

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::{Block, COLS, GROUP};

/// How a tile adds the products of one group of four `k` into the i32 sums of a strip of 16
/// columns.
trait Dot {
    /// Whether the activations keep their offset (`x_zero`), so that the sums need `x_zero
    /// col_sums` taken off.
    const OFFSET: bool;
    /// A row's broadcast group of four activation bytes, prepared once for the strip.
    type Row: Copy;
    /// A group's codes of the strip (64 bytes), prepared once for the tile's rows.
    type Codes: Copy;
    /// A row's sums of the strip, in the implementation's arrangement.
    type Sums: Copy;

    /// # Safety
    /// The CPU has the instructions of the implementation.
    unsafe fn zero() -> Self::Sums;

    /// # Safety
    /// As [`Dot::zero`]; `w` addresses 64 readable bytes.
    unsafe fn codes(w: *const i8) -> Self::Codes;

    /// # Safety
    /// As [`Dot::zero`].
    unsafe fn prepare(a: i32) -> Self::Row;

    /// `acc` plus the four products of the row's bytes and each column's codes.
    ///
    /// # Safety
    /// As [`Dot::zero`].
    unsafe fn dot(acc: &mut Self::Sums, a: Self::Row, w: &Self::Codes);

    /// The sums of columns 0-7 and 8-15, in order.
    ///
    /// # Safety
    /// As [`Dot::zero`].
    unsafe fn finish(acc: Self::Sums) -> [__m256i; 2];
}

/// The `vpdpbusd` kernels: u8 x s8 products, four summed into each lane, exact for any operands.
trait Dpbusd {
    /// # Safety
    /// The CPU has the instruction.
    unsafe fn dpbusd(acc: __m256i, a: __m256i, w: __m256i) -> __m256i;
}

impl<D: Dpbusd> Dot for D {
    const OFFSET: bool = true;
    type Row = __m256i;
    type Codes = [__m256i; 2];
    type Sums = [__m256i; 2];

    #[inline(always)]
    unsafe fn zero() -> [__m256i; 2] {
        [_mm256_setzero_si256(); 2]
    }

    #[inline(always)]
    unsafe fn codes(w: *const i8) -> [__m256i; 2] {
        [
            _mm256_loadu_si256(w.cast()),
            _mm256_loadu_si256(w.add(32).cast()),
        ]
    }

    #[inline(always)]
    unsafe fn prepare(a: i32) -> __m256i {
        _mm256_set1_epi32(a)
    }

    #[inline(always)]
    unsafe fn dot(acc: &mut [__m256i; 2], a: __m256i, w: &[__m256i; 2]) {
        acc[0] = D::dpbusd(acc[0], a, w[0]);
        acc[1] = D::dpbusd(acc[1], a, w[1]);
    }

    #[inline(always)]
    unsafe fn finish(acc: [__m256i; 2]) -> [__m256i; 2] {
        acc
    }
}

/// AVX-VNNI's `vpdpbusd` (VEX).
struct AvxVnni;

impl Dpbusd for AvxVnni {
    #[inline(always)]
    unsafe fn dpbusd(acc: __m256i, a: __m256i, w: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(acc, a, w)
    }
}

/// AVX-512 VNNI's `vpdpbusd` on ymm (EVEX).
struct Avx512VnniYmm;

impl Dpbusd for Avx512VnniYmm {
    #[inline(always)]
    unsafe fn dpbusd(acc: __m256i, a: __m256i, w: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, a, w)
    }
}

/// AVX2: `vpmaddubsw` multiplies u8 by s8 and adds pairs into i16 with saturation, which 255 x 127
/// x 2 would reach. So the activations lose their offset of 128 (s8, -127 to 127), `vpmaddubsw`
/// takes their magnitudes and the weights with the activations' signs moved onto them (`vpsignb`;
/// the weights are never -128), and each pair is at most 2 x 127 x 127 = 32258: no saturation.
/// `vpmaddwd` by ones then adds the pairs into i32. Only for [`super::QuantRows`]' codes (offset
/// 128, never 0) and [`super::quantize_pack`]'s weights (never -128).
struct SignedPairs;

impl Dot for SignedPairs {
    const OFFSET: bool = false;
    /// The magnitudes and the signed values.
    type Row = (__m256i, __m256i);
    type Codes = [__m256i; 2];
    type Sums = [__m256i; 2];

    #[inline(always)]
    unsafe fn zero() -> [__m256i; 2] {
        [_mm256_setzero_si256(); 2]
    }

    #[inline(always)]
    unsafe fn codes(w: *const i8) -> [__m256i; 2] {
        [
            _mm256_loadu_si256(w.cast()),
            _mm256_loadu_si256(w.add(32).cast()),
        ]
    }

    #[inline(always)]
    unsafe fn prepare(a: i32) -> (__m256i, __m256i) {
        let signed = _mm256_xor_si256(_mm256_set1_epi32(a), _mm256_set1_epi8(-128));
        (_mm256_abs_epi8(signed), signed)
    }

    #[inline(always)]
    unsafe fn dot(acc: &mut [__m256i; 2], (abs, signed): (__m256i, __m256i), w: &[__m256i; 2]) {
        for (acc, &w) in acc.iter_mut().zip(w) {
            let pairs = _mm256_maddubs_epi16(abs, _mm256_sign_epi8(w, signed));
            *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
        }
    }

    #[inline(always)]
    unsafe fn finish(acc: [__m256i; 2]) -> [__m256i; 2] {
        acc
    }
}

/// AVX2, exact for any u8 activations and any i8 codes (those of [`super::gemm_u8`]): both widened
/// to i16, `vpmaddwd` multiplies and adds pairs into i32 (at most 2 x 255 x 128 = 65280, far from
/// saturating). A column's four products then lie in two lanes (`k` 0-1 and 2-3), kept apart in
/// four registers of 4 columns each and added (`vphaddd`) once, when the tile is done.
struct WidePairs;

impl Dot for WidePairs {
    const OFFSET: bool = true;
    /// The four activations as i16, repeated across the register.
    type Row = __m256i;
    /// Columns `4 i..4 i + 4`, four i16 codes each.
    type Codes = [__m256i; 4];
    /// Lane `2 j + h` of register `i`: column `4 i + j`, `k` pair `h`, within each 128-bit half
    /// (columns `4 i`, `4 i + 1` in the low half, `4 i + 2`, `4 i + 3` in the high one).
    type Sums = [__m256i; 4];

    #[inline(always)]
    unsafe fn zero() -> [__m256i; 4] {
        [_mm256_setzero_si256(); 4]
    }

    #[inline(always)]
    unsafe fn codes(w: *const i8) -> [__m256i; 4] {
        [0, 1, 2, 3].map(|i| _mm256_cvtepi8_epi16(_mm_loadu_si128(w.add(16 * i).cast())))
    }

    #[inline(always)]
    unsafe fn prepare(a: i32) -> __m256i {
        _mm256_cvtepu8_epi16(_mm_set1_epi32(a))
    }

    #[inline(always)]
    unsafe fn dot(acc: &mut [__m256i; 4], a: __m256i, w: &[__m256i; 4]) {
        for (acc, &w) in acc.iter_mut().zip(w) {
            *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(w, a));
        }
    }

    #[inline(always)]
    unsafe fn finish(acc: [__m256i; 4]) -> [__m256i; 2] {
        // `vphaddd` of registers 0 and 1 gives columns [0 1 4 5 | 2 3 6 7]; the 64-bit
        // permutation puts them in order.
        let order = |a, b| _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_hadd_epi32(a, b));
        [order(acc[0], acc[1]), order(acc[2], acc[3])]
    }
}

/// [`Block`]'s products with AVX-VNNI, stored at `dst`, rows `dst_stride` apart.
///
/// # Safety
/// The CPU has AVX2 and AVX-VNNI; `dst` addresses the block's rows of `width` values,
/// `dst_stride` apart, that nothing else reads or writes during the call.
#[target_feature(enable = "avx2,avxvnni")]
pub(super) unsafe fn block_avx_vnni(b: &Block, dst: *mut f32, dst_stride: usize) {
    // SAFETY: as this function's own contract.
    unsafe { block::<AvxVnni, 6>(b, dst, dst_stride) }
}

/// [`block_avx_vnni`] with AVX-512 VNNI on ymm.
///
/// # Safety
/// The CPU has AVX2, AVX-512F, VL and VNNI; `dst` as for [`block_avx_vnni`].
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
pub(super) unsafe fn block_avx512_vnni(b: &Block, dst: *mut f32, dst_stride: usize) {
    // SAFETY: as this function's own contract.
    unsafe { block::<Avx512VnniYmm, 6>(b, dst, dst_stride) }
}

/// [`block_avx_vnni`] with AVX2 alone, for rows offset by 128 and weights never -128
/// ([`SignedPairs`]). 4 rows a tile: the sign trick needs two more registers.
///
/// # Safety
/// The CPU has AVX2; `dst` as for [`block_avx_vnni`].
#[target_feature(enable = "avx2")]
pub(super) unsafe fn block_avx2(b: &Block, dst: *mut f32, dst_stride: usize) {
    // SAFETY: as this function's own contract.
    unsafe { block::<SignedPairs, 4>(b, dst, dst_stride) }
}

/// [`block_avx_vnni`] with AVX2 alone, exact for any codes ([`WidePairs`]). 2 rows a tile: each
/// takes four registers of sums, and the codes widened four more.
///
/// # Safety
/// The CPU has AVX2; `dst` as for [`block_avx_vnni`].
#[target_feature(enable = "avx2")]
pub(super) unsafe fn block_avx2_wide(b: &Block, dst: *mut f32, dst_stride: usize) {
    // SAFETY: as this function's own contract.
    unsafe { block::<WidePairs, 2>(b, dst, dst_stride) }
}

/// The block in strips of 16 columns, each strip's rows in tiles of `R` (the strip's codes, a
/// 64-byte line per group, stay in L1 while its rows go by).
///
/// # Safety
/// As the entry points; inlined into them, whose target features the intrinsics need.
#[inline(always)]
unsafe fn block<D: Dot, const R: usize>(b: &Block, dst: *mut f32, dst_stride: usize) {
    let (m, groups, width) = b.shape();
    for strip in 0..width.div_ceil(16) {
        let mut r = 0;
        // SAFETY (each call): rows `r..r + rows` are among the block's `m`, strip `strip` among
        // its columns (`shape` checked every slice); `dst` as the caller promises.
        while r + R <= m {
            unsafe { tile::<D, R>(b, groups, width, strip, r, dst, dst_stride) };
            r += R;
        }
        match m - r {
            0 => {}
            1 => unsafe { tile::<D, 1>(b, groups, width, strip, r, dst, dst_stride) },
            2 => unsafe { tile::<D, 2>(b, groups, width, strip, r, dst, dst_stride) },
            3 => unsafe { tile::<D, 3>(b, groups, width, strip, r, dst, dst_stride) },
            4 => unsafe { tile::<D, 4>(b, groups, width, strip, r, dst, dst_stride) },
            _ => unsafe { tile::<D, 5>(b, groups, width, strip, r, dst, dst_stride) },
        }
    }
}

/// Rows `r0..r0 + R`, columns `16 strip..16 strip + 16` (those below `width`) of the block.
///
/// # Safety
/// As [`block`]; `r0 + R <= m` and `16 strip < width`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<D: Dot, const R: usize>(
    b: &Block,
    groups: usize,
    width: usize,
    strip: usize,
    r0: usize,
    dst: *mut f32,
    dst_stride: usize,
) {
    let mut acc = [D::zero(); R];
    let x = b.x.as_ptr().add(r0 * b.stride);
    // Strip `strip` of each group: 16 columns x 4 codes, 64 bytes at `64 strip`.
    let w = b.panel.as_ptr().add(strip * 16 * GROUP);
    for g in 0..groups {
        // The strip of group `g` lies within the panel's `groups * COLS * GROUP` bytes, and bytes
        // `g * GROUP..` of each row within its `stride = groups * GROUP` (checked by `shape`).
        let codes = D::codes(w.add(g * COLS * GROUP));
        for (r, acc) in acc.iter_mut().enumerate() {
            let a = x
                .add(r * b.stride + g * GROUP)
                .cast::<i32>()
                .read_unaligned();
            D::dot(acc, D::prepare(a), &codes);
        }
    }
    let acc = acc.map(|acc| D::finish(acc));
    let zero = _mm256_setzero_ps();
    let x_zero = _mm256_set1_epi32(b.x_zero);
    for half in 0..2 {
        let c = 16 * strip + 8 * half;
        let lanes = width.saturating_sub(c).min(8);
        if lanes == 0 {
            break;
        }
        // Lanes below `lanes` set: past the real columns nothing is read or written.
        let mask = _mm256_cmpgt_epi32(
            _mm256_set1_epi32(lanes as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        );
        let offset = if D::OFFSET {
            let sums = if lanes == 8 {
                _mm256_loadu_si256(b.col_sums.as_ptr().add(c).cast())
            } else {
                _mm256_maskload_epi32(b.col_sums.as_ptr().add(c), mask)
            };
            _mm256_mullo_epi32(sums, x_zero)
        } else {
            _mm256_setzero_si256()
        };
        let scale = load(b.w_scales.as_ptr().add(c), lanes, mask);
        let bias = b.bias.map(|bias| load(bias.as_ptr().add(c), lanes, mask));
        for (r, acc) in acc.iter().enumerate() {
            let out = dst.add((r0 + r) * dst_stride + c);
            let sums = if D::OFFSET {
                _mm256_sub_epi32(acc[half], offset)
            } else {
                acc[half]
            };
            let row_scale = _mm256_set1_ps(*b.x_scales.get_unchecked(r0 + r));
            let mut f = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(sums), row_scale), scale);
            if let Some(bias) = bias {
                f = _mm256_add_ps(f, bias);
            }
            if b.relu {
                // NaN becomes 0, as `f32::max` makes it.
                f = _mm256_max_ps(f, zero);
            }
            if b.accumulate {
                f = _mm256_add_ps(load(out, lanes, mask), f);
            }
            if lanes == 8 {
                _mm256_storeu_ps(out, f);
            } else {
                _mm256_maskstore_ps(out, mask, f);
            }
        }
    }
}

/// The first `lanes` of the 8 values at `p` (`mask` has those lanes set), zeros in the others.
///
/// # Safety
/// The CPU has AVX; the first `lanes` values at `p` are readable.
#[inline(always)]
unsafe fn load(p: *const f32, lanes: usize, mask: __m256i) -> __m256 {
    if lanes == 8 {
        _mm256_loadu_ps(p)
    } else {
        _mm256_maskload_ps(p, mask)
    }
}
