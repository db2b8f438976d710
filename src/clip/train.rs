//! The one CLIP training loop, over an [`Engine`] that holds the models' weights and runs their
//! steps: the CPU's (`cpu`, one model at a time) or CUDA's (`cuda`, many at once). Written once
//! here: batches (shuffled every epoch, the last partial one kept), the dropout streams and
//! AdamW step counters, the check that every batch's loss is finite, the validation loss and
//! early stopping keeping the best weights, the checkpoints (`state`) and resuming from them,
//! and the progress bar.
//!
//! Everything random is a pure function of (seed, model id, epoch or optimizer step): the
//! shuffle of an epoch and the dropout masks of a step (`ops::Dropout`). A resumed run, and
//! either engine, therefore draw exactly what an uninterrupted run draws.

use super::data::Pairs;
use super::model::Clip;
use super::ops::{Dropout, Dropouts, NO_DROPOUT};
use super::state::ModelState;
use crate::error::{Error, Result};
use crate::rng::{mix64, SplitMix64};
use std::path::PathBuf;
use std::time::{Duration, Instant};

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
    /// Checkpoints are written at the end of the first epoch this long after the last ones
    /// (zero: every epoch), and when training ends.
    pub checkpoint_every: Duration,
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
            checkpoint_every: Duration::from_secs(60),
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
    pub fn key(
        &self,
        pairs: &Pairs,
        cfg: &TrainConfig,
        augment: Option<&dyn EpochImages>,
    ) -> String {
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
            "n={} d={} k={} data={data:016x} init={init:016x} model={} train={:016x} val={:016x} batch={} lr={} wd={} dropout={} patience={} seed={} shuffle={}{}",
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
            cfg.shuffle,
            augment.map_or(String::new(), |a| format!(" augment={}", a.key()))
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
    fn from_state(init: &Clip, st: &ModelState, has_val: bool, batch_losses: Vec<f32>) -> Outcome {
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

    /// A bar over every batch of `jobs`, all epochs, stopping as `cfg` says.
    pub fn of_jobs(cfg: &TrainConfig, jobs: &[Job]) -> Progress {
        let total = jobs
            .iter()
            .map(|j| (cfg.epochs * n_batches(j.train.len(), cfg.batch)) as u64)
            .sum();
        Progress::new(total, cfg.stop_after_batches, true)
    }

    /// Counts a trained batch; the error of `--stop-after-batches` once that many are done.
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
fn n_batches(rows: usize, batch: usize) -> usize {
    rows.div_ceil(batch)
}

/// The end of an epoch: record its losses, early-stopping bookkeeping. Returns whether this
/// epoch's weights are the new best (the caller keeps them: `Engine::keep_best`).
fn finish_epoch(
    st: &mut ModelState,
    cfg: &TrainConfig,
    train_loss: f32,
    val_loss: Option<f32>,
) -> bool {
    st.epoch += 1;
    st.train_loss.push(train_loss);
    let improved = match val_loss {
        Some(v) => {
            st.val_loss.push(v);
            if v < st.best_val {
                st.best_val = v;
                st.best_epoch = st.epoch;
                st.bad_epochs = 0;
                true
            } else {
                st.bad_epochs += 1;
                if st.bad_epochs >= cfg.patience {
                    st.done = true;
                }
                false
            }
        }
        None => {
            st.best_epoch = st.epoch;
            true
        }
    };
    if st.epoch >= cfg.epochs {
        st.done = true;
    }
    improved
}

/// One model's part of a training step.
#[derive(Clone, Copy)]
pub struct Batch<'a> {
    /// Rows of the pairs; empty when the model sits this step out (it stopped early, or its
    /// epoch has fewer batches than another model's).
    pub rows: &'a [usize],
    /// The rows of its next batch in this epoch (empty after the last), which an engine may
    /// gather while this one trains.
    pub next: &'a [usize],
    pub drops: Dropouts,
    /// The AdamW step, 1-based.
    pub t: u64,
}

/// Where models train: it holds the weights of up to `capacity` models (slots) between
/// `upload` and `download`, and runs their steps together.
pub trait Engine {
    /// How many models it trains at once.
    fn capacity(&self) -> usize;
    /// Loads slot `slot` with a model's parameters, AdamW moments and best weights.
    fn upload(&mut self, slot: usize, st: &ModelState) -> Result<()>;
    /// One training step (dropout on, then AdamW) of every slot with rows in its batch; the
    /// loss of each slot's batch (anything for slots without rows).
    fn step(&mut self, batches: &[Batch]) -> Result<Vec<f32>>;
    /// The loss of each slot's batch `rows[slot]` in eval mode (no dropout, no update).
    fn eval(&mut self, rows: &[&[usize]]) -> Result<Vec<f32>>;
    /// Keeps slot `slot`'s current parameters as its best.
    fn keep_best(&mut self, slot: usize) -> Result<()>;
    /// Copies slot `slot`'s best weights into `st`, and unless `st.done` its parameters and
    /// moments too.
    fn download(&mut self, slot: usize, st: &mut ModelState) -> Result<()>;
    /// The image features `step` trains on from now on (n × k, rows as the pairs'); `eval`
    /// keeps the pairs' own, so validation and test stay un-augmented.
    fn set_train_images(&mut self, images: &[f32]) -> Result<()>;
}

/// Checks that drawn training images have the pairs' shape (an engine's `set_train_images`).
pub fn check_train_images(pairs: &Pairs, images: &[f32]) -> Result<()> {
    if images.len() == pairs.n * pairs.k {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "augmented image features hold {} values, the {} pairs × {} features need {}",
        images.len(),
        pairs.n,
        pairs.k,
        pairs.n * pairs.k
    )))
}

