//! A cache of prepared atlases: reading a dense 4D atlas and factoring XᵀX takes seconds
//! (3.5 s for a 512-map atlas on the 2 mm grid), its sparse rows and (XᵀX)⁻¹ take a few MB.
//! Entries live in `$NICLIP_CACHE_DIR`, else `$XDG_CACHE_HOME/niclip`, else `~/.cache/niclip`
//! (`NICLIP_CACHE_DIR=off` disables it). Each entry holds its full key (path, size, mtime,
//! labels, grid), so an atlas that changed is read again, never served stale. An entry is a
//! file like any other a user can damage: it ends with a CRC32 of all before it, and every size
//! and index in it is checked before use, so a damaged entry is rebuilt with a note, never
//! trusted (issue 20).

use super::{Atlas, Grid};
use crate::error::{IoContext, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"NICLIPAT";
const VERSION: u32 = 2;
/// The largest grid an entry may describe (its row index is 4 bytes a voxel): 2^27 voxels is
/// over 18 times the 1 mm MNI grid. Larger atlases are simply not cached.
const MAX_VOXELS: usize = 1 << 27;

/// The cache directory, or None when disabled or no home is known.
pub fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os("NICLIP_CACHE_DIR") {
        Some(d) if d == "off" => None,
        Some(d) => Some(PathBuf::from(d)),
        None => std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|d| d.join("niclip")),
    }
}

/// What an entry must match: the file as it is now, how it is read, and onto which grid.
fn key(path: &Path, labels: bool, grid: Option<&Grid>) -> Result<String> {
    let meta = std::fs::metadata(path).at(path)?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    Ok(format!(
        "v{VERSION} path={} size={} mtime={mtime} labels={labels} grid={:?}",
        canonical.display(),
        meta.len(),
        grid.map(|g| (g.shape, g.affine))
    ))
}

/// FNV-1a: a stable file name for a key (the key itself is checked on load).
fn file_name(key: &str) -> String {
    let h = key.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    format!("atlas-{h:016x}.bin")
}

/// The prepared atlas for this file, from `dir` if an entry matches, else built by `build` and
/// stored (a failure to store is only a warning: the cache is an optimisation).
pub fn load_or_build(
    dir: Option<&Path>,
    path: &Path,
    labels: bool,
    grid: Option<&Grid>,
    build: impl FnOnce() -> Result<Atlas>,
) -> Result<Atlas> {
    let Some(dir) = dir else { return build() };
    let key = key(path, labels, grid)?;
    let entry = dir.join(file_name(&key));
    if let Ok(bytes) = std::fs::read(&entry) {
        match decode_entry(&bytes, Some(&key)) {
            Ok(Some(atlas)) => return Ok(atlas),
            Ok(None) => {}
            Err(why) => eprintln!(
                "note: the cached atlas {} was invalid ({why}); rebuilding it",
                entry.display()
            ),
        }
    }
    let atlas = build()?;
    if atlas.grid.n_voxels() > MAX_VOXELS {
        return Ok(atlas);
    }
    if let Err(e) = std::fs::create_dir_all(dir)
        .at(dir)
        .and_then(|_| store(&entry, &key, &atlas))
    {
        eprintln!("warning: could not cache the prepared atlas ({e}); set NICLIP_CACHE_DIR to a writable folder or to off");
    }
    Ok(atlas)
}

fn store(entry: &Path, key: &str, a: &Atlas) -> Result<()> {
    crate::io::write_atomic(entry, |w| {
        let mut crc = flate2::Crc::new();
        let mut put = |b: &[u8]| {
            crc.update(b);
            w.write_all(b).at(entry)
        };
        put(MAGIC)?;
        put(&VERSION.to_le_bytes())?;
        put(&(key.len() as u64).to_le_bytes())?;
        put(key.as_bytes())?;
        for n in [
            a.k,
            a.grid.shape[0],
            a.grid.shape[1],
            a.grid.shape[2],
            a.support.len(),
            a.cols.len(),
            a.labels.as_ref().map_or(usize::MAX, Vec::len),
        ] {
            put(&(n as u64).to_le_bytes())?;
        }
        put(bytemuck::cast_slice(&a.grid.affine.concat()))?;
        put(bytemuck::cast_slice(&a.support))?;
        put(bytemuck::cast_slice(&a.row_ptr))?;
        put(bytemuck::cast_slice(&a.cols))?;
        put(bytemuck::cast_slice(&a.vals))?;
        put(bytemuck::cast_slice(&a.gram_inv))?;
        if let Some(l) = &a.labels {
            put(bytemuck::cast_slice(l))?;
        }
        w.write_all(&crc.sum().to_le_bytes()).at(entry)
    })
}

/// Rewrites an entry's trailing CRC32 over the rest: what a crafted entry looks like, for the
/// tests that check that the structure checks hold past the checksum.
pub fn reseal(entry: &mut [u8]) {
    if let Some(body) = entry.len().checked_sub(4) {
        let mut crc = flate2::Crc::new();
        crc.update(&entry[..body]);
        entry[body..].copy_from_slice(&crc.sum().to_le_bytes());
    }
}

