//! The augmentations (`brain::augment`): generic tests over every registered augmentation with
//! its sample parameters (CPU–CUDA parity, on the emulated device where there is no GPU;
//! identical bytes for a seed; different epochs differ; output bounds), the distributions of
//! the random ones at fixed seeds over 10⁵ draws (Kolmogorov–Smirnov, χ², z at α = 0.001), and
//! hostile specs and inputs. A new augmentation is tested here by being registered.

mod common;

use common::{need_gpu, test_device};
use niclip::brain::augment::{self, study_key, AugmentSpec, Augmented, Kind, MAX_PEAKS, REGISTRY};
use niclip::brain::{Grid, Mask, Peaks};
use niclip::device::Device;
use niclip::rng::SplitMix64;

const SEED: u64 = 20261206;

/// 60 studies of 0 to 24 peaks in the MNI bounding box (study 7 has none).
fn sample_peaks() -> (Peaks, Vec<u64>) {
    let mut rng = SplitMix64(7);
    let mut peaks = Peaks::new();
    for s in 0..60 {
        let n = if s == 7 { 0 } else { rng.below(25) };
        let xyz: Vec<[f64; 3]> = (0..n)
            .map(|_| {
                let u = |lo: f64, hi: f64, r: &mut SplitMix64| lo + (hi - lo) * r.uniform();
                [
                    u(-70.0, 70.0, &mut rng),
                    u(-100.0, 70.0, &mut rng),
                    u(-50.0, 80.0, &mut rng),
                ]
            })
            .collect();
        peaks.push(format!("study-{s}"), xyz);
    }
    let keys = peaks.ids.iter().map(|id| study_key(id)).collect();
    (peaks, keys)
}

