//! The `model` step: makes a base model available to the pipeline.
//!
//! - `hub=`: resolved through the HF cache (offline when cached); the commit it resolved
//!   to is pinned in the lockfile, and a later run uses the pinned commit.
//! - `path=`: a local checkpoint folder (its content is already in the key).
//! - `init`: trains a word-level tokenizer on the corpus, initialises a small T5 from
//!   the seed and pretrains it on the corpus, so the base knows
//!   the vocabulary but no task (text infilling; see `denoise`). Everything is written into the artifact.

use serde::Deserialize as _;
use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::common::{CtxMonitor, MODEL_JSON, ModelPointer, fail, train_err, write_metrics};
use crate::data::tokenizer::{save as save_tokenizer, sentinel, train_word_level};
use crate::exec::{JobDefaults, JobResources, Kind, StepContext, StepError, StepRunner};
use crate::hub::resolve_model_reporting;
use crate::model::{FeedForward, T5Config, T5Model, T5Weights, TensorStore};
use crate::plan::{LocalPaths, Review};
use crate::store::External;
use crate::train::{Objective, Pair, Schedule, TrainConfig, train};

/// A hub or local model step only records a pointer; one with `init` pretrains.
pub const KIND: Kind = Kind {
    resources: JobResources::ByParams(|p| {
        if pretrains(p) {
            JobDefaults::new(1, 4, "32G", "8:00:00")
        } else {
            JobDefaults::new(0, 2, "4G", "2:00:00")
        }
    }),
    review: review_size,
    ..Kind::new("model", 3, 0, JobDefaults::OTHER)
};

fn pretrains(params: &serde_json::Value) -> bool {
    params.get("init").is_some_and(|v| !v.is_null())
}

/// Warns when a model the pipeline builds cannot be trained in this machine's memory
/// (its step refuses it then, instead of aborting in the allocator).
fn review_size(name: &str, params: &serde_json::Value, _: &LocalPaths) -> Vec<Review> {
    let Ok(ModelParams { init: Some(init) }) = ModelParams::deserialize(params) else {
        return vec![];
    };
    // The tokenizer adds its sentinels and specials to the vocabulary.
    let mut cfg = T5Config::tiny_v1_1(init.vocab + 100, init.d_model, init.layers);
    cfg.d_ff = init.d_ff;
    cfg.d_kv = init.d_kv;
    cfg.num_heads = init.heads;
    let (Some(total), need) = (crate::process::alloc::memory_total(), cfg.training_bytes()) else {
        return vec![];
    };
    if need <= total as u128 {
        return vec![];
    }
    let size = |b: u128| crate::store::fsutil::human_size(b.min(u64::MAX as u128) as u64);
    vec![Review {
        at: "init".into(),
        code: "plan::model-too-large",
        message: format!(
            "model \"{name}\" has about {} parameters: pretraining it needs at least {} (weights, gradients, AdamW moments), more than this machine's {}",
            cfg.parameter_count(),
            size(need),
            size(total as u128)
        ),
        label: "this size".into(),
        help: "its model step will refuse to start here; lower d-model, d-ff, layers or vocab, or run it where memory suffices".into(),
        warning: true,
    }]
}

pub struct ModelStep;

/// Sentinel tokens reserved for span corruption.
const SENTINELS: usize = 16;

/// A local checkpoint folder is only pointed at, and every step after this one reads
/// it: its config and its safetensors headers (names, shapes, offsets within the
/// file; the data is not read) are checked here, so a broken folder fails as this
/// step rather than as the first expert. A pickle is read whole by its readers only.
fn check_folder(dir: &std::path::Path) -> Result<(), StepError> {
    use crate::model::checkpoint::load::{WeightFiles, locate, open_store};
    let broken = |e: crate::model::ModelError| fail(format!("{e} (in the folder path= names)"));
    let files = locate(dir).map_err(broken)?;
    // Every step that reads the model tokenizes with it (as for a hub model).
    if files.tokenizer.is_none() {
        return Err(fail(format!(
            "{} has no tokenizer.json (in the folder path= names); goosepipe reads a model's tokenizer from it (transformers' `AutoTokenizer.from_pretrained(...).save_pretrained(DIR)` writes one)",
            dir.display()
        )));
    }
    // Safetensors: their headers give every shape without reading the weights, so
    // a config.json that disagrees with them is refused here. A pickle is read
    // whole, by the first step that loads it; its config is only parsed.
    if !matches!(files.weights, WeightFiles::Safetensors(_)) {
        T5Config::from_file(&files.config, None).map_err(broken)?;
        return Ok(());
    }
    let store = open_store(&files).map_err(broken)?;
    let config =
        T5Config::from_file(&files.config, Some(store.contains("lm_head.weight"))).map_err(broken)?;
    crate::model::checkpoint::weights::check_shapes(&config, &store).map_err(broken)
}

