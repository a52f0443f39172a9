//! The trainer's resumable state as one self-verifying file.
//!
//! A checkpoint is a single safetensors file (`train-state.safetensors`) holding the
//! trained variables, the AdamW moments and the best weights so far, with the loop's
//! bookkeeping (step, metrics, best score) as JSON in its header, and a blake3 digest
//! over all of it (every tensor's name, dtype, shape and bytes, and the JSON). Nothing
//! else is written, so there is no pair of files a kill can cut apart.
//!
//! Saving writes the new state to a temporary file and syncs it, moves the current state
//! aside as `train-state.prev.safetensors`, and renames the new one in. A kill at any
//! moment leaves at least one complete state: the current one, or the previous one
//! with no current. Loading verifies the digest and the header; a damaged or
//! unreadable state is discarded with a warning, and the previous one (or a fresh
//! start) is used instead. Training data order is a pure function of the step, so
//! resuming from an older state still publishes the same bytes.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use safetensors::{SafeTensors, View};

use crate::faults;

pub use crate::artifact_files::PREVIOUS;
pub use crate::artifact_files::STATE;
/// Written by earlier versions beside the state (a torn pair cannot be trusted).
const LEGACY_JSON: &str = "train-state.json";
const FORMAT: &str = "goosepipe-train-state/2";

/// Tensors by name and the loop's bookkeeping.
pub struct TrainState {
    pub tensors: HashMap<String, Tensor>,
    pub meta: serde_json::Value,
}

/// The digest of a state: format tag, the bookkeeping JSON, then every tensor (name,
/// dtype, shape, bytes) in name order, each length-delimited.
fn digest<'a>(
    meta_text: &str,
    tensors: impl Iterator<Item = (&'a str, String, Vec<usize>, &'a [u8])>,
) -> String {
    let mut h = blake3::Hasher::new();
    let mut field = |b: &[u8]| {
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(FORMAT.as_bytes());
    field(meta_text.as_bytes());
    for (name, dtype, shape, bytes) in tensors {
        field(name.as_bytes());
        field(dtype.as_bytes());
        let dims: Vec<u8> = shape.iter().flat_map(|d| (*d as u64).to_le_bytes()).collect();
        field(&dims);
        field(bytes);
    }
    h.finalize().to_hex().to_string()
}

/// Writes `state` into `work` as described in the module docs.
pub fn save(work: &Path, state: &TrainState) -> Result<(), String> {
    let meta_text = serde_json::to_string(&state.meta).map_err(|e| e.to_string())?;
    let sorted: BTreeMap<&str, Tensor> = state
        .tensors
        .iter()
        .map(|(k, t)| Ok((k.as_str(), t.contiguous()?)))
        .collect::<candle_core::Result<_>>()
        .map_err(|e| e.to_string())?;
    let datas: Vec<std::borrow::Cow<'_, [u8]>> = sorted.values().map(View::data).collect();
    let sum = digest(
        &meta_text,
        sorted
            .iter()
            .zip(&datas)
            .map(|((k, t), b)| (*k, format!("{:?}", t.dtype()), t.dims().to_vec(), b.as_ref())),
    );
    let metadata = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("meta".to_string(), meta_text),
        ("digest".to_string(), sum),
    ]);
    let bytes = safetensors::serialize(sorted.iter().map(|(k, t)| (*k, t)), Some(metadata))
        .map_err(|e| e.to_string())?;
    let tmp = work.join(format!("{STATE}.tmp"));
    let write = |p: &Path| -> std::io::Result<()> {
        let mut f = File::create(p)?;
        f.write_all(&bytes)?;
        f.sync_all()
    };
    // A write cut short (a full disk) leaves no partial file to take space or to
    // look like saved progress.
    write(&tmp).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("{}: {e}", tmp.display())
    })?;
    faults::point("checkpoint.written");
    let current = work.join(STATE);
    if current.exists() {
        std::fs::rename(&current, work.join(PREVIOUS)).map_err(|e| format!("{}: {e}", current.display()))?;
    }
    faults::point("checkpoint.previous-kept");
    std::fs::rename(&tmp, &current).map_err(|e| format!("{}: {e}", current.display()))?;
    crate::store::fsutil::sync_dir(work).map_err(|e| format!("{}: {e}", work.display()))?;
    faults::point("checkpoint.replaced");
    // The previous state is no longer needed once the new one is durable.
    let _ = std::fs::remove_file(work.join(PREVIOUS));
    Ok(())
}

