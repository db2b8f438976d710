//! Llama and Mistral decoders (transformers' `LlamaModel` / `MistralModel`): token embedding,
//! per layer RMSNorm → grouped-query causal self-attention with RoPE (Mistral: sliding window)
//! → residual → RMSNorm → SwiGLU MLP → residual; final RMSNorm. Output: the last hidden state.

use super::backend::{Rope, TextOps};
use super::cpu::Cpu;
use super::ops::{AttnMask, Heads, Linear};
use super::weights::{Config, TensorMap};
use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct DecoderConfig {
    pub model_type: String,
    pub vocab: usize,
    pub hidden: usize,
    pub ff: usize,
    pub layers: usize,
    pub heads: Heads,
    pub eps: f32,
    pub inv_freq: Vec<f32>,
    pub window: Option<usize>,
    pub max_positions: usize,
    pub attention_bias: bool,
    pub mlp_bias: bool,
}

impl DecoderConfig {
    /// From a transformers config.json (`llama` or `mistral`); reads both the old
    /// `rope_theta`/`rope_scaling` keys and transformers 5's `rope_parameters`.
    pub fn from_json(c: &Config) -> Result<DecoderConfig> {
        let model_type = c.str_opt("model_type").unwrap_or("").to_string();
        let hidden = c.usize("hidden_size")?;
        let nh = c.usize("num_attention_heads")?;
        let nkv = c.usize_opt("num_key_value_heads")?.unwrap_or(nh);
        let hd = c.usize_opt("head_dim")?.unwrap_or(hidden / nh.max(1));
        let layers = c.usize("num_hidden_layers")?;
        if nh == 0 || nkv == 0 || nh % nkv != 0 || hd % 2 != 0 {
            return Err(Error::input(
                c.path,
                format!("num_attention_heads {nh} must be a positive multiple of num_key_value_heads {nkv}, head_dim {hd} even"),
            ));
        }
        // Shapes read from the file are bounded before anything is sized by them (the largest
        // released models are far inside these).
        for (key, value, max) in [
            ("hidden_size", hidden, 1 << 17),
            ("num_attention_heads", nh, 1 << 10),
            ("head_dim", hd, 1 << 10),
            ("num_hidden_layers", layers, 1 << 10),
        ] {
            if value > max {
                return Err(Error::input(c.path, format!("{key} is {value}, more than any model has (at most {max}); the config.json is corrupt")));
            }
        }
        let max_positions = c.usize_opt("max_position_embeddings")?.unwrap_or(4096);
        let params = c.map.get("rope_parameters").and_then(|v| v.as_object());
        let theta = match params
            .and_then(|p| p.get("rope_theta"))
            .and_then(|v| v.as_f64())
        {
            Some(t) => t,
            None => c.f64_or("rope_theta", 10000.0)?,
        };
        let scaling = c
            .map
            .get("rope_scaling")
            .and_then(|v| v.as_object())
            .or(params)
            .cloned()
            .unwrap_or_default();
        let inv_freq = rope_inv_freq(hd, theta, &scaling, max_positions)
            .map_err(|m| Error::input(c.path, m))?;
        let window = if model_type == "mistral" {
            c.usize_opt("sliding_window")?
        } else {
            None
        };
        Ok(DecoderConfig {
            vocab: c.usize("vocab_size")?,
            hidden,
            ff: c.usize("intermediate_size")?,
            layers,
            heads: Heads { nh, nkv, hd },
            eps: c.f64_or("rms_norm_eps", 1e-6)? as f32,
            inv_freq,
            window,
            max_positions,
            attention_bias: c.bool_or("attention_bias", false),
            mlp_bias: c.bool_or("mlp_bias", false),
            model_type,
        })
    }
}

/// RoPE inverse frequencies in f32 as transformers computes them: default, linear, dynamic
/// (at lengths ≤ max_position_embeddings, where it equals default) and llama3 scaling.
pub fn rope_inv_freq(
    hd: usize,
    theta: f64,
    scaling: &serde_json::Map<String, serde_json::Value>,
    max_positions: usize,
) -> std::result::Result<Vec<f32>, String> {
    let base: Vec<f32> = (0..hd / 2)
        .map(|i| {
            let e = (2 * i) as f32 / hd as f32;
            1.0 / (theta as f32).powf(e)
        })
        .collect();
    let kind = scaling
        .get("rope_type")
        .or_else(|| scaling.get("type"))
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    let num = |k: &str| {
        scaling
            .get(k)
            .and_then(|v| v.as_f64())
            .ok_or_else(|| format!("rope scaling {kind:?} needs \"{k}\""))
    };
    Ok(match kind {
        "default" | "dynamic" => base,
        "linear" => {
            let f = num("factor")? as f32;
            base.iter().map(|x| x / f).collect()
        }
        "llama3" => {
            let f = num("factor")?;
            let lo = num("low_freq_factor")?;
            let hi = num("high_freq_factor")?;
            let old = scaling
                .get("original_max_position_embeddings")
                .and_then(|v| v.as_f64())
                .unwrap_or(max_positions as f64);
            let (lo_wl, hi_wl) = (old / lo, old / hi);
            base.iter()
                .map(|&x| {
                    let wl = 2.0 * std::f64::consts::PI / x as f64;
                    if wl < hi_wl {
                        x
                    } else if wl > lo_wl {
                        (x as f64 / f) as f32
                    } else {
                        let s = (old / wl - lo) / (hi - lo);
                        ((1.0 - s) * x as f64 / f + s * x as f64) as f32
                    }
                })
                .collect()
        }
        other => {
            return Err(format!(
            "rope scaling type {other:?} is not supported (default, linear, dynamic, llama3 are)"
        ))
        }
    })
}

