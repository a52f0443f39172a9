//! The `retrieval-index` step (one per expert): the expert's retrieval library,
//! i.e. up to `examples` (default 1000) of its dataset's training examples
//! (sampled with seed 42) embedded with the sentence embedder `embedder` (default
//! sentence-transformers/all-MiniLM-L6-v2; a hub id or a local folder).
//!
//! Output: `library.safetensors` with `embeddings` `[n, dim]` (unit rows).
//! The eval embeds each query the same way and gives the whole example to the
//! expert whose library holds the highest cosine (`route::retrieval`).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::common::{device, examples, fail};
use crate::data::Example;
use crate::embed::base_encoder::EncoderEmbedder;
use crate::embed::sentence::{SentenceEmbedder, resolve_embedder};
use crate::exec::{JobDefaults, Kind, StepContext, StepError, StepRunner};
use crate::hub::HubOptions;
use crate::plan::{MemberData, Needed};
use crate::route::retrieval::BASE_ENCODER;
use crate::store::External;

pub use crate::artifact_files::LIBRARY_FILE;
pub const DEFAULT_EMBEDDER: &str = "sentence-transformers/all-MiniLM-L6-v2";
const SEED: u64 = 42;
const BATCH: usize = 32;

/// A sentence embedder over one member's training examples: small enough for CPUs.
pub const KIND: Kind = Kind {
    needed: Some(Needed::PerMember {
        settings: &[("examples", "retrieval-examples"), ("embedder", "embedder")],
        data: MemberData::Examples,
        expert: false,
        model: false,
        embedder: Some(("embedder", BASE_ENCODER)),
    }),
    ..Kind::new("retrieval-index", 1, 6, JobDefaults::new(0, 4, "8G", "1:00:00"))
};

pub struct RetrievalIndexStep;

/// The text retrieval embeds for an example (METHOD.md section 4):
/// `Answer Choices: c1, c2, ..., Instance: input`, with `None` for no choices.
pub fn retrieval_text(e: &Example) -> String {
    let choices = if e.choices.is_empty() {
        "None".to_string()
    } else {
        e.choices.join(", ")
    };
    format!("Answer Choices: {choices}, Instance: {}", e.input)
}

/// What retrieval embeds with.
pub enum Embedder {
    Sentence(Box<SentenceEmbedder>),
    BaseEncoder(Box<EncoderEmbedder>),
}

impl Embedder {
    pub fn dim(&self) -> usize {
        match self {
            Embedder::Sentence(e) => e.dim(),
            Embedder::BaseEncoder(e) => e.dim(),
        }
    }

    pub fn embed(&self, texts: &[String], batch: usize) -> crate::model::Result<Tensor> {
        match self {
            Embedder::Sentence(e) => e.embed(texts, batch),
            Embedder::BaseEncoder(e) => e.embed(texts, batch),
        }
    }
}

/// Loads the step's embedder: the base model's encoder (`base-encoder`, from the
/// step's `model` input), else its keyed external (a hashed local folder, or a hub
/// repo at the commit the lockfile pins, which it records), else the `spec` name.
pub fn load_embedder(ctx: &StepContext, spec: &str, dev: &Device) -> Result<Embedder, StepError> {
    if spec == BASE_ENCODER {
        let base = super::common::load_base(ctx, dev)?;
        return Ok(Embedder::BaseEncoder(Box::new(EncoderEmbedder::new(
            base.model,
            base.tokenizer,
        ))));
    }
    let dir = match ctx.spec.externals.iter().find(|e| e.role() == "embedder") {
        Some(External::Path { path, .. }) => std::path::PathBuf::from(path),
        Some(ext @ External::Hub { .. }) => {
            super::common::resolve_pinned(ctx, ext, |repo, rev, opts, _| {
                crate::hub::resolve_model(repo, rev, opts)
            })?
            .0
        }
        None => resolve_embedder(spec, &HubOptions::default()).map_err(fail)?,
    };
    SentenceEmbedder::load(&dir, dev)
        .map(|e| Embedder::Sentence(Box::new(e)))
        .map_err(fail)
}

/// Unit-length embeddings of the examples' retrieval texts.
pub fn embed_examples(emb: &Embedder, ex: &[Example]) -> Result<Tensor, StepError> {
    let texts: Vec<String> = ex.iter().map(retrieval_text).collect();
    emb.embed(&texts, BATCH).map_err(fail)
}

pub fn save_library(path: &Path, embeddings: &Tensor, embedder: &str) -> Result<(), StepError> {
    let meta = HashMap::from([
        ("format".to_owned(), "pt".to_owned()),
        ("goosepipe.kind".to_owned(), "retrieval-library".to_owned()),
        ("goosepipe.embedder".to_owned(), embedder.to_owned()),
    ]);
    crate::model::checkpoint::st_io::save_with_metadata(
        path,
        &[("embeddings".to_string(), embeddings.clone())],
        meta,
    )
    .map_err(fail)
}

pub fn load_library(path: &Path, dim: usize, dev: &Device) -> Result<Tensor, StepError> {
    let t = candle_core::safetensors::load(path, dev)
        .map_err(|e| fail(format!("{}: {e}", path.display())))?
        .remove("embeddings")
        .ok_or_else(|| fail(format!("{}: no `embeddings` tensor", path.display())))?;
    match t.dims() {
        [_, d] if *d == dim => t.to_dtype(DType::F32).map_err(fail),
        other => Err(fail(format!(
            "{}: embeddings have shape {other:?}, the embedder gives {dim}-d vectors (built with another embedder?)",
            path.display()
        ))),
    }
}

impl StepRunner for RetrievalIndexStep {
    fn kind(&self) -> &'static str {
        "retrieval-index"
    }
    fn run(&self, ctx: &StepContext) -> Result<(), StepError> {
        let dev = device(ctx)?;
        let n = ctx.params::<super::average_activation::ExamplesParam>()?.examples;
        let spec = ctx
            .param("embedder")
            .and_then(|v| v.as_str())
            .unwrap_or(DEFAULT_EMBEDDER)
            .to_string();
        // `examples` refuses a dataset without training examples, naming it.
        let (mut train, _) = examples(ctx.input("data")?)?;
        if train.len() > n {
            train.shuffle(&mut ChaCha8Rng::seed_from_u64(SEED));
            train.truncate(n);
        }
        ctx.cancel.check()?;
        ctx.progress
            .log(&format!("embedding {} examples with {spec}", train.len()));
        let emb = load_embedder(ctx, &spec, &dev)?;
        let lib = embed_examples(&emb, &train)?;
        ctx.cancel.check()?;
        save_library(&ctx.out.join(LIBRARY_FILE), &lib, &spec)
    }
}
