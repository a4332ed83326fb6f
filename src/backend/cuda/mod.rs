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
//! The per-pair math uses the device too: `column_scores` (fused score kernel), `top_k` (top-k
//! radix select on the fp64 scores, exactly the CPU's order), `restore` (blocked Cholesky kernels
//! and triangular solves; `FASP_CUDA_SOLVER=cusolver` selects cuSOLVER potrf/potrs as the
//! cross-check, `cublas-trailing` the kernels with cuBLAS trailing updates).

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

use super::{Backend, PairStats};
use crate::error::{FaspError, Result};
use crate::model::{LayerWeights, ModelConfig};
use crate::prune::restore::Restored;
use crate::tensor::{Gram, Mat};
use context::DeviceBuf;
use layer::{AttnScratch, AttnWeights, MlpScratch, MlpWeights};
use std::sync::Arc;
use weights::TensorCache;

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

    fn rope_table(&mut self, cfg: &ModelConfig) -> Result<()> {
        let table = layer::inv_freq(cfg);
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

    fn begin(&mut self, inps: Mat, seqlen: usize) -> Result<()> {
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
        self.cache.clear(&self.gpu)?;
        self.hidden = Some(self.gpu.upload(&inps.data, "hidden states")?);
        self.seqlen = seqlen;
        self.tokens = inps.rows;
        self.hidden_width = inps.cols;
        self.mid = false;
        Ok(())
    }

    fn prefetch(&mut self, lw: &LayerWeights) -> Result<()> {
        let gpu = self.gpu.clone();
        self.cache.prefetch(&gpu, lw)
    }

    fn wants_prefetch(&self) -> bool {
        true
    }

    fn attn_stats(&mut self, cfg: &ModelConfig, lw: &LayerWeights) -> Result<PairStats> {
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
            norm: self.cache.norm(&gpu, &lw.attn_norm, "attention norm")?,
            q: self.cache.linear(&gpu, &lw.q, "q_proj")?,
            k: self.cache.linear(&gpu, &lw.k, "k_proj")?,
            v: self.cache.linear(&gpu, &lw.v, "v_proj")?,
        };
        if let Some(m) = cfg.cuda_unsupported() {
            return Err(FaspError::Cuda(m));
        }
        if cfg.rope.is_some() {
            self.rope_table(cfg)?;
        }
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
        let stats = gram.finish(&gpu)?;
        self.ctx = Some((ctx, nctx));
        Ok(stats)
    }

    fn mlp_stats(&mut self, cfg: &ModelConfig, lw: &LayerWeights, ctx_cols: &[usize]) -> Result<PairStats> {
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
        let o = TensorCache::fresh_linear(&gpu, &lw.o, "o_proj (restored)")?;
        let mw = MlpWeights {
            norm: self.cache.norm(&gpu, &lw.mlp_norm, "MLP norm")?,
            up: self.cache.linear(&gpu, &lw.up, "up_proj / fc1")?,
            gate: lw.gate.as_ref().map(|g| self.cache.linear(&gpu, g, "gate_proj")).transpose()?,
        };
        let ffn = mw.up.out;
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
                forward::add_assign(&gpu, &mut h, &sc.tmp, rows * d)?;
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
        gram.finish(&gpu)
    }

    fn advance(&mut self, cfg: &ModelConfig, lw: &LayerWeights, mlp_cols: &[usize]) -> Result<()> {
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
        let mw = MlpWeights {
            norm: self.cache.norm(&gpu, &lw.mlp_norm, "MLP norm")?,
            up: TensorCache::fresh_linear(&gpu, &lw.up, "up_proj / fc1 (kept rows)")?,
            gate: lw.gate.as_ref().map(|g| TensorCache::fresh_linear(&gpu, g, "gate_proj (kept rows)")).transpose()?,
        };
        let down = TensorCache::fresh_linear(&gpu, &lw.down, "down_proj / fc2 (restored)")?;
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
            forward::add_assign(&gpu, &mut h, &sc.tmp, rows * d)?;
            forward::check_finite(&gpu, &h, rows * d, &mut flag)?;
        }
        self.mid = false;
        self.cache.end_layer(&gpu)?;
        if gpu.download(&flag, 1, "finite flag")?[0] != 0 {
            return Err(nonfinite("layer output"));
        }
        Ok(())
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

    fn column_scores(&self, w2: &Mat, hdiag: &[f64]) -> Result<Vec<f64>> {
        if w2.cols != hdiag.len() {
            return Err(FaspError::Numerics(format!("column scores: W2 has {} columns, diag(H) {}", w2.cols, hdiag.len())));
        }
        let gpu = &self.gpu;
        let dw = gpu.upload(&w2.data, "W2 (scores)")?;
        let h32: Vec<f32> = hdiag.iter().map(|&v| v as f32).collect();
        let dh = gpu.upload(&h32, "diag(H)")?;
        let mut out = gpu.alloc::<f32>(w2.cols, "column scores")?;
        score::column_scores(gpu, &dw, w2.rows, w2.cols, &dh, &mut out, score::choose_path(gpu, w2.rows, w2.cols))?;
        Ok(gpu.download(&out, w2.cols, "column scores")?.into_iter().map(f64::from).collect())
    }

    fn top_k(&self, scores: &[f64], k: usize) -> Result<Vec<usize>, String> {
        topk::top_k_f64(&self.gpu, scores, k)
    }

    fn restore(&self, w2: &Mat, h: &Gram, s: &[usize], p: &[usize], damp: f64) -> Result<Restored, String> {
        restore::restore(&self.gpu, w2, h, s, p, damp, self.solver)
    }
}
