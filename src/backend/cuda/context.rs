//! The device context of the CUDA backend: one CUDA context (device 0 by default), a compute
//! stream and a copy stream, a cuBLAS handle on the compute stream, a cuSOLVER handle created on
//! first use (it is only the cross-check path), and the PTX modules of `cuda/*.cu`, each loaded
//! (JIT-compiled by the driver) once on first use and cached with its functions.
//!
//! Opening the context never panics on a machine without CUDA. cudarc's dynamic loading panics
//! when a shared library is missing, so every library is probed first with cudarc's own
//! `is_culib_present` (a plain `dlopen` of the same candidate names), and the first driver call
//! runs under `catch_unwind` as a last guard (e.g. a driver too old to export a symbol). Every
//! failure is a `FaspError::Cuda` that names the library and mentions `LD_LIBRARY_PATH`.
//!
//! The `launch!` macro is the one place kernels are launched; wrappers bind every argument to a
//! local first (the launch builder keeps pointers to them), and validate sizes before launching.

use crate::error::{FaspError, Result};
use crate::kernels;
use cudarc::cublas::CudaBlas;
use cudarc::cusolver::DnHandle;
use cudarc::driver::{
    sys, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr, DeviceSlice, DriverError,
    LaunchConfig, ValidAsZeroBits,
};
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Launches `$name` from module `$module` on the compute stream of `$gpu` with `$cfg`; the
/// arguments are identifiers of locals (device pointers as `u64`, scalars as their C types).
macro_rules! launch {
    ($gpu:expr, $module:expr, $name:expr, $cfg:expr, [$($arg:ident),* $(,)?]) => {{
        use cudarc::driver::PushKernelArg as _;
        let func = $gpu.function($module, $name)?;
        let mut builder = $gpu.stream.launch_builder(&func);
        $( builder.arg(&$arg); )*
        // SAFETY: the caller checked the buffer sizes against the kernel's contract in
        // cuda/KERNELS.md, and every pointer comes from a live allocation whose stream
        // ordering guard is held until after this launch.
        unsafe { builder.launch($cfg) }
            .map(|_| ())
            .map_err(|e| $crate::backend::cuda::context::driver_err($name, e))
    }};
}
pub(crate) use launch;

/// `FaspError::Cuda` for a failed driver call.
pub fn driver_err(what: &str, e: DriverError) -> FaspError {
    FaspError::Cuda(format!("{what}: {e}"))
}

pub fn blas_err(what: &str, e: cudarc::cublas::result::CublasError) -> FaspError {
    FaspError::Cuda(format!("cuBLAS {what}: {e}"))
}

pub fn solver_err(what: &str, e: cudarc::cusolver::result::CusolverError) -> FaspError {
    FaspError::Cuda(format!("cuSOLVER {what}: {e:?}"))
}

/// `n` as a C `int`, or an error naming what overflowed.
pub fn c_int(n: usize, what: &str) -> Result<i32> {
    i32::try_from(n).map_err(|_| FaspError::Cuda(format!("{what} = {n} exceeds the 32-bit range of the kernels")))
}

/// Checks that a device buffer holds at least `need` elements.
pub fn need<T>(buf: &impl DeviceSlice<T>, need: usize, what: &str) -> Result<()> {
    if buf.len() < need {
        return Err(FaspError::Cuda(format!("{what}: buffer of {} elements, the launch needs {need}", buf.len())));
    }
    Ok(())
}

/// The efficient 1-D grid of a grid-stride kernel over `n` items (KERNELS.md: capped at 65535·8).
pub fn grid_1d(n: usize, block: u32) -> u32 {
    (n.div_ceil(block as usize)).clamp(1, 65535 * 8) as u32
}

pub fn cfg(grid: (u32, u32, u32), block: (u32, u32, u32)) -> LaunchConfig {
    LaunchConfig { grid_dim: grid, block_dim: block, shared_mem_bytes: 0 }
}

/// Why CUDA cannot be used here, or `Ok` when the libraries and a device are present.
fn probe_driver() -> Result<()> {
    if !kernels::KERNELS_BUILT {
        return Err(FaspError::Cuda(
            "this binary has no CUDA kernels (nvcc was not found when it was built): run scripts/setup-cuda.sh \
             (installs nvcc 13.0 into .cuda/, no GPU needed), then rebuild"
                .into(),
        ));
    }
    // SAFETY: a dlopen of the candidate names; nothing is called.
    if !unsafe { sys::is_culib_present() } {
        return Err(FaspError::Cuda(format!(
            "cannot load the CUDA driver library libcuda.so (tried {}): install the NVIDIA driver, or add the folder \
             holding libcuda.so.1 to LD_LIBRARY_PATH",
            candidates("cuda")
        )));
    }
    Ok(())
}

