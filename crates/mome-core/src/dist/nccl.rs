//! The NCCL communicator (feature `nccl`): cudarc's raw NCCL bindings on the device
//! pointers of tch tensors, on the legacy default (null) CUDA stream that libtorch
//! uses, so collectives are ordered with libtorch's kernels without host syncs.
//!
//! NCCL is loaded at run time (cudarc's `dynamic-loading`: no CUDA toolkit at build
//! time). cudarc's own loader looks for `libnccl.so` and `libnccl.so.<cuda major>`
//! only, while torch wheels ship `libnccl.so.2` (which `libtorch_cuda.so` already
//! loaded), so this module loads [`sys::Lib`] itself: `MOME_NCCL_LIBRARY` if set,
//! then `libnccl.so.2`, then `libnccl.so`, and calls its function pointers, checking
//! each result with cudarc's `ncclResult_t::result()`.
//!
//! Collectives are enqueued on the legacy default stream, except the all-reduces
//! started during backward ([`Collective::start_all_reduce_sum`]), which run on a
//! non-blocking stream of their own, ordered with the compute stream by events.
//!
//! The workspace's `unsafe` code lives here and in `dist/hooks.rs` (the gradient
//! hooks' FFI).
#![allow(unsafe_code)]

use std::ffi::{c_int, c_void, CStr};
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use cudarc::driver::result as drv;
use cudarc::driver::sys as drv_sys;
use cudarc::nccl::sys;
use tch::{Device, Kind, Tensor};

use super::{Collective, DistEnv, Session};
use crate::{Error, Result};

/// Environment variable: path or name of the NCCL library to load.
pub const ENV_NCCL_LIBRARY: &str = "MOME_NCCL_LIBRARY";

static LIB: OnceLock<std::result::Result<sys::Lib, String>> = OnceLock::new();

/// The NCCL library, loaded once per process.
fn lib() -> Result<&'static sys::Lib> {
    let loaded = LIB.get_or_init(|| {
        let mut names: Vec<String> = Vec::new();
        if let Ok(p) = std::env::var(ENV_NCCL_LIBRARY) {
            names.push(p);
        }
        names.extend(["libnccl.so.2".to_string(), "libnccl.so".to_string()]);
        let mut errors = Vec::new();
        for name in &names {
            // SAFETY: loading libnccl runs its initialisers (a trusted system library,
            // usually already loaded by libtorch_cuda.so). `Lib::new` resolves every
            // symbol of cudarc's bindings and panics when one is missing (an NCCL
            // older than the bindings): the panic is caught and reported below.
            let r = std::panic::catch_unwind(|| unsafe { sys::Lib::new(name.as_str()) });
            match r {
                Ok(Ok(lib)) => return Ok(lib),
                Ok(Err(e)) => errors.push(format!("{name}: {e}")),
                Err(_) => errors.push(format!(
                    "{name}: lacks a symbol of cudarc's NCCL bindings (NCCL older than 2.28?)"
                )),
            }
        }
        Err(errors.join("; "))
    });
    loaded.as_ref().map_err(|e| {
        Error::Distributed(format!(
            "cannot load NCCL ({e}); set {ENV_NCCL_LIBRARY} to the path of libnccl.so.2 \
             (torch wheels ship it in nvidia/nccl/lib)"
        ))
    })
}

