//! A model on disk: its config, a lazy tensor source, and per-layer f32 materialization.

pub mod arch;
pub mod config;
pub mod synthetic;
pub mod weights;

use crate::error::{FaspError, Result};
use crate::tensor::Mat;
use arch::{layer_layout, Names, Role};
pub use config::{Family, ModelConfig};
use std::path::{Path, PathBuf};
pub use weights::{DType, SafetensorsSource, TensorSource};

/// Tokenizer files copied along with a pruned model.
pub const TOKENIZER_FILES: &[&str] =
    &["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt", "generation_config.json"];

/// `y = x Wᵀ + b`, HF layout `[out, in]`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub w: Mat,
    pub b: Option<Vec<f32>>,
}

/// A norm's parameters; its kind (LayerNorm, RMSNorm, `(1+w)` RMSNorm) is the family's
/// (`arch::NormKind`). `b` is LayerNorm's bias.
#[derive(Clone, Debug)]
pub struct Norm {
    pub w: Vec<f32>,
    pub b: Option<Vec<f32>>,
}

/// One decoder layer in f32. `v_units` are the original indices of the V rows present (all of
/// them in a dense layer; the kept ones in a compact layer); the o_proj columns follow
/// `arch::ctx_layout`.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    /// The layer's index (its window and rotary come from the config by index).
    pub index: usize,
    pub attn_norm: Norm,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub v_units: Vec<usize>,
    /// Per-head norms of Q and K (Qwen3, Gemma-3).
    pub q_norm: Option<Norm>,
    pub k_norm: Option<Norm>,
    /// Norm of the attention output before the residual add (Gemma-3).
    pub post_attn_norm: Option<Norm>,
    pub mlp_norm: Norm,
    /// fc1 (OPT) or up_proj (LLaMA): rows are MLP units.
    pub up: Linear,
    /// gate_proj (LLaMA): rows are MLP units.
    pub gate: Option<Linear>,
    /// fc2 / down_proj: columns are MLP units.
    pub down: Linear,
    /// Norm of the MLP output before the residual add (Gemma-3).
    pub post_mlp_norm: Option<Norm>,
}

impl LayerWeights {
    pub fn ffn(&self) -> usize {
        self.down.w.cols
    }
    pub fn param_count(&self) -> usize {
        let lin = |l: &Linear| l.w.data.len() + l.b.as_ref().map_or(0, |b| b.len());
        let norm = |n: &Norm| n.w.len() + n.b.as_ref().map_or(0, |b| b.len());
        let opt_norm = |n: &Option<Norm>| n.as_ref().map_or(0, norm);
        norm(&self.attn_norm)
            + opt_norm(&self.q_norm)
            + opt_norm(&self.k_norm)
            + opt_norm(&self.post_attn_norm)
            + opt_norm(&self.post_mlp_norm)
            + lin(&self.q)
            + lin(&self.k)
            + lin(&self.v)
            + lin(&self.o)
            + norm(&self.mlp_norm)
            + lin(&self.up)
            + self.gate.as_ref().map_or(0, lin)
            + lin(&self.down)
    }
}

pub struct Model {
    /// The directory or file the model came from.
    pub path: PathBuf,
    pub cfg: ModelConfig,
    pub names: Names,
    pub src: Box<dyn TensorSource>,
}

