//! Writing safetensors files with header metadata (candle's own writer has no
//! metadata, and HF loaders expect `{"format": "pt"}`).

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;

use super::error::{ModelError, Result};

pub fn save_with_metadata(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let contiguous = tensors
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.contiguous()?)))
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize_to_file(contiguous, Some(metadata), path)
        .map_err(|e| ModelError::io(path, std::io::Error::other(e.to_string())))
}

/// The `__metadata__` map of a safetensors file (empty when absent).
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    use std::io::Read;
    let label = path.display().to_string();
    let bad = |message: String| ModelError::BadFile {
        file: label.clone(),
        message,
    };
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
