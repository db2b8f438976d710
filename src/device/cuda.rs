//! CUDA through cudarc: context, stream and kernel modules (PTX built by build.rs, or the
//! embedded sources compiled by NVRTC when no PTX was built), copies and cuBLAS.
//!
//! Module loading: the PTX that build.rs compiled (with `cfg(niclip_ptx)`, for `PTX_ARCH`) is used
//! when the device's compute capability is at least that arch; otherwise, or when the driver
//! rejects it (a PTX ISA newer than the driver), the embedded `.cu` source is compiled by NVRTC
//! for the device, with `kernels/common.cuh` pasted in place of its `#include`.

use crate::error::{Error, Result};
use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cudaDataType};
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, StridedBatchedConfig};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DevicePtrMut,
    DeviceRepr, ValidAsZeroBits,
};
use cudarc::nvrtc::{CompileOptions, Ptx};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use super::emulator::{self, choose_driver, driver_installed};

/// What build.rs wrote: `COMMON`, `SOURCES` (name, .cu text), `PTX_ARCH`, `PTX` (name, PTX text)
/// and `consts`.
mod built {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// The integer constants the kernels `#define` (block sizes, tiles), read from the sources by
/// build.rs: `consts::<family>::NAME` for `kernels/<family>.cu`, `consts::common` for
/// `kernels/common.cuh`. The host launches with these, so the two sides cannot drift apart.
pub use built::consts;

/// Number of CUDA devices; 0 when the driver library is absent (checked before any context,
/// since creating one without a driver panics).
pub fn device_count() -> usize {
    if choose_driver().is_err() || !driver_installed() {
        return 0;
    }
    CudaContext::device_count()
        .map(|n| n.max(0) as usize)
        .unwrap_or(0)
}

/// Whether NVRTC (libnvrtc) can be loaded, so that the embedded sources can be compiled.
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen libnvrtc.
    choose_driver().is_ok() && unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Whether cuBLAS (libcublas) can be loaded.
pub fn cublas_available() -> bool {
    // SAFETY: only tries to dlopen libcublas.
    choose_driver().is_ok() && unsafe { cudarc::cublas::sys::is_culib_present() }
}

/// Whether build.rs compiled every kernel to PTX (nvcc was found and succeeded).
pub fn built_with_ptx() -> bool {
    cfg!(niclip_ptx)
}

/// The arch build.rs compiled PTX for (`sm_90` unless `NICLIP_CUDA_ARCH` said otherwise).
pub fn built_ptx_arch() -> &'static str {
    built::PTX_ARCH
}

/// Names of the kernel families (`kernels/<name>.cu`).
pub fn kernel_names() -> Vec<&'static str> {
    built::SOURCES.iter().map(|(n, _)| *n).collect()
}

