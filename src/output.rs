//! Writers for a pruned model (docs/spec.md §9): the dense-equivalent HF directory (default) or the
//! compact form (`--compact`), plus `fasp.json` and the tokenizer files.
//!
//! Everything is written into a temporary directory beside `--out` and renamed into place only
//! when complete; on any error (or a panic) the temporary directory is removed, so a failed run
//! leaves nothing behind. Layers are encoded as they arrive and flushed into ~2 GiB shards, so the
//! writer holds at most one shard in memory.

use crate::error::{FaspError, Result};
use crate::model::arch::{attn_columns, AttnBiases, Role};
use crate::model::{DType, LayerWeights, Model, TOKENIZER_FILES};
use crate::tensor::Mat;
use safetensors::tensor::TensorView;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const SHARD_BYTES: usize = 2 << 30;

/// A directory that is deleted on drop unless `keep` was called.
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn out_err(path: &Path, msg: impl Into<String>) -> FaspError {
    FaspError::Output { path: path.into(), msg: msg.into() }
}

/// Absolute form of a path that may not exist yet.
fn absolute(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent).map(|c| c.join(name)).unwrap_or(abs),
        _ => abs,
    }
}

/// Checks `out` against the input and `--force`, without touching anything.
pub fn check_out(out: &Path, input: &Path, force: bool) -> Result<()> {
    let out_abs = absolute(out);
    let in_abs = std::fs::canonicalize(input).unwrap_or_else(|_| absolute(input));
    if out_abs == in_abs || in_abs.starts_with(&out_abs) {
        return Err(out_err(out, "refusing to write over the input model; choose another --out"));
    }
    if out_abs.exists() && !force {
        return Err(out_err(out, "already exists (use --force to replace it)"));
    }
    if out_abs.exists() && !out_abs.is_dir() {
        return Err(out_err(out, "exists and is not a directory"));
    }
    let parent = out_abs.parent().ok_or_else(|| out_err(out, "has no parent directory"))?;
    if !parent.is_dir() {
        return Err(out_err(out, format!("parent directory {} does not exist", parent.display())));
    }
    Ok(())
}

/// Refuses an `out` that overlaps an input, with or without `--force`: `out` may not be an input,
/// contain one (replacing it would delete it) or lie inside an input directory (it would write
/// into the input model). `inputs` are (what, path) pairs, e.g. ("calibration file", calib); a
/// directory input (an HF model) counts with every entry in it, so that symlinked shards or
/// tokenizer files (as in the Hugging Face cache) are compared where they really live.
pub fn check_out_vs_inputs(out: &Path, inputs: &[(&str, &Path)]) -> Result<()> {
    // the lexical absolute form and, when it exists, where it resolves to
    let mut out_forms = vec![absolute(out)];
    if let Ok(c) = std::fs::canonicalize(out) {
        out_forms.push(c);
    }
    let mut checks: Vec<(String, PathBuf, bool)> = Vec::new();
    for &(what, input) in inputs {
        let is_dir = input.is_dir();
        for p in [absolute(input), std::fs::canonicalize(input).unwrap_or_else(|_| absolute(input))] {
            checks.push((format!("{what} {}", input.display()), p, is_dir));
        }
        if is_dir {
            for e in std::fs::read_dir(input).into_iter().flatten().flatten() {
                if let Ok(c) = std::fs::canonicalize(e.path()) {
                    checks.push((format!("{what} {} ({})", input.display(), e.file_name().to_string_lossy()), c, false));
                }
            }
        }
    }
    for o in &out_forms {
        for (what, p, is_dir) in &checks {
            let msg = if o == p {
                format!("refusing to write over the {what}; choose another --out")
            } else if p.starts_with(o) {
                format!("contains the {what}; choose another --out (replacing it would delete the input)")
            } else if *is_dir && o.starts_with(p) {
                format!("is inside the {what}; choose another --out")
            } else {
                continue;
            };
            return Err(out_err(out, msg));
        }
    }
    Ok(())
}

