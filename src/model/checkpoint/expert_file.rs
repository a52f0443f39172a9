//! Expert files. A LoRA expert is one safetensors file with PEFT-like names:
//! `<module>.lora_A` `[r, d_in]` and `<module>.lora_B` `[d_out, r]`, where
//! `<module>` is an adapted linear (e.g.
//! `encoder.block.3.layer.1.DenseReluDense.wi_0`). Gate vectors live in their
//! own file as `<module>.gate` `[d_in]`. Header metadata carries the kind, the
//! rank and the base model identity. Loading validates every name and shape
//! against the base config.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::st_io::{read_metadata, save_with_metadata};
use crate::model::adapter::LoraWeights;
use crate::model::checkpoint::tensor_store::TensorStore;
use crate::model::error::{ModelError, Result};
use crate::model::t5::config::T5Config;
use crate::model::t5::names::{LinearSite, adapted_linears};

pub const META_KIND: &str = "goosepipe.kind";
pub const META_RANK: &str = "goosepipe.rank";
pub const META_BASE: &str = "goosepipe.base_model";
/// The expert's name, when it has one. Artifacts of the store have none: their bytes
/// must depend on their key alone, and a name is no ingredient of a key (two steps of
/// one key, or a renamed step, share the artifact); whoever loads one names it.
pub const META_NAME: &str = "goosepipe.expert";

/// One trained LoRA expert.
#[derive(Debug, Clone)]
pub struct LoraExpert {
    pub name: String,
    pub rank: usize,
    pub base_model: Option<String>,
    /// Keyed by module name.
    pub modules: BTreeMap<String, LoraWeights>,
}

/// One expert's gate vectors (PHATGOOSE router embeddings).
#[derive(Debug, Clone)]
pub struct GateVectors {
    pub name: String,
    pub base_model: Option<String>,
    /// Keyed by module name, each `[d_in]`.
    pub gates: BTreeMap<String, Tensor>,
}

/// The expert name: metadata `goosepipe.expert`, else the file stem without
/// a trailing `.gates`.
fn expert_name(path: &Path, meta: &HashMap<String, String>) -> String {
    if let Some(n) = meta.get(META_NAME) {
        return n.clone();
    }
    let stem = path.file_name().and_then(|s| s.to_str()).unwrap_or("expert");
    let stem = stem.strip_suffix(".safetensors").unwrap_or(stem);
    stem.strip_suffix(".gates").unwrap_or(stem).to_owned()
}

fn check_base(name: &str, recorded: Option<&str>, expected: &str) -> Result<()> {
    match recorded {
        Some(b) if b == expected => Ok(()),
        Some(b) => Err(ModelError::Input(format!(
            "expert `{name}` was made for base model `{b}`, not `{expected}`"
        ))),
        None => Err(ModelError::Input(format!(
            "expert `{name}` does not record its base model (metadata `{META_BASE}`)"
        ))),
    }
}

fn sites_by_name(cfg: &T5Config) -> HashMap<String, LinearSite> {
    adapted_linears(cfg)
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect()
}

/// Splits `<module>.<suffix>` and checks the module exists.
fn split_name<'a>(
    file: &str,
    name: &'a str,
    sites: &HashMap<String, LinearSite>,
    suffixes: &[&str],
) -> Result<(&'a str, &'a str)> {
    let bad = |message: String| ModelError::BadFile {
        file: file.to_owned(),
        message,
    };
    let (module, suffix) = name.rsplit_once('.').ok_or_else(|| {
        bad(format!(
            "tensor `{name}` is not `<module>.<{}>`",
            suffixes.join("|")
        ))
    })?;
    if !suffixes.contains(&suffix) {
        return Err(bad(format!(
            "unexpected tensor `{name}`: the suffix must be one of {suffixes:?}"
        )));
    }
    if !sites.contains_key(module) {
        return Err(bad(format!(
            "tensor `{name}` names module `{module}`, which this base model does not have"
        )));
    }
    Ok((module, suffix))
}

