//! GGUF (v3) writer: metadata, tensors in F32, F16, BF16 or Q8_0, written atomically.
//!
//! Tensor data is appended to a spool file as it arrives (so a large model is never held in
//! memory); `finish` writes the header (metadata and tensor infos, ne0 first) into a temporary
//! file, appends the spool aligned to `general.alignment` (32), and renames the file into place.
//! Both temporary files live beside the output ([`GgufWriter::create`]) or in a work directory
//! on the same file system ([`GgufWriter::create_in`]: the prune job's temporary directory, which
//! also holds its checkpoint and is removed with it). On any error, or if the writer is dropped
//! unfinished, both temporary files are removed and nothing is left behind.
//!
//! The Q8_0 quantizer is ggml's reference one (and the `gguf` Python package's): per block of
//! 32 weights, `d = max|x| / 127`, `q = round_half_away(x / d)` (computed as `x * (1/d)` in f32),
//! `d` stored as f16.

use crate::error::{FaspError, Result};
use crate::gguf::GgufValue;
use half::{bf16, f16};
use std::fs::File;
use std::io::{BufWriter, Seek, Write};
use std::path::{Path, PathBuf};

/// Alignment of the tensor data section and of every tensor in it.
pub const ALIGNMENT: u64 = 32;

/// The tensor types this writer produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgufType {
    F32,
    F16,
    BF16,
    Q8_0,
}

impl GgufType {
    /// The ggml type id.
    pub fn id(self) -> u32 {
        match self {
            GgufType::F32 => 0,
            GgufType::F16 => 1,
            GgufType::BF16 => 30,
            GgufType::Q8_0 => 8,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            GgufType::F32 => "f32",
            GgufType::F16 => "f16",
            GgufType::BF16 => "bf16",
            GgufType::Q8_0 => "q8_0",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "f32" => GgufType::F32,
            "f16" => GgufType::F16,
            "bf16" => GgufType::BF16,
            "q8_0" => GgufType::Q8_0,
            _ => return None,
        })
    }
    /// Elements per block.
    pub fn block_elems(self) -> usize {
        if self == GgufType::Q8_0 {
            32
        } else {
            1
        }
    }
    /// llama.cpp's `general.file_type` (LLAMA_FTYPE_*) for a model mostly of this type.
    pub fn file_type(self) -> u32 {
        match self {
            GgufType::F32 => 0,
            GgufType::F16 => 1,
            GgufType::Q8_0 => 7,
            GgufType::BF16 => 32,
        }
    }
}

/// Encodes `x` (a whole number of rows) as `ty`. Q8_0 needs `x.len()` to be a multiple of 32.
pub fn encode(x: &[f32], ty: GgufType) -> Vec<u8> {
    match ty {
        GgufType::F32 => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgufType::F16 => x.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect(),
        GgufType::BF16 => x.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect(),
        GgufType::Q8_0 => quantize_q8_0(x),
    }
}

/// ggml's reference Q8_0 quantizer: blocks of 32, `f16 d, i8 q[32]`.
pub fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
    assert!(x.len().is_multiple_of(32), "Q8_0 needs a multiple of 32 elements");
    let mut out = Vec::with_capacity(x.len() / 32 * 34);
    for b in x.chunks_exact(32) {
        let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        // f32::round rounds half away from zero, as ggml's roundf and gguf-py's np_roundf
        out.extend(b.iter().map(|&v| ((v * id).round() as i8) as u8));
    }
    out
}

fn value_type(v: &GgufValue) -> u32 {
    match v {
        GgufValue::U8(_) => 0,
        GgufValue::I8(_) => 1,
        GgufValue::U16(_) => 2,
        GgufValue::I16(_) => 3,
        GgufValue::U32(_) => 4,
        GgufValue::I32(_) => 5,
        GgufValue::F32(_) => 6,
        GgufValue::Bool(_) => 7,
        GgufValue::String(_) => 8,
        GgufValue::Array(_) => 9,
        GgufValue::U64(_) => 10,
        GgufValue::I64(_) => 11,
        GgufValue::F64(_) => 12,
    }
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn put_value(buf: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => buf.push(*x),
        GgufValue::I8(x) => buf.push(*x as u8),
        GgufValue::U16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => buf.push(*x as u8),
        GgufValue::String(s) => put_str(buf, s),
        GgufValue::Array(a) => {
            // an empty array is written as an array of u32
            let et = a.first().map_or(4, value_type);
            buf.extend_from_slice(&et.to_le_bytes());
            buf.extend_from_slice(&(a.len() as u64).to_le_bytes());
            for x in a {
                put_value(buf, x);
            }
        }
        GgufValue::U64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => buf.extend_from_slice(&x.to_le_bytes()),
    }
}

struct TensorEntry {
    name: String,
    /// GGUF order, ne0 first.
    dims: Vec<u64>,
    ty: GgufType,
    offset: u64,
}

