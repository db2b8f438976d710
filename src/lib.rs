//! niclip: NiCLIP (Peraza et al. 2025) in Rust — brain maps decoded into the cognitive tasks,
//! concepts and domains they reflect. Every numerical op has a CPU path (always built and tested)
//! and a CUDA kernel in `kernels/` behind the same interface (`device`).

pub mod baseline;
pub mod brain;
pub mod cli;
pub mod clip;
pub mod corpus;
pub mod decode;
pub mod device;
pub mod error;
pub mod eval;
pub mod io;
pub mod rng;
pub mod text;
pub mod workflow;

pub use error::{Error, Result};
