//! The device context of the CUDA backend: a [`Device`] (the GPU through cudarc, or the emulated
//! device), its compute stream and a copy stream. Every wrapper works through `Gpu`; nothing above
//! `device` calls cudarc.
//!
//! Opening the context never panics on a machine without CUDA. cudarc's dynamic loading panics
//! when a shared library is missing, so every library is probed first with cudarc's own
//! `is_culib_present` (a plain `dlopen` of the same candidate names), and the first driver call
//! runs under `catch_unwind` as a last guard (e.g. a driver too old to export a symbol). Every
//! failure is a `FaspError::Cuda` that names the library and mentions `LD_LIBRARY_PATH`.
//!
//! The `launch!` macro is the one place kernels are launched; wrappers bind every argument to a
//! local first (the packed argument array points to them), and validate sizes before launching.

use super::device::{emu::EmuDevice, real::CudaDevice, Counters, Device, DeviceKind, EventId, StreamId};
pub use super::device::{DeviceBuf, DevicePtr, DevicePtrMut, DeviceRepr, DeviceSlice, DeviceView, DeviceViewMut, LaunchConfig, PinnedBuf};
use crate::error::{FaspError, Result};
use crate::kernels;
use cudarc::driver::CudaContext;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

/// Launches `$name` from module `$module` on the compute stream of `$gpu` with `$cfg`; the
/// arguments are identifiers of locals (device pointers as `u64`, scalars as their C types),
/// passed as the packed argument array `cuLaunchKernel` takes.
macro_rules! launch {
    ($gpu:expr, $module:expr, $name:expr, $cfg:expr, [$($arg:ident),* $(,)?]) => {{
        let args = [$( $crate::backend::cuda::device::KArg::of(&$arg) ),*];
        $gpu.launch($module, $name, &$cfg, &args)
    }};
}
pub(crate) use launch;

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
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
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

/// A stream of a device.
pub struct Stream {
    dev: Arc<dyn Device>,
    pub id: StreamId,
}

impl Stream {
    /// Copies all of `src` into the front of `dst`.
    pub fn memcpy_dtod<T: DeviceRepr>(&self, src: &impl DevicePtr<T>, dst: &mut impl DevicePtrMut<T>) -> Result<()> {
        if dst.len() < src.len() {
            return Err(FaspError::Cuda(format!("device copy of {} elements into {}", src.len(), dst.len())));
        }
        Ok(self.dev.dtod(dst.addr_mut(), src.addr(), src.len() * std::mem::size_of::<T>(), self.id)?)
    }

    /// Copies host data into the front of `dst` (pageable memory: the host may reuse `src` at once).
    pub fn memcpy_htod<T: DeviceRepr>(&self, src: &[T], dst: &mut impl DevicePtrMut<T>) -> Result<()> {
        if dst.len() < src.len() {
            return Err(FaspError::Cuda(format!("upload of {} elements into {}", src.len(), dst.len())));
        }
        let bytes = std::mem::size_of_val(src);
        // SAFETY: `src` is valid for `bytes`; pageable copies complete their read before returning.
        Ok(unsafe { self.dev.htod(dst.addr_mut(), src.as_ptr() as *const u8, bytes, self.id) }?)
    }

    /// Copies a pinned buffer into `dst` asynchronously; record an event and synchronise on it
    /// before writing the buffer again.
    pub fn memcpy_htod_pinned<T: DeviceRepr>(&self, src: &PinnedBuf<T>, dst: &mut impl DevicePtrMut<T>) -> Result<()> {
        if dst.len() < src.len() {
            return Err(FaspError::Cuda(format!("upload of {} elements into {}", src.len(), dst.len())));
        }
        let bytes = src.len() * std::mem::size_of::<T>();
        // SAFETY: the pinned buffer outlives the copy (its owner synchronises before reuse or drop).
        Ok(unsafe { self.dev.htod(dst.addr_mut(), src.as_ptr(), bytes, self.id) }?)
    }

