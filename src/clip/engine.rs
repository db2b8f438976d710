//! Forward and backward passes of the whole model on the CPU, by hand: the towers head by head
//! (GEMMs through `ops::matmul_*`, the elementwise work fused row by row), the symmetric
//! InfoNCE loss, and AdamW on each tensor as soon as the backward pass no longer reads it: a
//! weight inside its gradient's product (`wgrad`), the others from their gradients in a flat
//! vector laid out as the parameters. The text projection (the one wide product) runs alone on
//! all threads; the rest of the two towers, forward and backward, side by side.

use super::adamw::{adamw_update, AdamStep, AdamW};
use super::layout::{Head, Layout, Tower};
use super::ops::{self, Dropouts};
use super::wgrad::{weight_grad_adamw, Packed};

/// Activations of one head kept for the backward pass (all n × k).
#[derive(Default)]
struct HeadBuf {
    /// Residual head: fc(x). Projection head: p = projection(x).
    a: Vec<f32>,
    /// Projection head only: GELU(p) and fc(GELU(p)).
    g: Vec<f32>,
    a2: Vec<f32>,
    kept: Kept,
}

/// The buffers behind `ops::Saved` (`rstd` n, the others n × k).
#[derive(Default)]
struct Kept {
    xhat: Vec<f32>,
    rstd: Vec<f32>,
    y: Vec<f32>,
    /// The dropout factors drawn in the forward pass, reused by the backward pass.
    mask: Vec<f32>,
    /// GELU′ of the pre-activation (`a`), for the backward pass.
    dgelu: Vec<f32>,
}

impl Kept {
    fn rows(&mut self, n: usize, k: usize) -> ops::Saved<'_> {
        ops::Saved {
            xhat: &mut self.xhat[..n * k],
            rstd: &mut self.rstd[..n],
            y: &mut self.y[..n * k],
            mask: &mut self.mask[..n * k],
            dgelu: &mut self.dgelu[..n * k],
        }
    }
}

/// One tower's activations; `out` holds the L2-normalised embeddings.
#[derive(Default)]
pub struct TowerBuf {
    heads: [HeadBuf; 3],
    pub out: Vec<f32>,
    norms: Vec<f32>,
}

/// Gradient buffers of one tower's backward pass (all n × k).
struct Scratch {
    /// Gradient of the tower's normalised embeddings.
    d_out: Vec<f32>,
    d_cur: Vec<f32>,
    d_next: Vec<f32>,
    delta: Vec<f32>,
    tmp: Vec<f32>,
    /// For the weight gradients fused with AdamW.
    packed: Packed,
}

impl Scratch {
    /// For batches of up to `n` rows, `k` wide, with inputs of up to `din`.
    fn new(n: usize, k: usize, din: usize) -> Scratch {
        let nk = n * k;
        Scratch {
            d_out: vec![0.0; nk],
            d_cur: vec![0.0; nk],
            d_next: vec![0.0; nk],
            delta: vec![0.0; nk],
            tmp: vec![0.0; nk],
            packed: Packed::new(n, k, din),
        }
    }
}

/// Buffers for batches of up to `cap` rows. The two towers have their own, so their forward
/// and backward passes run at the same time (one tower per core on a 2-core machine, and
/// idle threads steal the other tower's GEMM blocks).
pub struct Workspace {
    cap: usize,
    text: TowerBuf,
    image: TowerBuf,
    sim: Vec<f32>,
    dlogits: Vec<f32>,
    text_grad: Scratch,
    image_grad: Scratch,
}

impl Workspace {
    pub fn new(layout: &Layout, cap: usize) -> Workspace {
        Workspace::with_towers(layout, cap, true, true, true)
    }

    /// Buffers for the forward pass of one tower only (encoding: no loss, no gradient).
    pub fn forward_only(layout: &Layout, cap: usize, tower: Tower) -> Workspace {
        let text = tower == Tower::Text;
        Workspace::with_towers(layout, cap, text, !text, false)
    }

