//! `Decoder`: everything a decode needs, loaded once (model, atlas, vocabulary pushed through
//! the text tower, prior, ontology), then any number of maps decoded against it.

use super::maps::{image_features, mni152_2mm_grid, Variant};
use super::ontology::{Ontology, DOMAINS};
use super::posterior::{noisy_or, task_posteriors, TaskPosterior};
use super::vocabulary::Vocabulary;
use crate::brain::{Atlas, Image};
use crate::device::cpu::{self, Parallelism, Strided};
use crate::error::{Error, Result};
use crate::io::progress;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// The CLIP towers as the decoder uses them (the trained model implements this).
pub trait Towers: Send + Sync {
    fn text_dim(&self) -> usize;
    fn image_dim(&self) -> usize;
    /// The learned inverse temperature s (used raw: logits = s·cos).
    fn logit_scale(&self) -> f32;
    /// n rows in, n unit rows of width `image_dim` out (inputs L2-normalised first).
    fn encode_images(&self, x: &[f32], n: usize) -> Vec<f32>;
    fn encode_texts(&self, x: &[f32], n: usize) -> Vec<f32>;
}

/// Where the decoder's inputs come from. `ontology` is a folder (see `ontology`).
#[derive(Clone, Debug)]
pub struct DecoderAssets {
    pub model: PathBuf,
    pub vocabulary: PathBuf,
    pub vocabulary_emb: PathBuf,
    pub vocabulary_prior: PathBuf,
    pub ontology: PathBuf,
    pub reduced: bool,
    pub atlas: PathBuf,
    /// The atlas is a 3D label image (one indicator map per label).
    pub labels: bool,
    /// Keep the prepared atlas in the cache folder (see `brain::atlas_cache`); off for the
    /// default model, whose 2 mm label atlas builds faster than a cache lookup pays back.
    pub cache_atlas: bool,
}

/// Which s the similarities were scaled by.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ScaleSource {
    Learned,
    Given,
}

/// The result of decoding one map. Vectors are in the decoder's orders (`task_names`,
/// `concept_names`, `DOMAINS`).
#[derive(Clone, Debug)]
pub struct Decoding {
    pub map: String,
    pub tasks: TaskPosterior,
    pub concepts: Vec<f32>,
    pub domains: Vec<f32>,
}

pub struct Decoder {
    towers: Box<dyn Towers>,
    atlas: Atlas,
    vocabulary: Vocabulary,
    /// T × k unit rows: the vocabulary through the text tower, computed once.
    text_features: Vec<f32>,
    pub logit_scale: f32,
    pub scale_source: ScaleSource,
    links: OntologyLinks,
    pub warnings: Vec<String>,
}

/// The atlas of `assets` on the MNI152 2 mm grid, as `niclip images` made the training
/// features, checked to give the `k` image features the model takes.
fn read_atlas(assets: &DecoderAssets, k: usize) -> Result<Atlas> {
    let atlas_path = &assets.atlas;
    let grid = mni152_2mm_grid();
    let atlas = if assets.cache_atlas {
        Atlas::read_on_grid(atlas_path, assets.labels, &grid)?
    } else {
        Atlas::build_on_grid(atlas_path, assets.labels, &grid)?
    };
    if atlas.k != k {
        return Err(Error::input(
            atlas_path,
            format!(
                "the atlas has {} maps but the model {} takes {k} image features; give the atlas the model was trained with{}",
                atlas.k,
                assets.model.display(),
                if assets.labels { "" } else { " (or --labels for a 3D label atlas)" }
            ),
        ));
    }
    Ok(atlas)
}

/// The vocabulary's place in the ontology: the concepts its tasks measure and their domains.
struct OntologyLinks {
    concept_names: Vec<String>,
    /// Per concept, the vocabulary rows (tasks) that measure it.
    concept_tasks: Vec<Vec<u32>>,
    /// Per domain, its concepts (indices into `concept_names`).
    domain_concepts: Vec<Vec<u32>>,
}

