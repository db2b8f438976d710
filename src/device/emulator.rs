//! The emulated CUDA device: the kernels' own sources, compiled for the host by build.rs
//! (kernels/emu), run under an emulated CUDA execution model behind the CUDA driver API.
//!
//! It sits below cudarc: the emulator is a `libcuda.so` (with `libcublas.so`, whose GEMMs are
//! the CPU GEMM registered here, and `libnvrtc.so`), loaded by absolute path before cudarc opens
//! the driver, so that cudarc's own lookup of `libcuda.so` finds it. Everything above it is the
//! real CUDA path, unchanged: buffers, copies, launch configurations, the parameter arrays of
//! each launch, module loading. The device reports itself as an H100 (sm_90) and is named
//! `cuda:0 (emulated)`. One driver per process: a process that emulates has no real GPU.
//!
//! `NICLIP_EMULATE_CUDA=1` turns it on for any niclip process (for example
//! `NICLIP_EMULATE_CUDA=1 niclip images … --device cuda`, to try a changed kernel without a
//! GPU); the tests turn it on where no CUDA driver is installed. It is for correctness, not
//! speed: a block's threads are OS threads.

use crate::device::cpu::{self, Parallelism, Strided};
use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Where build.rs put the emulator's libraries, if it could build them.
fn dir() -> Option<&'static str> {
    #[cfg(niclip_emu)]
    return Some(env!("NICLIP_EMU_DIR"));
    #[cfg(not(niclip_emu))]
    None
}

/// Whether the emulator was built (a C++20 compiler was found at build time).
pub fn built() -> bool {
    dir().is_some()
}

static STATE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
static REAL_DRIVER_ASKED: AtomicBool = AtomicBool::new(false);

/// Chooses the process's CUDA libraries before cudarc first opens one: the emulator's when
/// `NICLIP_EMULATE_CUDA` asks for them (or [`enable`] was called), else NVIDIA's. Every entry
/// of `device::cuda` that reaches cudarc calls it first.
pub(crate) fn choose_driver() -> Result<()> {
    enable_if_asked()?;
    if !active() {
        REAL_DRIVER_ASKED.store(true, Ordering::SeqCst);
    }
    Ok(())
}

