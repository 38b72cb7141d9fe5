//! Small queries the rewrite patterns share.

use fff_runtime::op::{BinaryOp, Op};
use petgraph::stable_graph::NodeIndex;

use crate::ir::{Graph, OutletId};

/// The two operands of `node` when it is the binary op `op`.
pub fn binary_operands(g: &Graph, node: NodeIndex, op: BinaryOp) -> Option<(OutletId, OutletId)> {
    if g.op(node) != Some(&Op::Binary(op)) {
        return None;
    }
    match g.inputs_of(node)[..] {
        [Some(a), Some(b)] => Some((a, b)),
        _ => None,
    }
}

/// `o` itself if it is an op output that exactly one reader takes and the graph does not output, so a
/// fusion may swallow it.
pub fn read_once(g: &Graph, o: OutletId) -> Option<OutletId> {
    (g.op(o.node).is_some() && g.consumers(o).len() == 1 && !g.is_output(o)).then_some(o)
}

/// The value of a float constant with one element and rank at most `max_rank` (the bound keeps a
/// broadcast with it from growing the other operand's rank).
pub fn scalar(g: &Graph, o: OutletId, max_rank: usize) -> Option<f32> {
    let t = g.const_value(o)?;
    let v = t.view();
    let a = v.f32().ok()?;
    (a.len() == 1 && a.ndim() <= max_rank).then(|| a.iter().copied().next().unwrap_or(0.0))
}

/// Op inputs without their trailing absent ones (optional slots after the last one given).
pub fn trimmed(mut inputs: Vec<Option<OutletId>>) -> Vec<Option<OutletId>> {
    while inputs.last() == Some(&None) {
        inputs.pop();
    }
    inputs
}
