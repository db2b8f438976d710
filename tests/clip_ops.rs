//! The CLIP ops one by one on every device (`test_device!`): on the CPU each op of
//! `src/clip/ops.rs` / `adamw.rs` against a plain f64 reference written here from the
//! formulas (PyTorch's, which tests/clip_parity.rs checks end to end), on a CUDA device each
//! kernel of `kernels/clip.cu`, through the CUDA engine's launch wrappers, against the CPU op.
//! Widths are not multiples of the vector or block sizes (37 rows of 300).

mod common;

use common::test_device;
use niclip::clip::kernels::{AdamState, HeadParams, Kernels, LnOut};
use niclip::clip::ops::Dropout;
use niclip::device::Device;
use niclip::rng::{mix64, SplitMix64, GOLDEN};

const N: usize = 37;
const K: usize = 300;

/// `len` values uniform in [−1, 1), seeded.
fn wave(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64(seed);
    (0..len).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect()
}

fn head(seed: u64) -> HeadParams {
    let scaled = |s: u64, a: f32, b: f32| -> Vec<f32> {
        wave(K, seed * 3 + s).iter().map(|v| a + b * v).collect()
    };
    HeadParams {
        fc_b: scaled(0, 0.0, 0.1),
        gamma: scaled(1, 1.0, 0.2),
        beta: scaled(2, 0.0, 0.1),
    }
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// What a device's op must give: the f64 reference on the CPU, the CPU op on CUDA.
fn want(dev: &Device, reference: Vec<f64>, cpu: impl FnOnce(&dyn Kernels) -> Vec<f32>) -> Vec<f64> {
    if dev.is_cpu() {
        reference
    } else {
        f64s(&cpu(&*Device::Cpu.clip_kernels()))
    }
}

/// |got − want| ≤ atol + rtol·|want| everywhere (the worst is printed).
fn close(what: &str, got: &[f32], want: &[f64], rtol: f64, atol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let mut worst = (0.0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let excess = (g as f64 - w).abs() / (atol + rtol * w.abs());
        if excess.is_nan() || excess > worst.0 {
            worst = (
                if excess.is_nan() {
                    f64::INFINITY
                } else {
                    excess
                },
                i,
            );
        }
    }
    let (e, i) = worst;
    eprintln!("{what}: worst {e:.3} of the tolerance at {i}");
    assert!(e <= 1.0, "{what}[{i}] = {} vs {}", got[i], want[i]);
}

fn erf_cdf(x: f64) -> f64 {
    0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

fn gelu(x: f64) -> f64 {
    x * erf_cdf(x)
}

fn gelu_grad(x: f64) -> f64 {
    erf_cdf(x) + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

/// The dropout factor of element i, from the documented hash: kept when
/// (mix64(stream + i·golden) >> 40) / 2²⁴ ≥ p, then scaled by 1/(1 − p).
fn factor(d: Dropout, i: usize) -> f64 {
    if d.p <= 0.0 {
        return 1.0;
    }
    let h = mix64(d.stream.wrapping_add((i as u64).wrapping_mul(GOLDEN)));
    let u = (h >> 40) as f64 / (1u64 << 24) as f64;
    if u < d.p as f64 {
        0.0
    } else {
        1.0 / (1.0 - d.p as f64)
    }
}

/// LayerNorm of each row of `v` (k wide, ε = 1e-5) with `h`'s γ and β.
fn layer_norm(v: &[f64], h: &HeadParams) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let k = h.gamma.len();
    let (mut xhat, mut rstd, mut y) = (Vec::new(), Vec::new(), Vec::new());
    for row in v.chunks(k) {
        let mean = row.iter().sum::<f64>() / k as f64;
        let var = row.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / k as f64;
        let rs = 1.0 / (var + 1e-5).sqrt();
        rstd.push(rs);
        for (c, x) in row.iter().enumerate() {
            let xh = (x - mean) * rs;
            xhat.push(xh);
            y.push(xh * h.gamma[c] as f64 + h.beta[c] as f64);
        }
    }
    (xhat, rstd, y)
}

/// A forward row pass's outputs against the pre-LayerNorm rows `v` (the reference).
fn check_ln(
    dev: &Device,
    got: &LnOut,
    v: &[f64],
    h: &HeadParams,
    cpu: impl Fn(&dyn Kernels) -> LnOut,
) {
    let (xhat, rstd, y) = layer_norm(v, h);
    let (tol, atol) = (1e-5, 1e-5);
    close(
        "xhat",
        &got.xhat,
        &want(dev, xhat, |k| cpu(k).xhat),
        tol,
        atol,
    );
    close(
        "rstd",
        &got.rstd,
        &want(dev, rstd, |k| cpu(k).rstd),
        tol,
        atol,
    );
    close("y", &got.y, &want(dev, y, |k| cpu(k).y), tol, atol);
}

fn bias_gelu(dev: &Device) {
    let (p, bias) = (wave(N * K, 1), wave(K, 2));
    let (pre, g) = dev.clip_kernels().bias_gelu(&p, &bias).unwrap();
    let with_bias: Vec<f64> = (0..N * K)
        .map(|i| p[i] as f64 + bias[i % K] as f64)
        .collect();
    let cpu = |k: &dyn Kernels| k.bias_gelu(&p, &bias).unwrap();
    close(
        "p + bias",
        &pre,
        &want(dev, with_bias.clone(), |k| cpu(k).0),
        1e-6,
        1e-7,
    );
    let g_ref = with_bias.iter().map(|&x| gelu(x)).collect();
    close("GELU", &g, &want(dev, g_ref, |k| cpu(k).1), 1e-5, 1e-6);
}

fn residual_gelu_ln_forward(dev: &Device) {
    let (x, a, h) = (wave(N * K, 3), wave(N * K, 4), head(1));
    let drop = Dropout::new(0.3, 5, 1, 2, 4);
    let got = (dev.clip_kernels())
        .residual_gelu_ln_forward(&x, &a, &h, drop)
        .unwrap();
    let v: Vec<f64> = (0..N * K)
        .map(|i| x[i] as f64 + gelu(a[i] as f64 + h.fc_b[i % K] as f64) * factor(drop, i))
        .collect();
    let cpu = |k: &dyn Kernels| k.residual_gelu_ln_forward(&x, &a, &h, drop).unwrap();
    check_ln(dev, &got, &v, &h, cpu);
}

fn residual_ln_forward(dev: &Device) {
    let (p, a2, h) = (wave(N * K, 5), wave(N * K, 6), head(2));
    let drop = Dropout::new(0.3, 5, 1, 2, 0);
    let got = dev
        .clip_kernels()
        .residual_ln_forward(&p, &a2, &h, drop)
        .unwrap();
    let v: Vec<f64> = (0..N * K)
        .map(|i| p[i] as f64 + (a2[i] as f64 + h.fc_b[i % K] as f64) * factor(drop, i))
        .collect();
    let cpu = |k: &dyn Kernels| k.residual_ln_forward(&p, &a2, &h, drop).unwrap();
    check_ln(dev, &got, &v, &h, cpu);
}

/// Inputs of a head's backward pass: dy, the forward's x̂ and 1/σ, γ.
fn backward_case() -> (Vec<f32>, LnOut, Vec<f32>) {
    let rstd = wave(N, 9).iter().map(|v| 1.5 + v).collect();
    let ln = LnOut {
        xhat: wave(N * K, 8),
        rstd,
        y: vec![0.0; N * K],
    };
    (wave(N * K, 7), ln, head(3).gamma)
}

/// The reference (dr, delta) of a head's backward pass.
fn head_backward_ref(
    dy: &[f32],
    ln: &LnOut,
    a: Option<&[f32]>,
    gamma: &[f32],
    drop: Dropout,
) -> (Vec<f64>, Vec<f64>) {
    let (mut dr, mut delta) = (Vec::new(), Vec::new());
    for r in 0..N {
        let at = |c: usize| r * K + c;
        let dx = |c: usize| dy[at(c)] as f64 * gamma[c] as f64;
        let m1 = (0..K).map(dx).sum::<f64>() / K as f64;
        let m2 = (0..K).map(|c| dx(c) * ln.xhat[at(c)] as f64).sum::<f64>() / K as f64;
        for c in 0..K {
            let d = ln.rstd[r] as f64 * (dx(c) - m1 - ln.xhat[at(c)] as f64 * m2);
            let through = a.map_or(1.0, |a| gelu_grad(a[at(c)] as f64));
            dr.push(d);
            delta.push(d * factor(drop, at(c)) * through);
        }
    }
    (dr, delta)
}

fn head_backward(dev: &Device) {
    let (dy, ln, gamma) = backward_case();
    let a = wave(N * K, 10);
    let drop = Dropout::new(0.3, 5, 1, 2, 1);
    for a in [Some(a.as_slice()), None] {
        let (dr, delta) = (dev.clip_kernels())
            .head_backward(&dy, &ln, a, &gamma, drop)
            .unwrap();
        let (dr_ref, delta_ref) = head_backward_ref(&dy, &ln, a, &gamma, drop);
        let cpu = |k: &dyn Kernels| k.head_backward(&dy, &ln, a, &gamma, drop).unwrap();
        close("dr", &dr, &want(dev, dr_ref, |k| cpu(k).0), 1e-5, 1e-5);
        close(
            "delta",
            &delta,
            &want(dev, delta_ref, |k| cpu(k).1),
            1e-5,
            1e-5,
        );
    }
}

/// The dropout masks are the documented hash's, bit for bit: delta = dr · factor exactly.
fn dropout(dev: &Device) {
    let (dy, ln, gamma) = backward_case();
    let drop = Dropout::new(0.5, 11, 3, 7, 5);
    let (dr, delta) = (dev.clip_kernels())
        .head_backward(&dy, &ln, None, &gamma, drop)
        .unwrap();
    let mut kept = 0;
    for i in 0..N * K {
        let f = factor(drop, i) as f32;
        assert_eq!(delta[i].to_bits(), (dr[i] * f).to_bits(), "element {i}");
        kept += usize::from(f > 0.0);
    }
    let share = kept as f64 / (N * K) as f64;
    assert!((share - 0.5).abs() < 0.03, "kept {share}");
}

fn gelu_backward_add(dev: &Device) {
    let (dg, p, dp) = (wave(N * K, 12), wave(N * K, 13), wave(N * K, 14));
    let got = dev.clip_kernels().gelu_backward_add(&dg, &p, &dp).unwrap();
    let reference = (0..N * K)
        .map(|i| dp[i] as f64 + dg[i] as f64 * gelu_grad(p[i] as f64))
        .collect();
    let cpu = |k: &dyn Kernels| k.gelu_backward_add(&dg, &p, &dp).unwrap();
    close("dp", &got, &want(dev, reference, cpu), 1e-5, 1e-6);
}

fn l2_normalize(dev: &Device) {
    let mut z = wave(N * K, 15);
    z[3 * K..4 * K].fill(0.0); // a zero row stays zero (norm clamped at 1e-12)
    let (out, norms) = dev.clip_kernels().l2_normalize(&z, K).unwrap();
    let (mut out_ref, mut norms_ref) = (Vec::new(), Vec::new());
    for row in z.chunks(K) {
        let norm = row
            .iter()
            .map(|&v| v as f64 * v as f64)
            .sum::<f64>()
            .sqrt()
            .max(1e-12);
        norms_ref.push(norm);
        out_ref.extend(row.iter().map(|&v| v as f64 / norm));
    }
    let cpu = |k: &dyn Kernels| k.l2_normalize(&z, K).unwrap();
    close("out", &out, &want(dev, out_ref, |k| cpu(k).0), 1e-6, 1e-7);
    close(
        "norms",
        &norms,
        &want(dev, norms_ref, |k| cpu(k).1),
        1e-6,
        1e-12,
    );
}

fn l2_normalize_backward(dev: &Device) {
    let (z, dout) = (wave(N * K, 16), wave(N * K, 17));
    let (out, norms) = Device::Cpu.clip_kernels().l2_normalize(&z, K).unwrap();
    let got = (dev.clip_kernels())
        .l2_normalize_backward(&out, &dout, &norms, K)
        .unwrap();
    let mut reference = Vec::new();
    for r in 0..N {
        let (o, d) = (&out[r * K..(r + 1) * K], &dout[r * K..(r + 1) * K]);
        let dot: f64 = o.iter().zip(d).map(|(&a, &b)| a as f64 * b as f64).sum();
        let norm = norms[r] as f64;
        reference.extend((0..K).map(|c| (d[c] as f64 - o[c] as f64 * dot) / norm));
    }
    let cpu = |k: &dyn Kernels| k.l2_normalize_backward(&out, &dout, &norms, K).unwrap();
    close("dz", &got, &want(dev, reference, cpu), 1e-5, 1e-6);
}

fn info_nce(dev: &Device) {
    let (n, s) = (29usize, 10.0f32);
    let sim = wave(n * n, 18);
    let got = dev.clip_kernels().info_nce(&sim, n, s).unwrap();
    // Reference: logits = s·sim, CE of the rows and of the columns against the diagonal.
    let l = |i: usize, j: usize| s as f64 * sim[i * n + j] as f64;
    let lse = |f: &dyn Fn(usize) -> f64| {
        let m = (0..n).map(f).fold(f64::NEG_INFINITY, f64::max);
        m + (0..n).map(|j| (f(j) - m).exp()).sum::<f64>().ln()
    };
    let row_lse: Vec<f64> = (0..n).map(|i| lse(&|j| l(i, j))).collect();
    let col_lse: Vec<f64> = (0..n).map(|j| lse(&|i| l(i, j))).collect();
    let loss = (0..n)
        .map(|i| row_lse[i] + col_lse[i] - 2.0 * l(i, i))
        .sum::<f64>()
        / (2 * n) as f64;
    let (mut dsim, mut ds) = (Vec::new(), 0.0);
    for i in 0..n {
        for j in 0..n {
            let eye = if i == j { 2.0 } else { 0.0 };
            let g = ((l(i, j) - row_lse[i]).exp() + (l(i, j) - col_lse[j]).exp() - eye)
                / (2 * n) as f64;
            ds += g * sim[i * n + j] as f64;
            dsim.push(s as f64 * g);
        }
    }
    let cpu = |k: &dyn Kernels| k.info_nce(&sim, n, s).unwrap();
    close(
        "loss",
        &[got.loss],
        &want(dev, vec![loss], |k| vec![cpu(k).loss]),
        1e-6,
        0.0,
    );
    close(
        "dL/ds",
        &[got.ds],
        &want(dev, vec![ds], |k| vec![cpu(k).ds]),
        1e-5,
        1e-6,
    );
    close(
        "dL/dsim",
        &got.dsim,
        &want(dev, dsim, |k| cpu(k).dsim),
        1e-5,
        1e-6,
    );
}

fn bias_grad(dev: &Device) {
    let delta = wave(N * K, 19);
    let got = dev.clip_kernels().bias_grad(&delta, K).unwrap();
    let reference = (0..K)
        .map(|c| (0..N).map(|r| delta[r * K + c] as f64).sum())
        .collect();
    let cpu = |k: &dyn Kernels| k.bias_grad(&delta, K).unwrap();
    close("db", &got, &want(dev, reference, cpu), 1e-5, 1e-5);
}

fn layer_norm_param_grad(dev: &Device) {
    let (dy, xhat) = (wave(N * K, 20), wave(N * K, 21));
    let (dgamma, dbeta) = dev
        .clip_kernels()
        .layer_norm_param_grad(&dy, &xhat, K)
        .unwrap();
    let col = |f: &dyn Fn(usize) -> f64| -> Vec<f64> {
        (0..K).map(|c| (0..N).map(|r| f(r * K + c)).sum()).collect()
    };
    let dg_ref = col(&|i| dy[i] as f64 * xhat[i] as f64);
    let db_ref = col(&|i| dy[i] as f64);
    let cpu = |k: &dyn Kernels| k.layer_norm_param_grad(&dy, &xhat, K).unwrap();
    close(
        "dgamma",
        &dgamma,
        &want(dev, dg_ref, |k| cpu(k).0),
        1e-5,
        1e-5,
    );
    close(
        "dbeta",
        &dbeta,
        &want(dev, db_ref, |k| cpu(k).1),
        1e-5,
        1e-5,
    );
}

/// Three AdamW steps (PyTorch's update: decoupled decay, bias-corrected moments).
fn adamw(dev: &Device) {
    let len = 5000;
    let (lr, wd) = (1e-2f32, 0.1f32);
    let init = AdamState {
        params: wave(len, 22),
        m: vec![0.0; len],
        v: vec![0.0; len],
    };
    let grads: Vec<Vec<f32>> = (0..3).map(|t| wave(len, 23 + t)).collect();
    let run = |k: &dyn Kernels| {
        let mut st = init.clone();
        for (t, g) in grads.iter().enumerate() {
            k.adamw(&mut st, g, t as u64 + 1, lr, wd).unwrap();
        }
        st
    };
    let got = run(&*dev.clip_kernels());
    let (mut p, mut m, mut v) = (f64s(&init.params), vec![0.0; len], vec![0.0; len]);
    let (b1, b2, lr, wd) = (0.9f64, 0.999f64, lr as f64, wd as f64);
    for (t, g) in grads.iter().enumerate() {
        let t = t as i32 + 1;
        let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        for i in 0..len {
            let g = g[i] as f64;
            p[i] *= 1.0 - lr * wd;
            m[i] = b1 * m[i] + (1.0 - b1) * g;
            v[i] = b2 * v[i] + (1.0 - b2) * g * g;
            p[i] -= lr / bc1 * m[i] / (v[i].sqrt() / bc2.sqrt() + 1e-8);
        }
    }
    let moved = got
        .params
        .iter()
        .zip(&init.params)
        .any(|(a, b)| (a - b).abs() > 1e-2);
    assert!(moved, "AdamW moved nothing");
    close(
        "params",
        &got.params,
        &want(dev, p, |k| run(k).params),
        1e-5,
        1e-6,
    );
    close("m", &got.m, &want(dev, m, |k| run(k).m), 1e-5, 1e-7);
    // niclip takes 1 − β2 in f32 (0.99998713e-3), PyTorch the Python float (1e-3): the
    // increments of v differ by 1.3e-5 relative (the weights, through √v, by far less).
    close("v", &got.v, &want(dev, v, |k| run(k).v), 3e-5, 1e-10);
}

fn gather(dev: &Device) {
    let (width, src) = (13, wave(40 * 13, 26));
    let rows = [39, 0, 7, 7, 21];
    let got = dev.clip_kernels().gather(&src, width, &rows).unwrap();
    let reference: Vec<f32> = rows
        .iter()
        .flat_map(|&r| src[r * width..(r + 1) * width].to_vec())
        .collect();
    assert_eq!(got, reference);
}

test_device!(
    bias_gelu,
    residual_gelu_ln_forward,
    residual_ln_forward,
    head_backward,
    dropout,
    gelu_backward_add,
    l2_normalize,
    l2_normalize_backward,
    info_nce,
    bias_grad,
    layer_norm_param_grad,
    adamw,
    gather,
);
