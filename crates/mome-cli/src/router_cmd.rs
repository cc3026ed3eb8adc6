//! `mome router train|compare|eval|calibrate|ood|import-sklearn|bench` and `mome route`.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use mome_router::data::{self, TextDoc, TokenDoc};
use mome_router::{
    CalibrationConfig, CharNgramConfig, ClassifierKind, ClassifierParams, EvalReport, OodReport,
    Router, TextNormalization, TrainConfig,
};

/// Router subcommands.
#[derive(Debug, Subcommand)]
pub enum RouterCommand {
    /// Train a router from token shards or labelled JSONL.
    Train(TrainArgs),
    /// Train every classifier on the same split and write a comparison table + PNGs.
    Compare(CompareArgs),
    /// Evaluate a router on labelled JSONL.
    Eval(EvalArgs),
    /// Set the confidence threshold (and optionally a temperature) from held-out
    /// in-domain data: a target fraction of its sequences must be confident.
    Calibrate(CalibrateArgs),
    /// Out-of-domain check: fraction of out-of-class texts (e.g. Spanish, Italian)
    /// routed as not confident, on short and 1024-token passages.
    Ood(OodArgs),
    /// Turn the paper's exported scikit-learn router into a mome router.
    ImportSklearn(ImportArgs),
    /// Latency / throughput of a router on token sequences.
    Bench(BenchArgs),
}

/// Training data and feature settings shared by `train` and `compare`.
#[derive(Debug, Args)]
pub struct DataArgs {
    /// Token shard folder (labels = domains).
    #[arg(long, conflicts_with = "jsonl")]
    shards: Option<PathBuf>,
    /// Shard split to train on.
    #[arg(long, default_value = "train")]
    split: String,
    /// Labelled JSONL files (`text`, `label`; missing label = file stem). Repeatable.
    #[arg(long)]
    jsonl: Vec<PathBuf>,
    /// Tokenizer (required with --jsonl; its hash is recorded).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Passage lengths in tokens, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "16,32,64,128,1024")]
    passage_lengths: Vec<usize>,
    /// Collapse whitespace runs before tokenising (texts only).
    #[arg(long)]
    collapse_whitespace: bool,
    /// Sublinear tf (1 + ln count).
    #[arg(long)]
    sublinear_tf: bool,
    /// Keep classes unbalanced.
    #[arg(long)]
    no_balance: bool,
    /// Max training passages per class (with --no-balance: this times the number of
    /// classes in all, drawn at the classes' natural proportions).
    #[arg(long, default_value_t = 1500)]
    max_per_class: usize,
    /// Minimum document frequency of a kept id.
    #[arg(long, default_value_t = 2)]
    min_df: usize,
    /// Maximum number of feature columns (0: no limit).
    #[arg(long, default_value_t = 20000)]
    max_features: usize,
    /// Features: `tokens` (TF-IDF over token ids, the method's) or `chars` (TF-IDF
    /// over hashed character n-grams of the text; needs --tokenizer to decode shards).
    #[arg(long, default_value = "tokens")]
    features: String,
    /// Character n-gram lengths `MIN,MAX` (with --features chars).
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    char_ngram_range: Vec<usize>,
    /// Hash buckets of the character n-grams (with --features chars).
    #[arg(long, default_value_t = 1 << 20)]
    char_buckets: u32,
    /// Confidence threshold stored in the router.
    #[arg(long, default_value_t = 0.5)]
    threshold: f64,
    /// RNG seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// `mome router train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    /// logreg | nb | svm | tree.
    #[arg(long, default_value = "logreg")]
    classifier: String,
    /// Calibrate the confidence threshold so that this fraction (e.g. 0.99) of
    /// held-out in-domain sequences are confident: the shards' --calibration-split
    /// when there is one, otherwise --calibration-fraction of the documents, held out
    /// from training.
    #[arg(long)]
    calibrate: Option<f64>,
    /// With --calibrate: also fit a temperature (validation NLL) first.
    #[arg(long)]
    temperature_scaling: bool,
    /// With --calibrate: one threshold per bin of input length (number of known
    /// features), each reaching the target on its own validation sequences.
    #[arg(long)]
    by_length: bool,
    /// Shard split used by --calibrate.
    #[arg(long, default_value = "validation")]
    calibration_split: String,
    /// Fraction of documents held out for --calibrate when there is no shard split.
    #[arg(long, default_value_t = 0.1)]
    calibration_fraction: f64,
    /// Output router file.
    #[arg(long)]
    out: PathBuf,
}

