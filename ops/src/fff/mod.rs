//! The FastFeedForward op: a forest of binary trees of neurons, each input row walking every tree from
//! its root to a leaf. See `docs/FFF.md` for the semantics.
//!
//! Three ways to compute it, chosen per call by [`fff_forward`]: GEMMs over every neuron for dense
//! layers (depth 0, [`gemm`]), GEMMs with the neurons off each row's paths masked out for wide shallow
//! forests, and the conditional tree kernel ([`tree`]) for the rest. Every one takes weights of any
//! [`Element`] type: the tree kernel reads them as stored, the GEMMs read f32 and widen other types
//! into scratch first. [`reference`] holds the definition, for tests and statistics.
//!
//! Storage contract, independent of that choice: any layer may hold its `W_in` and `W_out` as any
//! element type, at any row count. Only the tree kernel gains from narrower types, so the compiler
//! stores bf16 for conditional (depth > 0) layers and keeps dense ones f32.

pub mod gemm;
pub mod reference;
pub mod tree;

use crate::activation::Activation;
#[cfg(doc)]
use crate::element::Bf16;
use crate::element::Element;

pub use gemm::{fff_dense, fff_dense_panels, fff_masked_gemm};
pub use reference::{fff_leaves, fff_reference};
/// The deepest tree the kernels walk (node numbers, and the virtual child below a leaf, fit in `u32`).
pub use tree::plan::MAX_DEPTH;
pub use tree::{fff_tree, fff_tree_with};

/// Which child a node's logit selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Branch {
    /// Right child iff `logit > 0`.
    Greater,
    /// Right child iff `logit >= 0`.
    GreaterOrEqual,
}

impl Branch {
    #[inline]
    pub fn goes_right(self, logit: f32) -> bool {
        match self {
            Branch::Greater => logit > 0.0,
            Branch::GreaterOrEqual => logit >= 0.0,
        }
    }
}

/// The shape of one FastFeedForward op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FffShape {
    pub d_in: usize,
    pub d_out: usize,
    pub depth: usize,
    pub trees: usize,
}

impl FffShape {
    /// Nodes per tree: `2^(depth+1) - 1`.
    pub fn nodes_per_tree(&self) -> usize {
        (1usize << (self.depth + 1)) - 1
    }

    /// Rows of `w_in` and `w_out`: `trees * nodes_per_tree`.
    pub fn total_nodes(&self) -> usize {
        self.trees * self.nodes_per_tree()
    }
}

/// Weights of one FastFeedForward op, node-major: node `t*N + i` owns `w_in[(t*N+i)*d_in ..][..d_in]` and
/// `w_out[(t*N+i)*d_out ..][..d_out]`. `W_in` and `W_out` are stored as `E` (f32 or [`Bf16`]); biases
/// are f32.
#[derive(Clone, Copy, Debug)]
pub struct FffWeights<'a, E = f32> {
    pub w_in: &'a [E],
    pub b_in: Option<&'a [f32]>,
    pub w_out: &'a [E],
    pub b_out: Option<&'a [f32]>,
}

/// One FastFeedForward op: its shape, activation, branch rule and weights.
#[derive(Clone, Copy, Debug)]
pub struct FffLayer<'a, E = f32> {
    pub shape: FffShape,
    pub act: Activation,
    pub branch: Branch,
    pub w: FffWeights<'a, E>,
}

/// Computes `rows` rows (`x`: `rows x d_in`, `out`: `rows x d_out`) with the kernel that suits the
/// shape and row count: GEMMs for depth 0 and for wide shallow forests at many rows, the conditional
/// tree kernel otherwise.
pub fn fff_forward<E: Element>(layer: &FffLayer<E>, x: &[f32], rows: usize, out: &mut [f32]) {
    if uses_tree_kernel(layer.shape, rows) {
        return fff_tree(layer, x, rows, out);
    }
    gemm::with_f32_weights(layer, |wide| {
        if wide.shape.depth == 0 {
            fff_dense(wide, x, rows, out)
        } else {
            fff_masked_gemm(wide, x, rows, out)
        }
    })
}

/// Whether [`fff_forward`] walks the trees for this shape and row count (rather than running GEMMs).
/// A kernel choice, not a storage rule: every choice takes every element type.
pub(crate) fn uses_tree_kernel(shape: FffShape, rows: usize) -> bool {
    let FffShape { depth, trees, .. } = shape;
    depth > 0
        && (rows < MASKED_GEMM_MIN_ROWS
            || trees * (depth + 1) * MASKED_GEMM_FRACTION < shape.total_nodes())
}

/// Forests that use at least 1/this of their neurons per row (wide and shallow: 1536x1, 512x2, 256x3
/// at width 768) run as GEMMs over all neurons with the unvisited ones masked out: dense arithmetic
/// wastes less there than walking thousands of short paths one neuron at a time. 128x4 (1/6.2)
/// measured faster walking its trees, on one thread and on two (docs/PERFORMANCE.md).
pub const MASKED_GEMM_FRACTION: usize = 5;

/// Below this many rows a GEMM only streams weights it mostly does not need: walk the trees instead.
pub const MASKED_GEMM_MIN_ROWS: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::element::{to_bf16, Bf16};

    /// bf16 layers through every kernel choice against the reference on the same (widened) weights.
    #[test]
    fn every_kernel_choice_agrees_with_the_reference() {
        let mut s = 9u32;
        let mut vec = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
                })
                .collect()
        };
        // Depth 0 (GEMMs), a wide shallow forest at many rows (masked GEMM), and trees.
        for &(rows, d_in, d_out, depth, trees) in &[
            (5, 37, 20, 0, 9),
            (100, 16, 24, 1, 64),
            (3, 37, 100, 3, 2),
            (300, 100, 37, 6, 1),
        ] {
            let shape = FffShape {
                d_in,
                d_out,
                depth,
                trees,
            };
            let total = shape.total_nodes();
            let w_in: Vec<Bf16> = to_bf16(&vec(total * d_in));
            let w_out: Vec<Bf16> = to_bf16(&vec(total * d_out));
            let (b_in, b_out) = (vec(total), vec(d_out));
            let x = vec(rows * d_in);
            let layer = FffLayer {
                shape,
                act: Activation::GeluErf,
                branch: Branch::Greater,
                w: FffWeights {
                    w_in: &w_in,
                    b_in: Some(&b_in),
                    w_out: &w_out,
                    b_out: Some(&b_out),
                },
            };
            let (mut want, mut got) = (vec![0.0; rows * d_out], vec![f32::NAN; rows * d_out]);
            fff_reference(&layer, &x, rows, &mut want);
            fff_forward(&layer, &x, rows, &mut got);
            for (g, e) in got.iter().zip(&want) {
                assert!(
                    (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
                    "{shape:?}: {g} vs {e}"
                );
            }
        }
    }
}
