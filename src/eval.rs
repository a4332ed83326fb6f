//! Perplexity (docs/spec.md §10): non-overlapping windows of `seqlen`, the final partial window
//! dropped, no BOS inserted; NLL of the `L-1` predicted tokens per window from log-softmax of f32
//! logits, summed in f64; `ppl = exp(ΣNLL / (windows · (L−1)))`.

use crate::error::{FaspError, Result};
use crate::forward;
use crate::model::{LayerWeights, Model};
use crate::tensor::Mat;
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Perplexity {
    pub ppl: f64,
    pub nll_sum: f64,
    pub seqlen: usize,
    pub windows: usize,
    pub predicted_tokens: usize,
}

/// Cuts a stream into non-overlapping windows of `seqlen` (at most `max_windows`).
pub fn windows(stream: &[u32], seqlen: usize, max_windows: Option<usize>) -> Result<Vec<u32>> {
    if seqlen < 2 {
        return Err(FaspError::Arg(format!("--seqlen must be at least 2, got {seqlen}")));
    }
    let mut n = stream.len() / seqlen;
    if let Some(m) = max_windows {
        n = n.min(m);
    }
    if n == 0 {
        return Err(FaspError::Arg(format!("{} tokens make no window of {seqlen}", stream.len())));
    }
    Ok(stream[..n * seqlen].to_vec())
}

/// Sum of `-log softmax(logits[t])[ids[t+1]]` over one window.
pub fn window_nll(logits: &Mat, ids: &[u32]) -> f64 {
    let mut nll = 0.0f64;
    for t in 0..ids.len() - 1 {
        let row = logits.row(t);
        let m = crate::math::max(row);
        let sum = crate::math::sum_exp_f64(row, m);
        let logp = (row[ids[t + 1] as usize] - m) as f64 - sum.ln();
        nll -= logp;
    }
    nll
}

/// The model's layers, kept in memory across window chunks when they are small enough.
enum Layers<'a> {
    Cached(Vec<LayerWeights>),
    Lazy(&'a Model),
}

impl Layers<'_> {
    fn get(&self, l: usize) -> Result<std::borrow::Cow<'_, LayerWeights>> {
        match self {
            Layers::Cached(v) => Ok(std::borrow::Cow::Borrowed(&v[l])),
            Layers::Lazy(m) => Ok(std::borrow::Cow::Owned(m.layer(l)?)),
        }
    }
}

/// Logits of every window (`ids` flattened `[n, seqlen]`), through the CPU reference forward.
pub fn logits(model: &Model, ids: &[u32], seqlen: usize) -> Result<Mat> {
    let cfg = &model.cfg;
    model.check_seqlen(seqlen)?;
    let mut h = forward::embed(cfg, &model.embedding()?, model.positions()?.as_ref(), ids, seqlen);
    for l in 0..cfg.layers {
        h = forward::layer(cfg, &model.layer(l)?, &h, seqlen);
    }
    Ok(forward::logits(cfg, &model.final_norm()?, &model.lm_head()?, &h))
}

/// Perplexity over windows, processed in chunks of windows to bound memory.
pub fn perplexity(model: &Model, ids: &[u32], seqlen: usize, mut on_window: impl FnMut(usize)) -> Result<Perplexity> {
    let cfg = &model.cfg;
    if let Some(&bad) = ids.iter().find(|&&t| t as usize >= cfg.vocab) {
        return Err(FaspError::Arg(format!("token id {bad} is outside the vocabulary ({})", cfg.vocab)));
    }
    model.check_seqlen(seqlen)?;
    let n = ids.len() / seqlen;
    let layers = if model.param_count() <= 400_000_000 {
        Layers::Cached((0..cfg.layers).map(|l| model.layer(l)).collect::<Result<_>>()?)
    } else {
        Layers::Lazy(model)
    };
    let emb = model.embedding()?;
    let pos = model.positions()?;
    let fnorm = model.final_norm()?;
    let head = if model.head_is_tied() { None } else { Some(model.lm_head()?) };
    // keep each chunk's activations around 64 MB
    let chunk = (16_000_000 / (seqlen * cfg.hidden.max(cfg.ffn))).clamp(1, 64);
    let mut nll = 0.0f64;
    for c0 in (0..n).step_by(chunk) {
        let c1 = (c0 + chunk).min(n);
        let part = &ids[c0 * seqlen..c1 * seqlen];
        let mut h = forward::embed(cfg, &emb, pos.as_ref(), part, seqlen);
        for l in 0..cfg.layers {
            let lw = layers.get(l)?;
            h = forward::layer(cfg, &lw, &h, seqlen);
        }
        nll += hidden_nll(cfg, &fnorm, head.as_ref().unwrap_or(&emb), &h, part, seqlen, |w| on_window(c0 + w))?;
    }
    Ok(Perplexity::from_nll(nll, n, seqlen))
}

impl Perplexity {
    pub fn from_nll(nll_sum: f64, windows: usize, seqlen: usize) -> Perplexity {
        let predicted = windows * (seqlen - 1);
        Perplexity { ppl: (nll_sum / predicted as f64).exp(), nll_sum, seqlen, windows, predicted_tokens: predicted }
    }
}

/// Vocabulary rows per logits chunk for a window of `seqlen`: the chunk's logits stay near
/// `LOGIT_CHUNK_FLOATS` floats (32 MB), so a 262k vocabulary never materializes `[seqlen, vocab]`.
const LOGIT_CHUNK_FLOATS: usize = 8 << 20;

