//! The correlation decoder's counting, z-maps and decoding on a CUDA device
//! (`kernels/baseline.cu`), the same contract as [`super::neurosynth::z_maps`] and
//! [`super::neurosynth::correlate`]: counts are exact (u32 atomics), z is computed in f64 and
//! stored f32, so z-maps equal the CPU's bit for bit; r sums in f64 in another order.

use super::neurosynth::{centred_unit, push_complement};
use crate::device::cuda::{consts, launch, launch_kernel, Gpu};
use crate::error::{Error, Result};

const MODULE: &str = "baseline";
/// Threads per block (`baseline_correlate` reduces over this many).
const BLOCK: u32 = consts::common::NICLIP_BLOCK;

/// Association z-maps of `selected` (see `neurosynth::z_maps`), terms in batches that fit.
pub fn z_maps_cuda(
    gpu: &Gpu,
    ma: &[Vec<u32>],
    total: &[u32],
    selected: &[Vec<u32>],
    n_voxels: usize,
) -> Result<Vec<f32>> {
    let n = ma.len();
    let mut ma_start = Vec::with_capacity(n + 1);
    ma_start.push(0u32);
    let mut ma_vox = Vec::new();
    for m in ma {
        ma_vox.extend_from_slice(m);
        let end = u32::try_from(ma_vox.len()).map_err(|_| {
            Error::Usage(
                "too many active voxels for the CUDA kernel (32-bit offsets); use --device cpu"
                    .into(),
            )
        })?;
        ma_start.push(end);
    }
    let d_ma_start = gpu.htod(&ma_start)?;
    let d_ma_vox = gpu.htod(&ma_vox)?;
    let d_total = gpu.htod(total)?;
    // A batch of terms: counts (u32) + z (f32) ≤ ~1 GiB.
    let batch = ((1usize << 30) / (8 * n_voxels.max(1))).clamp(1, 65535);
    let mut out = Vec::with_capacity(selected.len() * n_voxels);
    for terms in selected.chunks(batch) {
        let (mut grp_start, mut grp_study, mut n_sel, mut counted_f) =
            (vec![0u32], Vec::new(), Vec::new(), Vec::new());
        for sel in terms {
            let few = sel.len() <= n - sel.len();
            if few {
                grp_study.extend_from_slice(sel);
            } else {
                push_complement(sel, n, &mut grp_study);
            }
            grp_start.push(grp_study.len() as u32);
            n_sel.push(sel.len() as u32);
            counted_f.push(few as u8);
        }
        let t = terms.len();
        let d_gs = gpu.htod(&grp_start)?;
        let d_gst = gpu.htod(&grp_study)?;
        let d_nsel = gpu.htod(&n_sel)?;
        let d_cf = gpu.htod(&counted_f)?;
        let mut d_counts = gpu.zeros::<u32>(t * n_voxels)?;
        let mut d_z = gpu.zeros::<f32>(t * n_voxels)?;
        let nv = n_voxels as i64;
        let cfg = launch::grid((64, t as u32, 1), BLOCK, 0);
        // SAFETY: baseline_count(ma_start, ma_vox, grp_start, grp_study, counts, n_vox); study
        // indices < n, voxel indices < n_voxels (mask positions), counts holds t × n_voxels.
        unsafe {
            launch_kernel!(
                gpu,
                MODULE,
                "baseline_count",
                cfg,
                [&d_ma_start, &d_ma_vox, &d_gs, &d_gst, &mut d_counts, &nv]
            )
        }?;
        let (ns, nt) = (n as u32, t as i32);
        let blocks = ((t * n_voxels).div_ceil(BLOCK as usize)).min(65535 * 8) as u32;
        let cfg = launch::grid((blocks, 1, 1), BLOCK, 0);
        // SAFETY: baseline_z(counts, total, n_sel, counted_f, n_studies, n_terms, n_vox, z);
        // every buffer holds what the grid-stride loop reads.
        unsafe {
            launch_kernel!(
                gpu,
                MODULE,
                "baseline_z",
                cfg,
                [&d_counts, &d_total, &d_nsel, &d_cf, &ns, &nt, &nv, &mut d_z]
            )
        }?;
        out.extend(gpu.dtoh(&d_z, t * n_voxels)?);
    }
    Ok(out)
}

/// Pearson r of `map` with standardized rows (see `neurosynth::correlate`).
pub fn correlate_cuda(gpu: &Gpu, rows: &[f32], n_voxels: usize, map: &[f32]) -> Result<Vec<f32>> {
    let t = rows.len() / n_voxels.max(1);
    let d_rows = gpu.htod(rows)?;
    let d_map = gpu.htod(&centred_unit(map, n_voxels))?;
    let mut d_r = gpu.zeros::<f32>(t)?;
    let nv = n_voxels as i64;
    let cfg = launch::grid((t as u32, 1, 1), BLOCK, 0);
    // SAFETY: baseline_correlate(rows, map, n_vox, r); rows holds t × n_voxels, map n_voxels,
    // r t.
    unsafe {
        launch_kernel!(
            gpu,
            MODULE,
            "baseline_correlate",
            cfg,
            [&d_rows, &d_map, &nv, &mut d_r]
        )
    }?;
    gpu.dtoh(&d_r, t)
}
