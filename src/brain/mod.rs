//! Brain space: NIfTI images, grids and affines, resampling, MKDA modeled activation maps and
//! least-squares projection onto an atlas.

pub mod atlas;
pub mod atlas_cache;
pub mod augment;
pub mod features;
pub mod features_cuda;
pub mod grid;
pub mod kernels;
pub mod mask;
pub mod mkda;
pub mod nifti;
pub mod resample;

pub use atlas::Atlas;
pub use features::Peaks;
pub use grid::Grid;
pub use mask::Mask;
pub use nifti::Image;