    fn with_towers(layout: &Layout, cap: usize, text: bool, image: bool, grad: bool) -> Workspace {
        let k = layout.k;
        let nk = cap * k;
        let tower = |proj: bool| {
            let head = |p: bool| HeadBuf {
                a: vec![0.0; nk],
                g: if p { vec![0.0; nk] } else { Vec::new() },
                a2: if p { vec![0.0; nk] } else { Vec::new() },
                kept: Kept {
                    xhat: vec![0.0; nk],
                    rstd: vec![0.0; cap],
                    y: vec![0.0; nk],
                    mask: vec![0.0; nk],
                    dgelu: vec![0.0; nk],
                },
            };
            TowerBuf {
                heads: [head(proj), head(false), head(false)],
                out: vec![0.0; nk],
                norms: vec![0.0; cap],
            }
        };
        let pair = if grad { cap * cap } else { 0 };
        Workspace {
            cap,
            text: if text {
                tower(true)
            } else {
                TowerBuf::default()
            },
            image: if image {
                tower(false)
            } else {
                TowerBuf::default()
            },
            sim: vec![0.0; pair],
            dlogits: vec![0.0; pair],
            text_grad: Scratch::new(if grad { cap } else { 0 }, k, k.max(layout.d)),
            image_grad: Scratch::new(if grad { cap } else { 0 }, k, k),
        }
    }

    fn check_rows(&self, n: usize) {
        assert!(
            n <= self.cap,
            "batch of {n} rows in a workspace for {}",
            self.cap
        );
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
        self.check_rows(n);
        let buf = match tower {
            Tower::Text => &mut self.text,
            Tower::Image => &mut self.image,
        };
        if tower == Tower::Text {
            project(buf, layout, params, x, n);
        }
        forward(buf, layout, params, tower, x, n, drops, false);
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
        self.check_rows(n);
        // No backward pass follows (`train_step` runs its own forward), so nothing is kept.
        self.forward_both(layout, params, xt, xi, n, drops, false);
        self.info_nce(layout, params[layout.logit_scale], n).0
    }

    /// Forward of both towers: the text projection on all threads, then the rest of the two
    /// towers side by side; `train` keeps what the backward pass needs.
    #[allow(clippy::too_many_arguments)]
    fn forward_both(
        &mut self,
        layout: &Layout,
        params: &[f32],
        xt: &[f32],
        xi: &[f32],
        n: usize,
        drops: &Dropouts,
        train: bool,
    ) {
        let (text, image) = (&mut self.text, &mut self.image);
        project(text, layout, params, xt, n);
        rayon::join(
            || forward(text, layout, params, Tower::Text, xt, n, drops, train),
            || forward(image, layout, params, Tower::Image, xi, n, drops, train),
        );
    }

    /// The loss of the embeddings both towers hold and dL/ds; dL/dlogits into `dlogits`.
    fn info_nce(&mut self, layout: &Layout, scale: f32, n: usize) -> (f32, f32) {
        ops::matmul_nt(
            n,
            n,
            layout.k,
            &self.image.out,
            &self.text.out,
            &mut self.sim,
            false,
        );
        ops::info_nce(&self.sim, n, scale, &mut self.dlogits)
    }

    /// One training step: the loss of a batch, its gradient, and AdamW on the parameters.
    /// Each weight matrix is updated inside its gradient's product (`wgrad`), once the
    /// backward pass no longer reads it; the other tensors' gradients go into `grads`
    /// (overwritten; the weights' too where the CPU lacks AVX2), then their update.
    #[allow(clippy::too_many_arguments)]
    pub fn train_step(
        &mut self,
        layout: &Layout,
        params: &mut [f32],
        grads: &mut [f32],
        adam: AdamW,
        xt: &[f32],
        xi: &[f32],
        n: usize,
        drops: &Dropouts,
    ) -> f32 {
        self.check_rows(n);
        let k = layout.k;
        let image_base = layout.image_base();
        self.forward_both(layout, params, xt, xi, n, drops, true);
        let s = params[layout.logit_scale];
        let (loss, ds) = self.info_nce(layout, s, n);
        grads[layout.logit_scale] = ds;
        // dlogits ← s·dlogits = dL/dsim.
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
            &mut self.image_grad.d_out,
            false,
        );
        ops::matmul_tn(
            n,
            k,
            n,
            &self.dlogits,
            &self.image.out,
            &mut self.text_grad.d_out,
            false,
        );
        let c = AdamStep::new(adam.lr, adam.wd, adam.t);
        let [pt, pi, ps] = by_tower(params, layout);
        let [gt, gi, gs] = by_tower(grads, layout);
        let [mt, mi, ms] = by_tower(adam.m, layout);
        let [vt, vi, vs] = by_tower(adam.v, layout);
        let (text, image) = (&self.text, &self.image);
        let (tg, ig) = (&mut self.text_grad, &mut self.image_grad);
        let mut text_opt = Opt {
            params: pt,
            grads: gt,
            m: mt,
            v: vt,
            c,
        };
        let mut image_opt = Opt {
            params: pi,
            grads: gi,
            m: mi,
            v: vi,
            c,
        };
        rayon::join(
            || {
                backward(
                    text,
                    tg,
                    layout,
                    &mut text_opt,
                    0,
                    Tower::Text,
                    xt,
                    n,
                    drops,
                )
            },
            || {
                backward(
                    image,
                    ig,
                    layout,
                    &mut image_opt,
                    image_base,
                    Tower::Image,
                    xi,
                    n,
                    drops,
                )
            },
        );
        update_projection(&mut text_opt, tg, layout, xt, n);
        adamw_update(ps, gs, ms, vs, c);
        loss
    }
}

