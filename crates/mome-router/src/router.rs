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
use crate::classifier::{argmax, softmax_with_temperature, Classifier};
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
/// A router applies its temperature to the log-scores instead
/// ([`Router::probabilities`]): probabilities that underflowed to 0 cannot be
/// flattened back.
pub fn apply_temperature(p: &mut [f64], t: f64) {
    if t == 1.0 || p.is_empty() {
        return;
    }
    for x in p.iter_mut() {
        *x = if *x > 0.0 { x.ln() } else { f64::NEG_INFINITY };
    }
    softmax_with_temperature(p, t);
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

    /// Checks that the parts agree and every number is usable; errors name the
    /// field as in the router file.
    fn validate(&self) -> Result<()> {
        if self.classes.len() < 2 {
            return Err(RouterError::Invalid(format!(
                "classes has {} names: a router needs at least two classes",
                self.classes.len()
            )));
        }
        let mut sorted = self.classes.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != self.classes.len() {
            return Err(RouterError::Invalid("classes has duplicate names".into()));
        }
        check_probability("threshold", self.threshold)?;
        check_feature_thresholds(&self.thresholds_by_features)?;
        check_temperature("temperature", self.temperature)?;
        if let FeatureKind::CharNgrams(c) = &self.feature_kind {
            c.validate().map_err(|e| {
                RouterError::Invalid(format!("features.char_ngrams: {}", error_text(&e)))
            })?;
            if let Some((i, &id)) = self
                .vectorizer
                .vocabulary()
                .iter()
                .enumerate()
                .find(|(_, id)| **id >= c.n_buckets)
            {
                return Err(RouterError::Invalid(format!(
                    "features.vocabulary[{i}] = {id} is not below features.char_ngrams.n_buckets = {}",
                    c.n_buckets
                )));
            }
        }
        if self.classifier.n_classes != self.classes.len() {
            return Err(RouterError::Invalid(format!(
                "classifier.n_classes = {} but classes has {} names",
                self.classifier.n_classes,
                self.classes.len()
            )));
        }
        if self.classifier.n_features != self.vectorizer.n_features() {
            return Err(RouterError::Invalid(format!(
                "classifier.n_features = {} but features.vocabulary has {} columns",
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
    /// `min_features`, thresholds in `[0, 1]`; errors name
    /// `thresholds_by_features[i]`).
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

    /// Loads a router file and the tokenizer file (checked against the recorded
    /// hash; a mismatch names both files).
    pub fn load_with_tokenizer(router: &Path, tokenizer: &Path) -> Result<Self> {
        let mut r = Self::load(router)?;
        let (tok, sha) = mome_data::tokenizer::load_tokenizer(tokenizer)?;
        if let Some(want) = r.tokenizer_sha256.as_deref().filter(|w| *w != sha) {
            return Err(RouterError::Tokenizer(format!(
                "{} was trained with tokenizer sha256 {want}, but {} has sha256 {sha}",
                router.display(),
                tokenizer.display()
            )));
        }
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

    /// Class probabilities of a feature vector: `softmax(log_scores / temperature)`
    /// by log-sum-exp ([`Classifier::log_scores_sparse`],
    /// [`softmax_with_temperature`](crate::classifier::softmax_with_temperature)):
    /// always a finite distribution, however large the scores.
    pub fn probabilities(&self, x: &SparseVec) -> Vec<f64> {
        let mut p = vec![0.0; self.classes.len()];
        self.classifier.log_scores_sparse(x, &mut p);
        softmax_with_temperature(&mut p, self.temperature);
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
        serde_json::to_vec(&f).map_err(|e| RouterError::json("router", e))
    }

    /// Parses a router file's bytes (versions 1 and 2): wrong format name, version,
    /// shape or number is an error, never a panic. What a file must satisfy:
    /// * `format` = `"mome-router"`, `version` 1 or 2 (version 1: none of
    ///   `temperature`, `calibration`, `thresholds_by_features`), no unknown field;
    /// * at least two classes, distinct; `classifier.n_classes` = their count and
    ///   `classifier.n_features` = the number of vocabulary columns; a linear model's
    ///   `coef` is `n_classes x n_features`, `intercept` has `n_classes` values; tree
    ///   nodes point to later nodes, leaves hold one probability per class;
    /// * vocabulary ids unique and below [`MAX_ID`](crate::features::MAX_ID) (char
    ///   n-grams: below `n_buckets`), one idf per id;
    /// * every number finite: coefficients and intercepts within
    ///   ±[`MAX_ABS_WEIGHT`](crate::classifier::MAX_ABS_WEIGHT), idf in
    ///   `(0, MAX_IDF]` ([`MAX_IDF`](crate::features::MAX_IDF)), thresholds and leaf
    ///   probabilities in `[0, 1]`, temperature in `[1/MAX_TEMPERATURE,
    ///   MAX_TEMPERATURE]`, the calibration record's numbers in their ranges
    ///   ([`Calibration::validate`]).
    ///
    /// Errors name the field (`classifier.model.linear.coef[1][0]`); [`Router::load`]
    /// adds the file.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        Self::from_json_named(bytes, "router file")
    }

    /// [`Router::from_json`], JSON errors naming `what` (the file).
    fn from_json_named(bytes: &[u8], what: &str) -> Result<Self> {
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| RouterError::json(what, e))?;
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
        let f: RouterFile = match serde_json::from_value(v) {
            Ok(f) => f,
            // A value has no positions: parse the bytes again for the error's line.
            Err(e) => {
                return Err(match serde_json::from_slice::<RouterFile>(bytes) {
                    Err(located) => RouterError::json(what, located),
                    Ok(_) => RouterError::json(what, e),
                })
            }
        };
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
            c.validate().map_err(|e| {
                RouterError::Invalid(format!("features.char_ngrams: {}", error_text(&e)))
            })?;
        }
        // Scalars first (cheap, and their errors are the most readable).
        check_probability("threshold", f.threshold)?;
        check_temperature("temperature", f.temperature)?;
        check_feature_thresholds(&f.thresholds_by_features)?;
        if let Some(c) = &f.calibration {
            c.validate()?;
        }
        let vectorizer = Vectorizer::new(f.features.config, f.features.vocabulary, f.features.idf)?;
        let mut r = Router::new(
            f.classes,
            vectorizer,
            f.classifier,
            f.threshold,
            f.tokenizer_sha256,
        )?;
        r.temperature = f.temperature;
        r.thresholds_by_features = f.thresholds_by_features;
        r.set_feature_kind(feature_kind)?;
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

    /// Reads a router file ([`Router::from_json`]); every error names the file:
    /// I/O and JSON errors as `file` / `file:LINE`, anything else wrapped in
    /// [`RouterError::File`].
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| RouterError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Self::from_json_named(&bytes, &path.display().to_string()).map_err(|e| e.in_file(path))
    }
}

/// The message of an error and its causes (for errors folded into another's text).
fn error_text(e: &RouterError) -> String {
    crate::error::chain(e)
}

/// A probability-valued field (`threshold`): in `[0, 1]` (NaN is not).
pub(crate) fn check_probability(field: &str, v: f64) -> Result<()> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(RouterError::Value {
            field: field.into(),
            value: v,
            expected: "a probability in [0, 1]".into(),
        })
    }
}

/// A temperature-valued field: in `[1/MAX_TEMPERATURE, MAX_TEMPERATURE]`.
pub(crate) fn check_temperature(field: &str, t: f64) -> Result<()> {
    if (1.0 / MAX_TEMPERATURE..=MAX_TEMPERATURE).contains(&t) {
        Ok(())
    } else {
        Err(RouterError::Value {
            field: field.into(),
            value: t,
            expected: format!(
                "a temperature in [{}, {MAX_TEMPERATURE}]",
                1.0 / MAX_TEMPERATURE
            ),
        })
    }
}

fn check_feature_thresholds(t: &[FeatureThreshold]) -> Result<()> {
    for (i, b) in t.iter().enumerate() {
        check_probability(
            &format!("thresholds_by_features[{i}].threshold"),
            b.threshold,
        )?;
        if i > 0 && t[i - 1].min_features >= b.min_features {
            return Err(RouterError::Invalid(format!(
                "thresholds_by_features[{i}].min_features = {} is not above the previous one ({}): \
                 min_features must increase strictly",
                b.min_features,
                t[i - 1].min_features
            )));
        }
    }
    Ok(())
}
