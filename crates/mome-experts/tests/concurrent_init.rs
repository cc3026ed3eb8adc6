//! libtorch's default generator is shared by the threads of a process: a seeded
//! initialisation (`seeded_model`) gives the same weights while another thread
//! loads models (`from_pretrained` draws a random initialisation before loading),
//! as ranks on threads of one process do (mome_core::rng). Before the lock, rank 0's
//! student came out different now and then, and a data-parallel test flaked.

mod common;

use common::tiny_config;
use mome_core::TrainConfig;
use mome_experts::train::seeded_model;
use mome_experts::Gpt2LmHeadModel;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tch::Device;

fn weights(vs: &tch::nn::VarStore) -> Vec<(String, tch::Tensor)> {
    let mut v: Vec<_> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn a_seeded_model_is_the_same_while_another_thread_loads_models() {
    let cfg = tiny_config();
    let train = TrainConfig::new(1, 1e-3);
    let (alone, _m) = seeded_model(&cfg, Device::Cpu, &train).unwrap();
    let alone = weights(&alone);

    let dir = tempfile::tempdir().unwrap();
    let (_vs, saved) = seeded_model(&cfg, Device::Cpu, &train).unwrap();
    saved.save_pretrained(dir.path()).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let loader = {
        let (stop, path) = (stop.clone(), dir.path().to_path_buf());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                Gpt2LmHeadModel::from_pretrained(&path, Device::Cpu).unwrap();
                n += 1;
            }
            n
        })
    };
    for _ in 0..40 {
        let (vs, _m) = seeded_model(&cfg, Device::Cpu, &train).unwrap();
        let d = mome_core::tensor_io::max_abs_diff(&alone, &weights(&vs)).unwrap();
        assert_eq!(
            d, 0.0,
            "the seeded weights changed while another thread loaded models"
        );
    }
    stop.store(true, Ordering::Relaxed);
    assert!(loader.join().unwrap() > 0);
}
