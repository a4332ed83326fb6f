//! `config.json` of every supported family (docs/spec.md §1, §11), parsed with types and validated up
//! front so that a bad model is rejected before any work or output starts. A field of the wrong type
//! (`"tie_word_embeddings": "yes"`) is an error naming the field. What each family's config means is
//! read from its description ([`Arch`]); the few per-family spellings are data there too.

pub use super::arch::Family;
use super::arch::{Arch, AttnBiases, SlidingRule};
use crate::error::{FaspError, Result};
use serde_json::Value;
use std::path::Path;

/// Rotary scaling (`rope_scaling` / `rope_parameters`): how `inv_freq` is derived from the base.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// `inv_freq / factor`.
    Linear {
        factor: f32,
    },
    /// Llama-3.x: low frequencies divided by `factor`, high kept, a smooth blend between.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_positions: f32,
    },
}

/// One rotary embedding: base and scaling.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rope {
    pub theta: f32,
    pub scaling: RopeScaling,
}

impl Rope {
    /// `inv_freq` exactly as transformers computes it in f32 (`_compute_default_rope_parameters`,
    /// then the scaling's own rule).
    pub fn inv_freq(&self, head_dim: usize) -> Vec<f32> {
        let base: Vec<f32> = (0..head_dim / 2).map(|i| 1.0 / self.theta.powf((2 * i) as f32 / head_dim as f32)).collect();
        match self.scaling {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_positions } => {
                let low_wavelen = original_max_positions / low_freq_factor;
                let high_wavelen = original_max_positions / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        let scaled = if wavelen > low_wavelen { f / factor } else { f };
                        let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                        if medium {
                            let smooth = (original_max_positions / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * scaled / factor + smooth * scaled
                        } else {
                            scaled
                        }
                    })
                    .collect()
            }
        }
    }
}

/// Which attention biases the model has. `down` is the down_proj/fc2 bias (with `mlp_bias`, or
/// alone when FLAP's compensation added it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Biases {
    pub q: bool,
    pub k: bool,
    pub v: bool,
    pub o: bool,
    pub down: bool,
}

/// Decoder layers beyond which a config is refused as corrupt (the largest models have about 128):
/// a fuzzed `num_hidden_layers` of 10^9 made the per-layer tables allocate 16 GB and abort.
pub const MAX_LAYERS: usize = 65_536;

#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub family: Family,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// `ffn_dim` (OPT) or `intermediate_size`.
    pub ffn: usize,
    pub vocab: usize,
    pub max_positions: usize,
    pub norm_eps: f32,
    /// The global rope base (0 without rotary).
    pub rope_theta: f32,
    /// Rotary of full-attention layers (None without rotary).
    pub rope: Option<Rope>,
    /// Rotary of sliding-window layers (Gemma-3: `rope_local_base_freq`, no scaling).
    pub rope_local: Option<Rope>,
    /// Per layer: the sliding window `W` (a query at t sees keys t−W < s ≤ t), or None (full causal).
    pub windows: Vec<Option<usize>>,
    /// Scale of the attention scores (`head_dim^-0.5`, or `query_pre_attn_scalar^-0.5`).
    pub attn_scale: f32,
    /// `logits = cap · tanh(logits / cap)` when set.
    pub final_logit_softcap: Option<f32>,
    /// Biases on all of q/k/v/o (the family's switch is on).
    pub attn_bias: bool,
    /// Biases on fc1/fc2 or gate/up/down.
    pub mlp_bias: bool,
    /// Every projection bias, one flag each.
    pub bias: Biases,
    pub tie_embeddings: bool,
    /// Per layer, the kept V rows of a FASP compact model (`--compact` output); `None` for a normal model.
    pub compact_v_units: Option<Vec<Vec<usize>>>,
    /// The original JSON, kept so that outputs can write it back with only the changed fields.
    pub raw: Value,
}

/// Typed access to config fields: absent and `null` are "not set"; a value of the wrong type is an
/// error naming the field.
struct Fields<'a>(&'a Value);

