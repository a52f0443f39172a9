//! PEFT adapters in and out (issue 20). The fixtures are made by
//! scripts/make_peft_fixtures.py with transformers + peft on the tiny T5.1.1 fixture:
//! imported adapters must give the PeftModel's logits; a goosepipe expert exported as
//! a PEFT folder and imported again must give exactly its own outputs; unsupported
//! configurations are refused with the field's name.

use crate::support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use goosepipe::model::checkpoint::peft;
use goosepipe::model::{AdapterSet, GateVectors, LoraExpert, MixWeights, Seq2SeqBatch, T5Model};
use support::{fixture_pool, load_safetensors as load_st, max_abs_diff, t5_fixture};

fn peft_fixture(name: &str) -> PathBuf {
    support::repo_root().join("tests/fixtures/peft").join(name)
}

fn base() -> T5Model {
    T5Model::load(&t5_fixture("v1_1"), &Device::Cpu, DType::F32).unwrap()
}

fn logits(model: &T5Model) -> Tensor {
    let inputs = load_st(t5_fixture("v1_1").join("inputs.safetensors"));
    let b = Seq2SeqBatch::from_hf(
        &inputs["input_ids"],
        &inputs["attention_mask"],
        &inputs["decoder_input_ids"],
        &inputs["labels"],
    )
    .unwrap();
    model
        .forward(&b.input_ids, &b.attention_mask, &b.decoder_input_ids)
        .unwrap()
}

fn with_adapters(set: AdapterSet) -> Tensor {
    let mut m = base();
    m.set_adapters(set).unwrap();
    logits(&m)
}

fn import(name: &str) -> peft::PeftImport {
    let m = base();
    peft::import(&peft_fixture(name), name, &m.config, &Device::Cpu).unwrap()
}

#[test]
fn imported_peft_adapters_match_transformers_and_peft() {
    let reference = load_st(peft_fixture("reference.safetensors"));
    let plain = logits(&base());
    // (fixture, modules covered of 36, PEFT's scaling)
    for (name, modules, scaling) in [
        ("alpha", 36, 16.0 / 4.0),
        ("rslora", 36, 8.0 / 8f64.sqrt()),
        ("attention", 12, 8.0 / 4.0),
        ("bin", 14, 4.0 / 2.0),
    ] {
        let imp = import(name);
        assert_eq!(imp.source.modules, modules, "{name}");
        assert_eq!(imp.source.base_modules, 36, "{name}");
        assert!(
            (imp.source.scaling - scaling).abs() < 1e-12,
            "{name}: scaling {}",
            imp.source.scaling
        );
        assert_eq!(
            imp.source.base_model_name_or_path.as_deref(),
            Some("tests/fixtures/t5/v1_1")
        );
        let got = with_adapters(AdapterSet::from_lora(&imp.expert));
        let want = &reference[&format!("{name}_logits")];
        assert!(
            max_abs_diff(want, &plain) > 1e-2,
            "{name}: the adapter must move the logits"
        );
        let d = max_abs_diff(&got, want);
        assert!(d < 1e-4, "{name}: logits differ from transformers + peft by {d}");
    }
    assert_eq!(import("bin").source.weights_file, "adapter_model.bin");
}

fn v1_1_expert(name: &str) -> (LoraExpert, GateVectors) {
    let dir = t5_fixture("v1_1");
    let cfg = base().config;
    let (mut e, mut g) = fixture_pool(&dir, &[name], &[name], &cfg, &Device::Cpu);
    (e.remove(0), g.remove(0))
}

#[test]
fn an_exported_expert_reimports_with_identical_outputs_and_gates() {
    let (expert, gates) = v1_1_expert("expert_a");
    let cfg = base().config;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("expert_a-peft");
    let written = peft::export(&expert, Some(&gates), &cfg, Some("tests/fixtures/t5/v1_1"), &out).unwrap();
    let names: Vec<String> = written
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "adapter_config.json",
            "adapter_model.safetensors",
            "phatgoose_gates.safetensors",
            "phatgoose.json"
        ]
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"], 1, "goosepipe's 1/r is PEFT's lora_alpha 1");
    assert_eq!(
        config["target_modules"],
        serde_json::json!(["k", "o", "q", "v", "wi_0", "wi_1", "wo"])
    );
    let st = load_st(out.join("adapter_model.safetensors"));
    assert!(st.contains_key("base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight"));
    assert_eq!(st.len(), 72);

    let back = peft::import(&out, "expert_a", &cfg, &Device::Cpu).unwrap();
    let own = with_adapters(AdapterSet::from_lora(&expert));
    let again = with_adapters(AdapterSet::from_lora(&back.expert));
    assert_eq!(
        max_abs_diff(&own, &again),
        0.0,
        "a round trip must not change a bit"
    );
    // And both are the torch reference's LoRA (the script checks peft loads the export).
    let reference = load_st(t5_fixture("v1_1").join("reference.safetensors"));
    assert!(max_abs_diff(&again, &reference["lora_logits"]) < 1e-4);
    let g = peft::import_gates(&out, "expert_a", &cfg, &Device::Cpu)
        .unwrap()
        .unwrap();
    for (m, v) in &gates.gates {
        assert_eq!(max_abs_diff(v, &g.gates[m]), 0.0, "{m}");
    }
}

