//! Corpus layer: readers, the corpus file, tal2mni, NiMARE export, malformed inputs.
//! Fixtures: tests/fixtures/corpus (made and checked against NiMARE 0.22.1 by
//! make_corpus_fixtures.py). Tests that need ../shared/data skip when it is absent.

mod common;

use common::{fixtures, need_data, neurosynth_corpus, niclip, niclip_fails, tmpdir};
use niclip::corpus::{
    self, Corpus, Filter, Format, ImportOptions, Sample, SampleSize, Section, Space,
};
use niclip::Error;
use std::path::{Path, PathBuf};

fn pubget_dir() -> PathBuf {
    fixtures().join("corpus/pubget")
}

fn import(format: Format, inputs: &[PathBuf], out: &Path) -> niclip::Result<corpus::ImportReport> {
    corpus::import(format, inputs, out, &ImportOptions::default())
}

/// id, x, y, z rows of expected_pubget_peaks.csv (NiMARE's tal2mni for TAL studies).
fn expected_pubget_peaks() -> Vec<(String, [f64; 3])> {
    let text =
        std::fs::read_to_string(fixtures().join("corpus/expected_pubget_peaks.csv")).unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let v = |k: usize| f[k].parse::<f64>().unwrap();
            (f[0].to_string(), [v(2), v(3), v(4)])
        })
        .collect()
}

fn err_text(e: Error) -> String {
    e.to_string()
}

#[test]
fn pubget_fixture_counts_and_converted_peaks() {
    let out = tmpdir("pubget").join("p.corpus");
    let r = import(Format::Pubget, &[pubget_dir()], &out).unwrap();
    assert_eq!((r.studies, r.peaks), (6, 20));
    assert_eq!((r.tal.studies, r.tal.peaks), (2, 10));
    assert_eq!((r.mni.studies, r.mni.peaks), (2, 5));
    assert_eq!((r.unknown.studies, r.unknown.peaks), (2, 5));
    assert_eq!(r.studies_without_peaks, 1);
    assert_eq!(r.sections.abstract_, 6);
    assert_eq!(r.sections.body, 6);

    let c = Corpus::open(&out).unwrap();
    assert_eq!(c.len(), 6);
    assert_eq!(c.n_peaks(), 20);
    // Corpus order: ids sorted as strings.
    let mut sorted = c.ids().to_vec();
    sorted.sort();
    assert_eq!(c.ids(), &sorted[..]);
    assert!(c.ids().iter().all(|id| id.ends_with("-1")));

    let (peaks, skipped) = c.peaks_all().unwrap();
    assert_eq!((peaks.len(), skipped), (5, 1));
    assert!(!peaks.ids.contains(&"3221044-1".to_string()));

    // Converted coordinates against NiMARE's tal2mni, peak by peak in file order.
    let want = expected_pubget_peaks();
    assert_eq!(want.len(), 20);
    let mut ids: Vec<String> = want.iter().map(|w| w.0.clone()).collect();
    ids.dedup();
    let got = c.peaks_for(&ids).unwrap();
    let flat: Vec<[f64; 3]> = (0..got.len()).flat_map(|s| got.study(s).to_vec()).collect();
    assert_eq!(flat.len(), want.len());
    for ((id, w), g) in want.iter().zip(&flat) {
        for k in 0..3 {
            assert!((w[k] - g[k]).abs() < 1e-9, "{id}: {w:?} vs {g:?}");
        }
    }

    // Bare study id, metadata, texts.
    let tal = c.peaks_for(&["3026801".to_string()]).unwrap();
    assert_eq!(tal.ids, vec!["3026801-1".to_string()]);
    assert_eq!(tal.study(0).len(), 6);
    let i = c.find("3026801").unwrap();
    assert_eq!(c.space(i), Space::Tal);
    let m = c.meta(i).unwrap();
    assert_eq!(m.pmid.as_deref(), Some("21283580"));
    assert_eq!(m.pmcid.as_deref(), Some("3026801"));
    assert_eq!(m.doi.as_deref(), Some("10.1371/journal.pone.0015712"));
    assert_eq!(m.year, Some(2011));
    assert_eq!(m.journal.as_deref(), Some("PloS one"));
    assert_eq!(m.space, Space::Tal);
    let t = c.text(i).unwrap();
    assert!(t.title.starts_with("Individualized and clinically derived"));
    assert!(t.abstract_.starts_with("Objectives"));
    assert!(!t.body.is_empty());
    assert_eq!(m.title.as_deref(), Some(t.title.as_str()));
    assert_eq!(c.space(c.find("2743811").unwrap()), Space::Unknown);
    assert_eq!(c.peak_count(c.find("3221044-1").unwrap()), 0);

    // Streaming texts: one row per study, aligned with ids.
    let abs: Vec<(String, String)> = c
        .section_texts(Section::Abstract)
        .map(|r| r.map(|(id, t)| (id.to_string(), t)))
        .collect::<niclip::Result<_>>()
        .unwrap();
    assert_eq!(abs.len(), 6);
    assert!(abs
        .iter()
        .zip(c.ids())
        .all(|(a, id)| &a.0 == id && !a.1.is_empty()));
    assert_eq!(c.texts().count(), 6);
}

#[test]
fn unknown_study_id_is_a_usage_error() {
    let out = tmpdir("pubget-unknown").join("p.corpus");
    import(Format::Pubget, &[pubget_dir()], &out).unwrap();
    let c = Corpus::open(&out).unwrap();
    match c.peaks_for(&["3026801-1".into(), "12345".into()]) {
        Err(Error::Usage(m)) => assert!(m.contains("\"12345\""), "{m}"),
        other => panic!("expected a usage error, got {other:?}"),
    }
}

fn same_corpus(a: &Corpus, b: &Corpus) {
    assert_eq!(a.ids(), b.ids());
    assert_eq!(a.n_peaks(), b.n_peaks());
    for i in 0..a.len() {
        let (pa, pb) = (a.peaks_of(i).unwrap(), b.peaks_of(i).unwrap());
        assert_eq!(pa.len(), pb.len(), "{}", a.ids()[i]);
        for (p, q) in pa.iter().zip(&pb) {
            for k in 0..3 {
                assert!((p[k] - q[k]).abs() < 1e-6, "{}: {p:?} vs {q:?}", a.ids()[i]);
            }
        }
        assert_eq!(a.text(i).unwrap(), b.text(i).unwrap(), "{}", a.ids()[i]);
        let (ma, mb) = (a.meta(i).unwrap(), b.meta(i).unwrap());
        assert_eq!(
            (
                &ma.pmid,
                &ma.pmcid,
                &ma.doi,
                ma.year,
                &ma.journal,
                &ma.authors,
                ma.space
            ),
            (
                &mb.pmid,
                &mb.pmcid,
                &mb.doi,
                mb.year,
                &mb.journal,
                &mb.authors,
                mb.space
            ),
            "{}",
            a.ids()[i]
        );
    }
}

