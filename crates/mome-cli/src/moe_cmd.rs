//! `mome moe build|train|eval|export-expert`: mixtures of modular experts
//! (method §6–§7, crate mome-moe; see docs/moe.md).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use mome_core::data::ShardBatches;
use mome_core::trainer::TrainConfig;
use mome_core::DeviceSpec;
use mome_data::sampler::{SamplerConfig, SamplerKind};
use mome_data::shards::ShardSet;
use mome_data::tokenizer::load_tokenizer;
use mome_distill::{DistillSettings, TeacherSection};
use mome_moe::{
    build_ple, check_router_classes, evaluate_settings, paper_grid, train_moe, Arch, CrossEntropy,
    DistillLoss, EvalOptions, MoeConfig, MoeModel, RunOptions, Setting,
};
use serde::Deserialize;
use tch::nn;

use crate::train_cmd::{model_config, read_toml, validate_sections, EvalSection, RunArgs};

/// `mome moe …`
#[derive(Debug, Subcommand)]
pub enum MoeCommand {
    /// Assemble a PLE model from separately trained GPT-2 folders.
    Build(BuildArgs),
    /// Train a JEET or MoE-CE model on token shards (blocks sampler).
    Train(TrainArgs),
    /// Per-setting, per-domain loss and perplexity (`--grid paper`: method §7).
    Eval(EvalArgs),
    /// Write one expert as a standalone Hugging Face GPT-2 folder.
    ExportExpert(ExportArgs),
}

/// Arguments of `mome moe build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Architecture; only `ple` is assembled from folders (jeet / moe-ce: `mome moe train`).
    #[arg(long, default_value = "ple")]
    arch: String,
    /// An expert as DOMAIN=DIR (a GPT2LMHeadModel folder); repeat, in expert order.
    #[arg(long = "expert", value_name = "DOMAIN=DIR", required = true)]
    experts: Vec<String>,
    /// Optional common expert (a GPT2LMHeadModel folder of the same shape).
    #[arg(long)]
    common: Option<PathBuf>,
    /// A router file (`mome router train`) saved into the folder as `router.json`; its
    /// classes must be exactly the expert domains.
    #[arg(long)]
    router: Option<PathBuf>,
    /// Output MoE folder.
    #[arg(long)]
    out: PathBuf,
}

/// Arguments of `mome moe train` (config: see configs/moe-demo.toml and docs/moe.md).
#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Expert parallelism: place the experts' blocks on these devices in turn
    /// (domain experts in order, then the common expert), e.g. `cuda:0,cuda:1`.
    /// The embeddings and head stay on `--device`. Not combined with `mome launch
    /// --gpus N` (data parallelism).
    #[arg(long, value_delimiter = ',')]
    expert_devices: Vec<DeviceSpec>,
}

/// Arguments of `mome moe eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// MoE folder (`moe_config.json`, ...).
    #[arg(long)]
    model: PathBuf,
    /// Shard folder.
    #[arg(long)]
    shards: PathBuf,
    /// `paper`: the 21 settings of method §7 (settings needing a common expert the
    /// model lacks are reported as skipped).
    #[arg(long, conflicts_with = "setting")]
    grid: Option<String>,
    /// A setting such as "common=true,used=en+py,average=false"; repeatable.
    /// Default: the routed expert (plus the common expert when the model has one).
    #[arg(long)]
    setting: Vec<String>,
    /// Split to evaluate.
    #[arg(long, default_value = "validation")]
    split: String,
    /// At most this many sequences per domain (0 = all).
    #[arg(long, default_value_t = 0)]
    max_sequences: usize,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Route each sequence with this router file instead of its domain label, and
    /// report routing accuracy per domain (e.g. MODEL/router.json).
    #[arg(long)]
    router: Option<PathBuf>,
    /// Write `report.json` and `report.md` here (with --grid and no --out-dir:
    /// `MODEL/eval-grid-<name>/`).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// auto | cpu | cuda | cuda:N
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
    /// Print JSON (default: the Markdown table).
    #[arg(long)]
    json: bool,
}

/// Arguments of `mome moe export-expert`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// MoE folder.
    #[arg(long)]
    model: PathBuf,
    /// Domain name, or `common`.
    #[arg(long)]
    expert: String,
    /// Output GPT-2 folder (config.json + model.safetensors).
    #[arg(long)]
    out: PathBuf,
}

