//! The plan's text section (`fffc compile --tokenizer PATH`): a Hugging Face `tokenizer.json`, or a
//! sentence-transformers model folder whose tokenizer, length limit, pooling and normalisation become
//! the plan's defaults. Checked against the model here, so that a plan never carries a tokenizer whose
//! ids fall outside the model's embedding table, or a length past its position table.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use fff_runtime::op::Op;
use fff_runtime::plan::PlanGraph;
use fff_runtime::text::{Pooling, Roles, TextConfig, TextTokenizer};
use serde_json::Value;

use crate::error::{CompileError, Result};
use crate::ir::{Graph, OutletId};

/// What `--tokenizer` and the options beside it ask for; a `None` takes the folder's setting.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TextOptions {
    /// A `tokenizer.json`, or a folder holding one (a sentence-transformers or Hugging Face model).
    pub tokenizer: PathBuf,
    pub pooling: Option<Pooling>,
    pub normalize: Option<bool>,
    pub max_length: Option<usize>,
    /// `(role, input)` pairs for inputs whose names do not say what they hold.
    pub input_map: Vec<(String, String)>,
}

fn text_err(msg: impl Into<String>) -> CompileError {
    CompileError::Text(msg.into())
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|cause| CompileError::Read {
        path: path.display().to_string(),
        cause,
    })
}

fn read_json(path: &Path) -> Result<Value> {
    serde_json::from_str(&read_text(path)?)
        .map_err(|e| text_err(format!("{} does not parse as JSON: {e}", path.display())))
}

/// What a tokenizer file or model folder provides.
#[derive(Default)]
struct Source {
    tokenizer: String,
    described: String,
    max_length: Option<(usize, String)>,
    pooling: Option<Pooling>,
    normalize: bool,
}

/// Reads `path`: a tokenizer file, or a folder (sentence-transformers when it has `modules.json`).
/// With `pooling_given`, the folder's pooling is not read (the caller's replaces it).
fn read_source(path: &Path, pooling_given: bool) -> Result<Source> {
    if !path.is_dir() {
        // A bare tokenizer.json: its own truncation setting is left from training or export (all-
        // MiniLM-L6-v2's says 128 where the model takes 512), so the model's limit applies.
        return Ok(Source {
            tokenizer: read_text(path)?,
            described: path.display().to_string(),
            ..Source::default()
        });
    }
    let modules_path = path.join("modules.json");
    if !modules_path.exists() {
        // A Hugging Face model folder: its tokenizer, and the length its tokenizer config states.
        return folder_tokenizer(path, &path.display().to_string());
    }
    let modules = read_json(&modules_path)?;
    let modules = modules
        .as_array()
        .ok_or_else(|| text_err(format!("{} is not a list", modules_path.display())))?;
    let mut source = None;
    let mut pooling = None;
    let mut normalize = false;
    for m in modules {
        let kind = m.get("type").and_then(Value::as_str).unwrap_or("");
        let sub = path.join(m.get("path").and_then(Value::as_str).unwrap_or(""));
        match kind.rsplit('.').next().unwrap_or("") {
            "Transformer" => source = Some(transformer_module(&sub, path)?),
            "Pooling" if pooling_given => {}
            "Pooling" => pooling = Some(pooling_mode(&sub.join("config.json"))?),
            "Normalize" => normalize = true,
            other => {
                return Err(text_err(format!(
                    "{} has a module of type '{}', which fff does not apply after the model (it applies \
                     Transformer, Pooling and Normalize); export it into the ONNX model, or give the \
                     tokenizer.json alone",
                    path.display(),
                    if other.is_empty() { kind } else { other }
                )))
            }
        }
    }
    let mut source = source.ok_or_else(|| {
        text_err(format!(
            "{} lists no Transformer module",
            modules_path.display()
        ))
    })?;
    source.pooling = pooling;
    source.normalize = normalize;
    Ok(source)
}

/// The Transformer module of a sentence-transformers folder: its tokenizer and `max_seq_length`.
fn transformer_module(dir: &Path, folder: &Path) -> Result<Source> {
    let mut source = folder_tokenizer(
        dir,
        &format!("sentence-transformers folder {}", folder.display()),
    )?;
    let config = dir.join("sentence_bert_config.json");
    if config.exists() {
        if let Some(n) = read_json(&config)?
            .get("max_seq_length")
            .and_then(Value::as_u64)
        {
            source.max_length = Some((n as usize, "the folder's max_seq_length".to_string()));
        }
    }
    Ok(source)
}

