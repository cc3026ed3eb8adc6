//! End-to-end tests of the `mome` binary on the embedded demo corpus: data →
//! tokenizer → shards → train → eval → generate, resuming a killed run, and bad input.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

mod common;
use common::{mome, prepare_demo, repo, run_err, run_ok};

/// Balanced demo data, a 1000-token tokenizer and 64-token shards, made once.
fn prepared() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        prepare_demo(d, 1000, 64);
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join("balanced/balance_report.json")).unwrap())
                .unwrap();
        assert!(report["spread_percent_reached"].as_f64().unwrap() <= 5.0);
        dir
    })
    .path()
}

fn write_config(dir: &Path, name: &str, extra_train: &str) -> PathBuf {
    let p = prepared();
    let cfg = format!(
        r#"out_dir = "{out}"
device = "cpu"
[model]
n_layer = 1
n_embd = 32
n_head = 2
n_positions = 64
[data]
shards = "{shards}"
tokenizer = "{tok}"
sampler = "mixed"
batch_size = 8
[eval]
max_sequences = 8
[train]
seed = 7
log_every = 1
{extra_train}
[train.optimizer]
lr = 3e-3
"#,
        out = dir.join(name).display(),
        shards = p.join("shards").display(),
        tok = p.join("tok.json").display(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, cfg).unwrap();
    path
}

fn metrics(run: &Path, kind: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == kind)
        .collect()
}

#[test]
fn train_lowers_validation_loss_then_eval_and_generate() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(
        tmp.path(),
        "run",
        "max_steps = 40\neval_every = 10\nwarmup_steps = 4",
    );
    run_ok(mome().arg("train").arg("--config").arg(&cfg).arg("--quiet"));
    let evals = metrics(&tmp.path().join("run"), "eval");
    assert!(evals.len() >= 2, "{evals:?}");
    let first = evals[0]["val_loss"].as_f64().unwrap();
    let last = evals.last().unwrap()["val_loss"].as_f64().unwrap();
    assert!(
        last < first - 0.2,
        "validation loss did not drop: {first} -> {last}"
    );
    assert!(last < (1000f64).ln(), "no better than uniform: {last}");

    let model = tmp.path().join("run/model");
    let out = run_ok(
        mome()
            .args(["eval", "--json", "--device", "cpu", "--model"])
            .arg(&model)
            .arg("--shards")
            .arg(prepared().join("shards")),
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for d in ["en", "fr", "de", "py"] {
        let l = report["domains"][d]["loss"].as_f64().unwrap();
        assert!(l.is_finite() && l > 0.0);
        approx::assert_relative_eq!(
            report["domains"][d]["perplexity"].as_f64().unwrap(),
            l.exp(),
            max_relative = 1e-9
        );
    }
    let out = run_ok(
        mome()
            .args([
                "generate",
                "--json",
                "--device",
                "cpu",
                "--max-new-tokens",
                "8",
                "--prompt",
                "Debian",
                "--model",
            ])
            .arg(&model)
            .arg("--tokenizer")
            .arg(prepared().join("tok.json")),
    );
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(line["new_tokens"].as_u64().unwrap() >= 1);
    assert!(line["text"].as_str().unwrap().starts_with("Debian"));
}

