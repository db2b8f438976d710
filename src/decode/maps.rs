//! Brain maps as the decoder takes them: resampled onto the atlas grid, turned into the variant
//! asked for (the paper's Fig. S7), checked, and projected onto the atlas.

use crate::brain::grid::{invert, matmul};
use crate::brain::resample::{resample_volume_into, sample, Interp};
use crate::brain::{Atlas, Grid, Image};
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// The map files named by `inputs`: a file as it is; a folder as its `.nii`/`.nii.gz` files
/// (sorted, not recursive, hidden ones left out); a pattern with `*` or `?` (quoted, so the shell left it) as the
/// matching files. A folder or pattern that matches no map is an error naming it.
pub fn map_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in inputs {
        let found = if p.is_dir() {
            let mut maps = list_dir(p)?
                .into_iter()
                .filter(|f| is_nifti_name(f) && !is_hidden(f) && f.is_file())
                .collect::<Vec<_>>();
            maps.sort();
            maps
        } else if !p.exists() && p.to_string_lossy().contains(['*', '?']) {
            glob(p)?
        } else {
            out.push(p.clone());
            continue;
        };
        if found.is_empty() {
            return Err(Error::input(
                p,
                "matches no .nii or .nii.gz map; give map files, a folder of them or a pattern like 'maps/*.nii.gz'",
            ));
        }
        out.extend(found);
    }
    Ok(out)
}

/// macOS leaves `._name.nii` beside copied files: not maps.
fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

fn is_nifti_name(p: &Path) -> bool {
    let n = p
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    n.ends_with(".nii") || n.ends_with(".nii.gz")
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::read_dir(dir)
        .and_then(|rd| rd.map(|e| e.map(|e| e.path())).collect())
        .map_err(|e| Error::io(dir, e))
}

/// Files matching `pattern` component by component, sorted (`*` any run of characters but
/// `/`, `?` one character; hidden files only when the component starts with `.`).
fn glob(pattern: &Path) -> Result<Vec<PathBuf>> {
    let mut paths = vec![PathBuf::new()];
    for comp in pattern.components() {
        let c = comp.as_os_str().to_string_lossy();
        if !c.contains(['*', '?']) {
            paths.iter_mut().for_each(|p| p.push(comp));
            continue;
        }
        let mut next = Vec::new();
        for dir in paths
            .iter()
            .filter(|d| d.as_os_str().is_empty() || d.is_dir())
        {
            let list = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir.as_path()
            };
            for entry in list_dir(list)? {
                let name = entry.file_name().map(|n| n.to_string_lossy().into_owned());
                let name = name.unwrap_or_default();
                if wildcard(&c, &name) && (c.starts_with('.') || !name.starts_with('.')) {
                    next.push(dir.join(name));
                }
            }
        }
        paths = next;
    }
    paths.retain(|p| p.is_file());
    paths.sort();
    Ok(paths)
}

/// Whether `name` matches `pat` (`*` and `?` wildcards).
fn wildcard(pat: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pat.chars().collect(), name.chars().collect());
    // Classic two-pointer match with backtracking to the last `*`.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            (i, j) = (i + 1, j + 1);
        } else if i < p.len() && p[i] == '*' {
            (star, mark, i) = (Some(i), j, i + 1);
        } else if let Some(s) = star {
            (i, mark, j) = (s + 1, mark + 1, mark + 1);
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

/// Which signs of the map to keep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Tail {
    /// Values > 0; the rest set to 0.
    Positive,
    /// Values < 0, as their absolute values; the rest set to 0.
    Negative,
    /// The map as it is.
    #[default]
    Both,
}

/// How a map is changed before it is projected: flip, then tail (on the map's grid), then the
/// percentile ROI (on the atlas grid).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Variant {
    pub tail: Tail,
    /// Multiply by −1 first (decode the opposite contrast).
    pub flip: bool,
    /// Keep the top P % of the atlas's voxels, positive ones only, as a binary ROI (1 inside).
    pub percentile: Option<f64>,
}

impl Variant {
    pub fn check(&self) -> Result<()> {
        match self.percentile {
            Some(p) if !(p > 0.0 && p <= 100.0) => Err(Error::Usage(format!(
                "--percentile must be in (0, 100], got {p}"
            ))),
            _ => Ok(()),
        }
    }

