//! The `expert` step (one LoRA on a frozen base, trained on one dataset) and the
//! `gate` step (one gate vector per adapted linear, base and LoRA frozen).
//!
//! Outputs: `expert.safetensors` (PEFT-like names, e.g.
//! `encoder.block.3.layer.1.DenseReluDense.wi_0.lora_A`) or `gates.safetensors`,
//! plus `metrics.jsonl` (loss curve, validation) and `summary.json`.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var};
use candle_nn::VarMap;

use super::common::{Base, CtxMonitor, device, fail, load_base, train_err, training_preview, write_metrics};
use crate::data::tokens::TokenChoices;
use crate::exec::{JobDefaults, Kind, StepContext, StepError, StepRunner};
use crate::model::adapter::trainable::{
    gates_from, lora_expert_from, new_trainable_gates, new_trainable_lora,
};
use crate::model::{ChoiceItem, LoraExpert, Seq2SeqBatch, T5Model, predict};
use crate::plan::Needed;
use crate::plan::{LocalPaths, Review};
use crate::train::batches::seq2seq_batch;
use crate::train::{GateParams, Objective, Pair, TrainConfig, train};

pub use crate::artifact_files::EXPERT_FILE;
pub use crate::artifact_files::GATES_FILE;

/// The loss of the (adapted) model on a batch of pairs, and the validation metric of
/// its data: rank-classification accuracy for examples with answer choices, exact
/// match of greedy generation for the others.
pub struct AdaptedModel<'a> {
    pub model: &'a T5Model,
    /// The validation pairs (inputs cut as the trainer cuts them, targets whole) with
    /// their choices, if any.
    pub validation: Vec<(Pair, Option<TokenChoices>)>,
    /// Examples per scoring batch.
    pub batch: usize,
    /// The most tokens a generated answer may have (the training's max-target-len):
    /// a longer target is never matched, as the model never learnt it whole.
    pub max_new_tokens: usize,
}

impl AdaptedModel<'_> {
    fn batch_of(&self, batch: &[&Pair]) -> crate::model::Result<Seq2SeqBatch> {
        seq2seq_batch(batch, &self.model.config, self.model.device())
    }

    /// Whether each of `items` is answered right.
    fn correct(&self, items: &[(Pair, Option<TokenChoices>)]) -> crate::model::Result<Vec<bool>> {
        let eos = self.model.config.eos_token_id;
        let (choice, generate): (Vec<_>, Vec<_>) =
            items.iter().enumerate().partition(|(_, (_, c))| c.is_some());
        let mut right = vec![false; items.len()];
        let asks: Vec<ChoiceItem> = choice
            .iter()
            .map(|(_, (p, c))| ChoiceItem {
                input: p.input.clone(),
                choices: c.as_ref().map(|c| c.choices.clone()).unwrap_or_default(),
            })
            .collect();
        if !asks.is_empty() {
            let scores = self.model.score_choices(&asks, self.batch)?;
            for ((i, (_, c)), s) in choice.iter().zip(&scores) {
                let rights = &c.as_ref().expect("partitioned on Some").right;
                right[*i] = predict(s).is_some_and(|k| rights.get(k).copied().unwrap_or(false));
            }
        }
        for chunk in generate.chunks(self.batch.max(1)) {
            let inputs: Vec<Vec<u32>> = chunk.iter().map(|(_, (p, _))| p.input.clone()).collect();
            let longest = chunk
                .iter()
                .map(|(_, (p, _))| p.target.len())
                .max()
                .unwrap_or(1)
                .min(self.max_new_tokens.max(1));
            let outs = self.model.generate_greedy(&inputs, longest)?;
            for ((i, (p, _)), out) in chunk.iter().zip(&outs) {
                let target = p.target.strip_suffix(&[eos]).unwrap_or(&p.target);
                right[*i] = out.as_slice() == target;
            }
        }
        Ok(right)
    }
}

