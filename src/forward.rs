//! The CPU forward pass in f32 (the reference), for every family, driven by its description
//! (`model::arch::Arch`): LayerNorm / RMSNorm / `(1+w)` RMSNorm, pre- and post-norms, learned or
//! rotary positions (HF's `rotate_half` layout, with the config's rope scaling and per-layer-type
//! bases), q/k norms, GQA, full or sliding-window causal attention, ReLU / SiLU-GLU / GELU-tanh-GLU,
//! the embedding scale and the final logit soft-cap.
//!
//! Activations are row-major `[tokens, features]` with the calibration or evaluation windows
//! stacked: token `t` of window `w` is row `w * seqlen + t`. There is no padding, so positions
//! restart at 0 in every window. Attention is causal within a window.
//!
//! Attention works on any subset of V rows (`v_units`), which is how a FASP compact layer
//! (different value widths per KV head) runs through the same code as a dense one.

use crate::math;
use crate::model::arch::{ctx_layout, Activation, NormKind, Positions};
use crate::model::{LayerWeights, Linear, ModelConfig, Norm};
use crate::tensor::{linear, Mat};
use faer::{linalg::matmul::matmul, Accum, Par};
use rayon::prelude::*;

/// Token embeddings, times `sqrt(hidden)` where the family scales them, plus learned positions
/// (with the family's offset, OPT: 2).
pub fn embed(cfg: &ModelConfig, emb: &Mat, positions: Option<&Mat>, ids: &[u32], seqlen: usize) -> Mat {
    let a = cfg.arch();
    let offset = match a.positions {
        Positions::Learned { offset } => offset,
        Positions::Rotary => 0,
    };
    // transformers: `embed(ids) * torch.tensor(hidden ** 0.5).to(weight.dtype)`
    let scale = a.embed_scale.then(|| (cfg.hidden as f64).sqrt() as f32);
    let mut x = Mat::zeros(ids.len(), cfg.hidden);
    for (t, &id) in ids.iter().enumerate() {
        let row = x.row_mut(t);
        row.copy_from_slice(emb.row(id as usize));
        if let Some(s) = scale {
            row.iter_mut().for_each(|v| *v *= s);
        }
        if let Some(pos) = positions {
            for (v, p) in row.iter_mut().zip(pos.row(t % seqlen + offset)) {
                *v += *p;
            }
        }
    }
    x
}

/// LayerNorm (with bias) or RMSNorm (without), statistics in f32 like HF.
pub fn norm(x: &Mat, n: &Norm, eps: f32) -> Mat {
    norm_as(x, n, if n.b.is_some() { NormKind::LayerNorm } else { NormKind::RmsNorm }, eps)
}

/// A norm of the given kind over each row of `x`.
pub fn norm_as(x: &Mat, n: &Norm, kind: NormKind, eps: f32) -> Mat {
    let mut y = x.clone();
    norm_rows(&mut y.data, x.cols, n, kind, eps);
    y
}

/// A norm over each `width`-wide row of `data`, in place.
fn norm_rows(data: &mut [f32], width: usize, n: &Norm, kind: NormKind, eps: f32) {
    // Element-wise work stays on one thread: it is memory-bound, and rayon's scheduling cost was
    // measured to dominate it (25x slower than this loop on a busy 2-core machine).
    data.chunks_mut(width.max(1)).for_each(|row| {
        let d = row.len() as f32;
        match (kind, &n.b) {
            (NormKind::LayerNorm, b) => {
                let mean = row.iter().sum::<f32>() / d;
                let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d;
                let inv = 1.0 / (var + eps).sqrt();
                for (i, (v, w)) in row.iter_mut().zip(&n.w).enumerate() {
                    *v = (*v - mean) * inv * w + b.as_ref().map_or(0.0, |b| b[i]);
                }
            }
            (NormKind::RmsNorm, _) => {
                let ms = row.iter().map(|v| v * v).sum::<f32>() / d;
                let inv = 1.0 / (ms + eps).sqrt();
                for (v, w) in row.iter_mut().zip(&n.w) {
                    *v = w * (*v * inv);
                }
            }
            (NormKind::RmsNormPlusOne, _) => {
                // transformers' Gemma: `norm(x.float()) * (1.0 + weight.float())`
                let ms = row.iter().map(|v| v * v).sum::<f32>() / d;
                let inv = 1.0 / (ms + eps).sqrt();
                for (v, w) in row.iter_mut().zip(&n.w) {
                    *v = (*v * inv) * (1.0 + w);
                }
            }
        }
    });
}