    /// How the map was changed, for a picture's title: "" or " (flipped, positive tail, …)".
    pub fn note(&self) -> String {
        let mut parts = Vec::new();
        if self.flip {
            parts.push("flipped".to_string());
        }
        match self.tail {
            Tail::Both => {}
            Tail::Positive => parts.push("positive tail".into()),
            Tail::Negative => parts.push("negative tail".into()),
        }
        if let Some(p) = self.percentile {
            parts.push(format!("top {p}% as ROI"));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!(" ({})", parts.join(", "))
        }
    }

    /// Flip and tail, on the map's own grid (before resampling, as one would threshold a map
    /// by hand before decoding it). The percentile ROI is taken on the atlas grid
    /// (`support_values`).
    pub fn apply_signs(&self, vol: &mut [f32]) {
        if self.flip {
            vol.iter_mut().for_each(|x| *x = -*x);
        }
        match self.tail {
            Tail::Both => {}
            Tail::Positive => vol.iter_mut().for_each(|x| *x = x.max(0.0)),
            Tail::Negative => vol.iter_mut().for_each(|x| *x = (-*x).max(0.0)),
        }
    }
}

/// The MNI152 2 mm grid of NiMARE's mask (91×109×91, +2 mm steps, origin (−90, −126, −72)),
/// on which the atlas is read, as `niclip images` made the training features.
pub fn mni152_2mm_grid() -> Grid {
    Grid::new(
        [91, 109, 91],
        [
            [2.0, 0.0, 0.0, -90.0],
            [0.0, 2.0, 0.0, -126.0],
            [0.0, 0.0, 2.0, -72.0],
            [0.0, 0.0, 0.0, 1.0],
        ],
    )
}

/// Volume `v` of `img`, NaN/Inf set to 0 (as braindec's sanitiser), flipped and tailed; errors
/// name the map when nothing is left to decode.
fn signed_volume(img: &Image, v: usize, variant: &Variant, path: &Path) -> Result<Vec<f32>> {
    let vol = img.volume(v);
    let which = which(img, v);
    if vol.iter().all(|x| !x.is_finite()) {
        return Err(Error::input(path, format!("{which}is all NaN/Inf: there is nothing to decode; check that the map was saved with its values")));
    }
    if !vol.iter().any(|&x| x.is_finite() && x != 0.0) {
        return Err(Error::input(
            path,
            format!("{which}is all zeros: there is nothing to decode"),
        ));
    }
    let mut clean: Vec<f32> = vol
        .iter()
        .map(|&x| if x.is_finite() { x } else { 0.0 })
        .collect();
    variant.apply_signs(&mut clean);
    if clean.iter().all(|&x| x == 0.0) {
        return Err(Error::input(path, format!("{which}has no voxel left after --tail/--flip (the map has no values of that sign); choose another --tail")));
    }
    Ok(clean)
}

fn which(img: &Image, v: usize) -> String {
    if img.n_vols > 1 {
        format!("volume {v} (0-based) ")
    } else {
        String::new()
    }
}

/// The map's values at the atlas's support voxels (`atlas.support` order): only those enter
/// the projection, so only those are resampled (trilinear) — a tenth of the grid for a
/// cortical atlas. The percentile ROI is taken over them.
pub fn support_values(
    atlas: &Atlas,
    img: &Image,
    v: usize,
    variant: &Variant,
    path: &Path,
) -> Result<Vec<f32>> {
    let vol = signed_volume(img, v, variant, path)?;
    let mut values: Vec<f32> = if img.grid.same_as(&atlas.grid) {
        atlas.support.iter().map(|&s| vol[s as usize]).collect()
    } else {
        let m = matmul(&invert(&img.grid.affine), &atlas.grid.affine);
        atlas
            .support
            .par_iter()
            .with_min_len(4096)
            .map(|&s| {
                let p = atlas.grid.unflat(s as usize).map(|x| x as f64);
                let c: [f64; 3] = std::array::from_fn(|r| {
                    m[r][0] * p[0] + m[r][1] * p[1] + m[r][2] * p[2] + m[r][3]
                });
                sample(&vol, &img.grid, c, Interp::Linear)
            })
            .collect()
    };
    if values.iter().all(|&x| x == 0.0) {
        return Err(Error::input(path, format!("{}has no non-zero voxel inside the atlas: is it in MNI space? (its voxels all lie outside the atlas's brain)", which(img, v))));
    }
    if let Some(p) = variant.percentile {
        percentile_roi(&mut values, p);
        if values.iter().all(|&x| x == 0.0) {
            return Err(Error::input(path, format!("{}keeps no voxel inside the atlas with --percentile (no positive value among its top voxels); try --flip or --tail negative", which(img, v))));
        }
    }
    Ok(values)
}

