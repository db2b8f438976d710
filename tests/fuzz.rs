//! Hostile input never panics, hangs or eats memory (issue 20): a stable-toolchain fuzz suite.
//!
//! One test per parser a user's file reaches. Each feeds seeded mutations of committed fixtures
//! (bit flips, interesting bytes and integers/floats in aligned fields, truncation, chunk
//! duplication/deletion, digits/quotes/delimiters of text, gzip re-packed around mutated inflated
//! bytes) to the library entry point, and requires of every mutation: no panic, no abort, no hang,
//! memory bounded, and an error (if any) whose message names the file.
//!
//! Each target runs in a child process (this test binary re-run on that one test) with its data
//! segment capped at 1 GiB; the parent kills a child that makes no progress for
//! `STALL_SECS`, fails on a signal exit, and checks the peak RSS.
//!
//! ```text
//! cargo test --release --test fuzz                          # 500 mutations per target (CI)
//! NICLIP_FUZZ_N=5000 cargo test --release --test fuzz       # the long run
//! NICLIP_FUZZ_SEED=7 cargo test --release --test fuzz gguf  # another seed, one target
//! NICLIP_FUZZ_SEED=7 NICLIP_FUZZ_ITER=123 cargo test --release --test fuzz gguf  # one input
//! ```
//! A failing input is written to `target/fuzz-failures/<target>/<iteration>-<file>`.

mod common;

use niclip::brain::{Atlas, Image};
use niclip::corpus::{self, Corpus, Format, ImportOptions};
use niclip::device::Device;
use niclip::rng::{mix64, SplitMix64, GOLDEN};
use niclip::text::{gguf::Gguf, tokenizer::TextTokenizer, TextModel};
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A parse that takes this long on a fixture of a few hundred KB is a hang.
const STALL_SECS: u64 = 30;
/// The child's data limit and the peak RSS the parent accepts.
const MEMORY_LIMIT: u64 = 1 << 30;
/// The child stops after this many failing inputs (they are all saved).
const MAX_FAILURES: usize = 10;

// ---------------------------------------------------------------------------------------------
// Targets

/// A seed file placed in the target's work folder; `mutate` marks those the fuzzer changes.
struct Seed {
    name: String,
    bytes: Vec<u8>,
    mutate: bool,
}

/// One parser: its seed files and the library call on the work folder and the mutated file.
struct Target {
    name: &'static str,
    seeds: fn() -> Vec<Seed>,
    load: fn(&Path, &Path) -> niclip::Result<()>,
}

