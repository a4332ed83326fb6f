//! A `.gguf` file as a model source (LLaMA architecture): GGUF tensors dequantized to f32 under
//! their HF names (Q/K un-permuted by `gguf`), the HF config derived from the metadata, and the
//! tokenizer built from the GGUF vocabulary and merges.

use crate::error::{FaspError, Result};
use crate::gguf::GgufFile;
use crate::model::{DType, Model, ModelConfig, TensorSource};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub struct GgufSource {
    path: PathBuf,
    file: GgufFile,
    shapes: HashMap<String, Vec<usize>>,
}

fn gguf_err(path: &Path, e: impl std::fmt::Display) -> FaspError {
    FaspError::Gguf(format!("{}: {e}", path.display()))
}

impl TensorSource for GgufSource {
    fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let mut v: Vec<_> = self.shapes.iter().map(|(n, s)| (n.clone(), s.clone())).collect();
        v.sort();
        v
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.shapes.get(name).cloned()
    }
    /// The dtype a tensor is written in by default: F32, F16 and BF16 stay as they are; a
    /// quantized tensor (dequantized to f32 for the math) is written as F16, which holds every
    /// ggml block format's values to well within its own quantization error.
    fn dtype(&self, name: &str) -> Option<DType> {
        if !self.shapes.contains_key(name) {
            return None;
        }
        let gguf_name = crate::gguf::hf_to_gguf_name(name).unwrap_or_else(|| name.to_string());
        Some(match self.file.tensor_info(&gguf_name).map(|t| t.ty.name) {
            Some("F32") => DType::F32,
            Some("BF16") => DType::BF16,
            _ => DType::F16,
        })
    }
    fn load_f32(&self, name: &str) -> Result<Vec<f32>> {
        self.file.hf_tensor_f32(name).map(|(_, d)| d).map_err(Into::into)
    }
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
    fn tokenizer_json(&self) -> Option<Result<String>> {
        Some(self.file.tokenizer_json().map_err(Into::into))
    }
}

pub fn open(path: &Path) -> Result<Model> {
    let file = GgufFile::open(path)?;
    let raw = file.hf_config()?;
    let cfg = ModelConfig::from_json(raw).map_err(|e| match e {
        FaspError::Arg(m) => gguf_err(path, m),
        other => other,
    })?;
    let shapes = file.hf_tensor_names().into_iter().collect();
    Model::from_parts(path.to_path_buf(), cfg, Box::new(GgufSource { path: path.to_path_buf(), file, shapes }))
}