fn wrong(key: &str, want: &str, got: &Value) -> FaspError {
    FaspError::Arg(format!("\"{key}\" must be {want}, got {got}"))
}

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }
    fn usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key).map(|v| v.as_u64().map(|x| x as usize).ok_or_else(|| wrong(key, "a non-negative integer", v))).transpose()
    }
    fn req_usize(&self, key: &str) -> Result<usize> {
        self.usize(key)?.ok_or_else(|| FaspError::Arg(format!("missing \"{key}\"")))
    }
    fn f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key).map(|v| v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| wrong(key, "a number", v))).transpose()
    }
    /// A positive number that stays positive and finite in f32 (`1e-60` or `1e60` would not).
    fn pos_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.f64(key)? {
            Some(x) if x > 0.0 && (x as f32) > 0.0 && (x as f32).is_finite() => Ok(Some(x as f32)),
            Some(_) => Err(wrong(key, "a positive number within f32 range", self.get(key).expect("present"))),
            None => Ok(None),
        }
    }
    fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key).map(|v| v.as_bool().ok_or_else(|| wrong(key, "true or false", v))).transpose()
    }
    fn str(&self, key: &str) -> Result<Option<&str>> {
        self.get(key).map(|v| v.as_str().ok_or_else(|| wrong(key, "a string", v))).transpose()
    }
}

