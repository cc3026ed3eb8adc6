//! Streaming corpus readers (method.md §1): JSON Lines, parquet (Wiki40B-style),
//! folders of text files and folders of source code.
//!
//! [`open`] returns a [`RecordReader`], an iterator of `Result<Record>` that never
//! holds more than one input line, parquet row or file in memory. Folders are walked
//! recursively in sorted path order, so every run yields the same records in the
//! same order. Bad input is a typed [`Error`] naming the file and line.

use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use parquet::file::reader::SerializedFileReader;
use parquet::record::reader::RowIter;
use parquet::record::Field;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// One document: an id and its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The record id (Wiki40B `wikidata_id`, a relative path, or `<file>:<line>`).
    pub id: String,
    /// The text.
    pub text: String,
}

/// The format of a corpus input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// JSON Lines: one JSON object per line (`.jsonl`, `.json`, `.ndjson`).
    Jsonl,
    /// Parquet with a text column and optionally an id column (`.parquet`).
    Parquet,
    /// A folder where every non-hidden regular file is one record.
    TextDir,
    /// A folder of source files: every file with one of the code extensions is one record.
    CodeDir,
}

/// What to do with records that are not valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Utf8Policy {
    /// Fail with [`Error::InvalidUtf8`] naming the file and line.
    #[default]
    Error,
    /// Skip the record and count it ([`RecordReader::skipped_invalid_utf8`]).
    Skip,
}

/// Where a corpus is and how to read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorpusSpec {
    /// Files or folders, read in the order given.
    pub paths: Vec<PathBuf>,
    /// The format; `None` infers it per path: `.jsonl`/`.json`/`.ndjson` -> Jsonl,
    /// `.parquet` -> Parquet, a folder holding files with a code extension -> CodeDir,
    /// a folder of only `.jsonl` (or only `.parquet`) files -> Jsonl (Parquet),
    /// any other folder -> TextDir.
    pub kind: Option<SourceKind>,
    /// The text field / column. Default `"text"`.
    pub text_field: String,
    /// The id field / column (string or integer). `None`: the id is `<file>:<line>`
    /// (`<file>:<row>` for parquet; the relative path for folders).
    pub id_field: Option<String>,
    /// File extensions (without dot) of code files. Default `["py"]`.
    pub code_extensions: Vec<String>,
    /// Invalid UTF-8 handling. Default [`Utf8Policy::Error`].
    pub on_invalid_utf8: Utf8Policy,
}

impl Default for CorpusSpec {
    fn default() -> Self {
        Self {
            paths: Vec::new(),
            kind: None,
            text_field: "text".into(),
            id_field: None,
            code_extensions: vec!["py".into()],
            on_invalid_utf8: Utf8Policy::Error,
        }
    }
}

impl CorpusSpec {
    /// A spec with default settings reading the given path.
    pub fn from_path(path: impl Into<PathBuf>) -> Self {
        Self {
            paths: vec![path.into()],
            ..Self::default()
        }
    }
}

/// Which split a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Training split.
    Train,
    /// Validation split.
    Valid,
}

