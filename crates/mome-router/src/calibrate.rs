//! Calibration of the confidence threshold (and optionally a temperature) on
//! held-out in-domain data, and the out-of-domain ("not confident") measurement.
//!
//! * Threshold: the largest `t` such that at least `target_confident` (default 99%)
//!   of the in-domain validation sequences have `max probability >= t`, i.e. the
//!   `1 - target` quantile of their maximum probabilities. In-domain inputs are then
//!   confident at the target rate by construction, and anything the router is less
//!   sure about than almost all of its own domains falls back.
//! * Temperature (optional): the `T` minimising the validation negative log-likelihood
//!   of `softmax(scores / T)` (temperature scaling, Guo et al. 2017), found by
//!   golden-section search on `ln T` in `[ln 0.01, ln 100]`; applied before the
//!   threshold is chosen.
//! * By length (optional): the same quantile rule within bins of the number of known
//!   features of the input (`1, 8, 16, 32, 64, 128, 256, 512` and up; a bin with
//!   fewer than [`MIN_BIN`] validation sequences is merged into its neighbour), so
//!   that long inputs, which the router separates with near certainty, are held to
//!   a higher threshold than short ones.

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::classifier::{argmax, softmax_with_temperature};
use crate::data::{token_passages, TokenDoc};
use crate::error::{Result, RouterError};
use crate::router::{check_probability, check_temperature, FeatureThreshold, Router};

/// Lower edges of the bins (number of known features) of a calibration by length.
pub const BIN_EDGES: [usize; 8] = [1, 8, 16, 32, 64, 128, 256, 512];
/// Fewest validation sequences of a bin of a calibration by length.
pub const MIN_BIN: usize = 50;

/// Settings of [`calibrate`].
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrationConfig {
    /// Fraction of in-domain validation sequences that must come out confident.
    pub target_confident: f64,
    /// Also fit a temperature (otherwise the router's temperature is kept).
    pub fit_temperature: bool,
    /// One threshold per bin of the number of known features ([`BIN_EDGES`]).
    pub by_length: bool,
}

impl Default for CalibrationConfig {
    fn default() -> Self {
        Self {
            target_confident: 0.99,
            fit_temperature: false,
            by_length: false,
        }
    }
}

/// What a calibration did; stored in the router file (version 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// `in-domain-quantile` or `in-domain-quantile+temperature`.
    pub method: String,
    /// Target fraction of confident in-domain sequences.
    pub target_confident: f64,
    /// Number of validation sequences.
    pub n: usize,
    /// Temperature in use after calibration.
    pub temperature: f64,
    /// Threshold chosen (over all lengths).
    pub threshold: f64,
    /// Thresholds by number of known features, with their validation counts (calibration by length).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bins: Vec<CalibrationBin>,
    /// Fraction of the validation sequences confident with it.
    pub confident_fraction: f64,
    /// Accuracy of the router on the validation sequences.
    pub accuracy: f64,
    /// Mean negative log-likelihood at temperature 1.
    pub nll_at_temperature_1: f64,
    /// Mean negative log-likelihood at the temperature in use.
    pub nll: f64,
    /// Threshold before calibration.
    pub previous_threshold: f64,
    /// Temperature before calibration.
    pub previous_temperature: f64,
}

impl Calibration {
    /// Checks the numbers of the record (loading a router file): fractions and
    /// thresholds in `[0, 1]`, temperatures in the router's range, NLLs finite and
    /// `>= 0`. Errors name the field (`calibration.bins[2].threshold`).
    pub fn validate(&self) -> Result<()> {
        let p = |name: &str, v: f64| check_probability(&format!("calibration.{name}"), v);
        p("target_confident", self.target_confident)?;
        p("threshold", self.threshold)?;
        p("confident_fraction", self.confident_fraction)?;
        p("accuracy", self.accuracy)?;
        p("previous_threshold", self.previous_threshold)?;
        check_temperature("calibration.temperature", self.temperature)?;
        check_temperature(
            "calibration.previous_temperature",
            self.previous_temperature,
        )?;
        for (name, v) in [
            ("nll_at_temperature_1", self.nll_at_temperature_1),
            ("nll", self.nll),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(RouterError::Value {
                    field: format!("calibration.{name}"),
                    value: v,
                    expected: "a finite number >= 0".into(),
                });
            }
        }
        for (i, b) in self.bins.iter().enumerate() {
            p(&format!("bins[{i}].threshold"), b.threshold)?;
        }
        Ok(())
    }
}

/// One bin of a calibration by length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationBin {
    /// Lower bound (inclusive) of the number of known features.
    pub min_features: usize,
    /// Validation sequences in the bin.
    pub n: usize,
    /// Threshold of the bin.
    pub threshold: f64,
}

