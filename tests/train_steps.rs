//! The real step kinds on a micro pipeline (seconds): bitwise-reproducible artifacts,
//! resumption after Ctrl-C, metrics kept in the artifact, and results tables.

use std::collections::BTreeMap;
use std::path::Path;

use goosepipe::exec::{CancelFlag, RunOptions};
use goosepipe::store::Store;

const MICRO: &str = r#"
pipeline "micro"
dataset "corpus" { synthetic task="corpus" examples=200 seed=1; }
model "t" {
    init corpus="corpus" d-model=16 d-ff=32 d-kv=8 heads=2 layers=1 seed=3 pretrain-steps=12 batch=8
}
defaults {
    lora rank=4
    train steps=12 batch=8 micro-batch=4 eval-every=6 eval-examples=16 checkpoint-every=4
    gate steps=4 batch=8 micro-batch=8
}
dataset "sort" { synthetic task="sort" format="choice" examples=64; }
dataset "shift" { synthetic task="shift" format="choice" examples=64; }
dataset "arrange" split="test" { synthetic task="arrange" format="choice" examples=16 seed=5; }
expert "sort" model="t" dataset="sort"
expert "shift" model="t" dataset="shift"
pool "p" { experts "sort" "shift"; }
eval "e" pool="p" {
    methods "phatgoose" "base" "merged" "arrow" "multitask" "expert:sort" "best-individual" "oracle"
    task "arrange" dataset="arrange"
    task "arrange-gen" dataset="arrange" metric="exact-match" max-new-tokens=6
}
"#;

fn run(dir: &Path, cancel: &CancelFlag) -> (i32, String) {
    let reg = goosepipe::steps::registry();
    let mut out = Vec::new();
    let code = goosepipe::app::run(
        &dir.join("micro.kdl"),
        &dir.join("store"),
        &reg,
        &RunOptions::default(),
        true,
        cancel,
        &mut out,
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    (code, String::from_utf8(out).unwrap())
}

/// The store of a micro project folder and its manifest's plan.
fn store_and_plan(dir: &Path) -> (Store, goosepipe::plan::Plan) {
    let store = Store::open(dir.join("store")).unwrap();
    let plan = goosepipe::app::load_plan(
        &dir.join("micro.kdl"),
        &goosepipe::steps::registry(),
        &store.hash_cache(),
    )
    .unwrap();
    (store, plan)
}

fn digests(dir: &Path) -> BTreeMap<String, String> {
    let store = Store::open(dir.join("store")).unwrap();
    store
        .keys()
        .into_iter()
        .map(|k| {
            let m = store.meta(&k).unwrap();
            (m.spec.id.clone(), m.digest)
        })
        .collect()
}

#[test]
fn two_clean_runs_give_bitwise_identical_artifacts() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for d in [a.path(), b.path()] {
        std::fs::write(d.join("micro.kdl"), MICRO).unwrap();
        let (code, out) = run(d, &CancelFlag::new());
        assert_eq!(code, 0, "{out}");
        assert!(
            out.contains(
                "| task | phatgoose | base | merged | arrow | multitask | expert:sort | best-individual | oracle |"
            ),
            "{out}"
        );
    }
    let (da, db) = (digests(a.path()), digests(b.path()));
    assert_eq!(da.len(), 14);
    assert_eq!(da, db);
    assert_fma_bits(&da);
    // Training steps keep their loss curve and validation results.
    let (store, plan) = store_and_plan(a.path());
    let k = plan.get("expert:sort").unwrap().spec.key;
    let metrics = std::fs::read_to_string(store.files_dir(&k).join("metrics.jsonl")).unwrap();
    assert!(
        metrics.lines().any(|l| l.contains("\"val_loss\""))
            && metrics.lines().filter(|l| l.contains("\"loss\"")).count() == 12,
        "{metrics}"
    );
}

