//! NiMARE studyset releases in parquet (`"format": "nimare-studyset-parquet"`): a folder with
//! `studyset.json` and the tables `studies`, `analyses`, `coordinates` (and `metadata`,
//! `texts`, `annotations`, `images`, of which the texts and the metadata are used).
//!
//! As NiMARE 0.22.1's `Studyset.from_parquet` + `harmonize_space("mni152_2mm")`: one corpus
//! study per analysis, id `"<study_id>-<contrast_id>"`; the study's `name` is the title and its
//! `description` the abstract (the release's `texts` table may hold more sections: `title`,
//! `keywords`, `abstract`, `body` columns fill what the study lacks); coordinates are per
//! peak in `space` MNI (kept), TAL/Talairach (converted with `tal2mni`) or anything else
//! (kept untransformed, as NiMARE relabels unrecognised spaces; counted in the report).
//! Analyses without coordinates are kept without peaks. The metadata table's string columns
//! other than ids and texts are kept in each analysis's `extra` (the release's labels, such as
//! `matched_task_names`, live there); the annotations table is not read.

use super::jsonl;
use super::report::ImportReport;
use super::space::{tal2mni, Space};
use super::{CorpusWriter, Section, Study, StudyMeta, StudyText};
use crate::error::{Error, Result};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use parquet::schema::types::Type;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// True when `dir` looks like a parquet studyset release (so `--format nimare` can take it).
pub fn is_studyset_dir(dir: &Path) -> bool {
    dir.is_dir()
        && (dir.join("studyset.json").is_file()
            || (dir.join("studies.parquet").is_file() && dir.join("analyses.parquet").is_file()))
}

fn parquet_error(path: &Path) -> impl Fn(parquet::errors::ParquetError) -> Error + '_ {
    move |e| {
        Error::input(
            path,
            format!("not a readable parquet table ({e}); re-export the studyset release"),
        )
    }
}

fn open_table(path: &Path) -> Result<SerializedFileReader<std::fs::File>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    SerializedFileReader::new(file).map_err(parquet_error(path))
}

/// The names of a parquet table's top-level scalar columns (lists and structs left out).
fn scalar_columns(path: &Path) -> Result<Vec<String>> {
    let reader = open_table(path)?;
    let names = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .root_schema()
        .get_fields()
        .iter()
        .filter(|f| f.is_primitive())
        .map(|f| f.name().to_string())
        .collect();
    Ok(names)
}

/// The requested columns of a parquet table, row by row (`None` where a column is absent or
/// the cell is null).
fn read_table(path: &Path, columns: &[&str], required: &[&str]) -> Result<Vec<Vec<Option<Field>>>> {
    let bad = parquet_error(path);
    let reader = open_table(path)?;
    let root = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .root_schema();
    for r in required {
        if !root.get_fields().iter().any(|f| f.name() == *r) {
            return Err(Error::input(
                path,
                format!(
                    "no column {r:?}; a studyset table needs {}",
                    required.join(", ")
                ),
            ));
        }
    }
    let present: Vec<Arc<Type>> = root
        .get_fields()
        .iter()
        .filter(|f| columns.contains(&f.name()))
        .cloned()
        .collect();
    let slot: HashMap<String, usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), i))
        .collect();
    let projection = Type::group_type_builder("schema")
        .with_fields(present)
        .build()
        .map_err(&bad)?;
    let mut rows = Vec::with_capacity(reader.metadata().file_metadata().num_rows() as usize);
    for row in reader.get_row_iter(Some(projection)).map_err(&bad)? {
        let row = row.map_err(&bad)?;
        let mut out = vec![None; columns.len()];
        for (name, f) in row.get_column_iter() {
            if let Some(&i) = slot.get(name.as_str()) {
                if !matches!(f, Field::Null) {
                    out[i] = Some(f.clone());
                }
            }
        }
        rows.push(out);
    }
    Ok(rows)
}

/// A cell as text: strings as they are, numbers printed; empty and "nan" are absent.
fn text(f: &Option<Field>) -> Option<String> {
    let s = match f.as_ref()? {
        Field::Str(s) => s.trim().to_string(),
        Field::Double(x) if x.is_nan() => return None,
        other => other.to_string(),
    };
    (!s.is_empty() && s != "nan" && s != "None").then_some(s)
}

