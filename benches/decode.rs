//! Decoding benches (CPU): Decoder set-up, one map's image features (NIfTI read, resample,
//! projection), the towers + posterior + noisy-OR for 1 and 1,000 maps. The decode ops after the
//! towers take microseconds a map, so they have no CUDA path (see BENCHMARKS.md).
//! Needs ../shared/data; prints why and measures nothing without it.

use criterion::{criterion_group, criterion_main, Criterion};
use niclip::brain::Image;
use niclip::clip::model::Clip;
use niclip::decode::{Decoder, DecoderAssets, Variant};
use std::path::PathBuf;
use std::time::Duration;

fn assets() -> Option<(DecoderAssets, PathBuf)> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let data = repo.join("../shared/data");
    if !data.is_dir() {
        eprintln!("skipped decode benches: ../shared/data is missing");
        return None;
    }
    let f = |n: &str| repo.join("tests/fixtures/decode").join(n);
    Some((
        DecoderAssets {
            model: f("model.safetensors"),
            vocabulary: f("vocabulary.txt"),
            vocabulary_emb: f("vocabulary_emb.npy"),
            vocabulary_prior: f("vocabulary_prior.npy"),
            ontology: data.join("cogat"),
            reduced: true,
            atlas: data.join("mni/HarvardOxford-cort-maxprob-thr25-2mm.nii.gz"),
            labels: true,
            cache_atlas: true,
        },
        data.join("maps/neurovault_10426_motor_left-vs-right_zmap.nii.gz"),
    ))
}

fn decoder(a: &DecoderAssets) -> Decoder {
    let clip = Clip::load(&a.model).unwrap();
    Decoder::new(Box::new(clip), a, None).unwrap()
}

fn decode(c: &mut Criterion) {
    let Some((assets, map)) = assets() else {
        return;
    };
    let mut g = c.benchmark_group("decode");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    g.bench_function("set-up (model, atlas cached, ontology, text tower)", |b| {
        b.iter(|| decoder(&assets))
    });
    let d = decoder(&assets);
    let v = Variant::default();
    g.bench_function(
        "image features, motor z-map 3 mm (read, resample, project)",
        |b| {
            b.iter(|| {
                let img = Image::read(&map).unwrap();
                d.image_features(&img, &v, &map).unwrap()
            })
        },
    );
    let img = Image::read(&map).unwrap();
    let feats = d.image_features(&img, &v, &map).unwrap();
    for n in [1usize, 1000] {
        let many: Vec<f32> = feats
            .iter()
            .copied()
            .cycle()
            .take(n * feats.len())
            .collect();
        let names: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        g.bench_function(format!("towers + posterior + noisy-OR, {n} maps"), |b| {
            b.iter(|| d.decode_features(&many, names.clone()))
        });
    }
    g.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