/// The names cudarc's loader tries for `lib`, shortened for a one-line error.
fn candidates(lib: &str) -> String {
    let mut seen = Vec::new();
    for c in cudarc::get_lib_name_candidates(lib) {
        if !seen.contains(&c) {
            seen.push(c);
        }
    }
    let so: Vec<&String> = seen.iter().filter(|c| c.contains(".so")).collect();
    match so.as_slice() {
        [first, .., last] => format!("{first} … {last}, {} names", seen.len()),
        _ => seen.join(", "),
    }
}

/// Runs a first call into a dynamically loaded library; a panic (a missing library or symbol
/// inside cudarc) becomes an error that names the library. The panic hook is silenced meanwhile
/// (under a lock, so concurrent callers cannot lose the original hook), so the user sees one
/// error line rather than a panic message.
fn guarded<T>(lib: &str, f: impl FnOnce() -> T) -> Result<T> {
    static HOOK: Mutex<()> = Mutex::new(());
    let r = {
        let _lock = HOOK.lock().unwrap_or_else(|e| e.into_inner());
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let r = catch_unwind(AssertUnwindSafe(f));
        std::panic::set_hook(prev);
        r
    };
    r.map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into());
        FaspError::Cuda(format!("{lib}: {} (check LD_LIBRARY_PATH)", msg.replace('\n', " ")))
    })
}

/// Cheap check whether `--device auto` should pick CUDA: kernels built in, the driver library
/// present, and at least one device. Never panics.
pub fn cuda_usable() -> Result<()> {
    probe_driver()?;
    let n = guarded("libcuda.so", CudaContext::device_count)?
        .map_err(|e| FaspError::Cuda(format!("the CUDA driver (libcuda.so) failed to initialise: {e}")))?;
    if n < 1 {
        return Err(FaspError::Cuda("the CUDA driver reports no device".into()));
    }
    Ok(())
}

/// The device context shared by every wrapper.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    /// Kernels, cuBLAS and cuSOLVER run here.
    pub stream: Arc<CudaStream>,
    /// Weight uploads (prefetch of the next layer) run here.
    pub copy: Arc<CudaStream>,
    pub blas: CudaBlas,
    solver: Mutex<Option<Arc<DnHandle>>>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
    /// Milliseconds spent loading (driver JIT of) each module, in load order.
    jit_ms: Mutex<Vec<(&'static str, f64)>>,
    pub device_name: String,
    pub compute_capability: (i32, i32),
    pub sm_count: usize,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({}, sm_{}{})", self.device_name, self.compute_capability.0, self.compute_capability.1)
    }
}

