//! Image features computed inside `train` (`--corpus` and `--atlas` instead of `--images`), and
//! training-time augmentation (`--augment`): every epoch, the training studies' peaks are drawn
//! anew (`brain::augment`) and their features recomputed on the device, in chunks, so no
//! epoch's features are kept past it.

use crate::brain::augment::{study_key, AugmentSpec, Kind};
use crate::brain::features::ma_maps;
use crate::brain::kernels::MaKernel;
use crate::brain::mkda::{MkdaKernel, MkdaSpec};
use crate::brain::{Atlas, Mask, Peaks};
use crate::clip::data::normalize_rows;
use crate::clip::train::EpochImages;
use crate::corpus::Corpus;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::io::NpyMatrix;
use std::collections::BTreeMap;
use std::path::Path;

/// Studies per dense chunk of the map-level path (each volume is 3.6 MB on the 2 mm grid).
const MAP_CHUNK: usize = 64;

/// A corpus's studies with peaks, the kernel that draws their maps and the atlas that projects
/// them: what image features are computed from.
pub struct CorpusImages {
    pub peaks: Peaks,
    mask: Mask,
    mkda: MkdaSpec,
    kernel: MaKernel,
    atlas: Atlas,
}

impl CorpusImages {
    /// Every study with peaks of `corpus`, in corpus order.
    pub fn open(corpus: &Path, atlas: &Path, labels: bool, mkda: &MkdaSpec) -> Result<Self> {
        let (mask, kernel) = mkda.mask_and_ma_kernel()?;
        let (peaks, _) = Corpus::open(corpus)?.peaks_all()?;
        if peaks.is_empty() {
            return Err(Error::input(
                corpus,
                "no study in this corpus has peaks, so there are no image features to train on",
            ));
        }
        let atlas = Atlas::read_on_grid(atlas, labels, &mask.grid)?;
        Ok(CorpusImages {
            peaks,
            mask,
            mkda: mkda.clone(),
            kernel,
            atlas,
        })
    }

    /// The plain (un-augmented) features of every study, a row each.
    pub fn features(&self, device: &Device) -> Result<NpyMatrix> {
        let data = device.image_features(&self.kernel, &self.mask, &self.atlas, &self.peaks)?;
        Ok(NpyMatrix {
            data,
            rows: self.peaks.len(),
            cols: self.atlas.k,
        })
    }

    /// The same studies reordered as `ids` (the training pairs' rows); every id must be here.
    pub fn for_rows(mut self, ids: &[String]) -> Result<Self> {
        let at: std::collections::HashMap<&str, usize> = (self.peaks.ids.iter())
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        let mut peaks = Peaks::new();
        for id in ids {
            let Some(&s) = at.get(id.as_str()) else {
                return Err(Error::Usage(format!(
                    "study {id} of the training pairs has no peaks in the corpus"
                )));
            };
            peaks.push(id.clone(), self.peaks.study(s).iter().copied());
        }
        self.peaks = peaks;
        Ok(self)
    }
}

/// The training features of each epoch, drawn by `spec` from (seed, epoch, study).
pub struct AugmentedImages<'a> {
    base: CorpusImages,
    spec: AugmentSpec,
    keys: Vec<u64>,
    seed: u64,
    device: &'a Device,
}

impl<'a> AugmentedImages<'a> {
    /// `base`'s studies (in the pairs' row order) augmented by `spec`, drawn from `seed`. A
    /// drawn sphere radius needs a sphere kernel (MKDA or KDA).
    pub fn new(
        base: CorpusImages,
        spec: AugmentSpec,
        seed: u64,
        device: &'a Device,
    ) -> Result<Self> {
        let radius = spec.peak_items().any(|(_, a)| a.kind() == Kind::StudyValue);
        if radius && matches!(base.kernel, MaKernel::Ale(_)) {
            return Err(Error::Usage(
                "--augment radius:… draws sphere radii; use it with --kernel mkda or kda".into(),
            ));
        }
        let keys = base.peaks.ids.iter().map(|id| study_key(id)).collect();
        Ok(AugmentedImages {
            base,
            spec,
            keys,
            seed,
            device,
        })
    }

    /// Features of `peaks`, study s drawn with sphere radius `radius[s]` when given: the
    /// studies are grouped by the sphere their radius draws on the grid (few distinct ones).
    fn sphere_features(&self, peaks: &Peaks, radius: Option<&[f64]>) -> Result<Vec<f32>> {
        let b = &self.base;
        let Some(radius) = radius else {
            return self
                .device
                .image_features(&b.kernel, &b.mask, &b.atlas, peaks);
        };
        let k = b.atlas.k;
        let mut groups: BTreeMap<usize, (MaKernel, Vec<usize>)> = BTreeMap::new();
        for (s, &r) in radius.iter().enumerate() {
            let sphere = MkdaKernel::for_grid(&b.mask.grid, r, b.mkda.rounding);
            let n = sphere.offsets.len();
            let kernel = match b.kernel {
                MaKernel::Kda(_) => MaKernel::Kda(sphere),
                _ => MaKernel::Mkda(sphere),
            };
            groups.entry(n).or_insert((kernel, Vec::new())).1.push(s);
        }
        let mut out = vec![0.0f32; peaks.len() * k];
        for (kernel, studies) in groups.values() {
            let mut sub = Peaks::new();
            for &s in studies {
                sub.push(peaks.ids[s].clone(), peaks.study(s).iter().copied());
            }
            let f = self
                .device
                .image_features(kernel, &b.mask, &b.atlas, &sub)?;
            for (row, &s) in f.chunks_exact(k).zip(studies) {
                out[s * k..(s + 1) * k].copy_from_slice(row);
            }
        }
        Ok(out)
    }

    /// Features through dense maps, for map-level items (smoothing, noise, thresholds):
    /// each chunk's MA maps drawn, augmented, then projected.
    fn map_features(&self, peaks: &Peaks, epoch: u64) -> Result<Vec<f32>> {
        let b = &self.base;
        let mut out = Vec::with_capacity(peaks.len() * b.atlas.k);
        for start in (0..peaks.len()).step_by(MAP_CHUNK) {
            let end = (start + MAP_CHUNK).min(peaks.len());
            let mut maps = ma_maps(&b.kernel, &b.mask, &peaks.slice(start..end))?;
            let keys = &self.keys[start..end];
            let (spec, mask, seed) = (&self.spec, &b.mask, self.seed);
            self.device
                .augment_maps(spec, &mut maps.data, mask, keys, seed, epoch)?;
            out.extend(b.atlas.project_image(&maps));
        }
        Ok(out)
    }
}

impl EpochImages for AugmentedImages<'_> {
    fn key(&self) -> String {
        format!(
            "{} radius={} kernel_seed={}",
            self.spec, self.base.mkda.radius, self.seed
        )
    }

    fn images(&self, epoch: usize) -> Result<Vec<f32>> {
        let b = &self.base;
        let (spec, epoch) = (&self.spec, epoch as u64);
        let drawn =
            (self.device).augment_peaks(spec, &b.peaks, &self.keys, &b.mask, self.seed, epoch)?;
        let mut images = if spec.has_map_level() {
            if drawn.radius.is_some() {
                return Err(Error::Usage(
                    "--augment: radius cannot be combined with map-level items yet".into(),
                ));
            }
            self.map_features(&drawn.peaks, epoch)?
        } else {
            self.sphere_features(&drawn.peaks, drawn.radius.as_deref())?
        };
        normalize_rows(&mut images, b.atlas.k);
        Ok(images)
    }
}
