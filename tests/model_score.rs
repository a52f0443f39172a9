//! The library side of `goosepipe score`: tokenizer + model (+ experts) to
//! per-token log-probabilities, as a struct, JSON and text.

use crate::support;

use candle_core::{DType, Device};
use goosepipe::app::score::RouterChoice;
use goosepipe::app::score::{ScoreRequest, render_text, score};
use goosepipe::model::checkpoint::load::load_tokenizer;
use goosepipe::model::{ChoiceItem, T5Model};
use support::t5_fixture as fixture;

#[test]
fn score_reports_per_token_logprobs_that_sum_to_the_total() {
    let dir = fixture("v1_1");
    let req = ScoreRequest::new(
        dir.to_str().unwrap(),
        "is the sky blue today",
        "the answer is yes",
    );
    let r = score(&req).unwrap();
    assert_eq!(r.tokens.last().unwrap().piece, "</s>");
    assert_eq!(
        r.tokens.iter().filter(|t| t.id == 1).count(),
        1,
        "exactly one EOS"
    );
    let sum: f64 = r.tokens.iter().map(|t| t.logprob).sum();
    assert!((sum - r.total).abs() < 1e-9);
    assert!((r.mean - r.total / r.tokens.len() as f64).abs() < 1e-12);
    assert!(r.tokens.iter().all(|t| t.logprob < 0.0 && t.logprob.is_finite()));

    // Same numbers as scoring the token ids directly.
    let tok = load_tokenizer(&dir.join("tokenizer.json")).unwrap();
    let input = tok
        .encode("is the sky blue today", true)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(input, r.input_ids);
    let model = T5Model::load(&dir, &Device::Cpu, DType::F32).unwrap();
    let target: Vec<u32> = r.tokens[..r.tokens.len() - 1].iter().map(|t| t.id).collect();
    let direct = model
        .score_choices(
            &[ChoiceItem {
                input,
                choices: vec![target],
            }],
            8,
        )
        .unwrap();
    assert!((direct[0][0].sum - r.total).abs() < 1e-6);

    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["tokens"].as_array().unwrap().len(), r.tokens.len());
    let text = render_text(&r);
    assert!(text.contains("total") && text.contains("</s>"), "{text}");
    assert!(r.notes.is_empty(), "{:?}", r.notes);

    // Words the tokenizer reads as <unk> are said, as the tokenize step and an eval
    // say them of their data (they all read alike to the model).
    let unknown = score(&ScoreRequest::new(
        dir.to_str().unwrap(),
        "is the sky blue today",
        "the answer is zzq",
    ))
    .unwrap();
    assert_eq!(
        unknown.notes,
        ["the target: 1 of 11 tokens (9.1%) are <unk>, words its tokenizer does not know: \"zzq\" 1"]
    );
}

