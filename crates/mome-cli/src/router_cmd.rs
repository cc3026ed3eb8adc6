//! `mome router train|compare|eval|calibrate|ood|import-sklearn|bench` and `mome route`:
//! parse the arguments, build the library's parameters, check them, call one
//! `mome_router` function, print. Every default comes from `mome_router`.

use std::path::PathBuf;
use std::sync::LazyLock;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use mome_router::data;
use mome_router::lines::RoutedLine;
use mome_router::params::{DocSource, ParamGuard, CALIBRATION_PASSAGES};
use mome_router::{
    CalibrationConfig, CompareParams, DataParams, RouteLinesParams, Router, RouterError,
    TrainParams,
};

/// The library's defaults, as `--help` shows them.
static DATA: LazyLock<DataParams> = LazyLock::new(DataParams::default);
static TRAIN: LazyLock<TrainParams> = LazyLock::new(TrainParams::default);
static COMPARE: LazyLock<CompareParams> = LazyLock::new(CompareParams::default);
static CALIBRATION: LazyLock<CalibrationConfig> = LazyLock::new(CalibrationConfig::default);
static ROUTE_LINES: LazyLock<RouteLinesParams> = LazyLock::new(RouteLinesParams::default);
static PASSAGE_LENGTHS: LazyLock<String> = LazyLock::new(|| joined(&DATA.passage_lengths));
static CHAR_NGRAM_RANGE: LazyLock<String> = LazyLock::new(|| joined(&DATA.char_ngram_range));
static CODE_LABELS: LazyLock<String> = LazyLock::new(|| joined(&COMPARE.code_labels));

/// A default list as its comma-separated argument.
fn joined<T: ToString>(v: &[T]) -> String {
    v.iter().map(T::to_string).collect::<Vec<_>>().join(",")
}

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
    #[arg(long, default_value = DATA.split.as_str())]
    split: String,
    /// Labelled JSONL files (`text`, `label`; missing label = file stem). Repeatable.
    #[arg(long)]
    jsonl: Vec<PathBuf>,
    /// Tokenizer (required with --jsonl; its hash is recorded).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Passage lengths in tokens, comma separated.
    #[arg(long, value_delimiter = ',', default_value = PASSAGE_LENGTHS.as_str())]
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
    #[arg(long, default_value_t = DATA.max_per_class)]
    max_per_class: usize,
    /// Minimum document frequency of a kept id.
    #[arg(long, default_value_t = DATA.min_df)]
    min_df: usize,
    /// Maximum number of feature columns (0: no limit).
    #[arg(long, default_value_t = DATA.max_features)]
    max_features: usize,
    /// Features: `tokens` (TF-IDF over token ids, the method's) or `chars` (TF-IDF
    /// over hashed character n-grams of the text; needs --tokenizer to decode shards).
    #[arg(long, default_value = DATA.features.name())]
    features: String,
    /// Character n-gram lengths `MIN,MAX` (with --features chars).
    #[arg(long, value_delimiter = ',', default_value = CHAR_NGRAM_RANGE.as_str())]
    char_ngram_range: Vec<usize>,
    /// Hash buckets of the character n-grams (with --features chars).
    #[arg(long, default_value_t = DATA.char_buckets)]
    char_buckets: u32,
    /// Confidence threshold stored in the router.
    #[arg(long, default_value_t = DATA.threshold)]
    threshold: f64,
    /// RNG seed.
    #[arg(long, default_value_t = DATA.seed)]
    seed: u64,
}

