//! The T5 encoder-decoder (HF `T5ForConditionalGeneration` semantics) built on
//! adapter-aware linears. Pre-norm residual blocks, RMSNorm, relative position
//! bias from layer 0 of each stack, no biases, no attention scaling.

pub mod attention;
pub mod backprop;
pub mod config;
pub mod dropout;
pub mod ffn;
pub mod generate;
pub mod names;
pub mod norm;
pub mod position_bias;

use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};

use self::attention::Attention;
use self::config::T5Config;
use self::dropout::Dropout;
use self::ffn::Ffn;
use self::norm::rms_norm;
use self::position_bias::{causal_mask, key_mask, position_bias};
use super::adapter::{ActivationLog, ActivationTap, AdapterCtx, AdapterSet, Linear, RoutingLog};
use super::error::{ModelError, Result};
use crate::model::checkpoint::tensor_store::TensorStore;
use crate::model::checkpoint::weights::{T5Weights, expected_tensors};

#[derive(Debug, Clone)]
struct Block {
    self_attn: Attention,
    self_norm: Tensor,
    cross: Option<(Attention, Tensor)>,
    ffn: Ffn,
    ffn_norm: Tensor,
}

#[derive(Debug, Clone)]
struct Stack {
    blocks: Vec<Block>,
    rel_bias: Option<Tensor>,
    final_norm: Tensor,
}

/// The per-layer key/value cache of incremental decoding. Cross-attention keys
/// and values are computed once from the encoder output; self-attention ones
/// grow by one position per step.
#[derive(Debug, Clone)]
pub struct DecoderCache {
    self_kv: Vec<Option<(Tensor, Tensor)>>,
    cross_kv: Vec<(Tensor, Tensor)>,
    cross_bias: Tensor,
    len: usize,
}

