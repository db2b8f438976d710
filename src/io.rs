//! Output files that are never left half-written, `.npy` arrays exchanged with Python, and
//! progress bars on stderr.
//!
//! Hostile input: sizes and offsets read from a file go through checked arithmetic and are
//! bounded before any allocation (the rule, for every parser, in ARCHITECTURE.md).

use crate::error::{Error, IoContext, Result};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Writes `path` through a temporary sibling renamed into place only when `fill` succeeds,
/// so an interrupted job leaves either the old file or the new one, never a torn one. A `path`
/// that exists and is not a regular file (or a link to one) is refused before anything is
/// written. Temporaries that killed writers left beside `path` are removed first (a rerun
/// writes under its own pid, so nothing else ever would).
pub fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
) -> Result<()> {
    check_replaceable(path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).at(dir)?;
    }
    remove_stale_temporaries(path);
    let tmp = temp_sibling(path);
    let result = (|| {
        let file = File::create(&tmp).at(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        fill(&mut w)?;
        let file = w
            .into_inner()
            .map_err(|e| Error::io(&tmp, e.into_error()))?;
        file.sync_all().at(&tmp)?;
        std::fs::rename(&tmp, path).at(path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The rename would replace a device, FIFO or socket with a regular file (`--out /dev/null`
/// did) and fail on a directory only after the whole write: an error naming `path` instead.
/// `metadata` follows links, so a link to /dev/null is refused too.
fn check_replaceable(path: &Path) -> Result<()> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    let kind = meta.file_type();
    if kind.is_file() {
        return Ok(());
    }
    let what = if kind.is_dir() {
        "a directory"
    } else {
        special_kind(&kind)
    };
    Err(Error::input(
        path,
        format!("is {what}, not a regular file; give the path of a file to write"),
    ))
}

#[cfg(unix)]
fn special_kind(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

#[cfg(not(unix))]
fn special_kind(_: &std::fs::FileType) -> &'static str {
    "a special file"
}

/// `<name>.tmp-<pid>-<n>`: unique per process and per call, so that threads writing one
/// output never share a temporary.
fn temp_sibling(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}-{n}", std::process::id()));
    path.with_file_name(name)
}

/// The pid in a temporary's name `<name>.tmp-<pid>[-<n>]` beside `path`, if it is one.
fn temporary_owner(path: &Path, candidate: &std::ffi::OsStr) -> Option<u32> {
    let name = path.file_name()?.to_str()?;
    let rest = candidate
        .to_str()?
        .strip_prefix(name)?
        .strip_prefix(".tmp-")?;
    let (pid, n) = rest.split_once('-').unwrap_or((rest, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(pid) && digits(n)).then(|| pid.parse().ok())?
}

/// Removes the temporaries of `path` whose process is gone (a `kill -9` leaves them), so that
/// they do not pile up run after run. Only where a process's liveness can be seen (/proc).
fn remove_stale_temporaries(path: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Some(pid) = temporary_owner(path, &e.file_name()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Elements of `item` bytes stored in Fortran (column-major) order, put in C (row-major)
/// order: numpy writes `np.asfortranarray(x)` and many transposed arrays that way.
fn fortran_to_c(bytes: &[u8], shape: &[usize], item: usize) -> Vec<u8> {
    // Fortran stride of each axis, in elements.
    let mut stride = vec![1usize; shape.len()];
    for k in 1..shape.len() {
        stride[k] = stride[k - 1] * shape[k - 1];
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = vec![0usize; shape.len()];
    for _ in 0..bytes.len() / item.max(1) {
        let at: usize = index.iter().zip(&stride).map(|(i, s)| i * s).sum();
        out.extend_from_slice(&bytes[at * item..(at + 1) * item]);
        // The next C-order index: the last axis moves fastest.
        for k in (0..shape.len()).rev() {
            index[k] += 1;
            if index[k] < shape[k] {
                break;
            }
            index[k] = 0;
        }
    }
    out
}

/// Writes a row-major float32 array `[rows, cols]` as `.npy` (version 1.0, little-endian).
pub fn write_npy_f32(path: &Path, data: &[f32], rows: usize, cols: usize) -> Result<()> {
    assert_eq!(data.len(), rows * cols, "npy shape does not match data");
    write_atomic(path, |w| {
        write_npy_header(w, "<f4", &[rows, cols]).at(path)?;
        w.write_all(bytemuck::cast_slice(data)).at(path)
    })
}

fn write_npy_header(w: &mut impl Write, descr: &str, shape: &[usize]) -> std::io::Result<()> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // magic(6) + version(2) + len(2) + header + '\n' must be a multiple of 64.
    let pad = (64 - (10 + header.len() + 1) % 64) % 64;
    header.push_str(&" ".repeat(pad));
    header.push('\n');
    w.write_all(b"\x93NUMPY\x01\x00")?;
    w.write_all(&(header.len() as u16).to_le_bytes())?;
    w.write_all(header.as_bytes())
}

/// A float32 matrix read from `.npy` (f4 or f8, C order, 1D or 2D; 1D reads as one column).
pub struct NpyMatrix {
    pub data: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
}

/// An `.npy` array as raw little-endian bytes with its dtype and shape; `.npy.gz` is unzipped.
pub struct NpyRaw {
    pub descr: String,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

pub fn read_npy_raw(path: &Path) -> Result<NpyRaw> {
    let mut bytes = Vec::new();
    File::open(path)
        .at(path)?
        .read_to_end(&mut bytes)
        .at(path)?;
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::input(path, format!("corrupt gzip: {e}")))?;
        bytes = out;
    }
    let bad = |msg: &str| {
        Error::input(
            path,
            format!("{msg}; write it with numpy.save(path, array.astype('float32'))"),
        )
    };
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file"));
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            12,
        ),
        _ => return Err(bad("unsupported .npy version")),
    };
    let header = std::str::from_utf8(
        bytes
            .get(start..start + hlen)
            .ok_or_else(|| bad("truncated header"))?,
    )
    .map_err(|_| bad("header is not text"))?;
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}'"))? + key.len() + 2;
        Some(header[at..].trim_start_matches([':', ' ']))
    };
    let descr = field("descr")
        .and_then(|s| s.strip_prefix('\''))
        .and_then(|s| s.split('\'').next())
        .ok_or_else(|| bad("no dtype"))?
        .to_string();
    let fortran = field("fortran_order").is_some_and(|s| s.starts_with("True"));
    let shape_txt = field("shape")
        .and_then(|s| s.strip_prefix('('))
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape"))?;
    let shape: Vec<usize> = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| bad("bad shape")))
        .collect::<Result<_>>()?;
    let item = match descr.as_str() {
        "|u1" | "|i1" | "|b1" => 1,
        "<f4" | "<i4" | "<u4" => 4,
        "<f8" | "<i8" | "<u8" => 8,
        other => return Err(bad(&format!("dtype {other} is not supported"))),
    };
    // Sizes read from the file: checked arithmetic, bounded by the file before any allocation.
    let n = shape
        .iter()
        .try_fold(item, |acc: usize, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            bad(&format!(
                "shape ({shape_txt}) holds more values than any file can"
            ))
        })?;
    let body = (start + hlen)
        .checked_add(n)
        .and_then(|end| bytes.get(start + hlen..end))
        .ok_or_else(|| bad("file is shorter than its shape says (truncated?)"))?;
    let body = if fortran {
        fortran_to_c(body, &shape, item)
    } else {
        body.to_vec()
    };
    Ok(NpyRaw {
        descr,
        shape,
        bytes: body,
    })
}

