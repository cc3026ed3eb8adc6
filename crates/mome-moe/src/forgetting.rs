//! The catastrophic forgetting study of method §8.
//!
//! The same student shape is trained three ways on the same shards, with the same
//! batch size and number of optimizer steps (the budget):
//!
//! - **sequential**: one phase per domain, in the configured order (en → fr → de →
//!   py), each `max_steps / N` steps of that domain only;
//! - **balanced**: one session whose batches hold `batch_size / N` sequences of each
//!   domain (smaller domains restart until the largest is covered);
//! - **moe**: JEET (or MoE-CE) with one expert per domain behind per-sequence
//!   routing, trained with single-domain batches (`blocks` sampler); its validation
//!   sequences are routed by their domain label.
//!
//! Every domain's validation loss is measured before training (step 0) and every
//! `max_steps / (N * evals_per_phase)` steps, so the sequential phase boundaries are
//! evaluation points. Each regime runs in `out/runs/<regime>/` on mome-core's
//! trainer (checkpoints, `metrics.jsonl`, exact resume); a finished regime writes
//! `regime.json` and is skipped by a rerun. The experiment then writes, each
//! atomically, `forgetting.json` (every number and curve), `report.md` and
//! `forgetting.png` (one panel per regime), and finally `complete.json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use mome_core::data::ShardBatches;
use mome_core::job::EvalParams;
use mome_core::metrics::read_metrics;
use mome_core::trainer::{Batch, BatchSource, MapErr, TrainConfig, Trainer};
use mome_core::{DeviceSpec, ParamGuard};
use mome_data::fsutil::{write_atomic, write_json_atomic};
use mome_data::sampler::{SamplerConfig, SamplerKind};
use mome_data::shards::ShardSet;
use mome_experts::eval::evaluate;
use mome_experts::train::seeded_model;
use mome_experts::{Gpt2Config, Gpt2LmHeadModel, LmObjective, ModelSpec};
use serde::{Deserialize, Serialize};
use tch::{nn, Device};

use crate::config::{Arch, MoeConfig, Setting};
use crate::error::{Error, Result};
use crate::eval::{evaluate_settings, EvalOptions};
use crate::model::MoeModel;
use crate::train::{train_moe, CrossEntropy, RunOptions};

/// The file that marks a finished experiment folder (written last).
pub const COMPLETE_FILE: &str = "complete.json";
/// The numbers and curves.
pub const JSON_FILE: &str = "forgetting.json";
/// The Markdown report.
pub const REPORT_FILE: &str = "report.md";
/// The curves, one panel per regime.
pub const PNG_FILE: &str = "forgetting.png";

/// A validation loss rise (nats/token) above which a regime is said to forget a
/// domain: its final loss exceeds its best loss during training by more than this.
pub const FORGETTING_THRESHOLD: f64 = 0.1;

/// One way of training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Regime {
    /// One domain after the other.
    Sequential,
    /// Balanced multi-domain batches.
    Balanced,
    /// Experts per domain behind routing.
    Moe,
}

impl Regime {
    /// The three regimes, in report order.
    pub const ALL: [Regime; 3] = [Regime::Sequential, Regime::Balanced, Regime::Moe];

    /// The name used in folders, JSON and reports.
    pub fn name(self) -> &'static str {
        match self {
            Regime::Sequential => "sequential",
            Regime::Balanced => "balanced",
            Regime::Moe => "moe",
        }
    }
}

/// Everything the experiment needs: a checked [`ForgettingParams`] (or built by
/// hand).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForgettingJob {
    /// Output folder.
    pub out_dir: PathBuf,
    /// Where every regime trains.
    pub device: DeviceSpec,
    /// Shard folder (train and validation splits).
    pub shards: PathBuf,
    /// sha256 of the tokenizer, checked against the shards when given.
    pub tokenizer_sha256: Option<String>,
    /// Domains in sequential order (empty: the train split's domains, sorted).
    pub domains: Vec<String>,
    /// The student shape (also every expert's shape in the MoE regime).
    pub student: Gpt2Config,
    /// Sequences per micro-batch (a multiple of the number of domains).
    pub batch_size: usize,
    /// Optimizer, schedule, precision, seed; `max_steps` is the budget of every
    /// regime (a multiple of the number of domains). `eval_every` is set by the
    /// experiment.
    pub train: TrainConfig,
    /// Evaluations per sequential phase (they divide the phase evenly).
    pub evals_per_phase: u64,
    /// Validation sequences per domain at each evaluation (0 = all).
    pub eval_max_sequences: usize,
    /// Sequences per evaluation forward pass.
    pub eval_batch_size: usize,
    /// `jeet` or `moe-ce`.
    pub moe_arch: Arch,
    /// The regimes to run (default all three).
    pub regimes: Vec<Regime>,
}

