//! PEFT LoRA adapters merged into the base weights: for every adapted linear layer
//! `W += (lora_alpha / r) · B · A` (`lora_alpha / √r` with `use_rslora`), as peft's
//! `merge_and_unload` does. BrainGPT-7B-v0.2 is Mistral-7B-v0.1 with such an adapter.

use super::ops::matmul_t;
use super::weights::{read_json, read_safetensors, Tensor, TensorMap};
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// An adapter's adapter_config.json, as the merge reads it.
struct AdapterConfig {
    json: serde_json::Map<String, serde_json::Value>,
    /// `base_model_name_or_path`, for the message when the adapter does not fit.
    base_name: String,
    alpha: f64,
    rslora: bool,
    /// The base weights are stored `[in, out]` (GPT-2's Conv1D), not `[out, in]`.
    fan_in_fan_out: bool,
}

impl AdapterConfig {
    fn read(path: &Path) -> Result<AdapterConfig> {
        let json = read_json(path)?;
        if let Some(t) = json
            .get("peft_type")
            .and_then(|v| v.as_str())
            .filter(|t| *t != "LORA")
        {
            return Err(Error::input(
                path,
                format!("peft_type {t:?} is not supported (LORA is)"),
            ));
        }
        if json.get("use_dora").and_then(|v| v.as_bool()) == Some(true) {
            return Err(Error::input(
                path,
                "DoRA adapters are not supported; merge it in Python with merge_and_unload()",
            ));
        }
        let flag = |k: &str| json.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
        Ok(AdapterConfig {
            base_name: json
                .get("base_model_name_or_path")
                .and_then(|v| v.as_str())
                .unwrap_or("an unnamed model")
                .to_string(),
            alpha: json
                .get("lora_alpha")
                .and_then(|v| v.as_f64())
                .ok_or_else(|| Error::input(path, "no lora_alpha"))?,
            rslora: flag("use_rslora"),
            fan_in_fan_out: flag("fan_in_fan_out"),
            json,
        })
    }

    /// The value of `module` in a per-module override (`alpha_pattern`), if any.
    fn pattern(&self, key: &str, module: &str) -> Option<f64> {
        self.json
            .get(key)?
            .as_object()?
            .iter()
            .find(|(p, _)| module == p.as_str() || module.ends_with(&format!(".{p}")))?
            .1
            .as_f64()
    }

    /// `lora_alpha / r` (`/ √r` with rsLoRA), the module's alpha override applied.
    fn scale(&self, module: &str, r: usize) -> f32 {
        let alpha = self.pattern("alpha_pattern", module).unwrap_or(self.alpha);
        if self.rslora {
            (alpha / (r as f64).sqrt()) as f32
        } else {
            (alpha / r as f64) as f32
        }
    }
}

/// The adapter's tensors `base_model.model.<module>.lora_{A,B}[.<adapter>].weight` by module:
/// the names of its A and B.
fn lora_pairs(adapter: &TensorMap, weights: &Path) -> Result<BTreeMap<String, [String; 2]>> {
    let mut pairs: BTreeMap<String, [Option<String>; 2]> = BTreeMap::new();
    for name in adapter.tensors.keys() {
        let stripped = name.strip_prefix("base_model.model.").unwrap_or(name);
        let (module, which) = match (stripped.find(".lora_A"), stripped.find(".lora_B")) {
            (Some(i), _) => (&stripped[..i], 0),
            (_, Some(i)) => (&stripped[..i], 1),
            _ => {
                return Err(Error::input(
                    weights,
                    format!("tensor {name} is not a LoRA A/B matrix (embedding adapters and modules_to_save are not supported)"),
                ))
            }
        };
        pairs.entry(module.to_string()).or_default()[which] = Some(name.clone());
    }
    pairs
        .into_iter()
        .map(|(module, [a, b])| match (a, b) {
            (Some(a), Some(b)) => Ok((module, [a, b])),
            _ => Err(Error::input(
                weights,
                format!("{module} has only one of lora_A / lora_B"),
            )),
        })
        .collect()
}