impl Gpu {
    /// Opens device `ordinal`: context, streams, cuBLAS. A clear error when anything is missing.
    pub fn new(ordinal: usize) -> Result<Arc<Gpu>> {
        probe_driver()?;
        let ctx = guarded("libcuda.so", || CudaContext::new(ordinal))?.map_err(|e| {
            FaspError::Cuda(format!("cannot open CUDA device {ordinal} through the driver (libcuda.so): {e}"))
        })?;
        let stream = ctx.new_stream().map_err(|e| driver_err("creating the compute stream", e))?;
        let copy = ctx.new_stream().map_err(|e| driver_err("creating the copy stream", e))?;
        // SAFETY: a dlopen of the candidate names; nothing is called.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(FaspError::Cuda(format!(
                "cannot load cuBLAS (tried {}): add the folder holding libcublas (e.g. site-packages/nvidia/cublas/lib \
                 of a PyTorch install, or the CUDA toolkit's lib64) to LD_LIBRARY_PATH",
                candidates("cublas")
            )));
        }
        let blas = guarded("libcublas", || CudaBlas::new(stream.clone()))?.map_err(|e| blas_err("cublasCreate", e))?;
        // Plain fp32 GEMMs: no TF32 (the CPU reference is fp32, and H must be accumulated in fp32 or better).
        // SAFETY: a valid handle; setting the math mode has no memory effects.
        unsafe {
            cudarc::cublas::sys::cublasSetMathMode(*blas.handle(), cudarc::cublas::sys::cublasMath_t::CUBLAS_DEFAULT_MATH)
        }
        .result()
        .map_err(|e| blas_err("cublasSetMathMode", e))?;
        let device_name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let compute_capability = ctx.compute_capability().map_err(|e| driver_err("compute capability", e))?;
        let sm_count = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| driver_err("multiprocessor count", e))? as usize;
        Ok(Arc::new(Gpu {
            ctx,
            stream,
            copy,
            blas,
            solver: Mutex::new(None),
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            jit_ms: Mutex::new(Vec::new()),
            device_name,
            compute_capability,
            sm_count,
        }))
    }

    /// One line describing the device.
    pub fn describe(&self) -> String {
        let (ma, mi) = self.compute_capability;
        format!("{} (sm_{ma}{mi}, {} SMs, PTX {})", self.device_name, self.sm_count, kernels::PTX_ARCH)
    }

    /// The cuSOLVER handle (cross-check path), created on first use.
    pub fn solver(&self) -> Result<Arc<DnHandle>> {
        let mut slot = self.solver.lock().expect("solver lock");
        if let Some(h) = slot.as_ref() {
            return Ok(h.clone());
        }
        // SAFETY: a dlopen of the candidate names; nothing is called.
        if !unsafe { cudarc::cusolver::sys::is_culib_present() } {
            return Err(FaspError::Cuda(format!(
                "cannot load cuSOLVER (tried {}): add the folder holding libcusolver (e.g. site-packages/nvidia/cusolver/lib \
                 of a PyTorch install) to LD_LIBRARY_PATH",
                candidates("cusolver")
            )));
        }
        self.ctx.bind_to_thread().map_err(|e| driver_err("binding the CUDA context", e))?;
        let h = guarded("libcusolver", || DnHandle::new(self.stream.clone()))?
            .map_err(|e| solver_err("cusolverDnCreate", e))?;
        let h = Arc::new(h);
        *slot = Some(h.clone());
        Ok(h)
    }

    fn module(&self, stem: &'static str) -> Result<Arc<CudaModule>> {
        let mut modules = self.modules.lock().expect("module lock");
        if let Some(m) = modules.get(stem) {
            return Ok(m.clone());
        }
        let ptx = kernels::ALL
            .iter()
            .find(|(s, _)| *s == stem)
            .map(|(_, p)| *p)
            .ok_or_else(|| FaspError::Cuda(format!("no kernel module cuda/{stem}.cu in this build")))?;
        if ptx.is_empty() {
            return Err(FaspError::Cuda(format!("cuda/{stem}.cu was not compiled (run scripts/setup-cuda.sh and rebuild)")));
        }
        let t0 = Instant::now();
        let m = self
            .ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
            .map_err(|e| driver_err(&format!("loading the PTX of cuda/{stem}.cu (driver JIT)"), e))?;
        self.jit_ms.lock().expect("jit lock").push((stem, t0.elapsed().as_secs_f64() * 1e3));
        modules.insert(stem, m.clone());
        Ok(m)
    }

    /// The kernel `name` of module `stem`, loading the module on first use.
    pub fn function(&self, stem: &'static str, name: &'static str) -> Result<CudaFunction> {
        if let Some(f) = self.functions.lock().expect("function lock").get(name) {
            return Ok(f.clone());
        }
        let m = self.module(stem)?;
        let f = m.load_function(name).map_err(|e| driver_err(&format!("kernel {name} in cuda/{stem}.cu"), e))?;
        self.functions.lock().expect("function lock").insert(name, f.clone());
        Ok(f)
    }

    /// Loads every module now (e.g. to measure the JIT cost apart from the work).
    pub fn load_all(&self) -> Result<()> {
        for (stem, _) in kernels::ALL {
            self.module(stem)?;
        }
        Ok(())
    }

    /// Per-module load (JIT) times so far, in milliseconds.
    pub fn jit_times_ms(&self) -> Vec<(&'static str, f64)> {
        self.jit_ms.lock().expect("jit lock").clone()
    }

    /// Waits for the compute stream and surfaces any asynchronous error.
    pub fn sync(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| driver_err("synchronizing the compute stream", e))?;
        self.ctx.check_err().map_err(|e| driver_err("an earlier asynchronous CUDA call", e))
    }

    /// Uninitialised device memory for `len` elements on the compute stream.
    pub fn alloc<T: DeviceRepr>(&self, len: usize, what: &str) -> Result<CudaSlice<T>> {
        // SAFETY: the contents are unspecified until written; every user writes before reading.
        unsafe { self.stream.alloc::<T>(len.max(1)) }.map_err(|e| alloc_err(what, len * std::mem::size_of::<T>(), e))
    }

    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize, what: &str) -> Result<CudaSlice<T>> {
        self.stream.alloc_zeros::<T>(len.max(1)).map_err(|e| alloc_err(what, len * std::mem::size_of::<T>(), e))
    }

    /// Device copy of host data (compute stream).
    pub fn upload<T: DeviceRepr>(&self, host: &[T], what: &str) -> Result<CudaSlice<T>> {
        let mut d = self.alloc::<T>(host.len(), what)?;
        if !host.is_empty() {
            self.stream.memcpy_htod(host, &mut d).map_err(|e| driver_err(&format!("upload of {what}"), e))?;
        }
        Ok(d)
    }

    /// Host copy of the first `len` elements of a device buffer (synchronises the compute stream).
    pub fn download<T: DeviceRepr + Default + Clone, D: DevicePtr<T>>(&self, d: &D, len: usize, what: &str) -> Result<Vec<T>> {
        need(d, len, what)?;
        let mut host = vec![T::default(); len];
        if len > 0 {
            let view = d_view(d, len);
            self.stream.memcpy_dtoh(&view, &mut host).map_err(|e| driver_err(&format!("download of {what}"), e))?;
        }
        self.sync()?;
        Ok(host)
    }

    /// Copies host data into the front of an existing buffer (e.g. NaN poison in tests).
    pub fn upload_into<T: DeviceRepr>(&self, host: &[T], d: &mut CudaSlice<T>, what: &str) -> Result<()> {
        if d.len() < host.len() {
            return Err(FaspError::Cuda(format!("{what}: {} values into a buffer of {}", host.len(), d.len())));
        }
        if host.is_empty() {
            return Ok(());
        }
        let mut view = d.slice_mut(0..host.len());
        self.stream.memcpy_htod(host, &mut view).map_err(|e| driver_err(&format!("upload of {what}"), e))
    }

    pub fn memset_zero<T: DeviceRepr + ValidAsZeroBits>(&self, d: &mut CudaSlice<T>) -> Result<()> {
        self.stream.memset_zeros(d).map_err(|e| driver_err("memset", e))
    }

    /// `(free, total)` device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.ctx.mem_get_info().map_err(|e| driver_err("cuMemGetInfo", e))
    }

    /// An event that records timing, for GPU-side measurements.
    pub fn timing_event(&self) -> Result<cudarc::driver::CudaEvent> {
        self.ctx
            .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| driver_err("creating a timing event", e))
    }
}

