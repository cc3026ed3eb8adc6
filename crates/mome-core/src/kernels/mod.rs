//! mome's own CUDA kernels: CUDA C++ sources in this folder, compiled at run time
//! with NVRTC (no CUDA toolkit at build time) and launched through the CUDA driver
//! API (cudarc, loaded at run time) on the data pointers of tch tensors.
//!
//! This module owns all of that `unsafe` (the libtorch operator shim is
//! `crate::fused`). Its contract:
//!
//! * **Libraries.** libnvrtc (and its `libnvrtc-builtins`) come from the PyPI torch
//!   wheel's `nvidia/cu13/lib`, found beside the libtorch this process loaded
//!   (`/proc/self/maps`), or from `MOME_NVRTC_DIR`, else from the system's search
//!   path. The driver (`libcuda.so`) comes from the system. Nothing is linked at build
//!   time; a missing library is an [`Error::Kernel`], never a panic.
//! * **Compilation.** Each source is compiled once per process and device, for that
//!   device's architecture (`compute_XY` PTX, JIT-compiled by the driver), and cached.
//! * **Launches.** Every launch checks device, dtype, shape and contiguity of every
//!   tensor it touches before it takes a raw pointer, and runs on the CUDA null
//!   stream, the stream tch's operators run on (tch never changes the current
//!   stream), so it is ordered with them without any synchronisation. The tensors are
//!   borrowed for the duration of the call; the kernel may still be running when it
//!   returns, which is safe because libtorch's caching allocator reuses freed memory
//!   only for work queued later on that same stream.
//! * **Reference paths.** Every kernel has a plain-libtorch reference with the same
//!   arithmetic, used on the CPU and selectable on CUDA (see [`crate::linear_ce`]);
//!   CUDA tests (feature `cuda`) compare the two.
//!
//! [`compile_check`] compiles every source for a given architecture without a GPU
//! (CI does it on the CPU machine).
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::CompileOptions;
use tch::{Device, Kind, Tensor};

use crate::{Error, Result};

/// A kernel source: its file name and text.
#[derive(Debug, Clone, Copy)]
pub struct KernelSource {
    /// File name under `crates/mome-core/src/kernels/`.
    pub name: &'static str,
    /// CUDA C++ text (`bf16.cuh`, then the file).
    pub text: &'static str,
    /// The `extern "C"` kernels it defines.
    pub kernels: &'static [&'static str],
}

/// Row-wise softmax cross-entropy and its gradient, in place, alone or with a dense
/// KD term against teacher logits (bf16 and fp32).
pub const SOFTMAX_XENT: KernelSource = KernelSource {
    name: "softmax_xent.cu",
    text: concat!(include_str!("bf16.cuh"), include_str!("softmax_xent.cu")),
    kernels: &[
        "softmax_xent_grad_bf16",
        "softmax_xent_grad_f32",
        "kd_xent_grad_bf16",
        "kd_xent_grad_f32",
    ],
};

/// Residual add + layer norm, forward and backward (residual and parameters, branch
/// and output each in bf16 or fp32).
pub const ADD_LAYER_NORM: KernelSource = KernelSource {
    name: "add_layer_norm.cu",
    text: concat!(include_str!("bf16.cuh"), include_str!("add_layer_norm.cu")),
    kernels: &[
        "add_ln_fwd_f32_f32_f32",
        "add_ln_fwd_f32_f32_bf16",
        "add_ln_fwd_f32_bf16_f32",
        "add_ln_fwd_f32_bf16_bf16",
        "add_ln_fwd_bf16_f32_f32",
        "add_ln_fwd_bf16_f32_bf16",
        "add_ln_fwd_bf16_bf16_f32",
        "add_ln_fwd_bf16_bf16_bf16",
        "add_ln_bwd_f32_f32_f32",
        "add_ln_bwd_f32_f32_bf16",
        "add_ln_bwd_f32_bf16_f32",
        "add_ln_bwd_f32_bf16_bf16",
        "add_ln_bwd_bf16_f32_f32",
        "add_ln_bwd_bf16_f32_bf16",
        "add_ln_bwd_bf16_bf16_f32",
        "add_ln_bwd_bf16_bf16_bf16",
    ],
};

/// Every kernel source of mome.
pub const SOURCES: &[KernelSource] = &[SOFTMAX_XENT, ADD_LAYER_NORM];

fn kernel_err(what: impl Into<String>) -> Error {
    Error::Kernel(what.into())
}

/// The folder of the torch wheel's NVIDIA libraries beside the libtorch this process
/// loaded (`<site-packages>/nvidia/cu13/lib` for `<site-packages>/torch/lib`).
fn wheel_nvidia_lib_dir() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let torch_lib = maps.lines().find_map(|l| {
        let path = l.split_whitespace().nth(5)?;
        let p = Path::new(path);
        let name = p.file_name()?.to_str()?;
        (name == "libtorch_cpu.so" || name == "libc10.so")
            .then(|| p.parent().map(Path::to_path_buf))?
    })?;
    let site = torch_lib.parent()?.parent()?;
    ["cu13", "cuda_nvrtc"]
        .iter()
        .map(|d| site.join("nvidia").join(d).join("lib"))
        .find(|d| d.is_dir())
}

