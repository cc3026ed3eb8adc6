//! Routing a text stream line by line (`mome route` without a text argument): one
//! [`LineRecord`] (a JSON line) per input line, in input order, each naming its line
//! number, so that one bad line never stops or shifts the others.
//!
//! Lines are read as bytes (split at `\n`; a `\r` before the `\n` is removed, as
//! [`std::io::BufRead::lines`] does), so that:
//! * a line that is not valid UTF-8 is handled as [`InvalidUtf8`] says: an error
//!   record (the default), routed after lossy decoding (U+FFFD for each invalid
//!   sequence, the record says `"lossy": true`), or the end of the stream with an
//!   error `NAME:LINE: invalid UTF-8 …`;
//! * a line longer than the cap ([`DEFAULT_MAX_LINE_BYTES`] by default) is skipped
//!   without being held in memory, with an error record (or the end of the stream,
//!   with `fail`);
//! * a line that the router cannot route (its tokenizer fails) gives an error record
//!   (or ends the stream, with `fail`).
//!
//! Memory is that of one line (at most the cap) plus what routing it takes.
//!
//! ```
//! use mome_router::lines::{route_lines, InvalidUtf8, RouteLinesParams};
//! use mome_router::params::ParamGuard;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let router = mome_router::lines::tests_support::letters_router()?;
//! let job = RouteLinesParams { invalid_utf8: InvalidUtf8::ErrorRecord, ..Default::default() }.check()?;
//! let mut out = Vec::new();
//! let input: &[u8] = b"xxx\nbad \xff line\nqqq\n";
//! let summary = route_lines(&router, input, "stdin", &job, &mut out)?;
//! assert_eq!((summary.lines, summary.routed, summary.errors), (3, 2, 1));
//! let text = String::from_utf8(out)?;
//! let second: serde_json::Value = serde_json::from_str(text.lines().nth(1).unwrap())?;
//! assert_eq!(second["line"], 2);
//! assert_eq!(second["error"], "invalid-utf8");
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead, ErrorKind, Write};

use serde::{Deserialize, Serialize};

use crate::error::{chain, Result, RouterError};
use crate::params::ParamGuard;
use crate::router::{Router, Routing};

/// Longest line routed by default, in bytes (before the newline): 8 MiB. Routing a
/// line takes far more than the line: the paper's tokenizer has no pre-tokenizer, so
/// the whole line is one BPE word, with per-byte alignments and a per-token encoding
/// (measured with `mome route` and the paper's router: 60-70 MB of memory and
/// 1.4-1.9 s per MB of line; a 20 MB line took 1.4 GB and 37 s). The cap bounds that
/// to about 0.6 GB and 15 s; a longer line costs at most the cap to skip.
/// `--max-line-bytes` raises it.
pub const DEFAULT_MAX_LINE_BYTES: usize = 8 << 20;

/// What [`route_lines`] does with a line that is not valid UTF-8.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InvalidUtf8 {
    /// Write an error record for the line (`"error": "invalid-utf8"`) and go on
    /// (the default: a corpus filter must not die on one bad byte, and no text is
    /// routed as something it is not).
    #[default]
    ErrorRecord,
    /// Route the line decoded with U+FFFD for each invalid sequence; its record
    /// says `"lossy": true`.
    Lossy,
    /// Stop with an error naming the line (`NAME:LINE: invalid UTF-8 …`). Lines
    /// too long or not routable stop the stream too.
    Fail,
}

impl InvalidUtf8 {
    /// Every mode, in `--help` order.
    pub const ALL: [Self; 3] = [Self::ErrorRecord, Self::Lossy, Self::Fail];

    /// `error-record`, `lossy` or `fail`.
    pub fn name(self) -> &'static str {
        match self {
            Self::ErrorRecord => "error-record",
            Self::Lossy => "lossy",
            Self::Fail => "fail",
        }
    }
}

