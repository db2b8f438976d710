//! `niclip vocab`: names and definitions of the reduced Cognitive Atlas tasks embedded by a
//! (tiny, committed) Llama checkpoint, combined, and the prior from document embeddings; the
//! vocabulary it writes decodes maps.

mod common;

use common::*;
use niclip::device::Device;
use niclip::io::read_npy_f32;
use niclip::text::{EmbedOptions, TextModel};

#[test]
fn vocab_combines_name_and_definition_and_takes_the_prior_from_documents() {
    let Some(data) = need_data() else {
        return;
    };
    let model = fixtures().join("text/tiny_llama");
    let docs = fixtures().join("decode/documents.npy");
    let out = tmpdir("vocab");
    niclip(&[
        "vocab",
        "--ontology",
        data.join("cogat").to_str().unwrap(),
        "--reduced",
        "--model",
        model.to_str().unwrap(),
        "--alpha",
        "0.3",
        "--documents",
        docs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    // The same tasks in the same order as braindec's CognitiveAtlas (the fixture script's list;
    // braindec keeps a trailing blank of one snapshot name, niclip trims it).
    let lines = |p: std::path::PathBuf| -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| l.trim().to_string())
            .collect()
    };
    assert_eq!(
        lines(out.join("vocabulary.txt")),
        lines(fixtures().join("decode/vocabulary.txt"))
    );

    let ontology = niclip::decode::Ontology::load(&data.join("cogat"), true).unwrap();
    let tm = TextModel::load(&model, None, &Device::Cpu).unwrap();
    let opts = EmbedOptions {
        max_length: None,
        batch: 8,
        normalize: false,
    };
    let n: Vec<&str> = ontology.tasks.iter().map(|t| t.name.as_str()).collect();
    let d: Vec<&str> = ontology
        .tasks
        .iter()
        .map(|t| t.definition.as_str())
        .collect();
    let (ne, de) = (tm.embed(&n, &opts).unwrap(), tm.embed(&d, &opts).unwrap());
    let emb = read_npy_f32(&out.join("vocabulary_emb.npy")).unwrap();
    assert_eq!((emb.rows, emb.cols), (88, 64));
    for (i, e) in emb.data.iter().enumerate() {
        let x = 0.3 * ne[i] + 0.7 * de[i];
        assert!(
            (e - x).abs() <= 1e-6 * (1.0 + x.abs()),
            "row {} col {}",
            i / 64,
            i % 64
        );
    }
    let prior = read_npy_f32(&out.join("vocabulary_prior.npy")).unwrap();
    let documents = read_npy_f32(&docs).unwrap();
    let want = niclip::decode::vocabulary::prior_from_documents(&emb.data, &documents.data, 64);
    for (p, w) in prior.data.iter().zip(&want) {
        assert!((*p as f64 - w).abs() < 1e-7);
    }
    assert!((prior.data.iter().map(|&p| p as f64).sum::<f64>() - 1.0).abs() < 1e-5);

    // The vocabulary decodes a map with a model of the same text width.
    let stderr = niclip(&[
        "decode",
        data.join("maps/neurosynth_vmPFC.nii.gz").to_str().unwrap(),
        "--model",
        fixtures()
            .join("decode/model.safetensors")
            .to_str()
            .unwrap(),
        "--vocabulary",
        out.join("vocabulary.txt").to_str().unwrap(),
        "--vocabulary-emb",
        out.join("vocabulary_emb.npy").to_str().unwrap(),
        "--vocabulary-prior",
        out.join("vocabulary_prior.npy").to_str().unwrap(),
        "--ontology",
        data.join("cogat").to_str().unwrap(),
        "--reduced",
        "--atlas",
        data.join("mni/HarvardOxford-cort-maxprob-thr25-2mm.nii.gz")
            .to_str()
            .unwrap(),
        "--labels",
        "--logit-scale",
        "20",
    ]);
    assert!(stderr.contains("s = 20 (--logit-scale)"), "{stderr}");
}

#[test]
fn vocab_refuses_documents_of_another_width() {
    let Some(data) = need_data() else {
        return;
    };
    let bad = tmpdir("vocab-bad").join("docs.npy");
    niclip::io::write_npy_f32(&bad, &[0.5; 12], 3, 4).unwrap();
    let err = niclip_fails(&[
        "vocab",
        "--ontology",
        data.join("cogat").to_str().unwrap(),
        "--reduced",
        "--model",
        fixtures().join("text/tiny_llama").to_str().unwrap(),
        "--documents",
        bad.to_str().unwrap(),
        "--out",
        tmpdir("vocab-bad-out").to_str().unwrap(),
    ]);
    assert!(err.contains("docs.npy") && err.contains("4 wide"), "{err}");
}
