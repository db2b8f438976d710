//! Decoding results as the authors' tables (pred, prob, similarity, likelihood, prior_prob,
//! joint_prob, bayes_factor), as CSV, as JSON (the schema in CLI.md) and as an aligned table.

use super::decoder::{Decoder, Decoding};
use super::posterior::ranking;
use crate::error::{IoContext, Result};
use serde::Serialize;
use std::io::Write;
use std::path::Path;

#[derive(Serialize, Clone, Debug)]
pub struct TaskRow {
    pub name: String,
    pub probability: f32,
    pub similarity: f32,
    pub likelihood: f32,
    pub prior: f32,
    pub joint: f32,
    pub bayes_factor: f32,
}

impl TaskRow {
    /// pred,prob,similarity,likelihood,prior_prob,joint_prob,bayes_factor (the authors' columns).
    fn csv(&self) -> String {
        format!(
            "{},{},{},{},{},{},{}",
            csv_field(&self.name),
            self.probability,
            self.similarity,
            self.likelihood,
            self.prior,
            self.joint,
            self.bayes_factor
        )
    }
}

#[derive(Serialize, Clone, Debug)]
pub struct Row {
    pub name: String,
    pub probability: f32,
}

/// One map's report: the top tasks and concepts, every domain, each sorted by probability.
#[derive(Serialize, Clone, Debug)]
pub struct MapReport {
    pub map: String,
    pub tasks: Vec<TaskRow>,
    pub concepts: Vec<Row>,
    pub domains: Vec<Row>,
}

#[derive(Serialize)]
struct Maps<'a> {
    maps: &'a [MapReport],
}

impl MapReport {
    pub fn new(decoder: &Decoder, d: &Decoding, top: usize) -> MapReport {
        let t = &d.tasks;
        let prior = decoder.prior();
        let tasks = ranking(&t.posterior)
            .into_iter()
            .take(top)
            .map(|i| TaskRow {
                name: decoder.task_names()[i].clone(),
                probability: t.posterior[i],
                similarity: t.similarity[i],
                likelihood: t.likelihood[i],
                prior: prior[i] as f32,
                joint: t.joint[i],
                bayes_factor: t.bayes_factor[i],
            })
            .collect();
        let rows = |p: &[f32], names: &dyn Fn(usize) -> String, n: usize| -> Vec<Row> {
            ranking(p)
                .into_iter()
                .take(n)
                .map(|i| Row {
                    name: names(i),
                    probability: p[i],
                })
                .collect()
        };
        MapReport {
            map: d.map.clone(),
            tasks,
            concepts: rows(&d.concepts, &|i| decoder.concept_names()[i].clone(), top),
            domains: rows(
                &d.domains,
                &|i| decoder.domain_names()[i].to_string(),
                usize::MAX,
            ),
        }
    }
}

pub fn write_json(w: &mut impl Write, reports: &[MapReport]) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *w, &Maps { maps: reports })?;
    writeln!(w)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// All maps in one CSV: map, level (task|concept|domain), rank, then the authors' columns
/// (similarity … bayes_factor empty for concepts and domains).
pub fn write_csv(w: &mut impl Write, reports: &[MapReport]) -> std::io::Result<()> {
    writeln!(
        w,
        "map,level,rank,pred,prob,similarity,likelihood,prior_prob,joint_prob,bayes_factor"
    )?;
    for r in reports {
        let m = csv_field(&r.map);
        for (i, t) in r.tasks.iter().enumerate() {
            writeln!(w, "{m},task,{},{}", i + 1, t.csv())?;
        }
        for (level, rows) in [("concept", &r.concepts), ("domain", &r.domains)] {
            for (i, c) in rows.iter().enumerate() {
                writeln!(
                    w,
                    "{m},{level},{},{},{},,,,,",
                    i + 1,
                    csv_field(&c.name),
                    c.probability
                )?;
            }
        }
    }
    Ok(())
}

/// A number for a person: 4 decimals, or 3 significant digits in e-notation when tiny or huge.
fn num(x: f32) -> String {
    let a = x.abs();
    if x == 0.0 {
        "0".into()
    } else if (1e-3..1e5).contains(&a) {
        format!("{x:.4}")
    } else {
        format!("{x:.2e}")
    }
}

/// An aligned table: the `left` columns (names) left-aligned, the rest (numbers) right-aligned.
fn table(
    w: &mut impl Write,
    header: &[&str],
    left: &[usize],
    rows: &[Vec<String>],
) -> std::io::Result<()> {
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (c, s) in r.iter().enumerate() {
            width[c] = width[c].max(s.chars().count());
        }
    }
    let line = |w: &mut dyn Write, cells: &[String]| -> std::io::Result<()> {
        let mut s = String::new();
        for (c, cell) in cells.iter().enumerate() {
            let pad = width[c] - cell.chars().count();
            if left.contains(&c) {
                s.push_str(cell);
                s.push_str(&" ".repeat(pad));
            } else {
                s.push_str(&" ".repeat(pad));
                s.push_str(cell);
            }
            s.push_str("  ");
        }
        writeln!(w, "  {}", s.trim_end())
    };
    let h: Vec<String> = header.iter().map(|s| s.to_string()).collect();
    line(w, &h)?;
    for r in rows {
        line(w, r)?;
    }
    Ok(())
}

