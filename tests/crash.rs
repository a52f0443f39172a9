//! Crash safety, tested the way it fails: the real binary is killed (aborted, as by
//! `kill -9`) at every point where a step has written one file and not yet the next
//! (GOOSEPIPE_FAULT, see src/faults.rs), run after run, and the store must then publish
//! byte-identical artifacts to an uninterrupted run's, never a partial object, and
//! leave no work folder behind. Damaged checkpoints are discarded with a warning.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use goosepipe::store::Store;

/// Every step kind that writes more than one file or checkpoints: pretraining (its
/// checkpoint at step 100), two experts and the multitask LoRA (checkpoints at steps 4
/// and 8), gates, and an eval whose (method, task) results are saved one by one.
const MANIFEST: &str = r#"
pipeline "crash"
dataset "corpus" { synthetic task="corpus" examples=200 seed=1; }
model "t" {
    init corpus="corpus" d-model=16 d-ff=32 d-kv=8 heads=2 layers=1 seed=3 pretrain-steps=104 batch=4
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
    methods "phatgoose" "base" "multitask" "expert:sort"
    task "arrange" dataset="arrange"
    task "arrange-gen" dataset="arrange" metric="exact-match" max-new-tokens=4
}
"#;

struct Run {
    code: Option<i32>,
    text: String,
}

fn goosepipe(dir: &Path, fault: Option<&str>, args: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_goosepipe"));
    cmd.args(args)
        .arg("--store")
        .arg(dir.join("store"))
        .current_dir(dir)
        .env_remove("GOOSEPIPE_FAULT");
    if let Some(f) = fault {
        cmd.env("GOOSEPIPE_FAULT", f);
    }
    let out = cmd.output().expect("the goosepipe binary runs");
    Run {
        code: out.status.code(),
        text: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn setup() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("crash.kdl"), MANIFEST).unwrap();
    d
}

fn run(dir: &Path, fault: Option<&str>) -> Run {
    goosepipe(dir, fault, &["run", "crash.kdl"])
}

/// Step id -> digest of every published artifact.
fn digests(dir: &Path) -> BTreeMap<String, String> {
    let store = Store::open(dir.join("store")).unwrap();
    store
        .keys()
        .into_iter()
        .map(|k| {
            let m = store.verify(&k).expect("every published artifact verifies");
            (m.spec.id.clone(), m.digest)
        })
        .collect()
}

fn reference() -> BTreeMap<String, String> {
    let d = setup();
    let r = run(d.path(), None);
    assert_eq!(r.code, Some(0), "{}", r.text);
    digests(d.path())
}

