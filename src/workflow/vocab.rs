//! The `vocab` job: the decoding vocabulary from the Cognitive Atlas — each task's name and
//! definition embedded by the language model, combined α·name + (1−α)·definition — and the
//! prior P(T) from the training documents' embeddings (or uniform).

use crate::decode::vocabulary::{combine, prior_from_documents, uniform_prior};
use crate::decode::{Ontology, Vocabulary};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::io::{progress, read_npy_f32};
use crate::text::{EmbedOptions, TextModel};
use std::path::PathBuf;

/// The `vocab` job.
#[derive(Clone, Debug)]
pub struct VocabJob {
    /// A Cognitive Atlas folder (the dump, braindec's snapshots or the reduced table).
    pub ontology: PathBuf,
    /// Only the reduced task set.
    pub reduced: bool,
    /// The language model the CLIP model's text features came from (folder or .gguf).
    pub model: PathBuf,
    pub lora: Option<PathBuf>,
    /// Weight of the name's embedding; the definition's is 1 − α.
    pub alpha: f32,
    /// Training documents' text embeddings (.npy, n × d, same model) for the prior; None:
    /// uniform.
    pub documents: Option<PathBuf>,
    pub options: EmbedOptions,
    /// The folder for vocabulary.txt, vocabulary_emb.npy and vocabulary_prior.npy.
    pub out: PathBuf,
}

/// What [`vocab`] wrote: `tasks` × `dim`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VocabReport {
    pub tasks: usize,
    pub dim: usize,
}

/// Embeds the ontology's tasks with the language model on `device` and writes the vocabulary.
pub fn vocab(job: &VocabJob, device: &Device) -> Result<VocabReport> {
    if !(0.0..=1.0).contains(&job.alpha) {
        return Err(Error::Usage(format!(
            "--alpha must be in [0, 1], got {}",
            job.alpha
        )));
    }
    let ontology = Ontology::load(&job.ontology, job.reduced)?;
    for w in &ontology.warnings {
        eprintln!("warning: {w}");
    }
    // Read the documents first: a wrong file should fail before minutes of embedding.
    let documents = job
        .documents
        .as_ref()
        .map(|p| read_npy_f32(p).map(|m| (p, m)))
        .transpose()?;
    let model = TextModel::load(&job.model, job.lora.as_deref(), device)?;
    let dim = model.dim();
    if let Some((p, m)) = &documents {
        if m.cols != dim {
            return Err(Error::input(
                p,
                format!("document embeddings are {} wide but {} gives {dim}; embed the documents with the same model", m.cols, job.model.display()),
            ));
        }
        if m.rows == 0 {
            return Err(Error::input(p, "holds no documents"));
        }
    }
    let opts = EmbedOptions {
        batch: job.options.batch.max(1),
        ..job.options.clone()
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
        job.model.display()
    );
    // One bar over both passes, in tokens (the work): a full vocabulary takes tens of seconds.
    let tokens: usize = [&names, &definitions]
        .iter()
        .map(|t| {
            model
                .tokenize(t)
                .map(|ids| ids.iter().map(Vec::len).sum::<usize>())
        })
        .sum::<Result<usize>>()?;
    let bar = progress(tokens as u64, "tokens");
    let tick = |n: usize| bar.inc(n as u64);
    let name_emb = model.embed_with_progress(&names, &opts, &tick)?;
    let def_emb = model.embed_with_progress(&definitions, &opts, &tick)?;
    bar.finish_and_clear();
    let emb = combine(&name_emb, &def_emb, job.alpha);
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
    vocabulary.write(&job.out)?;
    Ok(VocabReport {
        tasks: vocabulary.names.len(),
        dim,
    })
}
