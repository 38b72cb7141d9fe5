//! Integer products of models that were quantised before they reached fff.
//!
//! Guarantees: every product that a quantisation tool wrote in one of these forms
//!
//! ```text
//! dynamic (ONNX Runtime's quantize_dynamic, and MatMulIntegerToFloat as imported):
//!   Mul(Cast<float32>(MatMulInteger(XQ, Wq, X_ZERO?, W_ZERO?)), S)       (or Mul(S, Cast(...)))
//!
//! QDQ (quantize_static's QDQ format, and QLinearMatMul as imported):
//!   MatMul(DequantizeLinear(XQ, XS, X_ZERO?), DequantizeLinear(Wq, WS, W_ZERO?))
//!
//!   XQ: uint8 of rank >= 2, one zero point (scalar) and in QDQ one scale (scalar)
//!   Wq: int8 constant [k, n] with zero points absent or all 0; in QDQ WS constant, one value or one
//!       per column (axis 1)
//!   S:  float32, one value or one per column, broadcasting along the last axis only
//! ```
//!
//! is one `IntegerLinear { n }(XQ, pack(Wq), S', X_ZERO)` node, where S' is S in the dynamic form and
//! `Mul(XS, WS)` in QDQ, and then
//!
//! ```text
//! Add(IntegerLinear(..), B)    B a float32 constant of n values   -> its bias
//! Add(IntegerLinear(..), R)    R float32                          -> its residual
//! Gelu/Relu(IntegerLinear(..)) without a residual yet             -> its activation
//!   (IntegerLinear read by nothing else and not a graph output)
//! ```
//!
//! Each replacement is evaluated against the nodes it replaces on random probes (the codes, zero
//! points and scales at their constant values or drawn at random) with the runtime's evaluator, and
//! kept only if they agree: bit for bit in the dynamic form and for bias, residual and activation,
//! whose arithmetic is the graph's own (an exact integer sum, then the graph's float32 multiply and
//! adds in its order); within float32 summation error in QDQ, where the graph dequantises before a
//! float product (and fixes no order of summation) and the op sums exactly and scales once.
//!
//! Candidates it leaves alone keep their ONNX ops, which the runtime evaluates as the spec says; the
//! reasons go to the report (`fffc compile --explain`). The weights of every `DequantizeLinear` with
//! constant inputs that is left are dequantised here, once, so that the float32 passes see constant
//! weights (constant folding leaves those feeding products to this pass).

use std::sync::Arc;

use fff_ops::quant::int8 as qi8;
use fff_runtime::op::{BinaryOp, FffActivation, IntegerLinear, Op, UnaryOp};
use fff_runtime::opset::eval;
use fff_runtime::{DType, Tensor, TensorView};
use ndarray::{ArrayD, IxDyn};
use petgraph::stable_graph::NodeIndex;

use super::pattern::{binary_operands, read_once, trimmed};
use crate::error::Result;
use crate::ir::{Dim, Graph, OutletId};
use crate::report::IntegerProduct;

pub fn run(g: &mut Graph) -> Result<bool> {
    let mut changed = false;
    for node in g.topo_order() {
        if !g.contains_node(node) {
            continue;
        }
        let done = match g.op(node) {
            Some(Op::Binary(BinaryOp::Mul)) => dynamic_form(g, node),
            Some(Op::MatMul) => qdq_form(g, node),
            Some(Op::Binary(BinaryOp::Add)) => absorb_add(g, node),
            Some(Op::Unary(UnaryOp::Gelu | UnaryOp::GeluTanh | UnaryOp::Relu)) => {
                absorb_activation(g, node)
            }
            _ => false,
        };
        changed |= done;
    }
    changed |= dequantize_constant_weights(g);
    Ok(changed)
}

/// What a matched product reads.
struct Product {
    x: OutletId,
    zero: Option<OutletId>,
    /// The codes `[k, n]`.
    w: ArrayD<i8>,
    k: usize,
    n: usize,
}

