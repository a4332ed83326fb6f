//! Calibration and evaluation token ids (docs/spec.md §8, §10).
//!
//! * Text is tokenized with the model's `tokenizer.json` as one stream, without special tokens.
//! * `.npy` integer ids: a 2-D `[N, L]` array is used as it is (the windows); a 1-D array is a
//!   token stream to sample from.
//!
//! **Sampler.** From a stream of `T` tokens, window `i` starts at `r_i`, drawn uniformly from
//! `0 ..= T - L` by a ChaCha8 generator seeded with `--seed` (independent draws, as in the
//! GPTQ/SparseGPT/FASP calibration loaders; windows may overlap).

use crate::error::{FaspError, Result};
use rand::{Rng, SeedableRng};
use std::path::Path;

/// Calibration windows, flattened `[n, seqlen]`.
#[derive(Clone, Debug)]
pub struct Windows {
    pub ids: Vec<u32>,
    pub n: usize,
    pub seqlen: usize,
    /// How they were made, for `fasp.json`.
    pub source: serde_json::Value,
}

/// Token ids of a file: `.npy` → (ids, shape); text → one stream.
pub enum Tokens {
    Stream(Vec<u32>),
    Windows { ids: Vec<u32>, n: usize, seqlen: usize },
}

pub fn is_npy(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("npy"))
}

/// What a token file is for; its errors are labelled with it (`calibration: ...` or `evaluation: ...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Calibration,
    Evaluation,
}

impl Role {
    /// An error about the file `path`, labelled with this role.
    pub fn err(self, path: &Path, msg: impl std::fmt::Display) -> FaspError {
        let m = format!("{}: {msg}", path.display());
        match self {
            Role::Calibration => FaspError::Calib(m),
            Role::Evaluation => FaspError::Eval(m),
        }
    }
}

/// The `.npy` layout as far as it can be checked before the array is parsed: the offset of the
/// data and the element count of the shape. `Ok(None)` when the bytes are not a `.npy` of a
/// version this knows (npyz then says what is wrong). The shape is read here, with checked
/// arithmetic, because npyz multiplies its dimensions without an overflow check.
fn npy_layout(bytes: &[u8]) -> std::result::Result<Option<(usize, Vec<u64>, u64)>, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Ok(None);
    }
    let (len_bytes, start) = match bytes[6] {
        1 => (2, 10),
        2 | 3 => (4, 12),
        _ => return Ok(None),
    };
    if bytes.len() < start {
        return Err(format!("truncated .npy: the header length needs {start} bytes, the file has {}", bytes.len()));
    }
    let hlen = bytes[8..8 + len_bytes].iter().rev().fold(0usize, |a, &b| (a << 8) | b as usize);
    let data = start + hlen;
    if bytes.len() < data {
        return Err(format!("truncated .npy: the header needs {data} bytes, the file has {}", bytes.len()));
    }
    let header = String::from_utf8_lossy(&bytes[start..data]);
    // npyz's header parser backtracks exponentially on deeply nested literals (a fuzzed 187-byte
    // header of repeated '{' took over 10 s); a header of integer ids nests two deep: { ( ) }
    let mut depth = (0usize, 0usize);
    for b in header.bytes() {
        match b {
            b'{' | b'[' | b'(' => depth = (depth.0 + 1, depth.1.max(depth.0 + 1)),
            b'}' | b']' | b')' => depth.0 = depth.0.saturating_sub(1),
            _ => {}
        }
    }
    if depth.1 > 3 {
        return Err(format!("the header's brackets nest {} deep; a .npy of integer ids nests 2 deep", depth.1));
    }
    let Some(key) = header.find("'shape'").or_else(|| header.find("\"shape\"")) else { return Ok(None) };
    let rest = &header[key + 7..];
    let (Some(open), Some(close)) = (rest.find('('), rest.find(')')) else { return Ok(None) };
    if close < open {
        return Ok(None);
    }
    let tuple = &rest[open + 1..close];
    let bad = || format!("the header's shape ({tuple}) is not a tuple of non-negative decimal integers");
    let shape = tuple
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| if d.bytes().all(|b| b.is_ascii_digit()) { d.parse::<u64>().map_err(|_| bad()) } else { Err(bad()) })
        .collect::<std::result::Result<Vec<u64>, String>>()?;
    let count = shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("the header's shape {shape:?} has more elements than fit in 64 bits"))?;
    Ok(Some((data, shape, count)))
}

