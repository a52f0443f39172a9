//! Typed errors for the model layer. Every variant names the file, tensor or
//! shape that is wrong so that a user can act on the message.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),

    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid config {path}: {message}")]
    Config { path: PathBuf, message: String },

    #[error("{file}: missing tensor `{name}`")]
    MissingTensor { file: String, name: String },

    #[error("{file}: tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    ShapeMismatch {
        file: String,
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },

    #[error("{file}: {message}")]
    BadFile { file: String, message: String },

    #[error(
        "no weights found in {dir}: expected model.safetensors, model.safetensors.index.json or pytorch_model.bin"
    )]
    NoWeights { dir: PathBuf },

    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },

    #[error(transparent)]
    Hub(#[from] crate::hub::HubError),

    #[error("invalid input: {0}")]
    Input(String),

    /// The forward pass gave NaN or infinite numbers: the weights, not the input.
    #[error(
        "{0}: the model's or the experts' weights overflow (an imported adapter's lora_alpha, a run that diverged)"
    )]
    NotFinite(String),

    #[error("adapter for module `{module}`: {message}")]
    Adapter { module: String, message: String },
}

pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn adapter(module: impl Into<String>, message: impl Into<String>) -> Self {
        ModelError::Adapter {
            module: module.into(),
            message: message.into(),
        }
    }
}

/// A candle error without the backtrace candle attaches when `RUST_BACKTRACE` is set
/// (dozens of lines of frames inside a one-line message about a user's file).
pub fn without_backtrace(e: candle_core::Error) -> candle_core::Error {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => *inner,
        e => e,
    }
}
