//! The `eval` step: scores every requested method on every task with the pool's
//! experts, and writes the results table (results.md, results.csv, results.json).
//!
//! Each method is a router in `crate::route` (one file each); this step loads what
//! the methods are built from (experts, gates, average activations, retrieval
//! libraries, the multitask LoRA), scores the tasks (rank classification or
//! greedy generation) and logs the token routers' choices for `report --plots`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::DType;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Deserialize as _;

use super::common::{Base, device, encode, encode_choices, fail, load_base, load_tokenizer_and_eos};
use super::dataset::EXAMPLES;
use super::eval_parts::{Finished, Found, PartKey, Parts, Tally};
use super::expert::{GATES_FILE, load_expert};
use super::retrieval_index::{LIBRARY_FILE, embed_examples, load_embedder, load_library};
use super::tokenize::UNKNOWN_SAID;
use crate::data::unknown_words::{UnknownWords, unknown_id};
use crate::data::{Example, read_jsonl};
use crate::eval::Results;
use crate::eval::metrics::{exact_match, rouge_l};
use crate::eval::predictions::{Answers, Predictions, Shown, TaskPredictions};
use crate::eval::routing_quality::RoutingQuality;
use crate::exec::{JobDefaults, Kind, StepContext, StepError, StepRunner};
use crate::model::adapter::ModuleRouting;
use crate::model::{AdapterSet, ChoiceItem, GateVectors, LoraExpert, predict};
use crate::route::{self, Chosen, Scoring};
use crate::store::spec::member_role;
use crate::store::{Key, StepSpec};

/// Every method over every task: a GPU job of hours at the paper's scale. Version 12:
/// the results no longer record the eval's name (an artifact's bytes depend on its
/// key alone; the tables shown are headed with it). Version 13: `results.csv` quotes
/// names as RFC 4180 (a comma was written as `;`), `results.md` escapes `|` and line
/// breaks in names, and a one-expert pool's title is singular. Version 14: every
/// (method, task) result is also published as a part with a key of its own
/// (`parts/`, see `eval_parts`), which later evals reuse. Version 15: part keys no
/// longer hold this version (their own format tag stands for how a part is scored),
/// so that a change to what the eval writes from its parts keeps them reusable.
/// Version 16: the routing-quality record measures an owner that adapts some modules
/// over those (its rows were dropped), and leaves constant (untrained) gates out of
/// the pool's gate correlation, counting them (they read as correlation 0).
/// Version 17: `predictions.json`, every example with each method's answer (the
/// choice picked, the text generated), read by `report --examples`.
/// Version 18: task notes on inputs cut to `max-input-len`, choices cut to
/// `max-target-len`, and choices that read alike only once cut (said as the cut's).
///
/// Bump `eval_parts::PART_FORMAT` as well when a change alters any (method, task)
/// result: scores, routing records, or what a part file holds.
pub const KIND: Kind = Kind::new("eval", 18, 9, JobDefaults::new(1, 4, "32G", "8:00:00"))
    .with_tables(crate::artifact_files::RESULTS_MD);

pub struct EvalStep {
    /// The methods it can run (`route::METHODS` in the product).
    pub methods: Vec<&'static dyn route::Method>,
}

pub use crate::artifact_files::PER_EXAMPLE_JSON;

/// Per task, per module: the experts a method chose (saved as routing.json).
type TaskRouting = BTreeMap<String, BTreeMap<String, ModuleRouting>>;

struct Task {
    name: String,
    metric: String,
    /// Token limits, as training's: an input or answer choice beyond them is cut,
    /// keeping its final EOS (one very long example would otherwise take all memory).
    max_input_len: usize,
    max_target_len: usize,
    max_new_tokens: usize,
    /// The pool member trained on this task's data, whose share of the routing the
    /// eval records.
    owner: Option<String>,
    examples: Vec<Example>,
    /// The cap and seed that sampled `examples`, None when every example is scored.
    cut: Option<(usize, u64)>,
}

/// A rank-classification task needs answer choices on every example it scores.
/// `file`: the dataset's examples.jsonl, where the first one without choices is
/// found, for a line a user can open (several rows may share an input).
fn check_choices(
    name: &str,
    task: &TaskParams,
    examples: &[Example],
    file: &Path,
    data: &str,
) -> Result<(), StepError> {
    if task.metric == "rank-classification"
        && let Some(e) = examples.iter().find(|e| e.choices.is_empty())
    {
        let without = examples.iter().filter(|e| e.choices.is_empty()).count();
        // Its line in the file, read again only here (the examples were sampled).
        let i = read_jsonl(file)
            .ok()
            .and_then(|all| all.iter().position(|x| x == e))
            .unwrap_or(0);
        let shown: String = e.input.chars().take(80).collect();
        // The files the dataset was made from (its provenance), which a user can open;
        // the example's number is its place among the dataset's examples, the rows of
        // those files in order less any the dataset dropped.
        let made_from = std::fs::read(file.with_file_name(crate::artifact_files::DATA_JSON))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| {
                let files: Vec<String> = v["files"]
                    .as_array()?
                    .iter()
                    .filter_map(|f| f.as_str().map(String::from))
                    .collect();
                (!files.is_empty())
                    .then(|| format!(", made from {}", crate::plan::listing::first_few(&files, 3)))
            })
            .unwrap_or_default();
        return Err(fail(format!(
            "task {name:?}: {without} of the {} examples of {data} have no answer choices \
             (the first: example {} of the dataset{made_from}; input {shown:?}), and the task is \
             scored by rank classification; give every example choices, or set the task's \
             metric= to exact-match or rouge-l",
            examples.len(),
            i + 1
        )));
    }
    Ok(())
}

/// A task's examples under `max-examples` and the eval's `seed`, and the sample that
/// cut them (cap and seed), None where the cap took every example: then neither
/// setting changed what is scored.
fn sampled(mut ex: Vec<Example>, cap: Option<usize>, seed: u64) -> (Vec<Example>, Option<(usize, u64)>) {
    if let Some(n) = cap
        && ex.len() > n
    {
        ex.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        ex.truncate(n);
        return (ex, Some((n, seed)));
    }
    (ex, None)
}

