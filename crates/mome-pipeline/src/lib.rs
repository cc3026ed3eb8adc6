//! `mome-pipeline`: the whole method (`docs/method.md` §1–§8) as one typed,
//! resumable, in-process pipeline of the library jobs, and `mome bench train`.
//!
//! balance → tokenizer → encode → teacher → students (+ the KD comparison) → router
//! → moe → grid → forgetting → `report.md`. Each stage builds the typed job of its
//! library crate from the [`config::PipelineConfig`] (the teacher is
//! [`mome_experts::LmParams`], a student [`mome_distill::DistillParams`], …), checks
//! it and runs it in this process, writing into `RUN_DIR/<stage>/`; `stage.json`,
//! written last, records the hash of the stage's settings, its inputs' content and
//! its upstream stages' records, so a rerun skips every stage that is complete and
//! up to date. Precision and device of `[run]` reach every model of every stage,
//! frozen teachers included.
//!
//! - [`config`]: the pipeline config, built from the library job types;
//! - [`stages`]: the stages, their jobs and how they run;
//! - [`report`]: `report.md`, from the stages' typed summaries;
//! - [`bench`]: the training-step benchmark, on the production step of each job.
//!
//! ```no_run
//! use mome_pipeline::{run_pipeline, PipelineOptions};
//!
//! # fn main() -> mome_pipeline::Result<()> {
//! let summary = run_pipeline(&PipelineOptions::new("configs/demo.toml", "runs/demo"))?;
//! println!("{} stage(s) run -> {}", summary.ran.len(), summary.report.display());
//! # Ok(())
//! # }
//! ```
//!
//! See `docs/pipeline.md`.

pub mod bench;
pub mod config;
pub mod error;
pub mod findings;
pub mod report;
mod router_stage;
pub mod stages;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

pub use config::PipelineConfig;
pub use error::{Error, Result};
use stages::{Layout, StagePlan, STAGES};

/// Name of the file a stage writes last.
pub const STAGE_FILE: &str = "stage.json";
/// Name of the file a stage writes first: the hash of the attempt under way. A stage
/// interrupted (killed, or stopped at a time limit) keeps its folder, and the next run
/// with the same hash resumes it: each job continues from its own checkpoints.
pub const ATTEMPT_FILE: &str = "attempt.json";
/// Files above this size are identified by size and modification time, not content.
const HASH_LIMIT: u64 = 256 << 20;

/// How to run a pipeline (the command line's options).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineOptions {
    /// The pipeline config file.
    pub config: PathBuf,
    /// The run folder: one sub-folder per stage and `report.md`.
    pub out: PathBuf,
    /// Re-run this stage and every later one.
    pub from: Option<String>,
    /// Re-run just this stage (its upstream stages must be complete and up to date).
    pub only: Option<String>,
    /// No progress output from the stages.
    pub quiet: bool,
}

impl PipelineOptions {
    /// Every stage of `config` into `out`, skipping those up to date.
    pub fn new(config: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        Self {
            config: config.into(),
            out: out.into(),
            from: None,
            only: None,
            quiet: false,
        }
    }
}

/// What [`run_pipeline`] did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineSummary {
    /// `RUN_DIR/report.md`.
    pub report: PathBuf,
    /// Stages run, with their wall seconds.
    pub ran: Vec<(String, f64)>,
    /// Stages skipped as up to date.
    pub skipped: Vec<String>,
    /// Wall seconds of this invocation.
    pub seconds: f64,
}

fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn hash_file(path: &Path) -> Result<serde_json::Value> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
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
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(json!({"path": path.display().to_string(), "bytes": bytes.len(), "sha256": sha_hex(&bytes)}))
}

/// Content identity of an input file, or of every file under an input folder.
fn hash_input(path: &Path, out: &mut Vec<serde_json::Value>) -> Result<()> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Error::io(path, e))?
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
        let bytes = std::fs::read(&f).map_err(|_| {
            Error::Stage(format!(
                "stage `{d}` is not complete ({} is missing)",
                f.display()
            ))
        })?;
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
    STAGES.iter().position(|s| *s == name).ok_or_else(|| {
        Error::Stage(format!(
            "{flag} {name:?}: unknown stage (expected one of {})",
            STAGES.join(", ")
        ))
    })
}

