//! Our model as a GGUF file that llama.cpp loads: tensor names, layouts and metadata per family,
//! written through [`crate::gguf_write::GgufWriter`].
//!
//! * Families: LLaMA and Mistral as GGUF `llama` (as llama.cpp's `convert_hf_to_gguf.py` does),
//!   Qwen2 as `qwen2`, Qwen3 as `qwen3`, Gemma-3 as `gemma3`. OPT is refused (llama.cpp has no
//!   OPT architecture).
//! * `llama`: the rows of Q and K (and of their biases) are permuted per head for llama.cpp's
//!   interleaved rotary, `w.reshape(n_h, 2, hd/2, in).swapaxes(1, 2)` (the converter's `permute`;
//!   [`crate::gguf::unpermute_rows`] is its inverse and is what our reader applies).
//! * Gemma-3: every `*norm.weight` is stored as `1 + w` (HF stores `w` and computes with
//!   `1 + w`; the converter adds the 1; our reader subtracts it).
//! * Attention stays at full width: the pruned V rows and their o_proj columns are zeros (the
//!   dense-equivalent form), because llama.cpp holds one value width per model. The MLP is
//!   written at its pruned width, which FASP makes the same in every layer; a model whose layers
//!   differ is refused (the plain architectures hold one `feed_forward_length`).
//! * Tensor types: 1-D tensors (norms, biases) are F32, as llama.cpp's converter keeps them;
//!   matrices are the chosen type. Q8_0 needs rows (ne0) that are a multiple of 32. For the MLP
//!   (whose pruned width rarely is) the written width is padded with zero channels to the next
//!   multiple of 32: a zero gate/up row gives a zero activation, so the model is unchanged, and
//!   `ffn_down` quantizes like the rest (SmolLM2 at 20%: 1229 channels written as 1248). Any other
//!   matrix whose rows are not a multiple of 32 is written as F16, named in
//!   [`ExportSummary::f16_fallback`].
//! * Tokenizer: the input GGUF's `tokenizer.*` keys, copied verbatim; otherwise built from
//!   `tokenizer.json` (byte-level BPE only, see [`tokenizer_from_json`]).

use crate::error::{FaspError, Result};
use crate::gguf::{GgufFile, GgufValue};
use crate::gguf_write::{GgufType, GgufWriter};
use crate::model::arch::{Family, NormKind};
use crate::model::config::RopeScaling;
use crate::model::{LayerWeights, Model, ModelConfig};
use std::path::{Path, PathBuf};

/// The GGUF `general.architecture` a family is written as, or None (OPT).
pub fn gguf_arch(family: Family) -> Option<&'static str> {
    match family {
        Family::Llama | Family::Mistral => Some("llama"),
        Family::Qwen2 => Some("qwen2"),
        Family::Qwen3 => Some("qwen3"),
        Family::Gemma3 => Some("gemma3"),
        Family::Opt => None,
    }
}

/// llama.cpp's Q/K row permutation of a `[rows, cols]` matrix (or a bias, `cols = 1`) with `n_h`
/// heads: row `h*hd + j*2 + i` of the result is row `h*hd + i*hd/2 + j` of `w`. None if the rows
/// do not split into `n_h` heads of even size.
pub fn permute_rows(w: &[f32], rows: usize, cols: usize, n_h: usize) -> Option<Vec<f32>> {
    if n_h == 0 || !rows.is_multiple_of(n_h) || !(rows / n_h).is_multiple_of(2) || w.len() != rows.checked_mul(cols)? {
        return None;
    }
    let hd = rows / n_h;
    let half = hd / 2;
    let mut out = vec![0f32; w.len()];
    for (r, dst) in out.chunks_mut(cols.max(1)).enumerate() {
        let (h, within) = (r / hd, r % hd);
        let (j, i) = (within / 2, within % 2);
        let src = h * hd + i * half + j;
        dst.copy_from_slice(&w[src * cols..(src + 1) * cols]);
    }
    Some(out)
}