/// The embedded source of `kernels/<name>.cu` with `common.cuh` pasted in place of its
/// `#include`, ready for NVRTC (which is given no include path).
pub fn kernel_source(name: &str) -> Option<String> {
    let (_, src) = built::SOURCES.iter().find(|(n, _)| *n == name)?;
    Some(
        src.lines()
            .map(|l| {
                let t = l.trim();
                if t.starts_with("#include") && t.contains("\"common.cuh\"") {
                    built::COMMON
                        .lines()
                        .filter(|c| c.trim() != "#pragma once")
                        .collect::<Vec<_>>()
                        .join("\n")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// The PTX build.rs compiled for `kernels/<name>.cu`, if any.
pub fn built_ptx(name: &str) -> Option<&'static str> {
    if !built_with_ptx() {
        return None;
    }
    built::PTX.iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
}

/// Compiles the embedded `kernels/<name>.cu` with NVRTC for `arch` (`compute_90`, `compute_80`, …).
/// IEEE arithmetic (no fast math), as nvcc in build.rs.
pub fn nvrtc_compile(name: &str, arch: &str) -> Result<Ptx> {
    let src = kernel_source(name).ok_or_else(|| {
        Error::Cuda(format!(
            "no kernel source kernels/{name}.cu was embedded at build time"
        ))
    })?;
    if !nvrtc_available() {
        return Err(Error::Cuda(format!(
            "kernels/{name}.cu needs NVRTC (libnvrtc.so) to compile, and it cannot be loaded: \
             add the CUDA toolkit's lib directory to LD_LIBRARY_PATH, or rebuild with nvcc on \
             PATH (or $CUDA_HOME set) so build.rs ships PTX; or use --device cpu"
        )));
    }
    let opts = CompileOptions {
        options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()],
        name: Some(format!("{name}.cu")),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(src, opts).map_err(|e| {
        let detail = match &e {
            cudarc::nvrtc::CompileError::CompileError { log, .. } => {
                log.to_string_lossy().into_owned()
            }
            other => format!("{other:?}"),
        };
        Error::Cuda(format!(
            "NVRTC could not compile kernels/{name}.cu for {arch}: {detail}"
        ))
    })
}

/// `sm_90` / `sm_90a` / `compute_80` → (90, arch-specific).
fn parse_arch(arch: &str) -> Option<(u32, bool)> {
    let digits = arch
        .trim_start_matches("sm_")
        .trim_start_matches("compute_");
    let specific = digits.ends_with('a') || digits.ends_with('f');
    digits
        .trim_end_matches(['a', 'f'])
        .parse()
        .ok()
        .map(|v| (v, specific))
}

/// A driver error as niclip's, saying what was being done.
pub(crate) fn cuda_err(what: &str) -> impl FnOnce(cudarc::driver::DriverError) -> Error + '_ {
    move |e| Error::Cuda(format!("{what}: {e:?}"))
}

/// A failed kernel launch as niclip's error, naming the kernel (and, on the emulated device,
/// the check it failed).
pub(crate) fn launch_err(kernel: &str) -> impl FnOnce(cudarc::driver::DriverError) -> Error + '_ {
    move |e| match emulator::last_error() {
        Some(why) => Error::Cuda(format!("launch of {kernel} failed: {e:?}: {why}")),
        None => Error::Cuda(format!("launch of {kernel} failed: {e:?}")),
    }
}

/// Launches kernel `$name` of `kernels/$module.cu` on `$gpu` (a [`Gpu`]) with launch
/// configuration `$cfg` and the bracketed arguments, in the kernel's parameter order; evaluates
/// to a `Result<()>` whose error names the kernel. It expands to the launch itself, so it is
/// written inside `unsafe { }` with a SAFETY comment saying why the arguments fit the kernel.
macro_rules! launch_kernel {
    ($gpu:expr, $module:expr, $name:expr, $cfg:expr, [$($arg:expr),* $(,)?]) => {{
        let gpu: &$crate::device::cuda::Gpu = $gpu;
        let name: &str = $name;
        match gpu.function($module, name) {
            Ok(f) => {
                let mut l = gpu.stream.launch_builder(&f);
                $(::cudarc::driver::PushKernelArg::arg(&mut l, $arg);)*
                l.launch($cfg)
                    .map(|_| ())
                    .map_err($crate::device::cuda::launch_err(name))
            }
            Err(e) => Err(e),
        }
    }};
}
pub(crate) use launch_kernel;

/// The launch shapes the kernel families use.
pub mod launch {
    use cudarc::driver::LaunchConfig;

    /// A grid-stride loop over `count` elements: blocks of `threads`, at most `max_blocks`.
    pub fn flat(count: usize, threads: u32, max_blocks: usize) -> LaunchConfig {
        let blocks = count.div_ceil(threads as usize).clamp(1, max_blocks);
        grid((blocks as u32, 1, 1), threads, 0)
    }

    /// One block of `threads` per row, `models` rows of blocks (the many-models kernels).
    pub fn rows(rows: usize, models: usize, threads: u32) -> LaunchConfig {
        grid((rows as u32, models as u32, 1), threads, 0)
    }

    /// Any grid of one-dimensional blocks, with `shared` bytes of dynamic shared memory.
    pub fn grid(grid_dim: (u32, u32, u32), threads: u32, shared: u32) -> LaunchConfig {
        LaunchConfig {
            grid_dim,
            block_dim: (threads, 1, 1),
            shared_mem_bytes: shared,
        }
    }
}

/// Element types of the kernels with an `_f32` and a `_bf16` entry, and of GEMM outputs. bf16
/// values are held as their `u16` bits (see [`to_bf16`]).
pub trait Elem: DeviceRepr + ValidAsZeroBits + Default + Clone + Copy + Unpin {
    const SUFFIX: &'static str;
    const CUDA_TYPE: cudaDataType;
    /// A quiet NaN (tests poison outputs with it).
    const NAN: Self;
}

impl Elem for f32 {
    const SUFFIX: &'static str = "f32";
    const CUDA_TYPE: cudaDataType = cudaDataType::CUDA_R_32F;
    const NAN: f32 = f32::NAN;
}

impl Elem for u16 {
    const SUFFIX: &'static str = "bf16";
    const CUDA_TYPE: cudaDataType = cudaDataType::CUDA_R_16BF;
    const NAN: u16 = 0x7FC0;
}

/// bf16 bits of each value, rounded to nearest even (as the kernels round).
pub fn to_bf16(x: &[f32]) -> Vec<u16> {
    x.iter()
        .map(|v| half::bf16::from_f32(*v).to_bits())
        .collect()
}

/// f32 values of bf16 bits.
pub fn from_bf16(x: &[u16]) -> Vec<f32> {
    x.iter()
        .map(|b| half::bf16::from_bits(*b).to_f32())
        .collect()
}

/// The real types cuBLAS multiplies in their own precision (SGEMM, DGEMM).
pub trait GemmReal: DeviceRepr + Copy {
    const ONE: Self;
    const ZERO: Self;
}

impl GemmReal for f32 {
    const ONE: f32 = 1.0;
    const ZERO: f32 = 0.0;
}

impl GemmReal for f64 {
    const ONE: f64 = 1.0;
    const ZERO: f64 = 0.0;
}

/// One row-major matrix product on cuBLAS: `C = op(A)·op(B)`, or `C += op(A)·op(B)` when
/// `accumulate`. C is `rows × cols` and the inner dimension `inner`; `ta` / `tb` say that A / B
/// are stored transposed; `lda`, `ldb`, `ldc` are the stored matrices' row strides (elements).
///
/// cuBLAS is column-major, where a row-major X reads as Xᵀ: it computes Cᵀ = op(B)ᵀ·op(A)ᵀ, so
/// the operands go in swapped. Every operand's extent is checked before the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowMajorGemm {
    pub rows: usize,
    pub cols: usize,
    pub inner: usize,
    pub ta: bool,
    pub tb: bool,
    pub lda: usize,
    pub ldb: usize,
    pub ldc: usize,
    pub accumulate: bool,
}

/// One operand of a strided batch: the buffer (from the first matrix on) and the elements
/// between consecutive matrices.
pub type Batched<'a, B> = (&'a B, usize);

