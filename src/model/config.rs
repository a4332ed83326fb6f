//! `config.json` for the two supported families (FASP-SPEC §1), validated up front so that a bad
//! model is rejected before any work or output starts.

use crate::error::{FaspError, Result};
use serde_json::Value;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Opt,
    Llama,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Opt => "opt",
            Family::Llama => "llama",
        }
    }
}

#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub family: Family,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// `ffn_dim` (OPT) or `intermediate_size` (LLaMA).
    pub ffn: usize,
    pub vocab: usize,
    pub max_positions: usize,
    pub norm_eps: f32,
    pub rope_theta: f32,
    /// Biases on q/k/v/o.
    pub attn_bias: bool,
    /// Biases on fc1/fc2 or gate/up/down.
    pub mlp_bias: bool,
    pub tie_embeddings: bool,
    /// Per layer, the kept V rows of a FASP compact model (`--compact` output); `None` for a normal model.
    pub compact_v_units: Option<Vec<Vec<usize>>>,
    /// The original JSON, kept so that outputs can write it back with only the changed fields.
    pub raw: Value,
}

fn get_usize(v: &Value, key: &str) -> Option<usize> {
    v.get(key).and_then(|x| x.as_u64()).map(|x| x as usize)
}
fn get_f32(v: &Value, key: &str) -> Option<f32> {
    v.get(key).and_then(|x| x.as_f64()).map(|x| x as f32)
}
fn get_bool(v: &Value, key: &str) -> Option<bool> {
    v.get(key).and_then(|x| x.as_bool())
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| FaspError::io(path, e))?;
        let raw: Value =
            serde_json::from_str(&text).map_err(|e| FaspError::Config { path: path.into(), msg: format!("not valid JSON: {e}") })?;
        Self::from_json(raw).map_err(|msg| match msg {
            FaspError::Arg(m) => FaspError::Config { path: path.into(), msg: m },
            other => other,
        })
    }

    /// Parses and validates; plain field errors come back as `FaspError::Arg` (the caller adds the path).
    pub fn from_json(raw: Value) -> Result<Self> {
        let bad = |m: String| FaspError::Arg(m);
        let req = |key: &str| get_usize(&raw, key).ok_or_else(|| bad(format!("missing or non-integer \"{key}\"")));
        let model_type = raw.get("model_type").and_then(|v| v.as_str()).ok_or_else(|| bad("missing \"model_type\"".into()))?;
        let family = match model_type {
            "opt" => Family::Opt,
            "llama" => Family::Llama,
            other => return Err(FaspError::Unsupported(format!("model_type \"{other}\" is not supported (supported: opt, llama)"))),
        };
        let hidden = req("hidden_size")?;
        let layers = req("num_hidden_layers")?;
        let heads = req("num_attention_heads")?;
        let vocab = req("vocab_size")?;
        let max_positions = get_usize(&raw, "max_position_embeddings").unwrap_or(2048);
        let cfg = match family {
            Family::Opt => {
                if get_bool(&raw, "do_layer_norm_before") == Some(false) {
                    return Err(FaspError::Unsupported(
                        "post-LN OPT (do_layer_norm_before = false, e.g. OPT-350m) is not supported; FASP-SPEC §1 covers pre-LN OPT only"
                            .into(),
                    ));
                }
                if let Some(p) = get_usize(&raw, "word_embed_proj_dim") {
                    if p != hidden {
                        return Err(FaspError::Unsupported(format!(
                            "OPT with project_in/project_out (word_embed_proj_dim {p} != hidden_size {hidden}) is not supported"
                        )));
                    }
                }
                if get_bool(&raw, "layer_norm_elementwise_affine") == Some(false) {
                    return Err(FaspError::Unsupported("OPT without LayerNorm affine parameters is not supported".into()));
                }
                let act = raw.get("activation_function").and_then(|v| v.as_str()).unwrap_or("relu");
                if act != "relu" {
                    return Err(FaspError::Unsupported(format!("OPT activation \"{act}\" is not supported (relu only)")));
                }
                if heads == 0 || hidden % heads != 0 {
                    return Err(bad(format!("hidden_size {hidden} is not a multiple of num_attention_heads {heads}")));
                }
                let bias = get_bool(&raw, "enable_bias").unwrap_or(true);
                ModelConfig {
                    family,
                    hidden,
                    layers,
                    heads,
                    kv_heads: heads,
                    head_dim: hidden / heads,
                    ffn: req("ffn_dim")?,
                    vocab,
                    max_positions,
                    norm_eps: 1e-5,
                    rope_theta: 0.0,
                    attn_bias: bias,
                    mlp_bias: bias,
                    tie_embeddings: get_bool(&raw, "tie_word_embeddings").unwrap_or(true),
                    compact_v_units: None,
                    raw: Value::Null,
                }
            }
            Family::Llama => {
                let act = raw.get("hidden_act").and_then(|v| v.as_str()).unwrap_or("silu");
                if act != "silu" {
                    return Err(FaspError::Unsupported(format!("LLaMA activation \"{act}\" is not supported (silu only)")));
                }
                if let Some(rs) = raw.get("rope_scaling") {
                    let kind = rs.get("rope_type").or_else(|| rs.get("type")).and_then(|v| v.as_str());
                    if !rs.is_null() && kind != Some("default") {
                        return Err(FaspError::Unsupported(format!("rope_scaling {rs} is not supported")));
                    }
                }
                let kv_heads = get_usize(&raw, "num_key_value_heads").unwrap_or(heads);
                if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
                    return Err(bad(format!("num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")));
                }
                let head_dim = match raw.get("head_dim") {
                    Some(v) if !v.is_null() => v.as_u64().ok_or_else(|| bad("\"head_dim\" is not an integer".into()))? as usize,
                    _ => {
                        if hidden % heads != 0 {
                            return Err(bad(format!("hidden_size {hidden} is not a multiple of num_attention_heads {heads}")));
                        }
                        hidden / heads
                    }
                };
                if head_dim % 2 != 0 {
                    return Err(bad(format!("head_dim {head_dim} must be even for rotary embeddings")));
                }
                ModelConfig {
                    family,
                    hidden,
                    layers,
                    heads,
                    kv_heads,
                    head_dim,
                    ffn: req("intermediate_size")?,
                    vocab,
                    max_positions,
                    norm_eps: get_f32(&raw, "rms_norm_eps").unwrap_or(1e-6),
                    rope_theta: get_f32(&raw, "rope_theta").unwrap_or(10000.0),
                    attn_bias: get_bool(&raw, "attention_bias").unwrap_or(false),
                    mlp_bias: get_bool(&raw, "mlp_bias").unwrap_or(false),
                    tie_embeddings: get_bool(&raw, "tie_word_embeddings").unwrap_or(false),
                    compact_v_units: None,
                    raw: Value::Null,
                }
            }
        };
        for (name, v) in [
            ("hidden_size", cfg.hidden),
            ("num_hidden_layers", cfg.layers),
            ("vocab_size", cfg.vocab),
            ("feed-forward size", cfg.ffn),
            ("head_dim", cfg.head_dim),
        ] {
            if v == 0 {
                return Err(bad(format!("{name} must be positive")));
            }
        }
        let compact_v_units = match raw.get("fasp_compact_v_units") {
            None | Some(Value::Null) => None,
            Some(v) => {
                let units: Vec<Vec<usize>> =
                    serde_json::from_value(v.clone()).map_err(|e| bad(format!("\"fasp_compact_v_units\": {e}")))?;
                if units.len() != cfg.layers {
                    return Err(bad(format!("\"fasp_compact_v_units\" has {} layers, expected {}", units.len(), cfg.layers)));
                }
                let nv = cfg.kv_heads * cfg.head_dim;
                for (l, u) in units.iter().enumerate() {
                    if u.windows(2).any(|w| w[0] >= w[1]) || u.iter().any(|&c| c >= nv) {
                        return Err(bad(format!("\"fasp_compact_v_units\"[{l}] must be increasing indices below {nv}")));
                    }
                }
                Some(units)
            }
        };
        Ok(ModelConfig { compact_v_units, raw, ..cfg })
    }

    /// Width of the attention value projection (= number of attention units).
    pub fn v_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }
    /// Width of the attention context entering o_proj (dense).
    pub fn ctx_width(&self) -> usize {
        self.heads * self.head_dim
    }
    /// Query heads per KV head.
    pub fn group(&self) -> usize {
        self.heads / self.kv_heads
    }
    /// Kept V units of layer `l` (all of them in a normal model).
    pub fn v_units(&self, l: usize) -> Vec<usize> {
        match &self.compact_v_units {
            Some(u) => u[l].clone(),
            None => (0..self.v_width()).collect(),
        }
    }
}

/// A tiny LLaMA config for unit tests: hidden 64, 4 query heads over 2 KV heads (G = 2), head_dim 8.
#[cfg(test)]
pub(crate) fn tiny_gqa_config() -> ModelConfig {
    ModelConfig::from_json(serde_json::json!({"model_type":"llama","hidden_size":64,"num_hidden_layers":1,
        "num_attention_heads":4,"num_key_value_heads":2,"head_dim":8,"intermediate_size":32,"vocab_size":10}))
    .expect("a valid config")
}