impl DecoderCache {
    /// Number of decoder positions already processed.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One teacher-forced training/eval batch. `label_mask` is 1 for target
/// positions that count in the loss (the `-100` convention of HF, by hand,
/// since candle's cross-entropy has no ignore index).
#[derive(Debug, Clone)]
pub struct Seq2SeqBatch {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    pub decoder_input_ids: Tensor,
    pub labels: Tensor,
    pub label_mask: Tensor,
}

impl Seq2SeqBatch {
    /// Pads `inputs` and `targets` (targets already end with EOS if wanted).
    /// Decoder inputs are the targets shifted right behind
    /// `decoder_start_token_id`.
    pub fn from_pairs(
        cfg: &T5Config,
        inputs: &[Vec<u32>],
        targets: &[Vec<u32>],
        device: &Device,
    ) -> Result<Self> {
        if inputs.is_empty() || inputs.len() != targets.len() {
            return Err(ModelError::Input(format!(
                "a batch needs as many targets as inputs and at least one pair ({} inputs, {} targets)",
                inputs.len(),
                targets.len()
            )));
        }
        if let Some(i) = inputs.iter().position(|x| x.is_empty()) {
            return Err(ModelError::Input(format!("input {i} is empty")));
        }
        if let Some(i) = targets.iter().position(|x| x.is_empty()) {
            return Err(ModelError::Input(format!("target {i} is empty")));
        }
        let b = inputs.len();
        let s = inputs.iter().map(Vec::len).max().unwrap_or(0);
        let t = targets.iter().map(Vec::len).max().unwrap_or(0);
        let pad = cfg.pad_token_id;
        let mut ids = vec![pad; b * s];
        let mut mask = vec![0f32; b * s];
        let mut dec = vec![pad; b * t];
        let mut labels = vec![pad; b * t];
        let mut lmask = vec![0f32; b * t];
        for (i, (x, y)) in inputs.iter().zip(targets).enumerate() {
            for (j, &tok) in x.iter().enumerate() {
                check_token(tok, cfg)?;
                ids[i * s + j] = tok;
                mask[i * s + j] = 1.0;
            }
            for (j, &tok) in y.iter().enumerate() {
                check_token(tok, cfg)?;
                labels[i * t + j] = tok;
                lmask[i * t + j] = 1.0;
                dec[i * t + j] = if j == 0 {
                    cfg.decoder_start_token_id
                } else {
                    y[j - 1]
                };
            }
        }
        Ok(Seq2SeqBatch {
            input_ids: Tensor::from_vec(ids, (b, s), device)?,
            attention_mask: Tensor::from_vec(mask, (b, s), device)?,
            decoder_input_ids: Tensor::from_vec(dec, (b, t), device)?,
            labels: Tensor::from_vec(labels, (b, t), device)?,
            label_mask: Tensor::from_vec(lmask, (b, t), device)?,
        })
    }
}

impl Seq2SeqBatch {
    /// From HF-style tensors: integer ids `[B, S]`, a 0/1 mask, decoder inputs
    /// `[B, T]` and labels `[B, T]` where negative values (HF's -100) are ignored.
    pub fn from_hf(
        input_ids: &Tensor,
        attention_mask: &Tensor,
        decoder_input_ids: &Tensor,
        labels: &Tensor,
    ) -> Result<Self> {
        let raw: Vec<Vec<i64>> = labels.to_dtype(DType::I64)?.to_vec2()?;
        let (b, t) = labels.dims2()?;
        let mut ids = Vec::with_capacity(b * t);
        let mut mask = Vec::with_capacity(b * t);
        for row in &raw {
            for &l in row {
                ids.push(l.max(0) as u32);
                mask.push(if l < 0 { 0f32 } else { 1.0 });
            }
        }
        let device = input_ids.device();
        Ok(Seq2SeqBatch {
            input_ids: input_ids.to_dtype(DType::U32)?,
            attention_mask: attention_mask.to_dtype(DType::F32)?,
            decoder_input_ids: decoder_input_ids.to_dtype(DType::U32)?,
            labels: Tensor::from_vec(ids, (b, t), device)?,
            label_mask: Tensor::from_vec(mask, (b, t), device)?,
        })
    }
}

/// A 0/1 mask tensor as one bool per element (row-major).
pub fn mask_rows(mask: &Tensor) -> Result<Vec<bool>> {
    Ok(mask
        .flatten_all()?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?
        .into_iter()
        .map(|m| m > 0.5)
        .collect())
}

fn check_token(tok: u32, cfg: &T5Config) -> Result<()> {
    if tok as usize >= cfg.vocab_size {
        return Err(ModelError::Input(format!(
            "token id {tok} is outside the vocabulary ({})",
            cfg.vocab_size
        )));
    }
    Ok(())
}

/// A T5 model: frozen base weights plus the adapters attached to its linears.
pub struct T5Model {
    pub config: T5Config,
    device: Device,
    dtype: DType,
    shared: Tensor,
    /// `[d_model, vocab]`: `lm_head^T`, or `shared^T` for tied models.
    head_t: Tensor,
    encoder: Stack,
    decoder: Stack,
    adapters: AdapterSet,
    routing_log: Option<Mutex<RoutingLog>>,
    tap: Option<ActivationTap>,
    dropout: Option<Dropout>,
}

impl T5Model {
    /// Builds the model from named tensors in HF naming, checking every name
    /// and shape first.
    pub fn from_store(config: &T5Config, store: &TensorStore, device: &Device, dtype: DType) -> Result<Self> {
        crate::process::alloc::tune_allocator_for_tensors();
        config.validate().map_err(|message| ModelError::Config {
            path: store.label().into(),
            message,
        })?;
        // Fail on the first missing or misshaped tensor before doing any work.
        let expected = expected_tensors(config);
        for (name, _) in &expected {
            if !store.contains(name) {
                return Err(ModelError::MissingTensor {
                    file: store.label().to_owned(),
                    name: name.clone(),
                });
            }
        }
        let get = |name: &str, shape: &[usize]| store.get(name, shape, dtype, device);
        let linear = |name: String, d_out: usize, d_in: usize| -> Result<Linear> {
            let w = get(&format!("{name}.weight"), &[d_out, d_in])?;
            Linear::from_torch_weight(name, &w)
        };
        let (dm, inner, dff) = (config.d_model, config.inner_dim(), config.d_ff);
        let attention = |prefix: String| -> Result<Attention> {
            Ok(Attention {
                q: linear(format!("{prefix}.q"), inner, dm)?,
                k: linear(format!("{prefix}.k"), inner, dm)?,
                v: linear(format!("{prefix}.v"), inner, dm)?,
                o: linear(format!("{prefix}.o"), dm, inner)?,
                heads: config.num_heads,
                d_kv: config.d_kv,
            })
        };
        let ffn = |prefix: String| -> Result<Ffn> {
            let kind = config.feed_forward;
            Ok(if kind.is_gated() {
                Ffn::Gated {
                    wi_0: linear(format!("{prefix}.DenseReluDense.wi_0"), dff, dm)?,
                    wi_1: linear(format!("{prefix}.DenseReluDense.wi_1"), dff, dm)?,
                    wo: linear(format!("{prefix}.DenseReluDense.wo"), dm, dff)?,
                    kind,
                }
            } else {
                Ffn::Single {
                    wi: linear(format!("{prefix}.DenseReluDense.wi"), dff, dm)?,
                    wo: linear(format!("{prefix}.DenseReluDense.wo"), dm, dff)?,
                    kind,
                }
            })
        };
        let norm = |name: String| get(&name, &[dm]);
        let rel_shape = [config.relative_attention_num_buckets, config.num_heads];
        let build_stack = |stack: &str, layers: usize, decoder: bool| -> Result<Stack> {
            let mut blocks = Vec::with_capacity(layers);
            for i in 0..layers {
                let p = format!("{stack}.block.{i}");
                let (cross, ffn_layer) = if decoder {
                    (
                        Some((
                            attention(format!("{p}.layer.1.EncDecAttention"))?,
                            norm(format!("{p}.layer.1.layer_norm.weight"))?,
                        )),
                        2,
                    )
                } else {
                    (None, 1)
                };
                blocks.push(Block {
                    self_attn: attention(format!("{p}.layer.0.SelfAttention"))?,
                    self_norm: norm(format!("{p}.layer.0.layer_norm.weight"))?,
                    cross,
                    ffn: ffn(format!("{p}.layer.{ffn_layer}"))?,
                    ffn_norm: norm(format!("{p}.layer.{ffn_layer}.layer_norm.weight"))?,
                });
            }
            let rel_bias = if layers > 0 {
                Some(get(
                    &format!("{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
                    &rel_shape,
                )?)
            } else {
                None
            };
            Ok(Stack {
                blocks,
                rel_bias,
                final_norm: norm(format!("{stack}.final_layer_norm.weight"))?,
            })
        };
        let shared = get("shared.weight", &[config.vocab_size, dm])?;
        let head = if config.tie_word_embeddings {
            shared.clone()
        } else {
            get("lm_head.weight", &[config.vocab_size, dm])?
        };
        Ok(T5Model {
            config: config.clone(),
            device: device.clone(),
            dtype,
            head_t: head.t()?.contiguous()?,
            shared,
            encoder: build_stack("encoder", config.num_layers, false)?,
            decoder: build_stack("decoder", config.num_decoder_layers, true)?,
            adapters: AdapterSet::new(),
            routing_log: None,
            tap: None,
            dropout: None,
        })
    }

    pub fn from_weights(weights: &T5Weights, device: &Device, dtype: DType) -> Result<Self> {
        let store = TensorStore::memory("<in-memory weights>", weights.tensors.clone());
        Self::from_store(&weights.config, &store, device, dtype)
    }

    /// A randomly initialised model (see [`T5Weights::init_random`]).
    pub fn init_random(config: &T5Config, seed: u64, device: &Device, dtype: DType) -> Result<Self> {
        Self::from_weights(&T5Weights::init_random(config, seed)?, device, dtype)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Replaces the attached adapters. Modules are checked by name so that a
    /// typo cannot silently leave a layer plain.
    pub fn set_adapters(&mut self, adapters: AdapterSet) -> Result<()> {
        let known: std::collections::HashSet<String> = crate::model::t5::names::adapted_linears(&self.config)
            .into_iter()
            .map(|s| s.name)
            .collect();
        if let Some(bad) = adapters.modules.keys().find(|k| !known.contains(*k)) {
            return Err(ModelError::adapter(
                bad.clone(),
                "no such adapted linear in this model",
            ));
        }
        self.adapters = adapters;
        Ok(())
    }

    pub fn adapters(&self) -> &AdapterSet {
        &self.adapters
    }

    pub fn clear_adapters(&mut self) {
        self.adapters = AdapterSet::new();
    }

    /// Starts recording routing decisions (counts per expert per module; the
    /// per-token choices too when `keep_choices`).
    pub fn start_routing_log(&mut self, keep_choices: bool) {
        self.start_routing_log_marked(keep_choices, None);
    }

    /// [`Self::start_routing_log`], also counting the tokens in `marked` apart.
    pub fn start_routing_log_marked(
        &mut self,
        keep_choices: bool,
        marked: Option<std::collections::HashSet<u32>>,
    ) {
        self.routing_log = Some(Mutex::new(RoutingLog {
            keep_choices,
            marked,
            ..Default::default()
        }));
    }

    /// Tells the routing log the token ids of the next encoder-side rows (when the
    /// encoder output was expanded, as choice scoring does, after the expansion).
    pub fn set_encoder_ids(&self, input_ids: &Tensor) -> Result<()> {
        if let Some(log) = &self.routing_log {
            let ids: Vec<u32> = input_ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1()?;
            if let Ok(mut log) = log.lock() {
                log.encoder_ids = Some(ids);
            }
        }
        Ok(())
    }

    /// Tells the routing log which rows of the next decoder inputs are real tokens
    /// (`[B * T]`, row-major); padding rows are not counted. No-op when not logging.
    pub fn set_decoder_rows(&self, rows: Option<Vec<bool>>) {
        if let Some(log) = &self.routing_log
            && let Ok(mut log) = log.lock()
        {
            log.decoder_rows = rows;
        }
    }

    /// The same for encoder-side inputs, from a 0/1 attention mask (or the rows set
    /// for this pass with [`Self::set_next_encoder_rows`]).
    fn set_encoder_rows(&self, attention_mask: &Tensor) -> Result<()> {
        if let Some(log) = &self.routing_log {
            let rows = mask_rows(attention_mask)?;
            if let Ok(mut log) = log.lock() {
                let rows = log.next_encoder_rows.take().unwrap_or(rows);
                log.encoder_rows = Some(rows);
            }
        }
        Ok(())
    }

    /// Which rows the next encoder pass counts, instead of its attention mask.
    pub fn set_next_encoder_rows(&self, rows: Vec<bool>) {
        if let Some(log) = &self.routing_log
            && let Ok(mut log) = log.lock()
        {
            log.next_encoder_rows = Some(rows);
        }
    }

    /// Stops recording and returns what was recorded.
    pub fn take_routing_log(&mut self) -> Option<RoutingLog> {
        self.routing_log
            .take()
            .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
    }

    /// Turns on dropout with `rate` at HF T5's places (embeddings, attention
    /// probabilities, sublayer outputs, FFN hidden, final norms), drawing masks
    /// from a stream seeded by `seed`. For training only: turn it off for
    /// evaluation and generation.
    pub fn enable_dropout(&mut self, rate: f64, seed: u64) -> Result<()> {
        self.dropout = Some(Dropout::new(rate, seed)?);
        Ok(())
    }

    /// Reseeds the dropout masks (Some) or pauses dropout (None) without `&mut`: a
    /// trainer switches between training micro-steps and validation this way.
    pub fn set_dropout_seed(&self, seed: Option<u64>) -> Result<()> {
        match &self.dropout {
            Some(d) => d.reseed(seed),
            None => Ok(()),
        }
    }

    pub fn disable_dropout(&mut self) {
        self.dropout = None;
    }

    fn drop(&self, x: Tensor) -> Result<Tensor> {
        crate::model::t5::dropout::maybe(self.dropout.as_ref(), x)
    }

    /// Attention biases and masks are added in the softmax's precision:
    /// f64 for f64 models, f32 otherwise (also for bf16, as HF does).
    fn bias_dtype(&self) -> DType {
        if self.dtype == DType::F64 {
            DType::F64
        } else {
            DType::F32
        }
    }

    /// The encoder's self-attention bias `[B, H, S, S]`: relative positions plus
    /// the key mask of `attention_mask` `[B, S]`.
    fn encoder_bias(&self, attention_mask: &Tensor, s: usize) -> Result<Tensor> {
        let mask = key_mask(attention_mask, self.bias_dtype())?;
        Ok(match &self.encoder.rel_bias {
            Some(rel) => position_bias(rel, 0, s, s, true, self.config.relative_attention_max_distance)?
                .to_dtype(self.bias_dtype())?
                .broadcast_add(&mask)?,
            None => mask,
        })
    }

    /// The decoder's self-attention bias `[1, H, T, offset + T]` for `t` positions
    /// after `offset` cached ones: relative positions plus the causal mask.
    fn decoder_self_bias(&self, offset: usize, t: usize) -> Result<Tensor> {
        let k_len = offset + t;
        let causal = causal_mask(offset, t, k_len, self.bias_dtype(), &self.device)?;
        Ok(match &self.decoder.rel_bias {
            Some(rel) => position_bias(
                rel,
                offset,
                t,
                k_len,
                false,
                self.config.relative_attention_max_distance,
            )?
            .to_dtype(self.bias_dtype())?
            .broadcast_add(&causal)?,
            None => causal,
        })
    }

    fn ctx(&self) -> AdapterCtx<'_> {
        AdapterCtx {
            adapters: &self.adapters,
            log: self.routing_log.as_ref(),
            tap: self.tap.as_ref(),
            dropout: self.dropout.as_ref(),
        }
    }

    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let flat = ids.flatten_all()?;
        Ok(self
            .shared
            .index_select(&flat, 0)?
            .reshape((b, t, self.config.d_model))?)
    }

