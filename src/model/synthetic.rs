//! Seeded synthetic weights of a config's exact shapes, for timing runs (`fasp-engine bench`).
//!
//! Pruning time does not depend on the weights' values, so a benchmark can run on weights that
//! were never downloaded. Holding every tensor of a 66B model in host memory is not possible
//! (264 GB in f32, 132 GB in f16), so the source holds one **pool** of seeded f16 values
//! ~N(0, 0.02), as long as the largest tensor, generated up front; each tensor is a contiguous
//! (wrapping) window of the pool starting at an offset derived from the seed and the tensor's
//! name. Loading a tensor is then what loading a real f16 checkpoint is: reading host memory and
//! converting f16 to f32. Norm weights are `1 + pool value`, so activations keep unit scale.
//!
//! Within one tensor no value repeats (the pool is at least as long as the tensor), so every
//! weight matrix has full rank almost surely and the restoration's Cholesky behaves as on real
//! weights.

use super::arch::{layer_layout, Names, Role};
use super::config::ModelConfig;
use super::weights::{DType, TensorSource};
use crate::error::{FaspError, Result};
use half::f16;
use half::slice::HalfFloatSliceExt;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use std::collections::BTreeMap;

/// Standard deviation of the synthetic weights (that of OPT/LLaMA initialisation).
pub const WEIGHT_STD: f32 = 0.02;

/// Values per independently seeded chunk of the pool (so generation is parallel and the pool
/// does not depend on the number of threads).
const CHUNK: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fill {
    /// Pool values as they are.
    Plain,
    /// `1 + pool value` (LayerNorm / RMSNorm weights).
    Norm,
}

#[derive(Clone, Debug)]
struct Spec {
    shape: Vec<usize>,
    offset: usize,
    fill: Fill,
}

/// Synthetic tensors for every name a [`ModelConfig`] implies (HF names, the usual prefix).
pub struct SyntheticSource {
    specs: BTreeMap<String, Spec>,
    pool: Vec<f16>,
    label: String,
}

/// SplitMix64: a seed mixer (deterministic per-tensor offsets and per-chunk seeds).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// FNV-1a of a tensor name.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// Every tensor a checkpoint of `cfg` holds, with its shape (HF names, the usual prefix).
pub fn tensor_shapes(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    tensor_specs(cfg).into_iter().map(|(n, s, _)| (n, s)).collect()
}

/// Every tensor of `cfg` with its shape and fill, in HF naming.
fn tensor_specs(cfg: &ModelConfig) -> Vec<(String, Vec<usize>, Fill)> {
    let names = Names::new(cfg.family, Names::candidates(cfg.family)[0]);
    let d = cfg.hidden;
    let mut out = vec![(names.embed(), vec![cfg.vocab, d], Fill::Plain)];
    if let Some(p) = names.positions() {
        // OPT's learned positions carry an offset of 2
        out.push((p, vec![cfg.max_positions + 2, d], Fill::Plain));
    }
    out.push((names.final_norm_w(), vec![d], Fill::Norm));
    if let Some(b) = names.final_norm_b() {
        out.push((b, vec![d], Fill::Plain));
    }
    if !cfg.tie_embeddings {
        out.push((names.lm_head().to_string(), vec![cfg.vocab, d], Fill::Plain));
    }
    for l in 0..cfg.layers {
        for (role, shape) in layer_layout(cfg, l) {
            let fill = if matches!(
                role,
                Role::AttnNormW | Role::MlpNormW | Role::QNormW | Role::KNormW | Role::PostAttnNormW | Role::PostMlpNormW
            ) {
                Fill::Norm
            } else {
                Fill::Plain
            };
            out.push((names.layer(l, role), shape, fill));
        }
    }
    out
}

/// `n` seeded f16 values ~N(0, `WEIGHT_STD`) (Box–Muller), generated in parallel chunks.
fn generate_pool(n: usize, seed: u64) -> Vec<f16> {
    let mut pool = vec![f16::ZERO; n];
    pool.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(mix(seed ^ mix(c as u64)));
        for pair in chunk.chunks_mut(2) {
            let u1: f32 = 1.0 - rng.random::<f32>(); // (0, 1]
            let u2: f32 = rng.random();
            let r = (-2.0 * u1.ln()).sqrt() * WEIGHT_STD;
            let (s, c) = (std::f32::consts::TAU * u2).sin_cos();
            pair[0] = f16::from_f32(r * c);
            if let Some(x) = pair.get_mut(1) {
                *x = f16::from_f32(r * s);
            }
        }
    });
    pool
}

