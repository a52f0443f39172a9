//! `goosepipe exec`: builds one step from the store alone, as a cluster job does. The
//! step's frozen spec is `recipes/KEY.json` (written by the head before submitting), so
//! a job never parses the manifest.

use std::path::Path;

use super::progress::{Outcome, Reporter};
use super::run::{RunOptions, execute};
use super::step::{CancelFlag, Registry, StepError};
use crate::store::lockfile::Lockfile;
use crate::store::{Key, Presence, Store};

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Step(#[from] StepError),
}

/// The key at line `index` (0-based) of a key list file (one hex key per line): how a
/// task of a job array finds its step.
pub fn key_from_list(path: &Path, index: usize) -> Result<Key, ExecError> {
    let text = crate::file_kind::read_regular(path)
        .and_then(|b| {
            String::from_utf8(b)
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "it is not UTF-8 text"))
        })
        .map_err(|e| ExecError::Usage(format!("cannot read the key list {}: {e}", path.display())))?;
    let line = text.lines().nth(index).ok_or_else(|| {
        ExecError::Usage(format!(
            "the key list {} has no line {index} (it has {})",
            path.display(),
            text.lines().count()
        ))
    })?;
    // Line `index` is the array task's index (from 0); a person counts from 1.
    line.trim().parse().map_err(|e: String| {
        ExecError::Usage(format!(
            "the key list {}, line {} (index {index}): {e}",
            path.display(),
            index + 1
        ))
    })
}

/// Builds `key` unless it is already published. Idempotent: a job that finds its key
/// published (an earlier job, another head, a local run) returns at once, and the
/// per-key lock inside [`execute`] keeps two jobs from building the same key.
pub fn exec_key(
    store: &Store,
    key: &Key,
    registry: &Registry,
    lock: &Lockfile,
    opts: &RunOptions,
    reporter: &dyn Reporter,
    cancel: &CancelFlag,
) -> Result<Outcome, ExecError> {
    if let Presence::Present(m) = store.presence(key) {
        reporter.note(&format!(
            "{} ({}) is already published; nothing to do",
            m.spec.id,
            key.short()
        ));
        return Ok(Outcome::Reused);
    }
    let recipe = store.read_recipe(key).map_err(|why| {
        ExecError::Usage(format!(
            "the recipe for key {} is damaged: {why}; run the manifest again to write it anew",
            key.short()
        ))
    })?;
    let spec = recipe.ok_or_else(|| {
        ExecError::Usage(format!(
            "the store {} has no recipe for key {} (recipes/{}.json); the head writes it before submitting",
            store.root.display(),
            key.short(),
            key.hex()
        ))
    })?;
    if spec.key != *key {
        return Err(ExecError::Usage(format!(
            "recipes/{}.json describes key {}",
            key.hex(),
            spec.key.short()
        )));
    }
    // What the recipe says must be what the key was made from: an edited recipe would
    // publish another step's output under this key.
    if crate::plan::key::of_spec(&spec) != Some(*key) {
        return Err(ExecError::Usage(format!(
            "recipes/{}.json does not hash to its key (edited by hand?): run the manifest again to write it anew",
            key.hex()
        )));
    }
    let t0 = std::time::Instant::now();
    let result = execute(&spec, store, registry, lock, opts, reporter, cancel);
    let secs = t0.elapsed().as_secs_f64();
    match result {
        Ok(outcome) => {
            reporter.finished(&spec.id, outcome, secs, "");
            Ok(outcome)
        }
        Err(e) => {
            let outcome = if matches!(e, StepError::Cancelled) {
                Outcome::Cancelled
            } else {
                Outcome::Failed
            };
            reporter.finished(
                &spec.id,
                outcome,
                secs,
                &super::step::with_full_disk_hint(e.to_string()),
            );
            Err(e.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_lists_are_indexed_from_zero() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("k");
        let (a, b) = (Key([1; 32]), Key([2; 32]));
        std::fs::write(&p, format!("{}\n{}\n", a.hex(), b.hex())).unwrap();
        assert_eq!(key_from_list(&p, 1).unwrap(), b);
        assert!(
            key_from_list(&p, 2)
                .unwrap_err()
                .to_string()
                .contains("no line 2")
        );
        // A line that is no key names the file and the line.
        std::fs::write(&p, format!("{}\nzz\n", a.hex())).unwrap();
        let err = key_from_list(&p, 1).unwrap_err().to_string();
        assert!(
            err.contains("k, line 2 (index 1): not a 64-digit hex key: \"zz\""),
            "{err}"
        );
    }

    #[test]
    fn a_key_without_recipe_is_a_clear_error() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        let r = exec_key(
            &store,
            &Key([3; 32]),
            &Registry::new(),
            &Lockfile::default(),
            &RunOptions::default(),
            &super::super::PlainReporter::new(true),
            &CancelFlag::new(),
        );
        assert!(r.unwrap_err().to_string().contains("no recipe"));
    }
}
