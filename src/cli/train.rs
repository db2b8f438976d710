//! `niclip train`: one CLIP model on all pairs (early-stopped on `--val` when given), or the
//! paper's nested cross-validation with `--cv`.

use super::brain::MkdaArgs;
use super::Compute;
use crate::brain::augment::AugmentSpec;
use crate::clip::cv::{self, CvOptions};
use crate::clip::data::{load_pairs, pair_with_images, Pairs};
use crate::clip::fit;
use crate::clip::train::EpochImages;
use crate::clip::train::TrainConfig;
use crate::clip::Clip;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::workflow::augment::{AugmentedImages, CorpusImages};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Hyper-parameters shared by `train` and `eval retrieval --cv` (defaults: the paper's).
#[derive(clap::Args, Debug, Clone)]
pub struct TrainFlags {
    /// Passes over the training pairs (at most; --patience may stop earlier).
    #[arg(long, default_value_t = 50)]
    pub epochs: usize,
    /// Pairs per batch: each batch's InfoNCE contrasts its pairs with one another.
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 5e-4)]
    pub lr: f32,
    /// AdamW weight decay (decoupled, as torch.optim.AdamW).
    #[arg(long = "weight-decay", default_value_t = 0.1)]
    pub weight_decay: f32,
    /// Dropout probability in both towers while training.
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
    /// Write the training checkpoint at the end of an epoch at most every SECONDS (0: every
    /// epoch), and when training ends; a killed run resumes from the last one with --resume.
    #[arg(
        long = "checkpoint-every",
        value_name = "SECONDS",
        default_value_t = 60
    )]
    pub checkpoint_every: u64,
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
            checkpoint_every: Duration::from_secs(self.checkpoint_every),
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
        Clip::load_for(p, pairs, "use a matching --init").map(Some)
    }

    /// The nested CV of these flags on `pairs`, checkpoints in `ckpt_dir`.
    pub fn run_cv(
        &self,
        pairs: &Pairs,
        cfg: &TrainConfig,
        init: Option<&Clip>,
        ckpt_dir: &Path,
        augment: Option<&dyn EpochImages>,
        device: &Device,
    ) -> Result<cv::CvReport> {
        let opts = self.cv_options();
        cv::run(
            pairs,
            cfg,
            &opts,
            init,
            ckpt_dir,
            self.resume,
            augment,
            device,
        )
    }
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Text features, one row per study (.npy; ids in <path>.ids.txt pair the rows by id).
    #[arg(long)]
    pub text: PathBuf,
    /// Image features, one row per study (.npy; ids in <path>.ids.txt). Or compute them here
    /// with --corpus and --atlas.
    #[arg(long, required_unless_present = "corpus", conflicts_with = "corpus")]
    pub images: Option<PathBuf>,
    /// Compute the image features from this corpus's peaks (the MKDA flags below) instead of
    /// reading --images; needed by --augment.
    #[arg(long, requires = "atlas")]
    pub corpus: Option<PathBuf>,
    /// The atlas the features are projected on, with --corpus (a 3D label image needs --labels).
    #[arg(long, requires = "corpus")]
    pub atlas: Option<PathBuf>,
    /// Read --atlas as a 3D label image.
    #[arg(long, requires = "atlas")]
    pub labels: bool,
    /// Training-time augmentation, drawn anew each epoch from (seed, epoch, study), e.g.
    /// `jitter:sigma=4,dropout:p=0.1,radius:8..12`; validation and test stay un-augmented.
    /// Items: see `docs/augmentation.md`.
    #[arg(long, requires = "corpus", value_name = "SPEC")]
    pub augment: Option<String>,
    #[command(flatten)]
    pub mkda: MkdaArgs,
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

/// The training pairs (image features read, or computed from --corpus), and with --augment
/// the features drawn for each epoch.
fn training_data<'d>(
    a: &TrainArgs,
    device: &'d Device,
) -> Result<(Pairs, Option<AugmentedImages<'d>>)> {
    let spec = a.augment.as_deref().map(AugmentSpec::parse).transpose()?;
    let (Some(corpus), Some(atlas)) = (&a.corpus, &a.atlas) else {
        let images = a
            .images
            .as_deref()
            .expect("clap requires --images or --corpus");
        return Ok((load_pairs(&a.text, images)?, None));
    };
    let base = CorpusImages::open(corpus, atlas, a.labels, &a.mkda.spec())?;
    let ids = base.peaks.ids.clone();
    let pairs = pair_with_images(&a.text, base.features(device)?, Some(ids), corpus)?;
    let Some(spec) = spec.filter(|s| !s.is_empty()) else {
        return Ok((pairs, None));
    };
    let base = match &pairs.ids {
        Some(ids) => base.for_rows(ids)?,
        None => base,
    };
    let augmented = AugmentedImages::new(base, spec, a.flags.seed, device)?;
    Ok((pairs, Some(augmented)))
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
    let (pairs, augmented) = training_data(&a, &device)?;
    let augment = augmented.as_ref().map(|x| x as &dyn EpochImages);
    let init = a.flags.init_model(&pairs)?;
    if a.cv {
        let ckpt = sibling(&a.out, ".ckpt");
        let report = a
            .flags
            .run_cv(&pairs, &cfg, init.as_ref(), &ckpt, augment, &device)?;
        report.best.save(&a.out)?;
        print!("{}", report.table());
        if let Some(m) = &a.metrics {
            report.write_metrics(m)?;
        }
        let _ = std::fs::remove_dir_all(&ckpt);
        eprintln!("kept model (lowest validation loss) → {}", a.out.display());
        return Ok(());
    }
    let val = match &a.val {
        Some(v) => Some((load_pairs(&v[0], &v[1])?, v[0].as_path())),
        None => None,
    };
    let ckpt = sibling(&a.out, ".ckpt.safetensors");
    // A job script may always pass --resume: a run killed before its first checkpoint starts over.
    if a.flags.resume && !ckpt.is_file() {
        eprintln!(
            "no checkpoint at {} to resume; training from the start",
            ckpt.display()
        );
    }
    let resume = a.flags.resume;
    let fit = fit::run(pairs, val, &cfg, init, &ckpt, resume, augment, &device)?;
    fit.outcome.model.save(&a.out)?;
    if let Some(m) = &a.metrics {
        fit.write_metrics(m)?;
    }
    let _ = std::fs::remove_file(&ckpt);
    let best = fit.outcome.best_val.map_or(String::new(), |v| {
        let e = fit.outcome.best_epoch;
        format!(", best validation loss {v:.4} at epoch {e}")
    });
    eprintln!(
        "trained {} epochs on {} pairs ({}){best} → {}",
        fit.outcome.epochs,
        fit.trained_on,
        device.name(),
        a.out.display()
    );
    Ok(())
}
