//! Dataset rows as JSON objects, read from JSON Lines, parquet or Arrow stream files. Rows are what
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
    let mut out = vec![];
    visit_jsonl_rows(path, |row| {
        out.push(row);
        Ok(())
    })?;
    Ok(out)
}

/// Hands each non-blank line's object to `f` in order; a line that is not a
/// JSON object, or whose object `f` rejects, is an error naming the line.
pub fn visit_jsonl_rows(path: &Path, mut f: impl FnMut(Row) -> Result<(), String>) -> Result<(), DataError> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    for (i, line) in std::io::BufReader::new(file).split(b'\n').enumerate() {
        let line = line.map_err(io_err(path))?;
        let bad = |reason: String| DataError::Bad {
            path: path.display().to_string(),
            line: i + 1,
            reason,
        };
        let line = String::from_utf8(line).map_err(|e| {
            bad(format!(
                "not UTF-8 text (byte {} of the line); save the file as UTF-8",
                e.utf8_error().valid_up_to() + 1
            ))
        })?;
        // A byte-order mark (some editors and Excel write one) is not part of the JSON.
        let line = if i == 0 {
            line.trim_start_matches('\u{feff}')
        } else {
            &line
        };
        if line.trim().is_empty() {
            continue;
        }
        // serde's position is within this one line: "line 1" would contradict the
        // file's line number the message starts with, so only the column is said.
        let not_json = |e: serde_json::Error| {
            let what = e.to_string();
            let what = what.split(" at line ").next().unwrap_or(&what).to_string();
            bad(format!("not JSON: {what} (column {})", e.column()))
        };
        match serde_json::from_str::<Line>(line).map_err(not_json)? {
            Line::Object(m) => f(m).map_err(bad)?,
            Line::Twice(key) => {
                return Err(bad(format!(
                    "the key {key:?} appears twice in the object; which one a field mapping reads would be a guess"
                )));
            }
            Line::Other => return Err(bad("not a JSON object".into())),
        }
    }
    Ok(())
}

/// A JSON Lines line: an object whose keys are all different, an object with a key
/// twice (serde_json would keep the last silently), or another JSON value.
enum Line {
    Object(Row),
    Twice(String),
    Other,
}

