//! Parity of the brain-space pipeline with the real references (NiMARE 0.22.1, nilearn 0.13),
//! whose outputs tests/fixtures/make_brain_fixtures.py committed under tests/fixtures/brain.

mod common;

use common::*;
use niclip::brain::resample::{resample, Interp};
use niclip::brain::{Atlas, Image, Mask};
use niclip::io::{read_npy_f32, read_npy_raw};
use std::path::Path;

fn brain_fixtures() -> std::path::PathBuf {
    fixtures().join("brain")
}

fn read_f64(path: &Path) -> (Vec<f64>, usize, usize) {
    let raw = read_npy_raw(path).unwrap();
    assert_eq!(raw.descr, "<f8", "{}", path.display());
    let data: Vec<f64> = raw
        .bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (data, raw.shape[0], raw.shape[1])
}

/// Active flags per study over the mask's voxels (Fortran order), from NiMARE's packed bits.
fn reference_bits(path: &Path, n_mask: usize) -> Vec<Vec<bool>> {
    let raw = read_npy_raw(path).unwrap();
    let (rows, cols) = (raw.shape[0], raw.shape[1]);
    assert_eq!(cols, n_mask.div_ceil(8));
    (0..rows)
        .map(|r| {
            (0..n_mask)
                .map(|m| raw.bytes[r * cols + m / 8] >> (7 - m % 8) & 1 == 1)
                .collect()
        })
        .collect()
}

