//! `niclip eval …`: `retrieval` scores the CLIP model on article ↔ map retrieval (Recall@k,
//! Mix&Match); `decoding` scores niclip and the baselines on maps with a known answer.

use super::baseline::map_on_mask;
use super::decode::ModelArgs;
use super::train::{sibling, TrainFlags};
use super::Compute;
use crate::baseline;
use crate::brain::{Image, Mask};
use crate::clip::data::load_pairs;
use crate::clip::metrics::write_metrics;
use crate::clip::Clip;
use crate::decode::ontology::name_key;
use crate::decode::posterior::ranking;
use crate::decode::{Decoder, Variant};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::eval::{read_truth, score_level, Level, LevelScore, Prediction};
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
    /// Baseline models (`niclip baseline train`) scored beside niclip; repeat for several.
    /// Their task scores rank concepts and domains through the same ontology (a concept scores
    /// its best task, a domain its best concept).
    #[arg(long = "baseline")]
    pub baselines: Vec<PathBuf>,
    /// Shuffles of the predictions across maps for the null.
    #[arg(long, default_value_t = 1000)]
    pub permutations: usize,
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
        .run_cv(&pairs, &cfg, init.as_ref(), &ckpt, &device)?;
    print!("{}", report.table());
    if let Some(m) = &a.metrics {
        report.write_metrics(m)?;
    }
    let _ = std::fs::remove_dir_all(&ckpt);
    Ok(())
}

/// Names ranked by score, best first.
fn ranked(names: &[String], scores: &[f32]) -> Vec<String> {
    ranking(scores)
        .into_iter()
        .map(|i| names[i].clone())
        .collect()
}

/// niclip's ranking of one map's tasks, concepts and domains by probability.
fn niclip_prediction(decoder: &Decoder, features: &[f32], name: &str) -> Prediction {
    let d = decoder
        .decode_features(features, vec![name.to_string()])
        .remove(0);
    let domains: Vec<String> = decoder
        .domain_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    Prediction {
        tasks: ranked(decoder.task_names(), &d.tasks.posterior),
        concepts: ranked(decoder.concept_names(), &d.concepts),
        domains: ranked(&domains, &d.domains),
    }
}

/// A baseline's ranking: its term scores on the decoder's vocabulary tasks, then up the same
/// ontology by the best score below (baseline scores are correlations or weights, not
/// probabilities, so noisy-OR does not apply).
fn baseline_prediction(decoder: &Decoder, scores: &[(String, f32)]) -> Prediction {
    let by_name: std::collections::HashMap<String, f32> =
        scores.iter().map(|(n, s)| (name_key(n), *s)).collect();
    let task_scores: Vec<f32> = decoder
        .task_names()
        .iter()
        .map(|n| match by_name.get(&name_key(n)) {
            Some(x) if !x.is_nan() => *x,
            // Not a term of the baseline, or undefined (a flat map's r): ranked last.
            _ => f32::NEG_INFINITY,
        })
        .collect();
    let best = |rows: &[u32], of: &[f32]| {
        rows.iter()
            .map(|&r| of[r as usize])
            .fold(f32::NEG_INFINITY, f32::max)
    };
    let concept_scores: Vec<f32> = decoder
        .concept_tasks()
        .iter()
        .map(|rows| best(rows, &task_scores))
        .collect();
    let domain_scores: Vec<f32> = decoder
        .domain_concepts()
        .iter()
        .map(|rows| best(rows, &concept_scores))
        .collect();
    let mut terms = scores.to_vec();
    baseline::sort_by_score(&mut terms);
    let domains: Vec<String> = decoder
        .domain_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    Prediction {
        // The baseline's own term order: it may know tasks the decoder's vocabulary lacks.
        tasks: terms.into_iter().map(|(n, _)| n).collect(),
        concepts: ranked(decoder.concept_names(), &concept_scores),
        domains: ranked(&domains, &domain_scores),
    }
}

