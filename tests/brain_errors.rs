//! Bad brain-space input gets a one-line error naming the file and the fix, never a panic.

mod common;

use common::*;
use niclip::brain::{Grid, Image};

fn grid(shape: [usize; 3]) -> Grid {
    Grid::new(
        shape,
        [
            [2.0, 0.0, 0.0, -10.0],
            [0.0, 2.0, 0.0, -10.0],
            [0.0, 0.0, 2.0, -10.0],
            [0.0, 0.0, 0.0, 1.0],
        ],
    )
}

/// A small valid 2-map atlas and a map on its grid.
fn atlas_and_map(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let g = grid([6, 6, 6]);
    let n = g.n_voxels();
    let atlas: Vec<f32> = (0..2 * n)
        .map(|i| {
            if (i % n) % 2 == i / n {
                1.0 + (i % 7) as f32
            } else {
                0.0
            }
        })
        .collect();
    let map: Vec<f32> = (0..n).map(|i| (i % 5) as f32 - 2.0).collect();
    let (a, m) = (dir.join("atlas.nii.gz"), dir.join("map.nii"));
    Image::new(g.clone(), 2, atlas).write(&a).unwrap();
    Image::new(g, 1, map).write(&m).unwrap();
    (a, m)
}

fn project(atlas: &std::path::Path, map: &std::path::Path, out: &std::path::Path) -> Vec<String> {
    vec![
        "project".into(),
        "--atlas".into(),
        atlas.display().to_string(),
        map.display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ]
}

fn fails(args: Vec<String>) -> String {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = niclip_fails(&a);
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    err
}

#[test]
fn truncated_and_non_nifti_files_are_named() {
    let dir = tmpdir("err-nifti");
    let (atlas, map) = atlas_and_map(&dir);
    let out = dir.join("f.npy");
    let bytes = std::fs::read(&map).unwrap();
    let cut = dir.join("cut.nii");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = fails(project(&atlas, &cut, &out));
    assert!(
        err.contains("cut.nii") && err.contains("truncated"),
        "{err}"
    );

    let text = dir.join("notes.nii");
    std::fs::write(
        &text,
        "these are not voxels, just a text file long enough to hold a header".repeat(10),
    )
    .unwrap();
    let err = fails(project(&atlas, &text, &out));
    assert!(
        err.contains("notes.nii") && err.contains("not a NIfTI"),
        "{err}"
    );

    let gz = dir.join("broken.nii.gz");
    std::fs::write(&gz, [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3]).unwrap();
    let err = fails(project(&atlas, &gz, &out));
    assert!(
        err.contains("broken.nii.gz") && err.contains("gzip"),
        "{err}"
    );
    assert!(!out.exists(), "no output is written on error");
}

#[test]
fn a_2d_image_is_refused() {
    let dir = tmpdir("err-2d");
    let (atlas, _) = atlas_and_map(&dir);
    let flat = dir.join("slice.nii");
    Image::new(grid([6, 6, 1]), 1, vec![1.0; 36])
        .write(&flat)
        .unwrap();
    let err = fails(project(&atlas, &flat, &dir.join("f.npy")));
    assert!(err.contains("slice.nii") && err.contains("3D"), "{err}");
}

