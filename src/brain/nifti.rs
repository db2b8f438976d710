//! NIfTI-1 and NIfTI-2 images (`.nii`, `.nii.gz`), read into float32 with `scl_slope/scl_inter`
//! applied, the affine chosen as nibabel does (sform, else qform, else the base affine);
//! float32 NIfTI-1 written. Our own reader: the `nifti` crate has no NIfTI-2 and copies through
//! ndarray, while we want volumes decoded straight into one f32 buffer.
//!
//! A header is hostile until checked: the sizes and offsets read from a file go through checked
//! arithmetic and are bounded (by `MAX_VOXELS`, and by the bytes the file really holds) before
//! anything is allocated for them, and no header field value may panic.

use super::grid::{Affine, Grid};
use crate::error::{Error, IoContext, Result};
use crate::io::write_atomic;
use flate2::read::MultiGzDecoder;
use std::io::{Read, Write};
use std::path::Path;

/// A 3D or 4D image: `n_vols` volumes on `grid`, each `grid.n_voxels()` long, volume after volume.
#[derive(Clone, Debug)]
pub struct Image {
    pub grid: Grid,
    pub n_vols: usize,
    pub data: Vec<f32>,
}

impl Image {
    /// How results name the volumes of a map file: `PATH` for a 3D map, `PATH[v]` for volume
    /// v of a 4D one.
    pub fn volume_names(path: &Path, n_vols: usize) -> Vec<String> {
        if n_vols == 1 {
            vec![path.display().to_string()]
        } else {
            (0..n_vols)
                .map(|v| format!("{}[{v}]", path.display()))
                .collect()
        }
    }

    pub fn new(grid: Grid, n_vols: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), grid.n_voxels() * n_vols);
        Image { grid, n_vols, data }
    }

    pub fn volume(&self, v: usize) -> &[f32] {
        let n = self.grid.n_voxels();
        &self.data[v * n..(v + 1) * n]
    }

    pub fn volumes(&self) -> impl Iterator<Item = &[f32]> {
        self.data.chunks_exact(self.grid.n_voxels().max(1))
    }

    /// Reads a NIfTI file. Non-finite values become 0 with a warning on stderr, as nilearn does.
    pub fn read(path: &Path) -> Result<Image> {
        Image::from_bytes(std::fs::read(path).at(path)?, path)
    }

    /// Decodes the bytes of a `.nii` or `.nii.gz` file; `path` only names it in messages.
    pub fn from_bytes(raw: Vec<u8>, path: &Path) -> Result<Image> {
        let mut img = if raw.starts_with(&[0x1f, 0x8b]) {
            inflate_and_decode(&raw)
        } else {
            decode(&raw)
        }
        .map_err(|msg| Error::input(path, msg))?;
        let bad = img.data.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            eprintln!(
                "warning: {}: {bad} NaN/Inf values treated as 0",
                path.display()
            );
            img.data
                .iter_mut()
                .filter(|v| !v.is_finite())
                .for_each(|v| *v = 0.0);
        }
        Ok(img)
    }

    /// Writes float32 NIfTI-1, gzipped when the name ends in `.gz`; atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let gz = path.extension().is_some_and(|e| e == "gz");
        write_atomic(path, |w| {
            let header = nifti1_header(&self.grid, self.n_vols);
            if gz {
                let mut enc = flate2::write::GzEncoder::new(w, flate2::Compression::new(4));
                enc.write_all(&header).at(path)?;
                enc.write_all(bytemuck::cast_slice(&self.data)).at(path)?;
                enc.finish().at(path)?;
            } else {
                w.write_all(&header).at(path)?;
                w.write_all(bytemuck::cast_slice(&self.data)).at(path)?;
            }
            Ok(())
        })
    }
}

const NOT_NIFTI: &str =
    "not a NIfTI-1/NIfTI-2 file (bad header size); give a .nii or .nii.gz image";

/// Little readers over the header bytes in the file's byte order.
struct Hdr<'a> {
    b: &'a [u8],
    swap: bool,
}

