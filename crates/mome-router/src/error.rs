//! Error type of the router crate.
//!
//! Messages never repeat their cause: a variant with a `#[source]` leaves it out of
//! its own text, so that `{:#}` (anyhow) or a walk of [`std::error::Error::source`]
//! prints every cause once. Locations are written `file:LINE` (as mome-data does).

use std::fmt;
use std::path::PathBuf;

/// Everything that can go wrong while training, loading or running a router.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// A file could not be read or written (the cause is the source).
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Input that is not valid JSON or does not have the expected shape.
    #[error("{}", json_message(what, *line, *column))]
    Json {
        /// What was being parsed (a file name, or a description).
        what: String,
        /// 1-based line of the error in `what` (0: unknown).
        line: usize,
        /// 1-based column of the error in that line (0: unknown).
        column: usize,
        /// The cause (serde_json's message, its location given above).
        #[source]
        source: JsonCause,
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
    /// A number of a router (file) that is not finite or out of its range.
    #[error("invalid router: {field} = {} (expected {expected})", number(*value))]
    Value {
        /// Where the number is, as a path into the router file
        /// (`classifier.model.linear.coef[1][0]`, `features.idf[7]`, ...).
        field: String,
        /// The number.
        value: f64,
        /// What it must be.
        expected: String,
    },
    /// A router file (or scikit-learn export) that cannot be used; the source says why.
    #[error("{}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why it cannot be used.
        #[source]
        source: Box<RouterError>,
    },
    /// A line of a text stream that stopped it (`mome route --invalid-utf8 fail`, a
    /// read error): `name:LINE: reason`.
    #[error("{name}:{line}: {reason}")]
    Line {
        /// The stream (`stdin`, a file name).
        name: String,
        /// 1-based line number.
        line: u64,
        /// What is wrong with the line.
        reason: String,
        /// The cause, if any (read error, routing error).
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    },
    /// Writing the output of a stream failed (e.g. a closed pipe).
    #[error("writing {what}")]
    Output {
        /// What was being written.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Invalid hyperparameters or training settings.
    #[error("invalid parameters: {0}")]
    Params(String),
    /// Training failed.
    #[error("training failed: {0}")]
    Train(String),
    /// A linfa algorithm failed (the cause is the source).
    #[error("linfa")]
    Linfa(#[from] linfa::Error),
    /// The tokenizer is missing, failed, or is not the one the router was trained with.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Error of the data crate (shards, tokenizer loading, atomic writes).
    #[error(transparent)]
    Data(#[from] mome_data::Error),
    /// Drawing a figure failed.
    #[error(transparent)]
    Plot(#[from] mome_plot::PlotError),
}

impl RouterError {
    /// A JSON error of `what` (a file name or a description), located by serde_json.
    pub fn json(what: impl fmt::Display, e: serde_json::Error) -> Self {
        Self::Json {
            what: what.to_string(),
            line: e.line(),
            column: e.column(),
            source: JsonCause(e),
        }
    }

    /// A JSON error of line `line` of a JSON Lines file (serde_json saw only that line).
    pub fn json_line(path: &std::path::Path, line: usize, e: serde_json::Error) -> Self {
        Self::Json {
            what: path.display().to_string(),
            line,
            column: e.column(),
            source: JsonCause(e),
        }
    }

    /// This error, as an error of the file `path`: I/O and JSON errors, which name
    /// their file already, are returned as they are, anything else is wrapped in
    /// [`RouterError::File`].
    pub fn in_file(self, path: &std::path::Path) -> Self {
        match self {
            e @ (Self::Io { .. } | Self::Json { .. } | Self::File { .. }) => e,
            e => Self::File {
                path: path.to_path_buf(),
                source: Box::new(e),
            },
        }
    }
}

/// `what:LINE: invalid JSON at column C`, or `what: invalid JSON` without a position.
fn json_message(what: &str, line: usize, column: usize) -> String {
    match (line, column) {
        (0, _) => format!("{what}: invalid JSON"),
        (l, 0) => format!("{what}:{l}: invalid JSON"),
        (l, c) => format!("{what}:{l}: invalid JSON at column {c}"),
    }
}

/// A number as an error shows it: plain if it is short that way, else in scientific
/// notation (`1e308`, not 309 digits).
fn number(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 || (1e-4..1e6).contains(&a) || !v.is_finite() {
        format!("{v}")
    } else {
        format!("{v:e}")
    }
}

/// serde_json's error without its position (`… at line 1 column 24`): the
/// [`RouterError::Json`] holding it gives the position as `file:LINE`. The original
/// error is kept ([`JsonCause::get_ref`]).
#[derive(Debug)]
pub struct JsonCause(pub serde_json::Error);

impl JsonCause {
    /// The serde_json error.
    pub fn get_ref(&self) -> &serde_json::Error {
        &self.0
    }
}

impl fmt::Display for JsonCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = self.0.to_string();
        let suffix = format!(" at line {} column {}", self.0.line(), self.0.column());
        f.write_str(full.strip_suffix(&suffix).unwrap_or(&full))
    }
}

impl std::error::Error for JsonCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.0)
    }
}

/// Every message of an error and its causes, joined by `": "` (what anyhow's `{:#}`
/// prints): for error records and tests.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !m.is_empty() {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Result alias of this crate.
pub type Result<T, E = RouterError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_give_file_line_once_and_their_cause_once() {
        let e = serde_json::from_str::<serde_json::Value>("{\"a\":\n  [1, 2,]\n}").unwrap_err();
        let (line, column) = (e.line(), e.column());
        assert_eq!(line, 2, "{e}");
        assert!(column > 0, "{e}");
        let cause = e.to_string();
        let err = RouterError::json("r.json", e);
        let full = chain(&err);
        let message = cause
            .strip_suffix(&format!(" at line 2 column {column}"))
            .unwrap();
        assert_eq!(
            full,
            format!("r.json:2: invalid JSON at column {column}: {message}")
        );
        assert!(!full.contains("at line"), "{full}");
        // A line of a JSON Lines file: its number, not serde's line 1.
        let e = serde_json::from_str::<serde_json::Value>("{oops}").unwrap_err();
        let err = RouterError::json_line(std::path::Path::new("d/en.jsonl"), 7, e);
        assert!(chain(&err).starts_with("d/en.jsonl:7: invalid JSON at column 2: "));
    }

    #[test]
    fn wrapped_errors_name_the_file_and_print_each_cause_once() {
        let inner = RouterError::Value {
            field: "classifier.model.linear.coef[1][0]".into(),
            value: 1e308,
            expected: "a finite number within ±1e100".into(),
        };
        let e = inner.in_file(std::path::Path::new("runs/r.json"));
        assert_eq!(
            chain(&e),
            "runs/r.json: invalid router: classifier.model.linear.coef[1][0] = 1e308 \
             (expected a finite number within ±1e100)"
        );
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let e = RouterError::Io {
            path: "x/r.json".into(),
            source: io,
        }
        .in_file(std::path::Path::new("x/r.json"));
        assert_eq!(chain(&e), "x/r.json: gone");
        assert_eq!(number(0.5), "0.5");
        assert_eq!(number(-1e308), "-1e308");
        assert_eq!(number(f64::NAN), "NaN");
    }
}
