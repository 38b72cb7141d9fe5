//! The optimisation pipeline: each pass in its own file states what it guarantees. They run in a fixed
//! order, repeated until none changes the graph.

pub mod attention;
pub mod bf16_weights;
pub mod constant_folding;
pub mod cse;
pub mod dead_code;
pub mod feedforward;
pub mod gather_rows;
pub mod gelu;
pub mod identity_elimination;
pub mod layer_norm;
pub mod linear;
pub mod pack_weights;
pub mod panel_width;
pub mod pattern;
pub mod residual;
pub mod shape_inference;
pub use crate::error::{CompileError, Result};
use crate::ir::Graph;

/// A named pass over the graph; returns whether it changed anything.
pub type Pass = (&'static str, fn(&mut Graph) -> Result<bool>);

/// The passes in the order they run.
pub const PIPELINE: &[Pass] = &[
    ("shape-inference", shape_inference::run),
    ("constant-folding", constant_folding::run),
    ("identity-elimination", identity_elimination::run),
    ("gather-rows", gather_rows::run),
    ("cse", cse::run),
    ("dead-code", dead_code::run),
    ("layer-norm", layer_norm::run),
    ("feedforward", feedforward::run),
    ("gelu", gelu::run),
    ("attention", attention::run),
    ("linear", linear::run),
    ("residual", residual::run),
];

/// Passes run once, in order, after the pipeline has settled: they change how the graph's ops run
/// (the layout of their weights), not what they compute, and no pipeline pass matches their output.
pub const LOWERING: &[Pass] = &[("pack-weights", pack_weights::run)];

/// Rounds after which a pipeline that still changes the graph is reported as a bug.
const MAX_ROUNDS: usize = 32;

/// Runs the pipeline to a fixed point, then the lowering, stopping after the pass named `stop_after`
/// if given.
pub fn optimise(g: &mut Graph, stop_after: Option<&str>) -> Result<()> {
    settle(g, stop_after)?;
    if stop_after.is_some_and(|s| PIPELINE.iter().any(|(name, _)| *name == s)) {
        return Ok(());
    }
    for (name, pass) in LOWERING {
        pass(g)?;
        if stop_after == Some(*name) {
            break;
        }
    }
    Ok(())
}

/// The pipeline to a fixed point (or up to `stop_after`, one of its passes).
fn settle(g: &mut Graph, stop_after: Option<&str>) -> Result<()> {
    for _ in 0..MAX_ROUNDS {
        let mut changed = false;
        for (name, pass) in PIPELINE {
            changed |= pass(g)?;
            if stop_after == Some(*name) {
                return shape_inference::run(g).map(|_| ());
            }
        }
        if !changed {
            return Ok(());
        }
    }
    Err(CompileError::Graph(format!(
        "the optimisation passes did not settle after {MAX_ROUNDS} rounds"
    )))
}