/// Loads libnvrtc (and its builtins, which libnvrtc itself opens by name) from the
/// torch wheel or `MOME_NVRTC_DIR` with global symbols, so that cudarc's own lookup
/// by soname finds the loaded copy. Once per process; the error is kept.
fn ensure_nvrtc() -> Result<()> {
    static LOADED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    let r = LOADED.get_or_init(|| {
        let dir = std::env::var_os("MOME_NVRTC_DIR")
            .map(PathBuf::from)
            .or_else(wheel_nvidia_lib_dir);
        if let Some(dir) = &dir {
            for name in ["libnvrtc-builtins.so.13.0", "libnvrtc.so.13"] {
                let path = dir.join(name);
                if path.exists() {
                    // SAFETY: loading NVIDIA's NVRTC runs its initialisers; it is the
                    // library shipped with the libtorch already in this process. The
                    // handle is leaked: the library stays loaded for the process.
                    let lib = unsafe {
                        libloading::os::unix::Library::open(
                            Some(&path),
                            libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
                        )
                    }
                    .map_err(|e| format!("cannot load {}: {e}", path.display()))?;
                    std::mem::forget(lib);
                }
            }
        }
        // SAFETY: only probes whether the library can be opened.
        if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            Ok(())
        } else {
            Err(format!(
                "libnvrtc.so.13 not found ({}); it ships in the torch wheel's nvidia/cu13/lib \
                 (scripts/setup-libtorch.sh), or set MOME_NVRTC_DIR",
                dir.map_or("no torch wheel folder found".to_string(), |d| format!(
                    "looked in {}",
                    d.display()
                ))
            ))
        }
    });
    r.clone().map_err(kernel_err)
}

/// Whether NVRTC can be loaded (the reason when not).
pub fn nvrtc_available() -> std::result::Result<(), String> {
    ensure_nvrtc().map_err(|e| e.to_string())
}

/// Compiles `src` to PTX for `compute_{major}{minor}`.
fn compile(src: &KernelSource, major: i32, minor: i32) -> Result<String> {
    ensure_nvrtc()?;
    let arch: &'static str = Box::leak(format!("compute_{major}{minor}").into_boxed_str());
    let opts = CompileOptions {
        arch: Some(arch),
        options: vec!["--std=c++17".into()],
        name: Some(src.name.to_string()),
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(src.text, opts)
        .map_err(|e| kernel_err(format!("NVRTC could not compile {}: {e}", src.name)))?;
    Ok(ptx.to_src())
}

/// Compiles every kernel source for compute capability `major.minor` (e.g. 9.0 for
/// H100) without a GPU, returning each file's name and PTX size. CI runs this on the
/// CPU machine: a source that does not compile fails there, not on the GPU.
pub fn compile_check(major: i32, minor: i32) -> Result<Vec<(&'static str, usize)>> {
    SOURCES
        .iter()
        .map(|s| {
            let ptx = compile(s, major, minor)?;
            for k in s.kernels {
                if !ptx.contains(&format!(".entry {k}(")) {
                    return Err(kernel_err(format!("{}: no kernel {k} in the PTX", s.name)));
                }
            }
            Ok((s.name, ptx.len()))
        })
        .collect()
}

/// The loaded kernels of one device.
struct Loaded {
    stream: Arc<CudaStream>,
    functions: HashMap<&'static str, CudaFunction>,
}

/// The kernels of CUDA device `ordinal`, compiled and loaded on first use.
fn loaded(ordinal: usize) -> Result<Arc<Loaded>> {
    static CACHE: OnceLock<Mutex<HashMap<usize, Arc<Loaded>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = cache
        .lock()
        .map_err(|_| kernel_err("kernel cache poisoned"))?;
    if let Some(l) = map.get(&ordinal) {
        return Ok(l.clone());
    }
    ensure_nvrtc()?;
    // SAFETY: only probes whether libcuda can be opened.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(kernel_err(
            "the CUDA driver library (libcuda.so) is not loadable",
        ));
    }
    let drv = |what: &str, e: cudarc::driver::DriverError| kernel_err(format!("{what}: {e}"));
    // The device's primary context: the one the CUDA runtime (libtorch) uses.
    let ctx = CudaContext::new(ordinal).map_err(|e| drv("CUDA context", e))?;
    // SAFETY: event tracking only serves cudarc's own buffers, which are not used.
    unsafe { ctx.disable_event_tracking() };
    let (major, minor) = ctx
        .compute_capability()
        .map_err(|e| drv("compute capability", e))?;
    let mut functions = HashMap::new();
    for src in SOURCES {
        let ptx = compile(src, major, minor)?;
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
            .map_err(|e| drv(&format!("loading {}", src.name), e))?;
        for k in src.kernels {
            let f = module
                .load_function(k)
                .map_err(|e| drv(&format!("kernel {k}"), e))?;
            functions.insert(*k, f);
        }
    }
    let l = Arc::new(Loaded {
        stream: ctx.default_stream(),
        functions,
    });
    map.insert(ordinal, l.clone());
    Ok(l)
}