/// Every artifact's digest of [`MICRO`] as the default build computes it on any x86-64
/// CPU with FMA, AVX-512 or not (`process::numerics`): what lets a lockfile pinned on one
/// machine reproduce on another. gemm's AVX-512 kernels slipping into the default build,
/// or a kernel that sums in another order, move these (the routing kernels are not
/// reached at this size: `kernels::routed_lora`'s and `model_adapters`' tests hold them to
/// the build); then, if knowingly, update them and re-pin the shipped lockfiles
/// (pipelines/*.lock) on such a CPU.
const MICRO_FMA_DIGESTS: &[(&str, &str)] = &[
    (
        "dataset:arrange",
        "506b8024ae6dc7e3f576fa31854bfa920e9a54f5fc659cc9017f65fce2e118e3",
    ),
    (
        "dataset:corpus",
        "ddde874ccfe276af628cbfe1efd165069093c9b8931c24e67c43876af4496650",
    ),
    (
        "dataset:shift",
        "458ed02fec70b60ec13103b73127abc48af58407aecebe5d545f9bada3e296dd",
    ),
    (
        "dataset:sort",
        "cb301b80df9a1fa10038b080c318851f69c7933930fa2c2aaca0f75e8732b716",
    ),
    (
        "eval:e",
        "ba4c7f297705910714d4ee9924d2ddd3b9a8a0da257bb0d91cf126b076d69c87",
    ),
    (
        "expert:shift",
        "e4667edb435f70468d67dba0aa249a3fede88c4f58530abf1524746c4e9e14dc",
    ),
    (
        "expert:sort",
        "0e7a440259286d18a779610792df8d9ec25e15dcb2f2581bf493d1ac6e2d98bb",
    ),
    (
        "gate:shift",
        "85daf685d94ea44e4682ff06fec6d0ccafdbe4ba7e574c0f1f042865f0474060",
    ),
    (
        "gate:sort",
        "8609797c898ddc1fe5f0c8e6485a409d6160fd91a7b5768157900a004320c4c1",
    ),
    (
        "model:t",
        "8f9c704ddf5f71dd57538dc2b827d0925e8db73ec36f22bfe56640beeaafc391",
    ),
    (
        "multitask:p",
        "0b35c3ec6dc7234d8140b4f02b449216b87f6c99f8cf9425369a1834cf86f08f",
    ),
    (
        "pool:p",
        "73130584ec531ab9babf143ccbef45322a02862b64c7cc3cce53c79d9368332c",
    ),
    (
        "tokenize:shift",
        "e78adae9f1c47ce99489753f13a5ce206bda1701e62cfa41d68037a90d864ea0",
    ),
    (
        "tokenize:sort",
        "9fb2f28c2fa8e49d215e4900d6ea03feced46482403072799d776a7f6045ae6d",
    ),
];

fn assert_fma_bits(digests: &BTreeMap<String, String>) {
    let label = goosepipe::process::numerics::numerics("cpu");
    // Any k-block: no product of MICRO sums more than 512 terms, so the blocks that
    // gemm's cache model picks (the label's `kcN`) never split one.
    if !label.starts_with("cpu x86_64 fma") {
        eprintln!("skipped: the pinned bits are of cpu x86_64 fma, this build computes {label}");
        return;
    }
    let moved: Vec<String> = MICRO_FMA_DIGESTS
        .iter()
        .filter(|(id, d)| digests.get(*id).map(String::as_str) != Some(*d))
        .map(|(id, _)| id.to_string())
        .collect();
    let now: Vec<String> = digests
        .iter()
        .map(|(id, d)| format!("    ({id:?}, {d:?}),"))
        .collect();
    assert!(
        moved.is_empty() && digests.len() == MICRO_FMA_DIGESTS.len(),
        "the default build's bits moved ({} of {}: {}); if knowingly, pin them anew:\n{}",
        moved.len(),
        MICRO_FMA_DIGESTS.len(),
        moved.join(", "),
        now.join("\n")
    );
}

