//! ple-generate: assemble a PLE mixture of modular experts from expert checkpoints
//! (method §6) and generate from it, each prompt answered by the expert its routing
//! picks.
//!
//! ```sh
//! cargo run -p ple-generate                                   # tiny experts, trained here
//! cargo run -p ple-generate -- en=DIR fr=DIR                  # your GPT-2 folders
//! ```
//!
//! Without arguments it trains two tiny experts for a second each, in a temporary
//! folder, on toy "languages" (`en` counts up by 1, `fr` by 3), so it runs anywhere
//! without data or downloads.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use mome_experts::{causal_lm_loss, GenerationConfig, Gpt2Config, Gpt2Input, Gpt2LmHeadModel};
use mome_moe::{build_ple, generate_routed, LabelRouter, Setting};
use tch::nn::OptimizerConfig;
use tch::{nn, Device, Tensor};

const VOCAB: i64 = 64;

/// A toy language: token `i + 1` follows token `i` * step (mod the vocabulary).
fn toy_batch(step: i64) -> Tensor {
    let rows: Vec<i64> = (0..8)
        .flat_map(|start| (0..24).map(move |j| 3 + (start * 5 + j * step) % (VOCAB - 3)))
        .collect();
    Tensor::from_slice(&rows).view([8, 24])
}

/// Trains a tiny GPT-2 on one toy language and saves it as a Hugging Face folder.
fn train_tiny_expert(dir: &Path, step: i64) -> Result<PathBuf> {
    let cfg = Gpt2Config {
        vocab_size: VOCAB,
        n_positions: 32,
        n_embd: 32,
        n_layer: 1,
        n_head: 2,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
        ..Gpt2Config::default()
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Gpt2LmHeadModel::new(&vs.root(), &cfg)?;
    let mut opt = nn::Adam::default().build(&vs, 1e-2)?;
    let ids = toy_batch(step);
    for _ in 0..60 {
        let logits = model.forward(Gpt2Input::ids(&ids).train(true))?.logits;
        opt.backward_step(&causal_lm_loss(&logits, &ids, None)?);
    }
    model.save_pretrained(dir)?;
    Ok(dir.to_path_buf())
}

/// Builds the PLE model from `DOMAIN=DIR` arguments (or two tiny trained experts)
/// and returns each expert's greedy continuation of one prompt.
fn run(args: &[String]) -> Result<Vec<(String, Vec<i64>)>> {
    let tmp = tempfile::tempdir()?;
    // 1. The expert checkpoints: DOMAIN=DIR arguments, or two tiny ones trained here.
    let experts: Vec<(String, PathBuf)> = if args.is_empty() {
        vec![
            ("en".into(), train_tiny_expert(&tmp.path().join("en"), 1)?),
            ("fr".into(), train_tiny_expert(&tmp.path().join("fr"), 3)?),
        ]
    } else {
        args.iter()
            .map(|a| {
                let (d, p) = a.split_once('=').context("arguments are DOMAIN=DIR")?;
                Ok((d.to_string(), PathBuf::from(p)))
            })
            .collect::<Result<_>>()?
    };

    // 2. Assemble the PLE model: each expert keeps its own embeddings and head, frozen.
    let (_vs, moe) = build_ple(&experts, None, Device::Cpu)?;
    let folder = moe.save(&tmp.path().join("ple"))?; // loadable by `mome generate --model`
    println!(
        "PLE with experts {:?} saved to {}",
        moe.domains(),
        folder.display()
    );

    // 3. Route and generate. A LabelRouter sends every prompt to one expert; a trained
    //    router (mome_router::Router, `mome router train`) routes by content instead.
    let prompt = vec![vec![3i64, 4, 5, 6]];
    let cfg = GenerationConfig {
        max_new_tokens: 12,
        ..GenerationConfig::default() // greedy
    };
    let mut out = Vec::new();
    for domain in moe.domains() {
        let router = LabelRouter::new(moe.domains().to_vec(), domain)?;
        let g = generate_routed(&moe, &router, &Setting::routed(false), &prompt, &cfg)?;
        out.push((domain.clone(), g[0].tokens.clone()));
    }
    Ok(out)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    for (domain, tokens) in run(&args)? {
        println!("{domain}: [3, 4, 5, 6] -> {tokens:?}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_expert_continues_the_prompt() {
        let out = super::run(&[]).unwrap();
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|(_, t)| t.len() == 12));
        assert_ne!(out[0].1, out[1].1, "the two experts answer differently");
    }
}
