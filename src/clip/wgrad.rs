//! A Linear layer's weight gradient fused with its AdamW step: g = δᵀ x is taken for a block
//! of whole weight rows at a time into a scratch that stays in cache, and the block's update
//! follows at once, so a weight matrix's gradient never goes out to memory and back. AdamW is
//! memory-bound (it streams p, g, m and v), and the rows of a block are contiguous, so p, m
//! and v stream in order. The sums are the same fused multiply-adds in the same order as
//! gemm's, and the update is `adamw::adamw_update`, so the bits are those of the two run apart.

use super::adamw::{adamw_step_with, adamw_update, AdamStep};
use super::ops::{self, Vectors};
use rayon::prelude::*;

/// Weight rows per tile (the 6 × 16 register tile of AVX2's 16 registers).
const TILE_ROWS: usize = 6;
/// Weight columns per tile: two 8-lane vectors.
const TILE_COLS: usize = 16;
/// Weight rows per rayon task (its g, 48 × din, stays in cache; each column panel of the packed
/// x is reused by this many rows).
const TASK_ROWS: usize = 8 * TILE_ROWS;

/// Scratch for `weight_grad_adamw`: the packed δ and x of a batch.
#[derive(Default)]
pub struct Packed {
    delta: Vec<f32>,
    x: Vec<f32>,
}

impl Packed {
    /// Room for batches of up to `n` rows, `k` outputs and `din` inputs.
    pub fn new(n: usize, k: usize, din: usize) -> Packed {
        Packed {
            delta: vec![0.0; n * k.next_multiple_of(TILE_ROWS)],
            x: vec![0.0; n * din],
        }
    }
}

/// AdamW on the weights `w` (k × din) of a Linear layer with the gradient g = δᵀ x, δ the
/// gradient of its output (n × k) and x its input (n × din); `m`, `v` the moments of `w`.
/// Without AVX2 and FMA, g is taken by gemm into `g_fallback` (k × din) and then applied.
#[allow(clippy::too_many_arguments)]
pub fn weight_grad_adamw(
    n: usize,
    k: usize,
    din: usize,
    delta: &[f32],
    x: &[f32],
    w: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    c: AdamStep,
    packed: &mut Packed,
    g_fallback: &mut [f32],
) {
    let vectors = Vectors::detect();
    weight_grad_adamw_on(vectors, n, k, din, delta, x, w, m, v, c, packed, g_fallback)
}

/// `weight_grad_adamw` on the tiles for `vectors` (ones the CPU has), gemm on `Baseline`.
#[allow(clippy::too_many_arguments)]
fn weight_grad_adamw_on(
    vectors: Vectors,
    n: usize,
    k: usize,
    din: usize,
    delta: &[f32],
    x: &[f32],
    w: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    c: AdamStep,
    packed: &mut Packed,
    g_fallback: &mut [f32],
) {
    let len = k * din;
    assert!(
        delta.len() >= n * k && x.len() >= n * din && w.len() == len,
        "weight_grad_adamw: buffer too small"
    );
    assert!(
        m.len() == len && v.len() == len,
        "weight_grad_adamw: moments"
    );
    #[cfg(target_arch = "x86_64")]
    if vectors != Vectors::Baseline {
        let rows = k.next_multiple_of(TILE_ROWS);
        assert!(
            packed.delta.len() >= n * rows && packed.x.len() >= n * din,
            "weight_grad_adamw: packed scratch too small"
        );
        let (dp, xp) = (&mut packed.delta[..n * rows], &mut packed.x[..n * din]);
        pack(n, k, din, delta, x, dp, xp);
        let b = Batch {
            n,
            k,
            din,
            delta,
            x,
            dp,
            xp,
        };
        w.par_chunks_mut(TASK_ROWS * din)
            .zip(m.par_chunks_mut(TASK_ROWS * din))
            .zip(v.par_chunks_mut(TASK_ROWS * din))
            .enumerate()
            .for_each(|(task, ((w, m), v))| {
                let r0 = task * TASK_ROWS;
                if vectors == Vectors::Avx512 {
                    // SAFETY: the CPU has AVX-512F; the slices hold what `task_avx512` reads.
                    unsafe { task_avx512(&b, r0, w, m, v, c) }
                } else {
                    // SAFETY: the CPU has AVX2 and FMA; the slices hold what `task_avx2` reads.
                    unsafe { task_avx2(&b, r0, w, m, v, c) }
                }
            });
        return;
    }
    ops::matmul_tn(k, din, n, delta, x, &mut g_fallback[..len], false);
    adamw_step_with(w, &g_fallback[..len], m, v, c);
}

