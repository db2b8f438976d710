//! The three modeled-activation kernels of NiMARE 0.22.1 (`nimare.meta.kernel`), on one grid:
//!
//! - **MKDA** (`MKDAKernel(r)`): the union of binary spheres (`super::mkda`);
//! - **KDA** (`KDAKernel(r)`): the sum of the same spheres (a voxel in 3 spheres gets 3);
//! - **ALE** (`ALEKernel(fwhm=F)` / `ALEKernel(sample_size=N)` / per-study sample sizes): a
//!   Gaussian per peak, built as `nimare.meta.utils.get_ale_kernel` (scipy's `gaussian_filter`
//!   of a delta in a 31³ box, cropped where > `np.spacing(1)`), a study's map the voxel-wise
//!   maximum over its peaks (`compute_ale_ma`).
//!
//! All maps are masked; values are float32 as NiMARE's. A study's values are drawn into a
//! per-thread scratch volume with a touched list, so no dense volume is allocated per study.

use super::mkda::{peak_voxels_rounded, MkdaKernel, Rounding};
use super::{Grid, Mask};
use crate::error::{Error, Result};

/// Which kernel (`--kernel`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum KernelName {
    /// Binary spheres, union (NiMARE `MKDAKernel`).
    #[default]
    Mkda,
    /// Binary spheres, summed (NiMARE `KDAKernel`).
    Kda,
    /// Gaussian per peak, maximum (NiMARE `ALEKernel`).
    Ale,
}

/// A modeled-activation kernel on a grid.
#[derive(Clone, Debug)]
pub enum MaKernel {
    Mkda(MkdaKernel),
    Kda(MkdaKernel),
    Ale(AleKernel),
}

/// One Gaussian of the ALE kernel: its nonzero offsets and float32 values.
#[derive(Clone, Debug)]
pub struct AleTable {
    /// Offsets (di, dj, dk) from the peak voxel, first axis slowest (numpy's `np.where` order).
    pub offsets: Vec<[i32; 3]>,
    /// float32 values, one per offset (NiMARE casts the float64 kernel to float32).
    pub values: Vec<f32>,
    /// Largest |offset| per axis.
    pub reach: [i32; 3],
}

/// The ALE kernel: one Gaussian for every study, or one per study (per-study sample sizes).
#[derive(Clone, Debug)]
pub struct AleKernel {
    /// The distinct Gaussians.
    pub tables: Vec<AleTable>,
    /// Study s uses `tables[study_table[s]]`; None: `tables[0]` for every study.
    pub study_table: Option<Vec<u32>>,
    pub rounding: Rounding,
}

/// The width of an ALE Gaussian, as `get_ale_kernel` takes it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AleWidth {
    /// Full width at half maximum, mm.
    Fwhm(f64),
    /// Subjects, through Eickhoff et al. (2012)'s formula.
    SampleSize(f64),
}

impl AleWidth {
    /// The FWHM in mm (Eickhoff et al. 2012 for a sample size, NiMARE's arithmetic).
    pub fn fwhm(self) -> f64 {
        match self {
            AleWidth::Fwhm(f) => f,
            AleWidth::SampleSize(n) => {
                let c = (8.0 * 2.0f64.ln()).sqrt();
                let templates = 5.7 / (2.0 * (2.0 / std::f64::consts::PI).sqrt()) * c;
                let subjects = (11.6 / (2.0 * (2.0 / std::f64::consts::PI).sqrt()) * c) / n.sqrt();
                (subjects * subjects + templates * templates).sqrt()
            }
        }
    }

    fn check(self) -> Result<()> {
        let (flag, v) = match self {
            AleWidth::Fwhm(f) => ("--fwhm", f),
            AleWidth::SampleSize(n) => ("--sample-size", n),
        };
        if v > 0.0 && v.is_finite() {
            Ok(())
        } else {
            Err(Error::Usage(format!(
                "{flag} must be a positive finite number, got {v}"
            )))
        }
    }
}

