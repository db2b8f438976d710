//! CPU kernels of the CLIP towers, forward and backward: GEMMs (gemm crate), exact-erf GELU,
//! dropout from a counter-based hash (the same masks on the CPU and the GPU), residual +
//! LayerNorm fused row by row, L2 normalisation, the symmetric InfoNCE loss and its gradient.
//!
//! All matrices are row-major. Every reduction has a fixed order (no work-stealing sums), so a
//! run is bit-reproducible for a given thread count.

use crate::device::cpu::{self, Parallelism, Strided};
use crate::rng::{mix64, GOLDEN};
use rayon::prelude::*;

/// LayerNorm epsilon (PyTorch's default).
pub const LN_EPS: f32 = 1e-5;
/// `F.normalize`'s lower bound on the norm.
pub const L2_EPS: f32 = 1e-12;

/// Products smaller than this many multiply-adds run on one thread.
const PAR_GEMM: usize = 1 << 18;
/// Rows per rayon task in the row-wise kernels.
const ROWS_PER_TASK: usize = 16;

/// The widest vectors of this CPU that the CLIP kernels have a path for: AVX-512F, AVX2 with
/// FMA, or baseline x86-64 (and other architectures).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Vectors {
    Avx512,
    Avx2,
    Baseline,
}

impl Vectors {
    pub fn detect() -> Vectors {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") {
                return if has!("avx512f") {
                    Vectors::Avx512
                } else {
                    Vectors::Avx2
                };
            }
        }
        Vectors::Baseline
    }
}

/// Runs `f` compiled for AVX-512 or AVX2 and FMA when the CPU has them, so the row loops
/// inside run 16 or 8 lanes wide instead of baseline x86-64's 4. Rust never contracts
/// `a * b + c` into an FMA and never reorders float sums, so every path gives the same bits.
#[inline(always)]
pub fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        match Vectors::detect() {
            // SAFETY: the CPU has the features `avx512` is compiled for.
            Vectors::Avx512 => return unsafe { avx512(f) },
            // SAFETY: the CPU has the features `avx2` is compiled for.
            Vectors::Avx2 => return unsafe { avx2(f) },
            Vectors::Baseline => {}
        }
    }
    f()
}

/// dst (m×n, element (i, j) at dst[i·rs + j·cs]) = [dst +] A·B.
///
/// A large product on a multi-core pool runs as two column halves side by side, each on one
/// thread (`rayon::join`): on this crate's 128-row batches that beats gemm's own split over
/// threads, and when the other core is busy with the other tower, the second half simply runs
/// after the first. The halves add the same products in the same order whichever thread runs
/// them, so the bits depend only on whether the pool has more than one thread.
#[allow(clippy::too_many_arguments)]
fn gemm_into(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    (rs, cs): (usize, usize),
    accumulate: bool,
    a: Strided,
    b: Strided,
) {
    assert!(
        dst.len() >= cpu::span(m, n, rs as isize, cs as isize),
        "gemm: destination too small"
    );
    assert!(
        a.data.len() >= cpu::span(m, k, a.rs, a.cs) && b.data.len() >= cpu::span(k, n, b.rs, b.cs),
        "gemm: operand too small"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst[i * rs + j * cs] = 0.0;
                }
            }
        }
        return;
    }
    let d = Disjoint(dst.as_mut_ptr());
    let columns = |c0: usize, c1: usize| {
        let (d, b) = (&d, b.from_column(c0));
        let strides = (rs as isize, cs as isize);
        let alpha = accumulate.then_some(1.0);
        // SAFETY: the asserts above bound every index the product touches, and the two
        // halves write disjoint columns.
        unsafe {
            cpu::gemm_unchecked(
                (m, c1 - c0, k),
                d.0.add(c0 * cs),
                strides,
                alpha,
                a,
                b,
                1.0,
                Parallelism::None,
            )
        }
    };
    if m * n * k >= PAR_GEMM && n >= 32 && rayon::current_num_threads() > 1 {
        let h = (n / 2).next_multiple_of(16);
        rayon::join(|| columns(0, h), || columns(h, n));
    } else {
        columns(0, n);
    }
}

/// A destination that several threads write, each its own elements (the column halves of
/// `gemm_into`, the row blocks of `transpose`).
struct Disjoint(*mut f32);
// SAFETY: every user writes elements no other thread writes.
unsafe impl Sync for Disjoint {}

