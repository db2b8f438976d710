//! Studies' peaks as the image pipeline takes them ([`Peaks`]), their MA maps as volumes
//! ([`ma_maps`], for looking at), and their image features: MKDA, KDA or ALE maps projected onto
//! an atlas, fused so that no map is ever written out: peaks → kernel voxels and values (in the
//! mask) → Xᵀy rows → one batched solve.

use super::kernels::{for_each_value, MaKernel, ValueScratch};
use super::mkda::{ma_map, peak_voxels, Scratch};
use super::{Atlas, Image, Mask};
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

/// The MA maps of studies as one 4D image on the mask's grid, a volume per study in `peaks`'
/// order, 0 off the mask: MKDA 1 inside the union of its spheres, KDA the number of spheres,
/// ALE the largest Gaussian value (float32, as NiMARE's images).
pub fn ma_maps(kernel: &MaKernel, mask: &Mask, peaks: &Peaks) -> Result<Image> {
    kernel.check_studies(peaks.len())?;
    let n = mask.grid.n_voxels();
    let mut data = vec![0.0f32; n * peaks.len()];
    let (id, xyz) = (&peaks.ids, |s| peaks.study(s));
    match kernel {
        MaKernel::Mkda(sphere) => data
            .par_chunks_mut(n)
            .enumerate()
            .map_init(
                || Scratch::new(&mask.grid),
                |scratch, (s, vol)| -> Result<()> {
                    for m in ma_map(sphere, mask, xyz(s), &id[s], scratch)? {
                        vol[mask.voxels[m as usize] as usize] = 1.0;
                    }
                    Ok(())
                },
            )
            .collect::<Result<()>>()?,
        _ => data
            .par_chunks_mut(n)
            .enumerate()
            .map_init(
                || ValueScratch::new(&mask.grid),
                |scratch, (s, vol)| {
                    for_each_value(kernel, mask, xyz(s), s, &id[s], scratch, |v, x| vol[v] = x)
                },
            )
            .collect::<Result<()>>()?,
    }
    Ok(Image::new(mask.grid.clone(), peaks.len(), data))
}

/// Checks that the atlas lies on the mask's grid (resample it with `Atlas::read_on_grid`).
pub fn check_grids(mask: &Mask, atlas: &Atlas) -> Result<()> {
    if mask.grid.same_as(&atlas.grid) {
        Ok(())
    } else {
        Err(Error::Usage("the atlas is not on the mask's grid; read it with Atlas::read_on_grid(path, labels, &mask.grid)".into()))
    }
}

/// The atlas rows of the mask's voxels indexed by grid voxel: voxel v holds the entries
/// `start[v]..start[v + 1]` (none off the mask or the support). One lookup per voxel, and a
/// sphere's runs of x-neighbours read neighbouring entries.
struct VoxelRows {
    start: Vec<u32>,
    cols: Vec<u32>,
    vals: Vec<f32>,
}

impl VoxelRows {
    fn new(mask: &Mask, atlas: &Atlas) -> VoxelRows {
        let n = mask.grid.n_voxels();
        let mut start = Vec::with_capacity(n + 1);
        let (mut cols, mut vals) = (
            Vec::with_capacity(atlas.cols.len()),
            Vec::with_capacity(atlas.vals.len()),
        );
        start.push(0);
        for v in 0..n {
            let r = atlas.row_of[v];
            if mask.index[v] >= 0 && r >= 0 {
                let (a, b) = (
                    atlas.row_ptr[r as usize] as usize,
                    atlas.row_ptr[r as usize + 1] as usize,
                );
                cols.extend_from_slice(&atlas.cols[a..b]);
                vals.extend_from_slice(&atlas.vals[a..b]);
            }
            start.push(cols.len() as u32);
        }
        VoxelRows { start, cols, vals }
    }
}

/// Independent accumulators in the Xᵀy sum.
const LANES: usize = 4;

/// Xᵀy of every study's MA map, n×k f64 (the CPU reference of the CUDA kernels): each in-mask
/// voxel of the map adds its atlas row times its value (1 for MKDA).
pub fn ma_xty_cpu(
    kernel: &MaKernel,
    mask: &Mask,
    atlas: &Atlas,
    peaks: &Peaks,
) -> Result<Vec<f64>> {
    check_grids(mask, atlas)?;
    kernel.check_studies(peaks.len())?;
    let k = atlas.k;
    let rows = VoxelRows::new(mask, atlas);
    let mut xty = vec![0.0f64; peaks.len() * k];
    xty.par_chunks_mut(k)
        .enumerate()
        .map_init(
            || {
                let scratch = match kernel {
                    MaKernel::Mkda(_) => Err(Scratch::new(&mask.grid)),
                    _ => Ok(ValueScratch::new(&mask.grid)),
                };
                (scratch, vec![0.0f64; LANES * k])
            },
            |(scratch, acc), (s, out)| -> Result<()> {
                // Neighbouring voxels mostly share their maps: summing them into one array would
                // chain every add on the previous store. LANES slots per map, one per voxel in
                // turn, keep that many chains independent.
                acc.fill(0.0);
                let mut lane = 0;
                let mut add = |v: usize, y: f64| {
                    let (a, b) = (rows.start[v] as usize, rows.start[v + 1] as usize);
                    for (&c, &w) in rows.cols[a..b].iter().zip(&rows.vals[a..b]) {
                        acc[c as usize * LANES + lane] += w as f64 * y;
                    }
                    lane = (lane + 1) % LANES;
                };
                let (xyz, id) = (peaks.study(s), &peaks.ids[s]);
                match (kernel, scratch) {
                    (MaKernel::Mkda(sphere), Err(bits)) => {
                        let vox = peak_voxels(sphere, &mask.grid, xyz, id)?;
                        sphere.for_each_voxel(&mask.grid, &vox, bits, |v| add(v, 1.0));
                    }
                    (_, Ok(vals)) => {
                        for_each_value(kernel, mask, xyz, s, id, vals, |v, x| add(v, x as f64))?
                    }
                    _ => unreachable!("the scratch is made for the kernel"),
                }
                for (o, lanes) in out.iter_mut().zip(acc.chunks_exact(LANES)) {
                    *o = lanes.iter().sum();
                }
                Ok(())
            },
        )
        .collect::<Result<()>>()?;
    Ok(xty)
}

/// Atlas coefficients of every study's MA map on the CPU, n×k float32.
pub fn image_features_cpu(
    kernel: &MaKernel,
    mask: &Mask,
    atlas: &Atlas,
    peaks: &Peaks,
) -> Result<Vec<f32>> {
    let xty = ma_xty_cpu(kernel, mask, atlas, peaks)?;
    Ok(atlas.solve(&xty, peaks.len()))
}
