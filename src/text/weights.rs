//! Model weights as f32 tensors by PyTorch name: safetensors files (one, or shards listed by
//! `model.safetensors.index.json`), memory-mapped and converted from f32/f16/bf16.
//!
//! Hostile input: sizes and offsets read from a file go through checked arithmetic and are
//! bounded before any allocation (the rule, for every parser, in ARCHITECTURE.md).

use crate::error::{Error, IoContext, Result};
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One f32 tensor, row-major.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Tensors by name, with the file each came from (for error messages).
pub struct TensorMap {
    pub tensors: HashMap<String, Tensor>,
    /// The file named where `origin` has no entry: the first file read, or the index.
    pub source: PathBuf,
    /// The shard of each tensor: the one it was read from, or the one the index places it in.
    pub origin: HashMap<String, PathBuf>,
}

impl TensorMap {
    /// The file a message about tensor `name` names.
    fn file_of(&self, name: &str) -> &Path {
        self.origin.get(name).unwrap_or(&self.source)
    }

    /// Records the shard the index places each tensor in (`rename` as for the read), so that a
    /// tensor missing from its shard is reported against that shard, and one the index places
    /// nowhere against the index.
    pub fn place(&mut self, index: Index, rename: impl Fn(&str) -> Option<String>) {
        self.source = index.path;
        for (stored, file) in index.placed {
            if let Some(name) = rename(&stored) {
                self.origin.entry(name).or_insert(file);
            }
        }
    }

    /// Takes tensor `name` and checks its shape; the message names the file and the mismatch.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self.tensors.remove(name).ok_or_else(|| match self.origin.get(name) {
            // Not read, so the index placed it: the shard or the index is wrong.
            Some(shard) => Error::input(
                shard,
                format!("tensor {name} is missing, though model.safetensors.index.json places it in this shard; download the model again or re-save it with save_pretrained"),
            ),
            None => Error::input(
                &self.source,
                format!("tensor {name} is missing; the weights are not those of the architecture config.json names"),
            ),
        })?;
        if t.shape != shape {
            return Err(Error::input(
                self.file_of(name),
                format!(
                    "tensor {name} has shape {:?} but config.json implies {shape:?}; the weights and config.json are from different models",
                    t.shape
                ),
            ));
        }
        Ok(t.data)
    }
}

/// A model's `model.safetensors.index.json` and the shard it places each tensor in.
pub struct Index {
    pub path: PathBuf,
    pub placed: Vec<(String, PathBuf)>,
}

/// The safetensors files of a model folder (the index's shards, or `model.safetensors`, or every
/// `*.safetensors` except a PEFT adapter's), and the index if there is one.
pub fn safetensors_files(dir: &Path) -> Result<(Vec<PathBuf>, Option<Index>)> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).at(&index)?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::input(&index, format!("not valid JSON ({e})")))?;
        let map = v["weight_map"].as_object().ok_or_else(|| {
            Error::input(
                &index,
                "no \"weight_map\" object; re-save the model with save_pretrained",
            )
        })?;
        let mut files: Vec<&str> = Vec::new();
        let mut placed = Vec::new();
        for (tensor, f) in map {
            let name = f.as_str().ok_or_else(|| {
                Error::input(
                    &index,
                    format!("weight_map entry {tensor:?} is {f}, not a shard file name; re-save the model with save_pretrained"),
                )
            })?;
            let name = shard_name(&index, tensor, name)?;
            placed.push((tensor.clone(), dir.join(name)));
            files.push(name);
        }
        files.sort();
        files.dedup();
        if files.is_empty() {
            return Err(Error::input(
                &index,
                "the weight_map lists no shard; re-save the model with save_pretrained",
            ));
        }
        // Checked here, where the index can be named: opening a missing shard would name only it.
        if let Some(gone) = files.iter().find(|f| !dir.join(f).is_file()) {
            return Err(Error::input(
                &index,
                format!("names shard {gone:?}, which is not in this folder; download the missing shard or re-save the model with save_pretrained"),
            ));
        }
        let files = files.into_iter().map(|f| dir.join(f)).collect();
        return Ok((
            files,
            Some(Index {
                path: index,
                placed,
            }),
        ));
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok((vec![single], None));
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .at(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "safetensors")
                && p.file_name()
                    .is_some_and(|n| n != "adapter_model.safetensors")
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::input(
            dir,
            "no *.safetensors weights here; save the model with save_pretrained(safe_serialization=True) or give a .gguf file",
        ));
    }
    Ok((files, None))
}