    pub fn synchronize(&self) -> Result<()> {
        Ok(self.dev.sync_stream(self.id)?)
    }

    pub fn record(&self, ev: &Event) -> Result<()> {
        Ok(self.dev.record(ev.id, self.id)?)
    }

    /// Later work on this stream waits for what `ev` recorded.
    pub fn wait(&self, ev: &Event) -> Result<()> {
        Ok(self.dev.wait_event(self.id, ev.id)?)
    }
}

/// An event of a device.
pub struct Event {
    dev: Arc<dyn Device>,
    pub id: EventId,
}

impl Event {
    /// Records the work enqueued so far on `stream`.
    pub fn record(&self, stream: &Stream) -> Result<()> {
        stream.record(self)
    }

    pub fn synchronize(&self) -> Result<()> {
        Ok(self.dev.sync_event(self.id)?)
    }

    /// Milliseconds from `self` to `end` (both recorded).
    pub fn elapsed_ms(&self, end: &Event) -> Result<f32> {
        Ok(self.dev.elapsed_ms(self.id, end.id)?)
    }
}

/// The device context shared by every wrapper.
pub struct Gpu {
    pub dev: Arc<dyn Device>,
    /// Kernels and library calls run here.
    pub stream: Stream,
    /// Weight uploads (prefetch of the next layer) run here.
    pub copy: Stream,
    pub sm_count: usize,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({})", self.dev.describe())
    }
}

