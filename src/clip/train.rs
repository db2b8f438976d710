//! Training of one model on the CPU: batches (shuffled every epoch, the last partial one kept),
//! AdamW as PyTorch's, early stopping on the validation loss keeping the best weights, and a
//! checkpoint written atomically after every epoch so that an interrupted run resumes from the
//! last finished epoch with the very same result.
//!
//! Everything random is a pure function of (seed, model id, epoch or optimizer step): the
//! shuffle of an epoch and the dropout masks of a step (`ops::Dropout`). A resumed run, and the
//! CUDA trainer, therefore draw exactly what an uninterrupted CPU run draws.

use super::data::Pairs;
use super::engine::{AdamW, Dropouts, Workspace, NO_DROPOUT};
use super::model::{safetensors_bytes, Clip, Layout};
use super::ops::{self, Dropout};
use crate::error::{Error, Result};
use crate::rng::{mix64, SplitMix64};
use rayon::prelude::*;
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};

/// Hyper-parameters (defaults: the paper's).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch: usize,
    pub lr: f32,
    pub weight_decay: f32,
    pub dropout: f32,
    pub patience: usize,
    pub seed: u64,
    pub shuffle: bool,
    /// Stop with an error after this many batches in this process (tests of `--resume`).
    pub stop_after_batches: Option<u64>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 50,
            batch: 128,
            lr: 5e-4,
            weight_decay: 0.1,
            dropout: 0.5,
            patience: 10,
            seed: 0,
            shuffle: true,
            stop_after_batches: None,
        }
    }
}

impl TrainConfig {
    pub fn check(&self) -> Result<()> {
        if self.batch == 0 {
            return Err(Error::Usage("--batch must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Usage(format!(
                "--dropout must be in [0, 1), got {}",
                self.dropout
            )));
        }
        let lr_ok = self.lr > 0.0 && self.lr.is_finite();
        let wd_ok = self.weight_decay >= 0.0 && self.weight_decay.is_finite();
        if !lr_ok || !wd_ok {
            return Err(Error::Usage(
                "--lr must be positive and --weight-decay non-negative".into(),
            ));
        }
        Ok(())
    }

    /// The dropout masks of optimizer step `step` of model `model`.
    pub fn dropouts(&self, model: u64, step: u64) -> Dropouts {
        if self.dropout <= 0.0 {
            return NO_DROPOUT;
        }
        std::array::from_fn(|site| Dropout::new(self.dropout, self.seed, model, step, site as u64))
    }
}

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

/// The training rows of an epoch: in order, or a Fisher–Yates shuffle drawn from
/// (seed, model, epoch).
pub fn epoch_order(
    train: &[usize],
    shuffle: bool,
    seed: u64,
    model: u64,
    epoch: usize,
) -> Vec<usize> {
    let mut order = train.to_vec();
    if shuffle {
        let mut rng = SplitMix64(
            mix64(seed ^ 0xA076_1D64_78BD_642F)
                ^ mix64(model.wrapping_mul(0xE703_7ED1_A0B4_28DB) ^ epoch as u64),
        );
        for i in (1..order.len()).rev() {
            let j = rng.below(i + 1);
            order.swap(i, j);
        }
    }
    order
}

/// Everything a model's training needs to continue: parameters, Adam moments, the best
/// weights so far and the early-stopping counters.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelState {
    pub params: Vec<f32>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub best: Vec<f32>,
    /// Epochs finished.
    pub epoch: usize,
    /// AdamW steps taken.
    pub step: u64,
    pub best_val: f32,
    pub best_epoch: usize,
    pub bad_epochs: usize,
    /// Early-stopped or out of epochs.
    pub done: bool,
    pub train_loss: Vec<f32>,
    pub val_loss: Vec<f32>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StateMeta {
    job: String,
    epoch: usize,
    step: u64,
    best_val: f32,
    best_epoch: usize,
    bad_epochs: usize,
    done: bool,
    train_loss: Vec<f32>,
    val_loss: Vec<f32>,
}

impl ModelState {
    pub fn new(init: &Clip) -> ModelState {
        let n = init.params.len();
        ModelState {
            params: init.params.clone(),
            m: vec![0.0; n],
            v: vec![0.0; n],
            best: init.params.clone(),
            epoch: 0,
            step: 0,
            best_val: f32::INFINITY,
            best_epoch: 0,
            bad_epochs: 0,
            done: false,
            train_loss: Vec::new(),
            val_loss: Vec::new(),
        }
    }

