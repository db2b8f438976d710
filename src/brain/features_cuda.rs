//! Image features of studies on a CUDA device, the same contract as `features::ma_xty_cpu` and
//! `features::image_features_cpu`: peaks → sphere voxels (union, in the mask, on the atlas
//! support) → Xᵀy rows (f64) → β = Xᵀy · (XᵀX)⁻¹ (cuBLAS DGEMM, f32 out). No MA map is ever written.
//!
//! The host snaps peaks to voxels with the CPU's own `peak_voxels` (bit-identical rounding) and
//! uploads them with the study offsets; `kernels/mkda.cu` draws all studies in one launch, one
//! block per study, each voxel counted once by the first peak whose sphere holds it (MKDA), by
//! every sphere that holds it (KDA), or once, with its value, by the peak whose Gaussian is
//! largest there (ALE; per-study Gaussians are uploaded once each, with a study → table index). Xᵀy sums are
//! f64 on both sides and differ only in summation order (relative ~1e-15); features are f32.

use super::features::{check_grids, Peaks};
use super::kernels::MaKernel;
use super::mkda::{peak_voxels_rounded, Rounding};
use super::{Atlas, Grid, Mask};
use crate::device::cuda::{consts, launch, launch_err, launch_kernel, Gpu, RowMajorGemm};
use crate::error::{Error, Result};
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg};
use rayon::prelude::*;

const MODULE: &str = "mkda";
/// Threads per block of the per-study kernels.
const BLOCK: u32 = consts::common::NICLIP_BLOCK;
/// Tile edge of `solve_rows_f64`.
const SOLVE_TILE: usize = consts::mkda::SOLVE_TILE as usize;
/// Largest count the kernels index with 32-bit ints, with headroom for `i += blockDim.x` past the end.
const INDEX_LIMIT: usize = i32::MAX as usize - 65536;

/// Where the per-study Xᵀy sums are accumulated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Accumulate {
    /// Shared memory when k float64 fit in a block's shared memory, else global.
    #[default]
    Auto,
    /// k float64 accumulators per block in shared memory (`mkda_xty_smem`).
    Shared,
    /// f64 atomics straight into the study's row of the output (`mkda_xty_global`).
    Global,
}

/// How β = Xᵀy · (XᵀX)⁻¹ is computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Solver {
    /// cuBLAS when libcublas loads, else the kernel.
    #[default]
    Auto,
    /// cuBLAS DGEMM, then a float64 → float32 kernel.
    Cublas,
    /// `solve_rows_f64` in kernels/mkda.cu (tiled, f64 sums).
    Kernel,
}

/// The atlas, mask and kernel (MKDA or KDA sphere, ALE Gaussians) on a device, ready for many
/// batches of studies.
pub struct CudaMkda<'g> {
    gpu: &'g Gpu,
    family: Family,
    rounding: Rounding,
    /// ALE with per-study sample sizes: each study's table.
    study_table: Option<Vec<i32>>,
    grid: Grid,
    k: usize,
    shape: [i32; 3],
    reach: [i32; 3],
    n_off: usize,
    offsets: CudaSlice<i32>,
    in_sphere: CudaSlice<u8>,
    row: CudaSlice<i32>,
    row_ptr: CudaSlice<u32>,
    cols: CudaSlice<u32>,
    vals: CudaSlice<f32>,
    gram_inv: CudaSlice<f64>,
    /// ALE only: values per offset, table bounds, value cubes (empty for MKDA and KDA).
    values: CudaSlice<f32>,
    table_off: CudaSlice<i32>,
    cube: CudaSlice<f32>,
    n_tables: usize,
}

/// Which kernels of `kernels/mkda.cu` a `CudaMkda` launches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Mkda,
    Kda,
    Ale,
}

impl Family {
    fn of(kernel: &MaKernel) -> Family {
        match kernel {
            MaKernel::Mkda(_) => Family::Mkda,
            MaKernel::Kda(_) => Family::Kda,
            MaKernel::Ale(_) => Family::Ale,
        }
    }

    /// The (shared-memory, global) kernel names.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Family::Mkda => ("mkda_xty_smem", "mkda_xty_global"),
            Family::Kda => ("kda_xty_smem", "kda_xty_global"),
            Family::Ale => ("ale_xty_smem", "ale_xty_global"),
        }
    }
}

