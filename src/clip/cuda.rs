//! The CUDA engine: many independent models trained at once (all the models of a
//! cross-validation sweep) under the one training loop of `train`, with the contract of the
//! CPU engine, model for model.
//!
//! Model m's parameters, gradients and Adam moments are the m-th slice of P floats of one
//! buffer each; its batch the m-th slice of B rows. Every GEMM is one cuBLAS strided-batched
//! call over all models (row-major operands mapped onto column-major cuBLAS); the rest is
//! `kernels/clip.cu`, launched through `cuda_ops`. Models whose epoch has fewer batches, or
//! that stopped early, get empty (all-padding) batches and no AdamW update. Shuffles and
//! dropout masks are the CPU's, drawn from (seed, model, epoch / step), so a model trained here
//! equals its CPU training up to float summation order.

use super::adamw::{adam_scalars, ADAM_EPS, BETA1, BETA2};
use super::cuda_ops::{self as kernel, AdamArgs, AdamDev, HeadArgs, InfoNce, LnRows, Shape};
use super::data::Pairs;
use super::layout::{Head, Layout, Tower};
use super::state::ModelState;
use super::train::{Batch, Engine, TrainConfig};
use crate::device::cuda::{cuda_err, Gpu, RowMajorGemm};
use crate::error::{Error, Result};
use cudarc::cublas::CudaBlas;
use cudarc::driver::CudaSlice;
use std::sync::Arc;

/// Activations of one head for all models (each M·B·k floats).
struct HeadDev {
    /// Residual head: fc(x). Projection head: p = projection(x), then its bias added.
    a: CudaSlice<f32>,
    /// Projection head only: GELU(p) and fc(GELU(p)).
    g: CudaSlice<f32>,
    a2: CudaSlice<f32>,
    ln: LnRows,
}

/// One tower's activations; `out` holds the unit embeddings and `norms` their norms.
struct TowerDev {
    heads: [HeadDev; 3],
    out: CudaSlice<f32>,
    norms: CudaSlice<f32>,
}

/// Gradient buffers of a tower's backward pass (M·B·k each).
struct GradDev {
    /// Gradient of the tower's unit embeddings.
    d_out: CudaSlice<f32>,
    d_cur: CudaSlice<f32>,
    d_next: CudaSlice<f32>,
    delta: CudaSlice<f32>,
    tmp: CudaSlice<f32>,
}

/// The pairs on the device, each model's batch gathered from them, and its dropout streams.
struct BatchDev {
    text: CudaSlice<f32>,
    images: CudaSlice<f32>,
    /// Image features the training steps gather instead of `images` (augmentation).
    train_images: Option<CudaSlice<f32>>,
    xt: CudaSlice<f32>,
    xi: CudaSlice<f32>,
    /// Row of the pairs of each batch row (−1: padding), and each model's row count.
    idx: CudaSlice<i32>,
    n: CudaSlice<i32>,
    /// Six per model, in `Tower::site` order.
    streams: CudaSlice<u64>,
}

/// A row-major operand: buffer, element offset, leading dimension, stride between models.
struct Mat<'a> {
    buf: &'a CudaSlice<f32>,
    off: usize,
    ld: usize,
    stride: usize,
}

/// What every product and kernel of a step shares: the device, the models' shape and layout.
struct Cx<'g> {
    gpu: &'g Gpu,
    blas: Arc<CudaBlas>,
    layout: Layout,
    s: Shape,
    /// Parameters per model.
    p: usize,
}

