//! The Cognitive Atlas in its three layouts: the full dump, braindec's snapshots and the
//! paper's reduced table.

mod common;

use common::*;
use niclip::decode::Ontology;
use serde_json::Value;

#[test]
fn the_full_dump_links_tasks_to_concepts_through_asserts_and_assertions() {
    let Some(data) = need_data() else {
        return;
    };
    let o = Ontology::load(&data.join("cogat/cognitive_atlas_dump"), false).unwrap();
    // 853 tasks, of which one has no definition and one no name.
    assert_eq!(o.tasks.len(), 851);
    assert!(o.warnings[0].starts_with("2 tasks without a name or a definition were dropped"));
    let links: usize = o.task_concepts.iter().map(Vec::len).sum();
    assert!(links > 1100, "{links} task → concept links");
    let stroop = o
        .tasks
        .iter()
        .position(|t| t.name == "stop signal task")
        .unwrap();
    let names: Vec<&str> = o.task_concepts[stroop]
        .iter()
        .map(|&c| o.concepts[c as usize].name.as_str())
        .collect();
    assert!(names.contains(&"response inhibition"), "{names:?}");
    // Every concept with a class has a domain.
    assert!(o.concepts.iter().filter(|c| c.domain.is_some()).count() > 400);
}

#[test]
fn the_reduced_table_keeps_its_tasks_and_reports_unknown_names() {
    let Some(data) = need_data() else {
        return;
    };
    let o = Ontology::load(&data.join("cogat"), true).unwrap();
    assert_eq!(o.tasks.len(), 88);
    assert!(o.task_concepts.iter().all(|c| c.len() <= 3));
    let w = o.warnings.join("\n");
    assert!(
        w.contains("19 concept names not in the concept snapshot"),
        "{w}"
    );
    assert!(
        w.contains("reponse inhibition (task stop signal task)"),
        "{w}"
    );
    // Domains come from the categories mapping: "response inhibition" is executive control.
    let ri = o
        .concepts
        .iter()
        .find(|c| c.name == "response inhibition")
        .unwrap();
    assert_eq!(ri.domain, Some(3));
}

#[test]
fn braindec_snapshots_are_read_as_braindec_reads_them() {
    let Some(data) = need_data() else {
        return;
    };
    // braindec's layout, made from the dump: lists of entries, a clean reduced_tasks.csv and
    // concept_to_process.json (concept name → class id).
    let dir = tmpdir("braindec-layout");
    let dump = data.join("cogat/cognitive_atlas_dump");
    for (src, dst) in [
        ("TaskCollection.json", "task_snapshot-02-19-25.json"),
        (
            "ConceptCollection.json",
            "concept_extended_snapshot-02-19-25.json",
        ),
    ] {
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(dump.join(src)).unwrap()).unwrap();
        std::fs::write(dir.join(dst), serde_json::to_string(&v["entries"]).unwrap()).unwrap();
    }
    std::fs::write(
        dir.join("reduced_tasks.csv"),
        "task,concept_1,concept_2,concept_3\nstop signal task,response inhibition,,\nn-back task,working memory,updating,\nno such task,memory,,\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("concept_to_process.json"),
        r#"{"working memory": "ctp_C2"}"#,
    )
    .unwrap();
    let o = Ontology::load(&dir, true).unwrap();
    let names: Vec<&str> = o.tasks.iter().map(|t| t.name.as_str()).collect();
    // Snapshot order, not table order; the unknown task is reported.
    assert_eq!(names.len(), 2);
    assert!(names.contains(&"stop signal task") && names.contains(&"n-back task"));
    assert!(o.warnings.iter().any(|w| w.contains("no such task")));
    let wm = o
        .concepts
        .iter()
        .find(|c| c.name == "working memory")
        .unwrap();
    assert_eq!(wm.domain, Some(1), "concept_to_process overrides the class");
    let nback = names.iter().position(|&n| n == "n-back task").unwrap();
    assert_eq!(o.task_concepts[nback].len(), 2);

    // Without the reduced table --reduced says what is missing.
    std::fs::remove_file(dir.join("reduced_tasks.csv")).unwrap();
    let err = Ontology::load(&dir, true).unwrap_err().to_string();
    assert!(
        err.contains("--reduced needs a reduced task table"),
        "{err}"
    );
}
