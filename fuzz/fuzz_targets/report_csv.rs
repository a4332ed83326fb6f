//! `report`'s input, a sweep CSV: read or refused with a line number; accepted rows merge with
//! themselves (every measurement agrees) and print as tables.
#![no_main]
#[path = "common.rs"]
mod common;

use fasp_engine::sweep;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = common::put("sweep.csv", data);
    let Ok(rows) = sweep::read_csv(&path) else { return };
    if let Ok(merged) = sweep::merge(vec![rows.clone(), rows]) {
        for r in &merged {
            let _ = sweep::table(&merged, &r.eval);
        }
    }
});
