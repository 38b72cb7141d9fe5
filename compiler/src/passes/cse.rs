//! Common-subexpression elimination.
//!
//! Guarantees: no two constants hold the same dtype, shape and bytes, and no two op nodes apply the same
//! op to the same inputs; the later of each pair is replaced by the earlier (in topological order).

use std::collections::HashMap;

use crate::error::Result;
use crate::ir::{Graph, NodeKind, OutletId};

pub fn run(g: &mut Graph) -> Result<bool> {
    let mut changed = false;
    // Constants by (dtype, shape, content hash); equal hashes are confirmed by comparing values.
    type ConstKey = (fff_runtime::DType, Vec<usize>, u64);
    let mut consts: HashMap<ConstKey, Vec<petgraph::stable_graph::NodeIndex>> = HashMap::new();
    // Op nodes by what they compute: the op (floats by bit pattern), its inputs and output count.
    type OpKey = (fff_runtime::op::Op, Vec<Option<OutletId>>, usize);
    let mut ops: HashMap<OpKey, petgraph::stable_graph::NodeIndex> = HashMap::new();
    for n in g.topo_order() {
        let canonical = match &g.node(n).kind {
            NodeKind::Input => continue,
            NodeKind::Const(t) => {
                let key = (t.dtype(), t.shape().to_vec(), t.content_hash());
                let same = consts.get(&key).and_then(|seen| {
                    seen.iter().copied().find(|&c| {
                        g.const_value(OutletId::new(c, 0))
                            .is_some_and(|u| **u == **t)
                    })
                });
                match same {
                    Some(c) => c,
                    None => {
                        consts.entry(key).or_default().push(n);
                        continue;
                    }
                }
            }
            NodeKind::Op(op) => {
                let key = (op.clone(), g.inputs_of(n), g.node(n).outputs.len());
                match ops.get(&key) {
                    Some(&c) => c,
                    None => {
                        ops.insert(key, n);
                        continue;
                    }
                }
            }
        };
        for slot in 0..g.node(n).outputs.len() {
            g.replace_uses(OutletId::new(n, slot), OutletId::new(canonical, slot));
        }
        changed = true;
    }
    Ok(changed)
}
