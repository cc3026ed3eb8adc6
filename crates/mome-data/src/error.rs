//! The error type of `mome-data`.

use std::path::PathBuf;

/// Everything that can go wrong in `mome-data`. Each variant names the file, line,
/// field or domain involved so that a user can act on it.
///
/// A variant that wraps another error keeps it as its `source` and does not repeat it
/// in its own message, so a printer of the whole chain (anyhow's `{:#}`) shows every
/// cause once. Locations are written `file:LINE`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a named path (the message is the path; the cause is the source).
    #[error("{}", path.display())]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A path that cannot be used as given.
    #[error("{path}: {reason}")]
    InvalidPath {
        /// The path.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// JSON (de)serialisation failed.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// An invalid setting or hyperparameter, rejected before any work starts.
    #[error("invalid config: {0}")]
    Config(String),
    // --- token shards, samplers, encoding (shards.rs, sampler.rs, encode.rs) ---
    /// A token shard folder, manifest or shard file is malformed.
    #[error("{path}: {reason}")]
    Shards {
        /// The manifest or shard file involved.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A shard folder written by a newer mome than this build.
    #[error(
        "{path}: shard format_version {found} is newer than this build supports ({supported}); \
         upgrade mome or re-encode the shards"
    )]
    ShardsVersion {
        /// The manifest.
        path: PathBuf,
        /// The version in the manifest.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// The shards were encoded with a different tokenizer than the one in use.
    #[error(
        "tokenizer mismatch: shards were encoded with tokenizer sha256 {shards}, \
         but the tokenizer in use has sha256 {given}; re-encode the shards or use the matching tokenizer"
    )]
    TokenizerMismatch {
        /// sha256 recorded in the shard manifest.
        shards: String,
        /// sha256 of the tokenizer in use.
        given: String,
    },
    /// The model vocabulary cannot hold the shards' token ids.
    #[error(
        "vocabulary mismatch: shards use vocab_size {shards} but the model has only {model} \
         embeddings; build the model with vocab_size >= {shards}"
    )]
    VocabMismatch {
        /// vocab_size of the shards.
        shards: usize,
        /// vocab_size of the model.
        model: usize,
    },
    /// A token id outside the vocabulary was given to the shard writer.
    #[error("token id {id} at position {position} of a {split}/{domain} sequence is >= vocab_size {vocab_size}")]
    TokenOutOfRange {
        /// The offending id.
        id: u32,
        /// Its position in the sequence.
        position: usize,
        /// The split.
        split: String,
        /// The domain.
        domain: String,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// A split that the shards do not contain.
    #[error("unknown split {split:?}; the shards contain: {known:?}")]
    UnknownSplit {
        /// The requested split.
        split: String,
        /// The splits present.
        known: Vec<String>,
    },
    /// A domain that a split does not contain.
    #[error("unknown domain {domain:?} in split {split:?}; known domains: {known:?}")]
    UnknownDomain {
        /// The split.
        split: String,
        /// The requested domain.
        domain: String,
        /// The domains present in the split.
        known: Vec<String>,
    },
    /// A sequence index past the end of a domain.
    #[error(
        "sequence index {index} out of range for {split}/{domain}, which holds {len} sequences"
    )]
    SequenceIndex {
        /// The split.
        split: String,
        /// The domain.
        domain: String,
        /// The requested index.
        index: usize,
        /// Number of sequences in the domain.
        len: usize,
    },
    /// A sequence of the wrong length (writer input or reader output buffer).
    #[error("sequence length {found} does not match the shards' seq_len {expected}")]
    SequenceLength {
        /// The shards' seq_len.
        expected: usize,
        /// The length given.
        found: usize,
    },
    /// A sampler state that does not belong to this sampler.
    #[error("cannot restore sampler state: {0}")]
    SamplerState(String),
    /// A JSON Lines input line that cannot be used.
    #[error("{}:{line}: {reason}", path.display())]
    JsonLine {
        /// The JSONL file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        reason: String,
        /// The JSON parse error, when there was one.
        #[source]
        source: Option<serde_json::Error>,
    },
    /// The tokenizer failed on an input.
    #[error("tokenizer failed on {context}")]
    Tokenize {
        /// Where (file:line or document).
        context: String,
        /// The tokenizer's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A record lacks a field the corpus spec asks for, or the field has the wrong type.
    #[error("{}:{line}: field `{field}` {reason}", path.display())]
    MissingField {
        /// The input file.
        path: PathBuf,
        /// 1-based line of a JSON Lines file, or row of a parquet file.
        line: u64,
        /// The field name.
        field: String,
        /// What is wrong ("is missing", "is not a string or integer").
        reason: String,
    },
    /// Input bytes that are not UTF-8 (use `Utf8Policy::Skip` to skip such records).
    #[error("{}{}: invalid UTF-8 (fix the file, or skip such records where the command allows it)", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    InvalidUtf8 {
        /// The input file.
        path: PathBuf,
        /// 1-based line number for line-oriented inputs.
        line: Option<u64>,
        /// The decoding error.
        #[source]
        source: std::str::Utf8Error,
    },
    /// A parquet file that cannot be read.
    #[error("{}: cannot read parquet", path.display())]
    Parquet {
        /// The parquet file.
        path: PathBuf,
        /// The parquet error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// A domain without any usable record.
    #[error("domain `{domain}` is empty: {reason}")]
    EmptyDomain {
        /// The domain name.
        domain: String,
        /// Why (which input, which split).
        reason: String,
    },
    /// Aligned domains (`common_articles`) share no id.
    #[error("no article id is present in every one of the domains {domains:?}; check the id field and the inputs")]
    NoCommonIds {
        /// The aligned domains.
        domains: Vec<String>,
    },
    /// Balancing cannot bring a domain within `max_diff_percent` of the smallest one.
    #[error("cannot balance domain `{domain}` within the band: {reason}")]
    BandUnreachable {
        /// The domain name.
        domain: String,
        /// What prevents it, and what to try.
        reason: String,
    },
    /// A tokenizer file that cannot be loaded, or a tokenizer that cannot be built or trained.
    #[error("tokenizer {}", path.display())]
    Tokenizer {
        /// The tokenizer file (or output path when training).
        path: PathBuf,
        /// The tokenizers library's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// The message of `e` and of each of its sources, joined by `": "`: what anyhow's
/// `{:#}` prints. Use it where an error must become text (a string field, another
/// error's message): `e.to_string()` alone leaves the causes out.
///
/// ```
/// use mome_data::error::{chain, Error};
///
/// let e = Error::Io {
///     path: "shards/manifest.json".into(),
///     source: std::io::Error::new(std::io::ErrorKind::NotFound, "not found"),
/// };
/// assert_eq!(e.to_string(), "shards/manifest.json");
/// assert_eq!(chain(&e), "shards/manifest.json: not found");
/// ```
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let m = c.to_string();
        if !m.is_empty() {
            s.push_str(": ");
            s.push_str(&m);
        }
        cause = c.source();
    }
    s
}

/// Runs `f`, a call into a parsing library (parquet, tokenizers) on bytes of an
/// input file, and turns a panic of that library into `Err(message)`. Those crates
/// panic on some corrupt inputs (found by fuzzing: parquet's footer decoder unwraps,
/// tokenizers' decoder deserializer panics on some malformed JSON); the callers
/// return the message as a typed error naming the file. The panic hook still runs
/// (a line on stderr).
pub(crate) fn catch_library_panic<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| {
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("no message");
        format!("the file is corrupt or unsupported (the parsing library panicked: {msg})")
    })
}
