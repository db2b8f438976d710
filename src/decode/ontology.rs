//! The Cognitive Atlas as the decoder sees it: tasks (name + definition, the vocabulary), the
//! concepts they measure, and the 10 domains (concept classes) the concepts belong to.
//!
//! Three on-disk layouts are read, found in `--ontology DIR` or its immediate sub-folders:
//! - the full dump (`TaskCollection.json`, `ConceptCollection.json`, `AssertionCollection.json`
//!   as in CognitiveAtlas/legacy_cogat_linkml): task → concept links are the tasks' `asserts`
//!   plus every assertion whose subject is a concept and whose predicate is a task;
//! - the authors' (braindec) snapshots: `task_snapshot-*.json`, `concept_extended_snapshot-*.json`
//!   (or `concept_snapshot-*.json`), `reduced_tasks.csv` (task, concept_1..3) and an optional
//!   `concept_to_process.json` (concept name → class id or domain name);
//! - the paper's reduced ontology from Parietal-INRIA/fmri_decoding:
//!   `cogatlas_tasks_concepts_bertrand_mini.csv` (task, 3 concepts), `concepts.json`,
//!   `cogatlas_concepts_categories_mapping.json` (concept name → domain name).
//!
//! As braindec's `CognitiveAtlas`: tasks and concepts without a name or a definition are dropped;
//! `reduced` keeps the tasks of the reduced table (in the snapshot's order) and takes the links
//! from its concept columns only; a concept's domain is its `id_concept_class`, overridden by the
//! concept → domain mapping when one is present.

use crate::error::{Error, IoContext, Result};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The 10 concept classes, in class-id order (ctp_C1 … ctp_C10), with braindec's names.
pub const DOMAINS: [&str; 10] = [
    "Perception",
    "Attention",
    "Reasoning and decision making",
    "Executive cognitive control",
    "Learning and memory",
    "Language",
    "Action",
    "Emotion",
    "Social function",
    "Motivation",
];

#[derive(Clone, Debug)]
pub struct Task {
    pub id: String,
    pub name: String,
    pub definition: String,
}

#[derive(Clone, Debug)]
pub struct Concept {
    pub id: String,
    pub name: String,
    /// Index into `DOMAINS`, or None for a concept without a class.
    pub domain: Option<usize>,
}

#[derive(Clone, Debug)]
pub struct Ontology {
    pub tasks: Vec<Task>,
    pub concepts: Vec<Concept>,
    /// Per task, the concepts it measures (indices into `concepts`, ascending).
    pub task_concepts: Vec<Vec<u32>>,
    /// What was dropped or could not be resolved while reading (shown to the user).
    pub warnings: Vec<String>,
}

/// The files of one ontology, wherever in DIR (or one level below) they were found.
#[derive(Debug, Default)]
struct Found {
    tasks: Option<PathBuf>,
    concepts: Option<PathBuf>,
    assertions: Option<PathBuf>,
    reduced: Option<PathBuf>,
    concept_domains: Option<PathBuf>,
}