/// The `mome moe train` config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoeTrainFile {
    /// Run folder: checkpoints, metrics.jsonl, the final MoE folder in `model/`.
    pub out_dir: PathBuf,
    /// auto | cpu | cuda | cuda:N
    #[serde(default)]
    pub device: DeviceSpec,
    /// Architecture and domains.
    pub moe: MoeSection,
    /// Expert shape: a preset and/or Hugging Face GPT-2 fields (as `mome train`).
    pub model: toml::Table,
    /// Shards and batch size (the sampler is always `blocks`).
    pub data: MoeDataSection,
    /// Evaluation during training (routed setting).
    #[serde(default)]
    pub eval: EvalSection,
    /// Optional teacher (`{ dir = "MODEL_DIR" }`, as `mome distill`'s): the experts
    /// are then trained by knowledge distillation.
    #[serde(default)]
    pub teacher: TeacherSection,
    /// KD loss, temperature and alpha strategy (as `mome distill`'s `[distill]`;
    /// defaults: forward KL, T = 2, fixed alpha = 0.5). Needs a teacher.
    #[serde(default)]
    pub distill: Option<DistillSettings>,
    /// Optimiser, schedule, steps, precision (mome-core's `TrainConfig`).
    pub train: TrainConfig,
}

/// `[moe]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoeSection {
    /// `jeet` or `moe-ce`.
    pub arch: String,
    /// Domains in expert order (empty: the train split's domains).
    #[serde(default)]
    pub domains: Vec<String>,
    /// Non-confident routings go to the common expert alone.
    #[serde(default = "default_true")]
    pub low_confidence_to_common: bool,
}

fn default_true() -> bool {
    true
}

/// `[data]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoeDataSection {
    /// Shard folder made by `mome data encode`.
    pub shards: PathBuf,
    /// Optional tokenizer.json, checked against the shards' tokenizer hash.
    pub tokenizer: Option<PathBuf>,
    /// Sequences per (single-domain) micro-batch.
    pub batch_size: usize,
}

/// Runs `mome moe …`.
pub fn run_moe(c: MoeCommand) -> Result<()> {
    match c {
        MoeCommand::Build(a) => run_build(a),
        MoeCommand::Train(a) => run_train(a),
        MoeCommand::Eval(a) => run_eval(a),
        MoeCommand::ExportExpert(a) => run_export(a),
    }
}

fn run_build(a: BuildArgs) -> Result<()> {
    let arch: Arch = a.arch.parse()?;
    if arch != Arch::Ple {
        bail!(
            "--arch {}: JEET and MoE-CE models are made by `mome moe train`",
            arch.name()
        );
    }
    let mut experts = Vec::new();
    for e in &a.experts {
        let (name, dir) = e
            .split_once('=')
            .with_context(|| format!("--expert {e:?}: expected DOMAIN=DIR"))?;
        experts.push((name.to_string(), PathBuf::from(dir)));
    }
    // The router is checked against the expert names before any expert is loaded.
    let router = match &a.router {
        Some(p) => {
            let r = mome_router::Router::load(p)
                .with_context(|| format!("loading router {}", p.display()))?;
            let probe = MoeConfig {
                arch: Arch::Ple,
                domains: experts.iter().map(|(n, _)| n.clone()).collect(),
                expert: mome_experts::Gpt2Config::default(),
                common_expert: a.common.is_some(),
                low_confidence_to_common: true,
            };
            check_router_classes(r.classes(), &probe)?;
            Some(r)
        }
        None => None,
    };
    let (_vs, model) = build_ple(&experts, a.common.as_deref(), tch::Device::Cpu)?;
    let out = model.save_with_router(&a.out, router.as_ref())?;
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "model_dir": out,
            "arch": "ple",
            "experts": model.domains(),
            "common_expert": model.config().common_expert,
            "router": router.as_ref().map(|r| r.classes().to_vec()),
            "total_parameters": model.total_parameters(),
        }))?
    );
    Ok(())
}

fn load_file(path: &Path) -> Result<MoeTrainFile> {
    let file: MoeTrainFile = read_toml(path)?;
    validate_sections(path, &file.train, file.data.batch_size, &file.eval)?;
    Ok(file)
}

