//! GPU tests of the CUDA backend. Without a usable CUDA device (no driver, no GPU, or a binary
//! built without kernels) every test prints `SKIP (no CUDA device): ...` and passes; the one
//! CPU-only test checks that `--device cuda` then fails with one clear line.
//!
//! On a GPU: every kernel family against the CPU reference on seeded random inputs (never
//! zeros), with the output poisoned (NaN) before the launch and a tolerance `atol + rtol·|ref|`
//! by dtype; Cholesky failure and damping escalation on indefinite matrices; the backend's
//! steps against the CPU backend; and a whole prune of every fixture on CUDA against the CPU
//! (kept sets, restored weights within 1e-3 relative, perplexity within 0.1%).
//! `FASP_REPO_ROOT` points the fixtures elsewhere (scripts/gpu-check.sh runs these binaries away
//! from the tree they were built in).

mod common;
use common::*;
use fasp_engine::backend::cuda::device::{DeviceBuf, DeviceKind};
use fasp_engine::backend::cuda::{
    blas, cholesky, compact, cuda_usable, forward as fw, layer, restore as grestore, score, stats, topk, Bf16, CudaBackend, Gpu, Solver,
};
use fasp_engine::backend::{cpu::CpuBackend, Backend, PairJob, PairStats, PrunedPair, Scoring, StatsSummary};
use fasp_engine::forward;
use fasp_engine::job::{self, Device, EvalSpec};
use fasp_engine::model::arch::{attn_unit_columns, NormKind};
use fasp_engine::model::{LayerWeights, Linear, Model, ModelConfig, Norm};
use fasp_engine::prune::Method;
use fasp_engine::prune::{restore, score as cscore, select};
use fasp_engine::tensor::{Gram, Mat};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;

/// The real GPU, or None (the test then says SKIP: its emulated twin has run the same code).
fn cuda_gpu(test: &str) -> Option<Arc<Gpu>> {
    match Gpu::new(0) {
        Ok(g) => Some(g),
        Err(e) => {
            eprintln!("SKIP (no CUDA device; the emu:: twin runs the same test): {test}: {e}");
            None
        }
    }
}

/// The emulated device. Every test asserts afterwards that no drop-time ordering error was found.
fn emu_gpu() -> Arc<Gpu> {
    Gpu::emu().expect("the emulated device always opens")
}

/// The same test code on two devices (candle's `test_device!` pattern): `emu::NAME` always runs
/// on the emulated device, `cuda::NAME` on a GPU when one is usable.
macro_rules! on_devices {
    ($($name:ident),* $(,)?) => {
        mod emu {
            $( #[test] fn $name() {
                super::$name(super::emu_gpu());
                let errs = fasp_engine::backend::cuda::device::emu::take_drop_errors();
                assert!(errs.is_empty(), "stream-ordering errors at free time: {errs:?}");
                println!(
                    "emulated kernel launches in this test binary so far: {}",
                    fasp_engine::backend::cuda::device::emu::launches_in_process()
                );
            } )*
        }
        mod cuda {
            $( #[test] fn $name() {
                if let Some(g) = super::cuda_gpu(stringify!($name)) { super::$name(g) }
            } )*
        }
    };
}

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn randv(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut r = rng(seed);
    (0..n).map(|_| r.random_range(lo..hi)).collect()
}

fn randm(rows: usize, cols: usize, seed: u64) -> Mat {
    Mat::from_vec(rows, cols, randv(rows * cols, seed, -1.0, 1.0))
}

/// A device buffer of `n` NaNs (outputs are poisoned before every launch).
fn poison(g: &Gpu, n: usize) -> DeviceBuf<f32> {
    g.upload(&vec![f32::NAN; n], "poison").unwrap()
}

fn poison_bf16(g: &Gpu, n: usize) -> DeviceBuf<Bf16> {
    g.upload(&vec![Bf16::from(half::bf16::NAN); n], "poison").unwrap()
}

fn down(g: &Gpu, d: &DeviceBuf<f32>, n: usize) -> Vec<f32> {
    g.download(d, n, "result").unwrap()
}

/// Tolerances by dtype and kind of computation.
const F32_EXACT: (f64, f64) = (0.0, 0.0);
const F32_EW: (f64, f64) = (1e-6, 1e-5);
const F32_RED: (f64, f64) = (1e-5, 1e-4);
const BF16: (f64, f64) = (1e-3, 8e-3);

/// `|got − want| ≤ atol + rtol·|want|` everywhere (NaN fails); prints up to 5 mismatches.
fn check(name: &str, got: &[f32], want: &[f64], tol: (f64, f64)) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let (atol, rtol) = tol;
    let mut bad = 0usize;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = (g as f64 - w).abs() <= atol + rtol * w.abs();
        if !ok {
            if bad < 5 {
                eprintln!("  {name}[{i}]: got {g}, want {w}");
            }
            bad += 1;
        }
    }
    assert_eq!(bad, 0, "{name}: {bad} of {} values outside atol {atol:e} + rtol {rtol:e}·|ref|", got.len());
}

fn f64v(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn rel_fro(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-300)).sqrt()
}

fn modules_load_and_report_jit_time(g: Arc<Gpu>) {
    let t0 = std::time::Instant::now();
    g.load_all().unwrap();
    let total = t0.elapsed().as_secs_f64() * 1e3;
    for (stem, ms) in g.jit_times_ms() {
        println!("JIT cuda/{stem}.cu: {ms:.1} ms");
    }
    println!("JIT all modules: {total:.1} ms on {} (PTX {})", g.describe(), fasp_engine::kernels::PTX_ARCH);
}

/// The PTX entry points (when nvcc built them) and the emulated kernels are the same set.
#[test]
fn ptx_entries_and_emulated_kernels_agree() {
    let emu = fasp_engine::backend::cuda::device::emu::kernels();
    assert!(emu.len() >= 40, "{} emulated kernels", emu.len());
    if !fasp_engine::kernels::KERNELS_BUILT {
        eprintln!("SKIP (no nvcc in this build): the PTX side of ptx_entries_and_emulated_kernels_agree");
        return;
    }
    let mut ptx = std::collections::BTreeSet::new();
    for (stem, text) in fasp_engine::kernels::ALL {
        for line in text.lines() {
            if let Some(rest) = line.trim_start().strip_prefix(".visible .entry ") {
                let name = rest.split('(').next().unwrap().trim().to_string();
                assert_eq!(emu.get(&name).map(|k| k.module.as_str()), Some(*stem), "{name}");
                ptx.insert(name);
            }
        }
    }
    let emu_names: std::collections::BTreeSet<String> = emu.keys().cloned().collect();
    assert_eq!(ptx, emu_names);
}

fn score_kernels_match_cpu(g: Arc<Gpu>) {
    for (rows, cols, seed) in [(37usize, 300usize, 1u64), (512, 700, 2), (4096, 96, 3)] {
        let w = randm(rows, cols, seed);
        let mut hd: Vec<f32> = randv(cols, seed + 10, 0.01, 4.0);
        hd[3] = -1e-3; // a rounding-negative diagonal clamps to 0
        let want = cscore::column_scores(&w, &f64v(&hd));
        let dw = g.upload(&w.data, "W2").unwrap();
        let dh = g.upload(&hd, "hdiag").unwrap();
        for path in [score::ScorePath::Single, score::ScorePath::Split { rows_per_split: 64 }, score::choose_path(&g, rows, cols)] {
            let mut out = poison(&g, cols);
            score::column_scores(&g, &dw, rows, cols, &dh, &mut out, path).unwrap();
            check(&format!("colscore {rows}x{cols} {path:?}"), &down(&g, &out, cols), &want, F32_RED);
        }
        // bf16 W2: the reference uses the rounded weights
        let wb: Vec<Bf16> = w.data.iter().map(|&v| Bf16::from_f32(v)).collect();
        let wr = Mat::from_vec(rows, cols, wb.iter().map(|v| v.to_f32()).collect());
        let want_b = cscore::column_scores(&wr, &f64v(&hd));
        let dwb = g.upload(&wb, "W2 bf16").unwrap();
        for path in [score::ScorePath::Single, score::ScorePath::Split { rows_per_split: 100 }] {
            let mut out = poison(&g, cols);
            score::column_scores_bf16(&g, &dwb, rows, cols, &dh, &mut out, path).unwrap();
            let got = down(&g, &out, cols);
            check(&format!("colscore bf16 {rows}x{cols}"), &got, &want_b, F32_RED);
            // against the f32 weights: bf16 rounding is within the bf16 tolerance
            check(&format!("colscore bf16 vs f32 {rows}x{cols}"), &got, &want, BF16);
        }
    }
    // GQA unit sums: kv_heads 4, head_dim 8, group 3
    let (kv, hd, grp) = (4usize, 8usize, 3usize);
    let cs = randv(kv * hd * grp, 7, 0.0, 5.0);
    let units: Vec<Vec<usize>> = (0..kv * hd).map(|c| (0..grp).map(|t| ((c / hd) * grp + t) * hd + c % hd).collect()).collect();
    let want = cscore::unit_scores(&f64v(&cs), &units);
    let dcs = g.upload(&cs, "colscore").unwrap();
    let mut out = poison(&g, kv * hd);
    score::unit_scores(&g, &dcs, kv, hd, grp, &mut out).unwrap();
    check("unit scores", &down(&g, &out, kv * hd), &want, F32_RED);
}

