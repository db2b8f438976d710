//! `niclip corpus merge`: the union of corpora, one study per id.
//!
//! Neurosynth and NeuroQuery overlap by thousands of articles (same PMID, hence the same id
//! `"<pmid>-1"`). The union keeps, for a shared id, the peaks and metadata of the corpus given
//! first, and fills the text sections it lacks from the later ones: a title-only Neurosynth
//! study gains the abstract another source joined.

use super::{report::Notice, Corpus, CorpusWriter, ImportReport, Section, Study};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What [`merge`] did, beside the usual import counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MergeReport {
    pub import: ImportReport,
    /// Studies of each input, in input order.
    pub per_input: Vec<usize>,
    /// Ids found in more than one input (counted once per later occurrence).
    pub shared: usize,
    /// Text sections filled from a later input.
    pub sections_filled: usize,
}

/// Writes the union of `inputs` to `out` atomically. The first input wins on peaks and
/// metadata; empty sections are filled from later inputs.
pub fn merge(inputs: &[PathBuf], out: &Path, compress: bool) -> Result<MergeReport> {
    if inputs.len() < 2 {
        return Err(Error::Usage(
            "give at least two corpora to merge (made by `niclip corpus import`)".into(),
        ));
    }
    if let Some(p) = inputs.iter().find(|p| p.as_path() == out) {
        return Err(Error::Usage(format!(
            "--out {} is also an input; write the union to another file",
            p.display()
        )));
    }
    let corpora = inputs
        .iter()
        .map(|p| Corpus::open(p))
        .collect::<Result<Vec<_>>>()?;

    // Owner of each id: the first input holding it; later holders only lend text.
    let mut owner: HashMap<&str, usize> = HashMap::new();
    let mut lenders: HashMap<&str, Vec<(usize, usize)>> = HashMap::new();
    let mut report = MergeReport::default();
    let mut first_shared = String::new();
    for (c, corpus) in corpora.iter().enumerate() {
        report.per_input.push(corpus.len());
        for (i, id) in corpus.ids().iter().enumerate() {
            if let Some(&first) = owner.get(id.as_str()) {
                if report.shared == 0 {
                    first_shared = format!(
                        "{id} in {} and {}",
                        inputs[first].display(),
                        inputs[c].display()
                    );
                }
                report.shared += 1;
                lenders.entry(id).or_default().push((c, i));
            } else {
                owner.insert(id, c);
            }
        }
    }

    let mut import = ImportReport::new("merge", inputs);
    let mut filled = 0usize;
    crate::io::write_atomic(out, |w| {
        let mut writer = CorpusWriter::new(w, out, compress)?;
        for (c, corpus) in corpora.iter().enumerate() {
            for (i, id) in corpus.ids().iter().enumerate() {
                if owner[id.as_str()] != c {
                    continue;
                }
                let mut study: Study = corpus.study(i)?;
                for &(lc, li) in lenders.get(id.as_str()).map(Vec::as_slice).unwrap_or(&[]) {
                    for s in Section::ALL {
                        if study.text.get(s).trim().is_empty() && corpora[lc].section_len(li, s) > 0
                        {
                            *study.text.get_mut(s) = corpora[lc].section(li, s)?;
                            filled += 1;
                        }
                    }
                }
                writer.push(study)?;
            }
        }
        if report.shared > 0 {
            import.notices.push(Notice {
                what: "id in several inputs: peaks and metadata of the first kept".into(),
                count: report.shared,
                first: first_shared.clone(),
            });
        }
        import = writer.finish(std::mem::take(&mut import))?;
        Ok(())
    })?;
    report.import = import;
    report.sections_filled = filled;
    Ok(report)
}
