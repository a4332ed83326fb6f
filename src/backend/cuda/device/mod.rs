//! The one narrow interface through which the CUDA backend does all its device work, and its two
//! implementations: [`real::CudaDevice`] (a thin layer over cudarc's driver, cuBLAS and cuSOLVER
//! calls) and [`emu::EmuDevice`] (the same kernels, compiled for the host by build.rs, with
//! checked memory and stream ordering; `--device emu`).
//!
//! Everything above this module (wrappers, layer, restore, the backend) is written once against
//! [`Device`]: device memory is a `u64` address inside an allocation, work is enqueued on a
//! [`StreamId`], ordering between streams is expressed with events, kernels are launched by name
//! with the packed argument array that `cuLaunchKernel` receives ([`KArg`]), and the library calls
//! (GEMM, strided-batched GEMM, SYRK, GEMV, Cholesky factor/solve) take cuBLAS/cuSOLVER's own
//! column-major argument lists ([`Gemm`], [`Syrk`], [`Gemv`], [`Potrf`], [`Potrs`]).
//!
//! Typed buffers ([`DeviceBuf`], views) free themselves on drop, on the stream they were allocated
//! on.

pub mod emu;
pub mod real;

use std::ffi::c_void;
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::Arc;

/// Errors of the device layer, with their sources.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("CUDA: {what}: {source}")]
    Driver { what: String, source: cudarc::driver::DriverError },
    #[error("CUDA: cuBLAS {what}: {source}")]
    Blas { what: String, source: cudarc::cublas::result::CublasError },
    #[error("CUDA: cuSOLVER {what}: {source:?}")]
    Solver { what: String, source: cudarc::cusolver::result::CusolverError },
    /// A misuse that the emulated device detected (bounds, use after free, unwritten memory,
    /// stream ordering, argument lists) or a failed emulated launch.
    #[error("emulated device: {0}")]
    Emu(String),
    #[error("CUDA: {0}")]
    Unavailable(String),
}

pub type DResult<T> = std::result::Result<T, DeviceError>;

/// Which implementation a device is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Cuda,
    Emu,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamId(pub u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EventId(pub u32);

/// Grid, block and dynamic shared memory of a launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid_dim: (u32, u32, u32),
    pub block_dim: (u32, u32, u32),
    pub shared_mem_bytes: u32,
}

/// A value a kernel takes: device addresses are `u64`, scalars their C types.
pub trait KernelParam: Copy + 'static {}
impl KernelParam for u64 {}
impl KernelParam for i64 {}
impl KernelParam for i32 {}
impl KernelParam for u32 {}
impl KernelParam for f32 {}
impl KernelParam for f64 {}

/// One entry of the packed argument array: a pointer to the argument's value and its size.
#[derive(Clone, Copy, Debug)]
pub struct KArg {
    pub ptr: *const c_void,
    pub size: usize,
}

impl KArg {
    pub fn of<T: KernelParam>(v: &T) -> KArg {
        KArg { ptr: v as *const T as *const c_void, size: std::mem::size_of::<T>() }
    }
    /// The value as a device address (for pointer parameters; 8-byte arguments only).
    pub fn as_u64(&self) -> Option<u64> {
        // SAFETY: `ptr` points to a live value of `size` bytes (it was made by `of`).
        (self.size == 8).then(|| unsafe { std::ptr::read_unaligned(self.ptr as *const u64) })
    }
}

/// cuBLAS transpose flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    N,
    T,
}

/// `C = α·op(A)·op(B) + β·C` (column-major, cuBLAS `sgemm`), `batch` times at the given element
/// strides (`sgemmStridedBatched` when `batch > 1`). fp32 in, fp32 accumulation, fp32 out.
#[derive(Clone, Copy, Debug)]
pub struct Gemm {
    pub transa: Op,
    pub transb: Op,
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub alpha: f32,
    pub a: u64,
    pub lda: i32,
    pub b: u64,
    pub ldb: i32,
    pub beta: f32,
    pub c: u64,
    pub ldc: i32,
    pub batch: i32,
    pub stride_a: i64,
    pub stride_b: i64,
    pub stride_c: i64,
}

