//! What the ML steps share: the compute device, the base model of a step, tokenizing
//! a dataset artifact into training pairs, and the bridge from the engine's progress
//! and Ctrl-C flag to the training loop.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::artifact_files::{EXAMPLES, TRAIN, VALIDATION};
use crate::data::{Example, read_jsonl};
use crate::exec::{InputArtifact, StepContext, StepError};
use crate::hub::{DownloadReport, HubOptions};
use crate::model::{T5Config, T5Model};
use crate::store::External;
use crate::train::{Monitor, TrainError};

/// Where a `model` artifact's weights live. Pipeline-built models keep their files in
/// the artifact; hub and local models point at their folder (the lockfile pins them).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelPointer {
    pub source: String,
    pub dir: PathBuf,
    #[serde(default)]
    pub commit: Option<String>,
}

pub use crate::artifact_files::MODEL_JSON;

pub fn fail(e: impl std::fmt::Display) -> StepError {
    StepError::msg(e.to_string())
}

pub fn train_err(e: TrainError) -> StepError {
    match e {
        TrainError::Cancelled { .. } => StepError::Cancelled,
        other => StepError::msg(other.to_string()),
    }
}

/// A hub download's progress on the step's bar, in MB, named by file.
pub fn download_report<'a>(ctx: &'a StepContext<'_>) -> impl Fn(&str, u64, u64) + 'a {
    move |file, bytes, total| {
        const MB: u64 = 1 << 20;
        if total > 0 {
            ctx.progress.set_total(total.div_ceil(MB), "MB");
        }
        ctx.progress.set_message(&format!("downloading {file}"));
        ctx.progress.set_position(bytes / MB);
    }
}

pub fn device(ctx: &StepContext) -> Result<Device, StepError> {
    crate::model::device::parse_device(ctx.device).map_err(fail)
}

/// The folder holding config.json, weights and tokenizer.json of a model artifact.
pub fn model_dir(model: &InputArtifact) -> Result<PathBuf, StepError> {
    Ok(read_model_pointer(&model.files, &model.id)?.1)
}

/// The pointer of the model artifact `id` whose files are in `files`, and the folder it
/// points at (which must still exist).
pub fn read_model_pointer(files: &Path, id: &str) -> Result<(ModelPointer, PathBuf), StepError> {
    let p: ModelPointer = serde_json::from_slice(&std::fs::read(files.join(MODEL_JSON))?)
        .map_err(|e| fail(format!("{id}: bad {MODEL_JSON}: {e}")))?;
    let dir = if p.dir.is_absolute() {
        p.dir.clone()
    } else {
        files.join(&p.dir)
    };
    if !dir.is_dir() {
        return Err(fail(format!(
            "{id}: the model folder {} is gone (was the HF cache cleared?); `goosepipe gc` then run again",
            dir.display()
        )));
    }
    Ok((p, dir))
}

/// A hub external resolved (HF cache first) at the commit the lockfile pins, else at
/// its revision, by `resolve`; the commit it resolved to is pinned for the lockfile.
/// Returns the snapshot folder and that commit.
pub fn resolve_pinned(
    ctx: &StepContext,
    ext: &External,
    resolve: impl FnOnce(
        &str,
        &str,
        &HubOptions,
        Option<&DownloadReport<'_>>,
    ) -> crate::hub::error::Result<PathBuf>,
) -> Result<(PathBuf, String), StepError> {
    let External::Hub { repo, revision, .. } = ext else {
        return Err(fail(format!("{} is not a hub repo", ext.identity())));
    };
    let name = ext.lock_name();
    // A pinned commit wins over a moving branch: reruns are reproducible.
    let rev = ctx.locked_pin(&name).unwrap_or(revision).to_string();
    let report = download_report(ctx);
    let dir = resolve(repo, &rev, &HubOptions::default(), Some(&report)).map_err(fail)?;
    let commit = dir
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or(rev);
    ctx.pin(&name, &commit)?;
    Ok((dir, commit))
}

pub struct Base {
    pub dir: PathBuf,
    pub model: T5Model,
    pub tokenizer: Tokenizer,
}

impl Base {
    pub fn config(&self) -> &T5Config {
        &self.model.config
    }
}

