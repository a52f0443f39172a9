//! Hugging Face PEFT LoRA adapters, the format in which LoRAs are shared: a folder
//! with `adapter_config.json` and `adapter_model.safetensors` (or, in older repos,
//! `adapter_model.bin`), tensors named like
//! `base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight`.
//!
//! Import reads such a folder into a [`LoraExpert`]; export writes one back so that
//! `PeftModel.from_pretrained(base, DIR)` loads it on the same base checkpoint.
//!
//! Scaling: PEFT computes `scaling * u A^T B^T` with `scaling = lora_alpha / r`
//! (`lora_alpha / sqrt(r)` with `use_rslora`); goosepipe's LoRA divides by `r` (the
//! paper's code). An import folds `scaling * r` into B, so the expert computes exactly
//! what PEFT does; an export writes `lora_alpha = 1` (scaling `1 / r`) and the tensors
//! unchanged. Both are exact: no retraining, no approximation.
//!
//! An adapter may cover a subset of the base's adapted linears (only attention, say):
//! a module without a LoRA contributes nothing for that expert, and pools route each
//! module among the experts that adapt it (see `adapter::pool`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use serde_json::Value;

use super::expert_file::{GateVectors, LoraExpert, META_NAME};
use super::st_io::{read_metadata, save_with_metadata};
use super::tensor_store::TensorStore;
use crate::model::adapter::LoraWeights;
use crate::model::error::{ModelError, Result};
use crate::model::t5::config::T5Config;
use crate::model::t5::names::{LinearSite, adapted_linears};

pub use crate::hub::weight_files::{
    ADAPTER_CONFIG as CONFIG_FILE, ADAPTER_PICKLE as WEIGHTS_PICKLE,
    ADAPTER_SAFETENSORS as WEIGHTS_SAFETENSORS,
};
/// Gate vectors exported beside an adapter (`<module>.gate`, `[d_in]`).
pub const GATES_FILE: &str = "phatgoose_gates.safetensors";
/// How the router uses the exported gates.
pub const ROUTER_FILE: &str = "phatgoose.json";

/// The prefix PEFT gives every tensor of a `PeftModel` (the base model under `base_model.model`).
const PREFIX: &str = "base_model.model.";

/// Whether `dir` looks like a PEFT adapter folder.
pub fn is_peft_dir(dir: &Path) -> bool {
    dir.is_dir() && dir.join(CONFIG_FILE).is_file()
}

/// What an import read: recorded in the importing step's summary, so a user can see
/// which configuration the expert came from.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PeftSource {
    pub r: usize,
    pub lora_alpha: f64,
    pub use_rslora: bool,
    /// `lora_alpha / r`, or `lora_alpha / sqrt(r)` with rslora.
    pub scaling: f64,
    pub target_modules: Value,
    pub base_model_name_or_path: Option<String>,
    pub weights_file: String,
    /// Adapted linears with a LoRA in the file, of the base's total.
    pub modules: usize,
    pub base_modules: usize,
}

/// An imported adapter: the expert (scaling folded into B) and what it came from.
#[derive(Debug, Clone)]
pub struct PeftImport {
    pub expert: LoraExpert,
    pub source: PeftSource,
}

fn bad(dir: &Path, file: &str, message: impl Into<String>) -> ModelError {
    ModelError::BadFile {
        file: dir.join(file).display().to_string(),
        message: message.into(),
    }
}

/// The adapter's configuration, checked field by field: everything goosepipe cannot
/// reproduce exactly is refused with the field's name.
struct Config {
    r: usize,
    lora_alpha: f64,
    use_rslora: bool,
    target_modules: Value,
    base: Option<String>,
}

