//! Whether an artifact in the store is what its key says: its files match the digests
//! its `meta.json` records (the store's check), and the step that `meta.json` records
//! hashes to the key it is filed under (this layer's, since keys are made here). A
//! record edited by hand (its kind, a parameter) passes the first check with every
//! file intact; `show`, `find` and a run's inputs would then describe or feed another
//! step than the key's.
//!
//! Every reader outside the store checks through here, so `verify`, `plan --verify`,
//! `run`, `report` and the exports judge one artifact alike.

use crate::store::{ArtifactMeta, Key, Store, StoreError};

/// The artifact of `key`, re-hashed and held to its key.
pub fn verify(store: &Store, key: &Key) -> Result<ArtifactMeta, StoreError> {
    let meta = store.verify(key)?;
    if super::key::of_spec(&meta.spec) != Some(*key) {
        return Err(StoreError::Corrupt {
            key: key.hex(),
            reason: "its meta.json records a step that does not hash to its key (edited by hand?)".into(),
        });
    }
    Ok(meta)
}

/// Checks `key` again holding its lock and moves it aside only if it is still corrupt,
/// returning why (see [`Store::quarantine_if_corrupt`]).
pub fn quarantine_if_corrupt(store: &Store, key: &Key) -> Result<Option<String>, StoreError> {
    store.quarantine_if_corrupt(key, |k| verify(store, k))
}
