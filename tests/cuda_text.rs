//! Parity of the CUDA text engine (kernels/llm.cu via src/text/cuda.rs) with the CPU: every
//! kernel against its op in `niclip::text::ops` on fresh random inputs, into NaN-poisoned
//! outputs (f32 variants within ~1e-5, bf16 ones within bf16 rounding), and whole models
//! (`TextModel` on cuda:0 vs on the CPU) on the tiny Llama/Mistral fixtures and, when present,
//! all-MiniLM-L6-v2 and SmolLM2 (pooled embeddings: cosine ≥ 0.999).
//! GPU tests skip where there is no CUDA device (`NICLIP_REQUIRE_GPU=1` fails them); the NVRTC
//! test needs only libnvrtc.

mod common;

use niclip::device::cuda::{self, from_bf16, to_bf16, Elem, Gpu, RowMajorGemm};
use niclip::device::Device;
use niclip::rng::SplitMix64;
use niclip::text::cuda::{
    add_bias, attention, bert_embed, embed_gather, gelu_bias, pool_rows, residual_layer_norm,
    rms_norm, rope, swiglu, AttnPlan, CudaText, RopeDev,
};
use niclip::text::decoder::DecoderConfig;
use niclip::text::ops::{self, AttnMask, Heads, RopeTable};
use niclip::text::{EmbedOptions, TextModel, TextNet};
use std::path::{Path, PathBuf};

/// `n` values uniform in [−amp, amp) (24 random bits each, as the kernels draw).
fn uniform_vec(rng: &mut SplitMix64, n: usize, amp: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u = (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
            (2.0 * u - 1.0) * amp
        })
        .collect()
}

/// Values exactly representable in bf16 (so CPU and GPU see the same inputs).
fn bf16_round(x: &[f32]) -> Vec<f32> {
    from_bf16(&to_bf16(x))
}

/// A device buffer of NaN (f32) or NaN bits (bf16): a kernel that skips an element shows.
fn poisoned<T: Elem>(g: &Gpu, n: usize) -> cudarc::driver::CudaSlice<T> {
    g.htod(&vec![T::NAN; n]).unwrap()
}

fn down_f32(g: &Gpu, b: &cudarc::driver::CudaSlice<f32>, n: usize) -> Vec<f32> {
    g.dtoh(b, n).unwrap()
}

fn down_bf16(g: &Gpu, b: &cudarc::driver::CudaSlice<u16>, n: usize) -> Vec<f32> {
    from_bf16(&g.dtoh(b, n).unwrap())
}

/// max over rows of ‖a − b‖∞ / max(‖b‖∞, tiny); fails on NaN.
fn row_rel(a: &[f32], b: &[f32], cols: usize) -> f64 {
    assert_eq!(a.len(), b.len(), "shapes differ");
    assert!(a.iter().all(|v| v.is_finite()), "non-finite output");
    a.chunks(cols)
        .zip(b.chunks(cols))
        .map(|(x, y)| {
            let scale = y
                .iter()
                .fold(0.0f64, |m, v| m.max(v.abs() as f64))
                .max(1e-30);
            x.iter()
                .zip(y)
                .fold(0.0f64, |m, (p, q)| m.max((p - q).abs() as f64))
                / scale
        })
        .fold(0.0, f64::max)
}

fn check(what: &str, got: &[f32], want: &[f32], cols: usize, tol: f64) {
    let e = row_rel(got, want, cols);
    eprintln!("{what}: max row relative error {e:.2e} (tolerance {tol:.0e})");
    assert!(
        e <= tol,
        "{what}: max row relative error {e:.2e} > {tol:.0e}"
    );
}

/// Whole-model hidden states, bf16 weights and GEMM operands against the f32 CPU: the relative
/// error of all rows together (‖Δ‖ / ‖want‖) within `tol`, and no row beyond 5·tol. bf16
/// rounding has a heavy tail over a model's rows: the emulated device measured tiny_mistral with
/// its LoRA at 2.2e-2 overall with one row in 354 at 1.0e-1 and the rest spread over every
/// position (no pattern by distance to the window); a wrong mask or window errs on every row
/// past it.
fn check_hidden(what: &str, got: &[f32], want: &[f32], cols: usize, tol: f64) {
    assert!(
        got.iter().all(|v| v.is_finite()),
        "{what}: non-finite output"
    );
    let sq = |x: f64| x * x;
    let diff: f64 = got.iter().zip(want).map(|(a, b)| sq((a - b) as f64)).sum();
    let norm: f64 = want.iter().map(|b| sq(*b as f64)).sum();
    let overall = (diff / norm.max(1e-300)).sqrt();
    let worst = row_rel(got, want, cols);
    eprintln!(
        "{what}: relative error {overall:.2e} overall (tolerance {tol:.0e}), worst row {worst:.2e}"
    );
    assert!(
        overall <= tol,
        "{what}: relative error {overall:.2e} > {tol:.0e}"
    );
    assert!(
        worst <= 5.0 * tol,
        "{what}: a row's relative error {worst:.2e} > {:.0e}",
        5.0 * tol
    );
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-300)
}

