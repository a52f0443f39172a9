//! The `expert` step of an imported adapter (`expert ... peft="DIR"` or
//! `peft-hub="org/name"`): reads the PEFT folder (a hashed local folder, or the hub
//! repo at the commit the lockfile pins, from the HF cache first), checks it against
//! the base, and writes it as goosepipe's expert file, so the gate, pool and eval
//! steps treat it like a trained expert. Its key is the adapter's content (or hub
//! commit) and the base: the same adapter in two manifests is one artifact.

use std::path::PathBuf;

use super::common::{fail, load_base};
use crate::artifact_files::{EXPERT_FILE, SUMMARY_JSON};
use crate::exec::{StepContext, StepError};
use crate::model::checkpoint::peft;
use crate::store::External;

/// The adapter folder of the step and how to name where it came from in the summary
/// (never an absolute path: artifacts must be the same bytes on every machine).
fn adapter_dir(ctx: &StepContext) -> Result<(PathBuf, String), StepError> {
    for e in &ctx.spec.externals {
        match e {
            External::Path {
                role, path, display, ..
            } if role == "peft" => return Ok((PathBuf::from(path), format!("path:{display}"))),
            External::Hub { role, repo, .. } if role == "peft-hub" => {
                let (dir, commit) = super::common::resolve_pinned(ctx, e, crate::hub::resolve_adapter)?;
                return Ok((dir, format!("hub:{repo}@{commit}")));
            }
            _ => {}
        }
    }
    Err(fail(format!(
        "expert {} is imported but names no adapter (peft= or peft-hub=)",
        ctx.spec.name
    )))
}

pub fn run(ctx: &StepContext) -> Result<(), StepError> {
    let (dir, from) = adapter_dir(ctx)?;
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
    std::fs::write(
        ctx.out.join(SUMMARY_JSON),
        serde_json::to_vec_pretty(&summary).expect("json"),
    )?;
    Ok(())
}
