//! The headline behaviour: growing a pool runs exactly the new expert's work, the
//! pool and the evals that read it; an immediate re-run does nothing.

use crate::support;

use goosepipe::exec::RunOptions;
use support::{BASE, Behaviour, Log, Project, TWINS, registry, with_twins};

fn ids(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[test]
fn adding_an_expert_runs_exactly_its_steps_the_pool_and_the_eval() {
    let log = Log::default();
    let reg = registry(&log, &Behaviour::default());
    let p = Project::new(BASE);
    let (code, _) = p.run(&reg, &RunOptions::default());
    assert_eq!(code, 0);
    assert_eq!(log.take().len(), 12, "first run builds every step");

    // Re-run: nothing to do.
    assert!(p.stale(&reg).is_empty());
    let (code, out) = p.run(&reg, &RunOptions::default());
    assert_eq!(code, 0);
    assert!(out.contains("nothing to do"), "{out}");
    assert!(log.take().is_empty());

    // Grow the pool by one expert on a new dataset.
    let grown = BASE
        .replace(
            "expert \"b\" model=\"base\" dataset=\"b\"",
            "expert \"b\" model=\"base\" dataset=\"b\"\ndataset \"x\" hub=\"org/data\" config=\"x\"\nexpert \"x\" model=\"base\" dataset=\"x\"",
        )
        .replace("experts \"a\" \"b\"", "experts \"a\" \"b\" \"x\"");
    p.write(&grown);
    let expected = ids(&[
        "dataset:x",
        "tokenize:x",
        "expert:x",
        "gate:x",
        "pool:p",
        "eval:e",
    ]);
    assert_eq!(p.stale(&reg), expected);

    // The reasons say why.
    let (plan, status) = p.status(&reg);
    let text = goosepipe::plan::render::plan_text(&plan, &status);
    assert!(text.contains("expert:x"), "{text}");
    let line = |id: &str| {
        let (kind, name) = id.split_once(':').unwrap();
        text.lines()
            .find(|l| {
                let mut w = l.split_whitespace();
                w.next() == Some(kind) && w.next() == Some(name)
            })
            .unwrap_or_else(|| panic!("no line for {id} in\n{text}"))
            .to_string()
    };
    assert!(line("expert:x").ends_with("stale: new"), "{text}");
    assert!(
        line("pool:p").contains("inputs added: expert:x, gate:x"),
        "{text}"
    );
    assert!(line("pool:p").contains("members"), "{text}");
    assert!(line("eval:e").contains("input changed: pool:p"), "{text}");
    assert!(line("expert:a").ends_with("cached"), "{text}");

    let (code, _) = p.run(&reg, &RunOptions::default());
    assert_eq!(code, 0);
    assert_eq!(log.take(), expected, "the run does exactly what plan said");
    assert!(p.stale(&reg).is_empty());
}

#[test]
fn an_expert_on_an_existing_dataset_reuses_the_dataset() {
    let log = Log::default();
    let reg = registry(&log, &Behaviour::default());
    let p = Project::new(BASE);
    p.run(&reg, &RunOptions::default());
    log.take();
    let grown = BASE
        .replace(
            "expert \"b\" model=\"base\" dataset=\"b\"",
            "expert \"b\" model=\"base\" dataset=\"b\"\nexpert \"a2\" model=\"base\" dataset=\"a\" {\n    train lr=1e-3\n}",
        )
        .replace("experts \"a\" \"b\"", "experts \"b\" \"a2\" \"a\"");
    p.write(&grown);
    assert_eq!(p.stale(&reg), ids(&["expert:a2", "gate:a2", "pool:p", "eval:e"]));
}

#[test]
fn removing_an_expert_rebuilds_only_pool_and_eval() {
    let log = Log::default();
    let reg = registry(&log, &Behaviour::default());
    let p = Project::new(BASE);
    p.run(&reg, &RunOptions::default());
    p.write(&BASE.replace("experts \"a\" \"b\"", "experts \"a\""));
    assert_eq!(p.stale(&reg), ids(&["pool:p", "eval:e"]));
}

/// Removing one of two tasks on one dataset removes a role, not the dataset: the plan
/// names the role (it said the dataset was removed, though the eval still reads it).
#[test]
fn a_removed_role_of_an_input_still_read_is_named_with_its_role() {
    let log = Log::default();
    let reg = registry(&log, &Behaviour::default());
    let two = BASE.replace(
        "task \"h\" dataset=\"heldout\"",
        "task \"h\" dataset=\"heldout\"\n    task \"h2\" dataset=\"heldout\"",
    );
    let p = Project::new(&two);
    p.run(&reg, &RunOptions::default());
    p.write(BASE);
    let (plan, status) = p.status(&reg);
    let text = goosepipe::plan::render::plan_text(&plan, &status);
    let row = text.lines().find(|l| l.trim_start().starts_with("eval")).unwrap();
    assert!(row.contains("inputs removed: dataset:heldout as "), "{text}");
}

#[test]
fn per_expert_baseline_steps_do_not_depend_on_the_pool() {
    let log = Log::default();
    let reg = registry(&log, &Behaviour::default());
    let with_baselines = BASE.replace(
        "methods \"phatgoose\" \"base\"",
        "methods \"phatgoose\" \"average-activation\" \"retrieval\"",
    );
    let p = Project::new(&with_baselines);
    p.run(&reg, &RunOptions::default());
    log.take();
    let grown = with_baselines
        .replace(
            "expert \"b\" model=\"base\" dataset=\"b\"",
            "expert \"b\" model=\"base\" dataset=\"b\"\nexpert \"c\" model=\"base\" dataset=\"b\" {\n    train lr=0.001\n}",
        )
        .replace("experts \"a\" \"b\"", "experts \"a\" \"b\" \"c\"");
    p.write(&grown);
    // The new expert's own baseline steps run; its retrieval index is the same work as
    // b's (same dataset), so it is already cached.
    assert_eq!(
        p.stale(&reg),
        ids(&["expert:c", "gate:c", "average-activation:c", "pool:p", "eval:e"])
    );
}

/// `batches` was added after keys were pinned, as a keyless default: leaving it out
/// or writing the default keeps every key (by length is the old behaviour); asking
/// one expert's gate for the paper's random batches rebuilds exactly that gate and
/// what reads it.
#[test]
fn random_gate_batches_rebuild_only_that_gate_and_its_readers() {
    let log = Log::default();
    let reg = registry(&log, &Behaviour::default());
    let p = Project::new(BASE);
    p.run(&reg, &RunOptions::default());
    log.take();
    // Writing the default out changes nothing: it is not part of any key.
    p.write(&BASE.replace(
        "expert \"b\" model=\"base\" dataset=\"b\"",
        "expert \"b\" model=\"base\" dataset=\"b\" {\n    gate batches=\"by-length\"\n}",
    ));
    assert!(p.stale(&reg).is_empty());
    p.write(&BASE.replace(
        "expert \"b\" model=\"base\" dataset=\"b\"",
        "expert \"b\" model=\"base\" dataset=\"b\" {\n    gate batches=\"random\"\n}",
    ));
    assert_eq!(p.stale(&reg), ids(&["gate:b", "pool:p", "eval:e"]));
    p.write(&BASE.replace(
        "train steps=10 batch=4",
        "train steps=10 batch=4 batches=\"random\"",
    ));
    assert_eq!(
        p.stale(&reg),
        ids(&["expert:a", "expert:b", "gate:a", "gate:b", "pool:p", "eval:e"])
    );
}

/// `batches` is a keyless default: left out of a step's parameters when it is the
/// schema's default, so the training code's default (serde's) must be the schema's.
#[test]
fn the_keyless_batches_default_is_the_training_codes() {
    use goosepipe::manifest::value::Value;
    use goosepipe::train::batches::Batching;
    let schema = goosepipe::manifest::schema::Schema::embedded();
    for group in ["train", "gate"] {
        let p = schema
            .group(group)
            .and_then(|g| g.prop("batches"))
            .expect("batches prop");
        assert!(p.keyless_default, "{group}.batches");
        let Some(Value::Str(v)) = &p.default else {
            panic!("{group}.batches has no string default")
        };
        let parsed: Batching = serde_json::from_value(serde_json::json!(v)).unwrap();
        assert_eq!(parsed, Batching::default(), "{group}.batches");
    }
}

#[test]
fn steps_with_one_key_build_it_once_and_say_so() {
    let log = Log::default();
    let reg = registry(&log, &Behaviour::default());
    let p = Project::new(&with_twins());
    let (plan, status) = p.status(&reg);
    let n = plan.steps.len();
    let text = goosepipe::plan::render::plan_text(&plan, &status);
    assert!(
        text.lines().next().unwrap().ends_with(&format!(
            "{n} steps, {n} to run (4 have the key of another: {} to build), 0 cached",
            n - 4
        )),
        "{text}"
    );
    let line = |kind: &str, name: &str| {
        text.lines()
            .find(|l| {
                let mut w = l.split_whitespace();
                w.next() == Some(kind) && w.next() == Some(name)
            })
            .unwrap_or_else(|| panic!("no line for {kind}:{name} in\n{text}"))
            .to_string()
    };
    assert!(
        line("expert", "a2").contains("stale: same key as expert:a, which builds the artifact for both; new"),
        "{text}"
    );
    assert!(line("expert", "a").ends_with("stale: new"), "{text}");

    // Two jobs at once: the twin must neither run nor hold a job slot waiting for the
    // other's lock, and nobody is said to be "another run".
    let opts = RunOptions {
        jobs: Some(2),
        ..RunOptions::default()
    };
    let (code, out) = p.run(&reg, &opts);
    assert_eq!(code, 0, "{out}");
    let ran = log.take();
    assert_eq!(ran.len(), n - 4, "{ran:?}");
    for t in TWINS {
        assert!(!ran.contains(&t.to_string()), "{t} ran: {ran:?}");
    }
    assert!(
        out.contains(&format!(
            "done: {} step(s) built, 4 sharing the artifact of one of them (same key), 0 cached",
            n - 4
        )),
        "{out}"
    );
    assert!(!out.contains("another run"), "{out}");
    assert!(p.stale(&reg).is_empty(), "the twins are cached with the artifact");

    // `show` finds a twin by its own id (its artifact records the builder's id only).
    let show = |id: &str| {
        let mut out = Vec::new();
        goosepipe::app::show(id, &p.store(), false, true, &mut out).unwrap_or_else(|e| panic!("{id}: {e:?}"));
        String::from_utf8(out).unwrap()
    };
    assert_eq!(show("expert:a2"), show("expert:a"));
    assert_eq!(show("gate:a2"), show("gate:a"));
    // Shown in full, it says which step asked and which built it.
    let mut full = Vec::new();
    goosepipe::app::show("expert:a2", &p.store(), false, false, &mut full).unwrap();
    let full = String::from_utf8(full).unwrap();
    assert!(
        full.starts_with("expert:a  (expert \"a\"")
            && full.contains("also     expert:a2 (same key: one artifact; expert:a built it)"),
        "{full}"
    );
}

#[test]
fn a_failed_step_leaves_its_twins_not_run() {
    let log = Log::default();
    let reg = registry(
        &log,
        &Behaviour {
            fail: vec!["expert:a".into()],
            ..Behaviour::default()
        },
    );
    let p = Project::new(&with_twins());
    let (code, out) = p.run(&reg, &RunOptions::default());
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("1 step(s) failed:\n  expert:a:"), "{out}");
    let not_run = out
        .lines()
        .find(|l| l.starts_with("not run because of the failure: "))
        .unwrap_or_else(|| panic!("{out}"));
    for t in ["expert:a2", "gate:a2"] {
        assert!(not_run.contains(t), "{out}");
    }
    let ran = log.take();
    assert!(!ran.contains(&"expert:a2".to_string()), "{ran:?}");
    // The twins of what did build are shared, and stay built.
    let stale = p.stale(&reg);
    assert!(!stale.contains(&"tokenize:a2".to_string()), "{stale:?}");
    assert!(stale.contains(&"expert:a2".to_string()), "{stale:?}");
}

