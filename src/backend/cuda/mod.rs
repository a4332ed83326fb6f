//! The CUDA backend: the same pipeline steps as `backend::cpu`, on one GPU.
//!
//! - `device`: the narrow device interface, its real (cudarc) and emulated implementations.
//! - `context`: the device with its compute and copy streams, typed buffers, `launch!`.
//! - thin wrappers, one per kernel family (the only `unsafe` besides `blas`): `score`, `topk`,
//!   `compact`, `cholesky` (+ cuSOLVER), `forward` (norm/rope/attention/elementwise/embed),
//!   `stats`; `blas` holds the cuBLAS calls.
//! - safe compositions: `layer` (the forward of a layer over a chunk of windows), `restore` (the
//!   device restoration with damping escalation), `weights` (device copies of layer weights,
//!   prefetch through pinned staging buffers on the copy stream).
//!
//! State on the device between steps: the hidden states of every calibration window
//! (`[N·L, d]`, updated in place: inputs → after the pruned attention → layer output) and the
//! dense attention context (`[N·L, heads·hd]`, from `attn_stats` to `mlp_stats`). Everything else
//! is per chunk of whole windows (`FASP_CUDA_CHUNK_TOKENS`, default 8192 tokens), so memory
//! stays bounded; attention scores are formed for a sub-batch of windows at a time (≤ 512 MiB).
//! `advance` recomputes the kept intermediate channels from the kept W1 rows instead of keeping
//! the whole activation from `mlp_stats` (same values; far less memory).
//!
//! The statistics stay on the device (`stats::DeviceStats`: `H` in fp32; only `diag(H)`, `Σx`
//! and the token count are downloaded). A pair is pruned on that data in one call (`prune_pair`):
//! FASP scores by the fused kernel on the resident `W2` (the weight cache's copy, not uploaded
//! again) and `diag(H)`, column scores (O(n)) to the host for the unit sums, the top-k radix
//! select on the fp64 unit scores (exactly the CPU's order), then `restore::restore_resident`
//! (gathers, blocked Cholesky kernels and triangular solves with |P| right-hand sides;
//! `FASP_CUDA_SOLVER=cusolver` selects cuSOLVER potrf/potrs as the cross-check, `cublas-trailing`
//! the kernels with cuBLAS trailing updates) and the reconstruction errors from its own products.
//! Only `W2'` (for the writer) and O(n) results are downloaded. `W2'` stays resident too: the
//! next step (`mlp_stats` for o_proj, `advance` for down_proj) uses it instead of an upload, and
//! `advance` gathers the kept W1 rows from the dense copies on the device.

pub mod blas;
pub mod cholesky;
pub mod compact;
pub mod context;
pub mod device;
pub mod forward;
pub mod layer;
pub mod restore;
pub mod score;
pub mod stats;
pub mod topk;
pub mod weights;

pub use context::{cuda_usable, Bf16, Gpu};

use super::{done, layer_input, pair_error, pruned, stats as stats_token, Attn, Backend, Done, LayerInput, Mlp, PairJob, PairMarker};
use super::{PairSeconds, Pruned, PrunedPair, Scoring, Stats};
use crate::error::{FaspError, Result};
use crate::model::{LayerWeights, Linear, ModelConfig};
use crate::prune::select::complement;
use crate::tensor::Mat;
use context::DeviceBuf;
use layer::{AttnScratch, AttnWeights, MlpScratch, MlpWeights};
use std::sync::Arc;
use std::time::Instant;
use weights::{DevLinear, TensorCache};

/// How the restoration factors and solves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Solver {
    /// The hand-written blocked Cholesky and triangular-solve kernels (default).
    Kernels,
    /// The same with cuBLAS ssyrk for the trailing updates.
    KernelsCublasTrailing,
    /// cuSOLVER spotrf/spotrs (the cross-check).
    Cusolver,
}

impl Solver {
    /// From `FASP_CUDA_SOLVER` (`kernels`, `cublas-trailing`, `cusolver`); default `kernels`.
    pub fn from_env() -> Result<Solver> {
        match std::env::var("FASP_CUDA_SOLVER").ok().as_deref().map(str::trim) {
            None | Some("") | Some("kernels") => Ok(Solver::Kernels),
            Some("cublas-trailing") => Ok(Solver::KernelsCublasTrailing),
            Some("cusolver") => Ok(Solver::Cusolver),
            Some(v) => Err(FaspError::Arg(format!("FASP_CUDA_SOLVER={v:?}: expected kernels, cublas-trailing or cusolver"))),
        }
    }
}

