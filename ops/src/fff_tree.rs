//! The conditional kernel for FastFeedForward with trees of depth > 0 (the UltraFastBERT family).
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
//! sums, which hide the latency of its multiply-adds (with one running sum a one-row call took about
//! 20% longer).

use std::cell::RefCell;
use std::marker::PhantomData;
use std::ops::Range;

use rayon::prelude::*;

use crate::activation::Activation;
use crate::fff::{Branch, FffLayer, FffShape};
use crate::fff_bf16::FffLayerBf16;
use crate::simd::{Init, Isa, Picked, Portable, PortableFma, Store, Vector};

/// Rows per tile of the upper levels: few enough that a tile's inputs (384 KiB at width 768) stay in
/// a 1 MiB L2 beside the upper levels' weights for the tile's four passes, enough that those weights
/// are shared by many rows. (512 rows, whose inputs overflow L2 to L3, were 4–6% slower at 16384
/// rows on a Zen 5 core.)
pub const TILE_ROWS: usize = 128;

/// Rows per bucket the split level aims at, before it is rounded down to an even level (so up to twice
/// this many): a bucket's inputs (384–768 KiB at width 768) stay in a 1 MiB L2 while its subtree is
/// walked. (On a Zen 5 core at 16384 rows, split level 6 took 12.6 against 13.4 ms at level 7 with
/// f32 weights and 11.3 against 12.5 ms with bf16; at 512 rows level 2 took 0.45 against 0.55 ms at
/// level 1.)
pub const BUCKET_ROWS: usize = 128;

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
/// lines, which set the hardware's prefetcher going on the rest. Whole rows (3 KiB at width 768) were
/// slower on a Zen 3 core at 128 rows, with weights cached (0.225 against 0.213 ms) and with four
/// layers' weights cold (2.13 against 1.92 ms for the four layers); on a Zen 5 core they gained
/// 9–10% cold and lost 3–6% cached, and two lines gained half of that.
const PATH_FETCH_BYTES: usize = 128;

/// Outputs of at least this many bytes are written around the caches ([`Store::Streaming`]): half a
/// typical L3, beyond which the next op would not find them cached anyway, while their lines would
/// evict the kernel's weights and inputs and each be read from memory before being written.
const STREAM_BYTES: usize = 16 << 20;

/// Calls with at least [`FOREST_CHUNK_TREES`] trees go through them a chunk of rows at a time, the
/// chunk's inputs and outputs this many bytes: a share of L3 that leaves room for the trees' weights.
/// (At 16384 rows of width 768 on one thread, 2048-row chunks took 16x7 from 226 to 92 ms and 4x9 from
/// 50 to 40 ms; 4096-row chunks were slower for both.)
const FOREST_CHUNK_BYTES: usize = 12 << 20;

/// With fewer trees, the chunks' lost sharing of weight rows costs more than the rows' traffic they
/// save (2x10 at 16384 rows: 24 ms whole, 30 ms in chunks).
const FOREST_CHUNK_TREES: usize = 4;

/// Node sets of at most this many rows walk on alone in interleaved lanes.
const LONE_ROWS: usize = 1;

/// The deepest tree the kernel walks: node numbers, and the virtual child below a leaf, fit in `u32`.
const MAX_DEPTH: usize = 30;

/// A weight element type the kernel can read: `f32`, or bf16 bit patterns in a `u16`.
pub(crate) trait Weight: Copy + Send + Sync {
    fn dot<V: Vector>(x: &[f32], w: &[Self]) -> f32;
    fn dot4<V: Vector>(x: [&[f32]; 4], w: [&[Self]; 4], ahead: bool) -> [f32; 4];
    fn dots<V: Vector, const R: usize, const N: usize>(
        x: [&[f32]; R],
        w: [&[Self]; N],
        ahead: bool,
    ) -> [[f32; N]; R];
    fn combine<V: Vector>(
        y: &mut [f32],
        init: Init,
        alpha: &[f32],
        w: Picked<Self>,
        cols: Range<usize>,
        store: Store,
    );
    /// `x . w` (the sums of `dot`) while `y += alpha * v`: see [`Vector::dot_axpy`].
    fn dot_axpy<V: Vector>(x: &[f32], w: &[Self], alpha: f32, v: &[Self], y: &mut [f32]) -> f32;
}

impl Weight for f32 {
    #[inline(always)]
    fn dot<V: Vector>(x: &[f32], w: &[f32]) -> f32 {
        V::dot(x, w)
    }
    #[inline(always)]
    fn dot4<V: Vector>(x: [&[f32]; 4], w: [&[f32]; 4], ahead: bool) -> [f32; 4] {
        V::dot4(x, w, ahead)
    }
    #[inline(always)]
    fn dots<V: Vector, const R: usize, const N: usize>(
        x: [&[f32]; R],
        w: [&[f32]; N],
        ahead: bool,
    ) -> [[f32; N]; R] {
        V::dots(x, w, ahead)
    }

    #[inline(always)]
    fn combine<V: Vector>(
        y: &mut [f32],
        init: Init,
        alpha: &[f32],
        w: Picked<f32>,
        cols: Range<usize>,
        store: Store,
    ) {
        V::combine(y, init, alpha, w, cols, store)
    }

    #[inline(always)]
    fn dot_axpy<V: Vector>(x: &[f32], w: &[f32], alpha: f32, v: &[f32], y: &mut [f32]) -> f32 {
        V::dot_axpy(x, w, alpha, v, y)
    }
}

