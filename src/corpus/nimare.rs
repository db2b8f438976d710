//! NiMARE dataset JSON, read and written.
//!
//! Reading: `{study: {"metadata": {…}, "contrasts": {contrast: {"coords": {"space", "x", "y",
//! "z"}, "text": {"title"|"keywords"|"abstract"|"body": …}, "metadata": {…}}}}}`; one corpus
//! study per study-contrast, id `"<study>-<contrast>"` as NiMARE's `Dataset` builds it. Contrast
//! metadata overrides study metadata. Coordinates in TAL/Talairach are converted with
//! `tal2mni`, others kept (as `Dataset(target="mni152_2mm")` does). A contrast without
//! `coords` is kept without peaks. Duplicate study or contrast keys are errors (JSON parsers
//! usually keep the last silently).
//!
//! Writing ([`export`]): the same layout, loadable by NiMARE 0.22.1's `Dataset`; coordinates in
//! MNI (`"space": "MNI"`) with the declared space in the contrast metadata as
//! `space_original`; a study without peaks gets no `coords` (NiMARE 0.22.1 fails on empty
//! coordinate lists); the texts that are not empty.

use super::jsonl;
use super::report::ImportReport;
use super::space::{to_mni, Space};
use super::table::{canonical_id, parse_year};
use super::{Corpus, CorpusWriter, Section, Study, StudyMeta, StudyText};
use crate::error::{Error, IoContext, Result};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

