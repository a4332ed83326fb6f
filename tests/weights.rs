//! Checkpoint formats: a sharded safetensors index, and f16/bf16 tensors, load to the same model.

mod common;
use common::*;
use fasp_engine::job::run_prune;
use fasp_engine::model::{DType, Model};

#[test]
fn sharded_index_loads_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("llama-gqa");
    let dst = dir.path().join("sharded");
    std::fs::create_dir(&dst).unwrap();
    std::fs::copy(src.join("config.json"), dst.join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [("model-00001-of-00002.safetensors", a), ("model-00002-of-00002.safetensors", b)] {
        let views: Vec<_> = part.iter().map(|n| (n.clone(), st.tensor(n).unwrap())).collect();
        safetensors::serialize_to_file(views, None, &dst.join(file)).unwrap();
        for n in part {
            map.insert(n.clone(), file.into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dst.join("model.safetensors.index.json"), index.to_string()).unwrap();

    let m = Model::open(&dst).unwrap();
    assert!(m.src.describe().contains("2 shards"));
    let (shape, ids) = reference_ids("llama-gqa", "input_ids");
    let (_, want) = reference("llama-gqa", "logits");
    let got = fasp_engine::eval::logits(&m, &ids, shape[1]).unwrap();
    assert!(rel_max_err(&got.data, &want) <= 1e-5);
}

#[test]
fn half_precision_outputs_load_and_stay_close() {
    for dtype in [DType::BF16, DType::F16] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("half");
        let mut j = job("opt-tiny", &out, 0.0);
        j.dtype = Some(dtype);
        run_prune(&j).unwrap();
        let m = Model::open(&out).unwrap();
        assert_eq!(m.dtype(), dtype);
        let cfg = read_json(&out.join("config.json"));
        assert_eq!(cfg["torch_dtype"], dtype.name());
        let (shape, ids) = reference_ids("opt-tiny", "input_ids");
        let (_, want) = reference("opt-tiny", "logits");
        let got = fasp_engine::eval::logits(&m, &ids, shape[1]).unwrap();
        let e = rel_max_err(&got.data, &want);
        // weights rounded to 8 (bf16) or 11 (f16) mantissa bits, the forward still in f32
        let tol = if dtype == DType::BF16 { 5e-2 } else { 5e-3 };
        assert!(e <= tol && e > 0.0, "{dtype:?}: {e:.2e}");
    }
}