    /// The checkpoint: `.safetensors` with param.*, adam_m.*, adam_v.*, best.* and the counters
    /// (and a key `job` naming the inputs and settings) as JSON metadata. A finished model keeps
    /// only its best weights.
    pub fn save(&self, path: &Path, layout: &Layout, job: &str) -> Result<()> {
        let meta = StateMeta {
            job: job.to_string(),
            epoch: self.epoch,
            step: self.step,
            best_val: self.best_val,
            best_epoch: self.best_epoch,
            bad_epochs: self.bad_epochs,
            done: self.done,
            train_loss: self.train_loss.clone(),
            val_loss: self.val_loss.clone(),
        };
        let json = serde_json::to_string(&meta)
            .map_err(|e| Error::Usage(format!("checkpoint metadata: {e}")))?;
        let sets: Vec<(&str, &[f32])> = if self.done {
            vec![("best.", &self.best)]
        } else {
            vec![
                ("param.", &self.params),
                ("adam_m.", &self.m),
                ("adam_v.", &self.v),
                ("best.", &self.best),
            ]
        };
        let bytes = safetensors_bytes(layout, &sets, Some(("niclip_train_state", json)))?;
        crate::io::write_atomic(path, |w| {
            std::io::Write::write_all(w, &bytes).map_err(|e| Error::io(path, e))
        })
    }

    /// Reads a checkpoint of the same job (else an error saying to delete it or drop --resume).
    pub fn load(path: &Path, layout: &Layout, job: &str) -> Result<ModelState> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let corrupt =
            |m: String| Error::input(path, format!("{m}; delete this checkpoint to start over"));
        let (_, header) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| corrupt(format!("unreadable checkpoint ({e})")))?;
        let json = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("niclip_train_state"))
            .ok_or_else(|| corrupt("not a niclip training checkpoint".into()))?;
        let meta: StateMeta = serde_json::from_str(json)
            .map_err(|e| corrupt(format!("bad checkpoint metadata ({e})")))?;
        if meta.job != job {
            return Err(Error::input(
                path,
                format!("this checkpoint is from a different job ({}), not ({job}); delete it, or run without --resume", meta.job),
            ));
        }
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| corrupt(format!("unreadable checkpoint ({e})")))?;
        let read = |prefix: &str| -> Result<Vec<f32>> {
            let mut out = vec![0.0f32; layout.len];
            for t in &layout.tensors {
                let name = format!("{prefix}{}", t.name);
                let v = st
                    .tensor(&name)
                    .map_err(|_| corrupt(format!("{name} is missing")))?;
                if v.shape() != t.shape.as_slice() || v.data().len() != 4 * t.len() {
                    return Err(corrupt(format!("{name} has the wrong shape")));
                }
                for (o, c) in out[t.offset..t.offset + t.len()]
                    .iter_mut()
                    .zip(v.data().chunks_exact(4))
                {
                    *o = f32::from_le_bytes(c.try_into().unwrap());
                }
            }
            Ok(out)
        };
        let best = read("best.")?;
        let (params, m, v) = if meta.done {
            (best.clone(), Vec::new(), Vec::new())
        } else {
            (read("param.")?, read("adam_m.")?, read("adam_v.")?)
        };
        Ok(ModelState {
            params,
            m,
            v,
            best,
            epoch: meta.epoch,
            step: meta.step,
            best_val: meta.best_val,
            best_epoch: meta.best_epoch,
            bad_epochs: meta.bad_epochs,
            done: meta.done,
            train_loss: meta.train_loss,
            val_loss: meta.val_loss,
        })
    }
}

/// One model to train: its id (for the random streams), rows of the pairs, initial weights
/// and where its checkpoint goes.
#[derive(Clone, Debug)]
pub struct Job {
    pub model_id: u64,
    pub train: Vec<usize>,
    pub val: Option<Vec<usize>>,
    pub init: Clip,
    pub checkpoint: Option<PathBuf>,
}

