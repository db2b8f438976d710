//! Training on image features computed from a corpus (`train --corpus --atlas`) and drawn anew
//! each epoch (`--augment`): the same features as `niclip images`, the same bytes for the same
//! seed, a resumed run equal to an uninterrupted one, and validation rows never augmented.

mod common;

use common::*;
use niclip::clip::cpu::CpuEngine;
use niclip::clip::data::Pairs;
use niclip::clip::layout::Layout;
use niclip::clip::ops::NO_DROPOUT;
use niclip::clip::state::ModelState;
use niclip::clip::train::{Batch, Engine, TrainConfig};
use niclip::clip::Clip;
use niclip::io::write_npy_f32;
use std::path::{Path, PathBuf};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// 300 Neurosynth studies with peaks, the AAL3 atlas on their grid, their plain image features
/// (`niclip images`) and random text features paired by id.
struct Data {
    dir: PathBuf,
    corpus: PathBuf,
    images: PathBuf,
    text: PathBuf,
}

fn data(name: &str) -> Option<Data> {
    let shared = need_data()?;
    let dir = tmpdir(name);
    let corpus = dir.join("sample.corpus");
    let ns = neurosynth_corpus(&shared);
    niclip(&[
        "corpus",
        "sample",
        s(&ns),
        "--n",
        "300",
        "--with-peaks",
        "--out",
        s(&corpus),
    ]);
    let images = dir.join("images.npy");
    niclip(&[
        "images",
        "--corpus",
        s(&corpus),
        "--atlas",
        s(&atlas()),
        "--labels",
        "--out",
        s(&images),
    ]);
    let ids = std::fs::read_to_string(dir.join("images.npy.ids.txt")).unwrap();
    let n = ids.lines().count();
    let mut rng = niclip::rng::SplitMix64(5);
    let text: Vec<f32> = (0..n * 24).map(|_| rng.uniform() as f32 - 0.5).collect();
    let text_path = dir.join("text.npy");
    write_npy_f32(&text_path, &text, n, 24).unwrap();
    std::fs::write(dir.join("text.npy.ids.txt"), ids).unwrap();
    Some(Data {
        dir,
        corpus,
        images,
        text: text_path,
    })
}

fn atlas() -> PathBuf {
    fixtures().join("brain/atlas_aal3_2mm.nii.gz")
}

impl Data {
    /// `niclip train` on these data with `more` flags, 3 epochs; the model's bytes.
    fn train(&self, stem: &str, more: &[&str]) -> Vec<u8> {
        let out = self.dir.join(format!("{stem}.safetensors"));
        let mut args = vec!["train", "--text", s(&self.text), "--out", s(&out)];
        args.extend([
            "--epochs", "3", "--batch", "64", "--seed", "4", "--device", "cpu",
        ]);
        args.extend(more);
        niclip(&args);
        std::fs::read(out).unwrap()
    }

