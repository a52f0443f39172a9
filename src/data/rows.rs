//! Dataset rows as JSON objects, read from JSON Lines or parquet files. Rows are what
//! templates render and what field mappings pick from; they keep the source's types
//! (a `label` column stays an integer, a nested `answers` column stays an object).

use std::io::BufRead;
use std::path::Path;

use super::example::DataError;

pub type Row = serde_json::Map<String, serde_json::Value>;

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Every non-blank line must be a JSON object.
pub fn read_jsonl_rows(path: &Path) -> Result<Vec<Row>, DataError> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut out = vec![];
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io_err(path))?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| DataError::Bad {
            path: path.display().to_string(),
            line: i + 1,
            reason,
        };
        match serde_json::from_str(&line).map_err(|e| bad(format!("not JSON: {e}")))? {
            serde_json::Value::Object(m) => out.push(m),
            _ => return Err(bad("not a JSON object".into())),
        }
    }
    Ok(out)
}

/// All rows of a parquet file, columns by name (nested groups become objects, lists
/// become arrays).
pub fn read_parquet_rows(path: &Path) -> Result<Vec<Row>, DataError> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let bad = |e: parquet::errors::ParquetError| {
        DataError::Other(format!("{}: not a readable parquet file: {e}", path.display()))
    };
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let reader = SerializedFileReader::new(file).map_err(bad)?;
    let n = reader.metadata().file_metadata().num_rows().max(0) as usize;
    let mut out = Vec::with_capacity(n);
    for row in reader.get_row_iter(None).map_err(bad)? {
        match row.map_err(bad)?.to_json_value() {
            serde_json::Value::Object(m) => out.push(m),
            other => {
                return Err(DataError::Other(format!(
                    "{}: a row is not a record: {other}",
                    path.display()
                )));
            }
        }
    }
    Ok(out)
}

/// Rows of a local data file, by extension (.jsonl / .json lines, .parquet).
pub fn read_rows(path: &Path) -> Result<Vec<Row>, DataError> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("parquet") => read_parquet_rows(path),
        Some("jsonl") | Some("ndjson") => read_jsonl_rows(path),
        _ => Err(DataError::Other(format!(
            "{}: unknown data file type (expected .jsonl or .parquet)",
            path.display()
        ))),
    }
}
