//! The CLIP ops one at a time on host data, on either device, for the parity tests
//! (`tests/clip_ops.rs`): the CPU's functions of `ops` and `adamw`, or kernels/clip.cu's
//! kernels through the very launch wrappers the CUDA engine uses (`cuda_ops`), one model and
//! one batch of `n` rows at a time (inputs copied in, outputs copied back).
//! `Device::clip_kernels` picks one.

use super::adamw::{adam_scalars, adamw_step, ADAM_EPS, BETA1, BETA2};
use super::cuda_ops::{self as kernel, AdamArgs, AdamDev, HeadArgs, InfoNce, LnRows, Shape};
use super::ops::{self, Dropout, Saved};
use crate::device::cuda::Gpu;
use crate::error::Result;
use cudarc::driver::CudaSlice;
use std::sync::Arc;

/// A head's fc bias and LayerNorm weight and bias (k each).
#[derive(Clone, Debug)]
pub struct HeadParams {
    pub fc_b: Vec<f32>,
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
}

/// What a head's forward row pass writes: the LayerNorm's x̂ and output y (n × k), and 1/σ (n).
#[derive(Clone, Debug)]
pub struct LnOut {
    pub xhat: Vec<f32>,
    pub rstd: Vec<f32>,
    pub y: Vec<f32>,
}

/// The symmetric InfoNCE loss of a batch, dL/ds, and dL/dsim (n × n).
#[derive(Clone, Debug)]
pub struct InfoNceOut {
    pub loss: f32,
    pub ds: f32,
    pub dsim: Vec<f32>,
}

/// Parameters and AdamW moments of one flat vector.
#[derive(Clone, Debug)]
pub struct AdamState {
    pub params: Vec<f32>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

/// The CLIP ops of one device. Rows are `k` wide (the heads' `HeadParams` width).
pub trait Kernels {
    /// The projection head's activation: (p + bias, GELU(p + bias)), row by row.
    fn bias_gelu(&self, p: &[f32], bias: &[f32]) -> Result<(Vec<f32>, Vec<f32>)>;
    /// A residual head after its product a: y = LN(x + dropout(GELU(a + fc.bias))).
    fn residual_gelu_ln_forward(
        &self,
        x: &[f32],
        a: &[f32],
        h: &HeadParams,
        drop: Dropout,
    ) -> Result<LnOut>;
    /// The projection head after its second product a2: y = LN(p + dropout(a2 + fc.bias)).
    fn residual_ln_forward(
        &self,
        p: &[f32],
        a2: &[f32],
        h: &HeadParams,
        drop: Dropout,
    ) -> Result<LnOut>;
    /// A head's backward row pass from dy: (dr, delta), delta = dr · dropout · GELU′(a) for a
    /// residual head (`a` its pre-activation with the bias), dr · dropout without `a`.
    fn head_backward(
        &self,
        dy: &[f32],
        ln: &LnOut,
        a: Option<&[f32]>,
        gamma: &[f32],
        drop: Dropout,
    ) -> Result<(Vec<f32>, Vec<f32>)>;
    /// dp + dg · GELU′(p).
    fn gelu_backward_add(&self, dg: &[f32], p: &[f32], dp: &[f32]) -> Result<Vec<f32>>;
    /// Rows at unit L2 norm, and the (clamped) norms.
    fn l2_normalize(&self, z: &[f32], k: usize) -> Result<(Vec<f32>, Vec<f32>)>;
    /// The gradient through `l2_normalize`.
    fn l2_normalize_backward(
        &self,
        out: &[f32],
        dout: &[f32],
        norms: &[f32],
        k: usize,
    ) -> Result<Vec<f32>>;
    /// Symmetric InfoNCE of an n × n similarity matrix with logit scale `s`.
    fn info_nce(&self, sim: &[f32], n: usize, s: f32) -> Result<InfoNceOut>;
    /// A bias gradient: the column sums of delta.
    fn bias_grad(&self, delta: &[f32], k: usize) -> Result<Vec<f32>>;
    /// LayerNorm's (dγ, dβ) = (Σ dy·x̂, Σ dy) over the rows.
    fn layer_norm_param_grad(
        &self,
        dy: &[f32],
        xhat: &[f32],
        k: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)>;
    /// AdamW step t (1-based) on `st` with gradient `grads`.
    fn adamw(&self, st: &mut AdamState, grads: &[f32], t: u64, lr: f32, wd: f32) -> Result<()>;
    /// The rows `rows` of `src` (rows of `width`).
    fn gather(&self, src: &[f32], width: usize, rows: &[usize]) -> Result<Vec<f32>>;
}

/// The CPU's ops (`ops`, `adamw`): the references of the CUDA kernels.
pub struct CpuKernels;

/// The per-element dropout factors the CPU's forward pass keeps for the backward pass.
fn mask(drop: Dropout, len: usize) -> Vec<f32> {
    (0..len as u64).map(|i| drop.factor(i)).collect()
}

fn plus_bias(a: &[f32], bias: &[f32]) -> Vec<f32> {
    let mut out = a.to_vec();
    for row in out.chunks_exact_mut(bias.len()) {
        for (o, b) in row.iter_mut().zip(bias) {
            *o += b;
        }
    }
    out
}

impl CpuKernels {
    /// Runs a CPU forward row pass into fresh buffers for `n` rows of `k`.
    fn forward(n: usize, k: usize, run: impl FnOnce(Saved)) -> LnOut {
        let (mut xhat, mut y) = (vec![0.0; n * k], vec![0.0; n * k]);
        let (mut mask, mut dgelu, mut rstd) = (vec![0.0; n * k], vec![0.0; n * k], vec![0.0; n]);
        run(Saved {
            xhat: &mut xhat,
            rstd: &mut rstd,
            y: &mut y,
            mask: &mut mask,
            dgelu: &mut dgelu,
        });
        LnOut { xhat, rstd, y }
    }
}

impl Kernels for CpuKernels {
    fn bias_gelu(&self, p: &[f32], bias: &[f32]) -> Result<(Vec<f32>, Vec<f32>)> {
        let p = plus_bias(p, bias);
        let (mut g, mut dgelu) = (vec![0.0; p.len()], vec![0.0; p.len()]);
        ops::gelu_forward(&p, &mut g, &mut dgelu, false);
        Ok((p, g))
    }