/// Token ids from integers of any width; a value that is no `u32` is an error naming it.
fn to_ids<T: Copy + TryInto<u32> + std::fmt::Display>(vals: Vec<T>) -> std::result::Result<Vec<u32>, String> {
    let mut ids = Vec::with_capacity(vals.len());
    for v in vals {
        ids.push(v.try_into().map_err(|_| format!("token id {v} is out of range"))?);
    }
    Ok(ids)
}

/// Reads a `.npy` of integer ids (any integer dtype), 1-D or 2-D. Sizes come from the header and
/// are checked against the file before anything is allocated.
pub fn read_npy(path: &Path, role: Role) -> Result<Tokens> {
    let bytes = std::fs::read(path).map_err(|e| FaspError::io(path, e))?;
    let err = |m: String| role.err(path, m);
    let layout = npy_layout(&bytes).map_err(err)?;
    let npy = npyz::NpyFile::new(&bytes[..]).map_err(|e| err(format!("not a valid .npy file: {e}")))?;
    let shape: Vec<u64> = npy.shape().to_vec();
    if shape.is_empty() || shape.len() > 2 {
        return Err(err(format!("expected a 1-D or 2-D array, got shape {shape:?}")));
    }
    if npy.order() != npyz::Order::C && shape.len() == 2 {
        return Err(err("Fortran-ordered arrays are not supported; save with C order".into()));
    }
    let type_str = npy.dtype().descr();
    let not_int = || err(format!("dtype {type_str:?} is not an integer type"));
    let npyz::DType::Plain(ts) = npy.dtype() else { return Err(not_int()) };
    if !matches!(ts.type_char(), npyz::TypeChar::Int | npyz::TypeChar::Uint) {
        return Err(not_int());
    }
    if let Some((data, _, count)) = layout {
        let need = count.checked_mul(ts.size_field());
        let have = (bytes.len() - data) as u64;
        if need.is_none_or(|n| n > have) {
            return Err(err(format!(
                "truncated .npy: shape {shape:?} of {ts} needs {} bytes of data after the {data}-byte header, but the file has {have}",
                need.map_or("more than 2^64".to_string(), |n| n.to_string())
            )));
        }
    }
    let to = |e: std::io::Error| err(e.to_string());
    let ids: Vec<u32> = match (ts.type_char(), ts.size_field()) {
        (npyz::TypeChar::Int, 8) => to_ids(npy.into_vec::<i64>().map_err(to)?),
        (npyz::TypeChar::Int, 4) => to_ids(npy.into_vec::<i32>().map_err(to)?),
        (npyz::TypeChar::Int, 2) => to_ids(npy.into_vec::<i16>().map_err(to)?),
        (npyz::TypeChar::Int, 1) => to_ids(npy.into_vec::<i8>().map_err(to)?),
        (npyz::TypeChar::Uint, 8) => to_ids(npy.into_vec::<u64>().map_err(to)?),
        (npyz::TypeChar::Uint, 4) => to_ids(npy.into_vec::<u32>().map_err(to)?),
        (npyz::TypeChar::Uint, 2) => to_ids(npy.into_vec::<u16>().map_err(to)?),
        (npyz::TypeChar::Uint, 1) => to_ids(npy.into_vec::<u8>().map_err(to)?),
        _ => return Err(not_int()),
    }
    .map_err(err)?;
    if ids.is_empty() {
        return Err(err("contains no token ids".into()));
    }
    match shape.as_slice() {
        [_] => Ok(Tokens::Stream(ids)),
        [n, l] => Ok(Tokens::Windows { ids, n: *n as usize, seqlen: *l as usize }),
        _ => unreachable!("the rank was checked above"),
    }
}