/// `[data]` of a forgetting config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgettingData {
    /// Shard folder made by `mome data encode`.
    pub shards: PathBuf,
    /// Optional `tokenizer.json`, checked against the shards' tokenizer hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<PathBuf>,
    /// Sequences per batch (a multiple of the number of domains).
    pub batch_size: usize,
}

fn default_evals() -> u64 {
    4
}
fn default_arch() -> Arch {
    Arch::Jeet
}
fn default_regimes() -> Vec<Regime> {
    Regime::ALL.to_vec()
}

/// `[forgetting]`: what is compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgettingSection {
    /// Domains in sequential order (empty: the shards' domains, sorted).
    #[serde(default)]
    pub domains: Vec<String>,
    /// Evaluations per sequential phase (default 4).
    #[serde(default = "default_evals")]
    pub evals_per_phase: u64,
    /// MoE regime architecture: `jeet` (default) or `moe-ce`.
    #[serde(default = "default_arch")]
    pub moe_arch: Arch,
    /// Regimes to run (default sequential, balanced, moe).
    #[serde(default = "default_regimes")]
    pub regimes: Vec<Regime>,
}

impl Default for ForgettingSection {
    fn default() -> Self {
        Self {
            domains: Vec::new(),
            evals_per_phase: default_evals(),
            moe_arch: default_arch(),
            regimes: default_regimes(),
        }
    }
}

/// The `mome experiment forgetting` config file (unchecked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgettingParams {
    /// Output folder.
    pub out_dir: PathBuf,
    /// `auto` | `cpu` | `cuda` | `cuda:N`.
    #[serde(default)]
    pub device: DeviceSpec,
    /// Shards and batch size.
    pub data: ForgettingData,
    /// Validation at every evaluation.
    #[serde(default)]
    pub eval: EvalParams,
    /// The student shape (also every MoE expert's).
    pub student: ModelSpec,
    /// What is compared.
    #[serde(default)]
    pub forgetting: ForgettingSection,
    /// Optimizer, schedule, precision, seed; `max_steps` is every regime's budget.
    pub train: TrainConfig,
}

impl ParamGuard for ForgettingParams {
    type Checked = ForgettingJob;
    type Error = Error;
    /// Opens the shards (checked against the tokenizer), resolves the student and
    /// plans the phases: every check of the experiment before any work.
    fn check(&self) -> Result<ForgettingJob> {
        if let Some(env) = mome_core::dist::DistEnv::from_env()? {
            return Err(Error::Config(format!(
                "MOME_WORLD_SIZE = {}: `mome experiment forgetting` runs one process (its \
                 regimes are independent runs: spread several studies with `mome launch --jobs FILE`)",
                env.world_size
            )));
        }
        self.train.validate()?;
        self.eval.validate()?;
        let device = self.device.resolve()?;
        self.train.precision.validate(device)?;
        let shards = ShardSet::open(&self.data.shards)?;
        let tokenizer_sha256 = match &self.data.tokenizer {
            Some(t) => Some(mome_data::tokenizer::load_tokenizer(t)?.1),
            None => None,
        };
        let job = ForgettingJob {
            out_dir: self.out_dir.clone(),
            device: self.device,
            shards: self.data.shards.clone(),
            tokenizer_sha256,
            domains: self.forgetting.domains.clone(),
            student: self.student.resolve(shards.vocab_size())?,
            batch_size: self.data.batch_size,
            train: self.train.clone(),
            evals_per_phase: self.forgetting.evals_per_phase,
            eval_max_sequences: self.eval.max_sequences,
            eval_batch_size: self.eval.batch_size,
            moe_arch: self.forgetting.moe_arch,
            regimes: self.forgetting.regimes.clone(),
        };
        plan(&job)?;
        Ok(job)
    }
}

