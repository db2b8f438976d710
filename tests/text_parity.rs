//! Text engine parity with transformers / peft / sentence-transformers / gguf, on the fixtures
//! written by tests/fixtures/make_text_fixtures.py: tiny random Llama and Mistral checkpoints
//! (sharded, bf16, LoRA), every GGUF quantization type, and — when present — the real
//! all-MiniLM-L6-v2 and SmolLM2-135M-Instruct Q4_1 GGUF (NICLIP_MINILM_DIR, NICLIP_SMOLLM_GGUF,
//! or ~/.cache/niclip/models/; skipped otherwise, see tests/common/mod.rs).

mod common;

use niclip::device::Device;
use niclip::io::read_npy_f32;
use niclip::text::{EmbedOptions, TextModel};
use std::path::PathBuf;

fn text_fixtures() -> PathBuf {
    common::fixtures().join("text")
}

fn npy(name: &str) -> Vec<f32> {
    read_npy_f32(&text_fixtures().join(name)).unwrap().data
}

fn json(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(text_fixtures().join(name)).unwrap()).unwrap()
}

fn ids_of(v: &serde_json::Value) -> Vec<Vec<u32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s.as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

fn lines(name: &str) -> Vec<String> {
    std::fs::read_to_string(text_fixtures().join(name))
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

/// max over rows of ‖a − b‖∞ / ‖b‖∞
fn rel_err(a: &[f32], b: &[f32], cols: usize) -> f64 {
    assert_eq!(a.len(), b.len(), "shapes differ");
    let b64: Vec<f64> = b.iter().map(|v| *v as f64).collect();
    common::max_row_relative_error(a, &b64, cols)
}

fn max_abs(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() as f64)
        .fold(0.0, f64::max)
}

#[test]
fn gguf_dequantizes_every_type_as_the_gguf_package() {
    let path = text_fixtures().join("quant.gguf");
    let g = niclip::text::gguf::Gguf::open(&path).unwrap();
    let mut t = g.read_all(&path, |n| Some(n.to_string())).unwrap();
    let expected = npy("quant_expected.npy");
    for (i, kind) in ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"]
        .iter()
        .enumerate()
    {
        let got = t.take(kind, &[4, 64]).unwrap();
        let want = &expected[i * 256..(i + 1) * 256];
        assert_eq!(
            max_abs(&got, want),
            0.0,
            "{kind} differs from gguf.quants.dequantize"
        );
    }
}

