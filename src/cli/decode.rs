//! `niclip decode`: brain maps → the Cognitive Atlas tasks, concepts and domains they most
//! likely reflect (tables, JSON, pictures).

use super::Compute;
use crate::brain::Image;
use crate::clip::model::Clip;
use crate::decode::maps::prepare_volume;
use crate::decode::report::{
    stems, write_csv, write_json, write_map_files, write_table, MapReport,
};
use crate::decode::{default_model, plot, Decoder, DecoderAssets, ScaleSource, Tail, Variant};
use crate::error::{Error, Result};
use rayon::prelude::*;
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
    #[arg(long)]
    pub labels: bool,
    /// Inverse temperature s of the similarities (default: the model's learned value).
    /// braindec's command line uses 10, its evaluation scripts 20.
    #[arg(long)]
    pub logit_scale: Option<f32>,
}

#[derive(clap::Args, Debug)]
pub struct DecodeArgs {
    /// Brain maps in MNI space (3D or 4D NIfTI; a 4D image is one map per volume).
    #[arg(required = true)]
    pub maps: Vec<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Tasks and concepts listed per map (domains: all 10).
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Also write per-map files here: <map>_task_predictions.csv, _concept_predictions.csv,
    /// _process_predictions.csv and <map>.json.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Picture of the top 5 tasks, concepts and domains (.png or .svg), and FILE-slices.png|svg
    /// with the map over the MNI T1 at its peak. Several maps: FILE-<map>.png each.
    #[arg(long)]
    pub plot: Option<PathBuf>,
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
    #[command(flatten)]
    pub compute: Compute,
}

impl ModelArgs {
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
        for w in &decoder.warnings {
            eprintln!("warning: {w}");
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

impl DecodeArgs {
    fn variant(&self) -> Result<Variant> {
        let v = Variant {
            tail: self.tail,
            flip: self.flip,
            percentile: self.percentile,
        };
        v.check()?;
        Ok(v)
    }
}

pub fn run(a: DecodeArgs) -> Result<()> {
    a.compute.init_threads();
    a.compute.cpu_only("decode");
    let variant = a.variant()?;
    if let Some(p) = &a.plot {
        plot::check_plot_path(p)?;
    }
    if a.top == 0 {
        return Err(Error::Usage("--top must be at least 1".into()));
    }
    let (decoder, scale_note) = a.model.decoder()?;

    // Maps → atlas features, files in parallel (volumes of a 4D file too), one model.
    let bar = (a.maps.len() > 20).then(|| {
        let b = indicatif::ProgressBar::new(a.maps.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} maps ({per_sec}, eta {eta})",
            )
            .unwrap(),
        );
        b
    });
    let per_file: Vec<(Vec<f32>, usize)> = a
        .maps
        .par_iter()
        .map(|path| -> Result<(Vec<f32>, usize)> {
            let img = Image::read(path)?;
            let f = decoder.image_features(&img, &variant, path)?;
            if let Some(b) = &bar {
                b.inc(1);
            }
            Ok((f, img.n_vols))
        })
        .collect::<Result<_>>()?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let mut features = Vec::new();
    let mut names = Vec::new();
    let mut counts = Vec::new();
    for (path, (f, n)) in a.maps.iter().zip(per_file) {
        features.extend(f);
        names.extend(crate::decode::decoder::map_names(path, n));
        counts.push((path.clone(), n));
    }
    let decodings = decoder.decode_features(&features, names);
    let reports: Vec<MapReport> = decodings
        .iter()
        .map(|d| MapReport::new(&decoder, d, a.top))
        .collect();

    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match a.format {
        Format::Table => write_table(&mut out, &reports),
        Format::Csv => write_csv(&mut out, &reports),
        Format::Json => write_json(&mut out, &reports),
    }
    .map_err(|e| Error::io("stdout", e))?;
    std::io::Write::flush(&mut out).map_err(|e| Error::io("stdout", e))?;

    let stems = stems(&counts);
    if let Some(dir) = &a.out {
        for (r, stem) in reports.iter().zip(&stems) {
            write_map_files(dir, stem, r)?;
        }
        eprintln!("{} maps → {}", reports.len(), dir.display());
    }
    if let Some(file) = &a.plot {
        write_plots(
            &a,
            &decoder,
            &variant,
            &reports,
            &stems,
            &counts,
            file,
            &scale_note,
        )?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn write_plots(
    a: &DecodeArgs,
    decoder: &Decoder,
    variant: &Variant,
    reports: &[MapReport],
    stems: &[String],
    counts: &[(PathBuf, usize)],
    file: &Path,
    scale_note: &str,
) -> Result<()> {
    let n = reports.len();
    let mut i = 0;
    let variant_note = variant_note(a);
    for (path, n_vols) in counts {
        let img = Image::read(path)?;
        for v in 0..*n_vols {
            let (r, stem) = (&reports[i], &stems[i]);
            let target = plot::plot_path(file, stem, n);
            let subtitle = format!("{scale_note}{variant_note}");
            plot::save(&plot::bars_svg(r, &subtitle), &target)?;
            let vol = prepare_volume(decoder.atlas(), &img, v, variant, path)?;
            let svg = plot::slices_svg(
                &vol,
                &decoder.atlas().grid,
                &r.map,
                &format!("decoded map{variant_note} · "),
            )?;
            let slices = plot::slices_path(&target);
            plot::save(&svg, &slices)?;
            if n <= 5 {
                eprintln!("pictures → {} and {}", target.display(), slices.display());
            }
            i += 1;
        }
    }
    if n > 5 {
        eprintln!("{n} pairs of pictures beside {}", file.display());
    }
    Ok(())
}

fn variant_note(a: &DecodeArgs) -> String {
    let mut parts = Vec::new();
    if a.flip {
        parts.push("flipped".to_string());
    }
    match a.tail {
        Tail::Both => {}
        Tail::Positive => parts.push("positive tail".into()),
        Tail::Negative => parts.push("negative tail".into()),
    }
    if let Some(p) = a.percentile {
        parts.push(format!("top {p}% as ROI"));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}
