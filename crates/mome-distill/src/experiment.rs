//! The paper's KD comparison (method §4, the research code's
//! `--alpha_strategy fixed|adaptive` and its two losses): one student per (strategy,
//! loss) plus a CE-only student, every run from the same initialisation on the same
//! batches, optionally after training the teacher first. The job of
//! `mome experiment kd` and of the pipeline's `students` stage.
//!
//! Output folder: `teacher/` (with `[teacher_train]`), `runs/<name>/` (one
//! distillation run each, resumable: a rerun skips finished runs), `report.md`,
//! `loss_curves.png`, `ce_curves.png`, `val_loss.png`, `alpha.png`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use mome_core::job::{DataParams, EvalParams};
use mome_core::metrics::read_metrics;
use mome_core::trainer::TrainConfig;
use mome_core::{DeviceSpec, ParamGuard, Precision};
use mome_experts::ModelSpec;
use mome_plot::{line_chart, LineChart, Series};
use serde::{Deserialize, Serialize};

use crate::losses::KdLoss;
use crate::strategy::StrategyConfig;
use crate::trainer::{
    final_validation, run_distill, DistillParams, DistillSettings, TeacherSection, DISTILL_METRICS,
};
use crate::{Error, Result};

/// `[teacher_train]`: train the teacher first (into `out_dir/teacher`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherTrain {
    /// The teacher shape.
    pub model: ModelSpec,
    /// Its training settings.
    pub train: TrainConfig,
}

/// A compared weighting strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StrategyKind {
    /// Constant `alpha` ([`KdSection::alpha`]).
    Fixed,
    /// The research code's adaptive weights from `alpha`.
    Adaptive,
    /// CE and KD on alternate steps.
    Alternating,
}

impl StrategyKind {
    /// The name used in run names and reports.
    pub fn name(self) -> &'static str {
        match self {
            StrategyKind::Fixed => "fixed",
            StrategyKind::Adaptive => "adaptive",
            StrategyKind::Alternating => "alternating",
        }
    }
}

fn default_losses() -> Vec<KdLoss> {
    vec![KdLoss::ForwardKl, KdLoss::TeacherWeightedCe]
}
fn default_strategies() -> Vec<StrategyKind> {
    vec![
        StrategyKind::Fixed,
        StrategyKind::Adaptive,
        StrategyKind::Alternating,
    ]
}
fn default_half() -> f64 {
    0.5
}
fn default_two() -> f64 {
    2.0
}

/// `[kd]`: what is compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KdSection {
    /// Temperature of every KD run (default 2).
    #[serde(default = "default_two")]
    pub temperature: f64,
    /// `alpha` of the fixed runs and initial `alpha` of the adaptive runs (default 0.5).
    #[serde(default = "default_half")]
    pub alpha: f64,
    /// Adaptive history length (default `max(20, max_steps / 100)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<usize>,
    /// KD losses compared (default forward KL and teacher-weighted CE).
    #[serde(default = "default_losses")]
    pub losses: Vec<KdLoss>,
    /// Strategies compared (default fixed, adaptive, alternating); CE only always runs.
    #[serde(default = "default_strategies")]
    pub strategies: Vec<StrategyKind>,
    /// KD positions per chunk (see [`DistillSettings::kd_chunk`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kd_chunk: Option<usize>,
}

impl Default for KdSection {
    fn default() -> Self {
        Self {
            temperature: default_two(),
            alpha: default_half(),
            history: None,
            losses: default_losses(),
            strategies: default_strategies(),
            kd_chunk: None,
        }
    }
}

impl KdSection {
    /// Ranges and non-empty lists.
    pub fn validate(&self) -> Result<()> {
        if self.strategies.is_empty() {
            return Err(Error::Config(
                "[kd] strategies: give at least one of fixed, adaptive, alternating".into(),
            ));
        }
        if self.losses.is_empty() {
            return Err(Error::Config("[kd] losses: give at least one loss".into()));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(Error::Config(format!(
                "[kd] temperature = {}: must be finite and > 0",
                self.temperature
            )));
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(Error::Config(format!(
                "[kd] alpha = {}: must be in [0, 1]",
                self.alpha
            )));
        }
        if self.history == Some(0) {
            return Err(Error::Config("[kd] history must be > 0".into()));
        }
        Ok(())
    }

