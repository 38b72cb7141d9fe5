//! Constant folding.
//!
//! Guarantees: an op node whose inputs are all constants is evaluated once, with the runtime's own
//! evaluator, and its outputs are replaced by constants; so is an integer value whose elements shape
//! inference proved (such as `Shape -> Gather` of a fixed axis). Folding is skipped where it would store a
//! constant much larger than its inputs (for example `ConstantOfShape` or `Expand` to a big shape), so
//! the plan does not grow. A `DequantizeLinear` of integer weights that a `MatMul` or `Gemm` reads is
//! kept (see [`keeps_integer_weights`]).

use fff_runtime::opset::{eval, with_element_limit, DequantizeLinear, Op};
use fff_runtime::{Tensor, TensorView};

use crate::error::{CompileError, Result};
use crate::ir::{Graph, NodeKind, OutletId};

/// Folded outputs may be this many elements larger than all constant inputs together.
const GROWTH_ALLOWANCE: usize = 1 << 16;

pub fn run(g: &mut Graph) -> Result<bool> {
    let mut changed = false;
    for n in g.topo_order() {
        let NodeKind::Op(op) = &g.node(n).kind else {
            continue;
        };
        let inputs = g.inputs_of(n);
        if keeps_integer_weights(g, n, op, &inputs) {
            continue;
        }
        let all_const = inputs.iter().flatten().all(|o| g.const_value(*o).is_some());
        let outputs: Vec<Option<Tensor>> = if all_const {
            let views: Vec<Option<TensorView>> = inputs
                .iter()
                .map(|i| i.map(|o| g.const_value(o).expect("checked").view()))
                .collect();
            let in_len: usize = views.iter().flatten().map(TensorView::len).sum();
            let limit = in_len + GROWTH_ALLOWANCE;
            let outs = match with_element_limit(limit, || eval(op, &views, g.node(n).outputs.len()))
            {
                Ok(outs) => outs,
                // Too big to fold: the op runs at run time (and fails there if it is absurd).
                Err(fff_runtime::Error::TooLarge(_)) => continue,
                Err(e) => {
                    return Err(CompileError::Pass {
                        node: g.node(n).name.clone(),
                        msg: format!("while folding constants: {e}"),
                    })
                }
            };
            if outs.iter().map(Tensor::len).sum::<usize>() > in_len + GROWTH_ALLOWANCE {
                continue;
            }
            outs.into_iter().map(Some).collect()
        } else {
            g.node(n).outputs.iter().map(proven_value).collect()
        };
        let name = g.node(n).name.clone();
        for (slot, t) in outputs.into_iter().enumerate() {
            let Some(t) = t else { continue };
            let old = OutletId::new(n, slot);
            if g.consumers(old).is_empty() && !g.is_output(old) {
                continue;
            }
            let c = g.add_const(&name, t);
            g.replace_uses(old, c);
            changed = true;
        }
    }
    Ok(changed)
}

/// Whether `n` is a `DequantizeLinear` of uint8/int8 constant weights read by a `MatMul` or `Gemm`.
/// Folding it would store the weights as f32 and lose the integer codes and scales that the
/// quantised lowering moves onto the int8 kernels; that lowering folds whatever it leaves.
fn keeps_integer_weights(
    g: &Graph,
    n: petgraph::stable_graph::NodeIndex,
    op: &Op,
    inputs: &[Option<OutletId>],
) -> bool {
    let x = inputs.get(DequantizeLinear::X).copied().flatten();
    matches!(op, Op::DequantizeLinear { .. })
        && x.and_then(|x| g.const_value(x))
            .is_some_and(|t| t.dtype().is_quantised())
        && g.consumers(OutletId::new(n, 0))
            .iter()
            .any(|&(c, _)| matches!(g.op(c), Some(Op::MatMul | Op::Gemm { .. })))
}

/// An integer tensor of rank 0 or 1 whose elements are all proven.
fn proven_value(f: &crate::ir::Fact) -> Option<Tensor> {
    let v = f.known_value()?;
    let shape = f.known_shape()?;
    if shape.len() > 1 || shape.iter().product::<usize>() != v.len() {
        return None;
    }
    match f.dtype? {
        fff_runtime::DType::I64 => Some(if shape.is_empty() {
            Tensor::scalar_i64(v[0])
        } else {
            Tensor::vec_i64(v)
        }),
        fff_runtime::DType::I32 => {
            let a = ndarray::ArrayD::from_shape_vec(
                ndarray::IxDyn(&shape),
                v.iter().map(|&x| x as i32).collect(),
            )
            .ok()?;
            Some(Tensor::I32(a))
        }
        _ => None,
    }
}
