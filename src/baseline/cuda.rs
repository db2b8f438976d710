//! The correlation decoder's counting, z-maps and decoding on a CUDA device
//! (`kernels/baseline.cu`), the same contract as [`super::neurosynth::z_maps`] and
//! [`super::neurosynth::correlate`]: counts are exact (u32 atomics), z is computed in f64 and
//! stored f32, so z-maps equal the CPU's bit for bit; r sums in f64 in another order.

use crate::device::cuda::{consts, launch, launch_err, Gpu};
use crate::error::{Error, Result};
use cudarc::driver::PushKernelArg;

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
    let count = gpu.function(MODULE, "baseline_count")?;
    let zf = gpu.function(MODULE, "baseline_z")?;
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
                let mut it = sel.iter().peekable();
                for s in 0..n as u32 {
                    if it.peek() == Some(&&s) {
                        it.next();
                    } else {
                        grp_study.push(s);
                    }
                }
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
        let mut b = gpu.stream.launch_builder(&count);
        b.arg(&d_ma_start)
            .arg(&d_ma_vox)
            .arg(&d_gs)
            .arg(&d_gst)
            .arg(&mut d_counts)
            .arg(&nv);
        // SAFETY: arguments match baseline_count in order and type; study indices < n, voxel
        // indices < n_voxels (mask positions), counts holds t × n_voxels.
        unsafe { b.launch(cfg) }.map_err(launch_err("baseline_count"))?;
        let (ns, nt) = (n as u32, t as i32);
        let blocks = ((t * n_voxels).div_ceil(BLOCK as usize)).min(65535 * 8) as u32;
        let cfg = launch::grid((blocks, 1, 1), BLOCK, 0);
        let mut b = gpu.stream.launch_builder(&zf);
        b.arg(&d_counts)
            .arg(&d_total)
            .arg(&d_nsel)
            .arg(&d_cf)
            .arg(&ns)
            .arg(&nt)
            .arg(&nv)
            .arg(&mut d_z);
        // SAFETY: arguments match baseline_z; every buffer holds what the grid-stride loop reads.
        unsafe { b.launch(cfg) }.map_err(launch_err("baseline_z"))?;
        out.extend(gpu.dtoh(&d_z, t * n_voxels)?);
    }
    Ok(out)
}

/// Pearson r of `map` with standardized rows (see `neurosynth::correlate`).
pub fn correlate_cuda(gpu: &Gpu, rows: &[f32], n_voxels: usize, map: &[f32]) -> Result<Vec<f32>> {
    let t = rows.len() / n_voxels.max(1);
    let mean = map.iter().map(|&x| x as f64).sum::<f64>() / n_voxels as f64;
    let ss: f64 = map.iter().map(|&x| (x as f64 - mean).powi(2)).sum();
    let centred: Vec<f64> = map.iter().map(|&x| (x as f64 - mean) / ss.sqrt()).collect();
    let d_rows = gpu.htod(rows)?;
    let d_map = gpu.htod(&centred)?;
    let mut d_r = gpu.zeros::<f32>(t)?;
    let f = gpu.function(MODULE, "baseline_correlate")?;
    let nv = n_voxels as i64;
    let cfg = launch::grid((t as u32, 1, 1), BLOCK, 0);
    let mut b = gpu.stream.launch_builder(&f);
    b.arg(&d_rows).arg(&d_map).arg(&nv).arg(&mut d_r);
    // SAFETY: arguments match baseline_correlate; rows holds t × n_voxels, map n_voxels, r t.
    unsafe { b.launch(cfg) }.map_err(launch_err("baseline_correlate"))?;
    gpu.dtoh(&d_r, t)
}
