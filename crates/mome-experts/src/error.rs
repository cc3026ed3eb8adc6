//! Error type of mome-experts.

use std::path::PathBuf;

/// Everything that can go wrong in this crate. A wrapped error is kept as the
/// `source` and not repeated in the message, so printing the whole chain (anyhow's
/// `{:#}`) shows every cause once.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error from mome-core (tensor files, loading into a var store).
    #[error(transparent)]
    Core(#[from] mome_core::Error),
    /// An error raised by libtorch.
    #[error(transparent)]
    Tch(#[from] tch::TchError),
    /// An I/O error on a file or directory (the message is the path; the cause is the
    /// source).
    #[error("{}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON (de)serialisation error.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A model `config.json` that cannot be parsed or holds invalid values.
    #[error("{}: {reason}", path.display())]
    ConfigFile {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
        /// The JSON parse error, when there was one.
        #[source]
        source: Option<serde_json::Error>,
    },
    /// A stored tensor holding NaN or infinite values (the first one, in name order).
    #[error(
        "{}: tensor `{name}` holds non-finite values (NaN or infinity); the weights are \
         corrupt or come from a diverged run",
        path.display()
    )]
    NonFiniteTensor {
        /// The weights file (or the origin given to `load_hf_tensors`).
        path: PathBuf,
        /// The tensor's name in the file.
        name: String,
    },
    /// An evaluation whose loss on a domain is NaN or infinite.
    #[error(
        "the {split} loss of domain `{domain}` is not finite ({loss}); the model produces \
         non-finite logits on it"
    )]
    NonFiniteLoss {
        /// The split evaluated.
        split: String,
        /// The domain.
        domain: String,
        /// The loss (NaN or ±inf).
        loss: f64,
    },
    /// Logits that leave nothing to pick: NaN, or for sampling +inf or a row of -inf
    /// (softmax turns them into NaN).
    #[error(
        "the logits of sequence {row} are not finite (NaN, or infinities that leave no \
         probability mass to sample from); the model's weights or activations overflow"
    )]
    NonFiniteLogits {
        /// The batch row (0-based).
        row: usize,
    },
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
