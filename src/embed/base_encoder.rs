//! Sentence embeddings from a T5's own encoder: the encoder output mean-pooled over
//! the real tokens and L2-normalized, as sentence-transformers pools BERT. Retrieval
//! uses it where no sentence embedder can be downloaded (the CPU quickstart); the
//! paper's retrieval uses all-MiniLM-L6-v2, so this is a documented deviation.

use candle_core::{DType, Tensor};
use tokenizers::Tokenizer;

use super::sentence::{mean_pool_normalized, padded_batch};
use crate::model::error::{ModelError, Result};
use crate::model::t5::T5Model;

/// The longest text embedded, in tokens (the rest is cut, as sentence-transformers does).
const MAX_TOKENS: usize = 512;

pub struct EncoderEmbedder {
    model: T5Model,
    tokenizer: Tokenizer,
}

impl EncoderEmbedder {
    /// `model` runs without adapters: the frozen base encoder.
    pub fn new(mut model: T5Model, tokenizer: Tokenizer) -> Self {
        model.clear_adapters();
        model.disable_dropout();
        EncoderEmbedder { model, tokenizer }
    }

    pub fn dim(&self) -> usize {
        self.model.config.d_model
    }

    /// Unit-length embeddings `[texts.len(), d_model]`, `batch` texts per forward pass.
    pub fn embed(&self, texts: &[String], batch: usize) -> Result<Tensor> {
        let dev = self.model.device().clone();
        let pad = self.model.config.pad_token_id;
        let mut out = vec![];
        for chunk in texts.chunks(batch.max(1)) {
            let ids: Vec<Vec<u32>> = chunk
                .iter()
                .map(|t| {
                    self.tokenizer
                        .encode(t.as_str(), true)
                        .map(|e| e.get_ids().iter().copied().take(MAX_TOKENS).collect())
                        .map_err(|e| ModelError::Input(format!("tokenizer: {e}")))
                })
                .collect::<Result<_>>()?;
            let (ids_t, mask_t) = padded_batch(&ids, pad, &dev)?;
            let h = self.model.encode(&ids_t, &mask_t)?.to_dtype(DType::F32)?;
            out.push(mean_pool_normalized(&h, &mask_t)?);
        }
        if out.is_empty() {
            return Ok(Tensor::zeros((0, self.dim()), DType::F32, &dev)?);
        }
        Ok(Tensor::cat(&out, 0)?)
    }
}
