//! Tests of the router crate: features, classifiers, import parity, file format.

use approx::assert_abs_diff_eq;
use linfa::prelude::*;
use mome_router::classifier::{ClassifierKind, ClassifierParams, ValidClassifierParams};
use mome_router::{FeatureConfig, PruneConfig, Router, RouterError, Vectorizer};
use ndarray::{Array1, Array2};

const PARAMS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/seed/reference_router_params.json"
);

#[test]
fn tfidf_matches_hand_computation() {
    // 3 docs; ids 1/2 dropped (BOS/EOS), 5 dropped (one digit, as scikit-learn).
    let docs: Vec<Vec<u32>> = vec![vec![1, 10, 10, 11, 5, 2], vec![10, 12], vec![12, 12, 13]];
    let refs: Vec<&[u32]> = docs.iter().map(|d| d.as_slice()).collect();
    let prune = PruneConfig {
        min_df: 1,
        max_features: None,
    };
    let v = Vectorizer::fit(FeatureConfig::default(), &prune, &refs).unwrap();
    assert_eq!(v.vocabulary(), &[10, 11, 12, 13]);
    let idf = |df: f64| ((1.0 + 3.0) / (1.0 + df)).ln() + 1.0;
    for (got, want) in v.idf().iter().zip([idf(2.0), idf(1.0), idf(2.0), idf(1.0)]) {
        assert_abs_diff_eq!(*got, want, epsilon = 1e-15);
    }
    let x = v.transform(&docs[0]);
    assert_eq!(x.indices, vec![0, 1]);
    let (a, b) = (2.0 * idf(2.0), idf(1.0));
    let n = (a * a + b * b).sqrt();
    assert_abs_diff_eq!(x.values[0], a / n, epsilon = 1e-15);
    assert_abs_diff_eq!(x.values[1], b / n, epsilon = 1e-15);
    // Empty, unknown and over-long inputs.
    assert_eq!(v.transform(&[]).nnz(), 0);
    assert_eq!(v.transform(&[1, 2, 5, 999_999, u32::MAX]).nnz(), 0);
    let long: Vec<u32> = (0..200_000).map(|i| 10 + (i % 4)).collect();
    let s = v.transform(&long);
    assert_eq!(s.nnz(), 4);
    assert_abs_diff_eq!(
        s.values.iter().map(|v| v * v).sum::<f64>(),
        1.0,
        epsilon = 1e-12
    );
}

#[test]
fn pruning_min_df_and_max_features() {
    let docs: Vec<Vec<u32>> = vec![vec![10, 10, 10, 11, 12], vec![10, 11], vec![10, 13]];
    let refs: Vec<&[u32]> = docs.iter().map(|d| d.as_slice()).collect();
    let v = Vectorizer::fit(
        FeatureConfig::default(),
        &PruneConfig {
            min_df: 2,
            max_features: None,
        },
        &refs,
    )
    .unwrap();
    assert_eq!(v.vocabulary(), &[10, 11]);
    let v = Vectorizer::fit(
        FeatureConfig::default(),
        &PruneConfig {
            min_df: 1,
            max_features: Some(1),
        },
        &refs,
    )
    .unwrap();
    assert_eq!(v.vocabulary(), &[10]);
}

fn toy() -> (Array2<f64>, Array1<usize>) {
    // Three classes, each owns two features; rows are non-negative (NB needs counts).
    let mut x = Array2::zeros((60, 6));
    let mut y = Array1::zeros(60);
    for r in 0..60 {
        let c = r % 3;
        y[r] = c;
        x[[r, 2 * c]] = 1.0 + (r % 5) as f64 * 0.1;
        x[[r, 2 * c + 1]] = 0.5 + (r % 7) as f64 * 0.1;
        x[[r, (2 * c + 2) % 6]] = 0.05 * (r % 2) as f64;
    }
    (x, y)
}

#[test]
fn every_classifier_learns_a_separable_set() {
    let (x, y) = toy();
    let ds = DatasetBase::new(x.clone(), y.clone());
    for kind in ClassifierKind::ALL {
        let clf = ClassifierParams::new(kind).fit(&ds).unwrap();
        let pred = clf.predict(&x);
        let acc = pred.iter().zip(y.iter()).filter(|(a, b)| a == b).count() as f64 / 60.0;
        assert_eq!(acc, 1.0, "{kind:?} accuracy {acc}");
        let p = clf.predict_proba_dense(x.row(0));
        assert_eq!(p.len(), 3);
        assert_abs_diff_eq!(p.iter().sum::<f64>(), 1.0, epsilon = 1e-9);
        assert_eq!(kind, clf.params.kind());
    }
}

#[test]
fn bad_hyperparameters_are_rejected() {
    let (x, y) = toy();
    let ds = DatasetBase::new(x, y);
    let bad = ClassifierParams(ValidClassifierParams::Logreg {
        c: -1.0,
        max_iter: 10,
        tol: 1e-4,
    });
    assert!(matches!(bad.fit(&ds), Err(RouterError::Params(_))));
    let bad = ClassifierParams(ValidClassifierParams::Nb { alpha: f64::NAN });
    assert!(matches!(bad.fit(&ds), Err(RouterError::Params(_))));
}