fn vocab_chunk(seqlen: usize) -> usize {
    (LOGIT_CHUNK_FLOATS / seqlen.max(1)).clamp(256, 65536)
}

/// `Σ_t −log softmax(logits_t)[ids[t+1]]` over one window, from its last hidden states `h`
/// (`[seqlen, d]`): final norm, then the logits `chunk` vocabulary rows at a time with an online
/// log-sum-exp (running max, f64 sum rescaled when the max grows) and the final soft-cap applied
/// per chunk. Equal to [`window_nll`] on the full logits up to f64 rounding.
pub fn window_nll_chunked(
    cfg: &crate::model::ModelConfig,
    final_norm: &crate::model::Norm,
    head: &Mat,
    h: &Mat,
    ids: &[u32],
    chunk: usize,
) -> f64 {
    use faer::linalg::matmul::matmul;
    use faer::{Accum, MatRef, Par};
    let n = ids.len() - 1;
    let d = h.cols;
    let x = forward::norm_as(h, final_norm, cfg.arch().norm, cfg.norm_eps);
    let x = MatRef::from_row_major_slice(&x.data[..n * d], n, d);
    let mut max = vec![f32::NEG_INFINITY; n];
    let mut sum = vec![0.0f64; n];
    let mut target = vec![0.0f32; n];
    let chunk = chunk.max(1);
    for v0 in (0..head.rows).step_by(chunk) {
        let v1 = (v0 + chunk).min(head.rows);
        let w = MatRef::from_row_major_slice(&head.data[v0 * d..v1 * d], v1 - v0, d);
        let mut out = Mat::zeros(n, v1 - v0);
        matmul(out.view_mut(), Accum::Replace, x, w.transpose(), 1.0f32, Par::rayon(0));
        if let Some(cap) = cfg.final_logit_softcap {
            out.data.iter_mut().for_each(|v| *v = (*v / cap).tanh() * cap);
        }
        for t in 0..n {
            let row = out.row(t);
            let m = crate::math::max(row).max(max[t]);
            if m > max[t] {
                sum[t] *= ((max[t] - m) as f64).exp();
                max[t] = m;
            }
            sum[t] += crate::math::sum_exp_f64(row, m);
            let tg = ids[t + 1] as usize;
            if (v0..v1).contains(&tg) {
                target[t] = row[tg - v0];
            }
        }
    }
    (0..n).map(|t| sum[t].ln() - (target[t] - max[t]) as f64).sum()
}

/// NLL summed over windows, from the last hidden states `h` (`[n·seqlen, d]`) of the windows `ids`.
/// The logits are computed a vocabulary chunk at a time ([`window_nll_chunked`]).
pub fn hidden_nll(
    cfg: &crate::model::ModelConfig,
    final_norm: &crate::model::Norm,
    head: &Mat,
    h: &Mat,
    ids: &[u32],
    seqlen: usize,
    mut on_window: impl FnMut(usize),
) -> Result<f64> {
    if !h.is_finite() {
        return Err(FaspError::Numerics("non-finite hidden states in evaluation".into()));
    }
    let chunk = vocab_chunk(seqlen);
    let mut nll = 0.0;
    for w in 0..ids.len() / seqlen {
        let hw = Mat::from_vec(seqlen, cfg.hidden, h.data[w * seqlen * cfg.hidden..(w + 1) * seqlen * cfg.hidden].to_vec());
        nll += window_nll_chunked(cfg, final_norm, head, &hw, &ids[w * seqlen..(w + 1) * seqlen], chunk);
        on_window(w + 1);
    }
    Ok(nll)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelConfig, Norm};
    use rand::{Rng, SeedableRng};

    /// The chunked NLL equals the one over the full logits (to f32 `exp` rounding under a
    /// different shift per chunk), for every chunk size (one row, an
    /// uneven split, the whole vocabulary), with and without the final soft-cap, and with a
    /// logit spread wide enough that the running max grows across chunks.
    #[test]
    fn chunked_log_softmax_equals_the_full_one() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (d, vocab, seqlen) = (16, 37, 9);
        for cap in [None, Some(3.0)] {
            let mut cfg = ModelConfig::from_json(serde_json::json!({"model_type":"gemma3_text","hidden_size":d,
                "num_hidden_layers":1,"num_attention_heads":1,"head_dim":8,"intermediate_size":8,"vocab_size":vocab,"sliding_window":4}))
            .unwrap();
            cfg.final_logit_softcap = cap;
            let mut r = |n: usize, s: f32| (0..n).map(|_| rng.random_range(-s..s)).collect::<Vec<f32>>();
            let h = Mat::from_vec(seqlen, d, r(seqlen * d, 4.0));
            let head = Mat::from_vec(vocab, d, r(vocab * d, 3.0));
            let norm = Norm { w: r(d, 0.5), b: None };
            let ids: Vec<u32> = (0..seqlen as u32).map(|i| (i * 11 + 5) % vocab as u32).collect();
            let full = window_nll(&forward::logits(&cfg, &norm, &head, &h), &ids);
            for chunk in [1, 5, vocab, 1000] {
                let got = window_nll_chunked(&cfg, &norm, &head, &h, &ids, chunk);
                assert!((got - full).abs() <= 1e-7 * full.abs(), "cap {cap:?} chunk {chunk}: {got} vs {full}");
            }
        }
        assert_eq!(vocab_chunk(512), 16384);
        assert_eq!(vocab_chunk(1 << 30), 256);
    }
}