/// Validation losses at one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalPoint {
    /// Optimizer step (0 = before training).
    pub step: u64,
    /// Domain -> validation loss.
    pub losses: BTreeMap<String, f64>,
    /// Token-weighted mean over the domains.
    pub mean: f64,
}

/// The result of one regime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegimeResult {
    /// Which regime.
    pub regime: Regime,
    /// A one-line description.
    pub description: String,
    /// Validation losses at step 0 and every evaluation.
    pub curve: Vec<EvalPoint>,
    /// The last point's losses.
    pub final_losses: BTreeMap<String, f64>,
    /// Domain -> best (lowest) validation loss during training.
    pub best_losses: BTreeMap<String, f64>,
    /// Domain -> final minus best loss (>= 0): how much was forgotten.
    pub forgetting: BTreeMap<String, f64>,
    /// Distinct parameters of the trained model.
    pub total_parameters: i64,
    /// Trainer wall time (all sessions), seconds.
    pub train_seconds: f64,
}

/// One sequential phase: the losses at its end and their change over the phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseChange {
    /// 1-based phase number.
    pub phase: usize,
    /// The domain trained in this phase.
    pub trained: String,
    /// The step the phase ends at.
    pub end_step: u64,
    /// Domain -> loss at the end of the phase.
    pub losses: BTreeMap<String, f64>,
    /// Domain -> loss change over the phase (negative = learned, positive = forgotten).
    pub delta: BTreeMap<String, f64>,
}

/// Whether each regime forgets, and whether that is the paper's finding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// The threshold used (nats/token).
    pub threshold: f64,
    /// Regime -> largest (final - best) over the domains.
    pub max_forgetting: BTreeMap<String, f64>,
    /// Regime -> whether that exceeds the threshold.
    pub forgets: BTreeMap<String, bool>,
    /// Sequential forgets, balanced and MoE do not (only when all three ran).
    pub paper_finding_holds: Option<bool>,
}

/// Everything `forgetting.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForgettingReport {
    /// Domains in sequential order.
    pub domains: Vec<String>,
    /// Optimizer steps of every regime.
    pub max_steps: u64,
    /// Steps per sequential phase.
    pub steps_per_phase: u64,
    /// Steps between evaluations.
    pub eval_every: u64,
    /// Sequences per batch.
    pub batch_size: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// The student shape.
    pub student: Gpt2Config,
    /// One entry per regime run.
    pub regimes: Vec<RegimeResult>,
    /// The sequential phases (when the sequential regime ran).
    pub sequential_phases: Vec<PhaseChange>,
    /// The verdict.
    pub finding: Finding,
    /// Wall time of this invocation, seconds.
    pub seconds: f64,
}

/// Sequential phases: domain `k` for steps `k * steps_per_phase + 1 ..= (k + 1) *
/// steps_per_phase`; the position (micro-batches drawn and each domain's sampler)
/// is saved in checkpoints.
struct PhasedSource {
    phases: Vec<ShardBatches>,
    steps_per_phase: u64,
    grad_accum: u64,
    calls: u64,
}

impl BatchSource for PhasedSource {
    fn next_batch(&mut self) -> mome_core::Result<Batch> {
        let phase = ((self.calls / self.grad_accum) / self.steps_per_phase) as usize;
        let phase = phase.min(self.phases.len() - 1);
        self.calls += 1;
        self.phases[phase].next_batch()
    }
    fn state(&self) -> serde_json::Value {
        serde_json::json!({
            "calls": self.calls,
            "phases": self.phases.iter().map(|p| p.state()).collect::<Vec<_>>(),
        })
    }
    fn restore(&mut self, state: &serde_json::Value) -> mome_core::Result<()> {
        let bad = || mome_core::Error::Config("invalid sequential data state".into());
        self.calls = state["calls"].as_u64().ok_or_else(bad)?;
        let phases = state["phases"].as_array().ok_or_else(bad)?;
        if phases.len() != self.phases.len() {
            return Err(bad());
        }
        for (p, s) in self.phases.iter_mut().zip(phases) {
            p.restore(s)?;
        }
        Ok(())
    }
}

struct Plan {
    domains: Vec<String>,
    steps_per_phase: u64,
    eval_every: u64,
    seq_len: usize,
}

