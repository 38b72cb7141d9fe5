//! LayerNorm fusion: the decomposed form that exporters write before opset 17 (and that hand-written
//! BERT layers spell out).
//!
//! Guarantees: every
//!
//! ```text
//! m = ReduceMean(x, last axis, keepdims)
//! d = Sub(x, m)
//! v = ReduceMean(Pow(d, 2) or Mul(d, d), last axis, keepdims)
//! n = Div(d, Sqrt(Add(v, eps)))                      eps: a scalar constant (either side of the Add)
//! [y = Mul(n, gamma)]  [y = Add(y, beta)]            gamma, beta: float constants [1, ..., 1, w]
//! ```
//!
//! with x float32 of known rank and last dimension w, `d` read only by the variance and the division
//! and every other intermediate read only inside the pattern, is one
//! `LayerNorm { axis: -1, epsilon: eps }(x, gamma, beta)` node (gamma all ones when absent). LayerNorm
//! computes the same mean, biased variance and normalisation, and gamma and beta broadcast only along
//! the last axis, so the result is the same tensor of x's shape, up to rounding.

use std::sync::Arc;

use fff_runtime::op::{BinaryOp, Op, ReduceOp, UnaryOp};
use fff_runtime::{DType, Tensor};
use ndarray::{ArrayD, IxDyn};
use petgraph::stable_graph::NodeIndex;

use super::pattern::{read_once, scalar};
use crate::error::Result;
use crate::ir::{Graph, OutletId};

pub fn run(g: &mut Graph) -> Result<bool> {
    let mut changed = false;
    for div in g.topo_order() {
        if !g.contains_node(div) {
            continue;
        }
        if let Some(m) = match_at(g, div) {
            rewrite(g, div, m);
            changed = true;
        }
    }
    Ok(changed)
}

/// What the pattern binds.
struct Matched {
    x: OutletId,
    epsilon: f32,
    gamma: Option<Vec<f32>>,
    beta: Option<Vec<f32>>,
    /// The last value of the pattern, whose readers will read the LayerNorm instead.
    out: OutletId,
    /// x's last dimension.
    width: usize,
}

fn match_at(g: &Graph, div: NodeIndex) -> Option<Matched> {
    if g.op(div) != Some(&Op::Binary(BinaryOp::Div)) {
        return None;
    }
    let ins = g.inputs_of(div);
    let (d, sd) = (ins[0]?, read_once(g, ins[1]?)?);
    // Sqrt(Add(v, eps))
    if g.op(sd.node) != Some(&Op::Unary(UnaryOp::Sqrt)) {
        return None;
    }
    let ve = read_once(g, g.inputs_of(sd.node)[0]?)?;
    if g.op(ve.node) != Some(&Op::Binary(BinaryOp::Add)) {
        return None;
    }
    let add = g.inputs_of(ve.node);
    let (var, epsilon) = match (scalar(g, add[0]?, 1), scalar(g, add[1]?, 1)) {
        (None, Some(e)) => (add[0]?, e),
        (Some(e), None) => (add[1]?, e),
        _ => return None,
    };
    // v = ReduceMean(d^2), d = Sub(x, ReduceMean(x))
    let var = read_once(g, var)?;
    let squared = read_once(g, last_axis_mean(g, var.node)?)?;
    let sq_ins = g.inputs_of(squared.node);
    let squares_d = match g.op(squared.node)? {
        Op::Binary(BinaryOp::Pow) => sq_ins[0]? == d && scalar(g, sq_ins[1]?, 1) == Some(2.0),
        Op::Binary(BinaryOp::Mul) => sq_ins[0]? == d && sq_ins[1]? == d,
        _ => false,
    };
    if !squares_d || g.op(d.node) != Some(&Op::Binary(BinaryOp::Sub)) {
        return None;
    }
    let d_readers = g.consumers(d);
    let only_pattern_reads_d = d_readers
        .iter()
        .all(|&(n, _)| n == squared.node || n == div)
        && !g.is_output(d);
    if !only_pattern_reads_d {
        return None;
    }
    let sub = g.inputs_of(d.node);
    let (x, mean) = (sub[0]?, read_once(g, sub[1]?)?);
    if last_axis_mean(g, mean.node)? != x || last_axis_mean(g, var.node)? != squared {
        return None;
    }
    let rank = g.fact(x).rank()?;
    if g.fact(x).dtype != Some(DType::F32) {
        return None;
    }
    if !axes_are_last(g, mean.node, rank) || !axes_are_last(g, var.node, rank) {
        return None;
    }
    let width = g.fact(x).shape.as_ref()?.last()?.known()? as usize;
    // Optional affine part.
    let mut out = OutletId::new(div, 0);
    let mut gamma = None;
    let mut beta = None;
    if let Some((next, c)) = affine_step(g, out, BinaryOp::Mul, rank, width) {
        gamma = Some(c);
        out = next;
    }
    if let Some((next, c)) = affine_step(g, out, BinaryOp::Add, rank, width) {
        beta = Some(c);
        out = next;
    }
    Some(Matched {
        x,
        epsilon,
        gamma,
        beta,
        out,
        width,
    })
}

