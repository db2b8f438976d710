//! `niclip train` without `--cv` as one workflow (`run`): one model on all the training pairs,
//! early-stopped on validation pairs when given (joined after the training pairs); and
//! `train_jobs`, any set of jobs trained on a device behind one progress bar.

use super::data::Pairs;
use super::metrics::{write_metrics, Retrieval, Row};
use super::train::{EpochImages, Job, Outcome, Progress, TrainConfig};
use super::Clip;
use crate::device::Device;
use crate::error::{Error, Result};
use std::path::Path;

/// Trains `jobs` on `device` (resuming from their checkpoints when `resume`; on the image
/// features `augment` draws per epoch when given), with a progress bar over all their batches.
pub fn train_jobs(
    pairs: &Pairs,
    cfg: &TrainConfig,
    jobs: &[Job],
    resume: bool,
    augment: Option<&dyn EpochImages>,
    device: &Device,
) -> Result<Vec<Outcome>> {
    let mut progress = Progress::of_jobs(cfg, jobs);
    let out = device.train_clip(pairs, cfg, jobs, resume, augment, &mut progress)?;
    progress.bar.finish_and_clear();
    Ok(out)
}

/// The training pairs, then the validation pairs (read from `val_path`), as one set; and the
/// rows of the validation pairs in it.
pub fn join_val(train: Pairs, val: Pairs, val_path: &Path) -> Result<(Pairs, Vec<usize>)> {
    if val.d != train.d || val.k != train.k {
        return Err(Error::input(
            val_path,
            format!(
                "validation widths {}/{} differ from the training data's {}/{}",
                val.d, val.k, train.d, train.k
            ),
        ));
    }
    let n = train.n;
    let joined = Pairs {
        text: [train.text.as_slice(), val.text.as_slice()].concat(),
        images: [train.images.as_slice(), val.images.as_slice()].concat(),
        n: n + val.n,
        d: train.d,
        k: train.k,
        ids: None,
    };
    Ok((joined, (n..n + val.n).collect()))
}

/// What `run` gives back.
pub struct Fit {
    pub outcome: Outcome,
    /// How many pairs it trained on.
    pub trained_on: usize,
    /// Its retrieval metrics on the validation pairs, if any.
    pub val: Option<Retrieval>,
}

/// Trains one model (model id 0) on `pairs`, from `init` or a fresh one of seed `cfg.seed`,
/// early-stopped on `val` (the pairs and the file they came from) when given; its checkpoint
/// at `checkpoint` (resumed when `resume`). With `augment` (whose rows are `pairs`'), every
/// epoch trains on the image features it draws.
#[allow(clippy::too_many_arguments)]
pub fn run(
    pairs: Pairs,
    val: Option<(Pairs, &Path)>,
    cfg: &TrainConfig,
    init: Option<Clip>,
    checkpoint: &Path,
    resume: bool,
    augment: Option<&dyn EpochImages>,
    device: &Device,
) -> Result<Fit> {
    let n = pairs.n;
    let (data, val_rows) = match val {
        Some((v, path)) => {
            let (joined, rows) = join_val(pairs, v, path)?;
            (joined, Some(rows))
        }
        None => (pairs, None),
    };
    let job = Job {
        model_id: 0,
        train: (0..n).collect(),
        val: val_rows,
        init: init.unwrap_or_else(|| Clip::init(data.d, data.k, cfg.seed)),
        checkpoint: Some(checkpoint.to_path_buf()),
    };
    // The validation rows follow the training rows and are never augmented.
    let tail = &data.images[n * data.k..];
    let padded = augment.map(|inner| WithTail { inner, tail });
    let augment = padded.as_ref().map(|p| p as &dyn EpochImages);
    let jobs = std::slice::from_ref(&job);
    let outcome = train_jobs(&data, cfg, jobs, resume, augment, device)?.remove(0);
    let val = job
        .val
        .as_ref()
        .map(|rows| outcome.model.retrieval(&data, rows));
    Ok(Fit {
        outcome,
        trained_on: n,
        val,
    })
}

/// Drawn image features followed by fixed rows (the validation pairs').
struct WithTail<'a> {
    inner: &'a dyn EpochImages,
    tail: &'a [f32],
}

impl EpochImages for WithTail<'_> {
    fn key(&self) -> String {
        self.inner.key()
    }

    fn images(&self, epoch: usize) -> Result<Vec<f32>> {
        let mut images = self.inner.images(epoch)?;
        images.extend_from_slice(self.tail);
        Ok(images)
    }
}

impl Fit {
    /// The metrics CSV: the training loss of each epoch, the validation loss of each epoch and
    /// the validation pairs' retrieval metrics.
    pub fn write_metrics(&self, path: &Path) -> Result<()> {
        let epochs = |split: &str, losses: &[f32]| -> Vec<Row> {
            let row = |(e, l): (usize, &f32)| {
                let metric = format!("loss_epoch_{}", e + 1);
                ("all".to_string(), split.to_string(), metric, *l as f64)
            };
            losses.iter().enumerate().map(row).collect()
        };
        let mut rows = epochs("train", &self.outcome.train_loss);
        rows.extend(epochs("validation", &self.outcome.val_loss));
        if let Some(r) = &self.val {
            rows.extend(r.rows("all", "validation"));
        }
        write_metrics(path, &rows)
    }
}
