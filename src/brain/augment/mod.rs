//! Training-time augmentation of studies: peak-level items (jitter, dropout, false foci, the MKDA
//! radius) applied to a [`Peaks`] table, and map-level items (smoothing, noise, thresholding,
//! binarizing) applied to a dense modeled map before projection. Each augmentation is one file
//! here (its parameters and per-element CPU function), one kernel in `kernels/augment.cu` and one
//! line in [`REGISTRY`]; the generic drivers below (CPU) and in [`cuda`] (CUDA) run every one of
//! them by its [`Kind`]. See docs/augmentation.md.
//!
//! Determinism: every draw is a pure function of (seed, epoch, item, study key, element, draw)
//! through [`Draws`], a counter-based generator over [`rng::mix64`] with no sequential state, so
//! the CPU and the CUDA kernels draw the same numbers and a study draws the same whatever batch
//! it lands in. The item is the position of the augmentation in the spec.

pub mod binarize;
pub mod cuda;
pub mod dropout;
pub mod foci;
pub mod jitter;
pub mod noise;
pub mod radius;
pub mod smooth;
pub mod threshold;

use super::{Grid, Mask, Peaks};
use crate::error::{Error, Result};
use crate::rng::{mix64, GOLDEN};
use std::fmt;

/// Most peaks an augmented batch may hold (the CUDA kernels index peaks with 32 bits; the bound
/// is checked before anything is allocated).
pub const MAX_PEAKS: usize = (1 << 31) - (1 << 16);

/// A study's key: FNV-1a of its id, mixed. Draws depend on the key, not on the batch position.
pub fn study_key(id: &str) -> u64 {
    let h = id.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    });
    mix64(h)
}

/// The counter-based draws of one element (a peak, a new focus, a study, a mask voxel):
/// `Draws::new(seed, epoch, item, key, element).u64(d)` is a pure function of its six numbers.
/// `augment_draws`/`aug_*` in kernels/augment.cu are the same code.
#[derive(Clone, Copy, Debug)]
pub struct Draws(u64);

/// One step of the chain: a bijection of `h` for a fixed `x`, so two inputs that differ in any
/// one counter never meet.
#[inline(always)]
fn step(h: u64, x: u64) -> u64 {
    mix64((h ^ x).wrapping_add(GOLDEN))
}

impl Draws {
    #[inline]
    pub fn new(seed: u64, epoch: u64, item: u64, key: u64, element: u64) -> Draws {
        let h = mix64(seed.wrapping_add(GOLDEN));
        Draws(step(step(step(step(h, epoch), item), key), element))
    }

    /// Draw `d` of the element: 64 random bits.
    #[inline]
    pub fn u64(self, d: u64) -> u64 {
        step(self.0, d)
    }

