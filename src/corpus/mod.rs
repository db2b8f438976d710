//! Articles with text and activation peaks.
//!
//! A *corpus* is one file made by `niclip corpus import` from pubget folders, NiMARE dataset
//! JSON, or Neurosynth/NeuroQuery TSVs (optionally joined with texts from a JSONL file). Each
//! study is one NiMARE study-contrast: id `"<study>-<contrast>"` (Neurosynth, NeuroQuery and
//! pubget imports use contrast `1`: `"9065511-1"`), with
//! - peaks in MNI mm: Talairach ones converted on import with NiMARE's `tal2mni`
//!   ([`space::tal2mni`]), UNKNOWN ones kept as MNI (as NiMARE does);
//! - texts by [`Section`]: title, keywords, abstract, body;
//! - metadata ([`StudyMeta`]): pmid, pmcid, doi, title, year, journal, authors, the declared
//!   space, and any other field of the source (kept in `extra`).
//!
//! Corpus order is NiMARE's: ids sorted as strings. Studies without peaks are kept (their text
//! is useful) and counted; [`Corpus::peaks_all`] skips them and says how many.
//!
//! The file format is described in [`mod@file`]; readers are in [`neurosynth`], [`pubget`],
//! [`nimare`] (which also exports), and [`jsonl`] (the text join). [`mod@merge`] unites corpora;
//! [`mod@filter`] writes subsets (`corpus filter`, `corpus sample`).
//!
//! ```no_run
//! # fn main() -> niclip::Result<()> {
//! use niclip::corpus::{Corpus, Section};
//! let corpus = Corpus::open("neurosynth.corpus".as_ref())?;
//! let (peaks, skipped) = corpus.peaks_all()?;
//! for row in corpus.section_texts(Section::Abstract) {
//!     let (id, text) = row?;
//! }
//! # Ok(()) }
//! ```
//!
//! Hostile input: sizes and offsets read from a file go through checked arithmetic and are
//! bounded before any allocation (the rule, for every parser, in ARCHITECTURE.md).

pub mod file;
pub mod filter;
pub mod jsonl;
pub mod merge;
pub mod neurosynth;
pub mod nimare;
pub mod pubget;
pub mod report;
pub mod space;
pub mod studyset;
pub(crate) mod table;

pub use file::{Corpus, CorpusStats, CorpusWriter};
pub use filter::{filter, sample, Filter, Sample, SampleSize, Selection, SubsetReport};
pub use merge::{merge, MergeReport};
pub use report::{ImportReport, JoinReport, Notice, SectionCount, SpaceCount};
pub use space::{tal2mni, Space};

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The largest |coordinate| a corpus keeps, in mm. Brains span about ±100 mm: a peak far beyond
/// is a typo or garbage, and one of 1e20 mm snapped to a saturated voxel index in MKDA.
pub const MAX_ABS_MM: f64 = 1000.0;

/// Why `v` is no coordinate a corpus keeps (None when it is one: finite, within ±MAX_ABS_MM).
pub(crate) fn implausible_mm(v: f64) -> Option<&'static str> {
    if !v.is_finite() {
        Some("not a number")
    } else if v.abs() > MAX_ABS_MM {
        Some("beyond ±1000 mm of the origin (no brain coordinate)")
    } else {
        None
    }
}

/// A text section of an article.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Section {
    Title = 0,
    Keywords = 1,
    Abstract = 2,
    Body = 3,
}

impl Section {
    pub const ALL: [Section; 4] = [
        Section::Title,
        Section::Keywords,
        Section::Abstract,
        Section::Body,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Section::Title => "title",
            Section::Keywords => "keywords",
            Section::Abstract => "abstract",
            Section::Body => "body",
        }
    }
}

impl std::str::FromStr for Section {
    type Err = Error;
    fn from_str(s: &str) -> Result<Section> {
        Section::ALL
            .into_iter()
            .find(|x| x.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                Error::Usage(format!(
                    "unknown section {s:?}; use title, keywords, abstract or body"
                ))
            })
    }
}

impl std::fmt::Display for Section {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Per-study metadata. Ids are canonical digits (`PMC123` and pandas' `123.0` become `123`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StudyMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pmid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pmcid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doi: Option<String>,
    /// Also the `title` text section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub year: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authors: Option<String>,
    /// The space the source declared for the coordinates (they are stored MNI regardless).
    #[serde(default)]
    pub space: Space,
    /// Other metadata fields of the source, kept for export.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// The four text sections of a study ("" when absent).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StudyText {
    pub title: String,
    pub keywords: String,
    pub abstract_: String,
    pub body: String,
}

impl StudyText {
    pub fn get(&self, s: Section) -> &str {
        match s {
            Section::Title => &self.title,
            Section::Keywords => &self.keywords,
            Section::Abstract => &self.abstract_,
            Section::Body => &self.body,
        }
    }
    pub fn get_mut(&mut self, s: Section) -> &mut String {
        match s {
            Section::Title => &mut self.title,
            Section::Keywords => &mut self.keywords,
            Section::Abstract => &mut self.abstract_,
            Section::Body => &mut self.body,
        }
    }
    pub fn is_empty(&self) -> bool {
        Section::ALL.iter().all(|s| self.get(*s).trim().is_empty())
    }
}

/// One study-contrast as readers produce it and the writer stores it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Study {
    pub study: String,
    pub contrast: String,
    pub meta: StudyMeta,
    /// The space the coordinates had in this source (decides the conversion and the report).
    /// Usually `meta.space`; differs when re-importing an export (MNI coordinates of a study
    /// originally in TAL).
    pub source_space: Space,
    pub text: StudyText,
    /// MNI mm.
    pub peaks: Vec<[f64; 3]>,
}

