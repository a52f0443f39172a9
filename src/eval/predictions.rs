//! What each method answered, example by example: an eval's `predictions.json`, and
//! its rendering for `goosepipe report --examples`. A mean of 0 on a task says
//! nothing about why; the answers themselves do (a wrong format, an empty output,
//! one choice always picked).

use std::collections::BTreeMap;
use std::fmt::Write as _;

pub use crate::artifact_files::PREDICTIONS_JSON;

/// An eval's predictions: task -> its examples as scored and each method's answers.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Predictions {
    pub tasks: BTreeMap<String, TaskPredictions>,
}

impl Predictions {
    /// One task of a `predictions.json` (`None` when it has none of that name), parsed
    /// alone: the others are skipped unbuilt, so showing one task of a large eval holds
    /// that task in memory, not every task's examples and answers.
    pub fn one_task(json: &[u8], task: &str) -> serde_json::Result<Option<TaskPredictions>> {
        use serde::de::{DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, Visitor};
        use std::marker::PhantomData;
        /// The value under key `.0` of a map, read by seed `.1` (None when the map has no
        /// such key); every other entry is skipped unbuilt.
        struct Entry<'a, S>(&'a str, S);
        impl<'de, S: DeserializeSeed<'de>> Visitor<'de> for Entry<'_, S> {
            type Value = Option<S::Value>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "a map that may hold {:?}", self.0)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let (key, mut seed, mut found) = (self.0, Some(self.1), None);
                while let Some(name) = map.next_key::<String>()? {
                    match seed.take_if(|_| name == key) {
                        Some(s) => found = Some(map.next_value_seed(s)?),
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(found)
            }
        }
        impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Entry<'_, S> {
            type Value = Option<S::Value>;
            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_map(self)
            }
        }
        let mut de = serde_json::Deserializer::from_slice(json);
        let tasks = Entry("tasks", Entry(task, PhantomData::<TaskPredictions>)).deserialize(&mut de)?;
        de.end()?;
        tasks.ok_or_else(|| serde_json::Error::missing_field("tasks"))
    }
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct TaskPredictions {
    pub metric: String,
    /// The examples in the order the eval scored them (a sample of the dataset when
    /// the eval caps their number).
    pub examples: Vec<Shown>,
    /// method -> its answers, one per example.
    pub methods: BTreeMap<String, Answers>,
}

/// An example as the eval saw it.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Shown {
    pub input: String,
    /// Every answer that counts as right.
    pub answers: Vec<String>,
    /// The answer choices of a rank-classification example.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
}

/// One method's answers on a task, in example order.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Answers {
    /// The chosen answer choice, or the generated text.
    pub predictions: Vec<String>,
    /// Each answer's score (1/0, or ROUGE-L F for rouge-l).
    pub scores: Vec<f64>,
}

/// Which examples `render` shows.
pub struct Selection<'a> {
    /// At most this many.
    pub limit: usize,
    /// Only those this method did not get fully right.
    pub wrong: Option<&'a str>,
}

/// Whether a method ran on a task (what `Selection::wrong` may name).
pub fn ran(task: &TaskPredictions, method: &str) -> bool {
    task.methods.contains_key(method)
}

/// Longest input shown, in characters; a longer one is cut with its length said.
const INPUT_SHOWN: usize = 400;

