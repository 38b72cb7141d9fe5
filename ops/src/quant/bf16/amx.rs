//! The AMX-BF16 kernel: `tdpbf16ps` multiplies a tile of 16 rows of 16 activation pairs by a tile
//! of 16 pairs of 16 columns and adds both products of each pair to a 16x16 tile of f32 sums
//! (8192 multiply-adds an instruction).
//!
//! The packed weights are read in place: 16 pairs of a panel (16 groups of 256 bytes) are, for
//! each of its 4 blocks of 16 columns, a B tile of 16 rows of 64 bytes with a row stride of 256
//! bytes. The activations are rounded (as the AVX-512 BF16 kernel rounds them) into rows padded
//! with zero pairs to a multiple of 16 pairs, and the rows padded with zero rows to a multiple of
//! 16, so every A tile is whole; each tile of 16 rows is stored as its A tiles one after the
//! other (1 KiB each), which the tile loads read in order, where rows of the whole `k` apart
//! were measured 20% slower. The last, partial 16 pairs of a panel are copied once per panel
//! into zero-padded scratch, so no tile reads past the weights either.
//!
//! Each step of 16 pairs takes one A tile (16 rows) and the 4 B tiles of a panel into 4 tiles of
//! sums (16 rows of 64 columns). A task takes a panel in runs of [`RUN_STEPS`] steps, each run
//! past every tile of rows of its block while the run's weights stay in L1, the sums stored
//! between runs; after the last run the sums are finished by the same epilogue as the other
//! kernels, only the real rows and columns.

use rayon::prelude::*;

use super::{dpbf16, finish_row, Bf16Weights, Tasks, COLS, GROUP};
use crate::amx::{self as tiles, Product, TileConfig};
use crate::element::Bf16;
use crate::matmul::SharedPtr;
use crate::quant::Epilogue;

/// Rows of an A tile and of the sums.
const ROWS: usize = 16;

/// Pairs of `k` a `tdpbf16ps` takes: 64 bytes of an A tile row, the 16 rows of a B tile.
const STEP: usize = 16;

/// Bytes of one pair of `k` of a panel (64 columns of 2 bf16): the row stride of a B tile.
const GROUP_BYTES: usize = COLS * GROUP * 2;

/// Whether this CPU and OS let the kernel run: AMX-BF16 tiles, and AVX-512 BF16 for the rounding.
pub(super) fn detected() -> bool {
    dpbf16::detected() && tiles::available(Product::Bf16)
}

/// Every tile 16 rows of 64 bytes: sums in 0 to 3, activations in 4, weights in 5 to 7.
const CONFIG: TileConfig = TileConfig::new()
    .tile(0, 16, 64)
    .tile(1, 16, 64)
    .tile(2, 16, 64)
    .tile(3, 16, 64)
    .tile(4, 16, 64)
    .tile(5, 16, 64)
    .tile(6, 16, 64)
    .tile(7, 16, 64);

/// Steps a run takes: 128 pairs of a panel, 32 KiB, that stay in L1 while each tile of rows of
/// the block takes them in turn.
const RUN_STEPS: usize = 8;

/// 16 rows of 64 f32 sums, aligned for `tilestored`.
#[repr(C, align(64))]
#[derive(Clone)]
struct Sums([f32; ROWS * COLS]);

/// 16 pairs of a panel, the weights of a partial last step padded with zeros.
#[repr(C, align(64))]
struct Tail([Bf16; STEP * COLS * GROUP]);

