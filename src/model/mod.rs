//! The ML core: a T5 encoder-decoder in candle with adapter-aware linears
//! (LoRA, gated LoRA, fixed and routed mixtures of LoRA experts), numerically
//! equal to Hugging Face transformers (tests/model_parity.rs).
//!
//! Map for the other layers:
//! - Load: [`T5Model::load`] (HF folder: safetensors, shards or pickle),
//!   [`hub::resolve_model`] (repo id through the HF cache), or
//!   [`T5Model::init_random`] / [`T5Weights::init_random`] + `save_pretrained`
//!   for a from-scratch model. [`load::load_tokenizer`] for `tokenizer.json`.
//! - Train an expert: [`trainable::new_trainable_lora`] puts `Var`s named
//!   `<module>.lora_A/B` into a `VarMap` and returns an [`AdapterSet`] for
//!   [`T5Model::set_adapters`]; optimise `varmap.all_vars()` on
//!   [`T5Model::forward_loss`] of a [`Seq2SeqBatch`]; snapshot with
//!   [`trainable::lora_expert_from`] and [`LoraExpert::save`]. Dropout:
//!   [`T5Model::enable_dropout`].
//! - Train gates: [`trainable::new_trainable_gates`] on a frozen
//!   [`LoraExpert`]; save with [`trainable::gates_from`] + [`GateVectors::save`].
//! - Route/merge: [`AdapterSet::phatgoose`], [`AdapterSet::routed`] (any router
//!   embeddings, [`Scoring::Standardized`] or [`Scoring::Arrow`]),
//!   [`AdapterSet::mixture`] (uniform merge, or per-example one-hot for
//!   retrieval), [`AdapterSet::from_lora`] / [`AdapterSet::from_gated`].
//!   Routing analysis: [`T5Model::start_routing_log`]. Average-activation
//!   embeddings: [`T5Model::accumulate_mean_activations`].
//! - Retrieval: [`sentence::SentenceEmbedder`] (sentence-transformers style mean
//!   pooling on the compact [`bert::Bert`]), e.g. all-MiniLM-L6-v2.
//! - Evaluate: [`T5Model::score_choices`] + [`predict`] (rank classification),
//!   [`T5Model::generate_greedy`] (KV cache), [`score::score`] (the CLI's
//!   `goosepipe score`).
//!
//! Experts are always ordered by name inside a pool, so routing ties and
//! mixture weights never depend on listing order.

pub mod adapter;
pub mod alloc;
pub mod attention;
pub mod bert;
pub mod config;
pub mod dropout;
pub mod encoder_embedder;
pub mod error;
pub mod expert_file;
pub mod ffn;
pub mod frozen_matmul;
pub mod fused;
pub mod generate;
pub mod hub;
pub(crate) mod hub_watch;
pub mod load;
pub mod names;
pub mod norm;
pub mod pool;
pub mod position_bias;
pub mod rng;
#[cfg(target_arch = "x86_64")]
mod routed_avx512;
pub mod routed_cpu;
pub mod routing;
#[cfg(target_arch = "x86_64")]
mod routing_amx;
#[cfg(target_arch = "x86_64")]
mod routing_avx512;
mod routing_cpu;
pub mod score;
pub mod sentence;
pub mod st_io;
pub mod store;
pub mod t5;
pub mod threads;
pub mod trainable;
pub mod weights;

pub use adapter::{
    ActivationLog, AdapterSet, ExpertStack, Linear, LoraWeights, MixWeights, ModuleAdapter, RoutingLog,
};
pub use config::{FeedForward, T5Config};
pub use error::{ModelError, Result};
pub use expert_file::{GateVectors, LoraExpert};
pub use generate::{ChoiceItem, ChoiceScore, predict};
pub use names::{LinearSite, adapted_linears};
pub use routing::{Router, Routing, Scoring};
pub use score::{ScoreReport, ScoreRequest, render_text, score};
pub use store::TensorStore;
pub use t5::{DecoderCache, Seq2SeqBatch, T5Model};
pub use weights::T5Weights;