/// `mome router calibrate`.
#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// Router file.
    #[arg(long)]
    router: PathBuf,
    /// Tokenizer file (checked against the router's hash).
    #[arg(long)]
    tokenizer: PathBuf,
    /// Labelled in-domain JSONL held out from training (label = file stem if missing). Repeatable.
    #[arg(long)]
    input: Vec<PathBuf>,
    /// Or a shard folder (with --split).
    #[arg(long, conflicts_with = "input")]
    shards: Option<PathBuf>,
    /// Shard split.
    #[arg(long, default_value = "validation")]
    split: String,
    /// Passage lengths (tokens) the validation documents are cut into.
    #[arg(long, value_delimiter = ',', default_value = "16,32,64,128,1024")]
    passage_lengths: Vec<usize>,
    /// Max validation passages per (label, length).
    #[arg(long, default_value_t = 250)]
    max_per_class_and_length: usize,
    /// Fraction of in-domain sequences that must be confident.
    #[arg(long, default_value_t = 0.99)]
    target: f64,
    /// Also fit a temperature (validation NLL) first.
    #[arg(long)]
    temperature_scaling: bool,
    /// One threshold per bin of input length (number of known features), each
    /// reaching the target on its own validation sequences.
    #[arg(long)]
    by_length: bool,
    /// RNG seed (passage sampling).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output router file (may be the input).
    #[arg(long)]
    out: PathBuf,
}

/// `mome router ood`.
#[derive(Debug, Args)]
pub struct OodArgs {
    /// Router file.
    #[arg(long)]
    router: PathBuf,
    /// Tokenizer file.
    #[arg(long)]
    tokenizer: PathBuf,
    /// JSONL of out-of-class text (`text`; labels, if any, only group the report;
    /// missing label = file stem). Repeatable.
    #[arg(long, required = true)]
    input: Vec<PathBuf>,
    /// Override the router's threshold for this measurement.
    #[arg(long)]
    threshold: Option<f64>,
    /// Seed of the short-passage cutting.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Labels whose short passages are cut by lines (code), e.g. `py` when measuring
    /// the fallback rate on in-domain text; none by default.
    #[arg(long, value_delimiter = ',')]
    code_labels: Vec<String>,
    /// Write the JSON report here too.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// `mome router compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Fraction of documents held out for the in-domain test.
    #[arg(long, default_value_t = 0.2)]
    test_fraction: f64,
    /// Folder of held-out JSONL files from other sources (label = file stem): adds
    /// short-passage and 1024-token-passage regimes.
    #[arg(long)]
    heldout: Option<PathBuf>,
    /// Labels whose short passages are cut by lines (code).
    #[arg(long, value_delimiter = ',', default_value = "py")]
    code_labels: Vec<String>,
    /// Paper's scikit-learn export, added as a row.
    #[arg(long)]
    reference_params: Option<PathBuf>,
    /// Skip the character n-gram logistic regression row.
    #[arg(long)]
    no_char_row: bool,
    /// Robustness ablation: logistic regression variants (whitespace collapsing,
    /// 1024-token passages only, no pruning, unbalanced, sublinear tf, char n-grams,
    /// the paper's recipe) on every regime, as ablation.md / ablation.json.
    #[arg(long)]
    ablation: bool,
    /// Folder of out-of-class JSONL (e.g. data/ood): adds not-confident fractions
    /// (short and 1024-token passages) to the ablation table.
    #[arg(long)]
    ood: Option<PathBuf>,
    /// Output folder (compare.md, compare.json, confusion_*.png).
    #[arg(long)]
    out_dir: PathBuf,
}

/// `mome router eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Router file.
    #[arg(long)]
    router: PathBuf,
    /// Tokenizer file.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Labelled JSONL.
    #[arg(long)]
    input: PathBuf,
    /// Drop passages shorter than this (tokens).
    #[arg(long, default_value_t = 1)]
    min_tokens: usize,
    /// Cut each record into passages of at most this many tokens.
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Print JSON (otherwise a short summary).
    #[arg(long)]
    json: bool,
}

/// `mome router import-sklearn`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// reference_router_params.json.
    #[arg(long)]
    params: PathBuf,
    /// Output router file.
    #[arg(long)]
    out: PathBuf,
}

/// `mome router bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Router file.
    #[arg(long)]
    router: PathBuf,
    /// JSON file with `{"sequences": [[ids...], ...]}` or the sklearn params file (its samples).
    #[arg(long)]
    inputs: PathBuf,
    /// Repetitions.
    #[arg(long, default_value_t = 20)]
    reps: usize,
}

/// `mome route`.
#[derive(Debug, Args)]
pub struct RouteArgs {
    /// Router file.
    #[arg(long)]
    router: PathBuf,
    /// Tokenizer file.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Text to route (otherwise one input per stdin line).
    text: Option<String>,
}

fn load_tok(path: &Path) -> Result<(mome_router::tokenizers::Tokenizer, String)> {
    mome_data::tokenizer::load_tokenizer(path)
        .with_context(|| format!("loading tokenizer {}", path.display()))
}

