//! The files that make a Hugging Face model folder's weights: one
//! safetensors file, a sharded set named by its index, or a pickle. Both the
//! hub resolution and the loader read them by these names.

use std::collections::BTreeSet;
use std::path::Path;

use super::error::{HubError, Result};

pub const SAFETENSORS: &str = "model.safetensors";
pub const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";
pub const PICKLE: &str = "pytorch_model.bin";

/// Shard file names listed in a `model.safetensors.index.json`.
pub fn shard_names(index_path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index_path).map_err(|e| HubError::Io {
        path: index_path.to_path_buf(),
        source: e,
    })?;
    let bad = |message: String| HubError::BadFile {
        file: index_path.display().to_string(),
        message,
    };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no `weight_map` object".into()))?;
    let mut files = BTreeSet::new();
    for (name, file) in map {
        let f = file
            .as_str()
            .ok_or_else(|| bad(format!("weight_map entry `{name}` is not a file name")))?;
        if f.contains('/') || f.contains('\\') || f.starts_with('.') {
            return Err(bad(format!(
                "weight_map entry `{name}` points outside the folder: `{f}`"
            )));
        }
        // A shard's name says what it is; the content key of a local model folder
        // covers its `*.safetensors` files (and an index naming another kind of file
        // could not be memory-mapped as safetensors anyway).
        if !f.ends_with(".safetensors") {
            return Err(bad(format!(
                "weight_map entry `{name}` names `{f}`, not a .safetensors file"
            )));
        }
        files.insert(f.to_owned());
    }
    if files.is_empty() {
        return Err(bad("`weight_map` is empty".into()));
    }
    Ok(files.into_iter().collect())
}

/// A PEFT adapter folder: its configuration and its weights (safetensors, or a
/// pickle in older repos).
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_SAFETENSORS: &str = "adapter_model.safetensors";
pub const ADAPTER_PICKLE: &str = "adapter_model.bin";
