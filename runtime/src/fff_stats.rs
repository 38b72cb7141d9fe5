//! Usage statistics of FastFeedForward nodes: which leaf of each tree the rows of a call reach. A tree
//! whose rows crowd into a few leaves uses few of its neurons, and its conditional execution saves less
//! than its depth promises; `fffrun --fff-stats` prints these per node.

use fff_ops::activation::Activation;
use fff_ops::fff::{fff_leaves, FffLayer, FffShape, FffWeights};
use serde::Serialize;

use crate::error::Result;
use crate::model::{Model, Outputs};
use crate::opset::{FastFeedForward, Op, WeightLayout};
use crate::plan::PlanNode;
use crate::tensor::{Tensor, TensorView};

/// How the rows of a call used one FastFeedForward node.
#[derive(Clone, Debug, PartialEq)]
pub struct FffUsage {
    pub node: String,
    pub depth: usize,
    pub trees: usize,
    pub rows: u64,
    /// Rows that reached each leaf, per tree (`2^depth` counts each).
    pub leaf_rows: Vec<Vec<u64>>,
}

/// [`FffUsage`] summed up, as `fffrun --fff-stats` prints it (one JSON line per node).
#[derive(Clone, Debug, Serialize)]
pub struct FffSummary {
    pub node: String,
    pub rows: u64,
    pub trees: usize,
    pub depth: usize,
    /// Neurons each row computes: one per level of every tree.
    pub neurons_per_row: usize,
    pub neurons: usize,
    /// Leaves reached by at least one row, over all trees, and how many leaves there are.
    pub leaves_reached: usize,
    pub leaves: usize,
    /// The largest share of a tree's rows that one leaf received.
    pub busiest_leaf_share: f64,
    /// Entropy of the rows' leaves, in bits, averaged over the trees; `depth` bits when rows spread
    /// evenly over all leaves.
    pub leaf_entropy_bits: f64,
}

impl FffUsage {
    pub fn summary(&self) -> FffSummary {
        let per_tree = 1usize << self.depth;
        let mut busiest = 0.0f64;
        let mut entropy = 0.0f64;
        for counts in &self.leaf_rows {
            let total: u64 = counts.iter().sum();
            if total == 0 {
                continue;
            }
            for &c in counts.iter().filter(|&&c| c > 0) {
                let p = c as f64 / total as f64;
                busiest = busiest.max(p);
                entropy -= p * p.log2();
            }
        }
        FffSummary {
            node: self.node.clone(),
            rows: self.rows,
            trees: self.trees,
            depth: self.depth,
            neurons_per_row: self.trees * (self.depth + 1),
            neurons: self.trees * ((per_tree << 1) - 1),
            leaves_reached: self
                .leaf_rows
                .iter()
                .map(|c| c.iter().filter(|&&n| n > 0).count())
                .sum(),
            leaves: self.trees * per_tree,
            busiest_leaf_share: busiest,
            leaf_entropy_bits: entropy / self.trees.max(1) as f64,
        }
    }
}

/// Runs the model once and counts, for every FastFeedForward node, the leaf each row reaches in each
/// tree, in the plan's node order. Nodes whose inputs are not what the op reads (the run then fails on
/// them) are not counted.
pub fn run_with_fff_usage(
    model: &Model,
    inputs: Vec<(String, Tensor)>,
) -> Result<(Outputs, Vec<FffUsage>)> {
    // Each node runs once per call, in plan order, so the observations come out one per node, ordered.
    let mut usage = Vec::new();
    let outputs = model.run_observed(inputs, &mut |node, views| {
        usage.extend(count_leaves(node, views));
    })?;
    Ok((outputs, usage))
}

/// The leaves the rows of one call reach at a FastFeedForward node; `None` for other nodes, or when
/// the inputs do not fit the op.
fn count_leaves(node: &PlanNode, views: &[Option<TensorView>]) -> Option<FffUsage> {
    let Op::FastFeedForward { depth, trees, .. } = node.op else {
        return None;
    };
    let leaves = row_leaves(node, views)?;
    let mut leaf_rows = vec![vec![0u64; 1 << depth]; trees];
    for row in leaves.chunks_exact(trees) {
        for (t, &leaf) in row.iter().enumerate() {
            leaf_rows[t][leaf as usize] += 1;
        }
    }
    Some(FffUsage {
        node: node.name.clone(),
        depth,
        trees,
        rows: (leaves.len() / trees) as u64,
        leaf_rows,
    })
}

/// The leaf each row of a call reaches in each tree of a FastFeedForward node (`leaves[r * trees +
/// t]`, as [`fff_leaves`] computes them from the node's inputs `views`); `None` for other nodes, or
/// when the inputs do not fit the op.
pub fn row_leaves(node: &PlanNode, views: &[Option<TensorView>]) -> Option<Vec<u32>> {
    let Op::FastFeedForward {
        depth,
        trees,
        branch,
        ..
    } = node.op
    else {
        return None;
    };
    if depth > FastFeedForward::MAX_DEPTH || trees == 0 {
        return None;
    }
    let input = |slot: usize| views.get(slot).and_then(Option::as_ref);
    let x = input(FastFeedForward::X)?.f32().ok()?;
    // A layer without inputs to route on (which the evaluator refuses) has no statistics.
    let d_in = *x.shape().last().filter(|&&d| d > 0)?;
    let x: Vec<f32> = x.iter().copied().collect();
    let rows = x.len().checked_div(d_in).unwrap_or(0);
    let w_in = input(FastFeedForward::W_IN)?;
    // Panels (depth 0 only) hold the same weights in another order; one leaf per tree needs none.
    if depth > 0 && FastFeedForward::weight_layout(w_in.shape()) != Some(WeightLayout::NodeMajor) {
        return None;
    }
    let w_in = floats(w_in)?;
    let b_in = match input(FastFeedForward::B_IN) {
        Some(b) => Some(floats(b)?),
        None => None,
    };
    let shape = FffShape {
        d_in,
        d_out: 0,
        depth,
        trees,
    };
    let nodes = trees.checked_mul(shape.nodes_per_tree())?;
    if w_in.len() != nodes.checked_mul(d_in)? || b_in.as_ref().is_some_and(|b| b.len() != nodes) {
        return None;
    }
    let layer = FffLayer {
        shape,
        act: Activation::Relu,
        branch: branch.kernel(),
        w: FffWeights {
            w_in: &w_in,
            b_in: b_in.as_deref(),
            w_out: &[],
            b_out: None,
        },
    };
    let mut leaves = vec![0u32; rows.checked_mul(trees)?];
    fff_leaves(&layer, &x, rows, &mut leaves);
    Some(leaves)
}

/// A float32 or bfloat16 tensor's values as f32.
fn floats(t: &TensorView) -> Option<Vec<f32>> {
    match t {
        TensorView::F32(a) => Some(a.iter().copied().collect()),
        TensorView::BF16(a) => Some(a.iter().map(|v| v.to_f32()).collect()),
        _ => None,
    }
}
