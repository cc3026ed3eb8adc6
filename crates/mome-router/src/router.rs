//! The router: features + classifier + class names + confidence threshold (and an
//! optional calibration), saved as a versioned, self-describing JSON file.
//!
//! File versions: 1 (token-id TF-IDF, no temperature / calibration) is still read;
//! 2 (this build) adds `temperature`, `calibration` and the character n-gram feature
//! kind. Any other version is a [`RouterError::Version`].

use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::calibrate::Calibration;
use crate::classifier::{argmax, Classifier, ProbabilisticClassifier};
use crate::error::{Result, RouterError};
use crate::features::{CharNgramConfig, FeatureConfig, SparseVec, Vectorizer};

/// `format` field of a router file.
pub const FORMAT_NAME: &str = "mome-router";
/// Version of the router file format this build writes (it reads 1 and 2).
pub const FORMAT_VERSION: u32 = 2;
/// Oldest router file version this build still reads.
pub const MIN_FORMAT_VERSION: u32 = 1;

const KIND_TOKEN_IDS: &str = "tfidf-token-ids";
const KIND_CHAR_NGRAMS: &str = "tfidf-char-ngrams-hashed";

/// What the TF-IDF columns count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FeatureKind {
    /// Token ids (the method's features).
    #[default]
    TokenIds,
    /// Hashed character n-grams of the raw text (for comparison). [`Router::route`]
    /// decodes the ids with the attached tokenizer first (no tokenizer: no feature,
    /// never confident); [`Router::route_text`] works on the text directly.
    CharNgrams(CharNgramConfig),
}

impl FeatureKind {
    /// Name stored in the router file.
    pub fn name(&self) -> &'static str {
        match self {
            Self::TokenIds => KIND_TOKEN_IDS,
            Self::CharNgrams(_) => KIND_CHAR_NGRAMS,
        }
    }
}

/// A confidence threshold for inputs with at least `min_features` known features
/// (distinct feature columns present), set by a per-length calibration: short inputs
/// are routed with less certainty than long ones, one threshold cannot fit both.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureThreshold {
    /// Lower bound (inclusive) of the number of known features.
    pub min_features: usize,
    /// Threshold of the max probability for these inputs.
    pub threshold: f64,
}

/// Highest temperature a router file may carry (and lowest: its inverse).
pub const MAX_TEMPERATURE: f64 = 1000.0;

/// Rescales probabilities by a temperature: `p_i^(1/t)` renormalised, i.e.
/// `softmax(scores / t)` for the linear models (`t > 1` flattens, `t < 1` sharpens).
pub fn apply_temperature(p: &mut [f64], t: f64) {
    if t == 1.0 || p.is_empty() {
        return;
    }
    let inv = 1.0 / t;
    for x in p.iter_mut() {
        *x = if *x > 0.0 {
            x.ln() * inv
        } else {
            f64::NEG_INFINITY
        };
    }
    let m = p.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !m.is_finite() {
        let u = 1.0 / p.len() as f64;
        p.iter_mut().for_each(|x| *x = u);
        return;
    }
    let mut s = 0.0;
    for x in p.iter_mut() {
        *x = (*x - m).exp();
        s += *x;
    }
    p.iter_mut().for_each(|x| *x /= s);
}

/// Normalisation of raw text before tokenisation (applied by [`Router::route_text`]
/// and when training from text).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextNormalization {
    /// Replace every run of whitespace (indentation, newlines) by one space.
    pub collapse_whitespace: bool,
}

impl TextNormalization {
    /// Applies the normalisation.
    pub fn apply<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        if self.collapse_whitespace {
            std::borrow::Cow::Owned(text.split_whitespace().collect::<Vec<_>>().join(" "))
        } else {
            std::borrow::Cow::Borrowed(text)
        }
    }
}

/// The decision of the router for one input.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Routing {
    /// Most probable class.
    pub label: String,
    /// Its index in [`Router::classes`].
    pub index: usize,
    /// One probability per class, in class order.
    pub probabilities: Vec<f64>,
    /// `max probability >= threshold` and at least one known feature in the input;
    /// when false the caller should fall back (the MoE uses its common expert).
    pub confident: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeaturesRepr {
    kind: String,
    config: FeatureConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    char_ngrams: Option<CharNgramConfig>,
    vocabulary: Vec<u32>,
    idf: Vec<f64>,
}

