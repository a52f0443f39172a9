//! The `eval` step: scores every requested method on every task with the pool's
//! experts, and writes the results table (results.md, results.csv, results.json).
//!
//! Each method is a router in `crate::route` (one file each); this step loads what
//! the methods are built from (experts, gates, average activations, retrieval
//! libraries, the multitask LoRA), scores the tasks (rank classification or
//! greedy generation) and logs the token routers' choices for `report --plots`.

use std::collections::{BTreeMap, HashMap};

use candle_core::DType;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::common::{Base, device, encode, fail, load_base};
use super::dataset::EXAMPLES;
use super::expert::{GATES_FILE, load_expert};
use super::retrieval_index::{DEFAULT_EMBEDDER, LIBRARY_FILE, embed_examples, load_embedder, load_library};
use crate::data::{Example, read_jsonl};
use crate::eval::Results;
use crate::eval::metrics::{exact_match, rouge_l};
use crate::exec::{StepContext, StepError, StepRunner};
use crate::model::adapter::ModuleRouting;
use crate::model::{AdapterSet, ChoiceItem, GateVectors, LoraExpert, predict};
use crate::route;

pub struct EvalStep;

/// Per task, per module: the experts a method chose (saved as routing.json).
type TaskRouting = BTreeMap<String, BTreeMap<String, ModuleRouting>>;

struct Task {
    name: String,
    metric: String,
    max_new_tokens: usize,
    examples: Vec<Example>,
}

fn sample(mut ex: Vec<Example>, cap: Option<usize>, seed: u64) -> Vec<Example> {
    if let Some(n) = cap
        && ex.len() > n
    {
        ex.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        ex.truncate(n);
    }
    ex
}

fn score_task(
    ctx: &StepContext,
    base: &Base,
    task: &Task,
    batch: usize,
    done: &mut u64,
) -> Result<f64, StepError> {
    let tok = &base.tokenizer;
    let eos = base.config().eos_token_id;
    let mut total = 0f64;
    for chunk in task.examples.chunks(batch.max(1)) {
        ctx.cancel.check()?;
        let inputs: Vec<Vec<u32>> = chunk
            .iter()
            .map(|e| encode(tok, &e.input))
            .collect::<Result<_, _>>()?;
        if task.metric == "rank-classification" {
            let items = chunk
                .iter()
                .zip(&inputs)
                .map(|(e, inp)| {
                    if e.choices.is_empty() {
                        return Err(fail(format!(
                            "task {}: rank classification needs answer choices, and an example has none",
                            task.name
                        )));
                    }
                    let choices = e
                        .choices
                        .iter()
                        .map(|c| {
                            let mut ids = encode(tok, c)?;
                            // score_choices appends EOS itself.
                            if ids.last() == Some(&eos) {
                                ids.pop();
                            }
                            Ok(ids)
                        })
                        .collect::<Result<Vec<_>, StepError>>()?;
                    Ok(ChoiceItem {
                        input: inp.clone(),
                        choices,
                    })
                })
                .collect::<Result<Vec<_>, StepError>>()?;
            let scores = base.model.score_choices(&items, batch).map_err(fail)?;
            for (e, s) in chunk.iter().zip(&scores) {
                if predict(s).is_some_and(|i| e.choice_is_right(i)) {
                    total += 1.0;
                }
            }
        } else {
            let outs = base
                .model
                .generate_greedy(&inputs, task.max_new_tokens)
                .map_err(fail)?;
            for (e, ids) in chunk.iter().zip(&outs) {
                let text = tok.decode(ids, true).map_err(|x| fail(format!("decode: {x}")))?;
                // Several accepted answers: the best match counts (BIG-bench's rule).
                total += e
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
            }
        }
        *done += chunk.len() as u64;
        ctx.progress.set_position(*done);
    }
    Ok(total / task.examples.len().max(1) as f64)
}