/// Packed sequence starts of these lengths.
fn starts_of(lens: &[usize]) -> Vec<usize> {
    let mut s = vec![0];
    for l in lens {
        s.push(s.last().unwrap() + l);
    }
    s
}

#[test]
fn nvrtc_compiles_llm_kernels() {
    if !common::need_nvrtc() {
        return;
    }
    let ptx = cuda::nvrtc_compile("llm", "compute_90")
        .unwrap_or_else(|e| panic!("{e}"))
        .to_src();
    for f in [
        "embed_gather",
        "bert_embed",
        "rms_norm_f32",
        "rms_norm_bf16",
        "residual_layer_norm",
        "add_bias_f32",
        "add_bias_bf16",
        "gelu_bias_f32",
        "gelu_bias_bf16",
        "swiglu_f32",
        "swiglu_bf16",
        "rope_f32",
        "rope_bf16",
        "attention_f32_d64",
        "attention_f32_d128",
        "attention_bf16_d64",
        "attention_bf16_d128",
        "pool_rows",
        "fill_uniform_bf16",
    ] {
        assert!(ptx.contains(&format!(".entry {f}")), "no entry {f}");
    }
}

#[test]
fn embeddings_gather_exactly() {
    let Some(g) = common::need_gpu() else { return };
    let mut rng = SplitMix64(1);
    let (vocab, d, n, max_pos) = (300, 70, 123, 40);
    let table = to_bf16(&uniform_vec(&mut rng, vocab * d, 1.0));
    let pos_table = to_bf16(&uniform_vec(&mut rng, max_pos * d, 0.3));
    let type0 = uniform_vec(&mut rng, d, 0.2);
    let ids: Vec<i32> = (0..n).map(|_| rng.below(vocab) as i32).collect();
    let positions: Vec<i32> = (0..n).map(|_| rng.below(max_pos) as i32).collect();
    let (table_f, pos_f) = (from_bf16(&table), from_bf16(&pos_table));
    let (td, pd, t0) = (
        g.htod(&table).unwrap(),
        g.htod(&pos_table).unwrap(),
        g.htod(&type0).unwrap(),
    );
    let (idd, posd) = (g.htod(&ids).unwrap(), g.htod(&positions).unwrap());

    let mut out = poisoned::<f32>(&g, n * d);
    embed_gather(&g, &td, &idd, n, d, &mut out).unwrap();
    let want: Vec<f32> = ids
        .iter()
        .flat_map(|&i| table_f[i as usize * d..][..d].to_vec())
        .collect();
    assert_eq!(down_f32(&g, &out, n * d), want, "embed_gather");

    let mut out = poisoned::<f32>(&g, n * d);
    bert_embed(&g, &td, &pd, &t0, &idd, &posd, n, d, &mut out).unwrap();
    let want: Vec<f32> = ids
        .iter()
        .zip(&positions)
        .flat_map(|(&i, &p)| {
            (0..d)
                .map(|c| table_f[i as usize * d + c] + type0[c] + pos_f[p as usize * d + c])
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(down_f32(&g, &out, n * d), want, "bert_embed");
}

#[test]
fn norms_match_cpu() {
    let Some(g) = common::need_gpu() else { return };
    let mut rng = SplitMix64(2);
    for (rows, d) in [(1, 64), (37, 200), (9, 4096), (5, 384)] {
        let x = uniform_vec(&mut rng, rows * d, 3.0);
        let w = uniform_vec(&mut rng, d, 1.5);
        let mut want = vec![0.0; rows * d];
        ops::rms_norm(&x, &w, 1e-6, &mut want);
        let (xd, wd) = (g.htod(&x).unwrap(), g.htod(&w).unwrap());
        let mut out = poisoned::<f32>(&g, rows * d);
        rms_norm(&g, &xd, &wd, 1e-6, rows, d, &mut out).unwrap();
        check(
            &format!("rms_norm_f32 {rows}x{d}"),
            &down_f32(&g, &out, rows * d),
            &want,
            d,
            1e-5,
        );
        let mut outb = poisoned::<u16>(&g, rows * d);
        rms_norm(&g, &xd, &wd, 1e-6, rows, d, &mut outb).unwrap();
        check(
            &format!("rms_norm_bf16 {rows}x{d}"),
            &down_bf16(&g, &outb, rows * d),
            &want,
            d,
            4e-3,
        );

        // LayerNorm: plain (as ops::layer_norm), then with a residual and a bias added first.
        let (y, bias) = (
            uniform_vec(&mut rng, rows * d, 2.0),
            uniform_vec(&mut rng, d, 0.5),
        );
        let b = uniform_vec(&mut rng, d, 0.5);
        let (yd, biasd, bd) = (
            g.htod(&y).unwrap(),
            g.htod(&bias).unwrap(),
            g.htod(&b).unwrap(),
        );
        let mut want = x.clone();
        ops::layer_norm(&mut want, &w, &b, 1e-12);
        let mut xg = g.htod(&x).unwrap();
        residual_layer_norm(&g, &mut xg, None, None, &wd, &bd, 1e-12, rows, d, None).unwrap();
        check(
            &format!("layer_norm {rows}x{d}"),
            &down_f32(&g, &xg, rows * d),
            &want,
            d,
            1e-5,
        );

        let mut want: Vec<f32> = x
            .iter()
            .zip(&y)
            .enumerate()
            .map(|(i, (a, c))| a + c + bias[i % d])
            .collect();
        ops::layer_norm(&mut want, &w, &b, 1e-12);
        let mut xg = g.htod(&x).unwrap();
        let mut xb = poisoned::<u16>(&g, rows * d);
        residual_layer_norm(
            &g,
            &mut xg,
            Some(&yd),
            Some(&biasd),
            &wd,
            &bd,
            1e-12,
            rows,
            d,
            Some(&mut xb),
        )
        .unwrap();
        let got = down_f32(&g, &xg, rows * d);
        check(
            &format!("residual_layer_norm {rows}x{d}"),
            &got,
            &want,
            d,
            1e-5,
        );
        assert_eq!(
            g.dtoh(&xb, rows * d).unwrap(),
            to_bf16(&got),
            "the bf16 copy is the rounded f32 result"
        );
    }
}

#[test]
fn elementwise_kernels_match_cpu() {
    let Some(g) = common::need_gpu() else { return };
    let mut rng = SplitMix64(3);
    let (rows, ff) = (53, 300);
    let gu = bf16_round(&uniform_vec(&mut rng, rows * 2 * ff, 6.0));
    let want = ops::swiglu(&gu, ff);
    let gud = g.htod(&gu).unwrap();
    let mut out = poisoned::<f32>(&g, rows * ff);
    swiglu(&g, &gud, rows, ff, &mut out).unwrap();
    check(
        "swiglu_f32",
        &down_f32(&g, &out, rows * ff),
        &want,
        ff,
        1e-6,
    );
    let gub = g.htod(&to_bf16(&gu)).unwrap();
    let mut outb = poisoned::<u16>(&g, rows * ff);
    swiglu(&g, &gub, rows, ff, &mut outb).unwrap();
    check(
        "swiglu_bf16",
        &down_bf16(&g, &outb, rows * ff),
        &want,
        ff,
        4e-3,
    );

    let x = bf16_round(&uniform_vec(&mut rng, rows * ff, 4.0));
    let b = uniform_vec(&mut rng, ff, 1.0);
    let mut want: Vec<f32> = x.iter().enumerate().map(|(i, v)| v + b[i % ff]).collect();
    let with_bias = want.clone();
    ops::gelu(&mut want);
    let bd = g.htod(&b).unwrap();
    let mut xd = g.htod(&x).unwrap();
    gelu_bias(&g, &mut xd, Some(&bd), rows, ff).unwrap();
    check(
        "gelu_bias_f32",
        &down_f32(&g, &xd, rows * ff),
        &want,
        ff,
        1e-6,
    );
    let mut xd = g.htod(&with_bias).unwrap();
    gelu_bias(&g, &mut xd, None, rows, ff).unwrap();
    check(
        "gelu_f32 (no bias)",
        &down_f32(&g, &xd, rows * ff),
        &want,
        ff,
        1e-6,
    );
    let mut xb = g.htod(&to_bf16(&x)).unwrap();
    gelu_bias(&g, &mut xb, Some(&bd), rows, ff).unwrap();
    check(
        "gelu_bias_bf16",
        &down_bf16(&g, &xb, rows * ff),
        &want,
        ff,
        1e-2,
    );

    let mut xd = g.htod(&x).unwrap();
    add_bias(&g, &mut xd, &bd, rows, ff).unwrap();
    assert_eq!(down_f32(&g, &xd, rows * ff), with_bias, "add_bias_f32");
    let mut xb = g.htod(&to_bf16(&x)).unwrap();
    add_bias(&g, &mut xb, &bd, rows, ff).unwrap();
    assert_eq!(
        g.dtoh(&xb, rows * ff).unwrap(),
        to_bf16(&with_bias),
        "add_bias_bf16"
    );
}

#[test]
fn rope_matches_cpu() {
    let Some(g) = common::need_gpu() else { return };
    let mut rng = SplitMix64(4);
    let lens = [1usize, 17, 64, 5];
    let n: usize = lens.iter().sum();
    let positions: Vec<usize> = lens.iter().flat_map(|&l| 0..l).collect();
    let pos_i32: Vec<i32> = positions.iter().map(|&p| p as i32).collect();
    let posd = g.htod(&pos_i32).unwrap();
    for (nh, nkv, hd, theta) in [
        (4usize, 2usize, 16usize, 1e6f64),
        (9, 3, 64, 1e5),
        (8, 8, 128, 1e4),
    ] {
        let inv: Vec<f32> = (0..hd / 2)
            .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / hd as f32) / 2.0)
            .collect();
        let table = RopeTable::new(&inv, 64);
        let dev = RopeDev::new(&g, &inv, 64).unwrap();
        // A fused qkv buffer: q and k heads rotated in one call, v untouched.
        let w = (nh + 2 * nkv) * hd;
        let qkv = uniform_vec(&mut rng, n * w, 2.0);
        let mut q: Vec<f32> = qkv.chunks(w).flat_map(|r| r[..nh * hd].to_vec()).collect();
        let mut k: Vec<f32> = qkv
            .chunks(w)
            .flat_map(|r| r[nh * hd..(nh + nkv) * hd].to_vec())
            .collect();
        ops::rope(&mut q, nh, hd, &positions, &table);
        ops::rope(&mut k, nkv, hd, &positions, &table);
        let want: Vec<f32> = qkv
            .chunks(w)
            .enumerate()
            .flat_map(|(t, r)| {
                let mut row = q[t * nh * hd..][..nh * hd].to_vec();
                row.extend_from_slice(&k[t * nkv * hd..][..nkv * hd]);
                row.extend_from_slice(&r[(nh + nkv) * hd..]);
                row
            })
            .collect();
        let mut xd = g.htod(&qkv).unwrap();
        rope(&g, &mut xd, w, nh + nkv, hd, &posd, &dev, n).unwrap();
        check(
            &format!("rope_f32 {nh}/{nkv}x{hd}"),
            &down_f32(&g, &xd, n * w),
            &want,
            w,
            1e-6,
        );
        let mut xb = g.htod(&to_bf16(&qkv)).unwrap();
        rope(&g, &mut xb, w, nh + nkv, hd, &posd, &dev, n).unwrap();
        check(
            &format!("rope_bf16 {nh}/{nkv}x{hd}"),
            &down_bf16(&g, &xb, n * w),
            &want,
            w,
            1e-2,
        );
    }
}

