//! The graph verifier: the invariants every step of the pipeline must leave intact. The pipeline runs
//! it after each step in debug builds and tests (`Options::verify`), so a pass that breaks the graph is
//! named where it does, not by a confusing failure several passes later.
//!
//! Checked: every edge reads an existing output slot of a live node and feeds an existing input slot,
//! each input slot at most once; the graph is acyclic (so every value is defined once, before its
//! readers); a node has as many output slots as its op gives, an input or constant none as input and
//! one as output; a constant's fact states its tensor's dtype and shape (and its value, where the fact
//! holds one); no op's output fact contradicts what its shape rule proves from its inputs' facts
//! (a dtype, rank, known dimension or known element that differs); the model inputs are exactly the input nodes, each listed once; every graph output
//! names an existing output slot.

use std::collections::HashSet;

use petgraph::stable_graph::NodeIndex;
use petgraph::visit::{EdgeRef, IntoEdgeReferences};

use fff_runtime::op::Op;

use super::graph::const_fact;
use super::{Dim, Fact, Graph, NodeKind, OutletId};

/// The first violation found, described; `Ok` for a sound graph.
pub fn verify(g: &Graph) -> Result<(), String> {
    let graph = &g.g;
    let name = |n: NodeIndex| format!("'{}'", graph[n].name);
    let mut fed = HashSet::new();
    for e in graph.edge_references() {
        let (src, dst, w) = (e.source(), e.target(), e.weight());
        if w.src_slot >= graph[src].outputs.len() {
            return Err(format!(
                "{} reads output {} of {}, which has {}",
                name(dst),
                w.src_slot,
                name(src),
                graph[src].outputs.len()
            ));
        }
        if w.dst_slot >= graph[dst].n_inputs {
            return Err(format!(
                "{} is fed at input {}, but has {} inputs",
                name(dst),
                w.dst_slot,
                graph[dst].n_inputs
            ));
        }
        if !fed.insert((dst, w.dst_slot)) {
            return Err(format!(
                "input {} of {} is fed twice",
                w.dst_slot,
                name(dst)
            ));
        }
    }
    let order = g.topo_order();
    if order.len() != graph.node_count() {
        let placed: HashSet<_> = order.into_iter().collect();
        let stuck = graph
            .node_indices()
            .find(|n| !placed.contains(n))
            .map_or_else(String::new, |n| format!(" (through {})", name(n)));
        return Err(format!("the graph has a cycle{stuck}"));
    }
    for n in graph.node_indices() {
        let node = &graph[n];
        let (inputs, outputs, what) = match &node.kind {
            NodeKind::Input => (Some(0), Some(1), "input".to_string()),
            NodeKind::Const(_) => (Some(0), Some(1), "constant".to_string()),
            NodeKind::Op(op) => (None, op.fixed_outputs(), op.name()),
        };
        if inputs.is_some_and(|i| i != node.n_inputs) {
            return Err(format!("{} has {} inputs", name(n), node.n_inputs));
        }
        if node.outputs.is_empty() || outputs.is_some_and(|o| o != node.outputs.len()) {
            return Err(format!(
                "{} has {} output slots, its {what} gives {}",
                name(n),
                node.outputs.len(),
                outputs.map_or_else(|| "at least 1".to_string(), |o| o.to_string())
            ));
        }
        match &node.kind {
            NodeKind::Input => {}
            NodeKind::Const(t) => {
                let (want, said) = (const_fact(t), &node.outputs[0]);
                if said.dtype != want.dtype
                    || said.shape != want.shape
                    || said
                        .value
                        .as_ref()
                        .is_some_and(|_| said.value != want.value)
                {
                    return Err(format!(
                        "constant {} is {want} but its fact says {said}",
                        name(n)
                    ));
                }
            }
            NodeKind::Op(op) => {
                if let Some((slot, proved)) = contradicted(g, n, op) {
                    return Err(format!(
                        "output {slot} of {} is said to be {}, but its inputs make it {proved}",
                        name(n),
                        node.outputs[slot]
                    ));
                }
            }
        }
    }
    let listed: HashSet<_> = g.inputs.iter().copied().collect();
    if listed.len() != g.inputs.len() {
        return Err("a model input is listed twice".to_string());
    }
    for &n in &g.inputs {
        if !graph.contains_node(n) || !matches!(graph[n].kind, NodeKind::Input) {
            return Err(format!("model input {n:?} is not an input node"));
        }
    }
    if let Some(n) = graph
        .node_indices()
        .find(|n| matches!(graph[*n].kind, NodeKind::Input) && !listed.contains(n))
    {
        return Err(format!("input node {} is not a model input", name(n)));
    }
    for (out, o) in &g.outputs {
        if !exists(g, *o) {
            return Err(format!(
                "graph output '{out}' reads output {} of {:?}, which does not exist",
                o.slot, o.node
            ));
        }
    }
    Ok(())
}

