//! Tokenizers: a model folder's `tokenizer.json` through the `tokenizers` crate, or the one a
//! GGUF file describes, rebuilt as transformers' `AutoTokenizer.from_pretrained(dir,
//! gguf_file=…)` does (byte-level BPE for `gpt2` vocabularies, sentencepiece BPE with byte
//! fallback for `llama` ones). Special tokens (BOS, \[CLS\] … \[SEP\]) come from the tokenizer's own
//! post-processor, so a whole text is tokenized once and chunked afterwards (BOS only at the start).

use super::gguf::{Gguf, Value};
use crate::error::{Error, IoContext, Result};
use serde_json::{json, Value as Json};
use std::path::Path;

pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
}

impl TextTokenizer {
    pub fn from_file(path: &Path) -> Result<TextTokenizer> {
        if !path.is_file() {
            return Err(Error::input(
                path,
                "no tokenizer.json beside the model; copy the model's tokenizer.json into this folder (tokenizer.save_pretrained(dir) writes it)",
            ));
        }
        let bytes = std::fs::read(path).at(path)?;
        // The tokenizers crate panics on some malformed input (a file cut inside its "decoder"
        // section), so check the JSON ourselves first for a clear error…
        serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).map_err(|e| {
            Error::input(
                path,
                format!("not valid JSON ({e}); it may be truncated: copy the model's tokenizer.json again"),
            )
        })?;
        // …and turn any panic left in the crate into an error naming the file.
        let inner = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(&bytes))
            .map_err(|_| {
                Error::input(
                    path,
                    "the tokenizers crate could not read this tokenizer.json (it panicked); copy the model's tokenizer.json again",
                )
            })?
            .map_err(|e| Error::input(path, format!("not a readable tokenizer.json ({e})")))?;
        Ok(TextTokenizer::whole(inner))
    }

    /// Whole texts: chunking happens after tokenization, so no truncation and no padding.
    fn whole(mut inner: tokenizers::Tokenizer) -> TextTokenizer {
        inner.with_truncation(None).ok();
        inner.with_padding(None);
        TextTokenizer { inner }
    }

    pub fn from_gguf(g: &Gguf, path: &Path) -> Result<TextTokenizer> {
        let spec = gguf_tokenizer_json(g, path)?;
        let inner: tokenizers::Tokenizer = serde_json::from_value(spec)
            .map_err(|e| Error::input(path, format!("cannot build its tokenizer ({e})")))?;
        Ok(TextTokenizer::whole(inner))
    }

    /// Token ids of each text with the tokenizer's special tokens, no truncation, no padding.
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let enc = self
            .inner
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| Error::Usage(format!("tokenizer failed: {e}")))?;
        Ok(enc.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }
}

/// GPT-2's byte → printable character map (`bytes_to_unicode`).
fn bytes_to_unicode() -> Vec<char> {
    let mut map = vec!['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        map[b as usize] = if printable {
            char::from_u32(b).unwrap()
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap()
        };
    }
    map
}

fn str_array<'a>(g: &'a Gguf, key: &str, path: &Path) -> Result<Vec<&'a str>> {
    match g.get(key) {
        Some(Value::Array(v)) => v
            .iter()
            .map(|x| {
                x.as_str()
                    .ok_or_else(|| Error::input(path, format!("{key} holds a non-string")))
            })
            .collect(),
        _ => Err(Error::input(
            path,
            format!("no {key} in the GGUF metadata; this file carries no tokenizer"),
        )),
    }
}