impl<'de> serde::Deserialize<'de> for Line {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Line, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Line;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Line, A::Error> {
                let mut row = Row::new();
                let mut twice = None;
                while let Some(k) = a.next_key::<String>()? {
                    let v: serde_json::Value = a.next_value()?;
                    if row.contains_key(&k) {
                        twice.get_or_insert(k);
                    } else {
                        row.insert(k, v);
                    }
                }
                Ok(twice.map_or(Line::Object(row), Line::Twice))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Line, A::Error> {
                while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Line::Other)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Line, E> {
                Ok(Line::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Line, E> {
                Ok(Line::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Line, E> {
                Ok(Line::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Line, E> {
                Ok(Line::Other)
            }
            fn visit_str<E>(self, _: &str) -> Result<Line, E> {
                Ok(Line::Other)
            }
            fn visit_unit<E>(self) -> Result<Line, E> {
                Ok(Line::Other)
            }
        }
        d.deserialize_any(Visit)
    }
}

/// A parquet reading error, naming the file; a codec this build leaves out (brotli)
/// is the file's choice, not damage, and is said so with what to do.
fn parquet_error(path: &Path, e: parquet::errors::ParquetError) -> DataError {
    let help = match &e {
        parquet::errors::ParquetError::General(m) if m.contains("Disabled feature") => {
            "; its columns are compressed with a codec goosepipe does not read (it reads snappy, gzip, lz4, zstd and uncompressed): save it again with one of those (pandas/pyarrow: compression=\"zstd\")"
        }
        _ => "",
    };
    DataError::Other(format!(
        "{}: not a readable parquet file: {e}{help}",
        path.display()
    ))
}

/// All rows of a parquet file, columns by name (nested groups become objects, lists
/// become arrays).
pub fn read_parquet_rows(path: &Path) -> Result<Vec<Row>, DataError> {
    decoded(path, "parquet file", || parquet_rows(path))
}

/// What a third-party decoder read, or that it could not: some malformed files make
/// the Arrow and parquet readers panic instead of returning an error, which for a
/// user's data file is bad input (`process::contain`).
fn decoded(
    path: &Path,
    what: &str,
    read: impl FnOnce() -> Result<Vec<Row>, DataError>,
) -> Result<Vec<Row>, DataError> {
    crate::process::contain::contain(read).unwrap_or_else(|why| {
        Err(DataError::Other(format!(
            "{}: not a readable {what}: its reader stopped at malformed content ({why}); is the file damaged or cut short?",
            path.display()
        )))
    })
}

fn parquet_rows(path: &Path) -> Result<Vec<Row>, DataError> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let bad = |e| parquet_error(path, e);
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let reader = SerializedFileReader::new(file).map_err(bad)?;
    // The footer's count is a hint, not a promise: a damaged one (i64::MAX) must not
    // size an allocation; the rows themselves are the count.
    let n = reader.metadata().file_metadata().num_rows().clamp(0, 1 << 16) as usize;
    let mut out = Vec::with_capacity(n);
    for (i, row) in reader.get_row_iter(None).map_err(bad)?.enumerate() {
        let mut m = Row::new();
        for (name, field) in row.map_err(bad)?.get_column_iter() {
            let v = parquet_value(field).map_err(|why| {
                DataError::Other(format!("{}: row {}, column {name}: {why}", path.display(), i + 1))
            })?;
            m.insert(name.clone(), v);
        }
        out.push(m);
    }
    Ok(out)
}

/// One parquet value as JSON, by the rules [`arrow_value`] reads an Arrow file with:
/// binary as the UTF-8 text many writers store strings as (base64 of it, the parquet
/// crate's rendering, would have been trained on as text), or refused; a float32 by
/// its shortest decimal. Dates, times and decimals as the parquet crate writes them.
fn parquet_value(f: &parquet::record::Field) -> Result<serde_json::Value, String> {
    use parquet::record::Field as F;
    use serde_json::Value as J;
    Ok(match f {
        F::Bytes(b) => J::from(utf8_text(b.data())?),
        F::Float(x) => shortest_f32(*x),
        // Dates and times in the parquet crate's own text, checked (its rendering
        // panics on a date or instant outside chrono's range).
        F::Date(d) => J::from(date_text(i64::from(*d))?),
        F::TimestampMillis(t) => J::from(instant_text(*t, Unit::Milli)?),
        F::TimestampMicros(t) => J::from(instant_text(*t, Unit::Micro)?),
        F::TimeMillis(t) => J::from(time_of_day_text(i64::from(*t), Unit::Milli)?),
        F::TimeMicros(t) => J::from(time_of_day_text(*t, Unit::Micro)?),
        F::Group(row) => J::Object(
            row.get_column_iter()
                .map(|(k, v)| Ok((k.clone(), parquet_value(v)?)))
                .collect::<Result<_, String>>()?,
        ),
        F::ListInternal(l) => J::Array(l.elements().iter().map(parquet_value).collect::<Result<_, _>>()?),
        other => other.to_json_value(),
    })
}

/// The unit of a time value, with how many decimals of a second its text shows (the
/// parquet crate's: 3 for milliseconds, 6 for microseconds; seconds as milliseconds).
#[derive(Clone, Copy)]
enum Unit {
    Second,
    Milli,
    Micro,
    Nano,
}

impl Unit {
    fn per_second(self) -> i64 {
        match self {
            Unit::Second => 1,
            Unit::Milli => 1_000,
            Unit::Micro => 1_000_000,
            Unit::Nano => 1_000_000_000,
        }
    }

    fn decimals(self) -> usize {
        match self {
            Unit::Second | Unit::Milli => 3,
            Unit::Micro => 6,
            Unit::Nano => 9,
        }
    }

    fn of(unit: &arrow_schema::TimeUnit) -> Unit {
        match unit {
            arrow_schema::TimeUnit::Second => Unit::Second,
            arrow_schema::TimeUnit::Millisecond => Unit::Milli,
            arrow_schema::TimeUnit::Microsecond => Unit::Micro,
            arrow_schema::TimeUnit::Nanosecond => Unit::Nano,
        }
    }
}

/// Days since 1970-01-01 as `YYYY-MM-DD`.
fn date_text(days: i64) -> Result<String, String> {
    days.checked_mul(86_400)
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map(|d| d.format("%Y-%m-%d").to_string())
        .ok_or_else(|| {
            format!("a date {days} days from 1970-01-01, outside the calendar dates can be written in")
        })
}

/// An instant since the epoch, in UTC, as `YYYY-MM-DD HH:MM:SS.fff +00:00`.
fn instant_text(value: i64, unit: Unit) -> Result<String, String> {
    let per = unit.per_second();
    let (secs, frac) = (value.div_euclid(per), value.rem_euclid(per));
    let nanos = frac * (1_000_000_000 / per);
    chrono::DateTime::from_timestamp(secs, nanos as u32)
        .map(|t| {
            let fraction = format!("{:09}", t.timestamp_subsec_nanos());
            format!(
                "{}.{} +00:00",
                t.format("%Y-%m-%d %H:%M:%S"),
                &fraction[..unit.decimals()]
            )
        })
        .ok_or_else(|| {
            format!(
                "a timestamp {value} ({} per second) outside the dates that can be written",
                per
            )
        })
}

/// A time since midnight as `HH:MM:SS.fff`.
fn time_of_day_text(value: i64, unit: Unit) -> Result<String, String> {
    let per = unit.per_second();
    if !(0..86_400 * per).contains(&value) {
        return Err(format!(
            "a time of day {value} ({per} per second) that is not within one day"
        ));
    }
    let secs = value / per;
    let fraction = format!("{:09}", (value % per) * (1_000_000_000 / per));
    Ok(format!(
        "{:02}:{:02}:{:02}.{}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60,
        &fraction[..unit.decimals()]
    ))
}

/// The key of row `i` of a dictionary column (one value read, not the whole column).
fn dictionary_key(col: &dyn arrow_array::Array, i: usize) -> Option<usize> {
    use arrow_array::types::*;
    key_as::<Int32Type>(col, i)
        .or_else(|| key_as::<Int8Type>(col, i))
        .or_else(|| key_as::<Int16Type>(col, i))
        .or_else(|| key_as::<Int64Type>(col, i))
        .or_else(|| key_as::<UInt8Type>(col, i))
        .or_else(|| key_as::<UInt16Type>(col, i))
        .or_else(|| key_as::<UInt32Type>(col, i))
        .or_else(|| key_as::<UInt64Type>(col, i))
}

/// Row `i`'s key, if `col` is a dictionary keyed by `K`.
fn key_as<K: arrow_array::types::ArrowDictionaryKeyType>(
    col: &dyn arrow_array::Array,
    i: usize,
) -> Option<usize> {
    use arrow_array::cast::AsArray;
    col.as_dictionary_opt::<K>()?.key(i)
}

/// Bytes of a binary column as text, if they are UTF-8.
fn utf8_text(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes)
        .map_err(|e| format!("binary data that is not UTF-8 text ({e}); store text columns as strings"))
}

/// A float32 by its shortest decimal (0.1, not 0.10000000149011612 as widened to
/// f64): what the file's writer wrote, as text reads it. Not finite: null.
fn shortest_f32(x: f32) -> serde_json::Value {
    format!("{x}")
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(serde_json::Value::Null, serde_json::Value::Number)
}

/// One value of an Arrow column as JSON (the types datasets' files hold).
fn arrow_value(col: &dyn arrow_array::Array, i: usize) -> Result<serde_json::Value, String> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::*;
    use arrow_schema::DataType as T;
    use serde_json::Value as J;
    if col.is_null(i) {
        return Ok(J::Null);
    }
    Ok(match col.data_type() {
        T::Utf8 => J::from(col.as_string::<i32>().value(i)),
        T::LargeUtf8 => J::from(col.as_string::<i64>().value(i)),
        T::Utf8View => J::from(col.as_string_view().value(i)),
        T::Boolean => J::from(col.as_boolean().value(i)),
        T::Int8 => J::from(col.as_primitive::<Int8Type>().value(i)),
        T::Int16 => J::from(col.as_primitive::<Int16Type>().value(i)),
        T::Int32 => J::from(col.as_primitive::<Int32Type>().value(i)),
        T::Int64 => J::from(col.as_primitive::<Int64Type>().value(i)),
        T::UInt8 => J::from(col.as_primitive::<UInt8Type>().value(i)),
        T::UInt16 => J::from(col.as_primitive::<UInt16Type>().value(i)),
        T::UInt32 => J::from(col.as_primitive::<UInt32Type>().value(i)),
        T::UInt64 => J::from(col.as_primitive::<UInt64Type>().value(i)),
        T::Float32 => shortest_f32(col.as_primitive::<Float32Type>().value(i)),
        T::Binary => J::from(utf8_text(col.as_binary::<i32>().value(i))?),
        T::LargeBinary => J::from(utf8_text(col.as_binary::<i64>().value(i))?),
        T::BinaryView => J::from(utf8_text(col.as_binary_view().value(i))?),
        // Categories (pandas' categoricals): the value its key points at.
        T::Dictionary(_, _) => {
            let k = dictionary_key(col, i).ok_or("a dictionary column with keys that are not integers")?;
            arrow_value(col.as_any_dictionary().values().as_ref(), k)?
        }
        T::Float64 => J::from(col.as_primitive::<Float64Type>().value(i)),
        T::Float16 => shortest_f32(col.as_primitive::<Float16Type>().value(i).to_f32()),
        // Dates, times and decimals as text, as the parquet reader gives them, so one
        // table as .parquet and as .arrow gives the same examples.
        T::Date32 => J::from(date_text(i64::from(col.as_primitive::<Date32Type>().value(i)))?),
        T::Date64 => J::from(date_text(
            col.as_primitive::<Date64Type>().value(i).div_euclid(86_400_000),
        )?),
        T::Timestamp(unit, _) => {
            let v = match unit {
                arrow_schema::TimeUnit::Second => col.as_primitive::<TimestampSecondType>().value(i),
                arrow_schema::TimeUnit::Millisecond => {
                    col.as_primitive::<TimestampMillisecondType>().value(i)
                }
                arrow_schema::TimeUnit::Microsecond => {
                    col.as_primitive::<TimestampMicrosecondType>().value(i)
                }
                arrow_schema::TimeUnit::Nanosecond => col.as_primitive::<TimestampNanosecondType>().value(i),
            };
            J::from(instant_text(v, Unit::of(unit))?)
        }
        T::Time32(unit) => {
            let v = match unit {
                arrow_schema::TimeUnit::Second => col.as_primitive::<Time32SecondType>().value(i),
                _ => col.as_primitive::<Time32MillisecondType>().value(i),
            };
            J::from(time_of_day_text(i64::from(v), Unit::of(unit))?)
        }
        T::Time64(unit) => {
            let v = match unit {
                arrow_schema::TimeUnit::Microsecond => col.as_primitive::<Time64MicrosecondType>().value(i),
                _ => col.as_primitive::<Time64NanosecondType>().value(i),
            };
            J::from(time_of_day_text(v, Unit::of(unit))?)
        }
        T::Decimal128(_, _) => J::from(col.as_primitive::<Decimal128Type>().value_as_string(i)),
        T::Decimal256(_, _) => J::from(col.as_primitive::<Decimal256Type>().value_as_string(i)),
        T::List(_) => {
            let l = col.as_list::<i32>().value(i);
            J::Array(
                (0..l.len())
                    .map(|j| arrow_value(l.as_ref(), j))
                    .collect::<Result<_, _>>()?,
            )
        }
        T::LargeList(_) => {
            let l = col.as_list::<i64>().value(i);
            J::Array(
                (0..l.len())
                    .map(|j| arrow_value(l.as_ref(), j))
                    .collect::<Result<_, _>>()?,
            )
        }
        T::Struct(fields) => {
            let st = col.as_struct();
            let mut m = serde_json::Map::new();
            for (f, c) in fields.iter().zip(st.columns()) {
                m.insert(f.name().clone(), arrow_value(c.as_ref(), i)?);
            }
            J::Object(m)
        }
        other => return Err(format!("unsupported Arrow column type {other}")),
    })
}

/// All rows of an Arrow IPC file: the stream format, as `datasets`' `save_to_disk`
/// writes it (`data-00000-of-00001.arrow`), or the file format (`ARROW1` magic:
/// `pyarrow.feather.write_feather`, `pyarrow.ipc.new_file`).
pub fn read_arrow_rows(path: &Path) -> Result<Vec<Row>, DataError> {
    decoded(path, "Arrow file", || arrow_rows(path))
}

fn arrow_rows(path: &Path) -> Result<Vec<Row>, DataError> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut magic = [0u8; 6];
    let is_file_format = file.read(&mut magic).is_ok_and(|n| n == 6 && &magic == b"ARROW1");
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    if is_file_format {
        let bad = |e: String| DataError::Other(format!("{}: not a readable Arrow file: {e}", path.display()));
        let reader = arrow_ipc::reader::FileReader::try_new(file, None).map_err(|e| bad(e.to_string()))?;
        arrow_batches_rows(reader, bad)
    } else {
        let bad =
            |e: String| DataError::Other(format!("{}: not a readable Arrow stream: {e}", path.display()));
        let reader = arrow_ipc::reader::StreamReader::try_new(std::io::BufReader::new(file), None)
            .map_err(|e| bad(e.to_string()))?;
        arrow_batches_rows(reader, bad)
    }
}

/// The rows of Arrow record batches as JSON objects.
fn arrow_batches_rows(
    batches: impl Iterator<Item = Result<arrow_array::RecordBatch, arrow_schema::ArrowError>>,
    bad: impl Fn(String) -> DataError,
) -> Result<Vec<Row>, DataError> {
    let mut out = vec![];
    for batch in batches {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
        let schema = batch.schema();
        for i in 0..batch.num_rows() {
            let mut row = Row::new();
            for (f, col) in schema.fields().iter().zip(batch.columns()) {
                let v = arrow_value(col.as_ref(), i).map_err(|e| bad(format!("column {}: {e}", f.name())))?;
                row.insert(f.name().clone(), v);
            }
            out.push(row);
        }
    }
    Ok(out)
}

/// All rows of a CSV file with a header line: each
/// record an object of its columns' text (answer choices in one column as a JSON
/// list, `["a", "b"]`, are read as a list by the field mapping). Errors name the line.
pub fn read_csv_rows(path: &Path) -> Result<Vec<Row>, DataError> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    // Flexible: a record of another length is judged here, where it can be told apart
    // from a quote left open (which reads the rest of the file as one field).
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(std::io::BufReader::new(file));
    let at = |e: csv::Error| {
        let line = e.position().map(|p| format!(":{}", p.line())).unwrap_or_default();
        let why = match e.kind() {
            csv::ErrorKind::Utf8 { .. } => "not UTF-8 text; save the file as UTF-8".to_string(),
            _ => e.to_string(),
        };
        DataError::Other(format!("{}{line}: {why}", path.display()))
    };
    let headers: Vec<String> = reader
        .headers()
        .map_err(at)?
        .iter()
        .enumerate()
        // A spreadsheet's byte-order mark is not part of the first column's name.
        .map(|(i, h)| {
            if i == 0 {
                h.trim_start_matches('\u{feff}')
            } else {
                h
            }
            .to_string()
        })
        .collect();
    // Two columns of one name: which one a field mapping reads would be a guess.
    let mut seen = std::collections::HashSet::new();
    if let Some(twice) = headers.iter().find(|h| !seen.insert(h.as_str())) {
        return Err(DataError::Other(format!(
            "{}:1: the header names column {twice:?} twice; rename one of them",
            path.display()
        )));
    }
    let mut out = vec![];
    let mut records = reader.records().peekable();
    while let Some(record) = records.next() {
        let record = record.map_err(at)?;
        if record.len() != headers.len() {
            let line = record.position().map_or(0, |p| p.line());
            // Lines the record spans past its first (a newline that ends the file is
            // no further line).
            let joined = record.iter().collect::<Vec<_>>().join(",");
            let spans = joined.trim_end_matches(['\n', '\r']).matches('\n').count();
            // A quote left open reads to the end of the file: the last record, short,
            // spanning lines, or ending in the file's final line break (which only an
            // open quote takes into a field). A short record whose quoted field
            // closes is counted.
            let open = spans > 0
                || record
                    .iter()
                    .next_back()
                    .is_some_and(|f| f.ends_with(['\n', '\r']));
            let why = if open && record.len() < headers.len() && records.peek().is_none() {
                format!(
                    "a quoted field opened here runs on to the end of the file (line {}): its closing quote is missing (a quote inside a quoted field is written twice: \"\")",
                    line as usize + spans
                )
            } else {
                format!(
                    "this record has {} fields, the header {}",
                    record.len(),
                    headers.len()
                )
            };
            return Err(DataError::Other(format!("{}:{line}: {why}", path.display())));
        }
        let mut row = Row::new();
        for (h, cell) in headers.iter().zip(record.iter()) {
            row.insert(h.clone(), serde_json::Value::String(cell.to_string()));
        }
        out.push(row);
    }
    Ok(out)
}