/// A small 2 mm grid (16 × 18 × 14) with an ellipsoid mask.
fn small_mask() -> Mask {
    let shape = [16, 18, 14];
    let affine = [
        [-2.0, 0.0, 0.0, 16.0],
        [0.0, 2.0, 0.0, -18.0],
        [0.0, 0.0, 2.0, -14.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    let grid = Grid::new(shape, affine);
    let values: Vec<f32> = (0..grid.n_voxels())
        .map(|v| {
            let [i, j, k] = grid.unflat(v);
            let d = |x: usize, n: usize| (x as f64 - (n as f64 - 1.0) / 2.0) / (n as f64 / 2.0);
            let r2 = d(i, 16).powi(2) + d(j, 18).powi(2) + d(k, 14).powi(2);
            (r2 < 0.8) as u8 as f32
        })
        .collect();
    Mask::from_values(grid, &values)
}

/// Three modeled maps on the small mask: a smooth bump plus noise in the mask, 0 off it.
fn sample_maps(mask: &Mask) -> (Vec<f32>, Vec<u64>) {
    let n = mask.grid.n_voxels();
    let mut rng = SplitMix64(11);
    let mut vols = vec![0.0f32; 3 * n];
    for (m, vol) in vols.chunks_mut(n).enumerate() {
        for &v in &mask.voxels {
            let [i, j, _] = mask.grid.unflat(v as usize);
            vol[v as usize] = ((i + j + m) as f64 * 0.1).sin() as f32 + rng.uniform() as f32;
        }
    }
    (vols, vec![study_key("a"), study_key("b"), study_key("c")])
}

fn peaks_of(dev: &Device, spec: &AugmentSpec, epoch: u64) -> Augmented {
    let (peaks, keys) = sample_peaks();
    dev.augment_peaks(spec, &peaks, &keys, &Mask::mni152_2mm(), SEED, epoch)
        .unwrap_or_else(|e| panic!("{spec} on {dev:?}: {e}"))
}

fn maps_of(dev: &Device, spec: &AugmentSpec, epoch: u64) -> Vec<f32> {
    let mask = small_mask();
    let (mut vols, keys) = sample_maps(&mask);
    dev.augment_maps(spec, &mut vols, &mask, &keys, SEED, epoch)
        .unwrap_or_else(|e| panic!("{spec} on {dev:?}: {e}"));
    vols
}

fn bytes(a: &Augmented) -> Vec<u8> {
    let mut out: Vec<u8> = a
        .peaks
        .xyz
        .iter()
        .flatten()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    out.extend(a.peaks.start.iter().flat_map(|s| s.to_le_bytes()));
    out.extend(a.radius.iter().flatten().flat_map(|x| x.to_le_bytes()));
    out
}

/// Every registered augmentation's sample spec, with whether it is map-level.
fn samples() -> Vec<(AugmentSpec, bool)> {
    REGISTRY
        .iter()
        .map(|e| {
            let spec = AugmentSpec::parse(e.sample).unwrap();
            let map = spec.has_map_level();
            (spec, map)
        })
        .collect()
}

/// Same seed and epoch → identical bytes; a random augmentation draws anew in another epoch.
fn deterministic_by_seed(dev: &Device) {
    for ((spec, map), entry) in samples().iter().zip(REGISTRY) {
        let (same, other) = if *map {
            let a = maps_of(dev, spec, 3);
            let b = maps_of(dev, spec, 3);
            let c = maps_of(dev, spec, 4);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            (bits(&a) == bits(&b), bits(&a) != bits(&c))
        } else {
            let a = bytes(&peaks_of(dev, spec, 3));
            (
                a == bytes(&peaks_of(dev, spec, 3)),
                a != bytes(&peaks_of(dev, spec, 4)),
            )
        };
        assert!(same, "{spec} on {dev:?}: two runs differ");
        assert_eq!(other, entry.random, "{spec} on {dev:?}: epochs 3 and 4");
    }
}

/// Peaks finite, counts as the kind says, radius in range, map values finite.
fn output_bounds(dev: &Device) {
    let (input, _) = sample_peaks();
    for (spec, map) in samples() {
        if map {
            let vols = maps_of(dev, &spec, 0);
            assert!(vols.iter().all(|x| x.is_finite()), "{spec} on {dev:?}");
            if spec.to_string().starts_with("binarize") {
                assert!(vols.iter().all(|&x| x == 0.0 || x == 1.0), "{spec}");
            }
            continue;
        }
        let out = peaks_of(dev, &spec, 0);
        let aug = &spec.items[0];
        assert_eq!(out.peaks.ids, input.ids);
        assert!(
            out.peaks.xyz.iter().flatten().all(|x| x.is_finite()),
            "{spec}"
        );
        for s in 0..input.len() {
            let (n_in, n_out) = (input.study(s).len(), out.peaks.study(s).len());
            match aug.kind() {
                Kind::KeepPeak => assert!(n_out <= n_in, "{spec}"),
                _ => assert_eq!(n_out, n_in + aug.added_per_study(), "{spec}"),
            }
        }
        if aug.kind() == Kind::StudyValue {
            let r = out.radius.expect("a radius per study");
            assert_eq!(r.len(), input.len());
            assert!(r.iter().all(|&x| (8.0..=12.0).contains(&x)), "{spec}");
        } else {
            assert!(out.radius.is_none());
        }
    }
}

test_device!(deterministic_by_seed, output_bounds);

/// The CUDA kernels against the CPU functions: peaks within 1e-9 mm (CUDA's log/cos may
/// differ in the last ulp), kept peaks and foci voxels identical, maps within 1e-6.
#[test]
fn every_augmentation_cuda_matches_cpu() {
    let Some(gpu) = need_gpu() else {
        return;
    };
    let cuda = Device::Cuda(gpu);
    let mut specs = samples();
    specs.push((
        AugmentSpec::parse("jitter:sigma=4,dropout:p=0.1,radius:8..12,foci:k=2").unwrap(),
        false,
    ));
    specs.push((
        AugmentSpec::parse("smooth:fwhm=6,noise:sd=0.1").unwrap(),
        true,
    ));
    for (spec, map) in specs {
        if map {
            let (c, g) = (maps_of(&Device::Cpu, &spec, 1), maps_of(&cuda, &spec, 1));
            let worst = c
                .iter()
                .zip(&g)
                .map(|(a, b)| (a - b).abs() / (1.0 + a.abs()))
                .fold(0.0, f32::max);
            assert!(worst <= 1e-6, "{spec}: maps differ by {worst}");
            continue;
        }
        let (c, g) = (peaks_of(&Device::Cpu, &spec, 1), peaks_of(&cuda, &spec, 1));
        assert_eq!(c.peaks.start, g.peaks.start, "{spec}: counts");
        let worst = c
            .peaks
            .xyz
            .iter()
            .flatten()
            .zip(g.peaks.xyz.iter().flatten())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(worst <= 1e-9, "{spec}: peaks differ by {worst} mm");
        match (&c.radius, &g.radius) {
            (Some(a), Some(b)) => assert!(
                a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-12),
                "{spec}"
            ),
            (None, None) => {}
            _ => panic!("{spec}: radius on one device only"),
        }
    }
}

/// A study's draws do not depend on its batch: augmenting a slice gives the same peaks.
#[test]
fn draws_do_not_depend_on_the_batch() {
    let spec = AugmentSpec::parse("jitter:sigma=3,dropout:p=0.2,foci:k=2,radius:5..9").unwrap();
    let (peaks, keys) = sample_peaks();
    let mask = Mask::mni152_2mm();
    let all = augment::augment_peaks_cpu(&spec, &peaks, &keys, &mask, SEED, 0).unwrap();
    let part =
        augment::augment_peaks_cpu(&spec, &peaks.slice(20..40), &keys[20..40], &mask, SEED, 0)
            .unwrap();
    for s in 0..20 {
        assert_eq!(part.peaks.study(s), all.peaks.study(20 + s));
        assert_eq!(
            part.radius.as_ref().unwrap()[s],
            all.radius.as_ref().unwrap()[20 + s]
        );
    }
}

// ---- distributions -----------------------------------------------------------------------------

/// Kolmogorov–Smirnov's critical D at α = 0.001 for n samples: √(−ln(α/2)/2) / √n.
fn ks_critical(n: usize) -> f64 {
    (-(0.001f64 / 2.0).ln() / 2.0).sqrt() / (n as f64).sqrt()
}

/// The one-sample KS statistic of `x` against the CDF `f`.
fn ks(mut x: Vec<f64>, f: impl Fn(f64) -> f64) -> f64 {
    x.sort_by(f64::total_cmp);
    let n = x.len() as f64;
    x.iter().enumerate().fold(0.0, |d, (i, &v)| {
        let c = f(v);
        d.max((i as f64 + 1.0) / n - c).max(c - i as f64 / n)
    })
}

/// Φ through erfc (Numerical Recipes' Chebyshev fit, |error| < 1.2e-7).
fn normal_cdf(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let p = [
        -1.26551223,
        1.00002368,
        0.37409196,
        0.09678418,
        -0.18628806,
        0.27886807,
        -1.13520398,
        1.48851587,
        -0.82215223,
        0.17087277,
    ];
    let poly = p.iter().rev().fold(0.0, |acc, c| acc * t + c);
    let erfc = t * (-z * z + poly).exp();
    if x >= 0.0 {
        1.0 - 0.5 * erfc
    } else {
        0.5 * erfc
    }
}

/// 1,000 studies of 100 peaks at the origin: 10⁵ peaks.
fn origin_peaks() -> (Peaks, Vec<u64>) {
    let mut peaks = Peaks::new();
    for s in 0..1000 {
        peaks.push(format!("s{s}"), vec![[0.0; 3]; 100]);
    }
    let keys = peaks.ids.iter().map(|id| study_key(id)).collect();
    (peaks, keys)
}

fn augment(spec: &str, peaks: &Peaks, keys: &[u64]) -> Augmented {
    let spec = AugmentSpec::parse(spec).unwrap();
    augment::augment_peaks_cpu(&spec, peaks, keys, &Mask::mni152_2mm(), SEED, 0).unwrap()
}

#[test]
fn jitter_is_normal_per_axis() {
    let (peaks, keys) = origin_peaks();
    let out = augment("jitter:sigma=4", &peaks, &keys);
    let crit = ks_critical(out.peaks.xyz.len());
    for a in 0..3 {
        let d = ks(
            out.peaks.xyz.iter().map(|p| p[a] / 4.0).collect(),
            normal_cdf,
        );
        println!("jitter axis {a}: KS D = {d:.5}, critical {crit:.5} (α = 0.001, n = 100000)");
        assert!(d < crit, "axis {a}: D = {d}");
    }
}

#[test]
fn dropout_keeps_a_binomial_count() {
    let (peaks, keys) = origin_peaks();
    let out = augment("dropout:p=0.3", &peaks, &keys);
    let n = peaks.xyz.len() as f64;
    let kept = out.peaks.xyz.len() as f64;
    let z = (kept - 0.7 * n) / (n * 0.7 * 0.3).sqrt();
    println!("dropout p=0.3: kept {kept} of {n}, z = {z:.3} (|z| < 3.29 at α = 0.001)");
    assert!(z.abs() < 3.29, "z = {z}");
}

#[test]
fn false_foci_are_uniform_over_mask_voxels() {
    let mut peaks = Peaks::new();
    for s in 0..1000 {
        peaks.push(format!("s{s}"), []);
    }
    let keys: Vec<u64> = peaks.ids.iter().map(|id| study_key(id)).collect();
    let out = augment("foci:k=100", &peaks, &keys);
    let mask = Mask::mni152_2mm();
    let inv = niclip::brain::grid::invert(&mask.grid.affine);
    let bins = 10usize;
    let mut count = vec![0usize; bins];
    for p in &out.peaks.xyz {
        let ijk = niclip::brain::grid::apply(&inv, *p).map(|x| x.round());
        let v = mask
            .grid
            .flat(ijk[0] as usize, ijk[1] as usize, ijk[2] as usize);
        let m = mask.index[v];
        assert!(m >= 0, "focus {p:?} is off the mask");
        assert_eq!(
            augment::mask_voxel_mm(&mask, m as usize),
            *p,
            "focus off a voxel centre"
        );
        count[m as usize * bins / mask.len()] += 1;
    }
    let n = out.peaks.xyz.len() as f64;
    let chi2: f64 = (0..bins)
        .map(|b| {
            // The bin's share of mask voxels (bins of equal index ranges, up to rounding).
            let lo = (b * mask.len()).div_ceil(bins);
            let hi = ((b + 1) * mask.len()).div_ceil(bins);
            let e = n * (hi - lo) as f64 / mask.len() as f64;
            (count[b] as f64 - e).powi(2) / e
        })
        .sum();
    println!("false foci: χ² = {chi2:.2} over {bins} bins of the mask-voxel index, n = {n} (critical 27.88, 9 df, α = 0.001)");
    assert_eq!(out.peaks.xyz.len(), 100_000);
    assert!(chi2 < 27.88, "χ² = {chi2}");
}

#[test]
fn radius_is_uniform() {
    let mut peaks = Peaks::new();
    for s in 0..100_000 {
        peaks.push(format!("s{s}"), []);
    }
    let keys: Vec<u64> = peaks.ids.iter().map(|id| study_key(id)).collect();
    let r = augment("radius:8..12", &peaks, &keys).radius.unwrap();
    let d = ks(r, |x| ((x - 8.0) / 4.0).clamp(0.0, 1.0));
    let crit = ks_critical(100_000);
    println!("radius 8..12: KS D = {d:.5}, critical {crit:.5} (α = 0.001, n = 100000)");
    assert!(d < crit, "D = {d}");
}

#[test]
fn noise_has_the_given_sd() {
    let mask = small_mask();
    let spec = AugmentSpec::parse("noise:sd=2").unwrap();
    let n = mask.grid.n_voxels();
    let keys: Vec<u64> = (0..60).map(|i| study_key(&i.to_string())).collect();
    let mut vols = vec![0.0f32; 60 * n];
    augment::augment_maps_cpu(&spec, &mut vols, &mask, &keys, SEED, 0).unwrap();
    let x: Vec<f64> = vols
        .chunks(n)
        .flat_map(|v| mask.voxels.iter().map(move |&i| v[i as usize] as f64 / 2.0))
        .collect();
    let (d, crit) = (ks(x.clone(), normal_cdf), ks_critical(x.len()));
    println!(
        "noise sd=2: KS D = {d:.5}, critical {crit:.5} (n = {})",
        x.len()
    );
    assert!(d < crit, "D = {d}");
}

#[test]
fn smoothing_keeps_a_constant_and_matches_scipy_weights() {
    // scipy.ndimage._filters._gaussian_kernel1d(1.0, 0, 4)[4] (scipy 1.x, normalised).
    let w = augment::smooth::gaussian_weights(1.0);
    assert_eq!(w.len(), 9);
    assert!((w[4] - 0.398_943_469_356_097_76).abs() < 1e-15, "{}", w[4]);
    let mask = small_mask();
    let mut vol = vec![3.0f32; mask.grid.n_voxels()];
    let spec = AugmentSpec::parse("smooth:fwhm=8").unwrap();
    augment::augment_map_cpu(&spec, &mut vol, &mask, 1, SEED, 0).unwrap();
    assert!(
        vol.iter().all(|&x| (x - 3.0).abs() < 1e-5),
        "reflect borders keep a constant"
    );
}

// ---- hostile input -----------------------------------------------------------------------------

#[test]
fn bad_specs_and_inputs_are_errors_not_panics() {
    for bad in [
        "jitter",
        "jitter:sigma=",
        "jitter:sigma=inf",
        "dropout:p=-0.1",
        "foci:k=-1",
        "foci:k=1e9",
        "radius:..",
        "radius:nan..3",
        "smooth:fwhm=1e300",
        "noise:sd=-1",
        "binarize:pct=x",
        ":",
        "jitter:sigma=1,,nope",
    ] {
        let e = AugmentSpec::parse(bad).expect_err(bad).to_string();
        assert!(e.contains("augmentation"), "{bad}: {e}");
    }
    let spec = AugmentSpec::parse("foci:k=1000").unwrap();
    assert!(spec.max_output_peaks(0, MAX_PEAKS / 1000 + 1).is_err());
    let (mut peaks, keys) = sample_peaks();
    let mask = Mask::mni152_2mm();
    // Not Device::available(): the test process must choose the (emulated) driver first.
    let devices = std::iter::once(Device::Cpu).chain(need_gpu().map(Device::Cuda));
    for dev in devices {
        assert!(dev
            .augment_peaks(&spec, &peaks, &keys[1..], &mask, 0, 0)
            .is_err());
    }
    peaks.xyz[3][1] = f64::NAN;
    let e = augment::augment_peaks_cpu(&spec, &peaks, &keys, &mask, 0, 0).unwrap_err();
    assert!(e.to_string().contains("study-"), "{e}");
    // A map with a NaN in the mask; a grid whose tiny voxels would need a huge filter.
    let small = small_mask();
    let mut vol = vec![0.0f32; small.grid.n_voxels()];
    vol[small.voxels[0] as usize] = f32::NAN;
    let noise = AugmentSpec::parse("noise:sd=1").unwrap();
    assert!(augment::augment_map_cpu(&noise, &mut vol, &small, 0, 0, 0).is_err());
    let mut grid = small.grid.clone();
    grid.affine[0][0] = 1e-12;
    let tiny = Mask::from_values(grid, &vec![1.0; small.grid.n_voxels()]);
    let mut vol = vec![0.0f32; small.grid.n_voxels()];
    let smooth = AugmentSpec::parse("smooth:fwhm=6").unwrap();
    let e = augment::augment_map_cpu(&smooth, &mut vol, &tiny, 0, 0, 0).unwrap_err();
    assert!(e.to_string().contains("smooth:fwhm=6"), "{e}");
}

/// Dropout keeps no minimum: a study whose every peak drops stays, with no peaks, and its image
/// features are all zero (an empty MKDA map), as for a NiMARE study without coordinates.
#[test]
fn a_study_that_drops_every_peak_has_zero_features() {
    use niclip::brain::features::image_features_cpu;
    use niclip::brain::kernels::MaKernel;
    use niclip::brain::mkda::{MkdaKernel, Rounding};
    use niclip::brain::{Atlas, Image};
    let mask = small_mask();
    let n = mask.grid.n_voxels();
    // Two smooth maps over the mask (a ramp in x and one in y).
    let mut data = vec![0.0f32; 2 * n];
    for &v in &mask.voxels {
        let [i, j, _] = mask.grid.unflat(v as usize);
        data[v as usize] = 1.0 + i as f32;
        data[n + v as usize] = 1.0 + j as f32;
    }
    let atlas = Atlas::from_maps(
        &Image::new(mask.grid.clone(), 2, data),
        std::path::Path::new("<ramps>"),
    )
    .unwrap();
    let mut peaks = Peaks::new();
    peaks.push("one", [[0.0, 0.0, 0.0]]);
    peaks.push("many", vec![[2.0, -4.0, 0.0]; 50]);
    let keys: Vec<u64> = peaks.ids.iter().map(|id| study_key(id)).collect();
    // The seed is one at which study "one"'s peak drops at p = 0.5 (checked below).
    let spec = AugmentSpec::parse("dropout:p=0.5").unwrap();
    let seed = (0..64)
        .find(|&s| {
            augment::augment_peaks_cpu(&spec, &peaks, &keys, &mask, s, 0)
                .unwrap()
                .peaks
                .study(0)
                .is_empty()
        })
        .expect("a seed that drops study one's peak");
    let out = augment::augment_peaks_cpu(&spec, &peaks, &keys, &mask, seed, 0).unwrap();
    assert_eq!(out.peaks.ids, peaks.ids);
    assert!(out.peaks.study(0).is_empty() && !out.peaks.study(1).is_empty());
    let kernel = MaKernel::Mkda(MkdaKernel::for_grid(&mask.grid, 6.0, Rounding::Round));
    let f = image_features_cpu(&kernel, &mask, &atlas, &out.peaks).unwrap();
    assert_eq!(&f[..2], &[0.0, 0.0], "no peaks, no features");
    assert!(f[2..].iter().any(|&x| x != 0.0));
}

/// Random strings over the spec alphabet, and tables with broken offsets: errors, never panics.
#[test]
fn random_specs_and_broken_tables_never_panic() {
    let alphabet: Vec<char> = "jitersmodpkfcbnuhwlaz:=,.-+eE0123456789 \u{e9}"
        .chars()
        .collect();
    let names: Vec<&str> = REGISTRY.iter().map(|e| e.sample).collect();
    let mut rng = SplitMix64(99);
    for _ in 0..20_000 {
        let mut s = String::new();
        if rng.below(2) == 0 {
            s.push_str(names[rng.below(names.len())]);
        }
        for _ in 0..rng.below(24) {
            s.push(alphabet[rng.below(alphabet.len())]);
        }
        if let Ok(spec) = AugmentSpec::parse(&s) {
            // A spec that parses prints back to one that parses to the same string.
            let again = AugmentSpec::parse(&spec.to_string()).unwrap();
            assert_eq!(again.to_string(), spec.to_string(), "{s}");
        }
    }
    let spec = AugmentSpec::parse("jitter:sigma=1,dropout:p=0.5,foci:k=2").unwrap();
    let mask = Mask::mni152_2mm();
    let (peaks, keys) = sample_peaks();
    for broken in 0..4 {
        let mut p = peaks.clone();
        match broken {
            0 => p.start[5] = usize::MAX,
            1 => p.start.pop().map(|_| ()).unwrap_or(()),
            2 => p.start[0] = 1,
            _ => {
                p.xyz.pop();
            }
        }
        assert!(augment::augment_peaks_cpu(&spec, &p, &keys, &mask, 0, 0).is_err());
    }
}
