//! The router jobs as library calls on a tiny fixture (a few documents of the demo
//! corpus per domain, the paper's tokenizer): `run_compare` with held-out sources,
//! the paper's router, the ablation and out-of-class text; `run_train` from JSONL and
//! from token shards, with calibration.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use approx::assert_abs_diff_eq;
use mome_router::compare::{AblationRow, CompareRow};
use mome_router::data::{self, TextDoc};
use mome_router::heldout::false_prediction_share;
use mome_router::params::{DataParams, FeatureSource, ParamGuard};
use mome_router::{
    run_compare, run_train, CompareParams, CompareSummary, EvalReport, Router, RouterError,
    TextNormalization, TrainParams,
};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
const PARAMS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/seed/reference_router_params.json"
);
const DOMAINS: [&str; 4] = ["de", "en", "fr", "py"];

fn tokenizer() -> PathBuf {
    Path::new(REPO).join("data/tokenizer/En_De_Fr_Py_Tokenizer/tokenizer.json")
}

/// The first `n` records of a JSONL file of the repository's data.
fn head(rel: &str, n: usize) -> Vec<serde_json::Value> {
    std::fs::read_to_string(Path::new(REPO).join(rel))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(n)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn write_jsonl(path: &Path, records: &[serde_json::Value]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let text: String = records.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).unwrap();
}

/// Training JSONL (10 documents a domain), held-out sources (2 a domain) and
/// out-of-class text (2 Spanish, 2 Italian documents).
struct Fixture {
    dir: tempfile::TempDir,
    train: Vec<PathBuf>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut train = Vec::new();
        for d in DOMAINS {
            let p = dir.path().join(format!("train/{d}.jsonl"));
            write_jsonl(&p, &head(&format!("data/demo/{d}.jsonl"), 10));
            train.push(p);
            write_jsonl(
                &dir.path().join(format!("heldout/{d}.jsonl")),
                &head(&format!("data/demo/heldout/{d}.jsonl"), 2),
            );
        }
        for l in ["es", "it"] {
            write_jsonl(
                &dir.path().join(format!("ood/{l}.jsonl")),
                &head(&format!("data/ood/{l}.jsonl"), 2),
            );
        }
        Self { dir, train }
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn data(&self) -> DataParams {
        DataParams {
            jsonl: self.train.clone(),
            tokenizer: Some(tokenizer()),
            passage_lengths: vec![16, 64, 1024],
            max_per_class: 100,
            max_features: 3000,
            ..DataParams::default()
        }
    }
}

/// One full comparison (every row, held-out, paper router, ablation, OOD), run once.
fn compared() -> &'static (Fixture, CompareSummary) {
    static RUN: OnceLock<(Fixture, CompareSummary)> = OnceLock::new();
    RUN.get_or_init(|| {
        let f = Fixture::new();
        let job = CompareParams {
            data: f.data(),
            heldout: Some(f.path("heldout")),
            reference_params: Some(PARAMS.into()),
            ablation: true,
            ood: Some(f.path("ood")),
            out_dir: f.path("out"),
            ..CompareParams::default()
        }
        .check()
        .unwrap();
        let summary = run_compare(&job).unwrap();
        (f, summary)
    })
}

const TRAINED: [&str; 5] = ["logreg", "nb", "svm", "tree", "logreg-chars"];
const REGIMES: [&str; 3] = ["in_domain", "heldout_short", "heldout_long"];
const VARIANTS: [&str; 9] = [
    "ours",
    "collapse-whitespace",
    "sublinear-tf",
    "long-passages-only",
    "no-pruning",
    "unbalanced",
    "char-ngrams",
    "paper-recipe",
    "paper-router",
];

