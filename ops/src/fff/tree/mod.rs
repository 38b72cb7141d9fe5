//! The conditional kernel for FastFeedForward with trees of depth > 0 (the UltraFastBERT family),
//! generic over the element type of the weights: f32 and bf16 rows go through the same bodies, which
//! widen each weight as it is loaded.
//!
//! Its parts: [`plan`] cuts a call up; [`route`] walks sets of rows down a tree; [`emit`] writes
//! output rows from the paths; [`strategies`] holds the bodies that put these together for a call of
//! one row, a tile of the upper levels, or a bucket; this file drives them.
//!
//! What bounds this op is how often a weight row (3 KiB at width 768) is fetched from L3 or memory,
//! and how often an input or output row is streamed. The kernel therefore works in two halves per tree:
//!
//! * **Routing** computes only the logits: for each row its path (the node it ends at) and the
//!   logit of every node on that path, turned into activations afterwards in one vectorised pass. Rows are grouped by node, so rows that reach the same node
//!   share one load of its `w_in` row, and each group is split by branch into its grandchildren, depth
//!   first (an in-place partition of a list of row indices, with an explicit stack). A group is
//!   routed two levels at a time: one pass over its inputs computes the node and both children
//!   ([`Vector::dots`]), which halves the input rows streamed from L2 for half again the arithmetic.
//! * **Emitting** then writes each output row once: `b_out + sum act_k * w_out[node_k]` over the path,
//!   summed in registers ([`Vector::combine`]). Rows are emitted in the order routing left them, which
//!   is the order of their leaves, so neighbouring rows share most of their path and its `w_out` rows
//!   are still in L1/L2. Where a bucket's rows share few weight rows, they are emitted a block of
//!   columns at a time, so that block of every weight row stays in L1; outputs far larger than the
//!   caches are written with streaming stores ([`Store::Streaming`]).
//!
//! For many rows the routing is split at a level `L` (chosen from the row count, see `Plan`): the
//! upper levels `0..L` run on tiles of consecutive rows (a tile's inputs stay near the core); then all rows of
//! the call are bucketed by their node at level `L` (a counting sort), and each bucket routes its whole
//! subtree and emits its rows. Every weight row at level `L` and below is therefore loaded once per call
//! however deep it sits, and a bucket's inputs (about [`BUCKET_ROWS`] rows) stay in L2 while its
//! subtree is walked. Sets that shrink to a single row stop sharing: such rows walk the rest of their
//! path alone, four at a time in interleaved lanes (`Vector::dot4`), so four weight fetches overlap.
//! Small calls (a few rows) are a single bucket. A one-row call shares nothing, so it neither routes
//! nor emits as a set: its row walks each tree level by level, each level's dot product fused with
//! the emission of the level above (`Lone`, [`Vector::dot_axpy`]), so that the output weights
//! stream in while routing waits on its own loads; a forest of at least four trees walks four trees
//! at once instead, their dot products interleaved (`LoneForest`). In calls of more rows, trees go
//! one after another, each over all the call's rows; a forest of at least four trees takes a large
//! call a chunk of rows at a time instead, so that each tree finds the chunk's inputs and outputs in
//! L3.
//!
//! A tile or bucket fetches the inputs of the one after it into L2 while it works (tiles while they
//! route, buckets while they emit, which reads no inputs). The hardware prefetchers follow streams
//! within a page and cover little of this: a bucket's rows lie anywhere in the call's inputs, and a
//! tile's first pass reads four rows at once. Whole-row emission likewise fetches the first lines of
//! the weight rows that the path two rows ahead adds. In calls that split, routing's dot products
//! also ask for each input row eight lines ahead of their loads into L1 (`ahead`), which four
//! streams from L2 outrun.
//!
//! Tiles, then buckets, run in parallel on the current rayon pool; there are at least four buckets
//! per thread where rows allow, so work stealing balances them. Scratch space is per thread (and per
//! calling thread for the call-wide arrays) and reused, so steady-state calls allocate nothing.
//!
//! Results do not depend on the thread count. The thread count changes the tiles, the buckets and
//! which rows walk alone, so every dot product that routes a row sums in the same order wherever the
//! row is: in groups, in four lanes, or in padded lanes when fewer than four rows are left. Only the
//! sole row of a one-row call through fewer than four trees uses [`Vector::dot`]'s several running
//! sums, which hide the latency of its multiply-adds.

mod emit;
pub(crate) mod plan;
mod route;
mod strategies;
#[cfg(test)]
mod tests;

use std::cell::RefCell;

use rayon::prelude::*;

