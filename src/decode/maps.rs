//! Brain maps as the decoder takes them: resampled onto the atlas grid, turned into the variant
//! asked for (the paper's Fig. S7), checked, and projected onto the atlas.

use crate::brain::grid::{invert, matmul};
use crate::brain::resample::{resample_volume_into, sample, Interp};
use crate::brain::{Atlas, Grid, Image};
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

    /// How the map was changed, for a picture's title: "" or " (flipped, positive tail, …)".
    pub fn note(&self) -> String {
        let mut parts = Vec::new();
        if self.flip {
            parts.push("flipped".to_string());
        }
        match self.tail {
            Tail::Both => {}
            Tail::Positive => parts.push("positive tail".into()),
            Tail::Negative => parts.push("negative tail".into()),
        }
        if let Some(p) = self.percentile {
            parts.push(format!("top {p}% as ROI"));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!(" ({})", parts.join(", "))
        }
    }

    /// Flip and tail, on the map's own grid (before resampling, as one would threshold a map
    /// by hand before decoding it). The percentile ROI is taken on the atlas grid
    /// (`support_values`).
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
}

/// The MNI152 2 mm grid of NiMARE's mask (91×109×91, +2 mm steps, origin (−90, −126, −72)),
/// on which the atlas is read, as `niclip images` made the training features.
pub fn mni152_2mm_grid() -> Grid {
    Grid::new(
        [91, 109, 91],
        [
            [2.0, 0.0, 0.0, -90.0],
            [0.0, 2.0, 0.0, -126.0],
            [0.0, 0.0, 2.0, -72.0],
            [0.0, 0.0, 0.0, 1.0],
        ],
    )
}

/// Volume `v` of `img`, NaN/Inf set to 0 (as braindec's sanitiser), flipped and tailed; errors
/// name the map when nothing is left to decode.
fn signed_volume(img: &Image, v: usize, variant: &Variant, path: &Path) -> Result<Vec<f32>> {
    let vol = img.volume(v);
    let which = which(img, v);
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
    Ok(clean)
}

fn which(img: &Image, v: usize) -> String {
    if img.n_vols > 1 {
        format!("volume {v} (0-based) ")
    } else {
        String::new()
    }
}

/// The map's values at the atlas's support voxels (`atlas.support` order): only those enter
/// the projection, so only those are resampled (trilinear) — a tenth of the grid for a
/// cortical atlas. The percentile ROI is taken over them.
pub fn support_values(
    atlas: &Atlas,
    img: &Image,
    v: usize,
    variant: &Variant,
    path: &Path,
) -> Result<Vec<f32>> {
    let vol = signed_volume(img, v, variant, path)?;
    let mut values: Vec<f32> = if img.grid.same_as(&atlas.grid) {
        atlas.support.iter().map(|&s| vol[s as usize]).collect()
    } else {
        let m = matmul(&invert(&img.grid.affine), &atlas.grid.affine);
        atlas
            .support
            .par_iter()
            .with_min_len(4096)
            .map(|&s| {
                let p = atlas.grid.unflat(s as usize).map(|x| x as f64);
                let c: [f64; 3] = std::array::from_fn(|r| {
                    m[r][0] * p[0] + m[r][1] * p[1] + m[r][2] * p[2] + m[r][3]
                });
                sample(&vol, &img.grid, c, Interp::Linear)
            })
            .collect()
    };
    if values.iter().all(|&x| x == 0.0) {
        return Err(Error::input(path, format!("{}has no non-zero voxel inside the atlas: is it in MNI space? (its voxels all lie outside the atlas's brain)", which(img, v))));
    }
    if let Some(p) = variant.percentile {
        percentile_roi(&mut values, p);
        if values.iter().all(|&x| x == 0.0) {
            return Err(Error::input(path, format!("{}keeps no voxel inside the atlas with --percentile (no positive value among its top voxels); try --flip or --tail negative", which(img, v))));
        }
    }
    Ok(values)
}

/// Volume `v` as decoded, on the whole atlas grid (for pictures): the support values where the
/// atlas is, the resampled map elsewhere (0 elsewhere for a percentile ROI).
pub fn prepare_volume(
    atlas: &Atlas,
    img: &Image,
    v: usize,
    variant: &Variant,
    path: &Path,
) -> Result<Vec<f32>> {
    let inside = support_values(atlas, img, v, variant, path)?;
    let mut out = if variant.percentile.is_some() {
        vec![0.0f32; atlas.grid.n_voxels()]
    } else {
        let vol = signed_volume(img, v, variant, path)?;
        let mut out = vec![0.0f32; atlas.grid.n_voxels()];
        resample_volume_into(&vol, &img.grid, &atlas.grid, Interp::Linear, &mut out);
        out
    };
    for (&s, &x) in atlas.support.iter().zip(&inside) {
        out[s as usize] = x;
    }
    Ok(out)
}

/// Keeps the top P % of `values` that are positive, as 1; the rest 0.
fn percentile_roi(values: &mut [f32], p: f64) {
    if values.is_empty() {
        return;
    }
    let mut sorted = values.to_vec();
    let keep = (((p / 100.0) * values.len() as f64).ceil() as usize).clamp(1, values.len());
    let threshold = *sorted
        .select_nth_unstable_by(keep - 1, |a, b| b.total_cmp(a))
        .1;
    for x in values.iter_mut() {
        *x = if *x > 0.0 && *x >= threshold {
            1.0
        } else {
            0.0
        };
    }
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
            let values = support_values(atlas, img, v, variant, path)?;
            let mut out = vec![0.0f64; k];
            for (r, &y) in values.iter().enumerate() {
                if y != 0.0 {
                    atlas.add_row(r, y as f64, &mut out);
                }
            }
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
            if let Some(p) = v.percentile {
                let mut inside: Vec<f32> = support.iter().map(|&s| x[s as usize]).collect();
                percentile_roi(&mut inside, p);
                x.iter_mut().for_each(|v| *v = 0.0);
                for (&s, &v) in support.iter().zip(&inside) {
                    x[s as usize] = v;
                }
            }
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

    #[test]
    fn the_fixed_grid_is_the_embedded_masks() {
        assert!(mni152_2mm_grid().same_as(&crate::brain::Mask::mni152_2mm().grid));
    }
}