/// `w += scale · B·A` for a base weight `[out, in]` (`[in, out]` with `fan_in_fan_out`).
fn add_delta(w: &mut [f32], a: &Tensor, b: &Tensor, scale: f32, fan_in_fan_out: bool) {
    let (r, inp, out) = (a.shape[0], a.shape[1], b.shape[0]);
    // ΔW = B · A as [out, in] = B[out, r] · (Aᵀ)ᵀ; matmul_t computes x · wᵀ with w = Aᵀ [in, r].
    let mut at = vec![0.0f32; inp * r];
    for i in 0..r {
        for j in 0..inp {
            at[j * r + i] = a.data[i * inp + j];
        }
    }
    let mut delta = vec![0.0f32; out * inp];
    matmul_t(&b.data, out, r, &at, inp, &mut delta, None);
    if fan_in_fan_out {
        for o in 0..out {
            for i in 0..inp {
                w[i * out + o] += scale * delta[o * inp + i];
            }
        }
    } else {
        w.iter_mut().zip(&delta).for_each(|(w, d)| *w += scale * d);
    }
}

/// Merges the adapter in `dir` (adapter_config.json + adapter_model.safetensors) into `base`.
/// `normalize` maps an adapter module path to the base tensor naming (prefixes stripped).
/// Returns the number of merged layers.
pub fn merge(
    dir: &Path,
    base: &mut TensorMap,
    normalize: impl Fn(&str) -> Option<String> + Sync,
) -> Result<usize> {
    let cfg_path = dir.join("adapter_config.json");
    let weights = dir.join("adapter_model.safetensors");
    if !cfg_path.is_file() || !weights.is_file() {
        return Err(Error::input(
            dir,
            "not a PEFT adapter folder: it needs adapter_config.json and adapter_model.safetensors (model.save_pretrained(dir) of a PeftModel writes them)",
        ));
    }
    let cfg = AdapterConfig::read(&cfg_path)?;
    let mut adapter = read_safetensors(std::slice::from_ref(&weights), |n| Some(n.to_string()))?;
    let pairs = lora_pairs(&adapter, &weights)?;
    let foreign = |msg: String| {
        Error::input(
            dir,
            format!(
                "{msg}: this adapter was made for {}, not for this model",
                cfg.base_name
            ),
        )
    };
    for (module, [a, b]) in &pairs {
        let target = normalize(&format!("{module}.weight"))
            .ok_or_else(|| foreign(format!("the base model has no layer {module}")))?;
        let a = adapter.tensors.remove(a).unwrap();
        let b = adapter.tensors.remove(b).unwrap();
        let w = base
            .tensors
            .get_mut(&target)
            .ok_or_else(|| foreign(format!("the base model has no layer {module}")))?;
        let (r, inp) = (a.shape[0], a.shape.get(1).copied().unwrap_or(0));
        let out = b.shape[0];
        let (w_out, w_in) = match w.shape.as_slice() {
            [o, i] if !cfg.fan_in_fan_out => (*o, *i),
            [i, o] => (*o, *i),
            _ => {
                return Err(foreign(format!(
                    "{module} is not a 2D weight in the base model"
                )))
            }
        };
        if a.shape.len() != 2 || b.shape != [out, r] || inp != w_in || out != w_out {
            return Err(foreign(format!(
                "{module}: lora_A {:?} and lora_B {:?} do not fit the base weight {:?}",
                a.shape, b.shape, w.shape
            )));
        }
        add_delta(
            &mut w.data,
            &a,
            &b,
            cfg.scale(module, r),
            cfg.fan_in_fan_out,
        );
    }
    if pairs.is_empty() {
        return Err(Error::input(&weights, "the adapter holds no LoRA weights"));
    }
    Ok(pairs.len())
}
