//! PEFT LoRA adapters merged into the base weights: for every adapted linear layer
//! `W += (lora_alpha / r) · B · A` (`lora_alpha / √r` with `use_rslora`), as peft's
//! `merge_and_unload` does. BrainGPT-7B-v0.2 is Mistral-7B-v0.1 with such an adapter.

use super::ops::matmul_t;
use super::weights::{read_json, read_safetensors, TensorMap};
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// Merges the adapter in `dir` (adapter_config.json + adapter_model.safetensors) into `base`.
/// `normalize` maps an adapter module path to the base tensor naming (prefixes stripped).
/// Returns the number of merged layers.
pub fn merge(dir: &Path, base: &mut TensorMap, normalize: impl Fn(&str) -> Option<String> + Sync) -> Result<usize> {
    let cfg_path = dir.join("adapter_config.json");
    let weights = dir.join("adapter_model.safetensors");
    if !cfg_path.is_file() || !weights.is_file() {
        return Err(Error::input(
            dir,
            "not a PEFT adapter folder: it needs adapter_config.json and adapter_model.safetensors (model.save_pretrained(dir) of a PeftModel writes them)",
        ));
    }
    let cfg = read_json(&cfg_path)?;
    if let Some(t) = cfg.get("peft_type").and_then(|v| v.as_str()).filter(|t| *t != "LORA") {
        return Err(Error::input(&cfg_path, format!("peft_type {t:?} is not supported (LORA is)")));
    }
    if cfg.get("use_dora").and_then(|v| v.as_bool()) == Some(true) {
        return Err(Error::input(&cfg_path, "DoRA adapters are not supported; merge it in Python with merge_and_unload()"));
    }
    let base_name = cfg.get("base_model_name_or_path").and_then(|v| v.as_str()).unwrap_or("an unnamed model").to_string();
    let num = |k: &str| cfg.get(k).and_then(|v| v.as_f64());
    let alpha = num("lora_alpha").ok_or_else(|| Error::input(&cfg_path, "no lora_alpha"))?;
    let rslora = cfg.get("use_rslora").and_then(|v| v.as_bool()).unwrap_or(false);
    let fan_in_fan_out = cfg.get("fan_in_fan_out").and_then(|v| v.as_bool()).unwrap_or(false);
    let pattern = |k: &str, module: &str| -> Option<f64> {
        cfg.get(k)?.as_object()?.iter().find(|(p, _)| module == p.as_str() || module.ends_with(&format!(".{p}")))?.1.as_f64()
    };

    // Adapter tensors: `base_model.model.<module>.lora_{A,B}[.<adapter>].weight`.
    let adapter = read_safetensors(std::slice::from_ref(&weights), |n| Some(n.to_string()))?;
    let mut pairs: BTreeMap<String, [Option<String>; 2]> = BTreeMap::new();
    for name in adapter.tensors.keys() {
        let stripped = name.strip_prefix("base_model.model.").unwrap_or(name);
        let (module, which) = match (stripped.find(".lora_A"), stripped.find(".lora_B")) {
            (Some(i), _) => (&stripped[..i], 0),
            (_, Some(i)) => (&stripped[..i], 1),
            _ => {
                return Err(Error::input(
                    &weights,
                    format!("tensor {name} is not a LoRA A/B matrix (embedding adapters and modules_to_save are not supported)"),
                ))
            }
        };
        pairs.entry(module.to_string()).or_default()[which] = Some(name.clone());
    }
    let mut adapter = adapter;
    let foreign = |msg: String| Error::input(dir, format!("{msg}: this adapter was made for {base_name}, not for this model"));
    let mut merged = 0;
    for (module, [a, b]) in pairs {
        let (Some(a), Some(b)) = (a, b) else {
            return Err(Error::input(&weights, format!("{module} has only one of lora_A / lora_B")));
        };
        let target = normalize(&format!("{module}.weight"))
            .ok_or_else(|| foreign(format!("the base model has no layer {module}")))?;
        let a = adapter.tensors.remove(&a).unwrap();
        let b = adapter.tensors.remove(&b).unwrap();
        let w = base.tensors.get_mut(&target).ok_or_else(|| foreign(format!("the base model has no layer {module}")))?;
        let (r, inp) = (a.shape[0], a.shape.get(1).copied().unwrap_or(0));
        let out = b.shape[0];
        let (w_out, w_in) = match w.shape.as_slice() {
            [o, i] if !fan_in_fan_out => (*o, *i),
            [i, o] => (*o, *i),
            _ => return Err(foreign(format!("{module} is not a 2D weight in the base model"))),
        };
        if a.shape.len() != 2 || b.shape != [out, r] || inp != w_in || out != w_out {
            return Err(foreign(format!(
                "{module}: lora_A {:?} and lora_B {:?} do not fit the base weight {:?}",
                a.shape, b.shape, w.shape
            )));
        }
        let alpha = pattern("alpha_pattern", module.as_str()).unwrap_or(alpha);
        let scale = if rslora { alpha / (r as f64).sqrt() } else { alpha / r as f64 } as f32;
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
                    w.data[i * out + o] += scale * delta[o * inp + i];
                }
            }
        } else {
            w.data.iter_mut().zip(&delta).for_each(|(w, d)| *w += scale * d);
        }
        merged += 1;
    }
    if merged == 0 {
        return Err(Error::input(&weights, "the adapter holds no LoRA weights"));
    }
    Ok(merged)
}
