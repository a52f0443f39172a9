//! The `study` step: the methods of repeated evaluations (replicates, e.g. the same
//! pool trained with different seeds) ranked with their uncertainty. Reads every
//! input eval's per-example scores and bootstraps them (`eval::study`).
//!
//! Outputs: `study.json` (means, intervals, paired differences, per-replicate means)
//! and `study.md`.

use super::common::fail;
use super::eval::PER_EXAMPLE_JSON;
use crate::eval::study::{Replicate, bootstrap, markdown, merge_notes, note_same_in_every_replicate};
use crate::exec::{JobDefaults, Kind, StepContext, StepError, StepRunner};

pub use crate::artifact_files::STUDY_JSON;
pub use crate::artifact_files::STUDY_MD;

/// Bootstraps over the replicates' per-example scores: seconds on one CPU. Version 2:
/// `study.md` is headed without the step's name. Version 3: `study.md` escapes `|` and
/// line breaks in names and says "1 replicate". Version 4: the evals' notes on each
/// method (test labels, not post-hoc) under the tables. Version 5: methods whose
/// results are one artifact in every replicate are noted as such.
pub const KIND: Kind = Kind::new("study", 5, 10, JobDefaults::new(0, 1, "4G", "2:00:00"))
    .with_tables(STUDY_MD)
    .exact();

/// The methods whose every task's result is one part in every replicate (an eval's
/// parts are keyed by what each reads, so a shared part file is one artifact), from
/// the evals' `parts/` folders: only the shared parts are read, for their method.
fn one_result_for_all(
    part_dirs: &[std::path::PathBuf],
    tasks: usize,
) -> Result<std::collections::BTreeSet<String>, String> {
    use std::collections::{BTreeMap, BTreeSet};
    let mut out = BTreeSet::new();
    if part_dirs.len() < 2 {
        return Ok(out);
    }
    let names = |dir: &std::path::Path| -> BTreeSet<std::ffi::OsString> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name())
            .collect()
    };
    let mut shared = names(&part_dirs[0]);
    for d in &part_dirs[1..] {
        let here = names(d);
        shared.retain(|n| here.contains(n));
    }
    let mut per_method: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for n in shared {
        let path = part_dirs[0].join(&n);
        let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let part: super::eval_parts::Finished = serde_json::from_reader(std::io::BufReader::new(file))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        per_method.entry(part.method).or_default().insert(part.task);
    }
    out.extend(
        per_method
            .into_iter()
            .filter(|(_, t)| t.len() >= tasks)
            .map(|(m, _)| m),
    );
    Ok(out)
}

/// A study step's parameters (the schema's `study` node, defaults filled).
#[derive(Debug, serde::Deserialize)]
struct StudyParams {
    /// The replicates, in the manifest's order.
    evals: Vec<String>,
    compare: String,
    samples: usize,
    seed: u64,
}

pub struct StudyStep;

impl StepRunner for StudyStep {
    fn kind(&self) -> &'static str {
        "study"
    }
    fn run(&self, ctx: &StepContext) -> Result<(), StepError> {
        let StudyParams {
            evals: names,
            compare,
            samples,
            seed,
        } = ctx.params()?;
        let compare = compare.as_str();
        let mut replicates: Vec<Replicate> = vec![];
        let mut methods: Vec<String> = vec![];
        let mut notes = vec![];
        let mut part_dirs = vec![];
        for name in &names {
            let inp = ctx.input(&format!("eval:{name}"))?;
            part_dirs.push(inp.files.join(crate::artifact_files::EVAL_PARTS_DIR));
            let path = inp.files.join(PER_EXAMPLE_JSON);
            let bytes = std::fs::read(&path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
            let r: Replicate =
                serde_json::from_slice(&bytes).map_err(|e| fail(format!("{}: {e}", path.display())))?;
            let results: crate::eval::Results = serde_json::from_slice(
                &std::fs::read(inp.files.join(crate::artifact_files::RESULTS_JSON))
                    .map_err(|e| fail(format!("{name}: {e}")))?,
            )
            .map_err(|e| fail(format!("{name}: results.json: {e}")))?;
            // The first eval's column order is the study's.
            if methods.is_empty() {
                methods = results
                    .methods
                    .iter()
                    .filter(|m| r.contains_key(*m))
                    .cloned()
                    .collect();
            }
            notes.push(results.notes);
            replicates.push(r);
        }
        let mut result = bootstrap(&names, &replicates, &methods, compare, samples, seed).map_err(fail)?;
        result.notes = merge_notes(&names, &notes);
        result.notes.retain(|m, _| methods.contains(m));
        let shared = one_result_for_all(&part_dirs, result.tasks.len()).map_err(fail)?;
        note_same_in_every_replicate(&mut result.notes, methods.iter().filter(|m| shared.contains(*m)));
        std::fs::write(
            ctx.out.join(STUDY_JSON),
            serde_json::to_vec_pretty(&result).expect("json"),
        )?;
        std::fs::write(
            ctx.out.join(STUDY_MD),
            // Headed by the kind, not the name: an artifact's bytes depend on its key
            // alone (`report` heads it with the study's name).
            markdown("study", &result),
        )?;
        Ok(())
    }
}
