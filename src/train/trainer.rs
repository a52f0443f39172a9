//! The training loop shared by expert, gate, multitask and pretraining steps.
//!
//! As in the paper's code: AdamW, linear warmup then constant (or linear decay),
//! global grad-norm clipping, gradient accumulation up to the effective batch,
//! validation every N steps keeping the best weights (ties go to the later check, and
//! the untrained start is the first candidate), and a resumable checkpoint every N
//! steps. Everything random comes from the seed, so a run is bitwise reproducible.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use serde_json::json;

use super::adamw::{AdamW, accumulate, clip_global_norm, grads_of};
use super::batches::{Batching, Pair, batch_at};
use super::checkpoint;
use super::schedule::{Schedule, lr_at};
use crate::model::{ModelError, Result as ModelResult};

/// Training settings. Expert and multitask steps read theirs straight from their
/// `train` group, as the schema fills it (every field present: the schema's defaults
/// are the only defaults); gate steps build theirs with [`TrainConfig::for_gates`].
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TrainConfig {
    pub steps: usize,
    /// Effective batch: sequences per optimizer step.
    pub batch: usize,
    pub micro_batch: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup: f64,
    pub schedule: Schedule,
    pub grad_clip: f64,
    pub max_input_len: usize,
    pub max_target_len: usize,
    /// Validate every N steps (None: no validation, the final weights are kept). A
    /// `train` group always names it: read as required, not as serde's implicit None.
    #[serde(deserialize_with = "present")]
    pub eval_every: Option<usize>,
    pub eval_examples: usize,
    pub checkpoint_every: usize,
    pub seed: u64,
    /// Dropout rate while training (0: none).
    pub dropout: f64,
    /// How batches are drawn. Absent from a step's parameters when it is the
    /// schema's keyless default (by length), hence serde's default, kept equal to
    /// the schema's by a test.
    #[serde(default)]
    pub batches: Batching,
}

/// A field that must be present, kept in an `Option` the code may set to None.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<usize>, D::Error> {
    <usize as serde::Deserialize>::deserialize(d).map(Some)
}

/// The `gate` group of a gate step, as the schema fills it. Gate training has fewer
/// settings than expert training: the paper's code fixes the rest (see
/// [`TrainConfig::for_gates`]).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct GateParams {
    pub steps: usize,
    pub batch: usize,
    pub micro_batch: usize,
    pub lr: f64,
    pub warmup: f64,
    pub grad_clip: f64,
    pub max_input_len: usize,
    pub max_target_len: usize,
    pub dropout: f64,
    pub seed: u64,
    #[serde(default)]
    pub batches: Batching,
}

/// How often a gate run writes a resumable checkpoint. Not a setting: gate runs are
/// short (the paper: 100 steps), so a checkpoint every 100 steps is one at most.
const GATE_CHECKPOINT_EVERY: usize = 100;

impl TrainConfig {
    /// Gate training as its `gate` group says, with what the paper's code fixes: AdamW
    /// without weight decay, a constant rate after warmup, and no validation before the
    /// end (its only validation, at the last step, writes the checkpoint it keeps), so
    /// the final gates are kept.
    pub fn for_gates(p: &GateParams) -> std::result::Result<TrainConfig, String> {
        TrainConfig {
            steps: p.steps,
            batch: p.batch,
            micro_batch: p.micro_batch,
            lr: p.lr,
            weight_decay: 0.0,
            warmup: p.warmup,
            schedule: Schedule::Constant,
            grad_clip: p.grad_clip,
            max_input_len: p.max_input_len,
            max_target_len: p.max_target_len,
            eval_every: None,
            eval_examples: 0,
            checkpoint_every: GATE_CHECKPOINT_EVERY,
            seed: p.seed,
            dropout: p.dropout,
            batches: p.batches,
        }
        .checked()
    }

    /// The settings, refused when a count that must be positive is not.
    pub fn checked(self) -> std::result::Result<TrainConfig, String> {
        if self.steps == 0 || self.batch == 0 || self.micro_batch == 0 {
            return Err("steps, batch and micro-batch must be positive".into());
        }
        Ok(self)
    }

    /// Micro-batches per optimizer step (the effective batch, rounded up).
    pub fn accumulation(&self) -> usize {
        micro_batches(self.batch, self.micro_batch)
    }

    fn micro(&self) -> usize {
        self.micro_batch.min(self.batch)
    }

    /// What a step trains on when the batch asks for more sequences than the
    /// `examples` training pairs: an epoch is cut into micro-batches of at most
    /// `micro` (the last one short), so a step takes fewer sequences than `batch`, or
    /// the same examples more than once. `settings`: how the manifest writes the batch
    /// and micro-batch (`train batch`, `train micro-batch`; the same for pretraining).
    pub fn short_batches(&self, examples: usize, settings: (&str, &str)) -> Option<String> {
        if examples == 0 || examples >= self.batch {
            return None;
        }
        let (batch, micro_batch) = settings;
        let chunks = examples.div_ceil(self.micro());
        let accumulation = self.accumulation();
        // Each step takes `accumulation` of an epoch's `chunks` micro-batches; exact
        // when a step covers whole epochs.
        let per_step = accumulation * examples / chunks;
        let about = if accumulation.is_multiple_of(chunks) {
            ""
        } else {
            "about "
        };
        let repeats = if accumulation > chunks {
            ", the same examples more than once"
        } else {
            ""
        };
        let with_micro = if micro_batch == batch {
            String::new()
        } else {
            format!(" (and {micro_batch} at most that)")
        };
        Some(format!(
            "{batch} is {}, more than the {examples} training examples: each step trains on {about}{per_step} sequences{repeats}; set it to at most {examples}{with_micro}, or give more examples",
            self.batch
        ))
    }
}

