//! `mome launch` on the CPU: data-parallel ranks stood in for by the hidden `mome
//! dist-selftest` (a rank that fails makes the launcher stop the others and name it;
//! without the launcher, the ranks' watchdog stops a rank whose peer died), the jobs
//! mode, and `mome train` under the launcher (one rank: the plain run's losses; two
//! ranks without NCCL: a clear error). With `--features nccl` the train test runs on
//! `cuda` (one GPU, through NCCL).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

mod common;
use common::prepare_demo;

fn mome() -> Command {
    let mut c = common::mome();
    // Ranks and jobs get GPUs 0..N.
    c.env_remove("CUDA_VISIBLE_DEVICES");
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn run(cmd: &mut Command) -> (Output, Duration) {
    let t = Instant::now();
    let out = cmd.output().expect("spawn mome");
    (out, t.elapsed())
}

fn selftest(gpus: &str, extra: &[&str]) -> Command {
    let mut c = mome();
    c.args([
        "launch",
        "--gpus",
        gpus,
        "--grace-s",
        "5",
        "--",
        "dist-selftest",
    ])
    .args(extra);
    c
}

#[test]
fn a_failing_rank_stops_the_others_and_is_named() {
    let (out, took) = run(&mut selftest(
        "2",
        &["--fail-rank", "1", "--exit-code", "3", "--run-ms", "120000"],
    ));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert!(
        took < Duration::from_secs(20),
        "took {took:?}: slower than expected"
    );
    assert!(
        stderr.contains("lost rank 1: it exited with status 3"),
        "{stderr}"
    );
    assert!(
        stderr.contains("[rank 1] rank 1: failing on purpose"),
        "{stderr}"
    );
    assert!(stdout.contains("[rank 0] rank 0 of 2 started"), "{stdout}");
    // Rank 0 was stopped (SIGTERM) or stopped itself (its watchdog): never done.
    assert!(!stdout.contains("rank 0 done"), "{stdout}");
}

#[test]
fn a_killed_rank_is_named_with_its_signal() {
    let (out, took) = run(&mut selftest(
        "3",
        &["--fail-rank", "2", "--abort", "--run-ms", "120000"],
    ));
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(
        stderr.contains("lost rank 2: it was killed by signal 6 (SIGABRT)"),
        "{stderr}"
    );
}

#[test]
fn ranks_share_the_rendezvous_and_finish() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = mome();
    c.args(["launch", "--gpus", "2", "--rendezvous"])
        .arg(tmp.path())
        .args(["--", "dist-selftest", "--run-ms", "300"]);
    let (out, _) = run(&mut c);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let token = |rank: usize| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("[rank {rank}] rank {rank}: token ")))
            .unwrap_or_else(|| panic!("no token of rank {rank}: {stdout}"))
            .to_string()
    };
    assert_eq!(token(0), token(1));
    assert_eq!(token(0).len(), 32);
    assert!(stdout.contains("[rank 0] rank 0 done"), "{stdout}");
    assert!(stdout.contains("[rank 1] rank 1 done"), "{stdout}");
    assert!(stderr.contains("all 2 rank(s) finished"), "{stderr}");
    // The launch's rendezvous folder is removed.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