fn names(paths: &[PathBuf]) -> BTreeSet<String> {
    paths
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn compare_writes_every_report_file_and_they_hold_the_summary() {
    let (f, s) = compared();
    let out = f.path("out");
    assert_eq!(s.out_dir, out);
    let mut want: BTreeSet<String> = ["compare.md", "compare.json", "ablation.md", "ablation.json"]
        .map(String::from)
        .into();
    for c in TRAINED {
        want.insert(format!("router_{c}.json"));
    }
    for c in TRAINED.iter().chain(&["paper-sklearn"]) {
        for r in REGIMES {
            want.insert(format!("confusion_{c}_{r}.png"));
        }
    }
    for v in &VARIANTS[..8] {
        want.insert(format!("ablation_{v}.json"));
    }
    assert_eq!(names(&s.files), want);
    assert_eq!(s.files.len(), want.len(), "each file once");
    let on_disk: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(names(&on_disk), want, "nothing else in the folder");
    // The files hold what the summary says.
    assert_eq!(
        std::fs::read_to_string(out.join("compare.md")).unwrap(),
        s.markdown
    );
    let rows: Vec<CompareRow> =
        serde_json::from_slice(&std::fs::read(out.join("compare.json")).unwrap()).unwrap();
    assert_eq!(rows, s.rows);
    let ab = s.ablation.as_ref().unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join("ablation.md")).unwrap(),
        ab.markdown
    );
    let arows: Vec<AblationRow> =
        serde_json::from_slice(&std::fs::read(out.join("ablation.json")).unwrap()).unwrap();
    assert_eq!(arows, ab.rows);
    // The summary is a typed, serialisable record.
    let back: CompareSummary = serde_json::from_str(&serde_json::to_string(s).unwrap()).unwrap();
    assert_eq!(&back, s);
    // The routers load and carry the classes; the char row has char features.
    for c in TRAINED {
        let r = Router::load(&out.join(format!("router_{c}.json"))).unwrap();
        assert_eq!(r.classes(), DOMAINS, "{c}");
        assert_eq!(
            matches!(r.feature_kind(), mome_router::FeatureKind::CharNgrams(_)),
            c == "logreg-chars"
        );
    }
}

/// Accuracy, support, macro F1 and confusion of a report agree with each other.
fn check_report(what: &str, e: &EvalReport, n: usize) {
    assert_eq!(e.n, n, "{what}: n");
    let total: usize = e.confusion.values().flat_map(|r| r.values()).sum();
    assert_eq!(total, n, "{what}: confusion total");
    let correct: usize = e
        .confusion
        .iter()
        .map(|(t, r)| r.get(t).copied().unwrap_or(0))
        .sum();
    assert_abs_diff_eq!(e.accuracy, correct as f64 / n as f64, epsilon = 1e-12);
    for (label, m) in &e.per_class {
        let support: usize = e.confusion.get(label).map_or(0, |r| r.values().sum());
        assert_eq!(m.support, support, "{what}: support of {label}");
    }
    let mean_f1 = e.per_class.values().map(|m| m.f1).sum::<f64>() / e.per_class.len() as f64;
    assert_abs_diff_eq!(e.macro_f1, mean_f1, epsilon = 1e-12);
    assert!(
        e.unknown_labels.is_empty(),
        "{what}: {:?}",
        e.unknown_labels
    );
}

/// Texts of the fixture's files, labelled by file stem.
fn texts(files: &[PathBuf]) -> Vec<TextDoc> {
    data::read_texts(files).unwrap()
}

#[test]
fn compare_rows_score_the_split_and_the_heldout_passages() {
    let (f, s) = compared();
    assert_eq!(s.classes, DOMAINS);
    let got: Vec<&str> = s.rows.iter().map(|r| r.classifier.as_str()).collect();
    assert_eq!(got, [&TRAINED[..], &["paper-sklearn"]].concat());
    // The sizes of the regimes, computed here from the inputs.
    let (tok, _) = mome_data::tokenizer::load_tokenizer(&tokenizer()).unwrap();
    let norm = TextNormalization::default();
    let docs = data::tokenize(&tok, norm, &texts(&f.train)).unwrap();
    let (_, test) = data::split(&docs, |d| d.label.as_str(), 0.2, 0);
    assert_eq!(test.len(), 8, "2 of the 10 documents of each domain");
    let n_in = data::token_passages(&test, 1024, 8).len();
    let held = texts(&data::jsonl_files(&f.path("heldout")).unwrap());
    let n_short = data::short_text_passages(&held, &["py"], 0).len();
    let n_long =
        data::token_passages(&data::tokenize(&tok, norm, &held).unwrap(), 1024, 1024).len();
    assert!(
        n_in >= 8 && n_short > 50 && n_long >= 4,
        "{n_in} {n_short} {n_long}"
    );
    for r in &s.rows {
        let c = &r.classifier;
        check_report(
            &format!("{c} in-domain"),
            r.in_domain.as_ref().unwrap(),
            n_in,
        );
        check_report(
            &format!("{c} short"),
            r.heldout_short.as_ref().unwrap(),
            n_short,
        );
        check_report(
            &format!("{c} long"),
            r.heldout_long.as_ref().unwrap(),
            n_long,
        );
        assert_eq!(r.train_seconds.is_some(), c != "paper-sklearn", "{c}");
    }
    // Our logistic regression separates the four domains, short passages included.
    let logreg = s.row("logreg").unwrap();
    for (regime, e) in logreg.regimes() {
        eprintln!(
            "logreg {regime}: accuracy {:.4}, macro F1 {:.4}",
            e.accuracy, e.macro_f1
        );
    }
    assert!(logreg.in_domain.as_ref().unwrap().accuracy >= 0.95);
    assert!(logreg.heldout_long.as_ref().unwrap().accuracy >= 0.95);
    assert!(logreg.heldout_short.as_ref().unwrap().macro_f1 >= 0.8);
    // One figure per row and regime, the matrix in class order.
    assert_eq!(s.confusion.len(), s.rows.len() * 3);
    for fig in &s.confusion {
        let row = s.row(&fig.classifier).unwrap();
        let (_, e) = row.regimes().find(|(t, _)| *t == fig.regime).unwrap();
        assert_eq!(fig.matrix, e.confusion_matrix(&s.classes));
        let per_row: Vec<usize> = fig.matrix.iter().map(|r| r.iter().sum()).collect();
        let support: Vec<usize> = s
            .classes
            .iter()
            .map(|c| e.per_class.get(c).map_or(0, |m| m.support))
            .collect();
        assert_eq!(per_row, support, "{} {}", fig.classifier, fig.regime);
        assert_eq!(
            fig.path,
            s.out_dir
                .join(format!("confusion_{}_{}.png", fig.classifier, fig.regime))
        );
        let png = std::fs::read(&fig.path).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 400);
    }
    // The training passages: at most 100 a class, balanced.
    assert_eq!(s.train_passages, 400);
    assert_eq!(s.train_config.passage_lengths, vec![16, 64, 1024]);
}