/// What an export wrote.
#[derive(Clone, Debug)]
pub struct ExportSummary {
    /// File size in bytes.
    pub bytes: u64,
    /// The type of the matrices.
    pub ty: GgufType,
    /// Matrices written as F16 because Q8_0 needs rows that are a multiple of 32.
    pub f16_fallback: Vec<String>,
    /// The MLP width written (`feed_forward_length`): the pruned width, padded with zero channels
    /// to a multiple of 32 for Q8_0.
    pub ffn: usize,
    /// The pruned MLP width.
    pub ffn_pruned: usize,
    /// Where the tokenizer came from (`input GGUF`, `tokenizer.json`, or `none`).
    pub tokenizer: &'static str,
}

/// Writes one model as GGUF, layer by layer (see the module docs).
pub struct GgufExporter {
    w: GgufWriter,
    cfg: ModelConfig,
    arch: &'static str,
    ty: GgufType,
    ffn: Option<usize>,
    written: Vec<bool>,
    f16_fallback: Vec<String>,
}

fn out_err(path: &Path, msg: impl Into<String>) -> FaspError {
    FaspError::Output { path: path.into(), msg: msg.into() }
}

impl GgufExporter {
    /// Checks that `model` can be written as GGUF and starts the file (its temporary files in
    /// `work_dir`, a directory on the same file system as `out`; beside `out` when `None`).
    pub fn create(model: &Model, out: &Path, work_dir: Option<&Path>, ty: GgufType) -> Result<Self> {
        let cfg = &model.cfg;
        let arch = gguf_arch(cfg.family).ok_or_else(|| {
            FaspError::Unsupported(format!(
                "{} cannot be written as GGUF: llama.cpp has no {} architecture (supported: llama, mistral, qwen2, qwen3, gemma3_text)",
                cfg.family.name(),
                cfg.family.name()
            ))
        })?;
        check_rope(cfg, arch)?;
        let w = match work_dir {
            Some(d) => GgufWriter::create_in(out, d)?,
            None => GgufWriter::create(out)?,
        };
        Ok(GgufExporter { w, cfg: cfg.clone(), arch, ty, ffn: None, written: vec![false; cfg.layers], f16_fallback: Vec::new() })
    }

    /// One matrix in the chosen type (F16 when Q8_0 cannot hold its rows).
    fn matrix(&mut self, name: &str, rows: usize, cols: usize, data: &[f32]) -> Result<()> {
        let ty = if self.ty == GgufType::Q8_0 && !cols.is_multiple_of(32) {
            self.f16_fallback.push(name.to_string());
            GgufType::F16
        } else {
            self.ty
        };
        self.w.tensor(name, &[rows, cols], data, ty)
    }

    /// One 1-D tensor in F32; Gemma-3's norms as `1 + w`.
    fn vector(&mut self, name: &str, data: &[f32]) -> Result<()> {
        if self.cfg.arch().norm == NormKind::RmsNormPlusOne && name.ends_with("norm.weight") {
            let shifted: Vec<f32> = data.iter().map(|x| x + 1.0).collect();
            return self.w.tensor(name, &[data.len()], &shifted, GgufType::F32);
        }
        self.w.tensor(name, &[data.len()], data, GgufType::F32)
    }

    /// Q or K rows (and bias) permuted for llama.cpp's rotary when the architecture is `llama`.
    fn qk(&self, name: &str, data: &[f32], rows: usize, cols: usize, n_h: usize) -> Result<Vec<f32>> {
        if self.arch != "llama" {
            return Ok(data.to_vec());
        }
        permute_rows(data, rows, cols, n_h)
            .ok_or_else(|| FaspError::Tensor { name: name.into(), msg: format!("{rows} rows do not split into {n_h} heads of even size") })
    }

