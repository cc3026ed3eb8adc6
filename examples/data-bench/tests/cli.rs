//! The `data-bench` binary: its flags (those of the former `mome data bench`, plus
//! `--reference-script`) and its errors, without Python or a venv.

use std::path::Path;
use std::process::{Command, Output};

fn data_bench(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_data-bench"))
        .current_dir(cwd)
        .args(args)
        .output()
        .expect("data-bench runs")
}

const TWO_DOMAINS: [&str; 6] = [
    "--domain",
    "en=en.jsonl",
    "--domain",
    "fr=fr.jsonl",
    "--tokenizer",
    "tokenizer.json",
];

#[test]
fn help_lists_the_flags_of_mome_data_bench() {
    let o = data_bench(Path::new(env!("CARGO_MANIFEST_DIR")), &["--help"]);
    assert!(o.status.success());
    let help = String::from_utf8_lossy(&o.stdout);
    for flag in [
        "--domain",
        "--tokenizer",
        "--repeat",
        "--python",
        "--venv",
        "--max-diff-percent",
        "--text-field",
        "--id-field",
        "--common-articles",
        "--json",
        "--reference-script",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    assert!(help.contains("scripts/reference_balance.py"), "{help}");
}

/// Outside the repository root the default script is not found: a clear error
/// naming the path, the current directory and `--reference-script`.
#[test]
fn missing_default_script_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = data_bench(dir.path(), &TWO_DOMAINS);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("reference script scripts/reference_balance.py not found"),
        "{err}"
    );
    assert!(err.contains("--reference-script"), "{err}");
    assert!(err.contains("repository root"), "{err}");
    let cwd = dir.path().canonicalize().unwrap();
    assert!(
        err.contains(&cwd.display().to_string()) || err.contains(&dir.path().display().to_string()),
        "{err}"
    );
    // Nothing was created in the current directory (no venv, no output).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn explicit_missing_script_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = TWO_DOMAINS.to_vec();
    args.extend(["--reference-script", "elsewhere/ref.py"]);
    let o = data_bench(dir.path(), &args);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("reference script elsewhere/ref.py not found"),
        "{err}"
    );
}

#[test]
fn malformed_domain_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let o = data_bench(
        dir.path(),
        &[
            "--domain",
            "en",
            "--domain",
            "fr=fr.jsonl",
            "--tokenizer",
            "t.json",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("expected NAME=PATH"), "{err}");
}
