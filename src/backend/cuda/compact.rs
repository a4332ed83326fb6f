//! Thin wrappers of `compact.cu`: the gathers and scatters of restoration and compaction
//! (docs/spec.md §6, §9) — W1 rows and biases, `W2[:,S]`, `W2[:,P]`, `H[S,S]`, `H[P,S]`, and the
//! scatter of `W2'` back into dense-equivalent columns. One launch each, block 256, grid
//! (ceil(W/256), min(Hgt, 65535)) with W the contiguous output width (KERNELS.md). Index arrays
//! are `i32` device buffers; out-of-range indices make gathers write NaN and scatters skip.

use super::context::{c_int, cfg, launch, need, Bf16, Gpu};
use super::context::{DeviceBuf, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig};
use crate::error::Result;

/// An element type with f32 and bf16 kernel variants.
pub trait Elem: DeviceRepr + Copy {
    const GATHER_ROWS: &'static str;
    const GATHER_COLS: &'static str;
    const SCATTER_COLS: &'static str;
    const SCATTER_ROWS: &'static str;
}

impl Elem for f32 {
    const GATHER_ROWS: &'static str = "fasp_gather_rows_f32";
    const GATHER_COLS: &'static str = "fasp_gather_cols_f32";
    const SCATTER_COLS: &'static str = "fasp_scatter_cols_f32";
    const SCATTER_ROWS: &'static str = "fasp_scatter_rows_f32";
}

impl Elem for Bf16 {
    const GATHER_ROWS: &'static str = "fasp_gather_rows_bf16";
    const GATHER_COLS: &'static str = "fasp_gather_cols_bf16";
    const SCATTER_COLS: &'static str = "fasp_scatter_cols_bf16";
    const SCATTER_ROWS: &'static str = "fasp_scatter_rows_bf16";
}

fn grid(w: usize, hgt: usize) -> LaunchConfig {
    cfg((w.div_ceil(256).max(1) as u32, hgt.clamp(1, 65535) as u32, 1), (256, 1, 1))
}

/// `dst[r][c] = src[idx[r]][c]`: `src[rows][cols]` → `dst[nidx][cols]`.
pub fn gather_rows<T: Elem>(
    gpu: &Gpu,
    src: &impl DevicePtr<T>,
    rows: usize,
    cols: usize,
    idx: &impl DevicePtr<i32>,
    nidx: usize,
    dst: &mut impl DevicePtrMut<T>,
) -> Result<()> {
    need(src, rows * cols, "gather_rows src")?;
    need(idx, nidx, "gather_rows idx")?;
    need(dst, nidx * cols, "gather_rows dst")?;
    if nidx * cols == 0 {
        return Ok(());
    }
    let ps = src.addr();
    let pi = idx.addr();
    let pd = dst.addr_mut();
    let (r, c, n) = (c_int(rows, "rows")?, c_int(cols, "cols")?, c_int(nidx, "nidx")?);
    launch!(gpu, "compact", T::GATHER_ROWS, grid(cols, nidx), [ps, r, c, pi, n, pd])
}

/// `dst[r][t] = src[r][idx[t]]`: `src[rows][cols]` → `dst[rows][nidx]`.
pub fn gather_cols<T: Elem>(
    gpu: &Gpu,
    src: &impl DevicePtr<T>,
    rows: usize,
    cols: usize,
    idx: &impl DevicePtr<i32>,
    nidx: usize,
    dst: &mut impl DevicePtrMut<T>,
) -> Result<()> {
    need(src, rows * cols, "gather_cols src")?;
    need(idx, nidx, "gather_cols idx")?;
    need(dst, rows * nidx, "gather_cols dst")?;
    if nidx * rows == 0 {
        return Ok(());
    }
    let ps = src.addr();
    let pi = idx.addr();
    let pd = dst.addr_mut();
    let (r, c, n) = (c_int(rows, "rows")?, c_int(cols, "cols")?, c_int(nidx, "nidx")?);
    launch!(gpu, "compact", T::GATHER_COLS, grid(nidx, rows), [ps, r, c, pi, n, pd])
}

