//! `niclip decode` against a faithful Python rewrite of braindec's `image_to_labels_hierarchical`
//! (tests/fixtures/make_decode_fixtures.py): same tasks, concepts and domains, same order, the
//! same probabilities within 1e-5, on real maps, the real reduced ontology and the real
//! Harvard-Oxford atlas.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const TOL: f64 = 1e-5;

fn fixture(name: &str) -> String {
    fixtures().join("decode").join(name).display().to_string()
}

/// The flags naming the fixture model, vocabulary, prior, reduced ontology and atlas.
fn model_flags(data: &Path) -> Vec<String> {
    [
        "--model",
        &fixture("model.safetensors"),
        "--vocabulary",
        &fixture("vocabulary.txt"),
        "--vocabulary-emb",
        &fixture("vocabulary_emb.npy"),
        "--vocabulary-prior",
        &fixture("vocabulary_prior.npy"),
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

fn decode_json(args: &[String]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_niclip"))
        .arg("decode")
        .args(args)
        .args(["--format", "json"])
        .output()
        .expect("run niclip");
    assert!(
        out.status.success(),
        "niclip decode failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("decode --format json prints JSON")
}

fn f(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// Same names in the same order, allowing swaps only between entries whose expected
/// probabilities tie (within TOL); every probability within TOL. Returns the largest error.
fn same_ranking(what: &str, ours: &[Value], theirs: &[Value], n: usize) -> f64 {
    assert!(ours.len() >= n && theirs.len() >= n, "{what}: too few rows");
    let mut worst = 0.0f64;
    for i in 0..n {
        let (o, t) = (&ours[i], &theirs[i]);
        let (po, pt) = (f(o, "probability"), f(t, "prob"));
        let err = (po - pt).abs();
        worst = worst.max(err);
        assert!(
            err <= TOL,
            "{what} #{i}: {po} vs {pt} ({} / {})",
            o["name"],
            t["pred"]
        );
        if o["name"] != t["pred"] {
            // A tie: the name must be among the expected rows of (nearly) equal probability.
            let tied = theirs
                .iter()
                .any(|x| x["pred"] == o["name"] && (f(x, "prob") - pt).abs() <= TOL);
            assert!(
                tied,
                "{what} #{i}: {} where braindec ranks {}",
                o["name"], t["pred"]
            );
        }
    }
    worst
}

#[test]
fn decode_matches_braindec() {
    let Some(data) = need_data() else {
        return;
    };
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap();
    let mut worst = [0.0f64; 4];
    let mut cases = 0;
    for case in expected["maps"].as_array().unwrap() {
        let map = data.join(case["map"].as_str().unwrap());
        let mut args = vec![map.display().to_string()];
        args.extend(model_flags(&data));
        args.extend(["--top".into(), "10".into()]);
        if let Some(s) = case["logit_scale_arg"].as_f64() {
            args.extend(["--logit-scale".into(), s.to_string()]);
        }
        let tail = case["tail"].as_str().unwrap();
        args.extend(["--tail".into(), tail.into()]);
        let got = decode_json(&args);
        let m = &got["maps"][0];
        let what = format!("{} (tail {tail}, s {})", case["map"], case["logit_scale"]);

        let (ot, tt) = (
            m["tasks"].as_array().unwrap(),
            case["tasks"].as_array().unwrap(),
        );
        worst[0] = worst[0].max(same_ranking(&format!("{what} tasks"), ot, tt, 10));
        for (o, t) in ot.iter().zip(tt) {
            if o["name"] != t["pred"] {
                continue;
            }
            for (ours, theirs) in [
                ("likelihood", "likelihood"),
                ("prior", "prior_prob"),
                ("joint", "joint_prob"),
            ] {
                let e = (f(o, ours) - f(t, theirs)).abs();
                assert!(
                    e <= TOL,
                    "{what} {}: {ours} {} vs {}",
                    t["pred"],
                    f(o, ours),
                    f(t, theirs)
                );
            }
            let s = (f(o, "similarity") - f(t, "similarity")).abs();
            worst[3] = worst[3].max(s);
            assert!(
                s <= 1e-4,
                "{what} {}: similarity {} vs {}",
                t["pred"],
                f(o, "similarity"),
                f(t, "similarity")
            );
            let bf = (f(o, "bayes_factor") / f(t, "bayes_factor") - 1.0).abs();
            assert!(
                bf <= 1e-4,
                "{what} {}: bayes factor off by {bf:e} (relative)",
                t["pred"]
            );
        }
        let (oc, tc) = (
            m["concepts"].as_array().unwrap(),
            case["concepts"].as_array().unwrap(),
        );
        worst[1] = worst[1].max(same_ranking(&format!("{what} concepts"), oc, tc, 10));
        let (od, td) = (
            m["domains"].as_array().unwrap(),
            case["domains"].as_array().unwrap(),
        );
        assert_eq!(od.len(), 10, "all 10 domains are listed");
        worst[2] = worst[2].max(same_ranking(&format!("{what} domains"), od, td, 10));
        cases += 1;
    }
    assert_eq!(cases, 9);
    eprintln!(
        "decode parity over {cases} decodings: max |Δp| tasks {:.2e}, concepts {:.2e}, domains {:.2e}; max |Δ similarity| {:.2e}",
        worst[0], worst[1], worst[2], worst[3]
    );
}

#[test]
fn many_maps_in_one_call_equal_one_map_per_call() {
    let Some(data) = need_data() else {
        return;
    };
    let maps: Vec<PathBuf> = [
        "maps/neurovault_10426_motor_left-vs-right_zmap.nii.gz",
        "maps/neurosynth_vmPFC.nii.gz",
        "maps/nimare_amygdala_roi.nii.gz",
    ]
    .iter()
    .map(|m| data.join(m))
    .collect();
    let mut args: Vec<String> = maps.iter().map(|m| m.display().to_string()).collect();
    args.extend(model_flags(&data));
    let all = decode_json(&args);
    assert_eq!(all["maps"].as_array().unwrap().len(), 3);
    for (i, m) in maps.iter().enumerate() {
        let mut one = vec![m.display().to_string()];
        one.extend(model_flags(&data));
        let single = decode_json(&one);
        let (a, b) = (&all["maps"][i], &single["maps"][0]);
        assert_eq!(a["map"], b["map"]);
        for level in ["tasks", "concepts", "domains"] {
            for (x, y) in a[level]
                .as_array()
                .unwrap()
                .iter()
                .zip(b[level].as_array().unwrap())
            {
                // The towers run as one batch: rounding may differ in the last bits only.
                let e = (f(x, "probability") - f(y, "probability")).abs();
                assert!(e < 1e-6, "map {i} {level}: {x} vs {y}");
            }
        }
    }
}

#[test]
fn prior_from_documents_matches_the_reference() {
    let emb = niclip::io::read_npy_f32(Path::new(&fixture("vocabulary_emb.npy"))).unwrap();
    let docs = niclip::io::read_npy_f32(Path::new(&fixture("documents.npy"))).unwrap();
    let want = niclip::io::read_npy_f32(Path::new(&fixture("vocabulary_prior.npy"))).unwrap();
    let got = niclip::decode::vocabulary::prior_from_documents(&emb.data, &docs.data, emb.cols);
    assert_eq!(got.len(), want.data.len());
    let err = got
        .iter()
        .zip(&want.data)
        .map(|(a, b)| (a - *b as f64).abs())
        .fold(0.0, f64::max);
    assert!(err < 1e-7, "prior differs by {err:e}");
    assert!((got.iter().sum::<f64>() - 1.0).abs() < 1e-12);
}

#[test]
fn real_maps_in_one_call_write_tables_and_pictures() {
    let Some(data) = need_data() else {
        return;
    };
    let dir = tmpdir("decode-real");
    let maps: Vec<String> = std::fs::read_dir(data.join("maps"))
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .filter(|p| p.ends_with(".nii.gz"))
        .collect();
    assert_eq!(maps.len(), 5);
    let mut args: Vec<String> = vec!["decode".into()];
    args.extend(maps.iter().cloned());
    args.extend(model_flags(&data));
    let out = dir.join("tables");
    let plot = dir.join("fig.png");
    args.extend([
        "--out".into(),
        out.display().to_string(),
        "--plot".into(),
        plot.display().to_string(),
        "--format".into(),
        "csv".into(),
    ]);
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    niclip(&a);
    for m in &maps {
        let stem = Path::new(m)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches(".nii.gz")
            .to_string();
        for f in [
            format!("{stem}_task_predictions.csv"),
            format!("{stem}_concept_predictions.csv"),
            format!("{stem}_process_predictions.csv"),
            format!("{stem}.json"),
        ] {
            assert!(out.join(&f).is_file(), "{f} missing");
        }
        let head =
            std::fs::read_to_string(out.join(format!("{stem}_task_predictions.csv"))).unwrap();
        assert!(head
            .starts_with("pred,prob,similarity,likelihood,prior_prob,joint_prob,bayes_factor\n"));
        for pic in [format!("fig-{stem}.png"), format!("fig-{stem}-slices.png")] {
            let bytes = std::fs::read(dir.join(&pic)).unwrap_or_else(|_| panic!("{pic} missing"));
            assert!(bytes.starts_with(b"\x89PNG"), "{pic} is not a PNG");
        }
    }

    // The motor z-map's top 1 % as a binary ROI, pictured as SVG.
    let svg = dir.join("motor.svg");
    let motor = data.join("maps/neurovault_10426_motor_left-vs-right_zmap.nii.gz");
    let mut args = vec!["decode".to_string(), motor.display().to_string()];
    args.extend(model_flags(&data));
    args.extend([
        "--percentile".into(),
        "1".into(),
        "--plot".into(),
        svg.display().to_string(),
    ]);
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    niclip(&a);
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("Tasks  P(T|A)") && text.contains("top 1% as ROI"));
    let slices = std::fs::read_to_string(dir.join("motor-slices.svg")).unwrap();
    assert!(slices.contains("data:image/png;base64,") && slices.contains("ROI centre at MNI"));
}
