//! The CPU forward pass in f32 (the reference): OPT (learned positions with offset 2, pre-LN,
//! ReLU, biases) and LLaMA (RMSNorm, rotary in HF's `rotate_half` layout, GQA, SwiGLU).
//!
//! Activations are row-major `[tokens, features]` with the calibration or evaluation windows
//! stacked: token `t` of window `w` is row `w * seqlen + t`. There is no padding, so positions
//! restart at 0 in every window. Attention is causal within a window.
//!
//! Attention works on any subset of V rows (`v_units`), which is how a FASP compact layer
//! (different value widths per KV head) runs through the same code as a dense one.

use crate::model::arch::ctx_layout;
use crate::model::{Family, LayerWeights, Linear, ModelConfig, Norm};
use crate::tensor::{linear, Mat};
use faer::{linalg::matmul::matmul, Accum, Par};
use rayon::prelude::*;

/// Token embeddings, plus OPT's learned positions (offset 2).
pub fn embed(cfg: &ModelConfig, emb: &Mat, positions: Option<&Mat>, ids: &[u32], seqlen: usize) -> Mat {
    let mut x = Mat::zeros(ids.len(), cfg.hidden);
    for (t, &id) in ids.iter().enumerate() {
        let row = x.row_mut(t);
        row.copy_from_slice(emb.row(id as usize));
        if let Some(pos) = positions {
            for (v, p) in row.iter_mut().zip(pos.row(t % seqlen + 2)) {
                *v += *p;
            }
        }
    }
    x
}

/// LayerNorm (with bias) or RMSNorm (without), statistics in f32 like HF.
pub fn norm(x: &Mat, n: &Norm, eps: f32) -> Mat {
    let mut y = x.clone();
    // Element-wise work stays on one thread: it is memory-bound, and rayon's scheduling cost was
    // measured to dominate it (25x slower than this loop on a busy 2-core machine).
    y.data.chunks_mut(x.cols.max(1)).for_each(|row| {
        let d = row.len() as f32;
        match &n.b {
            Some(b) => {
                let mean = row.iter().sum::<f32>() / d;
                let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d;
                let inv = 1.0 / (var + eps).sqrt();
                for ((v, w), bb) in row.iter_mut().zip(&n.w).zip(b) {
                    *v = (*v - mean) * inv * w + bb;
                }
            }
            None => {
                let ms = row.iter().map(|v| v * v).sum::<f32>() / d;
                let inv = 1.0 / (ms + eps).sqrt();
                for (v, w) in row.iter_mut().zip(&n.w) {
                    *v = w * (*v * inv);
                }
            }
        }
    });
    y
}

/// Rotary embedding in place on `[tokens, heads * hd]`, HF `rotate_half` layout:
/// `x' = x cos + rotate_half(x) sin` with `rotate_half([a, b]) = [-b, a]`.
pub fn rope(x: &mut Mat, heads: usize, hd: usize, theta: f32, seqlen: usize) {
    let half = hd / 2;
    let inv_freq: Vec<f32> = (0..half).map(|i| 1.0 / theta.powf((2 * i) as f32 / hd as f32)).collect();
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

/// Causal attention over stacked windows. `q` is `[T, heads*hd]`, `k` is `[T, kv_heads*hd]`,
/// `v` is `[T, v_units.len()]` with its columns being the V rows `v_units`. Returns the context
/// `[T, group * v_units.len()]` with columns in `arch::ctx_layout` order.
pub fn attention(cfg: &ModelConfig, q: &Mat, k: &Mat, v: &Mat, v_units: &[usize], seqlen: usize) -> Mat {
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
    let scale = 1.0 / (hd as f32).sqrt();
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
            let mut s = Mat::zeros(seqlen, seqlen);
            matmul(s.view_mut(), Accum::Replace, qh.view(), kh.view().transpose(), scale, Par::Seq);
            for i in 0..seqlen {
                let row = s.row_mut(i);
                let m = row[..=i].iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0f32;
                for x in row[..=i].iter_mut() {
                    // exp below e^-80 (< 2e-35 of the row's largest term) is flushed to zero:
                    // it cannot change the f32 result, and glibc's expf takes a slow path for
                    // underflowing arguments (measured: it dominated the whole forward pass)
                    let d = *x - m;
                    *x = if d < -80.0 { 0.0 } else { d.exp() };
                    sum += *x;
                }
                for x in row[..=i].iter_mut() {
                    *x /= sum;
                }
                row[i + 1..].fill(0.0);
            }
            let mut ctx = Mat::zeros(seqlen, vh.cols);
            matmul(ctx.view_mut(), Accum::Replace, s.view(), vh.view(), 1.0f32, Par::Seq);
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

/// The attention half up to the o_proj input: the context `X` of the attention pair.
pub fn attn_context(cfg: &ModelConfig, lw: &LayerWeights, h: &Mat, seqlen: usize) -> Mat {
    let x = norm(h, &lw.attn_norm, cfg.norm_eps);
    let mut q = linear(&x, &lw.q.w, lw.q.b.as_deref());
    let mut k = linear(&x, &lw.k.w, lw.k.b.as_deref());
    let v = linear(&x, &lw.v.w, lw.v.b.as_deref());
    if cfg.family == Family::Llama {
        rope(&mut q, cfg.heads, cfg.head_dim, cfg.rope_theta, seqlen);
        rope(&mut k, cfg.kv_heads, cfg.head_dim, cfg.rope_theta, seqlen);
    }
    attention(cfg, &q, &k, &v, &lw.v_units, seqlen)
}

/// `h + x Wᵀ + b`: a residual branch (o_proj on the context, or fc2/down_proj on the activation).
pub fn add_linear(h: &Mat, o: &Linear, ctx: &Mat) -> Mat {
    let mut out = linear(ctx, &o.w, o.b.as_deref());
    out.add_assign(h);
    out
}

/// The MLP half up to the fc2/down_proj input: the activated intermediate `X` of the MLP pair.
pub fn mlp_act(cfg: &ModelConfig, lw: &LayerWeights, h: &Mat) -> Mat {
    let x = norm(h, &lw.mlp_norm, cfg.norm_eps);
    let mut up = linear(&x, &lw.up.w, lw.up.b.as_deref());
    match &lw.gate {
        None => up.data.iter_mut().for_each(|v| *v = v.max(0.0)),
        Some(gate) => {
            let g = linear(&x, &gate.w, gate.b.as_deref());
            for (u, &gv) in up.data.iter_mut().zip(&g.data) {
                *u *= gv / (1.0 + (-gv).exp());
            }
        }
    }
    up
}

/// One whole decoder layer.
pub fn layer(cfg: &ModelConfig, lw: &LayerWeights, h: &Mat, seqlen: usize) -> Mat {
    let ctx = attn_context(cfg, lw, h, seqlen);
    let h = add_linear(h, &lw.o, &ctx);
    let act = mlp_act(cfg, lw, &h);
    add_linear(&h, &lw.down, &act)
}

/// Final norm and LM head: `[T, vocab]` logits.
pub fn logits(cfg: &ModelConfig, final_norm: &Norm, head: &Mat, h: &Mat) -> Mat {
    let x = norm(h, final_norm, cfg.norm_eps);
    linear(&x, head, None)
}
