//! Reading CSV/TSV (optionally gzip-compressed) with errors that name the file, the line and
//! the fix.

use crate::error::{Error, IoContext, Result};
use flate2::read::MultiGzDecoder;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// Files at least this big show a progress bar while read (when stderr is a terminal).
const PROGRESS_BYTES: u64 = 16 << 20;

/// Opens a text file, transparently gunzipping it when it starts with the gzip magic bytes.
pub(crate) fn open_text(path: &Path) -> Result<Box<dyn BufRead>> {
    let file = File::open(path).at(path)?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let raw: Box<dyn Read> = if size >= PROGRESS_BYTES {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(size),
            indicatif::ProgressDrawTarget::stderr_with_hz(5),
        );
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {eta}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(format!(
            "reading {}",
            path.file_name().unwrap_or_default().to_string_lossy()
        ));
        Box::new(ProgressRead { inner: file, bar })
    } else {
        Box::new(file)
    };
    let mut r = BufReader::with_capacity(1 << 16, raw);
    let head = r.fill_buf().at(path)?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(BufReader::with_capacity(
            1 << 16,
            MultiGzDecoder::new(r),
        )))
    } else if path.extension().is_some_and(|e| e == "gz") {
        Err(Error::input(
            path,
            "named .gz but not gzip data (it does not start with the gzip magic bytes); \
             check it with `gzip -t`, or drop the .gz suffix if it is plain text",
        ))
    } else {
        Ok(Box::new(r))
    }
}

struct ProgressRead<R> {
    inner: R,
    bar: indicatif::ProgressBar,
}

impl<R: Read> Read for ProgressRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        if n == 0 {
            self.bar.finish_and_clear();
        }
        Ok(n)
    }
}

/// The message for a read error in the middle of a (possibly gzip) text file.
pub(crate) fn read_error(path: &Path, line: Option<u64>, e: &std::io::Error) -> Error {
    let at = line.map(|l| format!("line {l}: ")).unwrap_or_default();
    if e.kind() == std::io::ErrorKind::InvalidData && e.to_string().contains("UTF-8") {
        Error::input(
            path,
            format!("{at}not valid UTF-8 text ({e}); re-save the file as UTF-8"),
        )
    } else {
        Error::input(
            path,
            format!(
                "{at}cannot read the file ({e}); if it is gzip-compressed it is corrupt or \
                 truncated: check it with `gzip -t` and fetch it again"
            ),
        )
    }
}

/// A delimited table with a header row, read record by record.
pub(crate) struct Table {
    pub path: PathBuf,
    reader: csv::Reader<Box<dyn BufRead>>,
    pub header: Vec<String>,
    record: csv::StringRecord,
}

impl Table {
    pub fn open(path: &Path, delimiter: u8) -> Result<Table> {
        let input = open_text(path)?;
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .has_headers(true)
            .flexible(false)
            .from_reader(input);
        let header = reader
            .headers()
            .map_err(|e| csv_error(path, e))?
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let h = if i == 0 {
                    h.trim_start_matches('\u{feff}')
                } else {
                    h
                };
                h.trim().to_string()
            })
            .collect::<Vec<_>>();
        if header.iter().all(|h| h.is_empty()) {
            return Err(Error::input(
                path,
                "empty file: expected a header row with the column names",
            ));
        }
        Ok(Table {
            path: path.to_path_buf(),
            reader,
            header,
            record: csv::StringRecord::new(),
        })
    }

    pub fn column(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }

    /// The indices of the columns `names`, or an error listing the missing ones.
    pub fn require(&self, names: &[&str], what: &str) -> Result<Vec<usize>> {
        let missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| self.column(n).is_none())
            .collect();
        if missing.is_empty() {
            return Ok(names.iter().map(|n| self.column(n).unwrap()).collect());
        }
        let delim_hint = if self.header.len() == 1 {
            " (only one column was found: is the delimiter right? .tsv files are tab-separated, .csv comma-separated)"
        } else {
            ""
        };
        Err(Error::input(
            &self.path,
            format!(
                "line 1: missing column{} {}; found {}{delim_hint}. {what} needs the columns {}",
                if missing.len() > 1 { "s" } else { "" },
                missing.join(", "),
                if self.header.is_empty() {
                    "none".to_string()
                } else {
                    self.header.join(", ")
                },
                names.join(", "),
            ),
        ))
    }

    /// The next record and its line number, or None at the end.
    pub fn next(&mut self) -> Result<Option<(u64, &csv::StringRecord)>> {
        match self.reader.read_record(&mut self.record) {
            Ok(true) => {
                let line = self.record.position().map(|p| p.line()).unwrap_or(0);
                Ok(Some((line, &self.record)))
            }
            Ok(false) => Ok(None),
            Err(e) => Err(csv_error(&self.path, e)),
        }
    }
}

