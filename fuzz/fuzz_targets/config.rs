//! `config.json`: parsed and validated, or refused with an error naming the field; the derived
//! sizes the rest of the engine uses are computed for an accepted config.
#![no_main]

use fasp_engine::model::ModelConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let Ok(c) = ModelConfig::from_json(raw) else { return };
    let _ = (c.v_width(), c.ctx_width(), c.group(), c.arch());
    for l in 0..c.layers.min(4) {
        let _ = (c.v_units(l), c.window(l), c.layer_rope(l));
    }
});
