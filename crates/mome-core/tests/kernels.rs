//! mome's CUDA kernels: every source compiles with NVRTC (on the CPU machine: NVRTC
//! needs no GPU), and, with `--features cuda` on a GPU, each fused path agrees with its
//! plain-libtorch reference in values and gradients, for fp32 and bf16.

use mome_core::kernels::{compile_check, kd_xent_grad_reference, KdXent, SoftTarget, SOURCES};
use mome_core::norm::{add_layer_norm, AddLayerNorm, AddLnPath};
use tch::{Device, Kind, Tensor};

/// One add + layer norm case: residual, branch and output kinds, with or without a
/// branch, `rows x d`.
#[derive(Clone, Copy, Debug)]
struct LnCase {
    x: Kind,
    y: Option<Kind>,
    out: Kind,
    rows: i64,
    d: i64,
}

/// The kind combinations the add + layer norm kernels take: a trained model's fp32
/// residual with a bf16 or fp32 branch and output, and a bf16 teacher's.
fn ln_cases(rows: i64, d: i64) -> Vec<LnCase> {
    use Kind::{BFloat16 as B, Float as F};
    let c = |x, y, out| LnCase { x, y, out, rows, d };
    vec![
        c(F, Some(F), F),
        c(F, Some(B), B),
        c(F, Some(B), F),
        c(F, None, B),
        c(B, Some(B), B),
        c(B, None, B),
    ]
}

/// Values and gradients (x, weight, bias, then y) of `path` for a loss using both
/// outputs, in fp32.
fn add_ln_run(c: LnCase, path: AddLnPath, dev: Device) -> Vec<Tensor> {
    // Deterministic inputs (tests share libtorch's global generator across threads).
    let wave =
        |n: i64, k: f64, phase: f64| (Tensor::arange(n, (Kind::Float, dev)) * k + phase).sin();
    let shape = [2, c.rows / 2, c.d];
    let n = c.rows / 2 * 2 * c.d;
    let x = (wave(n, 0.37, 0.0) * 2.0 + 0.3)
        .reshape(shape)
        .to_kind(c.x)
        .set_requires_grad(true);
    let y = (wave(n, 1.13, 1.0) * 1.5)
        .reshape(shape)
        .to_kind(c.y.unwrap_or(c.x))
        .set_requires_grad(true);
    let w = (wave(c.d, 0.71, 2.0) * 0.1 + 1.0)
        .to_kind(c.x)
        .set_requires_grad(true);
    let b = (wave(c.d, 0.53, 3.0) * 0.1)
        .to_kind(c.x)
        .set_requires_grad(true);
    let a = AddLayerNorm {
        residual: &x,
        branch: c.y.is_some().then_some(&y),
        weight: &w,
        bias: &b,
        eps: 1e-5,
        dropout: 0.0,
        out_kind: c.out,
    };
    let o = add_layer_norm(&a, path).unwrap();
    assert_eq!((o.normed.kind(), o.normed.size()), (c.out, shape.to_vec()));
    let gy = wave(n, 0.91, 4.0).reshape(shape);
    let gs = wave(n, 0.29, 5.0).reshape(shape);
    let loss = (o.normed.to_kind(Kind::Float) * &gy).sum(Kind::Float)
        + (o.sum.to_kind(Kind::Float) * gs).sum(Kind::Float);
    loss.backward();
    let mut out = vec![o.sum.detach(), o.normed.detach()];
    out.extend([x.grad(), w.grad(), b.grad()]);
    if c.y.is_some() {
        out.push(y.grad());
    }
    out.into_iter().map(|t| t.to_kind(Kind::Float)).collect()
}

/// The fused function and the reference agree within `tol` relative to each output's
/// largest magnitude.
fn add_ln_agrees(c: LnCase, dev: Device) {
    let fused = add_ln_run(c, AddLnPath::Fused, dev);
    let reference = add_ln_run(c, AddLnPath::Reference, dev);
    let tol = if c.x == Kind::Float && c.y != Some(Kind::BFloat16) && c.out == Kind::Float {
        1e-4
    } else {
        2e-2
    };
    for (i, (f, r)) in fused.iter().zip(&reference).enumerate() {
        let scale = r.abs().max().double_value(&[]).max(1.0);
        let diff = (f - r).abs().max().double_value(&[]);
        assert!(
            diff <= tol * scale,
            "{c:?} output {i}: max diff {diff} (scale {scale})"
        );
    }
}

