//! The `dataset` step: materializes a dataset node as JSON Lines of examples.
//!
//! Output:
//! - `examples.jsonl`: every example of the node's `split` (what eval tasks score);
//! - `validation.jsonl`: the `validation-split`, or a held-back 10% of the split;
//! - `train.jsonl`: the split minus the held-back slice (only when one was held back;
//!   training reads it, else `examples.jsonl`);
//! - `data.json`: where the rows came from (hub commit, files, templates, counts).

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::data::local::{Fields, map_rows, read_jsonl_mapped, text_of};
use crate::data::promptsource::{self, Renderer, Selection};
use crate::data::rows::{Row, read_rows};
use crate::data::{Example, bigbench, synthetic, write_jsonl};
use crate::exec::{JobDefaults, Kind, StepContext, StepError, StepRunner};
use crate::hub::{HubOptions, dataset as hub};
use crate::plan::{LocalPath, LocalPaths, Review};
use crate::store::External;

/// Rendering up to 500,000 templated pairs is CPU work. Version 3: a local JSONL file
/// honours `keep-field`/`keep-values` and `drop-empty` (version 2 ignored them there).
/// Version 4: `data.json` counts the rows of a local JSONL file (it said 0).
pub const KIND: Kind = Kind {
    review,
    // Readers open the examples, never `data.json` (where the rows came from, which
    // changes with a file's name or a hub revision when the rows do not).
    content: Some(&[DATA_JSON]),
    exact: true,
    ..Kind::new("dataset", 4, 1, JobDefaults::new(0, 2, "8G", "2:00:00"))
};

fn review(_name: &str, params: &serde_json::Value, paths: &LocalPaths) -> Vec<Review> {
    let mut found = review_letters(params);
    found.extend(paths.get("bigbench").and_then(review_bigbench_file));
    found
}

/// A BIG-bench parent task named by its task.json reads the sub-task folders beside
/// it, which only the folder's key covers: edits to them would change no key. Said by
/// `check` and `plan`; the dataset step refuses it too (a recipe planned before).
fn review_bigbench_file(path: &LocalPath) -> Option<Review> {
    let message = parent_task_file(&path.abs, &path.display)?;
    Some(Review {
        at: "bigbench".into(),
        code: "manifest::wrong-path",
        message,
        label: "a parent task's file".into(),
        help:
            "a file's key covers that file only, not the sub-task folders it reads; the folder's covers them"
                .into(),
        warning: false,
    })
}

/// Why `path`, a BIG-bench task named by its file, is refused: it is a parent task's
/// (its examples are in the sub-task folders beside it). None for a folder, a task with
/// examples of its own, or a file that cannot be read (the step says why).
fn parent_task_file(path: &Path, display: &str) -> Option<String> {
    if path.is_dir() || !matches!(bigbench::has_own_examples(path), Ok(false)) {
        return None;
    }
    let folder = Path::new(display)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Some(format!(
        "bigbench \"{display}\" is a parent task: its examples are in the sub-task folders beside it; name the folder instead (bigbench=\"{}\")",
        folder.display()
    ))
}

/// A synthetic dataset's `letters=` must name letters of the suite.
fn review_letters(params: &serde_json::Value) -> Vec<Review> {
    let Some(letters) = params.pointer("/synthetic/letters").and_then(|v| v.as_str()) else {
        return vec![];
    };
    let task = params
        .pointer("/synthetic/task")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    match synthetic::parse_letters(letters) {
        Ok(l) if l.len() == 1 && synthetic::collapses_on_one_letter(task) => vec![Review {
            at: "synthetic.letters".into(),
            code: "plan::few-letters",
            message: format!("synthetic letters=\"{letters}\": one letter"),
            label: "every sequence is one letter repeated".into(),
            help: "reversing or sorting such a sequence gives it back and deduplicating leaves one letter, so this task asks what others do; give two or more".into(),
            warning: true,
        }],
        // A letter written twice counts once: the same draws as without the repeat,
        // under another key.
        Ok(l) if l.len() < letters.chars().count() => {
            let once: String = l.iter().filter_map(|s| s.chars().next()).collect();
            vec![Review {
                at: "synthetic.letters".into(),
                code: "plan::repeated-letters",
                message: format!(
                    "synthetic letters=\"{letters}\" repeats a letter: it counts once, so this draws what letters=\"{once}\" draws (under another key)"
                ),
                label: "a letter written twice".into(),
                help: format!("write letters=\"{once}\""),
                warning: true,
            }]
        }
        Ok(_) => vec![],
        Err(why) => vec![Review {
            at: "synthetic.letters".into(),
            code: "manifest::wrong-value",
            message: format!("synthetic letters: {why}"),
            label: "not the suite's letters".into(),
            help: "letters are some of a to p, written together, e.g. letters=\"abcdef\"".into(),
            warning: false,
        }],
    }
}

