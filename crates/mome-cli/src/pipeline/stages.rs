//! The stages of the method, in order, and the child commands each runs.
//!
//! Every stage writes into `RUN_DIR/<stage>/`; sub-configs the subcommands need are
//! generated there from the pipeline config, so a stage can be re-run by hand with
//! the command lines written into its `log.txt` and into the report.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;

use super::config::{train_config, PipelineConfig};
use crate::train_cmd::EvalSection;

/// The stage names, in run order.
pub const STAGES: [&str; 10] = [
    "balance",
    "tokenizer",
    "encode",
    "teacher",
    "students",
    "router",
    "moe",
    "grid",
    "forgetting",
    "report",
];

/// One child process of a stage: `mome <args>`.
#[derive(Debug, Clone)]
pub struct Cmd {
    /// Short label shown in the progress display.
    pub label: String,
    /// Arguments after the binary.
    pub args: Vec<String>,
    /// File that receives the child's stdout (otherwise it goes to the log).
    pub stdout: Option<PathBuf>,
}

/// Everything needed to hash, run and skip one stage.
#[derive(Debug, Clone)]
pub struct StagePlan {
    /// Stage name (also its folder name).
    pub name: &'static str,
    /// Stages whose outputs it reads.
    pub deps: Vec<&'static str>,
    /// The settings that decide its outputs (hashed).
    pub settings: serde_json::Value,
    /// Files or folders from outside the run that it reads (hashed).
    pub inputs: Vec<PathBuf>,
    /// Sub-config files written into the stage folder before the commands run.
    pub files: Vec<(PathBuf, String)>,
    /// Child commands, in order (empty for `report`, which runs in-process).
    pub cmds: Vec<Cmd>,
    /// False when the stage is disabled in the config (it records that and does nothing).
    pub enabled: bool,
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

fn cmd(label: impl Into<String>, args: &[&str], stdout: Option<PathBuf>) -> Cmd {
    Cmd {
        label: label.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        stdout,
    }
}

/// Drops JSON nulls (TOML has none: an absent key means the default / `None`).
fn strip_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(o) => {
            o.retain(|_, x| !x.is_null());
            o.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

fn to_toml(v: &serde_json::Value) -> Result<String> {
    let mut v = v.clone();
    strip_nulls(&mut v);
    let t: toml::Table = serde_json::from_value(v).context("internal: sub-config")?;
    Ok(toml::to_string(&t)?)
}

fn eval_json(e: &EvalSection) -> serde_json::Value {
    json!({"max_sequences": e.max_sequences, "batch_size": e.batch_size})
}

fn train_json(
    section: &str,
    t: &toml::Table,
    cfg: &PipelineConfig,
    max_steps: Option<u64>,
) -> Result<serde_json::Value> {
    let mut tc = train_config(section, t, &cfg.run)?;
    if let Some(m) = max_steps {
        tc.max_steps = m;
    }
    Ok(serde_json::to_value(&tc)?)
}

fn table_json(t: &toml::Table) -> Result<serde_json::Value> {
    Ok(serde_json::to_value(t)?)
}

/// Folder layout of a run.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The run folder (absolute).
    pub root: PathBuf,
    /// The pipeline config file (absolute).
    pub config: PathBuf,
}

impl Layout {
    /// `RUN_DIR/<stage>`.
    pub fn stage(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
    /// The balanced corpus.
    pub fn balanced(&self) -> PathBuf {
        self.stage("balance").join("data")
    }
    /// The trained tokenizer.
    pub fn tokenizer(&self) -> PathBuf {
        self.stage("tokenizer").join("tokenizer.json")
    }
    /// The token shards.
    pub fn shards(&self) -> PathBuf {
        self.stage("encode").join("shards")
    }
    /// The teacher model folder.
    pub fn teacher_model(&self) -> PathBuf {
        self.stage("teacher").join("run").join("model")
    }
    /// A student's run folder.
    pub fn student(&self, domain: &str) -> PathBuf {
        self.stage("students").join(domain)
    }
    /// The router file.
    pub fn router(&self) -> PathBuf {
        self.stage("router").join("router.json")
    }
    /// An MoE model folder.
    pub fn moe_model(&self, arch: &str) -> PathBuf {
        if arch == "ple" {
            self.stage("moe").join("ple")
        } else {
            self.stage("moe").join(arch).join("model")
        }
    }
}

/// Builds the plan of every stage (no file is touched).
pub fn plan(cfg: &PipelineConfig, l: &Layout) -> Result<Vec<StagePlan>> {
    let mut out = Vec::new();
    let run = json!({"device": cfg.run.device.to_string(), "precision": cfg.run.precision, "seed": cfg.run.seed});
    let tok = p(&l.tokenizer());
    let shards = p(&l.shards());

    // balance
    {
        let d = &cfg.data;
        let dir = l.stage("balance");
        let mut args: Vec<String> = vec!["data".into(), "balance".into()];
        for (n, path) in &d.domains {
            args.extend(["--domain".into(), format!("{n}={}", p(path))]);
        }
        for (n, path) in &d.valid {
            args.extend(["--valid".into(), format!("{n}={}", p(path))]);
        }
        args.extend([
            "--valid-fraction".into(),
            d.valid_fraction.to_string(),
            "--seed".into(),
            cfg.run.seed.to_string(),
            "--max-diff-percent".into(),
            d.max_diff_percent.to_string(),
            "--text-field".into(),
            d.text_field.clone(),
            "--tokenizer".into(),
            p(&d.count_tokenizer),
            "--out".into(),
            p(&l.balanced()),
        ]);
        if let Some(s) = &d.strategy {
            args.extend(["--strategy".into(), s.clone()]);
        }
        if let Some(f) = &d.id_field {
            args.extend(["--id-field".into(), f.clone()]);
        }
        if d.common_articles {
            args.push("--common-articles".into());
        }
        let mut inputs: Vec<PathBuf> = d.domains.values().cloned().collect();
        inputs.extend(d.valid.values().cloned());
        inputs.push(d.count_tokenizer.clone());
        out.push(StagePlan {
            name: "balance",
            deps: vec![],
            settings: json!({
                "seed": cfg.run.seed, "domains": d.domains.keys().collect::<Vec<_>>(),
                "valid": d.valid.keys().collect::<Vec<_>>(), "valid_fraction": d.valid_fraction,
                "max_diff_percent": d.max_diff_percent, "strategy": d.strategy,
                "common_articles": d.common_articles, "text_field": d.text_field, "id_field": d.id_field,
            }),
            inputs,
            files: vec![],
            cmds: vec![Cmd {
                label: "balance".into(),
                args,
                stdout: Some(dir.join("balance.json")),
            }],
            enabled: true,
        });
    }

    // tokenizer
    {
        let t = &cfg.tokenizer;
        let dir = l.stage("tokenizer");
        out.push(StagePlan {
            name: "tokenizer",
            deps: vec!["balance"],
            settings: json!({"vocab_size": t.vocab_size, "min_frequency": t.min_frequency}),
            inputs: vec![],
            files: vec![],
            cmds: vec![cmd(
                "train BPE",
                &[
                    "tokenizer",
                    "train",
                    "--input",
                    &p(&l.balanced()),
                    "--vocab-size",
                    &t.vocab_size.to_string(),
                    "--min-frequency",
                    &t.min_frequency.to_string(),
                    "--out",
                    &tok,
                ],
                Some(dir.join("stats.json")),
            )],
            enabled: true,
        });
    }

    // encode
    {
        let dir = l.stage("encode");
        out.push(StagePlan {
            name: "encode",
            deps: vec!["balance", "tokenizer"],
            settings: json!({"seq_len": cfg.encode.seq_len}),
            inputs: vec![],
            files: vec![],
            cmds: vec![cmd(
                "encode",
                &[
                    "data",
                    "encode",
                    "--tokenizer",
                    &tok,
                    "--input",
                    &p(&l.balanced()),
                    "--seq-len",
                    &cfg.encode.seq_len.to_string(),
                    "--out",
                    &shards,
                ],
                Some(dir.join("encode.json")),
            )],
            enabled: true,
        });
    }

    // teacher
    {
        let t = &cfg.teacher;
        let dir = l.stage("teacher");
        let sub = json!({
            "out_dir": p(&dir.join("run")),
            "device": cfg.run.device.to_string(),
            "model": table_json(&t.model)?,
            "data": {"shards": shards, "tokenizer": tok, "sampler": t.sampler, "batch_size": t.batch_size},
            "eval": eval_json(&t.eval),
            "train": train_json("teacher", &t.train, cfg, None)?,
        });
        let file = dir.join("train.toml");
        out.push(StagePlan {
            name: "teacher",
            deps: vec!["encode"],
            settings: json!({"run": run, "config": sub_settings(&sub)}),
            inputs: vec![],
            files: vec![(file.clone(), to_toml(&sub)?)],
            cmds: vec![
                cmd(
                    "train teacher",
                    &["train", "--config", &p(&file)],
                    Some(dir.join("summary.json")),
                ),
                eval_cmd(
                    "evaluate teacher",
                    &l.teacher_model(),
                    &shards,
                    &t.eval,
                    cfg,
                    dir.join("eval.json"),
                ),
            ],
            enabled: true,
        });
    }

    // students (+ kd comparison)
    {
        let s = &cfg.students;
        let dir = l.stage("students");
        let teacher = p(&l.teacher_model());
        let mut files = Vec::new();
        let mut cmds = Vec::new();
        let mut subs = Vec::new();
        for d in cfg.student_domains() {
            let sub = json!({
                "out_dir": p(&l.student(&d)),
                "device": cfg.run.device.to_string(),
                "teacher": {"dir": teacher},
                "student": table_json(&s.model)?,
                "data": {"shards": shards, "tokenizer": tok, "sampler": "mixed", "batch_size": s.batch_size, "domains": [d]},
                "eval": eval_json(&s.eval),
                "distill": table_json(&s.distill)?,
                "train": train_json("students", &s.train, cfg, None)?,
            });
            let file = dir.join(format!("distill-{d}.toml"));
            files.push((file.clone(), to_toml(&sub)?));
            subs.push(sub_settings(&sub));
            cmds.push(cmd(
                format!("distill {d}"),
                &["distill", "--config", &p(&file)],
                Some(dir.join(format!("{d}.summary.json"))),
            ));
            cmds.push(eval_cmd(
                format!("evaluate {d}"),
                &l.student(&d).join("model"),
                &shards,
                &s.eval,
                cfg,
                dir.join(format!("{d}.eval.json")),
            ));
        }
        let k = &cfg.kd;
        if k.enabled {
            let mut kd = json!({"strategies": k.strategies, "losses": k.losses, "temperature": k.temperature, "alpha": k.alpha});
            if let Some(h) = k.history {
                kd["history"] = json!(h);
            }
            let sub = json!({
                "out_dir": p(&dir.join("kd")),
                "device": cfg.run.device.to_string(),
                "teacher": {"dir": teacher},
                "student": table_json(&s.model)?,
                "data": {"shards": shards, "tokenizer": tok, "sampler": "mixed", "batch_size": s.batch_size},
                "eval": eval_json(&s.eval),
                "train": train_json("students", &s.train, cfg, k.max_steps)?,
                "kd": kd,
            });
            let file = dir.join("kd.toml");
            files.push((file.clone(), to_toml(&sub)?));
            subs.push(sub_settings(&sub));
            cmds.push(cmd(
                "kd comparison",
                &["experiment", "kd", "--config", &p(&file)],
                None,
            ));
        }
        out.push(StagePlan {
            name: "students",
            deps: vec!["encode", "teacher"],
            settings: json!({"run": run, "configs": subs}),
            inputs: vec![],
            files,
            cmds,
            enabled: true,
        });
    }

    // router
    {
        let r = &cfg.router;
        let dir = l.stage("router");
        let common = |args: &mut Vec<String>| {
            args.extend([
                "--shards".into(),
                shards.clone(),
                "--passage-lengths".into(),
                r.passage_lengths
                    .iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                "--max-per-class".into(),
                r.max_per_class.to_string(),
                "--min-df".into(),
                r.min_df.to_string(),
                "--max-features".into(),
                r.max_features.to_string(),
                "--seed".into(),
                cfg.run.seed.to_string(),
            ]);
        };
        let mut train: Vec<String> = vec!["router".into(), "train".into()];
        common(&mut train);
        train.extend([
            "--classifier".into(),
            r.classifier.clone(),
            "--out".into(),
            p(&l.router()),
        ]);
        let mut cmds = vec![Cmd {
            label: format!("train {} router", r.classifier),
            args: train,
            stdout: Some(dir.join("train.json")),
        }];
        let mut inputs = Vec::new();
        if r.compare {
            let mut c: Vec<String> = vec!["router".into(), "compare".into()];
            common(&mut c);
            c.extend([
                "--tokenizer".into(),
                tok.clone(),
                "--test-fraction".into(),
                r.test_fraction.to_string(),
                "--out-dir".into(),
                p(&dir.join("compare")),
                // The character n-gram row trains a 2^20-column model: kept out of the
                // pipeline's stage (run `mome router compare` for it).
                "--no-char-row".into(),
            ]);
            if let Some(h) = &r.heldout {
                c.extend(["--heldout".into(), p(h)]);
                inputs.push(h.clone());
            }
            if let Some(rp) = &r.reference_params {
                c.extend(["--reference-params".into(), p(rp)]);
                inputs.push(rp.clone());
            }
            cmds.push(Cmd {
                label: "compare classifiers".into(),
                args: c,
                stdout: Some(dir.join("compare.stdout.md")),
            });
        }
        out.push(StagePlan {
            name: "router",
            deps: vec!["encode"],
            settings: json!({
                "seed": cfg.run.seed, "classifier": r.classifier, "passage_lengths": r.passage_lengths,
                "max_per_class": r.max_per_class, "min_df": r.min_df, "max_features": r.max_features,
                "compare": r.compare, "test_fraction": r.test_fraction,
                "heldout": r.heldout.is_some(), "reference_params": r.reference_params.is_some(),
            }),
            inputs,
            files: vec![],
            cmds,
            enabled: true,
        });
    }

    // moe
    {
        let m = &cfg.moe;
        let dir = l.stage("moe");
        let mut files = Vec::new();
        let mut cmds = Vec::new();
        let mut subs = Vec::new();
        for arch in &m.archs {
            if arch == "ple" {
                let mut args: Vec<String> =
                    vec!["moe".into(), "build".into(), "--arch".into(), "ple".into()];
                for d in cfg.student_domains() {
                    args.extend([
                        "--expert".into(),
                        format!("{d}={}", p(&l.student(&d).join("model"))),
                    ]);
                }
                args.extend([
                    "--router".into(),
                    p(&l.router()),
                    "--out".into(),
                    p(&l.moe_model("ple")),
                ]);
                cmds.push(Cmd {
                    label: "build PLE".into(),
                    args,
                    stdout: Some(dir.join("ple.json")),
                });
                continue;
            }
            let mut sub = json!({
                "out_dir": p(&dir.join(arch)),
                "device": cfg.run.device.to_string(),
                "moe": {"arch": arch, "domains": cfg.data.domains.keys().collect::<Vec<_>>(),
                        "low_confidence_to_common": m.low_confidence_to_common},
                "model": table_json(cfg.moe_model())?,
                "data": {"shards": shards, "tokenizer": tok, "batch_size": m.batch_size},
                "eval": eval_json(&m.eval),
                "train": train_json("moe", &m.train, cfg, None)?,
            });
            if m.kd {
                sub["teacher"] = json!({"dir": p(&l.teacher_model())});
                sub["distill"] = table_json(&cfg.students.distill)?;
            }
            let file = dir.join(format!("{arch}.toml"));
            files.push((file.clone(), to_toml(&sub)?));
            subs.push(sub_settings(&sub));
            cmds.push(cmd(
                format!("train {arch}"),
                &["moe", "train", "--config", &p(&file)],
                Some(dir.join(format!("{arch}.json"))),
            ));
        }
        out.push(StagePlan {
            name: "moe",
            deps: vec!["encode", "teacher", "students", "router"],
            settings: json!({"run": run, "archs": m.archs, "kd": m.kd, "students": cfg.student_domains(), "configs": subs}),
            inputs: vec![],
            files,
            cmds,
            enabled: true,
        });
    }

    // grid
    {
        let g = &cfg.grid;
        let dir = l.stage("grid");
        let cmds = cfg
            .moe
            .archs
            .iter()
            .map(|arch| {
                let mut c = cmd(
                    format!("grid {arch}"),
                    &[
                        "moe",
                        "eval",
                        "--model",
                        &p(&l.moe_model(arch)),
                        "--shards",
                        &shards,
                        "--grid",
                        "paper",
                        "--max-sequences",
                        &g.max_sequences.to_string(),
                        "--batch-size",
                        &g.batch_size.to_string(),
                        "--device",
                        &cfg.run.device.to_string(),
                        "--out-dir",
                        &p(&dir.join(arch)),
                    ],
                    Some(dir.join(format!("{arch}.stdout.md"))),
                );
                if g.router {
                    c.args.extend(["--router".into(), p(&l.router())]);
                }
                c
            })
            .collect();
        out.push(StagePlan {
            name: "grid",
            deps: vec!["encode", "router", "moe"],
            settings: json!({"device": cfg.run.device.to_string(), "max_sequences": g.max_sequences, "batch_size": g.batch_size, "router": g.router, "archs": cfg.moe.archs}),
            inputs: vec![],
            files: vec![],
            cmds,
            enabled: true,
        });
    }

    // forgetting
    {
        let f = &cfg.forgetting;
        let dir = l.stage("forgetting");
        let (cmds, inputs) = match (&f.config, f.enabled) {
            (Some(c), true) => (
                vec![cmd(
                    "forgetting study",
                    &[
                        "experiment",
                        "forgetting",
                        "--config",
                        &p(c),
                        "--out",
                        &p(&dir.join("out")),
                        "--shards",
                        &shards,
                        "--tokenizer",
                        &tok,
                        "--device",
                        &cfg.run.device.to_string(),
                    ],
                    None,
                )],
                vec![c.clone()],
            ),
            _ => (vec![], vec![]),
        };
        out.push(StagePlan {
            name: "forgetting",
            deps: vec!["encode"],
            settings: json!({"enabled": f.enabled}),
            inputs,
            files: vec![],
            cmds,
            enabled: f.enabled,
        });
    }

    out.push(StagePlan {
        name: "report",
        deps: STAGES[..9].to_vec(),
        settings: json!({"report_version": 1}),
        inputs: vec![],
        files: vec![],
        cmds: vec![],
        enabled: true,
    });
    Ok(out)
}

fn eval_cmd(
    label: impl Into<String>,
    model: &Path,
    shards: &str,
    e: &EvalSection,
    cfg: &PipelineConfig,
    out: PathBuf,
) -> Cmd {
    cmd(
        label,
        &[
            "eval",
            "--model",
            &p(model),
            "--shards",
            shards,
            "--max-sequences",
            &e.max_sequences.to_string(),
            "--batch-size",
            &e.batch_size.to_string(),
            "--device",
            &cfg.run.device.to_string(),
            "--json",
        ],
        Some(out),
    )
}

/// A sub-config's settings without the run's own paths (so a moved run folder keeps
/// its hashes): `out_dir`, `data.shards`, `data.tokenizer` and teacher dirs dropped.
fn sub_settings(sub: &serde_json::Value) -> serde_json::Value {
    let mut v = sub.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("out_dir");
        o.remove("teacher");
        if let Some(d) = o.get_mut("data").and_then(|d| d.as_object_mut()) {
            d.remove("shards");
            d.remove("tokenizer");
        }
    }
    v
}
