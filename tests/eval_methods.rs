//! The average-activation and retrieval baselines: the BERT sentence embedder
//! against a reference (real all-MiniLM-L6-v2 weights), retrieval's expert choice,
//! average-activation vectors against an independent computation, and both
//! methods end to end on a micro pipeline (seconds).

use crate::support;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use goosepipe::data::Example;
use goosepipe::data::tokens::TokenPair;
use goosepipe::embed::sentence::SentenceEmbedder;
use goosepipe::exec::{CancelFlag, RunOptions};
use goosepipe::model::{AdapterSet, LoraExpert, T5Model};
use goosepipe::route::retrieval::pick_experts;
use goosepipe::steps::average_activation::{GEN_TOKENS, mean_activations};
use goosepipe::steps::retrieval_index::{embed_examples, retrieval_text};
use goosepipe::store::Store;
use support::test_data;

fn minilm() -> SentenceEmbedder {
    SentenceEmbedder::load(&test_data("all-minilm-l6-v2"), &Device::Cpu).unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

#[test]
fn minilm_embeddings_match_the_reference() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm/embeddings.json");
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let sentences: Vec<String> = serde_json::from_value(doc["sentences"].clone()).unwrap();
    let reference: Vec<Vec<f32>> = serde_json::from_value(doc["embeddings"].clone()).unwrap();
    let emb = minilm();
    assert_eq!((emb.dim(), emb.max_seq_length), (384, 256));
    // Batched with padding (3 per pass) and alone must both match.
    let got = emb.embed(&sentences, 3).unwrap().to_vec2::<f32>().unwrap();
    for (i, (g, r)) in got.iter().zip(&reference).enumerate() {
        let c = cosine(g, r);
        assert!(c >= 0.999, "sentence {i} ({:?}): cosine {c}", sentences[i]);
        let norm: f32 = g.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "not unit length: {norm}");
    }
    let alone = emb.embed(&sentences[..1], 1).unwrap().to_vec2::<f32>().unwrap();
    assert!(cosine(&alone[0], &got[0]) > 0.99999);
}

fn ex(input: &str, choices: &[&str]) -> Example {
    Example {
        input: input.into(),
        target: choices.first().map(|c| c.to_string()).unwrap_or_default(),
        choices: choices.iter().map(|c| c.to_string()).collect(),
        answers: vec![],
    }
}

#[test]
fn retrieval_text_follows_the_paper() {
    assert_eq!(
        retrieval_text(&ex("Is it raining?", &["yes", "no"])),
        "Answer Choices: yes, no, Instance: Is it raining?"
    );
    assert_eq!(
        retrieval_text(&ex("Summarize: a b c", &[])),
        "Answer Choices: None, Instance: Summarize: a b c"
    );
}

#[test]
fn retrieval_picks_the_expert_whose_examples_match() {
    let emb = goosepipe::steps::retrieval_index::Embedder::Sentence(Box::new(minilm()));
    // Libraries in expert-name order: cooking, finance, sports.
    let cooking = [
        ex("How long should I boil an egg for a soft yolk?", &[]),
        ex("Add the garlic to the pan and fry it until golden.", &[]),
        ex("Which spice gives curry its yellow color?", &["turmeric", "salt"]),
    ];
    let finance = [
        ex("The central bank raised interest rates by half a point.", &[]),
        ex("Is this stock a good long-term investment?", &["yes", "no"]),
        ex("Quarterly earnings beat analyst expectations.", &[]),
    ];
    let sports = [
        ex("The striker scored twice in the second half.", &[]),
        ex("Who won the tennis final at Wimbledon?", &[]),
        ex(
            "The marathon runner crossed the finish line first.",
            &["fast", "slow"],
        ),
    ];
    let libs: Vec<Tensor> = [&cooking[..], &finance[..], &sports[..]]
        .iter()
        .map(|l| embed_examples(&emb, l).unwrap())
        .collect();
    let queries = [
        ex("What temperature do you bake bread at?", &[]),
        ex("Goalkeeper saves a penalty in the final minute.", &[]),
        ex("Bond yields fell after the inflation report.", &["up", "down"]),
        ex("Simmer the tomato sauce for twenty minutes.", &[]),
    ];
    let picks = pick_experts(&embed_examples(&emb, &queries).unwrap(), &libs).unwrap();
    assert_eq!(picks, vec![0, 2, 1, 0]);
}

#[test]
fn pick_experts_takes_the_max_cosine_and_breaks_ties_by_name_order() {
    let dev = Device::Cpu;
    let q = Tensor::new(&[[1f32, 0.0], [0.0, 1.0], [0.6, 0.8]], &dev).unwrap();
    // Library 0 holds one near match for the first query; library 1 an exact match
    // for the second among a far one; both tie on the third.
    let l0 = Tensor::new(&[[0.8f32, 0.6], [0.6, 0.8]], &dev).unwrap();
    let l1 = Tensor::new(&[[-1f32, 0.0], [0.0, 1.0], [0.6, 0.8]], &dev).unwrap();
    assert_eq!(pick_experts(&q, &[l0, l1]).unwrap(), vec![0, 1, 0]);
}