/// The dynamic form at `mul`, replaced when it matches and agrees on probes.
fn dynamic_form(g: &mut Graph, mul: NodeIndex) -> bool {
    let Some((a, b)) = binary_operands(g, mul, BinaryOp::Mul) else {
        return false;
    };
    let Some((cast, scale)) = cast_of_integer_product(g, a)
        .map(|c| (c, b))
        .or_else(|| cast_of_integer_product(g, b).map(|c| (c, a)))
    else {
        return false;
    };
    let mmi = g.inputs_of(cast.node)[0].expect("matched a Cast with its input");
    let ins = g.inputs_of(mmi.node);
    let name = g.node(mmi.node).name.clone();
    if already_refused(g, &name) {
        return false;
    }
    let product = match product_of(
        g,
        ins[0],
        ins[1],
        ins.get(2).copied().flatten(),
        ins.get(3).copied().flatten(),
    ) {
        Ok(p) => p,
        Err(reason) => return refuse(g, &name, "MatMulInteger", None, reason),
    };
    let (k, n) = (product.k, product.n);
    if let Err(reason) = column_scale(g, scale, n, g.fact(OutletId::new(mul, 0))) {
        return refuse(g, &name, "MatMulInteger", Some((k, n)), reason);
    }
    let original = |ins: &Probes| -> std::result::Result<Tensor, String> {
        let acc = run_op(
            &Op::MatMulInteger,
            &[Some(&ins.x), Some(&ins.w), ins.zero.as_ref(), None],
        )?;
        let f = run_op(&Op::Cast { to: DType::F32 }, &[Some(&acc)])?;
        run_op(&Op::Binary(BinaryOp::Mul), &[Some(&f), Some(&ins.scale)])
    };
    lower(
        g,
        mul,
        &name,
        "MatMulInteger",
        product,
        scale,
        None,
        Exactness::Bitwise,
        &original,
    )
}

/// `o` when it is `Cast<float32>(MatMulInteger(..))`, both read once.
fn cast_of_integer_product(g: &Graph, o: OutletId) -> Option<OutletId> {
    let cast = read_once(g, o)?;
    if g.op(cast.node) != Some(&Op::Cast { to: DType::F32 }) {
        return None;
    }
    let mmi = read_once(g, g.inputs_of(cast.node).first().copied().flatten()?)?;
    (g.op(mmi.node) == Some(&Op::MatMulInteger)).then_some(cast)
}

/// The QDQ form at `matmul`.
fn qdq_form(g: &mut Graph, matmul: NodeIndex) -> bool {
    let ins = g.inputs_of(matmul);
    let (Some(xd), Some(wd)) = (ins[0], ins[1]) else {
        return false;
    };
    let name = g.node(matmul).name.clone();
    if already_refused(g, &name) {
        return false;
    }
    let (Some(xdq), Some(wdq)) = (dequantize(g, xd), dequantize(g, wd)) else {
        return false;
    };
    // Weights dequantised per constant: the QDQ form proper.
    let [wq, ws, wz] = wdq.inputs;
    let const_w = wq.is_some_and(|w| g.const_value(w).is_some())
        && ws.is_some_and(|s| g.const_value(s).is_some());
    if !const_w {
        return false;
    }
    let [xq, xs, xz] = xdq.inputs;
    let (Some(xq), Some(xs), Some(wq), Some(ws)) = (xq, xs, wq, ws) else {
        return false;
    };
    let reason = if xdq.block_size != 0 || wdq.block_size != 0 {
        Some("blocked quantisation".to_string())
    } else if !one_value(g, xs) {
        Some("the activations have more than one scale".to_string())
    } else {
        None
    };
    let product = match reason.map_or_else(|| product_of(g, Some(xq), Some(wq), xz, wz), Err) {
        Ok(p) => p,
        Err(reason) => return refuse(g, &name, "QDQ MatMul", None, reason),
    };
    let n = product.n;
    let per_column = match g.const_value(ws).map(|t| t.shape().to_vec()) {
        Some(s) if s.iter().product::<usize>() == 1 => true,
        Some(s) if s == [n] => matches!(wdq.axis, 1 | -1),
        _ => false,
    };
    if !per_column {
        let reason = "the weights' scales are not one value or one per column".to_string();
        return refuse(g, &name, "QDQ MatMul", Some((product.k, n)), reason);
    }
    // The activations' scale times the weights': one f32 multiply per column, as the op needs it.
    let scale = g.add_op(
        &format!("{name}/scale"),
        Op::Binary(BinaryOp::Mul),
        &[Some(xs), Some(ws)],
        1,
    );
    let scale = OutletId::new(scale, 0);
    let (x_axis, w_axis, x_block, w_block) = (xdq.axis, wdq.axis, xdq.block_size, wdq.block_size);
    let scales = QdqScales {
        x: g.const_value(xs).map(|t| t.as_ref().clone()),
        w: g.const_value(ws)
            .map(|t| t.as_ref().clone())
            .expect("checked constant"),
    };
    let ws = scales.w.clone();
    let original = move |ins: &Probes| -> std::result::Result<Tensor, String> {
        let x = run_op(
            &Op::DequantizeLinear {
                axis: x_axis,
                block_size: x_block,
            },
            &[Some(&ins.x), Some(&ins.x_scale), ins.zero.as_ref()],
        )?;
        let w = run_op(
            &Op::DequantizeLinear {
                axis: w_axis,
                block_size: w_block,
            },
            &[Some(&ins.w), Some(&ws), None],
        )?;
        run_op(&Op::MatMul, &[Some(&x), Some(&w)])
    };
    let kept = lower(
        g,
        matmul,
        &name,
        "QDQ MatMul",
        product,
        scale,
        Some(scales),
        Exactness::Summation,
        &original,
    );
    if !kept {
        g.remove_node(scale.node);
    }
    kept
}

