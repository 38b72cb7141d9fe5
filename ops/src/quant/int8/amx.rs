//! AMX-INT8: strips of 16 rows x 64 columns in four tiles of i32 sums, `tdpbusd` on tiles of 16
//! rows x 64 `k` of activations and 64 `k` x 16 columns of weights, read in place from the packed
//! panel; then the AVX-512 epilogue on the sums stored from the tiles.
//!
//! A weight tile is 16 groups of one panel, 16 columns wide: rows of 64 bytes (16 columns x the 4
//! codes of a group), 256 bytes apart, which is the packed layout as it is. An activation tile is
//! 16 rows of 64 codes, `stride` apart. The last partial step of `k` (groups not a multiple of 16)
//! runs on copies padded with zeros; a strip of fewer than 16 rows runs on tiles configured with
//! fewer rows, so no load reads past the block's rows.
//!
//! Tiles: `tmm0`-`tmm3` the sums of column blocks 0-3, `tmm4` the activations, `tmm6` and `tmm7`
//! the weights, alternating so that a load overlaps the previous product.

#![cfg(target_arch = "x86_64")]

use std::arch::asm;
use std::arch::x86_64::*;

use super::{avx512, Block, COLS, GROUP};
use crate::amx::{release, TileConfig};

/// Rows of a tile, and of a strip.
const ROWS: usize = 16;

/// Groups of `k` per tile step: 64 bytes of a row of activations.
const STEP: usize = 16;

/// Bytes of one group of a panel: the row stride of a weight tile.
const GROUP_BYTES: usize = COLS * GROUP;

/// A strip's sums as stored from the tiles: row `r`, column `c`.
#[repr(C, align(64))]
struct Sums([[i32; COLS]; ROWS]);

/// The last partial step of `k` of 16 rows, padded with zero codes.
#[repr(C, align(64))]
struct TailRows([u8; ROWS * STEP * GROUP]);

/// The panel's last partial step of `k`, padded with zero codes.
#[repr(C, align(64))]
struct TailPanel([i8; STEP * GROUP_BYTES]);

/// The tiles of a strip of `rows` rows.
const fn config(rows: u8) -> TileConfig {
    TileConfig::new()
        .tile(0, rows, 64)
        .tile(1, rows, 64)
        .tile(2, rows, 64)
        .tile(3, rows, 64)
        .tile(4, rows, 64)
        .tile(6, STEP as u8, 64)
        .tile(7, STEP as u8, 64)
}

const FULL: TileConfig = config(ROWS as u8);

/// [`Block`]'s products, stored at `dst`, rows `dst_stride` apart.
///
/// # Safety
/// [`crate::amx::available`] returned true for [`crate::amx::Product::Int8`]; the CPU has
/// AVX-512F, BW and VL; `dst` addresses the block's rows of `width` values, `dst_stride` apart,
/// that nothing else reads or writes during the call.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn block(b: &Block, dst: *mut f32, dst_stride: usize) {
    let (m, groups, width) = b.shape();
    let steps = groups / STEP;
    let tail = groups % STEP;
    // The panel's last partial step, copied once for every strip.
    let mut tail_panel = TailPanel([0; STEP * GROUP_BYTES]);
    let mut tail_rows = TailRows([0; ROWS * STEP * GROUP]);
    if tail > 0 {
        let from = &b.panel[steps * STEP * GROUP_BYTES..];
        tail_panel.0[..from.len()].copy_from_slice(from);
    }
    let full = m - m % ROWS;
    if full > 0 {
        // SAFETY: AMX is available (the caller promises); `FULL` configures every tile `strip`
        // uses.
        unsafe { FULL.load() };
        for r0 in (0..full).step_by(ROWS) {
            // SAFETY: rows `r0..r0 + 16` are among the block's `m`, the tiles are configured for
            // 16 rows, and the caller's promises about `dst` carry over.
            unsafe {
                strip(
                    b,
                    (r0, ROWS),
                    (steps, tail),
                    &tail_panel,
                    &mut tail_rows,
                    width,
                    dst,
                    dst_stride,
                )
            };
        }
    }
    if m > full {
        let rows = m - full;
        // SAFETY: as above, for tiles of `rows` rows (1 to 15).
        unsafe {
            config(rows as u8).load();
            strip(
                b,
                (full, rows),
                (steps, tail),
                &tail_panel,
                &mut tail_rows,
                width,
                dst,
                dst_stride,
            );
        }
    }
    // SAFETY: AMX is available; the tiles are not used again before a configuration is loaded.
    unsafe { release() };
}