/// The widest Gaussian drawn, σ in voxels (its 31³ box is then all but flat).
const MAX_SIGMA_VOX: f64 = 1000.0;

/// The most distinct per-study sample sizes: each is a table of up to 31³ offsets (and a cube
/// on the GPU); round the sizes to whole subjects to stay below it.
pub const MAX_SAMPLE_SIZES: usize = 4096;

/// numpy's pairwise sum (`pairwise_sum_DOUBLE`) for up to 128 values: sequential below 8,
/// else 8 accumulators combined as ((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7)), then the tail.
fn numpy_sum(a: &[f64]) -> f64 {
    if a.len() < 8 {
        return a.iter().fold(0.0, |s, &x| s + x);
    }
    let mut r: [f64; 8] = std::array::from_fn(|j| a[j]);
    let full = a.len() - a.len() % 8;
    for i in (8..full).step_by(8) {
        for j in 0..8 {
            r[j] += a[i + j];
        }
    }
    let mut s = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for &x in &a[full..] {
        s += x;
    }
    s
}

/// scipy's `_gaussian_kernel1d(sigma, 0, radius)` with radius `int(4 sigma + 0.5)`, normalised.
fn gaussian_1d(sigma: f64) -> Vec<f64> {
    let radius = (4.0 * sigma + 0.5) as i64;
    let c = -0.5 / (sigma * sigma);
    let phi: Vec<f64> = (-radius..=radius)
        .map(|x| (c * (x * x) as f64).exp())
        .collect();
    let s = numpy_sum(&phi);
    phi.iter().map(|p| p / s).collect()
}

/// The 31-voxel line through the delta after one `correlate1d` (mode "constant").
fn box_line(sigma: f64) -> [f64; 31] {
    let w = gaussian_1d(sigma);
    let r = (w.len() / 2) as i64;
    std::array::from_fn(|p| {
        let t = 15 - p as i64 + r;
        if (0..w.len() as i64).contains(&t) {
            w[t as usize]
        } else {
            0.0
        }
    })
}

impl AleTable {
    /// `get_ale_kernel(img, fwhm=…)` then `_kernel_to_sparse_support` on a grid of these zooms.
    pub fn new(width: AleWidth, voxel_size: [f64; 3]) -> Result<Self> {
        width.check()?;
        let fwhm_vox = width.fwhm() / voxel_size.iter().product::<f64>().sqrt();
        let sigma = fwhm_vox * 2.0f64.sqrt() / ((2.0 * 2.0f64.ln()).sqrt() * 2.0);
        if !(sigma > 0.0 && sigma <= MAX_SIGMA_VOX) {
            return Err(Error::Usage(format!(
                "the ALE kernel's width ({width:?}) gives a Gaussian of σ = {sigma} voxels; give a FWHM of a few mm or a sample size ≥ 1"
            )));
        }
        let l = box_line(sigma);
        // gaussian_filter: axis 0, then 1, then 2; each multiplies the delta's one nonzero.
        let value = |i: usize, j: usize, k: usize| l[k] * (l[j] * l[i]);
        let eps = f64::EPSILON; // np.spacing(1)
        let big: Vec<usize> = (0..31)
            .filter(|&i| (0..31).any(|j| (0..31).any(|k| value(i, j, k) > eps)))
            .collect();
        let (mn, mx) = match (big.first(), big.last()) {
            (Some(&a), Some(&b)) => (a, b),
            _ => return Err(Error::Usage(format!("the ALE kernel ({width:?}) is empty"))),
        };
        // np.floor(shape / 2) of the cropped cube.
        let len = mx - mn + 1;
        let centre = (len / 2) as i32;
        let (mut offsets, mut values) = (Vec::new(), Vec::new());
        for i in mn..=mx {
            for j in mn..=mx {
                for k in mn..=mx {
                    let v = value(i, j, k);
                    if v > 0.0 {
                        let o = |x: usize| (x - mn) as i32 - centre;
                        offsets.push([o(i), o(j), o(k)]);
                        values.push(v as f32);
                    }
                }
            }
        }
        let reach = std::array::from_fn(|a| offsets.iter().map(|d| d[a].abs()).max().unwrap_or(0));
        Ok(AleTable {
            offsets,
            values,
            reach,
        })
    }
}

