//! `niclip decode`: brain maps → the Cognitive Atlas tasks, concepts and domains they most
//! likely reflect (tables, JSON, pictures).

use super::Compute;
use crate::clip::model::Clip;
use crate::decode::maps::map_files;
use crate::decode::report::{
    stems, write_csv, write_json, write_map_files, write_summary_csv, write_summary_table,
    write_table, MapReport,
};
use crate::decode::{default_model, plot, Decoder, DecoderAssets, ScaleSource, Tail, Variant};
use crate::error::{Error, IoContext, Result};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

/// Which model decodes: the default one (no flags), or all of these.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Trained CLIP model (.safetensors with the authors' keys).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Task names, one per line (`niclip vocab` writes it).
    #[arg(long)]
    pub vocabulary: Option<PathBuf>,
    /// Vocabulary embeddings in the language model's space (.npy, one row per name).
    #[arg(long)]
    pub vocabulary_emb: Option<PathBuf>,
    /// Prior P(T) (.npy, one value per name).
    #[arg(long)]
    pub vocabulary_prior: Option<PathBuf>,
    /// Cognitive Atlas folder (the dump, braindec's snapshots or the reduced table).
    #[arg(long)]
    pub ontology: Option<PathBuf>,
    /// Use the reduced task set (and its task → concept links).
    #[arg(long)]
    pub reduced: bool,
    /// The atlas the model's image features were made with (4D maps, or 3D labels with --labels).
    #[arg(long)]
    pub atlas: Option<PathBuf>,
    /// Read --atlas as a 3D label image (one region per integer label) instead of 4D maps.
    #[arg(long)]
    pub labels: bool,
    /// Inverse temperature s of the similarities (default: the model's learned value).
    /// braindec's command line uses 10, its evaluation scripts 20.
    #[arg(long)]
    pub logit_scale: Option<f32>,
}

#[derive(clap::Args, Debug)]
pub struct DecodeArgs {
    /// Brain maps in MNI space (3D or 4D NIfTI; a 4D image is one map per volume), folders of
    /// them, or quoted patterns like 'maps/*.nii.gz'. A bad map is reported and skipped.
    #[arg(required = true)]
    pub maps: Vec<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Tasks and concepts listed per map, or all (domains: all 10).
    #[arg(long, default_value = "10", value_parser = super::parse_top)]
    pub top: usize,
    /// What is printed: aligned tables, one CSV, or the JSON document of CLI.md.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Also write per-map files into this folder: <map>_task_predictions.csv,
    /// _concept_predictions.csv, _process_predictions.csv (braindec's columns), <map>.json, and
    /// summary.csv (each map's top task, concept and domain).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Picture of the top 5 tasks, concepts and domains (.png or .svg), and FILE-slices.png|svg
    /// with the map over the MNI T1 at its peak. Several maps: FILE-<map>.png each, and
    /// FILE-summary.png, a heat map of maps × their top tasks.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    #[command(flatten)]
    pub variant: VariantArgs,
    #[command(flatten)]
    pub compute: Compute,
}

/// How each map is prepared before it is decoded (the paper's Fig. S7).
#[derive(clap::Args, Debug, Clone)]
pub struct VariantArgs {
    /// positive keeps values > 0; negative keeps values < 0 as their absolute values; both
    /// decodes the map as it is.
    #[arg(long, value_enum, default_value_t = Tail::Both)]
    pub tail: Tail,
    /// Multiply the map by −1 first.
    #[arg(long)]
    pub flip: bool,
    /// Keep the top P % of the atlas's voxels (positive values only) as a binary ROI.
    #[arg(long)]
    pub percentile: Option<f64>,
}

impl VariantArgs {
    pub fn variant(&self) -> Result<Variant> {
        let v = Variant {
            tail: self.tail,
            flip: self.flip,
            percentile: self.percentile,
        };
        v.check()?;
        Ok(v)
    }
}

impl ModelArgs {
    /// No model flag given: the embedded default model decodes.
    fn is_default(&self) -> bool {
        [
            &self.model,
            &self.vocabulary,
            &self.vocabulary_emb,
            &self.vocabulary_prior,
            &self.ontology,
            &self.atlas,
        ]
        .iter()
        .all(|p| p.is_none())
    }