pub fn read_npy_f32(path: &Path) -> Result<NpyMatrix> {
    let raw = read_npy_raw(path)?;
    let (rows, cols) = match raw.shape.as_slice() {
        [n] => (*n, 1),
        [r, c] => (*r, *c),
        s => {
            return Err(Error::input(
                path,
                format!("expected a 1D or 2D array, found shape {s:?}"),
            ))
        }
    };
    let data = match raw.descr.as_str() {
        "<f4" => raw
            .bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        "<f8" => raw
            .bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        other => {
            return Err(Error::input(
                path,
                format!(
                    "dtype {other} is not float32/float64; save it with array.astype('float32')"
                ),
            ))
        }
    };
    Ok(NpyMatrix { data, rows, cols })
}

/// Writes one id per line: the `.ids.txt` sidecar of a row-ordered array of studies.
pub fn write_ids(path: &Path, ids: &[String]) -> Result<()> {
    write_atomic(path, |w| {
        for id in ids {
            writeln!(w, "{id}").at(path)?;
        }
        Ok(())
    })
}

/// `<path>.ids.txt`
pub fn ids_sidecar(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".ids.txt");
    PathBuf::from(s)
}

/// A progress bar on stderr counting `what` (hidden when stderr is not a terminal).
pub fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{bar:40}} {{pos}}/{{len}} {what} ({{rate}}, eta {{eta}})"
        ))
        .expect("a valid template")
        .with_key(
            "rate",
            |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{}", rate(s.per_sec()));
            },
        ),
    );
    bar
}