impl std::fmt::Display for InvalidUtf8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for InvalidUtf8 {
    type Err = RouterError;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                RouterError::Params(format!(
                    "invalid-utf8 must be error-record, lossy or fail, got {s:?}"
                ))
            })
    }
}

/// Settings of [`route_lines`] (unchecked; [`ParamGuard::check`] makes a
/// [`RouteLinesJob`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteLinesParams {
    /// What to do with a line that is not valid UTF-8.
    pub invalid_utf8: InvalidUtf8,
    /// Longest line routed, in bytes before the newline (>= 1); longer lines get an
    /// error record (`"error": "too-long"`).
    pub max_line_bytes: usize,
}

impl Default for RouteLinesParams {
    fn default() -> Self {
        Self {
            invalid_utf8: InvalidUtf8::default(),
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
        }
    }
}

/// Checked settings of [`route_lines`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteLinesJob {
    invalid_utf8: InvalidUtf8,
    max_line_bytes: usize,
}

impl RouteLinesJob {
    /// What is done with a line that is not valid UTF-8.
    pub fn invalid_utf8(&self) -> InvalidUtf8 {
        self.invalid_utf8
    }
    /// Longest line routed, in bytes.
    pub fn max_line_bytes(&self) -> usize {
        self.max_line_bytes
    }
}

impl ParamGuard for RouteLinesParams {
    type Checked = RouteLinesJob;
    type Error = RouterError;

    fn check(&self) -> Result<RouteLinesJob> {
        if self.max_line_bytes == 0 {
            return Err(RouterError::Params("max_line_bytes must be >= 1".into()));
        }
        Ok(RouteLinesJob {
            invalid_utf8: self.invalid_utf8,
            max_line_bytes: self.max_line_bytes,
        })
    }
}

/// The routing of one line, as `mome route` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutedLine {
    /// Most probable class.
    pub label: String,
    /// Whether the router is confident (see [`Routing::confident`]).
    pub confident: bool,
    /// Probability of each class, by class name.
    pub probabilities: BTreeMap<String, f64>,
    /// The line was not valid UTF-8 and was routed decoded lossily (U+FFFD).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lossy: bool,
}

impl RoutedLine {
    /// The record of a routing by `router`.
    pub fn new(router: &Router, r: &Routing, lossy: bool) -> Self {
        Self {
            label: r.label.clone(),
            confident: r.confident,
            probabilities: router
                .classes()
                .iter()
                .cloned()
                .zip(r.probabilities.iter().copied())
                .collect(),
            lossy,
        }
    }
}

/// Why a line was not routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LineProblem {
    /// Not valid UTF-8 (with [`InvalidUtf8::ErrorRecord`]).
    InvalidUtf8,
    /// Longer than [`RouteLinesJob::max_line_bytes`].
    TooLong,
    /// The router failed on it (tokenizer error).
    Route,
}

/// A line that was not routed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineFailure {
    /// The kind of problem (`invalid-utf8`, `too-long`, `route`).
    pub error: LineProblem,
    /// What is wrong, for a person.
    pub message: String,
}

/// What became of a line: routed, or not (and why).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LineOutcome {
    /// The line was routed.
    Routed(RoutedLine),
    /// The line was not routed.
    Failed(LineFailure),
}

/// One output record of [`route_lines`]: `{"line": 3, "label": …, "confident": …,
/// "probabilities": {…}}` (plus `"lossy": true` if decoded lossily), or
/// `{"line": 3, "error": "invalid-utf8", "message": …}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineRecord {
    /// 1-based line number in the input.
    pub line: u64,
    /// What became of it.
    #[serde(flatten)]
    pub outcome: LineOutcome,
}

/// Counts of a [`route_lines`] run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinesSummary {
    /// Lines read (= records written, unless the stream stopped with an error).
    pub lines: u64,
    /// Lines routed (the lossy ones included).
    pub routed: u64,
    /// Lines routed after lossy decoding.
    pub lossy: u64,
    /// Error records written.
    pub errors: u64,
}