use super::{FffLayer, FffShape};
use crate::activation::Activation;
use crate::element::Element;
use crate::fff::Branch;
use crate::simd::{on_isa, Isa};
use emit::OutRows;
use plan::{forest_chunk, Plan, MAX_DEPTH};
use route::Walk;
use strategies::{Bucket, Lone, LoneForest, Tile, LONE_FOREST_TREES};

/// The op as the kernel sees it, generic over the weights' element type.
#[derive(Clone, Copy)]
pub(crate) struct Job<'a, W> {
    pub shape: FffShape,
    pub act: Activation,
    pub branch: Branch,
    pub w_in: &'a [W],
    pub b_in: Option<&'a [f32]>,
    pub w_out: &'a [W],
    pub b_out: Option<&'a [f32]>,
}

impl<'a, W: Element> Job<'a, W> {
    fn of(layer: &FffLayer<'a, W>) -> Self {
        Job {
            shape: layer.shape,
            act: layer.act,
            branch: layer.branch,
            w_in: layer.w.w_in,
            b_in: layer.w.b_in,
            w_out: layer.w.w_out,
            b_out: layer.w.b_out,
        }
    }
}

impl<W> Job<'_, W> {
    fn check(&self, x: &[f32], rows: usize, out: &[f32]) {
        let shape = self.shape;
        let total = shape.total_nodes();
        assert!(shape.d_in > 0 && shape.d_out > 0, "widths must be positive");
        assert!(shape.depth <= MAX_DEPTH, "trees deeper than {MAX_DEPTH}");
        assert!(total <= u32::MAX as usize, "more than 2^32 neurons");
        assert_eq!(self.w_in.len(), total * shape.d_in);
        assert_eq!(self.w_out.len(), total * shape.d_out);
        assert!(self.b_in.is_none_or(|b| b.len() == total));
        assert!(self.b_out.is_none_or(|b| b.len() == shape.d_out));
        assert_eq!(x.len(), rows * shape.d_in);
        assert_eq!(out.len(), rows * shape.d_out);
    }
}

/// Computes `rows` rows of the op (`x`: `rows x d_in`, `out`: `rows x d_out`) with the best instruction
/// set, in parallel on the current rayon pool.
pub fn fff_tree<E: Element>(layer: &FffLayer<E>, x: &[f32], rows: usize, out: &mut [f32]) {
    let threads = crate::threads::available();
    run(Isa::best(), &Job::of(layer), x, rows, out, threads, None);
}

/// The same on one thread with a given instruction set (one that [`Isa::available`] found).
pub fn fff_tree_with<E: Element>(
    isa: Isa,
    layer: &FffLayer<E>,
    x: &[f32],
    rows: usize,
    out: &mut [f32],
) {
    run(isa, &Job::of(layer), x, rows, out, 1, None);
}

/// One thread's scratch for a tile or a bucket.
#[derive(Default)]
struct Scratch {
    /// Each local row's row in `x`.
    ids: Vec<u32>,
    walk: Walk,
    /// Activations of the levels a bucket routes, `local row x levels`.
    acts: Vec<f32>,
    /// Where each local row ends (the virtual child below its leaf).
    ends: Vec<u32>,
    /// Emitting: each local row's path (neurons, root first) and their activations, in emit order.
    path: Vec<u32>,
    alpha: Vec<f32>,
}

/// Call-wide arrays, kept by the calling thread.
#[derive(Default)]
struct CallScratch {
    /// Each row's node at the split level.
    at: Vec<u32>,
    /// Activations of the levels above the split, `rows x split`.
    up: Vec<f32>,
    /// Rows sorted by bucket, and where each bucket starts.
    order: Vec<u32>,
    starts: Vec<u32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
    static CALL: RefCell<CallScratch> = RefCell::new(CallScratch::default());
}

/// Runs `f` on this thread's scratch (fresh scratch if it is in use).
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => f(&mut Scratch::default()),
    })
}

