//! GatherND of single indices as Gather.
//!
//! Guarantees: no `GatherND` with `batch_dims` 0 whose index tuples are known to hold one index remains:
//! it is the same as a `Gather` along axis 0 by the indices with their last axis squeezed away,
//!
//! ```text
//!   GatherND(data, indices [..., 1])  =>  Gather{axis 0}(data, Squeeze(indices, [-1]))
//! ```
//!
//! which is how the dynamo exporter writes `weights[node]` for a tensor of node numbers, and how the
//! feedforward pass recognises a row gather of constant weights.

use fff_runtime::op::Op;
use fff_runtime::tensor::Tensor;

use crate::error::Result;
use crate::ir::{Dim, Graph, NodeKind, OutletId};

pub fn run(g: &mut Graph) -> Result<bool> {
    let mut changed = false;
    for n in g.topo_order() {
        let NodeKind::Op(Op::GatherNd { batch_dims: 0 }) = &g.node(n).kind else {
            continue;
        };
        let inputs = g.inputs_of(n);
        let (Some(Some(data)), Some(Some(indices))) =
            (inputs.first().copied(), inputs.get(1).copied())
        else {
            continue;
        };
        let one_index = g
            .fact(indices)
            .shape
            .as_ref()
            .is_some_and(|s| s.last() == Some(&Dim::Known(1)));
        if !one_index {
            continue;
        }
        let name = g.node(n).name.clone();
        let axes = g.add_const(
            &format!("{name}/last_axis"),
            Tensor::I64(ndarray::arr1(&[-1i64]).into_dyn()),
        );
        let squeezed = g.add_op(
            &format!("{name}/indices"),
            Op::Squeeze,
            &[Some(indices), Some(axes)],
            1,
        );
        let gather = g.add_op(
            &format!("{name}/rows"),
            Op::Gather { axis: 0 },
            &[Some(data), Some(OutletId::new(squeezed, 0))],
            1,
        );
        g.replace_uses(OutletId::new(n, 0), OutletId::new(gather, 0));
        changed = true;
    }
    Ok(changed)
}
