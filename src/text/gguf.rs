//! GGUF (llama.cpp's single-file format): metadata, and tensors dequantized to f32
//! (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1). Llama-architecture Q/K weights are stored
//! permuted for llama.cpp's interleaved RoPE; they are un-permuted here, as transformers' GGUF
//! loader does, so the model code sees PyTorch's layout.
//!
//! Hostile input: sizes and offsets read from a file go through checked arithmetic and are
//! bounded before any allocation (the rule, for every parser, in ARCHITECTURE.md).

use super::weights::{Tensor, TensorMap};
use crate::error::{Error, IoContext, Result};
use half::f16;
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::Path;

/// A metadata value.
#[derive(Clone, Debug)]
pub enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

struct TensorInfo {
    name: String,
    /// ggml order: dims[0] is the innermost (contiguous) one.
    dims: Vec<usize>,
    kind: u32,
    offset: usize,
}

/// A GGUF file mapped in memory.
pub struct Gguf {
    pub meta: HashMap<String, Value>,
    tensors: Vec<TensorInfo>,
    data_start: usize,
    mmap: memmap2::Mmap,
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| {
                Error::input(
                    self.path,
                    "the GGUF header runs past the end of the file (truncated?); download it again",
                )
            })?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn string(&mut self) -> Result<String> {
        let n = self.u64()? as usize;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    fn value(&mut self, kind: u32) -> Result<Value> {
        Ok(match kind {
            0 => Value::Int(self.take(1)?[0] as i64),
            1 => Value::Int(self.take(1)?[0] as i8 as i64),
            2 => Value::Int(u16::from_le_bytes(self.take(2)?.try_into().unwrap()) as i64),
            3 => Value::Int(i16::from_le_bytes(self.take(2)?.try_into().unwrap()) as i64),
            4 => Value::Int(self.u32()? as i64),
            5 => Value::Int(self.u32()? as i32 as i64),
            6 => Value::Float(f32::from_le_bytes(self.take(4)?.try_into().unwrap()) as f64),
            7 => Value::Bool(self.take(1)?[0] != 0),
            8 => Value::Str(self.string()?),
            9 => {
                let inner = self.u32()?;
                let n = self.u64()? as usize;
                let mut v = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    v.push(self.value(inner)?);
                }
                Value::Array(v)
            }
            10 => Value::Int(self.u64()? as i64),
            11 => Value::Int(self.u64()? as i64),
            12 => Value::Float(f64::from_le_bytes(self.take(8)?.try_into().unwrap())),
            k => {
                return Err(Error::input(
                    self.path,
                    format!("unknown GGUF metadata type {k}; is this a GGUF v2/v3 file?"),
                ))
            }
        })
    }
}

const F32: u32 = 0;
const F16: u32 = 1;
const Q4_0: u32 = 2;
const Q4_1: u32 = 3;
const Q5_0: u32 = 6;
const Q5_1: u32 = 7;
const Q8_0: u32 = 8;
const BF16: u32 = 30;

/// (elements per block, bytes per block) of a ggml type this reader dequantizes.
fn block_layout(kind: u32) -> Option<(usize, usize)> {
    Some(match kind {
        F32 => (1, 4),
        F16 | BF16 => (1, 2),
        Q4_0 => (32, 18),
        Q4_1 => (32, 20),
        Q5_0 => (32, 22),
        Q5_1 => (32, 24),
        Q8_0 => (32, 34),
        _ => return None,
    })
}