/// `check_out`, then creates the temporary directory beside `out`.
pub fn prepare_out(out: &Path, input: &Path, force: bool) -> Result<TempDir> {
    check_out(out, input, force)?;
    let out_abs = absolute(out);
    let parent = out_abs.parent().ok_or_else(|| out_err(out, "has no parent directory"))?;
    let name = out_abs.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = parent.join(format!(".{name}.tmp-{}-{seq}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(|e| FaspError::io(&tmp, e))?;
    Ok(TempDir { path: tmp, keep: false })
}

/// Renames the finished temporary directory to `out` (replacing an old `out` under `--force`).
pub fn commit_out(mut tmp: TempDir, out: &Path) -> Result<()> {
    let out_abs = absolute(out);
    if out_abs.exists() {
        let old = tmp.path.with_extension("old");
        std::fs::rename(&out_abs, &old).map_err(|e| FaspError::io(&out_abs, e))?;
        std::fs::rename(&tmp.path, &out_abs).map_err(|e| FaspError::io(&out_abs, e))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(&tmp.path, &out_abs).map_err(|e| FaspError::io(&out_abs, e))?;
    }
    tmp.keep = true;
    Ok(())
}

/// Accumulates encoded tensors and flushes them into safetensors shards.
struct ShardWriter {
    dir: PathBuf,
    pending: Vec<(String, Vec<usize>, Vec<u8>)>,
    pending_bytes: usize,
    /// (file name, tensor names) of the flushed shards.
    shards: Vec<(String, Vec<String>)>,
    total_bytes: usize,
    dtype: DType,
}

impl ShardWriter {
    fn add(&mut self, name: String, shape: Vec<usize>, data: &[f32]) -> Result<()> {
        let bytes = self.dtype.encode(data);
        self.pending_bytes += bytes.len();
        self.total_bytes += bytes.len();
        self.pending.push((name, shape, bytes));
        if self.pending_bytes >= SHARD_BYTES {
            self.flush()?;
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let file = format!("shard-{:05}.safetensors", self.shards.len() + 1);
        let path = self.dir.join(&file);
        let views: Vec<(String, TensorView)> = self
            .pending
            .iter()
            .map(|(n, s, b)| {
                Ok((n.clone(), TensorView::new(self.dtype.safetensors(), s.clone(), b).map_err(|e| out_err(&path, e.to_string()))?))
            })
            .collect::<Result<_>>()?;
        let meta = Some([("format".to_string(), "pt".to_string())].into_iter().collect());
        safetensors::serialize_to_file(views, meta, &path).map_err(|e| out_err(&path, e.to_string()))?;
        self.shards.push((file, self.pending.iter().map(|(n, _, _)| n.clone()).collect()));
        self.pending.clear();
        self.pending_bytes = 0;
        Ok(())
    }
    /// Gives the shards their final names, with an index when there is more than one.
    fn finish(mut self) -> Result<()> {
        self.flush()?;
        let n = self.shards.len();
        if n == 1 {
            let from = self.dir.join(&self.shards[0].0);
            let to = self.dir.join("model.safetensors");
            return std::fs::rename(&from, &to).map_err(|e| FaspError::io(&to, e));
        }
        let mut weight_map = BTreeMap::new();
        for (i, (file, names)) in self.shards.iter().enumerate() {
            let final_name = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
            let to = self.dir.join(&final_name);
            std::fs::rename(self.dir.join(file), &to).map_err(|e| FaspError::io(&to, e))?;
            for t in names {
                weight_map.insert(t.clone(), final_name.clone());
            }
        }
        let index = serde_json::json!({"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map});
        write_json(&self.dir.join("model.safetensors.index.json"), &index)
    }
}

pub fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).expect("JSON values serialize");
    std::fs::write(path, text + "\n").map_err(|e| FaspError::io(path, e))
}

/// Shipped with an output whose FLAP compensation added o_proj / down_proj biases that the
/// family's transformers class has no slot for (`fasp_extra_biases` in config.json).
const FASP_BIASES_PY: &str = r#""""Written by fasp-engine: {base} with the o_proj / down_proj biases that FLAP's bias
compensation added (config.json lists them in `fasp_extra_biases`). transformers' {base} has no
place for them; load this directory with
    AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
Without trust_remote_code, transformers drops these biases (warning that some weights were not
used) and the model is not the pruned one.
"""
import torch
from transformers import {base}


class {class}({base}):
    def __init__(self, config):
        super().__init__(config)
        extra = set(getattr(config, "fasp_extra_biases", None) or [])
        for layer in self.model.layers:
            for key, lin in (("o_proj", layer.self_attn.o_proj), ("down_proj", layer.mlp.down_proj)):
                if key in extra and lin.bias is None:
                    lin.bias = torch.nn.Parameter(torch.zeros(lin.out_features, dtype=lin.weight.dtype, device=lin.weight.device))
"#;

/// Writes the pruned model layer by layer.
pub struct ModelWriter {
    tmp: TempDir,
    shards: ShardWriter,
    compact: bool,
    kept_v: Vec<Vec<usize>>,
    ffn: Option<usize>,
    /// An o_proj / down_proj bias was added (FLAP's compensation) where the model had none.
    o_bias_added: bool,
    down_bias_added: bool,
    params_dense_equivalent: usize,
    params_compact: usize,
}

impl ModelWriter {
    /// Validates `out` and creates the temporary directory. Call before the prune starts, so
    /// that a bad `--out` fails at once.
    pub fn create(out: &Path, model: &Model, force: bool, dtype: DType, compact: bool) -> Result<Self> {
        let tmp = prepare_out(out, &model.path, force)?;
        let dir = tmp.path().to_path_buf();
        Ok(ModelWriter {
            tmp,
            shards: ShardWriter { dir, pending: Vec::new(), pending_bytes: 0, shards: Vec::new(), total_bytes: 0, dtype },
            compact,
            kept_v: Vec::new(),
            ffn: None,
            o_bias_added: false,
            down_bias_added: false,
            params_dense_equivalent: 0,
            params_compact: 0,
        })
    }

    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// Writes one pruned layer (given in compact form).
    pub fn write_layer(&mut self, model: &Model, l: usize, lw: &LayerWeights) -> Result<()> {
        let cfg = &model.cfg;
        let name = |r| model.names.layer(l, r);
        let ffn = lw.ffn();
        if *self.ffn.get_or_insert(ffn) != ffn {
            return Err(out_err(self.tmp.path(), format!("layer {l} keeps {ffn} MLP channels, earlier layers {:?}", self.ffn)));
        }
        self.o_bias_added |= lw.o.b.is_some() && !cfg.bias.o;
        self.down_bias_added |= lw.down.b.is_some() && !cfg.bias.down;
        self.params_compact += lw.param_count();
        let nv = cfg.v_width();
        let (v, o) = if self.compact {
            (lw.v.clone(), lw.o.clone())
        } else {
            // dense-equivalent: zero V rows for pruned units, W2' scattered into the kept o_proj columns
            let mut vw = Mat::zeros(nv, cfg.hidden);
            for (i, &u) in lw.v_units.iter().enumerate() {
                vw.row_mut(u).copy_from_slice(lw.v.w.row(i));
            }
            let vb = lw.v.b.as_ref().map(|b| {
                let mut full = vec![0.0; nv];
                for (i, &u) in lw.v_units.iter().enumerate() {
                    full[u] = b[i];
                }
                full
            });
            let cols = attn_columns(cfg, &lw.v_units);
            (
                crate::model::Linear { w: vw, b: vb },
                crate::model::Linear { w: lw.o.w.scatter_cols(&cols, cfg.ctx_width()), b: lw.o.b.clone() },
            )
        };
        let dense_eq = LayerWeights { v: v.clone(), o: o.clone(), ..lw.clone() };
        self.params_dense_equivalent += dense_eq.param_count();
        self.kept_v.push(lw.v_units.clone());

        // an added o_proj bias turns a family's attention-bias switch on, which gives q/k/v biases too
        // (written as zeros); likewise an added down bias under an MLP-bias switch
        let a = cfg.arch();
        let attn_switch = matches!(a.attn_biases, AttnBiases::Switch { .. }) && self.o_bias_added;
        let mlp_switch = a.mlp_bias_key.is_some() && self.down_bias_added;
        let s = &mut self.shards;
        let mat = |s: &mut ShardWriter, role, m: &Mat| s.add(name(role), vec![m.rows, m.cols], &m.data);
        let vecw = |s: &mut ShardWriter, role, v: &[f32]| s.add(name(role), vec![v.len()], v);
        let bias = |s: &mut ShardWriter, role, b: &Option<Vec<f32>>, len: usize, on: bool| -> Result<()> {
            match (b, on) {
                (Some(b), _) => vecw(s, role, b),
                (None, true) => vecw(s, role, &vec![0.0; len]),
                (None, false) => Ok(()),
            }
        };
        let norm = |s: &mut ShardWriter, role, n: &Option<crate::model::Norm>| n.as_ref().map_or(Ok(()), |n| vecw(s, role, &n.w));
        vecw(s, Role::AttnNormW, &lw.attn_norm.w)?;
        if let Some(b) = &lw.attn_norm.b {
            vecw(s, Role::AttnNormB, b)?;
        }
        mat(s, Role::QW, &lw.q.w)?;
        bias(s, Role::QB, &lw.q.b, lw.q.w.rows, attn_switch)?;
        mat(s, Role::KW, &lw.k.w)?;
        bias(s, Role::KB, &lw.k.b, lw.k.w.rows, attn_switch)?;
        mat(s, Role::VW, &v.w)?;
        bias(s, Role::VB, &v.b, v.w.rows, attn_switch)?;
        mat(s, Role::OW, &o.w)?;
        bias(s, Role::OB, &o.b, o.w.rows, attn_switch || self.o_bias_added)?;
        norm(s, Role::QNormW, &lw.q_norm)?;
        norm(s, Role::KNormW, &lw.k_norm)?;
        norm(s, Role::PostAttnNormW, &lw.post_attn_norm)?;
        vecw(s, Role::MlpNormW, &lw.mlp_norm.w)?;
        if let Some(b) = &lw.mlp_norm.b {
            vecw(s, Role::MlpNormB, b)?;
        }
        mat(s, Role::UpW, &lw.up.w)?;
        bias(s, Role::UpB, &lw.up.b, lw.up.w.rows, mlp_switch)?;
        if let Some(g) = &lw.gate {
            mat(s, Role::GateW, &g.w)?;
            bias(s, Role::GateB, &g.b, g.w.rows, mlp_switch)?;
        }
        mat(s, Role::DownW, &lw.down.w)?;
        bias(s, Role::DownB, &lw.down.b, lw.down.w.rows, mlp_switch || self.down_bias_added)?;
        norm(s, Role::PostMlpNormW, &lw.post_mlp_norm)?;
        Ok(())
    }

    /// (dense-equivalent, compact) parameter counts of what was written, including the
    /// non-layer tensors of `model`.
    pub fn param_counts(&self, model: &Model) -> (usize, usize) {
        let other = model.non_layer_param_count();
        (self.params_dense_equivalent + other, self.params_compact + other)
    }

    /// Writes the non-layer tensors, config.json, the tokenizer files and `fasp.json`, then
    /// renames the directory into place.
    pub fn finish(mut self, model: &Model, out: &Path, fasp_json: Option<&serde_json::Value>) -> Result<()> {
        let cfg = &model.cfg;
        if self.kept_v.len() != cfg.layers {
            return Err(out_err(out, format!("only {} of {} layers were written", self.kept_v.len(), cfg.layers)));
        }
        let mut names = vec![model.names.embed(), model.names.final_norm_w()];
        names.extend(model.names.positions());
        names.extend(model.names.final_norm_b());
        if model.src.shape(model.names.lm_head()).is_some() {
            names.push(model.names.lm_head().to_string());
        }
        for n in names {
            let shape = model.src.shape(&n).unwrap_or_default();
            let data = model.load(&n)?;
            self.shards.add(n, shape, &data)?;
        }
        let dtype = self.shards.dtype;
        self.shards.finish()?;
        let dir = self.tmp.path().to_path_buf();

        let mut config = cfg.raw.clone();
        let obj = config.as_object_mut().ok_or_else(|| out_err(out, "config is not a JSON object"))?;
        let a = cfg.arch();
        obj.insert(a.ffn_key.into(), self.ffn.unwrap_or(cfg.ffn).into());
        obj.insert("torch_dtype".into(), dtype.name().into());
        // biases FLAP's compensation added: through the family's config switch, or (a family
        // without one) listed in `fasp_extra_biases` and added by the shipped `fasp_biases.py` (below)
        let mut extra: Vec<&str> = cfg
            .raw
            .get("fasp_extra_biases")
            .and_then(|v| serde_json::from_value::<Vec<String>>(v.clone()).ok())
            .map_or(vec![], |v| v.iter().filter_map(|e| ["o_proj", "down_proj"].into_iter().find(|k| k == e)).collect());
        if self.o_bias_added {
            match a.attn_biases {
                AttnBiases::Switch { key, .. } => {
                    obj.insert(key.into(), true.into());
                }
                AttnBiases::Fixed { .. } => extra.push("o_proj"),
            }
        }
        if self.down_bias_added {
            match a.mlp_bias_key {
                Some(key) => {
                    obj.insert(key.into(), true.into());
                }
                None => extra.push("down_proj"),
            }
        }
        extra.sort_unstable();
        extra.dedup();
        if !extra.is_empty() {
            // transformers' class of this family has no slot for these biases: ship a subclass
            // that adds them, mapped for `trust_remote_code=True` (README "FLAP's added biases")
            obj.insert("fasp_extra_biases".into(), serde_json::to_value(&extra).expect("serializable"));
            let class = format!("FaspBiased{}", a.hf_class);
            obj.insert("auto_map".into(), serde_json::json!({"AutoModelForCausalLM": format!("fasp_biases.{class}")}));
            let code = FASP_BIASES_PY.replace("{base}", a.hf_class).replace("{class}", &class);
            let path = dir.join("fasp_biases.py");
            std::fs::write(&path, code).map_err(|e| FaspError::io(&path, e))?;
        }
        if !model.head_is_tied() {
            obj.insert("tie_word_embeddings".into(), false.into());
        } else {
            obj.insert("tie_word_embeddings".into(), true.into());
        }
        if self.compact {
            obj.insert("fasp_compact_v_units".into(), serde_json::to_value(&self.kept_v).expect("serializable"));
        }
        write_json(&dir.join("config.json"), &config)?;

        if model.path.is_dir() {
            for f in TOKENIZER_FILES {
                let src = model.path.join(f);
                if src.exists() {
                    std::fs::copy(&src, dir.join(f)).map_err(|e| FaspError::io(&src, e))?;
                }
            }
        } else if let Some(json) = model.tokenizer_json()? {
            std::fs::write(dir.join("tokenizer.json"), json).map_err(|e| FaspError::io(dir.join("tokenizer.json"), e))?;
        }
        if let Some(rec) = fasp_json {
            write_json(&dir.join("fasp.json"), rec)?;
        }
        commit_out(self.tmp, out)
    }
}

/// Total size in bytes of the files in `dir` (not recursive: a written model is flat), for the
/// size a run reports.
pub fn dir_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let m = e?.metadata()?;
        if m.is_file() {
            total += m.len();
        }
    }
    Ok(total)
}
