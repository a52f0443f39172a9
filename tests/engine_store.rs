//! The store and the runner under failure: kill -9 mid-step, concurrent runs, corrupt
//! artifacts, failures with and without --keep-going, Ctrl-C and resume, gc, the
//! lockfile and --locked, sub-DAG selection.

use crate::support;

use std::process::Command;
use std::time::{Duration, Instant};

use goosepipe::exec::{CancelFlag, RunOptions};
use goosepipe::store::{Key, Store};
use support::{BASE, Behaviour, Log, Project, registry, run_manifest};

fn key_of(p: &Project, reg: &goosepipe::exec::Registry, id: &str) -> Key {
    p.plan(reg).get(id).unwrap().spec.key
}

/// Child half of `kill_dash_nine_leaves_no_partial_artifact`: runs the pipeline with a
/// step that hangs after writing part of its output. Only runs when the parent asks.
#[test]
#[ignore = "child process of kill_dash_nine_leaves_no_partial_artifact"]
fn crash_child() {
    let Ok(dir) = std::env::var("GOOSEPIPE_CRASH_DIR") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let behaviour = Behaviour {
        hang: Some(("expert:b".into(), dir.join("started"))),
        ..Default::default()
    };
    let reg = registry(&Log::default(), &behaviour);
    let mut out = Vec::new();
    let _ = goosepipe::app::run(
        &dir.join("pipeline.kdl"),
        &dir.join(".goosepipe"),
        &reg,
        &RunOptions::default(),
        true,
        &CancelFlag::new(),
        &mut out,
    );
}

#[test]
fn kill_dash_nine_leaves_no_partial_artifact() {
    let p = Project::new(BASE);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "engine_store::crash_child", "--ignored", "--nocapture"])
        .env("GOOSEPIPE_CRASH_DIR", p.dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = p.dir.path().join("started");
    let t0 = Instant::now();
    while !started.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "child never reached the hanging step"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let log = Log::default();
    let reg = registry(&log, &Behaviour::default());
    let store = Store::open(p.store()).unwrap();
    let kb = key_of(&p, &reg, "expert:b");
    assert!(
        !store.object_dir(&kb).exists(),
        "no partial artifact may be published"
    );
    // Steps finished before the kill are published and complete.
    let ka = key_of(&p, &reg, "expert:a");
    assert!(store.verify(&ka).is_ok());
    // The interrupted staging folder is a leftover gc can see.
    let leftovers = store.gc_candidates(&p.plan(&reg).steps.iter().map(|s| s.spec.key).collect());
    assert!(leftovers.iter().any(|e| e.key == Some(kb)), "{leftovers:?}");

    // Re-running builds the missing steps only, and gc cleans the leftover.
    let stale = p.stale(&reg);
    assert!(
        stale.contains(&"expert:b".to_string()) && !stale.contains(&"expert:a".to_string()),
        "{stale:?}"
    );
    let (code, _) = p.run(&reg, &RunOptions::default());
    assert_eq!(code, 0);
    assert!(store.verify(&kb).is_ok());
    let mut out = Vec::new();
    goosepipe::app::gc(&[p.manifest()], &p.store(), &reg, false, false, &mut out).unwrap();
    let leftovers = store.gc_candidates(&p.plan(&reg).steps.iter().map(|s| s.spec.key).collect());
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn concurrent_runs_on_one_store_build_each_step_once() {
    let log = Log::default();
    let behaviour = Behaviour {
        delay: Duration::from_millis(30),
        ..Default::default()
    };
    let reg = registry(&log, &behaviour);
    let p = Project::new(BASE);
    let opts = RunOptions {
        jobs: Some(2),
        ..Default::default()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| p.run(&reg, &opts));
        let b = s.spawn(|| p.run(&reg, &opts));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!((a.0, b.0), (0, 0), "{}\n{}", a.1, b.1);
    // Each run claims only what it built; what it waited for is said to be the other's.
    let built = |out: &str| -> usize {
        match out.lines().find(|l| l.starts_with("done: ")) {
            Some(line) => line["done: ".len()..].split(' ').next().unwrap().parse().unwrap(),
            None => 0,
        }
    };
    assert_eq!(built(&a.1) + built(&b.1), 12, "{}\n{}", a.1, b.1);
    assert!(
        a.1.contains("built by another run at the same time")
            || b.1.contains("built by another run at the same time"),
        "{}\n{}",
        a.1,
        b.1
    );
    let ran = log.take();
    let mut unique = ran.clone();
    unique.dedup();
    assert_eq!(ran, unique, "a step ran twice");
    assert_eq!(ran.len(), 12);
    assert!(p.stale(&reg).is_empty());
}

/// `pipeline ... jobs=N` sets how many steps run at once when `-j` is not given;
/// `-j` overrides it; without either, one at a time.
#[test]
fn the_manifest_sets_parallel_steps_and_the_command_line_overrides_it() {
    use std::sync::atomic::Ordering::SeqCst;
    let peak = |manifest: &str, jobs: Option<usize>| {
        let behaviour = Behaviour {
            delay: Duration::from_millis(40),
            ..Default::default()
        };
        let reg = registry(&Log::default(), &behaviour);
        let p = Project::new(manifest);
        let (code, out) = p.run(
            &reg,
            &RunOptions {
                jobs,
                ..Default::default()
            },
        );
        assert_eq!(code, 0, "{out}");
        behaviour.running.peak.load(SeqCst)
    };
    let two = BASE.replace("pipeline \"engine-test\"", "pipeline \"engine-test\" jobs=2");
    assert_eq!(peak(&two, None), 2);
    assert_eq!(peak(&two, Some(1)), 1);
    assert_eq!(peak(BASE, None), 1);
}

#[test]
fn truncated_artifact_is_stale_and_rebuilt() {
    let log = Log::default();
    let reg = registry(&log, &Behaviour::default());
    let p = Project::new(BASE);
    p.run(&reg, &RunOptions::default());
    log.take();
    let store = Store::open(p.store()).unwrap();
    let k = key_of(&p, &reg, "expert:a");
    std::fs::write(store.files_dir(&k).join("output.txt"), "x").unwrap();
    // A file replaced by a folder is said as that (not by the folder's size).
    let kb = key_of(&p, &reg, "expert:b");
    let file_b = store.files_dir(&kb).join("output.txt");
    std::fs::remove_file(&file_b).unwrap();
    std::fs::create_dir(&file_b).unwrap();
    let (plan, status) = p.status(&reg);
    let text = goosepipe::plan::render::plan_text(&plan, &status);
    assert!(text.contains("artifact corrupt"), "{text}");
    assert!(
        text.contains("output.txt is not a file (a folder, or another special file)"),
        "{text}"
    );
    p.run(&reg, &RunOptions::default());
    let mut ran = log.take();
    ran.sort();
    assert_eq!(ran, vec!["expert:a", "expert:b"]);
    assert!(store.verify(&k).is_ok() && store.verify(&kb).is_ok());
}

#[test]
fn bit_flipped_input_is_rebuilt_before_use() {
    let log = Log::default();
    let reg = registry(&log, &Behaviour::default());
    let p = Project::new(BASE);
    p.run(&reg, &RunOptions::default());
    log.take();
    let store = Store::open(p.store()).unwrap();
    let k = key_of(&p, &reg, "expert:a");
    // A file added to an artifact after publishing (a .DS_Store) is said by verify,
    // not taken for corruption: the artifact's own files are intact and no reader
    // opens it, so rebuilding would be a loss.
    let extra = store.files_dir(&k).join("sub/.DS_Store");
    std::fs::create_dir_all(extra.parent().unwrap()).unwrap();
    std::fs::write(&extra, "x").unwrap();
    assert!(store.verify(&k).is_ok());
    let mut said = Vec::new();
    let code = goosepipe::app::verify(&[p.manifest()], false, &p.store(), &reg, &mut said).unwrap();
    let said = String::from_utf8(said).unwrap();
    assert_eq!(code, 0, "{said}");
    assert!(
        said.contains("sub/.DS_Store is not one of its files") && said.contains(" 0 corrupt"),
        "{said}"
    );
    std::fs::remove_file(&extra).unwrap();
    // Same size, different bytes: only a re-hash can tell.
    let f = store.files_dir(&k).join("output.txt");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&f, bytes).unwrap();
    // Something that reads expert:a must run: change a gate setting of a.
    p.write(&BASE.replace(
        "expert \"a\" model=\"base\" dataset=\"a\"",
        "expert \"a\" model=\"base\" dataset=\"a\" {\n    gate lr=0.01\n}",
    ));
    let (code, _) = p.run(&reg, &RunOptions::default());
    assert_eq!(code, 0);
    assert_eq!(log.take(), vec!["eval:e", "expert:a", "gate:a", "pool:p"]);
    assert!(store.verify(&k).is_ok());
}

