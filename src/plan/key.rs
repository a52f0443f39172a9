//! Content keys: blake3 over a format tag, the step kind and its implementation
//! version, canonical parameters, external identities and input keys (by role; under
//! early cutoff, a dataset input by the content digest of its output instead).
//!
//! Everything hashed is length-delimited, so no two ingredient lists can collide by
//! concatenation. Changing anything here changes every key: bump `KEY_FORMAT`.

use crate::manifest::Value;
use crate::store::{External, Key, SpecInput, StepSpec};

pub const KEY_FORMAT: &str = "goosepipe-key-v1";

fn field(h: &mut blake3::Hasher, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// Inputs and externals must already be sorted by role (the plan does so).
pub fn compute(
    kind: &str,
    version: u32,
    params: &Value,
    externals: &[External],
    inputs: &[SpecInput],
) -> Key {
    let mut h = blake3::Hasher::new();
    field(&mut h, KEY_FORMAT.as_bytes());
    field(&mut h, kind.as_bytes());
    field(&mut h, &version.to_le_bytes());
    field(&mut h, params.canonical().as_bytes());
    field(&mut h, &(externals.len() as u64).to_le_bytes());
    for e in externals {
        field(&mut h, e.role().as_bytes());
        field(&mut h, e.identity().as_bytes());
    }
    field(&mut h, &(inputs.len() as u64).to_le_bytes());
    for i in inputs {
        field(&mut h, i.role.as_bytes());
        match &i.digest {
            // 32 key bytes against the 7 of the tag: the two forms cannot collide.
            None => field(&mut h, &i.key.0),
            Some(d) => {
                field(&mut h, b"content");
                field(&mut h, d.as_bytes());
            }
        }
    }
    h.finalize().into()
}

/// The key a frozen spec (a recipe, an artifact's `meta.json`) hashes to, computed again
/// from what it records: a spec edited by hand (its kind, a parameter) no longer gives
/// the key it is filed under. `None` where its parameters are not a manifest value
/// (a JSON null).
pub fn of_spec(spec: &StepSpec) -> Option<Key> {
    let params = Value::from_json(&spec.params)?;
    Some(compute(
        &spec.kind,
        spec.version,
        &params,
        &spec.externals,
        &spec.inputs,
    ))
}
