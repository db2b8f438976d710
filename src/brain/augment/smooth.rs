//! `smooth:fwhm=F`: Gaussian smoothing of a modeled map with FWHM F mm, separably, as nilearn's
//! `smooth_img`: σ = F / (√(8 ln 2) · voxel size) per axis (voxel sizes are the norms of the
//! affine's columns), then scipy's `gaussian_filter1d` on each axis in turn: truncated at
//! 4σ (radius `int(4σ + 0.5)` voxels), weights normalised to sum 1, borders in scipy's default
//! `reflect` mode (d c b a | a b c d | d c b a). F = 0 leaves the map as it is (nilearn warns
//! and returns it). The whole volume is smoothed, as nilearn does, and sums are f64.
//! Kernel: `aug_smooth` (one pass per axis).

use super::{named_param, Augmentation, Entry, Kind, MAX_TAPS};
use crate::brain::Grid;
use rayon::prelude::*;

pub const ENTRY: Entry = Entry {
    name: "smooth",
    params: "fwhm=F  (mm, 0 ≤ F ≤ 100): Gaussian smoothing, as nilearn's smooth_img",
    sample: "smooth:fwhm=6",
    random: false,
    parse,
};

#[derive(Debug)]
pub struct Smooth {
    pub fwhm: f64,
}

fn parse(args: &str) -> Result<Box<dyn Augmentation>, String> {
    let fwhm = named_param(args, "fwhm")?;
    if !(0.0..=100.0).contains(&fwhm) {
        return Err(format!("fwhm must be in [0, 100] mm, got {fwhm}"));
    }
    Ok(Box::new(Smooth { fwhm }))
}

/// scipy's `_gaussian_kernel1d(sigma, 0, radius)` normalised, radius `int(4σ + 0.5)`.
pub fn gaussian_weights(sigma: f64) -> Vec<f64> {
    if sigma <= 0.0 || !sigma.is_finite() {
        return vec![1.0];
    }
    // Capped one past the longest filter, so a huge σ makes an over-long filter that
    // `augment::filters` refuses rather than an allocation of billions.
    let r = (4.0 * sigma + 0.5).min((MAX_TAPS / 2 + 1) as f64) as i64;
    let w: Vec<f64> = (-r..=r)
        .map(|x| (-0.5 * (x * x) as f64 / (sigma * sigma)).exp())
        .collect();
    let sum: f64 = w.iter().sum();
    w.iter().map(|v| v / sum).collect()
}

impl Augmentation for Smooth {
    fn spec(&self) -> String {
        format!("smooth:fwhm={}", self.fwhm)
    }
    fn kind(&self) -> Kind {
        Kind::Separable
    }
    fn kernel(&self) -> &'static str {
        "aug_smooth"
    }
    fn kernel_params(&self) -> [f64; 2] {
        [self.fwhm, 0.0]
    }
    fn weights(&self, grid: &Grid) -> [Vec<f64>; 3] {
        let size = grid.voxel_size();
        let ratio = (8.0 * 2f64.ln()).sqrt();
        std::array::from_fn(|a| gaussian_weights(self.fwhm / (ratio * size[a])))
    }
}

/// scipy's `reflect` border: index i of an axis of n, mirrored about the half-sample edges.
#[inline]
pub fn reflect(i: i64, n: i64) -> i64 {
    let m = i.rem_euclid(2 * n);
    if m >= n {
        2 * n - 1 - m
    } else {
        m
    }
}

/// Convolves a volume (x fastest) with `weights[a]` along each axis a in turn; each output is
/// Σ_t w[t] · x[reflect(i − r + t)] in f64, t ascending (the kernel's order).
pub fn convolve_cpu(vol: &mut [f32], shape: &[usize; 3], weights: &[Vec<f64>; 3]) {
    let [nx, ny, _] = *shape;
    let stride = [1, nx, nx * ny];
    for (a, w) in weights.iter().enumerate() {
        if w.len() <= 1 {
            continue;
        }
        let (n, r) = (shape[a] as i64, (w.len() / 2) as i64);
        let src = vol.to_vec();
        vol.par_iter_mut().enumerate().for_each(|(v, out)| {
            let i = ((v / stride[a]) % shape[a]) as i64;
            let base = v - i as usize * stride[a];
            let mut acc = 0.0f64;
            for (t, &wt) in w.iter().enumerate() {
                let j = reflect(i - r + t as i64, n) as usize;
                acc += wt * src[base + j * stride[a]] as f64;
            }
            *out = acc as f32;
        });
    }
}
