//! The sequential FASP pipeline (FASP-SPEC §7), written once over a `Backend`:
//!
//! for each layer: dense attention half → `H_attn` → score/select/restore the attention pair →
//! MLP half with the pruned attention → `H_mlp` → score/select/restore the MLP pair → the pruned
//! layer's output becomes the next layer's input. Each finished layer is handed to a sink (the
//! writer) in compact form, so nothing but the current layer is held in memory.

use super::method::Method;
use super::plan::{kept_count, PairKind};
use super::restore::{self, Restored};
use super::select::complement;
use crate::backend::{Backend, PairStats};
use crate::error::{FaspError, Result};
use crate::forward;
use crate::model::arch::attn_unit_columns;
use crate::model::{LayerWeights, Linear, Model};
use crate::tensor::Mat;
use serde::Serialize;
use std::time::Instant;

#[derive(Clone, Debug, Serialize)]
pub struct PruneConfig {
    pub sparsity: f64,
    pub damp: f64,
    /// `false` = `--no-restore` (ablation).
    pub restore: bool,
    pub skip_attn: bool,
    pub method: Method,
    /// Seed of the `random` method.
    pub seed: u64,
}

impl Default for PruneConfig {
    fn default() -> Self {
        PruneConfig { sparsity: 0.2, damp: 0.01, restore: true, skip_attn: false, method: Method::Fasp, seed: 0 }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct PairReport {
    /// Units of the pair (V rows, or intermediate channels).
    pub units: usize,
    pub kept: usize,
    /// Kept units, increasing (written at the layer level of `fasp.json`).
    #[serde(skip)]
    pub kept_units: Vec<usize>,
    pub lambda: Option<f64>,
    pub damp: f64,
    pub cholesky_retries: u32,
    /// `‖W2 X − W2' X_S‖_F` with the restored `W2'`.
    pub recon_error: f64,
    /// The same with `W2' = W2[:,S]`.
    pub recon_error_no_restore: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LayerReport {
    pub layer: usize,
    pub attn: PairReport,
    pub mlp: PairReport,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PhaseTimes {
    pub embed: f64,
    pub load_weights: f64,
    pub forward_stats: f64,
    pub score_select: f64,
    pub restore: f64,
    pub write: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PruneReport {
    pub layers: Vec<LayerReport>,
    pub phases: PhaseTimes,
    pub backend: String,
}

/// Units of a pair as W2 columns and W1 rows.
struct Units {
    cols: Vec<Vec<usize>>,
    rows: Vec<Vec<usize>>,
}

fn attn_units(model: &Model, whole_heads: bool) -> Units {
    let cfg = &model.cfg;
    let nv = cfg.v_width();
    if whole_heads {
        let hd = cfg.head_dim;
        let rows: Vec<Vec<usize>> = (0..cfg.kv_heads).map(|g| (g * hd..(g + 1) * hd).collect()).collect();
        let cols = rows
            .iter()
            .map(|r| {
                let mut c: Vec<usize> = r.iter().flat_map(|&u| attn_unit_columns(cfg, u)).collect();
                c.sort_unstable();
                c
            })
            .collect();
        Units { cols, rows }
    } else {
        Units { cols: (0..nv).map(|u| attn_unit_columns(cfg, u)).collect(), rows: (0..nv).map(|u| vec![u]).collect() }
    }
}

fn mlp_units(n: usize) -> Units {
    Units { cols: (0..n).map(|j| vec![j]).collect(), rows: (0..n).map(|j| vec![j]).collect() }
}

struct PairOutcome {
    report: PairReport,
    /// Kept W1 rows (V rows or intermediate channels), increasing.
    rows: Vec<usize>,
    /// `S`: kept W2 columns, increasing.
    cols: Vec<usize>,
    restored: Restored,
    /// FLAP's bias compensation `W2[:,P] · mean(X_P)`.
    bias_delta: Option<Vec<f32>>,
}

#[allow(clippy::too_many_arguments)]
fn prune_pair(
    backend: &dyn Backend,
    layer: usize,
    kind: PairKind,
    w2: &Mat,
    stats: &PairStats,
    units: &Units,
    sparsity: f64,
    opts: &PruneConfig,
    times: &mut PhaseTimes,
) -> Result<PairOutcome> {
    let pair_err = |msg: String| FaspError::Pair { layer, pair: kind.name(), msg };
    let n_units = units.cols.len();
    let k = kept_count(n_units, sparsity).map_err(|e| pair_err(e.to_string()))?;
    let t0 = Instant::now();
    let colscore = if opts.method == Method::Fasp {
        backend.column_scores(w2, &stats.h.diag())?
    } else {
        let seed = opts.seed ^ ((layer as u64) << 8) ^ (kind as u64);
        opts.method.column_scores(w2, stats, seed)
    };
    let scores = super::score::unit_scores(&colscore, &units.cols);
    let kept_units = backend.top_k(&scores, k).map_err(pair_err)?;
    let mut rows: Vec<usize> = kept_units.iter().flat_map(|&u| units.rows[u].iter().copied()).collect();
    rows.sort_unstable();
    let mut cols: Vec<usize> = kept_units.iter().flat_map(|&u| units.cols[u].iter().copied()).collect();
    cols.sort_unstable();
    let pruned = complement(&cols, w2.cols);
    times.score_select += t0.elapsed().as_secs_f64();

    let t0 = Instant::now();
    let restored = if opts.method.restores() && opts.restore {
        backend.restore(w2, &stats.h, &cols, &pruned, opts.damp).map_err(pair_err)?
    } else {
        restore::no_restore(w2, &stats.h, &cols, &pruned, opts.damp)
    };
    let bias_delta = (opts.method.bias_compensation() && !pruned.is_empty()).then(|| {
        let t = stats.tokens.max(1) as f64;
        (0..w2.rows).map(|i| pruned.iter().map(|&j| w2.data[i * w2.cols + j] as f64 * stats.col_sum[j] / t).sum::<f64>() as f32).collect()
    });
    times.restore += t0.elapsed().as_secs_f64();

    // errors come from the restoration's own products (see restore.rs); FLAP's bias
    // compensation is not included in them
    let (recon_error, recon_error_no_restore) = (restored.err2.sqrt(), restored.err2_no_restore.sqrt());
    Ok(PairOutcome {
        report: PairReport {
            units: n_units,
            kept: rows.len(),
            kept_units: rows.clone(),
            lambda: restored.lambda,
            damp: restored.damp,
            cholesky_retries: restored.retries,
            recon_error,
            recon_error_no_restore,
        },
        rows,
        cols,
        restored,
        bias_delta,
    })
}

fn gather_linear_rows(l: &Linear, rows: &[usize]) -> Linear {
    Linear { w: l.w.gather_rows(rows), b: l.b.as_ref().map(|b| rows.iter().map(|&r| b[r]).collect()) }
}

fn updated_w2(old: &Linear, out: &PairOutcome) -> Linear {
    let mut b = old.b.clone();
    if let Some(delta) = &out.bias_delta {
        let bb = b.get_or_insert_with(|| vec![0.0; delta.len()]);
        for (x, d) in bb.iter_mut().zip(delta) {
            *x += *d;
        }
    }
    Linear { w: out.restored.w2.clone(), b }
}

/// The settings are valid for this model, checked before any work starts: not a compact model,
/// sparsity in [0, 1), a positive damping, and every pair keeps at least one unit.
pub fn check_settings(model: &Model, opts: &PruneConfig) -> Result<()> {
    let cfg = &model.cfg;
    if cfg.compact_v_units.is_some() {
        return Err(FaspError::Arg(format!("{} is already a FASP compact model; prune the original", model.path.display())));
    }
    super::plan::check_sparsity(opts.sparsity)?;
    if !(opts.damp > 0.0 && opts.damp.is_finite()) {
        return Err(FaspError::Arg(format!("--damp must be positive, got {}", opts.damp)));
    }
    let attn_n = attn_units(model, opts.method.whole_heads()).cols.len();
    let in_pair = |pair: &str, e: FaspError| match e {
        FaspError::Arg(m) => FaspError::Arg(format!("{pair} pair: {m}")),
        other => other,
    };
    if !opts.skip_attn {
        kept_count(attn_n, opts.sparsity).map_err(|e| in_pair("attention", e))?;
    }
    kept_count(cfg.ffn, opts.sparsity).map_err(|e| in_pair("MLP", e))?;
    Ok(())
}

/// Prunes every layer of `model` with the calibration windows `ids` (`[N, seqlen]` flattened).
/// `sink` receives each pruned layer in compact form, in order.
pub fn prune(
    model: &Model,
    ids: &[u32],
    seqlen: usize,
    opts: &PruneConfig,
    backend: &mut dyn Backend,
    sink: &mut dyn FnMut(usize, LayerWeights, &LayerReport) -> Result<()>,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<PruneReport> {
    let cfg = &model.cfg;
    check_settings(model, opts)?;
    if ids.is_empty() || seqlen == 0 || !ids.len().is_multiple_of(seqlen) {
        return Err(FaspError::Calib(format!("{} tokens do not form windows of {seqlen}", ids.len())));
    }
    if let Some(&bad) = ids.iter().find(|&&t| t as usize >= cfg.vocab) {
        return Err(FaspError::Calib(format!("token id {bad} is outside the vocabulary ({})", cfg.vocab)));
    }
    model.check_seqlen(seqlen)?;

    let mut times = PhaseTimes::default();
    let t0 = Instant::now();
    let inps = forward::embed(cfg, &model.embedding()?, model.positions()?.as_ref(), ids, seqlen);
    backend.begin(inps, seqlen)?;
    times.embed = t0.elapsed().as_secs_f64();

    let attn_u = attn_units(model, opts.method.whole_heads());
    let mut reports = Vec::with_capacity(cfg.layers);
    // With a prefetching backend, layer l+1 is loaded before layer l's MLP half (see below).
    let mut next: Option<LayerWeights> = None;
    for l in 0..cfg.layers {
        let t0 = Instant::now();
        let lw = match next.take() {
            Some(w) => w,
            None => model.layer(l)?,
        };
        times.load_weights += t0.elapsed().as_secs_f64();

        // 1-2: attention pair
        let t0 = Instant::now();
        let h_attn = backend.attn_stats(cfg, &lw)?;
        times.forward_stats += t0.elapsed().as_secs_f64();
        let attn_sparsity = if opts.skip_attn { 0.0 } else { opts.sparsity };
        let attn = prune_pair(&*backend, l, PairKind::Attn, &lw.o.w, &h_attn, &attn_u, attn_sparsity, opts, &mut times)?;
        drop(h_attn);
        let mut pl =
            LayerWeights { v: gather_linear_rows(&lw.v, &attn.rows), o: updated_w2(&lw.o, &attn), v_units: attn.rows.clone(), ..lw };

        // the next layer: loaded now so the backend can upload it while the MLP half runs
        if backend.wants_prefetch() && l + 1 < cfg.layers {
            let t0 = Instant::now();
            let w = model.layer(l + 1)?;
            backend.prefetch(&w)?;
            next = Some(w);
            times.load_weights += t0.elapsed().as_secs_f64();
        }

        // 3-4: MLP pair, with the pruned attention
        let t0 = Instant::now();
        let h_mlp = backend.mlp_stats(cfg, &pl, &attn.cols)?;
        times.forward_stats += t0.elapsed().as_secs_f64();
        let mlp = prune_pair(&*backend, l, PairKind::Mlp, &pl.down.w, &h_mlp, &mlp_units(pl.ffn()), opts.sparsity, opts, &mut times)?;
        drop(h_mlp);
        pl.up = gather_linear_rows(&pl.up, &mlp.rows);
        pl.gate = pl.gate.as_ref().map(|g| gather_linear_rows(g, &mlp.rows));
        pl.down = updated_w2(&pl.down, &mlp);

        // 5: the pruned layer's output feeds the next layer
        let t0 = Instant::now();
        backend.advance(cfg, &pl, &mlp.cols)?;
        times.forward_stats += t0.elapsed().as_secs_f64();

        let report = LayerReport { layer: l, attn: attn.report, mlp: mlp.report };
        let t0 = Instant::now();
        sink(l, pl, &report)?;
        times.write += t0.elapsed().as_secs_f64();
        reports.push(report);
        if let Some(pb) = progress {
            pb.inc(1);
        }
    }
    Ok(PruneReport { layers: reports, phases: times, backend: backend.name() })
}