#[test]
fn killed_run_resumes_with_the_same_loss_sequence() {
    let tmp = tempfile::tempdir().unwrap();
    let train = "max_steps = 24\ncheckpoint_every = 4\nkeep_last = 2\nwarmup_steps = 2";
    let straight = write_config(tmp.path(), "straight", train);
    run_ok(
        mome()
            .arg("train")
            .arg("--config")
            .arg(&straight)
            .arg("--quiet"),
    );

    // Start the same run, kill it (SIGKILL) once a checkpoint exists, then resume.
    let killed = write_config(tmp.path(), "killed", train);
    let mut child = mome()
        .arg("train")
        .arg("--config")
        .arg(&killed)
        .arg("--quiet")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ckpts = tmp.path().join("killed/checkpoints");
    let started = Instant::now();
    loop {
        let n = std::fs::read_dir(&ckpts)
            .map(|r| {
                r.filter_map(|e| e.ok())
                    .filter(|e| {
                        e.file_name().to_string_lossy().starts_with("step-")
                            && !e.file_name().to_string_lossy().contains('.')
                    })
                    .count()
            })
            .unwrap_or(0);
        if n >= 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    let a = metrics(&tmp.path().join("straight"), "train");
    let before = metrics(&tmp.path().join("killed"), "train");
    assert!(
        !status.success() || before.len() < a.len(),
        "the run finished before it was killed"
    );
    run_ok(
        mome()
            .arg("train")
            .arg("--config")
            .arg(&killed)
            .arg("--resume")
            .arg("--quiet"),
    );
    let b = metrics(&tmp.path().join("killed"), "train");
    let losses = |v: &[serde_json::Value]| {
        v.iter()
            .map(|x| (x["step"].as_u64().unwrap(), x["loss"].as_f64().unwrap()))
            .collect::<Vec<_>>()
    };
    assert_eq!(losses(&a).len(), 24);
    assert_eq!(
        losses(&a),
        losses(&b),
        "resumed loss sequence differs from the uninterrupted run"
    );
}

#[test]
fn bad_input_gives_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    // unknown key, named
    let cfg = write_config(tmp.path(), "bad", "max_steps = 2\nlearning_rate = 1.0");
    let err = run_err(mome().arg("train").arg("--config").arg(&cfg));
    assert!(err.contains("learning_rate"), "{err}");
    // unknown model key, named
    let cfg = tmp.path().join("bad2.toml");
    std::fs::write(
        &cfg,
        std::fs::read_to_string(write_config(tmp.path(), "b2", "max_steps = 2"))
            .unwrap()
            .replace("n_layer = 1", "n_layers = 1"),
    )
    .unwrap();
    let err = run_err(mome().arg("train").arg("--config").arg(&cfg));
    assert!(err.contains("n_layers"), "{err}");
    // invalid hyperparameter, before any work
    let cfg = write_config(tmp.path(), "b3", "max_steps = 0");
    let err = run_err(mome().arg("train").arg("--config").arg(&cfg));
    assert!(err.contains("max_steps"), "{err}");
    assert!(
        !tmp.path().join("b3").exists(),
        "nothing is written for an invalid config"
    );
    // tokenizer that does not match the shards
    let cfg = tmp.path().join("bad4.toml");
    let seed_tok = repo().join("data/tokenizer/En_De_Fr_Py_Tokenizer/tokenizer.json");
    std::fs::write(
        &cfg,
        std::fs::read_to_string(write_config(tmp.path(), "b4", "max_steps = 2"))
            .unwrap()
            .replace(
                &prepared().join("tok.json").display().to_string(),
                &seed_tok.display().to_string(),
            ),
    )
    .unwrap();
    let err = run_err(mome().arg("train").arg("--config").arg(&cfg));
    assert!(err.to_lowercase().contains("tokenizer"), "{err}");
    // missing model folder
    let err = run_err(
        mome()
            .args(["eval", "--device", "cpu", "--model"])
            .arg(tmp.path().join("nope"))
            .arg("--shards")
            .arg(prepared().join("shards")),
    );
    assert!(err.contains("nope"), "{err}");
    // a model with a smaller vocabulary than the shards
    let small = tmp.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    let cfg = write_config(tmp.path(), "b5", "max_steps = 1");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("n_positions = 64", "n_positions = 64\nvocab_size = 500");
    std::fs::write(&cfg, text).unwrap();
    let err = run_err(mome().arg("train").arg("--config").arg(&cfg));
    assert!(err.contains("vocab"), "{err}");
    // bad device string
    let err = run_err(mome().args(["eval", "--device", "tpu", "--model", "x", "--shards", "y"]));
    assert!(err.contains("tpu"), "{err}");
}