fn read_config(dir: &Path) -> Result<Config> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read(&path).map_err(|e| ModelError::io(&path, e))?;
    // An editor's byte-order mark is not part of the JSON (serde_json stops at it).
    let text = text.strip_prefix(b"\xef\xbb\xbf").unwrap_or(&text);
    let v: Value =
        serde_json::from_slice(text).map_err(|e| bad(dir, CONFIG_FILE, format!("not valid JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| bad(dir, CONFIG_FILE, "not a JSON object"))?;
    let refuse = |field: &str, why: String| bad(dir, CONFIG_FILE, format!("`{field}`: {why}"));
    match obj.get("peft_type").and_then(Value::as_str) {
        Some("LORA") => {}
        Some(other) => {
            return Err(refuse(
                "peft_type",
                format!(
                    "`{other}` adapters are not supported; goosepipe imports LoRA adapters (peft_type \"LORA\")"
                ),
            ));
        }
        None => return Err(refuse("peft_type", "missing; expected \"LORA\"".into())),
    }
    // A flag is true or false: PEFT reads the string "true" (or "false", a non-empty
    // string) as true, which would change the scaling here unsaid.
    let truthy = |f: &str| match obj.get(f) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(refuse(f, format!("{other} is not true or false"))),
    };
    let non_empty = |f: &str| match obj.get(f) {
        None | Some(Value::Null) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    };
    if truthy("use_dora")? {
        return Err(refuse(
            "use_dora",
            "DoRA adapters (a learned magnitude per output) are not supported; only plain LoRA".into(),
        ));
    }
    if let Some(b) = obj.get("bias").and_then(Value::as_str)
        && b != "none"
    {
        return Err(refuse(
            "bias",
            format!("\"{b}\" trains biases of the base model; only \"none\" is supported"),
        ));
    }
    if truthy("lora_bias")? {
        return Err(refuse("lora_bias", "a bias on lora_B is not supported".into()));
    }
    for (field, why) in [
        (
            "modules_to_save",
            "fully trained copies of base modules are not a LoRA; goosepipe keeps the base frozen",
        ),
        (
            "layers_to_transform",
            "adapters on a subset of layers by index are not supported",
        ),
        ("rank_pattern", "per-module ranks are not supported"),
        (
            "exclude_modules",
            "modules excluded from `target_modules` are not supported: list the targets alone",
        ),
        ("alpha_pattern", "per-module alphas are not supported"),
        ("layer_replication", "replicated layers change the base model"),
        (
            "target_parameters",
            "LoRA on raw parameters (not linear modules) is not supported",
        ),
        (
            "trainable_token_indices",
            "trained embedding rows change the base model",
        ),
    ] {
        if non_empty(field) {
            return Err(refuse(field, why.into()));
        }
    }
    let r = obj
        .get("r")
        .and_then(Value::as_u64)
        .filter(|&r| r > 0)
        .ok_or_else(|| refuse("r", "missing or not a positive integer".into()))? as usize;
    let lora_alpha = match obj.get("lora_alpha") {
        // PEFT's default.
        None | Some(Value::Null) => 8.0,
        Some(a) => a
            .as_f64()
            .filter(|a| a.is_finite())
            .ok_or_else(|| refuse("lora_alpha", format!("{a} is not a number")))?,
    };
    // Scaling by 0 imports an expert that changes no output: every method would
    // score it as the base, unsaid.
    if lora_alpha == 0.0 {
        return Err(refuse(
            "lora_alpha",
            "0 scales every update to nothing: the adapter would change no output".into(),
        ));
    }
    // Anything else selected every module (a number, a boolean, an object).
    match obj.get("target_modules") {
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(Value::Array(list)) if list.iter().all(Value::is_string) => {}
        Some(other) => {
            return Err(refuse(
                "target_modules",
                format!("{other} is neither a list of module names nor a regex string"),
            ));
        }
    }
    Ok(Config {
        r,
        lora_alpha,
        use_rslora: truthy("use_rslora")?,
        target_modules: obj.get("target_modules").cloned().unwrap_or(Value::Null),
        base: obj
            .get("base_model_name_or_path")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

/// PEFT's `target_modules` for a T5 when a config does not set it
/// (`TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING["t5"]`).
const T5_DEFAULT_TARGETS: [&str; 2] = ["q", "v"];

/// `target_modules` as an error says it.
fn targets_said(target_modules: &Value) -> String {
    match target_modules {
        Value::Null => format!(
            "not set, so PEFT's default for T5: {}",
            serde_json::json!(T5_DEFAULT_TARGETS)
        ),
        v => v.to_string(),
    }
}

/// Whether PEFT's `target_modules` selects `module` (a list: the name or its last
/// segments; a string: a regex that must match the whole name; `all-linear`: every
/// linear but the output layer).
fn targets(target_modules: &Value, module: &str, regex: &Option<regex::Regex>) -> bool {
    match target_modules {
        // Not set: PEFT takes its default for the model type, for T5 (and mT5) q and v.
        Value::Null => T5_DEFAULT_TARGETS
            .iter()
            .any(|t| module.ends_with(&format!(".{t}"))),
        Value::Array(list) => list
            .iter()
            .filter_map(Value::as_str)
            .any(|t| module == t || module.ends_with(&format!(".{t}"))),
        Value::String(s) if s == "all-linear" => true,
        Value::String(_) => regex.as_ref().is_some_and(|re| re.is_match(module)),
        _ => true,
    }
}

/// `module.lora_A[.adapter].weight` -> (module, "lora_A" | "lora_B", adapter name).
fn split_peft_name(name: &str) -> Option<(&str, &str, Option<&str>)> {
    let rest = name.strip_prefix(PREFIX).unwrap_or(name);
    let rest = rest.strip_suffix(".weight")?;
    for part in ["lora_A", "lora_B"] {
        let marker = format!(".{part}");
        if let Some(at) = rest
            .find(&format!("{marker}."))
            .or_else(|| rest.ends_with(&marker).then(|| rest.len() - marker.len()))
        {
            let module = &rest[..at];
            let after = &rest[at + marker.len()..];
            let adapter = after.strip_prefix('.').filter(|a| !a.is_empty());
            if adapter.is_some_and(|a| a.contains('.')) {
                return None;
            }
            return Some((module, part, adapter));
        }
    }
    None
}

fn weights_store(dir: &Path) -> Result<(TensorStore, &'static str)> {
    if dir.join(WEIGHTS_SAFETENSORS).is_file() {
        Ok((
            TensorStore::mmap(&[dir.join(WEIGHTS_SAFETENSORS)])?,
            WEIGHTS_SAFETENSORS,
        ))
    } else if dir.join(WEIGHTS_PICKLE).is_file() {
        Ok((TensorStore::pickle(&dir.join(WEIGHTS_PICKLE))?, WEIGHTS_PICKLE))
    } else if let Some((file, why)) = [WEIGHTS_SAFETENSORS, WEIGHTS_PICKLE]
        .into_iter()
        .find_map(|f| Some((f, crate::file_kind::not_a_file(&dir.join(f))?)))
    {
        Err(bad(
            dir,
            file,
            format!("it {why}: the adapter's weights are read from it"),
        ))
    } else {
        Err(bad(
            dir,
            WEIGHTS_SAFETENSORS,
            format!(
                "no adapter weights: expected {WEIGHTS_SAFETENSORS} or {WEIGHTS_PICKLE} beside {CONFIG_FILE}"
            ),
        ))
    }
}

/// Reads the PEFT adapter in `dir` for the base `cfg`, as expert `name`. Every tensor
/// must be a LoRA A or B of an adapted linear of this base, with the configured rank
/// and the base's shapes; anything else is refused with its name.
pub fn import(dir: &Path, name: &str, cfg: &T5Config, device: &Device) -> Result<PeftImport> {
    let conf = read_config(dir)?;
    let (store, file) = weights_store(dir)?;
    let r = Reading {
        dir,
        file,
        regex: target_regex(dir, &conf)?,
        sites: adapted_linears(cfg)
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect(),
        cfg,
        conf: &conf,
    };
    let pairs = r.pairs(&store, device)?;
    let scaling = if conf.use_rslora {
        conf.lora_alpha / (conf.r as f64).sqrt()
    } else {
        conf.lora_alpha / conf.r as f64
    };
    // goosepipe divides by r; PEFT multiplies by `scaling`.
    let fold = scaling * conf.r as f64;
    let mut modules = BTreeMap::new();
    for (module, (a, b)) in pairs {
        let weights = r.module(&module, a, b, fold)?;
        modules.insert(module, weights);
    }
    let source = PeftSource {
        r: conf.r,
        lora_alpha: conf.lora_alpha,
        use_rslora: conf.use_rslora,
        scaling,
        target_modules: conf.target_modules.clone(),
        base_model_name_or_path: conf.base.clone(),
        weights_file: file.to_owned(),
        modules: modules.len(),
        base_modules: r.sites.len(),
    };
    Ok(PeftImport {
        expert: LoraExpert {
            name: name.to_owned(),
            rank: conf.r,
            base_model: None,
            modules,
        },
        source,
    })
}

/// A string `target_modules` other than "all-linear" is a regex PEFT matches against
/// the whole module name.
fn target_regex(dir: &Path, conf: &Config) -> Result<Option<regex::Regex>> {
    match &conf.target_modules {
        Value::String(s) if s != "all-linear" => {
            regex::Regex::new(&format!("^(?:{s})$")).map(Some).map_err(|e| {
                bad(
                    dir,
                    CONFIG_FILE,
                    format!("`target_modules`: not a regex goosepipe can read: {e}"),
                )
            })
        }
        _ => Ok(None),
    }
}

/// Why a tensor name is not a LoRA A or B weight goosepipe can import.
fn refused_tensor(tensor: &str) -> String {
    let why = if tensor.contains("lora_magnitude_vector") {
        "a DoRA magnitude vector (DoRA is not supported)"
    } else if tensor.contains("lora_embedding") {
        "a LoRA on an embedding (only linear layers are supported)"
    } else if tensor.ends_with(".bias") {
        "a bias (only bias \"none\" is supported)"
    } else {
        "not a LoRA A or B weight (`<module>.lora_A.weight`)"
    };
    format!("tensor `{tensor}` is {why}")
}

/// One PEFT folder being read against one base: where errors point and what fits.
struct Reading<'a> {
    dir: &'a Path,
    file: &'static str,
    regex: Option<regex::Regex>,
    sites: HashMap<String, LinearSite>,
    cfg: &'a T5Config,
    conf: &'a Config,
}

type Pairs = BTreeMap<String, (Option<Tensor>, Option<Tensor>)>;

impl Reading<'_> {
    /// Every tensor of the file as the A or B of an adapted, targeted linear.
    fn pairs(&self, store: &TensorStore, device: &Device) -> Result<Pairs> {
        let (dir, file) = (self.dir, self.file);
        let mut pairs = Pairs::new();
        let mut adapter_names = BTreeSet::new();
        // Which tensor was read as each module's A and B: a second one for the same
        // (with and without the `base_model.model.` prefix, or the adapter name) would
        // silently replace the first, where PEFT loads one by its own rules.
        let mut read_as: HashMap<(String, &str), String> = HashMap::new();
        let mut twice = None;
        let mut names = store.names();
        names.sort();
        for tensor in &names {
            let Some((module, part, adapter)) = split_peft_name(tensor) else {
                return Err(bad(dir, file, refused_tensor(tensor)));
            };
            if !self.sites.contains_key(module) {
                return Err(bad(
                    dir,
                    file,
                    format!(
                        "tensor `{tensor}` adapts `{module}`, which is not an adapted linear of this base model (attention q/k/v/o and feed-forward wi/wi_0/wi_1/wo of a T5 with {} encoder and {} decoder blocks)",
                        self.cfg.num_layers, self.cfg.num_decoder_layers
                    ),
                ));
            }
            if !targets(&self.conf.target_modules, module, &self.regex) {
                return Err(bad(
                    dir,
                    file,
                    format!(
                        "tensor `{tensor}` adapts `{module}`, which `target_modules` ({}) does not select",
                        targets_said(&self.conf.target_modules)
                    ),
                ));
            }
            if let Some(a) = adapter {
                adapter_names.insert(a.to_owned());
            }
            if let Some(first) = read_as.insert((module.to_owned(), part), tensor.clone()) {
                twice.get_or_insert(format!(
                    "tensors `{first}` and `{tensor}` are both the {part} of `{module}`: keep one (which one PEFT would load depends on its version)"
                ));
            }
            let t = store
                .get_finite(tensor, device)?
                .ok_or_else(|| ModelError::MissingTensor {
                    file: dir.join(file).display().to_string(),
                    name: tensor.clone(),
                })?
                .to_dtype(DType::F32)?;
            let e = pairs.entry(module.to_owned()).or_default();
            if part == "lora_A" {
                e.0 = Some(t)
            } else {
                e.1 = Some(t)
            }
        }
        if adapter_names.len() > 1 {
            return Err(bad(
                dir,
                file,
                format!("the file holds several adapters ({adapter_names:?}); save one adapter per folder"),
            ));
        }
        if let Some(why) = twice {
            return Err(bad(dir, file, why));
        }
        if pairs.is_empty() {
            return Err(bad(dir, file, "no LoRA weights in the file"));
        }
        Ok(pairs)
    }

    /// One module's A and B, both present, of the configured rank and the base's
    /// shapes, with PEFT's scaling folded into B.
    fn module(&self, module: &str, a: Option<Tensor>, b: Option<Tensor>, fold: f64) -> Result<LoraWeights> {
        let (dir, file, r) = (self.dir, self.file, self.conf.r);
        let missing = |part: &str| ModelError::MissingTensor {
            file: dir.join(file).display().to_string(),
            name: format!("{PREFIX}{module}.{part}.weight"),
        };
        let a = a.ok_or_else(|| missing("lora_A"))?;
        let b = b.ok_or_else(|| missing("lora_B"))?;
        let site = &self.sites[module];
        let shape_err = |part: &str, expected: Vec<usize>, actual: &[usize]| {
            let rank_only = actual.len() == 2
                && (part == "lora_A" && actual[1] == site.d_in
                    || part == "lora_B" && actual[0] == site.d_out);
            bad(
                dir,
                file,
                if rank_only {
                    format!(
                        "`{module}.{part}` has rank {} but `r` in {CONFIG_FILE} is {r}",
                        if part == "lora_A" { actual[0] } else { actual[1] },
                    )
                } else {
                    format!(
                        "`{module}.{part}` has shape {actual:?}, expected {expected:?}: the adapter does not fit this base model (made for `{}`?)",
                        self.conf.base.as_deref().unwrap_or("another model")
                    )
                },
            )
        };
        if a.dims() != [r, site.d_in] {
            return Err(shape_err("lora_A", vec![r, site.d_in], a.dims()));
        }
        if b.dims() != [site.d_out, r] {
            return Err(shape_err("lora_B", vec![site.d_out, r], b.dims()));
        }
        let held = b.abs()?.max_all()?.to_scalar::<f32>()?;
        let b = (b * fold)?;
        // A tiny lora_alpha underflows B to zeros in 32-bit floats: an expert that
        // changes no output, scored as the base by every method, unsaid.
        if held > 0.0 && b.abs()?.max_all()?.to_scalar::<f32>()? == 0.0 {
            return Err(bad(
                dir,
                file,
                format!(
                    "`{module}.lora_B` scaled by `lora_alpha` {:e} (folded into B as {fold:e}) is all zeros in 32-bit floats: the adapter would change no output; `lora_alpha` in {CONFIG_FILE} is too small",
                    self.conf.lora_alpha
                ),
            ));
        }
        // Checked again once folded: A and B were finite as read, but a huge
        // lora_alpha overflows B to inf, which the gate step then blamed on a damaged
        // store file.
        if let Some((_, v)) = super::tensor_store::first_non_finite(&b)? {
            return Err(bad(
                dir,
                file,
                format!(
                    "`{module}.lora_B` scaled by `lora_alpha` {:e} (folded into B as {fold:e}) is {v} in 32-bit floats: `lora_alpha` in {CONFIG_FILE} is too large for these weights",
                    self.conf.lora_alpha
                ),
            ));
        }
        LoraWeights::new(module, a, b, site.d_in, site.d_out)
    }
}

/// PEFT's `target_modules` for exactly `modules`: the short names (`q`, `wi_0`, ...)
/// when they select exactly these modules of the base, else a regex of the full names.
fn target_modules_for(modules: &BTreeSet<&str>, cfg: &T5Config) -> Value {
    let short: BTreeSet<&str> = modules.iter().filter_map(|m| m.rsplit('.').next()).collect();
    let by_short: BTreeSet<String> = adapted_linears(cfg)
        .into_iter()
        .filter(|s| s.name.rsplit('.').next().is_some_and(|x| short.contains(x)))
        .map(|s| s.name)
        .collect();
    if by_short.len() == modules.len() && modules.iter().all(|m| by_short.contains(*m)) {
        return Value::from(short.into_iter().collect::<Vec<_>>());
    }
    let alternatives: Vec<String> = modules.iter().map(|m| regex::escape(m)).collect();
    Value::from(format!("(?:{})", alternatives.join("|")))
}

/// Writes `expert` as a PEFT adapter folder for the base `cfg` (created if needed;
/// existing adapter files are replaced). `base` is recorded as
/// `base_model_name_or_path`. With `gates`, also writes the expert's gate vectors
/// and `phatgoose.json`, so a pool travels as a set of folders.
pub fn export(
    expert: &LoraExpert,
    gates: Option<&GateVectors>,
    cfg: &T5Config,
    base: Option<&str>,
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let ranks: BTreeSet<usize> = expert.modules.values().map(LoraWeights::rank).collect();
    let r = match ranks.iter().collect::<Vec<_>>()[..] {
        [r] => *r,
        _ => {
            return Err(ModelError::Input(format!(
                "expert `{}` has modules of ranks {ranks:?}; a PEFT adapter has one rank",
                expert.name
            )));
        }
    };
    let module_names: BTreeSet<&str> = expert.modules.keys().map(String::as_str).collect();
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "SEQ_2_SEQ_LM",
        "base_model_name_or_path": base,
        "r": r,
        // goosepipe's LoRA divides by r: PEFT's scaling lora_alpha / r with lora_alpha 1.
        "lora_alpha": 1,
        "use_rslora": false,
        "target_modules": target_modules_for(&module_names, cfg),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_dora": false,
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "init_lora_weights": true,
        "inference_mode": true,
        "revision": null,
    });
    let mut written = vec![];
    // A file of an earlier export may be a link (to a store's artifact, say): each
    // write replaces the link, never what it points at.
    let fresh = |path: &Path| crate::file_kind::unlink_symlink(path).map_err(|e| ModelError::io(path, e));
    let config_path = dir.join(CONFIG_FILE);
    fresh(&config_path)?;
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config).expect("json"))
        .map_err(|e| ModelError::io(&config_path, e))?;
    written.push(config_path);
    let mut tensors = Vec::with_capacity(expert.modules.len() * 2);
    for (m, l) in &expert.modules {
        tensors.push((format!("{PREFIX}{m}.lora_A.weight"), l.a.to_dtype(DType::F32)?));
        tensors.push((format!("{PREFIX}{m}.lora_B.weight"), l.b.to_dtype(DType::F32)?));
    }
    let weights = dir.join(WEIGHTS_SAFETENSORS);
    fresh(&weights)?;
    // The expert's name in the weights' metadata (PEFT reads only `format`): a gate
    // file copied in from another export is then found out (`recorded_expert`).
    let mut meta = HashMap::from([("format".to_owned(), "pt".to_owned())]);
    if !expert.name.is_empty() {
        meta.insert(META_NAME.to_owned(), expert.name.clone());
    }
    save_with_metadata(&weights, &tensors, meta)?;
    written.push(weights);
    // An adapter without gates leaves no gate of an earlier export beside it (a
    // folder written again, `export --force`): it would route this LoRA.
    if gates.is_none() {
        for stale in [GATES_FILE, ROUTER_FILE] {
            match std::fs::remove_file(dir.join(stale)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(ModelError::io(dir.join(stale), e));
                }
                _ => {}
            }
        }
    }
    if let Some(g) = gates {
        if let Some(m) = g.gates.keys().find(|m| !expert.modules.contains_key(*m)) {
            return Err(ModelError::Input(format!(
                "the gates of `{}` cover `{m}`, which the expert does not adapt",
                g.name
            )));
        }
        let mut g = g.clone();
        g.name = expert.name.clone();
        g.base_model = None;
        let gates_path = dir.join(GATES_FILE);
        fresh(&gates_path)?;
        g.save(&gates_path)?;
        written.push(gates_path);
        let router = serde_json::json!({
            "format": "goosepipe.phatgoose-gates",
            "version": 1,
            "expert": expert.name,
            "gates": GATES_FILE,
            "tensor_names": "<module>.gate, [d_in] float32; <module> as in the base model's state dict (e.g. encoder.block.0.layer.0.SelfAttention.q)",
            "training": "post hoc: base and LoRA frozen, each adapted linear's LoRA output scaled by sigmoid(gate . u) for its input u, trained on the expert's own data",
            "routing": {
                "score": "per token and module: layer_norm(u) . layer_norm(gate_z) / sqrt(d_in) for each expert z whose adapter covers the module (layer_norm without scale or bias, eps 1e-5)",
                "weights": "softmax over the experts' scores; the top k kept and renormalised by their sum (+1e-6)",
                "top_k": 2,
                "output": "W u + sum over the chosen z of weight_z * lora_z(u), lora_z(u) computed as PEFT does with this folder's adapter_config.json",
            },
        });
        let router_path = dir.join(ROUTER_FILE);
        fresh(&router_path)?;
        std::fs::write(&router_path, serde_json::to_vec_pretty(&router).expect("json"))
            .map_err(|e| ModelError::io(&router_path, e))?;
        written.push(router_path);
    }
    Ok(written)
}