#[test]
fn score_with_routed_experts_finds_gate_files_beside_the_experts() {
    let dir = fixture("v1_1");
    let mut req = ScoreRequest::new(dir.to_str().unwrap(), "the cat sat on the mat", "a dog ran");
    let base = score(&req).unwrap();
    // Longer than --max-len: refused, naming the limit (memory grows with its square).
    req.max_len = 3;
    let err = score(&req).unwrap_err().to_string();
    assert!(err.contains("more than --max-len 3"), "{err}");
    req.max_len = 512;
    req.experts = ["expert_c", "expert_a", "expert_b"]
        .iter()
        .map(|e| dir.join(format!("{e}.safetensors")))
        .collect();
    req.router = RouterChoice::parse("phatgoose").unwrap();
    let routed = score(&req).unwrap();
    assert_eq!(routed.experts, vec!["expert_a", "expert_b", "expert_c"]);
    assert_eq!(routed.tokens.len(), base.tokens.len());
    assert!(
        (routed.total - base.total).abs() > 1e-3,
        "experts must change the score"
    );
    // The same gates given by hand under other file names: one per expert, in the
    // order of --experts (they were matched by file name, and failed).
    let t = tempfile::tempdir().unwrap();
    req.gates = ["expert_c", "expert_a", "expert_b"]
        .iter()
        .map(|e| {
            let to = t.path().join(format!("gates-of-{e}.safetensors"));
            std::fs::copy(dir.join(format!("{e}.gates.safetensors")), &to).unwrap();
            to
        })
        .collect();
    assert_eq!(score(&req).unwrap().total, routed.total);
    req.gates.pop();
    let err = score(&req).unwrap_err().to_string();
    assert!(err.contains("--gates gives 2 file(s) for 3 expert(s)"), "{err}");
    // Some named after an expert, some not: by name, and what is left over is said
    // (it was paired by order, giving an expert another's gate).
    req.gates.push(dir.join("expert_a.gates.safetensors"));
    let err = score(&req).unwrap_err().to_string();
    assert!(err.contains("has 0 gate files by name"), "{err}");
    req.gates.clear();
    assert!(routed.notes.is_empty(), "{:?}", routed.notes);
    // A top k above the pool takes every expert, as k = 3 does; said in a note.
    req.top_k = 5;
    let all = score(&req).unwrap();
    req.top_k = 3;
    assert_eq!(all.total, score(&req).unwrap().total);
    assert_eq!(
        all.notes,
        ["--top-k 5 is more than the 3 expert(s) given: each token is routed to all 3"]
    );
    assert!(
        render_text(&all)
            .ends_with("note: --top-k 5 is more than the 3 expert(s) given: each token is routed to all 3\n")
    );
    req.router = RouterChoice::parse("merged").unwrap();
    // ... and one that keeps no top k does nothing with it.
    assert_eq!(
        score(&req).unwrap().notes,
        ["--top-k 3 does nothing here: --router merged keeps no top k per token (phatgoose does)"]
    );
    req.top_k = ScoreRequest::DEFAULT_TOP_K;
    let merged = score(&req).unwrap();
    assert!(merged.notes.is_empty());
    assert!((merged.total - routed.total).abs() > 1e-6);

    req.router = RouterChoice::Single;
    let err = score(&req).unwrap_err().to_string();
    assert!(
        err.contains("--router single runs one expert's LoRA alone, and 3 experts were given"),
        "{err}"
    );
    req.router = RouterChoice::parse("merged").unwrap();
    // Experts without their gates (copied away from them): PHATGOOSE says which one
    // has none and how to give it.
    let alone = tempfile::tempdir().unwrap();
    let mut lone = req.experts.clone();
    for e in &mut lone {
        let to = alone.path().join(e.file_name().unwrap());
        std::fs::copy(&*e, &to).unwrap();
        *e = to;
    }
    let mut gateless = ScoreRequest::new(dir.to_str().unwrap(), "the cat", "a dog");
    gateless.experts = lone;
    gateless.router = RouterChoice::parse("phatgoose").unwrap();
    let err = score(&gateless).unwrap_err().to_string();
    assert!(
        err.contains("--router phatgoose routes by every expert's gate, and expert `expert_c` has none"),
        "{err}"
    );
    req.model = fixture("orig").to_str().unwrap().to_owned();
    let err = score(&req).unwrap_err().to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
    req.model = "/no/such/model-dir".into();
    let err = score(&req).unwrap_err().to_string();
    assert!(
        err.contains("model folder /no/such/model-dir does not exist"),
        "{err}"
    );
    // `org/name` is a hub id or a relative folder: when neither answers, both are said.
    let cache = tempfile::tempdir().unwrap();
    let hub = std::mem::replace(
        &mut req.hub,
        goosepipe::hub::HubOptions {
            cache_dir: Some(cache.path().to_path_buf()),
            offline: true,
            ..Default::default()
        },
    );
    req.model = "models/t5-nowhere".into();
    let err = score(&req).unwrap_err().to_string();
    assert!(
        err.contains("(offline: the repo is not in the cache;")
            && err.contains("nor is there a folder models/t5-nowhere here"),
        "{err}"
    );
    req.hub = hub;
    req.model = dir.to_str().unwrap().to_owned();
    req.device = "tpu".into();
    assert!(score(&req).unwrap_err().to_string().contains("tpu"));
    // A CPU-only build says how to get CUDA, in one line (no backtrace).
    if !cfg!(feature = "cuda") {
        req.device = "cuda:0".into();
        let err = score(&req).unwrap_err().to_string();
        assert!(
            err.contains("cannot use device `cuda:0`") && err.contains("--features cuda"),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }
}

#[test]
fn one_expert_scores_as_its_lora_alone_unless_gated_is_asked() {
    let dir = fixture("v1_1");
    let mut req = ScoreRequest::new(dir.to_str().unwrap(), "the cat sat on the mat", "a dog ran");
    // A gate file lies beside the expert, as in every store and export folder.
    req.experts = vec![dir.join("expert_a.safetensors")];
    assert!(dir.join("expert_a.gates.safetensors").is_file());
    let single = score(&req).unwrap();
    // The LoRA alone is what a pool of one merges to (and what evals and PEFT run):
    // `single` applied the gate found beside the file, silently.
    req.router = RouterChoice::parse("merged").unwrap();
    let merged = score(&req).unwrap();
    assert!(
        (single.total - merged.total).abs() < 1e-4,
        "{} {}",
        single.total,
        merged.total
    );
    req.router = RouterChoice::parse("gated").unwrap();
    let gated = score(&req).unwrap();
    assert!(
        (gated.total - single.total).abs() > 1e-3,
        "the gate scales the LoRA: {} {}",
        gated.total,
        single.total
    );
    assert!(render_text(&gated).contains("experts (gated): expert_a"));
    // Gate files given by hand with `single` are refused (they were loaded, paired
    // and then not used).
    req.router = RouterChoice::Single;
    req.gates = vec![dir.join("expert_a.gates.safetensors")];
    let err = score(&req).unwrap_err().to_string();
    assert!(err.contains("--gates given, and --router single"), "{err}");
    req.gates.clear();
    req.router = RouterChoice::parse("gated").unwrap();
    // Gated needs one expert and its gate.
    req.experts.push(dir.join("expert_b.safetensors"));
    let err = score(&req).unwrap_err().to_string();
    assert!(
        err.contains("--router gated takes one expert, 2 were given"),
        "{err}"
    );
    let t = tempfile::tempdir().unwrap();
    let lone = t.path().join("expert_a.safetensors");
    std::fs::copy(dir.join("expert_a.safetensors"), &lone).unwrap();
    req.experts = vec![lone];
    let err = score(&req).unwrap_err().to_string();
    assert!(err.contains("expert `expert_a` has none"), "{err}");
}

#[test]
fn score_takes_peft_adapter_folders_with_their_gates() {
    use goosepipe::model::checkpoint::peft;
    use goosepipe::model::{GateVectors, LoraExpert, T5Model};
    let dir = fixture("v1_1");
    let cfg = T5Model::load(&dir, &candle_core::Device::Cpu, candle_core::DType::F32)
        .unwrap()
        .config;
    let out = tempfile::tempdir().unwrap();
    let mut req = ScoreRequest::new(dir.to_str().unwrap(), "the cat sat on the mat", "a dog ran");
    req.router = RouterChoice::parse("phatgoose").unwrap();
    let names = ["expert_a", "expert_b", "expert_c"];
    req.experts = names
        .iter()
        .map(|e| dir.join(format!("{e}.safetensors")))
        .collect();
    let from_files = score(&req).unwrap();
    // The same experts and gates as PEFT folders, as `goosepipe export --format peft` writes them.
    req.experts = names
        .iter()
        .map(|e| {
            let (dev, f32) = (candle_core::Device::Cpu, candle_core::DType::F32);
            let x = LoraExpert::load(&dir.join(format!("{e}.safetensors")), &cfg, &dev, f32).unwrap();
            let g = GateVectors::load(&dir.join(format!("{e}.gates.safetensors")), &cfg, &dev, f32).unwrap();
            let folder = out.path().join(e);
            peft::export(&x, Some(&g), &cfg, None, &folder).unwrap();
            folder
        })
        .collect();
    let from_folders = score(&req).unwrap();
    assert_eq!(
        from_folders.experts, from_files.experts,
        "named after their folders"
    );
    assert_eq!(from_folders.total, from_files.total);
    // One expert's gate with another's adapter is refused, whichever way it comes: a
    // gate file copied into another export's folder, or given by order with --gates.
    let mixed = out.path().join("mixed");
    std::fs::create_dir(&mixed).unwrap();
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "phatgoose.json",
    ] {
        std::fs::copy(out.path().join("expert_a").join(f), mixed.join(f)).unwrap();
    }
    std::fs::copy(
        out.path().join("expert_b/phatgoose_gates.safetensors"),
        mixed.join("phatgoose_gates.safetensors"),
    )
    .unwrap();
    req.experts = vec![mixed];
    let err = score(&req).unwrap_err().to_string();
    assert!(
        err.contains("its gate file was exported for expert `expert_b`, its adapter for `expert_a`"),
        "{err}"
    );
    req.router = RouterChoice::Gated;
    req.experts = vec![out.path().join("expert_a")];
    req.gates = vec![out.path().join("expert_b/phatgoose_gates.safetensors")];
    let err = score(&req).unwrap_err().to_string();
    assert!(
        err.contains("--gates: gate file 1 records expert `expert_b`, and the expert given in its place (`expert_a`) records `expert_a`"),
        "{err}"
    );
    req.gates = vec![out.path().join("expert_a/phatgoose_gates.safetensors")];
    assert!(score(&req).is_ok());
    // Written again without a gate, a folder keeps no gate of the earlier export.
    {
        let (dev, f32) = (candle_core::Device::Cpu, candle_core::DType::F32);
        let x = LoraExpert::load(&dir.join("expert_a.safetensors"), &cfg, &dev, f32).unwrap();
        let again = out.path().join("expert_a-again");
        std::fs::create_dir(&again).unwrap();
        for f in ["phatgoose_gates.safetensors", "phatgoose.json"] {
            std::fs::copy(out.path().join("expert_a").join(f), again.join(f)).unwrap();
        }
        peft::export(&x, None, &cfg, None, &again).unwrap();
        for f in ["phatgoose_gates.safetensors", "phatgoose.json"] {
            assert!(!again.join(f).exists(), "{f} of an earlier export is left");
        }
    }

    // A gate trained in another base (same shapes) is refused as such an expert is.
    let (dev, f32) = (candle_core::Device::Cpu, candle_core::DType::F32);
    let mut g = GateVectors::load(&dir.join("expert_a.gates.safetensors"), &cfg, &dev, f32).unwrap();
    g.base_model = Some("fixture:another".into());
    g.name = "expert_a".into();
    let other = out.path().join("other-base-gates.safetensors");
    g.save(&other).unwrap();
    req.experts = vec![dir.join("expert_a.safetensors")];
    req.gates = vec![other];
    let err = score(&req).unwrap_err().to_string();
    assert!(
        err.contains(
            "the gate of `expert_a` was trained in base model `fixture:another`, not `fixture:v1_1`"
        ),
        "{err}"
    );
    req.gates = vec![];

    // A folder that is neither says what an expert may be.
    req.experts = vec![out.path().to_path_buf()];
    req.router = RouterChoice::Single;
    let err = score(&req).unwrap_err().to_string();
    assert!(err.contains("PEFT adapter folder"), "{err}");
    // A data file given by mistake, and a step id where a file goes, say so.
    let data = out.path().join("rows.jsonl");
    std::fs::write(&data, "{\"input\": \"a\", \"target\": \"b\"}\n".repeat(50)).unwrap();
    req.experts = vec![data];
    let err = score(&req).unwrap_err().to_string();
    assert!(err.contains("rows.jsonl is not a safetensors file"), "{err}");
    // A PEFT adapter's weights file (its folder is the adapter), a model's weights,
    // and an expert of a base of other depth: each said as what it is.
    // One module's zero LoRA pair, its tensors named `{prefix}lora_A{suffix}` and B.
    let lora_file = |file: &str, prefix: &str, suffix: &str| {
        let mut t = std::collections::HashMap::new();
        for (name, shape) in [("lora_A", (4, 32)), ("lora_B", (32, 4))] {
            t.insert(
                format!("{prefix}{name}{suffix}"),
                candle_core::Tensor::zeros(shape, candle_core::DType::F32, &candle_core::Device::Cpu)
                    .unwrap(),
            );
        }
        let path = out.path().join(file);
        candle_core::safetensors::save(&t, &path).unwrap();
        path
    };
    let peft_weights = lora_file(
        "adapter_model.safetensors",
        "base_model.model.encoder.block.0.layer.0.SelfAttention.q.",
        ".weight",
    );
    req.experts = vec![peft_weights];
    let err = score(&req).unwrap_err().to_string();
    assert!(
        err.contains("adapter_model.safetensors holds a PEFT adapter's weights, not a goosepipe expert: give the adapter's folder"),
        "{err}"
    );
    req.experts = vec![dir.join("model.safetensors")];
    let err = score(&req).unwrap_err().to_string();
    assert!(err.contains("model.safetensors is not an expert file ("), "{err}");
    let other_base = lora_file(
        "deeper.safetensors",
        "encoder.block.99.layer.0.SelfAttention.q.",
        "",
    );
    req.experts = vec![other_base];
    let err = score(&req).unwrap_err().to_string();
    assert!(
        err.contains("deeper.safetensors is an expert of another base model: it adapts module `encoder.block.99.layer.0.SelfAttention.q`, which this base model does not have"),
        "{err}"
    );
    req.experts = vec!["expert:sort".into()];
    let err = score(&req).unwrap_err().to_string();
    assert!(
        err.contains("expert:sort does not exist; a step of the store is given by its file: `goosepipe show expert:sort --path`"),
        "{err}"
    );
}