#[test]
fn compare_markdown_has_one_table_per_regime_with_every_row() {
    let (_, s) = compared();
    let md = &s.markdown;
    assert!(md.starts_with(
        "# Router comparison\n\nTraining: 400 passages (lengths [16, 64, 1024], balanced=true, \
         collapse_whitespace=false, sublinear_tf=false); classes (row/column order of the PNGs): \
         0=de, 1=en, 2=fr, 3=py\n\n"
    ));
    let sections: Vec<&str> = md.split("\n## ").skip(1).collect();
    assert_eq!(sections.len(), 3);
    for (section, get) in sections.iter().zip([
        (|r: &CompareRow| r.in_domain.clone()) as fn(&CompareRow) -> Option<EvalReport>,
        |r| r.heldout_short.clone(),
        |r| r.heldout_long.clone(),
    ]) {
        assert!(section.contains(
            "| classifier | n | accuracy | macro P | macro R | macro F1 | F1 de | F1 en | F1 fr | F1 py | train s | seq/s |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n"
        ));
        for r in &s.rows {
            let e = get(r).unwrap();
            let line = format!(
                "| {} | {} | {:.4} | {:.4} | {:.4} | {:.4} | ",
                r.classifier, e.n, e.accuracy, e.macro_precision, e.macro_recall, e.macro_f1
            );
            assert!(section.contains(&line), "{line} missing in\n{section}");
        }
        assert_eq!(section.matches("\n| ").count(), 1 + s.rows.len());
    }
    assert!(sections[0].starts_with("in-domain test (20% of documents, 1024-token passages)"));
    assert!(md.contains("| paper-sklearn | "));
    assert!(md.contains(" | - | "), "imported row: no training seconds");
}