/// `dst[a][b] = h[ridx[a]][cidx[b]]`: `h[n][n]` → `dst[nr][nc]` (`H[S,S]`, `H[P,S]`).
#[allow(clippy::too_many_arguments)]
pub fn gather_submatrix(
    gpu: &Gpu,
    h: &impl DevicePtr<f32>,
    n: usize,
    ridx: &impl DevicePtr<i32>,
    nr: usize,
    cidx: &impl DevicePtr<i32>,
    nc: usize,
    dst: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    need(h, n * n, "gather_submatrix H")?;
    need(ridx, nr, "gather_submatrix ridx")?;
    need(cidx, nc, "gather_submatrix cidx")?;
    need(dst, nr * nc, "gather_submatrix dst")?;
    if nr * nc == 0 {
        return Ok(());
    }
    let ph = h.addr();
    let pr = ridx.addr();
    let pc = cidx.addr();
    let pd = dst.addr_mut();
    let (nn, r, c) = (c_int(n, "n")?, c_int(nr, "nr")?, c_int(nc, "nc")?);
    launch!(gpu, "compact", "fasp_gather_submatrix_f32", grid(nc, nr), [ph, nn, pr, r, pc, c, pd])
}

/// `dst[r][idx[t]] = src[r][t]`: `src[rows][nidx]` into `dst[rows][cols]` (zero `dst` first).
#[allow(clippy::too_many_arguments)]
pub fn scatter_cols<T: Elem>(
    gpu: &Gpu,
    src: &impl DevicePtr<T>,
    rows: usize,
    nidx: usize,
    idx: &impl DevicePtr<i32>,
    dst: &mut impl DevicePtrMut<T>,
    cols: usize,
) -> Result<()> {
    need(src, rows * nidx, "scatter_cols src")?;
    need(idx, nidx, "scatter_cols idx")?;
    need(dst, rows * cols, "scatter_cols dst")?;
    if rows * nidx == 0 {
        return Ok(());
    }
    let ps = src.addr();
    let pi = idx.addr();
    let pd = dst.addr_mut();
    let (r, n, c) = (c_int(rows, "rows")?, c_int(nidx, "nidx")?, c_int(cols, "cols")?);
    launch!(gpu, "compact", T::SCATTER_COLS, grid(nidx, rows), [ps, r, n, pi, pd, c])
}

/// `dst[idx[r]][c] = src[r][c]`: `src[nidx][cols]` into `dst[rows][cols]` (zero `dst` first).
#[allow(clippy::too_many_arguments)]
pub fn scatter_rows<T: Elem>(
    gpu: &Gpu,
    src: &impl DevicePtr<T>,
    nidx: usize,
    cols: usize,
    idx: &impl DevicePtr<i32>,
    dst: &mut impl DevicePtrMut<T>,
    rows: usize,
) -> Result<()> {
    need(src, nidx * cols, "scatter_rows src")?;
    need(idx, nidx, "scatter_rows idx")?;
    need(dst, rows * cols, "scatter_rows dst")?;
    if nidx * cols == 0 {
        return Ok(());
    }
    let ps = src.addr();
    let pi = idx.addr();
    let pd = dst.addr_mut();
    let (n, c, r) = (c_int(nidx, "nidx")?, c_int(cols, "cols")?, c_int(rows, "rows")?);
    launch!(gpu, "compact", T::SCATTER_ROWS, grid(cols, nidx), [ps, n, c, pi, pd, r])
}

/// Indices as a device `i32` buffer.
pub fn upload_idx(gpu: &Gpu, idx: &[usize], what: &str) -> Result<DeviceBuf<i32>> {
    let v: Vec<i32> = idx.iter().map(|&i| c_int(i, what)).collect::<Result<_>>()?;
    gpu.upload(&v, what)
}
