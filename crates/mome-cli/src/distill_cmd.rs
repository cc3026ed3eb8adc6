//! `mome distill`, `mome teacher-cache build` and `mome experiment kd` (method §4;
//! see docs/distill.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use mome_core::metrics::read_metrics;
use mome_core::trainer::TrainConfig;
use mome_core::DeviceSpec;
use mome_data::shards::ShardSet;
use mome_data::tokenizer::load_tokenizer;
use mome_distill::{
    build_cache, final_validation, run_distill, CacheBuildOptions, DataSpec, DistillJob,
    DistillSettings, EvalSpec, KdLoss, StrategyConfig, TeacherSection, ValueDtype, DISTILL_METRICS,
};
use mome_plot::{line_chart, LineChart, Series};
use serde::Deserialize;

use crate::train_cmd::{model_config, DataSection, EvalSection, RunArgs};

/// Arguments of `mome distill` (config: see configs/distill-demo.toml and docs/distill.md).
#[derive(Debug, Args)]
pub struct DistillArgs {
    #[command(flatten)]
    run: RunArgs,
}

/// The whole `mome distill` config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillFile {
    /// Run folder.
    pub out_dir: PathBuf,
    /// auto | cpu | cuda | cuda:N
    #[serde(default)]
    pub device: DeviceSpec,
    /// `{ dir = "MODEL_DIR" }` or `{ cache = "CACHE_DIR" }`.
    #[serde(default)]
    pub teacher: TeacherSection,
    /// The student: a preset and/or GPT-2 config fields (as `mome train`'s `[model]`).
    pub student: toml::Table,
    /// Data and sampler.
    pub data: DataSection,
    /// Evaluation during training.
    #[serde(default)]
    pub eval: EvalSection,
    /// Loss, temperature, strategy.
    #[serde(default)]
    pub distill: DistillSettings,
    /// Optimiser, schedule, steps, precision.
    pub train: TrainConfig,
}

fn data_spec(d: &DataSection) -> Result<DataSpec> {
    let tokenizer_sha256 = match &d.tokenizer {
        Some(tok) => Some(load_tokenizer(tok)?.1),
        None => None,
    };
    if d.batch_size == 0 {
        bail!("[data] batch_size must be > 0");
    }
    Ok(DataSpec {
        shards: d.shards.clone(),
        tokenizer_sha256,
        sampler: d.sampler,
        batch_size: d.batch_size,
        domains: d.domains.clone(),
    })
}

fn eval_spec(e: &EvalSection) -> EvalSpec {
    EvalSpec {
        max_sequences: e.max_sequences,
        batch_size: e.batch_size,
    }
}

/// Runs `mome distill`.
pub fn run_distill_cmd(a: DistillArgs) -> Result<()> {
    let a = a.run;
    let text = std::fs::read_to_string(&a.config)
        .with_context(|| format!("reading {}", a.config.display()))?;
    let mut file: DistillFile =
        toml::from_str(&text).with_context(|| format!("invalid config {}", a.config.display()))?;
    a.apply(&mut file.out_dir, &mut file.device, &mut file.train)?;
    let device = file.device.resolve()?;
    let shards = ShardSet::open(&file.data.shards)
        .with_context(|| format!("opening shards {}", file.data.shards.display()))?;
    let student = model_config(&file.student, shards.vocab_size())?;
    let job = DistillJob {
        run_dir: file.out_dir.clone(),
        resume: a.resume,
        device,
        student,
        teacher: file.teacher.clone(),
        data: data_spec(&file.data)?,
        eval: eval_spec(&file.eval),
        train: file.train.clone(),
        distill: file.distill.clone(),
    };
    let out = run_distill(&job)?;
    if out.rank != 0 {
        // Data parallel: rank 0 writes the model and the summary.
        return Ok(());
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "model_dir": out.model_dir,
            "start_step": out.summary.start_step,
            "final_step": out.summary.final_step,
            "final_loss": out.summary.final_loss,
            "tokens_seen": out.summary.tokens_seen,
            "elapsed_s": out.summary.elapsed_s,
            "last_eval": out.summary.last_eval,
            "metrics": out.metrics,
            "distill_metrics": out.distill_metrics,
        }))?
    );
    Ok(())
}