    /// Writes layer `l`, given in compact or dense form (pruned V rows and o_proj columns are
    /// written as zeros).
    pub fn write_layer(&mut self, l: usize, lw: &LayerWeights) -> Result<()> {
        let cfg = self.cfg.clone();
        if l >= cfg.layers || self.written[l] {
            return Err(out_err(&self.w_out(), format!("layer {l} written twice or out of range (the model has {})", cfg.layers)));
        }
        let ffn = lw.ffn();
        match self.ffn {
            None => self.ffn = Some(ffn),
            Some(f) if f != ffn => {
                return Err(out_err(
                    &self.w_out(),
                    format!(
                        "layer {l} keeps {ffn} MLP channels but earlier layers keep {f}: GGUF's {} architecture holds one \
                         feed_forward_length for every layer (FASP prunes the same fraction per layer; this model was \
                         pruned otherwise)",
                        self.arch
                    ),
                ))
            }
            Some(_) => {}
        }
        let (v, o) = crate::output::dense_equivalent_attn(&cfg, lw);
        let n = |s: &str| format!("blk.{l}.{s}");
        let d = cfg.hidden;
        self.vector(&n("attn_norm.weight"), &lw.attn_norm.w)?;
        let q = self.qk(&n("attn_q.weight"), &lw.q.w.data, lw.q.w.rows, lw.q.w.cols, cfg.heads)?;
        self.matrix(&n("attn_q.weight"), lw.q.w.rows, d, &q)?;
        if let Some(b) = &lw.q.b {
            let b = self.qk(&n("attn_q.bias"), b, b.len(), 1, cfg.heads)?;
            self.vector(&n("attn_q.bias"), &b)?;
        }
        let k = self.qk(&n("attn_k.weight"), &lw.k.w.data, lw.k.w.rows, lw.k.w.cols, cfg.kv_heads)?;
        self.matrix(&n("attn_k.weight"), lw.k.w.rows, d, &k)?;
        if let Some(b) = &lw.k.b {
            let b = self.qk(&n("attn_k.bias"), b, b.len(), 1, cfg.kv_heads)?;
            self.vector(&n("attn_k.bias"), &b)?;
        }
        self.matrix(&n("attn_v.weight"), v.w.rows, v.w.cols, &v.w.data)?;
        if let Some(b) = &v.b {
            self.vector(&n("attn_v.bias"), b)?;
        }
        self.matrix(&n("attn_output.weight"), o.w.rows, o.w.cols, &o.w.data)?;
        if let Some(b) = &o.b {
            self.vector(&n("attn_output.bias"), b)?;
        }
        if let Some(qn) = &lw.q_norm {
            self.vector(&n("attn_q_norm.weight"), &qn.w)?;
        }
        if let Some(kn) = &lw.k_norm {
            self.vector(&n("attn_k_norm.weight"), &kn.w)?;
        }
        if let Some(p) = &lw.post_attn_norm {
            self.vector(&n("post_attention_norm.weight"), &p.w)?;
        }
        self.vector(&n("ffn_norm.weight"), &lw.mlp_norm.w)?;
        // Q8_0: the MLP padded with zero channels to a multiple of 32, so that ffn_down's rows
        // quantize too (a zero gate/up row gives a zero activation: the model is unchanged)
        let width = self.written_ffn(ffn);
        let pad_rows = |m: &crate::tensor::Mat| {
            let mut d = m.data.clone();
            d.resize(width * m.cols, 0.0);
            d
        };
        let pad_vec = |b: &Vec<f32>| {
            let mut b = b.clone();
            b.resize(width, 0.0);
            b
        };
        if let Some(g) = &lw.gate {
            self.matrix(&n("ffn_gate.weight"), width, g.w.cols, &pad_rows(&g.w))?;
            if let Some(b) = &g.b {
                self.vector(&n("ffn_gate.bias"), &pad_vec(b))?;
            }
        }
        self.matrix(&n("ffn_up.weight"), width, lw.up.w.cols, &pad_rows(&lw.up.w))?;
        if let Some(b) = &lw.up.b {
            self.vector(&n("ffn_up.bias"), &pad_vec(b))?;
        }
        let down = lw.down.w.scatter_cols(&(0..ffn).collect::<Vec<_>>(), width);
        self.matrix(&n("ffn_down.weight"), down.rows, down.cols, &down.data)?;
        if let Some(b) = &lw.down.b {
            self.vector(&n("ffn_down.bias"), b)?;
        }
        if let Some(p) = &lw.post_mlp_norm {
            self.vector(&n("post_ffw_norm.weight"), &p.w)?;
        }
        self.written[l] = true;
        Ok(())
    }

    /// The MLP width written for a pruned width `ffn`: `ffn`, or for Q8_0 the next multiple of 32.
    fn written_ffn(&self, ffn: usize) -> usize {
        if self.ty == GgufType::Q8_0 {
            ffn.next_multiple_of(32)
        } else {
            ffn
        }
    }

    fn w_out(&self) -> PathBuf {
        self.w.out().to_path_buf()
    }

