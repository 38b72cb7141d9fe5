//! fff compiler: imports ONNX transformer graphs into the fff IR, rewrites and optimises them, and
//! writes plans for the runtime. See `docs/ARCHITECTURE.md`.

pub mod dump;
pub mod error;
pub mod import;
pub mod ir;
pub mod passes;
pub mod plan_writer;
pub mod report;

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

/// Imports an ONNX file and runs the optimisation pipeline (up to `stop_after`, a pass name, if given).
pub fn compile_path(path: &Path, stop_after: Option<&str>) -> Result<Graph> {
    let mut g = import::import_path(path)?;
    passes::optimise(&mut g, stop_after)?;
    Ok(g)
}

/// Stores the weights of a compiled graph at the given precision.
pub fn set_weights(g: &mut Graph, weights: Weights) -> Result<()> {
    match weights {
        Weights::F32 => Ok(()),
        Weights::Bf16 => passes::bf16_weights::run(g).map(|_| ()),
    }
}

/// Stores the weight panels of a compiled graph `cols` columns wide (a divisor of 64; 64 leaves them as
/// the lowering packed them): see [`passes::panel_width`].
pub fn set_panel_cols(g: &mut Graph, cols: usize) -> Result<()> {
    if cols == fff_ops::panels::PANEL_COLS {
        return Ok(());
    }
    passes::panel_width::run(g, cols).map(|_| ())
}

/// Imports ONNX bytes and runs the whole pipeline.
pub fn compile_bytes(bytes: &[u8]) -> Result<Graph> {
    let proto = import::parse(bytes)?;
    let mut g = import::import_model(&proto, None)?;
    passes::optimise(&mut g, None)?;
    Ok(g)
}

/// Compiles ONNX bytes straight to the bytes of a plan file.
pub fn compile_to_plan_bytes(bytes: &[u8]) -> Result<Vec<u8>> {
    let g = compile_bytes(bytes)?;
    let (graph, weights) = plan_writer::to_plan(&g)?;
    Ok(fff_runtime::plan::encode(&graph, &weights))
}