/// Removes a file on drop unless disarmed.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn out_err(path: &Path, msg: impl Into<String>) -> FaspError {
    FaspError::Output { path: path.into(), msg: msg.into() }
}

/// Writes one GGUF file atomically (see the module docs).
pub struct GgufWriter {
    out: PathBuf,
    /// Where the assembled file is written before the rename.
    partial: PathBuf,
    meta: Vec<(String, GgufValue)>,
    tensors: Vec<TensorEntry>,
    spool: BufWriter<File>,
    spool_file: TempFile,
    spool_len: u64,
}

impl GgufWriter {
    /// Starts a file that will be renamed to `out` by `finish`. The spool lives beside `out`.
    pub fn create(out: &Path) -> Result<Self> {
        let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !dir.is_dir() {
            return Err(out_err(out, format!("parent directory {} does not exist", dir.display())));
        }
        let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let pid = std::process::id();
        Self::with_paths(out, dir.join(format!(".{name}.tmp-{pid}-data")), dir.join(format!(".{name}.tmp-{pid}")))
    }

    /// As [`GgufWriter::create`], with both temporary files in `work_dir`, which must be on the
    /// same file system as `out` (a directory beside it).
    pub fn create_in(out: &Path, work_dir: &Path) -> Result<Self> {
        if !work_dir.is_dir() {
            return Err(out_err(out, format!("work directory {} does not exist", work_dir.display())));
        }
        Self::with_paths(out, work_dir.join("tensors.spool"), work_dir.join("model.gguf.partial"))
    }

