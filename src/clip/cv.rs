//! The paper's nested cross-validation as one workflow (`run`): its folds, as scikit-learn's
//! `KFold` without shuffling (k contiguous blocks, the first n % k of them one longer), one
//! model per (outer, inner) fold trained on the device, the inner model of lowest validation
//! loss kept per outer fold and scored on its test fold, and the report: a table and the
//! metrics CSV.

use super::data::Pairs;
use super::fit::train_jobs;
use super::metrics::{mean_sd, write_metrics, Retrieval, Row};
use super::train::{epoch_order, EpochImages, Job, Outcome, TrainConfig};
use super::Clip;
use crate::device::Device;
use crate::error::{Error, IoContext, Result};
use crate::rng::mix64;
use std::fmt::Write;
use std::ops::Range;
use std::path::Path;

/// The test blocks of `KFold(k)` over n items.
pub fn kfold(n: usize, k: usize) -> Vec<Range<usize>> {
    let base = n / k;
    let extra = n % k;
    let mut at = 0;
    (0..k)
        .map(|f| {
            let len = base + usize::from(f < extra);
            let r = at..at + len;
            at += len;
            r
        })
        .collect()
}

/// One model of the nested CV: trained on `train`, early-stopped on `val`; its outer fold's
/// test rows are `test`. Rows index the pairs.
#[derive(Clone, Debug)]
pub struct CvModel {
    pub outer: usize,
    pub inner: usize,
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    pub test: Vec<usize>,
}

/// The paper's nested CV over `order` (the pair rows, in corpus order or shuffled): outer
/// KFold(N // fold_size) for test, inner KFold(len(train_val) // fold_size) for validation.
/// `outer_limit` / `inner_limit` keep only the first folds.
pub fn nested(
    order: &[usize],
    fold_size: usize,
    outer_limit: Option<usize>,
    inner_limit: Option<usize>,
) -> Result<Vec<CvModel>> {
    let n = order.len();
    if fold_size == 0 {
        return Err(Error::Usage("--fold-size must be at least 1".into()));
    }
    if outer_limit == Some(0) || inner_limit == Some(0) {
        return Err(Error::Usage(
            "--outer-folds and --inner-folds must be at least 1".into(),
        ));
    }
    let n_outer = n / fold_size;
    if n_outer < 2 {
        return Err(Error::Usage(format!(
            "{n} pairs make {n_outer} outer folds of --fold-size {fold_size}; cross-validation needs at least 2 (use a smaller --fold-size)"
        )));
    }
    let mut models = Vec::new();
    for (o, test) in kfold(n, n_outer)
        .into_iter()
        .enumerate()
        .take(outer_limit.unwrap_or(usize::MAX))
    {
        let train_val: Vec<usize> = order[..test.start]
            .iter()
            .chain(&order[test.end..])
            .copied()
            .collect();
        let n_inner = train_val.len() / fold_size;
        if n_inner < 2 {
            return Err(Error::Usage(format!(
                "outer fold {o} leaves {} pairs for training and validation: {n_inner} inner folds of --fold-size {fold_size}; use a smaller --fold-size",
                train_val.len()
            )));
        }
        for (i, val) in kfold(train_val.len(), n_inner)
            .into_iter()
            .enumerate()
            .take(inner_limit.unwrap_or(usize::MAX))
        {
            models.push(CvModel {
                outer: o,
                inner: i,
                train: train_val[..val.start]
                    .iter()
                    .chain(&train_val[val.end..])
                    .copied()
                    .collect(),
                val: train_val[val].to_vec(),
                test: order[test.clone()].to_vec(),
            });
        }
    }
    Ok(models)
}

/// How the nested CV is run.
#[derive(Clone, Debug)]
pub struct CvOptions {
    pub fold_size: usize,
    pub outer_folds: Option<usize>,
    pub inner_folds: Option<usize>,
    /// Permute the pairs (from the seed) before cutting the folds.
    pub shuffle_folds: bool,
}

/// Test metrics of the model kept for one outer fold (the inner model of lowest validation loss).
#[derive(Clone, Debug)]
pub struct FoldResult {
    pub outer: usize,
    pub inner: usize,
    pub val_loss: f32,
    pub epochs: usize,
    pub test: Retrieval,
}

pub struct CvReport {
    pub folds: Vec<FoldResult>,
    /// The kept model of lowest validation loss over all outer folds.
    pub best: Clip,
}

/// The nested CV on `device`: one model per (outer, inner) fold, from `init` or each from its
/// own seed, checkpoints in `ckpt_dir` (one file per model; resumed when `resume`); trained on
/// the image features `augment` draws per epoch when given (validation and test rows are
/// scored on the pairs' own).
#[allow(clippy::too_many_arguments)]
pub fn run(
    pairs: &Pairs,
    cfg: &TrainConfig,
    opts: &CvOptions,
    init: Option<&Clip>,
    ckpt_dir: &Path,
    resume: bool,
    augment: Option<&dyn EpochImages>,
    device: &Device,
) -> Result<CvReport> {
    let (models, jobs) = cv_jobs(pairs, cfg, opts, init, Some(ckpt_dir))?;
    std::fs::create_dir_all(ckpt_dir).at(ckpt_dir)?;
    let n_outer = models.iter().map(|m| m.outer + 1).max().unwrap_or(0);
    eprintln!(
        "nested CV: {} models ({n_outer} outer folds) on {} pairs, {}",
        jobs.len(),
        pairs.n,
        device.name()
    );
    let outcomes = train_jobs(pairs, cfg, &jobs, resume, augment, device)?;
    Ok(select_and_score(pairs, &models, &outcomes))
}