/// The row of step `id` (`kind:name`) in a rendered plan.
fn plan_line(text: &str, id: &str) -> String {
    let (kind, name) = id.split_once(':').unwrap();
    text.lines()
        .find(|l| l.split_whitespace().take(2).eq([kind, name]))
        .unwrap_or_else(|| panic!("{id}: {text}"))
        .to_string()
}

#[test]
fn a_failure_stops_dependents_and_keeps_finished_work() {
    let log = Log::default();
    let failing = Behaviour {
        fail: vec!["expert:b".into()],
        ..Default::default()
    };
    let p = Project::new(BASE);
    let reg = registry(&log, &failing);
    let (code, out) = p.run(
        &reg,
        &RunOptions {
            keep_going: true,
            ..Default::default()
        },
    );
    assert_eq!(code, 1);
    assert!(out.contains("expert:b: expert:b failed on purpose"), "{out}");
    assert!(out.contains("not run because of the failure: "), "{out}");
    let ran = log.take();
    assert!(
        ran.contains(&"gate:a".to_string()),
        "--keep-going runs independent branches: {ran:?}"
    );
    assert!(!ran.contains(&"gate:b".to_string()) && !ran.contains(&"pool:p".to_string()));
    // Fixing the failure runs only what is left.
    let reg = registry(&log, &Behaviour::default());
    assert_eq!(p.stale(&reg), vec!["eval:e", "expert:b", "gate:b", "pool:p"]);
    // Steps that never built say so, or which input moved since the lockfile's run
    // (they said "key changed; its recipe is not in this store").
    let (plan, status) = p.status(&reg);
    let text = goosepipe::plan::render::plan_text(&plan, &status);
    assert!(
        plan_line(&text, "pool:p").contains("stale: not built yet (nor was it at the lockfile's run)"),
        "{text}"
    );
    p.write(&BASE.replace(
        "expert \"b\" model=\"base\" dataset=\"b\"",
        "expert \"b\" model=\"base\" dataset=\"b\" {\n    train steps=11\n}",
    ));
    let (plan, status) = p.status(&reg);
    let text = goosepipe::plan::render::plan_text(&plan, &status);
    assert!(
        plan_line(&text, "gate:b").contains("input changed since the lockfile's run: expert:b"),
        "{text}"
    );
    assert!(
        plan_line(&text, "pool:p").contains("input changed since the lockfile's run: expert:b, gate:b"),
        "{text}"
    );
    assert!(!text.contains("key changed"), "{text}");
    p.write(BASE);

    // Without --keep-going the run stops: what needs the failed step is said to be
    // blocked by it, what does not is said to be not started (it was all "because of
    // the failure" before).
    let log = Log::default();
    let p = Project::new(BASE);
    let reg = registry(
        &log,
        &Behaviour {
            fail: vec!["expert:a".into()],
            ..Default::default()
        },
    );
    let (code, out) = p.run(&reg, &RunOptions::default());
    assert_eq!(code, 1, "{out}");
    let line = |start: &str| {
        out.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_default()
            .to_string()
    };
    let blocked = line("not run because of the failure: ");
    for id in ["gate:a", "pool:p", "eval:e"] {
        assert!(blocked.contains(id), "{out}");
    }
    let ran = log.take();
    let unstarted = line("not started (a failure stops the run; --keep-going runs");
    for id in ["expert:b", "gate:b"] {
        assert!(!blocked.contains(id), "{out}");
        assert!(
            ran.contains(&id.to_string()) || unstarted.contains(id),
            "{id}: {out}"
        );
    }
}

#[test]
fn cancelled_step_resumes_from_its_checkpoint() {
    let log = Log::default();
    let p = Project::new(BASE);
    let interrupting = Behaviour {
        resumable: Some(("expert:a".into(), 50, Some(20))),
        ..Default::default()
    };
    let reg = registry(&log, &interrupting);
    let cancel = CancelFlag::new();
    let (code, out) = p.run_cancellable(&reg, &RunOptions::default(), &cancel);
    assert_eq!(code, 130, "{out}");
    assert!(out.contains("run the same command again to resume."), "{out}");
    let store = Store::open(p.store()).unwrap();
    let k = key_of(&p, &reg, "expert:a");
    assert!(!store.object_dir(&k).exists());
    assert_eq!(
        std::fs::read_to_string(store.work_dir(&k).join("checkpoint")).unwrap(),
        "20"
    );
    log.take();
    // A lockfile from a run on another store pins the step as built: this store's
    // saved progress still says interrupted (it said "artifact missing").
    let lock_path = p.dir.path().join("pipeline.kdl.lock");
    let lock = std::fs::read_to_string(&lock_path).unwrap();
    let line = format!("step \"expert:a\" key=\"{}\"", k.hex());
    assert!(lock.contains(&line), "{lock}");
    std::fs::write(
        &lock_path,
        lock.replace(&line, &format!("{line} digest=\"{}\"", "0".repeat(64))),
    )
    .unwrap();
    let (plan, status) = p.status(&reg);
    let text = goosepipe::plan::render::plan_text(&plan, &status);
    assert!(
        plan_line(&text, "expert:a").contains("stale: interrupted in an earlier run"),
        "{text}"
    );
    std::fs::write(&lock_path, lock).unwrap();
    // A partial write beside the checkpoint (a kill or a full disk cut it short) is
    // space gc gives back; the checkpoint stays. Alone, it is no saved progress.
    let partial = store.work_dir(&k).join("train-state.safetensors.tmp");
    std::fs::write(&partial, "torn").unwrap();
    // So is an eval's part or a name record cut short.
    let part = store.work_dir(&k).join("eval-progress").join(".p.json.tmp-1-2");
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    std::fs::write(&part, "{").unwrap();
    // (As goosepipe names them: gc deletes no name it does not write.)
    let record = p
        .store()
        .join("names")
        .join(format!("{}.tmp-77", "ab".repeat(16)));
    std::fs::write(&record, format!("expert:a\n{}\n", k.hex())).unwrap();
    let found = store.gc_candidates(&plan.steps.iter().map(|s| s.spec.key).collect());
    for leftover in [&part, &record] {
        assert!(
            found
                .iter()
                .any(|e| &e.path == leftover && e.reason.label() == "leftover of an interrupted run"),
            "{leftover:?}: {found:?}"
        );
    }
    std::fs::remove_dir_all(part.parent().unwrap()).unwrap();
    std::fs::remove_file(&record).unwrap();
    assert!(
        found
            .iter()
            .any(|e| e.path == partial && e.reason.label() == "leftover of an interrupted run"),
        "{found:?}"
    );
    assert!(!found.iter().any(|e| e.path == store.work_dir(&k)), "{found:?}");
    let saved = store.work_dir(&k).join("checkpoint");
    let aside = p.dir.path().join("checkpoint-aside");
    std::fs::rename(&saved, &aside).unwrap();
    let (plan, status) = p.status(&reg);
    let text = goosepipe::plan::render::plan_text(&plan, &status);
    assert!(!plan_line(&text, "expert:a").contains("interrupted"), "{text}");
    std::fs::rename(&aside, &saved).unwrap();
    std::fs::remove_file(&partial).unwrap();

    let resuming = Behaviour {
        resumable: Some(("expert:a".into(), 50, None)),
        ..Default::default()
    };
    let reg = registry(&log, &resuming);
    let (code, _) = p.run(&reg, &RunOptions::default());
    assert_eq!(code, 0);
    assert!(log.take().contains(&"expert:a resumed at 20".to_string()));
    assert!(!store.work_dir(&k).exists(), "scratch is removed once published");
}

#[test]
fn only_and_until_select_a_sub_dag() {
    let log = Log::default();
    let reg = registry(&log, &Behaviour::default());
    let p = Project::new(BASE);
    let (code, _) = p.run(
        &reg,
        &RunOptions {
            until: Some("gate:a".into()),
            ..Default::default()
        },
    );
    assert_eq!(code, 0);
    assert_eq!(
        log.take(),
        vec!["dataset:a", "expert:a", "gate:a", "model:base", "tokenize:a"]
    );
    let (code, _) = p.run(
        &reg,
        &RunOptions {
            only: vec!["dataset:b".into()],
            ..Default::default()
        },
    );
    assert_eq!(code, 0);
    assert_eq!(log.take(), vec!["dataset:b"]);
    // --only refuses a step whose inputs are not built.
    let err = p.refused(
        &reg,
        &RunOptions {
            only: vec!["pool:p".into()],
            ..Default::default()
        },
    );
    assert!(err.contains("pool:p needs expert:b, which is not built"), "{err}");
}

