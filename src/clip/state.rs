//! A model's training state between epochs (parameters, AdamW moments, the best weights so
//! far, the early-stopping counters) and its checkpoint file, written atomically, so that an
//! interrupted run resumes from its last checkpoint with the very same result.

use super::layout::Layout;
use super::model::{safetensors_bytes, Clip};
use crate::error::{Error, Result};
use safetensors::SafeTensors;
use std::path::Path;

/// Everything a model's training needs to continue: parameters, Adam moments, the best
/// weights so far and the early-stopping counters.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelState {
    pub params: Vec<f32>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub best: Vec<f32>,
    /// Epochs finished.
    pub epoch: usize,
    /// AdamW steps taken.
    pub step: u64,
    pub best_val: f32,
    pub best_epoch: usize,
    pub bad_epochs: usize,
    /// Early-stopped or out of epochs.
    pub done: bool,
    pub train_loss: Vec<f32>,
    pub val_loss: Vec<f32>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StateMeta {
    job: String,
    epoch: usize,
    step: u64,
    /// Null in checkpoints written before non-finite numbers were strings; the best could only
    /// be non-finite as +inf (no validation rows), so null reads back as +inf.
    best_val: Option<JsonF32>,
    best_epoch: usize,
    bad_epochs: usize,
    done: bool,
    train_loss: Vec<JsonF32>,
    val_loss: Vec<JsonF32>,
}

/// An f32 of the checkpoint's JSON. serde_json writes inf and NaN as null, which does not read
/// back as f32 (a run without --val could never resume): finite numbers stay numbers, the
/// others are the strings "inf", "-inf" and "NaN".
#[derive(Clone, Copy)]
struct JsonF32(f32);

impl serde::Serialize for JsonF32 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if self.0.is_finite() {
            s.serialize_f32(self.0)
        } else {
            s.collect_str(&self.0)
        }
    }
}

impl<'de> serde::Deserialize<'de> for JsonF32 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Number(f32),
            Text(String),
        }
        match Repr::deserialize(d)? {
            Repr::Number(v) => Ok(JsonF32(v)),
            Repr::Text(t) => match t.as_str() {
                "inf" | "-inf" | "NaN" => Ok(JsonF32(t.parse().unwrap())),
                _ => Err(serde::de::Error::custom(format!(
                    "{t:?} is not a number (nor inf, -inf or NaN)"
                ))),
            },
        }
    }
}

fn to_json(v: &[f32]) -> Vec<JsonF32> {
    v.iter().copied().map(JsonF32).collect()
}

fn from_json(v: Vec<JsonF32>) -> Vec<f32> {
    v.into_iter().map(|x| x.0).collect()
}

impl ModelState {
    pub fn new(init: &Clip) -> ModelState {
        let n = init.params.len();
        ModelState {
            params: init.params.clone(),
            m: vec![0.0; n],
            v: vec![0.0; n],
            best: init.params.clone(),
            epoch: 0,
            step: 0,
            best_val: f32::INFINITY,
            best_epoch: 0,
            bad_epochs: 0,
            done: false,
            train_loss: Vec::new(),
            val_loss: Vec::new(),
        }
    }

    /// The checkpoint: `.safetensors` with param.*, adam_m.*, adam_v.*, best.* and the counters
    /// (and a key `job` naming the inputs and settings) as JSON metadata. A finished model keeps
    /// only its best weights.
    pub fn save(&self, path: &Path, layout: &Layout, job: &str) -> Result<()> {
        let meta = StateMeta {
            job: job.to_string(),
            epoch: self.epoch,
            step: self.step,
            best_val: Some(JsonF32(self.best_val)),
            best_epoch: self.best_epoch,
            bad_epochs: self.bad_epochs,
            done: self.done,
            train_loss: to_json(&self.train_loss),
            val_loss: to_json(&self.val_loss),
        };
        let json = serde_json::to_string(&meta)
            .map_err(|e| Error::Usage(format!("checkpoint metadata: {e}")))?;
        let sets: Vec<(&str, &[f32])> = if self.done {
            vec![("best.", &self.best)]
        } else {
            vec![
                ("param.", &self.params),
                ("adam_m.", &self.m),
                ("adam_v.", &self.v),
                ("best.", &self.best),
            ]
        };
        let bytes = safetensors_bytes(layout, &sets, Some(("niclip_train_state", json)))?;
        crate::io::write_atomic(path, |w| {
            std::io::Write::write_all(w, &bytes).map_err(|e| Error::io(path, e))
        })
    }

    /// Reads a checkpoint of the same job (else an error saying to delete it or drop --resume).
    pub fn load(path: &Path, layout: &Layout, job: &str) -> Result<ModelState> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let corrupt =
            |m: String| Error::input(path, format!("{m}; delete this checkpoint to start over"));
        let (_, header) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| corrupt(format!("unreadable checkpoint ({e})")))?;
        let json = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("niclip_train_state"))
            .ok_or_else(|| corrupt("not a niclip training checkpoint".into()))?;
        let meta: StateMeta = serde_json::from_str(json)
            .map_err(|e| corrupt(format!("bad checkpoint metadata ({e})")))?;
        if meta.job != job {
            return Err(Error::input(
                path,
                format!("this checkpoint is from a different job ({}), not ({job}); delete it, or run without --resume", meta.job),
            ));
        }
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| corrupt(format!("unreadable checkpoint ({e})")))?;
        let read = |prefix: &str| -> Result<Vec<f32>> {
            let mut out = vec![0.0f32; layout.len];
            for t in &layout.tensors {
                let name = format!("{prefix}{}", t.name);
                let v = st
                    .tensor(&name)
                    .map_err(|_| corrupt(format!("{name} is missing")))?;
                if v.shape() != t.shape.as_slice() || v.data().len() != 4 * t.len() {
                    return Err(corrupt(format!("{name} has the wrong shape")));
                }
                for (o, c) in out[t.offset..t.offset + t.len()]
                    .iter_mut()
                    .zip(v.data().chunks_exact(4))
                {
                    *o = f32::from_le_bytes(c.try_into().unwrap());
                }
            }
            Ok(out)
        };
        let best = read("best.")?;
        let (params, m, v) = if meta.done {
            (best.clone(), Vec::new(), Vec::new())
        } else {
            (read("param.")?, read("adam_m.")?, read("adam_v.")?)
        };
        Ok(ModelState {
            params,
            m,
            v,
            best,
            epoch: meta.epoch,
            step: meta.step,
            best_val: meta.best_val.map_or(f32::INFINITY, |b| b.0),
            best_epoch: meta.best_epoch,
            bad_epochs: meta.bad_epochs,
            done: meta.done,
            train_loss: from_json(meta.train_loss),
            val_loss: from_json(meta.val_loss),
        })
    }
}