impl RowMajorGemm {
    /// `C[rows, cols] = A[rows, inner] · B[inner, cols]`, all three dense, none transposed.
    pub fn dense(rows: usize, cols: usize, inner: usize) -> RowMajorGemm {
        RowMajorGemm {
            rows,
            cols,
            inner,
            ta: false,
            tb: false,
            lda: inner,
            ldb: cols,
            ldc: cols,
            accumulate: false,
        }
    }

    /// A dense layer, `y[rows, out] = x[rows, inp] · w[out, inp]ᵀ` (+ y when `accumulate`): A = x,
    /// B = w as PyTorch stores it.
    pub fn linear(rows: usize, out: usize, inp: usize, accumulate: bool) -> RowMajorGemm {
        RowMajorGemm {
            rows,
            cols: out,
            inner: inp,
            ta: false,
            tb: true,
            lda: inp,
            ldb: inp,
            ldc: out,
            accumulate,
        }
    }

    /// The elements A, B and C span (0 for an empty product).
    fn spans(&self) -> [usize; 3] {
        let span = |r: usize, c: usize, ld: usize| {
            if self.rows == 0 || self.cols == 0 || r == 0 || c == 0 {
                0
            } else {
                (r - 1) * ld + c
            }
        };
        // op(A) is rows × inner: stored transposed, inner rows of `rows`.
        let a = match self.ta {
            false => span(self.rows, self.inner, self.lda),
            true => span(self.inner, self.rows, self.lda),
        };
        let b = match self.tb {
            false => span(self.inner, self.cols, self.ldb),
            true => span(self.cols, self.inner, self.ldb),
        };
        [a, b, span(self.rows, self.cols, self.ldc)]
    }

