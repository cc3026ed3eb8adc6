//! End-to-end tests of `mome router …` on the embedded demo corpus: training from
//! token shards, evaluation with token-length filters, calibration of the threshold
//! and the out-of-domain (Spanish / Italian) check. CPU only, the paper's tokenizer.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use mome_router::tokenizers::Tokenizer;

mod common;
use common::{mome, repo, run_ok};

fn tokenizer_path() -> PathBuf {
    repo().join("data/tokenizer/En_De_Fr_Py_Tokenizer/tokenizer.json")
}

fn seed_params() -> PathBuf {
    repo().join("../shared/seed/reference_router_params.json")
}

fn json_out(cmd: &mut Command) -> serde_json::Value {
    let out = run_ok(cmd);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{cmd:?}: stdout is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

const DOMAINS: [&str; 4] = ["de", "en", "fr", "py"];

/// The first `n` records of a demo JSONL file.
fn head_records(path: &Path, n: usize) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(n)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn write_jsonl(path: &Path, records: &[serde_json::Value]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let text: String = records.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).unwrap();
}

/// 256-token shards of part of the demo corpus (seed tokenizer) and a router trained
/// on them with `mome router train --shards`, made once.
fn trained() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for dom in DOMAINS {
            let recs = head_records(&repo().join(format!("data/demo/{dom}.jsonl")), 40);
            let (valid, train) = recs.split_at(4);
            write_jsonl(&d.join(format!("balanced/train/{dom}.jsonl")), train);
            write_jsonl(&d.join(format!("balanced/validation/{dom}.jsonl")), valid);
        }
        run_ok(
            mome()
                .args(["data", "encode", "--seq-len", "256", "--tokenizer"])
                .arg(tokenizer_path())
                .arg("--input")
                .arg(d.join("balanced"))
                .arg("--out")
                .arg(d.join("shards")),
        );
        let v = json_out(
            mome()
                .args(["router", "train", "--shards"])
                .arg(d.join("shards"))
                .args([
                    "--passage-lengths",
                    "16,64,256",
                    "--max-per-class",
                    "250",
                    "--out",
                ])
                .arg(d.join("router.json")),
        );
        assert_eq!(v["classes"], serde_json::json!(DOMAINS));
        dir
    })
    .path()
}

/// Labelled held-out passages (other books / other stdlib files than the training set).
fn heldout_file(dir: &Path, per_domain: usize) -> PathBuf {
    let mut recs = Vec::new();
    for dom in DOMAINS {
        for mut r in head_records(
            &repo().join(format!("data/demo/heldout/{dom}.jsonl")),
            per_domain,
        ) {
            r["label"] = dom.into();
            recs.push(r);
        }
    }
    let p = dir.join("heldout.jsonl");
    write_jsonl(&p, &recs);
    p
}

