//! Encoding documents into token shards.
//!
//! Each document is tokenised without the tokenizer's own special tokens, prefixed
//! with BOS, followed by EOS (unless disabled), and appended to a running token
//! buffer per (split, domain); the buffer is cut into fixed `seq_len` sequences
//! written with a [`ShardWriter`]. Inputs are streamed line by line and tokenised in
//! parallel chunks of `batch_docs` documents, so a corpus is never held in memory.
//!
//! [`encode_dir`] reads a balanced-data folder: `DIR/<split>/<domain>.jsonl`, one
//! JSON object per line with at least a `"text"` string field.
//!
//! **Empty domains.** When there is a train split, every domain must have training
//! data: a domain whose `train/<domain>.jsonl` is missing (while
//! `validation/<domain>.jsonl` exists), holds no document, or yields no full sequence
//! is an [`Error::EmptyDomain`] naming the file and the domain, as [`crate::balance`]
//! and the tokenizer report it, instead of shards that silently lack the domain.
//! [`EncodeOptions::allow_empty_domains`] (`mome data encode --allow-empty-domains`)
//! encodes what there is instead. An empty validation file is fine (balancing without
//! a validation fraction writes them), and so is input without any train file
//! (evaluation-only shards).

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::corpus::{JsonlLines, Utf8Policy};
use crate::shards::{valid_domain_name, ShardSet, ShardWriter, SPLITS};
use crate::{Error, Result};

/// Settings of [`encode_dir`] and [`encode_documents`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncodeOptions {
    /// Tokens per sequence (default 1024).
    pub seq_len: usize,
    /// Id put before every document (default 1, `<s>`).
    pub bos_id: u32,
    /// Id put after every document when `append_eos` (default 2, `</s>`).
    pub eos_id: u32,
    /// Append EOS after each document so documents are separated (default true).
    pub append_eos: bool,
    /// Documents tokenised together in parallel (default 256).
    pub batch_docs: usize,
    /// Drop each domain's final partial sequence (default true); when false it is
    /// padded with EOS to `seq_len`.
    pub drop_remainder: bool,
    /// Encode even when a domain has no training data (default false: an
    /// [`Error::EmptyDomain`], see the [module docs](self)).
    #[serde(default)]
    pub allow_empty_domains: bool,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self {
            seq_len: 1024,
            bos_id: 1,
            eos_id: 2,
            append_eos: true,
            batch_docs: 256,
            drop_remainder: true,
            allow_empty_domains: false,
        }
    }
}

impl EncodeOptions {
    /// Defaults with BOS/EOS taken from the tokenizer's `<s>` / `</s>` tokens when
    /// it has them (method §2).
    pub fn for_tokenizer(tokenizer: &Tokenizer) -> Self {
        let d = Self::default();
        Self {
            bos_id: tokenizer.token_to_id("<s>").unwrap_or(d.bos_id),
            eos_id: tokenizer.token_to_id("</s>").unwrap_or(d.eos_id),
            ..d
        }
    }

    fn validate(&self) -> Result<()> {
        if self.seq_len < 2 {
            return Err(Error::Config(format!(
                "seq_len must be >= 2, got {}",
                self.seq_len
            )));
        }
        if self.batch_docs == 0 {
            return Err(Error::Config("batch_docs must be > 0".into()));
        }
        Ok(())
    }
}

/// Counts for one split/domain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainEncodeStats {
    /// Documents read (empty texts included).
    pub documents: u64,
    /// Documents skipped because their text was empty.
    pub empty_documents: u64,
    /// Tokens written to sequences (BOS/EOS included, padding excluded).
    pub tokens_kept: u64,
    /// Tokens of the final partial sequence that were dropped.
    pub tokens_dropped: u64,
    /// EOS padding tokens added to the final sequence (`drop_remainder = false`).
    pub tokens_padded: u64,
    /// Sequences written.
    pub sequences: u64,
}

