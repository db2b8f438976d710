//! The CPU backend's one GEMM: the `gemm` crate (run-time dispatched AVX2/AVX-512 kernels)
//! behind strided-matrix views whose extents are checked before the unsafe call. Every CPU
//! matrix product of the crate goes through here (text engine, CLIP towers, atlas solve,
//! decoder), in f32 or f64.

pub use gemm::Parallelism;

/// A strided view of a matrix (f32 unless said): element (i, j) at `data[i·rs + j·cs]`.
#[derive(Clone, Copy, Debug)]
pub struct Strided<'a, T = f32> {
    pub data: &'a [T],
    pub rs: isize,
    pub cs: isize,
}

impl<'a, T> Strided<'a, T> {
    /// A dense row-major matrix of `cols` columns.
    pub fn rows(data: &'a [T], cols: usize) -> Strided<'a, T> {
        Strided {
            data,
            rs: cols as isize,
            cs: 1,
        }
    }

    /// The transpose of a dense row-major matrix of `cols` columns (a Linear layer's weight
    /// read as Wᵀ).
    pub fn transposed(data: &'a [T], cols: usize) -> Strided<'a, T> {
        Strided {
            data,
            rs: 1,
            cs: cols as isize,
        }
    }

    /// The same matrix from column `c` on.
    pub fn from_column(self, c: usize) -> Strided<'a, T> {
        let at = (c as isize * self.cs) as usize;
        Strided {
            data: &self.data[at.min(self.data.len())..],
            ..self
        }
    }
}

/// The number of elements an r × c matrix of strides (rs, cs) spans (non-negative strides).
pub fn span(r: usize, c: usize, rs: isize, cs: isize) -> usize {
    if r == 0 || c == 0 {
        0
    } else {
        ((r - 1) as isize * rs + (c - 1) as isize * cs) as usize + 1
    }
}

/// dst (m × n, element (i, j) at `dst[i·rs + j·cs]`) = α·dst + β·A·B, A m × k, B k × n;
/// `alpha: None` overwrites dst without reading it. Panics when a view is too short.
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: Copy + Default + 'static>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    (rs, cs): (isize, isize),
    alpha: Option<T>,
    a: Strided<T>,
    b: Strided<T>,
    beta: T,
    par: Parallelism,
) {
    assert!(
        dst.len() >= span(m, n, rs, cs),
        "gemm: destination too small"
    );
    assert!(
        a.data.len() >= span(m, k, a.rs, a.cs) && b.data.len() >= span(k, n, b.rs, b.cs),
        "gemm: operand too small"
    );
    // SAFETY: the asserts bound every element the product reads or writes.
    unsafe {
        gemm_unchecked(
            (m, n, k),
            dst.as_mut_ptr(),
            (rs, cs),
            alpha,
            a,
            b,
            beta,
            par,
        )
    }
}

/// `gemm` through a raw destination, for callers that split one destination across threads.
///
/// # Safety
/// Every element of the m × n destination at `dst` (strides rs, cs) must be writable and
/// written by no one else meanwhile, and `a`, `b` must span m × k and k × n.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_unchecked<T: Copy + Default + 'static>(
    (m, n, k): (usize, usize, usize),
    dst: *mut T,
    (rs, cs): (isize, isize),
    alpha: Option<T>,
    a: Strided<T>,
    b: Strided<T>,
    beta: T,
    par: Parallelism,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        cs,
        rs,
        alpha.is_some(),
        a.data.as_ptr(),
        a.cs,
        a.rs,
        b.data.as_ptr(),
        b.cs,
        b.rs,
        alpha.unwrap_or_default(),
        beta,
        false,
        false,
        false,
        par,
    );
}
