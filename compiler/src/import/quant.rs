//! Quantised ONNX nodes: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear and MatMulInteger
//! map onto the runtime's ops of the same names; QLinearMatMul and ONNX Runtime's com.microsoft
//! MatMulIntegerToFloat and DynamicQuantizeMatMul are decomposed into them, into the forms ONNX
//! Runtime's quantisers write (`quantize_static`'s QDQ, `quantize_dynamic`'s MatMulInteger + Cast +
//! scale Muls), so one lowering serves both spellings.
//!
//! What a constant can tell is checked here, naming the node: scales positive and finite, an int32
//! DequantizeLinear's zero point 0, the quantised types fff has (uint8, int8). Shapes and the zero
//! points' types are checked by the ops' shape rules, which name the node too.

use fff_runtime::op::{BinaryOp, Op};
use fff_runtime::opset::quantize::check_scales;
use fff_runtime::{DType, Tensor};

use super::attrs::NodeCtx;
use super::ops::Outputs;
use super::tensor::type_name;
use crate::error::Result;
use crate::ir::{Graph, OutletId};

/// Imports a quantisation node of the default domain, or `None` if `op_type` is not one.
pub fn import_default(
    g: &mut Graph,
    cx: &NodeCtx,
    inputs: &[Option<OutletId>],
) -> Result<Option<Outputs>> {
    let name = cx.node.name.as_str();
    let req = |i: usize| required(cx, inputs, i);
    let opt = |i: usize| inputs.get(i).copied().flatten();
    let out = match cx.node.op_type.as_str() {
        "QuantizeLinear" => {
            let (axis, block_size) = axis_and_block(cx)?;
            let to = quantised_type(g, cx, opt(2))?;
            let (x, scale) = (req(0)?, req(1)?);
            check_constant_scale(g, cx, scale, "y_scale")?;
            let op = Op::QuantizeLinear {
                axis,
                block_size,
                to,
            };
            one(g, name, op, &[Some(x), Some(scale), opt(2)])
        }
        "DequantizeLinear" => {
            let (axis, block_size) = axis_and_block(cx)?;
            let (x, scale) = (req(0)?, req(1)?);
            check_input_type(g, cx, x, "x")?;
            if let Some(zp) = opt(2) {
                check_input_type(g, cx, zp, "x_zero_point")?;
            }
            check_constant_scale(g, cx, scale, "x_scale")?;
            check_int32_zero_point(g, cx, x, opt(2))?;
            let op = Op::DequantizeLinear { axis, block_size };
            one(g, name, op, &[Some(x), Some(scale), opt(2)])
        }
        "DynamicQuantizeLinear" => {
            let id = g.add_op(name, Op::DynamicQuantizeLinear, &[Some(req(0)?)], 3);
            (0..3).map(|k| Some(OutletId::new(id, k))).collect()
        }
        "MatMulInteger" => {
            for i in 0..4 {
                if let Some(o) = opt(i) {
                    check_input_type(g, cx, o, ["A", "B", "a_zero_point", "b_zero_point"][i])?;
                }
            }
            one(
                g,
                name,
                Op::MatMulInteger,
                &[Some(req(0)?), Some(req(1)?), opt(2), opt(3)],
            )
        }
        "QLinearMatMul" => qlinear_matmul(g, cx, inputs)?,
        _ => return Ok(None),
    };
    Ok(Some(out))
}

/// Imports a com.microsoft quantisation node, or `None` if `op_type` is not one fff knows.
pub fn import_microsoft(
    g: &mut Graph,
    cx: &NodeCtx,
    inputs: &[Option<OutletId>],
) -> Result<Option<Outputs>> {
    let name = cx.node.name.as_str();
    let req = |i: usize| required(cx, inputs, i);
    let opt = |i: usize| inputs.get(i).copied().flatten();
    let y = match cx.node.op_type.as_str() {
        // A, B, a_scale, b_scale, a_zero_point?, b_zero_point?, bias?
        "MatMulIntegerToFloat" => {
            let (a_scale, b_scale) = (req(2)?, req(3)?);
            check_constant_scale(g, cx, a_scale, "a_scale")?;
            check_constant_scale(g, cx, b_scale, "b_scale")?;
            integer_to_float(
                g,
                name,
                [req(0)?, req(1)?],
                [opt(4), opt(5)],
                [a_scale, b_scale],
                opt(6),
            )
        }
        // A (float32), B, b_scale, b_zero_point?, bias?: A quantised by DynamicQuantizeLinear.
        "DynamicQuantizeMatMul" => {
            let b_scale = req(2)?;
            check_constant_scale(g, cx, b_scale, "b_scale")?;
            let dq = g.add_op(
                &format!("{name}/quantize_a"),
                Op::DynamicQuantizeLinear,
                &[Some(req(0)?)],
                3,
            );
            let a = OutletId::new(dq, 0);
            let (a_scale, a_zero) = (OutletId::new(dq, 1), OutletId::new(dq, 2));
            integer_to_float(
                g,
                name,
                [a, req(1)?],
                [Some(a_zero), opt(3)],
                [a_scale, b_scale],
                opt(4),
            )
        }
        _ => return Ok(None),
    };
    let mut out = vec![Some(y)];
    out.resize(cx.node.output.len().max(1), None);
    Ok(Some(out))
}

