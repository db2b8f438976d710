//! Bad input to `niclip baseline`: one-line errors naming the file and the fix.

mod common;

use common::{niclip, niclip_fails, tmpdir};

/// A two-study corpus without texts, and one with texts.
fn corpora(dir: &std::path::Path) -> (String, String) {
    let no_text = dir.join("no_text.json");
    std::fs::write(
        &no_text,
        r#"{"s1": {"contrasts": {"1": {"coords": {"space": "MNI", "x": [0], "y": [0], "z": [0]}}}},
            "s2": {"contrasts": {"1": {"coords": {"space": "MNI", "x": [30], "y": [0], "z": [0]}}}}}"#,
    )
    .unwrap();
    let text = dir.join("text.json");
    std::fs::write(
        &text,
        r#"{"s1": {"contrasts": {"1": {"coords": {"space": "MNI", "x": [0], "y": [0], "z": [0]}, "text": {"title": "A flanker study"}}}},
            "s2": {"contrasts": {"1": {"coords": {"space": "MNI", "x": [30], "y": [0], "z": [0]}, "text": {"title": "A Stroop study"}}}}}"#,
    )
    .unwrap();
    let mut out = Vec::new();
    for (src, name) in [(no_text, "no_text.corpus"), (text, "text.corpus")] {
        let c = dir.join(name);
        niclip(&[
            "corpus",
            "import",
            "--format",
            "nimare",
            src.to_str().unwrap(),
            "--out",
            c.to_str().unwrap(),
        ]);
        out.push(c.to_str().unwrap().to_string());
    }
    (out[0].clone(), out[1].clone())
}

#[test]
fn empty_or_missing_vocabulary_is_a_clear_error() {
    let d = tmpdir("bl-vocab");
    let (_, corpus) = corpora(&d);
    let empty = d.join("empty.txt");
    std::fs::write(&empty, "\n  \n").unwrap();
    let out = d.join("m.safetensors");
    let e = niclip_fails(&[
        "baseline",
        "train",
        "neurosynth",
        "--corpus",
        &corpus,
        "--vocabulary",
        empty.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        e.contains("empty.txt") && e.contains("vocabulary is empty"),
        "{e}"
    );
    let e = niclip_fails(&[
        "baseline",
        "train",
        "gclda",
        "--corpus",
        &corpus,
        "--vocabulary",
        "/nonexistent/v.txt",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        e.contains("/nonexistent/v.txt") && e.contains("no such vocabulary file"),
        "{e}"
    );
    assert!(!out.exists());
}

#[test]
fn corpus_without_texts_is_a_clear_error() {
    let d = tmpdir("bl-notext");
    let (corpus, _) = corpora(&d);
    let v = d.join("v.txt");
    std::fs::write(&v, "flanker task\n").unwrap();
    let out = d.join("m.safetensors");
    let e = niclip_fails(&[
        "baseline",
        "train",
        "neurosynth",
        "--corpus",
        &corpus,
        "--vocabulary",
        v.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        e.contains("no_text.corpus") && e.contains("no study has text"),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "{e}");
}

#[test]
fn a_file_that_is_not_a_baseline_model_is_a_clear_error() {
    let d = tmpdir("bl-model");
    let fake = d.join("fake.safetensors");
    std::fs::write(&fake, b"not a model at all").unwrap();
    let map = common::repo().join("assets/mni/tpl-MNI152NLin6Asym_res-02_desc-brain_mask.nii.gz");
    let e = niclip_fails(&[
        "baseline",
        "decode",
        fake.to_str().unwrap(),
        map.to_str().unwrap(),
    ]);
    assert!(
        e.contains("fake.safetensors") && e.contains("not a niclip baseline model"),
        "{e}"
    );
    // A real safetensors file of another kind (no niclip_baseline metadata).
    let other = d.join("other.safetensors");
    let bytes = safetensors::serialize(
        Vec::<(String, safetensors::tensor::TensorView<'_>)>::new(),
        None,
    )
    .unwrap();
    std::fs::write(&other, bytes).unwrap();
    let e = niclip_fails(&[
        "baseline",
        "decode",
        other.to_str().unwrap(),
        map.to_str().unwrap(),
    ]);
    assert!(
        e.contains("other.safetensors") && e.contains("not a niclip baseline model"),
        "{e}"
    );
}

#[test]
fn train_and_decode_round_trip_in_all_formats() {
    let d = tmpdir("bl-round");
    let (_, corpus) = corpora(&d);
    let v = d.join("v.txt");
    std::fs::write(&v, "flanker task\nStroop task\nn-back task\n").unwrap();
    let model = d.join("m.safetensors");
    niclip(&[
        "baseline",
        "train",
        "neurosynth",
        "--corpus",
        &corpus,
        "--vocabulary",
        v.to_str().unwrap(),
        "--out",
        model.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    let map = common::repo().join("assets/mni/tpl-MNI152NLin6Asym_res-02_desc-brain_mask.nii.gz");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_niclip"))
        .args([
            "baseline",
            "decode",
            model.to_str().unwrap(),
            map.to_str().unwrap(),
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tasks = j["maps"][0]["tasks"].as_array().unwrap();
    let names: Vec<&str> = tasks.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 2, "{j}");
    assert!(names.contains(&"flanker task") && names.contains(&"Stroop task"));
    let dir = d.join("out");
    niclip(&[
        "baseline",
        "decode",
        model.to_str().unwrap(),
        map.to_str().unwrap(),
        "--format",
        "csv",
        "--out",
        dir.to_str().unwrap(),
    ]);
    let csv = std::fs::read_to_string(dir.join("tpl-MNI152NLin6Asym_res-02_desc-brain_mask.csv"))
        .unwrap();
    assert!(csv.starts_with("map,rank,term,r\n"), "{csv}");
}
