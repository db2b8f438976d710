//! `niclip corpus import|merge|filter|sample|info|export`

use crate::corpus::{
    self, Corpus, Filter, Format, ImportOptions, Sample, SampleSize, Section, Space, SubsetReport,
};
use crate::error::Result;
use clap::{Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum CorpusCommand {
    /// Read articles (pubget CSVs, NiMARE JSON, Neurosynth/NeuroQuery TSVs) into a corpus file.
    Import(ImportArgs),
    /// The union of corpora, one study per id: the first corpus given wins on peaks and
    /// metadata, later ones fill the text sections it lacks.
    Merge(MergeArgs),
    /// The studies that pass every condition given (ids, years, space, peaks, text sections),
    /// copied whole in corpus order.
    Filter(FilterArgs),
    /// A uniform random sample of studies without replacement, in corpus order; the same
    /// --seed draws the same studies.
    Sample(SampleArgs),
    /// Counts of studies, peaks and texts by section.
    Info(InfoArgs),
    /// Write a corpus in another format (NiMARE dataset JSON).
    Export(ExportArgs),
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum ImportFormat {
    /// A pubget `_extractedData` folder (metadata.csv, coordinates.csv, coordinate_space.csv,
    /// text.csv) or those files.
    Pubget,
    /// NiMARE dataset JSON file(s), or a parquet studyset release folder.
    Nimare,
    /// Neurosynth folder or its *coordinates.tsv.gz and *metadata.tsv.gz files.
    Neurosynth,
    /// NeuroQuery folder or its *coordinates.tsv.gz and *metadata.tsv.gz files.
    Neuroquery,
    /// A NiMARE parquet studyset release folder (studyset.json, studies/analyses/coordinates
    /// .parquet): one study per analysis, the study's name and description as title and abstract.
    Studyset,
}

impl From<ImportFormat> for Format {
    fn from(f: ImportFormat) -> Format {
        match f {
            ImportFormat::Pubget => Format::Pubget,
            ImportFormat::Nimare => Format::Nimare,
            ImportFormat::Neurosynth => Format::Neurosynth,
            ImportFormat::Neuroquery => Format::Neuroquery,
            ImportFormat::Studyset => Format::Studyset,
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextCompression {
    Deflate,
    None,
}

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// Where the articles come from (the layout of the files given).
    #[arg(long, value_enum)]
    pub format: ImportFormat,
    /// The folder holding the files, or the files themselves.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// The corpus file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// JSONL (optionally .gz) with pmid/pmcid and title/keywords/abstract/body (or a labelbuddy
    /// `text`): fills the sections studies lack, matched by pmcid then pmid.
    #[arg(long)]
    pub text_jsonl: Option<PathBuf>,
    /// How texts are stored in the corpus file.
    #[arg(long, value_enum, default_value = "deflate")]
    pub text_compression: TextCompression,
}

#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// Corpus files made by `niclip corpus import`, in order of precedence.
    #[arg(required = true, num_args = 2..)]
    pub corpora: Vec<PathBuf>,
    /// The corpus file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// How texts are stored in the corpus file.
    #[arg(long, value_enum, default_value = "deflate")]
    pub text_compression: TextCompression,
}

#[derive(clap::Args, Debug)]
pub struct FilterArgs {
    /// A corpus file made by `niclip corpus import`.
    pub corpus: PathBuf,
    /// The corpus file to write (not CORPUS itself).
    #[arg(long)]
    pub out: PathBuf,
    /// Keep only the ids listed in this file: one a line, `<study>-<contrast>` or a bare study
    /// id; blank lines and `#` comments skipped; an id not in CORPUS is an error (file:line).
    #[arg(long)]
    pub ids: Option<PathBuf>,
    /// Drop the ids listed in this file (same format as --ids; unknown ids are errors too, so a
    /// typo cannot keep a study meant to be held out).
    #[arg(long)]
    pub exclude_ids: Option<PathBuf>,
    /// Keep studies published in or after this year (studies without a year are dropped).
    #[arg(long)]
    pub year_min: Option<i32>,
    /// Keep studies published in or before this year (studies without a year are dropped).
    #[arg(long)]
    pub year_max: Option<i32>,
    /// Keep studies whose source declared this space: MNI, TAL or UNKNOWN (repeat for several;
    /// peaks are MNI in every case).
    #[arg(long, value_parser = parse_space)]
    pub space: Vec<Space>,
    /// Keep studies with at least one peak.
    #[arg(long)]
    pub with_peaks: bool,
    /// Keep studies with a non-empty title | keywords | abstract | body (repeat to require
    /// several).
    #[arg(long)]
    pub with: Vec<Section>,
    /// How texts are stored in the corpus file.
    #[arg(long, value_enum, default_value = "deflate")]
    pub text_compression: TextCompression,
}

#[derive(clap::Args, Debug)]
pub struct SampleArgs {
    /// A corpus file made by `niclip corpus import`.
    pub corpus: PathBuf,
    /// The corpus file to write (not CORPUS itself).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of studies to draw.
    #[arg(
        long,
        conflicts_with = "fraction",
        required_unless_present = "fraction"
    )]
    pub n: Option<usize>,
    /// Share of the studies (of those with peaks under --with-peaks) to draw, in (0, 1],
    /// rounded to the nearest count.
    #[arg(long)]
    pub fraction: Option<f64>,
    /// Seeds the draw; for one seed a smaller sample is a subset of a larger one.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Draw only among the studies with at least one peak.
    #[arg(long)]
    pub with_peaks: bool,
    /// How texts are stored in the corpus file.
    #[arg(long, value_enum, default_value = "deflate")]
    pub text_compression: TextCompression,
}

/// MNI, TAL or UNKNOWN, any case (the names `corpus info` prints).
fn parse_space(s: &str) -> std::result::Result<Space, String> {
    Space::ALL
        .into_iter()
        .find(|sp| sp.name().eq_ignore_ascii_case(s.trim()))
        .ok_or_else(|| format!("unknown space {s:?}; use MNI, TAL or UNKNOWN"))
}

#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    /// A corpus file made by `niclip corpus import`.
    pub corpus: PathBuf,
    /// Print the counts as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum ExportFormat {
    /// NiMARE dataset JSON (loads with nimare.dataset.Dataset).
    Nimare,
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The format to write.
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// A corpus file made by `niclip corpus import`.
    pub corpus: PathBuf,
    /// The file to write (for nimare: a dataset .json).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(c: CorpusCommand) -> Result<()> {
    match c {
        CorpusCommand::Import(a) => import(a),
        CorpusCommand::Merge(a) => merge(a),
        CorpusCommand::Filter(a) => filter(a),
        CorpusCommand::Sample(a) => sample(a),
        CorpusCommand::Info(a) => info(a),
        CorpusCommand::Export(a) => export(a),
    }
}