/// `out = epilogue(bf16(x) w)` (see [`super::gemm_bf16`]), the pairs rounded into `scratch`;
/// `rows` and `n` are not zero and the lengths are checked by the caller; `pool` is the number of
/// threads to share the work among, `None` to run on the calling thread alone.
///
/// Only called with a kernel made after [`detected`].
pub(super) fn gemm(
    x: &[f32],
    rows: usize,
    w: Bf16Weights,
    epi: Epilogue,
    out: &mut [f32],
    scratch: &mut Vec<u32>,
    pool: Option<usize>,
) {
    let (threads, parallel) = (pool.unwrap_or(1), pool.is_some());
    let (k, n) = (w.k(), w.n());
    let kp = k.div_ceil(GROUP);
    let steps = kp / STEP;
    let rest = kp % STEP;
    let all_steps = kp.div_ceil(STEP);
    // Pairs a padded row holds, and the padded rows.
    let stride = kp.next_multiple_of(STEP);
    let rows16 = rows.next_multiple_of(ROWS);
    if scratch.len() < rows16 * stride {
        scratch.resize(rows16 * stride, 0);
    }
    let pairs = &mut scratch[..rows16 * stride];
    // Each tile of 16 rows is laid out as its A tiles, one after the other: step `s` is 16 rows
    // of 16 pairs (64 bytes), so that each A tile is 1 KiB read in order.
    let convert = |first_tile: usize, block: &mut [u32]| {
        for (t, tile) in block.chunks_exact_mut(ROWS * stride).enumerate() {
            for (s, a) in tile.chunks_exact_mut(ROWS * STEP).enumerate() {
                for (i, dst) in a.chunks_exact_mut(STEP).enumerate() {
                    let r = (first_tile + t) * ROWS + i;
                    let from = (s * STEP * GROUP).min(k);
                    let len = if r < rows {
                        k.min(from + STEP * GROUP) - from
                    } else {
                        0
                    };
                    let have = len.div_ceil(GROUP);
                    if have > 0 {
                        dpbf16::convert(&x[r * k + from..][..len], len, &mut dst[..have]);
                    }
                    dst[have..].fill(0);
                }
            }
        }
    };
    if stride > 0 {
        if parallel {
            let chunk = (rows16 / ROWS).div_ceil(threads);
            pairs
                .par_chunks_mut(chunk * ROWS * stride)
                .enumerate()
                .for_each(|(c, block)| convert(c * chunk, block));
        } else {
            convert(0, pairs);
        }
    }
    let pairs = &*pairs;

    // Tasks as in `gemm_bf16_with`, blocks of whole tiles of rows.
    let panels = n.div_ceil(COLS);
    let split = Tasks::new(
        rows16,
        ROWS,
        stride * 4,
        panels,
        parallel.then_some(threads),
    );
    let base = SharedPtr(out.as_mut_ptr());
    let task = |t: usize| {
        let (row_range, panel_range) = split.task(t);
        let (first_row, end_row) = (row_range.start, row_range.end);
        // The sums of every tile of rows of the block, 16 rows of 64 each, kept across the runs
        // of steps.
        let mut sums = vec![Sums([0.0; ROWS * COLS]); (end_row - first_row) / ROWS];
        let mut tail = Tail([Bf16(0); STEP * COLS * GROUP]);
        // SAFETY: a kernel of this kind is made only after `detected`; every tile used below is
        // configured.
        unsafe { CONFIG.load() };
        for p in panel_range {
            let (panel, width) = w.panel(p);
            let first = p * COLS;
            let bias = epi.bias.map(|b| &b[first..first + width]);
            if rest > 0 {
                let have = rest * COLS * GROUP;
                tail.0[..have].copy_from_slice(&panel[steps * STEP * COLS * GROUP..]);
                tail.0[have..].fill(Bf16(0));
            }
            // Runs of steps whose weights stay in L1 while every tile of rows takes them.
            for c0 in (0..all_steps.max(1)).step_by(RUN_STEPS) {
                let run = c0..all_steps.min(c0 + RUN_STEPS);
                for (i, tile_sums) in sums.iter_mut().enumerate() {
                    let r = first_row + i * ROWS;
                    let a = pairs[r * stride..(r + ROWS) * stride].as_ptr();
                    let t = tile_sums.0.as_mut_ptr();
                    // SAFETY: the tiles are configured (above). `a` starts the 16 padded rows of
                    // `stride` pairs of a tile of rows, as `stride / 16` A tiles of 16 rows of
                    // 16 pairs, so A tile `s < stride / 16` lies inside them. The panel holds `kp`
                    // pairs of 256 bytes, so the B tiles of step `s < steps` (16 pairs from pair
                    // `STEP * s`) lie inside it, and those of the partial step lie inside `tail`,
                    // 16 pairs long. `t` holds 16 rows of 256 bytes, as the 4 loads and stores
                    // of 16 rows of 64 bytes read and write.
                    unsafe {
                        if c0 == 0 {
                            zero_sums();
                        } else {
                            load_sums(t);
                        }
                        for s in run.clone() {
                            let b = if s < steps {
                                panel.as_ptr().add(s * STEP * COLS * GROUP)
                            } else {
                                tail.0.as_ptr()
                            };
                            step(a.add(s * ROWS * STEP), STEP * 4, b);
                        }
                        store_sums(t);
                    }
                }
            }
            for (i, tile_sums) in sums.iter_mut().enumerate() {
                let r = first_row + i * ROWS;
                for (j, row) in tile_sums
                    .0
                    .chunks_exact_mut(COLS)
                    .take(rows.min(r + ROWS) - r.min(rows))
                    .enumerate()
                {
                    // SAFETY: `out` holds `rows * n` values (checked by the caller) and row
                    // `r + j` is below `rows`; columns `first..first + width` lie within `n`.
                    // Each (row block, panel) pair belongs to one task, so this slice is written
                    // by this task alone, while `out` stays borrowed mutably for the whole call.
                    let out_row = unsafe {
                        std::slice::from_raw_parts_mut(base.get().add((r + j) * n + first), width)
                    };
                    finish_row(&mut row[..width], bias, epi, out_row);
                }
            }
        }
        // SAFETY: as for the configuration.
        unsafe { tiles::release() };
    };
    if parallel {
        (0..split.count()).into_par_iter().for_each(task);
    } else {
        (0..split.count()).for_each(task);
    }
}