fn run<W: Element>(
    isa: Isa,
    job: &Job<W>,
    x: &[f32],
    rows: usize,
    out: &mut [f32],
    threads: usize,
    plan: Option<Plan>,
) {
    job.check(x, rows, out);
    if rows == 0 {
        return;
    }
    if let (None, Some(chunk)) = (plan, forest_chunk(job.shape, rows)) {
        let (d_in, d_out) = (job.shape.d_in, job.shape.d_out);
        for (xs, os) in x.chunks(chunk * d_in).zip(out.chunks_mut(chunk * d_out)) {
            run(isa, job, xs, xs.len() / d_in, os, threads, None);
        }
        return;
    }
    if rows == 1 && job.shape.trees >= LONE_FOREST_TREES {
        // Many trees: their walks are independent, so four go at once.
        with_scratch(|s| {
            on_isa(
                isa,
                LoneForest {
                    job,
                    x,
                    y: &mut *out,
                    s,
                },
            )
        });
        return;
    }
    if rows == 1 {
        // A lone row shares no weights with other rows: it walks each tree on its own.
        for t in 0..job.shape.trees {
            on_isa(
                isa,
                Lone {
                    job,
                    tree: t,
                    x,
                    y: &mut *out,
                },
            );
        }
        return;
    }
    let plan = plan.unwrap_or_else(|| Plan::new(rows, job.shape, threads));
    assert!(plan.split <= job.shape.depth && plan.tile > 0);
    let out = OutRows::new(out, job.shape.d_out);
    let parallel = threads > 1;
    if plan.split == 0 {
        // One bucket: nothing call-wide to keep.
        for t in 0..job.shape.trees {
            with_scratch(|s| {
                on_isa(
                    isa,
                    Bucket {
                        job,
                        tree: t,
                        x,
                        rows: None,
                        count: rows,
                        next: &[],
                        node: 0,
                        up: &[],
                        split: 0,
                        out,
                        plan,
                        s,
                    },
                )
            });
        }
        return;
    }
    CALL.with(|cell| match cell.try_borrow_mut() {
        Ok(mut c) => split_call(isa, job, x, rows, out, parallel, plan, &mut c),
        // A call made while this thread's call is waiting on the pool: fresh arrays.
        Err(_) => split_call(
            isa,
            job,
            x,
            rows,
            out,
            parallel,
            plan,
            &mut CallScratch::default(),
        ),
    });
}

#[allow(clippy::too_many_arguments)]
fn split_call<W: Element>(
    isa: Isa,
    job: &Job<W>,
    x: &[f32],
    rows: usize,
    out: OutRows,
    parallel: bool,
    plan: Plan,
    c: &mut CallScratch,
) {
    let (d_in, depth) = (job.shape.d_in, job.shape.depth);
    let l = plan.split;
    let first = (1usize << l) - 1;
    let width = 1usize << l;
    c.at.resize(rows, 0);
    c.up.resize(rows * l, 0.0);
    c.order.resize(rows, 0);
    for t in 0..job.shape.trees {
        // Upper levels on tiles of consecutive rows.
        let tile_in = plan.tile * d_in;
        let tile = |(k, ((at, up), xs)): TileArgs| {
            let next = x.get((k + 1) * tile_in..).unwrap_or(&[]);
            let next = &next[..next.len().min(tile_in)];
            with_scratch(|s| {
                on_isa(
                    isa,
                    Tile {
                        job,
                        tree: t,
                        x: xs,
                        next,
                        at,
                        up,
                        split: l,
                        s,
                    },
                )
            })
        };
        if parallel {
            c.at.par_chunks_mut(plan.tile)
                .zip(c.up.par_chunks_mut(plan.tile * l))
                .zip(x.par_chunks(tile_in))
                .enumerate()
                .for_each(tile);
        } else {
            c.at.chunks_mut(plan.tile)
                .zip(c.up.chunks_mut(plan.tile * l))
                .zip(x.chunks(tile_in))
                .enumerate()
                .for_each(tile);
        }
        // Bucket all rows by their node at the split level.
        c.starts.clear();
        c.starts.resize(width + 1, 0);
        for &node in &c.at {
            c.starts[node as usize - first + 1] += 1;
        }
        for k in 0..width {
            c.starts[k + 1] += c.starts[k];
        }
        for (r, &node) in c.at.iter().enumerate() {
            let slot = &mut c.starts[node as usize - first];
            c.order[*slot as usize] = r as u32;
            *slot += 1;
        }
        // `starts[k]` now holds where bucket `k` ends.
        let (order, starts, up) = (&c.order, &c.starts, &c.up);
        let bucket = |k: usize| {
            let (a, b) = (
                if k == 0 { 0 } else { starts[k - 1] as usize },
                starts[k] as usize,
            );
            if a == b {
                return;
            }
            let next = match starts.get(k + 1) {
                Some(&c) => &order[b..c as usize],
                None => &[],
            };
            with_scratch(|s| {
                on_isa(
                    isa,
                    Bucket {
                        job,
                        tree: t,
                        x,
                        rows: Some(&order[a..b]),
                        count: b - a,
                        next,
                        node: first + k,
                        up,
                        split: l,
                        out,
                        plan,
                        s,
                    },
                )
            })
        };
        if parallel {
            (0..width).into_par_iter().for_each(bucket);
        } else {
            (0..width).for_each(bucket);
        }
    }
    debug_assert!(depth >= l);
}

/// A tile's number, its slices of the call-wide routing results (`at`, `up`) and its inputs.
type TileArgs<'a> = (usize, ((&'a mut [u32], &'a mut [f32]), &'a [f32]));