/// The arguments of `ale_xty_smem` / `ale_xty_global`: `AleParams` in kernels/mkda.cu, field for
/// field (136 bytes on both sides).
#[repr(C)]
struct AleParams {
    peaks: CUdeviceptr,
    start: CUdeviceptr,
    offsets: CUdeviceptr,
    values: CUdeviceptr,
    table_off: CUdeviceptr,
    cube: CUdeviceptr,
    study_table: CUdeviceptr,
    row: CUdeviceptr,
    row_ptr: CUdeviceptr,
    cols: CUdeviceptr,
    vals: CUdeviceptr,
    xty: CUdeviceptr,
    n_studies: i32,
    n_tables: i32,
    reach: [i32; 3],
    shape: [i32; 3],
    k: i32,
    pad: i32,
}

const _: () = assert!(std::mem::size_of::<AleParams>() == 136);

// SAFETY: plain old data of the layout the kernels read (repr(C), no references).
unsafe impl DeviceRepr for AleParams {}

/// The arguments of `mkda_xty_smem` / `mkda_xty_global`: `MkdaParams` in kernels/mkda.cu, field
/// for field (device pointers, then ints; 112 bytes on both sides).
#[repr(C)]
struct MkdaParams {
    peaks: CUdeviceptr,
    start: CUdeviceptr,
    offsets: CUdeviceptr,
    in_sphere: CUdeviceptr,
    row: CUdeviceptr,
    row_ptr: CUdeviceptr,
    cols: CUdeviceptr,
    vals: CUdeviceptr,
    xty: CUdeviceptr,
    n_studies: i32,
    n_off: i32,
    reach: [i32; 3],
    shape: [i32; 3],
    k: i32,
}

const _: () = assert!(std::mem::size_of::<MkdaParams>() == 112);

// SAFETY: plain old data of the layout the kernels read (repr(C), no references).
unsafe impl DeviceRepr for MkdaParams {}

/// Peaks of a batch of studies as the kernel reads them.
struct PeakTable {
    /// 3 per peak: voxel indices, clamped to [-(2R+2), n-1+2R+2] per axis.
    ijk: Vec<i32>,
    /// n + 1 study offsets into the peaks.
    start: Vec<i32>,
}

fn too_big(what: &str) -> Error {
    Error::Usage(format!(
        "{what} is too large for the CUDA kernel (32-bit indices); split the corpus into batches or use --device cpu"
    ))
}

/// What the kernel reads besides the peaks, prepared on the host (shared by the GPU path and
/// its CPU emulation).
struct HostTables {
    shape: [i32; 3],
    reach: [i32; 3],
    /// 3 per sphere offset.
    offsets: Vec<i32>,
    /// (2rx+1)(2ry+1)(2rz+1) bytes, x fastest: 1 where the offset is in the sphere.
    in_sphere: Vec<u8>,
    /// Per grid voxel: atlas support row when in the mask and on the support, else −1.
    row: Vec<i32>,
    /// ALE: a value per offset, table bounds (n_tables + 1), one value cube per table (the
    /// largest reach, x fastest, 0 off the table); empty otherwise.
    values: Vec<f32>,
    table_off: Vec<i32>,
    cube: Vec<f32>,
    /// The largest offset count of one table (the sphere's count for MKDA and KDA).
    max_off: usize,
}

