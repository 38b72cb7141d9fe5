//! The IR to a plan: values numbered (inputs, then constants, then node outputs in topological order),
//! constants laid into the weights section, symbolic input dims carried over by name.

use std::collections::HashMap;
use std::path::Path;

use fff_runtime::plan::{
    self, Dim as PlanDim, PlanConstant, PlanGraph, PlanInput, PlanNode, PlanOutput, WeightsBuilder,
};

use crate::error::{CompileError, Result};
use crate::ir::{Dim, Graph, NodeKind, OutletId};

/// Symbolic dims as the plan names them: an unknown dim of `owner` becomes the symbol `owner_dimN`.
fn plan_dims(shape: &[Dim], owner: &str) -> Vec<PlanDim> {
    shape
        .iter()
        .enumerate()
        .map(|(axis, d)| match d {
            Dim::Known(v) => PlanDim::Fixed(*v as usize),
            Dim::Sym(s) => PlanDim::Sym(s.clone()),
            Dim::Unknown => PlanDim::Sym(format!("{owner}_dim{axis}")),
        })
        .collect()
}

pub fn to_plan(g: &Graph) -> Result<(PlanGraph, Vec<u8>)> {
    let order = g.topo_order();
    let mut ids: HashMap<OutletId, usize> = HashMap::new();
    let mut next = 0usize;
    let mut inputs = Vec::new();
    for &n in g.inputs() {
        let node = g.node(n);
        let fact = &node.outputs[0];
        let dtype = fact
            .dtype
            .ok_or_else(|| CompileError::Graph(format!("input '{}' has no dtype", node.name)))?;
        let shape = fact
            .shape
            .as_ref()
            .ok_or_else(|| CompileError::Graph(format!("input '{}' has no rank", node.name)))?;
        let shape = plan_dims(shape, &node.name);
        ids.insert(OutletId::new(n, 0), next);
        inputs.push(PlanInput {
            name: node.name.clone(),
            dtype,
            shape,
            value: next,
        });
        next += 1;
    }
    let mut weights = WeightsBuilder::default();
    let mut constants = Vec::new();
    for &n in &order {
        if let NodeKind::Const(t) = &g.node(n).kind {
            let (offset, len) = weights.push(t);
            ids.insert(OutletId::new(n, 0), next);
            constants.push(PlanConstant {
                value: next,
                dtype: t.dtype(),
                shape: t.shape().to_vec(),
                offset,
                len,
            });
            next += 1;
        }
    }
    let mut nodes = Vec::new();
    for &n in &order {
        let node = g.node(n);
        let NodeKind::Op(op) = &node.kind else {
            continue;
        };
        let ins = g.inputs_of(n).iter().map(|i| i.map(|o| ids[&o])).collect();
        let outs: Vec<usize> = (0..node.outputs.len())
            .map(|s| {
                ids.insert(OutletId::new(n, s), next);
                next += 1;
                next - 1
            })
            .collect();
        nodes.push(PlanNode {
            name: node.name.clone(),
            op: op.clone(),
            inputs: ins,
            outputs: outs,
        });
    }
    let outputs = g
        .outputs()
        .iter()
        .map(|(name, o)| {
            let fact = &g.node(o.node).outputs[o.slot];
            PlanOutput {
                name: name.clone(),
                value: ids[o],
                dtype: fact.dtype,
                // Informational only (outputs bind nothing): an unknown dim is shown as `?`.
                shape: fact.shape.as_ref().map(|s| {
                    s.iter()
                        .map(|d| match d {
                            Dim::Known(v) => PlanDim::Fixed(*v as usize),
                            Dim::Sym(s) => PlanDim::Sym(s.clone()),
                            Dim::Unknown => PlanDim::Sym("?".to_string()),
                        })
                        .collect()
                }),
            }
        })
        .collect();
    let graph = PlanGraph {
        producer: format!("fffc {}", env!("CARGO_PKG_VERSION")),
        num_values: next,
        inputs,
        outputs,
        constants,
        nodes,
        text: None,
    };
    Ok((graph, weights.into_bytes()))
}

/// Writes the plan file for `g`.
pub fn write_plan(g: &Graph, path: &Path) -> Result<()> {
    let (graph, weights) = to_plan(g)?;
    write_bytes(&plan::encode(&graph, &weights), path)
}

/// Writes a plan file's bytes.
pub fn write_bytes(bytes: &[u8], path: &Path) -> Result<()> {
    // Atomic: a plan may be memory-mapped by a running process, which must never see it half-written.
    fff_runtime::files::write_atomic(path, |w| std::io::Write::write_all(w, bytes)).map_err(|e| {
        CompileError::Write {
            path: path.display().to_string(),
            cause: e,
        }
    })
}
