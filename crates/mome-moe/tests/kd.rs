//! KD in MoE training: a JEET run against a tiny random teacher logs the KD loss and
//! alpha per step, and matches mome-distill's loss; a top-K teacher cache gives the
//! online teacher's KD and is checked against the shards up front.

use mome_core::data::ShardBatches;
use mome_core::fusion::{KernelConfig, LinearCeMode};
use mome_core::trainer::TrainConfig;
use mome_data::sampler::{SamplerConfig, SamplerKind};
use mome_data::shards::{ShardSet, ShardWriter};
use mome_distill::{
    build_cache, CacheBuildOptions, DistillSettings, KdLoss, StrategyConfig, TeacherSection,
    ValueDtype,
};
use mome_experts::{Gpt2Config, Gpt2LmHeadModel};
use mome_moe::{train_moe, Arch, DistillLoss, MoeConfig, MoeLoss, MoeModel, RunOptions};
use tch::{nn, Device};

const VOCAB: i64 = 41;

/// libtorch's generator is process-global and these runs use dropout: the tests of
/// this file run one at a time, or their masks would interleave.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
const SEQ: usize = 10;

fn shape() -> Gpt2Config {
    Gpt2Config {
        vocab_size: VOCAB,
        n_positions: 16,
        n_embd: 16,
        n_layer: 1,
        n_head: 2,
        tie_word_embeddings: false,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
        ..Gpt2Config::default()
    }
}

fn shards(dir: &std::path::Path) -> ShardSet {
    shards_salted(dir, 0)
}

fn shards_salted(dir: &std::path::Path, salt: usize) -> ShardSet {
    let mut w = ShardWriter::new(dir, VOCAB as usize, SEQ, &"cd".repeat(32), 1, 2).unwrap();
    for (k, d) in ["en", "fr"].iter().enumerate() {
        for split in ["train", "validation"] {
            for i in 0..6 {
                let row: Vec<u32> = (0..SEQ)
                    .map(|j| ((k * 7 + i + salt + j * (k + 2)) % (VOCAB as usize - 3) + 3) as u32)
                    .collect();
                w.push_sequence(split, d, &row).unwrap();
            }
        }
    }
    w.finish().unwrap();
    ShardSet::open(dir).unwrap()
}

fn run(
    tmp: &std::path::Path,
    strategy: StrategyConfig,
    teacher: &TeacherSection,
    resume: bool,
    steps: u64,
) -> Vec<serde_json::Value> {
    run_in(tmp, "run", strategy, teacher, resume, steps).unwrap()
}

fn run_in(
    tmp: &std::path::Path,
    run_name: &str,
    strategy: StrategyConfig,
    teacher: &TeacherSection,
    resume: bool,
    steps: u64,
) -> mome_moe::Result<Vec<serde_json::Value>> {
    run_kernels(
        tmp,
        run_name,
        strategy,
        teacher,
        (resume, steps),
        &KernelConfig::default(),
    )
}

/// [`run_in`] with the run's `[train.kernels]`.
fn run_kernels(
    tmp: &std::path::Path,
    run_name: &str,
    strategy: StrategyConfig,
    teacher: &TeacherSection,
    (resume, steps): (bool, u64),
    kernels: &KernelConfig,
) -> mome_moe::Result<Vec<serde_json::Value>> {
    let cfg = MoeConfig {
        arch: Arch::Jeet,
        domains: vec!["en".into(), "fr".into()],
        expert: shape(),
        common_expert: false,
        low_confidence_to_common: true,
    };
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = MoeModel::new(&vs.root(), &cfg).unwrap();
    let source = ShardBatches::new(
        ShardSet::open(&tmp.join("shards")).unwrap(),
        "train",
        SamplerConfig {
            kind: SamplerKind::Blocks,
            batch_size: 3,
            seed: 0,
            domains: vec![],
        },
    )
    .unwrap();
    let settings = DistillSettings {
        kd_chunk: None,
        loss: KdLoss::ForwardKl,
        temperature: 2.0,
        strategy,
    };
    let mut loss = DistillLoss::new(
        teacher,
        &settings,
        &cfg.expert,
        Device::Cpu,
        mome_core::Precision::Fp32,
    )
    .unwrap()
    .with_kernels(kernels, Device::Cpu, tch::Kind::Float)
    .unwrap();
    let mut train = TrainConfig::new(steps, 1e-3);
    train.quiet = true;
    train.log_every = 1;
    train.checkpoint_every = 2;
    let run_dir = tmp.join(run_name);
    train_moe(
        &model,
        &vs,
        source,
        train,
        &RunOptions {
            run_dir: &run_dir,
            resume,
            group: None,
            prefetch: true,
        },
        &mut loss,
        None,
    )?;
    Ok(
        std::fs::read_to_string(run_dir.join(mome_distill::DISTILL_METRICS))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
    )
}

