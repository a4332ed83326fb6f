//! FASP: the pinned math as plain functions (`plan`, `score`, `select`, `restore`), the methods,
//! and the layer-by-layer pipeline over a backend.

pub mod method;
pub mod pipeline;
pub mod plan;
pub mod restore;
pub mod score;
pub mod select;

pub use method::Method;
pub use pipeline::{prune, prune_resumed, LayerReport, PairReport, PruneConfig, PruneReport, Resume};
