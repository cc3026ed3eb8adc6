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
    /// Seeds: every run is repeated with each (its initialisation, data order and
    /// dropout), and the report gives mean ± standard deviation over them. Empty
    /// (default): once, with `[train] seed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<u64>,
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
            seeds: Vec::new(),
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
        let mut seeds = self.seeds.clone();
        seeds.sort_unstable();
        seeds.dedup();
        if seeds.len() != self.seeds.len() {
            return Err(Error::Config("[kd] seeds: a seed is listed twice".into()));
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
    /// (settings name, seed, folder name, params), in plan order then seed order.
    runs: Vec<(String, u64, String, DistillParams)>,
}

impl KdExperimentParams {
    fn run_params(&self, out: PathBuf, settings: DistillSettings, seed: u64) -> DistillParams {
        let mut train = self.train.clone();
        train.seed = seed;
        DistillParams {
            out_dir: out,
            device: self.device,
            teacher: self.teacher.clone(),
            student: self.student.clone(),
            data: self.data.clone(),
            eval: self.eval,
            distill: settings,
            train,
            resume: true,
        }
    }

    /// The seeds of the comparison (`[kd] seeds`, or `[train] seed` alone).
    pub fn seeds(&self) -> Vec<u64> {
        if self.kd.seeds.is_empty() {
            vec![self.train.seed]
        } else {
            self.kd.seeds.clone()
        }
    }

    /// The run folder name of `name` at `seed` (`name` alone with one seed).
    fn run_name(&self, name: &str, seed: u64) -> String {
        if self.kd.seeds.is_empty() {
            name.to_string()
        } else {
            format!("{name}-s{seed}")
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
            for seed in self.seeds() {
                let folder = self.run_name(&name, seed);
                let p = self.run_params(
                    self.out_dir.join("runs").join(&folder),
                    settings.clone(),
                    seed,
                );
                // The teacher to be trained does not exist yet: check it later.
                if teacher_job.is_some() {
                    let shards = p.data.open()?;
                    p.check_shape(shards.vocab_size(), shards.seq_len(), Some(&shards), false)?;
                } else {
                    p.check()?;
                }
                runs.push((name.clone(), seed, folder, p));
            }
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
    /// Its seed.
    pub seed: u64,
    /// Its folder under `runs/` (`name`, or `name-s<seed>` with several seeds).
    pub folder: String,
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
    /// Every run, in plan order, then seed order.
    pub runs: Vec<KdRun>,
    /// The seeds.
    pub seeds: Vec<u64>,
    /// Per compared setting (plan order): the runs' figures over the seeds.
    pub summary: Vec<KdSummaryRow>,
    /// This invocation's wall time.
    pub seconds: f64,
}

/// Mean and sample standard deviation of a set of values (sd 0 with one value).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeanSd {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (n − 1).
    pub sd: f64,
    /// Number of values.
    pub n: usize,
}

impl MeanSd {
    /// Over `values` (`None` when empty).
    pub fn of(values: &[f64]) -> Option<Self> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let sd = if n > 1 {
            (values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Some(Self { mean, sd, n })
    }
}

impl std::fmt::Display for MeanSd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.4} ± {:.4}", self.mean, self.sd)
    }
}

/// One compared setting over the seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KdSummaryRow {
    /// `ce_only` or `<strategy>-<loss>`.
    pub name: String,
    /// Final validation loss per domain and `all`, over the seeds.
    pub validation: BTreeMap<String, MeanSd>,
    /// CE roughness over the seeds (runs where it is defined).
    pub ce_roughness: Option<MeanSd>,
    /// `all` minus CE-only's `all`, per seed (the same seed: the same initialisation
    /// and batches), over the seeds; `None` for CE only itself.
    pub vs_ce_only: Option<MeanSd>,
    /// Whether that difference exceeds the seed spread: |mean| > the combined
    /// standard deviation of the two settings over the seeds
    /// (`sqrt(sd_a² + sd_b²)`); `None` with a single seed or for CE only.
    pub exceeds_seed_spread: Option<bool>,
}