/// Image features drawn anew for every epoch (training-time augmentation): a pure function of
/// the epoch, so a resumed run draws the same ones.
pub trait EpochImages: Sync {
    /// Names the draw: part of the checkpoint key, so a run resumes only with the same one.
    fn key(&self) -> String;
    /// The training image features of `epoch` (0-based), n × k, rows L2-normalised.
    fn images(&self, epoch: usize) -> Result<Vec<f32>>;
}

/// Trains every job (resuming from their checkpoints when `resume`), in groups of as many as
/// an engine holds: `engine(n)` makes one for up to n models. With `augment`, each epoch
/// trains on the image features it draws for that epoch.
pub fn train<'e>(
    pairs: &Pairs,
    cfg: &TrainConfig,
    jobs: &[Job],
    resume: bool,
    augment: Option<&dyn EpochImages>,
    progress: &mut Progress,
    engine: &mut dyn FnMut(usize) -> Result<Box<dyn Engine + 'e>>,
) -> Result<Vec<Outcome>> {
    cfg.check()?;
    for j in jobs {
        let l = &j.init.layout;
        if l.d != pairs.d || l.k != pairs.k {
            return Err(Error::Usage(format!(
                "the initial model takes text width {} and image width {}, the data has {} and {}",
                l.d, l.k, pairs.d, pairs.k
            )));
        }
    }
    let mut out = Vec::with_capacity(jobs.len());
    let mut rest = jobs;
    while !rest.is_empty() {
        let mut e = engine(rest.len())?;
        let (group, tail) = rest.split_at(e.capacity().clamp(1, rest.len()));
        let g = Group::start(e.as_mut(), pairs, cfg, group, resume, augment, progress)?;
        out.extend(g.run()?);
        rest = tail;
    }
    Ok(out)
}

/// The models an engine trains together, and their states (whose weights the engine holds).
struct Group<'a, 'e> {
    engine: &'a mut (dyn Engine + 'e),
    cfg: &'a TrainConfig,
    jobs: &'a [Job],
    augment: Option<&'a dyn EpochImages>,
    progress: &'a mut Progress,
    /// The checkpoint key of each job that has a checkpoint.
    keys: Vec<Option<String>>,
    states: Vec<ModelState>,
    batch_losses: Vec<Vec<f32>>,
    last_checkpoint: Instant,
}