/// Micro-batches per optimizer step of `batch` sequences in micro-batches of `micro`
/// (at most `batch`; both positive, as [`TrainConfig::checked`] requires): whole
/// micro-batches, so a `batch` that `micro` does not divide trains on more sequences.
pub fn micro_batches(batch: usize, micro: usize) -> usize {
    batch.div_ceil(micro.min(batch)).max(1)
}

/// What the loop trains: a loss over a micro-batch of pairs.
pub trait Objective {
    /// Mean loss over the batch, differentiable with respect to the trained vars.
    fn loss(&mut self, batch: &[&Pair]) -> ModelResult<Tensor>;
    /// The same loss with the gradients of `scale ·` it, by name, from a
    /// hand-written backward pass where the objective has one for its current
    /// setting; None to take candle's autograd on [`Objective::loss`].
    fn loss_and_grads(
        &mut self,
        _batch: &[&Pair],
        _scale: f64,
    ) -> ModelResult<Option<(f64, BTreeMap<String, Tensor>)>> {
        Ok(None)
    }
    /// Called after every optimizer update (to refresh weights derived from vars).
    fn updated(&mut self) -> ModelResult<()> {
        Ok(())
    }
    /// Training mode for the next losses: `Some(seed)` before a training micro-batch
    /// (dropout on, its masks drawn from `seed`, a pure function of the run's seed and
    /// the micro-step), `None` before validation (dropout off).
    fn set_training(&mut self, _dropout_seed: Option<u64>) -> ModelResult<()> {
        Ok(())
    }
    /// The validation metric over the first `max` validation examples, higher is
    /// better (accuracy, exact match), or None where the data has no metric: the best
    /// checkpoint is then the one with the lowest validation loss.
    fn validation_metric(&mut self, _max: usize) -> ModelResult<Option<f64>> {
        Ok(None)
    }
}

/// The dropout seed of micro-step `k` of a run seeded `seed` (splitmix64 of the pair,
/// so neighbouring steps get unrelated streams).
pub fn dropout_seed(seed: u64, k: usize) -> u64 {
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(k as u64)
        .wrapping_add(0x6A09_E667_F3BC_C908);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// How the loop reports and learns that it should stop (the steps layer adapts its
/// progress bar and Ctrl-C flag to this).
pub trait Monitor {
    fn start(&self, total_steps: usize);
    fn step(&self, step: usize, message: &str);
    fn log(&self, line: &str);
    fn cancelled(&self) -> bool;
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{0}")]
    Config(String),
    #[error("training diverged at step {step} (loss {loss}); lower the learning rate or raise grad clipping")]
    Diverged { step: usize, loss: f64 },
    /// Before any update (no learning rate can be the cause).
    #[error(
        "the loss is {loss} before any training step changed a weight: the base model's weights (or, for a gate, its expert's) or the data give it, not the learning rate; `goosepipe score --model ...` on one example shows whether the model alone does"
    )]
    NotFiniteAtStart { loss: f64 },
    #[error("cancelled at step {step}; the checkpoint is kept")]
    Cancelled { step: usize },
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: String, message: String },
}

impl TrainError {
    /// A loss that is not finite at `step`, computed after `updates` optimizer
    /// updates: with none, no learning rate can be the cause.
    fn not_finite(step: usize, updates: usize, loss: f64) -> TrainError {
        if updates == 0 {
            TrainError::NotFiniteAtStart { loss }
        } else {
            TrainError::Diverged { step, loss }
        }
    }
}

impl From<candle_core::Error> for TrainError {
    fn from(e: candle_core::Error) -> Self {
        TrainError::Model(ModelError::from(e))
    }
}

pub struct TrainOutcome {
    /// The kept weights (best validation, or final), by var name.
    pub weights: HashMap<String, Tensor>,
    pub best_step: usize,
    /// One JSON object per logged step and validation (the artifact's metrics.jsonl).
    pub metrics: Vec<serde_json::Value>,
    pub resumed_from: Option<usize>,
}

fn snapshot(vars: &[(String, Var)]) -> ModelResult<HashMap<String, Tensor>> {
    vars.iter()
        .map(|(n, v)| Ok((n.clone(), v.as_tensor().copy()?)))
        .collect()
}