pub fn write_table(w: &mut impl Write, reports: &[MapReport]) -> std::io::Result<()> {
    for (i, r) in reports.iter().enumerate() {
        if i > 0 {
            writeln!(w)?;
        }
        writeln!(w, "{}", r.map)?;
        writeln!(w, "Tasks  P(T|A)")?;
        let rows: Vec<Vec<String>> = r
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| {
                vec![
                    (i + 1).to_string(),
                    t.name.clone(),
                    num(t.probability),
                    num(t.similarity),
                    num(t.likelihood),
                    num(t.prior),
                    num(t.joint),
                    num(t.bayes_factor),
                ]
            })
            .collect();
        table(
            w,
            &[
                "#",
                "pred",
                "prob",
                "similarity",
                "likelihood",
                "prior_prob",
                "joint_prob",
                "bayes_factor",
            ],
            &[1],
            &rows,
        )?;
        for (title, rows) in [
            ("Concepts  P(C|A)", &r.concepts),
            ("Domains  P(D|A)", &r.domains),
        ] {
            writeln!(w, "{title}")?;
            let rows: Vec<Vec<String>> = rows
                .iter()
                .enumerate()
                .map(|(i, c)| vec![(i + 1).to_string(), c.name.clone(), num(c.probability)])
                .collect();
            table(w, &["#", "pred", "prob"], &[1], &rows)?;
        }
    }
    Ok(())
}

/// The best task, concept and domain of each map with their probabilities.
fn summary_rows(reports: &[MapReport]) -> Vec<[String; 7]> {
    let best = |rows: Option<(&String, f32)>| {
        rows.map_or((String::new(), String::new()), |(n, p)| {
            (n.clone(), p.to_string())
        })
    };
    reports
        .iter()
        .map(|r| {
            let (t, tp) = best(r.tasks.first().map(|t| (&t.name, t.probability)));
            let (c, cp) = best(r.concepts.first().map(|c| (&c.name, c.probability)));
            let (d, dp) = best(r.domains.first().map(|d| (&d.name, d.probability)));
            [r.map.clone(), t, tp, c, cp, d, dp]
        })
        .collect()
}

const SUMMARY_HEADER: [&str; 7] = [
    "map",
    "task",
    "task_prob",
    "concept",
    "concept_prob",
    "domain",
    "domain_prob",
];

/// One row per map (its top task, concept and domain), as CSV.
pub fn write_summary_csv(w: &mut impl Write, reports: &[MapReport]) -> std::io::Result<()> {
    writeln!(w, "{}", SUMMARY_HEADER.join(","))?;
    for row in summary_rows(reports) {
        let cells: Vec<String> = row.iter().map(|c| csv_field(c)).collect();
        writeln!(w, "{}", cells.join(","))?;
    }
    Ok(())
}

/// The same summary as an aligned table (after the per-map tables of a batch).
pub fn write_summary_table(w: &mut impl Write, reports: &[MapReport]) -> std::io::Result<()> {
    writeln!(w, "\nSummary: the top task, concept and domain of each map")?;
    let rows: Vec<Vec<String>> = summary_rows(reports)
        .into_iter()
        .map(|[m, t, tp, c, cp, d, dp]| {
            let p = |s: String| s.parse::<f32>().map(num).unwrap_or(s);
            vec![m, t, p(tp), c, p(cp), d, p(dp)]
        })
        .collect();
    table(w, &SUMMARY_HEADER, &[0, 1, 3, 5], &rows)
}

/// DIR/<stem>_task_predictions.csv, _concept_predictions.csv, _process_predictions.csv (the
/// authors' file names and columns) and DIR/<stem>.json.
pub fn write_map_files(dir: &Path, stem: &str, r: &MapReport) -> Result<()> {
    let tasks = dir.join(format!("{stem}_task_predictions.csv"));
    crate::io::write_atomic(&tasks, |w| {
        (|| -> std::io::Result<()> {
            writeln!(
                w,
                "pred,prob,similarity,likelihood,prior_prob,joint_prob,bayes_factor"
            )?;
            for t in &r.tasks {
                writeln!(w, "{}", t.csv())?;
            }
            Ok(())
        })()
        .at(&tasks)
    })?;
    for (suffix, rows) in [("concept", &r.concepts), ("process", &r.domains)] {
        let path = dir.join(format!("{stem}_{suffix}_predictions.csv"));
        crate::io::write_atomic(&path, |w| {
            (|| -> std::io::Result<()> {
                writeln!(w, "pred,prob")?;
                for c in rows.iter() {
                    writeln!(w, "{},{}", csv_field(&c.name), c.probability)?;
                }
                Ok(())
            })()
            .at(&path)
        })?;
    }
    let json = dir.join(format!("{stem}.json"));
    crate::io::write_atomic(&json, |w| write_json(w, std::slice::from_ref(r)).at(&json))
}

/// File stems for the maps: the file name without .nii/.nii.gz, `_vol-N` for volumes of a 4D
/// image, `-2`, `-3`… when two maps would share one.
pub fn stems(maps: &[(std::path::PathBuf, usize)]) -> Vec<String> {
    let mut seen = std::collections::HashMap::<String, usize>::new();
    let mut out = Vec::new();
    for (path, n_vols) in maps {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("map");
        let base = name
            .strip_suffix(".nii.gz")
            .or_else(|| name.strip_suffix(".nii"))
            .unwrap_or(name);
        for v in 0..*n_vols {
            let s = if *n_vols > 1 {
                format!("{base}_vol-{v:03}")
            } else {
                base.to_string()
            };
            let count = seen.entry(s.clone()).or_insert(0);
            *count += 1;
            out.push(if *count > 1 {
                format!("{s}-{count}")
            } else {
                s
            });
        }
    }
    out
}