    /// Uniform in [0, 1) with 53 bits (as `rng::SplitMix64::uniform`).
    #[inline]
    pub fn uniform(self, d: u64) -> f64 {
        (self.u64(d) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in [0, n), n ≤ 2³² (Lemire's multiply-shift on the high 32 bits).
    #[inline]
    pub fn below(self, d: u64, n: u64) -> u64 {
        ((self.u64(d) >> 32) * n) >> 32
    }

    /// Standard normal from draws 2d and 2d+1 (Box–Muller in f64; u₁ in (0, 1] so ln u₁ is
    /// finite).
    #[inline]
    pub fn normal(self, d: u64) -> f64 {
        let u1 = ((self.u64(2 * d) >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64);
        let u2 = self.uniform(2 * d + 1);
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// How the generic drivers run an augmentation (and which buffers its kernel gets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Moves every peak ([`Augmentation::move_peak`]); one thread per peak.
    MovePeak,
    /// Keeps or drops every peak ([`Augmentation::keep_peak`]); one thread per peak, the kept
    /// peaks compacted on the host.
    KeepPeak,
    /// Appends [`Augmentation::added_per_study`] peaks to every study
    /// ([`Augmentation::added_peak`]); one thread per new peak.
    AddPeaks,
    /// Draws one number per study ([`Augmentation::study_value`], the MKDA radius); one thread
    /// per study.
    StudyValue,
    /// Changes every in-mask value of a map ([`Augmentation::map_value`]), given a per-map
    /// scalar computed on the host ([`Augmentation::map_scalar`]); one thread per voxel.
    MapValue,
    /// Convolves the whole volume with one 1-D filter per axis ([`Augmentation::weights`]);
    /// three passes of one thread per voxel.
    Separable,
}

impl Kind {
    pub fn is_map_level(self) -> bool {
        matches!(self, Kind::MapValue | Kind::Separable)
    }
}

/// One augmentation with its parameters. Only the methods of its [`Kind`] are called; the
/// others keep their identity defaults.
pub trait Augmentation: Send + Sync + fmt::Debug {
    /// Its spec item, canonical (`jitter:sigma=4`).
    fn spec(&self) -> String;
    fn kind(&self) -> Kind;
    /// Its `extern "C" __global__` entry in kernels/augment.cu.
    fn kernel(&self) -> &'static str;
    /// The two parameters its kernel reads (`AugParams.a`, `.b`).
    fn kernel_params(&self) -> [f64; 2];

    fn move_peak(&self, _draws: Draws, xyz: [f64; 3]) -> [f64; 3] {
        xyz
    }
    fn keep_peak(&self, _draws: Draws) -> bool {
        true
    }
    fn added_per_study(&self) -> usize {
        0
    }
    fn added_peak(&self, _draws: Draws, _mask: &Mask) -> [f64; 3] {
        [0.0; 3]
    }
    fn study_value(&self, _draws: Draws) -> f64 {
        0.0
    }
    /// Whether [`Augmentation::map_scalar`] is needed (the CUDA path then reads the maps back).
    fn needs_scalar(&self) -> bool {
        false
    }
    /// A per-map number computed on the host from the in-mask values (a percentile).
    fn map_scalar(&self, _in_mask: &mut [f32]) -> f64 {
        0.0
    }
    fn map_value(&self, _draws: Draws, x: f32, _scalar: f64) -> f32 {
        x
    }
    /// The filter of each axis (odd lengths, centred).
    fn weights(&self, _grid: &Grid) -> [Vec<f64>; 3] {
        [vec![1.0], vec![1.0], vec![1.0]]
    }
}

/// A parser of one item's parameters (the text after `name:`); its error says what is wrong.
type ParseFn = fn(&str) -> std::result::Result<Box<dyn Augmentation>, String>;

/// A registered augmentation: its spec name, its parameters as help, a sample spec item (the
/// generic tests run every entry with it) and its parser.
pub struct Entry {
    pub name: &'static str,
    pub params: &'static str,
    pub sample: &'static str,
    /// Whether it draws (its output changes with the seed and epoch).
    pub random: bool,
    pub parse: ParseFn,
}

/// Every augmentation; adding one is one line here (and its file and kernel).
pub const REGISTRY: &[Entry] = &[
    jitter::ENTRY,
    dropout::ENTRY,
    foci::ENTRY,
    radius::ENTRY,
    smooth::ENTRY,
    noise::ENTRY,
    threshold::ENTRY,
    binarize::ENTRY,
];

/// The registry as help: `name:params` per line.
pub fn registry_help() -> String {
    REGISTRY
        .iter()
        .map(|e| format!("  {}:{}", e.name, e.params))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `name=value` with a finite value, the one parameter of most items.
pub fn named_param(args: &str, name: &str) -> std::result::Result<f64, String> {
    let value = args
        .strip_prefix(name)
        .and_then(|r| r.strip_prefix('='))
        .ok_or_else(|| format!("expected {name}=<number>, got '{args}'"))?;
    let x: f64 = value
        .trim()
        .parse()
        .map_err(|_| format!("{name}='{value}' is not a number"))?;
    if x.is_finite() {
        Ok(x)
    } else {
        Err(format!("{name} must be finite, got {value}"))
    }
}

/// A parsed augmentation spec: items in the order they apply.
#[derive(Debug, Default)]
pub struct AugmentSpec {
    pub items: Vec<Box<dyn Augmentation>>,
}

impl AugmentSpec {
    /// `jitter:sigma=4,dropout:p=0.1,radius:8..12,foci:k=2,smooth:fwhm=6`; the empty string is
    /// the empty spec. An error names the item and lists the registered augmentations.
    pub fn parse(s: &str) -> Result<Self> {
        let mut items: Vec<Box<dyn Augmentation>> = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (name, args) = item.split_once(':').unwrap_or((item, ""));
            let entry = REGISTRY.iter().find(|e| e.name == name.trim());
            let parsed = match entry {
                Some(e) => (e.parse)(args.trim()),
                None => Err(format!("unknown augmentation '{}'", name.trim())),
            };
            items.push(parsed.map_err(|why| {
                Error::Usage(format!(
                    "augmentation item '{item}': {why}; the augmentations are:\n{}",
                    registry_help()
                ))
            })?);
        }
        if items
            .iter()
            .filter(|a| a.kind() == Kind::StudyValue)
            .count()
            > 1
        {
            return Err(Error::Usage(format!(
                "augmentation spec '{s}' draws the radius twice; give one radius item"
            )));
        }
        Ok(AugmentSpec { items })
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn has_map_level(&self) -> bool {
        self.items.iter().any(|a| a.kind().is_map_level())
    }

    /// The peak-level items with their item numbers (positions in the spec).
    pub fn peak_items(&self) -> impl Iterator<Item = (u64, &dyn Augmentation)> {
        self.numbered().filter(|(_, a)| !a.kind().is_map_level())
    }

    /// The map-level items with their item numbers.
    pub fn map_items(&self) -> impl Iterator<Item = (u64, &dyn Augmentation)> {
        self.numbered().filter(|(_, a)| a.kind().is_map_level())
    }

    fn numbered(&self) -> impl Iterator<Item = (u64, &dyn Augmentation)> {
        self.items
            .iter()
            .enumerate()
            .map(|(i, a)| (i as u64, a.as_ref()))
    }

    /// Peaks in the output of a batch of `n_studies` holding `n_peaks`: at most that many after
    /// dropout, plus every added focus; an error beyond [`MAX_PEAKS`].
    pub fn max_output_peaks(&self, n_peaks: usize, n_studies: usize) -> Result<usize> {
        let added = self.peak_items().try_fold(0usize, |acc, (_, a)| {
            acc.checked_add(a.added_per_study().checked_mul(n_studies)?)
        });
        match added.and_then(|a| a.checked_add(n_peaks)) {
            Some(total) if total <= MAX_PEAKS => Ok(total),
            _ => Err(Error::Usage(format!(
                "augmentation '{self}' on {n_studies} studies of {n_peaks} peaks would make more than {MAX_PEAKS} peaks; augment smaller batches"
            ))),
        }
    }
}

impl fmt::Display for AugmentSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self.items.iter().map(|a| a.spec()).collect();
        f.write_str(&items.join(","))
    }
}

/// Augmented peaks, and the per-study MKDA radius (mm) when the spec draws one.
#[derive(Clone, Debug)]
pub struct Augmented {
    pub peaks: Peaks,
    pub radius: Option<Vec<f64>>,
}

/// Checks the table's layout, one key per study and finite coordinates (a bad peak names its
/// study).
pub fn check_peaks(peaks: &Peaks, keys: &[u64]) -> Result<()> {
    let n = peaks.len();
    if peaks.start.len() != n + 1
        || peaks.start[0] != 0
        || peaks.start[n] != peaks.xyz.len()
        || peaks.start.windows(2).any(|w| w[0] > w[1])
    {
        return Err(Error::Usage(format!(
            "the peaks table is malformed: {n} studies, {} offsets, {} peaks",
            peaks.start.len(),
            peaks.xyz.len()
        )));
    }
    if keys.len() != n {
        return Err(Error::Usage(format!(
            "augmentation got {} study keys for {n} studies",
            keys.len()
        )));
    }
    for s in 0..n {
        if peaks.study(s).iter().flatten().any(|x| !x.is_finite()) {
            return Err(Error::Usage(format!(
                "study {} has a non-finite peak coordinate; augmentation needs finite peaks",
                peaks.ids[s]
            )));
        }
    }
    Ok(())
}

/// Applies the spec's peak-level items, in its order, on the CPU.
pub fn augment_peaks_cpu(
    spec: &AugmentSpec,
    peaks: &Peaks,
    keys: &[u64],
    mask: &Mask,
    seed: u64,
    epoch: u64,
) -> Result<Augmented> {
    check_peaks(peaks, keys)?;
    spec.max_output_peaks(peaks.xyz.len(), peaks.len())?;
    check_mask(spec, mask)?;
    let mut out = peaks.clone();
    let mut radius = None;
    for (item, aug) in spec.peak_items() {
        let draws = |key: u64, e: usize| Draws::new(seed, epoch, item, key, e as u64);
        match aug.kind() {
            Kind::MovePeak => {
                for (s, &key) in keys.iter().enumerate() {
                    let (a, b) = (out.start[s], out.start[s + 1]);
                    for (j, p) in out.xyz[a..b].iter_mut().enumerate() {
                        *p = aug.move_peak(draws(key, j), *p);
                    }
                }
            }
            Kind::KeepPeak => {
                let keep: Vec<bool> = per_peak(&out, keys, |key, j| aug.keep_peak(draws(key, j)));
                out = compact(&out, &keep);
            }
            Kind::AddPeaks => {
                let k = aug.added_per_study();
                out = with_added(&out, k, |s, j| aug.added_peak(draws(keys[s], j), mask));
            }
            Kind::StudyValue => {
                let r = keys
                    .iter()
                    .map(|&key| aug.study_value(draws(key, 0)))
                    .collect();
                radius = Some(r);
            }
            Kind::MapValue | Kind::Separable => {}
        }
    }
    Ok(Augmented { peaks: out, radius })
}

/// False foci need voxels to draw from.
fn check_mask(spec: &AugmentSpec, mask: &Mask) -> Result<()> {
    let adds = spec.peak_items().any(|(_, a)| a.added_per_study() > 0);
    if adds && (mask.is_empty() || mask.len() > u32::MAX as usize) {
        return Err(Error::Usage(format!(
            "augmentation '{spec}' draws foci in the mask, which has {} voxels",
            mask.len()
        )));
    }
    Ok(())
}

/// `f(study key, peak index in its study)` for every peak, in table order.
pub fn per_peak<T>(peaks: &Peaks, keys: &[u64], f: impl Fn(u64, usize) -> T) -> Vec<T> {
    (0..peaks.len())
        .flat_map(|s| (0..peaks.study(s).len()).map(move |j| (s, j)))
        .map(|(s, j)| f(keys[s], j))
        .collect()
}

/// The peaks whose flag is set; a study whose every peak drops stays, with no peaks.
pub fn compact(peaks: &Peaks, keep: &[bool]) -> Peaks {
    let mut out = Peaks::new();
    for s in 0..peaks.len() {
        let kept = (peaks.start[s]..peaks.start[s + 1]).filter(|&i| keep[i]);
        out.push(peaks.ids[s].clone(), kept.map(|i| peaks.xyz[i]));
    }
    out
}

/// Every study with `k` peaks `new(study, j)` appended after its own.
pub fn with_added(peaks: &Peaks, k: usize, new: impl Fn(usize, usize) -> [f64; 3]) -> Peaks {
    let mut out = Peaks {
        ids: Vec::with_capacity(peaks.len()),
        start: Vec::with_capacity(peaks.len() + 1),
        xyz: Vec::with_capacity(peaks.xyz.len() + k * peaks.len()),
    };
    out.start.push(0);
    for s in 0..peaks.len() {
        let added = (0..k).map(|j| new(s, j));
        out.push(
            peaks.ids[s].clone(),
            peaks.study(s).iter().copied().chain(added),
        );
    }
    out
}

/// The centre of mask voxel `m` (its position in `mask.voxels`) in mm.
pub fn mask_voxel_mm(mask: &Mask, m: usize) -> [f64; 3] {
    let [i, j, k] = mask.grid.unflat(mask.voxels[m] as usize);
    voxel_mm(&mask.grid, [i as f64, j as f64, k as f64])
}

/// The affine applied in the order the kernel applies it (x·a0 + y·a1 + z·a2 + a3, left to
/// right), so both devices round alike.
pub fn voxel_mm(grid: &Grid, ijk: [f64; 3]) -> [f64; 3] {
    let a = &grid.affine;
    std::array::from_fn(|r| a[r][0] * ijk[0] + a[r][1] * ijk[1] + a[r][2] * ijk[2] + a[r][3])
}

/// Applies the spec's map-level items, in its order, to one dense volume on `mask.grid` (values
/// at the mask voxels; `key` is the map's study key) on the CPU.
pub fn augment_map_cpu(
    spec: &AugmentSpec,
    vol: &mut [f32],
    mask: &Mask,
    key: u64,
    seed: u64,
    epoch: u64,
) -> Result<()> {
    check_map(vol, mask)?;
    for (item, aug) in spec.map_items() {
        match aug.kind() {
            Kind::MapValue => {
                let scalar = if aug.needs_scalar() {
                    aug.map_scalar(&mut in_mask(vol, mask))
                } else {
                    0.0
                };
                for (m, &v) in mask.voxels.iter().enumerate() {
                    let d = Draws::new(seed, epoch, item, key, m as u64);
                    vol[v as usize] = aug.map_value(d, vol[v as usize], scalar);
                }
            }
            Kind::Separable => {
                smooth::convolve_cpu(vol, &mask.grid.shape, &filters(aug, &mask.grid)?)
            }
            _ => {}
        }
    }
    Ok(())
}

/// [`augment_map_cpu`] on `keys.len()` volumes one after the other in `vols`, in parallel.
pub fn augment_maps_cpu(
    spec: &AugmentSpec,
    vols: &mut [f32],
    mask: &Mask,
    keys: &[u64],
    seed: u64,
    epoch: u64,
) -> Result<()> {
    use rayon::prelude::*;
    let n_vox = mask.grid.n_voxels();
    if keys.len().checked_mul(n_vox) != Some(vols.len()) || n_vox == 0 {
        return Err(Error::Usage(format!(
            "map augmentation got {} values for {} maps of {n_vox} voxels",
            vols.len(),
            keys.len()
        )));
    }
    vols.par_chunks_mut(n_vox)
        .zip(keys.par_iter())
        .try_for_each(|(vol, &key)| augment_map_cpu(spec, vol, mask, key, seed, epoch))
}

/// Longest 1-D filter a separable item may use (bounds the work on a grid of tiny voxels).
pub const MAX_TAPS: usize = 1025;

/// An item's per-axis filters, checked: odd lengths of at most [`MAX_TAPS`], finite weights.
pub fn filters(aug: &dyn Augmentation, grid: &Grid) -> Result<[Vec<f64>; 3]> {
    let w = aug.weights(grid);
    let bad = |f: &Vec<f64>| {
        f.len().is_multiple_of(2) || f.len() > MAX_TAPS || f.iter().any(|x| !x.is_finite())
    };
    if w.iter().any(bad) {
        return Err(Error::Usage(format!(
            "augmentation item '{}' needs a filter longer than {MAX_TAPS} voxels on a grid of voxel sizes {:?} mm; use a smaller width",
            aug.spec(),
            grid.voxel_size()
        )));
    }
    Ok(w)
}

/// A volume on the mask's grid with finite in-mask values (a percentile of NaNs means nothing).
pub fn check_map(vol: &[f32], mask: &Mask) -> Result<()> {
    let n = mask.grid.n_voxels();
    if vol.len() != n || mask.index.len() != n || mask.voxels.iter().any(|&v| v as usize >= n) {
        return Err(Error::Usage(format!(
            "map augmentation got a volume of {} values for a mask grid of {n} voxels",
            vol.len()
        )));
    }
    if mask.voxels.iter().any(|&v| !vol[v as usize].is_finite()) {
        return Err(Error::Usage(
            "map augmentation got a map with non-finite values in the mask".into(),
        ));
    }
    Ok(())
}

/// The in-mask values of a volume, in mask order.
pub fn in_mask(vol: &[f32], mask: &Mask) -> Vec<f32> {
    mask.voxels.iter().map(|&v| vol[v as usize]).collect()
}

/// numpy's default (linear) percentile `q` ∈ [0, 100] of the values (reordered in place).
pub fn percentile(values: &mut [f32], q: f64) -> f64 {
    let n = values.len();
    if n == 0 {
        return 0.0;
    }
    let h = (n - 1) as f64 * q / 100.0;
    let lo = (h.floor() as usize).min(n - 1);
    let (_, &mut a, rest) = values.select_nth_unstable_by(lo, f32::total_cmp);
    let b = rest.iter().copied().fold(f32::INFINITY, f32::min);
    let (a, b) = (a as f64, if rest.is_empty() { a as f64 } else { b as f64 });
    a + (h - lo as f64) * (b - a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_and_errors_name_the_item() {
        let s = "jitter:sigma=4,dropout:p=0.1,radius:8..12,foci:k=2,smooth:fwhm=6";
        let spec = AugmentSpec::parse(s).unwrap();
        assert_eq!(spec.to_string(), s);
        assert!(spec.has_map_level() && !spec.is_empty());
        assert!(AugmentSpec::parse("").unwrap().is_empty());
        for bad in [
            "jitter:sigma=-1",
            "dropout:p=1",
            "foci:k=1001",
            "radius:12..8",
            "radius:0..3",
            "blur:fwhm=3",
            "jitter:sigma=nan",
            "threshold:pct=101",
            "radius:1..2,radius:3..4",
        ] {
            let e = AugmentSpec::parse(bad).unwrap_err().to_string();
            let head = bad.split(',').next().unwrap();
            assert!(e.contains(head) || e.contains("twice"), "{bad}: {e}");
        }
        let e = AugmentSpec::parse("blur:fwhm=3").unwrap_err().to_string();
        assert!(REGISTRY.iter().all(|r| e.contains(r.name)), "{e}");
    }

    #[test]
    fn percentile_is_numpys() {
        let mut v = vec![4.0f32, 1.0, 3.0, 2.0];
        // numpy.percentile([1, 2, 3, 4], 30) = 1.9
        assert!((percentile(&mut v, 30.0) - 1.9).abs() < 1e-12);
        assert_eq!(percentile(&mut v, 100.0), 4.0);
        assert_eq!(percentile(&mut v, 0.0), 1.0);
    }

    #[test]
    fn draws_depend_on_every_counter() {
        let d = Draws::new(1, 2, 3, 4, 5).u64(6);
        assert_ne!(d, Draws::new(1, 3, 3, 4, 5).u64(6));
        assert_ne!(d, Draws::new(1, 2, 3, 4, 6).u64(6));
        assert_ne!(d, Draws::new(2, 2, 3, 4, 5).u64(6));
        assert_eq!(d, Draws::new(1, 2, 3, 4, 5).u64(6));
        assert_ne!(study_key("a"), study_key("b"));
    }
}
