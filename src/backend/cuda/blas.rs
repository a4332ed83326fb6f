//! cuBLAS calls of the backend, all fp32 with fp32 accumulation (no TF32: the handle is in
//! `CUBLAS_DEFAULT_MATH`), on the compute stream. Buffers are row-major; cuBLAS is column-major,
//! so a row-major `[r][c]` matrix is passed as the column-major `c × r` matrix (its transpose),
//! and every product below is the transposed form of the row-major one it documents.
//!
//! - `linear`: `Y[t][out] = X[t][in] · W[out][in]ᵀ` (HF layout) = sgemm(T, N, out, t, in).
//! - `matmul`: `C[m][n] = A[m][k] · B[k][n]` = sgemm(N, N, n, m, k) with A and B swapped.
//! - `attn_scores` / `attn_context`: the two strided-batched GEMMs of eager attention.
//! - `syrk_xtx`: `H = β H + Xᵀ X` for `X[t][n]` (ssyrk, fills H's row-major LOWER triangle).
//! - `col_sums`: `s = Xᵀ 1` (sgemv).

use super::context::{blas_err, c_int, need, Gpu};
use crate::error::Result;
use cudarc::cublas::sys::{cublasFillMode_t, cublasOperation_t};
use cudarc::cublas::{Gemm, GemmConfig, StridedBatchedConfig};
use cudarc::driver::{DevicePtr, DevicePtrMut};

const N: cublasOperation_t = cublasOperation_t::CUBLAS_OP_N;
const T: cublasOperation_t = cublasOperation_t::CUBLAS_OP_T;

/// `y[t][out] = x[t][inp] · w[out][inp]ᵀ` (no bias; see `forward::add_bias`).
pub fn linear(
    gpu: &Gpu,
    x: &impl DevicePtr<f32>,
    w: &impl DevicePtr<f32>,
    y: &mut impl DevicePtrMut<f32>,
    t: usize,
    inp: usize,
    out: usize,
) -> Result<()> {
    need(x, t * inp, "linear input")?;
    need(w, out * inp, "linear weight")?;
    need(y, t * out, "linear output")?;
    if t == 0 || out == 0 {
        return Ok(());
    }
    let (m, n, k) = (c_int(out, "out features")?, c_int(t, "tokens")?, c_int(inp, "in features")?);
    let cfg = GemmConfig { transa: T, transb: N, m, n, k, alpha: 1.0f32, lda: k, ldb: k, beta: 0.0f32, ldc: m };
    // SAFETY: sizes checked above: W is k×m (lda k), X is k×n (ldb k), Y is m×n (ldc m), column-major.
    unsafe { gpu.blas.gemm(cfg, w, x, y) }.map_err(|e| blas_err("sgemm (linear)", e))
}

/// Row-major `c[m][n] = a[m][k] · b[k][n]`.
pub fn matmul(
    gpu: &Gpu,
    a: &impl DevicePtr<f32>,
    b: &impl DevicePtr<f32>,
    c: &mut impl DevicePtrMut<f32>,
    m: usize,
    k: usize,
    n: usize,
) -> Result<()> {
    need(a, m * k, "matmul A")?;
    need(b, k * n, "matmul B")?;
    need(c, m * n, "matmul C")?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        return Err(crate::FaspError::Cuda("matmul with an empty inner dimension".into()));
    }
    let (cm, cn, ck) = (c_int(n, "matmul n")?, c_int(m, "matmul m")?, c_int(k, "matmul k")?);
    let cfg = GemmConfig { transa: N, transb: N, m: cm, n: cn, k: ck, alpha: 1.0f32, lda: cm, ldb: ck, beta: 0.0f32, ldc: cm };
    // SAFETY: column-major B is n×k (ld n), A is k×m (ld k), C is n×m (ld n); sizes checked.
    unsafe { gpu.blas.gemm(cfg, b, a, c) }.map_err(|e| blas_err("sgemm (matmul)", e))
}

