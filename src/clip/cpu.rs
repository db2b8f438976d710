//! The CPU engine: one model at a time, through `engine::Workspace` (its forward and backward
//! passes with AdamW fused in). The rows of the next batch are gathered on the other side of a
//! `rayon::join` while a step trains (worth about 3 % of an epoch).

use super::adamw::AdamW;
use super::data::Pairs;
use super::engine::Workspace;
use super::layout::Layout;
use super::ops::NO_DROPOUT;
use super::state::ModelState;
use super::train::{check_train_images, Batch, Engine, TrainConfig};
use crate::error::Result;

pub struct CpuEngine<'a> {
    pairs: &'a Pairs,
    layout: Layout,
    lr: f32,
    wd: f32,
    ws: Workspace,
    params: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    best: Vec<f32>,
    /// Gradients of the tensors whose AdamW is not fused with their product.
    grads: Vec<f32>,
    /// Image features `step` trains on instead of the pairs' own (augmentation), n × k.
    train_images: Option<Vec<f32>>,
    /// The batch that `step` trains: its rows, when they are already gathered into xt / xi
    /// (from `train_images` when `gathered_for_step`).
    gathered: Vec<usize>,
    gathered_for_step: bool,
    xt: Vec<f32>,
    xi: Vec<f32>,
    /// Where the next batch is gathered while this one trains.
    next_xt: Vec<f32>,
    next_xi: Vec<f32>,
}

impl<'a> CpuEngine<'a> {
    /// An engine for models of `layout` on `pairs`, batches of `cfg.batch`.
    pub fn new(pairs: &'a Pairs, layout: &Layout, cfg: &TrainConfig) -> CpuEngine<'a> {
        let b = cfg.batch;
        let (xt, xi) = (vec![0.0f32; b * pairs.d], vec![0.0f32; b * pairs.k]);
        CpuEngine {
            pairs,
            layout: layout.clone(),
            lr: cfg.lr,
            wd: cfg.weight_decay,
            ws: Workspace::new(layout, b),
            params: Vec::new(),
            m: Vec::new(),
            v: Vec::new(),
            best: Vec::new(),
            grads: vec![0.0f32; layout.len],
            train_images: None,
            gathered: Vec::new(),
            gathered_for_step: false,
            next_xt: xt.clone(),
            next_xi: xi.clone(),
            xt,
            xi,
        }
    }

    /// xt / xi ← the rows `rows` (their training images when `for_step`), unless they hold
    /// them already.
    fn gather(&mut self, rows: &[usize], for_step: bool) {
        if self.gathered != rows || self.gathered_for_step != for_step {
            let images = match (&self.train_images, for_step) {
                (Some(t), true) => t.as_slice(),
                _ => &self.pairs.images,
            };
            self.pairs
                .gather_with(images, rows, &mut self.xt, &mut self.xi);
            self.gathered.clear();
            self.gathered.extend_from_slice(rows);
            self.gathered_for_step = for_step;
        }
    }
}

impl Engine for CpuEngine<'_> {
    fn capacity(&self) -> usize {
        1
    }

    fn upload(&mut self, _slot: usize, st: &ModelState) -> Result<()> {
        self.params.clone_from(&st.params);
        self.m.clone_from(&st.m);
        self.v.clone_from(&st.v);
        self.best.clone_from(&st.best);
        Ok(())
    }

    fn step(&mut self, batches: &[Batch]) -> Result<Vec<f32>> {
        let Batch {
            rows,
            next,
            drops,
            t,
        } = batches[0];
        if rows.is_empty() {
            return Ok(vec![0.0]);
        }
        self.gather(rows, true);
        let (n, d, k) = (rows.len(), self.pairs.d, self.pairs.k);
        let CpuEngine {
            pairs,
            train_images,
            layout,
            ws,
            params,
            m,
            v,
            grads,
            xt,
            xi,
            next_xt,
            next_xi,
            ..
        } = self;
        let adam = AdamW {
            m,
            v,
            t,
            lr: self.lr,
            wd: self.wd,
        };
        let (xt_n, xi_n) = (&xt[..n * d], &xi[..n * k]);
        let (loss, ()) = rayon::join(
            || ws.train_step(layout, params, grads, adam, xt_n, xi_n, n, &drops),
            || {
                if !next.is_empty() {
                    let images = train_images.as_deref().unwrap_or(&pairs.images);
                    pairs.gather_with(images, next, next_xt, next_xi);
                }
            },
        );
        std::mem::swap(xt, next_xt);
        std::mem::swap(xi, next_xi);
        self.gathered.clear();
        self.gathered.extend_from_slice(next);
        self.gathered_for_step = true;
        Ok(vec![loss])
    }

    fn eval(&mut self, rows: &[&[usize]]) -> Result<Vec<f32>> {
        let rows = rows[0];
        if rows.is_empty() {
            return Ok(vec![0.0]);
        }
        self.gather(rows, false);
        let (n, d, k) = (rows.len(), self.pairs.d, self.pairs.k);
        let (xt, xi) = (&self.xt[..n * d], &self.xi[..n * k]);
        let loss = (self.ws).loss(&self.layout, &self.params, xt, xi, n, &NO_DROPOUT);
        Ok(vec![loss])
    }

    fn keep_best(&mut self, _slot: usize) -> Result<()> {
        self.best.copy_from_slice(&self.params);
        Ok(())
    }

    fn set_train_images(&mut self, images: &[f32]) -> Result<()> {
        check_train_images(self.pairs, images)?;
        self.train_images = Some(images.to_vec());
        self.gathered.clear();
        Ok(())
    }

    fn download(&mut self, _slot: usize, st: &mut ModelState) -> Result<()> {
        st.best.clone_from(&self.best);
        if !st.done {
            st.params.clone_from(&self.params);
            st.m.clone_from(&self.m);
            st.v.clone_from(&self.v);
        }
        Ok(())
    }
}
