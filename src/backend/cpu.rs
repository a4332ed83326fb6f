//! The CPU reference backend: the f32 forward of `crate::forward`, f64 statistics, and the pinned
//! per-pair math of `prune::{score, select, restore}`. The full `H` of the pending pair lives
//! here ([`PairStats`]); the pipeline only sees its summary.

use super::{done, layer_input, pair_error, pruned, stats, Attn, Backend, Done, LayerInput, Mlp, PairJob, PairMarker, Pruned, PrunedPair};
use super::{Scoring, Stats, StatsSummary};
use crate::error::{FaspError, Result};
use crate::forward;
use crate::model::{LayerWeights, ModelConfig};
use crate::prune::{restore, score, select};
use crate::tensor::{Gram, Mat};

/// Statistics of the input `X` of a pair's later matrix over all calibration tokens.
#[derive(Clone, Debug)]
pub struct PairStats {
    /// `H = Σ x xᵀ` (f64).
    pub h: Gram,
    /// `Σ x` per column (for FLAP's mean and variance).
    pub col_sum: Vec<f64>,
    pub tokens: usize,
}

impl PairStats {
    pub fn of(x: &Mat) -> PairStats {
        let mut h = Gram::zeros(x.cols);
        h.accumulate(x);
        let mut col_sum = vec![0.0f64; x.cols];
        for r in 0..x.rows {
            for (s, &v) in col_sum.iter_mut().zip(x.row(r)) {
                *s += v as f64;
            }
        }
        PairStats { h, col_sum, tokens: x.rows }
    }

    /// The O(n) part the host sees.
    pub fn summary(&self) -> StatsSummary {
        StatsSummary { hdiag: self.h.diag(), col_sum: self.col_sum.clone(), tokens: self.tokens }
    }
}

/// Scores, selects and restores one pair on the full statistics: the reference of the seam's
/// `prune_attn`/`prune_mlp` (docs/spec.md §5-§6).
pub fn prune_pair(st: &PairStats, summary: &StatsSummary, job: &PairJob, kind: crate::prune::plan::PairKind) -> Result<PrunedPair> {
    super::check_job(job, kind, summary)?;
    let perr = |m: String| pair_error(job.layer, kind, m);
    let w2 = &job.w2.w;
    let t0 = std::time::Instant::now();
    let colscore = match &job.scoring {
        Scoring::Fasp => score::column_scores(w2, &summary.hdiag),
        Scoring::Columns(c) => c.clone(),
    };
    let scores = super::unit_scores(job, kind, &colscore)?;
    let kept_units = select::top_k(&scores, job.k).map_err(perr)?;
    let cols = super::kept_cols(job, &kept_units);
    let p = select::complement(&cols, w2.cols);
    let score_select = t0.elapsed().as_secs_f64();
    let t0 = std::time::Instant::now();
    let r = if job.restore {
        restore::restore(w2, &st.h, &cols, &p, job.damp).map_err(perr)?
    } else {
        restore::no_restore(w2, &st.h, &cols, &p, job.damp)
    };
    Ok(PrunedPair {
        kept_units,
        cols,
        w2: r.w2,
        lambda: r.lambda,
        damp: r.damp,
        retries: r.retries,
        err2: r.err2,
        err2_no_restore: r.err2_no_restore,
        seconds: super::PairSeconds { score_select, restore: t0.elapsed().as_secs_f64() },
    })
}

#[derive(Default)]
pub struct CpuBackend {
    seqlen: usize,
    /// Hidden states entering the current layer.
    inps: Option<Mat>,
    /// Dense attention context of the current layer.
    ctx: Option<Mat>,
    /// Residual stream after the pruned attention.
    mid: Option<Mat>,
    /// Activated intermediate (all channels) of the current layer.
    act: Option<Mat>,
    /// Statistics of the pair being pruned.
    pending: Option<PairStats>,
}

impl CpuBackend {
    pub fn new() -> Self {
        Self::default()
    }
    /// The hidden states entering the next layer (after `advance`).
    pub fn hidden(&self) -> Option<&Mat> {
        self.inps.as_ref()
    }

