//! CUDA through cudarc: context, stream and kernel modules (PTX built by build.rs, or the
//! embedded sources compiled by NVRTC when no PTX was built), copies and cuBLAS.
//!
//! Module loading: the PTX that build.rs compiled (with `cfg(niclip_ptx)`, for `PTX_ARCH`) is used
//! when the device's compute capability is at least that arch; otherwise, or when the driver
//! rejects it (a PTX ISA newer than the driver), the embedded `.cu` source is compiled by NVRTC
//! for the device, with `kernels/common.cuh` pasted in place of its `#include`.

use crate::error::{Error, Result};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits,
};
use cudarc::nvrtc::{CompileOptions, Ptx};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
    // SAFETY: only tries to dlopen the driver library; no CUDA state is touched.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return 0;
    }
    CudaContext::device_count()
        .map(|n| n.max(0) as usize)
        .unwrap_or(0)
}

/// Whether NVRTC (libnvrtc) can be loaded, so that the embedded sources can be compiled.
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen libnvrtc.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Whether cuBLAS (libcublas) can be loaded.
pub fn cublas_available() -> bool {
    // SAFETY: only tries to dlopen libcublas.
    unsafe { cudarc::cublas::sys::is_culib_present() }
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

/// A failed kernel launch as niclip's error, naming the kernel.
pub(crate) fn launch_err(kernel: &str) -> impl FnOnce(cudarc::driver::DriverError) -> Error + '_ {
    move |e| Error::Cuda(format!("launch of {kernel} failed: {e:?}"))
}

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

pub struct Gpu {
    pub ordinal: usize,
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
