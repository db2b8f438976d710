//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared/data` beside the checkout, or None (the caller prints why it skips).
pub fn shared_data() -> Option<PathBuf> {
    let p = repo().join("../shared/data");
    p.is_dir().then_some(p)
}

pub fn fixtures() -> PathBuf {
    repo().join("tests/fixtures")
}

/// Returns the data dir or prints the skip reason and returns None.
pub fn need_shared(test: &str) -> Option<PathBuf> {
    let d = shared_data();
    if d.is_none() {
        eprintln!("skipped {test}: ../shared/data not found (it is present in CI)");
    }
    d
}

pub fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("niclip-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs the niclip binary; panics with its stderr when it fails.
pub fn niclip(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_niclip"))
        .args(args)
        .output()
        .expect("run niclip");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "niclip {args:?} failed:\n{stderr}");
    stderr
}

/// Runs the niclip binary; panics with its stderr when it fails; returns stdout.
pub fn niclip_stdout(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_niclip"))
        .args(args)
        .output()
        .expect("run niclip");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "niclip {args:?} failed:\n{stderr}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Runs the niclip binary expecting failure; returns stderr.
pub fn niclip_fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_niclip"))
        .args(args)
        .output()
        .expect("run niclip");
    assert!(!out.status.success(), "niclip {args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// The Neurosynth v7 corpus imported once per test binary into a temp dir.
pub fn neurosynth_corpus(data: &Path) -> PathBuf {
    static ONCE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let out = tmpdir("ns-corpus").join("neurosynth.corpus");
        niclip(&[
            "corpus",
            "import",
            "--format",
            "neurosynth",
            data.join("corpus/neurosynth").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        out
    })
    .clone()
}

/// max over rows of ‖a − b‖∞ / ‖b‖∞ (rows of length `cols`).
pub fn max_row_relative_error(a: &[f32], b: &[f64], cols: usize) -> f64 {
    a.chunks(cols)
        .zip(b.chunks(cols))
        .map(|(x, y)| {
            let scale = y.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
            x.iter()
                .zip(y)
                .fold(0.0f64, |m, (p, q)| m.max((*p as f64 - q).abs()))
                / scale
        })
        .fold(0.0, f64::max)
}