/// The `tokenizer.json` of a model folder, and the length its `tokenizer_config.json` states.
fn folder_tokenizer(dir: &Path, described: &str) -> Result<Source> {
    let file = dir.join("tokenizer.json");
    if !file.exists() {
        return Err(text_err(format!(
            "{} has no tokenizer.json (fff reads the fast tokenizer's file; save it with \
             `AutoTokenizer.from_pretrained(name).save_pretrained(dir)`)",
            dir.display()
        )));
    }
    let tokenizer = read_text(&file)?;
    let mut max_length = None;
    let config = dir.join("tokenizer_config.json");
    if config.exists() {
        // Tokenizers without a limit state a huge one (1e30); only a plausible length is one.
        max_length = read_json(&config)?
            .get("model_max_length")
            .and_then(Value::as_u64)
            .filter(|&n| n <= 1 << 20)
            .map(|n| (n as usize, "the tokenizer's model_max_length".to_string()));
    }
    Ok(Source {
        tokenizer,
        described: described.to_string(),
        max_length,
        ..Source::default()
    })
}

/// The pooling a sentence-transformers `1_Pooling/config.json` sets: exactly one of CLS, mean or max,
/// as `"pooling_mode": "mean"` (sentence-transformers 6) or as `pooling_mode_*` flags (earlier).
fn pooling_mode(path: &Path) -> Result<Pooling> {
    let config = read_json(path)?;
    if let Some(mode) = config.get("pooling_mode").and_then(Value::as_str) {
        return match mode {
            "cls" | "cls_token" => Ok(Pooling::Cls),
            "mean" | "mean_tokens" => Ok(Pooling::Mean),
            "max" | "max_tokens" => Ok(Pooling::Max),
            other => Err(text_err(format!(
                "{} asks for pooling '{other}', which fff does not do; fff pools by one of cls, mean \
                 or max: give --pooling to choose one",
                path.display()
            ))),
        };
    }
    let on = |key: &str| config.get(key).and_then(Value::as_bool).unwrap_or(false);
    let modes: Vec<Pooling> = [
        ("pooling_mode_cls_token", Pooling::Cls),
        ("pooling_mode_mean_tokens", Pooling::Mean),
        ("pooling_mode_max_tokens", Pooling::Max),
    ]
    .into_iter()
    .filter(|(k, _)| on(k))
    .map(|(_, p)| p)
    .collect();
    let unsupported: Vec<&str> = [
        "pooling_mode_mean_sqrt_len_tokens",
        "pooling_mode_weightedmean_tokens",
        "pooling_mode_lasttoken",
    ]
    .into_iter()
    .filter(|k| on(k))
    .collect();
    match (modes.as_slice(), unsupported.is_empty()) {
        ([one], true) => Ok(*one),
        _ => Err(text_err(format!(
            "{} asks for pooling fff does not do ({}); fff pools by one of cls, mean or max: give \
             --pooling to choose one",
            path.display(),
            if unsupported.is_empty() {
                format!("{} modes at once", modes.len())
            } else {
                unsupported.join(", ")
            }
        ))),
    }
}

/// The embedding tables of a graph: constants gathered along axis 0 by indices that come from the
/// given values through ops that only move or retype them.
struct Tables<'g> {
    g: &'g Graph,
}

