//! Thin wrappers of `score.cu`, the fused FASP metric (docs/spec.md §5): one pass over `W2` that
//! gives `colscore_j = sqrt(max(H_jj, 0)) · Σ_i |W2[i,j]|` (fp64 column sums), and the GQA unit
//! sums. With few columns per SM (e.g. o_proj, `cols/256 < #SMs`) the rows are split across a
//! second grid dimension (`*_partial`, fp64 partial sums) and summed in split order by
//! `fasp_score_columns_finish`, so the result does not depend on the split.

use super::context::{c_int, cfg, grid_1d, launch, need, Bf16, Gpu};
use super::context::{DevicePtr, DevicePtrMut};
use crate::error::Result;

/// How the column pass is launched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScorePath {
    /// One thread per column (`fasp_score_columns_*`).
    Single,
    /// Row splits of `rows_per_split` rows + finish.
    Split { rows_per_split: usize },
}

/// The efficient path for a `[rows][cols]` matrix on this GPU: split rows when a single pass
/// would leave SMs idle, aiming at ~4 blocks per SM.
pub fn choose_path(gpu: &Gpu, rows: usize, cols: usize) -> ScorePath {
    let col_blocks = cols.div_ceil(256).max(1);
    let sms = gpu.sm_count.max(1);
    if col_blocks >= sms || rows < 64 {
        return ScorePath::Single;
    }
    let nsplit = (4 * sms).div_ceil(col_blocks).clamp(1, rows.div_ceil(16)).min(65535);
    ScorePath::Split { rows_per_split: rows.div_ceil(nsplit) }
}

/// Column scores of an fp32 `W2[rows][cols]` with `hdiag[cols]` into `colscore[cols]`.
#[allow(clippy::too_many_arguments)]
pub fn column_scores(
    gpu: &Gpu,
    w2: &impl DevicePtr<f32>,
    rows: usize,
    cols: usize,
    hdiag: &impl DevicePtr<f32>,
    colscore: &mut impl DevicePtrMut<f32>,
    path: ScorePath,
) -> Result<()> {
    need(w2, rows * cols, "score W2")?;
    need(hdiag, cols, "score hdiag")?;
    need(colscore, cols, "score colscore")?;
    if cols == 0 {
        return Ok(());
    }
    let (r, c) = (c_int(rows, "rows")?, c_int(cols, "cols")?);
    match path {
        ScorePath::Single => {
            let pw = w2.addr();
            let ph = hdiag.addr();
            let po = colscore.addr_mut();
            launch!(gpu, "score", "fasp_score_columns_f32", cfg((grid_1d(cols, 256), 1, 1), (256, 1, 1)), [pw, r, c, ph, po])
        }
        ScorePath::Split { rows_per_split } => {
            let rps = rows_per_split.max(1);
            let nsplit = rows.div_ceil(rps).max(1);
            let mut partial = gpu.alloc::<f64>(nsplit * cols, "score partial sums")?;
            {
                let pw = w2.addr();
                let pp = partial.addr_mut();
                let crps = c_int(rps, "rows_per_split")?;
                let grid = (cols.div_ceil(256) as u32, c_int(nsplit, "splits")? as u32, 1);
                launch!(gpu, "score", "fasp_score_columns_partial_f32", cfg(grid, (256, 1, 1)), [pw, r, c, crps, pp])?;
            }
            finish(gpu, &partial, nsplit, cols, hdiag, colscore)
        }
    }
}

/// Column scores of a bf16 `W2` (fp32 result), single pass or split like `column_scores`.
#[allow(clippy::too_many_arguments)]
pub fn column_scores_bf16(
    gpu: &Gpu,
    w2: &impl DevicePtr<Bf16>,
    rows: usize,
    cols: usize,
    hdiag: &impl DevicePtr<f32>,
    colscore: &mut impl DevicePtrMut<f32>,
    path: ScorePath,
) -> Result<()> {
    need(w2, rows * cols, "score W2")?;
    need(hdiag, cols, "score hdiag")?;
    need(colscore, cols, "score colscore")?;
    if cols == 0 {
        return Ok(());
    }
    let (r, c) = (c_int(rows, "rows")?, c_int(cols, "cols")?);
    match path {
        ScorePath::Single => {
            let pw = w2.addr();
            let ph = hdiag.addr();
            let po = colscore.addr_mut();
            launch!(gpu, "score", "fasp_score_columns_bf16", cfg((grid_1d(cols, 256), 1, 1), (256, 1, 1)), [pw, r, c, ph, po])
        }
        ScorePath::Split { rows_per_split } => {
            let rps = rows_per_split.max(1);
            let nsplit = rows.div_ceil(rps).max(1);
            let mut partial = gpu.alloc::<f64>(nsplit * cols, "score partial sums")?;
            {
                let pw = w2.addr();
                let pp = partial.addr_mut();
                let crps = c_int(rps, "rows_per_split")?;
                let grid = (cols.div_ceil(256) as u32, c_int(nsplit, "splits")? as u32, 1);
                launch!(gpu, "score", "fasp_score_columns_partial_bf16", cfg(grid, (256, 1, 1)), [pw, r, c, crps, pp])?;
            }
            finish(gpu, &partial, nsplit, cols, hdiag, colscore)
        }
    }
}

/// `fasp_score_columns_finish`: sums `partial[nsplit][cols]` in split order, × sqrt(max(hdiag, 0)).
pub fn finish(
    gpu: &Gpu,
    partial: &impl DevicePtr<f64>,
    nsplit: usize,
    cols: usize,
    hdiag: &impl DevicePtr<f32>,
    colscore: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    need(partial, nsplit * cols, "score partial")?;
    need(hdiag, cols, "score hdiag")?;
    need(colscore, cols, "score colscore")?;
    if cols == 0 {
        return Ok(());
    }
    let pp = partial.addr();
    let ph = hdiag.addr();
    let po = colscore.addr_mut();
    let (ns, c) = (c_int(nsplit, "splits")?, c_int(cols, "cols")?);
    launch!(gpu, "score", "fasp_score_columns_finish", cfg((grid_1d(cols, 256), 1, 1), (256, 1, 1)), [pp, ns, c, ph, po])
}

/// `fasp_score_units_f32`: `unitscore[g*hd + d] = Σ_t colscore[(g*group + t)*hd + d]`.
pub fn unit_scores(
    gpu: &Gpu,
    colscore: &impl DevicePtr<f32>,
    kv_heads: usize,
    head_dim: usize,
    group: usize,
    unitscore: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    let n = kv_heads * head_dim;
    need(colscore, n * group, "unit scores colscore")?;
    need(unitscore, n, "unit scores out")?;
    if n == 0 {
        return Ok(());
    }
    let pc = colscore.addr();
    let pu = unitscore.addr_mut();
    let (kv, hd, g) = (c_int(kv_heads, "kv_heads")?, c_int(head_dim, "head_dim")?, c_int(group, "group")?);
    launch!(gpu, "score", "fasp_score_units_f32", cfg((grid_1d(n, 256), 1, 1), (256, 1, 1)), [pc, kv, hd, g, pu])
}
