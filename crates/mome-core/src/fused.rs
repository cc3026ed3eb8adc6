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
#![allow(unsafe_code)]

use std::ffi::{c_char, CStr};

use tch::Tensor;

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