fn cuda_ordinal(t: &Tensor, what: &str) -> Result<usize> {
    match t.device() {
        Device::Cuda(i) => Ok(i),
        d => Err(kernel_err(format!(
            "{what} must be on a CUDA device, is on {d:?}"
        ))),
    }
}

fn expect(t: &Tensor, what: &str, kind: Kind, shape: &[i64], ordinal: usize) -> Result<()> {
    if t.kind() != kind || t.size() != shape || !t.is_contiguous() {
        return Err(kernel_err(format!(
            "{what} must be a contiguous {kind:?} tensor of shape {shape:?}, got {:?} {:?}{}",
            t.kind(),
            t.size(),
            if t.is_contiguous() {
                ""
            } else {
                " (not contiguous)"
            }
        )));
    }
    if cuda_ordinal(t, what)? != ordinal {
        return Err(kernel_err(format!("{what} is on another device")));
    }
    Ok(())
}

/// In place on `z` `[rows, V]` (bf16 or fp32 logits, contiguous, CUDA): writes
/// `loss[r] = logsumexp(z[r]) - z[r, targets[r]]` (0 where the target is -100, NaN
/// where it is outside `[0, V)`) and replaces `z[r]` by
/// `(softmax(z[r]) - onehot(targets[r])) * scale[0]` (0 for ignored rows).
/// `targets` int64 `[rows]`, `scale` fp32 `[1]`, `loss` fp32 `[rows]`, all on `z`'s
/// device. Queued on the null stream; no host synchronisation.
pub fn softmax_xent_grad(
    z: &Tensor,
    targets: &Tensor,
    scale: &Tensor,
    loss: &Tensor,
) -> Result<()> {
    let c = RowKernel::of(z, ["softmax_xent_grad_bf16", "softmax_xent_grad_f32"])?;
    c.expect(targets, "the targets", Kind::Int64, &[c.rows])?;
    c.expect(scale, "the scale", Kind::Float, &[1])?;
    c.expect(loss, "the row losses", Kind::Float, &[c.rows])?;
    let ptrs = [z, targets, scale, loss].map(|t| t.data_ptr() as u64);
    // SAFETY: the argument list matches the kernel's signature (4 device pointers,
    // int rows, int V); every pointer is the data of a contiguous tensor checked
    // above for dtype, shape and device, so the kernel's accesses (row < rows,
    // column < V, target checked against V) stay inside them; the tensors outlive
    // the queued work on the null stream (see the module docs).
    unsafe { c.launch(&ptrs, &[]) }
}

/// A scalar kernel argument after the pointers.
#[derive(Clone, Copy)]
enum Scalar {
    F32(f32),
    I32(i32),
    U32(u32),
}

/// The launch of a one-block-per-row kernel over logits `z` `[rows, V]` (bf16 or
/// fp32, contiguous, CUDA): its name for that kind, checked sizes and device.
struct RowKernel {
    name: &'static str,
    ordinal: usize,
    rows: i64,
    v: i64,
    rows_i: i32,
    v_i: i32,
}

