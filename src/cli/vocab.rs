//! `niclip vocab`: the decoding vocabulary from the Cognitive Atlas — each task's name and
//! definition embedded by the language model, combined α·name + (1−α)·definition, and the prior
//! P(T) from the training documents' embeddings (or uniform).

use super::Compute;
use crate::decode::vocabulary::{combine, prior_from_documents, uniform_prior};
use crate::decode::{Ontology, Vocabulary};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::io::read_npy_f32;
use crate::text::{EmbedOptions, TextModel};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct VocabArgs {
    /// Cognitive Atlas folder (the dump, braindec's snapshots or the reduced table).
    #[arg(long)]
    pub ontology: PathBuf,
    /// The language model the CLIP model's text features came from (folder or .gguf).
    #[arg(long)]
    pub model: PathBuf,
    /// PEFT LoRA adapter merged into the model.
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// Only the reduced task set.
    #[arg(long)]
    pub reduced: bool,
    /// Weight of the name's embedding; the definition's is 1 − α.
    #[arg(long, default_value_t = 0.5)]
    pub alpha: f32,
    /// Training documents' text embeddings (.npy, n × d, same model) for the prior; without
    /// it the prior is uniform.
    #[arg(long)]
    pub documents: Option<PathBuf>,
    /// Output folder: vocabulary.txt, vocabulary_emb.npy, vocabulary_prior.npy.
    #[arg(long)]
    pub out: PathBuf,
    /// Tokens per chunk (default: the model's).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Chunks per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[command(flatten)]
    pub compute: Compute,
}

pub fn run(a: VocabArgs) -> Result<()> {
    a.compute.init_threads();
    if !(0.0..=1.0).contains(&a.alpha) {
        return Err(Error::Usage(format!(
            "--alpha must be in [0, 1], got {}",
            a.alpha
        )));
    }
    let ontology = Ontology::load(&a.ontology, a.reduced)?;
    for w in &ontology.warnings {
        eprintln!("warning: {w}");
    }
    // Read the documents first: a wrong file should fail before minutes of embedding.
    let documents = a
        .documents
        .as_ref()
        .map(|p| read_npy_f32(p).map(|m| (p, m)))
        .transpose()?;
    let device = Device::select(&a.compute.device)?;
    let model = TextModel::load(&a.model, a.lora.as_deref(), &device)?;
    let dim = model.dim();
    if let Some((p, m)) = &documents {
        if m.cols != dim {
            return Err(Error::input(
                p,
                format!("document embeddings are {} wide but {} gives {dim}; embed the documents with the same model", m.cols, a.model.display()),
            ));
        }
        if m.rows == 0 {
            return Err(Error::input(p, "holds no documents"));
        }
    }
    let opts = EmbedOptions {
        max_length: a.max_length,
        batch: a.batch.max(1),
        normalize: false,
    };
    let names: Vec<&str> = ontology.tasks.iter().map(|t| t.name.as_str()).collect();
    let definitions: Vec<&str> = ontology
        .tasks
        .iter()
        .map(|t| t.definition.as_str())
        .collect();
    eprintln!(
        "embedding {} task names and definitions with {}",
        names.len(),
        a.model.display()
    );
    let name_emb = model.embed(&names, &opts)?;
    let def_emb = model.embed(&definitions, &opts)?;
    let emb = combine(&name_emb, &def_emb, a.alpha);
    let prior = match &documents {
        Some((_, m)) => prior_from_documents(&emb, &m.data, dim),
        None => uniform_prior(names.len()),
    };
    let vocabulary = Vocabulary {
        names: names.iter().map(|s| s.to_string()).collect(),
        emb,
        dim,
        prior,
    };
    vocabulary.write(&a.out)?;
    eprintln!(
        "{} tasks × {dim} → {} (prior: {})",
        vocabulary.names.len(),
        a.out.display(),
        if documents.is_some() {
            "from the documents"
        } else {
            "uniform"
        }
    );
    Ok(())
}