/// What a part's key says of a task that no cap cut: no `max-examples` and the
/// schema's default seed, as every part key said before the sample was keyed by
/// whether it happened (so those keys stand, and an eval whose seed or cap cuts
/// nothing reuses their parts). Equal to the schema's default by a test.
pub const UNSAMPLED_SEED: u64 = 42;

/// What a method answered on a task's examples, in example order.
#[derive(Default)]
struct Answered {
    /// 1/0 for rank classification and exact match, ROUGE-L F for rouge-l.
    scores: Vec<f64>,
    /// The chosen answer choice (rank classification) or the generated text.
    predictions: Vec<String>,
}

/// Every example's score and prediction, in example order.
fn score_task(
    ctx: &StepContext,
    base: &Base,
    task: &Task,
    batch: usize,
    done: &mut u64,
) -> Result<Answered, StepError> {
    let tok = &base.tokenizer;
    let eos = base.config().eos_token_id;
    let mut per_example = Answered::default();
    for chunk in task.examples.chunks(batch.max(1)) {
        ctx.cancel.check()?;
        let inputs: Vec<Vec<u32>> = chunk
            .iter()
            .map(|e| task.input_ids(tok, e, eos))
            .collect::<Result<_, StepError>>()?;
        if task.metric == "rank-classification" {
            let items = chunk
                .iter()
                .zip(&inputs)
                .map(|(e, inp)| {
                    if e.choices.is_empty() {
                        return Err(fail(
                            "rank classification needs answer choices, and an example has none",
                        ));
                    }
                    Ok(ChoiceItem {
                        input: inp.clone(),
                        choices: task.choice_ids(tok, e, eos)?,
                    })
                })
                .collect::<Result<Vec<_>, StepError>>()?;
            let scores = base.model.score_choices(&items, batch).map_err(fail)?;
            for (e, s) in chunk.iter().zip(&scores) {
                let chosen = predict(s);
                let right = chosen.is_some_and(|i| e.choice_is_right(i));
                per_example.scores.push(f64::from(u8::from(right)));
                per_example
                    .predictions
                    .push(chosen.and_then(|i| e.choices.get(i)).cloned().unwrap_or_default());
            }
        } else {
            let outs = base
                .model
                .generate_greedy_until(&inputs, task.max_new_tokens, &|| ctx.cancel.is_cancelled())
                .map_err(fail)?
                .ok_or(StepError::Cancelled)?;
            for (e, ids) in chunk.iter().zip(&outs) {
                let text = tok.decode(ids, true).map_err(|x| fail(format!("decode: {x}")))?;
                // Several accepted answers: the best match counts (BIG-bench's rule).
                let best = e
                    .accepted()
                    .iter()
                    .map(|a| {
                        if task.metric == "rouge-l" {
                            rouge_l(&text, a)
                        } else {
                            exact_match(&text, a) as u8 as f64
                        }
                    })
                    .fold(0.0, f64::max);
                per_example.scores.push(best);
                per_example.predictions.push(text);
            }
        }
        *done += chunk.len() as u64;
        ctx.progress.set_position(*done);
    }
    Ok(per_example)
}

impl Task {
    /// An example's input as scored: cut to `max_input_len` tokens, ending in EOS
    /// when cut, as training cuts them.
    fn input_ids(&self, tok: &tokenizers::Tokenizer, e: &Example, eos: u32) -> Result<Vec<u32>, StepError> {
        let mut ids = encode(tok, &e.input)?;
        if self.cuts_input(ids.len()) {
            ids.truncate(self.max_input_len.max(1) - 1);
            ids.push(eos);
        }
        Ok(ids)
    }

    /// Whether an input of `len` tokens is cut to `max_input_len`.
    fn cuts_input(&self, len: usize) -> bool {
        len > self.max_input_len.max(1)
    }

    /// An example's answer choices as scored, without the EOS scoring appends: cut so
    /// that with it they hold `max_target_len` tokens.
    fn choice_ids(
        &self,
        tok: &tokenizers::Tokenizer,
        e: &Example,
        eos: u32,
    ) -> Result<Vec<Vec<u32>>, StepError> {
        Ok(self.cut_choices(&encode_choices(tok, &e.choices, eos)?))
    }

    /// Encoded answer choices (without EOS) as scored: cut so that with EOS they hold
    /// `max_target_len` tokens.
    fn cut_choices(&self, whole: &[Vec<u32>]) -> Vec<Vec<u32>> {
        let limit = self.max_target_len.saturating_sub(1);
        whole.iter().map(|c| c[..c.len().min(limit)].to_vec()).collect()
    }
}

/// The task score: the mean over its examples.
fn mean(per_example: &[f64]) -> f64 {
    per_example.iter().sum::<f64>() / per_example.len().max(1) as f64
}

/// An eval step's parameters (the schema's `eval` node, defaults filled).
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
struct EvalParams {
    batch: usize,
    max_input_len: usize,
    max_target_len: usize,
    max_examples: Option<usize>,
    seed: u64,
    methods: Vec<String>,
    /// Per task name (its dataset is the `task:NAME` input).
    #[serde(default)]
    task: BTreeMap<String, TaskParams>,
    routing: RoutingParams,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
struct TaskParams {
    metric: String,
    max_new_tokens: usize,
    /// The pool member that owns the task, when known.
    expert: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RoutingParams {
    top_k: usize,
    arrow_temperature: f64,
    embedder: String,
}

/// Retrieval: each example goes to the expert whose library holds its nearest
/// neighbour (top-1 one-hot on every module). Examples are grouped by expert and
/// each group is scored with that expert's LoRA alone, which is the same thing.
struct Retrieval {
    embedder: super::retrieval_index::Embedder,
    libraries: Vec<candle_core::Tensor>,
}

impl Retrieval {
    /// `spec`: the eval's `routing embedder`.
    fn load(
        ctx: &StepContext,
        spec: &str,
        base: &Base,
        experts: &[LoraExpert],
    ) -> Result<Retrieval, StepError> {
        let embedder = load_embedder(ctx, spec, base.model.device())?;
        // `experts` are in name order, and so are the libraries.
        let libraries = experts
            .iter()
            .map(|e| {
                let inp = ctx.input(&format!("retrieval-index:{}", e.name))?;
                load_library(&inp.files.join(LIBRARY_FILE), embedder.dim(), base.model.device())
            })
            .collect::<Result<Vec<_>, StepError>>()?;
        Ok(Retrieval { embedder, libraries })
    }