/// The largest |v_j - want_j| of a 1-D tensor against f64 expectations.
fn max_err(v: &Tensor, want: &[f64]) -> f64 {
    let v: Vec<f32> = v.to_vec1().unwrap();
    assert_eq!(v.len(), want.len());
    v.iter()
        .zip(want)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0, f64::max)
}

fn fixture(name: &str) -> PathBuf {
    support::t5_fixture("v1_1").join(name)
}

#[test]
fn average_activation_vectors_equal_an_independent_masked_mean() {
    let dev = Device::Cpu;
    let mut model = T5Model::load(&fixture(""), &dev, DType::F32).unwrap();
    let expert = LoraExpert::load(&fixture("expert_a.safetensors"), &model.config, &dev, DType::F32).unwrap();
    // Different lengths, so that padding would show if it leaked into the means.
    let pairs = vec![
        TokenPair {
            input: vec![5, 6, 7, 8, 9, 10, 1],
            target: vec![20, 21, 22, 1],
        },
        TokenPair {
            input: vec![11, 12, 1],
            target: vec![23, 1],
        },
        TokenPair {
            input: vec![13, 14, 15, 16, 1],
            target: vec![24, 25, 26, 27, 28, 1],
        },
    ];
    let mut calls = 0;
    let got = mean_activations(&mut model, &expert, &pairs, 2, |_| {
        calls += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(calls, 3, "checked before each of 2 batches and at the end");
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expert.modules.keys().collect::<Vec<_>>()
    );
    // Cross-attention k reads the encoder output: recompute it one example at a
    // time (no padding at all) with the expert's LoRA on, and average by hand.
    model.set_adapters(AdapterSet::from_lora(&expert)).unwrap();
    let d = model.config.d_model;
    let mut want = vec![0f64; d];
    for p in &pairs {
        let ids = Tensor::new(p.input.as_slice(), &dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let mask = Tensor::ones((1, p.input.len()), DType::F32, &dev).unwrap();
        let enc = model.encode(&ids, &mask).unwrap().squeeze(0).unwrap();
        let rows: Vec<Vec<f32>> = enc.to_vec2().unwrap();
        for j in 0..d {
            let mean: f64 = rows.iter().map(|r| r[j] as f64).sum::<f64>() / rows.len() as f64;
            want[j] += mean / pairs.len() as f64;
        }
    }
    let module = "decoder.block.1.layer.1.EncDecAttention.k";
    let err = max_err(&got[module], &want);
    assert!(err < 1e-5, "{module}: max error {err}");
    // Decoder modules keep the activation of each example's last greedy decoding
    // step. Block 0's self-attention q sees RMSNorm(embedding of the token fed at
    // that step) (T5 has no absolute positions): recompute it from the raw weights.
    let raw = candle_core::safetensors::load(fixture("model.safetensors"), &dev).unwrap();
    let shared: Vec<Vec<f32>> = raw["shared.weight"].to_vec2().unwrap();
    let norm_w: Vec<f32> = raw["decoder.block.0.layer.0.layer_norm.weight"]
        .to_vec1()
        .unwrap();
    let eps = model.config.layer_norm_epsilon;
    let mut want = vec![0f64; d];
    for p in &pairs {
        let mut g = model
            .generate_greedy(std::slice::from_ref(&p.input), GEN_TOKENS)
            .unwrap()
            .remove(0);
        if g.len() < GEN_TOKENS {
            g.push(model.config.eos_token_id);
        }
        let fed = if g.len() >= 2 {
            g[g.len() - 2]
        } else {
            model.config.decoder_start_token_id
        };
        let e = &shared[fed as usize];
        let ms: f64 = e.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / d as f64;
        for j in 0..d {
            want[j] += e[j] as f64 / (ms + eps).sqrt() * norm_w[j] as f64 / pairs.len() as f64;
        }
    }
    let module = "decoder.block.0.layer.0.SelfAttention.q";
    let err = max_err(&got[module], &want);
    assert!(err < 1e-5, "{module}: max error {err}");
    // The LoRA matters: without it the encoder output, hence the vector, differs.
    model.clear_adapters();
    let ids = Tensor::new(pairs[0].input.as_slice(), &dev)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mask = Tensor::ones((1, pairs[0].input.len()), DType::F32, &dev).unwrap();
    let plain = model.encode(&ids, &mask).unwrap();
    model.set_adapters(AdapterSet::from_lora(&expert)).unwrap();
    let adapted = model.encode(&ids, &mask).unwrap();
    let diff = support::max_abs_diff(&plain, &adapted);
    assert!(
        diff > 1e-4,
        "expert_a does not change the encoder output ({diff})"
    );
}

fn micro(embedder: &Path) -> String {
    format!(
        r#"
pipeline "micro" allow-outside-paths=#true
dataset "corpus" {{ synthetic task="corpus" examples=200 seed=1; }}
model "t" {{
    init corpus="corpus" d-model=16 d-ff=32 d-kv=8 heads=2 layers=1 seed=3 pretrain-steps=8 batch=8
}}
defaults {{
    lora rank=4
    train steps=6 batch=8 micro-batch=8 eval-every=6 eval-examples=8 checkpoint-every=6
    gate steps=2 batch=8 micro-batch=8
}}
dataset "sort" {{ synthetic task="sort" format="choice" examples=48; }}
dataset "shift" {{ synthetic task="shift" format="choice" examples=48; }}
dataset "arrange" split="test" {{ synthetic task="arrange" format="choice" examples=12 seed=5; }}
expert "sort" model="t" dataset="sort"
expert "shift" model="t" dataset="shift"
pool "p" {{ experts "sort" "shift"; }}
eval "e" pool="p" {{
    methods "average-activation" "retrieval" "phatgoose"
    task "arrange" dataset="arrange"
    task "arrange-gen" dataset="arrange" metric="exact-match" max-new-tokens=4
    routing activation-examples=20 retrieval-examples=16 embedder="{}"
}}
"#,
        embedder.display()
    )
}

#[test]
fn micro_pipeline_runs_average_activation_and_retrieval() {
    let dir = tempfile::tempdir().unwrap();
    let embedder = test_data("all-minilm-l6-v2");
    std::fs::write(dir.path().join("micro.kdl"), micro(&embedder)).unwrap();
    let reg = goosepipe::steps::registry();
    let mut out = Vec::new();
    let code = goosepipe::app::run(
        &dir.path().join("micro.kdl"),
        &dir.path().join("store"),
        &reg,
        &RunOptions::default(),
        true,
        &CancelFlag::new(),
        &mut out,
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    let out = String::from_utf8(out).unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("| task | average-activation | retrieval | phatgoose |"),
        "{out}"
    );
    let store = Store::open(dir.path().join("store")).unwrap();
    let plan = goosepipe::app::load_plan(&dir.path().join("micro.kdl"), &reg, &store.hash_cache()).unwrap();
    let files = |id: &str| store.files_dir(&plan.get(id).unwrap().spec.key);
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(files("eval:e").join("results.json")).unwrap()).unwrap();
    for task in ["arrange", "arrange-gen"] {
        for m in ["average-activation", "retrieval", "phatgoose"] {
            let s = results["scores"][task][m]
                .as_f64()
                .unwrap_or_else(|| panic!("no {m} score for {task}: {results}"));
            assert!(s.is_finite() && (0.0..=1.0).contains(&s), "{task}/{m}: {s}");
        }
    }
    // Retrieval's choices are recorded as one routing row per task: one choice per
    // example, all of them counted.
    let routing: serde_json::Value =
        serde_json::from_slice(&std::fs::read(files("eval:e").join("routing.json")).unwrap()).unwrap();
    for task in ["arrange", "arrange-gen"] {
        let rows = routing["retrieval"][task].as_object().unwrap();
        let row = &rows[goosepipe::route::retrieval::ROUTING_ROW];
        assert_eq!(rows.len(), 1, "{rows:?}");
        let counts: u64 = row["counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap())
            .sum();
        assert!(counts > 0 && counts == row["tokens"].as_u64().unwrap(), "{row}");
        assert!(routing["average-activation"][task].as_object().unwrap().len() > 1);
    }
    // ... and drawn by `report --plots` like the token routers.
    let plots = dir.path().join("plots");
    goosepipe::app::report(
        &dir.path().join("micro.kdl"),
        &dir.path().join("store"),
        &reg,
        "md",
        Some(&plots),
        &mut Vec::new(),
    )
    .unwrap();
    let svg = std::fs::read_to_string(plots.join("e/routing-retrieval-arrange.svg")).unwrap();
    assert!(svg.contains(goosepipe::route::retrieval::ROUTING_ROW), "{svg}");
    assert!(plots.join("e/routing-average-activation-arrange.png").is_file());
    // Per-expert artifacts: router vectors in the gate layout, 16-example libraries.
    let lib = candle_core::safetensors::load(
        files("retrieval-index:sort").join("library.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(lib["embeddings"].dims(), &[16, 384]);
    let vecs = candle_core::safetensors::load(
        files("average-activation:shift").join("embeddings.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    assert!(!vecs.is_empty() && vecs.keys().all(|k| k.ends_with(".gate")));
    for t in vecs.values() {
        let v: Vec<f32> = t.to_vec1().unwrap();
        assert!(v.iter().all(|x| x.is_finite()) && v.iter().any(|x| *x != 0.0));
    }
}

/// Experts of different LoRA ranks pool: each module's experts are padded to the
/// largest rank exactly, so every method runs over them (the plan refused such a pool
/// of trained experts, though imported adapters of mixed ranks pooled already).
#[test]
fn experts_of_different_ranks_pool_under_every_method() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = micro(Path::new("unused"))
        .replace("embedder=\"unused\"", "embedder=\"base-encoder\"")
        .replace(
            "expert \"shift\" model=\"t\" dataset=\"shift\"",
            "expert \"shift\" model=\"t\" dataset=\"shift\" { lora rank=2; }",
        )
        .replace(
            "methods \"average-activation\" \"retrieval\" \"phatgoose\"",
            "methods \"average-activation\" \"retrieval\" \"phatgoose\" \"merged\" \"arrow\" \"expert:shift\"",
        );
    assert!(manifest.contains("lora rank=2") && manifest.contains("\"arrow\""));
    let (m, store) = (dir.path().join("micro.kdl"), dir.path().join("store"));
    std::fs::write(&m, &manifest).unwrap();
    let (code, out) = support::run_product(&m, &store);
    assert_eq!(code, 0, "{out}");
    let files = |id: &str| support::step_files(&m, &store, id);
    let shift = support::load_safetensors(files("expert:shift").join("expert.safetensors"));
    let sort = support::load_safetensors(files("expert:sort").join("expert.safetensors"));
    let rank = |t: &std::collections::HashMap<String, Tensor>| {
        let (_, a) = t.iter().find(|(k, _)| k.ends_with(".lora_A")).unwrap();
        a.dims()[0]
    };
    assert_eq!(
        (rank(&shift), rank(&sort)),
        (2, 4),
        "the experts keep their ranks"
    );
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(files("eval:e").join("results.json")).unwrap()).unwrap();
    for m in [
        "average-activation",
        "retrieval",
        "phatgoose",
        "merged",
        "arrow",
        "expert:shift",
    ] {
        let s = results["scores"]["arrange"][m]
            .as_f64()
            .unwrap_or_else(|| panic!("no {m} score: {results}"));
        assert!(s.is_finite() && (0.0..=1.0).contains(&s), "{m}: {s}");
    }
}

/// A --keep-going run with a failure still shows the tables of the evals that
/// finished beside it (it printed only the failure).
/// A pool of one tiny expert and two evals of it (one reading `broken.jsonl`), built
/// in well under a second.
const ONE_EXPERT: &str = r#"
dataset "corpus" { synthetic task="corpus" examples=100 seed=1; }
model "t" { init corpus="corpus" d-model=16 d-ff=32 d-kv=8 heads=2 layers=1 seed=3 pretrain-steps=4 batch=8; }
dataset "sort" { synthetic task="sort" examples=32 format="choice"; }
expert "sort" model="t" dataset="sort" {
    lora rank=2
    train steps=2 batch=8 micro-batch=8 eval-every=2 eval-examples=4 checkpoint-every=2
    gate steps=1 batch=8 micro-batch=8
}
pool "p" { experts "sort"; }
dataset "sort-test" split="test" { synthetic task="sort" examples=8 format="choice" seed=9; }
dataset "broken" path="broken.jsonl" input-field="q" target-field="a"
eval "good" pool="p" {
    methods "base" "expert:sort"
    task "sort" dataset="sort-test"
}
eval "bad" pool="p" {
    methods "base"
    task "b" dataset="broken"
}
"#;

#[test]
fn a_failed_keep_going_run_shows_the_results_that_finished() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.kdl"), ONE_EXPERT).unwrap();
    std::fs::write(
        dir.path().join("broken.jsonl"),
        "{\"q\": \"x\", \"a\": \"y\"}\n{\"q\": 1\n",
    )
    .unwrap();
    let (code, out) = support::run_manifest(
        &dir.path().join("m.kdl"),
        &dir.path().join("store"),
        &goosepipe::steps::registry(),
        &RunOptions {
            keep_going: true,
            ..Default::default()
        },
        &CancelFlag::new(),
    );
    assert_eq!(code, 1, "{out}");
    let table = out
        .find("### good (pool of 1 expert)")
        .unwrap_or_else(|| panic!("{out}"));
    let failed = out.find("1 step(s) failed:").unwrap_or_else(|| panic!("{out}"));
    assert!(table < failed, "results first, then the failure: {out}");
    assert!(
        out.contains("dataset:broken") && out.contains("not run because of the failure: eval:bad"),
        "{out}"
    );
}

/// `report --plots` draws the PNGs' text with a font file: `GOOSEPIPE_PLOT_FONT`, else
/// one of the usual system fonts; `none` leaves the text out (and says so), and a
/// file that is not a font is an error naming the variable.
#[test]
fn png_plots_carry_text_when_a_font_is_at_hand_and_tables_keep_task_order() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.kdl");
    // Two tasks listed against the alphabet: reports keep the manifest's order.
    let text = ONE_EXPERT
        .replace("dataset=\"broken\"", "dataset=\"sort-test\"")
        .replace(
            "task \"sort\" dataset=\"sort-test\"",
            "task \"zz\" dataset=\"sort-test\" expert=\"sort\"\n    task \"aa\" dataset=\"sort-test\" expert=\"sort\"",
        )
        .replace("methods \"base\" \"expert:sort\"", "methods \"base\" \"expert:sort\" \"phatgoose\"");
    assert!(text.contains("\"zz\"") && text.contains("\"phatgoose\""));
    std::fs::write(&m, text).unwrap();
    let cli = |font: &Path, args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_goosepipe"))
            .args(args)
            .arg("--store")
            .arg(dir.path().join("store"))
            .env("GOOSEPIPE_PLOT_FONT", font)
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };
    let m = m.to_str().unwrap();
    std::fs::write(dir.path().join("broken.jsonl"), "{\"q\": \"x\", \"a\": \"y\"}\n").unwrap();
    let run = cli(Path::new("none"), &["run", m, "-q"]);
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let plots = |font: &Path, to: &str| {
        cli(
            font,
            &["report", m, "--plots", dir.path().join(to).to_str().unwrap()],
        )
    };
    let with = plots(&test_data("fonts/DejaVuSans.ttf"), "with");
    let without = plots(Path::new("none"), "without");
    for o in [&with, &without] {
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    }
    for format in ["md", "csv"] {
        let r = cli(Path::new("none"), &["report", m, "--format", format]);
        let r = String::from_utf8_lossy(&r.stdout).to_string();
        let (zz, aa) = match format {
            "md" => (r.find("| zz (").unwrap(), r.find("| aa (").unwrap()),
            _ => (r.find(",zz,").unwrap(), r.find(",aa,").unwrap()),
        };
        assert!(zz < aa, "{format}: {r}");
        // The routing-quality table too.
        if format == "md" {
            let (zz, aa) = (
                r.find("| phatgoose | zz |").unwrap(),
                r.find("| phatgoose | aa |").unwrap(),
            );
            assert!(zz < aa, "{r}");
        }
    }
    // JSON carries the routing-quality record that md shows as a table.
    let r = cli(Path::new("none"), &["report", m, "--format", "json"]);
    let records: Vec<serde_json::Value> = serde_json::from_slice(&r.stdout).unwrap();
    let owned = records
        .iter()
        .find(|v| v["routing_quality"]["own"]["phatgoose"]["zz"].is_object())
        .unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(&r.stdout)));
    assert!(owned["routing_quality"]["own"]["phatgoose"]["aa"].is_object());
    let note = "the PNGs have no text (the SVGs do)";
    // Notes go to stderr: `report > results.md` keeps the tables alone.
    assert!(!String::from_utf8_lossy(&with.stderr).contains(note));
    assert!(String::from_utf8_lossy(&without.stderr).contains(note));
    assert!(!String::from_utf8_lossy(&without.stdout).contains("note:"));
    let png = |to: &str| std::fs::read(dir.path().join(to).join("good/scores.png")).unwrap();
    assert_ne!(png("with"), png("without"), "the text changes the picture");
    assert_eq!(
        std::fs::read(dir.path().join("with/good/scores.svg")).unwrap(),
        std::fs::read(dir.path().join("without/good/scores.svg")).unwrap(),
        "the SVG does not depend on the font"
    );
    let bad = plots(Path::new(m), "bad");
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("GOOSEPIPE_PLOT_FONT") && err.contains("is not a TrueType or OpenType font"),
        "{err}"
    );
}

