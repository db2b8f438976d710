//! AdamW as `torch.optim.AdamW` (its single-tensor update, PyTorch's Python-scalar constants),
//! on the CPU: over a flat vector in parallel chunks, or on one tensor on this thread (the
//! engine's per-tensor updates and `wgrad`'s fused blocks). `kernels/clip.cu`'s `adamw` is the
//! same update for many models at once.

use super::ops;
use rayon::prelude::*;

/// AdamW constants of `torch.optim.AdamW` besides lr and weight decay.
pub const BETA1: f32 = 0.9;
pub const BETA2: f32 = 0.999;
pub const ADAM_EPS: f32 = 1e-8;

/// Step size and 1/√(bias correction 2) of AdamW step t (1-based), in f64 as PyTorch's Python
/// scalars, then f32.
pub fn adam_scalars(lr: f32, t: u64) -> (f32, f32) {
    let bc1 = 1.0 - (BETA1 as f64).powi(t as i32);
    let bc2 = 1.0 - (BETA2 as f64).powi(t as i32);
    ((lr as f64 / bc1) as f32, bc2.sqrt() as f32)
}

/// The constants of AdamW step t (1-based).
#[derive(Clone, Copy, Debug)]
pub struct AdamStep {
    /// lr / (1 − β1ᵗ).
    pub step: f32,
    /// √(1 − β2ᵗ).
    pub bc2_sqrt: f32,
    /// 1 − lr·wd.
    pub decay: f32,
}

impl AdamStep {
    pub fn new(lr: f32, wd: f32, t: u64) -> AdamStep {
        let (step, bc2_sqrt) = adam_scalars(lr, t);
        AdamStep {
            step,
            bc2_sqrt,
            decay: 1.0 - lr * wd,
        }
    }
}

/// One AdamW step over the flat parameters, PyTorch's single-tensor update: p ← p(1 − lr·wd);
/// m ← m + (1−β1)(g − m); v ← β2 v + (1−β2) g²; p ← p − step·m / (√v / √bc2 + eps).
pub fn adamw_step(
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    t: u64,
    lr: f32,
    wd: f32,
) {
    adamw_step_with(params, grads, m, v, AdamStep::new(lr, wd, t));
}

/// `adamw_step` with its constants, over chunks in parallel.
pub fn adamw_step_with(
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    c: AdamStep,
) {
    const CHUNK: usize = 1 << 14;
    params
        .par_chunks_mut(CHUNK)
        .zip(grads.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((p, g), (m, v))| adamw_update(p, g, m, v, c));
}

/// `adamw_step` on this thread.
pub fn adamw_update(params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32], c: AdamStep) {
    let n = params.len();
    assert!(
        grads.len() == n && m.len() == n && v.len() == n,
        "AdamW: lengths differ"
    );
    ops::wide(
        #[inline(always)]
        || {
            for i in 0..n {
                adamw_one(&mut params[i], grads[i], &mut m[i], &mut v[i], c);
            }
        },
    )
}

/// The update of one parameter.
#[inline(always)]
fn adamw_one(p: &mut f32, g: f32, m: &mut f32, v: &mut f32, c: AdamStep) {
    *p *= c.decay;
    *m += (1.0 - BETA1) * (g - *m);
    *v = *v * BETA2 + (1.0 - BETA2) * g * g;
    let denom = v.sqrt() / c.bc2_sqrt + ADAM_EPS;
    *p -= c.step * (*m / denom);
}

/// The optimizer state and constants of one AdamW step (`adamw_step`).
pub struct AdamW<'a> {
    pub m: &'a mut [f32],
    pub v: &'a mut [f32],
    /// The step, 1-based.
    pub t: u64,
    pub lr: f32,
    pub wd: f32,
}
