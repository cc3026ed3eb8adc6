//! `mome data …` and `mome tokenizer …`: thin wrappers over `mome-data`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use mome_data::balance::{self, BalanceConfig, DomainSpec, Strategy};
use mome_data::corpus::{CorpusSpec, Utf8Policy};
use mome_data::encode::{self, EncodeOptions};
use mome_data::shards::ShardSet;
use mome_data::tokenizer::{load_tokenizer, train_tokenizer_from_dir, TokenizerTrainConfig};

/// `mome data …`
#[derive(Debug, Subcommand)]
#[command(
    after_help = "The balancing benchmark against the method's Python tool (formerly \
                  `mome data bench`) is a separate program: from the repository root, \
                  `cargo run --release -p data-bench -- --domain NAME=PATH … --tokenizer T` \
                  (same flags; docs/data.md)."
)]
pub enum DataCommand {
    /// Balance domains by token count (method §1) and write `DIR/{train,validation}/<domain>.jsonl`.
    Balance(BalanceArgs),
    /// Tokenise a balanced folder into fixed-length token shards.
    Encode(EncodeArgs),
    /// Print a shard folder's manifest figures.
    Stats(StatsArgs),
}

/// `mome tokenizer …`
#[derive(Debug, Subcommand)]
pub enum TokenizerCommand {
    /// Train a BPE tokenizer (the method's kind by default) on a balanced folder.
    Train(TokenizerTrainArgs),
}

/// Arguments of `mome data balance`.
#[derive(Debug, Args)]
pub struct BalanceArgs {
    /// A domain as NAME=PATH (file or folder); repeat for every domain. Repeat a
    /// name to give it several paths.
    #[arg(long = "domain", value_name = "NAME=PATH", required = true)]
    domains: Vec<String>,
    /// Separate validation input as NAME=PATH (otherwise `--valid-fraction` splits it off).
    #[arg(long = "valid", value_name = "NAME=PATH")]
    valid: Vec<String>,
    /// Fraction of each domain's records moved to validation (by seeded id hash).
    #[arg(long, default_value_t = 0.0)]
    valid_fraction: f64,
    /// Seed of the train/validation split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep only ids present in every aligned domain, in the same order.
    #[arg(long)]
    common_articles: bool,
    /// The aligned domains for `--common-articles` (comma-separated; default all).
    #[arg(long, value_delimiter = ',')]
    common_domains: Vec<String>,
    /// Id field of JSONL/Parquet inputs.
    #[arg(long)]
    id_field: Option<String>,
    /// Text field of JSONL/Parquet inputs.
    #[arg(long, default_value = "text")]
    text_field: String,
    /// reference | subset | truncate (default: subset with --common-articles, else reference).
    #[arg(long)]
    strategy: Option<String>,
    /// Allowed spread between the domains' token totals, in percent.
    #[arg(long, default_value_t = 5.0)]
    max_diff_percent: f64,
    /// Skip records that are not valid UTF-8 (counted) instead of failing.
    #[arg(long)]
    skip_invalid_utf8: bool,
    /// tokenizer.json used to count tokens.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Output folder (written atomically).
    #[arg(long)]
    out: PathBuf,
}

/// Arguments of `mome data encode`.
#[derive(Debug, Args)]
pub struct EncodeArgs {
    /// tokenizer.json
    #[arg(long)]
    tokenizer: PathBuf,
    /// Balanced folder (`<split>/<domain>.jsonl`).
    #[arg(long)]
    input: PathBuf,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 1024)]
    seq_len: usize,
    /// Encode even when a domain has no training data (an empty or missing
    /// `train/<domain>.jsonl`, or too few tokens for one sequence); by default that
    /// is an error naming the file and the domain.
    #[arg(long)]
    allow_empty_domains: bool,
    /// Output shard folder (written atomically).
    #[arg(long)]
    out: PathBuf,
}

/// Arguments of `mome data stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Shard folder.
    shards: PathBuf,
    /// Print JSON (the default; kept for scripts that pass it).
    #[arg(long)]
    json: bool,
}

/// Arguments of `mome tokenizer train`.
#[derive(Debug, Args)]
pub struct TokenizerTrainArgs {
    /// Balanced folder (`train/<domain>.jsonl` are read).
    #[arg(long)]
    input: PathBuf,
    /// Vocabulary size.
    #[arg(long, default_value_t = 32000)]
    vocab_size: usize,
    /// Minimum pair frequency of a merge.
    #[arg(long, default_value_t = 2)]
    min_frequency: u64,
    /// Train even when a domain has no training text (an empty `train/<domain>.jsonl`,
    /// or none while `validation/<domain>.jsonl` exists); by default that is an error
    /// naming the file and the domain.
    #[arg(long)]
    allow_empty_domains: bool,
    /// Output tokenizer.json (written atomically).
    #[arg(long)]
    out: PathBuf,
}