fn plan(job: &ForgettingJob) -> Result<Plan> {
    let shards = ShardSet::open(&job.shards)?;
    if let Some(sha) = &job.tokenizer_sha256 {
        shards.check_tokenizer(sha)?;
    }
    shards.check_vocab(job.student.vocab_size as usize)?;
    if shards.seq_len() as i64 > job.student.n_positions {
        return Err(Error::Config(format!(
            "the shards hold {}-token sequences but the student has {} positions",
            shards.seq_len(),
            job.student.n_positions
        )));
    }
    job.student.validate()?;
    job.train.validate()?;
    let have = shards.domains("train")?;
    let val = shards.domains("validation")?;
    let domains = if job.domains.is_empty() {
        have.clone()
    } else {
        job.domains.clone()
    };
    for d in &domains {
        if !have.contains(d) || !val.contains(d) {
            return Err(Error::Config(format!(
                "domain {d:?} needs train and validation sequences in {} (train: {have:?}, validation: {val:?})",
                job.shards.display()
            )));
        }
    }
    let n = domains.len() as u64;
    if n < 2 {
        return Err(Error::Config(
            "the forgetting study needs at least two domains".into(),
        ));
    }
    if job.train.max_steps % n != 0 {
        return Err(Error::Config(format!(
            "train.max_steps = {} must be a multiple of the {n} domains (one sequential phase each)",
            job.train.max_steps
        )));
    }
    let steps_per_phase = job.train.max_steps / n;
    if job.evals_per_phase == 0 || steps_per_phase % job.evals_per_phase != 0 {
        return Err(Error::Config(format!(
            "evals_per_phase = {} must be > 0 and divide the {steps_per_phase} steps of a phase",
            job.evals_per_phase
        )));
    }
    if job.batch_size == 0 || job.batch_size % domains.len() != 0 {
        return Err(Error::Config(format!(
            "batch_size = {} must be a positive multiple of the {n} domains (balanced batches)",
            job.batch_size
        )));
    }
    if job.eval_batch_size == 0 {
        return Err(Error::Config("eval batch_size must be > 0".into()));
    }
    if job.moe_arch == Arch::Ple {
        return Err(Error::Config(
            "the MoE regime trains its experts: arch must be jeet or moe-ce".into(),
        ));
    }
    if job.regimes.is_empty() {
        return Err(Error::Config("no regime to run".into()));
    }
    Ok(Plan {
        domains,
        steps_per_phase,
        eval_every: steps_per_phase / job.evals_per_phase,
        seq_len: shards.seq_len(),
    })
}

fn eval_json(losses: &BTreeMap<String, f64>, mean: f64) -> serde_json::Value {
    let mut v = serde_json::json!({ "val_loss": mean });
    for (d, l) in losses {
        v[format!("val_loss_{d}")] = serde_json::json!(l);
    }
    v
}

fn point_of(step: u64, v: &serde_json::Value, domains: &[String]) -> Option<EvalPoint> {
    let mut losses = BTreeMap::new();
    for d in domains {
        losses.insert(d.clone(), v[format!("val_loss_{d}")].as_f64()?);
    }
    Some(EvalPoint {
        step,
        losses,
        mean: v["val_loss"].as_f64()?,
    })
}

/// The step-0 evaluation, computed once (before any checkpoint) and kept in
/// `initial_eval.json`.
fn initial_point(
    run_dir: &Path,
    domains: &[String],
    eval: impl FnOnce() -> Result<serde_json::Value>,
) -> Result<EvalPoint> {
    let path = run_dir.join("initial_eval.json");
    let v: serde_json::Value = if path.is_file() {
        serde_json::from_slice(&std::fs::read(&path).map_err(|e| Error::io(&path, e))?)?
    } else {
        let v = eval()?;
        write_json_atomic(&path, &v)?;
        v
    };
    point_of(0, &v, domains)
        .ok_or_else(|| Error::Config(format!("{}: missing domain losses", path.display())))
}