fn topk_matches_cpu_with_ties(g: Arc<Gpu>) {
    for (n, seed) in [(1usize, 1u64), (100, 2), (3000, 3), (5000, 4), (33000, 5)] {
        let mut r = rng(seed);
        // few distinct levels: many ties (including many +0.0). Not -0.0: the kernel ties it with
        // +0.0 (KERNELS.md), while select::top_k's total_cmp ranks -0.0 below +0.0.
        let s: Vec<f32> = (0..n).map(|_| (r.random_range(-20.0f32..20.0)).floor() * 0.5).collect();
        for k in [1, n / 3, n / 2, n.saturating_sub(1).max(1), n] {
            let want = select::top_k(&f64v(&s), k).unwrap();
            let d = g.upload(&s, "scores").unwrap();
            let paths: &[topk::TopkPath] =
                if n <= topk::SELECT_MAX_N { &[topk::TopkPath::Select, topk::TopkPath::MultiBlock] } else { &[topk::TopkPath::MultiBlock] };
            for &path in paths {
                let mut kept = g.upload(&vec![-7i32; k.max(1)], "kept").unwrap();
                let mut mask = g.upload(&vec![9u8; n], "mask").unwrap();
                let mut status = g.upload(&[-1i32], "status").unwrap();
                topk::select(&g, &d, n, k, &mut kept, &mut mask, &mut status, path).unwrap();
                assert_eq!(g.download(&status, 1, "status").unwrap()[0], 0, "n {n} k {k} {path:?}");
                let got: Vec<usize> = g.download(&kept, k, "kept").unwrap().into_iter().map(|i| i as usize).collect();
                assert_eq!(got, want, "n {n} k {k} {path:?}");
                let m = g.download(&mask, n, "mask").unwrap();
                let from_mask: Vec<usize> = (0..n).filter(|&j| m[j] == 1).collect();
                assert!(m.iter().all(|&b| b <= 1), "mask is 0/1");
                assert_eq!(from_mask, want, "mask n {n} k {k} {path:?}");
            }
            assert_eq!(topk::top_k(&g, &s, k).unwrap(), want);
        }
    }
    // a non-finite score is an error on the device too
    let mut s = randv(200, 9, 0.0, 1.0);
    s[17] = f32::NAN;
    let d = g.upload(&s, "scores").unwrap();
    let (mut kept, mut mask, mut status) =
        (g.zeros::<i32>(10, "k").unwrap(), g.zeros::<u8>(200, "m").unwrap(), g.zeros::<i32>(1, "s").unwrap());
    topk::select(&g, &d, 200, 10, &mut kept, &mut mask, &mut status, topk::TopkPath::Select).unwrap();
    assert_eq!(g.download(&status, 1, "status").unwrap()[0], 1);
    assert!(topk::top_k(&g, &s, 10).unwrap_err().contains("non-finite"));
}

fn compact_gathers_and_scatters_match_cpu(g: Arc<Gpu>) {
    let (rows, cols) = (70usize, 300usize);
    let src = randm(rows, cols, 11);
    let ridx: Vec<usize> = (0..rows).filter(|i| i % 3 != 1).collect();
    let cidx: Vec<usize> = (0..cols).filter(|i| i % 4 != 2).collect();
    let ds = g.upload(&src.data, "src").unwrap();
    let (dr, dc) = (compact::upload_idx(&g, &ridx, "r").unwrap(), compact::upload_idx(&g, &cidx, "c").unwrap());
    let mut out = poison(&g, ridx.len() * cols);
    compact::gather_rows(&g, &ds, rows, cols, &dr, ridx.len(), &mut out).unwrap();
    check("gather_rows", &down(&g, &out, ridx.len() * cols), &f64v(&src.gather_rows(&ridx).data), F32_EXACT);
    let mut out = poison(&g, rows * cidx.len());
    compact::gather_cols(&g, &ds, rows, cols, &dc, cidx.len(), &mut out).unwrap();
    let gc = src.gather_cols(&cidx);
    check("gather_cols", &down(&g, &out, rows * cidx.len()), &f64v(&gc.data), F32_EXACT);
    // scatter back into zeros
    let dgc = g.upload(&gc.data, "gathered").unwrap();
    let mut back = g.zeros::<f32>(rows * cols, "back").unwrap();
    compact::scatter_cols(&g, &dgc, rows, cidx.len(), &dc, &mut back, cols).unwrap();
    check("scatter_cols", &down(&g, &back, rows * cols), &f64v(&gc.scatter_cols(&cidx, cols).data), F32_EXACT);
    let gr = src.gather_rows(&ridx);
    let dgr = g.upload(&gr.data, "gathered rows").unwrap();
    let mut back = g.zeros::<f32>(rows * cols, "back").unwrap();
    compact::scatter_rows(&g, &dgr, ridx.len(), cols, &dr, &mut back, rows).unwrap();
    let mut want = Mat::zeros(rows, cols);
    for (k, &r) in ridx.iter().enumerate() {
        want.row_mut(r).copy_from_slice(gr.row(k));
    }
    check("scatter_rows", &down(&g, &back, rows * cols), &f64v(&want.data), F32_EXACT);
    // submatrix of a symmetric H
    let n = 90;
    let x = randm(200, n, 12);
    let mut h = Gram::zeros(n);
    h.accumulate(&x);
    let h32: Vec<f32> = h.data.iter().map(|&v| v as f32).collect();
    let dh = g.upload(&h32, "H").unwrap();
    let s: Vec<usize> = (0..n).filter(|i| i % 5 != 0).collect();
    let p: Vec<usize> = (0..n).filter(|i| i % 5 == 0).collect();
    let (dsi, dpi) = (compact::upload_idx(&g, &s, "S").unwrap(), compact::upload_idx(&g, &p, "P").unwrap());
    let mut out = poison(&g, p.len() * s.len());
    compact::gather_submatrix(&g, &dh, n, &dpi, p.len(), &dsi, s.len(), &mut out).unwrap();
    let h32r = &h32;
    let want: Vec<f64> = p.iter().flat_map(|&r| s.iter().map(move |&c| h32r[r * n + c] as f64)).collect();
    check("gather_submatrix", &down(&g, &out, p.len() * s.len()), &want, F32_EXACT);
    // bf16 variants are copies too
    let sb: Vec<Bf16> = src.data.iter().map(|&v| Bf16::from_f32(v)).collect();
    let dsb = g.upload(&sb, "src bf16").unwrap();
    let mut ob = poison_bf16(&g, rows * cidx.len());
    compact::gather_cols(&g, &dsb, rows, cols, &dc, cidx.len(), &mut ob).unwrap();
    let got: Vec<f32> = g.download(&ob, rows * cidx.len(), "bf16").unwrap().iter().map(|v| v.to_f32()).collect();
    let want: Vec<f64> = (0..rows).flat_map(|r| cidx.iter().map(move |&c| (r, c))).map(|(r, c)| sb[r * cols + c].to_f32() as f64).collect();
    check("gather_cols bf16", &got, &want, F32_EXACT);
    let mut ob = poison_bf16(&g, ridx.len() * cols);
    compact::gather_rows(&g, &dsb, rows, cols, &dr, ridx.len(), &mut ob).unwrap();
    let got: Vec<f32> = g.download(&ob, ridx.len() * cols, "bf16").unwrap().iter().map(|v| v.to_f32()).collect();
    let want: Vec<f64> = ridx.iter().flat_map(|&r| (0..cols).map(move |c| (r, c))).map(|(r, c)| sb[r * cols + c].to_f32() as f64).collect();
    check("gather_rows bf16", &got, &want, F32_EXACT);
}

/// A well-conditioned SPD matrix `XᵀX/t + 0.5·I` (f64).
fn spd(n: usize, seed: u64) -> Vec<f64> {
    let t = 2 * n + 10;
    let x = randm(t, n, seed);
    let mut h = Gram::zeros(n);
    h.accumulate(&x);
    let mut a: Vec<f64> = h.data.iter().map(|v| v / t as f64).collect();
    for i in 0..n {
        a[i * n + i] += 0.5;
    }
    a
}

fn chol_f64(a: &[f64], n: usize) -> Vec<f64> {
    let mut l = vec![0.0; n * n];
    for j in 0..n {
        let mut d = a[j * n + j];
        for p in 0..j {
            d -= l[j * n + p] * l[j * n + p];
        }
        l[j * n + j] = d.sqrt();
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for p in 0..j {
                s -= l[i * n + p] * l[j * n + p];
            }
            l[i * n + j] = s / l[j * n + j];
        }
    }
    l
}

