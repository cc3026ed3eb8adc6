//! Import of the paper's scikit-learn router (`reference_router_params.json`):
//! `TfidfVectorizer` over ids written as decimal words + multinomial `LogisticRegression`.

use std::path::Path;

use serde::Deserialize;

use crate::classifier::{check_weight, Classifier, LinearModel, ModelBody, ValidClassifierParams};
use crate::error::{Result, RouterError};
use crate::features::{FeatureConfig, Vectorizer, MAX_IDF};
use crate::router::Router;

/// A sample of the parameter file: token ids and the probabilities scikit-learn gave them.
#[derive(Debug, Clone, Deserialize)]
pub struct SklearnSample {
    /// Kind of sample (`text`, `random`, ...).
    pub kind: String,
    /// Input token ids.
    pub token_ids: Vec<u32>,
    /// `predict_proba`, class order.
    pub probabilities: Vec<f64>,
    /// Predicted class name.
    pub predicted: String,
}

#[derive(Deserialize)]
struct Params {
    tokenizer_json_sha256: Option<String>,
    input_to_string: InputToString,
    tfidf: Tfidf,
    logistic_regression: LogReg,
    #[serde(default)]
    samples: Vec<SklearnSample>,
}
#[derive(Deserialize)]
struct InputToString {
    drop_ids: Vec<u32>,
    join_with: String,
}
#[derive(Deserialize)]
struct Tfidf {
    analyzer: String,
    token_pattern: String,
    norm: Option<String>,
    use_idf: bool,
    smooth_idf: bool,
    sublinear_tf: bool,
    ngram_range: Vec<usize>,
    binary: bool,
    vocabulary: std::collections::BTreeMap<String, usize>,
    idf: Vec<f64>,
}
#[derive(Deserialize)]
struct LogReg {
    class_names: Vec<String>,
    coef: Vec<Vec<f64>>,
    intercept: Vec<f64>,
    #[serde(rename = "C")]
    c: f64,
    max_iter: u64,
    effective_multi_class: String,
}

fn unsupported(what: &str) -> RouterError {
    RouterError::Invalid(format!("scikit-learn router: unsupported setting: {what}"))
}

