//! CLIP training benches: one epoch on 14,000 random pairs (text width 576 and 4096, image
//! width 512, batch 128, dropout 0.5, AdamW) on the CPU, and on CUDA when a device is present
//! (one model, and 16 models trained at once as a CV sweep does).

use criterion::{criterion_group, criterion_main, Criterion};
use niclip::clip::data::Pairs;
use niclip::clip::train::{Job, Progress, TrainConfig};
use niclip::clip::Clip;
use niclip::device::Device;
use std::time::Duration;

const N: usize = 14_000;
const K: usize = 512;

fn random_pairs(d: usize) -> Pairs {
    let mut s = 1u64;
    let mut next = || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        (niclip::rng::mix64(s) >> 11) as f32 / (1u64 << 53) as f32 - 0.5
    };
    let text = (0..N * d).map(|_| next()).collect();
    let images = (0..N * K).map(|_| next()).collect();
    Pairs::new(text, images, N, d, K)
}

fn clip(c: &mut Criterion) {
    let cfg = TrainConfig {
        epochs: 1,
        ..TrainConfig::default()
    };
    let mut g = c.benchmark_group("clip");
    g.sample_size(10).measurement_time(Duration::from_secs(30));
    for d in [576, 4096] {
        let pairs = random_pairs(d);
        let job = Job {
            model_id: 0,
            train: (0..N).collect(),
            val: None,
            init: Clip::init(d, K, 0),
            checkpoint: None,
        };
        g.bench_function(format!("epoch_{N}/d{d}_k{K}/cpu"), |b| {
            b.iter(|| {
                Device::Cpu
                    .train_clip(
                        &pairs,
                        &cfg,
                        std::slice::from_ref(&job),
                        false,
                        None,
                        &mut Progress::new(0, None, false),
                    )
                    .unwrap()[0]
                    .epochs
            })
        });
        cuda_benches(&mut g, &pairs, &cfg, &job);
    }
    g.finish();
}

fn cuda_benches(
    g: &mut criterion::BenchmarkGroup<criterion::measurement::WallTime>,
    pairs: &Pairs,
    cfg: &TrainConfig,
    job: &Job,
) {
    use niclip::device::cuda::{device_count, Gpu};
    if device_count() == 0 {
        eprintln!("skipped CUDA clip benches: no CUDA device");
        return;
    }
    let gpu = Device::Cuda(Gpu::open(0).unwrap());
    let d = pairs.d;
    for models in [1usize, 16] {
        let jobs: Vec<Job> = (0..models as u64)
            .map(|m| Job {
                model_id: m,
                ..job.clone()
            })
            .collect();
        g.bench_function(format!("epoch_{N}/d{d}_k{K}/cuda_{models}models"), |b| {
            b.iter(|| {
                gpu.train_clip(
                    pairs,
                    cfg,
                    &jobs,
                    false,
                    None,
                    &mut Progress::new(0, None, false),
                )
                .unwrap()
                .len()
            })
        });
    }
}

/// The row kernels of one residual head on a batch (128 × 512, dropout 0.5), forward and
/// backward, the InfoNCE loss and gradient of a batch, and AdamW over a model's parameters
/// (text width 576).
fn ops(c: &mut Criterion) {
    use niclip::clip::ops::{self, Dropout, Saved};
    let (n, k) = (128, K);
    let wave = |s: usize| -> Vec<f32> {
        (0..n * k)
            .map(|i| ((i * 7919 + s) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    };
    let (x, a, dy) = (wave(1), wave(2), wave(3));
    let (gamma, beta) = (vec![1.0f32; k], vec![0.0f32; k]);
    let drop = Dropout::new(0.5, 0, 0, 1, 3);
    let buf = || vec![0.0f32; n * k];
    let (mut xhat, mut y, mut mask, mut dgelu, mut dr, mut delta) =
        (buf(), buf(), buf(), buf(), buf(), buf());
    let mut rstd = vec![0.0; n];
    let mut g = c.benchmark_group("clip_ops");
    g.bench_function("residual_gelu_ln_forward/128x512", |b| {
        b.iter(|| {
            let saved = Saved {
                xhat: &mut xhat,
                rstd: &mut rstd,
                y: &mut y,
                mask: &mut mask,
                dgelu: &mut dgelu,
            };
            ops::residual_gelu_ln_forward(&x, &a, k, drop, &gamma, &beta, saved, true)
        })
    });
    g.bench_function("residual_ln_backward/128x512", |b| {
        b.iter(|| {
            ops::residual_ln_backward(
                &dy,
                &xhat,
                &rstd,
                Some(&dgelu),
                k,
                drop,
                &mask,
                &gamma,
                &mut dr,
                &mut delta,
            )
        })
    });
    let sim: Vec<f32> = (0..n * n)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let mut dlogits = vec![0.0f32; n * n];
    g.bench_function("info_nce/128x128", |b| {
        b.iter(|| ops::info_nce(&sim, n, 10.0, &mut dlogits))
    });
    let params = Clip::init(576, K, 0).params.len();
    let (mut p, grad, mut m, mut v) = (
        vec![0.1f32; params],
        vec![0.01f32; params],
        vec![0.0f32; params],
        vec![0.0f32; params],
    );
    g.bench_function(format!("adamw_step/{params}"), |b| {
        b.iter(|| niclip::clip::adamw::adamw_step(&mut p, &grad, &mut m, &mut v, 3, 5e-4, 0.1))
    });
    // The text projection's weight gradient and AdamW step at width 4096, fused.
    use niclip::clip::wgrad::{weight_grad_adamw, Packed};
    let din = 4096;
    let (delta, x) = (vec![0.01f32; n * K], vec![0.02f32; n * din]);
    let (mut w, mut m, mut v, mut gf) = (
        vec![0.1f32; K * din],
        vec![0.0f32; K * din],
        vec![0.0f32; K * din],
        vec![0.0f32; K * din],
    );
    let mut packed = Packed::new(n, K, din);
    let step = niclip::clip::adamw::AdamStep::new(5e-4, 0.1, 3);
    g.bench_function(format!("weight_grad_adamw/{n}x{K}x{din}"), |b| {
        b.iter(|| {
            let (w, m, v) = (&mut w, &mut m, &mut v);
            weight_grad_adamw(n, K, din, &delta, &x, w, m, v, step, &mut packed, &mut gf)
        })
    });
    g.finish();
}

criterion_group!(benches, clip, ops);
criterion_main!(benches);