/// Solves `A x = b` with the f64 factor `l`.
fn solve_f64(l: &[f64], n: usize, b: &[f64]) -> Vec<f64> {
    let mut y = b.to_vec();
    for i in 0..n {
        for p in 0..i {
            y[i] -= l[i * n + p] * y[p];
        }
        y[i] /= l[i * n + i];
    }
    for i in (0..n).rev() {
        for p in i + 1..n {
            y[i] -= l[p * n + i] * y[p];
        }
        y[i] /= l[i * n + i];
    }
    y
}

fn cholesky_factor_and_solves_match_cpu(g: Arc<Gpu>) {
    for (n, batch) in [(100usize, 3usize), (257, 2), (32, 1), (5, 4)] {
        let mats: Vec<Vec<f64>> = (0..batch).map(|b| spd(n, 100 + b as u64 + n as u64)).collect();
        let host: Vec<f32> = mats.iter().flatten().map(|&v| v as f32).collect();
        let shape = cholesky::Batch::dense(n, batch);
        // diag_mean / add_diag / add_diag_scaled
        let da = g.upload(&host, "A").unwrap();
        let mut mean = poison(&g, batch);
        cholesky::diag_mean(&g, &da, shape, &mut mean).unwrap();
        let want: Vec<f64> = mats.iter().map(|m| (0..n).map(|i| m[i * n + i]).sum::<f64>() / n as f64).collect();
        check("diag_mean", &down(&g, &mean, batch), &want, F32_RED);
        let mut db = g.upload(&host, "A").unwrap();
        cholesky::add_diag(&g, &mut db, shape, 0.25).unwrap();
        let scale = g.upload(&vec![2.0f32; batch], "scale").unwrap();
        cholesky::add_diag_scaled(&g, &mut db, shape, 0.125, &scale).unwrap();
        let got = down(&g, &db, batch * n * n);
        let want: Vec<f64> =
            host.iter().enumerate().map(|(e, &v)| if (e % (n * n)) / n == e % n { v as f64 + 0.5 } else { v as f64 }).collect();
        check("add_diag", &got, &want, F32_EW);
        let rhs = 7;
        for trailing in [cholesky::Trailing::Kernel, cholesky::Trailing::Cublas] {
            let mut a = g.upload(&host, "A").unwrap();
            let mut info = g.upload(&vec![-5i32; batch], "info").unwrap();
            cholesky::factor(&g, &mut a, shape, &mut info, trailing).unwrap();
            assert!(cholesky::read_info(&g, &info, batch).unwrap().iter().all(|&v| v == 0), "{n} {trailing:?}");
            let got = down(&g, &a, batch * n * n);
            for (b, mat) in mats.iter().enumerate() {
                let l = chol_f64(mat, n);
                let (gl, wl): (Vec<f32>, Vec<f64>) =
                    (0..n).flat_map(|i| (0..=i).map(move |j| (i, j))).map(|(i, j)| (got[b * n * n + i * n + j], l[i * n + j])).unzip();
                check(&format!("L n {n} b {b} {trailing:?}"), &gl, &wl, (1e-4, 1e-3));
            }
            // solves: rows of B are right-hand sides
            let bh = randv(batch * rhs * n, 5 + n as u64, -1.0, 1.0);
            let mut db = g.upload(&bh, "B").unwrap();
            cholesky::solve_lower(&g, &a, shape, &mut db, rhs, n, rhs * n).unwrap();
            cholesky::solve_upper(&g, &a, shape, &mut db, rhs, n, rhs * n).unwrap();
            let got = down(&g, &db, batch * rhs * n);
            let mut want = Vec::new();
            for (b, mat) in mats.iter().enumerate() {
                let l = chol_f64(mat, n);
                for r in 0..rhs {
                    let off = (b * rhs + r) * n;
                    want.extend(solve_f64(&l, n, &f64v(&bh[off..off + n])));
                }
            }
            check(&format!("solve n {n} {trailing:?}"), &got, &want, (1e-4, 1e-3));
        }
        // cuSOLVER cross-check on the first matrix
        let mut a = g.upload(&host[..n * n], "A").unwrap();
        let mut pf = cholesky::Potrf::new(&g, &mut a, n).unwrap();
        pf.factor(&g, &mut a).unwrap();
        assert_eq!(g.download(&pf.info, 1, "info").unwrap()[0], 0);
        let got = down(&g, &a, n * n);
        let l = chol_f64(&mats[0], n);
        let (gl, wl): (Vec<f32>, Vec<f64>) =
            (0..n).flat_map(|i| (0..=i).map(move |j| (i, j))).map(|(i, j)| (got[i * n + j], l[i * n + j])).unzip();
        check(&format!("potrf L n {n}"), &gl, &wl, (1e-4, 1e-3));
    }
}

fn cholesky_detects_indefinite_and_escalates(g: Arc<Gpu>) {
    // batch [SPD, indefinite at pivot 40]: only the second fails, with LAPACK's info
    let n = 64;
    let good = spd(n, 3);
    let mut bad = spd(n, 4);
    bad[40 * n + 40] = -3.0;
    let host: Vec<f32> = good.iter().chain(&bad).map(|&v| v as f32).collect();
    for trailing in [cholesky::Trailing::Kernel, cholesky::Trailing::Cublas] {
        let mut a = g.upload(&host, "A").unwrap();
        let mut info = g.upload(&[7i32, 7], "info").unwrap();
        cholesky::factor(&g, &mut a, cholesky::Batch::dense(n, 2), &mut info, trailing).unwrap();
        let inf = cholesky::read_info(&g, &info, 2).unwrap();
        assert_eq!(inf[0], 0, "{trailing:?}");
        assert!(inf[1] >= 1 && inf[1] <= 41, "{trailing:?}: info {}", inf[1]);
    }
    // through the restoration, against the CPU's escalation (prune::restore tests' matrices)
    let w2 = randm(2, 3, 3);
    let mut h = Gram::zeros(3);
    h.data = vec![1.1, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0];
    assert!(restore::restore(&w2, &h, &[0, 1], &[2], 0.01).unwrap_err().contains("failed after 3"));
    for solver in [Solver::Kernels, Solver::KernelsCublasTrailing, Solver::Cusolver] {
        let err = grestore::restore(&g, &w2, &h, &[0, 1], &[2], 0.01, solver).unwrap_err();
        assert!(err.contains("failed after 3"), "{solver:?}: {err}");
    }
    let mut h2 = Gram::zeros(3);
    h2.data = vec![1.0, 0.0, 0.5, 0.0, -0.02, 0.1, 0.5, 0.1, 1.0];
    let cpu = restore::restore(&w2, &h2, &[0, 1], &[2], 0.01).unwrap();
    for solver in [Solver::Kernels, Solver::KernelsCublasTrailing, Solver::Cusolver] {
        let r = grestore::restore(&g, &w2, &h2, &[0, 1], &[2], 0.01, solver).unwrap();
        println!("{solver:?}: retries {} damp {} (cpu {} {})", r.retries, r.damp, cpu.retries, cpu.damp);
        assert!(r.retries >= 1 && r.damp > 0.01, "{solver:?}: {r:?}");
        assert_eq!((r.retries, r.damp), (cpu.retries, cpu.damp), "{solver:?}");
        assert!(rel_fro(&r.w2.data, &cpu.w2.data) <= 1e-3);
    }
    // the batched path escalates per matrix
    let probs = [
        grestore::Problem { w2: &w2, h: &h2, s: &[0, 1], p: &[2], damp: 0.01 },
        grestore::Problem { w2: &w2, h: &h, s: &[0, 1], p: &[2], damp: 0.01 },
    ];
    let out = grestore::restore_batch(&g, &probs, cholesky::Trailing::Kernel).unwrap();
    let r0 = out[0].as_ref().unwrap();
    assert_eq!((r0.retries, r0.damp), (cpu.retries, cpu.damp));
    assert!(out[1].as_ref().unwrap_err().contains("failed after 3"));
}

fn restore_matches_cpu(g: Arc<Gpu>) {
    for (t, n, out, seed) in [(400usize, 60usize, 24usize, 1u64), (3000, 300, 64, 2)] {
        let x = randm(t, n, seed);
        let w2 = randm(out, n, seed + 1);
        let mut h = Gram::zeros(n);
        h.accumulate(&x);
        let s: Vec<usize> = (0..n).filter(|i| i % 4 != 1).collect();
        let p = select::complement(&s, n);
        let cpu = restore::restore(&w2, &h, &s, &p, 0.01).unwrap();
        for solver in [Solver::Kernels, Solver::KernelsCublasTrailing, Solver::Cusolver] {
            let r = grestore::restore(&g, &w2, &h, &s, &p, 0.01, solver).unwrap();
            let e = rel_fro(&r.w2.data, &cpu.w2.data);
            println!("restore {out}x{n} {solver:?}: rel err {e:.2e}");
            assert!(e <= 1e-3, "{solver:?}: {e:.2e}");
            assert_eq!(r.retries, cpu.retries);
            assert_eq!(r.lambda, cpu.lambda, "λ is decided on the host exactly as on the CPU");
        }
        // the batch path (two problems of different sizes, one launch sequence) agrees
        let s2: Vec<usize> = (0..n).filter(|i| i % 3 != 0).collect();
        let p2 = select::complement(&s2, n);
        let cpu2 = restore::restore(&w2, &h, &s2, &p2, 0.05).unwrap();
        let probs = [
            grestore::Problem { w2: &w2, h: &h, s: &s, p: &p, damp: 0.01 },
            grestore::Problem { w2: &w2, h: &h, s: &s2, p: &p2, damp: 0.05 },
        ];
        let outb = grestore::restore_batch(&g, &probs, cholesky::Trailing::Kernel).unwrap();
        assert!(rel_fro(&outb[0].as_ref().unwrap().w2.data, &cpu.w2.data) <= 1e-3);
        assert!(rel_fro(&outb[1].as_ref().unwrap().w2.data, &cpu2.w2.data) <= 1e-3);
    }
    // P empty: plain gather
    let w2 = randm(4, 6, 9);
    let h = Gram { n: 6, data: spd(6, 9) };
    let r = grestore::restore(&g, &w2, &h, &[0, 1, 2, 3, 4, 5], &[], 0.01, Solver::Kernels).unwrap();
    assert_eq!(r.w2, w2);
}