/// Turns an NCCL status into a result naming the call, with NCCL's error string and
/// last error message.
fn check(
    lib: &sys::Lib,
    status: sys::ncclResult_t,
    what: &str,
    comm: Option<sys::ncclComm_t>,
) -> Result<()> {
    match status.result() {
        Ok(_) => Ok(()),
        Err(e) => {
            // SAFETY: ncclGetErrorString returns a static NUL-terminated string for
            // any result code; ncclGetLastError returns a NUL-terminated string
            // owned by NCCL (or null), valid until the next NCCL call of this thread,
            // and is copied at once.
            let (text, last) = unsafe {
                let text = (lib.ncclGetErrorString)(e.0);
                let text = if text.is_null() {
                    String::new()
                } else {
                    CStr::from_ptr(text).to_string_lossy().into_owned()
                };
                let last = (lib.ncclGetLastError)(comm.unwrap_or(std::ptr::null_mut()));
                let last = if last.is_null() {
                    String::new()
                } else {
                    CStr::from_ptr(last).to_string_lossy().into_owned()
                };
                (text, last)
            };
            Err(Error::Distributed(format!(
                "NCCL {what} failed: {text} ({:?}){}",
                e.0,
                if last.is_empty() {
                    String::new()
                } else {
                    format!(": {last}")
                }
            )))
        }
    }
}

/// The NCCL version as `major * 10000 + minor * 100 + patch` (loads the library; no
/// GPU needed).
pub fn nccl_version() -> Result<i32> {
    let lib = lib()?;
    let mut v: c_int = 0;
    // SAFETY: `v` is a valid out-pointer for the duration of the call.
    let status = unsafe { (lib.ncclGetVersion)(&mut v) };
    check(lib, status, "ncclGetVersion", None)?;
    Ok(v)
}

/// A new NCCL unique id (rank 0 creates it; the others read it from the rendezvous).
pub fn unique_id() -> Result<Vec<u8>> {
    let lib = lib()?;
    let mut id = MaybeUninit::<sys::ncclUniqueId>::uninit();
    // SAFETY: `id` is a valid out-pointer; NCCL fills all of it on success, and it is
    // read only then.
    let id = unsafe {
        let status = (lib.ncclGetUniqueId)(id.as_mut_ptr());
        check(lib, status, "ncclGetUniqueId", None)?;
        id.assume_init()
    };
    Ok(id.internal.iter().map(|&c| c as u8).collect())
}

fn to_unique_id(bytes: &[u8]) -> Result<sys::ncclUniqueId> {
    let mut id = sys::ncclUniqueId { internal: [0; 128] };
    if bytes.len() != id.internal.len() {
        return Err(Error::Distributed(format!(
            "the NCCL unique id has {} bytes; expected {}",
            bytes.len(),
            id.internal.len()
        )));
    }
    for (d, &s) in id.internal.iter_mut().zip(bytes) {
        *d = s as std::ffi::c_char;
    }
    Ok(id)
}

/// The primary context of CUDA device `ordinal` (the one libtorch and the runtime
/// use), retained once per process.
fn primary_context(ordinal: usize) -> Result<usize> {
    static CTX: OnceLock<std::sync::Mutex<Vec<(usize, usize)>>> = OnceLock::new();
    let table = CTX.get_or_init(|| std::sync::Mutex::new(Vec::new()));
    let mut table = table
        .lock()
        .map_err(|_| Error::Distributed("CUDA context table poisoned".into()))?;
    if let Some((_, ctx)) = table.iter().find(|(o, _)| *o == ordinal) {
        return Ok(*ctx);
    }
    let r = std::panic::catch_unwind(|| -> std::result::Result<usize, String> {
        drv::init().map_err(|e| format!("cuInit: {e:?}"))?;
        let dev = drv::device::get(ordinal as c_int)
            .map_err(|e| format!("cuDeviceGet({ordinal}): {e:?}"))?;
        // SAFETY: retains the device's primary context; it is never released, so the
        // handle stays valid for the life of the process.
        let ctx = unsafe { drv::primary_ctx::retain(dev) }
            .map_err(|e| format!("cuDevicePrimaryCtxRetain({ordinal}): {e:?}"))?;
        Ok(ctx as usize)
    });
    let ctx = match r {
        Ok(Ok(ctx)) => ctx,
        Ok(Err(e)) => return Err(Error::Distributed(format!("CUDA driver: {e}"))),
        Err(_) => {
            return Err(Error::Distributed(
                "cannot load the CUDA driver library (libcuda.so.1)".into(),
            ))
        }
    };
    table.push((ordinal, ctx));
    Ok(ctx)
}