fn default_temperature() -> f64 {
    1.0
}

/// On-disk form (also what `serde_json` sees).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouterFile {
    format: String,
    version: u32,
    classes: Vec<String>,
    threshold: f64,
    /// Version 2: probabilities are `softmax(scores / temperature)`.
    #[serde(default = "default_temperature")]
    temperature: f64,
    /// Version 2: thresholds by number of known features (override `threshold`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    thresholds_by_features: Vec<FeatureThreshold>,
    /// Version 2: how threshold and temperature were set from held-out data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    calibration: Option<Calibration>,
    tokenizer_sha256: Option<String>,
    text_normalization: TextNormalization,
    features: FeaturesRepr,
    classifier: Classifier,
    #[serde(default)]
    provenance: serde_json::Value,
}

/// A trained (or imported) router.
#[derive(Debug, Clone)]
pub struct Router {
    classes: Vec<String>,
    threshold: f64,
    thresholds_by_features: Vec<FeatureThreshold>,
    temperature: f64,
    calibration: Option<Calibration>,
    tokenizer_sha256: Option<String>,
    text_normalization: TextNormalization,
    feature_kind: FeatureKind,
    vectorizer: Vectorizer,
    classifier: Classifier,
    provenance: serde_json::Value,
    tokenizer: Option<Tokenizer>,
}

impl Router {
    /// Assembles a router and checks that its parts agree.
    pub fn new(
        classes: Vec<String>,
        vectorizer: Vectorizer,
        classifier: Classifier,
        threshold: f64,
        tokenizer_sha256: Option<String>,
    ) -> Result<Self> {
        let r = Self {
            classes,
            threshold,
            thresholds_by_features: Vec::new(),
            temperature: 1.0,
            calibration: None,
            tokenizer_sha256,
            text_normalization: TextNormalization::default(),
            feature_kind: FeatureKind::TokenIds,
            vectorizer,
            classifier,
            provenance: serde_json::Value::Null,
            tokenizer: None,
        };
        r.validate()?;
        Ok(r)
    }

    fn validate(&self) -> Result<()> {
        if self.classes.len() < 2 {
            return Err(RouterError::Invalid(
                "a router needs at least two classes".into(),
            ));
        }
        let mut sorted = self.classes.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != self.classes.len() {
            return Err(RouterError::Invalid("duplicate class names".into()));
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            return Err(RouterError::Invalid(format!(
                "threshold {} is not in [0, 1]",
                self.threshold
            )));
        }
        check_feature_thresholds(&self.thresholds_by_features)
            .map_err(|e| RouterError::Invalid(e.to_string()))?;
        if !(1.0 / MAX_TEMPERATURE..=MAX_TEMPERATURE).contains(&self.temperature) {
            return Err(RouterError::Invalid(format!(
                "temperature {} is not in [{}, {MAX_TEMPERATURE}]",
                self.temperature,
                1.0 / MAX_TEMPERATURE
            )));
        }
        if let FeatureKind::CharNgrams(c) = &self.feature_kind {
            c.validate()
                .map_err(|e| RouterError::Invalid(e.to_string()))?;
            if let Some(&max) = self.vectorizer.vocabulary().iter().max() {
                if max >= c.n_buckets {
                    return Err(RouterError::Invalid(format!(
                        "bucket {max} out of range of {} buckets",
                        c.n_buckets
                    )));
                }
            }
        }
        if self.classifier.n_classes != self.classes.len() {
            return Err(RouterError::Invalid(format!(
                "classifier has {} classes, router names {}",
                self.classifier.n_classes,
                self.classes.len()
            )));
        }
        if self.classifier.n_features != self.vectorizer.n_features() {
            return Err(RouterError::Invalid(format!(
                "classifier has {} features, vectorizer {}",
                self.classifier.n_features,
                self.vectorizer.n_features()
            )));
        }
        self.classifier.validate()
    }