/// Names are labels, never ingredients of a key, so an artifact's bytes must not
/// depend on them either: the same pipeline with its model, the pool and the eval
/// renamed (a dataset's name is an ingredient of multitask, whose union it orders), and a second expert on the sort data named to come first (a twin
/// of expert "sort": it builds their one artifact), has the same keys and
/// byte-identical artifacts. Only the tables shown carry the new names.
#[test]
fn renamed_steps_keep_their_keys_and_their_artifacts_bytes() {
    let renamed = MICRO
        .replace("model \"t\" {", "model \"base\" {")
        .replace("model=\"t\"", "model=\"base\"")
        .replace("pool \"p\" {", "pool \"both\" {")
        .replace("pool=\"p\"", "pool=\"both\"")
        .replace("eval \"e\"", "eval \"held-out\"")
        .replace(
            "expert \"sort\" model",
            "expert \"a-sort\" model=\"base\" dataset=\"sort\"\nexpert \"sort\" model",
        );
    assert_ne!(renamed, MICRO);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::write(a.path().join("micro.kdl"), MICRO).unwrap();
    std::fs::write(b.path().join("micro.kdl"), &renamed).unwrap();
    let (code, out_a) = run(a.path(), &CancelFlag::new());
    assert_eq!(code, 0, "{out_a}");
    let (code, out_b) = run(b.path(), &CancelFlag::new());
    assert_eq!(code, 0, "{out_b}");
    // No task names its expert: `report` adds no held-in table, and the run says so
    // (it promised one regardless).
    assert!(
        out_a.contains("adds each pool's gate correlation; a task that names the expert trained for it, `task ... expert=NAME`, also gets"),
        "{out_a}"
    );
    // The heading says the pool and the routing setting the numbers depend on.
    assert!(
        out_a.contains("### e (pool of 2 experts; top-2 routing)"),
        "{out_a}"
    );
    assert!(
        out_b.contains("### held-out (pool of 2 experts; top-2 routing)"),
        "{out_b}"
    );
    assert!(
        out_b.contains("sharing the artifact of one of them (same key)"),
        "{out_b}"
    );
    let by_key = |d: &Path| -> BTreeMap<String, String> {
        let store = Store::open(d.join("store")).unwrap();
        store
            .keys()
            .into_iter()
            .map(|k| (k.hex(), store.meta(&k).unwrap().digest))
            .collect()
    };
    let (ka, kb) = (by_key(a.path()), by_key(b.path()));
    assert_eq!(ka.len(), 14);
    assert_eq!(
        ka.keys().collect::<Vec<_>>(),
        kb.keys().collect::<Vec<_>>(),
        "renaming changes no key, and the twin adds none"
    );
    for (k, d) in &ka {
        assert_eq!(Some(d), kb.get(k), "artifact {k} differs after renaming");
    }

    // `report --format json` titles each table with its eval's name, as the markdown.
    let mut json = Vec::new();
    let code = goosepipe::app::report(
        &b.path().join("micro.kdl"),
        &b.path().join("store"),
        &goosepipe::steps::registry(),
        "json",
        None,
        &mut json,
    )
    .unwrap();
    assert_eq!(code, 0);
    let json = String::from_utf8(json).unwrap();
    // One JSON document (an array of records, each naming its step) that parses.
    let parsed: Vec<serde_json::Value> =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(parsed.len(), 1, "{json}");
    assert_eq!(
        parsed[0]["title"], "held-out (pool of 2 experts; top-2 routing)",
        "{json}"
    );
    assert_eq!(parsed[0]["step"], "eval:held-out", "{json}");
    // CSV rows name their eval's step in a first column.
    let mut csv = Vec::new();
    goosepipe::app::report(
        &b.path().join("micro.kdl"),
        &b.path().join("store"),
        &goosepipe::steps::registry(),
        "csv",
        None,
        &mut csv,
    )
    .unwrap();
    let csv = String::from_utf8(csv).unwrap();
    // Long records under one header, so any CSV reader gets the columns right
    // (a header per eval, each with its methods, was misread).
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("step,task,metric,method,score,current,examples,lo,hi"),
        "{csv}"
    );
    let records: Vec<&str> = lines.collect();
    assert!(!records.is_empty(), "{csv}");
    assert!(
        records.iter().all(|l| l.starts_with("eval:held-out,")
            && l.contains(",true,")
            && l.ends_with(",,")
            && l.split(',').count() == 9),
        "{csv}"
    );
    assert!(
        records
            .iter()
            .any(|l| l.starts_with("eval:held-out,mean,mean over tasks,")),
        "{csv}"
    );

    // Files taken from the store by hand are named by the steps that built them, so
    // two experts and their gates route (names match, none is "expert" twice).
    let (store, plan) = store_and_plan(b.path());
    let file = |id: &str, f: &str| store.files_dir(&plan.get(id).unwrap().spec.key).join(f);
    let mut req = goosepipe::app::score::ScoreRequest::new(
        file("model:base", "model").display().to_string(),
        "sort the letters: c a b",
        "a b c",
    );
    req.experts = vec![
        file("expert:sort", "expert.safetensors"),
        file("expert:shift", "expert.safetensors"),
    ];
    req.gates = vec![
        file("gate:shift", "gates.safetensors"),
        file("gate:sort", "gates.safetensors"),
    ];
    req.router = goosepipe::app::score::RouterChoice::parse("phatgoose").unwrap();
    let scored = goosepipe::app::score::score(&req).unwrap_or_else(|e| panic!("{e}"));
    assert!(scored.total.is_finite());
    // One expert with another's gate from the store: refused by the gate's step name,
    // not paired by order.
    req.experts.truncate(1);
    req.gates.truncate(1);
    let err = goosepipe::app::score::score(&req).unwrap_err().to_string();
    assert!(
        err.contains("has 0 gate files by name (gate files: shift)"),
        "{err}"
    );
    // An expert under a store model other than its own (same shapes, another key) is
    // refused: the expert records its base model's key.
    req.gates.clear();
    req.router = goosepipe::app::score::RouterChoice::Single;
    let model_key = plan.get("model:base").unwrap().spec.key;
    let other = b.path().join("other/objects/00").join("0".repeat(64));
    std::fs::create_dir_all(other.join("files/model")).unwrap();
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.object_dir(&model_key).join("meta.json")).unwrap())
            .unwrap();
    meta["key"] = serde_json::json!("0".repeat(64));
    std::fs::write(other.join("meta.json"), serde_json::to_vec(&meta).unwrap()).unwrap();
    let from = store.files_dir(&model_key).join("model");
    for f in std::fs::read_dir(&from).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, other.join("files/model").join(f.file_name().unwrap())).unwrap();
    }
    req.model = other.join("files/model").display().to_string();
    let err = goosepipe::app::score::score(&req).unwrap_err().to_string();
    assert!(
        err.contains("was made for base model") && err.contains(&model_key.hex()),
        "{err}"
    );
}