    /// Checks that `batch` matrices `stride` apart fit in each operand (len, stride).
    fn check(&self, batch: usize, operands: [(usize, usize); 3]) -> Result<()> {
        for ((len, stride), (span, name)) in operands
            .into_iter()
            .zip(self.spans().into_iter().zip(["A", "B", "C"]))
        {
            let need = if span == 0 {
                0
            } else {
                (batch - 1) * stride + span
            };
            if len < need {
                return Err(Error::Cuda(format!(
                    "GEMM {}x{}x{}: {name} holds {len} elements, {need} needed",
                    self.rows, self.cols, self.inner
                )));
            }
        }
        Ok(())
    }

    /// The column-major call (A and B swapped), its sizes checked against cuBLAS's `int`.
    fn config<T: Copy>(&self, one: T, zero: T) -> Result<GemmConfig<T>> {
        let int = |n: usize| {
            i32::try_from(n).map_err(|_| {
                Error::Cuda(format!(
                    "GEMM size {n} exceeds cuBLAS's 32-bit int; use a smaller batch"
                ))
            })
        };
        let op = |t: bool| if t { CUBLAS_OP_T } else { CUBLAS_OP_N };
        Ok(GemmConfig {
            transa: op(self.tb),
            transb: op(self.ta),
            m: int(self.cols)?,
            n: int(self.rows)?,
            k: int(self.inner)?,
            alpha: one,
            lda: int(self.ldb)?,
            ldb: int(self.lda)?,
            beta: if self.accumulate { one } else { zero },
            ldc: int(self.ldc)?,
        })
    }

    fn is_empty(&self) -> bool {
        self.rows == 0 || self.cols == 0
    }

    /// In the operands' own precision (cuBLAS SGEMM / DGEMM).
    pub fn run<T: GemmReal, A: DevicePtr<T>, B: DevicePtr<T>, C: DevicePtrMut<T>>(
        &self,
        blas: &CudaBlas,
        a: &A,
        b: &B,
        c: &mut C,
    ) -> Result<()>
    where
        CudaBlas: Gemm<T>,
    {
        self.check(1, [(a.len(), 0), (b.len(), 0), (c.len(), 0)])?;
        if self.is_empty() {
            return Ok(());
        }
        let cfg = self.config(T::ONE, T::ZERO)?;
        // SAFETY: every operand spans what the sizes and strides reach (checked above); C
        // aliases neither A nor B (it is borrowed mutably).
        unsafe { blas.gemm(cfg, b, a, c) }.map_err(|e| Error::Cuda(format!("cuBLAS GEMM: {e:?}")))
    }

