//! Teacher cache: round trip, equivalence with the online teacher, mismatches.

mod common;

use approx::assert_relative_eq;
use common::*;
use mome_data::shards::ShardSet;
use mome_distill::losses::{kd_loss, KdLoss, Teacher};
use mome_distill::{
    build_cache, CacheBuildOptions, DistillSettings, Error, StrategyConfig, TeacherCache,
    TeacherSection, ValueDtype,
};
use mome_experts::{Gpt2Input, Gpt2LmHeadModel};
use tch::{Device, Kind, Tensor};

#[test]
fn cache_round_trip_equivalence_and_mismatches() {
    let root = tempfile::tempdir().unwrap();
    let shards_dir = make_shards(&root.path().join("shards"), 3, 40);
    let teacher = train_teacher(root.path(), &shards_dir, 20);
    let temp = 2.0;
    let full = root.path().join("cache-full");
    let opts = CacheBuildOptions {
        top_k: VOCAB,
        temperature: temp,
        value_dtype: ValueDtype::F16,
        splits: vec!["train".into(), "validation".into()],
        batch_size: 7,
        ..Default::default()
    };
    let m = build_cache(&teacher, &shards_dir, &full, &opts, Device::Cpu).unwrap();
    assert_eq!(m.bytes_per_token(), VOCAB * 4); // u16 ids + f16 values
    let sizes: u64 = std::fs::read_dir(full.join("train"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(sizes, (2 * 40 * SEQ * VOCAB * 4) as u64);

    // Round trip: the stored rows are the teacher's log-probs (f16-rounded).
    let shards = ShardSet::open(&shards_dir).unwrap();
    let cache = TeacherCache::open(&full).unwrap();
    cache.check_shards(&shards, "train").unwrap();
    cache.check_teacher(&teacher).unwrap();
    let (_vs, tmodel) = Gpt2LmHeadModel::from_pretrained(&teacher, Device::Cpu).unwrap();
    let items: Vec<(&str, usize)> = vec![("a", 0), ("b", 39), ("a", 17)];
    let mut ids = Vec::new();
    for (d, i) in &items {
        ids.extend(
            shards
                .sequence("train", d, *i)
                .unwrap()
                .iter()
                .map(|&x| x as i64),
        );
    }
    let ids = Tensor::from_slice(&ids).view([3, SEQ as i64]);
    let logits = tch::no_grad(|| tmodel.forward(Gpt2Input::ids(&ids)))
        .unwrap()
        .logits;
    let lt = (&logits / temp).log_softmax(-1, Kind::Float);
    let sp = cache.rows("train", &items, Device::Cpu).unwrap();
    assert_eq!(sp.ids.size(), [3, SEQ as i64, VOCAB as i64]);
    let back = lt.gather(-1, &sp.ids, false);
    let err = (&back - &sp.logprobs).abs().max().double_value(&[]);
    assert!(err < 1e-2, "max |log p - cached| = {err}");
    // sorted descending
    let d = sp.logprobs.narrow(2, 1, VOCAB as i64 - 1) - sp.logprobs.narrow(2, 0, VOCAB as i64 - 1);
    assert!(d.max().double_value(&[]) <= 0.0);

    // top-K = V gives the same loss as the online teacher.
    tch::manual_seed(9);
    let zs = Tensor::randn([3, SEQ as i64, VOCAB as i64], (Kind::Float, Device::Cpu)) * 2.0;
    for kind in KdLoss::ALL {
        let online = kd_loss(kind, &zs, Teacher::Logits(&logits), None, temp).unwrap();
        let cached = kd_loss(kind, &zs, Teacher::TopK(&sp), None, temp).unwrap();
        let (a, b) = (online.loss.double_value(&[]), cached.loss.double_value(&[]));
        eprintln!(
            "{kind}: online {a:.6} cache {b:.6} rel diff {:.2e}",
            (a - b).abs() / a
        );
        assert_relative_eq!(a, b, max_relative = 5e-3);
    }

    // A top-8 cache: valid sparse teacher, rest bucket used; bf16 values.
    let small = root.path().join("cache-8");
    let o8 = CacheBuildOptions {
        top_k: 8,
        value_dtype: ValueDtype::Bf16,
        temperature: temp,
        ..Default::default()
    };
    let m8 = build_cache(&teacher, &shards_dir, &small, &o8, Device::Cpu).unwrap();
    assert_eq!(m8.bytes_per_token(), 32);
    let c8 = TeacherCache::open(&small).unwrap();
    let sp8 = c8.rows("train", &items, Device::Cpu).unwrap();
    let fkl8 = kd_loss(KdLoss::ForwardKl, &zs, Teacher::TopK(&sp8), None, temp).unwrap();
    let fkl = kd_loss(KdLoss::ForwardKl, &zs, Teacher::Logits(&logits), None, temp).unwrap();
    let (l8, l) = (fkl8.loss.double_value(&[]), fkl.loss.double_value(&[]));
    assert!(
        l8.is_finite() && l8 <= l * 1.01 + 1e-4,
        "bucketed KL {l8} vs full {l}"
    );

    // Distillation reads the cache (and stays close to the online run with K = V).
    let student = model(1, 16, 2);
    let settings = DistillSettings {
        kd_chunk: None,
        loss: KdLoss::ForwardKl,
        temperature: temp,
        strategy: StrategyConfig::Fixed { alpha: 0.5 },
    };
    let mk = |name: &str, t: TeacherSection| {
        job(
            &root.path().join(name),
            &shards_dir,
            student.clone(),
            t,
            train_cfg(6, 5e-3, 2),
            settings.clone(),
            4,
        )
    };
    let on = common::run(&mk(
        "online",
        TeacherSection {
            dir: Some(teacher.clone()),
            ..Default::default()
        },
    ))
    .unwrap();
    let off = common::run(&mk(
        "offline",
        TeacherSection {
            cache: Some(full.clone()),
            dir: Some(teacher.clone()),
            ..Default::default()
        },
    ))
    .unwrap();
    let (a, b) = (
        on.summary.final_loss.unwrap(),
        off.summary.final_loss.unwrap(),
    );
    assert_relative_eq!(a, b, max_relative = 1e-2);

    // Cache of other shards -> typed error before any step.
    let other = make_shards(&root.path().join("other-shards"), 99, 40);
    let j = job(
        &root.path().join("bad1"),
        &other,
        student.clone(),
        TeacherSection {
            cache: Some(full.clone()),
            ..Default::default()
        },
        train_cfg(2, 1e-3, 0),
        settings.clone(),
        4,
    );
    let e = common::run(&j).unwrap_err();
    assert!(matches!(e, Error::CacheMismatch { .. }), "{e}");
    assert!(!root.path().join("bad1").exists());
    // Cache of another teacher.
    let teacher2 = train_teacher(&root.path().join("t2"), &shards_dir, 3);
    let j = job(
        &root.path().join("bad2"),
        &shards_dir,
        student.clone(),
        TeacherSection {
            cache: Some(full.clone()),
            dir: Some(teacher2),
            ..Default::default()
        },
        train_cfg(2, 1e-3, 0),
        settings.clone(),
        4,
    );
    let e = common::run(&j).unwrap_err();
    assert!(matches!(e, Error::CacheMismatch { .. }), "{e}");
    // Another temperature.
    let mut s1 = settings.clone();
    s1.temperature = 1.0;
    let j = job(
        &root.path().join("bad3"),
        &shards_dir,
        student.clone(),
        TeacherSection {
            cache: Some(full.clone()),
            ..Default::default()
        },
        train_cfg(2, 1e-3, 0),
        s1,
        4,
    );
    assert!(matches!(
        common::run(&j).unwrap_err(),
        Error::CacheMismatch { .. }
    ));
    // Not a cache.
    assert!(matches!(
        TeacherCache::open(root.path()).unwrap_err(),
        Error::Cache { .. }
    ));
    // Damaged file.
    std::fs::write(small.join("train/a.ids.bin"), b"xx").unwrap();
    assert!(matches!(
        TeacherCache::open(&small).unwrap_err(),
        Error::Cache { .. }
    ));
}