impl Study {
    /// `"<study>-<contrast>"`, as NiMARE builds ids.
    pub fn id(&self) -> String {
        format!("{}-{}", self.study, self.contrast)
    }
}

/// Input formats of `niclip corpus import`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Pubget,
    Nimare,
    Neurosynth,
    Neuroquery,
    /// A NiMARE parquet studyset release folder.
    Studyset,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Pubget => "pubget",
            Format::Nimare => "nimare",
            Format::Neurosynth => "neurosynth",
            Format::Neuroquery => "neuroquery",
            Format::Studyset => "studyset",
        }
    }
}

/// Options of [`import`].
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// JSONL texts joined by pmid/pmcid (`--text-jsonl`).
    pub text_jsonl: Option<PathBuf>,
    /// Deflate each study's text record (default on).
    pub compress_text: bool,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            text_jsonl: None,
            compress_text: true,
        }
    }
}

/// Reads `inputs` in `format` and writes the corpus file `out` atomically.
pub fn import(
    format: Format,
    inputs: &[PathBuf],
    out: &Path,
    opts: &ImportOptions,
) -> Result<ImportReport> {
    if inputs.is_empty() {
        return Err(Error::Usage(
            "no input given; pass the folder or files to import".into(),
        ));
    }
    for p in inputs {
        if !p.exists() {
            return Err(Error::input(
                p,
                "no such file or folder; check the path given to `niclip corpus import`",
            ));
        }
        if p == out {
            return Err(Error::Usage(format!(
                "--out {} is also an input; write the corpus to another file",
                out.display()
            )));
        }
    }
    let mut result = None;
    crate::io::write_atomic(out, |w| {
        let mut writer = CorpusWriter::new(w, out, opts.compress_text)?;
        let mut report = ImportReport::new(format.name(), inputs);
        let jsonl = opts.text_jsonl.as_deref();
        match format {
            Format::Neurosynth | Format::Neuroquery => {
                neurosynth::import(inputs, jsonl, &mut writer, &mut report)?
            }
            Format::Pubget => pubget::import(inputs, jsonl, &mut writer, &mut report)?,
            // A parquet release folder under --format nimare is read as a studyset.
            Format::Nimare if inputs.iter().any(|p| studyset::is_studyset_dir(p)) => {
                studyset::import(inputs, jsonl, &mut writer, &mut report)?
            }
            Format::Nimare => nimare::import(inputs, jsonl, &mut writer, &mut report)?,
            Format::Studyset => studyset::import(inputs, jsonl, &mut writer, &mut report)?,
        }
        if writer.is_empty() {
            return Err(Error::input(
                &inputs[0],
                "no study found; check that these are the right files for --format",
            ));
        }
        result = Some(writer.finish(report)?);
        Ok(())
    })?;
    Ok(result.expect("finished"))
}

/// Files of a folder (or the given files) whose names contain `pattern` and end with one of
/// `suffixes`.
pub(crate) fn find_inputs(
    inputs: &[PathBuf],
    pattern: &str,
    suffixes: &[&str],
) -> Result<Vec<PathBuf>> {
    let fits = |name: &str| name.contains(pattern) && suffixes.iter().any(|s| name.ends_with(s));
    let mut found = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let rd = std::fs::read_dir(p).map_err(|e| Error::io(p, e))?;
            for entry in rd {
                let entry = entry.map_err(|e| Error::io(p, e))?;
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().to_string();
                if path.is_file() && fits(&name) && !name.starts_with('.') {
                    found.push(path);
                }
            }
        } else if p.file_name().is_some_and(|n| fits(&n.to_string_lossy())) {
            found.push(p.clone());
        }
    }
    found.sort();
    found.dedup();
    Ok(found)
}

/// Exactly one input named like `pattern`, or an error saying what is missing or ambiguous.
pub(crate) fn one_input(
    inputs: &[PathBuf],
    pattern: &str,
    suffixes: &[&str],
    required: bool,
    what: &str,
) -> Result<Option<PathBuf>> {
    let mut found = find_inputs(inputs, pattern, suffixes)?;
    // An exact name (pubget's `metadata.csv`) wins over longer ones.
    let exact: Vec<PathBuf> = found
        .iter()
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n == pattern || n.strip_suffix(".gz") == Some(pattern)
            })
        })
        .cloned()
        .collect();
    if exact.len() == 1 {
        found = exact;
    }
    match found.len() {
        0 if !required => Ok(None),
        0 => Err(Error::input(
            &inputs[0],
            format!(
                "no {what} file (a name containing {pattern:?} ending in {}) found; pass the \
                 folder that holds it or the file itself",
                suffixes.join(" or ")
            ),
        )),
        1 => Ok(found.into_iter().next()),
        _ => Err(Error::input(
            &inputs[0],
            format!(
                "several {what} files match {pattern:?}: {}; pass the files explicitly",
                found
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}