/// What is wrong with bytes that are not UTF-8, naming the offset in the line.
pub(crate) fn utf8_problem(e: &std::str::Utf8Error) -> String {
    match e.error_len() {
        Some(n) => format!(
            "invalid UTF-8 at byte {} of the line ({n} invalid byte{})",
            e.valid_up_to(),
            if n == 1 { "" } else { "s" }
        ),
        None => format!(
            "invalid UTF-8: the line ends inside a character (at byte {})",
            e.valid_up_to()
        ),
    }
}

/// One line as read.
#[derive(Debug, PartialEq, Eq)]
enum RawLine {
    /// Its bytes (newline and the `\r` before it removed).
    Bytes(Vec<u8>),
    /// Longer than the cap: skipped, only its length is known.
    TooLong {
        /// Its length in bytes (before the newline).
        bytes: u64,
    },
}

/// Splits a byte stream into lines, holding at most `max` bytes of one line.
struct LineReader<R> {
    inner: R,
    max: usize,
    /// Number of the line last returned (1-based; 0 before the first).
    line: u64,
}

impl<R: BufRead> LineReader<R> {
    fn new(inner: R, max: usize) -> Self {
        Self {
            inner,
            max,
            line: 0,
        }
    }

    /// The next line, `None` at the end. A read error leaves `line` at the number of
    /// the line that was being read minus one.
    fn next_line(&mut self) -> std::io::Result<Option<RawLine>> {
        let mut buf = Vec::new();
        let mut len: u64 = 0;
        let mut too_long = false;
        let mut started = false;
        let mut newline = false;
        loop {
            let chunk = match self.inner.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if chunk.is_empty() {
                break;
            }
            started = true;
            let (content, used) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    newline = true;
                    (&chunk[..i], i + 1)
                }
                None => (chunk, chunk.len()),
            };
            len += content.len() as u64;
            if !too_long {
                if buf.len() + content.len() <= self.max {
                    buf.extend_from_slice(content);
                } else {
                    too_long = true;
                    buf = Vec::new();
                }
            }
            self.inner.consume(used);
            if newline {
                break;
            }
        }
        if !started {
            return Ok(None);
        }
        self.line += 1;
        if too_long {
            return Ok(Some(RawLine::TooLong { bytes: len }));
        }
        if newline && buf.last() == Some(&b'\r') {
            buf.pop();
        }
        Ok(Some(RawLine::Bytes(buf)))
    }
}