fn run_train(a: TrainArgs) -> Result<()> {
    let expert_devices = a
        .expert_devices
        .iter()
        .map(|d| d.resolve())
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let a = a.run;
    let mut file = load_file(&a.config)?;
    a.apply(&mut file.out_dir, &mut file.device, &mut file.train)?;
    let device = file.device.resolve()?;
    file.train.precision.validate(device)?;
    let arch: Arch = file.moe.arch.parse()?;
    let shards = ShardSet::open(&file.data.shards)
        .with_context(|| format!("opening shards {}", file.data.shards.display()))?;
    if let Some(tok) = &file.data.tokenizer {
        let (_, sha) = load_tokenizer(tok)?;
        shards.check_tokenizer(&sha)?;
    }
    let domains = if file.moe.domains.is_empty() {
        shards.domains("train")?
    } else {
        file.moe.domains.clone()
    };
    let cfg = MoeConfig {
        arch,
        domains: domains.clone(),
        expert: model_config(&file.model, shards.vocab_size())?,
        common_expert: arch == Arch::MoeCe,
        low_confidence_to_common: file.moe.low_confidence_to_common,
    };
    cfg.validate()?;
    tch::manual_seed(file.train.seed as i64);
    let vs = nn::VarStore::new(device);
    let mut model = MoeModel::new(&vs.root(), &cfg)?;
    model.set_compute_kind(file.train.precision.compute_kind())?;
    // Data parallel (`mome launch`): each rank trains on its slice of every batch.
    let (rank, world) = crate::train_cmd::data_parallel_rank(file.data.batch_size)?;
    if !expert_devices.is_empty() {
        if world > 1 {
            bail!("--expert-devices (expert parallelism) cannot be combined with data parallelism (mome launch --gpus N)");
        }
        for d in &expert_devices {
            file.train.precision.validate(*d)?;
        }
        model.place_experts(&expert_devices)?;
        if !file.train.quiet {
            let placed: Vec<String> = model
                .expert_ids()
                .into_iter()
                .map(|id| format!("{}→{:?}", model.expert_name(id), model.expert_device(id)))
                .collect();
            eprintln!("expert placement: {}", placed.join(", "));
        }
    }
    if !file.train.quiet {
        eprintln!(
            "moe {}: {} experts {:?}{}, each {} layers d={} {} heads; {:.2}M parameters on {device:?}",
            arch.name(),
            domains.len(),
            domains,
            if cfg.common_expert { " + common" } else { "" },
            cfg.expert.n_layer,
            cfg.expert.n_embd,
            cfg.expert.n_head,
            model.total_parameters() as f64 / 1e6
        );
    }
    let eval_shards = ShardSet::open(&file.data.shards)?;
    let has_validation = eval_shards.splits().iter().any(|s| s == "validation");
    let source = ShardBatches::new(
        shards,
        "train",
        SamplerConfig {
            kind: SamplerKind::Blocks,
            batch_size: file.data.batch_size,
            seed: file.train.seed,
            domains,
        },
    )?;
    let opts = EvalOptions {
        split: "validation".into(),
        max_sequences: file.eval.max_sequences,
        batch_size: file.eval.batch_size,
        skip_unavailable: false,
    };
    let routed = [Setting::routed(cfg.common_expert)];
    let model_ref = &model;
    let mut eval_fn = |_step: u64| -> mome_core::Result<serde_json::Value> {
        let r = evaluate_settings(model_ref, &eval_shards, &routed, &opts, None)?;
        let s = &r.settings[0];
        let mut v = serde_json::json!({"val_loss": s.mean_loss, "val_ppl": s.mean_loss.exp()});
        for (d, e) in &s.domains {
            v[format!("val_loss_{d}")] = serde_json::json!(e.loss);
        }
        Ok(v)
    };
    let mut kd = match (&file.teacher.dir, &file.teacher.cache, &file.distill) {
        (None, None, None) => None,
        (None, None, Some(_)) => {
            bail!("[distill] needs a teacher: teacher = {{ dir = \"MODEL_DIR\" }}")
        }
        _ => {
            if let Some(t) = &file.teacher.dir {
                let tcfg = mome_experts::Gpt2Config::from_file(t.join("config.json"))
                    .with_context(|| format!("teacher {}", t.display()))?;
                if (eval_shards.seq_len() as i64) > tcfg.n_positions {
                    bail!(
                        "the shards hold {}-token sequences but the teacher has {} positions",
                        eval_shards.seq_len(),
                        tcfg.n_positions
                    );
                }
            }
            let k = DistillLoss::new(
                &file.teacher,
                &file.distill.clone().unwrap_or_default(),
                &cfg.expert,
                device,
            )?;
            // A cache built for other shards fails here, before the run folder exists.
            k.check_data(&eval_shards, "train")?;
            Some(k)
        }
    };
    let mut ce = CrossEntropy;
    let loss: &mut dyn mome_moe::MoeLoss = match kd.as_mut() {
        Some(k) => k,
        None => &mut ce,
    };
    let summary = train_moe(
        &model,
        &vs,
        source,
        file.train.clone(),
        &RunOptions {
            run_dir: &file.out_dir,
            resume: a.resume,
            group: None,
        },
        loss,
        if has_validation {
            Some(&mut eval_fn)
        } else {
            None
        },
    )?;
    if rank != 0 {
        // Data parallel: rank 0 writes the model and the summary.
        return Ok(());
    }
    let model_dir = model.save(&file.out_dir.join("model"))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "model_dir": model_dir,
            "arch": arch.name(),
            "start_step": summary.start_step,
            "final_step": summary.final_step,
            "final_loss": summary.final_loss,
            "tokens_seen": summary.tokens_seen,
            "elapsed_s": summary.elapsed_s,
            "last_eval": summary.last_eval,
            "total_parameters": model.total_parameters(),
            "distill": kd.as_ref().map(|k| k.settings()),
            "distill_metrics": kd.as_ref().map(|_| file.out_dir.join(mome_distill::DISTILL_METRICS)),
        }))?
    );
    Ok(())
}

