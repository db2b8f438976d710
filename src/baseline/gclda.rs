//! GC-LDA (Rubin et al. 2017) as NiMARE 0.22.1's `GCLDAModel`: topics over words and over
//! peaks, each topic's peaks drawn from `n_regions` Gaussian sub-regions (mirrored pairs across
//! x = 0 when `symmetric`), fitted by collapsed Gibbs sampling; and `gclda_decode_map`.
//!
//! One iteration, as NiMARE's `_update`: resample every word token's topic z (given the peak
//! topic counts of its document), then every peak's topic y and sub-region r (given the
//! sub-region densities at the start of the sweep), then re-estimate every sub-region's mean and
//! covariance (shrunk towards `roi_size`·I with weight n / (n + dobs)). The sweeps are
//! sequential (exact collapsed Gibbs); what parallelises without changing the chain — the
//! Gaussian densities of all peaks, the sufficient statistics, the log-likelihood — runs on
//! all threads. The random stream is our own (xoshiro256++), so chains differ from NiMARE's
//! draw by draw but follow the same distribution.

use crate::error::{Error, Result};
use rayon::prelude::*;

/// NiMARE's defaults, with the authors' topic count, regions, symmetry and iterations.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Params {
    pub n_topics: usize,
    pub n_regions: usize,
    pub symmetric: bool,
    pub alpha: f64,
    pub beta: f64,
    pub gamma: f64,
    pub delta: f64,
    pub dobs: f64,
    pub roi_size: f64,
    pub n_iters: usize,
    pub seed: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            n_topics: 25,
            n_regions: 4,
            symmetric: true,
            alpha: 0.1,
            beta: 0.01,
            gamma: 0.01,
            delta: 1.0,
            dobs: 25.0,
            roi_size: 50.0,
            n_iters: 1000,
            seed: 1,
        }
    }
}

/// xoshiro256++ seeded through splitmix64: small, fast, and good enough for Gibbs sampling.
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng([next(), next(), next(), next()])
    }
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let out = (s[0].wrapping_add(s[3])).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }
    /// Uniform in [0, 1).
    #[inline]
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// Uniform integer in [0, n).
    #[inline]
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
}

/// NiMARE's `_sample_from_unnormalized`: the first index whose running sum exceeds u·total.
#[inline]
fn sample(weights: &[f64], rng: &mut Rng) -> usize {
    let total: f64 = weights.iter().sum();
    let threshold = rng.uniform() * total;
    let mut cum = 0.0;
    for (i, &w) in weights.iter().enumerate() {
        cum += w;
        if threshold < cum {
            return i;
        }
    }
    weights.len() - 1
}

/// Inverse and log-determinant of a 3×3 covariance by the adjugate (NiMARE's `_inv3_logdet`).
pub fn inv3_logdet(s: &[[f64; 3]; 3]) -> Option<([[f64; 3]; 3], f64)> {
    let c00 = s[1][1] * s[2][2] - s[1][2] * s[2][1];
    let c01 = s[0][2] * s[2][1] - s[0][1] * s[2][2];
    let c02 = s[0][1] * s[1][2] - s[0][2] * s[1][1];
    let c10 = s[1][2] * s[2][0] - s[1][0] * s[2][2];
    let c11 = s[0][0] * s[2][2] - s[0][2] * s[2][0];
    let c12 = s[0][2] * s[1][0] - s[0][0] * s[1][2];
    let c20 = s[1][0] * s[2][1] - s[1][1] * s[2][0];
    let c21 = s[0][1] * s[2][0] - s[0][0] * s[2][1];
    let c22 = s[0][0] * s[1][1] - s[0][1] * s[1][0];
    let det = s[0][0] * c00 + s[0][1] * c10 + s[0][2] * c20;
    if !(det > 0.0) {
        return None;
    }
    let inv = [
        [c00 / det, c01 / det, c02 / det],
        [c10 / det, c11 / det, c12 / det],
        [c20 / det, c21 / det, c22 / det],
    ];
    Some((inv, det.ln()))
}

/// The spatial part of a fitted model: one Gaussian per topic and sub-region.
#[derive(Clone, Debug)]
pub struct Regions {
    pub n_topics: usize,
    pub n_regions: usize,
    /// `[t][r]` mean (mm).
    pub mu: Vec<[f64; 3]>,
    /// `[t][r]` precision (inverse covariance).
    pub precision: Vec<[[f64; 3]; 3]>,
    /// `[t][r]` −½(3 ln 2π + ln det Σ).
    pub log_norm: Vec<f64>,
}

