//! `RUN_DIR/report.md`: gathered from the typed summaries the stages of this run
//! wrote (nothing is typed in; a missing file or value is an error, never a 0).

use std::fmt::Write as _;
use std::path::Path;

use mome_data::balance::BalanceReport;
use mome_data::encode::EncodeReport;
use mome_data::tokenizer::TokenizerStats;
use mome_experts::eval::EvalReport;
use mome_moe::io::PleSummary;
use mome_moe::{Arch, EvalReport as MoeEvalReport, MoeConfig, MoeTrainSummary};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::config::PipelineConfig;
use crate::stages::{Layout, StagePlan};
use crate::{Error, Result, STAGE_FILE};

pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Report(format!("{}: {e}", path.display())))
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// What the report reads of a stage's `stage.json`.
#[derive(Debug, Deserialize)]
struct StageRecord {
    wall_seconds: f64,
    commands: Vec<String>,
}

/// A Markdown file of another job placed under a heading of ours: its title dropped,
/// its headings moved `levels` down.
pub(crate) fn embed(md: &str, levels: usize) -> String {
    let mut out = String::new();
    let mut first = true;
    for line in md.lines() {
        if first && line.starts_with("# ") {
            first = false;
            continue;
        }
        first = false;
        if line.starts_with('#') {
            out.push_str(&"#".repeat(levels));
        }
        out.push_str(line);
        out.push('\n');
    }
    out.trim().to_string() + "\n"
}

fn millions(n: u64) -> String {
    format!("{:.2}M", n as f64 / 1e6)
}

fn image(md: &mut String, root: &Path, rel: &str, alt: &str) {
    if root.join(rel).exists() {
        let _ = writeln!(md, "![{alt}]({rel})\n");
    }
}

/// Shape of a model folder's config.json, e.g. "3 layers, d=768, 12 heads".
fn shape(model_dir: &Path) -> Result<String> {
    let c = mome_experts::Gpt2Config::from_file(model_dir.join("config.json"))?;
    Ok(format!(
        "{} layers, d={}, {} heads, {} positions",
        c.n_layer, c.n_embd, c.n_head, c.n_positions
    ))
}

/// The report's value of `what`, or an error naming it.
pub(crate) fn need<T>(v: Option<T>, what: impl FnOnce() -> String) -> Result<T> {
    v.ok_or_else(|| Error::Report(format!("{} is missing", what())))
}