fn import(a: ImportArgs) -> Result<()> {
    let t0 = std::time::Instant::now();
    let opts = ImportOptions {
        text_jsonl: a.text_jsonl,
        compress_text: a.text_compression == TextCompression::Deflate,
    };
    let report = corpus::import(a.format.into(), &a.paths, &a.out, &opts)?;
    eprint!("{report}");
    eprintln!(
        "wrote {} in {:.2} s",
        a.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn merge(a: MergeArgs) -> Result<()> {
    let t0 = std::time::Instant::now();
    let r = corpus::merge(
        &a.corpora,
        &a.out,
        a.text_compression == TextCompression::Deflate,
    )?;
    eprint!("{}", r.import);
    let inputs: Vec<String> = a
        .corpora
        .iter()
        .zip(&r.per_input)
        .map(|(p, n)| format!("{} {n}", p.display()))
        .collect();
    eprintln!(
        "  merged {}: {} ids shared, {} text sections filled from later inputs",
        inputs.join(", "),
        r.shared,
        r.sections_filled
    );
    eprintln!(
        "wrote {} in {:.2} s",
        a.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn filter(a: FilterArgs) -> Result<()> {
    let t0 = std::time::Instant::now();
    let f = Filter {
        ids: a.ids,
        exclude_ids: a.exclude_ids,
        year_min: a.year_min,
        year_max: a.year_max,
        spaces: a.space,
        with_peaks: a.with_peaks,
        with: a.with,
    };
    let deflate = a.text_compression == TextCompression::Deflate;
    let r = corpus::filter(&a.corpus, &a.out, &f, deflate)?;
    report_subset(&r, &a.out, t0);
    Ok(())
}

fn sample(a: SampleArgs) -> Result<()> {
    let t0 = std::time::Instant::now();
    let size = match (a.n, a.fraction) {
        (Some(n), _) => SampleSize::Count(n),
        (None, Some(f)) => SampleSize::Fraction(f),
        (None, None) => unreachable!("clap requires --n or --fraction"),
    };
    let s = Sample {
        size,
        seed: a.seed,
        with_peaks: a.with_peaks,
    };
    let deflate = a.text_compression == TextCompression::Deflate;
    let r = corpus::sample(&a.corpus, &a.out, &s, deflate)?;
    report_subset(&r, &a.out, t0);
    Ok(())
}

fn report_subset(r: &SubsetReport, out: &std::path::Path, t0: std::time::Instant) {
    eprintln!("{r}");
    eprintln!(
        "wrote {} in {:.2} s",
        out.display(),
        t0.elapsed().as_secs_f64()
    );
}

fn info(a: InfoArgs) -> Result<()> {
    let c = Corpus::open(&a.corpus)?;
    let s = c.stats();
    if a.json {
        let v = serde_json::json!({
            "path": a.corpus.display().to_string(),
            "stats": s,
            "import": c.import_report(),
        });
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        return Ok(());
    }
    println!("corpus     {}", a.corpus.display());
    println!("studies    {}", s.studies);
    println!(
        "peaks      {} (MNI mm; {} studies with peaks, {} without)",
        s.peaks,
        s.studies_with_peaks,
        s.studies - s.studies_with_peaks
    );
    for sp in Space::ALL {
        let n = match sp {
            Space::Mni => s.mni,
            Space::Tal => s.tal,
            Space::Unknown => s.unknown,
        };
        let how = match sp {
            Space::Mni => "",
            Space::Tal => " (converted to MNI)",
            Space::Unknown => " (kept as MNI)",
        };
        println!(
            "  {:<8} {} studies, {} peaks{how}",
            sp.name(),
            n.studies,
            n.peaks
        );
    }
    println!("texts      studies with a non-empty section (total size):");
    for sec in Section::ALL {
        println!(
            "  {:<8} {} ({:.1} MB)",
            sec.name(),
            s.sections.get(sec),
            s.section_bytes.get(sec) as f64 / 1e6
        );
    }
    println!("file       {:.1} MB", s.file_bytes as f64 / 1e6);
    if let Some(r) = c.import_report() {
        println!("imported   from {}: {}", r.format, r.sources.join(", "));
        if let Some(j) = &r.join {
            println!(
                "text join  {}: {} studies matched; gained title {}, keywords {}, abstract {}, body {}",
                j.file,
                j.studies_matched,
                j.gained.title,
                j.gained.keywords,
                j.gained.abstract_,
                j.gained.body
            );
        }
        for n in &r.notices {
            println!("note       {} × {}", n.count, n.what);
        }
    }
    Ok(())
}

fn export(a: ExportArgs) -> Result<()> {
    let c = Corpus::open(&a.corpus)?;
    match a.format {
        ExportFormat::Nimare => {
            let st = corpus::nimare::export(&c, &a.out)?;
            eprintln!(
                "wrote {}: {} studies, {} contrasts, {} peaks ({} contrasts without peaks have no coords)",
                a.out.display(),
                st.studies,
                st.contrasts,
                st.peaks,
                st.without_peaks
            );
        }
    }
    Ok(())
}
