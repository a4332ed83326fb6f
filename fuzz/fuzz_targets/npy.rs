//! A `.npy` of token ids (calibration or evaluation): read or refused with an error; windows
//! are sampled from a stream as the calibration does.
#![no_main]
#[path = "common.rs"]
mod common;

use fasp_engine::calib::{self, Tokens};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = common::put("ids.npy", data);
    match calib::read_npy(&path, calib::Role::Calibration) {
        Ok(Tokens::Stream(s)) => {
            let _ = calib::sample_windows(&s, 2, 4, 0);
        }
        Ok(Tokens::Windows { ids, n, seqlen }) => {
            assert_eq!(ids.len(), n.checked_mul(seqlen).expect("n x seqlen fits"), "ids match the shape");
        }
        Err(_) => {}
    }
});