impl SyntheticSource {
    /// Generates the pool for `cfg` (the slow part: do it before any clock starts).
    pub fn new(cfg: &ModelConfig, seed: u64, label: &str) -> Self {
        let list = tensor_specs(cfg);
        let pool_len = list.iter().map(|(_, s, _)| s.iter().product::<usize>()).max().unwrap_or(1).max(1);
        let pool = generate_pool(pool_len, seed);
        let specs = list
            .into_iter()
            .map(|(name, shape, fill)| {
                let offset = (mix(seed ^ name_hash(&name)) % pool_len as u64) as usize;
                (name, Spec { shape, offset, fill })
            })
            .collect();
        SyntheticSource { specs, pool, label: label.to_string() }
    }

    /// Host memory held by the pool.
    pub fn pool_bytes(&self) -> usize {
        self.pool.len() * std::mem::size_of::<f16>()
    }
}

impl TensorSource for SyntheticSource {
    fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        self.specs.iter().map(|(n, s)| (n.clone(), s.shape.clone())).collect()
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.specs.get(name).map(|s| s.shape.clone())
    }
    fn dtype(&self, name: &str) -> Option<DType> {
        self.specs.get(name).map(|_| DType::F16)
    }
    fn load_f32(&self, name: &str) -> Result<Vec<f32>> {
        let spec = self
            .specs
            .get(name)
            .ok_or_else(|| FaspError::Tensor { name: name.into(), msg: format!("missing from {}", self.describe()) })?;
        let n: usize = spec.shape.iter().product();
        let mut out = vec![0.0f32; n];
        // a window of the pool starting at `offset`, wrapping once (n <= pool length)
        let head = n.min(self.pool.len() - spec.offset);
        self.pool[spec.offset..spec.offset + head].convert_to_f32_slice(&mut out[..head]);
        self.pool[..n - head].convert_to_f32_slice(&mut out[head..]);
        if spec.fill == Fill::Norm {
            out.iter_mut().for_each(|v| *v += 1.0);
        }
        Ok(out)
    }
    fn describe(&self) -> String {
        format!("synthetic weights ({})", self.label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg() -> ModelConfig {
        ModelConfig::from_json(json!({"model_type":"llama","hidden_size":32,"num_hidden_layers":2,
            "num_attention_heads":4,"num_key_value_heads":2,"intermediate_size":48,"vocab_size":100}))
        .unwrap()
    }

    #[test]
    fn seeded_shaped_and_scaled() {
        let c = cfg();
        let a = SyntheticSource::new(&c, 7, "t");
        let b = SyntheticSource::new(&c, 7, "t");
        let other = SyntheticSource::new(&c, 8, "t");
        let q = "model.layers.1.self_attn.q_proj.weight";
        assert_eq!(a.shape(q), Some(vec![32, 32]));
        assert_eq!(a.load_f32(q).unwrap(), b.load_f32(q).unwrap());
        assert_ne!(a.load_f32(q).unwrap(), other.load_f32(q).unwrap());
        assert_ne!(a.load_f32(q).unwrap(), a.load_f32("model.layers.0.self_attn.q_proj.weight").unwrap());
        let emb = a.load_f32("model.embed_tokens.weight").unwrap();
        let std = (emb.iter().map(|v| (v * v) as f64).sum::<f64>() / emb.len() as f64).sqrt();
        assert!((std - WEIGHT_STD as f64).abs() < 0.003, "std {std}");
        let norm = a.load_f32("model.layers.0.input_layernorm.weight").unwrap();
        assert!(norm.iter().all(|v| (v - 1.0).abs() < 0.2));
        // the model built on it validates against the config
        let m = crate::model::Model::from_parts("synthetic".into(), c, Box::new(a)).unwrap();
        assert_eq!(m.dtype(), DType::F16);
    }
}