impl Objective for AdaptedModel<'_> {
    fn loss(&mut self, batch: &[&Pair]) -> crate::model::Result<Tensor> {
        let b = self.batch_of(batch)?;
        self.model.forward_loss(&b)
    }

    fn loss_and_grads(
        &mut self,
        batch: &[&Pair],
        scale: f64,
    ) -> crate::model::Result<Option<(f64, BTreeMap<String, Tensor>)>> {
        let b = self.batch_of(batch)?;
        Ok(self
            .model
            .lora_loss_and_grads(&b, scale)?
            .map(|p| (p.loss, p.grads)))
    }

    fn set_training(&mut self, dropout_seed: Option<u64>) -> crate::model::Result<()> {
        self.model.set_dropout_seed(dropout_seed)
    }

    fn validation_metric(&mut self, max: usize) -> crate::model::Result<Option<f64>> {
        let items = &self.validation[..self.validation.len().min(max)];
        if items.is_empty() {
            return Ok(None);
        }
        let right = self.correct(items)?;
        Ok(Some(
            right.iter().filter(|&&r| r).count() as f64 / right.len() as f64,
        ))
    }
}

/// How many training pairs the length limits cut, said once per step: a cut target
/// teaches a cut answer, which nothing else would show (the tokenize step cannot
/// know the limits of the steps that read it).
#[derive(Default)]
struct CutPairs {
    pairs: usize,
    inputs: usize,
    targets: usize,
    longest_input: usize,
    longest_target: usize,
}

impl CutPairs {
    fn count(&mut self, pairs: &[crate::data::tokens::TokenPair], cfg: &TrainConfig) {
        for p in pairs {
            self.pairs += 1;
            if p.input.len() > cfg.max_input_len {
                self.inputs += 1;
                self.longest_input = self.longest_input.max(p.input.len());
            }
            if p.target.len() > cfg.max_target_len {
                self.targets += 1;
                self.longest_target = self.longest_target.max(p.target.len());
            }
        }
    }

