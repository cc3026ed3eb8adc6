//! Tests of the router crate: features, classifiers, import parity, file format.

use approx::assert_abs_diff_eq;
use linfa::prelude::*;
use mome_router::classifier::{ClassifierKind, ClassifierParams, ValidClassifierParams};
use mome_router::data::TokenDoc;
use mome_router::{
    CalibrationConfig, CharNgramConfig, FeatureConfig, FeatureKind, PruneConfig, Router,
    RouterError, Vectorizer,
};
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
    assert_eq!(
        mome_router::import::max_abs_error(&router, &samples),
        max_err
    );
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
    let mut v3 = good.clone();
    v3["version"] = 3.into();
    assert!(matches!(
        Router::from_json(&serde_json::to_vec(&v3).unwrap()),
        Err(RouterError::Version { found: 3, .. })
    ));
    let mut v0 = good.clone();
    v0["version"] = 0.into();
    assert!(matches!(
        Router::from_json(&serde_json::to_vec(&v0).unwrap()),
        Err(RouterError::Version { found: 0, .. })
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

/// A file as version 1 wrote it: no temperature, no calibration.
fn as_version_1(r: &Router) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_slice(&r.to_json().unwrap()).unwrap();
    let o = v.as_object_mut().unwrap();
    o.insert("version".into(), 1.into());
    o.remove("temperature");
    o.remove("calibration");
    v
}

#[test]
fn version_1_files_still_load() {
    assert_eq!(mome_router::FORMAT_VERSION, 2);
    let r = small_router();
    let v1 = as_version_1(&r);
    let back = Router::from_json(&serde_json::to_vec(&v1).unwrap()).unwrap();
    assert_eq!(back.temperature(), 1.0);
    assert!(back.calibration().is_none());
    assert_eq!(back.threshold(), r.threshold());
    for ids in [vec![10u32, 11], vec![12, 13, 13], vec![]] {
        assert_eq!(back.route(&ids), r.route(&ids));
    }
    // Saving writes the current version.
    let again: serde_json::Value = serde_json::from_slice(&back.to_json().unwrap()).unwrap();
    assert_eq!(again["version"], 2);
    // Fields of version 2 in a version-1 file are an error, not silently used.
    let mut bad = v1.clone();
    bad["temperature"] = 2.0.into();
    assert!(matches!(
        Router::from_json(&serde_json::to_vec(&bad).unwrap()),
        Err(RouterError::Invalid(_))
    ));
    let mut bad = v1.clone();
    bad["features"]["kind"] = "tfidf-char-ngrams-hashed".into();
    bad["features"]["char_ngrams"] = serde_json::to_value(CharNgramConfig::default()).unwrap();
    assert!(matches!(
        Router::from_json(&serde_json::to_vec(&bad).unwrap()),
        Err(RouterError::Invalid(_))
    ));
}

#[test]
fn temperature_changes_confidence_and_round_trips() {
    let mut r = small_router();
    let ids = [10u32, 11, 12];
    let p1 = r.route(&ids).probabilities;
    r.set_temperature(4.0).unwrap();
    let p4 = r.route(&ids).probabilities;
    // Same ranking, flatter distribution, softmax(log p / T).
    let i = r.route(&ids).index;
    assert!(p4[i] < p1[i]);
    let z: f64 = p1.iter().map(|p| p.powf(0.25)).sum();
    for (a, b) in p4.iter().zip(&p1) {
        assert_abs_diff_eq!(*a, b.powf(0.25) / z, epsilon = 1e-12);
    }
    assert!(r.set_temperature(0.0).is_err());
    assert!(r.set_temperature(f64::NAN).is_err());
    let back = Router::from_json(&r.to_json().unwrap()).unwrap();
    assert_eq!(back.temperature(), 4.0);
    assert_eq!(back.route(&ids), r.route(&ids));
    let mut v: serde_json::Value = serde_json::from_slice(&r.to_json().unwrap()).unwrap();
    v["temperature"] = (-1.0).into();
    assert!(Router::from_json(&serde_json::to_vec(&v).unwrap()).is_err());
}

fn toy_docs(n: usize) -> Vec<TokenDoc> {
    // Class a: ids 10/11, b: 12/13, c: 14/15, with some noise from the other classes.
    (0..n)
        .map(|i| {
            let c = i % 3;
            let own = 10 + 2 * c as u32;
            let other = 10 + 2 * ((c + 1 + i / 3 % 2) % 3) as u32;
            let mut ids = vec![own, own + 1, own];
            ids.extend(std::iter::repeat_n(other, i % 4));
            TokenDoc {
                ids,
                label: ["a", "b", "c"][c].into(),
            }
        })
        .collect()
}

#[test]
fn calibration_reaches_the_target_and_is_stored() {
    let docs = toy_docs(300);
    for (target, temp) in [(0.99, false), (0.9, false), (0.99, true)] {
        let mut r = small_router();
        let cal = mome_router::calibrate(
            &mut r,
            &docs,
            &CalibrationConfig {
                target_confident: target,
                fit_temperature: temp,
                by_length: false,
            },
        )
        .unwrap();
        assert_eq!(cal.n, 300);
        assert_eq!(r.threshold(), cal.threshold);
        let confident = docs.iter().filter(|d| r.route(&d.ids).confident).count();
        assert_eq!(confident as f64 / 300.0, cal.confident_fraction);
        assert!(cal.confident_fraction >= target, "{cal:?}");
        // The threshold is the largest that reaches the target: a hair above it falls short.
        let mut above = r.clone();
        above
            .set_threshold((cal.threshold + 1e-12).min(1.0))
            .unwrap();
        let c2 = docs
            .iter()
            .filter(|d| above.route(&d.ids).confident)
            .count();
        assert!(
            cal.threshold == 1.0 || (c2 as f64) < target * 300.0,
            "{cal:?} {c2}"
        );
        if temp {
            assert!(cal.nll <= cal.nll_at_temperature_1 + 1e-12, "{cal:?}");
            assert_eq!(r.temperature(), cal.temperature);
        } else {
            assert_eq!(r.temperature(), 1.0);
        }
        let back = Router::from_json(&r.to_json().unwrap()).unwrap();
        assert_eq!(back.calibration(), Some(&cal));
        assert_eq!(back.threshold(), cal.threshold);
    }
    let mut r = small_router();
    let bad = [TokenDoc {
        ids: vec![10],
        label: "zz".into(),
    }];
    assert!(matches!(
        mome_router::calibrate(&mut r, &bad, &CalibrationConfig::default()),
        Err(RouterError::Params(_))
    ));
    assert!(mome_router::calibrate(&mut r, &[], &CalibrationConfig::default()).is_err());
    let cfg = CalibrationConfig {
        target_confident: 1.5,
        ..CalibrationConfig::default()
    };
    assert!(mome_router::calibrate(&mut r, &docs, &cfg).is_err());
    // Out-of-domain report: ids the router does not know are never confident.
    let rep = mome_router::ood_report(
        &r,
        &[TokenDoc {
            ids: vec![999, 998],
            label: "es".into(),
        }],
    );
    assert_eq!((rep.n, rep.not_confident), (1, 1));
}

#[test]
fn char_ngrams_hash_stably_and_route_text_without_tokenizer() {
    let c = CharNgramConfig {
        n_min: 1,
        n_max: 2,
        n_buckets: 1 << 16,
        lowercase: true,
    };
    // " ab " has 4 characters: 4 unigrams + 3 bigrams.
    assert_eq!(c.bucket_ids("ab").len(), 7);
    assert_eq!(c.bucket_ids("AB"), c.bucket_ids("ab"));
    assert_eq!(c.bucket_ids("  ab \n"), c.bucket_ids("ab"));
    assert!(c.bucket_ids("").is_empty());
    assert!(c.bucket_ids("ab").iter().all(|&b| b < 1 << 16));
    assert_eq!(c.bucket_ids("é").len(), 3 + 2, "characters, not bytes");
    assert!(CharNgramConfig { n_min: 0, ..c }.validate().is_err());
    assert!(CharNgramConfig { n_max: 9, ..c }.validate().is_err());
    assert!(CharNgramConfig { n_buckets: 1, ..c }.validate().is_err());
    // A char router over three "languages" of distinct letters.
    let texts = ["xxx xyx", "qqq qrq", "zzz zwz"];
    let docs: Vec<Vec<u32>> = (0..30).map(|i| c.bucket_ids(texts[i % 3])).collect();
    let refs: Vec<&[u32]> = docs.iter().map(Vec::as_slice).collect();
    let v = Vectorizer::fit(
        mome_router::features::char_feature_config(false),
        &PruneConfig::default(),
        &refs,
    )
    .unwrap();
    let x = v.transform_dense(&refs);
    let y: Array1<usize> = (0..30).map(|i| i % 3).collect();
    let clf = ClassifierParams::new(ClassifierKind::Logreg)
        .fit(&DatasetBase::new(x, y))
        .unwrap();
    let mut r = Router::new(vec!["a".into(), "b".into(), "c".into()], v, clf, 0.4, None).unwrap();
    r.set_feature_kind(FeatureKind::CharNgrams(c)).unwrap();
    assert_eq!(r.route_text("qrq qq").unwrap().label, "b");
    assert!(r.route_text("qrq").unwrap().confident);
    // Token ids need the tokenizer to become text: without one, never confident.
    assert!(!r.route(&[10, 11]).confident);
    let back = Router::from_json(&r.to_json().unwrap()).unwrap();
    assert_eq!(back.feature_kind(), FeatureKind::CharNgrams(c));
    assert_eq!(
        back.route_text("zwz").unwrap(),
        r.route_text("zwz").unwrap()
    );
    // Buckets beyond the configured count are a corrupt file.
    let mut bad: serde_json::Value = serde_json::from_slice(&r.to_json().unwrap()).unwrap();
    bad["features"]["char_ngrams"]["n_buckets"] = 2.into();
    assert!(matches!(
        Router::from_json(&serde_json::to_vec(&bad).unwrap()),
        Err(RouterError::Invalid(_))
    ));
}

#[test]
fn calibration_by_length_sets_one_threshold_per_bin() {
    // Toy inputs have at most 6 known features: one bin (the bin edges are tested in
    // the unit tests of calibrate.rs); longer inputs repeat the own ids.
    let mut docs = toy_docs(300);
    for (i, d) in toy_docs(300).into_iter().enumerate() {
        let own = 10 + 2 * (i % 3) as u32;
        let mut ids = d.ids.clone();
        ids.extend(std::iter::repeat_n(own, 20));
        docs.push(TokenDoc {
            ids,
            label: d.label,
        });
    }
    let mut r = small_router();
    let cal = mome_router::calibrate(
        &mut r,
        &docs,
        &CalibrationConfig {
            target_confident: 0.95,
            fit_temperature: false,
            by_length: true,
        },
    )
    .unwrap();
    assert!(!cal.bins.is_empty(), "{cal:?}");
    assert_eq!(cal.bins.iter().map(|b| b.n).sum::<usize>(), docs.len());
    assert!(cal
        .bins
        .iter()
        .all(|b| b.n >= mome_router::calibrate::MIN_BIN));
    assert_eq!(r.thresholds_by_features().len(), cal.bins.len());
    let confident = docs.iter().filter(|d| r.route(&d.ids).confident).count();
    assert!(confident as f64 >= 0.95 * docs.len() as f64, "{cal:?}");
    assert_eq!(confident as f64 / docs.len() as f64, cal.confident_fraction);
    // Saved and loaded with the bins; set_threshold goes back to one threshold.
    let back = Router::from_json(&r.to_json().unwrap()).unwrap();
    assert_eq!(back.thresholds_by_features(), r.thresholds_by_features());
    assert_eq!(back.calibration(), Some(&cal));
    let mut one = back.clone();
    one.set_threshold(0.5).unwrap();
    assert!(one.thresholds_by_features().is_empty());
    // Bins must increase and thresholds be probabilities.
    let mut v: serde_json::Value = serde_json::from_slice(&r.to_json().unwrap()).unwrap();
    v["thresholds_by_features"] = serde_json::json!([{"min_features": 5, "threshold": 0.5}, {"min_features": 5, "threshold": 0.6}]);
    assert!(matches!(
        Router::from_json(&serde_json::to_vec(&v).unwrap()),
        Err(RouterError::Invalid(_))
    ));
    v["thresholds_by_features"] = serde_json::json!([{"min_features": 1, "threshold": 1.5}]);
    assert!(Router::from_json(&serde_json::to_vec(&v).unwrap()).is_err());
    // Explicit bins pick the threshold of the largest lower bound <= the feature count.
    let mut b = small_router();
    b.set_thresholds_by_features(vec![
        mome_router::FeatureThreshold {
            min_features: 1,
            threshold: 0.2,
        },
        mome_router::FeatureThreshold {
            min_features: 3,
            threshold: 0.99,
        },
    ])
    .unwrap();
    assert_eq!(b.threshold_for(0), b.threshold());
    assert_eq!(b.threshold_for(2), 0.2);
    assert_eq!(b.threshold_for(3), 0.99);
    assert_eq!(b.threshold_for(1000), 0.99);
}

#[test]
fn bench_inputs_and_routing_bench() {
    let (router, samples) = mome_router::import_sklearn(std::path::Path::new(PARAMS)).unwrap();
    // The samples of the scikit-learn export ...
    let seqs = mome_router::data::read_sequences(std::path::Path::new(PARAMS)).unwrap();
    let ids: Vec<Vec<u32>> = samples.iter().map(|s| s.token_ids.clone()).collect();
    assert_eq!(seqs, ids);
    // ... or `{"sequences": [...]}`; anything else is a typed error.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("seqs.json");
    std::fs::write(&p, r#"{"sequences": [[10, 11], [], [12]]}"#).unwrap();
    let seqs = mome_router::data::read_sequences(&p).unwrap();
    assert_eq!(seqs, vec![vec![10, 11], vec![], vec![12]]);
    std::fs::write(&p, r#"{"ids": []}"#).unwrap();
    assert!(matches!(
        mome_router::data::read_sequences(&p),
        Err(RouterError::Params(_))
    ));
    std::fs::write(&p, "{").unwrap();
    assert!(matches!(
        mome_router::data::read_sequences(&p),
        Err(RouterError::Json { .. })
    ));
    assert!(matches!(
        mome_router::data::read_sequences(&dir.path().join("missing.json")),
        Err(RouterError::Io { .. })
    ));
    // The bench routes every sequence once per call and once per batch, per rep.
    let b = mome_router::metrics::bench_routing(&router, &ids, 3);
    assert_eq!((b.sequences, b.reps), (ids.len(), 3));
    let indices: usize = ids.iter().map(|s| router.route(s).index).sum();
    assert_eq!(b.checksum, 3 * indices + 3 * ids.len());
    let mean = ids.iter().map(Vec::len).sum::<usize>() as f64 / ids.len() as f64;
    assert_abs_diff_eq!(b.mean_tokens, mean, epsilon = 1e-12);
    assert!(b.per_call_seq_per_s > 0.0 && b.batch_seq_per_s > 0.0);
    assert_abs_diff_eq!(
        b.per_call_us,
        1e6 / b.per_call_seq_per_s,
        epsilon = 1e-6 * b.per_call_us
    );
}

/// An edit of a JSON file.
type Edit = Box<dyn Fn(&mut serde_json::Value)>;

/// `{:#}` of an error: every message of the chain, once.
fn chain(e: &RouterError) -> String {
    mome_router::error::chain(e)
}

/// A router file (JSON value) of `small_router`, edited by `edit`, loaded from disk.
fn load_edited(edit: impl FnOnce(&mut serde_json::Value)) -> (std::path::PathBuf, RouterError) {
    let mut v: serde_json::Value =
        serde_json::from_slice(&small_router().to_json().unwrap()).unwrap();
    edit(&mut v);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("edited_router.json");
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    let e = Router::load(&p).expect_err("the edited file must be refused");
    (p, e)
}

/// The field named by a (file-wrapped) value error.
fn value_field(e: &RouterError) -> Option<(&str, f64)> {
    match e {
        RouterError::File { source, .. } => value_field(source),
        RouterError::Value { field, value, .. } => Some((field.as_str(), *value)),
        _ => None,
    }
}

#[test]
fn huge_coefficients_are_refused_on_load_naming_file_and_field() {
    // Before: 1e308 coefficients loaded and routed to NaN ("null") probabilities.
    for (path, value) in [
        ("coef", 1e308),
        ("coef", -1e308),
        ("coef", 1.1e100),
        ("intercept", -1e308),
    ] {
        let (file, e) = load_edited(|v| {
            let lin = &mut v["classifier"]["model"]["linear"];
            if path == "coef" {
                lin["coef"][1][4] = value.into();
            } else {
                lin["intercept"][2] = value.into();
            }
        });
        let want = if path == "coef" {
            "classifier.model.linear.coef[1][4]"
        } else {
            "classifier.model.linear.intercept[2]"
        };
        assert_eq!(value_field(&e), Some((want, value)), "{}", chain(&e));
        assert!(matches!(&e, RouterError::File { path, .. } if *path == file));
        let msg = chain(&e);
        assert!(
            msg.starts_with(&format!("{}: invalid router: {want} = ", file.display())),
            "{msg}"
        );
        assert!(msg.contains("1e100"), "the bound is named: {msg}");
    }
    // The bound itself is accepted.
    let mut v: serde_json::Value =
        serde_json::from_slice(&small_router().to_json().unwrap()).unwrap();
    v["classifier"]["model"]["linear"]["coef"][0][0] = 1e100.into();
    assert!(Router::from_json(&serde_json::to_vec(&v).unwrap()).is_ok());
    // Numbers beyond f64 are not JSON serde_json reads: a JSON error with file:LINE.
    let text = String::from_utf8(small_router().to_json().unwrap()).unwrap();
    assert!(text.contains("\"intercept\":["));
    let text = text.replacen("\"intercept\":[", "\"intercept\":[1e999,", 1);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.json");
    std::fs::write(&p, text).unwrap();
    let e = Router::load(&p).unwrap_err();
    assert!(matches!(e, RouterError::Json { line: 1, .. }), "{e:?}");
    let msg = chain(&e);
    assert!(
        msg.starts_with(&format!("{}:1: invalid JSON at column ", p.display())),
        "{msg}"
    );
    assert!(!msg.contains("at line"), "location given once: {msg}");
}

#[test]
fn idf_must_be_positive_and_finite() {
    for bad in [-1.0, 0.0, -1e-300, 1e101] {
        let (_, e) = load_edited(|v| v["features"]["idf"][3] = bad.into());
        assert_eq!(
            value_field(&e),
            Some(("features.idf[3]", bad)),
            "{}",
            chain(&e)
        );
    }
    for bad in [-1.0, 0.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            Vectorizer::new(FeatureConfig::default(), vec![10, 11], vec![1.0, bad]),
            Err(RouterError::Value { .. })
        ));
    }
    // The smallest idf scikit-learn can give (a term in every document) is 1.
    let docs: Vec<Vec<u32>> = vec![vec![10, 11], vec![10], vec![10, 12]];
    let refs: Vec<&[u32]> = docs.iter().map(Vec::as_slice).collect();
    let prune = PruneConfig {
        min_df: 1,
        max_features: None,
    };
    let v = Vectorizer::fit(FeatureConfig::default(), &prune, &refs).unwrap();
    assert_eq!(v.idf()[0], 1.0);
}

#[test]
fn inconsistent_shapes_and_ids_are_refused_naming_the_field() {
    let cases: Vec<(&str, Edit)> = vec![
        (
            "coef[1] has 5 columns",
            Box::new(|v| {
                v["classifier"]["model"]["linear"]["coef"][1]
                    .as_array_mut()
                    .unwrap()
                    .pop();
            }),
        ),
        (
            "classifier.n_features = 7",
            Box::new(|v| v["classifier"]["n_features"] = 7.into()),
        ),
        (
            "features.vocabulary[3] = 10 appears twice",
            Box::new(|v| v["features"]["vocabulary"][3] = 10.into()),
        ),
        (
            "features.vocabulary[5] = 16777216 is not below",
            Box::new(|v| v["features"]["vocabulary"][5] = (1u32 << 24).into()),
        ),
        (
            "calibration.accuracy = 2",
            Box::new(|v| {
                v["calibration"] = serde_json::json!({
                    "method": "in-domain-quantile", "target_confident": 0.99, "n": 10,
                    "temperature": 1.0, "threshold": 0.5, "confident_fraction": 1.0,
                    "accuracy": 2.0, "nll_at_temperature_1": 0.1, "nll": 0.1,
                    "previous_threshold": 0.5, "previous_temperature": 1.0
                })
            }),
        ),
        (
            "thresholds_by_features[0].threshold = -0.5",
            Box::new(|v| {
                v["thresholds_by_features"] =
                    serde_json::json!([{"min_features": 1, "threshold": -0.5}])
            }),
        ),
        (
            "temperature = 0",
            Box::new(|v| v["temperature"] = 0.0.into()),
        ),
    ];
    for (want, edit) in cases {
        let (file, e) = load_edited(|v| edit(v));
        let msg = chain(&e);
        assert!(msg.starts_with(&file.display().to_string()), "{msg}");
        assert!(msg.contains(want), "{want:?} not in {msg:?}");
    }
}

#[test]
fn tree_leaves_must_hold_probabilities() {
    let (x, y) = toy();
    let clf = ClassifierParams::new(ClassifierKind::Tree)
        .fit(&DatasetBase::new(x, y))
        .unwrap();
    let v = Vectorizer::new(
        FeatureConfig::default(),
        vec![10, 11, 12, 13, 14, 15],
        vec![1.0; 6],
    )
    .unwrap();
    let r = Router::new(vec!["a".into(), "b".into(), "c".into()], v, clf, 0.6, None).unwrap();
    let mut file: serde_json::Value = serde_json::from_slice(&r.to_json().unwrap()).unwrap();
    let nodes = file["classifier"]["model"]["tree"]["nodes"]
        .as_array_mut()
        .unwrap();
    let leaf = nodes.iter().position(|n| n.get("leaf").is_some()).unwrap();
    // Before: leaves of 1e308 summed to inf and routed to all-zero probabilities.
    nodes[leaf]["leaf"]["probabilities"] = serde_json::json!([1e308, 1e308, 0.0]);
    let e = Router::from_json(&serde_json::to_vec(&file).unwrap()).unwrap_err();
    let field = format!("classifier.model.tree.nodes[{leaf}].leaf.probabilities[0]");
    assert_eq!(
        value_field(&e),
        Some((field.as_str(), 1e308)),
        "{}",
        chain(&e)
    );
}

/// A two-class router with one feature (id 10, idf 1: the input `[10]` has the
/// feature value 1), so the logits of `[10]` are `coef + intercept`.
fn logit_router(coef: [f64; 2], intercept: [f64; 2]) -> Router {
    use mome_router::classifier::{Classifier, LinearModel, ModelBody};
    let v = Vectorizer::new(FeatureConfig::default(), vec![10], vec![1.0]).unwrap();
    let clf = Classifier {
        params: ValidClassifierParams::Logreg {
            c: 1.0,
            max_iter: 1,
            tol: 1e-4,
        },
        n_classes: 2,
        n_features: 1,
        model: ModelBody::Linear(
            LinearModel::from_coef(&[vec![coef[0]], vec![coef[1]]], &intercept).unwrap(),
        ),
    };
    Router::new(vec!["a".into(), "b".into()], v, clf, 0.5, None).unwrap()
}

fn assert_distribution(p: &[f64]) {
    assert!(p.iter().all(|x| x.is_finite() && *x >= 0.0), "{p:?}");
    assert_abs_diff_eq!(p.iter().sum::<f64>(), 1.0, epsilon = 1e-12);
}

#[test]
fn large_valid_logits_give_finite_probabilities_at_any_temperature() {
    // Logits 0 and 5000: at temperature 1000 they are 0 and 5, so p_b = 1/(1 + e^-5).
    // Before, the temperature was applied to probabilities that had already
    // underflowed to 0 and 1, and gave exactly [0, 1].
    let mut r = logit_router([0.0, 5000.0], [0.0, 0.0]);
    let p = r.route(&[10]).probabilities;
    assert_distribution(&p);
    assert_eq!(p, vec![0.0, 1.0]);
    r.set_temperature(1000.0).unwrap();
    let p = r.route(&[10]).probabilities;
    assert_distribution(&p);
    let pb = 1.0 / (1.0 + (-5.0f64).exp());
    assert_abs_diff_eq!(p[1], pb, epsilon = 1e-12);
    assert_abs_diff_eq!(p[0], 1.0 - pb, epsilon = 1e-12);
    // Saved and loaded, the same.
    let back = Router::from_json(&r.to_json().unwrap()).unwrap();
    assert_eq!(back.route(&[10]).probabilities, p);
    // Logits of +-1e4 through the intercepts, and the largest coefficients allowed
    // (sharpened by the smallest temperature): finite, summing to 1.
    for (coef, intercept) in [
        ([0.0, 0.0], [1e4, -1e4]),
        ([1e100, -1e100], [1e100, -1e100]),
        ([-1e100, -1e100], [-1e100, 1e100]),
    ] {
        let mut r = logit_router(coef, intercept);
        for t in [1.0, 1e-3, 1e3] {
            r.set_temperature(t).unwrap();
            for ids in [&[10u32][..], &[10, 10, 10], &[]] {
                let routed = r.route(ids);
                assert_distribution(&routed.probabilities);
            }
        }
    }
    // Scores beyond f64 (none can come from a valid router) still give a
    // distribution: the infinite ones share the mass, NaN counts as impossible.
    for (mut v, want) in [
        (vec![f64::INFINITY, 0.0, f64::NAN], vec![1.0, 0.0, 0.0]),
        (vec![f64::INFINITY, f64::INFINITY], vec![0.5, 0.5]),
        (vec![f64::NEG_INFINITY, f64::NAN], vec![0.5, 0.5]),
        (vec![1e308, -1e308, 1e308], vec![0.5, 0.0, 0.5]),
    ] {
        mome_router::classifier::softmax_inplace(&mut v);
        assert_eq!(v, want);
    }
    // The temperature path of probabilities (apply_temperature) is log-sum-exp too.
    let mut p = vec![1.0, 0.0, 0.0];
    mome_router::router::apply_temperature(&mut p, 1000.0);
    assert_eq!(p, vec![1.0, 0.0, 0.0]);
}

#[test]
fn import_sklearn_checks_its_numbers_and_names_the_file() {
    let original: serde_json::Value =
        serde_json::from_slice(&std::fs::read(PARAMS).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Edit)> = vec![
        (
            "logistic_regression.coef[2][5] = 1e308",
            Box::new(|v| v["logistic_regression"]["coef"][2][5] = 1e308.into()),
        ),
        (
            "logistic_regression.intercept[0] = -1e308",
            Box::new(|v| v["logistic_regression"]["intercept"][0] = (-1e308).into()),
        ),
        (
            "tfidf.idf[1] = -2",
            Box::new(|v| v["tfidf"]["idf"][1] = (-2.0).into()),
        ),
        (
            "logistic_regression.coef[0] has",
            Box::new(|v| {
                v["logistic_regression"]["coef"][0]
                    .as_array_mut()
                    .unwrap()
                    .pop();
            }),
        ),
    ];
    for (i, (want, edit)) in cases.into_iter().enumerate() {
        let mut v = original.clone();
        edit(&mut v);
        let p = dir.path().join(format!("params_{i}.json"));
        std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
        let e = mome_router::import_sklearn(&p).unwrap_err();
        let msg = chain(&e);
        assert!(
            msg.starts_with(&format!("{}: ", p.display())),
            "names the file: {msg}"
        );
        assert!(msg.contains(want), "{want:?} not in {msg:?}");
    }
    let p = dir.path().join("truncated.json");
    std::fs::write(&p, b"{\"tfidf\": ").unwrap();
    let msg = chain(&mome_router::import_sklearn(&p).unwrap_err());
    assert!(
        msg.starts_with(&format!("{}:1: invalid JSON", p.display())),
        "{msg}"
    );
}