    fn strategy(&self, s: StrategyKind) -> StrategyConfig {
        match s {
            StrategyKind::Fixed => StrategyConfig::Fixed { alpha: self.alpha },
            StrategyKind::Adaptive => StrategyConfig::Adaptive {
                alpha: self.alpha,
                history: self.history,
            },
            StrategyKind::Alternating => StrategyConfig::Alternating,
        }
    }

    /// The runs, in order: `ce_only`, then `<strategy>-<loss>` for each pair.
    pub fn plan(&self) -> Vec<(String, DistillSettings)> {
        let mut plan = vec![(
            "ce_only".to_string(),
            DistillSettings {
                loss: KdLoss::ForwardKl,
                temperature: self.temperature,
                strategy: StrategyConfig::Fixed { alpha: 1.0 },
                kd_chunk: self.kd_chunk,
            },
        )];
        for s in &self.strategies {
            for loss in &self.losses {
                plan.push((
                    format!("{}-{}", s.name(), loss.name()),
                    DistillSettings {
                        loss: *loss,
                        temperature: self.temperature,
                        strategy: self.strategy(*s),
                        kd_chunk: self.kd_chunk,
                    },
                ));
            }
        }
        plan
    }
}

/// The `mome experiment kd` config file (unchecked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KdExperimentParams {
    /// Experiment folder: `teacher/`, `runs/<name>/`, `report.md`, plots.
    pub out_dir: PathBuf,
    /// `auto` | `cpu` | `cuda` | `cuda:N`.
    #[serde(default)]
    pub device: DeviceSpec,
    /// An existing teacher (`{ dir = ... }`); or use `[teacher_train]`.
    #[serde(default)]
    pub teacher: TeacherSection,
    /// Train the teacher first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_train: Option<TeacherTrain>,
    /// Student shape.
    pub student: ModelSpec,
    /// Data and sampler (shared by every run).
    pub data: DataParams,
    /// Evaluation.
    #[serde(default)]
    pub eval: EvalParams,
    /// Student training (shared by every run: same seed, data order, init).
    pub train: TrainConfig,
    /// What is compared.
    #[serde(default)]
    pub kd: KdSection,
}

/// A checked [`KdExperimentParams`]: every run's distillation params, checked
/// except for the teacher that `[teacher_train]` has yet to make.
#[derive(Debug, Clone)]
pub struct KdExperimentJob {
    params: KdExperimentParams,
    teacher_job: Option<DistillParams>,
    runs: Vec<(String, DistillParams)>,
}

impl KdExperimentParams {
    fn run_params(&self, out: PathBuf, settings: DistillSettings) -> DistillParams {
        DistillParams {
            out_dir: out,
            device: self.device,
            teacher: self.teacher.clone(),
            student: self.student.clone(),
            data: self.data.clone(),
            eval: self.eval,
            distill: settings,
            train: self.train.clone(),
            resume: true,
        }
    }
}

