//! Shared by the fuzz targets: the readers under test take paths, so each input is written to a
//! file in a per-process scratch directory (in /dev/shm when there is one).
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

/// The scratch directory of this process, created once.
pub fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        let base = if shm.is_dir() { shm } else { std::env::temp_dir() };
        let dir = base.join(format!("fasp-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir
    })
}

/// Writes `data` to `name` in the scratch directory (or a subdirectory) and returns its path.
pub fn put(name: &str, data: &[u8]) -> PathBuf {
    let p = scratch().join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).expect("scratch subdirectory");
    }
    std::fs::write(&p, data).expect("scratch write");
    p
}

/// The config.json of a tiny LLaMA (GQA, tied head) whose tensor names and shapes the
/// safetensors seeds follow (fuzz/make_seeds.py writes the same).
pub const TINY_CONFIG: &str = include_str!("../seeds/tiny_config.json");

/// Loads every tensor of an opened model source, as the prune does layer by layer.
pub fn load_all(src: &dyn fasp_engine::model::TensorSource) {
    for (name, _shape) in src.tensors() {
        let _ = src.dtype(&name);
        let _ = src.load_f32(&name);
    }
}