/// `mome bench train`: every mode (LM, KD online, KD from a teacher cache, JEET and
/// MoE-CE) runs on the tiny CPU config and prints a sane JSON report with its
/// `--profile` phases.
#[test]
fn bench_train_every_mode_runs_on_cpu() {
    let cfg = repo().join("configs/bench/tiny-cpu.toml");
    for mode in ["lm", "kd-online", "kd-cache", "moe-jeet", "moe-ce"] {
        let out = run_ok(
            mome()
                .args(["bench", "train", "--config"])
                .arg(&cfg)
                .args(["--vocab-size", "512", "--mode", mode])
                .args([
                    "--warmup",
                    "1",
                    "--steps",
                    "2",
                    "--profile",
                    "--profile-steps",
                    "1",
                ])
                .arg("--json"),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let r: serde_json::Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("{mode}: not JSON ({e}): {stdout}"));
        assert_eq!(r["implementation"], "mome", "{r}");
        assert_eq!(r["mode"], mode, "{r}");
        assert_eq!(r["batch"], 4, "{r}");
        assert_eq!(r["seq_len"], 64, "{r}");
        assert_eq!(r["vocab_size"], 512, "{r}");
        for key in [
            "tokens_per_second",
            "step_seconds",
            "flops_per_token",
            "mfu",
        ] {
            let v = r[key].as_f64().unwrap_or(f64::NAN);
            assert!(v.is_finite() && v > 0.0, "{mode}: {key} = {v}");
        }
        assert!(r["final_loss"].as_f64().is_some_and(f64::is_finite), "{r}");
        let phases: Vec<&str> = r["profile"]["phases"]
            .as_array()
            .unwrap_or_else(|| panic!("{mode}: no profile: {r}"))
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        // The production step's phases (the same for every mode), plus the
        // teacher's forward of an online teacher.
        for phase in ["data", "forward", "loss", "backward", "optimizer"] {
            assert!(phases.contains(&phase), "{mode}: {phases:?}");
        }
        assert_eq!(
            phases.contains(&"teacher_forward"),
            mode == "kd-online",
            "{mode}: {phases:?}"
        );
        if let Some(common) = mode.strip_prefix("moe-").map(|a| a == "ce") {
            let moe = &r["moe"];
            assert_eq!(moe["common_expert"], common, "{r}");
            assert_eq!(moe["domains"].as_array().unwrap().len(), 4, "{r}");
            // the tiny expert shape: 2 layers, d = 64, vocab 512, 64 positions, tied head
            let stack = moe["stack_parameters"].as_i64().unwrap();
            let stacks = 4 + i64::from(common);
            assert_eq!(r["parameters"], stacks * stack + 512 * 64 + 64 * 64, "{r}");
            // FLOPs of the active stacks (1 or 2) and the head only
            let a = 1 + i64::from(common);
            let f = 6 * (a * stack + 512 * 64) + 12 * a * 2 * 64 * 64;
            assert_eq!(r["flops_per_token"].as_f64().unwrap(), f as f64, "{r}");
        } else {
            assert!(r["moe"].is_null(), "{r}");
        }
    }
}

/// A copy of the prepared balanced folder in `dir`.
fn balanced_copy(dir: &Path) -> PathBuf {
    let out = dir.join("balanced");
    for split in ["train", "validation"] {
        std::fs::create_dir_all(out.join(split)).unwrap();
        for d in ["en", "fr", "de", "py"] {
            let f = format!("{split}/{d}.jsonl");
            std::fs::copy(prepared().join("balanced").join(&f), out.join(&f)).unwrap();
        }
    }
    out
}

/// `mome data encode` and `mome tokenizer train` refuse an empty train file as
/// `mome data balance` does, naming the file and the domain, unless
/// `--allow-empty-domains`.
#[test]
fn empty_train_domains_are_refused_unless_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let balanced = balanced_copy(tmp.path());
    std::fs::write(balanced.join("train/en.jsonl"), "").unwrap();
    let tok = prepared().join("tok.json");
    let encode = |out: &str, allow: bool| {
        let mut c = mome();
        c.args(["data", "encode", "--seq-len", "64", "--tokenizer"])
            .arg(&tok)
            .arg("--input")
            .arg(&balanced)
            .arg("--out")
            .arg(tmp.path().join(out));
        if allow {
            c.arg("--allow-empty-domains");
        }
        c
    };
    let err = run_err(&mut encode("shards", false));
    assert!(
        err.contains("train/en.jsonl") && err.contains("domain `en`"),
        "{err}"
    );
    assert!(err.contains("--allow-empty-domains"), "{err}");
    assert!(!tmp.path().join("shards").exists());
    run_ok(&mut encode("shards", true));
    let stats = run_ok(
        mome()
            .args(["data", "stats"])
            .arg(tmp.path().join("shards")),
    );
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert!(
        stats["splits"]["train"]["domains"]["en"].is_null(),
        "{stats}"
    );
    assert!(
        stats["splits"]["train"]["domains"]["fr"].is_object(),
        "{stats}"
    );

    let train_tok = |allow: bool| {
        let mut c = mome();
        c.args(["tokenizer", "train", "--vocab-size", "300", "--input"])
            .arg(&balanced)
            .arg("--out")
            .arg(tmp.path().join("tok.json"));
        if allow {
            c.arg("--allow-empty-domains");
        }
        c
    };
    let err = run_err(&mut train_tok(false));
    assert!(
        err.contains("train/en.jsonl") && err.contains("domain `en`"),
        "{err}"
    );
    assert!(!tmp.path().join("tok.json").exists());
    run_ok(&mut train_tok(true));
    assert!(tmp.path().join("tok.json").is_file());
}