#[test]
fn nimare_export_round_trips() {
    let dir = tmpdir("roundtrip");
    let a = dir.join("a.corpus");
    import(Format::Pubget, &[pubget_dir()], &a).unwrap();
    let json = dir.join("a.json");
    niclip(&[
        "corpus",
        "export",
        "--format",
        "nimare",
        a.to_str().unwrap(),
        "--out",
        json.to_str().unwrap(),
    ]);
    let b = dir.join("b.corpus");
    let r = import(Format::Nimare, std::slice::from_ref(&json), &b).unwrap();
    // Re-read coordinates are MNI already: nothing converted twice.
    assert_eq!(r.tal.studies, 0);
    let (ca, cb) = (Corpus::open(&a).unwrap(), Corpus::open(&b).unwrap());
    same_corpus(&ca, &cb);
    // The study without peaks has no coords (NiMARE 0.22.1 fails on empty lists).
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(v["3221044"]["contrasts"]["1"].get("coords").is_none());
    assert_eq!(
        v["3026801"]["contrasts"]["1"]["metadata"]["space_original"],
        "TAL"
    );
    assert_eq!(v["3026801"]["contrasts"]["1"]["coords"]["space"], "MNI");
}

#[test]
fn uncompressed_texts_read_the_same() {
    let dir = tmpdir("codec");
    let (a, b) = (dir.join("a.corpus"), dir.join("b.corpus"));
    import(Format::Pubget, &[pubget_dir()], &a).unwrap();
    corpus::import(
        Format::Pubget,
        &[pubget_dir()],
        &b,
        &ImportOptions {
            compress_text: false,
            ..Default::default()
        },
    )
    .unwrap();
    same_corpus(&Corpus::open(&a).unwrap(), &Corpus::open(&b).unwrap());
    assert!(std::fs::metadata(&a).unwrap().len() < std::fs::metadata(&b).unwrap().len());
}

#[test]
fn cli_import_info_export() {
    let dir = tmpdir("cli");
    let out = dir.join("p.corpus");
    let report = niclip(&[
        "corpus",
        "import",
        "--format",
        "pubget",
        pubget_dir().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        report.contains("imported 6 studies with 20 peaks"),
        "{report}"
    );
    assert!(report.contains("converted to MNI"), "{report}");
    assert!(report.contains("studies without peaks: 1"), "{report}");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_niclip"))
        .args(["corpus", "info", out.to_str().unwrap()])
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&o.stdout);
    assert!(info.contains("studies    6"), "{info}");
    assert!(info.contains("TAL      2 studies, 10 peaks"), "{info}");
    assert!(info.contains("abstract 6"), "{info}");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_niclip"))
        .args(["corpus", "info", "--json", out.to_str().unwrap()])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["stats"]["peaks"], 20);
    assert_eq!(v["import"]["tal"]["peaks"], 10);
}

/// `niclip corpus info X | head` panicked in println! on the closed pipe; it now ends as
/// other Unix tools do, by SIGPIPE, saying nothing.
#[cfg(unix)]
#[test]
fn a_reader_that_stops_early_causes_no_panic() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tmpdir("cli-pipe");
    let out = dir.join("p.corpus");
    let (p, o) = (
        pubget_dir().display().to_string(),
        out.display().to_string(),
    );
    niclip(&["corpus", "import", "--format", "pubget", &p, "--out", &o]);
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_niclip"))
        .args(["corpus", "info", &o])
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        run.status.signal(),
        Some(13),
        "ended by SIGPIPE: {:?}",
        run.status
    );
}