#[test]
fn router_train_from_shards_routes_heldout_text() {
    let d = trained();
    let router = d.join("router.json");
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(&router).unwrap()).unwrap();
    assert_eq!(file["format"], "mome-router");
    assert_eq!(file["version"], mome_router::FORMAT_VERSION);
    // The shards' tokenizer hash is recorded: the seed tokenizer is accepted ...
    let tmp = tempfile::tempdir().unwrap();
    let input = heldout_file(tmp.path(), 3);
    let rep = json_out(
        mome()
            .args([
                "router",
                "eval",
                "--json",
                "--max-tokens",
                "256",
                "--router",
            ])
            .arg(&router)
            .arg("--tokenizer")
            .arg(tokenizer_path())
            .arg("--input")
            .arg(&input),
    );
    let n = rep["n"].as_u64().unwrap();
    assert!(n >= 40, "too few held-out passages: {rep}");
    let f1 = rep["macro_f1"].as_f64().unwrap();
    eprintln!("held-out: n = {n}, macro F1 = {f1}");
    assert!(f1 >= 0.95, "held-out macro F1 {f1}: {rep}");
    for dom in DOMAINS {
        let r = rep["per_class"][dom]["recall"].as_f64().unwrap();
        assert!(r >= 0.9, "recall of {dom} = {r}: {rep}");
    }
    assert_eq!(rep["unknown_labels"], serde_json::json!([]));
    // ... and routes text through `mome route`.
    let out = run_ok(
        mome()
            .args(["route", "--router"])
            .arg(&router)
            .arg("--tokenizer")
            .arg(tokenizer_path())
            .arg("def main(argv):\n    for arg in argv:\n        print(arg)\n    return 0"),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["label"], "py", "{v}");
    // ... while a tokenizer of another hash is refused.
    let other = tmp.path().join("other_tokenizer.json");
    let mut t = std::fs::read_to_string(tokenizer_path()).unwrap();
    t.push('\n');
    std::fs::write(&other, t).unwrap();
    let out = mome()
        .args(["router", "eval", "--router"])
        .arg(&router)
        .arg("--tokenizer")
        .arg(&other)
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("tokenizer"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What `eval` must count: ids of the text (BOS/EOS dropped) cut into chunks of at
/// most `max` tokens, chunks shorter than `min` dropped.
fn expected_n(tok: &Tokenizer, texts: &[String], min: usize, max: Option<usize>) -> u64 {
    let mut n = 0;
    for t in texts {
        let ids: Vec<u32> = tok
            .encode(t.as_str(), true)
            .unwrap()
            .get_ids()
            .iter()
            .copied()
            .filter(|&i| i != 1 && i != 2)
            .collect();
        let len = ids.len();
        let max = max.unwrap_or(usize::MAX).min(len.max(1));
        let full = len / max;
        n += full as u64 * u64::from(max >= min);
        let rest = len % max;
        if rest > 0 && rest >= min {
            n += 1;
        }
    }
    n
}

#[test]
fn router_eval_min_and_max_tokens_filter_passages() {
    let tmp = tempfile::tempdir().unwrap();
    let router = tmp.path().join("seed.json");
    run_ok(
        mome()
            .args(["router", "import-sklearn", "--params"])
            .arg(seed_params())
            .arg("--out")
            .arg(&router),
    );
    // Short records of every domain, plus a few very short ones.
    let mut recs = Vec::new();
    for dom in DOMAINS {
        for r in head_records(&repo().join(format!("data/demo/heldout/{dom}.jsonl")), 2) {
            let text = r["text"].as_str().unwrap();
            let cut: String = text.chars().take(1500).collect();
            recs.push(serde_json::json!({"text": cut, "label": dom}));
        }
        recs.push(serde_json::json!({"text": "ok", "label": dom}));
    }
    let input = tmp.path().join("eval.jsonl");
    write_jsonl(&input, &recs);
    let texts: Vec<String> = recs
        .iter()
        .map(|r| r["text"].as_str().unwrap().to_string())
        .collect();
    let tok = Tokenizer::from_file(tokenizer_path()).unwrap();
    let eval = |extra: &[&str]| -> serde_json::Value {
        json_out(
            mome()
                .args(["router", "eval", "--json", "--router"])
                .arg(&router)
                .arg("--tokenizer")
                .arg(tokenizer_path())
                .arg("--input")
                .arg(&input)
                .args(extra),
        )
    };
    let n = |v: &serde_json::Value| v["n"].as_u64().unwrap();
    eprintln!("records: {}", recs.len());
    let whole = eval(&[]);
    assert_eq!(n(&whole), recs.len() as u64, "one passage per record");
    assert_eq!(n(&whole), expected_n(&tok, &texts, 1, None));
    let cut = eval(&["--max-tokens", "64"]);
    assert_eq!(n(&cut), expected_n(&tok, &texts, 1, Some(64)));
    assert!(n(&cut) > 3 * n(&whole), "{} vs {}", n(&cut), n(&whole));
    let full_only = eval(&["--min-tokens", "64", "--max-tokens", "64"]);
    assert_eq!(n(&full_only), expected_n(&tok, &texts, 64, Some(64)));
    assert!(n(&full_only) < n(&cut), "the short tails must be dropped");
    // The one-word records ("ok") are gone with any --min-tokens above their length.
    let no_tiny = eval(&["--min-tokens", "5"]);
    assert_eq!(n(&no_tiny), 8);
    assert_eq!(n(&no_tiny), expected_n(&tok, &texts, 5, None));
    let none = eval(&["--min-tokens", "100000"]);
    assert_eq!(n(&none), 0);
    // Support sums to n, the confusion matrix too.
    let support: u64 = cut["per_class"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["support"].as_u64().unwrap())
        .sum();
    assert_eq!(support, n(&cut));
}

#[test]
fn router_calibrate_and_ood_report() {
    let d = trained();
    let tmp = tempfile::tempdir().unwrap();
    let calibrated = tmp.path().join("calibrated.json");
    // In-domain validation split of the shards: 99% of its passages must be confident.
    let v = json_out(
        mome()
            .args(["router", "calibrate", "--router"])
            .arg(d.join("router.json"))
            .arg("--tokenizer")
            .arg(tokenizer_path())
            .arg("--shards")
            .arg(d.join("shards"))
            .args([
                "--split",
                "validation",
                "--passage-lengths",
                "16,64,256",
                "--target",
                "0.99",
                "--out",
            ])
            .arg(&calibrated),
    );
    let cal = &v["calibration"];
    eprintln!("calibration: {cal}");
    let thr = cal["threshold"].as_f64().unwrap();
    assert!(thr > 0.25 && thr <= 1.0, "{cal}");
    assert!(cal["confident_fraction"].as_f64().unwrap() >= 0.99, "{cal}");
    assert!(cal["n"].as_u64().unwrap() >= 50, "{cal}");
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&calibrated).unwrap()).unwrap();
    assert_eq!(file["threshold"].as_f64().unwrap(), thr);
    assert_eq!(file["calibration"]["target_confident"], 0.99);
    // Out-of-class text (Spanish, Italian): the report counts the not-confident ones,
    // and a threshold of 1 makes (almost) everything not confident.
    let ood = |router: &Path, extra: &[&str]| -> serde_json::Value {
        json_out(
            mome()
                .args(["router", "ood", "--router"])
                .arg(router)
                .arg("--tokenizer")
                .arg(tokenizer_path())
                .arg("--input")
                .arg(repo().join("data/ood/es.jsonl"))
                .arg("--input")
                .arg(repo().join("data/ood/it.jsonl"))
                .args(extra),
        )
    };
    let rep = ood(&calibrated, &[]);
    eprintln!(
        "not confident: short {}, long {}",
        rep["short"]["all"]["not_confident_fraction"],
        rep["long_1024"]["all"]["not_confident_fraction"]
    );
    for regime in ["short", "long_1024"] {
        let all = &rep[regime]["all"];
        let n = all["n"].as_u64().unwrap();
        assert!(n > 10, "{regime}: {all}");
        assert_eq!(
            n,
            rep[regime]["es"]["n"].as_u64().unwrap() + rep[regime]["it"]["n"].as_u64().unwrap()
        );
        let nc = all["not_confident"].as_u64().unwrap();
        let f = all["not_confident_fraction"].as_f64().unwrap();
        assert!((f - nc as f64 / n as f64).abs() < 1e-12);
        let confident: u64 = all["confident_predictions"]
            .as_object()
            .unwrap()
            .values()
            .map(|c| c.as_u64().unwrap())
            .sum();
        assert_eq!(confident + nc, n);
    }
    let strict = ood(&calibrated, &["--threshold", "1.0"]);
    assert!(
        strict["short"]["all"]["not_confident_fraction"]
            .as_f64()
            .unwrap()
            > 0.95,
        "{strict}"
    );
    let loose = ood(&calibrated, &["--threshold", "0.0"]);
    assert_eq!(
        loose["long_1024"]["all"]["not_confident"].as_u64().unwrap(),
        0,
        "{loose}"
    );
}

