//! Neurosynth (v7+) and NeuroQuery TSVs: `*coordinates.tsv[.gz]` (`id, x, y, z`, other columns
//! ignored) and `*metadata.tsv[.gz]` (`id`, optional `space, doi, title, authors, year,
//! journal`). As NiMARE's `convert_neurosynth_to_dict`: the metadata rows are the studies
//! (contrast `1`, the id is the PMID), a missing `space` column means UNKNOWN, peaks keep the
//! file's order. Unlike NiMARE, coordinate rows whose id is not in the metadata are counted in
//! the report rather than dropped silently.

use super::jsonl;
use super::report::ImportReport;
use super::space::{to_mni, Space};
use super::table::{canonical_id, cell, coordinate, opt_cell, parse_year, Table};
use super::{one_input, CorpusWriter, Study, StudyMeta, StudyText};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

const TSV: &[&str] = &[".tsv", ".tsv.gz", ".txt", ".txt.gz"];

pub(crate) fn import<W: Write>(
    inputs: &[PathBuf],
    text_jsonl: Option<&Path>,
    writer: &mut CorpusWriter<'_, W>,
    report: &mut ImportReport,
) -> Result<()> {
    let coords_path = one_input(inputs, "coordinates", TSV, true, "coordinates")?.unwrap();
    let meta_path = one_input(inputs, "metadata", TSV, true, "metadata")?.unwrap();
    report.sources = vec![
        coords_path.display().to_string(),
        meta_path.display().to_string(),
    ];
    let mut studies = read_metadata(&meta_path, report)?;
    let (rows, matched) = read_coordinates(&coords_path, &mut studies, report)?;
    if rows > 0 && matched == 0 {
        // Every row unmatched means the two files do not belong together: say which ones.
        return Err(Error::input(
            &meta_path,
            format!(
                "none of the {rows} coordinate rows of {} has an id listed here; give the \
                 metadata file of the same release as the coordinates",
                coords_path.display()
            ),
        ));
    }
    for s in &mut studies {
        to_mni(s.source_space, &mut s.peaks);
    }
    jsonl::write_joined(studies, text_jsonl, |_| None, writer, report)
}

fn read_metadata(path: &Path, report: &mut ImportReport) -> Result<Vec<Study>> {
    let mut t = Table::open(path, b'\t')?;
    let id = t.require(&["id"], "a Neurosynth/NeuroQuery metadata file")?[0];
    let col = |n: &str| t.column(n);
    let (space, doi, title, authors, year, journal) = (
        col("space"),
        col("doi"),
        col("title"),
        col("authors"),
        col("year"),
        col("journal"),
    );
    if space.is_none() {
        report.notice(
            "metadata without a space column: all studies UNKNOWN (kept as MNI), as NiMARE does",
            || format!("{}:1", path.display()),
        );
    }
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut studies = Vec::new();
    while let Some((line, rec)) = t.next()? {
        let sid = canonical_id(cell(rec, Some(id)));
        if sid.is_empty() {
            return Err(Error::input(
                path,
                format!("line {line}: empty id; give every study its PMID or delete the row"),
            ));
        }
        if let Some(prev) = seen.insert(sid.clone(), line) {
            return Err(Error::input(
                path,
                format!(
                    "line {line}: id {sid} already appears on line {prev}; each study must have \
                     one metadata row (delete or merge the duplicate)"
                ),
            ));
        }
        let sp = match space {
            None => Space::Unknown,
            Some(c) => {
                let raw = cell(rec, Some(c));
                Space::parse(raw).ok_or_else(|| {
                    Error::input(
                        path,
                        format!(
                            "line {line}: unknown space {raw:?}; use MNI, TAL or UNKNOWN \
                             (UNKNOWN coordinates are kept as MNI)"
                        ),
                    )
                })?
            }
        };
        let mut meta = StudyMeta {
            pmid: sid.bytes().all(|b| b.is_ascii_digit()).then(|| sid.clone()),
            doi: opt_cell(rec, doi),
            year: None,
            journal: opt_cell(rec, journal),
            authors: opt_cell(rec, authors),
            space: sp,
            ..Default::default()
        };
        if let Some(y) = opt_cell(rec, year) {
            match parse_year(&y) {
                Some(v) => meta.year = Some(v),
                None => {
                    meta.extra.insert("year".into(), y.into());
                }
            }
        }
        studies.push(Study {
            study: sid,
            contrast: "1".into(),
            meta,
            source_space: sp,
            text: StudyText {
                title: opt_cell(rec, title).unwrap_or_default(),
                ..Default::default()
            },
            peaks: Vec::new(),
        });
    }
    // Named here: the import's own "no study found" could only name the folder given.
    if studies.is_empty() {
        return Err(Error::input(
            path,
            "no study: no rows below the header; each metadata row is a study (id, space, …)",
        ));
    }
    Ok(studies)
}

/// Adds each coordinate row's peak to its study; returns (rows read, rows whose id matched).
fn read_coordinates(
    path: &Path,
    studies: &mut [Study],
    report: &mut ImportReport,
) -> Result<(u64, u64)> {
    let index: HashMap<String, usize> = studies
        .iter()
        .enumerate()
        .map(|(i, s)| (s.study.clone(), i))
        .collect();
    let mut t = Table::open(path, b'\t')?;
    let c = t.require(
        &["id", "x", "y", "z"],
        "a Neurosynth/NeuroQuery coordinates file",
    )?;
    let mut last: Option<(String, usize)> = None;
    let (mut rows, mut matched) = (0, 0);
    while let Some((line, rec)) = t.next()? {
        rows += 1;
        let raw_id = cell(rec, Some(c[0]));
        let p = [
            coordinate(path, line, "x", cell(rec, Some(c[1])))?,
            coordinate(path, line, "y", cell(rec, Some(c[2])))?,
            coordinate(path, line, "z", cell(rec, Some(c[3])))?,
        ];
        // Rows of one study are usually adjacent: skip the hash lookup then.
        let k = match &last {
            Some((prev, k)) if prev == raw_id => Some(*k),
            _ => {
                let sid = canonical_id(raw_id);
                let k = index.get(&sid).copied();
                if let Some(k) = k {
                    last = Some((raw_id.to_string(), k));
                }
                k
            }
        };
        match k {
            Some(k) => {
                matched += 1;
                studies[k].peaks.push(p)
            }
            None => report.notice(
                "coordinate rows whose id is not in the metadata file: skipped (add the study to \
                 the metadata to keep them)",
                || format!("{}:{line}: id {raw_id}", path.display()),
            ),
        }
    }
    Ok((rows, matched))
}