fn result_of(
    regime: Regime,
    description: String,
    run_dir: &Path,
    domains: &[String],
    initial: EvalPoint,
    total_parameters: i64,
    train_seconds: f64,
) -> Result<RegimeResult> {
    let mut curve = vec![initial];
    for l in read_metrics(&run_dir.join("metrics.jsonl"))? {
        if l["kind"] != "eval" {
            continue;
        }
        let Some(step) = l["step"].as_u64() else {
            continue;
        };
        if let Some(p) = point_of(step, &l, domains) {
            // A resumed run may repeat an evaluation: keep the latest.
            curve.retain(|q| q.step != step);
            curve.push(p);
        }
    }
    curve.sort_by_key(|p| p.step);
    let last = curve.last().expect("initial point").clone();
    let mut best = BTreeMap::new();
    let mut forgetting = BTreeMap::new();
    for d in domains {
        let b = curve
            .iter()
            .map(|p| p.losses[d])
            .fold(f64::INFINITY, f64::min);
        best.insert(d.clone(), b);
        forgetting.insert(d.clone(), (last.losses[d] - b).max(0.0));
    }
    Ok(RegimeResult {
        regime,
        description,
        curve,
        final_losses: last.losses,
        best_losses: best,
        forgetting,
        total_parameters,
        train_seconds,
    })
}

fn train_cfg(job: &ForgettingJob, plan: &Plan) -> TrainConfig {
    let mut t = job.train.clone();
    t.eval_every = plan.eval_every;
    t
}

fn run_gpt2(
    job: &ForgettingJob,
    plan: &Plan,
    regime: Regime,
    run_dir: &Path,
    device: Device,
) -> Result<RegimeResult> {
    let cfg = train_cfg(job, plan);
    let (vs, model) = seeded_model(&job.student, device, &cfg)?;
    let eval_shards = ShardSet::open(&job.shards)?;
    let (emax, ebs) = (job.eval_max_sequences, job.eval_batch_size);
    let eval_model = |m: &Gpt2LmHeadModel| -> Result<serde_json::Value> {
        let r = evaluate(m, &eval_shards, "validation", emax, ebs)?;
        let losses: BTreeMap<String, f64> = plan
            .domains
            .iter()
            .filter_map(|d| r.domains.get(d).map(|e| (d.clone(), e.loss)))
            .collect();
        let mean = mean_loss(&r.domains, &plan.domains);
        Ok(eval_json(&losses, mean))
    };
    let initial = initial_point(run_dir, &plan.domains, || {
        let _g = tch::no_grad_guard();
        eval_model(&model)
    })?;
    let sampler = |kind: SamplerKind, domains: Vec<String>| -> Result<ShardBatches> {
        Ok(ShardBatches::new(
            ShardSet::open(&job.shards)?,
            "train",
            SamplerConfig {
                kind,
                batch_size: job.batch_size,
                seed: cfg.seed,
                domains,
            },
        )?)
    };
    let (mut source, description): (Box<dyn BatchSource>, String) = match regime {
        Regime::Sequential => (
            Box::new(PhasedSource {
                phases: plan
                    .domains
                    .iter()
                    .map(|d| sampler(SamplerKind::Mixed, vec![d.clone()]))
                    .collect::<Result<_>>()?,
                steps_per_phase: plan.steps_per_phase,
                grad_accum: cfg.grad_accum.max(1),
                calls: 0,
            }),
            format!(
                "one model, one domain per phase ({}), {} steps each",
                plan.domains.join(" → "),
                plan.steps_per_phase
            ),
        ),
        _ => (
            Box::new(sampler(SamplerKind::Balanced, plan.domains.clone())?),
            format!(
                "one model, balanced batches ({} sequences of each domain per batch)",
                job.batch_size / plan.domains.len()
            ),
        ),
    };
    let mut trainer = Trainer::new(cfg.clone(), &vs, run_dir, true)?;
    let model_ref = &model;
    let mut eval_fn = |_step: u64| -> Result<serde_json::Value> { eval_model(model_ref) };
    let summary = trainer.run(
        source.as_mut(),
        &mut MapErr::<_, Error>::new(LmObjective::new(&model, &cfg.kernels)?),
        Some(&mut eval_fn),
        &[("config.json", job.student.to_hf_json()?.into_bytes())],
    )?;
    model.save_pretrained(run_dir.join("model"))?;
    result_of(
        regime,
        description,
        run_dir,
        &plan.domains,
        initial,
        model.param_count().total,
        summary.elapsed_s,
    )
}

fn mean_loss(domains: &BTreeMap<String, mome_experts::eval::DomainEval>, keep: &[String]) -> f64 {
    let (mut s, mut n) = (0.0, 0i64);
    for d in keep {
        if let Some(e) = domains.get(d) {
            s += e.loss * e.tokens as f64;
            n += e.tokens;
        }
    }
    s / n.max(1) as f64
}