#[test]
fn interrupted_training_resumes_to_the_same_artifact() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for d in [a.path(), b.path()] {
        std::fs::write(d.join("micro.kdl"), MICRO).unwrap();
    }
    let (code, _) = run(a.path(), &CancelFlag::new());
    assert_eq!(code, 0);
    // Cancel the second store's run from a watcher thread once expert:shift has a
    // checkpoint in its work folder, then run again.
    let (store, plan) = store_and_plan(b.path());
    let key = plan.get("expert:shift").unwrap().spec.key;
    let ckpt = store.work_dir(&key).join("train-state.safetensors");
    let cancel = CancelFlag::new();
    let c2 = cancel.clone();
    let watcher = std::thread::spawn(move || {
        let t0 = std::time::Instant::now();
        while !ckpt.exists() && t0.elapsed().as_secs() < 120 {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        c2.cancel();
    });
    let (code, out) = run(b.path(), &cancel);
    watcher.join().unwrap();
    assert_eq!(code, 130, "{out}");
    assert!(
        !store.object_dir(&key).exists() && store.work_dir(&key).join("train-state.safetensors").exists()
    );
    let (code, out) = run(b.path(), &CancelFlag::new());
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        digests(a.path()),
        digests(b.path()),
        "resuming gives the same bytes as an uninterrupted run"
    );
}