impl HostTables {
    fn new(kernel: &MaKernel, mask: &Mask, atlas: &Atlas) -> Result<Self> {
        check_grids(mask, atlas)?;
        let n_vox = mask.grid.n_voxels();
        if n_vox >= INDEX_LIMIT {
            return Err(too_big("the grid"));
        }
        let k = atlas.k;
        if k == 0 || k >= INDEX_LIMIT {
            return Err(Error::Usage(format!(
                "the atlas has {k} maps; the CUDA kernel takes 1 to about 2^31"
            )));
        }
        check_atlas(atlas, n_vox)?;
        if mask.index.len() != n_vox {
            return Err(Error::Usage(format!(
                "the mask holds {} voxel entries for a grid of {n_vox}",
                mask.index.len()
            )));
        }
        let shape = mask.grid.shape.map(|n| n as i32);
        let tables: Vec<(&[[i32; 3]], &[f32])> = match kernel {
            MaKernel::Mkda(k) | MaKernel::Kda(k) => vec![(&k.offsets, &[])],
            MaKernel::Ale(a) => a
                .tables
                .iter()
                .map(|t| (&t.offsets[..], &t.values[..]))
                .collect(),
        };
        let reach: [i32; 3] = std::array::from_fn(|a| {
            let r = tables.iter().flat_map(|t| t.0.iter().map(|d| d[a].abs()));
            r.max().unwrap_or(0)
        });
        if reach.iter().any(|&r| !(0..=1024).contains(&r)) {
            return Err(Error::Usage(format!(
                "MKDA sphere reach {reach:?} voxels is out of range; use a radius of at most 1024 voxels"
            )));
        }
        // The membership cube (and ALE's value cubes), built from the offsets lists themselves:
        // the exact same sphere or Gaussian.
        let w = reach.map(|r| (2 * r + 1) as usize);
        let cube_len = w[0] * w[1] * w[2];
        let is_ale = matches!(kernel, MaKernel::Ale(_));
        let mut in_sphere = vec![0u8; if is_ale { 0 } else { cube_len }];
        let mut cube = vec![0.0f32; if is_ale { cube_len * tables.len() } else { 0 }];
        let (mut offsets, mut values, mut table_off) = (Vec::new(), Vec::new(), vec![0i32]);
        let mut max_off = 0;
        for (t, (offs, vals)) in tables.iter().enumerate() {
            if is_ale && vals.len() != offs.len() {
                return Err(Error::Usage(format!(
                    "ALE table {t} holds {} offsets and {} values; build it with AleTable::new",
                    offs.len(),
                    vals.len()
                )));
            }
            max_off = max_off.max(offs.len());
            for (o, d) in offs.iter().enumerate() {
                let c = |a: usize| (d[a] + reach[a]) as usize;
                let at = c(0) + w[0] * (c(1) + w[1] * c(2));
                if is_ale {
                    cube[t * cube_len + at] = vals[o];
                    values.push(vals[o]);
                } else {
                    in_sphere[at] = 1;
                }
                offsets.extend_from_slice(d);
            }
            if offsets.len() / 3 >= INDEX_LIMIT {
                return Err(too_big("the kernel tables"));
            }
            table_off.push((offsets.len() / 3) as i32);
        }
        // A voxel counts when it is in the mask and on the atlas support, as on the CPU.
        let row: Vec<i32> = mask
            .index
            .iter()
            .zip(&atlas.row_of)
            .map(|(&m, &r)| if m >= 0 { r } else { -1 })
            .collect();
        Ok(HostTables {
            shape,
            reach,
            offsets,
            in_sphere,
            row,
            values,
            table_off,
            cube,
            max_off,
        })
    }
}

/// Peaks → voxel indices clamped near the volume, and study offsets; a non-finite peak is an
/// error naming its study. Checks the sizes the kernel's 32-bit indexing relies on.
fn peak_table(
    rounding: Rounding,
    reach: [i32; 3],
    grid: &Grid,
    n_off: usize,
    peaks: &Peaks,
) -> Result<PeakTable> {
    let shape = grid.shape.map(|n| n as i64);
    let reach = reach.map(|r| r as i64);
    let n = peaks.len();
    if n == 0 {
        return Ok(PeakTable {
            ijk: Vec::new(),
            start: vec![0],
        });
    }
    if peaks.start.len() != n + 1
        || peaks.ids.len() != n
        || peaks.start[0] != 0
        || peaks.start[n] != peaks.xyz.len()
        || peaks.start.windows(2).any(|w| w[0] > w[1])
    {
        return Err(Error::Usage(format!(
            "peak table is inconsistent: {n} studies, {} offsets, {} peaks; build it with Peaks::push",
            peaks.start.len(),
            peaks.xyz.len()
        )));
    }
    if n >= INDEX_LIMIT || peaks.xyz.len() >= INDEX_LIMIT {
        return Err(too_big("the number of studies or peaks"));
    }
    let max_np = peaks
        .start
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(0);
    if max_np.saturating_mul(n_off) >= INDEX_LIMIT {
        return Err(too_big(&format!("a study with {max_np} peaks")));
    }
    // Clamping moves a peak only when its sphere misses the volume before and after: a
    // coordinate below −(2R+2) reaches at most −R−2 < 0, above n−1+2R+2 at least n+R+1 > n−1.
    let lo = reach.map(|r| -(2 * r + 2));
    let hi: [i64; 3] = std::array::from_fn(|a| shape[a] - 1 + 2 * reach[a] + 2);
    let per_study: Vec<Vec<i32>> = (0..n)
        .into_par_iter()
        .map(|s| -> Result<Vec<i32>> {
            let vox = peak_voxels_rounded(rounding, grid, peaks.study(s), &peaks.ids[s])?;
            Ok(vox
                .iter()
                .flat_map(|p| (0..3).map(move |a| p[a].clamp(lo[a], hi[a]) as i32))
                .collect())
        })
        .collect::<Result<_>>()?;
    Ok(PeakTable {
        ijk: per_study.concat(),
        start: peaks.start.iter().map(|&s| s as i32).collect(),
    })
}

