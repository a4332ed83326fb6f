//! The GPU forward of one decoder layer over a chunk of whole calibration windows, composed from
//! the wrappers (safe Rust only). It reads the family's description (`model::arch::Arch`, through
//! the config) exactly where the CPU forward (`crate::forward`) does, and mirrors it step by step
//! so the two agree to fp32 rounding:
//!
//! - attention half: norm of the family's kind (LayerNorm, RMSNorm, `(1+w)` RMSNorm) → Q/K/V
//!   (cuBLAS, + whichever of the q/k/v biases the layer has) → per-head q/k norms (Qwen3,
//!   Gemma-3: the norm kernels over rows of `head_dim`) → rotary with the layer's own `inv_freq`
//!   table ([`inv_freq`]: per-layer-type bases, rope scaling) → per sub-batch of windows: split
//!   heads (GQA repeat) → `S = scale·QKᵀ` (batched GEMM; `scale` is the config's, `head_dim^-0.5`
//!   or `query_pre_attn_scalar^-0.5`) → causal softmax, or the sliding-window one on the layer's
//!   window → `PV` (batched GEMM) → merge heads into the context columns;
//! - MLP half: norm → up (+ gate, SiLU·mul or GELU-tanh·mul, or ReLU);
//! - residual branches ([`residual`]): the o_proj / down_proj output, through the family's post-norm
//!   where it has one (Gemma-3), added to the hidden states.
//!
//! The embedding scale (`√d`, Gemma-3) and the final logit soft-cap are not device work: the
//! pipeline embeds on the host (`forward::embed`) before `Backend::begin`, and logits and
//! perplexity are computed on the host (`eval`) from the CPU forward, for calibration and
//! evaluation alike.

use super::blas;
use super::context::Gpu;
use super::context::{DeviceBuf, DevicePtr, DevicePtrMut, DeviceSlice};
use super::forward as fw;
use super::weights::{DevLinear, DevNorm};
use crate::error::{FaspError, Result};
use crate::model::arch::{Activation, NormKind};
use crate::model::ModelConfig;

/// `y = norm(x)` of the family's kind (as `forward::norm_as`), per `d`-wide row.
#[allow(clippy::too_many_arguments)]
pub fn norm(
    gpu: &Gpu,
    kind: NormKind,
    n: &DevNorm,
    x: &impl DevicePtr<f32>,
    y: &mut impl DevicePtrMut<f32>,
    rows: usize,
    d: usize,
    eps: f32,
) -> Result<()> {
    match kind {
        NormKind::LayerNorm => fw::layernorm(gpu, x, Some(&*n.w), n.b.as_deref().map(|b| b as &dyn fw::DevicePtrF32), y, rows, d, eps),
        NormKind::RmsNorm => fw::rmsnorm(gpu, x, Some(&*n.w), y, rows, d, eps),
        NormKind::RmsNormPlusOne => fw::rmsnorm_plus_one(gpu, x, Some(&*n.w), y, rows, d, eps),
    }
}

/// `y = x Wᵀ + b` for `x[rows][inp]`.
pub fn linear(gpu: &Gpu, l: &DevLinear, x: &impl DevicePtr<f32>, y: &mut impl DevicePtrMut<f32>, rows: usize) -> Result<()> {
    blas::linear(gpu, x, &*l.w, y, rows, l.inp, l.out)?;
    if let Some(b) = &l.b {
        fw::add_bias(gpu, y, &**b, rows, l.out)?;
    }
    Ok(())
}

/// The attention half's weights on the device, and the layer's index (its window and rotary).
pub struct AttnWeights {
    pub index: usize,
    pub norm: DevNorm,
    pub q: DevLinear,
    pub k: DevLinear,
    pub v: DevLinear,
    /// Per-head norms of Q and K (`[head_dim]`), where the family has them.
    pub q_norm: Option<DevNorm>,
    pub k_norm: Option<DevNorm>,
}

