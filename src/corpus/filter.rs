//! `niclip corpus filter` and `niclip corpus sample`: subsets of a corpus for sweeps and
//! evaluations.
//!
//! Both select studies by position and copy them whole (texts, peaks, metadata) into a new
//! corpus file, in corpus order: a study read back from the subset equals the original.

use super::report::Notice;
use super::{Corpus, CorpusWriter, ImportReport, Section, Space};
use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

/// The conditions of [`filter`]: a study is kept when it passes every one given.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Keep only the ids listed in this file (one a line; blank lines and `#` comments skipped).
    pub ids: Option<PathBuf>,
    /// Drop the ids listed in this file.
    pub exclude_ids: Option<PathBuf>,
    /// Keep studies published in or after this year (studies without a year are dropped).
    pub year_min: Option<i32>,
    /// Keep studies published in or before this year (studies without a year are dropped).
    pub year_max: Option<i32>,
    /// Keep studies reported in one of these spaces (empty: any).
    pub spaces: Vec<Space>,
    /// Keep studies with at least one peak.
    pub with_peaks: bool,
    /// Keep studies whose every one of these sections is non-empty.
    pub with: Vec<Section>,
}

/// How many studies [`sample`] draws.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SampleSize {
    Count(usize),
    /// A fraction in (0, 1] of the candidates, rounded to the nearest count.
    Fraction(f64),
}

/// What [`sample`] draws from and how.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub size: SampleSize,
    pub seed: u64,
    /// Draw only among the studies with at least one peak.
    pub with_peaks: bool,
}

/// Studies one condition removed from those the earlier conditions left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removed {
    /// The condition as the command line gives it (`--year-min 2000`).
    pub condition: String,
    pub count: usize,
    /// The first id it removed, in corpus order.
    pub first: Option<String>,
}

/// The studies kept, by position in corpus order, and what each condition removed (in the order
/// the conditions were applied).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    pub keep: Vec<usize>,
    pub removed: Vec<Removed>,
}

/// What [`filter`] or [`sample`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubsetReport {
    /// Studies of the input corpus.
    pub total: usize,
    pub kept: usize,
    /// Peaks of the kept studies.
    pub peaks: usize,
    pub removed: Vec<Removed>,
}

impl fmt::Display for SubsetReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kept {} of {} studies ({} peaks)",
            self.kept, self.total, self.peaks
        )?;
        let parts: Vec<String> = self
            .removed
            .iter()
            .map(|r| format!("{} by {}", r.count, r.condition))
            .collect();
        if !parts.is_empty() {
            write!(f, "; removed {}", parts.join(", "))?;
        }
        Ok(())
    }
}

impl Selection {
    fn all(c: &Corpus) -> Selection {
        Selection {
            keep: (0..c.len()).collect(),
            removed: Vec::new(),
        }
    }

    /// Keeps the studies for which `pass` holds and records what `condition` removed.
    fn retain(
        &mut self,
        c: &Corpus,
        condition: String,
        mut pass: impl FnMut(usize) -> Result<bool>,
    ) -> Result<()> {
        let mut first = None;
        let before = self.keep.len();
        let mut kept = Vec::with_capacity(before);
        for &i in &self.keep {
            if pass(i)? {
                kept.push(i);
            } else if first.is_none() {
                first = Some(c.ids()[i].clone());
            }
        }
        self.removed.push(Removed {
            condition,
            count: before - kept.len(),
            first,
        });
        self.keep = kept;
        Ok(())
    }

    /// An error when nothing is left, naming the condition that removed the last studies.
    fn check_not_empty(&self, c: &Corpus) -> Result<()> {
        if !self.keep.is_empty() {
            return Ok(());
        }
        let last = self.removed.iter().rev().find(|r| r.count > 0);
        Err(Error::Usage(match last {
            Some(r) => format!(
                "no study of {} is left: {} removed the last {}; loosen it (nothing written)",
                c.path().display(),
                r.condition,
                r.count
            ),
            None => format!("{} holds no study (nothing written)", c.path().display()),
        }))
    }
}

impl Filter {
    /// The studies of `c` that pass every condition, in corpus order.
    pub fn select(&self, c: &Corpus) -> Result<Selection> {
        let mut sel = Selection::all(c);
        if let Some(p) = &self.ids {
            let listed = read_id_file(c, p)?;
            sel.retain(c, format!("--ids {}", p.display()), |i| {
                Ok(listed.contains(&i))
            })?;
        }
        if let Some(p) = &self.exclude_ids {
            let listed = read_id_file(c, p)?;
            sel.retain(c, format!("--exclude-ids {}", p.display()), |i| {
                Ok(!listed.contains(&i))
            })?;
        }
        if self.year_min.is_some() || self.year_max.is_some() {
            // Years live in the metadata: read each remaining study's once for both bounds.
            let mut year = vec![None; c.len()];
            for &i in &sel.keep {
                year[i] = c.meta(i)?.year;
            }
            if let Some(y) = self.year_min {
                sel.retain(c, format!("--year-min {y}"), |i| {
                    Ok(year[i].is_some_and(|v| v >= y))
                })?;
            }
            if let Some(y) = self.year_max {
                sel.retain(c, format!("--year-max {y}"), |i| {
                    Ok(year[i].is_some_and(|v| v <= y))
                })?;
            }
        }
        if !self.spaces.is_empty() {
            let names: Vec<&str> = self.spaces.iter().map(|s| s.name()).collect();
            sel.retain(c, format!("--space {}", names.join(",")), |i| {
                Ok(self.spaces.contains(&c.space(i)))
            })?;
        }
        if self.with_peaks {
            sel.retain(c, "--with-peaks".into(), |i| Ok(c.peak_count(i) > 0))?;
        }
        for &s in &self.with {
            sel.retain(c, format!("--with {s}"), |i| Ok(c.section_len(i, s) > 0))?;
        }
        Ok(sel)
    }
}