/// Every target: `name: seeds => load`, each also a test of that name (the child re-runs it).
macro_rules! targets {
    ($($name:ident: $seeds:ident => $load:ident,)*) => {
        const TARGETS: &[Target] = &[
            $(Target { name: stringify!($name), seeds: $seeds, load: $load },)*
        ];
        $(#[test] fn $name() { fuzz(stringify!($name)); })*
    };
}

targets! {
    nifti1: nifti1_seeds => load_image,
    nifti2: nifti2_seeds => load_image,
    nifti_gz: nifti_gz_seeds => load_image,
    npy: npy_seeds => load_npy,
    npy_gz: npy_gz_seeds => load_npy,
    clip_safetensors: clip_seeds => load_clip,
    model_safetensors: shard_seeds => load_model,
    model_index_json: index_seeds => load_model,
    model_config_json: config_seeds => load_model,
    tokenizer_json: tokenizer_seeds => load_tokenizer,
    gguf: gguf_seeds => load_gguf,
    corpus_file: corpus_file_seeds => load_corpus_file,
    corpus_pubget: pubget_seeds => import_pubget,
    corpus_nimare: nimare_seeds => import_nimare,
    corpus_neurosynth: neurosynth_seeds => import_neurosynth,
    corpus_jsonl: jsonl_seeds => import_pubget_jsonl,
    atlas_cache: atlas_cache_seeds => load_atlas_cache,
}

// ---------------------------------------------------------------------------------------------
// Seeds: committed fixtures, or files the library derives from them

fn fixture(rel: &str, mutate: bool) -> Seed {
    let path = common::fixtures().join(rel);
    Seed {
        name: path.file_name().unwrap().to_string_lossy().into_owned(),
        bytes: std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        mutate,
    }
}

fn fixtures_of(rels: &[&str], mutate: bool) -> Vec<Seed> {
    rels.iter().map(|r| fixture(r, mutate)).collect()
}

fn nifti1_seeds() -> Vec<Seed> {
    fixtures_of(
        &["nifti/nifti1_uint8_4d.nii", "nifti/nifti1_qform_only.nii"],
        true,
    )
}

fn nifti2_seeds() -> Vec<Seed> {
    fixtures_of(&["nifti/nifti2_int16_scaled.nii"], true)
}

fn nifti_gz_seeds() -> Vec<Seed> {
    fixtures_of(
        &[
            "nifti/nifti1_bigendian_f64.nii.gz",
            "brain/atlas_aal3_2mm.nii.gz",
        ],
        true,
    )
}

fn npy_seeds() -> Vec<Seed> {
    fixtures_of(
        &[
            "clip/losses.npy",
            "decode/vocabulary_prior.npy",
            "brain/proj_ref_thalamus.npy",
        ],
        true,
    )
}

fn npy_gz_seeds() -> Vec<Seed> {
    fixtures_of(
        &["brain/mkda_fsl_ref_bits.npy.gz", "baseline/ns_z_2.npy.gz"],
        true,
    )
}

fn clip_seeds() -> Vec<Seed> {
    fixtures_of(&["clip/init.safetensors", "decode/model.safetensors"], true)
}

/// The tiny Llama folder, with the files named in `mutate` fuzzed.
fn tiny_llama(mutate: fn(&str) -> bool) -> Vec<Seed> {
    let dir = common::fixtures().join("text/tiny_llama");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
        .iter()
        .map(|n| fixture(&format!("text/tiny_llama/{n}"), mutate(n)))
        .collect()
}

fn shard_seeds() -> Vec<Seed> {
    tiny_llama(|n| n.ends_with(".safetensors"))
}

fn index_seeds() -> Vec<Seed> {
    tiny_llama(|n| n == "model.safetensors.index.json")
}

fn config_seeds() -> Vec<Seed> {
    tiny_llama(|n| n == "config.json")
}

fn tokenizer_seeds() -> Vec<Seed> {
    fixtures_of(&["text/tokenizer/tokenizer.json"], true)
}

fn gguf_seeds() -> Vec<Seed> {
    fixtures_of(&["text/quant.gguf", "text/tiny_llama.gguf"], true)
}

/// The pubget fixture's files, fuzzed or not.
fn pubget_files(mutate: bool) -> Vec<Seed> {
    [
        "metadata.csv",
        "coordinates.csv",
        "coordinate_space.csv",
        "text.csv",
    ]
    .iter()
    .map(|f| fixture(&format!("corpus/pubget/{f}"), mutate))
    .collect()
}

fn pubget_seeds() -> Vec<Seed> {
    pubget_files(true)
}

/// The pubget fixture imported: the source of the derived seeds below.
fn pubget_corpus(dir: &Path) -> Corpus {
    let out = dir.join("pubget.corpus");
    let src = common::fixtures().join("corpus/pubget");
    corpus::import(Format::Pubget, &[src], &out, &ImportOptions::default()).unwrap();
    Corpus::open(&out).unwrap()
}

/// A seed made by `make` in a scratch folder from the imported pubget fixture.
fn derived(name: &str, make: impl FnOnce(&Corpus, &Path)) -> Seed {
    let dir = scratch_dir(&format!("seed-{name}"));
    let c = pubget_corpus(&dir);
    let path = dir.join(name);
    make(&c, &path);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    Seed {
        name: name.into(),
        bytes,
        mutate: true,
    }
}

/// A prepared-atlas cache entry, as `Atlas::read` stores it for a continuous atlas.
fn atlas_cache_seeds() -> Vec<Seed> {
    let dir = scratch_dir("seed-atlas-cache");
    let atlas = common::fixtures().join("brain/atlas_thalamus_2mm.nii.gz");
    let cache = dir.join("cache");
    niclip::brain::atlas_cache::load_or_build(Some(&cache), &atlas, false, None, || {
        Atlas::from_image(&Image::read(&atlas)?, false, &atlas)
    })
    .unwrap();
    let entry = std::fs::read_dir(&cache)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let bytes = std::fs::read(entry).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    vec![Seed {
        name: "atlas-entry.bin".into(),
        bytes,
        mutate: true,
    }]
}

fn corpus_file_seeds() -> Vec<Seed> {
    vec![derived("fixture.corpus", |c, p| {
        std::fs::copy(c.path(), p).unwrap();
    })]
}

fn nimare_seeds() -> Vec<Seed> {
    vec![derived("dataset.json", |c, p| {
        corpus::nimare::export(c, p).unwrap();
    })]
}

/// Neurosynth/NeuroQuery TSVs (one reader serves both formats), the coordinates gzipped.
fn neurosynth_seeds() -> Vec<Seed> {
    let meta = derived("x_metadata.tsv", |c, p| {
        let mut s = String::from("id\tspace\tdoi\ttitle\tyear\tjournal\n");
        for i in 0..c.len() {
            let m = c.meta(i).unwrap();
            let f = |v: Option<String>| v.unwrap_or_default().replace(['\t', '\n'], " ");
            let year = m.year.map(|y| y.to_string());
            let fields = [f(m.doi), f(m.title), f(year), f(m.journal)];
            s += &format!("{}\tMNI\t{}\n", i + 1, fields.join("\t"));
        }
        std::fs::write(p, s).unwrap();
    });
    let coords = derived("x_coordinates.tsv.gz", |c, p| {
        let mut s = String::from("id\tx\ty\tz\n");
        for i in 0..c.len() {
            for [x, y, z] in c.peaks_of(i).unwrap() {
                s += &format!("{}\t{x:.2}\t{y:.2}\t{z:.2}\n", i + 1);
            }
        }
        std::fs::write(p, gzip(s.as_bytes())).unwrap();
    });
    vec![meta, coords]
}

/// The pubget fixture unchanged, and its texts as a JSONL join file (the one fuzzed).
fn jsonl_seeds() -> Vec<Seed> {
    let mut seeds = pubget_files(false);
    seeds.push(derived("texts.jsonl", |c, p| {
        let mut s = String::new();
        for i in 0..c.len() {
            let (m, t) = (c.meta(i).unwrap(), c.text(i).unwrap());
            let rec = serde_json::json!({
                "pmid": m.pmid, "pmcid": m.pmcid, "title": t.title,
                "abstract": t.abstract_, "body": "B",
            });
            s += &format!("{rec}\n");
        }
        std::fs::write(p, s).unwrap();
    }));
    seeds
}

// ---------------------------------------------------------------------------------------------
// Library calls: the entry point a user's file reaches, then what a command does next with it

fn load_image(_: &Path, file: &Path) -> niclip::Result<()> {
    let img = Image::read(file)?;
    // A label atlas goes on to what a decode run makes of it (its labels).
    let is_atlas = file
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("atlas_"));
    if is_atlas {
        Atlas::from_image(&img, true, file)?;
    }
    Ok(())
}