/// A tiny random teacher saved in `tmp/teacher` (seed 9), as an online teacher.
fn online_teacher(tmp: &std::path::Path) -> TeacherSection {
    tch::manual_seed(9);
    let tvs = nn::VarStore::new(Device::Cpu);
    let t = Gpt2LmHeadModel::new(&tvs.root(), &shape()).unwrap();
    t.save_pretrained(tmp.join("teacher")).unwrap();
    TeacherSection {
        dir: Some(tmp.join("teacher")),
        cache: None,
        bf16: None,
    }
}

#[test]
fn kd_run_logs_kd_loss_and_alpha_and_resumes() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    shards(&tmp.path().join("shards"));
    let teacher = online_teacher(tmp.path());
    let lines = run(
        tmp.path(),
        StrategyConfig::Fixed { alpha: 0.25 },
        &teacher,
        false,
        4,
    );
    assert_eq!(lines.len(), 4);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["kind"], "distill");
        assert_eq!(l["step"], i as u64 + 1);
        assert_eq!(l["alpha"], 0.25);
        assert_eq!(l["beta"], 0.75);
        let kd = l["kd"].as_f64().unwrap();
        assert!(kd.is_finite() && kd > 0.0, "{l}");
        // blocks sampler: domains alternate
        assert_eq!(l["domain"], (i % 2) as u64);
    }
    // The trainer's loss is alpha * CE + beta * KD.
    let metrics: Vec<serde_json::Value> =
        std::fs::read_to_string(tmp.path().join("run/metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["kind"] == "train")
            .collect();
    let l0 = &lines[0];
    let want = 0.25 * l0["ce"].as_f64().unwrap() + 0.75 * l0["kd"].as_f64().unwrap();
    let got = metrics[0]["loss"].as_f64().unwrap();
    assert!((got - want).abs() < 1e-4 * want.max(1.0), "{got} vs {want}");

    // Resume to 6 steps: the file is continued, not restarted.
    let lines = run(
        tmp.path(),
        StrategyConfig::Fixed { alpha: 0.25 },
        &teacher,
        true,
        6,
    );
    let steps: Vec<u64> = lines.iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5, 6]);

    // Alternating: even steps are KD only, odd steps CE only (teacher skipped).
    let tmp2 = tempfile::tempdir().unwrap();
    shards(&tmp2.path().join("shards"));
    let lines = run(tmp2.path(), StrategyConfig::Alternating, &teacher, false, 2);
    assert_eq!(lines[0]["alpha"], 1.0);
    assert!(lines[0]["kd"].is_null());
    assert_eq!(lines[1]["alpha"], 0.0);
    assert!(lines[1]["kd"].as_f64().unwrap() > 0.0);

    // A missing teacher cache or a missing teacher is an error up front.
    let settings = DistillSettings::default();
    let cache = TeacherSection {
        dir: None,
        cache: Some(tmp.path().join("cache")),
        bf16: None,
    };
    assert!(DistillLoss::new(
        &cache,
        &settings,
        &shape(),
        Device::Cpu,
        mome_core::Precision::Fp32
    )
    .is_err());
    assert!(DistillLoss::new(
        &TeacherSection::default(),
        &settings,
        &shape(),
        Device::Cpu,
        mome_core::Precision::Fp32
    )
    .is_err());
    let mut other = shape();
    other.vocab_size = VOCAB + 1;
    let e = DistillLoss::new(
        &teacher,
        &settings,
        &other,
        Device::Cpu,
        mome_core::Precision::Fp32,
    )
    .unwrap_err();
    assert!(e.to_string().contains("vocabulary"), "{e}");
}

