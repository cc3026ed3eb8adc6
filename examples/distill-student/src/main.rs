//! Distils a small GPT-2 student from a GPT-2 teacher with mome's libraries, on the
//! demo corpus and the paper's tokenizer that ship with the repository (CPU, no
//! download):
//!
//! 1. mome-data: four domains of `data/demo` → token shards (train + validation);
//! 2. mome-experts: a tiny GPT-2 teacher, the job of `mome train` ([`LmParams`]);
//! 3. mome-distill: a smaller student trained with `alpha * CE + (1 - alpha) * KD`
//!    (forward KL at T = 2, fixed alpha = 0.5) against the frozen teacher, the job
//!    of `mome distill` ([`DistillParams`]).
//!
//! `cargo run -p distill-student --release [-- OUT_DIR]` (default: a temporary folder).
//! `cargo test -p distill-student` runs the same code with tiny settings.

use std::path::Path;

use mome_core::job::{DataParams, EvalParams};
use mome_core::trainer::TrainConfig;
use mome_core::{DeviceSpec, ParamGuard};
use mome_data::{corpus, encode, tokenizer::load_tokenizer};
use mome_distill::{DistillParams, DistillSettings, StrategyConfig, TeacherSection};
use mome_experts::{LmParams, ModelSpec, Preset};

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
    // A small GPT-2 shape (the vocabulary is the shards').
    let gpt2 = |n_layer, n_embd| ModelSpec {
        n_layer: Some(n_layer),
        n_embd: Some(n_embd),
        n_head: Some(2),
        n_positions: Some(size.seq_len as i64),
        ..ModelSpec::preset(Preset::Custom)
    };
    let data = DataParams {
        tokenizer: Some(tok_path.clone()),
        ..DataParams::new(work.join("shards"), 4)
    };
    let eval = EvalParams {
        max_sequences: 8,
        batch_size: 4,
    };
    let train = TrainConfig {
        log_every: 5,
        quiet: size.steps < 10,
        ..TrainConfig::new(size.steps, 3e-3)
    };

    // 2. The teacher: 2 layers, 64 wide, trained on next-token cross-entropy
    //    (the job of `mome train`).
    let teacher = LmParams {
        out_dir: work.join("teacher"),
        device: DeviceSpec::Cpu,
        model: gpt2(2, 64),
        data: data.clone(),
        eval,
        train: train.clone(),
        resume: false,
    };
    let t = mome_experts::train_lm(&teacher.check()?)?;

    // 3. The student: 1 layer, 32 wide, distilled from the frozen teacher (the job
    //    of `mome distill`).
    let student = DistillParams {
        out_dir: work.join("student"),
        device: DeviceSpec::Cpu,
        teacher: TeacherSection {
            dir: Some(t.model_dir.clone()),
            ..Default::default()
        },
        student: gpt2(1, 32),
        data,
        eval,
        distill: DistillSettings {
            strategy: StrategyConfig::Fixed { alpha: 0.5 },
            ..Default::default()
        },
        train,
        resume: false,
    };
    let s = mome_distill::run_distill(&student.check()?)?;
    let val = s
        .summary
        .last_eval
        .as_ref()
        .and_then(|e| e["val_loss"].as_f64())
        .ok_or("no eval")?;
    Ok((t.train.final_loss.ok_or("no step")?, val))
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