/// Volume `v` as decoded, on the whole atlas grid (for pictures): the support values where the
/// atlas is, the resampled map elsewhere (0 elsewhere for a percentile ROI).
pub fn prepare_volume(
    atlas: &Atlas,
    img: &Image,
    v: usize,
    variant: &Variant,
    path: &Path,
) -> Result<Vec<f32>> {
    let inside = support_values(atlas, img, v, variant, path)?;
    let mut out = if variant.percentile.is_some() {
        vec![0.0f32; atlas.grid.n_voxels()]
    } else {
        let vol = signed_volume(img, v, variant, path)?;
        let mut out = vec![0.0f32; atlas.grid.n_voxels()];
        resample_volume_into(&vol, &img.grid, &atlas.grid, Interp::Linear, &mut out);
        out
    };
    for (&s, &x) in atlas.support.iter().zip(&inside) {
        out[s as usize] = x;
    }
    Ok(out)
}

/// Keeps the top P % of `values` that are positive, as 1; the rest 0.
fn percentile_roi(values: &mut [f32], p: f64) {
    if values.is_empty() {
        return;
    }
    let mut sorted = values.to_vec();
    let keep = (((p / 100.0) * values.len() as f64).ceil() as usize).clamp(1, values.len());
    let threshold = *sorted
        .select_nth_unstable_by(keep - 1, |a, b| b.total_cmp(a))
        .1;
    for x in values.iter_mut() {
        *x = if *x > 0.0 && *x >= threshold {
            1.0
        } else {
            0.0
        };
    }
}

/// The share of volume `v`'s non-zero voxels that lie outside the MNI152 brain (its 2 mm
/// mask, by nearest voxel): large for a map whose affine does not put it in MNI space, whose
/// decoding is then silently wrong. 0 for an all-zero volume.
pub fn share_outside_brain(img: &Image, v: usize) -> f64 {
    static MASK: std::sync::OnceLock<crate::brain::mask::Mask> = std::sync::OnceLock::new();
    let mask = MASK.get_or_init(crate::brain::mask::Mask::mni152_2mm);
    let to_mask = matmul(&invert(&mask.grid.affine), &img.grid.affine);
    let [nx, ny, nz] = mask.grid.shape.map(|n| n as f64);
    let (mut nonzero, mut outside) = (0u64, 0u64);
    for (i, &x) in img.volume(v).iter().enumerate() {
        if x == 0.0 || !x.is_finite() {
            continue;
        }
        nonzero += 1;
        let p = img.grid.unflat(i).map(|c| c as f64);
        let c: [f64; 3] = std::array::from_fn(|r| {
            (to_mask[r][0] * p[0] + to_mask[r][1] * p[1] + to_mask[r][2] * p[2] + to_mask[r][3])
                .round()
        });
        let inside = (0.0..nx).contains(&c[0])
            && (0.0..ny).contains(&c[1])
            && (0.0..nz).contains(&c[2])
            && mask.index[mask.grid.flat(c[0] as usize, c[1] as usize, c[2] as usize)] >= 0;
        outside += !inside as u64;
    }
    if nonzero == 0 {
        0.0
    } else {
        outside as f64 / nonzero as f64
    }
}

