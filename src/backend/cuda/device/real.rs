//! The real device: [`Device`] over cudarc's driver, cuBLAS and cuSOLVER calls, one call each.
//! The context is made current on the calling thread before every call; device memory is
//! stream-ordered (`cuMemAllocAsync`/`cuMemFreeAsync`); kernels come from the PTX of `cuda/*.cu`
//! (JIT-compiled by the driver on first use of a module); cuBLAS runs in `CUBLAS_DEFAULT_MATH`
//! (plain fp32, no TF32) with the stream set per call.

use super::{
    Counters, DResult, Device, DeviceError, DeviceKind, EventId, Gemm, Gemv, KArg, LaunchConfig, Op, Potrf, Potrs, StreamId, Syrk,
};
use crate::kernels;
use cudarc::cublas::sys::{cublasFillMode_t, cublasOperation_t};
use cudarc::cublas::CudaBlas;
use cudarc::cusolver::DnHandle;
use cudarc::driver::{result, sys, CudaContext, CudaEvent, CudaFunction, CudaModule, CudaStream, DriverError};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

fn drv(what: &str, source: DriverError) -> DeviceError {
    DeviceError::Driver { what: what.to_string(), source }
}

fn blas(what: &str, source: cudarc::cublas::result::CublasError) -> DeviceError {
    DeviceError::Blas { what: what.to_string(), source }
}

fn solv(what: &str, source: cudarc::cusolver::result::CusolverError) -> DeviceError {
    DeviceError::Solver { what: what.to_string(), source }
}

fn op(o: Op) -> cublasOperation_t {
    match o {
        Op::N => cublasOperation_t::CUBLAS_OP_N,
        Op::T => cublasOperation_t::CUBLAS_OP_T,
    }
}

/// Column-major upper = the row-major lower triangle the kernels use.
const UPPER: cublasFillMode_t = cublasFillMode_t::CUBLAS_FILL_MODE_UPPER;
const SOLVER_UPPER: cudarc::cusolver::sys::cublasFillMode_t = cudarc::cusolver::sys::cublasFillMode_t::CUBLAS_FILL_MODE_UPPER;

/// One GPU.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    streams: Mutex<Vec<Arc<CudaStream>>>,
    events: Mutex<Vec<CudaEvent>>,
    blas: CudaBlas,
    solver: Mutex<Option<DnHandle>>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
    jit_ms: Mutex<Vec<(&'static str, f64)>>,
    name: String,
    cc: (i32, i32),
    sms: usize,
    launches: AtomicU64,
    library_calls: AtomicU64,
    h2d: AtomicU64,
    d2h: AtomicU64,
    /// Live allocations (address → bytes), live, peak and phase-peak bytes.
    sizes: Mutex<(HashMap<u64, usize>, usize, usize, usize)>,
}

