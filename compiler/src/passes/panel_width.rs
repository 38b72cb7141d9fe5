//! Narrower weight panels, a lowering run only when asked for (`fffc compile --panel-cols C`), after
//! `pack-weights`.
//!
//! Guarantees: every
//!
//! ```text
//! PackedLinear { n }(X, Wp [ceil(n / 64), k, 64], B?, R?)
//! FastFeedForward { depth: 0 }(X, W_in [trees / 64, d_in, 64], B_in?, W_out [d_out / 64, trees, 64], B_out?)
//! ```
//!
//! reads the same matrices as panels `C` columns wide (`[ceil(n / C), k, C]`, `C` a divisor of 64),
//! the layout in which the runtime would otherwise repack them at load on a CPU whose GEMM reads `C`
//! best (16 without AVX-512, see `fff_runtime::panel_width`). Such a plan loads there without a copy;
//! a CPU that reads another width best repacks it at load as it would a 64-column plan. A weight read
//! by several nodes is repacked once. Nothing else changes.

use std::collections::HashMap;
use std::sync::Arc;

use fff_ops::panels::{panel_count_of, repack_panels, PANEL_COLS};
use fff_runtime::op::Op;
use fff_runtime::panel_width::{panel_inputs, panel_matrix};
use fff_runtime::Tensor;
use ndarray::{ArrayD, IxDyn};

use crate::error::{CompileError, Result};
use crate::ir::{Graph, OutletId};
use crate::Options;

/// Repacks to `options.panel_cols` columns; the pipeline runs it only when that is not 64.
pub fn run(g: &mut Graph, options: &Options) -> Result<bool> {
    let cols = options.panel_cols;
    if cols == 0 || !PANEL_COLS.is_multiple_of(cols) {
        return Err(CompileError::Option(format!(
            "panel width {cols}: it must divide {PANEL_COLS}"
        )));
    }
    let mut done: HashMap<OutletId, OutletId> = HashMap::new();
    let mut changed = false;
    for node in g.topo_order() {
        let Some(op) = g.op(node).cloned() else {
            continue;
        };
        let panels = panel_inputs(&op);
        if panels.is_empty() {
            continue;
        }
        let mut inputs = g.inputs_of(node);
        let mut repacked = Vec::new();
        for &i in panels {
            let Some(w) = inputs.get(i).copied().flatten() else {
                break;
            };
            match repacked_const(g, &mut done, &op, w, cols) {
                Some(p) => repacked.push((i, p)),
                None => break,
            }
        }
        // A dense FastFeedForward reads both weights at one width: all of a node's panels or none.
        if repacked.len() != panels.len() {
            continue;
        }
        for (i, p) in repacked {
            inputs[i] = Some(p);
        }
        let name = g.node(node).name.clone();
        g.replace_with_op(OutletId::new(node, 0), &name, op, &inputs);
        changed = true;
    }
    // Also drops repacked constants that a node then did not take, and the originals nobody reads.
    if !done.is_empty() {
        crate::passes::dead_code::run(g)?;
    }
    Ok(changed)
}

/// The constant `w`, float32 panels 64 wide as `op` reads them, as panels `cols` wide, made on first
/// use; `None` if `w` is no such constant.
fn repacked_const(
    g: &mut Graph,
    done: &mut HashMap<OutletId, OutletId>,
    op: &Op,
    w: OutletId,
    cols: usize,
) -> Option<OutletId> {
    if let Some(&p) = done.get(&w) {
        return Some(p);
    }
    let Some(Tensor::F32(t)) = g.const_value(w).map(Arc::as_ref) else {
        return None;
    };
    let (k, n) = panel_matrix(op, t.shape()).filter(|_| t.shape()[2] == PANEL_COLS)?;
    let data = repack_panels(t.as_slice()?, k, n, PANEL_COLS, cols)?;
    let shape = IxDyn(&[panel_count_of(n, cols), k, cols]);
    let packed = Tensor::F32(ArrayD::from_shape_vec(shape, data).expect("panel length"));
    let name = format!("{}/{cols}", g.node(w.node).name);
    let out = g.add_const(&name, packed);
    done.insert(w, out);
    Some(out)
}