fn run_eval(a: EvalArgs) -> Result<()> {
    let device = a.device.resolve()?;
    // A router that does not fit the model is an error before the model is loaded.
    let router = match &a.router {
        Some(p) => Some(
            mome_router::Router::load(p)
                .with_context(|| format!("loading router {}", p.display()))?,
        ),
        None => None,
    };
    if let Some(r) = &router {
        let cfg_path = a.model.join(mome_moe::io::CONFIG_FILE);
        let cfg: MoeConfig = serde_json::from_slice(
            &std::fs::read(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?,
        )
        .with_context(|| format!("invalid {}", cfg_path.display()))?;
        check_router_classes(r.classes(), &cfg)?;
    }
    let (_vs, model) = MoeModel::load(&a.model, device)
        .with_context(|| format!("loading MoE {}", a.model.display()))?;
    let shards = ShardSet::open(&a.shards)
        .with_context(|| format!("opening shards {}", a.shards.display()))?;
    let (settings, grid) = match (&a.grid, a.setting.is_empty()) {
        (Some(g), _) if g == "paper" => (paper_grid(), true),
        (Some(g), _) => bail!("--grid {g:?}: the only grid is `paper`"),
        (None, false) => (
            a.setting
                .iter()
                .map(|s| s.parse::<Setting>())
                .collect::<mome_moe::Result<Vec<_>>>()?,
            false,
        ),
        (None, true) => (vec![Setting::routed(model.config().common_expert)], false),
    };
    let opts = EvalOptions {
        split: a.split.clone(),
        max_sequences: a.max_sequences,
        batch_size: a.batch_size,
        skip_unavailable: grid,
    };
    if let (Some(r), Some(want)) = (&router, router.as_ref().and_then(|r| r.tokenizer_sha256())) {
        shards
            .check_tokenizer(want)
            .with_context(|| format!("router classes {:?}", r.classes()))?;
    }
    let report = evaluate_settings(
        &model,
        &shards,
        &settings,
        &opts,
        router.as_ref().map(|r| r as &dyn mome_moe::SequenceRouter),
    )?;
    let md = report.to_markdown();
    let out_dir = a
        .out_dir
        .clone()
        .or_else(|| grid.then(|| a.model.join(format!("eval-grid-paper-{}", a.split))));
    if let Some(dir) = &out_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        mome_data::fsutil::write_atomic(
            &dir.join("report.json"),
            serde_json::to_string_pretty(&report)?.as_bytes(),
        )?;
        mome_data::fsutil::write_atomic(&dir.join("report.md"), md.as_bytes())?;
        eprintln!("wrote {}/report.{{json,md}}", dir.display());
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{md}");
    }
    Ok(())
}

fn run_export(a: ExportArgs) -> Result<()> {
    let (_vs, model) = MoeModel::load(&a.model, tch::Device::Cpu)
        .with_context(|| format!("loading MoE {}", a.model.display()))?;
    let out = model.export_expert(&a.expert, &a.out)?;
    println!("{}", out.display());
    Ok(())
}
