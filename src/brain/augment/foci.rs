//! `foci:k=K`: K false foci appended to every study, each drawn uniformly, with replacement,
//! among the brain mask's voxels and placed at the voxel's centre in mm: the noise foci of
//! NiMARE 0.22.1's `create_coordinate_dataset` (`_create_foci`: `possible_ijks[rng.choice(n,
//! n_noise_foci, replace=True)]`, then `vox2mm`). NiMARE de-duplicates noise foci against a
//! study's signal foci (`np.unique`); here they are appended as drawn, which changes no MKDA map
//! (the spheres' union) and keeps the count exactly K. Kernel: `aug_foci`.

use super::{mask_voxel_mm, Augmentation, Draws, Entry, Kind};
use crate::brain::Mask;

/// Most false foci per study: bounds the allocation (k · studies is checked too).
pub const MAX_FOCI: usize = 1000;

pub const ENTRY: Entry = Entry {
    name: "foci",
    params: "k=K  (integer, 0 ≤ K ≤ 1000): K false foci per study, uniform over the mask's voxels",
    sample: "foci:k=3",
    random: true,
    parse,
};

#[derive(Debug)]
pub struct Foci {
    pub k: usize,
}

fn parse(args: &str) -> Result<Box<dyn Augmentation>, String> {
    let value = args
        .strip_prefix("k=")
        .ok_or_else(|| format!("expected k=<count>, got '{args}'"))?;
    let k: usize = value
        .trim()
        .parse()
        .map_err(|_| format!("k='{value}' is not a count"))?;
    if k > MAX_FOCI {
        return Err(format!("k must be at most {MAX_FOCI}, got {k}"));
    }
    Ok(Box::new(Foci { k }))
}

impl Augmentation for Foci {
    fn spec(&self) -> String {
        format!("foci:k={}", self.k)
    }
    fn kind(&self) -> Kind {
        Kind::AddPeaks
    }
    fn kernel(&self) -> &'static str {
        "aug_foci"
    }
    fn kernel_params(&self) -> [f64; 2] {
        [0.0, 0.0]
    }
    fn added_per_study(&self) -> usize {
        self.k
    }
    fn added_peak(&self, d: Draws, mask: &Mask) -> [f64; 3] {
        mask_voxel_mm(mask, d.below(0, mask.len() as u64) as usize)
    }
}
