//! Thin wrappers of `cholesky.cu` — the batched, blocked Cholesky `A = L Lᵀ` (32-wide panels:
//! hand-written diagonal-block and panel kernels; trailing update by the hand-written kernel or
//! cuBLAS ssyrk) and the triangular solves — plus cuSOLVER `spotrf`/`spotrs`, the cross-check.
//!
//! A batch is `batch` matrices `n × n`, row-major with leading dimension `lda`, matrix `b` at
//! element offset `b·stride`; only the lower triangle is read and written. `info[b]` (zeroed
//! here before the first panel) receives 1 + the index of the first pivot that is not a finite
//! positive number, after which every kernel skips matrix `b`. Launch shapes follow KERNELS.md:
//! diag block (1,1,batch)×(32,32); panel (ceil((n−k−32)/32),1,batch)×(32,32); trailing
//! (T(T+1)/2,1,batch)×256 with T = ceil((n−k−32)/64); solves (ceil(nrhs/32),1,batch)×256.

use super::context::{c_int, cfg, launch, need, DeviceBuf, Gpu};
use super::context::{DevicePtr, DevicePtrMut};
use super::device::{Potrf as Potrf_, Potrs};
use crate::error::{FaspError, Result};

const NB: usize = 32;

/// How the trailing update of each panel is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trailing {
    /// `fasp_cholesky_trailing_syrk` (hand-written, batched in one launch).
    Kernel,
    /// cuBLAS ssyrk, one call per matrix of the batch.
    Cublas,
}

/// Shape of a batch of matrices.
#[derive(Clone, Copy, Debug)]
pub struct Batch {
    pub n: usize,
    pub lda: usize,
    pub stride: usize,
    pub batch: usize,
}

impl Batch {
    /// `batch` contiguous `n × n` matrices.
    pub fn dense(n: usize, batch: usize) -> Batch {
        Batch { n, lda: n, stride: n * n, batch }
    }
    fn elems(&self) -> usize {
        if self.batch == 0 || self.n == 0 {
            0
        } else {
            (self.batch - 1) * self.stride + (self.n - 1) * self.lda + self.n
        }
    }
    fn check(&self, a: &impl super::context::DeviceSlice<f32>, what: &str) -> Result<()> {
        if self.lda < self.n || (self.batch > 1 && self.stride < self.n * self.lda) {
            return Err(FaspError::Cuda(format!("{what}: lda {} / stride {} too small for n {}", self.lda, self.stride, self.n)));
        }
        need(a, self.elems(), what)
    }
    fn c(&self) -> Result<(i32, i32, i64)> {
        Ok((c_int(self.n, "n")?, c_int(self.lda, "lda")?, self.stride as i64))
    }
}

/// `fasp_cholesky_add_diag`: `A_b[i][i] += lambda`.
pub fn add_diag(gpu: &Gpu, a: &mut impl DevicePtrMut<f32>, shape: Batch, lambda: f32) -> Result<()> {
    shape.check(a, "add_diag")?;
    if shape.elems() == 0 {
        return Ok(());
    }
    let (n, lda, stride) = shape.c()?;
    let pa = a.addr_mut();
    let grid = (shape.n.div_ceil(256) as u32, 1, shape.batch as u32);
    launch!(gpu, "cholesky", "fasp_cholesky_add_diag", cfg(grid, (256, 1, 1)), [pa, n, lda, stride, lambda])
}

/// `fasp_cholesky_add_diag_scaled`: `A_b[i][i] += damp · scale[b]`.
pub fn add_diag_scaled(gpu: &Gpu, a: &mut impl DevicePtrMut<f32>, shape: Batch, damp: f32, scale: &impl DevicePtr<f32>) -> Result<()> {
    shape.check(a, "add_diag_scaled")?;
    need(scale, shape.batch, "add_diag_scaled scale")?;
    if shape.elems() == 0 {
        return Ok(());
    }
    let (n, lda, stride) = shape.c()?;
    let ps = scale.addr();
    let pa = a.addr_mut();
    let grid = (shape.n.div_ceil(256) as u32, 1, shape.batch as u32);
    launch!(gpu, "cholesky", "fasp_cholesky_add_diag_scaled", cfg(grid, (256, 1, 1)), [pa, n, lda, stride, damp, ps])
}

