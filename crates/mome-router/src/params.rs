//! The training data of a router job (`mome router train`, `mome router compare`,
//! the pipeline's router stage), written once as unchecked [`DataParams`] (what a
//! TOML file, the CLI or a caller fills in; every default is in its [`Default`]) and
//! validated by [`ParamGuard::check`] into a [`DataSpec`]: where the documents come
//! from, the tokenizer and the [`TrainConfig`] of the router.
//!
//! ```
//! use mome_router::params::{DataParams, ParamGuard};
//!
//! let p = DataParams { jsonl: vec!["en.jsonl".into(), "py.jsonl".into()], ..DataParams::default() };
//! // JSONL texts need a tokenizer: refused before any file is read.
//! assert!(p.check().is_err());
//! let spec = DataParams { tokenizer: Some("tokenizer.json".into()), ..p }.check().unwrap();
//! assert_eq!(spec.train_config().passage_lengths, vec![16, 32, 64, 128, 1024]);
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

pub use mome_data::params::ParamGuard;

use crate::data::{self, TextDoc, TokenDoc};
use crate::error::{Result, RouterError};
use crate::features::{CharNgramConfig, PruneConfig};
use crate::router::TextNormalization;
use crate::train::TrainConfig;

/// Passage lengths (tokens) the training documents are cut into, by default.
pub const PASSAGE_LENGTHS: [usize; 5] = [16, 32, 64, 128, 1024];
/// Max validation passages per (class, passage length) of a calibration, by default.
pub const CALIBRATION_PASSAGES: usize = 250;

/// What the classifier sees.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureSource {
    /// TF-IDF over token ids (the method's).
    #[default]
    Tokens,
    /// TF-IDF over hashed character n-grams of the (decoded) text.
    Chars,
}

impl FeatureSource {
    /// `tokens` or `chars`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tokens => "tokens",
            Self::Chars => "chars",
        }
    }
}

impl std::fmt::Display for FeatureSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for FeatureSource {
    type Err = RouterError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tokens" => Ok(Self::Tokens),
            "chars" => Ok(Self::Chars),
            other => Err(RouterError::Params(format!(
                "features must be tokens or chars, got {other:?}"
            ))),
        }
    }
}

/// Training data and feature settings of a router job (unchecked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataParams {
    /// Token shard folder (labels = domains); exclusive with `jsonl`.
    pub shards: Option<PathBuf>,
    /// Shard split to train on.
    pub split: String,
    /// Labelled JSONL files (`text`, `label`; missing label = file stem).
    pub jsonl: Vec<PathBuf>,
    /// Tokenizer (required with `jsonl`; its hash is recorded in the router).
    pub tokenizer: Option<PathBuf>,
    /// Passage lengths in tokens.
    pub passage_lengths: Vec<usize>,
    /// Collapse whitespace runs before tokenising (texts only).
    pub collapse_whitespace: bool,
    /// Sublinear tf (1 + ln count).
    pub sublinear_tf: bool,
    /// Down-sample every class to the smallest (false: natural proportions).
    pub balance: bool,
    /// Max training passages per class (unbalanced: this times the number of classes).
    pub max_per_class: usize,
    /// Minimum document frequency of a kept feature.
    pub min_df: usize,
    /// Maximum number of feature columns (0: no limit).
    pub max_features: usize,
    /// Token ids or character n-grams.
    pub features: FeatureSource,
    /// Character n-gram lengths `[MIN, MAX]` (with `features = chars`).
    pub char_ngram_range: Vec<usize>,
    /// Hash buckets of the character n-grams (with `features = chars`).
    pub char_buckets: u32,
    /// Confidence threshold stored in the router.
    pub threshold: f64,
    /// RNG seed (splits, sub-sampling, short passages).
    pub seed: u64,
}

impl Default for DataParams {
    fn default() -> Self {
        let train = TrainConfig::default();
        let prune = PruneConfig::default();
        let chars = CharNgramConfig::default();
        Self {
            shards: None,
            split: "train".into(),
            jsonl: Vec::new(),
            tokenizer: None,
            passage_lengths: PASSAGE_LENGTHS.to_vec(),
            collapse_whitespace: train.text_normalization.collapse_whitespace,
            sublinear_tf: train.features.sublinear_tf,
            balance: train.balance,
            max_per_class: train.max_per_class.unwrap_or(usize::MAX),
            min_df: prune.min_df,
            max_features: prune.max_features.unwrap_or(0),
            features: FeatureSource::default(),
            char_ngram_range: vec![chars.n_min, chars.n_max],
            char_buckets: chars.n_buckets,
            threshold: train.threshold,
            seed: train.seed,
        }
    }
}

