//! Criterion bench of the optimizer step and gradient clipping over the parameters of
//! the GPT-2 shapes mome trains (HF names, so the weight-decay groups are the real
//! ones): the three AdamW implementations (`fused`, libtorch's `_fused_adamw_`;
//! `flat`; `per-param`) and clipping (mome's multi-tensor `grad_norm_tensor` +
//! `clip_grads_with_norm` against the per-parameter reduction they replaced, kept
//! here as the reference).
//!
//! On the CPU: the 3-layer student (d = 768, 32000 tokens, 46M parameters). With
//! CUDA (a GPU build, e.g. `cargo bench -p mome-core --bench optim` on the device
//! machine): the student and GPT-2 Medium (the teacher config, 24 × 1024, 355M
//! parameters). Each iteration on CUDA ends with a device synchronisation.
//! `MOME_BENCH_SHAPES=student-3l` (or `teacher-medium`) and `MOME_BENCH_DEVICES=cuda`
//! (or `cpu`) limit the cases.

use std::time::Duration;

use criterion::{criterion_main, Criterion};
use mome_core::optim::{AdamW, AdamWConfig, AdamWImpl};
use mome_core::schedule::{clip_grads_with_norm, grad_norm_tensor};
use tch::{Device, Kind, Tensor};

/// `(name, shape)` of GPT-2's parameters (HF keys) for `n_layer` blocks of width `d`.
fn gpt2_shapes(n_layer: usize, d: i64, vocab: i64, positions: i64) -> Vec<(String, Vec<i64>)> {
    let mut v = vec![
        ("transformer.wte.weight".to_string(), vec![vocab, d]),
        ("transformer.wpe.weight".to_string(), vec![positions, d]),
        ("transformer.ln_f.weight".to_string(), vec![d]),
        ("transformer.ln_f.bias".to_string(), vec![d]),
    ];
    for i in 0..n_layer {
        let h = format!("transformer.h.{i}");
        for (n, s) in [
            ("ln_1.weight", vec![d]),
            ("ln_1.bias", vec![d]),
            ("attn.c_attn.weight", vec![d, 3 * d]),
            ("attn.c_attn.bias", vec![3 * d]),
            ("attn.c_proj.weight", vec![d, d]),
            ("attn.c_proj.bias", vec![d]),
            ("ln_2.weight", vec![d]),
            ("ln_2.bias", vec![d]),
            ("mlp.c_fc.weight", vec![d, 4 * d]),
            ("mlp.c_fc.bias", vec![4 * d]),
            ("mlp.c_proj.weight", vec![4 * d, d]),
            ("mlp.c_proj.bias", vec![d]),
        ] {
            v.push((format!("{h}.{n}"), s));
        }
    }
    v
}

/// fp32 leaves of the given shapes on `device`, each with a gradient.
fn params_with_grads(shapes: &[(String, Vec<i64>)], device: Device) -> Vec<(String, Tensor)> {
    let ps: Vec<(String, Tensor)> = shapes
        .iter()
        .map(|(n, s)| {
            let t =
                (Tensor::randn(s.as_slice(), (Kind::Float, device)) * 0.02).set_requires_grad(true);
            (n.clone(), t)
        })
        .collect();
    let mut loss = Tensor::zeros([], (Kind::Float, device));
    for (_, p) in &ps {
        loss += (p * 1e-3).sum(Kind::Float);
    }
    loss.backward();
    ps
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// The per-parameter clipping mome used before the multi-tensor kernels: a squared
/// sum per gradient, a stack, then one in-place multiply per gradient.
fn clip_per_param(params: &[Tensor], max_norm: f64) {
    let _g = tch::no_grad_guard();
    let sq: Vec<Tensor> = params
        .iter()
        .map(|p| p.grad().to_kind(Kind::Float).square().sum(Kind::Float))
        .collect();
    let norm = Tensor::stack(&sq, 0).sum(Kind::Float).sqrt();
    let coef = ((norm + 1e-6).reciprocal() * max_norm).clamp_max(1.0);
    for p in params {
        let _ = p.grad().f_mul_(&coef).expect("mul_");
    }
}

fn bench(c: &mut Criterion) {
    let mut cases = vec![("student-3l", Device::Cpu, gpt2_shapes(3, 768, 32000, 1024))];
    if tch::Cuda::is_available() {
        cases.push((
            "student-3l",
            Device::Cuda(0),
            gpt2_shapes(3, 768, 32000, 1024),
        ));
        cases.push((
            "teacher-medium",
            Device::Cuda(0),
            gpt2_shapes(24, 1024, 32000, 1024),
        ));
    }
    if let Ok(only) = std::env::var("MOME_BENCH_SHAPES") {
        cases.retain(|(name, _, _)| *name == only);
    }
    if let Ok(only) = std::env::var("MOME_BENCH_DEVICES") {
        cases.retain(|(_, d, _)| (if d.is_cuda() { "cuda" } else { "cpu" }) == only);
    }
    for (name, device, shapes) in cases {
        let dev = if device.is_cuda() { "cuda" } else { "cpu" };
        let named = params_with_grads(&shapes, device);
        let params: Vec<Tensor> = named.iter().map(|(_, t)| t.shallow_clone()).collect();
        let mut g = c.benchmark_group(format!("adamw/{name}/{dev}"));
        g.sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3));
        for imp in [AdamWImpl::Fused, AdamWImpl::Flat, AdamWImpl::PerParam] {
            let cfg = AdamWConfig {
                lr: 1e-4,
                weight_decay: 0.1,
                ..Default::default()
            };
            let mut opt = AdamW::from_params(
                named
                    .iter()
                    .map(|(n, t)| (n.clone(), t.shallow_clone()))
                    .collect(),
                cfg,
            )
            .expect("optimizer")
            .with_impl(imp);
            g.bench_function(format!("{imp:?}").to_lowercase(), |b| {
                b.iter(|| {
                    opt.step(1e-4).expect("step");
                    sync(device);
                })
            });
        }
        g.finish();
        let mut g = c.benchmark_group(format!("clip/{name}/{dev}"));
        g.sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3));
        g.bench_function("foreach", |b| {
            b.iter(|| {
                let norm = grad_norm_tensor(&params).expect("norm").expect("grads");
                clip_grads_with_norm(&params, &norm, 1.0).expect("clip");
                sync(device);
            })
        });
        g.bench_function("per-param-reference", |b| {
            b.iter(|| {
                clip_per_param(&params, 1.0);
                sync(device);
            })
        });
        g.finish();
    }
}

#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::bench);
}
use group::benches;
criterion_main!(benches);
