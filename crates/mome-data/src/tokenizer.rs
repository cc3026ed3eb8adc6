//! The tokenizer (method.md §2): loading Hugging Face `tokenizer.json` files and
//! training a Llama/Mistral-style BPE with byte fallback on a balanced corpus.
//!
//! The trained file has the structure of the seed `En_De_Fr_Py_Tokenizer`:
//! normalizer `Prepend("▁")` + `Replace(" ", "▁")`, no pre-tokenizer, BPE with
//! `byte_fallback` and `fuse_unk`, post-processor `TemplateProcessing("<s> $A")`
//! (BOS added, EOS not), decoder `Replace("▁", " ")` + `ByteFallback` + `Fuse` +
//! `Strip(1 leading space)`; `<unk>`=0, `<s>`=1, `</s>`=2. Unlike the seed (whose
//! vocabulary lacks them, so unseen characters become `<unk>`), the 256 byte tokens
//! `<0x00>`..`<0xFF>` are ids 3..=258, so byte fallback really works.
//!
//! Training splits the normalized text into pieces `▁*[^▁]+|▁+` (a word with all
//! the spaces before it, so indentation runs stay together) to keep the BPE trainer
//! fast; merges therefore never cross such a boundary, and encoding without a
//! pre-tokenizer (as saved) gives exactly the same ids as encoding the pieces.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokenizers::models::bpe::BpeTrainerBuilder;
use tokenizers::models::TrainerWrapper;
use tokenizers::{AddedToken, Tokenizer};

use crate::corpus::{self, CorpusSpec};
use crate::{fsutil, Error, Result};

/// Loads a Hugging Face `tokenizer.json` and returns it with the SHA-256 (hex) of
/// the file bytes, which identifies the tokenizer in shard and model metadata.
pub fn load_tokenizer(path: &Path) -> Result<(Tokenizer, String)> {
    let bytes = std::fs::read(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let sha = hex::encode(Sha256::digest(&bytes));
    let tok = crate::error::catch_library_panic(|| Tokenizer::from_bytes(&bytes))
        .map_err(Into::into)
        .and_then(|r| r)
        .map_err(|e| Error::Tokenizer {
            path: path.to_path_buf(),
            source: e,
        })?;
    Ok((tok, sha))
}

/// Settings of [`train_tokenizer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizerTrainConfig {
    /// Final vocabulary size, specials and byte tokens included. Default 32000.
    pub vocab_size: usize,
    /// Minimum pair frequency for a merge. Default 2.
    pub min_frequency: u64,
    /// Add the 256 byte tokens and enable byte fallback. Default true.
    pub byte_fallback: bool,
    /// Special tokens, given ids 0.. in this order. Default `["<unk>", "<s>", "</s>"]`.
    pub special_tokens: Vec<String>,
    /// Add BOS (`special_tokens[1]`) in front of every encoding. Default true.
    pub add_bos: bool,
    /// Keep at most this many distinct characters in the initial alphabet (rarer
    /// ones fall back to bytes). Default `None` (all, as the seed tokenizer).
    pub limit_alphabet: Option<usize>,
    /// Show the trainer's progress bar. Default false.
    pub show_progress: bool,
    /// Records per domain used for the fertility statistics. Default 10000.
    pub fertility_max_records: usize,
    /// Train even when a domain has no training text (default false: a
    /// `train/<domain>.jsonl` without a document with text, or missing while
    /// `validation/<domain>.jsonl` exists, is an [`Error::EmptyDomain`], as in
    /// [`crate::encode`]).
    #[serde(default)]
    pub allow_empty_domains: bool,
}

impl Default for TokenizerTrainConfig {
    fn default() -> Self {
        Self {
            vocab_size: 32000,
            min_frequency: 2,
            byte_fallback: true,
            special_tokens: vec!["<unk>".into(), "<s>".into(), "</s>".into()],
            add_bos: true,
            limit_alphabet: None,
            show_progress: false,
            fertility_max_records: 10_000,
            allow_empty_domains: false,
        }
    }
}