impl StepRunner for ModelStep {
    fn kind(&self) -> &'static str {
        "model"
    }
    fn run(&self, ctx: &StepContext) -> Result<(), StepError> {
        let pointer = |p: &ModelPointer| -> Result<(), StepError> {
            std::fs::write(
                ctx.out.join(MODEL_JSON),
                serde_json::to_vec_pretty(p).expect("json"),
            )?;
            Ok(())
        };
        match source(ctx) {
            Some(e @ External::Hub { repo, .. }) => {
                let (dir, commit) = super::common::resolve_pinned(ctx, e, resolve_model_reporting)?;
                // Every step that uses a model tokenizes with its tokenizer.json: one
                // without it would fail at its first reader, far from the cause.
                if !dir.join("tokenizer.json").is_file() {
                    return Err(fail(format!(
                        "hub model {repo} (commit {commit}) has no tokenizer.json {}; goosepipe reads a model's tokenizer from it (transformers' `AutoTokenizer.from_pretrained(\"{repo}\").save_pretrained(DIR)` writes one: put the model and it in a folder and use path=DIR)",
                        if crate::hub::HubOptions::default().offline {
                            "in the local cache (offline)"
                        } else {
                            "in the repo or the local cache"
                        }
                    )));
                }
                return pointer(&ModelPointer {
                    source: format!("hub:{repo}"),
                    dir,
                    commit: Some(commit),
                });
            }
            Some(External::Path { path, .. }) => {
                check_folder(std::path::Path::new(path))?;
                return pointer(&ModelPointer {
                    source: "path".into(),
                    dir: PathBuf::from(path),
                    commit: None,
                });
            }
            None => {}
        }
        if let Some(init) = ctx.params::<ModelParams>()?.init {
            return init_and_pretrain(ctx, &init, &pointer);
        }
        Err(StepError::msg(format!(
            "model {} has no source (hub=, path= or init)",
            ctx.spec.name
        )))
    }
    /// Only an interrupted run leaves a saved state to tell of.
    fn previews(&self, interrupted: bool) -> bool {
        interrupted
    }
    /// Pretraining's saved state (a hub or local model has nothing to resume).
    fn preview(&self, ctx: &StepContext) -> Result<Option<crate::plan::status::Preview>, StepError> {
        Ok(match ctx.params::<ModelParams>()?.init {
            Some(init) if source(ctx).is_none() => super::common::training_preview(ctx, init.pretrain_steps),
            _ => None,
        })
    }
}

/// The external a model step points at (`hub=` or `path=`), if it is not built by
/// the pipeline.
fn source<'s>(ctx: &'s StepContext) -> Option<&'s External> {
    ctx.spec.externals.iter().find(|e| match e {
        External::Hub { .. } => true,
        External::Path { role, .. } => role == "path",
    })
}

/// A model step's parameters: `init` when the pipeline builds the model (hub and
/// path sources are externals).
#[derive(Debug, serde::Deserialize)]
struct ModelParams {
    #[serde(default)]
    init: Option<InitParams>,
}

/// The `model-init` group (every default filled by the schema).
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct InitParams {
    vocab: usize,
    d_model: usize,
    d_ff: usize,
    d_kv: usize,
    heads: usize,
    layers: usize,
    ffn: String,
    seed: u64,
    pretrain_steps: usize,
    batch: usize,
    lr: f64,
}

fn config_from(init: &InitParams, vocab: usize) -> Result<T5Config, StepError> {
    let mut cfg = T5Config::tiny_v1_1(vocab, init.d_model, init.layers);
    cfg.d_ff = init.d_ff;
    cfg.d_kv = init.d_kv;
    cfg.num_heads = init.heads;
    cfg.feed_forward = match init.ffn.as_str() {
        "relu" => FeedForward::Relu,
        _ => FeedForward::GatedGelu,
    };
    cfg.validate().map_err(fail)?;
    Ok(cfg)
}

/// Text infilling (BART's denoising objective, with T5's sentinels): about 15% of the
/// tokens, in spans of 1-5, are replaced by sentinels in the input, and the target is
/// the whole original text. On a corpus without task structure this teaches the base
/// the vocabulary and to read and reproduce text (what any pretrained LM can), and
/// nothing about the tasks.
pub fn denoise(tokens: &[u32], sentinel_ids: &[u32], eos: u32, rng: &mut ChaCha8Rng) -> Pair {
    let corrupted = span_corrupt(tokens, sentinel_ids, eos, rng);
    let mut target = tokens.to_vec();
    target.push(eos);
    Pair {
        input: corrupted.input,
        target,
    }
}