pub struct DatasetStep;

pub use crate::artifact_files::DATA_JSON;
pub use crate::artifact_files::EXAMPLES;
pub use crate::artifact_files::TRAIN;
pub use crate::artifact_files::VALIDATION;

/// A dataset step's parameters (the schema fills every default; the sources, hub=,
/// path= and bigbench=, are externals).
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
struct DatasetParams {
    #[serde(default)]
    config: Option<String>,
    split: String,
    #[serde(default)]
    validation_split: Option<String>,
    input_field: String,
    target_field: String,
    choices_field: String,
    #[serde(default)]
    input_suffix: Option<String>,
    /// Fixed answer choices for rows without their own.
    #[serde(default)]
    choices: Vec<String>,
    #[serde(default)]
    keep_field: Option<String>,
    #[serde(default)]
    keep_values: Vec<String>,
    drop_empty: bool,
    holdout: String,
    #[serde(default)]
    max_examples: Option<u64>,
    #[serde(default)]
    synthetic: Option<SyntheticParams>,
    #[serde(default)]
    templates: Option<TemplatesParams>,
}

impl DatasetParams {
    /// The synthetic task and its settings, when the node generates its data.
    fn synthetic(&self) -> Option<(&str, &SyntheticParams)> {
        let s = self.synthetic.as_ref()?;
        Some((s.task.as_deref()?, s))
    }

    /// The promptsource template set and its settings, when the node names one.
    fn templates(&self) -> Option<(&str, &TemplatesParams)> {
        let t = self.templates.as_ref()?;
        Some((t.name.as_deref()?, t))
    }

    /// Whether rows go through [`examples_of`] (templates, row filters) rather than
    /// straight through the field mapping: kept beside it, so a setting it learns to
    /// honour is never skipped by a reader that maps rows itself.
    fn shapes_rows(&self) -> bool {
        self.templates().is_some() || self.keep_field.is_some() || self.drop_empty
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
struct SyntheticParams {
    /// Absent when the node has no `synthetic` group (its defaults are filled anyway).
    #[serde(default)]
    task: Option<String>,
    examples: usize,
    seed: u64,
    format: String,
    #[serde(default)]
    letters: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
struct TemplatesParams {
    /// Absent when the node has no `templates` group (its defaults are filled anyway).
    #[serde(default)]
    name: Option<String>,
    original_task: bool,
    #[serde(default)]
    max_pairs: Option<usize>,
    seed: u64,
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    ignore: Vec<String>,
}

fn fail(e: impl std::fmt::Display) -> StepError {
    StepError::msg(e.to_string())
}

/// A seeded sample of `n` examples (order preserved), for `max-examples`.
fn cap(mut ex: Vec<Example>, n: Option<u64>, seed: u64) -> Vec<Example> {
    let Some(n) = n.map(|n| n as usize) else { return ex };
    if ex.len() <= n {
        return ex;
    }
    let mut idx: Vec<usize> = (0..ex.len()).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let mut keep: Vec<usize> = idx.into_iter().take(n).collect();
    keep.sort();
    let mut out = Vec::with_capacity(n);
    for (i, e) in ex.drain(..).enumerate() {
        if keep.binary_search(&i).is_ok() {
            out.push(e);
        }
    }
    out
}

/// FLAN's split (the paper's FlanDataset): a numpy `RandomState(1234)` permutation;
/// its first min(10%, 10000) examples validate, the rest train.
fn hold_back_flan(ex: &[Example]) -> (Vec<Example>, Vec<Example>) {
    let order = crate::data::numpy_permutation(1234, ex.len());
    let n_val = (ex.len() / 10).min(10_000);
    let valid = order[..n_val].iter().map(|&i| ex[i].clone()).collect();
    let train = order[n_val..].iter().map(|&i| ex[i].clone()).collect();
    (train, valid)
}

/// Splits off a deterministic 10% (at least one example) for validation.
fn hold_back(ex: &[Example], seed: u64) -> (Vec<Example>, Vec<Example>) {
    let n_val = (ex.len() / 10).max(1).min(ex.len().saturating_sub(1));
    let mut idx: Vec<usize> = (0..ex.len()).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x5eed));
    let val: std::collections::BTreeSet<usize> = idx.into_iter().take(n_val).collect();
    let (mut train, mut valid) = (vec![], vec![]);
    for (i, e) in ex.iter().enumerate() {
        if val.contains(&i) {
            valid.push(e.clone())
        } else {
            train.push(e.clone())
        }
    }
    (train, valid)
}

/// Where the rows came from, for `data.json`.
#[derive(Default, serde::Serialize)]
struct Provenance {
    source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    commit: Option<String>,
    files: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    templates: Vec<String>,
    rows: usize,
    /// (row, template) pairs rendered, and those dropped because the template yields
    /// no target for the row (e.g. unlabeled rows) or fails on it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pairs: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dropped: Option<usize>,
    examples: usize,
    validation: usize,
}

/// The node's field mapping.
fn fields(p: &DatasetParams) -> Fields<'_> {
    Fields {
        input: &p.input_field,
        target: &p.target_field,
        choices: &p.choices_field,
        input_suffix: p.input_suffix.as_deref().unwrap_or(""),
        fixed_choices: &p.choices,
    }
}

