//! `niclip train` / `niclip eval retrieval` end to end on synthetic pairs: the same seed gives
//! byte-identical models, a run killed mid-epoch and resumed gives the uninterrupted run's
//! bytes, the nested CV writes its metrics, ids pair rows, and bad input is a one-line error.

mod common;

use common::{niclip, niclip_fails, tmpdir};
use niclip::clip::Clip;
use niclip::io::{write_ids, write_npy_f32};
use std::path::{Path, PathBuf};

/// n correlated pairs (text width d, image width k) written as .npy into `dir`.
fn pairs(dir: &Path, name: &str, n: usize, d: usize, k: usize, seed: u64) -> (PathBuf, PathBuf) {
    let mut rng = niclip::rng::SplitMix64(seed);
    // Rounding the 53-bit uniform to f32 equals rounding its integer: the same numbers as before.
    let mut next = || rng.uniform() as f32 * 2.0 - 1.0;
    let text: Vec<f32> = (0..n * d).map(|_| next()).collect();
    let mix: Vec<f32> = (0..d * k).map(|_| next()).collect();
    let mut images = vec![0.0f32; n * k];
    for r in 0..n {
        for c in 0..k {
            let mut v = 0.3 * next();
            for j in 0..d {
                v += text[r * d + j] * mix[j * k + c] / (d as f32).sqrt();
            }
            images[r * k + c] = v;
        }
    }
    let (t, i) = (
        dir.join(format!("{name}_text.npy")),
        dir.join(format!("{name}_images.npy")),
    );
    write_npy_f32(&t, &text, n, d).unwrap();
    write_npy_f32(&i, &images, n, k).unwrap();
    (t, i)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn same_seed_same_bytes() {
    let dir = tmpdir("clip-determinism");
    let (t, i) = pairs(&dir, "a", 300, 48, 16, 1);
    let run = |out: &Path, seed: &str| {
        niclip(&[
            "train",
            "--text",
            s(&t),
            "--images",
            s(&i),
            "--out",
            s(out),
            "--epochs",
            "3",
            "--seed",
            seed,
            "--device",
            "cpu",
        ]);
        std::fs::read(out).unwrap()
    };
    let a = run(&dir.join("a.safetensors"), "5");
    let b = run(&dir.join("b.safetensors"), "5");
    let c = run(&dir.join("c.safetensors"), "6");
    assert_eq!(a, b, "two runs with the same seed differ");
    assert_ne!(a, c, "the seed changes nothing");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn killed_and_resumed_run_equals_uninterrupted() {
    let dir = tmpdir("clip-resume");
    let (t, i) = pairs(&dir, "tr", 300, 40, 16, 2);
    let (vt, vi) = pairs(&dir, "va", 100, 40, 16, 3);
    let args = |out: &Path| -> Vec<String> {
        [
            "train",
            "--text",
            s(&t),
            "--images",
            s(&i),
            "--val",
            s(&vt),
            s(&vi),
            "--out",
            s(out),
            "--epochs",
            "5",
            "--batch",
            "64",
            "--patience",
            "2",
            "--seed",
            "9",
            "--device",
            "cpu",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let full = dir.join("full.safetensors");
    let a: Vec<String> = args(&full);
    niclip(&a.iter().map(String::as_str).collect::<Vec<_>>());

    // 5 batches per epoch: stop 2 batches into epoch 3.
    let cut = dir.join("cut.safetensors");
    let mut b = args(&cut);
    b.extend(["--stop-after-batches".into(), "12".into()]);
    let err = niclip_fails(&b.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("--resume"), "{err}");
    assert!(!cut.exists(), "a stopped run must not write its model");
    let ckpt = dir.join("cut.safetensors.ckpt.safetensors");
    assert!(ckpt.is_file(), "no checkpoint after two finished epochs");
    // Nothing half-written: only finished files in the directory.
    assert!(std::fs::read_dir(&dir).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains(".tmp-")));
    // A second interruption, then the resume to the end.
    let mut c = args(&cut);
    c.extend(["--resume".into(), "--stop-after-batches".into(), "4".into()]);
    niclip_fails(&c.iter().map(String::as_str).collect::<Vec<_>>());
    let mut d = args(&cut);
    d.push("--resume".into());
    let log = niclip(&d.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        log.contains("after epoch 2"),
        "did not resume from the checkpoint: {log}"
    );
    assert_eq!(
        std::fs::read(&full).unwrap(),
        std::fs::read(&cut).unwrap(),
        "the resumed model differs"
    );
    assert!(
        !ckpt.exists(),
        "the checkpoint is removed when training ends"
    );

    // A checkpoint of another job is refused.
    let mut e = args(&cut);
    e.extend(["--stop-after-batches".into(), "7".into()]);
    niclip_fails(&e.iter().map(String::as_str).collect::<Vec<_>>());
    let mut f = args(&cut);
    f.extend(["--resume".into(), "--lr".into(), "1e-3".into()]);
    let err = niclip_fails(&f.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("different job"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Without --val the best validation loss stays +inf, which JSON cannot hold: the checkpoint
/// must still read back, and the resumed run give the uninterrupted run's model and metrics.
#[test]
fn killed_and_resumed_run_without_val_equals_uninterrupted() {
    let dir = tmpdir("clip-resume-noval");
    let (t, i) = pairs(&dir, "tr", 300, 40, 16, 4);
    let args = |stem: &str| -> Vec<String> {
        let (out, metrics) = (
            dir.join(format!("{stem}.safetensors")),
            dir.join(format!("{stem}.csv")),
        );
        [
            "train",
            "--text",
            s(&t),
            "--images",
            s(&i),
            "--out",
            s(&out),
            "--metrics",
            s(&metrics),
            "--epochs",
            "4",
            "--batch",
            "64",
            "--seed",
            "11",
            "--device",
            "cpu",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let run = |v: Vec<String>| niclip(&v.iter().map(String::as_str).collect::<Vec<_>>());
    run(args("full"));
    // 5 batches per epoch: stop 2 batches into epoch 2, then resume to the end.
    let mut b = args("cut");
    b.extend(["--stop-after-batches".into(), "7".into()]);
    let err = niclip_fails(&b.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("--resume"), "{err}");
    assert!(dir.join("cut.safetensors.ckpt.safetensors").is_file());
    let mut c = args("cut");
    c.push("--resume".into());
    let log = run(c);
    assert!(
        log.contains("after epoch 1"),
        "did not resume from the checkpoint: {log}"
    );
    for ext in ["safetensors", "csv"] {
        assert_eq!(
            std::fs::read(dir.join(format!("full.{ext}"))).unwrap(),
            std::fs::read(dir.join(format!("cut.{ext}"))).unwrap(),
            "the resumed run's .{ext} differs"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn nested_cv_writes_metrics_and_eval_scores_a_model() {
    let dir = tmpdir("clip-cv");
    let (t, i) = pairs(&dir, "cv", 1250, 32, 16, 4);
    let out = dir.join("cv.safetensors");
    let metrics = dir.join("metrics.csv");
    niclip(&[
        "train",
        "--text",
        s(&t),
        "--images",
        s(&i),
        "--out",
        s(&out),
        "--cv",
        "--fold-size",
        "250",
        "--outer-folds",
        "2",
        "--inner-folds",
        "2",
        "--epochs",
        "3",
        "--metrics",
        s(&metrics),
        "--device",
        "cpu",
    ]);
    let csv = std::fs::read_to_string(&metrics).unwrap();
    assert!(csv.starts_with("fold,split,metric,value\n"), "{csv}");
    for want in [
        "0,test,recall@10,",
        "1,test,mix_match,",
        "mean,test,recall@100,",
        "sd,test,mix_match,",
        "1,validation,loss,",
    ] {
        assert!(csv.contains(want), "{want} missing:\n{csv}");
    }
    // Learned something: Mix&Match well above chance (50).
    let mm: f64 = csv
        .lines()
        .find(|l| l.starts_with("mean,test,mix_match,"))
        .unwrap()
        .rsplit(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(mm > 60.0, "{mm}");
    assert!(!dir.join("cv.safetensors.ckpt").exists());
    let model = Clip::load(&out).unwrap();
    assert_eq!((model.text_dim(), model.image_dim()), (32, 16));
    let m2 = dir.join("eval.csv");
    niclip(&[
        "eval",
        "retrieval",
        "--text",
        s(&t),
        "--images",
        s(&i),
        "--model",
        s(&out),
        "--metrics",
        s(&m2),
    ]);
    assert!(std::fs::read_to_string(&m2)
        .unwrap()
        .contains("all,all,recall@10,"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn rows_pair_by_id_and_bad_input_is_an_error() {
    let dir = tmpdir("clip-ids");
    let (t, i) = pairs(&dir, "ids", 200, 24, 8, 5);
    let ids: Vec<String> = (0..200).map(|r| format!("s{r}")).collect();
    write_ids(&niclip::io::ids_sidecar(&t), &ids).unwrap();
    // Images: the same ids but 20 missing and the rest reversed: still paired by id.
    let mut rev: Vec<String> = ids[20..].to_vec();
    rev.reverse();
    let im = niclip::io::read_npy_f32(&i).unwrap();
    let mut data = Vec::new();
    for id in &rev {
        let r: usize = id[1..].parse().unwrap();
        data.extend_from_slice(&im.data[r * 8..(r + 1) * 8]);
    }
    let i2 = dir.join("ids_images_rev.npy");
    write_npy_f32(&i2, &data, rev.len(), 8).unwrap();
    write_ids(&niclip::io::ids_sidecar(&i2), &rev).unwrap();
    let out = dir.join("m.safetensors");
    let err = niclip(&[
        "train",
        "--text",
        s(&t),
        "--images",
        s(&i2),
        "--out",
        s(&out),
        "--epochs",
        "1",
        "--device",
        "cpu",
    ]);
    assert!(
        err.contains("dropped 20 text rows and 0 image rows"),
        "{err}"
    );

    // Unequal rows without sidecars.
    let (t3, _) = pairs(&dir, "short", 150, 24, 8, 6);
    let err = niclip_fails(&[
        "train",
        "--text",
        s(&t3),
        "--images",
        s(&i),
        "--out",
        s(&out),
    ]);
    assert!(err.contains("rows") && err.starts_with("error:"), "{err}");
    // An --init of other widths.
    let err = niclip_fails(&[
        "train",
        "--text",
        s(&t),
        "--images",
        s(&i),
        "--out",
        s(&out),
        "--init",
        s(&common::fixtures().join("clip/init.safetensors")),
    ]);
    assert!(err.contains("--init"), "{err}");
    // Not a model.
    let err = niclip_fails(&[
        "eval",
        "retrieval",
        "--text",
        s(&t),
        "--images",
        s(&i),
        "--model",
        s(&t),
    ]);
    assert!(err.contains("safetensors"), "{err}");
    // Too few pairs for CV.
    let err = niclip_fails(&[
        "train",
        "--text",
        s(&t),
        "--images",
        s(&i),
        "--out",
        s(&out),
        "--cv",
    ]);
    assert!(err.contains("--fold-size"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