/// T5's span corruption: about 15% of the tokens, in spans of mean length 3, are
/// replaced by sentinels in the input; the target lists each sentinel with its span.
pub fn span_corrupt(tokens: &[u32], sentinel_ids: &[u32], eos: u32, rng: &mut ChaCha8Rng) -> Pair {
    let n = tokens.len();
    // An empty text (a corpus row with an empty input) has nothing to mask.
    if n == 0 {
        return Pair {
            input: vec![eos],
            target: vec![eos],
        };
    }
    let mut noise = vec![false; n];
    let budget = ((n as f64) * 0.15).round().max(1.0) as usize;
    let mut masked = 0;
    let mut guard = 0;
    while masked < budget && guard < 100 {
        guard += 1;
        let len = rng.random_range(1..=5).min(budget - masked);
        let start = rng.random_range(0..n);
        for slot in noise.iter_mut().take((start + len).min(n)).skip(start) {
            if !*slot {
                *slot = true;
                masked += 1;
            }
        }
    }
    let (mut input, mut target) = (vec![], vec![]);
    let mut s = 0;
    let mut i = 0;
    while i < n {
        if noise[i] && s < sentinel_ids.len() {
            input.push(sentinel_ids[s]);
            target.push(sentinel_ids[s]);
            while i < n && noise[i] {
                target.push(tokens[i]);
                i += 1;
            }
            s += 1;
        } else {
            input.push(tokens[i]);
            i += 1;
        }
    }
    input.push(eos);
    target.push(eos);
    Pair { input, target }
}

/// Full-parameter training of a model built from Vars (pretraining from scratch).
struct FullModel {
    config: T5Config,
    vars: Vec<(String, Var)>,
    model: T5Model,
    device: Device,
}

impl FullModel {
    fn build(config: &T5Config, vars: &[(String, Var)], device: &Device) -> crate::model::Result<T5Model> {
        let tensors: HashMap<String, Tensor> = vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect();
        T5Model::from_store(
            config,
            &TensorStore::memory("pretraining", tensors),
            device,
            DType::F32,
        )
    }
}

impl Objective for FullModel {
    fn loss(&mut self, batch: &[&Pair]) -> crate::model::Result<Tensor> {
        let b = crate::train::batches::seq2seq_batch(batch, &self.config, &self.device)?;
        self.model.forward_loss(&b)
    }
    fn updated(&mut self) -> crate::model::Result<()> {
        // Linear weights are kept pre-transposed, so the model is rebuilt from the
        // updated vars (cheap at pretraining sizes).
        self.model = Self::build(&self.config, &self.vars, &self.device)?;
        Ok(())
    }
}

