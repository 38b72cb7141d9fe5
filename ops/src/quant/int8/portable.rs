//! The kernel for any CPU, in plain Rust the compiler vectorises for the baseline target: each
//! group's codes are spread once into four runs of 64 (one per `k` of the group), which every row
//! of a block then multiplies column by column.

use super::{Block, COLS, GROUP};

/// Rows that share one spreading of the codes; their sums fit 4 KiB of stack.
const ROWS: usize = 16;

/// [`Block`]'s products, stored at `dst`, rows `dst_stride` apart.
///
/// # Safety
/// `dst` addresses the block's rows of `width` values, `dst_stride` apart, that nothing else reads
/// or writes during the call.
pub(super) unsafe fn block(b: &Block, dst: *mut f32, dst_stride: usize) {
    let (m, _, width) = b.shape();
    for r0 in (0..m).step_by(ROWS) {
        let rows = ROWS.min(m - r0);
        let mut acc = [[0i32; COLS]; ROWS];
        let mut spread = [[0i16; COLS]; GROUP];
        for (g, codes) in b.panel.chunks_exact(COLS * GROUP).enumerate() {
            for (j, q) in codes.chunks_exact(GROUP).enumerate() {
                for (t, &q) in q.iter().enumerate() {
                    spread[t][j] = q as i16;
                }
            }
            for (r, acc) in acc.iter_mut().take(rows).enumerate() {
                let x = &b.x[(r0 + r) * b.stride + g * GROUP..][..GROUP];
                for (&a, codes) in x.iter().zip(&spread) {
                    // Within 255 x -128 = -32640 and 255 x 127 = 32385: the product fits i16.
                    let a = a as i16;
                    for (acc, &q) in acc.iter_mut().zip(codes) {
                        *acc += (a * q) as i32;
                    }
                }
            }
        }
        for (r, acc) in acc.iter().take(rows).enumerate() {
            let r = r0 + r;
            // SAFETY: row `r` of the destination, `width` values, is this call's alone (above).
            let out = unsafe { std::slice::from_raw_parts_mut(dst.add(r * dst_stride), width) };
            for (c, o) in out.iter_mut().enumerate() {
                let acc = acc[c].wrapping_sub(b.col_sums[c].wrapping_mul(b.x_zero));
                let mut v = acc as f32 * b.x_scales[r] * b.w_scales[c];
                if let Some(bias) = b.bias {
                    v += bias[c];
                }
                if b.relu {
                    v = v.max(0.0);
                }
                *o = if b.accumulate { *o + v } else { v };
            }
        }
    }
}
