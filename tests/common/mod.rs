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
        format: Default::default(),
    }
}

pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("readable json")).expect("valid json")
}

fn kept_units(v: &serde_json::Value) -> Vec<usize> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

/// FASP at s = 0.25 on fixture `name` agrees with the independent torch reference of
/// scripts/make_fixtures.py: identical kept sets and λ per layer, layer 0's restored W2s
/// (≤ 1e-4 relative) and the pruned model's logits (≤ 1e-4).
pub fn assert_matches_fasp_reference(name: &str) {
    use fasp_engine::model::Model;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pruned");
    fasp_engine::job::run_prune(&job(name, &out, 0.25)).unwrap();
    let rec = read_json(&out.join("fasp.json"));
    let refj = read_json(&fixture(name).join("fasp_reference.json"));
    let layers = rec["layers"].as_array().unwrap();
    assert_eq!(layers.len(), refj["layers"].as_array().unwrap().len());
    for (l, (got, want)) in layers.iter().zip(refj["layers"].as_array().unwrap()).enumerate() {
        assert_eq!(got["layer"], l);
        assert_eq!(kept_units(&got["attn_kept_units"]), kept_units(&want["attn_kept_units"]), "{name} layer {l} attention");
        assert_eq!(kept_units(&got["mlp_kept_units"]), kept_units(&want["mlp_kept_units"]), "{name} layer {l} mlp");
        for (pair, key) in [("attn", "attn_lambda"), ("mlp", "mlp_lambda")] {
            let (a, b) = (got[pair]["lambda"].as_f64().unwrap(), want[key].as_f64().unwrap());
            assert!((a - b).abs() <= 1e-4 * b.abs(), "{name} layer {l} {pair} lambda {a} vs {b}");
        }
    }
    // restored weights of layer 0 and the pruned model's logits
    let pruned = Model::open(&out).unwrap();
    let lw = pruned.layer(0).unwrap();
    let (_, o_ref) = reference(name, "l0_o_proj_restored");
    let e = rel_max_err(&lw.o.w.data, &o_ref);
    assert!(e <= 1e-4, "{name}: layer-0 o_proj restored differs by {e:.2e}");
    let (_, d_ref) = reference(name, "l0_down_restored");
    let e = rel_max_err(&lw.down.w.data, &d_ref);
    assert!(e <= 1e-4, "{name}: layer-0 fc2/down restored differs by {e:.2e}");
    let (shape, ids) = reference_ids(name, "input_ids");
    let got = fasp_engine::eval::logits(&pruned, &ids, shape[1]).unwrap();
    let (_, want) = reference(name, "fasp_logits");
    let e = rel_max_err(&got.data, &want);
    println!("{name}: pruned logits vs torch reference: {e:.2e}");
    assert!(e <= 1e-4, "{name}: pruned logits differ from the reference by {e:.2e}");
}