#[test]
fn attention_matches_cpu() {
    let Some(g) = common::need_gpu() else { return };
    let mut rng = SplitMix64(5);
    let lens = [1usize, 17, 100, 33, 250, 16];
    let starts = starts_of(&lens);
    let n = *starts.last().unwrap();
    let masks = [
        AttnMask {
            causal: true,
            window: None,
        },
        AttnMask {
            causal: true,
            window: Some(16),
        },
        AttnMask {
            causal: true,
            window: Some(40),
        },
        AttnMask {
            causal: false,
            window: None,
        },
    ];
    for (nh, nkv, hd) in [
        (4usize, 2usize, 16usize),
        (9, 3, 64),
        (4, 1, 128),
        (2, 2, 96),
        (12, 12, 32),
    ] {
        let heads = Heads { nh, nkv, hd };
        // bf16-exact inputs, so the bf16 kernel sees the CPU's very values.
        let q = bf16_round(&uniform_vec(&mut rng, n * nh * hd, 2.0));
        let k = bf16_round(&uniform_vec(&mut rng, n * nkv * hd, 2.0));
        let v = bf16_round(&uniform_vec(&mut rng, n * nkv * hd, 1.0));
        let (qd, kd, vd) = (
            g.htod(&q).unwrap(),
            g.htod(&k).unwrap(),
            g.htod(&v).unwrap(),
        );
        let (qb, kb, vb) = (
            g.htod(&to_bf16(&q)).unwrap(),
            g.htod(&to_bf16(&k)).unwrap(),
            g.htod(&to_bf16(&v)).unwrap(),
        );
        for mask in masks {
            let want = ops::attention_batch(&q, &k, &v, &starts, heads, mask);
            let plan = AttnPlan::new(&g, &starts, mask).unwrap();
            let what = format!(
                "{nh}/{nkv}x{hd} causal {} window {:?}",
                mask.causal, mask.window
            );
            let mut out = poisoned::<f32>(&g, n * nh * hd);
            attention(
                &g,
                &qd.slice(..),
                &kd.slice(..),
                &vd.slice(..),
                nh * hd,
                nkv * hd,
                &mut out,
                nh * hd,
                &plan,
                heads,
                mask,
            )
            .unwrap();
            check(
                &format!("attention_f32 {what}"),
                &down_f32(&g, &out, n * nh * hd),
                &want,
                hd,
                2e-5,
            );
            let mut outb = poisoned::<u16>(&g, n * nh * hd);
            attention(
                &g,
                &qb.slice(..),
                &kb.slice(..),
                &vb.slice(..),
                nh * hd,
                nkv * hd,
                &mut outb,
                nh * hd,
                &plan,
                heads,
                mask,
            )
            .unwrap();
            check(
                &format!("attention_bf16 {what}"),
                &down_bf16(&g, &outb, n * nh * hd),
                &want,
                hd,
                8e-3,
            );
        }
    }
    // Strided operands: q, k, v read in place from one fused qkv row, as the models do.
    let (nh, nkv, hd) = (4, 2, 64);
    let heads = Heads { nh, nkv, hd };
    let w = (nh + 2 * nkv) * hd;
    let qkv = uniform_vec(&mut rng, n * w, 2.0);
    let part =
        |a: usize, b: usize| -> Vec<f32> { qkv.chunks(w).flat_map(|r| r[a..b].to_vec()).collect() };
    let (q, k, v) = (
        part(0, nh * hd),
        part(nh * hd, (nh + nkv) * hd),
        part((nh + nkv) * hd, w),
    );
    let mask = AttnMask {
        causal: true,
        window: Some(24),
    };
    let want = ops::attention_batch(&q, &k, &v, &starts, heads, mask);
    let d = g.htod(&qkv).unwrap();
    let plan = AttnPlan::new(&g, &starts, mask).unwrap();
    let mut out = poisoned::<f32>(&g, n * nh * hd);
    attention(
        &g,
        &d.slice(..),
        &d.slice(nh * hd..),
        &d.slice((nh + nkv) * hd..),
        w,
        w,
        &mut out,
        nh * hd,
        &plan,
        heads,
        mask,
    )
    .unwrap();
    check(
        "attention_f32 fused qkv",
        &down_f32(&g, &out, n * nh * hd),
        &want,
        hd,
        2e-5,
    );
}