/// A `DequantizeLinear` node's inputs and attributes.
struct Dequantize {
    inputs: [Option<OutletId>; 3],
    axis: i64,
    block_size: usize,
}

fn dequantize(g: &Graph, o: OutletId) -> Option<Dequantize> {
    let Some(&Op::DequantizeLinear { axis, block_size }) = g.op(o.node) else {
        return None;
    };
    let ins = g.inputs_of(o.node);
    let at = |i: usize| ins.get(i).copied().flatten();
    Some(Dequantize {
        inputs: [at(0), at(1), at(2)],
        axis,
        block_size,
    })
}

/// Whether `o` holds one value by its fact (a scalar or a one-element tensor).
fn one_value(g: &Graph, o: OutletId) -> bool {
    g.fact(o)
        .shape
        .as_ref()
        .is_some_and(|s| s.iter().all(|d| *d == Dim::Known(1)))
}

/// The product `X W` when the operands fit the int8 kernels: X uint8 of rank >= 2 with one zero
/// point, W an int8 constant matrix with zero points absent or 0.
fn product_of(
    g: &Graph,
    x: Option<OutletId>,
    w: Option<OutletId>,
    x_zero: Option<OutletId>,
    w_zero: Option<OutletId>,
) -> std::result::Result<Product, String> {
    let (Some(x), Some(w)) = (x, w) else {
        return Err("an operand is missing".into());
    };
    match g.fact(x).dtype {
        Some(DType::U8) => {}
        Some(dt) => {
            return Err(format!(
                "the activations are {dt}; the int8 kernels take uint8"
            ))
        }
        None => return Err("the activations' type is unknown".into()),
    }
    if g.fact(x).shape.as_ref().is_none_or(|s| s.len() < 2) {
        return Err("the activations are not a matrix or a batch of them".into());
    }
    let codes = match g.const_value(w).map(Arc::as_ref) {
        Some(Tensor::I8(t)) if t.ndim() == 2 => t.clone(),
        Some(Tensor::U8(_)) => {
            return Err("the weights are uint8 (with zero points); the int8 kernels take int8 weights of zero point 0".into())
        }
        Some(_) => return Err("the weights are not an int8 matrix".into()),
        None => return Err("the weights are not constant".into()),
    };
    let (k, n) = (codes.shape()[0], codes.shape()[1]);
    if k == 0 || n == 0 || k > qi8::MAX_K {
        return Err(format!("{k} -> {n} is outside what the int8 kernels take"));
    }
    if let Some(z) = x_zero {
        if g.fact(z).dtype != Some(DType::U8) || !one_value(g, z) {
            return Err("the activations' zero point is not one uint8 value".into());
        }
    }
    if let Some(z) = w_zero {
        let zero = match g.const_value(z).map(Arc::as_ref) {
            Some(Tensor::I8(t)) => t.iter().all(|&v| v == 0),
            _ => false,
        };
        if !zero {
            return Err("the weights' zero points are not 0".into());
        }
    }
    Ok(Product {
        x,
        zero: x_zero,
        w: codes,
        k,
        n,
    })
}

