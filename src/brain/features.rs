//! Image features of studies: MKDA maps projected onto an atlas, fused so that no map is ever
//! written out: peaks → sphere voxels (union, in the mask) → Xᵀy rows → one batched solve.

use super::mkda::{peak_voxels, MkdaKernel, Scratch};
use super::{Atlas, Mask};
use crate::error::{Error, Result};
use rayon::prelude::*;

/// Peaks of many studies in one flat table (what the corpus hands to the image pipeline).
#[derive(Clone, Debug, Default)]
pub struct Peaks {
    pub ids: Vec<String>,
    /// Study s owns `xyz[start[s]..start[s + 1]]`.
    pub start: Vec<usize>,
    /// Coordinates in mm, MNI space.
    pub xyz: Vec<[f64; 3]>,
}

impl Peaks {
    pub fn new() -> Self {
        Peaks {
            ids: Vec::new(),
            start: vec![0],
            xyz: Vec::new(),
        }
    }

    pub fn push(&mut self, id: impl Into<String>, peaks: impl IntoIterator<Item = [f64; 3]>) {
        self.ids.push(id.into());
        self.xyz.extend(peaks);
        self.start.push(self.xyz.len());
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Studies `range` as a table of their own.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Peaks {
        let (a, b) = (self.start[range.start], self.start[range.end]);
        Peaks {
            ids: self.ids[range.clone()].to_vec(),
            start: self.start[range.start..=range.end]
                .iter()
                .map(|s| s - a)
                .collect(),
            xyz: self.xyz[a..b].to_vec(),
        }
    }

    pub fn study(&self, s: usize) -> &[[f64; 3]] {
        &self.xyz[self.start[s]..self.start[s + 1]]
    }
}

/// Checks that the atlas lies on the mask's grid (resample it with `Atlas::read_on_grid`).
pub fn check_grids(mask: &Mask, atlas: &Atlas) -> Result<()> {
    if mask.grid.same_as(&atlas.grid) {
        Ok(())
    } else {
        Err(Error::Usage("the atlas is not on the mask's grid; read it with Atlas::read_on_grid(path, labels, &mask.grid)".into()))
    }
}

/// Xᵀy of every study's MA map, n×k f64 (the CPU reference of the CUDA kernel).
pub fn ma_xty_cpu(
    kernel: &MkdaKernel,
    mask: &Mask,
    atlas: &Atlas,
    peaks: &Peaks,
) -> Result<Vec<f64>> {
    check_grids(mask, atlas)?;
    let k = atlas.k;
    // A voxel counts when it is in the mask and on the atlas support.
    let row: Vec<i32> = mask
        .index
        .iter()
        .zip(&atlas.row_of)
        .map(|(&m, &r)| if m >= 0 { r } else { -1 })
        .collect();
    let mut xty = vec![0.0f64; peaks.len() * k];
    xty.par_chunks_mut(k)
        .enumerate()
        .map_init(
            || Scratch::new(&mask.grid),
            |scratch, (s, out)| -> Result<()> {
                let vox = peak_voxels(kernel, &mask.grid, peaks.study(s), &peaks.ids[s])?;
                let stamp = scratch.next();
                kernel.for_each_voxel(&mask.grid, &vox, &mut scratch.seen, stamp, |v| {
                    let r = row[v];
                    if r >= 0 {
                        atlas.add_row(r as usize, 1.0, out);
                    }
                });
                Ok(())
            },
        )
        .collect::<Result<()>>()?;
    Ok(xty)
}

/// Atlas coefficients of every study's MA map on the CPU, n×k float32.
pub fn image_features_cpu(
    kernel: &MkdaKernel,
    mask: &Mask,
    atlas: &Atlas,
    peaks: &Peaks,
) -> Result<Vec<f32>> {
    let xty = ma_xty_cpu(kernel, mask, atlas, peaks)?;
    Ok(atlas.solve(&xty, peaks.len()))
}
