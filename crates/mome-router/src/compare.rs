//! The router comparison (`mome router compare`, the pipeline's router stage): every
//! classifier trained on the same split, scored in-domain and on held-out sources,
//! with a Markdown table, JSON rows, the routers and confusion-matrix PNGs; and,
//! optionally, the robustness ablation (logistic-regression variants that each undo
//! one of our choices).
//!
//! [`CompareParams`] (unchecked, every default in its [`Default`]) ->
//! [`ParamGuard::check`] -> [`CompareJob`] -> [`run_compare`] -> [`CompareSummary`].
//!
//! Files written in `out_dir`: `compare.md`, `compare.json` (the [`CompareRow`]s),
//! `router_<classifier>.json`, `confusion_<classifier>_<regime>.png` (regime
//! `in_domain`, `heldout_short`, `heldout_long`); with the ablation also
//! `ablation.md`, `ablation.json` (the [`AblationRow`]s) and
//! `ablation_<variant>.json`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::calibrate::{ood_report, OodReport};
use crate::classifier::{ClassifierKind, ClassifierParams};
use crate::data::{self, TextDoc, TokenDoc};
use crate::error::{Result, RouterError};
use crate::features::CharNgramConfig;
use crate::heldout::{false_prediction_share, renormalised, Heldout};
use crate::import::import_sklearn;
use crate::metrics::{evaluate_router, EvalReport};
use crate::ood::{ood_passages, LONG_PASSAGE};
use crate::params::{DataParams, DataSpec, ParamGuard};
use crate::router::Router;
use crate::train::{fit_router_with, prepare_passages, TrainConfig};

/// Shortest in-domain test passage (the last piece of a document), in tokens.
const MIN_TEST_PASSAGE: usize = 8;

/// Settings of a comparison (unchecked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompareParams {
    /// Training data and features, shared by every row.
    pub data: DataParams,
    /// Fraction of the documents (per label) held out for the in-domain test.
    pub test_fraction: f64,
    /// Folder of held-out JSONL files from other sources (label = file stem): adds
    /// the short-passage and 1024-token-passage regimes (needs a tokenizer).
    pub heldout: Option<PathBuf>,
    /// Labels whose short held-out passages are cut by lines (code).
    pub code_labels: Vec<String>,
    /// The paper's scikit-learn export, added as a row.
    pub reference_params: Option<PathBuf>,
    /// Add the character n-gram logistic regression row (with token-id features and
    /// a tokenizer).
    pub char_row: bool,
    /// Robustness ablation: logistic-regression variants on every regime.
    pub ablation: bool,
    /// Folder of out-of-class JSONL (e.g. `data/ood`): not-confident fractions in
    /// the ablation table.
    pub ood: Option<PathBuf>,
    /// Output folder (created).
    pub out_dir: PathBuf,
}

impl Default for CompareParams {
    fn default() -> Self {
        Self {
            data: DataParams::default(),
            test_fraction: 0.2,
            heldout: None,
            code_labels: vec!["py".into()],
            reference_params: None,
            char_row: true,
            ablation: false,
            ood: None,
            out_dir: PathBuf::new(),
        }
    }
}

/// A checked [`CompareParams`]: only [`ParamGuard::check`] makes one.
#[derive(Debug, Clone, PartialEq)]
pub struct CompareJob {
    params: CompareParams,
    data: DataSpec,
}

impl ParamGuard for CompareParams {
    type Checked = CompareJob;
    type Error = RouterError;

    fn check(&self) -> Result<CompareJob> {
        let data = self.data.check()?;
        if !(self.test_fraction > 0.0 && self.test_fraction < 1.0) {
            return Err(RouterError::Params(format!(
                "test fraction {} must be in (0, 1)",
                self.test_fraction
            )));
        }
        if self.out_dir.as_os_str().is_empty() {
            return Err(RouterError::Params(
                "give the output folder (--out-dir)".into(),
            ));
        }
        Ok(CompareJob {
            params: self.clone(),
            data,
        })
    }
}

impl CompareJob {
    /// The parameters it was checked from.
    pub fn params(&self) -> &CompareParams {
        &self.params
    }
    /// The checked training data.
    pub fn data(&self) -> &DataSpec {
        &self.data
    }
    /// The output folder.
    pub fn out_dir(&self) -> &Path {
        &self.params.out_dir
    }
}