/// Per-chunk scratch of the attention half.
pub struct AttnScratch {
    xn: DeviceBuf<f32>,
    q: DeviceBuf<f32>,
    k: DeviceBuf<f32>,
    v: DeviceBuf<f32>,
    qh: DeviceBuf<f32>,
    kh: DeviceBuf<f32>,
    vh: DeviceBuf<f32>,
    oh: DeviceBuf<f32>,
    s: DeviceBuf<f32>,
    /// Windows per chunk and per attention sub-batch.
    pub chunk_windows: usize,
    pub attn_windows: usize,
}

impl AttnScratch {
    pub fn new(gpu: &Gpu, cfg: &ModelConfig, seqlen: usize, chunk_windows: usize, attn_windows: usize) -> Result<AttnScratch> {
        let t = chunk_windows * seqlen;
        let (nq, nk, nv) = (cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.v_width());
        let heads_elems = attn_windows * cfg.heads * seqlen * cfg.head_dim;
        Ok(AttnScratch {
            xn: gpu.alloc(t * cfg.hidden, "normed hidden states")?,
            q: gpu.alloc(t * nq, "Q")?,
            k: gpu.alloc(t * nk, "K")?,
            v: gpu.alloc(t * nv, "V")?,
            qh: gpu.alloc(heads_elems, "Q heads")?,
            kh: gpu.alloc(heads_elems, "K heads")?,
            vh: gpu.alloc(heads_elems, "V heads")?,
            oh: gpu.alloc(heads_elems, "context heads")?,
            s: gpu.alloc(attn_windows * cfg.heads * seqlen * seqlen, "attention scores")?,
            chunk_windows,
            attn_windows,
        })
    }
}