/// `mome teacher-cache ...`
#[derive(Debug, Subcommand)]
pub enum TeacherCacheCommand {
    /// Run the teacher once over the training shards; store top-K ids and log-probs.
    Build(CacheBuildArgs),
}

/// Arguments of `mome teacher-cache build`.
#[derive(Debug, Args)]
pub struct CacheBuildArgs {
    /// Teacher model folder (config.json + model.safetensors).
    #[arg(long)]
    teacher: PathBuf,
    /// Shard folder.
    #[arg(long)]
    shards: PathBuf,
    /// Entries per position.
    #[arg(long)]
    top_k: usize,
    /// Output folder (replaced atomically).
    #[arg(long)]
    out: PathBuf,
    /// Softmax temperature of the stored log-probs (must equal the distillation's).
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// f16 | bf16
    #[arg(long, default_value = "f16")]
    values: ValueDtype,
    /// Splits to cache.
    #[arg(long, default_value = "train")]
    split: Vec<String>,
    /// Sequences per teacher forward.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Device.
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
    /// Run the teacher in bf16.
    #[arg(long)]
    bf16: bool,
}

/// Runs `mome teacher-cache`.
pub fn run_teacher_cache(c: TeacherCacheCommand) -> Result<()> {
    let TeacherCacheCommand::Build(a) = c;
    let opts = CacheBuildOptions {
        top_k: a.top_k,
        temperature: a.temperature,
        value_dtype: a.values,
        splits: a.split,
        batch_size: a.batch_size,
        bf16_teacher: a.bf16,
        quiet: false,
    };
    let m = build_cache(&a.teacher, &a.shards, &a.out, &opts, a.device.resolve()?)?;
    let tokens: u64 = m
        .splits
        .values()
        .flat_map(|d| d.values())
        .map(|d| d.sequences * m.seq_len as u64)
        .sum();
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "out": a.out,
            "top_k": m.top_k,
            "id_dtype": m.id_dtype,
            "value_dtype": m.value_dtype,
            "temperature": m.temperature,
            "tokens": tokens,
            "bytes_per_token": m.bytes_per_token(),
            "bytes": tokens * m.bytes_per_token() as u64,
            "build_seconds": m.build_seconds,
        }))?
    );
    Ok(())
}

/// `mome experiment ...`
#[derive(Debug, Subcommand)]
pub enum ExperimentCommand {
    /// The paper's KD comparison: CE only, fixed, adaptive, alternating x losses.
    Kd(KdArgs),
    /// Catastrophic forgetting: sequential vs balanced batches vs MoE (method §8).
    Forgetting(crate::forgetting_cmd::ForgettingArgs),
}

/// Arguments of `mome experiment kd`.
#[derive(Debug, Args)]
pub struct KdArgs {
    /// TOML config (configs/experiments/kd-demo.toml, kd-gpu.toml).
    #[arg(long)]
    config: PathBuf,
    /// Override the config's `device`.
    #[arg(long)]
    device: Option<DeviceSpec>,
    /// Override the config's `out_dir`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// No progress output.
    #[arg(long)]
    quiet: bool,
}

/// `[teacher_train]`: train the teacher first (into `out_dir/teacher`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherTrain {
    /// The teacher shape (a `[model]` table).
    pub model: toml::Table,
    /// Its training settings.
    pub train: TrainConfig,
}

fn default_losses() -> Vec<KdLoss> {
    vec![KdLoss::ForwardKl, KdLoss::TeacherWeightedCe]
}
fn default_strategies() -> Vec<String> {
    vec!["fixed".into(), "adaptive".into(), "alternating".into()]
}
fn default_half() -> f64 {
    0.5
}
fn default_two() -> f64 {
    2.0
}

/// `[kd]` of an experiment.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KdSection {
    /// Temperature of every KD run.
    #[serde(default = "default_two")]
    pub temperature: f64,
    /// alpha of the fixed runs and initial alpha of the adaptive runs.
    #[serde(default = "default_half")]
    pub alpha: f64,
    /// Adaptive history length (default max(20, max_steps/100)).
    #[serde(default)]
    pub history: Option<usize>,
    /// KD losses compared.
    #[serde(default = "default_losses")]
    pub losses: Vec<KdLoss>,
    /// Strategies compared (fixed, adaptive, alternating); CE only always runs.
    #[serde(default = "default_strategies")]
    pub strategies: Vec<String>,
}

