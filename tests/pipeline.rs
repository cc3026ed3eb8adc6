//! End-to-end tests of `mome pipeline` on a slice of the demo corpus with tiny models:
//! a full run, a re-run that skips everything, `--only` / `--from`, a run killed in
//! the middle of a stage and resumed, and configs rejected before any stage runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

mod common;
use common::{mome, repo};

use mome_pipeline::stages::STAGES;

/// The first `n` records of each demo domain.
fn slice_demo(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for d in ["en", "fr", "de", "py"] {
        let text = std::fs::read_to_string(repo().join(format!("data/demo/{d}.jsonl"))).unwrap();
        let lines: Vec<&str> = text.lines().take(n).collect();
        std::fs::write(dir.join(format!("{d}.jsonl")), lines.join("\n") + "\n").unwrap();
    }
}

fn has_forgetting() -> bool {
    mome()
        .args(["experiment", "forgetting", "--help"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A tiny pipeline config (seconds per stage on a CPU).
fn tiny_config(dir: &Path, extra: &str) -> PathBuf {
    let data = dir.join("data");
    slice_demo(&data, 40);
    let tok = repo().join("data/tokenizer/En_De_Fr_Py_Tokenizer/tokenizer.json");
    let d = |x: &str| data.join(format!("{x}.jsonl")).display().to_string();
    let model = r#"preset = "custom"
n_layer = 1
n_embd = 32
n_head = 2
n_positions = 64"#;
    let train = r#"max_steps = 6
warmup_steps = 1
log_every = 2
eval_every = 0
checkpoint_every = 0
keep_last = 1
optimizer = { lr = 3e-3 }"#;
    let text = format!(
        r#"[run]
device = "cpu"

[data]
domains = {{ en = "{en}", fr = "{fr}", de = "{de}", py = "{py}" }}
count_tokenizer = "{tok}"
valid_fraction = 0.2
max_diff_percent = 10.0

[tokenizer]
vocab_size = 600

[encode]
seq_len = 64

[teacher]
batch_size = 4
eval = {{ max_sequences = 4, batch_size = 4 }}
[teacher.model]
{model}
[teacher.train]
{train}

[students]
batch_size = 4
eval = {{ max_sequences = 4, batch_size = 4 }}
[students.model]
{model}
[students.train]
{train}

[kd]
strategies = ["fixed", "adaptive"]
max_steps = 4

[router]
passage_lengths = [16, 64]
max_per_class = 40

[moe]
batch_size = 4
eval = {{ max_sequences = 4, batch_size = 4 }}
[moe.model]
{model}
tie_word_embeddings = false
[moe.train]
{train}

[grid]
max_sequences = 2
batch_size = 4

{extra}
"#,
        en = d("en"),
        fr = d("fr"),
        de = d("de"),
        py = d("py"),
        tok = tok.display(),
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `[forgetting]` with a tiny `mome experiment forgetting` config (when this mome
/// has that command).
fn forgetting_section(dir: &Path) -> String {
    if !has_forgetting() {
        return "[forgetting]\nenabled = false\n".into();
    }
    let shards = dir.join("run/encode/shards");
    let text = format!(
        r#"out_dir = "{out}"
device = "cpu"

[data]
shards = "{shards}"
batch_size = 4

[eval]
max_sequences = 2
batch_size = 4

[student]
preset = "custom"
n_layer = 1
n_embd = 32
n_head = 2
n_positions = 64

[forgetting]
domains = ["en", "fr", "de", "py"]
evals_per_phase = 1
moe_arch = "jeet"
regimes = ["sequential", "balanced", "moe"]

[train]
max_steps = 8
schedule = "constant"
log_every = 2
checkpoint_every = 4
keep_last = 1
optimizer = {{ lr = 3e-3 }}
"#,
        out = dir.join("forgetting-unused").display(),
        shards = shards.display()
    );
    let path = dir.join("forgetting.toml");
    std::fs::write(&path, text).unwrap();
    format!("[forgetting]\nconfig = \"{}\"\n", path.display())
}

fn run(config: &Path, out: &Path, extra: &[&str]) -> Output {
    let o = mome()
        .args(["pipeline", "--config"])
        .arg(config)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    if !o.status.success() {
        panic!(
            "pipeline failed:\n{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    o
}

fn mtimes(out: &Path) -> Vec<SystemTime> {
    STAGES
        .iter()
        .map(|s| {
            std::fs::metadata(out.join(s).join("stage.json"))
                .and_then(|m| m.modified())
                .unwrap()
        })
        .collect()
}

fn check_report(out: &Path) {
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for section in [
        "## Wall time per stage",
        "## 1. Data balance",
        "## 2. Tokenizer",
        "## 3. Teacher and students",
        "## 4. Knowledge distillation",
        "## 5. Router",
        "## 6. Mixtures of modular experts",
        "## 7. Evaluation grid",
        "## 8. Catastrophic forgetting",
        "## Commands",
    ] {
        assert!(md.contains(section), "report.md lacks {section}:\n{md}");
    }
    for needle in [
        "| student en |",
        "| teacher |",
        "### ple",
        "### jeet",
        "### moe-ce",
        "### Cost of routing",
        "| jeet | all |",
        "(students/kd/alpha.png)",
        "(router/compare/confusion_logreg_in_domain.png)",
        " pipeline --config",
    ] {
        assert!(md.contains(needle), "report.md lacks {needle}");
    }
    // Every linked image exists (relative to the report).
    for part in md.split("](").skip(1) {
        let rel = &part[..part.find(')').unwrap()];
        assert!(out.join(rel).exists(), "missing image {rel}");
    }
    // The grid has the paper's 21 settings per model.
    let grid: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("grid/jeet/report.json")).unwrap()).unwrap();
    assert_eq!(grid["settings"].as_array().unwrap().len(), 21);
}

#[test]
fn full_run_resume_only_from_and_kill() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_config(tmp.path(), &forgetting_section(tmp.path()));
    let out = tmp.path().join("run");

    // 1. Full run.
    let o = run(&config, &out, &[]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(stdout.trim(), out.join("report.md").display().to_string());
    for s in STAGES {
        assert!(out.join(s).join("stage.json").exists(), "{s}");
    }
    assert!(out.join("teacher/log.txt").exists());
    check_report(&out);

    // 2. Re-run: every stage skipped, nothing rewritten.
    let before = mtimes(&out);
    let o = run(&config, &out, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.matches("skipped (up to date)").count(), 10, "{err}");
    assert_eq!(mtimes(&out), before);

    // 3. --only router: just that stage; then a plain run redoes its downstream.
    std::thread::sleep(Duration::from_millis(20));
    run(&config, &out, &["--only", "router"]);
    let after = mtimes(&out);
    for (i, s) in STAGES.iter().enumerate() {
        assert_eq!(
            after[i] != before[i],
            *s == "router",
            "--only router changed {s}?"
        );
    }
    let o = run(&config, &out, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    let again = mtimes(&out);
    for (i, s) in STAGES.iter().enumerate() {
        let redone = ["moe", "grid", "report"].contains(s);
        assert_eq!(
            again[i] != after[i],
            redone,
            "{s} after --only router\n{err}"
        );
    }

    // 4. --from grid: grid and every later stage.
    let o = run(&config, &out, &["--from", "grid", "--quiet"]);
    assert!(String::from_utf8_lossy(&o.stderr).trim().is_empty());
    let from = mtimes(&out);
    for (i, s) in STAGES.iter().enumerate() {
        assert_eq!(from[i] != again[i], i >= 7, "--from grid and {s}");
    }

    // 5. Killed in the middle of the teacher stage, then resumed. The forced attempt
    // empties the folder first, so the old `train.toml` goes (removed here too: while
    // the folder is being emptied, the old `train.toml` may outlive `stage.json`);
    // a `train.toml` then means the new attempt has written its `attempt.json`.
    std::fs::remove_file(out.join("teacher/train.toml")).unwrap();
    let mut child = {
        use std::os::unix::process::CommandExt;
        mome()
            .args(["pipeline", "--config"])
            .arg(&config)
            .arg("--out")
            .arg(&out)
            .args(["--from", "teacher"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap()
    };
    let t0 = Instant::now();
    loop {
        // The stage writes its job's config, then trains (in the pipeline's process).
        if out.join("teacher/train.toml").exists() && !out.join("teacher/stage.json").exists() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "teacher never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Like Ctrl-C on a terminal: the whole process group (the pipeline runs every
    // stage in its own process).
    let pgid = format!("-{}", child.id());
    let st = Command::new("kill")
        .args(["-KILL", "--", &pgid])
        .status()
        .unwrap();
    assert!(st.success());
    let _ = child.wait();
    assert!(!out.join("teacher/stage.json").exists());
    let o = run(&config, &out, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    // The killed attempt's folder is kept and its jobs resume from their checkpoints.
    assert!(
        err.contains("teacher: running (resuming an interrupted attempt)"),
        "{err}"
    );
    assert!(err.contains("balance: skipped"), "{err}");
    for s in STAGES {
        assert!(out.join(s).join("stage.json").exists(), "{s}");
    }
    check_report(&out);
}

#[test]
fn only_needs_complete_upstream() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_config(tmp.path(), "[forgetting]\nenabled = false\n");
    let out = tmp.path().join("run");
    let o = mome()
        .args(["pipeline", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&out)
        .args(["--only", "teacher"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("upstream stage `balance` is not complete"),
        "{err}"
    );
    assert!(!out.join("teacher").exists());
    let o = mome()
        .args(["pipeline", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&out)
        .args(["--only", "nope"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown stage"));
}

#[test]
fn bad_configs_fail_before_any_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(tiny_config(tmp.path(), "[forgetting]\nenabled = false\n"))
        .unwrap();
    let cases: [(&str, String, &str); 6] = [
        (
            "unknown key",
            base.replace("[encode]\n", "[encode]\nseq_length = 3\n"),
            "unknown field `seq_length`",
        ),
        (
            "range",
            base.replace("valid_fraction = 0.2", "valid_fraction = 2.0"),
            "[data] valid_fraction = 2",
        ),
        (
            "missing file",
            base.replace("en.jsonl", "nothing-here.jsonl"),
            "does not exist",
        ),
        (
            "context too short",
            base.replace("seq_len = 64", "seq_len = 128"),
            "n_positions = 64 is smaller than [encode] seq_len = 128",
        ),
        (
            "bad train key",
            base.replace("warmup_steps = 1\n", "warmup_steps = 1\nwarmpu = 2\n"),
            "unknown field `warmpu`",
        ),
        (
            "forgetting without config",
            base.replace("enabled = false", "enabled = true"),
            "[forgetting]",
        ),
    ];
    for (name, text, expect) in cases {
        let cfg = tmp.path().join(format!("{}.toml", name.replace(' ', "-")));
        std::fs::write(&cfg, text).unwrap();
        let out = tmp.path().join(format!("run-{}", name.replace(' ', "-")));
        let o = mome()
            .args(["pipeline", "--config"])
            .arg(&cfg)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{name}: should fail");
        assert!(
            err.contains(expect),
            "{name}: expected {expect:?} in\n{err}"
        );
        assert!(!out.join("balance").exists(), "{name}: a stage ran");
    }
}
