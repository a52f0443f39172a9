//! Early cutoff (`pipeline ... early-cutoff=#true`): a dataset rebuilt with the same
//! output leaves everything that reads it cached; an output that changed rebuilds
//! exactly what reads it; the lockfile pins outputs so a fresh store plans exact keys;
//! a pinned output that a build does not reproduce never publishes under a wrong key.

use crate::support;

use goosepipe::exec::RunOptions;
use goosepipe::store::lockfile::{Lockfile, lock_path};
use support::{BASE, Behaviour, Log, Project, registry, registry_with_versions, run_manifest};

/// BASE with dataset "a" read from a local file, and early cutoff on or off.
fn manifest(early_cutoff: bool) -> String {
    let m = BASE.replace(
        "dataset \"a\" hub=\"org/data\" config=\"a\"",
        "dataset \"a\" path=\"data/a.jsonl\"",
    );
    if early_cutoff {
        m.replace(
            "pipeline \"engine-test\"",
            "pipeline \"engine-test\" early-cutoff=#true",
        )
    } else {
        m
    }
}

fn cutoff() -> String {
    manifest(true)
}

fn project(text: &str) -> Project {
    let p = Project::new(text);
    p.file("data/a.jsonl", "{\"input\": \"x\", \"target\": \"y\"}\n");
    p
}

/// The data file saved again with other formatting: a new key for dataset "a", and
/// the same rows (the fake dataset step writes what its parameters say, as the real
/// one writes the same examples).
fn save_again(p: &Project) {
    p.file("data/a.jsonl", "{\"target\":\"y\",\"input\":\"x\"}\n");
}

