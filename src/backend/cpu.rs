//! The CPU reference backend: the f32 forward of `crate::forward` and f64 statistics.

use super::{Backend, PairStats};
use crate::error::{FaspError, Result};
use crate::forward;
use crate::model::{LayerWeights, ModelConfig};
use crate::tensor::Mat;

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
}

impl CpuBackend {
    pub fn new() -> Self {
        Self::default()
    }
    /// The hidden states entering the next layer (after `advance`).
    pub fn hidden(&self) -> Option<&Mat> {
        self.inps.as_ref()
    }
}

fn finite(m: &Mat, what: &str) -> Result<()> {
    if m.is_finite() {
        Ok(())
    } else {
        Err(FaspError::Numerics(format!("non-finite values in the {what} during calibration")))
    }
}

fn missing(step: &str) -> FaspError {
    FaspError::Numerics(format!("pipeline step out of order: {step}"))
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn begin(&mut self, inps: Mat, seqlen: usize) -> Result<()> {
        finite(&inps, "embeddings")?;
        *self = CpuBackend { seqlen, inps: Some(inps), ..Default::default() };
        Ok(())
    }

    fn attn_stats(&mut self, cfg: &ModelConfig, lw: &LayerWeights) -> Result<PairStats> {
        let inps = self.inps.as_ref().ok_or_else(|| missing("attn_stats before begin"))?;
        let ctx = forward::attn_context(cfg, lw, inps, self.seqlen);
        finite(&ctx, "attention context")?;
        let stats = PairStats::of(&ctx);
        self.ctx = Some(ctx);
        Ok(stats)
    }

    fn mlp_stats(&mut self, cfg: &ModelConfig, lw: &LayerWeights, ctx_cols: &[usize]) -> Result<PairStats> {
        let inps = self.inps.as_ref().ok_or_else(|| missing("mlp_stats before begin"))?;
        let ctx = self.ctx.take().ok_or_else(|| missing("mlp_stats before attn_stats"))?;
        // Q and K are unchanged, so the pruned context is the dense context's kept columns.
        let ctx_kept = if ctx_cols.len() == ctx.cols { ctx } else { ctx.gather_cols(ctx_cols) };
        let mid = forward::attn_residual(cfg, lw, inps, &ctx_kept);
        let act = forward::mlp_act(cfg, lw, &mid);
        finite(&act, "MLP activation")?;
        let stats = PairStats::of(&act);
        self.mid = Some(mid);
        self.act = Some(act);
        Ok(stats)
    }

    fn advance(&mut self, cfg: &ModelConfig, lw: &LayerWeights, mlp_cols: &[usize]) -> Result<()> {
        let mid = self.mid.take().ok_or_else(|| missing("advance before mlp_stats"))?;
        let act = self.act.take().ok_or_else(|| missing("advance before mlp_stats"))?;
        let act_kept = if mlp_cols.len() == act.cols { act } else { act.gather_cols(mlp_cols) };
        let out = forward::mlp_residual(cfg, lw, &mid, &act_kept);
        finite(&out, "layer output")?;
        self.inps = Some(out);
        Ok(())
    }
}