fn run_moe(
    job: &ForgettingJob,
    plan: &Plan,
    run_dir: &Path,
    device: Device,
) -> Result<RegimeResult> {
    let cfg = train_cfg(job, plan);
    let mcfg = MoeConfig {
        arch: job.moe_arch,
        domains: plan.domains.clone(),
        expert: job.student.clone(),
        common_expert: job.moe_arch == Arch::MoeCe,
        low_confidence_to_common: true,
    };
    let vs = nn::VarStore::new(device);
    let mut model = {
        let _g = mome_core::rng::lock_default_generator();
        tch::manual_seed(cfg.seed as i64);
        MoeModel::new(&vs.root(), &mcfg)?
    };
    model.set_compute_kind(cfg.precision.compute_kind())?;
    model.set_kernels(&cfg.kernels);
    let eval_shards = ShardSet::open(&job.shards)?;
    let opts = EvalOptions {
        split: "validation".into(),
        max_sequences: job.eval_max_sequences,
        batch_size: job.eval_batch_size,
        skip_unavailable: false,
    };
    let routed = [Setting::routed(mcfg.common_expert)];
    let eval_model = |m: &MoeModel| -> Result<serde_json::Value> {
        let r = evaluate_settings(m, &eval_shards, &routed, &opts, None)?;
        let s = &r.settings[0];
        let losses: BTreeMap<String, f64> =
            s.domains.iter().map(|(d, e)| (d.clone(), e.loss)).collect();
        Ok(eval_json(&losses, mean_loss(&s.domains, &plan.domains)))
    };
    let initial = initial_point(run_dir, &plan.domains, || eval_model(&model))?;
    let source = ShardBatches::new(
        ShardSet::open(&job.shards)?,
        "train",
        SamplerConfig {
            kind: SamplerKind::Blocks,
            batch_size: job.batch_size,
            seed: cfg.seed,
            domains: plan.domains.clone(),
        },
    )?;
    let model_ref = &model;
    let mut eval_fn = |_step: u64| -> Result<serde_json::Value> { eval_model(model_ref) };
    let mut ce = CrossEntropy::new(&cfg.kernels, &model)?;
    let summary = train_moe(
        &model,
        &vs,
        source,
        cfg,
        &RunOptions {
            run_dir,
            resume: true,
            group: None,
            prefetch: true,
        },
        &mut ce,
        Some(&mut eval_fn),
    )?;
    model.save(&run_dir.join("model"))?;
    result_of(
        Regime::Moe,
        format!(
            "{} with one expert per domain ({}), single-domain batches, sequences routed by domain label",
            job.moe_arch.name(),
            plan.domains.join(", ")
        ),
        run_dir,
        &plan.domains,
        initial,
        model.total_parameters(),
        summary.elapsed_s,
    )
}

/// The job as recorded in `out/job.json`, without what may change between
/// sessions (progress output).
fn recorded(job: &ForgettingJob) -> serde_json::Value {
    let mut j = job.clone();
    j.train.quiet = false;
    let mut v = serde_json::to_value(&j).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.remove("out_dir");
        o.remove("device");
    }
    v
}

