//! Bad maps and bad vocabularies give one-line errors naming the file and the fix.

mod common;

use common::*;
use niclip::brain::{Grid, Image};
use std::path::{Path, PathBuf};

fn mni_grid() -> Grid {
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

fn write_map(dir: &Path, name: &str, grid: Grid, values: Vec<f32>) -> PathBuf {
    let p = dir.join(name);
    Image::new(grid, 1, values).write(&p).unwrap();
    p
}

struct Flags {
    model: String,
    vocabulary: String,
    emb: String,
    prior: String,
    ontology: String,
    atlas: String,
}

impl Flags {
    fn new(data: &Path) -> Flags {
        let f = |n: &str| fixtures().join("decode").join(n).display().to_string();
        Flags {
            model: f("model.safetensors"),
            vocabulary: f("vocabulary.txt"),
            emb: f("vocabulary_emb.npy"),
            prior: f("vocabulary_prior.npy"),
            ontology: data.join("cogat").display().to_string(),
            atlas: data
                .join("mni/HarvardOxford-cort-maxprob-thr25-2mm.nii.gz")
                .display()
                .to_string(),
        }
    }

    fn args<'a>(&'a self, maps: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        let mut a = vec!["decode"];
        a.extend(maps);
        a.extend([
            "--model",
            &self.model,
            "--vocabulary",
            &self.vocabulary,
            "--vocabulary-emb",
            &self.emb,
            "--vocabulary-prior",
            &self.prior,
            "--ontology",
            &self.ontology,
            "--reduced",
            "--atlas",
            &self.atlas,
            "--labels",
        ]);
        a.extend(extra);
        a
    }
}

fn one_line(err: &str) -> &str {
    err.lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in:\n{err}"))
}

#[test]
fn bad_maps_are_named_with_the_reason() {
    let Some(data) = need_data() else {
        return;
    };
    let dir = tmpdir("decode-errors");
    let n = mni_grid().n_voxels();
    let flags = Flags::new(&data);
    let zero = write_map(&dir, "zero.nii.gz", mni_grid(), vec![0.0; n]);
    let nan = write_map(&dir, "nan.nii.gz", mni_grid(), vec![f32::NAN; n]);
    let mut far = mni_grid();
    far.affine[0][3] += 5000.0;
    let far = write_map(&dir, "far.nii.gz", far, vec![1.0; n]);
    let mut neg = vec![0.0; n];
    neg[n / 2] = -3.0;
    let neg = write_map(&dir, "negative.nii.gz", mni_grid(), neg);
    let flat = dir.join("flat.nii.gz");
    Image::new(
        Grid::new([91, 109, 1], mni_grid().affine),
        1,
        vec![1.0; 91 * 109],
    )
    .write(&flat)
    .unwrap();
    for (map, extra, want) in [
        (&zero, vec![], "all zeros"),
        // The NIfTI reader warns that NaN count as 0; the map is then empty.
        (&nan, vec![], "all zeros"),
        (&far, vec![], "is it in MNI space"),
        (&neg, vec!["--tail", "positive"], "choose another --tail"),
        (&flat, vec![], "must be 3D"),
    ] {
        let m = map.display().to_string();
        let err = niclip_fails(&flags.args(&[&m], &extra));
        let line = one_line(&err);
        assert!(line.contains(&m) && line.contains(want), "{want}: {line}");
        if map == &nan {
            assert!(err.contains("NaN/Inf values treated as 0"), "{err}");
        }
    }
}

