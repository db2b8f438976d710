//! The `embed` job: text features (a language model's last hidden state, mean-pooled over all
//! tokens of all chunks of each text) of the lines of a file or of a corpus's sections,
//! resumable a chunk of texts at a time.

use super::check_npy_out;
use super::resume::{key_path, Chunks};
use crate::corpus::{Corpus, Section};
use crate::device::Device;
use crate::error::{Error, IoContext, Result};
use crate::io::progress;
use crate::text::{EmbedOptions, TextModel};
use std::path::PathBuf;
use std::time::Instant;

/// Where the texts come from.
#[derive(Clone, Debug)]
pub enum Texts {
    /// One text per line, one row per line.
    Lines(PathBuf),
    /// A row per study with any of `sections` (joined by a blank line, in this order); the
    /// study ids go to `<out>.ids.txt`.
    Corpus {
        path: PathBuf,
        sections: Vec<Section>,
    },
}

/// The `embed` job.
#[derive(Clone, Debug)]
pub struct EmbedJob {
    /// A model folder (config.json, *.safetensors, tokenizer.json [+ a PEFT adapter]) or .gguf.
    pub model: PathBuf,
    /// A PEFT LoRA adapter folder merged into the model.
    pub lora: Option<PathBuf>,
    pub texts: Texts,
    /// The embeddings, n × hidden float32 (.npy).
    pub out: PathBuf,
    pub options: EmbedOptions,
    /// Texts per checkpoint.
    pub chunk: usize,
}

/// What [`embed`] wrote: `texts` × `dim` in `secs` seconds.
#[derive(Clone, Debug, PartialEq)]
pub struct EmbedReport {
    pub texts: usize,
    pub tokens: usize,
    pub dim: usize,
    pub secs: f64,
}

/// Embeds the job's texts on `device` and writes them; an interrupted run of the same job
/// resumes from its finished chunks.
pub fn embed(job: &EmbedJob, device: &Device) -> Result<EmbedReport> {
    check_npy_out(&job.out)?;
    let (ids, texts) = read_texts(&job.texts)?;
    let t0 = Instant::now();
    let model = TextModel::load(&job.model, job.lora.as_deref(), device)?;
    eprintln!(
        "{} model ({} wide) loaded in {:.2} s",
        model.model_type,
        model.dim(),
        t0.elapsed().as_secs_f64()
    );
    let d = model.dim();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let lengths: Vec<usize> = model.tokenize(&refs)?.iter().map(Vec::len).collect();
    let total_tokens: usize = lengths.iter().sum();
    let empty = lengths.iter().filter(|n| **n == 0).count();
    if empty > 0 {
        eprintln!("{empty} texts have no tokens and get a row of zeros");
    }
    let chunks = Chunks::open(&job.out, &job.key(&texts, d))?;
    let bar = progress(total_tokens as u64, "tokens");
    let t0 = Instant::now();
    let rows = chunks.rows(
        texts.len(),
        job.chunk,
        d,
        |r| model.embed_with_progress(&refs[r], &job.options, &|n| bar.inc(n as u64)),
        |r, reused| {
            if reused {
                bar.inc(lengths[r].iter().sum::<usize>() as u64);
            }
            Ok(())
        },
    )?;
    bar.finish_and_clear();
    chunks.finish(&job.out, &rows, texts.len(), d, ids.as_deref())?;
    Ok(EmbedReport {
        texts: texts.len(),
        tokens: total_tokens,
        dim: d,
        secs: t0.elapsed().as_secs_f64(),
    })
}

impl EmbedJob {
    /// Names the job: a resumed run reuses chunks only when all of these are the same.
    fn key(&self, texts: &[String], d: usize) -> String {
        // A fingerprint of the texts: their count and a cheap rolling hash (FNV-1a).
        let mut h = 0xcbf29ce484222325u64;
        for t in texts {
            for b in t.bytes().chain([0xff]) {
                h = (h ^ b as u64).wrapping_mul(0x100000001b3);
            }
        }
        format!(
            "model={} lora={:?} max_length={:?} normalize={} chunk={} dim={d} texts={} hash={h:016x}\n",
            key_path(&self.model),
            self.lora.as_deref().map(key_path),
            self.options.max_length,
            self.options.normalize,
            self.chunk,
            texts.len(),
        )
    }
}

/// The texts, and the study ids when they come from a corpus (studies without those sections
/// are left out and counted).
fn read_texts(texts: &Texts) -> Result<(Option<Vec<String>>, Vec<String>)> {
    let (path, sections) = match texts {
        Texts::Lines(path) => {
            let text = std::fs::read_to_string(path).at(path)?;
            return Ok((None, text.lines().map(String::from).collect()));
        }
        Texts::Corpus { path, sections } => (path, sections),
    };
    if sections.is_empty() {
        return Err(Error::Usage(
            "give --input FILE or --corpus CORPUS --section SECTION".into(),
        ));
    }
    let corpus = Corpus::open(path)?;
    let (ids, texts) = corpus.joined_sections(sections)?;
    let names: Vec<&str> = sections.iter().map(|s| s.name()).collect();
    let names = names.join(" or ");
    let skipped = corpus.len() - ids.len();
    if skipped > 0 {
        eprintln!("{skipped} studies have no {names} and get no row");
    }
    if texts.is_empty() {
        return Err(Error::input(
            path,
            format!(
                "no study has a {names}; import texts with --text-jsonl or pick another --section"
            ),
        ));
    }
    Ok((Some(ids), texts))
}
