//! Small queries the rewrite patterns share.

use crate::ir::{Graph, OutletId};

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
