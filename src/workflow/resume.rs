//! Resumable chunks: a long job that writes one row-ordered array (`images`, `embed`) computes
//! it a chunk of rows at a time and keeps each finished chunk as `.npy` under
//! `<out>.partial/`, beside a key naming the job's inputs (`job.txt`). An interrupted run
//! resumes from the chunks it finished, but only for the very same job: any other key starts
//! over. The folder goes once the whole array is written. Each chunk has a CRC32 of its rows
//! beside it (`chunk-N.npy.crc32`, written after the chunk): a chunk damaged in place, or one
//! without its checksum, is computed again rather than trusted.

use crate::error::{IoContext, Result};
use crate::io::{ids_sidecar, read_npy_f32, write_atomic, write_ids, write_npy_f32};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The checkpoints of one job.
pub struct Chunks {
    dir: PathBuf,
}

impl Chunks {
    /// The checkpoints of the job `key` writing `out`: an earlier run's when its key is the same
    /// (says so on stderr), else an empty folder (another job's chunks are removed).
    pub fn open(out: &Path, key: &str) -> Result<Chunks> {
        let mut dir = out.as_os_str().to_os_string();
        dir.push(".partial");
        let dir = PathBuf::from(dir);
        let key_path = dir.join("job.txt");
        if std::fs::read_to_string(&key_path).ok().as_deref() == Some(key) {
            eprintln!("resuming from {}", dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&dir);
            let made = std::fs::create_dir_all(&dir).at(&dir).and_then(|_| {
                write_atomic(&key_path, |w| w.write_all(key.as_bytes()).at(&key_path))
            });
            if made.is_err() {
                // A full disk must not leave an empty folder behind.
                let _ = std::fs::remove_dir_all(&dir);
            }
            made?;
        }
        Ok(Chunks { dir })
    }

    /// Rows `0..n`, `cols` wide, in chunks of `chunk` rows: each chunk as this job saved it
    /// before, or `compute(rows)` now and saved. `done(rows, reused)` follows every chunk.
    pub fn rows(
        &self,
        n: usize,
        chunk: usize,
        cols: usize,
        mut compute: impl FnMut(Range<usize>) -> Result<Vec<f32>>,
        mut done: impl FnMut(Range<usize>, bool) -> Result<()>,
    ) -> Result<Vec<f32>> {
        let chunk = chunk.max(1);
        let mut out = Vec::with_capacity(n * cols);
        for c in 0..n.div_ceil(chunk) {
            let range = c * chunk..((c + 1) * chunk).min(n);
            let path = self.dir.join(format!("chunk-{c:06}.npy"));
            let saved = saved_chunk(&path, range.len(), cols);
            let reused = saved.is_some();
            let rows = match saved {
                Some(rows) => rows,
                None => {
                    let rows = compute(range.clone())?;
                    write_npy_f32(&path, &rows, range.len(), cols)?;
                    let sum = checksum_path(&path);
                    write_atomic(&sum, |w| write!(w, "{:08x}", crc32(&rows)).at(&sum))?;
                    rows
                }
            };
            out.extend(rows);
            done(range, reused)?;
        }
        Ok(out)
    }

