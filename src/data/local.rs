//! Field mapping: rows (JSON Lines, parquet, hub splits) to examples by naming the
//! input, target and choices fields.

use std::path::Path;

use super::example::{DataError, Example};
use super::rows::{Row, visit_jsonl_rows};

#[derive(Default)]
pub struct Fields<'a> {
    pub input: &'a str,
    pub target: &'a str,
    pub choices: &'a str,
    /// Appended to every input (BIG-bench: "\nAnswer:").
    pub input_suffix: &'a str,
    /// Answer choices for rows that have none (e.g. True/False tasks).
    pub fixed_choices: &'a [String],
}

/// A field's value as text: strings as they are, numbers and booleans as written.
pub fn text_of(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Maps one row to an example; the error is the reason, without the location.
pub fn map_row(obj: &Row, f: &Fields<'_>) -> Result<Example, String> {
    map_row_after(obj, f, 0)
}

/// [`map_row`] of a row that `mapped` rows before it passed: a field missing from it
/// alone is this row's fault, not the mapping's (which the hint names otherwise).
fn map_row_after(obj: &Row, f: &Fields<'_>, mapped: usize) -> Result<Example, String> {
    let get = |field: &str| -> Result<String, String> {
        let v = obj.get(field).ok_or_else(|| {
            let mut has: Vec<String> = obj.keys().map(|k| format!("{k:?}")).collect();
            has.truncate(12);
            let has = if has.is_empty() {
                "it has no fields".to_string()
            } else {
                format!("it has {}", has.join(", "))
            };
            // A .csv whose columns are tab-separated reads as one column.
            let tabs = if obj.keys().any(|k| k.contains('\t')) {
                "; its columns look tab-separated: name the file .tsv"
            } else {
                ""
            };
            if mapped > 0 {
                return format!(
                    "no field \"{field}\" ({has}; the {mapped} row(s) before it have it: fix or remove this row)"
                );
            }
            format!("no field \"{field}\" ({has}; set input-field= / target-field= on the dataset{tabs})")
        })?;
        text_of(v).ok_or_else(|| {
            let kind = match v {
                // JSON's null, an empty parquet/Arrow cell, and a float NaN (pandas'
                // missing value, which JSON cannot hold) all read as null.
                serde_json::Value::Null => "empty (null, a missing value, or a float NaN)",
                serde_json::Value::Array(_) => "a list",
                serde_json::Value::Object(_) => "an object",
                _ => "not text",
            };
            format!("field \"{field}\" is {kind}, not text")
        })
    };
    let input = get(f.input)? + f.input_suffix;
    // A list of targets: every one is accepted, the first is the training target.
    let (target, answers) = match obj.get(f.target) {
        Some(serde_json::Value::Array(a)) => {
            let all = a
                .iter()
                .map(|t| text_of(t).ok_or_else(|| format!("field \"{}\" must hold strings", f.target)))
                .collect::<Result<Vec<_>, _>>()?;
            let first = all
                .first()
                .cloned()
                .ok_or_else(|| format!("field \"{}\" is an empty list", f.target))?;
            (first, if all.len() > 1 { all } else { vec![] })
        }
        _ => (get(f.target)?, vec![]),
    };
    // A CSV cell holds a list as JSON text (`["yes", "no"]`), and an empty cell no
    // list (the fixed choices, if any).
    let listed = match obj.get(f.choices) {
        Some(serde_json::Value::String(s)) if s.trim().is_empty() => Some(serde_json::Value::Null),
        Some(serde_json::Value::String(s)) if s.trim_start().starts_with('[') => Some(
            serde_json::from_str(s)
                .map_err(|e| format!("field \"{}\": {s:?} is not a JSON list ({e})", f.choices))?,
        ),
        _ => None,
    };
    let choices = match listed.as_ref().or(obj.get(f.choices)) {
        None | Some(serde_json::Value::Null) => f.fixed_choices.to_vec(),
        Some(serde_json::Value::Array(a)) if a.is_empty() => f.fixed_choices.to_vec(),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|c| text_of(c).ok_or_else(|| format!("field \"{}\" must hold strings", f.choices)))
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => {
            let shown: String = other.to_string().chars().take(60).collect();
            return Err(format!(
                "field \"{}\" must be a list of choices, e.g. [\"yes\", \"no\"] (found {shown})",
                f.choices
            ));
        }
    };
    if !choices.is_empty() && !choices.contains(&target) {
        return Err(format!("the target {target:?} is not among the choices"));
    }
    // One answer to rank against itself: every method would score it right.
    if let Some(first) = choices.first()
        && choices.iter().all(|c| c == first)
    {
        return Err(format!(
            "field \"{}\" holds one distinct choice ({first:?}): rank classification needs at least two different answers (leave the field out for a generation example)",
            f.choices
        ));
    }
    Ok(Example {
        input,
        target,
        choices,
        answers,
    })
}

/// Reads a JSONL file; every line must be an object with the input and target fields
/// (strings, numbers or booleans). The choices field is optional; when present it
/// must be a list of strings that contains the target. Errors name the line.
pub fn read_jsonl_mapped(path: &Path, f: &Fields<'_>) -> Result<Vec<Example>, DataError> {
    let mut out = vec![];
    visit_jsonl_rows(path, |row| {
        out.push(map_row_after(&row, f, out.len())?);
        Ok(())
    })?;
    if out.is_empty() {
        return Err(DataError::Other(format!("{} has no examples", path.display())));
    }
    Ok(out)
}

