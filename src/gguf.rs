//! GGUF (v2/v3) reader over a memory map, dequantization to f32, and the mapping of the llama,
//! mistral, qwen2, qwen3 and gemma3 architectures to Hugging Face names, config and tokenizer
//! through the families' descriptions ([`crate::model::arch::Arch`]).
//!
//! Every count, length and offset read from the file is checked against the file size before
//! anything is allocated or sliced, so a malformed or truncated file gives a [`GgufError`]
//! naming the file and the problem, never a panic or a huge allocation.
//!
//! GGUF lists tensor dims ne0 first (`[in, out]` for a matrix); the row-major data is
//! `[out][in]`, which is the HF shape `[out, in]`. llama.cpp's converter permutes the rows of
//! `attn_q` / `attn_k` for its interleaved rotary; [`GgufFile::hf_tensor_f32`] undoes that so
//! the weights match HF's `rotate_half` rotary.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use rayon::prelude::*;

use crate::model::arch::{Arch, Family};

/// The prefix of the HF names a GGUF file's tensors get (`model.layers.0...`).
const HF_PREFIX: &str = "model.";
/// The GGUF architectures read as models.
const GGUF_FAMILIES: [Family; 5] = [Family::Llama, Family::Mistral, Family::Qwen2, Family::Qwen3, Family::Gemma3];

const GGUF_MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;
/// Smallest possible encoding of one tensor info: name length u64, n_dims u32, type u32,
/// offset u64 (empty name, zero dims).
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8;
/// Smallest possible key/value pair: key length u64, value type u32, one-byte value.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;