impl Regions {
    /// The density of sub-region (t, r) at `x`, as NiMARE's `_jit_*` loops compute it.
    #[inline]
    pub fn density(&self, tr: usize, x: &[f64; 3]) -> f64 {
        let (m, p) = (&self.mu[tr], &self.precision[tr]);
        let mut quad = 0.0;
        for i in 0..3 {
            let ci = x[i] - m[i];
            let mut inner = 0.0;
            for j in 0..3 {
                inner += p[i][j] * (x[j] - m[j]);
            }
            quad += ci * inner;
        }
        (self.log_norm[tr] - 0.5 * quad).exp()
    }

    /// p(topic | voxel) at each point (rows: points, `n_topics` columns): the sum of the topic's
    /// sub-region densities, normalised over topics (0 where every density underflows).
    pub fn p_topic_g_voxel(&self, points: &[[f64; 3]]) -> Vec<f64> {
        let (nt, nr) = (self.n_topics, self.n_regions);
        let mut out = vec![0f64; points.len() * nt];
        out.par_chunks_mut(nt)
            .zip(points.par_iter())
            .for_each(|(row, x)| {
                for (t, slot) in row.iter_mut().enumerate() {
                    *slot = (0..nr).map(|r| self.density(t * nr + r, x)).sum();
                }
                let s: f64 = row.iter().sum();
                row.iter_mut().for_each(|v| {
                    *v /= s;
                    if !v.is_finite() {
                        *v = 0.0;
                    }
                });
            });
        out
    }
}

/// p(word | topic) = n_wt / Σ_w n_wt (no smoothing; 0 for an empty topic). `n_wt`: words × topics.
pub fn p_word_g_topic(n_wt: &[f64], n_topics: usize) -> Vec<f64> {
    let mut col = vec![0f64; n_topics];
    for row in n_wt.chunks(n_topics) {
        for t in 0..n_topics {
            col[t] += row[t];
        }
    }
    n_wt.chunks(n_topics)
        .flat_map(|row| {
            (0..n_topics).map(|t| {
                let v = row[t] / col[t];
                if v.is_finite() {
                    v
                } else {
                    0.0
                }
            })
        })
        .collect()
}

/// `gclda_decode_map`: τ = p(t|v)ᵀ·map, word weights = p(w|t)·τ.
pub fn decode_map(p_tv: &[f64], p_wt: &[f64], n_topics: usize, map: &[f32]) -> Vec<f64> {
    let tau = p_tv
        .par_chunks(n_topics * 4096)
        .zip(map.par_chunks(4096))
        .map(|(rows, xs)| {
            let mut acc = vec![0f64; n_topics];
            for (row, &x) in rows.chunks(n_topics).zip(xs) {
                for t in 0..n_topics {
                    acc[t] += row[t] * x as f64;
                }
            }
            acc
        })
        .reduce(
            || vec![0f64; n_topics],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                a
            },
        );
    p_wt.chunks(n_topics)
        .map(|row| row.iter().zip(&tau).map(|(p, t)| p * t).sum())
        .collect()
}

/// The training data: word tokens and peak tokens with their documents.
pub struct Data {
    pub n_docs: usize,
    pub n_words: usize,
    pub wtoken_doc: Vec<u32>,
    pub wtoken_word: Vec<u32>,
    pub ptoken_doc: Vec<u32>,
    pub coords: Vec<[f64; 3]>,
}

/// The sampler's state (NiMARE's `topics` dict).
pub struct Model {
    pub params: Params,
    pub data: Data,
    pub iter: usize,
    rng: Rng,
    wtoken_topic: Vec<u32>,
    peak_topic: Vec<u32>,
    peak_region: Vec<u32>,
    /// `[d][t]`
    n_peak_doc_topic: Vec<i64>,
    /// `[r][t]`
    n_peak_region_topic: Vec<i64>,
    /// `[w][t]`
    pub n_word_word_topic: Vec<i64>,
    /// `[d][t]`
    n_word_doc_topic: Vec<i64>,
    n_word_topic: Vec<i64>,
    pub regions: Regions,
    /// Log-likelihood (x, w, total) after initialisation and after each iteration.
    pub loglikelihood: Vec<[f64; 3]>,
}

