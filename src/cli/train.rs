//! `niclip train`: one CLIP model on all pairs (early-stopped on `--val` when given), or the
//! paper's nested cross-validation with `--cv`.

use super::Compute;
use crate::clip::cv::{self, CvOptions, CvReport};
use crate::clip::data::{load_pairs, Pairs};
use crate::clip::train::{n_batches, Job, Outcome, Progress, TrainConfig};
use crate::clip::Clip;
use crate::device::Device;
use crate::error::{Error, IoContext, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Hyper-parameters shared by `train` and `eval retrieval --cv` (defaults: the paper's).
#[derive(clap::Args, Debug, Clone)]
pub struct TrainFlags {
    #[arg(long, default_value_t = 50)]
    pub epochs: usize,
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    #[arg(long, default_value_t = 5e-4)]
    pub lr: f32,
    #[arg(long = "weight-decay", default_value_t = 0.1)]
    pub weight_decay: f32,
    #[arg(long, default_value_t = 0.5)]
    pub dropout: f32,
    /// Early stopping: epochs without a lower validation loss before training stops.
    #[arg(long, default_value_t = 10)]
    pub patience: usize,
    /// Seeds the initial weights, the shuffles and the dropout masks.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Start from these weights (.safetensors with the authors' keys) instead of a fresh init.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Keep the training rows in order (no shuffle per epoch).
    #[arg(long = "no-shuffle")]
    pub no_shuffle: bool,
    /// Continue an interrupted run from its checkpoint (next to --out, or to --metrics).
    #[arg(long)]
    pub resume: bool,
    /// Nested CV: outer folds of this many pairs for test, inner folds of as many for validation.
    #[arg(long = "fold-size", default_value_t = 1000)]
    pub fold_size: usize,
    /// Only the first N outer folds (default: all, as the paper).
    #[arg(long = "outer-folds")]
    pub outer_folds: Option<usize>,
    /// Only the first N inner folds of each outer fold (default: all, as the paper).
    #[arg(long = "inner-folds")]
    pub inner_folds: Option<usize>,
    /// Cut the folds from a permutation of the pairs (from --seed) instead of contiguous blocks.
    #[arg(long = "shuffle-folds")]
    pub shuffle_folds: bool,
    /// Testing aid: fail after this many batches, as if killed (then rerun with --resume).
    #[arg(long = "stop-after-batches", hide = true)]
    pub stop_after_batches: Option<u64>,
}

impl TrainFlags {
    pub fn config(&self) -> TrainConfig {
        TrainConfig {
            epochs: self.epochs,
            batch: self.batch,
            lr: self.lr,
            weight_decay: self.weight_decay,
            dropout: self.dropout,
            patience: self.patience,
            seed: self.seed,
            shuffle: !self.no_shuffle,
            stop_after_batches: self.stop_after_batches,
        }
    }

    pub fn cv_options(&self) -> CvOptions {
        CvOptions {
            fold_size: self.fold_size,
            outer_folds: self.outer_folds,
            inner_folds: self.inner_folds,
            shuffle_folds: self.shuffle_folds,
        }
    }

    pub fn init_model(&self, pairs: &Pairs) -> Result<Option<Clip>> {
        let Some(p) = &self.init else { return Ok(None) };
        let m = Clip::load(p)?;
        if m.text_dim() != pairs.d || m.image_dim() != pairs.k {
            return Err(Error::input(
                p,
                format!(
                    "the model takes text width {} and image width {}, the data has {} and {}; use a matching --init",
                    m.text_dim(),
                    m.image_dim(),
                    pairs.d,
                    pairs.k
                ),
            ));
        }
        Ok(Some(m))
    }
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Text features, one row per study (.npy; ids in <path>.ids.txt pair the rows by id).
    #[arg(long)]
    pub text: PathBuf,
    /// Image features, one row per study (.npy; ids in <path>.ids.txt).
    #[arg(long)]
    pub images: PathBuf,
    /// The trained model (.safetensors, the authors' key names).
    #[arg(long)]
    pub out: PathBuf,
    /// Validation pairs for early stopping (without --cv): TEXT_VAL.npy IMAGES_VAL.npy.
    #[arg(long, num_args = 2, value_names = ["TEXT_VAL", "IMAGES_VAL"])]
    pub val: Option<Vec<PathBuf>>,
    /// Nested cross-validation as the paper (the model kept is the one of lowest validation loss).
    #[arg(long)]
    pub cv: bool,
    /// Metrics CSV: fold, split, metric, value.
    #[arg(long)]
    pub metrics: Option<PathBuf>,
    #[command(flatten)]
    pub flags: TrainFlags,
    #[command(flatten)]
    pub compute: Compute,
}

/// `<path><suffix>` beside `path`.
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

pub fn run(a: TrainArgs) -> Result<()> {
    a.compute.init_threads();
    if a.out.extension().is_none_or(|e| e != "safetensors") {
        return Err(Error::Usage(format!(
            "{}: the model must be written as .safetensors",
            a.out.display()
        )));
    }
    if a.cv && a.val.is_some() {
        return Err(Error::Usage(
            "--cv makes its own validation folds; drop --val".into(),
        ));
    }
    let cfg = a.flags.config();
    cfg.check()?;
    let device = Device::select(&a.compute.device)?;
    let pairs = load_pairs(&a.text, &a.images)?;
    let init = a.flags.init_model(&pairs)?;
    if a.cv {
        let ckpt = sibling(&a.out, ".ckpt");
        let report = run_cv(&pairs, &cfg, &a.flags, init.as_ref(), &ckpt, &device)?;
        report.best.save(&a.out)?;
        print_cv(&report);
        if let Some(m) = &a.metrics {
            write_cv_metrics(m, &report)?;
        }
        let _ = std::fs::remove_dir_all(&ckpt);
        eprintln!("kept model (lowest validation loss) → {}", a.out.display());
        return Ok(());
    }
    // One model on all pairs; --val pairs for early stopping.
    let (all, val_pairs) = match &a.val {
        Some(v) => (pairs, Some(load_pairs(&v[0], &v[1])?)),
        None => (pairs, None),
    };
    let (data, train_rows, val_rows) = match &val_pairs {
        Some(vp) => {
            if vp.d != all.d || vp.k != all.k {
                return Err(Error::input(
                    &a.val.as_ref().unwrap()[0],
                    format!(
                        "validation widths {}/{} differ from the training data's {}/{}",
                        vp.d, vp.k, all.d, all.k
                    ),
                ));
            }
            let n = all.n;
            let joined = Pairs {
                text: [all.text.as_slice(), vp.text.as_slice()].concat(),
                images: [all.images.as_slice(), vp.images.as_slice()].concat(),
                n: n + vp.n,
                d: all.d,
                k: all.k,
                ids: None,
            };
            (
                joined,
                (0..n).collect::<Vec<_>>(),
                Some((n..n + vp.n).collect::<Vec<_>>()),
            )
        }
        None => {
            let n = all.n;
            (all, (0..n).collect(), None)
        }
    };
    let ckpt = sibling(&a.out, ".ckpt.safetensors");
    let job = Job {
        model_id: 0,
        train: train_rows,
        val: val_rows,
        init: init.unwrap_or_else(|| Clip::init(data.d, data.k, cfg.seed)),
        checkpoint: Some(ckpt.clone()),
    };
    let outcome = train_jobs(
        &data,
        &cfg,
        std::slice::from_ref(&job),
        a.flags.resume,
        &device,
    )?
    .remove(0);
    outcome.model.save(&a.out)?;
    if let Some(m) = &a.metrics {
        let mut rows = Vec::new();
        for (e, l) in outcome.train_loss.iter().enumerate() {
            rows.push((
                "all".to_string(),
                "train".to_string(),
                format!("loss_epoch_{}", e + 1),
                *l as f64,
            ));
        }
        for (e, l) in outcome.val_loss.iter().enumerate() {
            rows.push((
                "all".to_string(),
                "validation".to_string(),
                format!("loss_epoch_{}", e + 1),
                *l as f64,
            ));
        }
        if let Some(vr) = &job.val {
            let (r10, r100, mm) = cv::retrieval_metrics(&data, &outcome.model, vr);
            for (name, v) in [("recall@10", r10), ("recall@100", r100), ("mix_match", mm)] {
                rows.push(("all".into(), "validation".into(), name.into(), v));
            }
        }
        write_metrics(m, &rows)?;
    }
    let _ = std::fs::remove_file(&ckpt);
    eprintln!(
        "trained {} epochs on {} pairs ({}){} → {}",
        outcome.epochs,
        job.train.len(),
        device.name(),
        outcome.best_val.map_or(String::new(), |v| format!(
            ", best validation loss {v:.4} at epoch {}",
            outcome.best_epoch
        )),
        a.out.display()
    );
    Ok(())
}

/// Trains every job on the device: one after the other on the CPU, all at once on CUDA.
pub fn train_jobs(
    pairs: &Pairs,
    cfg: &TrainConfig,
    jobs: &[Job],
    resume: bool,
    device: &Device,
) -> Result<Vec<Outcome>> {
    let total: u64 = jobs
        .iter()
        .map(|j| (cfg.epochs * n_batches(j.train.len(), cfg.batch)) as u64)
        .sum();
    let mut progress = Progress::new(total, cfg.stop_after_batches, true);
    let out = device.train_clip(pairs, cfg, jobs, resume, &mut progress)?;
    progress.bar.finish_and_clear();
    Ok(out)
}

/// The nested CV, checkpoints in `ckpt_dir` (one file per model).
pub fn run_cv(
    pairs: &Pairs,
    cfg: &TrainConfig,
    flags: &TrainFlags,
    init: Option<&Clip>,
    ckpt_dir: &Path,
    device: &Device,
) -> Result<CvReport> {
    let (models, jobs) = cv::cv_jobs(pairs, cfg, &flags.cv_options(), init, Some(ckpt_dir))?;
    std::fs::create_dir_all(ckpt_dir).at(ckpt_dir)?;
    let n_outer = models.iter().map(|m| m.outer + 1).max().unwrap_or(0);
    eprintln!(
        "nested CV: {} models ({n_outer} outer folds) on {} pairs, {}",
        jobs.len(),
        pairs.n,
        device.name()
    );
    let outcomes = train_jobs(pairs, cfg, &jobs, flags.resume, device)?;
    Ok(cv::select_and_score(pairs, &models, &outcomes))
}

pub fn print_cv(report: &CvReport) {
    println!("fold\tinner\tval_loss\tepochs\trecall@10\trecall@100\tmix_match");
    for f in &report.folds {
        println!(
            "{}\t{}\t{:.4}\t{}\t{:.4}\t{:.4}\t{:.2}",
            f.outer, f.inner, f.val_loss, f.epochs, f.recall_at_10, f.recall_at_100, f.mix_match
        );
    }
    let col = |g: fn(&cv::FoldResult) -> f64| {
        crate::clip::metrics::mean_sd(&report.folds.iter().map(g).collect::<Vec<_>>())
    };
    let (r10, r100, mm) = (
        col(|f| f.recall_at_10),
        col(|f| f.recall_at_100),
        col(|f| f.mix_match),
    );
    println!(
        "test (mean ± sd over {} folds): Recall@10 {:.4} ± {:.4}, Recall@100 {:.4} ± {:.4}, Mix&Match {:.2} ± {:.2}",
        report.folds.len(),
        r10.0,
        r10.1,
        r100.0,
        r100.1,
        mm.0,
        mm.1
    );
}

/// A metric's name and how to read it off a fold.
type Metric = (&'static str, fn(&cv::FoldResult) -> f64);

pub fn write_cv_metrics(path: &Path, report: &CvReport) -> Result<()> {
    let mut rows = Vec::new();
    let names: [Metric; 3] = [
        ("recall@10", |f| f.recall_at_10),
        ("recall@100", |f| f.recall_at_100),
        ("mix_match", |f| f.mix_match),
    ];
    for f in &report.folds {
        rows.push((
            f.outer.to_string(),
            "validation".to_string(),
            "loss".to_string(),
            f.val_loss as f64,
        ));
        rows.push((
            f.outer.to_string(),
            "validation".to_string(),
            "inner_fold".to_string(),
            f.inner as f64,
        ));
        for (name, g) in names {
            rows.push((
                f.outer.to_string(),
                "test".to_string(),
                name.to_string(),
                g(f),
            ));
        }
    }
    for (name, g) in names {
        let (m, s) = crate::clip::metrics::mean_sd(&report.folds.iter().map(g).collect::<Vec<_>>());
        rows.push(("mean".into(), "test".into(), name.into(), m));
        rows.push(("sd".into(), "test".into(), name.into(), s));
    }
    write_metrics(path, &rows)
}

pub fn write_metrics(path: &Path, rows: &[(String, String, String, f64)]) -> Result<()> {
    crate::io::write_atomic(path, |w| {
        writeln!(w, "fold,split,metric,value").at(path)?;
        for (f, s, m, v) in rows {
            writeln!(w, "{f},{s},{m},{v}").at(path)?;
        }
        Ok(())
    })
}