/// The whole `mome experiment kd` config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KdFile {
    /// Experiment folder: `teacher/`, `runs/<name>/`, `report.md`, plots.
    pub out_dir: PathBuf,
    /// auto | cpu | cuda | cuda:N
    #[serde(default)]
    pub device: DeviceSpec,
    /// An existing teacher (`{ dir = ... }`); or use `[teacher_train]`.
    #[serde(default)]
    pub teacher: TeacherSection,
    /// Train the teacher first.
    #[serde(default)]
    pub teacher_train: Option<TeacherTrain>,
    /// Student shape.
    pub student: toml::Table,
    /// Data and sampler (shared by every run).
    pub data: DataSection,
    /// Evaluation.
    #[serde(default)]
    pub eval: EvalSection,
    /// Student training (shared by every run: same seed, data order, init).
    pub train: TrainConfig,
    /// What is compared.
    #[serde(default = "default_kd_section")]
    pub kd: KdSection,
}

fn default_kd_section() -> KdSection {
    toml::from_str("").expect("defaults")
}

struct RunResult {
    name: String,
    val: BTreeMap<String, f64>,
    seconds: f64,
    ce_roughness: Option<f64>,
    final_train_ce: Option<f64>,
}

fn strategy_of(name: &str, kd: &KdSection) -> Result<StrategyConfig> {
    Ok(match name {
        "fixed" => StrategyConfig::Fixed { alpha: kd.alpha },
        "adaptive" => StrategyConfig::Adaptive {
            alpha: kd.alpha,
            history: kd.history,
        },
        "alternating" => StrategyConfig::Alternating,
        other => bail!("[kd] strategies: unknown {other:?} (fixed, adaptive, alternating)"),
    })
}

/// Per-step CE of a run (micro 0 lines), from `distill_metrics.jsonl`.
fn ce_per_step(run_dir: &Path) -> Result<Vec<(u64, f64, f64)>> {
    let mut out = Vec::new();
    for l in read_metrics(&run_dir.join(DISTILL_METRICS))? {
        if l["micro"].as_u64() == Some(0) {
            if let (Some(s), Some(ce), Some(a)) =
                (l["step"].as_u64(), l["ce"].as_f64(), l["alpha"].as_f64())
            {
                out.push((s, ce, a));
            }
        }
    }
    Ok(out)
}

/// Standard deviation of the step-to-step CE change over the second half.
fn roughness(ce: &[(u64, f64, f64)]) -> Option<f64> {
    let half = &ce[ce.len() / 2..];
    let d: Vec<f64> = half.windows(2).map(|w| w[1].1 - w[0].1).collect();
    if d.len() < 2 {
        return None;
    }
    let m = d.iter().sum::<f64>() / d.len() as f64;
    Some((d.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (d.len() - 1) as f64).sqrt())
}