/// Little reader over an entry: every read is bounded by what is left of it.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> std::result::Result<&[u8], String> {
        let (a, b) = (self.0.get(..n), self.0.get(n..));
        let (Some(a), Some(b)) = (a, b) else {
            return Err(format!("it ends {} bytes early", n - self.0.len()));
        };
        self.0 = b;
        Ok(a)
    }
    fn u64(&mut self) -> std::result::Result<usize, String> {
        let v = u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes"));
        usize::try_from(v).map_err(|_| format!("a size of {v} does not fit"))
    }
    fn vec<T: bytemuck::Pod>(&mut self, n: usize) -> std::result::Result<Vec<T>, String> {
        let bytes = n
            .checked_mul(std::mem::size_of::<T>())
            .ok_or(format!("{n} elements overflow"))?;
        Ok(bytemuck::pod_collect_to_vec(self.take(bytes)?))
    }
}

/// The atlas in an entry; `Ok(None)` for an entry of another version or of another key than
/// `key` (the file name is a hash, so it may collide; `None` accepts any key), `Err` with the
/// reason for a damaged one. Public for the fuzz suite.
pub fn decode_entry(bytes: &[u8], key: Option<&str>) -> std::result::Result<Option<Atlas>, String> {
    let mut c = Cursor(bytes);
    if c.take(8).ok() != Some(&MAGIC[..]) {
        return Err("not a niclip atlas cache entry".into());
    }
    if c.take(4)? != VERSION.to_le_bytes() {
        return Ok(None);
    }
    let body = bytes.len().checked_sub(4).ok_or("it is cut short")?;
    let mut crc = flate2::Crc::new();
    crc.update(&bytes[..body]);
    if crc.sum().to_le_bytes() != bytes[body..] {
        return Err("its checksum does not match its contents".into());
    }
    let mut c = Cursor(&bytes[12..body]);
    let klen = c.u64()?;
    let stored = c.take(klen)?;
    if key.is_some_and(|k| k.as_bytes() != stored) {
        return Ok(None);
    }
    let mut n = [0usize; 7];
    for v in &mut n {
        *v = c.u64()?;
    }
    let [k, nx, ny, nz, n_support, nnz, n_labels] = n;
    let n_voxels = [nx, ny, nz]
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&v| v <= MAX_VOXELS)
        .ok_or(format!("a grid of {nx}×{ny}×{nz} voxels is out of bounds"))?;
    let aff: Vec<f64> = c.vec(16)?;
    let affine = std::array::from_fn(|r| std::array::from_fn(|col| aff[4 * r + col]));
    let atlas = Atlas {
        grid: Grid::new([nx, ny, nz], affine),
        k,
        support: c.vec(n_support)?,
        row_ptr: c.vec(n_support.checked_add(1).ok_or("support overflows")?)?,
        cols: c.vec(nnz)?,
        vals: c.vec(nnz)?,
        gram_inv: c.vec(k.checked_mul(k).ok_or("k overflows")?)?,
        labels: match n_labels {
            usize::MAX => None,
            n => Some(c.vec::<i64>(n)?),
        },
        row_of: Vec::new(),
    };
    if !c.0.is_empty() {
        return Err(format!("{} bytes follow its end", c.0.len()));
    }
    check(&atlas, n_voxels)?;
    let mut row_of = vec![-1i32; n_voxels];
    for (r, &v) in atlas.support.iter().enumerate() {
        row_of[v as usize] = r as i32;
    }
    Ok(Some(Atlas { row_of, ..atlas }))
}

