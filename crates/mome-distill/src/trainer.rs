//! The distillation job of `mome distill`: a student GPT-2 trained with
//! `alpha * CE + beta * KD` ([`crate::objective::KdTerm`]) against a frozen teacher
//! (online, or read from a [`TeacherCache`]) by mome-core's [`Trainer`], so
//! checkpoints, exact resume, `metrics.jsonl` and the non-finite checks are those of
//! `mome train` (method §4).
//!
//! [`DistillParams`] is the config file; [`ParamGuard::check`] validates it once into
//! a [`DistillJob`] (the shards' tokenizer hash when a tokenizer is given, student,
//! teacher and cache vocabularies, the teacher's positions, the cache's shards /
//! teacher / temperature: each mismatch is a typed [`Error`] before any step);
//! [`run_distill`] runs it, [`bench_distill`] times the same step on random tokens.
//!
//! **Precision**: an online teacher is stored and run in bf16 when the run's
//! precision is bf16 (or `teacher.bf16 = true`), so every model of the run follows
//! `[train] precision`.
//!
//! **Data parallel** (under `mome launch --gpus N`, or [`run_distill_with_group`]):
//! every rank draws the same global batch and trains on its `1/N` of the rows
//! (mome-core's [`Trainer`]); the online teacher runs on the rank's rows, a teacher
//! cache is read for the rank's rows only. CE and KD are averaged over the ranks
//! before they reach the weighting strategy; rank 0 alone writes
//! `distill_metrics.jsonl`, checkpoints and `model/`. The global batch
//! (`batch_size`) must be a multiple of the number of ranks.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mome_core::data::RandomBatches;
use mome_core::dist::{DistEnv, GroupHandle};
use mome_core::job::{prefetched, DataParams, EvalParams};
use mome_core::metrics::read_metrics;
use mome_core::trainer::{BenchOptions, BenchTiming, TrainConfig, TrainSummary, Trainer};
use mome_core::{DeviceSpec, ParamGuard, Precision};
use mome_data::shards::ShardSet;
use mome_experts::eval::validation_metrics;
use mome_experts::train::{check_fits, seeded_model};
use mome_experts::{Gpt2Config, ModelSpec};
use serde::{Deserialize, Serialize};
use tch::Device;

use crate::cache::TeacherCache;
use crate::losses::KdLoss;
use crate::objective::{DistillObjective, KdTerm, TeacherModel};
use crate::strategy::StrategyConfig;
use crate::teacher::load_teacher;
use crate::{Error, Result};

/// The side metrics file of a distillation run.
pub const DISTILL_METRICS: &str = "distill_metrics.jsonl";

/// The KD chunk `auto` takes on CUDA (positions per chunk).
pub const AUTO_KD_CHUNK: usize = 512;

fn default_loss() -> KdLoss {
    KdLoss::ForwardKl
}
fn default_temperature() -> f64 {
    2.0
}

/// `[distill]`: the loss, temperature and weighting strategy (method defaults:
/// forward KL, T = 2, fixed alpha = 0.5), and how the KD loss is computed.
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
    /// Positions per chunk of the KD loss (bounded fp32 temporaries, closed-form
    /// gradient; the same value and gradient): absent = `auto` (512 on CUDA, the
    /// whole sequence on the CPU), 0 = the whole sequence at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kd_chunk: Option<usize>,
}

impl Default for DistillSettings {
    fn default() -> Self {
        Self {
            loss: default_loss(),
            temperature: default_temperature(),
            strategy: StrategyConfig::default(),
            kd_chunk: None,
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

    /// The KD chunk on `device` (`None`: unchunked); see [`DistillSettings::kd_chunk`].
    pub fn chunk_on(&self, device: Device) -> Option<i64> {
        match self.kd_chunk {
            None => device.is_cuda().then_some(AUTO_KD_CHUNK as i64),
            Some(0) => None,
            Some(n) => Some(n as i64),
        }
    }
}

/// `teacher = { dir = "DIR" }` (online) or `teacher = { cache = "DIR" }` (offline;
/// with `dir` too, the cache is checked against that teacher's weights).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherSection {
    /// The teacher model folder (`config.json` + `model.safetensors`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// A teacher cache folder (`mome teacher-cache build`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<PathBuf>,
    /// Store and run the online teacher in bf16 (absent: when the run's precision
    /// is bf16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bf16: Option<bool>,
}

impl TeacherSection {
    /// Whether an online teacher runs in bf16 under `precision`.
    pub fn bf16_under(&self, precision: Precision) -> bool {
        self.bf16.unwrap_or(precision == Precision::Bf16)
    }