/// Checks that `s` is float32 and broadcasts onto `[..., n]` along the last axis only, without
/// changing the product's rank (`out` is the fact of the multiply's result).
fn column_scale(
    g: &Graph,
    s: OutletId,
    n: usize,
    out: &crate::ir::Fact,
) -> std::result::Result<(), String> {
    if g.fact(s).dtype != Some(DType::F32) {
        return Err("the scale is not float32".into());
    }
    let Some(shape) = g.fact(s).shape.as_ref() else {
        return Err("the scale's shape is unknown".into());
    };
    let rank = out.shape.as_ref().map_or(0, |o| o.len());
    let leading_ones = shape.iter().rev().skip(1).all(|d| *d == Dim::Known(1));
    let last_fits = shape
        .last()
        .is_none_or(|d| *d == Dim::Known(1) || *d == Dim::Known(n as i64));
    if shape.len() <= rank && leading_ones && last_fits {
        Ok(())
    } else {
        Err(format!(
            "the scale {shape:?} is not one value or one per column"
        ))
    }
}

/// How closely a replacement must agree with the nodes it replaces.
#[derive(Clone, Copy)]
enum Exactness {
    /// Every bit.
    Bitwise,
    /// Within float32 summation error: `|a - b| <= 1e-5 * max |b|` over the probe.
    Summation,
}

/// The two scales whose product is a QDQ product's column scale: the activations' (when constant)
/// and the weights'.
struct QdqScales {
    x: Option<Tensor>,
    w: Tensor,
}

/// Probe values of a product's inputs.
struct Probes {
    x: Tensor,
    zero: Option<Tensor>,
    w: Tensor,
    x_scale: Tensor,
    scale: Tensor,
}

/// Replaces the value of `at` by an IntegerLinear of `product` scaled by `scale`, if it agrees with
/// `original` on probes; records the outcome.
#[allow(clippy::too_many_arguments)]
fn lower(
    g: &mut Graph,
    at: NodeIndex,
    name: &str,
    form: &'static str,
    product: Product,
    scale: OutletId,
    qdq_scales: Option<QdqScales>,
    exactness: Exactness,
    original: &dyn Fn(&Probes) -> std::result::Result<Tensor, String>,
) -> bool {
    let (k, n) = (product.k, product.n);
    // The scales are the op's input, per call; the packed weights carry placeholders.
    let Some(packed) = qi8::pack_codes(
        &product.w.iter().copied().collect::<Vec<_>>(),
        &vec![1.0; n],
        k,
        n,
    ) else {
        return refuse(
            g,
            name,
            form,
            Some((k, n)),
            "the weights do not fit the int8 layout".into(),
        );
    };
    let w_packed = Tensor::I8(
        ArrayD::from_shape_vec(IxDyn(&IntegerLinear::packed_shape(k, n)), packed.data)
            .expect("packed length"),
    );
    let sums = Tensor::I32(ArrayD::from_shape_vec(IxDyn(&[n]), packed.col_sums).expect("n"));
    let op = Op::IntegerLinear {
        n,
        activation: None,
    };
    let verdict = agree_on_probes(g, &product, scale, qdq_scales, exactness, original, |p| {
        run_op(
            &op,
            &[
                Some(&p.x),
                Some(&w_packed),
                None,
                None,
                Some(&p.scale),
                Some(&sums),
                p.zero.as_ref(),
            ],
        )
    });
    if let Err(reason) = verdict {
        return refuse(g, name, form, Some((k, n)), reason);
    }
    let mut inputs = vec![None; IntegerLinear::INPUTS_LEN];
    inputs[IntegerLinear::X] = Some(product.x);
    inputs[IntegerLinear::W] = Some(g.add_const(&format!("{name}/int8"), w_packed));
    inputs[IntegerLinear::SCALE] = Some(scale);
    inputs[IntegerLinear::W_SUM] = Some(g.add_const(&format!("{name}/sums"), sums));
    inputs[IntegerLinear::X_ZERO] = product.zero;
    g.replace_with_op(OutletId::new(at, 0), name, op, &trimmed(inputs));
    g.report.integer_products.push(IntegerProduct {
        node: name.to_string(),
        form,
        k,
        n,
        lowered: true,
        detail: "IntegerLinear".into(),
    });
    true
}

/// Whether the candidate at `name` was judged and left before (rounds repeat; probes are not free).
fn already_refused(g: &Graph, name: &str) -> bool {
    g.report
        .integer_products
        .iter()
        .any(|p| p.node == name && !p.lowered)
}

