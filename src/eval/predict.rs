//! Each decoder's rankings of the maps of a truth file: niclip's tasks, concepts and domains by
//! probability, and a baseline's by its scores carried up the same ontology.

use super::decoding::same;
use super::{Level, Prediction, Truth};
use crate::baseline;
use crate::brain::{Image, Mask};
use crate::decode::ontology::name_key;
use crate::decode::posterior::ranking;
use crate::decode::{Decoder, Variant};
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::Path;

/// Names ranked by score, best first.
fn ranked(names: &[String], scores: &[f32]) -> Vec<String> {
    ranking(scores)
        .into_iter()
        .map(|i| names[i].clone())
        .collect()
}

fn domain_names(decoder: &Decoder) -> Vec<String> {
    decoder
        .domain_names()
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Per level, the truth names that `decoder` can never output (misspelt, or not in its
/// vocabulary or ontology): each is a miss at every map, which no score would reveal.
pub fn names_never_predicted(decoder: &Decoder, truth: &[Truth]) -> Vec<(Level, Vec<String>)> {
    let known: [Vec<String>; 3] = [
        decoder.task_names().to_vec(),
        decoder.concept_names().to_vec(),
        domain_names(decoder),
    ];
    Level::ALL
        .iter()
        .zip(known)
        .filter_map(|(&level, names)| {
            let mut unknown: Vec<String> = truth
                .iter()
                .flat_map(|t| level.truth(t))
                .filter(|n| !names.iter().any(|k| same(k, n)))
                .cloned()
                .collect();
            unknown.sort();
            unknown.dedup();
            (!unknown.is_empty()).then_some((level, unknown))
        })
        .collect()
}

/// niclip's ranking of every truth map (each must be one 3D map), decoded as it is.
pub fn niclip_predictions(
    decoder: &Decoder,
    variant: &Variant,
    truth: &[Truth],
) -> Result<Vec<Prediction>> {
    // Maps are independent: read and projected in parallel (an evaluation set has hundreds).
    truth
        .par_iter()
        .map(|t| {
            let img = Image::read(&t.map)?;
            if img.n_vols != 1 {
                return Err(Error::input(
                    &t.map,
                    format!("{} volumes; each truth row names one 3D map", img.n_vols),
                ));
            }
            let f = decoder.image_features(&img, variant, &t.map)?;
            let d = decoder
                .decode_features(&f, vec![t.map.display().to_string()])
                .remove(0);
            Ok(Prediction {
                tasks: ranked(decoder.task_names(), &d.tasks.posterior),
                concepts: ranked(decoder.concept_names(), &d.concepts),
                domains: ranked(&domain_names(decoder), &d.domains),
            })
        })
        .collect()
}

/// The baseline model at `path`: its name (`baseline:<file stem>`) and its ranking of every
/// truth map, on the MNI152 2 mm mask.
pub fn baseline_predictions(
    decoder: &Decoder,
    path: &Path,
    truth: &[Truth],
) -> Result<(String, Vec<Prediction>)> {
    let model = baseline::Decoder::load(path)?;
    let mask = Mask::mni152_2mm();
    let mut preds = Vec::with_capacity(truth.len());
    for t in truth {
        let vol = mask.values_of(&t.map)?.remove(0);
        preds.push(baseline_prediction(decoder, &model.decode(&vol)));
    }
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| path.display().to_string());
    Ok((format!("baseline:{name}"), preds))
}

/// A baseline's ranking: its term scores on the decoder's vocabulary tasks, then up the same
/// ontology by the best score below (baseline scores are correlations or weights, not
/// probabilities, so noisy-OR does not apply).
fn baseline_prediction(decoder: &Decoder, scores: &[(String, f32)]) -> Prediction {
    let by_name: HashMap<String, f32> = scores.iter().map(|(n, s)| (name_key(n), *s)).collect();
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
    Prediction {
        // The baseline's own term order: it may know tasks the decoder's vocabulary lacks.
        tasks: terms.into_iter().map(|(n, _)| n).collect(),
        concepts: ranked(decoder.concept_names(), &concept_scores),
        domains: ranked(&domain_names(decoder), &domain_scores),
    }
}