/// Tokenizes a text file as one stream.
pub fn tokenize_file(path: &Path, tok: &tokenizers::Tokenizer, role: Role) -> Result<Vec<u32>> {
    let text = std::fs::read_to_string(path).map_err(|e| FaspError::io(path, e))?;
    if text.trim().is_empty() {
        return Err(role.err(path, "the file is empty"));
    }
    // encode_fast: the same ids without character offsets (5x faster on the 4.9 MB calibration text)
    let enc = tok.encode_fast(text.as_str(), false).map_err(|e| role.err(path, format!("tokenization failed: {e}")))?;
    let ids = enc.get_ids().to_vec();
    drop((enc, text));
    release_freed_memory();
    Ok(ids)
}

/// Hands memory freed by the tokenizer back to the OS. The encoding of a long text takes about
/// 100 bytes per byte of text (490 MB for the 4.9 MB calibration text); glibc keeps that in its
/// arenas after it is freed, so without a trim it stays in the process's resident set for the
/// whole prune.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Token ids of a text or `.npy` file.
pub fn load_tokens(path: &Path, tok: Option<&tokenizers::Tokenizer>, role: Role) -> Result<Tokens> {
    if !path.exists() {
        return Err(role.err(path, "no such file"));
    }
    if path.is_dir() {
        return Err(role.err(path, "is a directory; expected a text file or a .npy of token ids"));
    }
    if is_npy(path) {
        return read_npy(path, role);
    }
    let tok = tok.ok_or_else(|| role.err(path, "text needs the model's tokenizer.json, and the model has none (pass .npy token ids)"))?;
    Ok(Tokens::Stream(tokenize_file(path, tok, role)?))
}

/// Every id is below the vocabulary size (an id past it would index past the embedding).
pub fn check_vocab(ids: &[u32], vocab: usize, path: &Path, role: Role) -> Result<()> {
    match ids.iter().find(|&&t| t as usize >= vocab) {
        Some(&bad) => Err(role.err(path, format!("token id {bad} is outside the vocabulary ({vocab})"))),
        None => Ok(()),
    }
}

