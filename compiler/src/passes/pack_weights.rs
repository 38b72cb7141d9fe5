//! Weight packing, a lowering run once after the pipeline has settled.
//!
//! Guarantees: every
//!
//! ```text
//! Linear(X, W, B?, R?)
//!   W: float32 constant [k, n], with n at least 64 and the last panel's padding at most 1/8 of n
//! ```
//!
//! is `PackedLinear { n }(X, Wp, B?, R?)`, where `Wp [ceil(n / 64), k, 64]` holds W's columns in panels
//! of 64 (`fff_ops::panels`, the last zero-padded), the layout in which the GEMM reads weights in
//! place. The result is the same tensor, up to the order in which the GEMM sums. A W read by several
//! Linear nodes is packed once. Narrower weights stay as they are: padding them to a whole panel
//! would cost more bytes than packing saves.

use std::collections::HashMap;
use std::sync::Arc;

use fff_ops::panels::{pack_panels, panel_count, PANEL_COLS};
use fff_runtime::op::Op;
use fff_runtime::Tensor;
use ndarray::{ArrayD, IxDyn};

use crate::error::Result;
use crate::ir::{Graph, OutletId};

pub fn run(g: &mut Graph) -> Result<bool> {
    let mut packed: HashMap<OutletId, (OutletId, usize)> = HashMap::new();
    let mut changed = false;
    for node in g.topo_order() {
        if g.op(node) != Some(&Op::Linear) {
            continue;
        }
        let mut inputs = g.inputs_of(node);
        let Some(w) = inputs[1] else {
            continue;
        };
        let (wp, n) = match packed.get(&w) {
            Some(&done) => done,
            None => {
                let Some(Tensor::F32(wt)) = g.const_value(w).map(Arc::as_ref) else {
                    continue;
                };
                let &[k, n] = wt.shape() else {
                    continue;
                };
                if !worth_packing(n) {
                    continue;
                }
                let data = pack_panels(
                    &wt.as_standard_layout().iter().copied().collect::<Vec<_>>(),
                    k,
                    n,
                );
                let shape = IxDyn(&[panel_count(n), k, PANEL_COLS]);
                let t = Tensor::F32(ArrayD::from_shape_vec(shape, data).expect("panel length"));
                let name = format!("{}/packed", g.node(w.node).name);
                let wp = g.add_const(&name, t);
                packed.insert(w, (wp, n));
                (wp, n)
            }
        };
        inputs[1] = Some(wp);
        let name = g.node(node).name.clone();
        let new = g.add_op(&name, Op::PackedLinear { n }, &inputs, 1);
        let out = OutletId::new(node, 0);
        g.g[new].outputs[0] = g.fact(out).clone();
        g.replace_uses(out, OutletId::new(new, 0));
        changed = true;
    }
    if changed {
        crate::passes::dead_code::run(g)?;
    }
    Ok(changed)
}

/// At least one whole panel, and padding of at most 1/8 of the columns.
fn worth_packing(n: usize) -> bool {
    n >= PANEL_COLS && panel_count(n) * PANEL_COLS * 8 <= n * 9
}

#[cfg(test)]
mod tests {
    use super::worth_packing;

    #[test]
    fn packs_wide_weights_whose_padding_is_small() {
        assert!(worth_packing(64) && worth_packing(768) && worth_packing(3072));
        assert!(worth_packing(500)); // 512 columns stored
        assert!(!worth_packing(63) && !worth_packing(65) && !worth_packing(100));
    }
}
