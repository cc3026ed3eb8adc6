//! Domain router of mome (method.md §5): TF-IDF over token ids feeding a
//! classifier that tells which domain (expert) a sequence belongs to.
//!
//! This crate never depends on libtorch: an application embeds it with
//! `tokenizers`, `ndarray` and `linfa` only.
//!
//! ```no_run
//! # fn main() -> Result<(), mome_router::RouterError> {
//! use std::path::Path;
//! let router = mome_router::Router::load_with_tokenizer(Path::new("router.json"), Path::new("tokenizer.json"))?;
//! let r = router.route_text("def main():\n    return 0")?;
//! println!("{} {:?} confident={}", r.label, r.probabilities, r.confident);
//! # Ok(()) }
//! ```
//!
//! * [`features`]: sparse TF-IDF exactly as scikit-learn's `TfidfVectorizer` on ids.
//! * [`classifier`]: logistic regression, Naive Bayes, linear SVM, decision tree (linfa).
//! * [`router`]: the [`Router`], its file format and routing.
//! * [`import`]: the paper's scikit-learn router.
//! * [`calibrate`]: confidence threshold / temperature from held-out in-domain data,
//!   and the out-of-domain "not confident" measurement.
//! * [`train`], [`data`], [`metrics`], [`plot`]: training, data, evaluation, figures.

pub mod calibrate;
pub mod classifier;
pub mod data;
pub mod error;
pub mod features;
pub mod import;
pub mod metrics;
pub mod plot;
pub mod router;
pub mod train;

pub use calibrate::{calibrate, ood_report, Calibration, CalibrationConfig, OodReport};
pub use classifier::{
    Classifier, ClassifierKind, ClassifierParams, ProbabilisticClassifier, ValidClassifierParams,
};
pub use error::{Result, RouterError};
pub use features::{CharNgramConfig, FeatureConfig, PruneConfig, SparseVec, Vectorizer};
pub use import::import_sklearn;
pub use metrics::{evaluate, evaluate_router, EvalReport};
pub use router::{
    FeatureKind, FeatureThreshold, Router, Routing, TextNormalization, FORMAT_NAME, FORMAT_VERSION,
    MIN_FORMAT_VERSION,
};
pub use tokenizers;
pub use train::{train_router, train_router_with, TrainConfig};
