//! Emission: each output row written once, `b_out + sum act_k * w_out[node_k]` over its path summed
//! in registers, rows in the order routing left them (leaf order) so neighbours share their paths'
//! weight rows in the caches.

use std::marker::PhantomData;

use super::{Job, Scratch};
use crate::element::Element;
use crate::simd::{Init, Picked, Store, Vector};

/// Output columns emitted per pass over a bucket's rows, where its rows share few weight rows: this
/// many columns of each (about 40 KiB for a 1x11 bucket at split level 7) then stay near the core,
/// those of the path being emitted (12 KiB) in L1, while every row of the bucket takes its share,
/// instead of each row fetching its whole path from L2. (128 and 192 columns measured no faster.)
const EMIT_COLS: usize = 256;

/// Column passes need at least this many rows in the bucket...
const EMIT_MIN_ROWS: usize = 16;

/// ...and at most this many weight rows their paths can touch (the path above the bucket's node and
/// its subtree); otherwise each row is emitted whole in one pass.
const EMIT_MAX_NODES: usize = 64;

/// How much of each weight row that whole-row emission adds two rows ahead it fetches: the first two
/// lines, which set the hardware's prefetcher going on the rest. Whole rows cost more than they gain
/// when the weights are cached.
const PATH_FETCH_BYTES: usize = 128;

/// The output rows, shared by bucket tasks that each write only their own rows.
#[derive(Clone, Copy)]
pub(super) struct OutRows<'a> {
    ptr: *mut f32,
    width: usize,
    rows: usize,
    _out: PhantomData<&'a mut [f32]>,
}

// SAFETY: `OutRows` is a `&mut [f32]` split by row; it only hands out a row through `row`, whose callers
// guarantee that no two threads (or two live references) ever get the same row.
unsafe impl Send for OutRows<'_> {}
// SAFETY: as above.
unsafe impl Sync for OutRows<'_> {}

impl<'a> OutRows<'a> {
    pub(super) fn new(out: &'a mut [f32], width: usize) -> Self {
        OutRows {
            ptr: out.as_mut_ptr(),
            width,
            rows: out.len() / width,
            _out: PhantomData,
        }
    }

    /// Columns from the start of every row to its first cache-line boundary, where rows are a whole
    /// number of lines apart (else 0).
    pub(super) fn lead(&self) -> usize {
        if !(self.width * std::mem::size_of::<f32>()).is_multiple_of(64) {
            return 0;
        }
        let at = self.ptr as usize;
        (at.next_multiple_of(64) - at) / std::mem::size_of::<f32>()
    }

    /// # Safety
    /// No other reference to row `r` may be alive while the returned one is.
    #[allow(clippy::mut_from_ref)]
    pub(super) unsafe fn row(&self, r: usize) -> &'a mut [f32] {
        assert!(r < self.rows);
        // SAFETY: `r < rows`, so the row lies within the borrowed output; exclusivity is the caller's.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(r * self.width), self.width) }
    }
}

/// Emits the rows of a bucket that routing has just walked (`s` holds their paths' ends and
/// activations below the split, `up` those above it), a block of columns at a time where the rows
/// share few weight rows, fetching the inputs of the next bucket (`next`) into L2 meanwhile.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn emit<W: Element, V: Vector>(
    job: &Job<W>,
    tree: usize,
    x: &[f32],
    next: &[u32],
    up: &[f32],
    split: usize,
    levels: usize,
    count: usize,
    out: OutRows,
    store: Store,
    s: &mut Scratch,
) {
    let (d_in, d_out, depth) = (job.shape.d_in, job.shape.d_out, job.shape.depth);
    // Emit in leaf order, a block of columns at a time.
    let base = tree * job.shape.nodes_per_tree();
    let terms = depth + 1;
    let init = match (tree, job.b_out) {
        (0, None) => Init::Zero,
        (0, Some(b)) => Init::From(b),
        _ => Init::Keep,
    };
    s.path.clear();
    s.alpha.clear();
    for &i in &s.walk.set {
        let (i, row) = (i as usize, s.ids[i as usize] as usize);
        let end = s.ends[i] as usize + 1;
        s.path
            .extend((0..terms).map(|k| (base + (end >> (terms - k)) - 1) as u32));
        s.alpha
            .extend_from_slice(&up[row * split..(row + 1) * split]);
        s.alpha
            .extend_from_slice(&s.acts[i * levels..(i + 1) * levels]);
    }
    let block = if count >= EMIT_MIN_ROWS && split + (1 << levels) - 1 <= EMIT_MAX_NODES {
        EMIT_COLS
    } else {
        d_out
    };
    // Streaming stores want whole lines: blocks then start at the rows' first line boundary.
    let lead = match store {
        Store::Streaming => out.lead().min(d_out),
        Store::Cached => 0,
    };
    let mut start = 0;
    while start < d_out {
        let end = if start < lead {
            lead
        } else {
            (start + block).min(d_out)
        };
        let cols = start..end;
        // The share of the next bucket's input rows that matches this block of columns.
        let ahead = cols.start * d_in / d_out..cols.end * d_in / d_out;
        // Rows emitted whole still take two passes when streaming stores start with a lead block;
        // their paths' weight rows are fetched in the first only.
        let fetch_paths = block == d_out && cols.start == 0;
        start = end;
        for (n, &i) in s.walk.set.iter().enumerate() {
            let row_terms = n * terms..(n + 1) * terms;
            let w = Picked {
                matrix: job.w_out,
                width: d_out,
                idx: &s.path[row_terms.clone()],
            };
            // SAFETY: every row of the call is in exactly one bucket, once, and no other reference
            // to the output is alive while buckets run; this reference ends with the statement.
            let y = unsafe { out.row(s.ids[i as usize] as usize) };
            V::combine(y, init, &s.alpha[row_terms], w, cols.clone(), store);
            if let Some(&r) = next.get(n) {
                crate::simd::prefetch_l2(&x[r as usize * d_in..][ahead.clone()]);
            }
            if fetch_paths {
                // Whole rows: start the weight rows on the path two rows ahead that the path one
                // row ahead does not share (rows go in leaf order, so only a path's lower end
                // changes), which at small row counts come from L3 or memory.
                let (one, two) = ((n + 1) * terms, (n + 2) * terms);
                if let (Some(p1), Some(p2)) = (s.path.get(one..two), s.path.get(two..two + terms)) {
                    let head = (PATH_FETCH_BYTES / std::mem::size_of::<W>()).min(d_out);
                    for (&a, &b) in p1.iter().zip(p2) {
                        if a != b {
                            crate::simd::prefetch_l2(&job.w_out[b as usize * d_out..][..head]);
                        }
                    }
                }
            }
        }
    }
    if store == Store::Streaming {
        crate::simd::store_fence();
    }
}
