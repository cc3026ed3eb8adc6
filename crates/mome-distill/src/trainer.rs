//! The distillation trainer: a student GPT-2 trained with `alpha * CE + beta * KD`
//! against a frozen teacher (online, or read from a [`TeacherCache`]) by
//! mome-core's [`Trainer`], so checkpoints, exact resume, `metrics.jsonl` and the
//! non-finite checks are those of `mome train`.
//!
//! Per loss evaluation (micro-batch) the trainer also writes a line to
//! `run_dir/distill_metrics.jsonl`:
//! `{"kind":"distill","step":S,"micro":M,"alpha":..,"beta":..,"ce":..,"kd":..}`
//! (`kd` is `null` when the KD weight was 0 and the teacher was skipped). The values
//! stay on the device and are copied in one transfer at log / eval / checkpoint
//! steps, except with the adaptive strategy, which reads CE and KD every
//! micro-batch (one host sync each). On resume the file is cut back to the
//! checkpoint's step and its lines are replayed into the strategy, so the adaptive
//! histories continue exactly.
//!
//! **Data parallel** (under `mome launch --gpus N`, or [`run_distill_with_group`]):
//! every rank draws the same global batch and trains on its `1/N` of the rows
//! (mome-core's [`Trainer`]); the online teacher runs on the rank's rows, a teacher
//! cache is read for the rank's rows only (each rank reads only its rows of the
//! shards). The CE and KD values are averaged over
//! the ranks before they reach the weighting strategy (adaptive weights are those of
//! the global batch, the same on every rank) and before they are written; rank 0
//! alone writes `distill_metrics.jsonl`, checkpoints and `model/`. The global batch
//! (`batch_size`) must be a multiple of the number of ranks.
//!
//! Before any step: the shards' tokenizer hash (when a tokenizer hash is given),
//! student, teacher and cache vocabularies, the teacher's positions, and the cache's
//! shards / teacher / temperature are checked; each mismatch is a typed [`Error`].

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use mome_core::data::ShardBatches;
use mome_core::dist::{local_items, mean_to_host, DistEnv, GroupHandle};
use mome_core::metrics::{read_metrics, MetricsWriter};
use mome_core::trainer::{BatchSource, TrainConfig, TrainSummary, Trainer};
use mome_data::sampler::{SamplerConfig, SamplerKind, SeqRef};
use mome_data::shards::ShardSet;
use mome_experts::eval::evaluate;
use mome_experts::{causal_lm_loss, Gpt2Config, Gpt2Input, Gpt2LmHeadModel};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

use crate::cache::TeacherCache;
use crate::losses::{kd_loss, KdLoss, Teacher};
use crate::strategy::{StrategyConfig, WeightStrategy};
use crate::teacher::load_teacher;
use crate::{Error, Result};

/// The side metrics file of a distillation run.
pub const DISTILL_METRICS: &str = "distill_metrics.jsonl";

fn default_loss() -> KdLoss {
    KdLoss::ForwardKl
}
fn default_temperature() -> f64 {
    2.0
}

/// `[distill]`: the loss, temperature and weighting strategy (method defaults:
/// forward KL, T = 2, fixed alpha = 0.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillSettings {
    /// The KD divergence.
    #[serde(default = "default_loss")]
    pub loss: KdLoss,
    /// Softmax temperature of the KD term.
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// How CE and KD are weighted.
    #[serde(default)]
    pub strategy: StrategyConfig,
}

impl Default for DistillSettings {
    fn default() -> Self {
        Self {
            loss: default_loss(),
            temperature: default_temperature(),
            strategy: StrategyConfig::default(),
        }
    }
}

impl DistillSettings {
    /// Rejects invalid settings.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(Error::Config(format!(
                "temperature = {}: must be finite and > 0",
                self.temperature
            )));
        }
        self.strategy.validate()
    }
}

/// `teacher = { dir = "DIR" }` (online) or `teacher = { cache = "DIR" }` (offline;
/// with `dir` too, the cache is checked against that teacher's weights).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherSection {
    /// The teacher model folder (`config.json` + `model.safetensors`).
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// A teacher cache folder (`mome teacher-cache build`).
    #[serde(default)]
    pub cache: Option<PathBuf>,
    /// Store and run the online teacher in bf16 (sensible on CUDA).
    #[serde(default)]
    pub bf16: bool,
}