impl Model {
    /// NiMARE's initialisation: peaks get uniform random topics and sub-regions (symmetric:
    /// a random pair, the side from the sign of x), words a topic drawn from their document's
    /// peak topic counts + γ.
    pub fn new(params: Params, data: Data) -> Result<Model> {
        let (nt, nr) = (params.n_topics, params.n_regions);
        if nt == 0 || nr == 0 {
            return Err(Error::Usage(
                "GC-LDA needs at least one topic and one region".into(),
            ));
        }
        if params.symmetric && nr % 2 != 0 {
            return Err(Error::Usage(format!(
                "a symmetric GC-LDA model needs an even number of regions, not {nr}; use --n-regions {} or --no-symmetric",
                nr + 1
            )));
        }
        let mut rng = Rng::new(params.seed);
        let np = data.ptoken_doc.len();
        let peak_topic: Vec<u32> = (0..np).map(|_| rng.below(nt) as u32).collect();
        let peak_region: Vec<u32> = if params.symmetric {
            (0..np)
                .map(|p| (2 * rng.below(nr / 2) + (data.coords[p][0] > 0.0) as usize) as u32)
                .collect()
        } else {
            (0..np).map(|_| rng.below(nr) as u32).collect()
        };
        let mut n_peak_doc_topic = vec![0i64; data.n_docs * nt];
        let mut n_peak_region_topic = vec![0i64; nr * nt];
        for p in 0..np {
            let (d, t, r) = (
                data.ptoken_doc[p] as usize,
                peak_topic[p] as usize,
                peak_region[p] as usize,
            );
            n_peak_doc_topic[d * nt + t] += 1;
            n_peak_region_topic[r * nt + t] += 1;
        }
        let nw = data.wtoken_word.len();
        let mut wtoken_topic = vec![0u32; nw];
        let mut n_word_word_topic = vec![0i64; data.n_words * nt];
        let mut n_word_doc_topic = vec![0i64; data.n_docs * nt];
        let mut n_word_topic = vec![0i64; nt];
        let mut probs = vec![0f64; nt];
        for i in 0..nw {
            let (d, w) = (data.wtoken_doc[i] as usize, data.wtoken_word[i] as usize);
            for t in 0..nt {
                probs[t] = n_peak_doc_topic[d * nt + t] as f64 + params.gamma;
            }
            let t = sample(&probs, &mut rng);
            wtoken_topic[i] = t as u32;
            n_word_word_topic[w * nt + t] += 1;
            n_word_topic[t] += 1;
            n_word_doc_topic[d * nt + t] += 1;
        }
        let regions = Regions {
            n_topics: nt,
            n_regions: nr,
            mu: vec![[0.0; 3]; nt * nr],
            precision: vec![[[0.0; 3]; 3]; nt * nr],
            log_norm: vec![0.0; nt * nr],
        };
        Ok(Model {
            params,
            data,
            iter: 0,
            rng,
            wtoken_topic,
            peak_topic,
            peak_region,
            n_peak_doc_topic,
            n_peak_region_topic,
            n_word_word_topic,
            n_word_doc_topic,
            n_word_topic,
            regions,
            loglikelihood: Vec::new(),
        })
    }

    /// Runs iterations up to `params.n_iters`, calling `progress` after each.
    pub fn fit(&mut self, mut progress: impl FnMut(usize, [f64; 3])) -> Result<()> {
        if self.iter == 0 {
            self.update_regions()?;
            let ll = self.log_likelihood();
            self.loglikelihood.push(ll);
        }
        while self.iter < self.params.n_iters {
            self.step()?;
            progress(self.iter, *self.loglikelihood.last().unwrap());
        }
        Ok(())
    }

    /// One iteration: words, peaks, regions, log-likelihood.
    pub fn step(&mut self) -> Result<()> {
        self.iter += 1;
        self.update_words();
        self.update_peaks();
        self.update_regions()?;
        let ll = self.log_likelihood();
        self.loglikelihood.push(ll);
        Ok(())
    }

