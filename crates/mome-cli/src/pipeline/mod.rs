//! `mome pipeline --config FILE.toml --out RUN_DIR`: every stage of the method in
//! order (balance → tokenizer → encode → teacher → students → router → moe → grid →
//! forgetting → report), each a child process of this binary writing into
//! `RUN_DIR/<stage>/`, resumable stage by stage (see docs/pipeline.md).

pub mod config;
mod report;
mod runner;
pub mod stages;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use sha2::{Digest, Sha256};

use config::PipelineConfig;
use runner::{command_line, log_tail, run_cmd, Display};
use stages::{Layout, StagePlan, STAGES};

/// Arguments of `mome pipeline`.
#[derive(Debug, Args)]
pub struct PipelineArgs {
    /// Pipeline config (configs/demo.toml, configs/paper.toml; docs/pipeline.md).
    #[arg(long)]
    config: PathBuf,
    /// Run folder: one sub-folder per stage and report.md.
    #[arg(long)]
    out: PathBuf,
    /// Re-run this stage and every later one (earlier ones run only if not up to date).
    #[arg(long, value_name = "STAGE", conflicts_with = "only")]
    from: Option<String>,
    /// Re-run just this stage (its upstream stages must be complete and up to date).
    #[arg(long, value_name = "STAGE")]
    only: Option<String>,
    /// Print only errors and the final report path.
    #[arg(long)]
    quiet: bool,
}

/// Name of the file a stage writes last.
pub const STAGE_FILE: &str = "stage.json";
/// Files above this size are identified by size and modification time, not content.
const HASH_LIMIT: u64 = 256 << 20;

fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn hash_file(path: &Path) -> Result<serde_json::Value> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.len() > HASH_LIMIT {
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        return Ok(
            json!({"path": path.display().to_string(), "bytes": meta.len(), "mtime_ns": mtime.to_string()}),
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(json!({"path": path.display().to_string(), "bytes": bytes.len(), "sha256": sha_hex(&bytes)}))
}

/// Content identity of an input file, or of every file under an input folder.
fn hash_input(path: &Path, out: &mut Vec<serde_json::Value>) -> Result<()> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            hash_input(&e, out)?;
        }
        Ok(())
    } else {
        out.push(hash_file(path)?);
        Ok(())
    }
}

/// What decides a stage's outputs, and its hash.
struct StageKey {
    hash: String,
    inputs: Vec<serde_json::Value>,
    upstream: BTreeMap<String, String>,
}

fn stage_key(plan: &StagePlan, layout: &Layout) -> Result<StageKey> {
    let mut inputs = Vec::new();
    for p in &plan.inputs {
        hash_input(p, &mut inputs)?;
    }
    let mut upstream = BTreeMap::new();
    for d in &plan.deps {
        let f = layout.stage(d).join(STAGE_FILE);
        let bytes = std::fs::read(&f)
            .with_context(|| format!("stage `{d}` is not complete ({} is missing)", f.display()))?;
        upstream.insert(d.to_string(), sha_hex(&bytes));
    }
    let v = json!({"stage": plan.name, "enabled": plan.enabled, "settings": plan.settings,
                   "inputs": inputs, "upstream": upstream});
    Ok(StageKey {
        hash: sha_hex(&serde_json::to_vec(&v)?),
        inputs,
        upstream,
    })
}

/// The stage's recorded hash, when it completed.
fn recorded_hash(layout: &Layout, name: &str) -> Option<String> {
    let bytes = std::fs::read(layout.stage(name).join(STAGE_FILE)).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v["hash"].as_str().map(str::to_string)
}

fn stage_index(name: &str, flag: &str) -> Result<usize> {
    STAGES.iter().position(|s| *s == name).with_context(|| {
        format!(
            "{flag} {name:?}: unknown stage (expected one of {})",
            STAGES.join(", ")
        )
    })
}

/// Makes every path of the config absolute (relative paths are relative to the
/// current directory, as in every mome config).
fn absolutize(cfg: &mut PipelineConfig) -> Result<()> {
    let abs = |p: &mut PathBuf| -> Result<()> {
        *p = std::path::absolute(&*p).with_context(|| format!("resolving {}", p.display()))?;
        Ok(())
    };
    for p in cfg.data.domains.values_mut() {
        abs(p)?;
    }
    for p in cfg.data.valid.values_mut() {
        abs(p)?;
    }
    abs(&mut cfg.data.count_tokenizer)?;
    if let Some(p) = cfg.router.heldout.as_mut() {
        abs(p)?;
    }
    if let Some(p) = cfg.router.reference_params.as_mut() {
        abs(p)?;
    }
    if let Some(p) = cfg.forgetting.config.as_mut() {
        abs(p)?;
    }
    Ok(())
}

/// Parses every generated sub-config with the subcommand's own config type, so a
/// setting the subcommand rejects fails here, before any stage runs.
fn check_subconfigs(plans: &[StagePlan]) -> Result<()> {
    for plan in plans {
        for (path, text) in &plan.files {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let r = match (plan.name, name) {
                ("teacher", _) => toml::from_str::<crate::train_cmd::TrainFile>(text).map(|_| ()),
                ("students", "kd.toml") => {
                    toml::from_str::<crate::distill_cmd::KdFile>(text).map(|_| ())
                }
                ("students", _) => {
                    toml::from_str::<crate::distill_cmd::DistillFile>(text).map(|_| ())
                }
                ("moe", _) => toml::from_str::<crate::moe_cmd::MoeTrainFile>(text).map(|_| ()),
                _ => Ok(()),
            };
            r.with_context(|| format!("stage `{}`: the generated {name} is invalid", plan.name))?;
        }
    }
    Ok(())
}

