//! `mome bench train --config FILE.toml --json`: training-step throughput of a
//! `mome train` config, measured after warm-up with device synchronisation around
//! the timed steps. The reference side (PyTorch + Hugging Face on the same machine)
//! is `scripts/bench_reference.py`; `scripts/bench_compare.py` prints the ratios.
//!
//! Modes (`[bench] mode` in the config, or `--mode`):
//!
//! * `lm`: one language-model training step (next-token CE);
//! * `kd-online`: one distillation step with the teacher online: the teacher
//!   (`[bench] teacher`, a `[model]`-style table) runs forward in bf16 under
//!   `no_grad` (fp32 on the CPU), the student forward/backward with
//!   `alpha * CE + beta * KD` (mome-distill's losses and weighting strategy);
//! * `kd-cache`: the same student step with the teacher read from a top-K teacher
//!   cache in mome-distill's on-disk format (a synthetic cache of the config's shape
//!   is written to a temporary folder first, so no prior run is needed; every step
//!   reads its rows through [`TeacherCache::rows`] like `mome distill`). The read
//!   (mmap + decode on the host, pinned on CUDA) runs on a background thread one
//!   step ahead, in step order, and the host-to-device copy is non-blocking, so the
//!   read of step k+1 overlaps the compute of step k; every step still reads its
//!   own rows from the on-disk cache.
//! * `moe-jeet` / `moe-ce`: one training step of `mome moe train` (JEET, or MoE-CE
//!   with its common expert) on a [`MoeModel`] built from the config's `[model]` (the
//!   shape of every expert) and `[bench] domains`: the shared token/position
//!   embedding, the domain experts (+ the common expert), the shared LM head. As
//!   with the `blocks` sampler, every micro-batch holds one domain, round-robin over
//!   the domains (micro-batch `c` is domain `c mod N`); its sequences are routed by
//!   label ([`ExpertChoice::label`]) under the routed setting, only that domain's
//!   expert is trainable among the domain experts (the others are frozen with
//!   `set_requires_grad(false)`, which AdamW skips), and the loss is
//!   [`mome_moe::CrossEntropy`] (the loss of `mome moe train` without a teacher),
//!   then the gradient norm, clipping, AdamW and zeroing exactly as mome-core's
//!   trainer does them.
//!
//! Tokens are random (`randint(vocab)`), so no shards are needed.
//!
//! `--profile` adds a second, separate measurement: the same step with the device
//! synchronised after each phase (teacher forward or cache read, embeddings +
//! blocks, LM head, loss, backward, clipping, optimizer, zeroing), averaged over
//! `--profile-steps` steps, printed as milliseconds and share of the step, plus a
//! probe of what casting every matmul weight to bf16 once costs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use mome_core::optim::{AdamW, AdamWImpl};
use mome_core::DeviceSpec;
use mome_distill::cache::{CacheDomain, CacheManifest, IdDtype, TeacherCache, ValueDtype};
use mome_distill::losses::{kd_loss, kd_loss_chunked, KdLoss, SparseTeacher, Teacher};
use mome_distill::strategy::{StrategyConfig, WeightStrategy};
use mome_experts::{causal_lm_loss, Gpt2Config, Gpt2Input, Gpt2LmHeadModel};
use mome_moe::{
    Arch, CrossEntropy, ExpertChoice, ExpertId, MoeConfig, MoeLoss, MoeModel, ResolvedSetting,
    Setting,
};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::train_cmd::{model_config, validate_sections, TrainFile};

/// Dense bf16 peak of an H100 SXM (989.4 TFLOP/s, NVIDIA's datasheet, no sparsity):
/// the denominator of the model FLOPs utilisation printed by `mome bench train`.
pub const H100_BF16_DENSE_PEAK: f64 = 989.4e12;

/// `mome bench …`
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Time training steps of a `mome train` config (random tokens of the config's shape).
    Train(BenchTrainArgs),
}

/// What one benchmarked step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BenchMode {
    /// Language-model step (next-token cross-entropy).
    #[default]
    Lm,
    /// Distillation step, teacher forward online (bf16, no grad).
    KdOnline,
    /// Distillation step, teacher top-K read from a (synthetic) teacher cache.
    KdCache,
    /// JEET step of `mome moe train` (shared embedding + head, routed expert trained).
    MoeJeet,
    /// MoE-CE step of `mome moe train` (JEET + the common expert, trained every batch).
    MoeCe,
}

impl BenchMode {
    fn name(self) -> &'static str {
        match self {
            BenchMode::Lm => "lm",
            BenchMode::KdOnline => "kd-online",
            BenchMode::KdCache => "kd-cache",
            BenchMode::MoeJeet => "moe-jeet",
            BenchMode::MoeCe => "moe-ce",
        }
    }

    /// The MoE architecture of the MoE modes.
    fn moe_arch(self) -> Option<Arch> {
        match self {
            BenchMode::MoeJeet => Some(Arch::Jeet),
            BenchMode::MoeCe => Some(Arch::MoeCe),
            _ => None,
        }
    }
}

