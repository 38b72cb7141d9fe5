//! Reduced-precision products, a lowering run only when asked for (`fffc compile --quantize int8|bf16`),
//! after the rewrites have settled and before `pack-weights`.
//!
//! Guarantees: every projection
//!
//! ```text
//! Linear(X, W, B?, R?)
//!   W: float32 constant [k, n], k and n at least MIN_DIM
//! ```
//!
//! is `QuantLinear { n, precision, activation: None }(X, Wq, B?, R?, scale?, sum?)`, and every dense
//! feedforward layer
//!
//! ```text
//! FastFeedForward { depth: 0, trees, activation }(X, W_in, B_in?, W_out, B_out?)
//!   W_in: float32 constant [trees, d_in], W_out: float32 constant [trees, d_out]
//! Add(that, R)                      (when the layer is read by nothing else: a residual)
//! ```
//!
//! is the pair
//!
//! ```text
//! H = QuantLinear { n: trees, activation }(X, pack(W_inᵀ), B_in?)
//! Y = QuantLinear { n: d_out }(H, pack(W_out), B_out?, R?)
//! ```
//!
//! Wq holds W in the layout `fff_ops::quant` reads: int8 codes per output column (symmetric, with the
//! column's scale and code sum as two more constants), or bf16 (nearest, ties to even). Activations are
//! quantised by the op at run time, per row. What stays float32, and why:
//! - conditional FastFeedForward layers (depth > 0): their routing must take the branches the float32
//!   plan takes, and each row reads only its path's few neurons, so narrower weights buy little there;
//! - embeddings, LayerNorm, softmax and attention's products: they hold little of the arithmetic and
//!   most of the range that per-row int8 would lose;
//! - the last projections: those whose result reaches a graph output through element-wise and shape
//!   ops and other projections only (a pooler and classifier head, a language-model decoder). Their error goes to the output undiluted, and they run on
//!   few rows or few columns, so float32 costs little there (on a 3-class head int8 alone cost 0.2% of
//!   row cosine);
//! - products narrower than MIN_DIM on either side (too small to gain).
//!
//! The results are the float32 graph's up to the quantisation error, which `fffc` measures after
//! compiling. Each candidate is recorded in the graph's report for `--explain`.

use std::sync::Arc;

use fff_ops::quant::{bf16 as qbf16, int8 as qi8};
use fff_runtime::op::{
    BinaryOp, FastFeedForward, FffActivation, Linear, Op, Precision, QuantLinear,
};
use fff_runtime::{DType, Tensor};
use ndarray::{ArrayD, IxDyn};

use super::pattern::{binary_operands, trimmed};
use crate::error::Result;
use crate::ir::{Graph, OutletId};
use crate::report::Quantized;
use crate::{Options, Quantize};
use petgraph::stable_graph::NodeIndex;

/// The narrowest side of a product worth quantising.
pub const MIN_DIM: usize = 8;

pub fn run(g: &mut Graph, options: &Options) -> Result<bool> {
    let precision = match options.quantize {
        Quantize::F32 => return Ok(false),
        Quantize::Int8 => Precision::Int8,
        Quantize::Bf16 => Precision::Bf16,
    };
    let mut changed = false;
    for node in g.topo_order() {
        let name = g.node(node).name.clone();
        let record = match g.op(node) {
            Some(Op::Linear) => linear(g, node, precision),
            Some(&Op::FastFeedForward {
                depth: 0,
                activation,
                ..
            }) => dense_feedforward(g, node, precision, activation),
            Some(Op::FastFeedForward { depth, trees, .. }) => Some(Quantized {
                node: name.clone(),
                products: vec![],
                precision: None,
                reason: Some(format!(
                    "conditional feedforward ({trees}x{depth}): routing stays float32"
                )),
            }),
            _ => None,
        };
        if let Some(mut r) = record {
            changed |= r.precision.is_some();
            r.node = name;
            g.report.quantized.push(r);
        }
    }
    if changed {
        absorb_residuals(g);
        crate::passes::dead_code::run(g)?;
    }
    Ok(changed)
}

/// A float32 constant matrix's shape.
fn f32_matrix(g: &Graph, w: Option<OutletId>) -> Option<(usize, usize)> {
    match g.const_value(w?).map(Arc::as_ref) {
        Some(Tensor::F32(t)) => match *t.shape() {
            [r, c] => Some((r, c)),
            _ => None,
        },
        _ => None,
    }
}