fn load_npy(_: &Path, file: &Path) -> niclip::Result<()> {
    // Raw for the bit and integer arrays, as f32 where the array holds floats.
    if niclip::io::read_npy_raw(file)?.descr.starts_with("<f") {
        niclip::io::read_npy_f32(file)?;
    }
    Ok(())
}

fn load_clip(_: &Path, file: &Path) -> niclip::Result<()> {
    niclip::clip::model::Clip::load(file).map(drop)
}

fn load_model(dir: &Path, _: &Path) -> niclip::Result<()> {
    TextModel::load(dir, None, &Device::Cpu).map(drop)
}

fn load_tokenizer(_: &Path, file: &Path) -> niclip::Result<()> {
    let tok = TextTokenizer::from_file(file)?;
    tok.encode(&["Working memory load in the prefrontal cortex."])
        .map(drop)
}

fn load_gguf(_: &Path, file: &Path) -> niclip::Result<()> {
    let g = Gguf::open(file)?;
    g.read_all(file, |n| Some(n.to_string()))?;
    TextModel::load(file, None, &Device::Cpu).map(drop)
}

/// The entry as damaged, then re-sealed with a valid CRC32 (a crafted entry, past the
/// checksum); an atlas that reads back projects a map, as a decode would.
fn load_atlas_cache(_: &Path, file: &Path) -> niclip::Result<()> {
    let mut bytes = std::fs::read(file).map_err(|e| niclip::Error::io(file, e))?;
    let decode = |b: &[u8]| {
        niclip::brain::atlas_cache::decode_entry(b, None)
            .map_err(|why| niclip::Error::input(file, why))
    };
    decode(&bytes)?;
    niclip::brain::atlas_cache::reseal(&mut bytes);
    if let Some(atlas) = decode(&bytes)? {
        let n = atlas.grid.n_voxels();
        if n <= 1 << 22 {
            atlas.project_image(&Image::new(atlas.grid.clone(), 1, vec![1.0; n]));
        }
    }
    Ok(())
}