/// Whether NVIDIA's driver library is installed (it is opened and closed again, so that the
/// emulator can still take its place when it is not).
pub fn driver_installed() -> bool {
    // SAFETY: only tries to dlopen the driver library; no CUDA state is touched.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether this process's CUDA device is the emulator.
pub fn active() -> bool {
    matches!(STATE.get(), Some(Ok(())))
}

/// Loads the emulator as this process's CUDA driver, cuBLAS and NVRTC. Must come before any
/// other CUDA call of the process (device count, context): after one, the real driver is in
/// place and this fails. Idempotent.
pub fn enable() -> Result<()> {
    let state = STATE.get_or_init(|| {
        if REAL_DRIVER_ASKED.load(Ordering::SeqCst) {
            return Err("the real CUDA driver is already open in this process; set NICLIP_EMULATE_CUDA=1 before niclip starts".into());
        }
        let dir = dir().ok_or("the CUDA emulator was not built (no C++20 compiler was found when niclip was compiled: install g++ and rebuild)")?;
        load(dir)
    });
    state.clone().map_err(Error::Cuda)
}

/// The tests' rule: the emulator, unless `NICLIP_EMULATE_CUDA=0` or NVIDIA's driver is
/// installed (then the real GPU is tested; `NICLIP_EMULATE_CUDA=1` tests the emulator there
/// too, in a process of its own). Whether the emulator is on.
pub fn enable_unless_driver() -> Result<bool> {
    let asked = std::env::var("NICLIP_EMULATE_CUDA").ok();
    if asked.as_deref() == Some("0") || (asked.is_none() && driver_installed()) {
        return Ok(false);
    }
    enable()?;
    Ok(true)
}

/// Turns the emulator on when `NICLIP_EMULATE_CUDA` is set to anything but `0`.
pub fn enable_if_asked() -> Result<()> {
    match std::env::var("NICLIP_EMULATE_CUDA") {
        Ok(v) if v != "0" && !v.is_empty() => enable(),
        _ => Ok(()),
    }
}

fn load(dir: &str) -> std::result::Result<(), String> {
    let open = |name: &str| {
        let path = std::path::Path::new(dir).join(name);
        // SAFETY: our own library; its initialisers only register kernel tables.
        unsafe { libloading::Library::new(&path) }.map_err(|e| {
            format!(
                "cannot load the CUDA emulator's {} ({e}); rebuild niclip",
                path.display()
            )
        })
    };
    let libs = [
        open("libcuda.so")?,
        open("libcublas.so")?,
        open("libnvrtc.so")?,
    ];
    type SetGemm = unsafe extern "C" fn(GemmF32, GemmF64);
    // SAFETY: cublas.cpp exports niclip_emu_set_gemm with exactly this signature.
    unsafe {
        let set: libloading::Symbol<SetGemm> =
            libs[1].get(b"niclip_emu_set_gemm").map_err(|e| {
                format!("the CUDA emulator's libcublas.so is stale ({e}); rebuild niclip")
            })?;
        set(gemm_f32, gemm_f64);
    }
    // Kept loaded for the life of the process: cudarc resolves its symbols from them.
    std::mem::forget(libs);
    Ok(())
}

/// The first check the last emulated launch failed (a barrier in divergent code, a shuffle
/// mask), for launch errors; None when the emulator is not in use or nothing failed.
pub fn last_error() -> Option<String> {
    if !active() {
        return None;
    }
    let dir = dir()?;
    // SAFETY: the library is already loaded (active); the symbol returns a NUL-terminated string
    // owned by the calling thread.
    unsafe {
        let lib = libloading::Library::new(std::path::Path::new(dir).join("libcuda.so")).ok()?;
        let f: libloading::Symbol<unsafe extern "C" fn() -> *const std::ffi::c_char> =
            lib.get(b"niclip_emu_last_error").ok()?;
        let text = std::ffi::CStr::from_ptr(f()).to_string_lossy().into_owned();
        (!text.is_empty()).then_some(text)
    }
}

type GemmF32 = unsafe extern "C" fn(
    i32,
    i32,
    i32,
    i32,
    i32,
    f32,
    *const f32,
    i32,
    *const f32,
    i32,
    f32,
    *mut f32,
    i32,
);
type GemmF64 = unsafe extern "C" fn(
    i32,
    i32,
    i32,
    i32,
    i32,
    f64,
    *const f64,
    i32,
    *const f64,
    i32,
    f64,
    *mut f64,
    i32,
);

/// cuBLAS's column-major `C[m×n] = alpha·op(A)·op(B) + beta·C` on the CPU GEMM; C is not read
/// when beta is 0 (as cuBLAS).
///
/// # Safety
/// The operands must span what the sizes and leading dimensions reach (cuBLAS's contract).
#[allow(clippy::too_many_arguments)]
unsafe fn column_major_gemm<T: Copy + Default + PartialEq + 'static>(
    (ta, tb): (i32, i32),
    (m, n, k): (i32, i32, i32),
    alpha: T,
    (a, lda): (*const T, i32),
    (b, ldb): (*const T, i32),
    beta: T,
    (c, ldc): (*mut T, i32),
) {
    let (m, n, k) = (m.max(0) as usize, n.max(0) as usize, k.max(0) as usize);
    if m == 0 || n == 0 {
        return;
    }
    let view = |p: *const T, ld: i32, t: i32, r: usize, c: usize| {
        let (rs, cs) = if t != 0 {
            (ld as isize, 1)
        } else {
            (1, ld as isize)
        };
        // SAFETY: the caller's contract: the operand spans r × c at these strides.
        let data = unsafe { std::slice::from_raw_parts(p, cpu::span(r, c, rs, cs)) };
        Strided { data, rs, cs }
    };
    let (a, b) = (view(a, lda, ta, m, k), view(b, ldb, tb, k, n));
    let keep = (beta != T::default()).then_some(beta);
    // SAFETY: C spans m × n at (1, ldc) and nothing else writes it during the call.
    unsafe {
        cpu::gemm_unchecked(
            (m, n, k),
            c,
            (1, ldc as isize),
            keep,
            a,
            b,
            alpha,
            Parallelism::Rayon(0),
        )
    }
}

/// The callbacks the emulated cuBLAS calls, one per precision, with cuBLAS's arguments.
macro_rules! gemm_callback {
    ($name:ident, $t:ty) => {
        unsafe extern "C" fn $name(
            ta: i32,
            tb: i32,
            m: i32,
            n: i32,
            k: i32,
            alpha: $t,
            a: *const $t,
            lda: i32,
            b: *const $t,
            ldb: i32,
            beta: $t,
            c: *mut $t,
            ldc: i32,
        ) {
            // SAFETY: called by the emulated cuBLAS with cuBLAS's contract.
            unsafe {
                column_major_gemm(
                    (ta, tb),
                    (m, n, k),
                    alpha,
                    (a, lda),
                    (b, ldb),
                    beta,
                    (c, ldc),
                )
            }
        }
    };
}
gemm_callback!(gemm_f32, f32);
gemm_callback!(gemm_f64, f64);
