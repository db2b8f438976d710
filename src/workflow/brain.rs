//! Brain-space jobs: MA maps of chosen studies (`ma-map`), maps projected on an atlas
//! (`project`), and the image features of a whole corpus (`images`), resumable chunk by chunk.

use super::check_npy_out;
use super::resume::{key_path, Chunks};
use crate::brain::features::ma_maps;
use crate::brain::kernels::KernelName;
use crate::brain::mkda::MkdaSpec;
use crate::brain::{Atlas, Image};
use crate::corpus::Corpus;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::io::{progress, write_npy_f32};
use std::path::{Path, PathBuf};

/// Writes the MA maps of `studies` of the corpus as one 4D NIfTI at `out`, a volume per study
/// in the order given, on the mask's grid. A study without peaks gets an all-zero volume and a
/// warning; when no study has any, nothing is written.
pub fn ma_map(corpus: &Path, studies: &[String], mkda: &MkdaSpec, out: &Path) -> Result<()> {
    let (mask, kernel) = mkda.mask_and_ma_kernel()?;
    let peaks = Corpus::open(corpus)?.peaks_for(studies)?;
    let empty: Vec<&str> = (0..peaks.len())
        .filter(|&s| peaks.start[s] == peaks.start[s + 1])
        .map(|s| peaks.ids[s].as_str())
        .collect();
    if empty.len() == peaks.len() {
        return Err(Error::input(
            corpus,
            format!(
                "study {} {} no peaks, so there is no MA map to write; choose studies with \
                 peaks (`niclip corpus info` counts them)",
                empty.join(", "),
                if empty.len() == 1 { "has" } else { "have" }
            ),
        ));
    }
    if !empty.is_empty() {
        eprintln!(
            "warning: {} of the {} studies have no peaks: their volumes are all zeros ({})",
            empty.len(),
            peaks.len(),
            empty.join(", ")
        );
    }
    ma_maps(&kernel, &mask, &peaks)?.write(out)
}

/// Writes the least-squares coefficients of every volume of `maps` on the atlas's maps to
/// `out` (.npy, a row per volume, resampled to the atlas grid when off it); returns the shape.
pub fn project(atlas: &Path, labels: bool, maps: &[PathBuf], out: &Path) -> Result<(usize, usize)> {
    check_npy_out(out)?;
    let atlas = Atlas::read(atlas, labels)?;
    let mut rows = Vec::new();
    let mut n = 0;
    for path in maps {
        let img = Image::read(path)?;
        rows.extend(atlas.project_image(&img));
        n += img.n_vols;
    }
    write_npy_f32(out, &rows, n, atlas.k)?;
    Ok((n, atlas.k))
}

/// The `images` job: every study with peaks of a corpus, MA maps (MKDA, KDA or ALE) projected
/// on an atlas.
#[derive(Clone, Debug)]
pub struct ImagesJob {
    pub corpus: PathBuf,
    /// 4D continuous maps, or a 3D label image with `labels`; resampled to the mask grid.
    pub atlas: PathBuf,
    pub labels: bool,
    pub mkda: MkdaSpec,
    /// The features (.npy, a row per study with peaks), ids in `<out>.ids.txt`.
    pub out: PathBuf,
    /// Studies per checkpoint.
    pub chunk: usize,
}

/// What [`images`] wrote: `studies` × `k` features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImagesReport {
    pub studies: usize,
    pub k: usize,
}

impl ImagesJob {
    /// Names the inputs: a resumed run reuses chunks only when all of these are the same.
    fn key(
        &self,
        studies: usize,
        peaks: usize,
        first: Option<&String>,
        last: Option<&String>,
    ) -> String {
        // MKDA keeps the key it always had, so its earlier partial runs still resume.
        let kernel = match self.mkda.kernel {
            KernelName::Mkda => String::new(),
            k => format!(
                " kernel={k:?} fwhm={:?} sample_size={:?}",
                self.mkda.fwhm, self.mkda.sample_size
            ),
        };
        format!(
            "corpus={} atlas={} labels={} radius={} rounding={:?} mask={:?}{kernel} chunk={} studies={studies} peaks={peaks} first={first:?} last={last:?}\n",
            key_path(&self.corpus),
            key_path(&self.atlas),
            self.labels,
            self.mkda.radius,
            self.mkda.rounding,
            self.mkda.mask,
            self.chunk,
        )
    }
}

/// Image features of every study with peaks in `job.corpus`, rows in corpus order, computed on
/// `device` a chunk at a time; an interrupted run of the same job resumes.
pub fn images(job: &ImagesJob, device: &Device) -> Result<ImagesReport> {
    check_npy_out(&job.out)?;
    let (mask, kernel) = job.mkda.mask_and_ma_kernel()?;
    let (peaks, skipped) = Corpus::open(&job.corpus)?.peaks_all()?;
    if skipped > 0 {
        eprintln!("{skipped} studies have no peaks and get no image row");
    }
    if peaks.is_empty() {
        return Err(Error::input(
            &job.corpus,
            "no study in this corpus has peaks, so there are no image features to compute; \
             import the articles' coordinates with `niclip corpus import`",
        ));
    }
    let atlas = Atlas::read_on_grid(&job.atlas, job.labels, &mask.grid)?;
    let (n, k) = (peaks.len(), atlas.k);
    let key = job.key(n, peaks.xyz.len(), peaks.ids.first(), peaks.ids.last());
    let chunks = Chunks::open(&job.out, &key)?;
    let bar = progress(n as u64, "studies");
    let feats = chunks.rows(
        n,
        job.chunk,
        k,
        |rows| device.image_features(&kernel, &mask, &atlas, &peaks.slice(rows)),
        |rows, _| {
            bar.inc(rows.len() as u64);
            Ok(())
        },
    )?;
    bar.finish_and_clear();
    chunks.finish(&job.out, &feats, n, k, Some(&peaks.ids))?;
    Ok(ImagesReport { studies: n, k })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_key_names_the_kernel_and_keeps_mkdas() {
        let job = |kernel, fwhm, sample_size| ImagesJob {
            corpus: "c".into(),
            atlas: "a".into(),
            labels: false,
            mkda: MkdaSpec {
                kernel,
                fwhm,
                sample_size,
                ..MkdaSpec::mkda(10.0)
            },
            out: "o.npy".into(),
            chunk: 8,
        };
        let key = |j: ImagesJob| j.key(3, 9, None, None);
        let mkda = key(job(KernelName::Mkda, None, None));
        assert!(!mkda.contains("kernel="), "{mkda}");
        let keys = [
            mkda,
            key(job(KernelName::Kda, None, None)),
            key(job(KernelName::Ale, Some(10.0), None)),
            key(job(KernelName::Ale, Some(12.0), None)),
            key(job(KernelName::Ale, None, Some(20.0))),
        ];
        for (i, a) in keys.iter().enumerate() {
            assert!(keys[i + 1..].iter().all(|b| a != b), "{a}");
        }
    }
}
