//! Parity of the CUDA CLIP engine (kernels/clip.cu via src/clip/cuda.rs) with the CPU engine
//! and PyTorch. Skips where there is no CUDA device (`NICLIP_REQUIRE_GPU=1` makes that a failure).

mod common;

use niclip::clip::data::Pairs;
use niclip::clip::train::{Job, Outcome, Progress, TrainConfig};
use niclip::clip::Clip;
use niclip::device::Device;
use niclip::io::read_npy_f32;

fn train(device: &Device, pairs: &Pairs, cfg: &TrainConfig, jobs: &[Job]) -> Vec<Outcome> {
    let mut progress = Progress::new(0, None, false);
    device
        .train_clip(pairs, cfg, jobs, false, None, &mut progress)
        .unwrap()
}

fn fixture_pairs() -> Pairs {
    let dir = common::fixtures().join("clip");
    let t = read_npy_f32(&dir.join("text.npy")).unwrap();
    let im = read_npy_f32(&dir.join("images.npy")).unwrap();
    Pairs::new(t.data, im.data, t.rows, t.cols, im.cols)
}

/// max over tensors of ‖a − b‖∞ / ‖b‖∞.
fn worst(a: &Clip, b: &Clip) -> (f64, String) {
    let mut w = (0.0, String::new());
    for t in &a.layout.tensors {
        let (x, y) = (
            &a.params[t.offset..t.offset + t.len()],
            &b.params[t.offset..t.offset + t.len()],
        );
        let scale = y
            .iter()
            .fold(0.0f64, |m, v| m.max(v.abs() as f64))
            .max(1e-30);
        let e = x
            .iter()
            .zip(y)
            .fold(0.0f64, |m, (p, q)| m.max((*p as f64 - *q as f64).abs()))
            / scale;
        if e > w.0 {
            w = (e, t.name.clone());
        }
    }
    w
}

#[test]
fn three_adamw_steps_match_pytorch_on_cuda() {
    let Some(gpu) = common::need_gpu().map(Device::Cuda) else {
        return;
    };
    let pairs = fixture_pairs();
    let init = Clip::load(&common::fixtures().join("clip/init.safetensors")).unwrap();
    let job = Job {
        model_id: 0,
        train: (0..pairs.n).collect(),
        val: None,
        init,
        checkpoint: None,
    };
    let cfg = TrainConfig {
        epochs: 1,
        dropout: 0.0,
        shuffle: false,
        ..TrainConfig::default()
    };
    let out = train(&gpu, &pairs, &cfg, &[job]).remove(0);
    let want = read_npy_f32(&common::fixtures().join("clip/losses.npy"))
        .unwrap()
        .data;
    for (g, w) in out.batch_losses.iter().zip(&want) {
        let rel = ((*g as f64 - *w as f64) / *w as f64).abs();
        eprintln!("cuda loss {g:.9} torch {w:.9} relative {rel:.2e}");
        assert!(rel <= 1e-6);
    }
    assert_eq!(out.batch_losses.len(), 3);
    let (e, name) = worst(
        &out.model,
        &Clip::load(&common::fixtures().join("clip/final.safetensors")).unwrap(),
    );
    eprintln!("cuda weights vs torch: {e:.2e} ({name})");
    assert!(e <= 1e-5, "{name}: {e}");
}

/// Several models of different train / validation sizes trained at once on the GPU, with
/// dropout, shuffling and early stopping, equal their CPU trainings (same masks and orders).
#[test]
fn many_models_at_once_match_the_cpu() {
    let Some(gpu) = common::need_gpu().map(Device::Cuda) else {
        return;
    };
    let pairs = fixture_pairs();
    let cfg = TrainConfig {
        epochs: 4,
        batch: 50,
        patience: 2,
        seed: 3,
        ..TrainConfig::default()
    };
    let jobs: Vec<Job> = [(0usize, 300usize, 330usize), (30, 250, 384), (100, 384, 0)]
        .iter()
        .enumerate()
        .map(|(m, &(a, b, v))| Job {
            model_id: m as u64 + 7,
            train: (a..b).collect(),
            val: (v > b).then(|| (b..v).collect()),
            init: Clip::init(pairs.d, pairs.k, m as u64),
            checkpoint: None,
        })
        .collect();
    let gpu_out = train(&gpu, &pairs, &cfg, &jobs);
    for (j, g) in jobs.iter().zip(&gpu_out) {
        let c = train(&Device::Cpu, &pairs, &cfg, std::slice::from_ref(j)).remove(0);
        let (e, name) = worst(&g.model, &c.model);
        eprintln!(
            "model {}: epochs cpu {} cuda {}, train loss cpu {:?} cuda {:?}, val cpu {:?} cuda {:?}, weights {e:.2e} ({name})",
            j.model_id, c.epochs, g.epochs, c.train_loss, g.train_loss, c.val_loss, g.val_loss
        );
        assert_eq!(c.epochs, g.epochs);
        assert_eq!(c.best_epoch, g.best_epoch);
        for (a, b) in c
            .train_loss
            .iter()
            .zip(&g.train_loss)
            .chain(c.val_loss.iter().zip(&g.val_loss))
        {
            assert!((a - b).abs() <= 1e-5 * a.abs(), "{a} vs {b}");
        }
        assert!(e <= 1e-4, "model {}: {name} {e}", j.model_id);
    }
}