impl OntologyLinks {
    /// Vocabulary rows → ontology tasks → concepts measured → domains; a warning names the
    /// vocabulary tasks the ontology lacks.
    fn new(
        ontology: &Ontology,
        names: &[String],
        reduced: bool,
        warnings: &mut Vec<String>,
    ) -> OntologyLinks {
        let task_of = ontology.task_indices(names);
        let unknown: Vec<&str> = task_of
            .iter()
            .zip(names)
            .filter(|(t, _)| t.is_none())
            .map(|(_, n)| n.as_str())
            .collect();
        if !unknown.is_empty() {
            warnings.push(format!(
                "{} of {} vocabulary tasks are not in the ontology{} and count for no concept: {}",
                unknown.len(),
                names.len(),
                if reduced { " (reduced)" } else { "" },
                unknown.join("; ")
            ));
        }
        let mut concept_rows: Vec<Vec<u32>> = vec![Vec::new(); ontology.concepts.len()];
        for (row, t) in task_of.iter().enumerate() {
            if let Some(t) = t {
                for &c in &ontology.task_concepts[*t] {
                    concept_rows[c as usize].push(row as u32);
                }
            }
        }
        // Concepts no vocabulary task measures would always score 0: they are left out.
        let mut links = OntologyLinks {
            concept_names: Vec::new(),
            concept_tasks: Vec::new(),
            domain_concepts: vec![Vec::new(); DOMAINS.len()],
        };
        for (c, rows) in concept_rows.into_iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            if let Some(d) = ontology.concepts[c].domain {
                links.domain_concepts[d].push(links.concept_names.len() as u32);
            }
            links.concept_names.push(ontology.concepts[c].name.clone());
            links.concept_tasks.push(rows);
        }
        links
    }
}

impl Decoder {
    /// Loads everything from `assets` with the towers `towers`. `logit_scale` None = learned.
    pub fn new(
        towers: Box<dyn Towers>,
        assets: &DecoderAssets,
        logit_scale: Option<f32>,
    ) -> Result<Decoder> {
        let emb_path = &assets.vocabulary_emb;
        let vocabulary = Vocabulary::read(&assets.vocabulary, emb_path, &assets.vocabulary_prior)?;
        let model_path = &assets.model;
        if vocabulary.dim != towers.text_dim() {
            return Err(Error::input(
                emb_path,
                format!(
                    "embeddings are {} wide but the model {} takes {}-wide text features; embed the vocabulary with the language model the CLIP model was trained on (`niclip vocab --model …`)",
                    vocabulary.dim,
                    model_path.display(),
                    towers.text_dim()
                ),
            ));
        }
        let atlas = read_atlas(assets, towers.image_dim())?;
        let ontology = Ontology::load(&assets.ontology, assets.reduced)?;
        let mut warnings = ontology.warnings.clone();
        let links = OntologyLinks::new(&ontology, &vocabulary.names, assets.reduced, &mut warnings);

        let t = vocabulary.names.len();
        let text_features = towers.encode_texts(&vocabulary.emb, t);
        let (logit_scale, scale_source) = match logit_scale {
            Some(s) => (s, ScaleSource::Given),
            None => (towers.logit_scale(), ScaleSource::Learned),
        };
        if !logit_scale.is_finite() {
            return Err(Error::input(
                model_path,
                format!("logit scale is {logit_scale}; pass --logit-scale S"),
            ));
        }
        Ok(Decoder {
            towers,
            atlas,
            vocabulary,
            text_features,
            logit_scale,
            scale_source,
            links,
            warnings,
        })
    }