/// `C = α·op(A)·op(A)ᵀ + β·C` on the UPPER triangle of the column-major `n × n` C (`ssyrk`);
/// `op(A)` is `n × k`.
#[derive(Clone, Copy, Debug)]
pub struct Syrk {
    pub trans: Op,
    pub n: i32,
    pub k: i32,
    pub alpha: f32,
    pub a: u64,
    pub lda: i32,
    pub beta: f32,
    pub c: u64,
    pub ldc: i32,
}

/// `y = α·A·x + β·y` for the column-major `m × n` A (`sgemv`, no transpose, unit increments).
#[derive(Clone, Copy, Debug)]
pub struct Gemv {
    pub m: i32,
    pub n: i32,
    pub alpha: f32,
    pub a: u64,
    pub lda: i32,
    pub x: u64,
    pub beta: f32,
    pub y: u64,
}

/// `spotrf` on the UPPER triangle of the column-major `n × n` A (the row-major lower triangle).
#[derive(Clone, Copy, Debug)]
pub struct Potrf {
    pub n: i32,
    pub a: u64,
    pub lda: i32,
    pub work: u64,
    pub lwork: i32,
    pub info: u64,
}

/// `spotrs` with the factor of [`Potrf`]: solves `A X = B` for the column-major `n × nrhs` B.
#[derive(Clone, Copy, Debug)]
pub struct Potrs {
    pub n: i32,
    pub nrhs: i32,
    pub a: u64,
    pub lda: i32,
    pub b: u64,
    pub ldb: i32,
    pub info: u64,
}

/// Work counters of a device (for reports and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub launches: u64,
    pub library_calls: u64,
    pub h2d_bytes: u64,
    pub d2h_bytes: u64,
    /// The most device memory allocated at once through this device (bytes).
    pub peak_bytes: u64,
    /// The same since the last `reset_phase_peak` (per-phase reports).
    pub phase_peak_bytes: u64,
}

/// What the CUDA backend needs from a device. Every enqueueing call is ordered on its stream;
/// `dtoh`, `sync_stream` and `sync_event` wait on the host.
pub trait Device: Send + Sync {
    fn kind(&self) -> DeviceKind;
    /// One line: name, compute capability or "emulated", SM count.
    fn describe(&self) -> String;
    fn sm_count(&self) -> usize;
    /// `(free, total)` bytes.
    fn mem_info(&self) -> DResult<(usize, usize)>;

    /// The stream kernels and library calls use by default.
    fn default_stream(&self) -> StreamId;
    fn new_stream(&self) -> DResult<StreamId>;

    /// Stream-ordered allocation of `bytes` (contents unspecified), named `what` in errors.
    fn alloc(&self, bytes: usize, stream: StreamId, what: &str) -> DResult<u64>;
    /// Stream-ordered free of an allocation's base address.
    fn free(&self, ptr: u64, stream: StreamId);
    fn memset_zero(&self, dst: u64, bytes: usize, stream: StreamId) -> DResult<()>;
    /// Host-to-device copy.
    ///
    /// # Safety
    /// `src` must be valid for `bytes` bytes; if it is pinned memory from [`Device::alloc_pinned`]
    /// it must stay unchanged until the copy has completed (an event or stream synchronisation).
    unsafe fn htod(&self, dst: u64, src: *const u8, bytes: usize, stream: StreamId) -> DResult<()>;
    /// Device-to-host copy; returns when the data is on the host. `elem` is the element size
    /// (the emulated device checks that every element was written).
    fn dtoh(&self, dst: &mut [u8], src: u64, elem: usize, stream: StreamId) -> DResult<()>;
    fn dtod(&self, dst: u64, src: u64, bytes: usize, stream: StreamId) -> DResult<()>;

