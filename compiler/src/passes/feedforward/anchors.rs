//! Where feedforward candidates are found: pairs of constant weight matrices read by the ops that every
//! exported feedforward block has, whatever its form.
//!
//! ```text
//! projection pair (dense and masking forms):      gather group (gather form):
//!
//!   x ─ MatMul/Gemm(W_in) ─ … ─ MatMul/Gemm(W_out) ─ y   x ─┬─ … Gather(W_in, node) … ─┐
//!        (no MatMul, Softmax, LayerNorm or Reduce           └─ … Gather(W_out, nodes) ─ … ─ y
//!         between the two)
//! ```

use std::collections::{HashMap, HashSet};

use fff_runtime::op::Op;
use fff_runtime::DType;
use petgraph::stable_graph::NodeIndex;

use crate::ir::{Graph, OutletId};

/// A candidate block: the nodes that read its weights, its weights and where its output starts.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub anchor: NodeIndex,
    pub form: &'static str,
    pub consumers: Vec<NodeIndex>,
    /// The two weight matrices, in the order most likely to be (W_in, W_out).
    pub weights: (OutletId, OutletId),
    pub y: OutletId,
}

/// A MatMul or Gemm whose second operand is a constant 2-D float matrix: (data input, weight, width of
/// the data it reads).
fn projection(g: &Graph, n: NodeIndex) -> Option<(OutletId, OutletId, i64)> {
    let ins = g.inputs_of(n);
    let (x, w) = (
        ins.first().copied().flatten()?,
        ins.get(1).copied().flatten()?,
    );
    let t = g.const_value(w)?;
    if t.dtype() != DType::F32 || t.shape().len() != 2 || g.const_value(x).is_some() {
        return None;
    }
    let (rows, cols) = (t.shape()[0] as i64, t.shape()[1] as i64);
    match g.op(n)? {
        Op::MatMul => Some((x, w, rows)),
        Op::Gemm {
            trans_a: false,
            trans_b,
            ..
        } => Some((x, w, if *trans_b { cols } else { rows })),
        _ => None,
    }
}

fn output_width(g: &Graph, n: NodeIndex) -> Option<i64> {
    let (_, w, _) = projection(g, n)?;
    let s = g.const_value(w)?.shape().to_vec();
    Some(match g.op(n)? {
        Op::Gemm { trans_b: true, .. } => s[0],
        _ => s[1],
    } as i64)
}

/// Ops that never sit between the two projections of a feedforward block.
fn blocks_pairing(op: &Op) -> bool {
    matches!(
        op,
        Op::MatMul
            | Op::Gemm { .. }
            | Op::Softmax { .. }
            | Op::LogSoftmax { .. }
            | Op::LayerNorm { .. }
            | Op::Reduce { .. }
    )
}

/// Whether the search for a projection's partner walks on through `n` to its inputs: not through
/// another projection, a shape read (a shape is not data), an op that never sits inside a block, a
/// model input or a constant.
fn passes_through(g: &Graph, n: NodeIndex) -> bool {
    match g.op(n) {
        Some(Op::Shape { .. } | Op::Size) => false,
        Some(op) => !blocks_pairing(op) && projection(g, n).is_none(),
        None => false,
    }
}

/// The data inputs (not constants) of `n`.
fn data_inputs(g: &Graph, n: NodeIndex) -> impl Iterator<Item = NodeIndex> + '_ {
    g.inputs_of(n)
        .into_iter()
        .flatten()
        .filter(|i| g.const_value(*i).is_none())
        .map(|i| i.node)
}

/// Finds projection pairs: for a projection, the nearest projection upstream (the latest in topological
/// order) whose output width is the width it reads, with nothing that could not be part of a
/// feedforward block on the way. Answers are kept per node and width, so a graph of many blocks is
/// searched once in all rather than once per projection: a residual stream would otherwise lead every
/// search back through every block before it.
///
/// Kept answers stay right while the graph is rewritten in topological order: a rewrite changes the
/// inputs of nodes downstream of the block it replaces, and only nodes upstream of a projection already
/// asked about have answers.
#[derive(Default)]
pub struct Pairing {
    /// The nearest projection of output width `k` at or upstream of a node, searching as above.
    nearest: HashMap<(NodeIndex, i64), Option<NodeIndex>>,
    /// Nodes whose answer has been worked out, for [`Pairing::visits`].
    visits: usize,
}

impl Pairing {
    /// How many node answers have been worked out so far: the search's work, which grows with the
    /// graph's size and not with the number of projections times the graph's size.
    pub fn visits(&self) -> usize {
        self.visits
    }

    /// The projection pair anchored at `p_out`, if it is a projection with a partner upstream.
    pub fn candidate(
        &mut self,
        g: &Graph,
        pos: &HashMap<NodeIndex, usize>,
        p_out: NodeIndex,
    ) -> Option<Candidate> {
        let (data, w_out, k) = projection(g, p_out)?;
        let p_in = self.nearest(g, pos, data.node, k)?;
        let (_, w_in, _) = projection(g, p_in)?;
        let form = if has_masking(g, pos, data.node, p_in) {
            "masking"
        } else {
            "dense"
        };
        Some(Candidate {
            anchor: p_out,
            form,
            consumers: vec![p_in, p_out],
            weights: (w_in, w_out),
            y: OutletId::new(p_out, 0),
        })
    }

