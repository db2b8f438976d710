//! Output files that are never left half-written, `.npy` arrays exchanged with Python, and
//! progress bars on stderr.

use crate::error::{Error, IoContext, Result};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Writes `path` through a temporary sibling renamed into place only when `fill` succeeds,
/// so an interrupted job leaves either the old file or the new one, never a torn one; the
/// temporary siblings of writers killed mid-write go once the new file is in place. A `path`
/// that exists and is not a regular file (or a link to one) is refused before anything is written.
pub fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
) -> Result<()> {
    check_replaceable(path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).at(dir)?;
    }
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
    result?;
    remove_orphan_temps(path);
    Ok(())
}

/// Removes the temporary siblings of `path` whose writer is gone (SIGKILL skips every cleanup,
/// and a rerun writes under its own process id, so nothing else ever would). Only where /proc
/// tells which processes live: a live writer's file is never taken.
fn remove_orphan_temps(path: &Path) {
    let proc = Path::new("/proc");
    let (Some(name), Some(dir)) = (path.file_name(), path.parent()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    if !proc.join("self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = [name.as_encoded_bytes(), b".tmp-"].concat();
    for e in entries.flatten() {
        let file = e.file_name();
        let pid = file.as_encoded_bytes().strip_prefix(prefix.as_slice());
        let pid = pid.and_then(|p| std::str::from_utf8(p).ok());
        if pid.is_some_and(|p| p.parse::<u32>().is_ok() && !proc.join(p).exists()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
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

fn temp_sibling(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
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
    if field("fortran_order").is_some_and(|s| s.starts_with("True")) {
        return Err(bad("Fortran-ordered array"));
    }
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
        .ok_or_else(|| bad("file is shorter than its shape says (truncated?)"))?
        .to_vec();
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
            "{{bar:40}} {{pos}}/{{len}} {what} ({{per_sec}}, eta {{eta}})"
        ))
        .expect("a valid template"),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write removes the temporary siblings of dead writers, and only those.
    #[cfg(target_os = "linux")]
    #[test]
    fn write_removes_temps_of_dead_writers() {
        let dir = std::env::temp_dir().join(format!("niclip-temps-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.bin");
        // u32::MAX is above any pid_max: no such process.
        let dead = dir.join(format!("out.bin.tmp-{}", u32::MAX));
        // The process that started this test lives; this process's own name is the write's.
        let live = dir.join(format!(
            "out.bin.tmp-{}",
            std::os::unix::process::parent_id()
        ));
        let other = [
            dir.join("out.bin.tmp-x"),
            dir.join(format!("other.bin.tmp-{}", u32::MAX)),
        ];
        for p in [&dead, &live].into_iter().chain(&other) {
            std::fs::write(p, b"torn").unwrap();
        }
        write_atomic(&path, |w| w.write_all(b"whole").at(&path)).unwrap();
        assert!(!dead.exists(), "a dead writer's temporary file is left");
        assert!(
            live.exists() && other.iter().all(|p| p.exists()),
            "took another's file"
        );
        std::fs::remove_dir_all(&dir).unwrap();
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
}