/// Reads and verifies one state file.
fn read(path: &Path, device: &Device) -> Result<TrainState, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("unreadable: {e}"))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| format!("not a complete safetensors file: {e}"))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| format!("bad header: {e}"))?;
    let meta = header.metadata().clone().unwrap_or_default();
    match meta.get("format").map(String::as_str) {
        Some(FORMAT) => {}
        Some(other) => {
            return Err(format!(
                "written in format {other:?}, this build reads {FORMAT:?}"
            ));
        }
        None => return Err("has no format tag (written by an older goosepipe)".into()),
    }
    let meta_text = meta.get("meta").ok_or("has no bookkeeping")?;
    let recorded = meta.get("digest").ok_or("has no digest")?;
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let views = names
        .iter()
        .map(|n| st.tensor(n).map(|v| (n.as_str(), v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let actual = digest(
        meta_text,
        views.iter().map(|(n, v)| {
            let dtype = candle_core::DType::try_from(v.dtype())
                .map(|d| format!("{d:?}"))
                .unwrap_or_else(|_| format!("{:?}", v.dtype()));
            (*n, dtype, v.shape().to_vec(), v.data())
        }),
    );
    if &actual != recorded {
        return Err("its contents do not match their recorded digest".into());
    }
    let meta: serde_json::Value =
        serde_json::from_str(meta_text).map_err(|e| format!("bookkeeping does not parse: {e}"))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| e.to_string())?;
    Ok(TrainState { tensors, meta })
}

/// What loading found, for the trainer to report.
pub struct Loaded {
    pub state: Option<TrainState>,
    /// One line per discarded file: which, and why.
    pub warnings: Vec<String>,
}

/// The newest good state in `work`: the current one, else the previous one. `check`
/// judges a verified state against the run (shapes of the variables, the step range);
/// a file that fails either is deleted, with a warning, so it is never tried again.
pub fn load(work: &Path, device: &Device, check: impl Fn(&TrainState) -> Result<(), String>) -> Loaded {
    let mut warnings = vec![];
    let legacy = work.join(LEGACY_JSON);
    if legacy.exists() {
        let _ = std::fs::remove_file(&legacy);
        warnings.push(format!(
            "discarded {} (an older checkpoint format that a kill could leave torn)",
            legacy.display()
        ));
    }
    let _ = std::fs::remove_file(work.join(format!("{STATE}.tmp")));
    for name in [STATE, PREVIOUS] {
        let path: PathBuf = work.join(name);
        if !path.exists() {
            continue;
        }
        match read(&path, device).and_then(|s| check(&s).map(|()| s)) {
            Ok(state) => {
                return Loaded {
                    state: Some(state),
                    warnings,
                };
            }
            Err(why) => {
                let _ = std::fs::remove_file(&path);
                warnings.push(format!(
                    "discarded the damaged checkpoint {}: {why}",
                    path.display()
                ));
            }
        }
    }
    Loaded {
        state: None,
        warnings,
    }
}

/// What a resumed run would start from, as `plan` says it: judged from the state
/// files' headers and sizes alone (a run verifies the digest of what it loads, and may
/// still find a state damaged and start from the previous one or afresh).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Saved {
    /// No state file.
    Nothing,
    /// The step of the newest usable state.
    At(usize),
    /// State files, none usable: why the newest is not.
    Unusable(String),
}

/// The state a resumed run of `steps` steps would start from: the current one, else
/// the previous one (a state past `steps` is discarded on resume, as the trainer's
/// check does).
pub fn saved_state(work: &Path, steps: usize) -> Saved {
    let mut first_why = None;
    for name in [STATE, PREVIOUS] {
        let path = work.join(name);
        if !path.exists() {
            continue;
        }
        match header_step(&path, steps) {
            Ok(step) => return Saved::At(step),
            Err(why) => {
                first_why.get_or_insert(why);
            }
        }
    }
    first_why.map_or(Saved::Nothing, Saved::Unusable)
}

