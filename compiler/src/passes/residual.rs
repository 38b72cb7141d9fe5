//! Residual fusion.
//!
//! Guarantees: every
//!
//! ```text
//! Add(Linear(X, W, B?), R)        (or Add(R, Linear(X, W, B?)))
//!   the Linear without a residual yet, read by nothing but this Add (and not a graph output)
//!   R: f32
//! ```
//!
//! is one `Linear(X, W, B?, R)` node. Linear adds R with the Add's broadcasting, so the result is the
//! same tensor whatever the shapes; when R has the product's shape (a residual connection) the
//! product is accumulated onto it, in its own buffer when nothing else reads it, instead of being
//! written and then read again by the Add.

use fff_runtime::op::{BinaryOp, Linear, Op};
use fff_runtime::DType;

use super::pattern::binary_operands;
use crate::error::Result;
use crate::ir::{Graph, OutletId};

pub fn run(g: &mut Graph) -> Result<bool> {
    let mut changed = false;
    for add in g.topo_order() {
        let Some((a, b)) = binary_operands(g, add, BinaryOp::Add) else {
            continue;
        };
        let sum = OutletId::new(add, 0);
        let Some((linear, residual)) = matched(g, a, b).or_else(|| matched(g, b, a)) else {
            continue;
        };
        let mut operands = g.inputs_of(linear.node);
        operands.resize(Linear::R + 1, None);
        operands[Linear::R] = Some(residual);
        let name = format!("{}/residual", g.node(add).name);
        g.replace_with_op(sum, &name, Op::Linear, &operands);
        changed = true;
    }
    Ok(changed)
}

/// `(linear, residual)` when `linear` is a Linear without residual read only by the Add, and
/// `residual` an f32 value.
fn matched(g: &Graph, linear: OutletId, residual: OutletId) -> Option<(OutletId, OutletId)> {
    let is_linear = g.op(linear.node) == Some(&Op::Linear)
        && g.inputs_of(linear.node)
            .get(Linear::R)
            .copied()
            .flatten()
            .is_none()
        && g.consumers(linear).len() == 1
        && !g.is_output(linear);
    (is_linear && g.fact(residual).dtype == Some(DType::F32)).then_some((linear, residual))
}
