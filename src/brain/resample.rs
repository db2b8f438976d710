//! Resampling an image onto another grid in world coordinates, as nilearn's `resample_to_img`
//! (scipy `affine_transform`, mode "constant"): a target voxel whose source coordinate falls
//! outside [0, n−1] on any axis gets 0; inside, trilinear weights (or the nearest voxel).

use super::grid::{invert, matmul};
use super::{Grid, Image};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interp {
    /// Continuous maps (nilearn "linear", scipy order 1).
    Linear,
    /// Labels (nilearn "nearest", scipy order 0).
    Nearest,
}

/// Every volume of `img` resampled onto `target`.
pub fn resample(img: &Image, target: &Grid, interp: Interp) -> Image {
    if img.grid.same_as(target) {
        return Image::new(target.clone(), img.n_vols, img.data.clone());
    }
    let n = target.n_voxels();
    let mut data = vec![0.0f32; n * img.n_vols];
    data.par_chunks_mut(n)
        .zip(img.volumes().collect::<Vec<_>>())
        .for_each(|(out, vol)| {
            resample_volume_into(vol, &img.grid, target, interp, out);
        });
    Image::new(target.clone(), img.n_vols, data)
}

/// One volume on `source` resampled into `out` (length `target.n_voxels()`).
pub fn resample_volume_into(
    vol: &[f32],
    source: &Grid,
    target: &Grid,
    interp: Interp,
    out: &mut [f32],
) {
    // target voxel → source voxel, the same matrix nilearn hands to scipy.
    let m = matmul(&invert(&source.affine), &target.affine);
    let [tx, ty, _] = target.shape;
    let plane = tx * ty;
    out.par_chunks_mut(plane).enumerate().for_each(|(k, slab)| {
        for j in 0..ty {
            for i in 0..tx {
                let p = [i as f64, j as f64, k as f64];
                let c: [f64; 3] = std::array::from_fn(|r| {
                    m[r][0] * p[0] + m[r][1] * p[1] + m[r][2] * p[2] + m[r][3]
                });
                slab[i + tx * j] = sample(vol, source, c, interp);
            }
        }
    });
}

/// The value of `vol` at continuous voxel coordinates `c`.
#[inline]
pub fn sample(vol: &[f32], grid: &Grid, c: [f64; 3], interp: Interp) -> f32 {
    let [nx, ny, nz] = grid.shape;
    let len = [nx, ny, nz];
    if (0..3).any(|a| !(c[a] >= 0.0 && c[a] <= (len[a] - 1) as f64)) {
        return 0.0;
    }
    match interp {
        Interp::Nearest => {
            // scipy order 0: floor(c + 0.5)
            let v: [usize; 3] =
                std::array::from_fn(|a| ((c[a] + 0.5).floor() as usize).min(len[a] - 1));
            vol[v[0] + nx * (v[1] + ny * v[2])]
        }
        Interp::Linear => {
            let lo: [usize; 3] = std::array::from_fn(|a| c[a].floor() as usize);
            let f: [f64; 3] = std::array::from_fn(|a| c[a] - lo[a] as f64);
            let hi: [usize; 3] = std::array::from_fn(|a| (lo[a] + 1).min(len[a] - 1));
            let at = |i: usize, j: usize, k: usize| vol[i + nx * (j + ny * k)] as f64;
            let mut acc = 0.0;
            for (k, wk) in [(lo[2], 1.0 - f[2]), (hi[2], f[2])] {
                for (j, wj) in [(lo[1], 1.0 - f[1]), (hi[1], f[1])] {
                    for (i, wi) in [(lo[0], 1.0 - f[0]), (hi[0], f[0])] {
                        let w = wi * wj * wk;
                        if w != 0.0 {
                            acc += w * at(i, j, k);
                        }
                    }
                }
            }
            acc as f32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flipping_the_x_axis_mirrors_the_voxels() {
        let a = Grid::new(
            [4, 2, 2],
            [
                [2.0, 0.0, 0.0, -3.0],
                [0.0, 2.0, 0.0, 0.0],
                [0.0, 0.0, 2.0, 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
        );
        let b = Grid::new(
            [4, 2, 2],
            [
                [-2.0, 0.0, 0.0, 3.0],
                [0.0, 2.0, 0.0, 0.0],
                [0.0, 0.0, 2.0, 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
        );
        let data: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let out = resample(&Image::new(a, 1, data.clone()), &b, Interp::Linear);
        for v in 0..16 {
            let (i, rest) = (v % 4, v / 4);
            assert_eq!(out.data[v], data[(3 - i) + 4 * rest]);
        }
    }

    #[test]
    fn linear_interpolates_halfway_and_zeroes_outside() {
        let src = Grid::new(
            [2, 2, 2],
            [
                [2.0, 0.0, 0.0, 0.0],
                [0.0, 2.0, 0.0, 0.0],
                [0.0, 0.0, 2.0, 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
        );
        let dst = Grid::new(
            [3, 1, 1],
            [
                [1.0, 0.0, 0.0, 0.0],
                [0.0, 1.0, 0.0, 0.0],
                [0.0, 0.0, 1.0, 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
        );
        let vol = [0.0, 4.0, 0.0, 4.0, 0.0, 4.0, 0.0, 4.0];
        let out = resample(&Image::new(src, 1, vol.to_vec()), &dst, Interp::Linear);
        assert_eq!(out.data, vec![0.0, 2.0, 4.0]);
        let far = Grid::new(
            [1, 1, 1],
            [
                [1.0, 0.0, 0.0, 2.5],
                [0.0, 1.0, 0.0, 0.0],
                [0.0, 0.0, 1.0, 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
        );
        let out = resample(
            &Image::new(out.grid.clone(), 1, out.data.clone()),
            &far,
            Interp::Linear,
        );
        assert_eq!(out.data, vec![0.0]);
    }
}