/// Runs (or resumes) the experiment and writes its outputs (see the module docs).
pub fn run_forgetting(job: &ForgettingJob) -> Result<ForgettingReport> {
    let started = Instant::now();
    let device = job.device.resolve()?;
    let plan = plan(job)?;
    let out = &job.out_dir;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let job_path = out.join("job.json");
    let want = recorded(job);
    if job_path.is_file() {
        let have: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&job_path).map_err(|e| Error::io(&job_path, e))?,
        )?;
        if have != want {
            return Err(Error::Config(format!(
                "{} holds an experiment with other settings ({}); use another output folder or remove it",
                out.display(),
                job_path.display()
            )));
        }
    } else {
        write_json_atomic(&job_path, &want)?;
    }
    let mut regimes = Vec::new();
    for &regime in &job.regimes {
        let run_dir = out.join("runs").join(regime.name());
        let done = run_dir.join("regime.json");
        if done.is_file() {
            let r: RegimeResult =
                serde_json::from_slice(&std::fs::read(&done).map_err(|e| Error::io(&done, e))?)?;
            if !job.train.quiet {
                eprintln!("== {}: done earlier ({})", regime.name(), done.display());
            }
            regimes.push(r);
            continue;
        }
        if !job.train.quiet {
            eprintln!("== {}", regime.name());
        }
        let r = match regime {
            Regime::Moe => run_moe(job, &plan, &run_dir, device)?,
            _ => run_gpt2(job, &plan, regime, &run_dir, device)?,
        };
        write_json_atomic(&done, &r)?;
        regimes.push(r);
    }
    let sequential_phases = regimes
        .iter()
        .find(|r| r.regime == Regime::Sequential)
        .map(|r| phases(r, &plan))
        .unwrap_or_default();
    let finding = finding(&regimes, &plan.domains);
    let report = ForgettingReport {
        domains: plan.domains.clone(),
        max_steps: job.train.max_steps,
        steps_per_phase: plan.steps_per_phase,
        eval_every: plan.eval_every,
        batch_size: job.batch_size,
        seq_len: plan.seq_len,
        student: job.student.clone(),
        regimes,
        sequential_phases,
        finding,
        seconds: started.elapsed().as_secs_f64(),
    };
    let _ = std::fs::remove_file(out.join(COMPLETE_FILE));
    write_json_atomic(&out.join(JSON_FILE), &report)?;
    write_atomic(&out.join(REPORT_FILE), report.to_markdown().as_bytes())?;
    write_plot(&report, &out.join(PNG_FILE))?;
    write_json_atomic(
        &out.join(COMPLETE_FILE),
        &serde_json::json!({
            "files": [JSON_FILE, REPORT_FILE, PNG_FILE],
            "paper_finding_holds": report.finding.paper_finding_holds,
        }),
    )?;
    Ok(report)
}

fn phases(r: &RegimeResult, plan: &Plan) -> Vec<PhaseChange> {
    let at = |step: u64| r.curve.iter().find(|p| p.step == step);
    let mut out = Vec::new();
    for (k, d) in plan.domains.iter().enumerate() {
        let (s0, s1) = (
            k as u64 * plan.steps_per_phase,
            (k as u64 + 1) * plan.steps_per_phase,
        );
        let (Some(a), Some(b)) = (at(s0), at(s1)) else {
            continue;
        };
        out.push(PhaseChange {
            phase: k + 1,
            trained: d.clone(),
            end_step: s1,
            losses: b.losses.clone(),
            delta: b
                .losses
                .iter()
                .map(|(x, l)| (x.clone(), l - a.losses[x]))
                .collect(),
        });
    }
    out
}

fn finding(regimes: &[RegimeResult], domains: &[String]) -> Finding {
    let mut max_forgetting = BTreeMap::new();
    let mut forgets = BTreeMap::new();
    for r in regimes {
        let m = domains
            .iter()
            .map(|d| r.forgetting[d])
            .fold(0.0f64, f64::max);
        max_forgetting.insert(r.regime.name().to_string(), m);
        forgets.insert(r.regime.name().to_string(), m > FORGETTING_THRESHOLD);
    }
    let get = |r: Regime| forgets.get(r.name()).copied();
    let paper_finding_holds = match (
        get(Regime::Sequential),
        get(Regime::Balanced),
        get(Regime::Moe),
    ) {
        (Some(s), Some(b), Some(m)) => Some(s && !b && !m),
        _ => None,
    };
    Finding {
        threshold: FORGETTING_THRESHOLD,
        max_forgetting,
        forgets,
        paper_finding_holds,
    }
}

