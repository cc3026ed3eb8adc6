//! The stages of the method, in order: what each decides its outputs by (hashed),
//! the library job it builds from the config, and how it runs, in this process.
//!
//! Every stage writes into `RUN_DIR/<stage>/`: its outputs, a typed summary of each
//! job (JSON), and the job's config as the matching command reads it (TOML), so a
//! stage can be re-run by hand with the command lines the report lists.

use std::path::{Path, PathBuf};

use mome_core::job::{DataParams, EvalParams};
use mome_core::ParamGuard;
use mome_data::balance::{self, BalanceConfig, DomainSpec};
use mome_data::corpus::CorpusSpec;
use mome_data::encode::{self, EncodeOptions};
use mome_data::fsutil::{write_atomic, write_json_atomic};
use mome_data::sampler::SamplerKind;
use mome_data::tokenizer::{load_tokenizer, train_tokenizer_from_dir, TokenizerTrainConfig};
use mome_distill::experiment::{run_kd_experiment, KdExperimentParams};
use mome_distill::{run_distill, DistillParams, TeacherSection};
use mome_experts::eval::evaluate_dir;
use mome_experts::{train_lm, LmParams};
use mome_moe::eval::{evaluate_dir as evaluate_moe_dir, EvalOptions};
use mome_moe::forgetting::{run_forgetting, ForgettingParams};
use mome_moe::io::assemble_ple;
use mome_moe::{paper_grid, run_moe_training, Arch, MoeDataParams, MoeSection, MoeTrainParams};
use serde::Serialize;
use serde_json::json;

use crate::config::PipelineConfig;
use crate::{Error, Result};

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
    /// The KD comparison's folder.
    pub fn kd(&self) -> PathBuf {
        self.stage("students").join("kd")
    }
    /// The router file.
    pub fn router(&self) -> PathBuf {
        self.stage("router").join("router.json")
    }
    /// An MoE model folder.
    pub fn moe_model(&self, arch: Arch) -> PathBuf {
        match arch {
            Arch::Ple => self.stage("moe").join("ple"),
            a => self.stage("moe").join(a.name()).join("model"),
        }
    }
    /// The forgetting study's folder.
    pub fn forgetting(&self) -> PathBuf {
        self.stage("forgetting").join("out")
    }
}

/// What decides one stage's outputs.
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
    /// False when the stage is disabled in the config (it records that and does nothing).
    pub enabled: bool,
}

fn run_json(cfg: &PipelineConfig) -> serde_json::Value {
    json!({"device": cfg.run.device.to_string(), "precision": cfg.run.precision, "seed": cfg.run.seed})
}

