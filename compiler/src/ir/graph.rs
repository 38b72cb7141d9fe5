//! The graph container and the handful of edits passes make on it.

use std::collections::BTreeSet;
use std::sync::Arc;

use fff_runtime::op::Op;
use fff_runtime::Tensor;
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::{EdgeRef, IntoEdgeReferences};
use petgraph::Direction;

use super::fact::Fact;
use crate::error::{CompileError, Result};

/// One output slot of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OutletId {
    pub node: NodeIndex,
    pub slot: usize,
}

impl OutletId {
    pub fn new(node: NodeIndex, slot: usize) -> OutletId {
        OutletId { node, slot }
    }
}

/// A node's identity for as long as the graph lives. Unlike its `NodeIndex`, which petgraph hands to a
/// new node once the old one is removed, no two nodes of one graph ever share an id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(u64);

#[derive(Clone, Debug)]
pub enum NodeKind {
    /// A model input, in the order the model declares them.
    Input,
    Const(Arc<Tensor>),
    Op(Op),
}

#[derive(Clone, Debug)]
pub struct Node {
    /// Set by the graph when it adds the node; private so that only the graph makes nodes.
    id: NodeId,
    /// The ONNX node name (or input name), for messages.
    pub name: String,
    pub kind: NodeKind,
    /// Number of input slots; slots without an edge are absent optional inputs.
    pub n_inputs: usize,
    /// One fact per output slot.
    pub outputs: Vec<Fact>,
}

/// An edge feeds output slot `src_slot` of its source into input slot `dst_slot` of its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edge {
    pub src_slot: usize,
    pub dst_slot: usize,
}

impl Node {
    pub fn id(&self) -> NodeId {
        self.id
    }
}

/// The graph. Its storage is private: passes edit it through the methods below, which keep each input
/// slot fed at most once and every node's id fresh; `ir::verify` checks the rest.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub(super) g: StableDiGraph<Node, Edge>,
    /// The id the next node gets.
    next_id: u64,
    /// Model inputs, in declaration order.
    pub(super) inputs: Vec<NodeIndex>,
    /// Named graph outputs.
    pub(super) outputs: Vec<(String, OutletId)>,
    /// What the passes found worth telling the user (feedforward rewrites and refusals).
    pub report: crate::report::Report,
}

impl Graph {
    fn add_node(
        &mut self,
        name: &str,
        kind: NodeKind,
        n_inputs: usize,
        outputs: Vec<Fact>,
    ) -> NodeIndex {
        let id = NodeId(self.next_id);
        self.next_id += 1;
        self.g.add_node(Node {
            id,
            name: name.to_string(),
            kind,
            n_inputs,
            outputs,
        })
    }

    pub fn add_input(&mut self, name: &str, fact: Fact) -> NodeIndex {
        let n = self.add_node(name, NodeKind::Input, 0, vec![fact]);
        self.inputs.push(n);
        n
    }

    /// Names `o` as a graph output, after those named before.
    pub fn add_output(&mut self, name: &str, o: OutletId) {
        self.outputs.push((name.to_string(), o));
    }

    /// The model inputs, in declaration order.
    pub fn inputs(&self) -> &[NodeIndex] {
        &self.inputs
    }

    /// The named graph outputs, in declaration order.
    pub fn outputs(&self) -> &[(String, OutletId)] {
        &self.outputs
    }

    pub fn add_const(&mut self, name: &str, t: Tensor) -> OutletId {
        let fact = const_fact(&t);
        let n = self.add_node(name, NodeKind::Const(Arc::new(t)), 0, vec![fact]);
        OutletId::new(n, 0)
    }

    /// Adds an op node wired to `inputs` (`None` for absent optional inputs).
    pub fn add_op(
        &mut self,
        name: &str,
        op: Op,
        inputs: &[Option<OutletId>],
        n_outputs: usize,
    ) -> NodeIndex {
        let outputs = vec![Fact::unknown(); n_outputs];
        let n = self.add_node(name, NodeKind::Op(op), inputs.len(), outputs);
        for (slot, i) in inputs.iter().enumerate() {
            if let Some(o) = i {
                self.g.add_edge(
                    o.node,
                    n,
                    Edge {
                        src_slot: o.slot,
                        dst_slot: slot,
                    },
                );
            }
        }
        n
    }

    /// Adds a one-output op that computes the value `old` computes and makes every reader of `old` read
    /// it instead; the new output keeps `old`'s fact.
    pub fn replace_with_op(
        &mut self,
        old: OutletId,
        name: &str,
        op: Op,
        inputs: &[Option<OutletId>],
    ) -> NodeIndex {
        let n = self.add_op(name, op, inputs, 1);
        self.g[n].outputs[0] = self.fact(old).clone();
        self.replace_uses(old, OutletId::new(n, 0));
        n
    }

    pub fn node(&self, n: NodeIndex) -> &Node {
        &self.g[n]
    }

    /// Whether `n` is a node of the graph (not removed).
    pub fn contains_node(&self, n: NodeIndex) -> bool {
        self.g.contains_node(n)
    }