impl<'g> CudaMkda<'g> {
    /// Uploads the sphere, the in-mask support rows and the atlas (CSR and (XᵀX)⁻¹).
    pub fn new(gpu: &'g Gpu, kernel: &MaKernel, mask: &Mask, atlas: &Atlas) -> Result<Self> {
        if let MaKernel::Ale(a) = kernel {
            // Every study's table index is in range (the count is checked per batch).
            a.check_studies(a.study_table.as_ref().map_or(0, |t| t.len()))?;
        }
        let t = HostTables::new(kernel, mask, atlas)?;
        let study_table = match kernel {
            MaKernel::Ale(a) => a
                .study_table
                .as_ref()
                .map(|st| st.iter().map(|&x| x as i32).collect()),
            _ => None,
        };
        Ok(CudaMkda {
            gpu,
            family: Family::of(kernel),
            rounding: kernel.rounding(),
            study_table,
            grid: mask.grid.clone(),
            k: atlas.k,
            shape: t.shape,
            reach: t.reach,
            n_off: t.max_off,
            values: gpu.htod(&t.values)?,
            table_off: gpu.htod(&t.table_off)?,
            cube: gpu.htod(&t.cube)?,
            n_tables: t.table_off.len() - 1,
            offsets: gpu.htod(&t.offsets)?,
            in_sphere: gpu.htod(&t.in_sphere)?,
            row: gpu.htod(&t.row)?,
            row_ptr: gpu.htod(&atlas.row_ptr)?,
            cols: gpu.htod(&atlas.cols)?,
            vals: gpu.htod(&atlas.vals)?,
            gram_inv: gpu.htod(&atlas.gram_inv)?,
        })
    }

