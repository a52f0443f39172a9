//! Studies end to end on a micro suite: two seeds of experts and gates, an eval per
//! seed, a study that ranks the methods with bootstrap intervals; the routing-quality
//! record of tasks whose owner is inferred; replicates that do not match are refused.

use std::path::Path;

use goosepipe::exec::{CancelFlag, RunOptions};
use goosepipe::store::Store;

fn manifest(second_tasks: &str) -> String {
    let mut m = String::from(
        r#"
pipeline "micro-study"
dataset "corpus" { synthetic task="corpus" examples=200 seed=1; }
model "t" {
    init corpus="corpus" d-model=16 d-ff=32 d-kv=8 heads=2 layers=1 seed=3 pretrain-steps=12 batch=8
}
defaults {
    lora rank=4
    train steps=8 batch=8 micro-batch=8 eval-every=4 eval-examples=8 checkpoint-every=4
    gate steps=3 batch=8 micro-batch=8
}
dataset "sort" { synthetic task="sort" format="choice" examples=48; }
dataset "shift" { synthetic task="shift" format="choice" examples=48; }
dataset "arrange" split="test" { synthetic task="arrange" format="choice" examples=24 seed=5; }
"#,
    );
    for s in [1, 2] {
        m.push_str(&format!(
            "expert \"sort-{s}\" model=\"t\" dataset=\"sort\" {{ train seed={s}; gate seed={s}; }}\n\
             expert \"shift-{s}\" model=\"t\" dataset=\"shift\" {{ train seed={s}; gate seed={s}; }}\n\
             pool \"p{s}\" {{ experts \"sort-{s}\" \"shift-{s}\"; }}\n"
        ));
    }
    m.push_str(
        r#"
eval "e1" pool="p1" {
    methods "phatgoose" "base" "merged" "arrow" "oracle"
    task "sort" dataset="sort"
    task "arrange" dataset="arrange"
}
"#,
    );
    m.push_str(&format!(
        "eval \"e2\" pool=\"p2\" {{\n    methods \"phatgoose\" \"base\" \"merged\" \"arrow\" \"oracle\"\n{second_tasks}}}\n"
    ));
    m.push_str("study \"z\" { evals \"e1\" \"e2\"; }\n");
    m
}

const SAME: &str = "    task \"sort\" dataset=\"sort\"\n    task \"arrange\" dataset=\"arrange\"\n";