/// dst (m×n, row-major) = [dst +] A·B, A m×k and B k×n read through their strides.
#[allow(clippy::too_many_arguments)]
fn matmul(
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    (ars, acs): (usize, usize),
    b: &[f32],
    (brs, bcs): (usize, usize),
    dst: &mut [f32],
    accumulate: bool,
) {
    let a = Strided {
        data: a,
        rs: ars as isize,
        cs: acs as isize,
    };
    let b = Strided {
        data: b,
        rs: brs as isize,
        cs: bcs as isize,
    };
    gemm_into(m, n, k, dst, (n, 1), accumulate, a, b);
}

/// dst (m×n) = [dst +] a (m×k) · bᵀ, with b stored n×k: a Linear layer's forward (b = W).
pub fn matmul_nt(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    dst: &mut [f32],
    accumulate: bool,
) {
    matmul((m, n, k), a, (k, 1), b, (1, k), dst, accumulate);
}

/// dst (m×n) = [dst +] aᵀ · b, with a stored k×m and b k×n: a weight gradient (dW = δᵀ x).
pub fn matmul_tn(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    dst: &mut [f32],
    accumulate: bool,
) {
    matmul((m, n, k), a, (1, m), b, (n, 1), dst, accumulate);
}

/// dst (m×n) = [dst +] a (m×k) · b (k×n): an input gradient (dx = δ W).
pub fn matmul_nn(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    dst: &mut [f32],
    accumulate: bool,
) {
    matmul((m, n, k), a, (k, 1), b, (n, 1), dst, accumulate);
}

/// Whether a Linear layer from `din` to `k` takes `wide_linear_forward`: its weight is much
/// larger than a batch of its input.
fn is_wide(k: usize, din: usize) -> bool {
    din >= 2 * k
}

/// A Linear layer's forward: out (n×k) = bias + x (n×din) · wᵀ, w stored k×din (PyTorch's
/// layout); a wide one (`is_wide`) through `wide_linear_forward`. Both ways add the same
/// products in the same order: the same bits.
pub fn linear_forward(
    n: usize,
    k: usize,
    din: usize,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    out: &mut [f32],
) {
    if is_wide(k, din) {
        wide_linear_forward(n, k, din, x, w, bias, out);
    } else {
        fill_rows(&mut out[..n * k], bias);
        matmul_nt(n, k, din, x, w, out, true);
    }
}

/// `linear_forward` for a wide layer, taken column-major: outᵀ = bias + (xᵀ as the left
/// operand) · wᵀ. As x · wᵀ, gemm would pack the row-major w (8 MB at 4096 → 512) element by
/// element every step; this way it reads w's rows in place and packs nothing, and only the
/// batch is transposed in (2 MB at 4096) and the output back out. The column halves of outᵀ
/// run side by side, as `gemm_into`'s.
fn wide_linear_forward(
    n: usize,
    k: usize,
    din: usize,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    out: &mut [f32],
) {
    assert!(
        x.len() >= n * din && w.len() >= k * din && bias.len() == k && out.len() >= n * k,
        "wide_linear_forward: buffer too small"
    );
    thread_local! {
        static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
            const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    }
    let mut run = |(xt, ot): &mut (Vec<f32>, Vec<f32>)| {
        xt.resize(n * din, 0.0);
        ot.resize(n * k, 0.0);
        transpose(n, din, &x[..n * din], xt);
        for (row, &b) in ot.chunks_exact_mut(n).zip(bias) {
            row.fill(b);
        }
        let xt = Strided {
            data: xt,
            rs: 1,
            cs: n as isize,
        };
        let wt = Strided {
            data: &w[..k * din],
            rs: 1,
            cs: din as isize,
        };
        gemm_into(n, k, din, ot, (1, n), true, xt, wt);
        transpose(k, n, ot, &mut out[..n * k]);
    };
    // A thread that steals a job while it waits inside `run` may come back here: it then
    // takes fresh scratch rather than the borrowed one.
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut s) => run(&mut s),
        Err(_) => run(&mut Default::default()),
    });
}

/// at (c×r) = aᵀ for a (r×c), by 16 × 16 blocks (both sides' lines stay in cache), the
/// blocks' rows split over the pool.
fn transpose(r: usize, c: usize, a: &[f32], at: &mut [f32]) {
    const B: usize = 16;
    assert!(
        a.len() >= r * c && at.len() >= r * c,
        "transpose: buffer too small"
    );
    let at = Disjoint(at.as_mut_ptr());
    (0..r.div_ceil(B)).into_par_iter().for_each(|bi| {
        let at = &at;
        let rows = bi * B..(bi * B + B).min(r);
        for j0 in (0..c).step_by(B) {
            for i in rows.clone() {
                for j in j0..(j0 + B).min(c) {
                    // SAFETY: (j, i) lies in the c × r destination, and only this block's
                    // rows i write it.
                    unsafe { *at.0.add(j * r + i) = a[i * c + j] };
                }
            }
        }
    });
}

