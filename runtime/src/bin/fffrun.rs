//! `fffrun MODEL.fff INPUT [-o OUTPUT]`: runs a compiled model on inputs given as JSON, `.npy` or
//! `.npz` and writes its outputs as JSON or `.npz`, or with `--bench` times it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// An allocator that keeps freed memory for reuse. The GEMM crate allocates its packing buffers on
/// every call; the system allocator gave those back to the kernel and faulted them in again each time,
/// about 4% of a BERT-size run. A program embedding the runtime chooses its own allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// Standard output as the process received it, so that outputs written to a closed stdout are an error.
fff_runtime::capture_stdout_before_main!();
use clap::Parser;
use fff_runtime::fff_stats::run_with_fff_usage;
use fff_runtime::io::{read_inputs_file, write_outputs, JsonStyle};
use fff_runtime::model::{Options, MAX_THREADS};
use fff_runtime::npy::{read_npy, read_npz_inputs, write_npz};
use fff_runtime::text::{EmbedOptions, Pooling, Roles, Tokens};
use fff_runtime::{Model, Tensor, TensorView};

/// Runs a compiled fff model (.fff) on the CPU.
///
/// Inputs are JSON in one of two forms: an object mapping each input name to a nested list
/// (`{"x": [[1.0, 2.0]], "ids": [3, 4]}`, a bare number for a scalar), or an Open Inference Protocol v2
/// request (`{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}`).
/// Outputs are written in the same form as the inputs. Float NaN and infinities are written as null.
/// Large inputs can come as NumPy files instead: `.npy` for a model with one input, `.npz` with one
/// array per input name; `-o OUT.npz` writes the outputs as an `.npz`.
#[derive(Parser, Debug)]
#[command(name = "fffrun", version)]
struct Args {
    /// The compiled model, as written by fffc.
    #[arg(value_name = "MODEL.fff")]
    model: PathBuf,

    /// The inputs: JSON, or `.npy` (one input), or `.npz` (arrays named as the inputs). For a plan
    /// with a tokenizer, JSON may carry text instead: `{"text": ["...", ...]}`, or a v2 request with
    /// one BYTES input.
    #[arg(
        value_name = "INPUT",
        required_unless_present = "text",
        conflicts_with = "text"
    )]
    input: Option<PathBuf>,

    /// A text to embed (repeatable: one batch, one row per text in order), for plans compiled with
    /// --tokenizer. Prints {"embedding": [[...], ...]}, or the model's outputs with --pooling none.
    #[arg(long, value_name = "TEXT")]
    text: Vec<String>,

    /// How text embeddings pool token vectors: cls, mean, max, or none (the model's outputs)
    /// [default: the plan's].
    #[arg(long, value_name = "MODE", value_parser = pooling)]
    pooling: Option<Pooling>,

    /// Normalise text embeddings to unit length [default: the plan's].
    #[arg(long, conflicts_with = "no_normalize")]
    normalize: bool,

    /// Do not normalise text embeddings, whatever the plan's default.
    #[arg(long)]
    no_normalize: bool,

    /// Truncate texts to this many tokens, at most the model's limit [default: the plan's].
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    max_length: Option<usize>,

    /// Which model input takes which part of the tokens: ids=NAME,mask=NAME,type_ids=NAME,
    /// positions=NAME [default: the plan's, recognised by name].
    #[arg(long, value_name = "MAP")]
    input_map: Option<String>,

    /// Write the outputs (or, with --bench, the timings) to this file instead of stdout; a name ending
    /// in `.npz` writes NumPy arrays.
    #[arg(short, long, value_name = "OUTPUT")]
    output: Option<PathBuf>,

    /// Threads used by kernels, at most 1024 [default: the number of cores].
    #[arg(long, value_name = "N", value_parser = thread_count)]
    threads: Option<usize>,

    /// Read the plan into memory instead of mapping it, so that changes to its file while fffrun runs
    /// cannot affect it (a mapped plan must not be truncated or rewritten in place).
    #[arg(long)]
    no_mmap: bool,

    /// Columns per weight panel of the dense products: 64 as plans store them, or 16, 32, ... (any
    /// divisor of 64), repacked at load [default: the width this CPU's GEMM reads best].
    #[arg(long, value_name = "C", value_parser = at_least_one)]
    panel_cols: Option<usize>,

    /// The most memory one run may hold in values (inputs and intermediate results) at once, as
    /// bytes or with a unit: 64K, 512M, 4G (powers of 1024). A run that needs more fails naming the
    /// node and the size [default: the memory available when the model loads, and no more than an
    /// address-space limit (ulimit -v) leaves].
    #[arg(long, value_name = "SIZE", value_parser = fff_runtime::budget::parse_size)]
    max_memory: Option<usize>,

    /// Time the model instead of printing its outputs: warm-up runs (at least one, for at least 0.1 s),
    /// then --runs timed runs, then one JSON line {"load_ms", "median_ms", "min_ms", "runs", "threads"}.
    #[arg(long)]
    bench: bool,

    /// Timed runs for --bench or --profile.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = at_least_one)]
    runs: usize,

    /// Time every op instead of printing the outputs: warm-up runs as for --bench, then --runs profiled
    /// runs, then a table of the median time per op kind and of the slowest nodes.
    #[arg(long, conflicts_with = "bench")]
    profile: bool,

    /// Count which leaf of each tree the rows reach, instead of printing the outputs: one run, then one
    /// JSON line per FastFeedForward node {"node", "rows", "trees", "depth", "neurons_per_row",
    /// "neurons", "leaves_reached", "leaves", "busiest_leaf_share", "leaf_entropy_bits"}.
    #[arg(long, conflicts_with_all = ["bench", "profile"])]
    fff_stats: bool,
}