    /// Encoder output `[B, S, d_model]` for `input_ids` `[B, S]` (u32) and a 0/1
    /// `attention_mask` `[B, S]`.
    pub fn encode(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let (b, s) = input_ids.dims2()?;
        if attention_mask.dims() != [b, s] {
            return Err(ModelError::Input(format!(
                "attention_mask has shape {:?}, input_ids {:?}",
                attention_mask.dims(),
                input_ids.dims()
            )));
        }
        self.set_encoder_rows(attention_mask)?;
        self.set_encoder_ids(input_ids)?;
        let ctx = self.ctx();
        let mut h = self.drop(self.embed(input_ids)?)?;
        let bias = self.encoder_bias(attention_mask, s)?;
        let eps = self.config.layer_norm_epsilon;
        for block in &self.encoder.blocks {
            let x = rms_norm(&h, &block.self_norm, eps)?;
            let (k, v) = block.self_attn.key_values(&x, ctx)?;
            h = (h + self.drop(block.self_attn.attend(&x, &k, &v, &bias, ctx)?)?)?;
            let x = rms_norm(&h, &block.ffn_norm, eps)?;
            h = (h + self.drop(block.ffn.forward(&x, ctx)?)?)?;
        }
        self.drop(rms_norm(&h, &self.encoder.final_norm, eps)?)
    }

