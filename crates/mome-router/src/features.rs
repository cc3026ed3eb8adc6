//! TF-IDF features over token ids, as scikit-learn's `TfidfVectorizer` computes them
//! on the ids written as decimal words (method.md §5).
//!
//! * Ids in [`FeatureConfig::drop_ids`] (BOS/EOS, optionally whitespace tokens) are removed.
//! * scikit-learn's default `token_pattern` `(?u)\b\w\w+\b` drops one-character words,
//!   i.e. the ids `0..=9`; [`FeatureConfig::min_id_digits`] = 2 reproduces that.
//! * tf = raw count (or `1 + ln(count)` with `sublinear_tf`), idf = `ln((1+n)/(1+df)) + 1`
//!   (smooth idf), the tf·idf vector is l2-normalised.
//!
//! Inference is sparse: a per-model lookup table maps a token id to its column, a
//! sequence becomes a sorted list of `(column, value)`; no dense vector is built.
//!
//! Optional character n-gram features ([`CharNgramConfig`], for comparison) hash every
//! n-gram of the raw text to a bucket id ("hashing trick", FNV-1a); the same TF-IDF
//! [`Vectorizer`] then runs over the bucket ids, with the same pruning and the same
//! sparse inference (no dense per-sequence vector, no stored n-gram strings).

use serde::{Deserialize, Serialize};

use crate::error::{Result, RouterError};

/// Settings of the feature extraction, stored in the router file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureConfig {
    /// Token ids removed before counting (BOS = 1 and EOS = 2 in the method).
    pub drop_ids: Vec<u32>,
    /// Ids with fewer decimal digits are ignored (2 reproduces scikit-learn's token
    /// pattern, which drops the one-character words `0`..`9`; 1 keeps every id).
    pub min_id_digits: u32,
    /// `tf = 1 + ln(count)` instead of the raw count.
    pub sublinear_tf: bool,
}

impl Default for FeatureConfig {
    fn default() -> Self {
        Self {
            drop_ids: vec![1, 2],
            min_id_digits: 2,
            sublinear_tf: false,
        }
    }
}

/// Vocabulary pruning used when fitting a [`Vectorizer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PruneConfig {
    /// Keep ids that occur in at least this many documents.
    pub min_df: usize,
    /// Keep at most this many ids (the most frequent over the corpus, as scikit-learn).
    pub max_features: Option<usize>,
}

impl Default for PruneConfig {
    fn default() -> Self {
        Self {
            min_df: 2,
            max_features: Some(20_000),
        }
    }
}

/// A sparse feature vector: sorted, unique columns with their values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SparseVec {
    /// Column indices, strictly increasing.
    pub indices: Vec<u32>,
    /// Values, same length as `indices`.
    pub values: Vec<f64>,
}

impl SparseVec {
    /// Number of stored (non-zero) entries.
    pub fn nnz(&self) -> usize {
        self.indices.len()
    }
}

const NO_COLUMN: u32 = u32::MAX;

/// Vocabulary ids (token ids or hash buckets) must be below this (the lookup table
/// has one entry per id up to the largest).
pub const MAX_ID: u32 = 1 << 24;

/// Largest idf a vectorizer accepts. scikit-learn's smooth idf is
/// `ln((1+n)/(1+df)) + 1`, in `[1, ln(1+n) + 1]` (below 46 for any corpus of fewer
/// than 2^64 documents; without smoothing `ln(n/df) + 1 >= 1` as well): an idf is
/// never 0 or negative, and far below this bound, which keeps `count * idf` and its
/// square finite for any input.
pub const MAX_IDF: f64 = 1e100;

/// A fitted TF-IDF vectorizer over token ids.
#[derive(Debug, Clone, PartialEq)]
pub struct Vectorizer {
    config: FeatureConfig,
    /// Column -> token id.
    vocabulary: Vec<u32>,
    /// Column -> idf.
    idf: Vec<f64>,
    /// Token id -> column (or `NO_COLUMN`); length = max id in the vocabulary + 1.
    lookup: Vec<u32>,
}

fn digits(id: u32) -> u32 {
    if id == 0 {
        1
    } else {
        id.ilog10() + 1
    }
}

