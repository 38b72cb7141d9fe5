//! Reduced-precision weights, a lowering run only when asked for (`fffc compile --weights bf16`),
//! after `pack-weights`.
//!
//! Guarantees: every
//!
//! ```text
//! FastFeedForward(X, W_in, B_in?, W_out, B_out?)
//!   W_in, W_out: float32 constants
//!   the trees run on the tree kernel at any row count (see fff_ops::fff::uses_tree_kernel)
//! ```
//!
//! reads W_in and W_out as bfloat16 constants, each weight rounded to the nearest bfloat16 (ties to
//! even). Biases, activations and all arithmetic stay float32: the kernel widens each weight exactly.
//! Layers that run as GEMMs (depth 0, wide shallow forests) keep float32 weights, since widening them on
//! every call would cost more than the halved bytes save. Nothing else changes.

use std::sync::Arc;

use fff_ops::fff::{uses_tree_kernel, FffShape};
use fff_runtime::op::{FastFeedForward, Op, WeightLayout};
use fff_runtime::tensor::Bf16;
use fff_runtime::Tensor;

use crate::error::Result;
use crate::ir::{Graph, OutletId};
use crate::Options;

/// Rounds the weights; the pipeline runs it only when `options.weights` is bf16.
pub fn run(g: &mut Graph, _: &Options) -> Result<bool> {
    let mut changed = false;
    for node in g.topo_order() {
        let Some(&Op::FastFeedForward { depth, trees, .. }) = g.op(node) else {
            continue;
        };
        let mut inputs = g.inputs_of(node);
        let (Some(w_in), Some(w_out)) = (
            inputs[FastFeedForward::W_IN],
            inputs[FastFeedForward::W_OUT],
        ) else {
            continue;
        };
        let (Some(Tensor::F32(wi)), Some(Tensor::F32(wo))) = (
            g.const_value(w_in).map(Arc::as_ref),
            g.const_value(w_out).map(Arc::as_ref),
        ) else {
            continue;
        };
        let node_major = |shape: &[usize]| {
            FastFeedForward::weight_layout(shape) == Some(WeightLayout::NodeMajor)
        };
        if !node_major(wi.shape()) || !node_major(wo.shape()) {
            continue;
        }
        let shape = FffShape {
            d_in: wi.shape()[1],
            d_out: wo.shape()[1],
            depth,
            trees,
        };
        if !uses_tree_kernel(shape, usize::MAX) {
            continue;
        }
        let (wi, wo) = (wi.mapv(Bf16::from_f32), wo.mapv(Bf16::from_f32));
        let name = g.node(node).name.clone();
        inputs[FastFeedForward::W_IN] =
            Some(g.add_const(&format!("{name}/w_in_bf16"), Tensor::BF16(wi)));
        inputs[FastFeedForward::W_OUT] =
            Some(g.add_const(&format!("{name}/w_out_bf16"), Tensor::BF16(wo)));
        let op = g.op(node).expect("matched above").clone();
        g.replace_with_op(OutletId::new(node, 0), &name, op, &inputs);
        changed = true;
    }
    if changed {
        crate::passes::dead_code::run(g)?;
    }
    Ok(changed)
}