/// Each row of `dst` (n×k) set to `bias`: the start of `y = b + x Wᵀ`.
pub fn fill_rows(dst: &mut [f32], bias: &[f32]) {
    for row in dst.chunks_exact_mut(bias.len()) {
        row.copy_from_slice(bias);
    }
}

/// Column sums of an n×k matrix, added to `out` (bias gradients). Rows are summed in order.
pub fn add_col_sums(m: &[f32], k: usize, out: &mut [f32]) {
    wide(
        #[inline(always)]
        || {
            for row in m.chunks_exact(k) {
                for (o, v) in out.iter_mut().zip(row) {
                    *o += v;
                }
            }
        },
    )
}

/// e^x in f32 without a libm call, so loops over it vectorise: Cody–Waite reduction by ln 2 and
/// Cephes' degree-6 polynomial (within 2 ulp of libm over the clamped range).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round x/ln2 to the nearest integer n by the 1.5·2²³ trick (vectorises, unlike round()):
    // the sum's low mantissa bits then hold n itself, from which 2ⁿ is built with integer ops
    // (`n as i32` would be a saturating cast, done lane by lane).
    const SHIFTER: f32 = 12_582_912.0;
    let shifted = x * std::f32::consts::LOG2_E + SHIFTER;
    let n = shifted - SHIFTER;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(shifted.to_bits().wrapping_sub(SHIFTER.to_bits() - 127) << 23)
}

/// erf without a libm call (vectorises): Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7,
/// the formula of PyTorch's vectorised CPU `erf`, which its `nn.GELU()` runs on), and below
/// |x| = 0.5, where that formula loses relative accuracy, erf's Maclaurin series to x¹³.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let ax = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * ax);
    let r =
        (((1.061_405_4 * t - 1.453_152) * t + 1.421_413_8) * t - 0.284_496_74) * t + 0.254_829_6;
    let far = (1.0 - r * t * exp_f32(-ax * ax)).copysign(x);
    let z = x * x;
    let series = ((((((1.0 / 9360.0) * z - 1.0 / 1320.0) * z + 1.0 / 216.0) * z - 1.0 / 42.0) * z
        + 0.1)
        * z
        - 1.0 / 3.0)
        * z
        + 1.0;
    let near = series * x * std::f32::consts::FRAC_2_SQRT_PI;
    if ax < 0.5 {
        near
    } else {
        far
    }
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/√(2π)
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// Φ(x), the standard normal CDF, through erf (`nn.GELU()`'s default, exact form).
#[inline(always)]
pub fn normal_cdf(x: f32) -> f32 {
    0.5 * (1.0 + erf(x * FRAC_1_SQRT_2))
}

#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    x * normal_cdf(x)
}

/// (GELU(x), GELU′(x)) with Φ(x) computed once: GELU′(x) = Φ(x) + x·φ(x); GELU(x) has the
/// same bits as `gelu`.
#[inline(always)]
pub fn gelu_and_grad(x: f32) -> (f32, f32) {
    let cdf = normal_cdf(x);
    (x * cdf, cdf + x * INV_SQRT_2PI * exp_f32(-0.5 * x * x))
}

/// Dropout of one layer at one optimizer step: element `i` of the batch activations is kept
/// when a hash of (stream, i) is at least `p`. Counter-based, so the CPU and the CUDA kernels
/// draw the same mask, and the backward pass recomputes it instead of storing it.
#[derive(Clone, Copy, Debug)]
pub struct Dropout {
    pub p: f32,
    pub stream: u64,
}

impl Dropout {
    pub const OFF: Dropout = Dropout { p: 0.0, stream: 0 };

    /// The stream of dropout site `site` (0..5: text heads 0–2, image heads 0–2) of model
    /// `model` at optimizer step `step`, for a run seeded with `seed`.
    pub fn new(p: f32, seed: u64, model: u64, step: u64, site: u64) -> Dropout {
        let stream = mix64(
            mix64(seed ^ 0x6a09_e667_f3bc_c909)
                ^ mix64(model.wrapping_mul(GOLDEN) ^ (step << 4) ^ site),
        );
        Dropout { p, stream }
    }

