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

/// NLL summed over windows, from the last hidden states `h` (`[n·seqlen, d]`) of the windows `ids`.
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
    let mut nll = 0.0;
    for w in 0..ids.len() / seqlen {
        let hw = Mat::from_vec(seqlen, cfg.hidden, h.data[w * seqlen * cfg.hidden..(w + 1) * seqlen * cfg.hidden].to_vec());
        let lg = forward::logits(cfg, final_norm, head, &hw);
        nll += window_nll(&lg, &ids[w * seqlen..(w + 1) * seqlen]);
        on_window(w + 1);
    }
    Ok(nll)
}