impl<'a, 'e> Group<'a, 'e> {
    /// Each job's state, fresh or resumed, uploaded to the engine.
    fn start(
        engine: &'a mut (dyn Engine + 'e),
        pairs: &'a Pairs,
        cfg: &'a TrainConfig,
        jobs: &'a [Job],
        resume: bool,
        augment: Option<&'a dyn EpochImages>,
        progress: &'a mut Progress,
    ) -> Result<Self> {
        // Hashing the data takes a pass over it: only for the jobs with a checkpoint.
        let keys: Vec<Option<String>> = jobs
            .iter()
            .map(|j| j.checkpoint.as_ref().map(|_| j.key(pairs, cfg, augment)))
            .collect();
        let mut states = Vec::with_capacity(jobs.len());
        for (slot, j) in jobs.iter().enumerate() {
            let mut st = j.start(keys[slot].as_deref(), resume)?;
            if st.epoch >= cfg.epochs {
                st.done = true;
            }
            let skip = st.epoch.min(cfg.epochs) * n_batches(j.train.len(), cfg.batch);
            progress.bar.inc(skip as u64);
            engine.upload(slot, &st)?;
            // The engine holds the weights from here on; the state keeps the counters.
            for v in [&mut st.params, &mut st.m, &mut st.v, &mut st.best] {
                *v = Vec::new();
            }
            states.push(st);
        }
        Ok(Group {
            engine,
            cfg,
            jobs,
            augment,
            progress,
            keys,
            states,
            batch_losses: vec![Vec::new(); jobs.len()],
            last_checkpoint: Instant::now(),
        })
    }

    /// Epochs until every model is done; each model's outcome.
    fn run(mut self) -> Result<Vec<Outcome>> {
        while self.states.iter().any(|s| !s.done) {
            let train_loss = self.train_epoch()?;
            let val_loss = self.val_loss()?;
            for (slot, (t, v)) in train_loss.into_iter().zip(val_loss).enumerate() {
                if self.states[slot].done {
                    continue;
                }
                if finish_epoch(&mut self.states[slot], self.cfg, t, v) {
                    self.engine.keep_best(slot)?;
                }
                if self.jobs.len() == 1 {
                    let msg = v.map_or(String::new(), |v| format!(" val {v:.4}"));
                    let e = self.states[slot].epoch;
                    self.progress
                        .bar
                        .set_message(format!("epoch {e} loss {t:.4}{msg}"));
                }
            }
            self.checkpoint()?;
        }
        let mut out = Vec::with_capacity(self.jobs.len());
        for (slot, j) in self.jobs.iter().enumerate() {
            let st = &mut self.states[slot];
            self.engine.download(slot, st)?;
            let losses = std::mem::take(&mut self.batch_losses[slot]);
            out.push(Outcome::from_state(&j.init, st, j.val.is_some(), losses));
        }
        Ok(out)
    }

    /// One epoch of every model not done yet (the others sit it out): the mean of each one's
    /// batch losses.
    fn train_epoch(&mut self) -> Result<Vec<f32>> {
        let (cfg, b) = (self.cfg, self.cfg.batch);
        self.draw_images()?;
        let orders: Vec<Vec<usize>> = self
            .jobs
            .iter()
            .zip(&self.states)
            .map(|(j, s)| match s.done {
                true => Vec::new(),
                false => epoch_order(&j.train, cfg.shuffle, cfg.seed, j.model_id, s.epoch),
            })
            .collect();
        let steps = orders.iter().map(|o| n_batches(o.len(), b)).max();
        let mut sums = vec![0.0f64; self.jobs.len()];
        for s in 0..steps.unwrap_or(0) {
            let batches: Vec<Batch> = orders
                .iter()
                .zip(self.jobs.iter().zip(&mut self.states))
                .map(|(order, (j, st))| {
                    let rows = chunk(order, s, b);
                    if rows.is_empty() {
                        return Batch {
                            rows,
                            next: &[],
                            drops: NO_DROPOUT,
                            t: st.step,
                        };
                    }
                    let drops = cfg.dropouts(j.model_id, st.step);
                    st.step += 1;
                    let next = chunk(order, s + 1, b);
                    Batch {
                        rows,
                        next,
                        drops,
                        t: st.step,
                    }
                })
                .collect();
            let losses = self.engine.step(&batches)?;
            for (slot, (batch, loss)) in batches.iter().zip(losses).enumerate() {
                if batch.rows.is_empty() {
                    continue;
                }
                if !loss.is_finite() {
                    return Err(Error::Usage(format!(
                        "the training loss became {loss} at epoch {} (model {}); lower --lr",
                        self.states[slot].epoch + 1,
                        self.jobs[slot].model_id
                    )));
                }
                sums[slot] += loss as f64;
                self.batch_losses[slot].push(loss);
                self.progress.batch()?;
            }
        }
        Ok(sums
            .iter()
            .zip(&orders)
            .map(|(s, o)| (s / n_batches(o.len(), b).max(1) as f64) as f32)
            .collect())
    }

    /// With augmentation, hands the engine this epoch's image features. The models of a group
    /// that are not done share their epoch (they started and checkpoint together).
    fn draw_images(&mut self) -> Result<()> {
        let Some(aug) = self.augment else {
            return Ok(());
        };
        let Some(st) = self.states.iter().find(|s| !s.done) else {
            return Ok(());
        };
        let images = aug.images(st.epoch)?;
        self.engine.set_train_images(&images)
    }

    /// The validation loss of every model not done that has validation rows: the mean of its
    /// batch losses in eval mode, batches in order.
    fn val_loss(&mut self) -> Result<Vec<Option<f32>>> {
        let b = self.cfg.batch;
        let val: Vec<&[usize]> = self
            .jobs
            .iter()
            .zip(&self.states)
            .map(|(j, s)| match (&j.val, s.done) {
                (Some(v), false) => v.as_slice(),
                _ => &[],
            })
            .collect();
        let steps = val.iter().map(|v| n_batches(v.len(), b)).max();
        let mut sums = vec![0.0f64; self.jobs.len()];
        for s in 0..steps.unwrap_or(0) {
            let rows: Vec<&[usize]> = val.iter().map(|v| chunk(v, s, b)).collect();
            let losses = self.engine.eval(&rows)?;
            for ((sum, r), loss) in sums.iter_mut().zip(&rows).zip(losses) {
                if !r.is_empty() {
                    *sum += loss as f64;
                }
            }
        }
        Ok(self
            .jobs
            .iter()
            .zip(sums)
            .map(|(j, s)| {
                let n = j.val.as_ref()?.len();
                Some((s / n_batches(n, b).max(1) as f64) as f32)
            })
            .collect())
    }

    /// Writes the checkpoints of the group's jobs when they are due: `checkpoint_every` after
    /// the last ones, when every model is done, and every epoch under `--stop-after-batches`.
    fn checkpoint(&mut self) -> Result<()> {
        let due = self.last_checkpoint.elapsed() >= self.cfg.checkpoint_every
            || self.states.iter().all(|s| s.done)
            || self.cfg.stop_after_batches.is_some();
        if !due {
            return Ok(());
        }
        for (slot, j) in self.jobs.iter().enumerate() {
            if let (Some(path), Some(key)) = (&j.checkpoint, &self.keys[slot]) {
                let mut st = self.states[slot].clone();
                self.engine.download(slot, &mut st)?;
                st.save(path, &j.init.layout, key)?;
            }
        }
        self.last_checkpoint = Instant::now();
        Ok(())
    }
}

/// Batch `s` of `rows` in batches of `b` (empty past the end).
fn chunk(rows: &[usize], s: usize, b: usize) -> &[usize] {
    rows.get(s * b..((s + 1) * b).min(rows.len()))
        .unwrap_or(&[])
}