impl Cx<'_> {
    /// A batch operand: each model's B rows of `width`.
    fn rows<'a>(&self, buf: &'a CudaSlice<f32>, width: usize) -> Mat<'a> {
        Mat {
            buf,
            off: 0,
            ld: width,
            stride: self.s.b * width,
        }
    }

    /// Each model's k × `din` weight at `off` in its parameters.
    fn weight<'a>(&self, params: &'a CudaSlice<f32>, off: usize, din: usize) -> Mat<'a> {
        Mat {
            buf: params,
            off,
            ld: din,
            stride: self.p,
        }
    }

    /// out = op(A)·op(B) (+ out when `accumulate`) for every model: each one's rows × cols
    /// block of `out`, the inner dimension `inner`.
    fn product(
        &self,
        (ta, tb): (bool, bool),
        (rows, cols, inner): (usize, usize, usize),
        a: Mat,
        b: Mat,
        out: &mut CudaSlice<f32>,
        accumulate: bool,
    ) -> Result<()> {
        let (m, size) = (self.s.m, rows * cols);
        gemm(
            &self.blas, m, ta, tb, rows, cols, inner, a, b, out, 0, cols, size, accumulate,
        )
    }

    /// out = x Wᵀ, a Linear's product (its bias is added by the kernel after it), W the
    /// k × din weight at `w`.
    fn linear(
        &self,
        x: Mat,
        params: &CudaSlice<f32>,
        w: usize,
        din: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let w = self.weight(params, w, din);
        self.product((false, true), (self.s.b, self.s.k, din), x, w, out, false)
    }

    /// out (+)= δ W, the gradient of a residual Linear's input, W the k × k weight at `w`.
    fn input_grad(
        &self,
        delta: &CudaSlice<f32>,
        params: &CudaSlice<f32>,
        w: usize,
        out: &mut CudaSlice<f32>,
        accumulate: bool,
    ) -> Result<()> {
        let (b, k) = (self.s.b, self.s.k);
        let (delta, w) = (self.rows(delta, k), self.weight(params, w, k));
        self.product((false, false), (b, k, k), delta, w, out, accumulate)
    }

    /// The gradient δᵀ x of the k × din weight at `w`, into each model's `grads`.
    fn weight_grad(
        &self,
        delta: &CudaSlice<f32>,
        x: Mat,
        din: usize,
        grads: &mut CudaSlice<f32>,
        w: usize,
    ) -> Result<()> {
        let (m, b, k) = (self.s.m, self.s.b, self.s.k);
        let delta = self.rows(delta, k);
        gemm(
            &self.blas, m, true, false, k, din, b, delta, x, grads, w, din, self.p, false,
        )
    }

    /// The head kernels' scalar arguments for head `i` of `tower`.
    fn head_args(&self, h: &Head, tower: Tower, i: usize, p_drop: f32) -> HeadArgs {
        HeadArgs {
            p: self.p as i64,
            fc_b: h.fc_b as i32,
            ln_w: h.ln_w as i32,
            ln_b: h.ln_b as i32,
            site: tower.site(i) as i32,
            p_drop,
            b: self.s.b as i32,
            k: self.s.k as i32,
        }
    }
}

/// The parameters and dropout streams a tower's passes read.
struct Weights<'a> {
    params: &'a CudaSlice<f32>,
    streams: &'a CudaSlice<u64>,
    p_drop: f32,
}

/// Forward of one tower from its gathered input `x0` to its unit embeddings `tw.out`.
fn forward_tower(
    cx: &Cx,
    tower: Tower,
    tw: &mut TowerDev,
    x0: &CudaSlice<f32>,
    w: &Weights,
) -> Result<()> {
    let (gpu, s) = (cx.gpu, cx.s);
    for (i, h) in cx.layout.tower(tower).iter().enumerate() {
        let (done, rest) = tw.heads.split_at_mut(i);
        let (x, hb) = (if i == 0 { x0 } else { &done[i - 1].ln.y }, &mut rest[0]);
        let ha = cx.head_args(h, tower, i, w.p_drop);
        let input = cx.rows(x, h.din);
        let (params, streams) = (w.params, w.streams);
        match h.proj {
            None => {
                cx.linear(input, params, h.fc_w, h.din, &mut hb.a)?;
                kernel::residual_gelu_ln_forward(
                    gpu, s, x, &mut hb.a, params, streams, &ha, &mut hb.ln,
                )?;
            }
            Some((pw, pb)) => {
                cx.linear(input, params, pw, h.din, &mut hb.a)?;
                kernel::bias_gelu_forward(gpu, s, &mut hb.a, &mut hb.g, params, cx.p, pb)?;
                cx.linear(cx.rows(&hb.g, s.k), params, h.fc_w, s.k, &mut hb.a2)?;
                kernel::residual_ln_forward(
                    gpu, s, &hb.a, &hb.a2, params, streams, &ha, &mut hb.ln,
                )?;
            }
        }
    }
    kernel::l2_normalize_forward(gpu, s, &tw.heads[2].ln.y, &mut tw.out, &mut tw.norms)
}

