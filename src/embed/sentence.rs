//! A sentence embedder in the sentence-transformers mould (Transformer ->
//! mean pooling over real tokens -> L2 normalisation) on the BERT of
//! [`super::bert`]; all-MiniLM-L6-v2 is the one retrieval uses.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

use super::bert::Bert;
use crate::hub::{HubOptions, resolve_model};
use crate::model::error::{ModelError, Result};

/// sentence-transformers' default when the folder has no `sentence_bert_config.json`
/// (the value all-MiniLM-L6-v2 ships).
pub const DEFAULT_MAX_SEQ_LENGTH: usize = 256;

pub struct SentenceEmbedder {
    pub bert: Bert,
    tokenizer: Tokenizer,
    pub max_seq_length: usize,
}

/// A local folder as is, else a hub id resolved through the HF cache (revision `main`).
pub fn resolve_embedder(spec: &str, opts: &HubOptions) -> Result<PathBuf> {
    let p = Path::new(spec);
    if p.is_dir() {
        return Ok(p.to_path_buf());
    }
    if p.is_absolute() || spec.starts_with('.') {
        return Err(ModelError::io(
            p,
            std::io::Error::new(std::io::ErrorKind::NotFound, "embedder folder not found"),
        ));
    }
    Ok(resolve_model(spec, "main", opts)?)
}

impl SentenceEmbedder {
    /// Loads `config.json`, the weights and `tokenizer.json` of a folder. The
    /// tokenizer's own padding/truncation settings are replaced by
    /// sentence-transformers' (no fixed padding; truncation at `max_seq_length`).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        crate::process::alloc::tune_allocator_for_tensors();
        let bert = Bert::load(dir, device)?;
        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer = crate::model::checkpoint::load::load_tokenizer(&tok_path)?;
        let st = dir.join("sentence_bert_config.json");
        let max_seq_length = if st.is_file() {
            let v: serde_json::Value = serde_json::from_slice(
                &std::fs::read(&st).map_err(|e| ModelError::io(&st, e))?,
            )
            .map_err(|e| ModelError::Config {
                path: st.clone(),
                message: e.to_string(),
            })?;
            v.get("max_seq_length")
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .unwrap_or(DEFAULT_MAX_SEQ_LENGTH)
        } else {
            DEFAULT_MAX_SEQ_LENGTH
        }
        .min(bert.config.max_position_embeddings);
        let bad = |e: tokenizers::Error| ModelError::Tokenizer {
            path: tok_path.clone(),
            message: e.to_string(),
        };
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_length,
                ..Default::default()
            }))
            .map_err(bad)?;
        tokenizer.with_padding(None::<PaddingParams>);
        Ok(SentenceEmbedder {
            bert,
            tokenizer,
            max_seq_length,
        })
    }

    pub fn dim(&self) -> usize {
        self.bert.config.hidden_size
    }

    /// Unit-length embeddings `[texts.len(), dim]`, `batch` texts per forward pass.
    pub fn embed(&self, texts: &[String], batch: usize) -> Result<Tensor> {
        let dev = self.bert.device();
        let mut out = Vec::with_capacity(texts.len().div_ceil(batch.max(1)));
        for chunk in texts.chunks(batch.max(1)) {
            let ids: Vec<Vec<u32>> = chunk
                .iter()
                .map(|t| {
                    self.tokenizer
                        .encode(t.as_str(), true)
                        .map(|e| e.get_ids().to_vec())
                        .map_err(|e| ModelError::Input(format!("embedder tokenizer: {e}")))
                })
                .collect::<Result<_>>()?;
            let (ids_t, mask_t) = padded_batch(&ids, 0, dev)?;
            let h = self.bert.forward(&ids_t, &mask_t)?;
            out.push(mean_pool_normalized(&h, &mask_t)?);
        }
        if out.is_empty() {
            return Ok(Tensor::zeros((0, self.dim()), DType::F32, dev)?);
        }
        Ok(Tensor::cat(&out, 0)?)
    }
}

/// Token id rows padded with `pad` to one length: ids `[B, S]` (u32) and a 0/1 mask
/// `[B, S]` (f32).
pub fn padded_batch(ids: &[Vec<u32>], pad: u32, dev: &candle_core::Device) -> Result<(Tensor, Tensor)> {
    let s = ids.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let b = ids.len();
    let mut flat = vec![pad; b * s];
    let mut mask = vec![0f32; b * s];
    for (i, row) in ids.iter().enumerate() {
        for (j, &t) in row.iter().enumerate() {
            flat[i * s + j] = t;
            mask[i * s + j] = 1.0;
        }
    }
    Ok((
        Tensor::from_vec(flat, (b, s), dev)?,
        Tensor::from_vec(mask, (b, s), dev)?,
    ))
}

/// Mean of `h` `[B, S, d]` over the positions where `mask` `[B, S]` is 1, then
/// divided by its L2 norm (sentence-transformers' clamps: 1e-9 tokens, 1e-12 norm).
pub fn mean_pool_normalized(h: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = mask.to_dtype(h.dtype())?.unsqueeze(2)?;
    let sum = h.broadcast_mul(&m)?.sum(1)?;
    let count = m.sum(1)?.clamp(1e-9, f64::INFINITY)?;
    let mean = sum.broadcast_div(&count)?;
    let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::INFINITY)?;
    Ok(mean.broadcast_div(&norm)?)
}