/// Errors from reading a GGUF file. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{}: cannot read GGUF file: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a GGUF file: magic bytes are {found:02x?}, expected \"GGUF\"", .path.display())]
    BadMagic { path: PathBuf, found: Vec<u8> },
    #[error("{}: unsupported GGUF version {version} (supported: 2 and 3)", .path.display())]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error(
        "{}: truncated or malformed GGUF: {what} at byte {offset} needs {needed} bytes, \
         but the file is {file_len} bytes",
        .path.display()
    )]
    Truncated { path: PathBuf, what: String, offset: u64, needed: u64, file_len: u64 },
    #[error("{}: malformed GGUF: {msg}", .path.display())]
    Malformed { path: PathBuf, msg: String },
    #[error("{}: tensor '{tensor}' has unknown ggml type id {type_id}", .path.display())]
    UnknownTensorType { path: PathBuf, tensor: String, type_id: u32 },
    #[error(
        "{}: tensor '{tensor}' has ggml type {type_name} (id {type_id}), which is not supported \
         for dequantization (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)",
        .path.display()
    )]
    UnsupportedTensorType { path: PathBuf, tensor: String, type_name: &'static str, type_id: u32 },
    #[error("{}: no tensor named '{name}'", .path.display())]
    TensorNotFound { path: PathBuf, name: String },
    #[error("{}: metadata '{key}': {msg}", .path.display())]
    Metadata { path: PathBuf, key: String, msg: String },
    #[error("{}: GGUF architecture '{arch}' is not supported (supported: llama, mistral, qwen2, qwen3, gemma3)", .path.display())]
    UnsupportedArchitecture { path: PathBuf, arch: String },
    #[error("{}: {msg}", .path.display())]
    Unsupported { path: PathBuf, msg: String },
    #[error("{}: cannot build tokenizer: {msg}", .path.display())]
    Tokenizer { path: PathBuf, msg: String },
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GgufValue {
    /// Any non-negative integer value as u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v as u64),
            GgufValue::U16(v) => Some(v as u64),
            GgufValue::U32(v) => Some(v as u64),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any numeric value as f64. An f32 is widened through its shortest decimal form, so a
    /// stored `1e-5f32` reads as `1e-5`, not `9.999999747378752e-6`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(format!("{v}").parse::<f64>().unwrap_or(v as f64)),
            GgufValue::F64(v) => Some(v),
            GgufValue::I8(v) => Some(v as f64),
            GgufValue::I16(v) => Some(v as f64),
            GgufValue::I32(v) => Some(v as f64),
            GgufValue::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// ggml tensor types with their block geometry (elements per block, bytes per block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GgmlType {
    pub id: u32,
    pub name: &'static str,
    pub block_elems: u64,
    pub block_bytes: u64,
}

const fn ty(id: u32, name: &'static str, block_elems: u64, block_bytes: u64) -> GgmlType {
    GgmlType { id, name, block_elems, block_bytes }
}

/// All ggml types whose storage size is known (so their extents can be checked), whether or
/// not they can be dequantized here.
const GGML_TYPES: &[GgmlType] = &[
    ty(0, "F32", 1, 4),
    ty(1, "F16", 1, 2),
    ty(2, "Q4_0", 32, 18),
    ty(3, "Q4_1", 32, 20),
    ty(6, "Q5_0", 32, 22),
    ty(7, "Q5_1", 32, 24),
    ty(8, "Q8_0", 32, 34),
    ty(9, "Q8_1", 32, 36),
    ty(10, "Q2_K", 256, 84),
    ty(11, "Q3_K", 256, 110),
    ty(12, "Q4_K", 256, 144),
    ty(13, "Q5_K", 256, 176),
    ty(14, "Q6_K", 256, 210),
    ty(15, "Q8_K", 256, 292),
    ty(16, "IQ2_XXS", 256, 66),
    ty(17, "IQ2_XS", 256, 74),
    ty(18, "IQ3_XXS", 256, 98),
    ty(19, "IQ1_S", 256, 50),
    ty(20, "IQ4_NL", 32, 18),
    ty(21, "IQ3_S", 256, 110),
    ty(22, "IQ2_S", 256, 82),
    ty(23, "IQ4_XS", 256, 136),
    ty(24, "I8", 1, 1),
    ty(25, "I16", 1, 2),
    ty(26, "I32", 1, 4),
    ty(27, "I64", 1, 8),
    ty(28, "F64", 1, 8),
    ty(29, "IQ1_M", 256, 56),
    ty(30, "BF16", 1, 2),
    ty(34, "TQ1_0", 256, 54),
    ty(35, "TQ2_0", 256, 66),
];

/// The ggml type with this id, if its storage size is known.
pub fn ggml_type(id: u32) -> Option<GgmlType> {
    GGML_TYPES.iter().copied().find(|t| t.id == id)
}

/// One tensor's header entry, validated: its data lies inside the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order, ne0 first.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset relative to the start of the tensor data section.
    pub offset: u64,
    pub n_elements: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Row-major shape (GGUF dims reversed): `[out, in]` for a matrix.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A GGUF file: the memory map and its parsed, validated header.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    metadata_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

/// Bounds-checked little-endian reader over the file bytes.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> u64 {
        (self.data.len() - self.pos) as u64
    }

    fn truncated(&self, what: impl Into<String>, needed: u64) -> GgufError {
        GgufError::Truncated {
            path: self.path.to_path_buf(),
            what: what.into(),
            offset: self.pos as u64,
            needed,
            file_len: self.data.len() as u64,
        }
    }

    fn malformed(&self, msg: impl Into<String>) -> GgufError {
        GgufError::Malformed { path: self.path.to_path_buf(), msg: msg.into() }
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(self.truncated(what(), n));
        }
        let n = n as usize;
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A GGUF string: u64 length then UTF-8 bytes. The length is checked against the bytes
    /// left before anything is copied.
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let len = self.u64(&|| format!("length of {}", what()))?;
        if len > self.remaining() {
            return Err(self.truncated(format!("{} (string of {len} bytes)", what()), len));
        }
        let start = self.pos;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.malformed(format!("{} at byte {start} is not valid UTF-8", what())))
    }

    /// Checks that `count` items of at least `min_bytes` each can fit in what is left.
    fn check_count(&self, count: u64, min_bytes: u64, what: &str) -> Result<(), GgufError> {
        let need = count.checked_mul(min_bytes);
        match need {
            Some(n) if n <= self.remaining() => Ok(()),
            _ => Err(self.malformed(format!(
                "{what} is {count}, which needs at least {} bytes, but only {} bytes remain after byte {}",
                need.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string()),
                self.remaining(),
                self.pos
            ))),
        }
    }

    fn value(&mut self, type_id: u32, key: &str, depth: u32) -> Result<GgufValue, GgufError> {
        let what = || format!("value of metadata '{key}'");
        Ok(match type_id {
            0 => GgufValue::U8(u8::from_le_bytes(self.array(&what)?)),
            1 => GgufValue::I8(i8::from_le_bytes(self.array(&what)?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => GgufValue::U32(self.u32(&what)?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => {
                let [b] = self.array::<1>(&what)?;
                match b {
                    0 => GgufValue::Bool(false),
                    1 => GgufValue::Bool(true),
                    _ => return Err(self.malformed(format!("metadata '{key}': bool byte is {b}"))),
                }
            }
            8 => GgufValue::String(self.string(&what)?),
            9 => {
                if depth >= 8 {
                    return Err(self.malformed(format!("metadata '{key}': arrays nested too deep")));
                }
                let elem_type = self.u32(&|| format!("array element type of metadata '{key}'"))?;
                let n = self.u64(&|| format!("array length of metadata '{key}'"))?;
                let min = min_value_bytes(elem_type)
                    .ok_or_else(|| self.malformed(format!("metadata '{key}': unknown array element type {elem_type}")))?;
                self.check_count(n, min, &format!("array length of metadata '{key}'"))?;
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(elem_type, key, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(self.u64(&what)?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(&what)?)),
            t => return Err(self.malformed(format!("metadata '{key}' has unknown value type {t}"))),
        })
    }
}

/// Smallest encoded size of one value of a metadata type, or None for an unknown type.
fn min_value_bytes(type_id: u32) -> Option<u64> {
    Some(match type_id {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,     // u64 length
        9 => 4 + 8, // element type + length
        10..=12 => 8,
        _ => return None,
    })
}

impl GgufFile {
    /// Maps and parses a GGUF file, validating the whole header and every tensor's extent.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io = |source| GgufError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < 4 + 4 + 8 + 8 {
            // Too short for the fixed header; also avoids mapping an empty file.
            let found = std::fs::read(path).map_err(io)?;
            if found.len() >= 4 && &found[..4] != GGUF_MAGIC {
                return Err(GgufError::BadMagic { path: path.to_path_buf(), found: found[..4].to_vec() });
            }
            return Err(GgufError::Truncated {
                path: path.to_path_buf(),
                what: "fixed header (magic, version, tensor count, metadata count)".into(),
                offset: 0,
                needed: 24,
                file_len: len,
            });
        }
        // SAFETY: the map is read-only; as with any mmap, the file must not be modified while
        // it is open.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(path.to_path_buf(), mmap)
    }

    fn parse(path: PathBuf, mmap: Mmap) -> Result<Self, GgufError> {
        let (version, metadata, tensors, alignment, data_offset) = {
            let mut r = Reader { data: &mmap[..], pos: 0, path: &path };
            let magic: [u8; 4] = r.array(&|| "magic".into())?;
            if &magic != GGUF_MAGIC {
                return Err(GgufError::BadMagic { path, found: magic.to_vec() });
            }
            let version = r.u32(&|| "version".into())?;
            if version != 2 && version != 3 {
                return Err(GgufError::UnsupportedVersion { path, version });
            }
            let tensor_count = r.u64(&|| "tensor count".into())?;
            let kv_count = r.u64(&|| "metadata count".into())?;
            r.check_count(kv_count, MIN_KV_BYTES, "metadata count")?;
            // Tensor infos follow the metadata, so each needs its minimum size too.
            r.check_count(tensor_count, MIN_TENSOR_INFO_BYTES, "tensor count")?;

            let mut metadata = Vec::with_capacity(kv_count as usize);
            for i in 0..kv_count {
                let key = r.string(&|| format!("key of metadata entry {i}"))?;
                let t = r.u32(&|| format!("value type of metadata '{key}'"))?;
                let v = r.value(t, &key, 0)?;
                metadata.push((key, v));
            }

            let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
                None => DEFAULT_ALIGNMENT,
                Some((_, v)) => match v.as_u64() {
                    Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                    _ => return Err(r.malformed(format!("general.alignment is {v:?}; need a power of two"))),
                },
            };

            r.check_count(tensor_count, MIN_TENSOR_INFO_BYTES, "tensor count")?;
            let mut infos = Vec::with_capacity(tensor_count as usize);
            for i in 0..tensor_count {
                let name = r.string(&|| format!("name of tensor {i}"))?;
                let n_dims = r.u32(&|| format!("n_dims of tensor '{name}'"))?;
                if n_dims > MAX_DIMS {
                    return Err(r.malformed(format!("tensor '{name}' has {n_dims} dims (max {MAX_DIMS})")));
                }
                let mut dims = Vec::with_capacity(n_dims as usize);
                for d in 0..n_dims {
                    dims.push(r.u64(&|| format!("dim {d} of tensor '{name}'"))?);
                }
                let type_id = r.u32(&|| format!("type of tensor '{name}'"))?;
                let offset = r.u64(&|| format!("data offset of tensor '{name}'"))?;
                let Some(ty) = ggml_type(type_id) else {
                    return Err(GgufError::UnknownTensorType { path: path.clone(), tensor: name, type_id });
                };
                infos.push((name, dims, ty, offset));
            }
            let header_end = r.pos as u64;
            let data_offset = header_end.div_ceil(alignment) * alignment;
            let file_len = mmap.len() as u64;
            if data_offset > file_len && !infos.is_empty() {
                return Err(GgufError::Truncated {
                    path,
                    what: format!("tensor data section (aligned to {alignment})"),
                    offset: header_end,
                    needed: data_offset - header_end,
                    file_len,
                });
            }
            let data_len = file_len.saturating_sub(data_offset);

            let mut tensors = Vec::with_capacity(infos.len());
            for (name, dims, ty, offset) in infos {
                let malformed = |msg: String| GgufError::Malformed { path: path.clone(), msg };
                let n_elements = dims
                    .iter()
                    .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                    .ok_or_else(|| malformed(format!("tensor '{name}': element count of dims {dims:?} overflows")))?;
                let ne0 = dims.first().copied().unwrap_or(1);
                if ne0 % ty.block_elems != 0 {
                    return Err(malformed(format!(
                        "tensor '{name}' of type {}: first dim {ne0} is not a multiple of the block size {}",
                        ty.name, ty.block_elems
                    )));
                }
                let n_bytes = (n_elements / ty.block_elems)
                    .checked_mul(ty.block_bytes)
                    .ok_or_else(|| malformed(format!("tensor '{name}': byte size overflows")))?;
                if offset % alignment != 0 {
                    return Err(malformed(format!("tensor '{name}': data offset {offset} is not a multiple of the alignment {alignment}")));
                }
                match offset.checked_add(n_bytes) {
                    Some(end) if end <= data_len => {}
                    _ => {
                        return Err(malformed(format!(
                            "tensor '{name}' ({} {dims:?}, {n_bytes} bytes at data offset {offset}) \
                             extends past the end of the file (data section is {data_len} bytes \
                             starting at byte {data_offset})",
                            ty.name
                        )))
                    }
                }
                tensors.push(TensorInfo { name, dims, ty, offset, n_elements, n_bytes });
            }
            (version, metadata, tensors, alignment, data_offset)
        };

        let mut metadata_index = HashMap::with_capacity(metadata.len());
        for (i, (k, _)) in metadata.iter().enumerate() {
            if metadata_index.insert(k.clone(), i).is_some() {
                return Err(GgufError::Malformed { path, msg: format!("duplicate metadata key '{k}'") });
            }
        }
        let mut tensor_index = HashMap::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            if tensor_index.insert(t.name.clone(), i).is_some() {
                return Err(GgufError::Malformed { path, msg: format!("duplicate tensor name '{}'", t.name) });
            }
        }
        Ok(GgufFile { path, mmap, version, metadata, metadata_index, tensors, tensor_index, alignment, data_offset })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute file offset where the tensor data section starts.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    pub fn metadata(&self, key: &str) -> Option<&GgufValue> {
        self.metadata_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// All metadata in file order.
    pub fn metadata_entries(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    /// All tensor infos in file order (GGUF names).
    pub fn tensor_infos(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor_info(&self, gguf_name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(gguf_name).map(|&i| &self.tensors[i])
    }

    /// The raw bytes of a tensor (extent validated at open).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.data_offset + info.offset) as usize;
        &self.mmap[start..start + info.n_bytes as usize]
    }

    /// Dequantized f32 data of a tensor by GGUF name, in file row order (no un-permute), with
    /// its row-major shape.
    pub fn tensor_f32(&self, gguf_name: &str) -> Result<(Vec<usize>, Vec<f32>), GgufError> {
        let info = self
            .tensor_info(gguf_name)
            .ok_or_else(|| GgufError::TensorNotFound { path: self.path.clone(), name: gguf_name.to_string() })?;
        let data =
            dequantize(self.tensor_bytes(info), info.ty, info.n_elements as usize).ok_or_else(|| GgufError::UnsupportedTensorType {
                path: self.path.clone(),
                tensor: info.name.clone(),
                type_name: info.ty.name,
                type_id: info.ty.id,
            })?;
        Ok((info.shape(), data))
    }

    fn meta_err(&self, key: &str, msg: impl Into<String>) -> GgufError {
        GgufError::Metadata { path: self.path.clone(), key: key.to_string(), msg: msg.into() }
    }

    fn meta_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        match self.metadata(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| self.meta_err(key, format!("expected an integer, found {v:?}"))),
        }
    }

    fn meta_u64_req(&self, key: &str) -> Result<u64, GgufError> {
        self.meta_u64(key)?.ok_or_else(|| self.meta_err(key, "missing"))
    }

    fn meta_f64(&self, key: &str) -> Result<Option<f64>, GgufError> {
        match self.metadata(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.meta_err(key, format!("expected a number, found {v:?}"))),
        }
    }

    fn meta_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        match self.metadata(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| self.meta_err(key, "expected a string")),
        }
    }

    fn meta_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        let v = self.metadata(key).ok_or_else(|| self.meta_err(key, "missing"))?;
        let a = v.as_array().ok_or_else(|| self.meta_err(key, "expected an array of strings"))?;
        a.iter().map(|x| x.as_str().ok_or_else(|| self.meta_err(key, "expected an array of strings"))).collect()
    }

    /// The family of this file's `general.architecture`, or an error naming an unsupported one.
    pub fn family(&self) -> Result<Family, GgufError> {
        let arch = self.meta_str("general.architecture")?.ok_or_else(|| self.meta_err("general.architecture", "missing"))?;
        Family::from_gguf_arch(arch)
            .filter(|f| GGUF_FAMILIES.contains(f))
            .ok_or_else(|| GgufError::UnsupportedArchitecture { path: self.path.clone(), arch: arch.to_string() })
    }

    /// The description used for tensor names: the file's family, LLaMA when it has none.
    fn arch_or_llama(&self) -> &'static Arch {
        self.family().unwrap_or(Family::Llama).arch()
    }

    /// (n_head, n_head_kv) from the `{arch}.attention.*` metadata.
    fn heads(&self, g: &str) -> Result<(u64, u64), GgufError> {
        let key = format!("{g}.attention.head_count");
        let n_head = self.meta_u64_req(&key)?;
        let n_head_kv = self.meta_u64(&format!("{g}.attention.head_count_kv"))?.unwrap_or(n_head);
        if n_head == 0 || n_head_kv == 0 {
            return Err(self.meta_err(&key, "head counts must be positive"));
        }
        Ok((n_head, n_head_kv))
    }

    /// `rope_scaling` from `{arch}.rope.scaling.*` (null when absent or `none`). Llama-3's
    /// frequency factors stored as a `rope_freqs.weight` tensor are read when the file also holds
    /// their parameters (`fasp.rope.llama3.*`, written by fasp-engine's GGUF export) and the
    /// factors are those the parameters give; otherwise they are refused (the parameters cannot be
    /// recovered from the factors alone).
    fn rope_scaling(&self, g: &str, theta: f64, head_dim: u64) -> Result<serde_json::Value, GgufError> {
        if self.tensor_info("rope_freqs.weight").is_some() {
            let unsupported = |msg: String| GgufError::Unsupported { path: self.path.clone(), msg };
            let p: Option<Vec<f64>> =
                LLAMA3_ROPE_KEYS.iter().map(|k| self.meta_f64(&format!("fasp.rope.llama3.{k}")).ok().flatten()).collect();
            let Some(p) = p else {
                return Err(unsupported(
                    "rotary frequency factors stored as 'rope_freqs.weight' (Llama-3.x rope scaling) are not supported \
                     without the fasp.rope.llama3.* keys naming their parameters; convert the HF checkpoint instead"
                        .into(),
                ));
            };
            let want = llama3_rope_factors(theta, head_dim as usize, p[0], p[1], p[2], p[3]);
            let (_, got) = self.tensor_f32("rope_freqs.weight")?;
            if got.len() != want.len() || got.iter().zip(&want).any(|(a, b)| (a - b).abs() > 1e-5 * b.abs()) {
                return Err(unsupported("'rope_freqs.weight' differs from the factors its fasp.rope.llama3.* parameters give".into()));
            }
            return Ok(serde_json::json!({"rope_type": "llama3", "factor": p[0], "low_freq_factor": p[1],
                "high_freq_factor": p[2], "original_max_position_embeddings": p[3]}));
        }
        let key = format!("{g}.rope.scaling.type");
        match self.meta_str(&key)? {
            None | Some("none") => Ok(serde_json::Value::Null),
            Some("linear") => {
                let fkey = format!("{g}.rope.scaling.factor");
                let f = self.meta_f64(&fkey)?.ok_or_else(|| self.meta_err(&fkey, "missing for linear rope scaling"))?;
                Ok(serde_json::json!({"rope_type": "linear", "factor": f}))
            }
            Some(other) => Err(self.meta_err(&key, format!("rope scaling '{other}' is not supported (none, linear)"))),
        }
    }

    /// HF-style config.json content for the file's family (llama, mistral, qwen2, qwen3, gemma3
    /// map to `llama`, `mistral`, `qwen2`, `qwen3`, `gemma3_text`). Gemma-3 settings that
    /// llama.cpp hard-codes instead of storing (sliding pattern, local rope base, attention scale)
    /// fall back to the Gemma-3 defaults, with a log line naming each.
    pub fn hf_config(&self) -> Result<serde_json::Value, GgufError> {
        let family = self.family()?;
        let a = family.arch();
        let g = a.gguf_arch;
        let k = |s: &str| format!("{g}.{s}");
        let hidden = self.meta_u64_req(&k("embedding_length"))?;
        let ffn = self.meta_u64_req(&k("feed_forward_length"))?;
        let layers = self.meta_u64_req(&k("block_count"))?;
        let (n_head, n_head_kv) = self.heads(g)?;
        let head_dim = match self.meta_u64(&k("attention.key_length"))? {
            Some(d) => d,
            None => {
                if hidden % n_head != 0 {
                    return Err(self.meta_err(&k("embedding_length"), format!("{hidden} not divisible by {n_head} heads")));
                }
                hidden / n_head
            }
        };
        let eps = self.meta_f64(&k("attention.layer_norm_rms_epsilon"))?.unwrap_or(a.eps_default as f64);
        let rope_theta = self.meta_f64(&k("rope.freq_base"))?.unwrap_or(10000.0);
        let ctx = self.meta_u64(&k("context_length"))?.unwrap_or(2048);
        let vocab = match self.meta_u64(&k("vocab_size"))? {
            Some(v) => v,
            None => match self.metadata("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
                Some(a) => a.len() as u64,
                None => self
                    .tensor_info("token_embd.weight")
                    .and_then(|t| t.dims.get(1).copied())
                    .ok_or_else(|| self.meta_err(&k("vocab_size"), "missing, and no tokenizer or token_embd to infer it from"))?,
            },
        };
        let tied = self.tensor_info("output.weight").is_none();
        let bos = self.meta_u64("tokenizer.ggml.bos_token_id")?;
        let eos = self.meta_u64("tokenizer.ggml.eos_token_id")?;
        let pad = self.meta_u64("tokenizer.ggml.padding_token_id")?;
        let mut c = serde_json::json!({
            "model_type": a.model_type,
            "hidden_size": hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": n_head,
            "num_key_value_heads": n_head_kv,
            "head_dim": head_dim,
            "rope_theta": rope_theta,
            "rope_scaling": self.rope_scaling(g, rope_theta, head_dim)?,
            "vocab_size": vocab,
            "max_position_embeddings": ctx,
            "tie_word_embeddings": tied,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": pad,
            "torch_dtype": "float32",
            "_name_or_path": self.meta_str("general.name")?.unwrap_or(""),
        });
        c[a.ffn_key] = ffn.into();
        c[a.activation_key] = a.activation.hf_names()[0].into();
        if let Some(e) = a.eps_key {
            c[e] = eps.into();
        }
        let has_bias = |t: &str| self.tensor_info(&format!("blk.0.{t}.bias")).is_some();
        let window = self.meta_u64(&k("attention.sliding_window"))?;
        match family {
            Family::Llama | Family::Mistral => {
                c["architectures"] = serde_json::json!([if family == Family::Llama { "LlamaForCausalLM" } else { "MistralForCausalLM" }]);
                if family == Family::Llama {
                    c["attention_bias"] = has_bias("attn_q").into();
                    c["mlp_bias"] = has_bias("ffn_up").into();
                } else {
                    c["sliding_window"] = window.into();
                }
            }
            Family::Qwen2 | Family::Qwen3 => {
                c["architectures"] = serde_json::json!([if family == Family::Qwen2 { "Qwen2ForCausalLM" } else { "Qwen3ForCausalLM" }]);
                c["use_sliding_window"] = false.into();
                if family == Family::Qwen3 {
                    c["attention_bias"] = has_bias("attn_q").into();
                }
            }
            Family::Gemma3 => self.gemma3_config(&mut c, head_dim, window)?,
            Family::Opt => unreachable!("family() refuses OPT GGUF files"),
        }
        Ok(c)
    }

    /// Gemma-3's settings. llama.cpp's converter stores the sliding window but hard-codes the
    /// rest in its loader (every 6th layer global, local rope base 10000, attention scale
    /// `1/sqrt(head_dim)` but for 27B); keys a newer converter writes are read when present.
    fn gemma3_config(&self, c: &mut serde_json::Value, head_dim: u64, window: Option<u64>) -> Result<(), GgufError> {
        let mut defaults = Vec::new();
        c["architectures"] = serde_json::json!(["Gemma3ForCausalLM"]);
        let window = window.unwrap_or_else(|| {
            defaults.push("sliding_window 4096");
            4096
        });
        c["sliding_window"] = window.into();
        let pattern = match self.metadata("gemma3.attention.sliding_window_pattern") {
            Some(GgufValue::Array(v)) => {
                // per layer: true = sliding
                let types: Option<Vec<&str>> =
                    v.iter().map(|x| x.as_bool().map(|s| if s { "sliding_attention" } else { "full_attention" })).collect();
                let types = types.ok_or_else(|| self.meta_err("gemma3.attention.sliding_window_pattern", "expected booleans"))?;
                c["layer_types"] = serde_json::json!(types);
                None
            }
            Some(v) => Some(v.as_u64().ok_or_else(|| self.meta_err("gemma3.attention.sliding_window_pattern", "expected an integer"))?),
            None => {
                defaults.push("sliding_window_pattern 6 (every 6th layer global)");
                Some(6)
            }
        };
        if let Some(p) = pattern {
            c["sliding_window_pattern"] = p.into();
        }
        let local = match self.meta_f64("gemma3.rope.freq_base_swa")? {
            Some(b) => b,
            None => {
                defaults.push("rope_local_base_freq 10000");
                10000.0
            }
        };
        c["rope_local_base_freq"] = local.into();
        let scalar = match self.meta_f64("gemma3.attention.scale")? {
            Some(s) if s > 0.0 => 1.0 / (s * s),
            Some(s) => return Err(self.meta_err("gemma3.attention.scale", format!("must be positive, got {s}"))),
            None => {
                defaults.push("query_pre_attn_scalar = head_dim");
                head_dim as f64
            }
        };
        c["query_pre_attn_scalar"] = scalar.into();
        c["final_logit_softcapping"] = self.meta_f64("gemma3.final_logit_softcapping")?.into();
        c["attn_logit_softcapping"] = serde_json::Value::Null;
        if !defaults.is_empty() {
            tracing::info!(
                "{}: the GGUF does not store {}; using the Gemma-3 defaults (as llama.cpp does)",
                self.path.display(),
                defaults.join(", ")
            );
        }
        Ok(())
    }

    /// HF tensor names and row-major shapes (`[out, in]` for matrices) for every tensor, in
    /// file order, named by the file's family. Names with no mapping are passed through
    /// unchanged. A tied LM head (no `output.weight`) is not listed.
    pub fn hf_tensor_names(&self) -> Vec<(String, Vec<usize>)> {
        let a = self.arch_or_llama();
        // rope_freqs (Llama-3 rope scaling) is read into the config, not a model tensor
        self.tensors
            .iter()
            .filter(|t| t.name != "rope_freqs.weight")
            .map(|t| (a.gguf_to_hf(HF_PREFIX, &t.name).unwrap_or_else(|| t.name.clone()), t.shape()))
            .collect()
    }

    /// Dequantized f32 data of one tensor by HF name, in HF's convention: Q/K rows un-permuted
    /// where llama.cpp permutes them (llama), norm weights stored as `(1 + w)` shifted back to
    /// `w` (Gemma-3).
    pub fn hf_tensor_f32(&self, hf_name: &str) -> Result<(Vec<usize>, Vec<f32>), GgufError> {
        let a = self.arch_or_llama();
        let gguf_name = a.hf_to_gguf(HF_PREFIX, hf_name).unwrap_or_else(|| hf_name.to_string());
        if self.tensor_info(&gguf_name).is_none() {
            return Err(GgufError::TensorNotFound { path: self.path.clone(), name: hf_name.to_string() });
        }
        let (shape, mut data) = self.tensor_f32(&gguf_name)?;
        if a.gguf_norm_plus_one_stored && gguf_name.ends_with("norm.weight") {
            data.iter_mut().for_each(|x| *x -= 1.0);
        }
        if !a.gguf_qk_permuted {
            return Ok((shape, data));
        }
        // the biases of Q and K are permuted with their rows (fasp-engine's GGUF writer does so;
        // llama.cpp's rotary needs it)
        let n_heads = if gguf_name.ends_with(".attn_q.weight") || gguf_name.ends_with(".attn_q.bias") {
            Some(self.heads(a.gguf_arch)?.0)
        } else if gguf_name.ends_with(".attn_k.weight") || gguf_name.ends_with(".attn_k.bias") {
            Some(self.heads(a.gguf_arch)?.1)
        } else {
            None
        };
        match n_heads {
            None => Ok((shape, data)),
            Some(n_h) => {
                let malformed = |msg: String| GgufError::Malformed { path: self.path.clone(), msg };
                let cols = match shape.len() {
                    2 => shape[1],
                    1 if gguf_name.ends_with(".bias") => 1,
                    _ => return Err(malformed(format!("tensor '{gguf_name}' has shape {shape:?}"))),
                };
                let n_h = n_h as usize;
                let data = unpermute_rows(&data, shape[0], cols, n_h).ok_or_else(|| {
                    malformed(format!("tensor '{gguf_name}': {} rows do not split into {n_h} heads of even size", shape[0]))
                })?;
                Ok((shape, data))
            }
        }
    }

    /// The token types (`tokenizer.ggml.token_type`), one per token, if the file has them.
    fn token_types(&self, n_tokens: usize) -> Result<Option<Vec<u64>>, GgufError> {
        let key = "tokenizer.ggml.token_type";
        let Some(v) = self.metadata(key) else { return Ok(None) };
        let a = v.as_array().ok_or_else(|| self.meta_err(key, "expected an array"))?;
        let t: Option<Vec<u64>> = a.iter().map(|x| x.as_u64()).collect();
        let t = t.ok_or_else(|| self.meta_err(key, "expected integers"))?;
        if t.len() != n_tokens {
            return Err(self.meta_err(key, format!("{} entries for {n_tokens} tokens", t.len())));
        }
        Ok(Some(t))
    }

    /// A tokenizer.json for a SentencePiece BPE vocabulary (`tokenizer.ggml.model = llama`:
    /// Gemma's), encoding as SentencePiece does: a BPE model whose merges are every split `l + r`
    /// of a normal piece into two pieces, ranked by the merged piece's score (`−rank`: SentencePiece
    /// merges the adjacent pair whose result scores highest); byte fallback to the `<0xNN>` pieces;
    /// spaces become `▁` (after prepending one when `add_space_prefix` is true), with no
    /// pre-tokenization. User-defined pieces (type 4: newline and whitespace runs, ...) are matched
    /// whole first, as SentencePiece's prefix matcher does (llama.cpp stores their `▁` as spaces;
    /// they are spelled with `▁` again); control pieces (type 3) are special added tokens. A BOS is
    /// added by the post-processor when `add_bos_token` is true (the engine encodes without special
    /// tokens). Checked against the `sentencepiece` library on the evaluation text
    /// (scripts/reference_gemma3.py, tests/gguf_gemma.rs). transformers' GGUF loader instead builds
    /// a Unigram model over the ranks for Gemma, which segments differently.
    fn spm_tokenizer_json(&self) -> Result<String, GgufError> {
        use tokenizers::decoders::byte_fallback::ByteFallback;
        use tokenizers::decoders::fuse::Fuse;
        use tokenizers::decoders::sequence::Sequence as DecSequence;
        use tokenizers::decoders::DecoderWrapper;
        use tokenizers::models::bpe::BPE;
        use tokenizers::normalizers::{NormalizerWrapper, Prepend, Replace, Sequence as NormSequence};
        use tokenizers::processors::template::TemplateProcessing;
        use tokenizers::{AddedToken, Tokenizer};

        let tok_err = |msg: String| GgufError::Tokenizer { path: self.path.clone(), msg };
        let tokens = self.meta_str_array("tokenizer.ggml.tokens")?;
        let key = "tokenizer.ggml.scores";
        let scores = self.metadata(key).ok_or_else(|| self.meta_err(key, "missing (a SentencePiece vocabulary needs scores)"))?;
        let scores = scores.as_array().ok_or_else(|| self.meta_err(key, "expected an array"))?;
        let scores: Vec<f64> =
            scores.iter().map(|x| x.as_f64()).collect::<Option<_>>().ok_or_else(|| self.meta_err(key, "expected numbers"))?;
        if scores.len() != tokens.len() {
            return Err(self.meta_err(key, format!("{} scores for {} tokens", scores.len(), tokens.len())));
        }
        let types = self.token_types(tokens.len())?.unwrap_or_else(|| vec![1; tokens.len()]);
        let id_of = |k: &str| -> Result<Option<usize>, GgufError> {
            let key = format!("tokenizer.ggml.{k}_token_id");
            match self.meta_u64(&key)? {
                Some(id) if id as usize >= tokens.len() => Err(self.meta_err(&key, format!("{id} is outside the {} tokens", tokens.len()))),
                id => Ok(id.map(|i| i as usize)),
            }
        };
        let unk = id_of("unknown")?;
        let bos = id_of("bos")?;
        // the pieces as SentencePiece spells them
        let pieces: Vec<String> =
            tokens.iter().zip(&types).map(|(t, &ty)| if ty == 4 { t.replace(' ', "\u{2581}") } else { (*t).to_string() }).collect();
        let mut vocab = tokenizers::models::bpe::Vocab::default();
        for (id, p) in pieces.iter().enumerate() {
            vocab.entry(p.clone()).or_insert(id as u32);
        }
        // merges: every split of a normal piece into two pieces, by the merged piece's score
        let mut ranked: Vec<(f64, usize, usize)> = Vec::new();
        for (id, p) in pieces.iter().enumerate() {
            if types[id] != 1 {
                continue;
            }
            for (at, _) in p.char_indices().skip(1) {
                if vocab.contains_key(&p[..at]) && vocab.contains_key(&p[at..]) {
                    ranked.push((scores[id], id, at));
                }
            }
        }
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let merges: Vec<(String, String)> =
            ranked.iter().map(|&(_, id, at)| (pieces[id][..at].to_string(), pieces[id][at..].to_string())).collect();
        let mut builder = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true).fuse_unk(true);
        if let Some(u) = unk {
            builder = builder.unk_token(pieces[u].clone());
        }
        let model = builder.build().map_err(|e| tok_err(format!("BPE: {e}")))?;
        let mut tk = Tokenizer::new(model);
        let replace = Replace::new(" ", "\u{2581}").map_err(|e| tok_err(format!("normalizer: {e}")))?;
        let mut norms = Vec::new();
        if self.metadata("tokenizer.ggml.add_space_prefix").and_then(|v| v.as_bool()).unwrap_or(false) {
            norms.push(NormalizerWrapper::Prepend(Prepend::new("\u{2581}".into())));
        }
        norms.push(NormalizerWrapper::Replace(replace.clone()));
        tk.with_normalizer(Some(NormalizerWrapper::Sequence(NormSequence::new(norms))));
        tk.with_decoder(Some(DecoderWrapper::Sequence(DecSequence::new(vec![
            DecoderWrapper::Replace(Replace::new("\u{2581}", " ").map_err(|e| tok_err(format!("decoder: {e}")))?),
            DecoderWrapper::ByteFallback(ByteFallback::new()),
            DecoderWrapper::Fuse(Fuse::new()),
        ]))));
        let special: Vec<AddedToken> =
            types.iter().zip(&pieces).filter(|(&t, _)| t == 3).map(|(_, p)| AddedToken::from(p.as_str(), true)).collect();
        let user: Vec<AddedToken> =
            types.iter().zip(&pieces).filter(|(&t, _)| t == 4).map(|(_, p)| AddedToken::from(p.as_str(), false)).collect();
        tk.add_special_tokens(&special);
        tk.add_tokens(&user);
        let add_bos = self.metadata("tokenizer.ggml.add_bos_token").and_then(|v| v.as_bool()).unwrap_or(false);
        if let (true, Some(b)) = (add_bos, bos) {
            let t = tokens[b];
            let post = TemplateProcessing::builder()
                .try_single(format!("{t} $A"))
                .and_then(|p| p.try_pair(format!("{t} $A {t} $B")))
                .map_err(|e| tok_err(format!("post-processor: {e}")))?
                .special_tokens(vec![(t, b as u32)])
                .build()
                .map_err(|e| tok_err(format!("post-processor: {e}")))?;
            tk.with_post_processor(Some(post));
        }
        tk.to_string(false).map_err(|e| tok_err(format!("serialize: {e}")))
    }

    /// A tokenizer.json (HF `tokenizers` format) built from the `tokenizer.ggml.*` metadata:
    /// byte-level BPE over the vocab and merges, pre-tokenizer
    /// Sequence[Digits(individual), ByteLevel(no prefix space)] for `pre = smollm` (plain
    /// ByteLevel for `pre = gpt2`), ByteLevel decoder, no post-processor adding BOS. Control
    /// (type 3) tokens are added as special added tokens, user-defined (type 4) as normal added
    /// tokens.
    pub fn tokenizer_json(&self) -> Result<String, GgufError> {
        use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDec;
        use tokenizers::decoders::DecoderWrapper;
        use tokenizers::models::bpe::{Vocab, BPE};
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        use tokenizers::pre_tokenizers::digits::Digits;
        use tokenizers::pre_tokenizers::sequence::Sequence;
        use tokenizers::pre_tokenizers::PreTokenizerWrapper;
        use tokenizers::processors::PostProcessorWrapper;
        use tokenizers::{AddedToken, Tokenizer};

        let tok_err = |msg: String| GgufError::Tokenizer { path: self.path.clone(), msg };
        let model = self.meta_str("tokenizer.ggml.model")?.ok_or_else(|| self.meta_err("tokenizer.ggml.model", "missing"))?;
        match model {
            "gpt2" => {}
            "llama" => return self.spm_tokenizer_json(),
            _ => {
                return Err(tok_err(format!(
                    "tokenizer.ggml.model is '{model}'; supported: 'gpt2' (byte-level BPE), 'llama' (SentencePiece)"
                )))
            }
        }
        let pre = self.meta_str("tokenizer.ggml.pre")?.unwrap_or("gpt2");
        let split_digits = match pre {
            "smollm" => true,
            "gpt2" => false,
            other => return Err(tok_err(format!("tokenizer.ggml.pre '{other}' is not supported (smollm, gpt2)"))),
        };
        let tokens = self.meta_str_array("tokenizer.ggml.tokens")?;
        let merges_raw = self.meta_str_array("tokenizer.ggml.merges")?;
        let types: Option<Vec<u64>> = match self.metadata("tokenizer.ggml.token_type") {
            None => None,
            Some(v) => {
                let a = v.as_array().ok_or_else(|| self.meta_err("tokenizer.ggml.token_type", "expected an array"))?;
                let t: Option<Vec<u64>> = a.iter().map(|x| x.as_u64()).collect();
                let t = t.ok_or_else(|| self.meta_err("tokenizer.ggml.token_type", "expected integers"))?;
                if t.len() != tokens.len() {
                    return Err(self.meta_err("tokenizer.ggml.token_type", format!("{} entries for {} tokens", t.len(), tokens.len())));
                }
                Some(t)
            }
        };

        let mut vocab = Vocab::default();
        for (id, t) in tokens.iter().enumerate() {
            if vocab.insert((*t).to_string(), id as u32).is_some() {
                return Err(tok_err(format!("duplicate token '{t}' (id {id})")));
            }
        }
        let merges = merges_raw
            .iter()
            .enumerate()
            .map(|(i, m)| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| tok_err(format!("merge {i} '{m}' has no space")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| tok_err(format!("BPE: {e}")))?;

        let mut tk = Tokenizer::new(bpe);
        let byte_level = ByteLevel::default().add_prefix_space(false).trim_offsets(true).use_regex(true);
        let pre_tok = if split_digits {
            PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                PreTokenizerWrapper::ByteLevel(byte_level),
            ]))
        } else {
            PreTokenizerWrapper::ByteLevel(byte_level)
        };
        tk.with_pre_tokenizer(Some(pre_tok));
        tk.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevelDec::default())));
        tk.with_post_processor(None::<PostProcessorWrapper>);

        let mut special = Vec::new();
        let mut user = Vec::new();
        match &types {
            Some(types) => {
                for (id, &t) in types.iter().enumerate() {
                    match t {
                        3 => special.push(AddedToken::from(tokens[id], true)),
                        4 => user.push(AddedToken::from(tokens[id], false)),
                        _ => {}
                    }
                }
            }
            None => {
                let mut ids: Vec<u64> = ["bos", "eos", "unknown", "padding"]
                    .iter()
                    .filter_map(|k| self.meta_u64(&format!("tokenizer.ggml.{k}_token_id")).ok().flatten())
                    .collect();
                ids.sort_unstable();
                ids.dedup();
                for id in ids {
                    let t = tokens.get(id as usize).ok_or_else(|| tok_err(format!("special token id {id} out of range")))?;
                    special.push(AddedToken::from(*t, true));
                }
            }
        }
        tk.add_special_tokens(&special);
        tk.add_tokens(&user);
        tk.to_string(false).map_err(|e| tok_err(format!("serialize: {e}")))
    }
}