/// Makes device `ordinal` current on this thread (NCCL creates the communicator on
/// and launches on the current device). Device 0 is a thread's current device unless
/// changed, and libtorch restores the device after each operation, so for `cuda:0`
/// (every rank under `mome launch`) nothing is done and the CUDA driver library is
/// not loaded; other ordinals go through the driver API (cudarc's `driver`).
/// Makes the primary context of device `ordinal` current on this thread (the driver
/// API calls need one; libtorch's backward threads may not have made it current).
fn make_current(ordinal: usize) -> Result<()> {
    let ctx = primary_context(ordinal)?;
    // SAFETY: `ctx` is a primary context retained for the life of the process.
    unsafe { drv::ctx::set_current(ctx as cudarc::driver::sys::CUcontext) }
        .map_err(|e| Error::Distributed(format!("cuCtxSetCurrent({ordinal}): {e:?}")))
}

fn set_device(ordinal: usize) -> Result<()> {
    if ordinal == 0 {
        return Ok(());
    }
    make_current(ordinal)
}

/// A CUDA driver error of call `what` (`what` names the call and its purpose).
fn driver_error(what: &'static str) -> impl Fn(drv::DriverError) -> Error {
    move |e| Error::Distributed(format!("{what}: {e:?}"))
}

fn nccl_type(kind: Kind) -> Result<sys::ncclDataType_t> {
    use sys::ncclDataType_t as T;
    Ok(match kind {
        Kind::Float => T::ncclFloat32,
        Kind::Double => T::ncclFloat64,
        Kind::Half => T::ncclFloat16,
        Kind::BFloat16 => T::ncclBfloat16,
        Kind::Int64 => T::ncclInt64,
        Kind::Int => T::ncclInt32,
        Kind::Int8 => T::ncclInt8,
        Kind::Uint8 => T::ncclUint8,
        k => {
            return Err(Error::Distributed(format!(
                "NCCL collectives do not support tensors of kind {k:?}"
            )))
        }
    })
}

/// An NCCL communicator handle shared with the watchdog's abort hook.
struct Comm {
    lib: &'static sys::Lib,
    raw: sys::ncclComm_t,
    aborted: AtomicBool,
}

// SAFETY: an NCCL communicator is an opaque handle that NCCL allows to be used from
// any thread (one thread at a time for operations, which the lock of the
// `GroupHandle` that owns the `NcclGroup` guarantees: the training thread, or
// libtorch's backward thread running the gradient hooks while the training thread
// waits in backward); the only call from another thread is ncclCommAbort from the
// watchdog, which NCCL documents as the way to stop a communicator whose operations
// hang (PyTorch's watchdog does the same).
unsafe impl Send for Comm {}
// SAFETY: see `Send`: shared access is limited to `abort`, guarded by `aborted`.
unsafe impl Sync for Comm {}

impl Comm {
    fn abort(&self) {
        if !self.aborted.swap(true, Ordering::SeqCst) {
            // SAFETY: `raw` is a communicator created by ncclCommInitRank and not yet
            // destroyed (Drop skips destroy once aborted).
            let _ = unsafe { (self.lib.ncclCommAbort)(self.raw) };
        }
    }
}

impl Comm {
    /// The communicator's asynchronous error, if any (NCCL allows this query from
    /// another thread while operations run: the watchdog calls it).
    fn async_error(&self) -> Option<String> {
        if self.aborted.load(Ordering::SeqCst) {
            return None;
        }
        let mut status = sys::ncclResult_t::ncclSuccess;
        // SAFETY: `raw` is a live communicator (the `Arc` held by the watchdog keeps
        // it from being destroyed) and `status` a valid out-pointer.
        let r = unsafe { (self.lib.ncclCommGetAsyncError)(self.raw, &mut status) };
        let failed = |s: sys::ncclResult_t| {
            !matches!(
                s,
                sys::ncclResult_t::ncclSuccess | sys::ncclResult_t::ncclInProgress
            )
        };
        if failed(r) {
            return check(self.lib, r, "ncclCommGetAsyncError", Some(self.raw))
                .err()
                .map(|e| e.to_string());
        }
        if failed(status) {
            let e = check(
                self.lib,
                status,
                "an asynchronous operation",
                Some(self.raw),
            );
            return e.err().map(|e| format!("NCCL reported an error: {e}"));
        }
        None
    }
}