/// Records a candidate left as it is.
fn refuse(
    g: &mut Graph,
    name: &str,
    form: &'static str,
    shape: Option<(usize, usize)>,
    why: String,
) -> bool {
    let (k, n) = shape.unwrap_or((0, 0));
    if !already_refused(g, name) {
        g.report.integer_products.push(IntegerProduct {
            node: name.to_string(),
            form,
            k,
            n,
            lowered: false,
            detail: why,
        });
    }
    false
}

/// Evaluates `op` on owned tensors.
fn run_op(op: &Op, inputs: &[Option<&Tensor>]) -> std::result::Result<Tensor, String> {
    let views: Vec<Option<TensorView>> = inputs.iter().map(|t| t.map(Tensor::view)).collect();
    eval(op, &views, 1)
        .map_err(|e| e.to_string())?
        .into_iter()
        .next()
        .ok_or_else(|| "no output".to_string())
}

/// Compares `original` and `replacement` on probes of three leading shapes.
fn agree_on_probes(
    g: &Graph,
    product: &Product,
    scale: OutletId,
    qdq_scales: Option<QdqScales>,
    exactness: Exactness,
    original: &dyn Fn(&Probes) -> std::result::Result<Tensor, String>,
    replacement: impl Fn(&Probes) -> std::result::Result<Tensor, String>,
) -> std::result::Result<(), String> {
    let mut rng = Rng(0x5eed_1e55);
    let rank = g.fact(product.x).shape.as_ref().map_or(2, Vec::len).max(2);
    let w = Tensor::I8(product.w.clone());
    for (i, rows) in [1usize, 3, 17].into_iter().enumerate() {
        let mut shape = vec![1; rank - 2];
        if let Some(first) = shape.first_mut() {
            *first = 2;
        }
        shape.extend([rows, product.k]);
        let x = Tensor::U8(ArrayD::from_shape_fn(IxDyn(&shape), |_| rng.next() as u8));
        // The zero point at its constant value, else the ends of the range and one between.
        let zero = product.zero.map(|z| match g.const_value(z) {
            Some(t) => t.as_ref().clone(),
            None => Tensor::U8(ArrayD::from_elem(IxDyn(&[]), [0u8, 255, 131][i])),
        });
        let draw_scale = |rng: &mut Rng, o: OutletId, len: usize| match g.const_value(o) {
            Some(t) => t.as_ref().clone(),
            None => {
                let dims: Vec<usize> = match g.fact(o).shape.as_ref() {
                    Some(s) => s
                        .iter()
                        .map(|d| if *d == Dim::Known(1) { 1 } else { len })
                        .collect(),
                    None => vec![],
                };
                Tensor::F32(ArrayD::from_shape_fn(IxDyn(&dims), |_| {
                    (rng.next() % 1000 + 1) as f32 * 1.7e-5
                }))
            }
        };
        let x_scale = match &qdq_scales {
            Some(QdqScales { x: Some(xs), .. }) => xs.clone(),
            _ => Tensor::F32(ArrayD::from_elem(IxDyn(&[]), [0.0123f32, 2.5e-3, 0.31][i])),
        };
        // In QDQ the op's scale is the product of the two the original reads.
        let scale = match &qdq_scales {
            Some(q) => run_op(&Op::Binary(BinaryOp::Mul), &[Some(&x_scale), Some(&q.w)])?,
            None => draw_scale(&mut rng, scale, product.n),
        };
        let probes = Probes {
            x,
            zero,
            w: w.clone(),
            x_scale,
            scale,
        };
        let want = original(&probes)?;
        let got = replacement(&probes)?;
        compare(&want, &got, exactness)?;
    }
    Ok(())
}

/// Whether `got` equals `want` as `exactness` asks.
fn compare(want: &Tensor, got: &Tensor, exactness: Exactness) -> std::result::Result<(), String> {
    let (Tensor::F32(a), Tensor::F32(b)) = (want, got) else {
        return Err("the replacement's result is not float32".into());
    };
    if a.shape() != b.shape() {
        return Err(format!(
            "shapes differ on probes: {:?} and {:?}",
            a.shape(),
            b.shape()
        ));
    }
    let peak = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    let mut worst = 0f32;
    for (x, y) in a.iter().zip(b.iter()) {
        let ok = match exactness {
            Exactness::Bitwise => x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
            Exactness::Summation => (x - y).abs() <= 1e-5 * peak || (x.is_nan() && y.is_nan()),
        };
        if !ok {
            worst = worst.max((x - y).abs());
        }
    }
    if worst > 0.0
        || a.iter()
            .zip(b.iter())
            .any(|(x, y)| x.is_nan() != y.is_nan())
    {
        return Err(format!(
            "the integer kernel's result differed from the graph's on probes (max abs {worst:e})"
        ));
    }
    Ok(())
}