/// The eval records which experts every module chose per routed method and task, and
/// `goosepipe report --plots` draws them (SVG with labels, PNG) with a score chart.
#[test]
fn report_draws_routing_heatmaps_and_score_charts() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("micro.kdl"), MICRO).unwrap();
    let (code, out) = run(t.path(), &CancelFlag::default());
    assert_eq!(code, 0, "{out}");
    let store = Store::open(t.path().join("store")).unwrap();
    let reg = goosepipe::steps::registry();
    let plan = goosepipe::app::load_plan(&t.path().join("micro.kdl"), &reg, &store.hash_cache()).unwrap();
    let eval = store.files_dir(&plan.get("eval:e").unwrap().spec.key);
    let routing: serde_json::Value =
        serde_json::from_slice(&std::fs::read(eval.join("routing.json")).unwrap()).unwrap();
    // Two experts, top-2: every token of every module picks both, once each.
    for method in ["phatgoose", "arrow"] {
        let modules = routing[method]["arrange"].as_object().unwrap();
        assert!(
            modules.contains_key("encoder.block.0.layer.0.SelfAttention.q"),
            "{method}"
        );
        for (name, m) in modules {
            let counts: Vec<u64> = m["counts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_u64().unwrap())
                .collect();
            let tokens = m["tokens"].as_u64().unwrap();
            assert!(tokens > 0, "{name}");
            assert_eq!(counts, vec![tokens, tokens], "{method} {name}");
        }
    }
    assert!(routing.get("merged").is_none() && routing.get("base").is_none());

    // A file where the plots' folder would go is named, not the folder below it.
    let in_the_way = t.path().join("a-file");
    std::fs::write(&in_the_way, "").unwrap();
    let err = goosepipe::app::report(
        &t.path().join("micro.kdl"),
        &t.path().join("store"),
        &reg,
        "md",
        Some(&in_the_way.join("plots")),
        &mut Vec::new(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "report --plots: {} is a regular file, not a folder; give a folder to draw the plots into",
            in_the_way.display()
        )
    );
    // A folder that cannot be made is named as given, before any table is printed
    // (it was named as its eval's subfolder, after them).
    let mut printed = Vec::new();
    let err = goosepipe::app::report(
        &t.path().join("micro.kdl"),
        &t.path().join("store"),
        &reg,
        "md",
        Some(std::path::Path::new("/proc/goosepipe-plots")),
        &mut printed,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("report --plots: /proc/goosepipe-plots: "),
        "{err}"
    );
    assert!(printed.is_empty());

    let plots = t.path().join("plots");
    let mut out = Vec::new();
    let code = goosepipe::app::report(
        &t.path().join("micro.kdl"),
        &t.path().join("store"),
        &reg,
        "md",
        Some(&plots),
        &mut out,
    )
    .unwrap();
    assert_eq!(code, 0);
    let svg = std::fs::read_to_string(plots.join("e/routing-phatgoose-arrange.svg")).unwrap();
    let labels = svg_texts(&svg);
    assert!(
        labels
            .iter()
            .any(|l| l == "encoder.block.0.layer.0.SelfAttention.q")
            && labels.iter().any(|l| l == "sort"),
        "labelled SVG: {labels:?}"
    );
    // With its scale, and each cell's share written in it (both experts take half of
    // every module's choices).
    assert!(
        labels.iter().any(|l| l == "share of the choices in the module:")
            && labels.iter().filter(|l| *l == "0.50").count() >= 2,
        "{labels:?}"
    );
    let png = std::fs::read(plots.join("e/routing-arrow-arrange-gen.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let bars = svg_texts(&std::fs::read_to_string(plots.join("e/scores.svg")).unwrap());
    assert!(
        bars.iter().any(|l| l == "phatgoose") && bars.iter().any(|l| l == "oracle"),
        "{bars:?}"
    );
    assert!(plots.join("e/scores.png").is_file());

    // Into the store's own folders: refused, nothing written there.
    let inside = t.path().join("store/objects");
    let err = goosepipe::app::report(
        &t.path().join("micro.kdl"),
        &t.path().join("store"),
        &reg,
        "md",
        Some(&inside),
        &mut Vec::new(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("report --plots: ")
            && err.to_string().contains("is inside the goosepipe store at"),
        "{err}"
    );
    assert!(!inside.join("e").exists());
}

/// The text labels of an SVG (what `<text>` elements hold).
fn svg_texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let body = &t[t.find('>')? + 1..];
            Some(body[..body.find("</text>")?].trim().to_string())
        })
        .collect()
}

