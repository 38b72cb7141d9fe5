//! Scaled dot-product attention over heads, reading Q, K and V in the layout the projections produce
//! (`[batch, seq, heads, head_dim]`, row-major) and writing the output in the same layout, so that the
//! head split and merge never materialise a transposed copy.
//!
//! For every batch `b`, head `h` and query row `i`:
//! `out[b, i, h, :] = sum_j p[j] * v[b, j, h, :]` with `p = softmax_j(scale * q[b, i, h, :] . k[b, j, h, :]
//! + mask[b, h, i, j])`. Work is split into blocks of query rows of one batch, run in parallel on the
//! current rayon pool; a block handles every head, so its output rows are one contiguous slice.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::matmul::{gemm_into, MatMut, MatRef, Threads};
use crate::softmax::softmax_rows;

/// Sizes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    pub batch: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub heads: usize,
    /// Width of a query and key head.
    pub d_qk: usize,
    /// Width of a value (and output) head.
    pub d_v: usize,
}

/// An additive mask, read at `data[b * strides[0] + h * strides[1] + i * strides[2] + j * strides[3]]`
/// (a stride of 0 broadcasts that axis).
#[derive(Clone, Copy, Debug)]
pub struct Mask<'a> {
    pub data: &'a [f32],
    pub strides: [usize; 4],
}

/// Query rows per parallel task: enough to amortise a head's K and V, few enough to share the rows
/// of one sequence among threads.
const BLOCK_ROWS: usize = 32;

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Computes attention into `out` (`[batch, q_len, heads, d_v]`). With `nan_to_zero`, probabilities
/// that come out NaN (rows whose scores are all `-inf`) are replaced by 0, as exports that guard
/// fully masked rows spell it.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    s: AttentionShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<Mask>,
    scale: f32,
    nan_to_zero: bool,
    out: &mut [f32],
) {
    let q_row = s.heads * s.d_qk;
    let v_row = s.heads * s.d_v;
    assert_eq!(q.len(), s.batch * s.q_len * q_row, "attention: q size");
    assert_eq!(k.len(), s.batch * s.kv_len * q_row, "attention: k size");
    assert_eq!(v.len(), s.batch * s.kv_len * v_row, "attention: v size");
    assert_eq!(out.len(), s.batch * s.q_len * v_row, "attention: out size");
    if let Some(m) = mask {
        if s.batch * s.heads * s.q_len * s.kv_len > 0 {
            let last = (s.batch - 1) * m.strides[0]
                + (s.heads - 1) * m.strides[1]
                + (s.q_len - 1) * m.strides[2]
                + (s.kv_len - 1) * m.strides[3];
            assert!(
                last < m.data.len(),
                "attention: mask too small for its strides"
            );
        }
    }
    if out.is_empty() {
        return;
    }
    if s.kv_len == 0 {
        // Softmax over nothing: every probability row is empty, so every output is 0 (or NaN-free 0).
        out.fill(if nan_to_zero { 0.0 } else { f32::NAN });
        return;
    }
    out.par_chunks_mut(s.q_len * v_row)
        .enumerate()
        .for_each(|(b, out_b)| {
            out_b
                .par_chunks_mut(BLOCK_ROWS * v_row)
                .enumerate()
                .for_each(|(block, out_blk)| {
                    let i0 = block * BLOCK_ROWS;
                    let rows = out_blk.len() / v_row;
                    SCORES.with(|cell| {
                        let mut scores = cell.borrow_mut();
                        scores.resize(rows * s.kv_len, 0.0);
                        for h in 0..s.heads {
                            head_block(
                                &s,
                                q,
                                k,
                                v,
                                mask,
                                scale,
                                nan_to_zero,
                                b,
                                h,
                                i0,
                                rows,
                                &mut scores,
                                out_blk,
                            );
                        }
                    });
                });
        });
}

/// One head for query rows `i0 .. i0 + rows` of batch `b`.
#[allow(clippy::too_many_arguments)]
fn head_block(
    s: &AttentionShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<Mask>,
    scale: f32,
    nan_to_zero: bool,
    b: usize,
    h: usize,
    i0: usize,
    rows: usize,
    scores: &mut [f32],
    out_blk: &mut [f32],
) {
    let q_row = s.heads * s.d_qk;
    let v_row = s.heads * s.d_v;
    let qs = MatRef {
        data: &q[(b * s.q_len + i0) * q_row + h * s.d_qk..],
        rows,
        cols: s.d_qk,
        row_stride: q_row,
        col_stride: 1,
    };
    // K read as its transpose: [d_qk, kv_len].
    let kt = MatRef {
        data: &k[b * s.kv_len * q_row + h * s.d_qk..],
        rows: s.d_qk,
        cols: s.kv_len,
        row_stride: 1,
        col_stride: q_row,
    };
    let dense = MatMut {
        data: scores,
        rows,
        cols: s.kv_len,
        row_stride: s.kv_len,
    };
    gemm_into(qs, kt, dense, scale, 0.0, Threads::Caller);
    if let Some(m) = mask {
        for (r, row) in scores.chunks_exact_mut(s.kv_len).enumerate() {
            let base = b * m.strides[0] + h * m.strides[1] + (i0 + r) * m.strides[2];
            if m.strides[3] == 1 {
                for (x, &a) in row.iter_mut().zip(&m.data[base..base + s.kv_len]) {
                    *x += a;
                }
            } else {
                for (j, x) in row.iter_mut().enumerate() {
                    *x += m.data[base + j * m.strides[3]];
                }
            }
        }
    }
    softmax_rows(scores, s.kv_len);
    if nan_to_zero {
        for x in scores.iter_mut().filter(|x| x.is_nan()) {
            *x = 0.0;
        }
    }
    let p = MatRef::row_major(scores, rows, s.kv_len);
    let vs = MatRef {
        data: &v[b * s.kv_len * v_row + h * s.d_v..],
        rows: s.kv_len,
        cols: s.d_v,
        row_stride: v_row,
        col_stride: 1,
    };
    let o = MatMut {
        data: &mut out_blk[h * s.d_v..],
        rows,
        cols: s.d_v,
        row_stride: v_row,
    };
    gemm_into(p, vs, o, 1.0, 0.0, Threads::Caller);
}