/// Whether a verified checkpoint belongs to this run: every variable (and moment, and
/// best weight, where present) with the variable's shape, and a step within the run.
/// A work folder's own name (the step's key), as a checkpoint records it.
fn check_state(
    s: &checkpoint::TrainState,
    vars: &[(String, Var)],
    cfg: &TrainConfig,
    work: &Path,
) -> Result<(), String> {
    match checkpoint::placement(&s.meta, work, cfg.steps) {
        checkpoint::Placement::Fits(_) => {}
        checkpoint::Placement::OtherFolder { saved, here } => {
            return Err(format!(
                "it was saved by the step whose work folder is {saved}, not this one's ({here})"
            ));
        }
        checkpoint::Placement::PastSteps(step) => {
            return Err(format!(
                "it is at step {step}, past this run's {} steps",
                cfg.steps
            ));
        }
        checkpoint::Placement::NoStep => return Err("its bookkeeping has no step".into()),
    }
    if !s.meta["metrics"].is_array() {
        return Err("its bookkeeping has no metrics".into());
    }
    let has_best = s.meta["best_score"].as_f64().is_some();
    for (name, var) in vars {
        for (prefix, required) in [("var", true), ("m", false), ("v", false), ("best", has_best)] {
            let key = format!("{prefix}/{name}");
            match s.tensors.get(&key) {
                Some(t) if t.dims() == var.dims() && t.dtype() == var.dtype() => {}
                Some(t) => {
                    return Err(format!(
                        "{key} is {:?} {:?}, the run's variable is {:?} {:?}",
                        t.dtype(),
                        t.dims(),
                        var.dtype(),
                        var.dims()
                    ));
                }
                None if required => return Err(format!("it has no {key}")),
                None => {}
            }
        }
    }
    Ok(())
}

/// One validation: the mean loss, and the metric where the data has one.
struct Validation {
    loss: f64,
    metric: Option<f64>,
}

impl Validation {
    /// What "best" compares: the metric, else the negated loss.
    fn score(&self) -> f64 {
        self.metric.unwrap_or(-self.loss)
    }

    fn record(&self, step: usize, best: Option<bool>) -> serde_json::Value {
        let mut r = json!({"step": step, "val_loss": self.loss});
        if let Some(m) = self.metric {
            r["val_metric"] = json!(m);
        }
        if let Some(b) = best {
            r["best"] = json!(b);
        }
        r
    }

    fn describe(&self) -> String {
        match self.metric {
            Some(m) => format!("validation metric {:.1}, loss {:.4}", m * 100.0, self.loss),
            None => format!("validation loss {:.4}", self.loss),
        }
    }
}

/// Validates with dropout off: the loss over up to `max` pairs, and the metric.
fn validation(obj: &mut dyn Objective, valid: &[Pair], micro: usize, max: usize) -> ModelResult<Validation> {
    obj.set_training(None)?;
    let loss = validate(obj, valid, micro, max)?;
    let metric = obj.validation_metric(max)?;
    Ok(Validation { loss, metric })
}

/// Mean validation loss over up to `max` pairs.
fn validate(obj: &mut dyn Objective, valid: &[Pair], micro: usize, max: usize) -> ModelResult<f64> {
    let take = &valid[..valid.len().min(max)];
    let (mut sum, mut n) = (0f64, 0usize);
    for chunk in take.chunks(micro.max(1)) {
        let refs: Vec<&Pair> = chunk.iter().collect();
        let l = obj
            .loss(&refs)?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
        sum += l * chunk.len() as f64;
        n += chunk.len();
    }
    Ok(if n == 0 { f64::NAN } else { sum / n as f64 })
}

/// Trains `vars` on `train` with `obj`; validates on `valid`. `work` holds the
/// resumable state (a previous interrupted run of the same step resumes from it).
pub fn train(
    obj: &mut dyn Objective,
    vars: &[(String, Var)],
    train: &[Pair],
    valid: &[Pair],
    cfg: &TrainConfig,
    work: &Path,
    monitor: &dyn Monitor,
) -> Result<TrainOutcome, TrainError> {
    if train.is_empty() {
        return Err(TrainError::Config("no training examples".into()));
    }
    let (mut st, resumed_from) = RunState::resume(obj, vars, cfg, work, monitor)?;
    let micro = cfg.micro();
    monitor.start(cfg.steps);
    // The untrained start is the first candidate for "best" (as in the paper's code);
    // a run resumed at step 0 has its record already.
    if resumed_from.is_none()
        && let Some(_) = cfg.eval_every
        && !valid.is_empty()
    {
        let v = validation(obj, valid, micro, cfg.eval_examples)?;
        st.metrics.push(v.record(0, None));
        st.best = Some((v.score(), 0, snapshot(vars)?));
        monitor.log(&format!("step 0: {}", v.describe()));
    }
    let t0 = Instant::now();
    let start_step = st.step;
    while st.step < cfg.steps {
        if monitor.cancelled() {
            st.save(vars, work)?;
            return Err(TrainError::Cancelled { step: st.step });
        }
        let (loss, mut grads) = accumulated_gradients(obj, vars, train, cfg, st.step)?;
        let norm = clip_global_norm(&mut grads, cfg.grad_clip)?;
        let lr = lr_at(cfg.lr, st.step, cfg.steps, cfg.warmup, cfg.schedule);
        st.opt.step(vars, &grads, lr)?;
        obj.updated()?;
        st.step += 1;
        let step = st.step;
        if !loss.is_finite() {
            // Its loss was computed before this step's update.
            return Err(TrainError::not_finite(step, step - 1, loss));
        }
        st.metrics
            .push(json!({"step": step, "loss": loss, "lr": lr, "grad_norm": norm}));
        let rate = (step - start_step) as f64 / t0.elapsed().as_secs_f64().max(1e-9);
        monitor.step(step, &format!("loss {loss:.4} | {rate:.1} steps/s"));
        if let Some(every) = cfg.eval_every
            && !valid.is_empty()
            && (step.is_multiple_of(every) || step == cfg.steps)
        {
            st.validate(obj, vars, valid, cfg, monitor)?;
        }
        if step.is_multiple_of(cfg.checkpoint_every.max(1)) && step < cfg.steps {
            st.save(vars, work)?;
        }
    }
    let (weights, best_step) = match st.best {
        Some((_, s, w)) => (w, s),
        None => (snapshot(vars)?, st.step),
    };
    Ok(TrainOutcome {
        weights,
        best_step,
        metrics: st.metrics,
        resumed_from,
    })
}