/// Writes `RUN_DIR/report.md` atomically.
pub fn write_report(layout: &Layout, cfg: &PipelineConfig, plans: &[StagePlan]) -> Result<()> {
    let root = &layout.root;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# mome pipeline report\n\nMade by `mome pipeline --config {} --out {}`; device `{}`, precision `{:?}`, seed {}. Every figure below is read from the files the stages of this run wrote; each stage's jobs are listed at the end (the configs beside them re-run one by hand).\n",
        layout.config.display(),
        root.display(),
        cfg.run.device,
        cfg.run.precision,
        cfg.run.seed
    );

    // Wall time.
    md.push_str(
        "## Wall time per stage\n\n| # | stage | wall seconds | commands |\n|---|---|---|---|\n",
    );
    let mut total = 0.0;
    let mut records = Vec::new();
    for (i, p) in plans.iter().enumerate() {
        if p.name == "report" {
            continue;
        }
        let r: StageRecord = read_json(&layout.stage(p.name).join(STAGE_FILE))?;
        total += r.wall_seconds;
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {}{} |",
            i + 1,
            p.name,
            r.wall_seconds,
            r.commands.len(),
            if p.enabled { "" } else { " (disabled)" }
        );
        records.push((p.name, r));
    }
    let _ = writeln!(md, "| | **total** | **{total:.1}** | |\n");
    md.push_str("Wall time is that of the session that completed the stage (a stage skipped on a re-run keeps its time).\n\n");

    // The paper's findings against this run (also in findings.json).
    let f = crate::findings::findings(cfg, layout)?;
    md.push_str("## The paper's findings\n\nEach verdict follows a stated rule (`mome_pipeline::findings`); the sections below hold every number.\n\n");
    md.push_str(&f.to_markdown());
    md.push('\n');
    mome_data::fsutil::write_json_atomic(&root.join("findings.json"), &f)?;

    // Balance.
    let b: BalanceReport = read_json(&layout.stage("balance").join("balance.json"))?;
    let _ = writeln!(
        md,
        "## 1. Data balance\n\nStrategy `{}`, spread between the domains' token totals reached **{:.2}%** (allowed {}%), token limit {:.0}.\n\n| domain | tokens before | tokens after | records before | records after | validation records |\n|---|---|---|---|---|---|",
        serde_json::to_value(b.strategy)?.as_str().unwrap_or("?"),
        b.spread_percent_reached,
        b.max_diff_percent,
        b.limit
    );
    for (d, v) in &b.domains {
        let _ = writeln!(
            md,
            "| {d} | {} | {} | {} | {} | {} |",
            v.tokens_before,
            v.tokens_after,
            v.records_before,
            v.records_after,
            v.validation_records
        );
    }
    md.push('\n');

    // Tokenizer.
    let t: TokenizerStats = read_json(&layout.stage("tokenizer").join("stats.json"))?;
    let _ = writeln!(
        md,
        "## 2. Tokenizer\n\nBPE, vocabulary {} ({} merges), trained on {} texts in {:.1} s; sha256 `{}`.\n\n| domain | tokens / word | tokens / char | records measured |\n|---|---|---|---|",
        t.vocab_size, t.merges, t.texts, t.training_seconds, t.sha256
    );
    for (d, v) in &t.fertility {
        let _ = writeln!(
            md,
            "| {d} | {:.4} | {:.4} | {} |",
            v.tokens_per_word, v.tokens_per_char, v.records
        );
    }
    let e: EncodeReport = read_json(&layout.stage("encode").join("encode.json"))?;
    let _ = writeln!(
        md,
        "\nShards: {}-token sequences, {} sequences, {} tokens from {} documents.\n",
        cfg.encode.seq_len, e.total_sequences, e.total_tokens, e.total_documents
    );

    // Teacher and students.
    let domains: Vec<String> = cfg.data.domains.keys().cloned().collect();
    md.push_str("## 3. Teacher and students\n\nValidation loss (nats/token) and perplexity per domain; each student is distilled from the teacher on its own domain only.\n\n| model | shape | parameters |");
    for d in &domains {
        let _ = write!(md, " {d} loss (ppl) |");
    }
    md.push_str(" mean loss (ppl) |\n|---|---|---|");
    for _ in &domains {
        md.push_str("---|");
    }
    md.push_str("---|\n");
    let mut rows = vec![(
        "teacher".to_string(),
        layout.teacher_model(),
        layout.stage("teacher").join("eval.json"),
    )];
    for d in cfg.student_domains() {
        rows.push((
            format!("student {d}"),
            layout.student(&d).join("model"),
            layout.stage("students").join(format!("{d}.eval.json")),
        ));
    }
    for (name, model, eval) in rows {
        let ev: EvalReport = read_json(&eval)?;
        let params =
            mome_core::tensor_io::safetensors_param_count(&model.join("model.safetensors"))?;
        let _ = write!(md, "| {name} | {} | {} |", shape(&model)?, millions(params));
        for d in &domains {
            let x = need(ev.domains.get(d), || {
                format!("{}: domain {d}", eval.display())
            })?;
            let _ = write!(md, " {:.4} ({:.2}) |", x.loss, x.perplexity);
        }
        let _ = writeln!(md, " {:.4} ({:.2}) |", ev.mean_loss, ev.mean_perplexity);
    }
    md.push('\n');

    // KD comparison.
    if cfg.kd.enabled {
        md.push_str("## 4. Knowledge distillation: fixed vs adaptive alpha\n\n");
        md.push_str(&embed(&read_text(&layout.kd().join("report.md"))?, 2));
        md.push('\n');
        for (f, alt) in [
            ("loss_curves.png", "training loss per run"),
            ("alpha.png", "alpha per step"),
            ("ce_curves.png", "training CE per run"),
            ("val_loss.png", "validation loss per run"),
        ] {
            image(&mut md, root, &format!("students/kd/{f}"), alt);
        }
    }

    // Router.
    md.push_str(&crate::router_stage::report_section(cfg, layout)?);

    // MoE.
    let _ = writeln!(
        md,
        "## 6. Mixtures of modular experts\n\nPLE: the per-domain students behind the router. JEET / MoE-CE: trained jointly with single-domain batches, {}.\n\n| model | experts | common expert | total parameters | final training loss | training seconds |\n|---|---|---|---|---|---|",
        if cfg.moe.kd { "by KD from the teacher (`[students.distill]` settings)" } else { "by cross-entropy on the data" }
    );
    for &arch in &cfg.moe.archs {
        let mc: MoeConfig = read_json(&layout.moe_model(arch).join(mome_moe::io::CONFIG_FILE))?;
        let (params, loss, secs) = if arch == Arch::Ple {
            let s: PleSummary = read_json(&layout.stage("moe").join("ple.json"))?;
            (
                s.total_parameters,
                "(distilled students)".to_string(),
                "–".to_string(),
            )
        } else {
            let f = layout.stage("moe").join(format!("{}.json", arch.name()));
            let s: MoeTrainSummary = read_json(&f)?;
            let loss = need(s.train.final_loss, || {
                format!("{}: final_loss", f.display())
            })?;
            (
                s.total_parameters,
                format!("{loss:.4}"),
                format!("{:.0}", s.train.elapsed_s),
            )
        };
        let _ = writeln!(
            md,
            "| {} | {:?} | {} | {} | {loss} | {secs} |",
            arch.name(),
            mc.domains,
            mc.common_expert,
            millions(params.max(0) as u64)
        );
    }
    md.push('\n');

    // Grid.
    let _ = writeln!(
        md,
        "## 7. Evaluation grid (the paper's 21 settings)\n\n{} Settings that need a common expert the model lacks are skipped.\n",
        if cfg.grid.router {
            "Every validation sequence is routed by the router stage's router (`router/router.json`); routing accuracy is reported per domain."
        } else {
            "Sequences of domain d are routed to d's expert by their label."
        }
    );
    for &arch in &cfg.moe.archs {
        let _ = writeln!(md, "### {}\n", arch.name());
        md.push_str(&embed(
            &read_text(&layout.stage("grid").join(arch.name()).join("report.md"))?,
            3,
        ));
        md.push('\n');
    }
    if cfg.grid.router {
        md.push_str(&routing_cost(layout, cfg)?);
    }

    // Forgetting.
    md.push_str("## 8. Catastrophic forgetting\n\n");
    if cfg.forgetting.enabled {
        md.push_str(&embed(
            &read_text(&layout.forgetting().join(mome_moe::forgetting::REPORT_FILE))?,
            2,
        ));
        md.push('\n');
        image(
            &mut md,
            root,
            "forgetting/out/forgetting.png",
            "validation loss per language over training",
        );
    } else {
        md.push_str("Disabled in the config (`[forgetting] enabled = false`).\n\n");
    }

    // Jobs.
    md.push_str("## Commands\n\nEach stage ran these jobs in-process; the same, by hand (with the configs the stage wrote beside them), or `mome pipeline ... --only STAGE`:\n\n");
    for (name, r) in &records {
        let _ = writeln!(md, "**{name}**\n\n```sh");
        for c in &r.commands {
            let _ = writeln!(md, "{c}");
        }
        md.push_str("```\n\n");
    }
    mome_data::fsutil::write_atomic(&root.join("report.md"), md.as_bytes())?;
    Ok(())
}