#[test]
fn an_adapter_on_a_subset_exports_a_regex_that_selects_exactly_it() {
    let cfg = base().config;
    let imp = import("attention");
    let dir = tempfile::tempdir().unwrap();
    peft::export(&imp.expert, None, &cfg, None, dir.path()).unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("adapter_config.json")).unwrap()).unwrap();
    // q and v of every attention, k and o of none: short names would be ["q", "v"], which
    // selects the same 12 modules, so the list form is used.
    assert_eq!(config["target_modules"], serde_json::json!(["q", "v"]));
    let back = peft::import(dir.path(), "attention", &cfg, &Device::Cpu).unwrap();
    assert_eq!(back.expert.modules.len(), 12);
    // Without `target_modules` PEFT adapts T5's q and v: such a config reads the same.
    let mut unset = config.clone();
    unset.as_object_mut().unwrap().remove("target_modules");
    std::fs::write(
        dir.path().join("adapter_config.json"),
        serde_json::to_vec(&unset).unwrap(),
    )
    .unwrap();
    let same = peft::import(dir.path(), "attention", &cfg, &Device::Cpu).unwrap();
    assert_eq!(same.expert.modules.len(), 12);
    let a = with_adapters(AdapterSet::from_lora(&imp.expert));
    let b = with_adapters(AdapterSet::from_lora(&back.expert));
    assert!(max_abs_diff(&a, &b) < 1e-6);

    // Only the encoder's self-attention q: no short-name list selects exactly that.
    let mut only = imp.expert.clone();
    only.modules
        .retain(|m, _| m.starts_with("encoder.") && m.ends_with("SelfAttention.q"));
    assert_eq!(only.modules.len(), 2);
    let dir2 = tempfile::tempdir().unwrap();
    peft::export(&only, None, &cfg, None, dir2.path()).unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir2.path().join("adapter_config.json")).unwrap()).unwrap();
    let t = config["target_modules"].as_str().expect("a regex");
    assert!(
        t.contains(r"encoder\.block\.0\.layer\.0\.SelfAttention\.q"),
        "{t}"
    );
    let back = peft::import(dir2.path(), "only", &cfg, &Device::Cpu).unwrap();
    assert_eq!(back.expert.modules.len(), 2);
}

#[test]
fn pools_mix_ranks_and_module_subsets_exactly() {
    // alpha: rank 4 on all 36 modules; bin: rank 2 on 14 of them.
    let alpha = import("alpha").expert;
    let bin = import("bin").expert;
    let pool = vec![bin.clone(), alpha.clone()];
    let only =
        |w: Vec<f64>| with_adapters(AdapterSet::mixture(&pool, MixWeights::Shared(w), DType::F32).unwrap());
    // Name order: alpha (0), bin (1). A one-hot mixture is that expert alone.
    let d_alpha = max_abs_diff(
        &only(vec![1.0, 0.0]),
        &with_adapters(AdapterSet::from_lora(&alpha)),
    );
    let d_bin = max_abs_diff(&only(vec![0.0, 1.0]), &with_adapters(AdapterSet::from_lora(&bin)));
    assert!(d_alpha < 1e-4, "alpha inside the pool differs by {d_alpha}");
    assert!(
        d_bin < 1e-4,
        "bin (rank 2, padded to 4) inside the pool differs by {d_bin}"
    );

    // Routed: each module routes among the experts that adapt it.
    let emb = goosepipe::route::arrow::embeddings(&pool).unwrap();
    assert_eq!(emb["encoder.block.0.layer.0.SelfAttention.k"].dims()[0], 1);
    assert_eq!(emb["encoder.block.0.layer.0.SelfAttention.q"].dims()[0], 2);
    let set = goosepipe::route::arrow::adapters(&pool, 2, 1.0).unwrap();
    let mut m = base();
    m.set_adapters(set).unwrap();
    m.start_routing_log(false);
    let _ = logits(&m);
    let log = m.take_routing_log().unwrap();
    assert_eq!(
        log.modules["encoder.block.0.layer.0.SelfAttention.k"].expert_names,
        ["alpha"]
    );
    assert_eq!(
        log.modules["encoder.block.0.layer.0.SelfAttention.q"].expert_names,
        ["alpha", "bin"]
    );
}

type ConfigEdit = Box<dyn FnOnce(&mut serde_json::Value)>;

/// The `alpha` fixture copied with its config edited by `edit`.
fn edited(edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = peft_fixture("alpha");
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        dir.path().join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("adapter_config.json")).unwrap()).unwrap();
    edit(&mut c);
    std::fs::write(
        dir.path().join("adapter_config.json"),
        serde_json::to_vec(&c).unwrap(),
    )
    .unwrap();
    dir
}