impl Vectorizer {
    /// Builds a vectorizer from its parts (column -> token id, column -> idf):
    /// as many idf values as ids, every idf finite and in `(0, MAX_IDF]`, ids unique
    /// and below [`MAX_ID`]. Errors name the field as in the router file
    /// (`features.idf[7]`, `features.vocabulary[3]`).
    pub fn new(config: FeatureConfig, vocabulary: Vec<u32>, idf: Vec<f64>) -> Result<Self> {
        if vocabulary.len() != idf.len() {
            return Err(RouterError::Invalid(format!(
                "features.vocabulary has {} entries but features.idf has {}",
                vocabulary.len(),
                idf.len()
            )));
        }
        if let Some((i, &bad)) = idf
            .iter()
            .enumerate()
            .find(|(_, v)| !(v.is_finite() && **v > 0.0 && **v <= MAX_IDF))
        {
            return Err(RouterError::Value {
                field: format!("features.idf[{i}]"),
                value: bad,
                expected: format!("a finite idf in (0, {MAX_IDF:e}]"),
            });
        }
        if let Some((i, &id)) = vocabulary.iter().enumerate().find(|(_, id)| **id >= MAX_ID) {
            return Err(RouterError::Invalid(format!(
                "features.vocabulary[{i}] = {id} is not below {MAX_ID}"
            )));
        }
        let max = vocabulary.iter().copied().max().unwrap_or(0) as usize;
        let mut lookup = vec![NO_COLUMN; if vocabulary.is_empty() { 0 } else { max + 1 }];
        let mut seen = vec![false; lookup.len()];
        for (col, &id) in vocabulary.iter().enumerate() {
            if std::mem::replace(&mut seen[id as usize], true) {
                return Err(RouterError::Invalid(format!(
                    "features.vocabulary[{col}] = {id} appears twice in the vocabulary"
                )));
            }
            // Ids the settings exclude keep their column but never count.
            if Self::keeps(&config, id) {
                lookup[id as usize] = col as u32;
            }
        }
        Ok(Self {
            config,
            vocabulary,
            idf,
            lookup,
        })
    }

    /// Fits the vocabulary and idf on token-id documents.
    pub fn fit(config: FeatureConfig, prune: &PruneConfig, docs: &[&[u32]]) -> Result<Self> {
        if docs.is_empty() {
            return Err(RouterError::Train(
                "no documents to fit the vectorizer on".into(),
            ));
        }
        let max_id = docs
            .iter()
            .flat_map(|d| d.iter())
            .copied()
            .filter(|&id| id < MAX_ID)
            .max()
            .unwrap_or(0) as usize;
        let mut df = vec![0usize; max_id + 1];
        let mut tf = vec![0u64; max_id + 1];
        let mut seen = vec![usize::MAX; max_id + 1];
        for (i, doc) in docs.iter().enumerate() {
            for &id in doc.iter() {
                // Ids at or above MAX_ID cannot be columns: ignored, as unknown ids.
                if id >= MAX_ID || !Self::keeps(&config, id) {
                    continue;
                }
                let u = id as usize;
                tf[u] += 1;
                if seen[u] != i {
                    seen[u] = i;
                    df[u] += 1;
                }
            }
        }
        let mut kept: Vec<u32> = (0..=max_id as u32)
            .filter(|&id| df[id as usize] >= prune.min_df.max(1))
            .collect();
        if let Some(maxf) = prune.max_features {
            if kept.len() > maxf {
                // Most frequent over the corpus, ties by smaller id (deterministic).
                kept.sort_by(|&a, &b| tf[b as usize].cmp(&tf[a as usize]).then(a.cmp(&b)));
                kept.truncate(maxf);
            }
        }
        kept.sort_unstable();
        if kept.is_empty() {
            return Err(RouterError::Train(
                "vocabulary is empty after pruning".into(),
            ));
        }
        let n = docs.len() as f64;
        let idf = kept
            .iter()
            .map(|&id| ((1.0 + n) / (1.0 + df[id as usize] as f64)).ln() + 1.0)
            .collect();
        Self::new(config, kept, idf)
    }

    fn keeps(config: &FeatureConfig, id: u32) -> bool {
        digits(id) >= config.min_id_digits && !config.drop_ids.contains(&id)
    }

    /// The feature settings.
    pub fn config(&self) -> &FeatureConfig {
        &self.config
    }

    /// Column -> token id.
    pub fn vocabulary(&self) -> &[u32] {
        &self.vocabulary
    }

    /// Column -> idf.
    pub fn idf(&self) -> &[f64] {
        &self.idf
    }

    /// Number of feature columns.
    pub fn n_features(&self) -> usize {
        self.vocabulary.len()
    }

