//! Evaluation of decoders on maps with a known answer (`niclip eval decoding`).
//!
//! The authors' measure (REFERENCE.md): recall@k = |true ∩ top-k| / |true| per map (tasks k = 4,
//! concepts k = 4, domains k = 2), averaged over maps, against a null that shuffles the
//! predictions across maps 1,000 times: p = (#null ≥ observed + 1) / (n + 1).
//!
//! [`decoding`] holds the measures, [`predict`] each decoder's rankings of the maps, and
//! [`report`] the whole job ([`evaluate`]) with its table and CSV files.

pub mod decoding;
pub mod predict;
pub mod report;

pub use decoding::{read_truth, score_level, Level, LevelScore, Prediction, Truth};
pub use report::{evaluate, DecodingEval};
