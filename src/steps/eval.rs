//! The `eval` step: scores every requested method on every task with the pool's
//! experts, and writes the results table (results.md, results.csv, results.json).
//!
//! Methods implemented here: `base`, `phatgoose`, `merged` (uniform average of the
//! experts' B·A, i.e. W + mean_i(B_i A_i)/r; the paper's code for merging is not
//! public, this is the outer-product average), `arrow`, `average-activation`
//! (routed like phatgoose with the `average-activation` steps' vectors),
//! `retrieval` (one expert per example, picked by the `retrieval-index` libraries),
//! `multitask`, `expert:NAME`, `best-individual` and `oracle` (per-task best
//! expert: uses test labels).

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::common::{Base, device, encode, fail, load_base};
use super::dataset::EXAMPLES;
use super::expert::{GATES_FILE, load_expert};
use super::retrieval_index::{
    DEFAULT_EMBEDDER, LIBRARY_FILE, embed_examples, load_embedder, load_library, pick_experts,
};
use crate::data::{Example, read_jsonl};
use crate::eval::Results;
use crate::eval::metrics::{exact_match, rouge_l};
use crate::exec::{StepContext, StepError, StepRunner};
use crate::model::{AdapterSet, ChoiceItem, GateVectors, LoraExpert, MixWeights, Scoring, predict};

pub struct EvalStep;

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

/// Arrow's router embedding of one LoRA: the top right-singular vector of B·A (the
/// input direction the update amplifies most), by power iteration on (BA)ᵀ(BA).
pub fn arrow_vector(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let a = a.to_dtype(DType::F64)?;
    let b = b.to_dtype(DType::F64)?;
    let d_in = a.dims()[1];
    // A deterministic, non-degenerate start vector.
    let init: Vec<f64> = (0..d_in)
        .map(|i| 1.0 + (i as f64 * 0.618_033_988_7).fract())
        .collect();
    let mut v = Tensor::from_vec(init, (d_in, 1), a.device())?;
    for _ in 0..200 {
        let w = a.t()?.matmul(&b.t()?.matmul(&b.matmul(&a.matmul(&v)?)?)?)?;
        let norm = w.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?;
        if norm == 0.0 {
            break;
        }
        v = (w / norm)?;
    }
    v.flatten_all()?.to_dtype(DType::F32)
}

