//! The CLIP model between article text and brain maps: the towers, their hand-written forward
//! and backward passes (CPU here, CUDA in `cuda`), AdamW, the training loop with early stopping
//! and resumable checkpoints, nested cross-validation, and the retrieval metrics.

pub mod cuda;
pub mod cv;
pub mod data;
pub mod engine;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod train;
pub mod wgrad;

pub use model::Clip;