/// A mistake an eval would find in its task data (a rank-classification task whose
/// examples have no choices) is said when that dataset is built, before the expert
/// before the eval trains; nothing after it starts.
#[test]
fn an_eval_refuses_its_task_data_as_soon_as_the_dataset_is_built() {
    let dir = tempfile::tempdir().unwrap();
    let row = |i: usize, choices: bool| {
        let mut r = serde_json::json!({"q": format!("word{}", i % 5), "a": "yes"});
        if choices {
            r["c"] = serde_json::json!(["yes", "no"]);
        }
        r.to_string() + "\n"
    };
    std::fs::write(
        dir.path().join("one.jsonl"),
        (0..24).map(|i| row(i, true)).collect::<String>(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("plain.jsonl"),
        (0..6).map(|i| row(i, false)).collect::<String>(),
    )
    .unwrap();
    let manifest = dir.path().join("m.kdl");
    std::fs::write(
        &manifest,
        format!(
            r#"pipeline "fail-fast" allow-outside-paths=#true
model "t" path="{base}"
defaults {{
    lora rank=4
    train steps=2 batch=8 micro-batch=8 eval-every=2 eval-examples=4 checkpoint-every=2 dropout=0.0
    gate steps=2 batch=8 micro-batch=8 dropout=0.0
}}
dataset "one" path="one.jsonl" input-field="q" target-field="a" choices-field="c"
dataset "plain" path="plain.jsonl" split="test" input-field="q" target-field="a"
expert "alpha" model="t" dataset="one"
pool "p" {{ experts "alpha"; }}
eval "e" pool="p" {{
    methods "merged"
    task "t" dataset="plain"
}}
"#,
            base = support::t5_fixture("v1_1").display()
        ),
    )
    .unwrap();
    let text = std::fs::read_to_string(&manifest).unwrap();
    // Alike when early cutoff builds the datasets in a part of their own first.
    for (early_cutoff, store) in [(false, "store"), (true, "store-cutoff")] {
        if early_cutoff {
            std::fs::write(
                &manifest,
                text.replace(
                    "pipeline \"fail-fast\"",
                    "pipeline \"fail-fast\" early-cutoff=#true",
                ),
            )
            .unwrap();
        }
        let store = dir.path().join(store);
        let (code, out) = support::run_product(&manifest, &store);
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains("eval:e: task \"t\": 6 of the 6 examples of dataset:plain have no answer choices (the first: example 1 of the dataset, made from plain.jsonl; input")
                && out.contains("(found when dataset:plain was built, before eval:e could start)"),
            "early cutoff {early_cutoff}: {out}"
        );
        // Planned against the store: under early cutoff the expert's key is known
        // only from the built dataset's output.
        let s = goosepipe::store::Store::open(&store).unwrap();
        let lock =
            goosepipe::store::lockfile::Lockfile::read(&goosepipe::store::lockfile::lock_path(&manifest))
                .unwrap();
        let plan = goosepipe::app::load_plan_in(
            &manifest,
            &goosepipe::steps::registry(),
            &s.hash_cache(),
            &s,
            &lock,
        )
        .unwrap();
        assert!(plan.get("expert:alpha").unwrap().waits_for.is_empty());
        assert!(
            s.meta(&plan.get("expert:alpha").unwrap().spec.key).is_none(),
            "early cutoff {early_cutoff}: the expert must not train\n{out}"
        );
        // Run again: the dataset is cached now, and the eval refuses it before
        // anything starts, not after the expert has trained.
        let (code, again) = support::run_product(&manifest, &store);
        assert_eq!(code, 1, "{again}");
        assert!(
            again.contains("eval:e: task \"t\": 6 of the 6 examples of dataset:plain have no answer choices")
                && again.contains(
                    "(found in dataset:plain, built by an earlier run, before this run started anything)"
                ),
            "early cutoff {early_cutoff}: {again}"
        );
        assert!(
            s.meta(&plan.get("expert:alpha").unwrap().spec.key).is_none(),
            "early cutoff {early_cutoff}: the expert must not train on the second run\n{again}"
        );
        // `plan` says so before anyone runs it, and fails as the run would (it said so
        // and exited 0: CI's plan passed a run that could not).
        let mut shown = Vec::new();
        let code = goosepipe::app::plan_cmd(
            &manifest,
            &store,
            &goosepipe::steps::registry(),
            &goosepipe::app::PlanOptions {
                json: false,
                check_cached: false,
                verify: false,
                device: "cpu".into(),
                only: vec![],
                until: None,
            },
            &mut shown,
        )
        .unwrap();
        assert_eq!(code, goosepipe::app::EXIT_ERROR);
        let shown = String::from_utf8(shown).unwrap();
        assert!(
            shown.contains(
                "would fail at once: task \"t\": 6 of the 6 examples of dataset:plain have no answer choices"
            ),
            "early cutoff {early_cutoff}: {shown}"
        );
    }
}