    fn update_words(&mut self) {
        let nt = self.params.n_topics;
        let (beta, gamma) = (self.params.beta, self.params.gamma);
        let beta_v = beta * self.data.n_words as f64;
        let mut inv_den: Vec<f64> = self
            .n_word_topic
            .iter()
            .map(|&n| 1.0 / (n as f64 + beta_v))
            .collect();
        let mut probs = vec![0f64; nt];
        for i in 0..self.data.wtoken_word.len() {
            let (w, d) = (
                self.data.wtoken_word[i] as usize,
                self.data.wtoken_doc[i] as usize,
            );
            let old = self.wtoken_topic[i] as usize;
            self.n_word_word_topic[w * nt + old] -= 1;
            self.n_word_topic[old] -= 1;
            self.n_word_doc_topic[d * nt + old] -= 1;
            inv_den[old] = 1.0 / (self.n_word_topic[old] as f64 + beta_v);
            let wrow = &self.n_word_word_topic[w * nt..(w + 1) * nt];
            let prow = &self.n_peak_doc_topic[d * nt..(d + 1) * nt];
            for t in 0..nt {
                probs[t] = ((wrow[t] as f64 + beta) * inv_den[t]) * (prow[t] as f64 + gamma);
            }
            let t = sample(&probs, &mut self.rng);
            self.wtoken_topic[i] = t as u32;
            self.n_word_word_topic[w * nt + t] += 1;
            self.n_word_topic[t] += 1;
            self.n_word_doc_topic[d * nt + t] += 1;
            inv_den[t] = 1.0 / (self.n_word_topic[t] as f64 + beta_v);
        }
    }

    fn update_peaks(&mut self) {
        let (nt, nr) = (self.params.n_topics, self.params.n_regions);
        let (alpha, gamma, delta) = (self.params.alpha, self.params.gamma, self.params.delta);
        let region_prior = delta * nr as f64;
        let mut region_totals: Vec<f64> = (0..nt)
            .map(|t| {
                (0..nr)
                    .map(|r| self.n_peak_region_topic[r * nt + t] as f64)
                    .sum()
            })
            .collect();
        let mut topic_w = vec![0f64; nt];
        let mut probs = vec![0f64; nt * nr];
        let np = self.data.ptoken_doc.len();
        // Densities of a block of peaks at once (all threads), then the sequential draws.
        const BLOCK: usize = 4096;
        let mut dens = vec![0f64; BLOCK * nt * nr];
        for start in (0..np).step_by(BLOCK) {
            let end = (start + BLOCK).min(np);
            let regions = &self.regions;
            dens[..(end - start) * nt * nr]
                .par_chunks_mut(nt * nr)
                .zip(self.data.coords[start..end].par_iter())
                .for_each(|(row, x)| {
                    for (tr, v) in row.iter_mut().enumerate() {
                        *v = regions.density(tr, x);
                    }
                });
            for p in start..end {
                let d = self.data.ptoken_doc[p] as usize;
                let (old_t, old_r) = (self.peak_topic[p] as usize, self.peak_region[p] as usize);
                self.n_peak_region_topic[old_r * nt + old_t] -= 1;
                self.n_peak_doc_topic[d * nt + old_t] -= 1;
                region_totals[old_t] -= 1.0;
                let prow = &self.n_peak_doc_topic[d * nt..(d + 1) * nt];
                let wrow = &self.n_word_doc_topic[d * nt..(d + 1) * nt];
                let mut max_logp = f64::NEG_INFINITY;
                for t in 0..nt {
                    let logp = wrow[t] as f64 * (1.0 / (prow[t] as f64 + gamma)).ln_1p();
                    topic_w[t] = logp;
                    max_logp = max_logp.max(logp);
                }
                for t in 0..nt {
                    topic_w[t] = (topic_w[t] - max_logp).exp();
                }
                let drow = &dens[(p - start) * nt * nr..(p - start + 1) * nt * nr];
                for r in 0..nr {
                    for t in 0..nt {
                        probs[r * nt + t] = drow[t * nr + r]
                            * ((self.n_peak_region_topic[r * nt + t] as f64 + delta)
                                / (region_totals[t] + region_prior))
                            * (prow[t] as f64 + alpha)
                            * topic_w[t];
                    }
                }
                let k = sample(&probs, &mut self.rng);
                let (r, t) = (k / nt, k % nt);
                self.n_peak_region_topic[r * nt + t] += 1;
                self.n_peak_doc_topic[d * nt + t] += 1;
                region_totals[t] += 1.0;
                self.peak_topic[p] = t as u32;
                self.peak_region[p] = r as u32;
            }
        }
    }

