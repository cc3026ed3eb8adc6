//! The error type of `mome-pipeline`.

use std::path::PathBuf;

/// Everything that can go wrong in a pipeline or a bench: the libraries' errors,
/// kept as sources, and the pipeline's own (config, stage order, report).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An invalid setting, rejected before any stage runs.
    #[error("invalid pipeline config: {0}")]
    Config(String),
    /// A stage needs an earlier stage that is not complete or not up to date.
    #[error("{0}")]
    Stage(String),
    /// A stage failed.
    #[error("stage `{stage}` failed")]
    StageFailed {
        /// The stage.
        stage: String,
        /// What went wrong.
        #[source]
        source: Box<Error>,
    },
    /// A file the report reads is missing a value or cannot be read.
    #[error("report: {0}")]
    Report(String),
    /// An I/O error on a named path (the message is the path; the cause is the source,
    /// printed once by a chain printer such as anyhow's `{:#}`).
    #[error("{}", path.display())]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// mome-core.
    #[error(transparent)]
    Core(#[from] mome_core::Error),
    /// mome-data.
    #[error(transparent)]
    Data(#[from] mome_data::Error),
    /// mome-experts.
    #[error(transparent)]
    Experts(#[from] mome_experts::Error),
    /// mome-distill.
    #[error(transparent)]
    Distill(#[from] mome_distill::Error),
    /// mome-moe.
    #[error(transparent)]
    Moe(#[from] mome_moe::Error),
    /// mome-router.
    #[error(transparent)]
    Router(#[from] mome_router::RouterError),
    /// JSON (de)serialisation failed.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A TOML file could not be written.
    #[error(transparent)]
    Toml(#[from] toml::ser::Error),
    /// A safetensors header could not be read.
    #[error("{}: invalid safetensors data", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: safetensors::SafeTensorError,
    },
}

impl Error {
    /// Builds an [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
