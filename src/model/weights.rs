//! Tensor sources: memory-mapped safetensors (one file or a sharded index). Nothing is read until a
//! tensor is asked for, and then only that tensor is converted to f32, so peak memory follows one
//! layer, not the model.

use crate::error::{FaspError, Result};
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::tensor::Metadata;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Storage dtype of a tensor on disk (and of the written output).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
        }
    }
    pub fn parse(s: &str) -> Option<DType> {
        match s {
            "f32" | "float32" | "fp32" => Some(DType::F32),
            "f16" | "float16" | "fp16" => Some(DType::F16),
            "bf16" | "bfloat16" => Some(DType::BF16),
            _ => None,
        }
    }
    pub fn safetensors(self) -> Dtype {
        match self {
            DType::F32 => Dtype::F32,
            DType::F16 => Dtype::F16,
            DType::BF16 => Dtype::BF16,
        }
    }
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            _ => 2,
        }
    }
    /// Encodes f32 values as little-endian bytes of this dtype.
    pub fn encode(self, data: &[f32]) -> Vec<u8> {
        match self {
            DType::F32 => bytemuck::cast_slice(data).to_vec(),
            DType::F16 => data.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect(),
            DType::BF16 => data.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect(),
        }
    }
}

/// Where a model's tensors come from. Names are HF names.
pub trait TensorSource: Send + Sync {
    /// Every tensor name with its shape.
    fn tensors(&self) -> Vec<(String, Vec<usize>)>;
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// The dtype the source stores (quantized sources report F32, their dequantized form).
    fn dtype(&self, name: &str) -> Option<DType>;
    /// The tensor converted to f32, row-major.
    fn load_f32(&self, name: &str) -> Result<Vec<f32>>;
    /// A short description for messages (`model.safetensors (3 shards)`, `x.gguf`).
    fn describe(&self) -> String;
    /// A tokenizer carried by the source itself (GGUF), as `tokenizer.json` text.
    fn tokenizer_json(&self) -> Option<Result<String>> {
        None
    }
}

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    header_len: usize,
    meta: Metadata,
}

/// `model.safetensors`, or the shards named by `model.safetensors.index.json`.
pub struct SafetensorsSource {
    shards: Vec<Shard>,
    index: HashMap<String, usize>,
}

fn open_shard(path: &Path) -> Result<Shard> {
    let file = std::fs::File::open(path).map_err(|e| FaspError::io(path, e))?;
    // SAFETY: the file is opened read-only and is not expected to change while we read it; all
    // offsets are validated by `SafeTensors::read_metadata` against the mapped length.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| FaspError::io(path, e))?;
    let (header_len, meta) = SafeTensors::read_metadata(&mmap)
        .map_err(|e| FaspError::Weights { path: path.into(), msg: format!("not a valid safetensors file (truncated or corrupt?): {e}") })?;
    Ok(Shard { path: path.into(), mmap, header_len, meta })
}

impl SafetensorsSource {
    /// Opens `dir/model.safetensors` or `dir/model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(|e| FaspError::io(&index_path, e))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| FaspError::Weights { path: index_path.clone(), msg: format!("invalid JSON: {e}") })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| FaspError::Weights { path: index_path.clone(), msg: "missing \"weight_map\"".into() })?;
            let mut names: Vec<String> = map.values().filter_map(|f| f.as_str().map(String::from)).collect();
            names.sort();
            names.dedup();
            for n in &names {
                if n.contains('/') || n.contains("..") {
                    return Err(FaspError::Weights { path: index_path.clone(), msg: format!("bad shard name {n:?}") });
                }
            }
            names.into_iter().map(|n| dir.join(n)).collect()
        } else {
            return Err(FaspError::Weights { path: dir.into(), msg: "no model.safetensors or model.safetensors.index.json".into() });
        };
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        for f in &files {
            let shard = open_shard(f)?;
            for name in shard.meta.tensors().keys() {
                if index.insert(name.clone(), shards.len()).is_some() {
                    return Err(FaspError::Weights { path: f.clone(), msg: format!("tensor {name} appears in two shards") });
                }
            }
            shards.push(shard);
        }
        Ok(SafetensorsSource { shards, index })
    }
}

fn convert(dtype: Dtype, bytes: &[u8], name: &str) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        other => return Err(FaspError::Tensor { name: name.into(), msg: format!("dtype {other:?} is not supported (f32, f16, bf16)") }),
    })
}

fn dtype_of(d: Dtype) -> Option<DType> {
    match d {
        Dtype::F32 => Some(DType::F32),
        Dtype::F16 => Some(DType::F16),
        Dtype::BF16 => Some(DType::BF16),
        _ => None,
    }
}

impl TensorSource for SafetensorsSource {
    fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let mut names: Vec<&String> = self.index.keys().collect();
        names.sort();
        names.into_iter().map(|n| (n.clone(), self.shape(n).unwrap_or_default())).collect()
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let s = &self.shards[*self.index.get(name)?];
        s.meta.info(name).map(|i| i.shape.clone())
    }
    fn dtype(&self, name: &str) -> Option<DType> {
        let s = &self.shards[*self.index.get(name)?];
        s.meta.info(name).and_then(|i| dtype_of(i.dtype))
    }
    fn load_f32(&self, name: &str) -> Result<Vec<f32>> {
        let shard = self
            .index
            .get(name)
            .map(|&i| &self.shards[i])
            .ok_or_else(|| FaspError::Tensor { name: name.into(), msg: "missing from the checkpoint".into() })?;
        let info = shard.meta.info(name).expect("indexed tensor has info");
        let start = 8 + shard.header_len + info.data_offsets.0;
        let end = 8 + shard.header_len + info.data_offsets.1;
        let bytes = shard
            .mmap
            .get(start..end)
            .ok_or_else(|| FaspError::Weights { path: shard.path.clone(), msg: format!("tensor {name} lies past the end of the file") })?;
        convert(info.dtype, bytes, name)
    }
    fn describe(&self) -> String {
        match self.shards.len() {
            1 => self.shards[0].path.display().to_string(),
            n => format!("{} ({n} shards)", self.shards[0].path.parent().unwrap_or(Path::new(".")).display()),
        }
    }
}