/// One classifier of the comparison (one element of `compare.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompareRow {
    /// `logreg`, `nb`, `svm`, `tree`, `logreg-chars` or `paper-sklearn`.
    pub classifier: String,
    /// Seconds to fit features and classifier (`None`: imported).
    pub train_seconds: Option<f64>,
    /// In-domain test: the held-out documents as 1024-token passages.
    pub in_domain: Option<EvalReport>,
    /// Held-out sources, short passages.
    pub heldout_short: Option<EvalReport>,
    /// Held-out sources, 1024-token passages.
    pub heldout_long: Option<EvalReport>,
}

impl CompareRow {
    /// The regimes that were scored, as `(tag, report)`; the tag names the PNG.
    pub fn regimes(&self) -> impl Iterator<Item = (&'static str, &EvalReport)> {
        [
            ("in_domain", &self.in_domain),
            ("heldout_short", &self.heldout_short),
            ("heldout_long", &self.heldout_long),
        ]
        .into_iter()
        .filter_map(|(tag, e)| e.as_ref().map(|e| (tag, e)))
    }
}

/// One variant of the ablation (one element of `ablation.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AblationRow {
    /// Short name (`ours`, `sublinear-tf`, ..., `paper-router`).
    pub variant: String,
    /// What it changes.
    pub description: String,
    /// Training passages (`None`: imported).
    pub train_passages: Option<usize>,
    /// Feature columns.
    pub n_features: usize,
    /// Seconds to fit (`None`: imported).
    pub train_seconds: Option<f64>,
    /// In-domain test.
    pub in_domain: Option<EvalReport>,
    /// Held-out sources, short passages.
    pub heldout_short: Option<EvalReport>,
    /// Held-out sources, 1024-token passages.
    pub heldout_long: Option<EvalReport>,
    /// Share of the short-passage errors that are a false "py" (the paper's failure).
    pub short_errors_false_py: Option<f64>,
    /// Out-of-class short passages: how many are routed not confident.
    pub ood_short: Option<OodReport>,
    /// Out-of-class 1024-token passages.
    pub ood_long: Option<OodReport>,
    /// The cost side: in-domain held-out passages routed not confident.
    pub heldout_short_confidence: Option<OodReport>,
    /// The same on the 1024-token held-out passages.
    pub heldout_long_confidence: Option<OodReport>,
}

/// The ablation's rows and its Markdown table (`ablation.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AblationSummary {
    /// One row per variant, the imported paper router last.
    pub rows: Vec<AblationRow>,
    /// The contents of `ablation.md`.
    pub markdown: String,
}

/// One confusion-matrix PNG.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfusionFigure {
    /// The row's classifier.
    pub classifier: String,
    /// `in_domain`, `heldout_short` or `heldout_long`.
    pub regime: String,
    /// `matrix[true][predicted]`, both in [`CompareSummary::classes`] order.
    pub matrix: Vec<Vec<usize>>,
    /// The PNG.
    pub path: PathBuf,
}

/// Everything a comparison produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompareSummary {
    /// The output folder.
    pub out_dir: PathBuf,
    /// Class names (row / column order of the confusion matrices).
    pub classes: Vec<String>,
    /// Training passages (shared by every trained row).
    pub train_passages: usize,
    /// The training settings of the rows (the char row: with char n-grams).
    pub train_config: TrainConfig,
    /// One row per classifier (`compare.json`).
    pub rows: Vec<CompareRow>,
    /// The confusion matrices drawn.
    pub confusion: Vec<ConfusionFigure>,
    /// The ablation, when asked for.
    pub ablation: Option<AblationSummary>,
    /// The contents of `compare.md`.
    pub markdown: String,
    /// Every file written, in order.
    pub files: Vec<PathBuf>,
}

impl CompareSummary {
    /// The row of a classifier.
    pub fn row(&self, classifier: &str) -> Option<&CompareRow> {
        self.rows.iter().find(|r| r.classifier == classifier)
    }
}

/// What the rows and the ablation share.
struct Prepared<'a> {
    job: &'a CompareJob,
    cfg: &'a TrainConfig,
    train_docs: Vec<TokenDoc>,
    test_docs: Vec<TokenDoc>,
    /// The same split of the texts (JSONL input only).
    texts_split: Option<(Vec<TextDoc>, Vec<TextDoc>)>,
    sha: Option<String>,
    tok: Option<Tokenizer>,
    heldout: Option<Heldout>,
}