fn stats_match_cpu(g: Arc<Gpu>) {
    let (t, n) = (1000usize, 96usize);
    let x = randm(t, n, 21);
    let want = PairStats::of(&x);
    let dx = g.upload(&x.data, "X").unwrap();
    let mut acc = stats::GramAccumulator::new(&g, n, 300).unwrap();
    let mut r0 = 0;
    while r0 < t {
        let r1 = (r0 + 300).min(t);
        acc.add(&g, &dx.slice(r0 * n..r1 * n), r1 - r0).unwrap();
        r0 = r1;
    }
    let got = acc.finish(&g).unwrap();
    assert_eq!(got.summary.tokens, t);
    let scale = want.h.diag().iter().cloned().fold(0.0, f64::max);
    let hg: Vec<f32> = got.download_h(&g).unwrap().data.iter().map(|&v| v as f32).collect();
    check("H (resident)", &hg, &want.h.data, (1e-5 * scale, 1e-5));
    let hd: Vec<f32> = got.summary.hdiag.iter().map(|&v| v as f32).collect();
    check("diag(H) (summary, fp64)", &hd, &want.h.diag(), (1e-5 * scale, 1e-5));
    let cs: Vec<f32> = got.summary.col_sum.iter().map(|&v| v as f32).collect();
    check("column sums", &cs, &want.col_sum, (1e-4, 1e-5));
    // the restoration's error terms: Σ a·b in fp64
    let (a, b) = (randv(5000, 22, -1.0, 1.0), randv(5000, 23, -1.0, 1.0));
    let want_dot: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let (da, db) = (g.upload(&a, "a").unwrap(), g.upload(&b, "b").unwrap());
    let got_dot = stats::dot(&g, &da, &db, a.len()).unwrap();
    assert!((got_dot - want_dot).abs() <= 1e-9 * want_dot.abs().max(1.0), "dot {got_dot} vs {want_dot}");
    // diag, symmetrize, f64→f32, sums of squares
    let h32: Vec<f32> = want.h.data.iter().map(|&v| v as f32).collect();
    let dh = g.upload(&h32, "H").unwrap();
    let mut dg = poison(&g, n);
    stats::diag(&g, &dh, n, n, &mut dg).unwrap();
    check("diag", &down(&g, &dg, n), &f64v(&want.h.diag().iter().map(|&v| v as f32).collect::<Vec<_>>()), F32_EXACT);
    let mut lower = h32.clone();
    for i in 0..n {
        for j in i + 1..n {
            lower[i * n + j] = f32::NAN;
        }
    }
    let mut dl = g.upload(&lower, "lower").unwrap();
    stats::symmetrize(&g, &mut dl, n, n, true).unwrap();
    check("symmetrize", &down(&g, &dl, n * n), &f64v(&h32), F32_EXACT);
    let d64 = g.upload(&want.h.data, "H f64").unwrap();
    let mut d32 = poison(&g, n * n);
    stats::f64_to_f32(&g, &d64, &mut d32, n * n).unwrap();
    check("f64_to_f32", &down(&g, &d32, n * n), &f64v(&h32), F32_EXACT);
    let a = randv(5000, 22, -1.0, 1.0);
    let b = randv(5000, 23, -1.0, 1.0);
    let (da, db) = (g.upload(&a, "a").unwrap(), g.upload(&b, "b").unwrap());
    let ss = stats::sum_sq_diff(&g, &da, Some(&db), 5000).unwrap();
    let want_ss: f64 = a.iter().zip(&b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    assert!((ss - want_ss).abs() <= 1e-6 * want_ss, "{ss} vs {want_ss}");
    let ss = stats::sum_sq_diff(&g, &da, None, 5000).unwrap();
    let want_ss: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum();
    assert!((ss - want_ss).abs() <= 1e-6 * want_ss);
    // the chunked accumulator agrees with one big syrk
    let mut hh = poison(&g, n * n);
    blas::syrk_xtx(&g, &dx, &mut hh, t, n, 0.0).unwrap();
    stats::symmetrize(&g, &mut hh, n, n, true).unwrap();
    check("syrk", &down(&g, &hh, n * n), &want.h.data, (1e-5 * scale, 1e-5));
}

fn config(json: serde_json::Value) -> ModelConfig {
    ModelConfig::from_json(json).unwrap()
}

fn rand_linear(out: usize, inp: usize, bias: bool, seed: u64) -> Linear {
    let mut w = randm(out, inp, seed);
    w.data.iter_mut().for_each(|v| *v *= 0.3);
    Linear { w, b: bias.then(|| randv(out, seed + 1, -0.1, 0.1)) }
}

/// A random dense layer with every tensor the family's description gives it (per-projection
/// biases, q/k norms, post-norms, gate); `(1+w)` norm weights are offsets around 0.
fn rand_layer(cfg: &ModelConfig, seed: u64) -> LayerWeights {
    let a = cfg.arch();
    let (d, hd, b) = (cfg.hidden, cfg.head_dim, cfg.bias);
    let layer_norm = a.norm == NormKind::LayerNorm;
    let (lo, hi) = if a.norm == NormKind::RmsNormPlusOne { (-0.3, 0.3) } else { (0.8, 1.2) };
    let norm_of = |n: usize, s| Norm { w: randv(n, s, lo, hi), b: layer_norm.then(|| randv(n, s + 1, -0.1, 0.1)) };
    let norm = |s| norm_of(d, s);
    LayerWeights {
        index: 0,
        attn_norm: norm(seed),
        q: rand_linear(cfg.heads * hd, d, b.q, seed + 2),
        k: rand_linear(cfg.kv_heads * hd, d, b.k, seed + 4),
        v: rand_linear(cfg.kv_heads * hd, d, b.v, seed + 6),
        o: rand_linear(d, cfg.heads * hd, b.o, seed + 8),
        v_units: (0..cfg.v_width()).collect(),
        q_norm: a.qk_norm.then(|| norm_of(hd, seed + 18)),
        k_norm: a.qk_norm.then(|| norm_of(hd, seed + 20)),
        post_attn_norm: a.post_norms.then(|| norm(seed + 22)),
        mlp_norm: norm(seed + 10),
        up: rand_linear(cfg.ffn, d, cfg.mlp_bias, seed + 12),
        gate: a.gated().then(|| rand_linear(cfg.ffn, d, cfg.mlp_bias, seed + 14)),
        down: rand_linear(d, cfg.ffn, b.down, seed + 16),
        post_mlp_norm: a.post_norms.then(|| norm(seed + 24)),
    }
}

fn test_configs() -> Vec<(&'static str, ModelConfig)> {
    vec![
        (
            "opt",
            config(serde_json::json!({"model_type":"opt","hidden_size":64,"num_hidden_layers":1,"num_attention_heads":4,
                "ffn_dim":96,"vocab_size":50,"max_position_embeddings":64,"do_layer_norm_before":true,"word_embed_proj_dim":64})),
        ),
        (
            "llama-gqa",
            config(serde_json::json!({"model_type":"llama","hidden_size":64,"num_hidden_layers":1,"num_attention_heads":4,
                "num_key_value_heads":2,"head_dim":32,"intermediate_size":80,"vocab_size":50,"rope_theta":10000.0,
                "attention_bias":true,"mlp_bias":true})),
        ),
        (
            "llama-mqa",
            config(serde_json::json!({"model_type":"llama","hidden_size":64,"num_hidden_layers":1,"num_attention_heads":8,
                "num_key_value_heads":1,"head_dim":16,"intermediate_size":72,"vocab_size":50})),
        ),
        // q/k/v biases without an o_proj bias, every layer sliding with a window shorter than the windows
        (
            "qwen2-window",
            config(serde_json::json!({"model_type":"qwen2","hidden_size":64,"num_hidden_layers":1,"num_attention_heads":4,
                "num_key_value_heads":2,"head_dim":16,"intermediate_size":80,"vocab_size":50,"use_sliding_window":true,
                "sliding_window":7,"max_window_layers":0})),
        ),
        (
            "qwen3",
            config(serde_json::json!({"model_type":"qwen3","hidden_size":64,"num_hidden_layers":1,"num_attention_heads":4,
                "num_key_value_heads":2,"head_dim":16,"intermediate_size":48,"vocab_size":50})),
        ),
        // (1+w) norms, q/k norms, post-norms, GELU-tanh GLU, a sliding layer then a global one with
        // their own rope bases, query_pre_attn_scalar
        (
            "gemma3",
            config(serde_json::json!({"model_type":"gemma3_text","hidden_size":64,"num_hidden_layers":2,"num_attention_heads":4,
                "num_key_value_heads":1,"head_dim":32,"intermediate_size":72,"vocab_size":50,"sliding_window":5,
                "layer_types":["sliding_attention","full_attention"],"query_pre_attn_scalar":24,"rope_theta":1000000.0,
                "rope_local_base_freq":10000.0,"final_logit_softcapping":30.0})),
        ),
    ]
}

fn forward_kernels_match_cpu(g: Arc<Gpu>) {
    let (rows, d) = (37usize, 300usize);
    let x = Mat::from_vec(rows, d, randv(rows * d, 31, -2.0, 3.0));
    let dx = g.upload(&x.data, "x").unwrap();
    let (gamma, beta) = (randv(d, 32, 0.5, 1.5), randv(d, 33, -0.5, 0.5));
    let (dgm, dbt) = (g.upload(&gamma, "gamma").unwrap(), g.upload(&beta, "beta").unwrap());
    let ln = forward::norm(&x, &Norm { w: gamma.clone(), b: Some(beta.clone()) }, 1e-5);
    let mut y = poison(&g, rows * d);
    fw::layernorm(&g, &dx, Some(&dgm), Some(&dbt), &mut y, rows, d, 1e-5).unwrap();
    check("layernorm", &down(&g, &y, rows * d), &f64v(&ln.data), F32_RED);
    let rms = forward::norm(&x, &Norm { w: gamma.clone(), b: None }, 1e-6);
    let mut y = poison(&g, rows * d);
    fw::rmsnorm(&g, &dx, Some(&dgm), &mut y, rows, d, 1e-6).unwrap();
    check("rmsnorm", &down(&g, &y, rows * d), &f64v(&rms.data), F32_RED);
    let offsets = randv(d, 39, -0.5, 0.5);
    let dof = g.upload(&offsets, "offsets").unwrap();
    let rms1 = forward::norm_as(&x, &Norm { w: offsets.clone(), b: None }, NormKind::RmsNormPlusOne, 1e-6);
    let mut y = poison(&g, rows * d);
    fw::rmsnorm_plus_one(&g, &dx, Some(&dof), &mut y, rows, d, 1e-6).unwrap();
    check("rmsnorm (1+w)", &down(&g, &y, rows * d), &f64v(&rms1.data), F32_RED);
    // in place over rows of 20 (the per-head q/k norms), both kinds
    let hx = Mat::from_vec(rows * d / 20, 20, x.data.clone());
    for (plus_one, kind) in [(false, NormKind::RmsNorm), (true, NormKind::RmsNormPlusOne)] {
        let want = forward::norm_as(&hx, &Norm { w: offsets[..20].to_vec(), b: None }, kind, 1e-6);
        let mut y = g.upload(&x.data, "x in place").unwrap();
        fw::rmsnorm_in_place(&g, plus_one, &dof, &mut y, rows * d / 20, 20, 1e-6).unwrap();
        check(&format!("{kind:?} in place"), &down(&g, &y, rows * d), &f64v(&want.data), F32_RED);
    }
    // rotary, with the host's table and with the kernel's own frequencies
    let (heads, hd, seqlen, theta) = (3usize, 16usize, 12usize, 10000.0f32);
    let q = Mat::from_vec(36, heads * hd, randv(36 * heads * hd, 34, -1.0, 1.0));
    let mut want = q.clone();
    forward::rope(&mut want, heads, hd, theta, seqlen);
    let table: Vec<f32> = (0..hd / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / hd as f32)).collect();
    let dt = g.upload(&table, "inv_freq").unwrap();
    for with_table in [true, false] {
        let mut dq = g.upload(&q.data, "q").unwrap();
        let t = with_table.then_some(&dt as &dyn fw::DevicePtrF32);
        fw::rope(&g, &mut dq, 36, heads, hd, heads * hd, seqlen, theta, t).unwrap();
        check(&format!("rope (table {with_table})"), &down(&g, &dq, q.data.len()), &f64v(&want.data), F32_RED);
    }
    // elementwise
    let n = 5000;
    let (a, b) = (randv(n, 35, -4.0, 4.0), randv(n, 36, -4.0, 4.0));
    let (da, db) = (g.upload(&a, "a").unwrap(), g.upload(&b, "b").unwrap());
    let mut r = g.upload(&a, "relu").unwrap();
    fw::relu(&g, &mut r, n).unwrap();
    check("relu", &down(&g, &r, n), &a.iter().map(|&v| v.max(0.0) as f64).collect::<Vec<_>>(), F32_EXACT);
    let mut o = poison(&g, n);
    fw::silu_mul(&g, &da, &db, &mut o, n).unwrap();
    let want: Vec<f64> = a.iter().zip(&b).map(|(&gv, &u)| (u * (gv / (1.0 + (-gv).exp()))) as f64).collect();
    check("silu_mul", &down(&g, &o, n), &want, F32_EW);
    let mut u = g.upload(&b, "up").unwrap();
    fw::silu_mul_into_up(&g, &da, &mut u, n).unwrap();
    check("silu_mul in place", &down(&g, &u, n), &want, F32_EW);
    let want: Vec<f64> = a.iter().zip(&b).map(|(&gv, &u)| (u * forward::gelu_tanh(gv)) as f64).collect();
    let mut o = poison(&g, n);
    fw::gelu_tanh_mul(&g, &da, &db, &mut o, n).unwrap();
    check("gelu_tanh_mul", &down(&g, &o, n), &want, F32_EW);
    let mut u = g.upload(&b, "up").unwrap();
    fw::gelu_tanh_mul_into_up(&g, &da, &mut u, n).unwrap();
    check("gelu_tanh_mul in place", &down(&g, &u, n), &want, F32_EW);
    let mut o = poison(&g, n);
    fw::add(&g, &da, &db, &mut o, n).unwrap();
    check("add", &down(&g, &o, n), &a.iter().zip(&b).map(|(x, y)| (x + y) as f64).collect::<Vec<_>>(), F32_EXACT);
    let mut acc = g.upload(&a, "acc").unwrap();
    fw::add_assign(&g, &mut acc, &db, n).unwrap();
    check("add in place", &down(&g, &acc, n), &a.iter().zip(&b).map(|(x, y)| (x + y) as f64).collect::<Vec<_>>(), F32_EXACT);
    let mut xb = g.upload(&x.data, "x").unwrap();
    fw::add_bias(&g, &mut xb, &dbt, rows, d).unwrap();
    let want: Vec<f64> = x.data.iter().enumerate().map(|(i, &v)| (v + beta[i % d]) as f64).collect();
    check("add_bias", &down(&g, &xb, rows * d), &want, F32_EXACT);
    let mut hb = poison_bf16(&g, n);
    fw::to_bf16(&g, &da, &mut hb, n).unwrap();
    let got: Vec<Bf16> = g.download(&hb, n, "bf16").unwrap();
    assert!(got.iter().zip(&a).all(|(h, &v)| *h == Bf16::from_f32(v)), "f32 → bf16 rounds to nearest even");
    let mut back = poison(&g, n);
    fw::from_bf16(&g, &hb, &mut back, n).unwrap();
    check("bf16 → f32", &down(&g, &back, n), &got.iter().map(|v| v.to_f32() as f64).collect::<Vec<_>>(), F32_EXACT);
    assert!(fw::all_finite(&g, &da, n).unwrap());
    let mut bad = a.clone();
    bad[4321] = f32::INFINITY;
    assert!(!fw::all_finite(&g, &g.upload(&bad, "bad").unwrap(), n).unwrap());
    let mut flag = g.zeros::<i32>(1, "flag").unwrap();
    let badb: Vec<Bf16> = bad.iter().map(|&v| Bf16::from_f32(v)).collect();
    fw::check_finite_bf16(&g, &g.upload(&badb, "bad bf16").unwrap(), n, &mut flag).unwrap();
    assert_eq!(g.download(&flag, 1, "flag").unwrap()[0], 1);
    // embeddings (+ OPT positions, offset 2)
    let (vocab, dd, seq) = (50usize, 40usize, 8usize);
    let cfg = test_configs().remove(0).1;
    let emb = randm(vocab, dd, 37);
    let pos = randm(seq + 2, dd, 38);
    let ids: Vec<u32> = (0..3 * seq).map(|i| ((i * 7 + 3) % vocab) as u32).collect();
    let cfg40 = ModelConfig { hidden: dd, ..cfg };
    let want = forward::embed(&cfg40, &emb, Some(&pos), &ids, seq);
    let dids = g.upload(&ids.iter().map(|&i| i as i32).collect::<Vec<_>>(), "ids").unwrap();
    let mut out = poison(&g, ids.len() * dd);
    fw::embed_gather(&g, &dids, &g.upload(&emb.data, "emb").unwrap(), &mut out, ids.len(), vocab, dd).unwrap();
    fw::embed_add_positions(&g, &mut out, &g.upload(&pos.data, "pos").unwrap(), ids.len(), dd, seq + 2, seq, 2).unwrap();
    check("embed + positions", &down(&g, &out, ids.len() * dd), &f64v(&want.data), F32_EW);
    let embb: Vec<Bf16> = emb.data.iter().map(|&v| Bf16::from_f32(v)).collect();
    let mut out = poison(&g, ids.len() * dd);
    fw::embed_gather_bf16(&g, &dids, &g.upload(&embb, "emb bf16").unwrap(), &mut out, ids.len(), vocab, dd).unwrap();
    let embr = &embb;
    let want: Vec<f64> = ids.iter().flat_map(|&i| (0..dd).map(move |c| embr[i as usize * dd + c].to_f32() as f64)).collect();
    check("embed bf16", &down(&g, &out, ids.len() * dd), &want, F32_EXACT);
}

