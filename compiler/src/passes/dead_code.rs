//! Dead-code elimination.
//!
//! Guarantees: every remaining op and constant node contributes to a graph output. Model inputs are kept
//! even when unused, so that the compiled model accepts the same inputs as the ONNX file.

use std::collections::HashSet;

use crate::error::Result;
use crate::ir::{Graph, NodeKind};

pub fn run(g: &mut Graph) -> Result<bool> {
    let mut live = HashSet::new();
    let mut stack: Vec<_> = g.outputs().iter().map(|(_, o)| o.node).collect();
    while let Some(n) = stack.pop() {
        if live.insert(n) {
            stack.extend(g.producers(n));
        }
    }
    let dead: Vec<_> = g
        .node_indices()
        .filter(|n| !live.contains(n) && !matches!(g.node(*n).kind, NodeKind::Input))
        .collect();
    let changed = !dead.is_empty();
    for n in dead {
        g.remove_node(n);
    }
    Ok(changed)
}
