//! The bodies a call is made of, each compiled once per instruction set ([`Body`]): a one-row call
//! through one tree ([`Lone`]) or a forest ([`LoneForest`]); the upper levels of a tile of rows
//! ([`Tile`]); a bucket of rows that routes its subtree and emits ([`Bucket`]).

use super::emit::{self, OutRows};
use super::plan::Plan;
use super::route::{route, Levels};
use super::{Job, Scratch};
use crate::element::Element;
use crate::fff::FffShape;
use crate::simd::{Body, Init, Picked, Store, Vector};

/// A call's only row through one tree. Each level's dot product runs fused with the emission of the
/// level above ([`Weight::dot_axpy`]): the output row stays in L1 and takes each output weight row
/// while the routing waits on its own loads (the next level's weights depend on this level's
/// result), instead of routing the whole path first and then summing its output rows, each from L2
/// again. The sums are those of routing a lone row with [`Vector::dot`] and emitting its path.
pub(super) struct Lone<'a, W> {
    pub(super) job: &'a Job<'a, W>,
    pub(super) tree: usize,
    pub(super) x: &'a [f32],
    pub(super) y: &'a mut [f32],
}

impl<W: Element> Body for Lone<'_, W> {
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
                None => V::dot(x, w_in(at)),
                Some((n, act)) => V::dot_axpy(x, w_in(at), act, w_out(n), y),
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
            V::combine(y, Init::Keep, &[act], w, 0..d_out, Store::Cached);
        }
    }
}

/// A one-row call of a forest of at least this many trees walks four trees at once ([`LoneForest`]).
pub(super) const LONE_FOREST_TREES: usize = 4;

/// Output rows a one-row forest call sums per pass over its output.
pub(super) const LONE_FOREST_TERMS: usize = 32;

/// One row through a forest: the trees walked four at a time, level by level, each level's four dot
/// products interleaved ([`Vector::dot4`]) so that their weight fetches overlap instead of waiting on
/// one another as one tree's levels must; then every logit activated in one vectorised pass, and the
/// output summed over every neuron on the paths, [`LONE_FOREST_TERMS`] weight rows per pass.
pub(super) struct LoneForest<'a, 'b, W> {
    pub(super) job: &'a Job<'a, W>,
    pub(super) x: &'a [f32],
    pub(super) y: &'a mut [f32],
    pub(super) s: &'b mut Scratch,
}

impl<W: Element> Body for LoneForest<'_, '_, W> {
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
                let dots = V::dot4([x; 4], at.map(w_in), false);
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
            V::combine(y, init, alpha, w, 0..d_out, Store::Cached);
            init = Init::Keep;
        }
    }
}

/// The levels above the split for one tile of rows.
pub(super) struct Tile<'a, 'b, W> {
    pub(super) job: &'a Job<'a, W>,
    pub(super) tree: usize,
    pub(super) x: &'a [f32],
    /// The inputs of the tile likely to run next on this thread, fetched into L2 meanwhile.
    pub(super) next: &'a [f32],
    pub(super) at: &'a mut [u32],
    pub(super) up: &'a mut [f32],
    pub(super) split: usize,
    pub(super) s: &'b mut Scratch,
}

impl<W: Element> Body for Tile<'_, '_, W> {
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
pub(super) struct Bucket<'a, 'b, W> {
    pub(super) job: &'a Job<'a, W>,
    pub(super) tree: usize,
    pub(super) x: &'a [f32],
    /// The bucket's rows (`None`: all `count` rows of the call).
    pub(super) rows: Option<&'a [u32]>,
    pub(super) count: usize,
    /// The rows of the bucket likely to run next on this thread, whose inputs are fetched into L2
    /// while this one emits (emitting reads no inputs), instead of by that bucket's first pass.
    pub(super) next: &'a [u32],
    pub(super) node: usize,
    /// Activations of the levels above the split, `rows x split`.
    pub(super) up: &'a [f32],
    pub(super) split: usize,
    pub(super) out: OutRows<'a>,
    pub(super) plan: Plan,
    pub(super) s: &'b mut Scratch,
}

impl<W: Element> Body for Bucket<'_, '_, W> {
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
        let depth = job.shape.depth;
        let levels = depth + 1 - split;
        s.ids.clear();
        match rows {
            Some(r) => s.ids.extend_from_slice(r),
            None => s.ids.extend(0..count as u32),
        }
        // The rows' activations above the split, read when they are emitted: a call's rows lie
        // anywhere in `up`, which the inputs streamed meanwhile push out of L2, so each read would
        // wait on L3.
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
        emit::emit::<W, V>(
            job, tree, x, next, up, split, levels, count, out, plan.store, s,
        );
    }
}