/// The invariants the projection indexes by: a damaged entry must fail here, not there.
fn check(a: &Atlas, n_voxels: usize) -> std::result::Result<(), String> {
    let bad = |what: &str| Err(format!("its {what} is inconsistent"));
    if a.k == 0 || a.k > u32::MAX as usize {
        return bad("map count");
    }
    if a.support.windows(2).any(|w| w[0] >= w[1])
        || a.support.last().is_some_and(|&v| v as usize >= n_voxels)
    {
        return bad("support");
    }
    if a.row_ptr.first() != Some(&0)
        || a.row_ptr.windows(2).any(|w| w[0] > w[1])
        || a.row_ptr.last().map(|&v| v as usize) != Some(a.cols.len())
    {
        return bad("row pointer");
    }
    if a.cols.iter().any(|&c| c as usize >= a.k) {
        return bad("column index");
    }
    let finite = a.vals.iter().all(|v| v.is_finite())
        && a.gram_inv.iter().all(|v| v.is_finite())
        && a.grid.affine.iter().flatten().all(|v| v.is_finite());
    if !finite {
        return bad("numbers (not all finite)");
    }
    if a.labels.as_ref().is_some_and(|l| l.len() != a.k) {
        return bad("label list");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::brain::Image;

    #[test]
    fn a_cached_atlas_equals_a_fresh_one_and_a_changed_file_is_read_again() {
        let dir = std::env::temp_dir().join(format!("niclip-cache-{}", std::process::id()));
        let cache = dir.join("cache");
        let grid = Grid::new(
            [5, 4, 3],
            [
                [2.0, 0.0, 0.0, 0.0],
                [0.0, 2.0, 0.0, 0.0],
                [0.0, 0.0, 2.0, 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
        );
        let n = grid.n_voxels();
        let data: Vec<f32> = (0..3 * n)
            .map(|i| {
                if (i * 7) % 5 < 2 {
                    0.5 + (i % 11) as f32
                } else {
                    0.0
                }
            })
            .collect();
        let path = dir.join("atlas.nii");
        Image::new(grid.clone(), 3, data).write(&path).unwrap();
        let build = || Atlas::from_image(&Image::read(&path).unwrap(), false, &path);
        let fresh = load_or_build(Some(&cache), &path, false, None, build).unwrap();
        let cached = load_or_build(Some(&cache), &path, false, None, || {
            panic!("should come from the cache")
        })
        .unwrap();
        assert_eq!(
            (fresh.grid, fresh.k, fresh.labels),
            (cached.grid, cached.k, cached.labels)
        );
        assert_eq!(
            (fresh.row_of, fresh.support, fresh.row_ptr),
            (cached.row_of, cached.support, cached.row_ptr)
        );
        assert_eq!(
            (fresh.cols, fresh.vals, fresh.gram_inv),
            (cached.cols, cached.vals, cached.gram_inv)
        );
        // Another grid or another reading is another entry; a rewritten file is stale.
        assert!(std::panic::catch_unwind(|| load_or_build(
            Some(&cache),
            &path,
            true,
            None,
            || panic!("miss")
        ))
        .is_err());
        std::thread::sleep(std::time::Duration::from_millis(20));
        let other: Vec<f32> = (0..2 * n)
            .map(|i| {
                if i < n {
                    (i % 3) as f32
                } else {
                    (i % 4 == 1) as u8 as f32
                }
            })
            .collect();
        Image::new(grid, 2, other).write(&path).unwrap();
        let reread = load_or_build(Some(&cache), &path, false, None, build).unwrap();
        assert_eq!(reread.k, 2);
        std::fs::remove_dir_all(dir).ok();
    }

    /// Overwrites the u64 header field `field` (0 = k, 1..=3 the grid, 4 support, 5 nnz) of an
    /// entry, or with `None` one byte of its body, and re-seals it with a valid checksum unless
    /// `reseal` is false: what a damaged or a crafted entry looks like.
    fn damage(entry: &Path, field: Option<(usize, u64)>, reseal: bool) {
        let mut b = std::fs::read(entry).unwrap();
        let klen = u64::from_le_bytes(b[12..20].try_into().unwrap()) as usize;
        let fields = 20 + klen;
        match field {
            Some((f, v)) => b[fields + 8 * f..fields + 8 * f + 8].copy_from_slice(&v.to_le_bytes()),
            None => b[fields + 100] ^= 0x40,
        }
        if reseal {
            super::reseal(&mut b);
        }
        std::fs::write(entry, b).unwrap();
    }

    /// Before the checks, a grid of 2^40 voxels in an entry aborted on its allocation, k = 0
    /// or a column past k panicked in the projection, and a flipped byte was served as is.
    #[test]
    fn a_damaged_entry_is_rebuilt_never_trusted() {
        let dir = std::env::temp_dir().join(format!("niclip-cache-bad-{}", std::process::id()));
        let cache = dir.join("cache");
        let grid = Grid::new(
            [4, 3, 2],
            [
                [2.0, 0.0, 0.0, 0.0],
                [0.0, 2.0, 0.0, 0.0],
                [0.0, 0.0, 2.0, 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
        );
        let data: Vec<f32> = (0..2 * 24).map(|i| ((i * 5) % 7) as f32 * 0.5).collect();
        let path = dir.join("atlas.nii");
        Image::new(grid, 2, data).write(&path).unwrap();
        let build = || Atlas::from_image(&Image::read(&path).unwrap(), false, &path);
        let fresh = load_or_build(Some(&cache), &path, false, None, build).unwrap();
        let entry = std::fs::read_dir(&cache)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let clean = std::fs::read(&entry).unwrap();
        let cases: [(Option<(usize, u64)>, bool); 6] = [
            (None, false),
            (Some((1, 1 << 40)), true),
            (Some((0, 0)), true),
            (Some((0, 1)), true),
            (Some((4, u64::MAX / 2)), true),
            (Some((5, 3)), true),
        ];
        for (field, reseal) in cases {
            std::fs::write(&entry, &clean).unwrap();
            damage(&entry, field, reseal);
            let mut rebuilt = false;
            let a = load_or_build(Some(&cache), &path, false, None, || {
                rebuilt = true;
                build()
            })
            .unwrap();
            assert!(rebuilt, "{field:?} was served from the cache");
            assert_eq!((a.k, &a.cols, &a.vals), (fresh.k, &fresh.cols, &fresh.vals));
            assert_eq!(
                std::fs::read(&entry).unwrap(),
                clean,
                "{field:?}: not rewritten"
            );
        }
        std::fs::remove_dir_all(dir).ok();
    }
}
