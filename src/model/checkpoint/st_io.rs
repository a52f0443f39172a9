//! Writing safetensors files with header metadata (candle's own writer has no
//! metadata, and HF loaders expect `{"format": "pt"}`).

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;

use crate::model::error::{ModelError, Result};

pub fn save_with_metadata(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let contiguous = tensors
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.contiguous()?)))
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(contiguous, Some(metadata))
        .map_err(|e| ModelError::io(path, std::io::Error::other(e.to_string())))?;
    let bytes = sort_metadata(bytes).map_err(|m| ModelError::io(path, std::io::Error::other(m)))?;
    std::fs::write(path, bytes).map_err(|e| ModelError::io(path, e))
}

/// The safetensors writer emits header metadata in `HashMap` order, which changes from
/// run to run; content-addressed artifacts must be bitwise reproducible, so the
/// `__metadata__` entries are rewritten in sorted order (same length, same content).
fn sort_metadata(mut bytes: Vec<u8>) -> std::result::Result<Vec<u8>, String> {
    let n = u64::from_le_bytes(
        bytes
            .get(..8)
            .ok_or("short file")?
            .try_into()
            .map_err(|_| "short file")?,
    ) as usize;
    let header = bytes.get(8..8 + n).ok_or("bad header length")?;
    let mut v: serde_json::Value = serde_json::from_slice(header).map_err(|e| e.to_string())?;
    if let Some(meta) = v.get_mut("__metadata__").and_then(|m| m.as_object_mut()) {
        let sorted: std::collections::BTreeMap<String, serde_json::Value> =
            meta.iter().map(|(k, x)| (k.clone(), x.clone())).collect();
        *meta = sorted.into_iter().collect();
    }
    let mut text = serde_json::to_vec(&v).map_err(|e| e.to_string())?;
    if text.len() > n {
        return Err("header grew while sorting".into());
    }
    text.resize(n, b' ');
    bytes[8..8 + n].copy_from_slice(&text);
    Ok(bytes)
}

/// The `__metadata__` map of a safetensors file (empty when absent).
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    use std::io::Read;
    let label = path.display().to_string();
    let bad = |message: String| ModelError::BadFile {
        file: label.clone(),
        message,
    };
    // A FIFO would block the open until a writer came.
    crate::file_kind::regular_file(path).map_err(|e| ModelError::io(path, e))?;
    let mut f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| bad("too short to be a safetensors file".into()))?;
    let n = u64::from_le_bytes(len);
    let file_len = f.metadata().map_err(|e| ModelError::io(path, e))?.len();
    if n > file_len.saturating_sub(8) || n > 100_000_000 {
        return Err(bad(format!("header length {n} is larger than the file")));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .map_err(|e| bad(format!("cannot read header: {e}")))?;
    let v: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header is not JSON: {e}")))?;
    let mut out = HashMap::new();
    if let Some(meta) = v.get("__metadata__").and_then(|m| m.as_object()) {
        for (k, val) in meta {
            if let Some(s) = val.as_str() {
                out.insert(k.clone(), s.to_owned());
            }
        }
    }
    Ok(out)
}
