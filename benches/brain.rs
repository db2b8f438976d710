//! Brain-space benches, CPU and CUDA side by side: MKDA maps, atlas set-up, fused image
//! features (MKDA, KDA, ALE fwhm 10) of all Neurosynth v7 studies on a 512-map atlas, and
//! dense projection.
//! Needs ../shared/data and tests/fixtures/brain; prints why and measures nothing without them.

use criterion::{criterion_group, criterion_main, Criterion};
use niclip::brain::atlas_cache::load_or_build;
use niclip::brain::features::{image_features_cpu, Peaks};
use niclip::brain::kernels::{AleKernel, AleWidth, MaKernel};
use niclip::brain::mkda::{ma_map, MkdaKernel, Rounding, Scratch};
use niclip::brain::{Atlas, Image, Mask};
use niclip::corpus::{import, Corpus, Format, ImportOptions};
use rayon::prelude::*;
use std::path::PathBuf;
use std::time::Duration;

fn inputs() -> Option<(Peaks, PathBuf, PathBuf)> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let data = repo.join("../shared/data/corpus/neurosynth");
    let atlas = repo.join("tests/fixtures/brain/atlas_gauss512_2mm.nii.gz");
    let maps = repo.join("tests/fixtures/brain/proj_maps_2mm.nii.gz");
    if !data.is_dir() || !atlas.is_file() {
        eprintln!("skipped brain benches: ../shared/data or tests/fixtures/brain is missing");
        return None;
    }
    let corpus = std::env::temp_dir().join(format!("niclip-bench-{}.corpus", std::process::id()));
    import(
        Format::Neurosynth,
        &[data],
        &corpus,
        &ImportOptions::default(),
    )
    .unwrap();
    let (peaks, _) = Corpus::open(&corpus).unwrap().peaks_all().unwrap();
    std::fs::remove_file(&corpus).ok();
    Some((peaks, atlas, maps))
}

fn brain(c: &mut Criterion) {
    let Some((peaks, atlas_path, maps_path)) = inputs() else {
        return;
    };
    let mask = Mask::mni152_2mm();
    let kernel = MkdaKernel::for_grid(&mask.grid, 10.0, Rounding::Round);
    let n = peaks.len();
    // The image-features rows, one per kernel: the MKDA row keeps its old name.
    let ma_kernels = [
        ("", MaKernel::Mkda(kernel.clone())),
        ("kda_", MaKernel::Kda(kernel.clone())),
        (
            "ale_fwhm10_",
            MaKernel::Ale(
                AleKernel::new(AleWidth::Fwhm(10.0), &mask.grid, Rounding::Round).unwrap(),
            ),
        ),
    ];

    let mut g = c.benchmark_group("brain");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function(format!("ma_maps/neurosynth_{n}/cpu"), |b| {
        b.iter(|| {
            (0..n)
                .into_par_iter()
                .map_init(
                    || Scratch::new(&mask.grid),
                    |s, i| {
                        ma_map(&kernel, &mask, peaks.study(i), &peaks.ids[i], s)
                            .unwrap()
                            .len()
                    },
                )
                .sum::<usize>()
        })
    });
    g.bench_function("atlas_setup/gauss512/cold", |b| {
        b.iter(|| {
            Atlas::from_image(&Image::read(&atlas_path).unwrap(), false, &atlas_path).unwrap()
        })
    });
    let cache = std::env::temp_dir().join(format!("niclip-bench-cache-{}", std::process::id()));
    let cached = || {
        load_or_build(Some(&cache), &atlas_path, false, None, || {
            Atlas::from_image(&Image::read(&atlas_path)?, false, &atlas_path)
        })
        .unwrap()
    };
    cached();
    g.bench_function("atlas_setup/gauss512/cached", |b| b.iter(cached));
    std::fs::remove_dir_all(&cache).ok();
    let atlas = Atlas::read(&atlas_path, false).unwrap();
    for (tag, ma) in &ma_kernels {
        g.bench_function(
            format!("image_features/{tag}neurosynth_{n}_gauss512/cpu"),
            |b| b.iter(|| image_features_cpu(ma, &mask, &atlas, &peaks).unwrap()),
        );
    }
    let maps = Image::read(&maps_path).unwrap();
    g.bench_function(
        format!("project_dense/{}maps_gauss512/cpu", maps.n_vols),
        |b| b.iter(|| atlas.project_image(&maps)),
    );

    if niclip::device::cuda::device_count() == 0 {
        eprintln!("skipped CUDA benches: no CUDA device");
    } else {
        let gpu = niclip::device::cuda::Gpu::open(0).unwrap();
        for (tag, ma) in &ma_kernels {
            g.bench_function(
                format!("image_features/{tag}neurosynth_{n}_gauss512/cuda"),
                |b| {
                    b.iter(|| {
                        niclip::brain::features_cuda::image_features_cuda(
                            &gpu, ma, &mask, &atlas, &peaks,
                        )
                        .unwrap()
                    })
                },
            );
        }
    }
    g.finish();
}

/// Peak-level augmentation of every Neurosynth study (jitter + dropout + false foci), one epoch,
/// CPU and CUDA (`brain::augment`, `kernels/augment.cu`).
fn augment(c: &mut Criterion) {
    use niclip::brain::augment::AugmentSpec;
    use niclip::brain::augment::{augment_peaks_cpu, cuda::augment_peaks_cuda, study_key};
    let Some((peaks, _, _)) = inputs() else {
        return;
    };
    let mask = Mask::mni152_2mm();
    let keys: Vec<u64> = peaks.ids.iter().map(|id| study_key(id)).collect();
    let spec = AugmentSpec::parse("jitter:sigma=4,dropout:p=0.1,foci:k=2").unwrap();
    let n = peaks.len();
    let mut g = c.benchmark_group("brain");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.bench_function(
        format!("augment/jitter_dropout_foci/neurosynth_{n}/cpu"),
        |b| b.iter(|| augment_peaks_cpu(&spec, &peaks, &keys, &mask, 1, 0).unwrap()),
    );
    if niclip::device::cuda::device_count() > 0 {
        let gpu = niclip::device::cuda::Gpu::open(0).unwrap();
        g.bench_function(
            format!("augment/jitter_dropout_foci/neurosynth_{n}/cuda"),
            |b| b.iter(|| augment_peaks_cuda(&gpu, &spec, &peaks, &keys, &mask, 1, 0).unwrap()),
        );
    }
    g.finish();
}

criterion_group!(benches, brain, augment);
criterion_main!(benches);