/// Runs (or resumes) the pipeline of `opts` (see the crate docs).
pub fn run_pipeline(opts: &PipelineOptions) -> Result<PipelineSummary> {
    let started = Instant::now();
    let cfg = PipelineConfig::load(&opts.config)?;
    cfg.check()?;
    let from = opts
        .from
        .as_deref()
        .map(|s| stage_index(s, "--from"))
        .transpose()?;
    let only = opts
        .only
        .as_deref()
        .map(|s| stage_index(s, "--only"))
        .transpose()?;
    if from.is_some() && only.is_some() {
        return Err(Error::Stage("give --from or --only, not both".into()));
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let layout = Layout {
        root: std::path::absolute(&opts.out).map_err(|e| Error::io(&opts.out, e))?,
        config: std::path::absolute(&opts.config).map_err(|e| Error::io(&opts.config, e))?,
    };
    let plans = stages::plan(&cfg)?;

    // --only: every upstream stage must be complete and up to date.
    if let Some(o) = only {
        let mut needed: Vec<&str> = plans[o].deps.clone();
        let mut i = 0;
        while i < needed.len() {
            if let Some(p) = plans.iter().find(|p| p.name == needed[i]) {
                for d in &p.deps {
                    if !needed.contains(d) {
                        needed.push(*d);
                    }
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
                return Err(Error::Stage(format!(
                    "--only {}: upstream stage `{}` is not complete or not up to date; run `mome pipeline` without --only (or with --from {})",
                    plans[o].name, p.name, p.name
                )));
            }
        }
    }

    let (mut ran, mut skipped) = (Vec::new(), Vec::new());
    let n = plans.len();
    for (i, plan) in plans.iter().enumerate() {
        if only.is_some_and(|o| o != i) {
            continue;
        }
        let forced = only == Some(i) || from.is_some_and(|f| i >= f);
        let key = stage_key(plan, &layout)?;
        let recorded = recorded_hash(&layout, plan.name);
        let resumable = !forced
            && recorded.is_none()
            && attempt_hash(&layout, plan.name).is_some_and(|h| h == key.hash);
        let why = match (&recorded, forced) {
            (_, true) => "requested",
            (None, _) if resumable => "resuming an interrupted attempt",
            (None, _) => "not done yet",
            (Some(r), _) if *r != key.hash => "settings or inputs changed",
            _ => {
                if !opts.quiet {
                    eprintln!("[{}/{n}] {}: skipped (up to date)", i + 1, plan.name);
                }
                skipped.push(plan.name.to_string());
                continue;
            }
        };
        if !opts.quiet {
            eprintln!("[{}/{n}] {}: running ({why})", i + 1, plan.name);
        }
        let t0 = Instant::now();
        prepare_stage_dir(&layout.stage(plan.name), &key.hash, resumable)?;
        let commands =
            run_one(plan, &layout, &cfg, &plans, opts.quiet).map_err(|e| Error::StageFailed {
                stage: plan.name.to_string(),
                source: Box::new(e),
            })?;
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
        if !opts.quiet {
            eprintln!("[{}/{n}] {}: done in {wall:.1} s", i + 1, plan.name);
        }
        ran.push((plan.name.to_string(), wall));
    }
    let seconds = started.elapsed().as_secs_f64();
    if !opts.quiet {
        eprintln!(
            "pipeline: {} stage(s) run, {} skipped, {seconds:.1} s",
            ran.len(),
            skipped.len()
        );
    }
    Ok(PipelineSummary {
        report: layout.root.join("report.md"),
        ran,
        skipped,
        seconds,
    })
}

/// The hash of a stage's attempt under way (or interrupted), from its `attempt.json`.
fn attempt_hash(layout: &Layout, name: &str) -> Option<String> {
    let bytes = std::fs::read(layout.stage(name).join(ATTEMPT_FILE)).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v["hash"].as_str().map(str::to_string)
}

/// Makes `dir` ready for an attempt of hash `hash`: kept as it is when `resume`
/// (an interrupted attempt of the same hash: its jobs resume from their checkpoints),
/// otherwise emptied; then `attempt.json` records the hash.
fn prepare_stage_dir(dir: &Path, hash: &str, resume: bool) -> Result<()> {
    if !resume && dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    mome_data::fsutil::write_json_atomic(
        &dir.join(ATTEMPT_FILE),
        &json!({"hash": hash, "started_unix": started, "resumed": resume}),
    )?;
    Ok(())
}

/// Runs the stage in its prepared folder; returns what it ran.
fn run_one(
    plan: &StagePlan,
    layout: &Layout,
    cfg: &PipelineConfig,
    plans: &[StagePlan],
    quiet: bool,
) -> Result<Vec<String>> {
    let dir = layout.stage(plan.name);
    let log = dir.join("log.txt");
    if !plan.enabled {
        std::fs::write(&log, "disabled in the config\n").map_err(|e| Error::io(&log, e))?;
        return Ok(Vec::new());
    }
    let lines = if plan.name == "report" {
        report::write_report(layout, cfg, plans)?;
        Vec::new()
    } else {
        stages::run_stage(plan.name, cfg, layout, quiet)?
    };
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(&log, text).map_err(|e| Error::io(&log, e))?;
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_attempt_of_the_same_hash_keeps_its_folder() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("students");
        prepare_stage_dir(&dir, "aaa", false).unwrap();
        // What a job wrote before the attempt was killed.
        let ckpt = dir.join("en/checkpoints/step-00000090");
        std::fs::create_dir_all(&ckpt).unwrap();
        let layout = Layout {
            root: root.path().to_path_buf(),
            config: root.path().join("c.toml"),
        };
        assert_eq!(attempt_hash(&layout, "students").as_deref(), Some("aaa"));

        prepare_stage_dir(&dir, "aaa", true).unwrap();
        assert!(ckpt.exists(), "resuming keeps the jobs' checkpoints");

        // Another hash (or a forced re-run) starts over.
        prepare_stage_dir(&dir, "bbb", false).unwrap();
        assert!(!ckpt.exists(), "a new attempt starts from an empty folder");
        assert_eq!(attempt_hash(&layout, "students").as_deref(), Some("bbb"));
    }
}
