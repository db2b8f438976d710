//! The launches of `kernels/clip.cu`, one wrapper per kernel: the CUDA engine (`cuda`) runs its
//! steps through them, and the op tests (`kernels`) run each alone against its CPU op.
//!
//! Every kernel works on `m` models at once: model m's parameters are the m-th slice of P
//! floats, its batch the m-th slice of `b` rows of width `k` ([`Shape`]).

use crate::device::cuda::{launch, launch_err, Gpu};
use crate::error::Result;
use cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};

const MODULE: &str = "clip";
/// `ROW_THREADS` in kernels/clip.cu.
const ROW_THREADS: u32 = crate::device::cuda::consts::clip::ROW_THREADS;

/// `m` models, batches of `b` rows, width `k`.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub m: usize,
    pub b: usize,
    pub k: usize,
}

impl Shape {
    /// One block per (row, model).
    fn rows(self) -> LaunchConfig {
        launch::rows(self.b, self.m, ROW_THREADS)
    }

    /// A grid-stride loop over `count` elements.
    fn flat(count: usize) -> LaunchConfig {
        launch::flat(count, 256, 65535 * 4)
    }
}

/// The scalar arguments of a head's row kernels: `HeadArgs` in kernels/clip.cu, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HeadArgs {
    /// Parameters per model.
    pub p: i64,
    /// Offsets in a model's parameters of fc.bias, layer_norm.weight and layer_norm.bias.
    pub fc_b: i32,
    pub ln_w: i32,
    pub ln_b: i32,
    /// Dropout site: model m's stream is `streams[m * 6 + site]`.
    pub site: i32,
    pub p_drop: f32,
    /// Rows of a model's batch, and the width.
    pub b: i32,
    pub k: i32,
}

// SAFETY: `#[repr(C)]` plain data, laid out as kernels/clip.cu's `HeadArgs` (i64, then seven
// 4-byte fields: 36 bytes, padded to 40 on both sides).
unsafe impl DeviceRepr for HeadArgs {}
const _: () = assert!(std::mem::size_of::<HeadArgs>() == 40);

/// The scalar arguments of `adamw`: `AdamArgs` in kernels/clip.cu, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AdamArgs {
    /// Parameters per model.
    pub p: i64,
    /// Models.
    pub m: i32,
    /// 1 − lr·weight_decay.
    pub decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
}

// SAFETY: `#[repr(C)]` plain data, laid out as kernels/clip.cu's `AdamArgs` (i64, then five
// 4-byte fields: 28 bytes, padded to 32 on both sides).
unsafe impl DeviceRepr for AdamArgs {}
const _: () = assert!(std::mem::size_of::<AdamArgs>() == 32);

/// What a head's LayerNorm keeps for the backward pass, for all models: x̂ and the output y
/// (m·b·k each) and 1/σ (m·b).
pub struct LnRows {
    pub xhat: CudaSlice<f32>,
    pub rstd: CudaSlice<f32>,
    pub y: CudaSlice<f32>,
}

impl LnRows {
    pub fn new(gpu: &Gpu, s: Shape) -> Result<LnRows> {
        Ok(LnRows {
            xhat: gpu.zeros(s.m * s.b * s.k)?,
            rstd: gpu.zeros(s.m * s.b)?,
            y: gpu.zeros(s.m * s.b * s.k)?,
        })
    }
}

/// Launches kernel `$name` of kernels/clip.cu with `$cfg` and the arguments after `;` in order.
macro_rules! launch {
    ($gpu:expr, $name:expr, $cfg:expr; $($arg:expr),+ $(,)?) => {{
        let f = $gpu.function(MODULE, $name)?;
        let mut l = $gpu.stream.launch_builder(&f);
        $(l.arg($arg);)+
        // SAFETY: each wrapper below passes its kernel's parameters in order, with buffers
        // sized for its `Shape` as the kernel's comment in kernels/clip.cu says.
        unsafe { l.launch($cfg) }.map_err(launch_err($name))?;
        Ok::<(), crate::error::Error>(())
    }};
}

/// dst[r] = src[idx[r]] for `rows` rows of `width` (zero rows where idx < 0).
pub fn gather_rows(
    gpu: &Gpu,
    src: &CudaSlice<f32>,
    width: usize,
    idx: &CudaSlice<i32>,
    dst: &mut CudaSlice<f32>,
    rows: usize,
) -> Result<()> {
    let (w, r) = (width as i32, rows as i32);
    launch!(gpu, "gather_rows", Shape::flat(rows * width); src, &w, idx, dst, &r)
}

