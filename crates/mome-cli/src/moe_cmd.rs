//! `mome moe build|train|eval|export-expert`: mixtures of modular experts
//! (method §6–§7, crate mome-moe; see docs/moe.md).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use mome_core::{DeviceSpec, ParamGuard};
use mome_moe::eval::evaluate_dir;
use mome_moe::io::assemble_ple;
use mome_moe::{
    paper_grid, run_moe_training, Arch, EvalOptions, MoeModel, MoeTrainParams, Setting,
};

use crate::train_cmd::{print_summary, RunArgs};

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
    arch: Arch,
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
    setting: Vec<Setting>,
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

/// Runs `mome moe …`.
pub fn run_moe(c: MoeCommand) -> Result<()> {
    match c {
        MoeCommand::Build(a) => {
            if a.arch != Arch::Ple {
                bail!(
                    "--arch {}: JEET and MoE-CE models are made by `mome moe train`",
                    a.arch.name()
                );
            }
            let experts = a
                .experts
                .iter()
                .map(|e| {
                    e.split_once('=')
                        .map(|(n, d)| (n.to_string(), PathBuf::from(d)))
                        .with_context(|| format!("--expert {e:?}: expected DOMAIN=DIR"))
                })
                .collect::<Result<Vec<_>>>()?;
            let s = assemble_ple(&experts, a.common.as_deref(), a.router.as_deref(), &a.out)?;
            print_summary(&s, 0)
        }
        MoeCommand::Train(a) => {
            let (run, expert_devices) = (a.run, a.expert_devices);
            let mut p: MoeTrainParams = run.read()?;
            run.apply(&mut p.out_dir, &mut p.device, &mut p.train, &mut p.resume);
            p.expert_devices = expert_devices;
            let job = p
                .check()
                .with_context(|| format!("invalid config {}", run.config.display()))?;
            let s = run_moe_training(&job)?;
            print_summary(&s, s.rank)
        }
        MoeCommand::Eval(a) => {
            let (settings, grid) = match (&a.grid, a.setting.is_empty()) {
                (Some(g), _) if g == "paper" => (paper_grid(), true),
                (Some(g), _) => bail!("--grid {g:?}: the only grid is `paper`"),
                (None, false) => (a.setting.clone(), false),
                (None, true) => {
                    let cfg: mome_moe::MoeConfig =
                        mome_core::job::read_json(&a.model.join(mome_moe::io::CONFIG_FILE))?;
                    (vec![Setting::routed(cfg.common_expert)], false)
                }
            };
            let opts = EvalOptions {
                split: a.split.clone(),
                max_sequences: a.max_sequences,
                batch_size: a.batch_size,
                skip_unavailable: grid,
            };
            let report = evaluate_dir(
                &a.model,
                &a.shards,
                &settings,
                &opts,
                a.router.as_deref(),
                a.device.resolve()?,
            )?;
            let out_dir = a
                .out_dir
                .clone()
                .or_else(|| grid.then(|| a.model.join(format!("eval-grid-paper-{}", a.split))));
            if let Some(dir) = &out_dir {
                report.write(dir)?;
                eprintln!("wrote {}/report.{{json,md}}", dir.display());
            }
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.to_markdown());
            }
            Ok(())
        }
        MoeCommand::ExportExpert(a) => {
            let (_vs, model) = MoeModel::load(&a.model, tch::Device::Cpu)
                .with_context(|| format!("loading MoE {}", a.model.display()))?;
            println!("{}", model.export_expert(&a.expert, &a.out)?.display());
            Ok(())
        }
    }
}
