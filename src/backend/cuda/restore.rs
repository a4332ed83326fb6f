//! Restoration on the device (docs/spec.md §6), composed from the wrappers (safe Rust only):
//!
//! ```text
//! A = H[S,S]                      (fasp_gather_submatrix_f32, kept pristine for retries)
//! B = W2[:,P] · H[P,S]            (fasp_gather_cols_f32 + fasp_gather_submatrix_f32 + cuBLAS sgemm;
//!                                  only for the reconstruction errors)
//! e0 = <W2[:,P]·H[P,P], W2[:,P]>  (sgemm + fasp_stats_dot_partial_f32: the error of W2[:,S] alone)
//! loop: A' = A + λI, λ = damp·mean(diag H[S,S])   (mean taken on the host in f64, as the CPU)
//!       factor A'                 (blocked kernels, or cuSOLVER spotrf on request)
//!       info ≠ 0 → damp *= 10, retry (≤ MAX_RETRIES)
//! Z = H[P,S] (H_SS + λI)⁻¹        (fasp_cholesky_solve_lower + _upper over the |P| rows of H[P,S], or
//!                                  spotrs: |P| right-hand sides, not one per row of W2)
//! Y = W2[:,P] · Z                 (cuBLAS sgemm; = M (H_SS + λI)⁻¹ since H is symmetric)
//! W2' = W2[:,S] + Y               (fasp_add_f32), checked finite on the device
//! err² = e0 − <B, Y> − λ‖Y‖²     (fasp_stats_dot_partial_f32, sumsq: the CPU's closed form)
//! ```
//!
//! Everything stays on the device (`restore_resident`): W2 and H are the resident copies, `W2'`
//! is left there for the next step, and only scalars (info, λ's inputs, the error terms) and the
//! index sets cross. The factorisation is fp32 (the CPU reference is f64); λ, the damping and the retries are
//! decided exactly as on the CPU. `restore_batch` runs the same sequence for several problems
//! with one launch sequence per step (matrices padded to a common size with an identity block).

use super::cholesky::{self, Batch, Potrf, Trailing};
use super::compact::{gather_cols, gather_submatrix, upload_idx};
use super::context::need;
use super::context::DeviceBuf;
use super::context::Gpu;
use super::forward as fw;
use super::{blas, stats, Solver};
use crate::error::Result;
use crate::prune::restore::{no_restore, restored_err2, Restored, MAX_RETRIES};
use crate::tensor::{Gram, Mat};

/// `mean(diag H[S,S])` in f64, and the CPU's early exits (non-finite; all kept channels dead).
fn mean_diag(h: &Gram, s: &[usize]) -> Result<Option<f64>, String> {
    mean_of(&s.iter().map(|&j| h.get(j, j)).collect::<Vec<_>>())
}

/// The same from the summary's `diag(H)`.
fn mean_of(diag_s: &[f64]) -> Result<Option<f64>, String> {
    let m = diag_s.iter().sum::<f64>() / diag_s.len() as f64;
    if !m.is_finite() {
        return Err("statistics H are not finite".into());
    }
    // a negative mean (an indefinite H) goes on to the factorisation, which fails, as on the CPU
    Ok((m != 0.0).then_some(m))
}

fn failed_msg(damp_used: f64) -> String {
    format!("Cholesky of H[S,S] + λI failed after {MAX_RETRIES} damping escalations (last damp {})", damp_used / 10.0)
}

/// A pair's data on the device: `W2` `[rows][n]` and `H` `[n][n]` (fp32, both triangles), with
/// `diag(H)` in f64 on the host (the summary: λ is decided from it exactly as on the CPU).
pub struct Resident<'a> {
    pub w2: &'a DeviceBuf<f32>,
    pub rows: usize,
    pub n: usize,
    pub h: &'a DeviceBuf<f32>,
    pub hdiag: &'a [f64],
}

/// A restoration done on the device: `W2'` stays there; only scalars came back.
pub struct DeviceRestored {
    /// `W2'` `[rows][|S|]`.
    pub w2: DeviceBuf<f32>,
    pub lambda: Option<f64>,
    pub damp: f64,
    pub retries: u32,
    pub err2: f64,
    pub err2_no_restore: f64,
}

