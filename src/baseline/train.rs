//! Training both baselines from a corpus file and a vocabulary.

use super::gclda::{self, Params};
use super::neurosynth;
use super::terms::{term_features, Analyzer, Match, Vocabulary, FREQUENCY_THRESHOLD};
use super::{Kind, ModelFile};
use crate::brain::mkda::{ma_map, MkdaKernel, Rounding, Scratch};
use crate::brain::Mask;
use crate::corpus::{Corpus, Section};
use crate::device::Device;
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::Path;

/// Settings shared by both baselines.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Text sections joined (newline) into each study's document.
    pub sections: Vec<Section>,
    pub matching: Match,
    /// MKDA sphere radius (mm), NiMARE's 10.
    pub radius: f64,
    pub rounding: Rounding,
    pub gclda: Params,
    /// Where the correlation decoder's counting and z-maps run.
    pub device: Device,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            sections: vec![Section::Title, Section::Abstract],
            matching: Match::Ngram,
            radius: 10.0,
            rounding: Rounding::Round,
            gclda: Params::default(),
            device: Device::Cpu,
        }
    }
}

/// What training saw, for the report.
#[derive(Debug, Default)]
pub struct TrainReport {
    pub studies: usize,
    pub studies_with_text: usize,
    pub studies_with_peaks: usize,
    pub terms_given: usize,
    /// Names with no content word, or sharing another name's content words.
    pub terms_merged_or_empty: usize,
    /// Terms no study (or every study) has: no map / no word.
    pub terms_without_studies: Vec<String>,
    pub terms_kept: usize,
}

/// Documents and term features of a corpus.
pub struct Features {
    pub ids: Vec<String>,
    /// Distinct reduced terms, each named by the first vocabulary name that reduces to it.
    pub names: Vec<String>,
    pub tfidf: Vec<f64>,
    pub counts: Vec<u32>,
}

pub fn features(
    corpus: &Corpus,
    vocabulary: &[String],
    opts: &TrainOptions,
    report: &mut TrainReport,
) -> Result<Features> {
    let analyzer = Analyzer::default();
    let vocab = Vocabulary::new(vocabulary, &analyzer);
    report.terms_given = vocabulary.len();
    report.terms_merged_or_empty = vocabulary.len() - vocab.keys.len();
    let mut names = vec![String::new(); vocab.keys.len()];
    for (name, col) in vocab.names.iter().zip(&vocab.column) {
        if let Some(c) = col {
            if names[*c].is_empty() {
                names[*c] = name.clone();
            }
        }
    }
    if vocab.keys.is_empty() {
        return Err(Error::Usage(
            "no vocabulary term has a content word (all are stop words); give task names".into(),
        ));
    }
    let mut docs = Vec::with_capacity(corpus.len());
    for i in 0..corpus.len() {
        let t = corpus.text(i)?;
        let parts: Vec<&str> = opts
            .sections
            .iter()
            .map(|s| t.get(*s).trim())
            .filter(|s| !s.is_empty())
            .collect();
        docs.push(parts.join("\n"));
    }
    report.studies = corpus.len();
    report.studies_with_text = docs.iter().filter(|d| !d.is_empty()).count();
    if report.studies_with_text == 0 {
        let secs: Vec<&str> = opts.sections.iter().map(|s| s.name()).collect();
        return Err(Error::input(
            corpus.path(),
            format!(
                "no study has text in {}; import texts (e.g. --text-jsonl) or choose other --section",
                secs.join(", ")
            ),
        ));
    }
    // Documents are the studies with text (sklearn's fit drops nothing, NiMARE drops empty
    // texts: idf counts only real documents); the others keep all-zero rows.
    let with_text: Vec<usize> = (0..docs.len()).filter(|&i| !docs[i].is_empty()).collect();
    let texts: Vec<String> = with_text
        .iter()
        .map(|&i| std::mem::take(&mut docs[i]))
        .collect();
    let f = term_features(&texts, &vocab, &analyzer, opts.matching);
    let k = vocab.keys.len();
    let mut tfidf = vec![0f64; corpus.len() * k];
    let mut counts = vec![0u32; corpus.len() * k];
    for (row, &i) in with_text.iter().enumerate() {
        tfidf[i * k..(i + 1) * k].copy_from_slice(&f.tfidf[row * k..(row + 1) * k]);
        counts[i * k..(i + 1) * k].copy_from_slice(&f.counts[row * k..(row + 1) * k]);
    }
    Ok(Features {
        ids: corpus.ids().to_vec(),
        names,
        tfidf,
        counts,
    })
}