    /// The l2-normalised tf-idf vector of a token sequence (sparse). Unknown ids,
    /// dropped ids and ids out of range are ignored; an empty result is all-zero.
    pub fn transform(&self, ids: &[u32]) -> SparseVec {
        let mut cols: Vec<u32> = Vec::with_capacity(ids.len());
        for &id in ids {
            if let Some(&c) = self.lookup.get(id as usize) {
                if c != NO_COLUMN {
                    cols.push(c);
                }
            }
        }
        cols.sort_unstable();
        let mut out = SparseVec {
            indices: Vec::with_capacity(cols.len()),
            values: Vec::with_capacity(cols.len()),
        };
        let mut i = 0;
        while i < cols.len() {
            let c = cols[i];
            let mut j = i + 1;
            while j < cols.len() && cols[j] == c {
                j += 1;
            }
            let count = (j - i) as f64;
            let tf = if self.config.sublinear_tf {
                1.0 + count.ln()
            } else {
                count
            };
            out.indices.push(c);
            out.values.push(tf * self.idf[c as usize]);
            i = j;
        }
        let norm = out.values.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm > 0.0 {
            out.values.iter_mut().for_each(|v| *v /= norm);
        }
        out
    }

    /// Dense matrix of many sequences (training only: `n_docs x n_features`).
    pub fn transform_dense(&self, docs: &[&[u32]]) -> ndarray::Array2<f64> {
        let mut x = ndarray::Array2::<f64>::zeros((docs.len(), self.n_features()));
        for (r, doc) in docs.iter().enumerate() {
            let s = self.transform(doc);
            for (&c, &v) in s.indices.iter().zip(&s.values) {
                x[[r, c as usize]] = v;
            }
        }
        x
    }
}

/// Character n-gram features over raw text (scikit-learn's `char_wb` analyzer with the
/// hashing trick): the text is split at whitespace, each word is padded with one space
/// on both sides, and every run of `n_min..=n_max` characters inside a padded word is
/// hashed (FNV-1a 64 over its UTF-8 bytes) to a bucket in `0..n_buckets`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CharNgramConfig {
    /// Shortest n-gram, in characters (>= 1).
    pub n_min: usize,
    /// Longest n-gram, in characters (>= n_min, <= 8).
    pub n_max: usize,
    /// Number of hash buckets (2..=2^24).
    pub n_buckets: u32,
    /// Lower-case the text first.
    pub lowercase: bool,
}

impl Default for CharNgramConfig {
    fn default() -> Self {
        Self {
            n_min: 1,
            n_max: 4,
            n_buckets: 1 << 20,
            lowercase: true,
        }
    }
}

/// Upper bound of [`CharNgramConfig::n_buckets`].
pub const MAX_BUCKETS: u32 = MAX_ID;

impl CharNgramConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.n_min == 0 || self.n_max < self.n_min || self.n_max > 8 {
            return Err(RouterError::Params(format!(
                "char n-gram range {}..={} must satisfy 1 <= n_min <= n_max <= 8",
                self.n_min, self.n_max
            )));
        }
        if !(2..=MAX_BUCKETS).contains(&self.n_buckets) {
            return Err(RouterError::Params(format!(
                "char n-gram buckets {} not in 2..={MAX_BUCKETS}",
                self.n_buckets
            )));
        }
        Ok(())
    }

    /// The bucket ids of every n-gram of `text` (one entry per occurrence).
    pub fn bucket_ids(&self, text: &str) -> Vec<u32> {
        let lowered;
        let text = if self.lowercase {
            lowered = text.to_lowercase();
            lowered.as_str()
        } else {
            text
        };
        let n_buckets = u64::from(self.n_buckets.max(1));
        let mut out =
            Vec::with_capacity(text.len() * (self.n_max + 1 - self.n_min.min(self.n_max)));
        // Byte offsets of the character boundaries of the padded word.
        let mut bounds: Vec<usize> = Vec::new();
        let mut padded = String::new();
        for word in text.split_whitespace() {
            padded.clear();
            padded.push(' ');
            padded.push_str(word);
            padded.push(' ');
            bounds.clear();
            bounds.extend(padded.char_indices().map(|(i, _)| i));
            bounds.push(padded.len());
            let n_chars = bounds.len() - 1;
            for n in self.n_min..=self.n_max {
                if n > n_chars {
                    break;
                }
                for start in 0..=(n_chars - n) {
                    let gram = &padded.as_bytes()[bounds[start]..bounds[start + n]];
                    out.push((fnv1a(gram) % n_buckets) as u32);
                }
            }
        }
        out
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The [`FeatureConfig`] under which bucket ids are counted: nothing dropped, every id kept.
pub fn char_feature_config(sublinear_tf: bool) -> FeatureConfig {
    FeatureConfig {
        drop_ids: Vec::new(),
        min_id_digits: 1,
        sublinear_tf,
    }
}
