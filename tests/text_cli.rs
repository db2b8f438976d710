//! `niclip embed` end to end on the tiny fixture checkpoints: lines of a file, a corpus section
//! with its ids sidecar, --max-length chunking, --lora, --normalize, and resuming.

mod common;

use common::{niclip, niclip_fails, tmpdir};
use niclip::device::Device;
use niclip::io::read_npy_f32;
use niclip::text::{EmbedOptions, TextModel};
use std::path::{Path, PathBuf};

fn fx(name: &str) -> PathBuf {
    common::fixtures().join("text").join(name)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn tiny_texts() -> Vec<String> {
    let e: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx("tiny_expected.json")).unwrap()).unwrap();
    e["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

fn rel_err(a: &[f32], b: &[f32], cols: usize) -> f64 {
    let b64: Vec<f64> = b.iter().map(|v| *v as f64).collect();
    common::max_row_relative_error(a, &b64, cols)
}

fn v(a: &[String]) -> Vec<&str> {
    a.iter().map(String::as_str).collect()
}

#[test]
fn embed_lines_matches_transformers() {
    let dir = tmpdir("embed-lines");
    let input = dir.join("texts.txt");
    std::fs::write(&input, tiny_texts().join("\n") + "\n").unwrap();
    let out = dir.join("e.npy");
    let model = fx("tiny_llama");
    for (extra, expected) in [
        (vec![], "tiny_llama_pooled.npy"),
        (
            vec!["--max-length", "16", "--batch", "2"],
            "tiny_llama_chunked16.npy",
        ),
        (
            vec!["--lora", s(&fx("tiny_llama_lora"))],
            "tiny_llama_lora_pooled.npy",
        ),
    ] {
        let mut args = vec![
            "embed",
            "--model",
            s(&model),
            "--input",
            s(&input),
            "--out",
            s(&out),
            "--device",
            "cpu",
        ];
        args.extend(extra.iter().copied());
        let log = niclip(&args);
        assert!(log.contains("tokens/s"), "{log}");
        let got = read_npy_f32(&out).unwrap();
        assert_eq!((got.rows, got.cols), (4, 64));
        let want = read_npy_f32(&fx(expected)).unwrap().data;
        let err = rel_err(&got.data, &want, 64);
        assert!(err < 1e-5, "{expected}: {err:.2e}");
        assert!(
            !dir.join("e.npy.ids.txt").exists(),
            "--input rows have no ids"
        );
    }
    niclip(&[
        "embed",
        "--model",
        s(&model),
        "--input",
        s(&input),
        "--out",
        s(&out),
        "--normalize",
    ]);
    let got = read_npy_f32(&out).unwrap();
    for row in got.data.chunks(64) {
        let n: f64 = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        assert!((n - 1.0).abs() < 1e-6, "norm {n}");
    }
    std::fs::remove_dir_all(dir).ok();
}

/// Corpus rows: one per study with an abstract, ids in the sidecar, equal to the library's
/// embeddings; an interrupted run resumes from its checkpoints.
#[test]
fn embed_corpus_section_with_ids_and_resume() {
    let dir = tmpdir("embed-corpus");
    let corpus = dir.join("c.corpus");
    niclip(&[
        "corpus",
        "import",
        "--format",
        "pubget",
        s(&common::fixtures().join("corpus/pubget")),
        "--out",
        s(&corpus),
    ]);
    let c = niclip::corpus::Corpus::open(&corpus).unwrap();
    let (mut ids, mut texts) = (Vec::new(), Vec::new());
    for row in c.section_texts(niclip::corpus::Section::Abstract) {
        let (id, t) = row.unwrap();
        if !t.trim().is_empty() {
            ids.push(id.to_string());
            texts.push(t);
        }
    }
    assert!(texts.len() >= 2, "the pubget fixture has abstracts");
    let m = TextModel::load(&fx("tiny_mistral"), None, &Device::Cpu).unwrap();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let want = m
        .embed(
            &refs,
            &EmbedOptions {
                max_length: Some(32),
                batch: 4,
                normalize: false,
            },
        )
        .unwrap();

    let (clean, out) = (dir.join("clean.npy"), dir.join("resumed.npy"));
    let args = |o: &Path| {
        [
            "embed",
            "--model",
            s(&fx("tiny_mistral")),
            "--corpus",
            s(&corpus),
            "--section",
            "abstract",
            "--out",
            s(o),
            "--max-length",
            "32",
            "--chunk",
            "1",
            "--device",
            "cpu",
        ]
        .map(String::from)
    };
    niclip(&v(&args(&clean)));
    let got = read_npy_f32(&clean).unwrap();
    assert_eq!((got.rows, got.cols), (texts.len(), 64));
    assert!(rel_err(&got.data, &want, 64) < 1e-6);
    let sidecar: Vec<String> = std::fs::read_to_string(dir.join("clean.npy.ids.txt"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(sidecar, ids);

    // A directory where the output goes makes the final write fail after every chunk is done.
    std::fs::create_dir_all(&out).unwrap();
    niclip_fails(&v(&args(&out)));
    let first = dir.join("resumed.npy.partial/chunk-000000.npy");
    assert!(first.exists(), "checkpoints are kept");
    // Mark the first checkpoint, with the checksum beside it that a chunk saved whole has: a
    // resumed run must reuse it rather than recompute it.
    let mark = [0.5f32; 64];
    niclip::io::write_npy_f32(&first, &mark, 1, 64).unwrap();
    let mut crc = flate2::Crc::new();
    crc.update(bytemuck::cast_slice(&mark));
    std::fs::write(
        first.with_extension("npy.crc32"),
        format!("{:08x}", crc.sum()),
    )
    .unwrap();
    std::fs::remove_dir(&out).unwrap();
    let log = niclip(&v(&args(&out)));
    assert!(log.contains("resuming"), "{log}");
    let resumed = read_npy_f32(&out).unwrap();
    assert!(
        resumed.data[..64].iter().all(|x| *x == 0.5),
        "the first chunk was recomputed"
    );
    assert_eq!(resumed.data[64..], got.data[64..]);
    assert!(
        !dir.join("resumed.npy.partial").exists(),
        "checkpoints are removed at the end"
    );

    // A different job (another --max-length) does not reuse them.
    std::fs::remove_file(&out).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    niclip_fails(&v(&args(&out)));
    std::fs::remove_dir(&out).unwrap();
    let mut a = args(&out);
    a[10] = "16".into();
    let log = niclip(&v(&a));
    assert!(!log.contains("resuming"), "{log}");
    std::fs::remove_dir_all(dir).ok();
}
