//! `niclip vocab`: the decoding vocabulary from the Cognitive Atlas — each task's name and
//! definition embedded by the language model, combined α·name + (1−α)·definition, and the prior
//! P(T) from the training documents' embeddings (or uniform).

use super::Compute;
use crate::device::Device;
use crate::error::Result;
use crate::text::EmbedOptions;
use crate::workflow::vocab::{vocab, VocabJob};
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
    let device = Device::select(&a.compute.device)?;
    let job = VocabJob {
        ontology: a.ontology,
        reduced: a.reduced,
        model: a.model,
        lora: a.lora,
        alpha: a.alpha,
        documents: a.documents,
        options: EmbedOptions {
            max_length: a.max_length,
            batch: a.batch,
            normalize: false,
        },
        out: a.out,
    };
    let r = vocab(&job, &device)?;
    eprintln!(
        "{} tasks × {} → {} (prior: {})",
        r.tasks,
        r.dim,
        job.out.display(),
        if job.documents.is_some() {
            "from the documents"
        } else {
            "uniform"
        }
    );
    Ok(())
}
