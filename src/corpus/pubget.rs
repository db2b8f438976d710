//! pubget output folders (`…_extractedData`): `metadata.csv` (`pmcid`, optional `pmid, doi,
//! title, journal, publication_year, license`) lists the studies; `coordinates.csv` (`pmcid, x,
//! y, z`, optional `table_id, table_label`) their peaks; `coordinate_space.csv` (`pmcid,
//! coordinate_space`: MNI, TAL or UNKNOWN) the space; `text.csv` (`pmcid`, optional `title,
//! keywords, abstract, body`) the texts (optional file).
//!
//! The study id is the PMCID (contrast `1`), as in pubget's own NiMARE export. `text.csv` is
//! streamed row by row, so its bodies are never all in memory.

use super::jsonl::{self, TextJoin};
use super::report::ImportReport;
use super::space::{to_mni, Space};
use super::table::{canonical_id, cell, coordinate, opt_cell, parse_year, Table};
use super::{one_input, CorpusWriter, Section, Study, StudyMeta, StudyText};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

const CSV: &[&str] = &[".csv", ".csv.gz"];

pub(crate) fn import<W: Write>(
    inputs: &[PathBuf],
    text_jsonl: Option<&Path>,
    writer: &mut CorpusWriter<'_, W>,
    report: &mut ImportReport,
) -> Result<()> {
    let meta_path = one_input(inputs, "metadata.csv", CSV, true, "pubget metadata.csv")?.unwrap();
    let coords_path = one_input(
        inputs,
        "coordinates.csv",
        CSV,
        true,
        "pubget coordinates.csv",
    )?
    .unwrap();
    let space_path = one_input(
        inputs,
        "coordinate_space.csv",
        CSV,
        true,
        "pubget coordinate_space.csv",
    )?
    .unwrap();
    let text_path = one_input(inputs, "text.csv", CSV, false, "pubget text.csv")?;
    report.sources = [&meta_path, &coords_path, &space_path]
        .into_iter()
        .chain(text_path.as_ref())
        .map(|p| p.display().to_string())
        .collect();

    let mut studies = read_metadata(&meta_path)?;
    let index: HashMap<String, usize> = studies
        .iter()
        .enumerate()
        .map(|(i, s)| (s.study.clone(), i))
        .collect();
    read_spaces(&space_path, &index, &mut studies, report)?;
    read_coordinates(&coords_path, &index, &mut studies, report)?;
    for s in studies.iter_mut() {
        to_mni(s.source_space, &mut s.peaks);
    }
    let mut join = jsonl::load_for(text_jsonl, studies.iter())?;

    let mut slots: Vec<Option<Study>> = studies.into_iter().map(Some).collect();
    if let Some(tp) = &text_path {
        stream_texts(tp, &index, &mut slots, &mut join, writer, report)?;
    } else {
        report.notice(
            "no text.csv: studies have their metadata title only",
            || format!("{}", inputs[0].display()),
        );
    }
    for s in slots.into_iter().flatten() {
        if text_path.is_some() {
            report.notice(
                "studies of metadata.csv without a text.csv row: kept with the metadata title",
                || format!("pmcid {}", s.study),
            );
        }
        emit(s, &mut join, writer, report)?;
    }
    report.join = join.map(|j| j.report);
    Ok(())
}

fn emit<W: Write>(
    mut s: Study,
    join: &mut Option<TextJoin>,
    writer: &mut CorpusWriter<'_, W>,
    report: &mut ImportReport,
) -> Result<()> {
    if let Some(j) = join.as_mut() {
        j.apply(&mut s, None);
    }
    if s.text.abstract_.trim().is_empty() && s.text.body.trim().is_empty() {
        report.notice(
            "studies with neither abstract nor body: kept (give texts with --text-jsonl)",
            || format!("pmcid {}", s.study),
        );
    }
    writer.push(s)
}

/// The pmcid of a row of a file that lists each article once (`seen`: pmcid → line).
fn unique_pmcid(
    path: &Path,
    line: u64,
    raw: &str,
    seen: &mut HashMap<String, u64>,
) -> Result<String> {
    let id = pmcid_of(path, line, raw)?;
    if let Some(prev) = seen.insert(id.clone(), line) {
        return Err(Error::input(
            path,
            format!(
                "line {line}: pmcid {id} already appears on line {prev}; each article must have \
                 one row (delete or merge the duplicate)"
            ),
        ));
    }
    Ok(id)
}

fn pmcid_of(path: &Path, line: u64, raw: &str) -> Result<String> {
    let id = canonical_id(raw);
    if id.is_empty() {
        return Err(Error::input(
            path,
            format!("line {line}: empty pmcid; give the article's PMCID or delete the row"),
        ));
    }
    Ok(id)
}

