//! The router: features + classifier + class names + confidence threshold, saved
//! as a versioned, self-describing JSON file.

use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::classifier::{argmax, Classifier, ProbabilisticClassifier};
use crate::error::{Result, RouterError};
use crate::features::{FeatureConfig, SparseVec, Vectorizer};

/// `format` field of a router file.
pub const FORMAT_NAME: &str = "mome-router";
/// Version of the router file format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

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
struct FeaturesRepr {
    kind: String,
    config: FeatureConfig,
    vocabulary: Vec<u32>,
    idf: Vec<f64>,
}

/// On-disk form (also what `serde_json` sees).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouterFile {
    format: String,
    version: u32,
    classes: Vec<String>,
    threshold: f64,
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
    tokenizer_sha256: Option<String>,
    text_normalization: TextNormalization,
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
            tokenizer_sha256,
            text_normalization: TextNormalization::default(),
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
    /// The confidence threshold.
    pub fn threshold(&self) -> f64 {
        self.threshold
    }
    /// Sets the confidence threshold (in `[0, 1]`).
    pub fn set_threshold(&mut self, t: f64) -> Result<()> {
        if !(0.0..=1.0).contains(&t) {
            return Err(RouterError::Params(format!(
                "threshold {t} is not in [0, 1]"
            )));
        }
        self.threshold = t;
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

    /// Loads a router file and the tokenizer file (checked against the recorded hash).
    pub fn load_with_tokenizer(router: &Path, tokenizer: &Path) -> Result<Self> {
        let mut r = Self::load(router)?;
        let (tok, sha) = mome_data::tokenizer::load_tokenizer(tokenizer)?;
        r.attach_tokenizer(tok, &sha)?;
        Ok(r)
    }

    /// Sparse features of a token sequence.
    pub fn features(&self, ids: &[u32]) -> SparseVec {
        self.vectorizer.transform(ids)
    }

    /// Routes one token sequence (BOS/EOS and unknown ids are ignored).
    pub fn route(&self, ids: &[u32]) -> Routing {
        let x = self.vectorizer.transform(ids);
        let mut p = vec![0.0; self.classes.len()];
        self.classifier.predict_proba_sparse(&x, &mut p);
        let index = argmax(&p);
        Routing {
            label: self.classes[index].clone(),
            index,
            confident: x.nnz() > 0 && p[index] >= self.threshold,
            probabilities: p,
        }
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

    /// Routes a text with the attached tokenizer.
    pub fn route_text(&self, text: &str) -> Result<Routing> {
        Ok(self.route(&self.encode(text)?))
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
            tokenizer_sha256: self.tokenizer_sha256.clone(),
            text_normalization: self.text_normalization,
            features: FeaturesRepr {
                kind: "tfidf-token-ids".into(),
                config: self.vectorizer.config().clone(),
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

    /// Parses a router file's bytes: wrong format name, version or shape is an error.
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
        if version != u64::from(FORMAT_VERSION) {
            return Err(RouterError::Version {
                found: version,
                expected: FORMAT_VERSION,
            });
        }
        let f: RouterFile = serde_json::from_value(v).map_err(|e| RouterError::Json {
            what: "router file".into(),
            source: e,
        })?;
        if f.features.kind != "tfidf-token-ids" {
            return Err(RouterError::Invalid(format!(
                "unknown feature kind {:?}",
                f.features.kind
            )));
        }
        let vectorizer = Vectorizer::new(f.features.config, f.features.vocabulary, f.features.idf)?;
        let mut r = Router::new(
            f.classes,
            vectorizer,
            f.classifier,
            f.threshold,
            f.tokenizer_sha256,
        )?;
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
