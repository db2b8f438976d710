//! MKDA modeled activation maps, as NiMARE 0.22.1's `MKDAKernel`: each peak snaps to a voxel,
//! a binary sphere of radius r mm is drawn around it, and a study's map is the union of its
//! spheres inside the mask. Maps stay sparse: sorted lists of mask positions.

use super::kernels::{AleKernel, AleWidth, KernelName, MaKernel};
use super::{Grid, Mask};
use crate::error::{Error, Result};
use std::path::PathBuf;

/// How a peak in mm snaps to a voxel index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Rounding {
    /// Nearest voxel, halves to even (numpy's `np.round`, NiMARE 0.22.1).
    #[default]
    Round,
    /// Toward zero (NiMARE ≤ 0.5's `astype(int)`).
    Trunc,
}

/// What the MA-map commands take (`--kernel`, `--radius`, `--fwhm`, `--sample-size`,
/// `--rounding`, `--mask`): the grid's mask, by default the embedded MNI152 2 mm one, and the
/// kernel drawn on it (MKDA or KDA spheres of `radius`, or an ALE Gaussian of `fwhm` mm or of
/// `sample_size` subjects: exactly one of the two, and only for ALE).
#[derive(Clone, Debug)]
pub struct MkdaSpec {
    pub kernel: KernelName,
    /// Sphere radius in mm (MKDA, KDA).
    pub radius: f64,
    /// ALE: full width at half maximum in mm.
    pub fwhm: Option<f64>,
    /// ALE: subjects per study (Eickhoff et al. 2012's FWHM).
    pub sample_size: Option<f64>,
    pub rounding: Rounding,
    /// A brain mask NIfTI (None: the embedded MNI152 2 mm mask NiMARE uses).
    pub mask: Option<PathBuf>,
}

impl MkdaSpec {
    /// The MKDA spec of `radius` mm (round, the default mask).
    pub fn mkda(radius: f64) -> Self {
        MkdaSpec {
            kernel: KernelName::Mkda,
            radius,
            fwhm: None,
            sample_size: None,
            rounding: Rounding::Round,
            mask: None,
        }
    }

    /// The mask and the chosen kernel on its grid; a missing, doubled or bad width is a usage
    /// error naming the flag.
    pub fn mask_and_ma_kernel(&self) -> Result<(Mask, MaKernel)> {
        let width = match (self.kernel, self.fwhm, self.sample_size) {
            (KernelName::Ale, Some(f), None) => Some(AleWidth::Fwhm(f)),
            (KernelName::Ale, None, Some(n)) => Some(AleWidth::SampleSize(n)),
            (KernelName::Ale, None, None) => {
                return Err(Error::Usage(
                    "--kernel ale needs its width: give --fwhm MM or --sample-size N".into(),
                ))
            }
            (KernelName::Ale, Some(_), Some(_)) => {
                return Err(Error::Usage(
                    "--kernel ale takes one of --fwhm and --sample-size, not both".into(),
                ))
            }
            (k, f, n) if f.is_some() || n.is_some() => {
                return Err(Error::Usage(format!(
                    "--fwhm and --sample-size are for --kernel ale, not {k:?}; use --radius"
                )))
            }
            _ => None,
        };
        let (mask, sphere) = self.mask_and_kernel()?;
        let kernel = match (self.kernel, width) {
            (KernelName::Ale, Some(w)) => {
                MaKernel::Ale(AleKernel::new(w, &mask.grid, self.rounding)?)
            }
            (KernelName::Kda, _) => MaKernel::Kda(sphere),
            _ => MaKernel::Mkda(sphere),
        };
        Ok((mask, kernel))
    }

