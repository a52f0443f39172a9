//! The `average-activation` step (one per expert): the expert's router embedding
//! at every adapted module is the mean input activation of that module over up to
//! `examples` (default 1000) of the expert's own training examples, with the
//! expert's LoRA active. Each example contributes its masked mean over real tokens
//! (encoder modules and cross-attention k/v: input tokens; other decoder modules:
//! target tokens, teacher-forced), then examples are averaged.
//!
//! Output: `embeddings.safetensors` in the gate-vector layout (`<module>.gate`
//! `[d_in]`), so the eval routes with it exactly like PHATGOOSE.
//!
//! Deviation from the paper's code (METHOD.md section 4): there the hiddens were
//! collected while generating, so decoder self-attention and FFN modules kept
//! only the last decoding step's activation; here they are the masked mean over
//! the teacher-forced target tokens.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::common::{device, fail, load_base};
use super::expert::load_expert;
use crate::data::tokens::TokenPair;
use crate::exec::{StepContext, StepError, StepRunner};
use crate::model::{ActivationLog, AdapterSet, GateVectors, LoraExpert, Seq2SeqBatch, T5Model};
use crate::train::Pair;

pub const EMBEDDINGS_FILE: &str = "embeddings.safetensors";
/// The paper's limits on input and target length.
const MAX_LEN: usize = 512;
const BATCH: usize = 8;
const SEED: u64 = 42;

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

/// The mean activation vectors of `expert`'s modules over `pairs` (already
/// truncated), `batch` pairs per forward pass; `check` runs before each batch (for
/// Ctrl-C) and `progress` after it with the number of pairs done.
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
    let mut log = ActivationLog::default();
    let mut done = 0;
    for chunk in pairs.chunks(batch.max(1)) {
        check(done)?;
        let inputs: Vec<Vec<u32>> = chunk.iter().map(|p| p.input.clone()).collect();
        let targets: Vec<Vec<u32>> = chunk.iter().map(|p| p.target.clone()).collect();
        let b = Seq2SeqBatch::from_pairs(&model.config, &inputs, &targets, model.device()).map_err(fail)?;
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
    fn version(&self) -> u32 {
        super::version_of(self.kind())
    }
    fn run(&self, ctx: &StepContext) -> Result<(), StepError> {
        let dev = device(ctx)?;
        let mut base = load_base(ctx, &dev)?;
        let n = ctx.param("examples").and_then(|v| v.as_u64()).unwrap_or(1000) as usize;
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
            name: ctx.spec.name.clone(),
            base_model: Some(ctx.input("model")?.key.hex()),
            gates: vectors,
        };
        g.save(&ctx.out.join(EMBEDDINGS_FILE)).map_err(fail)?;
        std::fs::write(
            ctx.out.join("summary.json"),
            serde_json::to_vec_pretty(&serde_json::json!({"examples": pairs.len()})).expect("json"),
        )?;
        Ok(())
    }
}
