//! What `fffc compile --quantize` tells its user: which products were quantised, what stayed float32
//! and why, and what the quantised plan costs against the float32 plan.

use std::path::Path;

use anyhow::{Context, Result};
use fff_compiler::quant_cost::{measure, probe_inputs};
use fff_compiler::{Graph, Options, Quantize};
use fff_runtime::op::Op;
use fff_runtime::{Model, Tensor};

/// Whether any product was quantised.
pub fn quantized_any(g: &Graph) -> bool {
    g.report.quantized.iter().any(|q| q.precision.is_some())
}

/// Whether the graph has a conditional FastFeedForward layer (what `--weights bf16` stores).
pub fn has_conditional_layers(g: &Graph) -> bool {
    g.node_indices()
        .any(|n| matches!(g.op(n), Some(Op::FastFeedForward { depth, .. }) if *depth > 0))
}

/// One line per quantised candidate's summary; with `explain`, each one kept in float32 and why.
pub fn report(g: &Graph, options: &Options, explain: bool) {
    if options.quantize == Quantize::F32 {
        return;
    }
    let done: Vec<_> = g
        .report
        .quantized
        .iter()
        .filter(|q| q.precision.is_some())
        .collect();
    let products: usize = done.iter().map(|q| q.products.len()).sum();
    let kept = g.report.quantized.len() - done.len();
    if done.is_empty() {
        eprintln!("quantize: nothing to quantise (no projection or dense feedforward layer with constant weights); the plan stays float32");
    } else {
        let precision = done[0].precision.unwrap_or("?");
        eprintln!(
            "quantize: {products} products in {} layers stored in {precision}; {kept} kept in float32{}",
            done.len(),
            if kept > 0 && !explain { " (--explain lists them)" } else { "" }
        );
    }
    if explain {
        for q in &g.report.quantized {
            let shapes: Vec<String> = q
                .products
                .iter()
                .map(|(k, n)| format!("{k} -> {n}"))
                .collect();
            match (&q.precision, &q.reason) {
                (Some(p), _) => eprintln!("  {p}: '{}' ({})", q.node, shapes.join(", ")),
                (None, Some(why)) => eprintln!("  kept float32: '{}': {why}", q.node),
                (None, None) => eprintln!("  kept float32: '{}'", q.node),
            }
        }
        eprintln!(
            "  kept float32 everywhere: embeddings, LayerNorm, softmax and attention's products"
        );
    }
}

/// Runs the float32 plan compiled from `reference` and the quantised plan from `quantized` on the
/// inputs of `calibrate` (or probes) and prints what quantising cost.
pub fn print_cost(reference: &Graph, quantized: &Graph, calibrate: Option<&Path>) -> Result<()> {
    let load = |g: &Graph| -> Result<Model> {
        let (graph, weights) = fff_compiler::plan_writer::to_plan(g)?;
        Ok(Model::from_bytes(&fff_runtime::plan::encode(
            &graph, &weights,
        ))?)
    };
    let (want, got) = (load(reference)?, load(quantized)?);
    let (inputs, source): (Vec<(String, Tensor)>, String) = match calibrate {
        Some(path) => (read_calibration(path, &want)?, path.display().to_string()),
        None => (
            probe_inputs(want.graph()),
            "probes (random token ids, batch 2, sequence 32)".to_string(),
        ),
    };
    let cost = measure(&want, &got, &inputs)
        .with_context(|| format!("cannot run the plans on the calibration inputs from {source}"))?;
    eprintln!("quantize: cost against the float32 plan on {source}:");
    for o in &cost.outputs {
        eprintln!(
            "  output '{}': max abs difference {:.3e}, row cosine min {:.6} mean {:.6} ({} rows)",
            o.name, o.max_abs, o.min_cosine, o.mean_cosine, o.rows
        );
    }
    for p in &cost.paths {
        eprintln!(
            "  conditional layer '{}': {} of {} rows ({:.2}%) took another path",
            p.node,
            p.changed,
            p.rows,
            100.0 * p.changed as f64 / p.rows.max(1) as f64
        );
    }
    Ok(())
}

/// The calibration inputs, read and checked as fffrun reads its inputs: JSON, or `.npz`.
fn read_calibration(path: &Path, model: &Model) -> Result<Vec<(String, Tensor)>> {
    let is_npz = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npz"));
    let read = if is_npz {
        fff_runtime::npy::read_npz_inputs(path, model.inputs())
    } else {
        fff_runtime::io::read_inputs_file(path, model.inputs()).map(|(inputs, _)| inputs)
    };
    read.with_context(|| {
        format!(
            "the calibration inputs {} do not fit the model",
            path.display()
        )
    })
}

/// One line per product of a model that was quantised before import: what it became, or with
/// `explain` also each one left as the model wrote it and why (and activations not fused).
pub fn report_integer_products(g: &Graph, explain: bool) {
    let lowered = g.report.integer_products.iter().filter(|p| p.lowered);
    for (i, p) in lowered.enumerate() {
        eprintln!("int8 {i}: {p}");
    }
    let kept: Vec<_> = g
        .report
        .integer_products
        .iter()
        .filter(|p| !p.lowered)
        .collect();
    if explain {
        for p in &kept {
            eprintln!("not lowered: {p}");
        }
    } else if !kept.is_empty() {
        eprintln!(
            "{} quantised products or activations kept as the model wrote them (--explain lists them)",
            kept.len()
        );
    }
}