#[test]
fn kd_from_teacher_cache_matches_online_teacher() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let shards_dir = tmp.path().join("shards");
    shards(&shards_dir);
    let tdir = online_teacher(tmp.path()).dir.unwrap();
    let cdir = tmp.path().join("cache");
    let opts = CacheBuildOptions {
        top_k: VOCAB as usize,
        temperature: 2.0,
        value_dtype: ValueDtype::F16,
        splits: vec!["train".into()],
        batch_size: 4,
        ..Default::default()
    };
    build_cache(&tdir, &shards_dir, &cdir, &opts, Device::Cpu).unwrap();

    let online = TeacherSection {
        dir: Some(tdir.clone()),
        cache: None,
        bf16: None,
    };
    let cached = TeacherSection {
        dir: None,
        cache: Some(cdir.clone()),
        bf16: None,
    };
    let both = TeacherSection {
        dir: Some(tdir.clone()),
        cache: Some(cdir.clone()),
        bf16: None,
    };
    let strategy = StrategyConfig::Fixed { alpha: 0.25 };
    let a = run_in(tmp.path(), "online", strategy.clone(), &online, false, 4).unwrap();
    let b = run_in(tmp.path(), "cached", strategy.clone(), &cached, false, 4).unwrap();
    let c = run_in(tmp.path(), "both", strategy.clone(), &both, false, 4).unwrap();
    assert_eq!(a.len(), 4);
    assert_eq!(b.len(), 4);
    assert_eq!(c.len(), 4);
    for ((la, lb), lc) in a.iter().zip(&b).zip(&c) {
        assert_eq!(lb["kind"], "distill");
        assert_eq!(la["step"], lb["step"]);
        assert_eq!(la["domain"], lb["domain"]);
        assert_eq!(lb["alpha"], 0.25);
        let (ka, kb, kc) = (
            la["kd"].as_f64().unwrap(),
            lb["kd"].as_f64().unwrap(),
            lc["kd"].as_f64().unwrap(),
        );
        assert!(kb.is_finite() && kb > 0.0, "{lb}");
        // top_k = vocab: only the f16 rounding of the stored log-probs differs
        // (about 1e-3 absolute on log-probs near -ln(vocab)).
        assert!((ka - kb).abs() < 5e-4 + 2e-2 * ka, "{ka} vs {kb}");
        assert!((kb - kc).abs() < 5e-4 + 2e-2 * kb, "{kb} vs {kc}");
        let (ca, cb) = (la["ce"].as_f64().unwrap(), lb["ce"].as_f64().unwrap());
        assert!((ca - cb).abs() < 1e-2 * ca, "{ca} vs {cb}");
    }

    // Checked against the shards before any step: other shards are an error.
    let tmp2 = tempfile::tempdir().unwrap();
    shards_salted(&tmp2.path().join("shards"), 1);
    let e = run_in(tmp2.path(), "run", strategy.clone(), &cached, false, 2).unwrap_err();
    assert!(e.to_string().contains("shards"), "{e}");
    assert!(!tmp2
        .path()
        .join("run")
        .join(mome_distill::DISTILL_METRICS)
        .exists());

    // ... and against the vocabulary, the temperature and the teacher.
    let settings = DistillSettings {
        kd_chunk: None,
        loss: KdLoss::ForwardKl,
        temperature: 2.0,
        strategy,
    };
    // `check_data` (what `mome moe train` runs before creating its run folder).
    let k = DistillLoss::new(
        &cached,
        &settings,
        &shape(),
        Device::Cpu,
        mome_core::Precision::Fp32,
    )
    .unwrap();
    k.check_data(&ShardSet::open(&shards_dir).unwrap(), "train")
        .unwrap();
    let e = k
        .check_data(
            &ShardSet::open(&tmp2.path().join("shards")).unwrap(),
            "train",
        )
        .unwrap_err();
    assert!(e.to_string().contains("shards"), "{e}");
    let mut other = shape();
    other.vocab_size = VOCAB + 1;
    let e = DistillLoss::new(
        &cached,
        &settings,
        &other,
        Device::Cpu,
        mome_core::Precision::Fp32,
    )
    .unwrap_err();
    assert!(e.to_string().contains("vocabulary"), "{e}");
    let t1 = DistillSettings {
        kd_chunk: None,
        temperature: 1.0,
        ..settings.clone()
    };
    let e = DistillLoss::new(
        &cached,
        &t1,
        &shape(),
        Device::Cpu,
        mome_core::Precision::Fp32,
    )
    .unwrap_err();
    assert!(e.to_string().contains("temperature"), "{e}");
    tch::manual_seed(10);
    let tvs2 = nn::VarStore::new(Device::Cpu);
    let t2 = Gpt2LmHeadModel::new(&tvs2.root(), &shape()).unwrap();
    let tdir2 = tmp.path().join("teacher2");
    t2.save_pretrained(&tdir2).unwrap();
    let wrong = TeacherSection {
        dir: Some(tdir2),
        cache: Some(cdir),
        bf16: None,
    };
    assert!(DistillLoss::new(
        &wrong,
        &settings,
        &shape(),
        Device::Cpu,
        mome_core::Precision::Fp32
    )
    .is_err());
}

/// JEET's KD with `linear_kd = "chunked"` (the expert's heads, CE and KD in chunks,
/// the online teacher's head chunked too) logs what the reference path logs.
#[test]
fn chunked_linear_kd_matches_the_reference_in_moe_training() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    shards(&tmp.path().join("shards"));
    let teacher = online_teacher(tmp.path());
    let strategy = StrategyConfig::Adaptive {
        alpha: 0.5,
        history: Some(2),
    };
    let with = |name: &str, mode: LinearCeMode| {
        let k = KernelConfig {
            linear_kd: mode,
            ce_chunk: 5,
            ..Default::default()
        };
        run_kernels(tmp.path(), name, strategy.clone(), &teacher, (false, 4), &k).unwrap()
    };
    let a = with("reference", LinearCeMode::Reference);
    let b = with("chunked", LinearCeMode::Chunked);
    assert_eq!(a.len(), 4);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x["domain"], y["domain"]);
        for key in ["ce", "kd", "alpha", "beta"] {
            let (u, v) = (x[key].as_f64().unwrap(), y[key].as_f64().unwrap());
            assert!(
                (u - v).abs() <= 1e-4 * u.abs().max(1.0),
                "step {}: {key} {u} vs {v}",
                x["step"]
            );
        }
    }
}