/// The largest threshold that keeps `ceil(target * n)` of the values (descending order).
fn quantile_threshold(sorted_desc: &[f64], n: usize, target: f64) -> f64 {
    let need = ((target * n as f64).ceil() as usize).clamp(1, n.max(1));
    sorted_desc[need.min(sorted_desc.len()) - 1].clamp(0.0, 1.0)
}

/// Per-bin thresholds from `(n_features, max probability)` of in-domain sequences.
fn bin_thresholds(samples: &[(usize, f64)], target: f64) -> Vec<CalibrationBin> {
    let bin_of = |nnz: usize| BIN_EDGES.iter().rposition(|&e| e <= nnz).unwrap_or(0);
    // One group per non-empty bin, then a small group joins the group above it (the
    // more confident one: the merged threshold stays conservative for long inputs),
    // keeping its lower edge; a small last group joins the one below.
    let mut groups: Vec<(usize, Vec<f64>)> = BIN_EDGES
        .iter()
        .enumerate()
        .map(|(b, &edge)| {
            let v: Vec<f64> = samples
                .iter()
                .filter(|(nnz, _)| bin_of(*nnz) == b)
                .map(|s| s.1)
                .collect();
            (edge, v)
        })
        .filter(|(_, v)| !v.is_empty())
        .collect();
    let mut i = 0;
    while i < groups.len() {
        if groups[i].1.len() >= MIN_BIN || groups.len() == 1 {
            i += 1;
        } else if i + 1 < groups.len() {
            let (edge, v) = groups.remove(i);
            groups[i].0 = edge;
            groups[i].1.extend(v);
        } else {
            let (_, v) = groups.remove(i);
            groups[i - 1].1.extend(v);
        }
    }
    groups
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(min_features, mut v)| {
            v.sort_by(|a, b| b.total_cmp(a));
            CalibrationBin {
                min_features,
                n: v.len(),
                threshold: quantile_threshold(&v, v.len(), target),
            }
        })
        .collect()
}

/// Cuts labelled documents into validation passages of each length; every
/// (label, length) pair keeps at most `max_per_class_and_length` passages (seeded
/// shuffle), so that short passages do not outnumber long ones by their count alone.
pub fn calibration_passages(
    docs: &[TokenDoc],
    passage_lengths: &[usize],
    max_per_class_and_length: usize,
    seed: u64,
) -> Vec<TokenDoc> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    for &len in passage_lengths {
        if len == 0 {
            continue;
        }
        let mut by_label: BTreeMap<String, Vec<TokenDoc>> = BTreeMap::new();
        for p in token_passages(docs, len, len.min(8)) {
            by_label.entry(p.label.clone()).or_default().push(p);
        }
        for (_, mut v) in by_label {
            v.shuffle(&mut rng);
            v.truncate(max_per_class_and_length);
            out.extend(v);
        }
    }
    out
}

/// Labelled in-domain documents for a calibration of `router`: a split of token
/// shards (encoded with the router's tokenizer, when it records one) or labelled
/// JSONL texts encoded by the router (its tokenizer must be attached).
pub fn calibration_docs(
    router: &Router,
    source: &crate::params::DocSource,
) -> Result<Vec<TokenDoc>> {
    match source {
        crate::params::DocSource::Shards { dir, split } => {
            let sha = mome_data::shards::ShardSet::open(dir)?
                .manifest()
                .tokenizer_sha256
                .clone();
            if let Some(given) = router.tokenizer_sha256().filter(|r| *r != sha) {
                return Err(mome_data::Error::TokenizerMismatch {
                    shards: sha,
                    given: given.to_string(),
                }
                .into());
            }
            crate::data::read_shards(dir, split)
        }
        crate::params::DocSource::Jsonl(files) => crate::data::read_texts(files)?
            .iter()
            .map(|t| {
                Ok(TokenDoc {
                    ids: router.encode(&t.text)?,
                    label: t.label.clone(),
                })
            })
            .collect(),
    }
}

/// Largest NLL one sequence contributes (`-ln 1e-300`): a tree leaf that never saw
/// the true class gives probability 0 at every temperature.
const MAX_NLL: f64 = 690.775_527_898_213_7;

/// `-ln softmax(scores / t)[y]` by log-sum-exp (exact where the probability
/// underflows), at most [`MAX_NLL`].
fn nll_one(scores: &[f64], y: usize, t: f64) -> f64 {
    let inv = 1.0 / t;
    let m = scores
        .iter()
        .map(|s| s * inv)
        .fold(f64::NEG_INFINITY, f64::max);
    if !m.is_finite() {
        return MAX_NLL;
    }
    let lse = m + scores.iter().map(|s| (s * inv - m).exp()).sum::<f64>().ln();
    let nll = lse - scores[y] * inv;
    if nll.is_nan() {
        MAX_NLL
    } else {
        nll.clamp(0.0, MAX_NLL)
    }
}