impl Weight for u16 {
    #[inline(always)]
    fn dot<V: Vector>(x: &[f32], w: &[u16]) -> f32 {
        V::dot_bf16(x, w)
    }
    #[inline(always)]
    fn dot4<V: Vector>(x: [&[f32]; 4], w: [&[u16]; 4], ahead: bool) -> [f32; 4] {
        V::dot4_bf16(x, w, ahead)
    }
    #[inline(always)]
    fn dots<V: Vector, const R: usize, const N: usize>(
        x: [&[f32]; R],
        w: [&[u16]; N],
        ahead: bool,
    ) -> [[f32; N]; R] {
        V::dots_bf16(x, w, ahead)
    }
    #[inline(always)]
    fn combine<V: Vector>(
        y: &mut [f32],
        init: Init,
        alpha: &[f32],
        w: Picked<u16>,
        cols: Range<usize>,
        store: Store,
    ) {
        V::combine_bf16(y, init, alpha, w, cols, store)
    }
    #[inline(always)]
    fn dot_axpy<V: Vector>(x: &[f32], w: &[u16], alpha: f32, v: &[u16], y: &mut [f32]) -> f32 {
        V::dot_axpy_bf16(x, w, alpha, v, y)
    }
}

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

impl<'a> Job<'a, f32> {
    fn of(layer: &FffLayer<'a>) -> Self {
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

impl<'a> Job<'a, u16> {
    fn of_bf16(layer: &FffLayerBf16<'a>) -> Self {
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

/// How a call is cut up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The level at which rows are bucketed (0: the whole call is one bucket).
    pub split: usize,
    /// Rows per tile of the levels above the split.
    pub tile: usize,
    /// Node sets of at most this many rows walk on alone.
    pub lone: usize,
    /// How output rows are written.
    pub store: Store,
}

impl Plan {
    fn new(rows: usize, shape: FffShape, threads: usize) -> Plan {
        let depth = shape.depth;
        let mut split = 0;
        while split < depth && rows >> split > BUCKET_ROWS {
            split += 1;
        }
        // Routing takes two levels per pass over a set's inputs; an odd split leaves tiles a pass of
        // one level over every row (and, with an even number of levels, buckets another), so buckets
        // take up to twice as many rows instead.
        split -= split % 2;
        if threads > 1 {
            while split < depth && 1 << split < 4 * threads && rows >> split >= 16 {
                split += 1;
            }
        }
        let out_bytes = rows.saturating_mul(shape.d_out).saturating_mul(4);
        Plan {
            split,
            tile: rows.div_ceil(threads).clamp(1, TILE_ROWS),
            lone: LONE_ROWS,
            store: if out_bytes >= STREAM_BYTES {
                Store::Streaming
            } else {
                Store::Cached
            },
        }
    }
}

/// Computes `rows` rows of the op (`x`: `rows x d_in`, `out`: `rows x d_out`) with the best instruction
/// set, in parallel on the current rayon pool.
pub fn fff_tree(layer: &FffLayer, x: &[f32], rows: usize, out: &mut [f32]) {
    let threads = crate::threads::available();
    run(Isa::best(), &Job::of(layer), x, rows, out, threads, None);
}

/// The same on one thread with a chosen instruction set (which must be in [`Isa::available`]).
pub fn fff_tree_with(isa: Isa, layer: &FffLayer, x: &[f32], rows: usize, out: &mut [f32]) {
    assert!(
        Isa::available().contains(&isa),
        "{isa:?} is not available on this CPU"
    );
    run(isa, &Job::of(layer), x, rows, out, 1, None);
}

/// [`fff_tree`] with bf16 weights: half the weight bytes to fetch, the same arithmetic in f32.
pub fn fff_tree_bf16(layer: &FffLayerBf16, x: &[f32], rows: usize, out: &mut [f32]) {
    let threads = crate::threads::available();
    run(
        Isa::best(),
        &Job::of_bf16(layer),
        x,
        rows,
        out,
        threads,
        None,
    );
}

/// [`fff_tree_with`] with bf16 weights.
pub fn fff_tree_bf16_with(isa: Isa, layer: &FffLayerBf16, x: &[f32], rows: usize, out: &mut [f32]) {
    assert!(
        Isa::available().contains(&isa),
        "{isa:?} is not available on this CPU"
    );
    run(isa, &Job::of_bf16(layer), x, rows, out, 1, None);
}

/// The rows per chunk in which a call of `rows` rows goes through a forest, if it is cut up: a chunk
/// goes through every tree while its inputs and outputs are in L3, instead of each tree reading all
/// inputs twice and reading and writing all outputs in memory.
fn forest_chunk(shape: FffShape, rows: usize) -> Option<usize> {
    let row_bytes = (shape.d_in + shape.d_out) * std::mem::size_of::<f32>();
    let chunk = (FOREST_CHUNK_BYTES / row_bytes).max(1);
    (shape.trees >= FOREST_CHUNK_TREES && rows > chunk).then_some(chunk)
}

#[derive(Default)]
struct Walk {
    /// Local rows, permuted by the partitions into the order of their nodes.
    set: Vec<u32>,
    /// Where each local row goes from its current set: at the last level 1 if right; two levels at
    /// once, bit 1 if right at the set's node and bit 0 if right at the child it takes.
    code: Vec<u8>,
    /// Pending node sets: `(start, end, node, level)` in `set`.
    stack: Vec<(u32, u32, u32, u32)>,
    /// Rows that walk on alone: `(local row, node, level)`.
    lone: Vec<(u32, u32, u32)>,
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

/// The output rows, shared by bucket tasks that each write only their own rows.
#[derive(Clone, Copy)]
struct OutRows<'a> {
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
    fn new(out: &'a mut [f32], width: usize) -> Self {
        OutRows {
            ptr: out.as_mut_ptr(),
            width,
            rows: out.len() / width,
            _out: PhantomData,
        }
    }

    /// Columns from the start of every row to its first cache-line boundary, where rows are a whole
    /// number of lines apart (else 0).
    fn lead(&self) -> usize {
        if !(self.width * std::mem::size_of::<f32>()).is_multiple_of(64) {
            return 0;
        }
        let at = self.ptr as usize;
        (at.next_multiple_of(64) - at) / std::mem::size_of::<f32>()
    }

    /// # Safety
    /// No other reference to row `r` may be alive while the returned one is.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, r: usize) -> &'a mut [f32] {
        assert!(r < self.rows);
        // SAFETY: `r < rows`, so the row lies within the borrowed output; exclusivity is the caller's.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(r * self.width), self.width) }
    }
}

fn run<W: Weight>(
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

/// Runs `f` on this thread's scratch (fresh scratch if it is in use).
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => f(&mut Scratch::default()),
    })
}