/// A flat vector (parameters, gradients, moments) as its text tower's tensors, its image
/// tower's, and the logit scale, in the layout's order.
fn by_tower<'a>(v: &'a mut [f32], layout: &Layout) -> [&'a mut [f32]; 3] {
    let (towers, scale) = v.split_at_mut(layout.logit_scale);
    let (text, image) = towers.split_at_mut(layout.image_base());
    [text, image, scale]
}

/// One tower's part of the flat parameters, gradients and AdamW moments, all starting at the
/// same flat offset, and the constants of this step's update.
struct Opt<'a> {
    params: &'a mut [f32],
    grads: &'a mut [f32],
    m: &'a mut [f32],
    v: &'a mut [f32],
    c: AdamStep,
}

impl Opt<'_> {
    /// AdamW on the tensor at `range` (relative offsets) from its gradient in `grads`.
    fn update(&mut self, range: std::ops::Range<usize>) {
        let r = range;
        let (p, g) = (&mut self.params[r.clone()], &self.grads[r.clone()]);
        adamw_update(p, g, &mut self.m[r.clone()], &mut self.v[r], self.c);
    }

    /// AdamW on the k × din weight at `at` with the gradient δᵀ x, fused with its product.
    #[allow(clippy::too_many_arguments)]
    fn update_weight(
        &mut self,
        at: usize,
        n: usize,
        k: usize,
        din: usize,
        delta: &[f32],
        x: &[f32],
        packed: &mut Packed,
    ) {
        let r = at..at + k * din;
        let (w, g) = (&mut self.params[r.clone()], &mut self.grads[r.clone()]);
        let (m, v) = (&mut self.m[r.clone()], &mut self.v[r]);
        weight_grad_adamw(n, k, din, delta, x, w, m, v, self.c, packed, g);
    }
}

/// Backward of one tower from `sc.d_out` (the gradient of its normalised embeddings), with
/// AdamW on each of its tensors as soon as the pass no longer reads it: a head's weight after
/// the gradient of its input, its other tensors after the head. The text projection's weight
/// and bias are left to `update_projection`. `opt` is the tower's part of the flat vectors,
/// from flat offset `base`.
#[allow(clippy::too_many_arguments)]
fn backward(
    buf: &TowerBuf,
    sc: &mut Scratch,
    layout: &Layout,
    opt: &mut Opt,
    base: usize,
    tower: Tower,
    x: &[f32],
    n: usize,
    drops: &Dropouts,
) {
    let k = layout.k;
    let nk = n * k;
    let heads: &[Head; 3] = layout.tower(tower);
    let at = |offset: usize| offset - base;
    ops::l2_normalize_backward(
        &buf.out[..nk],
        &sc.d_out[..nk],
        &buf.norms[..n],
        k,
        &mut sc.d_cur[..nk],
    );
    for i in (0..3).rev() {
        let h = &heads[i];
        let hb = &buf.heads[i];
        let input: &[f32] = if i == 0 {
            x
        } else {
            &buf.heads[i - 1].kept.y[..nk]
        };
        let drop = drops[tower.site(i)];
        {
            let (lo, hi) = opt.grads.split_at_mut(at(h.ln_b));
            let (dgamma, dbeta) = (&mut lo[at(h.ln_w)..at(h.ln_w) + k], &mut hi[..k]);
            dgamma.fill(0.0);
            dbeta.fill(0.0);
            ops::layer_norm_param_grads(&sc.d_cur[..nk], &hb.kept.xhat[..nk], k, dgamma, dbeta);
        }
        // d_next ← dr (the gradient through LayerNorm: the residual path's), delta ← the
        // gradient of the Linear's output (through GELU′ in a residual head).
        let dgelu = h.proj.is_none().then_some(&hb.kept.dgelu[..nk]);
        ops::residual_ln_backward(
            &sc.d_cur,
            &hb.kept.xhat,
            &hb.kept.rstd[..n],
            dgelu,
            k,
            drop,
            &hb.kept.mask,
            &opt.params[at(h.ln_w)..at(h.ln_w) + k],
            &mut sc.d_next,
            &mut sc.delta,
        );
        let fc_b = &mut opt.grads[at(h.fc_b)..at(h.fc_b) + k];
        fc_b.fill(0.0);
        ops::add_col_sums(&sc.delta[..nk], k, fc_b);
        let fc_w = at(h.fc_w)..at(h.fc_w) + k * k;
        match h.proj {
            None => {
                if i > 0 {
                    let w = &opt.params[fc_w.clone()];
                    ops::matmul_nn(n, k, k, &sc.delta, w, &mut sc.d_next, true);
                }
                let (delta, packed) = (&sc.delta[..nk], &mut sc.packed);
                opt.update_weight(fc_w.start, n, k, h.din, delta, input, packed);
                if i > 0 {
                    std::mem::swap(&mut sc.d_cur, &mut sc.d_next);
                }
            }
            Some(_) => {
                let w = &opt.params[fc_w.clone()];
                ops::matmul_nn(n, k, k, &sc.delta, w, &mut sc.tmp, false);
                let (delta, packed) = (&sc.delta[..nk], &mut sc.packed);
                opt.update_weight(fc_w.start, n, k, k, delta, &hb.g[..nk], packed);
                // d_next ← dp, for `update_projection`.
                ops::gelu_backward_add(&sc.tmp[..nk], &hb.kept.dgelu[..nk], &mut sc.d_next[..nk]);
            }
        }
        // fc.bias, layer_norm.weight and layer_norm.bias follow fc.weight in the layout.
        opt.update(at(h.fc_b)..at(h.ln_b) + k);
    }
}

