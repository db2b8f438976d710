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

// Index loops over parallel count arrays, as NiMARE's loops read: clearer than zipped iterators.
#![allow(clippy::needless_range_loop)]

use crate::error::{Error, Result};
use crate::rng::SplitMix64;
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
        let mut sm = SplitMix64(seed);
        let mut next = || sm.next_u64();
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

/// e^x to within 2 ulp, written so the compiler vectorises a loop of it (libm's exp is a call
/// per element; the densities of every peak under every sub-region are most of an iteration).
/// Cody–Waite reduction x = n·ln 2 + r, |r| ≤ ln2/2, a degree-13 Taylor polynomial in r, then
/// 2ⁿ from the exponent bits. Below −708 (e^x < 3e-308) it returns 0.
#[inline(always)]
pub fn exp_vec(x: f64) -> f64 {
    exp_poly::<false>(x)
}

/// [`exp_vec`] with the polynomial as fused multiply-adds (only where the CPU has FMA: without
/// it `mul_add` is a library call).
#[inline(always)]
fn exp_poly<const FMA: bool>(x: f64) -> f64 {
    const LN2_HI: f64 = 6.931_471_803_691_238e-1;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    const SHIFT: f64 = 6_755_399_441_055_744.0; // 1.5·2⁵²: adding it rounds to an integer
    let xc = x.clamp(-708.0, 709.0);
    let t = xc * std::f64::consts::LOG2_E + SHIFT;
    let n = t - SHIFT;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p: f64 = 1.0 / 6_227_020_800.0;
    for c in [
        1.0 / 479_001_600.0,
        1.0 / 39_916_800.0,
        1.0 / 3_628_800.0,
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = if FMA { p.mul_add(r, c) } else { p * r + c };
    }
    let scale = f64::from_bits(((t.to_bits() as i64 - SHIFT.to_bits() as i64 + 1023) << 52) as u64);
    if x < -708.0 {
        0.0
    } else {
        p * scale
    }
}

/// The sub-region Gaussians as columns (index r·T + t): means, the 6 distinct precision
/// entries, log normalisers.
struct DensityColumns {
    m: [Vec<f64>; 3],
    pr: [Vec<f64>; 6],
    ln: Vec<f64>,
}

impl DensityColumns {
    /// The density of `x` under every sub-region, into `row`.
    fn fill(&self, x: &[f64; 3], row: &mut [f64]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return unsafe { self.fill_avx2(x, row) };
        }
        self.fill_any::<false>(x, row)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn fill_avx2(&self, x: &[f64; 3], row: &mut [f64]) {
        self.fill_any::<true>(x, row)
    }

    /// Plain loops the compiler vectorises for whatever the caller was compiled for.
    #[inline(always)]
    fn fill_any<const FMA: bool>(&self, x: &[f64; 3], row: &mut [f64]) {
        let k = row.len();
        let (m0, m1, m2) = (&self.m[0][..k], &self.m[1][..k], &self.m[2][..k]);
        let p = &self.pr;
        let (p0, p1, p2, p3, p4, p5) = (
            &p[0][..k],
            &p[1][..k],
            &p[2][..k],
            &p[3][..k],
            &p[4][..k],
            &p[5][..k],
        );
        let ln = &self.ln[..k];
        for j in 0..k {
            let (dx, dy, dz) = (x[0] - m0[j], x[1] - m1[j], x[2] - m2[j]);
            let quad = p0[j] * dx * dx
                + p1[j] * dy * dy
                + p2[j] * dz * dz
                + 2.0 * (p3[j] * dx * dy + p4[j] * dx * dz + p5[j] * dy * dz);
            row[j] = exp_poly::<FMA>(ln[j] - 0.5 * quad);
        }
    }
}

