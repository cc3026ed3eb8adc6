//! Balancing throughput against the method's Python tool (the `data-bench` binary).
//!
//! [`run_bench`] balances one corpus twice in the same run:
//! - **ours**: [`mome_data::balance::balance`] with [`Strategy::Reference`] into a
//!   temp folder, counting with the given `tokenizer.json` through
//!   [`mome_data::count::TokenCounter`] (exactly `encode(text, false).len()`,
//!   parallel, rayon);
//! - **reference**: `scripts/reference_balance.py` of the repository (read at run
//!   time from [`BenchConfig::reference_script`], by default
//!   [`DEFAULT_REFERENCE_SCRIPT`] relative to the current directory) run by the
//!   Python of a cached virtual environment, counting with tiktoken's GPT-2 encoding
//!   one article at a time, as the research tool does.
//!
//! Each side reports tokens counted (by its own counter), wall seconds, tokens/s
//! and peak resident memory: ours from `/proc/self/status` `VmHWM` after resetting
//! it through `/proc/self/clear_refs` (Linux; [`mome_data::bench`]), the child's
//! from its own `VmHWM` (`resource.getrusage`'s `ru_maxrss` is inherited across
//! fork+exec on Linux, so in a child of this process it would report our size).
//! Both sides read the same bytes, so [`BenchReport::speedup_wall`] (reference
//! seconds / our seconds) compares the same work;
//! [`BenchReport::ratio_tokens_per_second`] compares each side's own token counts
//! (the two tokenizers split text differently).
//!
//! The venv lives in `$MOME_CACHE/bench-venv` (default `~/.cache/mome/bench-venv`)
//! and is created once: `python -m venv`, then `pip install tiktoken` and
//! `pip install --no-deps openai-whisper==20250625`, which ships the GPT-2 ranks
//! file `whisper/assets/gpt2.tiktoken` (byte-identical to tiktoken's `r50k_base`,
//! checked by hash), so nothing is downloaded from outside PyPI at run time.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use mome_data::balance::{self, BalanceConfig, DomainSpec, Strategy};
use mome_data::bench::{current_rss_bytes, fastest, mb_per_second, peak_rss_bytes, reset_peak_rss};
use mome_data::corpus::CorpusSpec;
use mome_data::tokenizer::load_tokenizer;
use serde::{Deserialize, Serialize};

/// Where the reference script is looked for by default, relative to the current
/// directory (the repository root).
pub const DEFAULT_REFERENCE_SCRIPT: &str = "scripts/reference_balance.py";

/// What the venv gets; a change re-runs the installation.
pub const VENV_REQUIREMENTS: &[&[&str]] =
    &[&["tiktoken"], &["--no-deps", "openai-whisper==20250625"]];

const READY_STAMP: &str = ".mome-bench-ready";

/// Errors of the bench.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Balancing (ours) or loading the tokenizer failed.
    #[error(transparent)]
    Data(#[from] mome_data::Error),
    /// The reference script is not where it was looked for.
    #[error(
        "reference script {} not found (current directory: {}): run data-bench from the \
         repository root, or pass --reference-script PATH (the repository's \
         scripts/reference_balance.py)",
        path.display(),
        cwd.display()
    )]
    ReferenceScriptMissing {
        /// The path looked at.
        path: PathBuf,
        /// The current directory it is relative to.
        cwd: PathBuf,
    },
    /// The Python interpreter could not be started.
    #[error("cannot run `{python}`: {source}; install Python 3 (with the venv module) or pass --python PATH")]
    PythonMissing {
        /// The interpreter asked for.
        python: String,
        /// Why it did not start.
        source: std::io::Error,
    },
    /// A setup step (venv, pip) failed.
    #[error("{step} failed ({status}): {stderr}")]
    Setup {
        /// The command that failed.
        step: String,
        /// Its exit status.
        status: String,
        /// The end of its standard error.
        stderr: String,
    },
    /// The reference script failed or printed no report.
    #[error("reference script failed ({status}): {stderr}")]
    Reference {
        /// Its exit status.
        status: String,
        /// The end of its standard error / the unparsable output.
        stderr: String,
    },
    /// A file operation of the bench failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Invalid settings.
    #[error("invalid bench settings: {0}")]
    Config(String),
}