    /// Adds a metadata entry of the caller's own (e.g. the run record).
    pub fn meta(&mut self, key: &str, v: GgufValue) {
        self.w.meta(key, v);
    }

    /// Writes the embedding, final norm and LM head of `model`, the metadata and the tokenizer,
    /// and renames the file into place.
    pub fn finish(mut self, model: &Model) -> Result<ExportSummary> {
        let cfg = self.cfg.clone();
        if let Some(l) = self.written.iter().position(|w| !w) {
            return Err(out_err(self.w.out(), format!("layer {l} of {} was not written", cfg.layers)));
        }
        let emb = model.embedding()?;
        self.matrix("token_embd.weight", emb.rows, emb.cols, &emb.data)?;
        drop(emb);
        self.vector("output_norm.weight", &model.final_norm()?.w)?;
        if !model.head_is_tied() {
            let head = model.lm_head()?;
            self.matrix("output.weight", head.rows, head.cols, &head.data)?;
        }
        if let Some((factors, params)) = llama3_rope(&cfg) {
            self.w.tensor("rope_freqs.weight", &[factors.len()], &factors, GgufType::F32)?;
            for (k, v) in crate::gguf::LLAMA3_ROPE_KEYS.iter().zip(params) {
                self.w.meta(&format!("fasp.rope.llama3.{k}"), GgufValue::F32(v));
            }
        }
        let ffn_pruned = self.ffn.unwrap_or(cfg.ffn);
        let ffn = self.written_ffn(ffn_pruned);
        for (k, v) in inherited_general(model)? {
            self.w.meta(&k, v);
        }
        for (k, v) in model_metadata(model, self.arch, ffn, self.ty) {
            self.w.meta(&k, v);
        }
        let (tok, tokenizer) = tokenizer_metadata(model)?;
        for (k, v) in tok {
            self.w.meta(&k, v);
        }
        if !self.f16_fallback.is_empty() {
            tracing::warn!(
                "{} matrices have rows that are not a multiple of 32 and were written as F16 instead of Q8_0: {}",
                self.f16_fallback.len(),
                self.f16_fallback.join(", ")
            );
        }
        let (ty, f16_fallback) = (self.ty, std::mem::take(&mut self.f16_fallback));
        let bytes = self.w.finish()?;
        Ok(ExportSummary { bytes, ty, f16_fallback, ffn, ffn_pruned, tokenizer })
    }
}

/// Rotary scalings GGUF holds: none and linear as metadata; Llama-3.x scaling as llama.cpp's
/// `rope_freqs.weight` tensor (GGUF `llama` only), with its parameters as `fasp.rope.llama3.*`
/// keys so that our reader can read it back.
fn check_rope(cfg: &ModelConfig, arch: &str) -> Result<()> {
    match cfg.rope.map(|r| r.scaling) {
        Some(RopeScaling::Llama3 { .. }) if arch != "llama" => {
            Err(FaspError::Unsupported(format!("Llama-3.x rope scaling is written to GGUF for the llama architecture only, not {arch}")))
        }
        _ => Ok(()),
    }
}

/// Llama-3.x rope scaling: `rope_freqs.weight` and the `fasp.rope.llama3.*` keys.
fn llama3_rope(cfg: &ModelConfig) -> Option<(Vec<f32>, [f32; 4])> {
    let r = cfg.rope?;
    let RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_positions } = r.scaling else { return None };
    let p = [factor, low_freq_factor, high_freq_factor, original_max_positions];
    let f = crate::gguf::llama3_rope_factors(r.theta as f64, cfg.head_dim, p[0] as f64, p[1] as f64, p[2] as f64, p[3] as f64);
    Some((f, p))
}