impl Job {
    /// What must agree for a checkpoint to be resumed: data shape, settings, the rows.
    pub fn key(&self, pairs: &Pairs, cfg: &TrainConfig) -> String {
        let rows = |r: &[usize]| {
            r.iter()
                .fold(0xcbf2_9ce4_8422_2325u64, |h, &i| mix64(h ^ i as u64))
        };
        let data = pairs
            .text
            .iter()
            .chain(&pairs.images)
            .step_by(97)
            .fold(0u64, |h, v| mix64(h ^ v.to_bits() as u64));
        let init = self
            .init
            .params
            .iter()
            .step_by(31)
            .fold(0u64, |h, v| mix64(h ^ v.to_bits() as u64));
        format!(
            "n={} d={} k={} data={data:016x} init={init:016x} model={} train={:016x} val={:016x} batch={} lr={} wd={} dropout={} patience={} seed={} shuffle={}",
            pairs.n,
            pairs.d,
            pairs.k,
            self.model_id,
            rows(&self.train),
            self.val.as_deref().map_or(0, rows),
            cfg.batch,
            cfg.lr,
            cfg.weight_decay,
            cfg.dropout,
            cfg.patience,
            cfg.seed,
            cfg.shuffle
        )
    }

    /// The saved state when resuming from an existing checkpoint (whose key must be `key`,
    /// this job's `key`), else a fresh one.
    pub fn start(&self, key: Option<&str>, resume: bool) -> Result<ModelState> {
        if let (true, Some(p), Some(key)) = (resume, &self.checkpoint, key) {
            if p.is_file() {
                let st = ModelState::load(p, &self.init.layout, key)?;
                eprintln!(
                    "resuming {} after epoch {}{}",
                    p.display(),
                    st.epoch,
                    if st.done { " (finished)" } else { "" }
                );
                return Ok(st);
            }
        }
        Ok(ModelState::new(&self.init))
    }
}

/// What training gives back.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The best weights by validation loss (the last ones without validation rows).
    pub model: Clip,
    pub best_val: Option<f32>,
    pub best_epoch: usize,
    pub epochs: usize,
    pub train_loss: Vec<f32>,
    pub val_loss: Vec<f32>,
    /// Loss of every batch trained in this call, in order.
    pub batch_losses: Vec<f32>,
}

impl Outcome {
    pub fn from_state(
        init: &Clip,
        st: &ModelState,
        has_val: bool,
        batch_losses: Vec<f32>,
    ) -> Outcome {
        Outcome {
            model: Clip {
                layout: init.layout.clone(),
                params: st.best.clone(),
            },
            best_val: has_val.then_some(st.best_val),
            best_epoch: st.best_epoch,
            epochs: st.epoch,
            train_loss: st.train_loss.clone(),
            val_loss: st.val_loss.clone(),
            batch_losses,
        }
    }
}

/// Counts batches across a process for `--stop-after-batches`, and drives the progress bar.
pub struct Progress {
    pub bar: indicatif::ProgressBar,
    pub done: u64,
    pub stop_after: Option<u64>,
}

impl Progress {
    pub fn new(total: u64, stop_after: Option<u64>, show: bool) -> Progress {
        let bar = if show {
            indicatif::ProgressBar::new(total)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} batches ({per_sec}, eta {eta}) {msg}",
            )
            .unwrap(),
        );
        Progress {
            bar,
            done: 0,
            stop_after,
        }
    }

    pub fn batch(&mut self) -> Result<()> {
        self.done += 1;
        self.bar.inc(1);
        if self.stop_after.is_some_and(|s| self.done >= s) {
            self.bar.abandon();
            return Err(Error::Usage(format!(
                "stopped after {} batches as asked (--stop-after-batches); rerun with --resume",
                self.done
            )));
        }
        Ok(())
    }
}

/// Number of batches of an epoch over `rows` rows.
pub fn n_batches(rows: usize, batch: usize) -> usize {
    rows.div_ceil(batch)
}

/// Mean of the batch losses (eval mode) over `rows`, in order, batches of `batch`.
pub fn eval_loss(
    pairs: &Pairs,
    model: &Clip,
    rows: &[usize],
    batch: usize,
    ws: &mut Workspace,
) -> f32 {
    let mut xt = vec![0.0f32; batch * pairs.d];
    let mut xi = vec![0.0f32; batch * pairs.k];
    let mut sum = 0.0f64;
    let mut count = 0;
    for chunk in rows.chunks(batch) {
        let n = chunk.len();
        pairs.gather(chunk, &mut xt, &mut xi);
        sum += ws.loss(
            &model.layout,
            &model.params,
            &xt[..n * pairs.d],
            &xi[..n * pairs.k],
            n,
            &NO_DROPOUT,
        ) as f64;
        count += 1;
    }
    (sum / count.max(1) as f64) as f32
}