/// A training step's preview (`plan`): the step its saved state has reached, when an
/// interrupted run left one, or that what it left cannot be resumed from.
pub fn training_preview(ctx: &StepContext, steps: usize) -> Option<crate::plan::status::Preview> {
    use crate::train::checkpoint::{Saved, saved_state};
    match saved_state(&ctx.work, steps) {
        Saved::Nothing => None,
        Saved::At(at) => Some(crate::plan::status::Preview {
            text: format!("its saved state is at step {at} of {steps}"),
            refused: false,
            counts: [("saved_step", at as u64), ("steps", steps as u64)].into(),
        }),
        Saved::Unusable(why) => {
            Some(format!("but its saved state cannot be used ({why}): a run starts it afresh").into())
        }
    }
}

/// The tokenizer of a model artifact and its EOS id, without its weights.
pub fn load_tokenizer_and_eos(model: &InputArtifact) -> Result<(Tokenizer, u32), StepError> {
    let dir = model_dir(model)?;
    let tok = crate::model::checkpoint::load::load_tokenizer(&dir.join("tokenizer.json")).map_err(fail)?;
    let eos = T5Config::from_file(&dir.join("config.json"), None)
        .map_err(fail)?
        .eos_token_id;
    Ok((tok, eos))
}

/// Loads the step's `model` input (frozen, memory-mapped) and its tokenizer.
pub fn load_base(ctx: &StepContext, device: &Device) -> Result<Base, StepError> {
    let dir = model_dir(ctx.input("model")?)?;
    let model = T5Model::load(&dir, device, DType::F32).map_err(fail)?;
    let tokenizer =
        crate::model::checkpoint::load::load_tokenizer(&dir.join("tokenizer.json")).map_err(fail)?;
    Ok(Base {
        dir,
        model,
        tokenizer,
    })
}

/// A dataset artifact's training and validation examples (training: the split minus
/// the held-back slice when one was held back).
pub fn examples(input: &InputArtifact) -> Result<(Vec<Example>, Vec<Example>), StepError> {
    let r = |name: &str| read_jsonl(&input.files.join(name)).map_err(fail);
    let train = if input.files.join(TRAIN).is_file() {
        TRAIN
    } else {
        EXAMPLES
    };
    let (train, valid) = (r(train)?, r(VALIDATION)?);
    // Said here, naming the dataset: the trainer knows no dataset.
    if train.is_empty() {
        return Err(fail(format!(
            "{} has no training examples ({} validation examples); give it more rows",
            input.id,
            valid.len()
        )));
    }
    Ok((train, valid))
}

/// Token ids of `text` with the tokenizer's post-processing (T5: EOS appended).
pub fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>, StepError> {
    Ok(tok
        .encode(text, true)
        .map_err(|e| fail(format!("tokenizer: {e}")))?
        .get_ids()
        .to_vec())
}

/// An example's answer choices as token ids without a trailing EOS (choice scoring
/// appends it to every choice itself).
pub fn encode_choices(tok: &Tokenizer, choices: &[String], eos: u32) -> Result<Vec<Vec<u32>>, StepError> {
    choices
        .iter()
        .map(|c| {
            let mut ids = encode(tok, c)?;
            if ids.last() == Some(&eos) {
                ids.pop();
            }
            Ok(ids)
        })
        .collect()
}

/// The engine's progress bar and Ctrl-C flag, as the training loop sees them.
pub struct CtxMonitor<'a>(pub &'a StepContext<'a>);

impl Monitor for CtxMonitor<'_> {
    fn start(&self, total: usize) {
        self.0.progress.set_total(total as u64, "steps");
    }
    fn step(&self, step: usize, message: &str) {
        self.0.progress.set_message(message);
        self.0.progress.set_position(step as u64);
    }
    fn log(&self, line: &str) {
        self.0.progress.log(line);
    }
    fn cancelled(&self) -> bool {
        self.0.cancel.is_cancelled()
    }
}

/// metrics.jsonl of a training step.
pub fn write_metrics(out: &Path, metrics: &[serde_json::Value]) -> Result<(), StepError> {
    let mut s = String::new();
    for m in metrics {
        s.push_str(&m.to_string());
        s.push('\n');
    }
    std::fs::write(out.join(crate::artifact_files::METRICS_JSONL), s)?;
    Ok(())
}