/// Checks that this binary has `mome experiment forgetting`.
fn check_forgetting_command(exe: &Path) -> Result<()> {
    let ok = std::process::Command::new(exe)
        .args(["experiment", "forgetting", "--help"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        bail!("[forgetting] enabled, but this mome has no `experiment forgetting` command: set [forgetting] enabled = false");
    }
    Ok(())
}

/// Runs `mome pipeline`.
pub fn run_pipeline(a: PipelineArgs) -> Result<()> {
    let started = Instant::now();
    let mut cfg = PipelineConfig::load(&a.config)?;
    absolutize(&mut cfg)?;
    cfg.validate()
        .with_context(|| format!("invalid pipeline config {}", a.config.display()))?;
    let from = a
        .from
        .as_deref()
        .map(|s| stage_index(s, "--from"))
        .transpose()?;
    let only = a
        .only
        .as_deref()
        .map(|s| stage_index(s, "--only"))
        .transpose()?;
    let exe = std::env::current_exe().context("locating the mome binary")?;
    if cfg.forgetting.enabled {
        check_forgetting_command(&exe)?;
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let layout = Layout {
        root: std::path::absolute(&a.out)?,
        config: std::path::absolute(&a.config)?,
    };
    let plans = stages::plan(&cfg, &layout)?;
    check_subconfigs(&plans)?;

    // --only: every upstream stage must be complete and up to date.
    if let Some(o) = only {
        let mut needed: Vec<&str> = plans[o].deps.clone();
        let mut i = 0;
        while i < needed.len() {
            let p = plans
                .iter()
                .find(|p| p.name == needed[i])
                .expect("known dep");
            for d in &p.deps {
                if !needed.contains(d) {
                    needed.push(*d);
                }
            }
            i += 1;
        }
        for p in plans.iter().filter(|p| needed.contains(&p.name)) {
            let ok = stage_key(p, &layout)
                .ok()
                .zip(recorded_hash(&layout, p.name))
                .is_some_and(|(k, r)| k.hash == r);
            if !ok {
                bail!(
                    "--only {}: upstream stage `{}` is not complete or not up to date; run `mome pipeline` without --only (or with --from {})",
                    plans[o].name,
                    p.name,
                    p.name
                );
            }
        }
    }

    let display = Display::new(plans.len(), a.quiet);
    let mut ran = 0usize;
    for (i, plan) in plans.iter().enumerate() {
        if only.is_some_and(|o| o != i) {
            continue;
        }
        let forced = only == Some(i) || from.is_some_and(|f| i >= f);
        let key = stage_key(plan, &layout)?;
        let recorded = recorded_hash(&layout, plan.name);
        let why = match (&recorded, forced) {
            (_, true) => "requested",
            (None, _) => "not done yet",
            (Some(r), _) if *r != key.hash => "settings or inputs changed",
            _ => {
                display.stage_done(i, plan.name, "skipped (up to date)");
                continue;
            }
        };
        ran += 1;
        display.stage_start(i, plan.name, why);
        let t0 = Instant::now();
        let commands = run_stage(plan, &layout, &exe, &display, &cfg, &plans)
            .with_context(|| format!("stage `{}` failed", plan.name));
        let commands = match commands {
            Ok(c) => c,
            Err(e) => {
                display.finish();
                return Err(e);
            }
        };
        let wall = t0.elapsed().as_secs_f64();
        let finished = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let record = json!({
            "stage": plan.name, "hash": key.hash, "enabled": plan.enabled,
            "settings": plan.settings, "inputs": key.inputs, "upstream": key.upstream,
            "commands": commands, "wall_seconds": wall, "finished_unix": finished,
            "mome_version": env!("CARGO_PKG_VERSION"),
        });
        mome_data::fsutil::write_json_atomic(&layout.stage(plan.name).join(STAGE_FILE), &record)?;
        display.stage_done(i, plan.name, &format!("done in {wall:.1} s"));
    }
    display.finish();
    let report = layout.root.join("report.md");
    if !a.quiet {
        eprintln!(
            "pipeline: {ran} stage(s) run, {} skipped, {:.1} s",
            if only.is_some() { 0 } else { plans.len() - ran },
            started.elapsed().as_secs_f64()
        );
    }
    println!("{}", report.display());
    Ok(())
}

/// Removes the stage folder, writes its sub-configs, runs its commands; returns the
/// command lines.
fn run_stage(
    plan: &StagePlan,
    layout: &Layout,
    exe: &Path,
    display: &Display,
    cfg: &PipelineConfig,
    plans: &[StagePlan],
) -> Result<Vec<String>> {
    let dir = layout.stage(plan.name);
    runner::check_orphan(&dir)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (path, text) in &plan.files {
        mome_data::fsutil::write_atomic(path, text.as_bytes())?;
    }
    let log = dir.join("log.txt");
    let mut lines = Vec::new();
    if !plan.enabled {
        std::fs::write(&log, "disabled in the config\n")?;
        return Ok(lines);
    }
    if plan.name == "report" {
        display.cmd_start(0, 1, "write report.md");
        report::write_report(layout, cfg, plans, &exe.display().to_string())
            .context("writing report.md")?;
        std::fs::write(
            &log,
            format!("wrote {}\n", layout.root.join("report.md").display()),
        )?;
        return Ok(lines);
    }
    for (j, c) in plan.cmds.iter().enumerate() {
        display.cmd_start(j, plan.cmds.len(), &c.label);
        lines.push(command_line(exe, c));
        if let Err(e) = run_cmd(exe, c, &log, display) {
            let tail = log_tail(&log, 15);
            bail!(
                "{e:#}\n--- last lines of {} ---\n{tail}\n--- full log: {} ---",
                log.display(),
                log.display()
            );
        }
    }
    Ok(lines)
}
