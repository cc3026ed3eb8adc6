//! Tiny synthetic data and models shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use mome_core::job::{DataParams, EvalParams};
use mome_core::trainer::TrainConfig;
use mome_core::DeviceSpec;
pub use mome_core::ParamGuard;
use mome_data::shards::ShardWriter;
use mome_distill::{
    run_distill, DistillOutcome, DistillParams, DistillSettings, Result, StrategyConfig,
    TeacherSection,
};
use mome_experts::{Gpt2Config, ModelSpec};

/// Serialises the tests of one binary: model initialisation draws from libtorch's
/// global generator (seeded by each run), which parallel tests would interleave.
pub static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes [`TORCH_RNG`] (ignoring poisoning by a failed test).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

pub const VOCAB: usize = 32;
pub const SEQ: usize = 16;
pub const SHA: &str = "1111111111111111111111111111111111111111111111111111111111111111";

/// A Markov chain over ids 3..32: from token i, 55% to a(i), 30% to b(i), 15% uniform.
/// `flavor` changes the chain (another "domain").
pub fn sequence(rng: &mut u64, flavor: u64) -> Vec<u32> {
    let mut next = || {
        *rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*rng >> 33) as f64 / (1u64 << 31) as f64
    };
    let n = (VOCAB - 3) as u64;
    let mut out = vec![1u32];
    let mut cur = 3 + (next() * n as f64) as u64 % n;
    while out.len() < SEQ {
        out.push(cur as u32);
        let r = next();
        cur = if r < 0.55 {
            3 + (cur * (7 + flavor) + 3) % n
        } else if r < 0.85 {
            3 + (cur * 5 + 1 + flavor) % n
        } else {
            3 + (next() * n as f64) as u64 % n
        };
    }
    out
}

/// Shards with domains `a` and `b`: `train_n` train and 24 validation sequences each.
pub fn make_shards(dir: &Path, seed: u64, train_n: usize) -> PathBuf {
    let mut w = ShardWriter::new(dir, VOCAB, SEQ, SHA, 1, 2).unwrap();
    let mut rng = seed;
    for (flavor, domain) in [(0u64, "a"), (4u64, "b")] {
        for _ in 0..train_n {
            w.push_sequence("train", domain, &sequence(&mut rng, flavor))
                .unwrap();
        }
        for _ in 0..24 {
            w.push_sequence("validation", domain, &sequence(&mut rng, flavor))
                .unwrap();
        }
    }
    w.finish().unwrap();
    dir.to_path_buf()
}

pub fn model(n_layer: i64, n_embd: i64, n_head: i64) -> Gpt2Config {
    Gpt2Config {
        n_layer,
        n_embd,
        n_head,
        n_positions: SEQ as i64,
        resid_pdrop: 0.0,
        embd_pdrop: 0.0,
        attn_pdrop: 0.0,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
        ..Gpt2Config::student_3l(VOCAB as i64)
    }
}

pub fn train_cfg(steps: u64, lr: f64, seed: u64) -> TrainConfig {
    let mut c = TrainConfig::new(steps, lr);
    c.seed = seed;
    c.quiet = true;
    c.log_every = 5;
    c.clip_grad_norm = Some(1.0);
    c
}

pub fn job(
    run_dir: &Path,
    shards: &Path,
    student: Gpt2Config,
    teacher: TeacherSection,
    train: TrainConfig,
    distill: DistillSettings,
    batch_size: usize,
) -> DistillParams {
    DistillParams {
        out_dir: run_dir.to_path_buf(),
        resume: false,
        device: DeviceSpec::Cpu,
        student: ModelSpec::from_config(&student),
        teacher,
        data: DataParams::new(shards, batch_size),
        eval: EvalParams {
            max_sequences: 0,
            batch_size: 16,
        },
        train,
        distill,
    }
}

/// Checks and runs a distillation job (what `mome distill` does).
pub fn run(p: &DistillParams) -> Result<DistillOutcome> {
    run_distill(&p.check()?)
}

/// The repository's seed tokenizer: a real `tokenizer.json` whose hash is not the
/// test shards' [`SHA`].
pub fn other_tokenizer() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/tokenizer/En_De_Fr_Py_Tokenizer/tokenizer.json")
}

/// Trains a 2-layer teacher (CE only) on `shards`; returns its model folder.
pub fn train_teacher(root: &Path, shards: &Path, steps: u64) -> PathBuf {
    let j = job(
        &root.join("teacher"),
        shards,
        model(2, 48, 4),
        TeacherSection::default(),
        train_cfg(steps, 1e-2, 7),
        DistillSettings {
            strategy: StrategyConfig::Fixed { alpha: 1.0 },
            ..Default::default()
        },
        16,
    );
    run(&j).unwrap().model_dir
}