fn train_config(a: &DataArgs) -> Result<TrainConfig> {
    let mut c = TrainConfig::default();
    c.features.sublinear_tf = a.sublinear_tf;
    c.prune.min_df = a.min_df;
    c.prune.max_features = (a.max_features > 0).then_some(a.max_features);
    c.char_ngrams = match a.features.as_str() {
        "tokens" => None,
        "chars" => {
            let [n_min, n_max] = a.char_ngram_range[..] else {
                bail!("--char-ngram-range needs MIN,MAX");
            };
            let cc = CharNgramConfig {
                n_min,
                n_max,
                n_buckets: a.char_buckets,
                ..CharNgramConfig::default()
            };
            cc.validate()?;
            Some(cc)
        }
        other => bail!("--features must be tokens or chars, got {other:?}"),
    };
    c.passage_lengths = a.passage_lengths.clone();
    c.balance = !a.no_balance;
    c.max_per_class = Some(a.max_per_class);
    c.threshold = a.threshold;
    c.text_normalization = TextNormalization {
        collapse_whitespace: a.collapse_whitespace,
    };
    c.seed = a.seed;
    Ok(c)
}

/// Reads texts of the JSONL inputs (label defaults to the file stem).
fn read_texts(files: &[PathBuf]) -> Result<Vec<TextDoc>> {
    let mut out = Vec::new();
    for f in files {
        let stem = f.file_stem().and_then(|s| s.to_str()).map(str::to_string);
        out.extend(data::read_jsonl(f, stem.as_deref())?);
    }
    Ok(out)
}

/// Training documents: token ids, the tokenizer hash and the tokenizer (if given).
struct LoadedDocs(
    Vec<TokenDoc>,
    Option<String>,
    Option<mome_router::tokenizers::Tokenizer>,
);

/// Token documents, the tokenizer hash and the tokenizer.
fn load_docs(a: &DataArgs, norm: TextNormalization) -> Result<LoadedDocs> {
    let tok = match &a.tokenizer {
        Some(p) => Some(load_tok(p)?),
        None => None,
    };
    if let Some(dir) = &a.shards {
        let docs = data::read_shards(dir, &a.split)?;
        let sha = mome_data::shards::ShardSet::open(dir)?
            .manifest()
            .tokenizer_sha256
            .clone();
        if let Some((_, tsha)) = &tok {
            if *tsha != sha {
                bail!("--tokenizer {tsha} is not the shards' tokenizer {sha}");
            }
        }
        return Ok(LoadedDocs(docs, Some(sha), tok.map(|t| t.0)));
    }
    if a.jsonl.is_empty() {
        bail!("give --shards DIR or --jsonl FILE");
    }
    let (tok, sha) = tok.context("--jsonl needs --tokenizer")?;
    let texts = read_texts(&a.jsonl)?;
    Ok(LoadedDocs(
        data::tokenize(&tok, norm, &texts)?,
        Some(sha),
        Some(tok),
    ))
}

/// Runs a router subcommand.
pub fn run_router(cmd: RouterCommand) -> Result<()> {
    match cmd {
        RouterCommand::Train(a) => train(a),
        RouterCommand::Compare(a) => compare(a),
        RouterCommand::Eval(a) => eval(a),
        RouterCommand::Calibrate(a) => calibrate_cmd(a),
        RouterCommand::Ood(a) => ood(a),
        RouterCommand::ImportSklearn(a) => {
            let (router, samples) = mome_router::import_sklearn(&a.params)?;
            let mut max_err = 0.0f64;
            for s in &samples {
                for (x, y) in router
                    .route(&s.token_ids)
                    .probabilities
                    .iter()
                    .zip(&s.probabilities)
                {
                    max_err = max_err.max((x - y).abs());
                }
            }
            router.save(&a.out)?;
            println!(
                "{}",
                serde_json::json!({"out": a.out, "classes": router.classes(), "features": router.vectorizer().n_features(),
                    "samples_checked": samples.len(), "max_abs_error": max_err})
            );
            if max_err > 1e-9 {
                bail!("imported router differs from scikit-learn by {max_err}");
            }
            Ok(())
        }
        RouterCommand::Bench(a) => bench(a),
    }
}

