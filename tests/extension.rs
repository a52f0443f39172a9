//! Extending goosepipe: a new evaluation method and a new step kind, each written
//! in one place (here, this file), planned, run and reported end to end on a micro
//! pipeline, with no change to the engine.
//!
//! The kind, `toy-norm`, writes each pool member's LoRA norm; the method,
//! `loudest`, needs it and runs the member with the largest norm everywhere.

use std::sync::Arc;

use candle_core::{DType, Device};
use goosepipe::exec::{CancelFlag, JobDefaults, Kind, RunOptions, StepContext, StepError, StepRunner};
use goosepipe::model::{AdapterSet, ModelError, Result};
use goosepipe::plan::{MemberData, Needed};
use goosepipe::route::{METHODS, Method, Pool};
use goosepipe::store::Store;

/// The new step kind: one per pool member, reading its expert.
const TOY_NORM: Kind = Kind {
    needed: Some(Needed::PerMember {
        settings: &[],
        data: MemberData::Tokens,
        expert: true,
        model: false,
        embedder: None,
    }),
    ..Kind::new("toy-norm", 1, 6, JobDefaults::new(0, 1, "1G", "0:10:00"))
};

struct ToyNorm;

impl StepRunner for ToyNorm {
    fn kind(&self) -> &'static str {
        TOY_NORM.name
    }
    fn run(&self, ctx: &StepContext) -> std::result::Result<(), StepError> {
        let file = ctx
            .input("expert")?
            .files
            .join(goosepipe::artifact_files::EXPERT_FILE);
        let tensors =
            candle_core::safetensors::load(&file, &Device::Cpu).map_err(|e| StepError::msg(e.to_string()))?;
        let mut norm = 0f64;
        for t in tensors.values() {
            let t = t
                .to_dtype(DType::F64)
                .and_then(|t| t.sqr()?.sum_all()?.to_scalar::<f64>());
            norm += t.map_err(|e| StepError::msg(e.to_string()))?;
        }
        std::fs::write(
            ctx.out.join("norm.json"),
            serde_json::json!({ "norm": norm.sqrt() }).to_string(),
        )?;
        Ok(())
    }
}

/// The new method: the member whose `toy-norm` is largest, on every module.
struct Loudest;

impl Method for Loudest {
    fn name(&self) -> &'static str {
        "loudest"
    }
    fn needs(&self) -> &'static [&'static str] {
        &["toy-norm"]
    }
    fn adapters(&self, pool: &Pool) -> Result<AdapterSet> {
        let norm = |dir: &std::path::PathBuf| -> Result<f64> {
            let text = std::fs::read_to_string(dir.join("norm.json"))
                .map_err(|e| ModelError::Input(e.to_string()))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| ModelError::Input(e.to_string()))?;
            Ok(v["norm"].as_f64().unwrap_or(0.0))
        };
        let norms = pool
            .needed("toy-norm")?
            .iter()
            .map(norm)
            .collect::<Result<Vec<_>>>()?;
        let loudest = (0..norms.len())
            .max_by(|&a, &b| norms[a].total_cmp(&norms[b]))
            .unwrap_or(0);
        Ok(AdapterSet::from_lora(&pool.experts[loudest]))
    }
}

const MICRO: &str = r#"
pipeline "extension"
dataset "corpus" { synthetic task="corpus" examples=200 seed=1; }
model "t" {
    init corpus="corpus" d-model=16 d-ff=32 d-kv=8 heads=2 layers=1 seed=3 pretrain-steps=8 batch=8
}
defaults {
    lora rank=4
    train steps=6 batch=8 micro-batch=8 eval-every=6 eval-examples=8 checkpoint-every=6 dropout=0.0
    gate steps=2 batch=8 micro-batch=8
}
dataset "sort" { synthetic task="sort" format="choice" examples=48; }
dataset "shift" { synthetic task="shift" format="choice" examples=48 seed=9; }
dataset "arrange" split="test" { synthetic task="arrange" format="choice" examples=12 seed=5; }
expert "sort" model="t" dataset="sort" { train lr=0.05; }
expert "shift" model="t" dataset="shift"
pool "p" { experts "sort" "shift"; }
eval "e" pool="p" {
    methods "loudest" "expert:sort" "expert:shift"
    task "arrange" dataset="arrange"
}
"#;

#[test]
fn a_method_and_a_step_kind_are_one_file_each() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("micro.kdl");
    std::fs::write(&manifest, MICRO).unwrap();
    let mut methods: Vec<&'static dyn Method> = METHODS.to_vec();
    methods.push(&Loudest);
    let mut reg = goosepipe::steps::registry_with_methods(&methods);
    reg.declare(TOY_NORM);
    reg.register(Arc::new(ToyNorm));

    // Planned: one toy step per member, ordered where the kind says, read by the eval.
    let store = Store::open(dir.path().join("store")).unwrap();
    let plan = goosepipe::app::load_plan(&manifest, &reg, &store.hash_cache()).unwrap();
    let ids: Vec<&str> = plan.steps.iter().map(|s| s.id()).collect();
    let at = |id: &str| {
        ids.iter()
            .position(|x| *x == id)
            .unwrap_or_else(|| panic!("{id} in {ids:?}"))
    };
    assert!(
        at("gate:shift") < at("toy-norm:shift") && at("toy-norm:sort") < at("pool:p"),
        "{ids:?}"
    );
    let eval = plan.get("eval:e").unwrap();
    let roles: Vec<&str> = eval.spec.inputs.iter().map(|i| i.role.as_str()).collect();
    assert!(
        roles.contains(&"toy-norm:sort") && roles.contains(&"toy-norm:shift"),
        "{roles:?}"
    );

    // Run: the method's column equals the loudest expert's own.
    let mut out = Vec::new();
    let code = goosepipe::app::run(
        &manifest,
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
    let files = |id: &str| store.files_dir(&plan.get(id).unwrap().spec.key);
    let norm = |id: &str| -> f64 {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(files(id).join("norm.json")).unwrap()).unwrap();
        v["norm"].as_f64().unwrap()
    };
    let (sort, shift) = (norm("toy-norm:sort"), norm("toy-norm:shift"));
    assert!(sort > 0.0 && shift > 0.0 && sort != shift, "{sort} {shift}");
    let loudest = if sort > shift {
        "expert:sort"
    } else {
        "expert:shift"
    };
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(files("eval:e").join("results.json")).unwrap()).unwrap();
    let scores = &results["scores"]["arrange"];
    assert_eq!(scores["loudest"], scores[loudest], "{results}");
    assert!(
        out.contains("| task | loudest | expert:sort | expert:shift |"),
        "{out}"
    );

    // An unknown method's help names the new one with the rest.
    std::fs::write(
        &manifest,
        MICRO.replace("\"loudest\" \"expert:sort\"", "\"loudst\" \"expert:sort\""),
    )
    .unwrap();
    let err = goosepipe::app::load_plan(&manifest, &reg, &store.hash_cache()).unwrap_err();
    assert!(
        format!("{err:?}").contains("did you mean \"loudest\"?"),
        "{err:?}"
    );
}
