//! The CLIP model of the authors (braindec / NeuroConText): a text tower (ProjectionHead then two
//! ResidualHeads) and an image tower (three ResidualHeads), both of output width k = the image
//! feature width, and a learnable `logit_scale` used raw. Parameters live in one flat f32
//! vector (one pass of AdamW, one device buffer) in the order of [`Layout`]; files are
//! `.safetensors` with the authors' PyTorch state-dict names.
//!
//! ResidualHead(x)   = LayerNorm(x + Dropout(GELU(fc(x))))
//! ProjectionHead(x) = LayerNorm(p + Dropout(fc(GELU(p)))),  p = projection(x)

use super::data::Pairs;
use super::engine::Workspace;
use super::layout::{Layout, Tower};
use super::metrics::{similarity, Retrieval};
use super::ops::NO_DROPOUT;
use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::Path;

/// Parameters of both towers and the logit scale.
#[derive(Clone, Debug, PartialEq)]
pub struct Clip {
    pub layout: Layout,
    pub params: Vec<f32>,
}

impl Clip {
    /// A fresh model as PyTorch initialises it: Linear weights Kaiming-uniform (a = √5, i.e.
    /// U(±1/√fan_in)), biases U(±1/√fan_in), LayerNorm γ = 1, β = 0, logit_scale = 10. The
    /// draws come from SplitMix64(seed), tensor by tensor in layout order.
    pub fn init(d: usize, k: usize, seed: u64) -> Clip {
        let layout = Layout::new(d, k);
        let mut params = vec![0.0f32; layout.len];
        let mut rng = SplitMix64(seed ^ 0x5851_F42D_4C95_7F2D);
        for t in &layout.tensors {
            let dst = &mut params[t.offset..t.offset + t.len()];
            if t.name.ends_with("layer_norm.weight") {
                dst.fill(1.0);
            } else if t.name.ends_with("layer_norm.bias") {
                dst.fill(0.0);
            } else if t.name == "logit_scale" {
                dst.fill(10.0);
            } else {
                // Linear weight [out, in] or bias [out]; fan_in = the weight's in width.
                let fan_in = if t.name.contains("projection") { d } else { k };
                let bound = 1.0 / (fan_in as f64).sqrt();
                for v in dst {
                    *v = ((2.0 * rng.uniform() - 1.0) * bound) as f32;
                }
            }
        }
        Clip { layout, params }
    }

