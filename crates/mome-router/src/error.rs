//! Error type of the router crate.

use std::path::PathBuf;

/// Everything that can go wrong while training, loading or running a router.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file is not valid JSON or does not have the expected shape.
    #[error("{what}: invalid JSON: {source}")]
    Json {
        /// What was being parsed.
        what: String,
        /// The cause.
        source: serde_json::Error,
    },
    /// A file is not a mome router file.
    #[error("not a mome router file: {0}")]
    NotARouter(String),
    /// A router file of a version this build does not read.
    #[error("router file version {found} is not supported (this build reads version {expected})")]
    Version {
        /// Version found in the file.
        found: u64,
        /// Version this build reads.
        expected: u32,
    },
    /// The contents of a router (file) are inconsistent.
    #[error("invalid router: {0}")]
    Invalid(String),
    /// Invalid hyperparameters or training settings.
    #[error("invalid parameters: {0}")]
    Params(String),
    /// Training failed.
    #[error("training failed: {0}")]
    Train(String),
    /// A linfa algorithm failed.
    #[error("linfa: {0}")]
    Linfa(#[from] linfa::Error),
    /// The tokenizer is missing, failed, or is not the one the router was trained with.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Error of the data crate (shards, tokenizer loading, atomic writes).
    #[error(transparent)]
    Data(#[from] mome_data::Error),
    /// Drawing a figure failed.
    #[error("plot: {0}")]
    Plot(#[from] mome_plot::PlotError),
}

/// Result alias of this crate.
pub type Result<T, E = RouterError> = std::result::Result<T, E>;
