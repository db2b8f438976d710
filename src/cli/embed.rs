//! `niclip embed`: text features (the LLM's last hidden state, mean-pooled over all tokens of
//! all chunks of each text) of lines of a file or of a corpus section.

use super::Compute;
use crate::corpus::Section;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::text::EmbedOptions;
use crate::workflow::embed::{embed as embed_texts, EmbedJob, Texts};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct EmbedArgs {
    /// A model folder (config.json, *.safetensors, tokenizer.json [+ a PEFT adapter]) or a .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// One text per line; one output row per line.
    #[arg(long, conflicts_with = "corpus", required_unless_present = "corpus")]
    pub input: Option<PathBuf>,
    /// A corpus made by `niclip corpus import`: one row per study with a non-empty --section.
    #[arg(long, requires = "section")]
    pub corpus: Option<PathBuf>,
    /// title | keywords | abstract | body, or several separated by commas (`title,abstract`):
    /// the study's non-empty sections joined by a blank line, in the order given.
    #[arg(long, value_delimiter = ',')]
    pub section: Vec<Section>,
    /// Output embeddings, n × hidden float32 (.npy); corpus rows get <out>.ids.txt.
    #[arg(long)]
    pub out: PathBuf,
    /// Tokens per chunk (default: 8192 for Mistral-family models, 4096 for Llama-2, 512 for BERT).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Chunks per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// A PEFT LoRA adapter folder merged into the model (W += alpha/r · B·A).
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// Scale each embedding to unit L2 norm.
    #[arg(long)]
    pub normalize: bool,
    /// Texts per checkpoint: an interrupted run resumes from the last finished chunk.
    #[arg(long, default_value_t = 1024)]
    pub chunk: usize,
    #[command(flatten)]
    pub compute: Compute,
}

pub fn embed(a: EmbedArgs) -> Result<()> {
    a.compute.init_threads();
    let texts = match (a.input, a.corpus) {
        (Some(path), _) => Texts::Lines(path),
        (None, Some(path)) => Texts::Corpus {
            path,
            sections: a.section,
        },
        (None, None) => {
            return Err(Error::Usage(
                "give --input FILE or --corpus CORPUS --section SECTION".into(),
            ))
        }
    };
    let device = Device::select(&a.compute.device)?;
    let job = EmbedJob {
        model: a.model,
        lora: a.lora,
        texts,
        out: a.out,
        options: EmbedOptions {
            max_length: a.max_length,
            batch: a.batch,
            normalize: a.normalize,
        },
        chunk: a.chunk,
    };
    let r = embed_texts(&job, &device)?;
    eprintln!(
        "{} texts, {} tokens × {} on {} in {:.1} s ({:.0} tokens/s) → {}",
        r.texts,
        r.tokens,
        r.dim,
        device.name(),
        r.secs,
        r.tokens as f64 / r.secs.max(1e-9),
        job.out.display()
    );
    Ok(())
}