/// One task's examples with every method's answer, as text: the example's input and
/// right answers, then one line per method (in `order`), marked right or wrong. An
/// error when `wrong` names a method the eval did not run.
pub fn render(
    title: &str,
    task: &TaskPredictions,
    order: &[String],
    select: &Selection,
    note: Option<&str>,
) -> Result<String, String> {
    let methods: Vec<&String> = order.iter().filter(|m| task.methods.contains_key(*m)).collect();
    let picked = picked(task, order, select)?;
    let width = methods.iter().map(|m| m.chars().count()).max().unwrap_or(0);
    let mut out = String::new();
    let what = match select.wrong {
        Some(m) => format!(
            "{} of {} examples {m} got wrong",
            picked.len(),
            task.examples.len()
        ),
        None => format!("{} examples", task.examples.len()),
    };
    let shown = picked.len().min(select.limit);
    let _ = writeln!(out, "## {title}: {}, {what}, {shown} shown\n", task.metric);
    if let Some(note) = note {
        let _ = writeln!(out, "note: {note}\n");
    }
    for &i in picked.iter().take(select.limit) {
        let e = &task.examples[i];
        let _ = writeln!(out, "example {}", i + 1);
        let _ = writeln!(out, "  input:   {}", cut(&e.input));
        if !e.choices.is_empty() {
            let _ = writeln!(out, "  choices: {}", quoted(&e.choices));
        }
        let _ = writeln!(out, "  answer:  {}", quoted(&e.answers));
        for m in &methods {
            let a = &task.methods[*m];
            let (Some(p), Some(s)) = (a.predictions.get(i), a.scores.get(i)) else {
                continue;
            };
            let mark = if *s >= 1.0 {
                "right".to_string()
            } else if task.metric == "rouge-l" {
                format!("{s:.2}")
            } else {
                "wrong".to_string()
            };
            let _ = writeln!(out, "  {m:<width$}  {mark:<5}  {p:?}");
        }
        out.push('\n');
    }
    if picked.len() > select.limit {
        let _ = writeln!(
            out,
            "({} more; --limit N shows more)",
            picked.len() - select.limit
        );
    }
    Ok(out.trim_end().to_string())
}

/// The indices of the examples `select` keeps (before its limit), in order.
fn picked(task: &TaskPredictions, order: &[String], select: &Selection) -> Result<Vec<usize>, String> {
    let wrong = match select.wrong {
        Some(m) => Some(task.methods.get(m).ok_or_else(|| {
            let ran: Vec<&str> = order
                .iter()
                .filter(|m| task.methods.contains_key(*m))
                .map(String::as_str)
                .collect();
            format!("no method {m:?} in this eval (it ran {})", ran.join(", "))
        })?),
        None => None,
    };
    Ok((0..task.examples.len())
        .filter(|&i| wrong.is_none_or(|a| a.scores.get(i).is_some_and(|&s| s < 1.0)))
        .collect())
}

/// The examples `select` keeps, limit included, with every method's answers to
/// them, and each example's place in the eval's order (from 1): what `--format json`
/// prints.
pub fn selected(
    task: &TaskPredictions,
    order: &[String],
    select: &Selection,
) -> Result<serde_json::Value, String> {
    let keep: Vec<usize> = picked(task, order, select)?
        .into_iter()
        .take(select.limit)
        .collect();
    let rows: Vec<serde_json::Value> = keep
        .iter()
        .map(|&i| {
            let e = &task.examples[i];
            let answers: serde_json::Map<String, serde_json::Value> = order
                .iter()
                .filter_map(|m| {
                    let a = task.methods.get(m)?;
                    let v =
                        serde_json::json!({"prediction": a.predictions.get(i)?, "score": a.scores.get(i)?});
                    Some((m.clone(), v))
                })
                .collect();
            serde_json::json!({
                "example": i + 1,
                "input": e.input,
                "answers": e.answers,
                "choices": e.choices,
                "methods": answers,
            })
        })
        .collect();
    Ok(serde_json::json!({"metric": task.metric, "examples_in_task": task.examples.len(), "examples": rows}))
}

fn quoted(list: &[String]) -> String {
    list.iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(" | ")
}

