//! Library errors. Every variant carries the context a user needs to act on it
//! (which file, which tensor, which layer and pair).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum FaspError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: invalid config.json: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("{path}: {msg}")]
    Weights { path: PathBuf, msg: String },
    #[error("tensor {name}: {msg}")]
    Tensor { name: String, msg: String },
    #[error("calibration: {0}")]
    Calib(String),
    /// An evaluation token file (`eval --text/--tokens`, `prune --eval`, `sweep --eval`).
    #[error("evaluation: {0}")]
    Eval(String),
    #[error("invalid argument: {0}")]
    Arg(String),
    #[error("layer {layer}, {pair} pair: {msg}")]
    Pair { layer: usize, pair: &'static str, msg: String },
    #[error("numerics: {0}")]
    Numerics(String),
    #[error("output {path}: {msg}")]
    Output { path: PathBuf, msg: String },
    #[error("CUDA: {0}")]
    Cuda(String),
    /// A device-layer error (real or emulated device), with its source.
    #[error(transparent)]
    Device(#[from] crate::backend::cuda::device::DeviceError),
    #[error("GGUF: {0}")]
    Gguf(String),
    /// A GGUF reader error; its message names the file already.
    #[error(transparent)]
    GgufFile(#[from] crate::gguf::GgufError),
}

pub type Result<T, E = FaspError> = std::result::Result<T, E>;

impl FaspError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FaspError::Io { path: path.into(), source }
    }
}
