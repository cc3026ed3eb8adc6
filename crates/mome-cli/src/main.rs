//! `mome`: the command-line tool of the mome workspace.
//!
//! Every command is a thin layer over the library crates; see `mome --help`.

mod bench_cmd;
mod data_cmd;
mod lm_cmd;
mod train_cmd;

use clap::{Parser, Subcommand};

/// Modular multilingual language models: data, tokenizer, training, distillation,
/// routing and mixtures of modular experts (arXiv 2407.19610).
#[derive(Debug, Parser)]
#[command(name = "mome", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Corpora, balancing, token shards.
    #[command(subcommand)]
    Data(data_cmd::DataCommand),
    /// Train a tokenizer.
    #[command(subcommand)]
    Tokenizer(data_cmd::TokenizerCommand),
    /// Train a GPT-2 causal language model from scratch on token shards.
    Train(train_cmd::TrainArgs),
    /// Per-domain loss and perplexity of a model on a shard split.
    Eval(lm_cmd::EvalArgs),
    /// Generate text from a model.
    Generate(lm_cmd::GenerateArgs),
    /// Measure training throughput.
    #[command(subcommand)]
    Bench(bench_cmd::BenchCommand),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Data(c) => data_cmd::run_data(c),
        Command::Tokenizer(c) => data_cmd::run_tokenizer(c),
        Command::Train(a) => train_cmd::run_train(a),
        Command::Eval(a) => lm_cmd::run_eval(a),
        Command::Generate(a) => lm_cmd::run_generate(a),
        Command::Bench(c) => bench_cmd::run_bench(c),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