/// The cost of routing: the routed setting's validation loss with the router's
/// choices against the oracle's (each sequence to its own domain's expert).
fn routing_cost(layout: &Layout, cfg: &PipelineConfig) -> Result<String> {
    let mut md = String::from("### Cost of routing\n\nThe routed setting (the routed expert, plus the common expert when the model has one): validation loss with the router's choices, with each sequence sent to its own domain's expert (oracle, by label), and their difference (the cost of the router's mistakes).\n\n| model | domain | router | oracle | cost |\n|---|---|---|---|---|\n");
    for &arch in &cfg.moe.archs {
        let dir = layout.stage("grid").join(arch.name()).join("cost");
        let setting = |name: &str| -> Result<mome_moe::SettingEval> {
            let f = dir.join(name).join("report.json");
            let rep: MoeEvalReport = read_json(&f)?;
            need(rep.settings.into_iter().next(), || {
                format!("{}: the routed setting", f.display())
            })
        };
        let (r, o) = (setting("router")?, setting("oracle")?);
        for (d, oe) in &o.domains {
            let re = need(r.domains.get(d), || {
                format!("{}: domain {d}", dir.display())
            })?;
            let _ = writeln!(
                md,
                "| {} | {d} | {:.4} | {:.4} | {:+.4} |",
                arch.name(),
                re.loss,
                oe.loss,
                re.loss - oe.loss
            );
        }
        let _ = writeln!(
            md,
            "| {} | all | {:.4} | {:.4} | {:+.4} |",
            arch.name(),
            r.mean_loss,
            o.mean_loss,
            r.mean_loss - o.mean_loss
        );
    }
    md.push('\n');
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embed_drops_title_and_demotes() {
        let e = embed("# T\n\ntext\n## A\n| x |\n", 2);
        assert_eq!(e, "text\n#### A\n| x |\n");
    }

    #[test]
    fn a_missing_value_is_an_error() {
        let e = need(None::<f64>, || "x.json: final_loss".into()).unwrap_err();
        assert!(e.to_string().contains("final_loss is missing"), "{e}");
    }
}
