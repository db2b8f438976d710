//! The decoding vocabulary: task names, their embeddings in the language model's space
//! (α·name + (1−α)·definition, braindec's "combined" embedding) and the prior P(T).

use crate::error::{Error, IoContext, Result};
use crate::io::{read_npy_f32, write_atomic, write_npy_f32};
use rayon::prelude::*;
use std::io::Write;
use std::path::Path;

/// Inverse temperature of the prior's softmax over tasks (braindec uses 10).
pub const PRIOR_SCALE: f64 = 10.0;

#[derive(Clone, Debug)]
pub struct Vocabulary {
    pub names: Vec<String>,
    /// names.len() × dim, row-major, in the language model's space.
    pub emb: Vec<f32>,
    pub dim: usize,
    /// P(T), one per name, summing to 1.
    pub prior: Vec<f64>,
}

impl Vocabulary {
    /// Reads vocabulary.txt (one name per line), the embeddings (.npy, n × d) and the prior
    /// (.npy, n or n × 1), checking that they describe the same n tasks.
    pub fn read(names: &Path, emb: &Path, prior: &Path) -> Result<Vocabulary> {
        let text = std::fs::read_to_string(names).at(names)?;
        let names_v: Vec<String> = text
            .lines()
            .map(|l| l.trim_end_matches('\r').to_string())
            .filter(|l| !l.trim().is_empty())
            .collect();
        if names_v.is_empty() {
            return Err(Error::input(
                names,
                "the vocabulary is empty; it needs one task name per line (make one with `niclip vocab`)",
            ));
        }
        let e = read_npy_f32(emb)?;
        if e.rows != names_v.len() {
            return Err(Error::input(
                emb,
                format!(
                    "has {} rows but {} names {}; the embeddings must have one row per name, in the same order",
                    e.rows,
                    names_v.len(),
                    names.display()
                ),
            ));
        }
        // Rows of width 0 hold no embedding (and cannot be split into rows); checked_mul, as
        // a hostile shape's product may overflow.
        if e.cols == 0 || e.rows.checked_mul(e.cols) != Some(e.data.len()) {
            return Err(Error::input(
                emb,
                format!(
                    "holds {} values per row ({} values for {} rows); re-embed the vocabulary \
                     with `niclip vocab`",
                    e.cols,
                    e.data.len(),
                    e.rows
                ),
            ));
        }
        if let Some(r) = e
            .data
            .chunks(e.cols)
            .position(|row| row.iter().any(|x| !x.is_finite()))
        {
            return Err(Error::input(
                emb,
                format!(
                    "row {r} ({}) holds NaN or Inf; re-embed the vocabulary",
                    names_v[r]
                ),
            ));
        }
        let p = read_npy_f32(prior)?;
        if p.data.len() != names_v.len() || (p.cols != 1 && p.rows != 1) {
            return Err(Error::input(
                prior,
                format!(
                    "holds {}×{} values but {} has {} names; the prior needs one value per name",
                    p.rows,
                    p.cols,
                    names.display(),
                    names_v.len()
                ),
            ));
        }
        if p.data
            .iter()
            .any(|&x| !(x.is_finite() && x > 0.0 && x < 1.0))
        {
            return Err(Error::input(
                prior,
                "every prior probability must lie in (0, 1); make the prior with `niclip vocab`",
            ));
        }
        Ok(Vocabulary {
            names: names_v,
            dim: e.cols,
            emb: e.data,
            prior: p.data.iter().map(|&x| x as f64).collect(),
        })
    }

    /// Writes DIR/vocabulary.txt, DIR/vocabulary_emb.npy and DIR/vocabulary_prior.npy.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).at(dir)?;
        let names = dir.join("vocabulary.txt");
        write_atomic(&names, |w| {
            for n in &self.names {
                writeln!(w, "{n}").at(&names)?;
            }
            Ok(())
        })?;
        write_npy_f32(
            &dir.join("vocabulary_emb.npy"),
            &self.emb,
            self.names.len(),
            self.dim,
        )?;
        let prior: Vec<f32> = self.prior.iter().map(|&p| p as f32).collect();
        write_npy_f32(
            &dir.join("vocabulary_prior.npy"),
            &prior,
            self.names.len(),
            1,
        )
    }
}

/// α·name + (1−α)·definition, row by row.
pub fn combine(name_emb: &[f32], def_emb: &[f32], alpha: f32) -> Vec<f32> {
    assert_eq!(name_emb.len(), def_emb.len());
    name_emb
        .iter()
        .zip(def_emb)
        .map(|(n, d)| alpha * n + (1.0 - alpha) * d)
        .collect()
}

fn unit_rows(x: &[f32], dim: usize) -> Vec<f64> {
    x.chunks(dim)
        .flat_map(|r| {
            let norm = r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            let inv = if norm > 0.0 { 1.0 / norm } else { 0.0 };
            r.iter().map(move |&v| v as f64 * inv)
        })
        .collect()
}

/// P(T) = mean over documents d of softmax_T(10 · cos(e_T, e_d)), in the language model's space.
/// `tasks` is T × dim, `documents` n × dim.
pub fn prior_from_documents(tasks: &[f32], documents: &[f32], dim: usize) -> Vec<f64> {
    let t = tasks.len() / dim;
    let n = documents.len() / dim;
    let tu = unit_rows(tasks, dim);
    let sums = documents
        .par_chunks(dim * 64)
        .map(|block| {
            let du = unit_rows(block, dim);
            let mut acc = vec![0.0f64; t];
            let mut logits = vec![0.0f64; t];
            for d in du.chunks(dim) {
                for (l, task) in logits.iter_mut().zip(tu.chunks(dim)) {
                    *l = PRIOR_SCALE * task.iter().zip(d).map(|(a, b)| a * b).sum::<f64>();
                }
                let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = logits.iter().map(|l| (l - max).exp()).sum();
                for (a, l) in acc.iter_mut().zip(&logits) {
                    *a += (l - max).exp() / z;
                }
            }
            acc
        })
        .reduce(
            || vec![0.0; t],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        );
    sums.into_iter().map(|s| s / n as f64).collect()
}

/// 1/T for every task.
pub fn uniform_prior(t: usize) -> Vec<f64> {
    vec![1.0 / t as f64; t]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_embedding_weights_name_and_definition() {
        assert_eq!(combine(&[1.0, 0.0], &[0.0, 2.0], 0.5), vec![0.5, 1.0]);
        assert_eq!(combine(&[1.0, 0.0], &[0.0, 2.0], 1.0), vec![1.0, 0.0]);
    }

    #[test]
    fn prior_is_the_mean_softmax_over_documents() {
        // Two tasks along the axes; one document on each axis.
        let tasks = [1.0, 0.0, 0.0, 3.0];
        let docs = [2.0, 0.0, 0.0, 1.0];
        let p = prior_from_documents(&tasks, &docs, 2);
        let a = 1.0 / (1.0 + (-10.0f64).exp());
        assert!((p[0] - (a + (1.0 - a)) / 2.0).abs() < 1e-12);
        assert!((p[0] + p[1] - 1.0).abs() < 1e-12);
        // A document nearer task 0 moves mass to it.
        let p = prior_from_documents(&tasks, &[1.0, 0.1], 2);
        assert!(p[0] > 0.99);
    }
}