/// Both halves of a layer and its residual branches, per test config and per layer (Gemma-3's
/// sliding and global layers differ in window and rope base), against the CPU forward.
fn attention_and_mlp_halves_match_cpu(g: Arc<Gpu>) {
    for (name, cfg) in test_configs() {
        let (seqlen, nwin) = (24usize, 3usize);
        for l in 0..cfg.layers {
            let name = format!("{name} layer {l}");
            let lw = LayerWeights { index: l, ..rand_layer(&cfg, 40) };
            let x = Mat::from_vec(nwin * seqlen, cfg.hidden, randv(nwin * seqlen * cfg.hidden, 41, -1.0, 1.0));
            let want = forward::attn_context(&cfg, &lw, &x, seqlen);
            let mut cache = fasp_engine::backend::cuda::weights::TensorCache::default();
            let w = layer::AttnWeights {
                index: l,
                norm: cache.norm(&g, &lw.attn_norm, "n").unwrap(),
                q: cache.linear(&g, &lw.q, "q").unwrap(),
                k: cache.linear(&g, &lw.k, "k").unwrap(),
                v: cache.linear(&g, &lw.v, "v").unwrap(),
                q_norm: lw.q_norm.as_ref().map(|n| cache.norm(&g, n, "q_norm").unwrap()),
                k_norm: lw.k_norm.as_ref().map(|n| cache.norm(&g, n, "k_norm").unwrap()),
            };
            let inv = g.upload(&layer::inv_freq(&cfg, l), "inv_freq").unwrap();
            let dx = g.upload(&x.data, "x").unwrap();
            // sub-batches of 1 and of all windows
            for attn_w in [1, nwin] {
                let mut sc = layer::AttnScratch::new(&g, &cfg, seqlen, nwin, attn_w).unwrap();
                let mut ctx = poison(&g, want.data.len());
                layer::attn_context(&g, &cfg, &w, Some(&inv), &dx, nwin, seqlen, &mut sc, &mut ctx).unwrap();
                let got = down(&g, &ctx, want.data.len());
                check(&format!("{name} attention context (sub-batch {attn_w})"), &got, &f64v(&want.data), F32_RED);
            }
            let act = forward::mlp_act(&cfg, &lw, &x);
            let mw = layer::MlpWeights {
                norm: cache.norm(&g, &lw.mlp_norm, "n").unwrap(),
                up: cache.linear(&g, &lw.up, "up").unwrap(),
                gate: lw.gate.as_ref().map(|gw| cache.linear(&g, gw, "gate").unwrap()),
            };
            let mut sc = layer::MlpScratch::new(&g, &cfg, seqlen, nwin, cfg.ffn, mw.gate.is_some()).unwrap();
            g.upload_into(&vec![f32::NAN; act.data.len()], &mut sc.act, "poison").unwrap();
            layer::mlp_act(&g, &cfg, &mw, &dx, nwin * seqlen, &mut sc).unwrap();
            check(&format!("{name} MLP activation"), &down(&g, &sc.act, act.data.len()), &f64v(&act.data), F32_RED);
            // the MLP's residual branch: down_proj (+ bias), the post-norm where the family has one, the add
            let want = forward::mlp_residual(&cfg, &lw, &x, &act);
            let dn = cache.linear(&g, &lw.down, "down").unwrap();
            let post = lw.post_mlp_norm.as_ref().map(|n| cache.norm(&g, n, "post").unwrap());
            let mut h = g.upload(&x.data, "h").unwrap();
            let dact = g.upload(&act.data, "act").unwrap();
            layer::linear(&g, &dn, &dact, &mut sc.tmp, nwin * seqlen).unwrap();
            layer::residual(&g, &cfg, post.as_ref(), &mut sc, &mut h, nwin * seqlen).unwrap();
            check(&format!("{name} MLP residual"), &down(&g, &h, want.data.len()), &f64v(&want.data), F32_RED);
        }
    }
}