    /// The task's per-example scores, and its choices as one routing row (every module
    /// makes the same choice, once per example).
    fn score(
        &self,
        ctx: &StepContext,
        base: &mut Base,
        t: &Task,
        experts: &[LoraExpert],
        batch: usize,
        done: &mut u64,
    ) -> Result<(Answered, BTreeMap<String, ModuleRouting>), StepError> {
        let picks =
            route::retrieval::pick_experts(&embed_examples(&self.embedder, &t.examples)?, &self.libraries)
                .map_err(fail)?;
        let mut per_example = Answered {
            scores: vec![0.0; t.examples.len()],
            predictions: vec![String::new(); t.examples.len()],
        };
        for (z, e) in experts.iter().enumerate() {
            let members: Vec<usize> = (0..picks.len()).filter(|&i| picks[i] == z).collect();
            let group: Vec<Example> = members.iter().map(|&i| t.examples[i].clone()).collect();
            if group.is_empty() {
                continue;
            }
            let sub = Task {
                name: t.name.clone(),
                metric: t.metric.clone(),
                max_input_len: t.max_input_len,
                max_target_len: t.max_target_len,
                max_new_tokens: t.max_new_tokens,
                owner: t.owner.clone(),
                examples: group,
                cut: t.cut,
            };
            base.model.set_adapters(AdapterSet::from_lora(e)).map_err(fail)?;
            let answered = score_task(ctx, base, &sub, batch, done)?;
            for ((&i, score), prediction) in members.iter().zip(answered.scores).zip(answered.predictions) {
                per_example.scores[i] = score;
                per_example.predictions[i] = prediction;
            }
        }
        let mut chosen = vec![0u64; experts.len()];
        for &z in &picks {
            chosen[z] += 1;
        }
        let row = ModuleRouting {
            expert_names: experts.iter().map(|e| e.name.clone()).collect(),
            weight_sums: chosen.iter().map(|&c| c as f64).collect(),
            counts: chosen,
            tokens: picks.len() as u64,
            ..Default::default()
        };
        Ok((
            per_example,
            BTreeMap::from([(route::retrieval::ROUTING_ROW.to_string(), row)]),
        ))
    }
}

/// Per pool member, in `names` order, the router vectors (gate layout) in file
/// `file` of the input `{role}:{name}`, named after the expert.
fn load_vectors(
    ctx: &StepContext,
    role: &str,
    file: &str,
    names: &[String],
    base: &Base,
) -> Result<Vec<GateVectors>, StepError> {
    names
        .iter()
        .map(|n| {
            let inp = ctx.member(role, n)?;
            let mut g = GateVectors::load(
                &inp.files.join(file),
                base.config(),
                base.model.device(),
                DType::F32,
            )
            .map_err(fail)?;
            g.name = n.clone();
            Ok(g)
        })
        .collect()
}

/// Per task with an owner, the token ids that occur in its examples (inputs and
/// answer choices) and in no other owned task's: where its routing can tell it apart
/// by the token alone. The routing quality counts them apart from the shared tokens.
fn distinct_tokens(
    tasks: &[Task],
    tok: &tokenizers::Tokenizer,
    eos: u32,
) -> Result<BTreeMap<String, std::collections::HashSet<u32>>, StepError> {
    use std::collections::HashSet;
    let mut sets: BTreeMap<String, HashSet<u32>> = BTreeMap::new();
    for t in tasks.iter().filter(|t| t.owner.is_some()) {
        let mut set = HashSet::new();
        // The tokens scored: inputs and choices as cut to the eval's limits.
        for e in &t.examples {
            set.extend(t.input_ids(tok, e, eos)?);
            for c in t.choice_ids(tok, e, eos)? {
                set.extend(c);
            }
        }
        sets.insert(t.name.clone(), set);
    }
    let all: Vec<(String, HashSet<u32>)> = sets.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for (name, set) in sets.iter_mut() {
        for (other, theirs) in &all {
            if other != name {
                set.retain(|id| !theirs.contains(id));
            }
        }
    }
    Ok(sets)
}

/// The owners' share of each routed method's routing, and how alike the gates are.
fn routing_quality(
    tasks: &[Task],
    routing: &BTreeMap<String, TaskRouting>,
    gates: &[GateVectors],
) -> Result<RoutingQuality, StepError> {
    let mut q = RoutingQuality::default();
    for (method, per_task) in routing {
        for t in tasks {
            let (Some(owner), Some(modules)) = (&t.owner, per_task.get(&t.name)) else {
                continue;
            };
            // The record as routing.json stores it.
            let record: BTreeMap<String, crate::eval::plots::ModuleChoices> =
                serde_json::from_value(serde_json::to_value(modules).expect("json")).map_err(fail)?;
            if let Some(r) = crate::eval::routing_quality::own_routing(owner, &record) {
                q.own.entry(method.clone()).or_default().insert(t.name.clone(), r);
            }
        }
    }
    let vectors = gates
        .iter()
        .map(|g| {
            g.gates
                .iter()
                .map(|(m, v)| Ok((m.clone(), v.to_dtype(DType::F64)?.to_vec1::<f64>()?)))
                .collect::<candle_core::Result<BTreeMap<_, _>>>()
        })
        .collect::<candle_core::Result<Vec<_>>>()
        .map_err(fail)?;
    q.gates = crate::eval::routing_quality::gate_similarity(&vectors);
    Ok(q)
}

impl StepRunner for EvalStep {
    fn kind(&self) -> &'static str {
        "eval"
    }
    fn run(&self, ctx: &StepContext) -> Result<(), StepError> {
        let dev = device(ctx)?;
        let mut base = load_base(ctx, &dev)?;
        let run = EvalRun::load(ctx, &base, &self.methods)?;
        let scored = run.score_all(&mut base)?;
        run.write(scored)
    }

