//! A brain mask: the in-mask voxels of a grid, and the embedded MNI152 2 mm default.

use super::resample::{resample, Interp};
use super::{Grid, Image};
use crate::error::{Error, Result};
use std::path::Path;

/// NiMARE 0.22.1's default mask (`tpl-MNI152NLin6Asym_res-02_desc-brain_mask`): 91×109×91,
/// +2 mm x step, 228,483 voxels.
pub const MNI152_2MM_MASK: &[u8] =
    include_bytes!("../../assets/mni/tpl-MNI152NLin6Asym_res-02_desc-brain_mask.nii.gz");

#[derive(Clone, Debug)]
pub struct Mask {
    pub grid: Grid,
    /// Flat grid indices of in-mask voxels, ascending.
    pub voxels: Vec<u32>,
    /// Flat grid index → position in `voxels`, or -1 outside the mask.
    pub index: Vec<i32>,
}

impl Mask {
    /// Voxels where the image is non-zero (NiMARE and nilearn cast the mask to bool).
    pub fn from_image(img: &Image, path: &Path) -> Result<Mask> {
        if img.n_vols != 1 {
            return Err(Error::input(
                path,
                format!("a mask must be 3D, this image has {} volumes", img.n_vols),
            ));
        }
        let mask = Mask::from_values(img.grid.clone(), img.volume(0));
        if mask.voxels.is_empty() {
            return Err(Error::input(
                path,
                "the mask is empty (all zeros); give a brain mask",
            ));
        }
        Ok(mask)
    }

    pub fn from_values(grid: Grid, values: &[f32]) -> Mask {
        let mut index = vec![-1i32; grid.n_voxels()];
        let mut voxels = Vec::new();
        for (v, &x) in values.iter().enumerate() {
            if x != 0.0 {
                index[v] = voxels.len() as i32;
                voxels.push(v as u32);
            }
        }
        Mask {
            grid,
            voxels,
            index,
        }
    }

    pub fn read(path: &Path) -> Result<Mask> {
        Mask::from_image(&Image::read(path)?, path)
    }

    /// The embedded MNI152 2 mm brain mask.
    pub fn mni152_2mm() -> Mask {
        let name = Path::new("<embedded MNI152 2 mm mask>");
        let img = Image::from_bytes(MNI152_2MM_MASK.to_vec(), name).expect("embedded mask decodes");
        Mask::from_image(&img, name).expect("embedded mask is non-empty")
    }

    /// The values of every volume of the map at `path` in the mask, in `voxels` order:
    /// resampled onto the mask's grid (trilinear) when off it, non-finite values read as 0.
    pub fn values_of(&self, path: &Path) -> Result<Vec<Vec<f32>>> {
        let img = Image::read(path)?;
        let img = if img.grid.same_as(&self.grid) {
            img
        } else {
            resample(&img, &self.grid, Interp::Linear)
        };
        Ok(img
            .volumes()
            .map(|vol| {
                self.voxels
                    .iter()
                    .map(|&v| {
                        let x = vol[v as usize];
                        if x.is_finite() {
                            x
                        } else {
                            0.0
                        }
                    })
                    .collect()
            })
            .collect())
    }

    pub fn len(&self) -> usize {
        self.voxels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.voxels.is_empty()
    }
}