    /// `batch` independent products in the operands' own precision (cuBLAS
    /// S/DgemmStridedBatched): matrix i of each operand starts `i · stride` elements in.
    pub fn run_batched<T: GemmReal, A: DevicePtr<T>, B: DevicePtr<T>, C: DevicePtrMut<T>>(
        &self,
        blas: &CudaBlas,
        batch: usize,
        (a, stride_a): Batched<A>,
        (b, stride_b): Batched<B>,
        (c, stride_c): (&mut C, usize),
    ) -> Result<()>
    where
        CudaBlas: Gemm<T>,
    {
        if batch == 0 {
            return Ok(());
        }
        self.check(
            batch,
            [
                (a.len(), stride_a),
                (b.len(), stride_b),
                (c.len(), stride_c),
            ],
        )?;
        if self.is_empty() {
            return Ok(());
        }
        let int = |n: usize| {
            i32::try_from(n)
                .map_err(|_| Error::Cuda(format!("{n} GEMMs are too many for one cuBLAS call")))
        };
        let cfg = StridedBatchedConfig {
            gemm: self.config(T::ONE, T::ZERO)?,
            batch_size: int(batch)?,
            stride_a: stride_b as i64,
            stride_b: stride_a as i64,
            stride_c: stride_c as i64,
        };
        // SAFETY: every operand holds `batch` matrices `stride` apart of the extents the sizes
        // reach (checked above); C aliases neither A nor B.
        unsafe { blas.gemm_strided_batched(cfg, b, a, c) }
            .map_err(|e| Error::Cuda(format!("cuBLAS strided-batched GEMM: {e:?}")))
    }

    /// bf16 A and B with f32 compute (cublasGemmEx), C bf16 or f32. `stream` is `blas`'s.
    pub fn run_bf16<T: Elem, A: DevicePtr<u16>, B: DevicePtr<u16>, C: DevicePtrMut<T>>(
        &self,
        stream: &CudaStream,
        blas: &CudaBlas,
        a: &A,
        b: &B,
        c: &mut C,
    ) -> Result<()> {
        self.check(1, [(a.len(), 0), (b.len(), 0), (c.len(), 0)])?;
        if self.is_empty() {
            return Ok(());
        }
        let cfg = self.config(1.0f32, 0.0f32)?;
        let (ap, _ga) = a.device_ptr(stream);
        let (bp, _gb) = b.device_ptr(stream);
        let (cp, _gc) = c.device_ptr_mut(stream);
        // SAFETY: the operands span what the sizes reach (checked above); alpha and beta are
        // host f32 (the handle's default pointer mode) that outlive the call, which is queued on
        // the handle's stream; the guards keep the buffers ordered until it is.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *blas.handle(),
                cfg.transa,
                cfg.transb,
                cfg.m,
                cfg.n,
                cfg.k,
                &cfg.alpha as *const f32 as *const c_void,
                bp as *const c_void,
                cudaDataType::CUDA_R_16BF,
                cfg.lda,
                ap as *const c_void,
                cudaDataType::CUDA_R_16BF,
                cfg.ldb,
                &cfg.beta as *const f32 as *const c_void,
                cp as *mut c_void,
                T::CUDA_TYPE,
                cfg.ldc,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| Error::Cuda(format!("cuBLAS GemmEx (bf16): {e:?}")))
    }
}

pub struct Gpu {
    pub ordinal: usize,
    /// Whether this is the emulated device ([`emulator`]).
    pub emulated: bool,
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    modules: Mutex<HashMap<String, Arc<CudaModule>>>,
    blas: Mutex<Option<Arc<CudaBlas>>>,
}

impl Gpu {
    /// Device `ordinal`, opened once per process and shared by every caller: one context,
    /// stream, kernel-module cache and cuBLAS handle.
    pub fn open(ordinal: usize) -> Result<Arc<Gpu>> {
        static OPEN: Mutex<Vec<Arc<Gpu>>> = Mutex::new(Vec::new());
        let mut open = OPEN
            .lock()
            .map_err(|_| Error::Cuda("device table poisoned by an earlier panic".into()))?;
        if let Some(g) = open.iter().find(|g| g.ordinal == ordinal) {
            return Ok(g.clone());
        }
        let g = Arc::new(Gpu::new(ordinal)?);
        open.push(g.clone());
        Ok(g)
    }