/// Retrieval: each example goes to the expert whose library holds its nearest
/// neighbour (top-1 one-hot on every module). Examples are grouped by expert and
/// each group is scored with that expert's LoRA alone, which is the same thing.
/// Returns the task scores and, per task, the choices as one routing row (every
/// module makes the same choice, once per example).
fn score_retrieval(
    ctx: &StepContext,
    base: &mut Base,
    tasks: &[Task],
    experts: &[LoraExpert],
    batch: usize,
    done: &mut u64,
) -> Result<(BTreeMap<String, f64>, TaskRouting), StepError> {
    let spec = ctx
        .param("routing.embedder")
        .and_then(|v| v.as_str())
        .unwrap_or(DEFAULT_EMBEDDER)
        .to_string();
    let emb = load_embedder(ctx, &spec, base.model.device())?;
    // `experts` are in name order, and so are the libraries.
    let libraries = experts
        .iter()
        .map(|e| {
            let inp = ctx.input(&format!("retrieval-index:{}", e.name))?;
            load_library(&inp.files.join(LIBRARY_FILE), emb.dim(), base.model.device())
        })
        .collect::<Result<Vec<_>, StepError>>()?;
    let mut out = BTreeMap::new();
    let mut routing = BTreeMap::new();
    let mut counts = vec![0usize; experts.len()];
    for t in tasks {
        ctx.cancel.check()?;
        let picks =
            route::retrieval::pick_experts(&embed_examples(&emb, &t.examples)?, &libraries).map_err(fail)?;
        let mut total = 0f64;
        for (z, e) in experts.iter().enumerate() {
            let group: Vec<Example> = t
                .examples
                .iter()
                .zip(&picks)
                .filter(|(_, p)| **p == z)
                .map(|(x, _)| x.clone())
                .collect();
            if group.is_empty() {
                continue;
            }
            counts[z] += group.len();
            let sub = Task {
                name: t.name.clone(),
                metric: t.metric.clone(),
                max_new_tokens: t.max_new_tokens,
                examples: group,
            };
            base.model.set_adapters(AdapterSet::from_lora(e)).map_err(fail)?;
            total += score_task(ctx, base, &sub, batch, done)? * sub.examples.len() as f64;
        }
        out.insert(t.name.clone(), total / t.examples.len().max(1) as f64);
        let mut chosen = vec![0u64; experts.len()];
        for &z in &picks {
            chosen[z] += 1;
        }
        let row = ModuleRouting {
            expert_names: experts.iter().map(|e| e.name.clone()).collect(),
            weight_sums: chosen.iter().map(|&c| c as f64).collect(),
            counts: chosen,
            tokens: picks.len() as u64,
            choices: vec![],
        };
        routing.insert(
            t.name.clone(),
            BTreeMap::from([(route::retrieval::ROUTING_ROW.to_string(), row)]),
        );
    }
    let share: Vec<String> = experts
        .iter()
        .zip(&counts)
        .map(|(e, c)| format!("{} {c}", e.name))
        .collect();
    ctx.progress
        .log(&format!("retrieval: examples per expert: {}", share.join(", ")));
    Ok((out, routing))
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
            let inp = ctx.input(&format!("{role}:{n}"))?;
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

impl StepRunner for EvalStep {
    fn kind(&self) -> &'static str {
        "eval"
    }
    fn version(&self) -> u32 {
        super::version_of(self.kind())
    }
    fn run(&self, ctx: &StepContext) -> Result<(), StepError> {
        let dev = device(ctx)?;
        let mut base = load_base(ctx, &dev)?;
        let batch = ctx.param("batch").and_then(|v| v.as_u64()).unwrap_or(32) as usize;
        let cap = ctx
            .param("max-examples")
            .and_then(|v| v.as_u64())
            .map(|v| v as usize);
        let seed = ctx.param("seed").and_then(|v| v.as_u64()).unwrap_or(42);
        let top_k = ctx.param("routing.top-k").and_then(|v| v.as_u64()).unwrap_or(2) as usize;
        let temperature = ctx
            .param("routing.arrow-temperature")
            .and_then(|v| v.as_f64())
            .unwrap_or(10.0);
        let methods: Vec<String> = ctx
            .param("methods")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|m| m.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        let mut tasks = vec![];
        if let Some(t) = ctx.param("task").and_then(|v| v.as_object()) {
            for (name, p) in t {
                let data = ctx.input(&format!("task:{name}"))?;
                let ex = read_jsonl(&data.files.join(EXAMPLES)).map_err(fail)?;
                tasks.push(Task {
                    name: name.clone(),
                    metric: p
                        .get("metric")
                        .and_then(|v| v.as_str())
                        .unwrap_or("rank-classification")
                        .to_string(),
                    max_new_tokens: p.get("max-new-tokens").and_then(|v| v.as_u64()).unwrap_or(64) as usize,
                    examples: sample(ex, cap, seed),
                });
            }
        }
        // The pool's members, in name order.
        let mut names: Vec<String> = ctx
            .inputs_with_prefix("expert:")
            .map(|i| i.role["expert:".len()..].to_string())
            .collect();
        names.sort();
        let experts: Vec<LoraExpert> = names
            .iter()
            .map(|n| load_expert(ctx, &format!("expert:{n}"), n, &base))
            .collect::<Result<_, _>>()?;
        let gates = load_vectors(ctx, "gate", GATES_FILE, &names, &base)?;
        let needs_all = methods.iter().any(|m| m == "best-individual" || m == "oracle");
        let mut plan: Vec<String> = vec![];
        for m in &methods {
            match m.as_str() {
                "best-individual" | "oracle" => {}
                other => plan.push(other.to_string()),
            }
        }
        if needs_all {
            for n in &names {
                let m = format!("expert:{n}");
                if !plan.contains(&m) {
                    plan.push(m);
                }
            }
        }
        let per_method: u64 = tasks.iter().map(|t| t.examples.len() as u64).sum();
        ctx.progress.set_total(per_method * plan.len() as u64, "examples");
        let mut done = 0u64;
        let mut scores: HashMap<String, BTreeMap<String, f64>> = HashMap::new(); // method -> task -> score
        // method -> task -> module -> expert choice counts
        let mut routing: BTreeMap<String, TaskRouting> = BTreeMap::new();
        for m in &plan {
            if m == "retrieval" {
                let (s, r) = score_retrieval(ctx, &mut base, &tasks, &experts, batch, &mut done)?;
                routing.insert(m.clone(), r);
                let mean: f64 = s.values().sum::<f64>() / tasks.len().max(1) as f64;
                scores.insert(m.clone(), s);
                ctx.progress.log(&format!("{m}: mean {:.1}", mean * 100.0));
                continue;
            }
            let set = match m.as_str() {
                "base" => route::base::adapters(),
                "phatgoose" => route::phatgoose::adapters(&experts, &gates, top_k).map_err(fail)?,
                "merged" => route::merged::adapters(&experts).map_err(fail)?,
                "arrow" => route::arrow::adapters(&experts, top_k, temperature).map_err(fail)?,
                "average-activation" => {
                    let vectors = load_vectors(
                        ctx,
                        "average-activation",
                        super::average_activation::EMBEDDINGS_FILE,
                        &names,
                        &base,
                    )?;
                    route::average_activation::adapters(&experts, &vectors, top_k).map_err(fail)?
                }
                "multitask" => {
                    let inp = ctx.input("multitask")?;
                    let e = LoraExpert::load(
                        &inp.files.join(super::expert::EXPERT_FILE),
                        base.config(),
                        &dev,
                        DType::F32,
                    )
                    .map_err(fail)?;
                    route::multitask::adapters(&e)
                }
                e if e.starts_with("expert:") => {
                    route::expert::adapters(&experts, &e["expert:".len()..]).map_err(fail)?
                }
                other => return Err(fail(format!("unknown method `{other}`"))),
            };
            base.model.set_adapters(set).map_err(fail)?;
            // Token-level routers: record which experts each module picks, per task,
            // for the routing analysis (`goosepipe report --plots`).
            let routed = route::routes_tokens(m);
            for t in &tasks {
                if routed {
                    base.model.start_routing_log(false);
                }
                let s = score_task(ctx, &base, t, batch, &mut done)?;
                scores.entry(m.clone()).or_default().insert(t.name.clone(), s);
                if let Some(log) = base.model.take_routing_log() {
                    routing
                        .entry(m.clone())
                        .or_default()
                        .insert(t.name.clone(), log.modules);
                }
            }
            let mean: f64 = scores[m].values().sum::<f64>() / tasks.len().max(1) as f64;
            ctx.progress.log(&format!("{m}: mean {:.1}", mean * 100.0));
        }
        let mut results = Results {
            title: format!("{} (pool of {} experts)", ctx.spec.name, experts.len()),
            tasks: tasks.iter().map(|t| t.name.clone()).collect(),
            methods: methods.clone(),
            metrics: tasks.iter().map(|t| (t.name.clone(), t.metric.clone())).collect(),
            ..Default::default()
        };
        // Per expert, per task: the single experts' scores best-individual and oracle
        // choose among.
        let singles: route::best_individual::ExpertScores = names
            .iter()
            .filter_map(|n| Some((n.clone(), scores.get(&format!("expert:{n}"))?.clone())))
            .collect();
        let best = needs_all
            .then(|| route::best_individual::pick(&singles))
            .flatten();
        for t in &tasks {
            let row = results.scores.entry(t.name.clone()).or_default();
            for m in &methods {
                let v = match m.as_str() {
                    "best-individual" => best.and_then(|n| singles[n].get(&t.name).copied()),
                    "oracle" => route::oracle::score(&singles, &t.name),
                    _ => scores.get(m).and_then(|s| s.get(&t.name)).copied(),
                };
                if let Some(v) = v {
                    row.insert(m.clone(), v);
                }
            }
        }
        for m in &methods {
            let note = match m.as_str() {
                "best-individual" => best.map(route::best_individual::note),
                other => route::note(other).map(str::to_string),
            };
            if let Some(note) = note {
                results.notes.insert(m.clone(), note);
            }
        }
        std::fs::write(
            ctx.out.join("results.json"),
            serde_json::to_vec_pretty(&results).expect("json"),
        )?;
        std::fs::write(ctx.out.join("results.md"), results.markdown())?;
        std::fs::write(ctx.out.join("results.csv"), results.csv())?;
        if !routing.is_empty() {
            std::fs::write(
                ctx.out.join(crate::eval::plots::ROUTING_JSON),
                serde_json::to_vec_pretty(&routing).expect("json"),
            )?;
        }
        Ok(())
    }
}