    /// Checks the teacher against a student of `student` on shards of `vocab`
    /// tokens and `seq_len` positions, and a run at `temperature` (a cache's
    /// against `shards` too, when given) — before anything is loaded.
    pub fn check(
        &self,
        student: &Gpt2Config,
        shards: Option<&ShardSet>,
        temperature: f64,
        needs_teacher: bool,
    ) -> Result<()> {
        let sv = student.vocab_size;
        if let Some(cdir) = &self.cache {
            let cache = TeacherCache::open(cdir)?;
            if let Some(s) = shards {
                cache.check_shards(s, "train")?;
            }
            if cache.manifest().vocab_size as i64 != sv {
                return Err(vocab_err(
                    format!("teacher cache {}", cdir.display()),
                    cache.manifest().vocab_size as i64,
                    sv,
                ));
            }
            cache.check_temperature(temperature)?;
            if let Some(dir) = &self.dir {
                cache.check_teacher(dir)?;
            }
            return Ok(());
        }
        let Some(dir) = &self.dir else {
            if needs_teacher {
                return Err(Error::Config(
                    "no teacher: set teacher = { dir = \"MODEL_DIR\" } or teacher = { cache = \"CACHE_DIR\" }"
                        .into(),
                ));
            }
            return Ok(());
        };
        crate::teacher::teacher_sha256(dir)?;
        let tc = Gpt2Config::from_file(dir.join("config.json"))?;
        if tc.vocab_size != sv {
            return Err(vocab_err(
                format!("teacher {}", dir.display()),
                tc.vocab_size,
                sv,
            ));
        }
        let (positions, what) = match shards {
            Some(s) => (s.seq_len() as i64, "the shards hold"),
            None => (student.n_positions, "the student reads"),
        };
        if positions > tc.n_positions {
            return Err(Error::Config(format!(
                "{what} {positions}-token sequences but the teacher has {} positions",
                tc.n_positions
            )));
        }
        Ok(())
    }

    /// Loads the teacher on `device` (frozen; bf16 under `precision`'s rule).
    pub fn load(&self, device: Device, precision: Precision) -> Result<TeacherModel> {
        if let Some(cdir) = &self.cache {
            return Ok(TeacherModel::Cache {
                cache: Arc::new(TeacherCache::open(cdir)?),
                split: "train".into(),
            });
        }
        match &self.dir {
            Some(dir) => {
                let (vs, model, _) = load_teacher(dir, device, self.bf16_under(precision))?;
                Ok(TeacherModel::Online {
                    vs,
                    model: Box::new(model),
                })
            }
            None => Ok(TeacherModel::None),
        }
    }
}

/// The `mome distill` config file (unchecked; see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillParams {
    /// Run folder: checkpoints, metrics, `model/`.
    pub out_dir: PathBuf,
    /// `auto` | `cpu` | `cuda` | `cuda:N` (student and online teacher).
    #[serde(default)]
    pub device: DeviceSpec,
    /// `{ dir = "MODEL_DIR" }` or `{ cache = "CACHE_DIR" }` (may be empty for
    /// CE-only runs).
    #[serde(default)]
    pub teacher: TeacherSection,
    /// The student: a preset and/or GPT-2 config fields.
    pub student: ModelSpec,
    /// Shards and sampler.
    pub data: DataParams,
    /// Validation during training.
    #[serde(default)]
    pub eval: EvalParams,
    /// Loss, temperature, strategy, KD chunk.
    #[serde(default)]
    pub distill: DistillSettings,
    /// Optimizer, schedule, steps, precision, seed.
    pub train: TrainConfig,
    /// Continue from the latest checkpoint (a run option, not a key of the file).
    #[serde(skip)]
    pub resume: bool,
}

/// A checked [`DistillParams`]: the resolved device and student shape.
#[derive(Debug, Clone)]
pub struct DistillJob {
    params: DistillParams,
    device: Device,
    student: Gpt2Config,
}

impl DistillParams {
    /// Every check that needs no shards, with the student's vocabulary defaulting to
    /// `vocab` and its positions checked against `seq_len` (the teacher is checked
    /// when `with_teacher`).
    pub fn check_shape(
        &self,
        vocab: usize,
        seq_len: usize,
        shards: Option<&ShardSet>,
        with_teacher: bool,
    ) -> Result<DistillJob> {
        self.distill.validate()?;
        self.train.validate()?;
        self.data.validate()?;
        self.eval.validate()?;
        let device = self.device.resolve()?;
        self.train.precision.validate(device)?;
        let student = self.student.resolve(vocab)?;
        check_fits(&student, vocab, seq_len, "the student")?;
        if with_teacher {
            self.teacher.check(
                &student,
                shards,
                self.distill.temperature,
                !self.distill.strategy.is_ce_only(),
            )?;
        }
        Ok(DistillJob {
            params: self.clone(),
            device,
            student,
        })
    }
}