/// Backward of one tower from `g.d_out`, the gradient of its unit embeddings: every one of its
/// tensors' gradients into `grads` (overwritten).
fn backward_tower(
    cx: &Cx,
    tower: Tower,
    tw: &TowerDev,
    x0: &CudaSlice<f32>,
    w: &Weights,
    grads: &mut CudaSlice<f32>,
    g: &mut GradDev,
) -> Result<()> {
    kernel::l2_normalize_backward(cx.gpu, cx.s, &tw.out, &g.d_out, &tw.norms, &mut g.d_cur)?;
    let heads = cx.layout.tower(tower);
    for i in (0..3).rev() {
        let x = if i == 0 { x0 } else { &tw.heads[i - 1].ln.y };
        let ha = cx.head_args(&heads[i], tower, i, w.p_drop);
        backward_head(cx, &heads[i], &ha, i > 0, x, &tw.heads[i], w, grads, g)?;
    }
    Ok(())
}

/// Backward of one head from `g.d_cur` (the gradient of its output): its tensors' gradients,
/// and in `g.d_cur` the gradient of its input when `input_grad` (not needed for the first head
/// of the image tower; the projection head leaves dp in `g.d_next` for its weight's gradient).
#[allow(clippy::too_many_arguments)]
fn backward_head(
    cx: &Cx,
    h: &Head,
    ha: &HeadArgs,
    input_grad: bool,
    x: &CudaSlice<f32>,
    hb: &HeadDev,
    w: &Weights,
    grads: &mut CudaSlice<f32>,
    g: &mut GradDev,
) -> Result<()> {
    let (gpu, s, p) = (cx.gpu, cx.s, cx.p);
    let (params, streams) = (w.params, w.streams);
    kernel::layer_norm_param_grad(gpu, s, &g.d_cur, &hb.ln.xhat, grads, ha)?;
    let input = cx.rows(x, h.din);
    let (d_cur, d_next, delta) = (&g.d_cur, &mut g.d_next, &mut g.delta);
    match h.proj {
        None => {
            let a = Some(&hb.a);
            kernel::head_backward(gpu, s, d_cur, &hb.ln, a, params, streams, ha, d_next, delta)?;
            cx.weight_grad(delta, input, h.din, grads, h.fc_w)?;
            kernel::bias_grad(gpu, s, delta, grads, p, h.fc_b)?;
            if input_grad {
                cx.input_grad(delta, params, h.fc_w, d_next, true)?;
                std::mem::swap(&mut g.d_cur, &mut g.d_next);
            }
        }
        Some((pw, pb)) => {
            kernel::head_backward(
                gpu, s, d_cur, &hb.ln, None, params, streams, ha, d_next, delta,
            )?;
            cx.weight_grad(delta, cx.rows(&hb.g, s.k), s.k, grads, h.fc_w)?;
            kernel::bias_grad(gpu, s, delta, grads, p, h.fc_b)?;
            cx.input_grad(delta, params, h.fc_w, &mut g.tmp, false)?;
            kernel::gelu_backward_add(gpu, s, &g.tmp, &hb.a, d_next)?;
            cx.weight_grad(d_next, input, h.din, grads, pw)?;
            kernel::bias_grad(gpu, s, d_next, grads, p, pb)?;
        }
    }
    Ok(())
}

/// Bytes of device memory one model of the sweep needs (parameters ×5, activations).
fn bytes_per_model(layout: &Layout, b: usize) -> usize {
    let (d, k) = (layout.d, layout.k);
    4 * (5 * layout.len + b * (d + k) + b * k * (3 * 5 + 2 + 2 + 5) + 2 * b * b + 4 * b + 4 * b)
        + 16 * b
}

/// How many models of `pairs`' widths fit in the device's free memory at once (at least 1).
pub fn models_that_fit(gpu: &Gpu, pairs: &Pairs, cfg: &TrainConfig) -> Result<usize> {
    let (free, _) = gpu
        .ctx
        .mem_get_info()
        .map_err(cuda_err("cannot read free device memory"))?;
    let data_bytes = 4 * pairs.n * (pairs.d + pairs.k);
    let per = bytes_per_model(&Layout::new(pairs.d, pairs.k), cfg.batch);
    Ok((free.saturating_sub(data_bytes) * 8 / 10 / per).max(1))
}