/// Outputs are written to a temporary sibling renamed over the target: over a FIFO, socket or
/// device that replaced it (`corpus export --out /dev/null` left a regular file at /dev/null).
/// A target that exists and is not a regular file is refused, naming it, before any write.
#[cfg(unix)]
#[test]
fn outputs_onto_special_files_are_refused() {
    use niclip::io::write_atomic;
    use std::io::Write;
    use std::os::unix::fs::FileTypeExt;
    let dir = tmpdir("special-out");
    let write = |p: &Path| write_atomic(p, |w| w.write_all(b"x").map_err(|e| Error::io(p, e)));
    let sub = dir.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    let sock = dir.join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let fifo = dir.join("fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    let has_fifo = made.as_ref().is_ok_and(|s| s.success());
    if !has_fifo {
        let line = format!(
            "SKIPPED corpus::outputs_onto_special_files_are_refused (its FIFO case): needs \
             mkfifo ({made:?})\n"
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
    let mut targets = vec![sock.clone(), sub.clone()];
    if has_fifo {
        targets.insert(0, fifo.clone());
    }
    for t in &targets {
        let e = err_text(write(t).unwrap_err());
        assert!(
            e.contains(&t.display().to_string()) && e.contains("not a regular file"),
            "{e}"
        );
    }
    if has_fifo {
        // Through the CLI too: the export is refused, and the FIFO stays a FIFO.
        let corpus = dir.join("p.corpus");
        import(Format::Pubget, &[pubget_dir()], &corpus).unwrap();
        let err = niclip_fails(&[
            "corpus",
            "export",
            "--format",
            "nimare",
            corpus.to_str().unwrap(),
            "--out",
            fifo.to_str().unwrap(),
        ]);
        assert!(err.contains(fifo.to_str().unwrap()), "{err}");
        let kind = std::fs::symlink_metadata(&fifo).unwrap().file_type();
        assert!(kind.is_fifo(), "the FIFO was replaced: {kind:?}");
    }
    let kind = std::fs::symlink_metadata(&sock).unwrap().file_type();
    assert!(kind.is_socket(), "the socket was replaced: {kind:?}");
    assert_eq!(std::fs::read_dir(&sub).unwrap().count(), 0);
    // Nothing written beside them either.
    for e in std::fs::read_dir(&dir).unwrap() {
        let name = e.unwrap().file_name();
        assert!(!name.to_string_lossy().contains(".tmp-"), "{name:?} left");
    }
    // A regular file is still replaced.
    let file = dir.join("file.txt");
    std::fs::write(&file, "old").unwrap();
    write(&file).unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
    std::fs::remove_dir_all(&dir).ok();
}

// ---------------------------------------------------------------------------------------------
// Malformed inputs

/// A copy of the pubget fixture with one file replaced.
fn pubget_with(name: &str, file: &str, content: &str) -> PathBuf {
    let dir = tmpdir(name).join("pubget");
    std::fs::create_dir_all(&dir).unwrap();
    for f in [
        "metadata.csv",
        "coordinates.csv",
        "coordinate_space.csv",
        "text.csv",
    ] {
        std::fs::copy(pubget_dir().join(f), dir.join(f)).unwrap();
    }
    std::fs::write(dir.join(file), content).unwrap();
    dir
}

fn import_err(format: Format, input: &Path) -> String {
    let out = input.parent().unwrap().join("x.corpus");
    let e = err_text(import(format, &[input.to_path_buf()], &out).unwrap_err());
    assert!(
        !out.exists(),
        "a failed import must not leave a corpus file"
    );
    e
}

#[test]
fn missing_column_names_file_and_columns() {
    let dir = pubget_with(
        "missing-col",
        "coordinates.csv",
        "pmcid,table_id,x,y\n3026801,T1,1,2\n",
    );
    let e = import_err(Format::Pubget, &dir);
    assert!(e.contains("coordinates.csv"), "{e}");
    assert!(e.contains("missing column z"), "{e}");
    assert!(e.contains("pmcid, x, y, z"), "{e}");
}

#[test]
fn non_numeric_coordinate_names_line() {
    let dir = pubget_with(
        "nan-coord",
        "coordinates.csv",
        "pmcid,table_id,table_label,x,y,z\n3026801,T1,Table 1,1,2,3\n3026801,T1,Table 1,abc,2,3\n",
    );
    let e = import_err(Format::Pubget, &dir);
    assert!(
        e.contains("coordinates.csv: line 3: x is \"abc\", not a number"),
        "{e}"
    );
    let dir = pubget_with(
        "empty-coord",
        "coordinates.csv",
        "pmcid,table_id,table_label,x,y,z\n3026801,T1,Table 1,1,,3\n",
    );
    let e = import_err(Format::Pubget, &dir);
    assert!(e.contains("line 2: y is empty"), "{e}");
}

/// A coordinate beyond ±1000 mm is no brain's (it is a typo or garbage); imported, 1e20 mm
/// snapped to a saturated voxel index downstream. Refused naming the file and the peak.
#[test]
fn coordinates_beyond_1000_mm_are_refused() {
    let dir = pubget_with(
        "far-coord",
        "coordinates.csv",
        "pmcid,table_id,table_label,x,y,z\n3026801,T1,Table 1,1,2,3\n3026801,T1,Table 1,1e20,2,3\n",
    );
    let e = import_err(Format::Pubget, &dir);
    assert!(
        e.contains("coordinates.csv: line 3: x is 1e20") && e.contains("1000 mm"),
        "{e}"
    );
    let dir = tmpdir("far-coord-json");
    let f = dir.join("far.json");
    std::fs::write(&f, r#"{"a": {"contrasts": {"1": {"coords": {"space": "MNI", "x": [1, 2], "y": [2, -1001], "z": [3, 3]}}}}}"#).unwrap();
    let e = import_err(Format::Nimare, &f);
    assert!(
        e.contains("far.json: study \"a\" contrast \"1\": coords.y[1] is -1001")
            && e.contains("1000 mm"),
        "{e}"
    );
    // The bound itself is kept.
    std::fs::write(&f, r#"{"a": {"contrasts": {"1": {"coords": {"space": "MNI", "x": [1000], "y": [-1000], "z": [3]}}}}}"#).unwrap();
    import(
        Format::Nimare,
        std::slice::from_ref(&f),
        &dir.join("ok.corpus"),
    )
    .unwrap();
}

#[test]
fn duplicate_ids_are_errors() {
    let meta = std::fs::read_to_string(pubget_dir().join("metadata.csv")).unwrap();
    let second = meta.lines().nth(1).unwrap();
    let dir = pubget_with("dup-meta", "metadata.csv", &format!("{meta}{second}\n"));
    let e = import_err(Format::Pubget, &dir);
    assert!(
        e.contains("metadata.csv: line 8: pmcid 3026801 already appears on line 2"),
        "{e}"
    );

    let dir = tmpdir("dup-ns");
    std::fs::write(
        dir.join("x_metadata.tsv"),
        "id\tspace\ttitle\n1\tMNI\ta\n2\tTAL\tb\n1\tMNI\tc\n",
    )
    .unwrap();
    std::fs::write(dir.join("x_coordinates.tsv"), "id\tx\ty\tz\n1\t1\t2\t3\n").unwrap();
    let e = import_err(Format::Neurosynth, &dir.join("."));
    assert!(
        e.contains("x_metadata.tsv: line 4: id 1 already appears on line 2"),
        "{e}"
    );

    let dir = tmpdir("dup-json");
    let f = dir.join("d.json");
    std::fs::write(
        &f,
        r#"{"a": {"contrasts": {"1": {"coords": {"space": "MNI", "x": [1], "y": [2], "z": [3]}}}},
            "a": {"contrasts": {}}}"#,
    )
    .unwrap();
    let e = import_err(Format::Nimare, &f);
    assert!(
        e.contains("d.json") && e.contains("duplicate id \"a\"") && e.contains("line 2"),
        "{e}"
    );
}

#[test]
fn unknown_space_names_line() {
    let dir = pubget_with(
        "bad-space",
        "coordinate_space.csv",
        "pmcid,coordinate_space\n3026801,TAL\n2607027,banana\n",
    );
    let e = import_err(Format::Pubget, &dir);
    assert!(
        e.contains("coordinate_space.csv: line 3: unknown space \"banana\""),
        "{e}"
    );
    assert!(e.contains("use MNI, TAL or UNKNOWN"), "{e}");

    let dir = tmpdir("bad-space-json");
    let f = dir.join("s.json");
    std::fs::write(&f, r#"{"a": {"contrasts": {"1": {"coords": {"space": "XYZ", "x": [1], "y": [2], "z": [3]}}}}}"#).unwrap();
    let e = import_err(Format::Nimare, &f);
    assert!(
        e.contains("s.json") && e.contains("unknown coords.space \"XYZ\""),
        "{e}"
    );
}

#[test]
fn bad_json_coordinates_name_the_study() {
    let dir = tmpdir("json-coord");
    let f = dir.join("c.json");
    std::fs::write(&f, r#"{"a": {"contrasts": {"1": {"coords": {"space": "MNI", "x": [1, "q"], "y": [2, 2], "z": [3, 3]}}}}}"#).unwrap();
    let e = import_err(Format::Nimare, &f);
    assert!(
        e.contains("c.json: study \"a\" contrast \"1\": coords.x[1] is \"q\""),
        "{e}"
    );
    std::fs::write(
        &f,
        r#"{"a": {"contrasts": {"1": {"coords": {"space": "MNI", "x": [1], "y": [], "z": [3]}}}}}"#,
    )
    .unwrap();
    let e = import_err(Format::Nimare, &f);
    assert!(e.contains("1, 0, 1 values"), "{e}");
    std::fs::write(&f, "{\"a\": {\"contrasts\": \n [1]}}").unwrap();
    let e = import_err(Format::Nimare, &f);
    assert!(e.contains("c.json") && e.contains("line 2"), "{e}");
}

#[test]
fn unreadable_gzip_is_reported() {
    let dir = tmpdir("gzip");
    std::fs::write(dir.join("x_metadata.tsv"), "id\tspace\n1\tMNI\n").unwrap();
    // Not gzip at all.
    std::fs::write(
        dir.join("x_coordinates.tsv.gz"),
        "id\tx\ty\tz\n1\t1\t2\t3\n",
    )
    .unwrap();
    let e = import_err(Format::Neurosynth, &dir.join("."));
    assert!(
        e.contains("x_coordinates.tsv.gz: named .gz but not gzip data"),
        "{e}"
    );
    // Gzip, truncated.
    let mut gz = Vec::new();
    {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(&mut gz, flate2::Compression::default());
        writeln!(enc, "id\tx\ty\tz").unwrap();
        for i in 0..2000 {
            writeln!(enc, "1\t{i}\t2\t3").unwrap();
        }
        enc.finish().unwrap();
    }
    let mut body = b"".to_vec();
    body.extend_from_slice(&gz[..gz.len() / 2]);
    std::fs::write(dir.join("x_coordinates.tsv.gz"), &body).unwrap();
    let e = import_err(Format::Neurosynth, &dir.join("."));
    assert!(
        e.contains("x_coordinates.tsv.gz") && e.contains("gzip -t"),
        "{e}"
    );
}

/// A broken metadata file used to be blamed on the coordinates ("c_coordinates.tsv: no study
/// found"), or a metadata file of another release gave a corpus without a single peak.
#[test]
fn a_wrong_metadata_file_is_the_one_named() {
    let dir = tmpdir("wrong-metadata").join("ns");
    std::fs::create_dir_all(&dir).unwrap();
    let coords = "id\tx\ty\tz\n1\t-38\t34\t20\n2\t1\t1\t1\n";
    std::fs::write(dir.join("c_coordinates.tsv"), coords).unwrap();
    for (metadata, says) in [
        ("id\tspace\n", "no rows below the header"),
        (
            "id\tspace\n7\tMNI\n8\tMNI\n",
            "none of the 2 coordinate rows of",
        ),
    ] {
        std::fs::write(dir.join("m_metadata.tsv"), metadata).unwrap();
        let e = import_err(Format::Neurosynth, &dir);
        assert!(e.contains("m_metadata.tsv") && e.contains(says), "{e}");
    }
}

#[test]
fn metadata_without_rows_names_the_file() {
    // Found by tests/fuzz.rs (issue 20): a metadata file cut inside its header gave "no study
    // found" naming only the folder.
    let dir = tmpdir("no-rows");
    std::fs::write(dir.join("x_metadata.tsv"), "id\tspace\tdoi\ttit").unwrap();
    std::fs::write(dir.join("x_coordinates.tsv"), "id\tx\ty\tz\n1\t1\t2\t3\n").unwrap();
    let e = import_err(Format::Neurosynth, &dir.join("."));
    assert!(e.contains("x_metadata.tsv") && e.contains("no rows"), "{e}");
    let dir = pubget_with(
        "no-rows-pubget",
        "metadata.csv",
        "pmcid,pmid,doi,title,journal,publilic",
    );
    let e = import_err(Format::Pubget, &dir);
    assert!(e.contains("metadata.csv") && e.contains("no rows"), "{e}");
}

#[test]
fn coordinates_of_unknown_ids_are_counted_not_dropped() {
    let dir = tmpdir("orphans");
    std::fs::write(
        dir.join("x_metadata.tsv"),
        "id\tspace\ttitle\n1\tTAL\tone\n2\tMNI\ttwo\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("x_coordinates.tsv"),
        "id\tx\ty\tz\n1\t-38\t34\t20\n9\t1\t1\t1\n9\t2\t2\t2\n",
    )
    .unwrap();
    let out = dir.join("o.corpus");
    let r = import(Format::Neurosynth, std::slice::from_ref(&dir), &out).unwrap();
    assert_eq!((r.studies, r.peaks, r.studies_without_peaks), (2, 1, 1));
    assert_eq!(r.notice_count("not in the metadata"), 2);
    assert!(r.to_string().contains("x_coordinates.tsv:3: id 9"), "{r}");
    let c = Corpus::open(&out).unwrap();
    let p = c.peaks_of(c.find("1").unwrap()).unwrap();
    let want = corpus::tal2mni([-38.0, 34.0, 20.0]);
    assert_eq!(p, vec![want]);
    // NiMARE: tal2mni([[-38, 34, 20]]) = [-39.49807018, 38.59004181, 15.45372921]
    assert!((want[0] + 39.49807018).abs() < 1e-8 && (want[2] - 15.45372921).abs() < 1e-8);
}

#[test]
fn not_a_corpus_and_truncated_corpus() {
    let dir = tmpdir("notcorpus");
    let f = dir.join("x.corpus");
    std::fs::write(&f, "hello, this is not a corpus at all, just some text").unwrap();
    let e = err_text(Corpus::open(&f).err().unwrap());
    assert!(
        e.contains("x.corpus: not a niclip corpus") && e.contains("niclip corpus import"),
        "{e}"
    );
    let stderr = niclip_fails(&["corpus", "info", f.to_str().unwrap()]);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("x.corpus"),
        "{stderr}"
    );

    let good = dir.join("good.corpus");
    import(Format::Pubget, &[pubget_dir()], &good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.join("cut.corpus");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let e = err_text(Corpus::open(&cut).err().unwrap());
    assert!(e.contains("cut.corpus: corrupt niclip corpus"), "{e}");
}

/// A study record claiming ~4 GB of text is an error naming the file, not an abort on a 4 GB
/// allocation (found by tests/fuzz.rs with NICLIP_FUZZ_SEED=7, issue 20; aborts before the fix).
#[test]
fn corpus_record_with_huge_section_lengths() {
    // Run again in a child under a 1 GiB data limit, as the fuzz suite runs: without one, a
    // 4 GB Vec::with_capacity only reserves address space and the bug goes unseen.
    if std::env::var_os("NICLIP_TEST_LIMITED").is_none() {
        let name = "corpus_record_with_huge_section_lengths";
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--nocapture"])
            .env("NICLIP_TEST_LIMITED", "1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: {err}", out.status);
        return;
    }
    let lim = libc::rlimit {
        rlim_cur: 1 << 30,
        rlim_max: 1 << 30,
    };
    // SAFETY: setrlimit reads the struct; it only lowers this child process's own limit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_DATA, &lim) }, 0);
    let dir = tmpdir("huge-sections");
    let f = dir.join("huge.corpus");
    import(Format::Pubget, &[pubget_dir()], &f).unwrap();
    let mut bytes = std::fs::read(&f).unwrap();
    // The high byte of the first record's abstract length (record bytes 40..44; the fuzz
    // reproducer), found through the trailer's table of contents.
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap()) as usize;
    let (toc_off, toc_len) = (u64_at(bytes.len() - 24), u64_at(bytes.len() - 16));
    let toc: serde_json::Value =
        serde_json::from_slice(&bytes[toc_off..toc_off + toc_len]).unwrap();
    let records = toc["blocks"]["records"][0].as_u64().unwrap() as usize;
    assert_eq!(bytes[records + 43], 0, "an abstract under 16 MB");
    bytes[records + 43] = 0xff;
    std::fs::write(&f, bytes).unwrap();
    let c = Corpus::open(&f).unwrap();
    let e = (0..c.len())
        .find_map(|i| c.text(i).err())
        .expect("a corrupt record");
    let e = err_text(e);
    assert!(e.contains("huge.corpus: corrupt niclip corpus"), "{e}");
}

#[test]
fn jsonl_join_fills_missing_sections() {
    let dir = tmpdir("jsonl");
    std::fs::write(
        dir.join("x_metadata.tsv"),
        "id\tspace\ttitle\n11\tMNI\tOne\n22\tMNI\t\n33\tMNI\tThree\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("x_coordinates.tsv"),
        "id\tx\ty\tz\n11\t1\t2\t3\n22\t1\t2\t3\n",
    )
    .unwrap();
    let jsonl = dir.join("t.jsonl");
    std::fs::write(
        &jsonl,
        concat!(
            r#"{"pmid": 11.0, "pmcid": null, "title": "Other", "abstract": "A11"}"#, "\n",
            r#"{"pmid": "11", "pmcid": "PMC5", "text": "x\n\n# Title\n\nT\n\n# Keywords\n\nk\n\n# Abstract\nA\n\n# Body\nB11\n"}"#, "\n",
            "\n",
            r#"{"pmid": 22, "title": "Two", "abstract": "", "body": "B22"}"#, "\n",
            r#"{"pmid": null, "abstract": "orphan"}"#, "\n",
            r#"{"pmid": 99, "abstract": "not in corpus"}"#, "\n",
        ),
    )
    .unwrap();
    let out = dir.join("j.corpus");
    let r = corpus::import(
        Format::Neurosynth,
        &[dir.join("x_metadata.tsv"), dir.join("x_coordinates.tsv")],
        &out,
        &ImportOptions {
            text_jsonl: Some(jsonl.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    let j = r.join.clone().unwrap();
    assert_eq!(
        (j.records, j.records_without_id, j.records_matched),
        (5, 1, 3)
    );
    assert_eq!((j.studies_matched, j.studies_multiple_records), (2, 1));
    assert_eq!(
        (
            j.gained.title,
            j.gained.keywords,
            j.gained.abstract_,
            j.gained.body
        ),
        (1, 1, 1, 2)
    );
    assert_eq!(r.studies_without_peaks, 1);
    let c = Corpus::open(&out).unwrap();
    let t = c.text(c.find("11").unwrap()).unwrap();
    // The existing title is kept; the full-text record comes first.
    assert_eq!(
        (
            t.title.as_str(),
            t.keywords.as_str(),
            t.abstract_.as_str(),
            t.body.as_str()
        ),
        ("One", "k", "A", "B11")
    );
    let t = c.text(c.find("22").unwrap()).unwrap();
    assert_eq!((t.title.as_str(), t.body.as_str()), ("Two", "B22"));

    std::fs::write(&jsonl, "{\"pmid\": 1}\nnot json\n").unwrap();
    let e = err_text(
        corpus::import(
            Format::Neurosynth,
            &[dir.join("x_metadata.tsv"), dir.join("x_coordinates.tsv")],
            &dir.join("k.corpus"),
            &ImportOptions {
                text_jsonl: Some(jsonl),
                ..Default::default()
            },
        )
        .unwrap_err(),
    );
    assert!(e.contains("t.jsonl: line 2: not a JSON object"), "{e}");
}

#[test]
fn merge_keeps_first_peaks_and_fills_sections() {
    let dir = tmpdir("merge");
    let write = |name: &str, meta: &str, coords: &str, jsonl: Option<&str>| {
        std::fs::write(dir.join(format!("{name}_metadata.tsv")), meta).unwrap();
        std::fs::write(dir.join(format!("{name}_coordinates.tsv")), coords).unwrap();
        let text_jsonl = jsonl.map(|j| {
            let p = dir.join(format!("{name}.jsonl"));
            std::fs::write(&p, j).unwrap();
            p
        });
        let out = dir.join(format!("{name}.corpus"));
        corpus::import(
            Format::Neurosynth,
            &[
                dir.join(format!("{name}_metadata.tsv")),
                dir.join(format!("{name}_coordinates.tsv")),
            ],
            &out,
            &ImportOptions {
                text_jsonl,
                ..Default::default()
            },
        )
        .unwrap();
        out
    };
    let a = write(
        "a",
        "id\tspace\ttitle\n11\tMNI\tA eleven\n22\tMNI\tA twenty-two\n",
        "id\tx\ty\tz\n11\t1\t2\t3\n22\t4\t5\t6\n",
        None,
    );
    let b = write(
        "b",
        "id\tspace\ttitle\n22\tMNI\tB twenty-two\n33\tMNI\tB thirty-three\n",
        "id\tx\ty\tz\n22\t-4\t-5\t-6\n22\t7\t8\t9\n33\t0\t0\t0\n",
        Some("{\"pmid\": 22, \"abstract\": \"abstract of 22\"}\n"),
    );
    let out = dir.join("ab.corpus");
    let r = corpus::merge(&[a.clone(), b.clone()], &out, true).unwrap();
    assert_eq!(
        (r.per_input.clone(), r.shared, r.sections_filled),
        (vec![2, 2], 1, 1)
    );
    assert_eq!((r.import.studies, r.import.peaks), (3, 3));
    let c = Corpus::open(&out).unwrap();
    assert_eq!(c.ids(), ["11-1", "22-1", "33-1"]);
    let i = c.find("22-1").unwrap();
    // The first input's peaks and title, the second's abstract.
    assert_eq!(c.peaks_of(i).unwrap(), vec![[4.0, 5.0, 6.0]]);
    let t = c.text(i).unwrap();
    assert_eq!(
        (t.title.as_str(), t.abstract_.as_str()),
        ("A twenty-two", "abstract of 22")
    );

    let e = err_text(corpus::merge(&[a.clone(), out.clone()], &out, true).unwrap_err());
    assert!(e.contains("also an input"), "{e}");
    let e = err_text(
        corpus::merge(
            &[a, dir.join("a_metadata.tsv")],
            &dir.join("x.corpus"),
            true,
        )
        .unwrap_err(),
    );
    assert!(
        e.contains("a_metadata.tsv") && e.contains("corpus import"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// corpus filter and corpus sample

/// The pubget fixture imported into a fresh folder: (folder, corpus).
fn pubget_corpus(name: &str) -> (PathBuf, PathBuf) {
    let dir = tmpdir(name);
    let p = dir.join("p.corpus");
    import(Format::Pubget, &[pubget_dir()], &p).unwrap();
    (dir, p)
}

/// The subset at `out` holds exactly the studies of `c` at `want`, in order, each equal to the
/// original (peaks, texts, metadata).
fn same_studies(c: &Corpus, want: &[usize], out: &Path) {
    let o = Corpus::open(out).unwrap();
    let ids: Vec<&String> = want.iter().map(|&i| &c.ids()[i]).collect();
    assert_eq!(o.ids().iter().collect::<Vec<_>>(), ids);
    for (j, &i) in want.iter().enumerate() {
        assert_eq!(o.study(j).unwrap(), c.study(i).unwrap(), "{}", c.ids()[i]);
    }
}

/// Positions of `c` for which `pass` holds: the filter's expected result, computed from the
/// metadata and texts rather than the records.
fn brute(c: &Corpus, pass: impl Fn(&niclip::corpus::Study) -> bool) -> Vec<usize> {
    (0..c.len())
        .filter(|&i| pass(&c.study(i).unwrap()))
        .collect()
}

#[test]
fn filter_keeps_studies_passing_each_condition() {
    let (dir, p) = pubget_corpus("filter-conditions");
    let c = Corpus::open(&p).unwrap();
    let out = dir.join("f.corpus");
    let run = |f: &Filter| corpus::filter(&p, &out, f, true).unwrap();

    let r = run(&Filter {
        with_peaks: true,
        ..Default::default()
    });
    let want = brute(&c, |s| !s.peaks.is_empty());
    assert_eq!((r.total, r.kept, r.peaks), (6, 5, 20));
    assert!(!want.contains(&c.find("3221044-1").unwrap()));
    same_studies(&c, &want, &out);

    let r = run(&Filter {
        spaces: vec![Space::Tal, Space::Unknown],
        ..Default::default()
    });
    let want = brute(&c, |s| s.meta.space != Space::Mni);
    assert_eq!((r.kept, r.peaks), (4, 15));
    same_studies(&c, &want, &out);
    assert_eq!(Corpus::open(&out).unwrap().stats().mni.studies, 0);

    let years: Vec<i32> = (0..c.len())
        .filter_map(|i| c.meta(i).unwrap().year)
        .collect();
    let mid = years[years.len() / 2];
    let r = run(&Filter {
        year_min: Some(mid),
        year_max: Some(2011),
        ..Default::default()
    });
    let want = brute(&c, |s| s.meta.year.is_some_and(|y| y >= mid && y <= 2011));
    assert!(!want.is_empty() && want.len() < c.len(), "{years:?}");
    assert_eq!(r.kept, want.len());
    same_studies(&c, &want, &out);

    for sec in Section::ALL {
        let want = brute(&c, |s| !s.text.get(sec).is_empty());
        let r = run(&Filter {
            with: vec![sec],
            ..Default::default()
        });
        assert_eq!(r.kept, want.len(), "{sec}");
        same_studies(&c, &want, &out);
    }

    // Conditions together: each removes from what the earlier ones left, and says how many.
    let r = run(&Filter {
        spaces: vec![Space::Tal, Space::Unknown],
        with_peaks: true,
        with: vec![Section::Abstract],
        ..Default::default()
    });
    let want = brute(&c, |s| s.meta.space != Space::Mni && !s.peaks.is_empty());
    same_studies(&c, &want, &out);
    let removed: Vec<(String, usize)> = r
        .removed
        .iter()
        .map(|x| (x.condition.clone(), x.count))
        .collect();
    assert_eq!(
        removed,
        [
            ("--space TAL,UNKNOWN".to_string(), 2),
            ("--with-peaks".to_string(), 1),
            ("--with abstract".to_string(), 0)
        ]
    );
    assert_eq!(
        r.to_string(),
        "kept 3 of 6 studies (15 peaks); removed 2 by --space TAL,UNKNOWN, 1 by --with-peaks, \
         0 by --with abstract"
    );
    // The subset's stored report names its input and what each condition removed.
    let o = Corpus::open(&out).unwrap();
    let stored = o.import_report().unwrap();
    assert_eq!((stored.format.as_str(), stored.studies), ("filter", 3));
    assert_eq!(stored.notice_count("--with-peaks"), 1);
}

#[test]
fn filter_by_id_files() {
    let (dir, p) = pubget_corpus("filter-ids");
    let c = Corpus::open(&p).unwrap();
    let out = dir.join("f.corpus");
    let ids = dir.join("ids.txt");
    // A bare study id, a full id, a comment, a blank line, a repeat.
    std::fs::write(
        &ids,
        "# held-out studies\n3026801\n\n  3221044-1  \n3026801-1\n",
    )
    .unwrap();
    let keep = Filter {
        ids: Some(ids.clone()),
        ..Default::default()
    };
    let r = corpus::filter(&p, &out, &keep, true).unwrap();
    assert_eq!((r.kept, r.peaks), (2, 6));
    let mut want = vec![c.find("3026801").unwrap(), c.find("3221044-1").unwrap()];
    want.sort();
    same_studies(&c, &want, &out);

    let drop = Filter {
        exclude_ids: Some(ids.clone()),
        ..Default::default()
    };
    let r = corpus::filter(&p, &out, &drop, true).unwrap();
    assert_eq!((r.kept, r.peaks), (4, 14));
    let rest: Vec<usize> = (0..c.len()).filter(|i| !want.contains(i)).collect();
    same_studies(&c, &rest, &out);

    // An unknown id names the file and line, for --ids and --exclude-ids alike.
    std::fs::write(&ids, "3026801\n# fine\n999999-1\n").unwrap();
    for f in [&keep, &drop] {
        let e = err_text(corpus::filter(&p, &out, f, true).unwrap_err());
        assert!(
            e.contains("ids.txt: line 3") && e.contains("\"999999-1\""),
            "{e}"
        );
    }
}

#[test]
fn filter_refuses_empty_results_and_its_own_input() {
    let (dir, p) = pubget_corpus("filter-errors");
    let out = dir.join("f.corpus");
    let f = Filter {
        with_peaks: true,
        year_min: Some(2100),
        ..Default::default()
    };
    let e = err_text(corpus::filter(&p, &out, &f, true).unwrap_err());
    assert!(
        e.contains("--year-min 2100 removed the last 6") && e.contains("nothing written"),
        "{e}"
    );
    assert!(!out.exists());

    let f = Filter {
        with_peaks: true,
        ..Default::default()
    };
    // The input itself, also spelt another way.
    for same in [p.clone(), dir.join(".").join("p.corpus")] {
        let e = err_text(corpus::filter(&p, &same, &f, true).unwrap_err());
        assert!(e.contains("is the input corpus"), "{e}");
    }
    let s = Sample {
        size: SampleSize::Count(2),
        seed: 0,
        with_peaks: false,
    };
    let e = err_text(corpus::sample(&p, &p, &s, true).unwrap_err());
    assert!(e.contains("is the input corpus"), "{e}");
    assert_eq!(Corpus::open(&p).unwrap().len(), 6);
}

#[test]
fn sample_is_seeded_exact_and_in_corpus_order() {
    let (dir, p) = pubget_corpus("sample");
    let c = Corpus::open(&p).unwrap();
    let out = dir.join("s.corpus");
    let draw = |n: usize, seed: u64| -> Vec<String> {
        let s = Sample {
            size: SampleSize::Count(n),
            seed,
            with_peaks: false,
        };
        let r = corpus::sample(&p, &out, &s, true).unwrap();
        assert_eq!(r.kept, n);
        let o = Corpus::open(&out).unwrap();
        let want: Vec<usize> = o.ids().iter().map(|id| c.find(id).unwrap()).collect();
        assert!(want.windows(2).all(|w| w[0] < w[1]), "corpus order");
        same_studies(&c, &want, &out);
        o.ids().to_vec()
    };
    assert_eq!(draw(3, 7), draw(3, 7));
    let others: Vec<Vec<String>> = (0..8).map(|seed| draw(3, seed)).collect();
    assert!(others.iter().any(|o| *o != others[0]), "{others:?}");
    // For one seed, a smaller sample is a subset of a larger one; the whole corpus is all.
    let (small, large) = (draw(2, 5), draw(4, 5));
    assert!(small.iter().all(|id| large.contains(id)));
    assert_eq!(draw(6, 5), c.ids());

    let s = Sample {
        size: SampleSize::Fraction(0.5),
        seed: 1,
        with_peaks: true,
    };
    let r = corpus::sample(&p, &out, &s, true).unwrap();
    // Half of the 5 studies with peaks, rounded.
    assert_eq!(r.kept, 3);
    let o = Corpus::open(&out).unwrap();
    assert!((0..o.len()).all(|i| o.peak_count(i) > 0));

    for (size, what) in [
        (SampleSize::Count(7), "asks for 7 studies"),
        (SampleSize::Count(0), "asks for 0 studies"),
        (SampleSize::Fraction(1.5), "--fraction 1.5 is not in (0, 1]"),
    ] {
        let s = Sample {
            size,
            seed: 0,
            with_peaks: false,
        };
        let e = err_text(corpus::sample(&p, &dir.join("x.corpus"), &s, true).unwrap_err());
        assert!(e.contains(what), "{e}");
    }
    assert!(!dir.join("x.corpus").exists());
}

#[test]
fn cli_filter_and_sample() {
    let (dir, p) = pubget_corpus("cli-subset");
    let (p, f, s) = (
        p.to_str().unwrap(),
        dir.join("f.corpus"),
        dir.join("s.corpus"),
    );
    let ids = dir.join("ids.txt");
    std::fs::write(&ids, "3026801\n2743811\n").unwrap();
    let report = niclip(&[
        "corpus",
        "filter",
        p,
        "--out",
        f.to_str().unwrap(),
        "--ids",
        ids.to_str().unwrap(),
        "--space",
        "tal",
        "--with",
        "abstract",
        "--with",
        "body",
    ]);
    assert!(
        report.contains("kept 1 of 6 studies (6 peaks); removed 4 by --ids")
            && report.contains("1 by --space TAL"),
        "{report}"
    );
    assert_eq!(Corpus::open(&f).unwrap().ids(), ["3026801-1"]);
    let e = niclip_fails(&[
        "corpus",
        "filter",
        p,
        "--out",
        f.to_str().unwrap(),
        "--space",
        "ICBM",
    ]);
    assert!(e.contains("use MNI, TAL or UNKNOWN"), "{e}");

    let sample = |seed: &str| {
        let report = niclip(&[
            "corpus",
            "sample",
            p,
            "--out",
            s.to_str().unwrap(),
            "--n",
            "4",
            "--seed",
            seed,
        ]);
        assert!(report.contains("kept 4 of 6 studies"), "{report}");
        Corpus::open(&s).unwrap().ids().to_vec()
    };
    assert_eq!(sample("3"), sample("3"));
    let e = niclip_fails(&["corpus", "sample", p, "--out", s.to_str().unwrap()]);
    assert!(e.contains("--n"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Acceptance on ../shared/data

#[test]
fn neurosynth_acceptance() {
    let Some(data) = need_data() else {
        return;
    };
    let dir = tmpdir("ns");
    let out = dir.join("ns.corpus");
    let t0 = std::time::Instant::now();
    let r = import(Format::Neurosynth, &[data.join("corpus/neurosynth")], &out).unwrap();
    let dt = t0.elapsed().as_secs_f64();
    eprintln!("neurosynth import: {dt:.2} s\n{r}");
    assert!(dt < 5.0, "import took {dt} s");
    assert_eq!((r.studies, r.peaks), (14_371, 507_891));
    assert_eq!((r.tal.studies, r.tal.peaks), (2_335, 81_498));
    assert_eq!((r.unknown.studies, r.unknown.peaks), (1_832, 53_878));
    assert_eq!((r.mni.studies, r.mni.peaks), (10_204, 372_515));

    let t0 = std::time::Instant::now();
    let c = Corpus::open(&out).unwrap();
    let s = c.stats();
    assert!(t0.elapsed().as_secs_f64() < 0.5);
    assert_eq!(
        (s.studies, s.peaks, s.studies_with_peaks, s.sections.title),
        (14_371, 507_891, 14_371, 14_371)
    );
    let (peaks, skipped) = c.peaks_all().unwrap();
    assert_eq!(
        (peaks.len(), peaks.xyz.len(), skipped),
        (14_371, 507_891, 0)
    );
    let p = c.peaks_for(&["9065511".to_string()]).unwrap();
    assert_eq!(p.ids, vec!["9065511-1".to_string()]);
    assert_eq!(p.study(0)[0], [38.0, -48.0, 49.0]);
    let m = c.meta(c.find("9065511").unwrap()).unwrap();
    assert_eq!(
        (m.pmid.as_deref(), m.year, m.space),
        (Some("9065511"), Some(1997), Space::Mni)
    );

    // Export and re-read: ids, peaks (1e-6 mm), texts, metadata.
    let json = dir.join("ns.json");
    niclip(&[
        "corpus",
        "export",
        "--format",
        "nimare",
        out.to_str().unwrap(),
        "--out",
        json.to_str().unwrap(),
    ]);
    let back = dir.join("back.corpus");
    import(Format::Nimare, &[json], &back).unwrap();
    same_corpus(&c, &Corpus::open(&back).unwrap());
}

#[test]
fn neuroquery_acceptance() {
    let Some(data) = need_data() else {
        return;
    };
    let out = tmpdir("nq").join("nq.corpus");
    let r = import(Format::Neuroquery, &[data.join("corpus/neuroquery")], &out).unwrap();
    assert_eq!((r.studies, r.peaks), (13_459, 469_260));
    // No space column: UNKNOWN, kept as MNI (as NiMARE does).
    assert_eq!((r.unknown.studies, r.unknown.peaks), (13_459, 469_260));
    assert_eq!(Corpus::open(&out).unwrap().len(), 13_459);
}

#[test]
fn labelbuddy_join_acceptance() {
    let Some(data) = need_data() else {
        return;
    };
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("corpus/expected_join.json")).unwrap(),
    )
    .unwrap();
    let jsonl = data.join("corpus/labelbuddy/labelbuddy_documents_fulltext.jsonl.gz");
    for (name, format) in [
        ("neurosynth", Format::Neurosynth),
        ("neuroquery", Format::Neuroquery),
    ] {
        let out = tmpdir(&format!("join-{name}")).join("j.corpus");
        let r = corpus::import(
            format,
            &[data.join("corpus").join(name)],
            &out,
            &ImportOptions {
                text_jsonl: Some(jsonl.clone()),
                ..Default::default()
            },
        )
        .unwrap();
        eprintln!("{r}");
        let j = r.join.unwrap();
        let e = &expected["labelbuddy"][name];
        assert_eq!(
            j.studies_matched as u64,
            e["studies_matched"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            j.studies_multiple_records as u64,
            e["studies_multiple_records"].as_u64().unwrap(),
            "{name}"
        );
        for (sec, got) in [
            ("title", j.gained.title),
            ("keywords", j.gained.keywords),
            ("abstract", j.gained.abstract_),
            ("body", j.gained.body),
        ] {
            assert_eq!(
                got as u64,
                e["gained"][sec].as_u64().unwrap(),
                "{name} {sec}"
            );
        }
        let c = Corpus::open(&out).unwrap();
        assert_eq!(c.stats().sections.abstract_, j.gained.abstract_);
        assert_eq!(c.stats().sections.body, j.gained.body);
    }
}

#[test]
fn nimare_json_acceptance() {
    let Some(data) = need_data() else {
        return;
    };
    let dir = tmpdir("laird");
    let out = dir.join("l.corpus");
    let r = import(
        Format::Nimare,
        &[data.join("corpus/nimare/neurosynth_laird_studies.json")],
        &out,
    )
    .unwrap();
    assert_eq!((r.studies, r.peaks, r.sections.abstract_), (17, 1_117, 17));
    assert_eq!(
        (r.mni.studies, r.tal.studies, r.unknown.studies),
        (12, 2, 3)
    );
    let c = Corpus::open(&out).unwrap();
    // A TAL study, converted as NiMARE's Dataset does (values from NiMARE 0.22.1).
    let p = c.peaks_of(c.find("17029760-1").unwrap()).unwrap();
    let want = [-39.49807018, 38.59004181, 15.45372921];
    for k in 0..3 {
        assert!((p[0][k] - want[k]).abs() < 1e-6, "{:?}", p[0]);
    }
    let json = dir.join("l.json");
    nimare_export(&c, &json);
    let back = dir.join("back.corpus");
    import(Format::Nimare, &[json], &back).unwrap();
    same_corpus(&c, &Corpus::open(&back).unwrap());
}

fn nimare_export(c: &Corpus, out: &Path) {
    let st = corpus::nimare::export(c, out).unwrap();
    assert_eq!(st.contrasts, c.len());
    assert_eq!(st.peaks, c.n_peaks());
}

#[test]
fn neurosynth_filter_and_sample() {
    let Some(data) = need_data() else {
        return;
    };
    let ns = neurosynth_corpus(&data);
    let c = Corpus::open(&ns).unwrap();
    let dir = tmpdir("ns-subset");
    let out = dir.join("tal2000s.corpus");
    let f = Filter {
        year_min: Some(2000),
        year_max: Some(2009),
        spaces: vec![Space::Tal],
        ..Default::default()
    };
    let r = corpus::filter(&ns, &out, &f, true).unwrap();
    let want: Vec<usize> = (0..c.len())
        .filter(|&i| {
            let m = c.meta(i).unwrap();
            m.space == Space::Tal && m.year.is_some_and(|y| (2000..=2009).contains(&y))
        })
        .collect();
    assert!(want.len() > 100 && want.len() < 2_335, "{}", want.len());
    assert_eq!(r.kept, want.len());
    same_studies(&c, &want, &out);

    let s = Sample {
        size: SampleSize::Count(1000),
        seed: 29,
        with_peaks: true,
    };
    let r = corpus::sample(&ns, &dir.join("s.corpus"), &s, true).unwrap();
    assert_eq!((r.total, r.kept), (14_371, 1000));
    assert_eq!(Corpus::open(&dir.join("s.corpus")).unwrap().len(), 1000);
}

#[test]
fn studyset_keeps_metadata_labels() {
    let Some(data) = need_data() else {
        return;
    };
    let dir = tmpdir("nvf-meta");
    let out = dir.join("nvf.corpus");
    let ss = data.join("corpus/nimare/nback_vs_flanker_studyset_2026-07");
    import(Format::Studyset, &[ss], &out).unwrap();
    let c = Corpus::open(&out).unwrap();
    // selection_summary.json: 500 n-back and 406 flanker analyses, every one labelled.
    let mut classes = std::collections::BTreeMap::new();
    for i in 0..c.len() {
        let m = c.meta(i).unwrap();
        let class = m.extra["comparison_task"].as_str().unwrap().to_string();
        assert!(m.extra["matched_task_names"].as_str().is_some(), "{m:?}");
        // Ids and the study's own fields are not repeated in `extra`.
        assert!(!m.extra.contains_key("study_id") && !m.extra.contains_key("authors"));
        *classes.entry(class).or_insert(0) += 1;
    }
    assert_eq!(classes.len(), 2);
    assert_eq!((classes["n-back"], classes["flanker"]), (500, 406));
    // The labels travel through the NiMARE export.
    let json = dir.join("nvf.json");
    nimare_export(&c, &json);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let labelled = v
        .as_object()
        .unwrap()
        .values()
        .flat_map(|s| s["contrasts"].as_object().unwrap().values())
        .filter(|a| a["metadata"]["matched_task_names"].is_string())
        .count();
    assert_eq!(labelled, 906);
}