/// The metadata keys (after `fasp.rope.llama3.`) holding Llama-3 rope scaling's parameters, in
/// the order [`llama3_rope_factors`] takes them.
pub const LLAMA3_ROPE_KEYS: [&str; 4] = ["factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"];

/// llama.cpp's `rope_freqs` of Llama-3 rope scaling, as `convert_hf_to_gguf.py` computes them: per
/// frequency `i` of `head_dim / 2`, the divisor of `theta^(-2i/head_dim)`: 1 for wavelengths below
/// `orig / high`, `factor` above `orig / low`, `1 / ((1 − s)/factor + s)` between, with
/// `s = (orig / wavelength − low) / (high − low)`.
pub fn llama3_rope_factors(theta: f64, head_dim: usize, factor: f64, low: f64, high: f64, orig: f64) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let f = if wavelen < orig / high {
                1.0
            } else if wavelen > orig / low {
                factor
            } else {
                let s = (orig / wavelen - low) / (high - low);
                1.0 / ((1.0 - s) / factor + s)
            };
            f as f32
        })
        .collect()
}

/// GGUF LLaMA tensor name to HF name, or None if it has no mapping.
pub fn gguf_to_hf_name(name: &str) -> Option<String> {
    Family::Llama.arch().gguf_to_hf(HF_PREFIX, name)
}