impl RowKernel {
    /// `names`: the bf16 and the fp32 kernel.
    fn of(z: &Tensor, names: [&'static str; 2]) -> Result<Self> {
        let ordinal = cuda_ordinal(z, "the logits")?;
        let size = z.size();
        let (rows, v) = match size[..] {
            [r, v] if r > 0 && v > 0 => (r, v),
            _ => {
                return Err(kernel_err(format!(
                    "logits must be [rows, V], got {size:?}"
                )))
            }
        };
        let (name, kind) = match z.kind() {
            Kind::BFloat16 => (names[0], Kind::BFloat16),
            Kind::Float => (names[1], Kind::Float),
            k => {
                return Err(kernel_err(format!(
                    "the {} kernel takes bf16 or fp32 logits, got {k:?}",
                    names[1]
                )))
            }
        };
        expect(z, "the logits", kind, &[rows, v], ordinal)?;
        let (rows_i, v_i) = match (i32::try_from(rows), i32::try_from(v)) {
            (Ok(r), Ok(v)) => (r, v),
            _ => {
                return Err(kernel_err(format!(
                    "{rows} x {v} logits exceed the kernel's int32 sizes"
                )))
            }
        };
        Ok(Self {
            name,
            ordinal,
            rows,
            v,
            rows_i,
            v_i,
        })
    }

    /// Checks a side tensor of the launch: `kind`, `shape`, contiguous, on the
    /// logits' device.
    fn expect(&self, t: &Tensor, what: &str, kind: Kind, shape: &[i64]) -> Result<()> {
        expect(t, what, kind, shape, self.ordinal)
    }

    /// Launches the kernel with the device pointers `ptrs`, then `rows` and `V` as
    /// ints, then the scalars `extra`.
    ///
    /// # Safety
    /// `ptrs` and `extra` must match the kernel's signature, and every pointer must be
    /// the data of a tensor checked (with [`RowKernel::expect`]) to hold what the
    /// kernel reads and writes.
    unsafe fn launch(&self, ptrs: &[u64], extra: &[Scalar]) -> Result<()> {
        let mut scalars = vec![Scalar::I32(self.rows_i), Scalar::I32(self.v_i)];
        scalars.extend_from_slice(extra);
        let block = if self.v >= 8192 { 512 } else { 128 };
        // SAFETY: the caller's contract.
        unsafe {
            launch(
                self.ordinal,
                self.name,
                (self.rows as u32, block),
                ptrs,
                &scalars,
            )
        }
    }
}

/// Launches kernel `name` of device `ordinal` on the null stream with `(grid, block)`
/// one-dimensional sizes, the device pointers `ptrs` (0 for a null pointer), then the
/// scalars.
///
/// # Safety
/// `ptrs` and `scalars` must match the kernel's signature, and every non-null pointer
/// must be the data of a tensor checked to hold what the kernel reads and writes.
unsafe fn launch(
    ordinal: usize,
    name: &'static str,
    (grid, block): (u32, u32),
    ptrs: &[u64],
    scalars: &[Scalar],
) -> Result<()> {
    let l = loaded(ordinal)?;
    let f = l
        .functions
        .get(name)
        .ok_or_else(|| kernel_err(format!("kernel {name} not loaded")))?;
    let cfg = LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut launch = l.stream.launch_builder(f);
    for p in ptrs {
        launch.arg(p);
    }
    for e in scalars {
        match e {
            Scalar::F32(v) => launch.arg(v),
            Scalar::I32(v) => launch.arg(v),
            Scalar::U32(v) => launch.arg(v),
        };
    }
    // SAFETY: the caller's contract.
    unsafe { launch.launch(cfg) }.map_err(|e| kernel_err(format!("launching {name}: {e}")))?;
    Ok(())
}

/// The dense KD divergence of [`kd_xent_grad`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoftTarget {
    /// `Σ p (log p − log q)`.
    ForwardKl,
    /// `−Σ p log q` (forward KL plus the teacher's entropy; the same gradient).
    TeacherWeightedCe,
}

/// The tensors of [`kd_xent_grad`]: one chunk of rows, all on one CUDA device.
#[derive(Debug)]
pub struct KdXent<'a> {
    /// Student logits `[rows, V]` (bf16 or fp32, contiguous), overwritten with the
    /// gradient.
    pub z: &'a Tensor,
    /// Teacher logits `[rows, V]`, the kind of `z` (contiguous).
    pub teacher: &'a Tensor,
    /// int64 `[rows]` next-token targets (-100: no CE term).
    pub targets: &'a Tensor,
    /// fp32 `[2]`: the CE gradient's factor, then the KD gradient's (`∂KD/∂(z/T)`'s).
    pub scale: &'a Tensor,
    /// fp32 `[rows]`, written: the row cross-entropies.
    pub ce: &'a Tensor,
    /// fp32 `[rows]`, written: the row KD terms times `t2`.
    pub kd: &'a Tensor,
    /// `1 / T`.
    pub inv_t: f32,
    /// The factor of the KD values (`T²`).
    pub t2: f32,
    /// The divergence.
    pub target: SoftTarget,
}

/// Cross-entropy plus a dense KD term, in place on `x.z` (see softmax_xent.cu's
/// `kd_xent_grad`): writes `x.ce[r]` as [`softmax_xent_grad`] does and
/// `x.kd[r] = t2 · D(p_r ‖ q_r)` (`p = softmax(teacher/T)`, `q = softmax(z/T)`), and
/// replaces `z[r]` by `scale[0] (softmax(z[r]) − onehot) + scale[1] (q_r − p_r)`. One
/// read of each side to normalise, one to write the gradient. Queued on the null
/// stream; no host synchronisation. [`kd_xent_grad_reference`] is the same
/// arithmetic in libtorch operators.
pub fn kd_xent_grad(x: &KdXent<'_>) -> Result<()> {
    let c = RowKernel::of(x.z, ["kd_xent_grad_bf16", "kd_xent_grad_f32"])?;
    c.expect(x.teacher, "the teacher logits", x.z.kind(), &[c.rows, c.v])?;
    c.expect(x.targets, "the targets", Kind::Int64, &[c.rows])?;
    c.expect(x.scale, "the scales", Kind::Float, &[2])?;
    c.expect(x.ce, "the row losses", Kind::Float, &[c.rows])?;
    c.expect(x.kd, "the row KD terms", Kind::Float, &[c.rows])?;
    let ptrs = [x.z, x.teacher, x.targets, x.scale, x.ce, x.kd].map(|t| t.data_ptr() as u64);
    let twce = i32::from(x.target == SoftTarget::TeacherWeightedCe);
    // SAFETY: the argument list matches the kernel's signature (6 device pointers,
    // int rows, int V, float inv_t, float t2, int twce); every pointer is the data of
    // a contiguous tensor checked above for dtype, shape and device, so the kernel's
    // accesses (row < rows, column < V, target checked against V, scale[0..2]) stay
    // inside them; the tensors outlive the queued work on the null stream (see the
    // module docs).
    unsafe {
        c.launch(
            &ptrs,
            &[Scalar::F32(x.inv_t), Scalar::F32(x.t2), Scalar::I32(twce)],
        )
    }
}

