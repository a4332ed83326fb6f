//! What the pipeline needs from a device: the seam. The pipeline (`prune::pipeline`) is written
//! once over this trait; the CPU backend is the readable reference, the CUDA backend runs the same
//! steps on one GPU.
//!
//! **The backend owns the data.** Hidden states, the statistics `H = Σ x xᵀ`, the weights it was
//! handed, the scores and the selection stay where they were made. Only O(n) data crosses the
//! seam (a [`StatsSummary`]: `diag(H)`, `Σx`, the token count; the kept units and columns; λ,
//! damping, retries and the reconstruction errors) plus the pruned `W2'` that the writer needs.
//!
//! **The order of the steps is a type.** Every step consumes the token of the step before it and
//! returns the next one; tokens cannot be copied or built outside this module (and its backends):
//!
//! ```text
//! begin ─► LayerInput ─attn_stats─► Stats<Attn> ─prune_attn─► Pruned<Attn>{pair, Done<Attn>}
//!   ─mlp_stats─► Stats<Mlp> ─prune_mlp─► Pruned<Mlp>{pair, Done<Mlp>} ─advance─► LayerInput ─► …
//! ```

pub mod cpu;
pub mod cuda;

pub use cpu::PairStats;

use crate::error::{FaspError, Result};
use crate::model::{LayerWeights, Linear, ModelConfig};
use crate::prune::plan::PairKind;
use crate::tensor::Mat;
use std::marker::PhantomData;

/// The O(n) part of a pair's statistics (docs/spec.md §4) that the host needs: enough for every
/// method's scores (wanda-sp, flap, magnitude, random are scored on the host from it), FLAP's bias
/// compensation and λ.
#[derive(Clone, Debug, PartialEq)]
pub struct StatsSummary {
    /// `diag(H)` (f64), `H = Σ_t x_t x_tᵀ`.
    pub hdiag: Vec<f64>,
    /// `Σ_t x_t` per column (for FLAP's mean and variance).
    pub col_sum: Vec<f64>,
    pub tokens: usize,
}

impl StatsSummary {
    /// Columns of the pair's later matrix (`n`).
    pub fn n(&self) -> usize {
        self.hdiag.len()
    }
}

/// The attention pair (o_proj columns with v_proj rows).
#[derive(Debug)]
pub struct Attn;
/// The MLP pair (down_proj/fc2 columns with up/gate/fc1 rows).
#[derive(Debug)]
pub struct Mlp;

/// The two pair markers; sealed (only `Attn` and `Mlp`).
pub trait PairMarker: sealed::Sealed {
    const KIND: PairKind;
}
impl PairMarker for Attn {
    const KIND: PairKind = PairKind::Attn;
}
impl PairMarker for Mlp {
    const KIND: PairKind = PairKind::Mlp;
}
mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Attn {}
    impl Sealed for super::Mlp {}
}

/// Private to this module and its backends: tokens cannot be built elsewhere.
#[derive(Debug)]
struct Seal;

/// The backend holds the hidden states entering a layer (from `begin` or `advance`).
#[must_use = "the next step consumes this token"]
#[derive(Debug)]
pub struct LayerInput {
    _seal: Seal,
}

/// The backend holds the statistics of pair `K`'s input; the host gets their summary.
#[must_use = "the next step consumes this token"]
#[derive(Debug)]
pub struct Stats<K> {
    pub summary: StatsSummary,
    _seal: Seal,
    _k: PhantomData<K>,
}

/// Pair `K` of the current layer is pruned (its statistics are gone).
#[must_use = "the next step consumes this token"]
#[derive(Debug)]
pub struct Done<K> {
    _seal: Seal,
    _k: PhantomData<K>,
}

/// What pruning pair `K` gives the host, and the token for the next step.
#[derive(Debug)]
pub struct Pruned<K> {
    pub pair: PrunedPair,
    pub done: Done<K>,
}

fn layer_input() -> LayerInput {
    LayerInput { _seal: Seal }
}

fn stats<K>(summary: StatsSummary) -> Stats<K> {
    Stats { summary, _seal: Seal, _k: PhantomData }
}

fn pruned<K>(pair: PrunedPair) -> Pruned<K> {
    Pruned { pair, done: done() }
}

fn done<K>() -> Done<K> {
    Done { _seal: Seal, _k: PhantomData }
}

/// How the units of a pair are scored.
#[derive(Clone, Debug)]
pub enum Scoring {
    /// FASP's `sqrt(H_jj)·Σ_i |W2[i,j]|`, computed by the backend on its own data (the fused kernel
    /// on a device).
    Fasp,
    /// Column scores computed on the host from the summary (wanda-sp, flap, magnitude, random).
    Columns(Vec<f64>),
}

/// One pair to prune: score → select `k` units → restore (or not) → reconstruction errors.
#[derive(Debug)]
pub struct PairJob<'a> {
    pub layer: usize,
    /// The dense later matrix `W2` `[out, n]` (the backend may use its own resident copy).
    pub w2: &'a Linear,
    /// The `W2` columns of each unit (a unit's score is the sum of its columns' scores).
    pub unit_cols: &'a [Vec<usize>],
    /// Units to keep (≥ 1, ≤ units).
    pub k: usize,
    pub scoring: Scoring,
    /// `false`: `W2' = W2[:,S]` (no least-squares update).
    pub restore: bool,
    pub damp: f64,
}

