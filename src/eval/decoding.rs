//! Recall@k, hit@k and the permutation null of decoding evaluations.

use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use std::path::{Path, PathBuf};

/// What a map is known to reflect: `truth.tsv` rows (path, task; optional concepts, domains,
/// several names separated by `;`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truth {
    pub map: PathBuf,
    pub tasks: Vec<String>,
    pub concepts: Vec<String>,
    pub domains: Vec<String>,
}

/// A decoder's ranking for one map, best first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Prediction {
    pub tasks: Vec<String>,
    pub concepts: Vec<String>,
    pub domains: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Task,
    Concept,
    Domain,
}

impl Level {
    pub const ALL: [Level; 3] = [Level::Task, Level::Concept, Level::Domain];

    pub fn name(self) -> &'static str {
        match self {
            Level::Task => "task",
            Level::Concept => "concept",
            Level::Domain => "domain",
        }
    }

    /// The authors' k: 4 tasks, 4 concepts, 2 domains.
    pub fn default_k(self) -> usize {
        match self {
            Level::Task | Level::Concept => 4,
            Level::Domain => 2,
        }
    }

    pub fn truth(self, t: &Truth) -> &[String] {
        match self {
            Level::Task => &t.tasks,
            Level::Concept => &t.concepts,
            Level::Domain => &t.domains,
        }
    }

    pub fn ranked(self, p: &Prediction) -> &[String] {
        match self {
            Level::Task => &p.tasks,
            Level::Concept => &p.concepts,
            Level::Domain => &p.domains,
        }
    }
}

