//! Retrieval metrics of the paper on a similarity matrix `sim` (n × n, rows = images, columns =
//! texts, the pair of row i is column i), and the metrics CSV (fold, split, metric, value) that
//! `train`, `train --cv` and `eval retrieval` write.

use crate::error::{IoContext, Result};
use rayon::prelude::*;
use std::io::Write;
use std::path::Path;

/// For each row, how many columns score strictly above the paired one.
fn rank_of_pair(sim: &[f32], n: usize) -> Vec<usize> {
    sim.par_chunks(n)
        .enumerate()
        .map(|(i, row)| row.iter().filter(|&&v| v > row[i]).count())
        .collect()
}

/// Recall@k: the share of rows whose paired text is among the k most similar texts.
/// (Ties with the pair count in its favour; on real-valued similarities there are none.)
pub fn recall_at_k(sim: &[f32], n: usize, k: usize) -> f64 {
    assert_eq!(sim.len(), n * n);
    if n == 0 {
        return f64::NAN;
    }
    let hits = rank_of_pair(sim, n).iter().filter(|&&r| r < k).count();
    hits as f64 / n as f64
}

/// Mix&Match: per row, the share of the other texts that the paired text beats (strictly);
/// the mean over rows × 100.
pub fn mix_match(sim: &[f32], n: usize) -> f64 {
    assert_eq!(sim.len(), n * n);
    if n < 2 {
        return f64::NAN;
    }
    let shares: Vec<f64> = sim
        .par_chunks(n)
        .enumerate()
        .map(|(i, row)| {
            let beaten = row
                .iter()
                .enumerate()
                .filter(|&(j, &v)| j != i && row[i] > v)
                .count();
            beaten as f64 / (n - 1) as f64
        })
        .collect();
    shares.iter().sum::<f64>() / n as f64 * 100.0
}

/// Similarity of unit embeddings: images (n × k) against texts (n × k), n × n.
pub fn similarity(images: &[f32], texts: &[f32], n: usize, k: usize) -> Vec<f32> {
    let mut sim = vec![0.0f32; n * n];
    super::ops::matmul_nt(n, n, k, images, texts, &mut sim, false);
    sim
}

/// Mean and population standard deviation (numpy's default, ddof = 0).
pub fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// Recall@10, Recall@100 and Mix&Match of one set of pairs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Retrieval {
    pub recall_at_10: f64,
    pub recall_at_100: f64,
    pub mix_match: f64,
}

impl Retrieval {
    /// The metrics of an n × n similarity matrix.
    pub fn of(sim: &[f32], n: usize) -> Retrieval {
        Retrieval {
            recall_at_10: recall_at_k(sim, n, 10),
            recall_at_100: recall_at_k(sim, n, 100),
            mix_match: mix_match(sim, n),
        }
    }

    /// The metrics' names in the CSV, in the CSV's order.
    pub const NAMES: [&'static str; 3] = ["recall@10", "recall@100", "mix_match"];

    /// Each metric with its name, in the CSV's order.
    pub fn named(&self) -> [(&'static str, f64); 3] {
        let values = [self.recall_at_10, self.recall_at_100, self.mix_match];
        std::array::from_fn(|i| (Self::NAMES[i], values[i]))
    }

    /// The CSV rows of these metrics for `fold` and `split`.
    pub fn rows(&self, fold: &str, split: &str) -> Vec<Row> {
        let row = |(name, v): (&str, f64)| (fold.to_string(), split.to_string(), name.into(), v);
        self.named().into_iter().map(row).collect()
    }
}

/// One row of a metrics CSV: fold, split, metric, value.
pub type Row = (String, String, String, f64);

/// Writes a metrics CSV (atomically): a header, then the rows in order.
pub fn write_metrics(path: &Path, rows: &[Row]) -> Result<()> {
    crate::io::write_atomic(path, |w| {
        writeln!(w, "fold,split,metric,value").at(path)?;
        for (f, s, m, v) in rows {
            writeln!(w, "{f},{s},{m},{v}").at(path)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_cases() {
        // Row 0: pair best; row 1: pair second; row 2: pair last.
        let sim = [0.9, 0.1, 0.2, 0.8, 0.5, 0.1, 0.7, 0.6, 0.0];
        assert_eq!(recall_at_k(&sim, 3, 1), 1.0 / 3.0);
        assert_eq!(recall_at_k(&sim, 3, 2), 2.0 / 3.0);
        assert!((mix_match(&sim, 3) - 100.0 * (1.0 + 0.5 + 0.0) / 3.0).abs() < 1e-12);
    }
}