fn load_corpus_file(_: &Path, file: &Path) -> niclip::Result<()> {
    let c = Corpus::open(file)?;
    c.peaks_all()?;
    for i in 0..c.len() {
        c.study(i)?;
    }
    Ok(())
}

fn import(
    format: Format,
    inputs: &[PathBuf],
    dir: &Path,
    jsonl: Option<PathBuf>,
) -> niclip::Result<()> {
    let out = dir.join("out.corpus");
    let opts = ImportOptions {
        text_jsonl: jsonl,
        ..Default::default()
    };
    let r = corpus::import(format, inputs, &out, &opts);
    // What was imported must read back (an error there names out.corpus and fails the target).
    if r.is_ok() {
        load_corpus_file(dir, &out)?;
        std::fs::remove_file(&out).ok();
    }
    r.map(drop)
}

fn import_pubget(dir: &Path, _: &Path) -> niclip::Result<()> {
    import(Format::Pubget, &[dir.to_path_buf()], dir, None)
}

fn import_nimare(dir: &Path, file: &Path) -> niclip::Result<()> {
    import(Format::Nimare, &[file.to_path_buf()], dir, None)
}

fn import_neurosynth(dir: &Path, _: &Path) -> niclip::Result<()> {
    import(Format::Neurosynth, &[dir.to_path_buf()], dir, None)
}

fn import_pubget_jsonl(dir: &Path, file: &Path) -> niclip::Result<()> {
    import(
        Format::Pubget,
        &[dir.to_path_buf()],
        dir,
        Some(file.to_path_buf()),
    )
}

// ---------------------------------------------------------------------------------------------
// Mutator

/// Integers that break size and offset arithmetic, as 64-bit patterns (narrowed per field).
const INTERESTING_INTS: &[i64] = &[
    0,
    1,
    -1,
    i16::MAX as i64,
    i16::MIN as i64,
    i32::MAX as i64,
    i32::MIN as i64,
    1 << 31,
    1 << 62,
    i64::MAX,
    i64::MIN,
];
const INTERESTING_FLOATS: &[f64] = &[1e38, -1e38, f64::NAN, f64::INFINITY, f64::NEG_INFINITY];
const INTERESTING_BYTES: &[u8] = &[0, 0xff, 0x7f, 0x80];
/// Numbers written into text: huge, negative, fractional, exponent overflow, not a number.
const INTERESTING_NUMBERS: &[&str] = &[
    "0",
    "-1",
    "4294967296",
    "9223372036854775808",
    "18446744073709551616",
    "1e308",
    "-1e999",
    "NaN",
    "0.5",
    "99999999999999999999999",
];
const DELIMITERS: &[u8] = b",\t\n:;\"'{}[] ";

fn pick<'a, T>(rng: &mut SplitMix64, xs: &'a [T]) -> &'a T {
    &xs[rng.below(xs.len())]
}

/// An offset, half the time in the first 512 bytes where headers live.
fn offset(rng: &mut SplitMix64, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    if rng.below(2) == 0 {
        rng.below(len.min(512))
    } else {
        rng.below(len)
    }
}

/// A field of 2, 4 or 8 bytes at an aligned offset set to an interesting value, either endian.
fn overwrite_field(rng: &mut SplitMix64, b: &mut [u8]) {
    let width = *pick(rng, &[2usize, 4, 8]);
    if b.len() < width {
        return;
    }
    let at = offset(rng, b.len() - width + 1) / width * width;
    let mut v: [u8; 8] = if rng.below(3) == 0 {
        let f = *pick(rng, INTERESTING_FLOATS);
        match width {
            4 => {
                let mut x = [0u8; 8];
                x[..4].copy_from_slice(&(f as f32).to_le_bytes());
                x
            }
            _ => f.to_le_bytes(),
        }
    } else {
        pick(rng, INTERESTING_INTS).to_le_bytes()
    };
    if rng.below(2) == 0 {
        v[..width].reverse();
    }
    b[at..at + width].copy_from_slice(&v[..width]);
}

