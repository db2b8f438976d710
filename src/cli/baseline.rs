//! `niclip baseline train neurosynth|gclda` and `niclip baseline decode`

use super::Compute;
use crate::baseline::gclda::Params;
use crate::baseline::terms::Match;
use crate::baseline::train::{train, TrainOptions};
use crate::baseline::{Decoder, Kind};
use crate::brain::mkda::Rounding;
use crate::brain::{Image, Mask};
use crate::corpus::Section;
use crate::decode::maps::map_files;
use crate::device::Device;
use crate::error::{Error, IoContext, Result};
use clap::{Subcommand, ValueEnum};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum BaselineCommand {
    /// Train the Neurosynth correlation decoder or GC-LDA on a corpus and a vocabulary.
    Train(TrainArgs),
    /// Decode brain maps with a trained baseline.
    Decode(DecodeArgs),
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Which baseline: neurosynth (correlation decoder) or gclda.
    #[arg(value_enum)]
    pub kind: Kind,
    /// The corpus file (`niclip corpus import`).
    #[arg(long)]
    pub corpus: PathBuf,
    /// One term (task name) per line.
    #[arg(long)]
    pub vocabulary: PathBuf,
    /// The model file to write (.safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// ngram: the authors' word 1–2-gram features; phrase: count whole task names of any length.
    #[arg(long = "match", value_enum, default_value = "ngram")]
    pub matching: Match,
    /// Text sections making each study's document (repeat; default title and abstract).
    #[arg(long = "section")]
    pub sections: Vec<Section>,
    /// MKDA sphere radius in mm (neurosynth).
    #[arg(long, default_value_t = 10.0)]
    pub radius: f64,
    /// Peak to voxel (neurosynth): round (NiMARE 0.22.1) or trunc (NiMARE ≤ 0.5).
    #[arg(long, value_enum, default_value = "round")]
    pub rounding: Rounding,
    /// GC-LDA topics (the authors' 25).
    #[arg(long, default_value_t = 25)]
    pub n_topics: usize,
    /// GC-LDA sub-regions per topic (the authors' 4).
    #[arg(long, default_value_t = 4)]
    pub n_regions: usize,
    /// GC-LDA without mirrored sub-region pairs.
    #[arg(long)]
    pub no_symmetric: bool,
    /// GC-LDA Gibbs iterations (the authors' 1000).
    #[arg(long, default_value_t = 1000)]
    pub iterations: usize,
    /// GC-LDA seed of the Gibbs sampler (the same seed gives the same model).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// GC-LDA Dirichlet prior count on each document's topics (NiMARE's alpha).
    #[arg(long, default_value_t = 0.1)]
    pub alpha: f64,
    /// GC-LDA Dirichlet prior count on each topic's words (beta).
    #[arg(long, default_value_t = 0.01)]
    pub beta: f64,
    /// GC-LDA prior count added to a document's peak-topic counts when words pick topics (gamma).
    #[arg(long, default_value_t = 0.01)]
    pub gamma: f64,
    /// GC-LDA Dirichlet prior count on each topic's sub-regions (delta).
    #[arg(long, default_value_t = 1.0)]
    pub delta: f64,
    /// GC-LDA weight, in pseudo-observations, pulling each sub-region's covariance toward
    /// --roi-size (dobs).
    #[arg(long, default_value_t = 25.0)]
    pub dobs: f64,
    /// GC-LDA default sub-region size: the covariance diagonal (mm²) sub-regions are pulled
    /// toward.
    #[arg(long, default_value_t = 50.0)]
    pub roi_size: f64,
    #[command(flatten)]
    pub compute: Compute,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Csv,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct DecodeArgs {
    /// The model file (`niclip baseline train … --out`).
    pub model: PathBuf,
    /// Brain maps (NIfTI; off the MNI 2 mm grid they are resampled, trilinear; a 4D map gives
    /// one result per volume), folders of them, or quoted patterns like 'maps/*.nii.gz'. A bad
    /// map is reported and skipped.
    #[arg(required = true)]
    pub maps: Vec<PathBuf>,
    /// What is written: aligned tables, CSV or JSON.
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
    /// Terms shown per map, best first, or all (0 also means all).
    #[arg(long, default_value = "10", value_parser = super::parse_top)]
    pub top: usize,
    /// Write one file per map into this folder instead of printing.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub compute: Compute,
}

pub fn run(c: BaselineCommand) -> Result<()> {
    match c {
        BaselineCommand::Train(a) => train_cmd(a),
        BaselineCommand::Decode(a) => decode_cmd(a),
    }
}

fn train_cmd(a: TrainArgs) -> Result<()> {
    a.compute.init_threads();
    if a.kind == Kind::Gclda {
        a.compute.cpu_only("baseline train gclda");
    }
    let t0 = std::time::Instant::now();
    let opts = TrainOptions {
        sections: if a.sections.is_empty() {
            vec![Section::Title, Section::Abstract]
        } else {
            a.sections.clone()
        },
        matching: a.matching,
        radius: a.radius,
        rounding: a.rounding,
        gclda: Params {
            n_topics: a.n_topics,
            n_regions: a.n_regions,
            symmetric: !a.no_symmetric,
            alpha: a.alpha,
            beta: a.beta,
            gamma: a.gamma,
            delta: a.delta,
            dobs: a.dobs,
            roi_size: a.roi_size,
            n_iters: a.iterations,
            seed: a.seed,
        },
        device: Device::select(&a.compute.device)?,
    };
    let bar = (a.kind == Kind::Gclda).then(|| {
        let b = indicatif::ProgressBar::new(a.iterations as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} GC-LDA iterations ({per_sec}, eta {eta}) {msg}",
            )
            .unwrap(),
        );
        b
    });
    let report = train(a.kind, &a.corpus, &a.vocabulary, &a.out, &opts, |it, ll| {
        if let Some(b) = &bar {
            b.set_position(it as u64);
            b.set_message(format!("log-likelihood {:.1}", ll[2]));
        }
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    eprintln!(
        "{} studies ({} with text, {} with peaks); {} vocabulary terms, {} kept{}",
        report.studies,
        report.studies_with_text,
        report.studies_with_peaks,
        report.terms_given,
        report.terms_kept,
        if report.terms_merged_or_empty > 0 {
            format!(
                " ({} had no content word or the same content words as another)",
                report.terms_merged_or_empty
            )
        } else {
            String::new()
        }
    );
    if !report.terms_without_studies.is_empty() {
        let shown: Vec<&str> = report
            .terms_without_studies
            .iter()
            .take(8)
            .map(String::as_str)
            .collect();
        eprintln!(
            "{} terms occur in no study with peaks (or in all): {}{}",
            report.terms_without_studies.len(),
            shown.join(", "),
            if report.terms_without_studies.len() > 8 {
                ", …"
            } else {
                ""
            }
        );
    }
    eprintln!(
        "wrote {} in {:.2} s",
        a.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

struct Decoded {
    map: String,
    terms: Vec<(String, f32)>,
}

fn decode_cmd(a: DecodeArgs) -> Result<()> {
    a.compute.init_threads();
    a.compute.cpu_only("baseline decode");
    let decoder = Decoder::load(&a.model)?;
    let mask = Mask::mni152_2mm();
    let (maps, mut failed) = (map_files(&a.maps)?, 0);
    let mut results = Vec::new();
    for p in &maps {
        let vols = match mask.values_of(p) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("error: {e}");
                failed += 1;
                continue;
            }
        };
        let names = Image::volume_names(p, vols.len());
        for (v, map) in vols.into_iter().zip(names) {
            let mut terms = decoder.decode(&v);
            crate::baseline::sort_by_score(&mut terms);
            terms.truncate(a.top);
            results.push(Decoded { map, terms });
        }
    }
    write_results(&a, &results, decoder.score_name())?;
    match failed {
        0 => Ok(()),
        n => Err(Error::Batch(format!(
            "{n} of {} map files could not be decoded (each is reported above)",
            maps.len()
        ))),
    }
}

/// The results on stdout, or one file per map under `--out`.
fn write_results(a: &DecodeArgs, results: &[Decoded], score: &str) -> Result<()> {
    match &a.out {
        None => {
            let mut out = std::io::stdout().lock();
            render(&mut out, results, a.format, score).map_err(|e| Error::io("<stdout>", e))
        }
        Some(dir) => {
            for (k, r) in results.iter().enumerate() {
                let stem = Path::new(&r.map)
                    .file_name()
                    .map(|s| {
                        s.to_string_lossy()
                            .trim_end_matches(".gz")
                            .trim_end_matches(".nii")
                            .to_string()
                    })
                    .unwrap_or_else(|| format!("map{k}"));
                let ext = match a.format {
                    OutputFormat::Table => "txt",
                    OutputFormat::Csv => "csv",
                    OutputFormat::Json => "json",
                };
                let path = dir.join(format!("{stem}.{ext}"));
                crate::io::write_atomic(&path, |w| {
                    render(w, std::slice::from_ref(r), a.format, score).at(&path)
                })?;
                eprintln!("wrote {}", path.display());
            }
            Ok(())
        }
    }
}

fn render(
    w: &mut impl Write,
    results: &[Decoded],
    format: OutputFormat,
    score: &str,
) -> std::io::Result<()> {
    match format {
        OutputFormat::Table => {
            for r in results {
                writeln!(w, "{}", r.map)?;
                writeln!(w, "{:>4}  {:<50} {:>10}", "rank", "term", score)?;
                for (k, (t, s)) in r.terms.iter().enumerate() {
                    writeln!(w, "{:>4}  {:<50} {:>10.5}", k + 1, t, s)?;
                }
                writeln!(w)?;
            }
        }
        OutputFormat::Csv => {
            let mut c = csv::Writer::from_writer(w);
            c.write_record(["map", "rank", "term", score])?;
            for r in results {
                for (k, (t, s)) in r.terms.iter().enumerate() {
                    c.write_record([r.map.as_str(), &(k + 1).to_string(), t, &s.to_string()])?;
                }
            }
            c.flush()?;
        }
        OutputFormat::Json => {
            let maps: Vec<serde_json::Value> = results
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "map": r.map,
                        "tasks": r.terms.iter().map(|(t, s)| serde_json::json!({
                            "name": t,
                            "score": if s.is_finite() { serde_json::json!(s) } else { serde_json::Value::Null },
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            writeln!(
                w,
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "maps": maps })).expect("json")
            )?;
        }
    }
    Ok(())
}