    /// NiMARE's `_update_regions`: means (mirrored in x for symmetric pairs) and covariances
    /// shrunk towards roi_size·I.
    fn update_regions(&mut self) -> Result<()> {
        let (nt, nr) = (self.params.n_topics, self.params.n_regions);
        let mut sums = vec![[0f64; 3]; nr * nt];
        let mut cross = vec![[[0f64; 3]; 3]; nr * nt];
        for p in 0..self.data.coords.len() {
            let k = self.peak_region[p] as usize * nt + self.peak_topic[p] as usize;
            let x = &self.data.coords[p];
            for i in 0..3 {
                sums[k][i] += x[i];
                for j in 0..3 {
                    cross[k][i][j] += x[i] * x[j];
                }
            }
        }
        let roi = self.params.roi_size;
        let default_roi = [[roi, 0.0, 0.0], [0.0, roi, 0.0], [0.0, 0.0, roi]];
        let count = |r: usize, t: usize| self.n_peak_region_topic[r * nt + t] as f64;
        let cov = |k: usize, n: f64| -> [[f64; 3]; 3] {
            if n <= 1.0 {
                return default_roi;
            }
            let (s, c) = (&sums[k], &cross[k]);
            std::array::from_fn(|i| {
                std::array::from_fn(|j| (c[i][j] - s[i] * s[j] / n) / (n - 1.0))
            })
        };
        let shrink = |c_hat: [[f64; 3]; 3], n: f64| -> [[f64; 3]; 3] {
            let d = n / (n + self.params.dobs);
            std::array::from_fn(|i| {
                std::array::from_fn(|j| d * c_hat[i][j] + (1.0 - d) * default_roi[i][j])
            })
        };
        let mut mu = vec![[0f64; 3]; nt * nr];
        let mut sigma = vec![[[0f64; 3]; 3]; nt * nr];
        for t in 0..nt {
            if self.params.symmetric {
                for pair in 0..nr / 2 {
                    let (r1, r2) = (2 * pair, 2 * pair + 1);
                    let (n1, n2) = (count(r1, t), count(r2, t));
                    let (k1, k2) = (r1 * nt + t, r2 * nt + t);
                    let (s1, s2) = (sums[k1], sums[k2]);
                    let total = n1 + n2;
                    let c1 = if n1 == 0.0 {
                        [0.0; 3]
                    } else {
                        s1.map(|v| v / n1)
                    };
                    let c2 = if n2 == 0.0 {
                        [0.0; 3]
                    } else {
                        s2.map(|v| v / n2)
                    };
                    let (wm1, wy, wz) = if total == 0.0 {
                        (0.0, 0.0, 0.0)
                    } else {
                        (
                            ((-c1[0] * n1) + (c2[0] * n2)) / total,
                            (s1[1] + s2[1]) / total,
                            (s1[2] + s2[2]) / total,
                        )
                    };
                    mu[t * nr + r1] = [-wm1, wy, wz];
                    mu[t * nr + r2] = [wm1, wy, wz];
                    sigma[t * nr + r1] = shrink(cov(k1, n1), n1);
                    sigma[t * nr + r2] = shrink(cov(k2, n2), n2);
                }
            } else {
                for r in 0..nr {
                    let n = count(r, t);
                    let k = r * nt + t;
                    mu[t * nr + r] = if n == 0.0 {
                        [0.0; 3]
                    } else {
                        sums[k].map(|v| v / n)
                    };
                    sigma[t * nr + r] = shrink(cov(k, n), n);
                }
            }
        }
        for k in 0..nt * nr {
            let (inv, logdet) = inv3_logdet(&sigma[k]).ok_or_else(|| {
                Error::Usage(format!(
                    "GC-LDA: the covariance of topic {} region {} is not positive definite; use fewer topics or regions",
                    k / nr,
                    k % nr
                ))
            })?;
            self.regions.precision[k] = inv;
            self.regions.log_norm[k] = -0.5 * (3.0 * (2.0 * std::f64::consts::PI).ln() + logdet);
        }
        self.regions.mu = mu;
        Ok(())
    }