fn train(a: TrainArgs) -> Result<()> {
    let cfg = train_config(&a.data)?;
    let kind: ClassifierKind = a.classifier.parse()?;
    let LoadedDocs(docs, sha, tok) = load_docs(&a.data, cfg.text_normalization)?;
    // Calibration data: the shards' validation split, or documents held out here.
    let (docs, calib_docs) = match a.calibrate {
        None => (docs, Vec::new()),
        Some(_) => {
            let split_docs = match &a.data.shards {
                Some(dir) => {
                    let set = mome_data::shards::ShardSet::open(dir)?;
                    if set.manifest().splits.contains_key(&a.calibration_split) {
                        Some(data::read_shards(dir, &a.calibration_split)?)
                    } else {
                        None
                    }
                }
                None => None,
            };
            match split_docs {
                Some(v) => (docs, v),
                None => {
                    if !(a.calibration_fraction > 0.0 && a.calibration_fraction < 1.0) {
                        bail!("--calibration-fraction must be in (0, 1)");
                    }
                    data::split(
                        &docs,
                        |d| d.label.as_str(),
                        a.calibration_fraction,
                        a.data.seed,
                    )
                }
            }
        }
    };
    let (mut router, stats) = mome_router::train_router_with(
        &docs,
        &cfg,
        ClassifierParams::new(kind),
        sha,
        tok.as_ref(),
    )?;
    let calibration = match a.calibrate {
        Some(target) => {
            let passages = mome_router::calibrate::calibration_passages(
                &calib_docs,
                &cfg.passage_lengths,
                250,
                a.data.seed,
            );
            Some(mome_router::calibrate(
                &mut router,
                &passages,
                &CalibrationConfig {
                    target_confident: target,
                    fit_temperature: a.temperature_scaling,
                    by_length: a.by_length,
                },
            )?)
        }
        None => None,
    };
    router.save(&a.out)?;
    println!(
        "{}",
        serde_json::json!({"out": a.out, "classes": router.classes(), "stats": stats,
            "threshold": router.threshold(), "temperature": router.temperature(), "calibration": calibration})
    );
    Ok(())
}

fn calibrate_cmd(a: CalibrateArgs) -> Result<()> {
    let mut router = Router::load_with_tokenizer(&a.router, &a.tokenizer)?;
    let docs: Vec<TokenDoc> = if let Some(dir) = &a.shards {
        let sha = mome_data::shards::ShardSet::open(dir)?
            .manifest()
            .tokenizer_sha256
            .clone();
        if router.tokenizer_sha256().is_some_and(|r| r != sha) {
            bail!("the shards were encoded with tokenizer {sha}, not the router's");
        }
        data::read_shards(dir, &a.split)?
    } else {
        if a.input.is_empty() {
            bail!("give --input FILE.jsonl or --shards DIR");
        }
        let texts = read_texts(&a.input)?;
        let mut out = Vec::with_capacity(texts.len());
        for t in &texts {
            out.push(TokenDoc {
                ids: router.encode(&t.text)?,
                label: t.label.clone(),
            });
        }
        out
    };
    let passages = mome_router::calibrate::calibration_passages(
        &docs,
        &a.passage_lengths,
        a.max_per_class_and_length,
        a.seed,
    );
    let cal = mome_router::calibrate(
        &mut router,
        &passages,
        &CalibrationConfig {
            target_confident: a.target,
            fit_temperature: a.temperature_scaling,
            by_length: a.by_length,
        },
    )?;
    router.save(&a.out)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({"out": a.out, "calibration": cal}))?
    );
    Ok(())
}

/// Out-of-class passages of texts in the two regimes of the held-out evaluation:
/// short (8-64 words) and 1024-token passages, tokenised as the router does.
fn ood_passages(
    router: &Router,
    texts: &[TextDoc],
    code_labels: &[&str],
    seed: u64,
) -> Result<OodSets> {
    let short_texts = data::short_text_passages(texts, code_labels, seed);
    let mut short = Vec::with_capacity(short_texts.len());
    for t in &short_texts {
        short.push(TokenDoc {
            ids: router.encode(&t.text)?,
            label: t.label.clone(),
        });
    }
    let mut long = Vec::new();
    for t in texts {
        let ids: Vec<u32> = router
            .encode(&t.text)?
            .into_iter()
            .filter(|&i| i != 1 && i != 2)
            .collect();
        long.extend(ids.chunks_exact(1024).map(|c| TokenDoc {
            ids: c.to_vec(),
            label: t.label.clone(),
        }));
    }
    Ok(OodSets { short, long })
}

struct OodSets {
    short: Vec<TokenDoc>,
    long: Vec<TokenDoc>,
}

/// Per label and over all inputs.
fn ood_by_label(router: &Router, docs: &[TokenDoc]) -> BTreeMap<String, OodReport> {
    let mut out = BTreeMap::new();
    out.insert("all".to_string(), mome_router::ood_report(router, docs));
    let mut labels: Vec<&str> = docs.iter().map(|d| d.label.as_str()).collect();
    labels.sort_unstable();
    labels.dedup();
    for l in labels {
        let sub: Vec<TokenDoc> = docs.iter().filter(|d| d.label == l).cloned().collect();
        out.insert(l.to_string(), mome_router::ood_report(router, &sub));
    }
    out
}

