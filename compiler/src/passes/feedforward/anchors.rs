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

/// Projection pairs: for each projection, the nearest projection upstream whose output width is the
/// width it reads, with nothing that could not be part of a feedforward block on the way.
fn projection_pairs(g: &Graph, order: &[NodeIndex]) -> Vec<Candidate> {
    let mut out = Vec::new();
    for &p_out in order {
        let Some((data, w_out, k)) = projection(g, p_out) else {
            continue;
        };
        let mut stack = vec![data.node];
        let mut seen = HashSet::new();
        let mut found = None;
        while let Some(n) = stack.pop() {
            if !seen.insert(n) || seen.len() > 4096 {
                continue;
            }
            if let Some((_, w_in, _)) = projection(g, n) {
                if output_width(g, n) == Some(k) {
                    found = Some((n, w_in));
                }
                continue; // never look past another projection
            }
            match g.op(n) {
                // A shape is not data: the values behind it are not part of the block's arithmetic.
                Some(Op::Shape { .. } | Op::Size) => continue,
                Some(op) if blocks_pairing(op) => continue,
                Some(_) => stack.extend(
                    g.inputs_of(n)
                        .into_iter()
                        .flatten()
                        .filter(|i| g.const_value(*i).is_none())
                        .map(|i| i.node),
                ),
                None => continue,
            }
        }
        if let Some((p_in, w_in)) = found {
            let form = if has_masking(g, &seen) {
                "masking"
            } else {
                "dense"
            };
            out.push(Candidate {
                anchor: p_out,
                form,
                consumers: vec![p_in, p_out],
                weights: (w_in, w_out),
                y: OutletId::new(p_out, 0),
            });
        }
    }
    out
}

fn has_masking(g: &Graph, nodes: &HashSet<NodeIndex>) -> bool {
    nodes.iter().any(|&n| {
        matches!(
            g.op(n),
            Some(Op::ScatterElements { .. } | Op::GatherElements { .. })
        )
    })
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

/// Every candidate, in topological order of their outputs.
pub fn find(g: &Graph, order: &[NodeIndex], pos: &HashMap<NodeIndex, usize>) -> Vec<Candidate> {
    let mut all = projection_pairs(g, order);
    all.extend(gather_groups(g, order, pos));
    all.sort_by_key(|c| pos[&c.y.node]);
    all
}
