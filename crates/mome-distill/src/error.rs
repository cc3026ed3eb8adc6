//! The error type of `mome-distill`.

use std::path::PathBuf;

/// Everything that can go wrong in distillation. Each variant names the file,
/// field or quantity involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error of the training core (trainer, checkpoints, metrics).
    #[error(transparent)]
    Core(#[from] mome_core::Error),
    /// An error of the model code.
    #[error(transparent)]
    Experts(#[from] mome_experts::Error),
    /// An error of the data layer (shards, sampler, atomic writes).
    #[error(transparent)]
    Data(#[from] mome_data::Error),
    /// An error raised by libtorch.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
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
    /// JSON (de)serialisation failed.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// An invalid setting, rejected before any work starts.
    #[error("invalid distillation config: {0}")]
    Config(String),
    /// Tensors of the wrong shape or dtype were given to a loss.
    #[error("invalid loss input: {0}")]
    Shape(String),
    /// Teacher and student (or a cache) disagree on the vocabulary: they cannot
    /// share a tokenizer.
    #[error("vocabulary mismatch: {what} has {found} tokens but the student has {student}; teacher and student must share one tokenizer")]
    VocabMismatch {
        /// The teacher, cache or shards involved.
        what: String,
        /// Its vocabulary size.
        found: usize,
        /// The student's vocabulary size.
        student: usize,
    },
    /// The teacher folder is missing or lacks `config.json` / `model.safetensors`.
    #[error("teacher {path}: {reason}")]
    MissingTeacher {
        /// The folder given as teacher.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// A teacher cache that does not belong to these shards / this teacher / run.
    #[error("teacher cache {path}: {what} does not match: the cache was built for {cached}, this run has {given}")]
    CacheMismatch {
        /// The cache folder.
        path: PathBuf,
        /// What differs (shards manifest, teacher weights, temperature, ...).
        what: String,
        /// The value recorded in the cache.
        cached: String,
        /// The value of this run.
        given: String,
    },
    /// A plot could not be drawn.
    #[error(transparent)]
    Plot(#[from] mome_plot::PlotError),
    /// One run of an experiment failed.
    #[error("run {name}")]
    Run {
        /// The run's name.
        name: String,
        /// What went wrong.
        #[source]
        source: Box<Error>,
    },
    /// A teacher cache folder that is damaged or incomplete.
    #[error("teacher cache {path}: {reason}")]
    Cache {
        /// The cache folder or file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
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
