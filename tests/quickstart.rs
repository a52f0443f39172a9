//! The CPU quickstart end to end, as a new user runs it: every step really trains
//! and evaluates. Asserts that experts learn their own task (beating the base by a
//! wide margin), that the routers send held-in tokens to their own expert more than
//! chance, that the results table has every method, that a second run does nothing,
//! and that adding one expert runs exactly its steps, the pool and the evals.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use goosepipe::artifact_files::{QUALITY_JSON, RESULTS_JSON};
use goosepipe::eval::Results;
use goosepipe::eval::routing_quality::RoutingQuality;
use goosepipe::exec::{CancelFlag, RunOptions};
use goosepipe::store::Store;

fn run(manifest: &Path, store: &Path) -> (i32, String) {
    let reg = goosepipe::steps::registry();
    let mut out = Vec::new();
    let code = goosepipe::app::run(
        manifest,
        store,
        &reg,
        &RunOptions::default(),
        true,
        &CancelFlag::new(),
        &mut out,
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    (code, String::from_utf8(out).unwrap())
}

fn stale(manifest: &Path, store: &Path) -> BTreeSet<String> {
    let reg = goosepipe::steps::registry();
    let s = Store::open(store).unwrap();
    let plan = goosepipe::app::load_plan(manifest, &reg, &s.hash_cache()).unwrap();
    let lock =
        goosepipe::store::lockfile::Lockfile::read(&goosepipe::store::lockfile::lock_path(manifest)).unwrap();
    let status = goosepipe::plan::status::status(&plan, &s, &lock);
    status.stale_ids(&plan).into_iter().map(String::from).collect()
}

/// A JSON file of a step's published artifact.
fn artifact_json<T: serde::de::DeserializeOwned>(manifest: &Path, store: &Path, step: &str, file: &str) -> T {
    let reg = goosepipe::steps::registry();
    let s = Store::open(store).unwrap();
    let plan = goosepipe::app::load_plan(manifest, &reg, &s.hash_cache()).unwrap();
    let key = plan.get(step).unwrap().spec.key;
    serde_json::from_slice(&std::fs::read(s.files_dir(&key).join(file)).unwrap()).unwrap()
}

fn results(manifest: &Path, store: &Path, eval: &str) -> Results {
    artifact_json(manifest, store, eval, RESULTS_JSON)
}

#[test]
fn quickstart_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let manifest: PathBuf = dir.path().join("quickstart.kdl");
    let text = std::fs::read_to_string("pipelines/quickstart.kdl").unwrap();
    std::fs::write(&manifest, &text).unwrap();
    let store = dir.path().join("store");

    let (code, out) = run(&manifest, &store);
    assert_eq!(code, 0, "{out}");
    // The run ends with the results tables, and says what `report` adds: with tasks
    // that name their experts, the held-in comparison and routing quality.
    assert!(
        out.contains("### held-out")
            && out.contains(
                "| task | phatgoose | base | merged | arrow | average-activation | retrieval | multitask | best-individual | oracle |"
            )
            && out.contains("adds each method's held-in mean against the own experts', routing quality and gate correlation)"),
        "{out}"
    );

    // Every expert beats the base on its own task by a wide margin (15 points).
    let held_in = results(&manifest, &store, "eval:held-in");
    for task in ["sort", "shift", "every-other", "count", "reverse", "dedup"] {
        let row = &held_in.scores[task];
        let (expert, base) = (row[&format!("expert:{task}")], row["base"]);
        assert!(
            expert >= base + 0.15,
            "expert {task}: {expert:.3} vs base {base:.3}\n{}",
            held_in.markdown("held-in")
        );
    }
    // The routers send a held-in task's tokens to its own expert more than chance (1/6
    // of the weight with six experts): on this suite PHATGOOSE gives the owner 0.24 and
    // average activation 0.34 (pipelines/README.md); a broken score, top-k or
    // renormalisation falls to chance. Average activation, whose router vectors are the
    // experts' mean inputs, sends most of a task's own instruction words to its expert.
    let quality: RoutingQuality = artifact_json(&manifest, &store, "eval:held-in", QUALITY_JSON);
    type Field = fn(&goosepipe::eval::routing_quality::OwnRouting) -> f64;
    let share: Field = |r| r.share;
    let distinct_share: Field = |r| {
        r.distinct_share
            .expect("every quickstart task has tokens of its own")
    };
    let chance = 1.0 / 6.0;
    for (method, field, name, above) in [
        ("phatgoose", share, "share", chance + 0.04),
        ("average-activation", share, "share", chance + 0.1),
        ("average-activation", distinct_share, "distinct share", 0.5),
    ] {
        let tasks = quality
            .own
            .get(method)
            .unwrap_or_else(|| panic!("no {method}: {quality:?}"));
        let got = tasks.values().map(field).sum::<f64>() / tasks.len() as f64;
        assert!(
            got > above,
            "{method} {name}: {got:.3}, not above {above:.3}\n{quality:?}"
        );
    }

    // Every method has a score on every held-out task.
    let held_out = results(&manifest, &store, "eval:held-out");
    for t in &held_out.tasks {
        for m in &held_out.methods {
            assert!(held_out.scores[t].contains_key(m), "no {m} score for {t}");
        }
    }

    // A second run does nothing.
    assert!(stale(&manifest, &store).is_empty());
    let (code, out) = run(&manifest, &store);
    assert_eq!(code, 0);
    assert!(out.starts_with("nothing to do"), "{out}");

    // Adding one expert trains exactly that expert, its gate and its average
    // activations (its retrieval library is the one of its dataset, already built),
    // then re-evaluates.
    let grown = text
        .replace(
            "expert \"count\" model=\"tiny-t5\" dataset=\"count\"",
            "expert \"count\" model=\"tiny-t5\" dataset=\"count\"\nexpert \"sort-small\" model=\"tiny-t5\" dataset=\"sort\" {\n    train seed=7\n}",
        )
        .replace("\"every-other\" \"count\"\n}", "\"every-other\" \"count\" \"sort-small\"\n}");
    assert_ne!(grown, text);
    std::fs::write(&manifest, &grown).unwrap();
    let expected: BTreeSet<String> = [
        "expert:sort-small",
        "gate:sort-small",
        "average-activation:sort-small",
        "pool:held-in",
        "eval:held-out",
        "eval:held-in",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(stale(&manifest, &store), expected);
    let (code, out) = run(&manifest, &store);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("done: 6 step(s) built"), "{out}");
    assert!(stale(&manifest, &store).is_empty());
}