#[test]
fn gemm_matches_cpu() {
    let Some(g) = common::need_gpu() else { return };
    let blas = g
        .blas()
        .unwrap()
        .expect("cuBLAS loads where a device exists");
    let mut rng = SplitMix64(6);
    for (rows, out, inp) in [(1, 8, 16), (77, 192, 64), (300, 96, 130)] {
        let x = bf16_round(&uniform_vec(&mut rng, rows * inp, 1.0));
        let w = bf16_round(&uniform_vec(&mut rng, out * inp, 1.0));
        let y0 = uniform_vec(&mut rng, rows * out, 1.0);
        let mut want = vec![0.0; rows * out];
        ops::matmul_t(&x, rows, inp, &w, out, &mut want, None);
        let (xd, wd) = (g.htod(&to_bf16(&x)).unwrap(), g.htod(&to_bf16(&w)).unwrap());
        let mut y = poisoned::<f32>(&g, rows * out);
        RowMajorGemm::linear(rows, out, inp, false)
            .run_bf16(&g.stream, &blas, &xd, &wd, &mut y)
            .unwrap();
        check(
            &format!("gemm f32 out {rows}x{out}x{inp}"),
            &down_f32(&g, &y, rows * out),
            &want,
            out,
            1e-5,
        );
        let mut yb = poisoned::<u16>(&g, rows * out);
        RowMajorGemm::linear(rows, out, inp, false)
            .run_bf16(&g.stream, &blas, &xd, &wd, &mut yb)
            .unwrap();
        check(
            &format!("gemm bf16 out {rows}x{out}x{inp}"),
            &down_bf16(&g, &yb, rows * out),
            &want,
            out,
            4e-3,
        );
        let mut y = g.htod(&y0).unwrap();
        RowMajorGemm::linear(rows, out, inp, true)
            .run_bf16(&g.stream, &blas, &xd, &wd, &mut y)
            .unwrap();
        let acc: Vec<f32> = want.iter().zip(&y0).map(|(a, b)| a + b).collect();
        check(
            &format!("gemm accumulate {rows}x{out}x{inp}"),
            &down_f32(&g, &y, rows * out),
            &acc,
            out,
            1e-5,
        );
    }
}

