//! The base model's tensors in Hugging Face naming: the expected list (used to
//! validate checkpoints), seeded random initialisation, and saving as an HF
//! folder (`config.json` + `model.safetensors`).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::st_io::save_with_metadata;
use crate::model::error::{ModelError, Result};
use crate::model::t5::config::T5Config;
use crate::model::t5::names::adapted_linears;
use crate::rng::SeededRng;

/// Every tensor a T5 checkpoint must hold, with its torch-layout shape.
/// `lm_head.weight` is listed only for untied models.
/// Whether `store` holds every tensor `cfg` asks for, in its shape: the first one
/// missing or misshaped is the error. Shapes come from the headers, so a model folder
/// whose config.json disagrees with its weights is refused where it is named, not by
/// the first step that loads it.
pub fn check_shapes(cfg: &T5Config, store: &super::tensor_store::TensorStore) -> crate::model::Result<()> {
    for (name, expected) in expected_tensors(cfg) {
        match store.shape(&name) {
            None => {
                return Err(crate::model::ModelError::MissingTensor {
                    file: store.label().to_owned(),
                    name,
                });
            }
            Some(actual) if actual != expected => {
                return Err(crate::model::ModelError::ShapeMismatch {
                    file: store.label().to_owned(),
                    name,
                    expected,
                    actual,
                });
            }
            Some(_) => {}
        }
    }
    // Layers the config does not have would be left unread: a config of fewer layers
    // than its weights (another model's, or edited) loads as a different model.
    for name in store.names() {
        for (stack, layers, setting) in [
            ("encoder", cfg.num_layers, "num_layers"),
            ("decoder", cfg.num_decoder_layers, "num_decoder_layers"),
        ] {
            let block = name
                .strip_prefix(stack)
                .and_then(|r| r.strip_prefix(".block."))
                .and_then(|r| r.split('.').next())
                .and_then(|i| i.parse::<usize>().ok());
            if let Some(i) = block
                && i >= layers
            {
                return Err(crate::model::ModelError::BadFile {
                    file: store.label().to_owned(),
                    message: format!(
                        "tensor `{name}` is of {stack} layer {i}, and config.json says {setting}={layers}: the config and the weights are of different models"
                    ),
                });
            }
        }
    }
    Ok(())
}

pub fn expected_tensors(cfg: &T5Config) -> Vec<(String, Vec<usize>)> {
    let mut out = vec![("shared.weight".to_owned(), vec![cfg.vocab_size, cfg.d_model])];
    for site in adapted_linears(cfg) {
        out.push((format!("{}.weight", site.name), vec![site.d_out, site.d_in]));
    }
    let rel = vec![cfg.relative_attention_num_buckets, cfg.num_heads];
    for (stack, layers, norms) in [
        ("encoder", cfg.num_layers, 2),
        ("decoder", cfg.num_decoder_layers, 3),
    ] {
        if layers > 0 {
            out.push((
                format!("{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
                rel.clone(),
            ));
        }
        for i in 0..layers {
            for l in 0..norms {
                out.push((
                    format!("{stack}.block.{i}.layer.{l}.layer_norm.weight"),
                    vec![cfg.d_model],
                ));
            }
        }
        out.push((format!("{stack}.final_layer_norm.weight"), vec![cfg.d_model]));
    }
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_owned(), vec![cfg.vocab_size, cfg.d_model]));
    }
    out
}

/// A full set of base weights held in memory.
pub struct T5Weights {
    pub config: T5Config,
    pub tensors: HashMap<String, Tensor>,
}

impl T5Weights {
    /// HF-style initialisation (`T5PreTrainedModel._init_weights`, factor 1)
    /// from our own seeded RNG: embeddings N(0,1), q N(0,(d_model*d_kv)^-1/2),
    /// k/v and wi N(0,d_model^-1/2), o N(0,inner^-1/2), wo N(0,d_ff^-1/2),
    /// relative bias N(0,d_model^-1/2), norms 1. Same seed, same weights.
    pub fn init_random(config: &T5Config, seed: u64) -> Result<Self> {
        config.validate().map_err(|message| ModelError::Config {
            path: "<in-memory config>".into(),
            message,
        })?;
        let mut rng = SeededRng::new(seed);
        let dev = Device::Cpu;
        let dm = config.d_model as f64;
        let mut tensors = HashMap::new();
        for (name, shape) in expected_tensors(config) {
            let std = if name.ends_with("layer_norm.weight") {
                None
            } else if name == "shared.weight" || name == "lm_head.weight" {
                Some(1.0)
            } else if name.ends_with("relative_attention_bias.weight") {
                Some(dm.powf(-0.5))
            } else if name.ends_with(".q.weight") {
                Some((dm * config.d_kv as f64).powf(-0.5))
            } else if name.ends_with(".o.weight") {
                Some((config.inner_dim() as f64).powf(-0.5))
            } else if name.ends_with(".wo.weight") {
                Some((config.d_ff as f64).powf(-0.5))
            } else {
                // k, v, wi, wi_0, wi_1
                Some(dm.powf(-0.5))
            };
            let t = match std {
                None => Tensor::ones(shape.as_slice(), DType::F32, &dev)?,
                Some(s) => rng.normal_tensor(&shape, s, DType::F32, &dev)?,
            };
            tensors.insert(name, t);
        }
        Ok(T5Weights {
            config: config.clone(),
            tensors,
        })
    }

    /// Writes `config.json` and `model.safetensors` into `dir` (created if needed).
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let cfg_path = dir.join("config.json");
        let text = serde_json::to_string_pretty(&self.config.to_hf_json())
            .map_err(|e| ModelError::Input(format!("cannot serialise config: {e}")))?;
        std::fs::write(&cfg_path, text).map_err(|e| ModelError::io(&cfg_path, e))?;
        let st_path = dir.join("model.safetensors");
        let mut tensors: Vec<(String, Tensor)> =
            self.tensors.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let meta = HashMap::from([("format".to_owned(), "pt".to_owned())]);
        save_with_metadata(&st_path, &tensors, meta)
    }
}
