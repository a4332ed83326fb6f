//! A `model.safetensors.index.json` naming the shards of a sharded model (two valid tiny shards
//! are present): the source opens or refuses it, and every tensor it maps loads or is refused.
#![no_main]
#[path = "common.rs"]
mod common;

use fasp_engine::model::SafetensorsSource;
use libfuzzer_sys::fuzz_target;

/// A safetensors file holding one f32 tensor `name` of shape [2].
fn shard(name: &str) -> Vec<u8> {
    let header = format!(r#"{{"{name}":{{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}}}"#);
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(&[0, 0, 128, 63, 0, 0, 0, 64]);
    v
}

fuzz_target!(|data: &[u8]| {
    let dir = common::scratch().join("idx");
    if !dir.join("model-00002-of-00002.safetensors").exists() {
        common::put("idx/model-00001-of-00002.safetensors", &shard("a.weight"));
        common::put("idx/model-00002-of-00002.safetensors", &shard("b.weight"));
    }
    common::put("idx/model.safetensors.index.json", data);
    if let Ok(src) = SafetensorsSource::open_dir(&dir) {
        common::load_all(&src);
    }
});