/// δ into panels of `TILE_ROWS` columns (p-major: panel q holds δ[p][6q..6q+6] at
/// (q·n + p)·6, zero past k) and x into panels of `TILE_COLS` columns (the full ones: panel c
/// holds x[p][16c..16c+16] at (c·n + p)·16), so that a tile reads both contiguously.
fn pack(n: usize, k: usize, din: usize, delta: &[f32], x: &[f32], dp: &mut [f32], xp: &mut [f32]) {
    dp.par_chunks_mut(n * TILE_ROWS)
        .enumerate()
        .for_each(|(q, panel)| {
            let r0 = q * TILE_ROWS;
            for (p, row) in panel.chunks_exact_mut(TILE_ROWS).enumerate() {
                for (r, d) in row.iter_mut().enumerate() {
                    *d = if r0 + r < k {
                        delta[p * k + r0 + r]
                    } else {
                        0.0
                    };
                }
            }
        });
    let full = din / TILE_COLS;
    xp[..full * n * TILE_COLS]
        .par_chunks_mut(n * TILE_COLS)
        .enumerate()
        .for_each(|(c, panel)| {
            let j0 = c * TILE_COLS;
            for (p, row) in panel.chunks_exact_mut(TILE_COLS).enumerate() {
                row.copy_from_slice(&x[p * din + j0..p * din + j0 + TILE_COLS]);
            }
        });
}

/// A batch's δ (n × k) and x (n × din), and both packed (`pack`): what every task reads.
struct Batch<'a> {
    n: usize,
    k: usize,
    din: usize,
    delta: &'a [f32],
    x: &'a [f32],
    dp: &'a [f32],
    xp: &'a [f32],
}

/// The rows `r0..` of one task (`w`, `m`, `v` hold them, din wide) with AVX2: each full
/// column panel by 6 × 16 tiles.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn task_avx2(
    b: &Batch,
    r0: usize,
    w: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    c: AdamStep,
) {
    let (n, din, dp, xp) = (b.n, b.din, b.dp, b.xp);
    task(b, r0, w, m, v, c, |g, rows| {
        for panel in 0..din / TILE_COLS {
            let xs = &xp[panel * n * TILE_COLS..(panel + 1) * n * TILE_COLS];
            for t0 in (0..rows).step_by(TILE_ROWS) {
                let ds = delta_panel(n, dp, r0 + t0);
                let g = &mut g[t0 * din + panel * TILE_COLS..];
                match rows - t0 {
                    1 => tile::<1>(n, din, ds, xs, g),
                    2 => tile::<2>(n, din, ds, xs, g),
                    3 => tile::<3>(n, din, ds, xs, g),
                    4 => tile::<4>(n, din, ds, xs, g),
                    5 => tile::<5>(n, din, ds, xs, g),
                    _ => tile::<TILE_ROWS>(n, din, ds, xs, g),
                }
            }
        }
    })
}