/// M models on the device.
pub struct CudaEngine<'g> {
    cx: Cx<'g>,
    lr: f32,
    wd: f32,
    p_drop: f32,
    params: CudaSlice<f32>,
    grads: CudaSlice<f32>,
    best: CudaSlice<f32>,
    adam: AdamDev,
    batch: BatchDev,
    text: TowerDev,
    image: TowerDev,
    nce: InfoNce,
    grad: GradDev,
}

impl<'g> CudaEngine<'g> {
    /// Room for `m` models of `pairs`' widths in batches of `cfg.batch` (`models_that_fit`
    /// says how many fit).
    pub fn new(gpu: &'g Gpu, pairs: &Pairs, cfg: &TrainConfig, m: usize) -> Result<Self> {
        let blas = gpu.blas()?.ok_or_else(|| {
            Error::Cuda("cuBLAS (libcublas.so) cannot be loaded: add the CUDA toolkit's lib directory to LD_LIBRARY_PATH, or use --device cpu".into())
        })?;
        let layout = Layout::new(pairs.d, pairs.k);
        let (b, d, k, p) = (cfg.batch, layout.d, layout.k, layout.len);
        if m * p >= i32::MAX as usize * 4 || b > 65535 || m > 65535 {
            return Err(Error::Usage(format!(
                "{m} models of {p} parameters in batches of {b} are too many for one CUDA sweep"
            )));
        }
        let s = Shape { m, b, k };
        let z = |n: usize| gpu.zeros::<f32>(n);
        let head = |proj: bool| -> Result<HeadDev> {
            Ok(HeadDev {
                a: z(m * b * k)?,
                g: z(if proj { m * b * k } else { 1 })?,
                a2: z(if proj { m * b * k } else { 1 })?,
                ln: LnRows::new(gpu, s)?,
            })
        };
        let tower = |proj: bool| -> Result<TowerDev> {
            Ok(TowerDev {
                heads: [head(proj)?, head(false)?, head(false)?],
                out: z(m * b * k)?,
                norms: z(m * b)?,
            })
        };
        Ok(CudaEngine {
            lr: cfg.lr,
            wd: cfg.weight_decay,
            p_drop: cfg.dropout,
            params: z(m * p)?,
            grads: z(m * p)?,
            best: z(m * p)?,
            adam: AdamDev {
                mom: z(m * p)?,
                vel: z(m * p)?,
                active: gpu.zeros(m)?,
                step_size: z(m)?,
                bc2_sqrt: z(m)?,
            },
            batch: BatchDev {
                text: gpu.htod(&pairs.text)?,
                images: gpu.htod(&pairs.images)?,
                train_images: None,
                xt: z(m * b * d)?,
                xi: z(m * b * k)?,
                idx: gpu.zeros(m * b)?,
                n: gpu.zeros(m)?,
                streams: gpu.zeros(m * 6)?,
            },
            text: tower(true)?,
            image: tower(false)?,
            nce: InfoNce::new(gpu, s, p, layout.logit_scale)?,
            grad: GradDev {
                d_out: z(m * b * k)?,
                d_cur: z(m * b * k)?,
                d_next: z(m * b * k)?,
                delta: z(m * b * k)?,
                tmp: z(m * b * k)?,
            },
            cx: Cx {
                gpu,
                blas,
                layout,
                s,
                p,
            },
        })
    }

    /// Gathers each slot's batch `rows[slot]` (none for the slots past `rows`), with the
    /// training images when `for_step`.
    fn set_batch(&mut self, rows: &[&[usize]], for_step: bool) -> Result<()> {
        let (gpu, Shape { m, b, .. }) = (self.cx.gpu, self.cx.s);
        let mut idx = vec![-1i32; m * b];
        let mut n = vec![0i32; m];
        for (slot, r) in rows.iter().enumerate() {
            n[slot] = r.len() as i32;
            for (i, &row) in idx[slot * b..].iter_mut().zip(r.iter()) {
                *i = row as i32;
            }
        }
        let t = &mut self.batch;
        gpu.htod_into(&idx, &mut t.idx)?;
        gpu.htod_into(&n, &mut t.n)?;
        kernel::gather_rows(gpu, &t.text, self.cx.layout.d, &t.idx, &mut t.xt, m * b)?;
        let images = match (&t.train_images, for_step) {
            (Some(drawn), true) => drawn,
            _ => &t.images,
        };
        kernel::gather_rows(gpu, images, self.cx.layout.k, &t.idx, &mut t.xi, m * b)
    }

