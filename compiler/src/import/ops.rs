//! One ONNX node to IR ops, per op type and opset. Attribute forms of inputs that later opsets turned
//! into inputs (axes, split sizes, clip bounds) become constant inputs, so the IR has one form.

use fff_runtime::op::{
    BinaryOp, FastFeedForward, FffActivation, FffBranch, Op, ReduceOp, Scalar, ScatterReduction,
    UnaryOp,
};
use fff_runtime::{DType, Tensor};

use super::attrs::NodeCtx;
use super::tensor::tensor_from_proto;
use crate::error::{CompileError, Result};
use crate::ir::{Graph, OutletId};

/// The outlets an imported node gives each of its ONNX outputs (`None`: an optional output fff does not
/// compute; reading it is an error).
pub type Outputs = Vec<Option<OutletId>>;

/// Imports the node. `inputs` holds one entry per ONNX input, `None` where the name is empty.
pub fn import_node(g: &mut Graph, cx: &NodeCtx, inputs: &[Option<OutletId>]) -> Result<Outputs> {
    let n = cx.node;
    let name = n.name.as_str();
    let req = |i: usize| -> Result<OutletId> {
        inputs
            .get(i)
            .copied()
            .flatten()
            .ok_or_else(|| cx.err(format!("input {i} is required")))
    };
    let opt = |i: usize| inputs.get(i).copied().flatten();
    let single = |g: &mut Graph, op: Op, ins: &[Option<OutletId>]| -> Outputs {
        let id = g.add_op(name, op, ins, 1);
        let mut out = vec![Some(OutletId::new(id, 0))];
        out.resize(n.output.len().max(1), None);
        out
    };
    let unary = |u: UnaryOp| Op::Unary(u);
    let binary = |b: BinaryOp| Op::Binary(b);

    if n.domain == "fff" {
        return match n.op_type.as_str() {
            "FastFeedForward" => {
                let op = fast_feed_forward(cx)?;
                Ok(single(
                    g,
                    op,
                    &[Some(req(0)?), Some(req(1)?), opt(2), Some(req(3)?), opt(4)],
                ))
            }
            _ => Err(unsupported(cx)),
        };
    }
    if n.domain == "com.microsoft" {
        return super::quant::import_microsoft(g, cx, inputs)?.ok_or_else(|| unsupported(cx));
    }
    if !(n.domain.is_empty() || n.domain == "ai.onnx") {
        return Err(unsupported(cx));
    }
    if let Some(out) = super::quant::import_default(g, cx, inputs)? {
        return Ok(out);
    }
    let op_type = n.op_type.as_str();
    let simple_unary = match op_type {
        "Neg" => Some(UnaryOp::Neg),
        "Abs" => Some(UnaryOp::Abs),
        "Exp" => Some(UnaryOp::Exp),
        "Log" => Some(UnaryOp::Log),
        "Sqrt" => Some(UnaryOp::Sqrt),
        "Reciprocal" => Some(UnaryOp::Reciprocal),
        "Erf" => Some(UnaryOp::Erf),
        "Tanh" => Some(UnaryOp::Tanh),
        "Relu" => Some(UnaryOp::Relu),
        "Sigmoid" => Some(UnaryOp::Sigmoid),
        "Floor" => Some(UnaryOp::Floor),
        "Ceil" => Some(UnaryOp::Ceil),
        "Sin" => Some(UnaryOp::Sin),
        "Cos" => Some(UnaryOp::Cos),
        "Sign" => Some(UnaryOp::Sign),
        "Softplus" => Some(UnaryOp::Softplus),
        "Not" => Some(UnaryOp::Not),
        "IsNaN" => Some(UnaryOp::IsNaN),
        _ => None,
    };
    if let Some(u) = simple_unary {
        return Ok(single(g, unary(u), &[Some(req(0)?)]));
    }
    let simple_binary = match op_type {
        "Add" => Some(BinaryOp::Add),
        "Sub" => Some(BinaryOp::Sub),
        "Mul" => Some(BinaryOp::Mul),
        "Div" => Some(BinaryOp::Div),
        "Pow" => Some(BinaryOp::Pow),
        "Equal" => Some(BinaryOp::Equal),
        "Less" => Some(BinaryOp::Less),
        "LessOrEqual" => Some(BinaryOp::LessOrEqual),
        "Greater" => Some(BinaryOp::Greater),
        "GreaterOrEqual" => Some(BinaryOp::GreaterOrEqual),
        "And" => Some(BinaryOp::And),
        "Or" => Some(BinaryOp::Or),
        "Xor" => Some(BinaryOp::Xor),
        _ => None,
    };
    if let Some(b) = simple_binary {
        return Ok(single(g, binary(b), &[Some(req(0)?), Some(req(1)?)]));
    }
    let out = match op_type {
        "Identity" => single(g, Op::Identity, &[Some(req(0)?)]),
        "Dropout" => single(g, Op::Identity, &[Some(req(0)?)]),
        "IsInf" => {
            if cx.int_or("detect_negative", 1)? != 1 || cx.int_or("detect_positive", 1)? != 1 {
                return Err(cx.err("IsInf detecting only one sign is not supported"));
            }
            single(g, unary(UnaryOp::IsInf), &[Some(req(0)?)])
        }
        "Gelu" => {
            let u = match cx.string("approximate")?.as_deref().unwrap_or("none") {
                "none" => UnaryOp::Gelu,
                "tanh" => UnaryOp::GeluTanh,
                other => return Err(cx.err(format!("unknown approximate '{other}'"))),
            };
            single(g, unary(u), &[Some(req(0)?)])
        }
        "Mod" => {
            let b = if cx.int_or("fmod", 0)? == 1 {
                BinaryOp::Fmod
            } else {
                BinaryOp::Mod
            };
            single(g, binary(b), &[Some(req(0)?), Some(req(1)?)])
        }
        "Max" | "Min" | "Sum" | "Mean" => {
            let b = match op_type {
                "Max" => BinaryOp::Max,
                "Min" => BinaryOp::Min,
                _ => BinaryOp::Add,
            };
            let ins: Vec<OutletId> = inputs
                .iter()
                .copied()
                .collect::<Option<_>>()
                .ok_or_else(|| cx.err("an input is empty"))?;
            let mut acc = *ins
                .first()
                .ok_or_else(|| cx.err("needs at least one input"))?;
            for (i, &x) in ins.iter().enumerate().skip(1) {
                acc = OutletId::new(
                    g.add_op(&format!("{name}/{i}"), binary(b), &[Some(acc), Some(x)], 1),
                    0,
                );
            }
            if op_type == "Mean" {
                let count = g.add_const(
                    &format!("{name}/count"),
                    Tensor::scalar_f32(ins.len() as f32),
                );
                acc = OutletId::new(
                    g.add_op(name, binary(BinaryOp::Div), &[Some(acc), Some(count)], 1),
                    0,
                );
            } else if ins.len() == 1 {
                acc = OutletId::new(g.add_op(name, Op::Identity, &[Some(acc)], 1), 0);
            }
            vec![Some(acc)]
        }
        "Where" => single(g, Op::Where, &[Some(req(0)?), Some(req(1)?), Some(req(2)?)]),
        "Clip" => {
            if cx.opset < 11 {
                let lo = cx.float_or("min", f32::MIN)?;
                let hi = cx.float_or("max", f32::MAX)?;
                let lo = g.add_const(&format!("{name}/min"), Tensor::scalar_f32(lo));
                let hi = g.add_const(&format!("{name}/max"), Tensor::scalar_f32(hi));
                single(g, Op::Clip, &[Some(req(0)?), Some(lo), Some(hi)])
            } else {
                single(g, Op::Clip, &[Some(req(0)?), opt(1), opt(2)])
            }
        }
        "Cast" => {
            let to = cx
                .int("to")?
                .ok_or_else(|| cx.err("attribute 'to' is required"))?;
            let dt = DType::from_onnx(to as i32).ok_or_else(|| {
                cx.err(format!(
                    "cast to {} is not supported",
                    super::tensor::type_name(to as i32)
                ))
            })?;
            single(g, Op::Cast { to: dt }, &[Some(req(0)?)])
        }
        "CastLike" => {
            let like = req(1)?;
            let dt = g
                .const_value(like)
                .map(|t| t.dtype())
                .or(g.fact(like).dtype)
                .ok_or_else(|| cx.err("the type of the second input is not known at import"))?;
            single(g, Op::Cast { to: dt }, &[Some(req(0)?)])
        }
        "Shape" => single(
            g,
            Op::Shape {
                start: cx.int_or("start", 0)?,
                end: cx.int("end")?,
            },
            &[Some(req(0)?)],
        ),
        "Size" => single(g, Op::Size, &[Some(req(0)?)]),
        "Reshape" => single(
            g,
            Op::Reshape {
                allowzero: cx.int_or("allowzero", 0)? != 0,
            },
            &[Some(req(0)?), Some(req(1)?)],
        ),
        "Flatten" => single(
            g,
            Op::Flatten {
                axis: cx.int_or("axis", 1)?,
            },
            &[Some(req(0)?)],
        ),
        "Squeeze" | "Unsqueeze" => {
            let axes = axes_input(g, cx, inputs, 13)?;
            if op_type == "Squeeze" {
                single(g, Op::Squeeze, &[Some(req(0)?), axes])
            } else {
                let axes = axes.ok_or_else(|| cx.err("Unsqueeze needs axes"))?;
                single(g, Op::Unsqueeze, &[Some(req(0)?), Some(axes)])
            }
        }
        "Transpose" => single(
            g,
            Op::Transpose {
                perm: cx.ints("perm")?,
            },
            &[Some(req(0)?)],
        ),
        "Einsum" => {
            let equation = cx
                .string("equation")?
                .ok_or_else(|| cx.err("attribute 'equation' is required"))?;
            let ins = all_present(inputs, cx)?;
            single(g, Op::Einsum { equation }, &ins)
        }
        "Concat" => {
            let axis = cx
                .int("axis")?
                .ok_or_else(|| cx.err("attribute 'axis' is required"))?;
            let ins = all_present(inputs, cx)?;
            single(g, Op::Concat { axis }, &ins)
        }
        "Split" => {
            let axis = cx.int_or("axis", 0)?;
            let sizes = if cx.opset < 13 {
                cx.ints("split")?
                    .map(|s| g.add_const(&format!("{name}/split"), Tensor::vec_i64(s)))
            } else {
                opt(1)
            };
            let num_outputs = match cx.int("num_outputs")? {
                Some(k) if k as usize != n.output.len() || k <= 0 => {
                    return Err(cx.err(format!("num_outputs {k} but {} outputs", n.output.len())))
                }
                _ => n.output.len(),
            };
            let id = g.add_op(
                name,
                Op::Split { axis, num_outputs },
                &[Some(req(0)?), sizes],
                n.output.len(),
            );
            (0..n.output.len())
                .map(|i| Some(OutletId::new(id, i)))
                .collect()
        }
        "Slice" if cx.opset < 10 => {
            // Slice-1: starts, ends and axes are attributes, with no steps.
            let mut attr_input = |key: &str| -> Result<Option<OutletId>> {
                Ok(cx
                    .ints(key)?
                    .map(|v| g.add_const(&format!("{name}/{key}"), Tensor::vec_i64(v))))
            };
            let starts =
                attr_input("starts")?.ok_or_else(|| cx.err("attribute 'starts' is required"))?;
            let ends = attr_input("ends")?.ok_or_else(|| cx.err("attribute 'ends' is required"))?;
            let axes = attr_input("axes")?;
            single(
                g,
                Op::Slice,
                &[Some(req(0)?), Some(starts), Some(ends), axes, None],
            )
        }
        "Slice" => single(
            g,
            Op::Slice,
            &[Some(req(0)?), Some(req(1)?), Some(req(2)?), opt(3), opt(4)],
        ),
        "Expand" => single(g, Op::Expand, &[Some(req(0)?), Some(req(1)?)]),
        "Tile" => single(g, Op::Tile, &[Some(req(0)?), Some(req(1)?)]),
        "Gather" => single(
            g,
            Op::Gather {
                axis: cx.int_or("axis", 0)?,
            },
            &[Some(req(0)?), Some(req(1)?)],
        ),
        "GatherElements" => single(
            g,
            Op::GatherElements {
                axis: cx.int_or("axis", 0)?,
            },
            &[Some(req(0)?), Some(req(1)?)],
        ),
        "GatherND" => single(
            g,
            Op::GatherNd {
                batch_dims: cx.int_or("batch_dims", 0)?,
            },
            &[Some(req(0)?), Some(req(1)?)],
        ),
        "ScatterElements" | "Scatter" | "ScatterND" => {
            let reduction = match cx.string("reduction")?.as_deref().unwrap_or("none") {
                "none" => ScatterReduction::None,
                "add" => ScatterReduction::Add,
                "mul" => ScatterReduction::Mul,
                "max" => ScatterReduction::Max,
                "min" => ScatterReduction::Min,
                other => return Err(cx.err(format!("unknown reduction '{other}'"))),
            };
            let op = if op_type == "ScatterND" {
                Op::ScatterNd { reduction }
            } else {
                Op::ScatterElements {
                    axis: cx.int_or("axis", 0)?,
                    reduction,
                }
            };
            single(g, op, &[Some(req(0)?), Some(req(1)?), Some(req(2)?)])
        }
        "ConstantOfShape" => {
            let value = match cx.tensor("value")? {
                None => Scalar::f32(0.0),
                Some(t) => {
                    let t = tensor_from_proto(t, None).map_err(|e| cx.err(e))?;
                    if t.len() != 1 {
                        return Err(cx.err("attribute 'value' must hold one element"));
                    }
                    match t {
                        Tensor::F32(a) => Scalar::f32(a.iter().copied().next().unwrap_or(0.0)),
                        Tensor::I64(a) => Scalar::I64(a.iter().copied().next().unwrap_or(0)),
                        Tensor::I32(a) => Scalar::I32(a.iter().copied().next().unwrap_or(0)),
                        Tensor::Bool(a) => Scalar::Bool(a.iter().copied().next().unwrap_or(false)),
                        Tensor::BF16(_) | Tensor::I8(_) | Tensor::U8(_) => {
                            return Err(cx.err(format!("a {} 'value' is not supported", t.dtype())));
                        }
                    }
                }
            };
            single(g, Op::ConstantOfShape { value }, &[Some(req(0)?)])
        }
        "Range" => single(g, Op::Range, &[Some(req(0)?), Some(req(1)?), Some(req(2)?)]),
        "CumSum" => single(
            g,
            Op::CumSum {
                exclusive: cx.int_or("exclusive", 0)? != 0,
                reverse: cx.int_or("reverse", 0)? != 0,
            },
            &[Some(req(0)?), Some(req(1)?)],
        ),
        "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceProd" => {
            let op = match op_type {
                "ReduceMean" => ReduceOp::Mean,
                "ReduceSum" => ReduceOp::Sum,
                "ReduceMax" => ReduceOp::Max,
                "ReduceMin" => ReduceOp::Min,
                _ => ReduceOp::Prod,
            };
            // ReduceSum took axes as an input from opset 13, the others from opset 18.
            let since = if op == ReduceOp::Sum { 13 } else { 18 };
            let axes = axes_input(g, cx, inputs, since)?;
            let keepdims = cx.int_or("keepdims", 1)? != 0;
            let noop = cx.int_or("noop_with_empty_axes", 0)? != 0;
            single(
                g,
                Op::Reduce {
                    op,
                    keepdims,
                    noop_with_empty_axes: noop,
                },
                &[Some(req(0)?), axes],
            )
        }
        "ArgMax" => single(
            g,
            Op::ArgMax {
                axis: cx.int_or("axis", 0)?,
                keepdims: cx.int_or("keepdims", 1)? != 0,
                select_last_index: cx.int_or("select_last_index", 0)? != 0,
            },
            &[Some(req(0)?)],
        ),
        "MatMul" => single(g, Op::MatMul, &[Some(req(0)?), Some(req(1)?)]),
        "Gemm" => single(
            g,
            Op::Gemm {
                alpha: cx.float_or("alpha", 1.0)?.into(),
                beta: cx.float_or("beta", 1.0)?.into(),
                trans_a: cx.int_or("transA", 0)? != 0,
                trans_b: cx.int_or("transB", 0)? != 0,
            },
            &[Some(req(0)?), Some(req(1)?), opt(2)],
        ),
        "Softmax" | "LogSoftmax" => {
            let coerce_2d = cx.opset < 13;
            let axis = cx.int_or("axis", if coerce_2d { 1 } else { -1 })?;
            let op = if op_type == "Softmax" {
                Op::Softmax { axis, coerce_2d }
            } else {
                Op::LogSoftmax { axis, coerce_2d }
            };
            single(g, op, &[Some(req(0)?)])
        }
        "LayerNormalization" => {
            let op = Op::LayerNorm {
                axis: cx.int_or("axis", -1)?,
                epsilon: cx.float_or("epsilon", 1e-5)?.into(),
            };
            single(g, op, &[Some(req(0)?), Some(req(1)?), opt(2)])
        }
        "Constant" => vec![Some(constant(g, cx)?)],
        _ => return Err(unsupported(cx)),
    };
    Ok(out)
}