/// A rope description object (`rope_scaling`, or one entry of `rope_parameters`), named `what` in errors.
fn parse_rope(what: &str, obj: &Value, theta: f32) -> Result<Rope> {
    if !obj.is_object() {
        return Err(wrong(what, "an object", obj));
    }
    let f = Fields(obj);
    let key = |k: &str| format!("{what}.{k}");
    let kind = match f.str("rope_type") {
        Ok(Some(k)) => k,
        Ok(None) => f.str("type").map_err(|_| wrong(&key("type"), "a string", obj))?.unwrap_or("default"),
        Err(_) => return Err(wrong(&key("rope_type"), "a string", &obj["rope_type"])),
    };
    let theta = match f.f64("rope_theta").map_err(|_| wrong(&key("rope_theta"), "a number", &obj["rope_theta"]))? {
        Some(t) if t > 0.0 && (t as f32).is_finite() => t as f32,
        Some(t) => return Err(FaspError::Arg(format!("\"{}\" must be a positive number within f32 range, got {t}", key("rope_theta")))),
        None => theta,
    };
    let num = |k: &str| -> Result<f32> {
        f.pos_f32(k)
            .map_err(|_| wrong(&key(k), "a positive number", &obj[k]))?
            .ok_or_else(|| FaspError::Arg(format!("missing \"{}\"", key(k))))
    };
    let scaling = match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: num("factor")? },
        "llama3" => {
            let s = RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_positions: num("original_max_position_embeddings")?,
            };
            if let RopeScaling::Llama3 { low_freq_factor: lo, high_freq_factor: hi, .. } = s {
                if hi <= lo {
                    return Err(FaspError::Arg(format!("\"{what}\": high_freq_factor {hi} must exceed low_freq_factor {lo}")));
                }
            }
            s
        }
        other => {
            return Err(FaspError::Unsupported(format!("{what} type \"{other}\" is not supported (supported: default, linear, llama3)")))
        }
    };
    Ok(Rope { theta, scaling })
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

    /// The description of this model's family.
    pub fn arch(&self) -> &'static Arch {
        self.family.arch()
    }

    /// Parses and validates; plain field errors come back as `FaspError::Arg` (the caller adds the path).
    pub fn from_json(raw: Value) -> Result<Self> {
        let bad = |m: String| FaspError::Arg(m);
        if !raw.is_object() {
            return Err(bad("the config is not a JSON object".into()));
        }
        let f = Fields(&raw);
        let model_type = f.str("model_type")?.ok_or_else(|| bad("missing \"model_type\"".into()))?;
        let family = Family::from_model_type(model_type).ok_or_else(|| {
            FaspError::Unsupported(format!("model_type \"{model_type}\" is not supported (supported: {})", Family::supported()))
        })?;
        let a = family.arch();
        let hidden = f.req_usize("hidden_size")?;
        let layers = f.req_usize("num_hidden_layers")?;
        if layers > MAX_LAYERS {
            // refused before the per-layer tables (windows, rope bases) are allocated
            return Err(bad(format!("\"num_hidden_layers\" is {layers}, more than any model has (at most {MAX_LAYERS})")));
        }
        let heads = f.req_usize("num_attention_heads")?;
        let vocab = f.req_usize("vocab_size")?;
        let ffn = f.req_usize(a.ffn_key)?;
        let max_positions = f.usize("max_position_embeddings")?.unwrap_or(2048);
        if family == Family::Opt {
            opt_checks(&f, hidden)?;
        }
        let act = f.str(a.activation_key)?.unwrap_or(a.activation.hf_names()[0]);
        if !a.activation.hf_names().contains(&act) {
            return Err(FaspError::Unsupported(format!(
                "{model_type} activation \"{act}\" is not supported ({} only)",
                a.activation.hf_names().join(" / ")
            )));
        }
        let kv_heads = f.usize("num_key_value_heads")?.unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
            return Err(bad(format!("num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")));
        }
        let head_dim = match (f.usize("head_dim")?, a.head_dim_default) {
            (Some(h), _) => h,
            (None, Some(h)) => h,
            (None, None) => {
                if hidden % heads != 0 {
                    return Err(bad(format!("hidden_size {hidden} is not a multiple of num_attention_heads {heads}")));
                }
                hidden / heads
            }
        };
        let norm_eps = match a.eps_key {
            Some(k) => f.pos_f32(k)?.unwrap_or(a.eps_default),
            None => a.eps_default,
        };
        let (mut bias, attn_bias) = match a.attn_biases {
            AttnBiases::Switch { key, default } => {
                let on = f.bool(key)?.unwrap_or(default);
                (Biases { q: on, k: on, v: on, o: on, down: false }, on)
            }
            AttnBiases::Fixed { q, k, v, o } => (Biases { q, k, v, o, down: false }, q && k && v && o),
        };
        let mlp_bias = match a.mlp_bias_key {
            Some(k) => f.bool(k)?.unwrap_or(matches!(a.attn_biases, AttnBiases::Switch { key, default: true } if key == k)),
            None => false,
        };
        bias.down = mlp_bias;
        // biases FLAP's compensation added where the family's config has no switch for them
        if let Some(extra) = raw.get("fasp_extra_biases").filter(|v| !v.is_null()) {
            let list: Vec<String> = serde_json::from_value(extra.clone())
                .map_err(|_| wrong("fasp_extra_biases", "a list of \"o_proj\" / \"down_proj\"", extra))?;
            for e in list {
                match e.as_str() {
                    "o_proj" => bias.o = true,
                    "down_proj" => bias.down = true,
                    _ => return Err(wrong("fasp_extra_biases", "a list of \"o_proj\" / \"down_proj\"", extra)),
                }
            }
        }
        let tie_embeddings = f.bool("tie_word_embeddings")?.unwrap_or(a.tie_default);

        // positions: rotary bases and scaling, per layer type
        let (rope, rope_local) = match a.positions {
            super::arch::Positions::Learned { .. } => (None, None),
            super::arch::Positions::Rotary => {
                if head_dim % 2 != 0 {
                    return Err(bad(format!("head_dim {head_dim} must be even for rotary embeddings")));
                }
                let (g, l) = parse_ropes(&f, a)?;
                (Some(g), Some(l))
            }
        };
        let windows = parse_windows(&f, a, layers)?;
        let attn_scale = if a.query_pre_attn_scalar {
            let q = f.f64("query_pre_attn_scalar")?.unwrap_or(head_dim as f64);
            if q <= 0.0 {
                return Err(bad(format!("\"query_pre_attn_scalar\" must be positive, got {q}")));
            }
            q.powf(-0.5) as f32
        } else {
            (head_dim as f64).powf(-0.5) as f32
        };
        let final_logit_softcap = if a.final_softcap { f.pos_f32("final_logit_softcapping")? } else { None };

        let cfg = ModelConfig {
            family,
            hidden,
            layers,
            heads,
            kv_heads,
            head_dim,
            ffn,
            vocab,
            max_positions,
            norm_eps,
            rope_theta: rope.map_or(0.0, |r| r.theta),
            rope,
            rope_local,
            windows,
            attn_scale,
            final_logit_softcap,
            attn_bias,
            mlp_bias,
            bias,
            tie_embeddings,
            compact_v_units: None,
            raw: Value::Null,
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
    /// The sliding window of layer `l` (None: full causal attention).
    pub fn window(&self, l: usize) -> Option<usize> {
        self.windows.get(l).copied().flatten()
    }
    /// The rotary embedding of layer `l` (None without rotary).
    pub fn layer_rope(&self, l: usize) -> Option<Rope> {
        if self.window(l).is_some() {
            self.rope_local
        } else {
            self.rope
        }
    }
}