fn ids(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

const DATASETS: [&str; 3] = ["dataset:a", "dataset:b", "dataset:heldout"];

/// What reads dataset "a", directly or not, and the dataset itself.
const DATASET_A_AND_AFTER: [&str; 6] = [
    "dataset:a",
    "tokenize:a",
    "expert:a",
    "gate:a",
    "pool:p",
    "eval:e",
];

/// What a --keep-going run builds when dataset "b" fails: all that does not read it.
const BUILT_DESPITE_B: [&str; 7] = [
    "dataset:a",
    "dataset:b",
    "dataset:heldout",
    "model:base",
    "tokenize:a",
    "expert:a",
    "gate:a",
];

/// Edits the project's lockfile as a hand (or another build) would.
fn edit_lock(p: &Project, edit: impl FnOnce(&mut Lockfile)) {
    let path = lock_path(&p.manifest());
    let mut lock = Lockfile::read(&path).unwrap();
    edit(&mut lock);
    lock.write(&path, "pipeline.kdl").unwrap();
}

/// A project whose every step is built (the log emptied), with the fakes' registry.
fn built(early_cutoff: bool) -> (Log, goosepipe::exec::Registry, Project) {
    let log = Log::default();
    let reg = registry(&log, &Behaviour::default());
    let p = project(&manifest(early_cutoff));
    let (code, out) = p.run(&reg, &RunOptions::default());
    assert_eq!(code, 0, "{out}");
    assert_eq!(log.take().len(), 12, "{out}");
    (log, reg, p)
}

#[test]
fn before_its_datasets_are_built_a_step_waits_for_them_and_says_so() {
    let log = Log::default();
    let reg = registry(&log, &Behaviour::default());
    let p = project(&cutoff());
    let (plan, status) = p.status(&reg);
    assert_eq!(plan.get("tokenize:a").unwrap().waits_for, ids(&["dataset:a"]));
    assert_eq!(plan.get("eval:e").unwrap().waits_for, ids(&DATASETS));
    assert!(plan.get("dataset:a").unwrap().waits_for.is_empty());
    assert!(plan.get("model:base").unwrap().waits_for.is_empty());
    let text = goosepipe::plan::render::plan_text(&plan, &status);
    let line = text
        .lines()
        .find(|l| l.contains("tokenize") && l.contains(" a "))
        .unwrap();
    assert!(line.contains("pending"), "{line}");
    assert!(
        line.contains("its key is computed from the output of dataset:a, not built yet (early cutoff)"),
        "{line}"
    );
    assert!(
        text.contains("early cutoff: 8 step(s) wait for datasets"),
        "{text}"
    );
    // explain names a waiting input's key as pending too.
    let explained = goosepipe::plan::render::explain(&plan, &status, plan.index["expert:a"]);
    assert!(explained.contains("tokenize:a pending"), "{explained}");
    let json = goosepipe::plan::render::plan_json(&plan, &status, &p.store());
    let eval = json["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "eval:e")
        .unwrap();
    assert_eq!(eval["waits_for"], serde_json::json!(DATASETS));
    // A provisional key is no key: null, in the step and where it is an input.
    assert!(eval["key"].is_null() && eval["short_key"].is_null(), "{eval}");
    let pool = eval["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["role"] == "pool")
        .unwrap();
    assert!(pool["key"].is_null(), "{eval}");
    let dataset = json["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "dataset:a")
        .unwrap();
    assert!(dataset["key"].is_string(), "{dataset}");
    // No executor is given a waiting step; the run wants it all the same.
    let opts = RunOptions::default();
    let selected = goosepipe::exec::run::select(&plan, &status, &opts).unwrap();
    let wanted = goosepipe::exec::run::wanted(&plan, &status, &opts).unwrap();
    assert!(selected.iter().all(|&i| plan.steps[i].waits_for.is_empty()));
    assert_eq!(wanted.len(), 12);
    assert_eq!(selected.len(), 4, "three datasets and the model");

    // The run builds the datasets, plans again, then builds the rest: every step once.
    let (code, out) = p.run(&reg, &RunOptions::default());
    assert_eq!(code, 0, "{out}");
    assert_eq!(log.take().len(), 12, "{out}");
    let (plan, status) = p.status(&reg);
    assert!(!plan.waits());
    assert_eq!(status.stale_count(), 0);
    // The lockfile pins each dataset's content, and nothing else's.
    let lock = Lockfile::read(&lock_path(&p.manifest())).unwrap();
    for (id, l) in &lock.steps {
        assert_eq!(l.content.is_some(), id.starts_with("dataset:"), "{id}");
    }
}

#[test]
fn a_dataset_rebuilt_with_the_same_rows_leaves_what_reads_it_cached() {
    let (log, reg, p) = built(true);

    save_again(&p);
    // Until it is built, plan cannot know: what reads it waits.
    assert_eq!(p.stale(&reg), ids(&DATASET_A_AND_AFTER));
    let (code, out) = p.run(&reg, &RunOptions::default());
    assert_eq!(code, 0, "{out}");
    assert_eq!(log.take(), ids(&["dataset:a"]), "{out}");
    assert!(out.contains("done: 1 step(s) built, 11 cached"), "{out}");
    assert!(p.stale(&reg).is_empty());
    let (code, out) = p.run(&reg, &RunOptions::default());
    assert_eq!(code, 0);
    assert!(out.contains("nothing to do"), "{out}");
}

#[test]
fn without_early_cutoff_the_same_edit_rebuilds_everything_after_the_dataset() {
    let (log, reg, p) = built(false);
    save_again(&p);
    assert_eq!(p.run(&reg, &RunOptions::default()).0, 0);
    assert_eq!(log.take(), ids(&DATASET_A_AND_AFTER));
}

#[test]
fn a_dataset_whose_rows_changed_rebuilds_exactly_what_reads_it() {
    let (log, reg, p) = built(true);
    // Another field mapping: the fake step's output changes with its parameters.
    p.write(&cutoff().replace(
        "path=\"data/a.jsonl\"",
        "path=\"data/a.jsonl\" input-field=\"text\"",
    ));
    let (code, out) = p.run(&reg, &RunOptions::default());
    assert_eq!(code, 0, "{out}");
    assert_eq!(log.take(), ids(&DATASET_A_AND_AFTER));
}

#[test]
fn a_new_dataset_step_version_rebuilds_only_the_datasets() {
    let (log, _, p) = built(true);
    let version = goosepipe::steps::KINDS
        .iter()
        .find(|k| k.name == "dataset")
        .unwrap()
        .version;
    let bumped = registry_with_versions(&log, &Behaviour::default(), &[("dataset", version + 1)]);
    let (code, out) = p.run(&bumped, &RunOptions::default());
    assert_eq!(code, 0, "{out}");
    assert_eq!(log.take(), ids(&DATASETS), "{out}");
}

#[test]
fn with_the_lockfile_a_fresh_store_plans_exact_keys_and_reproduces_them_locked() {
    let (log, reg, p) = built(true);
    let (built, _) = p.status(&reg);
    let fresh = p.dir.path().join("fresh-store");
    // The lockfile pins every dataset's output: nothing waits, every key is known.
    let (plan, status) = p.status_in(&reg, &fresh);
    assert!(!plan.waits());
    for (a, b) in built.steps.iter().zip(&plan.steps) {
        assert_eq!(a.spec.key, b.spec.key, "{}", a.spec.id);
    }
    assert_eq!(status.stale_count(), 12);
    let locked = RunOptions {
        locked: true,
        ..RunOptions::default()
    };
    let (code, out) = run_manifest(
        &p.manifest(),
        &fresh,
        &reg,
        &locked,
        &goosepipe::exec::CancelFlag::new(),
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(log.take().len(), 12);
}

#[test]
fn a_pinned_output_the_build_does_not_reproduce_stops_its_readers() {
    let (log, reg, p) = built(true);
    // A lockfile that pins another output for dataset:a (written by a build that
    // made other rows), and a store that has not built it.
    edit_lock(&p, |lock| {
        lock.steps.get_mut("dataset:a").unwrap().content = Some("0".repeat(64))
    });
    let fresh = p.dir.path().join("fresh-store");
    let run = |opts: &RunOptions| {
        run_manifest(
            &p.manifest(),
            &fresh,
            &reg,
            opts,
            &goosepipe::exec::CancelFlag::new(),
        )
    };
    let (code, out) = run(&RunOptions {
        until: Some("tokenize:a".into()),
        ..RunOptions::default()
    });
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("tokenize:a: dataset:a was built with content")
            && out.contains(
                "but this step's key was computed from content 000000000000 (what the lockfile pinned"
            ),
        "{out}"
    );
    // Nothing was published under the key the pin gave; the dataset was. The next
    // run keys on the output that was built.
    assert_eq!(log.take(), ids(&["dataset:a", "model:base"]));
    let (code, out) = run(&RunOptions::default());
    assert_eq!(code, 0, "{out}");
    let rerun = log.take();
    assert!(
        rerun.contains(&"tokenize:a".to_string()) && !rerun.contains(&"dataset:a".to_string()),
        "{rerun:?}"
    );
}

#[test]
fn the_dataset_step_gives_one_content_for_the_same_rows_from_another_file() {
    let rows = |sep: &str| -> String {
        (0..40)
            .map(|i| format!("{{\"input\":{sep}\"question {i}\",{sep}\"target\":{sep}\"answer {i}\"}}\n"))
            .collect()
    };
    let text =
        |file: &str| format!("pipeline \"d\" early-cutoff=#true\ndataset \"a\" path=\"data/{file}\"\n");
    let p = Project::new(&text("a.jsonl"));
    p.file("data/a.jsonl", &rows(""));
    let pinned = |p: &Project| {
        let lock = Lockfile::read(&lock_path(&p.manifest())).unwrap();
        let l = lock.steps["dataset:a"].clone();
        (l.digest.unwrap(), l.content.unwrap())
    };
    let (code, out) = support::run_product(&p.manifest(), &p.store());
    assert_eq!(code, 0, "{out}");
    let (digest, content) = pinned(&p);
    // The same rows, spaced otherwise, in a file of another name: the artifact
    // differs (its provenance names the file), its content does not.
    p.file("data/b.jsonl", &rows(" "));
    p.write(&text("b.jsonl"));
    let (code, out) = support::run_product(&p.manifest(), &p.store());
    assert_eq!(code, 0, "{out}");
    let (digest2, content2) = pinned(&p);
    assert_ne!(digest, digest2);
    assert_eq!(content, content2);
}

#[test]
fn keep_going_builds_what_a_failed_dataset_does_not_hold_up_and_names_the_rest() {
    let log = Log::default();
    let fails = Behaviour {
        fail: vec!["dataset:b".into()],
        ..Behaviour::default()
    };
    let reg = registry(&log, &fails);
    let p = project(&cutoff());
    let (code, out) = p.run(
        &reg,
        &RunOptions {
            keep_going: true,
            ..RunOptions::default()
        },
    );
    assert_eq!(code, 1, "{out}");
    assert_eq!(log.take(), ids(&BUILT_DESPITE_B), "{out}");
    assert!(
        out.contains("not run because of the failure: tokenize:b, expert:b, gate:b, pool:p, eval:e"),
        "{out}"
    );
    // Without --keep-going the run stops after the datasets and says what it left.
    let log = Log::default();
    let p = project(&cutoff());
    let (code, out) = p.run(&registry(&log, &fails), &RunOptions::default());
    assert_eq!(code, 1, "{out}");
    // (One step at a time, in plan order: the third dataset was not started.)
    assert_eq!(log.take(), ids(&["dataset:a", "dataset:b"]), "{out}");
    assert!(
        out.contains("not run because of the failure: tokenize:b, expert:b"),
        "{out}"
    );
    let unstarted = out
        .lines()
        .find(|l| l.starts_with("not started (a failure stops the run;"))
        .unwrap_or_else(|| panic!("{out}"));
    for id in [
        "dataset:heldout",
        "model:base",
        "tokenize:a",
        "expert:a",
        "gate:a",
    ] {
        assert!(unstarted.contains(id), "{id}: {out}");
    }
}

/// --until and --only pull in steps the default selection leaves out, so a dataset
/// that failed in the first part must be kept out of the second by name.
#[test]
fn keep_going_with_until_or_only_tries_a_failed_dataset_once() {
    let fails = Behaviour {
        fail: vec!["dataset:b".into()],
        ..Behaviour::default()
    };
    let selections = [
        RunOptions {
            until: Some("eval:e".into()),
            ..RunOptions::default()
        },
        RunOptions {
            only: ["dataset:a", "dataset:b", "dataset:heldout", "model:base"]
                .iter()
                .chain(["tokenize:a", "expert:a", "gate:a", "tokenize:b", "expert:b"].iter())
                .map(|s| s.to_string())
                .collect(),
            ..RunOptions::default()
        },
    ];
    for selection in selections {
        let log = Log::default();
        let p = project(&cutoff());
        let opts = RunOptions {
            keep_going: true,
            ..selection
        };
        let (code, out) = p.run(&registry(&log, &fails), &opts);
        assert_eq!(code, 1, "{out}");
        assert_eq!(log.take(), ids(&BUILT_DESPITE_B), "{opts:?}: {out}");
        assert_eq!(out.matches("dataset:b failed").count(), 1, "{out}");
        assert!(
            out.contains("not run because of the failure: tokenize:b, expert:b"),
            "{out}"
        );
    }
}

/// A dataset that fails under two names (one key: twins) is tried once: the second
/// name is not built in a later part of the run.
#[test]
fn keep_going_tries_a_failed_key_once_under_every_name_it_has() {
    let fails = Behaviour {
        fail: vec!["dataset:a".into()],
        ..Behaviour::default()
    };
    let log = Log::default();
    let text = cutoff().replace(
        "expert \"b\" model=\"base\" dataset=\"b\"",
        "expert \"b\" model=\"base\" dataset=\"b\"\ndataset \"a2\" path=\"data/a.jsonl\"\nexpert \"a2\" model=\"base\" dataset=\"a2\"",
    );
    let p = project(&text);
    let (plan, _) = p.status(&registry(&log, &fails));
    assert_eq!(
        plan.get("dataset:a").unwrap().spec.key,
        plan.get("dataset:a2").unwrap().spec.key
    );
    let opts = RunOptions {
        keep_going: true,
        ..RunOptions::default()
    };
    let (code, out) = p.run(&registry(&log, &fails), &opts);
    assert_eq!(code, 1, "{out}");
    let ran = log.take();
    assert_eq!(
        ran.iter().filter(|id| id.starts_with("dataset:a")).count(),
        1,
        "{ran:?}\n{out}"
    );
    assert!(ran.contains(&"expert:b".to_string()), "{ran:?}");
}

#[test]
fn run_verify_rehashes_the_steps_keyed_only_after_the_datasets_were_built() {
    let (log, reg, p) = built(true);
    let (plan, _) = p.status(&reg);
    let key = plan.get("expert:a").unwrap().spec.key;
    let file = goosepipe::store::Store::at(p.store())
        .files_dir(&key)
        .join("output.txt");
    let mut perms = std::fs::metadata(&file).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&file, perms).unwrap();
    std::fs::write(&file, "damaged").unwrap();
    // The dataset is rebuilt (same rows) before expert:a has its key again: the
    // re-hash that --verify asks for must reach it then.
    save_again(&p);
    let (code, out) = p.run(
        &reg,
        &RunOptions {
            verify: true,
            ..RunOptions::default()
        },
    );
    assert_eq!(code, 0, "{out}");
    let ran = log.take();
    assert!(ran.contains(&"expert:a".to_string()), "{ran:?}\n{out}");
    assert!(!ran.contains(&"expert:b".to_string()), "{ran:?}");
}

#[test]
fn locked_refuses_before_building_when_the_lockfile_does_not_pin_the_outputs() {
    let (log, reg, p) = built(true);
    // A lockfile written before early cutoff was turned on pins no output.
    edit_lock(&p, |lock| {
        for l in lock.steps.values_mut() {
            l.content = None;
        }
    });
    let fresh = p.dir.path().join("fresh-store");
    let mut out = Vec::new();
    let err = goosepipe::app::run(
        &p.manifest(),
        &fresh,
        &reg,
        &RunOptions {
            locked: true,
            ..RunOptions::default()
        },
        true,
        &goosepipe::exec::CancelFlag::new(),
        &mut out,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("dataset:a: the lockfile does not pin its output (content=)"),
        "{err}"
    );
    assert_eq!(err.matches("dataset:a: the lockfile").count(), 1, "{err}");
    assert!(log.take().is_empty(), "nothing is built before the refusal");
}

#[test]
fn gc_keeps_what_the_next_run_finds_after_a_data_file_is_saved_again() {
    let (log, reg, p) = built(true);
    save_again(&p);
    let mut out = Vec::new();
    let code = goosepipe::app::gc(&[p.manifest()], &p.store(), &reg, false, false, &mut out).unwrap();
    assert_eq!(code, 0);
    // Only the dataset's old artifact went; the run finds everything after it.
    let (code, out) = p.run(&reg, &RunOptions::default());
    assert_eq!(code, 0, "{out}");
    assert_eq!(log.take(), ids(&["dataset:a"]), "{out}");
}

#[test]
fn graph_keys_what_follows_a_built_dataset_on_its_output() {
    let log = Log::default();
    let reg = registry(&log, &Behaviour::default());
    let p = project(&cutoff());
    let graph = |p: &Project| {
        let mut out = Vec::new();
        goosepipe::app::graph(&p.manifest(), &p.store(), false, &reg, true, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    };
    assert!(graph(&p).contains("pending"));
    assert_eq!(p.run(&reg, &RunOptions::default()).0, 0);
    let g = graph(&p);
    assert!(!g.contains("pending"), "{g}");
}

#[test]
fn a_run_stopped_inside_the_datasets_says_it_was_interrupted() {
    let log = Log::default();
    let stops = Behaviour {
        // dataset:a checkpoints two units and is interrupted after the first.
        resumable: Some(("dataset:a".into(), 2, Some(1))),
        ..Behaviour::default()
    };
    let p = project(&cutoff());
    let (code, out) = p.run(&registry(&log, &stops), &RunOptions::default());
    assert_eq!(code, 130, "{out}");
    assert!(out.contains("interrupted:"), "{out}");
    let ran = log.take();
    assert!(
        !ran.iter()
            .any(|id| id.starts_with("tokenize:") || id.starts_with("expert:")),
        "{ran:?}"
    );
}

#[test]
fn turning_early_cutoff_on_says_so_as_the_reason() {
    let (_, reg, p) = built(false);
    p.write(&cutoff());
    let (plan, status) = p.status(&reg);
    let text = goosepipe::plan::render::plan_text(&plan, &status);
    let line = text
        .lines()
        .find(|l| l.contains("tokenize") && l.contains(" a "))
        .unwrap();
    assert!(
        line.contains("early-cutoff was turned on: the datasets it reads now enter its key by their output"),
        "{text}"
    );
    assert!(!line.contains("input changed: dataset:a"), "{line}");
}

#[test]
fn a_content_pin_that_is_not_the_stored_output_is_lockfile_drift() {
    let (_, reg, p) = built(true);
    edit_lock(&p, |lock| {
        lock.steps.get_mut("dataset:a").unwrap().content = Some("0".repeat(64))
    });
    let (_, status) = p.status(&reg);
    assert_eq!(status.lock_drift, ["dataset:a"]);
    let err = p.refused(
        &reg,
        &RunOptions {
            locked: true,
            ..RunOptions::default()
        },
    );
    assert!(err.contains("dataset:a is in the store with content"), "{err}");
}

#[test]
fn only_accepts_a_step_whose_input_waits_for_a_selected_dataset() {
    let (log, reg, p) = built(true);
    save_again(&p);
    let only = |ids: &[&str]| RunOptions {
        only: ids.iter().map(|s| s.to_string()).collect(),
        ..RunOptions::default()
    };
    let err = p.refused(&reg, &only(&["gate:a"]));
    assert!(
        err.contains("gate:a needs tokenize:a, whose key waits for the output of dataset:a (early cutoff); add it to --only"),
        "{err}"
    );
    let (code, out) = p.run(&reg, &only(&["dataset:a", "gate:a"]));
    assert_eq!(code, 0, "{out}");
    assert_eq!(log.take(), ids(&["dataset:a"]), "{out}");
}

#[test]
fn a_failed_run_keeps_the_file_pin_of_the_last_build() {
    let (log, _, p) = built(true);
    let before = Lockfile::read(&lock_path(&p.manifest())).unwrap();
    // The file is edited and its dataset fails on it; the file is then put back.
    save_again(&p);
    let fails = registry(
        &log,
        &Behaviour {
            fail: vec!["dataset:a".into()],
            ..Behaviour::default()
        },
    );
    assert_eq!(p.run(&fails, &RunOptions::default()).0, 1);
    p.file("data/a.jsonl", "{\"input\": \"x\", \"target\": \"y\"}\n");
    let after = Lockfile::read(&lock_path(&p.manifest())).unwrap();
    assert_eq!(after.externals, before.externals);
    let (code, out) = p.run(
        &registry(&log, &Behaviour::default()),
        &RunOptions {
            locked: true,
            ..RunOptions::default()
        },
    );
    assert_eq!(code, 0, "{out}");
}

#[test]
fn report_shows_the_results_an_unbuilt_same_rows_edit_most_likely_keeps() {
    // The product's steps on a micro pipeline (seconds): one expert on a local file.
    let dir = tempfile::tempdir().unwrap();
    let rows: String = (0..24)
        .map(|i| format!("{{\"input\": \"sort alphabetically : c a {i}\", \"target\": \"a c\"}}\n"))
        .collect();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/mine.jsonl"), &rows).unwrap();
    let manifest = dir.path().join("m.kdl");
    std::fs::write(
        &manifest,
        r#"
pipeline "r" early-cutoff=#true
dataset "corpus" { synthetic task="corpus" examples=200 seed=1; }
model "t" {
    init corpus="corpus" d-model=16 d-ff=32 d-kv=8 heads=2 layers=1 seed=3 pretrain-steps=4 batch=8
}
defaults {
    lora rank=4
    train steps=4 batch=8 micro-batch=8 eval-every=4 eval-examples=8 checkpoint-every=4
    gate steps=2 batch=8 micro-batch=8
}
dataset "mine" path="data/mine.jsonl"
dataset "test" split="test" { synthetic task="sort" format="choice" examples=8 seed=4; }
expert "mine" model="t" dataset="mine"
pool "p" { experts "mine"; }
eval "e" pool="p" {
    methods "base" "expert:mine"
    task "sort" dataset="test"
}
"#,
    )
    .unwrap();
    let store = dir.path().join("store");
    let (code, out) = support::run_product(&manifest, &store);
    assert_eq!(code, 0, "{out}");
    // Saved again with other spacing: not rebuilt yet.
    std::fs::write(
        dir.path().join("data/mine.jsonl"),
        rows.replace("\": \"", "\":\""),
    )
    .unwrap();
    let report = std::process::Command::new(env!("CARGO_BIN_EXE_goosepipe"))
        .args(["report", "m.kdl", "--store", "store"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&report.stdout),
        String::from_utf8_lossy(&report.stderr),
    );
    // Shown, but not known current until the dataset is rebuilt: exit 2.
    assert_eq!(report.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stdout.contains("| task | base | expert:mine |"), "{stdout}");
    assert!(
        stderr.contains("eval:e: results from before dataset:mine changed (not rebuilt yet)"),
        "{stderr}"
    );
}