    /// Xᵀy of every study's MA map into `out` (n×k f64, row-major; every element is written).
    /// Returns the accumulation actually used.
    pub fn xty_into(
        &self,
        peaks: &Peaks,
        accumulate: Accumulate,
        out: &mut CudaSlice<f64>,
    ) -> Result<Accumulate> {
        let n = peaks.len();
        let table = peak_table(self.rounding, self.reach, &self.grid, self.n_off, peaks)?;
        let study_table = match &self.study_table {
            Some(st) if st.len() != n => {
                return Err(Error::Usage(format!(
                    "the ALE kernel has sample sizes for {} studies, the peaks hold {n}",
                    st.len()
                )))
            }
            Some(st) => st.clone(),
            None => vec![0; n],
        };
        if out.len() < n * self.k {
            return Err(Error::Cuda(format!(
                "Xᵀy buffer holds {} values, {n}×{} needed",
                out.len(),
                self.k
            )));
        }
        let smem_bytes = self.k * std::mem::size_of::<f64>();
        let (smem_name, global_name) = self.family.names();
        let func_smem = self.gpu.function(MODULE, smem_name)?;
        let static_smem = func_smem
            .shared_size_bytes()
            .map_err(|e| Error::Cuda(format!("cannot query {smem_name}: {e:?}")))?
            .max(0) as usize;
        let fits = smem_bytes + static_smem <= self.gpu.max_shared_optin()?;
        let chosen = match accumulate {
            Accumulate::Auto if fits => Accumulate::Shared,
            Accumulate::Auto => Accumulate::Global,
            Accumulate::Shared if !fits => {
                return Err(Error::Cuda(format!(
                    "{} maps need {smem_bytes} bytes of shared memory per block, more than this device allows; use Accumulate::Global",
                    self.k
                )))
            }
            other => other,
        };
        if n == 0 {
            return Ok(chosen);
        }
        let d_peaks = self.gpu.htod(&table.ijk)?;
        let d_start = self.gpu.htod(&table.start)?;
        let (func, name, shared) = if chosen == Accumulate::Shared {
            use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES as MAX_DYN;
            self.gpu
                .ctx
                .bind_to_thread()
                .map_err(|e| Error::Cuda(format!("cannot bind the CUDA context: {e:?}")))?;
            func_smem
                .set_attribute(MAX_DYN, smem_bytes as i32)
                .map_err(|e| {
                    Error::Cuda(format!(
                        "cannot give {smem_name} {smem_bytes} bytes of shared memory: {e:?}"
                    ))
                })?;
            (func_smem, smem_name, smem_bytes as u32)
        } else {
            (self.gpu.function(MODULE, global_name)?, global_name, 0)
        };
        let d_study_table = self.gpu.htod(&study_table)?;
        // The device pointers' guards order the stream's later work after this launch: they
        // live until it is queued.
        let s = &self.gpu.stream;
        let (peaks, _g1) = d_peaks.device_ptr(s);
        let (start, _g2) = d_start.device_ptr(s);
        let (offsets, _g3) = self.offsets.device_ptr(s);
        let (in_sphere, _g4) = self.in_sphere.device_ptr(s);
        let (row, _g5) = self.row.device_ptr(s);
        let (row_ptr, _g6) = self.row_ptr.device_ptr(s);
        let (cols, _g7) = self.cols.device_ptr(s);
        let (vals, _g8) = self.vals.device_ptr(s);
        let (xty, _g9) = out.device_ptr_mut(s);
        let cfg = launch::grid((n as u32, 1, 1), BLOCK, shared);
        let mut b = s.launch_builder(&func);
        if self.family == Family::Ale {
            let (values, _g10) = self.values.device_ptr(s);
            let (table_off, _g11) = self.table_off.device_ptr(s);
            let (cube, _g12) = self.cube.device_ptr(s);
            let (study_table, _g13) = d_study_table.device_ptr(s);
            let params = AleParams {
                peaks,
                start,
                offsets,
                values,
                table_off,
                cube,
                study_table,
                row,
                row_ptr,
                cols,
                vals,
                xty,
                n_studies: n as i32,
                n_tables: self.n_tables as i32,
                reach: self.reach,
                shape: self.shape,
                k: self.k as i32,
                pad: 0,
            };
            b.arg(&params);
            // SAFETY: AleParams mirrors the kernels' struct field for field; indices checked as
            // for MKDA below, every study's table index < n_tables (built with the tables).
            unsafe { b.launch(cfg) }.map_err(launch_err(name))?;
            return Ok(chosen);
        }
        let params = MkdaParams {
            peaks,
            start,
            offsets,
            in_sphere,
            row,
            row_ptr,
            cols,
            vals,
            xty,
            n_studies: n as i32,
            n_off: self.n_off as i32,
            reach: self.reach,
            shape: self.shape,
            k: self.k as i32,
        };
        b.arg(&params);
        // SAFETY: MkdaParams mirrors the kernels' struct field for field; every index the kernel
        // forms was bounds-checked above (grid < 2^31, peaks clamped, study size × offsets
        // < 2^31, CSR cols < k, out ≥ n×k).
        unsafe { b.launch(cfg) }.map_err(launch_err(name))?;
        Ok(chosen)
    }

