//! The paper's decoding equations (braindec `image_to_labels_hierarchical`), for many maps at
//! once:
//!   similarity  = s · cos(image, task)                       (the towers' outputs are unit rows)
//!   P(A|T)      = softmax over tasks of the similarity       (likelihood)
//!   P(T|A)      = P(A|T)·P(T) / Σ_T P(A|T)·P(T)              (posterior)
//!   BF          = [P(T|A)/(1−P(T|A))] / [P(T)/(1−P(T))]      (Bayes factor)
//!   P(C|A)      = 1 − Π_{t measures C} (1 − P(t|A))          (noisy-OR, empty set → 0)
//!   P(D|A)      = 1 − Π_{c in D} (1 − P(c|A))
//! Everything is accumulated in f64 and reported in f32.

use rayon::prelude::*;

/// Per task, for one map (all in vocabulary order).
#[derive(Clone, Debug, PartialEq)]
pub struct TaskPosterior {
    pub similarity: Vec<f32>,
    pub likelihood: Vec<f32>,
    pub joint: Vec<f32>,
    pub posterior: Vec<f32>,
    pub bayes_factor: Vec<f32>,
}

/// Posterior over tasks from the scaled similarities of one map (`logits`, one per task).
pub fn task_posterior(logits: &[f32], prior: &[f64]) -> TaskPosterior {
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let exps: Vec<f64> = logits.iter().map(|&x| (x as f64 - max).exp()).collect();
    let z: f64 = exps.iter().sum();
    let likelihood: Vec<f64> = exps.iter().map(|e| e / z).collect();
    let joint: Vec<f64> = likelihood.iter().zip(prior).map(|(l, p)| l * p).collect();
    let total: f64 = joint.iter().sum();
    let posterior: Vec<f64> = joint.iter().map(|j| j / total).collect();
    let bayes_factor = posterior
        .iter()
        .zip(prior)
        .map(|(&q, &p)| ((q / (1.0 - q)) / (p / (1.0 - p))) as f32)
        .collect();
    let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    TaskPosterior {
        similarity: logits.to_vec(),
        likelihood: f(&likelihood),
        joint: f(&joint),
        posterior: f(&posterior),
        bayes_factor,
    }
}

/// Posteriors for `n` maps whose scaled similarities are the rows of `logits` (n × T).
pub fn task_posteriors(logits: &[f32], n: usize, prior: &[f64]) -> Vec<TaskPosterior> {
    let t = prior.len();
    assert_eq!(logits.len(), n * t, "logits must be n × T");
    logits
        .par_chunks(t.max(1))
        .map(|row| task_posterior(row, prior))
        .collect()
}

/// Noisy-OR: for each group, 1 − Π over its members of (1 − `p[member]`); an empty group gives 0.
pub fn noisy_or(p: &[f32], groups: &[Vec<u32>]) -> Vec<f32> {
    groups
        .iter()
        .map(|members| {
            let none: f64 = members
                .iter()
                .map(|&m| 1.0 - p[m as usize] as f64)
                .product();
            (1.0 - none) as f32
        })
        .collect()
}

/// Indices of `values` by decreasing value; ties keep the lower index first.
pub fn ranking(values: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posterior_is_likelihood_times_prior_renormalised() {
        let prior = [0.5, 0.25, 0.25];
        let p = task_posterior(&[1.0, 2.0, 3.0], &prior);
        let e: Vec<f64> = [1.0f64, 2.0, 3.0].iter().map(|x| x.exp()).collect();
        let z: f64 = e.iter().sum();
        let joint: Vec<f64> = (0..3).map(|i| e[i] / z * prior[i]).collect();
        let tot: f64 = joint.iter().sum();
        for i in 0..3 {
            assert!((p.likelihood[i] as f64 - e[i] / z).abs() < 1e-7);
            assert!((p.joint[i] as f64 - joint[i]).abs() < 1e-7);
            let q = joint[i] / tot;
            assert!((p.posterior[i] as f64 - q).abs() < 1e-7);
            let bf = (q / (1.0 - q)) / (prior[i] / (1.0 - prior[i]));
            assert!((p.bayes_factor[i] as f64 - bf).abs() < 1e-5 * bf);
        }
        // A uniform prior leaves the likelihood as the posterior.
        let u = task_posterior(&[0.3, -1.0, 2.0], &[1.0 / 3.0; 3]);
        for i in 0..3 {
            assert!((u.posterior[i] - u.likelihood[i]).abs() < 1e-7);
        }
    }

    #[test]
    fn large_similarities_do_not_overflow() {
        let p = task_posterior(&[1000.0, 999.0], &[0.5, 0.5]);
        assert!(p.posterior.iter().all(|x| x.is_finite()));
        assert!((p.posterior[0] - 1.0 / (1.0 + (-1.0f32).exp())).abs() < 1e-6);
    }

    #[test]
    fn noisy_or_of_members_and_of_nothing() {
        let p = [0.5, 0.2, 0.1];
        let g = noisy_or(&p, &[vec![0, 1], vec![], vec![2]]);
        assert!((g[0] - (1.0 - 0.5 * 0.8)).abs() < 1e-7);
        assert_eq!(g[1], 0.0);
        assert!((g[2] - 0.1).abs() < 1e-7);
    }

    #[test]
    fn ranking_is_descending_and_stable() {
        assert_eq!(ranking(&[0.1, 0.3, 0.3, 0.2]), vec![1, 2, 3, 0]);
    }
}
