//! Brain maps as the decoder takes them: resampled onto the atlas grid, turned into the variant
//! asked for (the paper's Fig. S7), checked, and projected onto the atlas.

use crate::brain::resample::{resample_volume_into, Interp};
use crate::brain::{Atlas, Image};
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::path::Path;

/// Which signs of the map to keep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Tail {
    /// Values > 0; the rest set to 0.
    Positive,
    /// Values < 0, as their absolute values; the rest set to 0.
    Negative,
    /// The map as it is.
    #[default]
    Both,
}

/// How a map is changed before it is projected: flip, then tail (on the map's grid), then the
/// percentile ROI (on the atlas grid).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Variant {
    pub tail: Tail,
    /// Multiply by −1 first (decode the opposite contrast).
    pub flip: bool,
    /// Keep the top P % of the atlas's voxels, positive ones only, as a binary ROI (1 inside).
    pub percentile: Option<f64>,
}

impl Variant {
    pub fn check(&self) -> Result<()> {
        match self.percentile {
            Some(p) if !(p > 0.0 && p <= 100.0) => Err(Error::Usage(format!(
                "--percentile must be in (0, 100], got {p}"
            ))),
            _ => Ok(()),
        }
    }

    /// Flip and tail, on the map's own grid (before resampling, as one would threshold a map
    /// by hand before decoding it).
    pub fn apply_signs(&self, vol: &mut [f32]) {
        if self.flip {
            vol.iter_mut().for_each(|x| *x = -*x);
        }
        match self.tail {
            Tail::Both => {}
            Tail::Positive => vol.iter_mut().for_each(|x| *x = x.max(0.0)),
            Tail::Negative => vol.iter_mut().for_each(|x| *x = (-*x).max(0.0)),
        }
    }

    /// The percentile ROI, on the atlas grid: `support` are the atlas's voxels ("in-mask").
    pub fn apply_percentile(&self, vol: &mut [f32], support: &[u32]) {
        let Some(p) = self.percentile else { return };
        let mut inside: Vec<f32> = support.iter().map(|&v| vol[v as usize]).collect();
        if inside.is_empty() {
            return;
        }
        let keep = (((p / 100.0) * inside.len() as f64).ceil() as usize).clamp(1, inside.len());
        let threshold = *inside
            .select_nth_unstable_by(keep - 1, |a, b| b.total_cmp(a))
            .1;
        let mut roi = vec![0.0f32; vol.len()];
        for &v in support {
            let x = vol[v as usize];
            if x > 0.0 && x >= threshold {
                roi[v as usize] = 1.0;
            }
        }
        vol.copy_from_slice(&roi);
    }
}

/// Volume `v` of `img` as the decoder sees it: NaN/Inf set to 0 (as braindec's sanitiser),
/// flipped and tailed, resampled onto the atlas grid (trilinear) when off it, the percentile ROI
/// taken. Errors name the map when there is nothing to decode (all zeros, all NaN, nothing
/// inside the atlas, nothing left after the variant).
pub fn prepare_volume(
    atlas: &Atlas,
    img: &Image,
    v: usize,
    variant: &Variant,
    path: &Path,
) -> Result<Vec<f32>> {
    let vol = img.volume(v);
    let which = if img.n_vols > 1 {
        format!("volume {v} (0-based) ")
    } else {
        String::new()
    };
    if vol.iter().all(|x| !x.is_finite()) {
        return Err(Error::input(path, format!("{which}is all NaN/Inf: there is nothing to decode; check that the map was saved with its values")));
    }
    if !vol.iter().any(|&x| x.is_finite() && x != 0.0) {
        return Err(Error::input(
            path,
            format!("{which}is all zeros: there is nothing to decode"),
        ));
    }
    let mut clean: Vec<f32> = vol
        .iter()
        .map(|&x| if x.is_finite() { x } else { 0.0 })
        .collect();
    variant.apply_signs(&mut clean);
    if clean.iter().all(|&x| x == 0.0) {
        return Err(Error::input(path, format!("{which}has no voxel left after --tail/--flip (the map has no values of that sign); choose another --tail")));
    }
    let mut grid_vol = if img.grid.same_as(&atlas.grid) {
        clean
    } else {
        let mut out = vec![0.0f32; atlas.grid.n_voxels()];
        resample_volume_into(&clean, &img.grid, &atlas.grid, Interp::Linear, &mut out);
        out
    };
    let overlaps = |g: &[f32]| atlas.support.iter().any(|&s| g[s as usize] != 0.0);
    if !overlaps(&grid_vol) {
        return Err(Error::input(path, format!("{which}has no non-zero voxel inside the atlas: is it in MNI space? (its voxels all lie outside the atlas's brain)")));
    }
    variant.apply_percentile(&mut grid_vol, &atlas.support);
    if !overlaps(&grid_vol) {
        return Err(Error::input(path, format!("{which}keeps no voxel inside the atlas with --percentile (no positive value among its top voxels); try --flip or --tail negative")));
    }
    Ok(grid_vol)
}

/// Atlas coefficients of every volume of `img` (n_vols × k, f32) after the variant.
/// `path` names the map in errors.
pub fn image_features(
    atlas: &Atlas,
    img: &Image,
    variant: &Variant,
    path: &Path,
) -> Result<Vec<f32>> {
    let k = atlas.k;
    let n = img.n_vols;
    let xty: Vec<Vec<f64>> = (0..n)
        .into_par_iter()
        .map(|v| -> Result<Vec<f64>> {
            let vol = prepare_volume(atlas, img, v, variant, path)?;
            let mut out = vec![0.0f64; k];
            atlas.xty_dense(&vol, &mut out);
            Ok(out)
        })
        .collect::<Result<_>>()?;
    let flat: Vec<f64> = xty.into_iter().flatten().collect();
    Ok(atlas.solve(&flat, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_flip_split_and_threshold() {
        let support: Vec<u32> = (0..5).collect();
        let base = [3.0, -2.0, 1.0, 0.0, -5.0, 9.0];
        let run = |v: Variant| {
            let mut x = base.to_vec();
            v.apply_signs(&mut x);
            v.apply_percentile(&mut x, &support);
            x
        };
        assert_eq!(run(Variant::default()), base.to_vec());
        let pos = Variant {
            tail: Tail::Positive,
            ..Default::default()
        };
        assert_eq!(run(pos), vec![3.0, 0.0, 1.0, 0.0, 0.0, 9.0]);
        let neg = Variant {
            tail: Tail::Negative,
            ..Default::default()
        };
        assert_eq!(run(neg), vec![0.0, 2.0, 0.0, 0.0, 5.0, 0.0]);
        let flip = Variant {
            flip: true,
            ..Default::default()
        };
        assert_eq!(run(flip), vec![-3.0, 2.0, -1.0, -0.0, 5.0, -9.0]);
        // Top 40 % of the 5 support voxels = 2 voxels (3.0, 1.0); voxel 5 is off the support.
        let pct = Variant {
            percentile: Some(40.0),
            ..Default::default()
        };
        assert_eq!(run(pct), vec![1.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
        // Flip then top 20 %: the largest of −x is 5 (voxel 4).
        let both = Variant {
            flip: true,
            percentile: Some(20.0),
            ..Default::default()
        };
        assert_eq!(run(both), vec![0.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
    }
}