fn default_temperature() -> f64 {
    2.0
}
fn default_top_k() -> usize {
    64
}
fn default_kd_chunk() -> i64 {
    256
}
fn default_cache_rows() -> usize {
    64
}
fn default_domains() -> Vec<String> {
    ["en", "fr", "de", "py"].map(String::from).to_vec()
}

/// `[bench]`: what the bench adds to a `mome train` config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchSection {
    /// lm | kd-online | kd-cache | moe-jeet | moe-ce
    #[serde(default)]
    pub mode: BenchMode,
    /// The teacher's `[model]`-style table (KD modes; default teacher-medium).
    #[serde(default)]
    pub teacher: Option<toml::Table>,
    /// Run the teacher in bf16 (default: on CUDA).
    #[serde(default)]
    pub teacher_bf16: Option<bool>,
    /// KD divergence.
    #[serde(default = "default_loss")]
    pub loss: KdLoss,
    /// KD temperature.
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// CE/KD weighting (mome-distill strategy; default fixed alpha 0.5).
    #[serde(default)]
    pub strategy: StrategyConfig,
    /// Top-K of the synthetic teacher cache.
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// Positions per KD-loss chunk (0: the unchunked loss).
    #[serde(default = "default_kd_chunk")]
    pub kd_chunk: i64,
    /// Sequences in the synthetic teacher cache (read round-robin).
    #[serde(default = "default_cache_rows")]
    pub cache_rows: usize,
    /// The domain experts of the MoE modes, in expert order (default en, fr, de, py).
    #[serde(default = "default_domains")]
    pub domains: Vec<String>,
}

fn default_loss() -> KdLoss {
    KdLoss::ForwardKl
}

impl Default for BenchSection {
    fn default() -> Self {
        Self {
            mode: BenchMode::Lm,
            teacher: None,
            teacher_bf16: None,
            loss: default_loss(),
            temperature: default_temperature(),
            strategy: StrategyConfig::default(),
            top_k: default_top_k(),
            kd_chunk: default_kd_chunk(),
            cache_rows: default_cache_rows(),
            domains: default_domains(),
        }
    }
}

/// Arguments of `mome bench train`.
#[derive(Debug, Args)]
pub struct BenchTrainArgs {
    /// A `mome train` TOML config (model, batch size, precision, optimizer), plus an
    /// optional `[bench]` section (mode, teacher, KD settings).
    #[arg(long)]
    config: PathBuf,
    /// Override `[bench] mode`.
    #[arg(long, value_enum)]
    mode: Option<BenchMode>,
    /// Untimed steps first (allocator and cuDNN/cuBLAS warm-up).
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Also time each phase of the step (device synchronised between phases).
    #[arg(long)]
    profile: bool,
    /// Steps averaged by `--profile`.
    #[arg(long, default_value_t = 5)]
    profile_steps: usize,
    /// Sequence length (default: the model's n_positions).
    #[arg(long)]
    seq_len: Option<i64>,
    /// Override the config's batch size.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Vocabulary size (default: the config's, else 32000).
    #[arg(long, default_value_t = 32000)]
    vocab_size: usize,
    /// Override `[bench] kd_chunk` (0: unchunked KD loss).
    #[arg(long)]
    kd_chunk: Option<i64>,
    /// Override the config's device.
    #[arg(long)]
    device: Option<DeviceSpec>,
    /// Peak FLOP/s used for MFU (default: H100 dense bf16, 989.4e12).
    #[arg(long, default_value_t = H100_BF16_DENSE_PEAK)]
    peak_flops: f64,
    /// AdamW implementation: auto (fused on the CPU, flat on CUDA), fused
    /// (libtorch's `_fused_adamw_`), flat or per-param (see mome_core::optim).
    #[arg(long, default_value = "auto")]
    adamw: AdamWImpl,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// One phase of `--profile`.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseTime {
    /// Phase name.
    pub name: &'static str,
    /// Mean milliseconds per optimizer step.
    pub ms: f64,
    /// Share of the synchronised step.
    pub pct: f64,
}

/// What `--profile` adds.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileReport {
    /// Steps averaged.
    pub steps: usize,
    /// Mean milliseconds of the synchronised step (sum of the phases).
    pub step_ms: f64,
    /// Phases in step order.
    pub phases: Vec<PhaseTime>,
    /// Milliseconds to cast every student matmul weight (2-D parameters) to the
    /// compute kind once: what the per-use casts inside the forward cost (the
    /// backward casts their gradients back, about as much again). 0 in fp32.
    pub weight_cast_probe_ms: f64,
}