    /// The factor element `i` is multiplied by: 0 when dropped, 1/(1−p) when kept.
    #[inline(always)]
    pub fn factor(&self, i: u64) -> f32 {
        // The top 24 bits, through i32 (exact; u64 → f32 has no vector instruction before AVX-512).
        let u = (mix64(self.stream.wrapping_add(i.wrapping_mul(GOLDEN))) >> 40) as i32 as f32
            * (1.0 / (1u64 << 24) as f32);
        if u < self.p {
            0.0
        } else {
            1.0 / (1.0 - self.p)
        }
    }

    /// `row[c] *= factor(base + c)`, the factors kept in `mask` for the backward pass (the
    /// hash costs more than the rest of a row); nothing when dropout is off.
    #[inline(always)]
    pub fn apply(&self, base: usize, row: &mut [f32], mask: &mut [f32]) {
        if self.p <= 0.0 {
            return;
        }
        for (c, (v, m)) in row.iter_mut().zip(mask.iter_mut()).enumerate() {
            *m = self.factor((base + c) as u64);
            *v *= *m;
        }
    }

    /// `row *= mask`, the factors `apply` kept; nothing when dropout is off.
    #[inline(always)]
    pub fn reapply(&self, row: &mut [f32], mask: &[f32]) {
        if self.p <= 0.0 {
            return;
        }
        for (v, m) in row.iter_mut().zip(mask) {
            *v *= m;
        }
    }
}

/// Dropout of the model's six sites, in `Tower::site` order: text heads 0–2, then image
/// heads 0–2.
pub type Dropouts = [Dropout; 6];
/// Eval mode: no dropout anywhere.
pub const NO_DROPOUT: Dropouts = [Dropout::OFF; 6];

/// The 8 partial sums of `sum_f64` and `dot_f64`, added pairwise in a fixed order.
#[inline(always)]
fn sum_lanes(acc: [f64; 8]) -> f64 {
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// Σ a·b in f64, in 8 lanes as `sum_f64`.
#[inline(always)]
fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let (mut ca, mut cb) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..8 {
            acc[l] += x[l] as f64 * y[l] as f64;
        }
    }
    for (l, (&x, &y)) in ca.remainder().iter().zip(cb.remainder()).enumerate() {
        acc[l] += x as f64 * y as f64;
    }
    sum_lanes(acc)
}

/// Σ of a row in f64 over 8 interleaved partial sums (a fixed order that vectorises).
#[inline(always)]
fn sum_f64(r: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut acc = [0f64; 8];
    let mut chunks = r.chunks_exact(8);
    for ch in &mut chunks {
        for l in 0..8 {
            acc[l] += f(ch[l]);
        }
    }
    for (l, &v) in chunks.remainder().iter().enumerate() {
        acc[l] += f(v);
    }
    sum_lanes(acc)
}

/// LayerNorm of one row in place: `r` → normalised x̂ (kept for the backward pass) and
/// `y = x̂·γ + β`; returns 1/σ. Statistics in f64 (two passes), as exact as it gets in f32 out.
#[inline(always)]
fn layer_norm_row(r: &mut [f32], gamma: &[f32], beta: &[f32], y: &mut [f32]) -> f32 {
    let k = r.len() as f64;
    let mean = sum_f64(r, |v| v as f64) / k;
    let var = sum_f64(r, |v| (v as f64 - mean) * (v as f64 - mean)) / k;
    let rstd = (1.0 / (var + LN_EPS as f64).sqrt()) as f32;
    let mean = mean as f32;
    for (((v, yv), g), b) in r.iter_mut().zip(y.iter_mut()).zip(gamma).zip(beta) {
        *v = (*v - mean) * rstd;
        *yv = *v * g + b;
    }
    rstd
}

/// What a head's forward pass keeps for the backward pass (n × k each, `rstd` n): the
/// normalised x̂ and 1/σ of its LayerNorm, the output y, the dropout factors, and GELU′ of the
/// pre-activation (residual heads).
pub struct Saved<'a> {
    pub xhat: &'a mut [f32],
    pub rstd: &'a mut [f32],
    pub y: &'a mut [f32],
    pub mask: &'a mut [f32],
    pub dgelu: &'a mut [f32],
}