fn ood(a: OodArgs) -> Result<()> {
    let mut router = Router::load_with_tokenizer(&a.router, &a.tokenizer)?;
    if let Some(t) = a.threshold {
        router.set_threshold(t)?;
    }
    let texts = read_texts(&a.input)?;
    let code: Vec<&str> = a.code_labels.iter().map(String::as_str).collect();
    let sets = ood_passages(&router, &texts, &code, a.seed)?;
    let report = serde_json::json!({
        "router": a.router,
        "classes": router.classes(),
        "threshold": router.threshold(),
        "thresholds_by_features": router.thresholds_by_features(),
        "temperature": router.temperature(),
        "calibrated": router.calibration().is_some(),
        "short": ood_by_label(&router, &sets.short),
        "long_1024": ood_by_label(&router, &sets.long),
    });
    if let Some(p) = &a.out {
        mome_data::fsutil::write_json_atomic(p, &report)?;
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn eval_docs(a: &EvalArgs, router: &Router) -> Result<Vec<TokenDoc>> {
    let texts = read_texts(std::slice::from_ref(&a.input))?;
    let mut out = Vec::new();
    for t in &texts {
        let ids = router.encode(&t.text)?;
        let ids: Vec<u32> = ids.into_iter().filter(|&i| i != 1 && i != 2).collect();
        let max = a.max_tokens.unwrap_or(usize::MAX).max(1);
        for c in ids.chunks(max.min(ids.len().max(1))) {
            if c.len() >= a.min_tokens {
                out.push(TokenDoc {
                    ids: c.to_vec(),
                    label: t.label.clone(),
                });
            }
        }
    }
    Ok(out)
}

fn eval(a: EvalArgs) -> Result<()> {
    let router = Router::load_with_tokenizer(&a.router, &a.tokenizer)?;
    let docs = eval_docs(&a, &router)?;
    let rep = mome_router::evaluate_router(&router, &docs);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        println!(
            "n={} accuracy={:.4} macro_f1={:.4} unknown={:?}",
            rep.n, rep.accuracy, rep.macro_f1, rep.unknown_labels
        );
    }
    Ok(())
}

/// `mome route`.
pub fn run_route(a: RouteArgs) -> Result<()> {
    let router = Router::load_with_tokenizer(&a.router, &a.tokenizer)?;
    let print = |text: &str| -> Result<()> {
        let r = router.route_text(text)?;
        let probs: BTreeMap<&str, f64> = router
            .classes()
            .iter()
            .map(String::as_str)
            .zip(r.probabilities.iter().copied())
            .collect();
        println!(
            "{}",
            serde_json::json!({"label": r.label, "confident": r.confident, "probabilities": probs})
        );
        Ok(())
    };
    match &a.text {
        Some(t) => print(t),
        None => {
            for line in std::io::stdin().lock().lines() {
                print(&line?)?;
            }
            Ok(())
        }
    }
}

#[derive(serde::Serialize)]
struct Row {
    classifier: String,
    train_seconds: Option<f64>,
    in_domain: Option<EvalReport>,
    heldout_short: Option<EvalReport>,
    heldout_long: Option<EvalReport>,
}

/// Held-out texts of other sources: short passages and whole documents.
struct Heldout {
    short: Vec<TextDoc>,
    long: Vec<TextDoc>,
}

fn jsonl_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    Ok(files)
}

/// Held-out regimes: texts are tokenised for each router (its normalisation).
fn heldout_eval(
    router: &Router,
    heldout: Option<&Heldout>,
    tok: Option<&mome_router::tokenizers::Tokenizer>,
) -> Result<(Option<EvalReport>, Option<EvalReport>)> {
    let (Some(h), Some(tok)) = (heldout, tok) else {
        return Ok((None, None));
    };
    let norm = router.text_normalization();
    let s = data::tokenize(tok, norm, &h.short)?;
    let l = data::token_passages(&data::tokenize(tok, norm, &h.long)?, 1024, 1024);
    Ok((
        Some(mome_router::evaluate_router(router, &s)),
        Some(mome_router::evaluate_router(router, &l)),
    ))
}

/// Token documents under another text normalisation: re-tokenised from the texts
/// when there are texts, otherwise decoded and re-encoded.
fn renormalised(
    docs: &[TokenDoc],
    texts: Option<&[TextDoc]>,
    tok: &mome_router::tokenizers::Tokenizer,
    norm: TextNormalization,
) -> Result<Vec<TokenDoc>> {
    if let Some(t) = texts {
        return Ok(data::tokenize(tok, norm, t)?);
    }
    let decoded: Vec<TextDoc> = docs
        .iter()
        .map(|d| {
            Ok(TextDoc {
                text: tok
                    .decode(&d.ids, true)
                    .map_err(|e| anyhow::anyhow!("decoding: {e}"))?,
                label: d.label.clone(),
            })
        })
        .collect::<Result<_>>()?;
    Ok(data::tokenize(tok, norm, &decoded)?)
}

#[derive(serde::Serialize)]
struct AblationRow {
    variant: String,
    description: String,
    train_passages: Option<usize>,
    n_features: usize,
    train_seconds: Option<f64>,
    in_domain: Option<EvalReport>,
    heldout_short: Option<EvalReport>,
    heldout_long: Option<EvalReport>,
    /// Share of the short-passage errors that are a false "py" (the paper's failure).
    short_errors_false_py: Option<f64>,
    ood_short: Option<OodReport>,
    ood_long: Option<OodReport>,
    /// The cost side: in-domain held-out passages routed not confident.
    heldout_short_confidence: Option<OodReport>,
    heldout_long_confidence: Option<OodReport>,
}

