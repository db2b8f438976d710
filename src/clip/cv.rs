//! Folds of the nested cross-validation, as scikit-learn's `KFold` without shuffling: k
//! contiguous blocks, the first n % k of them one longer.

use crate::error::{Error, Result};
use std::ops::Range;

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
    pub recall_at_10: f64,
    pub recall_at_100: f64,
    pub mix_match: f64,
}

pub struct CvReport {
    pub folds: Vec<FoldResult>,
    /// The kept model of lowest validation loss over all outer folds.
    pub best: super::Clip,
}

/// Recall@10, Recall@100 and Mix&Match of `model` on the pairs `rows`.
pub fn retrieval_metrics(
    pairs: &super::data::Pairs,
    model: &super::Clip,
    rows: &[usize],
) -> (f64, f64, f64) {
    let n = rows.len();
    let mut xt = vec![0.0f32; n * pairs.d];
    let mut xi = vec![0.0f32; n * pairs.k];
    pairs.gather(rows, &mut xt, &mut xi);
    let t = model.encode_texts(&xt, n);
    let i = model.encode_images(&xi, n);
    let sim = super::metrics::similarity(&i, &t, n, model.image_dim());
    (
        super::metrics::recall_at_k(&sim, n, 10),
        super::metrics::recall_at_k(&sim, n, 100),
        super::metrics::mix_match(&sim, n),
    )
}

/// The jobs of a nested CV: one model per (outer, inner) fold, each with its checkpoint in
/// `ckpt_dir`.
pub fn cv_jobs(
    pairs: &super::data::Pairs,
    cfg: &super::train::TrainConfig,
    opts: &CvOptions,
    init: Option<&super::Clip>,
    ckpt_dir: Option<&std::path::Path>,
) -> Result<(Vec<CvModel>, Vec<super::train::Job>)> {
    let mut order: Vec<usize> = (0..pairs.n).collect();
    if opts.shuffle_folds {
        order = super::train::epoch_order(&order, true, cfg.seed, u64::MAX, 0);
    }
    let models = nested(&order, opts.fold_size, opts.outer_folds, opts.inner_folds)?;
    let jobs = models
        .iter()
        .map(|m| {
            let id = ((m.outer as u64) << 16) | m.inner as u64;
            super::train::Job {
                model_id: id,
                train: m.train.clone(),
                val: Some(m.val.clone()),
                init: init.cloned().unwrap_or_else(|| {
                    super::Clip::init(
                        pairs.d,
                        pairs.k,
                        crate::rng::mix64(cfg.seed ^ id.wrapping_mul(0x2545_F491_4F6C_DD1D)),
                    )
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
pub fn select_and_score(
    pairs: &super::data::Pairs,
    models: &[CvModel],
    outcomes: &[super::train::Outcome],
) -> CvReport {
    let mut folds = Vec::new();
    let mut best: Option<(f32, usize)> = None;
    let n_outer = models.iter().map(|m| m.outer + 1).max().unwrap_or(0);
    for o in 0..n_outer {
        let Some(j) = (0..models.len())
            .filter(|&j| models[j].outer == o)
            .min_by(|&a, &b| {
                outcomes[a]
                    .best_val
                    .unwrap_or(f32::INFINITY)
                    .total_cmp(&outcomes[b].best_val.unwrap_or(f32::INFINITY))
            })
        else {
            continue;
        };
        let v = outcomes[j].best_val.unwrap_or(f32::INFINITY);
        if best.is_none_or(|(bv, _)| v < bv) {
            best = Some((v, j));
        }
        let (r10, r100, mm) = retrieval_metrics(pairs, &outcomes[j].model, &models[j].test);
        folds.push(FoldResult {
            outer: o,
            inner: models[j].inner,
            val_loss: v,
            epochs: outcomes[j].epochs,
            recall_at_10: r10,
            recall_at_100: r100,
            mix_match: mm,
        });
    }
    let best = best
        .map(|(_, j)| outcomes[j].model.clone())
        .expect("at least one CV model");
    CvReport { folds, best }
}