/// All rows of a TSV file with a header line. Quoting is read as pandas and Python's
/// csv module write it: a field that starts with a quote mark runs to the quote mark
/// that ends it (inner quotes doubled), and may then hold tabs and line breaks. A
/// quote that ends no field there (`"Hello ... 12" pipe`, `"Stop", she said`) is an
/// error at the line where the field opened: read with CSV's lenient rules, a stray
/// leading quote ran on to the next quote mark, lines further down, and merged every
/// row between into one example without a word. Lines end with LF, CRLF or a bare CR.
pub fn read_tsv_rows(path: &Path) -> Result<Vec<Row>, DataError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        // Line ends as the records count them: LF, CRLF or a bare CR.
        let before = &bytes[..e.valid_up_to()];
        let bare_cr = before
            .iter()
            .enumerate()
            .filter(|&(i, b)| *b == b'\r' && bytes.get(i + 1) != Some(&b'\n'))
            .count();
        let line = before.iter().filter(|b| **b == b'\n').count() + bare_cr + 1;
        DataError::Other(format!(
            "{}:{line}: not UTF-8 text; save the file as UTF-8",
            path.display()
        ))
    })?;
    // A spreadsheet's byte-order mark is not part of the first column's name.
    let text = text.trim_start_matches('\u{feff}');
    let at = |line: usize, why: String| DataError::Other(format!("{}:{line}: {why}", path.display()));
    let records = tsv_records(text).map_err(|(line, why)| at(line, why))?;
    let mut records = records.into_iter();
    let Some((_, headers)) = records.next() else {
        return Ok(vec![]);
    };
    let mut seen = std::collections::HashSet::new();
    if let Some(twice) = headers.iter().find(|h| !seen.insert(h.as_str())) {
        return Err(at(
            1,
            format!("the header names column {twice:?} twice; rename one of them"),
        ));
    }
    let mut out = vec![];
    for (line, fields) in records {
        if fields.len() != headers.len() {
            return Err(at(
                line,
                format!(
                    "{} tab-separated fields where the header has {}",
                    fields.len(),
                    headers.len()
                ),
            ));
        }
        out.push(
            headers
                .iter()
                .cloned()
                .zip(fields.into_iter().map(serde_json::Value::String))
                .collect(),
        );
    }
    Ok(out)
}