impl Model {
    /// Opens an HF directory (config.json + safetensors) or a `.gguf` file, and checks that every
    /// tensor the config implies is present with the right shape.
    pub fn open(path: &Path) -> Result<Model> {
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
            return crate::gguf_model::open(path);
        }
        if !path.is_dir() {
            return Err(FaspError::Arg(format!(
                "{}: not a model directory (expected config.json + model.safetensors) or a .gguf file",
                path.display()
            )));
        }
        let cfg = ModelConfig::from_file(&path.join("config.json"))?;
        let src = SafetensorsSource::open_dir(path)?;
        Model::from_parts(path.to_path_buf(), cfg, Box::new(src))
    }

    pub fn from_parts(path: PathBuf, cfg: ModelConfig, src: Box<dyn TensorSource>) -> Result<Model> {
        let prefix =
            Names::candidates(cfg.family).iter().find(|p| src.shape(&Names::new(cfg.family, p).embed()).is_some()).ok_or_else(|| {
                FaspError::Tensor {
                    name: Names::new(cfg.family, Names::candidates(cfg.family)[0]).embed(),
                    msg: format!("missing from {}", src.describe()),
                }
            })?;
        let model = Model { path, names: Names::new(cfg.family, prefix), cfg, src };
        model.validate()?;
        Ok(model)
    }

    fn expect(&self, name: &str, shape: &[usize]) -> Result<()> {
        match self.src.shape(name) {
            None => Err(FaspError::Tensor { name: name.into(), msg: format!("missing from {}", self.src.describe()) }),
            Some(s) if s != shape => {
                Err(FaspError::Tensor { name: name.into(), msg: format!("shape {s:?} contradicts the config (expected {shape:?})") })
            }
            Some(_) => Ok(()),
        }
    }

    /// Every expected tensor exists with the shape the config implies; no data is read.
    pub fn validate(&self) -> Result<()> {
        let c = &self.cfg;
        self.expect(&self.names.embed(), &[c.vocab, c.hidden])?;
        if let Some(p) = self.names.positions() {
            let n = self.src.shape(&p).map(|s| s[0]).unwrap_or(0);
            self.expect(&p, &[n.max(1), c.hidden])?;
            if n < 3 {
                return Err(FaspError::Tensor { name: p, msg: "too few learned positions".into() });
            }
        }
        self.expect(&self.names.final_norm_w(), &[c.hidden])?;
        if let Some(b) = self.names.final_norm_b() {
            self.expect(&b, &[c.hidden])?;
        }
        if !self.head_is_tied() {
            self.expect(self.names.lm_head(), &[c.vocab, c.hidden])?;
        }
        for l in 0..c.layers {
            for (role, shape) in layer_layout(c, l) {
                self.expect(&self.names.layer(l, role), &shape)?;
            }
        }
        Ok(())
    }

    /// Windows longer than OPT's learned position table cannot be embedded.
    pub fn check_seqlen(&self, seqlen: usize) -> Result<()> {
        if let Some(p) = self.names.positions() {
            let rows = self.src.shape(&p).map_or(0, |s| s[0]);
            if seqlen + 2 > rows {
                return Err(FaspError::Arg(format!(
                    "sequence length {seqlen} exceeds the model's {} learned positions",
                    rows.saturating_sub(2)
                )));
            }
        }
        Ok(())
    }

    /// A missing `lm_head.weight` with tied embeddings means the embedding (docs/spec.md §1).
    pub fn head_is_tied(&self) -> bool {
        self.src.shape(self.names.lm_head()).is_none() && self.cfg.tie_embeddings
    }

    /// The storage dtype of the checkpoint (that of the embedding).
    pub fn dtype(&self) -> DType {
        self.src.dtype(&self.names.embed()).unwrap_or(DType::F32)
    }

    pub fn load(&self, name: &str) -> Result<Vec<f32>> {
        let v = self.src.load_f32(name)?;
        if v.iter().any(|x| !x.is_finite()) {
            return Err(FaspError::Tensor { name: name.into(), msg: "contains NaN or infinite values".into() });
        }
        Ok(v)
    }

    fn load_mat(&self, name: &str) -> Result<Mat> {
        let shape = self.src.shape(name).ok_or_else(|| FaspError::Tensor { name: name.into(), msg: "missing".into() })?;
        let (r, c) = match shape.as_slice() {
            [r, c] => (*r, *c),
            _ => return Err(FaspError::Tensor { name: name.into(), msg: format!("expected a matrix, got shape {shape:?}") }),
        };
        Ok(Mat::from_vec(r, c, self.load(name)?))
    }

    pub fn embedding(&self) -> Result<Mat> {
        self.load_mat(&self.names.embed())
    }
    pub fn positions(&self) -> Result<Option<Mat>> {
        self.names.positions().map(|p| self.load_mat(&p)).transpose()
    }
    pub fn final_norm(&self) -> Result<Norm> {
        Ok(Norm { w: self.load(&self.names.final_norm_w())?, b: self.names.final_norm_b().map(|b| self.load(&b)).transpose()? })
    }
    /// The LM head `[vocab, hidden]` (the embedding when tied).
    pub fn lm_head(&self) -> Result<Mat> {
        if self.head_is_tied() {
            self.embedding()
        } else {
            self.load_mat(self.names.lm_head())
        }
    }

    /// Materializes layer `l` in f32: the tensors of `arch::layer_layout`, nothing else.
    pub fn layer(&self, l: usize) -> Result<LayerWeights> {
        let c = &self.cfg;
        let roles: Vec<Role> = layer_layout(c, l).into_iter().map(|(r, _)| r).collect();
        let has = |r: Role| roles.contains(&r);
        let n = |role| self.names.layer(l, role);
        let opt_vec = |role: Role| -> Result<Option<Vec<f32>>> { has(role).then(|| self.load(&n(role))).transpose() };
        let lin = |w, b| -> Result<Linear> { Ok(Linear { w: self.load_mat(&n(w))?, b: opt_vec(b)? }) };
        let norm = |w, b| -> Result<Norm> { Ok(Norm { w: self.load(&n(w))?, b: opt_vec(b)? }) };
        let opt_norm = |w: Role| -> Result<Option<Norm>> { has(w).then(|| Ok(Norm { w: self.load(&n(w))?, b: None })).transpose() };
        Ok(LayerWeights {
            index: l,
            attn_norm: norm(Role::AttnNormW, Role::AttnNormB)?,
            q: lin(Role::QW, Role::QB)?,
            k: lin(Role::KW, Role::KB)?,
            v: lin(Role::VW, Role::VB)?,
            o: lin(Role::OW, Role::OB)?,
            v_units: c.v_units(l),
            q_norm: opt_norm(Role::QNormW)?,
            k_norm: opt_norm(Role::KNormW)?,
            post_attn_norm: opt_norm(Role::PostAttnNormW)?,
            mlp_norm: norm(Role::MlpNormW, Role::MlpNormB)?,
            up: lin(Role::UpW, Role::UpB)?,
            gate: if has(Role::GateW) { Some(lin(Role::GateW, Role::GateB)?) } else { None },
            down: lin(Role::DownW, Role::DownB)?,
            post_mlp_norm: opt_norm(Role::PostMlpNormW)?,
        })
    }

    /// Parameter count of the checkpoint (a tied head counted once).
    pub fn param_count(&self) -> usize {
        self.src.tensors().iter().map(|(_, s)| s.iter().product::<usize>()).sum()
    }

    /// Parameters outside the decoder layers (embeddings, positions, final norm, untied head).
    pub fn non_layer_param_count(&self) -> usize {
        self.src.tensors().iter().filter(|(n, _)| !n.contains("layers.")).map(|(_, s)| s.iter().product::<usize>()).sum()
    }

    /// The model's tokenizer as `tokenizer.json` text: the directory's file, or the one a GGUF
    /// carries. `None` when the model has none (calibration must then come as token ids).
    pub fn tokenizer_json(&self) -> Result<Option<String>> {
        if self.path.is_dir() {
            let p = self.path.join("tokenizer.json");
            if !p.exists() {
                return Ok(None);
            }
            return std::fs::read_to_string(&p).map(Some).map_err(|e| FaspError::io(&p, e));
        }
        self.src.tokenizer_json().transpose()
    }

    pub fn tokenizer(&self) -> Result<Option<tokenizers::Tokenizer>> {
        match self.tokenizer_json()? {
            None => Ok(None),
            Some(json) => tokenizers::Tokenizer::from_bytes(json.as_bytes())
                .map(Some)
                .map_err(|e| FaspError::Calib(format!("tokenizer of {}: {e}", self.path.display()))),
        }
    }
}
