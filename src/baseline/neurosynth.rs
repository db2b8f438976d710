//! The Neurosynth correlation decoder (NiMARE 0.22.1 `CorrelationDecoder` with `MKDAChi2`).
//!
//! For each term, the studies with the term (F) against all other studies with peaks (U):
//! a(v), b(v) = how many MKDA maps of F, U are active at voxel v; the association χ² of the
//! 2×2 table, χ² = N·(a·n_U − b·n_F)² / [(a+b)·(N−a−b)·n_F·n_U] (2.0 where the denominator is
//! 0, NiMARE's `two_way_counts`), and its z-map z = √χ² · sign(a/n_F − b/n_U) — NiMARE 0.22.1
//! signs the square root of χ² (`pFgA_z = np.sqrt(pFgA_chi2_vals) * pFgA_sign`), it does not
//! go through p-values. Terms no study has, or every study has, get no map (NiMARE skips them).
//!
//! The counting is a product of two sparse binary matrices (labels: studies × terms, MA maps:
//! studies × voxels): each term's row of counts is the sum of its studies' voxel lists, so it is
//! computed by scattering those lists into one row per term (rows in parallel), counting the
//! smaller of F and U and taking the other from the all-studies total.

use rayon::prelude::*;

/// χ² → z for one voxel, exactly as NiMARE 0.22.1 (f64 throughout).
#[inline]
pub fn association_z(a: f64, b: f64, n_f: f64, n_u: f64) -> f64 {
    let total = n_f + n_u;
    let row0 = a + b;
    let row1 = total - row0;
    let den = row0 * row1 * n_f * n_u;
    let chi2 = if den == 0.0 {
        2.0
    } else {
        total * (a * n_u - b * n_f).powi(2) / den
    };
    let d = a / n_f - b / n_u;
    let sign = if d > 0.0 {
        1.0
    } else if d < 0.0 {
        -1.0
    } else {
        0.0
    };
    chi2.sqrt() * sign
}

/// Appends the studies of `0..n` that are not in `sel` (ascending) to `out`, in order.
pub(crate) fn push_complement(sel: &[u32], n: usize, out: &mut Vec<u32>) {
    let mut it = sel.iter().peekable();
    for s in 0..n as u32 {
        if it.peek() == Some(&&s) {
            it.next();
        } else {
            out.push(s);
        }
    }
}

/// `map` centred and scaled to unit norm, in f64: Pearson r with it is a dot product.
pub(crate) fn centred_unit(map: &[f32], n_voxels: usize) -> Vec<f64> {
    let mean = map.iter().map(|&x| x as f64).sum::<f64>() / n_voxels as f64;
    let ss: f64 = map.iter().map(|&x| (x as f64 - mean).powi(2)).sum();
    let inv = 1.0 / ss.sqrt();
    map.iter().map(|&x| (x as f64 - mean) * inv).collect()
}

/// The association z-maps of the terms. `ma[s]`: the active mask positions of study s (every
/// study with peaks); `selected[t]`: the studies (indices into `ma`) with term t, ascending;
/// `total[v]`: how many maps are active at v. Returns `terms × n_voxels` float32 rows.
pub fn z_maps(ma: &[Vec<u32>], total: &[u32], selected: &[Vec<u32>], n_voxels: usize) -> Vec<f32> {
    let n = ma.len();
    let mut out = vec![0f32; selected.len() * n_voxels];
    out.par_chunks_mut(n_voxels.max(1))
        .zip(selected.par_iter())
        .for_each_init(
            || (vec![0u32; n_voxels], Vec::<u32>::new()),
            |(count, others), (row, sel)| {
                let n_f = sel.len();
                let n_u = n - n_f;
                // Count over the smaller group: a = count (F) or total − count (U).
                let count_f = n_f <= n_u;
                count.iter_mut().for_each(|c| *c = 0);
                let group: &[u32] = if count_f {
                    sel
                } else {
                    others.clear();
                    push_complement(sel, n, others);
                    others
                };
                for &s in group {
                    for &v in &ma[s as usize] {
                        count[v as usize] += 1;
                    }
                }
                let (nf, nu) = (n_f as f64, n_u as f64);
                for v in 0..n_voxels {
                    let (a, b) = if count_f {
                        (count[v], total[v] - count[v])
                    } else {
                        (total[v] - count[v], count[v])
                    };
                    row[v] = association_z(a as f64, b as f64, nf, nu) as f32;
                }
            },
        );
    out
}

