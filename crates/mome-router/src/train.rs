//! Training a router from labelled token documents: the building blocks
//! ([`prepare_passages`], [`fit_router`], [`train_router`]) and the job of
//! `mome router train` ([`TrainParams`] -> [`ParamGuard::check`] -> [`TrainJob`] ->
//! [`run_train`] -> [`TrainSummary`]).

use std::path::{Path, PathBuf};
use std::time::Instant;

use linfa::prelude::*;
use linfa::ParamGuard;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::calibrate::{calibration_passages, Calibration, CalibrationConfig};
use crate::classifier::{ClassifierKind, ClassifierParams};
use crate::data::{read_shards, split, token_passages, TokenDoc};
use crate::error::{Result, RouterError};
use crate::features::{
    char_feature_config, CharNgramConfig, FeatureConfig, PruneConfig, Vectorizer,
};
use crate::router::{FeatureKind, Router, TextNormalization};

/// Settings of [`train_router`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Feature extraction.
    pub features: FeatureConfig,
    /// Vocabulary pruning.
    pub prune: PruneConfig,
    /// Documents are cut into passages of each of these token lengths (mixing short
    /// and long passages is what keeps short inputs routable).
    pub passage_lengths: Vec<usize>,
    /// Down-sample every class to the size of the smallest (after `max_per_class`).
    /// When false, `max_per_class x classes` passages are drawn uniformly from the
    /// pool of all passages, so the classes keep their natural proportions.
    pub balance: bool,
    /// Cap of training passages per class (dense matrices must fit in memory).
    pub max_per_class: Option<usize>,
    /// Character n-gram features over the (decoded) text instead of token ids.
    #[serde(default)]
    pub char_ngrams: Option<CharNgramConfig>,
    /// Confidence threshold stored in the router.
    pub threshold: f64,
    /// Text normalisation recorded in the router (the caller applies it to texts).
    pub text_normalization: TextNormalization,
    /// RNG seed of the sub-sampling.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            features: FeatureConfig::default(),
            prune: PruneConfig::default(),
            passage_lengths: vec![1024],
            balance: true,
            max_per_class: Some(1500),
            char_ngrams: None,
            threshold: 0.5,
            text_normalization: TextNormalization::default(),
            seed: 0,
        }
    }
}

/// What happened during training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainStats {
    /// Training passages per class.
    pub passages_per_class: Vec<(String, usize)>,
    /// Feature columns.
    pub n_features: usize,
    /// Seconds spent fitting the vectorizer and classifier.
    pub train_seconds: f64,
}