/// A `tokenizer.json` document equivalent to what transformers builds from the GGUF metadata.
fn gguf_tokenizer_json(g: &Gguf, path: &Path) -> Result<Json> {
    let kind = g
        .get("tokenizer.ggml.model")
        .and_then(Value::as_str)
        .unwrap_or("");
    let tokens = str_array(g, "tokenizer.ggml.tokens", path)?;
    let types: Vec<i64> = match g.get("tokenizer.ggml.token_type") {
        Some(Value::Array(v)) => v.iter().map(|x| x.as_i64().unwrap_or(1)).collect(),
        _ => vec![1; tokens.len()],
    };
    let merges: Option<Vec<&str>> = str_array(g, "tokenizer.ggml.merges", path).ok();
    let flag = |k: &str| match g.get(k) {
        Some(Value::Bool(b)) => Some(*b),
        _ => None,
    };
    let id = |k: &str| g.get(k).and_then(Value::as_i64).map(|i| i as usize);
    let bos = id("tokenizer.ggml.bos_token_id");
    let eos = id("tokenizer.ggml.eos_token_id");
    let add_bos = flag("tokenizer.ggml.add_bos_token").unwrap_or(kind == "llama");
    let add_eos = flag("tokenizer.ggml.add_eos_token").unwrap_or(false);

    let (model, normalizer, pre_tokenizer, decoder, allowed): (Json, Json, Json, Json, Option<Vec<char>>) = match kind {
        "gpt2" => {
            let spelling = bytes_to_unicode();
            let alphabet: std::collections::HashSet<char> = spelling.iter().copied().collect();
            let vocab: serde_json::Map<String, Json> = tokens
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let s = if t.chars().all(|c| alphabet.contains(&c)) {
                        t.to_string()
                    } else {
                        t.bytes().map(|b| spelling[b as usize]).collect()
                    };
                    (s, json!(i))
                })
                .collect();
            let merges = merges.ok_or_else(|| Error::input(path, "a gpt2 GGUF vocabulary without merges is not supported"))?;
            let pre = match gguf_split_regex(g.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("")) {
                Some(re) => json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
                    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}),
                None => json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}),
            };
            (
                json!({"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                       "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                       "vocab": vocab, "merges": merges}),
                Json::Null,
                pre,
                json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}),
                Some(spelling),
            )
        }
        "llama" => {
            let vocab: serde_json::Map<String, Json> =
                tokens.iter().enumerate().map(|(i, t)| (t.to_string(), json!(i))).collect();
            let merges = merges.ok_or_else(|| {
                Error::input(path, "this sentencepiece GGUF has no tokenizer.ggml.merges; use the model folder with its tokenizer.json")
            })?;
            (
                json!({"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                       "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                       "vocab": vocab, "merges": merges}),
                Json::Null,
                json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first", "split": false}),
                json!({"type": "Sequence", "decoders": [
                    {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                    {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}),
                None,
            )
        }
        other => {
            return Err(Error::input(
                path,
                format!("GGUF tokenizer type {other:?} is not supported (gpt2 and llama are); use the model folder with its tokenizer.json"),
            ))
        }
    };
    // Control tokens (type 3) stay whole as special tokens; user-defined ones (4) as plain added tokens.
    let mut added = Vec::new();
    for (i, (t, ty)) in tokens.iter().zip(&types).enumerate() {
        let spelled = allowed
            .as_ref()
            .is_none_or(|a| t.chars().all(|c| a.contains(&c)));
        if (*ty == 3 && spelled) || *ty == 4 {
            added.push(json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                              "normalized": false, "special": *ty == 3}));
        }
    }
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut special = serde_json::Map::new();
    for (on, tid) in [(add_bos, bos), (false, None)] {
        if let (true, Some(t)) = (on, tid) {
            single.push(json!({"SpecialToken": {"id": tokens[t], "type_id": 0}}));
            pair.push(json!({"SpecialToken": {"id": tokens[t], "type_id": 0}}));
            special.insert(
                tokens[t].to_string(),
                json!({"id": tokens[t], "ids": [t], "tokens": [tokens[t]]}),
            );
        }
    }
    single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    pair.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    if let (true, Some(t)) = (add_eos, eos) {
        single.push(json!({"SpecialToken": {"id": tokens[t], "type_id": 0}}));
        special.insert(
            tokens[t].to_string(),
            json!({"id": tokens[t], "ids": [t], "tokens": [tokens[t]]}),
        );
    }
    pair.push(json!({"Sequence": {"id": "B", "type_id": 1}}));
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": normalizer, "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special},
        "decoder": decoder, "model": model
    }))
}

/// The split regex transformers uses for a GGUF `tokenizer.ggml.pre` (others: GPT-2's ByteLevel regex).
fn gguf_split_regex(pre: &str) -> Option<&'static str> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => Some(LLAMA3),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => Some(QWEN2),
        _ => None,
    }
}
