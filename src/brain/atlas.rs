//! Least-squares projection of brain maps onto an atlas, as nilearn's `NiftiMapsMasker`:
//! β = (XᵀX)⁻¹ Xᵀy over the atlas support (voxels where any map ≠ 0). The atlas is kept as
//! sparse rows (voxel → its non-zero maps), XᵀX is built once in f64 and inverted through its
//! Cholesky factor, so a map costs a sparse Xᵀy and one k×k product (a GEMM for many maps).

use super::resample::{resample, Interp};
use super::{Grid, Image};
use crate::device::cpu::{self, Parallelism, Strided};
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::path::Path;

#[derive(Clone, Debug)]
pub struct Atlas {
    pub grid: Grid,
    /// Number of maps (components or labels).
    pub k: usize,
    /// Label values, for a label atlas (one indicator map per label, ascending).
    pub labels: Option<Vec<i64>>,
    /// Flat grid index → row of the support, or −1 off the support.
    pub row_of: Vec<i32>,
    /// Flat grid indices of the support, ascending.
    pub support: Vec<u32>,
    /// CSR rows over the support: maps `cols[row_ptr[r]..row_ptr[r+1]]` with weights `vals[..]`.
    pub row_ptr: Vec<u32>,
    pub cols: Vec<u32>,
    pub vals: Vec<f32>,
    /// (XᵀX)⁻¹, k×k row-major, f64.
    pub gram_inv: Vec<f64>,
}

impl Atlas {
    /// Reads an atlas: a 4D image of continuous maps, or with `labels` a 3D label image.
    /// Prepared atlases are cached (see `atlas_cache`).
    pub fn read(path: &Path, labels: bool) -> Result<Atlas> {
        super::atlas_cache::load_or_build(
            super::atlas_cache::cache_dir().as_deref(),
            path,
            labels,
            None,
            || Atlas::from_image(&Image::read(path)?, labels, path),
        )
    }

    /// The same atlas read onto another grid (continuous maps trilinear, labels nearest), as
    /// nilearn resamples the maps to the data: MA maps stay binary and sparse. Cached.
    pub fn read_on_grid(path: &Path, labels: bool, grid: &Grid) -> Result<Atlas> {
        super::atlas_cache::load_or_build(
            super::atlas_cache::cache_dir().as_deref(),
            path,
            labels,
            Some(grid),
            || Atlas::build_on_grid(path, labels, grid),
        )
    }

    /// [`Atlas::read_on_grid`] without the cache: for small atlases already on the grid (a
    /// 2 mm label atlas builds in milliseconds) and for callers that must not touch the cache.
    pub fn build_on_grid(path: &Path, labels: bool, grid: &Grid) -> Result<Atlas> {
        let img = Image::read(path)?;
        let img = if img.grid.same_as(grid) {
            img
        } else {
            let interp = if labels {
                Interp::Nearest
            } else {
                Interp::Linear
            };
            resample(&img, grid, interp)
        };
        Atlas::from_image(&img, labels, path)
    }

    pub fn from_image(img: &Image, labels: bool, path: &Path) -> Result<Atlas> {
        if labels {
            Atlas::from_labels(img, path)
        } else {
            Atlas::from_maps(img, path)
        }
    }

    /// Continuous maps: each volume of `img` is one map.
    pub fn from_maps(img: &Image, path: &Path) -> Result<Atlas> {
        refuse_labels_as_maps(img, path)?;
        let n = img.grid.n_voxels();
        let k = img.n_vols;
        // Count non-zeros per voxel, then fill CSR rows map by map (cols come out ascending).
        let mut count = vec![0u32; n];
        for vol in img.volumes() {
            for (c, &x) in count.iter_mut().zip(vol) {
                *c += (x != 0.0) as u32;
            }
        }
        let mut atlas = Atlas::with_support(img.grid.clone(), k, None, &count);
        let mut fill = atlas.row_ptr.clone();
        for (m, vol) in img.volumes().enumerate() {
            for (v, &x) in vol.iter().enumerate() {
                if x != 0.0 {
                    let r = atlas.row_of[v] as usize;
                    let at = fill[r] as usize;
                    atlas.cols[at] = m as u32;
                    atlas.vals[at] = x;
                    fill[r] += 1;
                }
            }
        }
        atlas.factor(path)?;
        Ok(atlas)
    }