    /// Class names, in probability order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }
    /// The confidence threshold (for every input, unless thresholds by number of
    /// features are set: then for inputs below the first of them).
    pub fn threshold(&self) -> f64 {
        self.threshold
    }
    /// Sets one confidence threshold (in `[0, 1]`) for every input; clears the
    /// thresholds by number of features.
    pub fn set_threshold(&mut self, t: f64) -> Result<()> {
        if !(0.0..=1.0).contains(&t) {
            return Err(RouterError::Params(format!(
                "threshold {t} is not in [0, 1]"
            )));
        }
        self.threshold = t;
        self.thresholds_by_features.clear();
        Ok(())
    }
    /// Thresholds by number of known features (empty: [`Router::threshold`] for all).
    pub fn thresholds_by_features(&self) -> &[FeatureThreshold] {
        &self.thresholds_by_features
    }
    /// Sets the thresholds by number of known features (strictly increasing
    /// `min_features`, thresholds in `[0, 1]`).
    pub fn set_thresholds_by_features(&mut self, t: Vec<FeatureThreshold>) -> Result<()> {
        check_feature_thresholds(&t)?;
        self.thresholds_by_features = t;
        Ok(())
    }
    /// The threshold that applies to an input with `n_features` known features.
    pub fn threshold_for(&self, n_features: usize) -> f64 {
        self.thresholds_by_features
            .iter()
            .rev()
            .find(|b| b.min_features <= n_features)
            .map_or(self.threshold, |b| b.threshold)
    }
    /// Temperature of the probabilities (1 = the classifier's own).
    pub fn temperature(&self) -> f64 {
        self.temperature
    }
    /// Sets the temperature (in `[1/MAX_TEMPERATURE, MAX_TEMPERATURE]`).
    pub fn set_temperature(&mut self, t: f64) -> Result<()> {
        if !(1.0 / MAX_TEMPERATURE..=MAX_TEMPERATURE).contains(&t) {
            return Err(RouterError::Params(format!(
                "temperature {t} is not in [{}, {MAX_TEMPERATURE}]",
                1.0 / MAX_TEMPERATURE
            )));
        }
        self.temperature = t;
        Ok(())
    }
    /// How threshold and temperature were calibrated, if they were.
    pub fn calibration(&self) -> Option<&Calibration> {
        self.calibration.as_ref()
    }
    /// Records (or clears) the calibration; does not change threshold or temperature.
    pub fn set_calibration(&mut self, c: Option<Calibration>) {
        self.calibration = c;
    }
    /// What the feature columns count.
    pub fn feature_kind(&self) -> FeatureKind {
        self.feature_kind
    }
    /// Sets the feature kind (the vectorizer must have been fitted on it).
    pub fn set_feature_kind(&mut self, kind: FeatureKind) -> Result<()> {
        let old = std::mem::replace(&mut self.feature_kind, kind);
        if let Err(e) = self.validate() {
            self.feature_kind = old;
            return Err(e);
        }
        Ok(())
    }
    /// SHA-256 of the tokenizer file the router expects, if recorded.
    pub fn tokenizer_sha256(&self) -> Option<&str> {
        self.tokenizer_sha256.as_deref()
    }
    /// Text normalisation used by [`Router::route_text`].
    pub fn text_normalization(&self) -> TextNormalization {
        self.text_normalization
    }
    /// Sets the text normalisation.
    pub fn set_text_normalization(&mut self, n: TextNormalization) {
        self.text_normalization = n;
    }
    /// Free-form provenance (training settings, source) stored in the file.
    pub fn provenance(&self) -> &serde_json::Value {
        &self.provenance
    }
    /// Sets the provenance.
    pub fn set_provenance(&mut self, v: serde_json::Value) {
        self.provenance = v;
    }
    /// The vectorizer.
    pub fn vectorizer(&self) -> &Vectorizer {
        &self.vectorizer
    }
    /// The classifier.
    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    /// Attaches a tokenizer for [`Router::route_text`]; `sha256` is the hash of its
    /// file and must match the one recorded in the router (if any).
    pub fn attach_tokenizer(&mut self, tokenizer: Tokenizer, sha256: &str) -> Result<()> {
        if let Some(want) = &self.tokenizer_sha256 {
            if want != sha256 {
                return Err(RouterError::Tokenizer(format!(
                    "router was trained with tokenizer {want}, got {sha256}"
                )));
            }
        }
        self.tokenizer = Some(tokenizer);
        Ok(())
    }

