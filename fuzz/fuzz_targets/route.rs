//! Routing arbitrary token ids (any u32, any length) and arbitrary text with a
//! token-id router and a character n-gram router: probabilities must be a finite
//! distribution and routing deterministic, never a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mome_router::classifier::{Classifier, LinearModel, ModelBody, ValidClassifierParams};
use mome_router::tokenizers::Tokenizer;
use mome_router::{CharNgramConfig, FeatureConfig, FeatureKind, Router, Vectorizer};

const TOKENIZER: &[u8] =
    include_bytes!("../../data/tokenizer/En_De_Fr_Py_Tokenizer/tokenizer.json");

fn linear(n_features: usize) -> Classifier {
    // Deterministic, varied coefficients.
    let coef: Vec<Vec<f64>> = (0..3)
        .map(|c| {
            (0..n_features)
                .map(|j| (((j * 7 + c * 13) % 11) as f64 - 5.0) * 0.7)
                .collect()
        })
        .collect();
    Classifier {
        params: ValidClassifierParams::Logreg {
            c: 1.0,
            max_iter: 1,
            tol: 1e-4,
        },
        n_classes: 3,
        n_features,
        model: ModelBody::Linear(LinearModel::from_coef(&coef, &[0.1, -0.2, 0.05]).unwrap()),
    }
}

fn routers() -> &'static (Router, Router) {
    static R: OnceLock<(Router, Router)> = OnceLock::new();
    R.get_or_init(|| {
        let tok = Tokenizer::from_bytes(TOKENIZER).unwrap();
        let classes = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        // Token ids 0..400 (one-digit ids and BOS/EOS are excluded by the settings).
        let vocab: Vec<u32> = (0..400).collect();
        let idf: Vec<f64> = (0..400).map(|i| 1.0 + (i % 5) as f64 * 0.3).collect();
        let v = Vectorizer::new(FeatureConfig::default(), vocab, idf).unwrap();
        let mut tokens = Router::new(classes.clone(), v, linear(400), 0.5, None).unwrap();
        tokens.attach_tokenizer(tok.clone(), "unchecked").unwrap();
        // Hashed character n-grams, 4096 buckets, every bucket a column.
        let c = CharNgramConfig {
            n_buckets: 4096,
            ..CharNgramConfig::default()
        };
        let vocab: Vec<u32> = (0..4096).collect();
        let v = Vectorizer::new(
            mome_router::features::char_feature_config(true),
            vocab,
            vec![1.5; 4096],
        )
        .unwrap();
        let mut chars = Router::new(classes, v, linear(4096), 0.5, None).unwrap();
        chars.set_feature_kind(FeatureKind::CharNgrams(c)).unwrap();
        chars.set_temperature(0.5).unwrap();
        chars.attach_tokenizer(tok, "unchecked").unwrap();
        (tokens, chars)
    })
}

fn check(r: &mome_router::Routing) {
    assert_eq!(r.probabilities.len(), 3);
    assert!(r.probabilities.iter().all(|p| p.is_finite() && *p >= 0.0));
    let s: f64 = r.probabilities.iter().sum();
    assert!((s - 1.0).abs() < 1e-9, "probabilities sum to {s}");
    assert_eq!(
        r.probabilities[r.index],
        r.probabilities.iter().copied().fold(0.0, f64::max)
    );
}

fuzz_target!(|data: &[u8]| {
    let (tokens, chars) = routers();
    let ids: Vec<u32> = data
        .chunks(4)
        .map(|c| {
            let mut b = [0u8; 4];
            b[..c.len()].copy_from_slice(c);
            // Mostly small ids (in or near the vocabulary), sometimes anything.
            let v = u32::from_le_bytes(b);
            if v & 1 == 0 {
                v % 512
            } else {
                v
            }
        })
        .collect();
    for router in [tokens, chars] {
        let r = router.route(&ids);
        check(&r);
        assert_eq!(router.route(&ids), r);
        let batch = router.route_batch(&[ids.clone(), Vec::new()]);
        assert_eq!(batch[0], r);
        let text = String::from_utf8_lossy(data);
        if let Ok(t) = router.route_text(&text) {
            check(&t);
        }
    }
});
