//! Bad text-model inputs give one clear error naming the file and the fix, never a panic.

mod common;

use niclip::device::Device;
use niclip::text::TextModel;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    common::fixtures().join("text").join(name)
}

/// A copy of a fixture model folder in a fresh temp dir.
fn copy_model(name: &str, test: &str) -> PathBuf {
    let dst = common::tmpdir(test).join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
    }
    dst
}

fn load_err(model: &Path, lora: Option<&Path>) -> String {
    match TextModel::load(model, lora, &Device::Cpu) {
        Ok(_) => panic!("{} should not load", model.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_config(dir: &Path, from: &str, to: &str) {
    let p = dir.join("config.json");
    let s = std::fs::read_to_string(&p).unwrap();
    assert!(s.contains(from), "config.json has no {from}");
    std::fs::write(&p, s.replace(from, to)).unwrap();
}

#[test]
fn missing_tokenizer() {
    let dir = copy_model("tiny_llama", "text-err-tok");
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let e = load_err(&dir, None);
    assert!(
        e.contains("tokenizer.json") && e.contains("save_pretrained"),
        "{e}"
    );
}

#[test]
fn unknown_architecture() {
    let dir = copy_model("tiny_llama", "text-err-arch");
    edit_config(
        &dir,
        "\"model_type\": \"llama\"",
        "\"model_type\": \"gpt_neox\"",
    );
    let e = load_err(&dir, None);
    assert!(
        e.contains("config.json") && e.contains("unknown architecture") && e.contains("gpt_neox"),
        "{e}"
    );
}

#[test]
fn shape_that_does_not_match_config() {
    let dir = copy_model("tiny_llama", "text-err-shape");
    edit_config(
        &dir,
        "\"intermediate_size\": 96",
        "\"intermediate_size\": 128",
    );
    let e = load_err(&dir, None);
    assert!(
        e.contains("mlp.gate_proj.weight") && e.contains("[96, 64]") && e.contains("[128, 64]"),
        "{e}"
    );
    assert!(e.contains("different models"), "{e}");
}

#[test]
fn truncated_safetensors() {
    let dir = copy_model("tiny_llama_bf16", "text-err-trunc");
    let f = dir.join("model.safetensors");
    let len = std::fs::metadata(&f).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(len - 1000)
        .unwrap();
    let e = load_err(&dir, None);
    assert!(
        e.contains("model.safetensors") && e.contains("truncated"),
        "{e}"
    );
}

#[test]
fn truncated_gguf() {
    let dir = common::tmpdir("text-err-gguf");
    let f = dir.join("quant.gguf");
    let b = std::fs::read(fixture("quant.gguf")).unwrap();
    std::fs::write(&f, &b[..b.len() - 40]).unwrap();
    let e = match niclip::text::gguf::Gguf::open(&f) {
        Ok(_) => panic!("a truncated GGUF opened"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("quant.gguf") && e.contains("truncated"), "{e}");
}

/// A GGUF head count of 0 is an error naming the file, not a division by zero when the Q/K rows
/// are unpermuted (found by tests/fuzz.rs, issue 20).
#[test]
fn gguf_with_zero_heads() {
    let dir = common::tmpdir("text-err-gguf-heads");
    let f = dir.join("tiny_llama.gguf");
    let mut b = std::fs::read(fixture("tiny_llama.gguf")).unwrap();
    let key = b"llama.attention.head_count\x04\x00\x00\x00";
    // The key, its value type (UINT32), then the value.
    let at = b
        .windows(key.len())
        .position(|w| w == key)
        .expect("head_count")
        + key.len();
    b[at..at + 4].copy_from_slice(&0u32.to_le_bytes());
    std::fs::write(&f, b).unwrap();
    let e = load_err(&f, None);
    assert!(
        e.contains("tiny_llama.gguf") && e.contains("attention heads"),
        "{e}"
    );
}

#[test]
fn adapter_for_another_base_model() {
    let e = load_err(&fixture("tiny_llama"), Some(&fixture("tiny_other_lora")));
    assert!(
        e.contains("tiny_other_lora") && e.contains("a 32-wide tiny Llama") && e.contains("q_proj"),
        "{e}"
    );
}

#[test]
fn not_an_adapter_folder() {
    let e = load_err(&fixture("tiny_llama"), Some(&fixture("tokenizer")));
    assert!(e.contains("adapter_config.json"), "{e}");
}

#[test]
fn not_a_model() {
    let e = load_err(&fixture("tokenizer"), None);
    assert!(e.contains("config.json"), "{e}");
    let e = load_err(&fixture("minilm_titles.txt"), None);
    assert!(e.contains("minilm_titles.txt"), "{e}");
}

#[test]
fn cli_reports_errors_in_one_line() {
    let dir = common::tmpdir("text-err-cli");
    let input = dir.join("in.txt");
    std::fs::write(&input, "a text\n").unwrap();
    let e = common::niclip_fails(&[
        "embed",
        "--model",
        fixture("tiny_llama").to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        dir.join("out.csv").to_str().unwrap(),
    ]);
    assert!(e.contains(".npy"), "{e}");
    let e = common::niclip_fails(&[
        "embed",
        "--model",
        fixture("tokenizer").to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        dir.join("out.npy").to_str().unwrap(),
    ]);
    assert!(
        e.starts_with("error: ") && e.trim().lines().count() == 1,
        "{e}"
    );
}

/// Shard names in `model.safetensors.index.json` must stay inside the model folder: a hostile
/// index must not make the loader open `../` files or absolute paths (issue 20).
#[test]
fn index_shards_outside_the_folder() {
    let shard = "model-00001-of-00005.safetensors";
    for (i, bad) in [
        format!("../elsewhere/{shard}"),
        "/etc/passwd".to_string(),
        String::new(),
        format!("sub/{shard}"),
        "..".to_string(),
    ]
    .iter()
    .enumerate()
    {
        let dir = copy_model("tiny_llama", &format!("text-err-index-{i}"));
        // A real shard outside the folder, so an escape would load silently.
        let elsewhere = dir.parent().unwrap().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::copy(dir.join(shard), elsewhere.join(shard)).unwrap();
        let p = dir.join("model.safetensors.index.json");
        let s = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, s.replace(&format!("\"{shard}\""), &format!("{bad:?}"))).unwrap();
        let e = load_err(&dir, None);
        assert!(
            e.contains("model.safetensors.index.json") && e.contains(&format!("{bad:?}")),
            "{bad:?}: {e}"
        );
    }
}

/// An index naming a shard that is not in the folder is an error naming the index, not only
/// the missing file (found by tests/fuzz.rs, issue 20).
#[test]
fn index_names_a_missing_shard() {
    let dir = copy_model("tiny_llama", "text-err-index-missing");
    let p = dir.join("model.safetensors.index.json");
    let s = std::fs::read_to_string(&p).unwrap();
    let bad = s.replacen(
        "model-00004-of-00005.safetensors",
        "model-00004-of-00005.sqfetensors",
        1,
    );
    std::fs::write(&p, bad).unwrap();
    let e = load_err(&dir, None);
    assert!(
        e.contains("model.safetensors.index.json")
            && e.contains("model-00004-of-00005.sqfetensors")
            && e.contains("not in this folder"),
        "{e}"
    );
}

/// An index that lists no shard, or does not place a tensor the model needs, is an error naming
/// the index (it named no file, or the first shard; found by tests/fuzz.rs, issue 20).
#[test]
fn index_without_a_tensor() {
    for (i, (from, to)) in [
        ("\"weight_map\": {", "\"weight_map\": {}, \"x\": {"),
        (
            "\"model.embed_tokens.weight\": \"model-00001-of-00005.safetensors\"",
            "\"model.embed_tokens.weight\": \"model-00002-of-00005.safetensors\"",
        ),
    ]
    .iter()
    .enumerate()
    {
        let dir = copy_model("tiny_llama", &format!("text-err-index-tensor-{i}"));
        let p = dir.join("model.safetensors.index.json");
        let s = std::fs::read_to_string(&p).unwrap();
        assert!(s.contains(from), "the index has no {from}");
        std::fs::write(&p, s.replace(from, to)).unwrap();
        let e = load_err(&dir, None);
        assert!(e.contains("model.safetensors.index.json"), "{to}: {e}");
    }
}

/// A tensor missing from the shard the index places it in is reported against that shard, not
/// the first one (found by tests/fuzz.rs, issue 20).
#[test]
fn tensor_missing_from_its_shard() {
    let dir = copy_model("tiny_llama", "text-err-shard-tensor");
    let p = dir.join("model-00002-of-00005.safetensors");
    let mut b = std::fs::read(&p).unwrap();
    // Same length, so the header stays valid: the tensor is renamed away.
    let at = b
        .windows(6)
        .position(|w| w == b"o_proj")
        .expect("o_proj in shard 2");
    b[at..at + 6].copy_from_slice(b"o_prxj");
    std::fs::write(&p, b).unwrap();
    let e = load_err(&dir, None);
    assert!(
        e.contains("model-00002-of-00005.safetensors") && e.contains("o_proj.weight is missing"),
        "{e}"
    );
}

/// A truncated tokenizer.json is an error naming it, never a panic inside the tokenizers crate
/// (cuts inside its "decoder" section made the crate panic; issue 20).
#[test]
fn truncated_tokenizer() {
    let dir = copy_model("tiny_llama", "text-err-tok-trunc");
    let f = dir.join("tokenizer.json");
    let b = std::fs::read(fixture("tiny_llama").join("tokenizer.json")).unwrap();
    let text = std::str::from_utf8(&b).unwrap();
    let dec = text
        .find("\"decoder\"")
        .expect("tokenizer.json has a decoder");
    let end = dec + text[dec..].find("\"model\"").unwrap();
    let cuts = (dec..end)
        .chain([50, 90, 99].map(|pct| b.len() * pct / 100))
        .chain([b.len() - 1]);
    for cut in cuts {
        std::fs::write(&f, &b[..cut]).unwrap();
        let r = std::panic::catch_unwind(|| load_err(&dir, None));
        let e = r.unwrap_or_else(|_| panic!("cut at byte {cut} of {}: the load panicked", b.len()));
        assert!(e.contains("tokenizer.json"), "cut at {cut}: {e}");
    }
}

/// Shapes in config.json past any model (head_dim 2^32, 2^20 heads) are an error naming the
/// file before anything is allocated from them, never an abort on a huge allocation.
#[test]
fn absurd_config_shapes() {
    for (key, from, to) in [
        ("head_dim", "\"head_dim\": 16", "\"head_dim\": 4294967296"),
        (
            "num_attention_heads",
            "\"num_attention_heads\": 4",
            "\"num_attention_heads\": 1048576",
        ),
        // u64::MAX layers: a capacity-overflow panic before the fix (found by tests/fuzz.rs).
        (
            "num_hidden_layers",
            "\"num_hidden_layers\": 2",
            "\"num_hidden_layers\": 18446744073709551615",
        ),
    ] {
        let dir = copy_model("tiny_llama", "text-err-shape");
        edit_config(&dir, from, to);
        let e = load_err(&dir, None);
        assert!(e.contains("config.json") && e.contains(key), "{e}");
    }
}