/// A chunk of up to 1/4 of the input (at least a byte) duplicated in place or deleted.
fn chunk(rng: &mut SplitMix64, b: &mut Vec<u8>) {
    if b.is_empty() {
        return;
    }
    let start = offset(rng, b.len());
    let len = 1 + rng.below((b.len() - start).min(b.len() / 4 + 1));
    let end = (start + len).min(b.len());
    if rng.below(2) == 0 {
        let copy = b[start..end].to_vec();
        b.splice(start..start, copy);
    } else {
        b.drain(start..end);
    }
}

/// The next byte at or after a random offset that `is` accepts.
fn find(rng: &mut SplitMix64, b: &[u8], is: impl Fn(u8) -> bool) -> Option<usize> {
    let from = offset(rng, b.len());
    (from..b.len()).chain(0..from).find(|&i| is(b[i]))
}

/// Digits, quotes and delimiters of text formats (and of binary formats' text headers).
fn text_mutation(rng: &mut SplitMix64, b: &mut Vec<u8>) {
    match rng.below(3) {
        0 => {
            if let Some(i) = find(rng, b, |c| c.is_ascii_digit()) {
                let end = (i..b.len())
                    .find(|&j| !b[j].is_ascii_digit())
                    .unwrap_or(b.len());
                let number = pick(rng, INTERESTING_NUMBERS).as_bytes().to_vec();
                b.splice(i..end, number);
            }
        }
        1 => {
            if let Some(i) = find(rng, b, |c| c == b'"') {
                if rng.below(2) == 0 {
                    b.remove(i);
                } else {
                    b.insert(i, b'"');
                }
            }
        }
        _ => {
            if let Some(i) = find(rng, b, |c| DELIMITERS.contains(&c)) {
                match rng.below(3) {
                    0 => drop(b.remove(i)),
                    1 => b.insert(i, *pick(rng, DELIMITERS)),
                    _ => b[i] = *pick(rng, DELIMITERS),
                }
            }
        }
    }
}

/// One mutation of raw bytes.
fn byte_mutation(rng: &mut SplitMix64, b: &mut Vec<u8>, text: bool) {
    if b.is_empty() {
        b.push(*pick(rng, INTERESTING_BYTES));
        return;
    }
    match rng.below(if text { 8 } else { 6 }) {
        0 => {
            let i = offset(rng, b.len());
            b[i] ^= 1 << rng.below(8);
        }
        1 => {
            let i = offset(rng, b.len());
            b[i] = *pick(rng, INTERESTING_BYTES);
        }
        2 | 3 => overwrite_field(rng, b),
        4 => b.truncate(rng.below(b.len())),
        5 => chunk(rng, b),
        _ => text_mutation(rng, b),
    }
}

/// Text formats, and safetensors, whose file starts with a JSON header.
fn is_text(name: &str) -> bool {
    [".json", ".jsonl", ".csv", ".tsv", ".safetensors"]
        .iter()
        .any(|s| name.ends_with(s))
}

/// JSON values that break readers: huge, negative, fractional, of the wrong type, empty.
const INTERESTING_JSON: &str = r#"[0, -1, 1, 2147483648, 4294967296, 4611686018427387904,
    18446744073709551615, -9223372036854775808, 1e308, -1e38, 0.5, null, true, "", "x", [], {},
    [0], {"a": 1}]"#;

fn interesting_json(rng: &mut SplitMix64) -> serde_json::Value {
    let values: Vec<serde_json::Value> = serde_json::from_str(INTERESTING_JSON).unwrap();
    pick(rng, &values).clone()
}

