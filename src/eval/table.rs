//! The results table: tasks as rows, methods as columns, the best of each row in
//! bold, and the benchmark mean (unweighted over tasks) as the last row.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Results {
    /// What the table covers ("pool of 6 experts"); the eval's name is not recorded
    /// (no ingredient of its key), a heading adds it where the table is shown.
    pub title: String,
    pub tasks: Vec<String>,
    pub methods: Vec<String>,
    /// scores[task][method], in [0, 1].
    pub scores: BTreeMap<String, BTreeMap<String, f64>>,
    /// Footnotes per method (e.g. "uses test labels").
    pub notes: BTreeMap<String, String>,
    /// Metric per task.
    pub metrics: BTreeMap<String, String>,
    /// What makes a task's score mean less than it seems (words the tokenizer does
    /// not know, answer choices it cannot tell apart, answers longer than generation
    /// may run), per task.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub task_notes: BTreeMap<String, String>,
    /// How many examples each task's scores are means over: `report` fills it from the
    /// eval's per-example scores (a score over 20 examples is not one over 2000). The
    /// eval step leaves it empty, so its stored tables, and their pinned digest, are
    /// what they were.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub examples: BTreeMap<String, usize>,
}

impl Results {
    pub fn mean(&self, method: &str) -> Option<f64> {
        let v: Vec<f64> = self
            .tasks
            .iter()
            .filter_map(|t| self.scores.get(t)?.get(method).copied())
            .collect();
        (v.len() == self.tasks.len() && !v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    }

    fn rows(&self) -> Vec<(String, Vec<Option<f64>>)> {
        let mut rows: Vec<(String, Vec<Option<f64>>)> = self
            .tasks
            .iter()
            .map(|t| {
                let about: Vec<String> = self
                    .metrics
                    .get(t)
                    .cloned()
                    .into_iter()
                    .chain(self.examples.get(t).map(|n| format!("n={n}")))
                    .collect();
                let label = if about.is_empty() {
                    t.clone()
                } else {
                    format!("{t} ({})", about.join(", "))
                };
                (
                    label,
                    self.methods
                        .iter()
                        .map(|m| self.scores.get(t).and_then(|s| s.get(m)).copied())
                        .collect(),
                )
            })
            .collect();
        rows.push(("mean".into(), self.methods.iter().map(|m| self.mean(m)).collect()));
        rows
    }

    /// Rows in `order` (the manifest's task order: results are stored by name, since
    /// the order of tasks is no ingredient of a key); tasks it does not name keep
    /// their order after those it does.
    pub fn order_tasks(&mut self, order: &[String]) {
        self.tasks
            .sort_by_key(|t| order.iter().position(|o| o == t).unwrap_or(usize::MAX));
    }

    /// The table under the heading `### NAME (TITLE)`.
    pub fn markdown(&self, name: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "### {name} ({})\n", self.title);
        let methods: Vec<String> = self.methods.iter().map(|m| md_cell(m)).collect();
        let _ = writeln!(out, "| task | {} |", methods.join(" | "));
        let _ = writeln!(out, "|---|{}", "---:|".repeat(self.methods.len()));
        for (label, vals) in self.rows() {
            let best = vals.iter().flatten().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            let cells: Vec<String> = vals
                .iter()
                .map(|v| match v {
                    Some(x) if (*x - best).abs() < 1e-12 => format!("**{:.1}**", x * 100.0),
                    Some(x) => format!("{:.1}", x * 100.0),
                    None => "–".into(),
                })
                .collect();
            let label = if label == "mean" {
                "**mean**".to_string()
            } else {
                md_cell(&label)
            };
            let _ = writeln!(out, "| {label} | {} |", cells.join(" | "));
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for (m, n) in &self.notes {
                let _ = writeln!(out, "- {m}: {n}");
            }
        }
        let noted: Vec<&String> = self
            .tasks
            .iter()
            .filter(|t| self.task_notes.contains_key(*t))
            .collect();
        if !noted.is_empty() {
            out.push('\n');
            for t in noted {
                let _ = writeln!(out, "- task {}: {}", md_cell(t), self.task_notes[t]);
            }
        }
        out
    }