#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
/// Residual head after its GEMM: y = LN(x + dropout(GELU(a))). Writes x̂ and 1/σ for the
/// backward pass, and with `train` GELU′(a) too (erf and exp cost more than the rest of a row).
pub fn residual_gelu_ln_forward(
    x: &[f32],
    a: &[f32],
    k: usize,
    drop: Dropout,
    gamma: &[f32],
    beta: &[f32],
    saved: Saved,
    train: bool,
) {
    let Saved {
        xhat,
        rstd,
        y,
        mask,
        dgelu,
    } = saved;
    let rows = rstd.len();
    let task = ROWS_PER_TASK * k;
    xhat[..rows * k]
        .par_chunks_mut(task)
        .zip(y[..rows * k].par_chunks_mut(task))
        .zip(mask[..rows * k].par_chunks_mut(task))
        .zip(dgelu[..rows * k].par_chunks_mut(task))
        .zip(rstd.par_chunks_mut(ROWS_PER_TASK))
        .enumerate()
        .for_each(|(t, ((((xh, yy), mk), dg), rs))| {
            wide(
                #[inline(always)]
                || {
                    let rows = xh.chunks_exact_mut(k).zip(yy.chunks_exact_mut(k));
                    let saved = mk.chunks_exact_mut(k).zip(dg.chunks_exact_mut(k));
                    for (r, ((xr, yr), ((mr, dr), s))) in
                        rows.zip(saved.zip(rs.iter_mut())).enumerate()
                    {
                        let base = (t * ROWS_PER_TASK + r) * k;
                        let ar = &a[base..base + k];
                        if train {
                            for ((o, d), &v) in xr.iter_mut().zip(dr.iter_mut()).zip(ar) {
                                (*o, *d) = gelu_and_grad(v);
                            }
                        } else {
                            for (o, &v) in xr.iter_mut().zip(ar) {
                                *o = gelu(v);
                            }
                        }
                        drop.apply(base, xr, mr);
                        for (o, &v) in xr.iter_mut().zip(&x[base..base + k]) {
                            *o += v;
                        }
                        *s = layer_norm_row(xr, gamma, beta, yr);
                    }
                },
            )
        });
}

#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
/// Projection head after its second GEMM: y = LN(p + dropout(a)).
pub fn residual_ln_forward(
    p: &[f32],
    a: &[f32],
    k: usize,
    drop: Dropout,
    gamma: &[f32],
    beta: &[f32],
    saved: Saved,
) {
    let Saved {
        xhat,
        rstd,
        y,
        mask,
        ..
    } = saved;
    let rows = rstd.len();
    let task = ROWS_PER_TASK * k;
    xhat[..rows * k]
        .par_chunks_mut(task)
        .zip(y[..rows * k].par_chunks_mut(task))
        .zip(mask[..rows * k].par_chunks_mut(task))
        .zip(rstd.par_chunks_mut(ROWS_PER_TASK))
        .enumerate()
        .for_each(|(t, (((xh, yy), mk), rs))| {
            wide(
                #[inline(always)]
                || {
                    let rows = xh.chunks_exact_mut(k).zip(yy.chunks_exact_mut(k));
                    for (r, ((xr, yr), (mr, s))) in rows
                        .zip(mk.chunks_exact_mut(k).zip(rs.iter_mut()))
                        .enumerate()
                    {
                        let base = (t * ROWS_PER_TASK + r) * k;
                        xr.copy_from_slice(&a[base..base + k]);
                        drop.apply(base, xr, mr);
                        for (o, &v) in xr.iter_mut().zip(&p[base..base + k]) {
                            *o += v;
                        }
                        *s = layer_norm_row(xr, gamma, beta, yr);
                    }
                },
            )
        });
}

/// GELU elementwise (the projection head's activation), in parallel; with `train`, GELU′ into
/// `dgelu` for the backward pass.
pub fn gelu_forward(p: &[f32], g: &mut [f32], dgelu: &mut [f32], train: bool) {
    g.par_chunks_mut(4096)
        .zip(
            p.par_chunks(4096)
                .zip(dgelu[..p.len()].par_chunks_mut(4096)),
        )
        .for_each(|(g, (p, dg))| {
            wide(
                #[inline(always)]
                || {
                    if train {
                        for ((g, d), &p) in g.iter_mut().zip(dg.iter_mut()).zip(p) {
                            (*g, *d) = gelu_and_grad(p);
                        }
                    } else {
                        for (g, &p) in g.iter_mut().zip(p) {
                            *g = gelu(p);
                        }
                    }
                },
            )
        });
}