    fn residual_gelu_ln_forward(
        &self,
        x: &[f32],
        a: &[f32],
        h: &HeadParams,
        drop: Dropout,
    ) -> Result<LnOut> {
        let (k, a) = (h.gamma.len(), plus_bias(a, &h.fc_b));
        Ok(Self::forward(x.len() / k, k, |saved| {
            ops::residual_gelu_ln_forward(x, &a, k, drop, &h.gamma, &h.beta, saved, true)
        }))
    }

    fn residual_ln_forward(
        &self,
        p: &[f32],
        a2: &[f32],
        h: &HeadParams,
        drop: Dropout,
    ) -> Result<LnOut> {
        let (k, a2) = (h.gamma.len(), plus_bias(a2, &h.fc_b));
        Ok(Self::forward(p.len() / k, k, |saved| {
            ops::residual_ln_forward(p, &a2, k, drop, &h.gamma, &h.beta, saved)
        }))
    }

    fn head_backward(
        &self,
        dy: &[f32],
        ln: &LnOut,
        a: Option<&[f32]>,
        gamma: &[f32],
        drop: Dropout,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let k = gamma.len();
        let dgelu: Option<Vec<f32>> =
            a.map(|a| a.iter().map(|&v| ops::gelu_and_grad(v).1).collect());
        let (mut dr, mut delta) = (vec![0.0; dy.len()], vec![0.0; dy.len()]);
        let mask = mask(drop, dy.len());
        let (xh, rs) = (&ln.xhat, &ln.rstd);
        let dg = dgelu.as_deref();
        ops::residual_ln_backward(dy, xh, rs, dg, k, drop, &mask, gamma, &mut dr, &mut delta);
        Ok((dr, delta))
    }