fn pooling(text: &str) -> Result<Pooling, String> {
    text.parse().map_err(|e: fff_runtime::Error| e.to_string())
}

/// Parses a count that must be at least 1.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// Parses a thread count: at least 1, at most [`MAX_THREADS`].
fn thread_count(text: &str) -> Result<usize, String> {
    match at_least_one(text)? {
        n if n > MAX_THREADS => Err(format!("at most {MAX_THREADS} threads")),
        n => Ok(n),
    }
}

/// The line `--bench` prints.
#[derive(serde::Serialize)]
struct BenchReport {
    /// From opening the plan file to the model being ready to run.
    load_ms: f64,
    median_ms: f64,
    min_ms: f64,
    runs: usize,
    threads: usize,
    /// With text: the median time of tokenising the batch, which `median_ms` includes.
    #[serde(skip_serializing_if = "Option::is_none")]
    tokenize_ms: Option<f64>,
}

/// Texts to embed, tokenised, with how to embed them.
struct TextJob {
    tokens: Tokens,
    texts: Vec<String>,
    options: EmbedOptions,
}

fn main() -> ExitCode {
    // Bad flags exit with 1 like every other error; --help and --version print and exit 0.
    let args = Args::try_parse().unwrap_or_else(|e| match e.use_stderr() {
        true => {
            let _ = e.print();
            std::process::exit(1)
        }
        false => e.exit(),
    });
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Nothing more can be done if stderr itself is gone.
            let _ = writeln!(std::io::stderr().lock(), "error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    if let Some(output) = &args.output {
        let mut inputs = vec![("the model", args.model.as_path())];
        inputs.extend(args.input.as_deref().map(|i| ("the input file", i)));
        fff_runtime::files::refuse_overwriting_inputs(output, &inputs)?;
    }
    // 0 asks the runtime for one thread per core.
    let threads = args.threads.unwrap_or(0);
    let start = Instant::now();
    let options = Options {
        threads,
        panel_cols: args.panel_cols.unwrap_or(0),
        max_memory: args.max_memory.unwrap_or(0),
        mmap: !args.no_mmap,
    };
    let model = Model::load_with(&args.model, options)
        .with_context(|| format!("cannot load model {}", args.model.display()))?;
    let load_ms = start.elapsed().as_secs_f64() * 1e3;
    let (inputs, style, text) = match &args.input {
        None => {
            let job = text_job(&model, args, args.text.clone())?;
            (
                model.token_inputs(&job.tokens, &job.options)?,
                JsonStyle::Plain,
                Some(job),
            )
        }
        Some(path) => match read_text_request(path, &model)? {
            Some((texts, style)) => {
                let job = text_job(&model, args, texts)?;
                (
                    model.token_inputs(&job.tokens, &job.options)?,
                    style,
                    Some(job),
                )
            }
            None => {
                let (inputs, style) = read_inputs(path, &model)?;
                (inputs, style, None)
            }
        },
    };
    // With text, the outputs are pooled unless no pooling applies.
    let pooled = text
        .as_ref()
        .filter(|job| model.embed_settings(&job.options).0 != Pooling::None);

    let report = if args.fff_stats {
        let (_, usage) = run_with_fff_usage(&model, inputs)?;
        if usage.is_empty() {
            anyhow::bail!("the model has no FastFeedForward nodes");
        }
        let mut text = String::new();
        for u in &usage {
            text += &serde_json::to_string(&u.summary()).context("cannot format the statistics")?;
            text.push('\n');
        }
        text
    } else if args.profile {
        profile(&model, &inputs, args.runs)?
    } else if args.bench {
        let (times, tokenize_ms) = match &text {
            Some(job) => bench_text(&model, job, args.runs)?,
            None => (bench(&model, &inputs, args.runs)?, None),
        };
        let report = BenchReport {
            load_ms,
            median_ms: median(&times),
            min_ms: times[0],
            runs: args.runs,
            threads: model.threads(),
            tokenize_ms,
        };
        let mut line = serde_json::to_string(&report).context("cannot format the timings")?;
        line.push('\n');
        line
    } else {
        let mut outputs = model.run(inputs)?;
        if let Some(job) = pooled {
            let embedding = model.pool_outputs(&outputs, &job.tokens, &job.options)?;
            outputs = vec![("embedding".to_string(), embedding.into())];
        }
        if let Some(path) = args.output.as_deref().filter(|p| has_extension(p, "npz")) {
            return Ok(write_npz(path, &outputs)?);
        }
        let mut text = write_outputs(&outputs, style);
        text.push('\n');
        text
    };
    emit(args.output.as_deref(), &report)
}