/// A pruned pair (O(n) data and the pruned weights).
#[derive(Clone, Debug)]
pub struct PrunedPair {
    /// Kept units, increasing.
    pub kept_units: Vec<usize>,
    /// `S`: kept `W2` columns, increasing.
    pub cols: Vec<usize>,
    /// `W2'` `[out, |S|]` (restored, or `W2[:,S]`), for the writer.
    pub w2: Mat,
    /// λ actually used (None when no solve was needed).
    pub lambda: Option<f64>,
    /// `damp` actually used.
    pub damp: f64,
    pub retries: u32,
    /// `‖W2 X − W2' X_S‖_F²` of the returned `W2'`.
    pub err2: f64,
    /// The same for `W2' = W2[:,S]`.
    pub err2_no_restore: f64,
    /// Where the backend spent the pair's time.
    pub seconds: PairSeconds,
}

/// Wall time of a pair's two halves (the pipeline's `score_select` and `restore` phases).
#[derive(Clone, Copy, Debug, Default)]
pub struct PairSeconds {
    /// Scores, unit sums and the selection.
    pub score_select: f64,
    /// Gathers, the restoration (or `W2[:,S]`) and the reconstruction errors.
    pub restore: f64,
}

/// Checks a job against the summary of its statistics; the unit scores from column scores.
fn unit_scores(job: &PairJob, kind: PairKind, colscore: &[f64]) -> Result<Vec<f64>> {
    let n = job.w2.w.cols;
    if colscore.len() != n {
        return Err(pair_error(job.layer, kind, format!("{} column scores for {n} columns", colscore.len())));
    }
    Ok(crate::prune::score::unit_scores(colscore, job.unit_cols))
}

/// `S`: the columns of the kept units, increasing.
fn kept_cols(job: &PairJob, kept_units: &[usize]) -> Vec<usize> {
    let mut cols: Vec<usize> = kept_units.iter().flat_map(|&u| job.unit_cols[u].iter().copied()).collect();
    cols.sort_unstable();
    cols
}

/// Checks the shapes of a job against its statistics (one clear error, never a panic).
fn check_job(job: &PairJob, kind: PairKind, summary: &StatsSummary) -> Result<()> {
    let n = job.w2.w.cols;
    let bad = |m: String| Err(pair_error(job.layer, kind, m));
    if summary.n() != n {
        return bad(format!("W2 has {n} columns but the statistics {}", summary.n()));
    }
    if job.k == 0 || job.k > job.unit_cols.len() {
        return bad(format!("cannot keep {} of {} units", job.k, job.unit_cols.len()));
    }
    if let Some(c) = job.unit_cols.iter().flatten().find(|&&c| c >= n) {
        return bad(format!("unit column {c} is outside W2's {n} columns"));
    }
    Ok(())
}

fn pair_error(layer: usize, kind: PairKind, msg: String) -> FaspError {
    FaspError::Pair { layer, pair: kind.name(), msg }
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
    fn begin(&mut self, inps: Mat, seqlen: usize) -> Result<LayerInput>;

    /// §7 step 1: runs the dense attention half of the layer on the current inputs, keeps the
    /// context and the statistics of the o_proj input, and returns their summary.
    fn attn_stats(&mut self, input: LayerInput, cfg: &ModelConfig, lw: &LayerWeights) -> Result<Stats<Attn>>;

    /// §7 step 2: scores, selects and restores the attention pair on the backend's statistics.
    fn prune_attn(&mut self, stats: Stats<Attn>, job: &PairJob) -> Result<Pruned<Attn>>;

    /// §7 step 3: with the pruned attention (`lw.o` holds `W2'` — the `w2` that `prune_attn`
    /// returned, with its bias — over the context columns `ctx_cols` of the dense context), runs up
    /// to the fc2/down_proj input, keeps its statistics and returns their summary.
    /// Skips pruning the attention pair of a layer whose pruned weights are already known (a
    /// `--resume` replay of a finished layer): the statistics are dropped.
    fn skip_attn(&mut self, stats: Stats<Attn>) -> Done<Attn>;

    fn mlp_stats(&mut self, done: Done<Attn>, cfg: &ModelConfig, lw: &LayerWeights, ctx_cols: &[usize]) -> Result<Stats<Mlp>>;

    /// §7 step 4: the MLP pair, like `prune_attn`.
    fn prune_mlp(&mut self, stats: Stats<Mlp>, job: &PairJob) -> Result<Pruned<Mlp>>;

    /// §7 step 5: the next layer's inputs are this (pruned) layer's output; `mlp_cols` are the
    /// kept intermediate channels, matching `lw.down`'s columns (`lw.down` is `prune_mlp`'s `W2'`).
    /// [`Backend::skip_attn`] for the MLP pair.
    fn skip_mlp(&mut self, stats: Stats<Mlp>) -> Done<Mlp>;

    fn advance(&mut self, done: Done<Mlp>, cfg: &ModelConfig, lw: &LayerWeights, mlp_cols: &[usize]) -> Result<LayerInput>;

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

    /// Starts a new phase for `Counters::phase_peak_bytes`. Default: nothing.
    fn reset_phase_peak(&self) {}
}