/// HF LLaMA tensor name to GGUF name, or None if it has no mapping.
pub fn hf_to_gguf_name(name: &str) -> Option<String> {
    Family::Llama.arch().hf_to_gguf(HF_PREFIX, name)
}

/// Undoes llama.cpp's Q/K row permutation of a `[rows, cols]` matrix with `n_h` heads:
/// `w.reshape(n_h, hd/2, 2, cols).swapaxes(1, 2).reshape(rows, cols)`. None if the rows do not
/// split into `n_h` heads of even size.
pub fn unpermute_rows(w: &[f32], rows: usize, cols: usize, n_h: usize) -> Option<Vec<f32>> {
    if n_h == 0 || !rows.is_multiple_of(n_h) || !(rows / n_h).is_multiple_of(2) || w.len() != rows.checked_mul(cols)? {
        return None;
    }
    let hd = rows / n_h;
    let half = hd / 2;
    let mut out = vec![0f32; w.len()];
    out.par_chunks_mut(cols.max(1)).enumerate().for_each(|(r, dst)| {
        // destination row r = (h, i, j) in shape (n_h, 2, hd/2); source (h, j, i) in (n_h, hd/2, 2)
        let (h, within) = (r / hd, r % hd);
        let (i, j) = (within / half, within % half);
        let src = h * hd + j * 2 + i;
        dst.copy_from_slice(&w[src * cols..(src + 1) * cols]);
    });
    Some(out)
}

