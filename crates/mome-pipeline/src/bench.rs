//! `mome bench train`: the throughput of the production training step.
//!
//! A bench config is a `mome train` config plus `[distill]` (the KD settings, as
//! `mome distill`'s) and `[bench]` sections ([`BenchParams`]). Each mode
//! builds the production job of its command from it (an [`LmJob`], a
//! [`DistillJob`] or a [`MoeTrainJob`]), checked as that command checks it, and calls
//! that crate's bench function, which runs mome-core's [`Trainer::bench`] over the
//! same model, objective and trainer step as `mome train`, `mome distill` and
//! `mome moe train`, on random tokens of the config's shape (so no shards are
//! needed). Nothing here computes a loss or takes a step.
//!
//! Modes (`[bench] mode`, or the `mode` option):
//!
//! * `lm`: `mome train`'s step (next-token CE);
//! * `kd-online`: `mome distill`'s step with an online teacher of `[bench] teacher`'s
//!   shape (randomly initialised, bf16 under the run's precision unless
//!   `teacher_bf16` says otherwise);
//! * `kd-cache`: `mome distill`'s step with a synthetic top-K teacher cache in
//!   mome-distill's on-disk format, read ahead by the production batch source;
//! * `moe-jeet` / `moe-ce`: `mome moe train`'s step over `[bench] domains`, one
//!   domain per micro-batch (the `blocks` sampler's order), cross-entropy.
//!
//! [`Trainer::bench`]: mome_core::Trainer::bench

use std::path::{Path, PathBuf};

use mome_core::fusion::{FusionMode, LinearCe, LinearCeMode};
use mome_core::norm::AddLnPath;
use mome_core::optim::AdamWImpl;
use mome_core::profile::ProfileReport;
use mome_core::trainer::{BenchOptions, BenchTiming};
use mome_core::DeviceSpec;
use mome_distill::{bench_distill, BenchTeacher, DistillParams, DistillSettings, TeacherSection};
use mome_experts::{bench_lm, LmParams, ModelSpec, Preset};
use mome_moe::{bench_moe, Arch, MoeDataParams, MoeSection, MoeTrainParams};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Dense bf16 peak of an H100 SXM (989.4 TFLOP/s, NVIDIA's datasheet, no sparsity):
/// the default denominator of the model FLOPs utilisation.
pub const H100_BF16_DENSE_PEAK: f64 = 989.4e12;

/// What one benchmarked step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BenchMode {
    /// `mome train`'s step (next-token cross-entropy).
    #[default]
    Lm,
    /// `mome distill`'s step with an online teacher.
    KdOnline,
    /// `mome distill`'s step with a (synthetic) teacher cache.
    KdCache,
    /// `mome moe train`'s JEET step.
    MoeJeet,
    /// `mome moe train`'s MoE-CE step.
    MoeCe,
}

impl BenchMode {
    /// The name in configs and reports.
    pub fn name(self) -> &'static str {
        match self {
            BenchMode::Lm => "lm",
            BenchMode::KdOnline => "kd-online",
            BenchMode::KdCache => "kd-cache",
            BenchMode::MoeJeet => "moe-jeet",
            BenchMode::MoeCe => "moe-ce",
        }
    }
}

impl std::str::FromStr for BenchMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
            Error::Config(format!(
                "bench mode {s:?}: expected lm, kd-online, kd-cache, moe-jeet or moe-ce"
            ))
        })
    }
}

fn default_teacher() -> ModelSpec {
    ModelSpec::preset(Preset::TeacherMedium)
}
fn default_top_k() -> usize {
    64
}
fn default_cache_rows() -> usize {
    64
}
fn default_domains() -> Vec<String> {
    ["en", "fr", "de", "py"].map(String::from).to_vec()
}

/// `[bench]`: the mode, and what stands in for the data the production job reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchSection {
    /// `lm` | `kd-online` | `kd-cache` | `moe-jeet` | `moe-ce`.
    #[serde(default)]
    pub mode: BenchMode,
    /// The online teacher's shape (default `teacher-medium`), randomly initialised.
    #[serde(default = "default_teacher")]
    pub teacher: ModelSpec,
    /// Run the online teacher in bf16 (default: when the run's precision is bf16).
    #[serde(default)]
    pub teacher_bf16: Option<bool>,
    /// Top-K of the synthetic teacher cache.
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// Sequences in the synthetic teacher cache (read round-robin).
    #[serde(default = "default_cache_rows")]
    pub cache_rows: usize,
    /// The domain experts of the MoE modes, in expert order.
    #[serde(default = "default_domains")]
    pub domains: Vec<String>,
}