impl Hdr<'_> {
    fn raw<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut a: [u8; N] = self.b[at..at + N].try_into().unwrap();
        if self.swap {
            a.reverse();
        }
        a
    }
    fn i16(&self, at: usize) -> i64 {
        i16::from_le_bytes(self.raw(at)) as i64
    }
    fn i32(&self, at: usize) -> i64 {
        i32::from_le_bytes(self.raw(at)) as i64
    }
    fn i64(&self, at: usize) -> i64 {
        i64::from_le_bytes(self.raw(at))
    }
    fn f32(&self, at: usize) -> f64 {
        f32::from_le_bytes(self.raw(at)) as f64
    }
    fn f64(&self, at: usize) -> f64 {
        f64::from_le_bytes(self.raw(at))
    }
}

/// What the two header versions have in common, as read from their own offsets.
struct Header {
    dim: [i64; 8],
    datatype: i64,
    pixdim: [f64; 8],
    vox_offset: usize,
    scl_slope: f64,
    scl_inter: f64,
    qform_code: i64,
    sform_code: i64,
    quatern: [f64; 6],
    srow: [[f64; 4]; 3],
}

fn parse_header(b: &[u8]) -> std::result::Result<(Header, bool), String> {
    if b.len() < 348 {
        return Err("file too short for a NIfTI header (truncated?)".into());
    }
    let size_le = i32::from_le_bytes(b[0..4].try_into().unwrap());
    let size_be = i32::from_be_bytes(b[0..4].try_into().unwrap());
    let (version, swap) = match (size_le, size_be) {
        (348, _) => (1, false),
        (_, 348) => (1, true),
        (540, _) => (2, false),
        (_, 540) => (2, true),
        _ => return Err(NOT_NIFTI.into()),
    };
    let h = Hdr { b, swap };
    let hd = if version == 1 {
        if &b[344..347] != b"n+1" && &b[344..347] != b"ni1" {
            return Err("NIfTI-1 magic missing (an Analyze .hdr/.img pair?); convert it to .nii with nibabel".into());
        }
        if &b[344..347] == b"ni1" {
            return Err(
                "two-file NIfTI (.hdr/.img) is not supported; convert it to a single .nii".into(),
            );
        }
        Header {
            dim: std::array::from_fn(|i| h.i16(40 + 2 * i)),
            datatype: h.i16(70),
            pixdim: std::array::from_fn(|i| h.f32(76 + 4 * i)),
            vox_offset: h.f32(108) as usize,
            scl_slope: h.f32(112),
            scl_inter: h.f32(116),
            qform_code: h.i16(252),
            sform_code: h.i16(254),
            quatern: std::array::from_fn(|i| h.f32(256 + 4 * i)),
            srow: std::array::from_fn(|r| std::array::from_fn(|c| h.f32(280 + 16 * r + 4 * c))),
        }
    } else {
        if b.len() < 540 {
            return Err("file too short for a NIfTI-2 header (truncated?)".into());
        }
        if &b[4..7] != b"n+2" {
            return Err("NIfTI-2 magic missing; only single-file .nii NIfTI-2 is supported".into());
        }
        Header {
            dim: std::array::from_fn(|i| h.i64(16 + 8 * i)),
            datatype: h.i16(12),
            pixdim: std::array::from_fn(|i| h.f64(104 + 8 * i)),
            vox_offset: usize::try_from(h.i64(168)).map_err(|_| {
                format!(
                    "vox_offset {} is not a byte offset; the file is corrupt",
                    h.i64(168)
                )
            })?,
            scl_slope: h.f64(176),
            scl_inter: h.f64(184),
            qform_code: h.i32(344),
            sform_code: h.i32(348),
            quatern: std::array::from_fn(|i| h.f64(352 + 8 * i)),
            srow: std::array::from_fn(|r| std::array::from_fn(|c| h.f64(400 + 32 * r + 8 * c))),
        }
    };
    Ok((hd, swap))
}

