//! The invariants of the router fuzz targets, one function per target. Shared by
//! the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`, `#[path]`-included) and by the
//! corpus replay of plain `cargo test -p mome-router --test fuzz_replay`, which runs
//! every file of `fuzz/seeds/<target>/` and `fuzz/regressions/<target>/` through
//! the same function (no cargo-fuzz, no nightly). A violated invariant panics.

use std::sync::OnceLock;

use mome_router::classifier::{Classifier, LinearModel, ModelBody, ValidClassifierParams};
use mome_router::lines::{
    route_lines_each, InvalidUtf8, LineOutcome, LineProblem, LineRecord, RouteLinesParams,
    RoutedLine, DEFAULT_MAX_LINE_BYTES,
};
use mome_router::params::ParamGuard;
use mome_router::tokenizers::Tokenizer;
use mome_router::{CharNgramConfig, FeatureConfig, FeatureKind, Router, RouterError, Vectorizer};

const TOKENIZER: &[u8] = include_bytes!("../data/tokenizer/En_De_Fr_Py_Tokenizer/tokenizer.json");

/// Probabilities must be a finite distribution over `k` classes.
fn check_distribution(p: &[f64], k: usize) {
    assert_eq!(p.len(), k);
    assert!(
        p.iter().all(|x| x.is_finite() && *x >= 0.0),
        "not a finite distribution: {p:?}"
    );
    let s: f64 = p.iter().sum();
    assert!((s - 1.0).abs() < 1e-9, "probabilities sum to {s}: {p:?}");
}

/// `router_load`: arbitrary bytes give a typed error or a router that routes
/// (finite distributions), serialises and loads again to the same routing.
pub fn router_load(data: &[u8]) {
    let router = match Router::from_json(data) {
        Ok(r) => r,
        Err(e) => {
            // A typed error with a message (never empty).
            assert!(!mome_router::error::chain(&e).is_empty());
            return;
        }
    };
    let k = router.classes().len();
    let seqs: [&[u32]; 4] = [&[], &[1, 2], &[10, 11, 12, 13, 10_000], &[u32::MAX, 0, 7]];
    for s in seqs {
        let r = router.route(s);
        assert!(r.index < k);
        check_distribution(&r.probabilities, k);
    }
    let bytes = router.to_json().expect("a loaded router serialises");
    let back = Router::from_json(&bytes).expect("a saved router loads again");
    for s in seqs {
        assert_eq!(back.route(s), router.route(s));
    }
}

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

/// A token-id router and a char n-gram router (temperature 0.5), both with the
/// seed tokenizer attached.
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

fn check_routing(r: &mome_router::Routing) {
    check_distribution(&r.probabilities, 3);
    assert_eq!(
        r.probabilities[r.index],
        r.probabilities.iter().copied().fold(0.0, f64::max)
    );
}

/// `route`: arbitrary token ids (any u32, mostly small) and text, routed single and
/// batched: finite distributions, deterministic.
pub fn route(data: &[u8]) {
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
        check_routing(&r);
        assert_eq!(router.route(&ids), r);
        let batch = router.route_batch(&[ids.clone(), Vec::new()]);
        assert_eq!(batch[0], r);
        let text = String::from_utf8_lossy(data);
        if let Ok(t) = router.route_text(&text) {
            check_routing(&t);
        }
    }
}

fn letters() -> &'static Router {
    static R: OnceLock<Router> = OnceLock::new();
    R.get_or_init(|| mome_router::lines::tests_support::letters_router().unwrap())
}