/// Atlas coefficients of every volume of `img` (n_vols × k, f32) after the variant.
/// `path` names the map in errors.
pub fn image_features(
    atlas: &Atlas,
    img: &Image,
    variant: &Variant,
    path: &Path,
) -> Result<Vec<f32>> {
    let k = atlas.k;
    let n = img.n_vols;
    let xty: Vec<Vec<f64>> = (0..n)
        .into_par_iter()
        .map(|v| -> Result<Vec<f64>> {
            let values = support_values(atlas, img, v, variant, path)?;
            let mut out = vec![0.0f64; k];
            for (r, &y) in values.iter().enumerate() {
                if y != 0.0 {
                    atlas.add_row(r, y as f64, &mut out);
                }
            }
            Ok(out)
        })
        .collect::<Result<_>>()?;
    let flat: Vec<f64> = xty.into_iter().flatten().collect();
    Ok(atlas.solve(&flat, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_a_shell_does() {
        for (pat, name, want) in [
            ("*.nii.gz", "a.nii.gz", true),
            ("*.nii.gz", "a.nii", false),
            ("sub-??_*.nii", "sub-01_bold.nii", true),
            ("sub-??_*.nii", "sub-1_bold.nii", false),
            ("*a*b*", "xxaybzz", true),
            ("*a*b", "ab_a", false),
            ("", "", true),
        ] {
            assert_eq!(wildcard(pat, name), want, "{pat} vs {name}");
        }
    }

    /// Folders, patterns and files mix; a folder or pattern that matches nothing is an error.
    #[test]
    fn map_files_expand_folders_and_patterns() {
        let dir = std::env::temp_dir().join(format!("niclip-mapfiles-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        for f in [
            "b.nii.gz",
            "a.nii",
            "notes.txt",
            "sub/c.nii.gz",
            ".hidden.nii",
        ] {
            std::fs::write(dir.join(f), b"").unwrap();
        }
        let got =
            map_files(&[dir.clone(), dir.join("s*/*.nii.gz"), dir.join("notes.txt")]).unwrap();
        let want: Vec<PathBuf> = ["a.nii", "b.nii.gz", "sub/c.nii.gz", "notes.txt"]
            .iter()
            .map(|f| dir.join(f))
            .collect();
        assert_eq!(got, want);
        let e = map_files(&[dir.join("*.npy")]).unwrap_err().to_string();
        assert!(e.contains("*.npy") && e.contains("matches no"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn variants_flip_split_and_threshold() {
        let support: Vec<u32> = (0..5).collect();
        let base = [3.0, -2.0, 1.0, 0.0, -5.0, 9.0];
        let run = |v: Variant| {
            let mut x = base.to_vec();
            v.apply_signs(&mut x);
            if let Some(p) = v.percentile {
                let mut inside: Vec<f32> = support.iter().map(|&s| x[s as usize]).collect();
                percentile_roi(&mut inside, p);
                x.iter_mut().for_each(|v| *v = 0.0);
                for (&s, &v) in support.iter().zip(&inside) {
                    x[s as usize] = v;
                }
            }
            x
        };
        assert_eq!(run(Variant::default()), base.to_vec());
        let pos = Variant {
            tail: Tail::Positive,
            ..Default::default()
        };
        assert_eq!(run(pos), vec![3.0, 0.0, 1.0, 0.0, 0.0, 9.0]);
        let neg = Variant {
            tail: Tail::Negative,
            ..Default::default()
        };
        assert_eq!(run(neg), vec![0.0, 2.0, 0.0, 0.0, 5.0, 0.0]);
        let flip = Variant {
            flip: true,
            ..Default::default()
        };
        assert_eq!(run(flip), vec![-3.0, 2.0, -1.0, -0.0, 5.0, -9.0]);
        // Top 40 % of the 5 support voxels = 2 voxels (3.0, 1.0); voxel 5 is off the support.
        let pct = Variant {
            percentile: Some(40.0),
            ..Default::default()
        };
        assert_eq!(run(pct), vec![1.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
        // Flip then top 20 %: the largest of −x is 5 (voxel 4).
        let both = Variant {
            flip: true,
            percentile: Some(20.0),
            ..Default::default()
        };
        assert_eq!(run(both), vec![0.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
    }

    #[test]
    fn the_fixed_grid_is_the_embedded_masks() {
        assert!(mni152_2mm_grid().same_as(&crate::brain::mask::Mask::mni152_2mm().grid));
    }
}