/// Rotary embedding in place on `[tokens, heads * hd]`, HF `rotate_half` layout, with the plain
/// `1/theta^(2i/hd)` frequencies.
pub fn rope(x: &mut Mat, heads: usize, hd: usize, theta: f32, seqlen: usize) {
    let inv_freq: Vec<f32> = (0..hd / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / hd as f32)).collect();
    rope_freqs(x, heads, hd, &inv_freq, seqlen);
}

/// Rotary embedding in place on `[tokens, heads * hd]` with the given `inv_freq` (hd/2 values):
/// `x' = x cos + rotate_half(x) sin` with `rotate_half([a, b]) = [-b, a]`.
pub fn rope_freqs(x: &mut Mat, heads: usize, hd: usize, inv_freq: &[f32], seqlen: usize) {
    let half = hd / 2;
    // (sin, cos) per position and frequency, as HF computes them: angle = pos * inv_freq in f32
    let table: Vec<(f32, f32)> = (0..seqlen).flat_map(|p| inv_freq.iter().map(move |f| (p as f32 * f).sin_cos())).collect();
    x.data.chunks_mut(heads * hd).enumerate().for_each(|(t, row)| {
        let sc = &table[(t % seqlen) * half..(t % seqlen + 1) * half];
        for h in 0..heads {
            let v = &mut row[h * hd..(h + 1) * hd];
            for i in 0..half {
                let (s, c) = sc[i];
                let (a, b) = (v[i], v[i + half]);
                v[i] = a * c - b * s;
                v[i + half] = b * c + a * s;
            }
        }
    });
}

/// Query rows per block of the causal attention.
const ATTN_BLOCK: usize = 64;

/// Causal attention over stacked windows. `q` is `[T, heads*hd]`, `k` is `[T, kv_heads*hd]`,
/// `v` is `[T, v_units.len()]` with its columns being the V rows `v_units`. Returns the context
/// `[T, group * v_units.len()]` with columns in `arch::ctx_layout` order.
pub fn attention(cfg: &ModelConfig, q: &Mat, k: &Mat, v: &Mat, v_units: &[usize], seqlen: usize) -> Mat {
    attention_windowed(cfg, q, k, v, v_units, seqlen, None)
}

/// [`attention`] with an optional sliding window `W`: a query at t sees keys t−W < s ≤ t.
pub fn attention_windowed(cfg: &ModelConfig, q: &Mat, k: &Mat, v: &Mat, v_units: &[usize], seqlen: usize, window: Option<usize>) -> Mat {
    let (hd, g) = (cfg.head_dim, cfg.group());
    let t_all = q.rows;
    let windows = t_all / seqlen;
    let layout = ctx_layout(cfg, v_units);
    // the context columns of each head: (first column, unit indices)
    let mut head_cols: Vec<(usize, Vec<usize>)> = vec![(usize::MAX, Vec::new()); cfg.heads];
    for (col, &(h, i)) in layout.iter().enumerate() {
        if head_cols[h].0 == usize::MAX {
            head_cols[h].0 = col;
        }
        head_cols[h].1.push(i);
    }
    let scale = cfg.attn_scale;
    let tasks: Vec<(usize, usize)> = (0..windows).flat_map(|w| (0..cfg.heads).map(move |h| (w, h))).collect();
    let parts: Vec<(usize, usize, Mat)> = tasks
        .par_iter()
        .filter(|&&(_, h)| !head_cols[h].1.is_empty())
        .map(|&(w, h)| {
            let kv = h / g;
            let rows = w * seqlen..(w + 1) * seqlen;
            let take = |m: &Mat, cols: &mut dyn Iterator<Item = usize>| -> Mat {
                let cols: Vec<usize> = cols.collect();
                let mut out = Mat::zeros(seqlen, cols.len());
                for (i, r) in rows.clone().enumerate() {
                    let src = m.row(r);
                    for (j, &c) in cols.iter().enumerate() {
                        out.data[i * cols.len() + j] = src[c];
                    }
                }
                out
            };
            let qh = take(q, &mut (h * hd..(h + 1) * hd));
            let kh = take(k, &mut (kv * hd..(kv + 1) * hd));
            let vh = take(v, &mut head_cols[h].1.iter().copied());
            // Causal, in blocks of query rows: rows b0..b1 only need keys 0..b1, which halves the
            // score and context work of long windows against a full L x L product.
            let mut ctx = Mat::zeros(seqlen, vh.cols);
            for b0 in (0..seqlen).step_by(ATTN_BLOCK) {
                let b1 = (b0 + ATTN_BLOCK).min(seqlen);
                let mut s = Mat::zeros(b1 - b0, b1);
                matmul(s.view_mut(), Accum::Replace, qh.view().subrows(b0, b1 - b0), kh.view().subrows(0, b1).transpose(), scale, Par::Seq);
                for r in 0..b1 - b0 {
                    let i = b0 + r; // this row's position: it sees keys lo..=i
                    let lo = window.map_or(0, |w| (i + 1).saturating_sub(w));
                    let row = s.row_mut(r);
                    math::softmax(&mut row[lo..=i]);
                    row[..lo].fill(0.0);
                    row[i + 1..].fill(0.0);
                }
                matmul(ctx.view_mut().subrows_mut(b0, b1 - b0), Accum::Replace, s.view(), vh.view().subrows(0, b1), 1.0f32, Par::Seq);
            }
            (w, h, ctx)
        })
        .collect();
    let mut out = Mat::zeros(t_all, layout.len());
    for (w, h, ctx) in parts {
        let c0 = head_cols[h].0;
        for i in 0..seqlen {
            out.row_mut(w * seqlen + i)[c0..c0 + ctx.cols].copy_from_slice(ctx.row(i));
        }
    }
    out
}