/// `route_lines` (the line handling of `mome route`): the first byte picks the
/// invalid-UTF-8 mode and the line cap, the rest is the stream. One record per
/// line, numbered 1, 2, …; each line routed exactly as its text alone (lossily
/// decoded in `lossy` mode, flagged), or an error record of the right kind; `fail`
/// stops at the first bad line, naming it, after the records of the lines before.
pub fn route_lines(data: &[u8]) {
    let Some((&mode_byte, input)) = data.split_first() else {
        return;
    };
    let mode = InvalidUtf8::ALL[usize::from(mode_byte % 3)];
    let max = if mode_byte >= 240 {
        DEFAULT_MAX_LINE_BYTES
    } else {
        1 + usize::from(mode_byte / 3) * 3
    };
    let job = RouteLinesParams {
        invalid_utf8: mode,
        max_line_bytes: max,
    }
    .check()
    .unwrap();
    let router = letters();
    let mut recs: Vec<LineRecord> = Vec::new();
    let res = route_lines_each(router, input, "fuzz", &job, |r| {
        recs.push(r);
        Ok(())
    });
    // The lines as `BufRead::split(b'\n')` sees them (no empty line after a final \n).
    let mut lines: Vec<(&[u8], bool)> = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                lines.push((&rest[..i], true));
                rest = &rest[i + 1..];
            }
            None => {
                lines.push((rest, false));
                rest = &[];
            }
        }
    }
    // What each line must give: Ok(routed text, lossy) or Err(problem).
    let expected = |i: usize| -> Result<(String, bool), LineProblem> {
        let (raw, newline) = lines[i];
        if raw.len() > max {
            return Err(LineProblem::TooLong);
        }
        let content = if newline {
            raw.strip_suffix(b"\r").unwrap_or(raw)
        } else {
            raw
        };
        match std::str::from_utf8(content) {
            Ok(s) => Ok((s.to_string(), false)),
            Err(_) if mode == InvalidUtf8::Lossy => {
                Ok((String::from_utf8_lossy(content).into_owned(), true))
            }
            Err(_) => Err(LineProblem::InvalidUtf8),
        }
    };
    for (i, rec) in recs.iter().enumerate() {
        assert_eq!(rec.line, i as u64 + 1);
        match (&rec.outcome, expected(i)) {
            (LineOutcome::Routed(got), Ok((text, lossy))) => {
                let want = RoutedLine::new(router, &router.route_text(&text).unwrap(), lossy);
                assert_eq!(got, &want, "line {}", rec.line);
                let p: Vec<f64> = got.probabilities.values().copied().collect();
                check_distribution(&p, 2);
            }
            (LineOutcome::Failed(f), Err(problem)) => {
                assert_eq!(f.error, problem, "line {}", rec.line);
                assert_ne!(mode, InvalidUtf8::Fail, "fail mode writes no error record");
            }
            (got, want) => panic!("line {}: {got:?}, expected {want:?}", rec.line),
        }
        let json = serde_json::to_string(rec).unwrap();
        let back: LineRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(&back, rec);
    }
    match res {
        Ok(summary) => {
            assert_eq!(recs.len(), lines.len());
            assert_eq!(summary.lines, lines.len() as u64);
            assert_eq!(summary.routed + summary.errors, summary.lines);
            if mode == InvalidUtf8::Fail {
                assert_eq!(summary.errors, 0);
            }
        }
        Err(RouterError::Line { line, name, .. }) => {
            assert_eq!(mode, InvalidUtf8::Fail);
            assert_eq!(name, "fuzz");
            assert_eq!(line, recs.len() as u64 + 1);
            assert!(expected(recs.len()).is_err(), "line {line} is not bad");
        }
        Err(e) => panic!("unexpected error {e:?}"),
    }
}

/// `import_sklearn`: arbitrary bytes as a scikit-learn router export give a typed
/// error naming the file, or a router that routes its own samples to finite
/// distributions, saves and loads again.
pub fn import_sklearn(data: &[u8]) {
    let path = std::env::temp_dir().join(format!("mome-fuzz-sklearn-{}.json", std::process::id()));
    std::fs::write(&path, data).expect("scratch write");
    let (router, samples) = match mome_router::import::import_sklearn(&path) {
        Ok(r) => r,
        Err(e) => {
            let msg = mome_router::error::chain(&e);
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            return;
        }
    };
    let k = router.classes().len();
    for s in samples.iter().take(64) {
        check_distribution(&router.route(&s.token_ids).probabilities, k);
    }
    assert!(
        mome_router::import::max_abs_error(&router, &samples[..samples.len().min(64)]).is_finite()
    );
    let bytes = router.to_json().expect("an imported router serialises");
    Router::from_json(&bytes).expect("an imported router loads again");
}
