//! The augmentations on a CUDA device (`kernels/augment.cu`), the same contract as
//! `augment_peaks_cpu` / `augment_map_cpu`. One generic launcher runs every registered
//! augmentation by its [`Kind`], passing the one `AugParams` struct to its kernel.
//!
//! What runs where: every draw and every per-element function runs in the kernels (one thread
//! per peak, per new focus, per study, per mask voxel; three convolution passes per smoothing).
//! The host uploads each peak-level item's input and reads its output back: dropout's kept peaks
//! are compacted, and new foci placed after their study's peaks, on the host. Map-level items run
//! on the device-resident maps; the percentiles of threshold/binarize are computed on the host
//! (the maps are read back for them, the cut uploaded per map).

use super::{
    check_map, check_mask, check_peaks, compact, filters, in_mask, with_added, AugmentSpec,
    Augmentation, Augmented, Kind,
};
use crate::brain::{Mask, Peaks};
use crate::device::cuda::{consts, launch, launch_err, Gpu};
use crate::error::{Error, Result};
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr, PushKernelArg};

const MODULE: &str = "augment";
const BLOCK: u32 = consts::common::NICLIP_BLOCK;
/// Blocks of a grid-stride launch at most.
const MAX_BLOCKS: usize = 65535 * 8;

/// `AugParams` in kernels/augment.cu, field for field (280 bytes on both sides).
#[repr(C)]
struct AugParams {
    xyz_in: CUdeviceptr,
    xyz_out: CUdeviceptr,
    keys: CUdeviceptr,
    index: CUdeviceptr,
    keep: CUdeviceptr,
    value: CUdeviceptr,
    mask_vox: CUdeviceptr,
    vol: CUdeviceptr,
    vol_out: CUdeviceptr,
    scalar: CUdeviceptr,
    weights: CUdeviceptr,
    seed: u64,
    epoch: u64,
    item: u64,
    a: f64,
    b: f64,
    affine: [f64; 12],
    n: i64,
    n_mask: i64,
    n_vox: i64,
    shape: [i32; 3],
    per_study: i32,
    axis: i32,
    radius: i32,
    pad: [i32; 2],
}

const _: () = assert!(std::mem::size_of::<AugParams>() == 280);

// SAFETY: plain old data of the layout the kernels read (repr(C), no references).
unsafe impl DeviceRepr for AugParams {}

/// The device buffers of one launch; those a kind does not use hold one zero element.
struct Bufs {
    xyz_in: CudaSlice<f64>,
    xyz_out: CudaSlice<f64>,
    keys: CudaSlice<u64>,
    index: CudaSlice<u32>,
    keep: CudaSlice<u8>,
    value: CudaSlice<f64>,
    mask_vox: CudaSlice<u32>,
    vol: CudaSlice<f32>,
    vol_out: CudaSlice<f32>,
    scalar: CudaSlice<f64>,
    weights: CudaSlice<f64>,
}

impl Bufs {
    fn new(gpu: &Gpu) -> Result<Bufs> {
        Ok(Bufs {
            xyz_in: gpu.zeros(1)?,
            xyz_out: gpu.zeros(1)?,
            keys: gpu.zeros(1)?,
            index: gpu.zeros(1)?,
            keep: gpu.zeros(1)?,
            value: gpu.zeros(1)?,
            mask_vox: gpu.zeros(1)?,
            vol: gpu.zeros(1)?,
            vol_out: gpu.zeros(1)?,
            scalar: gpu.zeros(1)?,
            weights: gpu.zeros(1)?,
        })
    }
}

/// What a launch needs besides the buffers.
#[derive(Default)]
struct Counts {
    seed: u64,
    epoch: u64,
    item: u64,
    n: usize,
    n_mask: usize,
    n_vox: usize,
    shape: [i32; 3],
    affine: [f64; 12],
    per_study: i32,
    axis: i32,
    radius: i32,
}