/// OPT's config checks (docs/spec.md §1): pre-LN only, no projections, affine LayerNorm.
fn opt_checks(f: &Fields, hidden: usize) -> Result<()> {
    if f.bool("do_layer_norm_before")? == Some(false) {
        return Err(FaspError::Unsupported(
            "post-LN OPT (do_layer_norm_before = false, e.g. OPT-350m) is not supported; docs/spec.md §1 covers pre-LN OPT only".into(),
        ));
    }
    if let Some(p) = f.usize("word_embed_proj_dim")? {
        if p != hidden {
            return Err(FaspError::Unsupported(format!(
                "OPT with project_in/project_out (word_embed_proj_dim {p} != hidden_size {hidden}) is not supported"
            )));
        }
    }
    if f.bool("layer_norm_elementwise_affine")? == Some(false) {
        return Err(FaspError::Unsupported("OPT without LayerNorm affine parameters is not supported".into()));
    }
    Ok(())
}

/// The global and local rotary embeddings: from `rope_parameters` (transformers' newer layout, one
/// object or one per layer type), or from `rope_theta` + `rope_scaling` (+ `rope_local_base_freq`).
fn parse_ropes(f: &Fields, a: &Arch) -> Result<(Rope, Rope)> {
    let theta = f.pos_f32("rope_theta")?.unwrap_or(10000.0);
    let local_theta = f.pos_f32("rope_local_base_freq")?.unwrap_or(10000.0);
    if let Some(p) = f.get("rope_parameters") {
        if p.get("rope_type").is_some() || p.get("rope_theta").is_some() {
            let g = parse_rope("rope_parameters", p, theta)?;
            let l = if a.local_rope_base { Rope { theta: local_theta, scaling: RopeScaling::None } } else { g };
            return Ok((g, l));
        }
        let full = p.get("full_attention").ok_or_else(|| wrong("rope_parameters", "a rope object or one per layer type", p))?;
        let g = parse_rope("rope_parameters.full_attention", full, theta)?;
        let l = match p.get("sliding_attention") {
            Some(s) => parse_rope("rope_parameters.sliding_attention", s, local_theta)?,
            None if a.local_rope_base => Rope { theta: local_theta, scaling: RopeScaling::None },
            None => g,
        };
        return Ok((g, l));
    }
    let g = match f.get("rope_scaling") {
        Some(s) => parse_rope("rope_scaling", s, theta)?,
        None => Rope { theta, scaling: RopeScaling::None },
    };
    let l = if a.local_rope_base { Rope { theta: local_theta, scaling: RopeScaling::None } } else { g };
    Ok((g, l))
}

