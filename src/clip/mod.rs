//! The CLIP model between article text and brain maps: the towers, their hand-written forward
//! and backward passes (CPU in `engine`, CUDA in `cuda`), AdamW, the one training loop with
//! early stopping and resumable checkpoints over either engine, nested cross-validation, and
//! the retrieval metrics.
//!
//! Modules, each using only those listed before it: `layout`, `ops`, `adamw`, `data`,
//! `metrics` · `wgrad` · `engine` · `model` · `state` · `train` (the loop and the `Engine`
//! interface) · `cpu`, `cuda_ops`, `cuda` (the engines), `kernels` (the ops one by one on
//! either device, for the parity tests), which `device` picks from · `fit` · `cv`.

pub mod adamw;
pub mod cpu;
pub mod cuda;
pub mod cuda_ops;
pub mod cv;
pub mod data;
pub mod engine;
pub mod fit;
pub mod kernels;
pub mod layout;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod state;
pub mod train;
pub mod wgrad;

pub use model::Clip;