    /// Prepares incremental decoding against an encoder output: computes every
    /// layer's cross-attention keys and values once.
    pub fn start_decoding(&self, encoder_out: &Tensor, attention_mask: &Tensor) -> Result<DecoderCache> {
        self.set_encoder_rows(attention_mask)?;
        let ctx = self.ctx();
        let mut cross_kv = Vec::with_capacity(self.decoder.blocks.len());
        for block in &self.decoder.blocks {
            let (attn, _) = block
                .cross
                .as_ref()
                .ok_or_else(|| ModelError::Input("decoder block without cross-attention".into()))?;
            cross_kv.push(attn.key_values(encoder_out, ctx)?);
        }
        Ok(DecoderCache {
            self_kv: vec![None; self.decoder.blocks.len()],
            cross_kv,
            cross_bias: key_mask(attention_mask, self.bias_dtype())?,
            len: 0,
        })
    }

    /// Runs the decoder on `ids` `[B, T]` placed after the `cache.len()`
    /// positions already in the cache, and returns logits `[B, T, vocab]`.
    /// Teacher forcing is one call on a fresh cache.
    pub fn decode_step(&self, ids: &Tensor, cache: &mut DecoderCache) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        if let Some(log) = &self.routing_log {
            let flat: Vec<u32> = ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1()?;
            if let Ok(mut log) = log.lock() {
                log.decoder_ids = Some(flat);
            }
        }
        let ctx = self.ctx();
        let offset = cache.len;
        let k_len = offset + t;
        let self_bias = self.decoder_self_bias(offset, t)?;
        let eps = self.config.layer_norm_epsilon;
        let mut h = self.drop(self.embed(ids)?)?;
        for (i, block) in self.decoder.blocks.iter().enumerate() {
            let x = rms_norm(&h, &block.self_norm, eps)?;
            let (k_new, v_new) = block.self_attn.key_values(&x, ctx)?;
            let (k, v) = match &cache.self_kv[i] {
                Some((k0, v0)) => (Tensor::cat(&[k0, &k_new], 2)?, Tensor::cat(&[v0, &v_new], 2)?),
                None => (k_new, v_new),
            };
            h = (h + self.drop(block.self_attn.attend(&x, &k, &v, &self_bias, ctx)?)?)?;
            cache.self_kv[i] = Some((k, v));
            let (cross, cross_norm) = block
                .cross
                .as_ref()
                .ok_or_else(|| ModelError::Input("decoder block without cross-attention".into()))?;
            let x = rms_norm(&h, cross_norm, eps)?;
            let (ck, cv) = &cache.cross_kv[i];
            h = (h + self.drop(cross.attend(&x, ck, cv, &cache.cross_bias, ctx)?)?)?;
            let x = rms_norm(&h, &block.ffn_norm, eps)?;
            h = (h + self.drop(block.ffn.forward(&x, ctx)?)?)?;
        }
        cache.len = k_len;
        let mut h = self.drop(rms_norm(&h, &self.decoder.final_norm, eps)?)?;
        if let Some(scale) = self.config.decoder_output_scale() {
            h = (h * scale)?;
        }
        let (b, t, d) = h.dims3()?;
        let h = h.reshape((b * t, d))?;
        Ok(
            crate::kernels::frozen_matmul::frozen_matmul(&h, &self.head_t)?.reshape((
                b,
                t,
                self.config.vocab_size,
            ))?,
        )
    }