/// Per-head norm in place on `[tokens, heads * hd]` (q_norm / k_norm).
fn head_norm(x: &mut Mat, n: &Norm, kind: NormKind, eps: f32, hd: usize) {
    norm_rows(&mut x.data, hd, n, kind, eps);
}

/// The attention half up to the o_proj input: the context `X` of the attention pair.
pub fn attn_context(cfg: &ModelConfig, lw: &LayerWeights, h: &Mat, seqlen: usize) -> Mat {
    let kind = cfg.arch().norm;
    let (eps, hd) = (cfg.norm_eps, cfg.head_dim);
    let x = norm_as(h, &lw.attn_norm, kind, eps);
    let mut q = linear(&x, &lw.q.w, lw.q.b.as_deref());
    let mut k = linear(&x, &lw.k.w, lw.k.b.as_deref());
    let v = linear(&x, &lw.v.w, lw.v.b.as_deref());
    if let Some(n) = &lw.q_norm {
        head_norm(&mut q, n, kind, eps, hd);
    }
    if let Some(n) = &lw.k_norm {
        head_norm(&mut k, n, kind, eps, hd);
    }
    if let Some(r) = cfg.layer_rope(lw.index) {
        let f = r.inv_freq(hd);
        rope_freqs(&mut q, cfg.heads, hd, &f, seqlen);
        rope_freqs(&mut k, cfg.kv_heads, hd, &f, seqlen);
    }
    attention_windowed(cfg, &q, &k, &v, &lw.v_units, seqlen, cfg.window(lw.index))
}

/// `h + x Wᵀ + b`: a residual branch (o_proj on the context, or fc2/down_proj on the activation).
pub fn add_linear(h: &Mat, o: &Linear, ctx: &Mat) -> Mat {
    let mut out = linear(ctx, &o.w, o.b.as_deref());
    out.add_assign(h);
    out
}

/// `h + post(x Wᵀ + b)`: a residual branch with the family's optional post-norm.
fn residual(cfg: &ModelConfig, h: &Mat, w: &Linear, post: Option<&Norm>, x: &Mat) -> Mat {
    match post {
        None => add_linear(h, w, x),
        Some(n) => {
            let mut out = norm_as(&linear(x, &w.w, w.b.as_deref()), n, cfg.arch().norm, cfg.norm_eps);
            out.add_assign(h);
            out
        }
    }
}

/// The residual stream after attention: `h + post_attn_norm(o_proj(ctx))` (no post-norm in most families).
/// `ctx` has the columns `lw.o` expects.
pub fn attn_residual(cfg: &ModelConfig, lw: &LayerWeights, h: &Mat, ctx: &Mat) -> Mat {
    residual(cfg, h, &lw.o, lw.post_attn_norm.as_ref(), ctx)
}

/// The layer output: `h + post_mlp_norm(down(act))`. `act` has the columns `lw.down` expects.
pub fn mlp_residual(cfg: &ModelConfig, lw: &LayerWeights, h: &Mat, act: &Mat) -> Mat {
    residual(cfg, h, &lw.down, lw.post_mlp_norm.as_ref(), act)
}

