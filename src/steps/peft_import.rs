//! The `expert` step of an imported adapter (`expert ... peft="DIR"` or
//! `peft-hub="org/name"`): reads the PEFT folder (a hashed local folder, or the hub
//! repo at the commit the lockfile pins, from the HF cache first), checks it against
//! the base, and writes it as goosepipe's expert file, so the gate, pool and eval
//! steps treat it like a trained expert. Its key is the adapter's content (or hub
//! commit) and the base: the same adapter in two manifests is one artifact.

use std::path::{Path, PathBuf};

use super::common::{fail, load_base};
use crate::artifact_files::{EXPERT_FILE, GATES_FILE, SUMMARY_JSON};
use crate::exec::{StepContext, StepError};
use crate::model::checkpoint::peft;
use crate::store::External;

/// The adapter folder of the step (an imported expert, or the gate it ships) and how
/// to name where it came from in the summary (never an absolute path: artifacts must
/// be the same bytes on every machine).
fn adapter_dir(ctx: &StepContext, extra: &[&str]) -> Result<(PathBuf, String), StepError> {
    for e in &ctx.spec.externals {
        match e {
            External::Path {
                role, path, display, ..
            } if role == "peft" => return Ok((PathBuf::from(path), format!("path:{display}"))),
            External::Hub { role, repo, .. } if role == "peft-hub" => {
                let resolve =
                    |repo: &str,
                     rev: &str,
                     opts: &crate::hub::HubOptions,
                     report: Option<&crate::hub::DownloadReport<'_>>| {
                        crate::hub::resolve_adapter_with(repo, rev, opts, report, extra)
                    };
                let (dir, commit) = super::common::resolve_pinned(ctx, e, resolve)?;
                return Ok((dir, format!("hub:{repo}@{commit}")));
            }
            _ => {}
        }
    }
    Err(fail(format!(
        "{} is imported but names no adapter (peft= or peft-hub=)",
        ctx.spec.id
    )))
}

/// The `expert` step of an imported adapter.
pub fn run(ctx: &StepContext) -> Result<(), StepError> {
    let (dir, from) = adapter_dir(ctx, &[])?;
    let dev = super::common::device(ctx)?;
    let base = load_base(ctx, &dev)?;
    let imported = peft::import(&dir, &ctx.spec.name, base.config(), &dev).map_err(fail)?;
    let mut expert = imported.expert;
    // Named for the import's messages only: an artifact's bytes depend on its key.
    expert.name.clear();
    expert.base_model = Some(ctx.input("model")?.key.hex());
    expert.save(&ctx.out.join(EXPERT_FILE)).map_err(fail)?;
    let summary = serde_json::json!({
        "imported": "peft",
        "from": from,
        "adapter": imported.source,
        "note": "scaling folded into lora_B (goosepipe divides by r)",
    });
    // Same shapes, other weights: nothing else would tell (the scores just drop).
    // Said in the run's log only: an artifact's bytes depend on its key alone (the
    // message names steps, and reads the file system).
    if let Some(warning) = other_base(
        ctx,
        &dir,
        &base.dir,
        imported.source.base_model_name_or_path.as_deref(),
    )? {
        ctx.progress.log(&format!("warning: {warning}"));
    }
    std::fs::write(
        ctx.out.join(SUMMARY_JSON),
        serde_json::to_vec_pretty(&summary).expect("json"),
    )?;
    Ok(())
}

