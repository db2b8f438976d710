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