/// The plan of every stage (no file is touched).
pub fn plan(cfg: &PipelineConfig) -> Result<Vec<StagePlan>> {
    let run = run_json(cfg);
    let d = &cfg.data;
    let mut data_inputs: Vec<PathBuf> = d.domains.values().cloned().collect();
    data_inputs.extend(d.valid.values().cloned());
    data_inputs.push(d.count_tokenizer.clone());
    let mut data_settings = serde_json::to_value(d)?;
    if let Some(o) = data_settings.as_object_mut() {
        // The inputs' content is hashed; their paths do not decide the output.
        o.insert(
            "domains".into(),
            json!(d.domains.keys().collect::<Vec<_>>()),
        );
        o.insert("valid".into(), json!(d.valid.keys().collect::<Vec<_>>()));
        o.remove("count_tokenizer");
    }
    let r = &cfg.router;
    let mut router_settings = serde_json::to_value(r)?;
    if let Some(o) = router_settings.as_object_mut() {
        o.insert("heldout".into(), json!(r.heldout.is_some()));
        o.insert(
            "reference_params".into(),
            json!(r.reference_params.is_some()),
        );
    }
    let router_inputs: Vec<PathBuf> = [&r.heldout, &r.reference_params]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let f = &cfg.forgetting;
    let stage = |name, deps: &[&'static str], settings, inputs, enabled| StagePlan {
        name,
        deps: deps.to_vec(),
        settings,
        inputs,
        enabled,
    };
    Ok(vec![
        stage(
            "balance",
            &[],
            json!({"seed": cfg.run.seed, "data": data_settings}),
            data_inputs,
            true,
        ),
        stage(
            "tokenizer",
            &["balance"],
            serde_json::to_value(cfg.tokenizer)?,
            vec![],
            true,
        ),
        stage(
            "encode",
            &["balance", "tokenizer"],
            serde_json::to_value(cfg.encode)?,
            vec![],
            true,
        ),
        stage(
            "teacher",
            &["encode"],
            json!({"run": run, "teacher": cfg.teacher}),
            vec![],
            true,
        ),
        stage(
            "students",
            &["encode", "teacher"],
            json!({"run": run, "students": cfg.students, "domains": cfg.student_domains(), "kd": cfg.kd}),
            vec![],
            true,
        ),
        stage(
            "router",
            &["encode"],
            json!({"seed": cfg.run.seed, "router": router_settings}),
            router_inputs,
            true,
        ),
        stage(
            "moe",
            &["encode", "teacher", "students", "router"],
            json!({"run": run, "moe": cfg.moe, "model": cfg.moe_model(),
                   "distill": cfg.moe.kd.then_some(&cfg.students.distill),
                   "students": cfg.student_domains()}),
            vec![],
            true,
        ),
        stage(
            "grid",
            &["encode", "router", "moe"],
            json!({"device": cfg.run.device.to_string(), "grid": cfg.grid, "archs": cfg.moe.archs}),
            vec![],
            true,
        ),
        stage(
            "forgetting",
            &["encode"],
            json!({"run": run, "enabled": f.enabled, "study": f.params}),
            f.config.iter().cloned().collect(),
            f.enabled,
        ),
        stage(
            "report",
            &STAGES[..9],
            json!({"report_version": 2}),
            vec![],
            true,
        ),
    ])
}

/// The teacher's `mome train` job.
pub fn teacher_params(cfg: &PipelineConfig, l: &Layout, quiet: bool) -> LmParams {
    let t = &cfg.teacher;
    let mut train = cfg.train(&t.train);
    train.quiet |= quiet;
    LmParams {
        out_dir: l.stage("teacher").join("run"),
        device: cfg.run.device,
        model: t.model.clone(),
        data: DataParams {
            tokenizer: Some(l.tokenizer()),
            sampler: t.sampler,
            ..DataParams::new(l.shards(), t.batch_size)
        },
        eval: t.eval,
        train,
        resume: true,
    }
}

/// The teacher every distillation of the run reads: the teacher stage's model, in
/// bf16 when the run's precision is (the rule of [`TeacherSection::bf16_under`]).
pub fn teacher(l: &Layout) -> TeacherSection {
    TeacherSection {
        dir: Some(l.teacher_model()),
        cache: None,
        bf16: None,
    }
}

/// A student's `mome distill` job.
pub fn student_params(
    cfg: &PipelineConfig,
    l: &Layout,
    domain: &str,
    quiet: bool,
) -> DistillParams {
    let s = &cfg.students;
    let mut train = cfg.train(&s.train);
    train.quiet |= quiet;
    DistillParams {
        out_dir: l.student(domain),
        device: cfg.run.device,
        teacher: teacher(l),
        student: s.model.clone(),
        data: DataParams {
            tokenizer: Some(l.tokenizer()),
            sampler: SamplerKind::Mixed,
            domains: vec![domain.to_string()],
            ..DataParams::new(l.shards(), s.batch_size)
        },
        eval: s.eval,
        distill: s.distill.clone(),
        train,
        resume: true,
    }
}

/// The KD comparison's `mome experiment kd` job.
pub fn kd_params(cfg: &PipelineConfig, l: &Layout, quiet: bool) -> KdExperimentParams {
    let s = &cfg.students;
    let mut train = cfg.train(&s.train);
    train.quiet |= quiet;
    if let Some(m) = cfg.kd.max_steps {
        train.max_steps = m;
    }
    KdExperimentParams {
        out_dir: l.kd(),
        device: cfg.run.device,
        teacher: teacher(l),
        teacher_train: None,
        student: s.model.clone(),
        data: DataParams {
            tokenizer: Some(l.tokenizer()),
            sampler: SamplerKind::Mixed,
            ..DataParams::new(l.shards(), s.batch_size)
        },
        eval: s.eval,
        train,
        kd: cfg.kd_section(),
    }
}

