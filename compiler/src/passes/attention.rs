//! Attention fusion.
//!
//! Guarantees: every scaled dot-product attention spelled out as exporters write it,
//!
//! ```text
//! q = Transpose*(Q) [, Mul/Div by scalar constants]      rank-4 Q, K, V; the transposes may be absent
//! k = Transpose*(K) [, Mul/Div by scalar constants]
//! s = MatMul(q, k) [, Mul/Div by scalar constants] [, Add(_, Mask)]
//! p = Softmax(s, last axis) [, Where(IsNaN(p), 0, p)]
//! o = MatMul(p, Transpose*(V))                           o: [b, h, sq, dv]
//! ```
//!
//! with every intermediate value read by nothing outside the pattern, is one
//! `Attention(Q, K, V, Mask)` node. The node reads Q, K and V in place through the permutations the
//! transposes compose to (so the head split costs no copy), multiplies the scores by the product of the
//! scalar constants (divisors inverted) and writes `[b, sq, h, dv]`. That is the layout of the usual
//! head merge `Transpose(o, [0, 2, 1, 3])`, which the node then replaces; otherwise a transpose back
//! to `o`'s layout follows it. Shapes are checked when the node runs, with MatMul's broadcasting of
//! the batch and head axes.

use fff_runtime::op::{BinaryOp, Op, UnaryOp};
use fff_runtime::DType;
use petgraph::stable_graph::NodeIndex;

use crate::error::Result;
use crate::ir::{Graph, OutletId};

pub fn run(g: &mut Graph) -> Result<bool> {
    let mut changed = false;
    for softmax in g.topo_order() {
        if !g.contains_node(softmax) {
            continue;
        }
        if let Some(m) = match_at(g, softmax) {
            rewrite(g, softmax, m);
            changed = true;
        }
    }
    Ok(changed)
}

/// What the pattern binds.
struct Matched {
    q4: OutletId,
    k4: OutletId,
    v4: OutletId,
    q_perm: [usize; 4],
    k_perm: [usize; 4],
    v_perm: [usize; 4],
    mask: Option<OutletId>,
    scale: f32,
    nan_to_zero: bool,
    /// The second MatMul's output, `[b, h, sq, dv]`.
    out: OutletId,
}

fn match_at(g: &Graph, softmax: NodeIndex) -> Option<Matched> {
    let Some(Op::Softmax { axis, .. }) = g.op(softmax) else {
        return None;
    };
    let s_in = g.inputs_of(softmax)[0]?;
    if g.fact(s_in).rank()? != 4 || !(*axis == -1 || *axis == 3) {
        return None;
    }
    // Backwards from the softmax: an optional mask add, scalar scales, the first MatMul.
    let mut scale = 1.0f32;
    let mut mask = None;
    let mut cur = sole(g, s_in)?;
    if g.op(cur.node) == Some(&Op::Binary(BinaryOp::Add)) {
        let [Some(a), Some(b)] = g.inputs_of(cur.node)[..] else {
            return None;
        };
        let (scores, m) = if leads_to_scores(g, a) {
            (a, b)
        } else {
            (b, a)
        };
        if g.fact(m).dtype != Some(DType::F32) || g.fact(m).rank()? > 4 {
            return None;
        }
        mask = Some(m);
        cur = sole(g, scores)?;
    }
    cur = strip_scales(g, cur, &mut scale)?;
    if g.op(cur.node) != Some(&Op::MatMul) {
        return None;
    }
    let mm = g.inputs_of(cur.node);
    let (q4, q_perm) = head_chain(g, mm[0]?, &mut scale)?;
    // The MatMul reads K transposed, [b, h, d, s]; the op reads it as [b, h, s, d].
    let (k4, [k0, k1, k2, k3]) = head_chain(g, mm[1]?, &mut scale)?;
    let k_perm = [k0, k1, k3, k2];
    // Forwards from the softmax: an optional NaN guard, the second MatMul.
    let p = OutletId::new(softmax, 0);
    let (p, nan_to_zero) = match nan_guard(g, p) {
        Some(guarded) => (guarded, true),
        None => (p, false),
    };
    let [(mm2, 0)] = g.consumers(p)[..] else {
        return None;
    };
    if g.op(mm2) != Some(&Op::MatMul) {
        return None;
    }
    let mut no_scale = 1.0;
    let (v4, v_perm) = head_chain(g, g.inputs_of(mm2)[1]?, &mut no_scale)?;
    if no_scale != 1.0 {
        return None;
    }
    Some(Matched {
        q4,
        k4,
        v4,
        q_perm,
        k_perm,
        v_perm,
        mask,
        scale,
        nan_to_zero,
        out: OutletId::new(mm2, 0),
    })
}

/// `o` itself if it is an op output read only once (by the pattern), else `None`.
fn sole(g: &Graph, o: OutletId) -> Option<OutletId> {
    (g.op(o.node).is_some() && g.consumers(o).len() == 1).then_some(o)
}

/// Whether `o` comes from a MatMul through scalar scales (the scores side of the mask add).
fn leads_to_scores(g: &Graph, o: OutletId) -> bool {
    let mut s = 1.0;
    strip_scales(g, o, &mut s).is_some_and(|o| g.op(o.node) == Some(&Op::MatMul))
}