fn run(dir: &Path) -> (i32, String) {
    let reg = goosepipe::steps::registry();
    let mut out = Vec::new();
    let code = goosepipe::app::run(
        &dir.join("m.kdl"),
        &dir.join("store"),
        &reg,
        &RunOptions::default(),
        true,
        &CancelFlag::new(),
        &mut out,
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    (code, String::from_utf8(out).unwrap())
}

#[test]
fn a_study_ranks_methods_with_intervals_and_the_report_prints_it() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("m.kdl"), manifest(SAME)).unwrap();
    let (code, out) = run(d.path());
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("### study z: 2 replicates (e1, e2), 2 tasks"),
        "{out}"
    );
    assert!(
        out.contains("| phatgoose minus | difference | 95% interval |"),
        "{out}"
    );

    let store = Store::open(d.path().join("store")).unwrap();
    let reg = goosepipe::steps::registry();
    let plan = goosepipe::app::load_plan(&d.path().join("m.kdl"), &reg, &store.hash_cache()).unwrap();
    let files = |id: &str| store.files_dir(&plan.get(id).unwrap().spec.key);
    let study: serde_json::Value =
        serde_json::from_slice(&std::fs::read(files("study:z").join("study.json")).unwrap()).unwrap();
    for m in ["phatgoose", "base", "merged", "arrow", "oracle"] {
        let i = &study["methods"][m];
        let (mean, lo, hi) = (
            i["mean"].as_f64().unwrap(),
            i["lo"].as_f64().unwrap(),
            i["hi"].as_f64().unwrap(),
        );
        assert!(lo <= mean && mean <= hi, "{m}: {i}");
        assert_eq!(study["per_replicate"][m].as_array().unwrap().len(), 2);
    }
    assert_eq!(study["differences"].as_object().unwrap().len(), 4);
    // The base is one artifact for both replicates: noted, as its interval is over
    // the examples alone; the routed methods vary with the seeds, and are not.
    assert!(
        study["notes"]["base"]
            .as_str()
            .is_some_and(|n| n.contains(goosepipe::eval::study::SAME_IN_EVERY_REPLICATE)),
        "{study}"
    );
    assert!(
        !study["notes"]["phatgoose"]
            .as_str()
            .unwrap_or_default()
            .contains(goosepipe::eval::study::SAME_IN_EVERY_REPLICATE),
        "{study}"
    );
    assert_eq!(study["examples"]["arrange"], 24);

    // Per-example scores: one per example and method, the mean is the table's score.
    let per: serde_json::Value =
        serde_json::from_slice(&std::fs::read(files("eval:e1").join("per-example.json")).unwrap()).unwrap();
    let results: goosepipe::eval::Results =
        serde_json::from_slice(&std::fs::read(files("eval:e1").join("results.json")).unwrap()).unwrap();
    let rows: Vec<f64> = serde_json::from_value(per["phatgoose"]["arrange"].clone()).unwrap();
    assert_eq!(rows.len(), 24);
    let mean = rows.iter().sum::<f64>() / 24.0;
    assert!((mean - results.scores["arrange"]["phatgoose"]).abs() < 1e-12);

    // The "sort" task reads expert sort-1's own training data: its owner is inferred,
    // and the routing-quality record says how much routing it gets.
    let q: serde_json::Value =
        serde_json::from_slice(&std::fs::read(files("eval:e1").join("routing-quality.json")).unwrap())
            .unwrap();
    let own = &q["own"]["phatgoose"]["sort"];
    assert_eq!(own["expert"], "sort-1");
    let share = own["share"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&share), "{own}");
    assert!(
        q["own"]["phatgoose"].get("arrange").is_none(),
        "no owner for a held-out task"
    );
    assert_eq!(q["gates"]["experts"], 2);

    let mut rep = Vec::new();
    goosepipe::app::report(
        &d.path().join("m.kdl"),
        &d.path().join("store"),
        &reg,
        "md",
        None,
        &mut rep,
    )
    .unwrap();
    let rep = String::from_utf8(rep).unwrap();
    assert!(
        rep.contains("### study z") && rep.contains("routing to each task's own expert"),
        "{rep}"
    );
    // The study's rows in the manifest's task order, as the evals' tables.
    assert!(rep.contains("| method | sort | arrange |"), "{rep}");

    // CSV: the study's records after the evals', under the one header, each mean and
    // difference with the interval the markdown shows.
    let mut csv = Vec::new();
    goosepipe::app::report(
        &d.path().join("m.kdl"),
        &d.path().join("store"),
        &reg,
        "csv",
        None,
        &mut csv,
    )
    .unwrap();
    let csv = String::from_utf8(csv).unwrap();
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    assert_eq!(
        reader.headers().unwrap().iter().collect::<Vec<_>>(),
        [
            "step", "task", "metric", "method", "score", "current", "examples", "lo", "hi"
        ]
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    let study_rows: Vec<&csv::StringRecord> = rows.iter().filter(|r| &r[0] == "study:z").collect();
    // 5 methods x 2 tasks, 5 means, 4 differences.
    assert_eq!(study_rows.len(), 19, "{csv}");
    let f = |r: &csv::StringRecord, i: usize| r[i].parse::<f64>().unwrap();
    for m in ["phatgoose", "base", "merged", "arrow", "oracle"] {
        let mean = study_rows
            .iter()
            .find(|r| &r[1] == "mean" && &r[2] == "mean over tasks and replicates" && &r[3] == m)
            .unwrap_or_else(|| panic!("{m}: {csv}"));
        let i = &study["methods"][m];
        assert!((f(mean, 4) - i["mean"].as_f64().unwrap()).abs() < 1e-6, "{csv}");
        assert!((f(mean, 7) - i["lo"].as_f64().unwrap()).abs() < 1e-6, "{csv}");
        assert!((f(mean, 8) - i["hi"].as_f64().unwrap()).abs() < 1e-6, "{csv}");
        let total: u64 = study["examples"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum();
        assert_eq!(mean[6], total.to_string(), "{csv}");
        let per_task = study_rows
            .iter()
            .find(|r| &r[1] == "arrange" && &r[2] == "mean over replicates" && &r[3] == m)
            .unwrap();
        assert!((f(per_task, 4) - study["per_task"][m]["arrange"].as_f64().unwrap()).abs() < 1e-6);
        assert_eq!((&per_task[6], &per_task[7], &per_task[8]), ("24", "", ""));
        let diff = study_rows
            .iter()
            .find(|r| &r[2] == "phatgoose minus" && &r[3] == m);
        match study["differences"].get(m) {
            Some(d) => {
                let diff = diff.unwrap_or_else(|| panic!("{m}: {csv}"));
                assert!((f(diff, 4) - d["mean"].as_f64().unwrap()).abs() < 1e-6, "{csv}");
                assert!(f(diff, 7) <= f(diff, 4) && f(diff, 4) <= f(diff, 8), "{csv}");
            }
            None => assert!(diff.is_none(), "{csv}"),
        }
    }
    // Tasks in the manifest's order, as the markdown (the artifact sorts them).
    let tasks: Vec<&str> = study_rows
        .iter()
        .map(|r| &r[1])
        .filter(|t| *t != "mean")
        .collect();
    assert_eq!(tasks.first(), Some(&"sort"), "{csv}");
    assert_eq!(tasks.last(), Some(&"arrange"), "{csv}");
    // The evals' records leave the interval empty.
    assert!(
        rows.iter()
            .filter(|r| &r[0] == "eval:e1")
            .all(|r| r[7].is_empty() && r[8].is_empty())
    );
}

#[test]
fn a_study_of_evals_that_are_not_replicates_is_refused() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("m.kdl"),
        manifest("    task \"arrange\" dataset=\"arrange\"\n"),
    )
    .unwrap();
    let err = goosepipe::manifest::load(&d.path().join("m.kdl"))
        .map(|m| {
            goosepipe::plan::build(
                m,
                &goosepipe::steps::registry(),
                &goosepipe::store::HashCache::in_memory(),
            )
            .map(|_| ())
        })
        .unwrap()
        .unwrap_err();
    assert_eq!(err.codes(), vec!["manifest::study-mismatch"]);
    assert!(
        err.errors[0]
            .message
            .contains("eval \"e2\" is not a replicate of eval \"e1\"")
    );
    // The help names the difference, not both designs whole.
    let help = err.errors[0].help.clone().unwrap_or_default();
    assert!(
        help.ends_with("against \"e1\", \"e2\" lacks task \"sort\""),
        "{help}"
    );

    // A task on other data, and a method left out, are named as such.
    let refused = |text: String| {
        std::fs::write(d.path().join("m.kdl"), text).unwrap();
        let err = goosepipe::plan::load(
            &d.path().join("m.kdl"),
            &goosepipe::steps::registry(),
            &goosepipe::store::HashCache::in_memory(),
        )
        .unwrap_err();
        assert_eq!(err.codes(), vec!["manifest::study-mismatch"], "{err:?}");
        err.errors[0].help.clone().unwrap_or_default()
    };
    let help = refused(
        manifest("    task \"arrange\" dataset=\"arrange\"\n    task \"sort\" dataset=\"shift\"\n").replacen(
            "eval \"e2\" pool=\"p2\" {\n    methods \"phatgoose\" \"base\" \"merged\" \"arrow\" \"oracle\"",
            "eval \"e2\" pool=\"p2\" {\n    methods \"phatgoose\" \"base\" \"merged\" \"oracle\"",
            1,
        ),
    );
    assert!(
        help.ends_with(
            "\"e2\" has task sort=shift/rank-classification (dataset/metric) where it has sort=sort/rank-classification; has methods phatgoose, base, merged, oracle where it has phatgoose, base, merged, arrow, oracle"
        ),
        "{help}"
    );

    // Another top-k, and a pool of another size: another method, not a replicate
    // (both passed).
    let help = refused(manifest(&format!("    routing top-k=1\n{SAME}")).replacen(
        "pool \"p2\" { experts \"sort-2\" \"shift-2\"; }",
        "pool \"p2\" { experts \"sort-2\"; }",
        1,
    ));
    assert!(
        help.contains("\"e2\" routes with ")
            && help.contains("top-k=1")
            && help.contains("top-k=2")
            && help.ends_with("reads a pool of 1 experts (not 2)"),
        "{help}"
    );
}
