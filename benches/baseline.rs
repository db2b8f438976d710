//! Baseline benches, CPU and CUDA side by side: the correlation decoder's z-maps on the
//! Neurosynth v7 corpus (titles, the reduced Cognitive Atlas task names), decoding one map,
//! and one GC-LDA iteration on the n-back/flanker studyset (authors' settings).
//! Needs ../shared/data; prints why and measures nothing without it.

use criterion::{criterion_group, criterion_main, Criterion};
use niclip::baseline::gclda::{Model, Params};
use niclip::baseline::neurosynth::{active_totals, correlate, standardize_rows, z_maps};
use niclip::baseline::train::{gclda_data, train_neurosynth, TrainOptions, TrainReport};
use niclip::brain::mkda::{ma_map, MkdaKernel, Rounding, Scratch};
use niclip::brain::Mask;
use niclip::corpus::{import, Corpus, Format, ImportOptions, Section};
use niclip::device::cuda;
use rayon::prelude::*;
use std::path::PathBuf;
use std::time::Duration;

fn corpus(format: Format, path: PathBuf, name: &str) -> Corpus {
    let out =
        std::env::temp_dir().join(format!("niclip-bench-{name}-{}.corpus", std::process::id()));
    import(format, &[path], &out, &ImportOptions::default()).unwrap();
    let c = Corpus::open(&out).unwrap();
    std::fs::remove_file(&out).ok();
    c
}

fn baseline(c: &mut Criterion) {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let data = repo.join("../shared/data");
    if !data.is_dir() {
        eprintln!("skipped baseline benches: ../shared/data is missing");
        return;
    }
    let vocab: Vec<String> = std::fs::read_to_string(
        data.join("cogat/reduced/cogatlas_tasks_concepts_bertrand_mini.csv"),
    )
    .unwrap()
    .lines()
    .skip(1)
    .map(|l| l.split(',').next().unwrap().to_string())
    .collect();
    let ns = corpus(Format::Neurosynth, data.join("corpus/neurosynth"), "ns");
    let opts = TrainOptions {
        sections: vec![Section::Title],
        ..TrainOptions::default()
    };
    let mut g = c.benchmark_group("baseline");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.bench_function("neurosynth_train_v7_cpu", |b| {
        b.iter(|| train_neurosynth(&ns, &vocab, &opts, &mut TrainReport::default()).unwrap())
    });
    // The counting + z alone, from prepared MA maps and selections.
    let mask = Mask::mni152_2mm();
    let kernel = MkdaKernel::for_grid(&mask.grid, 10.0, Rounding::Round);
    let idx: Vec<usize> = (0..ns.len()).filter(|&i| ns.peak_count(i) > 0).collect();
    let ma: Vec<Vec<u32>> = idx
        .par_iter()
        .map_init(
            || Scratch::new(&mask.grid),
            |s, &i| ma_map(&kernel, &mask, &ns.peaks_of(i).unwrap(), "s", s).unwrap(),
        )
        .collect();
    let total = active_totals(&ma, mask.len());
    let sel: Vec<Vec<u32>> = (1..=40u32)
        .map(|t| {
            (0..ma.len() as u32)
                .filter(|s| (s * 7919 + t * 104729) % (t * 13 + 20) == 0)
                .collect()
        })
        .collect();
    g.bench_function("z_maps_40_terms_cpu", |b| {
        b.iter(|| z_maps(&ma, &total, &sel, mask.len()))
    });
    let z = z_maps(&ma, &total, &sel, mask.len());
    let rows = standardize_rows(&z, mask.len());
    let map: Vec<f32> = (0..mask.len()).map(|v| ((v * 37) % 101) as f32).collect();
    g.bench_function("decode_40_terms_cpu", |b| {
        b.iter(|| correlate(&rows, mask.len(), &map))
    });
    if cuda::device_count() > 0 {
        let gpu = cuda::Gpu::open(0).unwrap();
        use niclip::baseline::cuda::{correlate_cuda, z_maps_cuda};
        g.bench_function("z_maps_40_terms_cuda", |b| {
            b.iter(|| z_maps_cuda(&gpu, &ma, &total, &sel, mask.len()).unwrap())
        });
        g.bench_function("decode_40_terms_cuda", |b| {
            b.iter(|| correlate_cuda(&gpu, &rows, mask.len(), &map).unwrap())
        });
    } else {
        eprintln!("no CUDA device: CUDA benches skipped");
    }
    // GC-LDA: one iteration (words, peaks, regions, densities, log-likelihood).
    let nf = corpus(
        Format::Studyset,
        data.join("corpus/nimare/nback_vs_flanker_studyset_2026-07"),
        "nf",
    );
    let words: Vec<String> =
        std::fs::read_to_string(repo.join("tests/fixtures/baseline/vocabulary.txt"))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
    let (d, _) = gclda_data(
        &nf,
        &words,
        &TrainOptions::default(),
        &mut TrainReport::default(),
    )
    .unwrap();
    let mut m = Model::new(
        Params {
            n_iters: 0,
            ..Params::default()
        },
        d,
    )
    .unwrap();
    m.fit(|_, _| {}).unwrap();
    g.bench_function("gclda_iteration_studyset_cpu", |b| {
        b.iter(|| m.step().unwrap())
    });
    g.finish();
}

criterion_group!(benches, baseline);
criterion_main!(benches);