/// Result type of this crate.
pub type BenchResult<T> = std::result::Result<T, BenchError>;

/// Settings of [`run_bench`].
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// `(name, JSONL files)` per domain, in order.
    pub domains: Vec<(String, Vec<PathBuf>)>,
    /// Tokenizer used by our balancing.
    pub tokenizer_path: PathBuf,
    /// Allowed spread in percent (both sides).
    pub max_diff_percent: f64,
    /// Text field of the JSONL records.
    pub text_field: String,
    /// Id field of the JSONL records (needed with `common_articles`).
    pub id_field: Option<String>,
    /// Align the domains by id (the method's `--common_articles`).
    pub common_articles: bool,
    /// Runs of each side; the report keeps the fastest and lists all.
    pub repeat: usize,
    /// Python interpreter that creates the venv.
    pub python: String,
    /// Venv folder; `None` = [`default_venv_dir`].
    pub venv_dir: Option<PathBuf>,
    /// The reference script (`scripts/reference_balance.py` of the repository),
    /// relative to the current directory unless absolute.
    pub reference_script: PathBuf,
}

/// One side's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SideStats {
    /// What counts the tokens.
    pub counter: String,
    /// Records read.
    pub records: u64,
    /// Records kept.
    pub records_kept: u64,
    /// Tokens counted (by this side's counter).
    pub tokens_counted: u64,
    /// Wall seconds of the fastest run (whole balancing: load, count, select, write).
    pub seconds: f64,
    /// Wall seconds of every run.
    pub seconds_all: Vec<f64>,
    /// `tokens_counted / seconds`.
    pub tokens_per_second: f64,
    /// Input bytes / seconds, in MB/s (10^6 bytes): the same work on both sides.
    pub mb_per_second: f64,
    /// Peak resident memory in bytes over the runs (`None`: not measurable here).
    pub peak_rss_bytes: Option<u64>,
    /// Resident memory just before the runs (ours: the process with the tokenizer
    /// loaded; the reference: not measured, `None`).
    pub rss_before_bytes: Option<u64>,
}

/// Result of [`run_bench`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// Input bytes over all domains.
    pub input_bytes: u64,
    /// Logical CPUs available to this process.
    pub cpus: usize,
    /// mome's balancing.
    pub ours: SideStats,
    /// The Python reference.
    pub reference: SideStats,
    /// `ours.tokens_per_second / reference.tokens_per_second`.
    pub ratio_tokens_per_second: f64,
    /// `reference.seconds / ours.seconds` (same input bytes).
    pub speedup_wall: f64,
    /// Python version and tiktoken version of the reference.
    pub reference_env: String,
}

/// `$MOME_CACHE/bench-venv`, else `$HOME/.cache/mome/bench-venv`, else a folder in
/// the system temp dir.
pub fn default_venv_dir() -> PathBuf {
    if let Some(c) = std::env::var_os("MOME_CACHE").filter(|c| !c.is_empty()) {
        return PathBuf::from(c).join("bench-venv");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => PathBuf::from(h)
            .join(".cache")
            .join("mome")
            .join("bench-venv"),
        None => std::env::temp_dir().join("mome-bench-venv"),
    }
}

/// Checks that the reference script exists (a file, relative to the current
/// directory unless absolute) and returns its absolute path; otherwise a
/// [`BenchError::ReferenceScriptMissing`] that says where it was looked for.
pub fn locate_reference_script(path: &Path) -> BenchResult<PathBuf> {
    let cwd = std::env::current_dir().unwrap_or_default();
    let full = if path.is_absolute() {
        path.to_path_buf()
    } else {
        cwd.join(path)
    };
    if !full.is_file() {
        return Err(BenchError::ReferenceScriptMissing {
            path: path.to_path_buf(),
            cwd,
        });
    }
    Ok(full)
}