/// Capacity of the emulated device: `FASP_EMU_MEMORY_MIB`, default 4096 MiB.
fn emu_memory() -> Result<usize> {
    match std::env::var("FASP_EMU_MEMORY_MIB") {
        Ok(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .map(|n| n << 20)
            .ok_or_else(|| FaspError::Arg(format!("FASP_EMU_MEMORY_MIB={v:?}: expected a positive number of MiB"))),
        Err(_) => Ok(4096 << 20),
    }
}

impl Gpu {
    /// Opens CUDA device `ordinal`: context, streams, cuBLAS. A clear error when anything is missing.
    pub fn new(ordinal: usize) -> Result<Arc<Gpu>> {
        probe_driver()?;
        // SAFETY: a dlopen of the candidate names; nothing is called.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(FaspError::Cuda(format!(
                "cannot load cuBLAS (tried {}): add the folder holding libcublas (e.g. site-packages/nvidia/cublas/lib \
                 of a PyTorch install, or the CUDA toolkit's lib64) to LD_LIBRARY_PATH",
                candidates("cublas")
            )));
        }
        let dev = guarded("libcuda.so / libcublas", || CudaDevice::open(ordinal))??;
        Self::with_device(Arc::new(dev))
    }

    /// The emulated device (`--device emu`): the same kernels on the CPU, with checked memory and
    /// stream ordering. Its capacity is `FASP_EMU_MEMORY_MIB` (default 4096).
    pub fn emu() -> Result<Arc<Gpu>> {
        Self::with_device(Arc::new(EmuDevice::new(emu_memory()?)))
    }

    pub fn with_device(dev: Arc<dyn Device>) -> Result<Arc<Gpu>> {
        let compute = dev.default_stream();
        let copy = dev.new_stream()?;
        let sm_count = dev.sm_count();
        Ok(Arc::new(Gpu { stream: Stream { dev: dev.clone(), id: compute }, copy: Stream { dev: dev.clone(), id: copy }, sm_count, dev }))
    }

    pub fn kind(&self) -> DeviceKind {
        self.dev.kind()
    }

    /// One line describing the device.
    pub fn describe(&self) -> String {
        self.dev.describe()
    }

    pub fn counters(&self) -> Counters {
        self.dev.counters()
    }

    /// Launches a kernel on the compute stream (use the `launch!` macro).
    pub fn launch(&self, module: &'static str, name: &'static str, cfg: &LaunchConfig, args: &[super::device::KArg]) -> Result<()> {
        Ok(self.dev.launch(module, name, cfg, args, self.stream.id)?)
    }

    /// Loads every module now (e.g. to measure the JIT cost apart from the work).
    pub fn load_all(&self) -> Result<()> {
        for (stem, _) in kernels::ALL {
            self.dev.load_module(stem)?;
        }
        Ok(())
    }

    /// Per-module load (JIT) times so far, in milliseconds.
    pub fn jit_times_ms(&self) -> Vec<(&'static str, f64)> {
        self.dev.jit_times_ms()
    }

    /// Waits for the compute stream and surfaces any asynchronous error.
    pub fn sync(&self) -> Result<()> {
        self.stream.synchronize()
    }

    /// Uninitialised device memory for `len` elements on the compute stream.
    pub fn alloc<T: DeviceRepr>(&self, len: usize, what: &str) -> Result<DeviceBuf<T>> {
        Ok(DeviceBuf::alloc(&self.dev, len, self.stream.id, what)?)
    }

    pub fn zeros<T: DeviceRepr>(&self, len: usize, what: &str) -> Result<DeviceBuf<T>> {
        let mut d = self.alloc::<T>(len, what)?;
        self.memset_zero(&mut d)?;
        Ok(d)
    }

    /// Device copy of host data (compute stream).
    pub fn upload<T: DeviceRepr>(&self, host: &[T], what: &str) -> Result<DeviceBuf<T>> {
        let mut d = self.alloc::<T>(host.len(), what)?;
        if !host.is_empty() {
            self.stream.memcpy_htod(host, &mut d)?;
        }
        Ok(d)
    }

    /// Host copy of the first `len` elements of a device buffer (synchronises the compute stream).
    pub fn download<T: DeviceRepr, D: DevicePtr<T>>(&self, d: &D, len: usize, what: &str) -> Result<Vec<T>> {
        need(d, len, what)?;
        let mut host = vec![T::default(); len];
        if len > 0 {
            let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut host);
            self.dev
                .dtoh(bytes, d.addr(), std::mem::size_of::<T>(), self.stream.id)
                .map_err(|e| FaspError::Cuda(format!("download of {what}: {e}")))?;
        }
        Ok(host)
    }

    /// Copies host data into the front of an existing buffer (e.g. NaN poison in tests).
    pub fn upload_into<T: DeviceRepr>(&self, host: &[T], d: &mut DeviceBuf<T>, what: &str) -> Result<()> {
        if d.len() < host.len() {
            return Err(FaspError::Cuda(format!("{what}: {} values into a buffer of {}", host.len(), d.len())));
        }
        if host.is_empty() {
            return Ok(());
        }
        self.stream.memcpy_htod(host, d)
    }

    pub fn memset_zero<T: DeviceRepr>(&self, d: &mut impl DevicePtrMut<T>) -> Result<()> {
        let bytes = d.len() * std::mem::size_of::<T>();
        Ok(self.dev.memset_zero(d.addr_mut(), bytes, self.stream.id)?)
    }

    /// `(free, total)` device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        Ok(self.dev.mem_info()?)
    }

    /// A new event (for ordering between streams and for GPU-side timing).
    pub fn event(&self) -> Result<Event> {
        Ok(Event { dev: self.dev.clone(), id: self.dev.new_event()? })
    }

    /// An event that records timing, for GPU-side measurements.
    pub fn timing_event(&self) -> Result<Event> {
        self.event()
    }
}

/// bf16 as stored on the device: the bit pattern of a `half::bf16` (`__nv_bfloat16` in the
/// kernels). A local type, because cudarc implements `DeviceRepr` for `half` types only behind a
/// feature this crate does not enable.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Bf16(pub u16);

impl DeviceRepr for Bf16 {}
impl super::device::KernelParam for Bf16 {}

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