/// Summaries of the same statistics on two backends agree.
fn check_summary(what: &str, got: &StatsSummary, want: &StatsSummary) {
    assert_eq!(got.tokens, want.tokens, "{what}: tokens");
    let scale = want.hdiag.iter().cloned().fold(0.0, f64::max);
    check(&format!("{what} diag(H)"), &got.hdiag.iter().map(|&v| v as f32).collect::<Vec<_>>(), &want.hdiag, (1e-5 * scale, 1e-4));
    check(&format!("{what} column sums"), &got.col_sum.iter().map(|&v| v as f32).collect::<Vec<_>>(), &want.col_sum, (1e-4, 1e-4));
}

/// The numeric contract of a pair pruned on the device against the CPU backend (docs/gpu.md):
/// the same kept units and columns, the same λ (to the summary's rounding), damping and retries,
/// `W2'` within 1e-3 relative (Frobenius), and reconstruction errors within 1e-2 of the error
/// without restoration.
fn check_pair(what: &str, got: &PrunedPair, want: &PrunedPair) {
    assert_eq!(got.kept_units, want.kept_units, "{what}: kept units");
    assert_eq!(got.cols, want.cols, "{what}: kept columns");
    assert_eq!((got.retries, got.damp), (want.retries, want.damp), "{what}: retries, damp");
    match (got.lambda, want.lambda) {
        (Some(x), Some(y)) => assert!((x - y).abs() <= 1e-5 * y.abs(), "{what}: λ {x} vs {y}"),
        (x, y) => assert_eq!(x, y, "{what}: λ"),
    }
    assert_eq!((got.w2.rows, got.w2.cols), (want.w2.rows, want.w2.cols), "{what}: W2' shape");
    let e = rel_fro(&got.w2.data, &want.w2.data);
    assert!(e <= 1e-3, "{what}: W2' rel err {e:.2e}");
    let (e0, e0w) = (got.err2_no_restore.sqrt(), want.err2_no_restore.sqrt());
    assert!((e0 - e0w).abs() <= 1e-4 * e0w + 1e-9, "{what}: error without restoration {e0} vs {e0w}");
    let (er, erw) = (got.err2.sqrt(), want.err2.sqrt());
    assert!((er - erw).abs() <= 1e-2 * e0w + 1e-9, "{what}: reconstruction error {er} vs {erw} (no restore {e0w})");
    assert!(erw <= e0w * (1.0 + 1e-9), "{what}: the CPU's restoration does not help: {erw} vs {e0w}");
    println!(
        "{what}: kept {} of {} units, err {er:.6e} (cpu {erw:.6e}, no restore {e0w:.6e}), W2' rel {e:.1e}",
        got.kept_units.len(),
        want.kept_units.len().max(1)
    );
}

/// A job keeping 3/4 of the units: FASP with restoration, or wanda-sp's host scores without.
fn test_job<'a>(layer: usize, fasp: bool, w2: &'a Linear, units: &'a [Vec<usize>], summary: &StatsSummary) -> PairJob<'a> {
    PairJob {
        layer,
        w2,
        unit_cols: units,
        k: units.len() * 3 / 4,
        scoring: if fasp { Scoring::Fasp } else { Scoring::Columns(Method::WandaSp.column_scores(&w2.w, summary, 0)) },
        restore: fasp,
        damp: 0.01,
    }
}

/// The family fixtures of docs/spec.md §11 (as tests/families.rs): Llama-3 rope scaling, Mistral's
/// sliding window (shorter than the sequence), Qwen2's q/k/v biases, Qwen3's q/k norms, Gemma-3.
const FAMILIES: &[&str] = &["llama3", "mistral", "qwen2", "qwen3", "gemma3"];