/// One tiny checkpoint case: token ids, per-token hidden states (packed batch), pooled and
/// chunk-pooled embeddings against transformers (peft for adapters) in float32.
fn tiny_case(model_dir: &str, lora: Option<&str>, expected: &str) {
    let fx = text_fixtures();
    let m = TextModel::load(
        &fx.join(model_dir),
        lora.map(|l| fx.join(l)).as_deref(),
        &Device::Cpu,
    )
    .unwrap();
    let e = json("tiny_expected.json");
    let texts: Vec<String> = e["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let ids = m.tokenize(&texts).unwrap();
    assert_eq!(
        ids,
        ids_of(&e["ids"]),
        "{model_dir}: token ids differ from AutoTokenizer"
    );
    let d = m.dim();

    let seqs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let hidden = m.hidden_states(&seqs).unwrap();
    let err = rel_err(&hidden, &npy(&format!("{expected}_hidden.npy")), d);
    eprintln!("{expected}: hidden states max row relative error {err:.2e}");
    assert!(err < 1e-5, "{expected}: hidden states differ by {err:.2e}");

    for batch in [1, 3] {
        let pooled = m
            .embed(
                &texts,
                &EmbedOptions {
                    max_length: None,
                    batch,
                    normalize: false,
                },
            )
            .unwrap();
        let err = rel_err(&pooled, &npy(&format!("{expected}_pooled.npy")), d);
        assert!(
            err < 1e-5,
            "{expected}: pooled (batch {batch}) differs by {err:.2e}"
        );
        let chunked = m
            .embed(
                &texts,
                &EmbedOptions {
                    max_length: Some(16),
                    batch,
                    normalize: false,
                },
            )
            .unwrap();
        let err = rel_err(&chunked, &npy(&format!("{expected}_chunked16.npy")), d);
        eprintln!(
            "{expected}: chunked (16) pooling, batch {batch}: max row relative error {err:.2e}"
        );
        assert!(
            err < 1e-5,
            "{expected}: chunked pooling (batch {batch}) differs by {err:.2e}"
        );
    }
}

#[test]
fn tiny_llama_sharded_f32_matches_transformers() {
    tiny_case("tiny_llama", None, "tiny_llama");
}

#[test]
fn tiny_llama_bf16_matches_transformers() {
    tiny_case("tiny_llama_bf16", None, "tiny_llama_bf16");
}

#[test]
fn tiny_llama_lora_matches_peft() {
    tiny_case("tiny_llama", Some("tiny_llama_lora"), "tiny_llama_lora");
}

#[test]
fn tiny_mistral_sliding_window_matches_transformers() {
    tiny_case("tiny_mistral", None, "tiny_mistral");
}

#[test]
fn tiny_mistral_rslora_matches_peft() {
    tiny_case(
        "tiny_mistral",
        Some("tiny_mistral_lora"),
        "tiny_mistral_lora",
    );
}

#[test]
fn default_max_lengths_follow_the_paper() {
    let fx = text_fixtures();
    let m = TextModel::load(&fx.join("tiny_llama"), None, &Device::Cpu).unwrap();
    assert_eq!(m.default_max_length(), 256); // min(max_position_embeddings, 8192)
    assert_eq!(m.dim(), 64);
}

#[test]
fn minilm_mean_pooling_matches_sentence_transformers() {
    let Some(dir) = common::need_model(common::MINILM) else {
        return;
    };
    let m = TextModel::load(&dir, None, &Device::Cpu).unwrap();
    assert_eq!(m.default_max_length(), 512);
    let titles = lines("minilm_titles.txt");
    let titles: Vec<&str> = titles.iter().map(String::as_str).collect();
    assert_eq!(
        m.tokenize(&titles).unwrap(),
        ids_of(&json("minilm_ids.json")),
        "token ids differ"
    );
    let opts = EmbedOptions {
        max_length: None,
        batch: 32,
        normalize: false,
    };
    let mean = m.embed(&titles, &opts).unwrap();
    let err = max_abs(&mean, &npy("minilm_titles_mean.npy"));
    eprintln!("MiniLM: mean pooling of 200 titles, max abs error {err:.2e}");
    assert!(err < 1e-4, "max abs error {err:.2e}");

    let unit = m
        .embed(
            &titles,
            &EmbedOptions {
                normalize: true,
                ..opts
            },
        )
        .unwrap();
    let want = npy("minilm_titles_encode.npy");
    let min_cos = unit
        .chunks(384)
        .zip(want.chunks(384))
        .map(|(a, b)| {
            let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let nb: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum::<f64>().sqrt();
            dot / nb
        })
        .fold(f64::INFINITY, f64::min);
    eprintln!("MiniLM: --normalize vs encode(), min cosine {min_cos:.8}");
    assert!(min_cos >= 0.99999, "min cosine {min_cos}");
}

#[test]
fn smollm_gguf_q4_1_matches_transformers() {
    let Some(gguf) = common::need_model(common::SMOLLM) else {
        return;
    };
    let t0 = std::time::Instant::now();
    let m = TextModel::load(&gguf, None, &Device::Cpu).unwrap();
    eprintln!(
        "SmolLM2 Q4_1: loaded in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(m.default_max_length(), 8192);
    let texts = lines("smollm_abstracts.txt");
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    assert_eq!(
        m.tokenize(&texts).unwrap(),
        ids_of(&json("smollm_ids.json")),
        "token ids differ"
    );
    let d = m.dim();
    let t0 = std::time::Instant::now();
    let mean = m
        .embed(
            &texts,
            &EmbedOptions {
                max_length: None,
                batch: 8,
                normalize: false,
            },
        )
        .unwrap();
    eprintln!(
        "SmolLM2: 50 abstracts in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    let err = rel_err(&mean, &npy("smollm_abstracts_mean.npy"), d);
    eprintln!("SmolLM2: mean pooling of 50 abstracts, max row relative error {err:.2e}");
    assert!(err < 1e-4, "relative error {err:.2e}");
    let chunked = m
        .embed(
            &texts,
            &EmbedOptions {
                max_length: Some(64),
                batch: 16,
                normalize: false,
            },
        )
        .unwrap();
    let err = rel_err(&chunked, &npy("smollm_abstracts_chunked64.npy"), d);
    eprintln!("SmolLM2: --max-length 64 chunked pooling, max row relative error {err:.2e}");
    assert!(err < 1e-4, "relative error {err:.2e}");
}

/// tiny_llama written as llama.cpp does (Q/K permuted, quantized, sentencepiece vocabulary in
/// the metadata): the rebuilt tokenizer and the dequantized, un-permuted model match what
/// transformers reads from the same file.
#[test]
fn tiny_llama_gguf_matches_transformers_gguf_loader() {
    let fx = text_fixtures();
    let m = TextModel::load(&fx.join("tiny_llama.gguf"), None, &Device::Cpu).unwrap();
    let e = json("tiny_expected.json");
    let texts: Vec<&str> = e["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let ids = m.tokenize(&texts).unwrap();
    assert_eq!(
        ids,
        ids_of(&json("tiny_llama_gguf_ids.json")),
        "token ids differ from AutoTokenizer(gguf_file=)"
    );
    let seqs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let err = rel_err(
        &m.hidden_states(&seqs).unwrap(),
        &npy("tiny_llama_gguf_hidden.npy"),
        m.dim(),
    );
    eprintln!("tiny_llama.gguf: hidden states max row relative error {err:.2e}");
    assert!(err < 1e-5, "hidden states differ by {err:.2e}");
}