fn csv_error(path: &Path, e: csv::Error) -> Error {
    let line = e.position().map(|p| p.line());
    match e.kind() {
        csv::ErrorKind::Io(io) => read_error(path, line, io),
        csv::ErrorKind::Utf8 { pos, err } => Error::input(
            path,
            format!(
                "line {}: not valid UTF-8 text ({err}); re-save the file as UTF-8",
                pos.as_ref().map(|p| p.line()).unwrap_or(0)
            ),
        ),
        csv::ErrorKind::UnequalLengths {
            pos,
            expected_len,
            len,
        } => Error::input(
            path,
            format!(
                "line {}: {len} fields where the header has {expected_len}; fix the quoting or \
                 the delimiters of that row",
                pos.as_ref().map(|p| p.line()).unwrap_or(0)
            ),
        ),
        _ => Error::input(path, format!("{e}; fix the file's CSV syntax")),
    }
}

/// A cell as trimmed text ("" when the column is absent).
pub(crate) fn cell(rec: &csv::StringRecord, col: Option<usize>) -> &str {
    col.and_then(|c| rec.get(c)).unwrap_or("").trim()
}

/// A cell as an optional value: empty, `nan`, `NaN`, `None`, `null`, `NA` are missing.
pub(crate) fn opt_cell(rec: &csv::StringRecord, col: Option<usize>) -> Option<String> {
    let s = cell(rec, col);
    (!is_missing(s)).then(|| s.to_string())
}

pub(crate) fn is_missing(s: &str) -> bool {
    matches!(
        s.trim(),
        "" | "nan" | "NaN" | "NAN" | "None" | "null" | "NULL" | "NA" | "N/A" | "n/a"
    )
}

/// A coordinate cell: a finite number within ±1000 mm, or an error naming the line and the fix.
pub(crate) fn coordinate(path: &Path, line: u64, axis: &str, s: &str) -> Result<f64> {
    let t = s.trim();
    let why = match t.parse::<f64>() {
        Ok(v) if v.is_finite() => match super::implausible_mm(v) {
            None => return Ok(v),
            Some(why) => format!("{t}, {why}"),
        },
        _ if t.is_empty() => "empty, not a number".to_string(),
        _ => format!("{t:?}, not a number"),
    };
    Err(Error::input(
        path,
        format!("line {line}: {axis} is {why}; fix or delete that row"),
    ))
}

/// An identifier (pmid, pmcid, study id) as the sources write it: `12345`, `12345.0` (pandas
/// floats), `PMC12345` (pmcid). Returns the canonical digits, or the trimmed text when it is not
/// numeric.
pub(crate) fn canonical_id(s: &str) -> String {
    let t = s.trim();
    let t = t
        .strip_prefix("PMC")
        .or_else(|| t.strip_prefix("pmc"))
        .filter(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
        .unwrap_or(t);
    if let Some(int) = t.strip_suffix(".0") {
        if !int.is_empty() && int.bytes().all(|b| b.is_ascii_digit()) {
            return int.to_string();
        }
    }
    t.to_string()
}

/// A year from `1997`, `1997.0` or ` 1997 `.
pub(crate) fn parse_year(s: &str) -> Option<i32> {
    let t = s.trim();
    t.parse::<i32>().ok().or_else(|| {
        t.parse::<f64>()
            .ok()
            .filter(|v| v.fract() == 0.0 && v.abs() < 1e6)
            .map(|v| v as i32)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn ids() {
        assert_eq!(canonical_id("PMC123"), "123");
        assert_eq!(canonical_id("36914701.0"), "36914701");
        assert_eq!(canonical_id(" 9065511 "), "9065511");
        assert_eq!(canonical_id("study-a"), "study-a");
        assert_eq!(parse_year("2006.0"), Some(2006));
        assert_eq!(parse_year("x"), None);
    }
}