/// Zeroes the 4 tiles of sums.
///
/// # Safety
/// The tiles are configured by [`CONFIG`].
#[inline(always)]
unsafe fn zero_sums() {
    // SAFETY: the caller loaded the configuration; `tilezero` touches only the tiles.
    unsafe {
        std::arch::asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem, preserves_flags)
        );
    }
}

/// Adds 16 pairs of `k` to the sums: the A tile of 16 rows at `a` (row stride `a_stride` bytes)
/// times the 4 B tiles of 16 columns of the 16 pair groups at `b`.
///
/// # Safety
/// The tiles are configured by [`CONFIG`]; `a` starts 16 rows of 64 readable bytes `a_stride`
/// apart, and `b` 16 readable groups of 256 bytes.
#[inline(always)]
unsafe fn step(a: *const u32, a_stride: usize, b: *const Bf16) {
    // SAFETY: the caller promises the configuration and the memory the loads read.
    unsafe {
        std::arch::asm!(
            "tileloadd tmm4, [{a} + {sa}*1]",
            "tileloadd tmm5, [{b} + {sb}*1]",
            "tileloadd tmm6, [{b} + {sb}*1 + 64]",
            "tdpbf16ps tmm0, tmm4, tmm5",
            "tileloadd tmm7, [{b} + {sb}*1 + 128]",
            "tdpbf16ps tmm1, tmm4, tmm6",
            "tileloadd tmm5, [{b} + {sb}*1 + 192]",
            "tdpbf16ps tmm2, tmm4, tmm7",
            "tdpbf16ps tmm3, tmm4, tmm5",
            a = in(reg) a,
            sa = in(reg) a_stride,
            b = in(reg) b,
            sb = in(reg) GROUP_BYTES,
            options(nostack, readonly, preserves_flags)
        );
    }
}

/// Loads the 4 tiles of sums from 16 rows of 64 f32 at `t`.
///
/// # Safety
/// The tiles are configured by [`CONFIG`]; `t` starts 16 * 64 readable f32.
#[inline(always)]
unsafe fn load_sums(t: *const f32) {
    // SAFETY: the caller promises the configuration and the memory the loads read.
    unsafe {
        std::arch::asm!(
            "tileloadd tmm0, [{t} + {s}*1]",
            "tileloadd tmm1, [{t} + {s}*1 + 64]",
            "tileloadd tmm2, [{t} + {s}*1 + 128]",
            "tileloadd tmm3, [{t} + {s}*1 + 192]",
            t = in(reg) t,
            s = in(reg) COLS * 4,
            options(nostack, readonly, preserves_flags)
        );
    }
}

/// Stores the 4 tiles of sums as 16 rows of 64 f32 at `t`.
///
/// # Safety
/// The tiles are configured by [`CONFIG`]; `t` starts 16 * 64 writable f32.
#[inline(always)]
unsafe fn store_sums(t: *mut f32) {
    // SAFETY: the caller promises the configuration and the memory the stores write.
    unsafe {
        std::arch::asm!(
            "tilestored [{t} + {s}*1], tmm0",
            "tilestored [{t} + {s}*1 + 64], tmm1",
            "tilestored [{t} + {s}*1 + 128], tmm2",
            "tilestored [{t} + {s}*1 + 192], tmm3",
            t = in(reg) t,
            s = in(reg) COLS * 4,
            options(nostack, preserves_flags)
        );
    }
}
