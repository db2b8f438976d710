//! `niclip ma-map`, `niclip project`, `niclip images`

use super::Compute;
use crate::brain::kernels::KernelName;
use crate::brain::mkda::{MkdaSpec, Rounding};
use crate::brain::resample::Interp;
use crate::brain::{Image, Mask};
use crate::device::Device;
use crate::error::Result;
use crate::workflow::brain::{self as flow, ImagesJob};
use std::path::PathBuf;

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
    /// Modeled-activation kernel (NiMARE's): mkda (binary spheres, union), kda (spheres,
    /// summed) or ale (a Gaussian per peak, maximum; needs --fwhm or --sample-size).
    #[arg(long, value_enum, default_value_t = KernelName::Mkda)]
    pub kernel: KernelName,
    /// Sphere radius in mm (mkda, kda).
    #[arg(long, default_value_t = 10.0, allow_hyphen_values = true)]
    pub radius: f64,
    /// ALE Gaussian's full width at half maximum, mm.
    #[arg(long, value_name = "MM", allow_hyphen_values = true)]
    pub fwhm: Option<f64>,
    /// ALE Gaussian's width from a sample size (Eickhoff et al. 2012), the same for every study.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub sample_size: Option<f64>,
    /// Peak to voxel: round (halves to even, NiMARE 0.22.1) or trunc (NiMARE ≤ 0.5).
    #[arg(long, value_enum, default_value_t = Rounding::Round)]
    pub rounding: Rounding,
    /// Brain mask defining the grid (default: the embedded MNI152 2 mm mask NiMARE uses).
    #[arg(long)]
    pub mask: Option<PathBuf>,
}

impl MkdaArgs {
    pub fn spec(&self) -> MkdaSpec {
        MkdaSpec {
            kernel: self.kernel,
            radius: self.radius,
            fwhm: self.fwhm,
            sample_size: self.sample_size,
            rounding: self.rounding,
            mask: self.mask.clone(),
        }
    }
}

pub fn ma_map(a: MaMapArgs) -> Result<()> {
    a.compute.init_threads();
    a.compute.cpu_only("ma-map");
    flow::ma_map(&a.corpus, &a.studies, &a.mkda.spec(), &a.out)
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
    /// How values between voxels are read: linear (trilinear, for continuous maps) or nearest
    /// (for labels and masks).
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
    flow::project(&a.atlas, a.labels, &a.maps, &a.out)?;
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct ImagesArgs {
    /// A corpus made by `niclip corpus import`.
    #[arg(long)]
    pub corpus: PathBuf,
    /// Atlas (4D continuous maps, or a 3D label image with --labels); resampled to the mask grid when off it.
    #[arg(long)]
    pub atlas: PathBuf,
    /// Read --atlas as a 3D label image (one region per integer label) instead of 4D maps.
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
    let device = Device::select(&a.compute.device)?;
    let job = ImagesJob {
        corpus: a.corpus,
        atlas: a.atlas,
        labels: a.labels,
        mkda: a.mkda.spec(),
        out: a.out,
        chunk: a.chunk,
    };
    let r = flow::images(&job, &device)?;
    eprintln!(
        "{} studies × {} features on {} → {}",
        r.studies,
        r.k,
        device.name(),
        job.out.display()
    );
    Ok(())
}
