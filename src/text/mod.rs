//! Text features: an LLM's last hidden state, mean-pooled over all tokens of all chunks of a
//! text, as the authors' `TextEmbedding` computes them (see REFERENCE.md).
//!
//! - weights: safetensors (single or sharded, f32/f16/bf16, memory-mapped) with config.json,
//!   or a GGUF file (dequantized; [`gguf`]); a PEFT LoRA adapter is merged in ([`lora`]).
//! - tokenizer: the folder's tokenizer.json, or the GGUF's vocabulary ([`tokenizer`]).
//! - models: Llama/Mistral decoders ([`decoder`]) and BERT encoders ([`bert`]), each graph
//!   written once over the text ops of [`backend`], which run on the CPU ([`cpu`]: the f32
//!   reference ops of [`ops`]) or on a CUDA device ([`cuda`]).
//! - pooling: a text longer than `max_length` tokens is cut into consecutive chunks (no
//!   overlap; special tokens only where the tokenizer put them, i.e. BOS at the start); every
//!   chunk is run and the hidden states of all tokens of all chunks are averaged.
//!
//! Chunks of many texts go through the model together, sorted by length and packed without
//! padding (each attends only to itself), and come back in input order.
//!
//! On a CUDA device ([`cuda`]) the weights become bf16 at load and the whole forward pass and
//! the pooling run there; only the pooled sums come back.
//!
//! ```no_run
//! # fn main() -> niclip::Result<()> {
//! use niclip::text::{EmbedOptions, TextModel};
//! let model = TextModel::load("SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(), None, &niclip::device::Device::Cpu)?;
//! let opts = EmbedOptions { max_length: None, batch: 8, normalize: false };
//! let emb = model.embed(&["working memory", "fear conditioning"], &opts)?; // 2 × model.dim()
//! # Ok(()) }
//! ```

pub mod backend;
pub mod bert;
pub mod cpu;
pub mod cuda;
pub mod decoder;
mod engine;
pub mod gguf;
pub mod lora;
pub mod ops;
pub mod tokenizer;
pub mod weights;

use crate::device::Device;
use crate::error::{Error, Result};
use bert::{Bert, BertConfig};
use decoder::{Decoder, DecoderConfig};
pub use engine::{Engine, Model, TextNet};
use std::path::Path;
use tokenizer::TextTokenizer;
use weights::{Config, TensorMap};

/// How texts are embedded.
#[derive(Clone, Debug)]
pub struct EmbedOptions {
    /// Tokens per chunk (None: the model's [`TextModel::default_max_length`]).
    pub max_length: Option<usize>,
    /// Chunks per forward pass.
    pub batch: usize,
    /// Scale each embedding to unit L2 norm.
    pub normalize: bool,
}

impl Default for EmbedOptions {
    fn default() -> Self {
        EmbedOptions {
            max_length: None,
            batch: 8,
            normalize: false,
        }
    }
}

pub struct TextModel {
    net: Box<dyn TextNet>,
    tokenizer: TextTokenizer,
    vocab: usize,
    dim: usize,
    default_max_length: usize,
    bert_max_positions: Option<usize>,
    /// e.g. "llama", "mistral", "bert"
    pub model_type: String,
}

/// A stored tensor name → the model code's name: drops the task head and the `model.` /
/// `bert.` wrapper prefix, so bare and wrapped checkpoints read alike.
fn hf_name(n: &str) -> Option<String> {
    let n = n
        .strip_prefix("model.")
        .or_else(|| n.strip_prefix("bert."))
        .unwrap_or(n);
    if n.starts_with("lm_head.")
        || n.starts_with("cls.")
        || n.starts_with("pooler.")
        || n.ends_with("position_ids")
    {
        return None;
    }
    Some(n.to_string())
}

/// llama.cpp's tensor names → transformers' (without the `model.` prefix).
fn gguf_to_hf(n: &str) -> Option<String> {
    Some(match n {
        "token_embd.weight" => "embed_tokens.weight".into(),
        "output_norm.weight" => "norm.weight".into(),
        "output.weight" | "rope_freqs.weight" => return None,
        _ => {
            let rest = n.strip_prefix("blk.")?;
            let (i, rest) = rest.split_once('.')?;
            let (module, kind) = rest.rsplit_once('.')?;
            let hf = match module {
                "attn_norm" => "input_layernorm",
                "ffn_norm" => "post_attention_layernorm",
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                _ => return Some(n.to_string()),
            };
            format!("layers.{i}.{hf}.{kind}")
        }
    })
}

