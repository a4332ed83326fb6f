//! A `model.safetensors` (header and data) beside the tiny LLaMA config: the source opens or
//! refuses it, every tensor loads or is refused, and the model validates (and materialises its
//! first layer) or is refused. Never a panic, an abort or an unbounded allocation.
#![no_main]
#[path = "common.rs"]
mod common;

use fasp_engine::model::{Model, SafetensorsSource};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    common::put("st/config.json", common::TINY_CONFIG.as_bytes());
    let path = common::put("st/model.safetensors", data);
    let dir = path.parent().unwrap();
    if let Ok(src) = SafetensorsSource::open_dir(dir) {
        common::load_all(&src);
    }
    if let Ok(m) = Model::open(dir) {
        let _ = m.layer(0);
        let _ = m.param_count();
    }
});
