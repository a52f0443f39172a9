//! Evaluation throughput: rank-classification scoring of a task's examples with a
//! routed pool (PHATGOOSE top-2 by default), the eval step's work for one (method,
//! task), in examples per second. The PyTorch side is scripts/bench_torch_eval.py,
//! which reads the same folders and files and must print the same accuracy.
//!
//! Run (after `goosepipe run pipelines/quickstart.kdl` and one `goosepipe export
//! expert:NAME /tmp/qsx/NAME` per expert; benches/README.md has the whole recipe):
//!
//! `cargo bench --bench eval_throughput -- --experts /tmp/qsx/* --examples FILE.jsonl
//! [--model DIR] [--router phatgoose] [--top-k 2] [--batch 32] [--rounds 5]`
//!
//! The model defaults to the first expert's `base-model/` folder (what `export` writes
//! for a pipeline-built base). Numbers: benches/README.md.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device};
use goosepipe::app::score::{RouterChoice, adapters_for, load_pool};
use goosepipe::data::read_jsonl;
use goosepipe::model::checkpoint::load::load_tokenizer;
use goosepipe::model::{ChoiceItem, T5Model, predict};
use goosepipe::steps::common::{encode, encode_choices};

/// The allocator the goosepipe binary runs with (its `main.rs`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    experts: Vec<PathBuf>,
    examples: Vec<PathBuf>,
    model: Option<PathBuf>,
    router: String,
    top_k: usize,
    batch: usize,
    rounds: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        experts: vec![],
        examples: vec![],
        model: None,
        router: "phatgoose".into(),
        top_k: 2,
        batch: 32,
        rounds: 5,
    };
    let mut list: Option<&'static str> = None;
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        let number = |name: &str, v: String| v.parse::<usize>().map_err(|e| format!("{name}: {e}"));
        match x.as_str() {
            "--bench" => {}
            "--experts" => list = Some("experts"),
            "--examples" => list = Some("examples"),
            "--model" => a.model = Some(value("--model")?.into()),
            "--router" => a.router = value("--router")?,
            "--top-k" => a.top_k = number("--top-k", value("--top-k")?)?,
            "--batch" => a.batch = number("--batch", value("--batch")?)?,
            "--rounds" => a.rounds = number("--rounds", value("--rounds")?)?,
            v if !v.starts_with("--") && list == Some("experts") => a.experts.push(v.into()),
            v if !v.starts_with("--") && list == Some("examples") => a.examples.push(v.into()),
            v => return Err(format!("`{v}` is not a flag this benchmark knows")),
        }
    }
    if a.experts.is_empty() || a.examples.is_empty() {
        return Err("give --experts DIR... and --examples FILE.jsonl...".into());
    }
    if a.batch == 0 || a.rounds == 0 {
        return Err("--batch and --rounds must be at least 1".into());
    }
    Ok(a)
}

fn run(a: &Args) -> Result<(), String> {
    let device = Device::Cpu;
    let model_dir = a.model.clone().unwrap_or_else(|| a.experts[0].join("base-model"));
    let tok = load_tokenizer(&model_dir.join("tokenizer.json")).map_err(|e| e.to_string())?;
    let mut model = T5Model::load(&model_dir, &device, DType::F32).map_err(|e| e.to_string())?;
    let cfg = model.config.clone();
    let (mut experts, mut gates) = load_pool(&a.experts, &cfg, &device).map_err(|e| e.to_string())?;
    // The eval step's order: members by name.
    experts.sort_by(|x, y| x.name.cmp(&y.name));
    gates.sort_by(|x, y| x.name.cmp(&y.name));
    let router = RouterChoice::parse(&a.router).map_err(|e| format!("--router: {e}"))?;
    let adapters =
        adapters_for(router, &experts, &gates, &cfg, &device, a.top_k).map_err(|e| e.to_string())?;
    model.set_adapters(adapters).map_err(|e| e.to_string())?;
    // Read and encoded as the eval step does (its examples, its tokenization).
    let eos = cfg.eos_token_id;
    let mut examples = vec![];
    for f in &a.examples {
        examples.extend(read_jsonl(f).map_err(|e| e.to_string())?);
    }
    let items = examples
        .iter()
        .map(|e| {
            Ok(ChoiceItem {
                input: encode(&tok, &e.input)?,
                choices: encode_choices(&tok, &e.choices, eos)?,
            })
        })
        .collect::<Result<Vec<_>, goosepipe::exec::StepError>>()
        .map_err(|e| e.to_string())?;
    let choices: usize = items.iter().map(|i| i.choices.len()).sum();
    println!(
        "{} experts, router {}, top-{}; {} examples, {choices} choices, batch {}; {} threads",
        experts.len(),
        a.router,
        a.top_k,
        items.len(),
        a.batch,
        rayon::current_num_threads()
    );
    let t0 = Instant::now();
    let scores = model.score_choices(&items, a.batch).map_err(|e| e.to_string())?;
    let first = t0.elapsed().as_secs_f64();
    let mut times = vec![];
    for _ in 0..a.rounds {
        let t0 = Instant::now();
        std::hint::black_box(model.score_choices(&items, a.batch).map_err(|e| e.to_string())?);
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let correct = scores
        .iter()
        .zip(&examples)
        .filter(|(s, e)| predict(s).is_some_and(|i| e.choice_is_right(i)))
        .count();
    println!(
        "goosepipe: {:.1} examples/s (median of {} passes, {:.0} ms; first pass {:.0} ms); accuracy {:.1}",
        items.len() as f64 / median,
        a.rounds,
        median * 1e3,
        first * 1e3,
        100.0 * correct as f64 / items.len() as f64
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    // SAFETY: first thing in main, before any thread exists (as the binary's main).
    unsafe { goosepipe::process::threads::pin_thread_count() };
    match parse_args().and_then(|a| run(&a)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eval_throughput: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