    /// A label image: one indicator map per non-zero label value, in ascending label order.
    pub fn from_labels(img: &Image, path: &Path) -> Result<Atlas> {
        if img.n_vols != 1 {
            return Err(Error::input(path, format!("a label atlas is one 3D volume, this image has {} volumes; drop --labels for a 4D maps atlas", img.n_vols)));
        }
        let vol = img.volume(0);
        if let Some(x) = vol.iter().find(|x| x.fract() != 0.0) {
            return Err(Error::input(path, format!("label atlas holds a non-integer value {x}; is it a probability map? drop --labels")));
        }
        // Past 2^24 float32 holds no exact integers, so such a "label" is a scaling artefact;
        // refusing it also keeps every label range below well within i64.
        if let Some(x) = vol.iter().find(|x| x.abs() > MAX_LABEL) {
            return Err(Error::input(path, format!("label atlas holds the value {x}, beyond ±2^24 where float32 holds no exact integers; check the header's scl_slope and scl_inter")));
        }
        let labels = distinct_labels(vol);
        if labels.is_empty() {
            return Err(Error::input(
                path,
                "the label atlas is all zeros; give an atlas with labelled voxels",
            ));
        }
        let count: Vec<u32> = vol.iter().map(|&x| (x != 0.0) as u32).collect();
        let mut atlas = Atlas::with_support(img.grid.clone(), labels.len(), Some(labels), &count);
        let labels = atlas.labels.as_ref().unwrap();
        let lo = labels[0];
        // Label → column through a table when the labels are a compact range (they always
        // are in practice), else by binary search.
        let table: Option<Vec<u32>> = (labels[labels.len() - 1] - lo < 1 << 20).then(|| {
            let mut t = vec![u32::MAX; (labels[labels.len() - 1] - lo + 1) as usize];
            for (c, &l) in labels.iter().enumerate() {
                t[(l - lo) as usize] = c as u32;
            }
            t
        });
        for (r, &v) in atlas.support.iter().enumerate() {
            let l = vol[v as usize] as i64;
            atlas.cols[r] = match &table {
                Some(t) => t[(l - lo) as usize],
                None => labels.binary_search(&l).unwrap() as u32,
            };
            atlas.vals[r] = 1.0;
        }
        atlas.factor(path)?;
        Ok(atlas)
    }

    fn with_support(grid: Grid, k: usize, labels: Option<Vec<i64>>, count: &[u32]) -> Atlas {
        let mut row_of = vec![-1i32; count.len()];
        let mut support = Vec::new();
        let mut row_ptr = vec![0u32];
        for (v, &c) in count.iter().enumerate() {
            if c > 0 {
                row_of[v] = support.len() as i32;
                support.push(v as u32);
                row_ptr.push(row_ptr.last().unwrap() + c);
            }
        }
        let nnz = *row_ptr.last().unwrap() as usize;
        Atlas {
            grid,
            k,
            labels,
            row_of,
            support,
            row_ptr,
            cols: vec![0; nnz],
            vals: vec![0.0; nnz],
            gram_inv: Vec::new(),
        }
    }

