//! Parity of the CLIP training engine with PyTorch (tests/fixtures/make_clip_fixtures.py):
//! 3 AdamW steps of the authors' architecture reproduce every batch loss to 1e-6 (relative)
//! and every weight to 1e-5 (‖Δ‖∞ / ‖w‖∞ per tensor); Recall@k and Mix&Match equal the
//! authors' numpy functions; the folds equal scikit-learn's KFold.

mod common;

use niclip::clip::cv::nested;
use niclip::clip::data::Pairs;
use niclip::clip::metrics::{mix_match, recall_at_k};
use niclip::clip::train::{Job, Progress, TrainConfig};
use niclip::clip::Clip;
use niclip::device::Device;
use niclip::io::read_npy_f32;
use std::path::PathBuf;

fn fx(name: &str) -> PathBuf {
    common::fixtures().join("clip").join(name)
}

fn parity_config() -> TrainConfig {
    TrainConfig {
        epochs: 1,
        dropout: 0.0,
        shuffle: false,
        ..TrainConfig::default()
    }
}

/// Largest per-tensor ‖a − b‖∞ / ‖b‖∞, with the tensor's name.
fn worst_tensor(a: &Clip, b: &Clip) -> (f64, String) {
    assert_eq!(a.layout, b.layout);
    let mut worst = (0.0f64, String::new());
    for t in &a.layout.tensors {
        let (x, y) = (
            &a.params[t.offset..t.offset + t.len()],
            &b.params[t.offset..t.offset + t.len()],
        );
        let scale = y
            .iter()
            .fold(0.0f64, |m, v| m.max(v.abs() as f64))
            .max(1e-30);
        let err = x
            .iter()
            .zip(y)
            .fold(0.0f64, |m, (p, q)| m.max((*p as f64 - *q as f64).abs()))
            / scale;
        if err > worst.0 {
            worst = (err, t.name.clone());
        }
    }
    worst
}

#[test]
fn three_adamw_steps_match_pytorch() {
    let t = read_npy_f32(&fx("text.npy")).unwrap();
    let im = read_npy_f32(&fx("images.npy")).unwrap();
    let pairs = Pairs::new(t.data, im.data, t.rows, t.cols, im.cols);
    let init = Clip::load(&fx("init.safetensors")).unwrap();
    assert_eq!(init.logit_scale(), 10.0);
    let job = Job {
        model_id: 0,
        train: (0..pairs.n).collect(),
        val: None,
        init,
        checkpoint: None,
    };
    let cfg = parity_config();
    let out = Device::Cpu
        .train_clip(
            &pairs,
            &cfg,
            std::slice::from_ref(&job),
            false,
            None,
            &mut Progress::new(3, None, false),
        )
        .unwrap()
        .remove(0);
    let want = read_npy_f32(&fx("losses.npy")).unwrap().data;
    assert_eq!(out.batch_losses.len(), 3);
    for (i, (got, want)) in out.batch_losses.iter().zip(&want).enumerate() {
        let rel = ((*got as f64 - *want as f64) / *want as f64).abs();
        eprintln!("batch {i}: niclip {got:.9} torch {want:.9} relative {rel:.2e}");
        assert!(rel <= 1e-6, "batch {i} loss {got} vs torch {want}");
    }
    let torch = Clip::load(&fx("final.safetensors")).unwrap();
    let (err, name) = worst_tensor(&out.model, &torch);
    eprintln!("weights after 3 steps: worst relative error {err:.2e} ({name})");
    assert!(err <= 1e-5, "{name}: {err}");
    // The update is not vacuous: the weights moved by far more than the tolerance.
    let (moved, _) = worst_tensor(&job.init, &torch);
    assert!(moved > 1e-3, "{moved}");
}

#[test]
fn cli_train_matches_pytorch() {
    let dir = common::tmpdir("clip-parity-cli");
    let out = dir.join("model.safetensors");
    common::niclip(&[
        "train",
        "--text",
        fx("text.npy").to_str().unwrap(),
        "--images",
        fx("images.npy").to_str().unwrap(),
        "--init",
        fx("init.safetensors").to_str().unwrap(),
        "--no-shuffle",
        "--dropout",
        "0",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ]);
    let (err, name) = worst_tensor(
        &Clip::load(&out).unwrap(),
        &Clip::load(&fx("final.safetensors")).unwrap(),
    );
    eprintln!("niclip train: worst relative error {err:.2e} ({name})");
    assert!(err <= 1e-5, "{name}: {err}");
    // No checkpoint or temporary file is left behind.
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("model.safetensors")]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn retrieval_metrics_match_the_authors_numpy() {
    let sim = read_npy_f32(&fx("sim.npy")).unwrap();
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx("retrieval.json")).unwrap()).unwrap();
    let n = sim.rows;
    let r10 = recall_at_k(&sim.data, n, 10);
    let r100 = recall_at_k(&sim.data, n, 100);
    let mm = mix_match(&sim.data, n);
    eprintln!("recall@10 {r10} recall@100 {r100} mix&match {mm} vs {want}");
    assert_eq!(r10, want["recall_at_10"].as_f64().unwrap());
    assert_eq!(r100, want["recall_at_100"].as_f64().unwrap());
    // A mean of ratios: equal up to the order of the sum.
    assert!(
        (mm - want["mix_match"].as_f64().unwrap()).abs() <= 1e-12 * mm,
        "{mm}"
    );
    assert!(
        r10 > 0.05 && r10 < 0.95,
        "the fixture should not be trivial: {r10}"
    );
}

#[test]
fn folds_match_sklearn_kfold() {
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx("kfold.json")).unwrap()).unwrap();
    let n = want["n"].as_u64().unwrap() as usize;
    let order: Vec<usize> = (0..n).collect();
    let models = nested(
        &order,
        want["fold_size"].as_u64().unwrap() as usize,
        None,
        None,
    )
    .unwrap();
    let outer = want["outer"].as_array().unwrap();
    let mut j = 0;
    for (o, fo) in outer.iter().enumerate() {
        let test = fo["test"].as_array().unwrap();
        for iv in fo["inner_val"].as_array().unwrap() {
            let m = &models[j];
            assert_eq!(m.outer, o);
            assert_eq!(
                m.test.first().copied(),
                Some(test[0].as_u64().unwrap() as usize)
            );
            assert_eq!(
                m.test.last().copied(),
                Some(test[1].as_u64().unwrap() as usize - 1)
            );
            assert_eq!(
                m.val.first().copied(),
                Some(iv[0].as_u64().unwrap() as usize)
            );
            assert_eq!(
                m.val.last().copied(),
                Some(iv[1].as_u64().unwrap() as usize - 1)
            );
            assert_eq!(m.val.len(), iv[2].as_u64().unwrap() as usize);
            assert_eq!(m.train.len() + m.val.len() + m.test.len(), n);
            j += 1;
        }
    }
    assert_eq!(j, models.len());
}
