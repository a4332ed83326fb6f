//! `prune --resume`: each finished layer is checkpointed inside the run's temporary directory, so
//! a run that dies (a crash, SIGKILL, a power cut) can be continued from its last finished layer.
//!
//! `TMP/.checkpoint/manifest.json` says what the run was (engine version, input model, the
//! calibration windows' token ids, the prune settings, the backend); a resume must match it
//! exactly, or it is refused. `TMP/.checkpoint/layer-NNNNN.safetensors` holds layer N as it was
//! pruned: the restored `W2'` of both pairs (o_proj and fc2/down_proj, with their biases) in f32,
//! and, as metadata, the kept units and the layer's record. The rest of the pruned layer (the kept
//! V and fc1/gate/up rows, the untouched weights) is read again from the input model. A layer
//! file is written under a temporary name and renamed, so one cut off mid-write is ignored.
//!
//! On resume the calibration states are rebuilt by running the backend's own forward steps
//! through the already-pruned layers (the same calls the uninterrupted run made), and the output
//! is written again from the checkpointed layers, so the result is bit-identical to an
//! uninterrupted run on the same backend.

use crate::calib::Windows;
use crate::error::{FaspError, Result};
use crate::model::{LayerWeights, Linear, Model};
use crate::prune::{LayerReport, PruneConfig};
use crate::tensor::Mat;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The checkpoint's directory inside the temporary output directory (removed before the output
/// is renamed into place).
pub const DIR: &str = ".checkpoint";
const MANIFEST: &str = "manifest.json";

fn ck_err(path: &Path, msg: impl Into<String>) -> FaspError {
    FaspError::Output { path: path.into(), msg: msg.into() }
}

/// Whether the temporary directory `tmp` holds a checkpoint.
pub fn present(tmp: &Path) -> bool {
    tmp.join(DIR).join(MANIFEST).is_file()
}

/// When the checkpoint in `tmp` was last written to (for picking the newest).
pub fn modified(tmp: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(tmp.join(DIR)).and_then(|m| m.modified()).ok()
}

/// FNV-1a, 64 bits: a stable digest of the calibration token ids.
fn fnv1a(ids: &[u32]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in ids.iter().flat_map(|t| t.to_le_bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Name, size and modification time of the model's files (of the file, for a `.gguf`).
fn model_files(path: &Path) -> Result<Value> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut v: Vec<PathBuf> =
            std::fs::read_dir(path).map_err(|e| FaspError::io(path, e))?.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    files
        .iter()
        .map(|f| {
            let m = std::fs::metadata(f).map_err(|e| FaspError::io(f, e))?;
            let mtime = m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
            let name = f.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned());
            Ok(json!({"name": name, "bytes": m.len(), "mtime_ns": mtime.to_string()}))
        })
        .collect::<Result<Vec<_>>>()
        .map(Value::from)
}

/// What a checkpoint must match to be resumed: everything the pruned weights depend on.
/// (The output dtype, `--compact` and `--eval` only change what is written from them.)
pub fn fingerprint(model: &Model, windows: &Windows, opts: &PruneConfig, backend: &str) -> Result<Value> {
    let path = std::fs::canonicalize(&model.path).map_err(|e| FaspError::io(&model.path, e))?;
    Ok(json!({
        "engine_version": crate::VERSION,
        "model": {"path": path.display().to_string(), "config": model.cfg.raw, "files": model_files(&model.path)?},
        "calibration": {"windows": windows.n, "seqlen": windows.seqlen, "token_ids_fnv1a64": fnv1a(&windows.ids)},
        "settings": opts,
        "backend": backend,
        "layers": model.cfg.layers,
    }))
}

/// Why the fingerprint `was` (a checkpoint's) does not match `now`, or `None`.
fn mismatch(was: &Value, now: &Value) -> Option<String> {
    let what = |k: &str| match k {
        "engine_version" => "another engine version",
        "model" => "a different input model (path, config or files changed)",
        "calibration" => "different calibration data (--calib, --nsamples, --seqlen or --seed)",
        "settings" => "different settings",
        "backend" => "a different backend",
        _ => "a different run",
    };
    let keys = ["engine_version", "model", "calibration", "settings", "backend", "layers"];
    let k = keys.into_iter().find(|k| was.get(k) != now.get(k))?;
    let detail = match (was.get(k), now.get(k)) {
        (Some(Value::Object(a)), Some(Value::Object(b))) if k == "settings" => {
            let diffs: Vec<String> = b
                .iter()
                .filter(|(f, v)| a.get(*f) != Some(v))
                .map(|(f, v)| format!("{f} {} there, {v} now", a.get(f).unwrap_or(&Value::Null)))
                .collect();
            format!(": {}", diffs.join(", "))
        }
        (Some(a @ Value::String(_)), Some(b)) | (Some(a @ Value::Number(_)), Some(b)) => format!(": {a} there, {b} now"),
        _ => String::new(),
    };
    Some(format!("{}{detail}", what(k)))
}

