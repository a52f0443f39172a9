//! Ranking methods with their uncertainty: the same evaluation repeated over training
//! seeds (replicates), every method's mean with a 95% bootstrap interval, and the
//! paired difference between one method and each other one with its interval.
//!
//! The bootstrap is hierarchical and paired: each resample draws the replicates (seeds)
//! with replacement and, per task, the examples with replacement (the same draw for
//! every replicate and method, since all score the same test examples), then averages
//! examples within a task, tasks within a replicate (the unweighted mean over tasks, as
//! the results table does), and replicates. Percentile intervals, 2.5% and 97.5%.

use crate::eval::table::md_cell;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// One replicate: method -> task -> per-example scores.
pub type Replicate = BTreeMap<String, BTreeMap<String, Vec<f64>>>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
}

impl Interval {
    pub fn excludes_zero(&self) -> bool {
        self.lo > 0.0 || self.hi < 0.0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyResult {
    pub replicates: Vec<String>,
    pub tasks: Vec<String>,
    /// Examples per task.
    pub examples: BTreeMap<String, usize>,
    pub samples: usize,
    pub seed: u64,
    /// Method -> mean over replicates, with its interval.
    pub methods: BTreeMap<String, Interval>,
    /// Method -> per replicate, its mean over tasks.
    pub per_replicate: BTreeMap<String, Vec<f64>>,
    /// Method -> task -> its mean over replicates (where each method wins or loses).
    pub per_task: BTreeMap<String, BTreeMap<String, f64>>,
    /// The compared method.
    pub compare: String,
    /// Other method -> `compare` minus it, with its interval.
    pub differences: BTreeMap<String, Interval>,
    /// Methods in display order.
    pub order: Vec<String>,
    /// Method -> what the replicates' evals note about it (test labels used, not
    /// post-hoc, how it works): one line, or one per replicate where they differ.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub notes: BTreeMap<String, String>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = p * (sorted.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos - pos.floor());
    let next = sorted[(i + 1).min(sorted.len() - 1)];
    sorted[i] * (1.0 - frac) + next * frac
}

fn interval(mean: f64, mut draws: Vec<f64>) -> Interval {
    draws.sort_by(f64::total_cmp);
    Interval {
        mean,
        lo: percentile(&draws, 0.025),
        hi: percentile(&draws, 0.975),
    }
}

/// Bootstraps `replicates` (named, all with the same methods, tasks and example counts;
/// checked). `methods` in display order; `compare` is one of them.
pub fn bootstrap(
    names: &[String],
    replicates: &[Replicate],
    methods: &[String],
    compare: &str,
    samples: usize,
    seed: u64,
) -> Result<StudyResult, String> {
    let (tasks, examples) = design(names, replicates, methods, compare)?;
    let s_count = replicates.len();
    let scores: Scores = replicates
        .iter()
        .map(|r| {
            methods
                .iter()
                .map(|m| tasks.iter().map(|t| r[m][t].as_slice()).collect())
                .collect()
        })
        .collect();
    let avg = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
    let per_replicate: Vec<Vec<f64>> = (0..methods.len())
        .map(|m| {
            (0..s_count)
                .map(|s| avg(&scores[s][m].iter().map(|x| avg(x)).collect::<Vec<_>>()))
                .collect()
        })
        .collect();
    let point: Vec<f64> = per_replicate.iter().map(|r| avg(r)).collect();
    let per_task: BTreeMap<String, BTreeMap<String, f64>> = methods
        .iter()
        .enumerate()
        .map(|(m, name)| {
            let by_task = tasks
                .iter()
                .enumerate()
                .map(|(t, task)| {
                    let over: Vec<f64> = (0..s_count).map(|s| avg(scores[s][m][t])).collect();
                    (task.clone(), avg(&over))
                })
                .collect();
            (name.clone(), by_task)
        })
        .collect();
    let draws = resample(&scores, methods.len(), samples, seed);
    let c = methods
        .iter()
        .position(|m| m == compare)
        .expect("checked by design()");
    let mut result = StudyResult {
        replicates: names.to_vec(),
        tasks,
        examples,
        samples,
        seed,
        methods: BTreeMap::new(),
        per_replicate: BTreeMap::new(),
        per_task,
        compare: compare.to_string(),
        differences: BTreeMap::new(),
        order: methods.to_vec(),
        notes: BTreeMap::new(),
    };
    for (m, name) in methods.iter().enumerate() {
        result
            .methods
            .insert(name.clone(), interval(point[m], draws[m].clone()));
        result
            .per_replicate
            .insert(name.clone(), per_replicate[m].clone());
        if m != c {
            let diff: Vec<f64> = draws[c].iter().zip(&draws[m]).map(|(a, b)| a - b).collect();
            result
                .differences
                .insert(name.clone(), interval(point[c] - point[m], diff));
        }
    }
    Ok(result)
}

/// Per-example scores by replicate, method and task: `scores[s][m][t][i]`.
type Scores<'a> = Vec<Vec<Vec<&'a [f64]>>>;

/// The tasks of the first replicate's `compare` scores and their example counts,
/// once every replicate is checked to have every method and task with those counts.
fn design(
    names: &[String],
    replicates: &[Replicate],
    methods: &[String],
    compare: &str,
) -> Result<(Vec<String>, BTreeMap<String, usize>), String> {
    let first = replicates
        .first()
        .ok_or("a study needs at least one evaluation")?;
    if !methods.iter().any(|m| m == compare) {
        return Err(format!(
            "the compared method `{compare}` is not among the methods {methods:?}"
        ));
    }
    let tasks: Vec<String> = first
        .get(compare)
        .ok_or_else(|| format!("`{}` has no per-example scores of `{compare}`", names[0]))?
        .keys()
        .cloned()
        .collect();
    let examples: BTreeMap<String, usize> = tasks
        .iter()
        .map(|t| (t.clone(), first[compare][t].len()))
        .collect();
    for (name, r) in names.iter().zip(replicates) {
        for m in methods {
            let per_task = r
                .get(m)
                .ok_or_else(|| format!("evaluation `{name}` has no per-example scores of `{m}`"))?;
            for t in &tasks {
                let n = per_task
                    .get(t)
                    .ok_or_else(|| format!("evaluation `{name}` has no scores of `{m}` on task `{t}`"))?
                    .len();
                if n == 0 {
                    return Err(format!(
                        "evaluation `{name}` scored no example of task `{t}` with `{m}`"
                    ));
                }
                if n != examples[t] {
                    return Err(format!(
                        "evaluation `{name}` scored {n} examples of task `{t}` with `{m}`, `{}` scored {}; a study compares the same examples",
                        names[0], examples[t]
                    ));
                }
            }
        }
    }
    Ok((tasks, examples))
}

/// `samples` bootstrap draws of each method's mean: replicates resampled, and within
/// each task its examples, with the same draw for every method (so differences are
/// paired).
fn resample(scores: &Scores, methods: usize, samples: usize, seed: u64) -> Vec<Vec<f64>> {
    let s_count = scores.len();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut draws = vec![Vec::with_capacity(samples); methods];
    let mut idx: Vec<Vec<usize>> = scores[0][0].iter().map(|x| vec![0; x.len()]).collect();
    let tasks = idx.len();
    let mut picked = vec![0usize; s_count];
    for _ in 0..samples {
        for p in picked.iter_mut() {
            *p = rng.random_range(0..s_count);
        }
        for row in idx.iter_mut() {
            let n = row.len();
            for i in row.iter_mut() {
                *i = rng.random_range(0..n);
            }
        }
        for (m, out) in draws.iter_mut().enumerate() {
            let mut total = 0.0;
            for &s in &picked {
                let mut over_tasks = 0.0;
                for (t, rows) in idx.iter().enumerate() {
                    let x = scores[s][m][t];
                    over_tasks += rows.iter().map(|&i| x[i]).sum::<f64>() / rows.len() as f64;
                }
                total += over_tasks / tasks as f64;
            }
            out.push(total / s_count as f64);
        }
    }
    draws
}

/// The metric of [`StudyResult::csv_long`]'s per-task records.
pub const PER_TASK_METRIC: &str = "mean over replicates";
/// The metric of its mean records (with their interval).
pub const MEAN_METRIC: &str = "mean over tasks and replicates";

impl StudyResult {
    /// The study as long records under the report's CSV header
    /// (`eval::table::LONG_CSV_HEADER`): each method's mean over replicates per task,
    /// its mean over tasks and replicates with the 95% interval, and the paired
    /// difference `compare` minus it (metric `COMPARE minus`, the markdown table's
    /// heading) with its interval. Scores are fractions, as the evals' records. The
    /// per-replicate means are the replicate evals' own `mean` records.
    pub fn csv_long(&self, step: &str, current: bool) -> String {
        let mut out = String::new();
        let mut record =
            |task: &str, metric: &str, method: &str, score: f64, n: Option<usize>, ci: Option<&Interval>| {
                let ci = ci.map(|i| (i.lo, i.hi));
                crate::eval::table::long_record(&mut out, [step, task, metric, method], score, current, n, ci)
            };
        for t in &self.tasks {
            for m in &self.order {
                if let Some(&x) = self.per_task.get(m).and_then(|p| p.get(t)) {
                    record(t, PER_TASK_METRIC, m, x, self.examples.get(t).copied(), None);
                }
            }
        }
        let total = self
            .tasks
            .iter()
            .map(|t| self.examples.get(t))
            .sum::<Option<usize>>();
        for m in &self.order {
            if let Some(i) = self.methods.get(m) {
                record("mean", MEAN_METRIC, m, i.mean, total, Some(i));
            }
        }
        let minus = format!("{} minus", self.compare);
        for m in &self.order {
            if let Some(d) = self.differences.get(m) {
                record("mean", &minus, m, d.mean, total, Some(d));
            }
        }
        out
    }
}

/// The study as markdown (scores in percent).
pub fn markdown(title: &str, r: &StudyResult) -> String {
    let mut out = String::new();
    let n: Vec<String> = r.tasks.iter().map(|t| format!("{t} {}", r.examples[t])).collect();
    let _ = writeln!(
        out,
        "### {title}: {} replicate{} ({}), {} task{} (examples: {})\n",
        r.replicates.len(),
        if r.replicates.len() == 1 { "" } else { "s" },
        r.replicates.join(", "),
        r.tasks.len(),
        if r.tasks.len() == 1 { "" } else { "s" },
        n.join(", ")
    );
    let _ = writeln!(
        out,
        "Mean over tasks and replicates, with 95% intervals from {} paired bootstrap resamples of replicates and examples (seed {}).\n",
        r.samples, r.seed
    );
    let _ = writeln!(out, "| method | mean | 95% interval | per replicate |");
    let _ = writeln!(out, "|---|---:|---:|---|");
    for m in &r.order {
        let i = &r.methods[m];
        let per: Vec<String> = r.per_replicate[m]
            .iter()
            .map(|x| format!("{:.1}", 100.0 * x))
            .collect();
        let _ = writeln!(
            out,
            "| {} | {:.1} | [{:.1}, {:.1}] | {} |",
            md_cell(m),
            100.0 * i.mean,
            100.0 * i.lo,
            100.0 * i.hi,
            per.join(" / ")
        );
    }
    let _ = writeln!(out, "\nPer task (mean over replicates):\n");
    let tasks: Vec<String> = r.tasks.iter().map(|t| md_cell(t)).collect();
    let _ = writeln!(out, "| method | {} |", tasks.join(" | "));
    let _ = writeln!(out, "|---|{}", "---:|".repeat(r.tasks.len()));
    for m in &r.order {
        let cells: Vec<String> = r
            .tasks
            .iter()
            .map(|t| format!("{:.1}", 100.0 * r.per_task[m][t]))
            .collect();
        let _ = writeln!(out, "| {} | {} |", md_cell(m), cells.join(" | "));
    }
    let _ = writeln!(
        out,
        "\n| {} minus | difference | 95% interval | |",
        md_cell(&r.compare)
    );
    let _ = writeln!(out, "|---|---:|---:|---|");
    for m in &r.order {
        let Some(d) = r.differences.get(m) else { continue };
        let verdict = match (d.excludes_zero(), d.mean > 0.0) {
            (true, true) => format!("{} ahead", r.compare),
            (true, false) => format!("{m} ahead"),
            (false, _) => "not distinguishable".to_string(),
        };
        let _ = writeln!(
            out,
            "| {} | {:+.1} | [{:+.1}, {:+.1}] | {} |",
            md_cell(m),
            100.0 * d.mean,
            100.0 * d.lo,
            100.0 * d.hi,
            md_cell(&verdict)
        );
    }
    let noted: Vec<&String> = r.order.iter().filter(|m| r.notes.contains_key(*m)).collect();
    if !noted.is_empty() {
        out.push('\n');
        for m in noted {
            let _ = writeln!(out, "- {}: {}", md_cell(m), r.notes[m]);
        }
    }
    out
}

/// Each method's notes over the replicates' evals (`names[i]`'s notes are
/// `notes[i]`): said once where every replicate says the same, else per replicate.
pub fn merge_notes(names: &[String], notes: &[BTreeMap<String, String>]) -> BTreeMap<String, String> {
    let methods: std::collections::BTreeSet<&String> = notes.iter().flat_map(|n| n.keys()).collect();
    methods
        .into_iter()
        .map(|m| {
            let said: Vec<Option<&String>> = notes.iter().map(|n| n.get(m)).collect();
            let text = if said.iter().all(|s| *s == said[0]) {
                said[0].cloned().unwrap_or_default()
            } else {
                names
                    .iter()
                    .zip(&said)
                    .filter_map(|(r, s)| Some(format!("{r}: {}", (*s)?)))
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            (m.clone(), text)
        })
        .collect()
}

/// What the study notes on a method whose results are one artifact in every
/// replicate (the base; multitask, whose training reads none of the pool's seeds):
/// its interval measures the examples and nothing else.
pub const SAME_IN_EVERY_REPLICATE: &str = "one result in every replicate (nothing it reads varies between them): its interval is over the examples alone";

/// Adds [`SAME_IN_EVERY_REPLICATE`] to the notes of `methods`.
pub fn note_same_in_every_replicate<'a>(
    notes: &mut BTreeMap<String, String>,
    methods: impl IntoIterator<Item = &'a String>,
) {
    for m in methods {
        let note = notes.entry(m.clone()).or_default();
        if !note.is_empty() {
            note.push_str("; ");
        }
        note.push_str(SAME_IN_EVERY_REPLICATE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_with_one_result_for_every_replicate_are_noted() {
        let mut notes = BTreeMap::from([("base".to_string(), "no adapters".to_string())]);
        note_same_in_every_replicate(&mut notes, &["base".to_string(), "multitask".to_string()]);
        assert_eq!(notes["base"], format!("no adapters; {SAME_IN_EVERY_REPLICATE}"));
        assert_eq!(notes["multitask"], SAME_IN_EVERY_REPLICATE);
    }

    fn rep(rows: &[(&str, &str, Vec<f64>)]) -> Replicate {
        let mut r = Replicate::new();
        for (m, t, x) in rows {
            r.entry(m.to_string())
                .or_default()
                .insert(t.to_string(), x.clone());
        }
        r
    }

    #[test]
    fn notes_said_once_where_replicates_agree_and_per_replicate_where_not() {
        let names = ["s1".to_string(), "s2".to_string()];
        let one = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(m, n)| (m.to_string(), n.to_string()))
                .collect()
        };
        let merged = merge_notes(
            &names,
            &[
                one(&[("oracle", "test labels"), ("best-individual", "expert a")]),
                one(&[("oracle", "test labels"), ("best-individual", "expert b")]),
            ],
        );
        assert_eq!(merged["oracle"], "test labels");
        assert_eq!(merged["best-individual"], "s1: expert a; s2: expert b");
    }

    #[test]
    fn a_clear_difference_excludes_zero_and_noise_does_not() {
        // 200 examples: "a" right 80% of the time, "b" 50%, "c" like "a" but shifted.
        let make = |offset: usize| {
            let a: Vec<f64> = (0..200)
                .map(|i| f64::from(u8::from(!(i + offset).is_multiple_of(5))))
                .collect();
            let b: Vec<f64> = (0..200)
                .map(|i| f64::from(u8::from((i + offset).is_multiple_of(2))))
                .collect();
            let c: Vec<f64> = (0..200)
                .map(|i| f64::from(u8::from(!(i + offset + 1).is_multiple_of(5))))
                .collect();
            rep(&[("a", "t", a), ("b", "t", b), ("c", "t", c)])
        };
        let names: Vec<String> = vec!["s1".into(), "s2".into(), "s3".into()];
        let methods: Vec<String> = vec!["a".into(), "b".into(), "c".into()];
        let r = bootstrap(&names, &[make(0), make(1), make(2)], &methods, "a", 1000, 7).unwrap();
        assert!((r.methods["a"].mean - 0.8).abs() < 1e-9);
        let ab = &r.differences["b"];
        assert!((ab.mean - 0.3).abs() < 1e-9 && ab.excludes_zero(), "{ab:?}");
        let ac = &r.differences["c"];
        assert!(ac.mean.abs() < 1e-9 && !ac.excludes_zero(), "{ac:?}");
        assert!(r.methods["a"].lo < 0.8 && r.methods["a"].hi > 0.8);
        // Reproducible from its seed.
        assert_eq!(
            r,
            bootstrap(&names, &[make(0), make(1), make(2)], &methods, "a", 1000, 7).unwrap()
        );
        let md = markdown("s", &r);
        assert!(md.contains("| b | +30.0 |") && md.contains("a ahead"), "{md}");
    }

    #[test]
    fn replicates_must_score_the_same_examples() {
        let names: Vec<String> = vec!["s1".into(), "s2".into()];
        let methods: Vec<String> = vec!["a".into()];
        let e = bootstrap(
            &names,
            &[
                rep(&[("a", "t", vec![1.0; 10])]),
                rep(&[("a", "t", vec![1.0; 9])]),
            ],
            &methods,
            "a",
            10,
            0,
        )
        .unwrap_err();
        assert!(e.contains("scored 9 examples"), "{e}");
    }
}