impl Drop for Comm {
    fn drop(&mut self) {
        if !self.aborted.swap(true, Ordering::SeqCst) {
            // SAFETY: `raw` is a live communicator; nothing uses it after this.
            let _ = unsafe { (self.lib.ncclCommDestroy)(self.raw) };
        }
    }
}

/// One rank of an NCCL process group on one CUDA device, with its rendezvous
/// [`Session`] (and watchdog) when the world has a rendezvous folder.
pub struct NcclGroup {
    comm: Arc<Comm>,
    rank: usize,
    world_size: usize,
    ordinal: usize,
    // The stream of the started (overlapped) all-reduces, made on first use.
    side: Option<SideStream>,
    // Buckets whose started sum the compute stream has not waited for yet.
    in_flight: Vec<Tensor>,
    // Dropped after `comm`'s handle here; its abort hook holds another `Arc`.
    session: Option<Session>,
}

/// A non-blocking CUDA stream for the collectives that overlap backward, and the two
/// events that order it with the compute (legacy default) stream.
struct SideStream {
    stream: drv_sys::CUstream,
    // Recorded on the compute stream before each started collective.
    ready: drv_sys::CUevent,
    // Recorded on the side stream by `wait_started`.
    done: drv_sys::CUevent,
}

// SAFETY: CUDA streams and events are handles usable from any thread of the process
// (with the device's primary context current, which `make_current` ensures).
unsafe impl Send for SideStream {}

impl SideStream {
    fn new(ordinal: usize) -> Result<Self> {
        make_current(ordinal)?;
        let flags = drv_sys::CUevent_flags::CU_EVENT_DISABLE_TIMING;
        let stream = drv::stream::create(drv::stream::StreamKind::NonBlocking)
            .map_err(driver_error("cuStreamCreate for the overlapped all-reduce"))?;
        let event = || {
            drv::event::create(flags)
                .map_err(driver_error("cuEventCreate for the overlapped all-reduce"))
        };
        let (ready, done) = (event()?, event()?);
        Ok(Self {
            stream,
            ready,
            done,
        })
    }
}

impl Drop for SideStream {
    fn drop(&mut self) {
        // SAFETY: handles created in `new`, destroyed once; pending work keeps
        // running to completion (CUDA defers the release).
        unsafe {
            let _ = drv::event::destroy(self.ready);
            let _ = drv::event::destroy(self.done);
            let _ = drv::stream::destroy(self.stream);
        }
    }
}

impl std::fmt::Debug for NcclGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclGroup")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .field("device", &self.ordinal)
            .field("session", &self.session)
            .finish()
    }
}

enum Op {
    AllReduceSum,
    Broadcast(usize),
}

