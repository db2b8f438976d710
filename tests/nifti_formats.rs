//! The NIfTI reader against nibabel: NIfTI-2 with integer storage and scl_slope/scl_inter and an
//! oblique sform, big-endian float64, qform-only (rotated, qfac −1), uint8 4D. Files and
//! nibabel's readings of them come from tests/fixtures/make_nifti_fixtures.py. Hostile headers
//! (sizes that overflow, wrap or exceed what the file holds, bad gzip trailers) give an error
//! naming the file: never a panic, a hang or an allocation of the claimed size.

mod common;

use flate2::write::GzEncoder;
use flate2::Compression;
use niclip::brain::{Grid, Image};
use niclip::io::read_npy_raw;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

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

// Hostile headers (issue 20): built from our writer's or a fixture's header with fields patched.

/// A float32 NIfTI-1 file from our own writer: `shape`, one volume, voxel i holding i.
fn nifti1(shape: [usize; 3]) -> Vec<u8> {
    // One name per call: tests run in parallel, and write_atomic's temporary is per path.
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let [x, y, z] = shape;
    let p = common::tmpdir("hostile").join(format!("{x}x{y}x{z}-{call}.nii"));
    let affine = [
        [2.0, 0.0, 0.0, 0.0],
        [0.0, 2.0, 0.0, 0.0],
        [0.0, 0.0, 2.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    let data = (0..x * y * z).map(|i| i as f32).collect();
    Image::new(Grid::new(shape, affine), 1, data)
        .write(&p)
        .unwrap();
    std::fs::read(&p).unwrap()
}

/// The NIfTI-2 fixture: int16, 5×4×3×2, dim at byte 16 (eight i64), data from byte 544.
fn nifti2() -> Vec<u8> {
    std::fs::read(common::fixtures().join("nifti/nifti2_int16_scaled.nii")).unwrap()
}

/// `b` with NIfTI-1's dim (eight i16 at byte 40) set to `dim`.
fn with_dim1(mut b: Vec<u8>, dim: [i16; 8]) -> Vec<u8> {
    for (i, d) in dim.iter().enumerate() {
        b[40 + 2 * i..42 + 2 * i].copy_from_slice(&d.to_le_bytes());
    }
    b
}

/// `b` with NIfTI-2's dim (eight i64 at byte 16) set to `dim`.
fn with_dim2(mut b: Vec<u8>, dim: [i64; 8]) -> Vec<u8> {
    for (i, d) in dim.iter().enumerate() {
        b[16 + 8 * i..24 + 8 * i].copy_from_slice(&d.to_le_bytes());
    }
    b
}

fn gzip(b: &[u8], level: Compression) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), level);
    enc.write_all(b).unwrap();
    enc.finish().unwrap()
}

/// The error reading `bytes` as the file `name`, which must name the file.
fn refused(bytes: Vec<u8>, name: &str) -> String {
    match Image::from_bytes(bytes, Path::new(name)) {
        Ok(img) => panic!(
            "{name} read as {:?} × {} volumes; it should be refused",
            img.grid.shape, img.n_vols
        ),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("{name}: ")), "{msg}");
            msg
        }
    }
}

#[test]
fn nifti2_volume_count_past_any_memory_is_refused() {
    // 4×5×4 × 2^62 volumes wraps to 0 voxels unchecked: read as an empty image of 2^62
    // volumes, which `niclip decode` then looped over, panicking at each.
    let b = with_dim2(nifti2(), [4, 4, 5, 4, 1 << 62, 1, 1, 1]);
    for (name, bytes) in [
        ("vols.nii", b.clone()),
        ("vols.nii.gz", gzip(&b, Compression::fast())),
    ] {
        let msg = refused(bytes, name);
        assert!(msg.contains("voxels"), "{msg}");
    }
}