/// JSON pointers of every node under `v`.
fn json_nodes(v: &serde_json::Value, at: String, out: &mut Vec<String>) {
    let esc = |k: &str| k.replace('~', "~0").replace('/', "~1");
    match v {
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                json_nodes(x, format!("{at}/{i}"), out);
            }
        }
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                json_nodes(x, format!("{at}/{}", esc(k)), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

/// A node of the document replaced by an interesting value, or an element or key dropped,
/// so the document stays JSON and the reader's checks of its fields are reached.
fn json_mutation(rng: &mut SplitMix64, doc: &mut serde_json::Value) {
    let mut nodes = Vec::new();
    json_nodes(doc, String::new(), &mut nodes);
    let at = pick(rng, &nodes).clone();
    let drop_it = rng.below(4) == 0;
    let node = doc.pointer_mut(&at).unwrap();
    match node {
        serde_json::Value::Array(a) if drop_it && !a.is_empty() => {
            drop(a.remove(rng.below(a.len())))
        }
        serde_json::Value::Object(m) if drop_it && !m.is_empty() => {
            let k = m.keys().nth(rng.below(m.len())).unwrap().clone();
            m.remove(&k);
        }
        _ => *node = interesting_json(rng),
    }
}

/// 1 or 2 JSON mutations of `b` when it parses as JSON, else false.
fn json_document(rng: &mut SplitMix64, b: &mut Vec<u8>) -> bool {
    let Ok(mut doc) = serde_json::from_slice::<serde_json::Value>(b) else {
        return false;
    };
    for _ in 0..1 + rng.below(2) {
        json_mutation(rng, &mut doc);
    }
    *b = serde_json::to_vec_pretty(&doc).unwrap();
    true
}

/// The JSON header of a safetensors file mutated as JSON, its length prefix rewritten.
fn safetensors_header(rng: &mut SplitMix64, b: &mut Vec<u8>) -> bool {
    let Some(len) = b
        .get(..8)
        .map(|l| u64::from_le_bytes(l.try_into().unwrap()) as usize)
    else {
        return false;
    };
    let Some(mut header) = b.get(8..8usize.saturating_add(len)).map(<[u8]>::to_vec) else {
        return false;
    };
    if !json_document(rng, &mut header) {
        return false;
    }
    let body = b.split_off(8 + len);
    *b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend(header);
    b.extend(body);
    true
}

/// One line of a JSON Lines file mutated as JSON.
fn jsonl_line(rng: &mut SplitMix64, b: &mut Vec<u8>) -> bool {
    let mut lines: Vec<Vec<u8>> = b.split(|&c| c == b'\n').map(<[u8]>::to_vec).collect();
    let i = rng.below(lines.len());
    if !json_document(rng, &mut lines[i]) {
        return false;
    }
    lines[i].retain(|&c| c != b'\n');
    *b = lines.join(&b'\n');
    true
}

/// A mutation that keeps the format's structure (JSON stays JSON), where there is one.
fn structured(rng: &mut SplitMix64, name: &str, b: &mut Vec<u8>) -> bool {
    if name.ends_with(".json") {
        json_document(rng, b)
    } else if name.ends_with(".jsonl") {
        jsonl_line(rng, b)
    } else if name.ends_with(".safetensors") {
        safetensors_header(rng, b)
    } else {
        false
    }
}

/// 1 to 4 mutations of `seed`: half of them structured where the format allows. A `.gz` file is
/// mutated inflated and re-gzipped (so the parser past the CRC sees them) or, one time in
/// three, as raw gzip bytes.
fn mutate(rng: &mut SplitMix64, name: &str, seed: &[u8]) -> Vec<u8> {
    if rng.below(2) == 0 {
        let mut b = seed.to_vec();
        if structured(rng, name, &mut b) {
            return b;
        }
    }
    let gz = name.ends_with(".gz");
    let inflated = gz && rng.below(3) != 0;
    let mut b = if inflated {
        gunzip(seed)
    } else {
        seed.to_vec()
    };
    let text = is_text(name.trim_end_matches(".gz")) && (inflated || !gz);
    for _ in 0..1 + rng.below(4) {
        byte_mutation(rng, &mut b, text);
    }
    if inflated {
        gzip(&b)
    } else {
        b
    }
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(b).unwrap();
    enc.finish().unwrap()
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(b)
        .read_to_end(&mut out)
        .unwrap();
    out
}

// ---------------------------------------------------------------------------------------------
// The child: the mutation loop

fn env_u64(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The generator of one iteration: a pure function of the seed, the target and the iteration,
/// so any input is reproduced alone with NICLIP_FUZZ_ITER.
fn iteration_rng(seed: u64, target: &str, iter: u64) -> SplitMix64 {
    let t = target.bytes().fold(seed, |h, c| mix64(h ^ c as u64));
    SplitMix64(mix64(t ^ iter.wrapping_mul(GOLDEN)))
}

fn scratch_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("niclip-fuzz-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn failures_dir(target: &str) -> PathBuf {
    common::repo().join("target/fuzz-failures").join(target)
}

/// The message of the last panic, recorded by a silent hook (the library catches some panics
/// of third-party crates itself, so only a panic that reaches the loop counts).
static PANIC: Mutex<Option<String>> = Mutex::new(None);

fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map(|l| format!(" at {l}"))
            .unwrap_or_default();
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        *PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{msg}{at}"));
    }));
}