impl ParamGuard for KdExperimentParams {
    type Checked = KdExperimentJob;
    type Error = Error;
    fn check(&self) -> Result<KdExperimentJob> {
        if let Some(env) = mome_core::dist::DistEnv::from_env()? {
            return Err(Error::Config(format!(
                "MOME_WORLD_SIZE = {}: `mome experiment kd` runs one process (its runs are \
                 independent: spread them over the GPUs with `mome launch --jobs FILE`, or make \
                 each run data parallel with `mome launch --gpus N -- distill ...`)",
                env.world_size
            )));
        }
        self.kd.validate()?;
        let teacher_job = match &self.teacher_train {
            Some(tt) => {
                if self.teacher.dir.is_some() || self.teacher.cache.is_some() {
                    return Err(Error::Config(
                        "give either [teacher] or [teacher_train], not both".into(),
                    ));
                }
                let p = DistillParams {
                    out_dir: self.out_dir.join("teacher"),
                    device: self.device,
                    teacher: TeacherSection::default(),
                    student: tt.model.clone(),
                    data: self.data.clone(),
                    eval: self.eval,
                    distill: DistillSettings {
                        strategy: StrategyConfig::Fixed { alpha: 1.0 },
                        ..DistillSettings::default()
                    },
                    train: tt.train.clone(),
                    resume: true,
                };
                p.check()?;
                Some(p)
            }
            None => {
                if self.teacher.dir.is_none() && self.teacher.cache.is_none() {
                    return Err(Error::Config(
                        "no teacher: set [teacher] dir = \"MODEL_DIR\" or add a [teacher_train] section"
                            .into(),
                    ));
                }
                None
            }
        };
        let mut runs = Vec::new();
        for (name, settings) in self.kd.plan() {
            let p = self.run_params(self.out_dir.join("runs").join(&name), settings);
            // The teacher to be trained does not exist yet: check it later.
            if teacher_job.is_some() {
                let shards = p.data.open()?;
                p.check_shape(shards.vocab_size(), shards.seq_len(), Some(&shards), false)?;
            } else {
                p.check()?;
            }
            runs.push((name, p));
        }
        Ok(KdExperimentJob {
            params: self.clone(),
            teacher_job,
            runs,
        })
    }
}

/// One run of the comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KdRun {
    /// `ce_only` or `<strategy>-<loss>`.
    pub name: String,
    /// Final validation loss per domain, and `all` (token-weighted mean).
    pub validation: BTreeMap<String, f64>,
    /// The trainer's wall time of the run (all sessions, evaluations included).
    pub seconds: f64,
    /// Standard deviation of the step-to-step training CE change over the second
    /// half of training (lower = smoother); `None` with fewer than 3 steps there.
    pub ce_roughness: Option<f64>,
    /// Mean training CE of the last 20 steps.
    pub final_train_ce: Option<f64>,
}

/// What [`run_kd_experiment`] produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KdReport {
    /// The experiment folder.
    pub out_dir: PathBuf,
    /// `out_dir/report.md`.
    pub report: PathBuf,
    /// The trained teacher's final validation (with `[teacher_train]`).
    pub teacher_validation: Option<BTreeMap<String, f64>>,
    /// Its training wall time.
    pub teacher_seconds: Option<f64>,
    /// Every run, in plan order.
    pub runs: Vec<KdRun>,
    /// This invocation's wall time.
    pub seconds: f64,
}

/// Per-step CE of a run (micro 0 lines), from `distill_metrics.jsonl`:
/// `(step, ce, alpha)`.
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
pub fn roughness(ce: &[(u64, f64, f64)]) -> Option<f64> {
    let half = &ce[ce.len() / 2..];
    let d: Vec<f64> = half.windows(2).map(|w| w[1].1 - w[0].1).collect();
    if d.len() < 2 {
        return None;
    }
    let m = d.iter().sum::<f64>() / d.len() as f64;
    Some((d.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (d.len() - 1) as f64).sqrt())
}

