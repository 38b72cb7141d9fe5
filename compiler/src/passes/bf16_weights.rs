//! Reduced-precision weights, a lowering run only when asked for (`fffc compile --weights bf16`),
//! after `pack-weights`.
//!
//! Guarantees: every
//!
//! ```text
//! FastFeedForward(X, W_in, B_in?, W_out, B_out?)
//!   depth > 0 (conditional trees)
//!   W_in, W_out: float32 constants, unpacked
//! ```
//!
//! reads W_in and W_out as bfloat16 constants, each weight rounded to the nearest bfloat16 (ties to
//! even). Biases, activations and all arithmetic stay float32: the kernels widen each weight exactly.
//! Which layers are stored so is a storage contract, not a kernel choice: every strategy the runtime
//! may pick for a conditional layer reads bf16 (the tree kernel as stored, the masked GEMM of wide
//! shallow forests at many rows widening it per call). Dense layers (depth 0) run as GEMMs only, where
//! bf16 would be widened on every call and save nothing: they keep float32. Nothing else changes.

use std::sync::Arc;

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
        let Some(&Op::FastFeedForward { depth, .. }) = g.op(node) else {
            continue;
        };
        if depth == 0 {
            continue;
        }
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