    /// Reads a model saved by `save` or by PyTorch (`safetensors.torch.save_file(model.state_dict())`).
    /// d and k come from `text_model.model.0.projection.weight` (k×d); every other tensor must be
    /// present with its shape. f32, f64, f16 and bf16 are accepted; other keys are ignored.
    pub fn load(path: &Path) -> Result<Clip> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only and dropped before this returns; a file truncated
        // meanwhile by another process is the only hazard, as with any mmap reader.
        let bytes = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| {
            Error::input(path, format!("not a readable .safetensors file ({e}); save the model with safetensors.torch.save_file"))
        })?;
        let probe = "text_model.model.0.projection.weight";
        let pw = st.tensor(probe).map_err(|_| missing(path, probe))?;
        let (k, d) = match pw.shape() {
            [k, d] if *k > 0 && *d > 0 => (*k, *d),
            s => {
                return Err(Error::input(
                    path,
                    format!("{probe} has shape {s:?}; expected [k, d] (output width × text width)"),
                ))
            }
        };
        let layout = Layout::new(d, k);
        let mut params = vec![0.0f32; layout.len];
        for t in &layout.tensors {
            let view = st.tensor(&t.name).map_err(|_| missing(path, &t.name))?;
            let shape_ok =
                view.shape() == t.shape.as_slice() || (t.shape.is_empty() && view.shape() == [1]);
            if !shape_ok {
                return Err(Error::input(
                    path,
                    format!("{} has shape {:?}; this model (text width {d}, output width {k}) needs {:?}", t.name, view.shape(), t.shape),
                ));
            }
            to_f32(&view, &mut params[t.offset..t.offset + t.len()])
                .map_err(|m| Error::input(path, format!("{}: {m}", t.name)))?;
        }
        if let Some(bad) = layout.tensors.iter().find(|t| {
            params[t.offset..t.offset + t.len()]
                .iter()
                .any(|v| !v.is_finite())
        }) {
            return Err(Error::input(
                path,
                format!(
                    "{} holds NaN or Inf; the model is corrupt (retrain it)",
                    bad.name
                ),
            ));
        }
        Ok(Clip { layout, params })
    }

    /// Writes the model atomically as `.safetensors` (f32, the authors' key names, keys sorted,
    /// no metadata, so equal models give equal bytes).
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = safetensors_bytes(&self.layout, &[("", &self.params)], None)?;
        crate::io::write_atomic(path, |w| {
            std::io::Write::write_all(w, &bytes).map_err(|e| Error::io(path, e))
        })
    }

    /// `load`, for features of `pairs`' widths (else an error naming the file, ending with
    /// `fix`, what to do).
    pub fn load_for(path: &Path, pairs: &Pairs, fix: &str) -> Result<Clip> {
        let m = Clip::load(path)?;
        if m.text_dim() != pairs.d || m.image_dim() != pairs.k {
            return Err(Error::input(
                path,
                format!(
                    "the model takes text width {} and image width {}, the data has {} and {}; {fix}",
                    m.text_dim(),
                    m.image_dim(),
                    pairs.d,
                    pairs.k
                ),
            ));
        }
        Ok(m)
    }

    /// Recall@10, Recall@100 and Mix&Match of this model on the pairs `rows`.
    pub fn retrieval(&self, pairs: &Pairs, rows: &[usize]) -> Retrieval {
        let n = rows.len();
        let mut xt = vec![0.0f32; n * pairs.d];
        let mut xi = vec![0.0f32; n * pairs.k];
        pairs.gather(rows, &mut xt, &mut xi);
        let t = self.encode_texts(&xt, n);
        let i = self.encode_images(&xi, n);
        Retrieval::of(&similarity(&i, &t, n, self.image_dim()), n)
    }

    /// Input width of the text tower (the LLM's hidden width).
    pub fn text_dim(&self) -> usize {
        self.layout.d
    }

    /// Input width of the image tower, which is also the output width k of both towers.
    pub fn image_dim(&self) -> usize {
        self.layout.k
    }

    pub fn logit_scale(&self) -> f32 {
        self.params[self.layout.logit_scale]
    }

    /// Image features (n × k, row-major) → unit rows of the shared space (n × k). Eval mode:
    /// rows L2-normalised on input, through the tower without dropout, L2-normalised out.
    pub fn encode_images(&self, x: &[f32], n: usize) -> Vec<f32> {
        self.encode(Tower::Image, x, n)
    }

    /// Text features (n × d) → unit rows of the shared space (n × k), as `encode_images`.
    pub fn encode_texts(&self, x: &[f32], n: usize) -> Vec<f32> {
        self.encode(Tower::Text, x, n)
    }

    fn encode(&self, tower: Tower, x: &[f32], n: usize) -> Vec<f32> {
        let din = self.layout.tower(tower)[0].din;
        assert_eq!(x.len(), n * din, "encode: input is not n × {din}");
        let k = self.layout.k;
        // Chunks small enough that the activations stay in cache between heads.
        const CHUNK: usize = 256;
        let mut out = vec![0.0f32; n * k];
        let mut ws = Workspace::forward_only(&self.layout, CHUNK.min(n.max(1)), tower);
        let mut xin = vec![0.0f32; CHUNK.min(n.max(1)) * din];
        for (c, o) in out.chunks_mut(CHUNK * k).enumerate() {
            let rows = o.len() / k;
            let src = &x[c * CHUNK * din..(c * CHUNK + rows) * din];
            super::ops::l2_normalize_rows(src, din, &mut xin[..rows * din]);
            ws.forward_tower(
                &self.layout,
                &self.params,
                tower,
                &xin[..rows * din],
                rows,
                &NO_DROPOUT,
            );
            o.copy_from_slice(&ws.tower(tower).out[..rows * k]);
        }
        out
    }
}

fn missing(path: &Path, key: &str) -> Error {
    Error::input(
        path,
        format!("tensor {key} is missing; expected the authors' CLIP state dict (logit_scale, text_model.model.*, image_model.model.*)"),
    )
}