/// Training data of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct DataSpec {
    /// Shard folder.
    pub shards: PathBuf,
    /// sha256 of the tokenizer the run is meant for (checked against the shards).
    pub tokenizer_sha256: Option<String>,
    /// Sampler kind.
    pub sampler: SamplerKind,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Domains (empty = all).
    pub domains: Vec<String>,
}

/// Validation during training.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalSpec {
    /// Validation sequences per domain (0 = all).
    pub max_sequences: usize,
    /// Sequences per forward pass.
    pub batch_size: usize,
}

/// Everything a distillation run needs.
#[derive(Debug, Clone)]
pub struct DistillJob {
    /// Run folder (checkpoints, metrics, `model/`).
    pub run_dir: PathBuf,
    /// Continue from the latest checkpoint.
    pub resume: bool,
    /// Device of student and (online) teacher.
    pub device: Device,
    /// Student shape.
    pub student: Gpt2Config,
    /// Where the teacher distribution comes from (may be empty for CE-only runs).
    pub teacher: TeacherSection,
    /// Training data.
    pub data: DataSpec,
    /// Validation.
    pub eval: EvalSpec,
    /// Optimizer, schedule, steps, precision, seed.
    pub train: TrainConfig,
    /// Loss, temperature, strategy.
    pub distill: DistillSettings,
}

/// What [`run_distill`] produced.
#[derive(Debug, Clone)]
pub struct DistillOutcome {
    /// The trainer's summary (its `last_eval` holds `val_loss`, `val_loss_<domain>`).
    pub summary: TrainSummary,
    /// The final student (`save_pretrained` layout).
    pub model_dir: PathBuf,
    /// `metrics.jsonl`.
    pub metrics: PathBuf,
    /// `distill_metrics.jsonl`.
    pub distill_metrics: PathBuf,
    /// This process's rank (0 without data parallelism; only rank 0 writes
    /// `model/` and the metrics files).
    pub rank: usize,
}

enum TeacherImpl {
    None,
    Online {
        _vs: nn::VarStore,
        model: Gpt2LmHeadModel,
    },
    Cache(TeacherCache),
}

/// A [`ShardBatches`] that publishes the `(domain, index)` items of each batch.
struct TrackedBatches {
    inner: ShardBatches,
    items: Rc<RefCell<Vec<SeqRef>>>,
}

impl BatchSource for TrackedBatches {
    fn next_batch(&mut self) -> mome_core::Result<Tensor> {
        let b = self.inner.next_batch()?;
        self.items
            .borrow_mut()
            .clone_from(&self.inner.last_items().to_vec());
        Ok(b)
    }
    fn state(&self) -> serde_json::Value {
        self.inner.state()
    }
    fn restore(&mut self, state: &serde_json::Value) -> mome_core::Result<()> {
        self.inner.restore(state)
    }
    fn read_rank_slice(&mut self, rank: usize, world: usize) -> mome_core::Result<bool> {
        self.inner.read_rank_slice(rank, world)
    }
}

fn vocab_err(what: String, found: i64, student: i64) -> Error {
    Error::VocabMismatch {
        what,
        found: found as usize,
        student: student as usize,
    }
}

/// Opens and checks everything of `job` that can be wrong before a step runs.
fn prepare_teacher(job: &DistillJob, shards: &ShardSet) -> Result<TeacherImpl> {
    let t = &job.teacher;
    let sv = job.student.vocab_size;
    if let Some(cdir) = &t.cache {
        let cache = TeacherCache::open(cdir)?;
        cache.check_shards(shards, "train")?;
        if cache.manifest().vocab_size as i64 != sv {
            return Err(vocab_err(
                format!("teacher cache {}", cdir.display()),
                cache.manifest().vocab_size as i64,
                sv,
            ));
        }
        cache.check_temperature(job.distill.temperature)?;
        if let Some(dir) = &t.dir {
            cache.check_teacher(dir)?;
        }
        return Ok(TeacherImpl::Cache(cache));
    }
    let Some(dir) = &t.dir else {
        if job.distill.strategy.is_ce_only() {
            return Ok(TeacherImpl::None);
        }
        return Err(Error::Config(
            "no teacher: set teacher = { dir = \"MODEL_DIR\" } or teacher = { cache = \"CACHE_DIR\" }"
                .into(),
        ));
    };
    let (vs, model, _) = load_teacher(dir, job.device, t.bf16)?;
    let tc = model.config();
    if tc.vocab_size != sv {
        return Err(vocab_err(
            format!("teacher {}", dir.display()),
            tc.vocab_size,
            sv,
        ));
    }
    if (shards.seq_len() as i64) > tc.n_positions {
        return Err(Error::Config(format!(
            "the shards hold {}-token sequences but the teacher has {} positions",
            shards.seq_len(),
            tc.n_positions
        )));
    }
    Ok(TeacherImpl::Online { _vs: vs, model })
}