impl NcclGroup {
    /// Joins the group of `env` on `device` (a CUDA device): rendezvous (rank 0
    /// publishes the NCCL unique id, the others poll for it), watchdog, then
    /// `ncclCommInitRank` (blocks until every rank has joined). A world of one rank
    /// without a rendezvous folder makes its id locally.
    pub fn init(env: &DistEnv, device: Device) -> Result<Self> {
        let Device::Cuda(ordinal) = device else {
            return Err(Error::Distributed(format!(
                "NCCL needs a CUDA device; the model is on {device:?}"
            )));
        };
        let lib = lib()?;
        let session = match &env.rendezvous {
            Some(_) => Some(Session::join(env)?),
            None => None,
        };
        let id = match &session {
            Some(s) => s.exchange_token(unique_id)?,
            None => unique_id()?,
        };
        let id = to_unique_id(&id)?;
        set_device(ordinal)?;
        let mut raw: sys::ncclComm_t = std::ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer; the id is the one shared by all ranks
        // of this world; rank and size were validated by `DistEnv`.
        let status = unsafe {
            (lib.ncclCommInitRank)(&mut raw, env.world_size as c_int, id, env.rank as c_int)
        };
        check(lib, status, "ncclCommInitRank", None)?;
        let comm = Arc::new(Comm {
            lib,
            raw,
            aborted: AtomicBool::new(false),
        });
        if let Some(s) = &session {
            let c = comm.clone();
            s.on_abort(Box::new(move || c.abort()));
            let c = comm.clone();
            s.on_check(Box::new(move || c.async_error()));
        }
        Ok(Self {
            comm,
            rank: env.rank,
            world_size: env.world_size,
            ordinal,
            side: None,
            in_flight: Vec::new(),
            session,
        })
    }

    fn check_open(&self) -> Result<()> {
        if self.comm.aborted.load(Ordering::SeqCst) {
            return Err(Error::Distributed(
                "the NCCL communicator was aborted".into(),
            ));
        }
        Ok(())
    }

    fn run(&mut self, tensors: &[Tensor], op: Op) -> Result<()> {
        self.check_open()?;
        let mut staged: Vec<(Tensor, bool, sys::ncclDataType_t)> = Vec::new();
        for t in tensors {
            if t.device() != Device::Cuda(self.ordinal) {
                return Err(Error::Distributed(format!(
                    "NCCL collective on a tensor on {:?}; the communicator is on cuda:{}",
                    t.device(),
                    self.ordinal
                )));
            }
            if t.numel() == 0 {
                continue;
            }
            let dt = nccl_type(t.f_kind()?)?;
            if t.is_contiguous() {
                staged.push((t.shallow_clone(), false, dt));
            } else {
                staged.push((t.f_contiguous()?, true, dt));
            }
        }
        set_device(self.ordinal)?;
        let lib = self.comm.lib;
        let raw = self.comm.raw;
        let stream: sys::cudaStream_t = std::ptr::null_mut();
        // SAFETY: ncclGroupStart/End only bracket the calls below.
        check(
            lib,
            unsafe { (lib.ncclGroupStart)() },
            "ncclGroupStart",
            Some(raw),
        )?;
        let mut first_err = Ok(());
        for (t, _, dt) in &staged {
            let ptr = t.data_ptr();
            let n = t.numel();
            // SAFETY: `ptr` is the device pointer of a contiguous CUDA tensor of `n`
            // elements of type `dt` on this communicator's device, kept alive by
            // `staged` until the call returns; the operation is enqueued on the null
            // stream, ordered before any later libtorch kernel reading it. In-place
            // (send == receive buffer) is supported by NCCL.
            let status = unsafe {
                match op {
                    Op::AllReduceSum => (lib.ncclAllReduce)(
                        ptr as *const c_void,
                        ptr,
                        n,
                        *dt,
                        sys::ncclRedOp_t::ncclSum,
                        raw,
                        stream,
                    ),
                    Op::Broadcast(root) => (lib.ncclBroadcast)(
                        ptr as *const c_void,
                        ptr,
                        n,
                        *dt,
                        root as c_int,
                        raw,
                        stream,
                    ),
                }
            };
            if first_err.is_ok() {
                first_err = check(lib, status, "collective", Some(raw));
            }
        }
        // SAFETY: closes the group opened above (also after an error, as NCCL
        // requires).
        let end = check(
            lib,
            unsafe { (lib.ncclGroupEnd)() },
            "ncclGroupEnd",
            Some(raw),
        );
        first_err?;
        end?;
        for ((t, copy_back, _), orig) in staged.iter().zip(tensors.iter().filter(|t| t.numel() > 0))
        {
            if *copy_back {
                let mut o = orig.shallow_clone();
                tch::no_grad(|| o.f_copy_(t))?;
            }
        }
        Ok(())
    }
}