impl Prepared<'_> {
    fn save(&self, router: &Router, name: &str, files: &mut Vec<PathBuf>) -> Result<()> {
        let p = self.job.out_dir().join(name);
        router.save(&p)?;
        files.push(p);
        Ok(())
    }

    /// Held-out scores (short, long), when there are held-out texts and a tokenizer.
    fn heldout_eval(&self, router: &Router) -> Result<(Option<EvalReport>, Option<EvalReport>)> {
        match (&self.heldout, &self.tok) {
            (Some(h), Some(tok)) => {
                let (s, l) = h.evaluate(router, tok)?;
                Ok((Some(s), Some(l)))
            }
            _ => Ok((None, None)),
        }
    }

    /// Held-out confidence (short, long), when there are held-out texts and a tokenizer.
    fn heldout_confidence(
        &self,
        router: &Router,
    ) -> Result<(Option<OodReport>, Option<OodReport>)> {
        match (&self.heldout, &self.tok) {
            (Some(h), Some(tok)) => {
                let (s, l) = h.confidence(router, tok)?;
                Ok((Some(s), Some(l)))
            }
            _ => Ok((None, None)),
        }
    }
}

/// Trains and scores every classifier, draws the confusion matrices, writes the
/// report files (and runs the ablation when asked for).
pub fn run_compare(job: &CompareJob) -> Result<CompareSummary> {
    let a = job.params();
    let cfg = job.data().train_config();
    let seed = cfg.seed;
    std::fs::create_dir_all(job.out_dir()).map_err(|e| RouterError::Io {
        path: job.out_dir().to_path_buf(),
        source: e,
    })?;
    let loaded = job.data().load()?;
    let (train_docs, test_docs) =
        data::split(&loaded.docs, |d| d.label.as_str(), a.test_fraction, seed);
    // The same split of the texts (split depends only on the labels and the seed).
    let texts_split = loaded
        .texts
        .as_ref()
        .map(|t| data::split(t, |d| d.label.as_str(), a.test_fraction, seed));
    let (passages, classes) = prepare_passages(&train_docs, cfg)?;
    let test_passages = data::token_passages(&test_docs, LONG_PASSAGE, MIN_TEST_PASSAGE);
    let heldout = match &a.heldout {
        Some(dir) => {
            let code: Vec<&str> = a.code_labels.iter().map(String::as_str).collect();
            Some(Heldout::load(dir, &code, seed)?)
        }
        None => None,
    };
    let prep = Prepared {
        job,
        cfg,
        train_docs,
        test_docs,
        texts_split,
        sha: loaded.tokenizer_sha256,
        tok: loaded.tokenizer,
        heldout,
    };
    let mut files = Vec::new();
    let mut rows = Vec::new();
    let mut fits: Vec<(String, TrainConfig, ClassifierKind)> = ClassifierKind::ALL
        .into_iter()
        .map(|k| (k.name().to_string(), cfg.clone(), k))
        .collect();
    if a.char_row && cfg.char_ngrams.is_none() && prep.tok.is_some() {
        let mut c = cfg.clone();
        c.char_ngrams = Some(CharNgramConfig::default());
        fits.push(("logreg-chars".into(), c, ClassifierKind::Logreg));
    }
    for (name, fcfg, kind) in &fits {
        eprintln!("training {name} on {} passages ...", passages.len());
        let (router, secs) = fit_router_with(
            &passages,
            &classes,
            fcfg,
            ClassifierParams::new(*kind),
            prep.sha.clone(),
            prep.tok.as_ref(),
        )?;
        let ind = evaluate_router(&router, &test_passages);
        let (hs, hl) = prep.heldout_eval(&router)?;
        rows.push(CompareRow {
            classifier: name.clone(),
            train_seconds: Some(secs),
            in_domain: Some(ind),
            heldout_short: hs,
            heldout_long: hl,
        });
        prep.save(&router, &format!("router_{name}.json"), &mut files)?;
    }
    if let Some(p) = &a.reference_params {
        let (router, _) = import_sklearn(p)?;
        let ind = evaluate_router(&router, &test_passages);
        let (hs, hl) = prep.heldout_eval(&router)?;
        rows.push(CompareRow {
            classifier: "paper-sklearn".into(),
            train_seconds: None,
            in_domain: Some(ind),
            heldout_short: hs,
            heldout_long: hl,
        });
    }
    let ablation = if a.ablation {
        Some(ablation(&prep, &mut files)?)
    } else {
        None
    };
    let markdown = compare_markdown(passages.len(), cfg, &classes, &rows);
    let mut confusion = Vec::new();
    for r in &rows {
        for (tag, e) in r.regimes() {
            let fig = ConfusionFigure {
                classifier: r.classifier.clone(),
                regime: tag.into(),
                matrix: e.confusion_matrix(&classes),
                path: job
                    .out_dir()
                    .join(format!("confusion_{}_{tag}.png", r.classifier)),
            };
            mome_plot::confusion_png(&fig.path, &fig.matrix)?;
            files.push(fig.path.clone());
            confusion.push(fig);
        }
    }
    let md_path = job.out_dir().join("compare.md");
    mome_data::fsutil::write_atomic(&md_path, markdown.as_bytes())?;
    files.push(md_path);
    let json_path = job.out_dir().join("compare.json");
    mome_data::fsutil::write_json_atomic(&json_path, &rows)?;
    files.push(json_path);
    Ok(CompareSummary {
        out_dir: job.out_dir().to_path_buf(),
        classes,
        train_passages: passages.len(),
        train_config: cfg.clone(),
        rows,
        confusion,
        ablation,
        markdown,
        files,
    })
}