fn decoding(a: DecodingArgs) -> Result<()> {
    a.compute.init_threads();
    a.compute.cpu_only("eval decoding");
    let truth = read_truth(&a.truth)?;
    let (decoder, scale_note) = a.model.decoder()?;
    let mut decoders: Vec<(String, Vec<Prediction>)> = Vec::new();

    let variant = Variant::default();
    let mut niclip = Vec::new();
    for t in &truth {
        let img = Image::read(&t.map)?;
        if img.n_vols != 1 {
            return Err(Error::input(
                &t.map,
                format!("{} volumes; each truth row names one 3D map", img.n_vols),
            ));
        }
        let f = decoder.image_features(&img, &variant, &t.map)?;
        niclip.push(niclip_prediction(
            &decoder,
            &f,
            &t.map.display().to_string(),
        ));
    }
    decoders.push(("niclip".into(), niclip));

    let mask = Mask::mni152_2mm();
    for b in &a.baselines {
        let model = baseline::Decoder::load(b)?;
        let mut preds = Vec::new();
        for t in &truth {
            let vol = map_on_mask(&t.map, &mask)?.remove(0);
            preds.push(baseline_prediction(&decoder, &model.decode(&vol)));
        }
        let name = b
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| b.display().to_string());
        decoders.push((format!("baseline:{name}"), preds));
    }

    let mut scores: Vec<(String, LevelScore)> = Vec::new();
    for (name, preds) in &decoders {
        for level in Level::ALL {
            let s = score_level(
                level,
                level.default_k(),
                &truth,
                preds,
                a.permutations,
                a.seed,
            );
            scores.push((name.clone(), s));
        }
    }

    println!(
        "{} maps from {}; niclip {scale_note}",
        truth.len(),
        a.truth.display()
    );
    println!(
        "{:<28} {:<8} {:>2} {:>4} {:>8} {:>6} {:>9} {:>7} {:>9}",
        "decoder", "level", "k", "maps", "recall", "hit", "null", "p", "obs/null"
    );
    for (name, s) in &scores {
        println!(
            "{:<28} {:<8} {:>2} {:>4} {:>8.3} {:>6.3} {:>9.3} {:>7.4} {:>9}",
            name,
            s.level.name(),
            s.k,
            s.maps,
            s.recall,
            s.hit,
            s.null_recall,
            s.p,
            ratio(s)
        );
    }
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let summary = dir.join("summary.csv");
        crate::io::write_atomic(&summary, |w| {
            let mut text = String::from("decoder,level,k,maps,recall,hit,null_recall,p,ratio\n");
            for (name, s) in &scores {
                text += &format!(
                    "{name},{},{},{},{},{},{},{},{}\n",
                    s.level.name(),
                    s.k,
                    s.maps,
                    s.recall,
                    s.hit,
                    s.null_recall,
                    s.p,
                    ratio(s)
                );
            }
            std::io::Write::write_all(w, text.as_bytes()).map_err(|e| Error::io(&summary, e))
        })?;
        let per_map = dir.join("per_map.csv");
        crate::io::write_atomic(&per_map, |w| {
            let mut text = String::from("decoder,map,level,truth,top_k,recall\n");
            for (name, preds) in &decoders {
                for (t, p) in truth.iter().zip(preds) {
                    for level in Level::ALL {
                        let k = level.default_k();
                        let top = level.ranked(p);
                        let r = crate::eval::decoding::recall_at(level.truth(t), top, k);
                        text += &format!(
                            "{name},{},{},{},{},{}\n",
                            csv_cell(&t.map.display().to_string()),
                            level.name(),
                            csv_cell(&level.truth(t).join(";")),
                            csv_cell(&top[..k.min(top.len())].join(";")),
                            r.map(|x| x.to_string()).unwrap_or_default()
                        );
                    }
                }
            }
            std::io::Write::write_all(w, text.as_bytes()).map_err(|e| Error::io(&per_map, e))
        })?;
        eprintln!("wrote {} and {}", summary.display(), per_map.display());
    }
    Ok(())
}

/// Observed / null mean recall ("inf" when the null never finds anything).
fn ratio(s: &LevelScore) -> String {
    if s.maps == 0 {
        String::new()
    } else if s.null_recall > 0.0 {
        format!("{:.2}", s.recall / s.null_recall)
    } else {
        "inf".into()
    }
}

fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
