//! `mome`: the command-line tool of the mome workspace.
//!
//! Every command is a thin layer over the library crates; see `mome --help`.

mod bench_cmd;
mod data_cmd;
mod distill_cmd;
mod launch_cmd;
mod lm_cmd;
mod moe_cmd;
mod pipeline_cmd;
mod router_cmd;
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
    /// Distil a student from a frozen teacher (online or from a teacher cache).
    Distill(distill_cmd::DistillArgs),
    /// Offline teacher cache: top-K teacher log-probs over the training shards.
    #[command(subcommand)]
    TeacherCache(distill_cmd::TeacherCacheCommand),
    /// Reproducible experiments (kd: the paper's KD loss / alpha comparison).
    #[command(subcommand)]
    Experiment(distill_cmd::ExperimentCommand),
    /// Measure training throughput.
    #[command(subcommand)]
    Bench(bench_cmd::BenchCommand),
    /// Domain router: train, compare, evaluate, import the paper's router, bench.
    #[command(subcommand)]
    Router(router_cmd::RouterCommand),
    /// Route texts (argument or stdin lines) to a domain; one JSON object per input.
    Route(router_cmd::RouteArgs),
    /// Mixture of modular experts: build (PLE), train (JEET / MoE-CE), eval, export-expert.
    #[command(subcommand)]
    Moe(moe_cmd::MoeCommand),
    /// Every stage of the method in order, resumable: balance → … → report.md.
    Pipeline(pipeline_cmd::PipelineArgs),
    /// Several processes over the GPUs: data parallel ranks, or independent jobs.
    Launch(launch_cmd::LaunchArgs),
    /// Stand-in rank for the launcher's tests.
    #[command(hide = true, name = "dist-selftest")]
    DistSelftest(launch_cmd::SelftestArgs),
}

/// `mome data stats … | head`: the reader closing the pipe early is not an error.
/// `println!` panics on EPIPE (Rust ignores SIGPIPE); end quietly instead, with the
/// shell's status for a process killed by SIGPIPE (128 + 13).
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.contains("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info)
    }));
}

fn main() {
    quiet_broken_pipe();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Moe(c) => moe_cmd::run_moe(c),
        Command::Pipeline(a) => pipeline_cmd::run(a),
        Command::Launch(a) => launch_cmd::run_launch(a),
        Command::DistSelftest(a) => launch_cmd::run_selftest(a),
        Command::Data(c) => data_cmd::run_data(c),
        Command::Tokenizer(c) => data_cmd::run_tokenizer(c),
        Command::Train(a) => train_cmd::run_train(a),
        Command::Eval(a) => lm_cmd::run_eval(a),
        Command::Generate(a) => lm_cmd::run_generate(a),
        Command::Bench(c) => bench_cmd::run_bench_cmd(c),
        Command::Distill(a) => distill_cmd::run_distill_cmd(a),
        Command::TeacherCache(c) => distill_cmd::run_teacher_cache(c),
        Command::Experiment(c) => distill_cmd::run_experiment(c),
        Command::Router(c) => router_cmd::run_router(c),
        Command::Route(a) => router_cmd::run_route(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