impl Found {
    fn scan(dir: &Path) -> Result<Found> {
        let mut found = Found::default();
        let mut dirs = vec![dir.to_path_buf()];
        let mut subs: Vec<PathBuf> = std::fs::read_dir(dir)
            .at(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        subs.sort();
        dirs.extend(subs);
        for d in &dirs {
            let mut files: Vec<PathBuf> = match std::fs::read_dir(d) {
                Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
                Err(_) => continue,
            };
            files.sort();
            for f in files {
                let name = f
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("")
                    .to_string();
                let slot = match name.as_str() {
                    "TaskCollection.json" => &mut found.tasks,
                    n if n.starts_with("task_snapshot") && n.ends_with(".json") => &mut found.tasks,
                    "ConceptCollection.json" => &mut found.concepts,
                    n if n.starts_with("concept_extended_snapshot") && n.ends_with(".json") => {
                        // The extended snapshot wins over a plain one found earlier.
                        found.concepts = Some(f.clone());
                        continue;
                    }
                    n if n.starts_with("concept_snapshot") && n.ends_with(".json") => {
                        &mut found.concepts
                    }
                    "concepts.json" => &mut found.concepts,
                    "AssertionCollection.json" => &mut found.assertions,
                    "reduced_tasks.csv" | "cogatlas_tasks_concepts_bertrand_mini.csv" => {
                        &mut found.reduced
                    }
                    "concept_to_process.json" | "cogatlas_concepts_categories_mapping.json" => {
                        &mut found.concept_domains
                    }
                    _ => continue,
                };
                if slot.is_none() {
                    *slot = Some(f);
                }
            }
        }
        Ok(found)
    }
}

/// A name as compared across files: case, surrounding blanks, runs of spaces, curly quotes and
/// the HTML apostrophe (`&#39;`, also as `&#39,` after a CSV round trip mangled its `;`) ignored.
pub fn name_key(name: &str) -> String {
    let s = name
        .replace("&#39;", "'")
        .replace("&#39,", "'")
        .replace(['\u{2019}', '\u{2018}'], "'");
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// The fields of a snapshot entry (task, concept or assertion) the decoder reads; others are
/// skipped unparsed.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Entry {
    id: Option<String>,
    name: Option<String>,
    definition_text: Option<String>,
    id_concept_class: Option<String>,
    /// Dump tasks: the concepts they measure.
    asserts: Vec<Link>,
    /// API snapshots: a task's concepts.
    concepts: Vec<Link>,
    /// Assertions: concept (subject) measured by task (predicate).
    subject: Vec<Link>,
    predicate: Vec<Link>,
}

/// An id, or an object holding one (`concept_id` or `id`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Link {
    Id(String),
    Object {
        #[serde(alias = "id")]
        concept_id: String,
    },
    Other(serde::de::IgnoredAny),
}

impl Link {
    fn id(&self) -> Option<&str> {
        match self {
            Link::Id(s) | Link::Object { concept_id: s } => Some(s),
            Link::Other(_) => None,
        }
    }
}

fn ids(links: &[Link]) -> impl Iterator<Item = &str> {
    links.iter().filter_map(Link::id)
}

#[derive(Deserialize)]
struct Wrapped {
    entries: Vec<Entry>,
}

fn read_json_entries(path: &Path) -> Result<Vec<Entry>> {
    let text = std::fs::read_to_string(path).at(path)?;
    let bad = |e: serde_json::Error| {
        Error::input(
            path,
            format!("expected a JSON list of entries or {{\"entries\": [...]}} (a Cognitive Atlas snapshot): {e}"),
        )
    };
    if text.trim_start().starts_with('[') {
        serde_json::from_str::<Vec<Entry>>(&text).map_err(bad)
    } else {
        Ok(serde_json::from_str::<Wrapped>(&text).map_err(bad)?.entries)
    }
}

fn text_field(v: &Option<String>) -> String {
    v.as_deref().unwrap_or("").trim().to_string()
}

fn domain_index(value: &str) -> Option<usize> {
    let v = value.trim();
    if let Some(n) = v
        .strip_prefix("ctp_C")
        .and_then(|n| n.parse::<usize>().ok())
    {
        return (1..=10).contains(&n).then(|| n - 1);
    }
    // Domain names as spelled by braindec and by the Cognitive Atlas ("Executive/Cognitive
    // Control", "Reasoning and Decision Making").
    let key = name_key(&v.replace(['/', '-'], " "));
    DOMAINS.iter().position(|d| name_key(d) == key)
}