fn to_f32(view: &TensorView, dst: &mut [f32]) -> std::result::Result<(), String> {
    let b = view.data();
    let expect = |w: usize| {
        if b.len() == dst.len() * w {
            Ok(())
        } else {
            Err(format!("{} bytes for {} values", b.len(), dst.len()))
        }
    };
    match view.dtype() {
        Dtype::F32 => {
            expect(4)?;
            for (o, c) in dst.iter_mut().zip(b.chunks_exact(4)) {
                *o = f32::from_le_bytes(c.try_into().unwrap());
            }
        }
        Dtype::F64 => {
            expect(8)?;
            for (o, c) in dst.iter_mut().zip(b.chunks_exact(8)) {
                *o = f64::from_le_bytes(c.try_into().unwrap()) as f32;
            }
        }
        Dtype::F16 => {
            expect(2)?;
            for (o, c) in dst.iter_mut().zip(b.chunks_exact(2)) {
                *o = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        Dtype::BF16 => {
            expect(2)?;
            for (o, c) in dst.iter_mut().zip(b.chunks_exact(2)) {
                *o = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        other => {
            return Err(format!(
                "dtype {other:?} is not a float type; save the model as float32"
            ))
        }
    }
    Ok(())
}

/// Serialises one or more flat vectors of `layout` (each under a key prefix) to safetensors
/// bytes, keys sorted, with at most one metadata entry (so the bytes are deterministic).
pub(crate) fn safetensors_bytes(
    layout: &Layout,
    sets: &[(&str, &[f32])],
    meta: Option<(&str, String)>,
) -> Result<Vec<u8>> {
    let mut views: BTreeMap<String, TensorView> = BTreeMap::new();
    for (prefix, data) in sets {
        assert_eq!(
            data.len(),
            layout.len,
            "flat vector does not fit the layout"
        );
        for t in &layout.tensors {
            let bytes: &[u8] = bytemuck::cast_slice(&data[t.offset..t.offset + t.len()]);
            let view = TensorView::new(Dtype::F32, t.shape.clone(), bytes)
                .map_err(|e| Error::Usage(format!("safetensors: {e}")))?;
            views.insert(format!("{prefix}{}", t.name), view);
        }
    }
    let meta = meta.map(|(k, v)| std::iter::once((k.to_string(), v)).collect());
    safetensors::serialize(views, meta).map_err(|e| Error::Usage(format!("safetensors: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_round_trip_and_unit_rows() {
        let (d, k) = (12, 8);
        let m = Clip::init(d, k, 3);
        assert_eq!((m.text_dim(), m.image_dim(), m.logit_scale()), (d, k, 10.0));
        let dir = std::env::temp_dir().join(format!("niclip-model-{}", std::process::id()));
        let p = dir.join("m.safetensors");
        m.save(&p).unwrap();
        let back = Clip::load(&p).unwrap();
        assert_eq!(back, m);
        // Same model, same bytes.
        let p2 = dir.join("m2.safetensors");
        back.save(&p2).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(&p2).unwrap());

        let n = 5;
        let x: Vec<f32> = (0..n * d)
            .map(|i| ((i * 7919) % 23) as f32 - 11.0)
            .collect();
        let y: Vec<f32> = (0..n * k)
            .map(|i| ((i * 104_729) % 19) as f32 - 9.0)
            .collect();
        for rows in [m.encode_texts(&x, n), m.encode_images(&y, n)] {
            assert_eq!(rows.len(), n * k);
            for r in rows.chunks(k) {
                let norm: f32 = r.iter().map(|v| v * v).sum::<f32>().sqrt();
                assert!((norm - 1.0).abs() < 1e-5, "{norm}");
            }
        }
        // Input rows are normalised first: scaling them changes nothing.
        let x2: Vec<f32> = x.iter().map(|v| v * 3.0).collect();
        let (a, b) = (m.encode_texts(&x, n), m.encode_texts(&x2, n));
        assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 1e-6));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn load_names_missing_keys_and_bad_shapes() {
        let dir = std::env::temp_dir().join(format!("niclip-model-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let m = Clip::init(6, 4, 1);
        // Drop one key.
        let mut views = BTreeMap::new();
        for t in &m.layout.tensors {
            if t.name != "image_model.model.2.fc.bias" {
                let b: &[u8] = bytemuck::cast_slice(&m.params[t.offset..t.offset + t.len()]);
                views.insert(
                    t.name.clone(),
                    TensorView::new(Dtype::F32, t.shape.clone(), b).unwrap(),
                );
            }
        }
        let p = dir.join("missing.safetensors");
        std::fs::write(&p, safetensors::serialize(views, None).unwrap()).unwrap();
        let e = Clip::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("image_model.model.2.fc.bias") && e.contains("missing"),
            "{e}"
        );
        // Wrong shape.
        let mut views = BTreeMap::new();
        for t in &m.layout.tensors {
            let b: &[u8] = bytemuck::cast_slice(&m.params[t.offset..t.offset + t.len()]);
            let shape = if t.name == "text_model.model.1.fc.weight" {
                vec![2, 8]
            } else {
                t.shape.clone()
            };
            views.insert(
                t.name.clone(),
                TensorView::new(Dtype::F32, shape, b).unwrap(),
            );
        }
        let p = dir.join("shape.safetensors");
        std::fs::write(&p, safetensors::serialize(views, None).unwrap()).unwrap();
        let e = Clip::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("text_model.model.1.fc.weight") && e.contains("[2, 8]"),
            "{e}"
        );
        std::fs::write(&p, b"garbage").unwrap();
        assert!(Clip::load(&p)
            .unwrap_err()
            .to_string()
            .contains("safetensors"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