/// Every metadata key llama.cpp's loader reads for `arch`, from the config (with the MLP width
/// `ffn` actually written).
fn model_metadata(model: &Model, arch: &str, ffn: usize, ty: GgufType) -> Vec<(String, GgufValue)> {
    let cfg = &model.cfg;
    let u = |x: usize| GgufValue::U32(x as u32);
    let k = |s: &str| format!("{arch}.{s}");
    let name = cfg
        .raw
        .get("_name_or_path")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .map(|s| s.rsplit('/').next().unwrap_or(s).to_string())
        .unwrap_or_else(|| model.path.file_stem().map_or("model".into(), |s| s.to_string_lossy().into_owned()));
    let mut m: Vec<(String, GgufValue)> = vec![
        ("general.architecture".into(), GgufValue::String(arch.into())),
        ("general.type".into(), GgufValue::String("model".into())),
        ("general.name".into(), GgufValue::String(name)),
        ("general.file_type".into(), GgufValue::U32(ty.file_type())),
        ("general.quantization_version".into(), GgufValue::U32(2)),
        (k("vocab_size"), u(cfg.vocab)),
        (k("context_length"), u(cfg.max_positions)),
        (k("embedding_length"), u(cfg.hidden)),
        (k("block_count"), u(cfg.layers)),
        (k("feed_forward_length"), u(ffn)),
        (k("attention.head_count"), u(cfg.heads)),
        (k("attention.head_count_kv"), u(cfg.kv_heads)),
        (k("attention.key_length"), u(cfg.head_dim)),
        (k("attention.value_length"), u(cfg.head_dim)),
        (k("attention.layer_norm_rms_epsilon"), GgufValue::F32(cfg.norm_eps)),
        (k("rope.dimension_count"), u(cfg.head_dim)),
    ];
    if let Some(r) = cfg.rope {
        m.push((k("rope.freq_base"), GgufValue::F32(r.theta)));
        if let RopeScaling::Linear { factor } = r.scaling {
            m.push((k("rope.scaling.type"), GgufValue::String("linear".into())));
            m.push((k("rope.scaling.factor"), GgufValue::F32(factor)));
        }
    }
    let window = cfg.windows.iter().flatten().next().copied();
    if cfg.family == Family::Gemma3 {
        if let Some(w) = window {
            m.push((k("attention.sliding_window"), u(w)));
        }
        if let Some(c) = cfg.final_logit_softcap {
            m.push((k("final_logit_softcapping"), GgufValue::F32(c)));
        }
        // llama.cpp's gemma3 loader hard-codes these three; they are written only where the model
        // departs from them (our reader reads them; llama.cpp then computes a different model)
        let mut departs = Vec::new();
        let default_sliding: Vec<bool> = (0..cfg.layers).map(|i| (i + 1) % 6 != 0).collect();
        let sliding: Vec<bool> = cfg.windows.iter().map(|w| w.is_some()).collect();
        if window.is_some() && sliding != default_sliding {
            m.push((k("attention.sliding_window_pattern"), GgufValue::Array(sliding.into_iter().map(GgufValue::Bool).collect())));
            departs.push("its sliding-window layers are not every layer but each 6th");
        }
        if let Some(r) = cfg.rope_local.filter(|r| r.theta != 10000.0) {
            m.push((k("rope.freq_base_swa"), GgufValue::F32(r.theta)));
            departs.push("its local rope base is not 10000");
        }
        if (cfg.attn_scale - (cfg.head_dim as f64).powf(-0.5) as f32).abs() > 0.0 {
            m.push((k("attention.scale"), GgufValue::F32(cfg.attn_scale)));
            departs.push("its attention scale is not head_dim^-0.5");
        }
        if !departs.is_empty() {
            tracing::warn!(
                "this Gemma-3 model departs from what llama.cpp's gemma3 loader assumes ({}): the GGUF stores it, \
                 fasp-engine reads it back, but llama.cpp may compute another model",
                departs.join("; ")
            );
        }
    } else if window.is_some() {
        tracing::warn!(
            "{} uses sliding-window attention, which GGUF's {arch} architecture does not hold: llama.cpp attends to \
             every earlier token (as with convert_hf_to_gguf.py's files), which differs beyond {} tokens",
            cfg.family.name(),
            window.unwrap_or(0)
        );
    }
    m
}

/// A GGUF input's descriptive `general.*` keys (license, organization, basename, ...) and its run
/// record (`fasp.json`, when it came from `prune --format gguf`), kept in the output; the keys that
/// describe the file or the model's size (type, alignment, size label) are not.
fn inherited_general(model: &Model) -> Result<Vec<(String, GgufValue)>> {
    if !model.path.is_file() {
        return Ok(Vec::new());
    }
    const OWN: &[&str] =
        &["general.architecture", "general.file_type", "general.alignment", "general.quantization_version", "general.size_label"];
    let g = GgufFile::open(&model.path)?;
    Ok(g.metadata_entries()
        .iter()
        .filter(|(k, _)| (k.starts_with("general.") && !OWN.contains(&k.as_str())) || k == "fasp.json")
        .cloned()
        .collect())
}