/// How many maps are active at each voxel.
pub fn active_totals(ma: &[Vec<u32>], n_voxels: usize) -> Vec<u32> {
    let mut total = vec![0u32; n_voxels];
    for m in ma {
        for &v in m {
            total[v as usize] += 1;
        }
    }
    total
}

/// Rows scaled so that a dot product with a centred, unit-norm map is Pearson's r:
/// (z − mean) / ‖z − mean‖ (a constant row stays NaN, as NiMARE's r is).
pub fn standardize_rows(z: &[f32], n_voxels: usize) -> Vec<f32> {
    let mut out = vec![0f32; z.len()];
    out.par_chunks_mut(n_voxels.max(1))
        .zip(z.par_chunks(n_voxels.max(1)))
        .for_each(|(o, r)| {
            let mean = r.iter().map(|&x| x as f64).sum::<f64>() / n_voxels as f64;
            let ss: f64 = r.iter().map(|&x| (x as f64 - mean).powi(2)).sum();
            let inv = 1.0 / ss.sqrt();
            for (o, &x) in o.iter_mut().zip(r) {
                *o = ((x as f64 - mean) * inv) as f32;
            }
        });
    out
}

/// Pearson r of `map` with every standardized row (`rows × n_voxels`), accumulated in f64.
pub fn correlate(rows: &[f32], n_voxels: usize, map: &[f32]) -> Vec<f32> {
    let centred = centred_unit(map, n_voxels);
    rows.par_chunks(n_voxels.max(1))
        .map(|r| {
            // Four accumulators: the compiler vectorises the f32→f64 products.
            let mut acc = [0f64; 4];
            let (rc, rt) = r.split_at(r.len() / 4 * 4);
            let (cc, ct) = centred.split_at(rc.len());
            for (x, y) in rc.chunks_exact(4).zip(cc.chunks_exact(4)) {
                for k in 0..4 {
                    acc[k] += x[k] as f64 * y[k];
                }
            }
            let tail: f64 = rt.iter().zip(ct).map(|(&x, &y)| x as f64 * y).sum();
            (acc.iter().sum::<f64>() + tail) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn z_is_signed_root_of_chi2_and_zero_on_empty_tables() {
        // a = 3 of 4 selected, b = 1 of 6 unselected.
        let chi2: f64 = 10.0 * (3.0 * 6.0 - 1.0 * 4.0f64).powi(2) / (4.0 * 6.0 * 4.0 * 6.0);
        assert!((association_z(3.0, 1.0, 4.0, 6.0) - chi2.sqrt()).abs() < 1e-12);
        assert!(
            (association_z(1.0, 3.0, 4.0, 6.0) + association_z(1.0, 3.0, 4.0, 6.0).abs()).abs()
                < 1e-12
        );
        assert_eq!(association_z(0.0, 0.0, 4.0, 6.0), 0.0);
        assert_eq!(association_z(4.0, 6.0, 4.0, 6.0), 0.0);
    }

    #[test]
    fn counting_either_group_gives_the_same_maps() {
        let ma = vec![vec![0, 1], vec![1, 2], vec![2], vec![0, 2], vec![1]];
        let total = active_totals(&ma, 3);
        let few = z_maps(&ma, &total, &[vec![0, 3]], 3);
        let many = z_maps(&ma, &total, &[vec![1, 2, 4]], 3);
        for v in 0..3 {
            assert!((few[v] + many[v]).abs() < 1e-6, "{few:?} {many:?}");
        }
    }
}