/// A JSON object read in file order, refusing duplicate keys.
struct Entries<T>(Vec<(String, T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Entries<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Entries<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object keyed by id")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Entries<T>, A::Error> {
                let mut out: Vec<(String, T)> = Vec::new();
                let mut seen = HashSet::new();
                while let Some(k) = m.next_key::<String>()? {
                    if !seen.insert(k.clone()) {
                        return Err(serde::de::Error::custom(format!(
                            "duplicate id {k:?}: each id must appear once (merge or rename the \
                             duplicates)"
                        )));
                    }
                    let v = m.next_value::<T>()?;
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

#[derive(Deserialize)]
struct NimStudy {
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    contrasts: Entries<NimContrast>,
}

#[derive(Deserialize)]
struct NimContrast {
    #[serde(default)]
    coords: Option<NimCoords>,
    #[serde(default)]
    text: Option<Map<String, Value>>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    #[serde(default)]
    labels: Option<Map<String, Value>>,
    #[serde(default)]
    images: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct NimCoords {
    #[serde(default)]
    space: Option<Value>,
    #[serde(default)]
    x: Vec<Value>,
    #[serde(default)]
    y: Vec<Value>,
    #[serde(default)]
    z: Vec<Value>,
}

fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => {
            let t = s.trim();
            (!t.is_empty() && t != "None" && t != "nan").then(|| t.to_string())
        }
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        other => Some(other.to_string()),
    }
}

fn value_id(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(match n.as_u64() {
            Some(u) => u.to_string(),
            None => canonical_id(&n.to_string()),
        }),
        other => value_text(other).map(|s| canonical_id(&s)),
    }
}

fn coordinate(path: &Path, where_: &str, axis: &str, k: usize, v: &Value) -> Result<f64> {
    let f = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    let why = match f.map(|f| (f, super::implausible_mm(f))) {
        Some((f, None)) => return Ok(f),
        Some((_, Some(why))) => why,
        None => "not a number",
    };
    Err(Error::input(
        path,
        format!("{where_}: coords.{axis}[{k}] is {v}, {why}; fix or delete that peak"),
    ))
}

/// The merged study and contrast metadata: the known fields, the `title` (a text section
/// here) and the `space_original` a niclip export records; the rest kept in `extra`.
fn read_meta(md: Map<String, Value>) -> (StudyMeta, Option<String>, Option<Space>) {
    let mut meta = StudyMeta::default();
    let mut title_md = None;
    let mut original = None;
    for (k, v) in md {
        match k.as_str() {
            "pmid" => meta.pmid = value_id(&v),
            "pmcid" => meta.pmcid = value_id(&v),
            "doi" => meta.doi = value_text(&v),
            "journal" => meta.journal = value_text(&v),
            "authors" => meta.authors = value_text(&v),
            "title" => title_md = value_text(&v),
            "year" => match value_text(&v).as_deref().and_then(parse_year) {
                Some(y) => meta.year = Some(y),
                None if v.is_null() => {}
                None => {
                    meta.extra.insert(k, v);
                }
            },
            "space_original" => original = value_text(&v).and_then(|s| Space::parse(&s)),
            _ => {
                meta.extra.insert(k, v);
            }
        }
    }
    (meta, title_md, original)
}

/// A contrast's `coords`: their declared space and the peaks as given (not yet converted).
fn read_coords(path: &Path, where_: &str, co: NimCoords) -> Result<(Space, Vec<[f64; 3]>)> {
    let raw_space = co.space.as_ref().and_then(value_text).unwrap_or_default();
    let space = Space::parse(&raw_space).ok_or_else(|| {
        Error::input(
            path,
            format!(
                "{where_}: unknown coords.space {raw_space:?}; use MNI, TAL or UNKNOWN \
                 (UNKNOWN coordinates are kept as MNI)"
            ),
        )
    })?;
    if co.x.len() != co.y.len() || co.x.len() != co.z.len() {
        return Err(Error::input(
            path,
            format!(
                "{where_}: coords.x, y, z have {}, {}, {} values; give one x, y and z per peak",
                co.x.len(),
                co.y.len(),
                co.z.len()
            ),
        ));
    }
    let mut peaks = Vec::with_capacity(co.x.len());
    for k in 0..co.x.len() {
        peaks.push([
            coordinate(path, where_, "x", k, &co.x[k])?,
            coordinate(path, where_, "y", k, &co.y[k])?,
            coordinate(path, where_, "z", k, &co.z[k])?,
        ]);
    }
    Ok((space, peaks))
}

fn convert(
    path: &Path,
    study_id: &str,
    contrast_id: &str,
    study_meta: &Option<Map<String, Value>>,
    c: NimContrast,
    report: &mut ImportReport,
) -> Result<Study> {
    let where_ = format!("study {study_id:?} contrast {contrast_id:?}");
    if c.labels.as_ref().is_some_and(|l| !l.is_empty()) {
        report.notice(
            "contrasts with labels (annotations): not kept in the corpus (texts are)",
            || format!("{}: {where_}", path.display()),
        );
    }
    if c.images.as_ref().is_some_and(|l| !l.is_empty()) {
        report.notice(
            "contrasts with images: not kept in the corpus (peaks are)",
            || format!("{}: {where_}", path.display()),
        );
    }
    let mut md: Map<String, Value> = study_meta.clone().unwrap_or_default();
    for (k, v) in c.metadata.unwrap_or_default() {
        md.insert(k, v);
    }
    let (mut meta, title_md, original) = read_meta(md);
    let mut text = StudyText::default();
    for (k, v) in c.text.unwrap_or_default() {
        let section = Section::ALL.into_iter().find(|s| s.name() == k);
        match section {
            Some(s) => *text.get_mut(s) = value_text(&v).unwrap_or_default(),
            None => report.notice(
                "text fields other than title, keywords, abstract, body: ignored",
                || format!("{}: {where_}: text.{k}", path.display()),
            ),
        }
    }
    if text.title.is_empty() {
        text.title = title_md.unwrap_or_default();
    }
    if text.is_empty() {
        report.notice(
            "contrasts without any text (title, keywords, abstract, body): kept (give texts \
             with --text-jsonl)",
            || format!("{}: {where_}", path.display()),
        );
    }
    let (space, mut peaks) = match c.coords {
        Some(co) => read_coords(path, &where_, co)?,
        None => (Space::Unknown, Vec::new()),
    };
    to_mni(space, &mut peaks);
    meta.space = space;
    // A niclip export: MNI coordinates of a study declared in another space originally.
    if let Some(orig) = original {
        meta.space = orig;
    }
    Ok(Study {
        study: study_id.to_string(),
        contrast: contrast_id.to_string(),
        meta,
        source_space: space,
        text,
        peaks,
    })
}

pub(crate) fn import<W: Write>(
    inputs: &[PathBuf],
    text_jsonl: Option<&Path>,
    writer: &mut CorpusWriter<'_, W>,
    report: &mut ImportReport,
) -> Result<()> {
    let files = input_files(inputs)?;
    report.sources = files.iter().map(|p| p.display().to_string()).collect();
    let mut studies: Vec<Study> = Vec::new();
    let mut ids: HashMap<String, PathBuf> = HashMap::new();
    for path in &files {
        read_file(path, report, |s| {
            if let Some(prev) = ids.insert(s.id(), path.clone()) {
                return Err(Error::input(
                    path,
                    format!(
                        "study-contrast id {} is also in {}; ids must be unique across the \
                         inputs (rename one)",
                        s.id(),
                        prev.display()
                    ),
                ));
            }
            studies.push(s);
            Ok(())
        })?;
    }
    // A study id of digits is a PMID when the metadata gives none (NiMARE's own datasets).
    let study_id_as_pmid = |s: &Study| {
        (s.meta.pmid.is_none() && s.study.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.study.clone())
    };
    jsonl::write_joined(studies, text_jsonl, study_id_as_pmid, writer, report)
}

/// The JSON files: those given, and the `.json[.gz]` files of the folders given.
fn input_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let found =
                super::find_inputs(std::slice::from_ref(p), ".json", &[".json", ".json.gz"])?;
            if found.is_empty() {
                return Err(Error::input(
                    p,
                    "no .json file in this folder; pass the NiMARE dataset JSON file itself",
                ));
            }
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}