/// The data input of a keepdims `ReduceMean` node.
fn last_axis_mean(g: &Graph, n: NodeIndex) -> Option<OutletId> {
    match g.op(n)? {
        Op::Reduce {
            op: ReduceOp::Mean,
            keepdims: true,
            ..
        } => g.inputs_of(n)[0],
        _ => None,
    }
}

/// Whether the Reduce node's axes are exactly the last axis of a rank-`rank` input.
fn axes_are_last(g: &Graph, n: NodeIndex, rank: usize) -> bool {
    let Some(Some(axes)) = g.inputs_of(n).get(1).copied() else {
        return false;
    };
    let Some(t) = g.const_value(axes) else {
        return false;
    };
    let Ok(v) = t.view().ints() else {
        return false;
    };
    v.len() == 1 && (v[0] == -1 || v[0] == rank as i64 - 1)
}

/// When the only reader of `o` is `op(o, c)` or `op(c, o)` for a float constant `c` of shape
/// `[1, ..., 1, width]` and rank at most `rank`: that node's output and `c`'s values.
fn affine_step(
    g: &Graph,
    o: OutletId,
    op: BinaryOp,
    rank: usize,
    width: usize,
) -> Option<(OutletId, Vec<f32>)> {
    if g.is_output(o) {
        return None;
    }
    let readers = g.consumers(o);
    let &[(reader, _)] = readers.as_slice() else {
        return None;
    };
    if g.op(reader) != Some(&Op::Binary(op)) {
        return None;
    }
    let ins = g.inputs_of(reader);
    let other = if ins[0]? == o { ins[1]? } else { ins[0]? };
    let t: &Arc<Tensor> = g.const_value(other)?;
    let Tensor::F32(a) = t.as_ref() else {
        return None;
    };
    let shape = a.shape();
    let row_shaped = !shape.is_empty()
        && shape.len() <= rank
        && shape[..shape.len() - 1].iter().all(|&d| d == 1)
        && shape[shape.len() - 1] == width;
    row_shaped.then(|| (OutletId::new(reader, 0), a.iter().copied().collect()))
}

fn rewrite(g: &mut Graph, div: NodeIndex, m: Matched) {
    let name = g.node(div).name.clone();
    let vector = |v: Vec<f32>| {
        let n = v.len();
        Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[n]), v).expect("length matches"))
    };
    let gamma = m.gamma.unwrap_or_else(|| vec![1.0; m.width]);
    let scale = g.add_const(&format!("{name}/layer_norm_scale"), vector(gamma));
    let bias = m
        .beta
        .map(|b| g.add_const(&format!("{name}/layer_norm_bias"), vector(b)));
    let op = Op::LayerNorm {
        axis: -1,
        epsilon: m.epsilon.into(),
    };
    let node = g.add_op(
        &format!("{name}/layer_norm"),
        op,
        &[Some(m.x), Some(scale), bias],
        1,
    );
    g.set_fact(OutletId::new(node, 0), g.fact(m.x).clone());
    g.replace_uses(m.out, OutletId::new(node, 0));
}
