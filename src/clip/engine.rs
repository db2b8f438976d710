//! Forward and backward passes of the whole model on the CPU, by hand: the towers head by head
//! (GEMMs through `ops::matmul_*`, the elementwise work fused row by row), the symmetric
//! InfoNCE loss, and the gradient of every parameter into one flat vector laid out as the
//! parameters (so AdamW is one pass).

use super::model::{Head, Layout};
use super::ops::{self, Dropout};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tower {
    Text,
    Image,
}

/// Dropout of the six sites: text heads 0–2, then image heads 0–2.
pub type Dropouts = [Dropout; 6];
pub const NO_DROPOUT: Dropouts = [Dropout::OFF; 6];

fn site(tower: Tower, i: usize) -> usize {
    match tower {
        Tower::Text => i,
        Tower::Image => 3 + i,
    }
}

/// Activations of one head kept for the backward pass (all n × k, `rstd` n).
#[derive(Default)]
struct HeadBuf {
    /// Residual head: fc(x). Projection head: p = projection(x).
    a: Vec<f32>,
    /// Projection head only: GELU(p) and fc(GELU(p)).
    g: Vec<f32>,
    a2: Vec<f32>,
    xhat: Vec<f32>,
    rstd: Vec<f32>,
    y: Vec<f32>,
}

/// One tower's activations; `out` holds the L2-normalised embeddings.
#[derive(Default)]
pub struct TowerBuf {
    heads: [HeadBuf; 3],
    pub out: Vec<f32>,
    norms: Vec<f32>,
}

/// Buffers for batches of up to `cap` rows.
pub struct Workspace {
    cap: usize,
    text: TowerBuf,
    image: TowerBuf,
    sim: Vec<f32>,
    dlogits: Vec<f32>,
    d_out: Vec<f32>,
    d_cur: Vec<f32>,
    d_next: Vec<f32>,
    delta: Vec<f32>,
    tmp: Vec<f32>,
}