    /// Writes the whole array (`rows` × `cols`) to `out` and its ids to `<out>.ids.txt` when
    /// given, then removes the checkpoints.
    pub fn finish(
        self,
        out: &Path,
        data: &[f32],
        rows: usize,
        cols: usize,
        ids: Option<&[String]>,
    ) -> Result<()> {
        write_npy_f32(out, data, rows, cols)?;
        if let Some(ids) = ids {
            write_ids(&ids_sidecar(out), ids)?;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

/// A chunk's rows if it was saved whole with this shape and its checksum matches (a mismatch
/// is said on stderr).
fn saved_chunk(path: &Path, rows: usize, cols: usize) -> Option<Vec<f32>> {
    let m = read_npy_f32(path)
        .ok()
        .filter(|m| m.rows == rows && m.cols == cols)?;
    let sum = std::fs::read_to_string(checksum_path(path)).ok()?;
    if sum.trim() != format!("{:08x}", crc32(&m.data)) {
        eprintln!(
            "note: {} does not match its checksum; computing it again",
            path.display()
        );
        return None;
    }
    Some(m.data)
}

fn checksum_path(chunk: &Path) -> PathBuf {
    chunk.with_extension("npy.crc32")
}

fn crc32(rows: &[f32]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(bytemuck::cast_slice(rows));
    crc.sum()
}

/// A path as a job key names it: canonical where it exists, so `./x` and `x` are one job.
pub fn key_path(p: &Path) -> String {
    std::fs::canonicalize(p)
        .unwrap_or(p.to_path_buf())
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// Rows whose values name their row and the run that computed them.
    fn job(out: &Path, key: &str, run: f32, computed: &Cell<usize>) -> Vec<f32> {
        let chunks = Chunks::open(out, key).unwrap();
        let compute = |r: Range<usize>| {
            computed.set(computed.get() + r.len());
            Ok(r.flat_map(|i| [i as f32, run]).collect())
        };
        chunks.rows(5, 2, 2, compute, |_, _| Ok(())).unwrap()
    }

    #[test]
    fn a_resumed_job_reuses_its_chunks_and_another_job_starts_over() {
        let dir = std::env::temp_dir().join(format!("niclip-resume-{}", std::process::id()));
        let out = dir.join("x.npy");
        let computed = Cell::new(0);
        let first = job(&out, "job A\n", 1.0, &computed);
        assert_eq!(computed.get(), 5);
        assert_eq!(first[..4], [0.0, 1.0, 1.0, 1.0]);

        // Interrupted before the last chunk: the same job computes only that one again.
        std::fs::remove_file(dir.join("x.npy.partial/chunk-000002.npy")).unwrap();
        computed.set(0);
        let resumed = job(&out, "job A\n", 2.0, &computed);
        assert_eq!(computed.get(), 1);
        assert_eq!(resumed[..8], first[..8]);
        assert_eq!(resumed[8..], [4.0, 2.0]);

        // A changed key discards every chunk.
        computed.set(0);
        let other = job(&out, "job B\n", 3.0, &computed);
        assert_eq!(computed.get(), 5);
        assert!(other.chunks(2).all(|r| r[1] == 3.0));

        let chunks = Chunks::open(&out, "job B\n").unwrap();
        chunks
            .finish(
                &out,
                &other,
                5,
                2,
                Some(&["a", "b", "c", "d", "e"].map(String::from)),
            )
            .unwrap();
        assert!(!dir.join("x.npy.partial").exists());
        assert_eq!(read_npy_f32(&out).unwrap().data, other);
        let ids = std::fs::read_to_string(ids_sidecar(&out)).unwrap();
        assert_eq!(ids, "a\nb\nc\nd\ne\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A chunk changed in place keeps its size, so only its checksum can tell: it used to be
    /// reused as it was. One without a checksum (killed between the two writes) is redone too.
    #[test]
    fn a_damaged_chunk_is_computed_again() {
        let dir = std::env::temp_dir().join(format!("niclip-resume-crc-{}", std::process::id()));
        let out = dir.join("x.npy");
        let computed = Cell::new(0);
        let first = job(&out, "job A\n", 1.0, &computed);
        let chunk = dir.join("x.npy.partial/chunk-000001.npy");
        let mut bytes = std::fs::read(&chunk).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        std::fs::write(&chunk, bytes).unwrap();
        std::fs::remove_file(dir.join("x.npy.partial/chunk-000002.npy.crc32")).unwrap();
        computed.set(0);
        let resumed = job(&out, "job A\n", 2.0, &computed);
        assert_eq!(
            computed.get(),
            3,
            "chunks 1 and 2 are computed again, chunk 0 reused"
        );
        assert_eq!(resumed[..4], first[..4]);
        assert!(resumed[4..].chunks(2).all(|r| r[1] == 2.0));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// When the key cannot be written (a full disk; here a folder path so long that the key's
    /// temporary name passes PATH_MAX), no empty `.partial` folder is left behind.
    #[test]
    fn a_failed_open_leaves_no_partial_folder() {
        let root = std::env::temp_dir().join(format!("niclip-resume-long-{}", std::process::id()));
        let mut dir = root.clone();
        // The `.partial` folder's path is 4,080 bytes: it can be made, its key's temporary not.
        while dir.as_os_str().len() + 151 + "/x.npy.partial".len() <= 3980 {
            dir.push("d".repeat(150));
        }
        let fill = 4080 - dir.as_os_str().len() - "/x.npy.partial".len() - 1;
        dir.push("d".repeat(fill));
        let out = dir.join("x.npy");
        assert!(Chunks::open(&out, "job\n").is_err());
        assert!(
            !dir.join("x.npy.partial").exists(),
            "an empty .partial was left"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
