//! The graph section of a plan: values numbered `0..num_values`, each defined once, by a model input, a
//! constant (bytes in the weights section) or a node output; nodes listed in execution order.

use serde::{Deserialize, Serialize};

use crate::op::Op;
use crate::tensor::DType;
use crate::text::TextConfig;

/// One dimension of a model input: a fixed size or a named symbol (`batch`, `seq`) that every input
/// using the same name must agree on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(usize),
    Sym(String),
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(d) => write!(f, "{d}"),
            Dim::Sym(s) => f.write_str(s),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanInput {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<Dim>,
    pub value: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanOutput {
    pub name: String,
    pub value: usize,
    /// The output's element type and symbolic shape as the compiler inferred them; absent in plans
    /// written before they were recorded, and where inference could not tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<DType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<Vec<Dim>>,
}

/// A constant: `len` bytes at `offset` in the weights section, little-endian, row-major.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanConstant {
    pub value: usize,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub len: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanNode {
    pub name: String,
    pub op: Op,
    /// `None` marks an absent optional input.
    pub inputs: Vec<Option<usize>>,
    pub outputs: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanGraph {
    /// The tool that wrote the plan, for humans.
    pub producer: String,
    pub num_values: usize,
    pub inputs: Vec<PlanInput>,
    pub outputs: Vec<PlanOutput>,
    pub constants: Vec<PlanConstant>,
    pub nodes: Vec<PlanNode>,
    /// The tokenizer and text defaults (`fffc compile --tokenizer`); see [`crate::text`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextConfig>,
}
