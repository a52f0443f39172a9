//! `goosepipe export WHAT --format peft DIR`: artifacts out of the store in the formats
//! other tools read. An expert (or the multitask adapter) becomes a PEFT adapter folder
//! that `PeftModel.from_pretrained(base, DIR)` loads, with its gate vectors and
//! `phatgoose.json` beside it when the store holds its gate; a gate exports its expert
//! with it; a base model becomes a Hugging Face checkpoint folder. An expert whose base
//! the pipeline built (no hub id or folder anyone else has) takes its base along, in
//! `DIR/base-model/`.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use crate::artifact_files::{EXPERT_FILE, GATES_FILE};
use crate::model::checkpoint::load::{SAFETENSORS_INDEX, locate};
use crate::model::checkpoint::peft;
use crate::model::{GateVectors, LoraExpert, T5Config};
use crate::steps::common::read_model_pointer;
use crate::store::Store;
use crate::store::artifact::ArtifactMeta;

/// Where the base of an exported adapter is written when the pipeline built it.
pub const BASE_FOLDER: &str = "base-model";

/// What an export wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Exported {
    /// The step the files came from (`expert:NAME`, ...).
    pub step: String,
    pub files: Vec<PathBuf>,
    /// Why something one might expect is not there (no gate in the store, several).
    pub notes: Vec<String>,
}

/// A base model's folder as its model step recorded it, and the name PEFT should
/// record for it (the hub id, or the folder).
struct BaseModel {
    dir: PathBuf,
    hub: Option<String>,
    built: bool,
}

fn base_of(store: &Store, meta: &ArtifactMeta) -> Result<BaseModel, String> {
    let input = meta
        .spec
        .inputs
        .iter()
        .find(|i| i.role == "model")
        .ok_or_else(|| format!("{} has no model input", meta.spec.id))?;
    let model = store.meta(&input.key).ok_or_else(|| {
        format!(
            "the base model of {} ({}, {}) is not in the store; run the pipeline first",
            meta.spec.id,
            input.id,
            input.key.short()
        )
    })?;
    verified(store, &model)?;
    pointer_of(store, &model)
}

/// Every artifact an export reads is re-hashed first: a flipped byte of the same size
/// would otherwise leave the store as a PEFT folder that loads and is wrong.
fn verified(store: &Store, meta: &ArtifactMeta) -> Result<(), String> {
    crate::plan::integrity::verify(store, &meta.key)
        .map(drop)
        .map_err(|e| {
            format!(
                "{} is corrupt, nothing was exported: {e}; {}",
                meta.spec.id,
                crate::store::corrupt_help(&store.root)
            )
        })
}

fn pointer_of(store: &Store, model: &ArtifactMeta) -> Result<BaseModel, String> {
    let (p, dir) =
        read_model_pointer(&store.files_dir(&model.key), &model.spec.id).map_err(|e| e.to_string())?;
    Ok(BaseModel {
        dir,
        hub: p.source.strip_prefix("hub:").map(str::to_owned),
        built: p.source != "path" && !p.source.starts_with("hub:"),
    })
}

fn config_of(dir: &Path) -> Result<T5Config, String> {
    T5Config::from_file(&dir.join("config.json"), None).map_err(|e| e.to_string())
}