/// As `task_avx2` with AVX-512: 6 × 64 tiles (24 of the 32 registers accumulate) over four
/// column panels at a time, then the last one to three panels.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn task_avx512(
    b: &Batch,
    r0: usize,
    w: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    c: AdamStep,
) {
    let (n, din, dp, xp) = (b.n, b.din, b.dp, b.xp);
    task(b, r0, w, m, v, c, |g, rows| {
        let panels = din / TILE_COLS;
        for p0 in (0..panels).step_by(4) {
            let xs = &xp[p0 * n * TILE_COLS..];
            for t0 in (0..rows).step_by(TILE_ROWS) {
                let ds = delta_panel(n, dp, r0 + t0);
                let g = &mut g[t0 * din + p0 * TILE_COLS..];
                let r = (rows - t0).min(TILE_ROWS);
                match panels - p0 {
                    1 => tile512_rows::<1>(r, n, din, ds, xs, g),
                    2 => tile512_rows::<2>(r, n, din, ds, xs, g),
                    3 => tile512_rows::<3>(r, n, din, ds, xs, g),
                    _ => tile512_rows::<4>(r, n, din, ds, xs, g),
                }
            }
        }
    })
}

/// The packed δ of the 6 weight rows from `r` (a multiple of 6).
#[inline(always)]
fn delta_panel(n: usize, dp: &[f32], r: usize) -> &[f32] {
    let q = r / TILE_ROWS;
    &dp[q * n * TILE_ROWS..(q + 1) * n * TILE_ROWS]
}

/// What both tasks share: `full_panels(g, rows)` fills g's full column panels, then the last
/// `din % 16` columns are summed one element at a time, and the rows get their update.
#[inline(always)]
fn task(
    b: &Batch,
    r0: usize,
    w: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    c: AdamStep,
    full_panels: impl FnOnce(&mut [f32], usize),
) {
    let Batch {
        n,
        k,
        din,
        delta,
        x,
        ..
    } = *b;
    let rows = w.len() / din;
    thread_local! {
        static G: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    G.with_borrow_mut(|g| {
        g.resize(rows * din, 0.0);
        let g = &mut g[..rows * din];
        full_panels(g, rows);
        for j in din / TILE_COLS * TILE_COLS..din {
            for r in 0..rows {
                let mut s = 0.0f32;
                for p in 0..n {
                    s = delta[p * k + r0 + r].mul_add(x[p * din + j], s);
                }
                g[r * din + j] = s;
            }
        }
        // The task's rows are contiguous: p, m and v stream in order, g comes from cache.
        adamw_update(w, g, m, v, c);
    });
}

/// One R × 16 tile of g = δᵀ x: fused multiply-adds over the batch in order, as gemm's.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const R: usize>(n: usize, din: usize, ds: &[f32], xs: &[f32], g: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(ds.len() >= n * TILE_ROWS && xs.len() >= n * TILE_COLS);
    assert!(g.len() >= (R - 1) * din + TILE_COLS);
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    let (dptr, xptr) = (ds.as_ptr(), xs.as_ptr());
    for p in 0..n {
        let x0 = _mm256_loadu_ps(xptr.add(p * TILE_COLS));
        let x1 = _mm256_loadu_ps(xptr.add(p * TILE_COLS + 8));
        for (r, acc) in acc.iter_mut().enumerate() {
            let d = _mm256_broadcast_ss(&*dptr.add(p * TILE_ROWS + r));
            acc[0] = _mm256_fmadd_ps(d, x0, acc[0]);
            acc[1] = _mm256_fmadd_ps(d, x1, acc[1]);
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        _mm256_storeu_ps(g.as_mut_ptr().add(r * din), acc[0]);
        _mm256_storeu_ps(g.as_mut_ptr().add(r * din + 8), acc[1]);
    }
}

/// `tile512::<R, V>` for the run-time row count `r` (1 to 6).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile512_rows<const V: usize>(
    r: usize,
    n: usize,
    din: usize,
    ds: &[f32],
    xs: &[f32],
    g: &mut [f32],
) {
    match r {
        1 => tile512::<1, V>(n, din, ds, xs, g),
        2 => tile512::<2, V>(n, din, ds, xs, g),
        3 => tile512::<3, V>(n, din, ds, xs, g),
        4 => tile512::<4, V>(n, din, ds, xs, g),
        5 => tile512::<5, V>(n, din, ds, xs, g),
        _ => tile512::<TILE_ROWS, V>(n, din, ds, xs, g),
    }
}