    /// The mask and the kernel on its grid.
    pub fn mask_and_kernel(&self) -> Result<(Mask, MkdaKernel)> {
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

/// The sphere of voxel offsets and the rounding rule: everything needed to draw MA maps on a grid.
#[derive(Clone, Debug)]
pub struct MkdaKernel {
    /// Integer offsets (di, dj, dk) within `radius` mm.
    pub offsets: Vec<[i32; 3]>,
    /// Largest |offset| per axis: peaks at least this far from every edge need no bounds checks.
    pub reach: [i32; 3],
    pub rounding: Rounding,
}

impl MkdaKernel {
    /// NiMARE's `sphere_kernel_offsets`: a cube from ⌊−r/v⌋ to ⌊r/v⌋ voxels per axis (asymmetric
    /// when r/v is not whole, as theirs), kept where ‖v·d‖ ≤ r. 515 offsets at r = 10, v = 2.
    pub fn new(radius_mm: f64, voxel_size: [f64; 3], rounding: Rounding) -> Self {
        let lo: [i32; 3] = std::array::from_fn(|a| (-radius_mm / voxel_size[a]).floor() as i32);
        let hi: [i32; 3] = std::array::from_fn(|a| (radius_mm / voxel_size[a]).floor() as i32);
        let mut offsets = Vec::new();
        // NiMARE's mgrid order: first axis slowest.
        for di in lo[0]..=hi[0] {
            for dj in lo[1]..=hi[1] {
                for dk in lo[2]..=hi[2] {
                    let d = [di, dj, dk];
                    let r2: f64 = (0..3).map(|a| (voxel_size[a] * d[a] as f64).powi(2)).sum();
                    if r2.sqrt() <= radius_mm {
                        offsets.push(d);
                    }
                }
            }
        }
        let reach = std::array::from_fn(|a| lo[a].abs().max(hi[a].abs()));
        MkdaKernel {
            offsets,
            reach,
            rounding,
        }
    }

    /// The kernel for a grid's voxel size.
    pub fn for_grid(grid: &Grid, radius_mm: f64, rounding: Rounding) -> Self {
        MkdaKernel::new(radius_mm, grid.voxel_size(), rounding)
    }

    /// Voxel index of a peak in mm (may lie outside the volume).
    pub fn peak_voxel(&self, inverse_affine: &super::grid::Affine, xyz: [f64; 3]) -> [i64; 3] {
        let c = super::grid::apply(inverse_affine, xyz);
        c.map(|x| match self.rounding {
            Rounding::Round => x.round_ties_even() as i64,
            Rounding::Trunc => x.trunc() as i64,
        })
    }

    /// Whether a peak's sphere can reach the volume: the peak lies within `reach` voxels of it
    /// on every axis (so that adding an offset to it cannot overflow).
    fn touches(&self, grid: &Grid, p: &[i64; 3]) -> bool {
        (0..3).all(|a| {
            let r = self.reach[a] as i64;
            p[a] >= -r && p[a] < grid.shape[a] as i64 + r
        })
    }

    /// Calls `visit(flat grid index)` once for every in-volume voxel of the union of spheres, in
    /// ascending order: the union is marked in the scratch bitmap first, then its set bits are
    /// walked, so whatever `visit` reads per voxel is read front to back (cache-friendly).
    pub fn for_each_voxel(
        &self,
        grid: &Grid,
        peaks: &[[i64; 3]],
        scratch: &mut Scratch,
        mut visit: impl FnMut(usize),
    ) {
        // The bitmap is all zeros between calls: the scan below clears what it reads.
        let [nx, ny, nz] = grid.shape.map(|n| n as i64);
        if scratch.flat_for != (nx, ny, self.offsets.len()) {
            scratch.flat = self
                .offsets
                .iter()
                .map(|d| d[0] as i64 + nx * (d[1] as i64 + ny * d[2] as i64))
                .collect();
            scratch.flat_for = (nx, ny, self.offsets.len());
        }
        let (seen, flat) = (&mut scratch.seen, &scratch.flat);
        let (mut lo, mut hi) = (usize::MAX, 0usize);
        for p in peaks {
            // Checked first, before any arithmetic on p: a peak of 1e20 mm snaps to i64::MAX,
            // and p + reach would wrap to an index that passes the bounds checks below.
            if !self.touches(grid, p) {
                continue;
            }
            let inside = (0..3).all(|a| {
                p[a] - self.reach[a] as i64 >= 0
                    && p[a] + (self.reach[a] as i64) < grid.shape[a] as i64
            });
            if inside {
                let centre = p[0] + nx * (p[1] + ny * p[2]);
                let span =
                    self.reach[0] as i64 + nx * (self.reach[1] as i64 + ny * self.reach[2] as i64);
                lo = lo.min((centre - span) as usize);
                hi = hi.max((centre + span) as usize);
                for &off in flat.iter() {
                    let v = (centre + off) as usize;
                    seen[v >> 6] |= 1u64 << (v & 63);
                }
            } else {
                for d in &self.offsets {
                    let (i, j, k) = (p[0] + d[0] as i64, p[1] + d[1] as i64, p[2] + d[2] as i64);
                    if i >= 0 && j >= 0 && k >= 0 && i < nx && j < ny && k < nz {
                        let v = (i + nx * (j + ny * k)) as usize;
                        seen[v >> 6] |= 1u64 << (v & 63);
                        lo = lo.min(v);
                        hi = hi.max(v);
                    }
                }
            }
        }
        if lo > hi {
            return;
        }
        for (i, word) in seen[lo >> 6..=hi >> 6].iter_mut().enumerate() {
            let w = (lo >> 6) + i;
            let mut bits = std::mem::take(word);
            while bits != 0 {
                visit((w << 6) + bits.trailing_zeros() as usize);
                bits &= bits - 1;
            }
        }
    }
}

/// Peaks in mm → voxel indices on `grid`; a NaN or infinite coordinate is an error naming the peak.
pub fn peak_voxels(
    kernel: &MkdaKernel,
    grid: &Grid,
    peaks_mm: &[[f64; 3]],
    study: &str,
) -> Result<Vec<[i64; 3]>> {
    peak_voxels_rounded(kernel.rounding, grid, peaks_mm, study)
}

/// [`peak_voxels`] for any kernel: only the rounding rule matters.
pub fn peak_voxels_rounded(
    rounding: Rounding,
    grid: &Grid,
    peaks_mm: &[[f64; 3]],
    study: &str,
) -> Result<Vec<[i64; 3]>> {
    let kernel = MkdaKernel {
        offsets: Vec::new(),
        reach: [0; 3],
        rounding,
    };
    let inv = super::grid::invert(&grid.affine);
    peaks_mm
        .iter()
        .enumerate()
        .map(|(n, p)| {
            if p.iter().all(|x| x.is_finite()) {
                Ok(kernel.peak_voxel(&inv, *p))
            } else {
                Err(Error::Usage(format!("study {study}: peak {} has a non-finite coordinate {p:?}; fix or drop it in the corpus", n + 1)))
            }
        })
        .collect()
}

/// Scratch for drawing many maps on one thread: a bitmap of visited voxels (113 KB on the
/// 2 mm grid, so it stays in cache where a per-voxel stamp array would not).
pub struct Scratch {
    seen: Vec<u64>,
    /// The sphere's offsets as flat grid steps, and the (nx, ny, count) they were made for.
    flat: Vec<i64>,
    flat_for: (i64, i64, usize),
}

impl Scratch {
    pub fn new(grid: &Grid) -> Self {
        Scratch {
            seen: vec![0; grid.n_voxels().div_ceil(64)],
            flat: Vec::new(),
            flat_for: (0, 0, 0),
        }
    }
}

/// A study's MA map: positions in `mask.voxels` of the active voxels, ascending.
pub fn ma_map(
    kernel: &MkdaKernel,
    mask: &Mask,
    peaks_mm: &[[f64; 3]],
    study: &str,
    scratch: &mut Scratch,
) -> Result<Vec<u32>> {
    let peaks = peak_voxels(kernel, &mask.grid, peaks_mm, study)?;
    let mut active = Vec::with_capacity(peaks.len() * kernel.offsets.len());
    kernel.for_each_voxel(&mask.grid, &peaks, scratch, |v| {
        let m = mask.index[v];
        if m >= 0 {
            active.push(m as u32);
        }
    });
    Ok(active)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sphere_of_10mm_on_2mm_voxels_has_515_offsets() {
        assert_eq!(
            MkdaKernel::new(10.0, [2.0; 3], Rounding::Round)
                .offsets
                .len(),
            515
        );
    }

    #[test]
    fn sphere_on_3mm_voxels_is_asymmetric_as_nimare() {
        // ⌊−10/3⌋ = −4, ⌊10/3⌋ = 3: NiMARE's slices(-r // v, r // v + 0.01).
        let k = MkdaKernel::new(10.0, [3.0; 3], Rounding::Round);
        assert_eq!(k.offsets.iter().map(|d| d[0]).min(), Some(-3)); // −4·3 = 12 mm > 10 mm: cut by the radius
        assert!(k
            .offsets
            .iter()
            .all(|d| d.iter().all(|&x| (-4..=3).contains(&x))));
    }

    #[test]
    fn halves_round_to_even_and_trunc_goes_toward_zero() {
        let id = [
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let round = MkdaKernel::new(1.0, [1.0; 3], Rounding::Round);
        let trunc = MkdaKernel::new(1.0, [1.0; 3], Rounding::Trunc);
        assert_eq!(round.peak_voxel(&id, [2.5, 3.5, -0.5]), [2, 4, 0]);
        assert_eq!(trunc.peak_voxel(&id, [2.7, 3.5, -0.7]), [2, 3, 0]);
    }

    #[test]
    fn peak_outside_the_volume_keeps_its_in_volume_voxels() {
        let grid = Grid::new(
            [10, 10, 10],
            [
                [1.0, 0.0, 0.0, 0.0],
                [0.0, 1.0, 0.0, 0.0],
                [0.0, 0.0, 1.0, 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
        );
        let mask = Mask::from_values(grid.clone(), &vec![1.0; 1000]);
        let k = MkdaKernel::new(2.0, [1.0; 3], Rounding::Round);
        let mut s = Scratch::new(&grid);
        // Centre at x = −1: only offsets with dx ≥ 1 land inside (dx=1: 9 voxels with dy²+dz² ≤ 3; dx=2: 1).
        let m = ma_map(&k, &mask, &[[-1.0, 5.0, 5.0]], "s", &mut s).unwrap();
        assert_eq!(m.len(), 10);
        // Two identical peaks: the union counts each voxel once.
        let one = ma_map(&k, &mask, &[[5.0, 5.0, 5.0]], "s", &mut s).unwrap();
        let two = ma_map(&k, &mask, &[[5.0, 5.0, 5.0], [5.0, 5.0, 5.0]], "s", &mut s).unwrap();
        assert_eq!(one, two);
        assert_eq!(one.len(), k.offsets.len());
    }

    #[test]
    fn nan_peak_is_an_error_naming_the_study() {
        let mask = Mask::mni152_2mm();
        let k = MkdaKernel::for_grid(&mask.grid, 10.0, Rounding::Round);
        let err = ma_map(
            &k,
            &mask,
            &[[f64::NAN, 0.0, 0.0]],
            "12345",
            &mut Scratch::new(&mask.grid),
        )
        .unwrap_err();
        assert!(err.to_string().contains("12345"), "{err}");
    }
}