#[test]
fn vocabulary_files_that_disagree_are_refused() {
    let Some(data) = need_data() else {
        return;
    };
    let dir = tmpdir("decode-vocab-errors");
    let flags = Flags::new(&data);
    let map = data
        .join("maps/neurosynth_vmPFC.nii.gz")
        .display()
        .to_string();
    let emb = niclip::io::read_npy_f32(Path::new(&flags.emb)).unwrap();

    // A vocabulary embedded by another model: 32 wide where the model takes 64.
    let narrow = dir.join("narrow.npy");
    let d: Vec<f32> = emb.data.chunks(64).flat_map(|r| r[..32].to_vec()).collect();
    niclip::io::write_npy_f32(&narrow, &d, emb.rows, 32).unwrap();
    let f = Flags {
        emb: narrow.display().to_string(),
        ..Flags::new(&data)
    };
    let err = niclip_fails(&f.args(&[&map], &[]));
    assert!(
        one_line(&err).contains("narrow.npy") && err.contains("32 wide"),
        "{err}"
    );

    // One row short.
    let short = dir.join("short.npy");
    niclip::io::write_npy_f32(&short, &emb.data[64..], emb.rows - 1, 64).unwrap();
    let f = Flags {
        emb: short.display().to_string(),
        ..Flags::new(&data)
    };
    let err = niclip_fails(&f.args(&[&map], &[]));
    assert!(
        one_line(&err).contains("short.npy") && err.contains("87 rows but 88 names"),
        "{err}"
    );

    // A prior of the wrong length.
    let prior = dir.join("prior.npy");
    niclip::io::write_npy_f32(&prior, &[0.1; 10], 10, 1).unwrap();
    let f = Flags {
        prior: prior.display().to_string(),
        ..Flags::new(&data)
    };
    let err = niclip_fails(&f.args(&[&map], &[]));
    assert!(
        one_line(&err).contains("prior.npy") && err.contains("one value per name"),
        "{err}"
    );

    // An atlas whose number of maps is not the model's image width.
    let f = Flags {
        atlas: data.join("atlases/aal3/AAL3.nii.gz").display().to_string(),
        ..Flags::new(&data)
    };
    let err = niclip_fails(&f.args(&[&map], &[]));
    assert!(
        one_line(&err).contains("AAL3.nii.gz") && err.contains("48 image features"),
        "{err}"
    );
}