#[test]
fn lockfile_records_keys_and_locked_refuses_changes() {
    let reg = registry(&Log::default(), &Behaviour::default());
    let manifest = BASE.replace(
        "dataset \"a\" hub=\"org/data\" config=\"a\"",
        "dataset \"a\" path=\"a.jsonl\"",
    );
    let p = Project::new(&manifest);
    p.file("a.jsonl", "{}\n");
    let (code, _) = p.run(&reg, &RunOptions::default());
    assert_eq!(code, 0);
    let lock_text = std::fs::read_to_string(p.dir.path().join("pipeline.kdl.lock")).unwrap();
    let plan = p.plan(&reg);
    for s in &plan.steps {
        assert!(
            lock_text.contains(&format!("step \"{}\" key=\"{}\"", s.spec.id, s.spec.key.hex())),
            "{lock_text}"
        );
    }
    assert!(
        lock_text.contains(&format!(
            "external \"path:a.jsonl\" resolved=\"{}\"",
            blake3::hash(b"{}\n").to_hex()
        )),
        "{lock_text}"
    );
    // Unchanged: --locked passes.
    let locked = RunOptions {
        locked: true,
        ..Default::default()
    };
    let (code, _) = p.run(&reg, &locked);
    assert_eq!(code, 0);
    // Pins without the numerics their artifacts record (an earlier goosepipe's
    // lockfile): the pins hold, and `plan` and `--locked` say what a run would add.
    assert!(lock_text.contains(" numerics="), "{lock_text}");
    let bare: String = lock_text
        .lines()
        .map(|l| match l.find(" numerics=\"") {
            Some(at) => {
                let end = at + 12 + l[at + 12..].find('"').unwrap() + 1;
                format!("{}{}\n", &l[..at], &l[end..])
            }
            None => format!("{l}\n"),
        })
        .collect();
    assert!(!bare.contains("numerics="), "{bare}");
    std::fs::write(p.dir.path().join("pipeline.kdl.lock"), &bare).unwrap();
    let (_, st) = p.status(&reg);
    assert!(
        st.lock_unrecorded.contains(&"pool:p".to_string()),
        "{:?}",
        st.lock_unrecorded
    );
    assert!(
        st.lock_drift.is_empty() && st.stale_count() == 0,
        "{:?}",
        st.lock_drift
    );
    let (code, out) = p.run(&reg, &locked);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("`goosepipe run` records the rest"), "{out}");
    // A pin of its key alone (a partial run did not build the step) is not one.
    let keys_only: String = bare
        .lines()
        .map(|l| match l.find(" digest=\"") {
            Some(at) if l.contains("\"pool:p\"") => format!("{}\n", &l[..at]),
            _ => format!("{l}\n"),
        })
        .collect();
    std::fs::write(p.dir.path().join("pipeline.kdl.lock"), &keys_only).unwrap();
    let (_, st) = p.status(&reg);
    assert!(!st.lock_unrecorded.contains(&"pool:p".to_string()), "{keys_only}");
    std::fs::write(p.dir.path().join("pipeline.kdl.lock"), &lock_text).unwrap();
    // A pinned digest the store's artifact does not have: refused before anything
    // runs, and not called a rebuild (nothing was rebuilt).
    let pool = plan.get("pool:p").unwrap().spec.key;
    let digest = Store::open(p.store()).unwrap().meta(&pool).unwrap().digest;
    let edited = lock_text.replace(&digest, &"f".repeat(digest.len()));
    assert_ne!(edited, lock_text);
    std::fs::write(p.dir.path().join("pipeline.kdl.lock"), &edited).unwrap();
    let err = p.refused(&reg, &locked);
    let msg = err;
    assert!(
        msg.contains(&format!(
            "pool:p is in the store with digest {}, the lockfile pins ffffffffffff",
            &digest[..12]
        )),
        "{msg}"
    );
    assert!(!msg.contains("rebuilt"), "{msg}");
    std::fs::write(p.dir.path().join("pipeline.kdl.lock"), &lock_text).unwrap();
    // A changed local file: --locked refuses, before running anything.
    p.file("a.jsonl", "{\"changed\": 1}\n");
    let err = p.refused(
        &reg,
        &RunOptions {
            locked: true,
            ..Default::default()
        },
    );
    let msg = err;
    assert!(
        msg.contains("path:a.jsonl changed") && msg.contains("dataset:a has key"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read_to_string(p.dir.path().join("pipeline.kdl.lock")).unwrap(),
        lock_text,
        "--locked never writes the lockfile"
    );
    // A merge that left both sides in is said as such.
    let lock_file = p.dir.path().join("pipeline.kdl.lock");
    std::fs::write(
        &lock_file,
        format!("<<<<<<< HEAD\n{lock_text}=======\n{lock_text}>>>>>>> b\n"),
    )
    .unwrap();
    let locked = RunOptions {
        locked: true,
        ..Default::default()
    };
    let err = p.refused(&reg, &locked);
    assert!(err.contains("it has merge-conflict markers (line 1)"), "{err}");
    // No lockfile at all: one line that says so, not every step "not in the lockfile".
    std::fs::remove_file(&lock_file).unwrap();
    let err = p.refused(&reg, &locked);
    assert!(
        err.contains("--locked: there is no lockfile to hold the run to")
            && !err.contains("not in the lockfile"),
        "{err}"
    );
}

/// The line of a lockfile's `text` that pins step `id`.
fn line_of(text: &str, id: &str) -> String {
    text.lines()
        .find(|l| l.contains(&format!("step \"{id}\"")))
        .unwrap_or_else(|| panic!("{id}: {text}"))
        .to_string()
}

/// The 64-hex value of a property (`digest=`, `tables=`) on a lockfile line.
fn pin_field(line: &str, name: &str) -> String {
    line.split(&format!("{name}=\"")).nth(1).unwrap()[..64].to_string()
}

/// The base project built once, with its registry and the lockfile that run wrote.
fn built_base() -> (Project, goosepipe::exec::Registry, std::path::PathBuf) {
    let reg = registry(&Log::default(), &Behaviour::default());
    let p = Project::new(BASE);
    assert_eq!(p.run(&reg, &RunOptions::default()).0, 0);
    let lock_path = p.dir.path().join("pipeline.kdl.lock");
    (p, reg, lock_path)
}

/// The lockfile records on what numerics each pin was built (`process::numerics`), and
/// an eval's results tables. `--locked` on a machine of other numerics takes other last
/// bits under the pinned keys as a note, and holds the run to the pinned tables; on the
/// same numerics another digest is a build that is not reproducible, and the run stops
/// at the first such step instead of building everything after it.
#[test]
fn locked_holds_other_numerics_to_the_tables_and_the_same_numerics_to_the_bytes() {
    let (p, reg, lock_path) = built_base();
    let here = goosepipe::process::numerics::numerics("cpu");
    let pinned = std::fs::read_to_string(&lock_path).unwrap();
    assert!(
        line_of(&pinned, "expert:a").ends_with(&format!(" numerics=\"{here}\"")),
        "{pinned}"
    );
    let tables = blake3::hash(b"| task | phatgoose |\n| h | 50.0 |\n")
        .to_hex()
        .to_string();
    assert!(
        line_of(&pinned, "eval:e").contains(&format!(" tables=\"{tables}\"")),
        "{pinned}"
    );
    assert!(!line_of(&pinned, "expert:a").contains("tables="), "{pinned}");
    let digest_of = |line: &str| pin_field(line, "digest");
    // `pins`: (step, digest, tables) pinned as if built on `numerics`, on a fresh store.
    let locked_run = |numerics: &str, pins: &[(&str, String, Option<&str>)]| {
        let mut text = pinned.clone();
        for (id, digest, tabled) in pins {
            let old = line_of(&text, id);
            // No numerics: the pin as a lockfile from before they were recorded has it.
            let mut new = match numerics {
                "" => old.replace(&format!(" numerics=\"{here}\""), ""),
                _ => old.replace(&here, numerics),
            }
            .replace(&digest_of(&old), digest);
            if let Some(t) = tabled {
                new = new.replace(&tables, t);
            }
            text = text.replace(&old, &new);
        }
        std::fs::write(&lock_path, &text).unwrap();
        let _ = std::fs::remove_dir_all(p.store());
        let log = Log::default();
        let reg = registry(&log, &Behaviour::default());
        let mut out = Vec::new();
        let result = goosepipe::app::run(
            &p.manifest(),
            &p.store(),
            &reg,
            &RunOptions {
                locked: true,
                ..Default::default()
            },
            true,
            &CancelFlag::new(),
            &mut out,
        );
        assert_eq!(
            std::fs::read_to_string(&lock_path).unwrap(),
            text,
            "--locked never writes"
        );
        let said = String::from_utf8_lossy(&out).to_string();
        let built = log.0.lock().unwrap().clone();
        (result.map_err(|e| format!("{e:?}")), said, built)
    };
    let other = "f".repeat(64);
    // Pinned on other numerics with other last bits: the same keys, the same tables.
    let (result, said, _) = locked_run(
        "cpu elsewhere",
        &[("expert:a", other.clone(), None), ("eval:e", other.clone(), None)],
    );
    assert_eq!(result, Ok(0), "{said}");
    assert!(
        said.contains(&format!(
            "note: 2 artifact(s) differ from their pins in the last bits: built on {here}, pinned on cpu elsewhere"
        )) && said.contains("note: the results tables are the pinned ones, to the digit: eval:e"),
        "{said}"
    );
    // `plan` says the same of that store: nothing drifted (`--check-cached` passes, as
    // `run --locked` does), two steps differ in their last bits.
    let (_, status) = p.status(&reg);
    assert!(status.lock_drift.is_empty(), "{:?}", status.lock_drift);
    let mut other_bits = status.lock_other_bits.clone();
    other_bits.sort();
    assert_eq!(other_bits, ["eval:e", "expert:a"]);
    // ... but other tables are another result.
    let (result, said, _) = locked_run(
        "cpu elsewhere",
        &[("eval:e", other.clone(), Some(&"0".repeat(64)))],
    );
    let err = format!("{result:?}{said}");
    assert!(
        err.contains(&format!(
            "eval:e: built with digest {}, the lockfile pins ffffffffffff and its results tables differ (pinned on cpu elsewhere, built on {here}); `--locked` stops here",
            &digest_of(&line_of(&pinned, "eval:e"))[..12]
        )),
        "{err}"
    );
    // The same numerics, other bytes: not reproducible, and nothing after it is built.
    let (result, said, built) = locked_run(&here.clone(), &[("expert:a", other.clone(), None)]);
    let err = format!("{result:?}{said}");
    assert!(
        err.contains(&format!(
            "the lockfile pins ffffffffffff (not reproducible: both built on {here})"
        )),
        "{err}"
    );
    assert!(built.contains(&"expert:a".to_string()), "{built:?}");
    assert!(
        !built.contains(&"gate:a".to_string()) && !built.contains(&"eval:e".to_string()),
        "{built:?}"
    );
    // A pin from before numerics were recorded holds the digest, as it did then.
    let (result, said, _) = locked_run("", &[("expert:a", other.clone(), None)]);
    let err = format!("{result:?}{said}");
    assert!(
        err.contains("the lockfile does not record the numerics of its pin") && err.contains("re-pin"),
        "{err}"
    );
    // Data is exact: a dataset carries no numerics of its own; a pool, its members'.
    assert!(
        line_of(&pinned, "dataset:a").ends_with(" numerics=\"exact\""),
        "{pinned}"
    );
    assert!(
        line_of(&pinned, "pool:p").contains(&format!(" numerics=\"{here}\"")),
        "{pinned}"
    );
    // A plain run re-pins, and says so rather than leaving a hex diff to find.
    std::fs::write(
        &lock_path,
        pinned
            .replace(&digest_of(&line_of(&pinned, "expert:a")), &other)
            .replace(&here, "cpu elsewhere"),
    )
    .unwrap();
    let (code, said) = p.run(&reg, &RunOptions::default());
    assert_eq!(code, 0, "{said}");
    assert!(
        said.contains(&format!(
            "note: the lockfile now pins 1 step(s) at other digests under the same keys (expert:a): built on {here}, pinned on cpu elsewhere"
        )),
        "{said}"
    );
}