/// Items per second as a person reads them: "5322/s", "12.5/s", "0.31/s" (indicatif's own
/// printed "5,322.3906/s").
fn rate(per_sec: f64) -> String {
    match per_sec {
        r if r >= 100.0 => format!("{r:.0}/s"),
        r if r >= 1.0 => format!("{r:.1}/s"),
        r => format!("{r:.2}/s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_as_a_person_reads_them() {
        assert_eq!(rate(5322.3906), "5322/s");
        assert_eq!(rate(12.54), "12.5/s");
        assert_eq!(rate(0.314), "0.31/s");
    }

    /// A shape whose element count overflows (851 × 2⁶² float32 wraps to a short body) is an
    /// error naming the file, not an array of absurd rows.
    #[test]
    fn npy_shape_that_overflows_is_refused() {
        let dir = std::env::temp_dir().join(format!("niclip-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for shape in ["(851, 4611686018427387904)", "(18446744073709551615, 2)"] {
            let header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
            let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
            bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
            bytes.extend_from_slice(header.as_bytes());
            let path = dir.join("huge.npy");
            std::fs::write(&path, &bytes).unwrap();
            let Err(err) = read_npy_raw(&path) else {
                panic!("{shape}: read as an array");
            };
            assert!(err.to_string().contains("huge.npy"), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A `kill -9` leaves `<name>.tmp-<pid>`: the next write of the same output removes it
    /// when its process is gone, and leaves a live process's temporary and other files alone.
    #[test]
    fn stale_temporaries_go_on_the_next_write() {
        let dir = std::env::temp_dir().join(format!("niclip-stale-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let out = dir.join("x.npy");
        let stale = [format!("x.npy.tmp-{dead}"), format!("x.npy.tmp-{dead}-3")];
        let kept = [
            format!("x.npy.tmp-{}-999", std::process::id()),
            "x.npy.tmp-abc".into(),
            format!("y.npy.tmp-{dead}"),
        ];
        for f in stale.iter().chain(&kept) {
            std::fs::write(dir.join(f), b"torn").unwrap();
        }
        write_npy_f32(&out, &[1.0, 2.0], 1, 2).unwrap();
        for f in &stale {
            assert!(!dir.join(f).exists(), "{f} was left");
        }
        for f in &kept {
            assert!(dir.join(f).exists(), "{f} was removed");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Threads of one process writing one output used to share `<name>.tmp-<pid>`: one renamed
    /// the other's half-written file into place, or failed to find its own.
    #[test]
    fn threads_writing_one_output_never_share_a_temporary() {
        let dir = std::env::temp_dir().join(format!("niclip-threads-{}", std::process::id()));
        let out = dir.join("x.npy");
        let rows = 1 << 14;
        std::thread::scope(|s| {
            for t in 0..8 {
                let out = &out;
                s.spawn(move || {
                    for _ in 0..4 {
                        write_npy_f32(out, &vec![t as f32; rows], rows, 1).unwrap();
                    }
                });
            }
        });
        let m = read_npy_f32(&out).unwrap();
        assert!(m.data.iter().all(|&v| v == m.data[0]) && m.rows == rows);
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, ["x.npy"], "temporaries left");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `np.save(p, np.asfortranarray(x))` writes column-major data; it was refused with a fix
    /// (astype) that keeps the order. It reads as the same C-order matrix now.
    #[test]
    fn fortran_ordered_arrays_read_in_c_order() {
        let dir = std::env::temp_dir().join(format!("niclip-npy-f-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // x = [[0, 1, 2], [3, 4, 5]] stored column by column: 0 3 1 4 2 5.
        let header = "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }";
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        for v in [0.0f32, 3.0, 1.0, 4.0, 2.0, 5.0] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let path = dir.join("f.npy");
        std::fs::write(&path, &bytes).unwrap();
        let m = read_npy_f32(&path).unwrap();
        assert_eq!((m.rows, m.cols), (2, 3));
        assert_eq!(m.data, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        // Three axes: element (i, j, k) of shape (2, 3, 2) at i + 2j + 6k.
        let c: Vec<u8> = fortran_to_c(&(0u8..12).collect::<Vec<_>>(), &[2, 3, 2], 1);
        let want: Vec<u8> = (0..12)
            .map(|n| {
                let (i, j, k) = (n / 6, (n / 2) % 3, n % 2);
                (i + 2 * j + 6 * k) as u8
            })
            .collect();
        assert_eq!(c, want);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