impl CudaDevice {
    /// Opens device `ordinal` (the caller has probed the libraries; see `context`).
    pub fn open(ordinal: usize) -> DResult<CudaDevice> {
        let ctx = CudaContext::new(ordinal).map_err(|e| drv(&format!("opening CUDA device {ordinal}"), e))?;
        let stream = ctx.new_stream().map_err(|e| drv("creating the compute stream", e))?;
        let blas_h = CudaBlas::new(stream.clone()).map_err(|e| blas("cublasCreate", e))?;
        // Plain fp32 GEMMs: no TF32 (the CPU reference is fp32, and H is accumulated in fp32 or better).
        // SAFETY: a valid handle; setting the math mode has no memory effects.
        unsafe { cudarc::cublas::sys::cublasSetMathMode(*blas_h.handle(), cudarc::cublas::sys::cublasMath_t::CUBLAS_DEFAULT_MATH) }
            .result()
            .map_err(|e| blas("cublasSetMathMode", e))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let cc = ctx.compute_capability().map_err(|e| drv("compute capability", e))?;
        let sms = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| drv("multiprocessor count", e))? as usize;
        Ok(CudaDevice {
            ctx,
            streams: Mutex::new(vec![stream]),
            events: Mutex::new(Vec::new()),
            blas: blas_h,
            solver: Mutex::new(None),
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            jit_ms: Mutex::new(Vec::new()),
            name,
            cc,
            sms,
            launches: AtomicU64::new(0),
            library_calls: AtomicU64::new(0),
            h2d: AtomicU64::new(0),
            d2h: AtomicU64::new(0),
            sizes: Mutex::new((HashMap::new(), 0, 0, 0)),
        })
    }

    fn bind(&self) -> DResult<()> {
        self.ctx.bind_to_thread().map_err(|e| drv("binding the CUDA context", e))
    }

    fn stream(&self, s: StreamId) -> DResult<sys::CUstream> {
        let v = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        v.get(s.0 as usize).map(|s| s.cu_stream()).ok_or_else(|| DeviceError::Unavailable(format!("unknown stream {}", s.0)))
    }

    fn event(&self, e: EventId) -> DResult<sys::CUevent> {
        let v = self.events.lock().unwrap_or_else(|e| e.into_inner());
        v.get(e.0 as usize).map(|e| e.cu_event()).ok_or_else(|| DeviceError::Unavailable(format!("unknown event {}", e.0)))
    }

    fn module(&self, stem: &'static str) -> DResult<Arc<CudaModule>> {
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = modules.get(stem) {
            return Ok(m.clone());
        }
        let ptx = kernels::ALL
            .iter()
            .find(|(s, _)| *s == stem)
            .map(|(_, p)| *p)
            .ok_or_else(|| DeviceError::Unavailable(format!("no kernel module cuda/{stem}.cu in this build")))?;
        if ptx.is_empty() {
            return Err(DeviceError::Unavailable(format!("cuda/{stem}.cu was not compiled (run scripts/setup-cuda.sh and rebuild)")));
        }
        let t0 = Instant::now();
        let m = self
            .ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
            .map_err(|e| drv(&format!("loading the PTX of cuda/{stem}.cu (driver JIT)"), e))?;
        self.jit_ms.lock().unwrap_or_else(|e| e.into_inner()).push((stem, t0.elapsed().as_secs_f64() * 1e3));
        modules.insert(stem, m.clone());
        Ok(m)
    }

    fn function(&self, stem: &'static str, name: &'static str) -> DResult<sys::CUfunction> {
        if let Some(f) = self.functions.lock().unwrap_or_else(|e| e.into_inner()).get(name) {
            return Ok(f.cu_function());
        }
        let m = self.module(stem)?;
        let f = m.load_function(name).map_err(|e| drv(&format!("kernel {name} in cuda/{stem}.cu"), e))?;
        let cu = f.cu_function();
        self.functions.lock().unwrap_or_else(|e| e.into_inner()).insert(name, f);
        Ok(cu)
    }

    /// Prepares a cuBLAS call on stream `s` (context bound, stream set, call counted): the handle.
    fn blas_on(&self, s: StreamId) -> DResult<cudarc::cublas::sys::cublasHandle_t> {
        self.bind()?;
        let st = self.stream(s)?;
        let h = *self.blas.handle();
        // SAFETY: a valid handle and stream of this context.
        unsafe { cudarc::cublas::sys::cublasSetStream_v2(h, st as _) }.result().map_err(|e| blas("cublasSetStream", e))?;
        self.library_calls.fetch_add(1, Ordering::Relaxed);
        Ok(h)
    }

    /// Prepares a cuSOLVER call on stream `s` (context bound, handle created on first use, stream
    /// set): the handle.
    fn solver_on(&self, s: StreamId) -> DResult<cudarc::cusolver::sys::cusolverDnHandle_t> {
        self.bind()?;
        let st = self.stream(s)?;
        let mut slot = self.solver.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            // SAFETY: a dlopen of the candidate names; nothing is called.
            if !unsafe { cudarc::cusolver::sys::is_culib_present() } {
                return Err(DeviceError::Unavailable(
                    "cannot load cuSOLVER: add the folder holding libcusolver (e.g. site-packages/nvidia/cusolver/lib of a PyTorch install) to LD_LIBRARY_PATH".into(),
                ));
            }
            let stream = self.streams.lock().unwrap_or_else(|e| e.into_inner())[s.0 as usize].clone();
            *slot = Some(DnHandle::new(stream).map_err(|e| solv("cusolverDnCreate", e))?);
        }
        let h = slot.as_ref().expect("created above").cu();
        // SAFETY: a valid handle and stream.
        unsafe { cudarc::cusolver::sys::cusolverDnSetStream(h, st as _) }.result().map_err(|e| solv("cusolverDnSetStream", e))?;
        Ok(h)
    }
}