    /// NiMARE's `compute_log_likelihood` (Newman et al. 2009): log p of every peak and word
    /// token under the posterior predictive distributions.
    pub fn log_likelihood(&self) -> [f64; 3] {
        let (nt, nr) = (self.params.n_topics, self.params.n_regions);
        let p = &self.params;
        let norm_rows = |counts: &[i64], add: f64| -> Vec<f64> {
            counts
                .chunks(nt)
                .flat_map(|row| {
                    let s: f64 = row.iter().map(|&c| c as f64 + add).sum();
                    row.iter().map(move |&c| (c as f64 + add) / s)
                })
                .collect()
        };
        let doc_y = norm_rows(&self.n_peak_doc_topic, p.alpha);
        let doc_z = norm_rows(&self.n_peak_doc_topic, p.gamma);
        let mut region_sum = vec![0f64; nt];
        for r in 0..nr {
            for t in 0..nt {
                region_sum[t] += self.n_peak_region_topic[r * nt + t] as f64 + p.delta;
            }
        }
        let region_p: Vec<f64> = (0..nr * nt)
            .map(|k| (self.n_peak_region_topic[k] as f64 + p.delta) / region_sum[k % nt])
            .collect();
        let mut word_sum = vec![0f64; nt];
        for row in self.n_word_word_topic.chunks(nt) {
            for t in 0..nt {
                word_sum[t] += row[t] as f64 + p.beta;
            }
        }
        let x_ll: f64 = (0..self.data.coords.len())
            .into_par_iter()
            .map(|i| {
                let d = self.data.ptoken_doc[i] as usize;
                let x = &self.data.coords[i];
                let mut px = 0.0;
                for r in 0..nr {
                    for t in 0..nt {
                        px += doc_y[d * nt + t]
                            * region_p[r * nt + t]
                            * self.regions.density(t * nr + r, x);
                    }
                }
                px.ln()
            })
            .sum();
        let w_ll: f64 = (0..self.data.wtoken_word.len())
            .into_par_iter()
            .map(|i| {
                let (d, w) = (
                    self.data.wtoken_doc[i] as usize,
                    self.data.wtoken_word[i] as usize,
                );
                let pw: f64 = (0..nt)
                    .map(|t| {
                        doc_z[d * nt + t] * (self.n_word_word_topic[w * nt + t] as f64 + p.beta)
                            / word_sum[t]
                    })
                    .sum();
                pw.ln()
            })
            .sum();
        [x_ll, w_ll, x_ll + w_ll]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjugate_inverse_matches_identity() {
        let s = [[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 2.0]];
        let (inv, logdet) = inv3_logdet(&s).unwrap();
        for i in 0..3 {
            for j in 0..3 {
                let v: f64 = (0..3).map(|k| s[i][k] * inv[k][j]).sum();
                assert!((v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12);
            }
        }
        let det = 4.0 * (3.0 * 2.0 - 0.04) - 1.0 * (2.0 - 0.1) + 0.5 * (0.2 - 1.5);
        assert!((logdet - f64::ln(det)).abs() < 1e-12);
        assert!(inv3_logdet(&[[0.0; 3]; 3]).is_none());
    }

    #[test]
    fn sampler_keeps_its_counts_consistent() {
        let data = Data {
            n_docs: 3,
            n_words: 2,
            wtoken_doc: vec![0, 0, 1, 2, 2],
            wtoken_word: vec![0, 1, 1, 0, 0],
            ptoken_doc: vec![0, 0, 1, 1, 2, 2],
            coords: vec![
                [-40.0, 0.0, 0.0],
                [40.0, 2.0, 0.0],
                [-38.0, 1.0, 4.0],
                [0.0, -60.0, 10.0],
                [2.0, -58.0, 8.0],
                [30.0, 20.0, 30.0],
            ],
        };
        let params = Params {
            n_topics: 2,
            n_regions: 2,
            n_iters: 20,
            ..Params::default()
        };
        let mut m = Model::new(params, data).unwrap();
        m.fit(|_, _| {}).unwrap();
        assert_eq!(m.loglikelihood.len(), 21);
        assert_eq!(m.n_peak_doc_topic.iter().sum::<i64>(), 6);
        assert_eq!(m.n_word_word_topic.iter().sum::<i64>(), 5);
        assert!(m.loglikelihood.iter().all(|l| l[2].is_finite()));
    }
}