fn tail(bytes: &[u8], n: usize) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = s.trim();
    let start = s.len().saturating_sub(n);
    let start = (start..=s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    s[start..].to_string()
}

fn run_step(step: &str, cmd: &mut Command, python: &str) -> BenchResult<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BenchError::PythonMissing {
            python: python.to_string(),
            source: e,
        })?;
    if !out.status.success() {
        return Err(BenchError::Setup {
            step: step.to_string(),
            status: out.status.to_string(),
            stderr: tail(&out.stderr, 2000),
        });
    }
    Ok(())
}

fn stamp_text() -> String {
    VENV_REQUIREMENTS
        .iter()
        .map(|r| r.join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The venv's interpreter.
pub fn venv_python(dir: &Path) -> PathBuf {
    if cfg!(windows) {
        dir.join("Scripts").join("python.exe")
    } else {
        dir.join("bin").join("python")
    }
}

/// Creates (once) the reference's venv in `dir` with `python` and returns its
/// interpreter. Idempotent: a complete venv (stamp file matching
/// [`VENV_REQUIREMENTS`]) is reused as is; an incomplete one is rebuilt.
pub fn ensure_venv(python: &str, dir: &Path) -> BenchResult<PathBuf> {
    let py = venv_python(dir);
    let stamp = dir.join(READY_STAMP);
    if py.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&stamp_text()) {
        return Ok(py);
    }
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| BenchError::Io {
            path: parent.to_path_buf(),
            source: e,
        })?;
    }
    let _ = std::fs::remove_file(&stamp);
    eprintln!(
        "bench: creating the reference venv in {} (python -m venv, pip install tiktoken openai-whisper)",
        dir.display()
    );
    run_step(
        &format!("`{python} -m venv {}`", dir.display()),
        Command::new(python)
            .arg("-m")
            .arg("venv")
            .arg("--clear")
            .arg(dir),
        python,
    )?;
    let pys = py.display().to_string();
    for req in VENV_REQUIREMENTS {
        run_step(
            &format!("`pip install {}` (needs PyPI)", req.join(" ")),
            Command::new(&py)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .args(*req),
            &pys,
        )?;
    }
    std::fs::write(&stamp, stamp_text()).map_err(|e| BenchError::Io {
        path: stamp.clone(),
        source: e,
    })?;
    Ok(py)
}

/// The JSON line the reference script prints.
#[derive(Debug, Clone, Deserialize)]
pub struct ReferenceLine {
    /// What counted.
    pub counter: String,
    /// tiktoken's version.
    #[serde(default)]
    pub tiktoken_version: String,
    /// Python's version.
    #[serde(default)]
    pub python: String,
    /// Records read.
    pub records: u64,
    /// Records kept.
    pub records_kept: u64,
    /// GPT-2 tokens counted.
    pub tokens_counted: u64,
    /// Wall seconds inside the script (after interpreter start-up).
    pub seconds: f64,
    /// Peak RSS of the script (`VmHWM`).
    pub peak_rss_bytes: u64,
}

/// Parses the last JSON line of the script's standard output.
pub fn parse_reference_output(stdout: &str) -> Option<ReferenceLine> {
    stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
}