impl Device for CudaDevice {
    fn kind(&self) -> DeviceKind {
        DeviceKind::Cuda
    }

    fn describe(&self) -> String {
        format!("{} (sm_{}{}, {} SMs, PTX {})", self.name, self.cc.0, self.cc.1, self.sms, kernels::PTX_ARCH)
    }

    fn sm_count(&self) -> usize {
        self.sms
    }

    fn mem_info(&self) -> DResult<(usize, usize)> {
        self.bind()?;
        self.ctx.mem_get_info().map_err(|e| drv("cuMemGetInfo", e))
    }

    fn default_stream(&self) -> StreamId {
        StreamId(0)
    }

    fn new_stream(&self) -> DResult<StreamId> {
        let s = self.ctx.new_stream().map_err(|e| drv("creating a stream", e))?;
        let mut v = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        v.push(s);
        Ok(StreamId(v.len() as u32 - 1))
    }

    fn alloc(&self, bytes: usize, stream: StreamId, what: &str) -> DResult<u64> {
        self.bind()?;
        let s = self.stream(stream)?;
        // SAFETY: a stream of this context; the contents are unspecified until written.
        let p = unsafe { result::malloc_async(s, bytes) }
            .map_err(|e| drv(&format!("allocating {:.1} MiB of device memory for {what}", bytes as f64 / (1 << 20) as f64), e))?;
        let mut z = self.sizes.lock().unwrap_or_else(|e| e.into_inner());
        z.0.insert(p, bytes);
        z.1 += bytes;
        z.2 = z.2.max(z.1);
        z.3 = z.3.max(z.1);
        Ok(p)
    }

    fn free(&self, ptr: u64, stream: StreamId) {
        {
            let mut z = self.sizes.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(b) = z.0.remove(&ptr) {
                z.1 -= b;
            }
        }
        if self.bind().is_err() {
            return;
        }
        if let Ok(s) = self.stream(stream) {
            // SAFETY: an allocation of this context, freed once (by its owner's drop).
            let _ = unsafe { result::free_async(ptr, s) };
        }
    }

    fn memset_zero(&self, dst: u64, bytes: usize, stream: StreamId) -> DResult<()> {
        self.bind()?;
        let s = self.stream(stream)?;
        // SAFETY: the caller passes a range inside one allocation.
        unsafe { result::memset_d8_async(dst, 0, bytes, s) }.map_err(|e| drv("memset", e))
    }

    unsafe fn htod(&self, dst: u64, src: *const u8, bytes: usize, stream: StreamId) -> DResult<()> {
        self.bind()?;
        let s = self.stream(stream)?;
        self.h2d.fetch_add(bytes as u64, Ordering::Relaxed);
        // SAFETY: the caller guarantees src for bytes and a destination range inside one allocation.
        unsafe { result::memcpy_htod_async(dst, std::slice::from_raw_parts(src, bytes), s) }.map_err(|e| drv("host-to-device copy", e))
    }

    fn dtoh(&self, dst: &mut [u8], src: u64, _elem: usize, stream: StreamId) -> DResult<()> {
        self.bind()?;
        let s = self.stream(stream)?;
        self.d2h.fetch_add(dst.len() as u64, Ordering::Relaxed);
        // SAFETY: the source range lies inside one allocation; dst lives until the sync below.
        unsafe { result::memcpy_dtoh_async(dst, src, s) }.map_err(|e| drv("device-to-host copy", e))?;
        self.sync_stream(stream)
    }

    fn dtod(&self, dst: u64, src: u64, bytes: usize, stream: StreamId) -> DResult<()> {
        self.bind()?;
        let s = self.stream(stream)?;
        // SAFETY: both ranges inside allocations of this context.
        unsafe { result::memcpy_dtod_async(dst, src, bytes, s) }.map_err(|e| drv("device-to-device copy", e))
    }