/// Default chunk of calibration tokens per device pass (the memory plan may choose less).
pub const DEFAULT_CHUNK_TOKENS: usize = crate::plan::MAX_CHUNK_TOKENS;

pub struct CudaBackend {
    gpu: Arc<Gpu>,
    pub solver: Solver,
    pub chunk_tokens: usize,
    /// Windows per attention sub-batch when the memory plan chose it (else from the score budget).
    pub attn_windows: Option<usize>,
    seqlen: usize,
    tokens: usize,
    hidden_width: usize,
    /// Hidden states of every window: the layer's input, or (after `mlp_stats`) the residual
    /// stream after the pruned attention.
    hidden: Option<DeviceBuf<f32>>,
    /// Whether `hidden` holds the post-attention residual (between `mlp_stats` and `advance`).
    mid: bool,
    /// Dense attention context and its width.
    ctx: Option<(DeviceBuf<f32>, usize)>,
    cache: TensorCache,
    inv_freq: Option<(Vec<f32>, DeviceBuf<f32>)>,
    /// Statistics of the pair being pruned (from `attn_stats`/`mlp_stats` to `prune_*`).
    pending: Option<stats::DeviceStats>,
    /// The last pair's `W2'`, kept for the step that uses it next.
    kept_w2: Option<KeptW2>,
    /// The dense up/gate of the current layer (from `mlp_stats`), for `advance`'s row gather.
    dense_w1: Option<(DevLinear, Option<DevLinear>)>,
}

/// A `W2'` left on the device, with the identity of the host copy the pipeline got.
struct KeptW2 {
    w: DeviceBuf<f32>,
    host: weights::Fingerprint,
}

impl KeptW2 {
    /// The device copy of `l` (weights from here, the small bias uploaded) when `l.w` is the
    /// matrix this was downloaded into (the pipeline moves it, never copies it); else a fresh upload.
    fn linear(kept: Option<KeptW2>, gpu: &Gpu, l: &Linear, what: &str) -> Result<DevLinear> {
        match kept {
            Some(k) if k.host == weights::fingerprint(&l.w.data) => Ok(DevLinear {
                w: Arc::new(k.w),
                b: l.b.as_ref().map(|b| gpu.upload(b, what).map(Arc::new)).transpose()?,
                out: l.w.rows,
                inp: l.w.cols,
            }),
            _ => TensorCache::fresh_linear(gpu, l, what),
        }
    }
}

fn missing(step: &str) -> FaspError {
    FaspError::Numerics(format!("pipeline step out of order: {step}"))
}

fn nonfinite(what: &str) -> FaspError {
    FaspError::Numerics(format!("non-finite values in the {what} during calibration"))
}

impl CudaBackend {
    /// Opens device 0. A clear `FaspError::Cuda` when kernels, driver, libraries or a device are
    /// missing.
    pub fn new() -> Result<CudaBackend> {
        Self::with_gpu(Gpu::new(0)?)
    }

    /// The emulated device (`--device emu`): the same kernels and host code on the CPU.
    pub fn emu() -> Result<CudaBackend> {
        Self::with_gpu(Gpu::emu()?)
    }

    pub fn with_gpu(gpu: Arc<Gpu>) -> Result<CudaBackend> {
        let chunk_tokens = match std::env::var("FASP_CUDA_CHUNK_TOKENS") {
            Ok(v) => v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| FaspError::Arg(format!("FASP_CUDA_CHUNK_TOKENS={v:?}: expected a positive integer")))?,
            Err(_) => DEFAULT_CHUNK_TOKENS,
        };
        Ok(CudaBackend {
            gpu,
            solver: Solver::from_env()?,
            chunk_tokens,
            attn_windows: None,
            seqlen: 0,
            tokens: 0,
            hidden_width: 0,
            hidden: None,
            mid: false,
            ctx: None,
            cache: TensorCache::default(),
            inv_freq: None,
            pending: None,
            kept_w2: None,
            dense_w1: None,
        })
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// The hidden states entering the next layer (after `advance`), downloaded.
    pub fn hidden(&self) -> Result<Option<Mat>> {
        match &self.hidden {
            None => Ok(None),
            Some(h) => {
                let data = self.gpu.download(h, self.tokens * self.hidden_width, "hidden states")?;
                Ok(Some(Mat::from_vec(self.tokens, self.hidden_width, data)))
            }
        }
    }

    fn windows(&self) -> usize {
        self.tokens / self.seqlen.max(1)
    }

