//! The kernel for any CPU: one row at a time against a whole panel, sums in an array the compiler
//! may vectorise for the baseline target.

use super::{Block, COLS, GROUP};

/// [`Block`]'s products, stored at `dst`, rows `dst_stride` apart.
///
/// # Safety
/// `dst` addresses the block's rows of `width` values, `dst_stride` apart, that nothing else reads
/// or writes during the call.
pub(super) unsafe fn block(b: &Block, dst: *mut f32, dst_stride: usize) {
    let (m, _, width) = b.shape();
    for r in 0..m {
        let x = &b.x[r * b.stride..(r + 1) * b.stride];
        let mut acc = [0i32; COLS];
        for (a, w) in x
            .chunks_exact(GROUP)
            .zip(b.panel.chunks_exact(COLS * GROUP))
        {
            for (acc, q) in acc.iter_mut().zip(w.chunks_exact(GROUP)) {
                *acc += a[0] as i32 * q[0] as i32
                    + a[1] as i32 * q[1] as i32
                    + a[2] as i32 * q[2] as i32
                    + a[3] as i32 * q[3] as i32;
            }
        }
        // SAFETY: row `r` of the destination, `width` values, is this call's alone (above).
        let out = unsafe { std::slice::from_raw_parts_mut(dst.add(r * dst_stride), width) };
        for (c, o) in out.iter_mut().enumerate() {
            let acc = acc[c].wrapping_sub(b.col_sums[c].wrapping_mul(128));
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