    fn launch(&self, module: &'static str, name: &'static str, cfg: &LaunchConfig, args: &[KArg], stream: StreamId) -> DResult<()> {
        self.bind()?;
        let f = self.function(module, name)?;
        let s = self.stream(stream)?;
        let mut params: Vec<*mut c_void> = args.iter().map(|a| a.ptr as *mut c_void).collect();
        self.launches.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the wrapper checked sizes against the kernel's contract (cuda/KERNELS.md); the
        // emulated device checks the same argument lists against the kernels' signatures in CI.
        unsafe { result::launch_kernel(f, cfg.grid_dim, cfg.block_dim, cfg.shared_mem_bytes, s, &mut params) }.map_err(|e| drv(name, e))
    }

    fn load_module(&self, module: &'static str) -> DResult<()> {
        self.bind()?;
        self.module(module).map(|_| ())
    }

    fn jit_times_ms(&self) -> Vec<(&'static str, f64)> {
        self.jit_ms.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn new_event(&self) -> DResult<EventId> {
        let e = self.ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT)).map_err(|e| drv("creating an event", e))?;
        let mut v = self.events.lock().unwrap_or_else(|e| e.into_inner());
        v.push(e);
        Ok(EventId(v.len() as u32 - 1))
    }

    fn record(&self, event: EventId, stream: StreamId) -> DResult<()> {
        self.bind()?;
        let (e, s) = (self.event(event)?, self.stream(stream)?);
        // SAFETY: an event and a stream of this context.
        unsafe { result::event::record(e, s) }.map_err(|e| drv("recording an event", e))
    }

    fn wait_event(&self, stream: StreamId, event: EventId) -> DResult<()> {
        self.bind()?;
        let (e, s) = (self.event(event)?, self.stream(stream)?);
        // SAFETY: as above.
        unsafe { result::stream::wait_event(s, e, sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT) }
            .map_err(|e| drv("waiting on an event", e))
    }

    fn sync_stream(&self, stream: StreamId) -> DResult<()> {
        self.bind()?;
        let s = self.stream(stream)?;
        // SAFETY: a stream of this context.
        unsafe { result::stream::synchronize(s) }.map_err(|e| drv("synchronizing a stream", e))?;
        self.ctx.check_err().map_err(|e| drv("an earlier asynchronous CUDA call", e))
    }

    fn sync_event(&self, event: EventId) -> DResult<()> {
        self.bind()?;
        let e = self.event(event)?;
        // SAFETY: an event of this context.
        unsafe { result::event::synchronize(e) }.map_err(|e| drv("synchronizing an event", e))
    }

    fn elapsed_ms(&self, start: EventId, end: EventId) -> DResult<f32> {
        self.bind()?;
        let (a, b) = (self.event(start)?, self.event(end)?);
        // SAFETY: two recorded events of this context.
        unsafe { result::event::elapsed(a, b) }.map_err(|e| drv("event timing", e))
    }

    fn gemm(&self, g: &Gemm, stream: StreamId) -> DResult<()> {
        let h = self.blas_on(stream)?;
        // SAFETY: the wrapper checked every extent against its buffers.
        unsafe {
            if g.batch <= 1 {
                cudarc::cublas::sys::cublasSgemm_v2(
                    h,
                    op(g.transa),
                    op(g.transb),
                    g.m,
                    g.n,
                    g.k,
                    &g.alpha,
                    g.a as *const f32,
                    g.lda,
                    g.b as *const f32,
                    g.ldb,
                    &g.beta,
                    g.c as *mut f32,
                    g.ldc,
                )
            } else {
                cudarc::cublas::sys::cublasSgemmStridedBatched(
                    h,
                    op(g.transa),
                    op(g.transb),
                    g.m,
                    g.n,
                    g.k,
                    &g.alpha,
                    g.a as *const f32,
                    g.lda,
                    g.stride_a,
                    g.b as *const f32,
                    g.ldb,
                    g.stride_b,
                    &g.beta,
                    g.c as *mut f32,
                    g.ldc,
                    g.stride_c,
                    g.batch,
                )
            }
        }
        .result()
        .map_err(|e| blas("sgemm", e))
    }

    fn syrk(&self, y: &Syrk, stream: StreamId) -> DResult<()> {
        let h = self.blas_on(stream)?;
        // SAFETY: the wrapper checked the extents.
        unsafe {
            cudarc::cublas::sys::cublasSsyrk_v2(
                h,
                UPPER,
                op(y.trans),
                y.n,
                y.k,
                &y.alpha,
                y.a as *const f32,
                y.lda,
                &y.beta,
                y.c as *mut f32,
                y.ldc,
            )
        }
        .result()
        .map_err(|e| blas("ssyrk", e))
    }

    fn gemv(&self, g: &Gemv, stream: StreamId) -> DResult<()> {
        let h = self.blas_on(stream)?;
        // SAFETY: the wrapper checked the extents.
        unsafe {
            cudarc::cublas::sys::cublasSgemv_v2(
                h,
                op(Op::N),
                g.m,
                g.n,
                &g.alpha,
                g.a as *const f32,
                g.lda,
                g.x as *const f32,
                1,
                &g.beta,
                g.y as *mut f32,
                1,
            )
        }
        .result()
        .map_err(|e| blas("sgemv", e))
    }

    fn potrf_buffer_size(&self, n: i32, a: u64, stream: StreamId) -> DResult<usize> {
        let h = self.solver_on(stream)?;
        let mut lwork = 0i32;
        // SAFETY: a valid handle; only the workspace size is written.
        unsafe { cudarc::cusolver::sys::cusolverDnSpotrf_bufferSize(h, SOLVER_UPPER, n.max(1), a as *mut f32, n.max(1), &mut lwork) }
            .result()
            .map_err(|e| solv("spotrf_bufferSize", e))?;
        Ok(lwork.max(1) as usize)
    }

    fn potrf(&self, p: &Potrf, stream: StreamId) -> DResult<()> {
        let h = self.solver_on(stream)?;
        self.library_calls.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the wrapper checked the extents; the workspace comes from potrf_buffer_size.
        unsafe {
            cudarc::cusolver::sys::cusolverDnSpotrf(
                h,
                SOLVER_UPPER,
                p.n,
                p.a as *mut f32,
                p.lda,
                p.work as *mut f32,
                p.lwork,
                p.info as *mut i32,
            )
        }
        .result()
        .map_err(|e| solv("spotrf", e))
    }

    fn potrs(&self, p: &Potrs, stream: StreamId) -> DResult<()> {
        let h = self.solver_on(stream)?;
        self.library_calls.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the wrapper checked the extents; A holds the factor from potrf.
        unsafe {
            cudarc::cusolver::sys::cusolverDnSpotrs(
                h,
                SOLVER_UPPER,
                p.n,
                p.nrhs,
                p.a as *const f32,
                p.lda,
                p.b as *mut f32,
                p.ldb,
                p.info as *mut i32,
            )
        }
        .result()
        .map_err(|e| solv("spotrs", e))
    }

    fn alloc_pinned(&self, bytes: usize) -> DResult<*mut u8> {
        self.bind()?;
        // SAFETY: plain page-locked allocation.
        unsafe { result::malloc_host(bytes.max(1), 0) }.map(|p| p as *mut u8).map_err(|e| drv("pinned host allocation", e))
    }

    unsafe fn free_pinned(&self, ptr: *mut u8, _bytes: usize) {
        if self.bind().is_ok() {
            // SAFETY: from malloc_host; the owner synchronised its copies.
            let _ = unsafe { result::free_host(ptr as *mut c_void) };
        }
    }

    fn counters(&self) -> Counters {
        Counters {
            launches: self.launches.load(Ordering::Relaxed),
            library_calls: self.library_calls.load(Ordering::Relaxed),
            h2d_bytes: self.h2d.load(Ordering::Relaxed),
            d2h_bytes: self.d2h.load(Ordering::Relaxed),
            peak_bytes: self.sizes.lock().unwrap_or_else(|e| e.into_inner()).2 as u64,
            phase_peak_bytes: self.sizes.lock().unwrap_or_else(|e| e.into_inner()).3 as u64,
        }
    }

    fn reset_phase_peak(&self) {
        let mut z = self.sizes.lock().unwrap_or_else(|e| e.into_inner());
        z.3 = z.1;
    }
}