/// Inflates the header first, then only as many bytes as the header claims and the stream
/// holds: the buffer grows as data arrives, so a header claiming gigabytes over a few bytes of
/// gzip costs nothing. The rest of the stream is read (and dropped) so that the gzip trailer's
/// CRC32 and length are checked: a changed voxel byte may otherwise inflate silently.
fn inflate_and_decode(gz: &[u8]) -> std::result::Result<Image, String> {
    let corrupt =
        |e: std::io::Error| format!("corrupt or truncated gzip ({e}); re-export the image");
    let mut z = MultiGzDecoder::new(gz);
    let mut bytes = Vec::with_capacity(540);
    (&mut z)
        .take(540)
        .read_to_end(&mut bytes)
        .map_err(corrupt)?;
    let (h, _) = parse_header(&bytes)?;
    let Layout { n, size, end, .. } = Layout::of(&h)?;
    if let Some(rest) = end.checked_sub(bytes.len()).filter(|&r| r > 0) {
        (&mut z)
            .take(rest as u64)
            .read_to_end(&mut bytes)
            .map_err(corrupt)?;
        if bytes.len() < end {
            return Err(format!("data ends early: the header promises {n} voxels of {size} bytes after byte {}, the gzip stream inflates to {} bytes (truncated download?)", h.vox_offset, bytes.len()));
        }
    }
    std::io::copy(&mut z, &mut std::io::sink()).map_err(corrupt)?;
    decode(&bytes)
}

/// The most voxels a header may claim, all volumes together: 2^34 (64 GiB as float32), far
/// past any brain map. A claim above it is refused before anything is allocated.
const MAX_VOXELS: u64 = 1 << 34;

/// Shape and storage of the voxels a header describes.
struct Layout {
    shape: [usize; 3],
    n_vols: usize,
    n: usize,
    size: usize,
    /// The byte just past the voxels: `vox_offset + n * size`.
    end: usize,
}

impl Layout {
    fn of(h: &Header) -> std::result::Result<Layout, String> {
        let ndim = h.dim[0];
        if !(1..=7).contains(&ndim) {
            return Err(format!(
                "header says {ndim} dimensions; the file is corrupt"
            ));
        }
        let dims: Vec<u64> = (1..=ndim as usize)
            .map(|i| h.dim[i].max(1) as u64)
            .collect();
        let spatial = dims.iter().take(3).filter(|&&d| d > 1).count();
        if ndim < 3 || spatial < 3 {
            return Err(format!(
                "a {ndim}D image of shape {dims:?}; a brain map must be 3D (or 4D: several maps)"
            ));
        }
        let size: u64 = match h.datatype {
            2 | 256 => 1,
            4 | 512 => 2,
            8 | 768 | 16 => 4,
            1024 | 1280 | 64 => 8,
            other => return Err(format!("datatype code {other} is not supported (use uint8/int8/int16/uint16/int32/uint32/int64/float32/float64)")),
        };
        // Checked: NIfTI-2 dims are i64, whose product may wrap to a count the file holds.
        let n = dims
            .iter()
            .try_fold(1u64, |p, &d| p.checked_mul(d))
            .filter(|&n| n <= MAX_VOXELS)
            .ok_or_else(|| {
                format!("the header claims an image of shape {dims:?}, more than the {MAX_VOXELS} voxels an image may have; the file is corrupt")
            })?;
        let end = (h.vox_offset as u64)
            .checked_add(n * size)
            .and_then(|e| usize::try_from(e).ok())
            .ok_or_else(|| {
                format!(
                    "vox_offset {} is past any file; the file is corrupt",
                    h.vox_offset
                )
            })?;
        // end fits a usize, so do n ≤ end and the products of some of n's factors.
        let shape = [dims[0], dims[1], dims[2]].map(|d| d as usize);
        let n_vols = dims[3..].iter().product::<u64>() as usize;
        Ok(Layout {
            shape,
            n_vols,
            n: n as usize,
            size: size as usize,
            end,
        })
    }
}

