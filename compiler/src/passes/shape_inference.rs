//! Shape and type inference.
//!
//! Guarantees: after it runs, every output slot of every op node carries the facts its op's shape rule
//! ([`fff_runtime::opset::Op::infer`]) can prove from the facts of its inputs, in topological order; model inputs and
//! constants keep the facts they were created with. A definite contradiction is an error naming the node.

use crate::error::{CompileError, Result};
use crate::ir::{Fact, Graph, NodeKind};

pub fn run(g: &mut Graph) -> Result<bool> {
    let mut changed = false;
    for n in g.topo_order() {
        let NodeKind::Op(op) = &g.node(n).kind else {
            continue;
        };
        let inputs = g.inputs_of(n);
        let facts: Vec<Option<&Fact>> = inputs.iter().map(|i| i.map(|o| g.fact(o))).collect();
        let n_out = g.node(n).outputs.len();
        let out = op.infer(&facts, n_out).map_err(|msg| CompileError::Pass {
            node: g.node(n).name.clone(),
            msg,
        })?;
        // An error if the op gives another number of outputs than the node has.
        changed |= g.set_facts(n, out)?;
    }
    Ok(changed)
}
