//! Weight packing, a lowering run once after the rewrites have settled.
//!
//! Guarantees: every
//!
//! ```text
//! Linear(X, W, B?, R?)
//!   W: float32 constant [k, n], with n at least 64 and the last panel's padding at most 1/8 of n
//! ```
//!
//! is `PackedLinear { n }(X, Wp, B?, R?)`, where `Wp [ceil(n / 64), k, 64]` holds W's columns in panels
//! of 64 (`fff_ops::panels`, the last zero-padded), the layout in which the GEMM reads weights in
//! place; and every dense feedforward
//!
//! ```text
//! FastFeedForward { depth: 0, trees }(X, W_in, B_in?, W_out, B_out?)
//!   W_in: float32 constant [trees, d_in], W_out: float32 constant [trees, d_out]
//!   B_in: absent or a float32 constant [trees]; B_out: absent or a float32 constant [d_out]
//!   trees and d_out at least 64, each padded to a multiple of 64 by at most 1/8
//! ```
//!
//! is `FastFeedForward { depth: 0, trees: t }`, `t` being `trees` rounded up to a multiple of 64: the
//! `t - trees` neurons added have zero input weights, bias and output weights, so they add exact
//! zeros. It reads W_in as the panels of its transpose, `[t / 64, d_in, 64]`, and W_out as its
//! panels, `[o / 64, t, 64]`, `o` being `d_out` rounded up likewise (whole panels, so the shapes say
//! the sizes). Where `o > d_out` the op writes `o` columns, the last ones zeros (zero weights and
//! bias), and `Slice(_, [0], [d_out], [-1])` gives the `d_out` the graph expects. Results are the
//! same tensors, up to the order in which the GEMM sums. A weight read by several nodes is packed once.
//! Narrower weights stay as they are: padding them to a whole panel would cost more bytes than
//! packing saves.

use std::collections::HashMap;
use std::sync::Arc;

use fff_ops::panels::{pack_panels, panel_count, PANEL_COLS};
use fff_runtime::op::{FastFeedForward, Linear, Op};
use fff_runtime::Tensor;
use ndarray::{ArrayD, IxDyn};

use crate::error::Result;
use crate::ir::{Dim, Graph, OutletId};
use crate::Options;

/// Which way a constant is packed.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum As {
    /// `[k, n]` as its panels.
    Panels,
    /// `[k, n]` with zero rows added up to this many rows, as its panels.
    PanelsOfRows(usize),
    /// `[n, k]` as the panels of its transpose.
    TransposedPanels,
}

pub fn run(g: &mut Graph, _: &Options) -> Result<bool> {
    let mut packed: HashMap<(OutletId, As), OutletId> = HashMap::new();
    let mut changed = false;
    for node in g.topo_order() {
        let mut inputs = g.inputs_of(node);
        let op = match g.op(node) {
            Some(Op::Linear) => {
                let Some((k, n)) = inputs[Linear::W].and_then(|w| f32_matrix(g, w)) else {
                    continue;
                };
                if !worth_packing(n) {
                    continue;
                }
                inputs[Linear::W] =
                    Some(pack(g, &mut packed, inputs[Linear::W], As::Panels, (k, n)));
                Op::PackedLinear { n }
            }
            Some(Op::FastFeedForward {
                depth: 0,
                trees,
                activation,
                branch,
            }) => {
                let (trees, activation, branch) = (*trees, *activation, *branch);
                let (Some((rows_in, d_in)), Some((rows_out, d_out))) = (
                    inputs[FastFeedForward::W_IN].and_then(|w| f32_matrix(g, w)),
                    inputs[FastFeedForward::W_OUT].and_then(|w| f32_matrix(g, w)),
                ) else {
                    continue;
                };
                if rows_in != trees
                    || rows_out != trees
                    || !worth_packing(trees)
                    || !worth_packing(d_out)
                {
                    continue;
                }
                let padded = panel_count(trees) * PANEL_COLS;
                let wide = panel_count(d_out) * PANEL_COLS;
                // Both biases are checked before either is padded, so nothing is added for a node
                // left as it is.
                let paddable = |b: Option<OutletId>, len: usize, to: usize| {
                    len == to || b.is_none_or(|b| f32_vector_len(g, b) == Some(len))
                };
                if !paddable(inputs[FastFeedForward::B_IN], trees, padded)
                    || !paddable(inputs[FastFeedForward::B_OUT], d_out, wide)
                {
                    continue;
                }
                inputs[FastFeedForward::B_IN] =
                    padded_vector(g, inputs[FastFeedForward::B_IN], trees, padded);
                inputs[FastFeedForward::B_OUT] =
                    padded_vector(g, inputs[FastFeedForward::B_OUT], d_out, wide);
                let (w_in, w_out) = (
                    inputs[FastFeedForward::W_IN],
                    inputs[FastFeedForward::W_OUT],
                );
                // The transpose's last panel holds the added neurons' zero columns.
                inputs[FastFeedForward::W_IN] = Some(pack(
                    g,
                    &mut packed,
                    w_in,
                    As::TransposedPanels,
                    (trees, d_in),
                ));
                // The last panel holds the added output columns' zeros.
                let rows = As::PanelsOfRows(padded);
                inputs[FastFeedForward::W_OUT] =
                    Some(pack(g, &mut packed, w_out, rows, (trees, d_out)));
                let op = Op::FastFeedForward {
                    depth: 0,
                    trees: padded,
                    activation,
                    branch,
                };
                if wide != d_out {
                    narrowed(g, node, op, &inputs, d_out, wide);
                    changed = true;
                    continue;
                }
                op
            }
            _ => continue,
        };
        let name = g.node(node).name.clone();
        g.replace_with_op(OutletId::new(node, 0), &name, op, &inputs);
        changed = true;
    }
    if changed {
        crate::passes::dead_code::run(g)?;
    }
    Ok(changed)
}