impl Gguf {
    pub fn open(path: &Path) -> Result<Gguf> {
        let file = std::fs::File::open(path).at(path)?;
        // SAFETY: read-only map; tensors are copied out (dequantized) before it is dropped.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.at(path)?;
        let mut c = Cursor {
            b: &mmap,
            pos: 0,
            path,
        };
        if c.take(4)? != b"GGUF" {
            return Err(Error::input(
                path,
                "not a GGUF file (bad magic); give a .gguf made by llama.cpp or a model folder",
            ));
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(Error::input(
                path,
                format!("GGUF version {version} is not supported (2 and 3 are)"),
            ));
        }
        let n_tensors = c.u64()? as usize;
        let n_kv = c.u64()? as usize;
        let mut meta = HashMap::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            let kind = c.u32()?;
            meta.insert(key, c.value(kind)?);
        }
        let mut tensors = Vec::with_capacity(n_tensors.min(1 << 16));
        for _ in 0..n_tensors {
            let name = c.string()?;
            let nd = c.u32()? as usize;
            let dims = (0..nd)
                .map(|_| c.u64().map(|d| d as usize))
                .collect::<Result<Vec<_>>>()?;
            let kind = c.u32()?;
            let offset = c.u64()? as usize;
            tensors.push(TensorInfo {
                name,
                dims,
                kind,
                offset,
            });
        }
        let align = meta
            .get("general.alignment")
            .and_then(Value::as_i64)
            .unwrap_or(32)
            .max(1) as usize;
        let data_start = c.pos.div_ceil(align) * align;
        let g = Gguf {
            meta,
            tensors,
            data_start,
            mmap,
        };
        for t in &g.tensors {
            g.check_extent(t, path)?;
        }
        Ok(g)
    }

    /// A tensor's shape and bytes are sane before anything reads them: 1 to 4 dims, none zero,
    /// and (for the types niclip reads) its data inside the file, all in checked arithmetic
    /// (sizes read from a file are bounded before any allocation or slice).
    fn check_extent(&self, t: &TensorInfo, path: &Path) -> Result<()> {
        let bad = |what: String| {
            Error::input(
                path,
                format!(
                    "tensor {} {what}; the file is corrupt, download it again",
                    t.name
                ),
            )
        };
        if t.dims.is_empty() || t.dims.len() > 4 || t.dims.contains(&0) {
            return Err(bad(format!(
                "has the shape {:?} (GGUF tensors have 1 to 4 non-zero dims)",
                t.dims
            )));
        }
        let n = t.dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let Some((be, bb)) = block_layout(t.kind) else {
            return Ok(()); // an unsupported type is refused, by name, when it is read
        };
        if let Some(n) = n.filter(|n| !n.is_multiple_of(be)) {
            return Err(bad(format!(
                "has {n} elements, not a whole number of blocks"
            )));
        }
        let end = n
            .and_then(|n| (n / be).checked_mul(bb))
            .and_then(|bytes| self.data_start.checked_add(t.offset)?.checked_add(bytes));
        match end {
            Some(end) if end <= self.mmap.len() => Ok(()),
            Some(_) => Err(bad("runs past the end of the file (truncated?)".into())),
            None => Err(bad(format!(
                "has the shape {:?}, which no file holds",
                t.dims
            ))),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.meta.get(key)
    }

    pub fn architecture(&self) -> &str {
        self.get("general.architecture")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// Every tensor dequantized to f32 under its GGUF name, shape in PyTorch order (outer first).
    pub fn read_all(
        &self,
        path: &Path,
        rename: impl Fn(&str) -> Option<String> + Sync,
    ) -> Result<TensorMap> {
        let converted: Vec<Result<(String, Tensor)>> = self
            .tensors
            .par_iter()
            .filter_map(|t| rename(&t.name).map(|n| (n, t)))
            .map(|(name, t)| {
                let n: usize = t.dims.iter().product();
                let (be, bb) = block_layout(t.kind).ok_or_else(|| {
                    Error::input(
                        path,
                        format!(
                            "tensor {} has ggml type {}; niclip reads F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1 (re-quantize with llama-quantize)",
                            t.name, t.kind
                        ),
                    )
                })?;
                if !n.is_multiple_of(be) {
                    return Err(Error::input(path, format!("tensor {} has {n} elements, not a whole number of blocks", t.name)));
                }
                let start = self.data_start + t.offset;
                let bytes = &self.mmap[start..start + n / be * bb];
                let data = dequantize(t.kind, bytes, n);
                let shape = t.dims.iter().rev().copied().collect();
                Ok((name, Tensor { shape, data }))
            })
            .collect();
        let mut map = TensorMap {
            tensors: HashMap::new(),
            source: path.to_path_buf(),
            origin: HashMap::new(),
        };
        for r in converted {
            let (name, t) = r?;
            map.tensors.insert(name, t);
        }
        Ok(map)
    }
}

/// Dequantizes `n` values of ggml type `kind` (the layouts of ggml-common.h).
pub fn dequantize(kind: u32, b: &[u8], n: usize) -> Vec<f32> {
    let h = |i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
    let mut out = vec![0.0f32; n];
    match kind {
        F32 => out
            .iter_mut()
            .zip(b.chunks_exact(4))
            .for_each(|(o, c)| *o = f32::from_le_bytes(c.try_into().unwrap())),
        F16 => out
            .iter_mut()
            .zip(b.chunks_exact(2))
            .for_each(|(o, c)| *o = f16::from_le_bytes([c[0], c[1]]).to_f32()),
        BF16 => out
            .iter_mut()
            .zip(b.chunks_exact(2))
            .for_each(|(o, c)| *o = half::bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        Q8_0 => {
            for (blk, o) in out.chunks_exact_mut(32).enumerate() {
                let p = blk * 34;
                let d = h(p);
                for (j, o) in o.iter_mut().enumerate() {
                    *o = b[p + 2 + j] as i8 as f32 * d;
                }
            }
        }
        Q4_0 | Q4_1 => {
            let bb = if kind == Q4_0 { 18 } else { 20 };
            for (blk, o) in out.chunks_exact_mut(32).enumerate() {
                let p = blk * bb;
                let d = h(p);
                let (m, qs) = if kind == Q4_0 {
                    (-8.0 * d, p + 2)
                } else {
                    (h(p + 2), p + 4)
                };
                for j in 0..16 {
                    let q = b[qs + j];
                    o[j] = (q & 0x0f) as f32 * d + m;
                    o[j + 16] = (q >> 4) as f32 * d + m;
                }
            }
        }
        Q5_0 | Q5_1 => {
            let bb = if kind == Q5_0 { 22 } else { 24 };
            for (blk, o) in out.chunks_exact_mut(32).enumerate() {
                let p = blk * bb;
                let d = h(p);
                let (m, qh_at) = if kind == Q5_0 {
                    (-16.0 * d, p + 2)
                } else {
                    (h(p + 2), p + 4)
                };
                let qh = u32::from_le_bytes(b[qh_at..qh_at + 4].try_into().unwrap());
                let qs = qh_at + 4;
                for j in 0..16 {
                    let q = b[qs + j];
                    let lo = (q & 0x0f) as u32 | ((qh >> j) & 1) << 4;
                    let hi = (q >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
                    o[j] = lo as f32 * d + m;
                    o[j + 16] = hi as f32 * d + m;
                }
            }
        }
        _ => unreachable!("block_layout admitted an unknown type"),
    }
    out
}

/// Undoes llama.cpp's Q/K permutation (`convert_hf_to_gguf.py` `permute`): rows of each head
/// were reordered from rotate-half pairs (i, i + hd/2) to interleaved pairs (2i, 2i + 1).
/// None when the rows do not split into `heads` heads of an even, non-zero size (a head count
/// read from a corrupt file).
pub fn unpermute_rows(w: &[f32], heads: usize, cols: usize) -> Option<Vec<f32>> {
    let rows = w.len().checked_div(cols).filter(|r| r * cols == w.len())?;
    let hd = rows
        .checked_div(heads)
        .filter(|hd| hd * heads == rows && hd % 2 == 0 && *hd > 0)?;
    let half = hd / 2;
    let mut out = vec![0.0f32; w.len()];
    for h in 0..heads {
        for i in 0..half {
            for two in 0..2 {
                // stored row h·hd + 2i + two holds PyTorch row h·hd + two·half + i
                let src = (h * hd + 2 * i + two) * cols;
                let dst = (h * hd + two * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-tensor F32 GGUF with the given ggml dims (innermost first) and 64 data bytes.
    fn gguf_with_dims(dims: &[u64]) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes()); // tensors
        b.extend_from_slice(&0u64.to_le_bytes()); // metadata pairs
        b.extend_from_slice(&1u64.to_le_bytes());
        b.push(b'w');
        b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        dims.iter()
            .for_each(|d| b.extend_from_slice(&d.to_le_bytes()));
        b.extend_from_slice(&0u32.to_le_bytes()); // F32
        b.extend_from_slice(&0u64.to_le_bytes()); // offset
        b.resize(b.len().div_ceil(32) * 32 + 64, 0);
        b
    }

    /// Hostile tensor shapes (a zero, 2^64 − 1, a product past memory, too many dims) are an
    /// error naming the file when the file is opened, never a panic when a tensor is read.
    #[test]
    fn hostile_tensor_shapes_are_refused() {
        let dir = std::env::temp_dir().join(format!("niclip-gguf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("shape.gguf");
        assert!(
            std::fs::write(&path, gguf_with_dims(&[4, 4])).is_ok()
                && Gguf::open(&path)
                    .unwrap()
                    .read_all(&path, |n| Some(n.into()))
                    .is_ok(),
            "the well-formed file reads"
        );
        for dims in [
            vec![0, 4],
            vec![u64::MAX, 1],
            vec![4, 1 << 57],
            vec![1 << 40, 1 << 40],
            vec![1, 1, 1, 1, 1],
        ] {
            std::fs::write(&path, gguf_with_dims(&dims)).unwrap();
            let read = Gguf::open(&path).and_then(|g| g.read_all(&path, |n| Some(n.into())));
            let Err(e) = read else {
                panic!("{dims:?}: read as a tensor");
            };
            assert!(e.to_string().contains("shape.gguf"), "{dims:?}: {e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
