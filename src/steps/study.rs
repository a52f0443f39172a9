//! The `study` step: the methods of repeated evaluations (replicates, e.g. the same
//! pool trained with different seeds) ranked with their uncertainty. Reads every
//! input eval's per-example scores and bootstraps them (`eval::study`).
//!
//! Outputs: `study.json` (means, intervals, paired differences, per-replicate means)
//! and `study.md`.

use super::common::fail;
use super::eval::PER_EXAMPLE_JSON;
use crate::eval::study::{Replicate, bootstrap, markdown};
use crate::exec::{StepContext, StepError, StepRunner};

pub const STUDY_JSON: &str = "study.json";
pub const STUDY_MD: &str = "study.md";

pub struct StudyStep;

impl StepRunner for StudyStep {
    fn kind(&self) -> &'static str {
        "study"
    }
    fn version(&self) -> u32 {
        super::version_of(self.kind())
    }
    fn run(&self, ctx: &StepContext) -> Result<(), StepError> {
        let names: Vec<String> = ctx
            .param("evals")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        let compare = ctx
            .param("compare")
            .and_then(|v| v.as_str())
            .unwrap_or("phatgoose");
        let samples = ctx.param("samples").and_then(|v| v.as_u64()).unwrap_or(2000) as usize;
        let seed = ctx.param("seed").and_then(|v| v.as_u64()).unwrap_or(0);
        let mut replicates: Vec<Replicate> = vec![];
        let mut methods: Vec<String> = vec![];
        for name in &names {
            let inp = ctx.input(&format!("eval:{name}"))?;
            let path = inp.files.join(PER_EXAMPLE_JSON);
            let bytes = std::fs::read(&path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
            let r: Replicate =
                serde_json::from_slice(&bytes).map_err(|e| fail(format!("{}: {e}", path.display())))?;
            // The first eval's column order is the study's.
            if methods.is_empty() {
                let results: crate::eval::Results = serde_json::from_slice(
                    &std::fs::read(inp.files.join("results.json"))
                        .map_err(|e| fail(format!("{name}: {e}")))?,
                )
                .map_err(|e| fail(format!("{name}: results.json: {e}")))?;
                methods = results
                    .methods
                    .into_iter()
                    .filter(|m| r.contains_key(m))
                    .collect();
            }
            replicates.push(r);
        }
        let result = bootstrap(&names, &replicates, &methods, compare, samples, seed).map_err(fail)?;
        std::fs::write(
            ctx.out.join(STUDY_JSON),
            serde_json::to_vec_pretty(&result).expect("json"),
        )?;
        std::fs::write(
            ctx.out.join(STUDY_MD),
            markdown(&format!("study {}", ctx.spec.name), &result),
        )?;
        Ok(())
    }
}
