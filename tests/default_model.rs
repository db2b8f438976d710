//! The shipped default model: `niclip decode MAP` with no model flags works from the repository
//! alone (no ../shared, no cache, nothing under $HOME) and decodes the example motor map as a
//! motor map.

mod common;
use common::*;
use serde_json::Value;
use std::process::Command;

fn decode_default(extra: &[&str], home: &std::path::Path) -> Value {
    let map = repo().join("examples/neurovault_10426_motor_left-vs-right_zmap.nii.gz");
    let out = Command::new(env!("CARGO_BIN_EXE_niclip"))
        .arg("decode")
        .arg(&map)
        .args(["--format", "json", "--top", "10"])
        .args(extra)
        // Nothing of the user's: an empty home, no cache or asset overrides.
        .env("HOME", home)
        .env_remove("XDG_CACHE_HOME")
        .env_remove("NICLIP_CACHE_DIR")
        .env_remove("NICLIP_ASSETS")
        .output()
        .expect("run niclip");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn names(v: &Value, key: &str) -> Vec<String> {
    v["maps"][0][key]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_example_motor_map_decodes_as_motor_from_the_repository_alone() {
    let home = tmpdir("default-home");
    let full = decode_default(&[], &home);
    assert_eq!(names(&full, "tasks").len(), 10);
    assert_eq!(names(&full, "domains").len(), 10);
    assert_eq!(names(&full, "domains")[0], "Action", "{full}");

    let reduced = decode_default(&["--reduced"], &home);
    let tasks = names(&reduced, "tasks");
    assert!(
        tasks[..4].iter().any(|t| t == "motor fMRI task paradigm"),
        "motor task not in the top 4: {tasks:?}"
    );
    let probs: Vec<f64> = reduced["maps"][0]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["probability"].as_f64().unwrap())
        .collect();
    assert!(probs.windows(2).all(|w| w[0] >= w[1]), "{probs:?}");

    // Nothing was written under the (empty) home: no cache, no materialised assets.
    let left: Vec<_> = std::fs::read_dir(&home).unwrap().collect();
    assert!(left.is_empty(), "decode wrote under $HOME: {left:?}");
}

/// Every default decode printed two warnings about the shipped ontology (2 unnamed tasks; with
/// --reduced a 1,000-character line of 19 misspelt concepts) that no user can act on.
#[test]
fn the_default_model_prints_no_warnings() {
    let map = repo().join("examples/neurovault_10426_motor_left-vs-right_zmap.nii.gz");
    for extra in [&[][..], &["--reduced"][..]] {
        let out = Command::new(env!("CARGO_BIN_EXE_niclip"))
            .arg("decode")
            .arg(&map)
            .args(extra)
            .output()
            .expect("run niclip");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(!stderr.contains("warning"), "{extra:?}: {stderr}");
    }
}
