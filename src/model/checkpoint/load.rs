//! Loading a T5 from a Hugging Face model folder: `config.json` plus
//! `model.safetensors`, a sharded `model.safetensors.index.json`, or (only
//! when no safetensors exist) `pytorch_model.bin`; `tokenizer.json` if present.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use crate::model::checkpoint::tensor_store::TensorStore;
use crate::model::error::{ModelError, Result};
use crate::model::t5::T5Model;
use crate::model::t5::config::T5Config;

/// The weight files of a model folder.
#[derive(Debug, Clone, PartialEq)]
pub enum WeightFiles {
    Safetensors(Vec<PathBuf>),
    Pickle(PathBuf),
}

/// What a model folder holds.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFiles {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub weights: WeightFiles,
    pub tokenizer: Option<PathBuf>,
}

pub use crate::hub::weight_files::{PICKLE, SAFETENSORS, SAFETENSORS_INDEX, shard_names};

/// Finds the config, weights and tokenizer of a model folder.
pub fn locate(dir: &Path) -> Result<ModelFiles> {
    if !dir.is_dir() {
        return Err(ModelError::io(
            dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "model folder not found"),
        ));
    }
    // A model file there that is no regular file (a FIFO, a link to a device) is said
    // as what it is, not as missing.
    let present = |p: &Path| -> Result<bool> {
        if !p.exists() {
            return Ok(false);
        }
        crate::file_kind::regular_file(p).map_err(|e| ModelError::io(p, e))?;
        Ok(true)
    };
    let config = dir.join("config.json");
    if !present(&config)? {
        return Err(ModelError::io(
            &config,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "config.json not found in the model folder",
            ),
        ));
    }
    let weights = if present(&dir.join(SAFETENSORS))? {
        WeightFiles::Safetensors(vec![dir.join(SAFETENSORS)])
    } else if present(&dir.join(SAFETENSORS_INDEX))? {
        let shards = shard_names(&dir.join(SAFETENSORS_INDEX))?;
        WeightFiles::Safetensors(shards.iter().map(|s| dir.join(s)).collect())
    } else if present(&dir.join(PICKLE))? {
        WeightFiles::Pickle(dir.join(PICKLE))
    } else {
        return Err(ModelError::NoWeights {
            dir: dir.to_path_buf(),
        });
    };
    let tok = dir.join("tokenizer.json");
    Ok(ModelFiles {
        dir: dir.to_path_buf(),
        config,
        weights,
        tokenizer: present(&tok)?.then_some(tok),
    })
}

/// Opens the weights: safetensors memory-mapped, a pickle read into memory.
pub fn open_store(files: &ModelFiles) -> Result<TensorStore> {
    let store = match &files.weights {
        WeightFiles::Safetensors(paths) => TensorStore::mmap(paths)?,
        WeightFiles::Pickle(path) => {
            let store = TensorStore::pickle(path)?;
            alias_shared_embedding(store)
        }
    };
    Ok(store)
}

/// Old PyTorch checkpoints may store the embedding only as
/// `encoder.embed_tokens.weight`; expose it under its canonical name.
fn alias_shared_embedding(store: TensorStore) -> TensorStore {
    match store {
        TensorStore::Memory { label, mut tensors } => {
            if !tensors.contains_key("shared.weight")
                && let Some(t) = tensors.get("encoder.embed_tokens.weight").cloned()
            {
                tensors.insert("shared.weight".to_owned(), t);
            }
            TensorStore::Memory { label, tensors }
        }
        other => other,
    }
}

impl T5Model {
    /// Loads an HF model folder. The head is untied iff the checkpoint has
    /// `lm_head.weight`.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let files = locate(dir)?;
        let store = open_store(&files)?;
        let config = T5Config::from_file(&files.config, Some(store.contains("lm_head.weight")))?;
        T5Model::from_store(&config, &store, device, dtype)
    }
}

/// Loads `tokenizer.json`.
pub fn load_tokenizer(path: &Path) -> Result<tokenizers::Tokenizer> {
    tokenizers::Tokenizer::from_file(path).map_err(|e| ModelError::Tokenizer {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}