/// Follows `Mul`/`Div` by scalar float constants backwards from `o`, each read only once, multiplying
/// their factors into `scale`; the first value that is not such a scaling.
fn strip_scales(g: &Graph, mut o: OutletId, scale: &mut f32) -> Option<OutletId> {
    while let Some((next, c)) = scale_step(g, o) {
        *scale *= c;
        o = sole(g, next)?;
    }
    Some(o)
}

/// When `o` is `x * c`, `c * x` or `x / c` for a scalar float constant `c`: `x` and the factor.
fn scale_step(g: &Graph, o: OutletId) -> Option<(OutletId, f32)> {
    let [Some(a), Some(b)] = g.inputs_of(o.node)[..] else {
        return None;
    };
    match g.op(o.node)? {
        Op::Binary(BinaryOp::Mul) => match (scalar(g, a), scalar(g, b)) {
            (_, Some(c)) => Some((a, c)),
            (Some(c), None) => Some((b, c)),
            _ => None,
        },
        Op::Binary(BinaryOp::Div) => Some((a, 1.0 / scalar(g, b)?)),
        _ => None,
    }
}

/// A scalar float constant of rank at most 4, so that scaling by it never grows a rank-4 operand.
fn scalar(g: &Graph, o: OutletId) -> Option<f32> {
    super::pattern::scalar(g, o, 4)
}

/// Follows transposes and scalar scales backwards from a MatMul operand (each read only by the chain)
/// to the rank-4 value they start from; that value and the permutation the transposes compose to
/// (axis `i` of the operand is axis `perm[i]` of the start). Scales met on the way multiply `scale`.
fn head_chain(g: &Graph, operand: OutletId, scale: &mut f32) -> Option<(OutletId, [usize; 4])> {
    let mut perms: Vec<Vec<usize>> = Vec::new();
    let mut factor = 1.0f32;
    let mut o = operand;
    while g.op(o.node).is_some() && g.consumers(o).len() == 1 {
        let ins = g.inputs_of(o.node);
        match g.op(o.node)? {
            Op::Transpose { perm: Some(p) } if is_permutation_of_4(p) => {
                perms.push(p.iter().map(|&a| a as usize).collect());
                o = ins[0]?;
            }
            _ => match scale_step(g, o) {
                Some((next, c)) => {
                    factor *= c;
                    o = next;
                }
                None => break,
            },
        }
    }
    if g.fact(o).rank() != Some(4) {
        return None;
    }
    let mut composed = [0, 1, 2, 3];
    for p in perms.iter().rev() {
        let prev = composed;
        for (i, c) in composed.iter_mut().enumerate() {
            *c = prev[*p.get(i)?];
        }
    }
    *scale *= factor;
    Some((o, composed))
}

/// Whether `p` permutes the axes of a rank-4 value (a damaged model may say otherwise).
fn is_permutation_of_4(p: &[i64]) -> bool {
    let mut sorted = p.to_vec();
    sorted.sort_unstable();
    sorted == [0, 1, 2, 3]
}

/// `Where(IsNaN(p), 0, p)` when that is all that reads `p`; its output.
fn nan_guard(g: &Graph, p: OutletId) -> Option<OutletId> {
    let readers = g.consumers(p);
    if readers.len() != 2 {
        return None;
    }
    let isnan = readers
        .iter()
        .find(|(n, _)| g.op(*n) == Some(&Op::Unary(UnaryOp::IsNaN)))?
        .0;
    let (where_, slot) = *readers.iter().find(|(n, _)| *n != isnan)?;
    let w = g.inputs_of(where_);
    let guarded = g.op(where_) == Some(&Op::Where)
        && slot == 2
        && w[0] == Some(OutletId::new(isnan, 0))
        && g.consumers(OutletId::new(isnan, 0)).len() == 1
        && w[1].and_then(|z| scalar(g, z)) == Some(0.0);
    guarded.then_some(OutletId::new(where_, 0))
}

fn rewrite(g: &mut Graph, softmax: NodeIndex, m: Matched) {
    let name = format!("{}/attention", g.node(softmax).name);
    let op = Op::Attention {
        scale: m.scale.into(),
        nan_to_zero: m.nan_to_zero,
        q_perm: m.q_perm,
        k_perm: m.k_perm,
        v_perm: m.v_perm,
    };
    let node = g.add_op(&name, op, &[Some(m.q4), Some(m.k4), Some(m.v4), m.mask], 1);
    let attn = OutletId::new(node, 0);
    // The head merge that usually follows reads the fused output directly.
    let merge = match g.consumers(m.out)[..] {
        [(t, 0)]
            if g.op(t)
                == Some(&Op::Transpose {
                    perm: Some(vec![0, 2, 1, 3]),
                }) =>
        {
            Some(t)
        }
        _ => None,
    };
    match merge {
        Some(t) => g.replace_uses(OutletId::new(t, 0), attn),
        None => {
            let back = g.add_op(
                &format!("{name}/heads_first"),
                Op::Transpose {
                    perm: Some(vec![0, 2, 1, 3]),
                },
                &[Some(attn)],
                1,
            );
            g.replace_uses(m.out, OutletId::new(back, 0));
        }
    }
}