/// Mean NLL over `(log-scores, class)` pairs at temperature `t`.
fn mean_nll(raw: &[(Vec<f64>, usize)], t: f64) -> f64 {
    let s: f64 = raw.par_iter().map(|(p, y)| nll_one(p, *y, t)).sum();
    s / raw.len().max(1) as f64
}

/// Sets the router's threshold (and temperature, if asked) from labelled in-domain
/// validation sequences, records the [`Calibration`] in the router and returns it.
pub fn calibrate(
    router: &mut Router,
    docs: &[TokenDoc],
    cfg: &CalibrationConfig,
) -> Result<Calibration> {
    if !(cfg.target_confident > 0.0 && cfg.target_confident <= 1.0) {
        return Err(RouterError::Params(format!(
            "target confident fraction {} is not in (0, 1]",
            cfg.target_confident
        )));
    }
    if docs.is_empty() {
        return Err(RouterError::Params(
            "no validation sequence to calibrate on".into(),
        ));
    }
    let mut ys = Vec::with_capacity(docs.len());
    for d in docs {
        let y = router
            .classes()
            .iter()
            .position(|c| *c == d.label)
            .ok_or_else(|| {
                RouterError::Params(format!(
                    "validation label {:?} is not a class of the router {:?}",
                    d.label,
                    router.classes()
                ))
            })?;
        ys.push(y);
    }
    // Log-scores (the temperature divides them, as in `Router::probabilities`) and
    // whether the input had any known feature.
    let k = router.classes().len();
    let raw: Vec<(Vec<f64>, usize, usize)> = docs
        .par_iter()
        .zip(ys.par_iter())
        .map(|(d, &y)| {
            let x = router.features(&d.ids);
            let mut s = vec![0.0; k];
            router.classifier().log_scores_sparse(&x, &mut s);
            (s, y, x.nnz())
        })
        .collect();
    let pairs: Vec<(Vec<f64>, usize)> = raw.iter().map(|(p, y, _)| (p.clone(), *y)).collect();
    let previous_threshold = router.threshold();
    let previous_temperature = router.temperature();
    let nll1 = mean_nll(&pairs, 1.0);
    let temperature = if cfg.fit_temperature {
        // Golden-section search of the (unimodal in practice) NLL over ln T.
        let g = (5f64.sqrt() - 1.0) / 2.0;
        let (mut a, mut b) = (0.01f64.ln(), 100f64.ln());
        let mut c = b - g * (b - a);
        let mut d = a + g * (b - a);
        let (mut fc, mut fd) = (mean_nll(&pairs, c.exp()), mean_nll(&pairs, d.exp()));
        for _ in 0..60 {
            if fc <= fd {
                b = d;
                d = c;
                fd = fc;
                c = b - g * (b - a);
                fc = mean_nll(&pairs, c.exp());
            } else {
                a = c;
                c = d;
                fc = fd;
                d = a + g * (b - a);
                fd = mean_nll(&pairs, d.exp());
            }
        }
        let t = ((a + b) / 2.0).exp();
        // Never worse than temperature 1.
        if mean_nll(&pairs, t) <= nll1 {
            t
        } else {
            1.0
        }
    } else {
        previous_temperature
    };
    let n = raw.len();
    let mut correct = 0usize;
    let mut maxp: Vec<f64> = Vec::with_capacity(n);
    let mut samples: Vec<(usize, f64)> = Vec::with_capacity(n);
    for (s, y, nnz) in &raw {
        // Exactly what `Router::probabilities` computes at this temperature.
        let mut q = s.clone();
        softmax_with_temperature(&mut q, temperature);
        let i = argmax(&q);
        correct += usize::from(i == *y);
        if *nnz > 0 {
            maxp.push(q[i]);
            samples.push((*nnz, q[i]));
        }
    }
    maxp.sort_by(|a, b| b.total_cmp(a));
    // Sequences without any known feature are never confident: they count in n only.
    if maxp.is_empty() {
        return Err(RouterError::Params(
            "no validation sequence has a known feature".into(),
        ));
    }
    let threshold = quantile_threshold(&maxp, n, cfg.target_confident);
    router.set_temperature(temperature)?;
    router.set_threshold(threshold)?;
    let bins = if cfg.by_length {
        let bins = bin_thresholds(&samples, cfg.target_confident);
        router.set_thresholds_by_features(
            bins.iter()
                .map(|b| FeatureThreshold {
                    min_features: b.min_features,
                    threshold: b.threshold,
                })
                .collect(),
        )?;
        bins
    } else {
        Vec::new()
    };
    let confident = samples
        .iter()
        .filter(|(nnz, p)| *p >= router.threshold_for(*nnz))
        .count();
    let cal = Calibration {
        method: format!(
            "in-domain-quantile{}{}",
            if cfg.by_length { "-by-length" } else { "" },
            if cfg.fit_temperature {
                "+temperature"
            } else {
                ""
            }
        ),
        target_confident: cfg.target_confident,
        n,
        temperature,
        threshold,
        bins,
        confident_fraction: confident as f64 / n as f64,
        accuracy: correct as f64 / n as f64,
        nll_at_temperature_1: nll1,
        nll: mean_nll(&pairs, temperature),
        previous_threshold,
        previous_temperature,
    };
    router.set_calibration(Some(cal.clone()));
    Ok(cal)
}

