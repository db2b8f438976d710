//! Training pairs: text features and image features read from `.npy`, paired by the ids of
//! their `.ids.txt` sidecars when both have one, and L2-normalised row by row (the authors
//! normalise both before training).

use crate::error::{Error, Result};
use crate::io::{ids_sidecar, read_npy_f32};
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
        let (d, k) = (self.d, self.k);
        for (r, &i) in rows.iter().enumerate() {
            xt[r * d..(r + 1) * d].copy_from_slice(&self.text[i * d..(i + 1) * d]);
            xi[r * k..(r + 1) * k].copy_from_slice(&self.images[i * k..(i + 1) * k]);
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
    let t = read_npy_f32(text)?;
    let im = read_npy_f32(images)?;
    for (m, p) in [(&t, text), (&im, images)] {
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
    }
    let (ts, is) = (ids_sidecar(text), ids_sidecar(images));
    let (rows_t, rows_i, ids) = if ts.is_file() && is.is_file() {
        let tid = read_ids(&ts)?;
        let iid = read_ids(&is)?;
        if tid.len() != t.rows {
            return Err(Error::input(
                &ts,
                format!(
                    "{} ids for {} rows of {}; rewrite the sidecar",
                    tid.len(),
                    t.rows,
                    text.display()
                ),
            ));
        }
        if iid.len() != im.rows {
            return Err(Error::input(
                &is,
                format!(
                    "{} ids for {} rows of {}; rewrite the sidecar",
                    iid.len(),
                    im.rows,
                    images.display()
                ),
            ));
        }
        let at: HashMap<&str, usize> = iid
            .iter()
            .enumerate()
            .map(|(i, s)| (s.as_str(), i))
            .collect();
        let mut rt = Vec::new();
        let mut ri = Vec::new();
        let mut ids = Vec::new();
        for (i, id) in tid.iter().enumerate() {
            if let Some(&j) = at.get(id.as_str()) {
                rt.push(i);
                ri.push(j);
                ids.push(id.clone());
            }
        }
        if rt.is_empty() {
            return Err(Error::input(
                &ts,
                format!(
                    "no id is shared with {}; are the two arrays from the same corpus?",
                    is.display()
                ),
            ));
        }
        let (dt, di) = (t.rows - rt.len(), im.rows - ri.len());
        if dt > 0 || di > 0 {
            eprintln!("paired {} studies by id; dropped {dt} text rows and {di} image rows without a partner", rt.len());
        }
        (rt, ri, Some(ids))
    } else {
        if t.rows != im.rows {
            return Err(Error::input(
                images,
                format!("{} rows, but {} has {}; give both .ids.txt sidecars to pair by id, or the same rows in the same order", im.rows, text.display(), t.rows),
            ));
        }
        ((0..t.rows).collect(), (0..im.rows).collect(), None)
    };
    let (d, k) = (t.cols, im.cols);
    let mut tx = Vec::with_capacity(rows_t.len() * d);
    for &r in &rows_t {
        tx.extend_from_slice(&t.data[r * d..(r + 1) * d]);
    }
    let mut ix = Vec::with_capacity(rows_i.len() * k);
    for &r in &rows_i {
        ix.extend_from_slice(&im.data[r * k..(r + 1) * k]);
    }
    let mut p = Pairs::new(tx, ix, rows_t.len(), d, k);
    p.ids = ids;
    Ok(p)
}