/// What an encoding run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncodeReport {
    /// split -> domain -> counts.
    pub splits: BTreeMap<String, BTreeMap<String, DomainEncodeStats>>,
    /// Documents over all splits and domains.
    pub total_documents: u64,
    /// Tokens produced (kept + dropped) over all splits and domains.
    pub total_tokens: u64,
    /// Sequences written over all splits and domains.
    pub total_sequences: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// `total_tokens / seconds`.
    pub tokens_per_second: f64,
}

struct Packer<'a> {
    writer: ShardWriter,
    opts: &'a EncodeOptions,
    buffers: BTreeMap<(String, String), Vec<u32>>,
    stats: BTreeMap<(String, String), DomainEncodeStats>,
}

impl<'a> Packer<'a> {
    fn new(
        tokenizer: &Tokenizer,
        tokenizer_sha256: &str,
        opts: &'a EncodeOptions,
        out: &Path,
    ) -> Result<Self> {
        opts.validate()?;
        let vocab = tokenizer.get_vocab_size(true);
        let writer = ShardWriter::new(
            out,
            vocab,
            opts.seq_len,
            tokenizer_sha256,
            opts.bos_id,
            opts.eos_id,
        )?;
        Ok(Self {
            writer,
            opts,
            buffers: BTreeMap::new(),
            stats: BTreeMap::new(),
        })
    }

    /// Adds one tokenised document (`None` = empty text).
    fn add(&mut self, split: &str, domain: &str, ids: Option<&[u32]>) -> Result<()> {
        let key = (split.to_string(), domain.to_string());
        let stats = self.stats.entry(key.clone()).or_default();
        stats.documents += 1;
        let Some(ids) = ids else {
            stats.empty_documents += 1;
            return Ok(());
        };
        let buf = self.buffers.entry(key).or_default();
        buf.push(self.opts.bos_id);
        buf.extend_from_slice(ids);
        if self.opts.append_eos {
            buf.push(self.opts.eos_id);
        }
        let seq_len = self.opts.seq_len;
        if buf.len() >= seq_len {
            let mut start = 0;
            while buf.len() - start >= seq_len {
                self.writer
                    .push_sequence(split, domain, &buf[start..start + seq_len])?;
                stats.sequences += 1;
                stats.tokens_kept += seq_len as u64;
                start += seq_len;
            }
            buf.drain(..start);
        }
        Ok(())
    }

    /// Sequences written to `split`/`domain` so far.
    fn sequences(&self, split: &str, domain: &str) -> u64 {
        self.stats
            .get(&(split.to_string(), domain.to_string()))
            .map_or(0, |s| s.sequences)
    }

    /// Unless empty domains are allowed or there is no train split (`has_train`):
    /// every domain must have produced a train sequence (call after
    /// [`Self::flush_remainders`]). `file` names a domain's input.
    fn check_train_domains(
        &self,
        has_train: bool,
        domains: &BTreeSet<String>,
        file: impl Fn(&str) -> String,
    ) -> Result<()> {
        if self.opts.allow_empty_domains || !has_train {
            return Ok(());
        }
        for domain in domains {
            if self.sequences("train", domain) > 0 {
                continue;
            }
            let stats = self
                .stats
                .get(&("train".to_string(), domain.clone()))
                .cloned()
                .unwrap_or_default();
            let why = if stats.documents == stats.empty_documents {
                "no document with text".to_string()
            } else {
                format!(
                    "{} tokens, too few for one {}-token sequence",
                    stats.tokens_dropped, self.opts.seq_len
                )
            };
            return Err(empty_train_domain(domain, &file(domain), &why));
        }
        Ok(())
    }

    /// Packs each domain's final partial sequence (dropped or padded).
    fn flush_remainders(&mut self) -> Result<()> {
        let seq_len = self.opts.seq_len;
        for ((split, domain), mut buf) in std::mem::take(&mut self.buffers) {
            let stats = self
                .stats
                .get_mut(&(split.clone(), domain.clone()))
                .expect("stats exist for every buffer");
            if buf.is_empty() {
                continue;
            }
            if self.opts.drop_remainder {
                stats.tokens_dropped += buf.len() as u64;
            } else {
                stats.tokens_kept += buf.len() as u64;
                stats.tokens_padded += (seq_len - buf.len()) as u64;
                buf.resize(seq_len, self.opts.eos_id);
                self.writer.push_sequence(&split, &domain, &buf)?;
                stats.sequences += 1;
            }
        }
        Ok(())
    }