/// A store built on other numerics than the pins (another build, an earlier goosepipe:
/// before 2026-12-08 an AVX-512 CPU computed `avx512f` by default), pins of the numerics
/// this run computes: re-pinning is not the remedy `--locked` names, a new store is.
/// Where the pins are of other numerics than this run's, re-pinning stays the remedy.
#[test]
fn locked_names_a_new_store_when_this_run_computes_the_pins_numerics() {
    let (p, reg, lock_path) = built_base();
    let here = goosepipe::process::numerics::numerics("cpu");
    let pinned = std::fs::read_to_string(&lock_path).unwrap();
    // The eval's artifact in the store, as if built elsewhere with other tables.
    let store = Store::open(p.store()).unwrap();
    let key = store
        .keys()
        .into_iter()
        .find(|k| store.meta(k).unwrap().spec.id == "eval:e")
        .unwrap();
    let meta = store.files_dir(&key).parent().unwrap().join("meta.json");
    let text = std::fs::read_to_string(&meta).unwrap();
    let quoted = format!("\"numerics\": \"{here}\"");
    assert!(text.contains(&quoted), "{text}");
    std::fs::write(&meta, text.replace(&quoted, "\"numerics\": \"cpu elsewhere\"")).unwrap();
    // Another digest and other tables pinned for the eval.
    let pinned = pinned
        .replace(&pin_field(&line_of(&pinned, "eval:e"), "digest"), &"f".repeat(64))
        .replace(&pin_field(&line_of(&pinned, "eval:e"), "tables"), &"0".repeat(64));
    let locked = |lockfile: &str| {
        std::fs::write(&lock_path, lockfile).unwrap();
        let opts = RunOptions {
            locked: true,
            ..Default::default()
        };
        p.refused(&reg, &opts)
    };
    let err = locked(&pinned);
    assert!(
        err.contains(&format!("its results tables differ (pinned on {here}, built on cpu elsewhere)"))
            && err.contains(&format!(
                "(this goosepipe computes {here}, the numerics of those pins, and the store's were built on others (another machine, an `avx512` build, an earlier goosepipe): `run --locked --store NEW_DIR` builds them here to check the pins; a run without --locked updates the lockfile to this store)"
            )),
        "{err}"
    );
    // Pins of other numerics than this run's: a new store here would not give them.
    let err = locked(&pinned.replace(&format!("numerics=\"{here}\""), "numerics=\"cpu third\""));
    assert!(
        err.contains("(pinned on cpu third, built on cpu elsewhere)")
            && err.contains("(run without --locked to update it)")
            && !err.contains("NEW_DIR"),
        "{err}"
    );
}

/// Pins of the very bytes a run finds, recorded on another label (a CPU whose gemm
/// splits long products elsewhere computes the same bytes for short ones): a plain
/// run leaves them as written, so running the shipped pipelines on such a CPU does not
/// rewrite their lockfiles.
#[test]
fn a_run_keeps_pins_of_the_same_bytes_recorded_on_another_label() {
    let (p, reg, lock_path) = built_base();
    let here = goosepipe::process::numerics::numerics("cpu");
    let elsewhere = std::fs::read_to_string(&lock_path)
        .unwrap()
        .replace(&format!("numerics=\"{here}\""), "numerics=\"cpu elsewhere\"");
    assert!(elsewhere.contains("cpu elsewhere"), "{elsewhere}");
    std::fs::write(&lock_path, &elsewhere).unwrap();
    let (code, said) = p.run(&reg, &RunOptions::default());
    assert_eq!(code, 0, "{said}");
    assert_eq!(std::fs::read_to_string(&lock_path).unwrap(), elsewhere);
}

#[test]
fn a_partial_run_after_an_edit_keeps_the_lockfile_pins_of_what_it_did_not_build() {
    let reg = registry(&Log::default(), &Behaviour::default());
    let p = Project::new(BASE);
    assert_eq!(p.run(&reg, &RunOptions::default()).0, 0);
    let lock_path = p.dir.path().join("pipeline.kdl.lock");
    let pinned = std::fs::read_to_string(&lock_path).unwrap();
    p.write(&BASE.replace(
        "expert \"b\" model=\"base\" dataset=\"b\"",
        "expert \"b\" model=\"base\" dataset=\"b\" {\n    gate steps=6\n}",
    ));
    let until = RunOptions {
        until: Some("gate:b".into()),
        ..Default::default()
    };
    assert_eq!(p.run(&reg, &until).0, 0);
    let after = std::fs::read_to_string(&lock_path).unwrap();
    // What the run built is pinned anew; what it did not build keeps its pin (key
    // and digest): it was written with the new key and no digest, losing both.
    assert_ne!(line_of(&after, "gate:b"), line_of(&pinned, "gate:b"));
    for id in ["pool:p", "eval:e"] {
        assert_eq!(line_of(&after, id), line_of(&pinned, id), "{after}");
    }
    // So plan still says what changed (it said "not built yet (nor was it at the
    // lockfile's run)", which was false), and --locked refuses the new keys.
    let (plan, status) = p.status(&reg);
    let text = goosepipe::plan::render::plan_text(&plan, &status);
    assert!(
        plan_line(&text, "pool:p").contains("stale: input changed: gate:b"),
        "{text}"
    );
    assert!(!text.contains("nor was it"), "{text}");
    let err = p.refused(
        &reg,
        &RunOptions {
            locked: true,
            ..Default::default()
        },
    );
    assert!(err.contains("pool:p has key"), "{err}");
    // The full run pins the rest.
    assert_eq!(p.run(&reg, &RunOptions::default()).0, 0);
    let done = std::fs::read_to_string(&lock_path).unwrap();
    assert_ne!(line_of(&done, "pool:p"), line_of(&pinned, "pool:p"));
    assert!(line_of(&done, "pool:p").contains("digest="), "{done}");

    // Back to the first manifest: every step is cached, and the lockfile pins the
    // edited version. plan says so (it said nothing, and `run --locked` refused), and a
    // run that has nothing to build says it rewrote the pins.
    p.write(BASE);
    let (plan, status) = p.status(&reg);
    assert_eq!(status.stale_count(), 0);
    assert_eq!(status.lock_drift, vec!["gate:b", "pool:p", "eval:e"]);
    let text = goosepipe::plan::render::plan_text(&plan, &status);
    assert!(
        text.contains(
            "lockfile: pipeline.kdl.lock does not match this manifest for 3 step(s) (gate:b, pool:p, eval:e:"
        ),
        "{text}"
    );
    let json = goosepipe::plan::render::plan_json(&plan, &status, &p.store());
    assert_eq!(
        json["lockfile_outdated"],
        serde_json::json!(["gate:b", "pool:p", "eval:e"])
    );
    // A CI guard fails on it: `run --locked` would refuse, though nothing would run.
    let check = |out: &mut Vec<u8>| {
        let opts = goosepipe::app::PlanOptions {
            check_cached: true,
            device: "cpu".into(),
            ..Default::default()
        };
        goosepipe::app::plan_cmd(&p.manifest(), &p.store(), &reg, &opts, out).unwrap()
    };
    assert_eq!(check(&mut Vec::new()), goosepipe::app::EXIT_PENDING);
    // With no lockfile at all (a manifest that shares a store but never ran), the
    // note says the lockfile is yet to be written.
    let saved = std::fs::read(&lock_path).unwrap();
    std::fs::remove_file(&lock_path).unwrap();
    let (plan, status) = p.status(&reg);
    let text = goosepipe::plan::render::plan_text(&plan, &status);
    assert!(
        text.contains("lockfile: pipeline.kdl.lock does not exist yet: `goosepipe run` writes it"),
        "{text}"
    );
    std::fs::write(&lock_path, saved).unwrap();
    let (code, out) = p.run(&reg, &RunOptions::default());
    assert_eq!(code, 0);
    assert!(
        out.contains("nothing to do: all 12 steps are cached; the lockfile now pins 3 step(s) as they are"),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(&lock_path).unwrap(), pinned);
    assert!(p.status(&reg).1.lock_drift.is_empty());
    assert_eq!(check(&mut Vec::new()), goosepipe::app::EXIT_OK);
    // An eval taken out of the manifest: the lockfile still pins it (run --locked
    // refuses), and plan says so.
    p.write(&BASE.replace("eval \"e\" pool=\"p\" {\n    methods \"phatgoose\" \"base\"\n    task \"h\" dataset=\"heldout\"\n}\n", ""));
    let (_, status) = p.status(&reg);
    assert_eq!(status.lock_drift, vec!["eval:e"]);
}

