//! The paper's baselines, trained and run on the same corpus as NiCLIP: the Neurosynth
//! correlation decoder ([`neurosynth`]) and GC-LDA ([`gclda`]), on term features of the corpus
//! texts ([`terms`]).
//!
//! A trained baseline is one `.safetensors` file (written atomically): metadata
//! `niclip_baseline` = `neurosynth` | `gclda`, `terms` (JSON list, the vocabulary names that
//! got a map or a word), `params` (JSON), `n_voxels`; tensors
//! - neurosynth: `z` f32 `[terms, voxels]`, the association z-maps on the embedded MNI152 2 mm
//!   mask (voxels in mask order, x fastest);
//! - gclda: `regions_mu` f64 `[topics, regions, 3]`, `regions_precision` f64
//!   `[topics, regions, 3, 3]`, `regions_log_norm` f64 `[topics, regions]`,
//!   `n_word_tokens_word_by_topic` f64 `[terms, topics]`, `loglikelihood` f64 `[iters + 1, 3]`.
//!
//! [`Decoder::load`] + [`Decoder::decode`] is what evaluation calls.

pub mod cuda;
pub mod gclda;
pub mod neurosynth;
pub mod terms;
pub mod train;

use crate::brain::Mask;
use crate::error::{Error, IoContext, Result};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::Path;

/// Which baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Neurosynth,
    Gclda,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Neurosynth => "neurosynth",
            Kind::Gclda => "gclda",
        }
    }
}

enum Inner {
    /// z-maps standardised per row: r = rows · centred unit map.
    Neurosynth { rows: Vec<f32> },
    /// p(t|v) `[voxels, topics]` and p(w|t) `[terms, topics]`.
    Gclda {
        p_tv: Vec<f64>,
        p_wt: Vec<f64>,
        n_topics: usize,
    },
}

/// A trained baseline, ready to decode maps given on the MNI152 2 mm mask.
pub struct Decoder {
    pub kind: Kind,
    pub terms: Vec<String>,
    pub n_voxels: usize,
    /// The training settings, as stored.
    pub params: serde_json::Value,
    inner: Inner,
}

/// The tensors and metadata of a baseline file, before they become a [`Decoder`].
pub struct ModelFile {
    pub kind: Kind,
    pub terms: Vec<String>,
    pub params: serde_json::Value,
    pub n_voxels: usize,
    /// name → (shape, f64 values)
    pub tensors: HashMap<String, (Vec<usize>, Vec<f64>)>,
    /// neurosynth's `z`, kept as f32.
    pub z: Option<Vec<f32>>,
}

fn not_a_model(path: &Path, why: &str) -> Error {
    Error::input(
        path,
        format!("not a niclip baseline model ({why}); make one with `niclip baseline train neurosynth|gclda … --out FILE`"),
    )
}

impl ModelFile {
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut meta = HashMap::new();
        meta.insert("niclip_baseline".to_string(), self.kind.name().to_string());
        meta.insert(
            "terms".to_string(),
            serde_json::to_string(&self.terms).expect("json"),
        );
        meta.insert("params".to_string(), self.params.to_string());
        meta.insert("n_voxels".to_string(), self.n_voxels.to_string());
        let mut bufs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        if let Some(z) = &self.z {
            let shape = vec![self.terms.len(), self.n_voxels];
            bufs.push((
                "z".into(),
                Dtype::F32,
                shape,
                bytemuck::cast_slice(z).to_vec(),
            ));
        }
        let mut names: Vec<&String> = self.tensors.keys().collect();
        names.sort();
        for n in names {
            let (shape, v) = &self.tensors[n];
            bufs.push((
                n.clone(),
                Dtype::F64,
                shape.clone(),
                bytemuck::cast_slice(v).to_vec(),
            ));
        }
        let views: Vec<(String, TensorView<'_>)> = bufs
            .iter()
            .map(|(n, dt, shape, b)| {
                (
                    n.clone(),
                    TensorView::new(*dt, shape.clone(), b).expect("shape matches data"),
                )
            })
            .collect();
        let bytes = safetensors::serialize(views, Some(meta))
            .map_err(|e| Error::Usage(format!("cannot serialise the model: {e}")))?;
        crate::io::write_atomic(path, |w| {
            use std::io::Write;
            w.write_all(&bytes).at(path)
        })
    }

    pub fn read(path: &Path) -> Result<ModelFile> {
        if !path.exists() {
            return Err(Error::input(
                path,
                "no such model file; train one with `niclip baseline train`",
            ));
        }
        if path.is_dir() {
            return Err(not_a_model(path, "a folder, not a file"));
        }
        let bytes = std::fs::read(path).at(path)?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| not_a_model(path, &format!("not a safetensors file: {e}")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let kind = match meta.get("niclip_baseline").map(String::as_str) {
            Some("neurosynth") => Kind::Neurosynth,
            Some("gclda") => Kind::Gclda,
            Some(other) => {
                return Err(not_a_model(
                    path,
                    &format!("unknown baseline kind {other:?}"),
                ))
            }
            None => {
                return Err(not_a_model(
                    path,
                    "no niclip_baseline entry in its metadata",
                ))
            }
        };
        let terms: Vec<String> = meta
            .get("terms")
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| not_a_model(path, "no readable term list"))?;
        let params = meta
            .get("params")
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(serde_json::Value::Null);
        let n_voxels: usize = meta
            .get("n_voxels")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| not_a_model(path, "no n_voxels"))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| not_a_model(path, &format!("corrupt tensors: {e}")))?;
        let mut tensors = HashMap::new();
        let mut z = None;
        for (name, view) in st.tensors() {
            let shape = view.shape().to_vec();
            let data = view.data();
            match view.dtype() {
                Dtype::F32 if name == "z" => {
                    z = Some(bytemuck::pod_collect_to_vec::<u8, f32>(data));
                }
                Dtype::F64 => {
                    tensors.insert(name, (shape, bytemuck::pod_collect_to_vec::<u8, f64>(data)));
                }
                other => {
                    return Err(not_a_model(
                        path,
                        &format!("tensor {name} has dtype {other:?}"),
                    ))
                }
            }
        }
        Ok(ModelFile {
            kind,
            terms,
            params,
            n_voxels,
            tensors,
            z,
        })
    }
}

