//! Bias fusion.
//!
//! Guarantees: every
//!
//! ```text
//! Add(MatMul(X, W), B)        (or Add(B, MatMul(X, W)))
//!   W: float constant [k, n]
//!   B: float constant [n] or [1, ..., 1, n], of rank at most X's
//!   the MatMul read by nothing but this Add
//! ```
//!
//! is one `Linear(X, W, B)` node, so the bias is written with the product instead of in a second pass
//! over the output. The result is the same tensor: the shapes of `X W` and `X W + B` are equal.

use fff_runtime::op::{BinaryOp, Op};
use fff_runtime::{DType, Tensor};

use super::pattern::binary_operands;
use crate::error::Result;
use crate::ir::{Graph, OutletId};

pub fn run(g: &mut Graph) -> Result<bool> {
    let mut changed = false;
    for add in g.topo_order() {
        let Some((a, b)) = binary_operands(g, add, BinaryOp::Add) else {
            continue;
        };
        let Some((x, w, bias)) = matched(g, a, b).or_else(|| matched(g, b, a)) else {
            continue;
        };
        let name = format!("{}/linear", g.node(add).name);
        let node = g.add_op(&name, Op::Linear, &[Some(x), Some(w), Some(bias)], 1);
        g.g[node].outputs[0] = g.fact(OutletId::new(add, 0)).clone();
        g.replace_uses(OutletId::new(add, 0), OutletId::new(node, 0));
        changed = true;
    }
    Ok(changed)
}

/// `(X, W, bias as [n])` when `product` is a MatMul of X by a constant W [k, n] read only here and
/// `bias` a constant [1, ..., 1, n] of rank at most X's.
fn matched(
    g: &mut Graph,
    product: OutletId,
    bias: OutletId,
) -> Option<(OutletId, OutletId, OutletId)> {
    if g.op(product.node) != Some(&Op::MatMul) || g.consumers(product).len() != 1 {
        return None;
    }
    let mm = g.inputs_of(product.node);
    let (x, w) = (mm[0]?, mm[1]?);
    let wt = g.const_value(w)?;
    let bt = g.const_value(bias)?;
    let x_rank = g.fact(x).rank()?;
    if wt.dtype() != DType::F32 || bt.dtype() != DType::F32 || wt.shape().len() != 2 {
        return None;
    }
    let n = wt.shape()[1];
    let bs = bt.shape();
    let fits = x_rank >= 1
        && bs.len() <= x_rank
        && bs.last() == Some(&n)
        && bs[..bs.len() - 1].iter().all(|&d| d == 1);
    if !fits {
        return None;
    }
    let bias = if bs.len() == 1 {
        bias
    } else {
        let flat = bt.view().f32().ok()?.iter().copied().collect::<Vec<f32>>();
        let t = Tensor::F32(ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[n]), flat).ok()?);
        let name = format!("{}/flat", g.node(bias.node).name);
        g.add_const(&name, t)
    };
    Some((x, w, bias))
}