impl Tables<'_> {
    /// The values `start` reaches through casts and reshapes.
    fn carried(&self, start: OutletId) -> HashSet<OutletId> {
        let mut seen = HashSet::from([start]);
        let mut todo = vec![start];
        while let Some(o) = todo.pop() {
            for (reader, slot) in self.g.consumers(o) {
                let moves = matches!(
                    self.g.op(reader),
                    Some(
                        Op::Cast { .. }
                            | Op::Identity
                            | Op::Reshape { .. }
                            | Op::Flatten { .. }
                            | Op::Squeeze
                            | Op::Unsqueeze
                    )
                );
                let out = OutletId::new(reader, 0);
                if moves && slot == 0 && seen.insert(out) {
                    todo.push(out);
                }
            }
        }
        seen
    }

    /// `(rows, node name)` of each constant 2-D table gathered along axis 0 by indices that `pick`
    /// accepts.
    fn gathered(&self, pick: impl Fn(OutletId) -> bool) -> Vec<(usize, String)> {
        let mut found = Vec::new();
        for n in self.g.node_indices() {
            if !matches!(self.g.op(n), Some(Op::Gather { axis: 0 })) {
                continue;
            }
            let ins = self.g.inputs_of(n);
            let (Some(Some(data)), Some(Some(idx))) = (ins.first(), ins.get(1)) else {
                continue;
            };
            let table = self.g.const_value(*data).filter(|t| t.shape().len() == 2);
            if let Some(t) = table.filter(|_| pick(*idx)) {
                found.push((t.shape()[0], self.g.node(n).name.clone()));
            }
        }
        found
    }

    /// Whether `o` holds 0, 1, 2, ... along its last axis: a `Range`, or a constant arange, maybe
    /// sliced, expanded or reshaped (how exporters make position ids).
    fn counts_up(&self, o: OutletId) -> bool {
        if let Some(t) = self.g.const_value(o) {
            return t.view().ints().is_ok_and(|v| {
                let width = t.shape().last().copied().unwrap_or(0);
                width > 1
                    && v.chunks(width)
                        .all(|c| c.iter().enumerate().all(|(i, &x)| x == i as i64))
            });
        }
        match self.g.op(o.node) {
            Some(Op::Range) => true,
            Some(
                Op::Slice
                | Op::Expand
                | Op::Cast { .. }
                | Op::Identity
                | Op::Reshape { .. }
                | Op::Unsqueeze
                | Op::Squeeze,
            ) => self
                .g
                .inputs_of(o.node)
                .first()
                .copied()
                .flatten()
                .is_some_and(|i| self.counts_up(i)),
            _ => false,
        }
    }

    /// `(rows, node name)` of the position tables: gathered by indices that count up from 0.
    fn positions(&self) -> Vec<(usize, String)> {
        self.gathered(|idx| self.counts_up(idx))
    }
}

/// The text section for the compiled graph `g` (whose plan is `plan`), as `options` ask, and notes
/// on what could not be checked.
pub fn text_section(
    options: &TextOptions,
    g: &Graph,
    plan: &PlanGraph,
) -> Result<(TextConfig, Vec<String>)> {
    let source = read_source(&options.tokenizer, options.pooling.is_some())?;
    let roles =
        Roles::resolve(&plan.inputs, &options.input_map).map_err(|e| text_err(e.to_string()))?;
    let tables = Tables { g };
    let positions = tables.positions();
    let model_limit = positions.iter().map(|(rows, _)| *rows).min();
    let (max_length, max_length_from) = match (options.max_length, &source.max_length, model_limit)
    {
        (Some(n), _, _) => (n, "--max-length".to_string()),
        (None, Some((n, from)), Some(limit)) if *n > limit => (
            limit,
            format!("the model's position table ({limit} rows; {from} says {n})"),
        ),
        (None, Some((n, from)), _) => (*n, from.clone()),
        (None, None, Some(limit)) => (limit, "the model's position table".to_string()),
        (None, None, None) => return Err(text_err(
            "cannot tell the longest sequence the model takes (no position table was found and \
                 the tokenizer states no limit); give --max-length",
        )),
    };
    if let Some(limit) = model_limit.filter(|&l| max_length > l) {
        return Err(text_err(format!(
            "--max-length {max_length} is more than the model's {limit} positions"
        )));
    }
    let tokenizer = TextTokenizer::new(&source.tokenizer, max_length)
        .map_err(|e| text_err(format!("{}: {e}", source.described)))?;
    let ids_input = g
        .inputs()
        .iter()
        .find(|&&n| g.node(n).name == roles.ids)
        .copied()
        .ok_or_else(|| text_err(format!("the model has no input '{}'", roles.ids)))?;
    let ids = tables.carried(OutletId::new(ids_input, 0));
    let word_tables = tables.gathered(|idx| ids.contains(&idx));
    let (largest_id, vocabulary) = tokenizer.vocabulary();
    for (rows, node) in &word_tables {
        if let Some(id) = largest_id.filter(|&id| id as usize >= *rows) {
            return Err(text_err(format!(
                "{} has {vocabulary} tokens, with ids up to {id}, but the model's embedding table \
                 (gathered by '{node}') has {rows} rows: it is not this model's tokenizer",
                source.described
            )));
        }
    }
    let mut notes = Vec::new();
    if word_tables.is_empty() {
        notes.push(format!(
            "no embedding table gathered by the input '{}' was found, so the tokenizer's vocabulary \
             was not checked against the model",
            roles.ids
        ));
    }
    let config = TextConfig {
        tokenizer: source.tokenizer,
        source: source.described,
        max_length,
        max_length_from,
        model_limit,
        pooling: options.pooling.or(source.pooling),
        normalize: options.normalize.unwrap_or(source.normalize),
        roles,
    };
    Ok((config, notes))
}
