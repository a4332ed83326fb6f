//! The library calls of the backend (cuBLAS on a GPU, faer on the emulated device), all fp32
//! with fp32 accumulation (no TF32: cuBLAS runs in `CUBLAS_DEFAULT_MATH`), on the compute stream. Buffers are row-major; cuBLAS is column-major,
//! so a row-major `[r][c]` matrix is passed as the column-major `c × r` matrix (its transpose),
//! and every product below is the transposed form of the row-major one it documents.
//!
//! - `linear`: `Y[t][out] = X[t][in] · W[out][in]ᵀ` (HF layout) = sgemm(T, N, out, t, in).
//! - `matmul`: `C[m][n] = A[m][k] · B[k][n]` = sgemm(N, N, n, m, k) with A and B swapped.
//! - `attn_scores` / `attn_context`: the two strided-batched GEMMs of eager attention.
//! - `syrk_xtx`: `H = β H + Xᵀ X` for `X[t][n]` (ssyrk, fills H's row-major LOWER triangle).
//! - `col_sums`: `s = Xᵀ 1` (sgemv).

use super::context::{c_int, need, DevicePtr, DevicePtrMut, Gpu};
use super::device::{Gemm, Gemv, Op, Syrk};
use crate::error::Result;

const N: Op = Op::N;
const T: Op = Op::T;

/// A single (non-batched) GEMM.
#[allow(clippy::too_many_arguments)]
fn gemm1(transa: Op, transb: Op, m: i32, n: i32, k: i32, a: u64, lda: i32, b: u64, ldb: i32, c: u64, ldc: i32) -> Gemm {
    Gemm { transa, transb, m, n, k, alpha: 1.0, a, lda, b, ldb, beta: 0.0, c, ldc, batch: 1, stride_a: 0, stride_b: 0, stride_c: 0 }
}

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
    // sizes checked above: W is k×m (lda k), X is k×n (ldb k), Y is m×n (ldc m), column-major.
    Ok(gpu.dev.gemm(&gemm1(T, N, m, n, k, w.addr(), k, x.addr(), k, y.addr_mut(), m), gpu.stream.id)?)
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
    // column-major B is n×k (ld n), A is k×m (ld k), C is n×m (ld n); sizes checked.
    Ok(gpu.dev.gemm(&gemm1(N, N, cm, cn, ck, b.addr(), cm, a.addr(), ck, c.addr_mut(), cm), gpu.stream.id)?)
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
    let g = Gemm {
        alpha,
        batch: c_int(nmat, "attention batch")?,
        stride_a: (l * hd) as i64,
        stride_b: (l * hd) as i64,
        stride_c: (l * l) as i64,
        ..gemm1(T, N, cl, cl, chd, k.addr(), chd, q.addr(), chd, s.addr_mut(), cl)
    };
    // nmat matrices of the checked sizes at the given strides.
    Ok(gpu.dev.gemm(&g, gpu.stream.id)?)
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
    let g = Gemm {
        batch: c_int(nmat, "attention batch")?,
        stride_a: (l * hd) as i64,
        stride_b: (l * l) as i64,
        stride_c: (l * hd) as i64,
        ..gemm1(N, N, chd, cl, cl, v.addr(), chd, p.addr(), cl, o.addr_mut(), chd)
    };
    // nmat matrices of the checked sizes at the given strides.
    Ok(gpu.dev.gemm(&g, gpu.stream.id)?)
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
    // column-major X is n×t (ld n): C = A·Aᵀ = Σ_t x xᵀ; UPPER column-major = LOWER row-major.
    let y = Syrk { trans: N, n: cn, k: ct, alpha: 1.0, a: x.addr(), lda: cn, beta, c: h.addr_mut(), ldc: cn };
    Ok(gpu.dev.syrk(&y, gpu.stream.id)?)
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
    // column-major X is n×t (ld n); y = X·1 has n entries; sizes checked.
    let g = Gemv { m: cn, n: ct, alpha: 1.0, a: x.addr(), lda: cn, x: ones.addr(), beta: 0.0, y: sums.addr_mut() };
    Ok(gpu.dev.gemv(&g, gpu.stream.id)?)
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
    let pa = a.addr_mut();
    for b in 0..batch {
        let base = pa + ((b * stride) * 4) as u64;
        let p = base + ((m0 * lda + k) * 4) as u64;
        let c = base + ((m0 * lda + m0) * 4) as u64;
        // both blocks lie inside matrix b (checked above)
        let y = Syrk { trans: T, n: cm, k: ckb, alpha: -1.0, a: p, lda: clda, beta: 1.0, c, ldc: clda };
        gpu.dev.syrk(&y, gpu.stream.id)?;
    }
    Ok(())
}
