//! The sequential FASP pipeline (docs/spec.md §7), written once over a `Backend`:
//!
//! for each layer: dense attention half → `H_attn` → score/select/restore the attention pair →
//! MLP half with the pruned attention → `H_mlp` → score/select/restore the MLP pair → the pruned
//! layer's output becomes the next layer's input. Each finished layer is handed to a sink (the
//! writer) in compact form, so nothing but the current layer is held in memory.

use super::method::Method;
use super::plan::{kept_count, PairKind};
use super::select::complement;
use crate::backend::{Backend, PairJob, PrunedPair, Scoring, StatsSummary};
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

impl PhaseTimes {
    /// A pair's time, as the backend split it (score + select, restore + errors).
    fn add_pair(&mut self, p: &PrunedPair) {
        self.score_select += p.seconds.score_select;
        self.restore += p.seconds.restore;
    }
}

/// Device traffic and memory of one phase (device backends only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeviceUse {
    pub h2d_bytes: u64,
    pub d2h_bytes: u64,
    /// The most device memory allocated at once during the phase.
    pub peak_bytes: u64,
}

/// `DeviceUse` per phase, like `PhaseTimes`; `prune_pairs` is `score_select` + `restore` (one
/// backend call per pair); `write` moves nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PhaseDevice {
    pub embed: DeviceUse,
    pub load_weights: DeviceUse,
    pub forward_stats: DeviceUse,
    pub prune_pairs: DeviceUse,
}

impl PhaseDevice {
    /// All phases together (bytes summed, the largest peak).
    pub fn total(&self) -> DeviceUse {
        let all = [self.embed, self.load_weights, self.forward_stats, self.prune_pairs];
        DeviceUse {
            h2d_bytes: all.iter().map(|u| u.h2d_bytes).sum(),
            d2h_bytes: all.iter().map(|u| u.d2h_bytes).sum(),
            peak_bytes: all.iter().map(|u| u.peak_bytes).max().unwrap_or(0),
        }
    }
}

/// Counts one phase's device work (nothing on a backend without counters).
struct Meter(Option<crate::backend::cuda::device::Counters>);