/// Runs the reference script once with `python` on `cfg`'s corpus into `out`.
pub fn run_reference(
    python: &Path,
    script: &Path,
    cfg: &BenchConfig,
    out: &Path,
) -> BenchResult<(ReferenceLine, f64)> {
    let mut cmd = Command::new(python);
    cmd.arg(script).arg("--out").arg(out);
    cmd.arg("--max-diff-percent")
        .arg(cfg.max_diff_percent.to_string());
    cmd.arg("--text-field").arg(&cfg.text_field);
    if let Some(id) = &cfg.id_field {
        cmd.arg("--id-field").arg(id);
    }
    if cfg.common_articles {
        cmd.arg("--common-articles");
    }
    for (name, paths) in &cfg.domains {
        for p in paths {
            let mut a = std::ffi::OsString::from(format!("{name}="));
            a.push(p.as_os_str());
            cmd.arg("--domain").arg(a);
        }
    }
    let t = Instant::now();
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BenchError::PythonMissing {
            python: python.display().to_string(),
            source: e,
        })?;
    let wall = t.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&o.stdout);
    match (o.status.success(), parse_reference_output(&stdout)) {
        (true, Some(line)) => Ok((line, wall)),
        _ => Err(BenchError::Reference {
            status: o.status.to_string(),
            stderr: format!("{} {}", tail(&o.stderr, 2000), tail(&o.stdout, 500)),
        }),
    }
}

fn balance_config(cfg: &BenchConfig) -> BalanceConfig {
    BalanceConfig {
        domains: cfg
            .domains
            .iter()
            .map(|(name, paths)| DomainSpec {
                name: name.clone(),
                train: CorpusSpec {
                    paths: paths.clone(),
                    text_field: cfg.text_field.clone(),
                    id_field: cfg.id_field.clone(),
                    ..CorpusSpec::default()
                },
                validation: None,
            })
            .collect(),
        max_diff_percent: cfg.max_diff_percent,
        common_articles: cfg.common_articles,
        strategy: Some(Strategy::Reference),
        ..BalanceConfig::default()
    }
}

fn input_bytes(cfg: &BenchConfig) -> BenchResult<u64> {
    let mut n = 0;
    for (_, paths) in &cfg.domains {
        for p in paths {
            n += std::fs::metadata(p)
                .map_err(|e| BenchError::Io {
                    path: p.clone(),
                    source: e,
                })?
                .len();
        }
    }
    Ok(n)
}

/// Runs both sides `cfg.repeat` times on the same corpus (alternating, ours
/// first) and reports the fastest run of each. The settings and the reference
/// script are checked before the tokenizer is loaded or the venv created. Temp
/// outputs are removed.
pub fn run_bench(cfg: &BenchConfig) -> BenchResult<BenchReport> {
    if cfg.domains.len() < 2 {
        return Err(BenchError::Config("give at least two domains".into()));
    }
    if cfg.repeat == 0 {
        return Err(BenchError::Config("repeat must be >= 1".into()));
    }
    let script = locate_reference_script(&cfg.reference_script)?;
    let bcfg = balance_config(cfg);
    bcfg.validate()?;
    let bytes = input_bytes(cfg)?;
    let (tokenizer, _) = load_tokenizer(&cfg.tokenizer_path)?;
    let venv = cfg.venv_dir.clone().unwrap_or_else(default_venv_dir);
    let py = ensure_venv(&cfg.python, &venv)?;
    let tmp = tempdir_in_system()?;

    let mut ours_secs = Vec::new();
    let mut ref_secs = Vec::new();
    let mut ours_peak: Option<u64> = None;
    let rss_before = current_rss_bytes();
    let mut ours_report = None;
    let mut ref_line: Option<ReferenceLine> = None;
    for i in 0..cfg.repeat {
        let out = tmp.path.join(format!("ours-{i}"));
        let reset = reset_peak_rss();
        let t = Instant::now();
        let rep = balance::balance(&bcfg, &tokenizer, &out)?;
        ours_secs.push(t.elapsed().as_secs_f64());
        if reset {
            ours_peak = ours_peak.max(peak_rss_bytes());
        }
        ours_report = Some(rep);
        let _ = std::fs::remove_dir_all(&out);

        let rout = tmp.path.join(format!("ref-{i}"));
        let (line, _wall) = run_reference(&py, &script, cfg, &rout)?;
        ref_secs.push(line.seconds);
        let peak = ref_line.as_ref().map_or(line.peak_rss_bytes, |l| {
            l.peak_rss_bytes.max(line.peak_rss_bytes)
        });
        ref_line = Some(ReferenceLine {
            peak_rss_bytes: peak,
            ..line
        });
        let _ = std::fs::remove_dir_all(&rout);
    }
    let (Some(rep), Some(rl)) = (ours_report, ref_line) else {
        return Err(BenchError::Config("no run".into()));
    };
    let (os, rs) = (fastest(&ours_secs), fastest(&ref_secs));
    let ours_tokens: u64 = rep.domains.values().map(|d| d.tokens_before).sum();
    let ours = SideStats {
        counter: format!(
            "mome-data balance (strategy reference), exact counter (count::TokenCounter = \
             tokenizers encode(text, false).len()) with {}",
            cfg.tokenizer_path.display()
        ),
        records: rep.domains.values().map(|d| d.records_before).sum(),
        records_kept: rep.domains.values().map(|d| d.records_after).sum(),
        tokens_counted: ours_tokens,
        seconds: os,
        seconds_all: ours_secs,
        tokens_per_second: ours_tokens as f64 / os.max(1e-9),
        mb_per_second: mb_per_second(bytes, os),
        peak_rss_bytes: ours_peak,
        rss_before_bytes: rss_before,
    };
    let reference = SideStats {
        counter: rl.counter.clone(),
        records: rl.records,
        records_kept: rl.records_kept,
        tokens_counted: rl.tokens_counted,
        seconds: rs,
        seconds_all: ref_secs,
        tokens_per_second: rl.tokens_counted as f64 / rs.max(1e-9),
        mb_per_second: mb_per_second(bytes, rs),
        peak_rss_bytes: Some(rl.peak_rss_bytes),
        rss_before_bytes: None,
    };
    Ok(BenchReport {
        input_bytes: bytes,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        ratio_tokens_per_second: ours.tokens_per_second / reference.tokens_per_second.max(1e-9),
        speedup_wall: rs / os.max(1e-9),
        reference_env: format!("Python {}, tiktoken {}", rl.python, rl.tiktoken_version),
        ours,
        reference,
    })
}