/// `compare.md`: one table per regime that any row was scored on.
fn compare_markdown(
    train_passages: usize,
    cfg: &TrainConfig,
    classes: &[String],
    rows: &[CompareRow],
) -> String {
    let mut md = String::from("# Router comparison\n\n");
    md += &format!(
        "Training: {} passages (lengths {:?}, balanced={}, collapse_whitespace={}, sublinear_tf={}); classes (row/column order of the PNGs): {}\n\n",
        train_passages, cfg.passage_lengths, cfg.balance, cfg.text_normalization.collapse_whitespace, cfg.features.sublinear_tf,
        classes.iter().enumerate().map(|(i, c)| format!("{i}={c}")).collect::<Vec<_>>().join(", ")
    );
    type Get = fn(&CompareRow) -> Option<&EvalReport>;
    let regimes: [(&str, Get); 3] = [
        (
            "in-domain test (20% of documents, 1024-token passages)",
            |r| r.in_domain.as_ref(),
        ),
        (
            "held-out sources, short passages (8-64 words / 3-20 code lines)",
            |r| r.heldout_short.as_ref(),
        ),
        ("held-out sources, 1024-token passages", |r| {
            r.heldout_long.as_ref()
        }),
    ];
    for (regime, get) in regimes {
        if rows.iter().all(|r| get(r).is_none()) {
            continue;
        }
        md += &format!("## {regime}\n\n| classifier | n | accuracy | macro P | macro R | macro F1 | {} | train s | seq/s |\n|---|---|---|---|---|---|{}---|---|\n",
            classes.iter().map(|c| format!("F1 {c}")).collect::<Vec<_>>().join(" | "), "---|".repeat(classes.len()));
        for r in rows {
            if let Some(e) = get(r) {
                md += &format!(
                    "| {} | {} | {:.4} | {:.4} | {:.4} | {:.4} | {} | {} | {:.0} |\n",
                    r.classifier,
                    e.n,
                    e.accuracy,
                    e.macro_precision,
                    e.macro_recall,
                    e.macro_f1,
                    classes
                        .iter()
                        .map(|c| e
                            .per_class
                            .get(c)
                            .map_or("-".into(), |m| format!("{:.4}", m.f1)))
                        .collect::<Vec<_>>()
                        .join(" | "),
                    r.train_seconds.map_or("-".into(), |s| format!("{s:.2}")),
                    e.sequences_per_second
                );
            }
        }
        md += "\n";
    }
    md
}

