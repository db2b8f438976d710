//! What an import did: counts, conversions, skipped rows and why, text-join statistics. Printed
//! to stderr by `niclip corpus import` and stored in the corpus file (shown by `corpus info`).

use super::Space;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;

/// Studies and peaks per declared space.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SpaceCount {
    pub studies: usize,
    pub peaks: usize,
}

/// Non-empty sections over the studies.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SectionCount {
    pub title: usize,
    pub keywords: usize,
    #[serde(rename = "abstract")]
    pub abstract_: usize,
    pub body: usize,
}

impl SectionCount {
    pub fn get(&self, s: super::Section) -> usize {
        use super::Section::*;
        match s {
            Title => self.title,
            Keywords => self.keywords,
            Abstract => self.abstract_,
            Body => self.body,
        }
    }
    pub(crate) fn add(&mut self, s: super::Section, n: usize) {
        use super::Section::*;
        match s {
            Title => self.title += n,
            Keywords => self.keywords += n,
            Abstract => self.abstract_ += n,
            Body => self.body += n,
        }
    }
}

/// Something in the input that was skipped or repaired, with a count and the first occurrence.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Notice {
    pub what: String,
    pub count: usize,
    /// `file:line: detail` of the first occurrence.
    pub first: String,
}

/// The statistics of `--text-jsonl`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct JoinReport {
    pub file: String,
    /// Lines holding a JSON object.
    pub records: usize,
    /// Records with neither a pmid nor a pmcid.
    pub records_without_id: usize,
    /// Records with no title, keywords, abstract nor body.
    pub records_without_text: usize,
    /// Records whose pmid or pmcid is in the corpus.
    pub records_matched: usize,
    /// Studies that found at least one record.
    pub studies_matched: usize,
    /// Studies matched by more than one record (their sections merged, full text first).
    pub studies_multiple_records: usize,
    /// Studies matched through the study id read as a PMID (NiMARE datasets without a pmid field).
    pub studies_matched_by_study_id: usize,
    /// Studies whose section was empty and got filled from the JSONL.
    pub gained: SectionCount,
}

/// The import report.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImportReport {
    pub format: String,
    pub sources: Vec<String>,
    pub studies: usize,
    pub peaks: usize,
    /// Studies kept without any peak (text only); peak-based commands skip them.
    pub studies_without_peaks: usize,
    /// As declared by the source: MNI kept, TAL converted with tal2mni, UNKNOWN kept as MNI.
    pub mni: SpaceCount,
    pub tal: SpaceCount,
    pub unknown: SpaceCount,
    pub sections: SectionCount,
    pub notices: Vec<Notice>,
    pub join: Option<JoinReport>,
}

impl ImportReport {
    pub fn new(format: &str, sources: &[impl AsRef<Path>]) -> Self {
        ImportReport {
            format: format.to_string(),
            sources: sources
                .iter()
                .map(|p| p.as_ref().display().to_string())
                .collect(),
            ..Default::default()
        }
    }

    pub fn space(&self, s: Space) -> SpaceCount {
        match s {
            Space::Mni => self.mni,
            Space::Tal => self.tal,
            Space::Unknown => self.unknown,
        }
    }

    pub(crate) fn space_mut(&mut self, s: Space) -> &mut SpaceCount {
        match s {
            Space::Mni => &mut self.mni,
            Space::Tal => &mut self.tal,
            Space::Unknown => &mut self.unknown,
        }
    }

    /// Counts one occurrence of `what`; `first` (file:line: detail) is kept for the first one.
    pub(crate) fn notice(&mut self, what: &str, first: impl FnOnce() -> String) {
        if let Some(n) = self.notices.iter_mut().find(|n| n.what == what) {
            n.count += 1;
        } else {
            self.notices.push(Notice {
                what: what.to_string(),
                count: 1,
                first: first(),
            });
        }
    }

    pub fn notice_count(&self, what_contains: &str) -> usize {
        self.notices
            .iter()
            .filter(|n| n.what.contains(what_contains))
            .map(|n| n.count)
            .sum()
    }
}

impl fmt::Display for ImportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "imported {} studies with {} peaks ({} from {})",
            self.studies,
            self.peaks,
            self.format,
            self.sources.join(", ")
        )?;
        let line = |f: &mut fmt::Formatter<'_>, name: &str, c: SpaceCount, how: &str| {
            writeln!(
                f,
                "  {name:<8} {:>7} studies {:>9} peaks  {how}",
                c.studies, c.peaks
            )
        };
        line(f, "MNI", self.mni, "kept")?;
        line(f, "TAL", self.tal, "converted to MNI (tal2mni, as NiMARE)")?;
        line(f, "UNKNOWN", self.unknown, "kept as MNI")?;
        writeln!(
            f,
            "  studies without peaks: {} (kept for their text; images and ma-map skip them)",
            self.studies_without_peaks
        )?;
        let s = &self.sections;
        writeln!(
            f,
            "  texts: title {}, keywords {}, abstract {}, body {}",
            s.title, s.keywords, s.abstract_, s.body
        )?;
        if let Some(j) = &self.join {
            writeln!(
                f,
                "  text join {}: {} records ({} without pmid/pmcid, {} without text), {} match the corpus",
                j.file, j.records, j.records_without_id, j.records_without_text, j.records_matched
            )?;
            writeln!(
                f,
                "    {} studies matched ({} by several records, {} by study id as PMID); gained: \
                 title {}, keywords {}, abstract {}, body {}",
                j.studies_matched,
                j.studies_multiple_records,
                j.studies_matched_by_study_id,
                j.gained.title,
                j.gained.keywords,
                j.gained.abstract_,
                j.gained.body
            )?;
        }
        for n in &self.notices {
            writeln!(f, "  note: {} × {} (first: {})", n.count, n.what, n.first)?;
        }
        Ok(())
    }
}