/// Studies with peaks: their corpus indices and MNI peaks.
/// Corpus indices of the studies with peaks, and their peaks.
type WithPeaks = (Vec<usize>, Vec<Vec<[f64; 3]>>);

fn studies_with_peaks(corpus: &Corpus) -> Result<WithPeaks> {
    let idx: Vec<usize> = (0..corpus.len())
        .filter(|&i| corpus.peak_count(i) > 0)
        .collect();
    if idx.is_empty() {
        return Err(Error::input(
            corpus.path(),
            "no study has peaks; the baselines need coordinates",
        ));
    }
    let peaks = idx
        .iter()
        .map(|&i| corpus.peaks_of(i))
        .collect::<Result<Vec<_>>>()?;
    Ok((idx, peaks))
}

/// The Neurosynth correlation decoder's z-maps.
pub fn train_neurosynth(
    corpus: &Corpus,
    vocabulary: &[String],
    opts: &TrainOptions,
    report: &mut TrainReport,
) -> Result<ModelFile> {
    let f = features(corpus, vocabulary, opts, report)?;
    let k = f.names.len();
    let (idx, peaks) = studies_with_peaks(corpus)?;
    report.studies_with_peaks = idx.len();
    let mask = Mask::mni152_2mm();
    let kernel = MkdaKernel::for_grid(&mask.grid, opts.radius, opts.rounding);
    let ids = corpus.ids();
    let ma: Vec<Vec<u32>> = peaks
        .par_iter()
        .zip(idx.par_iter())
        .map_init(
            || Scratch::new(&mask.grid),
            |s, (p, &i)| ma_map(&kernel, &mask, p, &ids[i], s),
        )
        .collect::<Result<_>>()?;
    let n = idx.len();
    let mut kept = Vec::new();
    let mut selected = Vec::new();
    for t in 0..k {
        let sel: Vec<u32> = (0..n as u32)
            .filter(|&s| f.tfidf[idx[s as usize] * k + t] >= FREQUENCY_THRESHOLD)
            .collect();
        if sel.is_empty() || sel.len() == n {
            report.terms_without_studies.push(f.names[t].clone());
        } else {
            kept.push(f.names[t].clone());
            selected.push(sel);
        }
    }
    if kept.is_empty() {
        return Err(Error::Usage(
            "no vocabulary term occurs in the corpus texts (or every study has it): nothing to decode with; check the vocabulary and --section".into(),
        ));
    }
    report.terms_kept = kept.len();
    let total = neurosynth::active_totals(&ma, mask.len());
    let z = opts.device.z_maps(&ma, &total, &selected, mask.len())?;
    let params = serde_json::json!({
        "frequency_threshold": FREQUENCY_THRESHOLD,
        "match": opts.matching.name(),
        "sections": opts.sections.iter().map(|s| s.name()).collect::<Vec<_>>(),
        "radius": opts.radius,
        "rounding": format!("{:?}", opts.rounding).to_lowercase(),
        "studies_with_peaks": n,
        "selected": selected.iter().map(Vec::len).collect::<Vec<_>>(),
    });
    Ok(ModelFile {
        kind: Kind::Neurosynth,
        terms: kept,
        params,
        n_voxels: mask.len(),
        tensors: HashMap::new(),
        z: Some(z),
    })
}