/// Runs `mome experiment kd`.
pub fn run_experiment(c: ExperimentCommand) -> Result<()> {
    let a = match c {
        ExperimentCommand::Kd(a) => a,
        ExperimentCommand::Forgetting(f) => return crate::forgetting_cmd::run_forgetting(f),
    };
    if let Some(env) = mome_core::dist::DistEnv::from_env()? {
        let world = env.world_size;
        bail!(
            "MOME_WORLD_SIZE = {world}: `mome experiment kd` runs one process (its runs are \
             independent: spread them over the GPUs with `mome launch --jobs FILE`, or make \
             each run data parallel with `mome launch --gpus N -- distill ...`)"
        );
    }
    let text = std::fs::read_to_string(&a.config)
        .with_context(|| format!("reading {}", a.config.display()))?;
    let mut file: KdFile =
        toml::from_str(&text).with_context(|| format!("invalid config {}", a.config.display()))?;
    if let Some(d) = a.device {
        file.device = d;
    }
    if let Some(o) = a.out {
        file.out_dir = o;
    }
    file.train.quiet |= a.quiet;
    let device = file.device.resolve()?;
    let shards = ShardSet::open(&file.data.shards)
        .with_context(|| format!("opening shards {}", file.data.shards.display()))?;
    let student = model_config(&file.student, shards.vocab_size())?;
    let data = data_spec(&file.data)?;
    let eval = eval_spec(&file.eval);
    let out = file.out_dir.clone();
    std::fs::create_dir_all(&out)?;
    let started = Instant::now();

    // The teacher: given, or trained here (resumable).
    let mut teacher = file.teacher.clone();
    let mut teacher_val = None;
    if let Some(tt) = &file.teacher_train {
        if teacher.dir.is_some() || teacher.cache.is_some() {
            bail!("give either [teacher] or [teacher_train], not both");
        }
        let mut train = tt.train.clone();
        train.quiet |= a.quiet;
        let tcfg = model_config(&tt.model, shards.vocab_size())?;
        let tdir = out.join("teacher");
        eprintln!("== teacher: {} layers, d={}", tcfg.n_layer, tcfg.n_embd);
        let job = DistillJob {
            run_dir: tdir.clone(),
            resume: true,
            device,
            student: tcfg,
            teacher: TeacherSection::default(),
            data: data.clone(),
            eval,
            train,
            distill: DistillSettings {
                strategy: StrategyConfig::Fixed { alpha: 1.0 },
                ..Default::default()
            },
        };
        let r = run_distill(&job)?;
        teacher.dir = Some(r.model_dir);
        // A teacher trained in bf16 is also run (frozen) in bf16.
        teacher.bf16 |= tt.train.precision == mome_core::Precision::Bf16;
        teacher_val = Some((final_validation(&tdir)?, r.summary.elapsed_s));
    }
    if teacher.dir.is_none() && teacher.cache.is_none() {
        bail!("no teacher: set [teacher] dir = \"MODEL_DIR\" or add a [teacher_train] section");
    }

    let mut plan: Vec<(String, DistillSettings)> = vec![(
        "ce_only".into(),
        DistillSettings {
            loss: KdLoss::ForwardKl,
            temperature: file.kd.temperature,
            strategy: StrategyConfig::Fixed { alpha: 1.0 },
        },
    )];
    for s in &file.kd.strategies {
        for loss in &file.kd.losses {
            plan.push((
                format!("{s}-{}", loss.name()),
                DistillSettings {
                    loss: *loss,
                    temperature: file.kd.temperature,
                    strategy: strategy_of(s, &file.kd)?,
                },
            ));
        }
    }
    let mut results = Vec::new();
    for (name, settings) in plan {
        let run_dir = out.join("runs").join(&name);
        eprintln!("== run {name}");
        let job = DistillJob {
            run_dir: run_dir.clone(),
            resume: true,
            device,
            student: student.clone(),
            teacher: teacher.clone(),
            data: data.clone(),
            eval,
            train: file.train.clone(),
            distill: settings,
        };
        let r = run_distill(&job).with_context(|| format!("run {name}"))?;
        let ce = ce_per_step(&run_dir)?;
        results.push(RunResult {
            name,
            val: final_validation(&run_dir)?,
            seconds: r.summary.elapsed_s,
            ce_roughness: roughness(&ce),
            final_train_ce: {
                let tail = &ce[ce.len().saturating_sub(20)..];
                (!tail.is_empty())
                    .then(|| tail.iter().map(|x| x.1).sum::<f64>() / tail.len() as f64)
            },
        });
    }
    write_report(
        &out,
        &file,
        &a.config,
        &results,
        teacher_val.as_ref(),
        started.elapsed().as_secs_f64(),
    )?;
    println!("{}", out.join("report.md").display());
    Ok(())
}

