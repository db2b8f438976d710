//! Text-engine benches. CPU: SmolLM2-135M-Instruct Q4_1 load and forward passes of 512-token
//! chunks, all-MiniLM-L6-v2 on Neurosynth titles, and the attention op alone; needs the real
//! models (NICLIP_SMOLLM_GGUF, NICLIP_MINILM_DIR or ~/.cache/niclip/models/) and prints why and
//! measures nothing without them.
//!
//! CUDA (group `text_cuda`, skipped with a message without a device): tokens/s of embedding one
//! 8,192-token chunk (forward + pooling) through random-weight bf16 decoders of SmolLM2-135M's
//! and Mistral-7B's shapes (32 layers, 4096 wide, 14336 MLP, 32/8 heads of 128, sliding window
//! 4096; 14.5 GB of weights), the attention kernel alone at Mistral-7B's shapes, and the real
//! SmolLM2 when present. The Mistral-7B row (goal: ≥ 20,000 tokens/s on an H100) alone:
//!
//! ```text
//! cargo bench --bench text -- mistral7b
//! ```
//!
//! A filter given on the command line also skips building the models it does not select.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use niclip::device::cuda::{self, Gpu};
use niclip::device::Device;
use niclip::text::cuda::{self as text_cuda, AttnPlan, CudaText};
use niclip::text::decoder::{rope_inv_freq, DecoderConfig};
use niclip::text::ops::{attention, AttnMask, Heads};
use niclip::text::{EmbedOptions, TextModel, TextNet};
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
            b.iter(|| m.hidden_states(&seqs).unwrap())
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

/// Whether a bench id is selected by the command line's filters (substring match; criterion's
/// own filter then decides exactly), so that `-- mistral7b` does not build the other models.
fn selected(id: &str) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    filters.is_empty() || filters.iter().any(|f| id.contains(f.as_str()))
}

/// A Llama/Mistral config of the given shape (no checkpoint: the weights are random).
#[allow(clippy::too_many_arguments)]
fn decoder_shape(
    model_type: &str,
    vocab: usize,
    hidden: usize,
    ff: usize,
    layers: usize,
    heads: Heads,
    theta: f64,
    window: Option<usize>,
    max_positions: usize,
) -> DecoderConfig {
    DecoderConfig {
        model_type: model_type.into(),
        vocab,
        hidden,
        ff,
        layers,
        heads,
        eps: 1e-5,
        inv_freq: rope_inv_freq(heads.hd, theta, &serde_json::Map::new(), max_positions).unwrap(),
        window,
        max_positions,
        attention_bias: false,
        mlp_bias: false,
    }
}

fn text_cuda(c: &mut Criterion) {
    if cuda::device_count() == 0 {
        eprintln!("skipped text_cuda benches: no CUDA device");
        return;
    }
    let mut g = c.benchmark_group("text_cuda");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .warm_up_time(Duration::from_secs(3));
    const CHUNK: usize = 8192;
    let smollm2 = decoder_shape(
        "llama",
        49152,
        576,
        1536,
        30,
        Heads {
            nh: 9,
            nkv: 3,
            hd: 64,
        },
        1e5,
        None,
        8192,
    );
    let mistral7b = decoder_shape(
        "mistral",
        32000,
        4096,
        14336,
        32,
        Heads {
            nh: 32,
            nkv: 8,
            hd: 128,
        },
        1e4,
        Some(4096),
        32768,
    );
    // Random token ids of one chunk (any ids do: the cost does not depend on them).
    let ids: Vec<u32> = (0..CHUNK as u64)
        .map(|i| ((i * 2_654_435_761) % 32000) as u32)
        .collect();
    g.throughput(Throughput::Elements(CHUNK as u64));
    for (name, cfg) in [
        ("smollm2_135m_shaped_bf16", smollm2),
        ("mistral7b_shaped_bf16", mistral7b),
    ] {
        let id = format!("{name}/embed_{CHUNK}_tokens/cuda");
        if !selected(&format!("text_cuda/{id}")) {
            continue;
        }
        let m = CudaText::random_decoder(&Gpu::open(0).unwrap(), cfg, 7).unwrap();
        let chunks = [(0usize, &ids[..])];
        g.bench_function(id, |b| {
            b.iter(|| m.pooled_sums(&chunks, 1, 1, &|_| {}).unwrap())
        });
    }

    // One layer's attention at Mistral-7B's shapes: its share of the forward pass.
    let id = format!("attention/causal_{CHUNK}_gqa32x8_hd128_window4096_mistral7b/cuda_bf16");
    if selected(&format!("text_cuda/{id}")) {
        let gpu = Gpu::open(0).unwrap();
        let heads = Heads {
            nh: 32,
            nkv: 8,
            hd: 128,
        };
        let w = (heads.nh + 2 * heads.nkv) * heads.hd;
        let mut qkv = gpu.zeros::<u16>(CHUNK * w).unwrap();
        text_cuda::fill_uniform_bf16(&gpu, &mut qkv, CHUNK * w, 3, 2.0).unwrap();
        let mut out = gpu.zeros::<u16>(CHUNK * heads.nh * heads.hd).unwrap();
        let mask = AttnMask {
            causal: true,
            window: Some(4096),
        };
        let plan = AttnPlan::new(&gpu, &[0, CHUNK], mask).unwrap();
        let (q0, k0) = (heads.nh * heads.hd, (heads.nh + heads.nkv) * heads.hd);
        g.bench_function(id, |b| {
            b.iter(|| {
                text_cuda::attention(
                    &gpu,
                    &qkv.slice(..),
                    &qkv.slice(q0..),
                    &qkv.slice(k0..),
                    w,
                    w,
                    &mut out,
                    heads.nh * heads.hd,
                    &plan,
                    heads,
                    mask,
                )
                .unwrap();
                gpu.sync().unwrap();
            })
        });
    }

    let id = "smollm2_135m_q4_1/forward_2x512_tokens/cuda";
    if selected(&format!("text_cuda/{id}")) {
        if let Some(gguf) = model_path("NICLIP_SMOLLM_GGUF", "SmolLM2-135M-Instruct.Q4_1.gguf") {
            let m = TextModel::load(&gguf, None, &Device::Cuda(Gpu::open(0).unwrap())).unwrap();
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
            g.bench_function(id, |b| b.iter(|| m.hidden_states(&seqs).unwrap()));
        }
    }
    g.finish();
}

criterion_group!(benches, text, text_cuda);
criterion_main!(benches);
