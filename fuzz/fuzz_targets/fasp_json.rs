//! A pruned model's `fasp.json` (read by `inspect`): parsed or refused with an error naming the
//! field; an accepted record summarises as text and JSON.
#![no_main]

use fasp_engine::record::FaspRecord;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = FaspRecord::from_slice(data, Path::new("fasp.json")) {
        let _ = r.summary_lines();
        let _ = r.summary_json();
    }
});
