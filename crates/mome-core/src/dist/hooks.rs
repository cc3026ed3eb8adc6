//! Gradient-ready hooks: the C++ shim `csrc/grad_hooks.cpp` (compiled by the build
//! script against the libtorch of torch-sys) registers a post hook on a parameter's
//! `AccumulateGrad` node, the hook PyTorch DDP uses to start reducing gradients while
//! backward still runs. tch has no binding for it.
//!
//! The hook calls [`GradReady::ready`] with the parameter's index, on the thread
//! that runs that part of backward (the caller's for CPU tensors, libtorch's device
//! thread for CUDA tensors), after the gradient was accumulated into `.grad`.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_void, CStr};
use std::sync::Arc;

use tch::Tensor;

use crate::{Error, Result};

/// Receives the indices of parameters whose gradient is ready. Called from
/// libtorch's backward threads; must not block on the training thread.
pub(crate) trait GradReady: Send + Sync {
    /// The gradient of parameter `index` was just accumulated.
    fn ready(&self, index: usize);
}

#[repr(C)]
struct RawHook {
    _opaque: [u8; 0],
}

type ReadyFn = extern "C" fn(ctx: *mut c_void, index: usize);

extern "C" {
    fn mome_grad_hook_register(
        param: *const torch_sys::C_tensor,
        ready: ReadyFn,
        ctx: *mut c_void,
        index: usize,
        err: *mut c_char,
        err_len: usize,
    ) -> *mut RawHook;
    fn mome_grad_hook_remove(hook: *mut RawHook);
}

extern "C" fn trampoline(ctx: *mut c_void, index: usize) {
    // SAFETY: `ctx` is the address of the `Arc<dyn GradReady>` boxed in the
    // `GradHooks` that registered this hook; `GradHooks` removes every hook before
    // freeing the box, so the pointer is valid whenever the hook can run.
    let target = unsafe { &*(ctx as *const Arc<dyn GradReady>) };
    // A panic must not unwind into C++; the receiver records its own errors.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target.ready(index)));
}

/// The hooks registered for one receiver; removed on drop.
pub(crate) struct GradHooks {
    // Boxed so that its address (the hooks' context) is stable.
    target: Box<Arc<dyn GradReady>>,
    hooks: Vec<*mut RawHook>,
}

// SAFETY: the raw handles are heap objects owned by this value, touched only by
// `register` and `drop`, which run on the training thread while no backward runs.
unsafe impl Send for GradHooks {}

impl std::fmt::Debug for GradHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GradHooks")
            .field("hooks", &self.hooks.len())
            .finish()
    }
}

impl GradHooks {
    /// No hooks yet; `target` receives the ready parameters.
    pub(crate) fn new(target: Arc<dyn GradReady>) -> Self {
        Self {
            target: Box::new(target),
            hooks: Vec::new(),
        }
    }

    /// Calls `target.ready(index)` each time backward accumulates `param`'s gradient.
    /// `param` must be a leaf that requires grad.
    pub(crate) fn register(&mut self, param: &Tensor, index: usize) -> Result<()> {
        let mut err = [0 as c_char; 512];
        let ctx = &*self.target as *const Arc<dyn GradReady> as *mut c_void;
        // SAFETY: `param.as_ptr()` is a live `at::Tensor*` (tch's C tensor) for the
        // duration of the call; `ctx` stays valid until the hook is removed (see
        // `trampoline`); `err` is a writable buffer of the stated length.
        let h = unsafe {
            mome_grad_hook_register(
                param.as_ptr(),
                trampoline,
                ctx,
                index,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if h.is_null() {
            // SAFETY: the shim wrote a NUL-terminated message (snprintf) into `err`.
            let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy();
            return Err(Error::Distributed(format!(
                "cannot hook the gradient of parameter {index}: {msg}"
            )));
        }
        self.hooks.push(h);
        Ok(())
    }
}

impl Drop for GradHooks {
    fn drop(&mut self) {
        for h in self.hooks.drain(..) {
            // SAFETY: `h` came from `mome_grad_hook_register` and is removed once.
            unsafe { mome_grad_hook_remove(h) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tch::{Device, Kind};

    #[derive(Default)]
    struct Record(Mutex<Vec<(usize, f64)>>);

    struct Probe(Arc<Record>, Mutex<Vec<Tensor>>);

    impl GradReady for Probe {
        fn ready(&self, index: usize) {
            // The gradient is already in `.grad` when the hook runs.
            let g = self.1.lock().unwrap()[index]
                .grad()
                .sum(Kind::Double)
                .double_value(&[]);
            self.0 .0.lock().unwrap().push((index, g));
        }
    }

    #[test]
    fn hooks_fire_in_backward_order_after_accumulation() {
        let opts = (Kind::Float, Device::Cpu);
        let a = Tensor::ones([3], opts).set_requires_grad(true);
        let b = Tensor::ones([3], opts).set_requires_grad(true);
        let c = Tensor::ones([3], opts).set_requires_grad(true);
        let rec = Arc::new(Record::default());
        let params = vec![a.shallow_clone(), b.shallow_clone(), c.shallow_clone()];
        let mut hooks = GradHooks::new(Arc::new(Probe(rec.clone(), Mutex::new(params))));
        for (i, p) in [&a, &b, &c].into_iter().enumerate() {
            hooks.register(p, i).unwrap();
        }
        // a is used first and last; c last in the forward, so it is ready first.
        let y = ((&a * 2.0) * &b).sum(Kind::Float) * 1.0;
        let z = (&y * &c.sum(Kind::Float)) + a.sum(Kind::Float);
        z.backward();
        let got = rec.0.lock().unwrap().clone();
        let order: Vec<usize> = got.iter().map(|(i, _)| *i).collect();
        assert_eq!(order.len(), 3, "{got:?}");
        assert_eq!(order[0], 2, "{got:?}");
        // Each hook fired once, with the whole gradient: dz/da = 2b·sum(c) + 1 = 7.
        let ga = got.iter().find(|(i, _)| *i == 0).unwrap().1;
        assert_eq!(ga, 21.0);
        // Removed hooks do not fire.
        drop(hooks);
        rec.0.lock().unwrap().clear();
        for mut p in [a.shallow_clone(), b.shallow_clone(), c.shallow_clone()] {
            p.zero_grad();
        }
        let z = (&a * &b * &c).sum(Kind::Float);
        z.backward();
        assert!(rec.0.lock().unwrap().is_empty());
    }

    #[test]
    fn a_tensor_without_grad_is_an_error() {
        let t = Tensor::ones([2], (Kind::Float, Device::Cpu));
        let mut hooks = GradHooks::new(Arc::new(Probe(Arc::default(), Mutex::default())));
        let e = hooks.register(&t, 0).unwrap_err().to_string();
        assert!(e.contains("does not require grad"), "{e}");
    }
}