/// `W2' = W2[:,S] + W2[:,P]·H[P,S]·(H[S,S] + λI)⁻¹` (or `W2[:,S]` when `restore` is false) on
/// resident data, with the reconstruction errors from the restoration's own products (see the
/// module docs). The outer error is a device failure; the inner one a numerical failure worded
/// like the CPU's (`prune::restore::restore`).
#[allow(clippy::too_many_arguments)]
pub fn restore_resident(
    gpu: &Gpu,
    d: &Resident,
    s: &[usize],
    p: &[usize],
    damp: f64,
    restore: bool,
    solver: Solver,
) -> Result<Result<DeviceRestored, String>> {
    let (rows, n, ns, np) = (d.rows, d.n, s.len(), p.len());
    need(d.w2, rows * n, "restore W2")?;
    need(d.h, n * n, "restore H")?;
    let ds = upload_idx(gpu, s, "S")?;
    let mut out = gpu.alloc::<f32>(rows * ns, "W2'")?;
    gather_cols(gpu, d.w2, rows, n, &ds, ns, &mut out)?;
    let plain = |out, e0| Ok(Ok(DeviceRestored { w2: out, lambda: None, damp, retries: 0, err2: e0, err2_no_restore: e0 }));
    if np == 0 {
        return plain(out, 0.0);
    }
    let dp = upload_idx(gpu, p, "P")?;
    let mut w2p = gpu.alloc::<f32>(rows * np, "W2[:,P]")?;
    gather_cols(gpu, d.w2, rows, n, &dp, np, &mut w2p)?;
    // e0 = tr(W2[:,P] H[P,P] W2[:,P]ᵀ) = <W2[:,P]·H[P,P], W2[:,P]>
    let e0 = {
        let mut hpp = gpu.alloc::<f32>(np * np, "H[P,P]")?;
        gather_submatrix(gpu, d.h, n, &dp, np, &dp, np, &mut hpp)?;
        let mut t = gpu.alloc::<f32>(rows * np, "W2[:,P]·H[P,P]")?;
        blas::matmul(gpu, &w2p, &hpp, &mut t, rows, np, np)?;
        stats::dot(gpu, &t, &w2p, rows * np)?.max(0.0)
    };
    if !restore {
        return plain(out, e0);
    }
    let mean = match mean_of(&s.iter().map(|&j| d.hdiag[j]).collect::<Vec<_>>()) {
        Err(e) => return Ok(Err(e)),
        Ok(None) => return plain(out, e0),
        Ok(Some(m)) => m,
    };
    let mut hss = gpu.alloc::<f32>(ns * ns, "H[S,S]")?;
    gather_submatrix(gpu, d.h, n, &ds, ns, &ds, ns, &mut hss)?;
    let mut hps = gpu.alloc::<f32>(np * ns, "H[P,S]")?;
    gather_submatrix(gpu, d.h, n, &dp, np, &ds, ns, &mut hps)?;
    // B = W2[:,P]·H[P,S], for the errors
    let mut bm = gpu.alloc::<f32>(rows * ns, "W2[:,P]·H[P,S]")?;
    blas::matmul(gpu, &w2p, &hps, &mut bm, rows, np, ns)?;
    let mut z = gpu.alloc::<f32>(np * ns, "Z = H[P,S](H_SS + λI)⁻¹")?;
    let mut a = gpu.alloc::<f32>(ns * ns, "H[S,S] + λI")?;
    let mut info = gpu.alloc::<i32>(1, "Cholesky info")?;
    let shape = Batch::dense(ns, 1);
    let mut potrf = match solver {
        Solver::Cusolver => Some(Potrf::new(gpu, &mut a, ns)?),
        _ => None,
    };
    let mut damp_used = damp;
    for retry in 0..=MAX_RETRIES {
        let lambda = damp_used * mean;
        gpu.stream.memcpy_dtod(&hss, &mut a)?;
        cholesky::add_diag(gpu, &mut a, shape, lambda as f32)?;
        let ok = match (&mut potrf, solver) {
            (Some(pf), _) => {
                pf.factor(gpu, &mut a)?;
                gpu.download(&pf.info, 1, "potrf info")?[0] == 0
            }
            (None, Solver::KernelsCublasTrailing) => {
                cholesky::factor(gpu, &mut a, shape, &mut info, Trailing::Cublas)?;
                cholesky::read_info(gpu, &info, 1)?[0] == 0
            }
            (None, _) => {
                cholesky::factor(gpu, &mut a, shape, &mut info, Trailing::Kernel)?;
                cholesky::read_info(gpu, &info, 1)?[0] == 0
            }
        };
        // a finite positive pivot everywhere gives a finite factor, but check as the CPU does
        if ok && lower_finite(gpu, &a, ns)? {
            gpu.stream.memcpy_dtod(&hps, &mut z)?;
            match &mut potrf {
                Some(pf) => pf.solve(gpu, &a, &mut z, np)?,
                None => {
                    cholesky::solve_lower(gpu, &a, shape, &mut z, np, ns, 0)?;
                    cholesky::solve_upper(gpu, &a, shape, &mut z, np, ns, 0)?;
                }
            }
            // ΔW = Y = W2[:,P]·Z
            let mut y = gpu.alloc::<f32>(rows * ns, "Y = W2[:,P]·Z")?;
            blas::matmul(gpu, &w2p, &z, &mut y, rows, np, ns)?;
            let b_dw = stats::dot(gpu, &bm, &y, rows * ns)?;
            let dw2 = stats::sum_sq_diff(gpu, &y, None, rows * ns)?;
            fw::add_assign(gpu, &mut out, &y, rows * ns)?;
            if !fw::all_finite(gpu, &out, rows * ns)? {
                return Ok(Err("restored weights are not finite".into()));
            }
            let err2 = (e0 - b_dw - lambda * dw2).max(0.0);
            return Ok(Ok(DeviceRestored { w2: out, lambda: Some(lambda), damp: damp_used, retries: retry, err2, err2_no_restore: e0 }));
        }
        damp_used *= 10.0;
    }
    Ok(Err(failed_msg(damp_used)))
}

