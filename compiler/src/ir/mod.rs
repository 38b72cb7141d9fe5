//! The compiler's graph IR: a `petgraph` stable graph of nodes (model inputs, constants, ops) whose edges
//! carry which output slot of the producer feeds which input slot of the consumer. Every output slot has
//! a [`Fact`]: dtype, symbolic shape and, for small integer tensors such as shapes, a symbolic value.

mod fact;
mod graph;
pub mod verify;

pub use fact::{Dim, Fact};
pub use graph::{Edge, Graph, Node, NodeId, NodeKind, OutletId};
