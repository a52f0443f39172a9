//! Early cutoff (`pipeline ... early-cutoff=#true`): a step that reads a dataset is
//! keyed by what the dataset produced (the content digest of its files, provenance
//! left out) instead of by the dataset's key, so a dataset rebuilt with the same
//! examples leaves everything after it cached. Which kinds are keyed so, and which of
//! their files are provenance, the planner learns from the catalog
//! (`Catalog::content_keyed`).
//!
//! Keys stay pure functions of their ingredients; the ingredient is an output, which
//! the plan learns from the store (the published artifact) or, before it is built
//! there, from the lockfile's pin of the same key. When neither knows it, the
//! consumers' keys are provisional: their steps wait for the producer
//! (`Step::waits_for`), and `run` builds the producer and plans again before it builds
//! any of them.

use crate::store::artifact::content_digest;
use crate::store::lockfile::Lockfile;
use crate::store::{Key, Store};

/// Where a plan learns what content-keyed steps produced.
#[derive(Clone, Copy, Default)]
pub struct KnownOutputs<'a> {
    pub store: Option<&'a Store>,
    pub lock: Option<&'a Lockfile>,
    /// Take the lockfile's pin of a step's output even when the step's key moved
    /// since: the keys the next run will most likely find (what `gc` keeps, so an
    /// edit whose dataset is not rebuilt yet does not cost the artifacts after it).
    pub last_pinned: bool,
}

impl<'a> KnownOutputs<'a> {
    /// Nothing is known: every consumer of a content-keyed step waits for it.
    pub fn none() -> KnownOutputs<'static> {
        KnownOutputs::default()
    }

    pub fn new(store: &'a Store, lock: &'a Lockfile) -> KnownOutputs<'a> {
        KnownOutputs {
            store: Some(store),
            lock: Some(lock),
            last_pinned: false,
        }
    }

    /// [`KnownOutputs::new`], and where neither knows an output, the one the lockfile
    /// pinned for the step under its earlier key.
    pub fn last_pinned(store: &'a Store, lock: &'a Lockfile) -> KnownOutputs<'a> {
        KnownOutputs {
            last_pinned: true,
            ..KnownOutputs::new(store, lock)
        }
    }

    /// The content digest (its files but `leave_out`) of step `id` built under `key`:
    /// the store's artifact first, else the lockfile's pin when it pins that key.
    pub fn content(&self, id: &str, key: &Key, leave_out: &[&str]) -> Option<String> {
        if let Some(meta) = self.store.and_then(|s| s.meta(key)) {
            return Some(content_digest(&meta.files, leave_out));
        }
        let pinned = self.lock?.steps.get(id)?;
        if pinned.key == *key || self.last_pinned {
            pinned.content.clone()
        } else {
            None
        }
    }
}