/// One decoder layer's weights (q, k, v and gate, up stacked into one matrix each).
pub struct Layer<B: TextOps> {
    pub(super) attn_norm: B::Vector,
    pub(super) qkv: B::Linear,
    pub(super) o: B::Linear,
    pub(super) mlp_norm: B::Vector,
    pub(super) gate_up: B::Linear,
    pub(super) down: B::Linear,
}

/// A decoder on backend `B` (built on the CPU, then placed where it runs).
pub struct Decoder<B: TextOps = Cpu> {
    pub cfg: DecoderConfig,
    pub(super) embed: B::Table,
    pub(super) layers: Vec<Layer<B>>,
    pub(super) norm: B::Vector,
}

/// Rows of several `[_, inp]` matrices stacked into one layer (one GEMM instead of several).
fn stacked(parts: Vec<(Vec<f32>, Option<Vec<f32>>, usize)>, inp: usize) -> Linear {
    let out = parts.iter().map(|p| p.2).sum();
    let has_bias = parts.iter().any(|p| p.1.is_some());
    let mut w = Vec::with_capacity(out * inp);
    let mut b = Vec::with_capacity(out);
    for (pw, pb, n) in parts {
        w.extend(pw);
        b.extend(pb.unwrap_or_else(|| vec![0.0; n]));
    }
    Linear {
        w,
        b: has_bias.then_some(b),
        out,
        inp,
    }
}

impl Decoder {
    /// Takes the tensors (names without the `model.` prefix) with their shapes checked.
    pub fn build(cfg: DecoderConfig, t: &mut TensorMap) -> Result<Decoder> {
        let d = cfg.hidden;
        let Heads { nh, nkv, hd } = cfg.heads;
        let embed = t.take("embed_tokens.weight", &[cfg.vocab, d])?;
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let p = format!("layers.{i}.");
            let mut lin = |name: &str,
                           out: usize,
                           inp: usize,
                           bias: bool|
             -> Result<(Vec<f32>, Option<Vec<f32>>, usize)> {
                let w = t.take(&format!("{p}{name}.weight"), &[out, inp])?;
                let b = if bias {
                    Some(t.take(&format!("{p}{name}.bias"), &[out])?)
                } else {
                    None
                };
                Ok((w, b, out))
            };
            let q = lin("self_attn.q_proj", nh * hd, d, cfg.attention_bias)?;
            let k = lin("self_attn.k_proj", nkv * hd, d, cfg.attention_bias)?;
            let v = lin("self_attn.v_proj", nkv * hd, d, cfg.attention_bias)?;
            let o = lin("self_attn.o_proj", d, nh * hd, cfg.attention_bias)?;
            let gate = lin("mlp.gate_proj", cfg.ff, d, cfg.mlp_bias)?;
            let up = lin("mlp.up_proj", cfg.ff, d, cfg.mlp_bias)?;
            let down = lin("mlp.down_proj", d, cfg.ff, cfg.mlp_bias)?;
            layers.push(Layer {
                attn_norm: t.take(&format!("{p}input_layernorm.weight"), &[d])?,
                mlp_norm: t.take(&format!("{p}post_attention_layernorm.weight"), &[d])?,
                qkv: stacked(vec![q, k, v], d),
                o: stacked(vec![o], nh * hd),
                gate_up: stacked(vec![gate, up], d),
                down: stacked(vec![down], cfg.ff),
            });
        }
        let norm = t.take("norm.weight", &[d])?;
        Ok(Decoder {
            cfg,
            embed,
            layers,
            norm,
        })
    }
}

impl<B: TextOps> Decoder<B> {
    /// Causal attention, within Mistral's sliding window.
    pub(super) fn mask(&self) -> AttnMask {
        AttnMask {
            causal: true,
            window: self.cfg.window,
        }
    }

    /// RoPE of these inverse frequencies; a kept table covers the default chunk length.
    pub(super) fn rope(&self) -> Rope<'_> {
        Rope {
            inv_freq: &self.cfg.inv_freq,
            keep: self.cfg.max_positions.min(8192),
        }
    }

    /// Last hidden states of a packed batch: `[t, hidden]`.
    pub(super) fn forward(&self, b: &B, bt: &B::Batch) -> Result<B::Stream> {
        let cfg = &self.cfg;
        let (heads, eps, ff) = (cfg.heads, cfg.eps, cfg.ff);
        let mut x = b.embed(bt, &self.embed, cfg.hidden)?;
        let mut h = b.act(bt, cfg.hidden)?;
        let mut qkv = b.qkv_buffer(bt, heads)?;
        let mut attn = b.act(bt, heads.nh * heads.hd)?;
        let mut gate_up = b.act(bt, 2 * ff)?;
        let mut act = b.act(bt, ff)?;
        for l in &self.layers {
            b.rms_norm(bt, &x, &l.attn_norm, eps, &mut h)?;
            b.qkv(bt, &h, &l.qkv, heads, &mut qkv)?;
            b.rope(bt, &mut qkv, heads)?;
            b.attention(bt, &qkv, heads, &mut attn)?;
            b.add_linear(bt, &mut x, &attn, &l.o)?;
            b.rms_norm(bt, &x, &l.mlp_norm, eps, &mut h)?;
            b.linear(bt, &h, &l.gate_up, &mut gate_up)?;
            b.swiglu(bt, &gate_up, ff, &mut act)?;
            b.add_linear(bt, &mut x, &act, &l.down)?;
        }
        b.final_rms_norm(bt, x, &self.norm, eps)
    }
}