/// Blocks per parallel task.
const PAR_BLOCKS: usize = 4096;

/// Dequantizes `n` elements of type `ty` from `bytes` (exactly the tensor's bytes). None if the
/// type is not supported.
pub fn dequantize(bytes: &[u8], ty: GgmlType, n: usize) -> Option<Vec<f32>> {
    let be = ty.block_elems as usize;
    let bb = ty.block_bytes as usize;
    debug_assert_eq!(bytes.len(), n / be * bb);
    let block: fn(&[u8], &mut [f32]) = match ty.id {
        0 => |b, o| o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        1 => |b, o| o[0] = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
        30 => |b, o| o[0] = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
        2 => dequant_q4_0_block,
        3 => dequant_q4_1_block,
        6 => dequant_q5_0_block,
        7 => dequant_q5_1_block,
        8 => dequant_q8_0_block,
        10 => dequant_q2_k_block,
        11 => dequant_q3_k_block,
        12 => dequant_q4_k_block,
        13 => dequant_q5_k_block,
        14 => dequant_q6_k_block,
        _ => return None,
    };
    let mut out = vec![0f32; n];
    // Work in chunks of many blocks so the parallel overhead stays small.
    let chunk_blocks = if be == 1 { PAR_BLOCKS * 32 } else { PAR_BLOCKS };
    out.par_chunks_mut(chunk_blocks * be).zip(bytes.par_chunks(chunk_blocks * bb)).for_each(|(o, b)| {
        for (ob, bb) in o.chunks_exact_mut(be).zip(b.chunks_exact(bb)) {
            block(bb, ob);
        }
    });
    Some(out)
}

fn read_f16(b: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

/// Q8_0: f16 d, i8 q[32]; w = d * q.
fn dequant_q8_0_block(b: &[u8], o: &mut [f32]) {
    let d = read_f16(&b[0..2]);
    for (w, &q) in o.iter_mut().zip(&b[2..34]) {
        *w = d * (q as i8) as f32;
    }
}

/// Q4_0: f16 d, u8 qs[16]; w[j] = d*((qs[j]&15)-8), w[j+16] = d*((qs[j]>>4)-8).
fn dequant_q4_0_block(b: &[u8], o: &mut [f32]) {
    let d = read_f16(&b[0..2]);
    let (lo, hi) = o.split_at_mut(16);
    for j in 0..16 {
        let q = b[2 + j];
        lo[j] = d * ((q & 15) as i32 - 8) as f32;
        hi[j] = d * ((q >> 4) as i32 - 8) as f32;
    }
}

/// The fifth bits of a Q5_0/Q5_1 block: bit j of the u32 `qh` is the high bit of weight j.
fn q5_high_bits(qh: &[u8]) -> u32 {
    u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]])
}

/// Q5_0: f16 d, u8 qh[4], u8 qs[16]; w[j] = d*((qs[j]&15 | bit j of qh << 4) - 16), and the
/// high nibble with bit j+16 for w[j+16].
fn dequant_q5_0_block(b: &[u8], o: &mut [f32]) {
    let d = read_f16(&b[0..2]);
    let qh = q5_high_bits(&b[2..6]);
    let (lo, hi) = o.split_at_mut(16);
    for j in 0..16 {
        let q = b[6 + j];
        let x0 = ((q & 15) as u32 | (((qh >> j) & 1) << 4)) as i32 - 16;
        let x1 = ((q >> 4) as u32 | (((qh >> (j + 16)) & 1) << 4)) as i32 - 16;
        lo[j] = d * x0 as f32;
        hi[j] = d * x1 as f32;
    }
}

/// Q5_1: f16 d, f16 m, u8 qh[4], u8 qs[16]; as Q5_0 without the -16, plus m.
fn dequant_q5_1_block(b: &[u8], o: &mut [f32]) {
    let d = read_f16(&b[0..2]);
    let m = read_f16(&b[2..4]);
    let qh = q5_high_bits(&b[4..8]);
    let (lo, hi) = o.split_at_mut(16);
    for j in 0..16 {
        let q = b[8 + j];
        let x0 = (q & 15) as u32 | (((qh >> j) & 1) << 4);
        let x1 = (q >> 4) as u32 | (((qh >> (j + 16)) & 1) << 4);
        lo[j] = d * x0 as f32 + m;
        hi[j] = d * x1 as f32 + m;
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) packed in 12 bytes (Q4_K, Q5_K): ggml's
/// `get_scale_min_k4`.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Q2_K (256 weights): u8 scales[16] (low nibble scale, high nibble min), u8 qs[64] (2 bits
/// each), f16 d, f16 dmin. 16 groups of 16: w = d*sc*q - dmin*m.
fn dequant_q2_k_block(b: &[u8], o: &mut [f32]) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let d = read_f16(&b[80..82]);
    let dmin = read_f16(&b[82..84]);
    let mut is = 0;
    for (n, y) in o.chunks_exact_mut(128).enumerate() {
        let q = &qs[n * 32..n * 32 + 32];
        for (j, y) in y.chunks_exact_mut(32).enumerate() {
            let shift = 2 * j;
            for (half, y) in y.chunks_exact_mut(16).enumerate() {
                let sc = scales[is];
                is += 1;
                let dl = d * (sc & 0xF) as f32;
                let ml = dmin * (sc >> 4) as f32;
                for (l, w) in y.iter_mut().enumerate() {
                    *w = dl * ((q[half * 16 + l] >> shift) & 3) as f32 - ml;
                }
            }
        }
    }
}