/// The row-major cuBLAS wrapper's other forms against a triple loop: f32 strided-batched with
/// every transpose, padded row strides and β = 1 (CLIP training's form), plain f64 (the atlas
/// solve's). The padding between rows and matrices must come back untouched.
#[test]
fn row_major_gemm_matches_cpu() {
    let Some(g) = common::need_gpu() else { return };
    let blas = g
        .blas()
        .unwrap()
        .expect("cuBLAS loads where a device exists");
    let mut rng = SplitMix64(10);
    let (rows, cols, inner, batch) = (13, 7, 5, 3);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let (ar, ac) = if ta { (inner, rows) } else { (rows, inner) };
        let (br, bc) = if tb { (cols, inner) } else { (inner, cols) };
        let (lda, ldb, ldc) = (ac + 2, bc + 1, cols + 3);
        let (sa, sb, sc) = (ar * lda + 3, br * ldb + 1, rows * ldc + 2);
        let (a, b) = (
            uniform_vec(&mut rng, batch * sa, 1.0),
            uniform_vec(&mut rng, batch * sb, 1.0),
        );
        let c0 = uniform_vec(&mut rng, batch * sc, 1.0);
        // op(A)[i][p] and op(B)[p][j] of matrix m.
        let opa = |m: usize, i: usize, p: usize| match ta {
            false => a[m * sa + i * lda + p],
            true => a[m * sa + p * lda + i],
        };
        let opb = |m: usize, p: usize, j: usize| match tb {
            false => b[m * sb + p * ldb + j],
            true => b[m * sb + j * ldb + p],
        };
        let mut want = c0.clone();
        for m in 0..batch {
            for i in 0..rows {
                for j in 0..cols {
                    let dot: f32 = (0..inner).map(|p| opa(m, i, p) * opb(m, p, j)).sum();
                    want[m * sc + i * ldc + j] += dot;
                }
            }
        }
        let gemm = RowMajorGemm {
            rows,
            cols,
            inner,
            ta,
            tb,
            lda,
            ldb,
            ldc,
            accumulate: true,
        };
        let (ad, bd) = (g.htod(&a).unwrap(), g.htod(&b).unwrap());
        let mut cd = g.htod(&c0).unwrap();
        gemm.run_batched(&blas, batch, (&ad, sa), (&bd, sb), (&mut cd, sc))
            .unwrap();
        check(
            &format!("f32 strided-batched ta {ta} tb {tb}"),
            &down_f32(&g, &cd, batch * sc),
            &want,
            sc,
            1e-5,
        );
    }

    let (n, k) = (9, 6);
    let x: Vec<f64> = uniform_vec(&mut rng, n * k, 1.0)
        .iter()
        .map(|&v| v as f64)
        .collect();
    let gram: Vec<f64> = uniform_vec(&mut rng, k * k, 1.0)
        .iter()
        .map(|&v| v as f64)
        .collect();
    let want: Vec<f64> = (0..n * k)
        .map(|e| (0..k).map(|p| x[e / k * k + p] * gram[p * k + e % k]).sum())
        .collect();
    let mut out = g.htod(&vec![f64::NAN; n * k]).unwrap();
    RowMajorGemm::dense(n, k, k)
        .run(
            &blas,
            &g.htod(&x).unwrap(),
            &g.htod(&gram).unwrap(),
            &mut out,
        )
        .unwrap();
    for (got, want) in g.dtoh(&out, n * k).unwrap().iter().zip(&want) {
        assert!(
            (got - want).abs() <= 1e-12 * want.abs().max(1.0),
            "f64: {got} vs {want}"
        );
    }
}