/// The jobs of a nested CV: one model per (outer, inner) fold, each with its checkpoint in
/// `ckpt_dir`.
fn cv_jobs(
    pairs: &Pairs,
    cfg: &TrainConfig,
    opts: &CvOptions,
    init: Option<&Clip>,
    ckpt_dir: Option<&Path>,
) -> Result<(Vec<CvModel>, Vec<Job>)> {
    let mut order: Vec<usize> = (0..pairs.n).collect();
    if opts.shuffle_folds {
        order = epoch_order(&order, true, cfg.seed, u64::MAX, 0);
    }
    let models = nested(&order, opts.fold_size, opts.outer_folds, opts.inner_folds)?;
    let jobs = models
        .iter()
        .map(|m| {
            let id = ((m.outer as u64) << 16) | m.inner as u64;
            Job {
                model_id: id,
                train: m.train.clone(),
                val: Some(m.val.clone()),
                init: init.cloned().unwrap_or_else(|| {
                    let seed = mix64(cfg.seed ^ id.wrapping_mul(0x2545_F491_4F6C_DD1D));
                    Clip::init(pairs.d, pairs.k, seed)
                }),
                checkpoint: ckpt_dir.map(|d| {
                    d.join(format!(
                        "outer{:03}_inner{:03}.safetensors",
                        m.outer, m.inner
                    ))
                }),
            }
        })
        .collect();
    Ok((models, jobs))
}

/// Picks, per outer fold, the inner model of lowest validation loss and scores it on the test
/// fold (never choosing by test scores).
fn select_and_score(pairs: &Pairs, models: &[CvModel], outcomes: &[Outcome]) -> CvReport {
    let mut folds = Vec::new();
    let mut best: Option<(f32, usize)> = None;
    let val = |j: usize| outcomes[j].best_val.unwrap_or(f32::INFINITY);
    let n_outer = models.iter().map(|m| m.outer + 1).max().unwrap_or(0);
    for o in 0..n_outer {
        let Some(j) = (0..models.len())
            .filter(|&j| models[j].outer == o)
            .min_by(|&a, &b| val(a).total_cmp(&val(b)))
        else {
            continue;
        };
        let v = val(j);
        if best.is_none_or(|(bv, _)| v < bv) {
            best = Some((v, j));
        }
        folds.push(FoldResult {
            outer: o,
            inner: models[j].inner,
            val_loss: v,
            epochs: outcomes[j].epochs,
            test: outcomes[j].model.retrieval(pairs, &models[j].test),
        });
    }
    let best = best
        .map(|(_, j)| outcomes[j].model.clone())
        .expect("at least one CV model");
    CvReport { folds, best }
}

impl CvReport {
    /// Mean and population sd over the folds of each test metric, in `Retrieval::named` order.
    fn summary(&self) -> [(&'static str, (f64, f64)); 3] {
        std::array::from_fn(|i| {
            let values: Vec<f64> = self.folds.iter().map(|f| f.test.named()[i].1).collect();
            (Retrieval::NAMES[i], mean_sd(&values))
        })
    }

    /// The table `train --cv` prints: one line per outer fold, then the means ± sd.
    pub fn table(&self) -> String {
        let mut t =
            String::from("fold\tinner\tval_loss\tepochs\trecall@10\trecall@100\tmix_match\n");
        for f in &self.folds {
            let r = &f.test;
            let _ = writeln!(
                t,
                "{}\t{}\t{:.4}\t{}\t{:.4}\t{:.4}\t{:.2}",
                f.outer,
                f.inner,
                f.val_loss,
                f.epochs,
                r.recall_at_10,
                r.recall_at_100,
                r.mix_match
            );
        }
        let [(_, r10), (_, r100), (_, mm)] = self.summary();
        let _ = writeln!(
            t,
            "test (mean ± sd over {} folds): Recall@10 {:.4} ± {:.4}, Recall@100 {:.4} ± {:.4}, Mix&Match {:.2} ± {:.2}",
            self.folds.len(),
            r10.0,
            r10.1,
            r100.0,
            r100.1,
            mm.0,
            mm.1
        );
        t
    }

    /// The metrics CSV: per outer fold its validation loss, inner fold and test metrics, then
    /// the mean and sd of each test metric.
    pub fn write_metrics(&self, path: &Path) -> Result<()> {
        let mut rows: Vec<Row> = Vec::new();
        for f in &self.folds {
            let fold = f.outer.to_string();
            let val = |metric: &str, v: f64| (fold.clone(), "validation".into(), metric.into(), v);
            rows.push(val("loss", f.val_loss as f64));
            rows.push(val("inner_fold", f.inner as f64));
            rows.extend(f.test.rows(&fold, "test"));
        }
        for (name, (m, s)) in self.summary() {
            rows.push(("mean".into(), "test".into(), name.into(), m));
            rows.push(("sd".into(), "test".into(), name.into(), s));
        }
        write_metrics(path, &rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kfold_as_sklearn() {
        // KFold(3).split(range(10)): test blocks [0..4), [4..7), [7..10).
        assert_eq!(kfold(10, 3), vec![0..4, 4..7, 7..10]);
        let order: Vec<usize> = (0..5000).collect();
        let m = nested(&order, 1000, None, None).unwrap();
        assert_eq!(m.len(), 5 * 4);
        assert_eq!(m[0].test, (0..1000).collect::<Vec<_>>());
        assert_eq!(m[0].val, (1000..2000).collect::<Vec<_>>());
        assert_eq!(m[0].train.len(), 3000);
        assert_eq!(nested(&order, 1000, Some(2), Some(1)).unwrap().len(), 2);
        assert!(nested(&order[..1500], 1000, None, None).is_err());
    }
}
