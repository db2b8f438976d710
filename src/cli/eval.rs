//! `niclip eval …`: `retrieval` scores the CLIP model on article ↔ map retrieval (Recall@k,
//! Mix&Match); `decoding` scores niclip and the baselines on maps with a known answer.

use super::decode::{ModelArgs, VariantArgs};
use super::train::{sibling, TrainFlags};
use super::Compute;
use crate::clip::data::load_pairs;
use crate::clip::metrics::write_metrics;
use crate::clip::Clip;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::eval::predict::names_never_predicted;
use crate::eval::{evaluate, read_truth};
use std::path::PathBuf;

#[derive(clap::Subcommand, Debug)]
pub enum EvalCommand {
    /// Recall@10, Recall@100 and Mix&Match: of a trained --model on the pairs, or of the
    /// paper's nested cross-validation with --cv (test folds, mean ± sd).
    Retrieval(RetrievalArgs),
    /// Task recall@4, concept recall@4, domain recall@2 and hit@k on maps with a known answer
    /// (truth.tsv), for niclip and any baselines, each against a permutation null.
    Decoding(DecodingArgs),
}

#[derive(clap::Args, Debug)]
pub struct DecodingArgs {
    /// Tab-separated: path, task[, concepts, domains] (several names separated by `;`; paths
    /// relative to this file).
    #[arg(long)]
    pub truth: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    /// niclip's preparation of each map (the baselines read the maps as they are).
    #[command(flatten)]
    pub variant: VariantArgs,
    /// Baseline models (`niclip baseline train`) scored beside niclip; repeat for several.
    /// Their task scores rank concepts and domains through the same ontology (a concept scores
    /// its best task, a domain its best concept).
    #[arg(long = "baseline")]
    pub baselines: Vec<PathBuf>,
    /// Shuffles of the predictions across maps for the null.
    #[arg(long, default_value_t = 1000)]
    pub permutations: usize,
    /// Seed of the permutations (the null is the same for the same seed).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write summary.csv and per_map.csv here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub compute: Compute,
}

#[derive(clap::Args, Debug)]
pub struct RetrievalArgs {
    /// Text features (.npy, ids in <path>.ids.txt).
    #[arg(long)]
    pub text: PathBuf,
    /// Image features (.npy, ids in <path>.ids.txt).
    #[arg(long)]
    pub images: PathBuf,
    /// A trained model to score on all the pairs.
    #[arg(long, conflicts_with = "cv")]
    pub model: Option<PathBuf>,
    /// Train and score the nested cross-validation instead (the training flags apply).
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

pub fn run(c: EvalCommand) -> Result<()> {
    match c {
        EvalCommand::Retrieval(a) => retrieval(a),
        EvalCommand::Decoding(a) => decoding(a),
    }
}

fn retrieval(a: RetrievalArgs) -> Result<()> {
    a.compute.init_threads();
    let pairs = load_pairs(&a.text, &a.images)?;
    if let Some(mp) = &a.model {
        let fix = "use a model trained on features of these widths";
        let model = Clip::load_for(mp, &pairs, fix)?;
        let r = model.retrieval(&pairs, &(0..pairs.n).collect::<Vec<_>>());
        println!(
            "{} pairs: Recall@10 {:.4}, Recall@100 {:.4}, Mix&Match {:.2}",
            pairs.n, r.recall_at_10, r.recall_at_100, r.mix_match
        );
        if let Some(m) = &a.metrics {
            write_metrics(m, &r.rows("all", "all"))?;
        }
        return Ok(());
    }
    if !a.cv {
        return Err(Error::Usage(
            "eval retrieval needs --model MODEL.safetensors, or --cv to cross-validate".into(),
        ));
    }
    let cfg = a.flags.config();
    cfg.check()?;
    let device = Device::select(&a.compute.device)?;
    let init = a.flags.init_model(&pairs)?;
    let ckpt = match &a.metrics {
        Some(m) => sibling(m, ".ckpt"),
        None => std::env::temp_dir().join(format!("niclip-eval-{}.ckpt", std::process::id())),
    };
    let report = a
        .flags
        .run_cv(&pairs, &cfg, init.as_ref(), &ckpt, None, &device)?;
    print!("{}", report.table());
    if let Some(m) = &a.metrics {
        report.write_metrics(m)?;
    }
    let _ = std::fs::remove_dir_all(&ckpt);
    Ok(())
}

fn decoding(a: DecodingArgs) -> Result<()> {
    a.compute.init_threads();
    a.compute.cpu_only("eval decoding");
    let truth = read_truth(&a.truth)?;
    let (decoder, scale_note) = a.model.decoder()?;
    for (level, names) in names_never_predicted(&decoder, &truth) {
        eprintln!(
            "warning: {}: {} {} name(s) that niclip never outputs, so they can never be hit \
             (misspelt, or not in this vocabulary/ontology; `niclip decode MAP --top all` lists \
             its names): {}",
            a.truth.display(),
            names.len(),
            level.name(),
            names.join("; ")
        );
    }
    let variant = a.variant.variant()?;
    let e = evaluate(
        truth,
        &decoder,
        &variant,
        &a.baselines,
        a.permutations,
        a.seed,
    )?;
    println!(
        "{} maps from {}; niclip {scale_note}",
        e.truth.len(),
        a.truth.display()
    );
    print!("{}", e.table());
    if let Some(dir) = &a.out {
        let [summary, per_map, per_term] = e.write_csvs(dir)?;
        eprintln!(
            "wrote {}, {} and {}",
            summary.display(),
            per_map.display(),
            per_term.display()
        );
    }
    Ok(())
}