fn limit_memory() {
    let lim = libc::rlimit {
        rlim_cur: MEMORY_LIMIT,
        rlim_max: MEMORY_LIMIT,
    };
    // SAFETY: setrlimit reads the struct; it only lowers this process's own limit.
    assert_eq!(
        unsafe { libc::setrlimit(libc::RLIMIT_DATA, &lim) },
        0,
        "setrlimit"
    );
}

/// Own peak RSS in bytes (VmHWM).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// What one mutation did, or why it fails the target.
enum Outcome {
    Ok,
    Error,
    Fail(String),
}

fn run_one(t: &Target, work: &Path, file: &Path) -> Outcome {
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (t.load)(work, file))) {
        Ok(Ok(())) => Outcome::Ok,
        Ok(Err(e)) if e.to_string().contains(&name) => Outcome::Error,
        Ok(Err(e)) => Outcome::Fail(format!("error does not name {name}: {e}")),
        Err(_) => {
            let msg = PANIC.lock().unwrap_or_else(|e| e.into_inner()).take();
            Outcome::Fail(format!("panic: {}", msg.unwrap_or_default()))
        }
    }
}

/// Runs the target's mutations and exits: 0 when every one passed, 1 otherwise.
fn child(t: &Target, work: &Path) -> ! {
    limit_memory();
    quiet_panics();
    let (seed, n) = (
        env_u64("NICLIP_FUZZ_SEED", 20),
        env_u64("NICLIP_FUZZ_N", 500),
    );
    let iters = match std::env::var("NICLIP_FUZZ_ITER")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(i) => i..i + 1,
        None => 0..n,
    };
    let seeds = (t.seeds)();
    for s in &seeds {
        std::fs::write(work.join(&s.name), &s.bytes).unwrap();
    }
    let mutable: Vec<&Seed> = seeds.iter().filter(|s| s.mutate).collect();
    let (mut errors, mut ok, mut failures) = (0u64, 0u64, 0usize);
    for iter in iters.clone() {
        let mut rng = iteration_rng(seed, t.name, iter);
        let s = *pick(&mut rng, &mutable);
        let input = mutate(&mut rng, &s.name, &s.bytes);
        let file = work.join(&s.name);
        std::fs::write(&file, &input).unwrap();
        // The parent reads this line to name the input of an abort or a hang.
        println!("fuzz-iter {iter} {}", s.name);
        match run_one(t, work, &file) {
            Outcome::Ok => ok += 1,
            Outcome::Error => errors += 1,
            Outcome::Fail(why) => {
                let saved = save_failure(t.name, iter, &s.name, &input);
                println!(
                    "FAIL {} iteration {iter} seed {seed}: {why}\n  input: {}",
                    t.name,
                    saved.display()
                );
                failures += 1;
            }
        }
        std::fs::write(&file, &s.bytes).unwrap();
        if failures == MAX_FAILURES {
            break;
        }
    }
    let runs = ok + errors + failures as u64;
    println!(
        "fuzz-summary {runs} {errors} {ok} {failures} {}",
        peak_rss(std::process::id())
    );
    std::io::stdout().flush().unwrap();
    std::process::exit(i32::from(failures > 0))
}

fn save_failure(target: &str, iter: u64, name: &str, input: &[u8]) -> PathBuf {
    let dir = failures_dir(target);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{iter}-{name}"));
    std::fs::write(&path, input).unwrap();
    path
}

// ---------------------------------------------------------------------------------------------
// The parent: runs the child, watches it, judges it