    /// β = Xᵀy · (XᵀX)⁻¹ for the first n rows of `xty` into `out` (n×k f32; every element is
    /// written). Returns the solver actually used.
    pub fn solve_into(
        &self,
        xty: &CudaSlice<f64>,
        n: usize,
        solver: Solver,
        out: &mut CudaSlice<f32>,
    ) -> Result<Solver> {
        let k = self.k;
        let nk = n * k;
        if xty.len() < nk || out.len() < nk {
            return Err(Error::Cuda(format!(
                "solve buffers hold {} and {} values, {n}×{k} needed",
                xty.len(),
                out.len()
            )));
        }
        if n >= INDEX_LIMIT || nk >= i64::MAX as usize {
            return Err(too_big("the number of studies"));
        }
        let blas = match solver {
            Solver::Kernel => None,
            Solver::Auto => self.gpu.blas()?,
            Solver::Cublas => Some(self.gpu.blas()?.ok_or_else(|| {
                Error::Cuda("cuBLAS (libcublas.so) cannot be loaded: add the CUDA toolkit's lib directory to LD_LIBRARY_PATH, or use Solver::Kernel".into())
            })?),
        };
        let chosen = if blas.is_some() {
            Solver::Cublas
        } else {
            Solver::Kernel
        };
        if n == 0 {
            return Ok(chosen);
        }
        match blas {
            Some(blas) => {
                // β(n×k) = X(n×k)·G(k×k), row-major, in f64.
                let mut beta64 = self.gpu.zeros::<f64>(nk)?;
                RowMajorGemm::dense(n, k, k).run(&blas, xty, &self.gram_inv, &mut beta64)?;
                let len = nk as i64;
                let blocks = nk.div_ceil(BLOCK as usize).clamp(1, 1 << 16) as u32;
                let cfg = launch::grid((blocks, 1, 1), BLOCK, 0);
                // SAFETY: f64_to_f32(const double*, float*, long long); both hold ≥ nk elements.
                unsafe {
                    launch_kernel!(
                        self.gpu,
                        MODULE,
                        "f64_to_f32",
                        cfg,
                        [&beta64, &mut *out, &len]
                    )
                }?;
                // beta64 is freed when dropped; cudarc orders the free after the kernel on the stream.
            }
            None => {
                let (n_i, k_i) = (n as i32, k as i32);
                let cfg = LaunchConfig {
                    grid_dim: (
                        k.div_ceil(SOLVE_TILE) as u32,
                        n.div_ceil(SOLVE_TILE).min(65535) as u32,
                        1,
                    ),
                    block_dim: (SOLVE_TILE as u32, SOLVE_TILE as u32, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: solve_rows_f64(const double* xty, const double* gram_inv, float* beta,
                // int n, int k) with buffers of ≥ n×k, k×k and n×k elements.
                unsafe {
                    launch_kernel!(
                        self.gpu,
                        MODULE,
                        "solve_rows_f64",
                        cfg,
                        [xty, &self.gram_inv, &mut *out, &n_i, &k_i]
                    )
                }?;
            }
        }
        Ok(chosen)
    }

    /// Xᵀy of every study, n×k f64 on the host.
    pub fn xty(&self, peaks: &Peaks, accumulate: Accumulate) -> Result<Vec<f64>> {
        let nk = peaks.len() * self.k;
        let mut out = self.gpu.zeros::<f64>(nk)?;
        self.xty_into(peaks, accumulate, &mut out)?;
        self.gpu.dtoh(&out, nk)
    }

    /// Atlas coefficients of every study's MA map, n×k f32 on the host.
    pub fn features(
        &self,
        peaks: &Peaks,
        accumulate: Accumulate,
        solver: Solver,
    ) -> Result<Vec<f32>> {
        let n = peaks.len();
        let nk = n * self.k;
        let mut xty = self.gpu.zeros::<f64>(nk)?;
        self.xty_into(peaks, accumulate, &mut xty)?;
        let mut beta = self.gpu.zeros::<f32>(nk)?;
        self.solve_into(&xty, n, solver, &mut beta)?;
        self.gpu.dtoh(&beta, nk)
    }
}

/// The CSR must index inside itself and inside k, or the kernel would read out of bounds.
fn check_atlas(atlas: &Atlas, n_vox: usize) -> Result<()> {
    let rows = atlas.support.len();
    let nnz = atlas.cols.len();
    let bad = |what: &str| {
        Err(Error::Usage(format!(
            "the atlas is inconsistent ({what}); rebuild it with Atlas::read or Atlas::from_maps"
        )))
    };
    if atlas.row_of.len() != n_vox {
        return bad("row_of does not cover the grid");
    }
    if atlas.row_ptr.len() != rows + 1
        || atlas.row_ptr[0] != 0
        || atlas.row_ptr[rows] as usize != nnz
        || atlas.vals.len() != nnz
    {
        return bad("row_ptr does not match cols/vals");
    }
    if atlas.row_ptr.windows(2).any(|w| w[0] > w[1]) {
        return bad("row_ptr decreases");
    }
    if atlas.cols.par_iter().any(|&c| c as usize >= atlas.k) {
        return bad("a map index ≥ k");
    }
    if atlas.row_of.par_iter().any(|&r| r >= rows as i32) {
        return bad("a support row out of range");
    }
    if atlas.gram_inv.len() != atlas.k * atlas.k {
        return bad("(XᵀX)⁻¹ is not k×k");
    }
    Ok(())
}

/// `mkda_xty_*`'s algorithm run on the CPU over the very tables the GPU gets (clamped peaks,
/// offsets, membership cube, combined rows), each study's candidates in one valid serial order
/// of the block's threads. It checks the first-owner union and the host preparation on
/// machines without a GPU; not a fast path.
#[doc(hidden)]
pub fn ma_xty_emulated(
    kernel: &MaKernel,
    mask: &Mask,
    atlas: &Atlas,
    peaks: &Peaks,
) -> Result<Vec<f64>> {
    kernel.check_studies(peaks.len())?;
    let t = HostTables::new(kernel, mask, atlas)?;
    let table = peak_table(kernel.rounding(), t.reach, &mask.grid, t.max_off, peaks)?;
    let family = Family::of(kernel);
    let study_table = |s: usize| match kernel {
        MaKernel::Ale(a) => a.study_table.as_ref().map_or(0, |st| st[s] as usize),
        _ => 0,
    };
    let k = atlas.k;
    let [rx, ry, rz] = t.reach;
    let [nx, ny, nz] = t.shape;
    let (wx, wy) = (2 * rx + 1, 2 * ry + 1);
    let cube_len = (wx * wy * (2 * rz + 1)) as usize;
    let in_range = |x: i32, n: i32| (x as u32) < (n as u32);
    let mut xty = vec![f64::NAN; peaks.len() * k];
    xty.par_chunks_mut(k.max(1))
        .enumerate()
        .for_each(|(s, acc)| {
            acc.fill(0.0);
            let a = table.start[s] as usize;
            let np = (table.start[s + 1] - table.start[s]) as usize;
            let p_ = &table.ijk[3 * a..3 * (a + np)];
            let tab = study_table(s);
            let o0 = t.table_off[tab] as usize;
            let n_off = t.table_off[tab + 1] as usize - o0;
            for c in 0..np * n_off {
                let (p, o) = (c / n_off, o0 + c % n_off);
                let x = if family == Family::Ale {
                    t.values[o]
                } else {
                    1.0
                };
                if x <= 0.0 || x.is_nan() {
                    continue;
                }
                let vi = p_[3 * p] + t.offsets[3 * o];
                let vj = p_[3 * p + 1] + t.offsets[3 * o + 1];
                let vk = p_[3 * p + 2] + t.offsets[3 * o + 2];
                if !in_range(vi, nx) || !in_range(vj, ny) || !in_range(vk, nz) {
                    continue;
                }
                let r = t.row[(vi + nx * (vj + ny * vk)) as usize];
                if r < 0 {
                    continue;
                }
                let cell = |q: usize| {
                    let (di, dj, dk) = (vi - p_[3 * q], vj - p_[3 * q + 1], vk - p_[3 * q + 2]);
                    let near = di.abs() <= rx && dj.abs() <= ry && dk.abs() <= rz;
                    near.then(|| ((di + rx) + wx * ((dj + ry) + wy * (dk + rz))) as usize)
                };
                let owned_elsewhere = match family {
                    Family::Kda => false,
                    Family::Mkda => (0..p).any(|q| cell(q).is_some_and(|c| t.in_sphere[c] != 0)),
                    Family::Ale => (0..np).filter(|&q| q != p).any(|q| {
                        cell(q).is_some_and(|c| {
                            let y = t.cube[tab * cube_len + c];
                            y > x || (y == x && q < p)
                        })
                    }),
                };
                if !owned_elsewhere {
                    atlas.add_row(r as usize, x as f64, acc);
                }
            }
        });
    Ok(xty)
}

/// Xᵀy of every study's MA map on a CUDA device, n×k f64 (`features::ma_xty_cpu` on the GPU).
pub fn ma_xty_cuda(
    gpu: &Gpu,
    kernel: &MaKernel,
    mask: &Mask,
    atlas: &Atlas,
    peaks: &Peaks,
) -> Result<Vec<f64>> {
    CudaMkda::new(gpu, kernel, mask, atlas)?.xty(peaks, Accumulate::Auto)
}

/// Atlas coefficients of every study's MA map on a CUDA device, n×k float32
/// (`features::image_features_cpu` on the GPU).
pub fn image_features_cuda(
    gpu: &Gpu,
    kernel: &MaKernel,
    mask: &Mask,
    atlas: &Atlas,
    peaks: &Peaks,
) -> Result<Vec<f32>> {
    CudaMkda::new(gpu, kernel, mask, atlas)?.features(peaks, Accumulate::Auto, Solver::Auto)
}