impl Collective for NcclGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_sum(&mut self, tensors: &[Tensor]) -> Result<()> {
        self.run(tensors, Op::AllReduceSum)
    }

    fn start_all_reduce_sum(&mut self, tensor: &Tensor) -> Result<()> {
        self.check_open()?;
        if tensor.device() != Device::Cuda(self.ordinal) || !tensor.is_contiguous() {
            return Err(Error::Distributed(format!(
                "a started all-reduce needs a contiguous tensor on cuda:{} (got {:?})",
                self.ordinal,
                tensor.device()
            )));
        }
        if tensor.numel() == 0 {
            return Ok(());
        }
        let dt = nccl_type(tensor.f_kind()?)?;
        // Possibly libtorch's backward thread: make the device's context current.
        make_current(self.ordinal)?;
        if self.side.is_none() {
            self.side = Some(SideStream::new(self.ordinal)?);
        }
        let side = self.side.as_ref().expect("made above");
        let lib = self.comm.lib;
        let raw = self.comm.raw;
        // SAFETY: the events and stream are live (owned by `side`); the null stream is
        // the compute stream. The side stream waits for everything queued on the
        // compute stream so far (the kernels that wrote `tensor`). `tensor` is a
        // contiguous CUDA tensor of `numel` elements of type `dt`, kept alive in
        // `in_flight` until the compute stream has waited for this collective
        // (`wait_started`), so its memory is not reused while NCCL works on it.
        unsafe {
            drv::event::record(side.ready, drv::stream::null())
                .map_err(driver_error("cuEventRecord"))?;
            drv::stream::wait_event(
                side.stream,
                side.ready,
                drv_sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
            )
            .map_err(driver_error("cuStreamWaitEvent"))?;
            let ptr = tensor.data_ptr();
            check(
                lib,
                (lib.ncclAllReduce)(
                    ptr as *const c_void,
                    ptr,
                    tensor.numel(),
                    dt,
                    sys::ncclRedOp_t::ncclSum,
                    raw,
                    side.stream as sys::cudaStream_t,
                ),
                "ncclAllReduce (started)",
                Some(raw),
            )?;
        }
        self.in_flight.push(tensor.shallow_clone());
        Ok(())
    }

    fn wait_started(&mut self) -> Result<()> {
        if self.in_flight.is_empty() {
            return Ok(());
        }
        let Some(side) = self.side.as_ref() else {
            return Ok(());
        };
        make_current(self.ordinal)?;
        // SAFETY: live handles (see `start_all_reduce_sum`); the compute stream waits
        // for everything queued on the side stream so far.
        unsafe {
            drv::event::record(side.done, side.stream).map_err(driver_error("cuEventRecord"))?;
            drv::stream::wait_event(
                drv::stream::null(),
                side.done,
                drv_sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
            )
            .map_err(driver_error("cuStreamWaitEvent"))?;
        }
        // Freed to libtorch's caching allocator, whose later reuse of the memory is
        // ordered on the compute stream after the wait above.
        self.in_flight.clear();
        Ok(())
    }

    fn broadcast(&mut self, tensors: &[Tensor], root: usize) -> Result<()> {
        if root >= self.world_size {
            return Err(Error::Distributed(format!(
                "broadcast from rank {root} in a world of {}",
                self.world_size
            )));
        }
        self.run(tensors, Op::Broadcast(root))
    }

    fn finish(&mut self, outcome: std::result::Result<(), String>) {
        if let Some(s) = self.session.as_mut() {
            let _ = match outcome {
                Ok(()) => s.mark_done(),
                Err(msg) => s.mark_failed(&msg),
            };
        }
    }
}
