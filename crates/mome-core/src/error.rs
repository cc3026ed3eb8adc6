//! The error type of `mome-core`.

use std::path::PathBuf;

/// A shape mismatch between a stored tensor and the variable it should load into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    /// The variable name.
    pub name: String,
    /// The shape of the variable in the model.
    pub expected: Vec<i64>,
    /// The shape found in the file / tensor list.
    pub found: Vec<i64>,
}

impl std::fmt::Display for ShapeMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (expected {:?}, found {:?})",
            self.name, self.expected, self.found
        )
    }
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "none".to_string();
    }
    items
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Everything that can go wrong in `mome-core`. Each variant names the file, field,
/// tensor or step involved so that a user can act on it. A wrapped error is kept as
/// the `source` and not repeated in the message, so printing the whole chain
/// (anyhow's `{:#}`) shows every cause once.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error raised by libtorch.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// An I/O error on a named path (the message is the path; the cause is the source).
    #[error("{}", path.display())]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file or folder could not be written atomically (mome-data's `fsutil`).
    #[error(transparent)]
    Data(#[from] mome_data::Error),
    /// JSON (de)serialisation failed.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A safetensors file could not be read or written.
    #[error("{}: invalid safetensors data", path.display())]
    Safetensors {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: safetensors::SafeTensorError,
    },
    /// A tensor dtype that cannot be stored or loaded.
    #[error("unsupported dtype for tensor `{name}`: {dtype}")]
    UnsupportedDtype {
        /// The tensor name.
        name: String,
        /// The dtype, as text.
        dtype: String,
    },
    /// Tensors could not be loaded into a model: the names involved are listed.
    #[error(
        "cannot load tensors: missing keys: [{}]; unexpected keys: [{}]; shape mismatches: [{}]",
        join(missing),
        join(unexpected),
        join(mismatched)
    )]
    LoadMismatch {
        /// Variables of the model with no tensor supplied.
        missing: Vec<String>,
        /// Supplied tensors with no variable of that name.
        unexpected: Vec<String>,
        /// Variables whose supplied tensor has another shape.
        mismatched: Vec<ShapeMismatch>,
    },
    /// An invalid setting or hyperparameter, rejected before any work starts.
    #[error("invalid config: {0}")]
    Config(String),
    /// A device that cannot be used (CUDA missing, ordinal out of range, bad text).
    #[error("device: {0}")]
    Device(String),
    /// A loss or gradient norm that is NaN or infinite.
    #[error("non-finite {what} at optimizer step {step}: {value}")]
    NonFinite {
        /// The optimizer step (1-based) at which it happened.
        step: u64,
        /// What was non-finite (`loss`, `grad_norm`, ...).
        what: String,
        /// The offending value.
        value: f64,
    },
    /// A checkpoint folder or file that is missing pieces or inconsistent.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint folder or file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A custom CUDA kernel could not be compiled, loaded or launched, or was given
    /// tensors it does not take ([`crate::kernels`]).
    #[error("CUDA kernel: {0}")]
    Kernel(String),
    /// A multi-process (data-parallel) failure: rendezvous, NCCL, a lost rank.
    #[error("distributed: {0}")]
    Distributed(String),
    /// Optimizer state that does not match the model's parameters.
    #[error("optimizer state: {0}")]
    OptimizerState(String),
    /// An error raised by a caller-supplied callback (batch source, loss, eval),
    /// kept as the source.
    #[error(transparent)]
    External(Box<dyn std::error::Error + Send + Sync + 'static>),
    /// An error raised by a caller-supplied callback, as text only.
    #[error("{0}")]
    Other(String),
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
