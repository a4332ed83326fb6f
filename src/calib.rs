//! Calibration and evaluation token ids (FASP-SPEC §8, §10).
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

/// Reads a `.npy` of integer ids (any integer dtype), 1-D or 2-D.
pub fn read_npy(path: &Path) -> Result<Tokens> {
    let bytes = std::fs::read(path).map_err(|e| FaspError::io(path, e))?;
    let err = |m: String| FaspError::Calib(format!("{}: {m}", path.display()));
    let npy = npyz::NpyFile::new(&bytes[..]).map_err(|e| err(format!("not a valid .npy file: {e}")))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&s| s as usize).collect();
    if npy.order() != npyz::Order::C && shape.len() == 2 {
        return Err(err("Fortran-ordered arrays are not supported; save with C order".into()));
    }
    let type_str = npy.dtype().descr();
    let vals: Vec<i64> = match npy.dtype() {
        npyz::DType::Plain(ts) => match (ts.type_char(), ts.size_field()) {
            (npyz::TypeChar::Int, 8) => npy.into_vec::<i64>().map_err(|e| err(e.to_string()))?,
            (npyz::TypeChar::Int, 4) => npy.into_vec::<i32>().map_err(|e| err(e.to_string()))?.into_iter().map(i64::from).collect(),
            (npyz::TypeChar::Int, 2) => npy.into_vec::<i16>().map_err(|e| err(e.to_string()))?.into_iter().map(i64::from).collect(),
            (npyz::TypeChar::Uint, 4) => npy.into_vec::<u32>().map_err(|e| err(e.to_string()))?.into_iter().map(i64::from).collect(),
            (npyz::TypeChar::Uint, 2) => npy.into_vec::<u16>().map_err(|e| err(e.to_string()))?.into_iter().map(i64::from).collect(),
            (npyz::TypeChar::Uint, 8) => {
                npy.into_vec::<u64>().map_err(|e| err(e.to_string()))?.into_iter().map(|v| i64::try_from(v).unwrap_or(-1)).collect()
            }
            _ => return Err(err(format!("dtype {type_str:?} is not an integer type"))),
        },
        _ => return Err(err(format!("dtype {type_str:?} is not an integer type"))),
    };
    if vals.is_empty() {
        return Err(err("contains no token ids".into()));
    }
    if let Some(v) = vals.iter().find(|&&v| v < 0 || v > u32::MAX as i64) {
        return Err(err(format!("token id {v} is out of range")));
    }
    let ids: Vec<u32> = vals.into_iter().map(|v| v as u32).collect();
    match shape.as_slice() {
        [_] => Ok(Tokens::Stream(ids)),
        [n, l] => Ok(Tokens::Windows { ids, n: *n, seqlen: *l }),
        _ => Err(err(format!("expected a 1-D or 2-D array, got shape {shape:?}"))),
    }
}

/// Tokenizes a text file as one stream.
pub fn tokenize_file(path: &Path, tok: &tokenizers::Tokenizer) -> Result<Vec<u32>> {
    let text = std::fs::read_to_string(path).map_err(|e| FaspError::io(path, e))?;
    if text.trim().is_empty() {
        return Err(FaspError::Calib(format!("{}: the file is empty", path.display())));
    }
    let enc = tok.encode(text.as_str(), false).map_err(|e| FaspError::Calib(format!("{}: tokenization failed: {e}", path.display())))?;
    Ok(enc.get_ids().to_vec())
}

/// Token ids of a text or `.npy` file.
pub fn load_tokens(path: &Path, tok: Option<&tokenizers::Tokenizer>) -> Result<Tokens> {
    if !path.exists() {
        return Err(FaspError::Calib(format!("{}: no such file", path.display())));
    }
    if is_npy(path) {
        return read_npy(path);
    }
    let tok = tok.ok_or_else(|| {
        FaspError::Calib(format!("{}: text needs the model's tokenizer.json, and the model has none (pass .npy token ids)", path.display()))
    })?;
    Ok(Tokens::Stream(tokenize_file(path, tok)?))
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
    let (ids, n, l, kind, stream_len) = match load_tokens(path, tok)? {
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
    if let Some(&bad) = ids.iter().find(|&&t| t as usize >= vocab) {
        return Err(FaspError::Calib(format!("{}: token id {bad} is outside the vocabulary ({vocab})", path.display())));
    }
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
}
