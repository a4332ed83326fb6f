//! Thin wrappers of `stats.cu`, and `GramAccumulator`, which builds the statistics of a pair
//! (docs/spec.md §4) on the device: for each chunk of calibration tokens `X[t][n]`,
//! `H_chunk = XᵀX` by cuBLAS ssyrk in fp32 (lower triangle, then `fasp_stats_symmetrize_f32`),
//! added into an fp64 running `H` (`fasp_stats_accumulate_f64`), and the column sums `Xᵀ1` by
//! sgemv, added into fp64 sums likewise. Memory stays bounded by one chunk. `finish` keeps `H` on
//! the device (converted to fp32 into the chunk buffer, the fp64 sum freed) and downloads only the
//! O(n) summary: `diag(H)` and `Σx` in fp64, and the token count.

use super::blas;
use super::context::{c_int, cfg, grid_1d, launch, need, Gpu};
use super::context::{DeviceBuf, DevicePtr, DevicePtrMut};
use crate::backend::StatsSummary;
use crate::error::Result;
use crate::tensor::Gram;

/// `fasp_stats_diag_f64`: `diag[i] = H[i][i]` of an fp64 `H`.
pub fn diag_f64(gpu: &Gpu, h: &impl DevicePtr<f64>, n: usize, ldh: usize, out: &mut impl DevicePtrMut<f64>) -> Result<()> {
    need(h, if n == 0 { 0 } else { (n - 1) * ldh + n }, "diag H")?;
    need(out, n, "diag out")?;
    if n == 0 {
        return Ok(());
    }
    let ph = h.addr();
    let po = out.addr_mut();
    let (cn, cl) = (c_int(n, "n")?, c_int(ldh, "ldh")?);
    launch!(gpu, "stats", "fasp_stats_diag_f64", cfg((grid_1d(n, 256), 1, 1), (256, 1, 1)), [ph, cn, cl, po])
}

/// `fasp_stats_diag_f32`: `diag[i] = H[i][i]`.
pub fn diag(gpu: &Gpu, h: &impl DevicePtr<f32>, n: usize, ldh: usize, out: &mut impl DevicePtrMut<f32>) -> Result<()> {
    need(h, if n == 0 { 0 } else { (n - 1) * ldh + n }, "diag H")?;
    need(out, n, "diag out")?;
    if n == 0 {
        return Ok(());
    }
    let ph = h.addr();
    let po = out.addr_mut();
    let (cn, cl) = (c_int(n, "n")?, c_int(ldh, "ldh")?);
    launch!(gpu, "stats", "fasp_stats_diag_f32", cfg((grid_1d(n, 256), 1, 1), (256, 1, 1)), [ph, cn, cl, po])
}

/// `fasp_stats_symmetrize_f32`: mirrors the lower triangle into the upper (`from_lower`) or back.
pub fn symmetrize(gpu: &Gpu, h: &mut impl DevicePtrMut<f32>, n: usize, ldh: usize, from_lower: bool) -> Result<()> {
    need(h, if n == 0 { 0 } else { (n - 1) * ldh + n }, "symmetrize H")?;
    if n == 0 {
        return Ok(());
    }
    let ph = h.addr_mut();
    let (cn, cl, fl) = (c_int(n, "n")?, c_int(ldh, "ldh")?, from_lower as i32);
    let g = n.div_ceil(32) as u32;
    launch!(gpu, "stats", "fasp_stats_symmetrize_f32", cfg((g, g, 1), (32, 8, 1)), [ph, cn, cl, fl])
}

/// `fasp_stats_accumulate_f64`: `acc += x` (fp64 += fp32).
pub fn accumulate_f64(gpu: &Gpu, acc: &mut impl DevicePtrMut<f64>, x: &impl DevicePtr<f32>, n: usize) -> Result<()> {
    need(acc, n, "accumulate acc")?;
    need(x, n, "accumulate x")?;
    if n == 0 {
        return Ok(());
    }
    let px = x.addr();
    let pa = acc.addr_mut();
    let nn = n as i64;
    launch!(gpu, "stats", "fasp_stats_accumulate_f64", cfg((grid_1d(n, 256), 1, 1), (256, 1, 1)), [pa, px, nn])
}

/// `fasp_stats_f64_to_f32`.
pub fn f64_to_f32(gpu: &Gpu, src: &impl DevicePtr<f64>, dst: &mut impl DevicePtrMut<f32>, n: usize) -> Result<()> {
    need(src, n, "f64_to_f32 src")?;
    need(dst, n, "f64_to_f32 dst")?;
    if n == 0 {
        return Ok(());
    }
    let ps = src.addr();
    let pd = dst.addr_mut();
    let nn = n as i64;
    launch!(gpu, "stats", "fasp_stats_f64_to_f32", cfg((grid_1d(n, 256), 1, 1), (256, 1, 1)), [ps, pd, nn])
}

/// Blocks of `fasp_stats_sumsq_partial_f32` (the partial buffer holds this many doubles).
pub const SUMSQ_BLOCKS: usize = 1024;