/// LayerNorm backward of one row: dr = (1/σ)(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)), dx̂ = dy·γ.
#[inline(always)]
fn layer_norm_row_backward(dy: &[f32], xhat: &[f32], rstd: f32, gamma: &[f32], dr: &mut [f32]) {
    let k = dy.len();
    // Σ dx̂ and Σ dx̂·x̂ over 8 interleaved partial sums (vectorises; fixed order).
    let (mut s1, mut s2) = ([0f32; 8], [0f32; 8]);
    for c0 in (0..k - k % 8).step_by(8) {
        for l in 0..8 {
            let dx = dy[c0 + l] * gamma[c0 + l];
            s1[l] += dx;
            s2[l] += dx * xhat[c0 + l];
        }
    }
    for c in k - k % 8..k {
        let dx = dy[c] * gamma[c];
        s1[c % 8] += dx;
        s2[c % 8] += dx * xhat[c];
    }
    let total = |s: [f32; 8]| ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
    let (m1, m2) = (total(s1) / k as f32, total(s2) / k as f32);
    for (((o, d), g), x) in dr.iter_mut().zip(dy).zip(gamma).zip(xhat) {
        *o = rstd * (d * g - m1 - x * m2);
    }
}

/// dγ += Σ_rows dy·x̂, dβ += Σ_rows dy (rows in order).
pub fn layer_norm_param_grads(
    dy: &[f32],
    xhat: &[f32],
    k: usize,
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    wide(
        #[inline(always)]
        || {
            for (d, x) in dy.chunks_exact(k).zip(xhat.chunks_exact(k)) {
                for c in 0..k {
                    dgamma[c] += d[c] * x[c];
                    dbeta[c] += d[c];
                }
            }
        },
    )
}

/// A head's backward pass up to its GEMMs, from dy: dr, the gradient through LayerNorm (the
/// residual path's dx, to which δW is added later), and δ = dr·GELU′(a)·dropout, the gradient
/// of the Linear's output, with the GELU′(a) (residual heads; `None` for the projection head,
/// whose Linear is not followed by a GELU) and the dropout factors the forward pass kept.
#[allow(clippy::too_many_arguments)]
pub fn residual_ln_backward(
    dy: &[f32],
    xhat: &[f32],
    rstd: &[f32],
    dgelu: Option<&[f32]>,
    k: usize,
    drop: Dropout,
    mask: &[f32],
    gamma: &[f32],
    dr: &mut [f32],
    delta: &mut [f32],
) {
    let rows = rstd.len();
    let task = ROWS_PER_TASK * k;
    dr[..rows * k]
        .par_chunks_mut(task)
        .zip(delta[..rows * k].par_chunks_mut(task))
        .enumerate()
        .for_each(|(t, (drt, dt))| {
            wide(
                #[inline(always)]
                || {
                    for (r, (drr, dd)) in drt
                        .chunks_exact_mut(k)
                        .zip(dt.chunks_exact_mut(k))
                        .enumerate()
                    {
                        let row = t * ROWS_PER_TASK + r;
                        let base = row * k;
                        layer_norm_row_backward(
                            &dy[base..base + k],
                            &xhat[base..base + k],
                            rstd[row],
                            gamma,
                            drr,
                        );
                        match dgelu {
                            Some(dgelu) => {
                                for ((o, &d), &g) in
                                    dd.iter_mut().zip(&dgelu[base..base + k]).zip(drr.iter())
                                {
                                    *o = g * d;
                                }
                            }
                            None => dd.copy_from_slice(drr),
                        }
                        drop.reapply(dd, &mask[base..base + k]);
                    }
                },
            )
        });
}

/// dp += dg·GELU′(p): the gradient through the projection head's activation (GELU′(p) as
/// `gelu_forward` kept it).
pub fn gelu_backward_add(dg: &[f32], dgelu: &[f32], dp: &mut [f32]) {
    dp.par_chunks_mut(4096)
        .zip(dg.par_chunks(4096).zip(dgelu.par_chunks(4096)))
        .for_each(|(o, (g, d))| {
            wide(
                #[inline(always)]
                || {
                    for ((o, g), d) in o.iter_mut().zip(g).zip(d) {
                        *o += g * d;
                    }
                },
            )
        });
}

/// Rows scaled to unit L2 norm (norm clamped below at 1e-12, as `F.normalize`); returns the
/// clamped norms.
pub fn l2_normalize_rows(z: &[f32], k: usize, out: &mut [f32]) -> Vec<f32> {
    out.par_chunks_mut(k)
        .zip(z.par_chunks(k))
        .map(|(o, r)| {
            wide(
                #[inline(always)]
                || {
                    let norm = (r.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt() as f32)
                        .max(L2_EPS);
                    for (o, v) in o.iter_mut().zip(r) {
                        *o = v / norm;
                    }
                    norm
                },
            )
        })
        .collect()
}