#[test]
fn nan_and_inf_count_as_zero_with_a_warning() {
    let dir = tmpdir("err-nan");
    let (atlas, map) = atlas_and_map(&dir);
    let mut img = Image::read(&map).unwrap();
    let mut zeroed = img.clone();
    for v in [3usize, 50, 100] {
        img.data[v] = if v == 50 { f32::INFINITY } else { f32::NAN };
        zeroed.data[v] = 0.0;
    }
    let (with_nan, with_zero) = (dir.join("nan.nii"), dir.join("zero.nii"));
    img.write(&with_nan).unwrap();
    zeroed.write(&with_zero).unwrap();
    let (o1, o2) = (dir.join("a.npy"), dir.join("b.npy"));
    let a1: Vec<String> = project(&atlas, &with_nan, &o1);
    let stderr = niclip(&a1.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        stderr.contains("warning") && stderr.contains("3 NaN/Inf"),
        "{stderr}"
    );
    let a2: Vec<String> = project(&atlas, &with_zero, &o2);
    niclip(&a2.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(std::fs::read(o1).unwrap(), std::fs::read(o2).unwrap());
}

/// A 3D label atlas without --labels used to project onto one "map" weighted by label numbers
/// (`images` printed "906 studies × 1 features" and exited 0).
#[test]
fn a_label_atlas_without_labels_suggests_labels() {
    let dir = tmpdir("err-labels");
    let (_, map) = atlas_and_map(&dir);
    let labels = dir.join("labels.nii.gz");
    let vol: Vec<f32> = (0..216).map(|i| (i % 4) as f32).collect();
    Image::new(grid([6, 6, 6]), 1, vol).write(&labels).unwrap();
    let err = fails(project(&labels, &map, &dir.join("f.npy")));
    assert!(
        err.contains("labels.nii.gz") && err.contains("--labels"),
        "{err}"
    );
    let mut with = project(&labels, &map, &dir.join("f.npy"));
    with.push("--labels".into());
    niclip(&with.iter().map(String::as_str).collect::<Vec<_>>());
    // One continuous 3D map is still a (one-map) atlas.
    let single = dir.join("single.nii.gz");
    let vol: Vec<f32> = (0..216).map(|i| (i % 4) as f32 * 0.25).collect();
    Image::new(grid([6, 6, 6]), 1, vol).write(&single).unwrap();
    let a: Vec<String> = project(&single, &map, &dir.join("g.npy"));
    niclip(&a.iter().map(String::as_str).collect::<Vec<_>>());
}

#[test]
fn an_all_zero_atlas_is_refused() {
    let dir = tmpdir("err-atlas");
    let (_, map) = atlas_and_map(&dir);
    let empty = dir.join("empty_atlas.nii.gz");
    Image::new(grid([6, 6, 6]), 3, vec![0.0; 3 * 216])
        .write(&empty)
        .unwrap();
    let err = fails(project(&empty, &map, &dir.join("f.npy")));
    assert!(
        err.contains("empty_atlas.nii.gz") && err.contains("all zeros"),
        "{err}"
    );
}

#[test]
fn output_must_be_npy() {
    let dir = tmpdir("err-out");
    let (atlas, map) = atlas_and_map(&dir);
    let err = fails(project(&atlas, &map, &dir.join("feats.csv")));
    assert!(err.contains("feats.csv") && err.contains(".npy"), "{err}");
}

/// A peak absurdly far away (1e20 mm snaps to a saturated i64 voxel index, where adding the
/// sphere's reach wrapped to an index inside the volume's bounds) draws nothing, on both MKDA
/// paths: the MA maps of `ma-map` and the atlas sums of `images`.
#[test]
fn a_peak_far_outside_the_grid_draws_nothing() {
    use niclip::brain::features::{ma_maps, ma_xty_cpu, Peaks};
    use niclip::brain::kernels::{AleKernel, AleWidth, MaKernel};
    use niclip::brain::mkda::{MkdaKernel, Rounding};
    use niclip::brain::{Atlas, Mask};
    let dir = tmpdir("err-far-peak");
    let (atlas, _) = atlas_and_map(&dir);
    let g = grid([6, 6, 6]);
    let mask = Mask::from_values(g.clone(), &vec![1.0; g.n_voxels()]);
    let atlas = Atlas::read(&atlas, false).unwrap();
    let kernel = MkdaKernel::for_grid(&g, 4.0, Rounding::Round);
    let near = [-4.0, -2.0, 0.0];
    let mut hostile = Peaks::new();
    let mut clean = Peaks::new();
    for far in [
        [1e20, -2.0, 0.0],
        [-4.0, -1e20, 0.0],
        [-4.0, -2.0, 1e19],
        [-1e300, 1e300, 1e300],
        [9.3e18, 9.3e18, 9.3e18],
    ] {
        hostile.push(format!("{far:?}"), [far, near]);
        clean.push(format!("{far:?}"), [near]);
    }
    for rounding in [Rounding::Round, Rounding::Trunc] {
        let sphere = MkdaKernel {
            rounding,
            ..kernel.clone()
        };
        let ale = AleKernel::new(AleWidth::Fwhm(6.0), &g, rounding).unwrap();
        for kernel in [
            MaKernel::Mkda(sphere.clone()),
            MaKernel::Kda(sphere),
            MaKernel::Ale(ale),
        ] {
            assert_eq!(
                ma_maps(&kernel, &mask, &hostile).unwrap().data,
                ma_maps(&kernel, &mask, &clean).unwrap().data
            );
            assert_eq!(
                ma_xty_cpu(&kernel, &mask, &atlas, &hostile).unwrap(),
                ma_xty_cpu(&kernel, &mask, &atlas, &clean).unwrap()
            );
        }
    }
}

/// A label atlas whose values a wild scl_slope made huge (±1e38, past i64 and past the integers
/// float32 holds exactly) is an error naming the file, not an overflowing label range.
#[test]
fn label_values_beyond_exact_integers_are_refused() {
    use niclip::brain::Atlas;
    let path = std::path::Path::new("slope.nii.gz");
    for big in [-1e38f32, 3e38, 1e20, 16_777_217.0 * 2.0] {
        let mut vol = vec![0.0f32; 27];
        vol[3] = 5.0;
        vol[9] = big;
        vol[20] = -big;
        let img = Image::new(grid([3, 3, 3]), 1, vol);
        let err = Atlas::from_labels(&img, path).unwrap_err().to_string();
        assert!(
            err.contains("slope.nii.gz") && err.contains("scl_slope"),
            "{big}: {err}"
        );
    }
}

/// A corpus of studies `1` (one peak) and `2` (none), or with `peaks = false` no peak at all.
fn corpus_with_empty_study(dir: &std::path::Path, peaks: bool) -> std::path::PathBuf {
    let src = dir.join(if peaks { "ns" } else { "ns-none" });
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("x_metadata.tsv"), "id\tspace\n1\tMNI\n2\tMNI\n").unwrap();
    let rows = if peaks { "1\t-38\t-22\t56\n" } else { "" };
    std::fs::write(
        src.join("x_coordinates.tsv"),
        format!("id\tx\ty\tz\n{rows}"),
    )
    .unwrap();
    let corpus = src.with_extension("corpus");
    let (s, c) = (src.display().to_string(), corpus.display().to_string());
    niclip(&[
        "corpus",
        "import",
        "--format",
        "neurosynth",
        &s,
        "--out",
        &c,
    ]);
    corpus
}

