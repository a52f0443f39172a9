//! The evaluation methods ("routers"), one file each. A method turns a pool of
//! loaded experts into what the model runs with: adapters on every module
//! (`base`, `phatgoose`, `merged`, `arrow`, `average-activation`, `multitask`,
//! `expert:NAME`), one expert per example (`retrieval`), or a choice among the
//! single experts' scores (`best-individual`, `oracle`). Each file also holds the
//! note the results table prints beside its column.
//!
//! The per-token mechanics (scoring, top-k, gathering only the chosen experts)
//! live in `model::routing` and `model::adapter`; this layer decides what the
//! routers are built from.

pub mod arrow;
pub mod average_activation;
pub mod base;
pub mod best_individual;
pub mod expert;
pub mod merged;
pub mod multitask;
pub mod oracle;
pub mod phatgoose;
pub mod retrieval;

/// The results-table note for `method`, when it needs one (how it was built, or
/// that it is not zero-shot). `best-individual` names its expert at run time
/// ([`best_individual::note`]).
pub fn note(method: &str) -> Option<&'static str> {
    Some(match method {
        "merged" => merged::NOTE,
        "average-activation" => average_activation::NOTE,
        "retrieval" => retrieval::NOTE,
        "multitask" => multitask::NOTE,
        "oracle" => oracle::NOTE,
        _ => return None,
    })
}

/// Whether `method` picks experts per token and module, so that its choices can
/// be logged for the routing analysis.
pub fn routes_tokens(method: &str) -> bool {
    matches!(method, "phatgoose" | "arrow" | "average-activation")
}
