//! The fused linear KD on a GPU (`--features cuda`): `chunked` and `fused` against
//! the reference path in values and gradients, every divergence, dense (chunked
//! teacher head) and top-K teachers, fp32 and bf16 compute.
#![cfg(feature = "cuda")]

use mome_core::fusion::{KernelConfig, LinearCe};
use mome_distill::linear_kd::{linear_kd_loss, HeadTeacher, KdWeights, LinearKd};
use mome_distill::{KdLoss, SparseTeacher};
use tch::{Device, Kind, Tensor};

const DEV: Device = Device::Cuda(0);

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().to_kind(Kind::Double).double_value(&[])
}

fn close(a: &Tensor, b: &Tensor, rel: f64, what: &str) {
    let d = max_abs(&(a.to_kind(Kind::Double) - b.to_kind(Kind::Double)));
    let bound = rel * max_abs(b);
    assert!(d <= bound, "{what}: max |diff| {d} > {bound}");
}

#[test]
fn fused_and_chunked_linear_kd_match_the_reference() {
    tch::manual_seed(21);
    let (b, t, d, dt, v) = (3, 100, 64, 96, 4096);
    let o = (Kind::Float, DEV);
    let h = Tensor::randn([b, t, d], o).set_requires_grad(true);
    let w = (Tensor::randn([v, d], o) * 0.2).set_requires_grad(true);
    let th = Tensor::randn([b, t, dt], o);
    let tw = Tensor::randn([v, dt], o) * 0.2;
    let ids = Tensor::randint(v, [b, t], (Kind::Int64, DEV));
    let (top, top_ids) = (th.linear::<Tensor>(&tw, None) / 2.0)
        .log_softmax(-1, Kind::Float)
        .topk(32, -1, true, true);
    let sparse = SparseTeacher {
        ids: top_ids,
        logprobs: top,
        vocab_size: v,
    };
    let k = KernelConfig {
        ce_chunk: 128,
        ..Default::default()
    };
    for (compute, rel) in [(Kind::Float, 1e-3), (Kind::BFloat16, 3e-2)] {
        let thk = th.to_kind(compute);
        let twk = tw.to_kind(compute);
        for kind in KdLoss::ALL {
            let teachers = [
                (
                    "head",
                    HeadTeacher::Head {
                        hidden: &thk,
                        weight: &twk,
                        compute,
                    },
                ),
                ("top-k", HeadTeacher::TopK(&sparse)),
            ];
            for (tn, teacher) in teachers {
                let run = |how: LinearCe| {
                    h.shallow_clone().zero_grad();
                    w.shallow_clone().zero_grad();
                    let input = LinearKd {
                        hidden: &h,
                        weight: &w,
                        compute,
                        input_ids: &ids,
                        teacher,
                        loss: kind,
                        temperature: 2.0,
                    };
                    let out = linear_kd_loss(
                        &input,
                        KdWeights::Fixed {
                            alpha: 0.4,
                            beta: 0.6,
                        },
                        how,
                        &k,
                    )
                    .unwrap();
                    out.loss.backward();
                    (
                        out.ce.double_value(&[]),
                        out.kd.double_value(&[]),
                        h.grad().copy(),
                        w.grad().copy(),
                    )
                };
                let (ce0, kd0, gh0, gw0) = run(LinearCe::Reference);
                for how in [LinearCe::Chunked, LinearCe::Fused] {
                    let what = format!("{compute:?} {kind} {tn} {how:?}");
                    let (ce1, kd1, gh1, gw1) = run(how);
                    assert!(
                        (ce0 - ce1).abs() <= 1e-3 * ce0.abs(),
                        "{what}: CE {ce1} vs {ce0}"
                    );
                    assert!(
                        (kd0 - kd1).abs() <= 1e-3 * kd0.abs() + 1e-4,
                        "{what}: KD {kd1} vs {kd0}"
                    );
                    close(&gh1, &gh0, rel, &format!("{what} dL/dh"));
                    close(&gw1, &gw0, rel, &format!("{what} dL/dW"));
                }
            }
        }
    }
}
