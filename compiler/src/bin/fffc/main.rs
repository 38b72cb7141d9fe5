//! `fffc`: compiles ONNX models into fff plans and describes plans.
//!
//!   fffc compile IN.onnx -o OUT.fff [--dump[=STEP]]... [--stop-after STEP] [--weights f32|bf16]
//!                [--panel-cols C] [--quantize f32|int8|bf16 [--calibrate INPUT]]
//!   fffc inspect OUT.fff [--json]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use fff_compiler::text::TextOptions;
use fff_compiler::{Options, Quantize, Weights};
use fff_runtime::op::{FastFeedForward, Op};
use fff_runtime::text::{Pooling, Roles};
use fff_runtime::Model;
use serde_json::json;

// Standard output as the process received it, so that output written to a closed stdout is an error.
fff_runtime::capture_stdout_before_main!();

/// Writes `text` to standard output, failing (instead of dropping it) when stdout is closed or broken.
fn print_stdout(text: &str, what: &str) -> Result<()> {
    let result = fff_runtime::files::stdout().and_then(|mut out| {
        out.write_all(text.as_bytes())?;
        out.flush()
    });
    result.with_context(|| format!("cannot write {what} to standard output"))
}

#[derive(Parser, Debug)]
#[command(
    name = "fffc",
    version,
    about = "Compiles ONNX transformer models into fff plans."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Imports an ONNX model, optimises it and writes a plan.
    Compile {
        #[arg(value_name = "IN.onnx")]
        input: PathBuf,
        /// The plan to write [default: IN with the extension .fff].
        #[arg(short, long, value_name = "OUT.fff")]
        output: Option<PathBuf>,
        /// Print the graph as text to stdout: as compiled, or with =STEP after each run of that step
        /// of the pipeline (repeatable).
        #[arg(
            long,
            value_name = "STEP",
            num_args = 0..=1,
            require_equals = true,
            default_missing_value = "",
            value_parser = dump_point
        )]
        dump: Vec<String>,
        /// Stop the pipeline after this step (implies nothing is written unless --output is given).
        #[arg(long, value_name = "STEP", value_parser = step_name)]
        stop_after: Option<String>,
        /// Also say, for each feedforward candidate that was not rewritten, why not.
        #[arg(long)]
        explain: bool,
        /// The precision of conditional FastFeedForward weights: bf16 halves their bytes at about 3
        /// significant digits (docs/PERFORMANCE.md states the accuracy cost).
        #[arg(long, value_enum, default_value = "f32")]
        weights: WeightsArg,
        /// Columns per weight panel of the dense products: 64 suits CPUs with AVX-512; 16 suits AVX2
        /// and NEON, which would otherwise repack 64-column panels when the plan loads. Any divisor
        /// of 64.
        #[arg(long, value_name = "C", default_value_t = 64)]
        panel_cols: usize,
        /// The precision of the projections and dense feedforward layers: int8 (weights per output
        /// column, activations per row at run time) or bf16. fffc then runs the float32 and the
        /// quantised plan on probes (or on --calibrate) and prints what it costs.
        #[arg(long, value_enum, default_value = "f32")]
        quantize: QuantizeArg,
        /// Inputs (JSON as fffrun reads them, or .npz) to measure the quantised plan on.
        #[arg(long, value_name = "INPUT", requires = "quantize")]
        calibrate: Option<PathBuf>,
        /// Store a Hugging Face tokenizer in the plan, so that `fffrun --text` and `Model::embed`
        /// take text: a tokenizer.json, or a sentence-transformers model folder (whose length limit,
        /// pooling and normalisation become the plan's defaults).
        #[arg(long, value_name = "PATH")]
        tokenizer: Option<PathBuf>,
        /// The plan's default pooling for text [default: the folder's, else none].
        #[arg(long, value_name = "MODE", requires = "tokenizer", value_parser = pooling)]
        pooling: Option<Pooling>,
        /// Normalise text embeddings to unit length by default [default: the folder's, else no].
        #[arg(long, requires = "tokenizer")]
        normalize: bool,
        /// Truncate texts to this many tokens [default: the folder's or tokenizer's limit, at most
        /// the model's position table].
        #[arg(long, value_name = "N", requires = "tokenizer")]
        max_length: Option<usize>,
        /// Which model input takes which part of the tokens, for inputs whose names do not say:
        /// ids=NAME,mask=NAME,type_ids=NAME,positions=NAME.
        #[arg(long, value_name = "MAP", requires = "tokenizer")]
        input_map: Option<String>,
    },
    /// Describes a plan: inputs, outputs, op counts, weight bytes.
    Inspect {
        #[arg(value_name = "MODEL.fff")]
        plan: PathBuf,
        /// Print the description as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum QuantizeArg {
    F32,
    Int8,
    Bf16,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum WeightsArg {
    F32,
    Bf16,
}

fn pooling(s: &str) -> Result<Pooling, String> {
    s.parse().map_err(|e: fff_runtime::Error| e.to_string())
}

fn step_name(s: &str) -> Result<String, String> {
    if fff_compiler::passes::step_names().any(|n| n == s) {
        Ok(s.to_string())
    } else {
        let names: Vec<&str> = fff_compiler::passes::step_names().collect();
        Err(format!("unknown step; the steps are {}", names.join(", ")))
    }
}

/// A step name, or "" (a bare `--dump`) for the compiled graph.
fn dump_point(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Ok(String::new())
    } else {
        step_name(s)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Compile {
            input,
            output,
            dump,
            stop_after,
            explain,
            weights,
            panel_cols,
            quantize,
            calibrate,
            tokenizer,
            pooling,
            normalize,
            max_length,
            input_map,
        } => text_options(tokenizer, pooling, normalize, max_length, input_map).and_then(|text| {
            compile(
                &input,
                output.as_deref(),
                &dump,
                explain,
                calibrate.as_deref(),
                &Options {
                    weights: match weights {
                        WeightsArg::F32 => Weights::F32,
                        WeightsArg::Bf16 => Weights::Bf16,
                    },
                    panel_cols,
                    stop_after,
                    quantize: match quantize {
                        QuantizeArg::F32 => Quantize::F32,
                        QuantizeArg::Int8 => Quantize::Int8,
                        QuantizeArg::Bf16 => Quantize::Bf16,
                    },
                    text,
                    ..Options::default()
                },
            )
        }),
        Command::Inspect { plan, json } => inspect(&plan, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The text section `--tokenizer` and its options ask for.
fn text_options(
    tokenizer: Option<PathBuf>,
    pooling: Option<Pooling>,
    normalize: bool,
    max_length: Option<usize>,
    input_map: Option<String>,
) -> Result<Option<TextOptions>> {
    let Some(tokenizer) = tokenizer else {
        return Ok(None);
    };
    let input_map = match input_map {
        Some(m) => Roles::parse_map(&m)?,
        None => Vec::new(),
    };
    Ok(Some(TextOptions {
        tokenizer,
        pooling,
        normalize: normalize.then_some(true),
        max_length,
        input_map,
    }))
}

fn compile(
    input: &Path,
    output: Option<&Path>,
    dump: &[String],
    explain: bool,
    calibrate: Option<&Path>,
    options: &Options,
) -> Result<()> {
    let out = match (output, &options.stop_after) {
        (Some(o), _) => Some(o.to_path_buf()),
        (None, Some(_)) => None,
        (None, None) => Some(input.with_extension("fff")),
    };
    if let Some(out) = &out {
        fff_runtime::files::refuse_overwriting_inputs(out, &[("the input model", input)])?;
    }
    let cannot = || format!("cannot compile {}", input.display());
    let mut g = fff_compiler::import::import_path(input).with_context(cannot)?;
    // The float32 plan the quantised one is measured against, compiled from the same import.
    let reference = (options.quantize != Quantize::F32).then(|| g.clone());
    let mut runs: BTreeMap<String, usize> = BTreeMap::new();
    let mut dump_result = Ok(());
    let mut observe = |step: &str, g: &fff_compiler::Graph| {
        if dump_result.is_ok() && dump.iter().any(|d| d == step) {
            let run = runs.entry(step.to_string()).or_default();
            *run += 1;
            let text = format!(
                "# after {step} (run {run})\n{}",
                fff_compiler::dump::dump(g)
            );
            dump_result = print_stdout(&text, "the dump");
        }
    };
    let passes = fff_compiler::passes::run(&mut g, options, &mut observe);
    dump_result?;
    passes.with_context(cannot)?;
    for (i, r) in g.report.rewritten.iter().enumerate() {
        eprintln!("ff {i}: {r}");
    }
    if explain {
        for r in &g.report.refused {
            eprintln!("not rewritten: '{}': {}", r.anchor, r.reason);
        }
    }
    quantize::report(&g, options, explain);
    quantize::report_integer_products(&g, explain);
    if options.weights == Weights::Bf16 && !quantize::has_conditional_layers(&g) {
        eprintln!(
            "note: --weights bf16 stores conditional feedforward weights only, and this model has none: \
             nothing was changed (--quantize bf16 stores the projections in bf16)"
        );
    }
    if dump.iter().any(String::is_empty) {
        print_stdout(&fff_compiler::dump::dump(&g), "the dump")?;
    }
    let Some(out) = out else {
        return Ok(());
    };
    let (mut plan, weights) = fff_compiler::plan_writer::to_plan(&g)?;
    if let Some(text) = &options.text {
        let (config, notes) = fff_compiler::text::text_section(text, &g, &plan)?;
        for note in notes {
            eprintln!("note: {note}");
        }
        eprintln!("text: {}", text_summary(&config));
        plan.text = Some(config);
    }
    fff_compiler::plan_writer::write_bytes(&fff_runtime::plan::encode(&plan, &weights), &out)?;
    eprintln!(
        "wrote {} ({} ops, {} inputs, {} outputs)",
        out.display(),
        g.op_count(),
        g.inputs().len(),
        g.outputs().len()
    );
    if let Some(mut reference) = reference {
        if quantize::quantized_any(&g) {
            let f32_options = Options {
                quantize: Quantize::F32,
                ..options.clone()
            };
            fff_compiler::passes::run(&mut reference, &f32_options, &mut |_, _| {})
                .with_context(cannot)?;
            quantize::print_cost(&reference, &g, calibrate)?;
        }
    }
    Ok(())
}

mod quantize;

/// One line on a plan's text section, for `compile` and `inspect`.
fn text_summary(t: &fff_runtime::text::TextConfig) -> String {
    format!(
        "tokenizer from {}; max length {} ({}); pooling {}; normalize {}; inputs {}",
        t.source,
        t.max_length,
        t.max_length_from,
        t.pooling.map_or("none (the model's outputs)", |p| p.name()),
        if t.normalize { "yes" } else { "no" },
        t.roles.describe()
    )
}

/// The text section as `inspect --json` shows it (without the tokenizer itself).
fn text_json(t: &fff_runtime::text::TextConfig) -> serde_json::Value {
    json!({
        "source": t.source,
        "max_length": t.max_length,
        "max_length_from": t.max_length_from,
        "model_limit": t.model_limit,
        "pooling": t.pooling.map(|p| p.name()),
        "normalize": t.normalize,
        "roles": t.roles,
        "tokenizer_bytes": t.tokenizer.len(),
    })
}

fn inspect(path: &Path, as_json: bool) -> Result<()> {
    let model = Model::load(path).with_context(|| format!("cannot load {}", path.display()))?;
    let g = model.graph();
    let mut op_counts: BTreeMap<String, usize> = BTreeMap::new();
    for n in &g.nodes {
        *op_counts.entry(n.op.name()).or_default() += 1;
    }
    let weight_bytes: usize = g.constants.iter().map(|c| c.len).sum();
    let const_shape = |v: Option<usize>| {
        v.and_then(|v| g.constants.iter().find(|c| c.value == v))
            .map(|c| c.shape.clone())
    };
    let fff_layers: Vec<_> = g
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::FastFeedForward {
                depth,
                trees,
                activation,
                branch,
            } => {
                let w_in = const_shape(n.inputs.get(FastFeedForward::W_IN).copied().flatten());
                let w_out = const_shape(n.inputs.get(FastFeedForward::W_OUT).copied().flatten());
                Some(json!({
                    "name": n.name,
                    "trees": trees,
                    "depth": depth,
                    "d_in": w_in.as_deref().and_then(FastFeedForward::d_in),
                    "d_out": w_out.as_deref().and_then(FastFeedForward::d_out),
                    "activation": format!("{activation:?}"),
                    "branch": format!("{branch:?}"),
                }))
            }
            _ => None,
        })
        .collect();
    let precision = precisions(g);
    let shape = |s: &[fff_runtime::plan::Dim]| fff_runtime::model::shape_text(s);
    if as_json {
        let v = json!({
            "producer": g.producer,
            "inputs": g.inputs.iter().map(|i| json!({"name": i.name, "dtype": i.dtype.name(), "shape": i.shape})).collect::<Vec<_>>(),
            "outputs": g.outputs.iter().map(|o| json!({"name": o.name, "dtype": o.dtype.map(|d| d.name()), "shape": o.shape})).collect::<Vec<_>>(),
            "text": g.text.as_ref().map(text_json),
            "nodes": g.nodes.len(),
            "op_counts": op_counts,
            "constants": g.constants.len(),
            "weight_bytes": weight_bytes,
            "fff_layers": fff_layers,
            "precision": precision.iter().map(|(op, p, n)| json!({"op": op, "precision": p, "nodes": n})).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&v)? + "\n";
        return print_stdout(&text, "the description");
    }
    use std::fmt::Write as _;
    let mut text = String::new();
    writeln!(text, "plan {} (written by {})", path.display(), g.producer)?;
    writeln!(text, "inputs:")?;
    for i in &g.inputs {
        writeln!(text, "  {}: {} {}", i.name, i.dtype, shape(&i.shape))?;
    }
    writeln!(text, "outputs:")?;
    for o in &g.outputs {
        match (o.dtype, &o.shape) {
            (Some(d), Some(s)) => writeln!(text, "  {}: {d} {}", o.name, shape(s))?,
            _ => writeln!(text, "  {}", o.name)?,
        }
    }
    if let Some(t) = &g.text {
        writeln!(text, "text: {}", text_summary(t))?;
    }
    writeln!(text, "ops ({} nodes):", g.nodes.len())?;
    for (op, n) in &op_counts {
        writeln!(text, "  {op:<20} {n}")?;
    }
    writeln!(
        text,
        "weights: {} constants, {} bytes",
        g.constants.len(),
        weight_bytes
    )?;
    if !fff_layers.is_empty() {
        writeln!(text, "fast feedforward layers: {}", fff_layers.len())?;
    }
    writeln!(text, "precision of the products:")?;
    for (op, p, n) in &precision {
        writeln!(text, "  {op:<20} {p:<9} {n}")?;
    }
    print_stdout(&text, "the description")
}

/// The ops that multiply by weights, by op name and the precision their weights are stored in, with
/// their node counts.
fn precisions(g: &fff_runtime::plan::PlanGraph) -> Vec<(String, &'static str, usize)> {
    let dtype_of = |v: Option<usize>| {
        v.and_then(|v| g.constants.iter().find(|c| c.value == v))
            .map(|c| c.dtype.name())
    };
    let mut counts: BTreeMap<(String, &'static str), usize> = BTreeMap::new();
    for n in &g.nodes {
        let p = match &n.op {
            Op::QuantLinear { precision, .. } => precision.name(),
            Op::IntegerLinear { .. } => "int8",
            Op::MatMulInteger => "8-bit integer",
            Op::FastFeedForward { .. } => {
                dtype_of(n.inputs.get(FastFeedForward::W_IN).copied().flatten())
                    .unwrap_or("float32")
            }
            Op::Linear
            | Op::PackedLinear { .. }
            | Op::MatMul
            | Op::Gemm { .. }
            | Op::Einsum { .. }
            | Op::Attention { .. } => "float32",
            _ => continue,
        };
        *counts.entry((n.op.name(), p)).or_default() += 1;
    }
    counts.into_iter().map(|((op, p), n)| (op, p, n)).collect()
}