/// Rows `r0..r0 + rows` of the block, on tiles configured for `rows` rows: `steps` whole steps of
/// `k` and `tail` groups more.
///
/// # Safety
/// As [`block`]; `shape` has checked the block, `r0 + rows <= m`, the loaded tile configuration is
/// [`config`]`(rows)`, and `tail_panel` holds the panel's last `tail` groups padded with zeros.
/// Inlined into [`block`], whose target features the epilogue needs.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn strip(
    b: &Block,
    (r0, rows): (usize, usize),
    (steps, tail): (usize, usize),
    tail_panel: &TailPanel,
    tail_rows: &mut TailRows,
    width: usize,
    dst: *mut f32,
    dst_stride: usize,
) {
    // SAFETY: tiles 0-3 are configured.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        )
    };
    let x = b.x.as_ptr().add(r0 * b.stride);
    let w = b.panel.as_ptr();
    for s in 0..steps {
        // SAFETY: step `s` reads bytes `64 s..64 s + 64` of rows `r0..r0 + rows` (the tiles'
        // rows), within each row's `stride = groups * GROUP >= 64 (s + 1)` bytes, and groups
        // `16 s..16 s + 16` of the panel, `16 * 256` bytes from `16 s * 256`, within its
        // `groups * 256` (`shape`).
        unsafe {
            product(
                x.add(s * STEP * GROUP),
                b.stride,
                w.add(s * STEP * GROUP_BYTES),
            )
        };
    }
    if tail > 0 {
        let bytes = tail * GROUP;
        let from = steps * STEP * GROUP;
        for r in 0..rows {
            let row = &b.x[(r0 + r) * b.stride + from..][..bytes];
            tail_rows.0[r * STEP * GROUP..][..bytes].copy_from_slice(row);
        }
        // SAFETY: the copies hold 16 rows of 64 bytes, and 16 groups of 256 bytes; past the real
        // `tail` groups both are zeros, so the padding adds nothing.
        unsafe { product(tail_rows.0.as_ptr(), STEP * GROUP, tail_panel.0.as_ptr()) };
    }
    let mut sums = Sums([[0; COLS]; ROWS]);
    let out = sums.0.as_mut_ptr().cast::<i32>();
    // SAFETY: each tile stores `rows <= 16` rows of 64 bytes, 256 bytes apart, at column blocks
    // 0-3 of `sums`'s rows of 64 i32 (256 bytes).
    unsafe {
        asm!(
            "tilestored [{o} + {s}*1], tmm0",
            "tilestored [{o} + {s}*1 + 64], tmm1",
            "tilestored [{o} + {s}*1 + 128], tmm2",
            "tilestored [{o} + {s}*1 + 192], tmm3",
            o = in(reg) out,
            s = in(reg) COLS * 4,
            options(nostack)
        )
    };
    let sums = &sums;
    // SAFETY: rows `r0..r0 + rows` of the block and of `dst`, as the caller promises; the sums'
    // rows are 64-byte aligned, and rows `0..rows` were stored above.
    unsafe {
        avx512::epilogue(
            b,
            width,
            r0,
            rows,
            |r, v| _mm512_load_si512(sums.0[r].as_ptr().add(16 * v).cast()),
            dst,
            dst_stride,
        )
    }
}

/// One step of `k`: `tmm0`-`tmm3` += the activations at `x` (the configured rows, `stride`
/// apart, 64 bytes each) times the weights at `w` (16 groups of 256 bytes, column blocks 0-3).
///
/// # Safety
/// AMX is available and [`config`] loaded; those bytes are readable.
#[inline(always)]
unsafe fn product(x: *const u8, stride: usize, w: *const i8) {
    // SAFETY: the caller promises the reads; the tiles are configured.
    unsafe {
        asm!(
            "tileloadd tmm4, [{x} + {xs}*1]",
            "tileloadd tmm6, [{w} + {ws}*1]",
            "tdpbusd tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{w} + {ws}*1 + 64]",
            "tdpbusd tmm1, tmm4, tmm7",
            "tileloadd tmm6, [{w} + {ws}*1 + 128]",
            "tdpbusd tmm2, tmm4, tmm6",
            "tileloadd tmm7, [{w} + {ws}*1 + 192]",
            "tdpbusd tmm3, tmm4, tmm7",
            x = in(reg) x,
            xs = in(reg) stride,
            w = in(reg) w,
            ws = in(reg) GROUP_BYTES,
            options(nostack, readonly)
        )
    }
}
