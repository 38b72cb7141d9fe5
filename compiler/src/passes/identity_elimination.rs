//! Identity elimination.
//!
//! Guarantees: no op that provably returns its input unchanged remains: `Identity` (and `Dropout`, imported
//! as `Identity`), a `Cast` to the type the value already has, a `Reshape`/`Expand` to the shape it already
//! has, a `Squeeze`/`Unsqueeze`/`Transpose` that changes nothing. Readers are rewired to the input.

use fff_runtime::op::Op;

use crate::error::Result;
use crate::ir::{Graph, NodeKind, OutletId};

pub fn run(g: &mut Graph) -> Result<bool> {
    let mut changed = false;
    for n in g.topo_order() {
        let NodeKind::Op(op) = &g.node(n).kind else {
            continue;
        };
        let inputs = g.inputs_of(n);
        let Some(Some(src)) = inputs.first().copied() else {
            continue;
        };
        let (fin, fout) = (g.fact(src), &g.node(n).outputs[0]);
        let same_shape = fin.shape.is_some()
            && fin.shape == fout.shape
            && fin
                .shape
                .as_ref()
                .is_some_and(|s| s.iter().all(|d| *d != crate::ir::Dim::Unknown));
        let noop = match op {
            Op::Identity => true,
            Op::Cast { to } => fin.dtype == Some(*to),
            Op::Reshape { .. } | Op::Expand | Op::Squeeze | Op::Unsqueeze => same_shape,
            Op::Transpose { perm: Some(p) } => p.iter().enumerate().all(|(i, &a)| a == i as i64),
            _ => false,
        };
        if noop {
            g.replace_uses(OutletId::new(n, 0), src);
            changed = true;
        }
    }
    Ok(changed)
}
