//! The corpus file: one binary file, written in one pass, read at random.
//!
//! ```text
//! offset 0   header   b"NICLIPCP", u32 LE version (= 1), u32 LE 0
//!            data     one chunk per study, in the order studies were imported:
//!                       meta JSON (UTF-8, `meta_len` bytes) then the text record
//!                       (`text_stored` bytes): keywords ‖ abstract ‖ body, UTF-8, raw
//!                       (codec 0) or raw-deflate compressed (codec 1)
//!            xyz      f64 LE x, y, z per peak (MNI mm), studies contiguous in corpus order
//!            ids      study ids in corpus order, UTF-8, each followed by '\n'
//!            records  64 bytes per study in corpus order (below)
//!            toc      JSON: {"format":"niclip-corpus","version":1,"studies":n,"peaks":m,
//!                            "blocks":{"data":[off,len],"xyz":[..],"ids":[..],"records":[..]},
//!                            "report":{import report}}
//! end − 24   trailer  u64 LE toc offset, u64 LE toc length, b"NICLIPCP"
//! ```
//!
//! A record (all little endian): `0` u64 first peak, `8` u32 peak count, `12` u32 byte length
//! of the study part of the id (the id is `<study>-<contrast>`), `16` u64 absolute offset of the
//! study's data chunk, `24` u32 meta length, `28` u32 stored text length, `32` 4 × u32
//! uncompressed byte lengths of title (kept in the meta JSON), keywords, abstract, body, `48` u8
//! space (0 MNI, 1 TAL, 2 UNKNOWN: as the source declared it; coordinates are always MNI),
//! `49` u8 text codec, `50..64` zero.
//!
//! Corpus order is NiMARE's: ids sorted as strings (byte order). Opening reads the trailer, the
//! toc, the ids and the records (≈ 70 bytes per study); peaks, metadata and texts are read only
//! when asked for, one study at a time, so a corpus of 100,000+ full-text articles is never held
//! in memory. The writer keeps only ids, records and peaks (24 bytes each) in memory and streams
//! texts to disk as they arrive.