    /// Both towers, the similarities, the loss (added to `nce.loss_acc`) and dL/dsim.
    fn forward_loss(&mut self, p_drop: f32) -> Result<()> {
        let (cx, t) = (&self.cx, &self.batch);
        let w = Weights {
            params: &self.params,
            streams: &t.streams,
            p_drop,
        };
        forward_tower(cx, Tower::Text, &mut self.text, &t.xt, &w)?;
        forward_tower(cx, Tower::Image, &mut self.image, &t.xi, &w)?;
        let Shape { b, k, .. } = cx.s;
        let (i, tx) = (cx.rows(&self.image.out, k), cx.rows(&self.text.out, k));
        cx.product((false, true), (b, b, k), i, tx, &mut self.nce.sim, false)?;
        let (params, n) = (&self.params, &t.n);
        kernel::info_nce(cx.gpu, cx.s, &mut self.nce, params, n, &mut self.grads)
    }

    /// One training step of every model (inactive ones get zero gradients and no update).
    fn train_step(&mut self) -> Result<()> {
        self.forward_loss(self.p_drop)?;
        let (cx, t) = (&self.cx, &self.batch);
        let Shape { m, b, k } = cx.s;
        let w = Weights {
            params: &self.params,
            streams: &t.streams,
            p_drop: self.p_drop,
        };
        let (grads, g) = (&mut self.grads, &mut self.grad);
        // sim = I Tᵀ: dI = dsim T, dT = dsimᵀ I.
        let (dsim, tx) = (cx.rows(&self.nce.dsim, b), cx.rows(&self.text.out, k));
        cx.product((false, false), (b, k, b), dsim, tx, &mut g.d_out, false)?;
        backward_tower(cx, Tower::Image, &self.image, &t.xi, &w, grads, g)?;
        let (dsim, im) = (cx.rows(&self.nce.dsim, b), cx.rows(&self.image.out, k));
        cx.product((true, false), (b, k, b), dsim, im, &mut g.d_out, false)?;
        backward_tower(cx, Tower::Text, &self.text, &t.xt, &w, grads, g)?;
        let c = AdamArgs {
            p: cx.p as i64,
            m: m as i32,
            decay: 1.0 - self.lr * self.wd,
            beta1: BETA1,
            beta2: BETA2,
            eps: ADAM_EPS,
        };
        kernel::adamw(cx.gpu, &mut self.params, &self.grads, &mut self.adam, &c)
    }

    /// Each model's loss of the step just run (`loss_acc` was zeroed before it).
    fn losses(&mut self) -> Result<Vec<f32>> {
        self.cx.gpu.dtoh(&self.nce.loss_acc, self.cx.s.m)
    }

    fn zero_losses(&mut self) -> Result<()> {
        (self.cx.gpu.stream)
            .memset_zeros(&mut self.nce.loss_acc)
            .map_err(cuda_err("memset"))
    }

    /// Slot `slot`'s part of a buffer of M × P.
    fn to_host(&self, buf: &CudaSlice<f32>, slot: usize) -> Result<Vec<f32>> {
        let p = self.cx.p;
        let mut out = vec![0.0f32; p];
        (self.cx.gpu.stream)
            .memcpy_dtoh(&buf.slice(slot * p..(slot + 1) * p), &mut out)
            .map_err(cuda_err("device-to-host copy failed"))?;
        self.cx.gpu.sync()?;
        Ok(out)
    }
}