/// The tokenizer keys: the input GGUF's `tokenizer.*`, copied verbatim; else built from the
/// model directory's `tokenizer.json`; else none (with a warning: llama.cpp needs one).
pub fn tokenizer_metadata(model: &Model) -> Result<(Vec<(String, GgufValue)>, &'static str)> {
    if model.path.is_file() {
        let g = GgufFile::open(&model.path)?;
        let keys: Vec<(String, GgufValue)> = g.metadata_entries().iter().filter(|(k, _)| k.starts_with("tokenizer.")).cloned().collect();
        if !keys.is_empty() {
            return Ok((keys, "input GGUF"));
        }
    } else {
        let p = model.path.join("tokenizer.json");
        if p.is_file() {
            let text = std::fs::read_to_string(&p).map_err(|e| FaspError::io(&p, e))?;
            let read_json = |name: &str| -> serde_json::Value {
                std::fs::read_to_string(model.path.join(name))
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok())
                    .unwrap_or(serde_json::Value::Null)
            };
            let keys = tokenizer_from_json(&text, &model.cfg.raw, &read_json("tokenizer_config.json"), model.cfg.vocab)
                .map_err(|m| FaspError::Unsupported(format!("{}: {m}", p.display())))?;
            return Ok((keys, "tokenizer.json"));
        }
    }
    tracing::warn!("{} has no tokenizer; the GGUF is written without one (llama.cpp will not load it)", model.path.display());
    Ok((Vec::new(), "none"))
}

/// llama.cpp's token types.
const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;
const TOKEN_UNUSED: i32 = 5;