/// The fused function's branch dropout on `dev`: the dropped fraction is near `p`, the
/// kept elements are scaled by `1 / (1 - p)`, and the backward drops the same elements
/// (the mask is recomputed from the seed): `dy = gs * keep / (1 - p)`, `dx = gs`.
fn add_ln_dropout_is_consistent(dev: Device, kind: Kind) {
    let (rows, d, p) = (256i64, 96i64, 0.1f64);
    let f = (Kind::Float, dev);
    let n = rows * d;
    let x = (Tensor::arange(n, f) * 0.37)
        .sin()
        .reshape([rows, d])
        .set_requires_grad(true);
    // A branch without zeros, so that a zero of sum - x is a dropped element.
    let y = ((Tensor::arange(n, f) * 1.13).sin().abs() + 0.5)
        .reshape([rows, d])
        .to_kind(kind)
        .set_requires_grad(true);
    let w = Tensor::ones([d], f).set_requires_grad(true);
    let b = Tensor::zeros([d], f).set_requires_grad(true);
    let a = AddLayerNorm {
        residual: &x,
        branch: Some(&y),
        weight: &w,
        bias: &b,
        eps: 1e-5,
        dropout: p,
        out_kind: kind,
    };
    let o = add_layer_norm(&a, AddLnPath::Fused).unwrap();
    let added = (&o.sum - &x).detach();
    let kept = added.abs().gt(1e-6);
    let frac = 1.0
        - kept
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[]);
    assert!((frac - p).abs() < 0.02, "{kind:?}: dropped {frac}");
    let yf = y.detach().to_kind(Kind::Float);
    let want = (&yf / (1.0 - p)).where_self(&kept, &yf.zeros_like());
    let tol = if kind == Kind::Float { 1e-5 } else { 2e-2 };
    assert!((&added - &want).abs().max().double_value(&[]) < tol);
    let gs = (Tensor::arange(n, f) * 0.29).cos().reshape([rows, d]);
    (o.sum * &gs).sum(Kind::Float).backward();
    let gy = y.grad().to_kind(Kind::Float);
    let want = (&gs / (1.0 - p)).where_self(&kept, &gs.zeros_like());
    assert!(
        (&gy - &want).abs().max().double_value(&[]) < tol,
        "{kind:?}: dy"
    );
    assert!((x.grad() - &gs).abs().max().double_value(&[]) < 1e-6);
}

#[test]
fn add_layer_norm_dropout_masks_forward_and_backward_alike_on_the_cpu() {
    for kind in [Kind::Float, Kind::BFloat16] {
        add_ln_dropout_is_consistent(Device::Cpu, kind);
    }
}

/// On the CPU the fused autograd function runs the kernels' libtorch references: this
/// checks its wiring (saved tensors, both outputs' gradients, kinds) against autograd.
#[test]
fn add_layer_norm_function_matches_autograd_on_the_cpu() {
    for c in ln_cases(10, 24) {
        add_ln_agrees(c, Device::Cpu);
    }
}

#[test]
fn nvrtc_compiles_every_kernel_for_ampere_and_hopper() {
    for (major, minor) in [(8, 0), (9, 0)] {
        let built = compile_check(major, minor).unwrap_or_else(|e| {
            panic!("sm_{major}{minor}: {e} (NVRTC comes with the torch wheel: scripts/setup-libtorch.sh)")
        });
        assert_eq!(built.len(), SOURCES.len());
        for (name, ptx_bytes) in built {
            assert!(ptx_bytes > 1000, "{name}: {ptx_bytes} bytes of PTX");
        }
    }
}