/// A view of the first `len` elements (DevicePtr has no slicing; CudaSlice and views do).
fn d_view<T, D: DevicePtr<T>>(d: &D, len: usize) -> DevPrefix<'_, T, D> {
    DevPrefix { inner: d, len, _t: std::marker::PhantomData }
}

/// `DevicePtr` over a prefix of another buffer (used by `download`).
struct DevPrefix<'a, T, D: DevicePtr<T> + ?Sized> {
    inner: &'a D,
    len: usize,
    _t: std::marker::PhantomData<T>,
}

impl<T, D: DevicePtr<T> + ?Sized> DeviceSlice<T> for DevPrefix<'_, T, D> {
    fn len(&self) -> usize {
        self.len
    }
    fn stream(&self) -> &Arc<CudaStream> {
        self.inner.stream()
    }
}

impl<T, D: DevicePtr<T> + ?Sized> DevicePtr<T> for DevPrefix<'_, T, D> {
    fn device_ptr<'b>(&'b self, stream: &'b CudaStream) -> (sys::CUdeviceptr, cudarc::driver::SyncOnDrop<'b>) {
        self.inner.device_ptr(stream)
    }
}

fn alloc_err(what: &str, bytes: usize, e: DriverError) -> FaspError {
    FaspError::Cuda(format!("allocating {:.1} MiB of device memory for {what}: {e}", bytes as f64 / (1 << 20) as f64))
}

/// bf16 as stored on the device: the bit pattern of a `half::bf16` (`__nv_bfloat16` in the
/// kernels). A local type, because cudarc implements `DeviceRepr` for `half` types only behind a
/// feature this crate does not enable.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bf16(pub u16);

// SAFETY: a plain 2-byte value with the layout of `__nv_bfloat16`; all-zero bits are +0.0.
unsafe impl DeviceRepr for Bf16 {}
// SAFETY: as above.
unsafe impl ValidAsZeroBits for Bf16 {}

impl From<half::bf16> for Bf16 {
    fn from(v: half::bf16) -> Bf16 {
        Bf16(v.to_bits())
    }
}

impl From<Bf16> for half::bf16 {
    fn from(v: Bf16) -> half::bf16 {
        half::bf16::from_bits(v.0)
    }
}

impl Bf16 {
    pub fn from_f32(v: f32) -> Bf16 {
        half::bf16::from_f32(v).into()
    }
    pub fn to_f32(self) -> f32 {
        half::bf16::from(self).to_f32()
    }
}
