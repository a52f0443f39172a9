//! Each method against the experts it combines, on the tasks those experts were
//! trained for (held-in tasks: an eval task with an owning expert). A router that
//! works sends a held-in task's tokens to its own expert and scores close to it; the
//! ratio of a method's mean to the own experts' mean over the same tasks says how
//! close (PHATGOOSE's paper target: 0.9). Computed from an eval's results table, for
//! the tasks whose owner was also scored alone (`expert:NAME` among the methods).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::table::{Results, md_cell};

/// One method over the held-in tasks.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AgainstOwn {
    pub method: String,
    /// Its mean score over the tasks, in [0, 1].
    pub mean: f64,
    /// The own experts' mean over the same tasks (each task scored by its owner).
    pub own: f64,
    /// `mean / own` (None when the own experts score 0).
    pub ratio: Option<f64>,
}

/// The held-in comparison of every method but the single experts, over the tasks of
/// `owners` (task -> its expert's name) whose owner was scored alone. None when no
/// task has such an owner.
pub fn against_own(
    results: &Results,
    owners: &BTreeMap<String, String>,
) -> Option<(Vec<String>, Vec<AgainstOwn>)> {
    let own_score = |task: &str| -> Option<f64> {
        let owner = owners.get(task)?;
        results.scores.get(task)?.get(&format!("expert:{owner}")).copied()
    };
    let tasks: Vec<String> = results
        .tasks
        .iter()
        .filter(|t| own_score(t).is_some())
        .cloned()
        .collect();
    if tasks.is_empty() {
        return None;
    }
    let mean = |xs: Vec<f64>| xs.iter().sum::<f64>() / xs.len() as f64;
    let own = mean(tasks.iter().filter_map(|t| own_score(t)).collect());
    let rows = results
        .methods
        .iter()
        .filter(|m| !m.starts_with("expert:"))
        .filter_map(|m| {
            let scores: Vec<f64> = tasks
                .iter()
                .map(|t| results.scores.get(t)?.get(m).copied())
                .collect::<Option<_>>()?;
            let mean = mean(scores);
            Some(AgainstOwn {
                method: m.clone(),
                mean,
                own,
                ratio: (own > 0.0).then(|| mean / own),
            })
        })
        .collect::<Vec<_>>();
    // Only single experts listed: nothing to hold against them.
    (!rows.is_empty()).then_some((tasks, rows))
}

/// The comparison as a markdown table under `#### TITLE: ...`.
pub fn markdown(title: &str, tasks: &[String], rows: &[AgainstOwn]) -> String {
    let mut out = String::new();
    let what = match tasks.len() {
        1 => "the task its expert was".to_string(),
        n => format!("the {n} tasks they were"),
    };
    let _ = writeln!(
        out,
        "#### {title}: each method against the own experts, on {what} trained for\n"
    );
    let _ = writeln!(out, "| method | mean | own experts' mean | ratio |");
    let _ = writeln!(out, "|---|---:|---:|---:|");
    for r in rows {
        let ratio = r.ratio.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.1} | {ratio} |",
            md_cell(&r.method),
            100.0 * r.mean,
            100.0 * r.own
        );
    }
    let names: Vec<String> = tasks.iter().map(|t| md_cell(t)).collect();
    let _ = writeln!(
        out,
        "\nTasks: {}. Each task is scored by its own expert alone for the own experts' mean; a ratio of 1 is a router that loses nothing to combining experts.",
        names.join(", ")
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results() -> Results {
        let row = |xs: &[(&str, f64)]| xs.iter().map(|(m, v)| (m.to_string(), *v)).collect();
        Results {
            tasks: vec!["sort".into(), "count".into(), "new".into()],
            methods: vec![
                "phatgoose".into(),
                "expert:sort".into(),
                "expert:count".into(),
                "merged".into(),
            ],
            scores: BTreeMap::from([
                (
                    "sort".into(),
                    row(&[
                        ("phatgoose", 0.4),
                        ("expert:sort", 0.8),
                        ("expert:count", 0.1),
                        ("merged", 0.2),
                    ]),
                ),
                (
                    "count".into(),
                    row(&[
                        ("phatgoose", 0.5),
                        ("expert:sort", 0.3),
                        ("expert:count", 0.6),
                        ("merged", 0.6),
                    ]),
                ),
                ("new".into(), row(&[("phatgoose", 0.9), ("merged", 0.9)])),
            ]),
            ..Default::default()
        }
    }

    #[test]
    fn each_task_counts_its_own_expert_and_tasks_without_an_owner_stay_out() {
        let owners = BTreeMap::from([
            ("sort".to_string(), "sort".to_string()),
            ("count".into(), "count".into()),
        ]);
        let (tasks, rows) = against_own(&results(), &owners).unwrap();
        assert_eq!(tasks, ["sort", "count"]);
        let pg = &rows[0];
        assert_eq!(pg.method, "phatgoose");
        assert!((pg.mean - 0.45).abs() < 1e-12 && (pg.own - 0.7).abs() < 1e-12);
        assert!((pg.ratio.unwrap() - 0.45 / 0.7).abs() < 1e-12);
        assert_eq!(
            rows.iter().map(|r| r.method.as_str()).collect::<Vec<_>>(),
            ["phatgoose", "merged"]
        );
        let md = markdown("held-in", &tasks, &rows);
        assert!(md.contains("| phatgoose | 45.0 | 70.0 | 0.64 |"), "{md}");
        assert!(md.contains("| merged | 40.0 | 70.0 | 0.57 |"), "{md}");
    }

    #[test]
    fn no_owner_scored_alone_no_table() {
        let owners = BTreeMap::from([("sort".to_string(), "other".to_string())]);
        assert!(against_own(&results(), &owners).is_none());
    }
}