/// The step a state file's header records, if it is a whole state of ours saved in
/// this folder (cut short or padded, it fails its digest; copied in from another
/// step's work folder, it is discarded on resume: no saved progress either way).
fn header_step(path: &Path, steps: usize) -> Result<usize, String> {
    use std::io::Read;
    let not_ours = || "not a training state of goosepipe's".to_string();
    let mut f = File::open(path).map_err(|e| e.to_string())?;
    let size = f.metadata().map_err(|e| e.to_string())?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| format!("cut short ({size} bytes)"))?;
    // A state's header lists its tensors and the loop's metrics: well under this
    // (T5-XL's LoRA: about half a megabyte). Anything larger is not a state of ours.
    let len = u64::from_le_bytes(len);
    if len > 64 << 20 {
        return Err(not_ours());
    }
    let mut header = Vec::new();
    f.take(len).read_to_end(&mut header).map_err(|e| e.to_string())?;
    if (header.len() as u64) < len {
        return Err(format!("cut short ({size} bytes)"));
    }
    let header: serde_json::Value = serde_json::from_slice(&header).map_err(|_| not_ours())?;
    // The data ends where the last tensor does: a file of another length was cut
    // short (a full disk) or written over.
    let data_end = header
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| *k != "__metadata__")
                .filter_map(|(_, t)| t.get("data_offsets")?.get(1)?.as_u64())
                .max()
                .unwrap_or(0)
        })
        .ok_or_else(not_ours)?;
    let expected = 8 + len + data_end;
    if size != expected {
        return Err(format!(
            "{size} bytes where its header describes {expected}: cut short or written over"
        ));
    }
    let metadata = header.get("__metadata__").ok_or_else(not_ours)?;
    if metadata.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return Err(not_ours());
    }
    let meta: serde_json::Value = metadata
        .get("meta")
        .and_then(|m| m.as_str())
        .and_then(|m| serde_json::from_str(m).ok())
        .ok_or_else(not_ours)?;
    match placement(&meta, path.parent().unwrap_or(Path::new("")), steps) {
        Placement::Fits(step) => Ok(step),
        Placement::OtherFolder { saved, .. } => Err(format!(
            "saved by the step whose work folder is {}",
            crate::store::key::short_hex(&saved)
        )),
        Placement::PastSteps(step) => Err(format!("at step {step}, past the {steps} asked")),
        Placement::NoStep => Err(not_ours()),
    }
}