/// The dense calibration forward on the device (every pair skipped, the hidden states chunked one
/// window at a time) against the CPU forward on every family fixture: the hidden states after each
/// layer, and the logits of the device's last hidden states (final norm, head and soft-cap are host
/// work, as in the pipeline) against the CPU's evaluation forward (which embeds with the scale).
fn dense_forward_matches_cpu(g: Arc<Gpu>) {
    for name in FAMILIES {
        let model = Model::open(&fixture(name)).unwrap();
        let cfg = &model.cfg;
        let (shape, ids) = reference_ids(name, "calib_ids");
        let seqlen = shape[1];
        let inps = forward::embed(cfg, &model.embedding().unwrap(), model.positions().unwrap().as_ref(), &ids, seqlen);
        let mut gb = CudaBackend::with_gpu(g.clone()).unwrap();
        gb.chunk_tokens = seqlen;
        let mut h = inps.clone();
        let mut input = gb.begin(inps, seqlen).unwrap();
        let mut worst = 0.0f64;
        for l in 0..cfg.layers {
            let lw = model.layer(l).unwrap();
            let st = gb.attn_stats(input, cfg, &lw).unwrap();
            let done = gb.skip_attn(st);
            let ctx_cols: Vec<usize> = (0..cfg.ctx_width()).collect();
            let st = gb.mlp_stats(done, cfg, &lw, &ctx_cols).unwrap();
            let done = gb.skip_mlp(st);
            let mlp_cols: Vec<usize> = (0..lw.ffn()).collect();
            input = gb.advance(done, cfg, &lw, &mlp_cols).unwrap();
            h = forward::layer(cfg, &lw, &h, seqlen);
            let got = gb.hidden().unwrap().unwrap();
            worst = worst.max(rel_max_err(&got.data, &h.data));
            check(&format!("{name} l{l} dense layer output"), &got.data, &f64v(&h.data), (1e-3, 1e-3));
        }
        let _ = input;
        let last = gb.hidden().unwrap().unwrap();
        let got = forward::logits(cfg, &model.final_norm().unwrap(), &model.lm_head().unwrap(), &last);
        let want = fasp_engine::eval::logits(&model, &ids, seqlen).unwrap();
        let e = rel_max_err(&got.data, &want.data);
        check(&format!("{name} logits"), &got.data, &f64v(&want.data), (1e-3, 1e-3));
        println!("{name}: dense device forward vs CPU: layer outputs max|Δ|/max|ref| ≤ {worst:.2e}, logits {e:.2e}");
    }
}

/// Every layer of each fixture through both backends step by step (the seam's typed order), with
/// the pairs pruned by each backend on its own statistics: FASP with restoration on even layers,
/// host scores (wanda-sp's, from the summary) without restoration on odd ones. Each backend goes
/// on with its own pruned weights; hidden states are compared after every layer.
fn backend_steps_match_cpu(g: Arc<Gpu>) {
    // (the family fixtures: `dense_forward_matches_cpu` and `families_prune_matches_cpu`)
    for name in MODELS {
        let model = Model::open(&fixture(name)).unwrap();
        let cfg = &model.cfg;
        let (shape, ids) = reference_ids(name, "calib_ids");
        let seqlen = shape[1];
        let inps = forward::embed(cfg, &model.embedding().unwrap(), model.positions().unwrap().as_ref(), &ids, seqlen);
        let mut cpu = CpuBackend::new();
        let mut gb = CudaBackend::with_gpu(g.clone()).unwrap();
        gb.chunk_tokens = seqlen; // one window per chunk: exercises the chunking
        let mut ic = cpu.begin(inps.clone(), seqlen).unwrap();
        let mut ig = gb.begin(inps, seqlen).unwrap();
        let attn_units: Vec<Vec<usize>> = (0..cfg.v_width()).map(|u| attn_unit_columns(cfg, u)).collect();
        for l in 0..cfg.layers {
            let lw = model.layer(l).unwrap();
            if l + 1 < cfg.layers {
                gb.prefetch(&model.layer(l + 1).unwrap()).unwrap();
            }
            let fasp = l % 2 == 0;
            let (sc, sg) = (cpu.attn_stats(ic, cfg, &lw).unwrap(), gb.attn_stats(ig, cfg, &lw).unwrap());
            check_summary(&format!("{name} l{l} attn"), &sg.summary, &sc.summary);
            let jc = test_job(l, fasp, &lw.o, &attn_units, &sc.summary);
            let (pc, pg) = (cpu.prune_attn(sc, &jc).unwrap(), gb.prune_attn(sg, &jc).unwrap());
            check_pair(&format!("{name} l{l} attn"), &pg.pair, &pc.pair);
            let ctx_cols = pc.pair.cols.clone();
            let with_o = |p: PrunedPair| LayerWeights { o: Linear { w: p.w2, b: lw.o.b.clone() }, ..lw.clone() };
            let (plc, plg) = (with_o(pc.pair), with_o(pg.pair));
            let (sc, sg) = (cpu.mlp_stats(pc.done, cfg, &plc, &ctx_cols).unwrap(), gb.mlp_stats(pg.done, cfg, &plg, &ctx_cols).unwrap());
            check_summary(&format!("{name} l{l} mlp"), &sg.summary, &sc.summary);
            let mlp_units: Vec<Vec<usize>> = (0..lw.ffn()).map(|j| vec![j]).collect();
            let jc = test_job(l, fasp, &lw.down, &mlp_units, &sc.summary);
            let (pc, pg) = (cpu.prune_mlp(sc, &jc).unwrap(), gb.prune_mlp(sg, &jc).unwrap());
            check_pair(&format!("{name} l{l} mlp"), &pg.pair, &pc.pair);
            let kept = pc.pair.cols.clone();
            let rows = |l: &Linear| Linear { w: l.w.gather_rows(&kept), b: l.b.as_ref().map(|b| kept.iter().map(|&r| b[r]).collect()) };
            let with_down = |pl: LayerWeights, p: PrunedPair| LayerWeights {
                up: rows(&pl.up),
                gate: pl.gate.as_ref().map(rows),
                down: Linear { w: p.w2, b: pl.down.b.clone() },
                ..pl
            };
            let (alc, alg) = (with_down(plc, pc.pair), with_down(plg, pg.pair));
            ic = cpu.advance(pc.done, cfg, &alc, &kept).unwrap();
            ig = gb.advance(pg.done, cfg, &alg, &kept).unwrap();
            let (a, b) = (cpu.hidden().unwrap().clone(), gb.hidden().unwrap().unwrap());
            // each backend runs on with its own W2' (within 1e-3 of the other's)
            check(&format!("{name} l{l} layer output"), &b.data, &f64v(&a.data), (1e-3, 1e-3));
        }
        let _ = (ic, ig);
    }
}

/// The pipeline's selection (radix select on fp64) is exactly the CPU's, ties, ±0 and near-ties
/// below f32 resolution included, for small and large n and every edge k.
fn topk_radix_is_exact_against_cpu(g: Arc<Gpu>) {
    let mut r = rng(77);
    let cases: Vec<(Vec<f64>, &str)> = vec![
        // coarse values: many exact ties
        ((0..5000).map(|_| (r.random_range(0..20) as f64) * 0.5).collect(), "ties"),
        // values that differ only below f32 resolution: f32 rounding would merge them
        ((0..3000).map(|i| 1.0 + (i % 97) as f64 * 1e-12).collect(), "sub-f32 gaps"),
        // signed zeros and negatives (total order: -0.0 < +0.0)
        (
            (0..2000)
                .map(|i| match i % 4 {
                    0 => 0.0,
                    1 => -0.0,
                    2 => -(i as f64),
                    _ => i as f64 * 1e-3,
                })
                .collect(),
            "±0",
        ),
        // large n, continuous
        ((0..70_000).map(|_| r.random_range(0.0..1.0)).collect(), "large"),
        (vec![3.0], "single"),
    ];
    for (scores, what) in &cases {
        let n = scores.len();
        for k in [0, 1, n / 3, n / 2, n.saturating_sub(1), n] {
            let want = select::top_k(scores, k).unwrap();
            let got = topk::top_k_f64(&g, scores, k).unwrap();
            assert_eq!(got, want, "{what}: n {n} k {k}");
        }
    }
    assert!(topk::top_k_f64(&g, &[1.0, f64::NAN], 1).unwrap_err().contains("non-finite"));
}

/// Units in one kept set and not the other (the symmetric difference over two).
fn units_differ(a: &[usize], b: &[usize]) -> usize {
    let (sa, sb): (std::collections::BTreeSet<_>, std::collections::BTreeSet<_>) = (a.iter().collect(), b.iter().collect());
    sa.symmetric_difference(&sb).count() / 2
}