    /// Builds XᵀX in f64 from the sparse rows and stores its inverse.
    fn factor(&mut self, path: &Path) -> Result<()> {
        let k = self.k;
        if k == 0 || self.support.is_empty() {
            return Err(Error::input(
                path,
                "every atlas map is all zeros; give an atlas with non-empty maps",
            ));
        }
        let rows = self.support.len();
        // One map per voxel (every label atlas, any disjoint maps): XᵀX is diagonal, Σ x² per
        // map, and its inverse exact; no k×k accumulation (the Cholesky route costs O(k³),
        // ~40 ms at k = 426).
        if self.row_ptr.windows(2).all(|w| w[1] - w[0] == 1) {
            let mut diag = vec![0.0f64; k];
            for (&c, &v) in self.cols.iter().zip(&self.vals) {
                diag[c as usize] += v as f64 * v as f64;
            }
            if let Some(m) = diag.iter().position(|&d| d == 0.0) {
                return Err(Error::input(
                    path,
                    format!("atlas map {m} (0-based) is all zeros; remove it from the atlas"),
                ));
            }
            let mut inv = vec![0.0f64; k * k];
            for (i, d) in diag.iter().enumerate() {
                inv[i * k + i] = 1.0 / d;
            }
            self.gram_inv = inv;
            return Ok(());
        }
        let chunk = rows.div_ceil(rayon::current_num_threads() * 4).max(1024);
        let gram = (0..rows.div_ceil(chunk))
            .into_par_iter()
            .map(|c| {
                let mut g = vec![0.0f64; k * k];
                for r in c * chunk..((c + 1) * chunk).min(rows) {
                    let (a, b) = (self.row_ptr[r] as usize, self.row_ptr[r + 1] as usize);
                    for p in a..b {
                        let (ci, vi) = (self.cols[p] as usize, self.vals[p] as f64);
                        let row = &mut g[ci * k..ci * k + k];
                        for q in p..b {
                            row[self.cols[q] as usize] += vi * self.vals[q] as f64;
                        }
                    }
                }
                g
            })
            .reduce(
                || vec![0.0; k * k],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                    a
                },
            );
        // Upper triangle was filled (cols ascending within a row); mirror it.
        let mut gram = gram;
        for i in 0..k {
            for j in 0..i {
                gram[i * k + j] = gram[j * k + i];
            }
        }
        if let Some(m) = (0..k).find(|&m| gram[m * k + m] == 0.0) {
            return Err(Error::input(
                path,
                format!("atlas map {m} (0-based) is all zeros; remove it from the atlas"),
            ));
        }
        // Maps that overlap nowhere but share voxels with zeros still give a diagonal XᵀX.
        let diagonal = (0..k).all(|i| (0..k).all(|j| i == j || gram[i * k + j] == 0.0));
        if diagonal {
            let mut inv = vec![0.0f64; k * k];
            for i in 0..k {
                inv[i * k + i] = 1.0 / gram[i * k + i];
            }
            self.gram_inv = inv;
            return Ok(());
        }
        self.gram_inv = cholesky_inverse(&gram, k).map_err(|m| {
            Error::input(path, format!("atlas maps are linearly dependent (map {m} is a combination of earlier ones); least squares is undefined — remove duplicate maps"))
        })?;
        Ok(())
    }

    /// Xᵀy for a dense map on the atlas grid.
    pub fn xty_dense(&self, values: &[f32], out: &mut [f64]) {
        out.fill(0.0);
        for (r, &v) in self.support.iter().enumerate() {
            let y = values[v as usize];
            if y != 0.0 {
                self.add_row(r, y as f64, out);
            }
        }
    }

    #[inline]
    pub fn add_row(&self, r: usize, y: f64, out: &mut [f64]) {
        let (a, b) = (self.row_ptr[r] as usize, self.row_ptr[r + 1] as usize);
        for p in a..b {
            out[self.cols[p] as usize] += y * self.vals[p] as f64;
        }
    }

    /// β = Xᵀy · (XᵀX)⁻¹ for n maps at once: `xty` is n×k, the result n×k float32.
    pub fn solve(&self, xty: &[f64], n: usize) -> Vec<f32> {
        let k = self.k;
        let mut beta = vec![0.0f64; n * k];
        if n > 0 {
            let (y, g) = (Strided::rows(xty, k), Strided::rows(&self.gram_inv, k));
            let par = Parallelism::Rayon(0);
            cpu::gemm((n, k, k), &mut beta, (k as isize, 1), None, y, g, 1.0, par);
        }
        beta.into_iter().map(|b| b as f32).collect()
    }

    /// Coefficients of every volume of `img` (resampled onto the atlas grid when off it): n_vols×k.
    pub fn project_image(&self, img: &Image) -> Vec<f32> {
        let img = if img.grid.same_as(&self.grid) {
            std::borrow::Cow::Borrowed(img)
        } else {
            std::borrow::Cow::Owned(resample(img, &self.grid, Interp::Linear))
        };
        let k = self.k;
        let mut xty = vec![0.0f64; img.n_vols * k];
        xty.par_chunks_mut(k)
            .zip(img.volumes().collect::<Vec<_>>())
            .for_each(|(out, vol)| self.xty_dense(vol, out));
        self.solve(&xty, img.n_vols)
    }
}

/// The largest label value a label atlas may hold (float32 integers are exact up to 2^24).
const MAX_LABEL: f32 = 16_777_216.0;

/// The distinct non-zero labels of a volume, ascending: through a presence table over their
/// range when it is compact, else by sorting.
fn distinct_labels(vol: &[f32]) -> Vec<i64> {
    let nonzero = || vol.iter().filter(|&&x| x != 0.0).map(|&x| x as i64);
    let (lo, hi) = nonzero().fold((i64::MAX, i64::MIN), |(a, b), l| (a.min(l), b.max(l)));
    if lo > hi {
        return Vec::new();
    }
    if hi - lo < 1 << 20 {
        let mut seen = vec![false; (hi - lo + 1) as usize];
        for l in nonzero() {
            seen[(l - lo) as usize] = true;
        }
        return (lo..=hi).filter(|l| seen[(l - lo) as usize]).collect();
    }
    let mut labels: Vec<i64> = nonzero().collect();
    labels.sort_unstable();
    labels.dedup();
    labels
}

