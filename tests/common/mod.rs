//! Helpers shared by the end-to-end tests of the `mome` binary. Each file of tests/ is
//! its own crate and uses only some of them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `mome` binary under test, without the data-parallel variables of a launcher
/// that may be running the tests.
pub fn mome() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mome"));
    for v in [
        "MOME_RANK",
        "MOME_WORLD_SIZE",
        "MOME_RENDEZVOUS",
        "MOME_LAUNCHER_PID",
    ] {
        c.env_remove(v);
    }
    c
}

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `cmd`, which must succeed (its stdout and stderr are shown otherwise).
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn mome");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `cmd`, which must fail; returns its stderr.
pub fn run_err(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn mome");
    assert!(!out.status.success(), "{cmd:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The stdout of `o` as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// In `dir`: the demo corpus balanced with the paper's tokenizer (`balanced/`, 10%
/// validation), a `vocab`-token tokenizer trained on it (`tok.json`) and
/// `seq_len`-token shards (`shards/`).
pub fn prepare_demo(dir: &Path, vocab: usize, seq_len: usize) {
    let demo = repo().join("data/demo");
    let mut balance = mome();
    balance.args(["data", "balance", "--valid-fraction", "0.1"]);
    for dom in ["en", "fr", "de", "py"] {
        balance.arg("--domain").arg(format!(
            "{dom}={}",
            demo.join(format!("{dom}.jsonl")).display()
        ));
    }
    balance
        .arg("--tokenizer")
        .arg(repo().join("data/tokenizer/En_De_Fr_Py_Tokenizer/tokenizer.json"))
        .arg("--out")
        .arg(dir.join("balanced"));
    run_ok(&mut balance);
    run_ok(
        mome()
            .args([
                "tokenizer",
                "train",
                "--vocab-size",
                &vocab.to_string(),
                "--input",
            ])
            .arg(dir.join("balanced"))
            .arg("--out")
            .arg(dir.join("tok.json")),
    );
    run_ok(
        mome()
            .args([
                "data",
                "encode",
                "--seq-len",
                &seq_len.to_string(),
                "--tokenizer",
            ])
            .arg(dir.join("tok.json"))
            .arg("--input")
            .arg(dir.join("balanced"))
            .arg("--out")
            .arg(dir.join("shards")),
    );
}