#[test]
fn only_accepts_an_input_whose_twin_it_builds() {
    let log = Log::default();
    let reg = registry(&log, &Behaviour::default());
    let manifest = with_twins().replace("eval \"e\"", "pool \"p2\" {\n    experts \"a2\"\n}\neval \"e\"");
    let p = Project::new(&manifest);
    let only = |ids: &[&str]| RunOptions {
        only: ids.iter().map(|s| s.to_string()).collect(),
        ..RunOptions::default()
    };
    // Nothing builds expert:a2's artifact: still refused, naming what is missing.
    let err = p.refused(&reg, &only(&["pool:p2"]));
    assert!(err.contains("pool:p2 needs "), "{err}");
    assert!(log.take().is_empty());

    // expert:a and gate:a build the artifacts of their twins expert:a2 and gate:a2,
    // so pool:p2 may run beside them; the twins share, nothing runs twice.
    let (code, out) = p.run(
        &reg,
        &only(&[
            "model:base",
            "dataset:a",
            "tokenize:a",
            "expert:a",
            "gate:a",
            "pool:p2",
        ]),
    );
    assert_eq!(code, 0, "{out}");
    let mut ran = log.take();
    ran.sort();
    assert_eq!(
        ran,
        vec![
            "dataset:a",
            "expert:a",
            "gate:a",
            "model:base",
            "pool:p2",
            "tokenize:a"
        ]
    );
    assert!(
        out.contains("sharing the artifact of one of them (same key)"),
        "{out}"
    );
    let stale = p.stale(&reg);
    for t in TWINS {
        assert!(!stale.contains(&t.to_string()), "{t} is stale: {stale:?}");
    }
    assert!(!stale.contains(&"pool:p2".to_string()), "{stale:?}");

    // Running the same selection again builds nothing, and says that others are stale
    // (it said "all steps are cached").
    let (code, out) = p.run(&reg, &only(&["pool:p2"]));
    assert_eq!(code, 0, "{out}");
    assert!(log.take().is_empty());
    assert!(
        out.contains(&format!(
            "nothing to do for the selected steps: {} other step(s) are stale",
            stale.len()
        )) && !out.contains("all steps are cached"),
        "{out}"
    );
}