impl Default for BenchSection {
    fn default() -> Self {
        Self {
            mode: BenchMode::default(),
            teacher: default_teacher(),
            teacher_bf16: None,
            top_k: default_top_k(),
            cache_rows: default_cache_rows(),
            domains: default_domains(),
        }
    }
}

/// A bench config file: a `mome train` config, plus `[distill]` (the KD modes'
/// settings, as `mome distill`'s) and `[bench]`.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchParams {
    /// The `mome train` part: the trained model's shape (every expert's in the MoE
    /// modes), `[data] batch_size` and `prefetch` (no shards are read), `[train]`.
    pub run: LmParams,
    /// The KD settings of the KD modes (default: `mome distill`'s).
    pub distill: DistillSettings,
    /// The mode and its stand-ins.
    pub bench: BenchSection,
}

impl BenchParams {
    /// Reads a bench config file (unknown keys are errors naming the key).
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Parses a bench config: `[distill]` and `[bench]` are taken out, the rest is
    /// the `mome train` config.
    pub fn from_toml(text: &str) -> std::result::Result<Self, toml::de::Error> {
        let mut table: toml::Table = toml::from_str(text)?;
        let section = |t: &mut toml::Table, name: &str| {
            t.remove(name)
                .unwrap_or(toml::Value::Table(toml::Table::new()))
        };
        let bench: BenchSection = section(&mut table, "bench").try_into()?;
        let distill: DistillSettings = section(&mut table, "distill").try_into()?;
        let run: LmParams = toml::Value::Table(table).try_into()?;
        Ok(Self {
            run,
            distill,
            bench,
        })
    }
}

/// Run options of a bench (the command line's), each overriding the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchRun {
    /// The config file (named in the report).
    pub config: PathBuf,
    /// Override `[bench] mode`.
    pub mode: Option<BenchMode>,
    /// Warm-up, timed and profiled steps.
    pub steps: BenchOptions,
    /// Tokens per sequence (default: the model's `n_positions`).
    pub seq_len: Option<usize>,
    /// Override `[data] batch_size`.
    pub batch_size: Option<usize>,
    /// Vocabulary size when the model does not set one.
    pub vocab_size: usize,
    /// Override `[bench] kd_chunk`.
    pub kd_chunk: Option<usize>,
    /// Override the config's device.
    pub device: Option<DeviceSpec>,
    /// Override `[train] adamw`.
    pub adamw: Option<AdamWImpl>,
    /// Override `[train.kernels] linear_ce`.
    pub linear_ce: Option<LinearCeMode>,
    /// Override `[train.kernels] linear_kd`.
    pub linear_kd: Option<LinearCeMode>,
    /// Override `[train.kernels] ce_chunk`.
    pub ce_chunk: Option<usize>,
    /// Override `[train.kernels] add_layer_norm`.
    pub add_layer_norm: Option<FusionMode>,
    /// Peak FLOP/s for the MFU.
    pub peak_flops: f64,
}