/// n_wdt · ln(1 + 1/(n_pdt + γ)): the log weight of a topic for a document's peak.
#[inline]
fn wrow_log(n_wdt: &i64, n_pdt: i64, gamma: f64) -> f64 {
    *n_wdt as f64 * (1.0 / (n_pdt as f64 + gamma)).ln_1p()
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
    if det.is_nan() || det <= 0.0 {
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
        self.log_density(tr, x).exp()
    }

    /// Its logarithm.
    #[inline]
    pub fn log_density(&self, tr: usize, x: &[f64; 3]) -> f64 {
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
        self.log_norm[tr] - 0.5 * quad
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
    /// `[p][r][t]` densities of the peaks under the current regions.
    dens: Vec<f64>,
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
            dens: Vec::new(),
            loglikelihood: Vec::new(),
        })
    }

    /// Runs iterations up to `params.n_iters`, calling `progress` after each.
    pub fn fit(&mut self, mut progress: impl FnMut(usize, [f64; 3])) -> Result<()> {
        if self.iter == 0 {
            self.update_regions()?;
            self.update_densities();
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
        self.update_densities();
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

    /// The densities of every peak under every sub-region (`[p][t][r]`), for the current
    /// regions: the log-likelihood after an iteration and the next peak sweep both use them
    /// (the regions do not change in between), so they are computed once, on all threads.
    fn update_densities(&mut self) {
        let (nt, nr) = (self.params.n_topics, self.params.n_regions);
        let k = nt * nr;
        self.dens.resize(self.data.coords.len() * k, 0.0);
        // The Gaussians as columns (index r·T + t, the sweep's order), so the loop over them
        // vectorises: μ, the 6 distinct precision entries, the log normaliser.
        let col = |f: &dyn Fn(usize) -> f64| -> Vec<f64> {
            (0..k).map(|j| f((j % nt) * nr + j / nt)).collect()
        };
        let g = &self.regions;
        let m: [Vec<f64>; 3] = std::array::from_fn(|a| col(&|tr| g.mu[tr][a]));
        let pr: [Vec<f64>; 6] = [(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)]
            .map(|(a, b)| col(&|tr| g.precision[tr][a][b]));
        let ln = col(&|tr| g.log_norm[tr]);
        let cols = DensityColumns { m, pr, ln };
        self.dens
            .par_chunks_mut(k)
            .zip(self.data.coords.par_iter())
            .for_each(|(row, x)| cols.fill(x, row));
    }

    fn update_peaks(&mut self) {
        let (nt, nr) = (self.params.n_topics, self.params.n_regions);
        let (alpha, gamma, delta) = (self.params.alpha, self.params.gamma, self.params.delta);
        let region_prior = delta * nr as f64;
        // 1 / (peaks of topic t + R·δ), kept current as peaks move.
        let mut inv_region_total: Vec<f64> = (0..nt)
            .map(|t| {
                1.0 / ((0..nr)
                    .map(|r| self.n_peak_region_topic[r * nt + t] as f64)
                    .sum::<f64>()
                    + region_prior)
            })
            .collect();
        let mut probs = vec![0f64; nt * nr];
        let mut doc_w = vec![0f64; nt];
        // n_rt + δ as floats, kept current as peaks move.
        let mut region_w: Vec<f64> = self
            .n_peak_region_topic
            .iter()
            .map(|&c| c as f64 + delta)
            .collect();
        // The document's topic weights exp(n_wdt · ln(1 + 1/(n_pdt + γ)) − m): only the two
        // topics a draw touches change, so they are updated in place; m is any bound ≥ every
        // exponent (NiMARE subtracts the exact max; a common factor does not change a draw).
        let mut logp = vec![0f64; nt];
        let mut topic_w = vec![0f64; nt];
        let mut m_ref = 0f64;
        let mut cur_doc = usize::MAX;
        let np = self.data.ptoken_doc.len();
        for p in 0..np {
            let d = self.data.ptoken_doc[p] as usize;
            let (old_t, old_r) = (self.peak_topic[p] as usize, self.peak_region[p] as usize);
            self.n_peak_region_topic[old_r * nt + old_t] -= 1;
            region_w[old_r * nt + old_t] -= 1.0;
            self.n_peak_doc_topic[d * nt + old_t] -= 1;
            let rt = |m: &Self, t: usize| {
                (0..nr)
                    .map(|r| m.n_peak_region_topic[r * nt + t] as f64)
                    .sum::<f64>()
            };
            inv_region_total[old_t] = 1.0 / (rt(self, old_t) + region_prior);
            let prow = &self.n_peak_doc_topic[d * nt..(d + 1) * nt];
            let wrow = &self.n_word_doc_topic[d * nt..(d + 1) * nt];
            let lp = |t: usize| wrow[t] as f64 * (1.0 / (prow[t] as f64 + gamma)).ln_1p();
            if d != cur_doc {
                cur_doc = d;
                for t in 0..nt {
                    logp[t] = lp(t);
                }
                m_ref = logp.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                for t in 0..nt {
                    topic_w[t] = (logp[t] - m_ref).exp();
                }
            } else {
                logp[old_t] = lp(old_t);
                if logp[old_t] > m_ref {
                    m_ref = logp[old_t];
                    for t in 0..nt {
                        topic_w[t] = (logp[t] - m_ref).exp();
                    }
                } else {
                    topic_w[old_t] = (logp[old_t] - m_ref).exp();
                }
            }
            let drow = &self.dens[p * nt * nr..(p + 1) * nt * nr];
            for t in 0..nt {
                doc_w[t] = (prow[t] as f64 + alpha) * topic_w[t] * inv_region_total[t];
            }
            for r in 0..nr {
                let rrow = &region_w[r * nt..(r + 1) * nt];
                let (dr, pr) = (
                    &drow[r * nt..(r + 1) * nt],
                    &mut probs[r * nt..(r + 1) * nt],
                );
                for t in 0..nt {
                    pr[t] = dr[t] * rrow[t] * doc_w[t];
                }
            }
            let k = sample(&probs, &mut self.rng);
            let (r, t) = (k / nt, k % nt);
            self.n_peak_region_topic[r * nt + t] += 1;
            region_w[r * nt + t] += 1.0;
            self.n_peak_doc_topic[d * nt + t] += 1;
            inv_region_total[t] = 1.0 / (rt(self, t) + region_prior);
            self.peak_topic[p] = t as u32;
            self.peak_region[p] = r as u32;
            // The new topic's weight for the document's next peak.
            let prow = &self.n_peak_doc_topic[d * nt..(d + 1) * nt];
            logp[t] = wrow_log(&self.n_word_doc_topic[d * nt + t], prow[t], gamma);
            if logp[t] > m_ref {
                m_ref = logp[t];
                for u in 0..nt {
                    topic_w[u] = (logp[u] - m_ref).exp();
                }
            } else {
                topic_w[t] = (logp[t] - m_ref).exp();
            }
            // Far below the bound the weights would underflow: start again from the max.
            if m_ref - logp.iter().cloned().fold(f64::NEG_INFINITY, f64::max) > 300.0 {
                cur_doc = usize::MAX;
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
                let dens = &self.dens[i * nt * nr..(i + 1) * nt * nr];
                let dy = &doc_y[d * nt..(d + 1) * nt];
                let mut px = 0.0;
                for r in 0..nr {
                    for t in 0..nt {
                        px += dy[t] * region_p[r * nt + t] * dens[r * nt + t];
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
    fn vectorisable_exp_is_within_two_ulp_of_libm() {
        let mut worst = 0f64;
        let mut x = -707.9;
        while x < 709.0 {
            let (a, b, c) = (exp_vec(x), x.exp(), exp_poly::<true>(x));
            worst = worst.max(((a - b) / b).abs()).max(((c - b) / b).abs());
            x += 0.0137;
        }
        assert!(worst < 4.5e-16, "relative error {worst:e}");
        assert_eq!(exp_vec(-800.0), 0.0);
        assert_eq!(exp_vec(0.0), 1.0);
    }

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