    fn describe(&self, cfg: &TrainConfig, group: &str, in_defaults: bool) -> Option<String> {
        let mut parts = vec![];
        if self.targets > 0 {
            parts.push(format!(
                "{} of {} training targets are longer than max-target-len={} tokens (the longest has {}, EOS included) and are cut: the model learns the cut answers; raise {}",
                self.targets,
                self.pairs,
                cfg.max_target_len,
                self.longest_target,
                setting(group, "max-target-len", in_defaults)
            ));
        }
        if self.inputs > 0 {
            parts.push(format!(
                "{} of {} training inputs are longer than max-input-len={} tokens (the longest has {}) and are cut; raise {} to keep them whole",
                self.inputs,
                self.pairs,
                cfg.max_input_len,
                self.longest_input,
                setting(group, "max-input-len", in_defaults)
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// A setting of `group` as a manifest writes it: `train max-target-len`, or inside
/// `defaults` for a step that has no node of its own (multitask).
fn setting(group: &str, name: &str, in_defaults: bool) -> String {
    if in_defaults {
        format!("`defaults {{ {group} {name}=... }}`")
    } else {
        format!("`{group} {name}`")
    }
}

/// Which adapted linears a `lora.targets` list selects.
pub fn target_filter(targets: &[String]) -> impl Fn(&str) -> bool + '_ {
    move |module: &str| {
        let kind = if module.contains("EncDecAttention") {
            "cross-attention"
        } else if module.contains("SelfAttention") {
            "self-attention"
        } else {
            "ffn"
        };
        targets.iter().any(|t| t == kind)
    }
}

fn vars_sorted(varmap: &VarMap) -> Vec<(String, Var)> {
    let mut v: Vec<(String, Var)> = varmap
        .data()
        .lock()
        .expect("varmap")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn base_identity(ctx: &StepContext) -> Result<String, StepError> {
    Ok(ctx.input("model")?.key.hex())
}

/// Trains on the examples of the step's data inputs (`data`, or every `data:*` of a
/// multitask step, concatenated); returns the best weights' outcome.
fn fit(
    ctx: &StepContext,
    base: &mut Base,
    vars: &[(String, Var)],
    cfg: &TrainConfig,
    group: &str,
) -> Result<(crate::train::TrainOutcome, Vec<String>), StepError> {
    // Token ids come from the datasets' `tokenize` steps; each trainer truncates them to
    // its own length limits.
    let eos = base.config().eos_token_id;
    let cut_to = |p: crate::data::tokens::TokenPair, max_target: usize| {
        crate::train::batches::truncate(
            Pair {
                input: p.input,
                target: p.target,
            },
            cfg.max_input_len,
            max_target,
            eos,
        )
    };
    let cut = |p| cut_to(p, cfg.max_target_len);
    // Validation's metric scores answers against the whole target: one cut to
    // max-target-len would count a cut answer as right.
    let whole_target = |p| cut_to(p, usize::MAX);
    let (mut tp, mut vp, mut vc, mut vwhole) = (vec![], vec![], vec![], vec![]);
    let mut cut_said = CutPairs::default();
    for inp in ctx
        .inputs
        .iter()
        .filter(|i| i.role == "data" || crate::store::spec::member_of(&i.role, "data").is_some())
    {
        let (t, v) = super::tokenize::read_tokens(inp)?;
        let choices = super::tokenize::read_validation_choices(inp)?;
        match choices {
            // An example without choices (a template without answer choices, in a
            // dataset that has some) is scored by generation.
            Some(c) if c.len() == v.len() => {
                vc.extend(c.into_iter().map(|c| (!c.choices.is_empty()).then_some(c)))
            }
            Some(_) => {
                return Err(fail(format!(
                    "{}: validation choices do not match its examples",
                    inp.id
                )));
            }
            None => vc.extend(std::iter::repeat_n(None, v.len())),
        }
        cut_said.count(&t, cfg);
        tp.extend(t.into_iter().map(cut));
        vwhole.extend(v.iter().cloned().map(whole_target));
        vp.extend(v.into_iter().map(cut));
    }
    // A multitask step has no node of its own: its settings are `defaults`'.
    let in_defaults = ctx.spec.kind == "multitask";
    let (batch, micro) = (
        setting(group, "batch", in_defaults),
        setting(group, "micro-batch", in_defaults),
    );
    let warnings: Vec<String> = cut_said
        .describe(cfg, group, in_defaults)
        .into_iter()
        .chain(cfg.short_batches(tp.len(), (&batch, &micro)))
        .collect();
    for said in &warnings {
        ctx.progress.log(&format!("warning: {said}"));
    }
    // Dropout as the paper's code trains (train mode); the trainer reseeds it per
    // micro-step and turns it off to validate.
    if cfg.dropout > 0.0 {
        base.model.enable_dropout(cfg.dropout, cfg.seed).map_err(fail)?;
    }
    let mut obj = AdaptedModel {
        model: &base.model,
        validation: vwhole.into_iter().zip(vc).collect(),
        batch: cfg.micro_batch.max(1),
        max_new_tokens: cfg.max_target_len,
    };
    let outcome = train(&mut obj, vars, &tp, &vp, cfg, &ctx.work, &CtxMonitor(ctx)).map_err(train_err)?;
    // Load the kept (best) weights back into the vars before snapshotting.
    for (n, v) in vars {
        if let Some(t) = outcome.weights.get(n) {
            v.set(t).map_err(fail)?;
        }
    }
    Ok((outcome, warnings))
}

/// `summary.json`: the kept step, the last validation loss, and what the run warned
/// of (inputs or targets cut to the length limits: `show` says it to whoever finds
/// the artifact later; absent when there was nothing).
fn summary(
    ctx: &StepContext,
    outcome: &crate::train::TrainOutcome,
    warnings: &[String],
) -> Result<(), StepError> {
    write_metrics(&ctx.out, &outcome.metrics)?;
    let last_val = outcome
        .metrics
        .iter()
        .rev()
        .find_map(|m| m.get("val_loss").and_then(|v| v.as_f64()));
    // Not whether it was resumed: a resumed run must produce the same bytes.
    let mut s = serde_json::json!({"best_step": outcome.best_step, "last_val_loss": last_val});
    if !warnings.is_empty() {
        s["warnings"] = serde_json::json!(warnings);
    }
    std::fs::write(
        ctx.out.join(crate::artifact_files::SUMMARY_JSON),
        serde_json::to_vec_pretty(&s).expect("json"),
    )?;
    Ok(())
}

/// Whether an expert step's parameters say it imports an adapter instead of training.
fn imports(params: &serde_json::Value) -> bool {
    params.get("import").is_some()
}

/// What reading an imported adapter (or the gate it ships) asks of a cluster: no GPU.
const IMPORT_JOB: JobDefaults = JobDefaults::new(0, 1, "8G", "0:30:00");

/// One LoRA per expert: a GPU job of hours; importing a PEFT adapter instead is a
/// minute of reading files. Version 6: trained by the hand-written backward pass
/// where it applies (the same gradients as candle's autograd, rounded differently);
/// 7: the pass runs a micro-batch as two halves side by side and sums their
/// gradients (rounded differently again); 8: the file no longer records the step's
/// name (an artifact's bytes depend on its key alone); 9: the validation metric that
/// picks the kept checkpoint scores answers against whole targets, not targets cut to
/// max-target-len (a cut answer was scored right).
pub const EXPERT: Kind = Kind {
    resources: crate::exec::kind::JobResources::ByParams(|p| {
        if imports(p) {
            IMPORT_JOB
        } else {
            JobDefaults::new(1, 4, "32G", "8:00:00")
        }
    }),
    review: review_batches,
    ..Kind::new("expert", 9, 3, JobDefaults::OTHER)
};
/// The gate vectors of one expert, everything else frozen; or the gate an imported
/// adapter ships, read (`peft-gate=#true`: minutes of reading, no GPU). Version 6:
/// the file no longer records the step's name.
pub const GATE: Kind = Kind {
    resources: crate::exec::kind::JobResources::ByParams(|p| {
        if imports(p) {
            IMPORT_JOB
        } else {
            JobDefaults::new(1, 4, "32G", "4:00:00")
        }
    }),
    review: review_gate,
    ..Kind::new("gate", 6, 4, JobDefaults::OTHER)
};

/// A gate step: its batches, or, for the gate an imported adapter ships
/// (`peft-gate=#true`), that the adapter folder has it as a file: said by `check` and
/// `plan`, not by the run's gate step after the others have run.
fn review_gate(name: &str, params: &serde_json::Value, paths: &LocalPaths) -> Vec<Review> {
    let mut found = review_batches(name, params, paths);
    let Some(dir) = paths.get("peft").filter(|_| imports(params)) else {
        return found;
    };
    let file = crate::model::checkpoint::peft::GATES_FILE;
    let gate = dir.abs.join(file);
    let why = match crate::file_kind::not_a_file(&gate) {
        Some(why) => format!("{file} {why}"),
        None if gate.is_file() => return found,
        None => format!("there is no {file}"),
    };
    found.push(Review {
        at: "peft-gate".into(),
        code: "manifest::missing-file",
        message: format!("expert \"{name}\" uses the gate its adapter ships, but in the folder \"{}\" {why}", dir.display),
        label: "no gate to read".into(),
        help: format!(
            "an adapter ships its gate as {file} (`goosepipe export` writes it); remove peft-gate=#true to train a gate on the expert's dataset"
        ),
        warning: false,
    });
    found
}
/// One LoRA on the union of a pool's datasets, lowered for the methods that need it.
/// Versions 6 and 7: the hand-written backward pass, as `expert`; 8: unnamed, as
/// `expert`; 9: validated against whole targets, as `expert`.
pub const MULTITASK: Kind = Kind {
    needed: Some(Needed::Pooled),
    ..Kind::new("multitask", 9, 7, JobDefaults::new(1, 4, "32G", "8:00:00"))
};

/// A `batch` that `micro-batch` does not divide: the trainer accumulates whole
/// micro-batches, so each step sees more sequences than `batch` says (10 of 4: 12). A
/// `micro-batch` above `batch`: a pass takes the batch, no more, so the setting changes
/// nothing but the key (a run with it retrains what `micro-batch=BATCH` built).
fn review_batches(_name: &str, params: &serde_json::Value, _: &LocalPaths) -> Vec<Review> {
    ["train", "gate"]
        .into_iter()
        .filter_map(|group| {
            let g = params.get(group)?;
            let batch = g.get("batch")?.as_u64()? as usize;
            let micro = g.get("micro-batch")?.as_u64()? as usize;
            // The schema's micro-batch, unwritten, is no choice of the user's: it keys
            // as every manifest that leaves it out does.
            let default = crate::manifest::schema::Schema::embedded()
                .group(group)
                .and_then(|g| g.prop("micro-batch"))
                .and_then(|p| match p.default {
                    Some(crate::manifest::Value::Int(d)) => usize::try_from(d).ok(),
                    _ => None,
                });
            if micro > batch && Some(micro) != default {
                let help = match default {
                    Some(d) if d >= batch => format!(
                        "write micro-batch={batch}, or leave it out (the default, {d}, also takes the whole batch)"
                    ),
                    _ => format!("write micro-batch={batch}"),
                };
                return Some(Review {
                    at: format!("{group}.micro-batch"),
                    code: "plan::micro-batch-above-batch",
                    message: format!(
                        "{group} micro-batch={micro} is above batch={batch}: each pass takes the batch's {batch} sequences, so this trains as micro-batch={batch} does (under another key)"
                    ),
                    label: "above the batch".into(),
                    help,
                    warning: true,
                });
            }
            (micro > 0 && micro < batch && !batch.is_multiple_of(micro)).then(|| {
                // As the trainer counts them.
                let passes = crate::train::trainer::micro_batches(batch, micro);
                Review {
                    at: format!("{group}.micro-batch"),
                    code: "plan::uneven-batch",
                    message: format!(
                        "{group} batch={batch} is not a multiple of micro-batch={micro}: each step trains on {} sequences ({passes} micro-batches of {micro})",
                        passes * micro
                    ),
                    label: "does not divide the batch".into(),
                    help: format!(
                        "give a micro-batch that divides {batch} (the largest below {micro}: {}), or a batch that is a multiple of {micro}",
                        (1..micro).rev().find(|m| batch.is_multiple_of(*m)).unwrap_or(1)
                    ),
                    warning: true,
                }
            })
        })
        .collect()
}
/// A pool's member list. Version 2: without the pool's own name.
pub const POOL: Kind = Kind::new("pool", 2, 8, JobDefaults::new(0, 1, "1G", "0:10:00")).exact();

/// An expert or multitask step's parameters: its adapter's shape and its training.
#[derive(Debug, serde::Deserialize)]
struct ExpertParams {
    lora: LoraParams,
    train: TrainConfig,
}

/// A gate step's parameters.
#[derive(Debug, serde::Deserialize)]
struct GateStepParams {
    gate: GateParams,
}

#[derive(Debug, serde::Deserialize)]
struct LoraParams {
    rank: usize,
    /// Which adapted linears get a LoRA (all when empty).
    #[serde(default)]
    targets: Vec<String>,
}

/// `expert` trains one LoRA on one dataset; `multitask` trains one LoRA on the union
/// of a pool's datasets (the paper's multitask reference: it needs every
/// contributor's data at once, so it does not fit the post-hoc setting).
pub struct ExpertStep {
    pub kind: &'static str,
}

impl StepRunner for ExpertStep {
    fn kind(&self) -> &'static str {
        self.kind
    }
    fn run(&self, ctx: &StepContext) -> Result<(), StepError> {
        if imports(&ctx.spec.params) {
            return super::peft_import::run(ctx);
        }
        let dev = device(ctx)?;
        let mut base = load_base(ctx, &dev)?;
        let ExpertParams { lora, train } = ctx.params()?;
        let cfg = train.checked().map_err(fail)?;
        let LoraParams { rank, targets } = lora;
        let varmap = VarMap::new();
        let adapters = new_trainable_lora(
            base.config(),
            rank,
            cfg.seed,
            target_filter(&targets),
            &varmap,
            &dev,
            DType::F32,
        )
        .map_err(fail)?;
        base.model.set_adapters(adapters.clone()).map_err(fail)?;
        let vars = vars_sorted(&varmap);
        let (outcome, mut warnings) = fit(ctx, &mut base, &vars, &cfg, "train")?;
        if outcome.best_step == 0 && cfg.steps > 0 {
            // Its LoRA's B is still zero: the expert is the base, and its gate will
            // have nothing to learn. Said, and kept in summary.json for `show`.
            let said = format!(
                "no validation after step 0 beat the untrained start, so the best checkpoint kept is step 0 of {}: this expert changes nothing (its LoRA is zero); train longer, change lr, or check its data",
                cfg.steps
            );
            ctx.progress.log(&format!("warning: {said}"));
            warnings.push(said);
        }
        // Unnamed: the artifact belongs to a key, not to this step's name (META_NAME).
        let expert = lora_expert_from(&adapters, "", Some(base_identity(ctx)?)).map_err(fail)?;
        expert.save(&ctx.out.join(EXPERT_FILE)).map_err(fail)?;
        summary(ctx, &outcome, &warnings)
    }
    /// Only an interrupted run leaves a saved state to tell of.
    fn previews(&self, interrupted: bool) -> bool {
        interrupted
    }
    fn preview(&self, ctx: &StepContext) -> Result<Option<crate::plan::status::Preview>, StepError> {
        if imports(&ctx.spec.params) {
            return Ok(None);
        }
        let ExpertParams { train, .. } = ctx.params()?;
        Ok(training_preview(ctx, train.steps))
    }
}

pub fn load_expert(ctx: &StepContext, role: &str, name: &str, base: &Base) -> Result<LoraExpert, StepError> {
    let inp = ctx.input(role)?;
    let mut e = LoraExpert::load(
        &inp.files.join(EXPERT_FILE),
        base.config(),
        base.model.device(),
        DType::F32,
    )
    .map_err(fail)?;
    e.name = name.to_string();
    Ok(e)
}

pub struct GateStep;

impl StepRunner for GateStep {
    fn kind(&self) -> &'static str {
        "gate"
    }
    fn run(&self, ctx: &StepContext) -> Result<(), StepError> {
        if imports(&ctx.spec.params) {
            return super::peft_import::run_gate(ctx);
        }
        let dev = device(ctx)?;
        let mut base = load_base(ctx, &dev)?;
        let cfg = TrainConfig::for_gates(&ctx.params::<GateStepParams>()?.gate).map_err(fail)?;
        let expert = load_expert(ctx, "expert", &ctx.spec.name, &base)?;
        let varmap = VarMap::new();
        let adapters = new_trainable_gates(&expert, &varmap, &dev, DType::F32).map_err(fail)?;
        base.model.set_adapters(adapters.clone()).map_err(fail)?;
        let vars = vars_sorted(&varmap);
        // The gate's warnings go to the log only: its version (so its bytes) stays.
        let (outcome, _) = fit(ctx, &mut base, &vars, &cfg, "gate")?;
        let gates = gates_from(&adapters, "", Some(base_identity(ctx)?)).map_err(fail)?;
        gates.save(&ctx.out.join(GATES_FILE)).map_err(fail)?;
        summary(ctx, &outcome, &[])
    }
    /// Only an interrupted run leaves a saved state to tell of.
    fn previews(&self, interrupted: bool) -> bool {
        interrupted
    }
    fn preview(&self, ctx: &StepContext) -> Result<Option<crate::plan::status::Preview>, StepError> {
        if imports(&ctx.spec.params) {
            return Ok(None);
        }
        let steps = ctx.params::<GateStepParams>()?.gate.steps;
        Ok(training_preview(ctx, steps))
    }
}

/// The `pool` step: the member list, by name, with the keys of their artifacts. The
/// pool holds no weights; evals read the experts' own files (no repacking).
pub struct PoolStep;

impl StepRunner for PoolStep {
    fn kind(&self) -> &'static str {
        "pool"
    }
    fn run(&self, ctx: &StepContext) -> Result<(), StepError> {
        let mut members = vec![];
        for (name, inp) in ctx.members("expert") {
            let gate = ctx.member("gate", name)?;
            members.push(serde_json::json!({"name": name, "expert": inp.key.hex(), "gate": gate.key.hex()}));
        }
        // The pool's own name is no ingredient of its key: not written either.
        let doc = serde_json::json!({"members": members});
        std::fs::write(
            ctx.out.join(crate::artifact_files::POOL_JSON),
            serde_json::to_vec_pretty(&doc).expect("json"),
        )?;
        Ok(())
    }
}
