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
//! place; and every dense feedforward
//!
//! ```text
//! FastFeedForward { depth: 0, trees }(X, W_in, B_in?, W_out, B_out?)
//!   W_in: float32 constant [trees, d_in], W_out: float32 constant [trees, d_out]
//!   trees and d_out multiples of 64
//! ```
//!
//! reads W_in as the panels of its transpose, `[trees / 64, d_in, 64]`, and W_out as its panels,
//! `[d_out / 64, trees, 64]` (no padding, so the shapes say the sizes). Results are the same tensors,
//! up to the order in which the GEMM sums. A weight read by several nodes is packed once. Narrower
//! weights stay as they are: padding them to a whole panel would cost more bytes than packing saves.

use std::collections::HashMap;
use std::sync::Arc;

use fff_ops::panels::{pack_panels, panel_count, PANEL_COLS};
use fff_runtime::op::Op;
use fff_runtime::Tensor;
use ndarray::{ArrayD, IxDyn};

use crate::error::Result;
use crate::ir::{Graph, OutletId};

/// Which way a constant is packed.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum As {
    /// `[k, n]` as its panels.
    Panels,
    /// `[n, k]` as the panels of its transpose.
    TransposedPanels,
}

pub fn run(g: &mut Graph) -> Result<bool> {
    let mut packed: HashMap<(OutletId, As), OutletId> = HashMap::new();
    let mut changed = false;
    for node in g.topo_order() {
        let mut inputs = g.inputs_of(node);
        let op = match g.op(node) {
            Some(Op::Linear) => {
                let Some((k, n)) = inputs[1].and_then(|w| f32_matrix(g, w)) else {
                    continue;
                };
                if !worth_packing(n) {
                    continue;
                }
                inputs[1] = Some(pack(g, &mut packed, inputs[1], As::Panels, (k, n)));
                Op::PackedLinear { n }
            }
            Some(op @ Op::FastFeedForward { depth: 0, .. }) => {
                let op = op.clone();
                let (Some((trees, d_in)), Some((trees_out, d_out))) = (
                    inputs[1].and_then(|w| f32_matrix(g, w)),
                    inputs[3].and_then(|w| f32_matrix(g, w)),
                ) else {
                    continue;
                };
                if trees != trees_out
                    || !trees.is_multiple_of(PANEL_COLS)
                    || !d_out.is_multiple_of(PANEL_COLS)
                {
                    continue;
                }
                let (w_in, w_out) = (inputs[1], inputs[3]);
                inputs[1] = Some(pack(
                    g,
                    &mut packed,
                    w_in,
                    As::TransposedPanels,
                    (trees, d_in),
                ));
                inputs[3] = Some(pack(g, &mut packed, w_out, As::Panels, (trees, d_out)));
                op
            }
            _ => continue,
        };
        let name = g.node(node).name.clone();
        g.replace_with_op(OutletId::new(node, 0), &name, op, &inputs);
        changed = true;
    }
    if changed {
        crate::passes::dead_code::run(g)?;
    }
    Ok(changed)
}

/// The shape of `w` if it is a float32 constant matrix.
fn f32_matrix(g: &Graph, w: OutletId) -> Option<(usize, usize)> {
    match g.const_value(w).map(Arc::as_ref) {
        Some(Tensor::F32(t)) => match *t.shape() {
            [r, c] => Some((r, c)),
            _ => None,
        },
        _ => None,
    }
}

/// The packed constant for matrix `w` (`rows x cols`, a float32 constant), made on first use.
fn pack(
    g: &mut Graph,
    done: &mut HashMap<(OutletId, As), OutletId>,
    w: Option<OutletId>,
    how: As,
    (rows, cols): (usize, usize),
) -> OutletId {
    let w = w.expect("checked by the caller");
    if let Some(&p) = done.get(&(w, how)) {
        return p;
    }
    let Some(Tensor::F32(t)) = g.const_value(w).map(Arc::as_ref) else {
        unreachable!("checked by the caller")
    };
    let values: Vec<f32> = match how {
        As::Panels => t.iter().copied().collect(),
        As::TransposedPanels => t.t().iter().copied().collect(),
    };
    let (k, n) = match how {
        As::Panels => (rows, cols),
        As::TransposedPanels => (cols, rows),
    };
    let data = pack_panels(&values, k, n);
    let shape = IxDyn(&[panel_count(n), k, PANEL_COLS]);
    let packed = Tensor::F32(ArrayD::from_shape_vec(shape, data).expect("panel length"));
    let name = format!("{}/panels", g.node(w.node).name);
    let p = g.add_const(&name, packed);
    done.insert((w, how), p);
    p
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
