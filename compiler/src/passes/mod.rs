//! The pipeline: every step the compiler takes between import and plan, in one list ([`PIPELINE`]).
//! Each pass, in its own file, states what it guarantees. The rewrites run in a fixed order, repeated
//! until none changes the graph; then the lowerings run once each, those that only an option asks for
//! when it does.

pub mod attention;
pub mod bf16_weights;
pub mod constant_folding;
pub mod cse;
pub mod dead_code;
pub mod feedforward;
pub mod gather_rows;
pub mod gelu;
pub mod identity_elimination;
pub mod integer_products;
pub mod layer_norm;
pub mod linear;
pub mod pack_weights;
pub mod panel_width;
pub mod pattern;
pub mod quantize;
pub mod residual;
pub mod shape_inference;
use fff_ops::panels::PANEL_COLS;

use crate::error::{CompileError, Result};
use crate::ir::{verify, Graph};
use crate::{Options, Quantize, Weights};

/// A named step of the pipeline.
pub struct Step {
    /// The name `--stop-after` and `--dump` take.
    pub name: &'static str,
    pub kind: Kind,
}

pub enum Kind {
    /// A rewrite: with the rewrites next to it in the list, run in order, round after round, until a
    /// whole round changes nothing. Returns whether it changed the graph.
    Rewrite(fn(&mut Graph) -> Result<bool>),
    /// A lowering: run once, in order, when `enabled` says the options ask for it. It changes how ops
    /// run (the layout or precision of their weights), not what they compute, and no rewrite matches
    /// its output.
    Lowering {
        run: fn(&mut Graph, &Options) -> Result<bool>,
        enabled: fn(&Options) -> bool,
    },
}

const fn rewrite(name: &'static str, run: fn(&mut Graph) -> Result<bool>) -> Step {
    Step {
        name,
        kind: Kind::Rewrite(run),
    }
}

const fn lowering(
    name: &'static str,
    run: fn(&mut Graph, &Options) -> Result<bool>,
    enabled: fn(&Options) -> bool,
) -> Step {
    Step {
        name,
        kind: Kind::Lowering { run, enabled },
    }
}

/// Every step, in the order they run.
pub const PIPELINE: &[Step] = &[
    rewrite("shape-inference", shape_inference::run),
    rewrite("integer-products", integer_products::run),
    rewrite("constant-folding", constant_folding::run),
    rewrite("identity-elimination", identity_elimination::run),
    rewrite("gather-rows", gather_rows::run),
    rewrite("cse", cse::run),
    rewrite("dead-code", dead_code::run),
    rewrite("layer-norm", layer_norm::run),
    rewrite("feedforward", feedforward::run),
    rewrite("gelu", gelu::run),
    rewrite("attention", attention::run),
    rewrite("linear", linear::run),
    rewrite("residual", residual::run),
    lowering("quantize", quantize::run, |o| o.quantize != Quantize::F32),
    lowering("pack-weights", pack_weights::run, |_| true),
    lowering("bf16-weights", bf16_weights::run, |o| {
        o.weights == Weights::Bf16
    }),
    lowering("panel-width", panel_width::run, |o| {
        o.panel_cols != PANEL_COLS
    }),
];

/// The name the verifier gives the graph as the importer hands it over.
const IMPORT: &str = "import";

/// Rounds after which rewrites that still change the graph are reported as a bug.
const MAX_ROUNDS: usize = 32;

/// The names of [`PIPELINE`]'s steps, in order.
pub fn step_names() -> impl Iterator<Item = &'static str> {
    PIPELINE.iter().map(|s| s.name)
}

/// Runs [`PIPELINE`] on an imported graph as `options` say, calling `observe` with each step's name and
/// the graph after each run of the step (for `--dump`).
pub fn run(g: &mut Graph, options: &Options, observe: &mut dyn FnMut(&str, &Graph)) -> Result<()> {
    run_steps(PIPELINE, g, options, observe)
}

/// Runs `steps` as [`run`] runs [`PIPELINE`]: consecutive rewrites as one fixed-point group, lowerings
/// once each, verifying the graph (if `options.verify`) after import and after every step.
pub fn run_steps(
    steps: &[Step],
    g: &mut Graph,
    options: &Options,
    observe: &mut dyn FnMut(&str, &Graph),
) -> Result<()> {
    if let Some(stop) = &options.stop_after {
        if !steps.iter().any(|s| s.name == stop) {
            let names: Vec<&str> = steps.iter().map(|s| s.name).collect();
            return Err(CompileError::Option(format!(
                "unknown step '{stop}'; the steps are {}",
                names.join(", ")
            )));
        }
    }
    check_panel_cols(options.panel_cols)?;
    checked(g, IMPORT, options)?;
    let stop = options.stop_after.as_deref();
    let mut rest = steps;
    while let Some(first) = rest.first() {
        match first.kind {
            Kind::Rewrite(_) => {
                let group = rest
                    .iter()
                    .take_while(|s| matches!(s.kind, Kind::Rewrite(_)))
                    .count();
                let (rewrites, after) = rest.split_at(group);
                if settle(rewrites, g, options, observe)? {
                    return Ok(());
                }
                rest = after;
            }
            Kind::Lowering { run, enabled } => {
                if enabled(options) {
                    run(g, options)?;
                    checked(g, first.name, options)?;
                    observe(first.name, g);
                }
                if stop == Some(first.name) {
                    return Ok(());
                }
                rest = &rest[1..];
            }
        }
    }
    Ok(())
}

/// Runs a group of rewrites to a fixed point; returns whether it stopped at `options.stop_after`.
fn settle(
    rewrites: &[Step],
    g: &mut Graph,
    options: &Options,
    observe: &mut dyn FnMut(&str, &Graph),
) -> Result<bool> {
    for _ in 0..MAX_ROUNDS {
        let mut changed = false;
        for step in rewrites {
            let Kind::Rewrite(pass) = step.kind else {
                unreachable!("a group holds rewrites only")
            };
            changed |= pass(g)?;
            checked(g, step.name, options)?;
            observe(step.name, g);
            if options.stop_after.as_deref() == Some(step.name) {
                // Facts as far as they can be told, for the dump of a graph stopped midway.
                shape_inference::run(g)?;
                checked(g, "shape-inference", options)?;
                return Ok(true);
            }
        }
        if !changed {
            return Ok(false);
        }
    }
    Err(CompileError::Graph(format!(
        "the optimisation passes did not settle after {MAX_ROUNDS} rounds"
    )))
}

/// The graph verified after `step`, if the options ask for it.
fn checked(g: &Graph, step: &str, options: &Options) -> Result<()> {
    if !options.verify {
        return Ok(());
    }
    verify::verify(g).map_err(|violation| CompileError::Broken {
        step: step.to_string(),
        violation,
    })
}

fn check_panel_cols(cols: usize) -> Result<()> {
    if cols == 0 || !PANEL_COLS.is_multiple_of(cols) {
        return Err(CompileError::Option(format!(
            "panel width {cols}: it must divide {PANEL_COLS}"
        )));
    }
    Ok(())
}