fn arrow_set(experts: &[LoraExpert], top_k: usize, temperature: f64) -> Result<AdapterSet, StepError> {
    let mut sorted: Vec<&LoraExpert> = experts.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut emb = BTreeMap::new();
    for module in sorted[0].modules.keys() {
        let rows = sorted
            .iter()
            .map(|e| {
                let l = e
                    .modules
                    .get(module)
                    .ok_or_else(|| fail(format!("{} lacks {module}", e.name)))?;
                arrow_vector(&l.a, &l.b).map_err(fail)
            })
            .collect::<Result<Vec<_>, StepError>>()?;
        emb.insert(module.clone(), Tensor::stack(&rows, 0).map_err(fail)?);
    }
    AdapterSet::routed(experts, &emb, Scoring::Arrow { temperature }, top_k, DType::F32).map_err(fail)
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
fn score_retrieval(
    ctx: &StepContext,
    base: &mut Base,
    tasks: &[Task],
    experts: &[LoraExpert],
    batch: usize,
    done: &mut u64,
) -> Result<BTreeMap<String, f64>, StepError> {
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
    let mut counts = vec![0usize; experts.len()];
    for t in tasks {
        ctx.cancel.check()?;
        let picks = pick_experts(&embed_examples(&emb, &t.examples)?, &libraries)?;
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
    }
    let share: Vec<String> = experts
        .iter()
        .zip(&counts)
        .map(|(e, c)| format!("{} {c}", e.name))
        .collect();
    ctx.progress
        .log(&format!("retrieval: examples per expert: {}", share.join(", ")));
    Ok(out)
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
        let gates: Vec<GateVectors> = names
            .iter()
            .map(|n| {
                let inp = ctx.input(&format!("gate:{n}"))?;
                let mut g = GateVectors::load(&inp.files.join(GATES_FILE), base.config(), &dev, DType::F32)
                    .map_err(fail)?;
                g.name = n.clone();
                Ok(g)
            })
            .collect::<Result<_, StepError>>()?;
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
        let mut routing: BTreeMap<
            String,
            BTreeMap<String, BTreeMap<String, crate::model::adapter::ModuleRouting>>,
        > = BTreeMap::new();
        for m in &plan {
            if m == "retrieval" {
                let s = score_retrieval(ctx, &mut base, &tasks, &experts, batch, &mut done)?;
                let mean: f64 = s.values().sum::<f64>() / tasks.len().max(1) as f64;
                scores.insert(m.clone(), s);
                ctx.progress.log(&format!("{m}: mean {:.1}", mean * 100.0));
                continue;
            }
            let set = match m.as_str() {
                "base" => AdapterSet::new(),
                "phatgoose" => AdapterSet::phatgoose(&experts, &gates, top_k.min(experts.len()), DType::F32)
                    .map_err(fail)?,
                "merged" => AdapterSet::mixture(
                    &experts,
                    MixWeights::Shared(vec![1.0 / experts.len() as f64; experts.len()]),
                    DType::F32,
                )
                .map_err(fail)?,
                "arrow" => arrow_set(&experts, top_k.min(experts.len()), temperature)?,
                "average-activation" => {
                    let vectors = names
                        .iter()
                        .map(|n| {
                            let inp = ctx.input(&format!("average-activation:{n}"))?;
                            let mut g = GateVectors::load(
                                &inp.files.join(super::average_activation::EMBEDDINGS_FILE),
                                base.config(),
                                &dev,
                                DType::F32,
                            )
                            .map_err(fail)?;
                            g.name = n.clone();
                            Ok(g)
                        })
                        .collect::<Result<Vec<_>, StepError>>()?;
                    AdapterSet::phatgoose(&experts, &vectors, top_k.min(experts.len()), DType::F32)
                        .map_err(fail)?
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
                    AdapterSet::from_lora(&e)
                }
                e if e.starts_with("expert:") => {
                    let name = &e["expert:".len()..];
                    let x = experts
                        .iter()
                        .find(|x| x.name == name)
                        .ok_or_else(|| fail(format!("{e}: not in the pool")))?;
                    AdapterSet::from_lora(x)
                }
                other => return Err(fail(format!("unknown method `{other}`"))),
            };
            base.model.set_adapters(set).map_err(fail)?;
            // Token-level routers: record which experts each module picks, per task,
            // for the routing analysis (`goosepipe report --plots`).
            let routed = matches!(m.as_str(), "phatgoose" | "arrow" | "average-activation");
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
        let expert_mean = |n: &str| -> f64 {
            let s = &scores[&format!("expert:{n}")];
            s.values().sum::<f64>() / s.len().max(1) as f64
        };
        // The single expert with the best mean over the tasks (ties: first by name).
        let best = needs_all
            .then(|| {
                names
                    .iter()
                    .max_by(|a, b| expert_mean(a).total_cmp(&expert_mean(b)).then(b.cmp(a)))
            })
            .flatten();
        for t in &tasks {
            let row = results.scores.entry(t.name.clone()).or_default();
            for m in &methods {
                let v = match m.as_str() {
                    "best-individual" => best.map(|n| scores[&format!("expert:{n}")][&t.name]),
                    "oracle" => names
                        .iter()
                        .map(|n| scores[&format!("expert:{n}")][&t.name])
                        .max_by(f64::total_cmp),
                    _ => scores.get(m).and_then(|s| s.get(&t.name)).copied(),
                };
                if let Some(v) = v {
                    row.insert(m.clone(), v);
                }
            }
        }
        if methods.iter().any(|m| m == "oracle") {
            results.notes.insert(
                "oracle".into(),
                "the best single expert per task, picked with test labels (not zero-shot)".into(),
            );
        }
        if methods.iter().any(|m| m == "best-individual")
            && let Some(b) = best
        {
            results.notes.insert(
                "best-individual".into(),
                format!("expert \"{b}\", the best mean over these tasks (picked with test labels)"),
            );
        }
        if methods.iter().any(|m| m == "multitask") {
            results.notes.insert(
                "multitask".into(),
                "one LoRA trained on the union of the pool's datasets: needs all data at once (not post-hoc)"
                    .into(),
            );
        }
        if methods.iter().any(|m| m == "retrieval") {
            results.notes.insert(
                "retrieval".into(),
                "one expert per example: the highest cosine to its training examples (sentence embeddings)"
                    .into(),
            );
        }
        if methods.iter().any(|m| m == "average-activation") {
            results.notes.insert(
                "average-activation".into(),
                "routed like phatgoose with each expert's mean input activations over its training inputs (decoder: last greedy decoding step)"
                    .into(),
            );
        }
        if methods.iter().any(|m| m == "merged") {
            results.notes.insert(
                "merged".into(),
                "W + mean_i(B_i A_i)/r (outer-product average; the paper's merging code is not public)"
                    .into(),
            );
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn arrow_vector_is_the_top_right_singular_vector() {
        // B·A = diag-like map that stretches e_2 the most.
        let a = Tensor::new(&[[0.0f32, 0.0, 3.0], [0.0, 1.0, 0.0]], &Device::Cpu).unwrap(); // [r=2, d_in=3]
        let b = Tensor::new(&[[1.0f32, 0.0], [0.0, 1.0]], &Device::Cpu).unwrap(); // [d_out=2, r=2]
        let v = arrow_vector(&a, &b).unwrap().to_vec1::<f32>().unwrap();
        assert!(
            v[2].abs() > 0.999 && v[0].abs() < 1e-3 && v[1].abs() < 1e-3,
            "{v:?}"
        );
    }
}