/// Rows -> examples: through the templates when the node has them, else the field
/// mapping; the row filters applied (what [`DatasetParams::shapes_rows`] answers for).
fn examples_of(
    ctx: &StepContext,
    p: &DatasetParams,
    label: &str,
    mut rows: Vec<Row>,
    prov: &mut Provenance,
) -> Result<Vec<Example>, StepError> {
    if let Some(field) = p.keep_field.as_deref() {
        let values = &p.keep_values;
        let read = rows.len();
        if !rows.iter().any(|r| r.contains_key(field)) {
            let mut seen: Vec<&str> = rows
                .first()
                .map(|r| r.keys().map(String::as_str).collect())
                .unwrap_or_default();
            seen.sort_unstable();
            return Err(StepError::msg(format!(
                "{label}: keep-field={field:?}: no row has that field ({read} rows read; the first has {})",
                seen.join(", ")
            )));
        }
        // A column of numbers or booleans matches as written (`fold: 0` is kept by
        // "0"; nothing matched). A column with text in it matches text only, as it
        // always did: the same key must keep the same rows.
        let as_written = !rows.iter().any(|r| r.get(field).is_some_and(|v| v.is_string()));
        rows.retain(|r| {
            let v = match r.get(field) {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(v) if as_written => text_of(v),
                _ => None,
            };
            v.is_some_and(|v| values.contains(&v))
        });
        if rows.is_empty() {
            return Err(StepError::msg(format!(
                "{label}: no row has {field} in {values:?} ({read} rows read)"
            )));
        }
    }
    prov.rows += rows.len();
    let mut ex = match p.templates() {
        Some((name, t)) => render(ctx, name, t, &rows, prov)?,
        None => map_rows(label, &rows, &fields(p)).map_err(fail)?,
    };
    if p.drop_empty {
        let read = ex.len();
        ex.retain(|e| !e.input.trim().is_empty() && !e.target.trim().is_empty());
        // Published empty, it would be scored as 0 by every method, counted in the
        // means, and fail only at training, far from its cause.
        if ex.is_empty() {
            return Err(StepError::msg(format!(
                "{label}: drop-empty=#true dropped all {read} examples (each has a blank input or target); check the field mapping (input-field=, target-field=) or leave drop-empty out"
            )));
        }
    }
    Ok(ex)
}

/// The schema's default `choices-field`: rows without it are generation data.
const DEFAULT_CHOICES_FIELD: &str = "choices";

/// A `choices-field` that the user named and no row holds is a typo, not generation
/// data: the expert would validate by exact match and the eval fail on it at the end.
fn check_choices_field(p: &DatasetParams, source: &str, examples: &[Example]) -> Result<(), StepError> {
    let named = p.choices_field != DEFAULT_CHOICES_FIELD && p.templates().is_none() && p.choices.is_empty();
    if named && examples.iter().all(|e| e.choices.is_empty()) {
        return Err(StepError::msg(format!(
            "{source}: choices-field={:?}: no row holds answer choices there, so every example would be generation data; check the field's name (or remove choices-field for generation data)",
            p.choices_field
        )));
    }
    Ok(())
}

