//! Text-engine benches (CPU; the CUDA path will sit beside it): SmolLM2-135M-Instruct Q4_1
//! load and forward passes of 512-token chunks, all-MiniLM-L6-v2 on Neurosynth titles, and the
//! attention op alone. Needs the real models (NICLIP_SMOLLM_GGUF, NICLIP_MINILM_DIR or
//! ~/.cache/niclip/models/); prints why and measures nothing without them.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use niclip::device::Device;
use niclip::text::ops::{attention, AttnMask, Heads};
use niclip::text::{EmbedOptions, TextModel};
use std::path::PathBuf;
use std::time::Duration;

fn model_path(var: &str, name: &str) -> Option<PathBuf> {
    let p = std::env::var_os(var).map(PathBuf::from).or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/niclip/models").join(name))
    })?;
    p.exists().then_some(p).or_else(|| {
        eprintln!("skipped {name} benches: set {var}");
        None
    })
}

fn fixture_lines(name: &str) -> Vec<String> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/text")
        .join(name);
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn text(c: &mut Criterion) {
    let mut g = c.benchmark_group("text");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(10))
        .warm_up_time(Duration::from_secs(1));

    // Attention of one 512-token sequence with SmolLM2's shapes (9 query heads, 3 kv heads, 64 wide).
    let heads = Heads {
        nh: 9,
        nkv: 3,
        hd: 64,
    };
    let len = 512;
    let q: Vec<f32> = (0..len * 9 * 64)
        .map(|i| ((i * 7919 % 1000) as f32 / 1000.0) - 0.5)
        .collect();
    let k: Vec<f32> = (0..len * 3 * 64)
        .map(|i| ((i * 104729 % 1000) as f32 / 1000.0) - 0.5)
        .collect();
    let mask = AttnMask {
        causal: true,
        window: None,
    };
    g.throughput(Throughput::Elements(len as u64));
    g.bench_function("attention/causal_512_gqa9x3/cpu", |b| {
        b.iter(|| attention(&q, &k, &k, heads, mask))
    });

    if let Some(gguf) = model_path("NICLIP_SMOLLM_GGUF", "SmolLM2-135M-Instruct.Q4_1.gguf") {
        g.bench_function("smollm2_135m_q4_1/load/cpu", |b| {
            b.iter(|| TextModel::load(&gguf, None, &Device::Cpu).unwrap())
        });
        let m = TextModel::load(&gguf, None, &Device::Cpu).unwrap();
        // Two chunks of 512 real tokens cut from the abstracts.
        let all: Vec<u32> = m
            .tokenize(
                &fixture_lines("smollm_abstracts.txt")
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
            )
            .unwrap()
            .concat();
        let seqs: Vec<&[u32]> = all.chunks(512).take(2).collect();
        g.throughput(Throughput::Elements(1024));
        g.bench_function("smollm2_135m_q4_1/forward_2x512_tokens/cpu", |b| {
            b.iter(|| m.hidden_states(&seqs))
        });
    }
    if let Some(dir) = model_path("NICLIP_MINILM_DIR", "all-MiniLM-L6-v2") {
        let m = TextModel::load(&dir, None, &Device::Cpu).unwrap();
        let titles = fixture_lines("minilm_titles.txt");
        let titles: Vec<&str> = titles.iter().map(String::as_str).collect();
        g.throughput(Throughput::Elements(titles.len() as u64));
        let opts = EmbedOptions {
            max_length: None,
            batch: 64,
            normalize: true,
        };
        g.bench_function("minilm_l6/embed_200_titles/cpu", |b| {
            b.iter(|| m.embed(&titles, &opts).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, text);
criterion_main!(benches);