/// The runs grouped by setting (plan order), with mean ± sd over the seeds.
pub fn summarise(runs: &[KdRun]) -> Vec<KdSummaryRow> {
    let mut names: Vec<&str> = Vec::new();
    for r in runs {
        if !names.contains(&r.name.as_str()) {
            names.push(&r.name);
        }
    }
    let all = |r: &KdRun| r.validation.get("all").copied();
    let ce: Vec<&KdRun> = runs.iter().filter(|r| r.name == "ce_only").collect();
    let ce_all = MeanSd::of(&ce.iter().filter_map(|r| all(r)).collect::<Vec<_>>());
    names
        .into_iter()
        .map(|name| {
            let rs: Vec<&KdRun> = runs.iter().filter(|r| r.name == name).collect();
            let mut keys: Vec<&String> = rs.iter().flat_map(|r| r.validation.keys()).collect();
            keys.sort();
            keys.dedup();
            let validation = keys
                .into_iter()
                .filter_map(|k| {
                    let v: Vec<f64> = rs
                        .iter()
                        .filter_map(|r| r.validation.get(k).copied())
                        .collect();
                    MeanSd::of(&v).map(|m| (k.clone(), m))
                })
                .collect::<BTreeMap<_, _>>();
            let ce_roughness =
                MeanSd::of(&rs.iter().filter_map(|r| r.ce_roughness).collect::<Vec<_>>());
            let (vs_ce_only, exceeds_seed_spread) = if name == "ce_only" {
                (None, None)
            } else {
                let diffs: Vec<f64> = rs
                    .iter()
                    .filter_map(|r| {
                        let base = ce.iter().find(|c| c.seed == r.seed)?;
                        Some(all(r)? - all(base)?)
                    })
                    .collect();
                let d = MeanSd::of(&diffs);
                let exceeds = match (d, validation.get("all"), ce_all) {
                    (Some(d), Some(a), Some(b)) if a.n > 1 && b.n > 1 => {
                        Some(d.mean.abs() > (a.sd.powi(2) + b.sd.powi(2)).sqrt())
                    }
                    _ => None,
                };
                (d, exceeds)
            };
            KdSummaryRow {
                name: name.to_string(),
                validation,
                ce_roughness,
                vs_ce_only,
                exceeds_seed_spread,
            }
        })
        .collect()
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
    for (name, seed, folder, rp) in &job.runs {
        eprintln!("== run {folder}");
        let mut rp = rp.clone();
        rp.teacher = teacher.clone();
        let r = rp
            .check()
            .and_then(|j| run_distill(&j))
            .map_err(|e| Error::Run {
                name: folder.clone(),
                source: Box::new(e),
            })?;
        let ce = ce_per_step(&rp.out_dir)?;
        runs.push(KdRun {
            name: name.clone(),
            seed: *seed,
            folder: folder.clone(),
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
    let summary = summarise(&runs);
    let report = KdReport {
        out_dir: out.clone(),
        report: out.join("report.md"),
        teacher_validation,
        teacher_seconds,
        runs,
        seeds: p.seeds(),
        summary,
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
            "Config: `{}`; temperature {}; alpha {} (fixed, adaptive initial); {} student steps per run, batch {} x {} tokens, seed(s) {}. The runs of one seed start from the same student initialisation and see the same batches.\n\n",
            p.out_dir.display(),
            p.kd.temperature,
            p.kd.alpha,
            p.train.max_steps,
            p.data.batch_size,
            seq_len,
            p.seeds()
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
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
            md.push_str(&format!("| {} |", r.folder));
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
        if self.seeds.len() > 1 {
            md.push_str(&format!(
                "\n## Over {} seeds ({})\n\nMean ± standard deviation over the seeds of the final validation loss; `vs CE only` is each seed's `all` minus CE only's at the same seed (same initialisation and batches), over the seeds; it **exceeds the seed spread** when its mean is larger than the combined standard deviation of the two settings over the seeds.\n\n| setting |",
                self.seeds.len(),
                self.seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
            ));
            for d in &domains {
                md.push_str(&format!(" {d} |"));
            }
            md.push_str(" all | CE rough. | vs CE only | exceeds the seed spread |\n|---|");
            for _ in &domains {
                md.push_str("---|");
            }
            md.push_str("---|---|---|---|\n");
            let ms = |m: Option<&MeanSd>| m.map_or("–".to_string(), MeanSd::to_string);
            for row in &self.summary {
                md.push_str(&format!("| {} |", row.name));
                for d in &domains {
                    md.push_str(&format!(" {} |", ms(row.validation.get(d))));
                }
                md.push_str(&format!(
                    " {} | {} | {} | {} |\n",
                    ms(row.validation.get("all")),
                    ms(row.ce_roughness.as_ref()),
                    row.vs_ce_only.map_or("–".to_string(), |d| format!(
                        "{:+.4} ± {:.4}",
                        d.mean, d.sd
                    )),
                    match row.exceeds_seed_spread {
                        Some(true) => "**yes**",
                        Some(false) => "no",
                        None => "–",
                    }
                ));
            }
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
        let dir = out.join("runs").join(&r.folder);
        let lines = read_metrics(&dir.join("metrics.jsonl"))?;
        let pick = |kind: &str, key: &str| -> Vec<(f64, f64)> {
            lines
                .iter()
                .filter(|l| l["kind"] == kind)
                .filter_map(|l| Some((l["step"].as_f64()?, l[key].as_f64()?)))
                .collect()
        };
        loss_s.push(Series::new(&r.folder, pick("train", "loss")));
        val_s.push(Series::new(&r.folder, pick("eval", "val_loss")));
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
        ce_s.push(Series::new(&r.folder, smooth));
        alpha_s.push(Series::new(
            &r.folder,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str, seed: u64, all: f64) -> KdRun {
        KdRun {
            name: name.into(),
            seed,
            folder: format!("{name}-s{seed}"),
            validation: [("all".to_string(), all), ("en".to_string(), all + 1.0)]
                .into_iter()
                .collect(),
            seconds: 1.0,
            ce_roughness: Some(0.1 * seed as f64),
            final_train_ce: None,
        }
    }

    #[test]
    fn mean_and_sample_sd() {
        let m = MeanSd::of(&[2.0, 4.0, 6.0]).unwrap();
        approx::assert_abs_diff_eq!(m.mean, 4.0);
        approx::assert_abs_diff_eq!(m.sd, 2.0); // sqrt((4 + 0 + 4) / 2)
        assert_eq!(m.n, 3);
        assert_eq!(MeanSd::of(&[5.0]).unwrap().sd, 0.0);
        assert!(MeanSd::of(&[]).is_none());
    }

    /// Paired differences against CE only at the same seed, and the spread rule.
    #[test]
    fn settings_are_summarised_over_seeds() {
        let runs = vec![
            run("ce_only", 1, 5.0),
            run("ce_only", 2, 5.2),
            run("ce_only", 3, 5.4),
            // Clearly better at every seed: -0.5 each.
            run("fixed-forward_kl", 1, 4.5),
            run("fixed-forward_kl", 2, 4.7),
            run("fixed-forward_kl", 3, 4.9),
            // Within the spread: +0.1, -0.1, 0.0.
            run("adaptive-forward_kl", 1, 5.1),
            run("adaptive-forward_kl", 2, 5.1),
            run("adaptive-forward_kl", 3, 5.4),
        ];
        let s = summarise(&runs);
        assert_eq!(
            s.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["ce_only", "fixed-forward_kl", "adaptive-forward_kl"]
        );
        assert!(s[0].vs_ce_only.is_none() && s[0].exceeds_seed_spread.is_none());
        approx::assert_abs_diff_eq!(s[0].validation["all"].mean, 5.2, epsilon = 1e-12);
        approx::assert_abs_diff_eq!(s[0].validation["en"].mean, 6.2, epsilon = 1e-12);
        let d = s[1].vs_ce_only.unwrap();
        approx::assert_abs_diff_eq!(d.mean, -0.5, epsilon = 1e-12);
        approx::assert_abs_diff_eq!(d.sd, 0.0, epsilon = 1e-12);
        // |−0.5| > sqrt(0.2² + 0.2²) ≈ 0.283
        assert_eq!(s[1].exceeds_seed_spread, Some(true));
        let d = s[2].vs_ce_only.unwrap();
        approx::assert_abs_diff_eq!(d.mean, 0.0, epsilon = 1e-12);
        assert_eq!(s[2].exceeds_seed_spread, Some(false));
        approx::assert_abs_diff_eq!(s[1].ce_roughness.unwrap().mean, 0.2, epsilon = 1e-12);
        // One seed: no spread to compare with.
        let one = summarise(&[run("ce_only", 1, 5.0), run("fixed-forward_kl", 1, 4.0)]);
        assert_eq!(one[1].exceeds_seed_spread, None);
    }
}