    fn gelu_backward_add(&self, dg: &[f32], p: &[f32], dp: &[f32]) -> Result<Vec<f32>> {
        let dgelu: Vec<f32> = p.iter().map(|&v| ops::gelu_and_grad(v).1).collect();
        let mut out = dp.to_vec();
        ops::gelu_backward_add(dg, &dgelu, &mut out);
        Ok(out)
    }

    fn l2_normalize(&self, z: &[f32], k: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let mut out = vec![0.0; z.len()];
        let norms = ops::l2_normalize_rows(z, k, &mut out);
        Ok((out, norms))
    }

    fn l2_normalize_backward(
        &self,
        out: &[f32],
        dout: &[f32],
        norms: &[f32],
        k: usize,
    ) -> Result<Vec<f32>> {
        let mut dz = vec![0.0; out.len()];
        ops::l2_normalize_backward(out, dout, norms, k, &mut dz);
        Ok(dz)
    }

    fn info_nce(&self, sim: &[f32], n: usize, s: f32) -> Result<InfoNceOut> {
        let mut dsim = vec![0.0; n * n];
        let (loss, ds) = ops::info_nce(sim, n, s, &mut dsim);
        // dL/dsim = s · dL/dlogits, as the engine takes it.
        for g in &mut dsim {
            *g *= s;
        }
        Ok(InfoNceOut { loss, ds, dsim })
    }

    fn bias_grad(&self, delta: &[f32], k: usize) -> Result<Vec<f32>> {
        let mut out = vec![0.0; k];
        ops::add_col_sums(delta, k, &mut out);
        Ok(out)
    }

    fn layer_norm_param_grad(
        &self,
        dy: &[f32],
        xhat: &[f32],
        k: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let (mut dgamma, mut dbeta) = (vec![0.0; k], vec![0.0; k]);
        ops::layer_norm_param_grads(dy, xhat, k, &mut dgamma, &mut dbeta);
        Ok((dgamma, dbeta))
    }

    fn adamw(&self, st: &mut AdamState, grads: &[f32], t: u64, lr: f32, wd: f32) -> Result<()> {
        adamw_step(&mut st.params, grads, &mut st.m, &mut st.v, t, lr, wd);
        Ok(())
    }

    fn gather(&self, src: &[f32], width: usize, rows: &[usize]) -> Result<Vec<f32>> {
        let row = |&r: &usize| &src[r * width..(r + 1) * width];
        Ok(rows.iter().flat_map(row).copied().collect())
    }
}

/// kernels/clip.cu on one device, through `cuda_ops`.
pub struct CudaKernels(pub Arc<Gpu>);

impl CudaKernels {
    fn up<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        v: &[T],
    ) -> Result<CudaSlice<T>> {
        self.0.htod(v)
    }

    fn down(&self, buf: &CudaSlice<f32>, n: usize) -> Result<Vec<f32>> {
        self.0.dtoh(buf, n)
    }

    /// One model's head: parameters [fc.bias | γ | β], dropout site 0 with `drop`'s stream.
    fn head(
        &self,
        h: &HeadParams,
        n: usize,
        drop: Dropout,
    ) -> Result<(Shape, CudaSlice<f32>, CudaSlice<u64>, HeadArgs)> {
        let k = h.gamma.len();
        let params = self.up(&[h.fc_b.as_slice(), &h.gamma, &h.beta].concat())?;
        let args = HeadArgs {
            p: 3 * k as i64,
            fc_b: 0,
            ln_w: k as i32,
            ln_b: 2 * k as i32,
            site: 0,
            p_drop: drop.p,
            b: n as i32,
            k: k as i32,
        };
        let s = Shape { m: 1, b: n, k };
        Ok((s, params, self.up(&[drop.stream; 6])?, args))
    }

    fn ln_out(&self, s: Shape, ln: &LnRows) -> Result<LnOut> {
        let nk = s.b * s.k;
        Ok(LnOut {
            xhat: self.down(&ln.xhat, nk)?,
            rstd: self.down(&ln.rstd, s.b)?,
            y: self.down(&ln.y, nk)?,
        })
    }
}