/// What `mome bench train` prints.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    /// Always "mome".
    pub implementation: &'static str,
    /// The config file.
    pub config: String,
    /// lm, kd-online, kd-cache, moe-jeet or moe-ce.
    pub mode: &'static str,
    /// Device used.
    pub device: String,
    /// fp32 or bf16.
    pub precision: String,
    /// Parameters (distinct) of the trained model (MoE: all experts, embeddings, head).
    pub parameters: i64,
    /// Teacher parameters (KD online), else None.
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
    /// Model FLOPs per token: 6·(non-embedding parameters + LM head) + 12·layers·seq_len·d
    /// for the trained model, plus 2·(…) + 4·layers·seq_len·d for an online teacher.
    /// MoE modes: only what runs forward and backward for a sequence, i.e. its A
    /// active stacks (A = 1 for JEET, 2 for MoE-CE: routed + common) and the shared
    /// head: 6·(A·stack parameters + vocab·d) + 12·A·layers·seq_len·d (the frozen
    /// domain experts do not run; embedding lookups count 0, as for `lm`).
    pub flops_per_token: f64,
    /// Achieved model FLOP/s over `peak_flops`.
    pub mfu: f64,
    /// The peak used for `mfu`.
    pub peak_flops: f64,
    /// The AdamW implementation that ran (`auto` resolved).
    pub adamw: AdamWImpl,
    /// Peak GPU memory of this process in MiB as nvidia-smi reports it (None on CPU).
    pub peak_gpu_memory_mib: Option<u64>,
    /// Final loss (sanity: finite).
    pub final_loss: f64,
    /// KD settings (KD modes).
    pub kd: Option<serde_json::Value>,
    /// MoE settings (MoE modes): arch, domains, common expert, parameter counts.
    pub moe: Option<serde_json::Value>,
    /// `--profile` result.
    pub profile: Option<ProfileReport>,
}

fn gpu_memory_mib() -> Option<u64> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-compute-apps=pid,used_memory",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .ok()?;
    let me = std::process::id().to_string();
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let mut it = l.split(',').map(str::trim);
        (it.next()? == me).then(|| it.next()?.parse().ok())?
    })
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Reads a bench config: a `mome train` config plus an optional `[bench]` table.
fn load_bench_file(path: &Path) -> Result<(TrainFile, BenchSection)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))?;
    let bench = match table.remove("bench") {
        Some(v) => v
            .try_into::<BenchSection>()
            .with_context(|| format!("invalid [bench] in {}", path.display()))?,
        None => BenchSection::default(),
    };
    let file: TrainFile = toml::Value::Table(table)
        .try_into()
        .with_context(|| format!("invalid config {}", path.display()))?;
    validate_sections(path, &file.train, file.data.batch_size, &file.eval)?;
    Ok((file, bench))
}

/// Model FLOPs per token of a training step (fwd + bwd) of `cfg` at `seq_len`.
fn train_flops_per_token(model: &Gpt2LmHeadModel, seq_len: i64) -> f64 {
    let cfg = model.config();
    let head = cfg.vocab_size * cfg.n_embd;
    6.0 * (model.param_count().non_embedding + head) as f64
        + 12.0 * (cfg.n_layer * seq_len * cfg.n_embd) as f64
}