    /// Every node, in index order.
    pub fn node_indices(&self) -> impl Iterator<Item = NodeIndex> + '_ {
        self.g.node_indices()
    }

    /// The nodes `n` reads from, once per edge.
    pub fn producers(&self, n: NodeIndex) -> impl Iterator<Item = NodeIndex> + '_ {
        self.g.neighbors_directed(n, Direction::Incoming)
    }

    /// The nodes that read `n`, once per edge.
    pub fn readers(&self, n: NodeIndex) -> impl Iterator<Item = NodeIndex> + '_ {
        self.g.neighbors_directed(n, Direction::Outgoing)
    }

    /// Sets the fact of one output slot.
    pub fn set_fact(&mut self, o: OutletId, fact: Fact) {
        self.g[o.node].outputs[o.slot] = fact;
    }

    /// Sets the facts of all of a node's output slots, which must be as many as it has; returns
    /// whether any changed.
    pub fn set_facts(&mut self, n: NodeIndex, facts: Vec<Fact>) -> Result<bool> {
        let node = &mut self.g[n];
        if node.outputs.len() != facts.len() {
            return Err(CompileError::Pass {
                node: node.name.clone(),
                msg: format!(
                    "has {} outputs, its op gives {}",
                    node.outputs.len(),
                    facts.len()
                ),
            });
        }
        if node.outputs == facts {
            return Ok(false);
        }
        node.outputs = facts;
        Ok(true)
    }

    pub fn op(&self, n: NodeIndex) -> Option<&Op> {
        match &self.g[n].kind {
            NodeKind::Op(op) => Some(op),
            _ => None,
        }
    }

    /// Whether `o` is one of the graph's outputs.
    pub fn is_output(&self, o: OutletId) -> bool {
        self.outputs.iter().any(|(_, out)| *out == o)
    }

    pub fn fact(&self, o: OutletId) -> &Fact {
        &self.g[o.node].outputs[o.slot]
    }

    /// The constant an outlet carries, if its node is a constant.
    pub fn const_value(&self, o: OutletId) -> Option<&Arc<Tensor>> {
        match &self.g[o.node].kind {
            NodeKind::Const(t) => Some(t),
            _ => None,
        }
    }

    /// The inputs of a node by slot.
    pub fn inputs_of(&self, n: NodeIndex) -> Vec<Option<OutletId>> {
        let mut v = vec![None; self.g[n].n_inputs];
        for e in self.g.edges_directed(n, Direction::Incoming) {
            v[e.weight().dst_slot] = Some(OutletId::new(e.source(), e.weight().src_slot));
        }
        v
    }

    /// Nodes and slots that read an outlet.
    pub fn consumers(&self, o: OutletId) -> Vec<(NodeIndex, usize)> {
        let mut v: Vec<_> = self
            .g
            .edges_directed(o.node, Direction::Outgoing)
            .filter(|e| e.weight().src_slot == o.slot)
            .map(|e| (e.target(), e.weight().dst_slot))
            .collect();
        v.sort();
        v
    }

    /// Makes every reader of `old` (nodes and graph outputs) read `new` instead.
    pub fn replace_uses(&mut self, old: OutletId, new: OutletId) {
        let edges: Vec<_> = self
            .g
            .edges_directed(old.node, Direction::Outgoing)
            .filter(|e| e.weight().src_slot == old.slot)
            .map(|e| (e.id(), e.target(), e.weight().dst_slot))
            .collect();
        for (id, target, dst_slot) in edges {
            self.g.remove_edge(id);
            self.g.add_edge(
                new.node,
                target,
                Edge {
                    src_slot: new.slot,
                    dst_slot,
                },
            );
        }
        for (_, o) in &mut self.outputs {
            if *o == old {
                *o = new;
            }
        }
    }

    /// Removes a node and its edges.
    pub fn remove_node(&mut self, n: NodeIndex) {
        self.g.remove_node(n);
    }

    /// All nodes in a deterministic topological order: Kahn's algorithm, ties broken by creation order.
    pub fn topo_order(&self) -> Vec<NodeIndex> {
        let mut indegree: std::collections::HashMap<NodeIndex, usize> =
            self.g.node_indices().map(|n| (n, 0)).collect();
        for e in (&self.g).edge_references() {
            *indegree.get_mut(&e.target()).expect("edge endpoints exist") += 1;
        }
        let mut ready: BTreeSet<NodeIndex> = indegree
            .iter()
            .filter(|(_, &d)| d == 0)
            .map(|(&n, _)| n)
            .collect();
        let mut order = Vec::with_capacity(indegree.len());
        while let Some(n) = ready.pop_first() {
            order.push(n);
            for e in self.g.edges_directed(n, Direction::Outgoing) {
                let d = indegree.get_mut(&e.target()).expect("edge endpoints exist");
                *d -= 1;
                if *d == 0 {
                    ready.insert(e.target());
                }
            }
        }
        order
    }

    /// Number of op nodes.
    pub fn op_count(&self) -> usize {
        self.g
            .node_weights()
            .filter(|n| matches!(n.kind, NodeKind::Op(_)))
            .count()
    }
}

/// The fact of a constant: its dtype, shape and, for small integer tensors, its value.
pub fn const_fact(t: &Tensor) -> Fact {
    use super::fact::Dim;
    let shape = t.shape().iter().map(|&d| Dim::Known(d as i64)).collect();
    let value = match t.view() {
        v @ (fff_runtime::TensorView::I64(_) | fff_runtime::TensorView::I32(_))
            if v.rank() <= 1 && v.len() <= 64 =>
        {
            Some(
                v.ints()
                    .expect("integer view")
                    .into_iter()
                    .map(Dim::Known)
                    .collect(),
            )
        }
        _ => None,
    };
    Fact {
        dtype: Some(t.dtype()),
        shape: Some(shape),
        value,
    }
}
