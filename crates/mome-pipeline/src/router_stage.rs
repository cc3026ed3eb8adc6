//! The `router` stage (method §5): mome-router's training job on the shards, then
//! its comparison of every classifier, and the report's section on them.

use std::fmt::Write as _;

use mome_core::ParamGuard;
use mome_router::compare::{run_compare, CompareParams};
use mome_router::train::{run_train, TrainParams, TrainSummary};
use mome_router::DataParams;

use crate::config::PipelineConfig;
use crate::stages::Layout;
use crate::{Error, Result};

/// The router's training data: the run's shards, the `[router]` settings.
fn data(cfg: &PipelineConfig, l: &Layout) -> DataParams {
    let r = &cfg.router;
    DataParams {
        shards: Some(l.shards()),
        passage_lengths: r.passage_lengths.clone(),
        max_per_class: r.max_per_class,
        min_df: r.min_df,
        max_features: r.max_features,
        seed: cfg.run.seed,
        ..DataParams::default()
    }
}

/// The router's `mome router train` job.
pub fn train_params(cfg: &PipelineConfig, l: &Layout) -> TrainParams {
    TrainParams {
        data: data(cfg, l),
        classifier: cfg.router.classifier,
        out: l.router(),
        ..TrainParams::default()
    }
}

/// The classifiers' `mome router compare` job (the character n-gram row, a
/// 2^20-column model, stays out of the pipeline: run `mome router compare` for it).
pub fn compare_params(cfg: &PipelineConfig, l: &Layout) -> CompareParams {
    let r = &cfg.router;
    CompareParams {
        data: DataParams {
            tokenizer: Some(l.tokenizer()),
            ..data(cfg, l)
        },
        test_fraction: r.test_fraction,
        heldout: r.heldout.clone(),
        reference_params: r.reference_params.clone(),
        char_row: false,
        out_dir: l.stage("router").join("compare"),
        ..CompareParams::default()
    }
}

/// Trains the router, then (with `[router] compare`) compares the classifiers.
pub fn run(cfg: &PipelineConfig, l: &Layout, quiet: bool) -> Result<Vec<String>> {
    let dir = l.stage("router");
    let mut ran = Vec::new();
    if !quiet {
        eprintln!("[router] training the {:?} router", cfg.router.classifier);
    }
    let tp = train_params(cfg, l);
    let s = run_train(&tp.check()?)?;
    mome_data::fsutil::write_json_atomic(&dir.join("train.json"), &s)?;
    ran.push(format!(
        "mome_router::train::run_train -> {} ({:?})",
        l.router().display(),
        s.classes
    ));
    if cfg.router.compare {
        if !quiet {
            eprintln!("[router] comparing the classifiers");
        }
        let cp = compare_params(cfg, l);
        let c = run_compare(&cp.check()?)?;
        mome_data::fsutil::write_json_atomic(&dir.join("compare.summary.json"), &c)?;
        ran.push(format!(
            "mome_router::compare::run_compare -> {}",
            cp.out_dir.display()
        ));
    }
    Ok(ran)
}

/// The report's section 5.
pub fn report_section(cfg: &PipelineConfig, l: &Layout) -> Result<String> {
    let path = l.stage("router").join("train.json");
    let s: TrainSummary = mome_core::job::read_json(&path)?;
    let mut md = String::new();
    let name = serde_json::to_value(cfg.router.classifier)?
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| Error::Report("router classifier name".into()))?;
    let _ = writeln!(
        md,
        "## 5. Router\n\nThe MoE's router: `{name}` (`router/router.json`), classes {:?}.\n",
        s.classes
    );
    if cfg.router.compare {
        let cmp = l.stage("router").join("compare");
        let text = std::fs::read_to_string(cmp.join("compare.md"))
            .map_err(|e| Error::io(cmp.join("compare.md"), e))?;
        md.push_str(&crate::report::embed(&text, 2));
        md.push('\n');
        for tag in ["in_domain", "heldout_short", "heldout_long"] {
            let rel = format!("router/compare/confusion_{name}_{tag}.png");
            if l.root.join(&rel).exists() {
                let _ = writeln!(md, "![confusion matrix, {name} router, {tag}]({rel})\n");
            }
        }
    }
    Ok(md)
}
