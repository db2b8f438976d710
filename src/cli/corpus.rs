//! `niclip corpus import|info|export`

use crate::corpus::{self, Corpus, Format, ImportOptions, Section, Space};
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