/// `Add(IntegerLinear, B)` into its bias or `Add(IntegerLinear, R)` into its residual.
fn absorb_add(g: &mut Graph, add: NodeIndex) -> bool {
    let Some((a, b)) = binary_operands(g, add, BinaryOp::Add) else {
        return false;
    };
    let Some((product, other)) = fusable(g, a)
        .map(|p| (p, b))
        .or_else(|| fusable(g, b).map(|p| (p, a)))
    else {
        return false;
    };
    let Some(&Op::IntegerLinear { n, .. }) = g.op(product.node) else {
        return false;
    };
    let mut operands = g.inputs_of(product.node);
    operands.resize(IntegerLinear::INPUTS_LEN, None);
    if operands[IntegerLinear::R].is_some()
        || g.fact(other).dtype != Some(DType::F32)
        || folds_to_constant(g, other, 4)
    {
        // A value that constant folding is about to make a constant may be a bias: next round.
        return false;
    }
    // A bias goes before the activation; once there is one, a constant is a residual.
    let takes_bias = operands[IntegerLinear::B].is_none()
        && matches!(
            g.op(product.node),
            Some(Op::IntegerLinear {
                activation: None,
                ..
            })
        );
    let as_bias = takes_bias
        .then(|| bias_values(g, other, n, g.fact(OutletId::new(add, 0))))
        .flatten();
    let name = g.node(add).name.clone();
    match as_bias {
        Some(values) => {
            let b = g.add_const(&format!("{name}/bias"), values);
            operands[IntegerLinear::B] = Some(b);
        }
        None => operands[IntegerLinear::R] = Some(other),
    }
    let op = g.op(product.node).cloned().expect("an op");
    g.replace_with_op(OutletId::new(add, 0), &name, op, &trimmed(operands));
    true
}

/// Whether `o` is computed from constants only (within `depth` ops), so constant folding will make
/// it one.
fn folds_to_constant(g: &Graph, o: OutletId, depth: usize) -> bool {
    if g.const_value(o).is_some() || depth == 0 || g.op(o.node).is_none() {
        return false;
    }
    g.inputs_of(o.node)
        .into_iter()
        .flatten()
        .all(|i| g.const_value(i).is_some() || folds_to_constant(g, i, depth - 1))
}

/// An IntegerLinear's output that a fusion may swallow.
fn fusable(g: &Graph, o: OutletId) -> Option<OutletId> {
    let o = read_once(g, o)?;
    matches!(g.op(o.node), Some(Op::IntegerLinear { .. })).then_some(o)
}

/// `b` as a bias of `n` values, if it is a float32 constant that adds one value per column without
/// changing the sum's shape (`out` is the Add's fact).
fn bias_values(g: &Graph, b: OutletId, n: usize, out: &crate::ir::Fact) -> Option<Tensor> {
    let Tensor::F32(t) = g.const_value(b)?.as_ref() else {
        return None;
    };
    let rank = out.shape.as_ref()?.len();
    let fits = t.len() == n && t.ndim() <= rank && t.shape().last() == Some(&n);
    if !fits {
        return None;
    }
    let values: Vec<f32> = t.iter().copied().collect();
    ArrayD::from_shape_vec(IxDyn(&[n]), values)
        .ok()
        .map(Tensor::F32)
}

