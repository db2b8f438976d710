//! Texts joined from a JSONL file (`--text-jsonl`), one JSON object per line, by pmcid and
//! pmid.
//!
//! A record's ids are `pmid` and/or `pmcid` (numbers — pandas writes `36914701.0` —, strings,
//! `PMC…`, or null). Its sections come from the fields `title`, `keywords`, `abstract`, `body`;
//! sections still empty are taken from a `text` field holding a labelbuddy document as pubget
//! writes them (`# Title`, `# Keywords`, `# Abstract`, `# Body`, `# Table(s)` headings), or the
//! older `PMID… TITLE … ABSTRACT … BODY …` layout. The labelbuddy collection in
//! `../shared/data/corpus/labelbuddy` has both kinds, and one PMID may have two records (a full
//! text and a PubMed abstract): records of one study are merged section by section, records
//! with a body first.
//!
//! The join only fills sections a study lacks; the report counts what each section gained.
//! Only records whose ids occur in the corpus are kept in memory.

use super::report::{ImportReport, JoinReport};
use super::table::{canonical_id, is_missing, open_text, read_error};
use super::{CorpusWriter, Section, Study, StudyText};
use crate::error::{Error, Result};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::path::Path;

struct Record {
    text: StudyText,
    line: usize,
}

/// The matching records of a JSONL file, ready to fill studies' empty sections.
pub struct TextJoin {
    recs: Vec<Record>,
    by_pmid: HashMap<String, Vec<usize>>,
    by_pmcid: HashMap<String, Vec<usize>>,
    pub report: JoinReport,
}

/// An id cell of a JSON record as canonical digits.
fn json_id(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Some(u.to_string())
            } else {
                let f = n.as_f64()?;
                (f.is_finite() && f.fract() == 0.0 && f >= 0.0).then(|| format!("{}", f as u64))
            }
        }
        Value::String(s) if !is_missing(s) => Some(canonical_id(s)),
        _ => None,
    }
}

fn json_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.trim().to_string(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Writes a reader's `studies` in order, each first given the sections it lacks from the
/// `text_jsonl` file when there is one (`study_id_as_pmid` names a study's pmid of last
/// resort, see [`TextJoin::apply`]), and puts the join's counts in the report.
pub(crate) fn write_joined<W: Write>(
    studies: Vec<Study>,
    text_jsonl: Option<&Path>,
    study_id_as_pmid: impl Fn(&Study) -> Option<String>,
    writer: &mut CorpusWriter<'_, W>,
    report: &mut ImportReport,
) -> Result<()> {
    let mut join = load_for(text_jsonl, studies.iter())?;
    for mut s in studies {
        if let Some(j) = join.as_mut() {
            let fallback = study_id_as_pmid(&s);
            j.apply(&mut s, fallback.as_deref());
        }
        writer.push(s)?;
    }
    report.join = join.map(|j| j.report);
    Ok(())
}

/// Splits a labelbuddy document (pubget's template, or the `PMID… TITLE … ABSTRACT … BODY`
/// layout) into sections. Unknown layouts give empty sections.
pub fn split_document(text: &str) -> StudyText {
    let mut out = StudyText::default();
    if text.starts_with("PMID") {
        let find = |word: &str, from: usize| -> Option<(usize, usize)> {
            let pat = format!("  {word}  ");
            text.get(from..)?
                .find(&pat)
                .map(|i| (from + i, from + i + pat.len()))
        };
        if let Some((_, t_end)) = find("TITLE", 0) {
            let abs = find("ABSTRACT", t_end);
            let body = find("BODY", abs.map(|a| a.1).unwrap_or(t_end));
            let title_end = abs.or(body).map(|m| m.0).unwrap_or(text.len());
            out.title = text[t_end..title_end].trim().to_string();
            if let Some((_, a_end)) = abs {
                let a_stop = body.map(|m| m.0).unwrap_or(text.len());
                out.abstract_ = text[a_end..a_stop].trim().to_string();
            }
            if let Some((_, b_end)) = body {
                out.body = text[b_end..].trim().to_string();
            }
        }
        return out;
    }
    // pubget's template: headings on lines of their own.
    let mut heads: Vec<(Option<Section>, usize, usize)> = Vec::new();
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let section = match line.trim_end() {
            "# Title" => Some(Some(Section::Title)),
            "# Keywords" => Some(Some(Section::Keywords)),
            "# Abstract" => Some(Some(Section::Abstract)),
            "# Body" => Some(Some(Section::Body)),
            "# Table(s)" => Some(None),
            _ => None,
        };
        if let Some(s) = section {
            heads.push((s, pos, pos + line.len()));
        }
        pos += line.len();
    }
    for (k, (section, _, content)) in heads.iter().enumerate() {
        let end = heads.get(k + 1).map(|h| h.1).unwrap_or(text.len());
        if let Some(s) = section {
            let slot = out.get_mut(*s);
            if slot.is_empty() {
                *slot = text[*content..end].trim().to_string();
            }
        }
    }
    out
}