/// Runs `niclip ma-map` on `ids` (in batches) and compares each volume with NiMARE voxel for voxel.
fn check_ma_maps(ids: &[String], mask_path: Option<&Path>, reference: &[Vec<bool>]) -> usize {
    let data = shared_data().unwrap();
    let corpus = neurosynth_corpus(&data);
    let mask = match mask_path {
        Some(p) => Mask::read(p).unwrap(),
        None => Mask::mni152_2mm(),
    };
    // One folder per caller: the two MKDA tests run at once and write the same file names.
    let dir = tmpdir(if mask_path.is_some() {
        "ma-map-mask"
    } else {
        "ma-map"
    });
    let mut differing = 0;
    for (b, batch) in ids.chunks(100).enumerate() {
        let out = dir.join(format!("ma-{b}.nii"));
        let mut args = vec![
            "ma-map",
            "--corpus",
            corpus.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        if let Some(p) = mask_path {
            args.extend(["--mask", p.to_str().unwrap()]);
        }
        for id in batch {
            args.extend(["--study", id.as_str()]);
        }
        niclip(&args);
        let img = Image::read(&out).unwrap();
        assert_eq!(img.n_vols, batch.len());
        assert!(img.grid.same_as(&mask.grid));
        for (s, vol) in img.volumes().enumerate() {
            let want = &reference[b * 100 + s];
            let got: Vec<bool> = mask
                .voxels
                .iter()
                .map(|&v| vol[v as usize] == 1.0)
                .collect();
            let outside = (0..vol.len())
                .filter(|&v| mask.index[v] < 0 && vol[v] != 0.0)
                .count();
            let d = got.iter().zip(want).filter(|(a, b)| a != b).count() + outside;
            if d > 0 {
                eprintln!("study {}: {d} voxels differ", batch[s]);
            }
            differing += d;
        }
        std::fs::remove_file(&out).ok();
    }
    differing
}

#[test]
fn ma_maps_equal_nimare_on_300_neurosynth_studies() {
    if need_data().is_none() {
        return;
    }
    let ids: Vec<String> = std::fs::read_to_string(brain_fixtures().join("mkda_ids.txt"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(ids.len(), 300);
    let mask = Mask::mni152_2mm();
    assert_eq!(mask.len(), 228_483);
    let reference = reference_bits(&brain_fixtures().join("mkda_ref_bits.npy.gz"), mask.len());
    let active: usize = reference
        .iter()
        .map(|r| r.iter().filter(|&&x| x).count())
        .sum();
    assert!(active > 300 * 1000, "reference maps look empty");
    let differing = check_ma_maps(&ids, None, &reference);
    eprintln!(
        "MKDA parity: 300 studies, {active} active voxels in NiMARE's maps, {differing} differing"
    );
    assert_eq!(differing, 0);
}

#[test]
fn ma_maps_equal_nimare_on_the_x_flipped_fsl_mask() {
    let Some(data) = need_data() else {
        return;
    };
    let Some(bits) = need_file(brain_fixtures().join("mkda_fsl_ref_bits.npy.gz")) else {
        return;
    };
    let mask_path = data.join("mni/MNI152_2x2x2_brainmask.nii.gz");
    let mask = Mask::read(&mask_path).unwrap();
    assert!(
        mask.grid.affine[0][0] < 0.0,
        "the FSL mask has an x step of −2"
    );
    let ids: Vec<String> = std::fs::read_to_string(brain_fixtures().join("mkda_ids.txt"))
        .unwrap()
        .lines()
        .take(20)
        .map(String::from)
        .collect();
    let reference = reference_bits(&bits, mask.len());
    assert_eq!(check_ma_maps(&ids, Some(&mask_path), &reference), 0);
}

/// `niclip project` of the 20 fixture maps against nilearn's NiftiMapsMasker.
fn check_projection(atlas_file: &str, labels: bool, reference: &str) -> f64 {
    let fx = brain_fixtures();
    let out = tmpdir("project").join(format!("{reference}.npy"));
    let atlas = fx.join(atlas_file);
    let maps = fx.join("proj_maps_2mm.nii.gz");
    let mut args = vec![
        "project",
        "--atlas",
        atlas.to_str().unwrap(),
        maps.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    if labels {
        args.push("--labels");
    }
    niclip(&args);
    let got = read_npy_f32(&out).unwrap();
    let (want, rows, cols) = read_f64(&fx.join(reference));
    assert_eq!((got.rows, got.cols), (rows, cols), "{reference}");
    let err = max_row_relative_error(&got.data, &want, cols);
    eprintln!("projection parity {atlas_file}: {rows} maps × {cols}, max relative error {err:.2e}");
    err
}

#[test]
fn projection_equals_nilearn_on_continuous_atlases() {
    for (atlas, reference) in [
        ("atlas_thalamus_2mm.nii.gz", "proj_ref_thalamus.npy"),
        ("atlas_suit_2mm.nii.gz", "proj_ref_suit.npy"),
        ("atlas_gauss512_2mm.nii.gz", "proj_ref_gauss512.npy"),
    ] {
        assert!(check_projection(atlas, false, reference) < 1e-5, "{atlas}");
    }
}

#[test]
fn projection_equals_nilearn_on_the_aal3_label_atlas() {
    assert!(check_projection("atlas_aal3_2mm.nii.gz", true, "proj_ref_aal3.npy") < 1e-5);
    let atlas = Atlas::read(&brain_fixtures().join("atlas_aal3_2mm.nii.gz"), true).unwrap();
    let want: Vec<i64> = std::fs::read_to_string(brain_fixtures().join("proj_aal3_labels.txt"))
        .unwrap()
        .lines()
        .map(|l| l.trim().parse::<f64>().unwrap() as i64)
        .collect();
    assert_eq!(atlas.labels.unwrap(), want);
}

#[test]
fn resampling_equals_nilearn_in_both_orientations() {
    let Some(data) = need_data() else {
        return;
    };
    let motor =
        Image::read(&data.join("maps/neurovault_10426_motor_left-vs-right_zmap.nii.gz")).unwrap();
    for (mask_path, reference) in [
        (
            data.join("mni/tpl-MNI152NLin6Asym_res-02_desc-brain_mask.nii.gz"),
            "resample_motor_2mm.nii.gz",
        ),
        (
            data.join("mni/MNI152_2x2x2_brainmask.nii.gz"),
            "resample_motor_2mm_fsl.nii.gz",
        ),
    ] {
        let mask = Mask::read(&mask_path).unwrap();
        let want = Image::read(&brain_fixtures().join(reference)).unwrap();
        assert!(want.grid.same_as(&mask.grid));
        let got = resample(&motor, &mask.grid, Interp::Linear);
        let scale = mask
            .voxels
            .iter()
            .map(|&v| want.data[v as usize].abs())
            .fold(0.0f32, f32::max) as f64;
        let err = mask
            .voxels
            .iter()
            .map(|&v| (got.data[v as usize] as f64 - want.data[v as usize] as f64).abs())
            .fold(0.0, f64::max)
            / scale;
        eprintln!("resampling parity {reference}: max relative error inside the mask {err:.2e}");
        assert!(err < 1e-5, "{reference}: {err}");
    }
}

/// `niclip images` on all of Neurosynth with the 512-map atlas equals, row by row, the projection
/// of each study's MA map: every row through the library, and 40 through `ma-map` + `project`.
#[test]
fn images_equal_projection_of_ma_maps_on_all_neurosynth() {
    use niclip::brain::mkda::{ma_map, MkdaKernel, Rounding, Scratch};
    let Some(data) = need_data() else {
        return;
    };
    let corpus = neurosynth_corpus(&data);
    let atlas_path = brain_fixtures().join("atlas_gauss512_2mm.nii.gz");
    let dir = tmpdir("images");
    let out = dir.join("img.npy");
    niclip(&[
        "images",
        "--corpus",
        corpus.to_str().unwrap(),
        "--atlas",
        atlas_path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    let feats = read_npy_f32(&out).unwrap();
    let ids: Vec<String> = std::fs::read_to_string(dir.join("img.npy.ids.txt"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!((feats.rows, feats.cols, ids.len()), (14_371, 512, 14_371));

    let mask = Mask::mni152_2mm();
    let kernel = MkdaKernel::for_grid(&mask.grid, 10.0, Rounding::Round);
    let atlas = Atlas::read(&atlas_path, false).unwrap();
    let peaks = niclip::corpus::Corpus::open(&corpus)
        .unwrap()
        .peaks_for(&ids)
        .unwrap();
    let mut scratch = Scratch::new(&mask.grid);
    let mut worst = 0.0f64;
    for (s, id) in ids.iter().enumerate() {
        let mut vol = vec![0.0f32; mask.grid.n_voxels()];
        for m in ma_map(&kernel, &mask, peaks.study(s), id, &mut scratch).unwrap() {
            vol[mask.voxels[m as usize] as usize] = 1.0;
        }
        let want: Vec<f64> = atlas
            .project_image(&Image::new(mask.grid.clone(), 1, vol))
            .iter()
            .map(|&x| x as f64)
            .collect();
        worst = worst.max(max_row_relative_error(
            &feats.data[s * 512..(s + 1) * 512],
            &want,
            512,
        ));
    }
    eprintln!("images vs project(ma-map), 14,371 studies: max relative error {worst:.2e}");
    assert!(worst < 1e-6);

    let sample: Vec<&String> = ids.iter().step_by(ids.len() / 40).take(40).collect();
    let maps = dir.join("sample.nii");
    let mut args = vec![
        "ma-map",
        "--corpus",
        corpus.to_str().unwrap(),
        "--out",
        maps.to_str().unwrap(),
    ];
    sample
        .iter()
        .for_each(|id| args.extend(["--study", id.as_str()]));
    niclip(&args);
    let proj = dir.join("sample.npy");
    niclip(&[
        "project",
        "--atlas",
        atlas_path.to_str().unwrap(),
        maps.to_str().unwrap(),
        "--out",
        proj.to_str().unwrap(),
    ]);
    let proj = read_npy_f32(&proj).unwrap();
    for (r, id) in sample.iter().enumerate() {
        let s = ids.iter().position(|x| x == *id).unwrap();
        let want: Vec<f64> = proj.data[r * 512..(r + 1) * 512]
            .iter()
            .map(|&x| x as f64)
            .collect();
        assert!(
            max_row_relative_error(&feats.data[s * 512..(s + 1) * 512], &want, 512) < 1e-6,
            "{id}"
        );
    }
    std::fs::remove_dir_all(dir).ok();
}

/// An `images` run that dies before its final write resumes from its checkpoints and ends
/// with the same rows as an uninterrupted run.
#[test]
fn images_resume_after_an_interrupted_run() {
    let Some(data) = need_data() else {
        return;
    };
    let corpus = neurosynth_corpus(&data);
    let atlas = brain_fixtures().join("atlas_thalamus_2mm.nii.gz");
    let dir = tmpdir("resume");
    let (clean, out) = (dir.join("clean.npy"), dir.join("resumed.npy"));
    let (corpus, atlas) = (corpus.to_str().unwrap(), atlas.to_str().unwrap());
    let run = |o: &Path| {
        let o = o.to_str().unwrap().to_string();
        [
            "images", "--corpus", corpus, "--atlas", atlas, "--out", &o, "--chunk", "3000",
            "--device", "cpu",
        ]
        .map(String::from)
    };
    fn args(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    niclip(&args(&run(&clean)));
    // A directory where the output goes makes the final rename fail after every chunk is done.
    std::fs::create_dir_all(&out).unwrap();
    niclip_fails(&args(&run(&out)));
    assert!(
        dir.join("resumed.npy.partial/chunk-000004.npy").exists(),
        "checkpoints are kept"
    );
    std::fs::remove_dir(&out).unwrap();
    let stderr = niclip(&args(&run(&out)));
    assert!(stderr.contains("resuming"), "{stderr}");
    assert_eq!(std::fs::read(&clean).unwrap(), std::fs::read(&out).unwrap());
    assert!(
        !dir.join("resumed.npy.partial").exists(),
        "checkpoints are removed at the end"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn nearest_resampling_of_labels_equals_nilearn() {
    let Some(data) = need_data() else {
        return;
    };
    // Through the command line, as a user prepares a label atlas for the 2 mm grid.
    let out = tmpdir("resample").join("aal3_2mm.nii.gz");
    let reference = brain_fixtures().join("atlas_aal3_2mm.nii.gz");
    niclip(&[
        "resample",
        data.join("atlases/aal3/AAL3.nii.gz").to_str().unwrap(),
        "--like",
        reference.to_str().unwrap(),
        "--interpolation",
        "nearest",
        "--out",
        out.to_str().unwrap(),
    ]);
    let got = Image::read(&out).unwrap();
    let want = Image::read(&reference).unwrap();
    assert!(got.grid.same_as(&want.grid));
    let differing = got
        .data
        .iter()
        .zip(&want.data)
        .filter(|(a, b)| a != b)
        .count();
    eprintln!(
        "AAL3 1 mm -> 2 mm nearest: {differing} of {} voxels differ from nilearn",
        want.data.len()
    );
    assert_eq!(differing, 0);
}

/// NiMARE's KDA or ALE maps (tests/fixtures/make_kernel_fixtures.py): per study, float32 values
/// over the mask's voxels in Fortran order, stored as uint8 codes and a per-study value table
/// (KDA: the counts themselves).
struct KernelRef {
    codes: Vec<u8>,
    table: Option<Vec<f32>>,
    cols: usize,
}

impl KernelRef {
    fn read(codes: &str, table: Option<&str>) -> KernelRef {
        let raw = read_npy_raw(&brain_fixtures().join(codes)).unwrap();
        assert_eq!(raw.descr, "|u1");
        assert_eq!(raw.shape[0], 300);
        let table = table.map(|t| {
            let raw = read_npy_raw(&brain_fixtures().join(t)).unwrap();
            assert_eq!((raw.descr.as_str(), raw.shape[1]), ("<f4", 255));
            raw.bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        });
        KernelRef {
            cols: raw.shape[1],
            codes: raw.bytes,
            table,
        }
    }

    fn value(&self, s: usize, m: usize) -> f32 {
        let c = self.codes[s * self.cols + m];
        match (&self.table, c) {
            (_, 0) => 0.0,
            (Some(t), c) => t[s * 255 + c as usize - 1],
            (None, c) => c as f32,
        }
    }
}

fn mkda_ids() -> Vec<String> {
    std::fs::read_to_string(brain_fixtures().join("mkda_ids.txt"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

/// The largest |niclip − NiMARE| over study volumes `first..` of `img` (and 0 off the mask).
fn max_abs_diff(img: &Image, mask: &Mask, reference: &KernelRef, first: usize) -> f64 {
    let mut worst = 0.0f64;
    for (s, vol) in img.volumes().enumerate() {
        for (m, &v) in mask.voxels.iter().enumerate() {
            let d = (vol[v as usize] as f64 - reference.value(first + s, m) as f64).abs();
            worst = worst.max(d);
        }
        let outside = (0..vol.len()).filter(|&v| mask.index[v] < 0 && vol[v] != 0.0);
        assert_eq!(
            outside.count(),
            0,
            "study {}: values off the mask",
            first + s
        );
    }
    worst
}

/// `niclip ma-map --kernel kda` and `--kernel ale --fwhm 10` on the 300 studies equal NiMARE's
/// `KDAKernel(r=10)` and `ALEKernel(fwhm=10)` images to 1e-6 (float32).
#[test]
fn kda_and_ale_ma_maps_equal_nimare_on_300_neurosynth_studies() {
    let Some(data) = need_data() else {
        return;
    };
    let corpus = neurosynth_corpus(&data);
    let ids = mkda_ids();
    let mask = Mask::mni152_2mm();
    let dir = tmpdir("kernels-ma-map");
    for (flags, reference) in [
        (
            vec!["--kernel", "kda"],
            KernelRef::read("kda_ref_counts.npy.gz", None),
        ),
        (
            vec!["--kernel", "ale", "--fwhm", "10"],
            KernelRef::read("ale_fwhm10_codes.npy.gz", Some("ale_fwhm10_table.npy.gz")),
        ),
    ] {
        let mut worst = 0.0f64;
        for (b, batch) in ids.chunks(100).enumerate() {
            let out = dir.join(format!("ma-{b}.nii"));
            let mut args = vec!["ma-map", "--corpus", corpus.to_str().unwrap()];
            args.extend(["--out", out.to_str().unwrap()]);
            args.extend(flags.iter().copied());
            batch
                .iter()
                .for_each(|id| args.extend(["--study", id.as_str()]));
            niclip(&args);
            let img = Image::read(&out).unwrap();
            assert_eq!(img.n_vols, batch.len());
            worst = worst.max(max_abs_diff(&img, &mask, &reference, b * 100));
            std::fs::remove_file(&out).ok();
        }
        eprintln!("{flags:?} parity with NiMARE, 300 studies: max abs diff {worst:.3e}");
        assert!(worst <= 1e-6, "{flags:?}: {worst}");
    }
}

/// ALE with per-study sample sizes (NiMARE's `ALEKernel()` on a Dataset with `sample_sizes`),
/// through the library (the CLI takes one --sample-size), and the image features of KDA and
/// ALE against `Atlas::project_image` of NiMARE's own maps.
#[test]
fn ale_per_study_sample_sizes_and_features_equal_nimare() {
    use niclip::brain::features::ma_maps;
    use niclip::brain::kernels::{AleKernel, AleWidth, MaKernel};
    use niclip::brain::mkda::{MkdaKernel, Rounding};
    use niclip::device::Device;
    let Some(data) = need_data() else {
        return;
    };
    let corpus = neurosynth_corpus(&data);
    let ids = mkda_ids();
    let sizes: Vec<f64> = std::fs::read_to_string(brain_fixtures().join("ale_sample_sizes.txt"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(sizes.len(), 300);
    let mask = Mask::mni152_2mm();
    let peaks = niclip::corpus::Corpus::open(&corpus)
        .unwrap()
        .peaks_for(&ids)
        .unwrap();
    let reference = KernelRef::read("ale_nsub_codes.npy.gz", Some("ale_nsub_table.npy.gz"));
    let mut worst = 0.0f64;
    for b in 0..3 {
        let part = peaks.slice(b * 100..(b + 1) * 100);
        let sub = &sizes[b * 100..(b + 1) * 100];
        let k = MaKernel::Ale(AleKernel::per_study(sub, &mask.grid, Rounding::Round).unwrap());
        worst = worst.max(max_abs_diff(
            &ma_maps(&k, &mask, &part).unwrap(),
            &mask,
            &reference,
            b * 100,
        ));
    }
    eprintln!(
        "ALE per-study sample sizes parity with NiMARE, 300 studies: max abs diff {worst:.3e}"
    );
    assert!(worst <= 1e-6, "{worst}");

    // Features: the fused Xᵀy of 40 studies against the projection of NiMARE's maps.
    let atlas = Atlas::read(&brain_fixtures().join("atlas_gauss512_2mm.nii.gz"), false).unwrap();
    let n = 40;
    let part = peaks.slice(0..n);
    let sphere = MkdaKernel::for_grid(&mask.grid, 10.0, Rounding::Round);
    for (name, kernel, reference) in [
        (
            "kda",
            MaKernel::Kda(sphere),
            KernelRef::read("kda_ref_counts.npy.gz", None),
        ),
        (
            "ale fwhm 10",
            MaKernel::Ale(
                AleKernel::new(AleWidth::Fwhm(10.0), &mask.grid, Rounding::Round).unwrap(),
            ),
            KernelRef::read("ale_fwhm10_codes.npy.gz", Some("ale_fwhm10_table.npy.gz")),
        ),
        (
            "ale per-study n",
            MaKernel::Ale(AleKernel::per_study(&sizes[..n], &mask.grid, Rounding::Round).unwrap()),
            reference,
        ),
    ] {
        let feats = Device::Cpu
            .image_features(&kernel, &mask, &atlas, &part)
            .unwrap();
        let mut vols = vec![0.0f32; n * mask.grid.n_voxels()];
        for (s, vol) in vols.chunks_mut(mask.grid.n_voxels()).enumerate() {
            for (m, &v) in mask.voxels.iter().enumerate() {
                vol[v as usize] = reference.value(s, m);
            }
        }
        let want: Vec<f64> = atlas
            .project_image(&Image::new(mask.grid.clone(), n, vols))
            .iter()
            .map(|&x| x as f64)
            .collect();
        let err = max_row_relative_error(&feats, &want, atlas.k);
        eprintln!("{name}: image_features vs project(NiMARE maps), {n} studies: max relative error {err:.2e}");
        assert!(err < 1e-5, "{name}: {err}");
    }
}

/// `--kernel ale` needs exactly one of --fwhm and --sample-size, and a positive one.
#[test]
fn ale_flags_are_checked() {
    let Some(data) = need_data() else {
        return;
    };
    let corpus = neurosynth_corpus(&data);
    let out = tmpdir("ale-flags").join("x.nii");
    let base = [
        "ma-map",
        "--corpus",
        corpus.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    for (flags, want) in [
        (vec!["--kernel", "ale"], "--fwhm"),
        (
            vec!["--kernel", "ale", "--fwhm", "10", "--sample-size", "20"],
            "not both",
        ),
        (vec!["--kernel", "ale", "--fwhm", "-3"], "--fwhm"),
        (
            vec!["--kernel", "ale", "--sample-size", "0"],
            "--sample-size",
        ),
        (vec!["--kernel", "kda", "--fwhm", "10"], "--kernel ale"),
        (vec!["--kernel", "kda", "--radius", "-2"], "--radius"),
    ] {
        let mut args = base.to_vec();
        args.extend(flags.iter().copied());
        args.extend(["--study", "10545400"]);
        let err = niclip_fails(&args);
        assert!(err.contains(want), "{flags:?}: {err}");
    }
    assert!(!out.exists());
}