/// `ma-map` of a study without peaks wrote an all-zero volume and `images` of a corpus without
/// peaks a 0-row array, both exiting 0.
#[test]
fn studies_without_peaks_are_said_and_nothing_is_no_result() {
    let dir = tmpdir("err-no-peaks");
    let corpus = corpus_with_empty_study(&dir, true).display().to_string();
    let out = dir.join("ma.nii.gz").display().to_string();
    let ma = |ids: &[&str]| {
        let mut a = vec!["ma-map", "--corpus", &corpus, "--out", &out];
        ids.iter().for_each(|id| a.extend(["--study", id]));
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let err = fails(ma(&["2"]));
    assert!(
        err.contains("study 2-1 has no peaks") && err.contains(".corpus"),
        "{err}"
    );
    assert!(!dir.join("ma.nii.gz").exists());
    let a = ma(&["1", "2"]);
    let log = niclip(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(log.contains("1 of the 2 studies have no peaks"), "{log}");
    assert_eq!(Image::read(&dir.join("ma.nii.gz")).unwrap().n_vols, 2);

    let none = corpus_with_empty_study(&dir, false).display().to_string();
    let feats = dir.join("f.npy");
    let (atlas, _) = atlas_and_map(&dir);
    let (a, f) = (atlas.display().to_string(), feats.display().to_string());
    let err = niclip_fails(&["images", "--corpus", &none, "--atlas", &a, "--out", &f]);
    assert!(err.contains("no study in this corpus has peaks"), "{err}");
    assert!(!feats.exists());
}