/// Every input of a variadic op, each required.
fn all_present(inputs: &[Option<OutletId>], cx: &NodeCtx) -> Result<Vec<Option<OutletId>>> {
    inputs
        .iter()
        .map(|i| i.ok_or_else(|| cx.err("an input is empty")).map(Some))
        .collect()
}

fn unsupported(cx: &NodeCtx) -> CompileError {
    CompileError::UnsupportedOp {
        op_type: cx.node.op_type.clone(),
        domain: cx.node.domain.clone(),
        opset: cx.opset,
        node: cx.node.name.clone(),
    }
}

/// The axes of Squeeze, Unsqueeze and Reduce*: an input from opset `since`, an attribute before.
fn axes_input(
    g: &mut Graph,
    cx: &NodeCtx,
    inputs: &[Option<OutletId>],
    since: i64,
) -> Result<Option<OutletId>> {
    if cx.opset >= since {
        return Ok(inputs.get(1).copied().flatten());
    }
    Ok(cx
        .ints("axes")?
        .map(|a| g.add_const(&format!("{}/axes", cx.node.name), Tensor::vec_i64(a))))
}

fn constant(g: &mut Graph, cx: &NodeCtx) -> Result<OutletId> {
    let name = &cx.node.name;
    let t = if let Some(t) = cx.tensor("value")? {
        tensor_from_proto(t, None).map_err(|e| cx.err(e))?
    } else if let Some(v) = cx.int("value_int")? {
        Tensor::scalar_i64(v)
    } else if let Some(v) = cx.ints("value_ints")? {
        Tensor::vec_i64(v)
    } else if cx.has("value_float") {
        Tensor::scalar_f32(cx.float_or("value_float", 0.0)?)
    } else if let Some(v) = cx.floats("value_floats")? {
        Tensor::F32(ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[v.len()]), v).expect("1-D"))
    } else {
        return Err(cx.err(
            "Constant without a supported value attribute (value, value_int(s), value_float(s))",
        ));
    };
    Ok(g.add_const(name, t))
}

/// The `FastFeedForward` node of domain `fff`.
fn fast_feed_forward(cx: &NodeCtx) -> Result<Op> {
    let depth = cx
        .int("depth")?
        .ok_or_else(|| cx.err("attribute 'depth' is required"))?;
    let trees = cx.int_or("trees", 1)?;
    let deepest = FastFeedForward::MAX_DEPTH as i64;
    if !(0..=deepest).contains(&depth) || trees < 1 {
        return Err(cx.err(format!("depth {depth} and trees {trees} are out of range")));
    }
    let activation = match cx.string("activation")?.as_deref().unwrap_or("gelu") {
        "gelu" => FffActivation::Gelu,
        "gelu_tanh" => FffActivation::GeluTanh,
        "relu" => FffActivation::Relu,
        other => return Err(cx.err(format!("unknown activation '{other}'"))),
    };
    let branch = match cx.string("branch")?.as_deref().unwrap_or("gt") {
        "gt" => FffBranch::Gt,
        "ge" => FffBranch::Ge,
        other => return Err(cx.err(format!("unknown branch '{other}'"))),
    };
    Ok(Op::FastFeedForward {
        depth: depth as usize,
        trees: trees as usize,
        activation,
        branch,
    })
}