    fn finish(mut self, started: Instant) -> Result<EncodeReport> {
        self.flush_remainders()?;
        self.writer.finish()?;
        let seconds = started.elapsed().as_secs_f64();
        let mut splits: BTreeMap<String, BTreeMap<String, DomainEncodeStats>> = BTreeMap::new();
        let (mut docs, mut toks, mut seqs) = (0, 0, 0);
        for ((split, domain), s) in self.stats {
            docs += s.documents;
            toks += s.tokens_kept + s.tokens_dropped;
            seqs += s.sequences;
            splits.entry(split).or_default().insert(domain, s);
        }
        Ok(EncodeReport {
            splits,
            total_documents: docs,
            total_tokens: toks,
            total_sequences: seqs,
            seconds,
            tokens_per_second: if seconds > 0.0 {
                toks as f64 / seconds
            } else {
                0.0
            },
        })
    }
}

fn tokenize(
    tokenizer: &Tokenizer,
    text: &str,
    context: impl FnOnce() -> String,
) -> Result<Vec<u32>> {
    tokenizer
        .encode_fast(text, false)
        .map(|e| e.get_ids().to_vec())
        .map_err(|source| Error::Tokenize {
            context: context(),
            source,
        })
}

/// The error of a domain without training data: names the domain and its input, and
/// the way to go on without it.
pub(crate) fn empty_train_domain(domain: &str, input: &str, why: &str) -> Error {
    Error::EmptyDomain {
        domain: domain.to_string(),
        reason: format!(
            "{input}: {why}; every domain needs training data (fix the input, or allow \
             empty domains: --allow-empty-domains, `allow_empty_domains`)"
        ),
    }
}

/// Encodes `(split, domain, text)` documents into a shard folder at `out`.
/// Documents of different splits/domains may interleave; each (split, domain) is
/// packed separately. Empty texts are counted and skipped. Unless
/// `opts.allow_empty_domains`, every domain (of either split) must yield at least one
/// training sequence when there are training documents at all.
pub fn encode_documents<I>(
    documents: I,
    tokenizer: &Tokenizer,
    tokenizer_sha256: &str,
    opts: &EncodeOptions,
    out: &Path,
) -> Result<EncodeReport>
where
    I: IntoIterator<Item = (String, String, String)>,
{
    let started = Instant::now();
    let mut packer = Packer::new(tokenizer, tokenizer_sha256, opts, out)?;
    let mut iter = documents.into_iter().enumerate().peekable();
    let mut chunk = Vec::with_capacity(opts.batch_docs);
    let mut domains = BTreeSet::new();
    let mut has_train = false;
    while iter.peek().is_some() {
        chunk.clear();
        chunk.extend(iter.by_ref().take(opts.batch_docs));
        let encoded: Vec<Result<Option<Vec<u32>>>> = chunk
            .par_iter()
            .map(|(i, (_, _, text))| {
                if text.is_empty() {
                    Ok(None)
                } else {
                    tokenize(tokenizer, text, || format!("document {i}")).map(Some)
                }
            })
            .collect();
        for ((_, (split, domain, _)), ids) in chunk.iter().zip(encoded) {
            packer.add(split, domain, ids?.as_deref())?;
            if !domains.contains(domain) {
                domains.insert(domain.clone());
            }
            has_train |= split == "train";
        }
    }
    packer.flush_remainders()?;
    packer.check_train_domains(has_train, &domains, |_| "train split".to_string())?;
    packer.finish(started)
}

#[derive(Deserialize)]
struct TextRecord {
    text: Option<String>,
}