/// GELU, tanh approximation, as PyTorch computes it in f32.
pub fn gelu_tanh(x: f32) -> f32 {
    let beta = (std::f64::consts::SQRT_2 * std::f64::consts::FRAC_2_SQRT_PI * 0.5) as f32;
    let inner = beta * (x + 0.044715 * (x * x * x));
    0.5 * x * (1.0 + inner.tanh())
}

/// The MLP half up to the fc2/down_proj input: the activated intermediate `X` of the MLP pair.
pub fn mlp_act(cfg: &ModelConfig, lw: &LayerWeights, h: &Mat) -> Mat {
    let x = norm_as(h, &lw.mlp_norm, cfg.arch().norm, cfg.norm_eps);
    let mut up = linear(&x, &lw.up.w, lw.up.b.as_deref());
    match (&lw.gate, cfg.arch().activation) {
        (None, _) => up.data.iter_mut().for_each(|v| *v = v.max(0.0)),
        (Some(gate), act) => {
            let g = linear(&x, &gate.w, gate.b.as_deref());
            match act {
                Activation::GeluTanhGlu => up.data.iter_mut().zip(&g.data).for_each(|(u, &gv)| *u *= gelu_tanh(gv)),
                _ => up.data.iter_mut().zip(&g.data).for_each(|(u, &gv)| *u *= gv / (1.0 + math::exp(-gv))),
            }
        }
    }
    up
}

/// One whole decoder layer.
pub fn layer(cfg: &ModelConfig, lw: &LayerWeights, h: &Mat, seqlen: usize) -> Mat {
    let ctx = attn_context(cfg, lw, h, seqlen);
    let h = attn_residual(cfg, lw, h, &ctx);
    let act = mlp_act(cfg, lw, &h);
    mlp_residual(cfg, lw, &h, &act)
}

/// Final norm and LM head: `[T, vocab]` logits, soft-capped where the config says so.
pub fn logits(cfg: &ModelConfig, final_norm: &Norm, head: &Mat, h: &Mat) -> Mat {
    let x = norm_as(h, final_norm, cfg.arch().norm, cfg.norm_eps);
    let mut out = linear(&x, head, None);
    if let Some(cap) = cfg.final_logit_softcap {
        out.data.iter_mut().for_each(|v| *v = (*v / cap).tanh() * cap);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The block-causal attention against a plain full-matrix one, over windows that span several
    /// blocks and end in a partial one, with GQA and a pruned (non-contiguous) set of V units.
    #[test]
    fn block_causal_attention_equals_the_full_masked_product() {
        let cfg = crate::model::config::tiny_gqa_config();
        let (seqlen, windows, hd) = (2 * ATTN_BLOCK + 22, 2, 8);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut rand_mat = |r: usize, c: usize| {
            let mut m = Mat::zeros(r, c);
            m.data.iter_mut().for_each(|x| *x = rng.random_range(-2.0f32..2.0));
            m
        };
        let t = seqlen * windows;
        let q = rand_mat(t, 4 * hd);
        let k = rand_mat(t, 2 * hd);
        let units: Vec<usize> = vec![0, 3, 5, 8, 9, 15];
        let v = rand_mat(t, units.len());
        let got = attention(&cfg, &q, &k, &v, &units, seqlen);

        let layout = ctx_layout(&cfg, &units);
        assert_eq!((got.rows, got.cols), (t, layout.len()));
        let mut worst = 0.0f32;
        for w in 0..windows {
            for (col, &(h, ui)) in layout.iter().enumerate() {
                let kv = h / cfg.group();
                for i in 0..seqlen {
                    let qi = &q.row(w * seqlen + i)[h * hd..(h + 1) * hd];
                    let s: Vec<f64> = (0..=i)
                        .map(|j| {
                            let kj = &k.row(w * seqlen + j)[kv * hd..(kv + 1) * hd];
                            qi.iter().zip(kj).map(|(a, b)| (a * b) as f64).sum::<f64>() / (hd as f64).sqrt()
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                    let want: f64 = s.iter().enumerate().map(|(j, x)| (x - m).exp() / z * v.row(w * seqlen + j)[ui] as f64).sum();
                    worst = worst.max((got.row(w * seqlen + i)[col] - want as f32).abs());
                }
            }
        }
        assert!(worst < 1e-5, "block-causal attention differs from the full product by {worst:e}");
    }
}