/// Where the training documents come from.
#[derive(Debug, Clone, PartialEq)]
pub enum DocSource {
    /// A split of a token shard folder.
    Shards {
        /// The shard folder.
        dir: PathBuf,
        /// The split.
        split: String,
    },
    /// Labelled JSONL files, tokenised with the tokenizer.
    Jsonl(Vec<PathBuf>),
}

/// Checked [`DataParams`]: only [`ParamGuard::check`] makes one.
#[derive(Debug, Clone, PartialEq)]
pub struct DataSpec {
    source: DocSource,
    tokenizer: Option<PathBuf>,
    config: TrainConfig,
}

impl ParamGuard for DataParams {
    type Checked = DataSpec;
    type Error = RouterError;

    fn check(&self) -> Result<DataSpec> {
        let bad = |m: String| Err(RouterError::Params(m));
        let source = match (&self.shards, self.jsonl.is_empty()) {
            (Some(_), false) => return bad("give shards or jsonl files, not both".into()),
            (Some(dir), true) => DocSource::Shards {
                dir: dir.clone(),
                split: self.split.clone(),
            },
            (None, false) if self.tokenizer.is_none() => {
                return bad("--jsonl needs --tokenizer".into())
            }
            (None, false) => DocSource::Jsonl(self.jsonl.clone()),
            (None, true) => return bad("give --shards DIR or --jsonl FILE".into()),
        };
        if self.passage_lengths.is_empty() || self.passage_lengths.contains(&0) {
            return bad(format!(
                "passage lengths must be non-empty and > 0, got {:?}",
                self.passage_lengths
            ));
        }
        if self.max_per_class == 0 {
            return bad("max_per_class must be > 0".into());
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            return bad(format!("threshold {} is not in [0, 1]", self.threshold));
        }
        let char_ngrams = match self.features {
            FeatureSource::Tokens => None,
            FeatureSource::Chars => {
                let [n_min, n_max] = self.char_ngram_range[..] else {
                    return bad("--char-ngram-range needs MIN,MAX".into());
                };
                let c = CharNgramConfig {
                    n_min,
                    n_max,
                    n_buckets: self.char_buckets,
                    ..CharNgramConfig::default()
                };
                c.validate()?;
                Some(c)
            }
        };
        let mut config = TrainConfig::default();
        config.features.sublinear_tf = self.sublinear_tf;
        config.prune.min_df = self.min_df;
        config.prune.max_features = (self.max_features > 0).then_some(self.max_features);
        config.char_ngrams = char_ngrams;
        config.passage_lengths = self.passage_lengths.clone();
        config.balance = self.balance;
        config.max_per_class = Some(self.max_per_class);
        config.threshold = self.threshold;
        config.text_normalization = TextNormalization {
            collapse_whitespace: self.collapse_whitespace,
        };
        config.seed = self.seed;
        Ok(DataSpec {
            source,
            tokenizer: self.tokenizer.clone(),
            config,
        })
    }
}

/// Training documents as a job loads them.
#[derive(Debug, Clone)]
pub struct LoadedDocs {
    /// The documents as token ids (JSONL texts: tokenised after the normalisation).
    pub docs: Vec<TokenDoc>,
    /// The texts, in the same order, when the source is JSONL.
    pub texts: Option<Vec<TextDoc>>,
    /// The tokenizer's sha256 (the shards' manifest, or the tokenizer file).
    pub tokenizer_sha256: Option<String>,
    /// The tokenizer, when one was given.
    pub tokenizer: Option<Tokenizer>,
}

impl DataSpec {
    /// Where the documents come from.
    pub fn source(&self) -> &DocSource {
        &self.source
    }
    /// The tokenizer file, if any.
    pub fn tokenizer(&self) -> Option<&PathBuf> {
        self.tokenizer.as_ref()
    }
    /// The router's training settings.
    pub fn train_config(&self) -> &TrainConfig {
        &self.config
    }
    /// The shard folder, when the documents come from shards.
    pub fn shards(&self) -> Option<&PathBuf> {
        match &self.source {
            DocSource::Shards { dir, .. } => Some(dir),
            DocSource::Jsonl(_) => None,
        }
    }