/// Inputs and answer choices cut by the eval's length limits are said under the
/// table (a cut input was silent; choices that read alike only once cut were blamed
/// on the tokenizer).
#[test]
fn cuts_by_the_eval_s_length_limits_are_noted() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.kdl");
    let cut = ONE_EXPERT.replace(
        "eval \"good\" pool=\"p\" {",
        "eval \"good\" pool=\"p\" max-input-len=3 max-target-len=2 {",
    );
    assert_ne!(cut, ONE_EXPERT);
    std::fs::write(&m, cut).unwrap();
    std::fs::write(
        dir.path().join("broken.jsonl"),
        "{\"q\": \"x y\", \"a\": \"y\"}\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_goosepipe"))
            .args(args)
            .arg("--store")
            .arg(dir.path().join("store"))
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    let m = m.to_str().unwrap();
    let (code, out) = run(&["run", m, "--until", "eval:good", "-q"]);
    assert_eq!(code, Some(0), "{out}");
    let (_, table) = run(&["report", m]);
    assert!(
        table.contains("8 of 8 examples have inputs longer than max-input-len=3 tokens: they are cut, their end unread (raise max-input-len)"),
        "{table}"
    );
    // Sorted letters start alike: once cut to one token, some choices are one.
    assert!(
        table.contains("examples have answer choices that read alike once cut to max-target-len=2 tokens")
            || table.contains("examples have answer choices longer than max-target-len=2 tokens: each is scored on its first 1"),
        "{table}"
    );
    assert!(!table.contains("read alike to the tokenizer"), "{table}");
}