fn work_left(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("store/work"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills the pipeline at every write point of a whole run, one kill per fresh store
/// (`*:K`: the K-th point reached, for every K until a run finishes), then resumes
/// it. Every write of every step kind gets cut this way; everything published must
/// equal the uninterrupted run, and nothing is left in work/ after gc.
#[test]
fn a_kill_between_any_two_writes_resumes_to_identical_bytes() {
    let want = reference();
    assert_eq!(want.len(), 14, "{want:?}");
    let mut kills: BTreeMap<String, usize> = BTreeMap::new();
    for k in 1.. {
        assert!(k < 200, "the pipeline does not finish: {kills:?}");
        let d = setup();
        let r = run(d.path(), Some(&format!("*:{k}")));
        if r.code == Some(0) {
            break;
        }
        let point = goosepipe::faults::POINTS
            .iter()
            .find(|p| r.text.contains(&format!("fault injected at {p} ")))
            .unwrap_or_else(|| panic!("*:{k}: {}", r.text));
        *kills.entry(point.to_string()).or_default() += 1;
        let r = run(d.path(), None);
        assert_eq!(r.code, Some(0), "after a kill at {point} (*:{k}): {}", r.text);
        assert_eq!(digests(d.path()), want, "after a kill at {point} (*:{k})");
        let gc = goosepipe(d.path(), None, &["gc", "crash.kdl"]);
        assert_eq!(gc.code, Some(0), "{}", gc.text);
        assert!(work_left(d.path()).is_empty(), "*:{k}: {:?}", work_left(d.path()));
    }
    // Pretraining checkpoints once, the two experts and the multitask LoRA twice each;
    // the eval marks and saves 8 (method, task) results; 14 steps publish.
    let want_kills = [
        ("checkpoint.written", 7),
        ("checkpoint.previous-kept", 7),
        ("checkpoint.replaced", 7),
        ("eval.part-claimed", 8),
        ("eval.task-saved", 8),
        ("publish.meta-written", 14),
        ("publish.renamed", 14),
    ];
    for (point, n) in want_kills {
        assert_eq!(kills.get(point).copied(), Some(n), "{kills:?}");
    }
}

/// The worst moments of the old two-file checkpoint, many times over: a kill right
/// after a checkpoint is written, after the previous one is moved aside and after the
/// new one is renamed in, at each of the first six checkpoint writes of a run, each
/// run resuming what the last one left.
#[test]
fn kills_around_every_checkpoint_write_keep_the_experts_identical() {
    let want = reference();
    let d = setup();
    for n in 1..=6 {
        for point in [
            "checkpoint.written",
            "checkpoint.previous-kept",
            "checkpoint.replaced",
        ] {
            let r = run(d.path(), Some(&format!("{point}:{n}")));
            if r.code != Some(0) {
                assert!(r.text.contains("fault injected"), "{}", r.text);
            }
        }
    }
    let r = run(d.path(), None);
    assert_eq!(r.code, Some(0), "{}", r.text);
    assert_eq!(digests(d.path()), want);
    let path = goosepipe(d.path(), None, &["show", "expert:sort", "--path"]);
    assert_eq!(path.code, Some(0), "{}", path.text);
    let folder = std::path::PathBuf::from(path.text.trim());
    assert!(folder.join("expert.safetensors").is_file(), "{}", path.text);
}

/// A checkpoint damaged on disk (a flipped bit) is discarded with a warning and the
/// step restarts from scratch, publishing the same bytes; the work folder is reused,
/// not left to fail every later run.
#[test]
fn a_damaged_checkpoint_is_discarded_and_training_restarts() {
    let want = reference();
    let d = setup();
    // Die right after the first expert checkpoint is in place.
    let r = run(d.path(), Some("checkpoint.replaced:2"));
    assert_ne!(r.code, Some(0), "{}", r.text);
    let work: Vec<_> = work_left(d.path());
    let damaged = work
        .iter()
        .map(|k| {
            d.path()
                .join("store/work")
                .join(k)
                .join("train-state.safetensors")
        })
        .find(|p| p.exists())
        .expect("a checkpoint in a work folder");
    let mut bytes = std::fs::read(&damaged).unwrap();
    let at = bytes.len() - 5;
    bytes[at] ^= 0x10;
    std::fs::write(&damaged, &bytes).unwrap();
    let r = run(d.path(), None);
    assert_eq!(r.code, Some(0), "{}", r.text);
    assert!(
        r.text.contains("discarded the damaged checkpoint")
            && r.text.contains("do not match their recorded digest"),
        "{}",
        r.text
    );
    assert_eq!(digests(d.path()), want);
    // Garbage in place of a checkpoint: same outcome.
    let d = setup();
    let r = run(d.path(), Some("checkpoint.replaced:2"));
    assert_ne!(r.code, Some(0));
    let k = work_left(d.path()).into_iter().next().unwrap();
    std::fs::write(
        d.path()
            .join("store/work")
            .join(&k)
            .join("train-state.safetensors"),
        b"",
    )
    .unwrap();
    let r = run(d.path(), None);
    assert_eq!(r.code, Some(0), "{}", r.text);
    assert!(r.text.contains("discarded the damaged checkpoint"), "{}", r.text);
    assert_eq!(digests(d.path()), want);
}

/// An eval killed after some (method, task) results are saved resumes from them, and
/// says so; plan calls the interrupted step interrupted, not missing.
#[test]
fn an_interrupted_eval_resumes_per_task_and_plan_says_so() {
    let want = reference();
    let d = setup();
    let r = run(d.path(), Some("eval.task-saved:3"));
    assert_ne!(r.code, Some(0), "{}", r.text);
    // What plan says of the eval: interrupted, not missing, and how much is saved.
    let plan_says = |kept: usize| {
        let plan = goosepipe(d.path(), None, &["plan", "crash.kdl"]);
        let resumes = "interrupted in an earlier run; resumes from its saved progress";
        assert!(plan.text.contains(resumes), "{}", plan.text);
        assert!(!plan.text.contains("artifact missing"), "{}", plan.text);
        let count = format!(
            "{} of 8 (method, task) results to score, {kept} kept from an interrupted run",
            8 - kept
        );
        assert!(plan.text.contains(&count), "{}", plan.text);
    };
    plan_says(3);
    // Each part was marked before it was scored.
    let progress = work_left(d.path())
        .into_iter()
        .map(|k| d.path().join("store/work").join(k).join("eval-progress"))
        .find(|p| p.exists())
        .expect("the eval's saved results");
    let marks = std::fs::read_dir(&progress)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "claim")
        })
        .count();
    assert_eq!(marks, 3);
    // One saved result damaged (fewer scores than the task has examples, still valid
    // JSON under a digest that fits it): it is scored again, not published.
    let one = std::fs::read_dir(&progress)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .expect("a saved result");
    let file = std::fs::read(&one).unwrap();
    let json = &file[file.iter().position(|b| *b == b'\n').unwrap() + 1..];
    let mut f: serde_json::Value = serde_json::from_slice(json).unwrap();
    f["scores"].as_array_mut().unwrap().truncate(1);
    let json = serde_json::to_vec(&f).unwrap();
    let mut file = format!("{}\n", blake3::hash(&json).to_hex()).into_bytes();
    file.extend_from_slice(&json);
    std::fs::write(&one, file).unwrap();
    plan_says(2);
    let r = run(d.path(), None);
    assert_eq!(r.code, Some(0), "{}", r.text);
    assert!(
        r.text.contains("resumed: 2 (method, task) result(s) were kept"),
        "{}",
        r.text
    );
    assert_eq!(digests(d.path()), want);
}

