//! Helpers shared by the integration tests.
//!
//! Skips: a test that lacks what it needs calls one `need_*` helper, which prints one
//! `SKIPPED binary::test: needs …` line straight to stderr (libtest captures only the print
//! macros, so the line shows in plain `cargo test` output) and appends it to this run's skip
//! log, which `tests/zz_skip_summary.rs` counts and prints when the run ends. A skip becomes a
//! failure where its switch is set: `NICLIP_REQUIRE_DATA=1` for the data and the real models
//! (`NICLIP_REQUIRE_MODELS=0|1` overrides it for the models), `NICLIP_REQUIRE_GPU=1` for the GPU.
#![allow(dead_code)]

use niclip::device::cuda::{self, Gpu};
use niclip::device::emulator;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    repo().join("tests/fixtures")
}

/// The real data: `$NICLIP_TEST_DATA`, else `../shared/data` beside the checkout.
fn data_root() -> PathBuf {
    std::env::var_os("NICLIP_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/data"))
}

/// The real data folder if it is there, without a skip (for helpers called after `need_data`).
pub fn shared_data() -> Option<PathBuf> {
    let p = data_root();
    p.is_dir().then_some(p)
}

/// The real data folder, or None after skipping the calling test.
pub fn need_data() -> Option<PathBuf> {
    let d = shared_data();
    if d.is_none() {
        let root = data_root();
        skip(
            Lack::Data,
            &format!(
                "../shared/data ({} not found; set NICLIP_TEST_DATA to use another folder)",
                root.display()
            ),
        );
    }
    d
}

/// `path` (a data file or a generated fixture) if it exists, or None after skipping.
pub fn need_file(path: impl AsRef<Path>) -> Option<PathBuf> {
    let p = path.as_ref();
    if p.exists() {
        return Some(p.to_path_buf());
    }
    skip(Lack::Data, &format!("{} (not found)", p.display()));
    None
}

/// A real text model: the variable scripts/fetch-models.sh exports, and its file name under
/// ~/.cache/niclip/models where the tests look when the variable is unset.
#[derive(Clone, Copy)]
pub struct RealModel {
    var: &'static str,
    name: &'static str,
}

pub const MINILM: RealModel = RealModel {
    var: "NICLIP_MINILM_DIR",
    name: "all-MiniLM-L6-v2",
};
pub const SMOLLM: RealModel = RealModel {
    var: "NICLIP_SMOLLM_GGUF",
    name: "SmolLM2-135M-Instruct.Q4_1.gguf",
};

/// The model's path, or None after skipping the calling test.
pub fn need_model(model: RealModel) -> Option<PathBuf> {
    let path = std::env::var_os(model.var).map(PathBuf::from).or_else(|| {
        std::env::var_os("HOME")
            .map(|h| Path::new(&h).join(".cache/niclip/models").join(model.name))
    });
    match path {
        Some(p) if p.exists() => Some(p),
        p => {
            let at = p.map_or("$HOME unset".into(), |p| {
                format!("{} not found", p.display())
            });
            let fix = format!(
                "set {} or run: eval \"$(bash scripts/fetch-models.sh)\"",
                model.var
            );
            skip(Lack::Models, &format!("{} ({at}; {fix})", model.name));
            None
        }
    }
}

/// Chooses this test process's CUDA driver, once, before any CUDA call: the emulated device
/// where NVIDIA's driver is not installed (`NICLIP_EMULATE_CUDA=1` asks for it everywhere, `=0`
/// never), else the real one.
fn cuda_driver() {
    static CHOSEN: std::sync::Once = std::sync::Once::new();
    CHOSEN.call_once(|| {
        if emulator::built() {
            emulator::enable_unless_driver().expect("the CUDA emulator loads");
        }
    });
}

/// CUDA device 0 (the emulated one where there is no driver), or None after skipping.
pub fn need_gpu() -> Option<Arc<Gpu>> {
    cuda_driver();
    if cuda::device_count() == 0 {
        let why = if emulator::built() {
            "a CUDA device (none found; NICLIP_EMULATE_CUDA=1 tests the emulated one)"
        } else {
            "a CUDA device (none found, and the CUDA emulator was not built: no C++20 compiler)"
        };
        skip(Lack::Gpu, why);
        return None;
    }
    Some(Gpu::open(0).expect("CUDA device 0 opens"))
}