/// A temp folder removed on drop.
struct TempDir {
    path: PathBuf,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn tempdir_in_system() -> BenchResult<TempDir> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let path = std::env::temp_dir().join(format!("mome-bench-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&path).map_err(|e| BenchError::Io {
        path: path.clone(),
        source: e,
    })?;
    Ok(TempDir { path })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The repository's copy of the script (this crate is `examples/data-bench`).
    fn repo_script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(DEFAULT_REFERENCE_SCRIPT)
    }

    fn config(script: PathBuf) -> BenchConfig {
        BenchConfig {
            domains: vec![
                ("en".into(), vec![PathBuf::from("en.jsonl")]),
                ("fr".into(), vec![PathBuf::from("fr.jsonl")]),
            ],
            tokenizer_path: PathBuf::from("/nonexistent/tokenizer.json"),
            max_diff_percent: 5.0,
            text_field: "text".into(),
            id_field: None,
            common_articles: false,
            repeat: 1,
            python: "/nonexistent/python3-for-mome-test".into(),
            venv_dir: Some(PathBuf::from("/nonexistent/venv")),
            reference_script: script,
        }
    }

    #[test]
    fn parses_the_last_json_line() {
        let out = "noise\n{\"counter\":\"c\",\"records\":3,\"records_kept\":2,\"tokens_counted\":10,\"seconds\":0.5,\"peak_rss_bytes\":1024}\n";
        let l = parse_reference_output(out).expect("parsed");
        assert_eq!((l.records, l.records_kept, l.tokens_counted), (3, 2, 10));
        assert_eq!(l.peak_rss_bytes, 1024);
        assert!(parse_reference_output("no json here").is_none());
    }

    #[test]
    fn missing_python_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = ensure_venv("/nonexistent/python3-for-mome-test", &dir.path().join("v"))
            .expect_err("must fail");
        let msg = err.to_string();
        assert!(matches!(err, BenchError::PythonMissing { .. }), "{msg}");
        assert!(msg.contains("install Python 3"), "{msg}");
    }

    #[test]
    fn venv_dir_follows_mome_cache() {
        // Only read here; other tests do not set MOME_CACHE.
        let d = default_venv_dir();
        match std::env::var_os("MOME_CACHE").filter(|c| !c.is_empty()) {
            Some(c) => assert_eq!(d, PathBuf::from(c).join("bench-venv")),
            None => assert!(d.ends_with("bench-venv") || d.ends_with("mome-bench-venv")),
        }
    }

    #[test]
    fn the_default_reference_script_is_the_repositorys() {
        let found = locate_reference_script(&repo_script()).expect("the script is in the repo");
        assert!(found.is_absolute(), "{}", found.display());
        let text = std::fs::read_to_string(&found).unwrap();
        assert!(
            text.contains("def reference_select("),
            "not the reference script"
        );
        assert!(
            text.contains("def walk_select("),
            "not the reference script"
        );
    }

    /// A missing script is reported (with the path and the way out) before the
    /// tokenizer is loaded or a venv is created.
    #[test]
    fn missing_reference_script_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("scripts/reference_balance.py");
        let err = run_bench(&config(missing.clone())).expect_err("must fail");
        let msg = err.to_string();
        assert!(
            matches!(&err, BenchError::ReferenceScriptMissing { path, .. } if *path == missing),
            "{msg}"
        );
        assert!(msg.contains(&missing.display().to_string()), "{msg}");
        assert!(msg.contains("--reference-script"), "{msg}");
        assert!(msg.contains("repository root"), "{msg}");
        // A folder is not a script either.
        let err = locate_reference_script(dir.path()).expect_err("a folder");
        assert!(matches!(err, BenchError::ReferenceScriptMissing { .. }));
    }

    #[test]
    fn settings_are_checked_first() {
        let mut cfg = config(PathBuf::from("/nonexistent/reference_balance.py"));
        cfg.domains.truncate(1);
        let err = run_bench(&cfg).expect_err("one domain");
        assert!(err.to_string().contains("at least two domains"), "{err}");
        let mut cfg = config(PathBuf::from("/nonexistent/reference_balance.py"));
        cfg.repeat = 0;
        let err = run_bench(&cfg).expect_err("no run");
        assert!(err.to_string().contains("repeat must be >= 1"), "{err}");
    }

    /// The script's selection functions (no tiktoken needed) agree with
    /// [`balance::reference_select`] and [`balance::walk_select`] on the same counts,
    /// ties at the limit included.
    #[test]
    fn python_rule_matches_rust_rule() {
        let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        if Command::new(&py).arg("--version").output().is_err() {
            eprintln!("skipped: no `{py}` on this machine");
            return;
        }
        // A copy of the repository's script (read at run time), imported from a temp
        // folder so that no `__pycache__` lands in the repository.
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(repo_script(), dir.path().join("reference_balance.py")).unwrap();
        let counts: Vec<Vec<u64>> = vec![
            vec![10, 20, 30, 5, 1, 40, 7],
            vec![12, 25, 31, 2, 9, 50, 1],
            vec![10, 20, 30, 5, 1, 40, 0],
        ];
        for pct in [0.0, 5.0, 30.0] {
            let (keep, limit) = balance::reference_select(&counts, pct);
            let walk = balance::walk_select(&counts[1], limit);
            let code = format!(
                "import json,sys; sys.path.insert(0, {dir:?}); import reference_balance as r; \
                 k, l = r.reference_select({counts:?}, {pct:?}); \
                 print(json.dumps([k, l, r.walk_select({c1:?}, l)]))",
                dir = dir.path().display().to_string(),
                c1 = counts[1],
            );
            let o = Command::new(&py).arg("-c").arg(&code).output().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let (pk, pl, pw): (Vec<bool>, f64, Vec<bool>) =
                serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(pk, keep, "pct {pct}");
            assert!((pl - limit).abs() < 1e-9, "{pl} vs {limit}");
            assert_eq!(pw, walk, "pct {pct}");
        }
    }
}