/// The reference of [`kd_xent_grad`] in libtorch operators (any device, fp32
/// arithmetic, one rounding to `z`'s kind), with the same arguments.
pub fn kd_xent_grad_reference(x: &KdXent<'_>) -> Result<()> {
    let dev = x.z.device();
    let scale = x.scale.to_kind(Kind::Float);
    // The CE part (and row losses) through the cross-entropy reference, on an fp32
    // copy (a copy even when `z` is fp32: `z` is read again below).
    let ce_grad = x.z.to_dtype(Kind::Float, false, true);
    crate::linear_ce::softmax_xent_grad_reference(
        &ce_grad,
        x.targets,
        &scale.narrow(0, 0, 1),
        x.ce,
    )?;
    let inv_t = Tensor::from_slice(&[x.inv_t]).to_device(dev);
    let s = (x.z.to_kind(Kind::Float) * &inv_t).log_softmax(-1, Kind::Float);
    let t = (x.teacher.to_kind(Kind::Float) * &inv_t).log_softmax(-1, Kind::Float);
    let p = t.exp();
    let pos = p.gt(0.0);
    let term = match x.target {
        SoftTarget::ForwardKl => &p * (&t - &s),
        SoftTarget::TeacherWeightedCe => -(&p * &s),
    };
    let row =
        term.where_scalarother(&pos, 0.0)
            .sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)
            * f64::from(x.t2);
    x.kd.shallow_clone().f_copy_(&row)?;
    let g = ce_grad + (s.exp() - p) * scale.narrow(0, 1, 1);
    x.z.shallow_clone().f_copy_(&g)?;
    Ok(())
}

/// Widest row [`add_ln_forward`] and [`add_ln_backward`] take (32 columns per lane of
/// one warp).
pub const ADD_LN_MAX_WIDTH: i64 = 1024;

/// Warps of one block of the add + layer-norm kernels.
const ADD_LN_WARPS: u32 = 8;

/// Blocks of the backward kernel at most: the `[warps, d]` partial sums of the
/// weight and bias gradients stay small (2048 rows).
const ADD_LN_BWD_BLOCKS: u32 = 256;

/// The tensors of one residual add + layer norm forward ([`add_ln_forward`]), rows of
/// width `d` (the last dimension; every tensor contiguous, on one device).
#[derive(Debug)]
pub struct AddLnForward<'a> {
    /// The residual, fp32 or bf16 `[rows, d]`.
    pub x: &'a Tensor,
    /// The branch added to it (fp32 or bf16 `[rows, d]`), or none: a plain layer norm.
    pub y: Option<&'a Tensor>,
    /// `[d]`, `x`'s kind.
    pub weight: &'a Tensor,
    /// `[d]`, `x`'s kind.
    pub bias: &'a Tensor,
    /// Added to the variance.
    pub eps: f64,
    /// Written with `x + y` rounded to `x`'s kind (`[rows, d]`), exactly when `y` is
    /// given.
    pub sum: Option<&'a Tensor>,
    /// Written with the normalised rows (fp32 or bf16 `[rows, d]`).
    pub out: &'a Tensor,
    /// Written with each row's mean, fp32 `[rows]`.
    pub mean: &'a Tensor,
    /// Written with each row's `1 / sqrt(var + eps)`, fp32 `[rows]`.
    pub rstd: &'a Tensor,
    /// The branch's dropout: `None`, or the probability of dropping an element with
    /// the int64 `[1]` seed of its mask ([`BranchDropout`]).
    pub dropout: Option<BranchDropout<'a>>,
}

/// Dropout of the branch inside the add + layer norm kernels: element `i` of `y`
/// (row-major index in `[rows, d]`) is kept with probability `1 - p` by a hash of
/// `seed` and `i` ([`dropout_keep`]), and scaled by `1 / (1 - p)`; the backward
/// recomputes the mask from the seed.
#[derive(Debug, Clone, Copy)]
pub struct BranchDropout<'a> {
    /// In `[0, 1)`.
    pub p: f64,
    /// int64 `[1]`, on the tensors' device.
    pub seed: &'a Tensor,
}

impl BranchDropout<'_> {
    /// `(threshold, scale)`: kept when the hash is `>= threshold`.
    fn threshold_scale(&self) -> Result<(u32, f32)> {
        if !(0.0..1.0).contains(&self.p) {
            return Err(kernel_err(format!(
                "dropout probability {} is outside [0, 1)",
                self.p
            )));
        }
        let t = (self.p * 4_294_967_296.0).round().min(u32::MAX as f64) as u32;
        Ok((t, (1.0 / (1.0 - self.p)) as f32))
    }
}

fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// Whether element `i` is kept under `seed` at `threshold` (add_layer_norm.cu's
/// `keep`, bit for bit).
pub fn dropout_keep(seed: i64, i: u64, threshold: u32) -> bool {
    let seed = seed as u64;
    let h = mix32((i as u32) ^ (seed as u32));
    let h = mix32(h ^ ((i >> 32) as u32) ^ ((seed >> 32) as u32));
    h >= threshold
}

/// The keep mask (fp32 0 / `scale`) of `n` elements as a `[n]` tensor on the seed's
/// device.
fn dropout_scale_mask(d: &BranchDropout<'_>, n: i64) -> Result<Tensor> {
    let (threshold, scale) = d.threshold_scale()?;
    let seed = d.seed.f_int64_value(&[0])?;
    let m: Vec<f32> = (0..n as u64)
        .map(|i| {
            if dropout_keep(seed, i, threshold) {
                scale
            } else {
                0.0
            }
        })
        .collect();
    Ok(Tensor::from_slice(&m).f_to_device(d.seed.device())?)
}

/// The tensors of the backward of [`add_ln_forward`] ([`add_ln_backward`]).
#[derive(Debug)]
pub struct AddLnBackward<'a> {
    /// The forward's normalised input: its `sum`, or `x` without a branch.
    pub sum: &'a Tensor,
    /// The forward's row means.
    pub mean: &'a Tensor,
    /// The forward's row `1 / sqrt(var + eps)`.
    pub rstd: &'a Tensor,
    /// `[d]`, the sum's kind.
    pub weight: &'a Tensor,
    /// The gradient of the output (its kind).
    pub grad_out: &'a Tensor,
    /// The gradient of the sum (its kind), when the sum is used elsewhere.
    pub grad_sum: Option<&'a Tensor>,
    /// Written: the gradient of `x` (its kind).
    pub dx: &'a Tensor,
    /// Written when the forward had a branch: the gradient of `y` (its kind).
    pub dy: Option<&'a Tensor>,
    /// Written: the gradient of the weight (`[d]`, its kind).
    pub dw: &'a Tensor,
    /// Written: the gradient of the bias (`[d]`, its kind).
    pub db: &'a Tensor,
    /// The forward's branch dropout.
    pub dropout: Option<BranchDropout<'a>>,
}

fn kind_tag(t: &Tensor, what: &str) -> Result<&'static str> {
    match t.kind() {
        Kind::Float => Ok("f32"),
        Kind::BFloat16 => Ok("bf16"),
        k => Err(kernel_err(format!(
            "{what} must be fp32 or bf16 for the add + layer norm kernel, got {k:?}"
        ))),
    }
}

/// `(rows, d)` of the residual, checked against the kernels' limits.
fn ln_rows(x: &Tensor) -> Result<(i64, i64, usize)> {
    let ordinal = cuda_ordinal(x, "the residual")?;
    let size = x.size();
    let (rows, d) = match size[..] {
        [r, d] if r > 0 && d > 0 => (r, d),
        _ => return Err(kernel_err(format!("rows must be [rows, d], got {size:?}"))),
    };
    if d > ADD_LN_MAX_WIDTH {
        return Err(kernel_err(format!(
            "the add + layer norm kernel takes rows of at most {ADD_LN_MAX_WIDTH}, got {d}"
        )));
    }
    if i32::try_from(rows).is_err() {
        return Err(kernel_err(format!(
            "{rows} rows exceed the kernel's int32 sizes"
        )));
    }
    Ok((rows, d, ordinal))
}

fn ptr(t: Option<&Tensor>) -> u64 {
    t.map_or(0, |t| t.data_ptr() as u64)
}

