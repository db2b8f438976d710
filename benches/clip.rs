//! CLIP training benches: one epoch on 14,000 random pairs (text width 576 and 4096, image
//! width 512, batch 128, dropout 0.5, AdamW) on the CPU, and on CUDA when a device is present
//! (one model, and 16 models trained at once as a CV sweep does).

use criterion::{criterion_group, criterion_main, Criterion};
use niclip::clip::data::Pairs;
use niclip::clip::train::{train_cpu, Job, Progress, TrainConfig};
use niclip::clip::Clip;
use std::time::Duration;

const N: usize = 14_000;
const K: usize = 512;

fn random_pairs(d: usize) -> Pairs {
    let mut s = 1u64;
    let mut next = || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        (niclip::clip::ops::mix64(s) >> 11) as f32 / (1u64 << 53) as f32 - 0.5
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
                train_cpu(
                    &pairs,
                    &cfg,
                    &job,
                    false,
                    &mut Progress::new(0, None, false),
                )
                .unwrap()
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
    let gpu = Gpu::new(0).unwrap();
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
                niclip::clip::cuda::train_many(
                    &gpu,
                    pairs,
                    cfg,
                    &jobs,
                    false,
                    &mut Progress::new(0, None, false),
                )
                .unwrap()
                .len()
            })
        });
    }
}

criterion_group!(benches, clip);
criterion_main!(benches);
