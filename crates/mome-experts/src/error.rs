//! Error type of mome-experts.

use std::path::PathBuf;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error from mome-core (tensor files, loading into a var store).
    #[error(transparent)]
    Core(#[from] mome_core::Error),
    /// An error raised by libtorch.
    #[error("libtorch: {0}")]
    Tch(#[from] tch::TchError),
    /// An I/O error on a file or directory.
    #[error("i/o error on {}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON (de)serialisation error.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// An invalid model or generation configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A checkpoint that does not fit the model; every offending key is named.
    #[error(
        "checkpoint {} does not fit the model: missing [{}], unexpected [{}], mismatched [{}]",
        path.display(),
        missing.join(", "),
        unexpected.join(", "),
        mismatched.join(", ")
    )]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// Model parameters absent from the file.
        missing: Vec<String>,
        /// File tensors the model has no parameter for.
        unexpected: Vec<String>,
        /// Keys present in both with different shapes or values (`name: detail`).
        mismatched: Vec<String>,
    },
    /// A token id outside `[0, vocab_size)`.
    #[error("token id {id} is outside the vocabulary [0, {vocab_size})")]
    TokenOutOfRange {
        /// The offending id (the smallest negative one or the largest one).
        id: i64,
        /// The model's vocabulary size.
        vocab_size: i64,
    },
    /// Reading token shards failed.
    #[error(transparent)]
    Data(#[from] mome_data::Error),
    /// Inputs with wrong shapes, kinds or lengths.
    #[error("invalid input: {0}")]
    Input(String),
}

impl Error {
    /// Wraps an [`std::io::Error`] with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Lets model code run inside mome-core's training callbacks with `?`.
/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;