    fn with_paths(out: &Path, spool_path: PathBuf, partial: PathBuf) -> Result<Self> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&spool_path)
            .map_err(|e| FaspError::io(&spool_path, e))?;
        Ok(GgufWriter {
            out: out.to_path_buf(),
            partial,
            meta: Vec::new(),
            tensors: Vec::new(),
            spool: BufWriter::with_capacity(1 << 20, f),
            spool_file: TempFile { path: spool_path, keep: false },
            spool_len: 0,
        })
    }

    /// Adds (or replaces) a metadata entry.
    pub fn meta(&mut self, key: &str, v: GgufValue) {
        match self.meta.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = v,
            None => self.meta.push((key.to_string(), v)),
        }
    }

    /// The path the file is renamed to.
    pub fn out(&self) -> &Path {
        &self.out
    }

    /// The metadata entries so far, in order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.meta
    }

    /// Appends a tensor given row-major (`shape` is HF order, `[out, in]` for a matrix).
    pub fn tensor(&mut self, name: &str, shape: &[usize], data: &[f32], ty: GgufType) -> Result<()> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(out_err(&self.out, format!("tensor {name}: shape {shape:?} but {} values", data.len())));
        }
        let ne0 = shape.last().copied().unwrap_or(1);
        if !ne0.is_multiple_of(ty.block_elems()) {
            return Err(out_err(
                &self.out,
                format!("tensor {name}: row length {ne0} is not a multiple of the {} block size {}", ty.name(), ty.block_elems()),
            ));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(out_err(&self.out, format!("tensor {name} written twice")));
        }
        let bytes = encode(data, ty);
        let pad = self.spool_len.next_multiple_of(ALIGNMENT) - self.spool_len;
        let io = |e| FaspError::io(&self.spool_file.path, e);
        self.spool.write_all(&vec![0u8; pad as usize]).map_err(io)?;
        let offset = self.spool_len + pad;
        self.spool.write_all(&bytes).map_err(io)?;
        self.spool_len = offset + bytes.len() as u64;
        self.tensors.push(TensorEntry { name: name.to_string(), dims: shape.iter().rev().map(|&d| d as u64).collect(), ty, offset });
        Ok(())
    }

    /// The header bytes: magic, version 3, counts, metadata, tensor infos, padded to the alignment.
    fn header(&self) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(b"GGUF");
        h.extend_from_slice(&3u32.to_le_bytes());
        h.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        h.extend_from_slice(&(self.meta.len() as u64).to_le_bytes());
        for (k, v) in &self.meta {
            put_str(&mut h, k);
            h.extend_from_slice(&value_type(v).to_le_bytes());
            put_value(&mut h, v);
        }
        for t in &self.tensors {
            put_str(&mut h, &t.name);
            h.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                h.extend_from_slice(&d.to_le_bytes());
            }
            h.extend_from_slice(&t.ty.id().to_le_bytes());
            h.extend_from_slice(&t.offset.to_le_bytes());
        }
        h.resize((h.len() as u64).next_multiple_of(ALIGNMENT) as usize, 0);
        h
    }

    /// Writes the file beside `out` and renames it into place (replacing an old `out`).
    /// Returns the file size in bytes.
    pub fn finish(mut self) -> Result<u64> {
        self.meta("general.alignment", GgufValue::U32(ALIGNMENT as u32));
        let sp = self.spool_file.path.clone();
        self.spool.flush().map_err(|e| FaspError::io(&sp, e))?;
        let header = self.header();
        let tmp = TempFile { path: self.partial.clone(), keep: false };
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |e| FaspError::io(p, e)
        };
        let mut f = File::create(&tmp.path).map_err(io(&tmp.path))?;
        f.write_all(&header).map_err(io(&tmp.path))?;
        let mut spool = self.spool.into_inner().map_err(|e| FaspError::io(&sp, e.into_error()))?;
        spool.rewind().map_err(io(&sp))?;
        let copied = std::io::copy(&mut spool, &mut f).map_err(io(&tmp.path))?;
        if copied != self.spool_len {
            return Err(out_err(&self.out, format!("copied {copied} of {} tensor bytes", self.spool_len)));
        }
        f.sync_all().map_err(io(&tmp.path))?;
        drop(f);
        std::fs::rename(&tmp.path, &self.out).map_err(io(&self.out))?;
        let mut tmp = tmp;
        tmp.keep = true;
        Ok(header.len() as u64 + self.spool_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufFile;

    #[test]
    fn q8_0_matches_the_reference_rule() {
        // block 0: max 2.54 -> d = 0.02; block 1: all zero -> d = 0, q = 0
        let mut x: Vec<f32> = (0..32).map(|i| (i as f32 - 16.0) * 0.1).collect();
        x[5] = 2.54;
        x.extend(std::iter::repeat_n(0.0, 32));
        let b = quantize_q8_0(&x);
        assert_eq!(b.len(), 68);
        let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
        assert_eq!(d, f16::from_f32(2.54 / 127.0).to_f32());
        assert_eq!(b[2 + 5] as i8, 127);
        let id = 1.0 / (2.54f32 / 127.0);
        for (j, &v) in x[..32].iter().enumerate() {
            assert_eq!(b[2 + j] as i8, (v * id).round() as i8, "element {j}");
        }
        assert!(b[34..].iter().all(|&q| q == 0));
    }

    #[test]
    fn round_trip_through_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m.gguf");
        let a: Vec<f32> = (0..64 * 3).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
        let v: Vec<f32> = vec![1.5, -2.0, 0.25];
        let mut w = GgufWriter::create(&out).unwrap();
        w.meta("general.architecture", GgufValue::String("llama".into()));
        w.meta("x.list", GgufValue::Array(vec![GgufValue::String("a".into()), GgufValue::String("bc".into())]));
        w.meta("x.f", GgufValue::F32(1e-5));
        w.tensor("t32", &[3, 64], &a, GgufType::F32).unwrap();
        w.tensor("t16", &[3, 64], &a, GgufType::F16).unwrap();
        w.tensor("tbf", &[3, 64], &a, GgufType::BF16).unwrap();
        w.tensor("tq8", &[3, 64], &a, GgufType::Q8_0).unwrap();
        w.tensor("vec", &[3], &v, GgufType::F32).unwrap();
        assert!(w.tensor("bad", &[3], &v, GgufType::Q8_0).unwrap_err().to_string().contains("block size"));
        let size = w.finish().unwrap();
        assert_eq!(std::fs::metadata(&out).unwrap().len(), size);
        // only the finished file remains
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        let g = GgufFile::open(&out).unwrap();
        assert_eq!(g.metadata("general.architecture").unwrap().as_str(), Some("llama"));
        assert_eq!(g.metadata("x.f").unwrap().as_f64(), Some(1e-5));
        assert_eq!(g.metadata("x.list").unwrap().as_array().unwrap().len(), 2);
        assert_eq!(g.metadata("general.alignment").unwrap().as_u64(), Some(32));
        let (s, d) = g.tensor_f32("t32").unwrap();
        assert_eq!((s, d.clone()), (vec![3, 64], a.clone()));
        assert_eq!(g.tensor_info("t32").unwrap().dims, vec![64, 3]);
        let (_, d) = g.tensor_f32("t16").unwrap();
        assert!(d.iter().zip(&a).all(|(x, y)| *x == f16::from_f32(*y).to_f32()));
        let (_, d) = g.tensor_f32("tbf").unwrap();
        assert!(d.iter().zip(&a).all(|(x, y)| *x == bf16::from_f32(*y).to_f32()));
        let (_, d) = g.tensor_f32("tq8").unwrap();
        for (blk, (xs, ys)) in d.chunks(32).zip(a.chunks(32)).enumerate() {
            let amax = ys.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (x, y) in xs.iter().zip(ys) {
                assert!((x - y).abs() <= amax / 127.0 * 0.5 + 1e-3 * amax, "block {blk}: {x} vs {y}");
            }
        }
        assert_eq!(g.tensor_f32("vec").unwrap().1, v);
    }

    #[test]
    fn unfinished_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m.gguf");
        {
            let mut w = GgufWriter::create(&out).unwrap();
            w.tensor("t", &[2], &[1.0, 2.0], GgufType::F32).unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let e = GgufWriter::create(&dir.path().join("no/such/m.gguf")).err().unwrap().to_string();
        assert!(e.contains("does not exist"), "{e}");
    }
}