    /// Windows per chunk and per attention sub-batch.
    fn plan(&self, cfg: &ModelConfig) -> (usize, usize) {
        let nwin = self.windows().max(1);
        let chunk = (self.chunk_tokens / self.seqlen.max(1)).clamp(1, nwin);
        let attn = match self.attn_windows {
            Some(a) => a.clamp(1, chunk),
            None => crate::plan::attn_windows_for(cfg, self.seqlen, chunk, crate::plan::ATTN_SCORE_BYTES),
        };
        (chunk, attn)
    }

    /// Chunks of whole windows: (first row, rows, windows).
    fn chunks(&self, chunk_windows: usize) -> Vec<(usize, usize, usize)> {
        let mut out = Vec::new();
        let mut w = 0;
        while w < self.windows() {
            let nw = chunk_windows.min(self.windows() - w);
            out.push((w * self.seqlen, nw * self.seqlen, nw));
            w += nw;
        }
        out
    }

    /// Score → select → gather → restore → errors on the resident statistics and `W2`; downloads
    /// `W2'` and O(n) results, keeps `W2'` for the next step.
    fn prune_pair<K: PairMarker>(&mut self, st: Stats<K>, job: &PairJob) -> Result<Pruned<K>> {
        let kind = K::KIND;
        let ds = self.pending.take().ok_or_else(|| missing("a pair pruned twice"))?;
        super::check_job(job, kind, &st.summary)?;
        let perr = |m: String| pair_error(job.layer, kind, m);
        let gpu = self.gpu.clone();
        let (rows, n) = (job.w2.w.rows, job.w2.w.cols);
        let t0 = Instant::now();
        let w2 = self.cache.get(&gpu, &job.w2.w.data, "W2")?;
        let colscore = match &job.scoring {
            Scoring::Fasp => {
                let mut hd = gpu.alloc::<f32>(n, "diag(H) (fp32)")?;
                stats::diag(&gpu, &ds.h, n, n, &mut hd)?;
                let mut out = gpu.alloc::<f32>(n, "column scores")?;
                score::column_scores(&gpu, &*w2, rows, n, &hd, &mut out, score::choose_path(&gpu, rows, n))?;
                gpu.download(&out, n, "column scores")?.into_iter().map(f64::from).collect()
            }
            Scoring::Columns(c) => c.clone(),
        };
        let scores = super::unit_scores(job, kind, &colscore)?;
        let kept_units = topk::top_k_f64(&gpu, &scores, job.k).map_err(perr)?;
        let cols = super::kept_cols(job, &kept_units);
        let p = complement(&cols, n);
        let score_select = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        let res = restore::Resident { w2: &w2, rows, n, h: &ds.h, hdiag: &st.summary.hdiag };
        let r = restore::restore_resident(&gpu, &res, &cols, &p, job.damp, job.restore, self.solver)?.map_err(perr)?;
        drop(ds);
        let w2_new = Mat::from_vec(rows, cols.len(), gpu.download(&r.w2, rows * cols.len(), "W2' (pruned weights)")?);
        self.kept_w2 = Some(KeptW2 { w: r.w2, host: weights::fingerprint(&w2_new.data) });
        let pair = PrunedPair {
            kept_units,
            cols,
            w2: w2_new,
            lambda: r.lambda,
            damp: r.damp,
            retries: r.retries,
            err2: r.err2,
            err2_no_restore: r.err2_no_restore,
            seconds: PairSeconds { score_select, restore: t0.elapsed().as_secs_f64() },
        };
        Ok(pruned(pair))
    }