/// The end of an epoch: record losses, early-stopping bookkeeping. Shared with the CUDA trainer.
pub fn finish_epoch(
    st: &mut ModelState,
    cfg: &TrainConfig,
    train_loss: f32,
    val_loss: Option<f32>,
) {
    st.epoch += 1;
    st.train_loss.push(train_loss);
    match val_loss {
        Some(v) => {
            st.val_loss.push(v);
            if v < st.best_val {
                st.best_val = v;
                st.best_epoch = st.epoch;
                st.best.copy_from_slice(&st.params);
                st.bad_epochs = 0;
            } else {
                st.bad_epochs += 1;
                if st.bad_epochs >= cfg.patience {
                    st.done = true;
                }
            }
        }
        None => {
            st.best.copy_from_slice(&st.params);
            st.best_epoch = st.epoch;
        }
    }
    if st.epoch >= cfg.epochs {
        st.done = true;
    }
}

/// Trains one model on the CPU (resuming from its checkpoint when `resume`).
pub fn train_cpu(
    pairs: &Pairs,
    cfg: &TrainConfig,
    job: &Job,
    resume: bool,
    progress: &mut Progress,
) -> Result<Outcome> {
    cfg.check()?;
    let layout = &job.init.layout;
    if layout.d != pairs.d || layout.k != pairs.k {
        return Err(Error::Usage(format!(
            "the initial model takes text width {} and image width {}, the data has {} and {}",
            layout.d, layout.k, pairs.d, pairs.k
        )));
    }
    // Hashing the data takes a pass over it: only for a checkpoint, which keeps the key.
    let key = job.checkpoint.as_ref().map(|_| job.key(pairs, cfg));
    let mut st = job.start(key.as_deref(), resume)?;
    let skip = (st.epoch.min(cfg.epochs) * n_batches(job.train.len(), cfg.batch)) as u64;
    progress.bar.inc(skip);
    let b = cfg.batch;
    let mut ws = Workspace::new(layout, b);
    let mut grads = vec![0.0f32; layout.len];
    // This batch's rows and the next one's, gathered while this one trains.
    let (mut xt, mut xi) = (vec![0.0f32; b * pairs.d], vec![0.0f32; b * pairs.k]);
    let (mut next_xt, mut next_xi) = (xt.clone(), xi.clone());
    let mut batch_losses = Vec::new();
    if st.epoch >= cfg.epochs {
        st.done = true;
    }
    while !st.done {
        let order = epoch_order(&job.train, cfg.shuffle, cfg.seed, job.model_id, st.epoch);
        let mut sum = 0.0f64;
        let mut chunks = order.chunks(b).peekable();
        if let Some(first) = chunks.peek() {
            pairs.gather(first, &mut xt, &mut xi);
        }
        while let Some(chunk) = chunks.next() {
            let n = chunk.len();
            let drops = cfg.dropouts(job.model_id, st.step);
            st.step += 1;
            let adam = AdamW {
                m: &mut st.m,
                v: &mut st.v,
                t: st.step,
                lr: cfg.lr,
                wd: cfg.weight_decay,
            };
            let next = chunks.peek();
            let (loss, ()) = rayon::join(
                || {
                    ws.train_step(
                        layout,
                        &mut st.params,
                        &mut grads,
                        adam,
                        &xt[..n * pairs.d],
                        &xi[..n * pairs.k],
                        n,
                        &drops,
                    )
                },
                || {
                    if let Some(next) = next {
                        pairs.gather(next, &mut next_xt, &mut next_xi);
                    }
                },
            );
            std::mem::swap(&mut xt, &mut next_xt);
            std::mem::swap(&mut xi, &mut next_xi);
            if !loss.is_finite() {
                return Err(Error::Usage(format!(
                    "the training loss became {loss} at epoch {}; lower --lr",
                    st.epoch + 1
                )));
            }
            sum += loss as f64;
            batch_losses.push(loss);
            progress.batch()?;
        }
        let train_loss = (sum / n_batches(order.len(), b).max(1) as f64) as f32;
        let val_loss = job.val.as_ref().map(|rows| {
            let m = Clip {
                layout: layout.clone(),
                params: st.params.clone(),
            };
            eval_loss(pairs, &m, rows, b, &mut ws)
        });
        finish_epoch(&mut st, cfg, train_loss, val_loss);
        progress.bar.set_message(format!(
            "epoch {} loss {train_loss:.4}{}",
            st.epoch,
            val_loss.map_or(String::new(), |v| format!(" val {v:.4}"))
        ));
        if let (Some(p), Some(key)) = (&job.checkpoint, &key) {
            st.save(p, layout, key)?;
        }
    }
    Ok(Outcome::from_state(
        &job.init,
        &st,
        job.val.is_some(),
        batch_losses,
    ))
}