/// An expert whose weights are finite but overflow the forward pass (a diverged run,
/// an adapter scaled past reason) printed NaN log-probabilities with exit 0.
#[test]
fn score_refuses_log_probabilities_that_are_not_finite() {
    let dir = fixture("v1_1");
    let cfg = goosepipe::model::T5Config::from_file(&dir.join("config.json"), None).unwrap();
    let mut expert = goosepipe::model::LoraExpert::load(
        &dir.join("expert_a.safetensors"),
        &cfg,
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
    )
    .unwrap();
    for m in expert.modules.values_mut() {
        m.b = (&m.b * 1e37).unwrap();
    }
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("huge.safetensors");
    expert.save(&file).unwrap();
    let mut req = ScoreRequest::new(dir.to_str().unwrap(), "the cat sat on the mat", "a dog ran");
    req.experts = vec![file];
    let err = score(&req).unwrap_err().to_string();
    assert!(
        err.starts_with("the log-probability of token 1 of an answer choice is NaN: the model's or the experts' weights overflow"),
        "{err}"
    );
    // Greedy generation from NaN logits still picks tokens (an argmax is always
    // there): refused too, as text scored as an answer would read as a result.
    let mut model = T5Model::load(&dir, &Device::Cpu, DType::F32).unwrap();
    model
        .set_adapters(goosepipe::model::AdapterSet::from_lora(&expert))
        .unwrap();
    let err = model
        .generate_greedy(&[vec![5, 6, 1], vec![7, 1]], 3)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("the logits of generated token 1 of input 1 are not finite: the model's or the experts' weights overflow"),
        "{err}"
    );
}

