//! Out-of-class text (e.g. Spanish and Italian for an en/fr/de/py router) in the two
//! regimes of the held-out evaluation, short passages and 1024-token passages, and
//! how often the router rightly answers "not confident" ([`OodReport`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::calibrate::{ood_report, OodReport};
use crate::data::{short_text_passages, TextDoc, TokenDoc};
use crate::error::Result;
use crate::router::Router;

/// Length of the long passages, in tokens (the paper's sequences).
pub const LONG_PASSAGE: usize = 1024;

/// Passages of out-of-class texts, encoded as the router does.
#[derive(Debug, Clone, PartialEq)]
pub struct OodSets {
    /// Short passages: 8-64 words (or 3-20 lines of the code labels).
    pub short: Vec<TokenDoc>,
    /// Consecutive full 1024-token passages (BOS/EOS dropped).
    pub long: Vec<TokenDoc>,
}

/// Cuts `texts` into the short and 1024-token passages of the held-out regimes,
/// tokenised by `router` (its tokenizer and text normalisation).
pub fn ood_passages(
    router: &Router,
    texts: &[TextDoc],
    code_labels: &[&str],
    seed: u64,
) -> Result<OodSets> {
    let short_texts = short_text_passages(texts, code_labels, seed);
    let mut short = Vec::with_capacity(short_texts.len());
    for t in &short_texts {
        short.push(TokenDoc {
            ids: router.encode(&t.text)?,
            label: t.label.clone(),
        });
    }
    let mut long = Vec::new();
    for t in texts {
        let ids: Vec<u32> = router
            .encode(&t.text)?
            .into_iter()
            .filter(|&i| i != 1 && i != 2)
            .collect();
        long.extend(ids.chunks_exact(LONG_PASSAGE).map(|c| TokenDoc {
            ids: c.to_vec(),
            label: t.label.clone(),
        }));
    }
    Ok(OodSets { short, long })
}

/// [`ood_report`] over all documents (`"all"`) and per label.
pub fn ood_by_label(router: &Router, docs: &[TokenDoc]) -> BTreeMap<String, OodReport> {
    let mut out = BTreeMap::new();
    out.insert("all".to_string(), ood_report(router, docs));
    let mut labels: Vec<&str> = docs.iter().map(|d| d.label.as_str()).collect();
    labels.sort_unstable();
    labels.dedup();
    for l in labels {
        let sub: Vec<TokenDoc> = docs.iter().filter(|d| d.label == l).cloned().collect();
        out.insert(l.to_string(), ood_report(router, &sub));
    }
    out
}

/// What `mome router ood` reports: the router's settings and, per regime, the
/// [`OodReport`] over all inputs and per label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OodSummary {
    /// Class names of the router.
    pub classes: Vec<String>,
    /// Its threshold (after any override).
    pub threshold: f64,
    /// Its thresholds by number of known features.
    pub thresholds_by_features: Vec<crate::router::FeatureThreshold>,
    /// Its temperature.
    pub temperature: f64,
    /// Whether it carries a calibration record.
    pub calibrated: bool,
    /// Short passages (8-64 words / 3-20 code lines): `"all"` and per label.
    pub short: BTreeMap<String, OodReport>,
    /// 1024-token passages: `"all"` and per label.
    pub long_1024: BTreeMap<String, OodReport>,
}

/// Routes the out-of-class `texts` in both regimes (see [`ood_passages`]).
pub fn ood_summary(
    router: &Router,
    texts: &[TextDoc],
    code_labels: &[&str],
    seed: u64,
) -> Result<OodSummary> {
    let sets = ood_passages(router, texts, code_labels, seed)?;
    Ok(OodSummary {
        classes: router.classes().to_vec(),
        threshold: router.threshold(),
        thresholds_by_features: router.thresholds_by_features().to_vec(),
        temperature: router.temperature(),
        calibrated: router.calibration().is_some(),
        short: ood_by_label(router, &sets.short),
        long_1024: ood_by_label(router, &sets.long),
    })
}