impl Workspace {
    pub fn new(layout: &Layout, cap: usize) -> Workspace {
        let k = layout.k;
        let nk = cap * k;
        let tower = |proj: bool| {
            let head = |p: bool| HeadBuf {
                a: vec![0.0; nk],
                g: if p { vec![0.0; nk] } else { Vec::new() },
                a2: if p { vec![0.0; nk] } else { Vec::new() },
                xhat: vec![0.0; nk],
                rstd: vec![0.0; cap],
                y: vec![0.0; nk],
            };
            TowerBuf {
                heads: [head(proj), head(false), head(false)],
                out: vec![0.0; nk],
                norms: vec![0.0; cap],
            }
        };
        Workspace {
            cap,
            text: tower(true),
            image: tower(false),
            sim: vec![0.0; cap * cap],
            dlogits: vec![0.0; cap * cap],
            d_out: vec![0.0; nk],
            d_cur: vec![0.0; nk],
            d_next: vec![0.0; nk],
            delta: vec![0.0; nk],
            tmp: vec![0.0; nk],
        }
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    pub fn tower(&self, tower: Tower) -> &TowerBuf {
        match tower {
            Tower::Text => &self.text,
            Tower::Image => &self.image,
        }
    }

    /// Forward of one tower on `x` (n × din, already L2-normalised): embeddings in `tower(..).out`.
    pub fn forward_tower(
        &mut self,
        layout: &Layout,
        params: &[f32],
        tower: Tower,
        x: &[f32],
        n: usize,
        drops: &Dropouts,
    ) {
        assert!(
            n <= self.cap,
            "batch of {n} rows in a workspace for {}",
            self.cap
        );
        let k = layout.k;
        let heads = layout.tower(tower);
        let buf = match tower {
            Tower::Text => &mut self.text,
            Tower::Image => &mut self.image,
        };
        let nk = n * k;
        for (i, h) in heads.iter().enumerate() {
            let (done, rest) = buf.heads.split_at_mut(i);
            let hb = &mut rest[0];
            let input: &[f32] = if i == 0 { x } else { &done[i - 1].y[..nk] };
            let drop = drops[site(tower, i)];
            let gamma = &params[h.ln_w..h.ln_w + k];
            let beta = &params[h.ln_b..h.ln_b + k];
            match h.proj {
                None => {
                    ops::fill_rows(&mut hb.a[..nk], &params[h.fc_b..h.fc_b + k]);
                    ops::matmul_nt(
                        n,
                        k,
                        h.din,
                        input,
                        &params[h.fc_w..h.fc_w + k * h.din],
                        &mut hb.a,
                        true,
                    );
                    ops::residual_gelu_ln_forward(
                        input,
                        &hb.a,
                        k,
                        drop,
                        gamma,
                        beta,
                        &mut hb.xhat,
                        &mut hb.rstd[..n],
                        &mut hb.y,
                    );
                }
                Some((pw, pb)) => {
                    ops::fill_rows(&mut hb.a[..nk], &params[pb..pb + k]);
                    ops::matmul_nt(
                        n,
                        k,
                        h.din,
                        input,
                        &params[pw..pw + k * h.din],
                        &mut hb.a,
                        true,
                    );
                    ops::gelu_forward(&hb.a[..nk], &mut hb.g[..nk]);
                    ops::fill_rows(&mut hb.a2[..nk], &params[h.fc_b..h.fc_b + k]);
                    ops::matmul_nt(
                        n,
                        k,
                        k,
                        &hb.g,
                        &params[h.fc_w..h.fc_w + k * k],
                        &mut hb.a2,
                        true,
                    );
                    ops::residual_ln_forward(
                        &hb.a,
                        &hb.a2,
                        k,
                        drop,
                        gamma,
                        beta,
                        &mut hb.xhat,
                        &mut hb.rstd[..n],
                        &mut hb.y,
                    );
                }
            }
        }
        let norms = ops::l2_normalize_rows(&buf.heads[2].y[..nk], k, &mut buf.out[..nk]);
        buf.norms[..n].copy_from_slice(&norms);
    }

    /// Symmetric InfoNCE loss of a batch (no gradient): texts `xt` (n × d) and images `xi`
    /// (n × k), both already L2-normalised.
    pub fn loss(
        &mut self,
        layout: &Layout,
        params: &[f32],
        xt: &[f32],
        xi: &[f32],
        n: usize,
        drops: &Dropouts,
    ) -> f32 {
        self.forward_tower(layout, params, Tower::Text, xt, n, drops);
        self.forward_tower(layout, params, Tower::Image, xi, n, drops);
        let k = layout.k;
        ops::matmul_nt(
            n,
            n,
            k,
            &self.image.out,
            &self.text.out,
            &mut self.sim,
            false,
        );
        ops::info_nce(&self.sim, n, params[layout.logit_scale], &mut self.dlogits).0
    }

    /// Loss of a batch and the gradient of every parameter into `grads` (overwritten).
    #[allow(clippy::too_many_arguments)]
    pub fn loss_and_grad(
        &mut self,
        layout: &Layout,
        params: &[f32],
        grads: &mut [f32],
        xt: &[f32],
        xi: &[f32],
        n: usize,
        drops: &Dropouts,
    ) -> f32 {
        grads.fill(0.0);
        let k = layout.k;
        let loss = self.loss(layout, params, xt, xi, n, drops);
        let s = params[layout.logit_scale];
        // dL/ds = Σ dlogits ∘ sim; then dlogits ← s·dlogits = dL/dsim.
        grads[layout.logit_scale] = self.dlogits[..n * n]
            .iter()
            .zip(&self.sim[..n * n])
            .map(|(&g, &v)| g as f64 * v as f64)
            .sum::<f64>() as f32;
        for g in &mut self.dlogits[..n * n] {
            *g *= s;
        }
        // sim = I Tᵀ: dI = dsim T, dT = dsimᵀ I.
        ops::matmul_nn(
            n,
            k,
            n,
            &self.dlogits,
            &self.text.out,
            &mut self.d_out,
            false,
        );
        self.backward_tower(layout, params, grads, Tower::Image, xi, n, drops);
        ops::matmul_tn(
            n,
            k,
            n,
            &self.dlogits,
            &self.image.out,
            &mut self.d_out,
            false,
        );
        self.backward_tower(layout, params, grads, Tower::Text, xt, n, drops);
        loss
    }

    /// Backward of one tower from `d_out` (gradient of its normalised embeddings).
    #[allow(clippy::too_many_arguments)]
    fn backward_tower(
        &mut self,
        layout: &Layout,
        params: &[f32],
        grads: &mut [f32],
        tower: Tower,
        x: &[f32],
        n: usize,
        drops: &Dropouts,
    ) {
        let k = layout.k;
        let nk = n * k;
        let heads: &[Head; 3] = layout.tower(tower);
        let buf = match tower {
            Tower::Text => &self.text,
            Tower::Image => &self.image,
        };
        ops::l2_normalize_backward(
            &buf.out[..nk],
            &self.d_out[..nk],
            &buf.norms[..n],
            k,
            &mut self.d_cur[..nk],
        );
        for i in (0..3).rev() {
            let h = &heads[i];
            let hb = &buf.heads[i];
            let input: &[f32] = if i == 0 { x } else { &buf.heads[i - 1].y[..nk] };
            let drop = drops[site(tower, i)];
            let gamma = &params[h.ln_w..h.ln_w + k];
            {
                let (lo, hi) = grads.split_at_mut(h.ln_b);
                ops::layer_norm_param_grads(
                    &self.d_cur[..nk],
                    &hb.xhat[..nk],
                    k,
                    &mut lo[h.ln_w..h.ln_w + k],
                    &mut hi[..k],
                );
            }
            match h.proj {
                None => {
                    ops::residual_gelu_ln_backward(
                        &self.d_cur,
                        &hb.xhat,
                        &hb.rstd[..n],
                        &hb.a,
                        k,
                        drop,
                        gamma,
                        &mut self.d_next,
                        &mut self.delta,
                    );
                    ops::matmul_tn(
                        k,
                        h.din,
                        n,
                        &self.delta,
                        input,
                        &mut grads[h.fc_w..h.fc_w + k * h.din],
                        true,
                    );
                    ops::add_col_sums(&self.delta[..nk], k, &mut grads[h.fc_b..h.fc_b + k]);
                    if i > 0 {
                        ops::matmul_nn(
                            n,
                            k,
                            k,
                            &self.delta,
                            &params[h.fc_w..h.fc_w + k * k],
                            &mut self.d_next,
                            true,
                        );
                        std::mem::swap(&mut self.d_cur, &mut self.d_next);
                    }
                }
                Some((pw, pb)) => {
                    // d_next ← dr (gradient reaching p through the residual), delta ← dL/dfc_out.
                    ops::residual_ln_backward(
                        &self.d_cur,
                        &hb.xhat,
                        &hb.rstd[..n],
                        k,
                        drop,
                        gamma,
                        &mut self.d_next,
                        &mut self.delta,
                    );
                    ops::matmul_tn(
                        k,
                        k,
                        n,
                        &self.delta,
                        &hb.g,
                        &mut grads[h.fc_w..h.fc_w + k * k],
                        true,
                    );
                    ops::add_col_sums(&self.delta[..nk], k, &mut grads[h.fc_b..h.fc_b + k]);
                    ops::matmul_nn(
                        n,
                        k,
                        k,
                        &self.delta,
                        &params[h.fc_w..h.fc_w + k * k],
                        &mut self.tmp,
                        false,
                    );
                    ops::gelu_backward_add(&self.tmp[..nk], &hb.a[..nk], &mut self.d_next[..nk]);
                    ops::matmul_tn(
                        k,
                        h.din,
                        n,
                        &self.d_next,
                        input,
                        &mut grads[pw..pw + k * h.din],
                        true,
                    );
                    ops::add_col_sums(&self.d_next[..nk], k, &mut grads[pb..pb + k]);
                }
            }
        }
    }
}