/// Launches `aug`'s kernel over `c.n` work items. The caller sized every buffer the kind reads
/// to the counts (checked below where a wrong size could overrun).
fn launch_aug(gpu: &Gpu, aug: &dyn Augmentation, b: &mut Bufs, c: &Counts) -> Result<()> {
    if c.n == 0 {
        return Ok(());
    }
    let name = aug.kernel();
    let func = gpu.function(MODULE, name)?;
    let [pa, pb] = aug.kernel_params();
    let s = &gpu.stream;
    // The guards order the stream's later work after this launch: they live until it is queued.
    let (xyz_in, _g0) = b.xyz_in.device_ptr(s);
    let (xyz_out, _g1) = b.xyz_out.device_ptr_mut(s);
    let (keys, _g2) = b.keys.device_ptr(s);
    let (index, _g3) = b.index.device_ptr(s);
    let (keep, _g4) = b.keep.device_ptr_mut(s);
    let (value, _g5) = b.value.device_ptr_mut(s);
    let (mask_vox, _g6) = b.mask_vox.device_ptr(s);
    let (vol, _g7) = b.vol.device_ptr_mut(s);
    let (vol_out, _g8) = b.vol_out.device_ptr_mut(s);
    let (scalar, _g9) = b.scalar.device_ptr(s);
    let (weights, _g10) = b.weights.device_ptr(s);
    let params = AugParams {
        xyz_in,
        xyz_out,
        keys,
        index,
        keep,
        value,
        mask_vox,
        vol,
        vol_out,
        scalar,
        weights,
        seed: c.seed,
        epoch: c.epoch,
        item: c.item,
        a: pa,
        b: pb,
        affine: c.affine,
        n: c.n as i64,
        n_mask: c.n_mask as i64,
        n_vox: c.n_vox as i64,
        shape: c.shape,
        per_study: c.per_study,
        axis: c.axis,
        radius: c.radius,
        pad: [0; 2],
    };
    let mut l = s.launch_builder(&func);
    l.arg(&params);
    // SAFETY: AugParams mirrors the kernels' struct field for field; the callers below sized
    // every buffer the kernel of this kind indexes to the counts (peaks, studies, maps × voxels;
    // mask voxels < n_vox, checked by `check_map`/`check_mask`).
    unsafe { l.launch(launch::flat(c.n, BLOCK, MAX_BLOCKS)) }.map_err(launch_err(name))?;
    Ok(())
}

/// The grid's affine, rows x, y, z, and shape as the kernels read them.
fn grid_counts(mask: &Mask, c: &mut Counts) -> Result<()> {
    let a = &mask.grid.affine;
    c.affine = std::array::from_fn(|i| a[i / 4][i % 4]);
    let shape = mask.grid.shape;
    if shape.iter().any(|&n| n == 0 || n > i32::MAX as usize) {
        return Err(Error::Usage(format!(
            "the mask's grid {shape:?} is too large for the CUDA augmentation kernels"
        )));
    }
    c.shape = shape.map(|n| n as i32);
    c.n_vox = mask.grid.n_voxels();
    c.n_mask = mask.len();
    Ok(())
}

/// The spec's peak-level items on the device: the contract of `augment_peaks_cpu`.
pub fn augment_peaks_cuda(
    gpu: &Gpu,
    spec: &AugmentSpec,
    peaks: &Peaks,
    keys: &[u64],
    mask: &Mask,
    seed: u64,
    epoch: u64,
) -> Result<Augmented> {
    check_peaks(peaks, keys)?;
    spec.max_output_peaks(peaks.xyz.len(), peaks.len())?;
    check_mask(spec, mask)?;
    let mut c = Counts {
        seed,
        epoch,
        ..Counts::default()
    };
    grid_counts(mask, &mut c)?;
    let mut out = peaks.clone();
    let mut radius = None;
    for (item, aug) in spec.peak_items() {
        c.item = item;
        match aug.kind() {
            Kind::MovePeak => move_peaks(gpu, aug, &mut out, keys, &mut c)?,
            Kind::KeepPeak => out = keep_peaks(gpu, aug, &out, keys, &mut c)?,
            Kind::AddPeaks => out = add_peaks(gpu, aug, &out, keys, mask, &mut c)?,
            Kind::StudyValue => radius = Some(study_values(gpu, aug, keys, &mut c)?),
            Kind::MapValue | Kind::Separable => {}
        }
    }
    Ok(Augmented { peaks: out, radius })
}

/// MovePeak: one thread per peak, the moved peaks read back in place.
fn move_peaks(
    gpu: &Gpu,
    aug: &dyn Augmentation,
    out: &mut Peaks,
    keys: &[u64],
    c: &mut Counts,
) -> Result<()> {
    let mut b = Bufs::new(gpu)?;
    peak_inputs(gpu, out, keys, &mut b)?;
    b.xyz_in = gpu.htod(out.xyz.as_flattened())?;
    b.xyz_out = gpu.zeros(3 * out.xyz.len())?;
    c.n = out.xyz.len();
    launch_aug(gpu, aug, &mut b, c)?;
    let xyz = gpu.dtoh(&b.xyz_out, 3 * c.n)?;
    for (p, q) in out.xyz.iter_mut().zip(xyz.chunks_exact(3)) {
        *p = [q[0], q[1], q[2]];
    }
    Ok(())
}

/// KeepPeak: one flag per peak on the device, the kept peaks compacted on the host.
fn keep_peaks(
    gpu: &Gpu,
    aug: &dyn Augmentation,
    peaks: &Peaks,
    keys: &[u64],
    c: &mut Counts,
) -> Result<Peaks> {
    let mut b = Bufs::new(gpu)?;
    peak_inputs(gpu, peaks, keys, &mut b)?;
    b.keep = gpu.zeros(peaks.xyz.len())?;
    c.n = peaks.xyz.len();
    launch_aug(gpu, aug, &mut b, c)?;
    let keep: Vec<bool> = gpu.dtoh(&b.keep, c.n)?.iter().map(|&k| k != 0).collect();
    Ok(compact(peaks, &keep))
}

