//! ONNX graphs are in single static assignment form: every value has one writer — a graph input, an
//! initializer (which may share its name with the input it gives a default) or one output of one node.
//! A value written twice would otherwise be imported with the last writer winning, silently.

use std::collections::HashMap;

use tract_onnx::pb::{GraphProto, NodeProto};

use crate::error::{CompileError, Result};

/// Who defines a value.
#[derive(Clone, Copy)]
enum Writer {
    Input,
    Initializer,
    /// The node at this index of the graph's node list.
    Node(usize),
}

/// Checks that no value of the graph (not its subgraphs: the importer takes none) is written twice.
/// Empty output names mark absent optional outputs and may repeat.
pub fn check(graph: &GraphProto) -> Result<()> {
    let mut writers: HashMap<&str, Writer> = HashMap::new();
    for input in &graph.input {
        if writers.insert(&input.name, Writer::Input).is_some() {
            return Err(twice(graph, &input.name, Writer::Input, Writer::Input));
        }
    }
    for init in &graph.initializer {
        match writers.insert(&init.name, Writer::Initializer) {
            // An initializer may give a graph input its default value.
            None | Some(Writer::Input) => {}
            Some(earlier) => {
                return Err(twice(graph, &init.name, earlier, Writer::Initializer));
            }
        }
    }
    for (i, node) in graph.node.iter().enumerate() {
        for name in node.output.iter().filter(|n| !n.is_empty()) {
            if let Some(earlier) = writers.insert(name, Writer::Node(i)) {
                return Err(twice(graph, name, earlier, Writer::Node(i)));
            }
        }
    }
    Ok(())
}

fn twice(graph: &GraphProto, value: &str, first: Writer, second: Writer) -> CompileError {
    let describe = |w: Writer| match w {
        Writer::Input => "a graph input".to_string(),
        Writer::Initializer => "an initializer".to_string(),
        Writer::Node(i) => node_name(&graph.node[i], i),
    };
    let msg = match (first, second) {
        (Writer::Node(a), Writer::Node(b)) if a == b => {
            format!("value '{value}' is written twice by {}", describe(first))
        }
        _ => format!(
            "value '{value}' is written twice: by {} and by {}",
            describe(first),
            describe(second)
        ),
    };
    CompileError::Graph(msg)
}

/// `node 'name'`, or the node's position and op type where it has no name.
fn node_name(node: &NodeProto, index: usize) -> String {
    if node.name.is_empty() {
        format!("node #{index} ({})", node.op_type)
    } else {
        format!("node '{}' ({})", node.name, node.op_type)
    }
}