/// Every selected (row, template) pair, or a seeded sample of `max-pairs` of them.
fn render(
    ctx: &StepContext,
    name: &str,
    t: &TemplatesParams,
    rows: &[Row],
    prov: &mut Provenance,
) -> Result<Vec<Example>, StepError> {
    let root = promptsource::find_root(None).map_err(fail)?;
    let file = promptsource::templates_file(&root, name);
    if !file.is_file() {
        return Err(StepError::msg(format!(
            "promptsource {} has no template set {name:?} (no {})",
            promptsource::VERSION,
            file.display()
        )));
    }
    let set = promptsource::load(&file).map_err(fail)?;
    let chosen = set
        .select(&Selection {
            original_task: t.original_task,
            include: t.include.clone(),
            ignore: t.ignore.clone(),
        })
        .map_err(fail)?;
    let mut r = Renderer::default();
    for t in &chosen {
        r.prepare(t).map_err(fail)?;
    }
    prov.templates = chosen.iter().map(|t| t.name.clone()).collect();
    let seed = t.seed;
    let n_t = chosen.len();
    let total = rows.len() * n_t;
    let picks: Vec<usize> = match t.max_pairs {
        Some(m) if m < total => {
            let mut p = rand::seq::index::sample(&mut ChaCha8Rng::seed_from_u64(seed), total, m).into_vec();
            p.sort_unstable();
            p
        }
        _ => (0..total).collect(),
    };
    ctx.progress.log(&format!(
        "rendering {} (row, template) pairs: {} rows x {n_t} templates of {name}",
        picks.len(),
        rows.len()
    ));
    let rendered: Vec<Result<Option<Example>, String>> = picks
        .par_iter()
        .map(|&k| {
            let (ri, ti) = (k / n_t, k % n_t);
            r.apply(chosen[ti], &rows[ri], promptsource::pair_seed(seed, ri, ti))
                .map_err(|e| format!("row {}: {e}", ri + 1))
        })
        .collect();
    let mut out = Vec::with_capacity(rendered.len());
    let mut first_err = None;
    for x in rendered {
        match x {
            Ok(Some(e)) => out.push(e),
            Ok(None) => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    prov.pairs = Some(prov.pairs.unwrap_or(0) + picks.len());
    prov.dropped = Some(prov.dropped.unwrap_or(0) + picks.len() - out.len());
    if out.is_empty() {
        return Err(StepError::msg(format!(
            "the templates of {name} yield no example on these rows{}",
            first_err
                .map(|e| format!(" (first failure: {e})"))
                .unwrap_or_default()
        )));
    }
    if let Some(e) = first_err {
        ctx.progress.log(&format!(
            "some pairs failed to render and were dropped; first: {e}"
        ));
    }
    Ok(out)
}

/// Rows of a hub split (splits joined with `+` are concatenated); pins the commit.
fn hub_rows(
    ctx: &StepContext,
    p: &DatasetParams,
    ext: &External,
    split: &str,
    prov: &mut Provenance,
) -> Result<Vec<Row>, StepError> {
    let External::Hub { repo, revision, .. } = ext else {
        return Ok(vec![]);
    };
    let name = ext.lock_name();
    // A pinned commit wins over a moving branch: reruns read the same bytes.
    let rev = ctx.locked_pin(&name).unwrap_or(revision).to_string();
    let opts = HubOptions::default();
    let config = p.config.as_deref();
    let mut rows = vec![];
    for s in split.split('+') {
        let report = super::common::download_report(ctx);
        let f = hub::split_files_reporting(repo, &rev, config, s, &opts, Some(&report)).map_err(fail)?;
        ctx.pin(&name, &f.commit)?;
        prov.commit = Some(f.commit.clone());
        let snapshot = format!("snapshots/{}/", f.commit);
        for file in &f.files {
            // Repo-relative names: the artifact must not depend on where the cache is.
            let shown = file.display().to_string();
            prov.files.push(match shown.split_once(&snapshot) {
                Some((_, rel)) => rel.to_string(),
                None => shown.clone(),
            });
            rows.extend(read_rows(file).map_err(fail)?);
        }
    }
    Ok(rows)
}

/// A BIG-bench external may name the task folder or its task.json.
fn task_json(path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_dir() {
        p.join("task.json")
    } else {
        p.to_path_buf()
    }
}

impl StepRunner for DatasetStep {
    fn kind(&self) -> &'static str {
        "dataset"
    }
    fn run(&self, ctx: &StepContext) -> Result<(), StepError> {
        let p: DatasetParams = ctx.params()?;
        let split = p.split.as_str();
        let val_split = p.validation_split.as_deref();
        let ext = |role: &str| ctx.spec.externals.iter().find(|e| e.role() == role);
        let mut prov = Provenance::default();
        let (examples, validation) = if let Some((task, syn)) = p.synthetic() {
            prov.source = format!("synthetic:{task}");
            let (n, seed) = (syn.examples, syn.seed);
            let choice = syn.format == "choice";
            let letters = match syn.letters.as_deref() {
                Some(spec) => synthetic::parse_letters(spec)
                    .map_err(|e| StepError::msg(format!("synthetic letters: {e}")))?,
                None => synthetic::LETTERS.to_vec(),
            };
            let make = |split: &str, n: usize| {
                synthetic::generate_from(task, split, n, seed, choice, &letters).ok_or_else(|| {
                    StepError::msg(format!(
                        "unknown synthetic task {task:?}; the suite has: {}",
                        synthetic::task_ids().join(", ")
                    ))
                })
            };
            (
                make(split, n)?,
                Some(make(val_split.unwrap_or("validation"), (n / 10).max(32))?),
            )
        } else if let Some(External::Path { path, display, .. }) = ext("bigbench") {
            prov.source = "bigbench".into();
            prov.files.push(display.clone());
            let file = task_json(path);
            // A parent task.json reads the sub-task folders beside it, which only a
            // folder's key covers (`plan` refuses it; a recipe planned before may not).
            if let Some(why) = parent_task_file(Path::new(path), display) {
                return Err(fail(why));
            }
            (bigbench::read_task(&file).map_err(fail)?, None)
        } else if let Some(h) = ext("hub") {
            prov.source = format!("hub:{}", h.identity());
            let rows = hub_rows(ctx, &p, h, split, &mut prov)?;
            let examples = examples_of(ctx, &p, split, rows, &mut prov)?;
            check_choices_field(&p, split, &examples)?;
            let validation = match val_split {
                Some(v) => {
                    let rows = hub_rows(ctx, &p, h, v, &mut prov)?;
                    Some(examples_of(ctx, &p, v, rows, &mut prov)?)
                }
                None => None,
            };
            (examples, validation)
        } else if let Some(External::Path { path, display, .. }) = ext("path") {
            prov.source = "path".into();
            let mut read = |path: &str, display: &str| -> Result<Vec<Example>, StepError> {
                prov.files.push(display.to_string());
                let file = Path::new(path);
                let is_jsonl = matches!(
                    file.extension().and_then(|e| e.to_str()),
                    Some("jsonl") | Some("ndjson")
                );
                let examples = if is_jsonl && !p.shapes_rows() {
                    // Line-accurate errors for the common case; one example per row.
                    let examples = read_jsonl_mapped(file, &fields(&p)).map_err(fail)?;
                    prov.rows += examples.len();
                    examples
                } else {
                    let rows = read_rows(file).map_err(fail)?;
                    examples_of(ctx, &p, path, rows, &mut prov)?
                };
                check_choices_field(&p, display, &examples)?;
                Ok(examples)
            };
            let examples = read(path, display)?;
            // A validation file of its own, else 10% of the file is held back.
            let validation = match ext("validation-path") {
                Some(External::Path { path, display, .. }) => Some(read(path, display)?),
                _ => None,
            };
            (examples, validation)
        } else {
            return Err(StepError::msg(format!(
                "dataset {} has no source (hub=, path=, bigbench= or synthetic)",
                ctx.spec.name
            )));
        };
        let examples = cap(examples, p.max_examples, 0);
        let (train, validation) = match validation {
            Some(v) => (None, v),
            None => {
                let (t, v) = if p.holdout == "flan" {
                    hold_back_flan(&examples)
                } else {
                    hold_back(&examples, 0)
                };
                (Some(t), v)
            }
        };
        prov.examples = examples.len();
        prov.validation = validation.len();
        // An eval scores every example; only a trainer holds the slice back.
        ctx.progress.log(&match &train {
            Some(_) => format!(
                "{} examples (a training step holds back {} of them for validation; an eval scores all {})",
                examples.len(),
                validation.len(),
                examples.len()
            ),
            None => format!(
                "{} examples, and {} validation examples of their own",
                examples.len(),
                validation.len()
            ),
        });
        let w = |name: &str, ex: &[Example]| write_jsonl(&ctx.out.join(name), ex).map_err(fail);
        w(EXAMPLES, &examples)?;
        if let Some(t) = &train {
            w(TRAIN, t)?;
        }
        w(VALIDATION, &validation)?;
        std::fs::write(
            ctx.out.join(DATA_JSON),
            serde_json::to_vec_pretty(&prov).map_err(fail)?,
        )?;
        Ok(())
    }
}