/// What a file that did not load as an expert is, said for the person who gave it
/// (`err`: what loading said): not a safetensors file, a PEFT adapter's weights (the
/// adapter is their folder), an expert of another base model, or else no expert file.
/// None when `err` is not about the file's content (it could not be read, say).
pub fn not_an_expert(path: &Path, cfg: &T5Config, err: &ModelError) -> Option<String> {
    if !matches!(err, ModelError::Candle(_) | ModelError::BadFile { .. }) {
        return None;
    }
    let shown = path.display();
    let Ok(store) = TensorStore::mmap(&[path.to_path_buf()]) else {
        return Some(format!("{shown} is not a safetensors file ({err})"));
    };
    let names = store.names();
    if names
        .iter()
        .any(|n| n.ends_with(".lora_A.weight") || n.ends_with(".lora_B.weight"))
    {
        return Some(format!(
            "{shown} holds a PEFT adapter's weights, not a goosepipe expert: give the adapter's folder (with its adapter_config.json)"
        ));
    }
    let lora = |n: &str| {
        n.rsplit_once('.')
            .filter(|(_, s)| *s == "lora_A" || *s == "lora_B")
            .map(|(m, _)| m.to_string())
    };
    let sites = sites_by_name(cfg);
    if !names.is_empty()
        && names.iter().all(|n| lora(n).is_some())
        && let Some(m) = names
            .iter()
            .filter_map(|n| lora(n))
            .find(|m| !sites.contains_key(m))
    {
        return Some(format!(
            "{shown} is an expert of another base model: it adapts module `{m}`, which this base model does not have"
        ));
    }
    Some(format!("{shown} is not an expert file ({err})"))
}

impl LoraExpert {
    /// Loads and validates an expert file against the base `cfg`.
    pub fn load(path: &Path, cfg: &T5Config, device: &Device, dtype: DType) -> Result<Self> {
        let file = path.display().to_string();
        let meta = read_metadata(path)?;
        if let Some(kind) = meta.get(META_KIND)
            && kind != "lora"
        {
            return Err(ModelError::BadFile {
                file,
                message: format!("metadata says this is a `{kind}` file, not a LoRA expert"),
            });
        }
        let store = TensorStore::mmap(&[path.to_path_buf()])?;
        let sites = sites_by_name(cfg);
        let mut pairs: BTreeMap<String, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
        for name in store.names() {
            let (module, suffix) = split_name(&file, &name, &sites, &["lora_A", "lora_B"])?;
            let t = store
                .get_finite(&name, device)?
                .ok_or_else(|| ModelError::MissingTensor {
                    file: file.clone(),
                    name: name.clone(),
                })?
                .to_dtype(dtype)?;
            let e = pairs.entry(module.to_owned()).or_default();
            if suffix == "lora_A" {
                e.0 = Some(t);
            } else {
                e.1 = Some(t);
            }
        }
        if pairs.is_empty() {
            return Err(ModelError::BadFile {
                file,
                message: "no LoRA tensors in the file".into(),
            });
        }
        let meta_rank = meta
            .get(META_RANK)
            .map(|r| {
                r.parse::<usize>().map_err(|_| ModelError::BadFile {
                    file: file.clone(),
                    message: format!("metadata rank `{r}` is not a number"),
                })
            })
            .transpose()?;
        let mut modules = BTreeMap::new();
        let mut rank = None;
        for (module, (a, b)) in pairs {
            let missing = |s: &str| ModelError::MissingTensor {
                file: file.clone(),
                name: format!("{module}.{s}"),
            };
            let a = a.ok_or_else(|| missing("lora_A"))?;
            let b = b.ok_or_else(|| missing("lora_B"))?;
            let site = &sites[&module];
            let r = a.dims().first().copied().unwrap_or(0);
            let expected_r = meta_rank.or(rank).unwrap_or(r);
            if a.dims() != [expected_r, site.d_in] {
                return Err(ModelError::ShapeMismatch {
                    file: file.clone(),
                    name: format!("{module}.lora_A"),
                    expected: vec![expected_r, site.d_in],
                    actual: a.dims().to_vec(),
                });
            }
            if b.dims() != [site.d_out, expected_r] {
                return Err(ModelError::ShapeMismatch {
                    file: file.clone(),
                    name: format!("{module}.lora_B"),
                    expected: vec![site.d_out, expected_r],
                    actual: b.dims().to_vec(),
                });
            }
            rank = Some(expected_r);
            modules.insert(
                module.clone(),
                LoraWeights::new(&module, a, b, site.d_in, site.d_out)?,
            );
        }
        Ok(LoraExpert {
            name: expert_name(path, &meta),
            rank: rank.unwrap_or(0),
            base_model: meta.get(META_BASE).cloned(),
            modules,
        })
    }