/// One optimizer step's gradients, accumulated over its micro-batches (each with
/// its own dropout seed), and its mean loss.
fn accumulated_gradients(
    obj: &mut dyn Objective,
    vars: &[(String, Var)],
    train: &[Pair],
    cfg: &TrainConfig,
    step: usize,
) -> Result<(f64, BTreeMap<String, Tensor>), TrainError> {
    let (micro, accum) = (cfg.micro(), cfg.accumulation());
    let mut grads: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut loss_sum = 0f64;
    for a in 0..accum {
        let k = step * accum + a;
        obj.set_training((cfg.dropout > 0.0).then(|| dropout_seed(cfg.seed, k)))?;
        let idx = batch_at(train, micro, cfg.seed, k, cfg.batches);
        let refs: Vec<&Pair> = idx.iter().map(|&i| &train[i]).collect();
        if let Some((loss, g)) = obj.loss_and_grads(&refs, 1.0 / accum as f64)? {
            loss_sum += loss;
            accumulate(&mut grads, gradients_of_every_var(vars, g)?)?;
            continue;
        }
        let loss = obj.loss(&refs)?;
        loss_sum += loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        let scaled = (loss / accum as f64)?;
        let g = scaled.backward()?;
        accumulate(&mut grads, grads_of(vars, &g))?;
    }
    Ok((loss_sum / accum as f64, grads))
}

/// The hand-written pass's gradients, checked to name every trained variable
/// (a variable without one would silently never move).
fn gradients_of_every_var(
    vars: &[(String, Var)],
    mut g: BTreeMap<String, Tensor>,
) -> Result<BTreeMap<String, Tensor>, TrainError> {
    let mut out = BTreeMap::new();
    for (name, _) in vars {
        let grad = g
            .remove(name)
            .ok_or_else(|| TrainError::Config(format!("the backward pass gave no gradient for `{name}`")))?;
        out.insert(name.clone(), grad);
    }
    Ok(out)
}

/// The best weights so far: (validation score, step, weights).
type Best = Option<(f64, usize, HashMap<String, Tensor>)>;

/// What a run carries from step to step: what its checkpoint holds.
struct RunState {
    step: usize,
    opt: AdamW,
    best: Best,
    metrics: Vec<serde_json::Value>,
}

impl RunState {
    /// The state of the last good checkpoint in `work` (the vars and the objective
    /// updated to it), or a fresh one; with the step it resumed from.
    fn resume(
        obj: &mut dyn Objective,
        vars: &[(String, Var)],
        cfg: &TrainConfig,
        work: &Path,
        monitor: &dyn Monitor,
    ) -> Result<(RunState, Option<usize>), TrainError> {
        let device = vars
            .first()
            .map(|(_, v)| v.device().clone())
            .unwrap_or(Device::Cpu);
        let mut st = RunState {
            step: 0,
            opt: AdamW::new(1e-8, cfg.weight_decay),
            best: None,
            metrics: vec![],
        };
        let loaded = checkpoint::load(work, &device, |s| check_state(s, vars, cfg, work));
        let fallback = if loaded.state.is_some() {
            "training resumes from the previous checkpoint"
        } else {
            "training starts from scratch"
        };
        for w in &loaded.warnings {
            monitor.log(&format!("warning: {w}; {fallback}"));
        }
        let Some(state) = loaded.state else {
            return Ok((st, None));
        };
        let tensors = &state.tensors;
        for (name, var) in vars {
            var.set(&tensors[&format!("var/{name}")])?;
            if let Some(m) = tensors.get(&format!("m/{name}")) {
                st.opt.m.insert(name.clone(), m.clone());
            }
            if let Some(v) = tensors.get(&format!("v/{name}")) {
                st.opt.v.insert(name.clone(), v.clone());
            }
        }
        let meta = &state.meta;
        st.step = meta["step"].as_u64().unwrap_or(0) as usize;
        st.opt.t = meta["adam_t"].as_u64().unwrap_or(0) as usize;
        if let Some(score) = meta["best_score"].as_f64() {
            let w: HashMap<String, Tensor> = vars
                .iter()
                .filter_map(|(n, _)| tensors.get(&format!("best/{n}")).map(|t| (n.clone(), t.clone())))
                .collect();
            st.best = Some((score, meta["best_step"].as_u64().unwrap_or(0) as usize, w));
        }
        st.metrics = meta["metrics"].as_array().cloned().unwrap_or_default();
        obj.updated()?;
        monitor.log(&format!("resumed from the checkpoint at step {}", st.step));
        let step = st.step;
        Ok((st, Some(step)))
    }