fn cut(input: &str) -> String {
    let n = input.chars().count();
    if n <= INPUT_SHOWN {
        format!("{input:?}")
    } else {
        let head: String = input.chars().take(INPUT_SHOWN).collect();
        format!("{head:?}... ({n} characters)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> TaskPredictions {
        let answers = |p: &[&str], s: &[f64]| Answers {
            predictions: p.iter().map(|x| x.to_string()).collect(),
            scores: s.to_vec(),
        };
        TaskPredictions {
            metric: "rank-classification".into(),
            examples: vec![
                Shown {
                    input: "sort: c a b".into(),
                    answers: vec!["a b c".into()],
                    choices: vec!["a b c".into(), "c b a".into()],
                },
                Shown {
                    input: "sort: b a".into(),
                    answers: vec!["a b".into()],
                    choices: vec!["a b".into(), "b a".into()],
                },
            ],
            methods: BTreeMap::from([
                ("phatgoose".into(), answers(&["c b a", "a b"], &[0.0, 1.0])),
                ("merged".into(), answers(&["a b c", "a b"], &[1.0, 1.0])),
            ]),
        }
    }

    /// One task read out of a file of several is the task as written; a name it does
    /// not hold is none; a damaged file is an error, not a task.
    #[test]
    fn one_task_is_read_alone() {
        let mut other = task();
        other.metric = "exact-match".into();
        let all = Predictions {
            tasks: BTreeMap::from([("a".to_string(), other), ("b".to_string(), task())]),
        };
        let json = serde_json::to_vec(&all).unwrap();
        let b = Predictions::one_task(&json, "b").unwrap().unwrap();
        assert_eq!(
            serde_json::to_value(&b).unwrap(),
            serde_json::to_value(task()).unwrap()
        );
        assert_eq!(
            Predictions::one_task(&json, "a").unwrap().unwrap().metric,
            "exact-match"
        );
        assert!(Predictions::one_task(&json, "c").unwrap().is_none());
        assert!(Predictions::one_task(&json[..json.len() - 2], "b").is_err());
        assert!(Predictions::one_task(b"{\"tasks\": {}} x", "b").is_err());
        assert!(Predictions::one_task(b"{}", "b").is_err());
    }

    #[test]
    fn shows_each_methods_answer_in_the_manifests_order() {
        let order = ["phatgoose".to_string(), "merged".to_string()];
        let text = render(
            "eval:e / sort",
            &task(),
            &order,
            &Selection {
                limit: 10,
                wrong: None,
            },
            None,
        )
        .unwrap();
        assert!(
            text.starts_with("## eval:e / sort: rank-classification, 2 examples, 2 shown"),
            "{text}"
        );
        let first: Vec<&str> = text.lines().skip(2).take(6).collect();
        assert_eq!(
            first,
            [
                "example 1",
                "  input:   \"sort: c a b\"",
                "  choices: \"a b c\" | \"c b a\"",
                "  answer:  \"a b c\"",
                "  phatgoose  wrong  \"c b a\"",
                "  merged     right  \"a b c\"",
            ]
        );
    }

    #[test]
    fn wrong_keeps_the_examples_a_method_missed() {
        let order = ["phatgoose".to_string(), "merged".to_string()];
        let text = render(
            "t",
            &task(),
            &order,
            &Selection {
                limit: 10,
                wrong: Some("phatgoose"),
            },
            Some("3 of 8 tokens are <unk>"),
        )
        .unwrap();
        assert!(
            text.contains("shown\n\nnote: 3 of 8 tokens are <unk>\n\nexample 1"),
            "{text}"
        );
        assert!(
            text.contains(": rank-classification, 1 of 2 examples phatgoose got wrong, 1 shown"),
            "{text}"
        );
        assert!(
            text.contains("example 1") && !text.contains("example 2"),
            "{text}"
        );
        let err = render(
            "t",
            &task(),
            &order,
            &Selection {
                limit: 10,
                wrong: Some("arrow"),
            },
            None,
        )
        .unwrap_err();
        assert_eq!(err, "no method \"arrow\" in this eval (it ran phatgoose, merged)");
    }

    #[test]
    fn json_keeps_the_same_examples_with_their_answers() {
        let order = ["phatgoose".to_string(), "merged".to_string()];
        let v = selected(
            &task(),
            &order,
            &Selection {
                limit: 10,
                wrong: Some("phatgoose"),
            },
        )
        .unwrap();
        assert_eq!(v["examples_in_task"], 2);
        let rows = v["examples"].as_array().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["example"], 1);
        assert_eq!(rows[0]["methods"]["phatgoose"]["prediction"], "c b a");
        assert_eq!(rows[0]["methods"]["merged"]["score"], 1.0);
    }

    #[test]
    fn a_limit_says_how_many_more() {
        let order = ["merged".to_string()];
        let text = render(
            "t",
            &task(),
            &order,
            &Selection {
                limit: 1,
                wrong: None,
            },
            None,
        )
        .unwrap();
        assert!(text.ends_with("(1 more; --limit N shows more)"), "{text}");
        assert!(!text.contains("phatgoose"), "only the methods asked for: {text}");
    }
}
