//! The CLIP model between article text and brain maps: the towers, their hand-written forward
//! and backward passes (CPU here, CUDA in `cuda`), AdamW, the training loop with early stopping
//! and resumable checkpoints, nested cross-validation, and the retrieval metrics.

pub mod engine;
pub mod model;
pub mod ops;

pub use model::Clip;