    /// Checks the base-model identity recorded in the file's metadata. An
    /// expert trained on another base would load (shapes can coincide) but
    /// produce garbage, so callers that know the base should check it.
    pub fn check_base_model(&self, expected: &str) -> Result<()> {
        check_base(&self.name, self.base_model.as_deref(), expected)
    }

    /// Writes the expert in the file format above.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors = Vec::with_capacity(self.modules.len() * 2);
        for (m, l) in &self.modules {
            tensors.push((format!("{m}.lora_A"), l.a.clone()));
            tensors.push((format!("{m}.lora_B"), l.b.clone()));
        }
        let mut meta = HashMap::from([
            ("format".to_owned(), "pt".to_owned()),
            (META_KIND.to_owned(), "lora".to_owned()),
            (META_RANK.to_owned(), self.rank.to_string()),
        ]);
        if !self.name.is_empty() {
            meta.insert(META_NAME.to_owned(), self.name.clone());
        }
        if let Some(b) = &self.base_model {
            meta.insert(META_BASE.to_owned(), b.clone());
        }
        save_with_metadata(path, &tensors, meta)
    }
}

impl GateVectors {
    /// The gate file kept beside an expert file: `NAME.gates.safetensors` for
    /// `NAME.safetensors`, loaded when it exists.
    pub fn load_beside(expert: &Path, cfg: &T5Config, device: &Device, dtype: DType) -> Result<Option<Self>> {
        let path = Self::path_beside(expert);
        if !path.is_file() {
            return Ok(None);
        }
        Self::load(&path, cfg, device, dtype).map(Some)
    }

    /// Where the gates of expert file `NAME.safetensors` lie: `NAME.gates.safetensors`
    /// beside it.
    pub fn path_beside(expert: &Path) -> std::path::PathBuf {
        let name = expert.file_name().and_then(|s| s.to_str()).unwrap_or("expert");
        let stem = name.strip_suffix(".safetensors").unwrap_or(name);
        expert.with_file_name(format!("{stem}.gates.safetensors"))
    }

    /// Loads and validates a gate file against the base `cfg`.
    pub fn load(path: &Path, cfg: &T5Config, device: &Device, dtype: DType) -> Result<Self> {
        let file = path.display().to_string();
        let meta = read_metadata(path)?;
        if let Some(kind) = meta.get(META_KIND)
            && kind != "gate"
        {
            return Err(ModelError::BadFile {
                file,
                message: format!("metadata says this is a `{kind}` file, not a gate file"),
            });
        }
        let store = TensorStore::mmap(&[path.to_path_buf()])?;
        let sites = sites_by_name(cfg);
        let mut gates = BTreeMap::new();
        for name in store.names() {
            let (module, _) = split_name(&file, &name, &sites, &["gate"])?;
            let d_in = sites[module].d_in;
            let v = store
                .get_finite(&name, device)?
                .ok_or_else(|| ModelError::MissingTensor {
                    file: file.clone(),
                    name: name.clone(),
                })?;
            if v.dims() != [d_in] {
                return Err(ModelError::ShapeMismatch {
                    file: file.clone(),
                    name: name.clone(),
                    expected: vec![d_in],
                    actual: v.dims().to_vec(),
                });
            }
            gates.insert(module.to_owned(), v.to_dtype(dtype)?);
        }
        if gates.is_empty() {
            return Err(ModelError::BadFile {
                file,
                message: "no gate vectors in the file".into(),
            });
        }
        Ok(GateVectors {
            name: expert_name(path, &meta),
            base_model: meta.get(META_BASE).cloned(),
            gates,
        })
    }

    /// See [`LoraExpert::check_base_model`].
    pub fn check_base_model(&self, expected: &str) -> Result<()> {
        check_base(&self.name, self.base_model.as_deref(), expected)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let tensors: Vec<(String, Tensor)> = self
            .gates
            .iter()
            .map(|(m, g)| (format!("{m}.gate"), g.clone()))
            .collect();
        let mut meta = HashMap::from([
            ("format".to_owned(), "pt".to_owned()),
            (META_KIND.to_owned(), "gate".to_owned()),
        ]);
        if !self.name.is_empty() {
            meta.insert(META_NAME.to_owned(), self.name.clone());
        }
        if let Some(b) = &self.base_model {
            meta.insert(META_BASE.to_owned(), b.clone());
        }
        save_with_metadata(path, &tensors, meta)
    }
}
