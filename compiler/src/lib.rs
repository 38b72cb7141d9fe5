//! fff compiler: imports ONNX transformer graphs into the fff IR, rewrites and optimises them, and
//! writes plans for the runtime. See `docs/ARCHITECTURE.md`.

pub mod dump;
pub mod error;
pub mod import;
pub mod ir;
pub mod passes;
pub mod plan_writer;
pub mod quant_cost;
pub mod report;
pub mod text;

use std::path::Path;

pub use error::{CompileError, Result};
pub use ir::Graph;

/// The precision of the weights that a plan stores for conditional (tree) FastFeedForward layers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Weights {
    /// As the model has them.
    #[default]
    F32,
    /// Rounded to bfloat16 (see [`passes::bf16_weights`]): half the bytes, about 3 significant digits.
    Bf16,
}

/// The precision of the projections and dense feedforward layers (`fffc compile --quantize`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Quantize {
    /// As the model has them.
    #[default]
    F32,
    /// int8 weights per output column, activations quantised per row at run time
    /// (see [`passes::quantize`]).
    Int8,
    /// bfloat16 weights, activations rounded to bfloat16 per call.
    Bf16,
}

/// What a compile produces, as `fffc compile`'s flags say it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The precision of tree-kernel FastFeedForward weights (`--weights`).
    pub weights: Weights,
    /// The precision of the projections (`--quantize`).
    pub quantize: Quantize,
    /// Columns per weight panel of the dense products, a divisor of 64 (`--panel-cols`): see
    /// [`passes::panel_width`]. 64 leaves them as `pack-weights` packs them.
    pub panel_cols: usize,
    /// Stop after the step of [`passes::PIPELINE`] with this name (`--stop-after`); a rewrite step
    /// stops after its first run.
    pub stop_after: Option<String>,
    /// Check the graph with [`ir::verify`] after every step: on by default in debug builds and tests.
    pub verify: bool,
    /// The tokenizer and text defaults to store in the plan (`--tokenizer`): see [`text`].
    pub text: Option<text::TextOptions>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            weights: Weights::F32,
            quantize: Quantize::F32,
            panel_cols: fff_ops::panels::PANEL_COLS,
            stop_after: None,
            verify: cfg!(debug_assertions),
            text: None,
        }
    }
}

/// Imports an ONNX file and runs the pipeline.
pub fn compile_path(path: &Path, options: &Options) -> Result<Graph> {
    let mut g = import::import_path(path)?;
    passes::run(&mut g, options, &mut |_, _| {})?;
    Ok(g)
}

/// Imports ONNX bytes and runs the pipeline.
pub fn compile_bytes(bytes: &[u8], options: &Options) -> Result<Graph> {
    let proto = import::parse(bytes)?;
    let mut g = import::import_model(&proto, None)?;
    passes::run(&mut g, options, &mut |_, _| {})?;
    Ok(g)
}

/// Compiles ONNX bytes straight to the bytes of a plan file, with the text section
/// [`Options::text`] asks for.
pub fn compile_to_plan_bytes(bytes: &[u8], options: &Options) -> Result<Vec<u8>> {
    let g = compile_bytes(bytes, options)?;
    plan_bytes(&g, options)
}

/// The bytes of the plan file for a compiled graph, with the text section [`Options::text`] asks
/// for (its tokenizer read and checked against the model here).
pub fn plan_bytes(g: &Graph, options: &Options) -> Result<Vec<u8>> {
    let (mut graph, weights) = plan_writer::to_plan(g)?;
    if let Some(text) = &options.text {
        graph.text = Some(text::text_section(text, g, &graph)?.0);
    }
    Ok(fff_runtime::plan::encode(&graph, &weights))
}

/// Compiles the ONNX file `input` into the plan file `output` (written atomically), as
/// `fffc compile` does without its reports.
pub fn compile_file(input: &Path, output: &Path, options: &Options) -> Result<()> {
    let g = compile_path(input, options)?;
    let bytes = plan_bytes(&g, options)?;
    plan_writer::write_bytes(&bytes, output)
}