/// Tokenises `texts` as the flags ask, saying on stderr which texts were cut to the length limit.
fn text_job(model: &Model, args: &Args, texts: Vec<String>) -> Result<TextJob> {
    let config = model.text_config().ok_or_else(|| {
        anyhow::anyhow!(
            "{} has no tokenizer, so it takes token ids, not text; compile it with \
             `fffc compile MODEL.onnx --tokenizer tokenizer.json`",
            args.model.display()
        )
    })?;
    let options = EmbedOptions {
        pooling: args.pooling,
        normalize: match (args.normalize, args.no_normalize) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        max_length: args.max_length,
        input_map: match &args.input_map {
            Some(m) => Roles::parse_map(m)?,
            None => Vec::new(),
        },
        output: None,
    };
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let tokens = model.tokenize(&refs, &options)?;
    if !tokens.truncated.is_empty() {
        let which: Vec<String> = tokens.truncated.iter().map(|i| i.to_string()).collect();
        let from = match args.max_length {
            Some(_) => "--max-length".to_string(),
            None => config.max_length_from.clone(),
        };
        eprintln!(
            "note: the text{} at index {} {} longer than {} tokens ({from}) and {} truncated",
            if which.len() > 1 { "s" } else { "" },
            which.join(", "),
            if which.len() > 1 { "are" } else { "is" },
            tokens.max_length,
            if which.len() > 1 { "were" } else { "was" },
        );
    }
    Ok(TextJob {
        tokens,
        texts,
        options,
    })
}