#[test]
fn pooling_matches_mean_pool() {
    let Some(g) = common::need_gpu() else { return };
    let mut rng = SplitMix64(7);
    let d = 300;
    // Chunks of 3 texts, two of text 1 in the same batch; text 3 has no chunk.
    let chunks = [(1usize, 40usize), (0, 7), (1, 13), (2, 1)];
    let rows: usize = chunks.iter().map(|c| c.1).sum();
    let h = uniform_vec(&mut rng, rows * d, 5.0);
    let mut chunk_start = vec![0];
    for c in &chunks {
        chunk_start.push(chunk_start.last().unwrap() + c.1);
    }
    let text: Vec<usize> = chunks.iter().map(|c| c.0).collect();
    let hd = g.htod(&h).unwrap();
    let mut sums = g.zeros::<f64>(4 * d).unwrap();
    pool_rows(&g, &hd, d, &chunk_start, &text, &mut sums).unwrap();
    let sums = g.dtoh(&sums, 4 * d).unwrap();
    for t in 0..4 {
        let mine: Vec<f32> = chunks
            .iter()
            .zip(chunk_start.windows(2))
            .filter(|(c, _)| c.0 == t)
            .flat_map(|(_, w)| h[w[0] * d..w[1] * d].to_vec())
            .collect();
        let count = mine.len() / d;
        let got: Vec<f32> = sums[t * d..][..d]
            .iter()
            .map(|s| {
                if count > 0 {
                    (s / count as f64) as f32
                } else {
                    0.0
                }
            })
            .collect();
        let want = if count > 0 {
            ops::mean_pool(&mine, d)
        } else {
            vec![0.0; d]
        };
        for (a, b) in got.iter().zip(&want) {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "text {t}: {a} vs {b}"
            );
        }
    }
}