/// Why the adapter at `dir` was made for another base than the pipeline's (at
/// `base_dir`), when it says so: the base it was exported with (`base-model/`, as
/// `goosepipe export` writes a pipeline-built base) has other weights, or the hub id it
/// names is not the pipeline's hub model.
fn other_base(
    ctx: &StepContext,
    dir: &Path,
    base_dir: &Path,
    named: Option<&str>,
) -> Result<Option<String>, StepError> {
    let weights = |d: &Path| match crate::model::checkpoint::load::locate(d).ok()?.weights {
        crate::model::checkpoint::load::WeightFiles::Safetensors(files) => Some(files),
        crate::model::checkpoint::load::WeightFiles::Pickle(file) => Some(vec![file]),
    };
    let digest = |files: &[PathBuf]| -> Result<Vec<String>, StepError> {
        files
            .iter()
            .map(|f| Ok(crate::store::hashing::hash_file(f)?.to_hex().to_string()))
            .collect()
    };
    let shipped = dir.join("base-model");
    if let (Some(theirs), Some(ours)) = (weights(&shipped), weights(base_dir)) {
        if digest(&theirs)? != digest(&ours)? {
            return Ok(Some(format!(
                "the adapter came with the base it was trained on (base-model/), and {}'s weights are not those: its outputs here are not what its author measured",
                ctx.input("model")?.id
            )));
        }
        return Ok(None);
    }
    let model = ctx.input("model")?;
    let (pointer, _) = super::common::read_model_pointer(&model.files, &model.id)?;
    let ours = pointer.source.strip_prefix("hub:");
    match (named, ours) {
        // A hub id names the base: `org/name` (not a path that exists here).
        (Some(theirs), Some(ours))
            if theirs.matches('/').count() == 1
                && !Path::new(theirs).exists()
                && !theirs.eq_ignore_ascii_case(ours) =>
        {
            Ok(Some(format!(
                "the adapter was made for {theirs} (its base_model_name_or_path), and {} is {ours}",
                model.id
            )))
        }
        _ => Ok(None),
    }
}

/// The `gate` step of an imported adapter that ships its gate (`peft-gate=#true`):
/// the adapter's `phatgoose_gates.safetensors`, checked against the base, written as
/// goosepipe's gate file (what a trained gate step writes).
pub fn run_gate(ctx: &StepContext) -> Result<(), StepError> {
    // A hub snapshot holds only the files fetched: the gate's too.
    let (dir, from) = adapter_dir(ctx, &[peft::GATES_FILE])?;
    let dev = super::common::device(ctx)?;
    let base = load_base(ctx, &dev)?;
    let Some(mut gates) = peft::import_gates(&dir, "", base.config(), &dev).map_err(fail)? else {
        return Err(fail(format!(
            "{}: the adapter ({from}) ships no gate: there is no {} in it; remove peft-gate=#true to train its gate on the expert's dataset",
            ctx.spec.id,
            peft::GATES_FILE
        )));
    };
    // The expert's modules and the gate's must be the same set: a gate for a module
    // the adapter lacks routes nothing, a module without one cannot be routed.
    let expert = crate::model::LoraExpert::load(
        &ctx.input("expert")?.files.join(EXPERT_FILE),
        base.config(),
        &dev,
        candle_core::DType::F32,
    )
    .map_err(fail)?;
    let (want, have): (Vec<&String>, Vec<&String>) =
        (expert.modules.keys().collect(), gates.gates.keys().collect());
    if want != have {
        let missing: Vec<&str> = want
            .iter()
            .filter(|m| !have.contains(m))
            .map(|m| m.as_str())
            .collect();
        let extra: Vec<&str> = have
            .iter()
            .filter(|m| !want.contains(m))
            .map(|m| m.as_str())
            .collect();
        return Err(fail(format!(
            "{}: the adapter's gate ({from}) does not cover its LoRA modules: {} without a gate, {} gated without a LoRA (first: {})",
            ctx.spec.id,
            missing.len(),
            extra.len(),
            missing.first().or(extra.first()).copied().unwrap_or_default()
        )));
    }
    gates.name.clear();
    gates.base_model = Some(ctx.input("model")?.key.hex());
    gates.save(&ctx.out.join(GATES_FILE)).map_err(fail)?;
    let summary = serde_json::json!({"imported": "peft", "from": from});
    std::fs::write(
        ctx.out.join(SUMMARY_JSON),
        serde_json::to_vec_pretty(&summary).expect("json"),
    )?;
    Ok(())
}