/// The obvious loops, in f64: the reference [`attention`] is tested against.
#[allow(clippy::too_many_arguments)]
pub fn attention_reference(
    s: AttentionShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<Mask>,
    scale: f32,
    nan_to_zero: bool,
    out: &mut [f32],
) {
    let (q_row, v_row) = (s.heads * s.d_qk, s.heads * s.d_v);
    for b in 0..s.batch {
        for h in 0..s.heads {
            for i in 0..s.q_len {
                let qi = &q[(b * s.q_len + i) * q_row + h * s.d_qk..][..s.d_qk];
                let mut p: Vec<f64> = (0..s.kv_len)
                    .map(|j| {
                        let kj = &k[(b * s.kv_len + j) * q_row + h * s.d_qk..][..s.d_qk];
                        let dot: f64 = qi.iter().zip(kj).map(|(&a, &c)| a as f64 * c as f64).sum();
                        let m = mask.map_or(0.0, |m| {
                            m.data[b * m.strides[0]
                                + h * m.strides[1]
                                + i * m.strides[2]
                                + j * m.strides[3]] as f64
                        });
                        scale as f64 * dot + m
                    })
                    .collect();
                let max = p.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = p.iter().map(|x| (x - max).exp()).sum();
                for x in p.iter_mut() {
                    *x = (*x - max).exp() / sum;
                    if nan_to_zero && x.is_nan() {
                        *x = 0.0;
                    }
                }
                let o = &mut out[(b * s.q_len + i) * v_row + h * s.d_v..][..s.d_v];
                for (c, oc) in o.iter_mut().enumerate() {
                    *oc = (0..s.kv_len)
                        .map(|j| p[j] * v[(b * s.kv_len + j) * v_row + h * s.d_v + c] as f64)
                        .sum::<f64>() as f32;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2_654_435_761) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn agrees_with_reference_on_odd_shapes_masks_and_threads() {
        let shapes = [
            (1, 1, 1, 1, 1, 1),
            (2, 5, 7, 3, 4, 6),
            (1, 70, 70, 2, 16, 16),
            (3, 33, 9, 4, 8, 5),
        ];
        for &(batch, q_len, kv_len, heads, d_qk, d_v) in &shapes {
            let s = AttentionShape {
                batch,
                q_len,
                kv_len,
                heads,
                d_qk,
                d_v,
            };
            let q = values(batch * q_len * heads * d_qk, 1);
            let k = values(batch * kv_len * heads * d_qk, 2);
            let v = values(batch * kv_len * heads * d_v, 3);
            // A [batch, 1, 1, kv_len] padding mask with the last key masked out, and a full one.
            let mut pad = vec![0.0f32; batch * kv_len];
            if kv_len > 1 {
                pad[kv_len - 1] = f32::NEG_INFINITY;
            }
            let full = values(batch * heads * q_len * kv_len, 4);
            let masks = [
                None,
                Some(Mask {
                    data: &pad,
                    strides: [kv_len, 0, 0, 1],
                }),
                Some(Mask {
                    data: &full,
                    strides: [heads * q_len * kv_len, q_len * kv_len, kv_len, 1],
                }),
            ];
            for mask in masks {
                for threads in [1, 2] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let mut got = vec![0.0; batch * q_len * heads * d_v];
                    let mut want = got.clone();
                    pool.install(|| attention(s, &q, &k, &v, mask, 0.3, true, &mut got));
                    attention_reference(s, &q, &k, &v, mask, 0.3, true, &mut want);
                    for (g, w) in got.iter().zip(&want) {
                        assert!((g - w).abs() < 1e-5, "{s:?}: {g} vs {w}");
                    }
                }
            }
        }
    }

    #[test]
    fn fully_masked_rows_are_zero_or_nan() {
        let s = AttentionShape {
            batch: 1,
            q_len: 2,
            kv_len: 3,
            heads: 1,
            d_qk: 2,
            d_v: 2,
        };
        let ninf = [f32::NEG_INFINITY; 3];
        let mask = Some(Mask {
            data: &ninf,
            strides: [0, 0, 0, 1],
        });
        let (q, k, v) = (values(4, 1), values(6, 2), values(6, 3));
        let mut out = vec![1.0; 4];
        attention(s, &q, &k, &v, mask, 1.0, true, &mut out);
        assert_eq!(out, vec![0.0; 4]);
        attention(s, &q, &k, &v, mask, 1.0, false, &mut out);
        assert!(out.iter().all(|x| x.is_nan()));
    }
}
