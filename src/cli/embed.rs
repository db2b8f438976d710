//! `niclip embed`: text features (the LLM's last hidden state, mean-pooled over all tokens of
//! all chunks of each text) of lines of a file or of a corpus section.

use super::Compute;
use crate::corpus::{Corpus, Section};
use crate::device::Device;
use crate::error::{Error, IoContext, Result};
use crate::io::{ids_sidecar, read_npy_f32, write_ids, write_npy_f32};
use crate::text::{EmbedOptions, TextModel};
use std::path::{Path, PathBuf};
use std::time::Instant;

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
    if a.out.extension().is_none_or(|e| e != "npy") {
        return Err(Error::Usage(format!(
            "{}: the output must end in .npy",
            a.out.display()
        )));
    }
    let (ids, texts) = read_texts(&a)?;
    let device = Device::select(&a.compute.device)?;
    let t0 = Instant::now();
    let model = TextModel::load(&a.model, a.lora.as_deref(), &device)?;
    eprintln!(
        "{} model ({} wide) loaded in {:.2} s",
        model.model_type,
        model.dim(),
        t0.elapsed().as_secs_f64()
    );
    let opts = EmbedOptions {
        max_length: a.max_length,
        batch: a.batch,
        normalize: a.normalize,
    };
    let d = model.dim();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let lengths: Vec<usize> = model.tokenize(&refs)?.iter().map(Vec::len).collect();
    let total_tokens: usize = lengths.iter().sum();
    let empty = lengths.iter().filter(|n| **n == 0).count();
    if empty > 0 {
        eprintln!("{empty} texts have no tokens and get a row of zeros");
    }
    let partial = Partial::new(&a, &texts, d)?;
    let bar = indicatif::ProgressBar::new(total_tokens as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} tokens ({per_sec}, eta {eta})",
        )
        .unwrap(),
    );
    let t0 = Instant::now();
    let chunk = a.chunk.max(1);
    let mut rows = Vec::with_capacity(texts.len() * d);
    for (c, part) in refs.chunks(chunk).enumerate() {
        let done = match partial.load(c, part.len(), d) {
            Some(done) => {
                bar.inc(model.tokenize(part)?.iter().map(Vec::len).sum::<usize>() as u64);
                done
            }
            None => {
                let e = model.embed_with_progress(part, &opts, &|n| bar.inc(n as u64))?;
                partial.save(c, &e, part.len(), d)?;
                e
            }
        };
        rows.extend(done);
    }
    bar.finish_and_clear();
    write_npy_f32(&a.out, &rows, texts.len(), d)?;
    if let Some(ids) = &ids {
        write_ids(&ids_sidecar(&a.out), ids)?;
    }
    partial.remove();
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "{} texts, {total_tokens} tokens × {d} on {} in {secs:.1} s ({:.0} tokens/s) → {}",
        texts.len(),
        device.name(),
        total_tokens as f64 / secs.max(1e-9),
        a.out.display()
    );
    Ok(())
}

/// The texts, and the study ids when they come from a corpus (studies without that section are
/// left out and counted).
fn read_texts(a: &EmbedArgs) -> Result<(Option<Vec<String>>, Vec<String>)> {
    if let Some(path) = &a.input {
        let text = std::fs::read_to_string(path).at(path)?;
        return Ok((None, text.lines().map(String::from).collect()));
    }
    let (Some(path), false) = (&a.corpus, a.section.is_empty()) else {
        return Err(Error::Usage(
            "give --input FILE or --corpus CORPUS --section SECTION".into(),
        ));
    };
    let corpus = Corpus::open(path)?;
    let (mut ids, mut texts) = (Vec::new(), Vec::new());
    for i in 0..corpus.len() {
        let mut parts = Vec::with_capacity(a.section.len());
        for &s in &a.section {
            let t = corpus.section(i, s)?;
            if !t.trim().is_empty() {
                parts.push(t);
            }
        }
        if !parts.is_empty() {
            ids.push(corpus.ids()[i].clone());
            texts.push(parts.join("\n\n"));
        }
    }
    let names: Vec<&str> = a.section.iter().map(|s| s.name()).collect();
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

/// Checkpoints of a long run: `<out>.partial/` holds one `.npy` per finished chunk of texts and
/// a key naming the job, so a resumed run reuses chunks only for the very same job.
struct Partial {
    dir: PathBuf,
}

impl Partial {
    fn new(a: &EmbedArgs, texts: &[String], d: usize) -> Result<Partial> {
        let mut dir = a.out.as_os_str().to_os_string();
        dir.push(".partial");
        let dir = PathBuf::from(dir);
        let canon = |p: &Path| {
            std::fs::canonicalize(p)
                .unwrap_or(p.to_path_buf())
                .display()
                .to_string()
        };
        // A fingerprint of the texts: count, total length, and a cheap rolling hash.
        let mut h = 0xcbf29ce484222325u64;
        for t in texts {
            for b in t.bytes().chain([0xff]) {
                h = (h ^ b as u64).wrapping_mul(0x100000001b3);
            }
        }
        let key = format!(
            "model={} lora={:?} max_length={:?} normalize={} chunk={} dim={d} texts={} hash={h:016x}\n",
            canon(&a.model),
            a.lora.as_deref().map(canon),
            a.max_length,
            a.normalize,
            a.chunk,
            texts.len(),
        );
        let key_path = dir.join("job.txt");
        if std::fs::read_to_string(&key_path).ok().as_deref() != Some(key.as_str()) {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).at(&dir)?;
            crate::io::write_atomic(&key_path, |w| {
                std::io::Write::write_all(w, key.as_bytes()).at(&key_path)
            })?;
        } else {
            eprintln!("resuming from {}", dir.display());
        }
        Ok(Partial { dir })
    }

    fn chunk_path(&self, c: usize) -> PathBuf {
        self.dir.join(format!("chunk-{c:06}.npy"))
    }

    fn load(&self, c: usize, rows: usize, d: usize) -> Option<Vec<f32>> {
        let m = read_npy_f32(&self.chunk_path(c)).ok()?;
        (m.rows == rows && m.cols == d).then_some(m.data)
    }

    fn save(&self, c: usize, rows: &[f32], n: usize, d: usize) -> Result<()> {
        write_npy_f32(&self.chunk_path(c), rows, n, d)
    }

    fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
