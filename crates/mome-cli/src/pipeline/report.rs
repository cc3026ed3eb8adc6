//! `RUN_DIR/report.md`: gathered from the output files the stages of this run wrote
//! (nothing is typed in).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

use super::config::PipelineConfig;
use super::stages::{Layout, StagePlan};
use super::STAGE_FILE;

fn read_json(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Sums the tensor sizes listed in a safetensors header.
pub fn safetensors_params(path: &Path) -> Result<u64> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)?;
    let n = u64::from_le_bytes(len);
    anyhow::ensure!(n < 100 << 20, "{}: implausible header size", path.display());
    let mut head = vec![0u8; n as usize];
    f.read_exact(&mut head)?;
    let v: Value = serde_json::from_slice(&head)?;
    let mut total = 0u64;
    for (k, t) in v.as_object().context("safetensors header")? {
        if k == "__metadata__" {
            continue;
        }
        let shape = t["shape"].as_array().context("tensor shape")?;
        total += shape
            .iter()
            .map(|d| d.as_u64().unwrap_or(0))
            .product::<u64>();
    }
    Ok(total)
}

/// A Markdown file of another tool placed under a heading of ours: its title dropped,
/// its headings moved `levels` down.
fn embed(md: &str, levels: usize) -> String {
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

fn f4(v: &Value) -> String {
    v.as_f64().map_or("–".into(), |x| format!("{x:.4}"))
}

fn image(md: &mut String, root: &Path, rel: &str, alt: &str) {
    if root.join(rel).exists() {
        let _ = writeln!(md, "![{alt}]({rel})\n");
    }
}

/// Shape of a model folder's config.json, e.g. "3 layers, d=768, 12 heads".
fn shape(model_dir: &Path) -> String {
    read_json(&model_dir.join("config.json")).map_or("?".into(), |c| {
        format!(
            "{} layers, d={}, {} heads, {} positions",
            c["n_layer"], c["n_embd"], c["n_head"], c["n_positions"]
        )
    })
}

/// Writes `RUN_DIR/report.md` atomically.
pub fn write_report(
    layout: &Layout,
    cfg: &PipelineConfig,
    plans: &[StagePlan],
    exe: &str,
) -> Result<()> {
    let root = &layout.root;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# mome pipeline report\n\nMade by `{} pipeline --config {} --out {}`; device `{}`, precision `{:?}`, seed {}. Every figure below is read from the files the stages of this run wrote; each stage's command lines are at the end, its full output in `<stage>/log.txt`.\n",
        exe,
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
        let r = read_json(&layout.stage(p.name).join(STAGE_FILE))?;
        let w = r["wall_seconds"].as_f64().unwrap_or(0.0);
        total += w;
        let n = r["commands"].as_array().map_or(0, Vec::len);
        let _ = writeln!(
            md,
            "| {} | {} | {w:.1} | {}{} |",
            i + 1,
            p.name,
            n,
            if p.enabled { "" } else { " (disabled)" }
        );
        records.push((p.name, r));
    }
    let _ = writeln!(md, "| | **total** | **{total:.1}** | |\n");
    md.push_str("Wall time is that of the session that completed the stage (a stage skipped on a re-run keeps its time).\n\n");

    // Balance.
    let b = read_json(&layout.balanced().join("balance_report.json"))?;
    let _ = writeln!(
        md,
        "## 1. Data balance\n\nStrategy `{}`, spread between the domains' token totals reached **{:.2}%** (allowed {}%), token limit {:.0}.\n\n| domain | tokens before | tokens after | records before | records after | validation records |\n|---|---|---|---|---|---|",
        b["strategy"].as_str().unwrap_or("?"),
        b["spread_percent_reached"].as_f64().unwrap_or(f64::NAN),
        b["max_diff_percent"],
        b["limit"].as_f64().unwrap_or(f64::NAN)
    );
    if let Some(ds) = b["domains"].as_object() {
        for (d, v) in ds {
            let _ = writeln!(
                md,
                "| {d} | {} | {} | {} | {} | {} |",
                v["tokens_before"],
                v["tokens_after"],
                v["records_before"],
                v["records_after"],
                v["validation_records"]
            );
        }
    }
    md.push('\n');

    // Tokenizer.
    let t = read_json(&layout.stage("tokenizer").join("stats.json"))?;
    let _ = writeln!(
        md,
        "## 2. Tokenizer\n\nBPE, vocabulary {} ({} merges), trained on {} texts in {:.1} s; sha256 `{}`.\n\n| domain | tokens / word | tokens / char | records measured |\n|---|---|---|---|",
        t["vocab_size"], t["merges"], t["texts"], t["training_seconds"].as_f64().unwrap_or(0.0),
        t["sha256"].as_str().unwrap_or("?")
    );
    if let Some(fs) = t["fertility"].as_object() {
        for (d, v) in fs {
            let _ = writeln!(
                md,
                "| {d} | {} | {} | {} |",
                f4(&v["tokens_per_word"]),
                f4(&v["tokens_per_char"]),
                v["records"]
            );
        }
    }
    let e = read_json(&layout.stage("encode").join("encode.json"))?;
    let _ = writeln!(
        md,
        "\nShards: {}-token sequences, {} sequences, {} tokens from {} documents.\n",
        cfg.encode.seq_len, e["total_sequences"], e["total_tokens"], e["total_documents"]
    );

    // Teacher and students.
    let domains: Vec<String> = cfg.data.domains.keys().cloned().collect();
    md.push_str("## 3. Teacher and students\n\nValidation loss (nats/token) and perplexity per domain (`mome eval`); each student is distilled from the teacher on its own domain only.\n\n| model | shape | parameters |");
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
        let ev = read_json(&eval)?;
        let params = safetensors_params(&model.join("model.safetensors"))?;
        let _ = write!(md, "| {name} | {} | {} |", shape(&model), millions(params));
        for d in &domains {
            let x = &ev["domains"][d];
            let _ = write!(
                md,
                " {} ({:.2}) |",
                f4(&x["loss"]),
                x["perplexity"].as_f64().unwrap_or(f64::NAN)
            );
        }
        let _ = writeln!(
            md,
            " {} ({:.2}) |",
            f4(&ev["mean_loss"]),
            ev["mean_perplexity"].as_f64().unwrap_or(f64::NAN)
        );
    }
    md.push('\n');

    // KD comparison.
    if cfg.kd.enabled {
        let kd = layout.stage("students").join("kd");
        md.push_str("## 4. Knowledge distillation: fixed vs adaptive alpha\n\n");
        md.push_str(&embed(&read_text(&kd.join("report.md"))?, 2));
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
    let rt = read_json(&layout.stage("router").join("train.json"))?;
    let _ = writeln!(
        md,
        "## 5. Router\n\nThe MoE's router: `{}` (`router/router.json`), classes {}.\n",
        cfg.router.classifier, rt["classes"]
    );
    if cfg.router.compare {
        let cmp = layout.stage("router").join("compare");
        md.push_str(&embed(&read_text(&cmp.join("compare.md"))?, 2));
        md.push('\n');
        for tag in ["in_domain", "heldout_short", "heldout_long"] {
            image(
                &mut md,
                root,
                &format!(
                    "router/compare/confusion_{}_{tag}.png",
                    cfg.router.classifier
                ),
                &format!("confusion matrix, {} router, {tag}", cfg.router.classifier),
            );
        }
    }

    // MoE.
    let _ = writeln!(
        md,
        "## 6. Mixtures of modular experts\n\nPLE: the per-domain students behind the router. JEET / MoE-CE: trained jointly with single-domain batches, {}.\n\n| model | experts | common expert | total parameters | final training loss | training seconds |\n|---|---|---|---|---|---|",
        if cfg.moe.kd { "by KD from the teacher (`[students.distill]` settings)" } else { "by cross-entropy on the data" }
    );
    for arch in &cfg.moe.archs {
        let s = read_json(&layout.stage("moe").join(format!("{arch}.json")))?;
        let mc = read_json(&layout.moe_model(arch).join("moe_config.json"))?;
        let _ = writeln!(
            md,
            "| {arch} | {} | {} | {} | {} | {} |",
            mc["domains"],
            mc["common_expert"],
            s["total_parameters"].as_u64().map_or("?".into(), millions),
            if arch == "ple" {
                "(distilled students)".to_string()
            } else {
                f4(&s["final_loss"])
            },
            s["elapsed_s"]
                .as_f64()
                .map_or("–".into(), |x| format!("{x:.0}"))
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
    for arch in &cfg.moe.archs {
        let _ = writeln!(md, "### {arch}\n");
        md.push_str(&embed(
            &read_text(&layout.stage("grid").join(arch).join("report.md"))?,
            3,
        ));
        md.push('\n');
    }

    // Forgetting.
    md.push_str("## 8. Catastrophic forgetting\n\n");
    if cfg.forgetting.enabled {
        let out = layout.stage("forgetting").join("out");
        md.push_str(&embed(&read_text(&out.join("report.md"))?, 2));
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

    // Commands.
    md.push_str("## Commands\n\nEach stage ran these (re-run one by hand, or `mome pipeline ... --only STAGE`):\n\n");
    for (name, r) in &records {
        let _ = writeln!(md, "**{name}**\n\n```sh");
        for c in r["commands"].as_array().into_iter().flatten() {
            let _ = writeln!(md, "{}", c.as_str().unwrap_or(""));
        }
        md.push_str("```\n\n");
    }
    let _ = writeln!(md, "Binary: `{exe}`.");
    mome_data::fsutil::write_atomic(&root.join("report.md"), md.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embed_drops_title_and_demotes() {
        let e = embed("# T\n\ntext\n## A\n| x |\n", 2);
        assert_eq!(e, "text\n#### A\n| x |\n");
    }
}