impl ParamGuard for DistillParams {
    type Checked = DistillJob;
    type Error = Error;
    fn check(&self) -> Result<DistillJob> {
        let shards = self.data.open()?;
        if self
            .student
            .vocab_size
            .is_some_and(|v| (v as usize) < shards.vocab_size())
        {
            return Err(vocab_err(
                format!("the shards {}", self.data.shards.display()),
                shards.vocab_size() as i64,
                self.student.vocab_size.unwrap_or(0),
            ));
        }
        self.check_shape(shards.vocab_size(), shards.seq_len(), Some(&shards), true)
    }
}

impl DistillJob {
    /// The validated parameters.
    pub fn params(&self) -> &DistillParams {
        &self.params
    }
    /// The device.
    pub fn device(&self) -> Device {
        self.device
    }
    /// The resolved student shape.
    pub fn student(&self) -> &Gpt2Config {
        &self.student
    }
}

fn vocab_err(what: String, found: i64, student: i64) -> Error {
    Error::VocabMismatch {
        what,
        found: found as usize,
        student: student as usize,
    }
}

/// What [`run_distill`] produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistillOutcome {
    /// The final student (`save_pretrained` layout).
    pub model_dir: PathBuf,
    /// The trainer's summary (its `last_eval` holds `val_loss`, `val_loss_<domain>`).
    #[serde(flatten)]
    pub summary: TrainSummary,
    /// `metrics.jsonl`.
    pub metrics: PathBuf,
    /// `distill_metrics.jsonl`.
    pub distill_metrics: PathBuf,
    /// This process's rank (0 without data parallelism; only rank 0 writes
    /// `model/` and the metrics files).
    pub rank: usize,
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
/// to `out_dir/model`. Under `mome launch --gpus N` (`MOME_WORLD_SIZE` > 1) it is
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

/// `group`: `None` → from the environment; `Some(g)` → `g`.
fn run_distill_inner(
    job: &DistillJob,
    group: Option<Option<GroupHandle>>,
) -> Result<DistillOutcome> {
    let p = &job.params;
    let world = match &group {
        Some(g) => g.as_ref().map_or(1, |g| g.world_size()),
        None => DistEnv::world_size_from_env()?,
    };
    if p.data.batch_size % world != 0 {
        return Err(Error::Config(format!(
            "batch_size = {} cannot be split over {world} ranks: the global batch must be a \
             multiple of the number of ranks",
            p.data.batch_size
        )));
    }
    let shards = ShardSet::open(&p.data.shards)?;
    let eval_shards = ShardSet::open(&p.data.shards)?;
    let has_validation = eval_shards.splits().iter().any(|s| s == "validation");
    let teacher = p.teacher.load(job.device, p.train.precision)?;
    let (vs, student) = seeded_model(&job.student, job.device, &p.train)?;
    let kd = KdTerm::new(teacher, &p.distill, job.device).with_kernels(
        &p.train.kernels,
        job.device,
        student.compute_kind(),
    )?;
    let mut source = p.data.source(
        shards,
        "train",
        p.train.seed,
        None,
        job.device,
        kd.cache_hook(),
    )?;
    let group = match group {
        Some(g) => g,
        None => mome_core::dist::init_from_env(job.device)?.map(GroupHandle::new),
    };
    let mut trainer = Trainer::with_group(p.train.clone(), &vs, &p.out_dir, p.resume, group)?;
    let rank = trainer.rank();
    let mut objective = DistillObjective::new(&student, kd);
    let student_ref = &student;
    let mut eval_fn = |_step: u64| -> Result<serde_json::Value> {
        Ok(validation_metrics(student_ref, &eval_shards, &p.eval)?)
    };
    let extra = vec![
        ("config.json", job.student.to_hf_json()?.into_bytes()),
        (
            "distill.json",
            serde_json::to_vec_pretty(&serde_json::json!({
                "distill": p.distill,
                "teacher": p.teacher,
            }))?,
        ),
    ];
    let summary = trainer.run(
        source.as_mut(),
        &mut objective,
        if has_validation {
            Some(&mut eval_fn)
        } else {
            None
        },
        &extra,
    )?;
    let model_dir = p.out_dir.join("model");
    if rank == 0 {
        student.save_pretrained(&model_dir)?;
    }
    Ok(DistillOutcome {
        summary,
        model_dir,
        metrics: p.out_dir.join("metrics.jsonl"),
        distill_metrics: p.out_dir.join(DISTILL_METRICS),
        rank,
    })
}