/// `Add(Mul(Cast<f32>(MatMulInteger(A, B, a_zp, b_zp)), Mul(a_scale, b_scale)), bias)`, the form
/// `quantize_dynamic` writes; the last op takes the node's name.
fn integer_to_float(
    g: &mut Graph,
    name: &str,
    [a, b]: [OutletId; 2],
    [a_zero, b_zero]: [Option<OutletId>; 2],
    [a_scale, b_scale]: [OutletId; 2],
    bias: Option<OutletId>,
) -> OutletId {
    let op = |g: &mut Graph, n: &str, op: Op, ins: &[Option<OutletId>]| {
        OutletId::new(g.add_op(n, op, ins, 1), 0)
    };
    let product = op(
        g,
        &format!("{name}/matmul_integer"),
        Op::MatMulInteger,
        &[Some(a), Some(b), a_zero, b_zero],
    );
    let wide = op(
        g,
        &format!("{name}/cast"),
        Op::Cast { to: DType::F32 },
        &[Some(product)],
    );
    let scale = op(
        g,
        &format!("{name}/scale"),
        Op::Binary(BinaryOp::Mul),
        &[Some(a_scale), Some(b_scale)],
    );
    let mul_name = if bias.is_some() {
        format!("{name}/mul")
    } else {
        name.to_string()
    };
    let y = op(
        g,
        &mul_name,
        Op::Binary(BinaryOp::Mul),
        &[Some(wide), Some(scale)],
    );
    match bias {
        Some(bias) => op(g, name, Op::Binary(BinaryOp::Add), &[Some(y), Some(bias)]),
        None => y,
    }
}

/// QLinearMatMul(a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp) as
/// `QuantizeLinear(MatMul(DequantizeLinear(a), DequantizeLinear(b)), y_scale, y_zp)`: the QDQ form.
/// a's and y's 1-D scales are per row (axis -2), b's per column (axis -1), as the op defines them.
fn qlinear_matmul(g: &mut Graph, cx: &NodeCtx, inputs: &[Option<OutletId>]) -> Result<Outputs> {
    let name = cx.node.name.as_str();
    let ins: Vec<OutletId> = (0..8)
        .map(|i| required(cx, inputs, i))
        .collect::<Result<_>>()?;
    for (i, what) in [(1, "a_scale"), (4, "b_scale"), (6, "y_scale")] {
        check_constant_scale(g, cx, ins[i], what)?;
    }
    for (i, what) in [(0, "a"), (2, "a_zero_point"), (3, "b"), (5, "b_zero_point")] {
        check_input_type(g, cx, ins[i], what)?;
    }
    let to = quantised_type(g, cx, Some(ins[7]))?;
    let dequantize = |g: &mut Graph, side: &str, x: usize, axis: i64| {
        let op = Op::DequantizeLinear {
            axis,
            block_size: 0,
        };
        let id = g.add_op(
            &format!("{name}/dequantize_{side}"),
            op,
            &[Some(ins[x]), Some(ins[x + 1]), Some(ins[x + 2])],
            1,
        );
        OutletId::new(id, 0)
    };
    let a = dequantize(g, "a", 0, -2);
    let b = dequantize(g, "b", 3, -1);
    let product = OutletId::new(
        g.add_op(
            &format!("{name}/matmul"),
            Op::MatMul,
            &[Some(a), Some(b)],
            1,
        ),
        0,
    );
    let op = Op::QuantizeLinear {
        axis: -2,
        block_size: 0,
        to,
    };
    Ok(one(
        g,
        name,
        op,
        &[Some(product), Some(ins[6]), Some(ins[7])],
    ))
}

fn one(g: &mut Graph, name: &str, op: Op, ins: &[Option<OutletId>]) -> Outputs {
    vec![Some(OutletId::new(g.add_op(name, op, ins, 1), 0))]
}