impl ForgettingReport {
    /// The Markdown report: final losses per regime, forgetting, sequential phases.
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# Catastrophic forgetting (method §8)\n");
        let _ = writeln!(
            md,
            "Student: {} layers, d={}, {} heads, vocab {}. Every regime: {} optimizer steps of {} sequences x {} tokens ({} tokens); validation loss (nats/token) of every domain at step 0 and every {} steps. Sequential phases: {} ({} steps each).\n",
            self.student.n_layer,
            self.student.n_embd,
            self.student.n_head,
            self.student.vocab_size,
            self.max_steps,
            self.batch_size,
            self.seq_len,
            self.max_steps * (self.batch_size * self.seq_len) as u64,
            self.eval_every,
            self.domains.join(" → "),
            self.steps_per_phase
        );
        for r in &self.regimes {
            let _ = writeln!(md, "- **{}**: {}", r.regime.name(), r.description);
        }
        let _ = writeln!(
            md,
            "\n## Final validation loss\n\n`forgetting` = final loss - best loss during training (largest over the domains); a regime forgets when it exceeds {} nats/token.\n",
            self.finding.threshold
        );
        let mut head = "| regime |".to_string();
        let mut rule = "|---|".to_string();
        for d in &self.domains {
            let _ = write!(head, " {d} (final − best) |");
            rule.push_str("---|");
        }
        let _ = writeln!(
            md,
            "{head} max forgetting | parameters | train s |\n{rule}---|---|---|"
        );
        for r in &self.regimes {
            let mut row = format!("| {} |", r.regime.name());
            for d in &self.domains {
                let _ = write!(row, " {:.4} (+{:.3}) |", r.final_losses[d], r.forgetting[d]);
            }
            let m = self.finding.max_forgetting[r.regime.name()];
            let _ = writeln!(
                md,
                "{row} {m:.3}{} | {} | {:.0} |",
                if m > self.finding.threshold {
                    " **forgets**"
                } else {
                    ""
                },
                r.total_parameters,
                r.train_seconds
            );
        }
        if !self.sequential_phases.is_empty() {
            let _ = writeln!(
                md,
                "\n## Sequential phases\n\nLoss at the end of each phase and its change over the phase (negative: learned; positive: forgotten).\n"
            );
            let mut head = "| phase | trained | end step |".to_string();
            let mut rule = "|---|---|---|".to_string();
            for d in &self.domains {
                let _ = write!(head, " {d} |");
                rule.push_str("---|");
            }
            let _ = writeln!(md, "{head}\n{rule}");
            if let Some(r) = self.regimes.iter().find(|r| r.regime == Regime::Sequential) {
                let mut row = "| 0 | – | 0 |".to_string();
                for d in &self.domains {
                    let _ = write!(row, " {:.4} |", r.curve[0].losses[d]);
                }
                let _ = writeln!(md, "{row}");
            }
            for p in &self.sequential_phases {
                let mut row = format!("| {} | {} | {} |", p.phase, p.trained, p.end_step);
                for d in &self.domains {
                    let _ = write!(row, " {:.4} ({:+.3}) |", p.losses[d], p.delta[d]);
                }
                let _ = writeln!(md, "{row}");
            }
        }
        let verdict = match self.finding.paper_finding_holds {
            Some(true) => "**holds**: sequential training forgets the earlier domains, balanced batches and the MoE do not.".to_string(),
            Some(false) => format!(
                "**does not hold** in this run (forgets: {}).",
                self.finding
                    .forgets
                    .iter()
                    .map(|(k, v)| format!("{k} {}", if *v { "yes" } else { "no" }))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => "not decided (not every regime ran).".to_string(),
        };
        let _ = writeln!(
            md,
            "\n## Finding\n\nThe paper's finding (sequential forgets; balanced and MoE do not) {verdict}\n\nCurves: `{PNG_FILE}` (one panel per regime); every number: `{JSON_FILE}`; raw metrics: `runs/<regime>/metrics.jsonl`. This invocation took {:.0} s (a rerun skips finished regimes).",
            self.seconds
        );
        md
    }
}

/// One line chart per regime (a series per domain), side by side in one PNG.
fn write_plot(report: &ForgettingReport, path: &Path) -> Result<()> {
    let charts: Vec<mome_plot::LineChart> = report
        .regimes
        .iter()
        .map(|r| {
            let series = report
                .domains
                .iter()
                .map(|d| {
                    mome_plot::Series::new(
                        d,
                        r.curve
                            .iter()
                            .map(|p| (p.step as f64, p.losses[d]))
                            .collect(),
                    )
                })
                .collect();
            let title = match r.regime {
                Regime::Sequential => format!("sequential ({})", report.domains.join("→")),
                Regime::Balanced => "balanced batches".to_string(),
                Regime::Moe => "MoE (expert per domain)".to_string(),
            };
            mome_plot::LineChart {
                title,
                x_label: "optimizer step".into(),
                y_label: "validation loss (nats/token)".into(),
                series,
                log_y: false,
            }
        })
        .collect();
    // Drawn beside the target, then renamed: the PNG appears complete or not at all.
    // (The extension stays `.png`: plotters picks the image format from it.)
    let tmp = path.with_extension(format!("tmp-{}.png", std::process::id()));
    mome_plot::line_chart_row(&tmp, &charts, (640, 460))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