/// Cuts, balances and returns the training passages and class names (sorted).
pub fn prepare_passages(
    docs: &[TokenDoc],
    cfg: &TrainConfig,
) -> Result<(Vec<TokenDoc>, Vec<String>)> {
    let mut classes: Vec<String> = docs.iter().map(|d| d.label.clone()).collect();
    classes.sort();
    classes.dedup();
    if classes.len() < 2 {
        return Err(RouterError::Train(format!(
            "need >= 2 labels, got {classes:?}"
        )));
    }
    if cfg.passage_lengths.is_empty() || cfg.passage_lengths.contains(&0) {
        return Err(RouterError::Params(
            "passage lengths must be non-empty and > 0".into(),
        ));
    }
    let mut per_class: Vec<Vec<TokenDoc>> = vec![Vec::new(); classes.len()];
    for &len in &cfg.passage_lengths {
        for p in token_passages(docs, len, len.min(8)) {
            let c = classes
                .binary_search(&p.label)
                .expect("label of a known doc");
            per_class[c].push(p);
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    if let Some(c) = per_class.iter().position(|v| v.is_empty()) {
        return Err(RouterError::Train(format!(
            "label {} has no passage",
            classes[c]
        )));
    }
    let mut out = Vec::new();
    if cfg.balance {
        let cap = cfg
            .max_per_class
            .unwrap_or(usize::MAX)
            .min(per_class.iter().map(|v| v.len()).min().unwrap_or(0));
        for mut v in per_class {
            v.shuffle(&mut rng);
            v.truncate(cap);
            out.extend(v);
        }
    } else {
        // Natural proportions: a uniform sample of the whole pool.
        let total = cfg
            .max_per_class
            .map_or(usize::MAX, |m| m.saturating_mul(classes.len()));
        out = per_class.into_iter().flatten().collect();
        out.shuffle(&mut rng);
        out.truncate(total);
        for (c, name) in classes.iter().enumerate() {
            if !out.iter().any(|p| &p.label == name) {
                return Err(RouterError::Train(format!(
                    "label {} has no passage in the sample (class {c})",
                    name
                )));
            }
        }
    }
    Ok((out, classes))
}

/// Trains a router on already prepared passages (see [`prepare_passages`]).
pub fn fit_router(
    passages: &[TokenDoc],
    classes: &[String],
    cfg: &TrainConfig,
    params: ClassifierParams,
    tokenizer_sha256: Option<String>,
) -> Result<(Router, f64)> {
    fit_router_with(passages, classes, cfg, params, tokenizer_sha256, None)
}

/// [`fit_router`] with a tokenizer, which character n-gram features need (passages
/// are decoded to text); the tokenizer is attached to the returned router.
pub fn fit_router_with(
    passages: &[TokenDoc],
    classes: &[String],
    cfg: &TrainConfig,
    params: ClassifierParams,
    tokenizer_sha256: Option<String>,
    tokenizer: Option<&tokenizers::Tokenizer>,
) -> Result<(Router, f64)> {
    use rayon::prelude::*;
    let params = params.check()?;
    let t0 = Instant::now();
    let bucket_docs: Vec<Vec<u32>>;
    let (refs, features): (Vec<&[u32]>, FeatureConfig) = match &cfg.char_ngrams {
        None => (
            passages.iter().map(|p| p.ids.as_slice()).collect(),
            cfg.features.clone(),
        ),
        Some(c) => {
            c.validate()?;
            let tok = tokenizer.ok_or_else(|| {
                RouterError::Params("character n-gram features need a tokenizer".into())
            })?;
            bucket_docs = passages
                .par_iter()
                .map(|p| {
                    let text = tok
                        .decode(&p.ids, true)
                        .map_err(|e| RouterError::Tokenizer(e.to_string()))?;
                    Ok(c.bucket_ids(&cfg.text_normalization.apply(&text)))
                })
                .collect::<Result<_>>()?;
            (
                bucket_docs.iter().map(Vec::as_slice).collect(),
                char_feature_config(cfg.features.sublinear_tf),
            )
        }
    };
    let vectorizer = Vectorizer::fit(features, &cfg.prune, &refs)?;
    let x = vectorizer.transform_dense(&refs);
    let y: ndarray::Array1<usize> = passages
        .iter()
        .map(|p| {
            classes
                .binary_search(&p.label)
                .map_err(|_| RouterError::Train(format!("unknown label {}", p.label)))
        })
        .collect::<Result<_>>()?;
    let ds = DatasetBase::new(x, y);
    let clf = params.fit(&ds)?;
    let secs = t0.elapsed().as_secs_f64();
    let mut router = Router::new(
        classes.to_vec(),
        vectorizer,
        clf,
        cfg.threshold,
        tokenizer_sha256,
    )?;
    router.set_text_normalization(cfg.text_normalization);
    if let Some(c) = cfg.char_ngrams {
        router.set_feature_kind(FeatureKind::CharNgrams(c))?;
    }
    if let Some(tok) = tokenizer {
        router.set_tokenizer_unchecked(tok.clone());
    }
    Ok((router, secs))
}

/// Cuts documents into passages, balances classes and fits features + classifier.
pub fn train_router(
    docs: &[TokenDoc],
    cfg: &TrainConfig,
    params: ClassifierParams,
    tokenizer_sha256: Option<String>,
) -> Result<(Router, TrainStats)> {
    train_router_with(docs, cfg, params, tokenizer_sha256, None)
}

/// [`train_router`] with a tokenizer (needed by character n-gram features).
pub fn train_router_with(
    docs: &[TokenDoc],
    cfg: &TrainConfig,
    params: ClassifierParams,
    tokenizer_sha256: Option<String>,
    tokenizer: Option<&tokenizers::Tokenizer>,
) -> Result<(Router, TrainStats)> {
    let (passages, classes) = prepare_passages(docs, cfg)?;
    let (mut router, secs) = fit_router_with(
        &passages,
        &classes,
        cfg,
        params.clone(),
        tokenizer_sha256,
        tokenizer,
    )?;
    let stats = TrainStats {
        passages_per_class: classes
            .iter()
            .map(|c| (c.clone(), passages.iter().filter(|p| &p.label == c).count()))
            .collect(),
        n_features: router.vectorizer().n_features(),
        train_seconds: secs,
    };
    router.set_provenance(serde_json::json!({
        "trained_by": "mome-router",
        "train_config": cfg,
        "classifier": params.0,
        "stats": stats,
    }));
    Ok((router, stats))
}

/// The job of `mome router train` (unchecked): data, classifier, optional
/// calibration of the threshold, output file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainParams {
    /// Training data and features.
    pub data: crate::params::DataParams,
    /// The classifier family (default hyperparameters of [`ClassifierParams::new`]).
    pub classifier: ClassifierKind,
    /// Calibrate the threshold so that this fraction (e.g. 0.99) of held-out
    /// in-domain passages are confident: the shards' `calibration_split` when there
    /// is one, otherwise `calibration_fraction` of the documents, held out from
    /// training.
    pub calibrate: Option<f64>,
    /// With `calibrate`: fit a temperature (validation NLL) first.
    pub temperature_scaling: bool,
    /// With `calibrate`: one threshold per bin of input length.
    pub by_length: bool,
    /// Shard split used by `calibrate`.
    pub calibration_split: String,
    /// Fraction of documents held out for `calibrate` when there is no shard split.
    pub calibration_fraction: f64,
    /// The router file written.
    pub out: PathBuf,
}

impl Default for TrainParams {
    fn default() -> Self {
        Self {
            data: crate::params::DataParams::default(),
            classifier: ClassifierKind::Logreg,
            calibrate: None,
            temperature_scaling: false,
            by_length: false,
            calibration_split: "validation".into(),
            calibration_fraction: 0.1,
            out: PathBuf::new(),
        }
    }
}

/// A checked [`TrainParams`]: only [`ParamGuard::check`] makes one.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainJob {
    params: TrainParams,
    data: crate::params::DataSpec,
    calibration: Option<CalibrationConfig>,
}