    /// Writes the checkpoint of this state (vars, Adam moments, best weights, metrics).
    fn save(&self, vars: &[(String, Var)], work: &Path) -> Result<(), TrainError> {
        let mut t: HashMap<String, Tensor> = HashMap::new();
        for (n, v) in vars {
            t.insert(format!("var/{n}"), v.as_tensor().clone());
        }
        for (n, m) in &self.opt.m {
            t.insert(format!("m/{n}"), m.clone());
        }
        for (n, v) in &self.opt.v {
            t.insert(format!("v/{n}"), v.clone());
        }
        if let Some((_, _, w)) = &self.best {
            for (n, x) in w {
                t.insert(format!("best/{n}"), x.clone());
            }
        }
        let meta = json!({
            "step": self.step,
            "adam_t": self.opt.t,
            "best_score": self.best.as_ref().map(|b| b.0),
            "best_step": self.best.as_ref().map(|b| b.1),
            "metrics": self.metrics,
            // The step it belongs to (its work folder is named by the step's key).
            "work": checkpoint::work_folder_name(work),
        });
        checkpoint::save(work, &checkpoint::TrainState { tensors: t, meta }).map_err(|message| {
            TrainError::Checkpoint {
                path: work.join(checkpoint::STATE).display().to_string(),
                message,
            }
        })
    }