/// A transformers-style config.json object from a llama-architecture GGUF's metadata.
fn gguf_config(g: &gguf::Gguf, path: &Path) -> Result<serde_json::Map<String, serde_json::Value>> {
    let arch = g.architecture();
    if arch != "llama" && arch != "mistral" {
        return Err(Error::input(
            path,
            format!("GGUF architecture {arch:?} is not supported; niclip runs llama and mistral GGUF files (and bert as safetensors)"),
        ));
    }
    let key = |k: &str| g.get(&format!("{arch}.{k}")).cloned();
    let int = |k: &str| -> Result<usize> {
        key(k)
            .and_then(|v| v.as_i64())
            .map(|v| v as usize)
            .ok_or_else(|| Error::input(path, format!("no {arch}.{k} in the GGUF metadata")))
    };
    let heads = int("attention.head_count")?;
    let mut m = serde_json::Map::new();
    m.insert("model_type".into(), arch.into());
    m.insert("hidden_size".into(), int("embedding_length")?.into());
    m.insert(
        "intermediate_size".into(),
        int("feed_forward_length")?.into(),
    );
    m.insert("num_hidden_layers".into(), int("block_count")?.into());
    m.insert("num_attention_heads".into(), heads.into());
    m.insert(
        "num_key_value_heads".into(),
        int("attention.head_count_kv").unwrap_or(heads).into(),
    );
    m.insert(
        "max_position_embeddings".into(),
        int("context_length").unwrap_or(4096).into(),
    );
    if let Some(e) = key("attention.layer_norm_rms_epsilon").and_then(|v| v.as_f64()) {
        m.insert("rms_norm_eps".into(), e.into());
    }
    if let Some(t) = key("rope.freq_base").and_then(|v| v.as_f64()) {
        m.insert("rope_theta".into(), t.into());
    }
    if let Some(f) = key("rope.scale_linear").and_then(|v| v.as_f64()) {
        m.insert(
            "rope_scaling".into(),
            serde_json::json!({"type": "linear", "factor": f}),
        );
    }
    let vocab = match key("vocab_size").and_then(|v| v.as_i64()) {
        Some(v) => v as usize,
        None => match g.get("tokenizer.ggml.tokens") {
            Some(gguf::Value::Array(t)) => t.len(),
            _ => 0,
        },
    };
    m.insert("vocab_size".into(), vocab.into());
    Ok(m)
}

impl TextModel {
    /// Loads a model folder (config.json, *.safetensors, tokenizer.json; an adapter there is
    /// merged too) or a `.gguf` file, merging the PEFT adapter `lora` when given.
    pub fn load(model: &Path, lora: Option<&Path>, device: &Device) -> Result<TextModel> {
        let is_gguf = model.is_file()
            && (model
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
                || starts_with_gguf_magic(model));
        let (config_map, config_path, mut tensors, tokenizer) = if is_gguf {
            let g = gguf::Gguf::open(model)?;
            let cfg = gguf_config(&g, model)?;
            let mut t = g.read_all(model, gguf_to_hf)?;
            let c = Config {
                map: &cfg,
                path: model,
            };
            let (nh, nkv) = (
                c.usize("num_attention_heads")?,
                c.usize_opt("num_key_value_heads")?.unwrap_or(0),
            );
            for (name, t) in t.tensors.iter_mut() {
                let heads = if name.ends_with("self_attn.q_proj.weight") {
                    nh
                } else if name.ends_with("self_attn.k_proj.weight") {
                    nkv
                } else {
                    continue;
                };
                let cols = t.shape.get(1).copied().unwrap_or(1);
                t.data = gguf::unpermute_rows(&t.data, heads, cols).ok_or_else(|| {
                    Error::input(
                        model,
                        format!("{name} has shape {:?}, which does not split into {heads} attention heads (the GGUF metadata's head count); the file is corrupt: download it again", t.shape),
                    )
                })?;
            }
            let tok = TextTokenizer::from_gguf(&g, model)?;
            (cfg, model.to_path_buf(), t, tok)
        } else if model.is_dir() {
            let config_path = model.join("config.json");
            if !config_path.is_file() {
                return Err(Error::input(
                    model,
                    "no config.json here; give a model folder written by save_pretrained (config.json, *.safetensors, tokenizer.json) or a .gguf file",
                ));
            }
            let cfg = weights::read_json(&config_path)?;
            let model_type = cfg.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
            if !matches!(model_type, "llama" | "mistral" | "bert") {
                return Err(Error::input(
                    &config_path,
                    format!("unknown architecture: model_type {model_type:?}; niclip runs llama, mistral and bert models"),
                ));
            }
            let tok = TextTokenizer::from_file(&model.join("tokenizer.json"))?;
            let (files, index) = weights::safetensors_files(model)?;
            let mut t = weights::read_safetensors(&files, hf_name)?;
            if let Some(index) = index {
                t.place(index, hf_name);
            }
            (cfg, config_path, t, tok)
        } else {
            return Err(Error::input(
                model,
                "no such model: give a folder with config.json and *.safetensors, or a .gguf file",
            ));
        };
        let adapter = match lora {
            Some(a) => Some(a.to_path_buf()),
            None if model.is_dir() && model.join("adapter_config.json").is_file() => {
                Some(model.to_path_buf())
            }
            None => None,
        };
        if let Some(a) = adapter {
            lora::merge(&a, &mut tensors, hf_name)?;
        }
        let c = Config {
            map: &config_map,
            path: &config_path,
        };
        let model_type = c.str_opt("model_type").unwrap_or("").to_string();
        let model = build(&model_type, &c, &mut tensors)?;
        drop(tensors);
        let (vocab, dim) = (model.vocab(), model.dim());
        let (default_max_length, bert_max_positions) =
            (model.default_max_length(), model.bert_max_positions());
        Ok(TextModel {
            net: device.place_text_net(model)?,
            tokenizer,
            vocab,
            dim,
            default_max_length,
            bert_max_positions,
            model_type,
        })
    }