/// Runs the comparison (resumable; finished runs are skipped by their trainers) and
/// writes the report and plots.
pub fn run_kd_experiment(job: &KdExperimentJob) -> Result<KdReport> {
    let p = &job.params;
    let out = &p.out_dir;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let started = Instant::now();
    let mut teacher = p.teacher.clone();
    let (mut teacher_validation, mut teacher_seconds) = (None, None);
    if let Some(tj) = &job.teacher_job {
        let cfg = tj.student.resolve(tj.data.open()?.vocab_size())?;
        eprintln!("== teacher: {} layers, d={}", cfg.n_layer, cfg.n_embd);
        let r = run_distill(&tj.check()?)?;
        teacher.dir = Some(r.model_dir);
        // A teacher trained in bf16 is also run (frozen) in bf16.
        if tj.train.precision == Precision::Bf16 {
            teacher.bf16 = Some(true);
        }
        teacher_validation = Some(final_validation(&tj.out_dir)?);
        teacher_seconds = Some(r.summary.elapsed_s);
    }
    let mut runs = Vec::new();
    for (name, rp) in &job.runs {
        eprintln!("== run {name}");
        let mut rp = rp.clone();
        rp.teacher = teacher.clone();
        let r = rp
            .check()
            .and_then(|j| run_distill(&j))
            .map_err(|e| Error::Run {
                name: name.clone(),
                source: Box::new(e),
            })?;
        let ce = ce_per_step(&rp.out_dir)?;
        runs.push(KdRun {
            name: name.clone(),
            validation: final_validation(&rp.out_dir)?,
            seconds: r.summary.elapsed_s,
            ce_roughness: roughness(&ce),
            final_train_ce: {
                let tail = &ce[ce.len().saturating_sub(20)..];
                (!tail.is_empty())
                    .then(|| tail.iter().map(|x| x.1).sum::<f64>() / tail.len() as f64)
            },
        });
    }
    let report = KdReport {
        out_dir: out.clone(),
        report: out.join("report.md"),
        teacher_validation,
        teacher_seconds,
        runs,
        seconds: started.elapsed().as_secs_f64(),
    };
    let seq_len = mome_data::shards::ShardSet::open(&p.data.shards)?.seq_len();
    mome_data::fsutil::write_atomic(&report.report, report.to_markdown(p, seq_len).as_bytes())?;
    write_plots(&report)?;
    Ok(report)
}

impl KdReport {
    /// The report's Markdown: the settings, then one row per run.
    pub fn to_markdown(&self, p: &KdExperimentParams, seq_len: usize) -> String {
        let domains: Vec<String> = self
            .runs
            .first()
            .map(|r| {
                r.validation
                    .keys()
                    .filter(|k| *k != "all")
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let mut md = String::new();
        md.push_str("# KD experiment report\n\n");
        md.push_str(&format!(
            "Config: `{}`; temperature {}; alpha {} (fixed, adaptive initial); {} student steps per run, batch {} x {} tokens, seed {}. Every run starts from the same student initialisation and sees the same batches.\n\n",
            p.out_dir.display(),
            p.kd.temperature,
            p.kd.alpha,
            p.train.max_steps,
            p.data.batch_size,
            seq_len,
            p.train.seed
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
        if let (Some(tv), Some(ts)) = (&self.teacher_validation, self.teacher_seconds) {
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
        for r in &self.runs {
            md.push_str(&format!("| {} |", r.name));
            for d in &domains {
                md.push_str(&format!(" {} |", fmt(r.validation.get(d).copied(), 4)));
            }
            let all = r.validation.get("all").copied();
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
            "\nThis invocation took {:.0} s (a rerun skips finished runs). Plots: `loss_curves.png` (training loss of each run as logged, i.e. alpha*CE + beta*KD), `ce_curves.png` (training CE per step, moving average over 10 steps), `val_loss.png` (validation loss at each evaluation), `alpha.png` (alpha per step). Raw metrics: `runs/<run>/metrics.jsonl` and `runs/<run>/{DISTILL_METRICS}`.\n",
            self.seconds
        ));
        md
    }
}

/// The four plots of the report.
fn write_plots(report: &KdReport) -> Result<()> {
    let out = &report.out_dir;
    let (mut loss_s, mut val_s, mut ce_s, mut alpha_s) = (vec![], vec![], vec![], vec![]);
    for r in &report.runs {
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
    let plots = [
        (
            "loss_curves.png",
            chart("training loss (alpha*CE + beta*KD)", "loss", loss_s),
        ),
        (
            "ce_curves.png",
            chart(
                "training CE (10-step moving average)",
                "CE (nats/token)",
                ce_s,
            ),
        ),
        (
            "val_loss.png",
            chart("validation loss", "nats/token", val_s),
        ),
        (
            "alpha.png",
            chart("alpha (CE weight) per step", "alpha", alpha_s),
        ),
    ];
    for (name, c) in plots {
        line_chart(&out.join(name), &c, size)?;
    }
    Ok(())
}