/// The reduced table: task name and up to three concept names per row. Accepts braindec's
/// `task, concept_1, concept_2, concept_3` and fmri_decoding's `Tasks NV, Concept 1, …`.
fn read_reduced(path: &Path) -> Result<Vec<(String, Vec<String>)>> {
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .map_err(|e| Error::input(path, format!("cannot read the reduced task table: {e}")))?;
    let headers = rdr
        .headers()
        .map_err(|e| Error::input(path, format!("no header row: {e}")))?
        .clone();
    let norm = |h: &str| h.trim().to_lowercase().replace([' ', '_'], "");
    let task_col = headers
        .iter()
        .position(|h| matches!(norm(h).as_str(), "task" | "tasks" | "tasksnv"))
        .unwrap_or(0);
    let concept_cols: Vec<usize> = headers
        .iter()
        .enumerate()
        .filter(|(_, h)| norm(h).starts_with("concept"))
        .map(|(i, _)| i)
        .collect();
    if concept_cols.is_empty() {
        return Err(Error::input(
            path,
            "the reduced task table needs concept columns (concept_1, concept_2, concept_3)",
        ));
    }
    let mut rows = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| Error::input(path, format!("bad row: {e}")))?;
        let task = rec.get(task_col).unwrap_or("").trim().to_string();
        if task.is_empty() {
            continue;
        }
        let concepts = concept_cols
            .iter()
            .filter_map(|&c| rec.get(c))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        rows.push((task, concepts));
    }
    Ok(rows)
}

fn missing(dir: &Path, what: &str) -> Error {
    Error::input(
        dir,
        format!("no {what} found here or one folder below; give the Cognitive Atlas dump (TaskCollection.json, ConceptCollection.json) or braindec's snapshots (task_snapshot-*.json, concept_extended_snapshot-*.json)"),
    )
}

/// The entries with an id, a name and a definition (trimmed), each made into a `T`; the others
/// are dropped, as braindec does, and counted in a warning.
fn keep_named<T>(
    entries: &[Entry],
    what: &str,
    path: &Path,
    warnings: &mut Vec<String>,
    make: impl Fn(&Entry, String, String, String) -> T,
) -> Vec<T> {
    let mut kept = Vec::new();
    let mut dropped = 0;
    for e in entries {
        let (id, name, definition) = (
            text_field(&e.id),
            text_field(&e.name),
            text_field(&e.definition_text),
        );
        if name.is_empty() || definition.is_empty() || id.is_empty() {
            dropped += 1;
        } else {
            kept.push(make(e, id, name, definition));
        }
    }
    if dropped > 0 {
        warnings.push(format!(
            "{dropped} {what} without a name or a definition were dropped ({})",
            path.display()
        ));
    }
    kept
}

/// Tasks in file order, and the concept ids each links to.
fn read_tasks(
    entries: &[Entry],
    path: &Path,
    warnings: &mut Vec<String>,
) -> (Vec<Task>, Vec<Vec<String>>) {
    keep_named(
        entries,
        "tasks",
        path,
        warnings,
        |e, id, name, definition| {
            let links: Vec<String> = ids(&e.asserts)
                .chain(ids(&e.concepts))
                .map(str::to_string)
                .collect();
            (
                Task {
                    id,
                    name,
                    definition,
                },
                links,
            )
        },
    )
    .into_iter()
    .unzip()
}

/// Concepts in file order, each in the domain of its class id.
fn read_concepts(entries: &[Entry], path: &Path, warnings: &mut Vec<String>) -> Vec<Concept> {
    keep_named(entries, "concepts", path, warnings, |e, id, name, _| {
        let domain = domain_index(&text_field(&e.id_concept_class));
        Concept { id, name, domain }
    })
}

/// A concept name → domain mapping (JSON object) overriding the concepts' classes.
fn map_domains(
    path: &Path,
    concepts: &mut [Concept],
    concept_by_key: &HashMap<String, usize>,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let text = std::fs::read_to_string(path).at(path)?;
    let map: HashMap<String, String> = serde_json::from_str(&text).map_err(|e| {
        Error::input(
            path,
            format!("expected a JSON object concept name → domain ({e})"),
        )
    })?;
    let mut bad = Vec::new();
    for (name, dom) in &map {
        match (concept_by_key.get(&name_key(name)), domain_index(dom)) {
            (Some(&c), Some(d)) => concepts[c].domain = Some(d),
            (_, None) => bad.push(format!("{name} → {dom}")),
            (None, _) => {} // a concept this snapshot lacks: nothing to map.
        }
    }
    if !bad.is_empty() {
        bad.sort();
        warnings.push(format!(
            "{}: {} domains not recognised (kept the concept's class): {}",
            path.display(),
            bad.len(),
            bad.join("; ")
        ));
    }
    Ok(())
}