    /// Teacher-forced logits `[B, T, vocab]`.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        decoder_input_ids: &Tensor,
    ) -> Result<Tensor> {
        let enc = self.encode(input_ids, attention_mask)?;
        let mut cache = self.start_decoding(&enc, attention_mask)?;
        self.decode_step(decoder_input_ids, &mut cache)
    }

    /// Adds, for every adapted linear, each example's masked mean input
    /// activation (teacher-forced; encoder-side inputs masked by the input
    /// mask, decoder-side ones by the label mask) to `log`. Averaging these
    /// over an expert's data gives the "average activation" router embeddings.
    pub fn accumulate_mean_activations(
        &mut self,
        batch: &Seq2SeqBatch,
        log: &mut ActivationLog,
    ) -> Result<()> {
        let per_example = |mask: &Tensor| -> Result<Tensor> {
            let m = mask.to_dtype(DType::F64)?;
            let len = m.sum_keepdim(1)?.clamp(1.0, f64::INFINITY)?;
            Ok(m.broadcast_div(&len)?.flatten_all()?)
        };
        let shared = std::sync::Arc::new(Mutex::new(std::mem::take(log)));
        self.tap = Some(ActivationTap {
            encoder_rows: per_example(&batch.attention_mask)?,
            decoder_rows: per_example(&batch.label_mask)?,
            log: shared.clone(),
        });
        let result = self.forward(&batch.input_ids, &batch.attention_mask, &batch.decoder_input_ids);
        self.tap = None;
        let mut inner = match std::sync::Arc::try_unwrap(shared) {
            Ok(m) => m.into_inner().unwrap_or_else(|p| p.into_inner()),
            Err(arc) => arc.lock().map(|g| g.clone()).unwrap_or_default(),
        };
        result?;
        inner.examples += batch.input_ids.dims()[0] as u64;
        *log = inner;
        Ok(())
    }

    /// Mean cross-entropy over the target positions with `label_mask == 1`
    /// (HF's loss with `-100` labels). Differentiable.
    pub fn forward_loss(&self, batch: &Seq2SeqBatch) -> Result<Tensor> {
        let logits = self.forward(&batch.input_ids, &batch.attention_mask, &batch.decoder_input_ids)?;
        let (nll, mask) = token_nll(&logits, &batch.labels, &batch.label_mask)?;
        let count = mask.sum_all()?;
        Ok(nll.mul(&mask)?.sum_all()?.div(&count)?)
    }
}

/// Per-position negative log-likelihood `[B, T]` of `labels` under `logits`
/// `[B, T, V]`, in at least f32, with the mask cast to the same dtype.
pub fn token_nll(logits: &Tensor, labels: &Tensor, label_mask: &Tensor) -> Result<(Tensor, Tensor)> {
    let (b, t, v) = logits.dims3()?;
    if labels.dims() != [b, t] || label_mask.dims() != [b, t] {
        return Err(ModelError::Input(format!(
            "labels {:?} / label_mask {:?} do not match logits {:?}",
            labels.dims(),
            label_mask.dims(),
            logits.dims()
        )));
    }
    let compute = if logits.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let nll = crate::kernels::fused::cross_entropy::cross_entropy(
        &logits.to_dtype(compute)?.reshape((b * t, v))?,
        &labels.reshape(b * t)?,
    )?
    .reshape((b, t))?;
    Ok((nll, label_mask.to_dtype(compute)?))
}
