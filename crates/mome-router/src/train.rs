//! Training a router from labelled token documents.

use std::time::Instant;

use linfa::prelude::*;
use linfa::ParamGuard;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::classifier::ClassifierParams;
use crate::data::{token_passages, TokenDoc};
use crate::error::{Result, RouterError};
use crate::features::{FeatureConfig, PruneConfig, Vectorizer};
use crate::router::{Router, TextNormalization};

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
    pub balance: bool,
    /// Cap of training passages per class (dense matrices must fit in memory).
    pub max_per_class: Option<usize>,
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
            threshold: 0.5,
            text_normalization: TextNormalization::default(),
            seed: 0,
        }
    }
}

/// What happened during training.
#[derive(Debug, Clone, Serialize)]
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
    let mut cap = cfg.max_per_class.unwrap_or(usize::MAX);
    if cfg.balance {
        cap = cap.min(per_class.iter().map(|v| v.len()).min().unwrap_or(0));
    }
    let mut out = Vec::new();
    for (c, mut v) in per_class.into_iter().enumerate() {
        if v.is_empty() {
            return Err(RouterError::Train(format!(
                "label {} has no passage",
                classes[c]
            )));
        }
        v.shuffle(&mut rng);
        v.truncate(cap);
        out.extend(v);
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
    let params = params.check()?;
    let t0 = Instant::now();
    let refs: Vec<&[u32]> = passages.iter().map(|p| p.ids.as_slice()).collect();
    let vectorizer = Vectorizer::fit(cfg.features.clone(), &cfg.prune, &refs)?;
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
    Ok((router, secs))
}

/// Cuts documents into passages, balances classes and fits features + classifier.
pub fn train_router(
    docs: &[TokenDoc],
    cfg: &TrainConfig,
    params: ClassifierParams,
    tokenizer_sha256: Option<String>,
) -> Result<(Router, TrainStats)> {
    let (passages, classes) = prepare_passages(docs, cfg)?;
    let (mut router, secs) =
        fit_router(&passages, &classes, cfg, params.clone(), tokenizer_sha256)?;
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
