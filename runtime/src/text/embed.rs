//! `Model::tokenize` and `Model::embed`: texts to the model's inputs, and its token vectors to one
//! vector per text.

use ndarray::{Array2, Ix2, Ix3};

use super::config::{Pooling, TextConfig};
use super::pooling::{normalize_rows, pool};
use super::roles::Roles;
use super::tokenize::{TextTokenizer, Tokens};
use crate::error::{Error, Result};
use crate::model::{Model, Outputs};
use crate::plan::Dim;
use crate::tensor::{DType, Tensor};

/// How [`Model::embed`] turns texts into vectors; a field left `None` (or empty) takes the plan's
/// default (`fffc compile --tokenizer` stores them).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EmbedOptions {
    /// How token vectors become one vector per text. The plan's default, else none.
    pub pooling: Option<Pooling>,
    /// L2-normalise each vector. The plan's default, else no.
    pub normalize: Option<bool>,
    /// Truncate texts to this many tokens, at most the model's limit. The plan's limit by default.
    pub max_length: Option<usize>,
    /// `(role, input)` pairs naming which model input takes the ids, mask, type_ids or positions;
    /// roles not named keep the plan's assignment.
    pub input_map: Vec<(String, String)>,
    /// The output to pool. By default the first float output with one vector per token
    /// (`[batch, seq, width]`), else the first with one vector per text (`[batch, width]`).
    pub output: Option<String>,
}

impl Model {
    /// The plan's text section, if it was compiled with a tokenizer.
    pub fn text_config(&self) -> Option<&TextConfig> {
        self.graph().text.as_ref()
    }

    fn text_or_err(&self) -> Result<&TextConfig> {
        self.text_config().ok_or_else(|| {
            Error::invalid(
                "this plan has no tokenizer: compile it with `fffc compile --tokenizer tokenizer.json` \
                 to give it text, or give it token ids",
            )
        })
    }

