//! A voxel grid: shape and the affine that takes voxel indices to millimetres (world space).
//! Voxels are stored in NIfTI's Fortran order: x varies fastest.

pub type Affine = [[f64; 4]; 4];

#[derive(Clone, Debug, PartialEq)]
pub struct Grid {
    pub shape: [usize; 3],
    /// voxel (i, j, k, 1) → mm (x, y, z, 1)
    pub affine: Affine,
}

impl Grid {
    pub fn new(shape: [usize; 3], affine: Affine) -> Self {
        Grid { shape, affine }
    }

    pub fn n_voxels(&self) -> usize {
        self.shape.iter().product()
    }

    #[inline]
    pub fn flat(&self, i: usize, j: usize, k: usize) -> usize {
        i + self.shape[0] * (j + self.shape[1] * k)
    }

    #[inline]
    pub fn unflat(&self, v: usize) -> [usize; 3] {
        let (nx, ny) = (self.shape[0], self.shape[1]);
        [v % nx, (v / nx) % ny, v / (nx * ny)]
    }

    pub fn voxel_to_mm(&self, ijk: [f64; 3]) -> [f64; 3] {
        apply(&self.affine, ijk)
    }

    /// Voxel sizes in mm (norms of the affine's columns), as nibabel's `zooms`.
    pub fn voxel_size(&self) -> [f64; 3] {
        let a = &self.affine;
        std::array::from_fn(|c| (a[0][c] * a[0][c] + a[1][c] * a[1][c] + a[2][c] * a[2][c]).sqrt())
    }

    /// Same voxels in the same places, up to floating-point noise in the affine.
    pub fn same_as(&self, other: &Grid) -> bool {
        self.shape == other.shape
            && self
                .affine
                .iter()
                .flatten()
                .zip(other.affine.iter().flatten())
                .all(|(a, b)| (a - b).abs() <= 1e-6 * (1.0 + a.abs()))
    }
}

pub fn apply(m: &Affine, p: [f64; 3]) -> [f64; 3] {
    std::array::from_fn(|r| m[r][0] * p[0] + m[r][1] * p[1] + m[r][2] * p[2] + m[r][3])
}

pub fn matmul(a: &Affine, b: &Affine) -> Affine {
    std::array::from_fn(|r| std::array::from_fn(|c| (0..4).map(|k| a[r][k] * b[k][c]).sum()))
}

/// Inverse of an affine (last row 0 0 0 1) by the 3×3 adjugate.
pub fn invert(m: &Affine) -> Affine {
    let a = |r: usize, c: usize| m[r][c];
    let cof =
        |r0: usize, r1: usize, c0: usize, c1: usize| a(r0, c0) * a(r1, c1) - a(r0, c1) * a(r1, c0);
    let det = a(0, 0) * cof(1, 2, 1, 2) - a(0, 1) * cof(1, 2, 0, 2) + a(0, 2) * cof(1, 2, 0, 1);
    let inv3 = [
        [
            cof(1, 2, 1, 2) / det,
            -cof(0, 2, 1, 2) / det,
            cof(0, 1, 1, 2) / det,
        ],
        [
            -cof(1, 2, 0, 2) / det,
            cof(0, 2, 0, 2) / det,
            -cof(0, 1, 0, 2) / det,
        ],
        [
            cof(1, 2, 0, 1) / det,
            -cof(0, 2, 0, 1) / det,
            cof(0, 1, 0, 1) / det,
        ],
    ];
    let mut out = [[0.0; 4]; 4];
    for r in 0..3 {
        out[r][..3].copy_from_slice(&inv3[r]);
        out[r][3] = -(0..3).map(|k| inv3[r][k] * m[k][3]).sum::<f64>();
    }
    out[3][3] = 1.0;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_round_trips_a_flipped_oblique_affine() {
        let m = [
            [-2.0, 0.1, 0.0, 90.0],
            [0.0, 2.0, 0.3, -126.0],
            [0.2, 0.0, 2.5, -72.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let id = matmul(&invert(&m), &m);
        for (r, row) in id.iter().enumerate() {
            for (c, x) in row.iter().enumerate() {
                assert!((x - if r == c { 1.0 } else { 0.0 }).abs() < 1e-12);
            }
        }
    }
}