/// Reads a scikit-learn router export and returns the equivalent mome router and
/// the samples it carries. The export is checked as a router file is
/// ([`Router::from_json`]): `logistic_regression.coef` is `classes x idf.len()`,
/// one intercept per class, coefficients and intercepts finite within
/// ±[`MAX_ABS_WEIGHT`](crate::classifier::MAX_ABS_WEIGHT), every idf finite in
/// `(0, MAX_IDF]`, vocabulary columns unique and covering the idf. Every error names
/// the file (and the field, e.g. `logistic_regression.coef[1][0]`).
pub fn import_sklearn(path: &Path) -> Result<(Router, Vec<SklearnSample>)> {
    let bytes = std::fs::read(path).map_err(|e| RouterError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    import_bytes(&bytes, path).map_err(|e| e.in_file(path))
}

/// Checks the numbers and shapes of an export, naming its fields.
fn check_params(p: &Params) -> Result<()> {
    let lr = &p.logistic_regression;
    let k = lr.class_names.len();
    let n = p.tfidf.idf.len();
    if let Some((i, &v)) = p
        .tfidf
        .idf
        .iter()
        .enumerate()
        .find(|(_, v)| !(v.is_finite() && **v > 0.0 && **v <= MAX_IDF))
    {
        return Err(RouterError::Value {
            field: format!("tfidf.idf[{i}]"),
            value: v,
            expected: format!("a finite idf in (0, {MAX_IDF:e}]"),
        });
    }
    if lr.coef.len() != k || lr.intercept.len() != k {
        return Err(RouterError::Invalid(format!(
            "logistic_regression: {k} class_names, but coef has {} rows and intercept {} values",
            lr.coef.len(),
            lr.intercept.len()
        )));
    }
    for (c, row) in lr.coef.iter().enumerate() {
        if row.len() != n {
            return Err(RouterError::Invalid(format!(
                "logistic_regression.coef[{c}] has {} columns, tfidf.idf has {n}",
                row.len()
            )));
        }
        for (j, &w) in row.iter().enumerate() {
            check_weight(w, || format!("logistic_regression.coef[{c}][{j}]"))?;
        }
    }
    for (c, &b) in lr.intercept.iter().enumerate() {
        check_weight(b, || format!("logistic_regression.intercept[{c}]"))?;
    }
    if !(lr.c.is_finite() && lr.c > 0.0) {
        return Err(RouterError::Value {
            field: "logistic_regression.C".into(),
            value: lr.c,
            expected: "a finite number > 0".into(),
        });
    }
    Ok(())
}

fn import_bytes(bytes: &[u8], path: &Path) -> Result<(Router, Vec<SklearnSample>)> {
    let p: Params =
        serde_json::from_slice(bytes).map_err(|e| RouterError::json(path.display(), e))?;
    check_params(&p)?;
    let t = &p.tfidf;
    if t.analyzer != "word" || t.ngram_range != [1, 1] || t.binary || !t.use_idf || !t.smooth_idf {
        return Err(unsupported(
            "analyzer/ngram_range/binary/use_idf/smooth_idf",
        ));
    }
    if t.norm.as_deref() != Some("l2") {
        return Err(unsupported("norm other than l2"));
    }
    // The default pattern keeps words of >= 2 word characters: ids 0..=9 are dropped.
    let min_id_digits = match t.token_pattern.as_str() {
        r"(?u)\b\w\w+\b" => 2,
        r"(?u)\b\w+\b" => 1,
        other => return Err(unsupported(&format!("token_pattern {other:?}"))),
    };
    if p.input_to_string.join_with.trim() != "" {
        return Err(unsupported("ids joined with a non-space separator"));
    }
    if p.logistic_regression.effective_multi_class != "multinomial" {
        return Err(unsupported("non-multinomial logistic regression"));
    }
    let n = t.idf.len();
    let mut vocab = vec![u32::MAX; n];
    for (word, &col) in &t.vocabulary {
        let id: u32 = word
            .parse()
            .ok()
            .filter(|id: &u32| id.to_string() == *word)
            .ok_or_else(|| {
                RouterError::Invalid(format!("vocabulary word {word:?} is not a token id"))
            })?;
        if col >= n || vocab[col] != u32::MAX {
            return Err(RouterError::Invalid(format!(
                "tfidf.vocabulary[{word:?}] = {col}: column out of range (tfidf.idf has {n}) or repeated"
            )));
        }
        vocab[col] = id;
    }
    if let Some(col) = vocab.iter().position(|&id| id == u32::MAX) {
        return Err(RouterError::Invalid(format!(
            "tfidf.vocabulary has no word for column {col} of tfidf.idf"
        )));
    }
    let config = FeatureConfig {
        drop_ids: p.input_to_string.drop_ids.clone(),
        min_id_digits,
        sublinear_tf: t.sublinear_tf,
    };
    let vectorizer = Vectorizer::new(config, vocab, t.idf.clone())?;
    let lr = &p.logistic_regression;
    let linear = LinearModel::from_coef(&lr.coef, &lr.intercept)?;
    let classifier = Classifier {
        params: ValidClassifierParams::Logreg {
            c: lr.c,
            max_iter: lr.max_iter,
            tol: 1e-4,
        },
        n_classes: lr.class_names.len(),
        n_features: n,
        model: ModelBody::Linear(linear),
    };
    let mut router = Router::new(
        lr.class_names.clone(),
        vectorizer,
        classifier,
        0.5,
        p.tokenizer_json_sha256.clone(),
    )?;
    router.set_provenance(serde_json::json!({
        "imported_from": "scikit-learn TfidfVectorizer + LogisticRegression",
        "source_file": path.display().to_string(),
    }));
    Ok((router, p.samples))
}

/// Largest `|p_mome - p_sklearn|` of the router on the samples of the export.
pub fn max_abs_error(router: &Router, samples: &[SklearnSample]) -> f64 {
    let mut max_err = 0.0f64;
    for s in samples {
        for (x, y) in router
            .route(&s.token_ids)
            .probabilities
            .iter()
            .zip(&s.probabilities)
        {
            max_err = max_err.max((x - y).abs());
        }
    }
    max_err
}