/// The texts of a JSON input file that carries text (`{"text": [...]}` or a v2 BYTES input), if it
/// does and the model has no input of that name.
fn read_text_request(path: &Path, model: &Model) -> Result<Option<(Vec<String>, JsonStyle)>> {
    if has_extension(path, "npy") || has_extension(path, "npz") {
        return Ok(None);
    }
    let takes_text_input = model.inputs().iter().any(|i| i.name == "text");
    if takes_text_input {
        return Ok(None);
    }
    // A file of token ids can be large and is streamed by `read_inputs`: it is only looked through
    // here, keeping nothing, and read whole only when it carries text.
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read input file {}", path.display()))?;
    if !fff_runtime::io::looks_like_text_request(file) {
        return Ok(None);
    }
    // Texts are read whole; past this size a request is refused rather than read.
    const MAX_TEXT_REQUEST: u64 = 256 << 20;
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot read input file {}", path.display()))?
        .len();
    if size > MAX_TEXT_REQUEST {
        anyhow::bail!(
            "the text request {} is {size} bytes; text requests may be at most {MAX_TEXT_REQUEST} bytes",
            path.display()
        );
    }
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read input file {}", path.display()))?;
    fff_runtime::io::parse_text_request(&bytes)
        .with_context(|| format!("in input file {}", path.display()))
}

fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

/// The inputs from a JSON, `.npy` or `.npz` file (by extension), and the JSON style to answer in.
fn read_inputs(path: &Path, model: &Model) -> Result<(Vec<(String, Tensor)>, JsonStyle)> {
    let context = || format!("in input file {}", path.display());
    if has_extension(path, "npz") {
        return Ok((
            read_npz_inputs(path, model.inputs()).with_context(context)?,
            JsonStyle::Plain,
        ));
    }
    if has_extension(path, "npy") {
        let [only] = model.inputs() else {
            anyhow::bail!(
                "a .npy file holds one array, but the model has {} inputs; give an .npz with one array per input",
                model.inputs().len()
            );
        };
        return Ok((
            vec![(only.name.clone(), read_npy(path).with_context(context)?)],
            JsonStyle::Plain,
        ));
    }
    // Opened here first so that a missing file is reported as before, without the parse's context.
    std::fs::File::open(path)
        .with_context(|| format!("cannot read input file {}", path.display()))?;
    read_inputs_file(path, model.inputs()).with_context(context)
}

/// The inputs as views, for runs that borrow them ([`Model::run_borrowed`]).
fn views(inputs: &[(String, Tensor)]) -> Vec<(&str, TensorView<'_>)> {
    inputs.iter().map(|(n, t)| (n.as_str(), t.view())).collect()
}

/// Warm-up lasts at least this long, and at least one run: a pool's threads, and on a virtual machine
/// the cores under them, take some milliseconds of calls after an idle spell to reach their speed (a
/// 2048-row FFF layer on two threads, after a second's sleep, took 2.0-2.2 ms a call for its first ten
/// calls, then 1.1-1.2 ms).
const WARM_UP: Duration = Duration::from_millis(100);

/// Runs the model on `inputs` until [`WARM_UP`] has passed, at least once.
fn warm_up(model: &Model, inputs: &[(&str, TensorView)]) -> Result<()> {
    let start = Instant::now();
    loop {
        model.recycle(model.run_borrowed(inputs)?);
        if start.elapsed() >= WARM_UP {
            return Ok(());
        }
    }
}