use super::report::{ImportReport, SectionCount, SpaceCount};
use super::{Section, Space, Study, StudyMeta, StudyText};
use crate::brain::features::Peaks;
use crate::error::{Error, IoContext, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub const MAGIC: &[u8; 8] = b"NICLIPCP";
pub const VERSION: u32 = 1;
const HEADER_LEN: u64 = 16;
const TRAILER_LEN: u64 = 24;
const RECORD_LEN: usize = 64;
/// Text records at least this long are deflated when compression is on.
const COMPRESS_MIN: usize = 512;

const CODEC_RAW: u8 = 0;
const CODEC_DEFLATE: u8 = 1;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Record {
    pub peak_start: u64,
    pub peak_count: u32,
    pub study_len: u32,
    pub data_offset: u64,
    pub meta_len: u32,
    pub text_stored: u32,
    /// Uncompressed byte lengths of title, keywords, abstract, body.
    pub sections: [u32; 4],
    pub space: u8,
    pub codec: u8,
}

impl Record {
    fn to_bytes(self) -> [u8; RECORD_LEN] {
        let mut b = [0u8; RECORD_LEN];
        b[0..8].copy_from_slice(&self.peak_start.to_le_bytes());
        b[8..12].copy_from_slice(&self.peak_count.to_le_bytes());
        b[12..16].copy_from_slice(&self.study_len.to_le_bytes());
        b[16..24].copy_from_slice(&self.data_offset.to_le_bytes());
        b[24..28].copy_from_slice(&self.meta_len.to_le_bytes());
        b[28..32].copy_from_slice(&self.text_stored.to_le_bytes());
        for (k, s) in self.sections.iter().enumerate() {
            b[32 + 4 * k..36 + 4 * k].copy_from_slice(&s.to_le_bytes());
        }
        b[48] = self.space;
        b[49] = self.codec;
        b
    }

    fn from_bytes(b: &[u8]) -> Record {
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        Record {
            peak_start: u64_at(0),
            peak_count: u32_at(8),
            study_len: u32_at(12),
            data_offset: u64_at(16),
            meta_len: u32_at(24),
            text_stored: u32_at(28),
            sections: [u32_at(32), u32_at(36), u32_at(40), u32_at(44)],
            space: b[48],
            codec: b[49],
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Toc {
    format: String,
    version: u32,
    studies: u64,
    peaks: u64,
    blocks: Blocks,
    #[serde(default)]
    report: Option<ImportReport>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Blocks {
    data: [u64; 2],
    xyz: [u64; 2],
    ids: [u64; 2],
    records: [u64; 2],
}

// ---------------------------------------------------------------------------------------------
// Writing

struct Pending {
    id: String,
    rec: Record,
    peaks: Vec<[f64; 3]>,
}

/// Streams studies into a corpus file. Use inside [`crate::io::write_atomic`]:
/// `CorpusWriter::new(w, path)?`, `push` each study, then `finish`.
pub struct CorpusWriter<'w, W: Write> {
    w: &'w mut W,
    path: PathBuf,
    pos: u64,
    pending: Vec<Pending>,
    seen: HashMap<String, usize>,
    compress: bool,
    report: ImportReport,
    scratch: Vec<u8>,
}

impl<'w, W: Write> CorpusWriter<'w, W> {
    pub fn new(w: &'w mut W, path: &Path, compress: bool) -> Result<Self> {
        w.write_all(MAGIC).at(path)?;
        w.write_all(&VERSION.to_le_bytes()).at(path)?;
        w.write_all(&0u32.to_le_bytes()).at(path)?;
        Ok(CorpusWriter {
            w,
            path: path.to_path_buf(),
            pos: HEADER_LEN,
            pending: Vec::new(),
            seen: HashMap::new(),
            compress,
            report: ImportReport::default(),
            scratch: Vec::new(),
        })
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.seen.contains_key(id)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.w.write_all(bytes).at(&self.path)?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Adds a study: its peaks must already be MNI mm. Fails on a duplicate id (readers check
    /// first, with the line, so this is a backstop).
    pub fn push(&mut self, study: Study) -> Result<()> {
        let id = study.id();
        self.check(&study, &id)?;
        let too_long = |n: usize| -> Result<u32> {
            u32::try_from(n).map_err(|_| {
                Error::Usage(format!(
                    "study {id}: a text or metadata field is over 4 GiB; split it"
                ))
            })
        };
        let text = &study.text;
        let mut meta = study.meta.clone();
        meta.title = (!text.title.is_empty()).then(|| text.title.clone());
        let meta_json = serde_json::to_vec(&meta).expect("metadata serializes");
        let sections = [
            too_long(text.title.len())?,
            too_long(text.keywords.len())?,
            too_long(text.abstract_.len())?,
            too_long(text.body.len())?,
        ];
        let codec = self.encode_text(text);
        let rec = Record {
            peak_start: 0,
            peak_count: too_long(study.peaks.len())?,
            study_len: too_long(study.study.len())?,
            data_offset: self.pos,
            meta_len: too_long(meta_json.len())?,
            text_stored: too_long(self.scratch.len())?,
            sections,
            space: study.meta.space.code(),
            codec,
        };
        self.write(&meta_json)?;
        let stored = std::mem::take(&mut self.scratch);
        self.write(&stored)?;
        self.scratch = stored;
        self.count(&study, &sections);
        self.seen.insert(id.clone(), self.pending.len());
        self.pending.push(Pending {
            id,
            rec,
            peaks: study.peaks,
        });
        Ok(())
    }

    /// A study the file can hold: a one-line id not seen before, finite peaks within ±1000 mm
    /// (the readers check the coordinates as read, with the line; this guards the others).
    fn check(&self, study: &Study, id: &str) -> Result<()> {
        if id.contains('\n') || study.study.is_empty() {
            return Err(Error::Usage(format!(
                "study id {id:?} is empty or holds a line break; fix the id in the input"
            )));
        }
        if self.seen.contains_key(id) {
            return Err(Error::Usage(format!(
                "study id {id} occurs twice in the input; each study-contrast id must be unique"
            )));
        }
        if let Some(p) = study
            .peaks
            .iter()
            .find(|p| p.iter().any(|&v| super::implausible_mm(v).is_some()))
        {
            return Err(Error::Usage(format!(
                "study {id}: coordinate {p:?} is not finite or beyond ±1000 mm; fix or drop it \
                 in the input"
            )));
        }
        Ok(())
    }

    /// Keywords, abstract and body, one after the other, into `scratch`: deflated when
    /// compressing and long enough to gain, raw otherwise. Returns the codec.
    fn encode_text(&mut self, text: &StudyText) -> u8 {
        let parts = [&text.keywords, &text.abstract_, &text.body];
        let text_len: usize = parts.iter().map(|s| s.len()).sum();
        self.scratch.clear();
        if self.compress && text_len >= COMPRESS_MIN {
            let mut enc = flate2::write::DeflateEncoder::new(
                std::mem::take(&mut self.scratch),
                flate2::Compression::fast(),
            );
            for s in parts {
                enc.write_all(s.as_bytes()).expect("deflate into memory");
            }
            self.scratch = enc.finish().expect("deflate into memory");
            CODEC_DEFLATE
        } else {
            for s in parts {
                self.scratch.extend_from_slice(s.as_bytes());
            }
            CODEC_RAW
        }
    }

    /// Counts for the report.
    fn count(&mut self, study: &Study, sections: &[u32; 4]) {
        let r = &mut self.report;
        r.studies += 1;
        r.peaks += study.peaks.len();
        if study.peaks.is_empty() {
            r.studies_without_peaks += 1;
        }
        let c = r.space_mut(study.source_space);
        c.studies += 1;
        c.peaks += study.peaks.len();
        for (k, s) in Section::ALL.iter().enumerate() {
            if sections[k] > 0 {
                r.sections.add(*s, 1);
            }
        }
    }

    /// Sorts the studies into corpus order and writes the peaks, ids, records and toc. The
    /// counts of `report` are replaced by the writer's own.
    pub fn finish(mut self, mut report: ImportReport) -> Result<ImportReport> {
        let counts = std::mem::take(&mut self.report);
        report.studies = counts.studies;
        report.peaks = counts.peaks;
        report.studies_without_peaks = counts.studies_without_peaks;
        report.mni = counts.mni;
        report.tal = counts.tal;
        report.unknown = counts.unknown;
        report.sections = counts.sections;

        let data = [HEADER_LEN, self.pos - HEADER_LEN];
        let mut pending = std::mem::take(&mut self.pending);
        pending.sort_unstable_by(|a, b| a.id.cmp(&b.id));

        let xyz_off = self.pos;
        let mut next = 0u64;
        let mut buf = Vec::with_capacity(1 << 16);
        for p in pending.iter_mut() {
            p.rec.peak_start = next;
            next += p.peaks.len() as u64;
            for q in &p.peaks {
                for v in q {
                    buf.extend_from_slice(&v.to_le_bytes());
                }
            }
            if buf.len() >= 1 << 16 {
                self.write(&buf)?;
                buf.clear();
            }
        }
        self.write(&buf)?;
        let xyz = [xyz_off, self.pos - xyz_off];

        let ids_off = self.pos;
        buf.clear();
        for p in &pending {
            buf.extend_from_slice(p.id.as_bytes());
            buf.push(b'\n');
        }
        self.write(&buf)?;
        let ids = [ids_off, self.pos - ids_off];

        let rec_off = self.pos;
        buf.clear();
        for p in &pending {
            buf.extend_from_slice(&p.rec.to_bytes());
        }
        self.write(&buf)?;
        let records = [rec_off, self.pos - rec_off];

        let toc = Toc {
            format: "niclip-corpus".into(),
            version: VERSION,
            studies: pending.len() as u64,
            peaks: next,
            blocks: Blocks {
                data,
                xyz,
                ids,
                records,
            },
            report: Some(report.clone()),
        };
        let toc_json = serde_json::to_vec(&toc).expect("toc serializes");
        let toc_off = self.pos;
        self.write(&toc_json)?;
        let mut trailer = Vec::with_capacity(TRAILER_LEN as usize);
        trailer.extend_from_slice(&toc_off.to_le_bytes());
        trailer.extend_from_slice(&(toc_json.len() as u64).to_le_bytes());
        trailer.extend_from_slice(MAGIC);
        self.write(&trailer)?;
        Ok(report)
    }
}

// ---------------------------------------------------------------------------------------------
// Reading

/// An open corpus file. Cheap to open: texts, metadata and peaks stay on disk until asked for.
pub struct Corpus {
    path: PathBuf,
    file: File,
    toc: Toc,
    ids: Vec<String>,
    recs: Vec<Record>,
    index: OnceLock<Index>,
}

struct Index {
    by_id: HashMap<String, usize>,
    by_study: HashMap<String, Vec<usize>>,
}

/// Counts over a corpus, from its records (no text is read).
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct CorpusStats {
    pub studies: usize,
    pub peaks: usize,
    pub studies_with_peaks: usize,
    pub mni: SpaceCount,
    pub tal: SpaceCount,
    pub unknown: SpaceCount,
    /// Studies with a non-empty section.
    pub sections: SectionCount,
    /// UTF-8 bytes per section over all studies.
    pub section_bytes: SectionCount,
    pub file_bytes: u64,
}

fn not_a_corpus(path: &Path, why: &str) -> Error {
    Error::input(
        path,
        format!("not a niclip corpus ({why}); create one with `niclip corpus import`"),
    )
}

fn corrupt(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::input(
        path,
        format!(
            "corrupt niclip corpus ({why}); the file was truncated or altered: import it again \
             with `niclip corpus import`"
        ),
    )
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, offset)
}

#[cfg(windows)]
fn read_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        let n = file.seek_read(buf, offset)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf = &mut buf[n..];
        offset += n as u64;
    }
    Ok(())
}

impl Corpus {
    /// Opens a corpus file written by `niclip corpus import`: reads its table of contents, ids
    /// and per-study records (≈ 70 bytes per study), nothing else.
    pub fn open(path: &Path) -> Result<Corpus> {
        let file = File::open(path).at(path)?;
        let len = file.metadata().at(path)?.len();
        if path.is_dir() {
            return Err(not_a_corpus(path, "it is a directory"));
        }
        let mut head = [0u8; HEADER_LEN as usize];
        if len < HEADER_LEN + TRAILER_LEN {
            return Err(not_a_corpus(path, "too short"));
        }
        read_at(&file, &mut head, 0).at(path)?;
        if &head[..8] != MAGIC {
            return Err(not_a_corpus(path, "no niclip corpus header"));
        }
        let version = u32::from_le_bytes(head[8..12].try_into().unwrap());
        if version != VERSION {
            return Err(Error::input(
                path,
                format!(
                    "niclip corpus format version {version}, but this niclip reads version \
                     {VERSION}; import the corpus again with this niclip (`niclip corpus import`)"
                ),
            ));
        }
        let mut trailer = [0u8; TRAILER_LEN as usize];
        read_at(&file, &mut trailer, len - TRAILER_LEN).at(path)?;
        if &trailer[16..] != MAGIC {
            return Err(corrupt(path, "no trailer"));
        }
        let toc_off = u64::from_le_bytes(trailer[0..8].try_into().unwrap());
        let toc_len = u64::from_le_bytes(trailer[8..16].try_into().unwrap());
        if toc_off.checked_add(toc_len) != Some(len - TRAILER_LEN) {
            return Err(corrupt(path, "bad table of contents position"));
        }
        let mut toc_bytes = vec![0u8; toc_len as usize];
        read_at(&file, &mut toc_bytes, toc_off).at(path)?;
        let toc: Toc = serde_json::from_slice(&toc_bytes)
            .map_err(|e| corrupt(path, format!("table of contents: {e}")))?;
        let n = toc.studies as usize;
        let b = toc.blocks;
        for (name, [off, l]) in [
            ("data", b.data),
            ("xyz", b.xyz),
            ("ids", b.ids),
            ("records", b.records),
        ] {
            if off.checked_add(l).is_none_or(|end| end > toc_off) {
                return Err(corrupt(path, format!("block {name} out of range")));
            }
        }
        let records_len = n.checked_mul(RECORD_LEN).map(|l| l as u64);
        if records_len != Some(b.records[1]) || toc.peaks.checked_mul(24) != Some(b.xyz[1]) {
            return Err(corrupt(path, "block sizes do not match the counts"));
        }
        let mut rec_bytes = vec![0u8; b.records[1] as usize];
        read_at(&file, &mut rec_bytes, b.records[0]).at(path)?;
        let recs: Vec<Record> = rec_bytes
            .chunks_exact(RECORD_LEN)
            .map(Record::from_bytes)
            .collect();
        let mut id_bytes = vec![0u8; b.ids[1] as usize];
        read_at(&file, &mut id_bytes, b.ids[0]).at(path)?;
        let id_text = String::from_utf8(id_bytes).map_err(|_| corrupt(path, "ids not UTF-8"))?;
        let ids: Vec<String> = id_text.lines().map(str::to_string).collect();
        if ids.len() != n {
            return Err(corrupt(path, "id count"));
        }
        // Checked sums: offsets read from the file must not wrap into range.
        let data_end = b.data[0] + b.data[1];
        let within = |start: u64, lens: &[u64], end: u64| {
            lens.iter()
                .try_fold(start, |a, &l| a.checked_add(l))
                .is_some_and(|e| e <= end)
        };
        for (i, r) in recs.iter().enumerate() {
            let ok = within(r.peak_start, &[r.peak_count as u64], toc.peaks)
                && (r.study_len as usize) <= ids[i].len()
                && r.data_offset >= b.data[0]
                && within(
                    r.data_offset,
                    &[r.meta_len as u64, r.text_stored as u64],
                    data_end,
                )
                && Space::from_code(r.space).is_some()
                && r.codec <= CODEC_DEFLATE;
            if !ok {
                return Err(corrupt(path, format!("record of study {}", ids[i])));
            }
        }
        Ok(Corpus {
            path: path.to_path_buf(),
            file,
            toc,
            ids,
            recs,
            index: OnceLock::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of studies (study-contrast ids), with or without peaks.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Study ids (`<study>-<contrast>`) in corpus order (sorted as strings, like NiMARE).
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// The study part of id `i` (before the contrast).
    pub fn study_of(&self, i: usize) -> &str {
        &self.ids[i][..self.recs[i].study_len as usize]
    }

    /// The contrast part of id `i`.
    pub fn contrast_of(&self, i: usize) -> &str {
        let s = self.recs[i].study_len as usize;
        self.ids[i].get(s + 1..).unwrap_or("")
    }

    /// Total number of peaks.
    pub fn n_peaks(&self) -> usize {
        self.toc.peaks as usize
    }

    /// Number of peaks of study `i`.
    pub fn peak_count(&self, i: usize) -> usize {
        self.recs[i].peak_count as usize
    }

    /// The space study `i` was reported in (its peaks are MNI whatever this says).
    pub fn space(&self, i: usize) -> Space {
        Space::from_code(self.recs[i].space).unwrap_or(Space::Unknown)
    }

    /// Byte length of a section of study `i` (0 when empty), without reading it.
    pub fn section_len(&self, i: usize, section: Section) -> usize {
        self.recs[i].sections[section as usize] as usize
    }

    /// The report stored by the import that created this file.
    pub fn import_report(&self) -> Option<&ImportReport> {
        self.toc.report.as_ref()
    }

    fn index(&self) -> &Index {
        self.index.get_or_init(|| {
            let mut by_id = HashMap::with_capacity(self.ids.len());
            let mut by_study: HashMap<String, Vec<usize>> = HashMap::new();
            for (i, id) in self.ids.iter().enumerate() {
                by_id.insert(id.clone(), i);
                by_study
                    .entry(self.study_of(i).to_string())
                    .or_default()
                    .push(i);
            }
            Index { by_id, by_study }
        })
    }

    /// The position of `id` in corpus order: a full `<study>-<contrast>` id, or a bare study id
    /// that has exactly one contrast.
    pub fn find(&self, id: &str) -> Option<usize> {
        let ix = self.index();
        ix.by_id
            .get(id)
            .copied()
            .or_else(|| match ix.by_study.get(id) {
                Some(v) if v.len() == 1 => Some(v[0]),
                _ => None,
            })
    }

    /// Like [`Corpus::find`], with an `Error::Usage` that names the id and the fix.
    pub fn resolve(&self, id: &str) -> Result<usize> {
        if let Some(i) = self.find(id) {
            return Ok(i);
        }
        let ix = self.index();
        match ix.by_study.get(id) {
            Some(v) => Err(Error::Usage(format!(
                "study {id} has {} contrasts in {} ({}); give one of these ids",
                v.len(),
                self.path.display(),
                v.iter()
                    .take(5)
                    .map(|&i| self.ids[i].as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            None => Err(Error::Usage(format!(
                "study {id:?} is not in {}; ids look like {} (list them with `niclip corpus \
                 export`, or use the bare study id)",
                self.path.display(),
                self.ids
                    .first()
                    .map(String::as_str)
                    .unwrap_or("<empty corpus>")
            ))),
        }
    }

    fn read_xyz(&self, first: u64, count: u64) -> Result<Vec<[f64; 3]>> {
        let mut bytes = vec![0u8; (count * 24) as usize];
        read_at(&self.file, &mut bytes, self.toc.blocks.xyz[0] + first * 24).at(&self.path)?;
        Ok(bytes
            .chunks_exact(24)
            .map(|c| {
                let f = |o: usize| f64::from_le_bytes(c[o..o + 8].try_into().unwrap());
                [f(0), f(8), f(16)]
            })
            .collect())
    }

    /// Peaks of study `i` (MNI mm).
    pub fn peaks_of(&self, i: usize) -> Result<Vec<[f64; 3]>> {
        let r = &self.recs[i];
        self.read_xyz(r.peak_start, r.peak_count as u64)
    }

    /// Every study with at least one peak, in corpus order, coordinates MNI mm; and the number
    /// of studies skipped for having no peaks.
    pub fn peaks_all(&self) -> Result<(Peaks, usize)> {
        let xyz = self.read_xyz(0, self.toc.peaks)?;
        let mut peaks = Peaks::new();
        let mut skipped = 0;
        for (i, r) in self.recs.iter().enumerate() {
            if r.peak_count == 0 {
                skipped += 1;
                continue;
            }
            let a = r.peak_start as usize;
            peaks.push(
                self.ids[i].clone(),
                xyz[a..a + r.peak_count as usize].iter().copied(),
            );
        }
        Ok((peaks, skipped))
    }

    /// The given studies in the given order (full or bare ids). A study without peaks is
    /// included with none; an unknown id is an `Error::Usage` naming it.
    pub fn peaks_for(&self, ids: &[String]) -> Result<Peaks> {
        let idx: Vec<usize> = ids
            .iter()
            .map(|id| self.resolve(id))
            .collect::<Result<_>>()?;
        let mut peaks = Peaks::new();
        // Many studies: one read of the whole block beats many small ones.
        if idx.len() > 64 {
            let xyz = self.read_xyz(0, self.toc.peaks)?;
            for &i in &idx {
                let r = &self.recs[i];
                let a = r.peak_start as usize;
                peaks.push(
                    self.ids[i].clone(),
                    xyz[a..a + r.peak_count as usize].iter().copied(),
                );
            }
        } else {
            for &i in &idx {
                peaks.push(self.ids[i].clone(), self.peaks_of(i)?);
            }
        }
        Ok(peaks)
    }

    fn read_data(&self, i: usize, skip: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        read_at(&self.file, &mut buf, self.recs[i].data_offset + skip).at(&self.path)?;
        Ok(buf)
    }

    /// Metadata of study `i` (pmid, pmcid, doi, title, year, journal, authors, space, …).
    pub fn meta(&self, i: usize) -> Result<StudyMeta> {
        let r = &self.recs[i];
        let bytes = self.read_data(i, 0, r.meta_len as usize)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| corrupt(&self.path, format!("metadata of {}: {e}", self.ids[i])))
    }

    /// Title, keywords, abstract and body of study `i`.
    pub fn text(&self, i: usize) -> Result<StudyText> {
        let r = self.recs[i];
        let title = if r.sections[0] > 0 {
            self.meta(i)?.title.unwrap_or_default()
        } else {
            String::new()
        };
        let stored = self.read_data(i, r.meta_len as u64, r.text_stored as usize)?;
        // Section lengths read from the file: summed in u64 and never used to size an
        // allocation (the stream is read up to one byte past what they claim).
        let n: u64 = r.sections[1..].iter().map(|&s| u64::from(s)).sum();
        let raw = match r.codec {
            CODEC_RAW => stored,
            _ => {
                let mut out = Vec::new();
                flate2::read::DeflateDecoder::new(&stored[..])
                    .take(n + 1)
                    .read_to_end(&mut out)
                    .map_err(|e| corrupt(&self.path, format!("text of {}: {e}", self.ids[i])))?;
                out
            }
        };
        if raw.len() as u64 != n {
            return Err(corrupt(
                &self.path,
                format!("text length of {}", self.ids[i]),
            ));
        }
        let mut text =
            String::from_utf8(raw).map_err(|_| corrupt(&self.path, "text is not UTF-8"))?;
        let (k, a) = (r.sections[1] as usize, r.sections[2] as usize);
        if !text.is_char_boundary(k) || !text.is_char_boundary(k + a) {
            return Err(corrupt(&self.path, "section boundaries"));
        }
        let body = text.split_off(k + a);
        let abstract_ = text.split_off(k);
        Ok(StudyText {
            title,
            keywords: text,
            abstract_,
            body,
        })
    }

    /// One section of study `i` ("" when empty; reads nothing then).
    pub fn section(&self, i: usize, section: Section) -> Result<String> {
        if self.section_len(i, section) == 0 {
            return Ok(String::new());
        }
        let t = self.text(i)?;
        Ok(match section {
            Section::Title => t.title,
            Section::Keywords => t.keywords,
            Section::Abstract => t.abstract_,
            Section::Body => t.body,
        })
    }

    /// Streams `(id, text)` of every study in corpus order, one study in memory at a time.
    pub fn texts(&self) -> impl Iterator<Item = Result<(&str, StudyText)>> + '_ {
        (0..self.len()).map(move |i| Ok((self.ids[i].as_str(), self.text(i)?)))
    }

    /// Streams `(id, section text)` of every study in corpus order (empty strings included, so
    /// rows stay aligned with [`Corpus::ids`]).
    pub fn section_texts(
        &self,
        section: Section,
    ) -> impl Iterator<Item = Result<(&str, String)>> + '_ {
        (0..self.len()).map(move |i| Ok((self.ids[i].as_str(), self.section(i, section)?)))
    }

    /// The ids and texts of the studies with any of `sections`: their non-empty sections joined
    /// by a blank line, in the order given (a study with none of them is left out).
    pub fn joined_sections(&self, sections: &[Section]) -> Result<(Vec<String>, Vec<String>)> {
        let (mut ids, mut texts) = (Vec::new(), Vec::new());
        for i in 0..self.len() {
            let mut parts = Vec::with_capacity(sections.len());
            for &s in sections {
                let t = self.section(i, s)?;
                if !t.trim().is_empty() {
                    parts.push(t);
                }
            }
            if !parts.is_empty() {
                ids.push(self.ids[i].clone());
                texts.push(parts.join("\n\n"));
            }
        }
        Ok((ids, texts))
    }

    /// Reads study `i` back whole.
    pub fn study(&self, i: usize) -> Result<Study> {
        let meta = self.meta(i)?;
        Ok(Study {
            study: self.study_of(i).to_string(),
            contrast: self.contrast_of(i).to_string(),
            source_space: meta.space,
            text: self.text(i)?,
            peaks: self.peaks_of(i)?,
            meta,
        })
    }

    /// Counts from the records (instant: no text or peak is read).
    pub fn stats(&self) -> CorpusStats {
        let mut s = CorpusStats {
            studies: self.len(),
            peaks: self.n_peaks(),
            file_bytes: self.file.metadata().map(|m| m.len()).unwrap_or(0),
            ..Default::default()
        };
        for (i, r) in self.recs.iter().enumerate() {
            let n = r.peak_count as usize;
            if n > 0 {
                s.studies_with_peaks += 1;
            }
            let c = match self.space(i) {
                Space::Mni => &mut s.mni,
                Space::Tal => &mut s.tal,
                Space::Unknown => &mut s.unknown,
            };
            c.studies += 1;
            c.peaks += n;
            for (k, sec) in Section::ALL.iter().enumerate() {
                let l = r.sections[k] as usize;
                if l > 0 {
                    s.sections.add(*sec, 1);
                    s.section_bytes.add(*sec, l);
                }
            }
        }
        s
    }
}