    /// Width of an embedding (the hidden size).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Tokens per chunk unless told otherwise: the paper's 8,192 for Mistral-family decoders,
    /// 4,096 for Llama-2 (max_position_embeddings 4096), i.e. min(max_position_embeddings, 8192);
    /// BERT's max_position_embeddings (512).
    pub fn default_max_length(&self) -> usize {
        self.default_max_length
    }

    /// Token ids of each text, special tokens included, before chunking.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let ids = self.tokenizer.encode(texts)?;
        if let Some(bad) = ids.iter().flatten().find(|&&i| i as usize >= self.vocab) {
            return Err(Error::Usage(format!(
                "the tokenizer produced id {bad} but the model has {} embeddings; the tokenizer belongs to another model",
                self.vocab
            )));
        }
        Ok(ids)
    }

    /// Last hidden states of token sequences packed without padding: `[Σ len, dim]`.
    pub fn hidden_states(&self, seqs: &[&[u32]]) -> Result<Vec<f32>> {
        self.net.hidden_states(seqs)
    }

    /// Mean-pooled last hidden states, n × dim row-major, rows in input order.
    pub fn embed(&self, texts: &[&str], opts: &EmbedOptions) -> Result<Vec<f32>> {
        self.embed_with_progress(texts, opts, &|_| {})
    }

    /// As [`TextModel::embed`], calling `progress(tokens)` after each forward pass.
    pub fn embed_with_progress(
        &self,
        texts: &[&str],
        opts: &EmbedOptions,
        progress: &dyn Fn(usize),
    ) -> Result<Vec<f32>> {
        let max_len = opts.max_length.unwrap_or_else(|| self.default_max_length());
        if max_len == 0 {
            return Err(Error::Usage("--max-length must be at least 1".into()));
        }
        if let Some(p) = self.bert_max_positions {
            if max_len > p {
                return Err(Error::Usage(format!(
                    "--max-length {max_len} exceeds this BERT model's {p} position embeddings"
                )));
            }
        }
        let ids = self.tokenize(texts)?;
        let d = self.dim();
        // (text, chunk) work items, longest first so a batch holds chunks of similar length.
        let mut chunks: Vec<(usize, &[u32])> = ids
            .iter()
            .enumerate()
            .flat_map(|(t, s)| s.chunks(max_len).map(move |c| (t, c)))
            .collect();
        chunks.sort_by_key(|(t, c)| (std::cmp::Reverse(c.len()), *t));
        let mut counts = vec![0usize; texts.len()];
        for (t, c) in &chunks {
            counts[*t] += c.len();
        }
        let sums = self
            .net
            .pooled_sums(&chunks, texts.len(), opts.batch, progress)?;
        let mut out: Vec<f32> = sums
            .chunks_exact(d)
            .zip(&counts)
            .flat_map(|(s, &n)| {
                s.iter()
                    .map(move |v| if n > 0 { (v / n as f64) as f32 } else { 0.0 })
            })
            .collect();
        if opts.normalize {
            ops::l2_normalize(&mut out, d);
        }
        Ok(out)
    }
}

fn starts_with_gguf_magic(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

fn build(model_type: &str, c: &Config, t: &mut TensorMap) -> Result<Model> {
    Ok(match model_type {
        "llama" | "mistral" => Model::Decoder(Decoder::build(DecoderConfig::from_json(c)?, t)?),
        "bert" => Model::Bert(Bert::build(BertConfig::from_json(c)?, t)?),
        other => {
            return Err(Error::input(
                c.path,
                format!("unknown architecture: model_type {other:?}; niclip runs llama, mistral and bert models"),
            ))
        }
    })
}
