//! What the pipeline needs from a device. The pipeline (`prune::pipeline`) is written once over
//! this trait; the CPU backend is the readable reference and the CUDA backend overrides the same
//! steps. The per-pair math (score, select, restore) has default implementations that call the
//! reference functions, so a backend only overrides what it accelerates.

pub mod cpu;
pub mod cuda;

use crate::error::Result;
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
}

pub trait Backend {
    fn name(&self) -> String;

    /// Whether the pipeline should load layer l+1 early (before layer l's MLP half) and hand it
    /// to `prefetch`. Off by default: it holds a second layer in host memory.
    fn wants_prefetch(&self) -> bool {
        false
    }

    /// The next layer's weights, handed over before the current layer's MLP half so a device
    /// backend can start uploading them while it computes. The same `LayerWeights` (moved, not
    /// copied) is passed to `attn_stats` next. Default: nothing.
    fn prefetch(&mut self, _lw: &LayerWeights) -> Result<()> {
        Ok(())
    }

    /// Starts a prune with the hidden states entering layer 0, `[N·L, d]`.
    fn begin(&mut self, inps: Mat, seqlen: usize) -> Result<()>;

    /// §7 step 1: runs the dense attention half of the layer on the current inputs, keeps the
    /// context, and returns the statistics of the o_proj input.
    fn attn_stats(&mut self, cfg: &ModelConfig, lw: &LayerWeights) -> Result<PairStats>;

    /// §7 step 3: with the pruned attention (`lw.o` holds `W2'` over the context columns `ctx_cols`
    /// of the dense context), runs up to the fc2/down_proj input, keeps it, and returns its
    /// statistics.
    fn mlp_stats(&mut self, cfg: &ModelConfig, lw: &LayerWeights, ctx_cols: &[usize]) -> Result<PairStats>;

    /// §7 step 5: the next layer's inputs are this (pruned) layer's output; `mlp_cols` are the
    /// kept intermediate channels, matching `lw.down`'s columns.
    fn advance(&mut self, cfg: &ModelConfig, lw: &LayerWeights, mlp_cols: &[usize]) -> Result<()>;

    /// What the device has done so far (copies, launches, peak memory); None on the CPU.
    fn device_counters(&self) -> Option<cuda::device::Counters> {
        None
    }

    /// Free and total device memory in bytes; None on the CPU.
    fn device_memory(&self) -> Option<(u64, u64)> {
        None
    }

    /// The chunking chosen by the memory plan (`crate::plan`): calibration tokens per device
    /// pass and windows per attention sub-batch. Ignored by the CPU.
    fn set_chunking(&mut self, _chunk_tokens: usize, _attn_windows: usize) {}

    fn column_scores(&self, w2: &Mat, hdiag: &[f64]) -> Result<Vec<f64>> {
        Ok(score::column_scores(w2, hdiag))
    }

    fn top_k(&self, scores: &[f64], k: usize) -> Result<Vec<usize>, String> {
        select::top_k(scores, k)
    }

    fn restore(&self, w2: &Mat, h: &Gram, s: &[usize], p: &[usize], damp: f64) -> Result<restore::Restored, String> {
        restore::restore(w2, h, s, p, damp)
    }
}