/// Names compare case-insensitively, whitespace trimmed (ontology spellings vary in case).
pub(crate) fn same(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

/// |true ∩ top-k| / |true|; None when nothing is true at this level for the map.
pub fn recall_at(truth: &[String], ranked: &[String], k: usize) -> Option<f64> {
    if truth.is_empty() {
        return None;
    }
    let top = &ranked[..k.min(ranked.len())];
    let found = truth
        .iter()
        .filter(|t| top.iter().any(|p| same(p, t)))
        .count();
    Some(found as f64 / truth.len() as f64)
}

/// 1 / the rank (1-based) of the best-ranked true name, 0 when none is ranked; None when
/// nothing is true at this level. Unlike recall@k it sees a true name at rank 5 or 300.
pub fn reciprocal_rank(truth: &[String], ranked: &[String]) -> Option<f64> {
    if truth.is_empty() {
        return None;
    }
    let first = ranked.iter().position(|p| truth.iter().any(|t| same(p, t)));
    Some(first.map_or(0.0, |r| 1.0 / (r + 1) as f64))
}

/// 1 when any true name is in the top k.
pub fn hit_at(truth: &[String], ranked: &[String], k: usize) -> Option<f64> {
    recall_at(truth, ranked, k).map(|r| if r > 0.0 { 1.0 } else { 0.0 })
}

/// The result of one decoder at one level.
#[derive(Clone, Debug, PartialEq)]
pub struct LevelScore {
    pub level: Level,
    pub k: usize,
    /// Maps with a truth at this level.
    pub maps: usize,
    /// Mean recall@k and hit@k over those maps.
    pub recall: f64,
    pub hit: f64,
    /// Per map (None: no truth at this level).
    pub per_map: Vec<Option<f64>>,
    /// Mean recall@k of the permutation null, and p = (#null ≥ observed + 1) / (n + 1).
    pub null_recall: f64,
    pub p: f64,
    /// Mean reciprocal rank of the best-ranked true name over those maps.
    pub mrr: f64,
}

/// Recall@k of `preds` against `truth` (same order), with a null made by shuffling the
/// predictions across maps `n_perm` times (a seeded Fisher–Yates, so reruns agree).
pub fn score_level(
    level: Level,
    k: usize,
    truth: &[Truth],
    preds: &[Prediction],
    n_perm: usize,
    seed: u64,
) -> LevelScore {
    assert_eq!(truth.len(), preds.len(), "one prediction per map");
    let mean_recall = |order: &[usize]| -> f64 {
        let vals: Vec<f64> = truth
            .iter()
            .zip(order)
            .filter_map(|(t, &j)| recall_at(level.truth(t), level.ranked(&preds[j]), k))
            .collect();
        if vals.is_empty() {
            0.0
        } else {
            vals.iter().sum::<f64>() / vals.len() as f64
        }
    };
    let identity: Vec<usize> = (0..truth.len()).collect();
    let per_map: Vec<Option<f64>> = truth
        .iter()
        .zip(preds)
        .map(|(t, p)| recall_at(level.truth(t), level.ranked(p), k))
        .collect();
    let hits: Vec<f64> = truth
        .iter()
        .zip(preds)
        .filter_map(|(t, p)| hit_at(level.truth(t), level.ranked(p), k))
        .collect();
    let observed = mean_recall(&identity);
    let rr: Vec<f64> = truth
        .iter()
        .zip(preds)
        .filter_map(|(t, p)| reciprocal_rank(level.truth(t), level.ranked(p)))
        .collect();
    let mut rng = SplitMix64(seed);
    let mut order = identity.clone();
    let (mut null_sum, mut at_least) = (0.0, 0usize);
    for _ in 0..n_perm {
        for i in (1..order.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        let r = mean_recall(&order);
        null_sum += r;
        if r >= observed - 1e-12 {
            at_least += 1;
        }
    }
    LevelScore {
        level,
        k,
        maps: hits.len(),
        recall: observed,
        hit: if hits.is_empty() {
            0.0
        } else {
            hits.iter().sum::<f64>() / hits.len() as f64
        },
        per_map,
        null_recall: if n_perm > 0 {
            null_sum / n_perm as f64
        } else {
            f64::NAN
        },
        p: (at_least + 1) as f64 / (n_perm + 1) as f64,
        mrr: if rr.is_empty() {
            0.0
        } else {
            rr.iter().sum::<f64>() / rr.len() as f64
        },
    }
}

/// Reads `truth.tsv`: a header naming `path` and `task` (or `tasks`), optionally `concepts`
/// and `domains`; several names in a cell are separated by `;`. Relative paths are taken from
/// the file's folder.
pub fn read_truth(path: &Path) -> Result<Vec<Truth>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        return Err(Error::input(
            path,
            "empty truth file; write a header `path<TAB>task[<TAB>concepts<TAB>domains]` and one row per map",
        ));
    };
    let cols: Vec<String> = header
        .split('\t')
        .map(|c| c.trim().to_lowercase())
        .collect();
    let find = |names: &[&str]| cols.iter().position(|c| names.contains(&c.as_str()));
    let (Some(pc), Some(tc)) = (find(&["path", "map"]), find(&["task", "tasks"])) else {
        return Err(Error::input(
            path,
            format!(
                "header {cols:?} lacks `path` and `task` columns; the file is tab-separated: \
                 path<TAB>task[<TAB>concepts<TAB>domains]"
            ),
        ));
    };
    let cc = find(&["concept", "concepts"]);
    let dc = find(&["domain", "domains"]);
    let base = path.parent().unwrap_or(Path::new("."));
    let names = |cell: Option<&str>| -> Vec<String> {
        cell.unwrap_or("")
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    };
    let mut rows = Vec::new();
    for (i, line) in lines {
        let cells: Vec<&str> = line.split('\t').collect();
        let map = cells.get(pc).map(|s| s.trim()).unwrap_or("");
        if map.is_empty() {
            return Err(Error::input(
                path,
                format!("line {}: no map path; every row names a NIfTI map", i + 1),
            ));
        }
        let map = PathBuf::from(map);
        rows.push(Truth {
            map: if map.is_absolute() {
                map
            } else {
                base.join(map)
            },
            tasks: names(cells.get(tc).copied()),
            concepts: names(cc.and_then(|c| cells.get(c).copied())),
            domains: names(dc.and_then(|c| cells.get(c).copied())),
        });
    }
    if rows.is_empty() {
        return Err(Error::input(
            path,
            "no rows after the header; add one row per map",
        ));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn recall_counts_true_names_in_the_top_k() {
        let ranked = s(&["a", "B", "c", "d", "e"]);
        assert_eq!(recall_at(&s(&["b", "e"]), &ranked, 4), Some(0.5));
        assert_eq!(recall_at(&s(&["b", "e"]), &ranked, 5), Some(1.0));
        assert_eq!(hit_at(&s(&["x", "e"]), &ranked, 4), Some(0.0));
        assert_eq!(recall_at(&[], &ranked, 4), None);
    }

    #[test]
    fn reciprocal_rank_sees_past_the_top_k() {
        let ranked = s(&["a", "B", "c", "d", "e"]);
        assert_eq!(reciprocal_rank(&s(&["e", "b"]), &ranked), Some(0.5));
        assert_eq!(reciprocal_rank(&s(&["e"]), &ranked), Some(0.2));
        assert_eq!(reciprocal_rank(&s(&["x"]), &ranked), Some(0.0));
        assert_eq!(reciprocal_rank(&[], &ranked), None);
    }

    #[test]
    fn null_of_identical_predictions_is_the_observed_value() {
        let truth: Vec<Truth> = (0..5)
            .map(|i| Truth {
                map: format!("m{i}").into(),
                tasks: s(&["t"]),
                concepts: vec![],
                domains: vec![],
            })
            .collect();
        let preds = vec![
            Prediction {
                tasks: s(&["t", "u"]),
                ..Default::default()
            };
            5
        ];
        let r = score_level(Level::Task, 1, &truth, &preds, 100, 7);
        assert_eq!((r.recall, r.null_recall, r.p), (1.0, 1.0, 1.0));
        // Nothing true at the concept level: no maps, recall 0, not NaN.
        let c = score_level(Level::Concept, 4, &truth, &preds, 10, 7);
        assert_eq!((c.maps, c.recall), (0, 0.0));
    }

    #[test]
    fn a_perfect_decoder_beats_its_shuffles() {
        let n = 8;
        let truth: Vec<Truth> = (0..n)
            .map(|i| Truth {
                map: format!("m{i}").into(),
                tasks: vec![format!("t{i}")],
                concepts: vec![],
                domains: vec![],
            })
            .collect();
        let preds: Vec<Prediction> = (0..n)
            .map(|i| Prediction {
                tasks: vec![format!("t{i}")],
                ..Default::default()
            })
            .collect();
        let r = score_level(Level::Task, 1, &truth, &preds, 1000, 1);
        assert_eq!(r.recall, 1.0);
        // Only shuffles that fix every map reach 1: about 1000/8! of them.
        assert!(r.p < 0.01 && r.null_recall < 0.2, "{r:?}");
    }
}
