//! `niclip train` / `niclip eval retrieval` end to end on synthetic pairs: the same seed gives
//! byte-identical models, a run stopped mid-epoch or SIGKILLed and resumed gives the
//! uninterrupted run's bytes, the nested CV writes its metrics, ids pair rows, and bad input is
//! a one-line error.

mod common;

use common::{niclip, niclip_fails, tmpdir};
use niclip::clip::Clip;
use niclip::io::{write_ids, write_npy_f32};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// n correlated pairs (text width d, image width k) written as .npy into `dir`.
fn pairs(dir: &Path, name: &str, n: usize, d: usize, k: usize, seed: u64) -> (PathBuf, PathBuf) {
    let mut rng = niclip::rng::SplitMix64(seed);
    // Rounding the 53-bit uniform to f32 equals rounding its integer: the same numbers as before.
    let mut next = || rng.uniform() as f32 * 2.0 - 1.0;
    let text: Vec<f32> = (0..n * d).map(|_| next()).collect();
    let mix: Vec<f32> = (0..d * k).map(|_| next()).collect();
    let mut images = vec![0.0f32; n * k];
    for r in 0..n {
        for c in 0..k {
            let mut v = 0.3 * next();
            for j in 0..d {
                v += text[r * d + j] * mix[j * k + c] / (d as f32).sqrt();
            }
            images[r * k + c] = v;
        }
    }
    let (t, i) = (
        dir.join(format!("{name}_text.npy")),
        dir.join(format!("{name}_images.npy")),
    );
    write_npy_f32(&t, &text, n, d).unwrap();
    write_npy_f32(&i, &images, n, k).unwrap();
    (t, i)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn same_seed_same_bytes() {
    let dir = tmpdir("clip-determinism");
    let (t, i) = pairs(&dir, "a", 300, 48, 16, 1);
    let run = |out: &Path, seed: &str| {
        niclip(&[
            "train",
            "--text",
            s(&t),
            "--images",
            s(&i),
            "--out",
            s(out),
            "--epochs",
            "3",
            "--seed",
            seed,
            "--device",
            "cpu",
        ]);
        std::fs::read(out).unwrap()
    };
    let a = run(&dir.join("a.safetensors"), "5");
    let b = run(&dir.join("b.safetensors"), "5");
    let c = run(&dir.join("c.safetensors"), "6");
    assert_eq!(a, b, "two runs with the same seed differ");
    assert_ne!(a, c, "the seed changes nothing");
    std::fs::remove_dir_all(&dir).ok();
}

/// `niclip train` on synthetic pairs in a folder of its own, with --val or without: every run
/// of it writes `<stem>.safetensors` and `<stem>.csv` there.
struct Trainer {
    dir: PathBuf,
    base: Vec<String>,
}

impl Trainer {
    fn new(name: &str, val: bool, flags: &[&str]) -> Trainer {
        let dir = tmpdir(name);
        let (t, i) = pairs(&dir, "tr", 300, 40, 16, 2);
        let mut base = vec!["train".into(), "--text".into(), s(&t).into()];
        base.extend(["--images".into(), s(&i).into()]);
        if val {
            let (vt, vi) = pairs(&dir, "va", 100, 40, 16, 3);
            base.extend(["--val".into(), s(&vt).into(), s(&vi).into()]);
        }
        base.extend(
            flags
                .iter()
                .chain(&["--device", "cpu"])
                .map(|f| f.to_string()),
        );
        Trainer { dir, base }
    }

    fn command(&self, stem: &str, more: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_niclip"));
        c.args(&self.base).args(more);
        c.arg("--out")
            .arg(self.dir.join(format!("{stem}.safetensors")));
        c.arg("--metrics").arg(self.dir.join(format!("{stem}.csv")));
        c
    }

    /// Runs to the end; its stderr.
    fn run(&self, stem: &str, more: &[&str]) -> String {
        let out = self.command(stem, more).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{more:?} failed:\n{err}");
        err
    }

    /// Runs expecting an error; its stderr.
    fn fails(&self, stem: &str, more: &[&str]) -> String {
        let out = self.command(stem, more).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{more:?} did not fail:\n{err}");
        err
    }

    /// Starts a run and SIGKILLs it once `when(epoch of its checkpoint, a write of it under
    /// way)` holds (polled, with a deadline); its stderr.
    fn kill_when(
        &self,
        stem: &str,
        more: &[&str],
        when: impl Fn(Option<usize>, bool) -> bool,
    ) -> String {
        let mut child = self.command(stem, more);
        let mut child = child
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let ckpt = self.checkpoint(stem);
        let temp = self.dir.join(format!(
            "{}.tmp-{}",
            ckpt.file_name().unwrap().to_string_lossy(),
            child.id()
        ));
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let epoch = checkpoint_epoch(&ckpt);
            if when(epoch, temp.exists()) {
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("{more:?} ended ({status}) before its kill, checkpoint at epoch {epoch:?}: lengthen the run");
            }
            assert!(
                Instant::now() < deadline,
                "{more:?}: no kill point in 300 s, checkpoint at epoch {epoch:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        child.kill().unwrap();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            !out.status.success(),
            "{more:?} ended before its kill:\n{err}"
        );
        err
    }

    fn checkpoint(&self, stem: &str) -> PathBuf {
        self.dir
            .join(format!("{stem}.safetensors.ckpt.safetensors"))
    }

    /// The stem's model and metrics are byte for byte those of `full`.
    fn assert_same(&self, full: &str, stem: &str) {
        for ext in ["safetensors", "csv"] {
            assert_eq!(
                std::fs::read(self.dir.join(format!("{full}.{ext}"))).unwrap(),
                std::fs::read(self.dir.join(format!("{stem}.{ext}"))).unwrap(),
                "the resumed run's .{ext} differs"
            );
        }
    }

    /// Nothing half-written: no temporary file of an atomic write left in the folder.
    fn assert_no_temps(&self) {
        for e in std::fs::read_dir(&self.dir).unwrap() {
            let name = e.unwrap().file_name();
            assert!(!name.to_string_lossy().contains(".tmp-"), "{name:?} left");
        }
    }

    fn remove(self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// Stopped cleanly by --stop-after-batches, twice, then resumed to the end: the uninterrupted
/// run's model and metrics; and a checkpoint of other settings is refused.
fn stopped_and_resumed(name: &str, val: bool) {
    let flags = [
        "--epochs",
        "5",
        "--batch",
        "64",
        "--patience",
        "2",
        "--seed",
        "9",
    ];
    let job = Trainer::new(name, val, &flags);
    job.run("full", &[]);

    // 5 batches per epoch: stop 2 batches into epoch 3.
    let err = job.fails("cut", &["--stop-after-batches", "12"]);
    assert!(err.contains("--resume"), "{err}");
    let cut = job.dir.join("cut.safetensors");
    assert!(!cut.exists(), "a stopped run must not write its model");
    assert!(
        job.checkpoint("cut").is_file(),
        "no checkpoint after two finished epochs"
    );
    job.assert_no_temps();
    // A second interruption, then the resume to the end.
    job.fails("cut", &["--resume", "--stop-after-batches", "4"]);
    let log = job.run("cut", &["--resume"]);
    assert!(
        log.contains("after epoch 2"),
        "did not resume from the checkpoint: {log}"
    );
    job.assert_same("full", "cut");
    assert!(
        !job.checkpoint("cut").exists(),
        "the checkpoint is removed when training ends"
    );

    // A checkpoint of another job is refused.
    job.fails("cut", &["--stop-after-batches", "7"]);
    let err = job.fails("cut", &["--resume", "--lr", "1e-3"]);
    assert!(err.contains("different job"), "{err}");
    job.remove();
}

#[test]
fn stopped_and_resumed_run_equals_uninterrupted() {
    stopped_and_resumed("clip-resume", true);
}

/// Without --val the best validation loss stays +inf, which JSON cannot hold: the checkpoint
/// must still read back, and the resumed run give the uninterrupted run's model and metrics.
#[test]
fn stopped_and_resumed_run_without_val_equals_uninterrupted() {
    stopped_and_resumed("clip-resume-noval", false);
}

/// The epoch of the checkpoint at `path`, if there is one: read from its safetensors header
/// alone (the file is replaced by a rename, so it is always a whole one).
fn checkpoint_epoch(path: &Path) -> Option<usize> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).unwrap();
    let mut header = vec![0u8; u64::from_le_bytes(len) as usize];
    f.read_exact(&mut header).unwrap();
    let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
    let state = header["__metadata__"]["niclip_train_state"]
        .as_str()
        .unwrap();
    let state: serde_json::Value = serde_json::from_str(state).unwrap();
    Some(state["epoch"].as_u64().unwrap() as usize)
}

/// SIGKILLed before its first checkpoint, after epoch 1's and late (during a checkpoint write
/// when one is caught), each run with --resume after the kill before it, then resumed to the
/// end: the uninterrupted run's model and metrics, and no temporary file left.
fn killed_and_resumed(name: &str, val: bool) {
    const EPOCHS: usize = 400;
    let e = EPOCHS.to_string();
    let flags = [
        "--epochs",
        &e,
        "--batch",
        "32",
        "--patience",
        &e,
        "--seed",
        "9",
    ];
    // --patience as long as the run: no early stop before the last kill.
    let job = Trainer::new(name, val, &flags);
    let every = ["--checkpoint-every", "0"];
    let start = Instant::now();
    job.run("full", &every);
    let ckpt = job.checkpoint("cut");
    let resume = ["--checkpoint-every", "0", "--resume"];

    // Before any checkpoint: at once. The resume then starts over, and says so.
    job.kill_when("cut", &every, |_, _| true);
    assert!(!ckpt.exists(), "killed at once, yet a checkpoint");
    let log = job.kill_when("cut", &resume, |e, _| e >= Some(1));
    assert!(log.contains("no checkpoint"), "{log}");
    let first = checkpoint_epoch(&ckpt).unwrap();
    // Late: halfway, during the write of a checkpoint if one is seen under way.
    let log = job.kill_when("cut", &resume, |e, writing| {
        e >= Some(EPOCHS - 3) || (writing && e >= Some(EPOCHS / 2))
    });
    assert!(log.contains(&format!("after epoch {first}")), "{log}");
    let late = checkpoint_epoch(&ckpt).unwrap();
    eprintln!(
        "killed after epochs {first} and {late}, {:.2?} in all",
        start.elapsed()
    );
    assert!(late > first && late < EPOCHS, "{first} {late}");
    let log = job.run("cut", &resume);
    assert!(log.contains(&format!("after epoch {late}")), "{log}");
    job.assert_same("full", "cut");
    assert!(
        !ckpt.exists(),
        "the checkpoint is removed when training ends"
    );
    job.assert_no_temps();
    job.remove();
}

#[test]
fn killed_and_resumed_run_equals_uninterrupted() {
    killed_and_resumed("clip-kill", true);
}

#[test]
fn killed_and_resumed_run_without_val_equals_uninterrupted() {
    killed_and_resumed("clip-kill-noval", false);
}

#[test]
fn nested_cv_writes_metrics_and_eval_scores_a_model() {
    let dir = tmpdir("clip-cv");
    let (t, i) = pairs(&dir, "cv", 1250, 32, 16, 4);
    let out = dir.join("cv.safetensors");
    let metrics = dir.join("metrics.csv");
    niclip(&[
        "train",
        "--text",
        s(&t),
        "--images",
        s(&i),
        "--out",
        s(&out),
        "--cv",
        "--fold-size",
        "250",
        "--outer-folds",
        "2",
        "--inner-folds",
        "2",
        "--epochs",
        "3",
        "--metrics",
        s(&metrics),
        "--device",
        "cpu",
    ]);
    let csv = std::fs::read_to_string(&metrics).unwrap();
    assert!(csv.starts_with("fold,split,metric,value\n"), "{csv}");
    for want in [
        "0,test,recall@10,",
        "1,test,mix_match,",
        "mean,test,recall@100,",
        "sd,test,mix_match,",
        "1,validation,loss,",
    ] {
        assert!(csv.contains(want), "{want} missing:\n{csv}");
    }
    // Learned something: Mix&Match well above chance (50).
    let mm: f64 = csv
        .lines()
        .find(|l| l.starts_with("mean,test,mix_match,"))
        .unwrap()
        .rsplit(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(mm > 60.0, "{mm}");
    assert!(!dir.join("cv.safetensors.ckpt").exists());
    let model = Clip::load(&out).unwrap();
    assert_eq!((model.text_dim(), model.image_dim()), (32, 16));
    let m2 = dir.join("eval.csv");
    niclip(&[
        "eval",
        "retrieval",
        "--text",
        s(&t),
        "--images",
        s(&i),
        "--model",
        s(&out),
        "--metrics",
        s(&m2),
    ]);
    assert!(std::fs::read_to_string(&m2)
        .unwrap()
        .contains("all,all,recall@10,"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn rows_pair_by_id_and_bad_input_is_an_error() {
    let dir = tmpdir("clip-ids");
    let (t, i) = pairs(&dir, "ids", 200, 24, 8, 5);
    let ids: Vec<String> = (0..200).map(|r| format!("s{r}")).collect();
    write_ids(&niclip::io::ids_sidecar(&t), &ids).unwrap();
    // Images: the same ids but 20 missing and the rest reversed: still paired by id.
    let mut rev: Vec<String> = ids[20..].to_vec();
    rev.reverse();
    let im = niclip::io::read_npy_f32(&i).unwrap();
    let mut data = Vec::new();
    for id in &rev {
        let r: usize = id[1..].parse().unwrap();
        data.extend_from_slice(&im.data[r * 8..(r + 1) * 8]);
    }
    let i2 = dir.join("ids_images_rev.npy");
    write_npy_f32(&i2, &data, rev.len(), 8).unwrap();
    write_ids(&niclip::io::ids_sidecar(&i2), &rev).unwrap();
    let out = dir.join("m.safetensors");
    let err = niclip(&[
        "train",
        "--text",
        s(&t),
        "--images",
        s(&i2),
        "--out",
        s(&out),
        "--epochs",
        "1",
        "--device",
        "cpu",
    ]);
    assert!(
        err.contains("dropped 20 text rows and 0 image rows"),
        "{err}"
    );

    // Unequal rows without sidecars.
    let (t3, _) = pairs(&dir, "short", 150, 24, 8, 6);
    let err = niclip_fails(&[
        "train",
        "--text",
        s(&t3),
        "--images",
        s(&i),
        "--out",
        s(&out),
    ]);
    assert!(err.contains("rows") && err.starts_with("error:"), "{err}");
    // An --init of other widths.
    let err = niclip_fails(&[
        "train",
        "--text",
        s(&t),
        "--images",
        s(&i),
        "--out",
        s(&out),
        "--init",
        s(&common::fixtures().join("clip/init.safetensors")),
    ]);
    assert!(err.contains("--init"), "{err}");
    // Not a model.
    let err = niclip_fails(&[
        "eval",
        "retrieval",
        "--text",
        s(&t),
        "--images",
        s(&i),
        "--model",
        s(&t),
    ]);
    assert!(err.contains("safetensors"), "{err}");
    // Too few pairs for CV.
    let err = niclip_fails(&[
        "train",
        "--text",
        s(&t),
        "--images",
        s(&i),
        "--out",
        s(&out),
        "--cv",
    ]);
    assert!(err.contains("--fold-size"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
