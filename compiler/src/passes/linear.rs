//! Projections by constant weights as `Linear`, with their bias fused.
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
//! over the output; every
//!
//! ```text
//! Gemm { alpha: 1, beta, trans_a: false, trans_b }(X, W, C?)
//!   X: of rank 2
//!   W: float constant [k, n] ([n, k] with trans_b)
//!   C: absent, or a float constant [n] or [1, n]
//! ```
//!
//! (as older exporters write `nn.Linear`) is `Linear(X, W', beta * C)` with W' the constant `[k, n]`;
//! and every remaining `MatMul(X, W)` with W a float constant `[k, n]` is `Linear(X, W)`. Each result
//! is the same tensor, so that later passes (residual fusion, weight packing) see one form of
//! projection.

use fff_runtime::op::{BinaryOp, Op};
use fff_runtime::{DType, Tensor};

use super::pattern::binary_operands;
use crate::error::Result;
use crate::ir::{Graph, OutletId};
use ndarray::{ArrayD, IxDyn};
use petgraph::stable_graph::NodeIndex;

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
        let inputs = [Some(x), Some(w), Some(bias)];
        g.replace_with_op(OutletId::new(add, 0), &name, Op::Linear, &inputs);
        changed = true;
    }
    for node in g.topo_order() {
        // A node no longer read (a MatMul just fused above) is left to dead-code elimination.
        let out = OutletId::new(node, 0);
        if g.consumers(out).is_empty() && !g.is_output(out) {
            continue;
        }
        let Some(inputs) = bare_projection(g, node) else {
            continue;
        };
        let name = format!("{}/linear", g.node(node).name);
        g.replace_with_op(out, &name, Op::Linear, &inputs);
        changed = true;
    }
    Ok(changed)
}

/// The inputs of the `Linear` that `node` is, when it is a `Gemm` or `MatMul` of the forms above.
fn bare_projection(g: &mut Graph, node: NodeIndex) -> Option<Vec<Option<OutletId>>> {
    let ins = g.inputs_of(node);
    let (x, w) = (
        ins.first().copied().flatten()?,
        ins.get(1).copied().flatten()?,
    );
    let wt = g.const_value(w)?.clone();
    if wt.dtype() != DType::F32 || wt.shape().len() != 2 || g.const_value(x).is_some() {
        return None;
    }
    match g.op(node)?.clone() {
        Op::MatMul => Some(vec![Some(x), Some(w)]),
        Op::Gemm {
            alpha,
            beta,
            trans_a: false,
            trans_b,
        } if alpha.0 == 1.0 && g.fact(x).rank() == Some(2) => {
            let n = wt.shape()[usize::from(!trans_b)];
            let bias = match ins.get(2).copied().flatten() {
                None => None,
                Some(c) => {
                    let ct = g.const_value(c)?.clone();
                    let cv = ct.view();
                    let cv = cv.f32().ok()?;
                    if !matches!(cv.shape(), [m] | [1, m] if *m == n) {
                        return None;
                    }
                    let scaled: Vec<f32> = cv.iter().map(|&v| beta.0 * v).collect();
                    let t = Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[n]), scaled).ok()?);
                    let name = format!("{}/bias", g.node(node).name);
                    Some(g.add_const(&name, t))
                }
            };
            let w = if trans_b {
                let Tensor::F32(a) = wt.as_ref() else {
                    return None;
                };
                let t = Tensor::F32(a.t().as_standard_layout().into_owned());
                let name = format!("{}/transposed", g.node(w.node).name);
                g.add_const(&name, t)
            } else {
                w
            };
            Some(vec![Some(x), Some(w), bias])
        }
        _ => None,
    }
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