    /// Launches kernel `name` of module `module` (`cuda/<module>.cu`) with the packed arguments.
    fn launch(&self, module: &'static str, name: &'static str, cfg: &LaunchConfig, args: &[KArg], stream: StreamId) -> DResult<()>;
    /// Loads (JIT-compiles) a module now; per-module load times in ms so far.
    fn load_module(&self, module: &'static str) -> DResult<()>;
    fn jit_times_ms(&self) -> Vec<(&'static str, f64)>;

    fn new_event(&self) -> DResult<EventId>;
    fn record(&self, event: EventId, stream: StreamId) -> DResult<()>;
    /// Makes `stream` wait for the work recorded in `event`.
    fn wait_event(&self, stream: StreamId, event: EventId) -> DResult<()>;
    fn sync_stream(&self, stream: StreamId) -> DResult<()>;
    fn sync_event(&self, event: EventId) -> DResult<()>;
    /// Milliseconds between two recorded events (device time; the emulated device gives host time).
    fn elapsed_ms(&self, start: EventId, end: EventId) -> DResult<f32>;

    fn gemm(&self, g: &Gemm, stream: StreamId) -> DResult<()>;
    fn syrk(&self, s: &Syrk, stream: StreamId) -> DResult<()>;
    fn gemv(&self, g: &Gemv, stream: StreamId) -> DResult<()>;
    /// Workspace elements `spotrf` needs for `n × n`.
    fn potrf_buffer_size(&self, n: i32, a: u64, stream: StreamId) -> DResult<usize>;
    fn potrf(&self, p: &Potrf, stream: StreamId) -> DResult<()>;
    fn potrs(&self, p: &Potrs, stream: StreamId) -> DResult<()>;

    /// Page-locked host memory for asynchronous uploads.
    fn alloc_pinned(&self, bytes: usize) -> DResult<*mut u8>;
    /// # Safety
    /// `ptr` came from `alloc_pinned(bytes)` and no copy from it is pending.
    unsafe fn free_pinned(&self, ptr: *mut u8, bytes: usize);
    /// The host is about to write `bytes` of pinned memory at `ptr` (the emulated device checks
    /// that no asynchronous copy from it may still be pending).
    fn host_write(&self, _ptr: *const u8, _bytes: usize) -> DResult<()> {
        Ok(())
    }

    fn counters(&self) -> Counters;

    /// Starts a new phase for `Counters::phase_peak_bytes` (set to what is allocated now).
    fn reset_phase_peak(&self);
}

/// Plain-old-data element types of device buffers.
pub trait DeviceRepr: bytemuck::Pod + Default + 'static {}
impl DeviceRepr for u8 {}
impl DeviceRepr for i32 {}
impl DeviceRepr for u32 {}
impl DeviceRepr for i64 {}
impl DeviceRepr for f32 {}
impl DeviceRepr for f64 {}

/// Anything with a length in elements.
pub trait DeviceSlice<T> {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Read access to device memory: its address.
pub trait DevicePtr<T>: DeviceSlice<T> {
    fn addr(&self) -> u64;
}

/// Write access to device memory.
pub trait DevicePtrMut<T>: DevicePtr<T> {
    fn addr_mut(&mut self) -> u64 {
        self.addr()
    }
}

/// An owned device buffer of `len` elements, freed on drop on its stream.
pub struct DeviceBuf<T: DeviceRepr> {
    dev: Arc<dyn Device>,
    ptr: u64,
    len: usize,
    stream: StreamId,
    _t: PhantomData<T>,
}

impl<T: DeviceRepr> std::fmt::Debug for DeviceBuf<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceBuf({:#x}, {} elements)", self.ptr, self.len)
    }
}

impl<T: DeviceRepr> DeviceBuf<T> {
    /// Allocates `len` elements (at least one, so every buffer has an address).
    pub fn alloc(dev: &Arc<dyn Device>, len: usize, stream: StreamId, what: &str) -> DResult<DeviceBuf<T>> {
        let bytes = len
            .max(1)
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| DeviceError::Unavailable(format!("allocation for {what}: {len} elements overflow the address space")))?;
        let ptr = dev.alloc(bytes, stream, what)?;
        Ok(DeviceBuf { dev: dev.clone(), ptr, len, stream, _t: PhantomData })
    }

    pub fn slice(&self, r: Range<usize>) -> DeviceView<'_, T> {
        assert!(r.start <= r.end && r.end <= self.len, "device slice {r:?} of {} elements", self.len);
        DeviceView { ptr: self.ptr + (r.start * std::mem::size_of::<T>()) as u64, len: r.end - r.start, _l: PhantomData }
    }

    pub fn slice_mut(&mut self, r: Range<usize>) -> DeviceViewMut<'_, T> {
        assert!(r.start <= r.end && r.end <= self.len, "device slice {r:?} of {} elements", self.len);
        DeviceViewMut { ptr: self.ptr + (r.start * std::mem::size_of::<T>()) as u64, len: r.end - r.start, _l: PhantomData }
    }