/// The reduced task set: the tasks of the table at `path` (others removed from `tasks`), each
/// linked to the concepts its row names.
fn reduced_links(
    path: &Path,
    tasks: &mut Vec<Task>,
    concept_by_key: &HashMap<String, usize>,
    warnings: &mut Vec<String>,
) -> Result<Vec<Vec<u32>>> {
    let rows = read_reduced(path)?;
    let task_by_key: HashMap<String, usize> = tasks
        .iter()
        .enumerate()
        .rev()
        .map(|(i, t)| (name_key(&t.name), i))
        .collect();
    let mut task_concepts: Vec<Vec<u32>> = vec![Vec::new(); tasks.len()];
    let mut keep = vec![false; tasks.len()];
    let (mut bad_tasks, mut bad_concepts) = (Vec::new(), Vec::new());
    for (task, cs) in &rows {
        let Some(&t) = task_by_key.get(&name_key(task)) else {
            bad_tasks.push(task.clone());
            continue;
        };
        keep[t] = true;
        for c in cs {
            match concept_by_key.get(&name_key(c)) {
                Some(&ci) => task_concepts[t].push(ci as u32),
                None => bad_concepts.push(format!("{c} (task {task})")),
            }
        }
    }
    if !bad_tasks.is_empty() {
        warnings.push(format!(
            "{}: {} tasks not in the task snapshot (or without a definition), left out: {}",
            path.display(),
            bad_tasks.len(),
            bad_tasks.join("; ")
        ));
    }
    if !bad_concepts.is_empty() {
        warnings.push(format!(
            "{}: {} concept names not in the concept snapshot, links dropped: {}",
            path.display(),
            bad_concepts.len(),
            bad_concepts.join("; ")
        ));
    }
    let mut t = 0;
    tasks.retain(|_| {
        t += 1;
        keep[t - 1]
    });
    let mut t = 0;
    task_concepts.retain(|_| {
        t += 1;
        keep[t - 1]
    });
    Ok(task_concepts)
}

/// The full ontology's links: each task's own concept links, plus every assertion whose
/// subject is a concept and whose predicate is a task.
fn full_links(
    tasks: &[Task],
    task_asserts: &[Vec<String>],
    concepts: &[Concept],
    assertions: Option<&[Entry]>,
) -> Vec<Vec<u32>> {
    let concept_by_id: HashMap<&str, usize> = concepts
        .iter()
        .enumerate()
        .map(|(i, c)| (c.id.as_str(), i))
        .collect();
    let mut task_concepts: Vec<Vec<u32>> = vec![Vec::new(); tasks.len()];
    for (t, links) in task_asserts.iter().enumerate() {
        for id in links {
            if let Some(&c) = concept_by_id.get(id.as_str()) {
                task_concepts[t].push(c as u32);
            }
        }
    }
    if let Some(assertions) = assertions {
        let task_by_id: HashMap<&str, usize> = tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.id.as_str(), i))
            .collect();
        for a in assertions {
            for s in ids(&a.subject) {
                for p in ids(&a.predicate) {
                    if let (Some(&c), Some(&t)) = (concept_by_id.get(s), task_by_id.get(p)) {
                        task_concepts[t].push(c as u32);
                    }
                }
            }
        }
    }
    task_concepts
}

