//! Shared helpers for the integration tests: fixture paths, reference tensors, a prune job.
#![allow(dead_code)]

use fasp_engine::job::{Device, PruneJob};
use fasp_engine::prune::PruneConfig;
use std::path::{Path, PathBuf};

pub const MODELS: &[&str] = &["opt-tiny", "llama-mha", "llama-gqa"];

/// `tests/fixtures/NAME` of this checkout, or of `$FASP_REPO_ROOT` when set (test binaries run
/// away from the tree they were built in, e.g. by scripts/gpu-check.sh).
pub fn fixture(name: &str) -> PathBuf {
    let root = std::env::var_os("FASP_REPO_ROOT").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf());
    root.join("tests/fixtures").join(name)
}

/// A tensor of `reference.safetensors` as f32 (integers converted) with its shape.
pub fn reference(model: &str, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(fixture(model).join("reference.safetensors")).expect("reference.safetensors");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid reference file");
    let t = st.tensor(name).unwrap_or_else(|_| panic!("{model}: reference tensor {name}"));
    let data: Vec<f32> = match t.dtype() {
        safetensors::Dtype::F32 => t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
        safetensors::Dtype::I64 => t.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f32).collect(),
        d => panic!("unexpected dtype {d:?}"),
    };
    (t.shape().to_vec(), data)
}

pub fn reference_ids(model: &str, name: &str) -> (Vec<usize>, Vec<u32>) {
    let (s, d) = reference(model, name);
    (s, d.into_iter().map(|v| v as u32).collect())
}

/// `max|a − b| / max|b|`.
pub fn rel_max_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let num = a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max);
    let den = b.iter().map(|y| y.abs() as f64).fold(0.0, f64::max);
    num / den.max(1e-30)
}

pub fn job(model: &str, out: &Path, sparsity: f64) -> PruneJob {
    PruneJob {
        model: fixture(model),
        out: out.to_path_buf(),
        calib: fixture(model).join("calib_ids.npy"),
        nsamples: None,
        seqlen: None,
        calib_seed: 0,
        prune: PruneConfig { sparsity, ..PruneConfig::default() },
        device: Device::Cpu,
        dtype: None,
        compact: false,
        force: false,
        progress: false,
        eval: None,
        resume: false,
    }
}

pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("readable json")).expect("valid json")
}