/// Without the launcher: rank 1 dies, rank 0's watchdog ends rank 0 with an error
/// naming rank 1 (no hang).
#[test]
fn the_watchdog_stops_a_rank_whose_peer_died() {
    let tmp = tempfile::tempdir().unwrap();
    let spawn = |rank: &str| {
        mome()
            .args([
                "dist-selftest",
                "--fail-rank",
                "1",
                "--fail-after-ms",
                "500",
                "--run-ms",
                "120000",
            ])
            .env("MOME_WORLD_SIZE", "2")
            .env("MOME_RANK", rank)
            .env("MOME_RENDEZVOUS", tmp.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let t = Instant::now();
    let r0 = spawn("0");
    let r1 = spawn("1");
    let o1 = r1.wait_with_output().unwrap();
    assert_eq!(o1.status.code(), Some(3));
    let mut r0 = r0;
    let status = loop {
        if let Some(s) = r0.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(60) {
            let _ = r0.kill();
            panic!("rank 0 still running 60 s after its peer died");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let o0 = r0.wait_with_output().unwrap();
    let stderr = text(&o0.stderr);
    assert_eq!(status.code(), Some(86), "{stderr}");
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    assert!(stderr.contains("rank 0: lost rank 1"), "{stderr}");
    assert!(stderr.contains("ended without finishing"), "{stderr}");
}

#[test]
fn jobs_run_one_per_slot_and_failures_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let locks = tmp.path().join("locks");
    std::fs::create_dir(&locks).unwrap();
    // Each job holds its GPU's lock folder while it runs: a second job on the same
    // GPU at the same time would fail to make it.
    let hold = format!(
        "mkdir {l}/gpu-$CUDA_VISIBLE_DEVICES || exit 9; sleep 0.3; rmdir {l}/gpu-$CUDA_VISIBLE_DEVICES",
        l = locks.display()
    );
    let jobs = format!(
        "# PLE students, one per line\n{hold}; echo first on $CUDA_VISIBLE_DEVICES\n\n{hold}; exit 3\n{hold}; mome --version\n{hold}; echo fourth\n{hold}\n"
    );
    let file = tmp.path().join("jobs.txt");
    std::fs::write(&file, jobs).unwrap();
    let (out, _) = run(mome().args(["launch", "--gpus", "2", "--jobs"]).arg(&file));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("1 of 5 job(s) failed: job 1 (exited with status 3)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("[job 2] mome "),
        "`mome` is this binary: {stderr}"
    );
    assert!(stderr.contains("[job 3] fourth"), "{stderr}");
    // The jobs' output goes to stderr: stdout is the JSON report alone.
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["succeeded"], 4);
    assert_eq!(report["failed"], 1);
    let jobs = report["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 5);
    for (i, j) in jobs.iter().enumerate() {
        assert_eq!(j["job"], i);
        assert!(j["gpu"] == "0" || j["gpu"] == "1", "{j}");
        assert_eq!(j["ok"], i != 1, "{j}");
    }
    assert_eq!(jobs[1]["status"], "exited with status 3");
    let first = stderr.lines().find(|l| l.starts_with("[job 0] first on "));
    assert_eq!(first, Some("[job 0] first on 0"), "{stderr}");
}

#[test]
fn launch_arguments_are_validated() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("jobs.txt");
    std::fs::write(&file, "# nothing\n\n").unwrap();
    for (args, needle) in [
        (
            vec!["launch", "--gpus", "0", "--", "train"],
            "--gpus must be > 0",
        ),
        (vec!["launch", "--gpus", "2"], "nothing to launch"),
        (
            vec!["launch", "--gpus", "1", "--jobs", file.to_str().unwrap()],
            "no jobs",
        ),
        (
            vec![
                "launch",
                "--gpus",
                "1",
                "--jobs",
                file.to_str().unwrap(),
                "--",
                "train",
            ],
            "not both",
        ),
    ] {
        let (out, _) = run(mome().args(&args));
        assert!(!out.status.success(), "{args:?}");
        let e = text(&out.stderr);
        assert!(e.contains(needle), "{args:?}: {e}");
    }
    let (out, _) = run(mome().env("CUDA_VISIBLE_DEVICES", "3").args([
        "launch",
        "--gpus",
        "2",
        "--",
        "dist-selftest",
    ]));
    assert!(text(&out.stderr).contains("lists 1 device(s); --gpus 2 needs 2"));
}

// ---------------------------------------------------------------------------------
// `mome train` under the launcher.

/// Token shards of the demo corpus (1000-token tokenizer, 64-token sequences), once.
fn shards() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        prepare_demo(dir.path(), 1000, 64);
        dir
    })
    .path()
}

fn train_config(dir: &Path, name: &str) -> PathBuf {
    let device = if cfg!(feature = "nccl") {
        "cuda"
    } else {
        "cpu"
    };
    let cfg = format!(
        r#"out_dir = "{out}"
device = "{device}"
[model]
n_layer = 1
n_embd = 32
n_head = 2
n_positions = 64
resid_pdrop = 0.0
embd_pdrop = 0.0
attn_pdrop = 0.0
[data]
shards = "{shards}"
sampler = "mixed"
batch_size = 8
[eval]
max_sequences = 8
[train]
seed = 7
log_every = 1
max_steps = 12
grad_accum = 2
clip_grad_norm = 1.0
[train.optimizer]
lr = 3e-3
"#,
        out = dir.join(name).display(),
        shards = shards().join("shards").display(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, cfg).unwrap();
    path
}

fn train_losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect()
}

/// `mome launch --gpus 1 -- train` trains exactly like `mome train` (CPU: the plain
/// path; with `--features nccl`: on cuda through a one-rank NCCL communicator).
#[test]
fn one_rank_launch_trains_like_the_plain_run() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = train_config(tmp.path(), "plain");
    let launched = train_config(tmp.path(), "launched");
    let (o, _) = run(mome().args(["train", "--quiet", "--config"]).arg(&plain));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let (o, _) = run(mome()
        .args([
            "launch", "--gpus", "1", "--", "train", "--quiet", "--config",
        ])
        .arg(&launched));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("[rank 0] "), "{}", text(&o.stdout));
    let (a, b) = (
        train_losses(&tmp.path().join("plain")),
        train_losses(&tmp.path().join("launched")),
    );
    assert_eq!(a.len(), 12);
    if cfg!(feature = "nccl") {
        // Identical arithmetic on cuda: equal unless a CUDA kernel is
        // non-deterministic.
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-6 * x.abs().max(1.0), "{a:?} vs {b:?}");
        }
    } else {
        assert_eq!(a, b);
    }
    assert!(tmp.path().join("launched/model/config.json").is_file());
}

/// Two ranks: a batch that does not split is refused before training; without the
/// `nccl` feature the ranks fail with a message saying how to build it.
#[test]
fn two_rank_train_errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = train_config(tmp.path(), "three");
    let (o, took) = run(mome()
        .args([
            "launch", "--gpus", "3", "--", "train", "--quiet", "--config",
        ])
        .arg(&cfg));
    let e = text(&o.stderr);
    assert!(!o.status.success());
    assert!(took < Duration::from_secs(60));
    assert!(
        e.contains("batch_size = 8 cannot be split over 3 ranks"),
        "{e}"
    );
    assert!(e.contains("lost rank "), "{e}");
    if !cfg!(feature = "nccl") {
        let cfg = train_config(tmp.path(), "two");
        let (o, _) = run(mome()
            .args([
                "launch", "--gpus", "2", "--", "train", "--quiet", "--config",
            ])
            .arg(&cfg));
        let e = text(&o.stderr);
        assert!(!o.status.success());
        assert!(e.contains("built without the `nccl` feature"), "{e}");
    }
}
