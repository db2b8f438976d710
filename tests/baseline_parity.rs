//! The baselines against NiMARE 0.22.1 on the real n-back/flanker studyset
//! (fixtures: tests/fixtures/make_baseline_fixtures.py).

mod common;

use niclip::baseline::gclda::{Model, Params};
use niclip::baseline::train::{features, gclda_data, train_neurosynth, TrainOptions, TrainReport};
use niclip::baseline::{read_vocabulary, Decoder};
use niclip::brain::Mask;
use niclip::corpus::Corpus;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const MAPS: [&str; 4] = [
    "neurosynth_medial_motor.nii.gz",
    "neurosynth_vmPFC.nii.gz",
    "nimare_amygdala_roi.nii.gz",
    "neurovault_10426_motor_left-vs-right_zmap.nii.gz",
];

fn fix() -> PathBuf {
    common::fixtures().join("baseline")
}

/// The studyset imported once per test binary.
fn studyset(data: &Path) -> PathBuf {
    static ONCE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let out = common::tmpdir("studyset").join("nf.corpus");
        let dir = data.join("corpus/nimare/nback_vs_flanker_studyset_2026-07");
        common::niclip(&[
            "corpus",
            "import",
            "--format",
            "studyset",
            dir.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        out
    })
    .clone()
}

fn read_csv(path: &Path) -> Vec<Vec<String>> {
    let mut r = csv::Reader::from_path(path).unwrap();
    r.records()
        .map(|x| x.unwrap().iter().map(str::to_string).collect())
        .collect()
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn maps_on_mask(data: &Path, mask: &Mask) -> Vec<Vec<f32>> {
    MAPS.iter()
        .map(|m| {
            mask.values_of(&data.join("maps").join(m))
                .unwrap()
                .remove(0)
        })
        .collect()
}

#[test]
fn tfidf_of_the_vocabulary_equals_scikit_learn() {
    let Some(data) = common::need_data() else {
        return;
    };
    let corpus = Corpus::open(&studyset(&data)).unwrap();
    let vocab = read_vocabulary(&fix().join("vocabulary.txt")).unwrap();
    let f = features(
        &corpus,
        &vocab,
        &TrainOptions::default(),
        &mut TrainReport::default(),
    )
    .unwrap();
    let k = f.names.len();
    // sklearn's nonzero entries, keyed by (id, reduced term): our columns are named by the
    // first vocabulary name of each reduced term, so map names to reduced forms.
    let a = niclip::baseline::terms::Analyzer::default();
    let col: HashMap<String, usize> = f
        .names
        .iter()
        .enumerate()
        .map(|(j, n)| (a.tokens(n).join(" "), j))
        .collect();
    let row: HashMap<&str, usize> = f
        .ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let mut expected = vec![0f64; f.ids.len() * k];
    for r in read_csv(&fix().join("tfidf.csv")) {
        let (i, j) = (row[r[0].as_str()], col[&r[1]]);
        expected[i * k + j] = r[2].parse().unwrap();
    }
    let nnz = expected.iter().filter(|&&x| x != 0.0).count();
    let err = f
        .tfidf
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    eprintln!(
        "tf-idf: {} studies × {k} terms, {nnz} non-zero, max |Δ| = {err:.2e}",
        f.ids.len()
    );
    assert!(nnz > 1000);
    assert!(err < 1e-12, "max |Δ| = {err}");
}

#[test]
fn correlation_decoder_equals_nimare_mkdachi2() {
    let Some(data) = common::need_data() else {
        return;
    };
    let corpus = Corpus::open(&studyset(&data)).unwrap();
    let vocab = read_vocabulary(&fix().join("vocabulary.txt")).unwrap();
    let mf = train_neurosynth(
        &corpus,
        &vocab,
        &TrainOptions::default(),
        &mut TrainReport::default(),
    )
    .unwrap();
    let theirs = lines(&fix().join("ns_terms.txt"));
    let mut a = mf.terms.clone();
    let mut b = theirs.clone();
    a.sort();
    b.sort();
    assert_eq!(a, b, "the kept terms differ from NiMARE's");
    let nv = mf.n_voxels;
    let z = mf.z.as_ref().unwrap();
    let mut worst_z = 0f64;
    for (k, term) in lines(&fix().join("ns_z_terms.txt")).iter().enumerate() {
        let t = mf.terms.iter().position(|x| x == term).unwrap();
        let raw = niclip::io::read_npy_raw(&fix().join(format!("ns_z_{k}.npy.gz"))).unwrap();
        let want: Vec<f32> = bytemuck::pod_collect_to_vec(&raw.bytes);
        assert_eq!(want.len(), nv);
        let err = z[t * nv..(t + 1) * nv]
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs() as f64)
            .fold(0.0, f64::max);
        let peak = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        eprintln!("z-map {term:?}: max |z| {peak:.3}, max |Δ| = {err:.2e}");
        worst_z = worst_z.max(err);
    }
    assert!(worst_z <= 1e-4, "z-maps differ by {worst_z}");

    let dir = common::tmpdir("ns-model");
    let path = dir.join("ns.safetensors");
    mf.write(&path).unwrap();
    let dec = Decoder::load(&path).unwrap();
    let mask = Mask::mni152_2mm();
    let maps = maps_on_mask(&data, &mask);
    let want: HashMap<(String, String), f64> = read_csv(&fix().join("ns_r.csv"))
        .into_iter()
        .map(|r| ((r[0].clone(), r[1].clone()), r[2].parse().unwrap()))
        .collect();
    let mut worst_r = 0f64;
    for (m, v) in MAPS.iter().zip(&maps) {
        for (term, r) in dec.decode(v) {
            let w = want[&(m.to_string(), term.clone())];
            worst_r = worst_r.max((r as f64 - w).abs());
        }
    }
    eprintln!(
        "decoded r: {} maps × {} terms, max |Δr| = {worst_r:.2e}",
        MAPS.len(),
        dec.terms.len()
    );
    assert!(worst_r <= 1e-5, "decoded r differs by {worst_r}");
}