/// The checkpoint of one run, in `TMP/.checkpoint`.
pub struct Checkpoint {
    dir: PathBuf,
    /// Layers 0..done are checkpointed.
    done: usize,
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let part = path.with_extension("part");
    std::fs::write(&part, bytes).map_err(|e| FaspError::io(&part, e))?;
    std::fs::rename(&part, path).map_err(|e| FaspError::io(path, e))
}

impl Checkpoint {
    /// Starts an empty checkpoint in the temporary directory `tmp`.
    pub fn create(tmp: &Path, fingerprint: &Value) -> Result<Checkpoint> {
        let dir = tmp.join(DIR);
        std::fs::create_dir_all(&dir).map_err(|e| FaspError::io(&dir, e))?;
        let text = serde_json::to_string_pretty(fingerprint).expect("JSON values serialize");
        write_atomic(&dir.join(MANIFEST), text.as_bytes())?;
        Ok(Checkpoint { dir, done: 0 })
    }

    /// Opens the checkpoint in `tmp` if it was made by a run identical to `fingerprint`'s;
    /// refuses it with the reason otherwise. `done` counts the consecutive complete layers.
    pub fn open(tmp: &Path, fingerprint: &Value) -> Result<Checkpoint> {
        let dir = tmp.join(DIR);
        let mp = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&mp).map_err(|e| FaspError::io(&mp, e))?;
        let was: Value = serde_json::from_str(&text).map_err(|e| ck_err(&mp, format!("unreadable checkpoint manifest: {e}")))?;
        if let Some(why) = mismatch(&was, fingerprint) {
            return Err(ck_err(
                tmp,
                format!("refusing to resume: this checkpoint was made with {why}; rerun without --resume to start over"),
            ));
        }
        let layers = fingerprint.get("layers").and_then(Value::as_u64).unwrap_or(0) as usize;
        let done = (0..layers).take_while(|&l| dir.join(layer_file(l)).is_file()).count();
        Ok(Checkpoint { dir, done })
    }

    /// Layers 0..done are checkpointed.
    pub fn done(&self) -> usize {
        self.done
    }

    /// Checkpoints pruned layer `l` (compact form, as the pipeline hands it to its sink).
    pub fn save(&self, l: usize, pl: &LayerWeights, report: &LayerReport) -> Result<()> {
        let path = self.dir.join(layer_file(l));
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        let mut linear = |name: &str, lin: &Linear| {
            tensors.push((format!("{name}.w"), vec![lin.w.rows, lin.w.cols], bytemuck::cast_slice(&lin.w.data).to_vec()));
            if let Some(b) = &lin.b {
                tensors.push((format!("{name}.b"), vec![b.len()], bytemuck::cast_slice(b).to_vec()));
            }
        };
        linear("o", &pl.o);
        linear("down", &pl.down);
        let views = tensors
            .iter()
            .map(|(n, s, b)| {
                let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .map_err(|e| ck_err(&path, e.to_string()))?;
                Ok((n.clone(), v))
            })
            .collect::<Result<Vec<_>>>()?;
        let meta: HashMap<String, String> = [
            ("report".to_string(), serde_json::to_string(report).expect("serializable")),
            ("attn_kept".to_string(), serde_json::to_string(&pl.v_units).expect("serializable")),
            ("mlp_kept".to_string(), serde_json::to_string(&report.mlp.kept_units).expect("serializable")),
        ]
        .into_iter()
        .collect();
        let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| ck_err(&path, e.to_string()))?;
        write_atomic(&path, &bytes)
    }

    /// Layer `l` as it was pruned, with its record: the checkpointed `W2'`s, the kept rows of
    /// V and fc1/gate/up gathered from the input model's layer again.
    pub fn load(&self, model: &Model, l: usize) -> Result<(LayerWeights, LayerReport)> {
        let path = self.dir.join(layer_file(l));
        let bad = |msg: String| ck_err(&path, format!("damaged checkpoint: {msg}"));
        let bytes = std::fs::read(&path).map_err(|e| FaspError::io(&path, e))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let field = |k: &str| meta.get(k).ok_or_else(|| bad(format!("no {k}")));
        let mut report: LayerReport = serde_json::from_str(field("report")?).map_err(|e| bad(e.to_string()))?;
        let attn_kept: Vec<usize> = serde_json::from_str(field("attn_kept")?).map_err(|e| bad(e.to_string()))?;
        let mlp_kept: Vec<usize> = serde_json::from_str(field("mlp_kept")?).map_err(|e| bad(e.to_string()))?;
        let f32s = |name: &str| -> Result<Option<(Vec<usize>, Vec<f32>)>> {
            match st.tensor(name) {
                Ok(t) if t.dtype() == safetensors::Dtype::F32 => {
                    Ok(Some((t.shape().to_vec(), t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())))
                }
                Ok(_) => Err(bad(format!("{name} is not f32"))),
                Err(_) => Ok(None),
            }
        };
        let linear = |name: &str, rows: usize, cols: usize| -> Result<Linear> {
            let (shape, w) = f32s(&format!("{name}.w"))?.ok_or_else(|| bad(format!("no {name}.w")))?;
            if shape != [rows, cols] {
                return Err(bad(format!("{name}.w is {shape:?}, expected [{rows}, {cols}]")));
            }
            let b = f32s(&format!("{name}.b"))?.map(|(_, b)| b);
            if b.as_ref().is_some_and(|b| b.len() != rows) {
                return Err(bad(format!("{name}.b has the wrong length")));
            }
            Ok(Linear { w: Mat::from_vec(rows, cols, w), b })
        };
        let lw = model.layer(l)?;
        let cfg = &model.cfg;
        let in_range = |v: &[usize], n: usize| v.windows(2).all(|w| w[0] < w[1]) && v.iter().all(|&u| u < n);
        if !in_range(&attn_kept, lw.v.w.rows) || !in_range(&mlp_kept, lw.ffn()) {
            return Err(bad("kept units out of range".into()));
        }
        let ctx = crate::model::arch::attn_columns(cfg, &attn_kept).len();
        let o = linear("o", lw.o.w.rows, ctx)?;
        let down = linear("down", lw.down.w.rows, mlp_kept.len())?;
        let gather = |lin: &Linear, rows: &[usize]| Linear {
            w: lin.w.gather_rows(rows),
            b: lin.b.as_ref().map(|b| rows.iter().map(|&r| b[r]).collect()),
        };
        report.attn.kept_units = attn_kept.clone();
        report.mlp.kept_units = mlp_kept.clone();
        let pl = LayerWeights {
            v: gather(&lw.v, &attn_kept),
            o,
            v_units: attn_kept,
            up: gather(&lw.up, &mlp_kept),
            gate: lw.gate.as_ref().map(|g| gather(g, &mlp_kept)),
            down,
            ..lw
        };
        Ok((pl, report))
    }
}

fn layer_file(l: usize) -> String {
    format!("layer-{l:05}.safetensors")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatch_names_the_setting() {
        let a = json!({"engine_version": "1", "settings": {"sparsity": 0.2, "damp": 0.01}, "layers": 3});
        let b = json!({"engine_version": "1", "settings": {"sparsity": 0.3, "damp": 0.01}, "layers": 3});
        assert_eq!(mismatch(&a, &a), None);
        let m = mismatch(&a, &b).unwrap();
        assert!(m.contains("sparsity 0.2 there, 0.3 now"), "{m}");
        assert!(!m.contains("damp"), "{m}");
        let c = json!({"engine_version": "2", "settings": {"sparsity": 0.2, "damp": 0.01}, "layers": 3});
        assert!(mismatch(&a, &c).unwrap().contains("another engine version"));
    }

    #[test]
    fn fnv_is_stable() {
        // FNV-1a 64 of the empty input is the offset basis
        assert_eq!(fnv1a(&[]), "cbf29ce484222325");
        assert_ne!(fnv1a(&[1, 2]), fnv1a(&[2, 1]));
    }
}