/// `plan` says how far an interrupted training step got: pretraining killed after
/// its checkpoint at step 100, then an expert after its checkpoint at step 8.
#[test]
fn plan_says_where_an_interrupted_training_step_resumes() {
    let d = setup();
    // Runs with a kill at `fault`, then: plan's line for the interrupted `kind`.
    let killed_at = |fault: &str, kind: &str| -> String {
        let r = run(d.path(), Some(fault));
        assert_ne!(r.code, Some(0), "{}", r.text);
        let plan = goosepipe(d.path(), None, &["plan", "crash.kdl"]).text;
        plan.lines()
            .find(|l| l.trim_start().starts_with(kind) && l.contains("interrupted"))
            .unwrap_or_else(|| panic!("no interrupted {kind}: {plan}"))
            .to_string()
    };
    let model = killed_at("checkpoint.replaced:1", "model");
    assert!(
        model.ends_with("; its saved state is at step 100 of 104"),
        "{model}"
    );
    // The second checkpoint of the next run: the first expert's at step 8 (the model
    // finishes without another).
    let expert = killed_at("checkpoint.replaced:2", "expert");
    assert!(
        expert.ends_with("; its saved state is at step 8 of 12"),
        "{expert}"
    );
    let plan = goosepipe(d.path(), None, &["plan", "crash.kdl"]);
    let model = plan
        .text
        .lines()
        .find(|l| l.trim_start().starts_with("model"))
        .unwrap();
    assert!(model.ends_with("  cached"), "the model is published: {model}");

    // Its saved states emptied (a full disk): plan promised a resume the run then
    // did not make; it says that the run starts afresh, as the run does.
    let work: Vec<std::path::PathBuf> = std::fs::read_dir(d.path().join("store/work"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("train-state.safetensors").is_file())
        .collect();
    assert_eq!(work.len(), 1, "{work:?}");
    for name in ["train-state.safetensors", "train-state.prev.safetensors"] {
        std::fs::write(work[0].join(name), b"").unwrap();
    }
    let plan = goosepipe(d.path(), None, &["plan", "crash.kdl"]).text;
    let expert = plan
        .lines()
        .find(|l| l.trim_start().starts_with("expert") && l.contains("interrupted"))
        .unwrap_or_else(|| panic!("{plan}"));
    assert!(
        expert
            .ends_with("; but its saved state cannot be used (cut short (0 bytes)): a run starts it afresh"),
        "{expert}"
    );
    let r = run(d.path(), None);
    assert_eq!(r.code, Some(0), "{}", r.text);
    assert!(r.text.contains("training starts from scratch"), "{}", r.text);
}

/// `checkpoint-every` changes no result, so no key: an expert interrupted under one
/// value is still interrupted (not stale) after an edit to another, resumes from its
/// saved state, checkpoints at the new value's steps, and publishes the bytes an
/// uninterrupted run under the old value does.
#[test]
fn checkpoint_every_is_no_key_and_an_edit_resumes_under_the_new_value() {
    let want = reference();
    let d = setup();
    let saved_state = |d: &Path| -> String {
        let plan = goosepipe(d, None, &["plan", "crash.kdl"]).text;
        plan.lines()
            .find(|l| l.trim_start().starts_with("expert") && l.contains("interrupted"))
            .unwrap_or_else(|| panic!("no interrupted expert: {plan}"))
            .to_string()
    };
    // The third checkpoint written: the model's at 100, the first expert's at 4, 8.
    let r = run(d.path(), Some("checkpoint.replaced:3"));
    assert_ne!(r.code, Some(0), "{}", r.text);
    let line = saved_state(d.path());
    assert!(line.ends_with("; its saved state is at step 8 of 12"), "{line}");
    let m = d.path().join("crash.kdl");
    let edited = std::fs::read_to_string(&m)
        .unwrap()
        .replace("checkpoint-every=4", "checkpoint-every=3");
    std::fs::write(&m, edited).unwrap();
    // The same key: still the interrupted step, nothing else stale.
    let line = saved_state(d.path());
    assert!(line.ends_with("; its saved state is at step 8 of 12"), "{line}");
    // The new value is the one read: the next checkpoint written is at a multiple of
    // 3 that 4 does not divide (the other expert's 3, or this one's 9, whichever the
    // run starts first).
    let r = run(d.path(), Some("checkpoint.replaced:1"));
    assert_ne!(r.code, Some(0), "{}", r.text);
    let plan = goosepipe(d.path(), None, &["plan", "crash.kdl"]).text;
    assert!(
        plan.lines().any(|l| l.trim_start().starts_with("expert")
            && (l.ends_with("its saved state is at step 3 of 12")
                || l.ends_with("its saved state is at step 9 of 12"))),
        "{plan}"
    );
    let r = run(d.path(), None);
    assert_eq!(r.code, Some(0), "{}", r.text);
    assert!(
        r.text.contains(": resumed from the checkpoint at step"),
        "{}",
        r.text
    );
    assert_eq!(digests(d.path()), want);
}

/// A kill between publishing and removing the work folder leaves the folder of a
/// published key (a cached step is not run again, so nothing else removes it); gc does.
#[test]
fn gc_removes_work_folders_of_published_keys() {
    let d = setup();
    let r = run(d.path(), Some("publish.renamed:10"));
    assert_ne!(r.code, Some(0), "{}", r.text);
    let store = Store::open(d.path().join("store")).unwrap();
    let orphan = work_left(d.path())
        .into_iter()
        .find(|k| store.object_dir(&k.parse().unwrap()).exists())
        .expect("the killed step's work folder, its key published");
    let r = run(d.path(), None);
    assert_eq!(r.code, Some(0), "{}", r.text);
    assert!(work_left(d.path()).contains(&orphan));
    let gc = goosepipe(d.path(), None, &["gc", "crash.kdl"]);
    assert_eq!(gc.code, Some(0), "{}", gc.text);
    assert!(
        gc.text.contains("checkpoints of an unreachable or finished step"),
        "{}",
        gc.text
    );
    assert!(
        work_left(d.path()).is_empty(),
        "{:?}\n{}",
        work_left(d.path()),
        gc.text
    );
}

/// Flips one byte of a published file, keeping its size.
fn flip(dir: &Path, step: &str, file: &str) {
    let store = Store::open(dir.join("store")).unwrap();
    let key = store
        .keys()
        .into_iter()
        .find(|k| store.meta(k).is_some_and(|m| m.spec.id == step))
        .unwrap();
    let p = store.files_dir(&key).join(file);
    let mut b = std::fs::read(&p).unwrap();
    let at = b.len() / 2;
    b[at] ^= 0x01;
    std::fs::write(&p, b).unwrap();
}

/// Same-size corruption is invisible to sizes and metadata: verify, plan --verify,
/// run --verify, show and report find it by re-hashing, move it aside, and the next run
/// rebuilds the same bytes.
#[test]
fn same_size_corruption_is_found_quarantined_and_rebuilt() {
    let want = reference();
    let d = setup();
    assert_eq!(run(d.path(), None).code, Some(0));
    flip(d.path(), "expert:sort", "expert.safetensors");
    let show = goosepipe(d.path(), None, &["show", "expert:sort"]);
    assert!(show.text.contains("status   CORRUPT"), "{}", show.text);
    assert_eq!(show.code, Some(1), "shown, and said by the exit code");
    let path = goosepipe(d.path(), None, &["show", "expert:sort", "--path"]);
    assert_eq!(
        path.code,
        Some(1),
        "a script must not get a corrupt folder: {}",
        path.text
    );
    assert!(path.text.contains("expert:sort is corrupt"), "{}", path.text);
    let quick = goosepipe(d.path(), None, &["plan", "crash.kdl", "--check-cached"]);
    assert_eq!(quick.code, Some(0), "sizes and metadata alone do not see it");
    let plan = goosepipe(
        d.path(),
        None,
        &["plan", "crash.kdl", "--check-cached", "--verify"],
    );
    assert_eq!(plan.code, Some(2), "{}", plan.text);
    assert!(
        plan.text
            .contains("artifact corrupt (expert.safetensors does not match its recorded blake3)"),
        "{}",
        plan.text
    );
    // A gc before the rebuild keeps the quarantined copy of a key the manifest still
    // needs (it is what makes the next run rebuild it; gc deleted it, and the expert
    // was then never rebuilt while everything downstream stayed cached).
    let gc = goosepipe(d.path(), None, &["gc", "crash.kdl"]);
    assert_eq!(gc.code, Some(0), "{}", gc.text);
    assert!(!gc.text.contains("quarantined"), "{}", gc.text);
    let r = run(d.path(), None);
    assert_eq!(r.code, Some(0), "{}", r.text);
    assert_eq!(digests(d.path()), want);

    flip(d.path(), "eval:e", "results.json");
    let v = goosepipe(d.path(), None, &["verify", "--all"]);
    assert_eq!(v.code, Some(1), "{}", v.text);
    assert!(v.text.contains("corrupt  eval:e"), "{}", v.text);
    assert!(v.text.contains("verified 14 artifact(s): 13 ok"), "{}", v.text);
    // Verified again before a run: the artifact moved aside is still missing, and
    // said so every time (a retried cron job saw "0 corrupt" and exit 0).
    for args in [&["verify", "crash.kdl"][..], &["verify", "--all"]] {
        let v = goosepipe(d.path(), None, args);
        assert_eq!(v.code, Some(1), "{args:?}: {}", v.text);
        assert!(
            v.text.contains("missing  eval:e") && v.text.contains("1 moved aside earlier and not rebuilt"),
            "{args:?}: {}",
            v.text
        );
    }
    // `show` says where it went (it said no artifact matched, as for a typo).
    let show = goosepipe(d.path(), None, &["show", "eval:e"]);
    assert_eq!(show.code, Some(1), "{}", show.text);
    assert!(
        crate::support::one_line(&show.text).contains("the artifact of eval:e (")
            && crate::support::one_line(&show.text).contains(
                "was moved aside as corrupt (by a verify, a report or a run) and is not rebuilt yet"
            ),
        "{}",
        show.text
    );
    let rep = goosepipe(d.path(), None, &["report", "crash.kdl"]);
    // Why the result is missing, as plan says it, and a command to copy: it names
    // the store this report read.
    let hint = format!(
        "eval:e: not in the store: artifact corrupt (found corrupt and moved aside) (run `goosepipe run crash.kdl --store {} --until eval:e`)",
        d.path().join("store").display()
    );
    assert!(rep.text.contains(&hint), "{}", rep.text);
    let r = goosepipe(d.path(), None, &["run", "crash.kdl", "--verify"]);
    assert_eq!(r.code, Some(0), "{}", r.text);
    assert_eq!(digests(d.path()), want);

    flip(d.path(), "eval:e", "results.md");
    let rep = goosepipe(d.path(), None, &["report", "crash.kdl"]);
    assert!(
        rep.text.contains("eval:e: its artifact is corrupt"),
        "{}",
        rep.text
    );
    assert_eq!(rep.code, Some(1), "{}", rep.text);
    let v = goosepipe(d.path(), None, &["verify"]);
    assert_ne!(v.code, Some(0), "verify needs manifests or --all");
}

/// A run into a store it had to make, of a manifest whose lockfile says its steps were
/// built (most often: started from another folder, `.goosepipe` being the current
/// folder's), says so before it rebuilds everything, naming the store beside the
/// manifest.
#[test]
fn a_run_into_a_new_store_of_a_built_manifest_says_so() {
    let d = setup();
    let project = d.path().join("project");
    std::fs::create_dir(&project).unwrap();
    std::fs::rename(d.path().join("crash.kdl"), project.join("crash.kdl")).unwrap();
    let run_in = |cwd: &Path, manifest: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_goosepipe"))
            .args(["run", manifest, "--until", "dataset:sort"])
            .current_dir(cwd)
            .env_remove("GOOSEPIPE_STORE")
            .env_remove("GOOSEPIPE_FAULT")
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = run_in(&project, "crash.kdl");
    assert!(!first.contains("no store was at"), "{first}");
    let elsewhere = run_in(d.path(), "project/crash.kdl");
    assert!(
        elsewhere.contains("note: no store was at .goosepipe before this run, so every step is built into it, though the lockfile says they were built; a store is beside the manifest at project/.goosepipe"),
        "{elsewhere}"
    );
    // Run again there: the store is its own now, nothing to say.
    let again = run_in(d.path(), "project/crash.kdl");
    assert!(!again.contains("no store was at"), "{again}");
}

/// A gc killed between two deletions leaves nothing a run would skip: objects go
/// before the objects they read, so what is left is inputs whose readers are gone,
/// which a run rebuilds. (In key order a kill left an expert's published gate, pool
/// and evals reading an expert and dataset gc had deleted, and the run called those
/// "not needed" and left them unbuilt.)
#[test]
fn a_gc_cut_short_leaves_only_what_a_run_rebuilds() {
    let d = setup();
    let r = run(d.path(), None);
    assert_eq!(r.code, Some(0), "{}", r.text);
    let want = digests(d.path());
    // A manifest that reaches the base model alone: gc deletes everything else.
    let base: String = MANIFEST
        .lines()
        .take_while(|l| !l.starts_with("defaults"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(d.path().join("base.kdl"), base).unwrap();
    // Cut after each of the twelve objects it deletes in turn.
    for n in 1..=12 {
        let gc = goosepipe(
            d.path(),
            Some(&format!("gc.deleted:{n}")),
            &["gc", "base.kdl", "--only-given"],
        );
        assert!(gc.text.contains("fault injected"), "{n}: {}", gc.text);
        // No artifact left whose input is gone.
        let store = Store::open(d.path().join("store")).unwrap();
        for k in store.keys() {
            let meta = store.meta(&k).unwrap();
            for i in &meta.spec.inputs {
                assert!(
                    store.object_dir(&i.key).exists(),
                    "gc killed at deletion {n} left {} without its input {}",
                    meta.spec.id,
                    i.id
                );
            }
        }
        let r = run(d.path(), None);
        assert_eq!(r.code, Some(0), "{n}: {}", r.text);
        assert!(!r.text.contains("not needed"), "{n}: {}", r.text);
        assert_eq!(digests(d.path()), want, "after a gc killed at deletion {n}");
    }
}