/// The dense attention context `ctx[nwin*L][heads*hd]` of the hidden states `x[nwin*L][d]`
/// (same column layout as `forward::attention` with every V unit present).
#[allow(clippy::too_many_arguments)]
pub fn attn_context(
    gpu: &Gpu,
    cfg: &ModelConfig,
    w: &AttnWeights,
    inv_freq: Option<&DeviceBuf<f32>>,
    x: &impl DevicePtr<f32>,
    nwin: usize,
    seqlen: usize,
    sc: &mut AttnScratch,
    ctx: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    let (d, hd, heads, kvh, g) = (cfg.hidden, cfg.head_dim, cfg.heads, cfg.kv_heads, cfg.group());
    let (nq, nk, nv) = (heads * hd, kvh * hd, cfg.v_width());
    if nwin > sc.chunk_windows {
        return Err(FaspError::Cuda(format!("attention chunk of {nwin} windows exceeds the scratch ({})", sc.chunk_windows)));
    }
    if w.q.out != nq || w.k.out != nk || w.v.out != nv || w.v.out != kvh * hd {
        return Err(FaspError::Cuda(format!(
            "the CUDA attention needs a dense layer (q {} k {} v {} rows for {heads} heads, {kvh} kv heads of {hd})",
            w.q.out, w.k.out, w.v.out
        )));
    }
    let t = nwin * seqlen;
    let (kind, eps) = (cfg.arch().norm, cfg.norm_eps);
    norm(gpu, kind, &w.norm, x, &mut sc.xn, t, d, eps)?;
    linear(gpu, &w.q, &sc.xn, &mut sc.q, t)?;
    linear(gpu, &w.k, &sc.xn, &mut sc.k, t)?;
    linear(gpu, &w.v, &sc.xn, &mut sc.v, t)?;
    // per-head norms, in place: rows of head_dim over [t][heads*hd]
    for (n, buf, nh) in [(&w.q_norm, &mut sc.q, heads), (&w.k_norm, &mut sc.k, kvh)] {
        if let Some(n) = n {
            let plus_one = match kind {
                NormKind::RmsNorm => false,
                NormKind::RmsNormPlusOne => true,
                NormKind::LayerNorm => return Err(FaspError::Cuda("q/k norms are RMS norms".into())),
            };
            fw::rmsnorm_in_place(gpu, plus_one, &*n.w, buf, t * nh, hd, eps)?;
        }
    }
    if let Some(r) = cfg.layer_rope(w.index) {
        let f = inv_freq.ok_or_else(|| FaspError::Cuda(format!("layer {}: rotary needs the layer's inv_freq table", w.index)))?;
        fw::rope(gpu, &mut sc.q, t, heads, hd, nq, seqlen, r.theta, Some(f))?;
        fw::rope(gpu, &mut sc.k, t, kvh, hd, nk, seqlen, r.theta, Some(f))?;
    }
    let scale = cfg.attn_scale;
    let window = cfg.window(w.index);
    let mut w0 = 0;
    while w0 < nwin {
        let wb = sc.attn_windows.min(nwin - w0);
        let (r0, r1) = (w0 * seqlen, (w0 + wb) * seqlen);
        let nmat = wb * heads;
        fw::split_heads(gpu, &sc.q.slice(r0 * nq..r1 * nq), &mut sc.qh, wb, seqlen, heads, hd, nq, 0, 1)?;
        fw::split_heads(gpu, &sc.k.slice(r0 * nk..r1 * nk), &mut sc.kh, wb, seqlen, kvh, hd, nk, 0, g)?;
        fw::split_heads(gpu, &sc.v.slice(r0 * nv..r1 * nv), &mut sc.vh, wb, seqlen, kvh, hd, nv, 0, g)?;
        // the CPU scales inside the GEMM (alpha) and then takes a plain softmax: same here
        blas::attn_scores(gpu, &sc.qh, &sc.kh, &mut sc.s, nmat, seqlen, hd, scale)?;
        match window {
            Some(win) if win < seqlen => fw::softmax_window(gpu, &mut sc.s, nmat, seqlen, 1.0, win)?,
            _ => fw::softmax_causal(gpu, &mut sc.s, nmat, seqlen, 1.0)?,
        }
        blas::attn_context(gpu, &sc.s, &sc.vh, &mut sc.oh, nmat, seqlen, hd)?;
        let mut out = ctx_rows(ctx, r0 * nq, r1 * nq)?;
        fw::merge_heads(gpu, &sc.oh, &mut out, wb, seqlen, heads, hd)?;
        w0 += wb;
    }
    Ok(())
}

/// Rows of a mutable device buffer as a sub-view (`DevicePtrMut` has no slicing of its own).
fn ctx_rows<'a, D: DevicePtrMut<f32>>(ctx: &'a mut D, from: usize, to: usize) -> Result<SubMut<'a, D>> {
    if to > ctx.len() {
        return Err(FaspError::Cuda(format!("context rows {from}..{to} beyond {}", ctx.len())));
    }
    Ok(SubMut { inner: ctx, from, to })
}

/// A `[from, to)` window of a `DevicePtrMut<f32>`.
pub struct SubMut<'a, D: DevicePtrMut<f32>> {
    inner: &'a mut D,
    from: usize,
    to: usize,
}

impl<D: DevicePtrMut<f32>> DeviceSlice<f32> for SubMut<'_, D> {
    fn len(&self) -> usize {
        self.to - self.from
    }
}

impl<D: DevicePtrMut<f32>> DevicePtr<f32> for SubMut<'_, D> {
    fn addr(&self) -> u64 {
        self.inner.addr() + (self.from * 4) as u64
    }
}

impl<D: DevicePtrMut<f32>> DevicePtrMut<f32> for SubMut<'_, D> {}

/// The MLP half's weights on the device (`up` = fc1 / up_proj, `gate` = gate_proj).
pub struct MlpWeights {
    pub norm: DevNorm,
    pub up: DevLinear,
    pub gate: Option<DevLinear>,
}

/// Per-chunk scratch of the MLP half.
pub struct MlpScratch {
    xn: DeviceBuf<f32>,
    gate: Option<DeviceBuf<f32>>,
    pub act: DeviceBuf<f32>,
    pub tmp: DeviceBuf<f32>,
    pub chunk_windows: usize,
}