fn required(cx: &NodeCtx, inputs: &[Option<OutletId>], i: usize) -> Result<OutletId> {
    inputs
        .get(i)
        .copied()
        .flatten()
        .ok_or_else(|| cx.err(format!("input {i} is required")))
}

/// `axis` (default 1) and `block_size` (opset 21, default 0: not blocked).
fn axis_and_block(cx: &NodeCtx) -> Result<(i64, usize)> {
    let axis = cx.int_or("axis", 1)?;
    let block = cx.int_or("block_size", 0)?;
    let block =
        usize::try_from(block).map_err(|_| cx.err(format!("block_size {block} is negative")))?;
    Ok((axis, block))
}

/// The element type of `o` where import can tell it: constants and model inputs.
fn known_dtype(g: &Graph, o: OutletId) -> Option<DType> {
    g.const_value(o).map(|t| t.dtype()).or(g.fact(o).dtype)
}

/// QuantizeLinear's output type: the zero point's, else `output_dtype` (opset 21), else uint8; only
/// uint8 and int8 are supported (float8, int4 and 16-bit types are refused by name).
fn quantised_type(g: &Graph, cx: &NodeCtx, zero_point: Option<OutletId>) -> Result<DType> {
    let attr = cx.int_or("output_dtype", 0)?;
    let refuse = |code: i64| {
        cx.err(format!(
            "quantising to {} is not supported (fff quantises to uint8 and int8)",
            onnx_type_name(code)
        ))
    };
    let from_attr = match attr {
        0 => None,
        2 => Some(DType::U8),
        3 => Some(DType::I8),
        other => return Err(refuse(other)),
    };
    let Some(zp) = zero_point else {
        return Ok(from_attr.unwrap_or(DType::U8));
    };
    let zp_type =
        known_dtype(g, zp).ok_or_else(|| cx.err("the zero point's type is not known at import"))?;
    if !zp_type.is_quantised() {
        return Err(cx.err(format!(
            "a zero point of {zp_type}: fff quantises to uint8 and int8"
        )));
    }
    if from_attr.is_some_and(|t| t != zp_type) {
        return Err(cx.err(format!(
            "output_dtype {} differs from the zero point's type {zp_type}",
            onnx_type_name(attr)
        )));
    }
    Ok(zp_type)
}

fn onnx_type_name(code: i64) -> String {
    let name = i32::try_from(code).map_or("other", type_name);
    match (name, code) {
        ("other", 17..=20) => "float8".into(),
        ("other", 21) => "uint4".into(),
        ("other", 22) => "int4".into(),
        ("other", _) => format!("type {code}"),
        (n, _) => n.into(),
    }
}

/// Refuses an integer operand of a type fff does not quantise with (int16, say), where import can
/// tell it. (An initializer of such a type is refused when it is read.)
fn check_input_type(g: &Graph, cx: &NodeCtx, o: OutletId, what: &str) -> Result<()> {
    match known_dtype(g, o) {
        Some(d) if !(d.is_quantised() || d == DType::I32) => Err(cx.err(format!(
            "{what} is {d}; fff's quantised types are uint8 and int8 (and int32 for DequantizeLinear)"
        ))),
        _ => Ok(()),
    }
}

/// A constant scale must be positive and finite.
fn check_constant_scale(g: &Graph, cx: &NodeCtx, scale: OutletId, what: &str) -> Result<()> {
    let Some(t) = g.const_value(scale) else {
        return Ok(());
    };
    match &**t {
        Tensor::F32(a) => {
            let v: Vec<f32> = a.iter().copied().collect();
            check_scales(&v).map_err(|e| cx.err(format!("{what}: {e}")))
        }
        other => Err(cx.err(format!(
            "{what} is {}; fff takes float32 scales",
            other.dtype()
        ))),
    }
}

/// An int32 x takes no zero point but 0 (ONNX: int32 is not quantised with an offset).
fn check_int32_zero_point(
    g: &Graph,
    cx: &NodeCtx,
    x: OutletId,
    zero_point: Option<OutletId>,
) -> Result<()> {
    if known_dtype(g, x) != Some(DType::I32) {
        return Ok(());
    }
    match zero_point.and_then(|z| g.const_value(z)) {
        Some(t) if matches!(&**t, Tensor::I32(a) if a.iter().any(|&v| v != 0)) => {
            Err(cx.err("an int32 x takes no zero point other than 0"))
        }
        _ => Ok(()),
    }
}