/// A shard name from the index, confined to a plain file name in the model folder: a hostile
/// index must not make us open `../…` or absolute paths (and an empty name would open the folder).
fn shard_name<'a>(index: &Path, tensor: &str, name: &'a str) -> Result<&'a str> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && Path::new(name).file_name() == Some(std::ffi::OsStr::new(name));
    if plain {
        Ok(name)
    } else {
        Err(Error::input(
            index,
            format!("weight_map entry {tensor:?} names shard {name:?}, which is not a file name in this folder; shards must sit beside the index (re-save the model with save_pretrained)"),
        ))
    }
}

/// Reads every tensor of the files as f32. `rename` maps a stored name to the name used by the
/// model code (None drops the tensor).
pub fn read_safetensors(
    files: &[PathBuf],
    rename: impl Fn(&str) -> Option<String> + Sync,
) -> Result<TensorMap> {
    let mut out = TensorMap {
        tensors: HashMap::new(),
        source: files.first().cloned().unwrap_or_default(),
        origin: HashMap::new(),
    };
    for path in files {
        let file = std::fs::File::open(path).at(path)?;
        // SAFETY: the map is read-only and lives until the tensors are copied out below; a file
        // changed underneath by another process is the user's problem as with any reader.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.at(path)?;
        let st = SafeTensors::deserialize(&mmap).map_err(|e| {
            Error::input(path, format!("not a readable safetensors file ({e}); it may be truncated: download or save it again"))
        })?;
        let views: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
        let converted: Vec<Result<(String, Tensor)>> = views
            .into_par_iter()
            .filter_map(|(name, view)| rename(&name).map(|n| (n, view)))
            .map(|(name, view)| {
                let data = to_f32(view.dtype(), view.data()).ok_or_else(|| {
                    Error::input(
                        path,
                        format!(
                            "tensor {name} has dtype {:?}; only F32, F16 and BF16 weights are read",
                            view.dtype()
                        ),
                    )
                })?;
                Ok((
                    name,
                    Tensor {
                        shape: view.shape().to_vec(),
                        data,
                    },
                ))
            })
            .collect();
        for r in converted {
            let (name, t) = r?;
            out.origin.insert(name.clone(), path.clone());
            out.tensors.insert(name, t);
        }
    }
    Ok(out)
}

fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}

/// config.json as a JSON object.
pub fn read_json(path: &Path) -> Result<serde_json::Map<String, serde_json::Value>> {
    let text = std::fs::read_to_string(path).at(path)?;
    match serde_json::from_str(&text) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err(Error::input(path, "expected a JSON object")),
        Err(e) => Err(Error::input(path, format!("not valid JSON ({e})"))),
    }
}

/// Typed access to a config.json object, with errors naming the file and the key.
pub struct Config<'a> {
    pub map: &'a serde_json::Map<String, serde_json::Value>,
    pub path: &'a Path,
}

impl Config<'_> {
    pub fn usize(&self, key: &str) -> Result<usize> {
        self.usize_opt(key)?.ok_or_else(|| {
            Error::input(
                self.path,
                format!("no \"{key}\" (a positive integer) in the model config"),
            )
        })
    }
    pub fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        match self.map.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                Error::input(
                    self.path,
                    format!("\"{key}\" must be a non-negative integer, found {v}"),
                )
            }),
        }
    }
    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.map.get(key) {
            None | Some(serde_json::Value::Null) => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| {
                Error::input(self.path, format!("\"{key}\" must be a number, found {v}"))
            }),
        }
    }
    pub fn bool_or(&self, key: &str, default: bool) -> bool {
        self.map
            .get(key)
            .and_then(|v| v.as_bool())
            .unwrap_or(default)
    }
    pub fn str_opt(&self, key: &str) -> Option<&str> {
        self.map.get(key).and_then(|v| v.as_str())
    }
}