impl Meter {
    fn start(b: &dyn Backend) -> Meter {
        b.reset_phase_peak();
        Meter(b.device_counters())
    }
    fn stop(self, b: &dyn Backend, into: &mut DeviceUse) {
        if let (Some(c0), Some(c1)) = (self.0, b.device_counters()) {
            into.h2d_bytes += c1.h2d_bytes - c0.h2d_bytes;
            into.d2h_bytes += c1.d2h_bytes - c0.d2h_bytes;
            into.peak_bytes = into.peak_bytes.max(c1.phase_peak_bytes);
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct PruneReport {
    pub layers: Vec<LayerReport>,
    pub phases: PhaseTimes,
    pub backend: String,
    /// Per-phase device traffic and peak memory (device backends only).
    pub device: Option<PhaseDevice>,
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
    /// What the backend returned (`S`, `W2'`, λ, errors).
    pair: PrunedPair,
    /// FLAP's bias compensation `W2[:,P] · mean(X_P)`.
    bias_delta: Option<Vec<f32>>,
}

/// The job of one pair: scores on the host from the summary unless the method is FASP (then the
/// backend scores on its own data).
fn pair_job<'a>(
    layer: usize,
    kind: PairKind,
    w2: &'a Linear,
    summary: &StatsSummary,
    units: &'a Units,
    sparsity: f64,
    opts: &PruneConfig,
) -> Result<PairJob<'a>> {
    let k = kept_count(units.cols.len(), sparsity).map_err(|e| FaspError::Pair { layer, pair: kind.name(), msg: e.to_string() })?;
    let scoring = if opts.method == Method::Fasp {
        Scoring::Fasp
    } else {
        let seed = opts.seed ^ ((layer as u64) << 8) ^ (kind as u64);
        Scoring::Columns(opts.method.column_scores(&w2.w, summary, seed))
    };
    Ok(PairJob { layer, w2, unit_cols: &units.cols, k, scoring, restore: opts.method.restores() && opts.restore, damp: opts.damp })
}

/// The host's part after the backend pruned a pair: W1 rows of the kept units, FLAP's bias
/// compensation, the report.
fn finish_pair(pair: PrunedPair, w2: &Mat, summary: &StatsSummary, units: &Units, opts: &PruneConfig) -> PairOutcome {
    let mut rows: Vec<usize> = pair.kept_units.iter().flat_map(|&u| units.rows[u].iter().copied()).collect();
    rows.sort_unstable();
    let pruned = complement(&pair.cols, w2.cols);
    let bias_delta = (opts.method.bias_compensation() && !pruned.is_empty()).then(|| {
        let t = summary.tokens.max(1) as f64;
        (0..w2.rows).map(|i| pruned.iter().map(|&j| w2.data[i * w2.cols + j] as f64 * summary.col_sum[j] / t).sum::<f64>() as f32).collect()
    });
    // errors come from the restoration's own products (see restore.rs); FLAP's bias
    // compensation is not included in them
    let report = PairReport {
        units: units.cols.len(),
        kept: rows.len(),
        kept_units: rows.clone(),
        lambda: pair.lambda,
        damp: pair.damp,
        cholesky_retries: pair.retries,
        recon_error: pair.err2.sqrt(),
        recon_error_no_restore: pair.err2_no_restore.sqrt(),
    };
    PairOutcome { report, rows, pair, bias_delta }
}

fn gather_linear_rows(l: &Linear, rows: &[usize]) -> Linear {
    Linear { w: l.w.gather_rows(rows), b: l.b.as_ref().map(|b| rows.iter().map(|&r| b[r]).collect()) }
}

/// `W2'` (moved out of the outcome: the backend may recognise it as the copy it keeps) with the
/// old bias, plus FLAP's compensation.
fn updated_w2(old: &Linear, out: &mut PairOutcome) -> Linear {
    let mut b = old.b.clone();
    if let Some(delta) = &out.bias_delta {
        let bb = b.get_or_insert_with(|| vec![0.0; delta.len()]);
        for (x, d) in bb.iter_mut().zip(delta) {
            *x += *d;
        }
    }
    Linear { w: std::mem::replace(&mut out.pair.w2, Mat::zeros(0, 0)), b }
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
    let mut dev = PhaseDevice::default();
    let t0 = Instant::now();
    let inps = forward::embed(cfg, &model.embedding()?, model.positions()?.as_ref(), ids, seqlen);
    let m = Meter::start(backend);
    let mut input = backend.begin(inps, seqlen)?;
    m.stop(backend, &mut dev.embed);
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
        let m = Meter::start(backend);
        let st = backend.attn_stats(input, cfg, &lw)?;
        m.stop(backend, &mut dev.forward_stats);
        times.forward_stats += t0.elapsed().as_secs_f64();
        let attn_sparsity = if opts.skip_attn { 0.0 } else { opts.sparsity };
        let summary = st.summary.clone();
        let job = pair_job(l, PairKind::Attn, &lw.o, &summary, &attn_u, attn_sparsity, opts)?;
        let m = Meter::start(backend);
        let pruned = backend.prune_attn(st, &job)?;
        m.stop(backend, &mut dev.prune_pairs);
        times.add_pair(&pruned.pair);
        let mut attn = finish_pair(pruned.pair, &lw.o.w, &summary, &attn_u, opts);
        let o = updated_w2(&lw.o, &mut attn);
        let mut pl = LayerWeights { v: gather_linear_rows(&lw.v, &attn.rows), o, v_units: attn.rows.clone(), ..lw };

        // the next layer: loaded now so the backend can upload it while the MLP half runs
        if backend.wants_prefetch() && l + 1 < cfg.layers {
            let t0 = Instant::now();
            let w = model.layer(l + 1)?;
            let m = Meter::start(backend);
            backend.prefetch(&w)?;
            m.stop(backend, &mut dev.load_weights);
            next = Some(w);
            times.load_weights += t0.elapsed().as_secs_f64();
        }

        // 3-4: MLP pair, with the pruned attention
        let t0 = Instant::now();
        let m = Meter::start(backend);
        let st = backend.mlp_stats(pruned.done, cfg, &pl, &attn.pair.cols)?;
        m.stop(backend, &mut dev.forward_stats);
        times.forward_stats += t0.elapsed().as_secs_f64();
        let summary = st.summary.clone();
        let mlp_u = mlp_units(pl.ffn());
        let job = pair_job(l, PairKind::Mlp, &pl.down, &summary, &mlp_u, opts.sparsity, opts)?;
        let m = Meter::start(backend);
        let pruned = backend.prune_mlp(st, &job)?;
        m.stop(backend, &mut dev.prune_pairs);
        times.add_pair(&pruned.pair);
        let mut mlp = finish_pair(pruned.pair, &pl.down.w, &summary, &mlp_u, opts);
        pl.up = gather_linear_rows(&pl.up, &mlp.rows);
        pl.gate = pl.gate.as_ref().map(|g| gather_linear_rows(g, &mlp.rows));
        pl.down = updated_w2(&pl.down, &mut mlp);

        // 5: the pruned layer's output feeds the next layer
        let t0 = Instant::now();
        let m = Meter::start(backend);
        input = backend.advance(pruned.done, cfg, &pl, &mlp.pair.cols)?;
        m.stop(backend, &mut dev.forward_stats);
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
    Ok(PruneReport { layers: reports, phases: times, backend: backend.name(), device: backend.device_counters().map(|_| dev) })
}