impl TextJoin {
    /// Reads `path`, keeping the records whose pmid is in `pmids` or pmcid in `pmcids`.
    pub fn load(path: &Path, pmids: &HashSet<String>, pmcids: &HashSet<String>) -> Result<Self> {
        let mut join = TextJoin {
            recs: Vec::new(),
            by_pmid: HashMap::new(),
            by_pmcid: HashMap::new(),
            report: JoinReport {
                file: path.display().to_string(),
                ..Default::default()
            },
        };
        let mut reader = open_text(path)?;
        let mut line = String::new();
        let mut n = 0usize;
        loop {
            line.clear();
            n += 1;
            match reader.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(read_error(path, Some(n as u64), &e)),
            }
            let l = line.trim();
            if l.is_empty() {
                continue;
            }
            let obj: serde_json::Map<String, Value> = serde_json::from_str(l).map_err(|e| {
                Error::input(
                    path,
                    format!(
                        "line {n}: not a JSON object ({e}); each line must be one object with \
                         pmid and/or pmcid and title/abstract/body (or a labelbuddy `text`)"
                    ),
                )
            })?;
            join.report.records += 1;
            let pmid = json_id(obj.get("pmid"));
            let pmcid = json_id(obj.get("pmcid"));
            if pmid.is_none() && pmcid.is_none() {
                join.report.records_without_id += 1;
                continue;
            }
            let mut text = StudyText {
                title: json_text(obj.get("title")),
                keywords: json_text(obj.get("keywords")),
                abstract_: json_text(obj.get("abstract")),
                body: json_text(obj.get("body")),
            };
            if let Some(Value::String(doc)) = obj.get("text") {
                if Section::ALL.iter().any(|s| text.get(*s).is_empty()) {
                    let parsed = split_document(doc);
                    for s in Section::ALL {
                        if text.get(s).is_empty() {
                            *text.get_mut(s) = parsed.get(s).to_string();
                        }
                    }
                }
            }
            if text.is_empty() {
                join.report.records_without_text += 1;
                continue;
            }
            let want_pmid = pmid.as_ref().filter(|p| pmids.contains(*p));
            let want_pmcid = pmcid.as_ref().filter(|p| pmcids.contains(*p));
            if want_pmid.is_none() && want_pmcid.is_none() {
                continue;
            }
            join.report.records_matched += 1;
            let k = join.recs.len();
            join.recs.push(Record { text, line: n });
            if let Some(p) = want_pmid {
                join.by_pmid.entry(p.clone()).or_default().push(k);
            }
            if let Some(p) = want_pmcid {
                join.by_pmcid.entry(p.clone()).or_default().push(k);
            }
        }
        Ok(join)
    }

    /// Fills the empty sections of `study` from its records (by pmcid, then pmid, then
    /// `study_id_as_pmid` when neither matched).
    pub fn apply(&mut self, study: &mut Study, study_id_as_pmid: Option<&str>) {
        let mut cands: Vec<usize> = Vec::new();
        if let Some(p) = &study.meta.pmcid {
            cands.extend(self.by_pmcid.get(p).into_iter().flatten());
        }
        if let Some(p) = &study.meta.pmid {
            cands.extend(self.by_pmid.get(p).into_iter().flatten());
        }
        if cands.is_empty() {
            if let Some(p) = study_id_as_pmid {
                cands.extend(self.by_pmid.get(p).into_iter().flatten());
                if !cands.is_empty() {
                    self.report.studies_matched_by_study_id += 1;
                }
            }
        }
        if cands.is_empty() {
            return;
        }
        cands.sort_unstable();
        cands.dedup();
        // Full texts first, then file order.
        cands.sort_by_key(|&k| (self.recs[k].text.body.is_empty(), self.recs[k].line));
        self.report.studies_matched += 1;
        if cands.len() > 1 {
            self.report.studies_multiple_records += 1;
        }
        for s in Section::ALL {
            if !study.text.get(s).trim().is_empty() {
                continue;
            }
            if let Some(&k) = cands
                .iter()
                .find(|&&k| !self.recs[k].text.get(s).is_empty())
            {
                *study.text.get_mut(s) = self.recs[k].text.get(s).to_string();
                self.report.gained.add(s, 1);
            }
        }
    }
}

/// Loads the join for `studies` when a JSONL file is given.
pub(crate) fn load_for<'a>(
    path: Option<&Path>,
    studies: impl Iterator<Item = &'a Study>,
) -> Result<Option<TextJoin>> {
    let Some(path) = path else { return Ok(None) };
    let mut pmids = HashSet::new();
    let mut pmcids = HashSet::new();
    for s in studies {
        if let Some(p) = &s.meta.pmid {
            pmids.insert(p.clone());
        }
        if let Some(p) = &s.meta.pmcid {
            pmcids.insert(p.clone());
        }
        if s.meta.pmid.is_none() && s.study.bytes().all(|b| b.is_ascii_digit()) {
            pmids.insert(s.study.clone());
        }
    }
    TextJoin::load(path, &pmids, &pmcids).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pubget_template() {
        let doc = "A, B\nJ, 2020\n\n# Title\n\nT\n\n# Keywords\n\nk1\nk2\n\n# Abstract\nAbs\n\n## Sub\nmore\n\n# Body\nBody text\n## Intro\nx\n\n# Table(s)\n## ID: T1\n";
        let t = split_document(doc);
        assert_eq!(t.title, "T");
        assert_eq!(t.keywords, "k1\nk2");
        assert_eq!(t.abstract_, "Abs\n\n## Sub\nmore");
        assert_eq!(t.body, "Body text\n## Intro\nx");
    }

    #[test]
    fn pmid_layout() {
        let doc = "PMID1        TITLE         A title        ABSTRACT           Some abstract.           BODY            Intro    text.";
        let t = split_document(doc);
        assert_eq!(t.title, "A title");
        assert_eq!(t.abstract_, "Some abstract.");
        assert_eq!(t.body, "Intro    text.");
    }
}