/// `Σ (a − b)²` over `n` values (`b` = None: `Σ a²`), in a fixed order: partial sums per block
/// (`fasp_stats_sumsq_partial_f32`), then `fasp_stats_sum_f64`. Synchronises to read the result.
pub fn sum_sq_diff(gpu: &Gpu, a: &impl DevicePtr<f32>, b: Option<&DeviceBuf<f32>>, n: usize) -> Result<f64> {
    need(a, n, "sumsq a")?;
    if let Some(b) = b {
        need(b, n, "sumsq b")?;
    }
    let mut partial = gpu.alloc::<f64>(SUMSQ_BLOCKS, "sumsq partial")?;
    let mut out = gpu.alloc::<f64>(1, "sumsq out")?;
    {
        let pa = a.addr();
        let pb = b.map_or(0u64, |b| b.addr());
        let pp = partial.addr_mut();
        let nn = n as i64;
        launch!(gpu, "stats", "fasp_stats_sumsq_partial_f32", cfg((SUMSQ_BLOCKS as u32, 1, 1), (256, 1, 1)), [pa, pb, nn, pp])?;
    }
    {
        let pp = partial.addr();
        let po = out.addr_mut();
        let np = SUMSQ_BLOCKS as i32;
        launch!(gpu, "stats", "fasp_stats_sum_f64", cfg((1, 1, 1), (256, 1, 1)), [pp, np, po])?;
    }
    Ok(gpu.download(&out, 1, "sumsq")?[0])
}

/// `Σ a·b` over `n` values in fp64, in a fixed order (`fasp_stats_dot_partial_f32`, then
/// `fasp_stats_sum_f64`). Synchronises to read the result (8 bytes).
pub fn dot(gpu: &Gpu, a: &impl DevicePtr<f32>, b: &impl DevicePtr<f32>, n: usize) -> Result<f64> {
    need(a, n, "dot a")?;
    need(b, n, "dot b")?;
    let mut partial = gpu.alloc::<f64>(SUMSQ_BLOCKS, "dot partial")?;
    let mut out = gpu.alloc::<f64>(1, "dot out")?;
    {
        let pa = a.addr();
        let pb = b.addr();
        let pp = partial.addr_mut();
        let nn = n as i64;
        launch!(gpu, "stats", "fasp_stats_dot_partial_f32", cfg((SUMSQ_BLOCKS as u32, 1, 1), (256, 1, 1)), [pa, pb, nn, pp])?;
    }
    {
        let pp = partial.addr();
        let po = out.addr_mut();
        let np = SUMSQ_BLOCKS as i32;
        launch!(gpu, "stats", "fasp_stats_sum_f64", cfg((1, 1, 1), (256, 1, 1)), [pp, np, po])?;
    }
    Ok(gpu.download(&out, 1, "dot")?[0])
}

/// A pair's statistics kept on the device: `H` (fp32, both triangles) and the summary the host got.
pub struct DeviceStats {
    pub n: usize,
    pub h: DeviceBuf<f32>,
    pub summary: StatsSummary,
}

impl DeviceStats {
    /// Downloads `H` (tests and diagnostics only; the pipeline never does).
    pub fn download_h(&self, gpu: &Gpu) -> Result<Gram> {
        let h = gpu.download(&self.h, self.n * self.n, "H (diagnostics)")?;
        Ok(Gram { n: self.n, data: h.into_iter().map(f64::from).collect() })
    }
}

/// `H = Σ x xᵀ` and `Σ x` of a pair's input, accumulated chunk by chunk on the device.
pub struct GramAccumulator {
    pub n: usize,
    pub tokens: usize,
    acc: DeviceBuf<f64>,
    chunk: DeviceBuf<f32>,
    sum_acc: DeviceBuf<f64>,
    sum_chunk: DeviceBuf<f32>,
    ones: DeviceBuf<f32>,
}

impl GramAccumulator {
    /// For inputs of `n` columns in chunks of at most `max_rows` tokens.
    pub fn new(gpu: &Gpu, n: usize, max_rows: usize) -> Result<GramAccumulator> {
        Ok(GramAccumulator {
            n,
            tokens: 0,
            acc: gpu.zeros::<f64>(n * n, "H (fp64 running sum)")?,
            chunk: gpu.alloc::<f32>(n * n, "H (fp32 chunk)")?,
            sum_acc: gpu.zeros::<f64>(n, "column sums")?,
            sum_chunk: gpu.alloc::<f32>(n, "column sums (chunk)")?,
            ones: gpu.upload(&vec![1.0f32; max_rows.max(1)], "ones")?,
        })
    }

    /// Adds the chunk `x[rows][n]` (rows ≤ `max_rows`).
    pub fn add(&mut self, gpu: &Gpu, x: &impl DevicePtr<f32>, rows: usize) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        if rows > self.ones.len() {
            return Err(crate::FaspError::Cuda(format!("Gram chunk of {rows} rows exceeds {}", self.ones.len())));
        }
        let n = self.n;
        blas::syrk_xtx(gpu, x, &mut self.chunk, rows, n, 0.0)?;
        symmetrize(gpu, &mut self.chunk, n, n, true)?;
        accumulate_f64(gpu, &mut self.acc, &self.chunk, n * n)?;
        blas::col_sums(gpu, x, &self.ones, &mut self.sum_chunk, rows, n)?;
        accumulate_f64(gpu, &mut self.sum_acc, &self.sum_chunk, n)?;
        self.tokens += rows;
        Ok(())
    }

    /// Keeps `H` on the device (fp32) and downloads the O(n) summary.
    pub fn finish(self, gpu: &Gpu) -> Result<DeviceStats> {
        let n = self.n;
        let mut d = gpu.alloc::<f64>(n, "diag(H)")?;
        diag_f64(gpu, &self.acc, n, n, &mut d)?;
        let hdiag = gpu.download(&d, n, "diag(H)")?;
        let col_sum = gpu.download(&self.sum_acc, n, "column sums")?;
        let mut h = self.chunk;
        f64_to_f32(gpu, &self.acc, &mut h, n * n)?;
        Ok(DeviceStats { n, h, summary: StatsSummary { hdiag, col_sum, tokens: self.tokens } })
    }
}