fn decode(b: &[u8]) -> std::result::Result<Image, String> {
    let (h, swap) = parse_header(b)?;
    let Layout {
        shape,
        n_vols,
        n,
        size,
        end,
    } = Layout::of(&h)?;
    let convert: fn(&[u8], bool) -> f64 = match h.datatype {
        2 => |c, _| c[0] as f64,
        256 => |c, _| c[0] as i8 as f64,
        4 => |c, s| i16::from_le_bytes(ord(c, s)) as f64,
        512 => |c, s| u16::from_le_bytes(ord(c, s)) as f64,
        8 => |c, s| i32::from_le_bytes(ord(c, s)) as f64,
        768 => |c, s| u32::from_le_bytes(ord(c, s)) as f64,
        16 => |c, s| f32::from_le_bytes(ord(c, s)) as f64,
        1024 => |c, s| i64::from_le_bytes(ord(c, s)) as f64,
        1280 => |c, s| u64::from_le_bytes(ord(c, s)) as f64,
        _ => |c, s| f64::from_le_bytes(ord(c, s)),
    };
    let start = h.vox_offset;
    let body = b.get(start..end).ok_or_else(|| {
        format!("data ends early: the header promises {n} voxels of {size} bytes after byte {start}, the file has {} bytes (truncated download?)", b.len())
    })?;
    // nibabel: a zero or non-finite slope means "no scaling".
    let (slope, inter) = if h.scl_slope.is_finite() && h.scl_slope != 0.0 {
        (
            h.scl_slope,
            if h.scl_inter.is_finite() {
                h.scl_inter
            } else {
                0.0
            },
        )
    } else {
        (1.0, 0.0)
    };
    let data: Vec<f32> = if size == 4 && h.datatype == 16 && !swap && slope == 1.0 && inter == 0.0 {
        body.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    } else {
        body.chunks_exact(size)
            .map(|c| (convert(c, swap) * slope + inter) as f32)
            .collect()
    };
    Ok(Image {
        grid: Grid::new(shape, best_affine(&h, shape)),
        n_vols,
        data,
    })
}

fn ord<const N: usize>(c: &[u8], swap: bool) -> [u8; N] {
    let mut a: [u8; N] = c.try_into().unwrap();
    if swap {
        a.reverse();
    }
    a
}

/// nibabel's `get_best_affine`: sform if its code is set, else qform, else the base affine.
fn best_affine(h: &Header, shape: [usize; 3]) -> Affine {
    if h.sform_code != 0 {
        let s = h.srow;
        return [s[0], s[1], s[2], [0.0, 0.0, 0.0, 1.0]];
    }
    let zooms = [h.pixdim[1], h.pixdim[2], h.pixdim[3]].map(|z| if z == 0.0 { 1.0 } else { z });
    if h.qform_code != 0 {
        let [b, c, d, qx, qy, qz] = h.quatern;
        let a = (1.0 - (b * b + c * c + d * d)).max(0.0).sqrt();
        let r = [
            [
                a * a + b * b - c * c - d * d,
                2.0 * (b * c - a * d),
                2.0 * (b * d + a * c),
            ],
            [
                2.0 * (b * c + a * d),
                a * a + c * c - b * b - d * d,
                2.0 * (c * d - a * b),
            ],
            [
                2.0 * (b * d - a * c),
                2.0 * (c * d + a * b),
                a * a + d * d - c * c - b * b,
            ],
        ];
        let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
        let z = [zooms[0], zooms[1], zooms[2] * qfac];
        let q = [qx, qy, qz];
        let mut m = [[0.0; 4]; 4];
        for row in 0..3 {
            for col in 0..3 {
                m[row][col] = r[row][col] * z[col];
            }
            m[row][3] = q[row];
        }
        m[3][3] = 1.0;
        return m;
    }
    // Analyze-style: x flipped, origin at the centre.
    let c = |i: usize| (shape[i] as f64 - 1.0) / 2.0;
    [
        [-zooms[0], 0.0, 0.0, zooms[0] * c(0)],
        [0.0, zooms[1], 0.0, -zooms[1] * c(1)],
        [0.0, 0.0, zooms[2], -zooms[2] * c(2)],
        [0.0, 0.0, 0.0, 1.0],
    ]
}