#[allow(clippy::too_many_arguments)]
fn split_call<W: Weight>(
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

/// Work compiled once per instruction set: `run::<V>` is instantiated inside a function with `V`'s
/// target features.
trait Body {
    fn run<V: Vector>(self);
}

fn on_isa<B: Body>(isa: Isa, body: B) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only ever produced by `Isa::available` after detecting AVX-512F and
        // FMA on this CPU (and `fff_tree_with` asserts availability).
        Isa::Avx512 => unsafe { on_avx512(body) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for AVX2 and FMA.
        Isa::Avx2Fma => unsafe { on_avx2(body) },
        // NEON and its fused multiply-add are part of the aarch64 baseline.
        Isa::Neon => body.run::<PortableFma>(),
        _ => body.run::<Portable>(),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn on_avx512<B: Body>(body: B) {
    body.run::<crate::simd::Avx512>()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn on_avx2<B: Body>(body: B) {
    body.run::<crate::simd::Avx2>()
}

/// A call's only row through one tree. Each level's dot product runs fused with the emission of the
/// level above ([`Weight::dot_axpy`]): the output row stays in L1 and takes each output weight row
/// while the routing waits on its own loads (the next level's weights depend on this level's
/// result), instead of routing the whole path first and then summing its output rows, each from L2
/// again. The sums are those of routing a lone row with [`Vector::dot`] and emitting its path.
struct Lone<'a, W> {
    job: &'a Job<'a, W>,
    tree: usize,
    x: &'a [f32],
    y: &'a mut [f32],
}

impl<W: Weight> Body for Lone<'_, W> {
    #[inline(always)]
    fn run<V: Vector>(self) {
        let Lone { job, tree, x, y } = self;
        let FffShape {
            d_in, d_out, depth, ..
        } = job.shape;
        let base = tree * job.shape.nodes_per_tree();
        match (tree, job.b_out) {
            (0, None) => y.fill(0.0),
            (0, Some(b)) => y.copy_from_slice(b),
            _ => {}
        }
        let w_in = |node: usize| &job.w_in[node * d_in..(node + 1) * d_in];
        let w_out = |node: usize| &job.w_out[node * d_out..(node + 1) * d_out];
        // The node routed last, as an index into the weights, and its activation, not yet emitted.
        let mut last: Option<(usize, f32)> = None;
        let mut node = 0;
        for _ in 0..=depth {
            let at = base + node;
            let dot = match last {
                None => W::dot::<V>(x, w_in(at)),
                Some((n, act)) => W::dot_axpy::<V>(x, w_in(at), act, w_out(n), y),
            };
            let logit = dot + job.b_in.map_or(0.0, |b| b[at]);
            last = Some((at, job.act.apply(logit)));
            node = 2 * node + 1 + job.branch.goes_right(logit) as usize;
        }
        if let Some((n, act)) = last {
            let w = Picked {
                matrix: job.w_out,
                width: d_out,
                idx: &[n as u32],
            };
            W::combine::<V>(y, Init::Keep, &[act], w, 0..d_out, Store::Cached);
        }
    }
}

/// A one-row call of a forest of at least this many trees walks four trees at once ([`LoneForest`]).
const LONE_FOREST_TREES: usize = 4;

/// Output rows a one-row forest call sums per pass over its output.
const LONE_FOREST_TERMS: usize = 32;

/// One row through a forest: the trees walked four at a time, level by level, each level's four dot
/// products interleaved ([`Vector::dot4`]) so that their weight fetches overlap instead of waiting on
/// one another as one tree's levels must; then every logit activated in one vectorised pass, and the
/// output summed over every neuron on the paths, [`LONE_FOREST_TERMS`] weight rows per pass.
struct LoneForest<'a, 'b, W> {
    job: &'a Job<'a, W>,
    x: &'a [f32],
    y: &'a mut [f32],
    s: &'b mut Scratch,
}

impl<W: Weight> Body for LoneForest<'_, '_, W> {
    #[inline(always)]
    fn run<V: Vector>(self) {
        let LoneForest { job, x, y, s } = self;
        let FffShape {
            d_in,
            d_out,
            depth,
            trees,
        } = job.shape;
        let n = job.shape.nodes_per_tree();
        let w_in = |node: usize| &job.w_in[node * d_in..(node + 1) * d_in];
        let (path, alpha) = (&mut s.path, &mut s.alpha);
        path.clear();
        alpha.clear();
        for first in (0..trees).step_by(4) {
            // A group of fewer than four trees repeats its last, whose repeats are not recorded.
            let group = (trees - first).min(4);
            let tree = |k: usize| first + k.min(group - 1);
            let mut node = [0usize; 4];
            for _ in 0..=depth {
                let at: [usize; 4] = std::array::from_fn(|k| tree(k) * n + node[k]);
                let dots = W::dot4::<V>([x; 4], at.map(w_in), false);
                for k in 0..group {
                    let logit = dots[k] + job.b_in.map_or(0.0, |b| b[at[k]]);
                    path.push(at[k] as u32);
                    alpha.push(logit);
                    node[k] = 2 * node[k] + 1 + job.branch.goes_right(logit) as usize;
                }
            }
        }
        crate::activation::bias_act_rows(job.act, alpha, None);
        let mut init = match job.b_out {
            Some(b) => Init::From(b),
            None => Init::Zero,
        };
        for (idx, alpha) in path
            .chunks(LONE_FOREST_TERMS)
            .zip(alpha.chunks(LONE_FOREST_TERMS))
        {
            let w = Picked {
                matrix: job.w_out,
                width: d_out,
                idx,
            };
            W::combine::<V>(y, init, alpha, w, 0..d_out, Store::Cached);
            init = Init::Keep;
        }
    }
}

/// The levels above the split for one tile of rows.
struct Tile<'a, 'b, W> {
    job: &'a Job<'a, W>,
    tree: usize,
    x: &'a [f32],
    /// The inputs of the tile likely to run next on this thread, fetched into L2 meanwhile.
    next: &'a [f32],
    at: &'a mut [u32],
    up: &'a mut [f32],
    split: usize,
    s: &'b mut Scratch,
}

impl<W: Weight> Body for Tile<'_, '_, W> {
    #[inline(always)]
    fn run<V: Vector>(self) {
        let Tile {
            job,
            tree,
            x,
            next,
            at,
            up,
            split,
            s,
        } = self;
        let count = at.len();
        s.ids.clear();
        s.ids.extend(0..count as u32);
        route::<W, V>(
            job,
            tree,
            x,
            &s.ids,
            &mut s.walk,
            Levels {
                acts: up,
                stride: split,
                first: 0,
                stop: split,
            },
            at,
            0,
            0,
            0,
            next,
            true,
        );
        crate::activation::bias_act_rows(job.act, up, None);
    }
}

/// One bucket: the rows at one node of the split level route its subtree, then are emitted.
struct Bucket<'a, 'b, W> {
    job: &'a Job<'a, W>,
    tree: usize,
    x: &'a [f32],
    /// The bucket's rows (`None`: all `count` rows of the call).
    rows: Option<&'a [u32]>,
    count: usize,
    /// The rows of the bucket likely to run next on this thread, whose inputs are fetched into L2
    /// while this one emits (emitting reads no inputs), instead of by that bucket's first pass.
    next: &'a [u32],
    node: usize,
    /// Activations of the levels above the split, `rows x split`.
    up: &'a [f32],
    split: usize,
    out: OutRows<'a>,
    plan: Plan,
    s: &'b mut Scratch,
}

impl<W: Weight> Body for Bucket<'_, '_, W> {
    #[inline(always)]
    fn run<V: Vector>(self) {
        let Bucket {
            job,
            tree,
            x,
            rows,
            count,
            next,
            node,
            up,
            split,
            out,
            plan,
            s,
        } = self;
        let FffShape {
            d_in, d_out, depth, ..
        } = job.shape;
        let levels = depth + 1 - split;
        s.ids.clear();
        match rows {
            Some(r) => s.ids.extend_from_slice(r),
            None => s.ids.extend(0..count as u32),
        }
        // The rows' activations above the split, read when they are emitted: a call's rows lie
        // anywhere in `up`, which the inputs streamed meanwhile push out of L2, so each read would
        // wait on L3 (11% of the kernel at 16384 rows).
        if split > 0 {
            for &r in &s.ids {
                crate::simd::prefetch_l2(&up[r as usize * split..(r as usize + 1) * split]);
            }
        }
        s.acts.resize(count * levels, 0.0);
        s.ends.resize(count, 0);
        route::<W, V>(
            job,
            tree,
            x,
            &s.ids,
            &mut s.walk,
            Levels {
                acts: &mut s.acts,
                stride: levels,
                first: split,
                stop: depth + 1,
            },
            &mut s.ends,
            node,
            split,
            plan.lone,
            &[],
            plan.split > 0,
        );
        crate::activation::bias_act_rows(job.act, &mut s.acts[..count * levels], None);
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
        let lead = match plan.store {
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
                W::combine::<V>(y, init, &s.alpha[row_terms], w, cols.clone(), plan.store);
                if let Some(&r) = next.get(n) {
                    crate::simd::prefetch_l2(&x[r as usize * d_in..][ahead.clone()]);
                }
                if fetch_paths {
                    // Whole rows: start the weight rows on the path two rows ahead that the path one
                    // row ahead does not share (rows go in leaf order, so only a path's lower end
                    // changes), which at small row counts come from L3 or memory.
                    let (one, two) = ((n + 1) * terms, (n + 2) * terms);
                    if let (Some(p1), Some(p2)) =
                        (s.path.get(one..two), s.path.get(two..two + terms))
                    {
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
        if plan.store == Store::Streaming {
            crate::simd::store_fence();
        }
    }
}

/// Where routing records logits: local row `i`'s logit at level `k` goes to
/// `acts[i * stride + k - first]`; routing stops before level `stop`. The caller turns them into
/// activations afterwards, in one vectorised pass: the branch needs only the logit's sign, and a
/// scalar GELU per node cost 2–3% of the kernel.
struct Levels<'a> {
    acts: &'a mut [f32],
    stride: usize,
    first: usize,
    stop: usize,
}

/// Moves the rows whose `code` has `bit` set to the end of `set`; returns how many come before them.
///
/// Without branches: on rows that vary, a row's side is a coin toss, and a branch on it was mispredicted
/// half the time. Rows `i..j` are those found to go after; each row is swapped to `i`, and `i` moves
/// past it only if it goes before.
fn partition(set: &mut [u32], code: &[u8], bit: u8) -> usize {
    let mut i = 0;
    for j in 0..set.len() {
        let row = set[j];
        set.swap(i, j);
        i += usize::from(code[row as usize] & bit == 0);
    }
    i
}

/// Routes local rows `0..ids.len()` (local row `i` is row `ids[i]` of `x`) from `node` at `level` down
/// to level `lv.stop`: records each activation in `lv`, and in `ends[i]` the node each row reaches at
/// level `lv.stop`. Leaves `walk.set` holding the local rows in the order of those nodes. Sets of at
/// most `lone` rows walk on alone, four at a time. Meanwhile `ahead` (the inputs of work to come) is
/// fetched into L2, one row's worth per group of rows dotted. In a `large` call (one split at a level)
/// the dot products also fetch their input rows into L1 a few lines ahead.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn route<W: Weight, V: Vector>(
    job: &Job<W>,
    tree: usize,
    x: &[f32],
    ids: &[u32],
    walk: &mut Walk,
    lv: Levels,
    ends: &mut [u32],
    node: usize,
    level: usize,
    lone: usize,
    ahead: &[f32],
    large: bool,
) {
    let d_in = job.shape.d_in;
    let mut ahead = ahead.chunks(d_in.max(16));
    let mut fetch_ahead = || {
        if let Some(c) = ahead.next() {
            crate::simd::prefetch_l2(c);
        }
    };
    let base = tree * job.shape.nodes_per_tree();
    let count = ids.len();
    let Walk {
        set,
        code,
        stack,
        lone: alone,
    } = walk;
    let Levels {
        acts,
        stride,
        first,
        stop,
    } = lv;
    let xrow = |i: u32| {
        let r = ids[i as usize] as usize;
        &x[r * d_in..(r + 1) * d_in]
    };
    let w_in = |node: usize| &job.w_in[(base + node) * d_in..(base + node + 1) * d_in];
    let bias = |node: usize| job.b_in.map_or(0.0, |b| b[base + node]);
    set.clear();
    set.extend(0..count as u32);
    code.clear();
    code.resize(count, 0);
    stack.clear();
    alone.clear();
    stack.push((0, count as u32, node as u32, level as u32));
    while let Some((a, b, node, level)) = stack.pop() {
        let (a, b, node, level) = (a as usize, b as usize, node as usize, level as usize);
        if a == b {
            continue;
        }
        if level == stop {
            for &i in &set[a..b] {
                ends[i as usize] = node as u32;
            }
            continue;
        }
        if b - a <= lone {
            alone.extend(set[a..b].iter().map(|&i| (i, node as u32, level as u32)));
            continue;
        }
        if level + 1 < stop {
            // Two levels in one pass over the set's inputs: every row against this node and both its
            // children (half the input traffic of a level at a time, for half again the arithmetic).
            let (l, r) = (2 * node + 1, 2 * node + 2);
            if level + 2 < stop {
                for g in 2 * l + 1..=2 * r + 2 {
                    crate::simd::prefetch(&w_in(g)[..d_in.min(16)]);
                }
            }
            let w = [w_in(node), w_in(l), w_in(r)];
            let bias = [bias(node), bias(l), bias(r)];
            let mut record = |i: u32, dot: [f32; 3]| {
                let i = i as usize;
                let logit = dot[0] + bias[0];
                acts[i * stride + level - first] = logit;
                let right = job.branch.goes_right(logit);
                let logit = if right {
                    dot[2] + bias[2]
                } else {
                    dot[1] + bias[1]
                };
                acts[i * stride + level + 1 - first] = logit;
                code[i] = (right as u8) << 1 | job.branch.goes_right(logit) as u8;
            };
            let mut groups = set[a..b].chunks_exact(4);
            for g in &mut groups {
                let dots = W::dots::<V, 4, 3>(std::array::from_fn(|k| xrow(g[k])), w, large);
                fetch_ahead();
                for k in 0..4 {
                    record(g[k], dots[k]);
                }
            }
            // The last one to three rows together: one running sum per row and weight row is a chain
            // of dependent adds, so a row alone waits on their latency (the sums are the same).
            match *groups.remainder() {
                [a] => record(a, W::dots::<V, 1, 3>([xrow(a)], w, large)[0]),
                [a, b] => {
                    let d = W::dots::<V, 2, 3>([xrow(a), xrow(b)], w, large);
                    record(a, d[0]);
                    record(b, d[1]);
                }
                [a, b, c] => {
                    let d = W::dots::<V, 3, 3>([xrow(a), xrow(b), xrow(c)], w, large);
                    record(a, d[0]);
                    record(b, d[1]);
                    record(c, d[2]);
                }
                _ => {}
            }
            // Grandchildren left to right: split by the first branch, then each half by the second.
            let m = a + partition(&mut set[a..b], code, 2);
            let m0 = a + partition(&mut set[a..m], code, 1);
            let m1 = m + partition(&mut set[m..b], code, 1);
            let next = level as u32 + 2;
            let (l, r) = (l as u32, r as u32);
            stack.push((m1 as u32, b as u32, 2 * r + 2, next));
            stack.push((m as u32, m1 as u32, 2 * r + 1, next));
            stack.push((m0 as u32, m as u32, 2 * l + 2, next));
            stack.push((a as u32, m0 as u32, 2 * l + 1, next));
        } else {
            // The last level: every row of the set against this node's weights, which stay in L1.
            let (wi, bi) = (w_in(node), bias(node));
            let mut record = |i: u32, dot: f32| {
                let logit = dot + bi;
                acts[i as usize * stride + level - first] = logit;
                code[i as usize] = job.branch.goes_right(logit) as u8;
            };
            let mut groups = set[a..b].chunks_exact(4);
            for g in &mut groups {
                let dots = W::dot4::<V>(std::array::from_fn(|k| xrow(g[k])), [wi; 4], large);
                fetch_ahead();
                for k in 0..4 {
                    record(g[k], dots[k]);
                }
            }
            // The last few rows in padded lanes: the sums of a group, whatever the set's size.
            let rest = groups.remainder();
            if let Some(&first) = rest.first() {
                let dots = W::dot4::<V>(
                    std::array::from_fn(|k| xrow(*rest.get(k).unwrap_or(&first))),
                    [wi; 4],
                    large,
                );
                for (k, &i) in rest.iter().enumerate() {
                    record(i, dots[k]);
                }
            }
            let m = a + partition(&mut set[a..b], code, 1);
            let (node, next) = (node as u32, level as u32 + 1);
            stack.push((m as u32, b as u32, 2 * node + 2, next));
            stack.push((a as u32, m as u32, 2 * node + 1, next));
        }
    }
    // Rows walking alone: four lanes; a lane that reaches the stop level takes the next row.
    let mut queue = alone.iter().copied();
    let mut lanes = [(0u32, 0u32, 0u32); 4];
    let mut live = 0;
    loop {
        while live < 4 {
            match queue.next() {
                Some(e) => {
                    lanes[live] = e;
                    live += 1;
                }
                None => break,
            }
        }
        if live == 0 {
            break;
        }
        // Fewer than four lanes left are padded with the first: each row gets the sums it would get
        // beside others, so its result does not depend on the rows it walks with.
        let lane = |k: usize| lanes[if k < live { k } else { 0 }];
        let dots = W::dot4::<V>(
            std::array::from_fn(|k| xrow(lane(k).0)),
            std::array::from_fn(|k| w_in(lane(k).1 as usize)),
            large,
        );
        for k in (0..live).rev() {
            let (i, node, level) = lanes[k];
            let logit = dots[k] + bias(node as usize);
            acts[i as usize * stride + level as usize - first] = logit;
            let child = 2 * node + 1 + job.branch.goes_right(logit) as u32;
            if level as usize + 1 == stop {
                ends[i as usize] = child;
                live -= 1;
                lanes[k] = lanes[live];
            } else {
                lanes[k] = (i, child, level + 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activation::Activation;
    use crate::fff::{fff_masked_gemm, fff_reference, FffWeights};
    use crate::fff_bf16::{
        bf16_to_f32_vec, f32_to_bf16_round_nearest_even, fff_reference_bf16, FffWeightsBf16,
    };

    /// `layer`'s weights rounded to bf16 (`w_in`, `w_out`), for [`with_bf16`].
    fn rounded(layer: &FffLayer) -> (Vec<u16>, Vec<u16>) {
        (
            f32_to_bf16_round_nearest_even(layer.w.w_in),
            f32_to_bf16_round_nearest_even(layer.w.w_out),
        )
    }

    /// `layer` with the rounded weights `(w_in, w_out)` of [`rounded`]; biases and the rest the same.
    fn with_bf16<'a>(
        layer: &FffLayer<'a>,
        (w_in, w_out): &'a (Vec<u16>, Vec<u16>),
    ) -> FffLayerBf16<'a> {
        FffLayerBf16 {
            shape: layer.shape,
            act: layer.act,
            branch: layer.branch,
            w: FffWeightsBf16 {
                w_in,
                b_in: layer.w.b_in,
                w_out,
                b_out: layer.w.b_out,
            },
        }
    }

    #[test]
    fn partition_puts_rows_with_the_bit_last_and_keeps_every_row() {
        let mut lcg = Lcg(7);
        for n in [0usize, 1, 2, 5, 64, 129] {
            let code: Vec<u8> = (0..n).map(|_| (lcg.next() > 0.0) as u8 * 3).collect();
            let mut set: Vec<u32> = (0..n as u32).rev().collect();
            let before = partition(&mut set, &code, 2);
            assert_eq!(before, code.iter().filter(|&&c| c & 2 == 0).count());
            assert!(set[..before].iter().all(|&r| code[r as usize] & 2 == 0));
            assert!(set[before..].iter().all(|&r| code[r as usize] & 2 != 0));
            let mut sorted = set.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..n as u32).collect::<Vec<_>>());
        }
    }

    struct Lcg(u32);
    impl Lcg {
        fn next(&mut self) -> f32 {
            self.0 = self.0.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (self.0 >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        }
        /// Seeded `(w_in, b_in, w_out, b_out)` for `shape`, drawn in that order.
        fn weights(&mut self, shape: FffShape) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
            let total = shape.total_nodes();
            (
                self.vec(total * shape.d_in),
                self.vec(total),
                self.vec(total * shape.d_out),
                self.vec(shape.d_out),
            )
        }
        fn vec(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.next()).collect()
        }
    }

    /// Whether any logit on the reference path of this row is so close to zero that a different
    /// summation order may take the other branch.
    fn near_boundary(shape: FffShape, w: &FffWeights, x: &[f32]) -> bool {
        let n = shape.nodes_per_tree();
        (0..shape.trees).any(|t| {
            let mut node = 0;
            (0..=shape.depth).any(|_| {
                let i = t * n + node;
                let logit: f32 = w.w_in[i * shape.d_in..(i + 1) * shape.d_in]
                    .iter()
                    .zip(x)
                    .map(|(a, b)| a * b)
                    .sum::<f32>()
                    + w.b_in.map_or(0.0, |b| b[i]);
                node = 2 * node + 1 + usize::from(logit > 0.0);
                logit.abs() < 1e-4
            })
        })
    }

    #[test]
    fn every_instruction_set_agrees_with_the_reference() {
        let mut rng = Lcg(11);
        let cases = [
            (1, 7, 5, 3, 1),
            (3, 33, 17, 1, 2),
            (300, 64, 64, 4, 2),
            (517, 100, 31, 2, 5),
            (64, 768, 768, 11, 1),
        ];
        for &(rows, d_in, d_out, depth, trees) in &cases {
            let shape = FffShape {
                d_in,
                d_out,
                depth,
                trees,
            };
            let (w_in, b_in, w_out, b_out) = rng.weights(shape);
            let x: Vec<f32> = rng.vec(rows * d_in).iter().map(|v| v * 4.0).collect();
            for biased in [true, false] {
                let w = FffWeights {
                    w_in: &w_in,
                    b_in: biased.then_some(&b_in[..]),
                    w_out: &w_out,
                    b_out: biased.then_some(&b_out[..]),
                };
                let layer = FffLayer {
                    shape,
                    act: Activation::GeluErf,
                    branch: Branch::Greater,
                    w,
                };
                let mut want = vec![0.0; rows * d_out];
                fff_reference(&layer, &x, rows, &mut want);
                let mut kernels: Vec<(String, Vec<f32>)> = Vec::new();
                for isa in Isa::available() {
                    let mut got = vec![f32::NAN; rows * d_out];
                    fff_tree_with(isa, &layer, &x, rows, &mut got);
                    kernels.push((format!("tree kernel, {isa:?}"), got));
                }
                let mut masked = vec![f32::NAN; rows * d_out];
                fff_masked_gemm(&layer, &x, rows, &mut masked);
                kernels.push(("masked GEMM".to_string(), masked));
                for (kernel, got) in kernels {
                    for r in 0..rows {
                        if near_boundary(shape, &w, &x[r * d_in..(r + 1) * d_in]) {
                            continue;
                        }
                        for j in 0..d_out {
                            let (g, e) = (got[r * d_out + j], want[r * d_out + j]);
                            assert!(
                                (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
                                "{kernel} {shape:?} row {r}: {g} vs {e}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Every path (each instruction set; one bucket or split at several levels; tiny tiles; rows
    /// walking alone from sets of up to three; one thread or a pool) against the reference, on odd
    /// widths, several trees and every depth from 1 to 11.
    #[test]
    fn every_plan_agrees_with_the_reference() {
        let mut rng = Lcg(23);
        let cases = [
            (1, 37, 100, 1, 3),
            (3, 100, 37, 2, 2),
            (517, 37, 37, 3, 4),
            (5000, 100, 17, 4, 1),
            (64, 16, 100, 5, 2),
            (517, 100, 100, 6, 1),
            (3, 37, 64, 7, 2),
            (5000, 37, 23, 8, 2),
            (1, 100, 37, 9, 1),
            (517, 48, 33, 10, 1),
            (5000, 37, 37, 11, 1),
            // Wider than a column pass: several passes, with and without a masked tail.
            (600, 40, 320, 5, 2),
            (300, 24, 300, 4, 1),
            // One row, whose levels fuse routing with emission: the dot product longer than the
            // output row, and shorter.
            (1, 331, 200, 6, 2),
            (1, 130, 300, 4, 3),
            // One row of a forest, its trees walked four at a time: whole groups, and a last group
            // of one, two and three trees; more output rows than one pass sums, and fewer.
            (1, 768, 768, 1, 8),
            (1, 40, 33, 2, 5),
            (1, 19, 21, 3, 7),
            (1, 64, 17, 0, 6),
            (1, 33, 65, 4, 18),
        ];
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for (case, &(rows, d_in, d_out, depth, trees)) in cases.iter().enumerate() {
            let shape = FffShape {
                d_in,
                d_out,
                depth,
                trees,
            };
            let (w_in, b_in, w_out, b_out) = rng.weights(shape);
            let x: Vec<f32> = rng.vec(rows * d_in).iter().map(|v| v * 4.0).collect();
            let biased = case % 2 == 0;
            let w = FffWeights {
                w_in: &w_in,
                b_in: biased.then_some(&b_in[..]),
                w_out: &w_out,
                b_out: biased.then_some(&b_out[..]),
            };
            let layer = FffLayer {
                shape,
                act: [Activation::GeluErf, Activation::Relu, Activation::GeluTanh][case % 3],
                branch: [Branch::Greater, Branch::GreaterOrEqual][case % 2],
                w,
            };
            let mut want = vec![0.0; rows * d_out];
            fff_reference(&layer, &x, rows, &mut want);
            let skip: Vec<bool> = (0..rows)
                .map(|r| near_boundary(shape, &w, &x[r * d_in..(r + 1) * d_in]))
                .collect();
            // The same weights rounded to bf16, against the reference on their widened values.
            let weights16 = rounded(&layer);
            let layer16 = with_bf16(&layer, &weights16);
            let mut want16 = vec![0.0; rows * d_out];
            fff_reference_bf16(&layer16, &x, rows, &mut want16);
            let (wide_in, wide_out) =
                (bf16_to_f32_vec(&weights16.0), bf16_to_f32_vec(&weights16.1));
            let wide = FffWeights {
                w_in: &wide_in,
                w_out: &wide_out,
                ..w
            };
            let skip16: Vec<bool> = (0..rows)
                .map(|r| near_boundary(shape, &wide, &x[r * d_in..(r + 1) * d_in]))
                .collect();
            let mut splits = vec![0, 1, depth / 2, depth];
            splits.dedup();
            let mut plans = vec![None];
            for &split in &splits {
                for (tile, lone, store) in [
                    (5, 0, Store::Cached),
                    (512, 1, Store::Streaming),
                    (64, 3, Store::Streaming),
                ] {
                    plans.push(Some(Plan {
                        split,
                        tile,
                        lone,
                        store,
                    }));
                }
            }
            for isa in Isa::available() {
                for &plan in &plans {
                    for threads in [1, 2] {
                        let ctx = format!("{isa:?} {plan:?} threads {threads} {shape:?}");
                        // On one thread aligned to a cache line, on two one element past it: streaming
                        // stores take their aligned path and their head-first path.
                        let mut buf = vec![f32::NAN; rows * d_out + 16];
                        let at = buf.as_ptr().align_offset(64) + threads - 1;
                        let got = &mut buf[at..at + rows * d_out];
                        pool.install(|| run(isa, &Job::of(&layer), &x, rows, got, threads, plan));
                        agree(got, &want, d_out, &skip, &ctx);
                        pool.install(|| {
                            run(isa, &Job::of_bf16(&layer16), &x, rows, got, threads, plan)
                        });
                        agree(got, &want16, d_out, &skip16, &format!("bf16 {ctx}"));
                    }
                }
            }
            // The masked GEMM on the same cases, its walks split between the pool's two threads.
            let mut masked = vec![f32::NAN; rows * d_out];
            pool.install(|| fff_masked_gemm(&layer, &x, rows, &mut masked));
            agree(
                &masked,
                &want,
                d_out,
                &skip,
                &format!("masked GEMM {shape:?}"),
            );
        }
    }

    /// Within 1e-4 (relative above 1) of the reference on every row not near a branch boundary: bf16
    /// kernels widen weights exactly and keep activations in f32, so they meet the f32 tolerance
    /// against the reference on the widened weights.
    fn agree(got: &[f32], want: &[f32], d_out: usize, skip: &[bool], ctx: &str) {
        for (r, _) in skip.iter().enumerate().filter(|(_, &s)| !s) {
            for j in 0..d_out {
                let (g, e) = (got[r * d_out + j], want[r * d_out + j]);
                assert!(
                    (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
                    "{ctx} row {r}: {g} vs {e}"
                );
            }
        }
    }

    /// A forest call large enough to go in chunks, on every instruction set and one or two threads.
    #[test]
    fn forests_in_chunks_agree_with_the_reference() {
        let mut rng = Lcg(31);
        let (rows, d_in, d_out) = (1100, 1500, 1499);
        let shape = FffShape {
            d_in,
            d_out,
            depth: 1,
            trees: 5,
        };
        assert!(forest_chunk(shape, rows).is_some_and(|c| c < rows && rows < 2 * c));
        let (w_in, b_in, w_out, b_out) = rng.weights(shape);
        let x = rng.vec(rows * d_in);
        let w = FffWeights {
            w_in: &w_in,
            b_in: Some(&b_in),
            w_out: &w_out,
            b_out: Some(&b_out),
        };
        let layer = FffLayer {
            shape,
            act: Activation::GeluErf,
            branch: Branch::Greater,
            w,
        };
        let mut want = vec![0.0; rows * d_out];
        fff_reference(&layer, &x, rows, &mut want);
        let skip: Vec<bool> = (0..rows)
            .map(|r| near_boundary(shape, &w, &x[r * d_in..(r + 1) * d_in]))
            .collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for isa in Isa::available() {
            for threads in [1, 2] {
                let mut got = vec![f32::NAN; rows * d_out];
                pool.install(|| run(isa, &Job::of(&layer), &x, rows, &mut got, threads, None));
                agree(
                    &got,
                    &want,
                    d_out,
                    &skip,
                    &format!("{isa:?} threads {threads}"),
                );
            }
        }
    }

    #[test]
    fn plans_split_large_calls_and_keep_small_ones_whole() {
        let shape = FffShape {
            d_in: 768,
            d_out: 768,
            depth: 11,
            trees: 1,
        };
        assert_eq!(Plan::new(1, shape, 1).split, 0);
        assert_eq!(Plan::new(128, shape, 1).split, 0);
        // Even split levels: routing takes two levels a pass.
        assert_eq!(Plan::new(16384, shape, 1).split, 6);
        assert_eq!(Plan::new(4096, shape, 1).split, 4);
        assert_eq!(Plan::new(512, shape, 1).split, 2);
        // Outputs far larger than the caches are streamed.
        assert_eq!(Plan::new(2048, shape, 1).store, Store::Cached);
        assert_eq!(Plan::new(16384, shape, 1).store, Store::Streaming);
        // Two threads get at least eight buckets where rows allow.
        assert_eq!(Plan::new(128, shape, 2).split, 3);
        assert_eq!(Plan::new(3, shape, 2).split, 0);
        let shallow = FffShape { depth: 2, ..shape };
        assert_eq!(Plan::new(16384, shallow, 2).split, 2);
    }

    /// The same bits on one thread and on three, with f32 and bf16 weights, on every instruction set:
    /// a row's logits must not depend on which rows a call routes with it (the thread count changes
    /// the tiles, the buckets and which rows walk alone). The width has whole 64-element blocks and a
    /// tail, which the dot products sum in separate running sums.
    #[test]
    fn parallel_tiles_agree_with_one_thread() {
        let mut rng = Lcg(5);
        let (d_in, d_out) = (100, 40);
        let shape = FffShape {
            d_in,
            d_out,
            depth: 6,
            trees: 2,
        };
        let total = shape.total_nodes();
        let (w_in, w_out) = (rng.vec(total * d_in), rng.vec(total * d_out));
        let w = FffWeights {
            w_in: &w_in,
            b_in: None,
            w_out: &w_out,
            b_out: None,
        };
        let rows = 1000;
        let x = rng.vec(rows * d_in);
        let layer = FffLayer {
            shape,
            act: Activation::Relu,
            branch: Branch::GreaterOrEqual,
            w,
        };
        let weights16 = rounded(&layer);
        let layer16 = with_bf16(&layer, &weights16);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for isa in Isa::available() {
            let (mut one, mut many) = (vec![0.0; rows * d_out], vec![0.0; rows * d_out]);
            run(isa, &Job::of(&layer), &x, rows, &mut one, 1, None);
            pool.install(|| run(isa, &Job::of(&layer), &x, rows, &mut many, 3, None));
            assert!(
                one == many,
                "{isa:?}: f32 results depend on the thread count"
            );
            run(isa, &Job::of_bf16(&layer16), &x, rows, &mut one, 1, None);
            pool.install(|| run(isa, &Job::of_bf16(&layer16), &x, rows, &mut many, 3, None));
            assert!(
                one == many,
                "{isa:?}: bf16 results depend on the thread count"
            );
        }
    }
}