/// Why a `[k, n]` product stays float32, if it does.
fn kept(k: usize, n: usize) -> Option<String> {
    (k < MIN_DIM || n < MIN_DIM).then(|| format!("{k} -> {n} is too small to gain"))
}

fn linear(g: &mut Graph, node: NodeIndex, precision: Precision) -> Option<Quantized> {
    let inputs = g.inputs_of(node);
    let (k, n) = f32_matrix(g, inputs[Linear::W])?;
    let mut record = Quantized {
        node: String::new(),
        products: vec![(k, n)],
        precision: None,
        reason: kept(k, n).or_else(|| {
            reaches_output(g, OutletId::new(node, 0)).then(|| {
                "a last projection (its result reaches a graph output directly)".to_string()
            })
        }),
    };
    if record.reason.is_some() {
        return Some(record);
    }
    let w = matrix(g, inputs[Linear::W]);
    let name = g.node(node).name.clone();
    let mut q = packed(g, &name, &w, k, n, precision);
    q[QuantLinear::X] = inputs[Linear::X];
    q[QuantLinear::B] = inputs.get(Linear::B).copied().flatten();
    q[QuantLinear::R] = inputs.get(Linear::R).copied().flatten();
    let op = Op::QuantLinear {
        n,
        precision,
        activation: None,
    };
    g.replace_with_op(OutletId::new(node, 0), &name, op, &trimmed(q));
    record.precision = Some(precision.name());
    Some(record)
}

fn dense_feedforward(
    g: &mut Graph,
    node: NodeIndex,
    precision: Precision,
    activation: FffActivation,
) -> Option<Quantized> {
    let inputs = g.inputs_of(node);
    let (trees, d_in) = f32_matrix(g, inputs[FastFeedForward::W_IN])?;
    let (rows, d_out) = f32_matrix(g, inputs[FastFeedForward::W_OUT])?;
    if rows != trees {
        return None;
    }
    let bias_ok = |b: Option<OutletId>, len: usize| {
        b.is_none_or(|b| {
            g.fact(b).dtype == Some(DType::F32)
                && g.const_value(b).is_some_and(|t| t.shape() == [len])
        })
    };
    if !bias_ok(inputs[FastFeedForward::B_IN], trees)
        || !bias_ok(inputs[FastFeedForward::B_OUT], d_out)
    {
        return None;
    }
    let mut record = Quantized {
        node: String::new(),
        products: vec![(d_in, trees), (trees, d_out)],
        precision: None,
        reason: kept(d_in, trees).or_else(|| kept(trees, d_out)),
    };
    if record.reason.is_some() {
        return Some(record);
    }
    let name = g.node(node).name.clone();
    // W_in holds one neuron per row: the product reads its transpose.
    let w_in = matrix(g, inputs[FastFeedForward::W_IN]);
    let w_in_t: Vec<f32> = w_in.t().iter().copied().collect();
    let w_in_t = ArrayD::from_shape_vec(IxDyn(&[d_in, trees]), w_in_t).expect("transpose");
    let mut first = packed(g, &format!("{name}/in"), &w_in_t, d_in, trees, precision);
    first[QuantLinear::X] = inputs[FastFeedForward::X];
    first[QuantLinear::B] = inputs[FastFeedForward::B_IN];
    let hidden = g.add_op(
        &format!("{name}/in"),
        Op::QuantLinear {
            n: trees,
            precision,
            activation: Some(activation),
        },
        &trimmed(first),
        1,
    );
    let mut hidden_fact = g.fact(OutletId::new(node, 0)).clone();
    if let Some(last) = hidden_fact.shape.as_mut().and_then(|s| s.last_mut()) {
        *last = crate::ir::Dim::Known(trees as i64);
    }
    g.set_fact(OutletId::new(hidden, 0), hidden_fact);
    let w_out = matrix(g, inputs[FastFeedForward::W_OUT]);
    let mut second = packed(g, &format!("{name}/out"), &w_out, trees, d_out, precision);
    second[QuantLinear::X] = Some(OutletId::new(hidden, 0));
    second[QuantLinear::B] = inputs[FastFeedForward::B_OUT];
    let op = Op::QuantLinear {
        n: d_out,
        precision,
        activation: None,
    };
    g.replace_with_op(OutletId::new(node, 0), &name, op, &trimmed(second));
    record.precision = Some(precision.name());
    Some(record)
}