/// Confidence (as an [`OodReport`]) of a router on the in-domain held-out regimes.
fn heldout_confidence(
    router: &Router,
    heldout: Option<&Heldout>,
    tok: Option<&mome_router::tokenizers::Tokenizer>,
) -> Result<(Option<OodReport>, Option<OodReport>)> {
    let (Some(h), Some(tok)) = (heldout, tok) else {
        return Ok((None, None));
    };
    let norm = router.text_normalization();
    let s = data::tokenize(tok, norm, &h.short)?;
    let l = data::token_passages(&data::tokenize(tok, norm, &h.long)?, 1024, 1024);
    Ok((
        Some(mome_router::ood_report(router, &s)),
        Some(mome_router::ood_report(router, &l)),
    ))
}

fn false_py_share(e: &EvalReport) -> Option<f64> {
    let mut errors = 0usize;
    let mut py = 0usize;
    for (t, row) in &e.confusion {
        for (p, &n) in row {
            if t != p {
                errors += n;
                if p == "py" {
                    py += n;
                }
            }
        }
    }
    (errors > 0).then(|| py as f64 / errors as f64)
}

struct AblationInputs<'a> {
    args: &'a CompareArgs,
    cfg: &'a TrainConfig,
    train_docs: &'a [TokenDoc],
    test_docs: &'a [TokenDoc],
    texts_split: Option<&'a (Vec<TextDoc>, Vec<TextDoc>)>,
    sha: Option<String>,
    tok: Option<&'a mome_router::tokenizers::Tokenizer>,
    heldout: Option<&'a Heldout>,
}