fn whole_prune_matches_cpu(g: Arc<Gpu>) {
    println!("{:<10} {:>6} {:>12} {:>12} {:>12} {:>12}", "fixture", "differ", "max rel W", "ppl cpu", "ppl cuda", "ppl rel");
    for name in MODELS {
        let dir = tempfile::tempdir().unwrap();
        let run = |device: Device, sub: &str| {
            let mut j = job(name, &dir.path().join(sub), 0.25);
            j.device = device;
            j.eval = Some(EvalSpec { path: fixture("eval.txt"), seqlen: 16, max_windows: None, dense: false });
            job::run_prune(&j).unwrap()
        };
        let cpu = run(Device::Cpu, "cpu");
        let (device, label) = match g.kind() {
            DeviceKind::Cuda => (Device::Cuda, "cuda"),
            DeviceKind::Emu => (Device::Emu, "emu"),
        };
        let gpu_run = run(device, "cuda");
        assert!(gpu_run.report.backend.starts_with(label), "{}", gpu_run.report.backend);
        let (mc, mg) = (Model::open(&dir.path().join("cpu")).unwrap(), Model::open(&dir.path().join("cuda")).unwrap());
        let mut differ = 0usize;
        let mut total = 0usize;
        let mut max_rel = 0.0f64;
        for (l, (rc, rg)) in cpu.report.layers.iter().zip(&gpu_run.report.layers).enumerate() {
            let da = units_differ(&rc.attn.kept_units, &rg.attn.kept_units);
            let dm = units_differ(&rc.mlp.kept_units, &rg.mlp.kept_units);
            differ += da + dm;
            total += rc.attn.units + rc.mlp.units;
            for (pair, a, b, d) in [("attn", &rc.attn, &rg.attn, da), ("mlp", &rc.mlp, &rg.mlp, dm)] {
                if d != 0 {
                    // a near tie moved a unit: λ = damp·mean(diag H[S,S]) is over another S
                    continue;
                }
                if let (Some(x), Some(y)) = (a.lambda, b.lambda) {
                    assert!((x - y).abs() <= 1e-4 * x.abs(), "{name} l{l} {pair} λ {x} vs {y}");
                }
                assert_eq!(a.cholesky_retries, b.cholesky_retries, "{name} l{l} {pair} retries");
            }
            let (lc, lg) = (mc.layer(l).unwrap(), mg.layer(l).unwrap());
            if da == 0 {
                let e = rel_fro(&lg.o.w.data, &lc.o.w.data);
                max_rel = max_rel.max(e);
                assert!(e <= 1e-3, "{name} l{l} o_proj restored rel err {e:.2e}");
            }
            if dm == 0 {
                let e = rel_fro(&lg.down.w.data, &lc.down.w.data);
                max_rel = max_rel.max(e);
                assert!(e <= 1e-3, "{name} l{l} down restored rel err {e:.2e}");
            }
        }
        let (pc, pg) = (cpu.ppl_pruned.as_ref().unwrap().ppl, gpu_run.ppl_pruned.as_ref().unwrap().ppl);
        let rel = (pg - pc).abs() / pc;
        println!("{name:<10} {differ:>6} {max_rel:>12.2e} {pc:>12.6} {pg:>12.6} {rel:>12.2e}");
        println!("{name}: {differ} of {total} units differ between the CUDA and CPU kept sets");
        assert!(differ * 100 <= total, "{name}: {differ} of {total} units differ");
        assert!(rel <= 1e-3, "{name}: perplexity {pg} (cuda) vs {pc} (cpu)");
    }
}

/// `prune` on the device against the CPU backend on every family fixture, for FASP and for FLAP
/// (whose compensation adds the down_proj (and, where whole heads go, o_proj) biases these
/// families lack, so the device runs layers with biases the family has no switch for): identical kept sets, the same λ and retries, restored
/// weights and compensation biases within 1e-3 relative, pruned perplexity within 0.1%.
fn families_prune_matches_cpu(g: Arc<Gpu>) {
    let (device, label) = match g.kind() {
        DeviceKind::Cuda => (Device::Cuda, "cuda"),
        DeviceKind::Emu => (Device::Emu, "emu"),
    };
    for name in FAMILIES {
        for method in [Method::Fasp, Method::Flap] {
            let what = format!("{name} {}", method.name());
            let dir = tempfile::tempdir().unwrap();
            let run = |device: Device, sub: &str| {
                let mut j = job(name, &dir.path().join(sub), 0.25);
                j.device = device;
                j.prune.method = method;
                j.eval = Some(EvalSpec { path: fixture("eval.txt"), seqlen: 16, max_windows: Some(4), dense: false });
                job::run_prune(&j).unwrap_or_else(|e| panic!("{what} on {sub}: {e}"))
            };
            let (cpu, dev) = (run(Device::Cpu, "cpu"), run(device, "dev"));
            assert!(dev.report.backend.starts_with(label), "{}", dev.report.backend);
            let (mc, mg) = (Model::open(&dir.path().join("cpu")).unwrap(), Model::open(&dir.path().join("dev")).unwrap());
            let mut max_rel = 0.0f64;
            for (l, (rc, rg)) in cpu.report.layers.iter().zip(&dev.report.layers).enumerate() {
                for (pair, a, b) in [("attn", &rc.attn, &rg.attn), ("mlp", &rc.mlp, &rg.mlp)] {
                    assert_eq!(a.kept_units, b.kept_units, "{what} l{l} {pair}: kept units");
                    if let (Some(x), Some(y)) = (a.lambda, b.lambda) {
                        assert!((x - y).abs() <= 1e-4 * x.abs(), "{what} l{l} {pair} λ {x} vs {y}");
                    }
                    assert_eq!(a.cholesky_retries, b.cholesky_retries, "{what} l{l} {pair} retries");
                }
                let (lc, lg) = (mc.layer(l).unwrap(), mg.layer(l).unwrap());
                for (t, c, d) in [("o_proj", &lc.o, &lg.o), ("down_proj", &lc.down, &lg.down)] {
                    let e = rel_fro(&d.w.data, &c.w.data);
                    max_rel = max_rel.max(e);
                    assert!(e <= 1e-3, "{what} l{l} {t} restored rel err {e:.2e}");
                    assert_eq!(c.b.is_some(), d.b.is_some(), "{what} l{l} {t} bias");
                    if let (Some(bc), Some(bd)) = (&c.b, &d.b) {
                        let e = rel_fro(bd, bc);
                        max_rel = max_rel.max(e);
                        assert!(e <= 1e-3, "{what} l{l} {t} bias rel err {e:.2e}");
                    }
                }
            }
            if method == Method::Flap {
                // these families have no down_proj bias: the compensation adds one, and the device's
                // `advance` ran the layer with it
                assert!(mc.layer(0).unwrap().down.b.is_some(), "{what}: FLAP's compensation adds a down_proj bias");
            }
            let (pc, pg) = (cpu.ppl_pruned.as_ref().unwrap().ppl, dev.ppl_pruned.as_ref().unwrap().ppl);
            let rel = (pg - pc).abs() / pc;
            println!("{what}: kept sets identical, max rel W/b {max_rel:.2e}, ppl cpu {pc:.6} {label} {pg:.6} (rel {rel:.1e})");
            assert!(rel <= 1e-3, "{what}: perplexity {pg} ({label}) vs {pc} (cpu)");
        }
    }
}

#[test]
fn device_cuda_without_a_driver_fails_with_one_clear_line() {
    if cuda_usable().is_ok() {
        eprintln!("SKIP (a CUDA device is usable here): device_cuda_without_a_driver_fails_with_one_clear_line");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("opt-tiny");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_fasp-engine"))
        .args([
            "prune",
            "--model",
            model.to_str().unwrap(),
            "--out",
            dir.path().join("out").to_str().unwrap(),
            "--calib",
            model.join("calib_ids.npy").to_str().unwrap(),
            "--device",
            "cuda",
        ])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    println!("stderr: {stderr}");
    assert!(!o.status.success(), "--device cuda without a usable GPU must fail");
    assert_eq!(o.status.code(), Some(1), "a clean exit code, not a panic (101) or a signal");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "exactly one line on stderr: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let l = lines[0];
    assert!(l.contains("CUDA"), "{l}");
    assert!(
        (l.contains("libcuda") && l.contains("LD_LIBRARY_PATH")) || l.contains("setup-cuda.sh") || l.contains("device"),
        "the error says what is missing: {l}"
    );
    assert!(!dir.path().join("out").exists(), "nothing written");
    // --device auto falls back to the CPU and works
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_fasp-engine"))
        .args([
            "prune",
            "--model",
            model.to_str().unwrap(),
            "--out",
            dir.path().join("auto").to_str().unwrap(),
            "--calib",
            model.join("calib_ids.npy").to_str().unwrap(),
            "--device",
            "auto",
            "-q",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rec = read_json(&dir.path().join("auto").join("fasp.json"));
    assert!(rec["backend"].as_str().unwrap().starts_with("cpu"), "{}", rec["backend"]);
}

on_devices!(
    topk_radix_is_exact_against_cpu,
    modules_load_and_report_jit_time,
    score_kernels_match_cpu,
    topk_matches_cpu_with_ties,
    compact_gathers_and_scatters_match_cpu,
    cholesky_factor_and_solves_match_cpu,
    cholesky_detects_indefinite_and_escalates,
    restore_matches_cpu,
    stats_match_cpu,
    forward_kernels_match_cpu,
    attention_and_mlp_halves_match_cpu,
    backend_steps_match_cpu,
    whole_prune_matches_cpu,
    dense_forward_matches_cpu,
    families_prune_matches_cpu,
);