/// What the op's shape rule proves of the node's outputs from its inputs' facts; `None` where the
/// rule fails (the shape-inference step reports that, naming the node) or gives another count.
fn inferred(g: &Graph, n: NodeIndex, op: &Op) -> Option<Vec<Fact>> {
    let inputs = g.inputs_of(n);
    let facts: Vec<Option<&Fact>> = inputs.iter().map(|i| i.map(|o| g.fact(o))).collect();
    let n_out = g.g[n].outputs.len();
    op.infer(&facts, n_out).ok().filter(|f| f.len() == n_out)
}

/// The first output slot whose fact contradicts what the shape rule proves, with what it proves. A
/// fact may know more than the rule (a pass that replaces a node keeps what was known of its value),
/// never otherwise.
fn contradicted(g: &Graph, n: NodeIndex, op: &Op) -> Option<(usize, Fact)> {
    let proved = inferred(g, n, op)?;
    let slot = g.g[n]
        .outputs
        .iter()
        .zip(&proved)
        .position(|(said, proved)| !compatible(said, proved))?;
    Some((slot, proved[slot].clone()))
}

fn compatible(a: &Fact, b: &Fact) -> bool {
    let dims = |x: &Option<Vec<Dim>>, y: &Option<Vec<Dim>>| match (x, y) {
        (Some(x), Some(y)) => {
            x.len() == y.len()
                && x.iter().zip(y).all(|(x, y)| match (x, y) {
                    (Dim::Known(x), Dim::Known(y)) => x == y,
                    _ => true,
                })
        }
        _ => true,
    };
    a.dtype.zip(b.dtype).is_none_or(|(x, y)| x == y)
        && dims(&a.shape, &b.shape)
        && dims(&a.value, &b.value)
}

fn exists(g: &Graph, o: OutletId) -> bool {
    g.g.contains_node(o.node) && o.slot < g.g[o.node].outputs.len()
}

#[cfg(test)]
mod tests {
    use fff_runtime::op::{Op, UnaryOp};
    use fff_runtime::DType;

    use super::super::{Dim, Edge, Fact, Graph, OutletId};
    use super::verify;

    /// `x -> Relu -> y`.
    fn sound() -> (Graph, OutletId, petgraph::stable_graph::NodeIndex) {
        let mut g = Graph::default();
        let x = g.add_input("x", Fact::new(DType::F32, vec![]));
        let relu = g.add_op(
            "relu",
            Op::Unary(UnaryOp::Relu),
            &[Some(OutletId::new(x, 0))],
            1,
        );
        g.add_output("y", OutletId::new(relu, 0));
        (g, OutletId::new(x, 0), relu)
    }

    fn violation(g: &Graph) -> String {
        verify(g).unwrap_err()
    }

    #[test]
    fn a_sound_graph_passes() {
        verify(&sound().0).unwrap();
    }

    #[test]
    fn an_input_slot_fed_twice_is_caught() {
        let (mut g, x, relu) = sound();
        let edge = Edge {
            src_slot: 0,
            dst_slot: 0,
        };
        g.g.add_edge(x.node, relu, edge);
        assert!(violation(&g).contains("fed twice"));
    }

    #[test]
    fn a_missing_output_slot_is_caught() {
        let (mut g, x, relu) = sound();
        g.g.add_edge(
            x.node,
            relu,
            Edge {
                src_slot: 1,
                dst_slot: 0,
            },
        );
        assert!(violation(&g).contains("reads output 1"));
        let (mut g, _, relu) = sound();
        g.add_output("z", OutletId::new(relu, 3));
        assert!(violation(&g).contains("graph output 'z'"));
    }

    #[test]
    fn a_removed_output_node_is_caught() {
        let (mut g, _, relu) = sound();
        g.remove_node(relu);
        assert!(violation(&g).contains("graph output 'y'"));
    }

    #[test]
    fn a_wrong_output_count_is_caught() {
        let (mut g, x, _) = sound();
        g.add_op("two", Op::Unary(UnaryOp::Relu), &[Some(x)], 2);
        assert!(violation(&g).contains("has 2 output slots"));
    }

    #[test]
    fn a_fact_its_op_contradicts_is_caught() {
        let (mut g, _, relu) = sound();
        let y = OutletId::new(relu, 0);
        g.set_fact(y, Fact::new(DType::F32, vec![]));
        verify(&g).unwrap();
        g.set_fact(y, Fact::new(DType::I64, vec![]));
        assert!(violation(&g).contains("its inputs make it float32[]"));
        g.set_fact(y, Fact::new(DType::F32, vec![Dim::Known(2)]));
        assert!(violation(&g).contains("said to be float32[2]"));
    }

    #[test]
    fn an_unlisted_input_is_caught() {
        let (mut g, _, _) = sound();
        g.inputs.clear();
        assert!(violation(&g).contains("not a model input"));
    }
}