/// `Gelu(IntegerLinear)` or `Relu(IntegerLinear)`, the product without a residual or activation yet.
fn absorb_activation(g: &mut Graph, node: NodeIndex) -> bool {
    let activation = match g.op(node) {
        Some(Op::Unary(UnaryOp::Gelu)) => FffActivation::Gelu,
        Some(Op::Unary(UnaryOp::GeluTanh)) => FffActivation::GeluTanh,
        Some(Op::Unary(UnaryOp::Relu)) => FffActivation::Relu,
        _ => return false,
    };
    let Some(input) = g.inputs_of(node).first().copied().flatten() else {
        return false;
    };
    let Some(product) = fusable(g, input) else {
        return false;
    };
    let Some(&Op::IntegerLinear {
        n,
        activation: None,
    }) = g.op(product.node)
    else {
        return false;
    };
    let operands = g.inputs_of(product.node);
    if operands.get(IntegerLinear::R).copied().flatten().is_some() {
        return false;
    }
    let name = g.node(node).name.clone();
    let op = Op::IntegerLinear {
        n,
        activation: Some(activation),
    };
    let unfused = g.op(node).cloned().expect("an op");
    let before = g.op(product.node).cloned().expect("an op");
    // The kernels apply the activation to the finished tile; kept only where that is the graph's
    // activation to the bit.
    if let Err(reason) = activation_agrees(g, &operands, &before, &unfused, &op) {
        let record = IntegerProduct {
            node: name.clone(),
            form: "activation",
            k: 0,
            n,
            lowered: false,
            detail: format!("not fused into '{}': {reason}", g.node(product.node).name),
        };
        if !g.report.integer_products.contains(&record) {
            g.report.integer_products.push(record);
        }
        return false;
    }
    g.replace_with_op(OutletId::new(node, 0), &name, op, &operands);
    true
}

/// Whether `fused` computes `unfused(before(..))` bit for bit on probes of the inputs `operands`
/// (constants as they are, the rest drawn at random).
fn activation_agrees(
    g: &Graph,
    operands: &[Option<OutletId>],
    before: &Op,
    unfused: &Op,
    fused: &Op,
) -> std::result::Result<(), String> {
    let x = operands[IntegerLinear::X].ok_or("no activations")?;
    let k = match g.fact(x).shape.as_ref().and_then(|s| s.last().cloned()) {
        Some(Dim::Known(k)) if k > 0 => k as usize,
        _ => return Err("the activations' width is not known".into()),
    };
    let mut rng = Rng(0xac71_7a7e);
    for rows in [1usize, 5, 33] {
        let mut values = Vec::with_capacity(operands.len());
        for (slot, o) in operands.iter().enumerate() {
            let Some(o) = o else {
                values.push(None);
                continue;
            };
            let t = match g.const_value(*o) {
                Some(t) => t.as_ref().clone(),
                None => match slot {
                    IntegerLinear::X => {
                        Tensor::U8(ArrayD::from_shape_fn(IxDyn(&[rows, k]), |_| {
                            rng.next() as u8
                        }))
                    }
                    IntegerLinear::X_ZERO => {
                        Tensor::U8(ArrayD::from_elem(IxDyn(&[]), rng.next() as u8))
                    }
                    IntegerLinear::SCALE => {
                        let len = match g.fact(*o).shape.as_ref().and_then(|s| s.last()) {
                            Some(Dim::Known(l)) => *l as usize,
                            _ => 1,
                        };
                        Tensor::F32(ArrayD::from_shape_fn(IxDyn(&[len]), |_| {
                            (rng.next() % 1000 + 1) as f32 * 3.1e-5
                        }))
                    }
                    _ => return Err("an input is computed at run time".into()),
                },
            };
            values.push(Some(t));
        }
        let refs: Vec<Option<&Tensor>> = values.iter().map(Option::as_ref).collect();
        let product = run_op(before, &refs)?;
        let want = run_op(unfused, &[Some(&product)])?;
        let got = run_op(fused, &refs)?;
        compare(&want, &got, Exactness::Bitwise)?;
    }
    Ok(())
}

/// Folds every `DequantizeLinear` whose inputs are all constants into a float32 constant.
fn dequantize_constant_weights(g: &mut Graph) -> bool {
    let mut changed = false;
    for node in g.topo_order() {
        if !matches!(g.op(node), Some(Op::DequantizeLinear { .. })) {
            continue;
        }
        let ins = g.inputs_of(node);
        let values: Option<Vec<Option<Tensor>>> = ins
            .iter()
            .map(|i| match i {
                Some(o) => g.const_value(*o).map(|t| Some(t.as_ref().clone())),
                None => Some(None),
            })
            .collect();
        let Some(values) = values else { continue };
        let refs: Vec<Option<&Tensor>> = values.iter().map(Option::as_ref).collect();
        let op = g.op(node).cloned().expect("an op");
        // A model whose quantisation parameters are wrong keeps the node, which reports the
        // error when it runs (the importer has refused what it could see).
        let Ok(t) = run_op(&op, &refs) else { continue };
        let name = g.node(node).name.clone();
        let c = g.add_const(&name, t);
        g.replace_uses(OutletId::new(node, 0), c);
        g.remove_node(node);
        changed = true;
    }
    changed
}

/// xorshift64*, for reproducible probes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}