/// Whether `value` reaches a graph output through element-wise and shape ops and projections only.
fn reaches_output(g: &Graph, value: OutletId) -> bool {
    let mut stack = vec![value];
    let mut seen = std::collections::HashSet::new();
    while let Some(v) = stack.pop() {
        if !seen.insert(v) {
            continue;
        }
        if g.is_output(v) {
            return true;
        }
        for (reader, _) in g.consumers(v) {
            let passes_through = matches!(
                g.op(reader),
                Some(
                    Op::Identity
                        | Op::Unary(_)
                        | Op::Binary(_)
                        | Op::Cast { .. }
                        | Op::Reshape { .. }
                        | Op::Flatten { .. }
                        | Op::Squeeze
                        | Op::Unsqueeze
                        | Op::Softmax { .. }
                        | Op::LogSoftmax { .. }
                        | Op::Linear
                )
            );
            if passes_through {
                stack.push(OutletId::new(reader, 0));
            }
        }
    }
    false
}

/// The constant `w` (checked to be a float32 matrix by the caller).
fn matrix(g: &Graph, w: Option<OutletId>) -> ArrayD<f32> {
    match w.and_then(|w| g.const_value(w)).map(Arc::as_ref) {
        Some(Tensor::F32(t)) => t.clone(),
        _ => unreachable!("checked by f32_matrix"),
    }
}

/// The inputs of a QuantLinear with its weight constants filled in: `[k, n]` row-major `w` packed in
/// `precision`.
fn packed(
    g: &mut Graph,
    name: &str,
    w: &ArrayD<f32>,
    k: usize,
    n: usize,
    precision: Precision,
) -> Vec<Option<OutletId>> {
    let values: Vec<f32> = w.iter().copied().collect();
    let shape = IxDyn(&QuantLinear::packed_shape(precision, k, n));
    let mut inputs = vec![None; QuantLinear::INPUTS_LEN];
    match precision {
        Precision::Int8 => {
            let p = qi8::quantize_pack(&values, k, n);
            let data = Tensor::I8(ArrayD::from_shape_vec(shape, p.data).expect("packed length"));
            let scales = Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[n]), p.scales).expect("n"));
            let sums = Tensor::I32(ArrayD::from_shape_vec(IxDyn(&[n]), p.col_sums).expect("n"));
            inputs[QuantLinear::W] = Some(g.add_const(&format!("{name}/int8"), data));
            inputs[QuantLinear::W_SCALE] = Some(g.add_const(&format!("{name}/scales"), scales));
            inputs[QuantLinear::W_SUM] = Some(g.add_const(&format!("{name}/sums"), sums));
        }
        Precision::Bf16 => {
            let data = qbf16::pack(&values, k, n);
            let data = Tensor::BF16(ArrayD::from_shape_vec(shape, data).expect("packed length"));
            inputs[QuantLinear::W] = Some(g.add_const(&format!("{name}/bf16"), data));
        }
    }
    inputs
}

/// Every `Add(QuantLinear(...), R)` whose QuantLinear has no residual yet and is read by nothing else
/// becomes the QuantLinear with R as its residual (as the `residual` rewrite does for Linear).
fn absorb_residuals(g: &mut Graph) {
    for add in g.topo_order() {
        let Some((a, b)) = binary_operands(g, add, BinaryOp::Add) else {
            continue;
        };
        let Some((product, residual)) = absorbable(g, a, b).or_else(|| absorbable(g, b, a)) else {
            continue;
        };
        let mut operands = g.inputs_of(product.node);
        operands.resize(QuantLinear::INPUTS_LEN, None);
        operands[QuantLinear::R] = Some(residual);
        let op = g.op(product.node).cloned().expect("an op");
        let name = format!("{}/residual", g.node(add).name);
        g.replace_with_op(OutletId::new(add, 0), &name, op, &trimmed(operands));
    }
}

/// `(product, residual)` when `product` is a QuantLinear without a residual, read only by the Add and
/// not a graph output, and `residual` is float32.
fn absorbable(g: &Graph, product: OutletId, residual: OutletId) -> Option<(OutletId, OutletId)> {
    let fits = matches!(g.op(product.node), Some(Op::QuantLinear { .. }))
        && g.inputs_of(product.node)
            .get(QuantLinear::R)
            .copied()
            .flatten()
            .is_none()
        && g.consumers(product).len() == 1
        && !g.is_output(product)
        && g.fact(residual).dtype == Some(DType::F32);
    fits.then_some((product, residual))
}
