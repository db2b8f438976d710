//! `niclip eval decoding`: its rankings are those `decode` and `baseline decode` print, and its
//! recalls follow from them.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;

fn model_flags(data: &Path) -> Vec<String> {
    let f = |n: &str| fixtures().join("decode").join(n).display().to_string();
    [
        "--model",
        &f("model.safetensors"),
        "--vocabulary",
        &f("vocabulary.txt"),
        "--vocabulary-emb",
        &f("vocabulary_emb.npy"),
        "--vocabulary-prior",
        &f("vocabulary_prior.npy"),
        "--ontology",
        &data.join("cogat").display().to_string(),
        "--reduced",
        "--atlas",
        &data
            .join("mni/HarvardOxford-cort-maxprob-thr25-2mm.nii.gz")
            .display()
            .to_string(),
        "--labels",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn names(v: &Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn recalls_follow_from_the_rankings_decode_prints() {
    let Some(data) = need_data() else {
        return;
    };
    let maps: Vec<String> = [
        "neurovault_10426_motor_left-vs-right_zmap.nii.gz",
        "nimare_amygdala_roi.nii.gz",
        "neurosynth_medial_motor.nii.gz",
    ]
    .iter()
    .map(|m| data.join("maps").join(m).display().to_string())
    .collect();
    let flags = model_flags(&data);
    let mut args: Vec<&str> = vec!["decode"];
    args.extend(maps.iter().map(String::as_str));
    args.extend(flags.iter().map(String::as_str));
    args.extend(["--format", "json", "--top", "20"]);
    let decoded: Value = serde_json::from_str(&niclip_stdout(&args)).unwrap();
    let decoded = decoded["maps"].as_array().unwrap();

    // Map 0: its top task and 3rd domain are true (found); map 1: its 5th task (not in the
    // top 4) and its 1st domain; map 2: nothing at the task level, its 10th domain (missed).
    let (t0, t1) = (names(&decoded[0], "tasks"), names(&decoded[1], "tasks"));
    let (d0, d1, d2) = (
        names(&decoded[0], "domains"),
        names(&decoded[1], "domains"),
        names(&decoded[2], "domains"),
    );
    let dir = tmpdir("eval-decoding");
    let truth = dir.join("truth.tsv");
    std::fs::write(
        &truth,
        format!(
            "path\ttask\tdomains\n{}\t{}\t{}\n{}\t{}\t{}\n{}\t\t{}\n",
            maps[0], t0[0], d0[2], maps[1], t1[4], d1[0], maps[2], d2[9]
        ),
    )
    .unwrap();

    let gclda = fixtures().join("baseline/gclda_nimare.safetensors");
    let out = dir.join("eval");
    let mut args: Vec<String> = vec![
        "eval".into(),
        "decoding".into(),
        "--truth".into(),
        truth.display().to_string(),
        "--baseline".into(),
        gclda.display().to_string(),
        "--permutations".into(),
        "200".into(),
        "--out".into(),
        out.display().to_string(),
    ];
    args.extend(flags);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let printed = niclip_stdout(&argv);
    assert!(printed.contains("niclip") && printed.contains("baseline:gclda_nimare"));

    let summary = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    let row = |decoder: &str, level: &str| -> Vec<String> {
        summary
            .lines()
            .find(|l| l.starts_with(&format!("{decoder},{level},")))
            .unwrap_or_else(|| panic!("no {decoder} {level} row in\n{summary}"))
            .split(',')
            .map(String::from)
            .collect()
    };
    // decoder,level,k,maps,recall,hit,null_recall,p,ratio,mrr
    let task = row("niclip", "task");
    assert_eq!((&task[2][..], &task[3][..]), ("4", "2"), "{task:?}");
    assert_eq!(task[4].parse::<f64>().unwrap(), 0.5);
    let domain = row("niclip", "domain");
    assert_eq!((&domain[2][..], &domain[3][..]), ("2", "3"), "{domain:?}");
    assert!((domain[4].parse::<f64>().unwrap() - 1.0 / 3.0).abs() < 1e-12);
    let concept = row("niclip", "concept");
    assert_eq!(&concept[3], "0", "no concept truth: {concept:?}");
    let p: f64 = task[7].parse().unwrap();
    assert!(p > 0.0 && p <= 1.0);
    // A task found in the top 4 of half the maps: its reciprocal rank is at least 1/4 there.
    let mrr: f64 = task[9].parse().unwrap();
    assert!((0.125..=1.0).contains(&mrr), "{task:?}");

    // Per term: each map's top 4 counted once per name, correct ones among them; the sums
    // agree with the maps (3 maps × 4 tasks predicted; task recall 0.5 of 2 maps = 1 hit).
    let per_term = std::fs::read_to_string(out.join("per_term.csv")).unwrap();
    let niclip_tasks: Vec<Vec<&str>> = per_term
        .lines()
        .filter(|l| l.starts_with("niclip,task,"))
        .map(|l| l.rsplitn(4, ',').collect())
        .collect();
    let sum = |i: usize| -> usize {
        niclip_tasks
            .iter()
            .map(|r| r[i].parse::<usize>().unwrap())
            .sum()
    };
    assert_eq!((sum(2), sum(1), sum(0)), (12, 2, 1), "{per_term}");

    // The baseline's task ranking is what `baseline decode` prints for the same map.
    let printed = niclip_stdout(&[
        "baseline",
        "decode",
        gclda.to_str().unwrap(),
        &maps[0],
        "--format",
        "json",
        "--top",
        "4",
    ]);
    let b: Value = serde_json::from_str(&printed).unwrap();
    let top4 = names(&b["maps"][0], "tasks").join(";");
    let per_map = std::fs::read_to_string(out.join("per_map.csv")).unwrap();
    assert!(
        per_map
            .lines()
            .any(|l| l.starts_with("baseline:gclda_nimare,")
                && l.contains(",task,")
                && l.contains(&top4)),
        "baseline top 4 {top4:?} not in\n{per_map}"
    );
}

#[test]
fn a_truth_file_without_task_column_says_what_to_write() {
    let dir = tmpdir("eval-truth");
    let truth = dir.join("truth.tsv");
    std::fs::write(&truth, "map,label\nx.nii.gz,motor\n").unwrap();
    let err = niclip_fails(&["eval", "decoding", "--truth", truth.to_str().unwrap()]);
    assert!(
        err.contains("truth.tsv") && err.contains("path<TAB>task"),
        "{err}"
    );
}

/// The shipped truth file named maps as `../../shared/data/...`, which resolved only in one
/// layout; its maps now sit beside it, so the README's command runs from any folder.
#[test]
fn the_example_truth_file_works_from_any_folder() {
    let dir = tmpdir("eval-example");
    let truth = repo().join("examples/truth.tsv").display().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_niclip"))
        .current_dir(&dir)
        .args([
            "eval",
            "decoding",
            "--truth",
            &truth,
            "--reduced",
            "--permutations",
            "10",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("niclip"), "{stdout}");
}

/// `eval decoding` decoded every map as it is, so a preparation (tail, flip, top-P % ROI)
/// could not be chosen by evaluation; it takes decode's flags now, for niclip's input.
#[test]
fn eval_decoding_prepares_maps_as_decode_does() {
    let dir = tmpdir("eval-variant");
    let truth = repo().join("examples/truth.tsv").display().to_string();
    let per_map = |name: &str, extra: &[&str]| {
        let out = dir.join(name).display().to_string();
        let mut args = vec![
            "eval",
            "decoding",
            "--truth",
            &truth,
            "--permutations",
            "10",
        ];
        args.extend(["--out", &out]);
        args.extend(extra);
        niclip(&args);
        std::fs::read_to_string(dir.join(name).join("per_map.csv")).unwrap()
    };
    let plain = per_map("plain", &[]);
    let roi = per_map("roi", &["--percentile", "5"]);
    assert_ne!(plain, roi, "--percentile 5 changed no ranking");
    let err = niclip_fails(&["eval", "decoding", "--truth", &truth, "--percentile", "0"]);
    assert!(err.contains("--percentile"), "{err}");
}

/// A truth name the decoder never outputs ("Executive/Cognitive Control" for "Executive
/// cognitive control") scored a silent 0 at every map.
#[test]
fn truth_names_the_decoder_never_outputs_are_warned() {
    let dir = tmpdir("eval-unknown");
    let map = repo().join("examples/nimare_amygdala_roi.nii.gz");
    let truth = dir.join("truth.tsv");
    std::fs::write(
        &truth,
        format!(
            "path\ttask\tconcepts\tdomains\n{}\temotion processing fMRI task paradigm\temotion\tExecutive/Cognitive Control;Emotion\n",
            map.display()
        ),
    )
    .unwrap();
    let t = truth.display().to_string();
    let err = niclip(&["eval", "decoding", "--truth", &t, "--permutations", "10"]);
    assert!(
        err.contains("1 domain name(s) that niclip never outputs")
            && err.contains("Executive/Cognitive Control"),
        "{err}"
    );
    assert!(
        !err.contains("task name(s)") && !err.contains("concept name(s)"),
        "{err}"
    );
}