    /// The nearest projection of output width `k` at or upstream of `start`: worked out after its
    /// inputs' answers, with an explicit stack (a deep graph would overflow the call stack).
    fn nearest(
        &mut self,
        g: &Graph,
        pos: &HashMap<NodeIndex, usize>,
        start: NodeIndex,
        k: i64,
    ) -> Option<NodeIndex> {
        let mut stack = vec![(start, false)];
        while let Some((n, inputs_done)) = stack.pop() {
            if self.nearest.contains_key(&(n, k)) {
                continue;
            }
            if !passes_through(g, n) {
                let own =
                    (projection(g, n).is_some() && output_width(g, n) == Some(k)).then_some(n);
                self.nearest.insert((n, k), own);
                self.visits += 1;
                continue;
            }
            if inputs_done {
                let best = data_inputs(g, n)
                    .filter_map(|i| self.nearest[&(i, k)])
                    .max_by_key(|p| pos[p]);
                self.nearest.insert((n, k), best);
                self.visits += 1;
            } else {
                stack.push((n, true));
                stack.extend(
                    data_inputs(g, n)
                        .filter(|i| !self.nearest.contains_key(&(*i, k)))
                        .map(|i| (i, false)),
                );
            }
        }
        self.nearest[&(start, k)]
    }
}

/// Whether the nodes between a pair's input projection and `data` (what its output projection reads)
/// build a mask, as the masking form does.
fn has_masking(
    g: &Graph,
    pos: &HashMap<NodeIndex, usize>,
    data: NodeIndex,
    p_in: NodeIndex,
) -> bool {
    let mut stack = vec![data];
    let mut seen = HashSet::new();
    while let Some(n) = stack.pop() {
        if pos[&n] <= pos[&p_in] || !seen.insert(n) {
            continue;
        }
        if matches!(
            g.op(n),
            Some(Op::ScatterElements { .. } | Op::GatherElements { .. })
        ) {
            return true;
        }
        if passes_through(g, n) {
            stack.extend(data_inputs(g, n));
        }
    }
    false
}

/// Gather groups: constant 2-D float matrices whose rows are gathered with computed indices, paired by
/// row count; the block output starts at the earliest node downstream of every gather of both.
fn gather_groups(
    g: &Graph,
    order: &[NodeIndex],
    pos: &HashMap<NodeIndex, usize>,
) -> Vec<Candidate> {
    let mut groups: Vec<(OutletId, Vec<NodeIndex>)> = Vec::new();
    for &n in order {
        let Some(Op::Gather { axis: 0 }) = g.op(n) else {
            continue;
        };
        let ins = g.inputs_of(n);
        let (Some(Some(data)), Some(Some(idx))) = (ins.first(), ins.get(1)) else {
            continue;
        };
        let Some(t) = g.const_value(*data) else {
            continue;
        };
        if t.dtype() != DType::F32 || t.shape().len() != 2 || g.const_value(*idx).is_some() {
            continue;
        }
        match groups.iter_mut().find(|(w, _)| w == data) {
            Some((_, v)) => v.push(n),
            None => groups.push((*data, vec![n])),
        }
    }
    let mut out = Vec::new();
    for (i, (wa, ga)) in groups.iter().enumerate() {
        for (wb, gb) in groups.iter().skip(i + 1) {
            if g.const_value(*wa).map(|t| t.shape()[0]) != g.const_value(*wb).map(|t| t.shape()[0])
            {
                continue;
            }
            let consumers: Vec<NodeIndex> = ga.iter().chain(gb).copied().collect();
            let Some(y) = earliest_common_descendant(g, &consumers, order, pos) else {
                continue;
            };
            // The matrix gathered at more places is read once per level: W_in.
            let weights = if ga.len() >= gb.len() {
                (*wa, *wb)
            } else {
                (*wb, *wa)
            };
            out.push(Candidate {
                anchor: y,
                form: "gather",
                consumers,
                weights,
                y: OutletId::new(y, 0),
            });
        }
    }
    out
}

fn earliest_common_descendant(
    g: &Graph,
    from: &[NodeIndex],
    order: &[NodeIndex],
    pos: &HashMap<NodeIndex, usize>,
) -> Option<NodeIndex> {
    let start = from.iter().map(|n| pos[n]).min()?;
    let mut reach: HashMap<NodeIndex, usize> = HashMap::new(); // how many of `from` reach each node
    for &f in from {
        let mut stack = vec![f];
        let mut seen = HashSet::new();
        while let Some(n) = stack.pop() {
            if seen.insert(n) {
                *reach.entry(n).or_default() += 1;
                stack.extend(g.readers(n));
            }
        }
    }
    order[start..]
        .iter()
        .copied()
        .find(|n| reach.get(n) == Some(&from.len()))
}

/// The gather-group candidates, by the node their output starts at, each node's in the order found.
pub fn gather_candidates(
    g: &Graph,
    order: &[NodeIndex],
    pos: &HashMap<NodeIndex, usize>,
) -> HashMap<NodeIndex, Vec<Candidate>> {
    let mut by_output: HashMap<NodeIndex, Vec<Candidate>> = HashMap::new();
    for c in gather_groups(g, order, pos) {
        by_output.entry(c.y.node).or_default().push(c);
    }
    by_output
}