/// A float32 NIfTI-1 header (+ 4 bytes of empty extension flag) with the affine as sform
/// (code 4, MNI152) and pixdim from the affine's column norms.
fn nifti1_header(grid: &Grid, n_vols: usize) -> Vec<u8> {
    let mut h = vec![0u8; 352];
    let put_i16 =
        |h: &mut Vec<u8>, at: usize, v: i16| h[at..at + 2].copy_from_slice(&v.to_le_bytes());
    let put_f32 =
        |h: &mut Vec<u8>, at: usize, v: f32| h[at..at + 4].copy_from_slice(&v.to_le_bytes());
    h[0..4].copy_from_slice(&348i32.to_le_bytes());
    let ndim = if n_vols > 1 { 4 } else { 3 };
    let dims = [
        ndim,
        grid.shape[0] as i16,
        grid.shape[1] as i16,
        grid.shape[2] as i16,
        n_vols as i16,
        1,
        1,
        1,
    ];
    for (i, d) in dims.iter().enumerate() {
        put_i16(&mut h, 40 + 2 * i, *d);
    }
    put_i16(&mut h, 70, 16); // float32
    put_i16(&mut h, 72, 32);
    let zooms = grid.voxel_size();
    let pix = [1.0, zooms[0], zooms[1], zooms[2], 1.0, 1.0, 1.0, 1.0];
    for (i, p) in pix.iter().enumerate() {
        put_f32(&mut h, 76 + 4 * i, *p as f32);
    }
    put_f32(&mut h, 108, 352.0); // vox_offset
    put_f32(&mut h, 112, 1.0); // scl_slope
    h[123] = 10 | 8; // xyzt_units: mm, s
    put_i16(&mut h, 254, 4); // sform_code: MNI152
    for r in 0..3 {
        for c in 0..4 {
            put_f32(&mut h, 280 + 16 * r + 4 * c, grid.affine[r][c] as f32);
        }
    }
    h[344..348].copy_from_slice(b"n+1\0");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_image_reads_back() {
        let grid = Grid::new(
            [3, 4, 5],
            [
                [-2.0, 0.0, 0.0, 90.0],
                [0.0, 2.0, 0.0, -126.0],
                [0.0, 0.0, 2.0, -72.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
        );
        let data: Vec<f32> = (0..120).map(|i| i as f32 * 0.5 - 7.0).collect();
        let img = Image::new(grid.clone(), 2, data.clone());
        let dir = std::env::temp_dir().join(format!("niclip-nifti-{}", std::process::id()));
        for name in ["a.nii", "a.nii.gz"] {
            let p = dir.join(name);
            img.write(&p).unwrap();
            let back = Image::read(&p).unwrap();
            assert_eq!(back.grid, grid);
            assert_eq!(back.n_vols, 2);
            assert_eq!(back.data, data);
        }
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn qform_affine_follows_nibabel() {
        // 90° rotation about z: quaternion (a, b, c, d) = (cos45°, 0, 0, sin45°), qfac -1.
        let s = std::f64::consts::FRAC_1_SQRT_2;
        let h = Header {
            dim: [3, 2, 2, 2, 1, 1, 1, 1],
            datatype: 16,
            pixdim: [-1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0],
            vox_offset: 352,
            scl_slope: 1.0,
            scl_inter: 0.0,
            qform_code: 1,
            sform_code: 0,
            quatern: [0.0, 0.0, s, 10.0, 20.0, 30.0],
            srow: [[0.0; 4]; 3],
        };
        let m = best_affine(&h, [2, 2, 2]);
        let want = [
            [0.0, -3.0, 0.0, 10.0],
            [2.0, 0.0, 0.0, 20.0],
            [0.0, 0.0, -4.0, 30.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        for r in 0..4 {
            for c in 0..4 {
                assert!((m[r][c] - want[r][c]).abs() < 1e-12, "{m:?}");
            }
        }
    }
}
