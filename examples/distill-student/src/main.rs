//! Distils a small GPT-2 student from a GPT-2 teacher with mome's libraries, on the
//! demo corpus and the paper's tokenizer that ship with the repository (CPU, no
//! download):
//!
//! 1. mome-data: four domains of `data/demo` → token shards (train + validation);
//! 2. mome-experts + mome-core: a tiny GPT-2 teacher trained by mome-core's `Trainer`;
//! 3. mome-distill: a smaller student trained with `alpha * CE + (1 - alpha) * KD`
//!    (forward KL at T = 2, fixed alpha = 0.5) against the frozen teacher.
//!
//! `cargo run -p distill-student --release [-- OUT_DIR]` (default: a temporary folder).
//! `cargo test -p distill-student` runs the same code with tiny settings.

use std::path::Path;

use mome_core::data::ShardBatches;
use mome_core::trainer::{TrainConfig, Trainer};
use mome_data::sampler::{SamplerConfig, SamplerKind};
use mome_data::{corpus, encode, shards::ShardSet, tokenizer::load_tokenizer};
use mome_distill::{DataSpec, DistillJob, DistillSettings, EvalSpec, StrategyConfig};
use mome_experts::{causal_lm_loss, Gpt2Config, Gpt2Input, Gpt2LmHeadModel};
use tch::{nn, Device};

/// How much work the example does.
pub struct Size {
    /// Documents read per domain and split.
    pub docs: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Optimizer steps of the teacher and of the student.
    pub steps: u64,
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Runs the three stages in `work`; returns (teacher's last training loss, student's
/// validation loss).
pub fn run(repo: &Path, work: &Path, size: &Size) -> Res<(f64, f64)> {
    // 1. Token shards: `data/demo/<d>.jsonl` → train, `data/demo/heldout/<d>.jsonl` → validation.
    let tok_path = repo.join("data/tokenizer/En_De_Fr_Py_Tokenizer/tokenizer.json");
    let (tok, sha) = load_tokenizer(&tok_path)?;
    let mut docs = Vec::new();
    for d in ["de", "en", "fr", "py"] {
        for (split, file) in [
            ("train", format!("{d}.jsonl")),
            ("validation", format!("heldout/{d}.jsonl")),
        ] {
            let spec = corpus::CorpusSpec::from_path(repo.join("data/demo").join(file));
            for rec in corpus::open(&spec)?.take(size.docs) {
                docs.push((split.to_string(), d.to_string(), rec?.text));
            }
        }
    }
    let opts = encode::EncodeOptions {
        seq_len: size.seq_len,
        ..encode::EncodeOptions::for_tokenizer(&tok)
    };
    encode::encode_documents(docs, &tok, &sha, &opts, &work.join("shards"))?;
    let shards = ShardSet::open(&work.join("shards"))?;
    let vocab = shards.vocab_size() as i64;
    let gpt2 = |n_layer, n_embd| Gpt2Config {
        n_layer,
        n_embd,
        n_head: 2,
        n_positions: size.seq_len as i64,
        ..Gpt2Config::student_3l(vocab)
    };
    let sampler = SamplerConfig {
        kind: SamplerKind::Mixed,
        batch_size: 4,
        seed: 0,
        domains: vec![],
    };
    let train = TrainConfig {
        log_every: 5,
        quiet: size.steps < 10,
        ..TrainConfig::new(size.steps, 3e-3)
    };

    // 2. The teacher: 2 layers, 64 wide, trained on next-token cross-entropy.
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let teacher = Gpt2LmHeadModel::new(&vs.root(), &gpt2(2, 64))?;
    let mut batches = ShardBatches::new(shards, "train", sampler.clone())?;
    let mut trainer = Trainer::new(train.clone(), &vs, &work.join("teacher"), false)?;
    let mut lm_loss = |ids: &tch::Tensor| -> mome_core::Result<tch::Tensor> {
        let logits = teacher.forward(Gpt2Input::ids(ids).train(true))?.logits;
        Ok(causal_lm_loss(&logits, ids, None)?)
    };
    let t = trainer.run(&mut batches, &mut lm_loss, None, &[])?;
    teacher.save_pretrained(work.join("teacher/model"))?;

    // 3. The student: 1 layer, 32 wide, distilled from the frozen teacher.
    let job = DistillJob {
        run_dir: work.join("student"),
        resume: false,
        device: Device::Cpu,
        student: gpt2(1, 32),
        teacher: mome_distill::TeacherSection {
            dir: Some(work.join("teacher/model")),
            ..Default::default()
        },
        data: DataSpec {
            shards: work.join("shards"),
            tokenizer_sha256: Some(sha),
            sampler: sampler.kind,
            batch_size: 4,
            domains: vec![],
        },
        eval: EvalSpec {
            max_sequences: 8,
            batch_size: 4,
        },
        train,
        distill: DistillSettings {
            strategy: StrategyConfig::Fixed { alpha: 0.5 },
            ..Default::default()
        },
    };
    let s = mome_distill::run_distill(&job)?;
    let val = s
        .summary
        .last_eval
        .as_ref()
        .and_then(|e| e["val_loss"].as_f64())
        .ok_or("no eval")?;
    Ok((t.final_loss.ok_or("no step")?, val))
}

fn main() -> Res<()> {
    let tmp = tempfile::tempdir()?;
    let work = std::env::args_os()
        .nth(1)
        .map_or(tmp.path().to_path_buf(), Into::into);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let (teacher, student) = run(
        &repo,
        &work,
        &Size {
            docs: 16,
            seq_len: 128,
            steps: 60,
        },
    )?;
    // `distill_metrics.jsonl`: the CE and KD terms of every student step.
    let lines = std::fs::read_to_string(work.join("student/distill_metrics.jsonl"))?;
    for line in lines.lines().step_by(10) {
        println!("{line}");
    }
    println!("teacher train loss {teacher:.4}, student validation loss {student:.4}");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn distils_on_tiny_data() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let size = super::Size {
            docs: 2,
            seq_len: 32,
            steps: 3,
        };
        let (teacher, student) = super::run(&repo, tmp.path(), &size).unwrap();
        assert!(teacher.is_finite() && student.is_finite());
        assert!(tmp.path().join("student/model/model.safetensors").exists());
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("student/distill_metrics.jsonl"))
                .unwrap()
                .lines()
                .count(),
            3
        );
    }
}