/// Residual add + layer norm of every row on CUDA, in one kernel (see
/// add_layer_norm.cu): reads `x` and `y` once, writes `sum`, `out`, `mean` and
/// `rstd`. [`add_ln_forward_reference`] is the same arithmetic in libtorch operators.
pub fn add_ln_forward(a: &AddLnForward<'_>) -> Result<()> {
    let (rows, d, ordinal) = ln_rows(a.x)?;
    let xk = a.x.kind();
    let x_tag = kind_tag(a.x, "the residual")?;
    expect(a.x, "the residual", xk, &[rows, d], ordinal)?;
    let y_tag = match a.y {
        Some(y) => {
            let tag = kind_tag(y, "the branch")?;
            expect(y, "the branch", y.kind(), &[rows, d], ordinal)?;
            tag
        }
        None => kind_tag(a.out, "the output")?,
    };
    if a.y.is_some() != a.sum.is_some() {
        return Err(kernel_err(
            "the sum is written exactly when a branch is added",
        ));
    }
    if let Some(s) = a.sum {
        expect(s, "the sum", xk, &[rows, d], ordinal)?;
    }
    let o_tag = kind_tag(a.out, "the output")?;
    expect(a.out, "the output", a.out.kind(), &[rows, d], ordinal)?;
    expect(a.weight, "the weight", xk, &[d], ordinal)?;
    expect(a.bias, "the bias", xk, &[d], ordinal)?;
    expect(a.mean, "the means", Kind::Float, &[rows], ordinal)?;
    expect(a.rstd, "the rstds", Kind::Float, &[rows], ordinal)?;
    let (seed, threshold, scale) = dropout_args(a.dropout.as_ref(), ordinal)?;
    let name = add_ln_name("fwd", x_tag, y_tag, o_tag)?;
    let ptrs = [
        ptr(Some(a.x)),
        ptr(a.y),
        ptr(Some(a.weight)),
        ptr(Some(a.bias)),
        ptr(a.sum),
        ptr(Some(a.out)),
        ptr(Some(a.mean)),
        ptr(Some(a.rstd)),
        ptr(seed),
    ];
    let warps = ADD_LN_WARPS as i64;
    let grid = ((rows + warps - 1) / warps) as u32;
    let scalars = [
        Scalar::I32(rows as i32),
        Scalar::I32(d as i32),
        Scalar::F32(a.eps as f32),
        Scalar::U32(threshold),
        Scalar::F32(scale),
    ];
    // SAFETY: the argument list matches add_ln_fwd's signature (9 pointers, the
    // branch and the sum null together, the seed null without dropout, int rows,
    // int d, float eps, unsigned threshold, float scale); every non-null
    // pointer is the data of a contiguous tensor checked above for dtype, shape and
    // device, and the kernel touches rows < rows and columns < d <= 1024 only; the
    // tensors outlive the queued work on the null stream (see the module docs).
    unsafe { launch(ordinal, name, (grid, 32 * ADD_LN_WARPS), &ptrs, &scalars) }
}

/// The seed pointer, threshold and scale of the kernels' dropout arguments (no
/// dropout: null, 0, 1, which keeps every element unscaled).
fn dropout_args<'a>(
    d: Option<&BranchDropout<'a>>,
    ordinal: usize,
) -> Result<(Option<&'a Tensor>, u32, f32)> {
    match d {
        None => Ok((None, 0, 1.0)),
        Some(d) => {
            expect(d.seed, "the dropout seed", Kind::Int64, &[1], ordinal)?;
            let (t, s) = d.threshold_scale()?;
            Ok((Some(d.seed), t, s))
        }
    }
}

fn add_ln_name(dir: &str, x: &str, y: &str, o: &str) -> Result<&'static str> {
    let name = format!("add_ln_{dir}_{x}_{y}_{o}");
    ADD_LAYER_NORM
        .kernels
        .iter()
        .find(|k| **k == name)
        .copied()
        .ok_or_else(|| kernel_err(format!("no kernel {name}")))
}

/// The backward of [`add_ln_forward`] on CUDA: `dx`, `dy` in one kernel, the weight
/// and bias gradients from per-warp partial sums (one libtorch sum each).
/// [`add_ln_backward_reference`] is the same arithmetic in libtorch operators.
pub fn add_ln_backward(a: &AddLnBackward<'_>) -> Result<()> {
    let (rows, d, ordinal) = ln_rows(a.sum)?;
    let xk = a.sum.kind();
    let x_tag = kind_tag(a.sum, "the sum")?;
    expect(a.sum, "the sum", xk, &[rows, d], ordinal)?;
    expect(a.mean, "the means", Kind::Float, &[rows], ordinal)?;
    expect(a.rstd, "the rstds", Kind::Float, &[rows], ordinal)?;
    expect(a.weight, "the weight", xk, &[d], ordinal)?;
    let o_tag = kind_tag(a.grad_out, "the output gradient")?;
    expect(
        a.grad_out,
        "the output gradient",
        a.grad_out.kind(),
        &[rows, d],
        ordinal,
    )?;
    if let Some(g) = a.grad_sum {
        expect(g, "the sum gradient", xk, &[rows, d], ordinal)?;
    }
    expect(a.dx, "dx", xk, &[rows, d], ordinal)?;
    let y_tag = match a.dy {
        Some(dy) => {
            let tag = kind_tag(dy, "dy")?;
            expect(dy, "dy", dy.kind(), &[rows, d], ordinal)?;
            tag
        }
        None => o_tag,
    };
    expect(a.dw, "dw", xk, &[d], ordinal)?;
    expect(a.db, "db", xk, &[d], ordinal)?;
    let (seed, threshold, scale) = dropout_args(a.dropout.as_ref(), ordinal)?;
    let name = add_ln_name("bwd", x_tag, y_tag, o_tag)?;
    let warps = ADD_LN_WARPS as i64;
    let grid = ((rows + warps - 1) / warps).min(ADD_LN_BWD_BLOCKS as i64);
    let parts = Tensor::f_empty([2, grid * warps, d], (Kind::Float, a.sum.device()))?;
    let (dw_part, db_part) = (parts.get(0), parts.get(1));
    let ptrs = [
        ptr(Some(a.sum)),
        ptr(Some(a.mean)),
        ptr(Some(a.rstd)),
        ptr(Some(a.weight)),
        ptr(Some(a.grad_out)),
        ptr(a.grad_sum),
        ptr(Some(a.dx)),
        ptr(a.dy),
        ptr(Some(&dw_part)),
        ptr(Some(&db_part)),
        ptr(seed),
    ];
    let scalars = [
        Scalar::I32(rows as i32),
        Scalar::I32(d as i32),
        Scalar::U32(threshold),
        Scalar::F32(scale),
    ];
    // SAFETY: the argument list matches add_ln_bwd's signature (11 pointers, the seed
    // null without dropout, int rows, int d, unsigned threshold, float scale); every
    // non-null pointer is the data of a contiguous tensor checked above
    // (or `parts`, [2, grid * 8, d] fp32: warp `w` writes row `w` of each half) for
    // dtype, shape and device; the kernel touches rows < rows, columns < d <= 1024;
    // the tensors outlive the queued work on the null stream (see the module docs).
    unsafe {
        launch(
            ordinal,
            name,
            (grid as u32, 32 * ADD_LN_WARPS),
            &ptrs,
            &scalars,
        )?
    };
    let sums = parts.f_sum_dim_intlist([1i64].as_slice(), false, Kind::Float)?;
    a.dw.shallow_clone().f_copy_(&sums.get(0))?;
    a.db.shallow_clone().f_copy_(&sums.get(1))?;
    Ok(())
}

