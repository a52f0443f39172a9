//! The shipped pipelines check and plan offline: pipelines/t0.kdl is the paper's setup
//! (36 held-in P3 experts; T0 held-out, BIG-bench Hard and Lite), pipelines/flan.kdl the
//! FLAN pool. CI fails the moment either stops validating or changes shape.

use std::collections::BTreeMap;
use std::path::Path;

fn plan(manifest: &str) -> goosepipe::plan::Plan {
    let t = tempfile::tempdir().unwrap();
    let store = goosepipe::store::Store::open(t.path().join("store")).unwrap();
    goosepipe::app::load_plan(
        Path::new(manifest),
        &goosepipe::steps::registry(),
        &store.hash_cache(),
    )
    .unwrap_or_else(|e| panic!("{manifest} does not plan: {e:?}"))
}

fn kinds(p: &goosepipe::plan::Plan) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for s in &p.steps {
        *m.entry(s.spec.kind.clone()).or_default() += 1;
    }
    m
}

fn goosepipe(args: &[&str]) -> std::process::Output {
    let t = tempfile::tempdir().unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_goosepipe"))
        .args(args)
        .arg("--store")
        .arg(t.path().join("store"))
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", t.path().join("no-cache"))
        .output()
        .unwrap()
}

/// The paper's expert order (METHOD.md section 5).
const T0_HELD_IN: [&str; 36] = [
    "ag_news",
    "amazon_polarity",
    "cosmos_qa",
    "samsum",
    "quartz",
    "ropes",
    "wiki_bio",
    "paws",
    "wiki_qa",
    "social_i_qa",
    "qasc",
    "quail",
    "dream",
    "wiqa",
    "quarel",
    "sciq",
    "quoref",
    "duorc",
    "rotten_tomatoes",
    "yelp_review_full",
    "common_gen",
    "gigaword",
    "xsum",
    "mrpc",
    "qqp",
    "commonsense_qa",
    "cos_e",
    "wiki_hop",
    "hotpot_qa",
    "app_reviews",
    "trec",
    "multi_news",
    "imdb",
    "adversarial_qa",
    "cnn_dailymail",
    "dbpedia_14",
];

#[test]
fn t0_checks_and_plans_offline() {
    let check = goosepipe(&["check", "pipelines/t0.kdl"]);
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let plan_out = goosepipe(&["plan", "pipelines/t0.kdl", "--json"]);
    assert_eq!(
        plan_out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&plan_out.stderr)
    );

    let p = plan("pipelines/t0.kdl");
    let k = kinds(&p);
    for (kind, n) in [
        ("model", 1),
        ("expert", 36),
        ("gate", 36),
        ("tokenize", 36),
        ("average-activation", 36),
        ("retrieval-index", 36),
        ("multitask", 1),
        ("pool", 1),
        ("eval", 3),
    ] {
        assert_eq!(k.get(kind).copied().unwrap_or(0), n, "{kind}: {k:?}");
    }
    let pool = p.get("pool:t0-held-in").unwrap();
    let members: Vec<&str> = pool.spec.params["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    let mut want = T0_HELD_IN.to_vec();
    want.sort();
    assert_eq!(members, want);

    // The paper's training settings reach every expert and gate.
    let e = &p.get("expert:ag_news").unwrap().spec.params;
    assert_eq!(e["lora"]["rank"], 16);
    for (k, v) in [
        ("steps", 1000.0),
        ("batch", 1024.0),
        ("lr", 0.005),
        ("warmup", 0.06),
        ("eval-every", 100.0),
    ] {
        assert_eq!(e["train"][k].as_f64(), Some(v), "train.{k}");
    }
    assert_eq!(p.get("gate:ag_news").unwrap().spec.params["gate"]["steps"], 100);
    let d = &p.get("dataset:p3-ag_news").unwrap().spec.params;
    assert_eq!(d["templates"]["max-pairs"], 500000);

    let tasks = |eval: &str| {
        p.get(eval).unwrap().spec.params["task"]
            .as_object()
            .unwrap()
            .len()
    };
    assert_eq!(tasks("eval:t0-held-out"), 11);
    assert_eq!(tasks("eval:bbh"), 22);
    assert_eq!(tasks("eval:bbl"), 17);
    let t0ho = &p.get("dataset:t0ho-copa").unwrap().spec.params["templates"];
    assert_eq!(t0ho["original-task"], true);
    assert_eq!(t0ho["ignore"].as_array().unwrap().len(), 4);
    let methods = p.get("eval:bbh").unwrap().spec.params["methods"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(methods, 9, "every method of the evaluation");
}

#[test]
fn flan_checks_and_plans_offline() {
    let check = goosepipe(&["check", "pipelines/flan.kdl"]);
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let plan_out = goosepipe(&["plan", "pipelines/flan.kdl", "--json"]);
    assert_eq!(
        plan_out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&plan_out.stderr)
    );

    let p = plan("pipelines/flan.kdl");
    let k = kinds(&p);
    assert_eq!(k["expert"], 166, "{k:?}");
    assert_eq!(k["gate"], 166);
    let members = p.get("pool:flan").unwrap().spec.params["members"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(members, 166);
    // Its P3 experts are t0.kdl's, key for key: one store trains them once.
    let t0 = plan("pipelines/t0.kdl");
    for e in T0_HELD_IN {
        let id = format!("expert:{e}");
        assert_eq!(
            p.get(&id).unwrap().spec.key,
            t0.get(&id).unwrap().spec.key,
            "{id}"
        );
    }
    let d = &p.get("dataset:flan-niv2-paraphrasing").unwrap().spec.params;
    assert_eq!(d["config"], "FLANV2/NIV2/Paraphrasing");
    assert_eq!(d["holdout"], "flan");
    let tasks = |eval: &str| {
        p.get(eval).unwrap().spec.params["task"]
            .as_object()
            .unwrap()
            .len()
    };
    assert_eq!(tasks("eval:flan-bbh"), 22);
    assert_eq!(tasks("eval:flan-bbl"), 17);
}

/// Every committed lockfile pins the keys the shipped manifest plans today: a change
/// that moves a key (a version bump, a new parameter) must regenerate it, or `run
/// --locked` on a fresh store would refuse the pipeline the README promises it
/// reproduces. (The digests are checked by running: README, "What makes a step stale".)
#[test]
fn committed_lockfiles_pin_todays_keys() {
    let mut checked = 0;
    // An empty store: keys only (the digests of artifacts it holds are compared too).
    let empty = tempfile::tempdir().unwrap();
    let store = goosepipe::store::Store::open(empty.path()).unwrap();
    for entry in std::fs::read_dir("pipelines").unwrap() {
        let path = entry.unwrap().path();
        let Some(manifest) = path
            .to_str()
            .and_then(|p| p.strip_suffix(".lock"))
            .map(str::to_string)
        else {
            continue;
        };
        let lock = goosepipe::store::lockfile::Lockfile::read(&path).unwrap();
        let p = plan(&manifest);
        if let Err(e) = goosepipe::exec::run::check_locked(&p, &store, &lock, None) {
            panic!(
                "{}: {e}\n(run `goosepipe run {manifest}` and commit the lockfile)",
                path.display()
            );
        }
        assert!(
            lock.steps.values().all(|s| s.digest.is_some()),
            "{}: a step without a digest (commit a lockfile from a complete run)",
            path.display()
        );
        checked += 1;
    }
    assert!(checked >= 3, "quickstart, study and study-content ship lockfiles");
}