/// Times `runs` calls after a warm-up. The calls borrow the same inputs, as ONNX Runtime's runs do
/// (a copy per call would leave the caches full of its dirty lines, which the call would then write
/// back); each call's outputs are handed back to the model, as a serving loop would, so that
/// steady-state calls reuse their buffers.
fn bench(model: &Model, inputs: &[(String, Tensor)], runs: usize) -> Result<Vec<f64>> {
    let inputs = views(inputs);
    warm_up(model, &inputs)?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let outputs = model.run_borrowed(&inputs)?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
        model.recycle(outputs);
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// Times `runs` whole embed calls (tokenise, run, pool) after a warm-up, and the median time of their
/// tokenising alone.
fn bench_text(model: &Model, job: &TextJob, runs: usize) -> Result<(Vec<f64>, Option<f64>)> {
    let texts: Vec<&str> = job.texts.iter().map(String::as_str).collect();
    let call = || -> Result<(f64, f64)> {
        let start = Instant::now();
        let tokens = model.tokenize(&texts, &job.options)?;
        let tokenized = start.elapsed().as_secs_f64() * 1e3;
        let inputs = model.token_inputs(&tokens, &job.options)?;
        let outputs = model.run(inputs)?;
        if model.embed_settings(&job.options).0 != Pooling::None {
            model.pool_outputs(&outputs, &tokens, &job.options)?;
        }
        let total = start.elapsed().as_secs_f64() * 1e3;
        model.recycle(outputs);
        Ok((total, tokenized))
    };
    let start = Instant::now();
    while start.elapsed() < WARM_UP {
        call()?;
    }
    let mut times = Vec::with_capacity(runs);
    let mut tokenizing = Vec::with_capacity(runs);
    for _ in 0..runs {
        let (total, tokenized) = call()?;
        times.push(total);
        tokenizing.push(tokenized);
    }
    times.sort_by(f64::total_cmp);
    tokenizing.sort_by(f64::total_cmp);
    Ok((times, Some(median(&tokenizing))))
}

/// Warm-up runs, then `runs` profiled runs; a text table of the median time per op kind (largest
/// first) and of the ten slowest nodes.
fn profile(model: &Model, inputs: &[(String, Tensor)], runs: usize) -> Result<String> {
    let inputs = views(inputs);
    warm_up(model, &inputs)?;
    let nodes = &model.graph().nodes;
    let mut per_node: Vec<Vec<f64>> = vec![Vec::with_capacity(runs); nodes.len()];
    let mut totals = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let (outputs, times) = model.run_profiled(&inputs)?;
        totals.push(start.elapsed().as_secs_f64() * 1e3);
        model.recycle(outputs);
        for (samples, t) in per_node.iter_mut().zip(times) {
            samples.push(t.as_secs_f64() * 1e3);
        }
    }
    let medians: Vec<f64> = per_node
        .iter_mut()
        .map(|s| {
            s.sort_by(f64::total_cmp);
            median(s)
        })
        .collect();
    totals.sort_by(f64::total_cmp);
    let total = median(&totals);
    let mut kinds: Vec<(String, usize, f64)> = Vec::new();
    for (node, &ms) in nodes.iter().zip(&medians) {
        let kind = node.op.name();
        match kinds.iter_mut().find(|(k, _, _)| *k == kind) {
            Some(entry) => {
                entry.1 += 1;
                entry.2 += ms;
            }
            None => kinds.push((kind, 1, ms)),
        }
    }
    kinds.sort_by(|a, b| b.2.total_cmp(&a.2));
    let mut text = format!(
        "median of {runs} runs: {total:.3} ms in all, threads {}\n\n",
        model.threads()
    );
    text += &format!("{:<20} {:>6} {:>10} {:>7}\n", "op", "nodes", "ms", "share");
    for (kind, count, ms) in &kinds {
        let share = 100.0 * ms / total;
        text += &format!("{kind:<20} {count:>6} {ms:>10.3} {share:>6.1}%\n");
    }
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    order.sort_by(|&a, &b| medians[b].total_cmp(&medians[a]));
    text += "\nslowest nodes:\n";
    for &i in order.iter().take(10) {
        let n = &nodes[i];
        text += &format!("{:>10.3} ms  {:<16} {}\n", medians[i], n.op.name(), n.name);
    }
    Ok(text)
}

/// The median of sorted, non-empty times.
fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// Writes `text` to the output file, atomically, or to standard output, reporting a closed or broken
/// stdout as an error.
fn emit(path: Option<&Path>, text: &str) -> Result<()> {
    match path {
        Some(path) => fff_runtime::files::write_atomic(path, |w| w.write_all(text.as_bytes()))
            .with_context(|| format!("cannot write output file {}", path.display())),
        None => {
            let result = fff_runtime::files::stdout().and_then(|mut stdout| {
                stdout.write_all(text.as_bytes())?;
                stdout.flush()
            });
            result.context("cannot write the outputs to standard output")
        }
    }
}
