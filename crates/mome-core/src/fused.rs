//! libtorch's multi-tensor optimizer kernels, which tch 0.24 does not bind, through
//! the C++ shim `csrc/fused_optim.cpp` (compiled by the build script against the
//! libtorch of torch-sys):
//!
//! * [`fused_adamw`]: `at::_fused_adamw_`, the kernel of
//!   `torch.optim.AdamW(fused=True)`: the whole AdamW update of a list of parameters
//!   in one pass over parameters, gradients and moments (CUDA and CPU kernels);
//! * [`foreach_sq_norm`] and [`foreach_mul_`]: `at::_foreach_norm` and
//!   `at::_foreach_mul_`, the kernels of `torch.nn.utils.clip_grad_norm_`'s foreach
//!   path.
//!
//! Each function takes tensors of one device (the caller groups them) and performs no
//! host synchronisation.
//!
//! It also holds the autograd function of [`crate::norm`] (`csrc/add_layer_norm.cpp`):
//! [`add_layer_norm`] applies it, and [`add_ln_fwd_cb`] / [`add_ln_bwd_cb`] are the
//! C callbacks through which its forward and backward run mome's kernels
//! ([`crate::kernels::add_ln_forward`], [`crate::kernels::add_ln_backward`]) on CUDA
//! tensors and their libtorch references elsewhere.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, CStr};

use tch::{Kind, Tensor};

use crate::kernels::{self, AddLnBackward, AddLnForward};
use crate::norm::AddLayerNorm;

use crate::{Error, Result};

type CT = torch_sys::C_tensor;

