//! What running a stale step would do, as its runner tells it from the step's
//! published inputs ([`StepRunner::preview`]): `plan` and `explain` show it beside
//! the step (an eval: how many of its (method, task) results are already scored and
//! how many it would score). A preview only reads: the step's output folder is not
//! made, and its context holds the inputs that are published (an eval's preview needs
//! its base and its tasks' data; the pool's members may still be to build).

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::plan::{Plan, Status};
use crate::store::lockfile::Lockfile;
use crate::store::{StepSpec, Store};

use super::progress::Silent;
use super::step::{CancelFlag, InputArtifact, PlannedWork, Registry, StepContext};

/// Fills `status.previews` for every step that will run up to step index `last`
/// (`explain` needs its step's and those before it: a step's count leaves out what
/// earlier steps of the plan will do), on `device` (the device a run would use:
/// results scored on another kind of device are not reused), in plan order.
/// With `selected` (the steps a run's selection would run: `plan --until/--only`),
/// only those: the work of a step outside it (another eval scoring the same parts) is
/// not counted as done for the ones inside.
#[allow(clippy::too_many_arguments)]
pub fn previews(
    plan: &Plan,
    status: &mut Status,
    store: &Store,
    registry: &Registry,
    lock: &Lockfile,
    device: &str,
    last: usize,
    selected: Option<&std::collections::BTreeSet<usize>>,
) {
    if !store.root.is_dir() {
        return;
    }
    let planned = PlannedWork::default();
    let runs = |i: usize, state: &crate::plan::State| match selected {
        Some(s) => s.contains(&i),
        None => state.will_run(),
    };
    let upto = plan.steps.iter().zip(&status.states).take(last.saturating_add(1));
    for (i, (step, state)) in upto.enumerate() {
        // A provisional key (early cutoff) previews nothing true: the step may stay
        // cached once its datasets are built.
        if !runs(i, state) || !step.waits_for.is_empty() {
            continue;
        }
        if let Some(p) = preview(&step.spec, store, registry, lock, device, &planned) {
            status.previews.insert(i, p);
        }
    }
    // What a run would refuse at once (data an earlier run built that a step cannot
    // use), said by `plan` before anyone runs it.
    let stale: Vec<usize> = (0..plan.steps.len().min(last.saturating_add(1)))
        .filter(|&i| runs(i, &status.states[i]) && plan.steps[i].waits_for.is_empty())
        .collect();
    for (id, why) in super::run::refusals_of_cached(plan, status, store, registry, &stale) {
        if let Some(&i) = plan.index.get(&id) {
            status.previews.insert(
                i,
                crate::plan::status::Preview {
                    refused: true,
                    ..format!("would fail at once: {why}").into()
                },
            );
        }
    }
}

/// One step's preview; None when its runner has nothing to say (an input it needs
/// is not published), or the preview fails or panics (the run says why, with the
/// inputs in hand).
pub fn preview(
    spec: &StepSpec,
    store: &Store,
    registry: &Registry,
    lock: &Lockfile,
    device: &str,
    planned: &PlannedWork,
) -> Option<crate::plan::status::Preview> {
    let interrupted = store.work_dir(&spec.key).is_dir();
    let runner = registry.get(&spec.kind).filter(|r| r.previews(interrupted))?;
    // The published inputs (metadata only: `plan` has checked the sizes; a run
    // re-hashes). The others are still to be built: a runner knows their keys from
    // the recipe, and whether it can tell anything without their files.
    let inputs: Vec<InputArtifact> = spec
        .inputs
        .iter()
        .filter_map(|inp| {
            Some(InputArtifact {
                role: inp.role.clone(),
                id: inp.id.clone(),
                key: inp.key,
                files: store.files_dir(&inp.key),
                meta: store.meta(&inp.key)?,
            })
        })
        .collect();
    let cancel = CancelFlag::new();
    // The inputs still to be built will be built here.
    let numerics = super::run::numerics_of(spec, registry, device, &inputs);
    let ctx = StepContext {
        spec,
        inputs,
        // Never made: a preview writes nothing.
        out: store.work_dir(&spec.key).join("preview-writes-nothing"),
        work: store.work_dir(&spec.key),
        store,
        progress: &Silent,
        cancel: &cancel,
        device,
        locked: &lock.externals,
        pins: Mutex::new(BTreeMap::new()),
        strict: false,
        planned: Some(planned),
        numerics,
    };
    // A preview that panics is a bug, but not a reason for `plan` to fail: the run
    // reports it as the step's internal error.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runner.preview(&ctx)))
        .ok()
        .and_then(Result::ok)
        .flatten()
}