/// `mome router train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    /// logreg | nb | svm | tree.
    #[arg(long, default_value = TRAIN.classifier.name())]
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
    #[arg(long, default_value = TRAIN.calibration_split.as_str())]
    calibration_split: String,
    /// Fraction of documents held out for --calibrate when there is no shard split.
    #[arg(long, default_value_t = TRAIN.calibration_fraction)]
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
    #[arg(long, default_value = TRAIN.calibration_split.as_str())]
    split: String,
    /// Passage lengths (tokens) the validation documents are cut into.
    #[arg(long, value_delimiter = ',', default_value = PASSAGE_LENGTHS.as_str())]
    passage_lengths: Vec<usize>,
    /// Max validation passages per (label, length).
    #[arg(long, default_value_t = CALIBRATION_PASSAGES)]
    max_per_class_and_length: usize,
    /// Fraction of in-domain sequences that must be confident.
    #[arg(long, default_value_t = CALIBRATION.target_confident)]
    target: f64,
    /// Also fit a temperature (validation NLL) first.
    #[arg(long)]
    temperature_scaling: bool,
    /// One threshold per bin of input length (number of known features), each
    /// reaching the target on its own validation sequences.
    #[arg(long)]
    by_length: bool,
    /// RNG seed (passage sampling).
    #[arg(long, default_value_t = DATA.seed)]
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
    #[arg(long, default_value_t = DATA.seed)]
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
    #[arg(long, default_value_t = COMPARE.test_fraction)]
    test_fraction: f64,
    /// Folder of held-out JSONL files from other sources (label = file stem): adds
    /// short-passage and 1024-token-passage regimes.
    #[arg(long)]
    heldout: Option<PathBuf>,
    /// Labels whose short passages are cut by lines (code).
    #[arg(long, value_delimiter = ',', default_value = CODE_LABELS.as_str())]
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
#[command(
    after_help = "Without TEXT, every stdin line gives one JSON record on stdout, in \
input order: {\"line\": N, \"label\", \"confident\", \"probabilities\"} for a routed \
line (N is 1-based; empty lines are routed too), or {\"line\": N, \"error\": \
\"invalid-utf8\"|\"too-long\"|\"route\", \"message\"} for a line that is not. Lines \
are read as bytes; a \\r before the newline is dropped. A run with error records exits \
0 and counts them on stderr."
)]
pub struct RouteArgs {
    /// Router file.
    #[arg(long)]
    router: PathBuf,
    /// Tokenizer file.
    #[arg(long)]
    tokenizer: PathBuf,
    /// What to do with a stdin line that is not valid UTF-8: `error-record` writes
    /// an error record naming the line and goes on; `lossy` routes the line decoded
    /// with U+FFFD for each invalid sequence (its record has "lossy": true); `fail`
    /// stops with an error naming the line (lines too long or not routable stop it
    /// too).
    #[arg(long, default_value = ROUTE_LINES.invalid_utf8.name(),
          value_parser = ["error-record", "lossy", "fail"])]
    invalid_utf8: String,
    /// Longest stdin line routed, in bytes before the newline; a longer line is
    /// skipped (never held in memory) with a "too-long" error record.
    #[arg(long, default_value_t = ROUTE_LINES.max_line_bytes)]
    max_line_bytes: usize,
    /// Text to route (otherwise one input per stdin line).
    text: Option<String>,
}

impl DataArgs {
    fn params(self) -> Result<DataParams> {
        Ok(DataParams {
            shards: self.shards,
            split: self.split,
            jsonl: self.jsonl,
            tokenizer: self.tokenizer,
            passage_lengths: self.passage_lengths,
            collapse_whitespace: self.collapse_whitespace,
            sublinear_tf: self.sublinear_tf,
            balance: !self.no_balance,
            max_per_class: self.max_per_class,
            min_df: self.min_df,
            max_features: self.max_features,
            features: self.features.parse()?,
            char_ngram_range: self.char_ngram_range,
            char_buckets: self.char_buckets,
            threshold: self.threshold,
            seed: self.seed,
        })
    }
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
            let max_err = mome_router::import::max_abs_error(&router, &samples);
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
    let job = TrainParams {
        data: a.data.params()?,
        classifier: a.classifier.parse()?,
        calibrate: a.calibrate,
        temperature_scaling: a.temperature_scaling,
        by_length: a.by_length,
        calibration_split: a.calibration_split,
        calibration_fraction: a.calibration_fraction,
        out: a.out,
    }
    .check()?;
    let summary = mome_router::run_train(&job)?;
    println!("{}", serde_json::to_value(&summary)?);
    Ok(())
}

