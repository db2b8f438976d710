//! BERT encoders (transformers' `BertModel`, e.g. all-MiniLM-L6-v2): word + position + token
//! type embeddings → LayerNorm, then per layer bidirectional self-attention → residual →
//! LayerNorm → GELU MLP → residual → LayerNorm. Output: the last hidden state.

use super::backend::{Norm, TextOps};
use super::cpu::Cpu;
use super::ops::{AttnMask, Heads, Linear};
use super::weights::{Config, TensorMap};
use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct BertConfig {
    pub vocab: usize,
    pub hidden: usize,
    pub ff: usize,
    pub layers: usize,
    pub heads: usize,
    pub eps: f32,
    pub max_positions: usize,
    pub type_vocab: usize,
}

impl BertConfig {
    pub fn from_json(c: &Config) -> Result<BertConfig> {
        let act = c.str_opt("hidden_act").unwrap_or("gelu");
        if act != "gelu" {
            return Err(Error::input(
                c.path,
                format!("hidden_act {act:?} is not supported for BERT (gelu is)"),
            ));
        }
        if let Some(p) = c
            .str_opt("position_embedding_type")
            .filter(|p| *p != "absolute")
        {
            return Err(Error::input(
                c.path,
                format!("position_embedding_type {p:?} is not supported (absolute is)"),
            ));
        }
        let hidden = c.usize("hidden_size")?;
        let heads = c.usize("num_attention_heads")?;
        if heads == 0 || hidden % heads != 0 {
            return Err(Error::input(
                c.path,
                format!("hidden_size {hidden} is not a multiple of num_attention_heads {heads}"),
            ));
        }
        // Bounded before the layers are counted out (the largest released models have < 200).
        let layers = c.usize("num_hidden_layers")?;
        if layers > 1 << 10 {
            return Err(Error::input(
                c.path,
                format!("num_hidden_layers is {layers}, more than any model has (at most 1024); the config.json is corrupt"),
            ));
        }
        Ok(BertConfig {
            vocab: c.usize("vocab_size")?,
            hidden,
            ff: c.usize("intermediate_size")?,
            layers,
            heads,
            eps: c.f64_or("layer_norm_eps", 1e-12)? as f32,
            max_positions: c.usize_opt("max_position_embeddings")?.unwrap_or(512),
            type_vocab: c.usize_opt("type_vocab_size")?.unwrap_or(2),
        })
    }
}

/// One encoder layer's weights (query, key and value stacked into one matrix).
pub struct Layer<B: TextOps> {
    pub(super) qkv: B::Linear,
    pub(super) o: B::Linear,
    pub(super) attn_norm: Norm<B>,
    pub(super) inter: B::Linear,
    pub(super) out: B::Linear,
    pub(super) out_norm: Norm<B>,
}

/// A BERT encoder on backend `B` (built on the CPU, then placed where it runs).
pub struct Bert<B: TextOps = Cpu> {
    pub cfg: BertConfig,
    pub(super) word: B::Table,
    pub(super) position: B::Table,
    pub(super) token_type0: B::Vector,
    pub(super) emb_norm: Norm<B>,
    pub(super) layers: Vec<Layer<B>>,
}