impl Kernels for CudaKernels {
    fn bias_gelu(&self, p: &[f32], bias: &[f32]) -> Result<(Vec<f32>, Vec<f32>)> {
        let k = bias.len();
        let s = Shape {
            m: 1,
            b: p.len() / k,
            k,
        };
        let (mut pre, mut g, params) = (self.up(p)?, self.0.zeros(p.len())?, self.up(bias)?);
        kernel::bias_gelu_forward(&self.0, s, &mut pre, &mut g, &params, k, 0)?;
        Ok((self.down(&pre, p.len())?, self.down(&g, p.len())?))
    }

    fn residual_gelu_ln_forward(
        &self,
        x: &[f32],
        a: &[f32],
        h: &HeadParams,
        drop: Dropout,
    ) -> Result<LnOut> {
        let (s, params, streams, args) = self.head(h, x.len() / h.gamma.len(), drop)?;
        let (x, mut a, mut ln) = (self.up(x)?, self.up(a)?, LnRows::new(&self.0, s)?);
        kernel::residual_gelu_ln_forward(
            &self.0, s, &x, &mut a, &params, &streams, &args, &mut ln,
        )?;
        self.ln_out(s, &ln)
    }

    fn residual_ln_forward(
        &self,
        p: &[f32],
        a2: &[f32],
        h: &HeadParams,
        drop: Dropout,
    ) -> Result<LnOut> {
        let (s, params, streams, args) = self.head(h, p.len() / h.gamma.len(), drop)?;
        let (p, a2, mut ln) = (self.up(p)?, self.up(a2)?, LnRows::new(&self.0, s)?);
        kernel::residual_ln_forward(&self.0, s, &p, &a2, &params, &streams, &args, &mut ln)?;
        self.ln_out(s, &ln)
    }

    fn head_backward(
        &self,
        dy: &[f32],
        ln: &LnOut,
        a: Option<&[f32]>,
        gamma: &[f32],
        drop: Dropout,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let k = gamma.len();
        let zeros = vec![0.0; k];
        let h = HeadParams {
            fc_b: zeros.clone(),
            gamma: gamma.to_vec(),
            beta: zeros,
        };
        let (s, params, streams, args) = self.head(&h, dy.len() / k, drop)?;
        let rows = LnRows {
            xhat: self.up(&ln.xhat)?,
            rstd: self.up(&ln.rstd)?,
            y: self.up(&ln.y)?,
        };
        let a = a.map(|a| self.up(a)).transpose()?;
        let dy = self.up(dy)?;
        let (mut dr, mut delta) = (self.0.zeros(dy.len())?, self.0.zeros(dy.len())?);
        let (g, st) = (&self.0, &streams);
        kernel::head_backward(
            g,
            s,
            &dy,
            &rows,
            a.as_ref(),
            &params,
            st,
            &args,
            &mut dr,
            &mut delta,
        )?;
        let nk = s.b * k;
        Ok((self.down(&dr, nk)?, self.down(&delta, nk)?))
    }

    fn gelu_backward_add(&self, dg: &[f32], p: &[f32], dp: &[f32]) -> Result<Vec<f32>> {
        let s = Shape {
            m: 1,
            b: 1,
            k: dp.len(),
        };
        let (dg, p, mut out) = (self.up(dg)?, self.up(p)?, self.up(dp)?);
        kernel::gelu_backward_add(&self.0, s, &dg, &p, &mut out)?;
        self.down(&out, s.k)
    }

    fn l2_normalize(&self, z: &[f32], k: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let n = z.len() / k;
        let s = Shape { m: 1, b: n, k };
        let (z, mut out, mut norms) = (self.up(z)?, self.0.zeros(n * k)?, self.0.zeros(n)?);
        kernel::l2_normalize_forward(&self.0, s, &z, &mut out, &mut norms)?;
        Ok((self.down(&out, n * k)?, self.down(&norms, n)?))
    }

