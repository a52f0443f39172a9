//! The `average-activation` step (one per expert): the expert's router embedding
//! at every adapted module is the mean input activation of that module over up to
//! `examples` (default 1000) of the expert's own training examples (seeded sample),
//! with the expert's LoRA active. As in the paper's code (METHOD.md section 4),
//! activations are collected while generating greedily (at most 20 tokens):
//! encoder modules and cross-attention k/v contribute each example's masked mean
//! over its real input tokens; the other decoder modules (self-attention, cross-
//! attention q/o, FFN) contribute the activation at the example's last decoding
//! step. Examples are then averaged. (The paper overwrote one global value per
//! decoding step of a whole batch, so finished rows there saw pad steps; here each
//! example's own last step counts, independent of batching.)
//!
//! Output: `embeddings.safetensors` in the gate-vector layout (`<module>.gate`
//! `[d_in]`), so the eval routes with it exactly like PHATGOOSE.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::common::{device, fail, load_base};
use super::expert::load_expert;
use crate::data::tokens::TokenPair;
use crate::exec::{JobDefaults, Kind, StepContext, StepError, StepRunner};
use crate::model::{ActivationLog, AdapterSet, GateVectors, LoraExpert, Seq2SeqBatch, T5Model};
use crate::plan::{MemberData, Needed};
use crate::train::Pair;

pub use crate::artifact_files::EMBEDDINGS_FILE;
/// The paper's input length limit.
const MAX_LEN: usize = 512;
/// The paper's generation limit while collecting activations.
pub const GEN_TOKENS: usize = 20;
const BATCH: usize = 8;
const SEED: u64 = 42;

/// Forward passes of the base with one LoRA over its training inputs, one step per
/// pool member for the methods that need it. Version 4: the file no longer records
/// the step's name.
pub const KIND: Kind = Kind {
    needed: Some(Needed::PerMember {
        settings: &[("examples", "activation-examples")],
        data: MemberData::Tokens,
        expert: true,
        model: true,
        embedder: None,
    }),
    ..Kind::new(
        "average-activation",
        4,
        5,
        JobDefaults::new(1, 4, "32G", "2:00:00"),
    )
};

/// The parameter of a per-member step an eval lowers with an example count
/// (`routing activation-examples` / `retrieval-examples`).
#[derive(Debug, serde::Deserialize)]
pub struct ExamplesParam {
    pub examples: usize,
}

pub struct AverageActivationStep;

/// Up to `n` of `pairs`: all of them in order when there are few enough, else a
/// seeded shuffle's first `n`.
pub fn sample_pairs(mut pairs: Vec<TokenPair>, n: usize, seed: u64) -> Vec<TokenPair> {
    if pairs.len() > n {
        pairs.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        pairs.truncate(n);
    }
    pairs
}

/// The mean activation vectors of `expert`'s modules over the inputs of `pairs`
/// (already truncated; targets are not used: the decoder runs on the model's own
/// greedy output), `batch` pairs per forward pass; `check` runs before each batch
/// (for Ctrl-C) and at the end, with the number of pairs done.
pub fn mean_activations(
    model: &mut T5Model,
    expert: &LoraExpert,
    pairs: &[TokenPair],
    batch: usize,
    mut check: impl FnMut(usize) -> Result<(), StepError>,
) -> Result<BTreeMap<String, Tensor>, StepError> {
    if pairs.is_empty() {
        return Err(fail(format!(
            "expert `{}`: no training examples to average activations over",
            expert.name
        )));
    }
    model.set_adapters(AdapterSet::from_lora(expert)).map_err(fail)?;
    let eos = model.config.eos_token_id;
    let mut log = ActivationLog::default();
    let mut done = 0;
    for chunk in pairs.chunks(batch.max(1)) {
        check(done)?;
        let inputs: Vec<Vec<u32>> = chunk.iter().map(|p| p.input.clone()).collect();
        // The generated tokens with the EOS that ended them (if one did): teacher-
        // forcing them replays the decoding steps, and the last position is the last step.
        let targets: Vec<Vec<u32>> = model
            .generate_greedy(&inputs, GEN_TOKENS)
            .map_err(fail)?
            .into_iter()
            .map(|mut g| {
                if g.len() < GEN_TOKENS {
                    g.push(eos);
                }
                g
            })
            .collect();
        let mut b =
            Seq2SeqBatch::from_pairs(&model.config, &inputs, &targets, model.device()).map_err(fail)?;
        let t = targets.iter().map(Vec::len).max().unwrap_or(1);
        let mut last = vec![0f32; targets.len() * t];
        for (i, g) in targets.iter().enumerate() {
            last[i * t + g.len() - 1] = 1.0;
        }
        b.label_mask = Tensor::from_vec(last, (targets.len(), t), model.device()).map_err(fail)?;
        model.accumulate_mean_activations(&b, &mut log).map_err(fail)?;
        done += chunk.len();
    }
    check(done)?;
    model.clear_adapters();
    let means = log.means();
    let mut out = BTreeMap::new();
    for module in expert.modules.keys() {
        let v = means
            .get(module)
            .ok_or_else(|| fail(format!("no activations were recorded at {module}")))?;
        let t = Tensor::from_vec(v.clone(), v.len(), model.device())
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(fail)?;
        out.insert(module.clone(), t);
    }
    Ok(out)
}

impl StepRunner for AverageActivationStep {
    fn kind(&self) -> &'static str {
        "average-activation"
    }
    fn run(&self, ctx: &StepContext) -> Result<(), StepError> {
        let dev = device(ctx)?;
        let mut base = load_base(ctx, &dev)?;
        let n = ctx.params::<ExamplesParam>()?.examples;
        let expert = load_expert(ctx, "expert", &ctx.spec.name, &base)?;
        let eos = base.config().eos_token_id;
        let (train, _) = super::tokenize::read_tokens(ctx.input("data")?)?;
        let pairs: Vec<TokenPair> = sample_pairs(train, n, SEED)
            .into_iter()
            .map(|p| {
                let p = crate::train::batches::truncate(
                    Pair {
                        input: p.input,
                        target: p.target,
                    },
                    MAX_LEN,
                    MAX_LEN,
                    eos,
                );
                TokenPair {
                    input: p.input,
                    target: p.target,
                }
            })
            .collect();
        ctx.progress.set_total(pairs.len() as u64, "examples");
        let vectors = mean_activations(&mut base.model, &expert, &pairs, BATCH, |done| {
            ctx.cancel.check()?;
            ctx.progress.set_position(done as u64);
            Ok(())
        })?;
        let g = GateVectors {
            // Unnamed: an artifact's bytes depend on its key alone (META_NAME).
            name: String::new(),
            base_model: Some(ctx.input("model")?.key.hex()),
            gates: vectors,
        };
        g.save(&ctx.out.join(EMBEDDINGS_FILE)).map_err(fail)?;
        std::fs::write(
            ctx.out.join(crate::artifact_files::SUMMARY_JSON),
            serde_json::to_vec_pretty(&serde_json::json!({"examples": pairs.len()})).expect("json"),
        )?;
        Ok(())
    }
}