/// Attention scores of `nmat` heads: `S_b[L][L] = alpha · Q_b[L][hd] · K_b[L][hd]ᵀ`.
#[allow(clippy::too_many_arguments)]
pub fn attn_scores(
    gpu: &Gpu,
    q: &impl DevicePtr<f32>,
    k: &impl DevicePtr<f32>,
    s: &mut impl DevicePtrMut<f32>,
    nmat: usize,
    l: usize,
    hd: usize,
    alpha: f32,
) -> Result<()> {
    need(q, nmat * l * hd, "attention Q")?;
    need(k, nmat * l * hd, "attention K")?;
    need(s, nmat * l * l, "attention scores")?;
    if nmat == 0 || l == 0 {
        return Ok(());
    }
    let (cl, chd) = (c_int(l, "seqlen")?, c_int(hd, "head_dim")?);
    // column-major: Sᵀ = Kᶜᵀ · Qᶜ with Kᶜ, Qᶜ the hd×L views of K, Q
    let cfg = StridedBatchedConfig {
        gemm: GemmConfig { transa: T, transb: N, m: cl, n: cl, k: chd, alpha, lda: chd, ldb: chd, beta: 0.0f32, ldc: cl },
        batch_size: c_int(nmat, "attention batch")?,
        stride_a: (l * hd) as i64,
        stride_b: (l * hd) as i64,
        stride_c: (l * l) as i64,
    };
    // SAFETY: nmat matrices of the checked sizes at the given strides.
    unsafe { gpu.blas.gemm_strided_batched(cfg, k, q, s) }.map_err(|e| blas_err("sgemm strided batched (QKᵀ)", e))
}

/// Attention context of `nmat` heads: `O_b[L][hd] = P_b[L][L] · V_b[L][hd]`.
pub fn attn_context(
    gpu: &Gpu,
    p: &impl DevicePtr<f32>,
    v: &impl DevicePtr<f32>,
    o: &mut impl DevicePtrMut<f32>,
    nmat: usize,
    l: usize,
    hd: usize,
) -> Result<()> {
    need(p, nmat * l * l, "attention probabilities")?;
    need(v, nmat * l * hd, "attention V")?;
    need(o, nmat * l * hd, "attention output")?;
    if nmat == 0 || l == 0 {
        return Ok(());
    }
    let (cl, chd) = (c_int(l, "seqlen")?, c_int(hd, "head_dim")?);
    // column-major: Oᵀ (hd×L) = Vᶜ (hd×L) · Pᶜ (L×L)
    let cfg = StridedBatchedConfig {
        gemm: GemmConfig { transa: N, transb: N, m: chd, n: cl, k: cl, alpha: 1.0f32, lda: chd, ldb: cl, beta: 0.0f32, ldc: chd },
        batch_size: c_int(nmat, "attention batch")?,
        stride_a: (l * hd) as i64,
        stride_b: (l * l) as i64,
        stride_c: (l * hd) as i64,
    };
    // SAFETY: nmat matrices of the checked sizes at the given strides.
    unsafe { gpu.blas.gemm_strided_batched(cfg, v, p, o) }.map_err(|e| blas_err("sgemm strided batched (PV)", e))
}

/// `H = beta·H + Xᵀ X` for `X[t][n]`, `H[n][n]`: writes the row-major LOWER triangle only
/// (follow with `stats::symmetrize(from_lower = true)` for the full matrix).
pub fn syrk_xtx(gpu: &Gpu, x: &impl DevicePtr<f32>, h: &mut impl DevicePtrMut<f32>, t: usize, n: usize, beta: f32) -> Result<()> {
    need(x, t * n, "syrk X")?;
    need(h, n * n, "syrk H")?;
    if n == 0 {
        return Ok(());
    }
    let (cn, ct) = (c_int(n, "syrk n")?, c_int(t, "syrk tokens")?);
    let (px, _gx) = x.device_ptr(&gpu.stream);
    let (ph, _gh) = h.device_ptr_mut(&gpu.stream);
    let alpha = 1.0f32;
    // column-major X is n×t (ld n): C = A·Aᵀ = Σ_t x xᵀ; UPPER column-major = LOWER row-major.
    // SAFETY: sizes checked; the pointers' stream guards live until after the call.
    unsafe {
        cudarc::cublas::sys::cublasSsyrk_v2(
            *gpu.blas.handle(),
            cublasFillMode_t::CUBLAS_FILL_MODE_UPPER,
            N,
            cn,
            ct,
            &alpha,
            px as *const f32,
            cn,
            &beta,
            ph as *mut f32,
            cn,
        )
    }
    .result()
    .map_err(|e| blas_err("ssyrk (H += XᵀX)", e))
}