/// The teacher of a [`bench_distill`] run.
#[derive(Debug, Clone, PartialEq)]
pub enum BenchTeacher {
    /// A randomly initialised online teacher of this shape (bf16 under the run's
    /// rule, [`TeacherSection::bf16_under`], unless `bf16` says otherwise).
    Online {
        /// The teacher's shape.
        model: Gpt2Config,
        /// Store and run it in bf16 (`None`: the run's precision decides).
        bf16: Option<bool>,
    },
    /// A synthetic top-K cache in mome-distill's on-disk format, written to `dir`
    /// first: `rows` sequences, `top_k` entries per position.
    Cache {
        /// Where the cache is written (removed afterwards).
        dir: PathBuf,
        /// Sequences in the cache (read round-robin).
        rows: usize,
        /// Entries per position.
        top_k: usize,
    },
}

/// What [`bench_distill`] measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistillBench {
    /// The step's timing.
    pub timing: BenchTiming,
    /// Student parameters.
    pub parameters: i64,
    /// Online teacher parameters.
    pub teacher_parameters: Option<i64>,
    /// Model FLOPs per trained token (student forward + backward, plus an online
    /// teacher's forward).
    pub flops_per_token: f64,
    /// The KD settings in effect (`kd_chunk` resolved; 0 = unchunked).
    pub distill: DistillSettings,
    /// Whether an online teacher ran in bf16.
    pub teacher_bf16: bool,
    /// The path of the student's head and losses (`[train.kernels] linear_kd`).
    pub linear_kd: mome_core::fusion::LinearCe,
}

/// Times [`run_distill`]'s step (same student, [`KdTerm`], objective and trainer
/// step, the cache read ahead by the same batch source) on random tokens of
/// `seq_len`, with the teacher of `teacher`. `job` is checked without a teacher
/// ([`DistillParams::check_shape`] with `with_teacher = false`).
pub fn bench_distill(
    job: &DistillJob,
    teacher: &BenchTeacher,
    seq_len: usize,
    opts: &BenchOptions,
) -> Result<DistillBench> {
    let p = &job.params;
    let device = job.device;
    let (teacher_model, rows, cache_dir) = match teacher {
        BenchTeacher::Online { model, bf16 } => {
            check_fits(
                model,
                job.student.vocab_size as usize,
                seq_len,
                "the teacher",
            )?;
            let (tvs, tm) = seeded_model(model, device, &TrainConfig::new(1, 1e-3))?;
            let bf16 = bf16.unwrap_or(p.train.precision == Precision::Bf16);
            (TeacherModel::online(tvs, tm, bf16)?, 1, None)
        }
        BenchTeacher::Cache { dir, rows, top_k } => {
            let cache = crate::cache::synthetic_cache(
                dir,
                *rows,
                seq_len,
                *top_k,
                job.student.vocab_size as usize,
                p.distill.temperature,
            )?;
            (
                TeacherModel::Cache {
                    cache: Arc::new(cache),
                    split: "train".into(),
                },
                (*rows).max(1),
                Some(dir.clone()),
            )
        }
    };
    let result = (|| {
        let teacher_parameters = teacher_model.parameters();
        let teacher_flops = teacher_model.forward_flops_per_token(seq_len as i64);
        let teacher_bf16 = teacher_model.is_bf16();
        let (vs, student) = seeded_model(&job.student, device, &p.train)?;
        let kd = KdTerm::new(teacher_model, &p.distill, device).with_kernels(
            &p.train.kernels,
            device,
            student.compute_kind(),
        )?;
        let linear_kd = kd.linear_kd();
        let mut distill = p.distill.clone();
        distill.kd_chunk = Some(kd.chunk().unwrap_or(0) as usize);
        let mut source = prefetched(
            RandomBatches::new(
                job.student.vocab_size,
                p.data.batch_size,
                seq_len,
                rows,
                vec![crate::cache::SYNTHETIC_DOMAIN.to_string()],
                p.train.seed,
            )?,
            p.data.prefetch,
            device,
            kd.cache_hook(),
        );
        let mut trainer = Trainer::detached(p.train.clone(), &vs)?;
        let mut objective = DistillObjective::new(&student, kd);
        let timing = trainer.bench(source.as_mut(), &mut objective, opts)?;
        Ok(DistillBench {
            timing,
            parameters: student.param_count().total,
            teacher_parameters,
            flops_per_token: student.train_flops_per_token(seq_len as i64) + teacher_flops,
            distill,
            teacher_bf16,
            linear_kd,
        })
    })();
    if let Some(dir) = cache_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    result
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
