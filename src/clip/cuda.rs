//! CUDA training of many independent models at once (all the models of a cross-validation
//! sweep): the same contract as `train::train_cpu`, model for model.
//!
//! Model m's parameters, gradients and Adam moments are the m-th slice of P floats of one
//! buffer each; its batch the m-th slice of B rows. Every GEMM is one cuBLAS strided-batched
//! call over all models (row-major operands mapped onto column-major cuBLAS); the rest is
//! `kernels/clip.cu`. Models whose epoch has fewer batches, or that stopped early, get empty
//! (all-padding) batches and no AdamW update. Shuffles and dropout masks are the CPU's, drawn
//! from (seed, model, epoch / step), so a model trained here equals its CPU training up to
//! float summation order.

use super::data::Pairs;
use super::model::Layout;
use super::train::{
    adam_scalars, epoch_order, finish_epoch, n_batches, Job, ModelState, Outcome, Progress,
    TrainConfig, ADAM_EPS, BETA1, BETA2,
};
use crate::device::cuda::{cuda_err, launch, launch_err, Gpu, RowMajorGemm};
use crate::error::{Error, Result};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaSlice, PushKernelArg};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MODULE: &str = "clip";
/// `ROW_THREADS` in kernels/clip.cu.
const ROW_THREADS: u32 = crate::device::cuda::consts::clip::ROW_THREADS;
/// Checkpoints of a GPU sweep are written when this long has passed since the last one.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(60);

/// Activations of one head for all models (each M·B·k floats, rstd M·B).
struct HeadDev {
    a: CudaSlice<f32>,
    g: CudaSlice<f32>,
    a2: CudaSlice<f32>,
    xhat: CudaSlice<f32>,
    rstd: CudaSlice<f32>,
    y: CudaSlice<f32>,
}

struct TowerDev {
    heads: [HeadDev; 3],
    out: CudaSlice<f32>,
    norms: CudaSlice<f32>,
}

/// M models on the device.
struct Sweep<'g> {
    gpu: &'g Gpu,
    blas: Arc<CudaBlas>,
    layout: Layout,
    m: usize,
    b: usize,
    p: usize,
    params: CudaSlice<f32>,
    grads: CudaSlice<f32>,
    mom: CudaSlice<f32>,
    vel: CudaSlice<f32>,
    best: CudaSlice<f32>,
    data_text: CudaSlice<f32>,
    data_images: CudaSlice<f32>,
    xt: CudaSlice<f32>,
    xi: CudaSlice<f32>,
    text: TowerDev,
    image: TowerDev,
    sim: CudaSlice<f32>,
    dsim: CudaSlice<f32>,
    stats: CudaSlice<f32>,
    row_terms: CudaSlice<f64>,
    loss_acc: CudaSlice<f32>,
    d_out: CudaSlice<f32>,
    d_cur: CudaSlice<f32>,
    d_next: CudaSlice<f32>,
    delta: CudaSlice<f32>,
    tmp: CudaSlice<f32>,
    idx: CudaSlice<i32>,
    n: CudaSlice<i32>,
    streams: CudaSlice<u64>,
    active: CudaSlice<i32>,
    step_size: CudaSlice<f32>,
    bc2_sqrt: CudaSlice<f32>,
}

/// A row-major operand: buffer, element offset, leading dimension, stride between models.
struct Mat<'a> {
    buf: &'a CudaSlice<f32>,
    off: usize,
    ld: usize,
    stride: usize,
}

/// Bytes of device memory one model of the sweep needs (parameters ×5, activations).
fn bytes_per_model(layout: &Layout, b: usize) -> usize {
    let (d, k) = (layout.d, layout.k);
    4 * (5 * layout.len + b * (d + k) + b * k * (3 * 5 + 2 + 2 + 5) + 2 * b * b + 4 * b + 4 * b)
        + 16 * b
}