    pub fn csv(&self) -> String {
        self.csv_led_by(None)
    }

    fn csv_led_by(&self, lead: Option<(&str, &str)>) -> String {
        let methods: Vec<String> = self.methods.iter().map(|m| csv_field(m)).collect();
        let (head, cell) = match lead {
            Some((h, v)) => (format!("{},", csv_field(h)), format!("{},", csv_field(v))),
            None => (String::new(), String::new()),
        };
        let mut out = format!("{head}task,{}\n", methods.join(","));
        for (label, vals) in self.rows() {
            let cells: Vec<String> = vals
                .iter()
                .map(|v| v.map(|x| format!("{x:.6}")).unwrap_or_default())
                .collect();
            let _ = writeln!(out, "{cell}{},{}", csv_field(&label), cells.join(","));
        }
        out
    }

    /// The scores as long records under [`LONG_CSV_HEADER`], one per (task, method)
    /// scored, then one per method for the mean (task `mean`, metric [`MEAN_METRIC`],
    /// which no task has, so a task named `mean` stays apart): the evals of a manifest
    /// have different methods, so one header fits them all only this way. `current`
    /// is false for results of an earlier run (the manifest changed since): a CSV
    /// reader cannot see report's note on stderr.
    pub fn csv_long(&self, step: &str, current: bool) -> String {
        let mut out = String::new();
        let mut record = |task: &str, metric: &str, method: &str, score: f64, n: Option<usize>| {
            long_record(&mut out, [step, task, metric, method], score, current, n, None)
        };
        for t in &self.tasks {
            let metric = self.metrics.get(t).map(String::as_str).unwrap_or("");
            for m in &self.methods {
                if let Some(&x) = self.scores.get(t).and_then(|s| s.get(m)) {
                    record(t, metric, m, x, self.examples.get(t).copied());
                }
            }
        }
        // The mean's count: every task's examples (the mean itself weighs tasks alike).
        let total = self
            .tasks
            .iter()
            .map(|t| self.examples.get(t))
            .sum::<Option<usize>>();
        for m in &self.methods {
            if let Some(x) = self.mean(m) {
                record("mean", MEAN_METRIC, m, x, total);
            }
        }
        out
    }
}

/// One record under [`LONG_CSV_HEADER`]: `names` are step, task, metric and method;
/// `interval` a study's 95% interval (lo, hi), empty for an eval's.
pub fn long_record(
    out: &mut String,
    names: [&str; 4],
    score: f64,
    current: bool,
    examples: Option<usize>,
    interval: Option<(f64, f64)>,
) {
    let n = examples.map(|n| n.to_string()).unwrap_or_default();
    let ci = interval
        .map(|(lo, hi)| format!("{lo:.6},{hi:.6}"))
        .unwrap_or_else(|| ",".into());
    let _ = writeln!(
        out,
        "{},{score:.6},{current},{n},{ci}",
        names.map(csv_field).join(",")
    );
}

/// The metric of [`Results::csv_long`]'s mean records: not a task metric's name.
pub const MEAN_METRIC: &str = "mean over tasks";

/// The columns of [`Results::csv_long`] (`examples` empty where not known) and of a
/// study's (`eval::study::StudyResult::csv_long`): `lo` and `hi`, a 95% interval, only
/// a study's records fill; an eval's leave them empty.
pub const LONG_CSV_HEADER: &str = "step,task,metric,method,score,current,examples,lo,hi";