/// Per layer, the sliding window or None: `layer_types` when the config lists them, otherwise the
/// family's rule.
fn parse_windows(f: &Fields, a: &Arch, layers: usize) -> Result<Vec<Option<usize>>> {
    let window = f.usize("sliding_window")?;
    let sliding: Vec<bool> = if let Some(lt) = f.get("layer_types").filter(|_| a.sliding != SlidingRule::Never) {
        let types: Vec<String> = serde_json::from_value(lt.clone()).map_err(|_| wrong("layer_types", "a list of strings", lt))?;
        if types.len() != layers {
            return Err(FaspError::Arg(format!("\"layer_types\" has {} entries for {layers} layers", types.len())));
        }
        types
            .iter()
            .map(|t| match t.as_str() {
                "full_attention" => Ok(false),
                "sliding_attention" => Ok(true),
                other => {
                    Err(FaspError::Unsupported(format!("layer type \"{other}\" is not supported (full_attention, sliding_attention)")))
                }
            })
            .collect::<Result<_>>()?
    } else {
        match a.sliding {
            SlidingRule::Never => vec![false; layers],
            SlidingRule::AllWhenSet => vec![window.is_some(); layers],
            SlidingRule::QwenMaxWindow => {
                let on = f.bool("use_sliding_window")?.unwrap_or(false) && window.is_some();
                let from = f.usize("max_window_layers")?.unwrap_or(layers);
                (0..layers).map(|i| on && i >= from).collect()
            }
            SlidingRule::GemmaPattern => {
                let p = f.usize("sliding_window_pattern")?.unwrap_or(6);
                if p == 0 {
                    return Err(FaspError::Arg("\"sliding_window_pattern\" must be positive".into()));
                }
                (0..layers).map(|i| (i + 1) % p != 0).collect()
            }
        }
    };
    sliding
        .into_iter()
        .map(|s| match (s, window) {
            (false, _) => Ok(None),
            (true, Some(w)) if w > 0 => Ok(Some(w)),
            (true, _) => Err(FaspError::Arg("sliding-window layers need a positive \"sliding_window\"".into())),
        })
        .collect()
}