/// `tokenizer.ggml.*` keys from an HF `tokenizer.json` with a byte-level BPE model, as
/// `convert_hf_to_gguf.py`'s `gpt2` vocabulary: `model = gpt2`; tokens by id, padded to the
/// model's `vocab` with `[PAD{id}]` (type unused); added tokens as control (special) or
/// user-defined; merges as `"a b"`; bos/eos/unk/pad ids from config.json, else tokenizer_config.json;
/// `add_bos_token` and `chat_template` from tokenizer_config.json when set. `pre` is chosen by the
/// pre-tokenizer's structure instead of the converter's hash of sample encodings: Digits(individual)
/// then ByteLevel is `smollm`, ByteLevel alone `gpt2`; anything else is refused (llama.cpp would
/// pre-tokenize differently).
pub fn tokenizer_from_json(
    text: &str,
    config: &serde_json::Value,
    tok_config: &serde_json::Value,
    vocab_size: usize,
) -> std::result::Result<Vec<(String, GgufValue)>, String> {
    let t: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let model = &t["model"];
    if model["type"] != "BPE" {
        return Err(format!("tokenizer model {} is not written to GGUF (byte-level BPE only)", model["type"]));
    }
    let pre = &t["pre_tokenizer"];
    let is_byte_level = |p: &serde_json::Value| p["type"] == "ByteLevel" && p["use_regex"] != false;
    let pre_name = if is_byte_level(pre) {
        "gpt2"
    } else if pre["type"] == "Sequence"
        && pre["pretokenizers"]
            .as_array()
            .is_some_and(|v| v.len() == 2 && v[0]["type"] == "Digits" && v[0]["individual_digits"] == true && is_byte_level(&v[1]))
    {
        "smollm"
    } else {
        return Err(format!(
            "pre-tokenizer {} has no llama.cpp equivalent known here (ByteLevel: gpt2; Digits + ByteLevel: smollm)",
            serde_json::to_string(pre).unwrap_or_default()
        ));
    };
    let vocab = model["vocab"].as_object().ok_or("model.vocab is missing")?;
    let mut entries: Vec<(u64, String, i32)> = Vec::with_capacity(vocab.len());
    for (tok, id) in vocab {
        entries.push((id.as_u64().ok_or_else(|| format!("vocab id of {tok:?} is not an integer"))?, tok.clone(), TOKEN_NORMAL));
    }
    for a in t["added_tokens"].as_array().map(|v| v.as_slice()).unwrap_or(&[]) {
        let id = a["id"].as_u64().ok_or("added token without an id")?;
        let content = a["content"].as_str().ok_or("added token without content")?.to_string();
        let ty = if a["special"] == true { TOKEN_CONTROL } else { TOKEN_USER_DEFINED };
        match entries.iter_mut().find(|e| e.0 == id) {
            Some(e) => {
                e.1 = content;
                e.2 = ty;
            }
            None => entries.push((id, content, ty)),
        }
    }
    let n = entries.iter().map(|e| e.0 as usize + 1).max().unwrap_or(0).max(vocab_size);
    if n > vocab_size {
        return Err(format!("the tokenizer has ids up to {} but the model's vocabulary is {vocab_size}", n - 1));
    }
    let mut tokens: Vec<Option<(String, i32)>> = vec![None; n];
    for (id, tok, ty) in entries {
        tokens[id as usize] = Some((tok, ty));
    }
    let (tokens, types): (Vec<String>, Vec<i32>) =
        tokens.into_iter().enumerate().map(|(i, t)| t.unwrap_or_else(|| (format!("[PAD{i}]"), TOKEN_UNUSED))).unzip();
    let merges: Vec<String> = model["merges"]
        .as_array()
        .map(|v| v.as_slice())
        .unwrap_or(&[])
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => Ok(s.clone()),
            serde_json::Value::Array(p) if p.len() == 2 => {
                Ok(format!("{} {}", p[0].as_str().unwrap_or_default(), p[1].as_str().unwrap_or_default()))
            }
            other => Err(format!("merge {other} is neither \"a b\" nor [a, b]")),
        })
        .collect::<std::result::Result<_, _>>()?;
    let mut m: Vec<(String, GgufValue)> = vec![
        ("tokenizer.ggml.model".into(), GgufValue::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), GgufValue::String(pre_name.into())),
    ];
    // a special token's id: config.json's `NAME_token_id`, else tokenizer_config.json's `NAME_token`
    let id_of = |name: &str| -> Option<u64> {
        if let Some(id) = config.get(format!("{name}_token_id")).and_then(|v| v.as_u64().or_else(|| v.get(0)?.as_u64())) {
            return Some(id);
        }
        let v = tok_config.get(format!("{name}_token"))?;
        let s = v.as_str().or_else(|| v.get("content")?.as_str())?;
        tokens.iter().position(|t| t == s).map(|i| i as u64)
    };
    let ids: Vec<(&str, Option<u64>)> =
        vec![("bos", id_of("bos")), ("eos", id_of("eos")), ("unknown", id_of("unk")), ("padding", id_of("pad"))];
    m.push(("tokenizer.ggml.tokens".into(), GgufValue::Array(tokens.into_iter().map(GgufValue::String).collect())));
    m.push(("tokenizer.ggml.token_type".into(), GgufValue::Array(types.into_iter().map(GgufValue::I32).collect())));
    m.push(("tokenizer.ggml.merges".into(), GgufValue::Array(merges.into_iter().map(GgufValue::String).collect())));
    for (k, id) in ids {
        if let Some(id) = id.filter(|&i| (i as usize) < n) {
            m.push((format!("tokenizer.ggml.{k}_token_id"), GgufValue::U32(id as u32)));
        }
    }
    if let Some(b) = tok_config.get("add_bos_token").and_then(|v| v.as_bool()) {
        m.push(("tokenizer.ggml.add_bos_token".into(), GgufValue::Bool(b)));
    }
    if let Some(c) = tok_config.get("chat_template").and_then(|v| v.as_str()) {
        m.push(("tokenizer.chat_template".into(), GgufValue::String(c.into())));
    }
    Ok(m)
}

/// The whole `model` (dense, dense-equivalent or compact) written as GGUF to `out`, with its
/// temporary files in `work_dir` (beside `out` when `None`).
pub fn export_model(model: &Model, out: &Path, work_dir: Option<&Path>, ty: GgufType) -> Result<ExportSummary> {
    let mut e = GgufExporter::create(model, out, work_dir, ty)?;
    for l in 0..model.cfg.layers {
        crate::interrupt::stage(format!("writing layer {} of {} as GGUF", l + 1, model.cfg.layers));
        crate::interrupt::check()?;
        e.write_layer(l, &model.layer(l)?)?;
    }
    e.finish(model)
}