#[test]
fn ablation_rows_cover_every_variant_and_agree_with_the_comparison() {
    let (f, s) = compared();
    let ab = s.ablation.as_ref().unwrap();
    let got: Vec<&str> = ab.rows.iter().map(|r| r.variant.as_str()).collect();
    assert_eq!(got, VARIANTS);
    let ours = &ab.rows[0];
    // `ours` is the comparison's logreg row: same split, settings and router.
    let logreg = s.row("logreg").unwrap();
    for (a, b) in [
        (&ours.in_domain, &logreg.in_domain),
        (&ours.heldout_short, &logreg.heldout_short),
        (&ours.heldout_long, &logreg.heldout_long),
    ] {
        let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
        assert_eq!(a.confusion, b.confusion);
        assert_abs_diff_eq!(a.macro_f1, b.macro_f1, epsilon = 1e-15);
    }
    assert_eq!(ours.train_passages, Some(s.train_passages));
    let ood = texts(&data::jsonl_files(&f.path("ood")).unwrap());
    let n_ood_short = data::short_text_passages(&ood, &[], 0).len();
    for r in &ab.rows {
        let v = &r.variant;
        let imported = v == "paper-router";
        assert_eq!(r.train_passages.is_none(), imported, "{v}");
        assert_eq!(r.train_seconds.is_none(), imported, "{v}");
        if !imported {
            let router = Router::load(&s.out_dir.join(format!("ablation_{v}.json"))).unwrap();
            assert_eq!(router.vectorizer().n_features(), r.n_features, "{v}");
        }
        let hs = r.heldout_short.as_ref().unwrap();
        assert_eq!(
            r.short_errors_false_py,
            false_prediction_share(hs, "py"),
            "{v}"
        );
        // Out-of-class and held-out confidence: counts and fractions agree.
        for (what, o) in [
            ("ood short", &r.ood_short),
            ("ood long", &r.ood_long),
            ("held-out short", &r.heldout_short_confidence),
            ("held-out long", &r.heldout_long_confidence),
        ] {
            let o = o.as_ref().unwrap_or_else(|| panic!("{v}: {what} missing"));
            assert!(o.n > 0, "{v}: {what}");
            assert_abs_diff_eq!(
                o.not_confident_fraction,
                o.not_confident as f64 / o.n as f64,
                epsilon = 1e-12
            );
            let confident: usize = o.confident_predictions.values().sum();
            assert_eq!(confident + o.not_confident, o.n, "{v}: {what}");
        }
        assert_eq!(r.ood_short.as_ref().unwrap().n, n_ood_short, "{v}");
        assert_eq!(r.heldout_short_confidence.as_ref().unwrap().n, hs.n, "{v}");
    }
    // Variants change what they say they change.
    let by = |v: &str| ab.rows.iter().find(|r| r.variant == v).unwrap();
    assert!(by("no-pruning").n_features > ours.n_features);
    assert!(by("long-passages-only").train_passages < ours.train_passages);
    assert!(ab
        .markdown
        .starts_with("# Router robustness ablation (logistic regression)\n\n"));
    assert!(ab
        .markdown
        .contains(&format!(" from {}", f.path("ood").display())));
    for v in VARIANTS {
        assert!(ab.markdown.contains(&format!("\n| {v} | ")), "{v}");
        assert!(ab.markdown.contains(&format!("* `{v}`: ")), "{v}");
    }
}

#[test]
fn ood_summary_of_the_logreg_router_is_the_ablation_measurement() {
    let (f, s) = compared();
    let router =
        Router::load_with_tokenizer(&s.out_dir.join("router_logreg.json"), &tokenizer()).unwrap();
    let ood = texts(&data::jsonl_files(&f.path("ood")).unwrap());
    let sum = mome_router::ood::ood_summary(&router, &ood, &[], 0).unwrap();
    assert_eq!(sum.classes, DOMAINS);
    assert_eq!(
        (sum.threshold, sum.temperature, sum.calibrated),
        (0.5, 1.0, false)
    );
    for regime in [&sum.short, &sum.long_1024] {
        let keys: Vec<&str> = regime.keys().map(String::as_str).collect();
        assert_eq!(keys, ["all", "es", "it"]);
        assert_eq!(regime["all"].n, regime["es"].n + regime["it"].n);
        assert_eq!(
            regime["all"].not_confident,
            regime["es"].not_confident + regime["it"].not_confident
        );
    }
    // The ablation's `ours` is the same router, measured on the same passages.
    let ours = &s.ablation.as_ref().unwrap().rows[0];
    assert_eq!(ours.ood_short.as_ref(), Some(&sum.short["all"]));
    assert_eq!(ours.ood_long.as_ref(), Some(&sum.long_1024["all"]));
}