impl crate::params::ParamGuard for TrainParams {
    type Checked = TrainJob;
    type Error = RouterError;

    fn check(&self) -> Result<TrainJob> {
        let data = self.data.check()?;
        let calibration = match self.calibrate {
            None => None,
            Some(target) => {
                if !(target > 0.0 && target <= 1.0) {
                    return Err(RouterError::Params(format!(
                        "calibration target {target} must be in (0, 1]"
                    )));
                }
                if !(self.calibration_fraction > 0.0 && self.calibration_fraction < 1.0) {
                    return Err(RouterError::Params(
                        "--calibration-fraction must be in (0, 1)".into(),
                    ));
                }
                Some(CalibrationConfig {
                    target_confident: target,
                    fit_temperature: self.temperature_scaling,
                    by_length: self.by_length,
                })
            }
        };
        if self.out.as_os_str().is_empty() {
            return Err(RouterError::Params(
                "give the router file to write (--out)".into(),
            ));
        }
        Ok(TrainJob {
            params: self.clone(),
            data,
            calibration,
        })
    }
}

impl TrainJob {
    /// The parameters it was checked from.
    pub fn params(&self) -> &TrainParams {
        &self.params
    }
    /// The checked training data.
    pub fn data(&self) -> &crate::params::DataSpec {
        &self.data
    }
    /// The calibration, if asked for.
    pub fn calibration(&self) -> Option<&CalibrationConfig> {
        self.calibration.as_ref()
    }
    /// The router file written.
    pub fn out(&self) -> &Path {
        &self.params.out
    }
}

/// What [`run_train`] did (what `mome router train` prints).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    /// The router file written.
    pub out: PathBuf,
    /// Its classes.
    pub classes: Vec<String>,
    /// Passages per class, features, seconds.
    pub stats: TrainStats,
    /// Its threshold (after calibration).
    pub threshold: f64,
    /// Its temperature (after calibration).
    pub temperature: f64,
    /// The calibration record, when calibrated.
    pub calibration: Option<Calibration>,
}

/// Loads the documents, trains the router, calibrates it when asked for and saves it.
pub fn run_train(job: &TrainJob) -> Result<TrainSummary> {
    let p = job.params();
    let cfg = job.data().train_config();
    let loaded = job.data().load()?;
    // Calibration data: the shards' calibration split, or documents held out here.
    let (docs, calib_docs) = match job.calibration() {
        None => (loaded.docs, Vec::new()),
        Some(_) => {
            let split_docs = match job.data().shards() {
                Some(dir) => {
                    let set = mome_data::shards::ShardSet::open(dir)?;
                    if set.manifest().splits.contains_key(&p.calibration_split) {
                        Some(read_shards(dir, &p.calibration_split)?)
                    } else {
                        None
                    }
                }
                None => None,
            };
            match split_docs {
                Some(v) => (loaded.docs, v),
                None => split(
                    &loaded.docs,
                    |d| d.label.as_str(),
                    p.calibration_fraction,
                    cfg.seed,
                ),
            }
        }
    };
    let (mut router, stats) = train_router_with(
        &docs,
        cfg,
        ClassifierParams::new(p.classifier),
        loaded.tokenizer_sha256,
        loaded.tokenizer.as_ref(),
    )?;
    let calibration = match job.calibration() {
        Some(c) => {
            let passages = calibration_passages(
                &calib_docs,
                &cfg.passage_lengths,
                crate::params::CALIBRATION_PASSAGES,
                cfg.seed,
            );
            Some(crate::calibrate::calibrate(&mut router, &passages, c)?)
        }
        None => None,
    };
    router.save(job.out())?;
    Ok(TrainSummary {
        out: job.out().to_path_buf(),
        classes: router.classes().to_vec(),
        stats,
        threshold: router.threshold(),
        temperature: router.temperature(),
        calibration,
    })
}