/// A record's fields, with the line it starts on.
type TsvRecord = (usize, Vec<String>);

/// A TSV text's records; blank lines are skipped. An error is (line, why).
fn tsv_records(text: &str) -> Result<Vec<TsvRecord>, (usize, String)> {
    let mut records = vec![];
    let mut chars = text.chars().peekable();
    let mut line = 1;
    // A line end: LF, CRLF or a bare CR, counted as one line.
    let line_end = |c: char, chars: &mut std::iter::Peekable<std::str::Chars>| {
        if c == '\r' && chars.peek() == Some(&'\n') {
            chars.next();
        }
    };
    while chars.peek().is_some() {
        let start = line;
        let mut fields = vec![];
        let mut field = String::new();
        let mut at_field_start = true;
        loop {
            let Some(c) = chars.next() else {
                fields.push(std::mem::take(&mut field));
                break;
            };
            if at_field_start && c == '"' {
                // A quoted field: to the quote that ends it.
                let opened = line;
                loop {
                    match chars.next() {
                        None => {
                            return Err((
                                opened,
                                "a field opens a quote mark that never closes: a field that starts with a quote is read as quoted (as pandas writes TSV), to a closing quote followed by a tab or the line's end; double the quote marks inside it, or use a .jsonl file".into(),
                            ));
                        }
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            field.push('"');
                        }
                        Some('"') => match chars.peek() {
                            None | Some('\t') | Some('\n') | Some('\r') => break,
                            Some(_) => {
                                let shown: String = field.chars().take(40).collect();
                                let shown = format!("{shown:?}");
                                let shown = shown.trim_end_matches('"');
                                return Err((
                                    opened,
                                    format!(
                                        "the field that starts {shown}...\" opens a quote mark that closes on line {line} with more text after it: a field that starts with a quote is read as quoted (as pandas writes TSV), to a closing quote followed by a tab or the line's end; quote the whole field and double its quote marks, or use a .jsonl file"
                                    ),
                                ));
                            }
                        },
                        Some(c) => {
                            if c == '\n' || (c == '\r' && chars.peek() != Some(&'\n')) {
                                line += 1;
                            }
                            field.push(c);
                        }
                    }
                }
                at_field_start = false;
                continue;
            }
            match c {
                '\t' => {
                    fields.push(std::mem::take(&mut field));
                    at_field_start = true;
                }
                '\n' | '\r' => {
                    line_end(c, &mut chars);
                    line += 1;
                    fields.push(std::mem::take(&mut field));
                    break;
                }
                c => {
                    field.push(c);
                    at_field_start = false;
                }
            }
        }
        // A blank line is no record.
        if !(fields.len() == 1 && fields[0].is_empty()) {
            records.push((start, fields));
        }
    }
    Ok(records)
}

