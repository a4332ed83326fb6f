//! Thin wrappers of `topk.cu`: keep the `k` best of `n` fp32 scores under the order
//! `(-score, index)` (ties to the lower index, docs/spec.md §5), giving the kept indices in
//! increasing order and a 0/1 mask. `fasp_topk_select` does everything in one 1024-thread block
//! for n ≤ 32768; the multi-block path (`fasp_topk_rank_mask` over ceil(n/256) blocks, then
//! `fasp_topk_compact` in one block) handles any n and is faster for large n. Status: 0 ok,
//! 1 a non-finite score, 2 bad arguments or launch shape.

use super::context::{c_int, cfg, launch, need, Gpu};
use super::context::{DeviceBuf, DevicePtr, DevicePtrMut, DeviceRepr};
use crate::error::{FaspError, Result};

/// The single-block limit of `fasp_topk_select`.
pub const SELECT_MAX_N: usize = 32768;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopkPath {
    /// `fasp_topk_select` (n ≤ 32768).
    Select,
    /// `fasp_topk_rank_mask` + `fasp_topk_compact`.
    MultiBlock,
}

/// The path used for `n` scores: the multi-block one above a few thousand scores (where one
/// block's O(n²/1024) comparisons start to dominate) or beyond the single-block limit.
pub fn choose_path(n: usize) -> TopkPath {
    if n <= 4096 {
        TopkPath::Select
    } else {
        TopkPath::MultiBlock
    }
}

/// Checks a selection's sizes (k ≤ n, every buffer large enough); `(n, k)` as C ints.
fn check_args<T>(
    score: &impl DevicePtr<T>,
    n: usize,
    k: usize,
    kept_idx: &impl DevicePtrMut<i32>,
    mask: &impl DevicePtrMut<u8>,
    status: &impl DevicePtrMut<i32>,
) -> Result<(i32, i32)> {
    if k > n {
        return Err(FaspError::Cuda(format!("top-k: k = {k} > n = {n}")));
    }
    need(score, n, "top-k scores")?;
    need(kept_idx, k.max(1), "top-k kept indices")?;
    need(mask, n.max(1), "top-k mask")?;
    need(status, 1, "top-k status")?;
    Ok((c_int(n, "n")?, c_int(k, "k")?))
}

/// Launches the selection; `kept_idx[k]`, `mask[n]` and `status[1]` are written on the device.
#[allow(clippy::too_many_arguments)]
pub fn select(
    gpu: &Gpu,
    score: &impl DevicePtr<f32>,
    n: usize,
    k: usize,
    kept_idx: &mut impl DevicePtrMut<i32>,
    mask: &mut impl DevicePtrMut<u8>,
    status: &mut impl DevicePtrMut<i32>,
    path: TopkPath,
) -> Result<()> {
    let (cn, ck) = check_args(score, n, k, kept_idx, mask, status)?;
    let ps = score.addr();
    let pk = kept_idx.addr_mut();
    let pm = mask.addr_mut();
    let pt = status.addr_mut();
    match path {
        TopkPath::Select => {
            if n > SELECT_MAX_N {
                return Err(FaspError::Cuda(format!("fasp_topk_select handles n ≤ {SELECT_MAX_N}, got {n}")));
            }
            launch!(gpu, "topk", "fasp_topk_select", cfg((1, 1, 1), (1024, 1, 1)), [ps, cn, ck, pk, pm, pt])
        }
        TopkPath::MultiBlock => {
            launch!(gpu, "topk", "fasp_topk_rank_mask", cfg((n.div_ceil(256).max(1) as u32, 1, 1), (256, 1, 1)), [ps, cn, ck, pm])?;
            launch!(gpu, "topk", "fasp_topk_compact", cfg((1, 1, 1), (1024, 1, 1)), [ps, cn, ck, pm, pk, pt])
        }
    }
}

/// Uploads `scores`, runs `launch` (a selection writing kept indices, mask and status), and returns
/// the kept indices in increasing order. A non-finite score is an error worded like the CPU's
/// (`select::top_k`).
fn host_top_k<T: DeviceRepr + Into<f64>>(
    gpu: &Gpu,
    scores: &[T],
    k: usize,
    launch: impl FnOnce(&DeviceBuf<T>, &mut DeviceBuf<i32>, &mut DeviceBuf<u8>, &mut DeviceBuf<i32>) -> Result<()>,
) -> Result<Vec<usize>, String> {
    if let Some(j) = scores.iter().position(|&s| !s.into().is_finite()) {
        return Err(format!("non-finite score {} at unit {j}", scores[j].into()));
    }
    let n = scores.len();
    if k == 0 || n == 0 {
        return Ok(Vec::new());
    }
    let run = || -> Result<Vec<usize>> {
        let d_scores = gpu.upload(scores, "top-k scores")?;
        let mut kept = gpu.alloc::<i32>(k, "top-k kept")?;
        let mut mask = gpu.alloc::<u8>(n, "top-k mask")?;
        let mut status = gpu.alloc::<i32>(1, "top-k status")?;
        launch(&d_scores, &mut kept, &mut mask, &mut status)?;
        let st = gpu.download(&status, 1, "top-k status")?[0];
        match st {
            0 => {}
            1 => return Err(FaspError::Cuda("top-k: the device found a non-finite score".into())),
            s => return Err(FaspError::Cuda(format!("top-k: the kernel reports bad arguments (status {s}, n {n}, k {k})"))),
        }
        let kept = gpu.download(&kept, k, "top-k kept")?;
        Ok(kept.into_iter().map(|i| i as usize).collect())
    };
    run().map_err(|e| e.to_string())
}

/// Host-facing fp32 top-k through the rank kernels (`select`); the kept indices in increasing order.
pub fn top_k(gpu: &Gpu, scores: &[f32], k: usize) -> Result<Vec<usize>, String> {
    let n = scores.len();
    host_top_k(gpu, scores, k, |d, kept, mask, status| select(gpu, d, n, k, kept, mask, status, choose_path(n)))
}

/// The pipeline's selection: `fasp_topk_radix_f64` on the full-precision scores, exactly the CPU's
/// order (`f64::total_cmp`, ties to the lower index), so no rounding can change the kept set.
/// Returns the kept indices in increasing order.
pub fn top_k_f64(gpu: &Gpu, scores: &[f64], k: usize) -> Result<Vec<usize>, String> {
    let n = scores.len();
    if k > n && scores.iter().all(|s| s.is_finite()) {
        return Err(format!("top-k: k = {k} > n = {n}"));
    }
    host_top_k(gpu, scores, k, |d, kept, mask, status| radix_select(gpu, d, n, k, kept, mask, status))
}

/// Launches `fasp_topk_radix_f64` (one 1024-thread block, any n).
pub fn radix_select(
    gpu: &Gpu,
    score: &impl DevicePtr<f64>,
    n: usize,
    k: usize,
    kept_idx: &mut impl DevicePtrMut<i32>,
    mask: &mut impl DevicePtrMut<u8>,
    status: &mut impl DevicePtrMut<i32>,
) -> Result<()> {
    let (cn, ck) = check_args(score, n, k, kept_idx, mask, status)?;
    let ps = score.addr();
    let pk = kept_idx.addr_mut();
    let pm = mask.addr_mut();
    let pt = status.addr_mut();
    launch!(gpu, "topk", "fasp_topk_radix_f64", cfg((1, 1, 1), (1024, 1, 1)), [ps, cn, ck, pk, pm, pt])
}