/// The KD kernel's reference equals autograd of `scale[0] Σ CE + scale[1] T Σ D`
/// (its gradient w.r.t. the student logits is `scale[0] (softmax − onehot) +
/// scale[1] (q − p)`), with the row values `CE` and `T² D`.
#[test]
fn kd_reference_matches_autograd() {
    tch::manual_seed(5);
    let o = (Kind::Float, Device::Cpu);
    let (n, v, temp) = (6, 37, 2.0f64);
    let z0 = Tensor::randn([n, v], o) * 2.0;
    let zt = Tensor::randn([n, v], o) * 2.0;
    let t = Tensor::from_slice(&[3i64, -100, 0, 36, 5, -100]);
    let (s0, s1) = (0.3f64, 0.7f64);
    for target in [SoftTarget::ForwardKl, SoftTarget::TeacherWeightedCe] {
        let z = z0.copy().set_requires_grad(true);
        let ce_rows = z
            .log_softmax(-1, Kind::Float)
            .f_nll_loss::<Tensor>(&t, None, tch::Reduction::None, -100)
            .unwrap();
        let s = (&z / temp).log_softmax(-1, Kind::Float);
        let lp = (&zt / temp).log_softmax(-1, Kind::Float);
        let p = lp.exp();
        let d = match target {
            SoftTarget::ForwardKl => {
                (&p * (&lp - &s)).sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)
            }
            SoftTarget::TeacherWeightedCe => {
                -(&p * &s).sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)
            }
        };
        let loss = ce_rows.sum(Kind::Float) * s0 + d.sum(Kind::Float) * (s1 * temp);
        loss.backward();
        let zr = z0.copy();
        let (ce, kd) = (Tensor::zeros([n], o), Tensor::zeros([n], o));
        kd_xent_grad_reference(&KdXent {
            z: &zr,
            teacher: &zt,
            targets: &t,
            scale: &Tensor::from_slice(&[s0 as f32, s1 as f32]),
            ce: &ce,
            kd: &kd,
            inv_t: (1.0 / temp) as f32,
            t2: (temp * temp) as f32,
            target,
        })
        .unwrap();
        let diff = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
        assert!(diff(&zr, &z.grad()) < 1e-5, "{target:?} gradient");
        assert!(diff(&ce, &ce_rows) < 1e-5, "{target:?} CE rows");
        assert!(diff(&kd, &(d * (temp * temp))) < 1e-5, "{target:?} KD rows");
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::SoftTarget;
    use mome_core::fusion::{KernelConfig, LinearCe};
    use mome_core::linear_ce::{linear_cross_entropy, LinearCrossEntropy, IGNORE_INDEX};
    use tch::{Device, Kind, Tensor};

    const DEV: Device = Device::Cuda(0);

    fn max_abs(t: &Tensor) -> f64 {
        t.abs().max().to_kind(Kind::Double).double_value(&[])
    }

    /// `|a - b| <= rel * max|b| + abs` everywhere.
    fn close(a: &Tensor, b: &Tensor, rel: f64, abs: f64, what: &str) {
        let a = a.to_kind(Kind::Double);
        let b = b.to_kind(Kind::Double);
        let d = max_abs(&(&a - &b));
        let bound = rel * max_abs(&b) + abs;
        assert!(d <= bound, "{what}: max |diff| {d} > {bound}");
    }

    fn targets(n: i64, v: i64) -> Tensor {
        let t = Tensor::randint(v, [n], (Kind::Int64, DEV));
        // Every fifth position ignored.
        let ignore = Tensor::arange(n, (Kind::Int64, DEV)).remainder(5).eq(0);
        t.where_self(
            &ignore.logical_not(),
            &Tensor::from(IGNORE_INDEX).to_device(DEV),
        )
    }

    fn kernel_vs_reference(kind: Kind, n: i64, v: i64) {
        tch::manual_seed(7);
        let z = (Tensor::randn([n, v], (Kind::Float, DEV)) * 3.0).to_kind(kind);
        let t = targets(n, v);
        let scale = Tensor::from_slice(&[0.37f32]).to_device(DEV);
        let (zk, zr) = (z.copy(), z.copy());
        let lk = Tensor::zeros([n], (Kind::Float, DEV));
        let lr = Tensor::zeros([n], (Kind::Float, DEV));
        mome_core::linear_ce::softmax_xent_grad_reference(&zr, &t, &scale, &lr).unwrap();
        mome_core::kernels::softmax_xent_grad(&zk, &t, &scale, &lk).unwrap();
        close(&lk, &lr, 1e-5, 1e-5, &format!("{kind:?} V={v} row losses"));
        // bf16 gradients: both round the same fp32 value; fast exp may move one ulp.
        let rel = if kind == Kind::Float { 1e-5 } else { 1e-2 };
        close(&zk, &zr, rel, 1e-7, &format!("{kind:?} V={v} gradients"));
    }

    fn kd_kernel_vs_reference(kind: Kind, n: i64, v: i64, target: SoftTarget) {
        use mome_core::kernels::{kd_xent_grad, kd_xent_grad_reference, KdXent};
        tch::manual_seed(11);
        let z = (Tensor::randn([n, v], (Kind::Float, DEV)) * 3.0).to_kind(kind);
        let zt = (Tensor::randn([n, v], (Kind::Float, DEV)) * 3.0).to_kind(kind);
        let t = targets(n, v);
        let scale = Tensor::from_slice(&[0.37f32, 0.05]).to_device(DEV);
        let run = |fused: bool| {
            let zc = z.copy();
            let ce = Tensor::zeros([n], (Kind::Float, DEV));
            let kd = Tensor::zeros([n], (Kind::Float, DEV));
            let x = KdXent {
                z: &zc,
                teacher: &zt,
                targets: &t,
                scale: &scale,
                ce: &ce,
                kd: &kd,
                inv_t: 0.5,
                t2: 4.0,
                target,
            };
            if fused {
                kd_xent_grad(&x).unwrap();
            } else {
                kd_xent_grad_reference(&x).unwrap();
            }
            (zc, ce, kd)
        };
        let (gk, cek, kdk) = run(true);
        let (gr, cer, kdr) = run(false);
        let what = format!("{kind:?} V={v} {target:?}");
        close(&cek, &cer, 1e-5, 1e-5, &format!("{what} CE rows"));
        close(&kdk, &kdr, 1e-4, 1e-5, &format!("{what} KD rows"));
        let rel = if kind == Kind::Float { 1e-5 } else { 1e-2 };
        close(&gk, &gr, rel, 1e-7, &format!("{what} gradients"));
    }

    #[test]
    fn add_layer_norm_kernels_match_the_reference() {
        // Widths of the student and teacher (768, 1024), and one not a multiple of 32.
        for (rows, d) in [(4096, 768), (1000, 1024), (6, 100)] {
            for c in super::ln_cases(rows, d) {
                super::add_ln_agrees(c, Device::Cuda(0));
            }
        }
        for kind in [Kind::Float, Kind::BFloat16] {
            super::add_ln_dropout_is_consistent(Device::Cuda(0), kind);
        }
    }

    /// With dropout, the kernels and their references draw the same mask from one
    /// seed: equal sums, outputs and gradients.
    #[test]
    fn add_layer_norm_dropout_kernels_match_their_references() {
        use mome_core::kernels::{
            add_ln_backward, add_ln_backward_reference, add_ln_forward, add_ln_forward_reference,
            AddLnBackward, AddLnForward, BranchDropout,
        };
        let dev = Device::Cuda(0);
        let f = (Kind::Float, dev);
        let (rows, d) = (512i64, 768i64);
        let n = rows * d;
        let x = (Tensor::arange(n, f) * 0.37).sin().reshape([rows, d]);
        let y = (Tensor::arange(n, f) * 1.13)
            .cos()
            .reshape([rows, d])
            .to_kind(Kind::BFloat16);
        let w = Tensor::ones([d], f) * 1.1;
        let b = Tensor::ones([d], f) * 0.1;
        let seed = Tensor::from_slice(&[0x1234_5678_9abci64]).to_device(dev);
        let drop = BranchDropout {
            p: 0.1,
            seed: &seed,
        };
        let outs = |kernel: bool| {
            let (sum, out) = (
                x.empty_like(),
                Tensor::empty([rows, d], (Kind::BFloat16, dev)),
            );
            let (mean, rstd) = (Tensor::empty([rows], f), Tensor::empty([rows], f));
            let a = AddLnForward {
                x: &x,
                y: Some(&y),
                weight: &w,
                bias: &b,
                eps: 1e-5,
                sum: Some(&sum),
                out: &out,
                mean: &mean,
                rstd: &rstd,
                dropout: Some(drop),
            };
            let r = if kernel {
                add_ln_forward(&a)
            } else {
                add_ln_forward_reference(&a)
            };
            r.unwrap();
            let g = (Tensor::arange(n, f) * 0.91)
                .sin()
                .reshape([rows, d])
                .to_kind(Kind::BFloat16);
            let gs = (Tensor::arange(n, f) * 0.29).cos().reshape([rows, d]);
            let (dx, dy) = (x.empty_like(), y.empty_like());
            let (dw, db) = (w.empty_like(), w.empty_like());
            let bw = AddLnBackward {
                sum: &sum,
                mean: &mean,
                rstd: &rstd,
                weight: &w,
                grad_out: &g,
                grad_sum: Some(&gs),
                dx: &dx,
                dy: Some(&dy),
                dw: &dw,
                db: &db,
                dropout: Some(drop),
            };
            let r = if kernel {
                add_ln_backward(&bw)
            } else {
                add_ln_backward_reference(&bw)
            };
            r.unwrap();
            [sum, out, mean, rstd, dx, dy, dw, db].map(|t| t.to_kind(Kind::Float))
        };
        let (k, r) = (outs(true), outs(false));
        for (i, (k, r)) in k.iter().zip(&r).enumerate() {
            let scale = r.abs().max().double_value(&[]).max(1.0);
            let diff = (k - r).abs().max().double_value(&[]);
            assert!(diff <= 2e-2 * scale, "output {i}: max diff {diff}");
        }
    }

    #[test]
    fn kd_kernel_matches_reference_fp32_and_bf16() {
        for kind in [Kind::Float, Kind::BFloat16] {
            for target in [SoftTarget::ForwardKl, SoftTarget::TeacherWeightedCe] {
                kd_kernel_vs_reference(kind, 67, 32_000, target);
                kd_kernel_vs_reference(kind, 33, 1001, target);
            }
        }
    }

    #[test]
    fn kernel_matches_reference_fp32_and_bf16_vector_and_scalar_rows() {
        for kind in [Kind::Float, Kind::BFloat16] {
            // 32000 % 8 == 0: the 16-byte path; 1001: the scalar path.
            kernel_vs_reference(kind, 67, 32_000);
            kernel_vs_reference(kind, 33, 1001);
        }
    }

    fn grads(
        how: LinearCe,
        compute: Kind,
        h: &Tensor,
        w: &Tensor,
        t: &Tensor,
    ) -> (f64, Tensor, Tensor) {
        h.shallow_clone().zero_grad();
        w.shallow_clone().zero_grad();
        let hk = h.to_kind(compute);
        let input = LinearCrossEntropy {
            hidden: &hk,
            weight: w,
            targets: t,
            compute,
        };
        let k = KernelConfig {
            ce_chunk: 96,
            ..Default::default()
        };
        let loss = linear_cross_entropy(&input, how, &k).unwrap();
        loss.backward();
        (loss.double_value(&[]), h.grad().copy(), w.grad().copy())
    }

    #[test]
    fn fused_linear_cross_entropy_matches_reference_values_and_gradients() {
        tch::manual_seed(3);
        let (n, d, v) = (300, 64, 4096);
        let h = Tensor::randn([n, d], (Kind::Float, DEV)).set_requires_grad(true);
        let w = (Tensor::randn([v, d], (Kind::Float, DEV)) * 0.2).set_requires_grad(true);
        let t = targets(n, v);
        for (compute, rel) in [(Kind::Float, 1e-4), (Kind::BFloat16, 2e-2)] {
            let (l0, gh0, gw0) = grads(LinearCe::Reference, compute, &h, &w, &t);
            for how in [LinearCe::Chunked, LinearCe::Fused] {
                let (l1, gh1, gw1) = grads(how, compute, &h, &w, &t);
                assert!(
                    (l0 - l1).abs() <= 1e-3 * l0.abs(),
                    "{how:?} {compute:?}: loss {l1} vs {l0}"
                );
                close(&gh1, &gh0, rel, 0.0, &format!("{how:?} {compute:?} dL/dh"));
                close(&gw1, &gw0, rel, 0.0, &format!("{how:?} {compute:?} dL/dW"));
            }
        }
    }

    #[test]
    fn out_of_range_target_is_nan_on_the_kernel_path() {
        let h = Tensor::randn([4, 8], (Kind::Float, DEV));
        let w = Tensor::randn([16, 8], (Kind::Float, DEV));
        let t = Tensor::from_slice(&[1i64, 99, 2, 3]).to_device(DEV);
        let input = LinearCrossEntropy {
            hidden: &h,
            weight: &w,
            targets: &t,
            compute: Kind::Float,
        };
        let l = linear_cross_entropy(&input, LinearCe::Fused, &KernelConfig::default()).unwrap();
        assert!(l.double_value(&[]).is_nan());
    }
}
