//! The graph as stable text: values numbered in topological order, constants shown by dtype, shape and a
//! content hash (small integer constants by value), no petgraph indices or node names, so the same model
//! always dumps the same way. Snapshot tests keep this text.

use std::collections::HashMap;
use std::fmt::Write;

use fff_runtime::op::Op;
use fff_runtime::Tensor;

use crate::ir::{Graph, NodeKind, OutletId};

pub fn dump(g: &Graph) -> String {
    let mut names: HashMap<OutletId, String> = HashMap::new();
    let mut out = String::new();
    let mut next = 0usize;
    let mut fresh = |names: &mut HashMap<OutletId, String>, o: OutletId| {
        let s = format!("%{next}");
        next += 1;
        names.insert(o, s.clone());
        s
    };
    for &n in g.inputs() {
        let o = OutletId::new(n, 0);
        let v = fresh(&mut names, o);
        writeln!(out, "input {v} {}: {}", g.node(n).name, g.fact(o)).unwrap();
    }
    for n in g.topo_order() {
        let node = g.node(n);
        match &node.kind {
            NodeKind::Input => {}
            NodeKind::Const(t) => {
                let v = fresh(&mut names, OutletId::new(n, 0));
                writeln!(out, "{v} = const {}", describe_const(t)).unwrap();
            }
            NodeKind::Op(op) => {
                let args: Vec<String> = g
                    .inputs_of(n)
                    .iter()
                    .map(|i| i.map_or_else(|| "_".to_string(), |o| names[&o].clone()))
                    .collect();
                let results: Vec<String> = (0..node.outputs.len())
                    .map(|s| fresh(&mut names, OutletId::new(n, s)))
                    .collect();
                let facts: Vec<String> = node.outputs.iter().map(ToString::to_string).collect();
                writeln!(
                    out,
                    "{} = {}({}) : {}",
                    results.join(", "),
                    op_text(op),
                    args.join(", "),
                    facts.join(", ")
                )
                .unwrap();
            }
        }
    }
    for (name, o) in g.outputs() {
        writeln!(
            out,
            "output {name} = {}",
            names.get(o).map_or("?", String::as_str)
        )
        .unwrap();
    }
    out
}

/// `Add`, `Gemm { alpha: 1.0, .. }`: element-wise kinds by name, other ops with their attributes.
pub fn op_text(op: &Op) -> String {
    match op {
        Op::Unary(_) | Op::Binary(_) => op.name(),
        other => format!("{other:?}"),
    }
}

fn describe_const(t: &Tensor) -> String {
    let dims: Vec<String> = t.shape().iter().map(ToString::to_string).collect();
    let head = format!("{}[{}]", t.dtype(), dims.join(", "));
    match t {
        Tensor::I64(a) if a.len() <= 8 => format!("{head} {:?}", a.iter().collect::<Vec<_>>()),
        Tensor::I32(a) if a.len() <= 8 => format!("{head} {:?}", a.iter().collect::<Vec<_>>()),
        Tensor::Bool(a) if a.len() <= 8 => format!("{head} {:?}", a.iter().collect::<Vec<_>>()),
        Tensor::F32(a) if a.len() == 1 => format!("{head} {:?}", a.iter().next().unwrap()),
        _ => format!("{head} #{:016x}", t.content_hash()),
    }
}