/// Per-phase timer: with a device sync before each reading.
struct Phases {
    device: Device,
    last: Instant,
    acc: Vec<(&'static str, f64)>,
}

impl Phases {
    fn new(device: Device) -> Self {
        Self {
            device,
            last: Instant::now(),
            acc: Vec::new(),
        }
    }
    fn start(&mut self) {
        sync(self.device);
        self.last = Instant::now();
    }
    fn mark(&mut self, name: &'static str) {
        sync(self.device);
        let now = Instant::now();
        let dt = (now - self.last).as_secs_f64();
        self.last = now;
        match self.acc.iter_mut().find(|(n, _)| *n == name) {
            Some((_, t)) => *t += dt,
            None => self.acc.push((name, dt)),
        }
    }
}

fn mark(p: &mut Option<&mut Phases>, name: &'static str) {
    if let Some(p) = p.as_deref_mut() {
        p.mark(name);
    }
}

/// Writes a synthetic teacher cache (`rows` sequences of domain `bench`, split
/// `train`) in mome-distill's format and opens it. The ids are random, the
/// log-probabilities sorted descending and leave a rest mass of about 0.1.
fn synthetic_cache(
    dir: &Path,
    rows: usize,
    seq_len: usize,
    top_k: usize,
    vocab: usize,
    temperature: f64,
) -> Result<TeacherCache> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("train"))?;
    let _guard = tch::no_grad_guard();
    let n = (rows * seq_len) as i64;
    let k = top_k as i64;
    let id_dtype = IdDtype::for_vocab(vocab);
    let ids = Tensor::randint(vocab as i64, [n * k], (Kind::Int64, Device::Cpu));
    let ids: Vec<i64> = Vec::try_from(&ids)?;
    let mut id_bytes = Vec::with_capacity(ids.len() * id_dtype.size());
    for i in ids {
        match id_dtype {
            IdDtype::U16 => id_bytes.extend_from_slice(&(i as u16).to_le_bytes()),
            IdDtype::U32 => id_bytes.extend_from_slice(&(i as u32).to_le_bytes()),
        }
    }
    let u = Tensor::rand([n, k], (Kind::Float, Device::Cpu)) + 1e-3;
    let (u, _) = u.sort(-1, true);
    let p = &u / u.sum_dim_intlist([-1i64].as_slice(), true, Kind::Float) * 0.9;
    let logp = p.log().to_kind(Kind::Half).contiguous();
    let mut val_bytes = vec![0u8; (n * k) as usize * 2];
    logp.copy_data_u8(&mut val_bytes, (n * k) as usize);
    std::fs::write(dir.join("train/bench.ids.bin"), &id_bytes)?;
    std::fs::write(dir.join("train/bench.logp.bin"), &val_bytes)?;
    let mut domains = std::collections::BTreeMap::new();
    domains.insert(
        "bench".to_string(),
        CacheDomain {
            ids_file: "train/bench.ids.bin".into(),
            values_file: "train/bench.logp.bin".into(),
            sequences: rows as u64,
        },
    );
    let mut splits = std::collections::BTreeMap::new();
    splits.insert("train".to_string(), domains);
    let manifest = CacheManifest {
        format: mome_distill::cache::CACHE_FORMAT.into(),
        format_version: mome_distill::cache::CACHE_VERSION,
        top_k,
        vocab_size: vocab,
        seq_len,
        temperature,
        id_dtype,
        value_dtype: ValueDtype::F16,
        teacher_sha256: "synthetic".into(),
        teacher_config: serde_json::json!({}),
        shards_fingerprint: "synthetic".into(),
        shards_tokenizer_sha256: "synthetic".into(),
        splits,
        build_seconds: 0.0,
    };
    std::fs::write(
        dir.join(mome_distill::cache::CACHE_MANIFEST),
        serde_json::to_vec_pretty(&manifest)?,
    )?;
    Ok(TeacherCache::open(dir)?)
}

/// The cache reader thread of `kd-cache` mode (see the module docs): it reads the
/// rows of the next steps (round-robin over `rows` sequences, `b` per step) into
/// host tensors, pinned when the device is CUDA, at most two steps ahead.
struct CachePrefetch {
    rx: Option<std::sync::mpsc::Receiver<std::result::Result<SparseTeacher, String>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl CachePrefetch {
    fn start(
        cache: std::sync::Arc<TeacherCache>,
        rows: usize,
        b: usize,
        seq_len: i64,
        device: Device,
    ) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let handle = std::thread::spawn(move || {
            let _guard = tch::no_grad_guard();
            let mut cursor = 0usize;
            loop {
                let items: Vec<(&str, usize)> =
                    (0..b).map(|i| ("bench", (cursor + i) % rows)).collect();
                cursor = (cursor + b) % rows;
                let read = || -> Result<SparseTeacher> {
                    let mut sp = cache.rows("train", &items, Device::Cpu)?;
                    if seq_len < sp.ids.size()[1] {
                        sp.ids = sp.ids.f_narrow(1, 0, seq_len)?.f_contiguous()?;
                        sp.logprobs = sp.logprobs.f_narrow(1, 0, seq_len)?.f_contiguous()?;
                    }
                    if device.is_cuda() {
                        sp.ids = sp.ids.f_pin_memory(device)?;
                        sp.logprobs = sp.logprobs.f_pin_memory(device)?;
                    }
                    Ok(sp)
                };
                if tx.send(read().map_err(|e| format!("{e:#}"))).is_err() {
                    break;
                }
            }
        });
        Self {
            rx: Some(rx),
            handle: Some(handle),
        }
    }

    /// The next step's rows on `device` (the copy is queued non-blocking).
    fn next(&self, device: Device) -> Result<SparseTeacher> {
        let rx = self.rx.as_ref().context("cache reader stopped")?;
        let mut sp = rx
            .recv()
            .context("cache reader thread ended")?
            .map_err(anyhow::Error::msg)?;
        let nb = device.is_cuda();
        sp.ids = sp.ids.f_to_device_(device, Kind::Int64, nb, false)?;
        sp.logprobs = sp.logprobs.f_to_device_(device, Kind::Float, nb, false)?;
        Ok(sp)
    }
}