/// `report --examples TASK` shows what each method answered, example by example:
/// the choice it picked (rank classification) or the text it generated, marked as
/// the eval scored it, so that the count of "right" answers is the table's score.
#[test]
fn report_examples_shows_each_methods_answers_as_scored() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.kdl");
    let generation = ONE_EXPERT.replace(
        "task \"b\" dataset=\"broken\"",
        "task \"b\" dataset=\"broken\" metric=\"exact-match\" max-new-tokens=1",
    );
    assert_ne!(generation, ONE_EXPERT);
    std::fs::write(&m, generation).unwrap();
    std::fs::write(
        dir.path().join("broken.jsonl"),
        "{\"q\": \"x y\", \"a\": \"y\"}\n{\"q\": \"z\", \"a\": \"z z\"}\n",
    )
    .unwrap();
    let cli = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_goosepipe"))
            .args(args)
            .arg("--store")
            .arg(dir.path().join("store"))
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
        (o.status.code(), text(&o.stdout), text(&o.stderr))
    };
    let m = m.to_str().unwrap();
    // A Slurm flag on a local run is said to be ignored (it was, silently).
    let (code, _, err) = cli(&["run", m, "-q", "--max-jobs", "4"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("note: --max-jobs applies to --executor slurm only; this run uses the local executor and ignores it"),
        "{err}"
    );
    let (code, all, err) = cli(&["report", m, "--examples", "sort", "--limit", "100"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        all.starts_with("## eval:good, task \"sort\": rank-classification, 8 examples, 8 shown"),
        "{all}"
    );
    // Each answer is one of its example's choices, and the right ones add up to the
    // table's score.
    let (_, json, _) = cli(&["report", m, "--format", "json"]);
    let tables: serde_json::Value = serde_json::from_str(&json).unwrap();
    let good = tables
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["step"] == "eval:good")
        .unwrap();
    for method in ["base", "expert:sort"] {
        let lines: Vec<&str> = all
            .lines()
            .filter(|l| l.starts_with(&format!("  {method} ")))
            .collect();
        assert_eq!(lines.len(), 8, "{all}");
        let right = lines.iter().filter(|l| l.contains(" right ")).count();
        let score = good["scores"]["sort"][method].as_f64().unwrap();
        assert!(
            (right as f64 / 8.0 - score).abs() < 1e-9,
            "{method}: {right} right of 8, table {score}: {all}"
        );
    }
    let (_, json, _) = cli(&[
        "report",
        m,
        "--examples",
        "sort",
        "--format",
        "json",
        "--limit",
        "100",
    ]);
    let shown: serde_json::Value = serde_json::from_str(&json).unwrap();
    let rows = shown[0]["examples"].as_array().unwrap();
    assert_eq!((shown[0]["step"].as_str(), rows.len()), (Some("eval:good"), 8));
    for r in rows {
        let picked = &r["methods"]["base"]["prediction"];
        assert!(r["choices"].as_array().unwrap().contains(picked), "{r}");
    }
    // --wrong keeps exactly the examples a method missed.
    let missed = rows
        .iter()
        .filter(|r| r["methods"]["base"]["score"] != 1.0)
        .count();
    let (_, wrong, _) = cli(&[
        "report",
        m,
        "--examples",
        "sort",
        "--wrong",
        "base",
        "--limit",
        "100",
    ]);
    assert!(
        wrong.contains(&format!("{missed} of 8 examples base got wrong")),
        "{wrong}"
    );
    assert_eq!(wrong.matches("\nexample ").count(), missed, "{wrong}");
    // A generation task: the generated text, and no choices.
    let (code, gen_, err) = cli(&["report", m, "--examples", "b"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(gen_.contains("exact-match, 2 examples, 2 shown"), "{gen_}");
    assert!(
        gen_.contains("  input:   \"x y\"") && gen_.contains("  answer:  \"y\""),
        "{gen_}"
    );
    assert!(!gen_.contains("choices:") && gen_.contains("  base  "), "{gen_}");
    // What makes its score mean less is noted, in the examples and under the table:
    // letters the tokenizer never saw, an answer longer than generation may run.
    let noted =
        "1 of 2 examples have answers longer than max-new-tokens=1 tokens: they can never match exactly";
    assert!(
        gen_.contains("note: ") && gen_.contains(noted) && gen_.contains("are <unk>"),
        "{gen_}"
    );
    let (_, table, _) = cli(&["report", m]);
    assert!(table.contains("- task b: ") && table.contains(noted), "{table}");
    assert!(!table.contains("- task sort:"), "{table}");
    // Mistakes point at what there is.
    let (code, _, err) = cli(&["report", m, "--examples", "sorted"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("no task \"sorted\" in") && err.contains("its tasks: b, sort"),
        "{err}"
    );
    let (code, _, err) = cli(&["report", m, "--examples", "sort", "--wrong", "merged"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("no eval that scores \"sort\" ran method \"merged\""),
        "{err}"
    );
    let (code, _, err) = cli(&["report", m, "--examples", "sort", "--wrong", "expert:srot"]);
    assert_eq!(code, Some(1));
    let err = err
        .replace('│', " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        err.contains(
            "did you mean \"expert:sort\"? --wrong takes one of the eval's methods: base, expert:sort"
        ),
        "{err}"
    );
    let (code, _, err) = cli(&["report", m, "--examples", "sort", "--format", "csv"]);
    assert_eq!(code, Some(goosepipe::app::EXIT_USAGE));
    assert!(err.contains("has no CSV form"), "{err}");

    // After an edit, before the run: the last run's tables and answers, said to be
    // from before the edit (report refused them all: "run the pipeline first").
    let edited = std::fs::read_to_string(m)
        .unwrap()
        .replace("gate steps=1 ", "gate steps=2 ");
    std::fs::write(m, edited).unwrap();
    // Exit 2, as `plan --check-cached`: a script that publishes the tables learns
    // they are not this manifest's own.
    let (code, again, err) = cli(&["report", m]);
    assert_eq!(code, Some(2), "{err}");
    // The same tables as before the edit, each said in the document not to be current.
    let content = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("> **Not current**"))
            .map(String::from)
            .collect()
    };
    assert_eq!(
        content(&again),
        content(&table),
        "the same tables as before the edit"
    );
    assert!(
        again.contains("> **Not current**: the results of an earlier run (")
            && again.contains("the manifest changed since (input changed: gate:sort, pool:p)"),
        "{again}"
    );
    assert!(!table.contains("Not current"), "{table}");
    assert!(
        err.contains("eval:good: the results of an earlier run (")
            && err.contains("stale now (input changed: gate:sort, pool:p)"),
        "{err}"
    );
    let (code, shown, err) = cli(&["report", m, "--examples", "sort", "--limit", "100"]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(shown, all);
    assert!(
        err.contains("eval:good: the answers of an earlier run ("),
        "{err}"
    );
    // In json, the record says it too (a script reading the file cannot see stderr).
    let (_, json, _) = cli(&["report", m, "--format", "json"]);
    let records: serde_json::Value = serde_json::from_str(&json).unwrap();
    let good = records
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["step"] == "eval:good")
        .unwrap();
    assert_eq!(
        good["earlier_run"]["stale"], "input changed: gate:sort, pool:p",
        "{good}"
    );
    // And so does every CSV record, in its `current` column.
    let (code, csv, _) = cli(&["report", m, "--format", "csv"]);
    assert_eq!(code, Some(2));
    let good_rows: Vec<&str> = csv.lines().filter(|l| l.starts_with("eval:good,")).collect();
    assert!(
        !good_rows.is_empty() && good_rows.iter().all(|l| l.contains(",false,")),
        "{csv}"
    );
    // A pin edited by hand to another kind's artifact (the expert's key under the
    // eval's id) is no earlier run of the eval: it was read as one, its tables missing.
    let lock_path = format!("{m}.lock");
    let lock = std::fs::read_to_string(&lock_path).unwrap();
    let key_of = |id: &str| {
        let line = lock
            .lines()
            .find(|l| l.starts_with(&format!("step \"{id}\" ")))
            .unwrap();
        line.split("key=\"").nth(1).unwrap()[..64].to_string()
    };
    std::fs::write(
        &lock_path,
        lock.replace(&key_of("eval:good"), &key_of("expert:sort")),
    )
    .unwrap();
    let (code, _, err) = cli(&["report", m]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("eval:good: not in the store: ")
            && !err.contains("eval:good: the results of an earlier run")
            && !err.contains("implementation version changed"),
        "{err}"
    );
    std::fs::write(&lock_path, &lock).unwrap();
    // An edit that drops a method: the earlier run's answers of it are still shown.
    let edited = std::fs::read_to_string(m)
        .unwrap()
        .replace("methods \"base\" \"expert:sort\"", "methods \"base\"");
    std::fs::write(m, edited).unwrap();
    let (code, wrong_then, err) = cli(&[
        "report",
        m,
        "--examples",
        "sort",
        "--wrong",
        "expert:sort",
        "--limit",
        "100",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        wrong_then.contains("examples expert:sort got wrong"),
        "{wrong_then}"
    );
}