/// The GGUF type an output gets when none is asked for: the input's (F32, F16 and BF16 stay;
/// quantized GGUF tensors, which the engine computes with in f32, become F16).
pub fn default_type(model: &Model) -> GgufType {
    match model.dtype() {
        crate::model::DType::F32 => GgufType::F32,
        crate::model::DType::F16 => GgufType::F16,
        crate::model::DType::BF16 => GgufType::BF16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_is_the_inverse_of_the_readers_unpermute() {
        let (rows, cols, n_h) = (24, 5, 3);
        let w: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let p = permute_rows(&w, rows, cols, n_h).unwrap();
        assert_ne!(p, w);
        // head 0, hd 8: rows become 0, 4, 1, 5, 2, 6, 3, 7 (the converter's reshape/swapaxes)
        let first: Vec<f32> = p.chunks(cols).take(8).map(|r| r[0] / cols as f32).collect();
        assert_eq!(first, vec![0.0, 4.0, 1.0, 5.0, 2.0, 6.0, 3.0, 7.0]);
        assert_eq!(crate::gguf::unpermute_rows(&p, rows, cols, n_h).unwrap(), w);
        let b: Vec<f32> = (0..rows).map(|i| i as f32).collect();
        assert_eq!(crate::gguf::unpermute_rows(&permute_rows(&b, rows, 1, n_h).unwrap(), rows, 1, n_h).unwrap(), b);
        assert!(permute_rows(&w, rows, cols, 5).is_none());
    }

    #[test]
    fn llama3_rope_factors_divide_the_base_frequencies_into_the_scaled_ones() {
        use crate::model::config::Rope;
        let scaling = RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_positions: 8192.0 };
        let (theta, hd) = (500000.0f32, 64);
        let scaled = Rope { theta, scaling }.inv_freq(hd);
        let base = Rope { theta, scaling: RopeScaling::None }.inv_freq(hd);
        let f = crate::gguf::llama3_rope_factors(theta as f64, hd, 8.0, 1.0, 4.0, 8192.0);
        assert_eq!((f[0], f[31]), (1.0, 8.0));
        assert!(f.iter().any(|&x| x > 1.0 && x < 8.0), "a blended band");
        for ((b, s), f) in base.iter().zip(&scaled).zip(&f) {
            assert!((b / f - s).abs() <= 1e-6 * s, "{b} / {f} vs {s}");
        }
    }

    #[test]
    fn tokenizer_json_becomes_gpt2_metadata() {
        let t = serde_json::json!({
            "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"]]},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]},
            "added_tokens": [{"id": 3, "content": "<s>", "special": true}, {"id": 4, "content": "hi", "special": false}]
        });
        let m = tokenizer_from_json(&t.to_string(), &serde_json::json!({"eos_token_id": 3}), &serde_json::json!({"bos_token": "<s>"}), 6)
            .unwrap();
        let get = |k: &str| m.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("tokenizer.ggml.pre"), Some(GgufValue::String("smollm".into())));
        let toks = get("tokenizer.ggml.tokens").unwrap();
        let toks: Vec<&str> = toks.as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(toks, vec!["a", "b", "ab", "<s>", "hi", "[PAD5]"]);
        let types: Vec<u64> = get("tokenizer.ggml.token_type").unwrap().as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(types, vec![1, 1, 1, 3, 4, 5]);
        assert_eq!(get("tokenizer.ggml.merges"), Some(GgufValue::Array(vec![GgufValue::String("a b".into())])));
        assert_eq!(get("tokenizer.ggml.bos_token_id"), Some(GgufValue::U32(3)));
        assert_eq!(get("tokenizer.ggml.eos_token_id"), Some(GgufValue::U32(3)));
        // a vocabulary larger than the model's is refused; an unknown pre-tokenizer too
        assert!(tokenizer_from_json(&t.to_string(), &serde_json::Value::Null, &serde_json::Value::Null, 4).is_err());
        let mut u = t.clone();
        u["pre_tokenizer"] = serde_json::json!({"type": "Whitespace"});
        assert!(tokenizer_from_json(&u.to_string(), &serde_json::Value::Null, &serde_json::Value::Null, 6)
            .unwrap_err()
            .contains("Whitespace"));
    }
}