impl Ontology {
    /// Reads the ontology in `dir` (layout detected); `reduced` keeps the reduced task set.
    pub fn load(dir: &Path, reduced: bool) -> Result<Ontology> {
        if !dir.is_dir() {
            return Err(Error::input(
                dir,
                "--ontology must be a folder holding a Cognitive Atlas dump or snapshot",
            ));
        }
        let found = Found::scan(dir)?;
        let tasks_path = found
            .tasks
            .as_deref()
            .ok_or_else(|| missing(dir, "task file"))?;
        let concepts_path = found
            .concepts
            .as_deref()
            .ok_or_else(|| missing(dir, "concept file"))?;
        let mut warnings = Vec::new();
        // The three files parse at once (they are most of a decode's start-up).
        let assertions_path = found.assertions.as_deref().filter(|_| !reduced);
        let (task_entries, (concept_entries, assertion_entries)) = rayon::join(
            || read_json_entries(tasks_path),
            || {
                rayon::join(
                    || read_json_entries(concepts_path),
                    || assertions_path.map(read_json_entries).transpose(),
                )
            },
        );
        let (task_entries, concept_entries) = (task_entries?, concept_entries?);
        let assertion_entries = assertion_entries?;

        let (mut tasks, task_asserts) = read_tasks(&task_entries, tasks_path, &mut warnings);
        let mut concepts = read_concepts(&concept_entries, concepts_path, &mut warnings);
        let concept_by_key: HashMap<String, usize> = concepts
            .iter()
            .enumerate()
            .rev()
            .map(|(i, c)| (name_key(&c.name), i))
            .collect();
        if let Some(path) = &found.concept_domains {
            map_domains(path, &mut concepts, &concept_by_key, &mut warnings)?;
        }
        let mut task_concepts = if reduced {
            let path = found.reduced.as_deref().ok_or_else(|| {
                Error::input(dir, "--reduced needs a reduced task table (reduced_tasks.csv with task, concept_1..3, or cogatlas_tasks_concepts_bertrand_mini.csv) here or one folder below")
            })?;
            reduced_links(path, &mut tasks, &concept_by_key, &mut warnings)?
        } else {
            full_links(
                &tasks,
                &task_asserts,
                &concepts,
                assertion_entries.as_deref(),
            )
        };
        for links in &mut task_concepts {
            links.sort_unstable();
            links.dedup();
        }
        if tasks.is_empty() {
            return Err(Error::input(
                tasks_path,
                "no task with a name and a definition was found",
            ));
        }
        Ok(Ontology {
            tasks,
            concepts,
            task_concepts,
            warnings,
        })
    }

    /// Index of each of `names` among the tasks (exact, then by `name_key`), None when absent.
    pub fn task_indices(&self, names: &[String]) -> Vec<Option<usize>> {
        let exact: HashMap<&str, usize> = self
            .tasks
            .iter()
            .enumerate()
            .rev()
            .map(|(i, t)| (t.name.as_str(), i))
            .collect();
        let loose: HashMap<String, usize> = self
            .tasks
            .iter()
            .enumerate()
            .rev()
            .map(|(i, t)| (name_key(&t.name), i))
            .collect();
        names
            .iter()
            .map(|n| {
                exact
                    .get(n.as_str())
                    .or_else(|| loose.get(&name_key(n)))
                    .copied()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_compare_loosely() {
        assert_eq!(
            name_key("Raven&#39,s  Advanced Progressive Matrices "),
            name_key("Raven\u{2019}s Advanced Progressive Matrices")
        );
        assert_ne!(name_key("n-back task"), name_key("n back task"));
    }

    #[test]
    fn domains_from_class_ids_and_names() {
        assert_eq!(domain_index("ctp_C1"), Some(0));
        assert_eq!(domain_index("ctp_C10"), Some(9));
        assert_eq!(domain_index("ctp_C11"), None);
        assert_eq!(domain_index("Executive/Cognitive Control"), Some(3));
        assert_eq!(domain_index("Reasoning and Decision Making"), Some(2));
        assert_eq!(domain_index("Social function"), Some(8));
        assert_eq!(domain_index(""), None);
    }
}
