//! `data-bench`: times mome-data's balancing against the method's Python tool
//! (`scripts/reference_balance.py`) on the same corpus, in the same run.
//!
//! From the repository root:
//!
//! ```sh
//! cargo run --release -p data-bench -- --domain en=data/demo/en.jsonl \
//!   --domain fr=data/demo/fr.jsonl --domain de=data/demo/de.jsonl \
//!   --domain py=data/demo/py.jsonl \
//!   --tokenizer data/tokenizer/En_De_Fr_Py_Tokenizer/tokenizer.json --repeat 3 [--json]
//! ```
//!
//! The reference script is read from the repository at run time
//! (`--reference-script`, default `scripts/reference_balance.py` relative to the
//! current directory). See `docs/data.md`, "Performance".

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Parser;
use data_bench::{run_bench, BenchConfig, DEFAULT_REFERENCE_SCRIPT};

/// Time mome's balancing against the method's Python tool on the same corpus.
#[derive(Debug, Parser)]
#[command(name = "data-bench", version, about, long_about = None)]
struct BenchArgs {
    /// A domain as NAME=PATH (a JSONL file); repeat for every domain.
    #[arg(long = "domain", value_name = "NAME=PATH", required = true)]
    domains: Vec<String>,
    /// tokenizer.json used by mome's balancing.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Runs of each side (the fastest is reported, all are listed).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Python 3 that creates the reference's venv.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Venv folder (default `$MOME_CACHE/bench-venv` or `~/.cache/mome/bench-venv`).
    #[arg(long)]
    venv: Option<PathBuf>,
    /// Allowed spread between the domains' token totals, in percent.
    #[arg(long, default_value_t = 5.0)]
    max_diff_percent: f64,
    /// Text field of the JSONL records.
    #[arg(long, default_value = "text")]
    text_field: String,
    /// Id field of the JSONL records.
    #[arg(long)]
    id_field: Option<String>,
    /// Align the domains by id (the method's `--common_articles`).
    #[arg(long)]
    common_articles: bool,
    /// The method's Python tool re-implemented (relative to the current directory:
    /// run from the repository root, or give its path).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_REFERENCE_SCRIPT)]
    reference_script: PathBuf,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn split_kv(s: &str) -> Result<(String, PathBuf)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_string(), PathBuf::from(v))),
        _ => bail!("`{s}`: expected NAME=PATH, e.g. en=data/demo/en.jsonl"),
    }
}

fn mib(b: Option<u64>) -> String {
    b.map_or_else(
        || "n/a".to_string(),
        |b| format!("{:.1} MiB", b as f64 / 1048576.0),
    )
}

fn bench_cmd(a: BenchArgs) -> Result<()> {
    let mut domains: Vec<(String, Vec<PathBuf>)> = Vec::new();
    for d in &a.domains {
        let (name, path) = split_kv(d)?;
        match domains.iter_mut().find(|(n, _)| *n == name) {
            Some(entry) => entry.1.push(path),
            None => domains.push((name, vec![path])),
        }
    }
    let cfg = BenchConfig {
        domains,
        tokenizer_path: a.tokenizer.clone(),
        max_diff_percent: a.max_diff_percent,
        text_field: a.text_field,
        id_field: a.id_field,
        common_articles: a.common_articles,
        repeat: a.repeat,
        python: a.python,
        venv_dir: a.venv,
        reference_script: a.reference_script,
    };
    let r = run_bench(&cfg)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "corpus: {:.2} MB, {} records; {} CPUs; reference: {}",
        r.input_bytes as f64 / 1e6,
        r.ours.records,
        r.cpus,
        r.reference_env
    );
    println!(
        "{:<10} {:>14} {:>12} {:>10} {:>9} {:>12}",
        "side", "tokens", "tokens/s", "seconds", "MB/s", "peak RSS"
    );
    for (name, s) in [("ours", &r.ours), ("reference", &r.reference)] {
        println!(
            "{:<10} {:>14} {:>12.0} {:>10.3} {:>9.2} {:>12}",
            name,
            s.tokens_counted,
            s.tokens_per_second,
            s.seconds,
            s.mb_per_second,
            mib(s.peak_rss_bytes)
        );
    }
    println!(
        "tokens/s ours/reference: {:.2}x; wall speed-up (same bytes): {:.2}x",
        r.ratio_tokens_per_second, r.speedup_wall
    );
    println!(
        "ours: RSS before the runs {}, peak during them {}",
        mib(r.ours.rss_before_bytes),
        mib(r.ours.peak_rss_bytes)
    );
    println!("ours counts with: {}", r.ours.counter);
    println!("reference counts with: {}", r.reference.counter);
    Ok(())
}

fn main() {
    if let Err(e) = bench_cmd(BenchArgs::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