/// Routes every line of `input` with `router` and hands one [`LineRecord`] per line
/// to `sink`, in input order (see the [module](self) for what happens to bad
/// lines). `name` names the stream in errors (`stdin`, a file). Stops at the first
/// error of `sink`, at a read error (`NAME:LINE: read error`, the I/O error as its
/// source) and, with [`InvalidUtf8::Fail`], at the first line not routed
/// (`NAME:LINE: …`); the records of the lines before it are handed over first.
pub fn route_lines_each<R: BufRead>(
    router: &Router,
    input: R,
    name: &str,
    job: &RouteLinesJob,
    mut sink: impl FnMut(LineRecord) -> Result<()>,
) -> Result<LinesSummary> {
    let mut reader = LineReader::new(input, job.max_line_bytes);
    let mut summary = LinesSummary::default();
    let stop =
        |line: u64, reason: String, source: Option<Box<dyn std::error::Error + Send + Sync>>| {
            RouterError::Line {
                name: name.to_string(),
                line,
                reason,
                source,
            }
        };
    loop {
        let raw = match reader.next_line() {
            Ok(Some(raw)) => raw,
            Ok(None) => break,
            Err(e) => {
                return Err(stop(
                    reader.line + 1,
                    "read error".into(),
                    Some(Box::new(e)),
                ))
            }
        };
        let line = reader.line;
        summary.lines += 1;
        let failed = |error: LineProblem, message: String| LineFailure { error, message };
        let outcome = match raw {
            RawLine::TooLong { bytes } => Err(failed(
                LineProblem::TooLong,
                format!(
                    "line of {bytes} bytes is longer than the cap of {} bytes; not routed",
                    job.max_line_bytes
                ),
            )),
            RawLine::Bytes(bytes) => {
                let (text, lossy) = match String::from_utf8(bytes) {
                    Ok(s) => (Ok(s), false),
                    Err(e) => match job.invalid_utf8 {
                        InvalidUtf8::Lossy => {
                            (Ok(String::from_utf8_lossy(e.as_bytes()).into_owned()), true)
                        }
                        InvalidUtf8::ErrorRecord | InvalidUtf8::Fail => (
                            Err(failed(
                                LineProblem::InvalidUtf8,
                                utf8_problem(&e.utf8_error()),
                            )),
                            false,
                        ),
                    },
                };
                match text {
                    Ok(t) => match router.route_text(&t) {
                        Ok(r) => Ok(RoutedLine::new(router, &r, lossy)),
                        Err(e) => {
                            if job.invalid_utf8 == InvalidUtf8::Fail {
                                return Err(stop(line, "not routed".into(), Some(Box::new(e))));
                            }
                            Err(failed(LineProblem::Route, chain(&e)))
                        }
                    },
                    Err(f) => Err(f),
                }
            }
        };
        let outcome = match outcome {
            Ok(routed) => {
                summary.routed += 1;
                summary.lossy += u64::from(routed.lossy);
                LineOutcome::Routed(routed)
            }
            Err(f) => {
                if job.invalid_utf8 == InvalidUtf8::Fail {
                    return Err(stop(line, f.message, None));
                }
                summary.errors += 1;
                LineOutcome::Failed(f)
            }
        };
        sink(LineRecord { line, outcome })?;
    }
    Ok(summary)
}

/// [`route_lines_each`] writing each record as a JSON line to `out` (flushed at the
/// end). A write error is [`RouterError::Output`] (a closed pipe: kind
/// [`ErrorKind::BrokenPipe`]).
pub fn route_lines<R: BufRead, W: Write>(
    router: &Router,
    input: R,
    name: &str,
    job: &RouteLinesJob,
    out: &mut W,
) -> Result<LinesSummary> {
    let output = |e: std::io::Error| RouterError::Output {
        what: "route records".into(),
        source: e,
    };
    let summary = route_lines_each(router, input, name, job, |rec| {
        let mut bytes =
            serde_json::to_vec(&rec).map_err(|e| RouterError::json("route record", e))?;
        bytes.push(b'\n');
        out.write_all(&bytes).map_err(output)
    })?;
    out.flush().map_err(output)?;
    Ok(summary)
}

/// A small router for examples, tests and fuzz targets (not part of the stable API).
#[doc(hidden)]
pub mod tests_support {
    use crate::classifier::{Classifier, LinearModel, ModelBody, ValidClassifierParams};
    use crate::error::{Result, RouterError};
    use crate::features::{char_feature_config, CharNgramConfig, Vectorizer};
    use crate::router::{FeatureKind, Router};