    pub fn task_names(&self) -> &[String] {
        &self.vocabulary.names
    }
    pub fn concept_names(&self) -> &[String] {
        &self.links.concept_names
    }
    pub fn domain_names(&self) -> &'static [&'static str] {
        &DOMAINS
    }
    /// Per concept (in `concept_names` order), the vocabulary rows of the tasks measuring it.
    pub fn concept_tasks(&self) -> &[Vec<u32>] {
        &self.links.concept_tasks
    }
    /// Per domain (in `domain_names` order), its concepts.
    pub fn domain_concepts(&self) -> &[Vec<u32>] {
        &self.links.domain_concepts
    }
    pub fn prior(&self) -> &[f64] {
        &self.vocabulary.prior
    }
    pub fn atlas(&self) -> &Atlas {
        &self.atlas
    }

    /// Atlas coefficients of every volume of `img` (n_vols × k).
    pub fn image_features(&self, img: &Image, variant: &Variant, path: &Path) -> Result<Vec<f32>> {
        image_features(&self.atlas, img, variant, path)
    }

    /// Decodes n maps given by their atlas coefficients (n × k), named `names`.
    pub fn decode_features(&self, features: &[f32], names: Vec<String>) -> Vec<Decoding> {
        let n = names.len();
        let k = self.atlas.k;
        assert_eq!(features.len(), n * k, "features must be n × k");
        let t = self.vocabulary.names.len();
        let images = self.towers.encode_images(features, n);
        // logits = s · I Tᵀ (n × T)
        let mut logits = vec![0.0f32; n * t];
        if n > 0 {
            let (im, tt) = (
                Strided::rows(&images, k),
                Strided::transposed(&self.text_features, k),
            );
            let par = Parallelism::Rayon(0);
            cpu::gemm(
                (n, t, k),
                &mut logits,
                (t as isize, 1),
                None,
                im,
                tt,
                self.logit_scale,
                par,
            );
        }
        task_posteriors(&logits, n, &self.vocabulary.prior)
            .into_iter()
            .zip(names)
            .map(|(tasks, map)| {
                let concepts = noisy_or(&tasks.posterior, &self.links.concept_tasks);
                let domains = noisy_or(&concepts, &self.links.domain_concepts);
                Decoding {
                    map,
                    tasks,
                    concepts,
                    domains,
                }
            })
            .collect()
    }

    /// Decodes every volume of the maps at `paths` (read and projected in parallel, with a
    /// progress bar past 20 files; a 4D file gives a decoding per volume, named by
    /// [`Image::volume_names`]). A bad map does not stop the others: it is returned among the
    /// failures with its error. Maps largely outside the MNI brain get a warning.
    pub fn decode_files(&self, paths: &[PathBuf], variant: &Variant) -> BatchDecoding {
        let bar = (paths.len() > 20).then(|| progress(paths.len() as u64, "maps"));
        let per_file: Vec<Result<(Vec<f32>, usize)>> = paths
            .par_iter()
            .map(|path| {
                let img = Image::read(path)?;
                warn_outside_brain(&img, path);
                let f = self.image_features(&img, variant, path)?;
                if let Some(b) = &bar {
                    b.inc(1);
                }
                Ok((f, img.n_vols))
            })
            .collect();
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let (mut features, mut names) = (Vec::new(), Vec::new());
        let (mut decoded, mut failed) = (Vec::new(), Vec::new());
        for (path, r) in paths.iter().zip(per_file) {
            match r {
                Ok((f, n)) => {
                    features.extend(f);
                    names.extend(Image::volume_names(path, n));
                    decoded.push((path.clone(), n));
                }
                Err(e) => failed.push((path.clone(), e)),
            }
        }
        BatchDecoding {
            decodings: self.decode_features(&features, names),
            decoded,
            failed,
        }
    }
}

/// What a batch of map files gave: a decoding per volume of the good files, each good file
/// with its volume count (in the order given), and each bad file with its error.
pub struct BatchDecoding {
    pub decodings: Vec<Decoding>,
    pub decoded: Vec<(PathBuf, usize)>,
    pub failed: Vec<(PathBuf, crate::error::Error)>,
}

/// Past this share of non-zero voxels outside the MNI brain, a map is probably not in MNI
/// space (a thresholded or masked MNI map has almost none there).
const OUTSIDE_BRAIN_WARNING: f64 = 0.2;

/// One warning per file, for its worst volume.
fn warn_outside_brain(img: &Image, path: &Path) {
    let shares: Vec<f64> = (0..img.n_vols)
        .map(|v| super::maps::share_outside_brain(img, v))
        .collect();
    let worst = shares.iter().cloned().fold(0.0, f64::max);
    if worst > OUTSIDE_BRAIN_WARNING {
        let which = match shares
            .iter()
            .filter(|&&s| s > OUTSIDE_BRAIN_WARNING)
            .count()
        {
            _ if img.n_vols == 1 => String::new(),
            n => format!(" ({n} of its {} volumes)", img.n_vols),
        };
        eprintln!(
            "warning: {}{which}: up to {:.0}% of the non-zero voxels lie outside the MNI152 \
             brain; is it in MNI space? Check its affine (nibabel's img.affine) or resample it \
             to MNI first",
            path.display(),
            100.0 * worst
        );
    }
}

impl Towers for crate::clip::model::Clip {
    fn text_dim(&self) -> usize {
        crate::clip::model::Clip::text_dim(self)
    }
    fn image_dim(&self) -> usize {
        crate::clip::model::Clip::image_dim(self)
    }
    fn logit_scale(&self) -> f32 {
        crate::clip::model::Clip::logit_scale(self)
    }
    fn encode_images(&self, x: &[f32], n: usize) -> Vec<f32> {
        crate::clip::model::Clip::encode_images(self, x, n)
    }
    fn encode_texts(&self, x: &[f32], n: usize) -> Vec<f32> {
        crate::clip::model::Clip::encode_texts(self, x, n)
    }
}