    /// The plan's tokenizer, parsed on first use (a large vocabulary takes tens of milliseconds, which
    /// models run on token ids never pay).
    pub fn tokenizer(&self) -> Result<&TextTokenizer> {
        let text = self.text_or_err()?;
        self.text_tokenizer
            .get_or_init(|| {
                TextTokenizer::new(&text.tokenizer, text.max_length).map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| Error::plan(e.clone()))
    }

    /// Tokenises `texts` as one batch: padded to the longest, each truncated to the limit
    /// (`options.max_length`, else the plan's); [`Tokens::truncated`] lists the texts that were cut.
    pub fn tokenize(&self, texts: &[&str], options: &EmbedOptions) -> Result<Tokens> {
        let text = self.text_or_err()?;
        match options.max_length {
            Some(n) if n != text.max_length => {
                if let Some(limit) = text.model_limit.filter(|&l| n > l) {
                    return Err(Error::invalid(format!(
                        "max length {n} is more than the model's {limit} positions"
                    )));
                }
                self.tokenizer()?.with_max_length(n)?.encode(texts)
            }
            _ => self.tokenizer()?.encode(texts),
        }
    }

    /// The model's inputs for a tokenised batch, each in the element type the model declares.
    pub fn token_inputs(
        &self,
        tokens: &Tokens,
        options: &EmbedOptions,
    ) -> Result<Vec<(String, Tensor)>> {
        let text = self.text_or_err()?;
        let roles = if options.input_map.is_empty() {
            text.roles.clone()
        } else {
            let mut map = vec![("ids".to_string(), text.roles.ids.clone())];
            for (role, name) in [
                ("mask", &text.roles.mask),
                ("type_ids", &text.roles.type_ids),
                ("positions", &text.roles.positions),
            ] {
                if let Some(n) = name {
                    map.push((role.to_string(), n.clone()));
                }
            }
            // The caller's pairs replace the plan's for the same role, and free the inputs they name.
            map.retain(|(r, n)| !options.input_map.iter().any(|(r2, n2)| r == r2 || n == n2));
            map.extend(options.input_map.iter().cloned());
            Roles::resolve(self.inputs(), &map)?
        };
        let (batch, seq) = tokens.ids.dim();
        let mut positions = Array2::<i64>::zeros((batch, seq));
        for mut row in positions.rows_mut() {
            for (t, p) in row.iter_mut().enumerate() {
                *p = t as i64;
            }
        }
        let parts = [
            (Some(&roles.ids), &tokens.ids),
            (roles.mask.as_ref(), &tokens.mask),
            (roles.type_ids.as_ref(), &tokens.type_ids),
            (roles.positions.as_ref(), &positions),
        ];
        let mut inputs = Vec::new();
        for (name, values) in parts {
            let Some(name) = name else { continue };
            let spec = self
                .inputs()
                .iter()
                .find(|i| &i.name == name)
                .ok_or_else(|| Error::plan(format!("the text section names no input '{name}'")))?;
            // An input declared [1, seq] takes the first row (positions are the same in every row).
            let values = match spec.shape.first() {
                Some(Dim::Fixed(1)) if batch > 1 => values.slice(ndarray::s![0..1, ..]).to_owned(),
                _ => values.clone(),
            };
            let tensor = match spec.dtype {
                DType::I64 => Tensor::I64(values.into_dyn()),
                DType::I32 => Tensor::I32(values.mapv(|v| v as i32).into_dyn()),
                other => {
                    return Err(Error::invalid(format!(
                        "the model input '{name}' is {other}; tokens fill int64 or int32 inputs"
                    )))
                }
            };
            inputs.push((name.clone(), tensor));
        }
        Ok(inputs)
    }

    /// Tokenises `texts`, runs the model, and returns one vector per text, in order: the token
    /// vectors pooled and, if asked, normalised (see [`EmbedOptions`] for the defaults).
    pub fn embed(&self, texts: &[&str], options: &EmbedOptions) -> Result<Array2<f32>> {
        let tokens = self.tokenize(texts, options)?;
        self.embed_tokens(&tokens, options)
    }

    /// [`Model::embed`] on texts tokenised already.
    pub fn embed_tokens(&self, tokens: &Tokens, options: &EmbedOptions) -> Result<Array2<f32>> {
        let outputs = self.run(self.token_inputs(tokens, options)?)?;
        self.pool_outputs(&outputs, tokens, options)
    }

    /// The pooling and normalisation `options` ask for, with the plan's defaults filled in.
    pub fn embed_settings(&self, options: &EmbedOptions) -> (Pooling, bool) {
        let text = self.text_config();
        let pooling = options
            .pooling
            .or(text.and_then(|t| t.pooling))
            .unwrap_or(Pooling::None);
        let normalize = options
            .normalize
            .unwrap_or(text.is_some_and(|t| t.normalize));
        (pooling, normalize)
    }

    /// One vector per text from a run's outputs.
    pub fn pool_outputs(
        &self,
        outputs: &Outputs,
        tokens: &Tokens,
        options: &EmbedOptions,
    ) -> Result<Array2<f32>> {
        let (pooling, normalize) = self.embed_settings(options);
        let (batch, seq) = tokens.ids.dim();
        let f32s = || {
            outputs.iter().filter_map(|(n, t)| match t {
                Tensor::F32(a) => Some((n, a)),
                _ => None,
            })
        };
        let chosen = match &options.output {
            Some(name) => {
                let (_, t) = outputs.iter().find(|(n, _)| n == name).ok_or_else(|| {
                    Error::invalid(format!(
                        "the model has no output '{name}' (its outputs are {})",
                        self.output_names().join(", ")
                    ))
                })?;
                let Tensor::F32(a) = t else {
                    return Err(Error::invalid(format!(
                        "the output '{name}' is {}, not float32",
                        t.dtype()
                    )));
                };
                Some(a)
            }
            None => f32s()
                .find(|(_, a)| a.ndim() == 3 && a.shape()[..2] == [batch, seq])
                .or_else(|| f32s().find(|(_, a)| a.ndim() == 2 && a.shape()[0] == batch))
                .map(|(_, a)| a),
        };
        let Some(chosen) = chosen else {
            return Err(Error::invalid(format!(
                "no output of the model holds one float vector per token ([{batch}, {seq}, width]) \
                 or per text ([{batch}, width])"
            )));
        };
        let mut vectors = match chosen.ndim() {
            3 if chosen.shape()[..2] == [batch, seq] => {
                if pooling == Pooling::None {
                    return Err(Error::invalid(
                        "no pooling was asked for (and the plan stores none), so the model's outputs \
                         are one vector per token; choose cls, mean or max",
                    ));
                }
                let tokens_view = chosen
                    .view()
                    .into_dimensionality::<Ix3>()
                    .map_err(|e| Error::Internal(format!("a rank-3 output is not 3-D: {e}")))?;
                pool(tokens_view, tokens.mask.view(), pooling)?
            }
            2 if chosen.shape()[0] == batch => chosen
                .view()
                .into_dimensionality::<Ix2>()
                .map_err(|e| Error::Internal(format!("a rank-2 output is not 2-D: {e}")))?
                .to_owned(),
            _ => {
                return Err(Error::invalid(format!(
                "the chosen output is {:?}; expected [{batch}, {seq}, width] or [{batch}, width]",
                chosen.shape()
            )))
            }
        };
        if normalize {
            normalize_rows(&mut vectors);
        }
        Ok(vectors)
    }
}