    /// Attaches a tokenizer without checking its hash (training: the caller read the
    /// data with it).
    pub(crate) fn set_tokenizer_unchecked(&mut self, tokenizer: Tokenizer) {
        self.tokenizer = Some(tokenizer);
    }

    /// Loads a router file and the tokenizer file (checked against the recorded hash).
    pub fn load_with_tokenizer(router: &Path, tokenizer: &Path) -> Result<Self> {
        let mut r = Self::load(router)?;
        let (tok, sha) = mome_data::tokenizer::load_tokenizer(tokenizer)?;
        r.attach_tokenizer(tok, &sha)?;
        Ok(r)
    }

    /// Sparse features of a token sequence. Character n-gram routers decode the ids
    /// with the attached tokenizer (none attached, or ids it cannot decode: no feature).
    pub fn features(&self, ids: &[u32]) -> SparseVec {
        match &self.feature_kind {
            FeatureKind::TokenIds => self.vectorizer.transform(ids),
            FeatureKind::CharNgrams(c) => match &self.tokenizer {
                Some(tok) => match tok.decode(ids, true) {
                    Ok(text) => self
                        .vectorizer
                        .transform(&c.bucket_ids(&self.text_normalization.apply(&text))),
                    Err(_) => SparseVec::default(),
                },
                None => SparseVec::default(),
            },
        }
    }

    /// Sparse features of a text (normalised as the router says; tokenised for
    /// token-id routers, which need the attached tokenizer).
    pub fn text_features(&self, text: &str) -> Result<SparseVec> {
        match &self.feature_kind {
            FeatureKind::TokenIds => Ok(self.vectorizer.transform(&self.encode(text)?)),
            FeatureKind::CharNgrams(c) => {
                let t = self.text_normalization.apply(text);
                Ok(self.vectorizer.transform(&c.bucket_ids(&t)))
            }
        }
    }

    /// Class probabilities of a feature vector (temperature applied).
    pub fn probabilities(&self, x: &SparseVec) -> Vec<f64> {
        let mut p = vec![0.0; self.classes.len()];
        self.classifier.predict_proba_sparse(x, &mut p);
        apply_temperature(&mut p, self.temperature);
        p
    }

    /// Routes a feature vector.
    pub fn route_features(&self, x: &SparseVec) -> Routing {
        let p = self.probabilities(x);
        let index = argmax(&p);
        Routing {
            label: self.classes[index].clone(),
            index,
            confident: x.nnz() > 0 && p[index] >= self.threshold_for(x.nnz()),
            probabilities: p,
        }
    }

    /// Routes one token sequence (BOS/EOS and unknown ids are ignored).
    pub fn route(&self, ids: &[u32]) -> Routing {
        self.route_features(&self.features(ids))
    }

    /// Routes many sequences in parallel (rayon).
    pub fn route_batch<S: AsRef<[u32]> + Sync>(&self, batch: &[S]) -> Vec<Routing> {
        batch.par_iter().map(|s| self.route(s.as_ref())).collect()
    }

