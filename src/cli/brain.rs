//! `niclip ma-map`, `niclip project`, `niclip images`

use super::Compute;
use crate::brain::features::Peaks;
use crate::brain::mkda::{ma_map as draw_ma_map, MkdaKernel, Rounding, Scratch};
use crate::brain::resample::Interp;
use crate::brain::{Atlas, Image, Mask};
use crate::corpus::Corpus;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::io::{ids_sidecar, read_npy_f32, write_ids, write_npy_f32};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct MaMapArgs {
    /// A corpus made by `niclip corpus import`.
    #[arg(long)]
    pub corpus: PathBuf,
    /// Study id ("<study>-<contrast>", or the bare study id); repeat for several. Volumes come in this order.
    #[arg(long = "study", required = true)]
    pub studies: Vec<String>,
    /// Output 4D float32 NIfTI (.nii or .nii.gz).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub mkda: MkdaArgs,
    #[command(flatten)]
    pub compute: Compute,
}

#[derive(clap::Args, Debug, Clone)]
pub struct MkdaArgs {
    /// Sphere radius in mm.
    #[arg(long, default_value_t = 10.0)]
    pub radius: f64,
    /// Peak to voxel: round (halves to even, NiMARE 0.22.1) or trunc (NiMARE ≤ 0.5).
    #[arg(long, value_enum, default_value_t = Rounding::Round)]
    pub rounding: Rounding,
    /// Brain mask defining the grid (default: the embedded MNI152 2 mm mask NiMARE uses).
    #[arg(long)]
    pub mask: Option<PathBuf>,
}

impl MkdaArgs {
    fn mask_and_kernel(&self) -> Result<(Mask, MkdaKernel)> {
        if !(self.radius > 0.0 && self.radius.is_finite()) {
            return Err(Error::Usage(format!(
                "--radius must be a positive number of mm, got {}",
                self.radius
            )));
        }
        let mask = match &self.mask {
            Some(p) => Mask::read(p)?,
            None => Mask::mni152_2mm(),
        };
        let kernel = MkdaKernel::for_grid(&mask.grid, self.radius, self.rounding);
        Ok((mask, kernel))
    }
}

pub fn ma_map(a: MaMapArgs) -> Result<()> {
    a.compute.init_threads();
    a.compute.cpu_only("ma-map");
    let (mask, kernel) = a.mkda.mask_and_kernel()?;
    let peaks = Corpus::open(&a.corpus)?.peaks_for(&a.studies)?;
    let n = mask.grid.n_voxels();
    let mut data = vec![0.0f32; n * peaks.len()];
    data.par_chunks_mut(n)
        .enumerate()
        .map_init(
            || Scratch::new(&mask.grid),
            |scratch, (s, vol)| -> Result<()> {
                for m in draw_ma_map(&kernel, &mask, peaks.study(s), &peaks.ids[s], scratch)? {
                    vol[mask.voxels[m as usize] as usize] = 1.0;
                }
                Ok(())
            },
        )
        .collect::<Result<()>>()?;
    Image::new(mask.grid.clone(), peaks.len(), data).write(&a.out)
}

#[derive(clap::Args, Debug)]
pub struct ProjectArgs {
    /// A 4D atlas of continuous maps (e.g. DiFuMo maps.nii.gz), or a 3D label atlas with --labels.
    #[arg(long)]
    pub atlas: PathBuf,
    /// Read the atlas as labels: one indicator map per label value.
    #[arg(long)]
    pub labels: bool,
    /// Brain maps (3D or 4D NIfTI; a 4D map gives one row per volume). Off-grid maps are resampled to the atlas (trilinear).
    #[arg(required = true)]
    pub maps: Vec<PathBuf>,
    /// Output coefficients, n_maps × k float32 (.npy).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub compute: Compute,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Interpolation {
    /// Trilinear, for continuous maps (nilearn "linear").
    Linear,
    /// Nearest voxel, for label atlases and masks (nilearn "nearest").
    Nearest,
}

#[derive(clap::Args, Debug)]
pub struct ResampleArgs {
    /// The image to resample (3D or 4D NIfTI).
    pub map: PathBuf,
    /// The image whose grid to resample onto (default: the embedded MNI152 2 mm mask's grid).
    #[arg(long)]
    pub like: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "linear")]
    pub interpolation: Interpolation,
    /// Output float32 NIfTI.
    #[arg(long)]
    pub out: PathBuf,
}

/// As nilearn's `resample_to_img`: world-space resampling, 0 outside the source.
pub fn resample(a: ResampleArgs) -> Result<()> {
    let img = Image::read(&a.map)?;
    let target = match &a.like {
        Some(p) => Image::read(p)?.grid,
        None => Mask::mni152_2mm().grid,
    };
    let interp = match a.interpolation {
        Interpolation::Linear => Interp::Linear,
        Interpolation::Nearest => Interp::Nearest,
    };
    crate::brain::resample::resample(&img, &target, interp).write(&a.out)
}

pub fn project(a: ProjectArgs) -> Result<()> {
    a.compute.init_threads();
    a.compute.cpu_only("project");
    check_npy_out(&a.out)?;
    let atlas = Atlas::read(&a.atlas, a.labels)?;
    let mut rows = Vec::new();
    let mut n = 0;
    for path in &a.maps {
        let img = Image::read(path)?;
        rows.extend(atlas.project_image(&img));
        n += img.n_vols;
    }
    write_npy_f32(&a.out, &rows, n, atlas.k)
}