/// A dataset whose examples only sometimes have answer choices (promptsource mixes
/// templates with and without them): validation scores the ones with choices by rank
/// classification and the others by generation, and training succeeds.
#[test]
fn an_expert_trains_on_data_that_mixes_choice_and_generation_examples() {
    let d = tempfile::tempdir().unwrap();
    let rows: String = (0..60)
        .map(|i| {
            let choices = if i % 2 == 0 { "[\"a b\", \"b a\"]" } else { "null" };
            format!("{{\"q\": \"reverse the order : b a {i}\", \"a\": \"a b\", \"c\": {choices}}}\n")
        })
        .collect();
    std::fs::write(d.path().join("mixed.jsonl"), rows).unwrap();
    let manifest = MICRO.replace(
        "dataset \"sort\" { synthetic task=\"sort\" format=\"choice\" examples=64; }",
        "dataset \"sort\" path=\"mixed.jsonl\" input-field=\"q\" target-field=\"a\" choices-field=\"c\"",
    );
    std::fs::write(d.path().join("micro.kdl"), manifest).unwrap();
    let (code, out) = run(d.path(), &CancelFlag::new());
    assert_eq!(code, 0, "{out}");
    let (store, plan) = store_and_plan(d.path());
    let k = plan.get("expert:sort").unwrap().spec.key;
    let metrics = std::fs::read_to_string(store.files_dir(&k).join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"val_metric\""), "{metrics}");
}

/// An eval scores at most `max-input-len` input tokens and `max-target-len` tokens of
/// a choice, cut as training cuts them: a task whose examples run on far past the
/// limits scores exactly as the same examples cut by hand (and one very long example
/// cannot take all memory).
#[test]
fn an_eval_cuts_inputs_and_choices_to_its_length_limits() {
    let d = tempfile::tempdir().unwrap();
    let tail = " c".repeat(3000);
    let (mut short, mut long) = (String::new(), String::new());
    for (i, (q, right, wrong)) in [
        ("sort : c a b d e f", "a b", "b a"),
        ("sort : d c b a e f", "b a", "a b"),
        ("shift : a b c d e f", "b c", "c b"),
        ("shift : b a c d e f", "c b", "b c"),
    ]
    .iter()
    .enumerate()
    {
        // Short: 6 words (+ EOS = 7 tokens), choices of 2 words (+ EOS = 3).
        short += &format!(
            "{{\"input\": \"{q}\", \"target\": \"{right}\", \"choices\": [\"{right}\", \"{wrong}\"]}}\n"
        );
        let long_right = if i % 2 == 0 {
            format!("{right}{tail}")
        } else {
            right.to_string()
        };
        long += &format!(
            "{{\"input\": \"{q}{tail}\", \"target\": \"{long_right}\", \"choices\": [\"{long_right}\", \"{wrong}{tail}\"]}}\n"
        );
    }
    std::fs::write(d.path().join("short.jsonl"), short).unwrap();
    std::fs::write(d.path().join("long.jsonl"), long).unwrap();
    let manifest = MICRO
        .replace(
            "dataset \"arrange\" split=\"test\" { synthetic task=\"arrange\" format=\"choice\" examples=16 seed=5; }",
            "dataset \"short\" path=\"short.jsonl\" split=\"test\"\ndataset \"long\" path=\"long.jsonl\" split=\"test\"",
        )
        .replace(
            "eval \"e\" pool=\"p\" {\n    methods \"phatgoose\" \"base\" \"merged\" \"arrow\" \"multitask\" \"expert:sort\" \"best-individual\" \"oracle\"\n    task \"arrange\" dataset=\"arrange\"\n    task \"arrange-gen\" dataset=\"arrange\" metric=\"exact-match\" max-new-tokens=6",
            "eval \"e\" pool=\"p\" max-input-len=7 max-target-len=3 {\n    methods \"phatgoose\" \"base\" \"expert:sort\"\n    task \"short\" dataset=\"short\"\n    task \"long\" dataset=\"long\"",
        );
    assert!(manifest.contains("max-input-len="), "{manifest}");
    std::fs::write(d.path().join("micro.kdl"), manifest).unwrap();
    let (code, out) = run(d.path(), &CancelFlag::new());
    assert_eq!(code, 0, "{out}");
    let (store, plan) = store_and_plan(d.path());
    let k = plan.get("eval:e").unwrap().spec.key;
    let per: BTreeMap<String, BTreeMap<String, Vec<f64>>> =
        serde_json::from_slice(&std::fs::read(store.files_dir(&k).join("per-example.json")).unwrap())
            .unwrap();
    for (method, tasks) in &per {
        assert_eq!(tasks["long"], tasks["short"], "{method}: {tasks:?}");
        assert_eq!(tasks["long"].len(), 4);
    }
    assert_eq!(per.len(), 3, "{per:?}");
}