/// `mome data encode` reports invalid UTF-8 as `file:LINE`, with the cause once.
#[test]
fn encode_names_the_line_of_invalid_utf8() {
    let tmp = tempfile::tempdir().unwrap();
    let balanced = balanced_copy(tmp.path());
    let fr = balanced.join("train/fr.jsonl");
    let mut bytes = std::fs::read(&fr).unwrap();
    let third = bytes
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'\n')
        .nth(1)
        .unwrap()
        .0;
    // a bad byte inside the text of line 3
    bytes.splice(third + 12..third + 12, [0xff]);
    std::fs::write(&fr, bytes).unwrap();
    let err = run_err(
        mome()
            .args(["data", "encode", "--seq-len", "64", "--tokenizer"])
            .arg(prepared().join("tok.json"))
            .arg("--input")
            .arg(&balanced)
            .arg("--out")
            .arg(tmp.path().join("shards")),
    );
    assert!(err.contains("fr.jsonl:3: invalid UTF-8"), "{err}");
    assert_eq!(err.matches("invalid utf-8 sequence").count(), 1, "{err}");
}

/// An error's cause is printed once, after the file it concerns.
#[test]
fn error_causes_are_printed_once() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("missing-shards.toml");
    std::fs::write(
        &cfg,
        std::fs::read_to_string(write_config(tmp.path(), "m", "max_steps = 2"))
            .unwrap()
            .replace(
                &prepared().join("shards").display().to_string(),
                &tmp.path().join("no-shards").display().to_string(),
            ),
    )
    .unwrap();
    let err = run_err(mome().arg("train").arg("--config").arg(&cfg));
    assert!(err.contains("manifest.json"), "{err}");
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
    let err = run_err(
        mome()
            .args(["eval", "--device", "cpu", "--model"])
            .arg(tmp.path().join("nope"))
            .arg("--shards")
            .arg(prepared().join("shards")),
    );
    assert!(err.contains("config.json: "), "{err}");
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
    // a config.json that is not JSON: the file, then serde's message once
    let model = tmp.path().join("badcfg");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(
        model.join("config.json"),
        "{\"n_embd\": 32,\n \"n_head\": }",
    )
    .unwrap();
    let err = run_err(
        mome()
            .args(["eval", "--device", "cpu", "--model"])
            .arg(&model)
            .arg("--shards")
            .arg(prepared().join("shards")),
    );
    assert!(err.contains("badcfg/config.json"), "{err}");
    assert_eq!(err.matches("column").count(), 1, "{err}");
}

/// `mome eval` and `mome generate` on a model with a NaN weight fail naming the
/// tensor, instead of a table of NaN losses or "no probability mass".
#[test]
fn nan_weights_are_refused_naming_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = tmp.path().join("nan-model");
    {
        let cfg = mome_experts::Gpt2Config {
            vocab_size: 1000,
            n_positions: 64,
            n_embd: 32,
            n_layer: 1,
            n_head: 2,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
            ..mome_experts::Gpt2Config::default()
        };
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let model = mome_experts::Gpt2LmHeadModel::new(&vs.root(), &cfg).unwrap();
        let (_, w) = model
            .named_parameters()
            .into_iter()
            .find(|(n, _)| n == "transformer.h.0.ln_2.weight")
            .unwrap();
        tch::no_grad(|| {
            let _ = w.get(3).fill_(f64::NAN);
        });
        model.save_pretrained(&model_dir).unwrap();
    }
    let err = run_err(
        mome()
            .args(["eval", "--device", "cpu", "--model"])
            .arg(&model_dir)
            .arg("--shards")
            .arg(prepared().join("shards")),
    );
    assert!(err.contains("transformer.h.0.ln_2.weight"), "{err}");
    assert!(err.contains("non-finite"), "{err}");
    let err = run_err(
        mome()
            .args([
                "generate", "--device", "cpu", "--prompt", "Debian", "--model",
            ])
            .arg(&model_dir)
            .arg("--tokenizer")
            .arg(prepared().join("tok.json")),
    );
    assert!(err.contains("transformer.h.0.ln_2.weight"), "{err}");
}