    /// How many (method, task) results a run would find (resumed from an
    /// interrupted run, or reused from earlier evals) and how many it would score:
    /// the part keys from the tasks' data and the tokenizer, no weights loaded.
    fn previews(&self, _interrupted: bool) -> bool {
        true
    }
    /// A task's dataset, as soon as it is built: the examples this eval would score
    /// must suit the task's metric (the run checks the same before scoring).
    fn check_input(&self, spec: &StepSpec, role: &str, files: &std::path::Path) -> Result<(), StepError> {
        let Some(name) = crate::store::spec::member_of(role, "task") else {
            return Ok(());
        };
        let params = EvalParams::deserialize(&spec.params).map_err(|e| fail(e.to_string()))?;
        let Some(task) = params.task.get(name) else {
            return Ok(());
        };
        if task.metric != "rank-classification" {
            return Ok(());
        }
        let file = files.join(EXAMPLES);
        let ex = read_jsonl(&file).map_err(fail)?;
        let data = spec.input(role).map_or(role, |i| i.id.as_str());
        check_choices(
            name,
            task,
            &sampled(ex, params.max_examples, params.seed).0,
            &file,
            data,
        )
    }

    fn preview(&self, ctx: &StepContext) -> Result<Option<crate::plan::status::Preview>, StepError> {
        // The parts are keyed by the tasks' examples and the tokenizer: counted once
        // those are built (said, not left out: the line read as if nothing was known).
        let mut unbuilt: Vec<String> = ctx
            .spec
            .inputs
            .iter()
            .filter(|i| i.role == "model" || i.role.starts_with("task:"))
            .filter(|i| !ctx.inputs.iter().any(|a| a.role == i.role))
            .map(|i| i.id.clone())
            .collect();
        let mut seen = std::collections::HashSet::new();
        unbuilt.retain(|id| seen.insert(id.clone()));
        if !unbuilt.is_empty() {
            return Ok(Some(
                format!(
                    "(method, task) results to score counted once {} {} built",
                    crate::plan::listing::first_few(&unbuilt, 3),
                    if unbuilt.len() == 1 { "is" } else { "are" }
                )
                .into(),
            ));
        }
        let (tok, eos) = load_tokenizer_and_eos(ctx.input("model")?)?;
        let run = EvalRun::read(ctx, &self.methods)?;
        let distinct = run.distinct_tokens(&tok, eos)?;
        let parts = Parts::snapshot(ctx);
        let mut tally = Tally::default();
        for (m, t, part) in run.parts(&distinct)? {
            let found = parts.find(&part, &m, &t.name, t.examples.len());
            // A part an eval earlier in the plan scores is that one's to count.
            if found.is_none()
                && ctx
                    .planned
                    .is_some_and(|p| !p.first(&format!("eval-part:{part}")))
            {
                tally.count_planned();
                continue;
            }
            tally.count(found.as_ref().map(|(_, how)| how));
        }
        Ok(Some(tally.preview()))
    }
}

/// What scoring keeps between parts: examples done (for the progress bar), the
/// retrieval library once loaded, the method whose adapters are on the model.
#[derive(Default)]
struct PartScorer {
    /// Examples scored so far, and of how many: the parts found already scored are
    /// left out of both, so the progress's rate (and its ETA) is that of scoring.
    done: u64,
    total: u64,
    retrieval: Option<Retrieval>,
    adapters_of: Option<String>,
}

/// What the eval scored, per method and task (resumed or computed).
#[derive(Default)]
struct Scored {
    /// method -> task -> mean score
    means: HashMap<String, BTreeMap<String, f64>>,
    /// method -> task -> per-example scores (per-example.json: what a study resamples)
    examples: BTreeMap<String, BTreeMap<String, Vec<f64>>>,
    /// method -> task -> per-example predictions (predictions.json)
    predictions: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    /// task -> what makes its score mean less than it seems (`task_notes`)
    task_notes: BTreeMap<String, String>,
    /// method -> task -> module -> expert choices
    routing: BTreeMap<String, TaskRouting>,
    /// The (method, task) results found rather than scored, and where.
    found: Tally,
}

impl Scored {
    fn record(&mut self, f: Finished) {
        let (method, task) = (f.method, f.task);
        self.means
            .entry(method.clone())
            .or_default()
            .insert(task.clone(), mean(&f.scores));
        self.examples
            .entry(method.clone())
            .or_default()
            .insert(task.clone(), f.scores);
        self.predictions
            .entry(method.clone())
            .or_default()
            .insert(task.clone(), f.predictions);
        if let Some(r) = f.routing {
            self.routing.entry(method).or_default().insert(task, r);
        }
    }
}

/// Gives method `to` the rows of `from` on `task` (a method that stands on a single
/// expert's results).
fn copy_rows<T: Clone>(rows: &mut BTreeMap<String, BTreeMap<String, T>>, from: &str, to: &str, task: &str) {
    if let Some(r) = rows.get(from).and_then(|t| t.get(task)).cloned() {
        rows.entry(to.to_string())
            .or_default()
            .insert(task.to_string(), r);
    }
}

/// One eval: its parameters and tasks, the pool in name order, and the methods it
/// can run.
struct EvalRun<'a> {
    ctx: &'a StepContext<'a>,
    params: EvalParams,
    tasks: Vec<Task>,
    names: Vec<String>,
    experts: Vec<LoraExpert>,
    gates: Vec<GateVectors>,
    list: &'a [&'static dyn route::Method],
}