#[test]
fn imported_sklearn_router_reproduces_probabilities() {
    let (router, samples) = mome_router::import_sklearn(std::path::Path::new(PARAMS)).unwrap();
    assert_eq!(router.classes(), &["en", "fr", "de", "py"]);
    assert!(samples.len() >= 50);
    let mut max_err = 0.0f64;
    for s in &samples {
        let r = router.route(&s.token_ids);
        assert_eq!(r.label, s.predicted, "sample {:?}", s.kind);
        for (a, b) in r.probabilities.iter().zip(&s.probabilities) {
            max_err = max_err.max((a - b).abs());
        }
    }
    eprintln!("max |p_mome - p_sklearn| = {max_err:e}");
    assert!(max_err <= 1e-9, "max error {max_err}");
    // Batch routing gives the same answers.
    let seqs: Vec<&[u32]> = samples.iter().map(|s| s.token_ids.as_slice()).collect();
    for (r, s) in router.route_batch(&seqs).iter().zip(&samples) {
        assert_eq!(r.label, s.predicted);
    }
    // Round trip through the file keeps the probabilities bit for bit.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("router.json");
    router.save(&path).unwrap();
    let back = Router::load(&path).unwrap();
    for s in &samples {
        assert_eq!(
            back.route(&s.token_ids).probabilities,
            router.route(&s.token_ids).probabilities
        );
    }
}

fn small_router() -> Router {
    let (x, y) = toy();
    let ds = DatasetBase::new(x, y);
    let clf = ClassifierParams::new(ClassifierKind::Logreg)
        .fit(&ds)
        .unwrap();
    let v = Vectorizer::new(
        FeatureConfig::default(),
        vec![10, 11, 12, 13, 14, 15],
        vec![1.0; 6],
    )
    .unwrap();
    Router::new(
        vec!["a".into(), "b".into(), "c".into()],
        v,
        clf,
        0.6,
        Some("abc".into()),
    )
    .unwrap()
}

#[test]
fn save_load_round_trip_and_routing() {
    for kind in ClassifierKind::ALL {
        let (x, y) = toy();
        let clf = ClassifierParams::new(kind)
            .fit(&DatasetBase::new(x, y))
            .unwrap();
        let v = Vectorizer::new(
            FeatureConfig::default(),
            vec![10, 11, 12, 13, 14, 15],
            vec![1.0; 6],
        )
        .unwrap();
        let r = Router::new(vec!["a".into(), "b".into(), "c".into()], v, clf, 0.6, None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        r.save(&p).unwrap();
        let back = Router::load(&p).unwrap();
        for ids in [
            vec![10u32, 11],
            vec![12, 13, 13],
            vec![14, 15, 1, 2],
            vec![],
        ] {
            assert_eq!(back.route(&ids), r.route(&ids), "{kind:?}");
        }
        assert_eq!(r.route(&[12, 13]).label, "b");
    }
    let r = small_router();
    let empty = r.route(&[]);
    assert!(!empty.confident, "no known feature must not be confident");
    assert_eq!(empty.probabilities.len(), 3);
    let unknown = r.route(&[1, 2, 3, 40_000, u32::MAX]);
    assert!(!unknown.confident);
    assert!(r.route(&[10, 11, 10]).confident);
    assert!(r.route_text("x").is_err(), "no tokenizer attached");
}

#[test]
fn bad_files_are_typed_errors() {
    let r = small_router();
    let good: serde_json::Value = serde_json::from_slice(&r.to_json().unwrap()).unwrap();
    let mut v2 = good.clone();
    v2["version"] = 2.into();
    assert!(matches!(
        Router::from_json(&serde_json::to_vec(&v2).unwrap()),
        Err(RouterError::Version { found: 2, .. })
    ));
    let mut other = good.clone();
    other["format"] = "something-else".into();
    assert!(matches!(
        Router::from_json(&serde_json::to_vec(&other).unwrap()),
        Err(RouterError::NotARouter(_))
    ));
    let mut short = good.clone();
    short["features"]["idf"] = serde_json::json!([1.0]);
    assert!(matches!(
        Router::from_json(&serde_json::to_vec(&short).unwrap()),
        Err(RouterError::Invalid(_))
    ));
    let mut classes = good.clone();
    classes["classes"] = serde_json::json!(["a", "b"]);
    assert!(matches!(
        Router::from_json(&serde_json::to_vec(&classes).unwrap()),
        Err(RouterError::Invalid(_))
    ));
    let mut thr = good.clone();
    thr["threshold"] = serde_json::json!(3.0);
    assert!(Router::from_json(&serde_json::to_vec(&thr).unwrap()).is_err());
    let bytes = r.to_json().unwrap();
    for cut in [0, 1, 10, bytes.len() / 2, bytes.len() - 1] {
        assert!(Router::from_json(&bytes[..cut]).is_err());
    }
    assert!(Router::from_json(b"[1,2,3]").is_err());
    assert!(Router::from_json(&[0xff, 0xfe, 0x00]).is_err());
    assert!(matches!(
        Router::load(std::path::Path::new("/nonexistent/r.json")),
        Err(RouterError::Io { .. })
    ));
    // Flipping bytes never panics.
    for i in (0..bytes.len()).step_by(7) {
        let mut b = bytes.clone();
        b[i] ^= 0x5a;
        let _ = Router::from_json(&b);
    }
}