impl AleKernel {
    /// One Gaussian for every study.
    pub fn new(width: AleWidth, grid: &Grid, rounding: Rounding) -> Result<Self> {
        Ok(AleKernel {
            tables: vec![AleTable::new(width, grid.voxel_size())?],
            study_table: None,
            rounding,
        })
    }

    /// One Gaussian per study from its sample size (NiMARE's `ALEKernel()` on a Dataset with
    /// `sample_sizes` metadata); studies of the same size share a table.
    pub fn per_study(sample_sizes: &[f64], grid: &Grid, rounding: Rounding) -> Result<Self> {
        let mut sizes: Vec<u64> = sample_sizes.iter().map(|n| n.to_bits()).collect();
        sizes.sort_unstable();
        sizes.dedup();
        if sizes.len() > MAX_SAMPLE_SIZES {
            return Err(Error::Usage(format!(
                "{} distinct sample sizes, at most {MAX_SAMPLE_SIZES}: round them to whole subjects",
                sizes.len()
            )));
        }
        let tables = sizes
            .iter()
            .map(|&b| AleTable::new(AleWidth::SampleSize(f64::from_bits(b)), grid.voxel_size()))
            .collect::<Result<_>>()?;
        let study_table = sample_sizes
            .iter()
            .map(|n| sizes.binary_search(&n.to_bits()).unwrap_or(0) as u32)
            .collect();
        Ok(AleKernel {
            tables,
            study_table: Some(study_table),
            rounding,
        })
    }

    /// Study s's Gaussian.
    pub fn table(&self, s: usize) -> &AleTable {
        match &self.study_table {
            Some(t) => &self.tables[t[s] as usize],
            None => &self.tables[0],
        }
    }

    /// Checks that a per-study kernel covers `n` studies, and that every study's table exists
    /// (the fields are public: the CUDA kernel must not index past the tables).
    pub fn check_studies(&self, n: usize) -> Result<()> {
        let n_tables = self.tables.len();
        let bad = self
            .study_table
            .as_ref()
            .is_some_and(|t| t.iter().any(|&i| i as usize >= n_tables));
        let torn = self.tables.iter().any(|t| {
            t.values.len() != t.offsets.len()
                || t.offsets
                    .iter()
                    .any(|d| (0..3).any(|a| d[a].unsigned_abs() > t.reach[a].unsigned_abs()))
        });
        if n_tables == 0 || bad || torn {
            return Err(Error::Usage(format!(
                "the ALE kernel is inconsistent (a study's table missing among {n_tables}, or a table's offsets, values and reach disagree); build it with AleKernel::new or AleKernel::per_study"
            )));
        }
        match &self.study_table {
            Some(t) if t.len() != n => Err(Error::Usage(format!(
                "the ALE kernel has sample sizes for {} studies, the peaks hold {n}",
                t.len()
            ))),
            _ => Ok(()),
        }
    }
}

impl MaKernel {
    pub fn rounding(&self) -> Rounding {
        match self {
            MaKernel::Mkda(k) | MaKernel::Kda(k) => k.rounding,
            MaKernel::Ale(a) => a.rounding,
        }
    }

    /// Checks that the kernel fits `n` studies (per-study ALE sizes).
    pub fn check_studies(&self, n: usize) -> Result<()> {
        match self {
            MaKernel::Ale(a) => a.check_studies(n),
            _ => Ok(()),
        }
    }
}

/// Scratch for drawing many KDA / ALE maps on one thread: a volume of values and a bitmap of
/// the voxels a study touched (both all zero between calls), and the kernel's offsets as flat
/// grid steps.
pub struct ValueScratch {
    vals: Vec<f32>,
    seen: Vec<u64>,
    flat: Vec<i64>,
}

