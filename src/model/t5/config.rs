//! T5 hyper-parameters, read from a Hugging Face `config.json` or built by hand.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::model::error::{ModelError, Result};

/// Activation of the feed-forward block. `Gated*` variants use two input
/// projections (`wi_0`, `wi_1`) and multiply them; the others use one (`wi`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FeedForward {
    Relu,
    /// Exact (erf) GELU, HF `"gelu"`.
    Gelu,
    Silu,
    GatedRelu,
    /// HF maps `"gated-gelu"` to `gelu_new`, the tanh approximation.
    GatedGelu,
    GatedSilu,
}

impl FeedForward {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "relu" => FeedForward::Relu,
            "gelu" => FeedForward::Gelu,
            "silu" => FeedForward::Silu,
            "gated-relu" => FeedForward::GatedRelu,
            "gated-gelu" | "gated-gelu_new" => FeedForward::GatedGelu,
            "gated-silu" => FeedForward::GatedSilu,
            _ => return None,
        })
    }

    pub fn as_hf_str(self) -> &'static str {
        match self {
            FeedForward::Relu => "relu",
            FeedForward::Gelu => "gelu",
            FeedForward::Silu => "silu",
            FeedForward::GatedRelu => "gated-relu",
            FeedForward::GatedGelu => "gated-gelu",
            FeedForward::GatedSilu => "gated-silu",
        }
    }

    pub fn is_gated(self) -> bool {
        matches!(
            self,
            FeedForward::GatedRelu | FeedForward::GatedGelu | FeedForward::GatedSilu
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_decoder_layers: usize,
    pub num_heads: usize,
    pub relative_attention_num_buckets: usize,
    pub relative_attention_max_distance: usize,
    pub layer_norm_epsilon: f64,
    pub feed_forward: FeedForward,
    pub pad_token_id: u32,
    pub eos_token_id: u32,
    pub decoder_start_token_id: u32,
    /// The LM head reuses `shared.weight`. Decided by the checkpoint (absence of
    /// `lm_head.weight`), not by the config, because transformers 5 always writes
    /// `tie_word_embeddings: true`.
    pub tie_word_embeddings: bool,
    /// Multiply the decoder output by `d_model^-0.5` before the head.
    pub scale_decoder_outputs: bool,
}

fn field<'a>(v: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    v.get(key).filter(|x| !x.is_null())
}

impl T5Config {
    /// The factor on the decoder output before the head, `d_model^-0.5`, where
    /// the config scales it (`scale_decoder_outputs`, as a tied T5 does).
    pub fn decoder_output_scale(&self) -> Option<f64> {
        self.scale_decoder_outputs
            .then(|| (self.d_model as f64).powf(-0.5))
    }

    /// A small T5.1.1-style config (gated-GELU, untied head); handy for tests and
    /// for quickstart pipelines that train from scratch.
    pub fn tiny_v1_1(vocab_size: usize, d_model: usize, num_layers: usize) -> Self {
        let num_heads = 4.min(d_model).max(1);
        T5Config {
            vocab_size,
            d_model,
            d_kv: d_model / num_heads,
            d_ff: d_model * 2,
            num_layers,
            num_decoder_layers: num_layers,
            num_heads,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward: FeedForward::GatedGelu,
            pad_token_id: 0,
            eos_token_id: 1,
            decoder_start_token_id: 0,
            tie_word_embeddings: false,
            scale_decoder_outputs: false,
        }
    }