    /// Token ids of a text as the router sees it (normalised, tokenised with special tokens).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let tok = self
            .tokenizer
            .as_ref()
            .ok_or_else(|| RouterError::Tokenizer("no tokenizer attached".into()))?;
        let t = self.text_normalization.apply(text);
        let enc = tok
            .encode(t.as_ref(), true)
            .map_err(|e| RouterError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Routes a text (with the attached tokenizer for token-id routers).
    pub fn route_text(&self, text: &str) -> Result<Routing> {
        Ok(self.route_features(&self.text_features(text)?))
    }

    /// Routes many texts in parallel.
    pub fn route_texts<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Vec<Routing>> {
        texts
            .par_iter()
            .map(|t| self.route_text(t.as_ref()))
            .collect()
    }

    /// Serialises to the JSON file form.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        let f = RouterFile {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            classes: self.classes.clone(),
            threshold: self.threshold,
            thresholds_by_features: self.thresholds_by_features.clone(),
            temperature: self.temperature,
            calibration: self.calibration.clone(),
            tokenizer_sha256: self.tokenizer_sha256.clone(),
            text_normalization: self.text_normalization,
            features: FeaturesRepr {
                kind: self.feature_kind.name().into(),
                config: self.vectorizer.config().clone(),
                char_ngrams: match self.feature_kind {
                    FeatureKind::CharNgrams(c) => Some(c),
                    FeatureKind::TokenIds => None,
                },
                vocabulary: self.vectorizer.vocabulary().to_vec(),
                idf: self.vectorizer.idf().to_vec(),
            },
            classifier: self.classifier.clone(),
            provenance: self.provenance.clone(),
        };
        serde_json::to_vec(&f).map_err(|e| RouterError::Json {
            what: "router".into(),
            source: e,
        })
    }

    /// Parses a router file's bytes (versions 1 and 2): wrong format name, version or
    /// shape is an error, never a panic.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| RouterError::Json {
                what: "router file".into(),
                source: e,
            })?;
        let obj = v
            .as_object()
            .ok_or_else(|| RouterError::NotARouter("top level is not an object".into()))?;
        match obj.get("format").and_then(|f| f.as_str()) {
            Some(FORMAT_NAME) => {}
            other => {
                return Err(RouterError::NotARouter(format!(
                    "format is {other:?}, expected {FORMAT_NAME:?}"
                )))
            }
        }
        let version = obj
            .get("version")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| RouterError::NotARouter("missing integer version".into()))?;
        if !(u64::from(MIN_FORMAT_VERSION)..=u64::from(FORMAT_VERSION)).contains(&version) {
            return Err(RouterError::Version {
                found: version,
                expected: FORMAT_VERSION,
            });
        }
        if version == 1 {
            // Version 1 files have no temperature, calibration or char n-grams.
            for key in ["temperature", "calibration", "thresholds_by_features"] {
                if obj.contains_key(key) {
                    return Err(RouterError::Invalid(format!(
                        "field {key:?} is not part of router file version 1"
                    )));
                }
            }
        }
        let f: RouterFile = serde_json::from_value(v).map_err(|e| RouterError::Json {
            what: "router file".into(),
            source: e,
        })?;
        let feature_kind = match (f.features.kind.as_str(), f.features.char_ngrams) {
            (KIND_TOKEN_IDS, None) => FeatureKind::TokenIds,
            (KIND_CHAR_NGRAMS, Some(c)) if version >= 2 => FeatureKind::CharNgrams(c),
            (kind, _) => {
                return Err(RouterError::Invalid(format!(
                    "unknown or incomplete feature kind {kind:?} for version {version}"
                )))
            }
        };
        if let FeatureKind::CharNgrams(c) = &feature_kind {
            c.validate()
                .map_err(|e| RouterError::Invalid(e.to_string()))?;
        }
        let vectorizer = Vectorizer::new(f.features.config, f.features.vocabulary, f.features.idf)?;
        let mut r = Router::new(
            f.classes,
            vectorizer,
            f.classifier,
            f.threshold,
            f.tokenizer_sha256,
        )?;
        r.set_temperature(f.temperature)
            .map_err(|e| RouterError::Invalid(e.to_string()))?;
        r.set_feature_kind(feature_kind)?;
        r.set_thresholds_by_features(f.thresholds_by_features)
            .map_err(|e| RouterError::Invalid(e.to_string()))?;
        r.calibration = f.calibration;
        r.text_normalization = f.text_normalization;
        r.provenance = f.provenance;
        Ok(r)
    }

    /// Writes the router file atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        mome_data::fsutil::write_atomic(path, &self.to_json()?)?;
        Ok(())
    }

    /// Reads a router file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| RouterError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Self::from_json(&bytes)
    }
}

fn check_feature_thresholds(t: &[FeatureThreshold]) -> Result<()> {
    for (i, b) in t.iter().enumerate() {
        if !(0.0..=1.0).contains(&b.threshold) {
            return Err(RouterError::Params(format!(
                "threshold {} is not in [0, 1]",
                b.threshold
            )));
        }
        if i > 0 && t[i - 1].min_features >= b.min_features {
            return Err(RouterError::Params(
                "thresholds by features must have strictly increasing min_features".into(),
            ));
        }
    }
    Ok(())
}