    /// Character unigrams over 256 buckets: class `x` when the text has more `x`
    /// than `q`, class `q` when it has more `q` (no tokenizer needed).
    pub fn letters_router() -> Result<Router> {
        let c = CharNgramConfig {
            n_min: 1,
            n_max: 1,
            n_buckets: 256,
            lowercase: false,
        };
        // " x " -> buckets of ' ', 'x', ' '.
        let bucket = |letter: &str| c.bucket_ids(letter).get(1).map(|&b| b as usize);
        let (bx, bq) = match (bucket("x"), bucket("q")) {
            (Some(x), Some(q)) if x != q => (x, q),
            _ => return Err(RouterError::Params("x and q share a bucket".into())),
        };
        let mut coef = vec![vec![0.0; 256]; 2];
        coef[0][bx] = 4.0;
        coef[1][bq] = 4.0;
        let classifier = Classifier {
            params: ValidClassifierParams::Logreg {
                c: 1.0,
                max_iter: 1,
                tol: 1e-4,
            },
            n_classes: 2,
            n_features: 256,
            model: ModelBody::Linear(LinearModel::from_coef(&coef, &[0.0, 0.0])?),
        };
        let v = Vectorizer::new(
            char_feature_config(false),
            (0..256).collect(),
            vec![1.0; 256],
        )?;
        let mut r = Router::new(vec!["x".into(), "q".into()], v, classifier, 0.6, None)?;
        r.set_feature_kind(FeatureKind::CharNgrams(c))?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::letters_router;
    use super::*;

    fn job(mode: InvalidUtf8, max: usize) -> RouteLinesJob {
        RouteLinesParams {
            invalid_utf8: mode,
            max_line_bytes: max,
        }
        .check()
        .unwrap()
    }

    /// The records of `input`, through the JSON written by [`route_lines`].
    fn run(input: &[u8], job: &RouteLinesJob) -> (Result<LinesSummary>, Vec<LineRecord>) {
        let router = letters_router().unwrap();
        let mut out = Vec::new();
        let res = route_lines(&router, input, "stdin", job, &mut out);
        let text = String::from_utf8(out).expect("records are UTF-8");
        let recs = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON record"))
            .collect();
        (res, recs)
    }

    fn routed(r: &LineRecord) -> &RoutedLine {
        match &r.outcome {
            LineOutcome::Routed(x) => x,
            LineOutcome::Failed(f) => panic!("line {} not routed: {f:?}", r.line),
        }
    }

    fn failure(r: &LineRecord) -> &LineFailure {
        match &r.outcome {
            LineOutcome::Failed(f) => f,
            LineOutcome::Routed(x) => panic!("line {} routed: {x:?}", r.line),
        }
    }

    fn lines_of(input: &[u8], max: usize) -> Vec<RawLine> {
        let mut r = LineReader::new(input, max);
        let mut v = Vec::new();
        while let Some(l) = r.next_line().unwrap() {
            v.push(l);
        }
        assert_eq!(r.line, v.len() as u64);
        v
    }

    fn bytes(s: &str) -> RawLine {
        RawLine::Bytes(s.as_bytes().to_vec())
    }

    /// The issue's input: `printf 'hello\ndef f(x):\nbad \xff here\nbonjour\n'`.
    const ISSUE: &[u8] = b"xxq\ndef f(x):\nbad \xff here qqq\nbonjour\n";

    #[test]
    fn invalid_utf8_in_the_middle_gives_an_error_record_and_the_stream_goes_on() {
        let (res, recs) = run(ISSUE, &job(InvalidUtf8::ErrorRecord, 1000));
        let summary = res.unwrap();
        assert_eq!(
            summary,
            LinesSummary {
                lines: 4,
                routed: 3,
                lossy: 0,
                errors: 1
            }
        );
        assert_eq!(
            recs.iter().map(|r| r.line).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        assert_eq!(routed(&recs[0]).label, "x");
        let f = failure(&recs[2]);
        assert_eq!(f.error, LineProblem::InvalidUtf8);
        assert!(f.message.contains("byte 4"), "{}", f.message);
        // The line after the bad one is routed as if the bad one were not there.
        let router = letters_router().unwrap();
        let alone = RoutedLine::new(&router, &router.route_text("bonjour").unwrap(), false);
        assert_eq!(routed(&recs[3]), &alone);
        // The default mode is the error record.
        assert_eq!(
            RouteLinesParams::default().check().unwrap().invalid_utf8(),
            InvalidUtf8::ErrorRecord
        );
    }

    #[test]
    fn lossy_routes_the_replaced_text_and_says_so() {
        let (res, recs) = run(ISSUE, &job(InvalidUtf8::Lossy, 1000));
        assert_eq!(
            res.unwrap(),
            LinesSummary {
                lines: 4,
                routed: 4,
                lossy: 1,
                errors: 0
            }
        );
        let router = letters_router().unwrap();
        let want = RoutedLine::new(
            &router,
            &router.route_text("bad \u{FFFD} here qqq").unwrap(),
            true,
        );
        assert_eq!(routed(&recs[2]), &want);
        assert_eq!(want.label, "q");
        assert!(!routed(&recs[1]).lossy && !routed(&recs[3]).lossy);
        // The JSON says `"lossy": true` on that record only.
        let mut out = Vec::new();
        route_lines(
            &router,
            ISSUE,
            "stdin",
            &job(InvalidUtf8::Lossy, 1000),
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let flags: Vec<bool> = text.lines().map(|l| l.contains("\"lossy\":true")).collect();
        assert_eq!(flags, [false, false, true, false]);
    }

    #[test]
    fn fail_stops_at_the_bad_line_and_names_it() {
        let (res, recs) = run(ISSUE, &job(InvalidUtf8::Fail, 1000));
        let e = res.unwrap_err();
        assert!(
            matches!(&e, RouterError::Line { line: 3, name, .. } if name == "stdin"),
            "{e:?}"
        );
        assert!(
            chain(&e).starts_with("stdin:3: invalid UTF-8 at byte 4"),
            "{}",
            chain(&e)
        );
        assert_eq!(recs.iter().map(|r| r.line).collect::<Vec<_>>(), [1, 2]);
        // A line too long stops it as well.
        let (res, recs) = run(b"xx\nqqqqqqqq\nxx\n", &job(InvalidUtf8::Fail, 4));
        assert!(matches!(res, Err(RouterError::Line { line: 2, .. })));
        assert_eq!(recs.len(), 1);
    }

    #[test]
    fn crlf_empty_lines_and_the_last_line_without_newline() {
        assert_eq!(
            lines_of(b"a\r\nb\r\n\r\nc", 100),
            [bytes("a"), bytes("b"), bytes(""), bytes("c")]
        );
        // Only a \r right before the newline is a line ending.
        assert_eq!(lines_of(b"a\rb\nc\r", 100), [bytes("a\rb"), bytes("c\r")]);
        assert_eq!(lines_of(b"\n\n", 100), [bytes(""), bytes("")]);
        assert!(lines_of(b"", 100).is_empty());
        // Through the router: empty lines are records too (no feature: not confident).
        let (res, recs) = run(b"\r\nxxx\r\n\nqqq", &job(InvalidUtf8::ErrorRecord, 100));
        assert_eq!(res.unwrap().lines, 4);
        assert_eq!(
            recs.iter().map(|r| r.line).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        assert!(!routed(&recs[0]).confident);
        assert!(!routed(&recs[2]).confident);
        assert_eq!(routed(&recs[1]).label, "x");
        assert_eq!(routed(&recs[3]).label, "q");
        assert!(routed(&recs[3]).confident);
    }

    #[test]
    fn a_line_over_the_cap_is_skipped_with_a_record_and_not_held() {
        let mut input = b"xxx\n".to_vec();
        input.extend(std::iter::repeat_n(b'q', 5000));
        input.extend_from_slice(b"\nqqq\n");
        let (res, recs) = run(&input, &job(InvalidUtf8::ErrorRecord, 1000));
        assert_eq!(res.unwrap().errors, 1);
        let f = failure(&recs[1]);
        assert_eq!(f.error, LineProblem::TooLong);
        assert!(f.message.contains("5000 bytes"), "{}", f.message);
        assert!(f.message.contains("1000 bytes"), "{}", f.message);
        assert_eq!(routed(&recs[2]).label, "q");
        assert_eq!(recs[2].line, 3);
        // Exactly at the cap is routed.
        let (res, _) = run(b"qqqq\n", &job(InvalidUtf8::ErrorRecord, 4));
        assert_eq!(res.unwrap().routed, 1);
        // A 20 MB line with no newline under a 1 MiB cap: skipped, its length counted,
        // the reader holds no more than the cap.
        let huge = vec![b'x'; 20 << 20];
        let mut r = LineReader::new(std::io::BufReader::new(&huge[..]), 1 << 20);
        assert_eq!(
            r.next_line().unwrap(),
            Some(RawLine::TooLong { bytes: 20 << 20 })
        );
        assert_eq!(r.next_line().unwrap(), None);
        // The same line under a larger cap is read whole.
        match lines_of(&huge, 32 << 20).as_slice() {
            [RawLine::Bytes(b)] => assert_eq!(b.len(), 20 << 20),
            other => panic!("{} lines", other.len()),
        }
    }

    #[test]
    fn a_long_valid_line_is_routed() {
        // 2 MB of text in one line (the reader sees it in BufReader-sized chunks).
        let mut input = "qx ".repeat(700_000).into_bytes();
        input.extend_from_slice(b"q\nxx\n");
        let router = letters_router().unwrap();
        let mut out = Vec::new();
        let summary = route_lines(
            &router,
            std::io::BufReader::with_capacity(4096, &input[..]),
            "stdin",
            &RouteLinesParams::default().check().unwrap(),
            &mut out,
        )
        .unwrap();
        assert_eq!((summary.lines, summary.routed), (2, 2));
        let text = String::from_utf8(out).unwrap();
        let first: LineRecord = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        let p = &routed(&first).probabilities;
        assert!(p.values().all(|v| v.is_finite()));
        approx::assert_abs_diff_eq!(p.values().sum::<f64>(), 1.0, epsilon = 1e-12);
        assert_eq!(routed(&first).label, "q", "one more q than x");
    }

    /// Gives `first`, then fails.
    struct FailingReader {
        first: std::io::Cursor<Vec<u8>>,
    }
    impl std::io::Read for FailingReader {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.first.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            Err(std::io::Error::other("disk on fire"))
        }
    }

    #[test]
    fn a_read_error_names_the_line_being_read() {
        let router = letters_router().unwrap();
        let input = std::io::BufReader::new(FailingReader {
            first: std::io::Cursor::new(b"xxx\nqq".to_vec()),
        });
        let mut recs = Vec::new();
        let e = route_lines_each(
            &router,
            input,
            "in.txt",
            &RouteLinesParams::default().check().unwrap(),
            |r| {
                recs.push(r);
                Ok(())
            },
        )
        .unwrap_err();
        assert_eq!(chain(&e), "in.txt:2: read error: disk on fire");
        assert_eq!(recs.len(), 1);
    }

    #[test]
    fn records_round_trip_and_modes_parse() {
        let router = letters_router().unwrap();
        let r = router.route_text("xq x").unwrap();
        for rec in [
            LineRecord {
                line: 7,
                outcome: LineOutcome::Routed(RoutedLine::new(&router, &r, true)),
            },
            LineRecord {
                line: 8,
                outcome: LineOutcome::Failed(LineFailure {
                    error: LineProblem::TooLong,
                    message: "long".into(),
                }),
            },
        ] {
            let json = serde_json::to_string(&rec).unwrap();
            assert!(
                json.starts_with(&format!("{{\"line\":{}", rec.line)),
                "{json}"
            );
            let back: LineRecord = serde_json::from_str(&json).unwrap();
            assert_eq!(back, rec);
        }
        for m in InvalidUtf8::ALL {
            assert_eq!(m.name().parse::<InvalidUtf8>().unwrap(), m);
        }
        assert!(matches!(
            "strict".parse::<InvalidUtf8>(),
            Err(RouterError::Params(_))
        ));
        assert!(RouteLinesParams {
            max_line_bytes: 0,
            ..Default::default()
        }
        .check()
        .is_err());
    }
}
