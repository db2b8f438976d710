//! The NIfTI reader against nibabel: NIfTI-2 with integer storage and scl_slope/scl_inter and an
//! oblique sform, big-endian float64, qform-only (rotated, qfac −1), uint8 4D. Files and
//! nibabel's readings of them come from tests/fixtures/make_nifti_fixtures.py.

mod common;

use niclip::brain::Image;
use niclip::io::read_npy_raw;

fn f64s(name: &str) -> Vec<f64> {
    let raw = read_npy_raw(&common::fixtures().join("nifti").join(name)).unwrap();
    raw.bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn images_read_as_nibabel_reads_them() {
    for (name, file) in [
        ("nifti2_int16_scaled", "nifti2_int16_scaled.nii"),
        ("nifti1_bigendian_f64", "nifti1_bigendian_f64.nii.gz"),
        ("nifti1_qform_only", "nifti1_qform_only.nii"),
        ("nifti1_uint8_4d", "nifti1_uint8_4d.nii"),
    ] {
        let img = Image::read(&common::fixtures().join("nifti").join(file)).unwrap();
        let want = f64s(&format!("{name}.data.npy"));
        assert_eq!(img.data.len(), want.len(), "{name}");
        let scale = want.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
        let err = img
            .data
            .iter()
            .zip(&want)
            .fold(0.0f64, |m, (a, b)| m.max((*a as f64 - b).abs()))
            / scale;
        assert!(err < 1e-6, "{name}: data differs from nibabel by {err:.2e}");
        let affine = f64s(&format!("{name}.affine.npy"));
        for r in 0..4 {
            for c in 0..4 {
                assert!(
                    (img.grid.affine[r][c] - affine[4 * r + c]).abs() < 1e-5,
                    "{name}: affine {:?} vs {affine:?}",
                    img.grid.affine
                );
            }
        }
    }
}