/// What `mome bench train` prints (one JSON line with `--json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// Always "mome".
    pub implementation: String,
    /// The config file.
    pub config: String,
    /// The mode.
    pub mode: String,
    /// Device used.
    pub device: String,
    /// `fp32` or `bf16`.
    pub precision: String,
    /// Parameters (distinct) of the trained model (MoE: all experts, embeddings, head).
    pub parameters: i64,
    /// Online teacher parameters.
    pub teacher_parameters: Option<i64>,
    /// Sequences per optimizer step (batch × grad_accum).
    pub batch: i64,
    /// Tokens per sequence.
    pub seq_len: i64,
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Timed steps.
    pub steps: usize,
    /// Mean seconds per optimizer step.
    pub step_seconds: f64,
    /// Training tokens per second.
    pub tokens_per_second: f64,
    /// Model FLOPs per trained token (see each crate's bench).
    pub flops_per_token: f64,
    /// Achieved model FLOP/s over `peak_flops`.
    pub mfu: f64,
    /// The peak used for `mfu`.
    pub peak_flops: f64,
    /// The AdamW implementation that ran (`auto` resolved).
    pub adamw: AdamWImpl,
    /// The LM head + cross-entropy path of the trained model's loss (`auto` resolved;
    /// the KD modes follow `linear_kd`).
    pub linear_ce: LinearCe,
    /// The KD modes' path of the student's head, CE and KD (`[train.kernels]
    /// linear_kd`, `auto` resolved).
    pub linear_kd: Option<LinearCe>,
    /// The residual add + layer norm path of every model's blocks (`[train.kernels]
    /// add_layer_norm`, `auto` resolved).
    #[serde(default)]
    pub add_layer_norm: Option<AddLnPath>,
    /// Peak GPU memory of this process in MiB (nvidia-smi; `None` on the CPU).
    pub peak_gpu_memory_mib: Option<u64>,
    /// Final loss (sanity: finite).
    pub final_loss: f64,
    /// KD settings (KD modes).
    pub kd: Option<serde_json::Value>,
    /// MoE settings (MoE modes).
    pub moe: Option<serde_json::Value>,
    /// The profiled steps' phases.
    pub profile: Option<ProfileReport>,
}