fn import_err(dir: &Path, model: &T5Model) -> String {
    match peft::import(dir, "x", &model.config, &Device::Cpu) {
        Ok(_) => panic!("{} imported", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unsupported_configurations_are_refused_naming_the_field() {
    let m = base();
    let cases: Vec<(&str, ConfigEdit, &[&str])> = vec![
        (
            "non-LoRA",
            Box::new(|c| c["peft_type"] = "IA3".into()),
            &["`peft_type`", "IA3"],
        ),
        (
            "DoRA",
            Box::new(|c| c["use_dora"] = true.into()),
            &["`use_dora`", "DoRA"],
        ),
        (
            "bias",
            Box::new(|c| c["bias"] = "all".into()),
            &["`bias`", "\"all\""],
        ),
        (
            "modules_to_save",
            Box::new(|c| c["modules_to_save"] = serde_json::json!(["lm_head"])),
            &["`modules_to_save`"],
        ),
        (
            "layers_to_transform",
            Box::new(|c| c["layers_to_transform"] = serde_json::json!([0])),
            &["`layers_to_transform`"],
        ),
        (
            "rank_pattern",
            Box::new(|c| c["rank_pattern"] = serde_json::json!({"q": 8})),
            &["`rank_pattern`"],
        ),
        (
            "wrong r",
            Box::new(|c| c["r"] = 8.into()),
            &["rank 4", "`r`", "is 8"],
        ),
        (
            "target_modules",
            Box::new(|c| c["target_modules"] = serde_json::json!(["q"])),
            &["`target_modules`", "does not select"],
        ),
        (
            "target_modules not set (it selected every module; PEFT's T5 default is q and v)",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("target_modules");
            }),
            &["`target_modules` (not set, so PEFT's default for T5: [\"q\",\"v\"]) does not select"],
        ),
        (
            "target_modules of another type (it selected every module)",
            Box::new(|c| c["target_modules"] = serde_json::json!(5)),
            &[
                "`target_modules`",
                "5 is neither a list of module names nor a regex",
            ],
        ),
        (
            "lora_alpha that overflows B (the expert held inf, blamed on the store)",
            Box::new(|c| c["lora_alpha"] = serde_json::json!(1e308)),
            &[
                "`lora_alpha` in adapter_config.json is too large for these weights",
                "in 32-bit floats",
            ],
        ),
        (
            "lora_alpha 0 (imported as an expert that changes nothing)",
            Box::new(|c| c["lora_alpha"] = serde_json::json!(0)),
            &["`lora_alpha`: 0 scales every update to nothing"],
        ),
        (
            "lora_alpha so small B underflows to zeros (the same, unsaid)",
            Box::new(|c| c["lora_alpha"] = serde_json::json!(1e-300)),
            &["is all zeros in 32-bit floats: the adapter would change no output"],
        ),
        (
            "a flag as a string (PEFT reads \"true\" as true; it was read as false)",
            Box::new(|c| c["use_rslora"] = "true".into()),
            &["`use_rslora`: \"true\" is not true or false"],
        ),
        (
            "exclude_modules (the excluded modules' tensors were used)",
            Box::new(|c| c["exclude_modules"] = serde_json::json!(["q"])),
            &["`exclude_modules`"],
        ),
    ];
    for (what, edit, needles) in cases {
        let dir = edited(edit);
        let e = import_err(dir.path(), &m);
        for n in needles {
            assert!(e.contains(n), "{what}: `{n}` not in: {e}");
        }
    }
    // An adapter made for another base: the original-T5 fixture has `wi`, not `wi_0`.
    let orig = T5Model::load(&t5_fixture("orig"), &Device::Cpu, DType::F32).unwrap();
    let e = import_err(&peft_fixture("alpha"), &orig);
    assert!(e.contains("not an adapted linear of this base model"), "{e}");
    // No weights beside the config.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        peft_fixture("alpha/adapter_config.json"),
        dir.path().join("adapter_config.json"),
    )
    .unwrap();
    let e = import_err(dir.path(), &m);
    assert!(
        e.contains("adapter_model.safetensors or adapter_model.bin"),
        "{e}"
    );
    // A tensor that is not a LoRA weight (a DoRA magnitude).
    let dir = edited(|_| {});
    let mut t: HashMap<String, Tensor> = load_st(dir.path().join("adapter_model.safetensors"));
    t.insert(
        "base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_magnitude_vector".into(),
        Tensor::zeros(32, DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&t, dir.path().join("adapter_model.safetensors")).unwrap();
    let e = import_err(dir.path(), &m);
    assert!(e.contains("DoRA magnitude"), "{e}");
    // One module's A twice, with and without PEFT's prefix: the later name replaced
    // the first, unsaid.
    let dir = edited(|_| {});
    let mut t: HashMap<String, Tensor> = load_st(dir.path().join("adapter_model.safetensors"));
    let (name, a) = t
        .iter()
        .find(|(n, _)| n.ends_with(".lora_A.weight"))
        .map(|(n, a)| (n.clone(), a.zeros_like().unwrap()))
        .unwrap();
    let bare = name.strip_prefix("base_model.model.").unwrap().to_string();
    t.insert(bare.clone(), a);
    candle_core::safetensors::save(&t, dir.path().join("adapter_model.safetensors")).unwrap();
    let e = import_err(dir.path(), &m);
    assert!(
        e.contains(&format!("tensors `{name}` and `{bare}` are both the lora_A of")),
        "{e}"
    );
}

// ---- imported experts in a pipeline ----

const WORDS: &[&str] = &[
    "the cat sat on the mat",
    "a dog ran in the park",
    "is the sky blue today",
    "red green blue",
];

fn jsonl(rows: usize, seed: usize) -> String {
    (0..rows)
        .map(|i| {
            let q = WORDS[(i + seed) % WORDS.len()];
            let a = ["yes", "no", "maybe"][(i * 7 + seed) % 3];
            serde_json::json!({"q": q, "a": a, "c": ["yes", "no", "maybe"]}).to_string() + "\n"
        })
        .collect()
}

fn pipeline(dir: &Path, experts: &str) -> PathBuf {
    std::fs::write(dir.join("one.jsonl"), jsonl(24, 0)).unwrap();
    std::fs::write(dir.join("two.jsonl"), jsonl(24, 1)).unwrap();
    std::fs::write(dir.join("test.jsonl"), jsonl(9, 2)).unwrap();
    let text = format!(
        r#"
pipeline "imports" allow-outside-paths=#true
model "t" path="{base}"
defaults {{
    lora rank=4
    train steps=2 batch=8 micro-batch=8 eval-every=2 eval-examples=4 checkpoint-every=2 dropout=0.0
    gate steps=2 batch=8 micro-batch=8 dropout=0.0
}}
dataset "one" path="one.jsonl" input-field="q" target-field="a" choices-field="c"
dataset "two" path="two.jsonl" input-field="q" target-field="a" choices-field="c"
dataset "test" path="test.jsonl" split="test" input-field="q" target-field="a" choices-field="c"
{experts}
pool "p" {{ experts "alpha" "bin" "trained"; }}
eval "e" pool="p" {{
    methods "phatgoose" "merged" "arrow" "average-activation" "expert:bin"
    task "test" dataset="test"
    routing activation-examples=8
}}
"#,
        base = t5_fixture("v1_1").display()
    );
    let path = dir.join("imports.kdl");
    std::fs::write(&path, text).unwrap();
    path
}

fn experts_block(alpha_name: &str) -> String {
    format!(
        r#"expert "{alpha_name}" model="t" dataset="one" peft="{}"
expert "bin" model="t" dataset="two" peft="{}"
expert "trained" model="t" dataset="two""#,
        peft_fixture("alpha").display(),
        peft_fixture("bin").display()
    )
}

/// The imports pipeline run in `dir`, and its trained `alpha` exported (with its
/// gate) as a PEFT folder: (manifest, store, exported folder).
fn alpha_shipped(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let first = pipeline(dir, &experts_block("alpha"));
    let store_dir = dir.join("store");
    let (code, out) = support::run_product(&first, &store_dir);
    assert_eq!(code, 0, "{out}");
    let shipped = dir.join("alpha-peft");
    goosepipe::app::export("expert:alpha", None, &shipped, &store_dir, false, &mut Vec::new()).unwrap();
    (first, store_dir, shipped)
}

/// An adapter whose finite weights overflow the forward pass (its `lora_alpha`
/// scaled past reason) gave NaN log-probabilities, which rank classification read
/// as ties (the first choice): an accuracy, with exit 0. The eval fails, naming the
/// method and the task.
#[test]
fn an_eval_fails_on_scores_that_are_not_finite_naming_method_and_task() {
    let dir = tempfile::tempdir().unwrap();
    let (first, store_dir, shipped) = alpha_shipped(dir.path());
    let config = shipped.join("adapter_config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    c["lora_alpha"] = serde_json::json!(1e30);
    std::fs::write(&config, serde_json::to_vec(&c).unwrap()).unwrap();
    let m = dir.path().join("huge.kdl");
    let text = std::fs::read_to_string(&first).unwrap()
        + &format!(
            "expert \"huge\" model=\"t\" peft=\"{}\" peft-gate=#true\npool \"h\" {{ experts \"huge\" \"bin\"; }}\neval \"h\" pool=\"h\" {{ methods \"merged\"; task \"test\" dataset=\"test\"; }}\n",
            shipped.display()
        );
    std::fs::write(&m, text).unwrap();
    let (code, out) = support::run_product(&m, &store_dir);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("eval:h: merged on task test: the log-probability of token ")
            && out.contains("weights overflow"),
        "{out}"
    );
}

#[test]
fn imported_adapters_pool_with_trained_experts_and_export_again() {
    use goosepipe::store::Store;
    let dir = tempfile::tempdir().unwrap();
    let manifest = pipeline(dir.path(), &experts_block("alpha"));
    let store_dir = dir.path().join("store");
    let reg = goosepipe::steps::registry();
    let (code, out) = support::run_product(&manifest, &store_dir);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("| task | phatgoose | merged | arrow | average-activation | expert:bin |"),
        "{out}"
    );

    let store = Store::open(&store_dir).unwrap();
    let plan = goosepipe::app::load_plan(&manifest, &reg, &store.hash_cache()).unwrap();
    let step = |id: &str| plan.get(id).unwrap_or_else(|| panic!("no step {id}"));
    // An imported expert depends on its base and its files, not on its dataset.
    let inputs: Vec<&str> = step("expert:alpha")
        .spec
        .inputs
        .iter()
        .map(|i| i.role.as_str())
        .collect();
    assert_eq!(inputs, ["model"]);
    assert_eq!(step("expert:alpha").spec.externals[0].role(), "peft");
    // On Slurm an import is a small CPU job, not a training job.
    let kind = &goosepipe::steps::expert::EXPERT;
    let import = goosepipe::exec::slurm::Resources::for_step(&step("expert:alpha").spec, Some(kind), "cuda");
    let train = goosepipe::exec::slurm::Resources::for_step(&step("expert:trained").spec, Some(kind), "cuda");
    assert_eq!((import.gpus, import.cpus), (Some(0), Some(1)));
    assert_eq!((train.gpus, train.cpus), (Some(1), Some(4)));
    let files = |id: &str| store.files_dir(&step(id).spec.key);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(files("expert:bin").join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["imported"], "peft");
    assert_eq!(summary["adapter"]["weights_file"], "adapter_model.bin");
    assert!(
        summary["from"].as_str().unwrap().starts_with("path:"),
        "{summary}"
    );
    // The stored expert computes what peft computes.
    let cfg = base().config;
    let stored = LoraExpert::load(
        &files("expert:alpha").join("expert.safetensors"),
        &cfg,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let reference = load_st(peft_fixture("reference.safetensors"));
    assert!(
        max_abs_diff(
            &with_adapters(AdapterSet::from_lora(&stored)),
            &reference["alpha_logits"]
        ) < 1e-4
    );
    assert!(files("gate:alpha").join("gates.safetensors").is_file());
    // Its gate covers exactly its 14 modules; bin routes only where it has a LoRA.
    let g = GateVectors::load(
        &files("gate:bin").join("gates.safetensors"),
        &cfg,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    assert_eq!(g.gates.len(), 14);

    // The same adapter under another name in another manifest is the same artifact.
    let other = tempfile::tempdir().unwrap();
    let m2 = pipeline(
        other.path(),
        &experts_block("alpha2").replace("pool \"p\"", "pool \"q\""),
    );
    let text = std::fs::read_to_string(&m2)
        .unwrap()
        .replace("\"alpha\" \"bin\"", "\"alpha2\" \"bin\"");
    std::fs::write(&m2, text).unwrap();
    let plan2 = goosepipe::app::load_plan(&m2, &reg, &store.hash_cache()).unwrap();
    assert_eq!(
        plan2.get("expert:alpha2").unwrap().spec.key,
        step("expert:alpha").spec.key
    );

    // Export it back: peft's files, its gate beside it, the base named by its folder.
    let exported = dir.path().join("alpha-peft");
    goosepipe::app::export(
        "expert:alpha",
        None,
        &exported,
        &store_dir,
        false,
        &mut Vec::new(),
    )
    .unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(exported.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(
        config["base_model_name_or_path"],
        t5_fixture("v1_1").display().to_string()
    );
    assert!(exported.join("phatgoose_gates.safetensors").is_file());
    let again = peft::import(&exported, "alpha", &cfg, &Device::Cpu).unwrap();
    assert_eq!(
        max_abs_diff(
            &with_adapters(AdapterSet::from_lora(&again.expert)),
            &with_adapters(AdapterSet::from_lora(&stored))
        ),
        0.0
    );
    // A dataset is not an adapter.
    let err = goosepipe::app::export("dataset:one", None, &exported, &store_dir, true, &mut Vec::new())
        .unwrap_err();
    assert!(err.to_string().contains("export takes an expert"), "{err}");
    // --model with what is not an expert file: said as what was given (a missing
    // file and a PEFT folder were both called a store artifact).
    let base_dir = t5_fixture("v1_1");
    let other = dir.path().join("other-export");
    for (what, says) in [
        (
            dir.path().join("nope.safetensors"),
            "nope.safetensors does not exist",
        ),
        (exported.clone(), "alpha-peft is a PEFT adapter folder already"),
    ] {
        let err = goosepipe::app::export(
            what.to_str().unwrap(),
            Some(&base_dir),
            &other,
            &store_dir,
            false,
            &mut Vec::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("--model goes with an expert file given by path (expert.safetensors), and ")
                && err.contains(says),
            "{err}"
        );
    }

    // A folder with files in it is not written into unless asked (--force).
    let err = goosepipe::app::export(
        "expert:alpha",
        None,
        &exported,
        &store_dir,
        false,
        &mut Vec::new(),
    )
    .unwrap_err();
    assert!(
        format!("{err}").contains("alpha-peft is not empty (adapter_config.json, adapter_model.safetensors"),
        "{err}"
    );
    goosepipe::app::export("expert:alpha", None, &exported, &store_dir, true, &mut Vec::new()).unwrap();

    // A stored expert damaged in place (same size) is refused, and nothing is written.
    let s = goosepipe::store::Store::open(&store_dir).unwrap();
    let file = s
        .files_dir(&s.find("expert:alpha").unwrap().key)
        .join(goosepipe::artifact_files::EXPERT_FILE);
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() - 3;
    bytes[at] ^= 0x40;
    std::fs::write(&file, bytes).unwrap();
    let fresh = dir.path().join("from-corrupt");
    let err =
        goosepipe::app::export("expert:alpha", None, &fresh, &store_dir, false, &mut Vec::new()).unwrap_err();
    assert!(
        format!("{err}").contains("expert:alpha is corrupt, nothing was exported"),
        "{err}"
    );
    assert!(!fresh.exists());
}

/// The paper's contributors share an expert and its gate, not their data: an
/// imported adapter that ships its gate (`peft-gate=#true`) joins a pool with that
/// gate, without a dataset; what needs the data says so at check.
#[test]
fn an_imported_adapter_with_its_shipped_gate_pools_without_its_data() {
    use goosepipe::store::Store;
    let dir = tempfile::tempdir().unwrap();
    let (first, store_dir, shipped) = alpha_shipped(dir.path());

    let text = std::fs::read_to_string(&first).unwrap();
    let alpha_line = text
        .lines()
        .find(|l| l.starts_with("expert \"alpha\""))
        .unwrap()
        .to_string();
    let with = |expert: &str, methods: &str| {
        text.replace(&alpha_line, expert)
            .replace("\"alpha\" \"bin\"", "\"shared\" \"bin\"")
            .replace(
                "\"phatgoose\" \"merged\" \"arrow\" \"average-activation\" \"expert:bin\"",
                methods,
            )
    };
    let shared = format!(
        "expert \"shared\" model=\"t\" peft=\"{}\" peft-gate=#true",
        shipped.display()
    );
    let m = dir.path().join("shared.kdl");
    std::fs::write(&m, with(&shared, "\"phatgoose\" \"merged\" \"arrow\"")).unwrap();
    let (code, out) = support::run_product(&m, &store_dir);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("| task | phatgoose | merged | arrow |"), "{out}");
    let store = Store::open(&store_dir).unwrap();
    let reg = goosepipe::steps::registry();
    let plan = goosepipe::app::load_plan(&m, &reg, &store.hash_cache()).unwrap();
    let gate = &plan.get("gate:shared").unwrap().spec;
    let roles: Vec<&str> = gate.inputs.iter().map(|i| i.role.as_str()).collect();
    assert_eq!(
        roles,
        ["expert", "model"],
        "no data: the gate is read, not trained"
    );
    assert_eq!(gate.externals[0].role(), "peft");
    // The gate in the pool is the one trained in the first pipeline, as shipped.
    let cfg = base().config;
    let load = |files: std::path::PathBuf| {
        GateVectors::load(&files.join("gates.safetensors"), &cfg, &Device::Cpu, DType::F32).unwrap()
    };
    let first_plan = goosepipe::app::load_plan(&first, &reg, &store.hash_cache()).unwrap();
    let trained = load(store.files_dir(&first_plan.get("gate:alpha").unwrap().spec.key));
    let read = load(store.files_dir(&gate.key));
    let values = |g: &GateVectors| -> Vec<Vec<f32>> {
        g.gates.values().map(|t| t.to_vec1::<f32>().unwrap()).collect()
    };
    assert_eq!(values(&read), values(&trained));
    // On Slurm, reading a gate is a small CPU job.
    let res =
        goosepipe::exec::slurm::Resources::for_step(gate, Some(&goosepipe::steps::expert::GATE), "cuda");
    assert_eq!((res.gpus, res.cpus), (Some(0), Some(1)));

    // What cannot be done without the data, or without a shipped gate, is said.
    let plan_err = |manifest: String| -> String {
        std::fs::write(&m, manifest).unwrap();
        match goosepipe::app::load_plan(&m, &reg, &store.hash_cache()) {
            Ok(_) => panic!("planned"),
            Err(e) => format!("{e:?}"),
        }
    };
    let err = plan_err(with(&shared, "\"phatgoose\" \"average-activation\""));
    assert!(
        err.contains("method \"average-activation\" reads the data of every expert of pool \"p\",")
            && err.contains("one has no dataset: shared"),
        "{err}"
    );
    let err = plan_err(with(&shared.replace(" peft-gate=#true", ""), "\"phatgoose\""));
    assert!(err.contains("expert \"shared\" has no dataset="), "{err}");
    let err = plan_err(with(
        "expert \"shared\" model=\"t\" dataset=\"one\" peft-gate=#true",
        "\"phatgoose\"",
    ));
    assert!(err.contains("sets peft-gate but imports no adapter"), "{err}");
    // An adapter without a gate file: the plan says so, before any step runs.
    let bare = format!(
        "expert \"shared\" model=\"t\" peft=\"{}\" peft-gate=#true",
        peft_fixture("alpha").display()
    );
    // As one line: the report wraps its message at the terminal's width.
    let err = plan_err(with(&bare, "\"phatgoose\""))
        .split_whitespace()
        .filter(|w| *w != "│")
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        err.contains("expert \"shared\" uses the gate its adapter ships, but in the folder")
            && err.contains("there is no phatgoose_gates.safetensors"),
        "{err}"
    );
}

#[test]
fn an_imported_expert_says_what_is_wrong_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let reg = goosepipe::steps::registry();
    let store = goosepipe::store::Store::open(dir.path().join("store")).unwrap();
    let plan_err = |experts: &str| -> String {
        let m = pipeline(dir.path(), experts);
        match goosepipe::app::load_plan(&m, &reg, &store.hash_cache()) {
            Ok(_) => panic!("planned: {experts}"),
            Err(e) => format!("{e:?}"),
        }
    };
    let alpha = peft_fixture("alpha").display().to_string();
    let both = format!(
        "expert \"alpha\" model=\"t\" dataset=\"one\" peft=\"{alpha}\" peft-hub=\"org/a\"\nexpert \"bin\" model=\"t\" dataset=\"two\" peft=\"{alpha}\"\nexpert \"trained\" model=\"t\" dataset=\"two\""
    );
    assert!(plan_err(&both).contains("names both peft= and peft-hub="));
    let rev = experts_block("alpha").replace(
        "expert \"trained\" model=\"t\" dataset=\"two\"",
        "expert \"trained\" model=\"t\" dataset=\"two\" revision=\"v2\"",
    );
    assert!(plan_err(&rev).contains("sets revision= but imports nothing"));
    let missing = experts_block("alpha").replace(&alpha, "/nonexistent/adapter");
    assert!(plan_err(&missing).contains("does not exist"));
}