    pub fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }

    /// Parameters of the whole model (embeddings, untied head, every linear and norm),
    /// in u128 so absurd sizes from a manifest cannot overflow.
    pub fn parameter_count(&self) -> u128 {
        let (d, inner, ff) = (self.d_model as u128, self.inner_dim() as u128, self.d_ff as u128);
        let ffn = if self.feed_forward.is_gated() { 3 } else { 2 } * d * ff;
        let attention = 4 * d * inner;
        let bias = (self.relative_attention_num_buckets * self.num_heads) as u128;
        let encoder = self.num_layers as u128 * (attention + ffn + 2 * d) + bias + d;
        let decoder = self.num_decoder_layers as u128 * (2 * attention + ffn + 3 * d) + bias + d;
        let head = if self.tie_word_embeddings { 0 } else { 1 };
        (1 + head) * self.vocab_size as u128 * d + encoder + decoder
    }

    /// Bytes that scoring one pair of `input` and `target` tokens in f32 holds at least:
    /// the weights, and one layer's attention at a time, whose score matrices grow with
    /// the square of the length (the scores, their softmax and the position bias held
    /// together: three per head). Activations of width d_model and d_ff are small
    /// beside them at the lengths where this matters.
    pub fn scoring_bytes(&self, input: usize, target: usize) -> u128 {
        let (i, t, h) = (input as u128, target as u128, self.num_heads as u128);
        let attention = 3 * h * (i * i + t * t + i * t);
        let activations = (i + t) * (self.d_model as u128 * 4 + self.d_ff as u128 * 2);
        4 * (self.parameter_count() + attention + activations)
    }

    /// Bytes that training every parameter in f32 holds at least: weights, gradients
    /// and AdamW's two moments (activations come on top).
    pub fn training_bytes(&self) -> u128 {
        16 * self.parameter_count()
    }

    /// Parses an HF `config.json`. `has_lm_head` says whether the checkpoint has a
    /// separate `lm_head.weight`; pass `None` to trust the config's tie flag.
    pub fn from_json_str(text: &str, path: &Path, has_lm_head: Option<bool>) -> Result<Self> {
        let bad = |message: String| ModelError::Config {
            path: path.to_path_buf(),
            message,
        };
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
        // Another architecture's config whose field names happen to be there (or be
        // defaulted) would load as a T5 that is no model at all.
        if let Some(kind) = field(&v, "model_type")
            && !matches!(kind.as_str(), Some("t5" | "mt5"))
        {
            return Err(bad(format!(
                "model_type is {kind}: goosepipe runs T5 models (model_type \"t5\" or \"mt5\")"
            )));
        }
        let usize_of = |key: &str| -> Result<Option<usize>> {
            match field(&v, key) {
                None => Ok(None),
                Some(x) => x
                    .as_u64()
                    .map(|n| Some(n as usize))
                    .ok_or_else(|| bad(format!("`{key}` must be a non-negative integer, got {x}"))),
            }
        };
        let need = |key: &str| -> Result<usize> {
            usize_of(key)?.ok_or_else(|| bad(format!("missing required field `{key}`")))
        };
        let d_model = need("d_model")?;
        let num_layers = need("num_layers")?;
        let num_heads = need("num_heads")?;
        let ff_text = field(&v, "feed_forward_proj")
            .map(|x| {
                x.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| bad(format!("`feed_forward_proj` must be a string, got {x}")))
            })
            .transpose()?
            .unwrap_or_else(|| "relu".to_owned());
        let feed_forward = FeedForward::parse(&ff_text)
            .ok_or_else(|| bad(format!("unsupported feed_forward_proj `{ff_text}`")))?;
        let bool_of = |key: &str| -> Result<Option<bool>> {
            match field(&v, key) {
                None => Ok(None),
                Some(x) => x
                    .as_bool()
                    .map(Some)
                    .ok_or_else(|| bad(format!("`{key}` must be a boolean, got {x}"))),
            }
        };
        let tie_flag = bool_of("tie_word_embeddings")?.unwrap_or(true);
        // transformers 5 writes tie_word_embeddings=true always and keeps the real
        // "scale like a tied model" flag in scale_decoder_outputs.
        let scale_decoder_outputs = bool_of("scale_decoder_outputs")?.unwrap_or(tie_flag);
        let tie_word_embeddings = match has_lm_head {
            Some(has) => !has,
            None => tie_flag,
        };
        let eps = match field(&v, "layer_norm_epsilon") {
            None => 1e-6,
            Some(x) => x
                .as_f64()
                .ok_or_else(|| bad(format!("`layer_norm_epsilon` must be a number, got {x}")))?,
        };
        // Not cut to 32 bits: 2^32 would read as id 0 and pass the vocabulary check.
        let id = |key: &str, default: u32| -> Result<u32> {
            usize_of(key)?.map_or(Ok(default), |n| {
                u32::try_from(n).map_err(|_| bad(format!("`{key}` {n} is outside any vocabulary")))
            })
        };
        let pad_token_id = id("pad_token_id", 0)?;
        let cfg = T5Config {
            vocab_size: need("vocab_size")?,
            d_model,
            d_kv: usize_of("d_kv")?.unwrap_or(d_model / num_heads.max(1)),
            d_ff: need("d_ff")?,
            num_layers,
            num_decoder_layers: usize_of("num_decoder_layers")?.unwrap_or(num_layers),
            num_heads,
            relative_attention_num_buckets: usize_of("relative_attention_num_buckets")?.unwrap_or(32),
            relative_attention_max_distance: usize_of("relative_attention_max_distance")?.unwrap_or(128),
            layer_norm_epsilon: eps,
            feed_forward,
            pad_token_id,
            eos_token_id: id("eos_token_id", 1)?,
            decoder_start_token_id: id("decoder_start_token_id", pad_token_id)?,
            tie_word_embeddings,
            scale_decoder_outputs,
        };
        cfg.validate().map_err(bad)?;
        Ok(cfg)
    }

    pub fn from_file(path: &Path, has_lm_head: Option<bool>) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_json_str(&text, path, has_lm_head)
    }

    /// Checks the relations between fields that the forward pass relies on.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_heads", self.num_heads),
            ("num_layers", self.num_layers),
            ("num_decoder_layers", self.num_decoder_layers),
            (
                "relative_attention_num_buckets",
                self.relative_attention_num_buckets,
            ),
        ];
        for (k, n) in positive {
            if n == 0 {
                return Err(format!("`{k}` must be positive"));
            }
        }
        if self.relative_attention_num_buckets < 4 {
            return Err("`relative_attention_num_buckets` must be at least 4".into());
        }
        // Far above any T5 (XXL: 24 layers, 64 heads, d_ff 10240; mT5's vocabulary
        // 250,112): a config.json past them is damaged, and loading it would allocate
        // by these numbers before any tensor is read (a layer count of 10^12 ran the
        // machine out of memory).
        let at_most = [
            ("num_layers", self.num_layers, 1024),
            ("num_decoder_layers", self.num_decoder_layers, 1024),
            ("num_heads", self.num_heads, 4096),
            ("d_model", self.d_model, 1 << 17),
            ("d_kv", self.d_kv, 1 << 16),
            ("d_ff", self.d_ff, 1 << 20),
            ("vocab_size", self.vocab_size, 1 << 24),
            (
                "relative_attention_num_buckets",
                self.relative_attention_num_buckets,
                1 << 16,
            ),
            (
                "relative_attention_max_distance",
                self.relative_attention_max_distance,
                1 << 24,
            ),
        ];
        for (k, n, max) in at_most {
            if n > max {
                return Err(format!(
                    "`{k}` {n} is more than any T5 has (at most {max} is read)"
                ));
            }
        }
        if self.relative_attention_max_distance * 2 <= self.relative_attention_num_buckets {
            return Err("`relative_attention_max_distance` must exceed half the bucket count".into());
        }
        for (k, id) in [
            ("pad_token_id", self.pad_token_id),
            ("eos_token_id", self.eos_token_id),
            ("decoder_start_token_id", self.decoder_start_token_id),
        ] {
            if id as usize >= self.vocab_size {
                return Err(format!(
                    "`{k}` {id} is outside the vocabulary ({})",
                    self.vocab_size
                ));
            }
        }
        if self.layer_norm_epsilon.is_nan() || self.layer_norm_epsilon <= 0.0 {
            return Err("`layer_norm_epsilon` must be positive".into());
        }
        Ok(())
    }

    /// The config as HF `config.json` (transformers-5 style: the tie flag is
    /// written as `scale_decoder_outputs`, the head's presence decides tying).
    pub fn to_hf_json(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["T5ForConditionalGeneration"],
            "model_type": "t5",
            "vocab_size": self.vocab_size,
            "d_model": self.d_model,
            "d_kv": self.d_kv,
            "d_ff": self.d_ff,
            "num_layers": self.num_layers,
            "num_decoder_layers": self.num_decoder_layers,
            "num_heads": self.num_heads,
            "relative_attention_num_buckets": self.relative_attention_num_buckets,
            "relative_attention_max_distance": self.relative_attention_max_distance,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "feed_forward_proj": self.feed_forward.as_hf_str(),
            "dropout_rate": 0.0,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": self.eos_token_id,
            "decoder_start_token_id": self.decoder_start_token_id,
            "tie_word_embeddings": self.tie_word_embeddings,
            "scale_decoder_outputs": self.scale_decoder_outputs,
            "is_encoder_decoder": true,
        })
    }
}