/// An embedding array with no columns (851 names, shape (851, 0)) read rows of width 0 and
/// panicked ("chunk size must be non-zero"): it is an error naming the file.
#[test]
fn zero_width_vocabulary_embeddings_are_refused() {
    use niclip::decode::vocabulary::Vocabulary;
    let dir = tmpdir("decode-vocab-zero-width");
    let n = 851;
    let names = dir.join("vocabulary.txt");
    let names_txt: String = (0..n).map(|i| format!("task {i}\n")).collect();
    std::fs::write(&names, names_txt).unwrap();
    let prior = dir.join("vocabulary_prior.npy");
    niclip::io::write_npy_f32(&prior, &vec![1.0 / n as f32; n], n, 1).unwrap();
    let emb = dir.join("vocabulary_emb.npy");
    niclip::io::write_npy_f32(&emb, &[], n, 0).unwrap();
    let err = Vocabulary::read(&names, &emb, &prior)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("vocabulary_emb.npy") && err.contains("0 values per row"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn missing_model_flags_and_bad_options_say_what_to_pass() {
    // Some model flags but not all: say which are missing.
    let err = niclip_fails(&["decode", "map.nii.gz", "--model", "m.safetensors"]);
    assert!(
        one_line(&err).contains(
            "missing: --vocabulary --vocabulary-emb --vocabulary-prior --ontology --atlas"
        ),
        "{err}"
    );
    // A default-model folder that is not one.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_niclip"))
        .args(["decode", "map.nii.gz"])
        .env("NICLIP_ASSETS", "/nonexistent/assets")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        one_line(&err).contains("/nonexistent/assets") && err.contains("build-default-model.sh"),
        "{err}"
    );
    let Some(data) = need_data() else {
        return;
    };
    let flags = Flags::new(&data);
    let map = data
        .join("maps/neurosynth_vmPFC.nii.gz")
        .display()
        .to_string();
    let err = niclip_fails(&flags.args(&[&map], &["--percentile", "0"]));
    assert!(
        one_line(&err).contains("--percentile must be in (0, 100]"),
        "{err}"
    );
    let err = niclip_fails(&flags.args(&[&map], &["--plot", "out.pdf"]));
    assert!(one_line(&err).contains("must end in .png or .svg"), "{err}");
}

/// A sphere of ones of radius `r` mm around the MNI point `c`, on the MNI 2 mm grid.
fn blob(c: [f64; 3], r: f64) -> Vec<f32> {
    let g = mni_grid();
    (0..g.n_voxels())
        .map(|v| {
            let p = g.voxel_to_mm(g.unflat(v).map(|x| x as f64));
            let d2: f64 = (0..3).map(|i| (p[i] - c[i]).powi(2)).sum();
            (d2 <= r * r) as u8 as f32
        })
        .collect()
}

/// One bad map used to stop the batch with nothing written. Now every good map is decoded
/// and written with a summary, each bad one named with its reason, and the exit is non-zero
/// saying how many failed. Folders and quoted patterns are maps too.
#[test]
fn a_batch_decodes_every_good_map_and_reports_the_bad() {
    let dir = tmpdir("decode-batch");
    let maps = dir.join("maps");
    std::fs::create_dir_all(&maps).unwrap();
    let n = mni_grid().n_voxels();
    write_map(
        &maps,
        "a_motor.nii.gz",
        mni_grid(),
        blob([-38.0, -22.0, 56.0], 10.0),
    );
    write_map(&maps, "b_zeros.nii.gz", mni_grid(), vec![0.0; n]);
    write_map(
        &maps,
        "c_visual.nii.gz",
        mni_grid(),
        blob([0.0, -90.0, 4.0], 10.0),
    );
    let out = dir.join("out");
    let (m, o) = (maps.display().to_string(), out.display().to_string());
    let err = niclip_fails(&["decode", &m, "--out", &o, "--top", "all"]);
    assert!(err.contains("b_zeros.nii.gz: is all zeros"), "{err}");
    assert!(
        err.contains("1 of 3 map files could not be decoded"),
        "{err}"
    );
    let summary = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    let rows: Vec<&str> = summary.lines().collect();
    assert_eq!(rows.len(), 3, "{summary}");
    assert!(
        rows[0].starts_with("map,task,task_prob,concept"),
        "{summary}"
    );
    assert!(
        rows[1].contains("a_motor") && rows[2].contains("c_visual"),
        "{summary}"
    );
    // --top all lists every task of the vocabulary.
    let tasks = std::fs::read_to_string(out.join("a_motor_task_predictions.csv")).unwrap();
    assert!(tasks.lines().count() > 50, "{tasks}");

    // A quoted pattern picks the good ones: exit 0, the summary after the tables.
    let (a, c) = (maps.join("a_*.nii.gz"), maps.join("c_?isual.nii*"));
    let stdout = niclip_stdout(&["decode", &a.display().to_string(), &c.display().to_string()]);
    assert!(stdout.contains("Summary: the top task"), "{stdout}");
    assert!(stdout.matches(".nii.gz").count() >= 4, "{stdout}");
    let none = maps.join("*.nii.bz2").display().to_string();
    assert!(niclip_fails(&["decode", &none]).contains("matches no .nii"));
}

/// `--out` onto a file used to fail only after the tables were printed.
#[test]
fn out_onto_a_file_fails_before_the_work() {
    let dir = tmpdir("decode-out-file");
    let map = write_map(&dir, "m.nii.gz", mni_grid(), blob([0.0, -90.0, 4.0], 10.0));
    let file = dir.join("taken.txt");
    std::fs::write(&file, "x").unwrap();
    let (m, f) = (map.display().to_string(), file.display().to_string());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_niclip"))
        .args(["decode", &m, "--out", &f])
        .output()
        .unwrap();
    assert!(!out.status.success() && out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("taken.txt") && err.contains("not a folder"),
        "{err}"
    );
}

/// A map whose affine does not put it in MNI space (here diag(3, 3, 3), origin at a corner)
/// decoded silently; its blobs lie outside the brain.
#[test]
fn a_map_outside_the_brain_gets_a_warning() {
    let dir = tmpdir("decode-outside");
    let good = write_map(
        &dir,
        "mni.nii.gz",
        mni_grid(),
        blob([-38.0, -22.0, 56.0], 12.0),
    );
    let mut off = mni_grid();
    off.affine = [
        [3.0, 0.0, 0.0, 0.0],
        [0.0, 3.0, 0.0, 0.0],
        [0.0, 0.0, 3.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    let wide: Vec<f32> = (0..off.n_voxels())
        .map(|v| ((v % 7) == 0) as u8 as f32)
        .collect();
    let bad = write_map(&dir, "diag3.nii.gz", off, wide);
    let err = niclip(&["decode", &good.display().to_string()]);
    assert!(!err.contains("outside the MNI152 brain"), "{err}");
    let err = niclip(&["decode", &bad.display().to_string()]);
    assert!(
        err.contains("diag3.nii.gz")
            && err.contains("outside the MNI152 brain")
            && err.contains("affine"),
        "{err}"
    );
}