/// `mome route` with `input` on stdin (and `extra` flags).
fn route_stdin(router: &Path, input: &[u8], extra: &[&str]) -> std::process::Output {
    use std::io::Write;
    let mut child = mome()
        .args(["route", "--router"])
        .arg(router)
        .arg("--tokenizer")
        .arg(tokenizer_path())
        .args(extra)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn records(out: &std::process::Output) -> Vec<serde_json::Value> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Issue 20, case 1: `printf 'hello\ndef f(x):\nbad \xff here\nbonjour\n' | mome route`
/// printed 2 lines, then `error: stream did not contain valid UTF-8`.
#[test]
fn route_goes_on_after_an_invalid_utf8_line() {
    let tmp = tempfile::tempdir().unwrap();
    let router = tmp.path().join("seed.json");
    run_ok(
        mome()
            .args(["router", "import-sklearn", "--params"])
            .arg(seed_params())
            .arg("--out")
            .arg(&router),
    );
    let input = b"hello\ndef f(x):\nbad \xff here\nbonjour\n";
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    // Default: an error record for line 3, every other line routed.
    let out = route_stdin(&router, input, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let recs = records(&out);
    assert_eq!(recs.len(), 4, "{recs:?}");
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["line"], i + 1, "{r}");
    }
    assert_eq!(recs[2]["error"], "invalid-utf8", "{}", recs[2]);
    assert!(
        recs[2]["message"].as_str().unwrap().contains("byte 4"),
        "{}",
        recs[2]
    );
    for i in [0, 1, 3] {
        let p = recs[i]["probabilities"].as_object().unwrap();
        assert_eq!(p.len(), 4, "{}", recs[i]);
        let s: f64 = p.values().map(|v| v.as_f64().unwrap()).sum();
        approx::assert_abs_diff_eq!(s, 1.0, epsilon = 1e-9);
        assert!(recs[i]["label"].is_string());
    }
    assert!(stderr(&out).contains("1 error records"), "{}", stderr(&out));
    // The line after the bad one is routed as on its own.
    let alone = run_ok(
        mome()
            .args(["route", "--router"])
            .arg(&router)
            .arg("--tokenizer")
            .arg(tokenizer_path())
            .arg("bonjour"),
    );
    let alone: serde_json::Value = serde_json::from_slice(&alone.stdout).unwrap();
    assert_eq!(recs[3]["probabilities"], alone["probabilities"]);
    // lossy: line 3 routed from "bad \u{FFFD} here", flagged.
    let out = route_stdin(&router, input, &["--invalid-utf8", "lossy"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let recs = records(&out);
    assert_eq!(recs.len(), 4);
    assert_eq!(recs[2]["lossy"], true, "{}", recs[2]);
    assert!(recs[2]["label"].is_string());
    assert!(recs[1].get("lossy").is_none());
    // fail: stops at line 3, naming it, after the records of lines 1 and 2.
    let out = route_stdin(&router, input, &["--invalid-utf8", "fail"]);
    assert!(!out.status.success());
    assert_eq!(records(&out).len(), 2);
    assert!(
        stderr(&out).contains("stdin:3: invalid UTF-8 at byte 4"),
        "{}",
        stderr(&out)
    );
    // CRLF line ends and a line over --max-line-bytes.
    let out = route_stdin(
        &router,
        b"bonjour\r\nhello hello\r\n",
        &["--max-line-bytes", "8"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let recs = records(&out);
    assert_eq!(
        recs[0]["probabilities"], alone["probabilities"],
        "\\r dropped"
    );
    assert_eq!(recs[1]["error"], "too-long", "{}", recs[1]);
    // An unknown mode is refused by the argument parser.
    let err = common::run_err(
        mome()
            .args(["route", "--invalid-utf8", "skip", "--router"])
            .arg(&router)
            .arg("--tokenizer")
            .arg(tokenizer_path()),
    );
    assert!(err.contains("error-record"), "{err}");
}

/// Issue 20, case 4: a router file with 1e308 coefficients loaded and printed `null`
/// probabilities with exit 0.
#[test]
fn route_refuses_a_router_file_with_overflowing_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let router = tmp.path().join("seed.json");
    run_ok(
        mome()
            .args(["router", "import-sklearn", "--params"])
            .arg(seed_params())
            .arg("--out")
            .arg(&router),
    );
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&router).unwrap()).unwrap();
    v["classifier"]["model"]["linear"]["coef"][0][0] = 1e308.into();
    v["classifier"]["model"]["linear"]["coef"][1][0] = (-1e308).into();
    let bad = tmp.path().join("overflow.json");
    std::fs::write(&bad, serde_json::to_vec(&v).unwrap()).unwrap();
    let err = common::run_err(
        mome()
            .args(["route", "--router"])
            .arg(&bad)
            .arg("--tokenizer")
            .arg(tokenizer_path())
            .arg("hello"),
    );
    assert!(
        err.contains(&format!(
            "{}: invalid router: classifier.model.linear.coef[0][0] = 1e308",
            bad.display()
        )),
        "{err}"
    );
}