/// What the parent saw of the child.
#[derive(Default)]
struct Watch {
    /// The iteration under way and the file it mutated.
    current: Option<String>,
    summary: Option<String>,
    failures: Vec<String>,
    peak: u64,
}

impl Watch {
    fn line(&mut self, line: String) {
        if let Some(rest) = line.strip_prefix("fuzz-iter ") {
            self.current = Some(rest.to_string());
        } else if let Some(rest) = line.strip_prefix("fuzz-summary ") {
            self.summary = Some(rest.to_string());
        } else if line.starts_with("FAIL ") || line.starts_with("  input: ") {
            self.failures.push(line);
        }
    }
}

fn fuzz(name: &str) {
    let t = TARGETS
        .iter()
        .find(|t| t.name == name)
        .expect("a target of that name");
    if let Some(work) = std::env::var_os("NICLIP_FUZZ_CHILD") {
        child(t, Path::new(&work));
    }
    let work = Scratch(scratch_dir(name));
    let work = work.0.as_path();
    let started = Instant::now();
    let mut proc = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("NICLIP_FUZZ_CHILD", work)
        // Few malloc arenas and threads: the data limit is for the parsers, not for reservations.
        .env("MALLOC_ARENA_MAX", "2")
        .env("RAYON_NUM_THREADS", "2")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = proc.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = proc.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            tx.send(line).ok();
        }
    });
    let mut watch = Watch::default();
    let mut last_progress = Instant::now();
    let status = loop {
        while let Ok(line) = rx.try_recv() {
            last_progress = Instant::now();
            watch.line(line);
        }
        watch.peak = watch.peak.max(peak_rss(pid));
        if let Some(status) = proc.try_wait().unwrap() {
            break Some(status);
        }
        if last_progress.elapsed() > Duration::from_secs(STALL_SECS) {
            proc.kill().ok();
            proc.wait().ok();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The reader thread ends with the child's stdout: take what it has left.
    for line in rx.iter() {
        watch.line(line);
    }
    judge(name, work, status, &watch, started.elapsed());
}

/// The parent's work folder, removed however the target ends (a failure panics).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// Prints the target's summary line and panics on any panic, abort, hang or memory excess.
fn judge(
    name: &str,
    work: &Path,
    status: Option<std::process::ExitStatus>,
    w: &Watch,
    took: Duration,
) {
    use std::os::unix::process::ExitStatusExt;
    let seed = env_u64("NICLIP_FUZZ_SEED", 20);
    let reproduce = || {
        let Some(cur) = &w.current else {
            return String::from("before the first mutation");
        };
        let (iter, file) = cur.split_once(' ').unwrap_or((cur, ""));
        let saved = std::fs::read(work.join(file))
            .map(|b| {
                save_failure(name, iter.parse().unwrap_or(0), file, &b)
                    .display()
                    .to_string()
            })
            .unwrap_or_default();
        format!("iteration {iter} ({file}, saved as {saved}); rerun with NICLIP_FUZZ_SEED={seed} NICLIP_FUZZ_ITER={iter}")
    };
    let Some(status) = status else {
        panic!(
            "fuzz {name}: hang, no progress for {STALL_SECS} s at {}",
            reproduce()
        );
    };
    if let Some(sig) = status.signal() {
        panic!(
            "fuzz {name}: killed by signal {sig} (an abort: allocation failure?) at {}",
            reproduce()
        );
    }
    let fields: Vec<u64> = w
        .summary
        .as_deref()
        .unwrap_or_default()
        .split(' ')
        .filter_map(|f| f.parse().ok())
        .collect();
    let [runs, errors, ok, failures, child_peak] = fields[..] else {
        panic!("fuzz {name}: the child exited with {status} without a summary");
    };
    let peak = w.peak.max(child_peak);
    eprintln!(
        "fuzz {name}: {runs} mutations, {errors} errors, {ok} ok, {failures} failing, peak {} MB, {:.1} s (seed {seed})",
        peak >> 20,
        took.as_secs_f64()
    );
    assert!(
        status.success() && failures == 0,
        "fuzz {name}: failing inputs:\n{}",
        w.failures.join("\n")
    );
    assert!(
        peak < MEMORY_LIMIT,
        "fuzz {name}: peak RSS {} MB ≥ 1 GiB",
        peak >> 20
    );
}