/// Whether NVIDIA's libnvrtc loads (the NVRTC tests need no device; the emulator's stand-in
/// does not count); false after skipping.
pub fn need_nvrtc() -> bool {
    cuda_driver();
    let found = cuda::nvrtc_available() && !emulator::active();
    if !found {
        skip(
            Lack::Gpu,
            "NVIDIA's libnvrtc (it cannot be loaded; add CUDA's lib directory to LD_LIBRARY_PATH)",
        );
    }
    found
}

/// What a skipped test lacked; each kind has the switch that makes its skip a failure.
#[derive(Clone, Copy)]
enum Lack {
    Data,
    Models,
    Gpu,
}

impl Lack {
    /// The variable that turns this skip into a failure, and whether it is set to 1.
    fn switch(self) -> (&'static str, bool) {
        let var = match self {
            Lack::Data => "NICLIP_REQUIRE_DATA",
            // The models follow the data unless NICLIP_REQUIRE_MODELS is set.
            Lack::Models if std::env::var_os("NICLIP_REQUIRE_MODELS").is_some() => {
                "NICLIP_REQUIRE_MODELS"
            }
            Lack::Models => "NICLIP_REQUIRE_DATA",
            Lack::Gpu => "NICLIP_REQUIRE_GPU",
        };
        (var, std::env::var(var).is_ok_and(|v| v == "1"))
    }
}

/// Skips the calling test for lack of `what`: one line on stderr and in the skip log, or a
/// failure where the switch of `lack` is set.
fn skip(lack: Lack, what: &str) {
    let test = format!(
        "{}::{}",
        env!("CARGO_CRATE_NAME"),
        // libtest runs each test on a thread named after it.
        std::thread::current().name().unwrap_or("?")
    );
    let (var, required) = lack.switch();
    assert!(!required, "{test} needs {what}, and {var}=1 requires it");
    // One write, so that parallel tests' lines do not interleave.
    let line = format!("SKIPPED {test}: needs {what}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    let log = skip_log();
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .and_then(|mut f| f.write_all(format!("{test}\t{what}\n").as_bytes()))
        .unwrap_or_else(|e| panic!("cannot append to the skip log {}: {e}", log.display()));
}

fn skip_logs() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("skipped")
}

/// This run's skip log: one per parent process, so every test binary one `cargo test` starts
/// writes the same log whatever their order, and an earlier run's skips stay out of it.
fn skip_log() -> PathBuf {
    #[cfg(unix)]
    let run = std::os::unix::process::parent_id();
    #[cfg(not(unix))]
    let run = 0;
    skip_logs().join(format!("{run}.tsv"))
}

/// The skips this run logged, by reason (test names sorted); removes the log and the logs of
/// earlier runs that ended before their summary (their `cargo test` process is gone).
pub fn take_skips() -> BTreeMap<String, Vec<String>> {
    let log = skip_log();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let mut by_reason: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let (test, what) = line
            .split_once('\t')
            .unwrap_or_else(|| panic!("{}: malformed line {line:?}", log.display()));
        by_reason.entry(what.into()).or_default().push(test.into());
    }
    by_reason.values_mut().for_each(|tests| tests.sort());
    let _ = std::fs::remove_file(&log);
    let gone =
        |pid: &str| Path::new("/proc/self").exists() && !Path::new("/proc").join(pid).exists();
    for old in std::fs::read_dir(skip_logs())
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = old.file_name().to_string_lossy().into_owned();
        if name.strip_suffix(".tsv").is_some_and(gone) {
            let _ = std::fs::remove_file(old.path());
        }
    }
    by_reason
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

/// One test body run on every device kind, as candle's `test_device!`: `test_device!(op)`
/// makes the tests `op::cpu` and `op::cuda`, each calling `op(&device)`; the CUDA one skips
/// (through `need_gpu`, saying why) where there is no CUDA device.
#[allow(unused_macros)]
macro_rules! test_device {
    ($($body:ident),+ $(,)?) => {$(
        mod $body {
            #[test]
            fn cpu() {
                super::$body(&niclip::device::Device::Cpu)
            }

            #[test]
            fn cuda() {
                if let Some(gpu) = crate::common::need_gpu() {
                    super::$body(&niclip::device::Device::Cuda(gpu))
                }
            }
        }
    )+};
}
#[allow(unused_imports)]
pub(crate) use test_device;