    /// The rotary table of layer `l` on the device (uploaded again only when it differs from the
    /// previous layer's: Gemma-3's sliding and global layers have their own bases).
    fn rope_table(&mut self, cfg: &ModelConfig, l: usize) -> Result<()> {
        let table = layer::inv_freq(cfg, l);
        if table.is_empty() {
            self.inv_freq = None;
            return Ok(());
        }
        if self.inv_freq.as_ref().is_none_or(|(t, _)| *t != table) {
            let d = self.gpu.upload(&table, "rotary inv_freq")?;
            self.inv_freq = Some((table, d));
        }
        Ok(())
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> String {
        match self.gpu.kind() {
            device::DeviceKind::Cuda => format!("cuda ({})", self.gpu.describe()),
            device::DeviceKind::Emu => format!("emu ({})", self.gpu.describe()),
        }
    }

    fn begin(&mut self, inps: Mat, seqlen: usize) -> Result<LayerInput> {
        if !inps.is_finite() {
            return Err(nonfinite("embeddings"));
        }
        if seqlen == 0 || !inps.rows.is_multiple_of(seqlen) {
            return Err(FaspError::Calib(format!("{} tokens do not form windows of {seqlen}", inps.rows)));
        }
        if self.chunk_tokens < seqlen {
            return Err(FaspError::Arg(format!(
                "FASP_CUDA_CHUNK_TOKENS={} is smaller than one calibration window ({seqlen} tokens); chunks hold whole windows",
                self.chunk_tokens
            )));
        }
        self.hidden = None;
        self.ctx = None;
        self.pending = None;
        self.kept_w2 = None;
        self.dense_w1 = None;
        self.cache.clear(&self.gpu)?;
        self.hidden = Some(self.gpu.upload(&inps.data, "hidden states")?);
        self.seqlen = seqlen;
        self.tokens = inps.rows;
        self.hidden_width = inps.cols;
        self.mid = false;
        Ok(layer_input())
    }

    fn prefetch(&mut self, lw: &LayerWeights) -> Result<()> {
        let gpu = self.gpu.clone();
        self.cache.prefetch(&gpu, lw)
    }

    fn wants_prefetch(&self) -> bool {
        true
    }

    fn attn_stats(&mut self, _input: LayerInput, cfg: &ModelConfig, lw: &LayerWeights) -> Result<Stats<Attn>> {
        if self.hidden.is_none() {
            return Err(missing("attn_stats before begin"));
        }
        if self.mid {
            return Err(missing("attn_stats before advance"));
        }
        let nctx = cfg.heads * cfg.head_dim;
        if lw.v_units.len() != cfg.v_width() || lw.o.w.cols != nctx {
            return Err(FaspError::Cuda("the CUDA backend prunes dense layers only (this layer has pruned value units)".into()));
        }
        let gpu = self.gpu.clone();
        let w = AttnWeights {
            index: lw.index,
            norm: self.cache.norm(&gpu, &lw.attn_norm, "attention norm")?,
            q: self.cache.linear(&gpu, &lw.q, "q_proj")?,
            k: self.cache.linear(&gpu, &lw.k, "k_proj")?,
            v: self.cache.linear(&gpu, &lw.v, "v_proj")?,
            q_norm: lw.q_norm.as_ref().map(|n| self.cache.norm(&gpu, n, "q_norm")).transpose()?,
            k_norm: lw.k_norm.as_ref().map(|n| self.cache.norm(&gpu, n, "k_norm")).transpose()?,
        };
        self.rope_table(cfg, lw.index)?;
        let (chunk_w, attn_w) = self.plan(cfg);
        let mut sc = AttnScratch::new(&gpu, cfg, self.seqlen, chunk_w, attn_w)?;
        let mut ctx = gpu.alloc::<f32>(self.tokens * nctx, "attention context")?;
        let mut gram = stats::GramAccumulator::new(&gpu, nctx, chunk_w * self.seqlen)?;
        let mut flag = gpu.zeros::<i32>(1, "finite flag")?;
        let d = self.hidden_width;
        let hidden = self.hidden.as_ref().expect("checked above");
        let inv = self.inv_freq.as_ref().map(|(_, t)| t);
        for (r0, rows, nw) in self.chunks(chunk_w) {
            {
                let x = hidden.slice(r0 * d..(r0 + rows) * d);
                let mut c = ctx.slice_mut(r0 * nctx..(r0 + rows) * nctx);
                layer::attn_context(&gpu, cfg, &w, inv, &x, nw, self.seqlen, &mut sc, &mut c)?;
            }
            let c = ctx.slice(r0 * nctx..(r0 + rows) * nctx);
            forward::check_finite(&gpu, &c, rows * nctx, &mut flag)?;
            gram.add(&gpu, &c, rows)?;
        }
        if gpu.download(&flag, 1, "finite flag")?[0] != 0 {
            return Err(nonfinite("attention context"));
        }
        let ds = gram.finish(&gpu)?;
        let summary = ds.summary.clone();
        self.pending = Some(ds);
        self.ctx = Some((ctx, nctx));
        Ok(stats_token(summary))
    }

    fn skip_attn(&mut self, stats: Stats<Attn>) -> Done<Attn> {
        let _ = stats;
        self.pending = None;
        done()
    }

    fn prune_attn(&mut self, stats: Stats<Attn>, job: &PairJob) -> Result<Pruned<Attn>> {
        self.prune_pair(stats, job)
    }

    fn mlp_stats(&mut self, _done: Done<Attn>, cfg: &ModelConfig, lw: &LayerWeights, ctx_cols: &[usize]) -> Result<Stats<Mlp>> {
        if self.hidden.is_none() {
            return Err(missing("mlp_stats before begin"));
        }
        let (ctx, nctx) = self.ctx.take().ok_or_else(|| missing("mlp_stats before attn_stats"))?;
        let d = self.hidden_width;
        if lw.o.w.cols != ctx_cols.len() || lw.o.w.rows != d {
            return Err(FaspError::Cuda(format!(
                "o_proj is {}x{}, expected {d}x{} (the kept context columns)",
                lw.o.w.rows,
                lw.o.w.cols,
                ctx_cols.len()
            )));
        }
        let gpu = self.gpu.clone();
        let o = KeptW2::linear(self.kept_w2.take(), &gpu, &lw.o, "o_proj (restored)")?;
        let mw = MlpWeights {
            norm: self.cache.norm(&gpu, &lw.mlp_norm, "MLP norm")?,
            up: self.cache.linear(&gpu, &lw.up, "up_proj / fc1")?,
            gate: lw.gate.as_ref().map(|g| self.cache.linear(&gpu, g, "gate_proj")).transpose()?,
        };
        let post_attn = lw.post_attn_norm.as_ref().map(|n| self.cache.norm(&gpu, n, "post-attention norm")).transpose()?;
        let ffn = mw.up.out;
        let dense_w1 = (clone_linear(&mw.up), mw.gate.as_ref().map(clone_linear));
        let nk = ctx_cols.len();
        let gather = nk != nctx;
        let idx = if gather { Some(compact::upload_idx(&gpu, ctx_cols, "kept context columns")?) } else { None };
        let (chunk_w, _) = self.plan(cfg);
        let max_rows = chunk_w * self.seqlen;
        let mut kept = if gather { Some(gpu.alloc::<f32>(max_rows * nk, "kept context")?) } else { None };
        let mut sc = MlpScratch::new(&gpu, cfg, self.seqlen, chunk_w, ffn, mw.gate.is_some())?;
        let mut gram = stats::GramAccumulator::new(&gpu, ffn, max_rows)?;
        let mut flag = gpu.zeros::<i32>(1, "finite flag")?;
        let chunks = self.chunks(chunk_w);
        let hidden = self.hidden.as_mut().expect("checked above");
        for (r0, rows, _) in chunks {
            let c = ctx.slice(r0 * nctx..(r0 + rows) * nctx);
            match (&idx, kept.as_mut()) {
                (Some(idx), Some(buf)) => {
                    compact::gather_cols(&gpu, &c, rows, nctx, idx, nk, buf)?;
                    layer::linear(&gpu, &o, &*buf, &mut sc.tmp, rows)?;
                }
                _ => layer::linear(&gpu, &o, &c, &mut sc.tmp, rows)?,
            }
            {
                let mut h = hidden.slice_mut(r0 * d..(r0 + rows) * d);
                layer::residual(&gpu, cfg, post_attn.as_ref(), &mut sc, &mut h, rows)?;
            }
            let h = hidden.slice(r0 * d..(r0 + rows) * d);
            layer::mlp_act(&gpu, cfg, &mw, &h, rows, &mut sc)?;
            forward::check_finite(&gpu, &sc.act, rows * ffn, &mut flag)?;
            gram.add(&gpu, &sc.act, rows)?;
        }
        drop(ctx);
        self.mid = true;
        if gpu.download(&flag, 1, "finite flag")?[0] != 0 {
            return Err(nonfinite("MLP activation"));
        }
        let ds = gram.finish(&gpu)?;
        let summary = ds.summary.clone();
        self.pending = Some(ds);
        self.dense_w1 = Some(dense_w1);
        Ok(stats_token(summary))
    }

    fn skip_mlp(&mut self, stats: Stats<Mlp>) -> Done<Mlp> {
        let _ = stats;
        self.pending = None;
        done()
    }

    fn prune_mlp(&mut self, stats: Stats<Mlp>, job: &PairJob) -> Result<Pruned<Mlp>> {
        self.prune_pair(stats, job)
    }

    fn advance(&mut self, _done: Done<Mlp>, cfg: &ModelConfig, lw: &LayerWeights, mlp_cols: &[usize]) -> Result<LayerInput> {
        if !self.mid {
            return Err(missing("advance before mlp_stats"));
        }
        let k = mlp_cols.len();
        if lw.up.w.rows != k || lw.down.w.cols != k || lw.gate.as_ref().is_some_and(|g| g.w.rows != k) {
            return Err(FaspError::Cuda(format!(
                "advance expects W1 with the {k} kept rows and W2' with the {k} kept columns (got up {} rows, down {} columns)",
                lw.up.w.rows, lw.down.w.cols
            )));
        }
        let gpu = self.gpu.clone();
        let d = self.hidden_width;
        // the kept W1 rows: gathered on the device from the dense copies of mlp_stats
        let dense = self.dense_w1.take();
        let (up, gate) = match &dense {
            Some((up, gate)) if up.out >= k && gate.is_some() == lw.gate.is_some() => {
                let idx = compact::upload_idx(&gpu, mlp_cols, "kept MLP channels")?;
                (
                    kept_rows(&gpu, up, &lw.up, &idx, k)?,
                    gate.as_ref().zip(lw.gate.as_ref()).map(|(d, g)| kept_rows(&gpu, d, g, &idx, k)).transpose()?,
                )
            }
            _ => (
                TensorCache::fresh_linear(&gpu, &lw.up, "up_proj / fc1 (kept rows)")?,
                lw.gate.as_ref().map(|g| TensorCache::fresh_linear(&gpu, g, "gate_proj (kept rows)")).transpose()?,
            ),
        };
        drop(dense);
        let mw = MlpWeights { norm: self.cache.norm(&gpu, &lw.mlp_norm, "MLP norm")?, up, gate };
        let down = KeptW2::linear(self.kept_w2.take(), &gpu, &lw.down, "down_proj / fc2 (restored)")?;
        let post_mlp = lw.post_mlp_norm.as_ref().map(|n| self.cache.norm(&gpu, n, "post-MLP norm")).transpose()?;
        let (chunk_w, _) = self.plan(cfg);
        let mut sc = MlpScratch::new(&gpu, cfg, self.seqlen, chunk_w, k, mw.gate.is_some())?;
        let mut flag = gpu.zeros::<i32>(1, "finite flag")?;
        let chunks = self.chunks(chunk_w);
        let hidden = self.hidden.as_mut().ok_or_else(|| missing("advance before begin"))?;
        for (r0, rows, _) in chunks {
            {
                let h = hidden.slice(r0 * d..(r0 + rows) * d);
                layer::mlp_act(&gpu, cfg, &mw, &h, rows, &mut sc)?;
            }
            layer::linear(&gpu, &down, &sc.act, &mut sc.tmp, rows)?;
            let mut h = hidden.slice_mut(r0 * d..(r0 + rows) * d);
            layer::residual(&gpu, cfg, post_mlp.as_ref(), &mut sc, &mut h, rows)?;
            forward::check_finite(&gpu, &h, rows * d, &mut flag)?;
        }
        self.mid = false;
        self.cache.end_layer(&gpu)?;
        if gpu.download(&flag, 1, "finite flag")?[0] != 0 {
            return Err(nonfinite("layer output"));
        }
        Ok(layer_input())
    }

    fn device_counters(&self) -> Option<device::Counters> {
        Some(self.gpu.counters())
    }

    fn device_memory(&self) -> Option<(u64, u64)> {
        self.gpu.mem_info().ok().map(|(free, total)| (free as u64, total as u64))
    }

    fn set_chunking(&mut self, chunk_tokens: usize, attn_windows: usize) {
        self.chunk_tokens = chunk_tokens.max(1);
        self.attn_windows = Some(attn_windows.max(1));
    }

    fn reset_phase_peak(&self) {
        self.gpu.dev.reset_phase_peak()
    }
}

fn clone_linear(l: &DevLinear) -> DevLinear {
    DevLinear { w: l.w.clone(), b: l.b.clone(), out: l.out, inp: l.inp }
}

/// Rows `idx` (`k` of them) of the dense `d` on the device; the bias from the host's kept `l.b`.
fn kept_rows(gpu: &Gpu, d: &DevLinear, l: &Linear, idx: &DeviceBuf<i32>, k: usize) -> Result<DevLinear> {
    let mut w = gpu.alloc::<f32>(k * d.inp, "W1 (kept rows)")?;
    compact::gather_rows(gpu, &*d.w, d.out, d.inp, idx, k, &mut w)?;
    Ok(DevLinear {
        w: Arc::new(w),
        b: l.b.as_ref().map(|b| gpu.upload(b, "W1 bias (kept rows)").map(Arc::new)).transpose()?,
        out: k,
        inp: d.inp,
    })
}