/// GC-LDA's training data: word tokens from the term counts, peak tokens, over the studies with
/// peaks; words no study uses are dropped (as NiMARE does). Returns the data and word names.
pub fn gclda_data(
    corpus: &Corpus,
    vocabulary: &[String],
    opts: &TrainOptions,
    report: &mut TrainReport,
) -> Result<(gclda::Data, Vec<String>)> {
    let f = features(corpus, vocabulary, opts, report)?;
    let k = f.names.len();
    let (idx, peaks) = studies_with_peaks(corpus)?;
    report.studies_with_peaks = idx.len();
    let used: Vec<usize> = (0..k)
        .filter(|&t| idx.iter().any(|&i| f.counts[i * k + t] > 0))
        .collect();
    for t in (0..k).filter(|t| !used.contains(t)) {
        report.terms_without_studies.push(f.names[t].clone());
    }
    if used.is_empty() {
        return Err(Error::Usage(
            "no vocabulary term occurs in the texts of the studies with peaks; check the vocabulary and --section".into(),
        ));
    }
    report.terms_kept = used.len();
    let (mut wtoken_doc, mut wtoken_word) = (Vec::new(), Vec::new());
    for (d, &i) in idx.iter().enumerate() {
        for (w, &t) in used.iter().enumerate() {
            for _ in 0..f.counts[i * k + t] {
                wtoken_doc.push(d as u32);
                wtoken_word.push(w as u32);
            }
        }
    }
    let (mut ptoken_doc, mut coords) = (Vec::new(), Vec::new());
    for (d, p) in peaks.iter().enumerate() {
        for x in p {
            ptoken_doc.push(d as u32);
            coords.push(*x);
        }
    }
    let data = gclda::Data {
        n_docs: idx.len(),
        n_words: used.len(),
        wtoken_doc,
        wtoken_word,
        ptoken_doc,
        coords,
    };
    Ok((data, used.iter().map(|&t| f.names[t].clone()).collect()))
}

/// Fits GC-LDA and stores what decoding needs.
pub fn train_gclda(
    corpus: &Corpus,
    vocabulary: &[String],
    opts: &TrainOptions,
    report: &mut TrainReport,
    progress: impl FnMut(usize, [f64; 3]),
) -> Result<ModelFile> {
    let (data, words) = gclda_data(corpus, vocabulary, opts, report)?;
    let mut model = gclda::Model::new(opts.gclda.clone(), data)?;
    model.fit(progress)?;
    Ok(gclda_file(&model, words, opts))
}

/// The model file of a fitted GC-LDA model.
pub fn gclda_file(model: &gclda::Model, words: Vec<String>, opts: &TrainOptions) -> ModelFile {
    let (nt, nr) = (model.params.n_topics, model.params.n_regions);
    let r = &model.regions;
    let mut tensors = HashMap::new();
    tensors.insert(
        "regions_mu".into(),
        (vec![nt, nr, 3], r.mu.iter().flatten().copied().collect()),
    );
    tensors.insert(
        "regions_precision".into(),
        (
            vec![nt, nr, 3, 3],
            r.precision.iter().flatten().flatten().copied().collect(),
        ),
    );
    tensors.insert(
        "regions_log_norm".into(),
        (vec![nt, nr], r.log_norm.clone()),
    );
    tensors.insert(
        "n_word_tokens_word_by_topic".into(),
        (
            vec![words.len(), nt],
            model.n_word_word_topic.iter().map(|&c| c as f64).collect(),
        ),
    );
    tensors.insert(
        "loglikelihood".into(),
        (
            vec![model.loglikelihood.len(), 3],
            model.loglikelihood.iter().flatten().copied().collect(),
        ),
    );
    let params = serde_json::json!({
        "gclda": model.params,
        "match": opts.matching.name(),
        "sections": opts.sections.iter().map(|s| s.name()).collect::<Vec<_>>(),
        "documents": model.data.n_docs,
        "word_tokens": model.data.wtoken_word.len(),
        "peak_tokens": model.data.coords.len(),
    });
    ModelFile {
        kind: Kind::Gclda,
        terms: words,
        params,
        n_voxels: Mask::mni152_2mm().len(),
        tensors,
        z: None,
    }
}

/// Trains `kind` and writes the model file.
pub fn train(
    kind: Kind,
    corpus_path: &Path,
    vocabulary_path: &Path,
    out: &Path,
    opts: &TrainOptions,
    progress: impl FnMut(usize, [f64; 3]),
) -> Result<TrainReport> {
    let vocabulary = super::read_vocabulary(vocabulary_path)?;
    let corpus = Corpus::open(corpus_path)?;
    let mut report = TrainReport::default();
    let mf = match kind {
        Kind::Neurosynth => train_neurosynth(&corpus, &vocabulary, opts, &mut report)?,
        Kind::Gclda => train_gclda(&corpus, &vocabulary, opts, &mut report, progress)?,
    };
    mf.write(out)?;
    Ok(report)
}