fn compare(a: CompareArgs) -> Result<()> {
    let job = CompareParams {
        data: a.data.params()?,
        test_fraction: a.test_fraction,
        heldout: a.heldout,
        code_labels: a.code_labels,
        reference_params: a.reference_params,
        char_row: !a.no_char_row,
        ablation: a.ablation,
        ood: a.ood,
        out_dir: a.out_dir,
    }
    .check()?;
    let summary = mome_router::run_compare(&job)?;
    if let Some(ablation) = &summary.ablation {
        println!("{}", ablation.markdown);
    }
    println!("{}", summary.markdown);
    Ok(())
}

fn calibrate_cmd(a: CalibrateArgs) -> Result<()> {
    let mut router = Router::load_with_tokenizer(&a.router, &a.tokenizer)?;
    let source = match (a.shards, a.input.is_empty()) {
        (Some(dir), _) => DocSource::Shards {
            dir,
            split: a.split,
        },
        (None, false) => DocSource::Jsonl(a.input),
        (None, true) => bail!("give --input FILE.jsonl or --shards DIR"),
    };
    let docs = mome_router::calibrate::calibration_docs(&router, &source)?;
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

fn ood(a: OodArgs) -> Result<()> {
    let mut router = Router::load_with_tokenizer(&a.router, &a.tokenizer)?;
    if let Some(t) = a.threshold {
        router.set_threshold(t)?;
    }
    let texts = data::read_texts(&a.input)?;
    let code: Vec<&str> = a.code_labels.iter().map(String::as_str).collect();
    let summary = mome_router::ood::ood_summary(&router, &texts, &code, a.seed)?;
    let mut report = serde_json::to_value(&summary)?;
    report["router"] = serde_json::json!(a.router);
    if let Some(p) = &a.out {
        mome_data::fsutil::write_json_atomic(p, &report)?;
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn eval(a: EvalArgs) -> Result<()> {
    let router = Router::load_with_tokenizer(&a.router, &a.tokenizer)?;
    let texts = data::read_texts(std::slice::from_ref(&a.input))?;
    let docs = data::router_passages(&router, &texts, a.min_tokens, a.max_tokens)?;
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

/// `mome route`: the text argument, or every stdin line through
/// `mome_router::route_lines` (one record per line, bad lines included).
pub fn run_route(a: RouteArgs) -> Result<()> {
    let job = RouteLinesParams {
        invalid_utf8: a.invalid_utf8.parse()?,
        max_line_bytes: a.max_line_bytes,
    }
    .check()?;
    let router = Router::load_with_tokenizer(&a.router, &a.tokenizer)?;
    if let Some(t) = &a.text {
        let r = router.route_text(t)?;
        println!(
            "{}",
            serde_json::to_string(&RoutedLine::new(&router, &r, false))?
        );
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    match mome_router::route_lines(&router, std::io::stdin().lock(), "stdin", &job, &mut out) {
        Ok(s) => {
            if s.errors > 0 || s.lossy > 0 {
                eprintln!(
                    "mome route: {} lines, {} routed ({} decoded lossily), {} error records",
                    s.lines, s.routed, s.lossy, s.errors
                );
            }
            Ok(())
        }
        // The reader of stdout went away (`mome route | head`): nothing left to do.
        Err(RouterError::Output { source, .. })
            if source.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn bench(a: BenchArgs) -> Result<()> {
    let router = Router::load(&a.router)?;
    let seqs = data::read_sequences(&a.inputs)?;
    let report = mome_router::metrics::bench_routing(&router, &seqs, a.reps);
    println!("{}", serde_json::to_value(&report)?);
    Ok(())
}