    fn new(ordinal: usize) -> Result<Gpu> {
        choose_driver()?;
        // Creating a context without a driver panics: check first.
        let count = device_count();
        if ordinal >= count {
            return Err(Error::Cuda(format!("cuda:{ordinal} asked for, but {count} CUDA device(s) found (is the NVIDIA driver installed?); use --device cpu")));
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| Error::Cuda(format!("cannot open device {ordinal}: {e:?}")))?;
        let stream = ctx.default_stream();
        Ok(Gpu {
            ordinal,
            emulated: emulator::active(),
            ctx,
            stream,
            modules: Mutex::new(HashMap::new()),
            blas: Mutex::new(None),
        })
    }

    /// (major, minor) compute capability.
    pub fn compute_capability(&self) -> Result<(i32, i32)> {
        self.ctx
            .compute_capability()
            .map_err(cuda_err("cannot read the compute capability"))
    }

    /// Most dynamic shared memory a block may opt in to, in bytes.
    pub fn max_shared_optin(&self) -> Result<usize> {
        use cudarc::driver::sys::CUdevice_attribute_enum::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN;
        self.ctx
            .attribute(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map(|b| b.max(0) as usize)
            .map_err(cuda_err("cannot read the shared-memory limit"))
    }

    /// The module of `kernels/<name>.cu`, loaded once per Gpu: the build's PTX when it fits this
    /// device, else the embedded source compiled by NVRTC.
    pub fn module(&self, name: &str) -> Result<Arc<CudaModule>> {
        let mut cache = self
            .modules
            .lock()
            .map_err(|_| Error::Cuda("module cache poisoned by an earlier panic".into()))?;
        if let Some(m) = cache.get(name) {
            return Ok(m.clone());
        }
        let (major, minor) = self.compute_capability()?;
        let cc = (major.max(0) as u32) * 10 + minor.max(0) as u32;
        let mut why_not_ptx = String::from("no PTX was built (nvcc was not found at build time)");
        let mut module = None;
        if let Some(ptx) = built_ptx(name) {
            match parse_arch(built_ptx_arch()) {
                Some((arch, specific)) if (specific && cc == arch) || (!specific && cc >= arch) => {
                    match self.ctx.load_module(Ptx::from_src(ptx)) {
                        Ok(m) => module = Some(m),
                        Err(e) => {
                            why_not_ptx = format!(
                                "the driver rejected the built PTX for {} ({e:?})",
                                built_ptx_arch()
                            )
                        }
                    }
                }
                _ => {
                    why_not_ptx = format!(
                        "the PTX was built for {} and this device is sm_{cc}",
                        built_ptx_arch()
                    )
                }
            }
        }
        let module = match module {
            Some(m) => m,
            None => {
                let arch = format!("compute_{cc}");
                let ptx = nvrtc_compile(name, &arch).map_err(|e| {
                    Error::Cuda(format!(
                        "{why_not_ptx}, and the fallback failed: {}",
                        e.to_string().trim_start_matches("CUDA: ")
                    ))
                })?;
                self.ctx.load_module(ptx).map_err(|e| {
                    Error::Cuda(format!(
                        "cannot load the NVRTC-compiled kernels/{name}.cu on cuda:{} ({e:?}); \
                         is the NVIDIA driver older than the CUDA toolkit? use --device cpu",
                        self.ordinal
                    ))
                })?
            }
        };
        cache.insert(name.to_string(), module.clone());
        Ok(module)
    }

    /// Function `func` of `kernels/<module>.cu`.
    pub fn function(&self, module: &str, func: &str) -> Result<CudaFunction> {
        self.module(module)?.load_function(func).map_err(|e| {
            Error::Cuda(format!(
                "kernel {func} not found in kernels/{module}.cu ({e:?}); rebuild niclip"
            ))
        })
    }

    /// A device copy of `data`. Empty slices get one zero element, so that every buffer is a
    /// valid allocation (kernels never read it when the count is 0).
    pub fn htod<T: DeviceRepr + ValidAsZeroBits>(&self, data: &[T]) -> Result<CudaSlice<T>> {
        if data.is_empty() {
            return self.zeros(1);
        }
        self.stream
            .clone_htod(data)
            .map_err(cuda_err("host-to-device copy failed"))
    }

    /// Copies `data` into the start of an existing buffer.
    pub fn htod_into<T: DeviceRepr>(&self, data: &[T], dst: &mut CudaSlice<T>) -> Result<()> {
        if data.len() > dst.len() {
            return Err(Error::Cuda(format!(
                "copy of {} elements into a buffer of {}",
                data.len(),
                dst.len()
            )));
        }
        if data.is_empty() {
            return Ok(());
        }
        let mut view = dst.slice_mut(..data.len());
        self.stream
            .memcpy_htod(data, &mut view)
            .map_err(cuda_err("host-to-device copy failed"))
    }

    /// A zeroed device buffer of `n` elements (at least one).
    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, n: usize) -> Result<CudaSlice<T>> {
        self.stream
            .alloc_zeros(n.max(1))
            .map_err(cuda_err("device allocation failed (out of GPU memory?)"))
    }