/// [`add_ln_forward`]'s arithmetic in libtorch operators (any device).
pub fn add_ln_forward_reference(a: &AddLnForward<'_>) -> Result<()> {
    let s = match a.y {
        // Rounded to the residual's kind, as the kernel does.
        Some(y) => {
            let mut y = y.f_to_kind(Kind::Float)?;
            if let Some(d) = &a.dropout {
                y = y.f_mul(&dropout_scale_mask(d, y.numel() as i64)?.f_view_as(&y)?)?;
            }
            a.x.f_to_kind(Kind::Float)?
                .f_add(&y)?
                .f_to_kind(a.x.kind())?
                .f_to_kind(Kind::Float)?
        }
        None => a.x.f_to_kind(Kind::Float)?,
    };
    if let Some(sum) = a.sum {
        sum.shallow_clone().f_copy_(&s)?;
    }
    let (w, b) = (
        a.weight.f_to_kind(Kind::Float)?,
        a.bias.f_to_kind(Kind::Float)?,
    );
    let dims = [-1i64];
    let mu = s.f_mean_dim(dims.as_slice(), true, Kind::Float)?;
    let e = s.f_sub(&mu)?;
    let var = e
        .f_square()?
        .f_mean_dim(dims.as_slice(), true, Kind::Float)?;
    let rstd = (var + a.eps).f_rsqrt()?;
    let out = (&e * &rstd) * w + b;
    a.out.shallow_clone().f_copy_(&out)?;
    a.mean.shallow_clone().f_copy_(&mu.squeeze_dim(-1))?;
    a.rstd.shallow_clone().f_copy_(&rstd.squeeze_dim(-1))?;
    Ok(())
}

/// [`add_ln_backward`]'s arithmetic in libtorch operators (any device).
pub fn add_ln_backward_reference(a: &AddLnBackward<'_>) -> Result<()> {
    let dims = [-1i64];
    let rs = a.rstd.unsqueeze(-1);
    let xh = (a.sum.f_to_kind(Kind::Float)? - a.mean.unsqueeze(-1)) * &rs;
    let g = a.grad_out.f_to_kind(Kind::Float)?;
    let gw = &g * a.weight.f_to_kind(Kind::Float)?;
    let s1 = gw.f_mean_dim(dims.as_slice(), true, Kind::Float)?;
    let s2 = (&gw * &xh).f_mean_dim(dims.as_slice(), true, Kind::Float)?;
    let mut ds = rs * (gw - s1 - &xh * s2);
    if let Some(gs) = a.grad_sum {
        ds += gs.f_to_kind(Kind::Float)?;
    }
    a.dx.shallow_clone().f_copy_(&ds)?;
    if let Some(dy) = a.dy {
        let g = match &a.dropout {
            Some(d) => ds.f_mul(&dropout_scale_mask(d, ds.numel() as i64)?.f_view_as(&ds)?)?,
            None => ds.shallow_clone(),
        };
        dy.shallow_clone().f_copy_(&g)?;
    }
    let rows = [0i64];
    a.dw.shallow_clone().f_copy_(&(&g * &xh).f_sum_dim_intlist(
        rows.as_slice(),
        false,
        Kind::Float,
    )?)?;
    a.db.shallow_clone()
        .f_copy_(&g.f_sum_dim_intlist(rows.as_slice(), false, Kind::Float)?)?;
    Ok(())
}