/// The gate vectors exported beside a PEFT adapter, if any.
pub fn import_gates(dir: &Path, name: &str, cfg: &T5Config, device: &Device) -> Result<Option<GateVectors>> {
    let path = dir.join(GATES_FILE);
    // A gate file that cannot be opened is said, not taken for no gate.
    if let Some(why) = crate::file_kind::not_a_file(&path) {
        return Err(bad(
            dir,
            GATES_FILE,
            format!("it {why}: the adapter's gate is read from it"),
        ));
    }
    if !path.is_file() {
        return Ok(None);
    }
    if let (Some(adapter), Some(gate)) = (recorded_expert(dir), recorded_name(&path))
        && adapter != gate
    {
        return Err(ModelError::Input(format!(
            "{}: its gate file was exported for expert `{gate}`, its adapter for `{adapter}`: one expert's gate would route another's LoRA",
            dir.display()
        )));
    }
    let mut g = GateVectors::load(&path, cfg, device, DType::F32)?;
    g.name = name.to_owned();
    Ok(Some(g))
}

/// The expert a safetensors file records it belongs to (`goosepipe.expert`), if any.
pub fn recorded_name(file: &Path) -> Option<String> {
    read_metadata(file).ok()?.get(META_NAME).cloned()
}

/// The expert an exported adapter folder says it holds: the name its weights record
/// (goosepipe's exports write it), else the `expert` of its `phatgoose.json`. None for
/// a folder that says nothing (any other tool's adapter).
pub fn recorded_expert(dir: &Path) -> Option<String> {
    recorded_name(&dir.join(WEIGHTS_SAFETENSORS)).or_else(|| {
        let router: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(ROUTER_FILE)).ok()?).ok()?;
        router.get("expert")?.as_str().map(str::to_owned)
    })
}