/// p += the projection's bias (at `bias` in each model's `p` parameters); g = GELU(p).
pub fn bias_gelu_forward(
    gpu: &Gpu,
    s: Shape,
    pre: &mut CudaSlice<f32>,
    g: &mut CudaSlice<f32>,
    params: &CudaSlice<f32>,
    p: usize,
    bias: usize,
) -> Result<()> {
    let (pp, bias, bi, ki, mi) = (p as i64, bias as i32, s.b as i32, s.k as i32, s.m as i32);
    let cfg = Shape::flat(s.m * s.b * s.k);
    launch!(gpu, "bias_gelu_forward", cfg; pre, g, params, &pp, &bias, &bi, &ki, &mi)
}

/// A residual head after its product: a += fc.bias; y = LN(x + dropout(GELU(a))).
#[allow(clippy::too_many_arguments)]
pub fn residual_gelu_ln_forward(
    gpu: &Gpu,
    s: Shape,
    x: &CudaSlice<f32>,
    a: &mut CudaSlice<f32>,
    params: &CudaSlice<f32>,
    streams: &CudaSlice<u64>,
    h: &HeadArgs,
    ln: &mut LnRows,
) -> Result<()> {
    let (xh, rs, y) = (&mut ln.xhat, &mut ln.rstd, &mut ln.y);
    launch!(gpu, "residual_gelu_ln_forward", s.rows(); x, a, params, streams, xh, rs, y, h)
}

/// The projection head after its second product: y = LN(p + dropout(a2 + fc.bias)).
#[allow(clippy::too_many_arguments)]
pub fn residual_ln_forward(
    gpu: &Gpu,
    s: Shape,
    pre: &CudaSlice<f32>,
    a2: &CudaSlice<f32>,
    params: &CudaSlice<f32>,
    streams: &CudaSlice<u64>,
    h: &HeadArgs,
    ln: &mut LnRows,
) -> Result<()> {
    let (xh, rs, y) = (&mut ln.xhat, &mut ln.rstd, &mut ln.y);
    launch!(gpu, "residual_ln_forward", s.rows(); pre, a2, params, streams, xh, rs, y, h)
}

/// Rows scaled to unit norm, the (clamped) norms kept.
pub fn l2_normalize_forward(
    gpu: &Gpu,
    s: Shape,
    z: &CudaSlice<f32>,
    out: &mut CudaSlice<f32>,
    norms: &mut CudaSlice<f32>,
) -> Result<()> {
    let (bi, ki) = (s.b as i32, s.k as i32);
    launch!(gpu, "l2_normalize_forward", s.rows(); z, out, norms, &bi, &ki)
}

/// The gradient through `l2_normalize_forward`.
pub fn l2_normalize_backward(
    gpu: &Gpu,
    s: Shape,
    out: &CudaSlice<f32>,
    dout: &CudaSlice<f32>,
    norms: &CudaSlice<f32>,
    dz: &mut CudaSlice<f32>,
) -> Result<()> {
    let (bi, ki) = (s.b as i32, s.k as i32);
    launch!(gpu, "l2_normalize_backward", s.rows(); out, dout, norms, dz, &bi, &ki)
}

/// The InfoNCE buffers of all models: the similarities (b × b each) and what the loss and its
/// gradient are made of; and where the logit scale sits among a model's P parameters.
pub struct InfoNce {
    pub p: usize,
    pub logit_scale: usize,
    pub sim: CudaSlice<f32>,
    /// s·dL/dlogits = dL/dsim.
    pub dsim: CudaSlice<f32>,
    pub stats: CudaSlice<f32>,
    pub row_terms: CudaSlice<f64>,
    /// Each model's loss is added here.
    pub loss_acc: CudaSlice<f32>,
}

impl InfoNce {
    pub fn new(gpu: &Gpu, s: Shape, p: usize, logit_scale: usize) -> Result<InfoNce> {
        let (m, b) = (s.m, s.b);
        Ok(InfoNce {
            p,
            logit_scale,
            sim: gpu.zeros(m * b * b)?,
            dsim: gpu.zeros(m * b * b)?,
            stats: gpu.zeros(m * b * 4)?,
            row_terms: gpu.zeros(m * b * 2)?,
            loss_acc: gpu.zeros(m)?,
        })
    }
}

/// Symmetric InfoNCE of each model's `n[m]` rows of `sim` with its logit scale: the loss
/// added to `loss_acc`, dL/dsim into `dsim`, dL/ds into `grads`.
pub fn info_nce(
    gpu: &Gpu,
    s: Shape,
    nce: &mut InfoNce,
    params: &CudaSlice<f32>,
    n: &CudaSlice<i32>,
    grads: &mut CudaSlice<f32>,
) -> Result<()> {
    let (pp, ls, bi) = (nce.p as i64, nce.logit_scale as i32, s.b as i32);
    let InfoNce {
        p: _,
        logit_scale: _,
        sim,
        dsim,
        stats,
        row_terms,
        loss_acc,
    } = nce;
    let (sim, rt) = (&*sim, &mut *row_terms);
    launch!(gpu, "info_nce_stats", s.rows(); sim, params, &pp, &ls, n, &mut *stats, &bi)?;
    let stats = &*stats;
    launch!(gpu, "info_nce_grad", s.rows(); sim, params, &pp, &ls, n, stats, dsim, &mut *rt, &bi)?;
    let one_block_per_model = launch::grid((s.m as u32, 1, 1), ROW_THREADS, 0);
    launch!(gpu, "info_nce_reduce", one_block_per_model; &*rt, n, grads, &pp, &ls, loss_acc, &bi)
}