#[test]
fn gc_deletes_only_unreachable_entries() {
    let reg = registry(&Log::default(), &Behaviour::default());
    let p = Project::new(BASE);
    p.run(&reg, &RunOptions::default());
    let store = Store::open(p.store()).unwrap();
    let kb = key_of(&p, &reg, "expert:b");
    let old_pool = key_of(&p, &reg, "pool:p");
    p.write(
        &BASE
            .replace("experts \"a\" \"b\"", "experts \"a\"")
            .replace("expert \"b\" model=\"base\" dataset=\"b\"\n", ""),
    );
    p.run(&reg, &RunOptions::default());
    let mut out = Vec::new();
    goosepipe::app::gc(&[p.manifest()], &p.store(), &reg, true, false, &mut out).unwrap();
    let listing = String::from_utf8(out).unwrap();
    assert!(
        listing.contains(&kb.hex()) && listing.contains(&old_pool.hex()),
        "{listing}"
    );
    assert!(
        listing.contains("(unreachable artifact: expert:b)") && listing.contains("would free"),
        "{listing}"
    );
    assert!(store.object_dir(&kb).exists(), "dry run deletes nothing");
    let mut out = Vec::new();
    goosepipe::app::gc(&[p.manifest()], &p.store(), &reg, false, false, &mut out).unwrap();
    assert!(!store.object_dir(&kb).exists());
    let reachable: std::collections::HashSet<Key> = p.plan(&reg).steps.iter().map(|s| s.spec.key).collect();
    assert_eq!(
        store.keys().into_iter().collect::<std::collections::HashSet<_>>(),
        reachable
    );
    assert!(
        p.stale(&reg).is_empty(),
        "gc never removes what the manifest needs"
    );
    // The id -> key records go with their artifacts; reachable ones stay.
    assert_eq!(store.named("expert:b"), None);
    assert_eq!(store.named("expert:a"), Some(key_of(&p, &reg, "expert:a")));
}

/// gc refuses while a run is using the store (it could delete what the run has built
/// and is about to read), keeps everything, and works once the run has ended.
#[test]
fn gc_refuses_while_a_run_is_using_the_store() {
    let p = Project::new(BASE);
    let started = p.dir.path().join("started");
    let behaviour = Behaviour {
        hang: Some(("expert:b".into(), started.clone())),
        ..Default::default()
    };
    let reg = registry(&Log::default(), &behaviour);
    let cancel = CancelFlag::new();
    let run = {
        let (manifest, store, cancel, reg) = (p.manifest(), p.store(), cancel.clone(), reg.clone());
        std::thread::spawn(move || run_manifest(&manifest, &store, &reg, &RunOptions::default(), &cancel))
    };
    let t0 = Instant::now();
    while !started.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the run never reached the hanging step"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let store = Store::open(p.store()).unwrap();
    let before = store.keys();
    assert!(!before.is_empty());
    // A manifest that reaches nothing: everything the run built would be unreachable.
    std::fs::write(p.dir.path().join("empty.kdl"), "").unwrap();
    let empty = p.dir.path().join("empty.kdl");
    let mut out = Vec::new();
    let code = goosepipe::app::gc(
        std::slice::from_ref(&empty),
        &p.store(),
        &reg,
        false,
        false,
        &mut out,
    )
    .unwrap();
    assert_eq!(
        code,
        goosepipe::app::EXIT_BUSY,
        "busy, not failed: a cron job tries again"
    );
    assert_eq!(store.keys(), before, "gc deleted nothing");
    // `plan` beside the run: a step with saved progress whose key the run holds is
    // being built, not "interrupted".
    let kb = key_of(&p, &reg, "expert:b");
    std::fs::create_dir_all(store.work_dir(&kb)).unwrap();
    std::fs::write(store.work_dir(&kb).join("checkpoint.bin"), b"saved").unwrap();
    let (plan, status) = p.status(&reg);
    let i = plan.index["expert:b"];
    assert_eq!(status.states[i].reasons(), [goosepipe::plan::Reason::Building]);
    // A dry run only lists: it may run beside a run.
    let mut out = Vec::new();
    goosepipe::app::gc(
        std::slice::from_ref(&empty),
        &p.store(),
        &reg,
        true,
        false,
        &mut out,
    )
    .unwrap();
    cancel.cancel();
    let (code, text) = run.join().unwrap();
    assert_eq!(code, goosepipe::app::EXIT_INTERRUPTED, "{text}");
    let (plan, status) = p.status(&reg);
    assert_eq!(
        status.states[plan.index["expert:b"]].reasons(),
        [goosepipe::plan::Reason::Interrupted],
        "the run ended: its saved progress is an interrupted run's"
    );
    let mut out = Vec::new();
    // Only what the empty manifest reaches (the run's own manifest pins the rest).
    goosepipe::app::gc(&[empty], &p.store(), &reg, false, true, &mut out).unwrap();
    assert!(store.keys().is_empty(), "{}", String::from_utf8(out).unwrap());
}

/// `show` by a bare name finds the one step that has it, and refuses a name several
/// steps share (a dataset, an expert and a gate are all `a`) instead of picking one.
#[test]
fn show_by_a_bare_name_refuses_when_several_steps_have_it() {
    let reg = registry(&Log::default(), &Behaviour::default());
    let p = Project::new(BASE);
    let (code, out) = p.run(&reg, &RunOptions::default());
    assert_eq!(code, 0, "{out}");
    let show = |what: &str| {
        let mut out = Vec::new();
        goosepipe::app::show(what, &p.store(), false, true, &mut out)
            .map(|_| String::from_utf8(out).unwrap())
            .map_err(|e| format!("{e}"))
    };
    let err = show("a").unwrap_err();
    assert!(
        err.contains("\"a\" names several steps in this store (")
            && err.contains("expert:a")
            && err.contains("dataset:a")
            && err.contains("give the step id"),
        "{err}"
    );
    assert_eq!(show("p").unwrap(), show("pool:p").unwrap());
    assert!(show("expert:a").is_ok());
    // Too short to be a key prefix: said (it read as "no artifact matches").
    let three = Store::open(p.store()).unwrap().find("pool:p").unwrap().key.hex()[..3].to_string();
    let err = show(&three).unwrap_err();
    assert!(err.contains("a key prefix needs at least 4 hex digits"), "{err}");
    // A prefix copied in upper case is the same key (exec takes it so too).
    let upper = Store::open(p.store()).unwrap().find("pool:p").unwrap().key.hex()[..20].to_ascii_uppercase();
    assert!(upper.bytes().any(|b| b.is_ascii_alphabetic()), "{upper}");
    assert_eq!(show(&upper).unwrap(), show("pool:p").unwrap());

    // A name made of hex digits may also start a key: refused, naming both (it showed
    // the artifact of the key, silently).
    let store = Store::open(p.store()).unwrap();
    let pool = store.find("pool:p").unwrap().key.hex()[..6].to_string();
    p.write(&format!(
        "{BASE}\ndataset \"{pool}\" hub=\"org/data\" config=\"x\"\n"
    ));
    let (code, out) = p.run(&reg, &RunOptions::default());
    assert_eq!(code, 0, "{out}");
    let err = show(&pool).unwrap_err();
    assert!(
        err.contains(&format!("{pool:?} is both the start of the key"))
            && err.contains(&format!("the name of dataset:{pool}")),
        "{err}"
    );
    assert!(show(&format!("dataset:{pool}")).is_ok());
    // So is one whose step shares another's artifact (a twin: the artifact records the
    // other's name, so only the run's record of names knows it).
    let seven = store.find("pool:p").unwrap().key.hex()[..7].to_string();
    p.write(&format!(
        "{BASE}
dataset \"{pool}\" hub=\"org/data\" config=\"x\"\ndataset \"{seven}\" hub=\"org/data\" config=\"a\"\n"
    ));
    let (code, out) = p.run(&reg, &RunOptions::default());
    assert_eq!(code, 0, "{out}");
    let err = show(&seven).unwrap_err();
    assert!(
        err.contains(&format!("{seven:?} is both the start of the key"))
            && err.contains(&format!("the name of dataset:{seven}")),
        "{err}"
    );
}

