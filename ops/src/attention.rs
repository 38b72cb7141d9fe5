//! Scaled dot-product attention over heads. Q, K and V are read through strides, so the head split
//! of the projections (`[batch, seq, heads, head_dim]`) or any other transposed layout needs no copy;
//! the output is written merged, `[batch, q_len, heads, d_v]`, as the next projection reads it.
//!
//! For every batch `b`, head `h` and query row `i`:
//! `out[b, i, h, :] = sum_j p[j] * v[b, h, j, :]` with
//! `p = softmax_j(scale * q[b, h, i, :] . k[b, h, j, :] + mask[b, h, i, j])`.
//! Work is split into blocks of query rows of one batch, run in parallel on the current rayon pool; a
//! block handles every head, so its output rows are one contiguous slice.

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

/// An operand read at `data[b * strides[0] + h * strides[1] + s * strides[2] + d * strides[3]]` for
/// batch `b`, head `h`, sequence position `s` and feature `d` (a stride of 0 broadcasts that axis).
#[derive(Clone, Copy, Debug)]
pub struct Strided<'a> {
    pub data: &'a [f32],
    pub strides: [usize; 4],
}

impl Strided<'_> {
    /// Whether every element of a `[batch, heads, seq, width]` operand lies inside `data`.
    fn fits(&self, dims: [usize; 4]) -> bool {
        if dims.contains(&0) {
            return true;
        }
        let last: usize = dims
            .iter()
            .zip(&self.strides)
            .map(|(d, s)| (d - 1) * s)
            .sum();
        last < self.data.len()
    }
}

/// An additive mask, read at `data[b * strides[0] + h * strides[1] + i * strides[2] + j * strides[3]]`
/// (a stride of 0 broadcasts that axis).
#[derive(Clone, Copy, Debug)]
pub struct Mask<'a> {
    pub data: &'a [f32],
    pub strides: [usize; 4],
}

/// Bounds on the query rows of one parallel task.
const MIN_BLOCK_ROWS: usize = 16;
const MAX_BLOCK_ROWS: usize = 256;

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Computes attention into `out` (`[batch, q_len, heads, d_v]`). With `nan_to_zero`, probabilities
/// that come out NaN (rows whose scores are all `-inf`) are replaced by 0, as exports that guard
/// fully masked rows spell it.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    s: AttentionShape,
    q: Strided,
    k: Strided,
    v: Strided,
    mask: Option<Mask>,
    scale: f32,
    nan_to_zero: bool,
    out: &mut [f32],
) {
    check(&s, &q, &k, &v, mask, out);
    let v_row = s.heads * s.d_v;
    if out.is_empty() {
        return;
    }
    if s.kv_len == 0 {
        // Softmax over nothing: NaN probabilities, or 0 where they are guarded.
        out.fill(if nan_to_zero { 0.0 } else { f32::NAN });
        return;
    }
    // One block per thread: as large as possible (fewer, larger GEMMs amortise a head's K and V
    // better than finer blocks balance load; measured on the encoder benchmark).
    let threads = crate::threads::available();
    let per_batch = threads.div_ceil(s.batch).max(1);
    let block_rows = s
        .q_len
        .div_ceil(per_batch)
        .clamp(MIN_BLOCK_ROWS.min(s.q_len), MAX_BLOCK_ROWS);
    let block = |b: usize, block: usize, out_blk: &mut [f32]| {
        let i0 = block * block_rows;
        let rows = out_blk.len() / v_row;
        SCORES.with(|cell| {
            let mut scores = cell.borrow_mut();
            scores.resize(rows * s.kv_len, 0.0);
            for h in 0..s.heads {
                let at = Block { b, h, i0, rows };
                head_block(
                    &s,
                    &q,
                    &k,
                    &v,
                    mask,
                    scale,
                    nan_to_zero,
                    at,
                    &mut scores,
                    out_blk,
                );
            }
        });
    };
    let (per_b, per_block) = (s.q_len * v_row, block_rows * v_row);
    if threads == 1 {
        for (b, out_b) in out.chunks_mut(per_b).enumerate() {
            for (k, out_blk) in out_b.chunks_mut(per_block).enumerate() {
                block(b, k, out_blk);
            }
        }
    } else {
        out.par_chunks_mut(per_b)
            .enumerate()
            .for_each(|(b, out_b)| {
                out_b
                    .par_chunks_mut(per_block)
                    .enumerate()
                    .for_each(|(k, out_blk)| block(b, k, out_blk));
            });
    }
}

/// Panics unless every operand holds every element its shape and strides address.
fn check(
    s: &AttentionShape,
    q: &Strided,
    k: &Strided,
    v: &Strided,
    mask: Option<Mask>,
    out: &[f32],
) {
    let (b, h) = (s.batch, s.heads);
    assert!(
        q.fits([b, h, s.q_len, s.d_qk]),
        "attention: q too small for its strides"
    );
    assert!(
        k.fits([b, h, s.kv_len, s.d_qk]),
        "attention: k too small for its strides"
    );
    assert!(
        v.fits([b, h, s.kv_len, s.d_v]),
        "attention: v too small for its strides"
    );
    assert_eq!(out.len(), b * s.q_len * h * s.d_v, "attention: out size");
    if let Some(m) = mask {
        let m = Strided {
            data: m.data,
            strides: m.strides,
        };
        assert!(
            m.fits([b, h, s.q_len, s.kv_len]),
            "attention: mask too small for its strides"
        );
    }
}

