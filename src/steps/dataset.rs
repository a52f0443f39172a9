//! The `dataset` step: materializes a dataset node as JSON Lines of examples.
//!
//! Output: `examples.jsonl` (the node's `split`) and `validation.jsonl` (its
//! `validation-split`, or a held-back slice of the examples when it has none).

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::data::local::{Fields, read_jsonl_mapped};
use crate::data::{Example, synthetic, write_jsonl};
use crate::exec::{StepContext, StepError, StepRunner};
use crate::store::External;

pub struct DatasetStep;

pub const EXAMPLES: &str = "examples.jsonl";
pub const VALIDATION: &str = "validation.jsonl";

fn p_str<'a>(ctx: &'a StepContext, k: &str) -> Option<&'a str> {
    ctx.param(k).and_then(|v| v.as_str())
}

fn p_u64(ctx: &StepContext, k: &str) -> Option<u64> {
    ctx.param(k).and_then(|v| v.as_u64())
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

/// Holds back a deterministic 10% (at least one example) for validation.
fn hold_back(ex: Vec<Example>, seed: u64) -> (Vec<Example>, Vec<Example>) {
    let n_val = (ex.len() / 10).max(1).min(ex.len().saturating_sub(1));
    let mut idx: Vec<usize> = (0..ex.len()).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x5eed));
    let val: std::collections::BTreeSet<usize> = idx.into_iter().take(n_val).collect();
    let (mut train, mut valid) = (vec![], vec![]);
    for (i, e) in ex.into_iter().enumerate() {
        if val.contains(&i) {
            valid.push(e)
        } else {
            train.push(e)
        }
    }
    (train, valid)
}

impl StepRunner for DatasetStep {
    fn kind(&self) -> &'static str {
        "dataset"
    }
    fn version(&self) -> u32 {
        super::version_of(self.kind())
    }
    fn run(&self, ctx: &StepContext) -> Result<(), StepError> {
        let split = p_str(ctx, "split").unwrap_or("train");
        let max = p_u64(ctx, "max-examples");
        let (examples, validation) = if let Some(task) = p_str(ctx, "synthetic.task") {
            let n = p_u64(ctx, "synthetic.examples").unwrap_or(2000) as usize;
            let seed = p_u64(ctx, "synthetic.seed").unwrap_or(0);
            let choice = p_str(ctx, "synthetic.format") == Some("choice");
            let make = |split: &str, n: usize| {
                synthetic::generate(task, split, n, seed, choice).ok_or_else(|| {
                    StepError::msg(format!(
                        "unknown synthetic task {task:?}; the suite has: {}",
                        synthetic::task_ids().join(", ")
                    ))
                })
            };
            let val_split = p_str(ctx, "validation-split").unwrap_or("validation");
            (make(split, n)?, make(val_split, (n / 10).max(32))?)
        } else if let Some(External::Path { path, .. }) =
            ctx.spec.externals.iter().find(|e| e.role() == "path")
        {
            let fields = Fields {
                input: p_str(ctx, "input-field").unwrap_or("input"),
                target: p_str(ctx, "target-field").unwrap_or("target"),
                choices: p_str(ctx, "choices-field").unwrap_or("choices"),
            };
            let all = read_jsonl_mapped(std::path::Path::new(path), &fields)
                .map_err(|e| StepError::msg(e.to_string()))?;
            hold_back(all, 0)
        } else {
            return Err(StepError::msg(format!(
                "dataset {}: only synthetic and local JSONL datasets can be read by this build (hub, parquet and BIG-bench sources are not implemented yet)",
                ctx.spec.name
            )));
        };
        let examples = cap(examples, max, 0);
        ctx.progress.log(&format!(
            "{} examples, {} for validation",
            examples.len(),
            validation.len()
        ));
        let w = |name: &str, ex: &[Example]| {
            write_jsonl(&ctx.out.join(name), ex).map_err(|e| StepError::msg(e.to_string()))
        };
        w(EXAMPLES, &examples)?;
        w(VALIDATION, &validation)
    }
}