/// The shape of `w` if it is a float32 constant matrix.
fn f32_matrix(g: &Graph, w: OutletId) -> Option<(usize, usize)> {
    match g.const_value(w).map(Arc::as_ref) {
        Some(Tensor::F32(t)) => match *t.shape() {
            [r, c] => Some((r, c)),
            _ => None,
        },
        _ => None,
    }
}

/// The packed constant for matrix `w` (`rows x cols`, a float32 constant), made on first use.
fn pack(
    g: &mut Graph,
    done: &mut HashMap<(OutletId, As), OutletId>,
    w: Option<OutletId>,
    how: As,
    (rows, cols): (usize, usize),
) -> OutletId {
    let w = w.expect("checked by the caller");
    if let Some(&p) = done.get(&(w, how)) {
        return p;
    }
    let Some(Tensor::F32(t)) = g.const_value(w).map(Arc::as_ref) else {
        unreachable!("checked by the caller")
    };
    let mut values: Vec<f32> = match how {
        As::Panels | As::PanelsOfRows(_) => t.iter().copied().collect(),
        As::TransposedPanels => t.t().iter().copied().collect(),
    };
    let (k, n) = match how {
        As::Panels => (rows, cols),
        As::PanelsOfRows(k) => {
            values.resize(k * cols, 0.0);
            (k, cols)
        }
        As::TransposedPanels => (cols, rows),
    };
    let data = pack_panels(&values, k, n);
    let shape = IxDyn(&[panel_count(n), k, PANEL_COLS]);
    let packed = Tensor::F32(ArrayD::from_shape_vec(shape, data).expect("panel length"));
    let name = format!("{}/panels", g.node(w.node).name);
    let p = g.add_const(&name, packed);
    done.insert((w, how), p);
    p
}

/// Replaces `node` by `op` on `inputs`, whose output is `wide` columns wide, followed by the slice of
/// its first `d_out` columns, which takes `node`'s place.
fn narrowed(
    g: &mut Graph,
    node: petgraph::stable_graph::NodeIndex,
    op: Op,
    inputs: &[Option<OutletId>],
    d_out: usize,
    wide: usize,
) {
    let old = OutletId::new(node, 0);
    let name = g.node(node).name.clone();
    let fact = g.fact(old).clone();
    let mut wide_fact = fact.clone();
    if let Some(last) = wide_fact.shape.as_mut().and_then(|s| s.last_mut()) {
        *last = Dim::Known(wide as i64);
    }
    let ff = g.add_op(&name, op, inputs, 1);
    g.set_fact(OutletId::new(ff, 0), wide_fact);
    let int = |g: &mut Graph, what: &str, v: i64| {
        let t = Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[1]), vec![v]).expect("one value"));
        g.add_const(&format!("{name}/{what}"), t)
    };
    let (start, end, axis) = (
        int(g, "start", 0),
        int(g, "end", d_out as i64),
        int(g, "axis", -1),
    );
    let slice_inputs = [
        Some(OutletId::new(ff, 0)),
        Some(start),
        Some(end),
        Some(axis),
    ];
    let slice = g.add_op(&format!("{name}/columns"), Op::Slice, &slice_inputs, 1);
    g.set_fact(OutletId::new(slice, 0), fact);
    g.replace_uses(old, OutletId::new(slice, 0));
}

/// The length of `b` if it is a float32 constant vector.
fn f32_vector_len(g: &Graph, b: OutletId) -> Option<usize> {
    match g.const_value(b).map(Arc::as_ref) {
        Some(Tensor::F32(t)) => match *t.shape() {
            [n] => Some(n),
            _ => None,
        },
        _ => None,
    }
}

/// The bias `b` (absent, or a float32 constant vector of length `len`) with zeros added up to
/// `padded`: a new constant where that adds any.
fn padded_vector(
    g: &mut Graph,
    b: Option<OutletId>,
    len: usize,
    padded: usize,
) -> Option<OutletId> {
    let b = b?;
    if len == padded {
        return Some(b);
    }
    let Some(Tensor::F32(t)) = g.const_value(b).map(Arc::as_ref) else {
        unreachable!("checked by the caller")
    };
    let mut values: Vec<f32> = t.iter().copied().collect();
    values.resize(padded, 0.0);
    let padded = Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[padded]), values).expect("length"));
    let name = format!("{}/padded", g.node(b.node).name);
    Some(g.add_const(&name, padded))
}

/// At least one whole panel, and padding of at most 1/8 of the columns.
fn worth_packing(n: usize) -> bool {
    n >= PANEL_COLS && panel_count(n) * PANEL_COLS * 8 <= n * 9
}

#[cfg(test)]
mod tests {
    use super::worth_packing;

    #[test]
    fn packs_wide_weights_whose_padding_is_small() {
        assert!(worth_packing(64) && worth_packing(768) && worth_packing(3072));
        assert!(worth_packing(500)); // 512 columns stored
        assert!(!worth_packing(63) && !worth_packing(65) && !worth_packing(100));
    }
}