/// A run started while a gc holds the store waits for the gc, says so, then runs.
#[test]
fn a_run_waits_for_a_gc_under_way() {
    let p = Project::new(BASE);
    let reg = registry(&Log::default(), &Behaviour::default());
    let store = Store::open(p.store()).unwrap();
    let gc = store.alone().unwrap().expect("no run yet");
    let run = {
        let (manifest, root, reg) = (p.manifest(), p.store(), reg.clone());
        std::thread::spawn(move || {
            run_manifest(&manifest, &root, &reg, &RunOptions::default(), &CancelFlag::new())
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !run.is_finished(),
        "the run must wait while the gc holds the store"
    );
    assert!(store.keys().is_empty());
    drop(gc);
    let (code, out) = run.join().unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("waiting for a gc of the store"), "{out}");
    assert!(!store.keys().is_empty());
}

/// A run that waits for another run building the same key stops at Ctrl-C, at
/// once: it waited until the other run let go (hours, for a training step) and only
/// then stopped.
#[test]
fn a_run_waiting_for_another_runs_key_stops_when_cancelled() {
    let p = Project::new(BASE);
    let reg = registry(&Log::default(), &Behaviour::default());
    let store = Store::open(p.store()).unwrap();
    let held = store.lock(&key_of(&p, &reg, "expert:a")).unwrap();
    let cancel = CancelFlag::new();
    let run = {
        let (manifest, root, reg, cancel) = (p.manifest(), p.store(), reg.clone(), cancel.clone());
        std::thread::spawn(move || run_manifest(&manifest, &root, &reg, &RunOptions::default(), &cancel))
    };
    let waiting = Instant::now();
    while !run.is_finished() && waiting.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!run.is_finished(), "the run must wait while the key is held");
    cancel.cancel();
    let asked = Instant::now();
    while !run.is_finished() && asked.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(run.is_finished(), "still waiting 10 s after Ctrl-C");
    let (code, out) = run.join().unwrap();
    assert_eq!(code, 130, "{out}");
    assert!(out.contains("interrupted:"), "{out}");
    assert!(!store.object_dir(&key_of(&p, &reg, "expert:a")).exists());
    drop(held);
}

/// A device other than the CPU is opened before any step runs (a build without CUDA
/// says so at once, building nothing), and only when something will run.
#[test]
fn the_device_is_checked_before_anything_runs_and_only_then() {
    if cfg!(feature = "cuda") {
        return;
    }
    let log = Log::default();
    let reg = registry(&log, &Behaviour::default());
    let p = Project::new(BASE);
    let cuda = RunOptions {
        device: "cuda".into(),
        ..Default::default()
    };
    let err = p.refused(&reg, &cuda);
    assert!(err.contains("--device cuda: "), "{err}");
    assert!(log.take().is_empty(), "nothing ran");
    let (code, out) = p.run(&reg, &RunOptions::default());
    assert_eq!(code, 0, "{out}");
    let (code, out) = p.run(&reg, &cuda);
    assert_eq!(code, 0, "a run with nothing to do needs no device: {out}");
}

/// Two manifests share one store: a gc given one of them keeps what the other's
/// lockfile pins, and says so (it used to delete the other's work silently);
/// `--only-given` collects it; once the other manifest is gone, so is its claim.
#[test]
fn gc_of_one_manifest_keeps_a_sibling_manifests_work_unless_told() {
    let reg = registry(&Log::default(), &Behaviour::default());
    let p = Project::new(BASE);
    let sibling = p.dir.path().join("sibling.kdl");
    std::fs::write(&sibling, BASE.replace("config=\"b\"", "config=\"other\"")).unwrap();
    p.run(&reg, &RunOptions::default());
    let run_sibling = || {
        run_manifest(
            &sibling,
            &p.store(),
            &reg,
            &RunOptions::default(),
            &CancelFlag::new(),
        )
    };
    let (code, out) = run_sibling();
    assert_eq!(code, 0, "{out}");
    let store = Store::open(p.store()).unwrap();
    let sibling_plan = support::plan_of(&sibling, &reg);
    let theirs = sibling_plan.get("expert:b").unwrap().spec.key;
    assert_ne!(theirs, key_of(&p, &reg, "expert:b"));

    let gc = |dry_run: bool, only_given: bool| {
        let mut out = Vec::new();
        goosepipe::app::gc(&[p.manifest()], &p.store(), &reg, dry_run, only_given, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    };
    let said = gc(false, false);
    assert!(
        said.contains("keeping ") && said.contains("sibling.kdl reaches") && said.contains("--only-given"),
        "{said}"
    );
    assert!(store.object_dir(&theirs).exists(), "{said}");
    let (code, out) = run_sibling();
    assert!(code == 0 && out.contains("nothing to do"), "{out}");

    // Without its lockfile the sibling is planned: still kept. With a damaged one,
    // gc cannot tell what it needs and says so (unless --only-given).
    let sibling_lock = goosepipe::store::lockfile::lock_path(&sibling);
    let pins = std::fs::read(&sibling_lock).unwrap();
    std::fs::remove_file(&sibling_lock).unwrap();
    gc(false, false);
    assert!(store.object_dir(&theirs).exists());
    std::fs::write(&sibling_lock, "<<<<<<< HEAD\n").unwrap();
    let mut out = Vec::new();
    let err = goosepipe::app::gc(&[p.manifest()], &p.store(), &reg, false, false, &mut out).unwrap_err();
    assert!(
        err.to_string()
            .contains("sibling.kdl ran on this store, and gc cannot tell what it needs"),
        "{err:?}"
    );
    assert!(store.object_dir(&theirs).exists());
    std::fs::write(&sibling_lock, &pins).unwrap();

    // Left broken by an edit (a half-typed node), it does not plan: what its lockfile
    // pins is kept, and said; without a lockfile gc cannot tell what it needs and
    // stops (it used to collect the sibling's whole work without a word).
    let text = std::fs::read_to_string(&sibling).unwrap();
    std::fs::write(&sibling, format!("{text}\ndataset \"oops\" {{\n")).unwrap();
    let said = gc(true, false);
    assert!(
        said.contains("sibling.kdl ran on this store and does not plan now (")
            && said.contains("): keeping what its lockfile pins"),
        "{said}"
    );
    assert!(!said.contains("expert:b)"), "{said}");
    std::fs::remove_file(&sibling_lock).unwrap();
    let err =
        goosepipe::app::gc(&[p.manifest()], &p.store(), &reg, false, false, &mut Vec::new()).unwrap_err();
    assert!(
        err.to_string()
            .contains("sibling.kdl ran on this store and does not plan now (")
            && err
                .to_string()
                .contains("no lockfile beside it pins what it built: gc cannot tell what it needs"),
        "{err:?}"
    );
    assert!(store.object_dir(&theirs).exists());
    std::fs::write(&sibling, text).unwrap();
    std::fs::write(&sibling_lock, pins).unwrap();

    // Its record in the store emptied (a full disk, a stray edit): not taken for a
    // manifest that is gone (gc deleted its work), but said, naming the record.
    let record = std::fs::read_dir(p.store().join("runs/manifests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|r| std::fs::read_to_string(r).unwrap().ends_with("sibling.kdl\n"))
        .unwrap();
    std::fs::write(&record, "").unwrap();
    let mut out = Vec::new();
    let err = goosepipe::app::gc(&[p.manifest()], &p.store(), &reg, false, false, &mut out).unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "{} records a manifest that ran on this store, and names none (not one path and a newline)",
            record.display()
        )),
        "{err:?}"
    );
    assert!(store.object_dir(&theirs).exists());
    // Given to gc itself, its damaged record costs nothing: what it reaches is kept.
    goosepipe::app::gc(
        &[p.manifest(), sibling.clone()],
        &p.store(),
        &reg,
        false,
        false,
        &mut Vec::new(),
    )
    .unwrap();
    assert!(store.object_dir(&theirs).exists());
    let (code, out) = run_sibling();
    assert!(code == 0 && out.contains("nothing to do"), "{out}");
    assert!(
        std::fs::read_to_string(&record)
            .unwrap()
            .ends_with("sibling.kdl\n"),
        "the next run writes it again"
    );

    let listing = gc(true, true);
    assert!(
        listing.contains("collecting ") && listing.contains("(unreachable artifact: expert:b)"),
        "{listing}"
    );
    assert!(store.object_dir(&theirs).exists(), "dry run deletes nothing");
    gc(false, true);
    assert!(!store.object_dir(&theirs).exists());
    assert!(
        p.stale(&reg).is_empty(),
        "the given manifest keeps everything it needs"
    );

    // A manifest that no longer exists is forgotten: nothing is kept for it.
    let (code, out) = run_sibling();
    assert_eq!(code, 0, "{out}");
    std::fs::remove_file(&sibling).unwrap();
    let said = gc(false, false);
    assert!(
        said.contains("sibling.kdl ran on this store and no longer exists"),
        "{said}"
    );
    assert!(!store.object_dir(&theirs).exists(), "{said}");
    assert!(
        store
            .recorded_manifests()
            .0
            .iter()
            .all(|m| !m.ends_with("sibling.kdl"))
    );

    // Run through a symlink: its lockfile lies beside the link, and gc reads it there.
    let real = p.dir.path().join("real.kdl");
    std::fs::write(&real, BASE.replace("config=\"b\"", "config=\"linked\"")).unwrap();
    let link = p.dir.path().join("links");
    std::fs::create_dir(&link).unwrap();
    std::os::unix::fs::symlink(&real, link.join("current.kdl")).unwrap();
    let (code, out) = run_manifest(
        &link.join("current.kdl"),
        &p.store(),
        &reg,
        &RunOptions::default(),
        &CancelFlag::new(),
    );
    assert_eq!(code, 0, "{out}");
    assert!(link.join("current.kdl.lock").is_file());
    let linked = support::plan_of(&real, &reg).get("expert:b").unwrap().spec.key;
    // Planned through the link's lockfile: the edit below leaves the pinned expert
    // reachable only through that lockfile.
    std::fs::write(&real, BASE.replace("config=\"b\"", "config=\"edited\"")).unwrap();
    let said = gc(false, false);
    assert!(said.contains("current.kdl reaches"), "{said}");
    assert!(store.object_dir(&linked).exists(), "{said}");
}