/// A JEET / MoE-CE `mome moe train` job.
pub fn moe_params(cfg: &PipelineConfig, l: &Layout, arch: Arch, quiet: bool) -> MoeTrainParams {
    let m = &cfg.moe;
    let mut train = cfg.train(&m.train);
    train.quiet |= quiet;
    let (teacher, distill) = if m.kd {
        (teacher(l), Some(cfg.students.distill.clone()))
    } else {
        (TeacherSection::default(), None)
    };
    MoeTrainParams {
        out_dir: l.stage("moe").join(arch.name()),
        device: cfg.run.device,
        moe: MoeSection {
            arch,
            domains: cfg.data.domains.keys().cloned().collect(),
            low_confidence_to_common: m.low_confidence_to_common,
        },
        model: cfg.moe_model().clone(),
        data: MoeDataParams {
            shards: l.shards(),
            tokenizer: Some(l.tokenizer()),
            batch_size: m.batch_size,
            prefetch: true,
        },
        eval: m.eval,
        teacher,
        distill,
        train,
        resume: true,
        expert_devices: Vec::new(),
    }
}

/// The forgetting study's job: its config file's settings on this run's shards,
/// tokenizer, device, precision and seed.
pub fn forgetting_params(
    cfg: &PipelineConfig,
    l: &Layout,
    quiet: bool,
) -> Option<ForgettingParams> {
    let mut p = cfg.forgetting.params.clone()?;
    p.out_dir = l.forgetting();
    p.device = cfg.run.device;
    p.data.shards = l.shards();
    p.data.tokenizer = Some(l.tokenizer());
    p.train = cfg.train(&p.train);
    p.train.quiet |= quiet;
    Some(p)
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    Ok(write_json_atomic(path, v)?)
}

/// Writes `params` as the TOML config of `command` into `dir/file`; returns the
/// command line that runs it.
fn config_file<T: Serialize>(dir: &Path, file: &str, params: &T, command: &str) -> Result<String> {
    let path = dir.join(file);
    write_atomic(&path, toml::to_string(params)?.as_bytes())?;
    Ok(format!("mome {command} --config {}", path.display()))
}

fn eval_json(
    dir: &Path,
    shards: &Path,
    e: &EvalParams,
    cfg: &PipelineConfig,
    out: &Path,
) -> Result<()> {
    let r = evaluate_dir(
        dir,
        shards,
        "validation",
        e.max_sequences,
        e.batch_size,
        cfg.run.device.resolve()?,
    )?;
    write_json(out, &r)
}