#[test]
fn gclda_decode_equals_nimare_gclda_decode_map() {
    let Some(data) = common::need_data() else {
        return;
    };
    let dec = Decoder::load(&fix().join("gclda_nimare.safetensors")).unwrap();
    let mask = Mask::mni152_2mm();
    let maps = maps_on_mask(&data, &mask);
    let want: HashMap<(String, String), f64> = read_csv(&fix().join("gclda_decode.csv"))
        .into_iter()
        .map(|r| ((r[0].clone(), r[1].clone()), r[2].parse().unwrap()))
        .collect();
    let mut worst = 0f64;
    for (m, v) in MAPS.iter().zip(&maps) {
        let out = dec.decode(v);
        let scale = out
            .iter()
            .map(|(t, _)| want[&(m.to_string(), t.clone())].abs())
            .fold(0.0, f64::max);
        for (t, w) in out {
            let rel = (w as f64 - want[&(m.to_string(), t)]).abs() / scale;
            worst = worst.max(rel);
        }
    }
    eprintln!("GC-LDA decode: max |Δ| / max |weight| = {worst:.2e}");
    assert!(
        worst <= 1e-5,
        "GC-LDA weights differ by {worst} (relative to the largest)"
    );
}

#[test]
fn gclda_log_likelihood_follows_nimare() {
    let Some(data) = common::need_data() else {
        return;
    };
    let corpus = Corpus::open(&studyset(&data)).unwrap();
    let vocab = read_vocabulary(&fix().join("vocabulary.txt")).unwrap();
    // NiMARE's traces: seed → per-iteration total.
    let mut theirs: HashMap<String, Vec<f64>> = HashMap::new();
    for r in read_csv(&fix().join("gclda_ll.csv")) {
        theirs
            .entry(r[0].clone())
            .or_default()
            .push(r[4].parse().unwrap());
    }
    let iters = theirs.values().next().unwrap().len() - 1;
    // Their spread: per iteration, the range over seeds; compared over the last half.
    let half = iters / 2;
    let mean_of = |v: &[f64]| v[half..].iter().sum::<f64>() / (v.len() - half) as f64;
    let their_means: Vec<f64> = theirs.values().map(|v| mean_of(v)).collect();
    let lo = their_means.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = their_means
        .iter()
        .cloned()
        .fold(f64::NEG_INFINITY, f64::max);
    let within: f64 = theirs
        .values()
        .map(|v| {
            let m = mean_of(v);
            (v[half..].iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - half) as f64)
                .sqrt()
        })
        .fold(0.0, f64::max);
    let spread = (hi - lo).max(within);
    let mut ours = Vec::new();
    for seed in 1..=3u64 {
        let mut report = TrainReport::default();
        let (d, words) =
            gclda_data(&corpus, &vocab, &TrainOptions::default(), &mut report).unwrap();
        assert_eq!(
            d.wtoken_word.len(),
            7870,
            "word tokens differ from NiMARE's"
        );
        assert_eq!(d.coords.len(), 9492);
        assert_eq!(words.len(), 31);
        let mut m = Model::new(
            Params {
                n_iters: iters,
                seed,
                ..Params::default()
            },
            d,
        )
        .unwrap();
        m.fit(|_, _| {}).unwrap();
        let tot: Vec<f64> = m.loglikelihood.iter().map(|l| l[2]).collect();
        ours.push(mean_of(&tot));
    }
    eprintln!(
        "log-likelihood (mean over iterations {half}..{iters}): NiMARE seeds {their_means:.1?}, ours {ours:.1?}; NiMARE spread {spread:.1}"
    );
    for o in &ours {
        assert!(
            *o >= lo - spread && *o <= hi + spread,
            "ours {o} outside NiMARE's [{lo}, {hi}] ± {spread}"
        );
    }
}

#[test]
fn studyset_import_keeps_every_analysis_and_peak() {
    let Some(data) = common::need_data() else {
        return;
    };
    let c = Corpus::open(&studyset(&data)).unwrap();
    let s = c.stats();
    // selection_summary.json: 906 analyses, 9,492 coordinate rows (1,159 of them TAL).
    assert_eq!((s.studies, s.peaks, s.studies_with_peaks), (906, 9492, 906));
    assert_eq!(s.tal.peaks, 1159);
    // Titles and abstracts come from studies.parquet, one copy per analysis.
    let t = c.text(0).unwrap();
    assert!(!t.title.is_empty() && t.abstract_.len() > 200, "{t:?}");
    // The same folder under --format nimare reads as a studyset.
    let out = common::tmpdir("studyset-nimare").join("nf.corpus");
    let dir = data.join("corpus/nimare/nback_vs_flanker_studyset_2026-07");
    common::niclip(&[
        "corpus",
        "import",
        "--format",
        "nimare",
        dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(Corpus::open(&out).unwrap().stats().peaks, 9492);
}