/// Lists the `(split, domain, path)` inputs of a balanced-data folder, sorted by
/// split then domain.
fn list_inputs(input: &Path) -> Result<Vec<(String, String, PathBuf)>> {
    if !input.is_dir() {
        return Err(Error::InvalidPath {
            path: input.to_path_buf(),
            reason: "is not a folder; expected DIR/<split>/<domain>.jsonl".into(),
        });
    }
    let mut inputs = Vec::new();
    for split in SPLITS {
        let dir = input.join(split);
        if !dir.is_dir() {
            continue;
        }
        let mut files = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| Error::Io {
            path: dir.clone(),
            source: e,
        })? {
            let path = entry
                .map_err(|e| Error::Io {
                    path: dir.clone(),
                    source: e,
                })?
                .path();
            if path.extension().and_then(|e| e.to_str()) != Some("jsonl") {
                continue;
            }
            let domain = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string();
            if !valid_domain_name(&domain) {
                return Err(Error::InvalidPath {
                    path,
                    reason: "domain file names must be [A-Za-z0-9_-]+.jsonl".into(),
                });
            }
            files.push((split.to_string(), domain, path));
        }
        files.sort();
        inputs.extend(files);
    }
    if inputs.is_empty() {
        return Err(Error::InvalidPath {
            path: input.to_path_buf(),
            reason: "holds no train/<domain>.jsonl or validation/<domain>.jsonl file".into(),
        });
    }
    Ok(inputs)
}

/// Parses one JSONL line into its text (`None` when empty).
fn parse_line(path: &Path, line_no: usize, line: &str) -> Result<Option<String>> {
    let rec: TextRecord = serde_json::from_str(line).map_err(|e| Error::JsonLine {
        path: path.to_path_buf(),
        line: line_no,
        reason: "malformed JSON".into(),
        source: Some(e),
    })?;
    match rec.text {
        Some(t) if t.is_empty() => Ok(None),
        Some(t) => Ok(Some(t)),
        None => Err(Error::JsonLine {
            path: path.to_path_buf(),
            line: line_no,
            reason: "missing \"text\" field (or it is null)".into(),
            source: None,
        }),
    }
}

/// Encodes a balanced-data folder (`input/<split>/<domain>.jsonl`) into a shard
/// folder at `out`. Lines are streamed; blank lines are skipped; a malformed line,
/// one without `"text"` or one that is not UTF-8 is an error naming `file:LINE`.
/// Unless `opts.allow_empty_domains`, a domain without training data is an
/// [`Error::EmptyDomain`] (see the [module docs](self)); nothing is written then.
pub fn encode_dir(
    input: &Path,
    tokenizer: &Tokenizer,
    tokenizer_sha256: &str,
    opts: &EncodeOptions,
    out: &Path,
) -> Result<EncodeReport> {
    let started = Instant::now();
    let inputs = list_inputs(input)?;
    let train_path = |d: &str| input.join("train").join(format!("{d}.jsonl"));
    let domains: BTreeSet<String> = inputs.iter().map(|(_, d, _)| d.clone()).collect();
    let has_train = inputs.iter().any(|(s, _, _)| s == "train");
    if !opts.allow_empty_domains && has_train {
        // Before any work: a domain with validation data but no train file.
        for d in &domains {
            if !inputs.iter().any(|(s, x, _)| s == "train" && x == d) {
                return Err(empty_train_domain(
                    d,
                    &train_path(d).display().to_string(),
                    "missing, but the domain has a validation file",
                ));
            }
        }
    }
    let mut packer = Packer::new(tokenizer, tokenizer_sha256, opts, out)?;
    for (split, domain, path) in inputs {
        let mut lines = JsonlLines::open(&path, Utf8Policy::Error)?;
        let mut chunk: Vec<(usize, String)> = Vec::with_capacity(opts.batch_docs);
        loop {
            chunk.clear();
            for line in lines.by_ref() {
                let (line_no, line) = line?;
                chunk.push((line_no as usize, line));
                if chunk.len() == opts.batch_docs {
                    break;
                }
            }
            if chunk.is_empty() {
                break;
            }
            let encoded: Vec<Result<Option<Vec<u32>>>> = chunk
                .par_iter()
                .map(|(line_no, line)| match parse_line(&path, *line_no, line)? {
                    None => Ok(None),
                    Some(text) => {
                        tokenize(tokenizer, &text, || format!("{}:{line_no}", path.display()))
                            .map(Some)
                    }
                })
                .collect();
            for ids in encoded {
                packer.add(&split, &domain, ids?.as_deref())?;
            }
        }
    }
    packer.flush_remainders()?;
    packer.check_train_domains(has_train, &domains, |d| train_path(d).display().to_string())?;
    packer.finish(started)
}