struct Pending {
    step: u64,
    micro: u64,
    alpha: f64,
    beta: f64,
    ce: Tensor,
    kd: Option<Tensor>,
}

/// Writes the pending lines (rank 0), with CE and KD averaged over the ranks (every
/// rank calls this at the same steps).
fn flush(
    pending: &mut Vec<Pending>,
    writer: Option<&mut MetricsWriter>,
    group: Option<&GroupHandle>,
) -> Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let mut parts = Vec::with_capacity(pending.len() * 2);
    for p in pending.iter() {
        parts.push(p.ce.f_reshape([1])?);
        parts.push(match &p.kd {
            Some(k) => k.f_reshape([1])?,
            None => p.ce.f_reshape([1])?,
        });
    }
    let vals = mean_to_host(&Tensor::f_cat(&parts, 0)?, group)?;
    let Some(writer) = writer else {
        pending.clear();
        return Ok(());
    };
    for (i, p) in pending.iter().enumerate() {
        let kd = p.kd.as_ref().map(|_| vals[2 * i + 1]);
        writer.write(&serde_json::json!({
            "kind": "distill", "step": p.step, "micro": p.micro,
            "alpha": p.alpha, "beta": p.beta, "ce": vals[2 * i], "kd": kd,
        }))?;
    }
    pending.clear();
    Ok(())
}

/// The eval JSON of a report: `val_loss`, `val_ppl`, `val_loss_<d>`, `val_ppl_<d>`.
fn eval_json(r: &mome_experts::eval::EvalReport) -> serde_json::Value {
    let mut v = serde_json::json!({"val_loss": r.mean_loss, "val_ppl": r.mean_perplexity});
    for (d, e) in &r.domains {
        v[format!("val_loss_{d}")] = serde_json::json!(e.loss);
        v[format!("val_ppl_{d}")] = serde_json::json!(e.perplexity);
    }
    v
}

/// The strategy's history from a run's `distill_metrics.jsonl`: `(step, ce, kd)` of
/// the lines up to `start_step`, in order. Unparsable lines (a crash's partial last
/// line, or a line being appended by rank 0 while another rank reads) are skipped.
pub fn strategy_history(path: &Path, start_step: u64) -> Result<Vec<(u64, f64, f64)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(mome_core::Error::io(path, e).into()),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v["step"].as_u64()?, v["ce"].as_f64()?, v["kd"].as_f64()?)))
        .filter(|(s, _, _)| *s <= start_step)
        .collect())
}

/// Runs (or resumes) a distillation job to `train.max_steps` and saves the student
/// to `run_dir/model`. Under `mome launch --gpus N` (`MOME_WORLD_SIZE` > 1) it is
/// data parallel over NCCL (see the module docs).
pub fn run_distill(job: &DistillJob) -> Result<DistillOutcome> {
    run_distill_inner(job, None)
}

/// Like [`run_distill`] as one rank of `group` (`None`: a single process, whatever
/// the environment says). Every rank calls this with the same job.
pub fn run_distill_with_group(
    job: &DistillJob,
    group: Option<GroupHandle>,
) -> Result<DistillOutcome> {
    run_distill_inner(job, Some(group))
}