#[cfg(test)]
mod tests {
    // By its full path: `super::*` reads as an import of the t5 module, which
    // imports this one (tests/layers.rs sees a circle).
    use crate::model::t5::config::T5Config;
    use std::path::Path;

    fn parsed(edit: impl Fn(&mut serde_json::Value)) -> std::result::Result<T5Config, String> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/t5/v1_1/config.json");
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        edit(&mut v);
        T5Config::from_json_str(&v.to_string(), &path, None).map_err(|e| e.to_string())
    }

    /// A damaged config.json is refused by its field, before loading allocates by it
    /// (10^12 layers ran out of memory) or cuts a token id to 32 bits (2^32 read as 0).
    #[test]
    fn sizes_past_any_t5_and_ids_past_32_bits_are_refused_by_name() {
        assert!(parsed(|_| {}).is_ok());
        let err = parsed(|v| v["num_layers"] = 1_000_000_000_000u64.into()).unwrap_err();
        assert!(
            err.contains("`num_layers` 1000000000000 is more than any T5 has"),
            "{err}"
        );
        let err = parsed(|v| v["eos_token_id"] = 4_294_967_297u64.into()).unwrap_err();
        assert!(
            err.contains("`eos_token_id` 4294967297 is outside any vocabulary"),
            "{err}"
        );
        let err = parsed(|v| v["relative_attention_max_distance"] = (1u64 << 63).into()).unwrap_err();
        assert!(err.contains("`relative_attention_max_distance`"), "{err}");
    }

    /// Another architecture's config, or a T5 of no layers, loaded as a T5 (what the
    /// weights held beyond it was left unread).
    #[test]
    fn other_architectures_and_empty_stacks_are_refused() {
        let err = parsed(|v| v["model_type"] = "bert".into()).unwrap_err();
        assert!(
            err.contains("model_type is \"bert\": goosepipe runs T5 models"),
            "{err}"
        );
        assert!(parsed(|v| v["model_type"] = "mt5".into()).is_ok());
        let err = parsed(|v| v["num_layers"] = 0.into()).unwrap_err();
        assert!(err.contains("`num_layers` must be positive"), "{err}");
    }
}
