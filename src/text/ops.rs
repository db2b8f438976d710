//! CPU reference ops of the text models, as plain functions on row-major f32 slices. They are
//! the CPU path itself (fast enough: gemm + rayon) and the reference the CUDA kernels are tested
//! against. Activations are `[tokens, width]`; a weight is `[out, in]` as PyTorch stores it.

use crate::device::cpu::{self, Parallelism, Strided};
use rayon::prelude::*;

/// A dense layer `y = x Wᵀ + b` with W `[out, inp]` (PyTorch's `nn.Linear` layout).
#[derive(Clone, Debug)]
pub struct Linear {
    pub w: Vec<f32>,
    pub b: Option<Vec<f32>>,
    pub out: usize,
    pub inp: usize,
}

impl Linear {
    /// `x` is `[rows, inp]`; returns `[rows, out]`.
    pub fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let mut y = vec![0.0f32; rows * self.out];
        self.forward_into(x, rows, &mut y);
        y
    }

    pub fn forward_into(&self, x: &[f32], rows: usize, y: &mut [f32]) {
        matmul_t(x, rows, self.inp, &self.w, self.out, y, self.b.as_deref());
    }
}

/// `y[rows, n] = x[rows, k] · w[n, k]ᵀ (+ bias)`.
pub fn matmul_t(
    x: &[f32],
    rows: usize,
    k: usize,
    w: &[f32],
    n: usize,
    y: &mut [f32],
    bias: Option<&[f32]>,
) {
    assert_eq!(x.len(), rows * k);
    assert_eq!(w.len(), n * k);
    assert_eq!(y.len(), rows * n);
    if rows == 0 {
        return;
    }
    if let Some(b) = bias {
        for row in y.chunks_exact_mut(n) {
            row.copy_from_slice(b);
        }
    }
    let alpha = bias.map(|_| 1.0);
    let (a, wt) = (Strided::rows(x, k), Strided::transposed(w, k));
    cpu::gemm(
        (rows, n, k),
        y,
        (n as isize, 1),
        alpha,
        a,
        wt,
        1.0,
        Parallelism::Rayon(0),
    );
}

/// `x += y`, elementwise (the residual stream's update).
pub fn add(x: &mut [f32], y: &[f32]) {
    x.par_chunks_mut(1 << 14)
        .zip(y.par_chunks(1 << 14))
        .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
}

/// LlamaRMSNorm: `w · x / sqrt(mean(x²) + eps)`, per row of width `w.len()`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    out.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .for_each(|(o, r)| {
            let ms = r.iter().map(|v| v * v).sum::<f32>() / d as f32;
            let inv = 1.0 / (ms + eps).sqrt();
            for ((o, v), g) in o.iter_mut().zip(r).zip(w) {
                *o = g * (v * inv);
            }
        });
}

/// nn.LayerNorm over rows of width `w.len()` (biased variance, as PyTorch), in place.
pub fn layer_norm(x: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let d = w.len();
    x.par_chunks_mut(d).for_each(|r| {
        let mean = r.iter().sum::<f32>() / d as f32;
        let var = r.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, g), b) in r.iter_mut().zip(w).zip(b) {
            *v = (*v - mean) * inv * g + b;
        }
    });
}

/// Exact GELU (BERT's "gelu"): `x/2 · (1 + erf(x/√2))`, in place.
pub fn gelu(x: &mut [f32]) {
    x.par_chunks_mut(4096).for_each(|c| {
        for v in c {
            *v = 0.5 * *v * (1.0 + libm::erff(*v * std::f32::consts::FRAC_1_SQRT_2));
        }
    });
}

/// SwiGLU of a fused `[rows, 2·ff]` gate|up projection: `silu(gate) · up`, `[rows, ff]`.
pub fn swiglu(gate_up: &[f32], ff: usize) -> Vec<f32> {
    let rows = gate_up.len() / (2 * ff);
    let mut out = vec![0.0f32; rows * ff];
    out.par_chunks_mut(ff)
        .zip(gate_up.par_chunks(2 * ff))
        .for_each(|(o, gu)| {
            let (g, u) = gu.split_at(ff);
            for ((o, g), u) in o.iter_mut().zip(g).zip(u) {
                *o = g / (1.0 + (-g).exp()) * u;
            }
        });
    out
}

/// RoPE tables: `cos`/`sin` `[positions, head_dim/2]` from the inverse frequencies, computed
/// in f32 as transformers does (`freqs = inv_freq · position`).
pub struct RopeTable {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub half: usize,
}

impl RopeTable {
    pub fn new(inv_freq: &[f32], positions: usize) -> RopeTable {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for p in 0..positions {
            for f in inv_freq {
                let a = (p as f32 * f) as f64;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        RopeTable { cos, sin, half }
    }
}

/// Rotary embedding, rotate-half layout (transformers' Llama/Mistral), in place on a
/// `[tokens, heads, head_dim]` block; token t sits at position `positions[t]`.
pub fn rope(x: &mut [f32], heads: usize, head_dim: usize, positions: &[usize], table: &RopeTable) {
    let half = head_dim / 2;
    debug_assert_eq!(half, table.half);
    x.par_chunks_mut(heads * head_dim)
        .zip(positions.par_iter())
        .for_each(|(tok, &p)| {
            let c = &table.cos[p * half..][..half];
            let s = &table.sin[p * half..][..half];
            for h in tok.chunks_exact_mut(head_dim) {
                let (a, b) = h.split_at_mut(half);
                for i in 0..half {
                    let (x1, x2) = (a[i], b[i]);
                    a[i] = x1 * c[i] - x2 * s[i];
                    b[i] = x2 * c[i] + x1 * s[i];
                }
            }
        });
}

/// Which keys a query sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnMask {
    /// Query i sees keys j ≤ i only.
    pub causal: bool,
    /// Mistral's sliding window: query i sees keys j > i − window (transformers' rule).
    pub window: Option<usize>,
}

/// Attention shapes: query heads, key/value heads (grouped-query: query head h reads kv
/// head h / (nh/nkv)), head width.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub nh: usize,
    pub nkv: usize,
    pub hd: usize,
}

