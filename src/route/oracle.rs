//! `oracle`: per task, the score of the best single expert for that task. It
//! reads test labels to choose, so it is an upper reference, not zero-shot.

use super::best_individual::ExpertScores;
use super::{Method, Scoring};

pub const NOTE: &str = "the best single expert per task, picked with test labels (not zero-shot)";

/// The best `expert:NAME` score on `task`, or None when no expert scored it.
pub fn score(scores: &ExpertScores, task: &str) -> Option<f64> {
    pick(scores, task).and_then(|n| scores[n].get(task).copied())
}

/// The expert with the best score on `task` (ties to the first by name).
pub fn pick<'a>(scores: &'a ExpertScores, task: &str) -> Option<&'a str> {
    let mut best: Option<(&str, f64)> = None;
    for (name, s) in scores {
        if let Some(&v) = s.get(task)
            && best.is_none_or(|(_, b)| v > b)
        {
            best = Some((name.as_str(), v));
        }
    }
    best.map(|(n, _)| n)
}

pub struct Oracle;

impl Method for Oracle {
    fn name(&self) -> &'static str {
        "oracle"
    }
    fn scoring(&self) -> Scoring {
        Scoring::FromSingles
    }
    fn note(&self, _singles: &ExpertScores) -> Option<String> {
        Some(NOTE.into())
    }
    fn pick<'a>(&self, singles: &'a ExpertScores, task: &str) -> Option<&'a str> {
        pick(singles, task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_best_expert_per_task() {
        let s: ExpertScores = [
            ("a", [("t1", 0.9), ("t2", 0.1)]),
            ("b", [("t1", 0.2), ("t2", 0.7)]),
        ]
        .into_iter()
        .map(|(e, t)| {
            (
                e.to_string(),
                t.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            )
        })
        .collect();
        assert_eq!(score(&s, "t1"), Some(0.9));
        assert_eq!(score(&s, "t2"), Some(0.7));
        assert_eq!(score(&s, "t3"), None);
    }
}