/// A FIFO given as an expert or a gate file blocked `score` for ever (the open waits
/// for a writer): refused, saying what it is.
#[test]
fn special_files_given_as_experts_or_gates_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let fifo = t.path().join("pipe");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let dir = fixture("v1_1");
    let mut req = ScoreRequest::new(dir.to_str().unwrap(), "x", "y");
    req.experts = vec![fifo.clone()];
    let Err(err) = score(&req) else { panic!("refused") };
    let err = err.to_string();
    assert!(err.contains("pipe: it is a FIFO, not a regular file"), "{err}");
    req.experts = vec![std::path::PathBuf::from("/dev/zero")];
    let Err(err) = score(&req) else { panic!("refused") };
    let err = err.to_string();
    assert!(
        err.contains("it is a character device, not a regular file"),
        "{err}"
    );
    // An empty text is not scored (it was: the end-of-sequence token alone).
    for (input, target) in [("", "y"), ("x", " ")] {
        let Err(err) = score(&ScoreRequest::new(dir.to_str().unwrap(), input, target)) else {
            panic!("scored")
        };
        assert!(
            err.to_string().contains("is empty: give the text to score"),
            "{err}"
        );
    }
    // Inside an adapter folder: a config, weights or gate that is no file is said as
    // what it is (it was "a folder without adapter_config.json", or no gate at all).
    let peft = t.path().join("adapter");
    std::fs::create_dir(&peft).unwrap();
    std::fs::create_dir(peft.join("adapter_config.json")).unwrap();
    req.experts = vec![peft.clone()];
    let Err(err) = score(&req) else { panic!("refused") };
    let err = err.to_string();
    assert!(
        err.contains("its adapter_config.json is a folder, not a file"),
        "{err}"
    );
    std::fs::remove_dir(peft.join("adapter_config.json")).unwrap();
    let alpha = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peft/alpha");
    std::fs::copy(
        alpha.join("adapter_config.json"),
        peft.join("adapter_config.json"),
    )
    .unwrap();
    std::os::unix::fs::symlink(&fifo, peft.join("adapter_model.safetensors")).unwrap();
    let Err(err) = score(&req) else { panic!("refused") };
    let err = err.to_string();
    assert!(
        err.contains(
            "adapter_model.safetensors: it is a FIFO, not a file: the adapter's weights are read from it"
        ),
        "{err}"
    );
    std::fs::remove_file(peft.join("adapter_model.safetensors")).unwrap();
    std::fs::copy(
        alpha.join("adapter_model.safetensors"),
        peft.join("adapter_model.safetensors"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "phatgoose_gates.safetensors",
        peft.join("phatgoose_gates.safetensors"),
    )
    .unwrap();
    let Err(err) = score(&req) else { panic!("refused") };
    let err = err.to_string();
    assert!(
        err.contains("phatgoose_gates.safetensors: it is a link that cannot be followed"),
        "{err}"
    );
}