impl Bert {
    /// Takes the tensors (names without the `bert.` prefix) with their shapes checked.
    pub fn build(cfg: BertConfig, t: &mut TensorMap) -> Result<Bert> {
        let d = cfg.hidden;
        let norm = |t: &mut TensorMap, p: &str| -> Result<Norm<Cpu>> {
            Ok(Norm {
                w: t.take(&format!("{p}.weight"), &[d])?,
                b: t.take(&format!("{p}.bias"), &[d])?,
            })
        };
        let lin = |t: &mut TensorMap, names: &[&str], out: usize, inp: usize| -> Result<Linear> {
            let mut w = Vec::with_capacity(names.len() * out * inp);
            let mut b = Vec::with_capacity(names.len() * out);
            for n in names {
                w.extend(t.take(&format!("{n}.weight"), &[out, inp])?);
                b.extend(t.take(&format!("{n}.bias"), &[out])?);
            }
            Ok(Linear {
                w,
                b: Some(b),
                out: names.len() * out,
                inp,
            })
        };
        let word = t.take("embeddings.word_embeddings.weight", &[cfg.vocab, d])?;
        let position = t.take(
            "embeddings.position_embeddings.weight",
            &[cfg.max_positions, d],
        )?;
        let types = t.take(
            "embeddings.token_type_embeddings.weight",
            &[cfg.type_vocab, d],
        )?;
        let emb_norm = norm(t, "embeddings.LayerNorm")?;
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let p = format!("encoder.layer.{i}.");
            let a = format!("{p}attention.self.");
            layers.push(Layer {
                qkv: lin(
                    t,
                    &[
                        &format!("{a}query"),
                        &format!("{a}key"),
                        &format!("{a}value"),
                    ],
                    d,
                    d,
                )?,
                o: lin(t, &[&format!("{p}attention.output.dense")], d, d)?,
                attn_norm: norm(t, &format!("{p}attention.output.LayerNorm"))?,
                inter: lin(t, &[&format!("{p}intermediate.dense")], cfg.ff, d)?,
                out: lin(t, &[&format!("{p}output.dense")], d, cfg.ff)?,
                out_norm: norm(t, &format!("{p}output.LayerNorm"))?,
            });
        }
        Ok(Bert {
            token_type0: types[..d].to_vec(),
            cfg,
            word,
            position,
            emb_norm,
            layers,
        })
    }
}

impl<B: TextOps> Bert<B> {
    /// Bidirectional attention, each sequence over itself.
    pub(super) fn mask(&self) -> AttnMask {
        AttnMask {
            causal: false,
            window: None,
        }
    }

    /// Last hidden states of a packed batch: `[t, hidden]`. Each sequence attends only to
    /// itself, as a padded batch with an attention mask does.
    pub(super) fn forward(&self, b: &B, bt: &B::Batch) -> Result<B::Stream> {
        let cfg = &self.cfg;
        let (d, eps) = (cfg.hidden, cfg.eps);
        let heads = Heads {
            nh: cfg.heads,
            nkv: cfg.heads,
            hd: d / cfg.heads,
        };
        let mut x = b.bert_embed(bt, &self.word, &self.position, &self.token_type0, d)?;
        b.layer_norm(bt, &mut x, &self.emb_norm, eps)?;
        let mut qkv = b.qkv_buffer(bt, heads)?;
        let mut attn = b.act(bt, d)?;
        let mut inter = b.act(bt, cfg.ff)?;
        for l in &self.layers {
            b.qkv(bt, b.normed(&x), &l.qkv, heads, &mut qkv)?;
            b.attention(bt, &qkv, heads, &mut attn)?;
            b.add_linear_norm(bt, &mut x, &attn, &l.o, &l.attn_norm, eps)?;
            b.linear_gelu(bt, b.normed(&x), &l.inter, &mut inter)?;
            b.add_linear_norm(bt, &mut x, &inter, &l.out, &l.out_norm, eps)?;
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_layer_count_is_an_error_naming_config_json() {
        // u64::MAX layers overflowed Vec::with_capacity when the encoder was built (issue 20).
        let map = serde_json::json!({
            "hidden_size": 32, "num_attention_heads": 4, "vocab_size": 100,
            "intermediate_size": 64, "num_hidden_layers": u64::MAX,
        });
        let c = Config {
            map: map.as_object().unwrap(),
            path: std::path::Path::new("m/config.json"),
        };
        let e = BertConfig::from_json(&c).unwrap_err().to_string();
        assert!(
            e.contains("config.json") && e.contains("num_hidden_layers"),
            "{e}"
        );
    }
}