impl MlpScratch {
    /// `width` = the intermediate width the activations will have (all or the kept channels).
    pub fn new(gpu: &Gpu, cfg: &ModelConfig, seqlen: usize, chunk_windows: usize, width: usize, gated: bool) -> Result<MlpScratch> {
        let t = chunk_windows * seqlen;
        Ok(MlpScratch {
            xn: gpu.alloc(t * cfg.hidden, "normed hidden states")?,
            gate: if gated { Some(gpu.alloc(t * width, "gate activations")?) } else { None },
            act: gpu.alloc(t * width, "MLP activations")?,
            tmp: gpu.alloc(t * cfg.hidden, "residual branch")?,
            chunk_windows,
        })
    }
}

/// The activated intermediate `act[rows][up.out]` of the hidden states `x[rows][d]` into
/// `sc.act`: ReLU(fc1) without a gate (OPT), else the family's GLU: SiLU(gate)·up or
/// up·GELU-tanh(gate).
pub fn mlp_act(gpu: &Gpu, cfg: &ModelConfig, w: &MlpWeights, x: &impl DevicePtr<f32>, rows: usize, sc: &mut MlpScratch) -> Result<()> {
    let width = w.up.out;
    norm(gpu, cfg.arch().norm, &w.norm, x, &mut sc.xn, rows, cfg.hidden, cfg.norm_eps)?;
    linear(gpu, &w.up, &sc.xn, &mut sc.act, rows)?;
    match (&w.gate, sc.gate.as_mut()) {
        (None, _) => fw::relu(gpu, &mut sc.act, rows * width),
        (Some(gw), Some(gbuf)) => {
            if gw.out != width {
                return Err(FaspError::Cuda(format!("gate has {} rows, up {width}", gw.out)));
            }
            linear(gpu, gw, &sc.xn, gbuf, rows)?;
            match cfg.arch().activation {
                Activation::GeluTanhGlu => fw::gelu_tanh_mul_into_up(gpu, gbuf, &mut sc.act, rows * width),
                Activation::SiluGlu => fw::silu_mul_into_up(gpu, gbuf, &mut sc.act, rows * width),
                Activation::Relu => Err(FaspError::Cuda("a gate on a ReLU MLP".into())),
            }
        }
        (Some(_), None) => Err(FaspError::Cuda("MLP scratch allocated without a gate buffer".into())),
    }
}

/// `h += post(sc.tmp)` over `rows` rows: the residual add of a branch whose output (o_proj or
/// down_proj, bias included) is in `sc.tmp`, through the family's post-norm when the layer has
/// one (as `forward::attn_residual` / `forward::mlp_residual`). The post-norm writes into the
/// scratch's normed-input buffer, free at that point.
pub fn residual(
    gpu: &Gpu,
    cfg: &ModelConfig,
    post: Option<&DevNorm>,
    sc: &mut MlpScratch,
    h: &mut impl DevicePtrMut<f32>,
    rows: usize,
) -> Result<()> {
    let n = rows * cfg.hidden;
    match post {
        None => fw::add_assign(gpu, h, &sc.tmp, n),
        Some(p) => {
            norm(gpu, cfg.arch().norm, p, &sc.tmp, &mut sc.xn, rows, cfg.hidden, cfg.norm_eps)?;
            fw::add_assign(gpu, h, &sc.xn, n)
        }
    }
}

/// The rotary frequencies of layer `l` exactly as the CPU computes them (`config::Rope::inv_freq`
/// of `cfg.layer_rope(l)`: the sliding layers' own base where the family has one, rope scaling
/// included); empty without rotary.
pub fn inv_freq(cfg: &ModelConfig, l: usize) -> Vec<f32> {
    cfg.layer_rope(l).map_or(Vec::new(), |r| r.inv_freq(cfg.head_dim))
}
