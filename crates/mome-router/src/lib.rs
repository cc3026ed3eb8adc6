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
//! * [`lines`]: routing a text stream line by line (`mome route`), bad lines
//!   (invalid UTF-8, too long) as per-line error records.
//! * [`calibrate`](mod@calibrate): confidence threshold / temperature from held-out in-domain data,
//!   and the out-of-domain "not confident" measurement.
//! * [`train`], [`data`], [`metrics`]: training, data, evaluation.
//! * [`params`], [`compare`], [`heldout`], [`ood`]: the jobs of `mome router train`
//!   and `mome router compare` as library calls ([`run_train`], [`run_compare`]),
//!   the held-out and out-of-class evaluations. The figures are drawn by `mome-plot`.
//!
//! # Jobs
//!
//! What the CLI runs is one library call each: unchecked parameters (serde, every
//! default in their `Default`), checked once with
//! [`ParamGuard::check`](params::ParamGuard::check), then run; the result is a
//! typed summary. Training a router on two labelled JSONL files (label = file stem):
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use mome_router::params::{DataParams, ParamGuard};
//! use mome_router::{run_train, Router, TrainParams};
//!
//! let tokenizer = concat!(
//!     env!("CARGO_MANIFEST_DIR"),
//!     "/../../data/tokenizer/En_De_Fr_Py_Tokenizer/tokenizer.json"
//! );
//! let dir = tempfile::tempdir()?;
//! let (en, py) = (dir.path().join("en.jsonl"), dir.path().join("py.jsonl"));
//! let mut en_text = String::new();
//! let mut py_text = String::new();
//! for i in 0..20 {
//!     let prose = format!("The river near the old town was quiet on day {i}, and the people walked along it.");
//!     let code = format!("def step_{i}(values):\n    total = 0\n    for v in values:\n        total += v * {i}\n    return total");
//!     en_text += &format!("{}\n", serde_json::json!({ "text": prose }));
//!     py_text += &format!("{}\n", serde_json::json!({ "text": code }));
//! }
//! std::fs::write(&en, en_text)?;
//! std::fs::write(&py, py_text)?;
//!
//! let job = TrainParams {
//!     data: DataParams {
//!         jsonl: vec![en, py],
//!         tokenizer: Some(tokenizer.into()),
//!         passage_lengths: vec![8, 16],
//!         ..DataParams::default()
//!     },
//!     out: dir.path().join("router.json"),
//!     ..TrainParams::default()
//! }
//! .check()?;
//! let summary = run_train(&job)?;
//! assert_eq!(summary.classes, ["en", "py"]);
//!
//! let router = Router::load_with_tokenizer(&summary.out, std::path::Path::new(tokenizer))?;
//! assert_eq!(router.route_text("def main(args):\n    return len(args)")?.label, "py");
//! # Ok(()) }
//! ```
//!
//! The comparison of every classifier (`mome router compare`) is
//! [`CompareParams`] -> [`CompareJob`] -> [`run_compare`] -> [`CompareSummary`], which
//! also writes its report files (see [`compare`]).

pub mod calibrate;
pub mod classifier;
pub mod compare;
pub mod data;
pub mod error;
pub mod features;
pub mod heldout;
pub mod import;
pub mod lines;
pub mod metrics;
pub mod ood;
pub mod params;
pub mod router;
pub mod train;

pub use calibrate::{calibrate, ood_report, Calibration, CalibrationConfig, OodReport};
pub use classifier::{
    Classifier, ClassifierKind, ClassifierParams, ProbabilisticClassifier, ValidClassifierParams,
};
pub use compare::{run_compare, CompareJob, CompareParams, CompareSummary};
pub use error::{Result, RouterError};
pub use features::{CharNgramConfig, FeatureConfig, PruneConfig, SparseVec, Vectorizer};
pub use import::import_sklearn;
pub use lines::{
    route_lines, route_lines_each, InvalidUtf8, LineRecord, LinesSummary, RouteLinesJob,
    RouteLinesParams,
};
pub use metrics::{evaluate, evaluate_router, EvalReport};
pub use params::{DataParams, DataSpec};
pub use router::{
    FeatureKind, FeatureThreshold, Router, Routing, TextNormalization, FORMAT_NAME, FORMAT_VERSION,
    MIN_FORMAT_VERSION,
};
pub use tokenizers;
pub use train::{
    run_train, train_router, train_router_with, TrainConfig, TrainJob, TrainParams, TrainSummary,
};