/// The ablation's variants of the base training settings: `(name, description, config)`.
fn ablation_variants(
    base: &TrainConfig,
    with_chars: bool,
) -> Vec<(&'static str, String, TrainConfig)> {
    let mut variants: Vec<(&str, String, TrainConfig)> = vec![(
        "ours",
        format!(
            "defaults: passages {:?}, balanced, min_df {}, max_features {:?}",
            base.passage_lengths, base.prune.min_df, base.prune.max_features
        ),
        base.clone(),
    )];
    let mut v = base.clone();
    v.text_normalization.collapse_whitespace = !base.text_normalization.collapse_whitespace;
    variants.push((
        if base.text_normalization.collapse_whitespace {
            "no-whitespace-collapse"
        } else {
            "collapse-whitespace"
        },
        "whitespace runs collapsed to one space before tokenising (toggled)".into(),
        v,
    ));
    let mut v = base.clone();
    v.features.sublinear_tf = !base.features.sublinear_tf;
    variants.push(("sublinear-tf", "tf = 1 + ln(count) (toggled)".into(), v));
    let mut v = base.clone();
    v.passage_lengths = vec![LONG_PASSAGE];
    variants.push((
        "long-passages-only",
        "trained on 1024-token passages only (the paper's sequences)".into(),
        v,
    ));
    let mut v = base.clone();
    v.prune.min_df = 1;
    v.prune.max_features = None;
    variants.push((
        "no-pruning",
        "every id seen in training is a column (min_df 1, no max_features)".into(),
        v,
    ));
    let mut v = base.clone();
    v.balance = false;
    variants.push((
        "unbalanced",
        "passages drawn at the classes' natural proportions".into(),
        v,
    ));
    if with_chars {
        let mut v = base.clone();
        v.char_ngrams = Some(CharNgramConfig::default());
        variants.push((
            "char-ngrams",
            "hashed character 1-4-grams of the text instead of token ids".into(),
            v,
        ));
    }
    let mut v = base.clone();
    v.passage_lengths = vec![LONG_PASSAGE];
    v.balance = false;
    v.prune.min_df = 1;
    v.prune.max_features = None;
    variants.push((
        "paper-recipe",
        "1024-token passages only, unbalanced, no pruning (the paper's training, our data)".into(),
        v,
    ));
    variants
}

/// Logistic-regression variants that each undo one choice of ours (or add one),
/// evaluated on every regime: what makes the router robust on short passages.
fn ablation(prep: &Prepared, files: &mut Vec<PathBuf>) -> Result<AblationSummary> {
    let a = prep.job.params();
    let base = prep.cfg;
    let seed = base.seed;
    let ood_texts: Option<Vec<TextDoc>> = match &a.ood {
        Some(dir) => Some(data::read_texts(&data::jsonl_files(dir)?)?),
        None => None,
    };
    let ood_eval = |router: &Router| -> Result<(Option<OodReport>, Option<OodReport>)> {
        let Some(texts) = &ood_texts else {
            return Ok((None, None));
        };
        let sets = ood_passages(router, texts, &[], seed)?;
        Ok((
            Some(ood_report(router, &sets.short)),
            Some(ood_report(router, &sets.long)),
        ))
    };
    let mut rows: Vec<AblationRow> = Vec::new();
    for (name, description, vcfg) in ablation_variants(base, prep.tok.is_some()) {
        let (train_docs, test_docs): (Vec<TokenDoc>, Vec<TokenDoc>) =
            if vcfg.text_normalization == base.text_normalization {
                (prep.train_docs.clone(), prep.test_docs.clone())
            } else {
                let Some(tok) = &prep.tok else {
                    eprintln!("ablation: {name} needs --tokenizer, skipped");
                    continue;
                };
                let texts = prep.texts_split.as_ref();
                (
                    renormalised(
                        &prep.train_docs,
                        texts.map(|t| t.0.as_slice()),
                        tok,
                        vcfg.text_normalization,
                    )?,
                    renormalised(
                        &prep.test_docs,
                        texts.map(|t| t.1.as_slice()),
                        tok,
                        vcfg.text_normalization,
                    )?,
                )
            };
        let (passages, classes) = prepare_passages(&train_docs, &vcfg)?;
        eprintln!(
            "ablation: training {name} on {} passages ...",
            passages.len()
        );
        let (router, secs) = fit_router_with(
            &passages,
            &classes,
            &vcfg,
            ClassifierParams::new(ClassifierKind::Logreg),
            prep.sha.clone(),
            prep.tok.as_ref(),
        )?;
        let ind = evaluate_router(
            &router,
            &data::token_passages(&test_docs, LONG_PASSAGE, MIN_TEST_PASSAGE),
        );
        let (hs, hl) = prep.heldout_eval(&router)?;
        let (os, ol) = ood_eval(&router)?;
        let (cs, cl) = prep.heldout_confidence(&router)?;
        prep.save(&router, &format!("ablation_{name}.json"), files)?;
        rows.push(AblationRow {
            variant: name.into(),
            description,
            train_passages: Some(passages.len()),
            n_features: router.vectorizer().n_features(),
            train_seconds: Some(secs),
            short_errors_false_py: hs.as_ref().and_then(|e| false_prediction_share(e, "py")),
            in_domain: Some(ind),
            heldout_short: hs,
            heldout_long: hl,
            ood_short: os,
            ood_long: ol,
            heldout_short_confidence: cs,
            heldout_long_confidence: cl,
        });
    }
    if let Some(p) = &a.reference_params {
        let (mut router, _) = import_sklearn(p)?;
        let ind = evaluate_router(
            &router,
            &data::token_passages(&prep.test_docs, LONG_PASSAGE, MIN_TEST_PASSAGE),
        );
        let (hs, hl) = prep.heldout_eval(&router)?;
        let (mut os, mut ol) = (None, None);
        if let Some(tok) = &prep.tok {
            let sha = router.tokenizer_sha256().unwrap_or("").to_string();
            if router.attach_tokenizer(tok.clone(), &sha).is_ok()
                && prep.sha.as_deref() == Some(sha.as_str())
            {
                (os, ol) = ood_eval(&router)?;
            }
        }
        let (cs, cl) = prep.heldout_confidence(&router)?;
        rows.push(AblationRow {
            variant: "paper-router".into(),
            description: "the paper's scikit-learn router, imported (its own training)".into(),
            train_passages: None,
            n_features: router.vectorizer().n_features(),
            train_seconds: None,
            short_errors_false_py: hs.as_ref().and_then(|e| false_prediction_share(e, "py")),
            in_domain: Some(ind),
            heldout_short: hs,
            heldout_long: hl,
            ood_short: os,
            ood_long: ol,
            heldout_short_confidence: cs,
            heldout_long_confidence: cl,
        });
    }
    let markdown = ablation_markdown(a, &rows);
    let md_path = a.out_dir.join("ablation.md");
    mome_data::fsutil::write_atomic(&md_path, markdown.as_bytes())?;
    files.push(md_path);
    let json_path = a.out_dir.join("ablation.json");
    mome_data::fsutil::write_json_atomic(&json_path, &rows)?;
    files.push(json_path);
    Ok(AblationSummary { rows, markdown })
}

