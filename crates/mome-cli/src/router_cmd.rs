//! `mome router train|compare|eval|import-sklearn|bench` and `mome route`.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use mome_router::data::{self, TextDoc, TokenDoc};
use mome_router::{
    ClassifierKind, ClassifierParams, EvalReport, Router, TextNormalization, TrainConfig,
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
    /// Max training passages per class.
    #[arg(long, default_value_t = 1500)]
    max_per_class: usize,
    /// Minimum document frequency of a kept id.
    #[arg(long, default_value_t = 2)]
    min_df: usize,
    /// Maximum number of feature columns.
    #[arg(long, default_value_t = 20000)]
    max_features: usize,
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
    /// Output router file.
    #[arg(long)]
    out: PathBuf,
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

fn train_config(a: &DataArgs) -> TrainConfig {
    let mut c = TrainConfig::default();
    c.features.sublinear_tf = a.sublinear_tf;
    c.prune.min_df = a.min_df;
    c.prune.max_features = Some(a.max_features);
    c.passage_lengths = a.passage_lengths.clone();
    c.balance = !a.no_balance;
    c.max_per_class = Some(a.max_per_class);
    c.threshold = a.threshold;
    c.text_normalization = TextNormalization {
        collapse_whitespace: a.collapse_whitespace,
    };
    c.seed = a.seed;
    c
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

/// Training documents: token ids and the tokenizer hash.
struct LoadedDocs(Vec<TokenDoc>, Option<String>);

/// Token documents and the tokenizer hash.
fn load_docs(a: &DataArgs, norm: TextNormalization) -> Result<LoadedDocs> {
    if let Some(dir) = &a.shards {
        let docs = data::read_shards(dir, &a.split)?;
        let sha = mome_data::shards::ShardSet::open(dir)?
            .manifest()
            .tokenizer_sha256
            .clone();
        return Ok(LoadedDocs(docs, Some(sha)));
    }
    if a.jsonl.is_empty() {
        bail!("give --shards DIR or --jsonl FILE");
    }
    let tp = a.tokenizer.as_ref().context("--jsonl needs --tokenizer")?;
    let (tok, sha) = load_tok(tp)?;
    let texts = read_texts(&a.jsonl)?;
    Ok(LoadedDocs(data::tokenize(&tok, norm, &texts)?, Some(sha)))
}

/// Runs a router subcommand.
pub fn run_router(cmd: RouterCommand) -> Result<()> {
    match cmd {
        RouterCommand::Train(a) => train(a),
        RouterCommand::Compare(a) => compare(a),
        RouterCommand::Eval(a) => eval(a),
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
    let cfg = train_config(&a.data);
    let kind: ClassifierKind = a.classifier.parse()?;
    let LoadedDocs(docs, sha) = load_docs(&a.data, cfg.text_normalization)?;
    let (router, stats) = mome_router::train_router(&docs, &cfg, ClassifierParams::new(kind), sha)?;
    router.save(&a.out)?;
    println!(
        "{}",
        serde_json::json!({"out": a.out, "classes": router.classes(), "stats": stats})
    );
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

fn compare(a: CompareArgs) -> Result<()> {
    let cfg = train_config(&a.data);
    std::fs::create_dir_all(&a.out_dir)?;
    let LoadedDocs(docs, sha) = load_docs(&a.data, cfg.text_normalization)?;
    let (train_docs, test_docs) =
        data::split(&docs, |d| d.label.as_str(), a.test_fraction, a.data.seed);
    let (passages, classes) = mome_router::train::prepare_passages(&train_docs, &cfg)?;
    let test_passages = data::token_passages(&test_docs, 1024, 8);
    // Held-out regimes need the tokenizer: texts are tokenised by each router (its normalisation).
    let heldout: Option<(Vec<TextDoc>, Vec<TextDoc>)> = match &a.heldout {
        Some(dir) => {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
                .collect();
            files.sort();
            let texts = read_texts(&files)?;
            let code: Vec<&str> = a.code_labels.iter().map(String::as_str).collect();
            let short = data::short_text_passages(&texts, &code, a.data.seed);
            Some((short, texts))
        }
        None => None,
    };
    let tok = match &a.data.tokenizer {
        Some(p) => Some(load_tok(p)?),
        None => None,
    };
    let heldout_eval = |router: &Router| -> Result<(Option<EvalReport>, Option<EvalReport>)> {
        let (Some((short, long)), Some((tok, _))) = (&heldout, &tok) else {
            return Ok((None, None));
        };
        let norm = router.text_normalization();
        let s = data::tokenize(tok, norm, short)?;
        let l = data::token_passages(&data::tokenize(tok, norm, long)?, 1024, 1024);
        Ok((
            Some(mome_router::evaluate_router(router, &s)),
            Some(mome_router::evaluate_router(router, &l)),
        ))
    };
    let mut rows = Vec::new();
    let mut routers: Vec<(String, Router)> = Vec::new();
    for kind in ClassifierKind::ALL {
        eprintln!(
            "training {} on {} passages ...",
            kind.name(),
            passages.len()
        );
        let (router, secs) = mome_router::train::fit_router(
            &passages,
            &classes,
            &cfg,
            ClassifierParams::new(kind),
            sha.clone(),
        )?;
        let ind = mome_router::evaluate_router(&router, &test_passages);
        let (hs, hl) = heldout_eval(&router)?;
        rows.push(Row {
            classifier: kind.name().into(),
            train_seconds: Some(secs),
            in_domain: Some(ind),
            heldout_short: hs,
            heldout_long: hl,
        });
        router.save(&a.out_dir.join(format!("router_{}.json", kind.name())))?;
        routers.push((kind.name().into(), router));
    }
    if let Some(p) = &a.reference_params {
        let (router, _) = mome_router::import_sklearn(p)?;
        let ind = mome_router::evaluate_router(&router, &test_passages);
        let (hs, hl) = heldout_eval(&router)?;
        rows.push(Row {
            classifier: "paper-sklearn".into(),
            train_seconds: None,
            in_domain: Some(ind),
            heldout_short: hs,
            heldout_long: hl,
        });
        routers.push(("paper-sklearn".into(), router));
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