/// Deterministic train/validation split of a record id: SHA-256 of the seed
/// (little endian) followed by the id, first 8 bytes as a fraction of 2^64, is
/// compared with `valid_fraction`. The same id lands in the same split in every
/// language and on every run, which keeps aligned articles aligned.
///
/// ```
/// use mome_data::corpus::{split_train_valid, Split};
///
/// // Deterministic: the same id, fraction and seed always give the same split.
/// let s = split_train_valid("Q42", 0.1, 7);
/// assert_eq!(s, split_train_valid("Q42", 0.1, 7));
/// // Fraction 0 keeps everything in train.
/// assert_eq!(split_train_valid("Q42", 0.0, 7), Split::Train);
/// // About the requested fraction of ids goes to validation.
/// let valid = (0..10_000)
///     .filter(|i| split_train_valid(&format!("Q{i}"), 0.1, 7) == Split::Valid)
///     .count();
/// assert!((800..1200).contains(&valid), "{valid}");
/// ```
pub fn split_train_valid(id: &str, valid_fraction: f64, seed: u64) -> Split {
    if valid_fraction <= 0.0 {
        return Split::Train;
    }
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(id.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    let u = u64::from_le_bytes(b) as f64 / 18_446_744_073_709_551_616.0;
    if u < valid_fraction {
        Split::Valid
    } else {
        Split::Train
    }
}

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One unit of input after path resolution.
#[derive(Debug)]
enum Unit {
    Jsonl(PathBuf),
    Parquet(PathBuf),
    /// A whole file as one record, with its id.
    File(PathBuf, String),
}

/// The non-blank lines of a JSON Lines file with their 1-based line numbers, read
/// one at a time. Bytes that are not UTF-8 are an [`Error::InvalidUtf8`] naming
/// `file:LINE`, or skipped and counted under [`Utf8Policy::Skip`]. Every reader of
/// JSON Lines in this crate (corpora, balancing, the tokenizer, encoding) goes
/// through it, so they report bad lines alike.
pub(crate) struct JsonlLines {
    path: PathBuf,
    reader: BufReader<fs::File>,
    line: u64,
    buf: Vec<u8>,
    policy: Utf8Policy,
    skipped: u64,
}

impl JsonlLines {
    /// Opens `path`.
    pub(crate) fn open(path: &Path, policy: Utf8Policy) -> Result<Self> {
        let f = fs::File::open(path).map_err(|e| io_err(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(1 << 20, f),
            line: 0,
            buf: Vec::new(),
            policy,
            skipped: 0,
        })
    }

    /// The file read.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Lines skipped for invalid UTF-8 so far.
    pub(crate) fn skipped(&self) -> u64 {
        self.skipped
    }
}

impl Iterator for JsonlLines {
    /// `(line number, line without its end of line)`.
    type Item = Result<(u64, String)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.buf.clear();
            match self.reader.read_until(b'\n', &mut self.buf) {
                Err(e) => return Some(Err(io_err(&self.path, e))),
                Ok(0) => return None,
                Ok(_) => {}
            }
            self.line += 1;
            let text = match std::str::from_utf8(&self.buf) {
                Ok(s) => s.trim_end_matches(['\n', '\r']),
                Err(e) => {
                    if self.policy == Utf8Policy::Skip {
                        self.skipped += 1;
                        continue;
                    }
                    return Some(Err(Error::InvalidUtf8 {
                        path: self.path.clone(),
                        line: Some(self.line),
                        source: e,
                    }));
                }
            };
            if text.trim().is_empty() {
                continue;
            }
            return Some(Ok((self.line, text.to_string())));
        }
    }
}

enum Current {
    Jsonl(JsonlLines),
    Parquet {
        path: PathBuf,
        rows: RowIter<'static>,
        row: u64,
    },
}

/// A streaming iterator over the records of a [`CorpusSpec`], see [`open`].
pub struct RecordReader {
    spec: CorpusSpec,
    units: VecDeque<Unit>,
    current: Option<Current>,
    skipped: u64,
    failed: bool,
}

impl std::fmt::Debug for RecordReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordReader")
            .field("pending_units", &self.units.len())
            .field("skipped_invalid_utf8", &self.skipped)
            .finish()
    }
}