impl Decoder {
    /// Reads a baseline model file.
    pub fn load(path: &Path) -> Result<Decoder> {
        let mf = ModelFile::read(path)?;
        let mask = Mask::mni152_2mm();
        if mf.n_voxels != mask.len() {
            return Err(not_a_model(
                path,
                &format!(
                    "made for {} voxels, the MNI152 2 mm mask has {}",
                    mf.n_voxels,
                    mask.len()
                ),
            ));
        }
        Decoder::from_file(mf, &mask, path)
    }

    pub fn from_file(mf: ModelFile, mask: &Mask, path: &Path) -> Result<Decoder> {
        let nv = mf.n_voxels;
        let inner = match mf.kind {
            Kind::Neurosynth => {
                let z =
                    mf.z.as_ref()
                        .ok_or_else(|| not_a_model(path, "no z tensor"))?;
                if z.len() != mf.terms.len() * nv {
                    return Err(not_a_model(path, "z does not have one row per term"));
                }
                Inner::Neurosynth {
                    rows: neurosynth::standardize_rows(z, nv),
                }
            }
            Kind::Gclda => {
                let get = |n: &str| {
                    mf.tensors
                        .get(n)
                        .ok_or_else(|| not_a_model(path, &format!("no {n} tensor")))
                };
                let (mu_s, mu) = get("regions_mu")?;
                let (_, prec) = get("regions_precision")?;
                let (_, log_norm) = get("regions_log_norm")?;
                let (nwt_s, nwt) = get("n_word_tokens_word_by_topic")?;
                if mu_s.len() != 3
                    || mu_s[2] != 3
                    || nwt_s.len() != 2
                    || nwt_s[0] != mf.terms.len()
                    || nwt_s[1] != mu_s[0]
                {
                    return Err(not_a_model(path, "GC-LDA tensors of inconsistent shapes"));
                }
                let (nt, nr) = (mu_s[0], mu_s[1]);
                if prec.len() != nt * nr * 9 || log_norm.len() != nt * nr {
                    return Err(not_a_model(path, "GC-LDA tensors of inconsistent shapes"));
                }
                let regions = gclda::Regions {
                    n_topics: nt,
                    n_regions: nr,
                    mu: mu.chunks(3).map(|c| [c[0], c[1], c[2]]).collect(),
                    precision: prec
                        .chunks(9)
                        .map(|c| [[c[0], c[1], c[2]], [c[3], c[4], c[5]], [c[6], c[7], c[8]]])
                        .collect(),
                    log_norm: log_norm.clone(),
                };
                let xyz: Vec<[f64; 3]> = mask
                    .voxels
                    .iter()
                    .map(|&v| {
                        let [i, j, k] = mask.grid.unflat(v as usize);
                        mask.grid.voxel_to_mm([i as f64, j as f64, k as f64])
                    })
                    .collect();
                Inner::Gclda {
                    p_tv: regions.p_topic_g_voxel(&xyz),
                    p_wt: gclda::p_word_g_topic(nwt, nt),
                    n_topics: nt,
                }
            }
        };
        Ok(Decoder {
            kind: mf.kind,
            terms: mf.terms,
            n_voxels: nv,
            params: mf.params,
            inner,
        })
    }

    /// Scores of every term for a map given on the mask's voxels (mask order): Pearson r
    /// (neurosynth) or GC-LDA word weight, in term order.
    pub fn decode(&self, map_values_on_mask: &[f32]) -> Vec<(String, f32)> {
        assert_eq!(
            map_values_on_mask.len(),
            self.n_voxels,
            "map is not on the model's mask"
        );
        let scores: Vec<f32> = match &self.inner {
            Inner::Neurosynth { rows } => {
                neurosynth::correlate(rows, self.n_voxels, map_values_on_mask)
            }
            Inner::Gclda {
                p_tv,
                p_wt,
                n_topics,
            } => gclda::decode_map(p_tv, p_wt, *n_topics, map_values_on_mask)
                .into_iter()
                .map(|x| x as f32)
                .collect(),
        };
        self.terms.iter().cloned().zip(scores).collect()
    }

    /// What the score means, for reports.
    pub fn score_name(&self) -> &'static str {
        match self.kind {
            Kind::Neurosynth => "r",
            Kind::Gclda => "weight",
        }
    }
}

/// Terms best first, NaN scores (a flat map's r) last.
pub fn sort_by_score(terms: &mut [(String, f32)]) {
    terms.sort_by(|x, y| {
        y.1.partial_cmp(&x.1)
            .unwrap_or_else(|| x.1.is_nan().cmp(&y.1.is_nan()))
    });
}

/// Reads a vocabulary file: one term per line, blank lines and surrounding spaces ignored.
pub fn read_vocabulary(path: &Path) -> Result<Vec<String>> {
    if !path.is_file() {
        return Err(Error::input(
            path,
            "no such vocabulary file; give a text file with one term (task name) per line",
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::input(
            path,
            format!("cannot read it as UTF-8 text ({e}); give one term per line"),
        )
    })?;
    let terms: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if terms.is_empty() {
        return Err(Error::input(
            path,
            "the vocabulary is empty; give one term (task name) per line",
        ));
    }
    Ok(terms)
}