/// Q3_K (256 weights): u8 hmask[32] (the third bit, set = no offset), u8 qs[64] (low 2 bits),
/// 12 bytes of 16 packed 6-bit scales (offset 32), f16 d. w = d*(sc-32)*(q - (hbit ? 0 : 4)).
fn dequant_q3_k_block(b: &[u8], o: &mut [f32]) {
    let (hm, qs, sc) = (&b[0..32], &b[32..96], &b[96..108]);
    let d = read_f16(&b[108..110]);
    // ggml's kmask unpacking: scale i has low nibble from byte i%8 (nibble i/8) and high two
    // bits from byte 8 + i%4 (bit pair i/4).
    let scale = |i: usize| -> i32 {
        let lo = (sc[i % 8] >> (4 * (i / 8))) & 0xF;
        let hi = (sc[8 + i % 4] >> (2 * (i / 4))) & 3;
        (lo | (hi << 4)) as i32 - 32
    };
    let mut is = 0;
    let mut m = 0u32;
    for (n, y) in o.chunks_exact_mut(128).enumerate() {
        let q = &qs[n * 32..n * 32 + 32];
        for (j, y) in y.chunks_exact_mut(32).enumerate() {
            let shift = 2 * j;
            for (half, y) in y.chunks_exact_mut(16).enumerate() {
                let dl = d * scale(is) as f32;
                is += 1;
                for (l, w) in y.iter_mut().enumerate() {
                    let k = half * 16 + l;
                    let low = ((q[k] >> shift) & 3) as i32;
                    let off = if (hm[k] >> m) & 1 == 1 { 0 } else { 4 };
                    *w = dl * (low - off) as f32;
                }
            }
            m += 1;
        }
    }
}

