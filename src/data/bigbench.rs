//! BIG-bench JSON tasks (`task.json`), zero-shot, formatted as BIG-bench's own
//! `default_format_fn` and seqio bridge do, then `"\nAnswer:"` appended (the paper's
//! input format):
//!
//! `task_prefix + example_input_prefix + input [+ choice_prefix + choices...] + example_output_prefix + "\nAnswer:"`
//!
//! with BIG-bench's defaults (`"\nQ: "`, `"\nA: "`, `"\n  choice: "`, choices appended
//! unless `append_choices_to_input` is false, in the order numpy's
//! `RandomState(42).permutation` gives the sorted choices). Multiple-choice examples
//! (`target_scores`) keep their choices in file order; every top-scored choice is an
//! accepted answer. Generation examples accept every listed target.
//! A task without examples is a parent: its sub-task folders are read in name order.

use std::path::Path;

use serde_json::Value;

use super::example::{DataError, Example};
use super::numpy_rng::permutation;

/// What BIG-bench appends after the formatted input in the paper's setup.
pub const ANSWER_SUFFIX: &str = "\nAnswer:";

fn str_field<'a>(task: &'a Value, key: &str, default: &'a str) -> &'a str {
    task.get(key).and_then(Value::as_str).unwrap_or(default)
}

fn read_json(file: &Path) -> Result<Value, DataError> {
    let text = std::fs::read_to_string(file).map_err(|source| DataError::Io {
        path: file.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text)
        .map_err(|e| DataError::Other(format!("{}: not a BIG-bench task.json: {e}", file.display())))
}

/// Whether the task at `file` lists examples itself (a parent task has only sub-task
/// folders).
pub fn has_own_examples(file: &Path) -> Result<bool, DataError> {
    Ok(read_json(file)?.get("examples").is_some())
}

/// Every example of the task at `file` (a `task.json`), sub-tasks included.
pub fn read_task(file: &Path) -> Result<Vec<Example>, DataError> {
    let task = read_json(file)?;
    let Some(examples) = task.get("examples") else {
        return read_subtasks(file);
    };
    let examples = examples
        .as_array()
        .ok_or_else(|| DataError::Other(format!("{}: `examples` is not a list", file.display())))?;
    let prefix = str_field(&task, "task_prefix", "");
    let input_prefix = str_field(&task, "example_input_prefix", "\nQ: ");
    let output_prefix = str_field(&task, "example_output_prefix", "\nA: ");
    let choice_prefix = str_field(&task, "choice_prefix", "\n  choice: ");
    let append_choices = task
        .get("append_choices_to_input")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let mut out = Vec::with_capacity(examples.len());
    for (i, ex) in examples.iter().enumerate() {
        let bad = |reason: &str| DataError::Other(format!("{}: example {}: {reason}", file.display(), i + 1));
        let input = ex
            .get("input")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no string `input`"))?;
        let mut text = input.to_string();
        let (target, choices, answers) = if let Some(scores) = ex.get("target_scores") {
            let scores = scores
                .as_object()
                .ok_or_else(|| bad("`target_scores` is not an object"))?;
            let choices: Vec<String> = scores.keys().cloned().collect();
            let vals: Vec<f64> = scores.values().map(|v| v.as_f64().unwrap_or(0.0)).collect();
            let max = vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let min = vals.iter().cloned().fold(f64::INFINITY, f64::min);
            if choices.is_empty() || (choices.len() == 1 && max == 0.0) || (choices.len() > 1 && max <= min) {
                return Err(bad("no choice scores higher than the others"));
            }
            if append_choices {
                let mut sorted = choices.clone();
                sorted.sort();
                let order = permutation(42, sorted.len());
                let permuted: Vec<&str> = order.iter().map(|&j| sorted[j].as_str()).collect();
                text = format!("{text}{choice_prefix}{}", permuted.join(choice_prefix));
            }
            let answers: Vec<String> = choices
                .iter()
                .zip(&vals)
                .filter(|(_, v)| **v == max)
                .map(|(c, _)| c.clone())
                .collect();
            (answers[0].clone(), choices, answers)
        } else {
            let targets: Vec<String> = match ex.get("target") {
                Some(Value::String(s)) => vec![s.clone()],
                Some(Value::Array(a)) => a.iter().filter_map(|t| t.as_str().map(String::from)).collect(),
                _ => vec![],
            };
            if targets.is_empty() {
                return Err(bad("neither `target_scores` nor a string `target`"));
            }
            (targets[0].clone(), vec![], targets)
        };
        out.push(Example {
            input: format!("{prefix}{input_prefix}{text}{output_prefix}{ANSWER_SUFFIX}"),
            target,
            choices,
            answers: if answers.len() > 1 { answers } else { vec![] },
        });
    }
    if out.is_empty() {
        return Err(DataError::Other(format!("{} has no examples", file.display())));
    }
    Ok(out)
}

fn read_subtasks(file: &Path) -> Result<Vec<Example>, DataError> {
    let dir = file.parent().unwrap_or(Path::new("."));
    let mut subs: Vec<_> = std::fs::read_dir(dir)
        .map_err(|source| DataError::Io {
            path: dir.display().to_string(),
            source,
        })?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("task.json"))
        .filter(|p| p.is_file())
        .collect();
    subs.sort();
    if subs.is_empty() {
        return Err(DataError::Other(format!(
            "{}: no `examples` and no sub-task folders with a task.json",
            file.display()
        )));
    }
    let mut out = vec![];
    for s in subs {
        out.extend(read_task(&s)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_choices_and_answers() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("task.json");
        std::fs::write(
            &f,
            r#"{"task_prefix": "Solve.\n", "examples": [
                {"input": "2+2?", "target_scores": {"4": 1, "5": 0, "four": 1}},
                {"input": "Count: a b", "target": ["two", "2"]}]}"#,
        )
        .unwrap();
        let ex = read_task(&f).unwrap();
        // sorted ["4", "5", "four"], numpy permutation(3) with seed 42 is [0, 1, 2]
        assert_eq!(
            ex[0].input,
            "Solve.\n\nQ: 2+2?\n  choice: 4\n  choice: 5\n  choice: four\nA: \nAnswer:"
        );
        assert_eq!(ex[0].choices, vec!["4", "5", "four"]);
        assert_eq!(ex[0].target, "4");
        assert!(ex[0].choice_is_right(2) && !ex[0].choice_is_right(1));
        assert_eq!(ex[1].target, "two");
        assert_eq!(ex[1].accepted(), vec!["two", "2"]);
    }
}
