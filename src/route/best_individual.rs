//! `best-individual`: the single expert with the best mean score over the eval
//! tasks, used everywhere. Picking it reads test labels, which the note says.

use std::collections::BTreeMap;

use super::{Method, Scoring};

/// Per expert name, per task, the score of `expert:NAME`.
pub type ExpertScores = BTreeMap<String, BTreeMap<String, f64>>;

/// The expert with the highest mean over its tasks; ties go to the first name.
pub fn pick(scores: &ExpertScores) -> Option<&str> {
    let mean = |s: &BTreeMap<String, f64>| s.values().sum::<f64>() / s.len().max(1) as f64;
    scores
        .iter()
        .max_by(|(a, sa), (b, sb)| mean(sa).total_cmp(&mean(sb)).then(b.cmp(a)))
        .map(|(n, _)| n.as_str())
}

pub fn note(expert: &str) -> String {
    format!("expert \"{expert}\", the best mean over these tasks (picked with test labels)")
}

pub struct BestIndividual;

impl Method for BestIndividual {
    fn name(&self) -> &'static str {
        "best-individual"
    }
    fn scoring(&self) -> Scoring {
        Scoring::FromSingles
    }
    fn note(&self, singles: &ExpertScores) -> Option<String> {
        pick(singles).map(note)
    }
    fn pick<'a>(&self, singles: &'a ExpertScores, _task: &str) -> Option<&'a str> {
        pick(singles)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(rows: &[(&str, &[(&str, f64)])]) -> ExpertScores {
        rows.iter()
            .map(|(e, t)| {
                (
                    e.to_string(),
                    t.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn picks_the_best_mean_and_the_first_name_on_ties() {
        let s = scores(&[
            ("b", &[("t1", 0.9), ("t2", 0.1)]),
            ("a", &[("t1", 0.5), ("t2", 0.5)]),
            ("c", &[("t1", 0.2), ("t2", 0.6)]),
        ]);
        // a and b tie at 0.5: the first name wins.
        assert_eq!(pick(&s), Some("a"));
        let s = scores(&[("a", &[("t1", 0.4)]), ("b", &[("t1", 0.6)])]);
        assert_eq!(pick(&s), Some("b"));
        assert_eq!(pick(&ExpertScores::new()), None);
    }
}