/// Copies a model folder's config, weights and tokenizer into `out` as an HF checkpoint.
fn write_base(dir: &Path, out: &Path) -> Result<Vec<PathBuf>, String> {
    let files = locate(dir).map_err(|e| e.to_string())?;
    // A link where the base model's folder goes (an earlier export's, made by hand)
    // would have the files written into whatever it points at (a store's artifact):
    // the link is replaced by a folder of the export's own.
    let is_link = std::fs::symlink_metadata(out).is_ok_and(|m| m.file_type().is_symlink());
    if is_link {
        crate::file_kind::unlink_symlink(out).map_err(|e| format!("{}: {e}", out.display()))?;
    } else if out.exists() && !out.is_dir() {
        return Err(format!(
            "{} exists and is not a folder: the base model is written there; move it away or export into another folder",
            out.display()
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut sources = vec![files.config.clone()];
    match &files.weights {
        crate::model::checkpoint::load::WeightFiles::Safetensors(paths) => {
            sources.extend(paths.iter().cloned());
            // Shards come with their index (locate read it already).
            if dir.join(SAFETENSORS_INDEX).is_file() {
                sources.push(dir.join(SAFETENSORS_INDEX));
            }
        }
        crate::model::checkpoint::load::WeightFiles::Pickle(p) => sources.push(p.clone()),
    }
    sources.extend(files.tokenizer.iter().cloned());
    // What transformers reads beside tokenizer.json, where the model has it.
    for name in [TOKENIZER_CONFIG, "special_tokens_map.json", "spiece.model"] {
        if dir.join(name).is_file() {
            sources.push(dir.join(name));
        }
    }
    // Copying a file onto itself empties it: exporting a model into its own folder.
    if let (Ok(a), Ok(b)) = (std::fs::canonicalize(dir), std::fs::canonicalize(out))
        && a == b
    {
        return Err(format!(
            "{} is the model's own folder: exporting it there would overwrite the files it reads; export into another folder",
            out.display()
        ));
    }
    let mut written = vec![];
    for src in sources {
        let to = out.join(src.file_name().expect("a file"));
        // A link there (to this very file, or a store's) is replaced, not written through.
        crate::file_kind::unlink_symlink(&to).map_err(|e| format!("{}: {e}", to.display()))?;
        std::fs::copy(&src, &to)
            .map_err(|e| format!("copying {} to {}: {e}", src.display(), to.display()))?;
        written.push(to);
    }
    if let Some(tokenizer) = &files.tokenizer
        && !dir.join(TOKENIZER_CONFIG).is_file()
    {
        written.push(write_tokenizer_config(tokenizer, out)?);
    }
    Ok(written)
}

const TOKENIZER_CONFIG: &str = "tokenizer_config.json";

/// A tokenizer_config.json for a model that has only tokenizer.json (one goosepipe
/// trained: word-level). Without it transformers takes `model_type: t5` to mean
/// T5's sentencepiece tokenizer and fails to read the file; with it,
/// `AutoTokenizer.from_pretrained` loads tokenizer.json as it is, with the special
/// tokens generation and batching need.
fn write_tokenizer_config(tokenizer: &Path, out: &Path) -> Result<PathBuf, String> {
    let tok =
        tokenizers::Tokenizer::from_file(tokenizer).map_err(|e| format!("{}: {e}", tokenizer.display()))?;
    let mut config = serde_json::json!({"tokenizer_class": "PreTrainedTokenizerFast"});
    for (role, token) in [
        ("pad_token", "<pad>"),
        ("eos_token", "</s>"),
        ("unk_token", "<unk>"),
    ] {
        if tok.token_to_id(token).is_some() {
            config[role] = serde_json::json!(token);
        }
    }
    let to = out.join(TOKENIZER_CONFIG);
    crate::file_kind::unlink_symlink(&to).map_err(|e| format!("{}: {e}", to.display()))?;
    std::fs::write(&to, serde_json::to_vec_pretty(&config).expect("json"))
        .map_err(|e| format!("{}: {e}", to.display()))?;
    Ok(to)
}

/// The gate artifacts in the store trained for the expert artifact `key`.
fn gates_of(store: &Store, expert: &ArtifactMeta) -> Vec<ArtifactMeta> {
    store
        .keys()
        .into_iter()
        .filter_map(|k| store.meta(&k))
        .filter(|m| {
            m.spec.kind == "gate"
                && m.spec
                    .inputs
                    .iter()
                    .any(|i| i.role == "expert" && i.key == expert.key)
        })
        .collect()
}

/// Of several gates of one expert: the one the last run of a manifest used (as
/// `show gate:NAME` finds it), else the newest.
fn last_used(store: &Store, gates: Vec<ArtifactMeta>) -> ArtifactMeta {
    let used = gates.iter().position(|g| store.named(&g.spec.id) == Some(g.key));
    let newest = || {
        (0..gates.len())
            .max_by(|&a, &b| gates[a].finished_unix.total_cmp(&gates[b].finished_unix))
            .expect("several gates")
    };
    let at = used.unwrap_or_else(newest);
    gates.into_iter().nth(at).expect("an index of gates")
}

/// Exports `what` (a step id, name, key or key prefix in the store) in PEFT's format into `out`.
pub fn export_peft(store: &Store, what: &str, out: &Path) -> Result<Exported, String> {
    let meta = store.find(what)?;
    verified(store, &meta)?;
    let mut notes = vec![];
    let (expert_meta, gate_meta) = match meta.spec.kind.as_str() {
        "model" => {
            let base = pointer_of(store, &meta)?;
            return Ok(Exported {
                step: meta.spec.id.clone(),
                files: write_base(&base.dir, out)?,
                notes,
            });
        }
        "expert" | "multitask" => {
            let gates = if meta.spec.kind == "expert" {
                gates_of(store, &meta)
            } else {
                vec![]
            };
            let gate = match gates.len() {
                0 => {
                    if meta.spec.kind == "expert" {
                        notes.push(format!(
                            "no gate of {} in the store: the adapter goes without gates",
                            meta.spec.id
                        ));
                    }
                    None
                }
                1 => gates.into_iter().next(),
                n => {
                    let chosen = last_used(store, gates);
                    notes.push(format!(
                        "{n} gates of {} in the store (different gate settings): exported {} {}, {}; export a gate by its key to choose another",
                        meta.spec.id,
                        chosen.spec.id,
                        chosen.key.short(),
                        if store.named(&chosen.spec.id) == Some(chosen.key) {
                            "the one the last run used"
                        } else {
                            "the newest"
                        }
                    ));
                    Some(chosen)
                }
            };
            if let Some(g) = &gate {
                verified(store, g)?;
            }
            (meta, gate)
        }
        "gate" => {
            let input = meta
                .spec
                .inputs
                .iter()
                .find(|i| i.role == "expert")
                .ok_or_else(|| format!("{} has no expert input", meta.spec.id))?;
            let expert = store.meta(&input.key).ok_or_else(|| {
                format!(
                    "the expert of {} ({}) is not in the store; `goosepipe run MANIFEST --until {}` rebuilds it",
                    meta.spec.id, input.id, input.id
                )
            })?;
            verified(store, &expert)?;
            (expert, Some(meta))
        }
        other => {
            return Err(format!(
                "{} is a `{other}` artifact; export takes an expert, multitask, gate or model step (expert:NAME, gate:NAME, model:NAME)",
                meta.spec.id
            ));
        }
    };
    let base = base_of(store, &expert_meta)?;
    let cfg = config_of(&base.dir)?;
    let dev = Device::Cpu;
    let mut expert = LoraExpert::load(
        &store.files_dir(&expert_meta.key).join(EXPERT_FILE),
        &cfg,
        &dev,
        DType::F32,
    )
    .map_err(|e| e.to_string())?;
    expert.name = expert_meta.spec.name.clone();
    let gates = gate_meta
        .as_ref()
        .map(|g| GateVectors::load(&store.files_dir(&g.key).join(GATES_FILE), &cfg, &dev, DType::F32))
        .transpose()
        .map_err(|e| e.to_string())?;
    let mut files = vec![];
    let base_name = if base.built {
        let folder = out.join(BASE_FOLDER);
        files.extend(write_base(&base.dir, &folder)?);
        notes.push(format!(
            "the base model was built by the pipeline: written to {} (load it with from_pretrained)",
            folder.display()
        ));
        Some(
            std::path::absolute(&folder)
                .unwrap_or(folder)
                .display()
                .to_string(),
        )
    } else {
        Some(base.hub.unwrap_or_else(|| base.dir.display().to_string()))
    };
    let mut written =
        peft::export(&expert, gates.as_ref(), &cfg, base_name.as_deref(), out).map_err(|e| e.to_string())?;
    written.append(&mut files);
    // Named with its gate: `export gate:sort` said "exported expert:sort" alone.
    let step = match &gate_meta {
        Some(g) => format!("{} with its gate {}", expert_meta.spec.id, g.spec.id),
        None => expert_meta.spec.id.clone(),
    };
    Ok(Exported {
        step,
        files: written,
        notes,
    })
}

/// Exports a goosepipe expert file (with `NAME.gates.safetensors` beside it, if there)
/// for the base model folder `model`.
pub fn export_peft_file(file: &Path, model: &Path, out: &Path) -> Result<Exported, String> {
    let cfg = config_of(model)?;
    let dev = Device::Cpu;
    let mut expert = LoraExpert::load(file, &cfg, &dev, DType::F32).map_err(|e| {
        match crate::model::checkpoint::expert_file::not_an_expert(file, &cfg, &e) {
            Some(why) => format!(
                "{why}; with --model, export takes a goosepipe expert file (expert.safetensors in a store folder)"
            ),
            None => e.to_string(),
        }
    })?;
    // A file taken from a store is named by the step that built it.
    if let Some(name) = crate::store::step_name_of_file(file) {
        expert.name = name;
    }
    let gates = GateVectors::load_beside(file, &cfg, &dev, DType::F32).map_err(|e| e.to_string())?;
    super::score::check_store_base(model, std::slice::from_ref(&expert)).map_err(|e| e.to_string())?;
    // The base as a clean absolute path (`a/../b` left as written confuses readers).
    let base = std::fs::canonicalize(model)
        .or_else(|_| std::path::absolute(model))
        .unwrap_or(model.to_path_buf())
        .display()
        .to_string();
    let files = peft::export(&expert, gates.as_ref(), &cfg, Some(&base), out).map_err(|e| e.to_string())?;
    let notes = if gates.is_none() {
        let beside = GateVectors::path_beside(file);
        let beside = beside
            .file_name()
            .map_or_else(Default::default, |n| n.to_string_lossy());
        vec![format!(
            "no gate: none beside the file ({beside}); the adapter goes without one (export the step, expert:NAME, to take its gate from the store)"
        )]
    } else {
        vec![]
    };
    Ok(Exported {
        step: file.display().to_string(),
        files,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model step of `path=` points at the user's own folder: exporting it there
    /// copied each file onto itself, which empties it.
    #[test]
    fn a_model_is_not_exported_into_its_own_folder() {
        let t = tempfile::tempdir().unwrap();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/t5/v1_1");
        let model = t.path().join("model");
        std::fs::create_dir(&model).unwrap();
        for e in std::fs::read_dir(&fixture).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), model.join(e.file_name())).unwrap();
        }
        let before = std::fs::read(model.join("config.json")).unwrap();
        let err = write_base(&model, &t.path().join("model/../model")).unwrap_err();
        assert!(err.contains("is the model's own folder"), "{err}");
        assert_eq!(std::fs::read(model.join("config.json")).unwrap(), before);
        assert!(write_base(&model, &t.path().join("out")).is_ok());
    }
}