/// A CSV field as RFC 4180 writes it: quoted (inner quotes doubled) when it holds a
/// comma, a quote or a line break; as it is otherwise, so plain names read the same.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Text in a markdown table cell: a `|` would end the cell and a line break the row.
pub fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_with_best_in_bold_and_mean() {
        let mut r = Results {
            title: "pool of 2 experts".into(),
            tasks: vec!["a".into(), "b".into()],
            methods: vec!["base".into(), "phatgoose".into()],
            ..Default::default()
        };
        r.scores.insert(
            "a".into(),
            BTreeMap::from([("base".into(), 0.25), ("phatgoose".into(), 0.75)]),
        );
        r.scores.insert(
            "b".into(),
            BTreeMap::from([("base".into(), 0.5), ("phatgoose".into(), 0.5)]),
        );
        r.notes.insert("oracle".into(), "uses test labels".into());
        let md = r.markdown("held-out");
        assert_eq!(
            md,
            "### held-out (pool of 2 experts)\n\n| task | base | phatgoose |\n|---|---:|---:|\n| a | 25.0 | **75.0** |\n| b | **50.0** | **50.0** |\n| **mean** | 37.5 | **62.5** |\n\n- oracle: uses test labels\n"
        );
        assert_eq!(
            r.csv(),
            "task,base,phatgoose\na,0.250000,0.750000\nb,0.500000,0.500000\nmean,0.375000,0.625000\n"
        );
        // How many examples a score is a mean over, where report knows it: beside the
        // task's metric, and in a last CSV column (the mean's: every task's).
        r.metrics.insert("a".into(), "accuracy".into());
        r.examples = BTreeMap::from([("a".into(), 20), ("b".into(), 2000)]);
        let md = r.markdown("held-out");
        assert!(
            md.contains("| a (accuracy, n=20) | 25.0 | **75.0** |\n| b (n=2000) |"),
            "{md}"
        );
        let csv = r.csv_long("eval:e", true);
        assert!(
            csv.starts_with("eval:e,a,accuracy,base,0.250000,true,20,,\n"),
            "{csv}"
        );
        assert!(
            csv.ends_with("eval:e,mean,mean over tasks,phatgoose,0.625000,true,2020,,\n"),
            "{csv}"
        );
    }

    #[test]
    fn names_with_commas_quotes_and_bars_keep_their_columns() {
        let mut r = Results {
            title: "t".into(),
            tasks: vec!["a,\"b\"|c".into()],
            methods: vec!["expert:so,rt".into(), "expert:x|y".into()],
            ..Default::default()
        };
        r.scores.insert(
            "a,\"b\"|c".into(),
            BTreeMap::from([("expert:so,rt".into(), 0.25), ("expert:x|y".into(), 0.5)]),
        );
        let csv = r.csv();
        let mut lines = csv.lines();
        assert_eq!(lines.next(), Some("task,\"expert:so,rt\",expert:x|y"));
        assert!(lines.next().unwrap().starts_with("\"a,\"\"b\"\"|c"), "{csv}");
        let md = r.markdown("e");
        assert!(md.contains("| task | expert:so,rt | expert:x\\|y |"), "{md}");
        assert!(md.contains("| a,\"b\"\\|c"), "{md}");
    }

    #[test]
    fn a_line_break_in_a_name_stays_inside_its_field_and_row() {
        let mut r = Results {
            title: "t".into(),
            tasks: vec!["two\nlines".into()],
            methods: vec!["base".into()],
            ..Default::default()
        };
        r.scores
            .insert("two\nlines".into(), BTreeMap::from([("base".into(), 0.5)]));
        // Every record starts with the step, the quoted field keeps its line break.
        assert_eq!(
            r.csv_long("eval:e", true),
            "eval:e,\"two\nlines\",,base,0.500000,true,,,\neval:e,mean,mean over tasks,base,0.500000,true,,,\n"
        );
        let md = r.markdown("e");
        assert!(md.contains("| two lines | **50.0** |"), "{md}");
    }

    #[test]
    fn a_task_named_mean_is_not_read_as_the_mean() {
        let mut r = Results {
            title: "t".into(),
            tasks: vec!["mean".into(), "other".into()],
            methods: vec!["base".into()],
            ..Default::default()
        };
        r.metrics.insert("mean".into(), "exact-match".into());
        r.scores
            .insert("mean".into(), BTreeMap::from([("base".into(), 0.25)]));
        r.scores
            .insert("other".into(), BTreeMap::from([("base".into(), 0.75)]));
        let csv = r.csv_long("eval:e", false);
        let rows: Vec<&str> = csv.lines().collect();
        assert_eq!(
            rows,
            [
                "eval:e,mean,exact-match,base,0.250000,false,,,",
                "eval:e,other,,base,0.750000,false,,,",
                "eval:e,mean,mean over tasks,base,0.500000,false,,,",
            ]
        );
    }
}