/// What a dataset JSON holds, for an error message.
const LAYOUT: &str = "a NiMARE dataset JSON maps study ids to {\"metadata\": {…}, \"contrasts\": \
    {contrast id: {\"coords\": {\"space\", \"x\", \"y\", \"z\"}, \"text\": {…}, \
    \"metadata\": {…}}}}";

/// Hands each study-contrast of one dataset JSON file to `take`, in file order.
fn read_file(
    path: &Path,
    report: &mut ImportReport,
    mut take: impl FnMut(Study) -> Result<()>,
) -> Result<()> {
    let reader = super::table::open_text(path)?;
    let mut de = serde_json::Deserializer::from_reader(reader);
    let data = Entries::<NimStudy>::deserialize(&mut de)
        .and_then(|d| de.end().map(|_| d))
        .map_err(|e| {
            let hint = if e.is_io() {
                "cannot read it (if gzip-compressed it may be corrupt: check with `gzip -t`)"
            } else {
                LAYOUT
            };
            Error::input(path, format!("{e}; {hint}"))
        })?;
    for (sid, st) in data.0 {
        let study_meta = st.metadata;
        for (cid, c) in st.contrasts.0 {
            take(convert(path, &sid, &cid, &study_meta, c, report)?)?;
        }
    }
    Ok(())
}

/// What [`export`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportStats {
    pub studies: usize,
    pub contrasts: usize,
    pub peaks: usize,
    pub without_peaks: usize,
}

fn meta_json(meta: &StudyMeta, title: &str, with_space: bool) -> Map<String, Value> {
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.to_string(), v);
        }
    };
    put("authors", meta.authors.clone().map(Value::from));
    put("journal", meta.journal.clone().map(Value::from));
    put("year", meta.year.map(Value::from));
    put(
        "title",
        (!title.is_empty()).then(|| Value::from(title.to_string())),
    );
    put("pmid", meta.pmid.clone().map(Value::from));
    put("pmcid", meta.pmcid.clone().map(Value::from));
    put("doi", meta.doi.clone().map(Value::from));
    if with_space {
        put("space_original", Some(Value::from(meta.space.name())));
        for (k, v) in &meta.extra {
            m.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    m
}

/// Writes `corpus` as a NiMARE dataset JSON at `out` (atomically), one study at a time.
pub fn export(corpus: &Corpus, out: &Path) -> Result<ExportStats> {
    // Group contrasts by study, in corpus order of the first contrast.
    let mut order: Vec<&str> = Vec::new();
    let mut groups: HashMap<&str, Vec<usize>> = HashMap::new();
    for i in 0..corpus.len() {
        let s = corpus.study_of(i);
        groups
            .entry(s)
            .or_insert_with(|| {
                order.push(s);
                Vec::new()
            })
            .push(i);
    }
    let mut stats = ExportStats::default();
    crate::io::write_atomic(out, |w| {
        w.write_all(b"{").at(out)?;
        for (n, sid) in order.iter().enumerate() {
            if n > 0 {
                w.write_all(b",\n").at(out)?;
            } else {
                w.write_all(b"\n").at(out)?;
            }
            let mut contrasts = Map::new();
            let mut study_md = Map::new();
            for &i in &groups[sid] {
                let meta = corpus.meta(i)?;
                let text = corpus.text(i)?;
                let peaks = corpus.peaks_of(i)?;
                if study_md.is_empty() {
                    study_md = meta_json(&meta, &text.title, false);
                }
                let mut c = Map::new();
                if !peaks.is_empty() {
                    c.insert(
                        "coords".into(),
                        json!({
                            "space": "MNI",
                            "x": peaks.iter().map(|p| p[0]).collect::<Vec<_>>(),
                            "y": peaks.iter().map(|p| p[1]).collect::<Vec<_>>(),
                            "z": peaks.iter().map(|p| p[2]).collect::<Vec<_>>(),
                        }),
                    );
                } else {
                    stats.without_peaks += 1;
                }
                let mut t = Map::new();
                for s in Section::ALL {
                    let v = text.get(s);
                    if !v.is_empty() {
                        t.insert(s.name().into(), Value::from(v));
                    }
                }
                c.insert("text".into(), Value::Object(t));
                c.insert(
                    "metadata".into(),
                    Value::Object(meta_json(&meta, &text.title, true)),
                );
                contrasts.insert(corpus.contrast_of(i).to_string(), Value::Object(c));
                stats.contrasts += 1;
                stats.peaks += peaks.len();
            }
            serde_json::to_writer(&mut *w, sid).map_err(|e| Error::io(out, e.into()))?;
            w.write_all(b": ").at(out)?;
            let study = json!({"metadata": study_md, "contrasts": contrasts});
            serde_json::to_writer(&mut *w, &study).map_err(|e| Error::io(out, e.into()))?;
            stats.studies += 1;
        }
        w.write_all(b"\n}\n").at(out)?;
        Ok(())
    })?;
    Ok(stats)
}
