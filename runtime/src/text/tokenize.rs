//! The plan's Hugging Face tokenizer, set up to pad a batch to its longest text and truncate each text
//! to the model's limit.

use ndarray::Array2;
use tokenizers::{
    PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection,
    TruncationParams, TruncationStrategy,
};

use crate::error::{Error, Result};

/// A tokenised batch: one row per text, padded to the longest.
#[derive(Clone, Debug, PartialEq)]
pub struct Tokens {
    pub ids: Array2<i64>,
    /// 1 for a token of the text, 0 for padding.
    pub mask: Array2<i64>,
    /// Segment ids (0 for a single text).
    pub type_ids: Array2<i64>,
    /// The indices of the texts that were cut to the length limit.
    pub truncated: Vec<usize>,
    /// The limit they were cut to, in tokens.
    pub max_length: usize,
}

/// A tokenizer as the plan stores it, padding to the longest text of a batch and truncating to
/// `max_length` tokens (special tokens included).
pub struct TextTokenizer {
    inner: Tokenizer,
    max_length: usize,
}

impl TextTokenizer {
    /// Parses a `tokenizer.json` and sets its padding and truncation (the file's own settings, made
    /// for training or for another length, are replaced; its padding token is kept).
    pub fn new(json: &str, max_length: usize) -> Result<TextTokenizer> {
        let mut inner: Tokenizer = json
            .parse()
            .map_err(|e| Error::invalid(format!("the tokenizer does not parse: {e}")))?;
        let (pad_id, pad_token) = match inner.get_padding() {
            Some(p) => (p.pad_id, p.pad_token.clone()),
            None => ["[PAD]", "<pad>", "<PAD>"]
                .iter()
                .find_map(|t| inner.token_to_id(t).map(|id| (id, t.to_string())))
                .unwrap_or((0, "[PAD]".to_string())),
        };
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            // Right padding keeps the first token of every text at position 0, where CLS pooling reads.
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token,
        }));
        truncating(inner, max_length)
    }

    /// This tokenizer truncating at `max_length` instead (a copy: cheaper than parsing the file again).
    pub fn with_max_length(&self, max_length: usize) -> Result<TextTokenizer> {
        truncating(self.inner.clone(), max_length)
    }

    /// The length texts are truncated to.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The largest token id the tokenizer can produce, and how many tokens it knows (added tokens
    /// included).
    pub fn vocabulary(&self) -> (Option<u32>, usize) {
        let vocab = self.inner.get_vocab(true);
        (vocab.values().copied().max(), vocab.len())
    }

    /// Tokenises `texts` as one batch. An empty list is refused; so is a text that yields no token
    /// (an empty string with a tokenizer that adds no special tokens), which has nothing to embed.
    pub fn encode(&self, texts: &[&str]) -> Result<Tokens> {
        if texts.is_empty() {
            return Err(Error::input("no texts were given"));
        }
        let encodings = self
            .inner
            .encode_batch_fast(texts.to_vec(), true)
            .map_err(|e| Error::input(format!("cannot tokenise the texts: {e}")))?;
        let seq = encodings.first().map_or(0, |e| e.len());
        let batch = encodings.len();
        let mut tokens = Tokens {
            ids: Array2::zeros((batch, seq)),
            mask: Array2::zeros((batch, seq)),
            type_ids: Array2::zeros((batch, seq)),
            truncated: Vec::new(),
            max_length: self.max_length,
        };
        for (b, e) in encodings.iter().enumerate() {
            if e.len() != seq {
                return Err(Error::Internal(format!(
                    "the tokenizer padded text {b} to {} tokens, the batch to {seq}",
                    e.len()
                )));
            }
            if !e.get_attention_mask().contains(&1) {
                return Err(Error::input(format!(
                    "text {b} has no tokens (the tokenizer adds no special tokens to an empty text)"
                )));
            }
            if !e.get_overflowing().is_empty() {
                tokens.truncated.push(b);
            }
            let rows = [&mut tokens.ids, &mut tokens.mask, &mut tokens.type_ids];
            let sources = [e.get_ids(), e.get_attention_mask(), e.get_type_ids()];
            for (row, source) in rows.into_iter().zip(sources) {
                for (t, &v) in source.iter().enumerate() {
                    row[[b, t]] = i64::from(v);
                }
            }
        }
        Ok(tokens)
    }
}

/// `inner` set to cut each text to `max_length` tokens, from the right.
fn truncating(mut inner: Tokenizer, max_length: usize) -> Result<TextTokenizer> {
    inner
        .with_truncation(Some(TruncationParams {
            direction: TruncationDirection::Right,
            max_length,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        }))
        .map_err(|e| Error::invalid(format!("cannot truncate to {max_length} tokens: {e}")))?;
    Ok(TextTokenizer { inner, max_length })
}