impl Drop for CachePrefetch {
    fn drop(&mut self) {
        // Dropping the receiver makes the thread's next send fail, which ends it.
        drop(self.rx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

enum TeacherSide {
    None,
    Online {
        _vs: nn::VarStore,
        model: Box<Gpt2LmHeadModel>,
    },
    Cache {
        prefetch: CachePrefetch,
        dir: PathBuf,
    },
}

/// Runs `mome bench train`.
pub fn run_bench(cmd: BenchCommand) -> Result<()> {
    let BenchCommand::Train(a) = cmd;
    if a.steps == 0 {
        bail!("--steps must be > 0");
    }
    let (file, mut bench) = load_bench_file(&a.config)?;
    if let Some(m) = a.mode {
        bench.mode = m;
    }
    if let Some(c) = a.kd_chunk {
        bench.kd_chunk = c;
    }
    let mode = bench.mode;
    let device = a.device.unwrap_or(file.device).resolve()?;
    let precision = file.train.precision;
    precision.validate(device)?;
    let cfg = model_config(&file.model, a.vocab_size)?;
    let seq_len = a.seq_len.unwrap_or(cfg.n_positions);
    if seq_len < 2 || seq_len > cfg.n_positions {
        bail!("--seq-len must be in 2..={}", cfg.n_positions);
    }
    if let Device::Cuda(_) = device {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    tch::manual_seed(file.train.seed as i64);
    if let Some(arch) = mode.moe_arch() {
        let report = run_moe_bench(&a, &file, &bench, arch, device, cfg, seq_len)?;
        return print_report(&report, a.json);
    }
    let vs = nn::VarStore::new(device);
    let mut model = Gpt2LmHeadModel::new(&vs.root(), &cfg)?;
    model.set_compute_kind(precision.compute_kind())?;
    let mut opt = AdamW::new(&vs, file.train.optimizer)?.with_impl(a.adamw);
    let b = a.batch_size.unwrap_or(file.data.batch_size) as i64;
    let accum = file.train.grad_accum.max(1) as i64;
    let lr = file.train.optimizer.lr;
    let clip = file.train.clip_grad_norm;

    let teacher = match mode {
        // (The MoE modes returned above.)
        BenchMode::Lm | BenchMode::MoeJeet | BenchMode::MoeCe => TeacherSide::None,
        BenchMode::KdOnline => {
            let table = bench.teacher.clone().unwrap_or_else(|| {
                let mut t = toml::Table::new();
                t.insert("preset".into(), "teacher-medium".into());
                t
            });
            let tcfg: Gpt2Config = model_config(&table, a.vocab_size)?;
            if tcfg.vocab_size != cfg.vocab_size {
                bail!(
                    "teacher vocabulary {} differs from the student's {}",
                    tcfg.vocab_size,
                    cfg.vocab_size
                );
            }
            if tcfg.n_positions < seq_len {
                bail!("the teacher has {} positions < {seq_len}", tcfg.n_positions);
            }
            let mut tvs = nn::VarStore::new(device);
            let mut tm = Gpt2LmHeadModel::new(&tvs.root(), &tcfg)?;
            tvs.freeze();
            if bench.teacher_bf16.unwrap_or(device.is_cuda()) {
                tvs.bfloat16();
                tm.set_compute_kind(Kind::BFloat16)?;
            }
            TeacherSide::Online {
                _vs: tvs,
                model: Box::new(tm),
            }
        }
        BenchMode::KdCache => {
            let rows = bench.cache_rows.max(1);
            let dir = std::env::temp_dir().join(format!("mome-bench-cache-{}", std::process::id()));
            let cache = synthetic_cache(
                &dir,
                rows,
                seq_len as usize,
                bench.top_k,
                cfg.vocab_size as usize,
                bench.temperature,
            )?;
            let prefetch = CachePrefetch::start(
                std::sync::Arc::new(cache),
                rows,
                b as usize,
                seq_len,
                device,
            );
            TeacherSide::Cache { prefetch, dir }
        }
    };
    let mut strategy: Box<dyn WeightStrategy> = bench.strategy.build(1_000_000)?;
    let (kd_kind, temp, chunk) = (bench.loss, bench.temperature, bench.kd_chunk);

    let batches: Vec<Tensor> = (0..accum)
        .map(|_| Tensor::randint(cfg.vocab_size, [b, seq_len], (Kind::Int64, device)))
        .collect();
    let params: Vec<Tensor> = vs.trainable_variables();
    let mut step_no: u64 = 0;
    let mut step = |opt: &mut AdamW, mut prof: Option<&mut Phases>| -> Result<Tensor> {
        step_no += 1;
        if let Some(p) = prof.as_deref_mut() {
            p.start();
        }
        let mut total = Tensor::zeros([], (Kind::Float, device));
        for ids in &batches {
            // The teacher side first (what the distillation trainer does).
            let t_logits;
            let sparse;
            let teacher_ref = match &teacher {
                TeacherSide::None => None,
                TeacherSide::Online { model: tm, .. } => {
                    t_logits = tch::no_grad(|| {
                        tm.forward_compute_logits(Gpt2Input::ids(ids).trusted_ids(true))
                    })?
                    .logits;
                    mark(&mut prof, "teacher_forward");
                    Some(Teacher::Logits(&t_logits))
                }
                TeacherSide::Cache { prefetch, .. } => {
                    sparse = prefetch.next(device)?;
                    mark(&mut prof, "cache_read");
                    Some(Teacher::TopK(&sparse))
                }
            };
            let hidden = model
                .transformer()
                .forward(Gpt2Input::ids(ids).train(true).trusted_ids(true))?
                .last_hidden_state;
            mark(&mut prof, "forward_blocks");
            let logits = model.lm_head_logits(&hidden)?;
            mark(&mut prof, "lm_head");
            let ce = causal_lm_loss(&logits, ids, None)?;
            let loss = match teacher_ref {
                None => ce,
                Some(t) => {
                    let (alpha, beta) = strategy.weights(step_no, f64::NAN, f64::NAN);
                    let kd = if chunk > 0 {
                        kd_loss_chunked(kd_kind, &logits, t, None, temp, chunk)?
                    } else {
                        kd_loss(kd_kind, &logits, t, None, temp)?
                    };
                    ce * alpha + kd.loss * beta
                }
            } / accum as f64;
            mark(&mut prof, "loss");
            loss.backward();
            mark(&mut prof, "backward");
            total += loss.detach();
        }
        if let Some(max) = clip {
            if let Some(norm) = mome_core::schedule::grad_norm_tensor(&params)? {
                mome_core::schedule::clip_grads_with_norm(&params, &norm, max)?;
            }
            mark(&mut prof, "grad_clip");
        }
        opt.step(lr)?;
        mark(&mut prof, "optimizer");
        opt.zero_grad();
        mark(&mut prof, "zero_grad");
        Ok(total)
    };
    let m = measure(
        &a,
        device,
        &mut |p| step(&mut opt, p),
        &params,
        precision.compute_kind(),
    )?;
    let (secs, peak_mem, last, profile) = (m.secs, m.peak_mem, m.last, m.profile);

    let counts = model.param_count();
    let mut flops_per_token = train_flops_per_token(&model, seq_len);
    let mut teacher_parameters = None;
    if let TeacherSide::Online { model: tm, .. } = &teacher {
        // Forward only: a third of the training FLOPs.
        flops_per_token += train_flops_per_token(tm, seq_len) / 3.0;
        teacher_parameters = Some(tm.param_count().total);
    }
    let tokens = (b * accum * seq_len) as f64 * a.steps as f64;
    let tps = tokens / secs;
    let kd = (mode != BenchMode::Lm).then(|| {
        serde_json::json!({
            "loss": kd_kind.name(), "temperature": temp, "strategy": strategy.name(),
            "kd_chunk": chunk, "top_k": (mode == BenchMode::KdCache).then_some(bench.top_k),
            "teacher_bf16": matches!(&teacher, TeacherSide::Online { model, .. } if model.compute_kind() == Kind::BFloat16),
        })
    });
    let report = BenchReport {
        implementation: "mome",
        config: a.config.display().to_string(),
        mode: mode.name(),
        device: format!("{device:?}"),
        precision: format!("{precision:?}").to_lowercase(),
        parameters: counts.total,
        teacher_parameters,
        batch: b * accum,
        seq_len,
        vocab_size: cfg.vocab_size,
        steps: a.steps,
        step_seconds: secs / a.steps as f64,
        tokens_per_second: tps,
        flops_per_token,
        mfu: tps * flops_per_token / a.peak_flops,
        peak_flops: a.peak_flops,
        adamw: opt.effective_impl(),
        peak_gpu_memory_mib: peak_mem,
        final_loss: last.double_value(&[]),
        kd,
        moe: None,
        profile,
    };
    if let TeacherSide::Cache { prefetch, dir } = teacher {
        drop(prefetch);
        let _ = std::fs::remove_dir_all(&dir);
    }
    print_report(&report, a.json)
}

/// What [`measure`] returns.
struct Measured {
    /// Seconds of the timed steps.
    secs: f64,
    /// Peak GPU memory (MiB, nvidia-smi) seen before and after the timed steps.
    peak_mem: Option<u64>,
    /// The loss of the last timed step.
    last: Tensor,
    /// `--profile`'s result.
    profile: Option<ProfileReport>,
}

/// Runs `--warmup` steps, times `--steps` steps (device synchronised around them),
/// then, with `--profile`, `--profile-steps` steps with a device sync after each
/// phase, and the weight-cast probe over the 2-D `params`.
fn measure(
    a: &BenchTrainArgs,
    device: Device,
    step: &mut dyn FnMut(Option<&mut Phases>) -> Result<Tensor>,
    params: &[Tensor],
    compute_kind: Kind,
) -> Result<Measured> {
    for _ in 0..a.warmup {
        let _ = step(None)?;
    }
    sync(device);
    let mut peak_mem = gpu_memory_mib();
    let started = Instant::now();
    let mut last = Tensor::zeros([], (Kind::Float, device));
    for _ in 0..a.steps {
        last = step(None)?;
    }
    sync(device);
    let secs = started.elapsed().as_secs_f64();
    peak_mem = peak_mem.max(gpu_memory_mib());

    let profile = if a.profile && a.profile_steps > 0 {
        let mut ph = Phases::new(device);
        for _ in 0..a.profile_steps {
            let _ = step(Some(&mut ph))?;
        }
        let n = a.profile_steps as f64;
        let step_ms: f64 = ph.acc.iter().map(|(_, t)| t).sum::<f64>() * 1e3 / n;
        let phases = ph
            .acc
            .iter()
            .map(|&(name, t)| PhaseTime {
                name,
                ms: t * 1e3 / n,
                pct: if step_ms > 0.0 {
                    100.0 * t * 1e3 / n / step_ms
                } else {
                    0.0
                },
            })
            .collect();
        let k = compute_kind;
        let weights: Vec<Tensor> = params
            .iter()
            .filter(|p| p.dim() == 2)
            .map(|p| p.shallow_clone())
            .collect();
        let reps = 5;
        sync(device);
        let t0 = Instant::now();
        tch::no_grad(|| {
            for _ in 0..reps {
                for w in &weights {
                    if w.kind() != k {
                        let _ = w.to_kind(k);
                    }
                }
            }
        });
        sync(device);
        let cast_ms = t0.elapsed().as_secs_f64() * 1e3 / reps as f64;
        Some(ProfileReport {
            steps: a.profile_steps,
            step_ms,
            phases,
            weight_cast_probe_ms: cast_ms,
        })
    } else {
        None
    };
    Ok(Measured {
        secs,
        peak_mem,
        last,
        profile,
    })
}

/// Prints a report as one JSON line, or as text.
fn print_report(report: &BenchReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!(
            "{} [{}]: {:.0} tokens/s, {:.1} ms/step, MFU {:.1}% (peak {:.0} TFLOP/s), loss {:.3}",
            report.config,
            report.mode,
            report.tokens_per_second,
            report.step_seconds * 1e3,
            report.mfu * 100.0,
            report.peak_flops / 1e12,
            report.final_loss
        );
        if let Some(p) = &report.profile {
            println!(
                "profile ({} synchronised steps, {:.1} ms/step):",
                p.steps, p.step_ms
            );
            for ph in &p.phases {
                println!("  {:<16} {:>9.2} ms {:>5.1}%", ph.name, ph.ms, ph.pct);
            }
            println!("  (weight casts once: {:.2} ms)", p.weight_cast_probe_ms);
        }
    }
    Ok(())
}

/// The `moe-jeet` / `moe-ce` modes (see the module docs): the step of
/// `mome_moe::train_moe` with the [`CrossEntropy`] loss, on random tokens, one domain
/// per micro-batch round-robin (the `blocks` sampler's order), routed by label.
///
/// Per micro-batch, as `train_moe`'s loss function: the domain experts of this
/// optimizer step's micro-batches so far are trainable, the others frozen; the
/// forward pass is [`MoeModel::forward_resolved`] under the routed setting
/// ([`Setting::routed`], with the common expert for MoE-CE); the loss goes through
/// [`MoeLoss::loss`], is divided by `grad_accum` and back-propagated. Per optimizer
/// step, as mome-core's `Trainer::run`: the gradient norm over every optimizer
/// parameter, clipping (`clip_grad_norm`), the AdamW step (`--adamw`, as
/// `[train] adamw`) and zeroing. Not included: the trainer's per-step reseeding and
/// its non-finite watch (a few scalar kernels), and the host-to-device copy of the
/// batch (the tokens are made on the device, as in the other modes).
fn run_moe_bench(
    a: &BenchTrainArgs,
    file: &TrainFile,
    bench: &BenchSection,
    arch: Arch,
    device: Device,
    expert: Gpt2Config,
    seq_len: i64,
) -> Result<BenchReport> {
    let precision = file.train.precision;
    let common = arch == Arch::MoeCe;
    let mcfg = MoeConfig {
        arch,
        domains: bench.domains.clone(),
        expert,
        common_expert: common,
        low_confidence_to_common: true,
    };
    mcfg.validate()?;
    let vs = nn::VarStore::new(device);
    let mut model = MoeModel::new(&vs.root(), &mcfg)?;
    model.set_compute_kind(precision.compute_kind())?;
    // As train_moe: everything trainable when the trainer (and its AdamW) is made.
    model.set_all_trainable(true);
    let mut opt = AdamW::new(&vs, file.train.optimizer)?.with_impl(a.adamw);
    let params: Vec<Tensor> = opt.params().into_iter().map(|(_, t)| t).collect();
    let setting = ResolvedSetting::new(&Setting::routed(common), &mcfg)?;
    let n = mcfg.domains.len();
    let b = a.batch_size.unwrap_or(file.data.batch_size) as i64;
    let accum = file.train.grad_accum.max(1) as i64;
    let lr = file.train.optimizer.lr;
    let clip = file.train.clip_grad_norm;
    let vocab = mcfg.expert.vocab_size;
    let batches: Vec<Tensor> = (0..accum)
        .map(|_| Tensor::randint(vocab, [b, seq_len], (Kind::Int64, device)))
        .collect();
    let mut loss_fn = CrossEntropy;
    let mut micro = 0usize;
    let mut step = |mut prof: Option<&mut Phases>| -> Result<Tensor> {
        if let Some(p) = prof.as_deref_mut() {
            p.start();
        }
        let mut total = Tensor::zeros([], (Kind::Float, device));
        let mut this_step: Vec<usize> = Vec::new();
        for ids in &batches {
            let d = micro % n;
            micro += 1;
            if !this_step.contains(&d) {
                this_step.push(d);
            }
            for i in 0..n {
                model.set_expert_trainable(ExpertId::Domain(i), this_step.contains(&i))?;
            }
            mark(&mut prof, "set_trainable");
            let choices = vec![ExpertChoice::label(d, n); b as usize];
            let out = model.forward_resolved(ids, &choices, &setting, true)?;
            mark(&mut prof, "moe_forward");
            let loss = MoeLoss::loss(&mut loss_fn, &out.logits, ids, d, &[])?;
            mark(&mut prof, "loss");
            let loss = loss / accum as f64;
            loss.backward();
            mark(&mut prof, "backward");
            total += loss.detach();
        }
        let norm = mome_core::schedule::grad_norm_tensor(&params)?;
        if let (Some(max), Some(norm)) = (clip, &norm) {
            mome_core::schedule::clip_grads_with_norm(&params, norm, max)?;
        }
        mark(&mut prof, "grad_clip");
        opt.step(lr)?;
        mark(&mut prof, "optimizer");
        opt.zero_grad();
        mark(&mut prof, "zero_grad");
        Ok(total)
    };
    let m = measure(a, device, &mut step, &params, precision.compute_kind());
    model.set_all_trainable(true);
    let m = m?;

    // FLOPs: the active stacks of a sequence (routed expert, + common for MoE-CE)
    // and the shared head, forward and backward; see `BenchReport::flops_per_token`.
    let stack_params: i64 = model
        .stack(ExpertId::Domain(0))?
        .named_parameters()
        .iter()
        .map(|(_, t)| t.numel() as i64)
        .sum();
    let active = 1 + i64::from(common);
    let e = &mcfg.expert;
    let flops_per_token = 6.0 * (active * stack_params + e.vocab_size * e.n_embd) as f64
        + 12.0 * (active * e.n_layer * seq_len * e.n_embd) as f64;
    let mut active_ids = vec![ExpertId::Domain(0)];
    if common {
        active_ids.push(ExpertId::Common);
    }
    let tokens = (b * accum * seq_len) as f64 * a.steps as f64;
    let tps = tokens / m.secs;
    let moe = serde_json::json!({
        "arch": arch.name(),
        "domains": mcfg.domains,
        "common_expert": common,
        "active_stacks": active,
        "stack_parameters": stack_params,
        "active_parameters": model.active_parameters(&active_ids)?,
        "tie_word_embeddings": e.tie_word_embeddings,
        "batches": "one domain per micro-batch, round-robin (blocks sampler), routed by label",
        "loss": "cross_entropy",
    });
    Ok(BenchReport {
        implementation: "mome",
        config: a.config.display().to_string(),
        mode: if common { "moe-ce" } else { "moe-jeet" },
        device: format!("{device:?}"),
        precision: format!("{precision:?}").to_lowercase(),
        parameters: model.total_parameters(),
        teacher_parameters: None,
        batch: b * accum,
        seq_len,
        vocab_size: vocab,
        steps: a.steps,
        step_seconds: m.secs / a.steps as f64,
        tokens_per_second: tps,
        flops_per_token,
        mfu: tps * flops_per_token / a.peak_flops,
        peak_flops: a.peak_flops,
        adamw: opt.effective_impl(),
        peak_gpu_memory_mib: m.peak_mem,
        final_loss: m.last.double_value(&[]),
        kd: None,
        moe: Some(moe),
        profile: m.profile,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every committed bench config parses, its model shapes are valid, and the MoE
    /// configs make a valid `MoeConfig` of the paper's sizes.
    #[test]
    fn every_bench_config_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/bench");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let (file, bench) = load_bench_file(&path).unwrap();
            let cfg = model_config(&file.model, 32000).unwrap();
            if let Some(arch) = bench.mode.moe_arch() {
                let m = MoeConfig {
                    arch,
                    domains: bench.domains.clone(),
                    expert: cfg.clone(),
                    common_expert: arch == Arch::MoeCe,
                    low_confidence_to_common: true,
                };
                m.validate().unwrap();
                assert_eq!(bench.mode.name(), path.file_stem().unwrap());
                assert_eq!((cfg.n_layer, cfg.n_embd, cfg.n_positions), (3, 768, 1024));
                assert_eq!(bench.domains.len(), 4);
                assert!(!cfg.tie_word_embeddings);
            }
            names.push(path.file_stem().unwrap().to_string_lossy().into_owned());
        }
        for want in ["moe-jeet", "moe-ce", "tiny-cpu", "student-3l"] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
    }
}
