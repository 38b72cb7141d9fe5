//! `fff.compile`: an ONNX file to a plan file, as `fffc compile` makes it.

use std::path::PathBuf;

use fff_compiler::text::TextOptions;
use fff_compiler::{compile_file, Options};
use pyo3::prelude::*;

use crate::{fff_error, options};

/// Compiles the ONNX model `onnx_path` into the plan file `plan_path` (written atomically), as
/// `fffc compile` does.
///
/// `tokenizer` (a `tokenizer.json`, or a Hugging Face or sentence-transformers model folder) stores
/// a tokenizer in the plan, for `Model.embed` and `Model.tokenize`, checked against the model's
/// embedding and position tables; `pooling` ("cls", "mean", "max", "none"), `normalize` and
/// `max_length` set the plan's defaults for embed (None takes the folder's settings, else none).
/// `quantize` is "int8", "bf16" or "f32" (the default): the precision of the projections and dense
/// feedforward layers. Paths are str or os.PathLike.
#[pyfunction]
#[pyo3(signature = (onnx_path, plan_path, tokenizer = None, quantize = None, *, pooling = None, normalize = None, max_length = None))]
#[allow(clippy::too_many_arguments)]
pub fn compile(
    py: Python<'_>,
    onnx_path: PathBuf,
    plan_path: PathBuf,
    tokenizer: Option<PathBuf>,
    quantize: Option<&str>,
    pooling: Option<&str>,
    normalize: Option<bool>,
    max_length: Option<usize>,
) -> PyResult<()> {
    let quantize = options::quantize(quantize)?;
    let pooling = options::pooling(pooling)?;
    let text = match tokenizer {
        Some(tokenizer) => Some(TextOptions {
            tokenizer,
            pooling,
            normalize,
            max_length,
            ..TextOptions::default()
        }),
        None if pooling.is_some() || normalize.is_some() || max_length.is_some() => {
            return Err(fff_error(fff_compiler::CompileError::Option(
                "pooling, normalize and max_length are defaults of the plan's text section: give a \
                 tokenizer too"
                    .to_string(),
            )))
        }
        None => None,
    };
    let options = Options {
        quantize,
        text,
        ..Options::default()
    };
    py.detach(|| compile_file(&onnx_path, &plan_path, &options))
        .map_err(fff_error)
}
