//! Text in, vectors out: the tokenizer a plan carries, how its outputs become one vector per text, and
//! which model inputs the tokens fill.
//!
//! A plan compiled with `fffc compile --tokenizer` holds a [`TextConfig`]: a Hugging Face
//! `tokenizer.json`, the longest sequence to truncate to, and the defaults `embed` uses (pooling,
//! normalisation). [`Model::tokenize`](crate::Model::tokenize) turns texts into the model's inputs
//! (padded to the longest, truncated to the limit), and [`Model::embed`](crate::Model::embed) runs the
//! model and pools its token vectors as sentence-transformers does. The configuration and the pooling
//! are plain data and arithmetic; the tokenizer itself needs the `text` feature.

mod config;
#[cfg(feature = "text")]
mod embed;
mod pooling;
pub mod roles;
#[cfg(feature = "text")]
mod tokenize;

pub use config::{Pooling, TextConfig};
#[cfg(feature = "text")]
pub use embed::EmbedOptions;
pub use pooling::{normalize_rows, pool};
pub use roles::Roles;
#[cfg(feature = "text")]
pub use tokenize::{TextTokenizer, Tokens};
