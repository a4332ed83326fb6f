//! The CPU forward pass in f32 (the reference): OPT (learned positions with offset 2, pre-LN,
//! ReLU, biases) and LLaMA (RMSNorm, rotary in HF's `rotate_half` layout, GQA, SwiGLU).
//!
//! Activations are row-major `[tokens, features]` with the calibration or evaluation windows
//! stacked: token `t` of window `w` is row `w * seqlen + t`. There is no padding, so positions
//! restart at 0 in every window. Attention is causal within a window.
//!
//! Attention works on any subset of V rows (`v_units`), which is how a FASP compact layer
//! (different value widths per KV head) runs through the same code as a dense one.

use crate::math;
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

/// Query rows per block of the causal attention.
const ATTN_BLOCK: usize = 64;

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
            // Causal, in blocks of query rows: rows b0..b1 only need keys 0..b1, which halves the
            // score and context work of long windows against a full L x L product.
            let mut ctx = Mat::zeros(seqlen, vh.cols);
            for b0 in (0..seqlen).step_by(ATTN_BLOCK) {
                let b1 = (b0 + ATTN_BLOCK).min(seqlen);
                let mut s = Mat::zeros(b1 - b0, b1);
                matmul(s.view_mut(), Accum::Replace, qh.view().subrows(b0, b1 - b0), kh.view().subrows(0, b1).transpose(), scale, Par::Seq);
                for r in 0..b1 - b0 {
                    let i = b0 + r; // this row's position: it sees keys 0..=i
                    let row = s.row_mut(r);
                    math::softmax(&mut row[..=i]);
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
                *u *= gv / (1.0 + math::exp(-gv));
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