fn split_kv(s: &str) -> Result<(String, PathBuf)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_string(), PathBuf::from(v))),
        _ => bail!("`{s}`: expected NAME=PATH, e.g. en=data/demo/en.jsonl"),
    }
}

fn parse_strategy(s: &str) -> Result<Strategy> {
    Ok(match s {
        "reference" => Strategy::Reference,
        "subset" => Strategy::Subset,
        "truncate" => Strategy::Truncate,
        _ => bail!("unknown strategy `{s}` (expected reference, subset or truncate)"),
    })
}

/// Runs `mome data …`.
pub fn run_data(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Balance(a) => balance_cmd(a),
        DataCommand::Encode(a) => {
            let (tok, sha) = load_tokenizer(&a.tokenizer)?;
            let opts = EncodeOptions {
                seq_len: a.seq_len,
                allow_empty_domains: a.allow_empty_domains,
                ..EncodeOptions::for_tokenizer(&tok)
            };
            eprintln!("encoding {} -> {}", a.input.display(), a.out.display());
            let report = encode::encode_dir(&a.input, &tok, &sha, &opts, &a.out)
                .with_context(|| format!("encoding {}", a.input.display()))?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        DataCommand::Stats(a) => {
            let _ = a.json;
            let shards = ShardSet::open(&a.shards)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&encode::stats_json(&shards))?
            );
            Ok(())
        }
    }
}

fn balance_cmd(a: BalanceArgs) -> Result<()> {
    let utf8 = if a.skip_invalid_utf8 {
        Utf8Policy::Skip
    } else {
        Utf8Policy::Error
    };
    let spec = |paths: Vec<PathBuf>| CorpusSpec {
        paths,
        text_field: a.text_field.clone(),
        id_field: a.id_field.clone(),
        on_invalid_utf8: utf8,
        ..CorpusSpec::default()
    };
    let mut domains: Vec<(String, Vec<PathBuf>, Vec<PathBuf>)> = Vec::new();
    for d in &a.domains {
        let (name, path) = split_kv(d)?;
        match domains.iter_mut().find(|(n, _, _)| *n == name) {
            Some(entry) => entry.1.push(path),
            None => domains.push((name, vec![path], Vec::new())),
        }
    }
    for v in &a.valid {
        let (name, path) = split_kv(v)?;
        match domains.iter_mut().find(|(n, _, _)| *n == name) {
            Some(entry) => entry.2.push(path),
            None => bail!("--valid {v}: no --domain named `{name}`"),
        }
    }
    let cfg = BalanceConfig {
        domains: domains
            .into_iter()
            .map(|(name, train, valid)| DomainSpec {
                name,
                train: spec(train),
                validation: (!valid.is_empty()).then(|| spec(valid)),
            })
            .collect(),
        max_diff_percent: a.max_diff_percent,
        valid_fraction: a.valid_fraction,
        split_seed: a.seed,
        common_articles: a.common_articles,
        common_domains: a.common_domains.clone(),
        strategy: a.strategy.as_deref().map(parse_strategy).transpose()?,
        ..BalanceConfig::default()
    };
    cfg.validate()?;
    let (tok, _) = load_tokenizer(&a.tokenizer)?;
    eprintln!(
        "balancing {} domains (strategy {:?}, max diff {}%) -> {}",
        cfg.domains.len(),
        cfg.resolved_strategy(),
        cfg.max_diff_percent,
        a.out.display()
    );
    let report = balance::balance(&cfg, &tok, &a.out)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// Runs `mome tokenizer …`.
pub fn run_tokenizer(cmd: TokenizerCommand) -> Result<()> {
    match cmd {
        TokenizerCommand::Train(a) => {
            let cfg = TokenizerTrainConfig {
                vocab_size: a.vocab_size,
                min_frequency: a.min_frequency,
                allow_empty_domains: a.allow_empty_domains,
                show_progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
                ..TokenizerTrainConfig::default()
            };
            cfg.validate()?;
            eprintln!(
                "training a {}-token BPE tokenizer on {}",
                a.vocab_size,
                a.input.display()
            );
            let stats = train_tokenizer_from_dir(&a.input, &cfg, &a.out)?;
            println!("{}", serde_json::to_string_pretty(&stats)?);
            Ok(())
        }
    }
}