/// AddPeaks: one thread per new peak (study-major), appended after each study's own on the host.
fn add_peaks(
    gpu: &Gpu,
    aug: &dyn Augmentation,
    peaks: &Peaks,
    keys: &[u64],
    mask: &Mask,
    c: &mut Counts,
) -> Result<Peaks> {
    let k = aug.added_per_study();
    let mut b = Bufs::new(gpu)?;
    b.keys = gpu.htod(keys)?;
    b.mask_vox = gpu.htod(&mask.voxels)?;
    b.xyz_out = gpu.zeros(3 * k * peaks.len())?;
    c.n = k * peaks.len();
    c.per_study = k as i32;
    launch_aug(gpu, aug, &mut b, c)?;
    let new = gpu.dtoh(&b.xyz_out, 3 * c.n)?;
    let at = |s: usize, j: usize| {
        let i = 3 * (s * k + j);
        [new[i], new[i + 1], new[i + 2]]
    };
    Ok(with_added(peaks, k, at))
}

/// StudyValue: one thread per study.
fn study_values(
    gpu: &Gpu,
    aug: &dyn Augmentation,
    keys: &[u64],
    c: &mut Counts,
) -> Result<Vec<f64>> {
    let mut b = Bufs::new(gpu)?;
    b.keys = gpu.htod(keys)?;
    b.value = gpu.zeros(keys.len())?;
    c.n = keys.len();
    launch_aug(gpu, aug, &mut b, c)?;
    gpu.dtoh(&b.value, c.n)
}

/// Each peak's study key and index in its study, uploaded.
fn peak_inputs(gpu: &Gpu, peaks: &Peaks, keys: &[u64], b: &mut Bufs) -> Result<()> {
    b.keys = gpu.htod(&super::per_peak(peaks, keys, |key, _| key))?;
    b.index = gpu.htod(&super::per_peak(peaks, keys, |_, j| j as u32))?;
    Ok(())
}

/// The spec's map-level items on `keys.len()` dense volumes on `mask.grid`, one after the other
/// in `vols` (map m's study key is `keys[m]`): the contract of `augment_map_cpu` per map.
pub fn augment_maps_cuda(
    gpu: &Gpu,
    spec: &AugmentSpec,
    vols: &mut [f32],
    mask: &Mask,
    keys: &[u64],
    seed: u64,
    epoch: u64,
) -> Result<()> {
    let n_vox = mask.grid.n_voxels();
    if keys.len().checked_mul(n_vox) != Some(vols.len()) {
        return Err(Error::Usage(format!(
            "map augmentation got {} values for {} maps of {n_vox} voxels",
            vols.len(),
            keys.len()
        )));
    }
    for vol in vols.chunks_exact(n_vox.max(1)) {
        check_map(vol, mask)?;
    }
    if keys.is_empty() || spec.map_items().next().is_none() {
        return Ok(());
    }
    let mut c = Counts {
        seed,
        epoch,
        ..Counts::default()
    };
    grid_counts(mask, &mut c)?;
    let mut b = Bufs::new(gpu)?;
    b.keys = gpu.htod(keys)?;
    b.mask_vox = gpu.htod(&mask.voxels)?;
    b.vol = gpu.htod(vols)?;
    for (item, aug) in spec.map_items() {
        c.item = item;
        match aug.kind() {
            Kind::MapValue => {
                if aug.needs_scalar() {
                    let now = gpu.dtoh(&b.vol, vols.len())?;
                    let cuts: Vec<f64> = now
                        .chunks_exact(n_vox)
                        .map(|v| aug.map_scalar(&mut in_mask(v, mask)))
                        .collect();
                    b.scalar = gpu.htod(&cuts)?;
                }
                c.n = keys.len() * mask.len();
                launch_aug(gpu, aug, &mut b, &c)?;
            }
            Kind::Separable => smooth_passes(gpu, aug, mask, &mut b, &mut c, vols.len())?,
            _ => {}
        }
    }
    vols.copy_from_slice(&gpu.dtoh(&b.vol, vols.len())?);
    Ok(())
}

/// One launch per axis whose filter is longer than one tap, ping-ponging `vol` and `vol_out`.
fn smooth_passes(
    gpu: &Gpu,
    aug: &dyn Augmentation,
    mask: &Mask,
    b: &mut Bufs,
    c: &mut Counts,
    len: usize,
) -> Result<()> {
    for (axis, w) in filters(aug, &mask.grid)?.iter().enumerate() {
        if w.len() <= 1 {
            continue;
        }
        b.weights = gpu.htod(w)?;
        b.vol_out = gpu.zeros(len)?;
        c.n = len;
        c.axis = axis as i32;
        c.radius = (w.len() / 2) as i32;
        launch_aug(gpu, aug, b, c)?;
        std::mem::swap(&mut b.vol, &mut b.vol_out);
    }
    Ok(())
}