/// The flat offsets of the text projection's weight and bias, and its input width.
fn projection(layout: &Layout) -> (usize, usize, usize) {
    let h = &layout.text[0];
    let (pw, pb) = h
        .proj
        .expect("the text tower starts with the projection head");
    (pw, pb, h.din)
}

/// The text tower's projection Linear, p = b + x Wᵀ, into its first head's `a`. It runs on
/// its own, on all threads, before the rest of both towers side by side: those are two
/// chains of small products that balance each other, one per core.
fn project(buf: &mut TowerBuf, layout: &Layout, params: &[f32], x: &[f32], n: usize) {
    let (k, (pw, pb, d)) = (layout.k, projection(layout));
    let w = &params[pw..pw + k * d];
    ops::linear_forward(n, k, d, x, w, &params[pb..pb + k], &mut buf.heads[0].a);
}

/// AdamW on the text projection's weight and bias from dp (left in `sc.d_next` by `backward`):
/// like `project`, on all threads once both towers' backward passes are done.
fn update_projection(opt: &mut Opt, sc: &mut Scratch, layout: &Layout, x: &[f32], n: usize) {
    let (k, (pw, pb, d)) = (layout.k, projection(layout));
    let (dp, packed) = (&sc.d_next[..n * k], &mut sc.packed);
    opt.update_weight(pw, n, k, d, dp, x, packed);
    let pb = pb..pb + k;
    opt.grads[pb.clone()].fill(0.0);
    ops::add_col_sums(dp, k, &mut opt.grads[pb.clone()]);
    opt.update(pb);
}

/// Forward of one tower on `x` (n × din, already L2-normalised) into `buf`; `train` keeps
/// what the backward pass needs. The text tower's projection must have run first (`project`).
#[allow(clippy::too_many_arguments)]
fn forward(
    buf: &mut TowerBuf,
    layout: &Layout,
    params: &[f32],
    tower: Tower,
    x: &[f32],
    n: usize,
    drops: &Dropouts,
    train: bool,
) {
    let k = layout.k;
    let heads = layout.tower(tower);
    let nk = n * k;
    for (i, h) in heads.iter().enumerate() {
        let (done, rest) = buf.heads.split_at_mut(i);
        let hb = &mut rest[0];
        let input: &[f32] = if i == 0 { x } else { &done[i - 1].kept.y[..nk] };
        let drop = drops[tower.site(i)];
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
                    hb.kept.rows(n, k),
                    train,
                );
            }
            Some(_) => {
                // hb.a holds p (`project`).
                ops::gelu_forward(&hb.a[..nk], &mut hb.g[..nk], &mut hb.kept.dgelu, train);
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
                ops::residual_ln_forward(&hb.a, &hb.a2, k, drop, gamma, beta, hb.kept.rows(n, k));
            }
        }
    }
    let norms = ops::l2_normalize_rows(&buf.heads[2].kept.y[..nk], k, &mut buf.out[..nk]);
    buf.norms[..n].copy_from_slice(&norms);
}