/// The manifest figures of a shard folder as JSON (for `mome data stats --json`):
/// vocab, seq_len, dtype, per split/domain files, sequences and tokens, and totals.
pub fn stats_json(shards: &ShardSet) -> serde_json::Value {
    let m = shards.manifest();
    let mut splits = serde_json::Map::new();
    let (mut all_seqs, mut all_toks) = (0u64, 0u64);
    for (split, domains) in &m.splits {
        let mut ds = serde_json::Map::new();
        let (mut seqs, mut toks) = (0u64, 0u64);
        for (domain, d) in domains {
            seqs += d.sequences;
            toks += d.tokens;
            ds.insert(
                domain.clone(),
                serde_json::json!({
                    "files": d.files.len(),
                    "sequences": d.sequences,
                    "tokens": d.tokens,
                }),
            );
        }
        all_seqs += seqs;
        all_toks += toks;
        splits.insert(
            split.clone(),
            serde_json::json!({"domains": ds, "sequences": seqs, "tokens": toks}),
        );
    }
    serde_json::json!({
        "format": m.format,
        "format_version": m.format_version,
        "tokenizer_sha256": m.tokenizer_sha256,
        "vocab_size": m.vocab_size,
        "seq_len": m.seq_len,
        "dtype": m.dtype,
        "bos_id": m.bos_id,
        "eos_id": m.eos_id,
        "splits": splits,
        "total_sequences": all_seqs,
        "total_tokens": all_toks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::chain;

    const SHA: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    /// A word-level tokenizer: <unk>=0 <s>=1 </s>=2 a=3 b=4 c=5, whitespace split.
    pub(crate) fn tiny_tokenizer() -> Tokenizer {
        let json = r#"{
          "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
          "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
          "post_processor": null, "decoder": null,
          "model": {"type": "WordLevel", "unk_token": "<unk>",
                    "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3, "b": 4, "c": 5}}
        }"#;
        Tokenizer::from_bytes(json.as_bytes()).unwrap()
    }

    fn docs(v: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
        v.iter()
            .map(|(s, d, t)| (s.to_string(), d.to_string(), t.to_string()))
            .collect()
    }

    #[test]
    fn packs_documents_with_bos_eos_per_domain() {
        let tok = tiny_tokenizer();
        let opts = EncodeOptions {
            seq_len: 4,
            batch_docs: 2,
            // y yields no full sequence: allowed here, to see how it is dropped.
            allow_empty_domains: true,
            ..EncodeOptions::for_tokenizer(&tok)
        };
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("s");
        let input = docs(&[
            ("train", "x", "a b"),
            ("train", "y", "c"),
            ("train", "x", "c c c"),
            ("train", "x", ""),
        ]);
        let r = encode_documents(input, &tok, SHA, &opts, &out).unwrap();
        // x: [1 3 4 2] [1 5 5 5] + remainder [2] dropped; y: [1 5 2] dropped.
        let x = &r.splits["train"]["x"];
        assert_eq!((x.documents, x.empty_documents), (3, 1));
        assert_eq!((x.sequences, x.tokens_kept, x.tokens_dropped), (2, 8, 1));
        let y = &r.splits["train"]["y"];
        assert_eq!((y.sequences, y.tokens_dropped), (0, 3));
        assert_eq!(r.total_tokens, 12);
        let set = ShardSet::open(&out).unwrap();
        assert_eq!(set.sequence("train", "x", 0).unwrap(), vec![1, 3, 4, 2]);
        assert_eq!(set.sequence("train", "x", 1).unwrap(), vec![1, 5, 5, 5]);
        assert!(set.domains("train").unwrap() == vec!["x".to_string()]);
    }

    #[test]
    fn keeps_remainder_padded_with_eos_when_asked() {
        let tok = tiny_tokenizer();
        let opts = EncodeOptions {
            seq_len: 4,
            drop_remainder: false,
            append_eos: false,
            ..EncodeOptions::default()
        };
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("s");
        let r = encode_documents(
            docs(&[("validation", "x", "a b c a b")]),
            &tok,
            SHA,
            &opts,
            &out,
        )
        .unwrap();
        let x = &r.splits["validation"]["x"];
        assert_eq!((x.sequences, x.tokens_kept, x.tokens_padded), (2, 6, 2));
        let set = ShardSet::open(&out).unwrap();
        assert_eq!(
            set.sequence("validation", "x", 0).unwrap(),
            vec![1, 3, 4, 5]
        );
        assert_eq!(
            set.sequence("validation", "x", 1).unwrap(),
            vec![3, 4, 2, 2]
        );
        let stats = stats_json(&set);
        assert_eq!(stats["total_tokens"], 8);
        assert_eq!(stats["dtype"], "u16");
        assert_eq!(
            stats["splits"]["validation"]["domains"]["x"]["sequences"],
            2
        );
    }

    #[test]
    fn missing_text_field_names_file_and_line() {
        let tok = tiny_tokenizer();
        let root = tempfile::tempdir().unwrap();
        let input = root.path().join("in");
        fs::create_dir_all(input.join("train")).unwrap();
        fs::write(
            input.join("train/en.jsonl"),
            "{\"text\": \"a b\"}\n\n{\"id\": 3}\n",
        )
        .unwrap();
        let out = root.path().join("s");
        let opts = EncodeOptions {
            seq_len: 2,
            ..EncodeOptions::default()
        };
        let e = encode_dir(&input, &tok, SHA, &opts, &out).unwrap_err();
        assert!(matches!(e, Error::JsonLine { line: 3, .. }), "{e}");
        assert!(e.to_string().contains("en.jsonl:3"), "{e}");
        assert!(e.to_string().contains("\"text\""), "{e}");
        assert!(!out.exists(), "no partial output");
    }

    #[test]
    fn a_domain_without_sequences_is_an_error_unless_allowed() {
        let tok = tiny_tokenizer();
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("s");
        let input = docs(&[("train", "x", "a b c"), ("train", "y", "c")]);
        let opts = EncodeOptions {
            seq_len: 4,
            ..EncodeOptions::default()
        };
        let e = encode_documents(input.clone(), &tok, SHA, &opts, &out).unwrap_err();
        assert!(
            matches!(&e, Error::EmptyDomain { domain, .. } if domain == "y"),
            "{e}"
        );
        assert!(e.to_string().contains("3 tokens"), "{e}");
        assert!(!out.exists(), "nothing is written");
        let opts = EncodeOptions {
            allow_empty_domains: true,
            ..opts
        };
        let r = encode_documents(input, &tok, SHA, &opts, &out).unwrap();
        assert_eq!(r.splits["train"]["y"].sequences, 0);
        assert_eq!(
            ShardSet::open(&out).unwrap().domains("train").unwrap(),
            ["x"]
        );
    }

    #[test]
    fn empty_or_missing_train_files_are_errors_unless_allowed() {
        let tok = tiny_tokenizer();
        let root = tempfile::tempdir().unwrap();
        let input = root.path().join("in");
        fs::create_dir_all(input.join("train")).unwrap();
        fs::create_dir_all(input.join("validation")).unwrap();
        let doc = "{\"text\": \"a b c a\"}\n";
        fs::write(input.join("train/de.jsonl"), doc).unwrap();
        fs::write(input.join("train/en.jsonl"), "").unwrap();
        fs::write(input.join("validation/en.jsonl"), doc).unwrap();
        // An empty validation file is fine (balancing without validation writes them).
        fs::write(input.join("validation/de.jsonl"), "").unwrap();
        let out = root.path().join("s");
        let opts = EncodeOptions {
            seq_len: 4,
            ..EncodeOptions::default()
        };
        let e = encode_dir(&input, &tok, SHA, &opts, &out).unwrap_err();
        assert!(
            matches!(&e, Error::EmptyDomain { domain, .. } if domain == "en"),
            "{e}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("train/en.jsonl") && msg.contains("no document"),
            "{msg}"
        );
        assert!(!out.exists(), "nothing is written");
        // Blank lines and empty texts do not count as documents.
        fs::write(input.join("train/en.jsonl"), "\n{\"text\": \"\"}\n").unwrap();
        let e = encode_dir(&input, &tok, SHA, &opts, &out).unwrap_err();
        assert!(
            matches!(&e, Error::EmptyDomain { domain, .. } if domain == "en"),
            "{e}"
        );
        // A domain with validation data and no train file at all.
        fs::remove_file(input.join("train/en.jsonl")).unwrap();
        let e = encode_dir(&input, &tok, SHA, &opts, &out).unwrap_err();
        assert!(e.to_string().contains("train/en.jsonl: missing"), "{e}");
        assert!(!out.exists());
        // Allowed: the shards hold what there is.
        let opts = EncodeOptions {
            allow_empty_domains: true,
            ..opts
        };
        encode_dir(&input, &tok, SHA, &opts, &out).unwrap();
        let set = ShardSet::open(&out).unwrap();
        assert_eq!(set.domains("train").unwrap(), ["de"]);
        assert_eq!(set.domains("validation").unwrap(), ["en"]);
    }

    #[test]
    fn invalid_utf8_names_file_and_line_and_its_cause_once() {
        let tok = tiny_tokenizer();
        let root = tempfile::tempdir().unwrap();
        let input = root.path().join("in");
        fs::create_dir_all(input.join("train")).unwrap();
        fs::write(
            input.join("train/en.jsonl"),
            b"{\"text\": \"a b\"}\n\n{\"text\": \"a \xff b\"}\n",
        )
        .unwrap();
        let out = root.path().join("s");
        let e = encode_dir(&input, &tok, SHA, &EncodeOptions::default(), &out).unwrap_err();
        assert!(
            matches!(e, Error::InvalidUtf8 { line: Some(3), .. }),
            "{e:?}"
        );
        let full = chain(&e);
        assert!(full.contains("en.jsonl:3: invalid UTF-8"), "{full}");
        assert_eq!(full.matches("invalid utf-8 sequence").count(), 1, "{full}");
        assert!(!out.exists());
    }

    #[test]
    fn malformed_json_prints_its_cause_once() {
        let tok = tiny_tokenizer();
        let root = tempfile::tempdir().unwrap();
        let input = root.path().join("in");
        fs::create_dir_all(input.join("train")).unwrap();
        fs::write(input.join("train/en.jsonl"), "{\"text\": \"a b\"\n").unwrap();
        let e = encode_dir(
            &input,
            &tok,
            SHA,
            &EncodeOptions::default(),
            &root.path().join("s"),
        )
        .unwrap_err();
        let full = chain(&e);
        assert!(full.contains("en.jsonl:1: malformed JSON: "), "{full}");
        assert_eq!(full.matches("column").count(), 1, "{full}");
    }

    #[test]
    fn rejects_bad_options_and_empty_input() {
        let tok = tiny_tokenizer();
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("s");
        let bad = EncodeOptions {
            batch_docs: 0,
            ..EncodeOptions::default()
        };
        assert!(encode_documents(Vec::new(), &tok, SHA, &bad, &out).is_err());
        let e = encode_dir(root.path(), &tok, SHA, &EncodeOptions::default(), &out).unwrap_err();
        assert!(e.to_string().contains("holds no train"), "{e}");
    }
}