impl<'g> Sweep<'g> {
    fn new(gpu: &'g Gpu, pairs: &Pairs, layout: &Layout, m: usize, b: usize) -> Result<Sweep<'g>> {
        let blas = gpu.blas()?.ok_or_else(|| {
            Error::Cuda("cuBLAS (libcublas.so) cannot be loaded: add the CUDA toolkit's lib directory to LD_LIBRARY_PATH, or use --device cpu".into())
        })?;
        let (d, k, p) = (layout.d, layout.k, layout.len);
        if m * p >= i32::MAX as usize * 4 || b > 65535 || m > 65535 {
            return Err(Error::Usage(format!(
                "{m} models of {p} parameters in batches of {b} are too many for one CUDA sweep"
            )));
        }
        let z = |n: usize| gpu.zeros::<f32>(n);
        let head = |proj: bool| -> Result<HeadDev> {
            Ok(HeadDev {
                a: z(m * b * k)?,
                g: z(if proj { m * b * k } else { 1 })?,
                a2: z(if proj { m * b * k } else { 1 })?,
                xhat: z(m * b * k)?,
                rstd: z(m * b)?,
                y: z(m * b * k)?,
            })
        };
        let tower = |proj: bool| -> Result<TowerDev> {
            Ok(TowerDev {
                heads: [head(proj)?, head(false)?, head(false)?],
                out: z(m * b * k)?,
                norms: z(m * b)?,
            })
        };
        Ok(Sweep {
            gpu,
            blas,
            layout: layout.clone(),
            m,
            b,
            p,
            params: z(m * p)?,
            grads: z(m * p)?,
            mom: z(m * p)?,
            vel: z(m * p)?,
            best: z(m * p)?,
            data_text: gpu.htod(&pairs.text)?,
            data_images: gpu.htod(&pairs.images)?,
            xt: z(m * b * d)?,
            xi: z(m * b * k)?,
            text: tower(true)?,
            image: tower(false)?,
            sim: z(m * b * b)?,
            dsim: z(m * b * b)?,
            stats: z(m * b * 4)?,
            row_terms: gpu.zeros::<f64>(m * b * 2)?,
            loss_acc: z(m)?,
            d_out: z(m * b * k)?,
            d_cur: z(m * b * k)?,
            d_next: z(m * b * k)?,
            delta: z(m * b * k)?,
            tmp: z(m * b * k)?,
            idx: gpu.zeros::<i32>(m * b)?,
            n: gpu.zeros::<i32>(m)?,
            streams: gpu.zeros::<u64>(m * 6)?,
            active: gpu.zeros::<i32>(m)?,
            step_size: z(m)?,
            bc2_sqrt: z(m)?,
        })
    }

    /// Forward of one tower (input already gathered in xt / xi).
    fn forward_tower(&mut self, text: bool, p_drop: f32) -> Result<()> {
        let Sweep {
            gpu,
            blas,
            layout,
            m,
            b,
            p,
            params,
            xt,
            xi,
            text: tt,
            image: it,
            streams,
            ..
        } = self;
        let (gpu, m, b, p, k) = (*gpu, *m, *b, *p, layout.k);
        let pp = p as i64;
        let (heads, tower, x0) = if text {
            (layout.text, tt, &*xt)
        } else {
            (layout.image, it, &*xi)
        };
        let (bi, ki, mi) = (b as i32, k as i32, m as i32);
        for (i, h) in heads.iter().enumerate() {
            let site = if text { i as i32 } else { 3 + i as i32 };
            let (done, rest) = tower.heads.split_at_mut(i);
            let hb = &mut rest[0];
            let x = if i == 0 { x0 } else { &done[i - 1].y };
            let input = Mat {
                buf: x,
                off: 0,
                ld: h.din,
                stride: b * h.din,
            };
            let (fc_b, ln_w, ln_b) = (h.fc_b as i32, h.ln_w as i32, h.ln_b as i32);
            match h.proj {
                None => {
                    gemm(
                        blas,
                        m,
                        false,
                        true,
                        b,
                        k,
                        h.din,
                        input,
                        Mat {
                            buf: params,
                            off: h.fc_w,
                            ld: h.din,
                            stride: p,
                        },
                        &mut hb.a,
                        0,
                        k,
                        b * k,
                        false,
                    )?;
                    let f = gpu.function(MODULE, "residual_gelu_ln_forward")?;
                    let mut l = gpu.stream.launch_builder(&f);
                    l.arg(x)
                        .arg(&mut hb.a)
                        .arg(&*params)
                        .arg(&pp)
                        .arg(&fc_b)
                        .arg(&ln_w)
                        .arg(&ln_b)
                        .arg(&*streams)
                        .arg(&site)
                        .arg(&p_drop)
                        .arg(&mut hb.xhat)
                        .arg(&mut hb.rstd)
                        .arg(&mut hb.y)
                        .arg(&bi)
                        .arg(&ki);
                    // SAFETY: argument list of residual_gelu_ln_forward; buffers sized M·B·k.
                    unsafe { l.launch(launch::rows(b, m, ROW_THREADS)) }
                        .map_err(launch_err("residual_gelu_ln_forward"))?;
                }
                Some((pw, pbias)) => {
                    gemm(
                        blas,
                        m,
                        false,
                        true,
                        b,
                        k,
                        h.din,
                        input,
                        Mat {
                            buf: params,
                            off: pw,
                            ld: h.din,
                            stride: p,
                        },
                        &mut hb.a,
                        0,
                        k,
                        b * k,
                        false,
                    )?;
                    let f = gpu.function(MODULE, "bias_gelu_forward")?;
                    let bias = pbias as i32;
                    let mut l = gpu.stream.launch_builder(&f);
                    l.arg(&mut hb.a)
                        .arg(&mut hb.g)
                        .arg(&*params)
                        .arg(&pp)
                        .arg(&bias)
                        .arg(&bi)
                        .arg(&ki)
                        .arg(&mi);
                    // SAFETY: bias_gelu_forward over M·B·k elements.
                    unsafe { l.launch(launch::flat(m * b * k, 256, 65535 * 4)) }
                        .map_err(launch_err("bias_gelu_forward"))?;
                    gemm(
                        blas,
                        m,
                        false,
                        true,
                        b,
                        k,
                        k,
                        Mat {
                            buf: &hb.g,
                            off: 0,
                            ld: k,
                            stride: b * k,
                        },
                        Mat {
                            buf: params,
                            off: h.fc_w,
                            ld: k,
                            stride: p,
                        },
                        &mut hb.a2,
                        0,
                        k,
                        b * k,
                        false,
                    )?;
                    let f = gpu.function(MODULE, "residual_ln_forward")?;
                    let mut l = gpu.stream.launch_builder(&f);
                    l.arg(&hb.a)
                        .arg(&hb.a2)
                        .arg(&*params)
                        .arg(&pp)
                        .arg(&fc_b)
                        .arg(&ln_w)
                        .arg(&ln_b)
                        .arg(&*streams)
                        .arg(&site)
                        .arg(&p_drop)
                        .arg(&mut hb.xhat)
                        .arg(&mut hb.rstd)
                        .arg(&mut hb.y)
                        .arg(&bi)
                        .arg(&ki);
                    // SAFETY: argument list of residual_ln_forward.
                    unsafe { l.launch(launch::rows(b, m, ROW_THREADS)) }
                        .map_err(launch_err("residual_ln_forward"))?;
                }
            }
        }
        let f = gpu.function(MODULE, "l2_normalize_forward")?;
        let mut l = gpu.stream.launch_builder(&f);
        l.arg(&tower.heads[2].y)
            .arg(&mut tower.out)
            .arg(&mut tower.norms)
            .arg(&bi)
            .arg(&ki);
        // SAFETY: l2_normalize_forward on M·B rows of k.
        unsafe { l.launch(launch::rows(b, m, ROW_THREADS)) }
            .map_err(launch_err("l2_normalize_forward"))?;
        Ok(())
    }

    /// Both towers, the similarity, the loss (added to loss_acc) and dsim = s·dL/dlogits.
    fn forward_loss(&mut self, p_drop: f32) -> Result<()> {
        self.forward_tower(true, p_drop)?;
        self.forward_tower(false, p_drop)?;
        let Sweep {
            gpu,
            blas,
            layout,
            m,
            b,
            p,
            params,
            text,
            image,
            sim,
            dsim,
            stats,
            row_terms,
            loss_acc,
            grads,
            n,
            ..
        } = self;
        let (gpu, m, b, k, pp) = (*gpu, *m, *b, layout.k, *p as i64);
        gemm(
            blas,
            m,
            false,
            true,
            b,
            b,
            k,
            Mat {
                buf: &image.out,
                off: 0,
                ld: k,
                stride: b * k,
            },
            Mat {
                buf: &text.out,
                off: 0,
                ld: k,
                stride: b * k,
            },
            sim,
            0,
            b,
            b * b,
            false,
        )?;
        let ls = layout.logit_scale as i32;
        let bi = b as i32;
        let f = gpu.function(MODULE, "info_nce_stats")?;
        let mut l = gpu.stream.launch_builder(&f);
        l.arg(&*sim)
            .arg(&*params)
            .arg(&pp)
            .arg(&ls)
            .arg(&*n)
            .arg(&mut *stats)
            .arg(&bi);
        // SAFETY: info_nce_stats, one block per (row, model).
        unsafe { l.launch(launch::rows(b, m, ROW_THREADS)) }
            .map_err(launch_err("info_nce_stats"))?;
        let f = gpu.function(MODULE, "info_nce_grad")?;
        let mut l = gpu.stream.launch_builder(&f);
        l.arg(&*sim)
            .arg(&*params)
            .arg(&pp)
            .arg(&ls)
            .arg(&*n)
            .arg(&*stats)
            .arg(&mut *dsim)
            .arg(&mut *row_terms)
            .arg(&bi);
        // SAFETY: info_nce_grad, one block per (row, model).
        unsafe { l.launch(launch::rows(b, m, ROW_THREADS)) }
            .map_err(launch_err("info_nce_grad"))?;
        let f = gpu.function(MODULE, "info_nce_reduce")?;
        let mut l = gpu.stream.launch_builder(&f);
        l.arg(&*row_terms)
            .arg(&*n)
            .arg(&mut *grads)
            .arg(&pp)
            .arg(&ls)
            .arg(&mut *loss_acc)
            .arg(&bi);
        let cfg = launch::grid((m as u32, 1, 1), ROW_THREADS, 0);
        // SAFETY: info_nce_reduce, one block per model.
        unsafe { l.launch(cfg) }.map_err(launch_err("info_nce_reduce"))?;
        Ok(())
    }

    /// Backward of one tower from d_out; weight gradients overwrite `grads`.
    fn backward_tower(&mut self, text: bool, p_drop: f32) -> Result<()> {
        let Sweep {
            gpu,
            blas,
            layout,
            m,
            b,
            p,
            params,
            grads,
            xt,
            xi,
            text: tt,
            image: it,
            streams,
            d_out,
            d_cur,
            d_next,
            delta,
            tmp,
            ..
        } = self;
        let (gpu, m, b, p, k) = (*gpu, *m, *b, *p, layout.k);
        let pp = p as i64;
        let (bi, ki, mi) = (b as i32, k as i32, m as i32);
        let (heads, tower, x0) = if text {
            (layout.text, &*tt, &*xt)
        } else {
            (layout.image, &*it, &*xi)
        };
        let f = gpu.function(MODULE, "l2_normalize_backward")?;
        let mut l = gpu.stream.launch_builder(&f);
        l.arg(&tower.out)
            .arg(&*d_out)
            .arg(&tower.norms)
            .arg(&mut *d_cur)
            .arg(&bi)
            .arg(&ki);
        // SAFETY: l2_normalize_backward on M·B rows.
        unsafe { l.launch(launch::rows(b, m, ROW_THREADS)) }
            .map_err(launch_err("l2_normalize_backward"))?;
        let col = launch::flat(m * k, 256, 65535 * 4);
        let bias_grad =
            |src: &CudaSlice<f32>, grads: &mut CudaSlice<f32>, off: usize| -> Result<()> {
                let f = gpu.function(MODULE, "bias_grad")?;
                let o = off as i32;
                let mut l = gpu.stream.launch_builder(&f);
                l.arg(src)
                    .arg(grads)
                    .arg(&pp)
                    .arg(&o)
                    .arg(&bi)
                    .arg(&ki)
                    .arg(&mi);
                // SAFETY: bias_grad over M·k columns.
                unsafe { l.launch(col) }.map_err(launch_err("bias_grad"))?;
                Ok(())
            };
        for i in (0..3).rev() {
            let h = heads[i];
            let site = if text { i as i32 } else { 3 + i as i32 };
            let hb = &tower.heads[i];
            let (ln_w, ln_b) = (h.ln_w as i32, h.ln_b as i32);
            let f = gpu.function(MODULE, "layer_norm_param_grad")?;
            let mut l = gpu.stream.launch_builder(&f);
            l.arg(&*d_cur)
                .arg(&hb.xhat)
                .arg(&mut *grads)
                .arg(&pp)
                .arg(&ln_w)
                .arg(&ln_b)
                .arg(&bi)
                .arg(&ki)
                .arg(&mi);
            // SAFETY: layer_norm_param_grad over M·k columns.
            unsafe { l.launch(col) }.map_err(launch_err("layer_norm_param_grad"))?;
            let x = if i == 0 { x0 } else { &tower.heads[i - 1].y };
            let input = Mat {
                buf: x,
                off: 0,
                ld: h.din,
                stride: b * h.din,
            };
            let dmat = |buf| Mat {
                buf,
                off: 0,
                ld: k,
                stride: b * k,
            };
            match h.proj {
                None => {
                    let f = gpu.function(MODULE, "residual_gelu_ln_backward")?;
                    let mut l = gpu.stream.launch_builder(&f);
                    l.arg(&*d_cur)
                        .arg(&hb.xhat)
                        .arg(&hb.rstd)
                        .arg(&hb.a)
                        .arg(&*params)
                        .arg(&pp)
                        .arg(&ln_w)
                        .arg(&*streams)
                        .arg(&site)
                        .arg(&p_drop)
                        .arg(&mut *d_next)
                        .arg(&mut *delta)
                        .arg(&bi)
                        .arg(&ki);
                    // SAFETY: residual_gelu_ln_backward, one block per (row, model).
                    unsafe { l.launch(launch::rows(b, m, ROW_THREADS)) }
                        .map_err(launch_err("residual_gelu_ln_backward"))?;
                    gemm(
                        blas,
                        m,
                        true,
                        false,
                        k,
                        h.din,
                        b,
                        dmat(&*delta),
                        input,
                        grads,
                        h.fc_w,
                        h.din,
                        p,
                        false,
                    )?;
                    bias_grad(delta, grads, h.fc_b)?;
                    if i > 0 {
                        gemm(
                            blas,
                            m,
                            false,
                            false,
                            b,
                            k,
                            k,
                            dmat(&*delta),
                            Mat {
                                buf: params,
                                off: h.fc_w,
                                ld: k,
                                stride: p,
                            },
                            d_next,
                            0,
                            k,
                            b * k,
                            true,
                        )?;
                        std::mem::swap(d_cur, d_next);
                    }
                }
                Some((pw, pbias)) => {
                    let f = gpu.function(MODULE, "residual_ln_backward")?;
                    let mut l = gpu.stream.launch_builder(&f);
                    l.arg(&*d_cur)
                        .arg(&hb.xhat)
                        .arg(&hb.rstd)
                        .arg(&*params)
                        .arg(&pp)
                        .arg(&ln_w)
                        .arg(&*streams)
                        .arg(&site)
                        .arg(&p_drop)
                        .arg(&mut *d_next)
                        .arg(&mut *delta)
                        .arg(&bi)
                        .arg(&ki);
                    // SAFETY: residual_ln_backward, one block per (row, model).
                    unsafe { l.launch(launch::rows(b, m, ROW_THREADS)) }
                        .map_err(launch_err("residual_ln_backward"))?;
                    gemm(
                        blas,
                        m,
                        true,
                        false,
                        k,
                        k,
                        b,
                        dmat(&*delta),
                        dmat(&hb.g),
                        grads,
                        h.fc_w,
                        k,
                        p,
                        false,
                    )?;
                    bias_grad(delta, grads, h.fc_b)?;
                    gemm(
                        blas,
                        m,
                        false,
                        false,
                        b,
                        k,
                        k,
                        dmat(&*delta),
                        Mat {
                            buf: params,
                            off: h.fc_w,
                            ld: k,
                            stride: p,
                        },
                        tmp,
                        0,
                        k,
                        b * k,
                        false,
                    )?;
                    let f = gpu.function(MODULE, "gelu_backward_add")?;
                    let count = (m * b * k) as i64;
                    let mut l = gpu.stream.launch_builder(&f);
                    l.arg(&*tmp).arg(&hb.a).arg(&mut *d_next).arg(&count);
                    // SAFETY: gelu_backward_add over M·B·k elements.
                    unsafe { l.launch(launch::flat(m * b * k, 256, 65535 * 4)) }
                        .map_err(launch_err("gelu_backward_add"))?;
                    gemm(
                        blas,
                        m,
                        true,
                        false,
                        k,
                        h.din,
                        b,
                        dmat(&*d_next),
                        input,
                        grads,
                        pw,
                        h.din,
                        p,
                        false,
                    )?;
                    bias_grad(d_next, grads, pbias)?;
                }
            }
        }
        Ok(())
    }

    /// One training step of every model (inactive ones get zero gradients and no update).
    fn train_step(&mut self, p_drop: f32, lr: f32, wd: f32) -> Result<()> {
        self.forward_loss(p_drop)?;
        let (m, b, k) = (self.m, self.b, self.layout.k);
        gemm(
            &self.blas,
            m,
            false,
            false,
            b,
            k,
            b,
            Mat {
                buf: &self.dsim,
                off: 0,
                ld: b,
                stride: b * b,
            },
            Mat {
                buf: &self.text.out,
                off: 0,
                ld: k,
                stride: b * k,
            },
            &mut self.d_out,
            0,
            k,
            b * k,
            false,
        )?;
        self.backward_tower(false, p_drop)?;
        gemm(
            &self.blas,
            m,
            true,
            false,
            b,
            k,
            b,
            Mat {
                buf: &self.dsim,
                off: 0,
                ld: b,
                stride: b * b,
            },
            Mat {
                buf: &self.image.out,
                off: 0,
                ld: k,
                stride: b * k,
            },
            &mut self.d_out,
            0,
            k,
            b * k,
            false,
        )?;
        self.backward_tower(true, p_drop)?;
        let f = self.gpu.function(MODULE, "adamw")?;
        let (pp, mi, decay) = (self.p as i64, m as i32, 1.0f32 - lr * wd);
        let mut l = self.gpu.stream.launch_builder(&f);
        l.arg(&mut self.params)
            .arg(&self.grads)
            .arg(&mut self.mom)
            .arg(&mut self.vel)
            .arg(&pp)
            .arg(&mi)
            .arg(&self.active)
            .arg(&self.step_size)
            .arg(&self.bc2_sqrt)
            .arg(&decay)
            .arg(&BETA1)
            .arg(&BETA2)
            .arg(&ADAM_EPS);
        // SAFETY: adamw over M·P elements.
        unsafe { l.launch(launch::flat(m * self.p, 256, 65535 * 4)) }
            .map_err(launch_err("adamw"))?;
        Ok(())
    }

    /// Uploads the batch rows of every model (-1 = padding).
    fn set_batch(&mut self, idx: &[i32], n: &[i32]) -> Result<()> {
        self.gpu.htod_into(idx, &mut self.idx)?;
        self.gpu.htod_into(n, &mut self.n)?;
        let f = self.gpu.function(MODULE, "gather_rows")?;
        let rows = (self.m * self.b) as i32;
        for (src, width, dst) in [
            (&self.data_text, self.layout.d, &mut self.xt),
            (&self.data_images, self.layout.k, &mut self.xi),
        ] {
            let w = width as i32;
            let mut l = self.gpu.stream.launch_builder(&f);
            l.arg(src).arg(&w).arg(&self.idx).arg(dst).arg(&rows);
            // SAFETY: gather_rows of M·B rows of `width`.
            unsafe { l.launch(launch::flat(self.m * self.b * width, 256, 65535 * 4)) }
                .map_err(launch_err("gather_rows"))?;
        }
        Ok(())
    }

    fn slice_to_host(&self, buf: &CudaSlice<f32>, m: usize) -> Result<Vec<f32>> {
        let mut out = vec![0.0f32; self.p];
        self.gpu
            .stream
            .memcpy_dtoh(&buf.slice(m * self.p..(m + 1) * self.p), &mut out)
            .map_err(cuda_err("device-to-host copy failed"))?;
        self.gpu.sync()?;
        Ok(out)
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

/// Trains every job on the GPU, as many at once as fit in device memory.
pub fn train_many(
    gpu: &Gpu,
    pairs: &Pairs,
    cfg: &TrainConfig,
    jobs: &[Job],
    resume: bool,
    progress: &mut Progress,
) -> Result<Vec<Outcome>> {
    cfg.check()?;
    let Some(first) = jobs.first() else {
        return Ok(Vec::new());
    };
    let layout = first.init.layout.clone();
    if jobs.iter().any(|j| j.init.layout != layout) || layout.d != pairs.d || layout.k != pairs.k {
        return Err(Error::Usage(
            "all models of a CUDA sweep need the data's text and image widths".into(),
        ));
    }
    let (free, _) = gpu
        .ctx
        .mem_get_info()
        .map_err(cuda_err("cannot read free device memory"))?;
    let data_bytes = 4 * pairs.n * (pairs.d + pairs.k);
    let per = bytes_per_model(&layout, cfg.batch);
    let fit = (free.saturating_sub(data_bytes) * 8 / 10 / per).max(1);
    let mut out = Vec::with_capacity(jobs.len());
    for group in jobs.chunks(fit) {
        out.extend(train_group(gpu, pairs, cfg, group, resume, progress)?);
    }
    Ok(out)
}

fn train_group(
    gpu: &Gpu,
    pairs: &Pairs,
    cfg: &TrainConfig,
    jobs: &[Job],
    resume: bool,
    progress: &mut Progress,
) -> Result<Vec<Outcome>> {
    let layout = jobs[0].init.layout.clone();
    let (mm, b, p) = (jobs.len(), cfg.batch, layout.len);
    let mut sw = Sweep::new(gpu, pairs, &layout, mm, b)?;
    // Hashing the data takes a pass over it: only for the jobs with a checkpoint.
    let keys: Vec<Option<String>> = jobs
        .iter()
        .map(|j| j.checkpoint.as_ref().map(|_| j.key(pairs, cfg)))
        .collect();
    let mut states = Vec::with_capacity(mm);
    for (m, j) in jobs.iter().enumerate() {
        let mut st = j.start(keys[m].as_deref(), resume)?;
        if st.epoch >= cfg.epochs {
            st.done = true;
        }
        progress
            .bar
            .inc((st.epoch.min(cfg.epochs) * n_batches(j.train.len(), b)) as u64);
        let put = |buf: &mut CudaSlice<f32>, v: &[f32]| -> Result<()> {
            if v.is_empty() {
                return Ok(());
            }
            let mut view = buf.slice_mut(m * p..(m + 1) * p);
            gpu.stream
                .memcpy_htod(v, &mut view)
                .map_err(cuda_err("host-to-device copy failed"))
        };
        put(&mut sw.params, &st.params)?;
        put(&mut sw.mom, &st.m)?;
        put(&mut sw.vel, &st.v)?;
        put(&mut sw.best, &st.best)?;
        // The device holds the weights from here on; the host state keeps the counters.
        for v in [&mut st.params, &mut st.m, &mut st.v, &mut st.best] {
            v.clear();
        }
        states.push(st);
    }
    let mut last_ckpt = Instant::now();
    let mut idx = vec![-1i32; mm * b];
    let mut n = vec![0i32; mm];
    let mut batch_losses: Vec<Vec<f32>> = vec![Vec::new(); mm];
    while states.iter().any(|s| !s.done) {
        let orders: Vec<Vec<usize>> = jobs
            .iter()
            .zip(&states)
            .map(|(j, s)| {
                if s.done {
                    Vec::new()
                } else {
                    epoch_order(&j.train, cfg.shuffle, cfg.seed, j.model_id, s.epoch)
                }
            })
            .collect();
        let steps = orders
            .iter()
            .map(|o| n_batches(o.len(), b))
            .max()
            .unwrap_or(0);
        sw.gpu
            .stream
            .memset_zeros(&mut sw.loss_acc)
            .map_err(cuda_err("memset"))?;
        for s in 0..steps {
            let mut streams = vec![0u64; mm * 6];
            let mut active = vec![0i32; mm];
            let mut step_size = vec![0.0f32; mm];
            let mut bc2 = vec![1.0f32; mm];
            for m in 0..mm {
                let rows = orders[m]
                    .get(s * b..((s + 1) * b).min(orders[m].len()))
                    .unwrap_or(&[]);
                n[m] = rows.len() as i32;
                for r in 0..b {
                    idx[m * b + r] = rows.get(r).map_or(-1, |&v| v as i32);
                }
                if !rows.is_empty() {
                    let drops = cfg.dropouts(jobs[m].model_id, states[m].step);
                    for (site, d) in drops.iter().enumerate() {
                        streams[m * 6 + site] = d.stream;
                    }
                    states[m].step += 1;
                    (step_size[m], bc2[m]) = adam_scalars(cfg.lr, states[m].step);
                    active[m] = 1;
                }
            }
            sw.gpu.htod_into(&streams, &mut sw.streams)?;
            sw.gpu.htod_into(&active, &mut sw.active)?;
            sw.gpu.htod_into(&step_size, &mut sw.step_size)?;
            sw.gpu.htod_into(&bc2, &mut sw.bc2_sqrt)?;
            sw.set_batch(&idx, &n)?;
            sw.train_step(cfg.dropout, cfg.lr, cfg.weight_decay)?;
            if cfg.stop_after_batches.is_some() || mm == 1 {
                // Per-batch losses (for tests and single-model runs): one small copy.
                let mut acc = sw.gpu.dtoh(&sw.loss_acc, mm)?;
                for m in 0..mm {
                    if n[m] > 0 {
                        let prev: f32 = batch_losses[m].iter().sum();
                        batch_losses[m].push(acc[m] - prev);
                    }
                }
                acc.clear();
            }
            for &a in &active {
                if a != 0 {
                    progress.batch()?;
                }
            }
        }
        let train_sum = sw.gpu.dtoh(&sw.loss_acc, mm)?;
        // Validation loss in eval mode, batches in order.
        let mut val_sum = vec![0.0f32; mm];
        if jobs.iter().any(|j| j.val.is_some()) {
            sw.gpu
                .stream
                .memset_zeros(&mut sw.loss_acc)
                .map_err(cuda_err("memset"))?;
            let vsteps = jobs
                .iter()
                .zip(&states)
                .filter(|(_, s)| !s.done)
                .map(|(j, _)| n_batches(j.val.as_ref().map_or(0, Vec::len), b))
                .max()
                .unwrap_or(0);
            for s in 0..vsteps {
                for m in 0..mm {
                    let rows: &[usize] = match (&jobs[m].val, states[m].done) {
                        (Some(v), false) => v.get(s * b..((s + 1) * b).min(v.len())).unwrap_or(&[]),
                        _ => &[],
                    };
                    n[m] = rows.len() as i32;
                    for r in 0..b {
                        idx[m * b + r] = rows.get(r).map_or(-1, |&v| v as i32);
                    }
                }
                sw.set_batch(&idx, &n)?;
                sw.forward_loss(0.0)?;
            }
            val_sum = sw.gpu.dtoh(&sw.loss_acc, mm)?;
        }
        for m in 0..mm {
            if states[m].done {
                continue;
            }
            let nb = n_batches(orders[m].len(), b).max(1);
            let val = jobs[m]
                .val
                .as_ref()
                .map(|v| val_sum[m] / n_batches(v.len(), b).max(1) as f32);
            let before = states[m].best_epoch;
            finish_epoch(&mut states[m], cfg, train_sum[m] / nb as f32, val);
            if states[m].best_epoch != before {
                let src = sw.params.slice(m * p..(m + 1) * p);
                let mut dst = sw.best.slice_mut(m * p..(m + 1) * p);
                sw.gpu
                    .stream
                    .memcpy_dtod(&src, &mut dst)
                    .map_err(cuda_err("device copy failed"))?;
            }
            if !states[m].train_loss.last().is_some_and(|l| l.is_finite()) {
                return Err(Error::Usage(format!(
                    "the training loss of model {} became not finite at epoch {}; lower --lr",
                    jobs[m].model_id, states[m].epoch
                )));
            }
        }
        if last_ckpt.elapsed() >= CHECKPOINT_EVERY
            || states.iter().all(|s| s.done)
            || cfg.stop_after_batches.is_some()
        {
            for (m, j) in jobs.iter().enumerate() {
                if let (Some(path), Some(key)) = (&j.checkpoint, &keys[m]) {
                    let mut st = states[m].clone();
                    st.best = sw.slice_to_host(&sw.best, m)?;
                    if !st.done {
                        st.params = sw.slice_to_host(&sw.params, m)?;
                        st.m = sw.slice_to_host(&sw.mom, m)?;
                        st.v = sw.slice_to_host(&sw.vel, m)?;
                    }
                    st.save(path, &layout, key)?;
                }
            }
            last_ckpt = Instant::now();
        }
    }
    let mut out = Vec::with_capacity(mm);
    for (m, j) in jobs.iter().enumerate() {
        let mut st: ModelState = states[m].clone();
        st.best = sw.slice_to_host(&sw.best, m)?;
        out.push(Outcome::from_state(
            &j.init,
            &st,
            j.val.is_some(),
            std::mem::take(&mut batch_losses[m]),
        ));
    }
    Ok(out)
}
