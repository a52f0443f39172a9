//! The ML core: a T5 encoder-decoder in candle with adapter-aware linears
//! (LoRA, gated LoRA, fixed and routed mixtures of LoRA experts), numerically
//! equal to Hugging Face transformers (tests/model_parity.rs).
//!
//! Folders: `t5/` (the model, its layers, config, tensor names, generation,
//! dropout), `checkpoint/` (reading and writing weights, expert and gate
//! files), `adapter/` (adapters, pools, trainable LoRA and gates),
//! `router.rs` (per-token expert choice; its CPU kernels are in
//! `crate::kernels`), `device.rs`, `error.rs`.
//!
//! Map for the other layers:
//! - Load: [`T5Model::load`] (HF folder: safetensors, shards or pickle),
//!   [`crate::hub::resolve_model`] (repo id through the HF cache), or
//!   [`T5Model::init_random`] / [`T5Weights::init_random`] + `save_pretrained`
//!   for a from-scratch model. [`checkpoint::load::load_tokenizer`] for `tokenizer.json`.
//! - Train an expert: [`adapter::trainable::new_trainable_lora`] puts `Var`s named
//!   `<module>.lora_A/B` into a `VarMap` and returns an [`AdapterSet`] for
//!   [`T5Model::set_adapters`]; optimise `varmap.all_vars()` on
//!   [`T5Model::forward_loss`] of a [`Seq2SeqBatch`] (or take loss and LoRA
//!   gradients at once from [`T5Model::lora_loss_and_grads`], the hand-written
//!   backward pass, where it applies); snapshot with
//!   [`adapter::trainable::lora_expert_from`] and [`LoraExpert::save`]. Dropout:
//!   [`T5Model::enable_dropout`].
//! - Train gates: [`adapter::trainable::new_trainable_gates`] on a frozen
//!   [`LoraExpert`]; save with [`adapter::trainable::gates_from`] + [`GateVectors::save`].
//! - Route/merge: [`AdapterSet::phatgoose`], [`AdapterSet::routed`] (any router
//!   embeddings, [`Scoring::Standardized`] or [`Scoring::Arrow`]),
//!   [`AdapterSet::mixture`] (uniform merge, or per-example one-hot for
//!   retrieval), [`AdapterSet::from_lora`] / [`AdapterSet::from_gated`].
//!   Routing analysis: [`T5Model::start_routing_log`]. Average-activation
//!   embeddings: [`T5Model::accumulate_mean_activations`].
//! - Retrieval: [`crate::embed::sentence::SentenceEmbedder`] (sentence-transformers style mean
//!   pooling on the compact [`crate::embed::bert::Bert`]), e.g. all-MiniLM-L6-v2.
//! - Evaluate: [`T5Model::score_choices`] + [`predict`] (rank classification),
//!   [`T5Model::generate_greedy`] (KV cache), `crate::app::score` (the CLI's `goosepipe score`).
//!
//! Experts are always ordered by name inside a pool, so routing ties and
//! mixture weights never depend on listing order.

pub mod adapter;
pub mod checkpoint;
pub mod device;
pub mod error;
pub mod router;
pub mod t5;

pub use adapter::{
    ActivationLog, AdapterSet, ExpertStack, Linear, LoraWeights, MixWeights, ModuleAdapter, RoutingLog,
};
pub use checkpoint::expert_file::{GateVectors, LoraExpert};
pub use checkpoint::tensor_store::TensorStore;
pub use checkpoint::weights::T5Weights;
pub use error::{ModelError, Result};
pub use router::{Router, Routing, Scoring};
pub use t5::config::{FeedForward, T5Config};
pub use t5::generate::{ChoiceItem, ChoiceScore, predict};
pub use t5::names::{LinearSite, adapted_linears};
pub use t5::{DecoderCache, Seq2SeqBatch, T5Model};