/// A head's backward row pass from dy: dr (the residual path's gradient) and delta, the
/// gradient of its Linear's output: dr · dropout · GELU′(a) for a residual head (`a` its
/// pre-activation), dr · dropout for the projection head (`a` None).
#[allow(clippy::too_many_arguments)]
pub fn head_backward(
    gpu: &Gpu,
    s: Shape,
    dy: &CudaSlice<f32>,
    ln: &LnRows,
    a: Option<&CudaSlice<f32>>,
    params: &CudaSlice<f32>,
    streams: &CudaSlice<u64>,
    h: &HeadArgs,
    dr: &mut CudaSlice<f32>,
    delta: &mut CudaSlice<f32>,
) -> Result<()> {
    let (xh, rs, cfg) = (&ln.xhat, &ln.rstd, s.rows());
    match a {
        Some(a) => {
            let name = "residual_gelu_ln_backward";
            launch!(gpu, name, cfg; dy, xh, rs, a, params, streams, dr, delta, h)
        }
        None => {
            let name = "residual_ln_backward";
            launch!(gpu, name, cfg; dy, xh, rs, params, streams, dr, delta, h)
        }
    }
}

/// dp += dg · GELU′(p) over the m·b·k elements.
pub fn gelu_backward_add(
    gpu: &Gpu,
    s: Shape,
    dg: &CudaSlice<f32>,
    pre: &CudaSlice<f32>,
    dp: &mut CudaSlice<f32>,
) -> Result<()> {
    let count = s.m * s.b * s.k;
    let c = count as i64;
    launch!(gpu, "gelu_backward_add", Shape::flat(count); dg, pre, dp, &c)
}

/// A bias gradient: each model's column sums of its `delta` rows, into its `grads` at `off`.
pub fn bias_grad(
    gpu: &Gpu,
    s: Shape,
    delta: &CudaSlice<f32>,
    grads: &mut CudaSlice<f32>,
    p: usize,
    off: usize,
) -> Result<()> {
    let (pp, o, bi, ki, mi) = (p as i64, off as i32, s.b as i32, s.k as i32, s.m as i32);
    let cfg = Shape::flat(s.m * s.k);
    launch!(gpu, "bias_grad", cfg; delta, grads, &pp, &o, &bi, &ki, &mi)
}

/// LayerNorm's parameter gradients, dγ = Σ dy·x̂ and dβ = Σ dy over each model's rows, into
/// its `grads` at `h.ln_w` and `h.ln_b`.
pub fn layer_norm_param_grad(
    gpu: &Gpu,
    s: Shape,
    dy: &CudaSlice<f32>,
    xhat: &CudaSlice<f32>,
    grads: &mut CudaSlice<f32>,
    h: &HeadArgs,
) -> Result<()> {
    let (bi, ki, mi) = (s.b as i32, s.k as i32, s.m as i32);
    let cfg = Shape::flat(s.m * s.k);
    let (p, w, b) = (&h.p, &h.ln_w, &h.ln_b);
    launch!(gpu, "layer_norm_param_grad", cfg; dy, xhat, grads, p, w, b, &bi, &ki, &mi)
}

/// Each model's optimizer state on the device (m slices of P each) and the constants of its
/// step (per model: whether it steps, lr / (1 − β1ᵗ), √(1 − β2ᵗ)).
pub struct AdamDev {
    pub mom: CudaSlice<f32>,
    pub vel: CudaSlice<f32>,
    pub active: CudaSlice<i32>,
    pub step_size: CudaSlice<f32>,
    pub bc2_sqrt: CudaSlice<f32>,
}

/// AdamW on the parameters of every model with `active[m]`.
pub fn adamw(
    gpu: &Gpu,
    params: &mut CudaSlice<f32>,
    grads: &CudaSlice<f32>,
    st: &mut AdamDev,
    c: &AdamArgs,
) -> Result<()> {
    let cfg = Shape::flat(c.m as usize * c.p as usize);
    let (mom, vel) = (&mut st.mom, &mut st.vel);
    let (active, step, bc2) = (&st.active, &st.step_size, &st.bc2_sqrt);
    launch!(gpu, "adamw", cfg; params, grads, mom, vel, active, step, bc2, c)
}