impl TokenizerTrainConfig {
    /// Checks the settings before any work starts.
    pub fn validate(&self) -> Result<()> {
        let reserved = self.special_tokens.len() + if self.byte_fallback { 256 } else { 0 };
        if self.vocab_size <= reserved {
            return Err(Error::Config(format!(
                "vocab_size {} must exceed the {reserved} special and byte tokens",
                self.vocab_size
            )));
        }
        if self.min_frequency == 0 {
            return Err(Error::Config("min_frequency must be >= 1".into()));
        }
        if self.special_tokens.len() < 3 {
            return Err(Error::Config(
                "special_tokens must list at least unk, bos and eos (e.g. <unk> <s> </s>)".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for t in &self.special_tokens {
            if t.is_empty() || !seen.insert(t) {
                return Err(Error::Config(format!(
                    "special token {t:?} is empty or duplicated"
                )));
            }
        }
        if self.limit_alphabet == Some(0) {
            return Err(Error::Config("limit_alphabet must be >= 1".into()));
        }
        Ok(())
    }
}

/// Tokens per word and per character of one domain's training text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fertility {
    /// Records measured.
    pub records: u64,
    /// Whitespace-separated words.
    pub words: u64,
    /// Unicode scalar values.
    pub chars: u64,
    /// Tokens (no special tokens).
    pub tokens: u64,
    /// tokens / words.
    pub tokens_per_word: f64,
    /// tokens / chars.
    pub tokens_per_char: f64,
}

/// What [`train_tokenizer_from_dir`] reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizerStats {
    /// Vocabulary size of the written tokenizer.
    pub vocab_size: usize,
    /// Number of merges.
    pub merges: usize,
    /// Training texts fed to the trainer.
    pub texts: u64,
    /// Seconds spent training.
    pub training_seconds: f64,
    /// SHA-256 (hex) of the written file.
    pub sha256: String,
    /// Fertility per domain (file stem of `train/<domain>.jsonl`).
    pub fertility: BTreeMap<String, Fertility>,
}

const TRAIN_SPLIT_PATTERN: &str = "▁*[^▁]+|▁+";

fn skeleton(cfg: &TokenizerTrainConfig) -> serde_json::Value {
    use serde_json::json;
    let added: Vec<_> = cfg
        .special_tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let bos = &cfg.special_tokens[1];
    let post = if cfg.add_bos {
        json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos.as_str(): {"id": bos, "ids": [1], "tokens": [bos]}}})
    } else {
        serde_json::Value::Null
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": TRAIN_SPLIT_PATTERN},
                          "behavior": "Isolated", "invert": false},
        "post_processor": post,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": null, "unk_token": cfg.special_tokens[0],
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": true, "byte_fallback": cfg.byte_fallback,
                  "ignore_merges": false, "vocab": {}, "merges": []}
    })
}

fn tok_err(path: &Path, e: tokenizers::Error) -> Error {
    Error::Tokenizer {
        path: path.to_path_buf(),
        source: e,
    }
}

/// Trains the tokenizer on a stream of texts and writes it atomically to `out`.
/// Returns the tokenizer (as written) and its number of merges.
pub fn train_tokenizer<I>(
    texts: I,
    cfg: &TokenizerTrainConfig,
    out: &Path,
) -> Result<(Tokenizer, usize)>
where
    I: Iterator<Item = String> + Send,
{
    let (text, tok, merges) = train_to_json(texts, cfg, out)?;
    fsutil::write_atomic(out, text.as_bytes())?;
    Ok((tok, merges))
}