#[derive(clap::Args, Debug)]
pub struct ImagesArgs {
    /// A corpus made by `niclip corpus import`.
    #[arg(long)]
    pub corpus: PathBuf,
    /// Atlas (4D continuous maps, or a 3D label image with --labels); resampled to the mask grid when off it.
    #[arg(long)]
    pub atlas: PathBuf,
    #[arg(long)]
    pub labels: bool,
    /// Output image features, one row per study with peaks (.npy), ids in <out>.ids.txt.
    #[arg(long)]
    pub out: PathBuf,
    /// Studies per checkpoint: an interrupted run resumes from the last finished chunk.
    #[arg(long, default_value_t = 4096)]
    pub chunk: usize,
    #[command(flatten)]
    pub mkda: MkdaArgs,
    #[command(flatten)]
    pub compute: Compute,
}

pub fn images(a: ImagesArgs) -> Result<()> {
    a.compute.init_threads();
    check_npy_out(&a.out)?;
    let device = Device::select(&a.compute.device)?;
    let (mask, kernel) = a.mkda.mask_and_kernel()?;
    let (peaks, skipped) = Corpus::open(&a.corpus)?.peaks_all()?;
    if skipped > 0 {
        eprintln!("{skipped} studies have no peaks and get no image row");
    }
    let atlas = Atlas::read_on_grid(&a.atlas, a.labels, &mask.grid)?;
    let k = atlas.k;
    let chunk = a.chunk.max(1);
    let n_chunks = peaks.len().div_ceil(chunk);
    let partial = Partial::new(&a.out, &a, &peaks)?;
    let bar = progress(peaks.len() as u64, "studies");
    let mut feats = Vec::with_capacity(peaks.len() * k);
    for c in 0..n_chunks {
        let range = c * chunk..((c + 1) * chunk).min(peaks.len());
        let part = match partial.load(c, range.len(), k) {
            Some(done) => done,
            None => {
                let sub = peaks.slice(range.clone());
                let rows = device.image_features(&kernel, &mask, &atlas, &sub)?;
                partial.save(c, &rows, range.len(), k)?;
                rows
            }
        };
        feats.extend(part);
        bar.inc(range.len() as u64);
    }
    bar.finish_and_clear();
    write_npy_f32(&a.out, &feats, peaks.len(), k)?;
    write_ids(&ids_sidecar(&a.out), &peaks.ids)?;
    partial.remove();
    eprintln!(
        "{} studies × {k} features on {} → {}",
        peaks.len(),
        device.name(),
        a.out.display()
    );
    Ok(())
}

fn check_npy_out(out: &Path) -> Result<()> {
    if out.extension().is_some_and(|e| e == "npy") {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "{}: the output must end in .npy",
            out.display()
        )))
    }
}

fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{bar:40}} {{pos}}/{{len}} {what} ({{per_sec}}, eta {{eta}})"
        ))
        .unwrap(),
    );
    bar
}

/// Checkpoints of a long `images` run: `<out>.partial/` holds one `.npy` per finished chunk and
/// a key naming the inputs, so a resumed run reuses chunks only for the very same job.
struct Partial {
    dir: PathBuf,
}

impl Partial {
    fn new(out: &Path, a: &ImagesArgs, peaks: &Peaks) -> Result<Partial> {
        let mut dir = out.as_os_str().to_os_string();
        dir.push(".partial");
        let dir = PathBuf::from(dir);
        let key = format!(
            "corpus={} atlas={} labels={} radius={} rounding={:?} mask={:?} chunk={} studies={} peaks={} first={:?} last={:?}\n",
            std::fs::canonicalize(&a.corpus).unwrap_or(a.corpus.clone()).display(),
            std::fs::canonicalize(&a.atlas).unwrap_or(a.atlas.clone()).display(),
            a.labels,
            a.mkda.radius,
            a.mkda.rounding,
            a.mkda.mask,
            a.chunk,
            peaks.len(),
            peaks.xyz.len(),
            peaks.ids.first(),
            peaks.ids.last()
        );
        let key_path = dir.join("job.txt");
        if std::fs::read_to_string(&key_path).ok().as_deref() != Some(key.as_str()) {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            crate::io::write_atomic(&key_path, |w| {
                std::io::Write::write_all(w, key.as_bytes()).map_err(|e| Error::io(&key_path, e))
            })?;
        } else {
            eprintln!("resuming from {}", dir.display());
        }
        Ok(Partial { dir })
    }

    fn chunk_path(&self, c: usize) -> PathBuf {
        self.dir.join(format!("chunk-{c:06}.npy"))
    }

    fn load(&self, c: usize, rows: usize, k: usize) -> Option<Vec<f32>> {
        let m = read_npy_f32(&self.chunk_path(c)).ok()?;
        (m.rows == rows && m.cols == k).then_some(m.data)
    }

    fn save(&self, c: usize, rows: &[f32], n: usize, k: usize) -> Result<()> {
        write_npy_f32(&self.chunk_path(c), rows, n, k)
    }

    fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