impl<'a> EvalRun<'a> {
    /// The eval with its pool's experts and gates loaded onto `base`.
    fn load(
        ctx: &'a StepContext<'a>,
        base: &Base,
        list: &'a [&'static dyn route::Method],
    ) -> Result<Self, StepError> {
        let mut run = EvalRun::read(ctx, list)?;
        run.experts = run
            .names
            .iter()
            .map(|n| load_expert(ctx, &member_role("expert", n), n, base))
            .collect::<Result<_, _>>()?;
        run.gates = load_vectors(ctx, "gate", GATES_FILE, &run.names, base)?;
        Ok(run)
    }

    /// The eval's parameters, tasks and pool names, without the pool's weights:
    /// all that its parts' keys need.
    fn read(ctx: &'a StepContext<'a>, list: &'a [&'static dyn route::Method]) -> Result<Self, StepError> {
        let params: EvalParams = ctx.params()?;
        let mut tasks = vec![];
        for (name, p) in &params.task {
            let data = ctx.input(&format!("task:{name}"))?;
            let file = data.files.join(EXAMPLES);
            let ex = read_jsonl(&file).map_err(fail)?;
            // A score over no example would be a 0 in every method's mean.
            if ex.is_empty() {
                return Err(StepError::msg(format!(
                    "task \"{name}\": {} has no examples to score (its row filters or drop-empty left none); change the dataset's settings",
                    data.id
                )));
            }
            // Checked before anything is scored, not at the first batch that has one.
            let (examples, cut) = sampled(ex, params.max_examples, params.seed);
            check_choices(name, p, &examples, &file, &data.id)?;
            tasks.push(Task {
                name: name.clone(),
                metric: p.metric.clone(),
                max_input_len: params.max_input_len,
                max_target_len: params.max_target_len,
                max_new_tokens: p.max_new_tokens,
                owner: p.expert.clone(),
                examples,
                cut,
            });
        }
        // From the recipe: a preview reads the eval before every member is built.
        let mut names: Vec<String> = ctx.member_keys("expert").map(|(n, _)| n.to_string()).collect();
        names.sort();
        let run = EvalRun {
            ctx,
            params,
            tasks,
            names,
            experts: vec![],
            gates: vec![],
            list,
        };
        // The planner checked the names; a recipe from another build may not fit.
        for m in &run.params.methods {
            run.chosen(m)?;
        }
        Ok(run)
    }

    /// Each owned task's tokens that no other owned task has, which a token
    /// router's log counts apart (none when no method routes tokens: tokenizing every
    /// example is then for nothing).
    fn distinct_tokens(
        &self,
        tok: &tokenizers::Tokenizer,
        eos: u32,
    ) -> Result<BTreeMap<String, std::collections::HashSet<u32>>, StepError> {
        let routes = self
            .order()
            .iter()
            .any(|m| self.chosen(m).is_ok_and(|c| c.routes_tokens()));
        if routes {
            distinct_tokens(&self.tasks, tok, eos)
        } else {
            Ok(BTreeMap::new())
        }
    }

    /// Per task, what makes its score mean less than it seems, as the tokenizer reads
    /// its examples: words it does not know, answer choices it cannot tell apart
    /// (rank classification then picks the first listed), answers longer than
    /// `max-new-tokens` (exact match then never matches).
    fn task_notes(
        &self,
        tok: &tokenizers::Tokenizer,
        eos: u32,
    ) -> Result<BTreeMap<String, String>, StepError> {
        let unk = unknown_id(tok);
        let mut notes = BTreeMap::new();
        for t in &self.tasks {
            let (mut unknown, mut alike, mut long) = (UnknownWords::default(), 0, 0);
            // Inputs cut to max-input-len; choices cut to max-target-len, and those
            // that read alike only once cut (the cut, not the tokenizer, is the cause).
            let (mut cut_inputs, mut cut_choices, mut alike_by_cut) = (0, 0, 0);
            for e in &t.examples {
                let input = encode(tok, &e.input)?;
                cut_inputs += usize::from(t.cuts_input(input.len()));
                if let Some(unk) = unk {
                    unknown.count(tok, unk, &e.input, &input);
                    for c in &e.choices {
                        unknown.count(tok, unk, c, &encode(tok, c)?);
                    }
                }
                if t.metric == "rank-classification" {
                    // As scored (cut to max-target-len): two different choices with
                    // the same ids.
                    let whole = encode_choices(tok, &e.choices, eos)?;
                    let ids = t.cut_choices(&whole);
                    let alike_in = |ids: &[Vec<u32>]| {
                        (0..ids.len())
                            .any(|i| (0..i).any(|j| ids[i] == ids[j] && e.choices[i] != e.choices[j]))
                    };
                    // Alike whole is alike cut too; alike only once cut is the cut's.
                    let tied_whole = alike_in(&whole);
                    alike += usize::from(tied_whole);
                    alike_by_cut += usize::from(!tied_whole && alike_in(&ids));
                    cut_choices += usize::from(ids.iter().zip(&whole).any(|(c, w)| c.len() < w.len()));
                } else if t.metric == "exact-match" {
                    let fits = e.accepted().iter().any(|a| {
                        encode(tok, a).is_ok_and(|mut ids| {
                            if ids.last() == Some(&eos) {
                                ids.pop();
                            }
                            ids.len() <= t.max_new_tokens
                        })
                    });
                    long += usize::from(!fits);
                }
            }
            let n = t.examples.len();
            let mut said = vec![];
            if unknown.share() >= UNKNOWN_SAID
                && let Some(u) = unknown.describe(5)
            {
                said.push(u);
            }
            if cut_inputs > 0 {
                said.push(format!(
                    "{cut_inputs} of {n} examples have inputs longer than max-input-len={} tokens: they are cut, their end unread (raise max-input-len)",
                    t.max_input_len
                ));
            }
            if alike > 0 {
                said.push(format!(
                    "{alike} of {n} examples have answer choices that read alike to the tokenizer (the same token ids): rank classification cannot tell them apart and picks the first listed"
                ));
            }
            if alike_by_cut > 0 {
                said.push(format!(
                    "{alike_by_cut} of {n} examples have answer choices that read alike once cut to max-target-len={} tokens: rank classification cannot tell them apart and picks the first listed (raise max-target-len)",
                    t.max_target_len
                ));
            }
            if cut_choices > alike_by_cut {
                said.push(format!(
                    "{cut_choices} of {n} examples have answer choices longer than max-target-len={} tokens: each is scored on its first {} (raise max-target-len)",
                    t.max_target_len,
                    t.max_target_len.saturating_sub(1)
                ));
            }
            if long > 0 {
                said.push(format!(
                    "{long} of {n} examples have answers longer than max-new-tokens={} tokens: they can never match exactly (raise max-new-tokens)",
                    t.max_new_tokens
                ));
            }
            if !said.is_empty() {
                notes.insert(t.name.clone(), said.join("; "));
            }
        }
        Ok(notes)
    }

    fn chosen<'m>(&self, method: &'m str) -> Result<Chosen<'m>, StepError> {
        route::parse(self.list, method).ok_or_else(|| fail(format!("unknown method `{method}`")))
    }

    fn scoring(&self, method: &str) -> Scoring {
        match self.chosen(method) {
            Ok(Chosen::Listed(x)) => x.scoring(),
            _ => Scoring::Adapters,
        }
    }

    /// The methods to score, in the manifest's order; a method that stands on the
    /// single experts' scores adds every `expert:NAME` instead.
    fn order(&self) -> Vec<String> {
        let methods = &self.params.methods;
        let mut order: Vec<String> = methods
            .iter()
            .filter(|m| self.scoring(m) != Scoring::FromSingles)
            .cloned()
            .collect();
        if methods.iter().any(|m| self.scoring(m) == Scoring::FromSingles) {
            for n in &self.names {
                let m = format!("expert:{n}");
                if !order.contains(&m) {
                    order.push(m);
                }
            }
        }
        order
    }

    /// What the model runs with for method `m` (every method that runs with
    /// adapters), given the folders of the steps it needs.
    fn adapters(&self, m: Chosen, base: &Base) -> Result<AdapterSet, StepError> {
        let method = match m {
            Chosen::Expert(name) => return route::expert::adapters(&self.experts, name).map_err(fail),
            Chosen::Listed(method) => method,
        };
        let mut needed = BTreeMap::new();
        for kind in method.needs() {
            let dirs = self
                .needed(kind)?
                .into_iter()
                .map(|(_, i)| i.files.clone())
                .collect();
            needed.insert(kind.to_string(), dirs);
        }
        let pool = route::Pool {
            experts: &self.experts,
            gates: &self.gates,
            needed: &needed,
            config: base.config(),
            device: base.model.device(),
            top_k: self.params.routing.top_k,
            arrow_temperature: Some(self.params.routing.arrow_temperature),
        };
        // Only what the method says it reads: its parts' keys hold exactly that.
        method.adapters(&pool.given_to(method)).map_err(fail)
    }

    /// The roles of needed kind `kind`: the eval's input `KIND` (one for the pool, no
    /// member name) or `KIND:NAME` (one per member, in name order), from the recipe.
    fn needed_roles(&self, kind: &str) -> Vec<(Option<&str>, String)> {
        if self.ctx.spec.input(kind).is_some() {
            return vec![(None, kind.to_string())];
        }
        self.names
            .iter()
            .map(|n| (Some(n.as_str()), member_role(kind, n)))
            .collect()
    }

    /// The inputs of needed kind `kind` (see [`EvalRun::needed_roles`]).
    fn needed(&self, kind: &str) -> Result<Vec<(Option<&str>, &crate::exec::InputArtifact)>, StepError> {
        self.needed_roles(kind)
            .into_iter()
            .map(|(member, role)| Ok((member, self.ctx.input(&role)?)))
            .collect()
    }

    /// The keys of the inputs of needed kind `kind`, published or not.
    fn needed_keys(&self, kind: &str) -> Result<Vec<(Option<&str>, Key)>, StepError> {
        self.needed_roles(kind)
            .into_iter()
            .map(|(member, role)| Ok((member, self.ctx.input_key(&role)?)))
            .collect()
    }

    /// The key of part (`m`, `t`): everything its scores and routing depend on, and
    /// nothing else, so that an eval differing in what a part does not read (another
    /// method, another task, a routing setting of a method that does not route) finds
    /// it in an earlier eval. `marked`: the task's tokens that no other owned task
    /// has, which a token router's log counts apart.
    fn part_key(
        &self,
        m: &str,
        t: &Task,
        marked: Option<&std::collections::HashSet<u32>>,
    ) -> Result<String, StepError> {
        let (ctx, p) = (self.ctx, &self.params);
        let mut k = PartKey::new();
        // One artifact is scored on one kind of device: CPU and CUDA kernels differ
        // in the last bits.
        let device = if ctx.device.starts_with("cuda") {
            "cuda"
        } else {
            ctx.device
        };
        k.add_str("device", device)
            .add_str("method", m)
            .add_key("model", &ctx.input_key("model")?)
            .add_str("task", &t.name)
            .add_key("task-data", &ctx.input_key(&format!("task:{}", t.name))?)
            .add_str("metric", &t.metric)
            .add_u64("max-new-tokens", t.max_new_tokens as u64)
            .add_u64("batch", p.batch as u64)
            .add_u64("max-input-len", p.max_input_len as u64)
            .add_u64("max-target-len", p.max_target_len as u64)
            // The sample, not the settings: a seed or a cap that cuts nothing scores
            // what no cap scores.
            .add_str("max-examples", &format!("{:?}", t.cut.map(|(n, _)| n)))
            .add_u64("seed", t.cut.map_or(UNSAMPLED_SEED, |(_, seed)| seed));
        let method = match self.chosen(m)? {
            Chosen::Expert(name) => {
                if !self.names.iter().any(|n| n == name) {
                    return Err(fail(format!("expert:{name}: `{name}` is not in the pool")));
                }
                k.add_key("expert", &ctx.input_key(&member_role("expert", name))?);
                return Ok(k.finish());
            }
            Chosen::Listed(method) => method,
        };
        // The pool in name order (merging sums in that order).
        if method.reads_experts() {
            for n in &self.names {
                k.add_str("member", n)
                    .add_key("expert", &ctx.input_key(&member_role("expert", n))?);
            }
        }
        if method.uses_gates() {
            for n in &self.names {
                k.add_key("gate", &ctx.input_key(&member_role("gate", n))?);
            }
        }
        for kind in method.needs() {
            for (member, key) in self.needed_keys(kind)? {
                if let Some(n) = member {
                    k.add_str("member", n);
                }
                k.add_key(kind, &key);
            }
        }
        if method.uses_temperature() {
            k.add(
                "arrow-temperature",
                &p.routing.arrow_temperature.to_bits().to_le_bytes(),
            );
        }
        if method.routes_tokens() {
            k.add_u64("top-k", p.routing.top_k as u64);
            match marked {
                None => k.add_str("marked", "none"),
                Some(set) => {
                    let mut ids: Vec<u32> = set.iter().copied().collect();
                    ids.sort_unstable();
                    let bytes: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
                    k.add("marked", &bytes)
                }
            };
        }
        if method.scoring() == Scoring::PerExample {
            k.add_str("embedder", &p.routing.embedder);
            for e in ctx.spec.externals.iter().filter(|e| e.role() == "embedder") {
                k.add_str("embedder-source", &e.identity());
            }
        }
        Ok(k.finish())
    }

    /// Every (method, task) of the eval, in order, with its part key. `distinct`: each
    /// owned task's marked tokens ([`EvalRun::distinct_tokens`]).
    fn parts(
        &self,
        distinct: &BTreeMap<String, std::collections::HashSet<u32>>,
    ) -> Result<Vec<(String, &Task, String)>, StepError> {
        let mut parts = vec![];
        for m in self.order() {
            for t in &self.tasks {
                let part = self.part_key(&m, t, distinct.get(&t.name))?;
                parts.push((m.clone(), t, part));
            }
        }
        Ok(parts)
    }

    /// Every (method, task): resumed from an interrupted run of this key, reused from
    /// an earlier eval that scored the same part, taken from another eval's saved
    /// progress, or scored now. A part another eval is scoring at the moment is left
    /// to the end, by when that eval may have saved it (evals of two pools on the
    /// same tasks walk their parts in the same order: without this, both would score
    /// every part they share, side by side). The order changes no result.
    fn score_all(&self, base: &mut Base) -> Result<Scored, StepError> {
        let ctx = self.ctx;
        let order = self.order();
        let per_method: u64 = self.tasks.iter().map(|t| t.examples.len() as u64).sum();
        let mut scorer = PartScorer {
            total: per_method * order.len() as u64,
            ..PartScorer::default()
        };
        ctx.progress.set_total(scorer.total, "examples");
        let mut scored = Scored {
            task_notes: self.task_notes(&base.tokenizer, base.config().eos_token_id)?,
            ..Scored::default()
        };
        for (t, note) in &scored.task_notes {
            ctx.progress.log(&format!("warning: task {t:?}: {note}"));
        }
        let parts = Parts::new(ctx);
        let distinct = self.distinct_tokens(&base.tokenizer, base.config().eos_token_id)?;
        // The parts found already are looked for first and left out of the total
        // from the start, so it does not shrink as the walk comes to them; only a
        // part another eval finishes meanwhile still takes its examples off.
        let mut pending: Vec<_> = self
            .parts(&distinct)?
            .into_iter()
            .map(|(m, t, part)| {
                let found = parts.find(&part, &m, &t.name, t.examples.len());
                (m, t, part, found)
            })
            .collect();
        let found_first: u64 = pending
            .iter()
            .filter(|p| p.3.is_some())
            .map(|p| p.1.examples.len() as u64)
            .sum();
        scorer.total = scorer.total.saturating_sub(found_first);
        ctx.progress.set_total(scorer.total, "examples");
        // Twice at most: the second time, nothing is left for later.
        for last in [false, true] {
            let mut later = vec![];
            for (m, t, part, found_first) in pending {
                let found = match found_first {
                    Some(f) => Some(f),
                    None => {
                        let found = parts.find(&part, &m, &t.name, t.examples.len());
                        if found.is_some() {
                            scorer.total = scorer.total.saturating_sub(t.examples.len() as u64);
                            ctx.progress.set_total(scorer.total, "examples");
                        }
                        found
                    }
                };
                // A part to score is marked first; one a running eval is scoring
                // (or marked at the same moment, with a key that sorts first) waits.
                let wait = match found {
                    Some(_) => false,
                    None if !last && parts.claimed_elsewhere(&part) => true,
                    None => !parts.claim(&part)? && !last,
                };
                if wait {
                    later.push((m, t, part, None));
                    continue;
                }
                let job = (&m, t, part.as_str());
                self.finish_part(base, &parts, &mut scorer, &mut scored, job, found, &distinct)?;
            }
            if later.is_empty() {
                break;
            }
            ctx.progress.log(&format!(
                "left to the end: {} (method, task) result(s) another eval was scoring",
                later.len()
            ));
            pending = later;
        }
        for m in &order {
            self.log_method(m, &scored);
        }
        for line in scored.found.log_lines() {
            ctx.progress.log(&line);
        }
        Ok(scored)
    }

    /// Records part (`m`, `t`) as found, or scores it (saying so in the work folder
    /// first, so that other evals leave it to this one), and publishes it.
    #[allow(clippy::too_many_arguments)]
    fn finish_part(
        &self,
        base: &mut Base,
        parts: &Parts,
        scorer: &mut PartScorer,
        scored: &mut Scored,
        (m, t, part): (&String, &Task, &str),
        found: Option<(Finished, Found)>,
        distinct: &BTreeMap<String, std::collections::HashSet<u32>>,
    ) -> Result<(), StepError> {
        let ctx = self.ctx;
        scored.found.count(found.as_ref().map(|(_, how)| how));
        let (f, bytes) = match found {
            Some((f, _)) => {
                // Written as this build writes it, whatever formatting the file
                // found had.
                let bytes = f.bytes();
                (f, bytes)
            }
            None => {
                ctx.cancel.check()?;
                // Which (method, task) failed: a model error names neither.
                let f = self
                    .score_part(base, scorer, m, t, distinct.get(&t.name))
                    .map_err(|e| match e {
                        StepError::Failed(msg) => StepError::Failed(format!("{m} on task {}: {msg}", t.name)),
                        e => e,
                    })?;
                let bytes = f.bytes();
                parts.save_progress(part, &bytes)?;
                (f, bytes)
            }
        };
        parts.publish(part, &bytes)?;
        scored.record(f);
        Ok(())
    }

    /// Scores method `m` on task `t`, with the adapters of `m` on the model.
    fn score_part(
        &self,
        base: &mut Base,
        scorer: &mut PartScorer,
        m: &str,
        t: &Task,
        marked: Option<&std::collections::HashSet<u32>>,
    ) -> Result<Finished, StepError> {
        let ctx = self.ctx;
        let (answered, routing) = if self.scoring(m) == Scoring::PerExample {
            if scorer.retrieval.is_none() {
                scorer.retrieval = Some(Retrieval::load(
                    ctx,
                    &self.params.routing.embedder,
                    base,
                    &self.experts,
                )?);
            }
            let r = scorer.retrieval.as_ref().expect("loaded above");
            // It puts single experts on the model: no method's adapters are left on.
            scorer.adapters_of = None;
            let (s, row) = r.score(ctx, base, t, &self.experts, self.params.batch, &mut scorer.done)?;
            (s, Some(row))
        } else {
            // Adapters are built when a part of another method was scored last.
            if scorer.adapters_of.as_deref() != Some(m) {
                let set = self.adapters(self.chosen(m)?, base)?;
                base.model.set_adapters(set).map_err(fail)?;
                scorer.adapters_of = Some(m.to_string());
            }
            // Token-level routers: record which experts each module picks, per task,
            // for the routing analysis (report and `report --plots`).
            if self.chosen(m)?.routes_tokens() {
                base.model.start_routing_log_marked(false, marked.cloned());
            }
            let s = score_task(ctx, base, t, self.params.batch, &mut scorer.done)?;
            (s, base.model.take_routing_log().map(|log| log.modules))
        };
        Ok(Finished {
            method: m.to_string(),
            task: t.name.clone(),
            scores: answered.scores,
            predictions: answered.predictions,
            routing,
        })
    }

    /// A method's mean, and for per-example methods how often each expert was chosen.
    fn log_method(&self, m: &str, scored: &Scored) {
        let avg: f64 = scored
            .means
            .get(m)
            .map(|s| s.values().sum::<f64>())
            .unwrap_or(0.0)
            / self.tasks.len().max(1) as f64;
        self.ctx.progress.log(&format!("{m}: mean {:.1}", avg * 100.0));
        if self.scoring(m) == Scoring::PerExample
            && let Some(r) = scored.routing.get(m)
        {
            let mut counts = vec![0u64; self.experts.len()];
            for row in r.values().flat_map(|t| t.values()) {
                for (c, x) in counts.iter_mut().zip(&row.counts) {
                    *c += x;
                }
            }
            let share: Vec<String> = self
                .experts
                .iter()
                .zip(&counts)
                .map(|(e, c)| format!("{} {c}", e.name))
                .collect();
            self.ctx
                .progress
                .log(&format!("{m}: examples per expert: {}", share.join(", ")));
        }
    }

    /// predictions.json: each task's examples as scored, and every listed method's
    /// answers to them.
    fn predictions(&self, scored: &Scored) -> Predictions {
        let tasks = self.tasks.iter().map(|t| {
            let methods = self.params.methods.iter().filter_map(|m| {
                let predictions = scored.predictions.get(m)?.get(&t.name)?.clone();
                let scores = scored.examples.get(m)?.get(&t.name)?.clone();
                Some((m.clone(), Answers { predictions, scores }))
            });
            let examples = t.examples.iter().map(|e| Shown {
                input: e.input.clone(),
                answers: e.accepted().into_iter().map(str::to_string).collect(),
                // Shown only where they are scored: a generation task's data
                // may carry choices it never reads.
                choices: if t.metric == "rank-classification" {
                    e.choices.clone()
                } else {
                    vec![]
                },
            });
            let p = TaskPredictions {
                metric: t.metric.clone(),
                examples: examples.collect(),
                methods: methods.collect(),
            };
            (t.name.clone(), p)
        });
        Predictions {
            tasks: tasks.collect(),
        }
    }

    /// The results tables, the routing record, the per-example scores and answers,
    /// and the routing quality.
    fn write(&self, mut scored: Scored) -> Result<(), StepError> {
        let (ctx, methods, tasks) = (self.ctx, &self.params.methods, &self.tasks);
        // Per expert, per task: the single experts' scores that methods of the
        // `FromSingles` kind choose among.
        let singles: route::best_individual::ExpertScores = self
            .names
            .iter()
            .filter_map(|n| Some((n.clone(), scored.means.get(&format!("expert:{n}"))?.clone())))
            .collect();
        // The single expert standing for a method on a task.
        let picked = |m: &str, task: &str| match self.chosen(m) {
            Ok(Chosen::Listed(x)) if x.scoring() == Scoring::FromSingles => x.pick(&singles, task),
            _ => None,
        };
        let mut results = Results {
            title: match self.experts.len() {
                1 => "pool of 1 expert".to_string(),
                n => format!("pool of {n} experts"),
            },
            tasks: tasks.iter().map(|t| t.name.clone()).collect(),
            methods: methods.clone(),
            metrics: tasks.iter().map(|t| (t.name.clone(), t.metric.clone())).collect(),
            task_notes: std::mem::take(&mut scored.task_notes),
            ..Default::default()
        };
        for t in tasks {
            let row = results.scores.entry(t.name.clone()).or_default();
            for m in methods {
                let v = match self.scoring(m) {
                    Scoring::FromSingles => picked(m, &t.name).and_then(|n| singles[n].get(&t.name).copied()),
                    _ => scored.means.get(m).and_then(|s| s.get(&t.name)).copied(),
                };
                if let Some(v) = v {
                    row.insert(m.clone(), v);
                }
            }
        }
        for m in methods {
            if let Ok(Chosen::Listed(x)) = self.chosen(m)
                && let Some(note) = x.note(&singles)
            {
                results.notes.insert(m.clone(), note);
            }
        }
        std::fs::write(
            ctx.out.join(crate::artifact_files::RESULTS_JSON),
            serde_json::to_vec_pretty(&results).expect("json"),
        )?;
        std::fs::write(
            ctx.out.join(crate::artifact_files::RESULTS_MD),
            results.markdown("results"),
        )?;
        std::fs::write(ctx.out.join(crate::artifact_files::RESULTS_CSV), results.csv())?;
        if !scored.routing.is_empty() {
            std::fs::write(
                ctx.out.join(crate::eval::plots::ROUTING_JSON),
                serde_json::to_vec_pretty(&scored.routing).expect("json"),
            )?;
        }
        // Per example, for studies that resample examples and for a reader of the
        // answers; a method standing on single experts gets the chosen expert's rows.
        for m in methods {
            for t in tasks {
                let Some(src) = picked(m, &t.name).map(|n| format!("expert:{n}")) else {
                    continue;
                };
                copy_rows(&mut scored.examples, &src, m, &t.name);
                copy_rows(&mut scored.predictions, &src, m, &t.name);
            }
        }
        scored.examples.retain(|m, _| methods.contains(m));
        std::fs::write(
            ctx.out.join(PER_EXAMPLE_JSON),
            serde_json::to_vec(&scored.examples).expect("json"),
        )?;
        std::fs::write(
            ctx.out.join(crate::eval::predictions::PREDICTIONS_JSON),
            serde_json::to_vec(&self.predictions(&scored)).expect("json"),
        )?;
        let quality = routing_quality(tasks, &scored.routing, &self.gates)?;
        std::fs::write(
            ctx.out.join(crate::eval::routing_quality::QUALITY_JSON),
            serde_json::to_vec_pretty(&quality).expect("json"),
        )?;
        Ok(())
    }
}
