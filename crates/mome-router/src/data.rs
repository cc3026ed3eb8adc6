//! Labelled training / evaluation data: JSONL `{"text","label"}` with a tokenizer,
//! token shards (label = domain), and cutting documents into passages.

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use tokenizers::Tokenizer;

use crate::error::{Result, RouterError};
use crate::router::TextNormalization;

/// A labelled text document.
#[derive(Debug, Clone, PartialEq)]
pub struct TextDoc {
    /// The text.
    pub text: String,
    /// Its label (domain).
    pub label: String,
}

/// A labelled token sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenDoc {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Its label (domain).
    pub label: String,
}

#[derive(Deserialize)]
struct Record {
    text: String,
    label: Option<String>,
}

/// Reads a JSONL file of `{"text", "label"}` (other fields ignored). Records without
/// `label` get `default_label` (e.g. the file stem) or are an error if there is none.
pub fn read_jsonl(path: &Path, default_label: Option<&str>) -> Result<Vec<TextDoc>> {
    let bytes = std::fs::read(path).map_err(|e| RouterError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let mut out = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = std::str::from_utf8(line).map_err(|e| RouterError::Line {
            name: path.display().to_string(),
            line: i as u64 + 1,
            reason: crate::lines::utf8_problem(&e),
            source: None,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let r: Record =
            serde_json::from_str(line).map_err(|e| RouterError::json_line(path, i + 1, e))?;
        let label = match (r.label, default_label) {
            (Some(l), _) => l,
            (None, Some(d)) => d.to_string(),
            (None, None) => {
                return Err(RouterError::Params(format!(
                    "{}:{}: record has no label",
                    path.display(),
                    i + 1
                )))
            }
        };
        out.push(TextDoc {
            text: r.text,
            label,
        });
    }
    Ok(out)
}

/// Reads the texts of several JSONL files (a record's label defaults to its file's
/// stem), in the order given.
pub fn read_texts(files: &[PathBuf]) -> Result<Vec<TextDoc>> {
    let mut out = Vec::new();
    for f in files {
        let stem = f.file_stem().and_then(|s| s.to_str());
        out.extend(read_jsonl(f, stem)?);
    }
    Ok(out)
}

/// The `*.jsonl` files of a folder, sorted by path.
pub fn jsonl_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| RouterError::Io {
            path: dir.to_path_buf(),
            source: e,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    Ok(files)
}

/// Token sequences of a JSON file: `{"sequences": [[ids...], ...]}`, or the samples
/// (`token_ids`) of the paper's scikit-learn export.
pub fn read_sequences(path: &Path) -> Result<Vec<Vec<u32>>> {
    let bytes = std::fs::read(path).map_err(|e| RouterError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    #[derive(Deserialize)]
    struct Sample {
        token_ids: Vec<u32>,
    }
    #[derive(Deserialize)]
    struct Inputs {
        sequences: Option<Vec<Vec<u32>>>,
        samples: Option<Vec<Sample>>,
    }
    let v: Inputs =
        serde_json::from_slice(&bytes).map_err(|e| RouterError::json(path.display(), e))?;
    match (v.sequences, v.samples) {
        (Some(s), _) => Ok(s),
        (None, Some(s)) => Ok(s.into_iter().map(|s| s.token_ids).collect()),
        (None, None) => Err(RouterError::Params(format!(
            "{}: inputs need `sequences` or `samples`",
            path.display()
        ))),
    }
}

/// Tokenises texts (normalised, no special tokens) in parallel.
pub fn tokenize(
    tok: &Tokenizer,
    norm: TextNormalization,
    docs: &[TextDoc],
) -> Result<Vec<TokenDoc>> {
    use rayon::prelude::*;
    docs.par_iter()
        .map(|d| {
            let t = norm.apply(&d.text);
            let enc = tok
                .encode(t.as_ref(), false)
                .map_err(|e| RouterError::Tokenizer(e.to_string()))?;
            Ok(TokenDoc {
                ids: enc.get_ids().to_vec(),
                label: d.label.clone(),
            })
        })
        .collect()
}

/// Reads every sequence of a shard split, labelled by domain.
pub fn read_shards(dir: &Path, split: &str) -> Result<Vec<TokenDoc>> {
    let set = mome_data::shards::ShardSet::open(dir)?;
    let mut out = Vec::new();
    for domain in set.domains(split)? {
        let reader = set.reader(split, &domain)?;
        for i in 0..reader.len() {
            let mut buf = vec![0u32; set.seq_len()];
            reader.read_into_u32(i, &mut buf)?;
            out.push(TokenDoc {
                ids: buf,
                label: domain.clone(),
            });
        }
    }
    Ok(out)
}

/// Cuts token documents into consecutive passages of `len` tokens; the last piece
/// of a document is kept when it has at least `min_len` tokens.
pub fn token_passages(docs: &[TokenDoc], len: usize, min_len: usize) -> Vec<TokenDoc> {
    let len = len.max(1);
    let mut out = Vec::new();
    for d in docs {
        for c in d.ids.chunks(len) {
            if c.len() >= min_len.max(1) {
                out.push(TokenDoc {
                    ids: c.to_vec(),
                    label: d.label.clone(),
                });
            }
        }
    }
    out
}

/// Texts encoded as `router` does (BOS/EOS dropped), each cut into passages of at
/// most `max_tokens` tokens (`None`: whole texts); passages shorter than
/// `min_tokens` are dropped (what `mome router eval` scores).
pub fn router_passages(
    router: &crate::Router,
    texts: &[TextDoc],
    min_tokens: usize,
    max_tokens: Option<usize>,
) -> Result<Vec<TokenDoc>> {
    let mut out = Vec::new();
    for t in texts {
        let ids: Vec<u32> = router
            .encode(&t.text)?
            .into_iter()
            .filter(|&i| i != 1 && i != 2)
            .collect();
        let max = max_tokens.unwrap_or(usize::MAX).max(1);
        for c in ids.chunks(max.min(ids.len().max(1))) {
            if c.len() >= min_tokens {
                out.push(TokenDoc {
                    ids: c.to_vec(),
                    label: t.label.clone(),
                });
            }
        }
    }
    Ok(out)
}

/// Short passages of real text as the method's robustness test: prose is cut into
/// runs of 8-64 words, code (labels in `code_labels`) into runs of 3-20 non-empty
/// lines, lengths drawn uniformly with a seeded RNG.
pub fn short_text_passages(docs: &[TextDoc], code_labels: &[&str], seed: u64) -> Vec<TextDoc> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    for d in docs {
        if code_labels.contains(&d.label.as_str()) {
            let lines: Vec<&str> = d.text.lines().filter(|l| !l.trim().is_empty()).collect();
            let mut i = 0;
            while i + 3 <= lines.len() {
                let n = rng.gen_range(3..=20).min(lines.len() - i);
                out.push(TextDoc {
                    text: lines[i..i + n].join("\n"),
                    label: d.label.clone(),
                });
                i += n;
            }
        } else {
            let words: Vec<&str> = d.text.split_whitespace().collect();
            let mut i = 0;
            while i + 8 <= words.len() {
                let n = rng.gen_range(8..=64).min(words.len() - i);
                out.push(TextDoc {
                    text: words[i..i + n].join(" "),
                    label: d.label.clone(),
                });
                i += n;
            }
        }
    }
    out
}

/// Deterministic stratified split of documents: `test_fraction` of each label to test.
pub fn split<T: Clone>(
    items: &[T],
    label: impl Fn(&T) -> &str,
    test_fraction: f64,
    seed: u64,
) -> (Vec<T>, Vec<T>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut labels: Vec<&str> = items.iter().map(&label).collect();
    labels.sort_unstable();
    labels.dedup();
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for l in labels {
        let mut idx: Vec<usize> = (0..items.len())
            .filter(|&i| label(&items[i]) == l)
            .collect();
        idx.shuffle(&mut rng);
        let n_test = ((idx.len() as f64) * test_fraction).round() as usize;
        for (k, i) in idx.into_iter().enumerate() {
            if k < n_test {
                test.push(items[i].clone());
            } else {
                train.push(items[i].clone());
            }
        }
    }
    (train, test)
}