/// Runs stage `name` into its (empty) folder; returns what it ran, as command lines
/// (library jobs with the configs written beside them).
pub fn run_stage(name: &str, cfg: &PipelineConfig, l: &Layout, quiet: bool) -> Result<Vec<String>> {
    let dir = l.stage(name);
    let say = |m: &str| {
        if !quiet {
            eprintln!("[{name}] {m}");
        }
    };
    let mut ran = Vec::new();
    match name {
        "balance" => {
            let d = &cfg.data;
            let spec = |paths: Vec<PathBuf>| CorpusSpec {
                paths,
                text_field: d.text_field.clone(),
                id_field: d.id_field.clone(),
                ..CorpusSpec::default()
            };
            let bc = BalanceConfig {
                domains: d
                    .domains
                    .iter()
                    .map(|(n, p)| DomainSpec {
                        name: n.clone(),
                        train: spec(vec![p.clone()]),
                        validation: d.valid.get(n).map(|v| spec(vec![v.clone()])),
                    })
                    .collect(),
                max_diff_percent: d.max_diff_percent,
                valid_fraction: d.valid_fraction,
                split_seed: cfg.run.seed,
                common_articles: d.common_articles,
                strategy: d.strategy,
                ..BalanceConfig::default()
            };
            bc.validate()?;
            let (tok, _) = load_tokenizer(&d.count_tokenizer)?;
            say(&format!("balancing {} domains", bc.domains.len()));
            let report = balance::balance(&bc, &tok, &l.balanced())?;
            write_json(&dir.join("balance.json"), &report)?;
            ran.push(format!(
                "mome_data::balance::balance -> {}",
                l.balanced().display()
            ));
        }
        "tokenizer" => {
            let t = &cfg.tokenizer;
            let tc = TokenizerTrainConfig {
                vocab_size: t.vocab_size,
                min_frequency: t.min_frequency,
                show_progress: false,
                ..TokenizerTrainConfig::default()
            };
            tc.validate()?;
            say(&format!("training a {}-token BPE tokenizer", t.vocab_size));
            let stats = train_tokenizer_from_dir(&l.balanced(), &tc, &l.tokenizer())?;
            write_json(&dir.join("stats.json"), &stats)?;
            ran.push(format!(
                "mome tokenizer train --input {} --vocab-size {} --min-frequency {} --out {}",
                l.balanced().display(),
                t.vocab_size,
                t.min_frequency,
                l.tokenizer().display()
            ));
        }
        "encode" => {
            let (tok, sha) = load_tokenizer(&l.tokenizer())?;
            let opts = EncodeOptions {
                seq_len: cfg.encode.seq_len,
                ..EncodeOptions::for_tokenizer(&tok)
            };
            say("encoding token shards");
            let report = encode::encode_dir(&l.balanced(), &tok, &sha, &opts, &l.shards())?;
            write_json(&dir.join("encode.json"), &report)?;
            ran.push(format!(
                "mome data encode --tokenizer {} --input {} --seq-len {} --out {}",
                l.tokenizer().display(),
                l.balanced().display(),
                cfg.encode.seq_len,
                l.shards().display()
            ));
        }
        "teacher" => {
            let p = teacher_params(cfg, l, quiet);
            ran.push(config_file(&dir, "train.toml", &p, "train")?);
            say("training the teacher");
            let s = train_lm(&p.check()?)?;
            write_json(&dir.join("summary.json"), &s)?;
            eval_json(
                &l.teacher_model(),
                &l.shards(),
                &cfg.teacher.eval,
                cfg,
                &dir.join("eval.json"),
            )?;
        }
        "students" => {
            for d in cfg.student_domains() {
                let p = student_params(cfg, l, &d, quiet);
                ran.push(config_file(
                    &dir,
                    &format!("distill-{d}.toml"),
                    &p,
                    "distill",
                )?);
                say(&format!("distilling the {d} student"));
                let s = run_distill(&p.check()?)?;
                write_json(&dir.join(format!("{d}.summary.json")), &s)?;
                eval_json(
                    &l.student(&d).join("model"),
                    &l.shards(),
                    &cfg.students.eval,
                    cfg,
                    &dir.join(format!("{d}.eval.json")),
                )?;
            }
            if cfg.kd.enabled {
                let p = kd_params(cfg, l, quiet);
                ran.push(config_file(&dir, "kd.toml", &p, "experiment kd")?);
                say("the KD comparison");
                let r = run_kd_experiment(&p.check()?)?;
                write_json(&l.kd().join("kd.json"), &r)?;
            }
        }
        "router" => {
            ran.extend(crate::router_stage::run(cfg, l, quiet)?);
        }
        "moe" => {
            for &arch in &cfg.moe.archs {
                if arch == Arch::Ple {
                    let experts: Vec<(String, PathBuf)> = cfg
                        .student_domains()
                        .into_iter()
                        .map(|d| {
                            let dir = l.student(&d).join("model");
                            (d, dir)
                        })
                        .collect();
                    say("assembling PLE");
                    let s = assemble_ple(&experts, None, Some(&l.router()), &l.moe_model(arch))?;
                    write_json(&dir.join("ple.json"), &s)?;
                    let mut line = "mome moe build --arch ple".to_string();
                    for (d, p) in &experts {
                        line.push_str(&format!(" --expert {d}={}", p.display()));
                    }
                    line.push_str(&format!(
                        " --router {} --out {}",
                        l.router().display(),
                        l.moe_model(arch).display()
                    ));
                    ran.push(line);
                    continue;
                }
                let p = moe_params(cfg, l, arch, quiet);
                ran.push(config_file(
                    &dir,
                    &format!("{}.toml", arch.name()),
                    &p,
                    "moe train",
                )?);
                say(&format!("training {}", arch.name()));
                let s = run_moe_training(&p.check()?)?;
                write_json(&dir.join(format!("{}.json", arch.name())), &s)?;
            }
        }
        "grid" => {
            let g = &cfg.grid;
            let opts = EvalOptions {
                split: "validation".into(),
                max_sequences: g.max_sequences,
                batch_size: g.batch_size,
                skip_unavailable: true,
            };
            for &arch in &cfg.moe.archs {
                say(&format!("evaluating {} on the paper's grid", arch.name()));
                let router = g.router.then(|| l.router());
                let report = evaluate_moe_dir(
                    &l.moe_model(arch),
                    &l.shards(),
                    &paper_grid(),
                    &opts,
                    router.as_deref(),
                    cfg.run.device.resolve()?,
                )?;
                report.write(&dir.join(arch.name()))?;
                if let Some(r) = &router {
                    // The cost of routing: the routed setting with the router's
                    // choices and with each sequence sent to its own domain's expert
                    // by its label (the oracle).
                    let cfg_path = l.moe_model(arch).join(mome_moe::io::CONFIG_FILE);
                    let mc: mome_moe::MoeConfig = mome_core::job::read_json(&cfg_path)?;
                    let routed = [mome_moe::Setting::routed(mc.common_expert)];
                    for (name, with) in [("router", Some(r.as_path())), ("oracle", None)] {
                        let rep = evaluate_moe_dir(
                            &l.moe_model(arch),
                            &l.shards(),
                            &routed,
                            &opts,
                            with,
                            cfg.run.device.resolve()?,
                        )?;
                        rep.write(&dir.join(arch.name()).join("cost").join(name))?;
                    }
                }
                let mut line = format!(
                    "mome moe eval --model {} --shards {} --grid paper --max-sequences {} --batch-size {} --device {} --out-dir {}",
                    l.moe_model(arch).display(),
                    l.shards().display(),
                    g.max_sequences,
                    g.batch_size,
                    cfg.run.device,
                    dir.join(arch.name()).display()
                );
                if let Some(r) = &router {
                    line.push_str(&format!(" --router {}", r.display()));
                }
                ran.push(line);
            }
        }
        "forgetting" => {
            if let Some(p) = forgetting_params(cfg, l, quiet) {
                ran.push(config_file(
                    &dir,
                    "forgetting.toml",
                    &p,
                    "experiment forgetting",
                )?);
                say("the forgetting study");
                let r = run_forgetting(&p.check()?)?;
                write_json(
                    &dir.join("summary.json"),
                    &json!({
                        "out_dir": l.forgetting(),
                        "max_forgetting": r.finding.max_forgetting,
                        "paper_finding_holds": r.finding.paper_finding_holds,
                        "seconds": r.seconds,
                    }),
                )?;
            }
        }
        other => {
            return Err(Error::Stage(format!(
                "internal: stage {other:?} has no runner"
            )))
        }
    }
    Ok(ran)
}

