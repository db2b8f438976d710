//! Decoding brain maps into Cognitive Atlas tasks, concepts and domains (NiCLIP): the ontology,
//! the vocabulary and its prior, the posterior over tasks, noisy-OR up the ontology, reports and
//! pictures.

pub mod decoder;
pub mod default_model;
pub mod maps;
pub mod ontology;
pub mod plot;
pub mod posterior;
pub mod report;
pub mod vocabulary;

pub use decoder::{Decoder, DecoderAssets, Decoding, ScaleSource, Towers};
pub use maps::{Tail, Variant};
pub use ontology::Ontology;
pub use vocabulary::Vocabulary;
