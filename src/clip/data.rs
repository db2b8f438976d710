//! Training pairs: text features and image features read from `.npy`, paired by the ids of
//! their `.ids.txt` sidecars when both have one, and L2-normalised row by row (the authors
//! normalise both before training).

use crate::error::{Error, Result};
use crate::io::{ids_sidecar, read_npy_f32, NpyMatrix};
use std::collections::HashMap;
use std::path::Path;

/// n pairs: `text` n × d and `images` n × k, rows L2-normalised.
#[derive(Clone, Debug)]
pub struct Pairs {
    pub text: Vec<f32>,
    pub images: Vec<f32>,
    pub n: usize,
    pub d: usize,
    pub k: usize,
    /// The ids of the rows, when the inputs had sidecars.
    pub ids: Option<Vec<String>>,
}

impl Pairs {
    /// Pairs from in-memory arrays (rows are normalised here).
    pub fn new(mut text: Vec<f32>, mut images: Vec<f32>, n: usize, d: usize, k: usize) -> Pairs {
        assert_eq!(text.len(), n * d);
        assert_eq!(images.len(), n * k);
        normalize_rows(&mut text, d);
        normalize_rows(&mut images, k);
        Pairs {
            text,
            images,
            n,
            d,
            k,
            ids: None,
        }
    }

    /// The rows `rows` of both arrays, gathered into `xt` (|rows| × d) and `xi` (|rows| × k).
    pub fn gather(&self, rows: &[usize], xt: &mut [f32], xi: &mut [f32]) {
        self.gather_with(&self.images, rows, xt, xi)
    }

    /// As `gather`, the image rows taken from `images` (n × k: drawn for training in place of
    /// the pairs' own).
    pub fn gather_with(&self, images: &[f32], rows: &[usize], xt: &mut [f32], xi: &mut [f32]) {
        let (d, k) = (self.d, self.k);
        for (r, &i) in rows.iter().enumerate() {
            xt[r * d..(r + 1) * d].copy_from_slice(&self.text[i * d..(i + 1) * d]);
            xi[r * k..(r + 1) * k].copy_from_slice(&images[i * k..(i + 1) * k]);
        }
    }
}

/// Rows scaled to unit norm; zero rows stay zero (`F.normalize`).
pub fn normalize_rows(x: &mut [f32], width: usize) {
    if width == 0 {
        return;
    }
    for r in x.chunks_exact_mut(width) {
        let norm = (r.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt() as f32)
            .max(super::ops::L2_EPS);
        for v in r {
            *v /= norm;
        }
    }
}

pub fn read_ids(path: &Path) -> Result<Vec<String>> {
    let txt = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(txt
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

/// Reads `text` and `images` and pairs their rows: by id when both have a `.ids.txt` sidecar
/// (their intersection, in text order; how many were dropped is said on stderr), else row by
/// row (the counts must agree).
pub fn load_pairs(text: &Path, images: &Path) -> Result<Pairs> {
    let im = read_npy_f32(images)?;
    let is = ids_sidecar(images);
    let ids = if is.is_file() {
        let ids = read_ids(&is)?;
        if ids.len() != im.rows {
            let msg = format!(
                "{} ids for {} rows of {}; rewrite the sidecar",
                ids.len(),
                im.rows,
                images.display()
            );
            return Err(Error::input(&is, msg));
        }
        Some(ids)
    } else {
        None
    };
    pair_with_images(text, im, ids, images)
}

/// `text`'s rows paired with image features already read or computed (`ids`: their studies;
/// `source` names them in messages), as `load_pairs` pairs them.
pub fn pair_with_images(
    text: &Path,
    im: NpyMatrix,
    image_ids: Option<Vec<String>>,
    source: &Path,
) -> Result<Pairs> {
    let t = read_npy_f32(text)?;
    for (m, p) in [(&t, text), (&im, source)] {
        check_matrix(m, p)?;
    }
    let ts = ids_sidecar(text);
    let (rows_t, rows_i, ids) = match image_ids {
        Some(iid) if ts.is_file() => {
            let tid = read_ids(&ts)?;
            if tid.len() != t.rows {
                let msg = format!(
                    "{} ids for {} rows of {}; rewrite the sidecar",
                    tid.len(),
                    t.rows,
                    text.display()
                );
                return Err(Error::input(&ts, msg));
            }
            let (rt, ri, ids) = join_ids(&tid, &iid, &ts, source)?;
            (rt, ri, Some(ids))
        }
        _ => {
            if t.rows != im.rows {
                return Err(Error::input(
                    source,
                    format!("{} rows, but {} has {}; give both .ids.txt sidecars to pair by id, or the same rows in the same order", im.rows, text.display(), t.rows),
                ));
            }
            ((0..t.rows).collect(), (0..im.rows).collect(), None)
        }
    };
    let (d, k) = (t.cols, im.cols);
    let gather = |m: &NpyMatrix, rows: &[usize], w: usize| -> Vec<f32> {
        let mut out = Vec::with_capacity(rows.len() * w);
        for &r in rows {
            out.extend_from_slice(&m.data[r * w..(r + 1) * w]);
        }
        out
    };
    let (tx, ix) = (gather(&t, &rows_t, d), gather(&im, &rows_i, k));
    let mut p = Pairs::new(tx, ix, rows_t.len(), d, k);
    p.ids = ids;
    Ok(p)
}

/// A matrix of features must have rows and finite values.
fn check_matrix(m: &NpyMatrix, p: &Path) -> Result<()> {
    if m.rows == 0 || m.cols == 0 {
        return Err(Error::input(
            p,
            format!(
                "the array is empty ({} × {}); it needs one row per study",
                m.rows, m.cols
            ),
        ));
    }
    if let Some(i) = m.data.iter().position(|v| !v.is_finite()) {
        return Err(Error::input(
            p,
            format!(
                "row {} holds NaN or Inf; recompute or drop that row",
                i / m.cols
            ),
        ));
    }
    Ok(())
}

/// The rows of the text ids `tid` and image ids `iid` that share an id, in text order, and
/// the shared ids; what was dropped is said on stderr.
fn join_ids(
    tid: &[String],
    iid: &[String],
    ts: &Path,
    source: &Path,
) -> Result<(Vec<usize>, Vec<usize>, Vec<String>)> {
    let at: HashMap<&str, usize> = iid
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i))
        .collect();
    let (mut rt, mut ri, mut ids) = (Vec::new(), Vec::new(), Vec::new());
    for (i, id) in tid.iter().enumerate() {
        if let Some(&j) = at.get(id.as_str()) {
            rt.push(i);
            ri.push(j);
            ids.push(id.clone());
        }
    }
    if rt.is_empty() {
        return Err(Error::input(
            ts,
            format!(
                "no id is shared with {}; are the two arrays from the same corpus?",
                source.display()
            ),
        ));
    }
    let (dt, di) = (tid.len() - rt.len(), iid.len() - ri.len());
    if dt > 0 || di > 0 {
        eprintln!(
            "paired {} studies by id; dropped {dt} text rows and {di} image rows without a partner",
            rt.len()
        );
    }
    Ok((rt, ri, ids))
}
