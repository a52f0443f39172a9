//! A compact BERT encoder (HF `BertModel` semantics, inference only): word +
//! absolute position + token-type embeddings, post-norm layers with biased
//! linears, exact (erf) GELU. Enough for sentence embedders such as
//! all-MiniLM-L6-v2; weights load with or without the `bert.` name prefix.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{LayerNorm, Linear, Module};
use serde::Deserialize;

use crate::model::checkpoint::tensor_store::TensorStore;
use crate::model::error::{ModelError, Result};

/// The fields of an HF BERT `config.json` this encoder uses.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}

struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    attn_norm: LayerNorm,
    up: Linear,
    down: Linear,
    out_norm: LayerNorm,
}

pub struct Bert {
    pub config: BertConfig,
    words: Tensor,
    positions: Tensor,
    types: Tensor,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    device: Device,
}

struct Loader<'a> {
    store: &'a TensorStore,
    prefix: &'a str,
    device: &'a Device,
}

impl Loader<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.store
            .get(&format!("{}{name}", self.prefix), shape, DType::F32, self.device)
    }
    fn linear(&self, name: &str, d_in: usize, d_out: usize) -> Result<Linear> {
        Ok(Linear::new(
            self.get(&format!("{name}.weight"), &[d_out, d_in])?,
            Some(self.get(&format!("{name}.bias"), &[d_out])?),
        ))
    }
    fn norm(&self, name: &str, d: usize, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm::new(
            self.get(&format!("{name}.weight"), &[d])?,
            self.get(&format!("{name}.bias"), &[d])?,
            eps,
        ))
    }
}

impl Bert {
    /// Loads an HF BERT folder (`config.json` + safetensors weights), in f32.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let files = crate::model::checkpoint::load::locate(dir)?;
        let text = std::fs::read_to_string(&files.config).map_err(|e| ModelError::io(&files.config, e))?;
        let config: BertConfig = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: files.config.clone(),
            message: e.to_string(),
        })?;
        if !matches!(config.hidden_act.as_str(), "gelu" | "gelu_new" | "gelu_python") {
            return Err(ModelError::Config {
                path: files.config.clone(),
                message: format!("hidden_act `{}` is not supported (gelu only)", config.hidden_act),
            });
        }
        if config.num_attention_heads == 0 || !config.hidden_size.is_multiple_of(config.num_attention_heads) {
            return Err(ModelError::Config {
                path: files.config.clone(),
                message: "hidden_size must be a multiple of num_attention_heads".into(),
            });
        }
        let store = crate::model::checkpoint::load::open_store(&files)?;
        let prefix = if store.contains("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        let l = Loader {
            store: &store,
            prefix,
            device,
        };
        let (d, ff, eps) = (
            config.hidden_size,
            config.intermediate_size,
            config.layer_norm_eps,
        );
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            layers.push(Layer {
                q: l.linear(&format!("{p}.attention.self.query"), d, d)?,
                k: l.linear(&format!("{p}.attention.self.key"), d, d)?,
                v: l.linear(&format!("{p}.attention.self.value"), d, d)?,
                o: l.linear(&format!("{p}.attention.output.dense"), d, d)?,
                attn_norm: l.norm(&format!("{p}.attention.output.LayerNorm"), d, eps)?,
                up: l.linear(&format!("{p}.intermediate.dense"), d, ff)?,
                down: l.linear(&format!("{p}.output.dense"), ff, d)?,
                out_norm: l.norm(&format!("{p}.output.LayerNorm"), d, eps)?,
            });
        }
        Ok(Bert {
            words: l.get("embeddings.word_embeddings.weight", &[config.vocab_size, d])?,
            positions: l.get(
                "embeddings.position_embeddings.weight",
                &[config.max_position_embeddings, d],
            )?,
            types: l.get(
                "embeddings.token_type_embeddings.weight",
                &[config.type_vocab_size, d],
            )?,
            emb_norm: l.norm("embeddings.LayerNorm", d, eps)?,
            layers,
            config,
            device: device.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Last hidden states `[B, S, d]` for `ids` `[B, S]` (u32) and a 0/1 f32
    /// `mask` `[B, S]` (token type 0 everywhere, as single-sentence encoders use).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        if s > self.config.max_position_embeddings {
            return Err(ModelError::Input(format!(
                "{s} tokens exceed BERT's {} positions",
                self.config.max_position_embeddings
            )));
        }
        let d = self.config.hidden_size;
        let heads = self.config.num_attention_heads;
        let dh = d / heads;
        let words = self
            .words
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, s, d))?;
        let pos = self.positions.narrow(0, 0, s)?.unsqueeze(0)?;
        let typ = self.types.narrow(0, 0, 1)?.unsqueeze(0)?;
        let mut h = self
            .emb_norm
            .forward(&words.broadcast_add(&pos)?.broadcast_add(&typ)?)?;
        // Additive key mask [B, 1, 1, S]: 0 for real tokens, a large negative for pads.
        let bias = ((mask.to_dtype(DType::F32)? - 1.0)? * 1e9)?.reshape((b, 1, 1, s))?;
        let split = |x: Tensor| -> Result<Tensor> {
            Ok(x.reshape((b, s, heads, dh))?.transpose(1, 2)?.contiguous()?)
        };
        let scale = 1.0 / (dh as f64).sqrt();
        for layer in &self.layers {
            let q = split(layer.q.forward(&h)?)?;
            let k = split(layer.k.forward(&h)?)?;
            let v = split(layer.v.forward(&h)?)?;
            let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&bias)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, s, d))?;
            h = layer.attn_norm.forward(&(layer.o.forward(&ctx)? + &h)?)?;
            let inner = layer.up.forward(&h)?.gelu_erf()?;
            h = layer.out_norm.forward(&(layer.down.forward(&inner)? + &h)?)?;
        }
        Ok(h)
    }
}