#[test]
fn an_expert_of_a_pipeline_built_base_exports_with_its_base() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("built.kdl");
    std::fs::write(
        &manifest,
        r#"
dataset "corpus" { synthetic task="corpus" examples=100 seed=1; }
model "t" { init corpus="corpus" d-model=16 d-ff=32 d-kv=8 heads=2 layers=1 seed=3 pretrain-steps=4 batch=8; }
dataset "sort" { synthetic task="sort" examples=32; }
expert "sort" model="t" dataset="sort" {
    lora rank=2
    train steps=2 batch=8 micro-batch=8 eval-every=2 eval-examples=4 checkpoint-every=2
    gate steps=1 batch=8 micro-batch=8
}
"#,
    )
    .unwrap();
    let store = dir.path().join("store");
    let (code, out) = support::run_product(&manifest, &store);
    assert_eq!(code, 0, "{out}");

    let to = dir.path().join("sort-peft");
    let mut said = Vec::new();
    goosepipe::app::export("expert:sort", None, &to, &store, false, &mut said).unwrap();
    let said = String::from_utf8(said).unwrap();
    assert!(
        said.contains("the base model was built by the pipeline")
            && said.contains("exported expert:sort with its gate gate:sort to "),
        "{said}"
    );
    // The base travels along as an HF folder that loads, and the adapter names it.
    let base_dir = to.join("base-model");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(base_dir.join(f).is_file(), "{f} missing");
    }
    let mut model = T5Model::load(&base_dir, &Device::Cpu, DType::F32).unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(to.join("adapter_config.json")).unwrap()).unwrap();
    assert!(
        config["base_model_name_or_path"]
            .as_str()
            .unwrap()
            .ends_with("base-model")
    );
    assert!(
        to.join("phatgoose_gates.safetensors").is_file(),
        "the gate was in the store"
    );

    // The export computes what the stored expert computes.
    let s = goosepipe::store::Store::open(&store).unwrap();
    let stored = s
        .files_dir(&s.find("expert:sort").unwrap().key)
        .join("expert.safetensors");
    let stored = LoraExpert::load(&stored, &model.config, &Device::Cpu, DType::F32).unwrap();
    let again = peft::import(&to, "sort", &model.config, &Device::Cpu)
        .unwrap()
        .expert;
    let ids = Tensor::new(&[[5u32, 9, 12, 1]], &Device::Cpu).unwrap();
    let mask = Tensor::ones((1, 4), DType::F32, &Device::Cpu).unwrap();
    model.set_adapters(AdapterSet::from_lora(&stored)).unwrap();
    let a = model.encode(&ids, &mask).unwrap();
    model.set_adapters(AdapterSet::from_lora(&again)).unwrap();
    let b = model.encode(&ids, &mask).unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);

    // Two gates of the expert (a gate setting tried and reverted): the export takes
    // the one the last run used, and says so (it exported no gate at all).
    let text = std::fs::read_to_string(&manifest).unwrap();
    let gate_key = || s.find("gate:sort").unwrap().key;
    let first = gate_key();
    std::fs::write(&manifest, text.replace("gate steps=1", "gate steps=2")).unwrap();
    assert_eq!(support::run_product(&manifest, &store).0, 0);
    let second = gate_key();
    assert_ne!(first, second);
    for (manifest_text, want) in [
        (text.replace("gate steps=1", "gate steps=2"), second),
        (text.clone(), first),
    ] {
        std::fs::write(&manifest, manifest_text).unwrap();
        assert_eq!(support::run_product(&manifest, &store).0, 0);
        let to = dir.path().join(format!("sort-peft-{}", want.short()));
        let mut said = Vec::new();
        goosepipe::app::export("expert:sort", None, &to, &store, false, &mut said).unwrap();
        let said = String::from_utf8(said).unwrap();
        assert!(
            said.contains(&format!(
                "2 gates of expert:sort in the store (different gate settings): exported gate:sort {}, the one the last run used",
                want.short()
            )),
            "{said}"
        );
        let exported = peft::import_gates(&to, "sort", &model.config, &Device::Cpu)
            .unwrap()
            .expect("the gate goes along");
        let stored = goosepipe::model::GateVectors::load(
            &s.files_dir(&want).join(goosepipe::artifact_files::GATES_FILE),
            &model.config,
            &Device::Cpu,
            DType::F32,
        )
        .unwrap();
        let values = |g: &goosepipe::model::GateVectors| -> Vec<(String, Vec<f32>)> {
            g.gates
                .iter()
                .map(|(m, t)| (m.clone(), t.to_vec1::<f32>().unwrap()))
                .collect()
        };
        assert_eq!(values(&exported), values(&stored));
    }

    // `score --model` takes the model step's store folder (as `show --path` prints
    // it; it said "config.json not found"): the same numbers as the exported base.
    let model_key = s.find("model:t").unwrap().key;
    let expert_file = s
        .files_dir(&s.find("expert:sort").unwrap().key)
        .join(goosepipe::artifact_files::EXPERT_FILE);
    let mut req = goosepipe::app::score::ScoreRequest::new(base_dir.to_str().unwrap(), "b a c", "a b c");
    req.experts = vec![expert_file];
    let from_export = goosepipe::app::score::score(&req).unwrap();
    // An exported folder is named by the expert its export recorded, not by the
    // folder (`sort-peft-KEY` here), as `score --experts DIR` says.
    let mut named = goosepipe::app::score::ScoreRequest::new(base_dir.to_str().unwrap(), "b a c", "a b c");
    named.experts = vec![dir.path().join(format!("sort-peft-{}", first.short()))];
    assert_eq!(goosepipe::app::score::score(&named).unwrap().experts, ["sort"]);
    for folder in [s.files_dir(&model_key), s.object_dir(&model_key)] {
        req.model = folder.to_str().unwrap().to_owned();
        let from_store = goosepipe::app::score::score(&req).unwrap();
        assert_eq!(from_store.total, from_export.total, "{}", folder.display());
    }
    // Or the steps by id, as the store's last run found them; the expert brings its
    // gate to a router that reads it (the default single router does not).
    let mut by_id = goosepipe::app::score::ScoreRequest::new("model:t", "b a c", "a b c");
    by_id.experts = vec!["expert:sort".into()];
    let mut gated = goosepipe::app::score::ScoreRequest::new("model:t", "b a c", "a b c");
    gated.experts = by_id.experts.clone();
    gated.router = goosepipe::app::score::RouterChoice::Gated;
    goosepipe::app::score::resolve_step_ids(&mut gated, &store).unwrap();
    assert_eq!(gated.gates.len(), 1, "{:?}", gated.gates);
    goosepipe::app::score::score(&gated).unwrap();
    goosepipe::app::score::resolve_step_ids(&mut by_id, &store).unwrap();
    assert!(by_id.gates.is_empty());
    assert_eq!(
        goosepipe::app::score::score(&by_id).unwrap().total,
        from_export.total
    );
    // Its record in the store's names/ index emptied (the next run writes it again):
    // found by its metadata, as `show` finds it (it was "in no run of the store").
    let record = store
        .join("names")
        .join(&blake3::hash(b"expert:sort").to_hex()[..32]);
    std::fs::write(&record, "").unwrap();
    let mut unrecorded = goosepipe::app::score::ScoreRequest::new("model:t", "b a c", "a b c");
    unrecorded.experts = vec!["expert:sort".into()];
    let notes = goosepipe::app::score::resolve_step_ids(&mut unrecorded, &store).unwrap();
    assert_eq!(unrecorded.experts, by_id.experts);
    assert!(notes.is_empty(), "one build of expert:sort: {notes:?}");
    // The gate's record lost too, with two builds of gate:sort in the store: the
    // newest is taken, and said to be a pick among several (as `show` says it).
    let gate_record = store
        .join("names")
        .join(&blake3::hash(b"gate:sort").to_hex()[..32]);
    let kept = std::fs::read(&gate_record).unwrap();
    std::fs::write(&gate_record, "").unwrap();
    let mut newest = goosepipe::app::score::ScoreRequest::new("model:t", "b a c", "a b c");
    newest.experts = vec!["expert:sort".into()];
    newest.router = goosepipe::app::score::RouterChoice::Gated;
    let notes = goosepipe::app::score::resolve_step_ids(&mut newest, &store).unwrap();
    assert_eq!(
        newest.gates,
        vec![s.files_dir(&second).join(goosepipe::artifact_files::GATES_FILE)]
    );
    assert_eq!(
        notes,
        vec![format!(
            "1 other artifact(s) of gate:sort are in the store, and its record in names/ (which one the last run used) is lost or damaged (the next run writes it again): took the newest, {}",
            second.short()
        )]
    );
    std::fs::write(&gate_record, kept).unwrap();
    // A gate gone from the store (gc) is said as such, not as a file not found.
    let gate_key = s.find("gate:sort").unwrap().key;
    let aside = dir.path().join("gate-aside");
    std::fs::rename(s.object_dir(&gate_key), &aside).unwrap();
    let mut gone = goosepipe::app::score::ScoreRequest::new("model:t", "b a c", "a b c");
    gone.experts = vec!["expert:sort".into()];
    gone.router = goosepipe::app::score::RouterChoice::Gated;
    let err = goosepipe::app::score::resolve_step_ids(&mut gone, &store).unwrap_err();
    assert!(
        err.starts_with("gate:sort: its artifact") && err.contains("is no longer in the store"),
        "{err}"
    );
    std::fs::rename(&aside, s.object_dir(&gate_key)).unwrap();
    // Another kind of step where the model goes (it was called a malformed hub id),
    // and one expert twice (it was blamed on gate files).
    let mut expert_as_model = goosepipe::app::score::ScoreRequest::new("expert:sort", "b a c", "a b c");
    let err = goosepipe::app::score::resolve_step_ids(&mut expert_as_model, &store).unwrap_err();
    assert_eq!(
        err,
        "--model expert:sort: a model step is given as model:NAME, not expert:NAME; experts go in --experts"
    );
    let mut twice = goosepipe::app::score::ScoreRequest::new("model:t", "b a c", "a b c");
    twice.experts = vec!["expert:sort".into(), "expert:sort".into()];
    let err = goosepipe::app::score::resolve_step_ids(&mut twice, &store).unwrap_err();
    assert_eq!(err, "--experts names expert:sort twice");
    let mut unknown = goosepipe::app::score::ScoreRequest::new("model:t", "b a c", "a b c");
    unknown.experts = vec!["expert:sorted".into()];
    let err = goosepipe::app::score::resolve_step_ids(&mut unknown, &store).unwrap_err();
    assert!(
        err.starts_with("expert:sorted is in no run of the store at")
            && err.contains("; did you mean expert:sort? (run its manifest first"),
        "{err}"
    );

    // A file named as a step id in the working folder does not take the step's place
    // (it did: `export expert:sort` read the file as an expert file and asked for
    // --model; `score` scored it): the id is read, and the file said.
    std::fs::write(dir.path().join("expert:sort"), "not an expert").unwrap();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_goosepipe"))
            .args(args)
            .args(["--store", "store"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        // One line: miette wraps reports at the terminal's width.
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .replace('│', " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
        (out.status.code(), said)
    };
    let (code, said) = cli(&["export", "expert:sort", "shadowed"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("exported expert:sort with its gate gate:sort")
            && said.contains(
                "expert:sort was read as a step id; the regular file of that name here is ./expert:sort"
            ),
        "{said}"
    );
    let (code, said) = cli(&[
        "score",
        "--model",
        "model:t",
        "--experts",
        "expert:sort",
        "--input",
        "b a c",
        "--target",
        "a b c",
    ]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains(
            "expert:sort was read as a step id; the regular file of that name here is ./expert:sort"
        ),
        "{said}"
    );
    // A file where the export's folder would go is named (it was the base-model
    // folder below it, "Not a directory").
    let (code, said) = cli(&["export", "expert:sort", "expert:sort/sub"]);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains(
            "export expert:sort: expert:sort is a regular file, not a folder; give a folder to export into"
        ),
        "{said}"
    );
    // Given as ./expert:sort it is the file, and said as what it is not.
    let (code, said) = cli(&["export", "./expert:sort", "as-file"]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("is an expert file: export needs --model"), "{said}");

    // A model step exports as an HF checkpoint folder.
    let m = dir.path().join("model");
    goosepipe::app::export("model:t", None, &m, &store, false, &mut Vec::new()).unwrap();
    assert!(T5Model::load(&m, &Device::Cpu, DType::F32).is_ok());
    // With a tokenizer_config.json that makes transformers read its word-level
    // tokenizer.json as it is (it took `model_type: t5` to mean sentencepiece).
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(m.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(
        config,
        serde_json::json!({"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"})
    );

    // Into the store's own folder (as `show --path` prints it), even with --force:
    // refused before a byte is written (the published config.json was emptied).
    let own = s.files_dir(&s.named("model:t").unwrap()).join("model");
    let before = std::fs::read(own.join("config.json")).unwrap();
    let err = goosepipe::app::export("model:t", None, &own, &store, true, &mut Vec::new()).unwrap_err();
    assert!(
        format!("{err}").contains("is inside the goosepipe store at"),
        "{err}"
    );
    assert_eq!(std::fs::read(own.join("config.json")).unwrap(), before);
    assert!(s.verify(&s.named("model:t").unwrap()).is_ok());

    // A file where the base model goes is said, not met with the OS's "File exists".
    let blocked = dir.path().join("blocked");
    std::fs::create_dir(&blocked).unwrap();
    std::fs::write(blocked.join("base-model"), "a file").unwrap();
    let err =
        goosepipe::app::export("expert:sort", None, &blocked, &store, true, &mut Vec::new()).unwrap_err();
    assert!(
        format!("{err}").contains("base-model exists and is not a folder: the base model is written there"),
        "{err}"
    );

    // Links in a folder exported into again (--force) are replaced, never written
    // through: here into another expert's artifact, and the base model's own weights
    // (a copy onto itself emptied them), and a base-model folder that is a link into
    // another artifact (the base's files landed in it).
    let linked = dir.path().join("linked");
    std::fs::create_dir_all(&linked).unwrap();
    let other = s
        .files_dir(&s.find("expert:sort").unwrap().key)
        .join(goosepipe::artifact_files::EXPERT_FILE);
    std::os::unix::fs::symlink(&other, linked.join("adapter_model.safetensors")).unwrap();
    let model_files = s.files_dir(&s.named("model:t").unwrap());
    std::os::unix::fs::symlink(&model_files, linked.join("base-model")).unwrap();
    let before: Vec<_> = s.keys().into_iter().map(|k| (k, s.verify(&k).is_ok())).collect();
    goosepipe::app::export("expert:sort", None, &linked, &store, true, &mut Vec::new()).unwrap();
    let after: Vec<_> = s.keys().into_iter().map(|k| (k, s.verify(&k).is_ok())).collect();
    assert_eq!(before, after, "an artifact changed");
    assert!(
        !std::fs::symlink_metadata(linked.join("base-model"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(T5Model::load(&linked.join("base-model"), &Device::Cpu, DType::F32).is_ok());
    let mut base_link = dir.path().join("base-link");
    std::fs::create_dir_all(base_link.join("base-model")).unwrap();
    let weights = model_files.join("model/model.safetensors");
    assert!(weights.is_file(), "{}", weights.display());
    std::os::unix::fs::symlink(&weights, base_link.join("base-model/model.safetensors")).unwrap();
    goosepipe::app::export("expert:sort", None, &base_link, &store, true, &mut Vec::new()).unwrap();
    assert!(s.verify(&s.named("model:t").unwrap()).is_ok());
    base_link.push("base-model/model.safetensors");
    assert_eq!(
        std::fs::read(&base_link).unwrap(),
        std::fs::read(&weights).unwrap()
    );

    // Imported again on a base of the same shapes and other weights (another seed),
    // the adapter says it was made for another base (the scores just dropped); on its
    // own base it says nothing.
    let text = std::fs::read_to_string(&manifest).unwrap();
    for (seed, warned) in [("seed=3", false), ("seed=4", true)] {
        let m = dir.path().join(format!("reimport-{warned}.kdl"));
        std::fs::write(
            &m,
            format!(
                "{}\nexpert \"imp\" model=\"t\" dataset=\"sort\" peft=\"{}\" peft-gate=#true\n",
                text.replace("seed=3", seed),
                to.display()
            ),
        )
        .unwrap();
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_goosepipe"))
            .arg("run")
            .arg(&m)
            .arg("--store")
            .arg(&store)
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&run.stderr).to_string() + &String::from_utf8_lossy(&run.stdout);
        assert_eq!(run.status.code(), Some(0), "{log}");
        // In the run's log, not in the artifact (whose bytes depend on its key alone).
        assert_eq!(
            log.contains("warning: the adapter came with the base it was trained on (base-model/)"),
            warned,
            "{log}"
        );
        let plan = goosepipe::app::load_plan(&m, &goosepipe::steps::registry(), &s.hash_cache()).unwrap();
        let files = s.files_dir(&plan.get("expert:imp").unwrap().spec.key);
        let summary = std::fs::read_to_string(files.join("summary.json")).unwrap();
        assert!(!summary.contains("warning"), "{summary}");
    }
}

#[test]
fn tensor_names_with_the_adapter_name_segment_import_the_same() {
    // As a PeftModel's state_dict names them (`...q.lora_A.default.weight`), not as
    // save_pretrained does; and without the `base_model.model.` prefix.
    let dir = edited(|_| {});
    let st = dir.path().join("adapter_model.safetensors");
    let renamed: HashMap<String, Tensor> = load_st(&st)
        .into_iter()
        .map(|(k, v)| {
            let k = k
                .strip_prefix("base_model.model.")
                .unwrap()
                .replace(".lora_A.weight", ".lora_A.default.weight")
                .replace(".lora_B.weight", ".lora_B.default.weight");
            (k, v)
        })
        .collect();
    candle_core::safetensors::save(&renamed, &st).unwrap();
    let m = base();
    let a = import("alpha").expert;
    let b = peft::import(dir.path(), "alpha", &m.config, &Device::Cpu)
        .unwrap()
        .expert;
    assert_eq!(a.modules.len(), b.modules.len());
    for (name, l) in &a.modules {
        assert_eq!(max_abs_diff(&l.b, &b.modules[name].b), 0.0, "{name}");
    }
    // Two adapters in one file are refused.
    let mut two = renamed.clone();
    for (k, v) in &renamed {
        two.insert(k.replace(".default.", ".other."), v.clone());
    }
    candle_core::safetensors::save(&two, &st).unwrap();
    let e = import_err(dir.path(), &m);
    assert!(e.contains("several adapters"), "{e}");
}