/// `--store DIR` on a folder of the user's own files: refused before anything is
/// written (it was taken as a store, and gc then deleted the user's files under its
/// tmp/, work/, names/ and locks/ as leftovers). In a real store, gc deletes only
/// names goosepipe writes; a store of a goosepipe from before the marker still opens.
#[test]
fn a_folder_of_ones_own_files_is_never_taken_as_a_store_nor_tidied_by_gc() {
    let reg = registry(&Log::default(), &Behaviour::default());
    let p = Project::new(BASE);
    // A user's folder that happens to have a `work` folder.
    let theirs = p.dir.path().join("mine");
    p.file("mine/work/thesis.tex", "precious");
    p.file("mine/notes.txt", "mine");
    // A run on `store`, which refuses it.
    let refused = |store: &std::path::Path| {
        goosepipe::app::run(
            &p.manifest(),
            store,
            &reg,
            &RunOptions::default(),
            true,
            &CancelFlag::new(),
            &mut Vec::new(),
        )
        .unwrap_err()
    };
    let err = refused(&theirs);
    assert!(
        format!("{err}").contains(
            "is not a goosepipe store: it holds notes.txt, and a store is made only in a new or empty folder"
        ),
        "{err:?}"
    );
    let mut gc_out = Vec::new();
    let err = goosepipe::app::gc(&[p.manifest()], &theirs, &reg, false, false, &mut gc_out).unwrap_err();
    assert!(format!("{err}").contains("is not a goosepipe store"), "{err}");
    let mut names: Vec<_> = std::fs::read_dir(&theirs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["notes.txt", "work"], "nothing was written there");
    assert_eq!(
        std::fs::read_to_string(theirs.join("work/thesis.tex")).unwrap(),
        "precious"
    );
    // plan refuses it as run does (it read the objects/ there as artifacts, and
    // --check-cached passed), and leaves no hash cache there.
    let opts = goosepipe::app::PlanOptions {
        check_cached: true,
        device: "cpu".into(),
        ..Default::default()
    };
    let err = goosepipe::app::plan_cmd(&p.manifest(), &theirs, &reg, &opts, &mut Vec::new()).unwrap_err();
    assert!(format!("{err}").contains("is not a goosepipe store"), "{err}");
    assert!(!theirs.join("hashcache.json").exists());

    // A real store: files put into its folders by hand are not gc's to delete.
    let (code, out) = p.run(&reg, &RunOptions::default());
    assert_eq!(code, 0, "{out}");
    assert!(p.store().join(goosepipe::store::identity::MARKER).is_file());
    let by_hand = [
        "tmp/notes.txt",
        "work/draft",
        "names/list.txt",
        "locks/todo",
        "recipes/x.json",
    ];
    for f in by_hand {
        p.file(&format!(".goosepipe/{f}"), "mine");
    }
    let junk_key = "0".repeat(64);
    p.file(
        &format!(".goosepipe/work/{junk_key}/ckpt"),
        "scratch of a step gone",
    );
    p.file(".goosepipe/tmp/gc.123", "a gc's leftover");
    let mut said = Vec::new();
    goosepipe::app::gc(&[p.manifest()], &p.store(), &reg, false, false, &mut said).unwrap();
    for f in by_hand {
        assert!(p.store().join(f).exists(), "gc deleted {f}");
    }
    assert!(!p.store().join("work").join(&junk_key).exists());
    assert!(!p.store().join("tmp/gc.123").exists());

    // A folder inside the store given as --store: the store is named, not a new store
    // inside it suggested.
    let store_real = std::fs::canonicalize(p.store()).unwrap();
    for inside in ["objects", "tmp", "new"] {
        let err = refused(&p.store().join(inside));
        assert!(
            format!("{err}").contains(&format!(
                "is inside the goosepipe store at {}: a store is never made inside another",
                store_real.display()
            )),
            "{inside}: {err:?}"
        );
        assert!(
            format!("{err:?}").contains(&format!("pass --store {}", store_real.display())),
            "{err:?}"
        );
    }
    assert!(!p.store().join("new").exists(), "nothing made there");

    // A store laid out by a goosepipe from before the marker opens, and gets it.
    std::fs::remove_file(p.store().join(goosepipe::store::identity::MARKER)).unwrap();
    let (code, out) = p.run(&reg, &RunOptions::default());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("nothing to do"), "{out}");
    assert!(p.store().join(goosepipe::store::identity::MARKER).is_file());
}

/// An artifact deleted while everything after it is cached is not rebuilt (nothing
/// that runs needs it); the run said "all 12 steps are cached", and nothing said how
/// to get it back. It now names it and the command that rebuilds it, which does.
#[test]
fn a_run_names_an_artifact_it_leaves_out_as_not_needed_and_how_to_rebuild_it() {
    let log = Log::default();
    let reg = registry(&log, &Behaviour::default());
    let p = Project::new(BASE);
    assert_eq!(p.run(&reg, &RunOptions::default()).0, 0);
    let store = Store::open(p.store()).unwrap();
    std::fs::remove_dir_all(store.object_dir(&key_of(&p, &reg, "expert:b"))).unwrap();
    log.take();
    let (code, out) = p.run(&reg, &RunOptions::default());
    assert_eq!(code, 0, "{out}");
    assert!(log.take().is_empty(), "nothing needed it: nothing ran");
    assert!(
        out.contains("nothing to do: 11 steps are cached; 1 not needed, not rebuilt (artifact gone, and nothing that runs reads it: expert:b)")
            && out.contains("--until expert:b` rebuilds it"),
        "{out}"
    );
    // Also when what it needs is gone too (--only refused that).
    std::fs::remove_dir_all(store.object_dir(&key_of(&p, &reg, "dataset:b"))).unwrap();
    let (code, out) = p.run(
        &reg,
        &RunOptions {
            until: Some("expert:b".into()),
            ..Default::default()
        },
    );
    assert_eq!(code, 0, "{out}");
    assert!(store.meta(&key_of(&p, &reg, "expert:b")).is_some(), "{out}");
}