fn number(f: &Option<Field>) -> Option<f64> {
    match f.as_ref()? {
        Field::Double(x) => Some(*x),
        Field::Float(x) => Some(*x as f64),
        Field::Int(x) => Some(*x as f64),
        Field::Long(x) => Some(*x as f64),
        Field::Str(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn table_path(dir: &Path, manifest: &serde_json::Value, name: &str) -> PathBuf {
    let file = manifest
        .get("tables")
        .and_then(|t| t.get(name))
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| format!("{name}.parquet"));
    dir.join(file)
}

pub(crate) fn import<W: Write>(
    inputs: &[PathBuf],
    text_jsonl: Option<&Path>,
    writer: &mut CorpusWriter<'_, W>,
    report: &mut ImportReport,
) -> Result<()> {
    let [dir] = inputs else {
        return Err(Error::Usage(
            "a studyset is one folder (with studyset.json and the parquet tables); import one at a time".into(),
        ));
    };
    if !is_studyset_dir(dir) {
        return Err(Error::input(
            dir,
            "not a studyset release folder (no studyset.json, studies.parquet and \
             analyses.parquet); pass the folder that holds them",
        ));
    }
    let manifest = read_manifest(dir)?;
    let t = |n| table_path(dir, &manifest, n);
    report.sources = vec![dir.display().to_string()];
    let study_of = read_studies(&t("studies"))?;
    let (mut out, index) = read_analyses(&t("analyses"), &study_of)?;
    fill_texts(&t("texts"), &t("metadata"), &index, &mut out)?;
    let coords_path = t("coordinates");
    if coords_path.is_file() {
        read_coordinates(&coords_path, &index, &mut out, report)?;
    }
    for s in &out {
        if s.text.is_empty() {
            report.notice(
                "analyses without any text: kept (give texts with --text-jsonl)",
                || s.id(),
            );
        }
    }
    jsonl::write_joined(out, text_jsonl, |_| None, writer, report)
}

/// `studyset.json` (Null when absent), checked to be a parquet studyset release.
fn read_manifest(dir: &Path) -> Result<serde_json::Value> {
    let manifest_path = dir.join("studyset.json");
    let manifest: serde_json::Value = if manifest_path.is_file() {
        let bytes = std::fs::read(&manifest_path).map_err(|e| Error::io(&manifest_path, e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::input(&manifest_path, format!("not valid JSON ({e})")))?
    } else {
        serde_json::Value::Null
    };
    if let Some(f) = manifest.get("format").and_then(|v| v.as_str()) {
        if f != "nimare-studyset-parquet" {
            return Err(Error::input(
                &manifest_path,
                format!("format {f:?} is not \"nimare-studyset-parquet\"; this reader takes parquet studyset releases"),
            ));
        }
    }
    Ok(manifest)
}

/// The studies table: each study's metadata and texts (title, abstract) by study id.
fn read_studies(path: &Path) -> Result<HashMap<String, (StudyMeta, StudyText)>> {
    let studies = read_table(
        path,
        &["study_id", "name", "description", "authors", "publication"],
        &["study_id"],
    )?;
    let mut study_of: HashMap<String, (StudyMeta, StudyText)> = HashMap::new();
    for r in &studies {
        let Some(sid) = text(&r[0]) else {
            return Err(Error::input(
                path,
                "a study with an empty study_id; give every study an id",
            ));
        };
        let meta = StudyMeta {
            title: text(&r[1]),
            authors: text(&r[3]),
            journal: text(&r[4]),
            ..Default::default()
        };
        let txt = StudyText {
            title: text(&r[1]).unwrap_or_default(),
            abstract_: text(&r[2]).unwrap_or_default(),
            ..Default::default()
        };
        if study_of.insert(sid.clone(), (meta, txt)).is_some() {
            return Err(Error::input(
                path,
                format!("study_id {sid} appears twice; each study must appear once"),
            ));
        }
    }
    Ok(study_of)
}

/// The analyses table: one corpus study each, with its study's metadata and texts, and the
/// position of each analysis id (the `id` column, else `<study>-<contrast>`).
fn read_analyses(
    path: &Path,
    study_of: &HashMap<String, (StudyMeta, StudyText)>,
) -> Result<(Vec<Study>, HashMap<String, usize>)> {
    let analyses = read_table(
        path,
        &["id", "study_id", "contrast_id", "name"],
        &["study_id", "contrast_id"],
    )?;
    let mut out: Vec<Study> = Vec::with_capacity(analyses.len());
    let mut index: HashMap<String, usize> = HashMap::new();
    for r in &analyses {
        let (Some(sid), Some(cid)) = (text(&r[1]), text(&r[2])) else {
            return Err(Error::input(
                path,
                "an analysis with an empty study_id or contrast_id",
            ));
        };
        let Some((meta, txt)) = study_of.get(&sid) else {
            return Err(Error::input(
                path,
                format!("analysis {sid}-{cid} names study {sid}, which studies.parquet lacks"),
            ));
        };
        let mut meta = meta.clone();
        if let Some(name) = text(&r[3]) {
            meta.extra
                .insert("analysis_name".into(), serde_json::Value::String(name));
        }
        let s = Study {
            study: sid.clone(),
            contrast: cid.clone(),
            meta,
            source_space: Space::Unknown,
            text: txt.clone(),
            peaks: Vec::new(),
        };
        let key = text(&r[0]).unwrap_or_else(|| s.id());
        if index.insert(key, out.len()).is_some() {
            return Err(Error::input(
                path,
                format!("analysis {} appears twice", s.id()),
            ));
        }
        out.push(s);
    }
    Ok((out, index))
}

/// Metadata columns kept elsewhere: ids, keywords (a text section) and the study's title,
/// authors and journal (from studies.parquet).
const METADATA_NOT_EXTRA: [&str; 8] = [
    "id",
    "study_id",
    "contrast_id",
    "keywords",
    "name",
    "study_name",
    "authors",
    "journal",
];

/// The optional texts table's sections, the metadata table's keywords (where the analysis has
/// none yet) and its other string columns (in `extra`).
fn fill_texts(
    texts_path: &Path,
    meta_path: &Path,
    index: &HashMap<String, usize>,
    out: &mut [Study],
) -> Result<()> {
    if texts_path.is_file() {
        let names = ["id", "title", "keywords", "abstract", "body"];
        for r in read_table(texts_path, &names, &["id"])? {
            let Some(i) = text(&r[0]).and_then(|id| index.get(&id).copied()) else {
                continue;
            };
            for (k, sec) in Section::ALL.into_iter().enumerate() {
                if let Some(v) = text(&r[k + 1]) {
                    let slot = out[i].text.get_mut(sec);
                    if slot.is_empty() {
                        *slot = v;
                    }
                }
            }
        }
    }
    if meta_path.is_file() {
        // Every other string column goes to `extra`: the release's labels (such as
        // `matched_task_names`, the task each analysis was selected for) are only there.
        let others: Vec<String> = scalar_columns(meta_path)?
            .into_iter()
            .filter(|c| !METADATA_NOT_EXTRA.contains(&c.as_str()))
            .collect();
        let mut names = vec!["id", "keywords"];
        names.extend(others.iter().map(String::as_str));
        for r in read_table(meta_path, &names, &["id"])? {
            let Some(i) = text(&r[0]).and_then(|id| index.get(&id).copied()) else {
                continue;
            };
            if let Some(k) = text(&r[1]) {
                if out[i].text.keywords.is_empty() {
                    out[i].text.keywords = k;
                }
            }
            for (name, cell) in others.iter().zip(&r[2..]) {
                if let (Some(Field::Str(_)), Some(v)) = (cell, text(cell)) {
                    out[i]
                        .meta
                        .extra
                        .entry(name.clone())
                        .or_insert(serde_json::Value::String(v));
                }
            }
        }
    }
    Ok(())
}

/// The coordinates table: each peak converted to MNI from its own space and added to its
/// analysis.
fn read_coordinates(
    path: &Path,
    index: &HashMap<String, usize>,
    out: &mut [Study],
    report: &mut ImportReport,
) -> Result<()> {
    let rows = read_table(
        path,
        &["id", "x", "y", "z", "space"],
        &["id", "x", "y", "z"],
    )?;
    for (n, r) in rows.iter().enumerate() {
        let id = text(&r[0]).unwrap_or_default();
        let Some(&i) = index.get(&id) else {
            report.notice(
                "coordinates of analyses not in analyses.parquet: dropped (as NiMARE does)",
                || format!("{}: row {}: id {id}", path.display(), n + 1),
            );
            continue;
        };
        let xyz = [number(&r[1]), number(&r[2]), number(&r[3])];
        let [Some(x), Some(y), Some(z)] = xyz else {
            return Err(Error::input(
                path,
                format!("row {}: analysis {id} has a missing or non-numeric coordinate; fix or delete that peak", n + 1),
            ));
        };
        if let Some((v, why)) = [x, y, z]
            .into_iter()
            .find_map(|v| super::implausible_mm(v).map(|why| (v, why)))
        {
            return Err(Error::input(
                path,
                format!(
                    "row {}: analysis {id} has coordinate {v}, {why}; fix or delete that peak",
                    n + 1
                ),
            ));
        }
        let raw = text(&r[4]).unwrap_or_default();
        let space = match Space::parse(&raw) {
            Some(s) => s,
            None => {
                report.notice(
                    "peaks in an unrecognised space: kept untransformed (as NiMARE does)",
                    || format!("{}: row {}: space {raw:?}", path.display(), n + 1),
                );
                Space::Unknown
            }
        };
        let p = if space == Space::Tal {
            tal2mni([x, y, z])
        } else {
            [x, y, z]
        };
        let s = &mut out[i];
        if s.peaks.is_empty() {
            s.source_space = space;
            s.meta.space = space;
        } else if s.source_space != space {
            report.notice(
                "analyses with peaks in more than one space: each peak converted on its own",
                || format!("{}: analysis {id}", path.display()),
            );
        }
        s.peaks.push(p);
    }
    Ok(())
}