/// Host-facing restoration (tests, benches): uploads `W2` and `H` (fp32), runs
/// `restore_resident`, downloads `W2'`. Errors are worded like the CPU's; device failures are
/// prefixed "CUDA:".
pub fn restore(gpu: &Gpu, w2: &Mat, h: &Gram, s: &[usize], p: &[usize], damp: f64, solver: Solver) -> Result<Restored, String> {
    let run = || -> Result<Result<Restored, String>> {
        let h32: Vec<f32> = h.data.iter().map(|&v| v as f32).collect();
        let dh = gpu.upload(&h32, "H")?;
        let dw = gpu.upload(&w2.data, "W2")?;
        let hdiag = h.diag();
        let d = Resident { w2: &dw, rows: w2.rows, n: w2.cols, h: &dh, hdiag: &hdiag };
        Ok(match restore_resident(gpu, &d, s, p, damp, true, solver)? {
            Err(e) => Err(e),
            Ok(r) => Ok(Restored {
                w2: Mat::from_vec(w2.rows, s.len(), gpu.download(&r.w2, w2.rows * s.len(), "W2'")?),
                lambda: r.lambda,
                damp: r.damp,
                retries: r.retries,
                err2: r.err2,
                err2_no_restore: r.err2_no_restore,
            }),
        })
    };
    run().map_err(|e| e.to_string())?
}

/// Whether the factor is finite (the strict upper triangle holds finite H values, so the whole
/// matrix can be checked).
fn lower_finite(gpu: &Gpu, a: &DeviceBuf<f32>, n: usize) -> Result<bool> {
    fw::all_finite(gpu, a, n * n)
}

/// One restoration problem of a batch.
pub struct Problem<'a> {
    pub w2: &'a Mat,
    pub h: &'a Gram,
    pub s: &'a [usize],
    pub p: &'a [usize],
    pub damp: f64,
}