fn read_metadata(path: &Path) -> Result<Vec<Study>> {
    let mut t = Table::open(path, b',')?;
    let id = t.require(&["pmcid"], "a pubget metadata.csv")?[0];
    let (pmid, doi, title, journal, year, license) = (
        t.column("pmid"),
        t.column("doi"),
        t.column("title"),
        t.column("journal"),
        t.column("publication_year"),
        t.column("license"),
    );
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut studies = Vec::new();
    while let Some((line, rec)) = t.next()? {
        let sid = unique_pmcid(path, line, cell(rec, Some(id)), &mut seen)?;
        let mut meta = StudyMeta {
            pmid: opt_cell(rec, pmid).map(|s| canonical_id(&s)),
            pmcid: Some(sid.clone()),
            doi: opt_cell(rec, doi),
            journal: opt_cell(rec, journal),
            space: Space::Unknown,
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
        if let Some(l) = opt_cell(rec, license) {
            meta.extra.insert("license".into(), l.into());
        }
        studies.push(Study {
            study: sid,
            contrast: "1".into(),
            meta,
            source_space: Space::Unknown,
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
            "no study: no rows below the header; each metadata.csv row is an article (pmcid, …)",
        ));
    }
    Ok(studies)
}

fn read_spaces(
    path: &Path,
    index: &HashMap<String, usize>,
    studies: &mut [Study],
    report: &mut ImportReport,
) -> Result<()> {
    let mut t = Table::open(path, b',')?;
    let c = t.require(
        &["pmcid", "coordinate_space"],
        "a pubget coordinate_space.csv",
    )?;
    let mut seen: HashMap<String, u64> = HashMap::new();
    while let Some((line, rec)) = t.next()? {
        let sid = unique_pmcid(path, line, cell(rec, Some(c[0])), &mut seen)?;
        let raw = cell(rec, Some(c[1]));
        let space = Space::parse(raw).ok_or_else(|| {
            Error::input(
                path,
                format!(
                    "line {line}: unknown space {raw:?} for pmcid {sid}; use MNI, TAL or UNKNOWN \
                     (UNKNOWN coordinates are kept as MNI)"
                ),
            )
        })?;
        match index.get(&sid) {
            Some(&k) => {
                studies[k].meta.space = space;
                studies[k].source_space = space;
            }
            None => report.notice(
                "coordinate_space.csv rows whose pmcid is not in metadata.csv: ignored",
                || format!("{}:{line}: pmcid {sid}", path.display()),
            ),
        }
    }
    for s in studies.iter() {
        if !seen.contains_key(&s.study) {
            report.notice(
                "studies without a coordinate_space.csv row: UNKNOWN (kept as MNI)",
                || format!("{}: pmcid {}", path.display(), s.study),
            );
        }
    }
    Ok(())
}

fn read_coordinates(
    path: &Path,
    index: &HashMap<String, usize>,
    studies: &mut [Study],
    report: &mut ImportReport,
) -> Result<()> {
    let mut t = Table::open(path, b',')?;
    let c = t.require(&["pmcid", "x", "y", "z"], "a pubget coordinates.csv")?;
    while let Some((line, rec)) = t.next()? {
        let sid = pmcid_of(path, line, cell(rec, Some(c[0])))?;
        let p = [
            coordinate(path, line, "x", cell(rec, Some(c[1])))?,
            coordinate(path, line, "y", cell(rec, Some(c[2])))?,
            coordinate(path, line, "z", cell(rec, Some(c[3])))?,
        ];
        match index.get(&sid) {
            Some(&k) => studies[k].peaks.push(p),
            None => report.notice(
                "coordinate rows whose pmcid is not in metadata.csv: skipped (add the article to \
                 metadata.csv to keep them)",
                || format!("{}:{line}: pmcid {sid}", path.display()),
            ),
        }
    }
    Ok(())
}

fn stream_texts<W: Write>(
    path: &Path,
    index: &HashMap<String, usize>,
    slots: &mut [Option<Study>],
    join: &mut Option<TextJoin>,
    writer: &mut CorpusWriter<'_, W>,
    report: &mut ImportReport,
) -> Result<()> {
    let mut t = Table::open(path, b',')?;
    let id = t.require(&["pmcid"], "a pubget text.csv")?[0];
    let cols = [
        (Section::Title, t.column("title")),
        (Section::Keywords, t.column("keywords")),
        (Section::Abstract, t.column("abstract")),
        (Section::Body, t.column("body")),
    ];
    let mut seen: HashMap<String, u64> = HashMap::new();
    while let Some((line, rec)) = t.next()? {
        let sid = unique_pmcid(path, line, cell(rec, Some(id)), &mut seen)?;
        let Some(&k) = index.get(&sid) else {
            report.notice(
                "text.csv rows whose pmcid is not in metadata.csv: skipped (add the article to \
                 metadata.csv to keep them)",
                || format!("{}:{line}: pmcid {sid}", path.display()),
            );
            continue;
        };
        let mut s = slots[k].take().expect("each pmcid once");
        for (section, col) in cols {
            if let Some(v) = opt_cell(rec, col) {
                *s.text.get_mut(section) = v;
            }
        }
        emit(s, join, writer, report)?;
    }
    Ok(())
}
