//! Error type of mome-moe.

use std::path::PathBuf;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error from the expert modules.
    #[error(transparent)]
    Experts(#[from] mome_experts::Error),
    /// An error from mome-core (tensor files, trainer, optimizer).
    #[error(transparent)]
    Core(#[from] mome_core::Error),
    /// An error from mome-data (shards, samplers, atomic folders).
    #[error(transparent)]
    Data(#[from] mome_data::Error),
    /// An error from the router (loading or using a router file).
    #[error(transparent)]
    Router(#[from] mome_router::RouterError),
    /// An error from mome-distill (teacher, KD loss, weighting strategy).
    #[error(transparent)]
    Distill(#[from] mome_distill::Error),
    /// An error while drawing a chart.
    #[error(transparent)]
    Plot(#[from] mome_plot::PlotError),
    /// An error raised by libtorch.
    #[error(transparent)]
    Tch(#[from] tch::TchError),
    /// A JSON (de)serialisation error.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// An I/O error on a file or directory (the message is the path; the cause is the
    /// source, printed once by a chain printer such as anyhow's `{:#}`).
    #[error("{}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An invalid MoE configuration or evaluation setting.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A routing that does not fit the model (unknown domain, wrong batch size, ...).
    #[error("routing: {0}")]
    Routing(String),
    /// Inputs with wrong shapes or kinds.
    #[error("invalid input: {0}")]
    Input(String),
    /// A saved MoE folder that does not fit its config; every offending key is named.
    #[error(
        "MoE folder {} does not fit its config: missing [{}], unexpected [{}], mismatched [{}]",
        path.display(),
        missing.join(", "),
        unexpected.join(", "),
        mismatched.join(", ")
    )]
    Checkpoint {
        /// The folder.
        path: PathBuf,
        /// Parameters absent from the files (`file: key`).
        missing: Vec<String>,
        /// File tensors the model has no parameter for.
        unexpected: Vec<String>,
        /// Keys with other shapes or values than expected (`key: detail`).
        mismatched: Vec<String>,
    },
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

/// Lets MoE code run inside mome-core's training callbacks with `?`.
/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;
