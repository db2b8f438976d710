//! BERT encoders (transformers' `BertModel`, e.g. all-MiniLM-L6-v2): word + position + token
//! type embeddings → LayerNorm, then per layer bidirectional self-attention → residual →
//! LayerNorm → GELU MLP → residual → LayerNorm. Output: the last hidden state.

use super::decoder::add;
use super::ops::{self, AttnMask, Heads, Linear};
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
        Ok(BertConfig {
            vocab: c.usize("vocab_size")?,
            hidden,
            ff: c.usize("intermediate_size")?,
            layers: c.usize("num_hidden_layers")?,
            heads,
            eps: c.f64_or("layer_norm_eps", 1e-12)? as f32,
            max_positions: c.usize_opt("max_position_embeddings")?.unwrap_or(512),
            type_vocab: c.usize_opt("type_vocab_size")?.unwrap_or(2),
        })
    }
}

// Fields visible to the CUDA path (cuda.rs), which converts them to bf16 device weights.
pub(super) struct Norm {
    pub(super) w: Vec<f32>,
    pub(super) b: Vec<f32>,
}

pub(super) struct Layer {
    pub(super) qkv: Linear,
    pub(super) o: Linear,
    pub(super) attn_norm: Norm,
    pub(super) inter: Linear,
    pub(super) out: Linear,
    pub(super) out_norm: Norm,
}

pub struct Bert {
    pub cfg: BertConfig,
    pub(super) word: Vec<f32>,
    pub(super) position: Vec<f32>,
    pub(super) token_type0: Vec<f32>,
    pub(super) emb_norm: Norm,
    pub(super) layers: Vec<Layer>,
}

impl Bert {
    /// Takes the tensors (names without the `bert.` prefix) with their shapes checked.
    pub fn build(cfg: BertConfig, t: &mut TensorMap) -> Result<Bert> {
        let d = cfg.hidden;
        let norm = |t: &mut TensorMap, p: &str| -> Result<Norm> {
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

    /// Last hidden states of sequences packed without padding: `[Σ len, hidden]`. Each
    /// sequence attends only to itself, as a padded batch with an attention mask does.
    pub fn forward(&self, seqs: &[&[u32]]) -> Vec<f32> {
        let d = self.cfg.hidden;
        let heads = Heads {
            nh: self.cfg.heads,
            nkv: self.cfg.heads,
            hd: d / self.cfg.heads,
        };
        let mut starts = vec![0usize];
        let mut x = Vec::new();
        for s in seqs {
            starts.push(starts.last().unwrap() + s.len());
            for (p, &id) in s.iter().enumerate() {
                let (w, pe) = (
                    &self.word[id as usize * d..][..d],
                    &self.position[p * d..][..d],
                );
                x.extend((0..d).map(|j| w[j] + self.token_type0[j] + pe[j]));
            }
        }
        let total = *starts.last().unwrap();
        ops::layer_norm(&mut x, &self.emb_norm.w, &self.emb_norm.b, self.cfg.eps);
        let mask = AttnMask {
            causal: false,
            window: None,
        };
        let mut h = vec![0.0f32; total * d];
        for l in &self.layers {
            let qkv = l.qkv.forward(&x, total);
            let mut q = Vec::with_capacity(total * d);
            let mut k = Vec::with_capacity(total * d);
            let mut v = Vec::with_capacity(total * d);
            for row in qkv.chunks_exact(3 * d) {
                q.extend_from_slice(&row[..d]);
                k.extend_from_slice(&row[d..2 * d]);
                v.extend_from_slice(&row[2 * d..]);
            }
            let attn = ops::attention_batch(&q, &k, &v, &starts, heads, mask);
            l.o.forward_into(&attn, total, &mut h);
            add(&mut x, &h);
            ops::layer_norm(&mut x, &l.attn_norm.w, &l.attn_norm.b, self.cfg.eps);
            let mut inter = l.inter.forward(&x, total);
            ops::gelu(&mut inter);
            l.out.forward_into(&inter, total, &mut h);
            add(&mut x, &h);
            ops::layer_norm(&mut x, &l.out_norm.w, &l.out_norm.b, self.cfg.eps);
        }
        x
    }
}
