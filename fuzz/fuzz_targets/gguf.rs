//! A `.gguf` file: the reader parses or refuses the header, metadata and tensor table; every
//! tensor dequantizes or is refused; the HF config, tensor names and tokenizer derive or are
//! refused; and the whole model opens (config validated against every tensor) or is refused.
#![no_main]
#[path = "common.rs"]
mod common;

use fasp_engine::gguf::GgufFile;
use fasp_engine::model::Model;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = common::put("x.gguf", data);
    let Ok(f) = GgufFile::open(&path) else { return };
    let names: Vec<String> = f.tensor_infos().iter().map(|t| t.name.clone()).collect();
    for n in &names {
        let _ = f.tensor_f32(n);
    }
    let _ = f.hf_config();
    for (hf, _) in f.hf_tensor_names() {
        let _ = f.hf_tensor_f32(&hf);
    }
    let _ = f.tokenizer_json();
    if let Ok(m) = Model::open(&path) {
        let _ = m.tokenizer();
        let _ = m.param_count();
    }
});