    fn corpus_flags(&self) -> Vec<String> {
        let atlas = atlas();
        let a = [
            "--corpus",
            s(&self.corpus),
            "--atlas",
            s(&atlas),
            "--labels",
        ];
        a.iter().map(|x| x.to_string()).collect()
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn corpus_features_equal_images_and_augmentation_is_seeded() {
    let Some(d) = data("train-augment") else {
        return;
    };
    let corpus = d.corpus_flags();
    let from_file = d.train("file", &["--images", s(&d.images)]);
    let plain = d.train("plain", &strs(&corpus));
    assert_eq!(
        from_file, plain,
        "features computed in train differ from `niclip images`"
    );

    let mut aug = corpus.clone();
    aug.extend(["--augment".into(), "jitter:sigma=4,dropout:p=0.1".into()]);
    let a1 = d.train("aug1", &strs(&aug));
    let a2 = d.train("aug2", &strs(&aug));
    assert_eq!(a1, a2, "the same seed must draw the same augmentations");
    assert_ne!(a1, plain, "--augment changed nothing");
    let mut radius = corpus.clone();
    radius.extend(["--augment".into(), "radius:6..14".into()]);
    assert_ne!(d.train("radius", &strs(&radius)), plain);
    // Map-level items go through dense maps, then the projection.
    let mut maps = corpus.clone();
    maps.extend(["--augment".into(), "noise:sd=0.2,threshold:pct=50".into()]);
    let m1 = d.train("maps1", &strs(&maps));
    assert_ne!(m1, plain);
    assert_eq!(m1, d.train("maps2", &strs(&maps)));
    // Radii are drawn for spheres: not for ALE's Gaussians.
    let out = d.dir.join("ale.safetensors");
    let mut ale = vec!["train", "--text", s(&d.text), "--out", s(&out)];
    ale.extend(strs(&radius));
    ale.extend(["--kernel", "ale", "--fwhm", "10"]);
    let err = niclip_fails(&ale);
    assert!(err.contains("--kernel mkda or kda"), "{err}");
    let _ = std::fs::remove_dir_all(&d.dir);
}

#[test]
fn augmented_run_stopped_and_resumed_equals_uninterrupted() {
    let Some(d) = data("train-augment-resume") else {
        return;
    };
    let mut aug = d.corpus_flags();
    aug.extend([
        "--augment".into(),
        "jitter:sigma=3".into(),
        "--checkpoint-every".into(),
        "0".into(),
    ]);
    let full = d.train("full", &strs(&aug));
    let out = d.dir.join("cut.safetensors");
    let mut cut = vec!["train", "--text", s(&d.text), "--out", s(&out)];
    cut.extend([
        "--epochs", "3", "--batch", "64", "--seed", "4", "--device", "cpu",
    ]);
    cut.extend(strs(&aug));
    let mut stop = cut.clone();
    stop.extend(["--stop-after-batches", "7"]);
    niclip_fails(&stop);
    let mut resume = cut.clone();
    resume.push("--resume");
    let log = niclip(&resume);
    assert!(log.contains("resuming"), "did not resume: {log}");
    assert_eq!(std::fs::read(&out).unwrap(), full);

    // A checkpoint drawn with other augmentations is not resumed.
    niclip_fails(&stop);
    let mut other: Vec<&str> = cut
        .iter()
        .map(|a| {
            if *a == "jitter:sigma=3" {
                "jitter:sigma=5"
            } else {
                a
            }
        })
        .collect();
    other.push("--resume");
    let err = niclip_fails(&other);
    assert!(err.contains("different job"), "{err}");
    let _ = std::fs::remove_dir_all(&d.dir);
}

#[test]
fn bad_augment_specs_and_flag_combinations_are_errors() {
    let dir = tmpdir("train-augment-flags");
    let (t, i) = (dir.join("t.npy"), dir.join("i.npy"));
    write_npy_f32(&t, &[0.5; 8], 2, 4).unwrap();
    write_npy_f32(&i, &[0.5; 8], 2, 4).unwrap();
    let out = dir.join("m.safetensors");
    let base = ["train", "--text", s(&t), "--out", s(&out)];
    // --augment needs peaks to draw from.
    let err = niclip_fails(
        &[
            &base[..],
            &["--images", s(&i), "--augment", "jitter:sigma=4"],
        ]
        .concat(),
    );
    assert!(err.contains("--corpus"), "{err}");
    // --images and --corpus are two sources of the same features.
    let err = niclip_fails(
        &[
            &base[..],
            &["--images", s(&i), "--corpus", "c", "--atlas", "a"],
        ]
        .concat(),
    );
    assert!(
        err.contains("--images") && err.contains("--corpus"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Pairs whose images are the text itself (so a trained model can tell them apart).
fn toy_pairs() -> Pairs {
    let (n, w) = (64, 8);
    let mut rng = niclip::rng::SplitMix64(11);
    let text: Vec<f32> = (0..n * w).map(|_| rng.uniform() as f32 - 0.5).collect();
    Pairs::new(text.clone(), text, n, w, w)
}

/// Loads a fresh model into `engine`.
fn fresh(engine: &mut dyn Engine, pairs: &Pairs) {
    let st = ModelState::new(&Clip::init(pairs.d, pairs.k, 1));
    engine.upload(0, &st).unwrap();
}

fn step(engine: &mut dyn Engine, rows: &[usize]) -> f32 {
    let batch = Batch {
        rows,
        next: &[],
        drops: NO_DROPOUT,
        t: 1,
    };
    engine.step(&[batch]).unwrap()[0]
}

/// `engine` (on `pairs`) evaluates on the pairs' images whatever it trains on, and trains on
/// drawn images exactly as `twin` (on pairs whose images are the drawn ones) trains on its own.
fn engine_checks(engine: &mut dyn Engine, twin: &mut dyn Engine, pairs: &Pairs, drawn: &[f32]) {
    fresh(engine, pairs);
    fresh(twin, pairs);
    let rows: Vec<usize> = (0..32).collect();
    let plain = engine.eval(&[&rows]).unwrap()[0];
    engine.set_train_images(drawn).unwrap();
    assert_eq!(
        engine.eval(&[&rows]).unwrap()[0],
        plain,
        "eval must keep the pairs' images"
    );
    assert_eq!(
        step(engine, &rows),
        step(twin, &rows),
        "step must train on the drawn images"
    );
    assert_ne!(
        engine.eval(&[&rows]).unwrap()[0],
        plain,
        "the step changed nothing"
    );
    assert!(
        engine.set_train_images(&drawn[1..]).is_err(),
        "a short matrix must be refused"
    );
}

#[test]
fn engines_train_on_drawn_images_and_evaluate_on_the_pairs() {
    let pairs = toy_pairs();
    let drawn: Vec<f32> = pairs.images.iter().map(|v| v * v - 0.1).collect();
    let twin_pairs = Pairs::new(pairs.text.clone(), drawn.clone(), pairs.n, pairs.d, pairs.k);
    let drawn = twin_pairs.images.clone();
    let cfg = TrainConfig {
        dropout: 0.0,
        ..TrainConfig::default()
    };
    let layout = Layout::new(pairs.d, pairs.k);
    let mut cpu = CpuEngine::new(&pairs, &layout, &cfg);
    let mut cpu_twin = CpuEngine::new(&twin_pairs, &layout, &cfg);
    engine_checks(&mut cpu, &mut cpu_twin, &pairs, &drawn);
    if let Some(gpu) = need_gpu() {
        use niclip::clip::cuda::CudaEngine;
        let mut e = CudaEngine::new(&gpu, &pairs, &cfg, 1).unwrap();
        let mut twin = CudaEngine::new(&gpu, &twin_pairs, &cfg, 1).unwrap();
        engine_checks(&mut e, &mut twin, &pairs, &drawn);
    }
}