#[test]
fn compare_params_defaults_and_checks() {
    let d = CompareParams::default();
    assert_eq!(d.test_fraction, 0.2);
    assert_eq!(d.code_labels, ["py"]);
    assert!(d.char_row && !d.ablation);
    assert_eq!(d.data, DataParams::default());
    // From JSON (or TOML) with the defaults for what is left out.
    let p: CompareParams =
        serde_json::from_str(r#"{"data": {"shards": "s", "features": "chars"}, "out_dir": "o"}"#)
            .unwrap();
    assert_eq!(p.data.features, FeatureSource::Chars);
    assert_eq!(p.test_fraction, 0.2);
    let job = p.check().unwrap();
    assert_eq!(job.out_dir(), Path::new("o"));
    assert!(job.data().train_config().char_ngrams.is_some());
    assert!(serde_json::from_str::<CompareParams>(r#"{"out": "o"}"#).is_err());
    let params_err = |p: CompareParams| matches!(p.check(), Err(RouterError::Params(_)));
    for tf in [0.0, 1.0, f64::NAN] {
        assert!(params_err(CompareParams {
            test_fraction: tf,
            ..p.clone()
        }));
    }
    assert!(params_err(CompareParams {
        out_dir: PathBuf::new(),
        ..p.clone()
    }));
    assert!(params_err(CompareParams {
        data: DataParams::default(),
        ..p
    }));
}

#[test]
fn run_train_from_jsonl_calibrates_and_saves_the_router() {
    let f = Fixture::new();
    let out = f.path("router.json");
    let job = TrainParams {
        data: f.data(),
        classifier: "nb".parse().unwrap(),
        calibrate: Some(0.95),
        calibration_fraction: 0.2,
        out: out.clone(),
        ..TrainParams::default()
    }
    .check()
    .unwrap();
    let s = run_train(&job).unwrap();
    assert_eq!(s.out, out);
    assert_eq!(s.classes, DOMAINS);
    let cal = s.calibration.as_ref().unwrap();
    assert!(cal.confident_fraction >= 0.95, "{cal:?}");
    assert_eq!(cal.target_confident, 0.95);
    assert_eq!(s.threshold, cal.threshold);
    let r = Router::load(&out).unwrap();
    assert_eq!(r.classes(), DOMAINS);
    assert_eq!(r.threshold(), s.threshold);
    assert_eq!(r.calibration(), Some(cal));
    assert_eq!(
        r.classifier().params.kind(),
        mome_router::ClassifierKind::Nb
    );
    assert_eq!(r.vectorizer().n_features(), s.stats.n_features);
    // 8 of the 10 documents of each domain trained it: balanced passages.
    let per_class: Vec<usize> = s.stats.passages_per_class.iter().map(|p| p.1).collect();
    assert!(
        per_class.iter().all(|&n| n == per_class[0] && n <= 100),
        "{per_class:?}"
    );
    let back: mome_router::TrainSummary =
        serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(back, s);
    // Bad settings are refused before any work.
    for bad in [
        TrainParams {
            calibrate: Some(1.5),
            ..job.params().clone()
        },
        TrainParams {
            calibrate: Some(0.9),
            calibration_fraction: 1.0,
            ..job.params().clone()
        },
        TrainParams {
            out: PathBuf::new(),
            ..job.params().clone()
        },
    ] {
        assert!(
            matches!(bad.check(), Err(RouterError::Params(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn run_train_from_shards_checks_the_tokenizer_and_calibrates_on_validation() {
    let f = Fixture::new();
    let balanced = f.path("balanced");
    for d in DOMAINS {
        let recs = head(&format!("data/demo/{d}.jsonl"), 12);
        write_jsonl(&balanced.join(format!("train/{d}.jsonl")), &recs[..9]);
        write_jsonl(&balanced.join(format!("validation/{d}.jsonl")), &recs[9..]);
    }
    let (tok, sha) = mome_data::tokenizer::load_tokenizer(&tokenizer()).unwrap();
    let opts = mome_data::encode::EncodeOptions {
        seq_len: 256,
        ..mome_data::encode::EncodeOptions::for_tokenizer(&tok)
    };
    let shards = f.path("shards");
    mome_data::encode::encode_dir(&balanced, &tok, &sha, &opts, &shards).unwrap();
    let params = TrainParams {
        data: DataParams {
            shards: Some(shards.clone()),
            passage_lengths: vec![16, 64, 256],
            max_per_class: 100,
            ..DataParams::default()
        },
        calibrate: Some(0.9),
        out: f.path("router.json"),
        ..TrainParams::default()
    };
    let s = run_train(&params.check().unwrap()).unwrap();
    assert_eq!(s.classes, DOMAINS);
    let cal = s.calibration.unwrap();
    // Calibrated on the validation split: passages of 3 documents a domain.
    let valid = data::read_shards(&shards, "validation").unwrap();
    let n = mome_router::calibrate::calibration_passages(&valid, &[16, 64, 256], 250, 0).len();
    assert_eq!(cal.n, n);
    assert!(cal.confident_fraction >= 0.9);
    let r = Router::load(&f.path("router.json")).unwrap();
    assert_eq!(r.tokenizer_sha256(), Some(sha.as_str()));
    // A tokenizer of another hash is refused.
    let other = f.path("other_tokenizer.json");
    let mut t = std::fs::read_to_string(tokenizer()).unwrap();
    t.push('\n');
    std::fs::write(&other, t).unwrap();
    let mut bad = params.clone();
    bad.data.tokenizer = Some(other);
    let e = run_train(&bad.check().unwrap()).unwrap_err();
    assert!(
        matches!(
            e,
            RouterError::Data(mome_data::Error::TokenizerMismatch { .. })
        ),
        "{e}"
    );
}
