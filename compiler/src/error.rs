//! Compile errors: each names what was wrong and where.

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// A file could not be read; the message includes the OS error.
    #[error("cannot read {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    /// A file could not be written; the message includes the OS error.
    #[error("cannot write {path}: {cause}")]
    Write { path: String, cause: std::io::Error },
    #[error("not a valid ONNX model: {0}")]
    Parse(String),
    /// An op type the importer does not know.
    #[error("unsupported op '{op_type}' (domain '{domain}', opset {opset}) at node '{node}'")]
    UnsupportedOp {
        op_type: String,
        domain: String,
        opset: i64,
        node: String,
    },
    /// A node the importer knows but whose attributes or inputs it cannot take.
    #[error("node '{node}' ({op_type}, opset {opset}): {msg}")]
    Node {
        node: String,
        op_type: String,
        opset: i64,
        msg: String,
    },
    /// The graph as a whole is inconsistent (an undefined value, a cycle, no outputs).
    #[error("invalid graph: {0}")]
    Graph(String),
    /// Evaluating or checking a node at compile time failed.
    #[error("node '{node}': {msg}")]
    Pass { node: String, msg: String },
    /// A step of the pipeline left the graph inconsistent (see `ir::verify`): a compiler bug, named by
    /// the step that made it.
    #[error("the graph is invalid after step '{step}': {violation}")]
    Broken { step: String, violation: String },
    /// The tokenizer or sentence-transformers folder given with `--tokenizer` is unreadable, or does
    /// not fit the model.
    #[error("tokenizer: {0}")]
    Text(String),
    /// A compile option the compiler cannot take.
    #[error("invalid option: {0}")]
    Option(String),
}

pub type Result<T, E = CompileError> = std::result::Result<T, E>;
