//! fasp-engine: FASP (Fast and Accurate Structured Pruning, arXiv 2501.09412) for OPT and LLaMA.
//!
//! * `model`: config, lazy safetensors/GGUF weights, the per-family layout and unit maps.
//! * `forward`: the f32 CPU forward pass (the reference).
//! * `calib`: calibration windows; `eval`: perplexity.
//! * `backend`: the device trait the pipeline runs on (CPU reference; CUDA).
//! * `prune`: the pinned FASP math and the sequential pipeline.
//! * `output`: the dense-equivalent and compact writers; `gguf_export`: the GGUF writer of a model.
//! * `job`: the prune job as the CLI runs it (reachable from tests).
//! * `plan`: peak host/device memory, chunk sizes, bytes and time per layer, before any work.
//! * `bench`: the pipeline timed on synthetic weights of the published shapes, with its floor.

pub mod backend;
pub mod bench;
pub mod calib;
pub mod checkpoint;
pub mod error;
pub mod eval;
pub mod forward;
pub mod gguf;
pub mod gguf_export;
pub mod gguf_model;
pub mod gguf_write;
pub mod interrupt;
pub mod job;
pub mod kernels;
pub mod math;
pub mod model;
pub mod output;
pub mod plan;
pub mod prune;
pub mod record;
pub mod sweep;
pub mod tensor;

pub use error::{FaspError, Result};

/// The engine version written into `fasp.json`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// One line for `--version`: the version and whether CUDA kernels are built in.
pub fn build_info() -> &'static str {
    if kernels::KERNELS_BUILT {
        concat!(env!("CARGO_PKG_VERSION"), " (CUDA kernels: built in as PTX)")
    } else {
        concat!(env!("CARGO_PKG_VERSION"), " (CUDA kernels: not built in; run scripts/setup-cuda.sh and rebuild)")
    }
}