/// Runs the bench of `params` with the overrides of `run`.
pub fn run_bench(params: &BenchParams, run: &BenchRun) -> Result<BenchReport> {
    let mut p = params.run.clone();
    let mut distill = params.distill.clone();
    let b = &params.bench;
    if let Some(d) = run.device {
        p.device = d;
    }
    if let Some(n) = run.batch_size {
        p.data.batch_size = n;
    }
    if let Some(a) = run.adamw {
        p.train.adamw = a;
    }
    if let Some(l) = run.linear_ce {
        p.train.kernels.linear_ce = l;
    }
    if let Some(l) = run.linear_kd {
        p.train.kernels.linear_kd = l;
    }
    if let Some(c) = run.ce_chunk {
        p.train.kernels.ce_chunk = c;
    }
    if let Some(m) = run.add_layer_norm {
        p.train.kernels.add_layer_norm = m;
    }
    if let Some(c) = run.kd_chunk {
        distill.kd_chunk = Some(c);
    }
    p.train.quiet = true;
    let mode = run.mode.unwrap_or(b.mode);
    let vocab = p
        .model
        .vocab_size
        .map_or(run.vocab_size, |v| v.max(0) as usize);
    let model = p.model.resolve(vocab)?;
    let seq_len = run.seq_len.unwrap_or(model.n_positions as usize);
    if seq_len < 2 || seq_len as i64 > model.n_positions {
        return Err(Error::Config(format!(
            "seq_len {seq_len}: must be in 2..={}",
            model.n_positions
        )));
    }
    let (mut kd, mut moe) = (None, None);
    let mut linear_ce = LinearCe::Reference;
    let mut linear_kd = None;
    let (timing, parameters, teacher_parameters, flops_per_token): (BenchTiming, i64, _, f64) =
        match mode {
            BenchMode::Lm => {
                let r = bench_lm(&p.check_shape(vocab, seq_len)?, seq_len, &run.steps)?;
                linear_ce = r.linear_ce;
                (r.timing, r.parameters, None, r.flops_per_token)
            }
            BenchMode::KdOnline | BenchMode::KdCache => {
                let dp = DistillParams {
                    out_dir: p.out_dir.clone(),
                    device: p.device,
                    teacher: TeacherSection::default(),
                    student: p.model.clone(),
                    data: p.data.clone(),
                    eval: p.eval,
                    distill,
                    train: p.train.clone(),
                    resume: false,
                };
                let job = dp.check_shape(vocab, seq_len, None, false)?;
                let teacher = if mode == BenchMode::KdOnline {
                    BenchTeacher::Online {
                        model: b.teacher.resolve(vocab)?,
                        bf16: b.teacher_bf16,
                    }
                } else {
                    BenchTeacher::Cache {
                        dir: std::env::temp_dir()
                            .join(format!("mome-bench-cache-{}", std::process::id())),
                        rows: b.cache_rows,
                        top_k: b.top_k,
                    }
                };
                let r = bench_distill(&job, &teacher, seq_len, &run.steps)?;
                linear_kd = Some(r.linear_kd);
                kd = Some(serde_json::json!({
                    "loss": r.distill.loss.name(),
                    "temperature": r.distill.temperature,
                    "strategy": r.distill.strategy.build(1)?.name(),
                    "kd_chunk": r.distill.kd_chunk,
                    "top_k": (mode == BenchMode::KdCache).then_some(b.top_k),
                    "teacher_bf16": r.teacher_bf16,
                    "prefetch": p.data.prefetch,
                }));
                (
                    r.timing,
                    r.parameters,
                    r.teacher_parameters,
                    r.flops_per_token,
                )
            }
            BenchMode::MoeJeet | BenchMode::MoeCe => {
                let arch = if mode == BenchMode::MoeJeet {
                    Arch::Jeet
                } else {
                    Arch::MoeCe
                };
                let mp = MoeTrainParams {
                    out_dir: p.out_dir.clone(),
                    device: p.device,
                    moe: MoeSection {
                        arch,
                        domains: b.domains.clone(),
                        low_confidence_to_common: true,
                    },
                    model: p.model.clone(),
                    data: MoeDataParams {
                        shards: p.data.shards.clone(),
                        tokenizer: None,
                        batch_size: p.data.batch_size,
                        prefetch: p.data.prefetch,
                    },
                    eval: p.eval,
                    teacher: TeacherSection::default(),
                    distill: None,
                    train: p.train.clone(),
                    resume: false,
                    expert_devices: Vec::new(),
                };
                let job = mp.check_shape(b.domains.clone(), vocab, seq_len, None, false)?;
                let r = bench_moe(&job, seq_len, &run.steps)?;
                linear_ce = r.linear_ce;
                moe = Some(serde_json::json!({
                    "arch": arch.name(),
                    "domains": b.domains,
                    "common_expert": arch == Arch::MoeCe,
                    "active_stacks": r.active_stacks,
                    "stack_parameters": r.stack_parameters,
                    "active_parameters": r.active_parameters,
                    "tie_word_embeddings": model.tie_word_embeddings,
                    "batches": "one domain per micro-batch, round-robin (blocks sampler), routed by label",
                    "loss": "cross_entropy",
                }));
                (r.timing, r.parameters, None, r.flops_per_token)
            }
        };
    let device = p.device.resolve()?;
    Ok(BenchReport {
        implementation: "mome".into(),
        config: run.config.display().to_string(),
        mode: mode.name().into(),
        device: format!("{device:?}"),
        precision: format!("{:?}", p.train.precision).to_lowercase(),
        parameters,
        teacher_parameters,
        batch: (p.data.batch_size as u64 * p.train.grad_accum) as i64,
        seq_len: seq_len as i64,
        vocab_size: model.vocab_size,
        steps: timing.steps,
        step_seconds: timing.step_seconds,
        tokens_per_second: timing.tokens_per_second,
        flops_per_token,
        mfu: timing.tokens_per_second * flops_per_token / run.peak_flops,
        peak_flops: run.peak_flops,
        adamw: timing.adamw,
        linear_ce,
        linear_kd,
        add_layer_norm: Some(p.train.kernels.add_layer_norm.resolve_add_ln()),
        peak_gpu_memory_mib: timing.peak_gpu_memory_mib,
        final_loss: timing.final_loss,
        kd,
        moe,
        profile: timing.profile,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every committed bench config parses with the typed config, and its MoE
    /// configs make a valid job of the paper's sizes.
    #[test]
    fn every_bench_config_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/bench");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let p = BenchParams::read(&path).unwrap();
            let cfg = p.run.model.resolve(32000).unwrap();
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            if matches!(p.bench.mode, BenchMode::MoeJeet | BenchMode::MoeCe) {
                assert_eq!(p.bench.mode.name(), stem);
                assert_eq!((cfg.n_layer, cfg.n_embd, cfg.n_positions), (3, 768, 1024));
                assert_eq!(p.bench.domains.len(), 4);
                assert!(!cfg.tie_word_embeddings);
            }
            names.push(stem);
        }
        for want in ["moe-jeet", "moe-ce", "tiny-cpu", "student-3l"] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
    }
}