/// Rows of a data file, by extension (.jsonl / .ndjson, .parquet, .arrow, .csv, .tsv).
pub fn read_rows(path: &Path) -> Result<Vec<Row>, DataError> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("parquet") => read_parquet_rows(path),
        Some("arrow") => read_arrow_rows(path),
        Some("jsonl") | Some("ndjson") => read_jsonl_rows(path),
        Some("csv") => read_csv_rows(path),
        Some("tsv") => read_tsv_rows(path),
        _ => Err(DataError::Other(format!(
            "{}: unknown data file type (expected .jsonl, .parquet, .arrow, .csv or .tsv)",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};

    use super::*;

    fn batch() -> RecordBatch {
        let q: ArrayRef = Arc::new(StringArray::from(vec!["2+2", "3+3"]));
        let a: ArrayRef = Arc::new(Int64Array::from(vec![4, 6]));
        RecordBatch::try_from_iter([("q", q), ("a", a)]).unwrap()
    }

    #[test]
    fn a_line_that_is_not_json_is_named_by_the_file_s_line_and_its_column() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("a.jsonl");
        std::fs::write(&p, "{\"a\": 1}\n{\"a\": 1 \"b\": 2}\n").unwrap();
        let e = read_jsonl_rows(&p).unwrap_err().to_string();
        assert!(
            e.ends_with("a.jsonl:2: not JSON: expected `,` or `}` (column 9)"),
            "{e}"
        );
    }

    #[test]
    fn a_jsonl_object_with_a_key_twice_or_a_line_that_is_no_object_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("d.jsonl");
        std::fs::write(&p, "{\"input\": \"a\", \"nested\": {\"x\": [1, {\"y\": 2}]}}\n{\"input\": \"first\", \"target\": \"t\", \"input\": \"second\"}\n").unwrap();
        let err = read_jsonl_rows(&p).unwrap_err().to_string();
        assert!(
            err.contains("d.jsonl:2: the key \"input\" appears twice"),
            "{err}"
        );
        for other in ["[1, 2]", "5", "\"text\"", "null", "true"] {
            std::fs::write(&p, format!("{other}\n")).unwrap();
            let err = read_jsonl_rows(&p).unwrap_err().to_string();
            assert!(err.contains("d.jsonl:1: not a JSON object"), "{other}: {err}");
        }
        std::fs::write(
            &p,
            "{\"input\": \"a\", \"n\": 1.5, \"nested\": {\"x\": [1, {\"y\": 2}]}}\n",
        )
        .unwrap();
        let rows = read_jsonl_rows(&p).unwrap();
        assert_eq!(rows[0]["nested"]["x"][1]["y"], 2);
        assert_eq!(rows[0].keys().collect::<Vec<_>>(), ["input", "n", "nested"]);
    }

    #[test]
    fn csv_and_tsv_rows_have_their_header_s_fields_as_text() {
        let t = tempfile::tempdir().unwrap();
        let csv = t.path().join("d.csv");
        std::fs::write(
            &csv,
            "\u{feff}q,a,c\r\n\"2+2, please\",4,\"[\"\"3\"\", \"\"4\"\"]\"\r\nx,y,[not json\r\n",
        )
        .unwrap();
        let rows = read_rows(&csv).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["q"], "2+2, please");
        assert_eq!(rows[0]["a"], "4");
        // Text, every cell: only the choices field reads a JSON list (a target that
        // looks like one stays text).
        assert_eq!(rows[0]["c"], "[\"3\", \"4\"]");
        assert_eq!(rows[1]["c"], "[not json");
        let tsv = t.path().join("d.tsv");
        std::fs::write(&tsv, "q\ta\nhello, world\tyes\n").unwrap();
        assert_eq!(read_rows(&tsv).unwrap()[0]["q"], "hello, world");
        // A record with another number of fields, and bytes that are not UTF-8, name
        // their line.
        std::fs::write(&csv, "q,a,q\nx,y,z\n").unwrap();
        let err = read_rows(&csv).unwrap_err().to_string();
        assert!(
            err.contains("d.csv:1: the header names column \"q\" twice"),
            "{err}"
        );
        std::fs::write(&csv, "q,a\nx,y\nonly-one\n").unwrap();
        let err = read_rows(&csv).unwrap_err().to_string();
        assert!(
            err.contains("d.csv:3: this record has 1 fields, the header 2"),
            "{err}"
        );
        // A short record whose quoted field spans lines and closes is counted.
        std::fs::write(&csv, "q,a,b\n\"x\ny\",z\nu,v,w\n").unwrap();
        let err = read_rows(&csv).unwrap_err().to_string();
        assert!(
            err.contains("d.csv:2: this record has 2 fields, the header 3"),
            "{err}"
        );
        // A quote left open reads the rest of the file as one field: said as that (it
        // was "found record with 1 fields, but the previous record has 2").
        std::fs::write(&csv, "q,a\nx,y\n\"open,z\nw,v\nu,t\n").unwrap();
        let err = read_rows(&csv).unwrap_err().to_string();
        assert!(
            err.contains(
                "d.csv:3: a quoted field opened here runs on to the end of the file (line 5): its closing quote is missing"
            ),
            "{err}"
        );
        // On the last line, it takes the file's final line break.
        std::fs::write(&csv, "q,a\n\"x,y\n").unwrap();
        let err = read_rows(&csv).unwrap_err().to_string();
        assert!(
            err.contains("d.csv:2: a quoted field opened here runs on to the end of the file (line 2)"),
            "{err}"
        );
        std::fs::write(&csv, b"q,a\nx,y\ncaf\xe9,z\n").unwrap();
        let err = read_rows(&csv).unwrap_err().to_string();
        assert!(err.contains("d.csv:3: not UTF-8 text"), "{err}");
    }

    /// A stray quote mark at the start of a TSV field opened a CSV-quoted field that
    /// ran to the next quote, lines down: 20 rows were read as 13 without a word.
    #[test]
    fn a_tsv_field_that_starts_with_a_quote_is_quoted_whole_or_refused_by_its_line() {
        let t = tempfile::tempdir().unwrap();
        let tsv = t.path().join("d.tsv");
        let mut text = String::from("input\ttarget\n");
        for i in 0..20 {
            let input = match i {
                5 => "\"Hello : w5".to_string(),
                12 => "a 12\" pipe : w12".to_string(),
                _ => format!("copy : w{i}"),
            };
            text.push_str(&format!("{input}\tw{i}\n"));
        }
        std::fs::write(&tsv, &text).unwrap();
        let err = read_rows(&tsv).unwrap_err().to_string();
        assert!(
            err.contains("d.tsv:7: the field that starts \"Hello : w5\\tw5\\ncopy")
                && err.contains("closes on line 14 with more text after it"),
            "{err}"
        );
        std::fs::write(&tsv, "input\ttarget\n\"Stop\", she said\tx\n").unwrap();
        assert!(read_rows(&tsv).unwrap_err().to_string().contains("d.tsv:2: "));
        std::fs::write(&tsv, "input\ttarget\nx\t\"never closed\n").unwrap();
        let err = read_rows(&tsv).unwrap_err().to_string();
        assert!(
            err.contains("d.tsv:2: a field opens a quote mark that never closes"),
            "{err}"
        );
        // As pandas and Python's csv module write TSV: a field with a tab, a line
        // break or a quote is quoted whole, inner quotes doubled. A quote inside an
        // unquoted field is text; a BOM and CRLF line ends are read past; blank
        // lines skipped.
        std::fs::write(
            &tsv,
            "\u{feff}\"input\"\ttarget\r\na 12\" pipe\t\"say \"\"hi\"\"\"\r\n\r\n\"\"\tb\r\n\"tab\there\"\t\"two\r\nlines\"\r\nlast\tone\r\n",
        )
        .unwrap();
        let rows = read_rows(&tsv).unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0]["input"], "a 12\" pipe");
        assert_eq!(rows[0]["target"], "say \"hi\"");
        assert_eq!(rows[1]["input"], "");
        assert_eq!(rows[2]["input"], "tab\there");
        assert_eq!(rows[2]["target"], "two\r\nlines");
        assert_eq!(rows[3]["target"], "one");
        // Old Mac line ends (a bare CR), as Excel for Mac saves tab-delimited text;
        // a record's line is counted past a quoted line break.
        std::fs::write(&tsv, "q\ta\rx\ty\r\"a\rb\"\tz\rbad\r").unwrap();
        let err = read_rows(&tsv).unwrap_err().to_string();
        assert!(
            err.contains("d.tsv:5: 1 tab-separated fields where the header has 2"),
            "{err}"
        );
        std::fs::write(&tsv, "q\ta\rx\ty\r").unwrap();
        assert_eq!(read_rows(&tsv).unwrap()[0]["a"], "y");
        std::fs::write(&tsv, b"input\ttarget\r\"a\rb\"\tc\r\xff\td\r").unwrap();
        let err = read_rows(&tsv).unwrap_err().to_string();
        assert!(err.contains("d.tsv:4: not UTF-8 text"), "{err}");
        // Another number of fields names its line.
        std::fs::write(&tsv, "q\ta\nx\ty\nonly-one\n").unwrap();
        let err = read_rows(&tsv).unwrap_err().to_string();
        assert!(
            err.contains("d.tsv:3: 1 tab-separated fields where the header has 2"),
            "{err}"
        );
    }

    #[test]
    fn a_parquet_codec_left_out_of_the_build_says_what_to_do() {
        let e = parquet::errors::ParquetError::General("Disabled feature at compile time: brotli".into());
        let msg = parquet_error(Path::new("d.parquet"), e).to_string();
        assert!(
            msg.contains("d.parquet: not a readable parquet file")
                && msg.contains("brotli")
                && msg.contains("save it again with one of those"),
            "{msg}"
        );
    }

    #[test]
    fn arrow_files_read_in_the_stream_and_the_file_format() {
        let t = tempfile::tempdir().unwrap();
        let b = batch();
        let stream = t.path().join("stream.arrow");
        let mut w =
            arrow_ipc::writer::StreamWriter::try_new(std::fs::File::create(&stream).unwrap(), &b.schema())
                .unwrap();
        w.write(&b).unwrap();
        w.finish().unwrap();
        // The file format (feather v2, `ipc.new_file`): it was "not a readable Arrow
        // stream: ... expected 1330795073 metadata bytes".
        let file = t.path().join("file.arrow");
        let mut w =
            arrow_ipc::writer::FileWriter::try_new(std::fs::File::create(&file).unwrap(), &b.schema())
                .unwrap();
        w.write(&b).unwrap();
        w.finish().unwrap();
        let want = read_arrow_rows(&stream).unwrap();
        assert_eq!(want.len(), 2);
        assert_eq!(want[1]["q"], "3+3");
        assert_eq!(want[1]["a"], 6);
        assert_eq!(read_arrow_rows(&file).unwrap(), want);
        // A damaged file format file says which format it was read as.
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
        let err = read_arrow_rows(&file).unwrap_err().to_string();
        assert!(err.contains("file.arrow: not a readable Arrow file"), "{err}");
    }

    /// One byte changed in a real file: the Arrow reader slices a buffer past its end,
    /// the parquet reader meets a negative column offset; both asserted (panicked).
    /// Found by flipping bytes of the fixtures; now bad input, naming the file.
    #[test]
    fn a_data_file_that_makes_its_decoder_panic_is_said_as_damaged() {
        let t = tempfile::tempdir().unwrap();
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data");
        for (name, at, byte, what) in [
            ("flan-data.arrow", 2373, 0xEE, "Arrow file"),
            ("rte-validation.parquet", 895, 0x47, "parquet file"),
        ] {
            let mut bytes = std::fs::read(fixtures.join(name)).unwrap();
            bytes[at] = byte;
            let damaged = t.path().join(name);
            std::fs::write(&damaged, bytes).unwrap();
            let err = read_rows(&damaged).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("{}: not a readable {what}: ", damaged.display()))
                    && err.ends_with("is the file damaged or cut short?"),
                "{err}"
            );
        }
    }

    /// Dates, instants, times of day and decimals read as the same text from parquet
    /// and from Arrow (Arrow refused them: "unsupported Arrow column type"), and a
    /// date outside the calendar is refused by row and column (the parquet crate's
    /// own rendering panicked on it, said as a damaged file).
    #[test]
    fn dates_times_and_decimals_read_alike_in_parquet_and_arrow() {
        use arrow_array::{
            Date32Array, Decimal128Array, Float16Array, Time64MicrosecondArray, TimestampMillisecondArray,
        };
        use parquet::data_type::{Int32Type as P32, Int64Type as P64};
        use parquet::file::writer::SerializedFileWriter;
        let t = tempfile::tempdir().unwrap();
        // 2021-03-04, 2021-03-04 05:06:07.089 UTC, 01:02:03.000004, 123.45
        let (day, instant, time, cents) = (18_690i32, 1_614_834_367_089i64, 3_723_000_004i64, 12_345i32);
        let write_parquet = |name: &str, day: i32| {
            let path = t.path().join(name);
            let schema = Arc::new(
                parquet::schema::parser::parse_message_type(
                    "message m { REQUIRED INT32 d (DATE); REQUIRED INT64 ts (TIMESTAMP_MILLIS); REQUIRED INT64 t (TIME_MICROS); REQUIRED INT32 x (DECIMAL(5,2)); }",
                )
                .unwrap(),
            );
            let mut w =
                SerializedFileWriter::new(std::fs::File::create(&path).unwrap(), schema, Default::default())
                    .unwrap();
            let mut rg = w.next_row_group().unwrap();
            for col in 0..4 {
                let mut c = rg.next_column().unwrap().unwrap();
                match col {
                    0 => c.typed::<P32>().write_batch(&[day], None, None),
                    1 => c.typed::<P64>().write_batch(&[instant], None, None),
                    2 => c.typed::<P64>().write_batch(&[time], None, None),
                    _ => c.typed::<P32>().write_batch(&[cents], None, None),
                }
                .unwrap();
                c.close().unwrap();
            }
            rg.close().unwrap();
            w.close().unwrap();
            path
        };
        let from_parquet = read_rows(&write_parquet("d.parquet", day)).unwrap();
        assert_eq!(from_parquet[0]["d"], "2021-03-04");
        assert_eq!(from_parquet[0]["ts"], "2021-03-04 05:06:07.089 +00:00");
        assert_eq!(from_parquet[0]["t"], "01:02:03.000004");
        assert_eq!(from_parquet[0]["x"], "123.45");

        let cols: [(&str, ArrayRef); 5] = [
            ("d", Arc::new(Date32Array::from(vec![day]))),
            (
                "ts",
                Arc::new(TimestampMillisecondArray::from(vec![instant]).with_timezone("Europe/Paris")),
            ),
            ("t", Arc::new(Time64MicrosecondArray::from(vec![time]))),
            (
                "x",
                Arc::new(
                    Decimal128Array::from(vec![i128::from(cents)])
                        .with_precision_and_scale(5, 2)
                        .unwrap(),
                ),
            ),
            ("h", Arc::new(Float16Array::from(vec![half_of(0.5)]))),
        ];
        let b = RecordBatch::try_from_iter(cols).unwrap();
        let file = t.path().join("d.arrow");
        let mut w =
            arrow_ipc::writer::StreamWriter::try_new(std::fs::File::create(&file).unwrap(), &b.schema())
                .unwrap();
        w.write(&b).unwrap();
        w.finish().unwrap();
        let mut from_arrow = read_rows(&file).unwrap();
        assert_eq!(from_arrow[0].remove("h").unwrap().to_string(), "0.5");
        assert_eq!(from_arrow, from_parquet);

        // A date past what the calendar holds: said by row and column, not a panic.
        let err = read_rows(&write_parquet("far.parquet", i32::MAX))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("far.parquet: row 1, column d: a date 2147483647 days from 1970-01-01, outside"),
            "{err}"
        );
    }

    fn half_of(x: f32) -> <arrow_array::types::Float16Type as arrow_array::ArrowPrimitiveType>::Native {
        <arrow_array::types::Float16Type as arrow_array::ArrowPrimitiveType>::Native::from_f32(x)
    }

    /// Binary columns (how many writers store strings) are read as their UTF-8 text
    /// in both formats, or refused by row and column; they were base64 in parquet
    /// (and trained on as text). Float32 keeps its shortest decimal, and a
    /// dictionary (categorical) column in Arrow is read as its values.
    #[test]
    fn binary_float32_and_dictionary_columns_read_alike_in_parquet_and_arrow() {
        use arrow_array::{BinaryArray, DictionaryArray, Float32Array, types::Int32Type};
        use parquet::data_type::{ByteArray, ByteArrayType, FloatType};
        use parquet::file::writer::SerializedFileWriter;
        let t = tempfile::tempdir().unwrap();
        let write_parquet = |name: &str, texts: &[&[u8]]| {
            let path = t.path().join(name);
            let schema = Arc::new(
                parquet::schema::parser::parse_message_type(
                    "message m { REQUIRED BYTE_ARRAY input; REQUIRED FLOAT score; }",
                )
                .unwrap(),
            );
            let mut w =
                SerializedFileWriter::new(std::fs::File::create(&path).unwrap(), schema, Default::default())
                    .unwrap();
            let mut rg = w.next_row_group().unwrap();
            let values: Vec<ByteArray> = texts.iter().map(|b| ByteArray::from(b.to_vec())).collect();
            let mut col = rg.next_column().unwrap().unwrap();
            col.typed::<ByteArrayType>()
                .write_batch(&values, None, None)
                .unwrap();
            col.close().unwrap();
            let mut col = rg.next_column().unwrap().unwrap();
            let scores = vec![0.1f32; texts.len()];
            col.typed::<FloatType>().write_batch(&scores, None, None).unwrap();
            col.close().unwrap();
            rg.close().unwrap();
            w.close().unwrap();
            path
        };
        let good = write_parquet("good.parquet", &[b"alpha", "caf\u{e9}".as_bytes()]);
        let rows = read_rows(&good).unwrap();
        assert_eq!(rows[0]["input"], "alpha");
        assert_eq!(rows[1]["input"], "caf\u{e9}");
        assert_eq!(rows[0]["score"].to_string(), "0.1");
        let bad = write_parquet("bad.parquet", &[b"alpha", b"\xff\xfe"]);
        let err = read_rows(&bad).unwrap_err().to_string();
        assert!(
            err.contains("bad.parquet: row 2, column input: binary data that is not UTF-8 text"),
            "{err}"
        );

        // The same in an Arrow file, compressed as pyarrow writes by default (LZ4).
        let input: ArrayRef = Arc::new(BinaryArray::from(vec![b"alpha".as_ref(), "caf\u{e9}".as_bytes()]));
        let score: ArrayRef = Arc::new(Float32Array::from(vec![0.1f32, 0.1]));
        let kind: ArrayRef = Arc::new(vec!["x", "y"].into_iter().collect::<DictionaryArray<Int32Type>>());
        let b = RecordBatch::try_from_iter([("input", input), ("score", score), ("kind", kind)]).unwrap();
        let file = t.path().join("file.arrow");
        let options = arrow_ipc::writer::IpcWriteOptions::default()
            .try_with_compression(Some(arrow_ipc::CompressionType::LZ4_FRAME))
            .unwrap();
        let mut w = arrow_ipc::writer::FileWriter::try_new_with_options(
            std::fs::File::create(&file).unwrap(),
            &b.schema(),
            options,
        )
        .unwrap();
        w.write(&b).unwrap();
        w.finish().unwrap();
        let arrow = read_rows(&file).unwrap();
        assert_eq!(arrow[1]["input"], "caf\u{e9}");
        assert_eq!(arrow[0]["score"].to_string(), "0.1");
        assert_eq!(
            (arrow[0]["kind"].as_str(), arrow[1]["kind"].as_str()),
            (Some("x"), Some("y"))
        );
        assert_eq!(
            (&arrow[0]["input"], &arrow[0]["score"]),
            (&rows[0]["input"], &rows[0]["score"])
        );
    }
}
