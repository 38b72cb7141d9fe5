//! The bundled fixtures in `models/fixtures`: `NAME.onnx`, `NAME.input.json`, `NAME.expected.json`.

use std::path::PathBuf;

/// Every bundled fixture.
pub const ALL: &[&str] = &[
    "bert-tiny",
    "bert-tiny-dynamo",
    "dense-encoder-tiny",
    "fff-encoder-tiny",
    "fff-encoder-tiny-dynamo",
    "fff-encoder-2trees",
    "fff-layer-gather",
    "fff-layer-customop",
    "hf-bert-op11",
    "hf-bert-gelu-tanh",
    "hf-bert-gelu-tanh-dynamo",
    "hf-bert-sdpa",
    "hf-bert-relu-cls",
    "hf-bert-odd-mlm",
    "hf-roberta",
    "hf-distilbert",
    "hf-albert",
    "hf-deberta-v2",
    "hf-mpnet",
    "ufb-layer-levels",
    "ufb-layer-levels-dynamo",
    "ufb-forest-einsum",
    "ufb-forest-indexed",
    "ufb-forest-indexed-dynamo",
];

/// The models quantised before import (`models/fixtures/export_quantized.py`), whose references are
/// ONNX Runtime's outputs on the same quantised file: compared by row cosine, since one activation
/// code rounded the other way moves an output by a quantisation step.
pub const QUANTISED: &[&str] = &[
    "bert-tiny-qdyn",
    "bert-tiny-qdyn-pc",
    "dense-encoder-tiny-qdyn-u8",
    "bert-tiny-qdq",
    "hf-bert-relu-cls-qdq",
    "hf-distilbert-qdq",
    "qlinear-matmul-mlp",
    "qlinear-matmul-mlp-op21",
    "bert-tiny-qdyn-ortopt",
    "hf-bert-relu-cls-qdyn-ortopt",
];

/// The folder that holds the fixtures.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

pub struct Fixture {
    pub name: &'static str,
    pub onnx: PathBuf,
    pub input: PathBuf,
    pub expected: PathBuf,
}

pub fn get(name: &'static str) -> Fixture {
    let d = dir();
    Fixture {
        name,
        onnx: d.join(format!("{name}.onnx")),
        input: d.join(format!("{name}.input.json")),
        expected: d.join(format!("{name}.expected.json")),
    }
}

/// For a dynamo export, the TorchScript export of the same weights (which tract can run as an oracle).
pub fn torchscript_twin(name: &str) -> Option<&'static str> {
    match name {
        "bert-tiny-dynamo" => Some("bert-tiny"),
        "fff-encoder-tiny-dynamo" => Some("fff-encoder-tiny"),
        "hf-bert-gelu-tanh-dynamo" => Some("hf-bert-gelu-tanh"),
        "ufb-layer-levels-dynamo" => Some("ufb-layer-levels"),
        "ufb-forest-indexed-dynamo" => Some("ufb-forest-indexed"),
        _ => None,
    }
}