    /// The first `n` elements of a device buffer, on the host (waits for the stream).
    pub fn dtoh<T: DeviceRepr + Default + Clone>(
        &self,
        src: &CudaSlice<T>,
        n: usize,
    ) -> Result<Vec<T>> {
        if n > src.len() {
            return Err(Error::Cuda(format!(
                "copy of {n} elements out of a buffer of {}",
                src.len()
            )));
        }
        let mut out = vec![T::default(); n];
        if n > 0 {
            self.stream
                .memcpy_dtoh(&src.slice(..n), &mut out)
                .map_err(cuda_err("device-to-host copy failed"))?;
        }
        self.sync()?;
        Ok(out)
    }

    /// Waits for all work queued on the stream; reports a kernel fault as an error.
    pub fn sync(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(cuda_err("a CUDA kernel failed"))
    }

    /// The cuBLAS handle on this Gpu's stream, or None when libcublas cannot be loaded.
    pub fn blas(&self) -> Result<Option<Arc<CudaBlas>>> {
        if !cublas_available() {
            return Ok(None);
        }
        let mut slot = self
            .blas
            .lock()
            .map_err(|_| Error::Cuda("cuBLAS handle poisoned by an earlier panic".into()))?;
        if slot.is_none() {
            let blas = CudaBlas::new(self.stream.clone())
                .map_err(|e| Error::Cuda(format!("cannot create a cuBLAS handle: {e:?}")))?;
            *slot = Some(Arc::new(blas));
        }
        Ok(slot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_strings_parse() {
        assert_eq!(parse_arch("sm_90"), Some((90, false)));
        assert_eq!(parse_arch("sm_90a"), Some((90, true)));
        assert_eq!(parse_arch("compute_80"), Some((80, false)));
        assert_eq!(parse_arch("sm_x"), None);
    }

    #[test]
    fn common_header_is_inlined_for_nvrtc() {
        for name in kernel_names() {
            let src = kernel_source(name).unwrap();
            assert!(!src.contains("#include \"common.cuh\""), "{name}");
        }
        assert!(kernel_source("mkda").unwrap().contains("niclip_in_range"));
    }

    /// The column-major calls text/cuda.rs and clip/cuda.rs made by hand before the wrapper.
    #[test]
    fn row_major_gemms_map_onto_column_major_cublas() {
        let (rows, out, inp) = (7, 5, 3);
        let c = RowMajorGemm::linear(rows, out, inp, true)
            .config(1.0f32, 0.0)
            .unwrap();
        assert_eq!((c.transa, c.transb), (CUBLAS_OP_T, CUBLAS_OP_N));
        assert_eq!((c.m, c.n, c.k, c.lda, c.ldb, c.ldc), (5, 7, 3, 3, 3, 5));
        assert_eq!((c.alpha, c.beta), (1.0, 1.0));
        assert_eq!(
            RowMajorGemm::linear(rows, out, inp, false).spans(),
            [21, 15, 35]
        );

        // The atlas solve: β[n × k] = Xᵀy[n × k] · G[k × k], G first for cuBLAS.
        let c = RowMajorGemm::dense(9, 4, 4).config(1.0f64, 0.0).unwrap();
        assert_eq!((c.transa, c.transb), (CUBLAS_OP_N, CUBLAS_OP_N));
        assert_eq!((c.m, c.n, c.k, c.lda, c.ldb, c.ldc), (4, 9, 4, 4, 4, 4));

        // dW[k × din] = δᵀ[k × b] · x[b × din] with δ stored b × k: ta, lda = k.
        let g = RowMajorGemm {
            rows: 4,
            cols: 6,
            inner: 9,
            ta: true,
            tb: false,
            lda: 4,
            ldb: 6,
            ldc: 6,
            accumulate: false,
        };
        let c = g.config(1.0f64, 0.0).unwrap();
        assert_eq!((c.transa, c.transb), (CUBLAS_OP_N, CUBLAS_OP_T));
        assert_eq!((c.m, c.n, c.k, c.lda, c.ldb, c.ldc), (6, 4, 9, 6, 4, 6));
        assert_eq!(c.beta, 0.0);
        assert_eq!(g.spans(), [8 * 4 + 4, 8 * 6 + 6, 3 * 6 + 6]);
        assert!(g.check(2, [(36 + 10, 10), (54, 0), (24, 0)]).is_ok());
        assert!(g.check(2, [(36 + 9, 10), (54, 0), (24, 0)]).is_err());
        assert_eq!(
            RowMajorGemm { rows: 0, ..g }.spans(),
            [0, 0, 0],
            "an empty product reads nothing"
        );
    }

    #[test]
    fn host_constants_are_the_kernels_defines() {
        let defines = |family: &str, pairs: &[(&str, u32)]| {
            let src = kernel_source(family).unwrap();
            for (name, value) in pairs {
                let line = format!("#define {name} {value}");
                assert!(
                    src.lines().any(|l| l.starts_with(&line)),
                    "{family}: {line}"
                );
            }
        };
        use consts::llm::{ATT_BK, ATT_BQ, ATT_QW, ATT_THREADS, ATT_WARPS};
        defines(
            "llm",
            &[
                ("ROW_THREADS", consts::llm::ROW_THREADS),
                ("ATT_WARPS", ATT_WARPS),
                ("ATT_QW", ATT_QW),
                ("ATT_BK", ATT_BK),
                ("ATT_MAX_HEAD_DIM", consts::llm::ATT_MAX_HEAD_DIM),
            ],
        );
        // Expressions over earlier defines: `(ATT_WARPS * ATT_QW)`, `(ATT_WARPS * 32)`.
        assert_eq!(ATT_BQ, ATT_WARPS * ATT_QW);
        assert_eq!(ATT_THREADS, ATT_WARPS * 32);
        defines("clip", &[("ROW_THREADS", consts::clip::ROW_THREADS)]);
        defines(
            "mkda",
            &[
                ("NICLIP_BLOCK", consts::common::NICLIP_BLOCK),
                ("SOLVE_TILE", consts::mkda::SOLVE_TILE),
                ("MKDA_PEAK_CACHE", consts::mkda::MKDA_PEAK_CACHE),
            ],
        );
    }
}