/// Targets longer than `max-target-len` are cut for training, and the step says so;
/// the validation metric that picks the checkpoint scores answers against the whole
/// target, so a model that learnt the cut answer is not scored 100 (it was: the
/// metric compared with the cut targets, while the eval then gave 0).
#[test]
fn cut_targets_are_said_and_never_scored_as_right_answers() {
    let d = tempfile::tempdir().unwrap();
    let rows: String = (0..64)
        .map(|i| {
            format!(
                "{{\"q\": \"sort alphabetically : d c b a {}\", \"a\": \"a b c d\"}}\n",
                ["a", "b", "c", "d"][i % 4]
            )
        })
        .collect();
    std::fs::write(d.path().join("long.jsonl"), rows).unwrap();
    let manifest = MICRO
        .replace(
            "dataset \"sort\" { synthetic task=\"sort\" format=\"choice\" examples=64; }",
            "dataset \"sort\" path=\"long.jsonl\" input-field=\"q\" target-field=\"a\"",
        )
        .replace(
            "expert \"sort\" model=\"t\" dataset=\"sort\"",
            "expert \"sort\" model=\"t\" dataset=\"sort\" { train steps=40 lr=0.05 max-target-len=3 eval-every=40; }",
        );
    std::fs::write(d.path().join("micro.kdl"), manifest).unwrap();
    // The binary: a step's warnings go to the run's log on stderr.
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_goosepipe"))
        .args(["run", "micro.kdl", "--store", "store", "--until", "expert:sort"])
        .current_dir(d.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&run.stderr).to_string() + &String::from_utf8_lossy(&run.stdout);
    let code = run.status.code().unwrap_or(-1);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("expert:sort: warning: 58 of 58 training targets are longer than max-target-len=3 tokens (the longest has 5, EOS included) and are cut"),
        "{out}"
    );
    // Kept with the expert: `show` says it to whoever finds it in the store later.
    let show = std::process::Command::new(env!("CARGO_BIN_EXE_goosepipe"))
        .args(["show", "expert:sort", "--store", "store"])
        .current_dir(d.path())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&show.stdout);
    assert!(
        shown.contains("warning  58 of 58 training targets are longer than max-target-len=3 tokens"),
        "{shown}"
    );
    let (store, plan) = store_and_plan(d.path());
    let k = plan.get("expert:sort").unwrap().spec.key;
    let metrics = std::fs::read_to_string(store.files_dir(&k).join("metrics.jsonl")).unwrap();
    let last = metrics.lines().rfind(|l| l.contains("\"val_metric\"")).unwrap();
    let row: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(row["val_metric"].as_f64(), Some(0.0), "{metrics}");
    assert!(
        row["val_loss"].as_f64().unwrap() < 0.5,
        "the cut answer was learnt: {metrics}"
    );
}

/// A batch that asks for more examples than the dataset has trains each step on all of
/// them, a smaller batch than the manifest says: the run says so, and `show` keeps it.
#[test]
fn a_batch_above_the_training_examples_is_said() {
    let d = tempfile::tempdir().unwrap();
    let manifest = MICRO.replace(
        "expert \"sort\" model=\"t\" dataset=\"sort\"",
        "expert \"sort\" model=\"t\" dataset=\"sort\" { train steps=2 batch=100 micro-batch=100 eval-every=2; }",
    );
    std::fs::write(d.path().join("micro.kdl"), manifest).unwrap();
    let goosepipe = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_goosepipe"))
            .args(args)
            .current_dir(d.path())
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout)
    };
    let said = "`train batch` is 100, more than the 64 training examples: each step trains on 64 sequences; set it to at most 64 (and `train micro-batch` at most that)";
    let out = goosepipe(&["run", "micro.kdl", "--store", "store", "--until", "expert:sort"]);
    assert!(out.contains(&format!("expert:sort: warning: {said}")), "{out}");
    // The pretraining (batch 8 of a 200-row corpus) and the other expert say nothing.
    assert_eq!(out.matches("more than the").count(), 1, "{out}");
    let shown = goosepipe(&["show", "expert:sort", "--store", "store"]);
    assert!(shown.contains(said), "{shown}");
}