/// An edit run and then reverted: the revert is all cached, but the last run found the
/// edited artifact. `show` and `export` by id say the store holds another of the
/// step, and `--manifest` takes the one the manifest has now.
#[test]
fn after_a_reverted_edit_show_says_so_and_manifest_takes_the_current_artifact() {
    let log = Log::default();
    let reg = registry(&log, &Behaviour::default());
    let p = Project::new(BASE);
    assert_eq!(p.run(&reg, &RunOptions::default()).0, 0);
    let key = |p: &Project| p.plan(&reg).get("expert:a").unwrap().spec.key;
    let first = key(&p);
    let edited = BASE.replace(
        "expert \"a\" model=\"base\" dataset=\"a\"",
        "expert \"a\" model=\"base\" dataset=\"a\" { lora rank=8; }",
    );
    p.write(&edited);
    assert_eq!(p.run(&reg, &RunOptions::default()).0, 0);
    let second = key(&p);
    assert_ne!(first, second);
    p.write(BASE);
    assert!(p.stale(&reg).is_empty(), "the revert is cached");

    let shown = |what: &str| {
        let mut out = Vec::new();
        goosepipe::app::show(what, &p.store(), false, false, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    };
    let by_id = shown("expert:a");
    assert!(by_id.contains(&second.hex()), "{by_id}");
    assert!(
        by_id.contains(&format!("note     1 other artifact(s) of expert:a are in the store (earlier settings, or another manifest's step of that id; until gc); this is the one the last run, of {}, built or found", std::path::absolute(p.manifest()).unwrap().display())),
        "{by_id}"
    );
    let manifest = p.manifest();
    let current = goosepipe::app::lookup("expert:a", Some(&manifest), &p.store(), &reg, false).unwrap();
    assert_eq!(current, first.hex());
    // For export, the expert goes with the gate the manifest has now (whose recipe
    // names this expert), never with a gate of the edit.
    let gate = goosepipe::app::lookup("expert:a", Some(&manifest), &p.store(), &reg, true).unwrap();
    let gate_now = p.plan(&reg).get("gate:a").unwrap().spec.key;
    assert_eq!(gate, gate_now.hex());
    // By key there is nothing to say.
    assert!(!shown(&current).contains("note "), "{}", shown(&current));

    // A manifest whose step is not built is refused, naming what the last run found.
    p.write(&BASE.replace(
        "expert \"a\" model=\"base\" dataset=\"a\"",
        "expert \"a\" model=\"base\" dataset=\"a\" { lora rank=4; }",
    ));
    let err = goosepipe::app::lookup("expert:a", Some(&manifest), &p.store(), &reg, false).unwrap_err();
    let err = format!("{err:?}");
    assert!(
        err.contains("expert:a is not built as")
            && err.contains(&format!("the last run found it at {}", second.short())),
        "{err}"
    );
    // Without a manifest, `what` is looked up as given.
    assert_eq!(
        goosepipe::app::lookup("expert:a", None, &p.store(), &reg, false).unwrap(),
        "expert:a"
    );
}
