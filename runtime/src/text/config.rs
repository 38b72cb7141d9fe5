//! What a plan stores about text: the tokenizer and the defaults for turning texts into vectors.

use serde::{Deserialize, Serialize};

use super::roles::Roles;
use crate::error::{Error, Result};

/// How the token vectors of one text become one vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// The first token's vector (BERT's `[CLS]`).
    Cls,
    /// The mean of the vectors of the text's tokens (padding excluded).
    Mean,
    /// The element-wise maximum over the text's tokens (padding excluded).
    Max,
    /// No pooling: the model's outputs as they are.
    None,
}

impl Pooling {
    pub const NAMES: [&'static str; 4] = ["cls", "mean", "max", "none"];

    pub fn name(self) -> &'static str {
        match self {
            Pooling::Cls => "cls",
            Pooling::Mean => "mean",
            Pooling::Max => "max",
            Pooling::None => "none",
        }
    }
}

impl std::fmt::Display for Pooling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Pooling {
    type Err = Error;

    fn from_str(s: &str) -> Result<Pooling> {
        match s {
            "cls" => Ok(Pooling::Cls),
            "mean" => Ok(Pooling::Mean),
            "max" => Ok(Pooling::Max),
            "none" => Ok(Pooling::None),
            _ => Err(Error::invalid(format!(
                "unknown pooling '{s}'; expected one of {}",
                Pooling::NAMES.join(", ")
            ))),
        }
    }
}

/// The plan's text section (`fffc compile --tokenizer`). Plans without it run on token ids only; a
/// runtime that predates it ignores it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextConfig {
    /// The Hugging Face `tokenizer.json`, as given.
    pub tokenizer: String,
    /// Where the tokenizer came from (a file or a sentence-transformers folder), for humans.
    pub source: String,
    /// Texts are truncated to this many tokens, special tokens included.
    pub max_length: usize,
    /// What set `max_length` (the folder's `max_seq_length`, the model's position table, ...).
    pub max_length_from: String,
    /// The most tokens the model itself takes (the rows of its position table), where the compiler
    /// found it: a caller's longer `max_length` is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_limit: Option<usize>,
    /// The pooling `embed` uses when the caller names none; `None` when the plan has no default.
    pub pooling: Option<Pooling>,
    /// Whether `embed` L2-normalises its vectors when the caller does not say.
    pub normalize: bool,
    /// The model inputs the tokens fill.
    pub roles: Roles,
}