/// A student's `mome eval` output file.
pub fn student_eval(l: &Layout, domain: &str) -> PathBuf {
    l.stage("students").join(format!("{domain}.eval.json"))
}

/// Exposes the typed jobs of every stage that runs a frozen teacher (students, the
/// KD comparison's runs, JEET / MoE-CE): `(what, teacher section, precision)`.
pub fn frozen_teachers(cfg: &PipelineConfig, l: &Layout) -> Result<Vec<(String, bool)>> {
    let mut out = Vec::new();
    for d in cfg.student_domains() {
        let p = student_params(cfg, l, &d, true);
        out.push((
            format!("student {d}"),
            p.teacher.bf16_under(p.train.precision),
        ));
    }
    if cfg.kd.enabled {
        let p = kd_params(cfg, l, true);
        for (name, settings) in p.kd.plan() {
            if !settings.strategy.is_ce_only() {
                out.push((
                    format!("kd run {name}"),
                    p.teacher.bf16_under(p.train.precision),
                ));
            }
        }
    }
    if cfg.moe.kd {
        for &arch in cfg.moe.archs.iter().filter(|a| **a != Arch::Ple) {
            let p = moe_params(cfg, l, arch, true);
            out.push((
                format!("moe {}", arch.name()),
                p.teacher.bf16_under(p.train.precision),
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    /// A committed config, read from the repository root (its paths are relative to
    /// the current directory, as `mome pipeline` reads them).
    fn load(name: &str) -> PipelineConfig {
        std::env::set_current_dir(repo()).unwrap();
        let c = PipelineConfig::load(&repo().join("configs").join(name)).unwrap();
        c.check().unwrap();
        c
    }

    fn layout() -> Layout {
        Layout {
            root: PathBuf::from("/run"),
            config: PathBuf::from("/run.toml"),
        }
    }

    /// The CPU check of the GPU smoke config: a bf16 run gives every frozen teacher
    /// (the students', the KD comparison's, JEET's and MoE-CE's) bf16; an fp32 run
    /// none.
    #[test]
    fn a_bf16_run_gives_every_frozen_teacher_bf16() {
        let smoke = load("paper-smoke.toml");
        assert_eq!(smoke.run.precision, mome_core::Precision::Bf16);
        let t = frozen_teachers(&smoke, &layout()).unwrap();
        // 4 students, 2 KD runs with a teacher, JEET and MoE-CE.
        assert_eq!(t.len(), 8, "{t:?}");
        assert!(t.iter().all(|(_, bf16)| *bf16), "{t:?}");
        let demo = load("demo.toml");
        let t = frozen_teachers(&demo, &layout()).unwrap();
        assert!(!t.is_empty() && t.iter().all(|(_, bf16)| !*bf16), "{t:?}");
    }

    /// Every job a stage builds carries `[run]`'s device, precision and seed.
    #[test]
    fn run_settings_reach_every_job() {
        let c = load("paper-smoke.toml");
        let l = layout();
        let mut trains = vec![
            ("teacher", teacher_params(&c, &l, false).train),
            ("kd", kd_params(&c, &l, false).train),
            ("jeet", moe_params(&c, &l, Arch::Jeet, false).train),
        ];
        for d in c.student_domains() {
            trains.push(("student", student_params(&c, &l, &d, false).train));
        }
        for (what, t) in trains {
            assert_eq!(t.precision, c.run.precision, "{what}");
            assert_eq!(t.seed, c.run.seed, "{what}");
        }
        assert_eq!(teacher_params(&c, &l, false).device, c.run.device);
        assert_eq!(kd_params(&c, &l, false).kd.temperature, 2.0);
        assert_eq!(kd_params(&c, &l, false).train.max_steps, 20);
    }

    #[test]
    fn paper_config_parses_with_the_paper_sizes() {
        std::env::set_current_dir(repo()).unwrap();
        let c = PipelineConfig::load(&repo().join("configs/paper.toml")).unwrap();
        assert_eq!(c.run.precision, mome_core::Precision::Bf16);
        assert!(matches!(c.run.device, mome_core::DeviceSpec::Cuda(_)));
        assert_eq!(c.tokenizer.vocab_size, 32000);
        assert_eq!(c.encode.seq_len, 1024);
        let m = c.teacher.model.resolve(32000).unwrap();
        assert_eq!((m.n_layer, m.n_embd, m.n_head), (24, 1024, 16));
        let s = c.students.model.resolve(32000).unwrap();
        assert_eq!(
            (s.n_layer, s.n_embd, s.n_head, s.n_positions),
            (3, 768, 12, 1024)
        );
        for t in [&c.teacher.train, &c.students.train, &c.moe.train] {
            c.train(t).validate().unwrap();
        }
        assert_eq!(c.moe.archs, [Arch::Ple, Arch::Jeet, Arch::MoeCe]);
    }

    #[test]
    fn stage_settings_are_precision_and_seed_dependent() {
        let a = load("demo.toml");
        let mut b = a.clone();
        b.run.seed = 1;
        let (pa, pb) = (plan(&a).unwrap(), plan(&b).unwrap());
        for (x, y) in pa.iter().zip(&pb) {
            // The tokenizer and encode stages do not depend on the seed.
            let same = ["tokenizer", "encode", "grid", "report"].contains(&x.name);
            assert_eq!(x.settings == y.settings, same, "{}", x.name);
        }
    }
}
