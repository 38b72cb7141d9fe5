//! GELU fusion: the erf form as PyTorch and Hugging Face export `gelu` outside feedforward blocks
//! (inside them, the feedforward pass takes the whole block).
//!
//! Guarantees: every
//!
//! ```text
//! a = Add(Erf(Div(x, c) or Mul(x, 1/c)), 1)          c = sqrt(2) (scalar constants; either operand order)
//! y = the product of x, a and scalar constants whose product is 0.5, in any order and grouping of
//!     at most two Mul nodes
//! ```
//!
//! with every intermediate read only inside the pattern, is one `Gelu(x)` node: `x * 0.5 * (1 +
//! erf(x / sqrt(2)))`, which the runtime computes with the same erf as every other GELU (within 1e-6).

use fff_runtime::op::{BinaryOp, Op, UnaryOp};
use petgraph::stable_graph::NodeIndex;

use super::pattern::{read_once, scalar};
use crate::error::Result;
use crate::ir::{Graph, OutletId};

/// How far a constant may be from sqrt(2) (or 0.5) and still be read as it: exporters write it to f32.
const TOLERANCE: f32 = 1e-4;

pub fn run(g: &mut Graph) -> Result<bool> {
    let mut changed = false;
    for erf in g.topo_order() {
        if !g.contains_node(erf) {
            continue;
        }
        if let Some((x, root)) = match_at(g, erf) {
            let name = format!("{}/gelu", g.node(root.node).name);
            g.replace_with_op(root, &name, Op::Unary(UnaryOp::Gelu), &[Some(x)]);
            changed = true;
        }
    }
    Ok(changed)
}

/// `(x, the product's output)` when `erf` is the Erf of a GELU spelled out.
fn match_at(g: &Graph, erf: NodeIndex) -> Option<(OutletId, OutletId)> {
    if g.op(erf) != Some(&Op::Unary(UnaryOp::Erf)) {
        return None;
    }
    let x = scaled_input(g, read_once(g, g.inputs_of(erf)[0]?)?)?;
    let e = read_once(g, OutletId::new(erf, 0))?;
    // a = Add(e, 1)
    let (add, _) = g.consumers(e)[0];
    if g.op(add) != Some(&Op::Binary(BinaryOp::Add)) {
        return None;
    }
    let ins = g.inputs_of(add);
    let one = if ins[0]? == e { ins[1]? } else { ins[0]? };
    if !near(scalar(g, one, 0)?, 1.0) {
        return None;
    }
    let a = read_once(g, OutletId::new(add, 0))?;
    // The Mul tree above `a`: one or two Mul nodes whose leaves are a, x and scalars making 0.5.
    let (m1, _) = g.consumers(a)[0];
    if g.op(m1) != Some(&Op::Binary(BinaryOp::Mul)) {
        return None;
    }
    let first = OutletId::new(m1, 0);
    // Mul(Mul(x, 0.5), a): a second Mul below the first.
    let mut leaves = Vec::new();
    let mut muls = 1;
    for l in g.inputs_of(m1).into_iter().flatten() {
        let inner = l != a && l != x && g.op(l.node) == Some(&Op::Binary(BinaryOp::Mul));
        if inner && read_once(g, l).is_some() {
            leaves.extend(g.inputs_of(l.node).into_iter().flatten());
            muls += 1;
        } else {
            leaves.push(l);
        }
    }
    if complete(g, &leaves, a, x) {
        return Some((x, first));
    }
    // Mul(Mul(x, a), 0.5) or Mul(x, Mul(a, 0.5)): a second Mul above it.
    if muls > 1 {
        return None;
    }
    let (next, _) = g.consumers(read_once(g, first)?)[0];
    if g.op(next) != Some(&Op::Binary(BinaryOp::Mul)) {
        return None;
    }
    let ins = g.inputs_of(next);
    leaves.push(if ins[0]? == first { ins[1]? } else { ins[0]? });
    complete(g, &leaves, a, x).then_some((x, OutletId::new(next, 0)))
}

/// Whether the factors are exactly `a`, `x` and scalar constants whose product is 0.5.
fn complete(g: &Graph, leaves: &[OutletId], a: OutletId, x: OutletId) -> bool {
    let mut seen_a = false;
    let mut seen_x = false;
    let mut product = 1.0f32;
    for &l in leaves {
        if l == a && !seen_a {
            seen_a = true;
        } else if l == x && !seen_x {
            seen_x = true;
        } else if let Some(c) = scalar(g, l, 0) {
            product *= c;
        } else {
            return false;
        }
    }
    seen_a && seen_x && near(product, 0.5)
}

/// `x` when `t` is `Div(x, sqrt(2))`, `Mul(x, 1/sqrt(2))` or `Mul(1/sqrt(2), x)`.
fn scaled_input(g: &Graph, t: OutletId) -> Option<OutletId> {
    // Any op can produce the Erf's input, so its arity is not known yet.
    let [Some(a), Some(b)] = g.inputs_of(t.node)[..] else {
        return None;
    };
    match g.op(t.node)? {
        Op::Binary(BinaryOp::Div) => near(scalar(g, b, 0)?, std::f32::consts::SQRT_2).then_some(a),
        Op::Binary(BinaryOp::Mul) => {
            let k = std::f32::consts::FRAC_1_SQRT_2;
            match (scalar(g, a, 0), scalar(g, b, 0)) {
                (None, Some(c)) if near(c, k) => Some(a),
                (Some(c), None) if near(c, k) => Some(b),
                _ => None,
            }
        }
        _ => None,
    }
}

fn near(v: f32, want: f32) -> bool {
    (v - want).abs() <= TOLERANCE * want.abs()
}