impl ValueScratch {
    pub fn new(grid: &Grid) -> Self {
        ValueScratch {
            vals: vec![0.0; grid.n_voxels()],
            seen: vec![0; grid.n_voxels().div_ceil(64)],
            flat: Vec::new(),
        }
    }
}

/// Calls `add(flat voxel, offset index)` for every in-volume voxel of every peak's kernel
/// (peaks in order, offsets in order), marking each in `seen` and returning the lowest and
/// highest voxel marked. Peaks too far off to reach the volume are skipped before any
/// arithmetic on them (a peak of 1e20 mm snaps to i64::MAX); peaks whose whole cube is inside
/// step by `flat` offsets without bounds checks.
fn for_each_hit(
    grid: &Grid,
    peaks: &[[i64; 3]],
    (offsets, reach): (&[[i32; 3]], [i32; 3]),
    (seen, flat): (&mut [u64], &mut Vec<i64>),
    mut add: impl FnMut(usize, usize),
) -> (usize, usize) {
    let [nx, ny, nz] = grid.shape.map(|n| n as i64);
    flat.clear();
    flat.extend(
        offsets
            .iter()
            .map(|d| d[0] as i64 + nx * (d[1] as i64 + ny * d[2] as i64)),
    );
    let (mut lo, mut hi) = (usize::MAX, 0usize);
    let mut hit = |v: usize, o: usize| {
        seen[v >> 6] |= 1u64 << (v & 63);
        lo = lo.min(v);
        hi = hi.max(v);
        add(v, o);
    };
    for p in peaks {
        let r = reach.map(|r| r as i64);
        if !(0..3).all(|a| p[a] >= -r[a] && p[a] < grid.shape[a] as i64 + r[a]) {
            continue;
        }
        let inside = (0..3).all(|a| p[a] - r[a] >= 0 && p[a] + r[a] < grid.shape[a] as i64);
        if inside {
            let centre = p[0] + nx * (p[1] + ny * p[2]);
            for (o, &f) in flat.iter().enumerate() {
                hit((centre + f) as usize, o);
            }
            continue;
        }
        for (o, d) in offsets.iter().enumerate() {
            let (i, j, k) = (p[0] + d[0] as i64, p[1] + d[1] as i64, p[2] + d[2] as i64);
            if i >= 0 && j >= 0 && k >= 0 && i < nx && j < ny && k < nz {
                hit((i + nx * (j + ny * k)) as usize, o);
            }
        }
    }
    (lo, hi)
}