/// `sums[n] = Σ_t x[t][·]` with `ones[t]` a vector of ones.
pub fn col_sums(
    gpu: &Gpu,
    x: &impl DevicePtr<f32>,
    ones: &impl DevicePtr<f32>,
    sums: &mut impl DevicePtrMut<f32>,
    t: usize,
    n: usize,
) -> Result<()> {
    need(x, t * n, "column sums X")?;
    need(ones, t, "column sums ones")?;
    need(sums, n, "column sums out")?;
    if n == 0 {
        return Ok(());
    }
    let (cn, ct) = (c_int(n, "n")?, c_int(t, "tokens")?);
    let (px, _gx) = x.device_ptr(&gpu.stream);
    let (po, _go) = ones.device_ptr(&gpu.stream);
    let (ps, _gs) = sums.device_ptr_mut(&gpu.stream);
    let (alpha, beta) = (1.0f32, 0.0f32);
    // SAFETY: column-major X is n×t (ld n); y = X·1 has n entries; sizes checked.
    unsafe {
        cudarc::cublas::sys::cublasSgemv_v2(
            *gpu.blas.handle(),
            N,
            cn,
            ct,
            &alpha,
            px as *const f32,
            cn,
            po as *const f32,
            1,
            &beta,
            ps as *mut f32,
            1,
        )
    }
    .result()
    .map_err(|e| blas_err("sgemv (column sums)", e))
}

/// Trailing update of the blocked Cholesky through cuBLAS (KERNELS.md): for matrix `b` of the
/// batch, `lower(A[m0:, m0:]) -= P Pᵀ`, `P = A[m0:, k:k+kb]`, `m0 = k + kb`.
#[allow(clippy::too_many_arguments)]
pub fn cholesky_trailing_syrk(
    gpu: &Gpu,
    a: &mut impl DevicePtrMut<f32>,
    n: usize,
    lda: usize,
    stride: usize,
    batch: usize,
    k: usize,
    kb: usize,
) -> Result<()> {
    let m0 = k + kb;
    if m0 >= n || batch == 0 {
        return Ok(());
    }
    need(a, (batch - 1) * stride + (n - 1) * lda + n, "Cholesky matrices")?;
    let (cm, ckb, clda) = (c_int(n - m0, "n")?, c_int(kb, "panel")?, c_int(lda, "lda")?);
    let (pa, _ga) = a.device_ptr_mut(&gpu.stream);
    let (alpha, beta) = (-1.0f32, 1.0f32);
    for b in 0..batch {
        let base = pa + ((b * stride) * 4) as u64;
        let p = base + ((m0 * lda + k) * 4) as u64;
        let c = base + ((m0 * lda + m0) * 4) as u64;
        // SAFETY: both blocks lie inside matrix b (checked above).
        unsafe {
            cudarc::cublas::sys::cublasSsyrk_v2(
                *gpu.blas.handle(),
                cublasFillMode_t::CUBLAS_FILL_MODE_UPPER,
                T,
                cm,
                ckb,
                &alpha,
                p as *const f32,
                clda,
                &beta,
                c as *mut f32,
                clda,
            )
        }
        .result()
        .map_err(|e| blas_err("ssyrk (Cholesky trailing update)", e))?;
    }
    Ok(())
}