/// `n` windows of `seqlen` drawn from a stream (see the module doc for the sampler).
pub fn sample_windows(stream: &[u32], n: usize, seqlen: usize, seed: u64) -> Result<Vec<u32>> {
    if n == 0 || seqlen < 2 {
        return Err(FaspError::Calib(format!("need at least one window of at least 2 tokens (nsamples {n}, seqlen {seqlen})")));
    }
    if stream.len() < seqlen {
        return Err(FaspError::Calib(format!("the text has {} tokens, fewer than one window of {seqlen}", stream.len())));
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut ids = Vec::with_capacity(n * seqlen);
    for _ in 0..n {
        let start = rng.random_range(0..=stream.len() - seqlen);
        ids.extend_from_slice(&stream[start..start + seqlen]);
    }
    Ok(ids)
}

/// Calibration windows from `--calib` with `--nsamples`, `--seqlen`, `--seed`. A 2-D `.npy` is
/// used as it is; `nsamples`/`seqlen`, when given, must then agree with its shape. A text or 1-D
/// stream gives the paper's 128 windows of 2048 tokens by default.
pub fn calibration(
    path: &Path,
    tok: Option<&tokenizers::Tokenizer>,
    nsamples: Option<usize>,
    seqlen: Option<usize>,
    seed: u64,
    vocab: usize,
) -> Result<Windows> {
    calibration_with_defaults(path, tok, nsamples, seqlen, crate::plan::PAPER_DEFAULT, seed, vocab)
}

/// [`calibration`] with `defaults` (windows, tokens per window) for a text or 1-D stream.
pub fn calibration_with_defaults(
    path: &Path,
    tok: Option<&tokenizers::Tokenizer>,
    nsamples: Option<usize>,
    seqlen: Option<usize>,
    defaults: (usize, usize),
    seed: u64,
    vocab: usize,
) -> Result<Windows> {
    let (ids, n, l, kind, stream_len) = match load_tokens(path, tok, Role::Calibration)? {
        Tokens::Windows { ids, n, seqlen: l } => {
            if let Some(want) = seqlen.filter(|&s| s != l) {
                return Err(FaspError::Calib(format!("{}: windows have length {l}, but --seqlen is {want}", path.display())));
            }
            if let Some(want) = nsamples.filter(|&s| s != n) {
                return Err(FaspError::Calib(format!("{}: has {n} windows, but --nsamples is {want}", path.display())));
            }
            if l < 2 || n == 0 {
                return Err(FaspError::Calib(format!("{}: windows of shape [{n}, {l}] are too small", path.display())));
            }
            (ids, n, l, "npy-windows", None)
        }
        Tokens::Stream(stream) => {
            let (n, l) = (nsamples.unwrap_or(defaults.0), seqlen.unwrap_or(defaults.1));
            let kind = if is_npy(path) { "npy-stream" } else { "text" };
            (sample_windows(&stream, n, l, seed)?, n, l, kind, Some(stream.len()))
        }
    };
    check_vocab(&ids, vocab, path, Role::Calibration)?;
    let source = serde_json::json!({
        "path": path.display().to_string(),
        "kind": kind,
        "stream_tokens": stream_len,
        "nsamples": n,
        "seqlen": l,
        "seed": seed,
        "sampler": "chacha8-uniform-start",
    });
    Ok(Windows { ids, n, seqlen: l, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn sampler_is_seeded_and_in_range() {
        let stream: Vec<u32> = (0..1000).collect();
        let a = sample_windows(&stream, 8, 16, 3).unwrap();
        assert_eq!(a, sample_windows(&stream, 8, 16, 3).unwrap());
        assert_ne!(a, sample_windows(&stream, 8, 16, 4).unwrap());
        for w in a.chunks(16) {
            assert!(w.windows(2).all(|p| p[1] == p[0] + 1), "windows are contiguous slices");
        }
        assert!(sample_windows(&stream[..10], 1, 16, 0).is_err());
    }

    fn npy(shape: &str, data: usize) -> Vec<u8> {
        let dict = format!("{{'descr': '<i8', 'fortran_order': False, 'shape': {shape}, }}\n");
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        b.extend_from_slice(dict.as_bytes());
        b.resize(b.len() + data, 0);
        b
    }

    #[test]
    fn npy_header_nested_deeply_is_refused_before_npyz_parses_it() {
        // the shape of a header the fuzzer found (npyz took over 10 s on it)
        let b = npy(&format!("(2, 2), 'x': {}0{}", "{".repeat(60), "}".repeat(60)), 32);
        let e = npy_layout(&b).unwrap_err();
        assert!(e.contains("nest 61 deep"), "{e}");
        assert!(npy_layout(&npy("(2, 2)", 32)).unwrap().is_some(), "a plain header passes");
    }

    #[test]
    fn npy_sizes_are_checked_before_npyz_multiplies_them() {
        let b = npy("(3, 4)", 96);
        let (data, shape, count) = npy_layout(&b).unwrap().unwrap();
        assert_eq!((data, shape, count), (b.len() - 96, vec![3, 4], 12));
        assert_eq!(npy_layout(&npy("(5,)", 0)).unwrap().unwrap().2, 5);
        // (2^63 + 1) * 2 wraps to 2 in u64 arithmetic
        assert!(npy_layout(&npy("(9223372036854775809, 2)", 16)).unwrap_err().contains("more elements than fit"));
        assert!(npy_layout(&npy("(-1, 2)", 16)).unwrap_err().contains("decimal integers"));
        let b = npy("(3, 4)", 0);
        assert!(npy_layout(&b[..20]).unwrap_err().contains("the header needs"));
        // not a .npy: left to npyz to describe
        assert!(npy_layout(b"hello, world").unwrap().is_none());
    }
}