    pub fn assets(&self) -> Result<DecoderAssets> {
        let given = [
            ("--model", &self.model),
            ("--vocabulary", &self.vocabulary),
            ("--vocabulary-emb", &self.vocabulary_emb),
            ("--vocabulary-prior", &self.vocabulary_prior),
            ("--ontology", &self.ontology),
            ("--atlas", &self.atlas),
        ];
        let missing: Vec<&str> = given
            .iter()
            .filter(|(_, p)| p.is_none())
            .map(|(f, _)| *f)
            .collect();
        if missing.len() == given.len() {
            if self.labels {
                return Err(Error::Usage(
                    "--labels describes an --atlas; the default model knows its own atlas".into(),
                ));
            }
            let dir = default_model::find()?;
            return Ok(default_model::assets(&dir, self.reduced));
        }
        if !missing.is_empty() {
            return Err(Error::Usage(format!(
                "a model of your own needs all of --model --vocabulary --vocabulary-emb --vocabulary-prior --ontology --atlas (missing: {}); give none of them to use the default model",
                missing.join(" ")
            )));
        }
        let p = |x: &Option<PathBuf>| x.clone().expect("checked above");
        Ok(DecoderAssets {
            model: p(&self.model),
            vocabulary: p(&self.vocabulary),
            vocabulary_emb: p(&self.vocabulary_emb),
            vocabulary_prior: p(&self.vocabulary_prior),
            ontology: p(&self.ontology),
            reduced: self.reduced,
            atlas: p(&self.atlas),
            labels: self.labels,
            cache_atlas: true,
        })
    }

    /// The decoder, loaded once; warnings printed, and a note saying which s scales the
    /// similarities.
    pub fn decoder(&self) -> Result<(Decoder, String)> {
        let assets = self.assets()?;
        let towers = Clip::load(&assets.model)?;
        let decoder = Decoder::new(Box::new(towers), &assets, self.logit_scale)?;
        // The shipped ontology's known gaps (2 unnamed tasks, 19 misspelt concepts in the
        // reduced table, dropped as braindec drops them; see the README) are nothing a user can
        // change: warnings are for the files they gave.
        if !self.is_default() {
            for w in &decoder.warnings {
                eprintln!("warning: {w}");
            }
        }
        let scale_note = format!(
            "s = {} ({})",
            decoder.logit_scale,
            match decoder.scale_source {
                ScaleSource::Learned => "the model's learned logit scale",
                ScaleSource::Given => "--logit-scale",
            }
        );
        eprintln!("similarities scaled by {scale_note}");
        Ok((decoder, scale_note))
    }
}

pub fn run(a: DecodeArgs) -> Result<()> {
    a.compute.init_threads();
    a.compute.cpu_only("decode");
    let variant = a.variant.variant()?;
    if let Some(p) = &a.plot {
        plot::check_plot_path(p)?;
    }
    if let Some(dir) = &a.out {
        check_out_dir(dir)?;
    }
    let maps = map_files(&a.maps)?;
    let (decoder, scale_note) = a.model.decoder()?;
    let batch = decoder.decode_files(&maps, &variant);
    for (_, e) in &batch.failed {
        eprintln!("error: {e}");
    }
    let reports: Vec<MapReport> = batch
        .decodings
        .iter()
        .map(|d| MapReport::new(&decoder, d, a.top))
        .collect();
    print_reports(&reports, a.format)?;
    if let Some(dir) = &a.out {
        for (r, stem) in reports.iter().zip(stems(&batch.decoded)) {
            write_map_files(dir, &stem, r)?;
        }
        let summary = dir.join("summary.csv");
        crate::io::write_atomic(&summary, |w| write_summary_csv(w, &reports).at(&summary))?;
        eprintln!("{} maps → {}", reports.len(), dir.display());
    }
    if let (Some(file), false) = (&a.plot, reports.is_empty()) {
        plot::write_pictures(
            &decoder,
            &variant,
            &reports,
            &batch.decoded,
            file,
            &scale_note,
        )?;
    }
    match batch.failed.len() {
        0 => Ok(()),
        n => Err(Error::Batch(format!(
            "{n} of {} map files could not be decoded (each is reported above); the other \
             {} were decoded",
            maps.len(),
            batch.decoded.len()
        ))),
    }
}

/// `--out` must be a folder (or not exist yet): found out before the work, not after it.
fn check_out_dir(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Err(Error::input(
            dir,
            "exists and is not a folder; --out takes a folder for the per-map files",
        )),
        _ => Ok(()),
    }
}

/// The tables, CSV or JSON of every decoded map on stdout; a batch's table ends with the
/// summary across maps.
fn print_reports(reports: &[MapReport], format: Format) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match format {
        Format::Table if reports.len() > 1 => {
            write_table(&mut out, reports).and_then(|_| write_summary_table(&mut out, reports))
        }
        Format::Table => write_table(&mut out, reports),
        Format::Csv => write_csv(&mut out, reports),
        Format::Json => write_json(&mut out, reports),
    }
    .map_err(|e| Error::io("stdout", e))?;
    std::io::Write::flush(&mut out).map_err(|e| Error::io("stdout", e))
}