impl Engine for CudaEngine<'_> {
    fn capacity(&self) -> usize {
        self.cx.s.m
    }

    fn upload(&mut self, slot: usize, st: &ModelState) -> Result<()> {
        let (gpu, p) = (self.cx.gpu, self.cx.p);
        let a = &mut self.adam;
        for (buf, v) in [
            (&mut self.params, &st.params),
            (&mut a.mom, &st.m),
            (&mut a.vel, &st.v),
            (&mut self.best, &st.best),
        ] {
            // A finished model's checkpoint holds only its best weights.
            if !v.is_empty() {
                let mut view = buf.slice_mut(slot * p..(slot + 1) * p);
                (gpu.stream)
                    .memcpy_htod(v, &mut view)
                    .map_err(cuda_err("host-to-device copy failed"))?;
            }
        }
        Ok(())
    }

    fn step(&mut self, batches: &[Batch]) -> Result<Vec<f32>> {
        let (gpu, m) = (self.cx.gpu, self.cx.s.m);
        let mut streams = vec![0u64; m * 6];
        let mut active = vec![0i32; m];
        let mut step_size = vec![0.0f32; m];
        let mut bc2 = vec![1.0f32; m];
        for (slot, b) in batches.iter().enumerate() {
            if !b.rows.is_empty() {
                for (site, d) in b.drops.iter().enumerate() {
                    streams[slot * 6 + site] = d.stream;
                }
                (step_size[slot], bc2[slot]) = adam_scalars(self.lr, b.t);
                active[slot] = 1;
            }
        }
        gpu.htod_into(&streams, &mut self.batch.streams)?;
        gpu.htod_into(&active, &mut self.adam.active)?;
        gpu.htod_into(&step_size, &mut self.adam.step_size)?;
        gpu.htod_into(&bc2, &mut self.adam.bc2_sqrt)?;
        let rows: Vec<&[usize]> = batches.iter().map(|b| b.rows).collect();
        self.set_batch(&rows, true)?;
        self.zero_losses()?;
        self.train_step()?;
        self.losses()
    }

    fn eval(&mut self, rows: &[&[usize]]) -> Result<Vec<f32>> {
        self.set_batch(rows, false)?;
        self.zero_losses()?;
        self.forward_loss(0.0)?;
        self.losses()
    }

    fn set_train_images(&mut self, images: &[f32]) -> Result<()> {
        let t = &mut self.batch;
        if images.len() != t.images.len() {
            return Err(Error::Usage(format!(
                "augmented image features hold {} values, the pairs' hold {}",
                images.len(),
                t.images.len()
            )));
        }
        match &mut t.train_images {
            Some(drawn) => self.cx.gpu.htod_into(images, drawn)?,
            None => t.train_images = Some(self.cx.gpu.htod(images)?),
        }
        Ok(())
    }

    fn keep_best(&mut self, slot: usize) -> Result<()> {
        let p = self.cx.p;
        let src = self.params.slice(slot * p..(slot + 1) * p);
        let mut dst = self.best.slice_mut(slot * p..(slot + 1) * p);
        (self.cx.gpu.stream)
            .memcpy_dtod(&src, &mut dst)
            .map_err(cuda_err("device copy failed"))
    }

    fn download(&mut self, slot: usize, st: &mut ModelState) -> Result<()> {
        st.best = self.to_host(&self.best, slot)?;
        if !st.done {
            st.params = self.to_host(&self.params, slot)?;
            st.m = self.to_host(&self.adam.mom, slot)?;
            st.v = self.to_host(&self.adam.vel, slot)?;
        }
        Ok(())
    }
}

/// C = op(A)·op(B) (+ C when `accumulate`), row-major, for each of `models` models: C is
/// rows×cols, the inner dimension `inner`. A row-major X is the column-major Xᵀ, so cuBLAS
/// computes Cᵀ = op(B)ᵀ·op(A)ᵀ with the operands swapped.
#[allow(clippy::too_many_arguments)]
fn gemm(
    blas: &CudaBlas,
    models: usize,
    ta: bool,
    tb: bool,
    rows: usize,
    cols: usize,
    inner: usize,
    a: Mat,
    b: Mat,
    c: &mut CudaSlice<f32>,
    c_off: usize,
    ldc: usize,
    c_stride: usize,
    accumulate: bool,
) -> Result<()> {
    let g = RowMajorGemm {
        rows,
        cols,
        inner,
        ta,
        tb,
        lda: a.ld,
        ldb: b.ld,
        ldc,
        accumulate,
    };
    g.run_batched(
        blas,
        models,
        (&a.buf.slice(a.off..), a.stride),
        (&b.buf.slice(b.off..), b.stride),
        (&mut c.slice_mut(c_off..), c_stride),
    )
}