/// Backward of `l2_normalize_rows`: dz = (dout − out·(out·dout)) / norm.
pub fn l2_normalize_backward(out: &[f32], dout: &[f32], norms: &[f32], k: usize, dz: &mut [f32]) {
    dz.par_chunks_mut(k)
        .zip(out.par_chunks(k).zip(dout.par_chunks(k)))
        .zip(norms.par_iter())
        .for_each(|((dz, (o, d)), &norm)| {
            wide(
                #[inline(always)]
                || {
                    let dot: f32 = o.iter().zip(d).map(|(a, b)| a * b).sum();
                    for ((z, o), d) in dz.iter_mut().zip(o).zip(d) {
                        *z = (d - o * dot) / norm;
                    }
                },
            )
        });
}

/// Symmetric InfoNCE on an n×n similarity matrix `sim` (rows = images, columns = texts) with
/// logits = s·sim and the diagonal as labels: loss = (CE(rows) + CE(columns)) / 2. Writes
/// dL/dlogits into `dlogits` and returns (loss, dL/ds). Sums in f64.
pub fn info_nce(sim: &[f32], n: usize, s: f32, dlogits: &mut [f32]) -> (f32, f32) {
    if n == 0 {
        return (0.0, 0.0);
    }
    let (sim, dlogits) = (&sim[..n * n], &mut dlogits[..n * n]);
    // A batch is at most a few hundred rows: one thread, 8 lanes, no rayon round trips.
    wide(
        #[inline(always)]
        || {
            let mut row_max = vec![f32::NEG_INFINITY; n];
            let mut col_max = vec![f32::NEG_INFINITY; n];
            for (r, mr) in sim.chunks_exact(n).zip(&mut row_max) {
                // max is exact, so 8 running maxima give the sequential one, 8 lanes wide.
                let mut lanes = [f32::NEG_INFINITY; 8];
                let mut chunks = r.chunks_exact(8);
                for c in &mut chunks {
                    for (l, &v) in lanes.iter_mut().zip(c) {
                        *l = l.max(s * v);
                    }
                }
                let tail = chunks.remainder().iter().map(|&v| s * v);
                *mr = lanes
                    .into_iter()
                    .chain(tail)
                    .fold(f32::NEG_INFINITY, f32::max);
                for (&v, mc) in r.iter().zip(&mut col_max) {
                    *mc = mc.max(s * v);
                }
            }
            // Softmax denominators, summed in f64 in index order; the row softmax's
            // numerators wait in dlogits.
            let mut row_sum = vec![0.0f32; n];
            let mut col_sum = vec![0.0f64; n];
            for ((r, e), (&mr, sr)) in sim
                .chunks_exact(n)
                .zip(dlogits.chunks_exact_mut(n))
                .zip(row_max.iter().zip(&mut row_sum))
            {
                for (e, &v) in e.iter_mut().zip(r) {
                    *e = exp_f32(s * v - mr);
                }
                *sr = sum_f64(e, |e| e as f64) as f32;
                for ((&v, &mc), sc) in r.iter().zip(&col_max).zip(&mut col_sum) {
                    *sc += exp_f32(s * v - mc) as f64;
                }
            }
            let col_sum: Vec<f32> = col_sum.iter().map(|&c| c as f32).collect();
            let mut loss = 0.0f64;
            for i in 0..n {
                let d = (s * sim[i * n + i]) as f64;
                loss += row_max[i] as f64 + (row_sum[i] as f64).ln() - d;
                loss += col_max[i] as f64 + (col_sum[i] as f64).ln() - d;
            }
            // dL/dlogit_ij = (row softmax + column softmax − 2·[i = j]) / 2n.
            let w = 0.5 / n as f32;
            for (i, (r, g)) in sim
                .chunks_exact(n)
                .zip(dlogits.chunks_exact_mut(n))
                .enumerate()
            {
                let (sr, e_ii) = (row_sum[i], g[i]);
                for (((g, &v), &mc), &sc) in g.iter_mut().zip(r).zip(&col_max).zip(&col_sum) {
                    *g = w * (*g / sr + exp_f32(s * v - mc) / sc);
                }
                let c_ii = exp_f32(s * r[i] - col_max[i]) / col_sum[i];
                g[i] = w * (e_ii / sr + c_ii - 2.0);
            }
            let ds: f64 = dlogits
                .chunks_exact(n)
                .zip(sim.chunks_exact(n))
                .map(|(g, r)| dot_f64(g, r))
                .sum();
            ((loss / (2 * n) as f64) as f32, ds as f32)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_grad_matches_finite_difference() {
        for &x in &[-3.0f32, -1.0, -0.2, 0.0, 0.3, 1.5, 4.0] {
            let h = 1e-3f32;
            let fd = (gelu(x + h) as f64 - gelu(x - h) as f64) / (2.0 * h as f64);
            assert!((fd - gelu_and_grad(x).1 as f64).abs() < 1e-3, "{x}");
        }
    }

    #[test]
    fn vectorisable_exp_and_erf_match_libm() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (exp_f32(x) as f64, (x as f64).exp());
            assert!(((a - b) / b).abs() < 3e-7, "exp({x}): {a} vs {b}");
            x += 0.0137;
        }
        let mut x = -6.0f32;
        while x < 6.0 {
            let (a, b) = (erf(x), libm::erff(x));
            // A&S's 1.5e-7 plus the f32 rounding of 1 − r·t·e^(−x²); relative near 0.
            let tol = if x.abs() < 0.5 { 4e-7 * b.abs() } else { 4e-7 };
            assert!((a - b).abs() <= tol, "erf({x}): {a} vs {b}");
            x += 0.000_97;
        }
        assert_eq!(erf(0.0), 0.0);
        assert_eq!(erf(9.0), 1.0);
        assert_eq!(erf(-9.0), -1.0);
    }

    #[test]
    fn wide_linear_forward_gives_the_same_bits_as_the_plain_one() {
        // A batch and widths that are not multiples of 16 (transpose blocks, gemm lanes).
        let (n, k, din) = (100, 72, 1100);
        let wave = |len: usize, s: usize| -> Vec<f32> {
            (0..len)
                .map(|i| ((i * 7919 + s) % 2003) as f32 / 1001.0 - 1.0)
                .collect()
        };
        let (x, w, bias) = (wave(n * din, 1), wave(k * din, 2), wave(k, 3));
        let (mut plain, mut wide) = (vec![0.0; n * k], vec![0.0; n * k]);
        assert!(is_wide(k, din));
        fill_rows(&mut plain, &bias);
        matmul_nt(n, k, din, &x, &w, &mut plain, true);
        linear_forward(n, k, din, &x, &w, &bias, &mut wide);
        assert!(plain
            .iter()
            .zip(&wide)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        let i = 77 * k + 5;
        let exact: f64 = bias[5] as f64
            + (0..din)
                .map(|l| x[77 * din + l] as f64 * w[5 * din + l] as f64)
                .sum::<f64>();
        assert!(
            (plain[i] as f64 - exact).abs() < 1e-4,
            "{} vs {exact}",
            plain[i]
        );
    }

    #[test]
    fn dropout_keeps_about_half() {
        let d = Dropout::new(0.5, 7, 0, 3, 1);
        let kept = (0..100_000u64).filter(|&i| d.factor(i) > 0.0).count();
        assert!((kept as i64 - 50_000).abs() < 1_000, "{kept}");
        assert_eq!(d.factor(12), Dropout::new(0.5, 7, 0, 3, 1).factor(12));
    }

    #[test]
    fn info_nce_gradient_matches_finite_difference() {
        let n = 5;
        let sim: Vec<f32> = (0..n * n)
            .map(|i| ((i * 37 % 11) as f32 / 11.0) - 0.5)
            .collect();
        let mut g = vec![0.0; n * n];
        let (_, ds) = info_nce(&sim, n, 10.0, &mut g);
        let mut tmp = vec![0.0; n * n];
        let h = 1e-3f32;
        let lp = info_nce(&sim, n, 10.0 + h, &mut tmp).0 as f64;
        let lm = info_nce(&sim, n, 10.0 - h, &mut tmp).0 as f64;
        assert!(((lp - lm) / (2.0 * h as f64) - ds as f64).abs() < 1e-2);
        // dL/dsim = s·dL/dlogits
        let mut sp = sim.clone();
        sp[7] += h;
        let lp = info_nce(&sp, n, 10.0, &mut tmp).0 as f64;
        sp[7] -= 2.0 * h;
        let lm = info_nce(&sp, n, 10.0, &mut tmp).0 as f64;
        assert!(((lp - lm) / (2.0 * h as f64) - 10.0 * g[7] as f64).abs() < 1e-2);
    }
}