fn train_to_json<I>(
    texts: I,
    cfg: &TokenizerTrainConfig,
    out: &Path,
) -> Result<(String, Tokenizer, usize)>
where
    I: Iterator<Item = String> + Send,
{
    cfg.validate()?;
    let mut tok: Tokenizer = skeleton(cfg)
        .to_string()
        .parse()
        .map_err(|e| tok_err(out, e))?;
    let reserved_bytes = if cfg.byte_fallback { 256 } else { 0 };
    let mut builder = BpeTrainerBuilder::new()
        .vocab_size(cfg.vocab_size - reserved_bytes)
        .min_frequency(cfg.min_frequency)
        .show_progress(cfg.show_progress)
        .special_tokens(
            cfg.special_tokens
                .iter()
                .map(|t| AddedToken::from(t.clone(), true))
                .collect(),
        );
    if let Some(l) = cfg.limit_alphabet {
        builder = builder.limit_alphabet(l);
    }
    let mut trainer = TrainerWrapper::BpeTrainer(builder.build());
    tok.train(&mut trainer, texts)
        .map_err(|e| tok_err(out, e))?;
    let trained = tok.to_string(false).map_err(|e| tok_err(out, e))?;
    let mut v: serde_json::Value = serde_json::from_str(&trained)?;
    v["pre_tokenizer"] = serde_json::Value::Null;
    let n_special = cfg.special_tokens.len() as u64;
    let model = &mut v["model"];
    let vocab = model["vocab"].as_object().cloned().unwrap_or_default();
    let mut entries: Vec<(String, u64)> = vocab
        .into_iter()
        .map(|(k, id)| (k, id.as_u64().unwrap_or(0)))
        .collect();
    entries.sort_by_key(|e| e.1);
    let mut new_vocab = serde_json::Map::new();
    let mut next = 0u64;
    for (k, id) in &entries {
        if *id < n_special {
            new_vocab.insert(k.clone(), (*id).into());
            next = next.max(id + 1);
        }
    }
    if cfg.byte_fallback {
        for b in 0..=255u8 {
            let name = format!("<0x{b:02X}>");
            if !new_vocab.contains_key(&name) {
                new_vocab.insert(name, next.into());
                next += 1;
            }
        }
    }
    for (k, id) in &entries {
        if *id >= n_special && !new_vocab.contains_key(k) {
            new_vocab.insert(k.clone(), next.into());
            next += 1;
        }
    }
    model["vocab"] = serde_json::Value::Object(new_vocab);
    model["byte_fallback"] = cfg.byte_fallback.into();
    let merges = model["merges"].as_array().map(|m| m.len()).unwrap_or(0);
    let text = serde_json::to_string_pretty(&v)?;
    let final_tok: Tokenizer = text.parse().map_err(|e| tok_err(out, e))?;
    Ok((text, final_tok, merges))
}