/// `group`: `None` → from the environment (after the checks); `Some(g)` → `g`.
fn run_distill_inner(
    job: &DistillJob,
    group: Option<Option<GroupHandle>>,
) -> Result<DistillOutcome> {
    let world = match &group {
        Some(g) => g.as_ref().map_or(1, |g| g.world_size()),
        None => DistEnv::world_size_from_env()?,
    };
    job.distill.validate()?;
    job.train.validate()?;
    job.student.validate()?;
    if job.data.batch_size == 0 || job.eval.batch_size == 0 {
        return Err(Error::Config("batch sizes must be > 0".into()));
    }
    if job.data.batch_size % world != 0 {
        return Err(Error::Config(format!(
            "batch_size = {} cannot be split over {world} ranks: the global batch must be a \
             multiple of the number of ranks",
            job.data.batch_size
        )));
    }
    let shards = ShardSet::open(&job.data.shards)?;
    if let Some(sha) = &job.data.tokenizer_sha256 {
        shards.check_tokenizer(sha)?;
    }
    let sv = job.student.vocab_size;
    if (sv as usize) < shards.vocab_size() {
        return Err(vocab_err(
            format!("the shards {}", job.data.shards.display()),
            shards.vocab_size() as i64,
            sv,
        ));
    }
    if shards.seq_len() as i64 > job.student.n_positions {
        return Err(Error::Config(format!(
            "the shards hold {}-token sequences but the student has {} positions",
            shards.seq_len(),
            job.student.n_positions
        )));
    }
    job.train.precision.validate(job.device)?;
    let teacher = prepare_teacher(job, &shards)?;
    let eval_shards = ShardSet::open(&job.data.shards)?;
    let has_validation = eval_shards.splits().iter().any(|s| s == "validation");

    // libtorch's generator is process-global: ranks on threads of one process
    // (dist::LocalGroup) must not interleave their seeded initialisations.
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let vs = nn::VarStore::new(job.device);
    let mut student = {
        let _init = INIT.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(job.train.seed as i64);
        Gpt2LmHeadModel::new(&vs.root(), &job.student)?
    };
    student.set_compute_kind(job.train.precision.compute_kind())?;

    let inner = ShardBatches::new(
        shards,
        "train",
        SamplerConfig {
            kind: job.data.sampler,
            batch_size: job.data.batch_size,
            seed: job.train.seed,
            domains: job.data.domains.clone(),
        },
    )?;
    let domains: Vec<String> = inner.domains().to_vec();
    let items = Rc::new(RefCell::new(Vec::new()));
    let mut source = TrackedBatches {
        inner,
        items: items.clone(),
    };

    let group = match group {
        Some(g) => g,
        None => mome_core::dist::init_from_env(job.device)?.map(GroupHandle::new),
    };
    let mut trainer = Trainer::with_group(
        job.train.clone(),
        &vs,
        &job.run_dir,
        job.resume,
        group.clone(),
    )?;
    let rank = trainer.rank();
    let start_step = trainer.step();
    let dm_path = job.run_dir.join(DISTILL_METRICS);
    let resumed = trainer.resumed_from().is_some();
    let mut strategy: Box<dyn WeightStrategy> = job.distill.strategy.build(job.train.max_steps)?;
    if resumed && strategy.needs_losses() {
        for (step, ce, kd) in strategy_history(&dm_path, start_step)? {
            strategy.weights(step, ce, kd);
        }
    }
    let mut dm = if trainer.is_primary() {
        Some(MetricsWriter::open(
            &dm_path,
            resumed.then_some(start_step),
        )?)
    } else {
        None
    };

    let cfg = &job.train;
    let ga = cfg.grad_accum;
    let is_flush_step = |s: u64| {
        s % cfg.log_every == 0
            || s == cfg.max_steps
            || (cfg.checkpoint_every > 0 && s % cfg.checkpoint_every == 0)
            || (cfg.eval_every > 0 && s % cfg.eval_every == 0)
    };
    let (kind, temp) = (job.distill.loss, job.distill.temperature);
    let device = job.device;
    let mut calls: u64 = 0;
    let mut pending: Vec<Pending> = Vec::new();
    let student_ref = &student;
    let mut loss_fn = |ids: &Tensor| -> mome_core::Result<Tensor> {
        let step = start_step + calls / ga + 1;
        let micro = calls % ga;
        calls += 1;
        let out = student_ref.forward(Gpt2Input::ids(ids).train(true))?;
        let ce = causal_lm_loss(&out.logits, ids, None)?;
        let planned =
            (!strategy.needs_losses()).then(|| strategy.weights(step, f64::NAN, f64::NAN));
        let need_kd = planned.is_none_or(|(_, b)| b != 0.0);
        let kd = if need_kd {
            let out_kd = match &teacher {
                TeacherImpl::None => {
                    return Err(Error::Config(
                        "the strategy needs a KD term but no teacher is configured".into(),
                    )
                    .into())
                }
                TeacherImpl::Online { model, .. } => {
                    let t_logits = tch::no_grad(|| model.forward(Gpt2Input::ids(ids)))?.logits;
                    kd_loss(kind, &out.logits, Teacher::Logits(&t_logits), None, temp)?
                }
                TeacherImpl::Cache(cache) => {
                    let it = items.borrow();
                    let rows = ids.size().first().copied().unwrap_or(0).max(0) as usize;
                    let refs: Vec<(&str, usize)> = local_items(&it, rows, group.as_ref())?
                        .iter()
                        .map(|r| (domains[r.domain].as_str(), r.index))
                        .collect();
                    let sp = cache.rows("train", &refs, device)?;
                    kd_loss(kind, &out.logits, Teacher::TopK(&sp), None, temp)?
                }
            };
            Some(out_kd.loss)
        } else {
            None
        };
        let (alpha, beta) = match planned {
            Some(w) => w,
            None => {
                let kd_t = kd.as_ref().expect("adaptive strategies always compute KD");
                // The global batch's losses: the same weights on every rank.
                let both = Tensor::f_stack(&[ce.f_detach()?, kd_t.f_detach()?], 0)?;
                let v = mean_to_host(&both, group.as_ref())?;
                strategy.weights(step, v[0], v[1])
            }
        };
        let loss = match &kd {
            Some(k) if beta != 0.0 => {
                if alpha != 0.0 {
                    ce.f_mul_scalar(alpha)?.f_add(&k.f_mul_scalar(beta)?)?
                } else {
                    k.f_mul_scalar(beta)?
                }
            }
            _ => ce.f_mul_scalar(alpha)?,
        };
        pending.push(Pending {
            step,
            micro,
            alpha,
            beta,
            ce: ce.f_detach()?,
            kd: kd.as_ref().map(|k| k.f_detach()).transpose()?,
        });
        if micro + 1 == ga && is_flush_step(step) {
            flush(&mut pending, dm.as_mut(), group.as_ref())?;
        }
        Ok(loss)
    };
    let eval = job.eval;
    let mut eval_fn = |_step: u64| -> mome_core::Result<serde_json::Value> {
        let r = evaluate(
            student_ref,
            &eval_shards,
            "validation",
            eval.max_sequences,
            eval.batch_size,
        )?;
        Ok(eval_json(&r))
    };
    let extra = vec![
        ("config.json", job.student.to_hf_json()?.into_bytes()),
        (
            "distill.json",
            serde_json::to_vec_pretty(&serde_json::json!({
                "distill": job.distill,
                "teacher": job.teacher,
            }))?,
        ),
    ];
    let summary = trainer.run(
        &mut source,
        &mut loss_fn,
        if has_validation {
            Some(&mut eval_fn)
        } else {
            None
        },
        &extra,
    )?;
    let model_dir = job.run_dir.join("model");
    if rank == 0 {
        student.save_pretrained(&model_dir)?;
    }
    Ok(DistillOutcome {
        summary,
        model_dir,
        metrics: job.run_dir.join("metrics.jsonl"),
        distill_metrics: dm_path,
        rank,
    })
}

/// The final validation figures of a finished run folder: `domain -> loss` plus
/// `"all" -> mean loss`, from the last eval line of `metrics.jsonl`.
pub fn final_validation(run_dir: &Path) -> Result<std::collections::BTreeMap<String, f64>> {
    let lines = read_metrics(&run_dir.join("metrics.jsonl"))?;
    let last = lines
        .iter()
        .rev()
        .find(|l| l["kind"] == "eval")
        .ok_or_else(|| Error::Config(format!("{}: no eval line", run_dir.display())))?;
    let mut out = std::collections::BTreeMap::new();
    if let Some(obj) = last.as_object() {
        for (k, v) in obj {
            if let (Some(d), Some(x)) = (k.strip_prefix("val_loss_"), v.as_f64()) {
                out.insert(d.to_string(), x);
            }
        }
    }
    if let Some(x) = last["val_loss"].as_f64() {
        out.insert("all".into(), x);
    }
    Ok(out)
}