    fn l2_normalize_backward(
        &self,
        out: &[f32],
        dout: &[f32],
        norms: &[f32],
        k: usize,
    ) -> Result<Vec<f32>> {
        let s = Shape {
            m: 1,
            b: norms.len(),
            k,
        };
        let (o, d, nm) = (self.up(out)?, self.up(dout)?, self.up(norms)?);
        let mut dz = self.0.zeros(out.len())?;
        kernel::l2_normalize_backward(&self.0, s, &o, &d, &nm, &mut dz)?;
        self.down(&dz, out.len())
    }

    fn info_nce(&self, sim: &[f32], n: usize, s: f32) -> Result<InfoNceOut> {
        let shape = Shape { m: 1, b: n, k: 0 };
        let mut nce = InfoNce::new(&self.0, shape, 1, 0)?;
        self.0.htod_into(sim, &mut nce.sim)?;
        let (params, rows, mut grads) = (self.up(&[s])?, self.up(&[n as i32])?, self.0.zeros(1)?);
        kernel::info_nce(&self.0, shape, &mut nce, &params, &rows, &mut grads)?;
        Ok(InfoNceOut {
            loss: self.down(&nce.loss_acc, 1)?[0],
            ds: self.down(&grads, 1)?[0],
            dsim: self.down(&nce.dsim, n * n)?,
        })
    }

    fn bias_grad(&self, delta: &[f32], k: usize) -> Result<Vec<f32>> {
        let s = Shape {
            m: 1,
            b: delta.len() / k,
            k,
        };
        let (d, mut grads) = (self.up(delta)?, self.0.zeros(k)?);
        kernel::bias_grad(&self.0, s, &d, &mut grads, k, 0)?;
        self.down(&grads, k)
    }

    fn layer_norm_param_grad(
        &self,
        dy: &[f32],
        xhat: &[f32],
        k: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let n = dy.len() / k;
        let h = HeadArgs {
            p: 2 * k as i64,
            fc_b: 0,
            ln_w: 0,
            ln_b: k as i32,
            site: 0,
            p_drop: 0.0,
            b: n as i32,
            k: k as i32,
        };
        let s = Shape { m: 1, b: n, k };
        let (dy, xh, mut grads) = (self.up(dy)?, self.up(xhat)?, self.0.zeros(2 * k)?);
        kernel::layer_norm_param_grad(&self.0, s, &dy, &xh, &mut grads, &h)?;
        let g = self.down(&grads, 2 * k)?;
        Ok((g[..k].to_vec(), g[k..].to_vec()))
    }

    fn adamw(&self, st: &mut AdamState, grads: &[f32], t: u64, lr: f32, wd: f32) -> Result<()> {
        let len = st.params.len();
        let (step, bc2) = adam_scalars(lr, t);
        let mut dev = AdamDev {
            mom: self.up(&st.m)?,
            vel: self.up(&st.v)?,
            active: self.up(&[1i32])?,
            step_size: self.up(&[step])?,
            bc2_sqrt: self.up(&[bc2])?,
        };
        let (mut params, g) = (self.up(&st.params)?, self.up(grads)?);
        let c = AdamArgs {
            p: len as i64,
            m: 1,
            decay: 1.0 - lr * wd,
            beta1: BETA1,
            beta2: BETA2,
            eps: ADAM_EPS,
        };
        kernel::adamw(&self.0, &mut params, &g, &mut dev, &c)?;
        st.params = self.down(&params, len)?;
        st.m = self.down(&dev.mom, len)?;
        st.v = self.down(&dev.vel, len)?;
        Ok(())
    }

    fn gather(&self, src: &[f32], width: usize, rows: &[usize]) -> Result<Vec<f32>> {
        let idx: Vec<i32> = rows.iter().map(|&r| r as i32).collect();
        let (src, idx) = (self.up(src)?, self.up(&idx)?);
        let mut dst = self.0.zeros(rows.len() * width)?;
        kernel::gather_rows(&self.0, &src, width, &idx, &mut dst, rows.len())?;
        self.down(&dst, rows.len() * width)
    }
}