impl Sample {
    /// A uniform draw without replacement from the candidates, in corpus order. The draw is a
    /// partial Fisher–Yates shuffle seeded by `seed`, so for one seed a smaller sample is a
    /// subset of a larger one.
    pub fn select(&self, c: &Corpus) -> Result<Selection> {
        let mut sel = Selection::all(c);
        if self.with_peaks {
            sel.retain(c, "--with-peaks".into(), |i| Ok(c.peak_count(i) > 0))?;
            sel.check_not_empty(c)?;
        }
        let m = sel.keep.len();
        let (n, label) = match self.size {
            SampleSize::Count(n) => (n, format!("--n {n}")),
            SampleSize::Fraction(f) if f > 0.0 && f <= 1.0 => {
                ((f * m as f64).round() as usize, format!("--fraction {f}"))
            }
            SampleSize::Fraction(f) => {
                return Err(Error::Usage(format!(
                    "--fraction {f} is not in (0, 1]; give the share of studies to keep"
                )))
            }
        };
        if n == 0 || n > m {
            return Err(Error::Usage(format!(
                "{label} asks for {n} studies but {} has {m}{}; give between 1 and {m}",
                c.path().display(),
                if self.with_peaks { " with peaks" } else { "" }
            )));
        }
        let mut pool = sel.keep.clone();
        let mut rng = SplitMix64(self.seed);
        for k in 0..n {
            pool.swap(k, k + rng.below(m - k));
        }
        let drawn: HashSet<usize> = pool[..n].iter().copied().collect();
        sel.retain(c, format!("{label} --seed {}", self.seed), |i| {
            Ok(drawn.contains(&i))
        })?;
        Ok(sel)
    }
}

/// Positions of the ids listed in `path` (full `<study>-<contrast>` or bare study ids, as
/// [`Corpus::resolve`] reads them). An id not in `c` is an error naming the file and line.
pub fn read_id_file(c: &Corpus, path: &Path) -> Result<HashSet<usize>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut found = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let id = line.trim();
        if id.is_empty() || id.starts_with('#') {
            continue;
        }
        match c.resolve(id) {
            Ok(i) => found.insert(i),
            Err(e) => return Err(Error::input(path, format!("line {}: {e}", n + 1))),
        };
    }
    Ok(found)
}

/// Writes the studies of `corpus` that pass `f` to `out` atomically.
pub fn filter(corpus: &Path, out: &Path, f: &Filter, compress: bool) -> Result<SubsetReport> {
    refuse_same(corpus, out)?;
    let c = Corpus::open(corpus)?;
    let sel = f.select(&c)?;
    write_subset(&c, sel, out, "filter", compress)
}

/// Writes a random sample of `corpus` to `out` atomically.
pub fn sample(corpus: &Path, out: &Path, s: &Sample, compress: bool) -> Result<SubsetReport> {
    refuse_same(corpus, out)?;
    let c = Corpus::open(corpus)?;
    let sel = s.select(&c)?;
    write_subset(&c, sel, out, "sample", compress)
}

/// Overwriting the input while reading it would lose it (the rename replaces it mid-read).
fn refuse_same(corpus: &Path, out: &Path) -> Result<()> {
    let same = corpus == out
        || matches!(
            (corpus.canonicalize(), out.canonicalize()),
            (Ok(a), Ok(b)) if a == b
        );
    if same {
        return Err(Error::Usage(format!(
            "--out {} is the input corpus; write the subset to another file",
            out.display()
        )));
    }
    Ok(())
}

/// Copies the selected studies whole; the stored report names the input and what each
/// condition removed (shown by `corpus info`).
fn write_subset(
    c: &Corpus,
    sel: Selection,
    out: &Path,
    how: &str,
    compress: bool,
) -> Result<SubsetReport> {
    sel.check_not_empty(c)?;
    let mut stored = ImportReport::new(how, &[c.path()]);
    for r in sel.removed.iter().filter(|r| r.count > 0) {
        stored.notices.push(Notice {
            what: format!("study removed by {}", r.condition),
            count: r.count,
            first: r.first.clone().unwrap_or_default(),
        });
    }
    crate::io::write_atomic(out, |w| {
        let mut writer = CorpusWriter::new(w, out, compress)?;
        for &i in &sel.keep {
            writer.push(c.study(i)?)?;
        }
        writer.finish(std::mem::take(&mut stored))?;
        Ok(())
    })?;
    Ok(SubsetReport {
        total: c.len(),
        kept: sel.keep.len(),
        peaks: sel.keep.iter().map(|&i| c.peak_count(i)).sum(),
        removed: sel.removed,
    })
}