    pub fn stream(&self) -> StreamId {
        self.stream
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<T: DeviceRepr> Drop for DeviceBuf<T> {
    fn drop(&mut self) {
        self.dev.free(self.ptr, self.stream);
    }
}

impl<T: DeviceRepr> DeviceSlice<T> for DeviceBuf<T> {
    fn len(&self) -> usize {
        self.len
    }
}
impl<T: DeviceRepr> DevicePtr<T> for DeviceBuf<T> {
    fn addr(&self) -> u64 {
        self.ptr
    }
}
impl<T: DeviceRepr> DevicePtrMut<T> for DeviceBuf<T> {}

/// A borrowed range of a buffer (read).
#[derive(Clone, Copy)]
pub struct DeviceView<'a, T> {
    ptr: u64,
    len: usize,
    _l: PhantomData<&'a T>,
}

/// A borrowed range of a buffer (write).
pub struct DeviceViewMut<'a, T> {
    ptr: u64,
    len: usize,
    _l: PhantomData<&'a mut T>,
}

impl<T> DeviceSlice<T> for DeviceView<'_, T> {
    fn len(&self) -> usize {
        self.len
    }
}
impl<T> DevicePtr<T> for DeviceView<'_, T> {
    fn addr(&self) -> u64 {
        self.ptr
    }
}
impl<T> DeviceSlice<T> for DeviceViewMut<'_, T> {
    fn len(&self) -> usize {
        self.len
    }
}
impl<T> DevicePtr<T> for DeviceViewMut<'_, T> {
    fn addr(&self) -> u64 {
        self.ptr
    }
}
impl<T> DevicePtrMut<T> for DeviceViewMut<'_, T> {}

impl<T, D: DeviceSlice<T> + ?Sized> DeviceSlice<T> for &D {
    fn len(&self) -> usize {
        (**self).len()
    }
}
impl<T, D: DevicePtr<T> + ?Sized> DevicePtr<T> for &D {
    fn addr(&self) -> u64 {
        (**self).addr()
    }
}
impl<T, D: DeviceSlice<T> + ?Sized> DeviceSlice<T> for &mut D {
    fn len(&self) -> usize {
        (**self).len()
    }
}
impl<T, D: DevicePtr<T> + ?Sized> DevicePtr<T> for &mut D {
    fn addr(&self) -> u64 {
        (**self).addr()
    }
}
impl<T, D: DevicePtrMut<T> + ?Sized> DevicePtrMut<T> for &mut D {}
impl<T, D: DeviceSlice<T> + ?Sized> DeviceSlice<T> for Arc<D> {
    fn len(&self) -> usize {
        (**self).len()
    }
}
impl<T, D: DevicePtr<T> + ?Sized> DevicePtr<T> for Arc<D> {
    fn addr(&self) -> u64 {
        (**self).addr()
    }
}

/// Page-locked host memory of `len` elements (for asynchronous uploads), freed on drop.
pub struct PinnedBuf<T: DeviceRepr> {
    dev: Arc<dyn Device>,
    ptr: *mut u8,
    len: usize,
    _t: PhantomData<T>,
}

// SAFETY: the buffer is plain host memory owned by this value.
unsafe impl<T: DeviceRepr> Send for PinnedBuf<T> {}

impl<T: DeviceRepr> PinnedBuf<T> {
    pub fn new(dev: &Arc<dyn Device>, len: usize) -> DResult<PinnedBuf<T>> {
        let bytes = len.max(1) * std::mem::size_of::<T>();
        let ptr = dev.alloc_pinned(bytes)?;
        Ok(PinnedBuf { dev: dev.clone(), ptr, len, _t: PhantomData })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fills the buffer. The caller has waited for the last copy from it (the emulated device
    /// checks this).
    pub fn write(&mut self, src: &[T]) -> DResult<()> {
        assert_eq!(src.len(), self.len, "pinned buffer length");
        let bytes = std::mem::size_of_val(src);
        self.dev.host_write(self.ptr, bytes)?;
        // SAFETY: `ptr` holds `len` elements; the regions do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr() as *const u8, self.ptr, bytes) };
        Ok(())
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }
}

impl<T: DeviceRepr> Drop for PinnedBuf<T> {
    fn drop(&mut self) {
        // SAFETY: allocated by alloc_pinned with this size; the owner synchronised its copies.
        unsafe { self.dev.free_pinned(self.ptr, self.len.max(1) * std::mem::size_of::<T>()) };
    }
}