fn fixtures() -> PathBuf {
    common::fixtures().join("text")
}

fn tiny_texts() -> Vec<String> {
    let e: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tiny_expected.json")).unwrap(),
    )
    .unwrap();
    e["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

/// The model on cuda:0 against the model on the CPU: hidden states of the packed texts, and
/// pooled embeddings (whole texts and 16-token chunks, several per batch) by cosine.
fn model_case(
    g: std::sync::Arc<Gpu>,
    model: &Path,
    lora: Option<&Path>,
    texts: &[String],
    chunk: usize,
    hidden_tol: f64,
) {
    let name = model.file_name().unwrap().to_string_lossy().to_string();
    let cpu = TextModel::load(model, lora, &Device::Cpu).unwrap();
    let dev = TextModel::load(model, lora, &Device::Cuda(g)).unwrap();
    assert_eq!(cpu.dim(), dev.dim());
    assert_eq!(cpu.default_max_length(), dev.default_max_length());
    let d = cpu.dim();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let ids = cpu.tokenize(&texts).unwrap();
    let seqs: Vec<&[u32]> = ids
        .iter()
        .map(|s| &s[..s.len().min(cpu.default_max_length())])
        .collect();
    let want = cpu.hidden_states(&seqs).unwrap();
    let got = dev.hidden_states(&seqs).unwrap();
    check_hidden(
        &format!("{name}: hidden states"),
        &got,
        &want,
        d,
        hidden_tol,
    );
    for (max_length, batch) in [(None, 3), (Some(chunk), 4)] {
        let opts = EmbedOptions {
            max_length,
            batch,
            normalize: false,
        };
        let want = cpu.embed(&texts, &opts).unwrap();
        let got = dev.embed(&texts, &opts).unwrap();
        assert!(
            got.iter().all(|v| v.is_finite()),
            "{name}: non-finite embedding"
        );
        let worst = got
            .chunks(d)
            .zip(want.chunks(d))
            .map(|(a, b)| cosine(a, b))
            .fold(1.0f64, f64::min);
        eprintln!(
            "{name}: pooled (max_length {max_length:?}, batch {batch}): min cosine {worst:.6}"
        );
        assert!(
            worst >= 0.999,
            "{name}: pooled embeddings cosine {worst:.6} < 0.999"
        );
    }
}

#[test]
fn tiny_llama_on_cuda_matches_cpu() {
    let Some(g) = common::need_gpu() else { return };
    model_case(
        g,
        &fixtures().join("tiny_llama"),
        None,
        &tiny_texts(),
        16,
        3e-2,
    );
}

#[test]
fn tiny_llama_bf16_lora_on_cuda_matches_cpu() {
    let Some(g) = common::need_gpu() else { return };
    model_case(
        g,
        &fixtures().join("tiny_llama_bf16"),
        None,
        &tiny_texts(),
        16,
        3e-2,
    );
    let g = Gpu::open(0).unwrap();
    let lora = fixtures().join("tiny_llama_lora");
    model_case(
        g,
        &fixtures().join("tiny_llama"),
        Some(&lora),
        &tiny_texts(),
        16,
        3e-2,
    );
}

#[test]
fn tiny_mistral_sliding_window_on_cuda_matches_cpu() {
    let Some(g) = common::need_gpu() else { return };
    model_case(
        g,
        &fixtures().join("tiny_mistral"),
        None,
        &tiny_texts(),
        16,
        3e-2,
    );
    let g = Gpu::open(0).unwrap();
    let lora = fixtures().join("tiny_mistral_lora");
    model_case(
        g,
        &fixtures().join("tiny_mistral"),
        Some(&lora),
        &tiny_texts(),
        16,
        3e-2,
    );
}

#[test]
fn tiny_llama_gguf_on_cuda_matches_cpu() {
    let Some(g) = common::need_gpu() else { return };
    model_case(
        g,
        &fixtures().join("tiny_llama.gguf"),
        None,
        &tiny_texts(),
        16,
        3e-2,
    );
}

fn fixture_lines(name: &str, n: usize) -> Vec<String> {
    std::fs::read_to_string(fixtures().join(name))
        .unwrap()
        .lines()
        .take(n)
        .map(String::from)
        .collect()
}

#[test]
fn minilm_on_cuda_matches_cpu() {
    let Some(g) = common::need_gpu() else { return };
    let Some(dir) = common::need_model(common::MINILM) else {
        return;
    };
    // The emulated device runs the same kernels on fewer texts (it is for correctness).
    let texts = fixture_lines("minilm_titles.txt", if g.emulated { 12 } else { 64 });
    model_case(g, &dir, None, &texts, 8, 5e-2);
}

#[test]
fn smollm2_on_cuda_matches_cpu() {
    let Some(g) = common::need_gpu() else { return };
    let Some(gguf) = common::need_model(common::SMOLLM) else {
        return;
    };
    // The emulated device: two abstracts cut to about 100 tokens (still two 64-token chunks).
    let mut texts = fixture_lines("smollm_abstracts.txt", if g.emulated { 2 } else { 12 });
    if g.emulated {
        texts
            .iter_mut()
            .for_each(|t| *t = t.chars().take(450).collect());
    }
    model_case(g, &gguf, None, &texts, 64, 5e-2);
}

/// The random-weight decoder of the benches runs, is finite and repeatable.
#[test]
fn random_decoder_runs() {
    if common::need_gpu().is_none() {
        return;
    }
    let cfg = DecoderConfig {
        model_type: "mistral".into(),
        vocab: 1000,
        hidden: 256,
        ff: 512,
        layers: 2,
        heads: Heads {
            nh: 4,
            nkv: 2,
            hd: 64,
        },
        eps: 1e-5,
        inv_freq: (0..32)
            .map(|i| 1.0 / 10000f32.powf(i as f32 / 32.0))
            .collect(),
        window: Some(64),
        max_positions: 512,
        attention_bias: false,
        mlp_bias: false,
    };
    let m = CudaText::random_decoder(&Gpu::open(0).unwrap(), cfg, 9).unwrap();
    let mut rng = SplitMix64(8);
    let a: Vec<u32> = (0..300).map(|_| rng.below(1000) as u32).collect();
    let b: Vec<u32> = (0..77).map(|_| rng.below(1000) as u32).collect();
    let chunks = [(0usize, &a[..]), (1, &b[..]), (0, &b[..10])];
    let s1 = m.pooled_sums(&chunks, 2, 2, &|_| {}).unwrap();
    let s2 = m.pooled_sums(&chunks, 2, 2, &|_| {}).unwrap();
    assert!(s1.iter().all(|v| v.is_finite()) && s1.iter().any(|v| *v != 0.0));
    for (x, y) in s1.iter().zip(&s2) {
        assert!((x - y).abs() <= 1e-9 * x.abs().max(1.0), "{x} vs {y}");
    }
    let h = m.hidden_states(&[&a[..], &b[..]]).unwrap();
    assert_eq!(h.len(), 377 * 256);
    let bad = m.hidden_states(&[&[5000u32][..]]).unwrap_err();
    assert!(bad.to_string().contains("out of range"), "{bad}");
}