/// The name a state records of its work folder (`"work"` in its bookkeeping), which
/// [`placement`] compares with the folder it is found in: written and read the same way.
pub fn work_folder_name(work: &Path) -> Option<String> {
    work.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// Whether a state's bookkeeping belongs to a run of `steps` steps in `work`: the one
/// judgement that `plan`'s preview ([`saved_state`]) and the trainer's resume share,
/// each wording it its own way.
#[derive(Debug, PartialEq)]
pub enum Placement {
    /// Saved here, at this step (at most `steps`).
    Fits(usize),
    /// Saved by another step (same shapes: another expert): resuming would publish
    /// weights trained partly on the other's data under this step's key. States from
    /// before the work folder was recorded have none and pass.
    OtherFolder { saved: String, here: String },
    /// Saved past the steps this run asks (the setting was lowered).
    PastSteps(usize),
    /// No step recorded: not a state of ours.
    NoStep,
}

pub fn placement(meta: &serde_json::Value, work: &Path, steps: usize) -> Placement {
    let here = work_folder_name(work).unwrap_or_default();
    if let Some(saved) = meta.get("work").and_then(|w| w.as_str())
        && saved != here
    {
        return Placement::OtherFolder {
            saved: saved.to_string(),
            here,
        };
    }
    match meta
        .get("step")
        .and_then(|s| s.as_u64())
        .and_then(|s| usize::try_from(s).ok())
    {
        None => Placement::NoStep,
        Some(step) if step > steps => Placement::PastSteps(step),
        Some(step) => Placement::Fits(step),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(x: f32, step: u64) -> TrainState {
        TrainState {
            tensors: HashMap::from([
                (
                    "var/a".to_string(),
                    Tensor::new(&[x, 2.0, 3.0], &Device::Cpu).unwrap(),
                ),
                (
                    "m/a".to_string(),
                    Tensor::new(&[[0.5f32], [0.25]], &Device::Cpu).unwrap(),
                ),
            ]),
            meta: serde_json::json!({"step": step, "metrics": [{"loss": 0.1 + 0.2}]}),
        }
    }

    fn ok(_: &TrainState) -> Result<(), String> {
        Ok(())
    }

    #[test]
    fn the_saved_step_is_read_from_the_newest_state_header() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(saved_state(dir.path(), 100), Saved::Nothing, "nothing saved");
        save(dir.path(), &state(1.5, 4)).unwrap();
        let older = std::fs::read(dir.path().join(STATE)).unwrap();
        save(dir.path(), &state(2.5, 8)).unwrap();
        assert_eq!(saved_state(dir.path(), 100), Saved::At(8));
        // Killed after the current state was moved aside: the previous one is it.
        std::fs::rename(dir.path().join(STATE), dir.path().join("moved")).unwrap();
        std::fs::write(dir.path().join(PREVIOUS), &older).unwrap();
        assert_eq!(saved_state(dir.path(), 100), Saved::At(4));
        // A current state that is damaged: the previous one, as a run would.
        std::fs::write(dir.path().join(STATE), b"").unwrap();
        assert_eq!(saved_state(dir.path(), 100), Saved::At(4));
        // One past the steps asked (the run asks fewer now): the previous one.
        save(dir.path(), &state(2.5, 8)).unwrap();
        std::fs::write(dir.path().join(PREVIOUS), &older).unwrap();
        assert_eq!(saved_state(dir.path(), 6), Saved::At(4));
        assert_eq!(
            saved_state(dir.path(), 3),
            Saved::Unusable("at step 8, past the 3 asked".into())
        );
        std::fs::remove_file(dir.path().join(STATE)).unwrap();
        // A file that is no whole state of ours is no saved progress, and says why.
        for (bytes, why) in [
            (&b""[..], "cut short (0 bytes)".to_string()),
            (
                &b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a header"[..],
                "not a training state of goosepipe's".into(),
            ),
            (
                &older[..older.len() - 1],
                format!(
                    "{} bytes where its header describes {}: cut short or written over",
                    older.len() - 1,
                    older.len()
                ),
            ),
        ] {
            std::fs::write(dir.path().join(PREVIOUS), bytes).unwrap();
            assert_eq!(saved_state(dir.path(), 100), Saved::Unusable(why));
        }
    }

    #[test]
    fn a_saved_state_loads_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &state(1.5, 4)).unwrap();
        save(dir.path(), &state(2.5, 8)).unwrap();
        let got = load(dir.path(), &Device::Cpu, ok);
        assert!(got.warnings.is_empty(), "{:?}", got.warnings);
        let s = got.state.unwrap();
        assert_eq!(s.meta["step"], 8);
        assert_eq!(s.tensors["var/a"].to_vec1::<f32>().unwrap(), [2.5, 2.0, 3.0]);
        assert_eq!(s.tensors["m/a"].dims(), [2, 1]);
        assert!(!dir.path().join(PREVIOUS).exists());
    }

    #[test]
    fn a_flipped_bit_falls_back_to_the_previous_state_and_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (cur, prev) = (dir.path().join(STATE), dir.path().join(PREVIOUS));
        save(dir.path(), &state(1.5, 4)).unwrap();
        let older = std::fs::read(&cur).unwrap();
        save(dir.path(), &state(2.5, 8)).unwrap();
        // The previous state is kept only while the new one is not in place; put it
        // back, and damage the current one: the previous one is used.
        std::fs::write(&prev, older).unwrap();
        let mut bytes = std::fs::read(&cur).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        std::fs::write(&cur, &bytes).unwrap();
        let got = load(dir.path(), &Device::Cpu, ok);
        assert_eq!(got.warnings.len(), 1, "{:?}", got.warnings);
        assert!(
            got.warnings[0].contains("do not match their recorded digest"),
            "{:?}",
            got.warnings
        );
        assert_eq!(got.state.unwrap().meta["step"], 4);
        assert!(!cur.exists(), "the damaged state is deleted");
        // With only the previous state (a kill between moving it aside and renaming
        // the new one in), that one is used without a warning.
        let got = load(dir.path(), &Device::Cpu, ok);
        assert!(got.warnings.is_empty());
        assert_eq!(got.state.unwrap().meta["step"], 4);
    }

    #[test]
    fn truncation_header_damage_and_a_failed_check_are_discarded() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &state(1.5, 4)).unwrap();
        let full = std::fs::read(dir.path().join(STATE)).unwrap();
        for (label, bytes) in [
            ("truncated", full[..full.len() - 3].to_vec()),
            ("empty", vec![]),
            ("header", {
                let mut b = full.clone();
                b[20] ^= 0x20;
                b
            }),
        ] {
            std::fs::write(dir.path().join(STATE), &bytes).unwrap();
            let got = load(dir.path(), &Device::Cpu, ok);
            assert!(got.state.is_none(), "{label}");
            assert_eq!(got.warnings.len(), 1, "{label}: {:?}", got.warnings);
        }
        save(dir.path(), &state(1.5, 4)).unwrap();
        let got = load(dir.path(), &Device::Cpu, |_| {
            Err("var/a has shape [3], expected [4]".into())
        });
        assert!(got.state.is_none());
        assert!(got.warnings[0].contains("expected [4]"), "{:?}", got.warnings);
        assert!(!dir.path().join(STATE).exists());
    }
}