    fn prune<K: PairMarker>(&mut self, stats: Stats<K>, job: &PairJob) -> Result<Pruned<K>> {
        let st = self.pending.take().ok_or_else(|| missing("a pair pruned twice"))?;
        Ok(pruned(prune_pair(&st, &stats.summary, job, K::KIND)?))
    }
}

fn finite(m: &Mat, what: &str) -> Result<()> {
    if m.is_finite() {
        Ok(())
    } else {
        Err(FaspError::Numerics(format!("non-finite values in the {what} during calibration")))
    }
}

/// The tokens make a wrong order impossible within one `begin`; this is what a token from an
/// earlier `begin` gets.
fn missing(step: &str) -> FaspError {
    FaspError::Numerics(format!("pipeline state lost ({step}): a token from an earlier begin?"))
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn begin(&mut self, inps: Mat, seqlen: usize) -> Result<LayerInput> {
        finite(&inps, "embeddings")?;
        *self = CpuBackend { seqlen, inps: Some(inps), ..Default::default() };
        Ok(layer_input())
    }

    fn attn_stats(&mut self, _input: LayerInput, cfg: &ModelConfig, lw: &LayerWeights) -> Result<Stats<Attn>> {
        let inps = self.inps.as_ref().ok_or_else(|| missing("attn_stats"))?;
        let ctx = forward::attn_context(cfg, lw, inps, self.seqlen);
        finite(&ctx, "attention context")?;
        let st = PairStats::of(&ctx);
        let summary = st.summary();
        self.ctx = Some(ctx);
        self.pending = Some(st);
        Ok(stats(summary))
    }

    fn skip_attn(&mut self, stats: Stats<Attn>) -> Done<Attn> {
        let _ = stats;
        self.pending = None;
        done()
    }

    fn prune_attn(&mut self, stats: Stats<Attn>, job: &PairJob) -> Result<Pruned<Attn>> {
        self.prune(stats, job)
    }

    fn mlp_stats(&mut self, _done: Done<Attn>, cfg: &ModelConfig, lw: &LayerWeights, ctx_cols: &[usize]) -> Result<Stats<Mlp>> {
        let inps = self.inps.as_ref().ok_or_else(|| missing("mlp_stats"))?;
        let ctx = self.ctx.take().ok_or_else(|| missing("mlp_stats"))?;
        // Q and K are unchanged, so the pruned context is the dense context's kept columns.
        let ctx_kept = if ctx_cols.len() == ctx.cols { ctx } else { ctx.gather_cols(ctx_cols) };
        let mid = forward::attn_residual(cfg, lw, inps, &ctx_kept);
        let act = forward::mlp_act(cfg, lw, &mid);
        finite(&act, "MLP activation")?;
        let st = PairStats::of(&act);
        let summary = st.summary();
        self.mid = Some(mid);
        self.act = Some(act);
        self.pending = Some(st);
        Ok(stats(summary))
    }

    fn skip_mlp(&mut self, stats: Stats<Mlp>) -> Done<Mlp> {
        let _ = stats;
        self.pending = None;
        done()
    }

    fn prune_mlp(&mut self, stats: Stats<Mlp>, job: &PairJob) -> Result<Pruned<Mlp>> {
        self.prune(stats, job)
    }

    fn advance(&mut self, _done: Done<Mlp>, cfg: &ModelConfig, lw: &LayerWeights, mlp_cols: &[usize]) -> Result<LayerInput> {
        let mid = self.mid.take().ok_or_else(|| missing("advance"))?;
        let act = self.act.take().ok_or_else(|| missing("advance"))?;
        let act_kept = if mlp_cols.len() == act.cols { act } else { act.gather_cols(mlp_cols) };
        let out = forward::mlp_residual(cfg, lw, &mid, &act_kept);
        finite(&out, "layer output")?;
        self.inps = Some(out);
        Ok(layer_input())
    }
}
