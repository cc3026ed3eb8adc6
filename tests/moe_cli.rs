//! End-to-end tests of the MoE commands of the `mome` binary on the embedded demo
//! corpus: `mome generate` on a MoE folder, `--router` in `moe build` / `moe eval`,
//! KD in `moe train`, and `mome experiment forgetting`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

mod common;
use common::{mome, prepare_demo, run_err, run_ok, stdout};

/// Balanced demo data, a 1000-token tokenizer, 64-token shards, a router and a small
/// JEET model (trained a few steps) with one expert exported, made once.
fn prepared() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        prepare_demo(d, 1000, 64);
        run_ok(
            mome()
                .args(["router", "train", "--passage-lengths", "16,64", "--shards"])
                .arg(d.join("shards"))
                .arg("--out")
                .arg(d.join("router.json")),
        );
        let cfg = moe_config(d, "jeet", 6, "");
        run_ok(
            mome()
                .args(["moe", "train", "--quiet", "--config"])
                .arg(&cfg),
        );
        run_ok(
            mome()
                .args(["moe", "export-expert", "--expert", "fr", "--model"])
                .arg(d.join("jeet/model"))
                .arg("--out")
                .arg(d.join("fr")),
        );
        dir
    })
    .path()
}

fn moe_config(dir: &Path, name: &str, steps: u64, extra: &str) -> PathBuf {
    let cfg = format!(
        r#"out_dir = "{out}"
device = "cpu"
{extra}
[moe]
arch = "jeet"
domains = ["en", "fr", "de", "py"]
[model]
n_layer = 1
n_embd = 32
n_head = 2
n_positions = 64
tie_word_embeddings = false
[data]
shards = "{shards}"
batch_size = 4
[eval]
max_sequences = 4
[train]
max_steps = {steps}
log_every = 1
seed = 3
optimizer = {{ lr = 3e-3 }}
"#,
        out = dir.join(name).display(),
        shards = dir.join("shards").display(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, cfg).unwrap();
    path
}

/// A Python prompt long enough for the tiny test router to be sure of it (a
/// three-token `def main():` alone is a coin toss for a router trained in seconds),
/// short enough for the 64-position test models.
const PY_PROMPT: &str = "import os\nimport sys\n\ndef main(args):\n    return os.path.join(args)\n";

fn gen(model: &Path, extra: &[&str]) -> Command {
    let mut c = mome();
    c.arg("generate")
        .arg("--model")
        .arg(model)
        .arg("--tokenizer")
        .arg(prepared().join("tok.json"))
        .args(["--prompt", "Le système est", "--prompt", PY_PROMPT])
        .args(["--temperature", "0", "--max-new-tokens", "12"])
        .args(extra);
    c
}

#[test]
fn moe_generation_equals_the_exported_expert_alone() {
    let p = prepared();
    let moe = p.join("jeet/model");
    let alone = stdout(&run_ok(&mut gen(&p.join("fr"), &[])));
    let routed = stdout(&run_ok(&mut gen(&moe, &["--expert", "fr"])));
    assert_eq!(routed, alone);
    assert!(
        alone.starts_with("Le système est") && alone.contains("def main(args):"),
        "{alone}"
    );
    // The same through a setting that uses only fr.
    let via_setting = stdout(&run_ok(&mut gen(&moe, &["--setting", "used=fr"])));
    assert_eq!(via_setting, alone);

    // A router: the routing is shown (label, probabilities, confident, experts).
    let router = p.join("router.json");
    let out = stdout(&run_ok(&mut gen(
        &moe,
        &[
            "--show-routing",
            "--router",
            router.to_str().unwrap(),
            "--json",
        ],
    )));
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for l in &lines {
        let r = &l["routing"];
        let probs = r["probabilities"].as_object().unwrap();
        assert_eq!(probs.len(), 4);
        let sum: f64 = probs.values().map(|v| v.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-3, "{r}");
        assert!(r["confident"].is_boolean());
        assert_eq!(r["experts"].as_array().unwrap().len(), 1);
        assert!(probs.contains_key(r["label"].as_str().unwrap()));
    }
    assert_eq!(lines[1]["routing"]["label"], "py", "{out}");
    let text = stdout(&run_ok(&mut gen(
        &moe,
        &["--show-routing", "--router", router.to_str().unwrap()],
    )));
    assert!(
        text.lines().next().unwrap().starts_with("[routing] label="),
        "{text}"
    );

    // No router in the folder and a setting that needs one: a clear error.
    let e = run_err(&mut gen(&moe, &[]));
    assert!(e.contains("--router"), "{e}");
    // MoE options on a plain GPT-2 folder.
    let e = run_err(&mut gen(&p.join("fr"), &["--expert", "fr"]));
    assert!(e.contains("MoE"), "{e}");
}

#[test]
fn router_in_build_and_eval_and_mismatched_router_is_an_error_first() {
    let p = prepared();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let router = p.join("router.json");
    for d in ["en", "de", "py"] {
        run_ok(
            mome()
                .args(["moe", "export-expert", "--expert", d, "--model"])
                .arg(p.join("jeet/model"))
                .arg("--out")
                .arg(t.join(d)),
        );
    }
    let expert = |d: &str| {
        let dir = if d == "fr" { p.join("fr") } else { t.join(d) };
        format!("{d}={}", dir.display())
    };
    // A PLE with all four experts and the router: router.json is in the folder and
    // generation routes with it.
    let mut build = mome();
    build.args(["moe", "build"]);
    for d in ["en", "fr", "de", "py"] {
        build.arg("--expert").arg(expert(d));
    }
    build
        .arg("--router")
        .arg(&router)
        .arg("--out")
        .arg(t.join("ple"));
    run_ok(&mut build);
    assert!(t.join("ple/router.json").is_file());
    let out = stdout(&run_ok(&mut gen(
        &t.join("ple"),
        &["--show-routing", "--json"],
    )));
    assert_eq!(out.lines().count(), 2, "{out}");

    // eval with the router: routing accuracy per domain, JSON and Markdown.
    let json = stdout(&run_ok(
        mome()
            .args(["moe", "eval", "--json", "--max-sequences", "8", "--model"])
            .arg(t.join("ple"))
            .arg("--shards")
            .arg(p.join("shards"))
            .arg("--router")
            .arg(&router),
    ));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let r = &v["routing"];
    for d in ["en", "fr", "de", "py"] {
        let acc = r["domains"][d]["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc));
        assert_eq!(r["domains"][d]["sequences"], 8);
    }
    assert!(r["accuracy"].as_f64().unwrap() > 0.5, "{r}");
    assert_eq!(v["settings"][0]["routing_accuracy"], r["accuracy"]);
    let md = stdout(&run_ok(
        mome()
            .args(["moe", "eval", "--max-sequences", "4", "--model"])
            .arg(t.join("ple"))
            .arg("--shards")
            .arg(p.join("shards"))
            .arg("--router")
            .arg(&router),
    ));
    assert!(md.contains("Routing accuracy"), "{md}");

    // A router whose classes are not the experts: error before any work.
    let mut build = mome();
    build.args(["moe", "build"]);
    for d in ["en", "fr"] {
        build.arg("--expert").arg(expert(d));
    }
    let e = run_err(
        build
            .arg("--router")
            .arg(&router)
            .arg("--out")
            .arg(t.join("bad")),
    );
    assert!(
        e.contains("de") && e.contains("py") && e.contains("router"),
        "{e}"
    );
    assert!(!t.join("bad").exists());
    let mut build = mome();
    build.args(["moe", "build"]);
    for d in ["en", "fr"] {
        build.arg("--expert").arg(expert(d));
    }
    run_ok(build.arg("--out").arg(t.join("two")));
    let e = run_err(
        mome()
            .args(["moe", "eval", "--model"])
            .arg(t.join("two"))
            .arg("--shards")
            .arg(p.join("shards"))
            .arg("--router")
            .arg(&router),
    );
    assert!(e.contains("do not match the experts"), "{e}");
}

#[test]
fn moe_train_with_a_teacher_logs_kd_loss_and_alpha() {
    let p = prepared();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path()).unwrap();
    std::os::unix::fs::symlink(p.join("shards"), tmp.path().join("shards")).unwrap();
    let teacher = format!(
        "teacher = {{ dir = \"{}\" }}\n[distill]\nloss = \"forward_kl\"\ntemperature = 2.0\nstrategy = {{ kind = \"fixed\", alpha = 0.3 }}",
        p.join("fr").display()
    );
    let cfg = moe_config(tmp.path(), "kd", 3, &teacher);
    let out = stdout(&run_ok(
        mome()
            .args(["moe", "train", "--quiet", "--config"])
            .arg(&cfg),
    ));
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["distill"]["strategy"]["alpha"], 0.3);
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(tmp.path().join("kd/distill_metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    for l in &lines {
        assert_eq!(l["alpha"], 0.3);
        assert!((l["beta"].as_f64().unwrap() - 0.7).abs() < 1e-12);
        let kd = l["kd"].as_f64().unwrap();
        assert!(kd.is_finite() && kd > 0.0, "{l}");
        assert!(l["ce"].as_f64().unwrap() > 0.0);
    }
    // [distill] without a teacher is an error.
    let cfg = moe_config(tmp.path(), "kd2", 3, "[distill]\ntemperature = 2.0");
    let e = run_err(
        mome()
            .args(["moe", "train", "--quiet", "--config"])
            .arg(&cfg),
    );
    assert!(e.contains("teacher"), "{e}");
    // Expert placement: the CPU for every expert is the plain run; a device this
    // machine lacks is an error before any work.
    let cfg = moe_config(tmp.path(), "placed", 3, &teacher);
    let err = String::from_utf8(
        run_ok(
            mome()
                .args(["moe", "train", "--expert-devices", "cpu,cpu", "--config"])
                .arg(&cfg),
        )
        .stderr,
    )
    .unwrap();
    assert!(err.contains("expert placement: en→Cpu"), "{err}");
    let placed: Vec<serde_json::Value> =
        std::fs::read_to_string(tmp.path().join("placed/distill_metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert_eq!(
        placed, lines,
        "placing on the model's own device changes nothing"
    );
    let cfg = moe_config(tmp.path(), "placed2", 3, &teacher);
    let e = run_err(
        mome()
            .args([
                "moe",
                "train",
                "--quiet",
                "--expert-devices",
                "cuda:7",
                "--config",
            ])
            .arg(&cfg),
    );
    assert!(e.contains("cuda"), "{e}");
    assert!(!tmp.path().join("placed2").exists());
}

#[test]
fn forgetting_experiment_writes_report_json_and_png_and_resumes() {
    let p = prepared();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("f.toml");
    std::fs::write(
        &cfg,
        r#"out_dir = "unused"
device = "cpu"
[data]
shards = "does/not/exist"
batch_size = 4
[eval]
max_sequences = 4
[student]
n_layer = 1
n_embd = 32
n_head = 2
n_positions = 64
[forgetting]
domains = ["en", "fr", "de", "py"]
evals_per_phase = 2
[train]
max_steps = 8
schedule = "constant"
log_every = 2
checkpoint_every = 4
seed = 1
optimizer = { lr = 3e-3 }
"#,
    )
    .unwrap();
    let out = tmp.path().join("out");
    let cmd = || {
        let mut c = mome();
        c.args(["experiment", "forgetting", "--quiet", "--config"])
            .arg(&cfg)
            .arg("--out")
            .arg(&out)
            .arg("--shards")
            .arg(p.join("shards"))
            .arg("--tokenizer")
            .arg(p.join("tok.json"));
        c
    };
    run_ok(&mut cmd());
    for f in [
        "forgetting.json",
        "report.md",
        "forgetting.png",
        "complete.json",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("forgetting.json")).unwrap()).unwrap();
    let regimes: Vec<&str> = v["regimes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["regime"].as_str().unwrap())
        .collect();
    assert_eq!(regimes, ["sequential", "balanced", "moe"]);
    for r in v["regimes"].as_array().unwrap() {
        // step 0 + every step (2 steps per phase, 2 evaluations per phase)
        let steps: Vec<u64> = r["curve"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["step"].as_u64().unwrap())
            .collect();
        assert_eq!(steps, (0..=8).collect::<Vec<u64>>(), "{}", r["regime"]);
        assert_eq!(r["final_losses"].as_object().unwrap().len(), 4);
    }
    assert_eq!(v["sequential_phases"].as_array().unwrap().len(), 4);
    assert_eq!(v["sequential_phases"][1]["trained"], "fr");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("| sequential |") && md.contains("| 2 | fr | 4 |"),
        "{md}"
    );
    let png = std::fs::read(out.join("forgetting.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    // A rerun skips the finished regimes and rewrites the same numbers.
    run_ok(&mut cmd());
    let again: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("forgetting.json")).unwrap()).unwrap();
    assert_eq!(again["regimes"], v["regimes"]);
    // Other settings into the same folder: refused.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("seed = 1", "seed = 2");
    std::fs::write(&cfg, text).unwrap();
    let e = run_err(&mut cmd());
    assert!(e.contains("other settings"), "{e}");
}

/// Issue 20, case 8: `moe train` checks the experts against the shards (positions,
/// vocabulary) before it creates anything: the error names both, no run folder.
#[test]
fn moe_train_refuses_short_positions_before_creating_anything() {
    let p = prepared();
    let cfg = moe_config(p, "too-short", 2, "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("n_positions = 64", "n_positions = 32");
    std::fs::write(&cfg, text).unwrap();
    let o = mome()
        .args(["moe", "train", "--quiet", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("64-token sequences") && err.contains("32 positions"),
        "{err}"
    );
    assert!(
        !p.join("too-short").exists(),
        "a run folder was left: {err}"
    );
}
