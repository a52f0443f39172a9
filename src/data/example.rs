//! One example of any dataset: an input text, a target text, and answer choices for
//! multiple-choice tasks. Every dataset source produces these; datasets are stored as
//! JSON Lines of them.

use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    pub input: String,
    pub target: String,
    /// Answer choices (one of them equals `target`); empty for generation tasks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
    /// Every acceptable answer when there is more than one (BIG-bench multi-answer
    /// tasks); empty means `target` alone is right.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<String>,
}

impl Example {
    /// Index of the target among the choices, if this is a multiple-choice example.
    pub fn answer_index(&self) -> Option<usize> {
        self.choices.iter().position(|c| *c == self.target)
    }

    /// The acceptable answers: `answers`, or `target` alone.
    pub fn accepted(&self) -> Vec<&str> {
        if self.answers.is_empty() {
            vec![self.target.as_str()]
        } else {
            self.answers.iter().map(String::as_str).collect()
        }
    }

    /// Whether choice `i` is an acceptable answer.
    pub fn choice_is_right(&self, i: usize) -> bool {
        self.choices
            .get(i)
            .is_some_and(|c| self.accepted().contains(&c.as_str()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Bad {
        path: String,
        line: usize,
        reason: String,
    },
    #[error("{0}")]
    Other(String),

    #[error(transparent)]
    Hub(#[from] crate::hub::HubError),
}

pub fn write_jsonl(path: &Path, examples: &[Example]) -> Result<(), DataError> {
    let io = |source| DataError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    for e in examples {
        serde_json::to_writer(&mut f, e).map_err(|e| io(e.into()))?;
        f.write_all(b"\n").map_err(io)?;
    }
    f.flush().map_err(io)
}

/// Reads examples written by [`write_jsonl`].
pub fn read_jsonl(path: &Path) -> Result<Vec<Example>, DataError> {
    let io = |source| DataError::Io {
        path: path.display().to_string(),
        source,
    };
    let f = std::io::BufReader::new(std::fs::File::open(path).map_err(io)?);
    let mut out = vec![];
    for (i, line) in f.lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).map_err(|e| DataError::Bad {
            path: path.display().to_string(),
            line: i + 1,
            reason: e.to_string(),
        })?);
    }
    Ok(out)
}