/// Logistic-regression variants that each undo one choice of ours (or add one),
/// evaluated on every regime: what makes the router robust on short passages.
fn ablation(inp: &AblationInputs) -> Result<()> {
    let a = inp.args;
    let base = inp.cfg.clone();
    let ood_texts: Option<Vec<TextDoc>> = match &a.ood {
        Some(dir) => Some(read_texts(&jsonl_files(dir)?)?),
        None => None,
    };
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
    v.passage_lengths = vec![1024];
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
    if inp.tok.is_some() {
        let mut v = base.clone();
        v.char_ngrams = Some(CharNgramConfig::default());
        variants.push((
            "char-ngrams",
            "hashed character 1-4-grams of the text instead of token ids".into(),
            v,
        ));
    }
    let mut v = base.clone();
    v.passage_lengths = vec![1024];
    v.balance = false;
    v.prune.min_df = 1;
    v.prune.max_features = None;
    variants.push((
        "paper-recipe",
        "1024-token passages only, unbalanced, no pruning (the paper's training, our data)".into(),
        v,
    ));
    let test_fraction = a.test_fraction;
    let ood_eval = |router: &Router| -> Result<(Option<OodReport>, Option<OodReport>)> {
        let Some(texts) = &ood_texts else {
            return Ok((None, None));
        };
        let sets = ood_passages(router, texts, &[], a.data.seed)?;
        Ok((
            Some(mome_router::ood_report(router, &sets.short)),
            Some(mome_router::ood_report(router, &sets.long)),
        ))
    };
    let mut rows: Vec<AblationRow> = Vec::new();
    for (name, description, vcfg) in variants {
        let (train_docs, test_docs): (Vec<TokenDoc>, Vec<TokenDoc>) =
            if vcfg.text_normalization == base.text_normalization {
                (inp.train_docs.to_vec(), inp.test_docs.to_vec())
            } else {
                let Some(tok) = inp.tok else {
                    eprintln!("ablation: {name} needs --tokenizer, skipped");
                    continue;
                };
                (
                    renormalised(
                        inp.train_docs,
                        inp.texts_split.map(|t| t.0.as_slice()),
                        tok,
                        vcfg.text_normalization,
                    )?,
                    renormalised(
                        inp.test_docs,
                        inp.texts_split.map(|t| t.1.as_slice()),
                        tok,
                        vcfg.text_normalization,
                    )?,
                )
            };
        let (passages, classes) = mome_router::train::prepare_passages(&train_docs, &vcfg)?;
        eprintln!(
            "ablation: training {name} on {} passages ...",
            passages.len()
        );
        let (router, secs) = mome_router::train::fit_router_with(
            &passages,
            &classes,
            &vcfg,
            ClassifierParams::new(ClassifierKind::Logreg),
            inp.sha.clone(),
            inp.tok,
        )?;
        let ind = mome_router::evaluate_router(&router, &data::token_passages(&test_docs, 1024, 8));
        let (hs, hl) = heldout_eval(&router, inp.heldout, inp.tok)?;
        let (os, ol) = ood_eval(&router)?;
        let (cs, cl) = heldout_confidence(&router, inp.heldout, inp.tok)?;
        router.save(&a.out_dir.join(format!("ablation_{name}.json")))?;
        rows.push(AblationRow {
            variant: name.into(),
            description,
            train_passages: Some(passages.len()),
            n_features: router.vectorizer().n_features(),
            train_seconds: Some(secs),
            short_errors_false_py: hs.as_ref().and_then(false_py_share),
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
        let (mut router, _) = mome_router::import_sklearn(p)?;
        let ind =
            mome_router::evaluate_router(&router, &data::token_passages(inp.test_docs, 1024, 8));
        let (hs, hl) = heldout_eval(&router, inp.heldout, inp.tok)?;
        let (mut os, mut ol) = (None, None);
        if let Some(tok) = inp.tok {
            let sha = router.tokenizer_sha256().unwrap_or("").to_string();
            if router.attach_tokenizer(tok.clone(), &sha).is_ok()
                && inp.sha.as_deref() == Some(sha.as_str())
            {
                (os, ol) = ood_eval(&router)?;
            }
        }
        let (cs, cl) = heldout_confidence(&router, inp.heldout, inp.tok)?;
        rows.push(AblationRow {
            variant: "paper-router".into(),
            description: "the paper's scikit-learn router, imported (its own training)".into(),
            train_passages: None,
            n_features: router.vectorizer().n_features(),
            train_seconds: None,
            short_errors_false_py: hs.as_ref().and_then(false_py_share),
            in_domain: Some(ind),
            heldout_short: hs,
            heldout_long: hl,
            ood_short: os,
            ood_long: ol,
            heldout_short_confidence: cs,
            heldout_long_confidence: cl,
        });
    }
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
        test_fraction * 100.0,
        a.ood.as_ref().map_or(String::new(), |d| format!(" from {}", d.display()))
    );
    md += "| variant | train passages | features | in-domain F1 | short F1 | short acc | short errors = false py | long F1 | OOD not confident, short | OOD not confident, long | held-out not confident, short | held-out not confident, long | train s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    for r in &rows {
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
    for r in &rows {
        md += &format!("* `{}`: {}\n", r.variant, r.description);
    }
    mome_data::fsutil::write_atomic(&a.out_dir.join("ablation.md"), md.as_bytes())?;
    mome_data::fsutil::write_json_atomic(&a.out_dir.join("ablation.json"), &rows)?;
    println!("{md}");
    Ok(())
}

fn compare(a: CompareArgs) -> Result<()> {
    let cfg = train_config(&a.data)?;
    std::fs::create_dir_all(&a.out_dir)?;
    let LoadedDocs(docs, sha, tok) = load_docs(&a.data, cfg.text_normalization)?;
    let (train_docs, test_docs) =
        data::split(&docs, |d| d.label.as_str(), a.test_fraction, a.data.seed);
    // The same split of the texts (split depends only on the labels and the seed).
    let texts_split = if a.data.shards.is_none() {
        let texts = read_texts(&a.data.jsonl)?;
        Some(data::split(
            &texts,
            |d| d.label.as_str(),
            a.test_fraction,
            a.data.seed,
        ))
    } else {
        None
    };
    let (passages, classes) = mome_router::train::prepare_passages(&train_docs, &cfg)?;
    let test_passages = data::token_passages(&test_docs, 1024, 8);
    let heldout: Option<Heldout> = match &a.heldout {
        Some(dir) => {
            let texts = read_texts(&jsonl_files(dir)?)?;
            let code: Vec<&str> = a.code_labels.iter().map(String::as_str).collect();
            let short = data::short_text_passages(&texts, &code, a.data.seed);
            Some(Heldout { short, long: texts })
        }
        None => None,
    };
    let mut rows = Vec::new();
    let mut fits: Vec<(String, TrainConfig, ClassifierKind)> = ClassifierKind::ALL
        .into_iter()
        .map(|k| (k.name().to_string(), cfg.clone(), k))
        .collect();
    if !a.no_char_row && cfg.char_ngrams.is_none() && tok.is_some() {
        let mut c = cfg.clone();
        c.char_ngrams = Some(CharNgramConfig::default());
        fits.push(("logreg-chars".into(), c, ClassifierKind::Logreg));
    }
    for (name, fcfg, kind) in &fits {
        eprintln!("training {name} on {} passages ...", passages.len());
        let (router, secs) = mome_router::train::fit_router_with(
            &passages,
            &classes,
            fcfg,
            ClassifierParams::new(*kind),
            sha.clone(),
            tok.as_ref(),
        )?;
        let ind = mome_router::evaluate_router(&router, &test_passages);
        let (hs, hl) = heldout_eval(&router, heldout.as_ref(), tok.as_ref())?;
        rows.push(Row {
            classifier: name.clone(),
            train_seconds: Some(secs),
            in_domain: Some(ind),
            heldout_short: hs,
            heldout_long: hl,
        });
        router.save(&a.out_dir.join(format!("router_{name}.json")))?;
    }
    if let Some(p) = &a.reference_params {
        let (router, _) = mome_router::import_sklearn(p)?;
        let ind = mome_router::evaluate_router(&router, &test_passages);
        let (hs, hl) = heldout_eval(&router, heldout.as_ref(), tok.as_ref())?;
        rows.push(Row {
            classifier: "paper-sklearn".into(),
            train_seconds: None,
            in_domain: Some(ind),
            heldout_short: hs,
            heldout_long: hl,
        });
    }
    if a.ablation {
        ablation(&AblationInputs {
            args: &a,
            cfg: &cfg,
            train_docs: &train_docs,
            test_docs: &test_docs,
            texts_split: texts_split.as_ref(),
            sha: sha.clone(),
            tok: tok.as_ref(),
            heldout: heldout.as_ref(),
        })?;
    }
    // Markdown.
    let mut md = String::from("# Router comparison\n\n");
    md += &format!(
        "Training: {} passages (lengths {:?}, balanced={}, collapse_whitespace={}, sublinear_tf={}); classes (row/column order of the PNGs): {}\n\n",
        passages.len(), cfg.passage_lengths, cfg.balance, cfg.text_normalization.collapse_whitespace, cfg.features.sublinear_tf,
        classes.iter().enumerate().map(|(i, c)| format!("{i}={c}")).collect::<Vec<_>>().join(", ")
    );
    for (regime, get) in [
        (
            "in-domain test (20% of documents, 1024-token passages)",
            (|r: &Row| r.in_domain.as_ref()) as fn(&Row) -> Option<&EvalReport>,
        ),
        (
            "held-out sources, short passages (8-64 words / 3-20 code lines)",
            |r: &Row| r.heldout_short.as_ref(),
        ),
        ("held-out sources, 1024-token passages", |r: &Row| {
            r.heldout_long.as_ref()
        }),
    ] {
        if rows.iter().all(|r| get(r).is_none()) {
            continue;
        }
        md += &format!("## {regime}\n\n| classifier | n | accuracy | macro P | macro R | macro F1 | {} | train s | seq/s |\n|---|---|---|---|---|---|{}---|---|\n",
            classes.iter().map(|c| format!("F1 {c}")).collect::<Vec<_>>().join(" | "), "---|".repeat(classes.len()));
        for r in &rows {
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
    for r in &rows {
        for (tag, e) in [
            ("in_domain", &r.in_domain),
            ("heldout_short", &r.heldout_short),
            ("heldout_long", &r.heldout_long),
        ] {
            if let Some(e) = e {
                let m: Vec<Vec<usize>> = classes
                    .iter()
                    .map(|t| {
                        classes
                            .iter()
                            .map(|p| {
                                e.confusion
                                    .get(t)
                                    .and_then(|row| row.get(p))
                                    .copied()
                                    .unwrap_or(0)
                            })
                            .collect()
                    })
                    .collect();
                mome_router::plot::confusion_png(
                    &a.out_dir
                        .join(format!("confusion_{}_{tag}.png", r.classifier)),
                    &m,
                )?;
            }
        }
    }
    mome_data::fsutil::write_atomic(&a.out_dir.join("compare.md"), md.as_bytes())?;
    mome_data::fsutil::write_json_atomic(&a.out_dir.join("compare.json"), &rows)?;
    println!("{md}");
    Ok(())
}

fn bench(a: BenchArgs) -> Result<()> {
    let router = Router::load(&a.router)?;
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&a.inputs)?)?;
    let seqs: Vec<Vec<u32>> = if let Some(s) = v.get("sequences") {
        serde_json::from_value(s.clone())?
    } else if let Some(s) = v.get("samples") {
        s.as_array()
            .context("samples")?
            .iter()
            .map(|x| serde_json::from_value(x["token_ids"].clone()))
            .collect::<Result<_, _>>()?
    } else {
        bail!("inputs need `sequences` or `samples`");
    };
    let n = seqs.len() * a.reps;
    let t0 = Instant::now();
    let mut sink = 0usize;
    for _ in 0..a.reps {
        for s in &seqs {
            sink += router.route(s).index;
        }
    }
    let single = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for _ in 0..a.reps {
        sink += router.route_batch(&seqs).len();
    }
    let batch = t1.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"sequences": seqs.len(), "reps": a.reps, "mean_tokens": seqs.iter().map(|s| s.len()).sum::<usize>() as f64 / seqs.len().max(1) as f64,
            "per_call_seq_per_s": n as f64 / single, "per_call_us": single * 1e6 / n as f64,
            "batch_seq_per_s": n as f64 / batch, "threads": rayon::current_num_threads(), "checksum": sink})
    );
    Ok(())
}