/// A file this user may not read (a shared store, another user's umask) is not
/// damage: `verify` says it apart and moves nothing, and a run that reads it stops
/// naming the file instead of moving the intact artifact aside to rebuild it. (Root
/// reads every file: as root the test runs itself again without the capabilities
/// that let it, so CI, which runs as root, sees it too.)
#[test]
fn an_unreadable_artifact_is_not_taken_for_a_corrupt_one() {
    use std::os::unix::fs::PermissionsExt;
    const AGAIN: &str = "GOOSEPIPE_TEST_WITHOUT_DAC";
    if unsafe { libc::geteuid() } == 0 && std::env::var_os(AGAIN).is_none() {
        let name = "engine_store::an_unreadable_artifact_is_not_taken_for_a_corrupt_one";
        let run = std::process::Command::new("setpriv")
            .arg("--bounding-set=-dac_override,-dac_read_search")
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .env(AGAIN, "1")
            .output();
        match run {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("skipped: root reads every file, and there is no setpriv to stop it");
            }
            Err(e) => panic!("setpriv: {e}"),
            Ok(out) => {
                let said =
                    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
                assert!(out.status.success() && said.contains("1 passed"), "{said}");
            }
        }
        return;
    }
    let reg = registry(&Log::default(), &Behaviour::default());
    let p = Project::new(BASE);
    assert_eq!(p.run(&reg, &RunOptions::default()).0, 0);
    let store = Store::open(p.store()).unwrap();
    let key = key_of(&p, &reg, "expert:b");
    let meta = store.meta(&key).unwrap();
    let file = store.files_dir(&key).join(&meta.files[0].path);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o000)).unwrap();
    let mut out = Vec::new();
    let code = goosepipe::app::verify(&[p.manifest()], false, &p.store(), &reg, &mut out).unwrap();
    let said = String::from_utf8(out).unwrap();
    assert_eq!(code, 1);
    assert!(
        said.contains("0 corrupt, 1 unreadable by this user (not checked, nothing moved)"),
        "{said}"
    );
    assert!(store.object_dir(&key).exists());
    // A run that must read it (its gate is stale) stops on it.
    p.write(&BASE.replace("gate steps=5", "gate steps=6"));
    let run_now = || {
        let mut out = Vec::new();
        let r = goosepipe::app::run(
            &p.manifest(),
            &p.store(),
            &reg,
            &RunOptions::default(),
            true,
            &CancelFlag::new(),
            &mut out,
        );
        (r, String::from_utf8_lossy(&out).to_string())
    };
    let (err, said) = run_now();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = format!("{:?}{said}", err.unwrap_err());
    assert!(err.contains("Permission denied"), "{err}");
    assert!(store.verify(&key).is_ok(), "left where it was, intact");
    // Its metadata unreadable (another user's umask on the whole artifact): the
    // same, not "meta.json unreadable: corrupt", moved aside and rebuilt.
    let meta = store.object_dir(&key).join("meta.json");
    std::fs::set_permissions(&meta, std::fs::Permissions::from_mode(0o000)).unwrap();
    let mut out = Vec::new();
    let code = goosepipe::app::verify(&[p.manifest()], false, &p.store(), &reg, &mut out).unwrap();
    let said = String::from_utf8(out).unwrap();
    assert_eq!(code, 1);
    assert!(said.contains("1 unreadable by this user"), "{said}");
    // `show` says so too, and does not advise moving it aside.
    let shown = goosepipe::app::show("expert:b", &p.store(), false, false, &mut Vec::new())
        .unwrap_err()
        .to_string();
    assert!(
        shown.contains("cannot be read by this user") && !shown.contains("moves it aside"),
        "{shown}"
    );
    let (err, said) = run_now();
    std::fs::set_permissions(&meta, std::fs::Permissions::from_mode(0o644)).unwrap();
    let text = match err {
        Ok(_) => said,
        Err(e) => format!("{e:?}{said}"),
    };
    assert!(
        text.contains("ermission denied") || text.contains("may not read"),
        "{text}"
    );
    assert!(store.verify(&key).is_ok(), "left where it was, intact: {text}");
}

/// What a meta.json says reaches `show`'s terminal as text: an edited host with
/// escape sequences (a colour, a window title) is shown escaped, never interpreted.
#[test]
fn show_escapes_control_characters_read_from_an_artifact() {
    let (p, _, _) = pool_with_edited_meta(|meta| {
        meta["host"] = serde_json::json!("box\u{1b}[31m\u{1b}]0;owned\u{7}");
        // And a build that ends before it starts (a clock set back): no negative time.
        meta["finished_unix"] = serde_json::json!(meta["started_unix"].as_f64().unwrap() - 5.0);
    });
    let mut out = Vec::new();
    goosepipe::app::show("pool:p", &p.store(), false, false, &mut out).unwrap();
    let shown = String::from_utf8(out).unwrap();
    assert!(
        shown.contains("in an unknown time (its recorded end is before its start"),
        "{shown}"
    );
    assert!(!shown.contains("in -"), "{shown}");
    assert!(!shown.contains('\u{1b}') && !shown.contains('\u{7}'), "{shown:?}");
    assert!(shown.contains(r"box\u{1b}[31m\u{1b}]0;owned\u{7}"), "{shown}");
}

/// A meta.json of another format (edited, or from a version that lays artifacts out
/// otherwise) is not read as ours: the store's check says which format.
#[test]
fn an_artifact_of_another_metadata_format_is_not_taken() {
    let (_p, store, key) = pool_with_edited_meta(|meta| meta["format"] = serde_json::json!(99));
    let err = store.verify(&key).unwrap_err().to_string();
    assert!(
        err.contains("meta.json is in format 99, and this goosepipe reads format 1"),
        "{err}"
    );
}

/// Every reader holds a step's record to its key as `verify` does: `show` says the
/// edited artifact is corrupt instead of describing another step, and `run --verify`
/// rebuilds it (and only it) instead of keeping it.
#[test]
fn show_and_run_verify_do_not_take_an_edited_record_for_its_key() {
    let (p, store, key) =
        pool_with_edited_meta(|meta| meta["spec"]["params"]["top-k"] = serde_json::json!(5));
    let mut out = Vec::new();
    let code = goosepipe::app::show("pool:p", &p.store(), false, false, &mut out).unwrap();
    let shown = String::from_utf8(out).unwrap();
    assert_eq!(code, 1, "{shown}");
    assert!(
        shown.contains("CORRUPT: ") && shown.contains("does not hash to its key (edited by hand?)"),
        "{shown}"
    );
    let log = Log::default();
    let reg = registry(&log, &Behaviour::default());
    let (code, out) = p.run(
        &reg,
        &RunOptions {
            verify: true,
            ..RunOptions::default()
        },
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(log.take(), vec!["pool:p".to_string()], "{out}");
    assert!(
        goosepipe::plan::integrity::verify(&store, &key).is_ok(),
        "rebuilt under its key, its record as the key was made"
    );
}

/// A built project whose `pool:p` artifact has its meta.json edited by `edit`.
fn pool_with_edited_meta(
    edit: impl FnOnce(&mut serde_json::Value),
) -> (Project, Store, goosepipe::store::Key) {
    let reg = registry(&Log::default(), &Behaviour::default());
    let p = Project::new(BASE);
    let (code, out) = p.run(&reg, &RunOptions::default());
    assert_eq!(code, 0, "{out}");
    let store = Store::open(p.store()).unwrap();
    let key = store.find("pool:p").unwrap().key;
    let meta_file = store.object_dir(&key).join("meta.json");
    let mut meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta_file).unwrap()).unwrap();
    edit(&mut meta);
    std::fs::write(&meta_file, serde_json::to_vec(&meta).unwrap()).unwrap();
    (p, store, key)
}

/// An artifact whose meta.json records another step than the one its key was made from
/// (its kind edited by hand; every file intact) is not taken for that step: `verify`
/// says so and moves it aside, and a run rebuilds it.
#[test]
fn verify_finds_an_artifact_whose_recorded_step_was_edited() {
    let (p, store, key) = pool_with_edited_meta(|meta| meta["spec"]["kind"] = serde_json::json!("eval"));
    let reg = registry(&Log::default(), &Behaviour::default());
    let mut out = Vec::new();
    let code = goosepipe::app::verify(&[p.manifest()], false, &p.store(), &reg, &mut out).unwrap();
    let said = String::from_utf8(out).unwrap();
    assert_eq!(code, 1, "{said}");
    assert!(
        said.contains(&format!(
            "does not hash to its key (edited by hand?); moved aside, `goosepipe run {} --store {}` rebuilds it",
            p.manifest().display(),
            p.store().display()
        )),
        "{said}"
    );
    // With --all, the hint names no manifest of its own, and still the store.
    let hint = goosepipe::store::corrupt_help(&p.store());
    assert_eq!(
        hint,
        format!(
            "`goosepipe verify --all --store {0}` moves it aside, `goosepipe run MANIFEST --store {0}` rebuilds it",
            p.store().display()
        )
    );
    assert!(store.meta(&key).is_none(), "moved aside");
    // The rest of the store hashes to its keys: nothing else was said.
    assert!(said.contains(", 1 corrupt"), "{said}");
}