/// `ablation.md`.
fn ablation_markdown(a: &CompareParams, rows: &[AblationRow]) -> String {
    let f = |e: &Option<EvalReport>| {
        e.as_ref()
            .map_or("-".to_string(), |e| format!("{:.4}", e.macro_f1))
    };
    let acc = |e: &Option<EvalReport>| {
        e.as_ref()
            .map_or("-".to_string(), |e| format!("{:.4}", e.accuracy))
    };
    let o = |e: &Option<OodReport>| {
        e.as_ref().map_or("-".to_string(), |e| {
            format!("{:.3} (n={})", e.not_confident_fraction, e.n)
        })
    };
    let mut md = String::from("# Router robustness ablation (logistic regression)\n\n");
    md +=
        &format!(
        "In-domain: {:.0}% of documents held out, 1024-token passages. Held-out sources: short \
         passages (8-64 words / 3-20 code lines) and 1024-token passages. OOD: out-of-class \
         texts{}, fraction routed not confident (threshold 0.5 unless calibrated); \
         held-out not confident: the same fraction on the in-domain held-out passages \
         (the cost of rejecting).\n\n",
        a.test_fraction * 100.0,
        a.ood.as_ref().map_or(String::new(), |d| format!(" from {}", d.display()))
    );
    md += "| variant | train passages | features | in-domain F1 | short F1 | short acc | short errors = false py | long F1 | OOD not confident, short | OOD not confident, long | held-out not confident, short | held-out not confident, long | train s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    for r in rows {
        md += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.variant,
            r.train_passages.map_or("-".into(), |n| n.to_string()),
            r.n_features,
            f(&r.in_domain),
            f(&r.heldout_short),
            acc(&r.heldout_short),
            r.short_errors_false_py
                .map_or("-".into(), |x| format!("{x:.2}")),
            f(&r.heldout_long),
            o(&r.ood_short),
            o(&r.ood_long),
            o(&r.heldout_short_confidence),
            o(&r.heldout_long_confidence),
            r.train_seconds.map_or("-".into(), |s| format!("{s:.1}")),
        );
    }
    md += "\nVariants:\n\n";
    for r in rows {
        md += &format!("* `{}`: {}\n", r.variant, r.description);
    }
    md
}