/// One R × 16V tile of g = δᵀ x over V consecutive 16-column panels of the packed x (each
/// n × 16, one 16-lane vector a row), the same fused multiply-adds in the same order as `tile`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile512<const R: usize, const V: usize>(
    n: usize,
    din: usize,
    ds: &[f32],
    xs: &[f32],
    g: &mut [f32],
) {
    use std::arch::x86_64::*;
    assert!(ds.len() >= n * TILE_ROWS && xs.len() >= V * n * TILE_COLS);
    assert!(g.len() >= (R - 1) * din + V * TILE_COLS);
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    let (dptr, xptr) = (ds.as_ptr(), xs.as_ptr());
    for p in 0..n {
        let mut xv = [_mm512_setzero_ps(); V];
        for (c, xv) in xv.iter_mut().enumerate() {
            *xv = _mm512_loadu_ps(xptr.add((c * n + p) * TILE_COLS));
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            let d = _mm512_set1_ps(*dptr.add(p * TILE_ROWS + r));
            for (acc, xv) in acc.iter_mut().zip(&xv) {
                *acc = _mm512_fmadd_ps(d, *xv, *acc);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (c, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(g.as_mut_ptr().add(r * din + c * TILE_COLS), *acc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wave(len: usize, s: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7919 + s * 104_729) % 2003) as f32 / 1001.0 - 1.0)
            .collect()
    }

    #[test]
    fn fused_update_gives_the_bits_of_gemm_then_adamw() {
        // Row and column tails (k % 6, din % 16), a batch shorter than a tile's depth, and
        // a task boundary (k > 48).
        // Widths of 1, 2, 4 and 4 + 3 full 16-column panels, for AVX-512's 1 to 4 at a time.
        let mut kernels = vec![Vectors::Baseline];
        match Vectors::detect() {
            Vectors::Avx512 => kernels.extend([Vectors::Avx2, Vectors::Avx512]),
            Vectors::Avx2 => kernels.push(Vectors::Avx2),
            Vectors::Baseline => {}
        }
        for (vectors, (n, k, din)) in kernels
            .into_iter()
            .flat_map(|t| [(50, 13, 37), (128, 20, 64), (7, 55, 16), (33, 8, 112)].map(|s| (t, s)))
        {
            let (delta, x) = (wave(n * k, 1), wave(n * din, 2));
            let mut delta = delta;
            // Dropped activations leave exact zeros in δ.
            for d in delta.iter_mut().step_by(3) {
                *d = 0.0;
            }
            let w0 = wave(k * din, 3);
            let m0: Vec<f32> = wave(k * din, 4).iter().map(|v| v * 1e-3).collect();
            let v0: Vec<f32> = wave(k * din, 5).iter().map(|v| v * v * 1e-5).collect();
            let c = AdamStep::new(5e-4, 0.1, 3);
            let (mut w, mut m, mut v) = (w0.clone(), m0.clone(), v0.clone());
            let mut g = vec![0.0; k * din];
            let mut packed = Packed::new(n, k, din);
            weight_grad_adamw_on(
                vectors,
                n,
                k,
                din,
                &delta,
                &x,
                &mut w,
                &mut m,
                &mut v,
                c,
                &mut packed,
                &mut g,
            );
            let (mut we, mut me, mut ve) = (w0, m0, v0);
            let mut ge = vec![0.0; k * din];
            ops::matmul_tn(k, din, n, &delta, &x, &mut ge, false);
            adamw_update(&mut we, &ge, &mut me, &mut ve, c);
            let same =
                |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same(&w, &we) && same(&m, &me) && same(&v, &ve),
                "{vectors:?} {n}×{k}×{din}"
            );
            // And the update moved the weights (the gradient was not zero).
            assert!(w.iter().zip(&wave(k * din, 3)).any(|(a, b)| a != b));
        }
    }
}