/// Restores several problems with one launch sequence per step: each `H[S,S]` is padded to the
/// largest `|S|` with an identity block (its factor is `[[L,0],[0,I]]`, and zero right-hand-side
/// columns stay zero), factored as one batch, and solved as one batch. Problems whose
/// factorisation fails are retried with damp ×10 (the others are kept), like the single path.
pub fn restore_batch(gpu: &Gpu, probs: &[Problem], trailing: Trailing) -> Result<Vec<Result<Restored, String>>> {
    let mut out: Vec<Option<Result<Restored, String>>> = vec![None; probs.len()];
    let mut active: Vec<(usize, f64, f64)> = Vec::new(); // (problem, mean, damp used)
    for (i, pr) in probs.iter().enumerate() {
        if pr.p.is_empty() {
            out[i] = Some(Ok(no_restore(pr.w2, pr.h, pr.s, pr.p, pr.damp)));
            continue;
        }
        match mean_diag(pr.h, pr.s) {
            Err(e) => out[i] = Some(Err(e)),
            Ok(None) => out[i] = Some(Ok(no_restore(pr.w2, pr.h, pr.s, pr.p, pr.damp))),
            Ok(Some(m)) => active.push((i, m, pr.damp)),
        }
    }
    if active.is_empty() {
        return Ok(out.into_iter().map(|o| o.expect("decided")).collect());
    }
    let nmax = active.iter().map(|&(i, _, _)| probs[i].s.len()).max().unwrap_or(0);
    let rmax = active.iter().map(|&(i, _, _)| probs[i].w2.rows).max().unwrap_or(0);
    let batch = active.len();
    // padded A (H[S,S] with an identity block) built on the host; M = W2[:,P]·H[P,S] formed on the
    // device per problem and packed into its padded slot
    let mut a0 = vec![0.0f32; batch * nmax * nmax];
    for (b, &(i, _, _)) in active.iter().enumerate() {
        let s = probs[i].s;
        let blk = &mut a0[b * nmax * nmax..(b + 1) * nmax * nmax];
        for (r, &sr) in s.iter().enumerate() {
            for (c, &sc) in s.iter().enumerate() {
                blk[r * nmax + c] = probs[i].h.get(sr, sc) as f32;
            }
        }
        for r in s.len()..nmax {
            blk[r * nmax + r] = 1.0;
        }
    }
    let mut m_all = gpu.zeros::<f32>(batch * rmax * nmax, "batched M")?;
    let mut b_host: Vec<Vec<f32>> = Vec::with_capacity(batch);
    for (b, &(i, _, _)) in active.iter().enumerate() {
        let pr = &probs[i];
        let (rows, ns, np) = (pr.w2.rows, pr.s.len(), pr.p.len());
        let dw = gpu.upload(&pr.w2.data, "W2")?;
        let dp = upload_idx(gpu, pr.p, "P")?;
        let hps_host: Vec<f32> = pr.p.iter().flat_map(|&r| pr.s.iter().map(move |&c| pr.h.get(r, c) as f32)).collect();
        let hps = gpu.upload(&hps_host, "H[P,S]")?;
        let mut w2p = gpu.alloc::<f32>(rows * np, "W2[:,P]")?;
        gather_cols(gpu, &dw, rows, pr.w2.cols, &dp, np, &mut w2p)?;
        let mut m = gpu.alloc::<f32>(rows * ns, "M")?;
        blas::matmul(gpu, &w2p, &hps, &mut m, rows, np, ns)?;
        // pack rows of M (width ns) into the padded slot (width nmax)
        let mh = gpu.download(&m, rows * ns, "M")?;
        let mut packed = vec![0.0f32; rmax * nmax];
        for r in 0..rows {
            packed[r * nmax..r * nmax + ns].copy_from_slice(&mh[r * ns..(r + 1) * ns]);
        }
        let mut view = m_all.slice_mut(b * rmax * nmax..(b + 1) * rmax * nmax);
        gpu.stream.memcpy_htod(&packed, &mut view)?;
        b_host.push(mh);
    }
    let da0 = gpu.upload(&a0, "batched H[S,S]")?;
    drop(a0);
    let mut a = gpu.alloc::<f32>(batch * nmax * nmax, "batched A")?;
    let mut info = gpu.alloc::<i32>(batch, "batched info")?;
    let shape = Batch::dense(nmax, batch);
    let mut retries: Vec<Option<u32>> = vec![None; batch];
    let mut inf = vec![0i32; batch];
    for pass in 0..=MAX_RETRIES {
        // every pass refactors the whole batch; a problem that succeeded keeps its damp, so it
        // succeeds again with the same λ (the kernels are deterministic)
        gpu.stream.memcpy_dtod(&da0, &mut a)?;
        let lam: Vec<f32> = active.iter().map(|&(_, mean, damp_used)| (damp_used * mean) as f32).collect();
        let dlam = gpu.upload(&lam, "λ per matrix")?;
        cholesky::add_diag_scaled(gpu, &mut a, shape, 1.0, &dlam)?;
        cholesky::factor(gpu, &mut a, shape, &mut info, trailing)?;
        inf = cholesky::read_info(gpu, &info, batch)?;
        for b in 0..batch {
            if inf[b] == 0 {
                retries[b].get_or_insert(pass);
            } else {
                active[b].2 *= 10.0;
            }
        }
        if inf.iter().all(|&v| v == 0) {
            break;
        }
    }
    cholesky::solve_lower(gpu, &a, shape, &mut m_all, rmax, nmax, rmax * nmax)?;
    cholesky::solve_upper(gpu, &a, shape, &mut m_all, rmax, nmax, rmax * nmax)?;
    let y = gpu.download(&m_all, batch * rmax * nmax, "batched Y")?;
    for (b, &(i, mean, damp_used)) in active.iter().enumerate() {
        let pr = &probs[i];
        if inf[b] != 0 {
            out[i] = Some(Err(failed_msg(damp_used)));
            continue;
        }
        let ns = pr.s.len();
        let mut w = pr.w2.gather_cols(pr.s);
        for r in 0..pr.w2.rows {
            for c in 0..ns {
                w.data[r * ns + c] += y[b * rmax * nmax + r * nmax + c];
            }
        }
        if !w.is_finite() {
            out[i] = Some(Err("restored weights are not finite".into()));
            continue;
        }
        let retry = retries[b].unwrap_or(0);
        let lambda = damp_used * mean;
        let (err2, err2_no_restore) = restored_err2(pr.w2, pr.h, pr.s, pr.p, &b_host[b], &w, lambda);
        out[i] = Some(Ok(Restored { w2: w, lambda: Some(lambda), damp: damp_used, retries: retry, err2, err2_no_restore }));
    }
    Ok(out.into_iter().map(|o| o.expect("decided")).collect())
}