/// How a router treats inputs from outside its classes (e.g. another language).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OodReport {
    /// Number of inputs.
    pub n: usize,
    /// Inputs routed with `confident == false`.
    pub not_confident: usize,
    /// `not_confident / n` (the higher the better for out-of-class text).
    pub not_confident_fraction: f64,
    /// Predicted class counts of the confident inputs.
    pub confident_predictions: BTreeMap<String, usize>,
    /// Predicted class counts of all inputs.
    pub predictions: BTreeMap<String, usize>,
    /// Mean maximum probability.
    pub mean_max_probability: f64,
    /// Threshold of the router.
    pub threshold: f64,
    /// Temperature of the router.
    pub temperature: f64,
}

/// Routes out-of-class token sequences and counts how many are (rightly) not confident.
pub fn ood_report(router: &Router, docs: &[TokenDoc]) -> OodReport {
    let seqs: Vec<&[u32]> = docs.iter().map(|d| d.ids.as_slice()).collect();
    let routed = router.route_batch(&seqs);
    let mut confident_predictions = BTreeMap::new();
    let mut predictions = BTreeMap::new();
    let mut not_confident = 0;
    let mut sum_max = 0.0;
    for r in &routed {
        *predictions.entry(r.label.clone()).or_insert(0) += 1;
        if r.confident {
            *confident_predictions.entry(r.label.clone()).or_insert(0) += 1;
        } else {
            not_confident += 1;
        }
        sum_max += r.probabilities[r.index];
    }
    let n = routed.len();
    OodReport {
        n,
        not_confident,
        not_confident_fraction: if n == 0 {
            0.0
        } else {
            not_confident as f64 / n as f64
        },
        confident_predictions,
        predictions,
        mean_max_probability: if n == 0 { 0.0 } else { sum_max / n as f64 },
        threshold: router.threshold(),
        temperature: router.temperature(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_split_by_feature_count_and_merge_small_ones() {
        let mut samples = Vec::new();
        // 100 short inputs (2 features), max probability 0.30 .. 0.795.
        for i in 0..100 {
            samples.push((2, 0.3 + 0.005 * i as f64));
        }
        // 100 long inputs (300 features), 0.95 .. 0.9995; 10 longer ones (600) join them.
        for i in 0..100 {
            samples.push((300, 0.95 + 0.0005 * i as f64));
        }
        for _ in 0..10 {
            samples.push((600, 0.5));
        }
        // 20 inputs of 20 features: too few, merged into the bin above (from 16 up).
        for _ in 0..20 {
            samples.push((20, 0.9));
        }
        let bins = bin_thresholds(&samples, 0.9);
        assert_eq!(bins.len(), 2, "{bins:?}");
        assert_eq!((bins[0].min_features, bins[0].n), (1, 100));
        assert_eq!((bins[1].min_features, bins[1].n), (16, 130));
        // 90% of 100 = 90 kept: the 90th largest of the first bin.
        let mut v: Vec<f64> = samples.iter().filter(|s| s.0 < 16).map(|s| s.1).collect();
        v.sort_by(|a, b| b.total_cmp(a));
        assert_eq!(bins[0].threshold, v[89]);
        // 90% of 130 = 117 kept: the 117th largest of the second bin.
        let mut w: Vec<f64> = samples.iter().filter(|s| s.0 >= 16).map(|s| s.1).collect();
        w.sort_by(|a, b| b.total_cmp(a));
        assert_eq!(bins[1].threshold, w[116]);
        assert!(bins[1].threshold > bins[0].threshold);
        // Too few samples overall: one bin.
        assert_eq!(bin_thresholds(&samples[..30], 0.9).len(), 1);
        assert!(bin_thresholds(&[], 0.9).is_empty());
    }
}