/// Files under `dir`, recursively, sorted by path; hidden entries are ignored.
fn walk_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = fs::read_dir(&d).map_err(|e| io_err(&d, e))?;
        for entry in rd {
            let entry = entry.map_err(|e| io_err(&d, e))?;
            let p = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let ft = fs::metadata(&p).map_err(|e| io_err(&p, e))?;
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn ext_of(p: &Path) -> String {
    p.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
}

fn is_jsonl_ext(e: &str) -> bool {
    matches!(e, "jsonl" | "json" | "ndjson")
}

fn rel_id(root: &Path, p: &Path) -> String {
    let rel = p.strip_prefix(root).unwrap_or(p);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

fn resolve(spec: &CorpusSpec) -> Result<VecDeque<Unit>> {
    if spec.paths.is_empty() {
        return Err(Error::Config("corpus spec has no input path".into()));
    }
    if spec.text_field.is_empty() {
        return Err(Error::Config("corpus text field name is empty".into()));
    }
    let mut units = VecDeque::new();
    for path in &spec.paths {
        let meta = fs::metadata(path).map_err(|e| Error::InvalidPath {
            path: path.clone(),
            reason: format!("cannot read corpus input ({e}); check the path"),
        })?;
        if meta.is_file() {
            let kind = match spec.kind {
                Some(k) => k,
                None => {
                    let e = ext_of(path);
                    if is_jsonl_ext(&e) {
                        SourceKind::Jsonl
                    } else if e == "parquet" {
                        SourceKind::Parquet
                    } else {
                        return Err(Error::InvalidPath {
                            path: path.clone(),
                            reason: "cannot infer the corpus format from the extension; \
                                     use .jsonl/.parquet or give the kind explicitly"
                                .into(),
                        });
                    }
                }
            };
            match kind {
                SourceKind::Jsonl => units.push_back(Unit::Jsonl(path.clone())),
                SourceKind::Parquet => units.push_back(Unit::Parquet(path.clone())),
                SourceKind::TextDir | SourceKind::CodeDir => {
                    let name = path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    units.push_back(Unit::File(path.clone(), name));
                }
            }
            continue;
        }
        let files = walk_sorted(path)?;
        if files.is_empty() {
            return Err(Error::InvalidPath {
                path: path.clone(),
                reason: "folder holds no (non-hidden) file".into(),
            });
        }
        let is_code = |p: &Path| spec.code_extensions.iter().any(|c| ext_of(p) == *c);
        let kind = spec.kind.unwrap_or_else(|| {
            if files.iter().all(|p| is_jsonl_ext(&ext_of(p))) {
                SourceKind::Jsonl
            } else if files.iter().all(|p| ext_of(p) == "parquet") {
                SourceKind::Parquet
            } else if files.iter().any(|p| is_code(p)) {
                SourceKind::CodeDir
            } else {
                SourceKind::TextDir
            }
        });
        let before = units.len();
        for f in files {
            match kind {
                SourceKind::Jsonl if is_jsonl_ext(&ext_of(&f)) => units.push_back(Unit::Jsonl(f)),
                SourceKind::Parquet if ext_of(&f) == "parquet" => units.push_back(Unit::Parquet(f)),
                SourceKind::CodeDir if is_code(&f) => {
                    let id = rel_id(path, &f);
                    units.push_back(Unit::File(f, id));
                }
                SourceKind::TextDir => {
                    let id = rel_id(path, &f);
                    units.push_back(Unit::File(f, id));
                }
                _ => {}
            }
        }
        if units.len() == before {
            return Err(Error::InvalidPath {
                path: path.clone(),
                reason: format!("folder holds no input file of kind {kind:?}"),
            });
        }
    }
    Ok(units)
}

/// Opens a corpus for streaming. Fails early on missing paths, empty folders and
/// formats that cannot be inferred; per-record problems surface while iterating.
pub fn open(spec: &CorpusSpec) -> Result<RecordReader> {
    let units = resolve(spec)?;
    Ok(RecordReader {
        spec: spec.clone(),
        units,
        current: None,
        skipped: 0,
        failed: false,
    })
}

impl RecordReader {
    /// How many records were skipped for invalid UTF-8 so far (with [`Utf8Policy::Skip`]).
    pub fn skipped_invalid_utf8(&self) -> u64 {
        let current = match &self.current {
            Some(Current::Jsonl(lines)) => lines.skipped(),
            _ => 0,
        };
        self.skipped + current
    }

    fn json_value_to_id(v: &serde_json::Value) -> Option<String> {
        match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
            _ => None,
        }
    }

    fn parse_json_line(&self, path: &Path, line: u64, text: &str) -> Result<Record> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| Error::JsonLine {
            path: path.to_path_buf(),
            line: line as usize,
            reason: "malformed JSON".into(),
            source: Some(e),
        })?;
        let obj = v.as_object().ok_or_else(|| Error::JsonLine {
            path: path.to_path_buf(),
            line: line as usize,
            reason: "expected a JSON object".into(),
            source: None,
        })?;
        let missing = |field: &str, reason: &str| Error::MissingField {
            path: path.to_path_buf(),
            line,
            field: field.to_string(),
            reason: reason.to_string(),
        };
        let tf = &self.spec.text_field;
        let text = match obj.get(tf) {
            None => return Err(missing(tf, "is missing")),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(_) => return Err(missing(tf, "is not a string")),
        };
        let id = match &self.spec.id_field {
            None => format!("{}:{line}", path.display()),
            Some(f) => match obj.get(f) {
                None => return Err(missing(f, "is missing")),
                Some(v) => Self::json_value_to_id(v)
                    .ok_or_else(|| missing(f, "is not a string or integer"))?,
            },
        };
        Ok(Record { id, text })
    }

    fn parquet_field(f: &Field) -> std::result::Result<Option<String>, &'static str> {
        Ok(Some(match f {
            Field::Str(s) => s.clone(),
            Field::Bytes(b) => match std::str::from_utf8(b.data()) {
                Ok(s) => s.to_string(),
                Err(_) => return Err("holds bytes that are not UTF-8"),
            },
            Field::Byte(x) => x.to_string(),
            Field::Short(x) => x.to_string(),
            Field::Int(x) => x.to_string(),
            Field::Long(x) => x.to_string(),
            Field::UByte(x) => x.to_string(),
            Field::UShort(x) => x.to_string(),
            Field::UInt(x) => x.to_string(),
            Field::ULong(x) => x.to_string(),
            Field::Null => return Ok(None),
            _ => return Err("is not a string or integer column"),
        }))
    }

    fn parquet_record(
        &self,
        path: &Path,
        row_no: u64,
        row: &parquet::record::Row,
    ) -> Result<Record> {
        let missing = |field: &str, reason: &str| Error::MissingField {
            path: path.to_path_buf(),
            line: row_no,
            field: field.to_string(),
            reason: reason.to_string(),
        };
        let get = |name: &str| -> Result<String> {
            let f = row
                .get_column_iter()
                .find(|(n, _)| n.as_str() == name)
                .map(|(_, f)| f)
                .ok_or_else(|| missing(name, "is missing (no such column)"))?;
            match Self::parquet_field(f) {
                Ok(Some(s)) => Ok(s),
                Ok(None) => Err(missing(name, "is null")),
                Err(r) => Err(missing(name, r)),
            }
        };
        let text = get(&self.spec.text_field)?;
        let id = match &self.spec.id_field {
            None => format!("{}:{row_no}", path.display()),
            Some(f) => get(f)?,
        };
        Ok(Record { id, text })
    }

    fn next_inner(&mut self) -> Option<Result<Record>> {
        loop {
            match self.current.as_mut() {
                Some(Current::Jsonl(lines)) => match lines.next() {
                    None => {
                        self.skipped += lines.skipped();
                        self.current = None;
                        continue;
                    }
                    Some(Err(e)) => return Some(Err(e)),
                    Some(Ok((line_no, text))) => {
                        let path = lines.path().to_path_buf();
                        return Some(self.parse_json_line(&path, line_no, &text));
                    }
                },
                Some(Current::Parquet { path, rows, row }) => {
                    match crate::error::catch_library_panic(|| rows.next())
                        .unwrap_or_else(|m| Some(Err(parquet::errors::ParquetError::General(m))))
                    {
                        None => {
                            self.current = None;
                            continue;
                        }
                        Some(Err(e)) => {
                            return Some(Err(Error::Parquet {
                                path: path.clone(),
                                source: e,
                            }))
                        }
                        Some(Ok(r)) => {
                            *row += 1;
                            let (path, row_no) = (path.clone(), *row);
                            return Some(self.parquet_record(&path, row_no, &r));
                        }
                    }
                }
                None => {}
            }
            match self.units.pop_front()? {
                Unit::Jsonl(path) => match JsonlLines::open(&path, self.spec.on_invalid_utf8) {
                    Ok(lines) => self.current = Some(Current::Jsonl(lines)),
                    Err(e) => return Some(Err(e)),
                },
                Unit::Parquet(path) => {
                    let rows = crate::error::catch_library_panic(|| {
                        SerializedFileReader::try_from(path.as_path()).map(|r| r.into_iter())
                    })
                    .unwrap_or_else(|m| Err(parquet::errors::ParquetError::General(m)));
                    let rows = match rows {
                        Ok(r) => r,
                        Err(e) => return Some(Err(Error::Parquet { path, source: e })),
                    };
                    self.current = Some(Current::Parquet { path, rows, row: 0 });
                }
                Unit::File(path, id) => {
                    let bytes = match fs::read(&path) {
                        Ok(b) => b,
                        Err(e) => return Some(Err(io_err(&path, e))),
                    };
                    match String::from_utf8(bytes) {
                        Ok(text) => return Some(Ok(Record { id, text })),
                        Err(e) => {
                            if self.spec.on_invalid_utf8 == Utf8Policy::Skip {
                                self.skipped += 1;
                                continue;
                            }
                            return Some(Err(Error::InvalidUtf8 {
                                path,
                                line: None,
                                source: e.utf8_error(),
                            }));
                        }
                    }
                }
            }
        }
    }
}

impl Iterator for RecordReader {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let r = self.next_inner();
        if matches!(r, Some(Err(_))) {
            // A reader stops at its first error: the caller must fix the input.
            self.failed = true;
        }
        r
    }
}

/// Reads every record of a spec into memory (for small corpora and tests).
pub fn read_all(spec: &CorpusSpec) -> Result<Vec<Record>> {
    open(spec)?.collect()
}
