//! ONNX import: the protobuf (through `tract_onnx::pb`, without tract's own model) into the IR.
//!
//! Initializers and `Constant` nodes become constants; graph inputs become model inputs with symbolic
//! dimensions (`dim_param` names, or `<input>_dim<axis>` where the file names none); every node becomes
//! one or more IR ops (see `ops`).

mod attrs;
mod ops;
mod quant;
mod single_assignment;
pub mod tensor;

use std::collections::HashMap;
use std::path::Path;

use fff_runtime::DType;
use tract_onnx::pb::{type_proto, ModelProto};
use tract_onnx::prelude::Framework;

use crate::error::{CompileError, Result};
use crate::ir::{Dim, Fact, Graph, OutletId};
use attrs::NodeCtx;

/// The default-domain opsets the importer is written and tested for.
pub const SUPPORTED_OPSETS: std::ops::RangeInclusive<i64> = 7..=22;

/// Reads and imports an ONNX file.
pub fn import_path(path: &Path) -> Result<Graph> {
    let bytes = std::fs::read(path).map_err(|e| CompileError::Read {
        path: path.display().to_string(),
        cause: e,
    })?;
    let proto = parse(&bytes)?;
    import_model(&proto, path.parent())
}

/// Parses ONNX protobuf bytes.
pub fn parse(bytes: &[u8]) -> Result<ModelProto> {
    tract_onnx::onnx()
        .proto_model_for_read(&mut &bytes[..])
        .map_err(|e| CompileError::Parse(format!("{e:#}")))
}

/// Imports a parsed model. `model_dir` resolves external weight files.
pub fn import_model(proto: &ModelProto, model_dir: Option<&Path>) -> Result<Graph> {
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| CompileError::Parse("the model has no graph".into()))?;
    let opset_of = |domain: &str| {
        proto
            .opset_import
            .iter()
            .find(|o| o.domain == domain || (domain.is_empty() && o.domain == "ai.onnx"))
            .map(|o| o.version)
    };
    let default_opset = opset_of("").unwrap_or(*SUPPORTED_OPSETS.end());
    if !SUPPORTED_OPSETS.contains(&default_opset) {
        return Err(CompileError::Parse(format!(
            "opset {default_opset} is not supported (fff imports opsets {} to {})",
            SUPPORTED_OPSETS.start(),
            SUPPORTED_OPSETS.end()
        )));
    }

    single_assignment::check(graph)?;

    let mut g = Graph::default();
    let mut values: HashMap<String, OutletId> = HashMap::new();
    for init in &graph.initializer {
        let t = tensor::tensor_from_proto(init, model_dir).map_err(|e| {
            // Name a node that reads it, so that (for example) an int16 zero point is reported at
            // the QuantizeLinear that uses it.
            match graph.node.iter().find(|n| n.input.contains(&init.name)) {
                Some(n) => {
                    CompileError::Parse(format!("{e}, read by node '{}' ({})", n.name, n.op_type))
                }
                None => CompileError::Parse(e),
            }
        })?;
        values.insert(init.name.clone(), g.add_const(&init.name, t));
    }
    for input in &graph.input {
        if values.contains_key(&input.name) {
            continue; // an initializer listed as an input (IR < 4): a constant
        }
        let fact = input_fact(input)?;
        let n = g.add_input(&input.name, fact);
        values.insert(input.name.clone(), OutletId::new(n, 0));
    }

    // ONNX asks for topologically sorted nodes; tolerate files that are not, by deferring nodes whose
    // inputs are not yet defined.
    let producers: HashMap<&str, usize> = graph
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
        .collect();
    let mut pending: Vec<usize> = (0..graph.node.len()).collect();
    let mut unavailable: HashMap<String, String> = HashMap::new();
    while !pending.is_empty() {
        let mut next = Vec::new();
        for &i in &pending {
            let node = &graph.node[i];
            let ready = node.input.iter().all(|name| {
                name.is_empty() || values.contains_key(name) || unavailable.contains_key(name)
            });
            if !ready {
                let missing = node.input.iter().find(|n| {
                    !n.is_empty() && !values.contains_key(*n) && !unavailable.contains_key(*n)
                });
                if let Some(m) = missing {
                    if !producers.contains_key(m.as_str()) {
                        return Err(CompileError::Graph(format!(
                            "node '{}' reads '{m}', which no node, input or initializer defines",
                            node.name
                        )));
                    }
                }
                next.push(i);
                continue;
            }
            if let Some(bad) = node.input.iter().find(|n| unavailable.contains_key(*n)) {
                return Err(CompileError::Graph(format!(
                    "node '{}' reads '{bad}', an optional output of node '{}' that fff does not compute",
                    node.name, unavailable[bad]
                )));
            }
            let opset = opset_of(&node.domain).unwrap_or(if node.domain.is_empty() {
                default_opset
            } else {
                1
            });
            let cx = NodeCtx { node, opset };
            let inputs: Vec<Option<OutletId>> = node
                .input
                .iter()
                .map(|n| if n.is_empty() { None } else { Some(values[n]) })
                .collect();
            let outs = ops::import_node(&mut g, &cx, &inputs)?;
            for (k, name) in node.output.iter().enumerate() {
                if name.is_empty() {
                    continue;
                }
                match outs.get(k).copied().flatten() {
                    Some(o) => {
                        values.insert(name.clone(), o);
                    }
                    None => {
                        unavailable.insert(name.clone(), node.name.clone());
                    }
                }
            }
        }
        if next.len() == pending.len() {
            let names: Vec<&str> = next
                .iter()
                .take(5)
                .map(|&i| graph.node[i].name.as_str())
                .collect();
            return Err(CompileError::Graph(format!(
                "the graph has a cycle through nodes {names:?}"
            )));
        }
        pending = next;
    }

    for out in &graph.output {
        let o = values.get(&out.name).ok_or_else(|| {
            CompileError::Graph(match unavailable.get(&out.name) {
                Some(node) => format!(
                    "output '{}' is an optional output of node '{node}' that fff does not compute",
                    out.name
                ),
                None => format!("output '{}' is not computed by any node", out.name),
            })
        })?;
        g.add_output(&out.name, *o);
    }
    if g.outputs().is_empty() {
        return Err(CompileError::Graph("the model has no outputs".into()));
    }
    Ok(g)
}

/// A model input's dtype and symbolic shape.
fn input_fact(input: &tract_onnx::pb::ValueInfoProto) -> Result<Fact> {
    let bad = |msg: String| CompileError::Graph(format!("input '{}': {msg}", input.name));
    let tensor = match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => t,
        _ => return Err(bad("is not a tensor".into())),
    };
    let dtype = DType::from_onnx(tensor.elem_type).ok_or_else(|| {
        bad(format!(
            "element type {} is not supported",
            tensor::type_name(tensor.elem_type)
        ))
    })?;
    let shape = tensor
        .shape
        .as_ref()
        .ok_or_else(|| bad("declares no shape, so its rank is unknown".into()))?;
    let dims = shape
        .dim
        .iter()
        .enumerate()
        .map(|(axis, d)| {
            use tract_onnx::pb::tensor_shape_proto::dimension::Value;
            match &d.value {
                Some(Value::DimValue(v)) if *v >= 0 => Dim::Known(*v),
                Some(Value::DimParam(p)) if !p.is_empty() => Dim::Sym(p.clone()),
                _ => Dim::Sym(format!("{}_dim{axis}", input.name)),
            }
        })
        .collect();
    Ok(Fact::new(dtype, dims))
}