/// Scaled dot-product attention of one sequence, all heads: q `[L, nh·hd]`, k and v
/// `[L, nkv·hd]`; returns `[L, nh·hd]`.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], heads: Heads, mask: AttnMask) -> Vec<f32> {
    let len = q.len() / (heads.nh * heads.hd);
    attention_batch(q, k, v, &[0, len], heads, mask)
}

/// Attention of several sequences packed one after another (no padding): sequence s holds
/// tokens `starts[s]..starts[s + 1]`. Query rows go in blocks of 128 so a task's scores never
/// exceed 128 × L; tasks (sequence, head, block) run in parallel.
pub fn attention_batch(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    starts: &[usize],
    heads: Heads,
    mask: AttnMask,
) -> Vec<f32> {
    const BLOCK: usize = 128;
    let Heads { nh, nkv, hd } = heads;
    let group = nh / nkv;
    let scale = 1.0 / (hd as f32).sqrt();
    let (qs, ks) = (nh * hd, nkv * hd);
    let mut tasks = Vec::new();
    for w in starts.windows(2) {
        for h in 0..nh {
            for q0 in (w[0]..w[1]).step_by(BLOCK) {
                tasks.push((w[0], w[1], h, q0, (q0 + BLOCK).min(w[1])));
            }
        }
    }
    let parts: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&(s0, s1, h, q0, q1)| {
            let kvh = h / group;
            let bq = q1 - q0;
            // Keys (absolute rows) any query of the block may see.
            let k1 = if mask.causal { q1 } else { s1 };
            let k0 = match mask.window {
                Some(w) => (q0 + 1).saturating_sub(w).max(s0),
                None => s0,
            };
            let nk = k1 - k0;
            let mut s = vec![0.0f32; bq * nk];
            // q rows q0..q1 of head h (row stride nh·hd) times the keys k0..k1 of kv head
            // kvh read as kᵀ (column stride nkv·hd).
            let qh = Strided {
                data: &q[q0 * qs + h * hd..],
                rs: qs as isize,
                cs: 1,
            };
            let kt = Strided {
                data: &k[k0 * ks + kvh * hd..],
                rs: 1,
                cs: ks as isize,
            };
            let par = Parallelism::None;
            cpu::gemm(
                (bq, nk, hd),
                &mut s,
                (nk as isize, 1),
                None,
                qh,
                kt,
                scale,
                par,
            );
            for (r, row) in s.chunks_exact_mut(nk).enumerate() {
                let i = q0 + r;
                let hi = if mask.causal { i + 1 } else { s1 } - k0;
                let lo = mask
                    .window
                    .map_or(s0, |w| (i + 1).saturating_sub(w).max(s0))
                    - k0;
                let m = row[lo..hi].iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
                let mut sum = 0.0f32;
                for (j, x) in row.iter_mut().enumerate() {
                    if j < lo || j >= hi {
                        *x = 0.0;
                    } else {
                        *x = (*x - m).exp();
                        sum += *x;
                    }
                }
                let inv = 1.0 / sum;
                row[lo..hi].iter_mut().for_each(|x| *x *= inv);
            }
            let mut o = vec![0.0f32; bq * hd];
            // probabilities bq × nk times the values rows k0..k1 of kv head kvh.
            let vh = Strided {
                data: &v[k0 * ks + kvh * hd..],
                rs: ks as isize,
                cs: 1,
            };
            let (p, par) = (Strided::rows(&s, nk), Parallelism::None);
            cpu::gemm(
                (bq, hd, nk),
                &mut o,
                (hd as isize, 1),
                None,
                p,
                vh,
                1.0,
                par,
            );
            o
        })
        .collect();
    let mut out = vec![0.0f32; q.len()];
    for (&(_, _, h, q0, _), o) in tasks.iter().zip(parts) {
        for (r, row) in o.chunks_exact(hd).enumerate() {
            out[(q0 + r) * qs + h * hd..][..hd].copy_from_slice(row);
        }
    }
    out
}

/// Mean of the rows of `[rows, d]` (the pooled embedding of one text's tokens), accumulated in f64.
pub fn mean_pool(x: &[f32], d: usize) -> Vec<f32> {
    let rows = x.len() / d;
    let mut acc = vec![0.0f64; d];
    for r in x.chunks_exact(d) {
        for (a, v) in acc.iter_mut().zip(r) {
            *a += *v as f64;
        }
    }
    acc.iter()
        .map(|a| (a / rows.max(1) as f64) as f32)
        .collect()
}

/// Scales each row of `[rows, d]` to unit L2 norm (zero rows stay zero).
pub fn l2_normalize(x: &mut [f32], d: usize) {
    for r in x.chunks_exact_mut(d) {
        let n = r
            .iter()
            .map(|v| (*v as f64) * (*v as f64))
            .sum::<f64>()
            .sqrt();
        if n > 0.0 {
            r.iter_mut().for_each(|v| *v = (*v as f64 / n) as f32);
        }
    }
}