/// The `*.jsonl` files of `dir` with their domain names (file stems), sorted; none
/// when `dir` does not exist.
fn jsonl_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let io = |e| Error::Io {
        path: dir.to_path_buf(),
        source: e,
    };
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    let mut files = Vec::new();
    for entry in rd {
        let p = entry.map_err(io)?.path();
        if p.extension().is_some_and(|e| e == "jsonl") {
            if let Some(stem) = p.file_stem() {
                files.push((stem.to_string_lossy().into_owned(), p));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Unless allowed: every domain of the folder has a train file with a document with
/// text (checked before training; reads up to the first such record of each file).
fn check_train_domains(
    dir: &Path,
    files: &[(String, PathBuf)],
    spec: impl Fn(&Path) -> CorpusSpec,
) -> Result<()> {
    for (d, _) in jsonl_files(&dir.join("validation"))? {
        if !files.iter().any(|(name, _)| *name == d) {
            let path = dir.join("train").join(format!("{d}.jsonl"));
            return Err(crate::encode::empty_train_domain(
                &d,
                &path.display().to_string(),
                "missing, but the domain has a validation file",
            ));
        }
    }
    for (d, p) in files {
        let mut reader = corpus::open(&spec(p))?;
        match reader.find(|r| r.as_ref().map_or(true, |r| !r.text.is_empty())) {
            Some(Err(e)) => return Err(e),
            Some(Ok(_)) => {}
            None => {
                return Err(crate::encode::empty_train_domain(
                    d,
                    &p.display().to_string(),
                    "no document with text",
                ))
            }
        }
    }
    Ok(())
}

/// The `train/*.jsonl` files of a balanced folder, sorted, with their domain names.
fn train_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let train = dir.join("train");
    if !train.is_dir() {
        return Err(Error::InvalidPath {
            path: train,
            reason: "not a balanced corpus folder (expected DIR/train/<domain>.jsonl)".into(),
        });
    }
    let files = jsonl_files(&train)?;
    if files.is_empty() {
        return Err(Error::InvalidPath {
            path: train,
            reason: "holds no <domain>.jsonl file".into(),
        });
    }
    Ok(files)
}

/// Measures tokens per word / per char of up to `max_records` records of a spec.
pub fn fertility(tok: &Tokenizer, spec: &CorpusSpec, max_records: usize) -> Result<Fertility> {
    let mut f = Fertility {
        records: 0,
        words: 0,
        chars: 0,
        tokens: 0,
        tokens_per_word: 0.0,
        tokens_per_char: 0.0,
    };
    let mut reader = corpus::open(spec)?.take(max_records);
    loop {
        let chunk: Vec<_> = reader.by_ref().take(512).collect::<Result<_>>()?;
        if chunk.is_empty() {
            break;
        }
        let counts: Vec<(u64, u64, u64)> = chunk
            .par_iter()
            .map(|r| {
                let enc = tok
                    .encode(r.text.as_str(), false)
                    .map_err(|e| Error::Tokenize {
                        context: format!("record {}", r.id),
                        source: e,
                    })?;
                Ok((
                    r.text.split_whitespace().count() as u64,
                    r.text.chars().count() as u64,
                    enc.len() as u64,
                ))
            })
            .collect::<Result<_>>()?;
        for (w, c, t) in counts {
            f.records += 1;
            f.words += w;
            f.chars += c;
            f.tokens += t;
        }
    }
    f.tokens_per_word = f.tokens as f64 / f.words.max(1) as f64;
    f.tokens_per_char = f.tokens as f64 / f.chars.max(1) as f64;
    Ok(f)
}

/// Trains the tokenizer on the `"text"` of every record of `dir/train/*.jsonl` (the
/// output of [`crate::balance::balance`]), streaming, and writes it to `out`. Unless
/// `cfg.allow_empty_domains`, a domain without training text is an
/// [`Error::EmptyDomain`] naming the file, before any training.
pub fn train_tokenizer_from_dir(
    dir: &Path,
    cfg: &TokenizerTrainConfig,
    out: &Path,
) -> Result<TokenizerStats> {
    cfg.validate()?;
    let files = train_files(dir)?;
    let spec = |p: &Path| CorpusSpec {
        paths: vec![p.to_path_buf()],
        kind: Some(corpus::SourceKind::Jsonl),
        ..CorpusSpec::default()
    };
    if !cfg.allow_empty_domains {
        check_train_domains(dir, &files, spec)?;
    }
    let mut readers = Vec::new();
    for (_, p) in &files {
        readers.push(corpus::open(&spec(p))?);
    }
    let first_err: Mutex<Option<Error>> = Mutex::new(None);
    let count = std::sync::atomic::AtomicU64::new(0);
    let texts = readers.into_iter().flatten().map_while(|r| match r {
        Ok(rec) => {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Some(rec.text)
        }
        Err(e) => {
            if let Ok(mut g) = first_err.lock() {
                g.get_or_insert(e);
            }
            None
        }
    });
    let start = Instant::now();
    let trained = train_to_json(texts, cfg, out);
    let training_seconds = start.elapsed().as_secs_f64();
    if let Some(e) = first_err.into_inner().ok().flatten() {
        // A read error cut the stream short: write nothing.
        return Err(e);
    }
    let (json, tok, merges) = trained?;
    let texts = count.into_inner();
    if texts == 0 {
        return Err(Error::EmptyDomain {
            domain: "all".into(),
            reason: format!("{} holds no training text", dir.display()),
        });
    }
    let mut fert = BTreeMap::new();
    for (name, p) in &files {
        fert.insert(
            name.clone(),
            fertility(&tok, &spec(p), cfg.fertility_max_records)?,
        );
    }
    fsutil::write_atomic(out, json.as_bytes())?;
    let (_, sha256) = load_tokenizer(out)?;
    Ok(TokenizerStats {
        vocab_size: tok.get_vocab_size(true),
        merges,
        texts,
        training_seconds,
        sha256,
        fertility: fert,
    })
}