fn init_and_pretrain(
    ctx: &StepContext,
    init: &InitParams,
    pointer: &dyn Fn(&ModelPointer) -> Result<(), StepError>,
) -> Result<(), StepError> {
    let corpus = ctx.input("init.corpus")?;
    let (train_ex, valid_ex) = super::common::examples(corpus)?;
    let texts: Vec<String> = train_ex
        .iter()
        .chain(&valid_ex)
        .map(|e| format!("{} {}", e.input, e.target))
        .collect();
    let tok = train_word_level(&texts, init.vocab, SENTINELS).map_err(fail)?;
    let vocab = tok.get_vocab_size(true);
    let cfg = config_from(init, vocab)?;
    let seed = init.seed;
    ctx.progress.log(&format!(
        "tokenizer: {vocab} tokens; T5 d_model {} x {} layers ({:?})",
        cfg.d_model, cfg.num_layers, cfg.feed_forward
    ));
    // Refuse a model this machine cannot hold instead of aborting in the allocator.
    // The least of the machine's memory, a job's cgroup and `ulimit -v`.
    if let Some((limit, what)) = crate::process::alloc::memory_limit()
        && cfg.training_bytes() > limit as u128
    {
        return Err(fail(format!(
            "a T5 of this size has {} parameters and needs at least {} to pretrain (weights, gradients, AdamW moments), more than {what} ({}). Lower init d-model, d-ff, layers or vocab",
            cfg.parameter_count(),
            crate::store::fsutil::human_size(cfg.training_bytes().min(u64::MAX as u128) as u64),
            crate::store::fsutil::human_size(limit)
        )));
    }
    let weights = T5Weights::init_random(&cfg, seed).map_err(fail)?;
    let dev = super::common::device(ctx)?;
    let mut names: Vec<&String> = weights.tensors.keys().collect();
    names.sort();
    let vars: Vec<(String, Var)> = names
        .into_iter()
        .map(|n| {
            Ok((
                n.clone(),
                Var::from_tensor(&weights.tensors[n].to_device(&dev).map_err(fail)?).map_err(fail)?,
            ))
        })
        .collect::<Result<_, StepError>>()?;
    let sentinel_ids: Vec<u32> = (0..SENTINELS)
        .map(|i| tok.token_to_id(&sentinel(i)).expect("sentinels exist"))
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut corrupt = |ex: &[crate::data::Example]| -> Result<Vec<Pair>, StepError> {
        ex.iter()
            .map(|e| {
                let mut ids = super::common::encode(&tok, &e.input)?;
                ids.pop(); // the EOS the tokenizer appended; span_corrupt adds its own
                Ok(denoise(&ids, &sentinel_ids, cfg.eos_token_id, &mut rng))
            })
            .collect()
    };
    let train_pairs = corrupt(&train_ex)?;
    let (steps, batch) = (init.pretrain_steps, init.batch);
    let tensors = if steps > 0 {
        let tcfg = TrainConfig {
            steps,
            batch,
            micro_batch: batch,
            lr: init.lr,
            weight_decay: 0.0,
            warmup: 0.06,
            schedule: Schedule::Constant,
            grad_clip: 1.0,
            max_input_len: 512,
            max_target_len: 512,
            eval_every: None,
            eval_examples: 0,
            checkpoint_every: 100,
            seed,
            dropout: 0.0,
            // Pretraining is goosepipe's own (no reference to follow): least padding.
            batches: crate::train::batches::Batching::ByLength,
        };
        if let Some(said) = tcfg.short_batches(train_pairs.len(), ("`init batch`", "`init batch`")) {
            ctx.progress.log(&format!("warning: {said}"));
        }
        let model = FullModel::build(&cfg, &vars, &dev).map_err(fail)?;
        let mut obj = FullModel {
            config: cfg.clone(),
            vars: vars.clone(),
            model,
            device: dev.clone(),
        };
        let outcome = train(
            &mut obj,
            &vars,
            &train_pairs,
            &[],
            &tcfg,
            &ctx.work,
            &CtxMonitor(ctx),
        )
        .map_err(train_err)?;
        write_metrics(&ctx.out, &outcome.metrics)?;
        outcome.weights
    } else {
        weights.tensors.clone()
    };
    let dir = ctx.out.join("model");
    let cpu: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_device(&Device::Cpu).map_err(fail)?)))
        .collect::<Result<_, StepError>>()?;
    T5Weights {
        config: cfg,
        tensors: cpu,
    }
    .save_pretrained(&dir)
    .map_err(fail)?;
    save_tokenizer(&tok, &dir.join("tokenizer.json")).map_err(fail)?;
    pointer(&ModelPointer {
        source: "init".into(),
        dir: PathBuf::from("model"),
        commit: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_corruption_round_trips() {
        let toks: Vec<u32> = (10..40).collect();
        let sent = [100, 101, 102, 103, 104, 105, 106, 107];
        let p = span_corrupt(&toks, &sent, 1, &mut ChaCha8Rng::seed_from_u64(3));
        // Re-inserting each sentinel's span into the input gives the original back.
        let mut spans: HashMap<u32, Vec<u32>> = HashMap::new();
        let mut cur = None;
        for &t in &p.target[..p.target.len() - 1] {
            if sent.contains(&t) {
                cur = Some(t);
                spans.insert(t, vec![]);
            } else {
                spans.get_mut(&cur.unwrap()).unwrap().push(t);
            }
        }
        let mut rebuilt = vec![];
        for &t in &p.input[..p.input.len() - 1] {
            if sent.contains(&t) {
                rebuilt.extend(&spans[&t])
            } else {
                rebuilt.push(t)
            }
        }
        assert_eq!(rebuilt, toks);
        assert!(p.target.len() > 2 && p.input.len() < toks.len() + 1);
    }

    /// A corpus row with an empty input panicked pretraining ("cannot sample empty
    /// range"): it is EOS in, EOS out.
    #[test]
    fn an_empty_text_is_corrupted_to_itself() {
        let rng = &mut ChaCha8Rng::seed_from_u64(3);
        let p = span_corrupt(&[], &[100, 101], 1, rng);
        assert_eq!((p.input, p.target), (vec![1], vec![1]));
        let p = denoise(&[], &[100, 101], 1, rng);
        assert_eq!((p.input, p.target), (vec![1], vec![1]));
    }
}