/// `score --routing`: each input token and decoder position with the weight every
/// expert gets, averaged over the modules of its side; the scores themselves are the
/// same as without it, and a router that routes no token is refused.
#[test]
fn score_with_routing_shows_where_each_token_goes() {
    let dir = fixture("v1_1");
    let mut req = ScoreRequest::new(dir.to_str().unwrap(), "the cat sat on the mat", "a dog ran");
    req.experts = ["expert_c", "expert_a", "expert_b"]
        .iter()
        .map(|e| dir.join(format!("{e}.safetensors")))
        .collect();
    req.router = RouterChoice::parse("phatgoose").unwrap();
    let plain = score(&req).unwrap();
    assert!(plain.routing.is_none());
    req.routing = true;
    let r = score(&req).unwrap();
    assert_eq!(
        (r.total, &r.tokens),
        (plain.total, &plain.tokens),
        "logging changes no score"
    );
    let t = r.routing.as_ref().expect("a trace");
    assert_eq!(t.experts, ["expert_a", "expert_b", "expert_c"]);
    assert_eq!(t.input.len(), r.input_ids.len());
    assert_eq!(t.target.len(), r.tokens.len());
    assert!(t.encoder_modules > 0 && t.decoder_modules > 0);
    // Top-2 weights are renormalised to 1 at every module: so is their mean.
    for row in t.input.iter().chain(&t.target) {
        let sum: f64 = row.weights.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "{row:?}");
        assert_eq!(
            row.weights.iter().filter(|w| **w > 0.0).count().min(2),
            2,
            "{row:?}"
        );
    }
    assert_eq!(t.target.last().unwrap().piece, "</s>");
    // Top-1: one expert per token and module, so each weight counts modules.
    req.top_k = 1;
    let one = score(&req).unwrap();
    let t1 = one.routing.unwrap();
    for (rows, n) in [(&t1.input, t1.encoder_modules), (&t1.target, t1.decoder_modules)] {
        for row in rows {
            for w in &row.weights {
                let modules = w * n as f64;
                assert!((modules - modules.round()).abs() < 1e-4, "{row:?}");
            }
        }
    }
    let text = render_text(&r);
    assert!(
        text.contains("routing (phatgoose, top-2)") && text.contains("(mean)") && text.contains("predicting"),
        "{text}"
    );
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(
        json["routing"]["input"].as_array().unwrap().len(),
        r.input_ids.len()
    );
    // A k above the pool is the pool: said as the k used.
    req.top_k = 10;
    let all = score(&req).unwrap();
    let t3 = all.routing.unwrap();
    assert_eq!(t3.top_k, 3);
    assert!(t3.input.iter().all(|r| r.weights.iter().all(|w| *w > 0.0)));
    req.top_k = 2;
    req.router = RouterChoice::parse("arrow").unwrap();
    assert!(score(&req).unwrap().routing.is_some());
    req.router = RouterChoice::parse("base").unwrap();
    let experts = std::mem::take(&mut req.experts);
    let err = score(&req).unwrap_err().to_string();
    assert!(
        err.contains("--router base routes no token (it applies no adapter)"),
        "{err}"
    );
    req.experts = experts;
    req.router = RouterChoice::parse("merged").unwrap();
    let err = score(&req).unwrap_err().to_string();
    assert!(
        err.contains("--routing shows where each token is routed, and --router merged routes no token"),
        "{err}"
    );
}

/// A text that --max-len lets through but this process cannot hold the attention of
/// is refused up front with the sizes and what limits it (here `ulimit -v`); the
/// allocator aborted the process before.
#[test]
fn a_text_too_long_for_the_memory_it_may_use_is_refused_with_sizes() {
    let dir = fixture("v1_1");
    let input = "the cat sat on the mat ".repeat(1000);
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 4194304 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_goosepipe"))
        .args(["score", "--model"])
        .arg(&dir)
        .args(["--max-len", "1000000", "--target", "a dog", "--input", &input])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let said = support::one_line(&err);
    assert!(
        said.contains("-token input with a ")
            && said.contains("(attention grows with the square of the length), more than its address-space limit (ulimit -v) (4.0 GiB); shorten the input"),
        "{said}"
    );
}