/// Maps rows read from `source` (a parquet file or a hub split); errors name the row.
pub fn map_rows(source: &str, rows: &[Row], f: &Fields<'_>) -> Result<Vec<Example>, DataError> {
    let out = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            map_row_after(r, f, i)
                .map_err(|reason| DataError::Other(format!("{source}: row {}: {reason}", i + 1)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if out.is_empty() {
        return Err(DataError::Other(format!("{source} has no examples")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_fields_and_points_at_bad_lines() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("d.jsonl");
        std::fs::write(
            &p,
            "{\"q\": \"2+2\", \"a\": 4, \"opts\": [\"3\", \"4\"]}\n\n{\"q\": \"x\"}\n",
        )
        .unwrap();
        let f = Fields {
            input: "q",
            target: "a",
            choices: "opts",
            ..Default::default()
        };
        // Rows before it had the field: this row's fault, not the mapping's.
        let err = read_jsonl_mapped(&p, &f).unwrap_err().to_string();
        assert!(
            err.ends_with(
                "d.jsonl:3: no field \"a\" (it has \"q\"; the 1 row(s) before it have it: fix or remove this row)"
            ),
            "{err}"
        );
        // The first row without it: the mapping is what to check.
        std::fs::write(&p, "{\"q\": \"x\"}\n{\"q\": \"2+2\", \"a\": 4}\n").unwrap();
        let err = read_jsonl_mapped(&p, &f).unwrap_err().to_string();
        assert!(
            err.ends_with(
                "d.jsonl:1: no field \"a\" (it has \"q\"; set input-field= / target-field= on the dataset)"
            ),
            "{err}"
        );
        // One column whose name holds tabs: a tab-separated file named .csv.
        let mut row = Row::new();
        row.insert("q\ta".into(), serde_json::json!("x\ty"));
        let err = map_row(&row, &f).unwrap_err();
        assert!(
            err.ends_with("its columns look tab-separated: name the file .tsv)"),
            "{err}"
        );
        // A missing value (null; a float NaN of a parquet file reads so) is said as one.
        let mut row = Row::new();
        row.insert("q".into(), serde_json::json!("x"));
        row.insert("a".into(), serde_json::json!(f64::NAN));
        assert_eq!(
            map_row(&row, &f).unwrap_err(),
            "field \"a\" is empty (null, a missing value, or a float NaN), not text"
        );
        std::fs::write(&p, "{\"q\": \"2+2\", \"a\": 4, \"opts\": [\"3\", \"4\"]}\n").unwrap();
        let ex = read_jsonl_mapped(&p, &f).unwrap();
        assert_eq!(ex[0].target, "4");
        assert_eq!(ex[0].answer_index(), Some(1));
        // A byte-order mark is read past; bytes that are not UTF-8 are named by line.
        std::fs::write(&p, "\u{feff}{\"q\": \"2+2\", \"a\": 4}\n").unwrap();
        assert_eq!(read_jsonl_mapped(&p, &f).unwrap()[0].input, "2+2");
        std::fs::write(&p, b"{\"q\": \"a\", \"a\": 1}\n{\"q\": \"\xff\", \"a\": 1}\n").unwrap();
        let err = read_jsonl_mapped(&p, &f).unwrap_err().to_string();
        assert!(
            err.ends_with("d.jsonl:2: not UTF-8 text (byte 8 of the line); save the file as UTF-8"),
            "{err}"
        );
    }

    /// Choices as a CSV cell holds them: JSON text, or empty for none (then the fixed
    /// choices); anything else says what a list looks like.
    #[test]
    fn choices_given_as_text_are_a_json_list_or_empty() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("d.jsonl");
        let fixed = ["yes".to_string(), "no".to_string()];
        let f = Fields {
            input: "q",
            target: "a",
            choices: "opts",
            fixed_choices: &fixed,
            ..Default::default()
        };
        std::fs::write(&p, "{\"q\": \"x\", \"a\": \"no\", \"opts\": \"\"}\n").unwrap();
        assert_eq!(read_jsonl_mapped(&p, &f).unwrap()[0].choices, fixed);
        std::fs::write(
            &p,
            "{\"q\": \"x\", \"a\": \"b\", \"opts\": \"[\\\"a\\\", \\\"b\\\"]\"}\n",
        )
        .unwrap();
        assert_eq!(read_jsonl_mapped(&p, &f).unwrap()[0].choices, ["a", "b"]);
        std::fs::write(&p, "{\"q\": \"x\", \"a\": \"b\", \"opts\": \"a|b\"}\n").unwrap();
        let err = read_jsonl_mapped(&p, &f).unwrap_err().to_string();
        assert!(
            err.contains("field \"opts\" must be a list of choices, e.g. [\"yes\", \"no\"] (found \"a|b\")"),
            "{err}"
        );
        for one in ["[\\\"b\\\"]", "[\\\"b\\\", \\\"b\\\"]"] {
            std::fs::write(
                &p,
                format!("{{\"q\": \"x\", \"a\": \"b\", \"opts\": \"{one}\"}}\n"),
            )
            .unwrap();
            let err = read_jsonl_mapped(&p, &f).unwrap_err().to_string();
            assert!(
                err.contains(
                    "field \"opts\" holds one distinct choice (\"b\"): rank classification needs at least two"
                ),
                "{err}"
            );
        }
        std::fs::write(&p, "{\"q\": \"x\", \"a\": \"b\", \"opts\": \"[a, b\"}\n").unwrap();
        let err = read_jsonl_mapped(&p, &f).unwrap_err().to_string();
        assert!(
            err.contains("field \"opts\": \"[a, b\" is not a JSON list"),
            "{err}"
        );
    }
}