/// `fasp_cholesky_diag_mean`: `mean[b] = Σ_i A_b[i][i] / n` (fp64 sum).
pub fn diag_mean(gpu: &Gpu, a: &impl DevicePtr<f32>, shape: Batch, mean: &mut impl DevicePtrMut<f32>) -> Result<()> {
    shape.check(a, "diag_mean")?;
    need(mean, shape.batch, "diag_mean out")?;
    if shape.elems() == 0 {
        return Ok(());
    }
    let (n, lda, stride) = shape.c()?;
    let pa = a.addr();
    let pm = mean.addr_mut();
    launch!(gpu, "cholesky", "fasp_cholesky_diag_mean", cfg((1, 1, shape.batch as u32), (256, 1, 1)), [pa, n, lda, stride, pm])
}

/// The blocked factorisation of every matrix of the batch (in place, lower triangle), with
/// `info[batch]` zeroed first and set on failure. Asynchronous: read `info` after a sync.
pub fn factor(
    gpu: &Gpu,
    a: &mut impl DevicePtrMut<f32>,
    shape: Batch,
    info: &mut impl DevicePtrMut<i32>,
    trailing: Trailing,
) -> Result<()> {
    shape.check(a, "Cholesky")?;
    need(info, shape.batch, "Cholesky info")?;
    if shape.elems() == 0 {
        return Ok(());
    }
    if shape.batch > 65535 {
        return Err(FaspError::Cuda(format!("Cholesky batch {} exceeds gridDim.z", shape.batch)));
    }
    {
        let pi = info.addr_mut();
        // `batch` ints inside the checked buffer, on the compute stream
        gpu.dev.memset_zero(pi, shape.batch * 4, gpu.stream.id)?;
    }
    let (n, lda, stride) = shape.c()?;
    let z = shape.batch as u32;
    let mut k = 0usize;
    while k < shape.n {
        let ck = c_int(k, "k")?;
        {
            let pa = a.addr_mut();
            let pi = info.addr_mut();
            launch!(gpu, "cholesky", "fasp_cholesky_diag_block", cfg((1, 1, z), (32, 32, 1)), [pa, n, lda, stride, ck, pi])?;
            if k + NB < shape.n {
                let m = shape.n - k - NB;
                launch!(
                    gpu,
                    "cholesky",
                    "fasp_cholesky_panel_trsm",
                    cfg((m.div_ceil(NB) as u32, 1, z), (32, 32, 1)),
                    [pa, n, lda, stride, ck, pi]
                )?;
                if trailing == Trailing::Kernel {
                    let t = m.div_ceil(64);
                    let blocks = u32::try_from(t * (t + 1) / 2)
                        .map_err(|_| FaspError::Cuda(format!("Cholesky n = {} too large for the trailing kernel", shape.n)))?;
                    launch!(
                        gpu,
                        "cholesky",
                        "fasp_cholesky_trailing_syrk",
                        cfg((blocks, 1, z), (256, 1, 1)),
                        [pa, n, lda, stride, ck, pi]
                    )?;
                }
            }
        }
        if trailing == Trailing::Cublas && k + NB < shape.n {
            super::blas::cholesky_trailing_syrk(gpu, a, shape.n, shape.lda, shape.stride, shape.batch, k, NB)?;
        }
        k += NB;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn solve(
    gpu: &Gpu,
    name: &'static str,
    l: &impl DevicePtr<f32>,
    lshape: Batch,
    b: &mut impl DevicePtrMut<f32>,
    nrhs: usize,
    ldb: usize,
    stride_b: usize,
) -> Result<()> {
    lshape.check(l, "Cholesky solve L")?;
    if ldb < lshape.n {
        return Err(FaspError::Cuda(format!("Cholesky solve: ldb {ldb} < n {}", lshape.n)));
    }
    if lshape.batch == 0 || nrhs == 0 || lshape.n == 0 {
        return Ok(());
    }
    need(b, (lshape.batch - 1) * stride_b + (nrhs - 1) * ldb + lshape.n, "Cholesky solve B")?;
    let (n, ldl, sl) = lshape.c()?;
    let (cr, cldb, sb) = (c_int(nrhs, "nrhs")?, c_int(ldb, "ldb")?, stride_b as i64);
    let pl = l.addr();
    let pb = b.addr_mut();
    let grid = (nrhs.div_ceil(32) as u32, 1, lshape.batch as u32);
    launch!(gpu, "cholesky", name, cfg(grid, (256, 1, 1)), [pl, n, ldl, sl, pb, cr, cldb, sb])
}

/// `fasp_cholesky_solve_lower`: `L x = b` in place for every ROW `b` of `B[nrhs][ldb]`.
pub fn solve_lower(
    gpu: &Gpu,
    l: &impl DevicePtr<f32>,
    lshape: Batch,
    b: &mut impl DevicePtrMut<f32>,
    nrhs: usize,
    ldb: usize,
    stride_b: usize,
) -> Result<()> {
    solve(gpu, "fasp_cholesky_solve_lower", l, lshape, b, nrhs, ldb, stride_b)
}

/// `fasp_cholesky_solve_upper`: `Lᵀ x = b` in place for every row of `B`.
pub fn solve_upper(
    gpu: &Gpu,
    l: &impl DevicePtr<f32>,
    lshape: Batch,
    b: &mut impl DevicePtrMut<f32>,
    nrhs: usize,
    ldb: usize,
    stride_b: usize,
) -> Result<()> {
    solve(gpu, "fasp_cholesky_solve_upper", l, lshape, b, nrhs, ldb, stride_b)
}

/// cuSOLVER workspace and info for `spotrf` of one `n × n` matrix.
pub struct Potrf {
    pub n: usize,
    work: DeviceBuf<f32>,
    pub info: DeviceBuf<i32>,
}

impl Potrf {
    /// Queries and allocates the workspace of `spotrf` for `n × n` (lda = n).
    pub fn new(gpu: &Gpu, a: &mut impl DevicePtrMut<f32>, n: usize) -> Result<Potrf> {
        need(a, n * n, "potrf A")?;
        let cn = c_int(n.max(1), "n")?;
        let lwork = gpu.dev.potrf_buffer_size(cn, a.addr_mut(), gpu.stream.id)?;
        Ok(Potrf { n, work: gpu.alloc::<f32>(lwork, "potrf workspace")?, info: gpu.zeros::<i32>(1, "potrf info")? })
    }

    /// Factors `a` in place: the row-major LOWER triangle (column-major upper) receives L.
    /// `info` ≠ 0 (read after a sync) means not positive definite.
    pub fn factor(&mut self, gpu: &Gpu, a: &mut impl DevicePtrMut<f32>) -> Result<()> {
        need(a, self.n * self.n, "potrf A")?;
        if self.n == 0 {
            return Ok(());
        }
        let cn = c_int(self.n, "n")?;
        let lwork = c_int(self.work.len(), "lwork")?;
        let p = Potrf_ { n: cn, a: a.addr_mut(), lda: cn, work: self.work.addr_mut(), lwork, info: self.info.addr_mut() };
        Ok(gpu.dev.potrf(&p, gpu.stream.id)?)
    }

    /// After `factor`: solves `A X = B` for `nrhs` right-hand sides stored as the ROWS of
    /// `b[nrhs][n]` (column-major `n × nrhs`, ldb = n), in place.
    pub fn solve(&mut self, gpu: &Gpu, a: &impl DevicePtr<f32>, b: &mut impl DevicePtrMut<f32>, nrhs: usize) -> Result<()> {
        need(a, self.n * self.n, "potrs A")?;
        need(b, self.n * nrhs, "potrs B")?;
        if self.n == 0 || nrhs == 0 {
            return Ok(());
        }
        let (cn, cr) = (c_int(self.n, "n")?, c_int(nrhs, "nrhs")?);
        let p = Potrs { n: cn, nrhs: cr, a: a.addr(), lda: cn, b: b.addr_mut(), ldb: cn, info: self.info.addr_mut() };
        Ok(gpu.dev.potrs(&p, gpu.stream.id)?)
    }
}

/// Reads `info[0..batch]` (synchronises).
pub fn read_info(gpu: &Gpu, info: &impl DevicePtr<i32>, batch: usize) -> Result<Vec<i32>> {
    gpu.download(info, batch, "Cholesky info")
}
