//! The ML core: a T5 encoder-decoder in candle with adapter-aware linears
//! (LoRA, gated LoRA, fixed and routed mixtures of LoRA experts), numerically
//! equal to Hugging Face transformers.

pub mod adapter;
pub mod alloc;
pub mod attention;
pub mod config;
pub mod dropout;
pub mod error;
pub mod expert_file;
pub mod ffn;
pub mod generate;
pub mod hub;
pub mod load;
pub mod names;
pub mod norm;
pub mod pool;
pub mod position_bias;
pub mod rng;
pub mod routed_cpu;
pub mod routing;
pub mod score;
pub mod st_io;
pub mod store;
pub mod t5;
pub mod trainable;
pub mod weights;

pub use adapter::{
    ActivationLog, AdapterSet, ExpertStack, Linear, LoraWeights, MixWeights, ModuleAdapter,
    RoutingLog,
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