/// Rows `i0 .. i0 + rows` of head `h` of batch `b`.
#[derive(Clone, Copy)]
struct Block {
    b: usize,
    h: usize,
    i0: usize,
    rows: usize,
}

#[allow(clippy::too_many_arguments)]
fn head_block(
    s: &AttentionShape,
    q: &Strided,
    k: &Strided,
    v: &Strided,
    mask: Option<Mask>,
    scale: f32,
    nan_to_zero: bool,
    at: Block,
    scores: &mut [f32],
    out_blk: &mut [f32],
) {
    let Block { b, h, i0, rows } = at;
    let base = |t: &Strided| b * t.strides[0] + h * t.strides[1];
    let qs = MatRef {
        data: &q.data[base(q) + i0 * q.strides[2]..],
        rows,
        cols: s.d_qk,
        row_stride: q.strides[2],
        col_stride: q.strides[3],
    };
    // K read as its transpose: [d_qk, kv_len].
    let kt = MatRef {
        data: &k.data[base(k)..],
        rows: s.d_qk,
        cols: s.kv_len,
        row_stride: k.strides[3],
        col_stride: k.strides[2],
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
            let at = b * m.strides[0] + h * m.strides[1] + (i0 + r) * m.strides[2];
            if m.strides[3] == 1 {
                for (x, &a) in row.iter_mut().zip(&m.data[at..at + s.kv_len]) {
                    *x += a;
                }
            } else {
                for (j, x) in row.iter_mut().enumerate() {
                    *x += m.data[at + j * m.strides[3]];
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
        data: &v.data[base(v)..],
        rows: s.kv_len,
        cols: s.d_v,
        row_stride: v.strides[2],
        col_stride: v.strides[3],
    };
    let v_row = s.heads * s.d_v;
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
    q: Strided,
    k: Strided,
    v: Strided,
    mask: Option<Mask>,
    scale: f32,
    nan_to_zero: bool,
    out: &mut [f32],
) {
    check(&s, &q, &k, &v, mask, out);
    let at = |t: &Strided, b: usize, h: usize, i: usize, c: usize| {
        t.data[b * t.strides[0] + h * t.strides[1] + i * t.strides[2] + c * t.strides[3]] as f64
    };
    let v_row = s.heads * s.d_v;
    for b in 0..s.batch {
        for h in 0..s.heads {
            for i in 0..s.q_len {
                let mut p: Vec<f64> = (0..s.kv_len)
                    .map(|j| {
                        let dot: f64 = (0..s.d_qk)
                            .map(|c| at(&q, b, h, i, c) * at(&k, b, h, j, c))
                            .sum();
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
                        .map(|j| p[j] * at(&v, b, h, j, c))
                        .sum::<f64>() as f32;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matmul::pseudo_random;

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
            let q = pseudo_random(batch * q_len * heads * d_qk, 1);
            let k = pseudo_random(batch * kv_len * heads * d_qk, 2);
            let v = pseudo_random(batch * kv_len * heads * d_v, 3);
            // A [batch, 1, 1, kv_len] padding mask with the last key masked out, and a full one.
            let mut pad = vec![0.0f32; batch * kv_len];
            if kv_len > 1 {
                pad[kv_len - 1] = f32::NEG_INFINITY;
            }
            let full = pseudo_random(batch * heads * q_len * kv_len, 4);
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
                    // Q and V in the projections' [b, s, h, d] layout, K stored as [b, h, d, s].
                    let qs = Strided {
                        data: &q,
                        strides: [q_len * heads * d_qk, d_qk, heads * d_qk, 1],
                    };
                    let ks = Strided {
                        data: &k,
                        strides: [heads * d_qk * kv_len, d_qk * kv_len, 1, kv_len],
                    };
                    let vs = Strided {
                        data: &v,
                        strides: [kv_len * heads * d_v, d_v, heads * d_v, 1],
                    };
                    pool.install(|| attention(s, qs, ks, vs, mask, 0.3, true, &mut got));
                    attention_reference(s, qs, ks, vs, mask, 0.3, true, &mut want);
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
        let (q, k, v) = (
            pseudo_random(4, 1),
            pseudo_random(6, 2),
            pseudo_random(6, 3),
        );
        let dense = |data| Strided {
            data,
            strides: [0, 0, 2, 1],
        };
        let (q, k, v) = (dense(&q), dense(&k), dense(&v));
        let mut out = vec![1.0; 4];
        attention(s, q, k, v, mask, 1.0, true, &mut out);
        assert_eq!(out, vec![0.0; 4]);
        attention(s, q, k, v, mask, 1.0, false, &mut out);
        assert!(out.iter().all(|x| x.is_nan()));
    }
}