fn write_report(
    out: &Path,
    file: &KdFile,
    config: &Path,
    results: &[RunResult],
    teacher: Option<&(BTreeMap<String, f64>, f64)>,
    total_s: f64,
) -> Result<()> {
    let domains: Vec<String> = results
        .first()
        .map(|r| r.val.keys().filter(|k| *k != "all").cloned().collect())
        .unwrap_or_default();
    let mut md = String::new();
    md.push_str("# KD experiment report\n\n");
    md.push_str(&format!(
        "Config: `{}`; temperature {}; alpha {} (fixed, adaptive initial); {} student steps per run, batch {} x {} tokens, seed {}. Every run starts from the same student initialisation and sees the same batches.\n\n",
        config.display(),
        file.kd.temperature,
        file.kd.alpha,
        file.train.max_steps,
        file.data.batch_size,
        ShardSet::open(&file.data.shards)?.seq_len(),
        file.train.seed
    ));
    md.push_str("Final validation loss (nats/token) per domain; `all` is the token-weighted mean, ppl = exp(all). `CE rough.` is the standard deviation of the step-to-step change of the training CE over the second half of training (lower = smoother); `train CE` the mean training CE of the last 20 steps; `seconds` the trainer's wall time of the run (all sessions, evaluations included).\n\n");
    md.push_str("| run |");
    for d in &domains {
        md.push_str(&format!(" {d} |"));
    }
    md.push_str(" all | ppl | CE rough. | train CE | seconds |\n|---|");
    for _ in &domains {
        md.push_str("---|");
    }
    md.push_str("---|---|---|---|---|\n");
    let fmt = |x: Option<f64>, p: usize| x.map_or("–".to_string(), |v| format!("{v:.p$}"));
    if let Some((tv, ts)) = teacher {
        md.push_str("| *teacher* |");
        for d in &domains {
            md.push_str(&format!(" {} |", fmt(tv.get(d).copied(), 4)));
        }
        let all = tv.get("all").copied();
        md.push_str(&format!(
            " {} | {} | – | – | {ts:.0} |\n",
            fmt(all, 4),
            fmt(all.map(f64::exp), 2)
        ));
    }
    for r in results {
        md.push_str(&format!("| {} |", r.name));
        for d in &domains {
            md.push_str(&format!(" {} |", fmt(r.val.get(d).copied(), 4)));
        }
        let all = r.val.get("all").copied();
        md.push_str(&format!(
            " {} | {} | {} | {} | {:.0} |\n",
            fmt(all, 4),
            fmt(all.map(f64::exp), 2),
            fmt(r.ce_roughness, 4),
            fmt(r.final_train_ce, 4),
            r.seconds
        ));
    }
    md.push_str(&format!(
        "\nThis invocation took {total_s:.0} s (a rerun skips finished runs). Plots: `loss_curves.png` (training loss of each run as logged, i.e. alpha*CE + beta*KD), `ce_curves.png` (training CE per step, moving average over 10 steps), `val_loss.png` (validation loss at each evaluation), `alpha.png` (alpha per step). Raw metrics: `runs/<run>/metrics.jsonl` and `runs/<run>/{DISTILL_METRICS}`.\n"
    ));
    std::fs::write(out.join("report.md"), md)?;

    // Plots.
    let mut loss_s = Vec::new();
    let mut val_s = Vec::new();
    let mut ce_s = Vec::new();
    let mut alpha_s = Vec::new();
    for r in results {
        let dir = out.join("runs").join(&r.name);
        let lines = read_metrics(&dir.join("metrics.jsonl"))?;
        let pick = |kind: &str, key: &str| -> Vec<(f64, f64)> {
            lines
                .iter()
                .filter(|l| l["kind"] == kind)
                .filter_map(|l| Some((l["step"].as_f64()?, l[key].as_f64()?)))
                .collect()
        };
        loss_s.push(Series::new(&r.name, pick("train", "loss")));
        val_s.push(Series::new(&r.name, pick("eval", "val_loss")));
        let ce = ce_per_step(&dir)?;
        let w = 10usize;
        let smooth: Vec<(f64, f64)> = ce
            .windows(w.min(ce.len().max(1)))
            .map(|win| {
                (
                    win[win.len() - 1].0 as f64,
                    win.iter().map(|x| x.1).sum::<f64>() / win.len() as f64,
                )
            })
            .collect();
        ce_s.push(Series::new(&r.name, smooth));
        alpha_s.push(Series::new(
            &r.name,
            ce.iter().map(|x| (x.0 as f64, x.2)).collect(),
        ));
    }
    let size = (1000, 620);
    let chart = |title: &str, y: &str, series: Vec<Series>| LineChart {
        title: title.into(),
        x_label: "optimizer step".into(),
        y_label: y.into(),
        series,
        log_y: false,
    };
    line_chart(
        &out.join("loss_curves.png"),
        &chart("training loss (alpha*CE + beta*KD)", "loss", loss_s),
        size,
    )?;
    line_chart(
        &out.join("ce_curves.png"),
        &chart(
            "training CE (10-step moving average)",
            "CE (nats/token)",
            ce_s,
        ),
        size,
    )?;
    line_chart(
        &out.join("val_loss.png"),
        &chart("validation loss", "nats/token", val_s),
        size,
    )?;
    line_chart(
        &out.join("alpha.png"),
        &chart("alpha (CE weight) per step", "alpha", alpha_s),
        size,
    )?;
    Ok(())
}