/// Inverse of a symmetric positive-definite matrix through its Cholesky factor, in f64.
/// Err(m) names the first pivot that is not positive (a dependent map).
pub fn cholesky_inverse(a: &[f64], k: usize) -> std::result::Result<Vec<f64>, usize> {
    let mut l = vec![0.0f64; k * k];
    let scale = (0..k).map(|i| a[i * k + i]).fold(0.0f64, f64::max);
    for j in 0..k {
        let mut d = a[j * k + j];
        for p in 0..j {
            d -= l[j * k + p] * l[j * k + p];
        }
        if d <= scale * 1e-13 {
            return Err(j);
        }
        let d = d.sqrt();
        l[j * k + j] = d;
        for i in j + 1..k {
            let mut s = a[i * k + j];
            for p in 0..j {
                s -= l[i * k + p] * l[j * k + p];
            }
            l[i * k + j] = s / d;
        }
    }
    // W = L⁻¹ (lower), then A⁻¹ = Wᵀ W.
    let mut w = vec![0.0f64; k * k];
    for j in 0..k {
        w[j * k + j] = 1.0 / l[j * k + j];
        for i in j + 1..k {
            let mut s = 0.0;
            for p in j..i {
                s -= l[i * k + p] * w[p * k + j];
            }
            w[i * k + j] = s / l[i * k + i];
        }
    }
    let mut inv = vec![0.0f64; k * k];
    inv.par_chunks_mut(k).enumerate().for_each(|(i, row)| {
        for (j, x) in row.iter_mut().enumerate() {
            let mut s = 0.0;
            for p in i.max(j)..k {
                s += w[p * k + i] * w[p * k + j];
            }
            *x = s;
        }
    });
    Ok(inv)
}

/// A 3D image of integer labels read as continuous maps is one "map" whose weights are label
/// numbers: `images` gave "906 studies × 1 features" and exited 0. Refused, pointing to
/// `--labels`; a single continuous map (a probability or statistical map) still reads.
fn refuse_labels_as_maps(img: &Image, path: &Path) -> Result<()> {
    if img.n_vols != 1 {
        return Ok(());
    }
    let mut distinct = std::collections::BTreeSet::new();
    for &x in img.volume(0) {
        if x.fract() != 0.0 {
            return Ok(());
        }
        if x != 0.0 && distinct.insert(x as i64) && distinct.len() > 2 {
            return Err(Error::input(
                path,
                "is one 3D volume of integer labels (more than two distinct values); pass \
                 --labels to read it as a label atlas, one region per label",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_inverse_inverts() {
        let a = [4.0, 2.0, 0.6, 2.0, 5.0, 1.0, 0.6, 1.0, 3.0];
        let inv = cholesky_inverse(&a, 3).unwrap();
        for i in 0..3 {
            for j in 0..3 {
                let s: f64 = (0..3).map(|p| a[i * 3 + p] * inv[p * 3 + j]).sum();
                assert!((s - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12);
            }
        }
        assert_eq!(cholesky_inverse(&[1.0, 1.0, 1.0, 1.0], 2), Err(1));
    }

    #[test]
    fn label_projection_is_the_mean_over_each_label() {
        let grid = Grid::new(
            [4, 1, 1],
            [
                [1.0, 0.0, 0.0, 0.0],
                [0.0, 1.0, 0.0, 0.0],
                [0.0, 0.0, 1.0, 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
        );
        let atlas = Atlas::from_labels(
            &Image::new(grid.clone(), 1, vec![3.0, 3.0, 0.0, 7.0]),
            Path::new("a"),
        )
        .unwrap();
        assert_eq!(atlas.labels, Some(vec![3, 7]));
        let beta = atlas.project_image(&Image::new(grid, 1, vec![1.0, 2.0, 9.0, 5.0]));
        assert_eq!(beta, vec![1.5, 5.0]);
    }

    #[test]
    fn empty_or_dependent_maps_are_errors() {
        let grid = Grid::new(
            [3, 1, 1],
            [
                [1.0, 0.0, 0.0, 0.0],
                [0.0, 1.0, 0.0, 0.0],
                [0.0, 0.0, 1.0, 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
        );
        let zero = Atlas::from_maps(
            &Image::new(grid.clone(), 2, vec![1.0, 1.0, 0.0, 0.0, 0.0, 0.0]),
            Path::new("z.nii"),
        );
        assert!(zero.unwrap_err().to_string().contains("map 1"));
        let none = Atlas::from_maps(
            &Image::new(grid.clone(), 1, vec![0.0; 3]),
            Path::new("n.nii"),
        );
        assert!(none.unwrap_err().to_string().contains("all zeros"));
        let dup = Atlas::from_maps(
            &Image::new(grid, 2, vec![1.0, 2.0, 0.0, 2.0, 4.0, 0.0]),
            Path::new("d.nii"),
        );
        assert!(dup.unwrap_err().to_string().contains("linearly dependent"));
    }
}