/// A tiny LLaMA config for unit tests: hidden 64, 4 query heads over 2 KV heads (G = 2), head_dim 8.
#[cfg(test)]
pub(crate) fn tiny_gqa_config() -> ModelConfig {
    ModelConfig::from_json(serde_json::json!({"model_type":"llama","hidden_size":64,"num_hidden_layers":1,
        "num_attention_heads":4,"num_key_value_heads":2,"head_dim":8,"intermediate_size":32,"vocab_size":10}))
    .expect("a valid config")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({"model_type":"llama","hidden_size":64,"num_hidden_layers":2,"num_attention_heads":4,
            "intermediate_size":32,"vocab_size":10})
    }

    #[test]
    fn a_billion_layers_is_refused_before_allocating() {
        // the fuzzed config (and GGUF block_count) that made the per-layer tables abort
        let mut c = base();
        c["num_hidden_layers"] = json!(999_999_951u64);
        let e = ModelConfig::from_json(c.clone()).unwrap_err().to_string();
        assert!(e.contains("num_hidden_layers") && e.contains("999999951"), "{e}");
        c["num_hidden_layers"] = json!(MAX_LAYERS);
        assert!(ModelConfig::from_json(c).is_ok());
    }

    #[test]
    fn a_field_of_the_wrong_type_is_an_error_naming_it() {
        for (key, val) in [
            ("tie_word_embeddings", json!("yes")),
            ("rms_norm_eps", json!("tiny")),
            ("hidden_size", json!(64.5)),
            ("num_key_value_heads", json!("2")),
            ("attention_bias", json!(1)),
            ("rope_theta", json!([1])),
            ("head_dim", json!(-8)),
            // positive in f64 but 0 or infinite in f32
            ("rms_norm_eps", json!(1e-60)),
            ("rope_theta", json!(1e300)),
        ] {
            let mut c = base();
            c[key] = val.clone();
            let e = ModelConfig::from_json(c).unwrap_err().to_string();
            assert!(e.contains(&format!("\"{key}\"")) && e.contains(&val.to_string()), "{key}: {e}");
        }
        let mut c = base();
        c["rope_scaling"] = json!({"rope_type": "llama3", "factor": "8"});
        let e = ModelConfig::from_json(c).unwrap_err().to_string();
        assert!(e.contains("rope_scaling.factor"), "{e}");
        let mut c = base();
        c["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0});
        let e = ModelConfig::from_json(c).unwrap_err().to_string();
        assert!(e.contains("yarn") && e.contains("llama3"), "{e}");
        // null is "not set"
        let mut c = base();
        c["rope_scaling"] = Value::Null;
        c["head_dim"] = Value::Null;
        assert_eq!(ModelConfig::from_json(c).unwrap().head_dim, 16);
    }

    #[test]
    fn llama3_rope_scaling_follows_transformers() {
        // transformers' _compute_llama3_parameters on theta 500000, head_dim 64, factor 8, 1/4, 8192
        let r = Rope {
            theta: 500000.0,
            scaling: RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_positions: 8192.0 },
        };
        let base = Rope { theta: 500000.0, scaling: RopeScaling::None }.inv_freq(64);
        let f = r.inv_freq(64);
        // high frequencies (wavelength < 8192/4) unchanged, low ones (> 8192) divided by 8, between blended
        for (i, (&s, &b)) in f.iter().zip(&base).enumerate() {
            let wl = 2.0 * std::f32::consts::PI / b;
            if wl < 2048.0 {
                assert_eq!(s, b, "{i}");
            } else if wl > 8192.0 {
                assert_eq!(s, b / 8.0, "{i}");
            } else {
                assert!(s < b && s > b / 8.0, "{i}");
            }
        }
        assert!(f.iter().zip(&base).any(|(s, b)| s != b) && f[0] == base[0]);
    }

    #[test]
    fn families_read_their_own_spelling() {
        let g = ModelConfig::from_json(json!({"model_type":"gemma3_text","hidden_size":64,"num_hidden_layers":6,
            "num_attention_heads":4,"num_key_value_heads":1,"head_dim":16,"intermediate_size":32,"vocab_size":10,
            "sliding_window":5,"query_pre_attn_scalar":16,"rope_theta":1000000.0,"rope_local_base_freq":10000.0,
            "final_logit_softcapping":30.0}))
        .unwrap();
        assert_eq!(g.windows, vec![Some(5), Some(5), Some(5), Some(5), Some(5), None]);
        assert_eq!(g.layer_rope(0).unwrap().theta, 10000.0);
        assert_eq!(g.layer_rope(5).unwrap().theta, 1000000.0);
        assert_eq!(g.final_logit_softcap, Some(30.0));
        assert!(g.tie_embeddings && !g.attn_bias);
        let q = ModelConfig::from_json(json!({"model_type":"qwen2","hidden_size":64,"num_hidden_layers":2,
            "num_attention_heads":4,"intermediate_size":32,"vocab_size":10,"sliding_window":4,"use_sliding_window":false}))
        .unwrap();
        assert_eq!(q.bias, Biases { q: true, k: true, v: true, o: false, down: false });
        assert_eq!(q.windows, vec![None, None]);
        let m = ModelConfig::from_json(json!({"model_type":"mistral","hidden_size":64,"num_hidden_layers":2,
            "num_attention_heads":4,"intermediate_size":32,"vocab_size":10,"sliding_window":4}))
        .unwrap();
        assert_eq!(m.windows, vec![Some(4), Some(4)]);
        // the newer rope_parameters layout
        let mut c = base();
        c["rope_parameters"] = json!({"rope_type":"linear","factor":2.0,"rope_theta":5000.0});
        let r = ModelConfig::from_json(c).unwrap().rope.unwrap();
        assert_eq!(r, Rope { theta: 5000.0, scaling: RopeScaling::Linear { factor: 2.0 } });
        let e = ModelConfig::from_json(json!({"model_type":"gpt2"})).unwrap_err().to_string();
        assert!(e.contains("gpt2") && e.contains("gemma3_text"), "{e}");
    }
}
