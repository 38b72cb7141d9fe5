//! The runtime's error type: every failure says what was wrong, never panics.

use crate::tensor::DType;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The plan file is unreadable, truncated, corrupted or of another format version.
    #[error("invalid plan: {0}")]
    Plan(String),
    /// The caller's inputs do not match what the model expects.
    #[error("invalid input: {0}")]
    Input(String),
    /// An op met data it cannot compute on (shapes that do not broadcast, an index out of range, ...).
    #[error("{0}")]
    Invalid(String),
    /// An op was asked, by data, for a tensor larger than it may allocate (see
    /// [`crate::opset::with_element_limit`]).
    #[error("{0}")]
    TooLarge(String),
    /// An op failed; the message names the node and includes the cause (so it is not also a `source`).
    #[error("node '{node}' ({op}): {cause}")]
    Node {
        node: String,
        op: String,
        cause: Box<Error>,
    },
    /// A defect of the runtime: a check that should have refused the plan or the inputs before a kernel
    /// met them did not, and the kernel panicked. The panic is contained (see [`contain_panic`]), the
    /// model stays usable, and the message is the panic's.
    #[error("internal error (please report it): {0}")]
    Internal(String),
    /// A file could not be read; the message includes the OS error.
    #[error("{context}: {cause}")]
    Io {
        context: String,
        cause: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs `f`, turning a panic inside it into [`Error::Internal`] instead of unwinding into the caller,
/// so that no input or plan can take down a program that embeds the runtime. Whatever `f` was
/// changing when it panicked is dropped with the error: the model's shared state (its recycler, spare
/// value slots, thread-choice statistics) is made to survive an unwinding call.
pub(crate) fn contain_panic<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string());
        Err(Error::Internal(message))
    })
}

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Error {
        Error::Invalid(msg.into())
    }

    pub fn plan(msg: impl Into<String>) -> Error {
        Error::Plan(msg.into())
    }

    pub fn input(msg: impl Into<String>) -> Error {
        Error::Input(msg.into())
    }

    pub fn dtype(expected: &str, got: DType) -> Error {
        Error::Invalid(format!("expected {expected}, got {got}"))
    }

    pub fn io(context: impl Into<String>, cause: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            cause,
        }
    }
}