/// Calls `visit(flat grid voxel, value)` for every in-mask voxel of study s's KDA or ALE map
/// with a nonzero value, in ascending voxel order. (MKDA goes through `MkdaKernel`.)
pub fn for_each_value(
    kernel: &MaKernel,
    mask: &Mask,
    peaks_mm: &[[f64; 3]],
    s: usize,
    study: &str,
    scratch: &mut ValueScratch,
    mut visit: impl FnMut(usize, f32),
) -> Result<()> {
    let peaks = peak_voxels_rounded(kernel.rounding(), &mask.grid, peaks_mm, study)?;
    let ValueScratch { vals, seen, flat } = scratch;
    let grid = &mask.grid;
    let (lo, hi) = match kernel {
        MaKernel::Kda(k) | MaKernel::Mkda(k) => {
            let union = matches!(kernel, MaKernel::Mkda(_));
            for_each_hit(grid, &peaks, (&k.offsets, k.reach), (seen, flat), |v, _| {
                vals[v] = if union { 1.0 } else { vals[v] + 1.0 };
            })
        }
        MaKernel::Ale(a) => {
            let t = a.table(s);
            for_each_hit(grid, &peaks, (&t.offsets, t.reach), (seen, flat), |v, o| {
                vals[v] = vals[v].max(t.values[o]);
            })
        }
    };
    if lo > hi {
        return Ok(());
    }
    for (i, word) in seen[lo >> 6..=hi >> 6].iter_mut().enumerate() {
        let w = (lo >> 6) + i;
        let mut bits = std::mem::take(word);
        while bits != 0 {
            let v = (w << 6) + bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let x = std::mem::take(&mut vals[v]);
            if x != 0.0 && mask.index[v] >= 0 {
                visit(v, x);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit_grid(n: usize) -> Grid {
        let mut a = [[0.0; 4]; 4];
        for (i, row) in a.iter_mut().enumerate() {
            row[i] = 1.0;
        }
        Grid::new([n; 3], a)
    }

    fn values(kernel: &MaKernel, mask: &Mask, peaks: &[[f64; 3]]) -> Vec<(usize, f32)> {
        let mut s = ValueScratch::new(&mask.grid);
        let mut out = Vec::new();
        for_each_value(kernel, mask, peaks, 0, "s", &mut s, |v, x| out.push((v, x))).unwrap();
        out
    }

    #[test]
    fn ale_fwhm10_on_2mm_is_nimare_kernel() {
        // get_ale_kernel(mni152_2mm, fwhm=10): σ = 1.5 voxels, radius 6, cropped to 11³ where
        // > np.spacing(1) (the ±6 layer holds values near 1e-16·peak only at its centre).
        let t = AleTable::new(AleWidth::Fwhm(10.0), [2.0; 3]).unwrap();
        let centre = t.offsets.iter().position(|d| *d == [0, 0, 0]).unwrap();
        let max = t.values.iter().cloned().fold(0.0f32, f32::max);
        assert_eq!(t.values[centre], max);
        assert!(t.reach.iter().all(|&r| r == t.reach[0]));
        let sum: f64 = t.values.iter().map(|&v| v as f64).sum();
        assert!((sum - 1.0).abs() < 1e-3, "{sum}");
    }

    #[test]
    fn sample_size_fwhm_is_eickhoffs() {
        // 5.7 and 11.6 mm Euclidean distances → FWHM; NiMARE 0.22.1 gives 9.241242951547518 for n = 20.
        let f = AleWidth::SampleSize(20.0).fwhm();
        assert!((f - 9.241242951547518).abs() < 1e-12, "{f}");
        assert!(AleWidth::SampleSize(1e9).fwhm() > AleWidth::Fwhm(0.0).fwhm());
    }

    #[test]
    fn bad_widths_are_errors_naming_the_flag() {
        for (w, flag) in [
            (AleWidth::Fwhm(-1.0), "--fwhm"),
            (AleWidth::Fwhm(f64::NAN), "--fwhm"),
            (AleWidth::SampleSize(0.0), "--sample-size"),
            (AleWidth::SampleSize(-5.0), "--sample-size"),
        ] {
            let e = AleTable::new(w, [2.0; 3]).unwrap_err().to_string();
            assert!(e.contains(flag), "{e}");
        }
    }

    #[test]
    fn kda_sums_and_ale_takes_the_max() {
        let grid = unit_grid(24);
        let mask = Mask::from_values(grid.clone(), &vec![1.0; 24 * 24 * 24]);
        let sphere = MkdaKernel::new(2.0, [1.0; 3], Rounding::Round);
        let kda = MaKernel::Kda(sphere.clone());
        let one = values(&kda, &mask, &[[5.0; 3]]);
        let three = values(&kda, &mask, &[[5.0; 3]; 3]);
        assert_eq!(one.len(), sphere.offsets.len());
        assert!(three
            .iter()
            .zip(&one)
            .all(|(a, b)| a.0 == b.0 && a.1 == 3.0 * b.1));
        let ale =
            MaKernel::Ale(AleKernel::new(AleWidth::Fwhm(3.0), &grid, Rounding::Round).unwrap());
        let a = values(&ale, &mask, &[[5.0; 3]]);
        assert_eq!(a, values(&ale, &mask, &[[5.0; 3], [5.0; 3]]));
        let two = values(&ale, &mask, &[[5.0; 3], [7.0, 5.0, 5.0]]);
        assert!(two.len() > a.len());
        // The maximum: every voxel of the pair is at least either peak's own value.
        let b = values(&ale, &mask, &[[7.0, 5.0, 5.0]]);
        for (v, x) in two {
            let of = |m: &[(usize, f32)]| m.iter().find(|p| p.0 == v).map_or(0.0, |p| p.1);
            assert_eq!(x, of(&a).max(of(&b)));
        }
    }

    #[test]
    fn zero_peaks_and_peaks_outside_give_empty_or_partial_maps() {
        let grid = unit_grid(10);
        let mask = Mask::from_values(grid.clone(), &vec![1.0; 1000]);
        let ale =
            MaKernel::Ale(AleKernel::new(AleWidth::Fwhm(3.0), &grid, Rounding::Round).unwrap());
        let kda = MaKernel::Kda(MkdaKernel::new(2.0, [1.0; 3], Rounding::Round));
        for k in [&ale, &kda] {
            assert!(values(k, &mask, &[]).is_empty());
            assert!(values(k, &mask, &[[1e20, 0.0, 0.0], [-500.0, 3.0, 3.0]]).is_empty());
            let reach = match k {
                MaKernel::Ale(a) => a.tables[0].reach[0] as usize,
                MaKernel::Kda(s) | MaKernel::Mkda(s) => s.reach[0] as usize,
            };
            let edge = values(k, &mask, &[[-1.0, 5.0, 5.0]]);
            assert!(!edge.is_empty() && edge.iter().all(|&(v, _)| v % 10 < reach));
        }
        // Sphere of 2 voxels centred at x = −1: dx = 1 holds 9 voxels, dx = 2 one.
        assert_eq!(values(&kda, &mask, &[[-1.0, 5.0, 5.0]]).len(), 10);
    }

    #[test]
    fn spec_needs_exactly_one_ale_width() {
        use crate::brain::mkda::MkdaSpec;
        let spec = |kernel, fwhm, sample_size| MkdaSpec {
            kernel,
            fwhm,
            sample_size,
            ..MkdaSpec::mkda(10.0)
        };
        let err = |s: MkdaSpec| s.mask_and_ma_kernel().unwrap_err().to_string();
        assert!(err(spec(KernelName::Ale, None, None)).contains("--fwhm MM or --sample-size N"));
        assert!(err(spec(KernelName::Ale, Some(10.0), Some(20.0))).contains("not both"));
        assert!(err(spec(KernelName::Ale, Some(-10.0), None)).contains("--fwhm"));
        assert!(err(spec(KernelName::Ale, None, Some(-3.0))).contains("--sample-size"));
        assert!(err(spec(KernelName::Ale, Some(1e9), None)).contains("σ"));
        assert!(err(spec(KernelName::Kda, Some(10.0), None)).contains("--kernel ale"));
        assert!(err(MkdaSpec {
            radius: -1.0,
            ..spec(KernelName::Kda, None, None)
        })
        .contains("--radius"));
        let (_, k) = spec(KernelName::Ale, None, Some(20.0))
            .mask_and_ma_kernel()
            .unwrap();
        assert!(matches!(k, MaKernel::Ale(_)));
        let (_, k) = spec(KernelName::Kda, None, None)
            .mask_and_ma_kernel()
            .unwrap();
        assert!(matches!(k, MaKernel::Kda(_)));
    }

    #[test]
    fn per_study_sizes_share_tables() {
        let grid = unit_grid(4);
        let k = AleKernel::per_study(&[20.0, 30.0, 20.0], &grid, Rounding::Round).unwrap();
        assert_eq!(k.tables.len(), 2);
        assert_eq!(k.study_table, Some(vec![0, 1, 0]));
        assert!(k.check_studies(2).is_err());
        assert!(k.check_studies(3).is_ok());
        let bad = AleKernel {
            study_table: Some(vec![0, 2, 0]),
            ..k.clone()
        };
        assert!(bad.check_studies(3).is_err());
        let mut torn = k.clone();
        torn.tables[0].reach = [0; 3];
        assert!(torn.check_studies(3).is_err());
        assert!(AleKernel::per_study(&[20.0, -1.0], &grid, Rounding::Round).is_err());
    }
}