#[test]
fn nifti2_dims_whose_product_wraps_are_refused() {
    // (2^62 + 1)·4·2 = 2^65 + 8 wraps to 8 voxels, which the file holds.
    for dim in [
        [3, (1 << 62) + 1, 4, 2, 1, 1, 1, 1],
        [4, 1 << 32, 1 << 32, 2, 3, 1, 1, 1],
        [3, i64::MAX, i64::MAX, i64::MAX, 1, 1, 1, 1],
    ] {
        let b = with_dim2(nifti2(), dim);
        for (name, bytes) in [
            ("wrap.nii", b.clone()),
            ("wrap.nii.gz", gzip(&b, Compression::fast())),
        ] {
            let msg = refused(bytes, name);
            assert!(msg.contains("voxels"), "{dim:?}: {msg}");
        }
    }
}

#[test]
fn absurd_sizes_are_refused_without_allocating_them() {
    // 32767 on each of 7 axes overflows any integer; 32767³ float32 is 140 TB.
    for dim in [
        [7, 32767, 32767, 32767, 32767, 32767, 32767, 32767],
        [3, 32767, 32767, 32767, 1, 1, 1, 1],
    ] {
        let b = with_dim1(nifti1([2, 2, 2]), dim);
        for (name, bytes) in [
            ("big.nii", b.clone()),
            ("big.nii.gz", gzip(&b, Compression::fast())),
        ] {
            let msg = refused(bytes, name);
            assert!(msg.contains("voxels"), "{dim:?}: {msg}");
        }
    }
}

/// Runs `niclip resample FILE` under a 2 GiB address-space limit; returns its stderr after
/// checking it failed with a clean one-line error naming the file (no abort, no panic).
fn resample_fails_in_2gib(file: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 2097152 && exec \"$0\" resample \"$1\" --out \"$1.out.nii\"")
        .arg(env!("CARGO_BIN_EXE_niclip"))
        .arg(file)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{}: {stderr}", file.display());
    let want = format!("error: {}: ", file.display());
    assert!(stderr.starts_with(&want), "{stderr}");
    stderr
}

#[test]
fn gz_header_claims_cost_no_memory() {
    // An 84-byte .nii.gz claiming 1000³ float32 (4 GB) holds only its header: reading it must
    // not allocate the claim. Each case alone exceeds the 2 GiB the process may map.
    let dir = common::tmpdir("gz-claims");
    for (name, dim) in [
        ("1000cube.nii.gz", [3, 1000, 1000, 1000, 1, 1, 1, 1]),
        ("32767cube.nii.gz", [3, 32767, 32767, 32767, 1, 1, 1, 1]),
        (
            "7d.nii.gz",
            [7, 32767, 32767, 32767, 32767, 32767, 32767, 32767],
        ),
    ] {
        let header = with_dim1(nifti1([2, 2, 2]), dim)[..352].to_vec();
        let p = dir.join(name);
        std::fs::write(&p, gzip(&header, Compression::best())).unwrap();
        resample_fails_in_2gib(&p);
        // The same header uncompressed fails the same way.
        let p = dir.join(name.trim_end_matches(".gz"));
        std::fs::write(&p, &header).unwrap();
        resample_fails_in_2gib(&p);
    }
}

#[test]
fn gzip_checksum_and_length_are_checked() {
    // 4×4×4 ends past the first 540 inflated bytes (read as a header), 2×2×2 within them.
    for shape in [[4, 4, 4], [2, 2, 2]] {
        let raw = nifti1(shape);
        // Stored blocks keep the voxel bytes as they are: changing one leaves a stream that
        // inflates, to other voxels, and only the trailer's CRC32 can tell.
        let gz = gzip(&raw, Compression::none());
        let last = gz
            .windows(4)
            .rposition(|w| w == &raw[raw.len() - 4..])
            .unwrap();
        let mut voxel = gz.clone();
        voxel[last + 3] ^= 1;
        let mut length = gz.clone();
        let n = length.len();
        length[n - 4] ^= 1;
        assert!(Image::from_bytes(gz, Path::new("ok.nii.gz")).is_ok());
        for (name, bytes) in [("voxel.nii.gz", voxel), ("length.nii.gz", length)] {
            let msg = refused(bytes, name);
            assert!(msg.contains("gzip"), "{shape:?}: {msg}");
        }
    }
}