    /// Validates at the current step and keeps the weights when they are the best
    /// so far (ties go to the later step).
    fn validate(
        &mut self,
        obj: &mut dyn Objective,
        vars: &[(String, Var)],
        valid: &[Pair],
        cfg: &TrainConfig,
        monitor: &dyn Monitor,
    ) -> Result<(), TrainError> {
        let step = self.step;
        let v = validation(obj, valid, cfg.micro(), cfg.eval_examples)?;
        if !v.loss.is_finite() {
            return Err(TrainError::not_finite(step, step, v.loss));
        }
        let score = v.score();
        // `>=`: ties go to the later checkpoint.
        let better = self.best.as_ref().is_none_or(|b| score >= b.0);
        self.metrics.push(v.record(step, Some(better)));
        monitor.log(&format!(
            "step {step}: {}{}",
            v.describe(),
            if better { " (best so far)" } else { "" }
        ));
        if better {
            self.best = Some((score, step, snapshot(vars)?));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// A one-variable objective: the loss is (x - 3)^2 and falls all run long, while
    /// the metric peaks when x passes 1.5; dropout seeds are recorded.
    struct Toy {
        x: Var,
        seeds: Vec<Option<u64>>,
        metric: bool,
    }

    impl Objective for Toy {
        fn loss(&mut self, _batch: &[&Pair]) -> ModelResult<Tensor> {
            Ok((self.x.as_tensor() - 3.0)?.sqr()?.sum_all()?)
        }
        fn set_training(&mut self, seed: Option<u64>) -> ModelResult<()> {
            self.seeds.push(seed);
            Ok(())
        }
        fn validation_metric(&mut self, _max: usize) -> ModelResult<Option<f64>> {
            let x = self
                .x
                .as_tensor()
                .to_dtype(DType::F64)?
                .sum_all()?
                .to_scalar::<f64>()?;
            Ok(self.metric.then(|| 1.0 - (x - 1.5).abs()))
        }
    }

    struct Quiet;
    impl Monitor for Quiet {
        fn start(&self, _: usize) {}
        fn step(&self, _: usize, _: &str) {}
        fn log(&self, _: &str) {}
        fn cancelled(&self) -> bool {
            false
        }
    }

    /// A `train` group as the schema fills it (every field present).
    fn train_group() -> serde_json::Value {
        serde_json::json!({
            "steps": 40, "batch": 4, "micro-batch": 2, "lr": 0.1, "weight-decay": 0.01,
            "warmup": 0.06, "schedule": "linear-decay", "grad-clip": 1.0,
            "max-input-len": 32, "max-target-len": 16, "dropout": 0.1, "eval-every": 10,
            "eval-examples": 8, "checkpoint-every": 20, "seed": 3
        })
    }

    #[test]
    fn the_train_group_is_read_whole_and_a_missing_field_is_an_error_not_a_default() {
        let cfg: TrainConfig = serde_json::from_value(train_group()).unwrap();
        assert_eq!((cfg.steps, cfg.micro_batch, cfg.eval_every), (40, 2, Some(10)));
        assert_eq!(cfg.schedule, Schedule::LinearDecay);
        assert_eq!(cfg.accumulation(), 2);
        let mut missing = train_group();
        missing.as_object_mut().unwrap().remove("lr");
        let e = serde_json::from_value::<TrainConfig>(missing)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `lr`"), "{e}");
        let mut no_validation = train_group();
        no_validation.as_object_mut().unwrap().remove("eval-every");
        let e = serde_json::from_value::<TrainConfig>(no_validation)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `eval-every`"), "{e}");
        let mut unknown = train_group();
        unknown
            .as_object_mut()
            .unwrap()
            .insert("momentum".into(), serde_json::json!(0.9));
        assert!(serde_json::from_value::<TrainConfig>(unknown).is_err());
        let mut zero: TrainConfig = serde_json::from_value(train_group()).unwrap();
        zero.micro_batch = 0;
        assert!(zero.checked().is_err());
    }

    #[test]
    fn gate_training_fixes_what_the_paper_fixes() {
        let g: GateParams = serde_json::from_value(serde_json::json!({
            "steps": 100, "batch": 1024, "micro-batch": 8, "lr": 0.005, "warmup": 0.06,
            "grad-clip": 1.0, "max-input-len": 512, "max-target-len": 512, "dropout": 0.1,
            "seed": 42
        }))
        .unwrap();
        let cfg = TrainConfig::for_gates(&g).unwrap();
        assert_eq!(cfg.weight_decay, 0.0);
        assert_eq!(cfg.schedule, Schedule::Constant);
        assert_eq!(cfg.eval_every, None, "gates keep their final values");
        assert_eq!((cfg.steps, cfg.batch, cfg.lr, cfg.seed), (100, 1024, 0.005, 42));
    }

    fn config() -> TrainConfig {
        TrainConfig {
            steps: 40,
            batch: 1,
            micro_batch: 1,
            lr: 0.1,
            weight_decay: 0.0,
            warmup: 0.0,
            schedule: Schedule::Constant,
            grad_clip: 0.0,
            max_input_len: 512,
            max_target_len: 512,
            dropout: 0.1,
            batches: Batching::ByLength,
            eval_every: Some(5),
            eval_examples: 1000,
            checkpoint_every: 1000,
            seed: 42,
        }
    }

    /// A batch above the training examples: what a step then takes, said with the
    /// micro-batches an epoch is cut into (the last one short).
    #[test]
    fn short_batches_say_what_a_step_takes() {
        let with = |batch, micro_batch| TrainConfig {
            batch,
            micro_batch,
            ..config()
        };
        let names = ("`train batch`", "`train micro-batch`");
        let said = |batch, micro, n| with(batch, micro).short_batches(n, names);
        assert_eq!(said(8, 8, 8), None);
        assert_eq!(said(32, 8, 40), None);
        // 8 + 2 per epoch, four micro-batches a step: two epochs.
        assert_eq!(
            said(32, 8, 10).unwrap(),
            "`train batch` is 32, more than the 10 training examples: each step trains on 20 sequences, the same examples more than once; set it to at most 10 (and `train micro-batch` at most that), or give more examples"
        );
        assert!(
            said(32, 16, 10)
                .unwrap()
                .contains("each step trains on 20 sequences, the same")
        );
        assert!(
            said(12, 64, 10)
                .unwrap()
                .contains("each step trains on 10 sequences; set it to at most 10")
        );
        // 8 + 8 + 4 per epoch, four a step: not whole epochs.
        assert!(
            said(32, 8, 20)
                .unwrap()
                .contains("each step trains on about 26 sequences")
        );
        let pretraining = with(100, 100)
            .short_batches(64, ("`init batch`", "`init batch`"))
            .unwrap();
        assert!(
            pretraining.ends_with("set it to at most 64, or give more examples"),
            "{pretraining}"
        );
    }

    /// (x - 3)^2 plus `offset`: NaN from the start when the offset is NaN.
    struct Offset {
        x: Var,
        offset: f32,
    }

    impl Objective for Offset {
        fn loss(&mut self, _batch: &[&Pair]) -> ModelResult<Tensor> {
            Ok(((self.x.as_tensor() - 3.0)?.sqr()? + f64::from(self.offset))?.sum_all()?)
        }
    }

    /// A loss that is NaN before any update is not blamed on the learning rate (a
    /// base model with NaN weights was told to lower it); one that blows up later is.
    #[test]
    fn a_loss_not_finite_at_the_start_is_told_apart_from_divergence() {
        let data = vec![Pair {
            input: vec![1],
            target: vec![1],
        }];
        let run = |offset: f32, cfg: TrainConfig| {
            let x = Var::from_tensor(&Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap()).unwrap();
            let mut obj = Offset { x: x.clone(), offset };
            let work = tempfile::tempdir().unwrap();
            match train(
                &mut obj,
                &[("x".into(), x)],
                &data,
                &data,
                &cfg,
                work.path(),
                &Quiet,
            ) {
                Ok(_) => panic!("trained"),
                Err(e) => e.to_string(),
            }
        };
        for eval_every in [Some(5), None] {
            let e = run(
                f32::NAN,
                TrainConfig {
                    eval_every,
                    ..config()
                },
            );
            assert!(
                e.starts_with("the loss is NaN before any training step changed a weight")
                    && e.contains("not the learning rate"),
                "{eval_every:?}: {e}"
            );
        }
        let e = run(
            0.0,
            TrainConfig {
                lr: 1e30,
                dropout: 0.0,
                eval_every: None,
                ..config()
            },
        );
        assert!(
            e.starts_with("training diverged at step ") && !e.starts_with("training diverged at step 1 "),
            "{e}"
        );
    }

    fn fit(metric: bool) -> (TrainOutcome, Vec<Option<u64>>) {
        let x = Var::from_tensor(&Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap()).unwrap();
        let mut obj = Toy {
            x: x.clone(),
            seeds: vec![],
            metric,
        };
        let data = vec![Pair {
            input: vec![1],
            target: vec![1],
        }];
        let work = tempfile::tempdir().unwrap();
        let out = train(
            &mut obj,
            &[("x".into(), x)],
            &data,
            &data,
            &config(),
            work.path(),
            &Quiet,
        )
        .unwrap();
        (out, obj.seeds)
    }

    /// Cancels at the first check of each listed step.
    struct CancelAt(std::cell::Cell<Vec<usize>>, std::cell::Cell<usize>);
    impl Monitor for CancelAt {
        fn start(&self, _: usize) {}
        fn step(&self, s: usize, _: &str) {
            self.1.set(s);
        }
        fn log(&self, _: &str) {}
        fn cancelled(&self) -> bool {
            let mut at = self.0.take();
            let hit = at.first() == Some(&self.1.get());
            if hit {
                at.remove(0);
            }
            self.0.set(at);
            hit
        }
    }

    /// Stopped at step 0 (right after the untrained start's validation) or later, a
    /// resumed run ends with the same weights and the same metrics record.
    #[test]
    fn a_run_stopped_at_step_zero_or_later_resumes_to_the_same_record() {
        let (want, _) = fit(true);
        for stops in [vec![0], vec![0, 7], vec![13]] {
            let x = Var::from_tensor(&Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap()).unwrap();
            let data = vec![Pair {
                input: vec![1],
                target: vec![1],
            }];
            let work = tempfile::tempdir().unwrap();
            let monitor = CancelAt(std::cell::Cell::new(stops.clone()), std::cell::Cell::new(0));
            let vars = [("x".to_string(), x.clone())];
            let mut runs = 0;
            let out = loop {
                runs += 1;
                let mut obj = Toy {
                    x: x.clone(),
                    seeds: vec![],
                    metric: true,
                };
                match train(&mut obj, &vars, &data, &data, &config(), work.path(), &monitor) {
                    Ok(out) => break out,
                    Err(TrainError::Cancelled { .. }) => continue,
                    Err(e) => panic!("{e}"),
                }
            };
            assert_eq!(runs, stops.len() + 1);
            assert_eq!(out.metrics, want.metrics, "stopped at {stops:?}");
            assert_eq!(out.best_step, want.best_step);
            assert_eq!(
                out.weights["x"].to_vec1::<f32>().unwrap(),
                want.weights["x"].to_vec1::<f32>().unwrap()
            );
        }
    }

    /// A checkpoint copied into another step's work folder (same shapes) is not
    /// resumed there: it starts from scratch, with a warning, and ends as a run that
    /// was never interrupted does.
    #[test]
    fn a_checkpoint_from_another_steps_work_folder_is_not_resumed() {
        let (want, _) = fit(true);
        let root = tempfile::tempdir().unwrap();
        let (theirs, ours) = (root.path().join("a".repeat(64)), root.path().join("b".repeat(64)));
        std::fs::create_dir_all(&theirs).unwrap();
        std::fs::create_dir_all(&ours).unwrap();
        let data = vec![Pair {
            input: vec![1],
            target: vec![1],
        }];
        let x = Var::from_tensor(&Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap()).unwrap();
        let vars = [("x".to_string(), x.clone())];
        let toy = || Toy {
            x: x.clone(),
            seeds: vec![],
            metric: true,
        };
        let stop = CancelAt(std::cell::Cell::new(vec![13]), std::cell::Cell::new(0));
        let cancelled = train(&mut toy(), &vars, &data, &data, &config(), &theirs, &stop);
        assert!(matches!(cancelled, Err(TrainError::Cancelled { .. })));
        std::fs::copy(theirs.join(checkpoint::STATE), ours.join(checkpoint::STATE)).unwrap();
        struct Logged(std::cell::RefCell<Vec<String>>);
        impl Monitor for Logged {
            fn start(&self, _: usize) {}
            fn step(&self, _: usize, _: &str) {}
            fn log(&self, m: &str) {
                self.0.borrow_mut().push(m.to_string());
            }
            fn cancelled(&self) -> bool {
                false
            }
        }
        let logged = Logged(Default::default());
        x.set(&Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        let out = train(&mut toy(), &vars, &data, &data, &config(), &ours, &logged).unwrap();
        let said = logged.0.borrow().join("\n");
        assert!(
            said.contains("was saved by the step whose work folder is aaaa")
                && said.contains("training starts from scratch")
                && !said.contains("resumed from"),
            "{said}"
        );
        assert_eq!(out.metrics, want.metrics);
        // Nor does plan count it as saved progress there.
        std::fs::copy(theirs.join(checkpoint::STATE), ours.join(checkpoint::STATE)).unwrap();
        assert_eq!(
            checkpoint::saved_state(&ours, 1000),
            checkpoint::Saved::Unusable("saved by the step whose work folder is aaaaaaaaaaaa".into())
        );
        assert_eq!(checkpoint::saved_state(&theirs, 1000), checkpoint::Saved::At(13));
        // In its own folder, it resumes.
        let logged = Logged(Default::default());
        train(&mut toy(), &vars, &data, &data, &config(), &theirs, &logged).unwrap();
        assert!(
            logged
                .0
                .borrow()
                .iter()
                .any(|m| m.contains("resumed from the checkpoint at step 13"))
        );
    }

    #[test]
    fn the_best_checkpoint_is_chosen_by_the_metric_where_there_is_one() {
        let (by_metric, seeds) = fit(true);
        let (by_loss, _) = fit(false);
        // The loss keeps falling: the last check wins on loss; the metric peaks early.
        assert_eq!(by_loss.best_step, 40);
        assert!(
            by_metric.best_step > 0 && by_metric.best_step < 40,
            "{}",
            by_metric.best_step
        );
        let x = by_metric.weights["x"].to_vec1::<f32>().unwrap()[0];
        assert!((x - 1.5).abs() < 0.5, "kept x = {x}");
        let recorded = by_metric
            .metrics
            .iter()
            .filter(|m| m.get("val_metric").is_some())
            .count();
        assert_eq!(recorded, 9, "steps 0, 5, ..., 40 validated");
        // Dropout is on (a seed per micro-step, a pure function of seed and step) while
        // training and off (None) for every validation.
        assert_eq!(seeds.iter().filter(|s| s.is_none()).count(), 9);
        let train_seeds: Vec<u64> = seeds.iter().flatten().copied().collect();
        assert_eq!(train_seeds.len(), 40);
        assert_eq!(train_seeds[3], dropout_seed(42, 3));
        assert_ne!(train_seeds[3], train_seeds[4]);
    }

    /// A resumed run reads the metrics of the steps before the interruption back
    /// from train-state.json; they must parse to the same f64s, or the artifact's
    /// metrics.jsonl differs from an uninterrupted run's (serde_json's default
    /// float parser is off by one ulp for this value; `float_roundtrip` is exact).
    #[test]
    fn checkpointed_metrics_round_trip_exactly() {
        for x in [0.10380577415915991f64, 8.704417705535889, 1e-300, 0.1 + 0.2] {
            let text = serde_json::to_string(&serde_json::json!({ "grad_norm": x })).unwrap();
            let back: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                back["grad_norm"].as_f64().unwrap().to_bits(),
                x.to_bits(),
                "{text}"
            );
        }
    }

    /// A small T5 with a trainable LoRA, trained through the hand-written pass or
    /// through candle's autograd (`pass: false` declines it).
    struct Lora {
        model: crate::model::T5Model,
        pass: bool,
    }

    impl Lora {
        fn batch(&self, batch: &[&Pair]) -> ModelResult<crate::model::Seq2SeqBatch> {
            crate::train::batches::seq2seq_batch(batch, &self.model.config, &Device::Cpu)
        }
    }

    impl Objective for Lora {
        fn loss(&mut self, batch: &[&Pair]) -> ModelResult<Tensor> {
            let b = self.batch(batch)?;
            self.model.forward_loss(&b)
        }
        fn loss_and_grads(
            &mut self,
            batch: &[&Pair],
            scale: f64,
        ) -> ModelResult<Option<(f64, BTreeMap<String, Tensor>)>> {
            if !self.pass {
                return Ok(None);
            }
            let b = self.batch(batch)?;
            Ok(self
                .model
                .lora_loss_and_grads(&b, scale)?
                .map(|p| (p.loss, p.grads)))
        }
    }

    fn train_lora(pass: bool) -> (Vec<f64>, Vec<(String, Vec<f32>)>) {
        let cfg = crate::model::T5Config::tiny_v1_1(23, 16, 1);
        let mut model = crate::model::T5Model::init_random(&cfg, 1, &Device::Cpu, DType::F32).unwrap();
        let varmap = candle_nn::VarMap::new();
        let set = crate::model::adapter::trainable::new_trainable_lora(
            &cfg,
            4,
            2,
            |_| true,
            &varmap,
            &Device::Cpu,
            DType::F32,
        )
        .unwrap();
        model.set_adapters(set).unwrap();
        let mut vars: Vec<(String, Var)> = varmap.data().lock().unwrap().clone().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let data: Vec<Pair> = (0..8u32)
            .map(|i| Pair {
                input: (0..3 + i % 4).map(|j| 2 + (i * 5 + j * 3) % 21).collect(),
                target: (0..1 + i % 3).map(|j| 2 + (i + j * 7) % 21).chain([1]).collect(),
            })
            .collect();
        let cfg = TrainConfig {
            steps: 6,
            batch: 4,
            micro_batch: 2,
            lr: 1e-2,
            grad_clip: 1.0,
            dropout: 0.0,
            batches: Batching::ByLength,
            eval_every: None,
            ..config()
        };
        let work = tempfile::tempdir().unwrap();
        let mut obj = Lora { model, pass };
        let out = train(&mut obj, &vars, &data, &[], &cfg, work.path(), &Quiet).unwrap();
        let losses = out.metrics.iter().filter_map(|m| m["loss"].as_f64()).collect();
        let weights = vars
            .iter()
            .map(|(n, v)| {
                (
                    n.clone(),
                    v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                )
            })
            .collect();
        (losses, weights)
    }

    #[test]
    fn training_through_the_hand_written_pass_follows_candles_autograd() {
        let (pass_losses, pass_weights) = train_lora(true);
        let (auto_losses, auto_weights) = train_lora(false);
        assert_eq!(pass_losses.len(), 6);
        for (a, b) in pass_losses.iter().zip(&auto_losses) {
            assert!((a - b).abs() < 1e-4 * b.abs().max(1.0), "losses {a} vs {b}");
        }
        assert!(pass_losses[5] < pass_losses[0], "the loss falls: {pass_losses:?}");
        for ((name, a), (_, b)) in pass_weights.iter().zip(&auto_weights) {
            let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(diff < 1e-4, "{name}: weights differ by {diff} after six steps");
        }
    }
}
