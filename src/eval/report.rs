//! The `eval decoding` job: niclip and the baselines ranked on the maps of a truth file, scored
//! at each level against their permutation nulls, as a table and as `summary.csv` and
//! `per_map.csv`.

use super::decoding::{recall_at, same};
use super::predict::{baseline_predictions, niclip_predictions};
use super::{score_level, Level, LevelScore, Prediction, Truth};
use crate::decode::{Decoder, Variant};
use crate::error::{IoContext, Result};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Every decoder's rankings and scores on one truth file.
pub struct DecodingEval {
    pub truth: Vec<Truth>,
    /// Per decoder (niclip first, then the baselines in the order given), a ranking per map.
    pub decoders: Vec<(String, Vec<Prediction>)>,
    /// Per decoder and level (in `Level::ALL` order), its score at the authors' k.
    pub scores: Vec<(String, LevelScore)>,
}

/// Scores `decoder` (niclip, each map prepared as `variant` says) and the baseline models at
/// `baselines` on the maps of `truth`
/// ([`read_truth`](super::read_truth)), each against `permutations` shuffles of its predictions
/// (seeded by `seed`).
pub fn evaluate(
    truth: Vec<Truth>,
    decoder: &Decoder,
    variant: &Variant,
    baselines: &[PathBuf],
    permutations: usize,
    seed: u64,
) -> Result<DecodingEval> {
    let niclip = niclip_predictions(decoder, variant, &truth)?;
    let mut decoders = vec![("niclip".to_string(), niclip)];
    for b in baselines {
        decoders.push(baseline_predictions(decoder, b, &truth)?);
    }
    let mut scores = Vec::new();
    for (name, preds) in &decoders {
        for level in Level::ALL {
            let s = score_level(level, level.default_k(), &truth, preds, permutations, seed);
            scores.push((name.clone(), s));
        }
    }
    Ok(DecodingEval {
        truth,
        decoders,
        scores,
    })
}

impl DecodingEval {
    /// The scores as an aligned table, a header line and a line per decoder and level.
    pub fn table(&self) -> String {
        let mut t = format!(
            "{:<28} {:<8} {:>2} {:>4} {:>8} {:>6} {:>9} {:>7} {:>9} {:>6}\n",
            "decoder", "level", "k", "maps", "recall", "hit", "null", "p", "obs/null", "mrr"
        );
        for (name, s) in &self.scores {
            let row: Vec<String> = cells(name, s).into_iter().map(|c| c.0).collect();
            t += &row.join(" ");
            t.push('\n');
        }
        t
    }

    /// Writes `summary.csv` (the table), `per_map.csv` (each decoder's top k beside the
    /// truth, per map and level) and `per_term.csv` (per name: how often predicted, true and
    /// both) into `dir`; returns their paths.
    pub fn write_csvs(&self, dir: &Path) -> Result<[PathBuf; 3]> {
        std::fs::create_dir_all(dir).at(dir)?;
        let summary = dir.join("summary.csv");
        write_text(&summary, &self.summary_csv())?;
        let per_map = dir.join("per_map.csv");
        write_text(&per_map, &self.per_map_csv())?;
        let per_term = dir.join("per_term.csv");
        write_text(&per_term, &self.per_term_csv())?;
        Ok([summary, per_map, per_term])
    }

    /// Per decoder, level and name: the maps whose top k holds it (predicted), whose truth
    /// holds it (true), and both (correct): which terms a decoder ever predicts, and how often
    /// rightly. Most predicted first.
    fn per_term_csv(&self) -> String {
        let mut text = String::from("decoder,level,name,predicted,true,correct\n");
        for (name, preds) in &self.decoders {
            for level in Level::ALL {
                let k = level.default_k();
                // name key (trimmed, lower case) → (as first seen, predicted, true, correct)
                let mut terms: HashMap<String, (String, usize, usize, usize)> = HashMap::new();
                for (t, p) in self.truth.iter().zip(preds) {
                    let ranked = level.ranked(p);
                    let truth = level.truth(t);
                    let mut count = |n: &String, predicted: bool, true_: bool| {
                        let e = terms
                            .entry(n.trim().to_lowercase())
                            .or_insert_with(|| (n.clone(), 0, 0, 0));
                        e.1 += predicted as usize;
                        e.2 += true_ as usize;
                        e.3 += (predicted && true_) as usize;
                    };
                    let top = &ranked[..k.min(ranked.len())];
                    for n in top {
                        count(n, true, truth.iter().any(|x| same(x, n)));
                    }
                    // True names outside the top k: counted as true only.
                    for n in truth.iter().filter(|x| !top.iter().any(|p| same(p, x))) {
                        count(n, false, true);
                    }
                }
                let mut rows: Vec<_> = terms.into_values().collect();
                rows.sort_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)).then(a.0.cmp(&b.0)));
                for (term, predicted, truths, correct) in rows {
                    let _ = writeln!(
                        text,
                        "{name},{},{},{predicted},{truths},{correct}",
                        level.name(),
                        csv_cell(&term)
                    );
                }
            }
        }
        text
    }

    fn summary_csv(&self) -> String {
        let mut text = String::from("decoder,level,k,maps,recall,hit,null_recall,p,ratio,mrr\n");
        for (name, s) in &self.scores {
            let row: Vec<String> = cells(name, s).into_iter().map(|c| c.1).collect();
            text += &row.join(",");
            text.push('\n');
        }
        text
    }

    fn per_map_csv(&self) -> String {
        let mut text = String::from("decoder,map,level,truth,top_k,recall\n");
        for (name, preds) in &self.decoders {
            for (t, p) in self.truth.iter().zip(preds) {
                for level in Level::ALL {
                    let k = level.default_k();
                    let top = level.ranked(p);
                    let r = recall_at(level.truth(t), top, k);
                    let _ = writeln!(
                        text,
                        "{name},{},{},{},{},{}",
                        csv_cell(&t.map.display().to_string()),
                        level.name(),
                        csv_cell(&level.truth(t).join(";")),
                        csv_cell(&top[..k.min(top.len())].join(";")),
                        r.map(|x| x.to_string()).unwrap_or_default()
                    );
                }
            }
        }
        text
    }
}

fn write_text(path: &Path, text: &str) -> Result<()> {
    crate::io::write_atomic(path, |w| {
        std::io::Write::write_all(w, text.as_bytes()).at(path)
    })
}

/// A score's columns, each as the table shows it (padded, rounded) and as the CSV holds it.
fn cells(name: &str, s: &LevelScore) -> [(String, String); 10] {
    let r = ratio(s);
    [
        (format!("{name:<28}"), name.to_string()),
        (format!("{:<8}", s.level.name()), s.level.name().to_string()),
        (format!("{:>2}", s.k), s.k.to_string()),
        (format!("{:>4}", s.maps), s.maps.to_string()),
        (format!("{:>8.3}", s.recall), s.recall.to_string()),
        (format!("{:>6.3}", s.hit), s.hit.to_string()),
        (format!("{:>9.3}", s.null_recall), s.null_recall.to_string()),
        (format!("{:>7.4}", s.p), s.p.to_string()),
        (format!("{r:>9}"), r),
        (format!("{:>6.3}", s.mrr), s.mrr.to_string()),
    ]
}

/// Observed / null mean recall ("inf" when only the null never finds anything; empty when
/// neither finds anything, as 0/0 says nothing).
fn ratio(s: &LevelScore) -> String {
    if s.maps == 0 || (s.recall == 0.0 && s.null_recall == 0.0) {
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