/// Q4_K (256 weights): f16 d, f16 dmin, 12 bytes of 8 packed 6-bit (scale, min), u8 qs[128].
/// Each 64 weights share 32 bytes: low nibbles then high nibbles, w = d*sc*q - dmin*m.
fn dequant_q4_k_block(b: &[u8], o: &mut [f32]) {
    let d = read_f16(&b[0..2]);
    let dmin = read_f16(&b[2..4]);
    let (scales, qs) = (&b[4..16], &b[16..144]);
    for (j, y) in o.chunks_exact_mut(64).enumerate() {
        let q = &qs[j * 32..j * 32 + 32];
        let (sc1, m1) = scale_min_k4(2 * j, scales);
        let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        let (lo, hi) = y.split_at_mut(32);
        for l in 0..32 {
            lo[l] = d1 * (q[l] & 0xF) as f32 - m1;
            hi[l] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

/// Q5_K (256 weights): as Q4_K with u8 qh[32] before qs[128]; bit 2j (2j+1) of qh[l] is the
/// fifth bit of the low (high) nibble weight l of 64-group j.
fn dequant_q5_k_block(b: &[u8], o: &mut [f32]) {
    let d = read_f16(&b[0..2]);
    let dmin = read_f16(&b[2..4]);
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for (j, y) in o.chunks_exact_mut(64).enumerate() {
        let ql = &qs[j * 32..j * 32 + 32];
        let (sc1, m1) = scale_min_k4(2 * j, scales);
        let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        let (lo, hi) = y.split_at_mut(32);
        for l in 0..32 {
            let h1 = ((qh[l] >> (2 * j)) & 1) << 4;
            let h2 = ((qh[l] >> (2 * j + 1)) & 1) << 4;
            lo[l] = d1 * ((ql[l] & 0xF) + h1) as f32 - m1;
            hi[l] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
        }
    }
}

/// Q6_K (256 weights): u8 ql[128] (low 4 bits), u8 qh[64] (high 2 bits), i8 scales[16], f16 d.
/// w = d*scale*(q - 32), one scale per 16 weights.
fn dequant_q6_k_block(b: &[u8], o: &mut [f32]) {
    let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = read_f16(&b[208..210]);
    for (n, y) in o.chunks_exact_mut(128).enumerate() {
        let (ql, qh, sc) = (&ql[n * 64..n * 64 + 64], &qh[n * 32..n * 32 + 32], &sc[n * 8..n * 8 + 8]);
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            let s = |k: usize| d * (sc[is + k] as i8) as f32;
            y[l] = s(0) * q1 as f32;
            y[l + 32] = s(2) * q2 as f32;
            y[l + 64] = s(4) * q3 as f32;
            y[l + 96] = s(6) * q4 as f32;
        }
    }
}

/// Q4_1: f16 d, f16 m, u8 qs[16]; w[j] = d*(qs[j]&15)+m, w[j+16] = d*(qs[j]>>4)+m.
fn dequant_q4_1_block(b: &[u8], o: &mut [f32]) {
    let d = read_f16(&b[0..2]);
    let m = read_f16(&b[2..4]);
    let (lo, hi) = o.split_at_mut(16);
    for j in 0..16 {
        let q = b[4 + j];
        lo[j] = d * (q & 15) as f32 + m;
        hi[j] = d * (q >> 4) as f32 + m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Builds GGUF bytes.
    #[derive(Default)]
    struct Builder {
        buf: Vec<u8>,
    }

    impl Builder {
        fn u32(mut self, v: u32) -> Self {
            self.buf.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Self {
            self.buf.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn str(self, s: &str) -> Self {
            let mut b = self.u64(s.len() as u64);
            b.buf.extend_from_slice(s.as_bytes());
            b
        }
        fn bytes(mut self, v: &[u8]) -> Self {
            self.buf.extend_from_slice(v);
            self
        }
        fn header(kv: u64, tensors: u64) -> Self {
            Builder::default().bytes(b"GGUF").u32(3).u64(tensors).u64(kv)
        }
        fn tensor(self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Self {
            let mut b = self.str(name).u32(dims.len() as u32);
            for &d in dims {
                b = b.u64(d);
            }
            b.u32(ty).u64(offset)
        }
        fn pad(mut self, align: usize) -> Self {
            while !self.buf.len().is_multiple_of(align) {
                self.buf.push(0);
            }
            self
        }
    }

    fn write_tmp(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f.flush().unwrap();
        f
    }

    fn open_bytes(bytes: &[u8]) -> Result<GgufFile, GgufError> {
        let f = write_tmp(bytes);
        GgufFile::open(f.path())
    }

    fn open_err(bytes: &[u8]) -> String {
        match open_bytes(bytes) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    fn f16b(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_bits().to_le_bytes()
    }

    /// A valid file with one F32 tensor [2, 3] (ne0=3) and a string metadata entry.
    fn valid_file() -> Vec<u8> {
        let mut b = Builder::header(2, 1)
            .str("general.architecture")
            .u32(8)
            .str("llama")
            .str("general.alignment")
            .u32(4)
            .u32(32)
            .tensor("t", &[3, 2], 0, 0)
            .pad(32);
        for i in 0..6 {
            b = b.bytes(&(i as f32).to_le_bytes());
        }
        b.buf
    }

    #[test]
    fn valid_file_opens() {
        let g = open_bytes(&valid_file()).unwrap();
        assert_eq!(g.version(), 3);
        assert_eq!(g.metadata("general.architecture").unwrap().as_str(), Some("llama"));
        assert_eq!(g.data_offset() % 32, 0);
        let (shape, data) = g.tensor_f32("t").unwrap();
        assert_eq!(shape, vec![2, 3]);
        assert_eq!(data, vec![0., 1., 2., 3., 4., 5.]);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let full = valid_file();
        for n in 0..full.len() {
            let e = open_bytes(&full[..n]);
            assert!(e.is_err(), "truncated to {n} bytes opened");
        }
    }

    #[test]
    fn bad_magic() {
        let mut b = valid_file();
        b[..4].copy_from_slice(b"GGML");
        let e = open_err(&b);
        assert!(e.contains("not a GGUF file"), "{e}");
        assert!(open_err(b"XY").contains("truncated"));
        let e = open_err(b"GGJT00000000000000000000000");
        assert!(e.contains("magic"), "{e}");
    }

    #[test]
    fn bad_version() {
        let mut b = valid_file();
        b[4..8].copy_from_slice(&7u32.to_le_bytes());
        assert!(open_err(&b).contains("version 7"));
    }

    #[test]
    fn huge_counts() {
        let b = Builder::header(u64::MAX, 0).buf;
        let e = open_err(&b);
        assert!(e.contains("metadata count"), "{e}");
        let b = Builder::header(0, 1 << 40).bytes(&[0; 64]).buf;
        let e = open_err(&b);
        assert!(e.contains("tensor count"), "{e}");
        // Plausible-looking counts that still exceed the file.
        let b = Builder::header(1000, 0).bytes(&[0; 100]).buf;
        assert!(open_err(&b).contains("metadata count"));
        let b = Builder::header(0, 5).bytes(&[0; 100]).buf;
        assert!(open_err(&b).contains("tensor count"));
    }

    #[test]
    fn string_past_eof() {
        let b = Builder::header(1, 0).u64(1 << 50).bytes(b"abcdefgh").buf;
        let e = open_err(&b);
        assert!(e.contains("truncated") && e.contains("key of metadata entry 0"), "{e}");
        let b = Builder::header(1, 0).str("k").u32(8).u64(1000).bytes(b"short").buf;
        let e = open_err(&b);
        assert!(e.contains("value of metadata 'k'"), "{e}");
        // Huge string array.
        let b = Builder::header(1, 0).str("k").u32(9).u32(8).u64(u64::MAX / 2).bytes(&[0; 16]).buf;
        let e = open_err(&b);
        assert!(e.contains("array length"), "{e}");
        // Unknown metadata value type.
        let b = Builder::header(1, 0).str("k").u32(99).bytes(&[0; 16]).buf;
        assert!(open_err(&b).contains("unknown value type 99"));
    }

    #[test]
    fn tensor_out_of_range() {
        // Offset far past the end.
        let b = Builder::header(0, 1).tensor("w", &[4], 0, 1 << 40).pad(32).bytes(&[0; 16]).buf;
        let e = open_err(&b);
        assert!(e.contains("'w'") && e.contains("past the end"), "{e}");
        // Extent just one element too long.
        let b = Builder::header(0, 1).tensor("w", &[5], 0, 0).pad(32).bytes(&[0; 16]).buf;
        assert!(open_err(&b).contains("past the end"));
        // Overflowing element count.
        let b = Builder::header(0, 1).tensor("w", &[u64::MAX, 3], 0, 0).pad(32).bytes(&[0; 16]).buf;
        assert!(open_err(&b).contains("overflows"));
        // Too many dims.
        let b = Builder::header(0, 1).tensor("w", &[1, 1, 1, 1, 1], 0, 0).pad(32).bytes(&[0; 16]).buf;
        assert!(open_err(&b).contains("dims"));
        // Misaligned offset.
        let b = Builder::header(0, 1).tensor("w", &[1], 0, 4).pad(32).bytes(&[0; 16]).buf;
        assert!(open_err(&b).contains("alignment"));
        // Quantized row not a whole number of blocks.
        let b = Builder::header(0, 1).tensor("w", &[16], 8, 0).pad(32).bytes(&[0; 64]).buf;
        assert!(open_err(&b).contains("block size"));
    }

    #[test]
    fn unknown_and_unsupported_tensor_types() {
        let b = Builder::header(0, 1).tensor("mystery", &[4], 77, 0).pad(32).bytes(&[0; 64]).buf;
        let e = open_err(&b);
        assert!(e.contains("'mystery'") && e.contains("unknown ggml type id 77"), "{e}");
        // IQ4_NL has a known size but is not dequantized here.
        let b = Builder::header(0, 1).tensor("q", &[32], 20, 0).pad(32).bytes(&[0; 32]).buf;
        let g = open_bytes(&b).unwrap();
        let e = g.tensor_f32("q").unwrap_err().to_string();
        assert!(e.contains("'q'") && e.contains("IQ4_NL") && e.contains("id 20"), "{e}");
        assert!(g.tensor_f32("nope").unwrap_err().to_string().contains("no tensor named"));
    }

    #[test]
    fn metadata_types_and_string_arrays() {
        let b = Builder::header(4, 0)
            .str("a")
            .u32(9)
            .u32(8)
            .u64(2)
            .str("x")
            .str("yz")
            .str("f")
            .u32(6)
            .bytes(&1e-5f32.to_le_bytes())
            .str("b")
            .u32(7)
            .bytes(&[1])
            .str("i")
            .u32(11)
            .bytes(&(-3i64).to_le_bytes())
            .buf;
        let g = open_bytes(&b).unwrap();
        let a = g.metadata("a").unwrap().as_array().unwrap();
        assert_eq!(a, &[GgufValue::String("x".into()), GgufValue::String("yz".into())]);
        assert_eq!(g.metadata("f").unwrap().as_f64(), Some(1e-5));
        assert_eq!(g.metadata("b").unwrap().as_bool(), Some(true));
        assert_eq!(g.metadata("i"), Some(&GgufValue::I64(-3)));
        assert!(g.hf_config().unwrap_err().to_string().contains("general.architecture"));
    }

    fn deq(bytes: &[u8], id: u32, n: usize) -> Vec<f32> {
        dequantize(bytes, ggml_type(id).unwrap(), n).unwrap()
    }

    #[test]
    fn dequant_f32_f16_bf16() {
        let vals = [1.5f32, -2.25, 0.0, 65504.0];
        let b: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(deq(&b, 0, 4), vals);
        // f16 bit patterns: 1.0 = 0x3c00, -2.0 = 0xc000, 0.5 = 0x3800, 65504 = 0x7bff.
        let b: Vec<u8> = [0x3c00u16, 0xc000, 0x3800, 0x7bff].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(deq(&b, 1, 4), [1.0, -2.0, 0.5, 65504.0]);
        // bf16 is the top half of an f32: 1.0 = 0x3f80, -3.0 = 0xc040, 0.15625 = 0x3e20.
        let b: Vec<u8> = [0x3f80u16, 0xc040, 0x3e20].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(deq(&b, 30, 3), [1.0, -3.0, 0.15625]);
    }

    #[test]
    fn dequant_q8_0() {
        let mut b = f16b(0.5).to_vec();
        for j in 0..32i32 {
            b.push(((j - 16) as i8) as u8);
        }
        b.extend_from_slice(&f16b(-2.0));
        b.extend(std::iter::repeat_n(3u8, 31));
        b.push(0x80); // -128
        let w = deq(&b, 8, 64);
        for (j, &x) in w[..32].iter().enumerate() {
            assert_eq!(x, 0.5 * (j as f32 - 16.0));
        }
        assert_eq!(w[32], -6.0);
        assert_eq!(w[63], 256.0);
    }

    #[test]
    fn dequant_q4_1() {
        // d = 0.25, m = -1.0; qs[j] = (lo = j) | (hi = 15 - j) << 4.
        let mut b = f16b(0.25).to_vec();
        b.extend_from_slice(&f16b(-1.0));
        for j in 0..16u8 {
            b.push(j | ((15 - j) << 4));
        }
        let w = deq(&b, 3, 32);
        assert_eq!(w[0], -1.0);
        assert_eq!(w[5], 0.25 * 5.0 - 1.0);
        assert_eq!(w[15], 0.25 * 15.0 - 1.0);
        assert_eq!(w[16], 0.25 * 15.0 - 1.0);
        assert_eq!(w[16 + 5], 0.25 * 10.0 - 1.0);
        assert_eq!(w[31], -1.0);
    }

    #[test]
    fn dequant_many_blocks_parallel() {
        // More than one parallel chunk, checked against the scalar formula.
        let nb = PAR_BLOCKS * 2 + 3;
        let mut b = Vec::with_capacity(nb * 20);
        for k in 0..nb {
            b.extend_from_slice(&f16b((k % 7) as f32 * 0.125));
            b.extend_from_slice(&f16b(-((k % 5) as f32)));
            for j in 0..16 {
                b.push(((k + j) % 256) as u8);
            }
        }
        let w = deq(&b, 3, nb * 32);
        for k in [0, 1, PAR_BLOCKS - 1, PAR_BLOCKS, nb - 1] {
            let d = (k % 7) as f32 * 0.125;
            let m = -((k % 5) as f32);
            for j in 0..16 {
                let q = ((k + j) % 256) as u8;
                assert_eq!(w[k * 32 + j], d * (q & 15) as f32 + m);
                assert_eq!(w[k * 32 + j + 16], d * (q >> 4) as f32 + m);
            }
        }
    }

    #[test]
    fn unpermute_tiny() {
        // 2 heads, head_dim 4, 1 column: GGUF rows per head are (j, i) pairs interleaved.
        // Row r holds value r. numpy: np.arange(8).reshape(2, 2, 2, 1).swapaxes(1, 2).reshape(8)
        // = [0, 2, 1, 3, 4, 6, 5, 7].
        let w: Vec<f32> = (0..8).map(|x| x as f32).collect();
        let u = unpermute_rows(&w, 8, 1, 2).unwrap();
        assert_eq!(u, vec![0., 2., 1., 3., 4., 6., 5., 7.]);
        // With 2 columns and head_dim 6 (one head): rows [0..6] -> [0, 2, 4, 1, 3, 5].
        let w: Vec<f32> = (0..12).map(|x| x as f32).collect();
        let u = unpermute_rows(&w, 6, 2, 1).unwrap();
        assert_eq!(u, vec![0., 1., 4., 5., 8., 9., 2., 3., 6., 7., 10., 11.]);
        // It inverts llama.cpp's permute: w.reshape(n_h, 2, hd/2, in).swapaxes(1, 2).
        let permute = |w: &[f32], rows: usize, n_h: usize| -> Vec<f32> {
            let hd = rows / n_h;
            let mut out = vec![0.0; rows];
            for h in 0..n_h {
                for j in 0..hd / 2 {
                    for i in 0..2 {
                        out[h * hd + j * 2 + i] = w[h * hd + i * hd / 2 + j];
                    }
                }
            }
            out
        };
        let w: Vec<f32> = (0..24).map(|x| x as f32).collect();
        assert_eq!(unpermute_rows(&permute(&w, 24, 3), 24, 1, 3).unwrap(), w);
        assert!(unpermute_rows(&w, 24, 1, 5).is_none());
    }

    #[test]
    fn name_mapping_round_trips() {
        for (g, h) in [
            ("token_embd.weight", "model.embed_tokens.weight"),
            ("output_norm.weight", "model.norm.weight"),
            ("output.weight", "lm_head.weight"),
            ("blk.0.attn_norm.weight", "model.layers.0.input_layernorm.weight"),
            ("blk.12.attn_q.weight", "model.layers.12.self_attn.q_proj.weight"),
            ("blk.3.attn_k.weight", "model.layers.3.self_attn.k_proj.weight"),
            ("blk.3.attn_v.weight", "model.layers.3.self_attn.v_proj.weight"),
            ("blk.3.attn_output.weight", "model.layers.3.self_attn.o_proj.weight"),
            ("blk.29.ffn_norm.weight", "model.layers.29.post_attention_layernorm.weight"),
            ("blk.1.ffn_gate.weight", "model.layers.1.mlp.gate_proj.weight"),
            ("blk.1.ffn_up.weight", "model.layers.1.mlp.up_proj.weight"),
            ("blk.1.ffn_down.weight", "model.layers.1.mlp.down_proj.weight"),
        ] {
            assert_eq!(gguf_to_hf_name(g).as_deref(), Some(h));
            assert_eq!(hf_to_gguf_name(h).as_deref(), Some(g));
        }
        assert_eq!(gguf_to_hf_name("rope_freqs.weight"), None);
    }

    /// A tiny llama file: 1 layer, hidden 8, 2 heads, 1 kv head, head_dim 4; Q is [8,8], K [4,8].
    #[test]
    fn tiny_llama_hf_view() {
        let kv: &[(&str, u32, Vec<u8>)] = &[
            ("general.architecture", 8, [&5u64.to_le_bytes()[..], b"llama"].concat()),
            ("llama.block_count", 4, 1u32.to_le_bytes().to_vec()),
            ("llama.embedding_length", 4, 8u32.to_le_bytes().to_vec()),
            ("llama.feed_forward_length", 4, 16u32.to_le_bytes().to_vec()),
            ("llama.attention.head_count", 4, 2u32.to_le_bytes().to_vec()),
            ("llama.attention.head_count_kv", 4, 1u32.to_le_bytes().to_vec()),
            ("llama.attention.layer_norm_rms_epsilon", 6, 1e-5f32.to_le_bytes().to_vec()),
            ("llama.rope.freq_base", 6, 100000f32.to_le_bytes().to_vec()),
            ("llama.vocab_size", 4, 10u32.to_le_bytes().to_vec()),
        ];
        let mut b = Builder::header(kv.len() as u64, 2);
        for (k, t, v) in kv {
            b = b.str(k).u32(*t).bytes(v);
        }
        b = b.tensor("blk.0.attn_q.weight", &[8, 8], 0, 0).tensor("blk.0.attn_k.weight", &[8, 4], 0, 256).pad(32);
        // Row r of Q is filled with r; row r of K with 100 + r.
        for r in 0..8 {
            for _ in 0..8 {
                b = b.bytes(&(r as f32).to_le_bytes());
            }
        }
        for r in 0..4 {
            for _ in 0..8 {
                b = b.bytes(&(100.0 + r as f32).to_le_bytes());
            }
        }
        let g = open_bytes(&b.buf).unwrap();
        let cfg = g.hf_config().unwrap();
        assert_eq!(cfg["num_attention_heads"], 2);
        assert_eq!(cfg["num_key_value_heads"], 1);
        assert_eq!(cfg["head_dim"], 4);
        assert_eq!(cfg["vocab_size"], 10);
        assert_eq!(cfg["rms_norm_eps"], 1e-5);
        assert_eq!(cfg["rope_theta"], 100000.0);
        assert_eq!(cfg["tie_word_embeddings"], true);
        let names = g.hf_tensor_names();
        assert_eq!(names[0], ("model.layers.0.self_attn.q_proj.weight".to_string(), vec![8, 8]));
        assert_eq!(names[1], ("model.layers.0.self_attn.k_proj.weight".to_string(), vec![4, 8]));
        let rows = |w: &[f32]| w.chunks(8).map(|r| r[0]).collect::<Vec<_>>();
        // Q: per head (hd 4) rows [0,1,2,3] -> [0,2,1,3].
        let (s, q) = g.hf_tensor_f32("model.layers.0.self_attn.q_proj.weight").unwrap();
        assert_eq!(s, vec![8, 8]);
        assert_eq!(rows(&q), vec![0., 2., 1., 3., 4., 6., 5., 7.]);
        // K: one kv head.
        let (s, k) = g.hf_tensor_f32("model.layers.0.self_attn.k_proj.weight").unwrap();
        assert_eq!(s, vec![4, 8]);
        assert_eq!(rows(&k), vec![100., 102., 101., 103.]);
        // The raw GGUF view is not un-permuted.
        let (_, raw) = g.tensor_f32("blk.0.attn_q.weight").unwrap();
        assert_eq!(rows(&raw), (0..8).map(|r| r as f32).collect::<Vec<_>>());
        assert!(g.hf_tensor_f32("lm_head.weight").is_err());
    }

    /// A one-layer file of architecture `arch` (hidden 8, 2 heads over 1 KV head of 4) with F32
    /// tensors, each filled by `fill(row)`; `extra` metadata appended.
    fn family_file(arch: &str, tensors: &[(&str, &[u64])], extra: &[(&str, u32, Vec<u8>)]) -> Vec<u8> {
        let s = |v: &str| [&(v.len() as u64).to_le_bytes()[..], v.as_bytes()].concat();
        let key = |k: &str| format!("{arch}.{k}");
        let mut kv: Vec<(String, u32, Vec<u8>)> = vec![
            ("general.architecture".into(), 8, s(arch)),
            (key("block_count"), 4, 1u32.to_le_bytes().to_vec()),
            (key("embedding_length"), 4, 8u32.to_le_bytes().to_vec()),
            (key("feed_forward_length"), 4, 16u32.to_le_bytes().to_vec()),
            (key("attention.head_count"), 4, 2u32.to_le_bytes().to_vec()),
            (key("attention.head_count_kv"), 4, 1u32.to_le_bytes().to_vec()),
            (key("attention.key_length"), 4, 4u32.to_le_bytes().to_vec()),
            (key("rope.freq_base"), 6, 1e6f32.to_le_bytes().to_vec()),
            (key("vocab_size"), 4, 10u32.to_le_bytes().to_vec()),
        ];
        kv.extend(extra.iter().map(|(k, t, v)| (k.to_string(), *t, v.clone())));
        let mut b = Builder::header(kv.len() as u64, tensors.len() as u64);
        for (k, t, v) in &kv {
            b = b.str(k).u32(*t).bytes(v);
        }
        let mut offset = 0;
        for (name, dims) in tensors {
            b = b.tensor(name, dims, 0, offset);
            offset += dims.iter().product::<u64>() * 4;
            offset = offset.div_ceil(32) * 32;
        }
        b = b.pad(32);
        for (_, dims) in tensors {
            let (cols, rows) = (dims[0], dims.get(1).copied().unwrap_or(1));
            for r in 0..rows {
                for _ in 0..cols {
                    b = b.bytes(&(1.5 + r as f32).to_le_bytes());
                }
            }
            b = b.pad(32);
        }
        b.buf
    }

    #[test]
    fn gemma3_maps_names_norms_and_defaults() {
        let tensors: &[(&str, &[u64])] = &[
            ("blk.0.attn_q.weight", &[8, 8]),
            ("blk.0.attn_q_norm.weight", &[4]),
            ("blk.0.ffn_norm.weight", &[8]),
            ("blk.0.post_attention_norm.weight", &[8]),
            ("blk.0.post_ffw_norm.weight", &[8]),
            ("output_norm.weight", &[8]),
        ];
        let extra = [("gemma3.attention.sliding_window", 4, 3u32.to_le_bytes().to_vec())];
        let g = open_bytes(&family_file("gemma3", tensors, &extra)).unwrap();
        assert_eq!(g.family().unwrap(), Family::Gemma3);
        let cfg = g.hf_config().unwrap();
        assert_eq!(cfg["model_type"], "gemma3_text");
        assert_eq!(cfg["hidden_activation"], "gelu_pytorch_tanh");
        assert_eq!(cfg["sliding_window"], 3);
        assert_eq!(cfg["sliding_window_pattern"], 6);
        assert_eq!(cfg["rope_local_base_freq"], 10000.0);
        assert_eq!(cfg["query_pre_attn_scalar"], 4.0);
        assert_eq!(cfg["rope_theta"], 1e6);
        assert!(cfg["final_logit_softcapping"].is_null());
        let mc = crate::model::ModelConfig::from_json(cfg).unwrap();
        assert_eq!(mc.family, Family::Gemma3);
        assert_eq!(mc.windows, vec![Some(3)]);
        assert_eq!(mc.layer_rope(0).unwrap().theta, 10000.0);
        assert_eq!(mc.rope.unwrap().theta, 1e6);
        assert_eq!(mc.attn_scale, 0.5);
        let names: Vec<String> = g.hf_tensor_names().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "model.layers.0.self_attn.q_proj.weight",
                "model.layers.0.self_attn.q_norm.weight",
                "model.layers.0.pre_feedforward_layernorm.weight",
                "model.layers.0.post_attention_layernorm.weight",
                "model.layers.0.post_feedforward_layernorm.weight",
                "model.norm.weight"
            ]
        );
        // every norm is stored as 1 + w (1.5 in the file): the HF view is w
        for n in &names[1..] {
            let (_, w) = g.hf_tensor_f32(n).unwrap();
            assert!(w.iter().all(|&x| x == 0.5), "{n}: {w:?}");
        }
        // Q keeps its row order (no llama permutation): row r holds 1.5 + r
        let (_, q) = g.hf_tensor_f32("model.layers.0.self_attn.q_proj.weight").unwrap();
        assert_eq!(q.chunks(8).map(|r| r[0]).collect::<Vec<_>>(), (0..8).map(|r| 1.5 + r as f32).collect::<Vec<_>>());
        // keys a newer converter writes are read instead of the defaults
        let extra = [
            ("gemma3.attention.sliding_window", 4, 3u32.to_le_bytes().to_vec()),
            ("gemma3.attention.sliding_window_pattern", 4, 2u32.to_le_bytes().to_vec()),
            ("gemma3.rope.freq_base_swa", 6, 500f32.to_le_bytes().to_vec()),
            ("gemma3.final_logit_softcapping", 6, 30f32.to_le_bytes().to_vec()),
        ];
        let cfg = open_bytes(&family_file("gemma3", tensors, &extra)).unwrap().hf_config().unwrap();
        assert_eq!((cfg["sliding_window_pattern"].as_u64(), cfg["rope_local_base_freq"].as_f64()), (Some(2), Some(500.0)));
        assert_eq!(cfg["final_logit_softcapping"], 30.0);
    }

    #[test]
    fn qwen_families_keep_row_order_and_biases() {
        let tensors: &[(&str, &[u64])] =
            &[("blk.0.attn_q.weight", &[8, 8]), ("blk.0.attn_q.bias", &[8]), ("blk.0.attn_k_norm.weight", &[4])];
        for (arch, model_type) in [("qwen2", "qwen2"), ("qwen3", "qwen3")] {
            let g = open_bytes(&family_file(arch, tensors, &[])).unwrap();
            let cfg = g.hf_config().unwrap();
            assert_eq!(cfg["model_type"], model_type);
            let names: Vec<String> = g.hf_tensor_names().into_iter().map(|(n, _)| n).collect();
            assert_eq!(names[1], "model.layers.0.self_attn.q_proj.bias");
            assert_eq!(names[2], "model.layers.0.self_attn.k_norm.weight");
            let (_, q) = g.hf_tensor_f32(&names[0]).unwrap();
            assert_eq!(q.chunks(8).map(|r| r[0]).collect::<Vec<_>>(), (0..8).map(|r| 1.5 + r as f32).collect::<Vec<_>>());
            // norms are stored as they are outside Gemma
            assert!(g.hf_tensor_f32(&names[2]).unwrap().1.iter().all(|&x| x == 1.5));
            crate::model::ModelConfig::from_json(cfg).unwrap();
        }
    }

    #[test]
    fn an_unsupported_architecture_is_one_error_naming_it() {
        for arch in ["gpt2", "opt", "phi3"] {
            let g = open_bytes(&family_file(arch, &[("blk.0.attn_q.weight", &[8, 8])], &[])).unwrap();
            let e = g.hf_config().unwrap_err().to_string();
            assert!(e.contains(&format!("architecture '{arch}' is not supported")) && e.contains("gemma3"), "{e}");
            assert_eq!(e.lines().count(), 1);
        }
        // Llama-3 rope factors stored as a tensor without their parameters are refused, not
        // silently ignored
        let g = open_bytes(&family_file("llama", &[("rope_freqs.weight", &[2])], &[])).unwrap();
        let e = g.hf_config().unwrap_err().to_string();
        assert!(e.contains("rope_freqs.weight") && e.contains("fasp.rope.llama3"), "{e}");
    }
}