extern "C" {
    fn mome_fused_adamw(
        params: *const *const CT,
        grads: *const *const CT,
        exp_avgs: *const *const CT,
        exp_avg_sqs: *const *const CT,
        n: usize,
        step: *const CT,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn mome_foreach_sq_norm(
        tensors: *const *const CT,
        n: usize,
        err: *mut c_char,
        err_len: usize,
    ) -> *mut CT;
    fn mome_add_layer_norm(
        x: *const CT,
        y: *const CT,
        w: *const CT,
        b: *const CT,
        eps: f64,
        dropout: f64,
        out_kind: c_int,
        fwd: AddLnFwdFn,
        bwd: AddLnBwdFn,
        out: *mut *mut CT,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn mome_trace_start(cuda: c_int, err: *mut c_char, err_len: usize) -> i32;
    fn mome_trace_stop(path: *const c_char, err: *mut c_char, err_len: usize) -> i32;
    fn mome_foreach_mul_(
        tensors: *const *const CT,
        n: usize,
        scalar: *const CT,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
}

/// The C tensors of `ts` (borrowed: valid while `ts` lives).
fn ptrs(ts: &[Tensor]) -> Vec<*const CT> {
    ts.iter().map(|t| t.as_ptr() as *const CT).collect()
}

fn shim_error(what: &str, err: &[c_char]) -> Error {
    // SAFETY: the shim wrote a NUL-terminated message (snprintf) into `err`, which
    // was zeroed before the call.
    let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy();
    Error::Torch(tch::TchError::Torch(format!("{what}: {msg}")))
}

/// AdamW hyperparameters of one [`fused_adamw`] call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FusedAdamW {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
    pub eps: f64,
}

/// One AdamW step over `params` with `grads` and moments `exp_avgs` / `exp_avg_sqs`
/// (equal lengths; contiguous tensors of one dtype on one device), in place:
/// `p ← p·(1 − lr·wd)`, `m ← β1·m + (1 − β1)·g`, `v ← β2·v + (1 − β2)·g²`,
/// `p ← p − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)`, with `t` the value of `step`
/// (a 0-d fp32 tensor on the parameters' device).
pub(crate) fn fused_adamw(
    params: &[Tensor],
    grads: &[Tensor],
    exp_avgs: &[Tensor],
    exp_avg_sqs: &[Tensor],
    step: &Tensor,
    h: FusedAdamW,
) -> Result<()> {
    let n = params.len();
    if grads.len() != n || exp_avgs.len() != n || exp_avg_sqs.len() != n {
        return Err(Error::Config(format!(
            "fused AdamW: {n} parameters but {} gradients, {} and {} moments",
            grads.len(),
            exp_avgs.len(),
            exp_avg_sqs.len()
        )));
    }
    if n == 0 {
        return Ok(());
    }
    let all = params
        .iter()
        .chain(grads)
        .chain(exp_avgs)
        .chain(exp_avg_sqs);
    if let Some(t) = all.clone().find(|t| !t.is_contiguous()) {
        return Err(Error::Config(format!(
            "fused AdamW needs contiguous tensors (one of shape {:?} is not)",
            t.size()
        )));
    }
    let (p, g, m, v) = (ptrs(params), ptrs(grads), ptrs(exp_avgs), ptrs(exp_avg_sqs));
    let mut err = [0 as c_char; 1024];
    // SAFETY: every pointer is a live `at::Tensor*` borrowed from the slices above for
    // the duration of the call; the four arrays hold `n` entries each; `err` is a
    // writable buffer of the stated length.
    let rc = unsafe {
        mome_fused_adamw(
            p.as_ptr(),
            g.as_ptr(),
            m.as_ptr(),
            v.as_ptr(),
            n,
            step.as_ptr() as *const CT,
            h.lr,
            h.beta1,
            h.beta2,
            h.weight_decay,
            h.eps,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if rc != 0 {
        return Err(shim_error("fused AdamW", &err));
    }
    Ok(())
}

/// The sum of the squared L2 norms of `tensors` (non-empty, one device), as a 0-d
/// fp32 tensor on that device, accumulated in fp32.
pub(crate) fn foreach_sq_norm(tensors: &[Tensor]) -> Result<Tensor> {
    if tensors.is_empty() {
        return Err(Error::Config("foreach norm of no tensors".into()));
    }
    let ts = ptrs(tensors);
    let mut err = [0 as c_char; 1024];
    // SAFETY: as in `fused_adamw`; a non-null result is a new `at::Tensor*` whose
    // ownership passes to the returned `Tensor` (freed by its drop).
    let out = unsafe { mome_foreach_sq_norm(ts.as_ptr(), ts.len(), err.as_mut_ptr(), err.len()) };
    if out.is_null() {
        return Err(shim_error("foreach norm", &err));
    }
    // SAFETY: `out` is a valid, owned `at::Tensor*` (see above).
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// Multiplies every tensor of `tensors` (one device) in place by the 0-d tensor
/// `scalar`.
pub(crate) fn foreach_mul_(tensors: &[Tensor], scalar: &Tensor) -> Result<()> {
    if tensors.is_empty() {
        return Ok(());
    }
    let ts = ptrs(tensors);
    let mut err = [0 as c_char; 1024];
    // SAFETY: as in `fused_adamw`.
    let rc = unsafe {
        mome_foreach_mul_(
            ts.as_ptr(),
            ts.len(),
            scalar.as_ptr() as *const CT,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if rc != 0 {
        return Err(shim_error("foreach multiply", &err));
    }
    Ok(())
}

/// Starts libtorch's Kineto profiler (CPU operators, and CUDA kernels when `cuda`).
pub(crate) fn trace_start(cuda: bool) -> Result<()> {
    let mut err = [0 as c_char; 1024];
    // SAFETY: `err` is writable for its length.
    let rc = unsafe { mome_trace_start(c_int::from(cuda), err.as_mut_ptr(), err.len()) };
    if rc != 0 {
        return Err(shim_error("starting the kernel trace", &err));
    }
    Ok(())
}

/// Stops the profiler of [`trace_start`] and writes its Chrome trace to `path`, or
/// drops the events without one.
pub(crate) fn trace_stop(path: Option<&std::path::Path>) -> Result<()> {
    let c = path
        .map(|p| {
            std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
                .map_err(|_| Error::Config(format!("trace path {} has a NUL byte", p.display())))
        })
        .transpose()?;
    let mut err = [0 as c_char; 1024];
    // SAFETY: `c` is a NUL-terminated path or null; `err` is writable for its length.
    let rc = unsafe {
        mome_trace_stop(
            c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if rc != 0 {
        return Err(shim_error("writing the kernel trace", &err));
    }
    Ok(())
}

type AddLnFwdFn = unsafe extern "C" fn(*const *const CT, f64, f64, *mut c_char, usize) -> c_int;
type AddLnBwdFn = unsafe extern "C" fn(*const *const CT, f64, *mut c_char, usize) -> c_int;

/// Applies the add + layer norm autograd function to `a` (its residual and branch
/// contiguous): `(Some(x + y), ln(x + y))` with a branch (dropped out with probability
/// `a.dropout` first), `(None, ln(x))` without; `ln`'s output in `a.out_kind`. The
/// caller checks the kinds and shapes the callbacks take (see [`crate::norm`]).
pub(crate) fn add_layer_norm(a: &AddLayerNorm<'_>) -> Result<(Option<Tensor>, Tensor)> {
    let out_kind = scalar_type(a.out_kind)?;
    let mut out: [*mut CT; 2] = [std::ptr::null_mut(); 2];
    let mut err = [0 as c_char; 1024];
    // SAFETY: every tensor pointer is a live `at::Tensor*` borrowed for the call (y may
    // be null); `out` has room for the two handles the shim writes; the callbacks match
    // the C signatures of csrc/add_layer_norm.cpp; `err` is writable for its length.
    let rc = unsafe {
        mome_add_layer_norm(
            a.residual.as_ptr() as *const CT,
            a.branch
                .map_or(std::ptr::null(), |y| y.as_ptr() as *const CT),
            a.weight.as_ptr() as *const CT,
            a.bias.as_ptr() as *const CT,
            a.eps,
            a.dropout,
            out_kind,
            add_ln_fwd_cb,
            add_ln_bwd_cb,
            out.as_mut_ptr(),
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if rc != 0 {
        return Err(shim_error("add + layer norm", &err));
    }
    // SAFETY: on success the shim stored new `at::Tensor*` handles (the first null
    // without a branch), whose ownership passes to the returned tensors.
    let sum = (!out[0].is_null()).then(|| unsafe { Tensor::from_ptr(out[0]) });
    let normed = unsafe { Tensor::from_ptr(out[1]) };
    Ok((sum, normed))
}

/// The `c10::ScalarType` value of the kinds the add + layer norm function outputs.
fn scalar_type(kind: Kind) -> Result<c_int> {
    match kind {
        Kind::Float => Ok(6),
        Kind::BFloat16 => Ok(15),
        k => Err(Error::Kernel(format!(
            "add + layer norm outputs fp32 or bf16, not {k:?}"
        ))),
    }
}

/// Writes `msg` NUL-terminated into the shim's buffer `err` of `len` bytes.
///
/// # Safety
/// `err` must be writable for `len` bytes.
unsafe fn write_err(err: *mut c_char, len: usize, msg: &str) {
    if len == 0 || err.is_null() {
        return;
    }
    let n = msg.len().min(len - 1);
    // SAFETY: `n + 1 <= len` bytes of `err` are written.
    unsafe {
        std::ptr::copy_nonoverlapping(msg.as_ptr() as *const c_char, err, n);
        *err.add(n) = 0;
    }
}

/// Runs `f` for a callback: 0 on success, else -1 with the error (or panic) in `err`.
///
/// # Safety
/// `err` must be writable for `len` bytes.
unsafe fn callback(err: *mut c_char, len: usize, f: impl FnOnce() -> Result<()>) -> c_int {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            // SAFETY: the caller's contract.
            unsafe { write_err(err, len, &e.to_string()) };
            -1
        }
        Err(_) => {
            // SAFETY: the caller's contract.
            unsafe { write_err(err, len, "panic in the Rust callback") };
            -1
        }
    }
}

/// The tensors `t[0..n]` (null entries: `None`), as new handles sharing storage.
///
/// # Safety
/// `t` must point to `n` entries, each null or a live `at::Tensor*`.
unsafe fn borrowed(t: *const *const CT, n: usize) -> Vec<Option<Tensor>> {
    (0..n)
        .map(|i| {
            // SAFETY: the caller's contract; `clone_from_ptr` makes a new handle.
            let p = unsafe { *t.add(i) };
            (!p.is_null()).then(|| unsafe { Tensor::clone_from_ptr(p as *mut CT) })
        })
        .collect()
}

fn required(t: &[Option<Tensor>], i: usize) -> Result<&Tensor> {
    t[i].as_ref()
        .ok_or_else(|| Error::Kernel(format!("add + layer norm: tensor {i} is missing")))
}

/// The dropout of a callback: probability `p` with the seed tensor `seed`.
fn branch_dropout(p: f64, seed: Option<&Tensor>) -> Option<kernels::BranchDropout<'_>> {
    seed.filter(|_| p > 0.0)
        .map(|seed| kernels::BranchDropout { p, seed })
}

/// The forward callback of csrc/add_layer_norm.cpp: tensors x, y, w, b, sum, out, mean,
/// rstd, seed (`[rows, d]` views; y and sum may be null, the seed is null without
/// dropout), eps and the dropout probability.
unsafe extern "C" fn add_ln_fwd_cb(
    t: *const *const CT,
    eps: f64,
    p: f64,
    err: *mut c_char,
    len: usize,
) -> c_int {
    // SAFETY: the shim passes 9 entries and a writable `err` of `len` bytes.
    let t = unsafe { borrowed(t, 9) };
    unsafe {
        callback(err, len, || {
            let a = AddLnForward {
                x: required(&t, 0)?,
                y: t[1].as_ref(),
                weight: required(&t, 2)?,
                bias: required(&t, 3)?,
                eps,
                sum: t[4].as_ref(),
                out: required(&t, 5)?,
                mean: required(&t, 6)?,
                rstd: required(&t, 7)?,
                dropout: branch_dropout(p, t[8].as_ref()),
            };
            if a.x.device().is_cuda() {
                kernels::add_ln_forward(&a)
            } else {
                kernels::add_ln_forward_reference(&a)
            }
        })
    }
}

/// The backward callback of csrc/add_layer_norm.cpp: tensors sum, mean, rstd, w,
/// grad_out, grad_sum, dx, dy, dw, db, seed (grad_sum, dy and the seed may be null),
/// and the forward's dropout probability.
unsafe extern "C" fn add_ln_bwd_cb(
    t: *const *const CT,
    p: f64,
    err: *mut c_char,
    len: usize,
) -> c_int {
    // SAFETY: the shim passes 11 entries and a writable `err` of `len` bytes.
    let t = unsafe { borrowed(t, 11) };
    unsafe {
        callback(err, len, || {
            let a = AddLnBackward {
                sum: required(&t, 0)?,
                mean: required(&t, 1)?,
                rstd: required(&t, 2)?,
                weight: required(&t, 3)?,
                grad_out: required(&t, 4)?,
                grad_sum: t[5].as_ref(),
                dx: required(&t, 6)?,
                dy: t[7].as_ref(),
                dw: required(&t, 8)?,
                db: required(&t, 9)?,
                dropout: branch_dropout(p, t[10].as_ref()),
            };
            if a.sum.device().is_cuda() {
                kernels::add_ln_backward(&a)
            } else {
                kernels::add_ln_backward_reference(&a)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;
    use tch::{Device, Kind};

    #[test]
    fn sq_norm_and_mul_match_elementwise() {
        let a = Tensor::from_slice(&[3.0f32, 4.0]);
        let b = Tensor::from_slice(&[1.0f32, -2.0, 2.0]).to_kind(Kind::BFloat16);
        let s = foreach_sq_norm(&[a.shallow_clone(), b.shallow_clone()]).unwrap();
        assert_eq!(s.kind(), Kind::Float);
        assert_eq!(s.dim(), 0);
        assert_relative_eq!(s.double_value(&[]), 34.0, epsilon = 1e-5);
        foreach_mul_(
            &[a.shallow_clone(), b.shallow_clone()],
            &Tensor::from(0.5f32),
        )
        .unwrap();
        assert_eq!(Vec::<f32>::try_from(&a).unwrap(), [1.5, 2.0]);
        assert_eq!(
            Vec::<f32>::try_from(&b.to_kind(Kind::Float)).unwrap(),
            [0.5, -1.0, 1.0]
        );
        assert!(foreach_sq_norm(&[]).is_err());
    }

    #[test]
    fn errors_come_back_as_messages() {
        let p = Tensor::zeros([4], (Kind::Float, Device::Cpu));
        let g = Tensor::zeros([4], (Kind::Double, Device::Cpu));
        let m = Tensor::zeros([4], (Kind::Float, Device::Cpu));
        let v = Tensor::zeros([4], (Kind::Float, Device::Cpu));
        let step = Tensor::from(1.0f32);
        let h = FusedAdamW {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            weight_decay: 0.0,
            eps: 1e-8,
        };
        // A gradient of another dtype is refused by libtorch, not a crash.
        let e = fused_adamw(&[p], &[g], &[m], &[v], &step, h)
            .unwrap_err()
            .to_string();
        assert!(e.contains("fused AdamW: expected scalar type Float"), "{e}");
        assert!(!e.contains("frame #"), "no C++ backtrace: {e}");
        let t = Tensor::zeros([4, 4], (Kind::Float, Device::Cpu)).tr();
        let e = fused_adamw(
            &[t.shallow_clone()],
            &[t.shallow_clone()],
            &[t.shallow_clone()],
            &[t],
            &Tensor::from(1.0f32),
            h,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("contiguous"), "{e}");
    }
}