    /// Reads the documents (and the tokenizer); a tokenizer given with shards must be
    /// the one the shards were encoded with.
    pub fn load(&self) -> Result<LoadedDocs> {
        let tok = match &self.tokenizer {
            Some(p) => Some(mome_data::tokenizer::load_tokenizer(p)?),
            None => None,
        };
        match &self.source {
            DocSource::Shards { dir, split } => {
                let docs = data::read_shards(dir, split)?;
                let sha = mome_data::shards::ShardSet::open(dir)?
                    .manifest()
                    .tokenizer_sha256
                    .clone();
                if let Some((_, given)) = &tok {
                    if *given != sha {
                        return Err(mome_data::Error::TokenizerMismatch {
                            shards: sha,
                            given: given.clone(),
                        }
                        .into());
                    }
                }
                Ok(LoadedDocs {
                    docs,
                    texts: None,
                    tokenizer_sha256: Some(sha),
                    tokenizer: tok.map(|t| t.0),
                })
            }
            DocSource::Jsonl(files) => {
                let Some((tok, sha)) = tok else {
                    return Err(RouterError::Params("--jsonl needs --tokenizer".into()));
                };
                let texts = data::read_texts(files)?;
                let docs = data::tokenize(&tok, self.config.text_normalization, &texts)?;
                Ok(LoadedDocs {
                    docs,
                    texts: Some(texts),
                    tokenizer_sha256: Some(sha),
                    tokenizer: Some(tok),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_cli_defaults_and_check() {
        let d = DataParams::default();
        assert_eq!(d.passage_lengths, PASSAGE_LENGTHS);
        assert_eq!(
            (d.max_per_class, d.min_df, d.max_features),
            (1500, 2, 20_000)
        );
        assert_eq!(
            (d.char_ngram_range.as_slice(), d.char_buckets),
            (&[1, 4][..], 1 << 20)
        );
        assert_eq!((d.threshold, d.seed, d.balance), (0.5, 0, true));
        // Deserialising nothing gives the defaults.
        let empty: DataParams = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, d);
        let unknown = serde_json::from_str::<DataParams>(r#"{"shard": "x"}"#);
        assert!(unknown.is_err(), "unknown fields are refused");
        let spec = DataParams {
            shards: Some("s".into()),
            max_features: 0,
            ..d.clone()
        }
        .check()
        .unwrap();
        assert_eq!(spec.train_config().prune.max_features, None);
        assert_eq!(spec.train_config().max_per_class, Some(1500));
        assert_eq!(spec.shards(), Some(&PathBuf::from("s")));
    }

    #[test]
    fn bad_data_params_are_refused() {
        let shards = DataParams {
            shards: Some("s".into()),
            ..DataParams::default()
        };
        let err = |p: DataParams| match p.check() {
            Err(RouterError::Params(m)) => m,
            other => panic!("expected a Params error, got {other:?}"),
        };
        assert!(err(DataParams::default()).contains("--shards"));
        assert!(err(DataParams {
            jsonl: vec!["a.jsonl".into()],
            ..shards.clone()
        })
        .contains("not both"));
        for lens in [vec![], vec![16, 0]] {
            err(DataParams {
                passage_lengths: lens,
                ..shards.clone()
            });
        }
        err(DataParams {
            threshold: 1.5,
            ..shards.clone()
        });
        err(DataParams {
            max_per_class: 0,
            ..shards.clone()
        });
        let chars = DataParams {
            features: FeatureSource::Chars,
            ..shards.clone()
        };
        let c = chars.check().unwrap();
        assert_eq!(
            c.train_config().char_ngrams,
            Some(CharNgramConfig::default())
        );
        assert!(err(DataParams {
            char_ngram_range: vec![3],
            ..chars.clone()
        })
        .contains("MIN,MAX"));
        err(DataParams {
            char_ngram_range: vec![4, 2],
            ..chars.clone()
        });
        // Without char features the range is not used, so not checked.
        DataParams {
            char_ngram_range: vec![3],
            ..shards
        }
        .check()
        .unwrap();
        assert_eq!(
            "chars".parse::<FeatureSource>().unwrap(),
            FeatureSource::Chars
        );
        assert!("words".parse::<FeatureSource>().is_err());
    }
}
