//! An eval whose key changed scores only the (method, task) results that changed:
//! the others are taken from the earlier eval in the store, checked against what it
//! recorded, and the artifact is byte-identical to one scored from scratch.
//! Runs the real binary on a micro pipeline (seconds).

use crate::support;

use std::path::Path;
use std::process::Command;

use goosepipe::store::Store;

const PIPELINE: &str = r#"
pipeline "reuse"
dataset "corpus" { synthetic task="corpus" examples=200 seed=1; }
model "t" {
    init corpus="corpus" d-model=16 d-ff=32 d-kv=8 heads=2 layers=1 seed=3 pretrain-steps=8 batch=8
}
defaults {
    lora rank=4
    train steps=6 batch=8 micro-batch=8 eval-every=6 eval-examples=8 checkpoint-every=6
    gate steps=2 batch=8 micro-batch=8
}
dataset "sort" { synthetic task="sort" format="choice" examples=48; }
dataset "shift" { synthetic task="shift" format="choice" examples=48 seed=9; }
dataset "sort-test" split="test" { synthetic task="sort" format="choice" examples=12 seed=4; }
dataset "shift-test" split="test" { synthetic task="shift" format="choice" examples=12 seed=6; }
dataset "arrange" split="test" { synthetic task="arrange" format="choice" examples=12 seed=5; }
expert "sort" model="t" dataset="sort"
expert "shift" model="t" dataset="shift"
pool "p" { experts "sort" "shift"; }
"#;

/// The first eval: two methods, a held-out task and one held-in task.
const EVAL_A: &str = r#"
eval "e" pool="p" {
    methods "merged" "phatgoose"
    task "arrange" dataset="arrange"
    task "sort" dataset="sort-test" expert="sort"
}
"#;

/// A method and an owned task added: the new held-in task takes tokens from the
/// distinct set of `sort`, so PHATGOOSE's routing record of `sort` changes too.
const EVAL_B: &str = r#"
eval "e" pool="p" {
    methods "merged" "phatgoose" "expert:sort"
    task "arrange" dataset="arrange"
    task "sort" dataset="sort-test" expert="sort"
    task "shift" dataset="shift-test" expert="shift"
}
"#;

/// B with top-1 routing: only the token router is scored again (and the base,
/// new here).
const EVAL_C: &str = r#"
eval "e" pool="p" {
    methods "merged" "phatgoose" "expert:sort" "base"
    routing top-k=1
    task "arrange" dataset="arrange"
    task "sort" dataset="sort-test" expert="sort"
    task "shift" dataset="shift-test" expert="shift"
}
"#;

/// C and an eval of another pool: the base model and the single expert `sort` read
/// nothing of the pool they are scored with, so their results are C's.
const EVAL_D: &str = r#"
pool "q" { experts "sort"; }
eval "f" pool="q" {
    methods "base" "expert:sort"
    task "arrange" dataset="arrange"
    task "sort" dataset="sort-test" expert="sort"
}
"#;

fn write(dir: &Path, eval: &str) -> std::path::PathBuf {
    let m = dir.join("reuse.kdl");
    std::fs::write(&m, format!("{PIPELINE}{eval}")).unwrap();
    m
}

/// Runs the manifest as it stands in `dir` with the store `store`; the output.
fn run(dir: &Path, store: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_goosepipe"))
        .args(["run", "reuse.kdl", "--store"])
        .arg(store)
        .current_dir(dir)
        .env_remove("GOOSEPIPE_FAULT")
        .output()
        .expect("the goosepipe binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    text
}

/// The digest of the eval `e` as the manifest in `dir` plans it.
fn eval_digest(dir: &Path, store: &Path) -> String {
    digest_of(dir, store, "eval:e")
}

fn digest_of(dir: &Path, store: &Path, id: &str) -> String {
    let plan = support::plan_of(&dir.join("reuse.kdl"), &goosepipe::steps::registry());
    let key = plan.get(id).expect("the eval").spec.key;
    Store::open(store)
        .unwrap()
        .verify(&key)
        .expect("the eval verifies")
        .digest
}

/// What `plan` says of step `id`'s run beside its state (its preview).
fn plan_says(dir: &Path, store: &Path, id: &str) -> String {
    plan_on(dir, store, id, "cpu")
}

/// [`plan_says`] for a run on `device`.
fn plan_on(dir: &Path, store: &Path, id: &str, device: &str) -> String {
    plan_step(dir, store, id, device)["preview"]
        .as_str()
        .unwrap_or("(none)")
        .to_string()
}

/// Step `id` of `plan --json` for a run on `device`.
fn plan_step(dir: &Path, store: &Path, id: &str, device: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_goosepipe"))
        .args(["plan", "reuse.kdl", "--json", "--device", device, "--store"])
        .arg(store)
        .current_dir(dir)
        .output()
        .expect("the goosepipe binary runs");
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan --json");
    plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .expect("the step")
        .clone()
}

/// The count in "reused: N (method, task) result(s)", or 0 when nothing was.
fn reused(text: &str) -> usize {
    text.lines()
        .find_map(|l| l.split("reused: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .map(|n| n.parse().unwrap())
        .unwrap_or(0)
}

/// Scores of `e` under a fresh store: the reference for the same manifest.
fn fresh_digest(eval: &str) -> String {
    let fresh = tempfile::tempdir().unwrap();
    write(fresh.path(), eval);
    let text = run(fresh.path(), &fresh.path().join("store"));
    assert_eq!(reused(&text), 0, "a fresh store has nothing to reuse: {text}");
    eval_digest(fresh.path(), &fresh.path().join("store"))
}

#[test]
fn a_changed_eval_scores_only_the_parts_that_changed() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    write(d.path(), EVAL_A);
    let first = run(d.path(), &store);
    assert_eq!(reused(&first), 0, "{first}");

    // B: merged on both old tasks and PHATGOOSE on the unowned one are reused;
    // PHATGOOSE on `sort` (its distinct tokens changed), every part of the new task
    // and of the new method are scored.
    write(d.path(), EVAL_B);
    // `plan` counts them before the run, and writes nothing doing so.
    let before = tree(&store);
    assert_eq!(
        plan_says(d.path(), &store, "eval:e"),
        "6 of 9 (method, task) results to score, 3 reused from earlier evals"
    );
    assert_eq!(tree(&store), before, "plan changed the store");
    // Results scored on the CPU are not a CUDA run's.
    assert_eq!(
        plan_on(d.path(), &store, "eval:e", "cuda"),
        "9 (method, task) results to score"
    );
    let second = run(d.path(), &store);
    assert_eq!(reused(&second), 3, "{second}");
    // Its progress counts the 72 examples it scores, not the 36 it reused (which
    // took no time, and made the ETA of long evals far too short).
    assert!(
        second.contains("eval:e 72/72 examples") && !second.contains("/108 examples"),
        "{second}"
    );
    // From its first line on, not shrinking as the walk comes to the reused parts.
    let totals: std::collections::BTreeSet<&str> = second
        .lines()
        .filter_map(|l| l.split("eval:e ").nth(1))
        .filter(|rest| rest.contains(" examples"))
        .filter_map(|rest| rest.split_whitespace().next()?.split('/').nth(1))
        .collect();
    assert_eq!(totals, std::collections::BTreeSet::from(["72"]), "{second}");
    assert!(
        second.contains("(method, task) result(s) unchanged since an earlier eval (artifact "),
        "{second}"
    );
    let b = eval_digest(d.path(), &store);
    assert_eq!(b, fresh_digest(EVAL_B), "reused parts change nothing published");
    // `show` lists the nine parts as one row.
    let show = Command::new(env!("CARGO_BIN_EXE_goosepipe"))
        .args(["show", "eval:e", "--store"])
        .arg(&store)
        .current_dir(d.path())
        .output()
        .unwrap();
    let show = String::from_utf8_lossy(&show.stdout);
    assert!(show.contains("  parts/ (9 files)\n"), "{show}");
    assert!(show.contains("  results.json\n"), "{show}");

    // C, after one of the published parts (merged on arrange, held by A's eval and
    // B's) was edited: it is not reused, the other five that do not route are,
    // PHATGOOSE is scored again.
    let name = std::ffi::OsString::from(format!("{}.json", part_on_arrange(d.path(), &store, "merged")));
    let s = Store::open(&store).unwrap();
    let mut edits = 0;
    for key in s.keys() {
        let part = s.files_dir(&key).join("parts").join(&name);
        if part.exists() {
            let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&part).unwrap()).unwrap();
            v["scores"][0] = serde_json::json!(if v["scores"][0] == 1.0 { 0.0 } else { 1.0 });
            set_writable(part.parent().unwrap(), &part);
            std::fs::write(&part, serde_json::to_vec(&v).unwrap()).unwrap();
            edits += 1;
        }
    }
    assert_eq!(edits, 2, "A's eval and B's hold the part");
    write(d.path(), EVAL_C);
    // The edited part is not counted as reusable.
    assert_eq!(
        plan_says(d.path(), &store, "eval:e"),
        "7 of 12 (method, task) results to score, 5 reused from earlier evals"
    );
    let third = run(d.path(), &store);
    assert_eq!(reused(&third), 5, "{third}");
    assert_eq!(eval_digest(d.path(), &store), fresh_digest(EVAL_C));

    // D: the new eval of another pool takes all four of its parts from C's.
    write(d.path(), &format!("{EVAL_C}{EVAL_D}"));
    // Counted before the new pool is built: part keys need its members' keys, not
    // their files.
    assert_eq!(
        plan_says(d.path(), &store, "eval:f"),
        "nothing to score: 4 (method, task) results, 4 reused from earlier evals"
    );
    let fourth = run(d.path(), &store);
    assert_eq!(reused(&fourth), 4, "{fourth}");
    let fresh = tempfile::tempdir().unwrap();
    write(fresh.path(), EVAL_D);
    let text = run(fresh.path(), &fresh.path().join("store"));
    assert_eq!(reused(&text), 0, "{text}");
    assert_eq!(
        digest_of(d.path(), &store, "eval:f"),
        digest_of(fresh.path(), &fresh.path().join("store"), "eval:f")
    );
}

/// Every path under the store with its size and modification time, but the stat
/// cache of file hashes (which `plan` may refresh).
fn tree(store: &Path) -> Vec<(std::path::PathBuf, u64, std::time::SystemTime)> {
    let mut out = vec![];
    let mut stack = vec![store.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p.clone());
            }
            if p != store.join("hashcache.json") {
                out.push((p, m.len(), m.modified().unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// The key of `method`'s part on `arrange` in the eval `e` that `dir`'s manifest plans.
fn part_on_arrange(dir: &Path, store: &Path, method: &str) -> String {
    let files = support::step_files(&dir.join("reuse.kdl"), store, "eval:e");
    let part = std::fs::read_dir(files.join("parts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
            v["method"] == method && v["task"] == "arrange"
        })
        .expect("the method's part of arrange");
    part.file_stem().unwrap().to_str().unwrap().to_string()
}

/// Published artifacts are read-only; the test edits one as a user might.
fn set_writable(dir: &Path, file: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for p in [dir, file] {
        let mode = std::fs::metadata(p).unwrap().permissions().mode();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode | 0o200)).unwrap();
    }
}

/// An eval of PHATGOOSE and arrow on one task, at an arrow temperature.
fn arrow_eval(temperature: &str) -> String {
    format!(
        r#"
eval "e" pool="p" {{
    methods "phatgoose" "arrow"
    routing arrow-temperature={temperature}
    task "arrange" dataset="arrange"
}}
"#
    )
}

/// Arrow's temperature keys arrow's results alone: PHATGOOSE, a token router too,
/// is reused when only the temperature moves.
#[test]
fn the_arrow_temperature_rescores_arrow_alone() {
    let eval = arrow_eval;
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    write(d.path(), &eval("10.0"));
    assert_eq!(reused(&run(d.path(), &store)), 0);
    write(d.path(), &eval("2.0"));
    let text = run(d.path(), &store);
    assert_eq!(reused(&text), 1, "{text}");
    assert_eq!(eval_digest(d.path(), &store), fresh_digest(&eval("2.0")));
}

/// A published eval built on other numerics (a store shared with a machine of another
/// CPU vector level) lends no parts: its last bits would make the new eval one that a
/// build here does not reproduce. `plan` counts the same.
#[test]
fn parts_of_an_eval_built_on_other_numerics_are_not_reused() {
    let eval = arrow_eval;
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    write(d.path(), &eval("10.0"));
    run(d.path(), &store);
    let plan = support::plan_of(&d.path().join("reuse.kdl"), &goosepipe::steps::registry());
    let meta_path = Store::open(&store)
        .unwrap()
        .object_dir(&plan.get("eval:e").unwrap().spec.key)
        .join("meta.json");
    let mut meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    let here = goosepipe::process::numerics::numerics("cpu");
    assert_eq!(meta["numerics"], here.as_str());
    meta["numerics"] = "cpu x86_64 elsewhere".into();
    set_writable(meta_path.parent().unwrap(), &meta_path);
    std::fs::write(&meta_path, serde_json::to_vec_pretty(&meta).unwrap()).unwrap();
    write(d.path(), &eval("2.0"));
    assert!(
        !plan_says(d.path(), &store, "eval:e").contains("reused"),
        "plan counts none"
    );
    let text = run(d.path(), &store);
    assert_eq!(reused(&text), 0, "{text}");
}

/// An eval that stopped part-way (or is still running: a second job, another node)
/// has saved parts in its work folder; an eval of another key that needs them takes
/// them from there, `plan` counts them, and the artifact is a fresh store's.
#[test]
fn parts_saved_by_another_eval_are_taken_from_its_work_folder() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    write(d.path(), EVAL_A);
    // A's eval is killed after saving its first two parts: merged on both tasks.
    let out = Command::new(env!("CARGO_BIN_EXE_goosepipe"))
        .args(["run", "reuse.kdl", "--store"])
        .arg(&store)
        .current_dir(d.path())
        .env("GOOSEPIPE_FAULT", "eval.task-saved:2")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0), "the fault stops the run");
    write(d.path(), EVAL_B);
    assert_eq!(
        plan_says(d.path(), &store, "eval:e"),
        "7 of 9 (method, task) results to score, 2 saved by other evals as they ran"
    );
    let text = run(d.path(), &store);
    assert!(
        text.contains("shared: 2 (method, task) result(s) saved by another eval as it ran ("),
        "{text}"
    );
    assert_eq!(reused(&text), 0, "{text}");
    assert_eq!(eval_digest(d.path(), &store), fresh_digest(EVAL_B));
}

/// A part a running eval is scoring (its mark in that eval's work folder, its key's
/// lock held) is scored last, not first, and the artifact is unchanged; also when
/// retrieval, which puts single experts on the model, is scored in between (PHATGOOSE
/// scored after it with a single expert on would record no routing). A mark
/// whose eval is not running is ignored.
#[test]
fn a_part_another_eval_is_scoring_is_left_to_the_end() {
    const EVAL_R: &str = r#"
eval "e" pool="p" {
    methods "phatgoose" "retrieval"
    routing embedder="base-encoder"
    task "arrange" dataset="arrange"
    task "sort" dataset="sort-test" expert="sort"
}
"#;
    for (eval, method) in [(EVAL_A, "merged"), (EVAL_R, "phatgoose")] {
        // The key of the method's part on `arrange`, from a first store.
        let first = tempfile::tempdir().unwrap();
        write(first.path(), eval);
        run(first.path(), &first.path().join("store"));
        let part = part_on_arrange(first.path(), &first.path().join("store"), method);
        let want = eval_digest(first.path(), &first.path().join("store"));

        for running in [false, true] {
            let d = tempfile::tempdir().unwrap();
            let store = d.path().join("store");
            let other: goosepipe::store::Key = "ab".repeat(32).parse().unwrap();
            let claims = store.join("work").join(other.hex()).join("eval-progress");
            std::fs::create_dir_all(&claims).unwrap();
            std::fs::write(claims.join(format!("{part}.claim")), b"").unwrap();
            let lock = running.then(|| Store::open(&store).unwrap().lock(&other).unwrap());
            write(d.path(), eval);
            let text = run(d.path(), &store);
            drop(lock);
            let waited = "left to the end: 1 (method, task) result(s) another eval was scoring";
            assert_eq!(text.contains(waited), running, "{text}");
            assert_eq!(eval_digest(d.path(), &store), want);
        }
    }
}

/// A member added to the pool: before it (or the pool) is built, `plan` says which
/// of the eval's results stay (those that do not read the pool), and the run agrees.
#[test]
fn plan_counts_an_eval_s_parts_before_a_new_member_is_trained() {
    const EVAL: &str = r#"
eval "e" pool="p" {
    methods "merged" "base" "expert:sort"
    task "arrange" dataset="arrange"
    task "sort" dataset="sort-test" expert="sort"
}
"#;
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    write(d.path(), EVAL);
    run(d.path(), &store);
    let grown = EVAL.replace("pool=\"p\"", "pool=\"p3\"")
        + r#"
dataset "dedup" { synthetic task="dedup" format="choice" examples=48; }
expert "dedup" model="t" dataset="dedup"
pool "p3" { experts "sort" "shift" "dedup"; }
"#;
    write(d.path(), &grown);
    assert_eq!(
        plan_says(d.path(), &store, "eval:e"),
        "2 of 6 (method, task) results to score, 4 reused from earlier evals"
    );
    // The same counts as data, for scripts.
    assert_eq!(
        plan_step(d.path(), &store, "eval:e", "cpu")["preview_counts"],
        serde_json::json!({"results": 6, "to_score": 2, "reused": 4, "shared": 0, "resumed": 0, "planned": 0})
    );
    assert_eq!(reused(&run(d.path(), &store)), 4);
}

/// Two stale evals of one plan that need the same parts: the first counts them to
/// score, the second as scored by the other.
#[test]
fn plan_counts_a_part_two_evals_need_once() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    write(d.path(), EVAL_A);
    run(d.path(), &store);
    write(d.path(), &format!("{EVAL_C}{EVAL_D}"));
    assert_eq!(
        plan_says(d.path(), &store, "eval:e"),
        "10 of 12 (method, task) results to score, 2 reused from earlier evals"
    );
    assert_eq!(
        plan_says(d.path(), &store, "eval:f"),
        "nothing to score: 4 (method, task) results, 4 scored by another eval of this plan"
    );
    // A run of f alone (`plan --until eval:f` previews it) scores them itself: the
    // eval outside the selection scores nothing for it.
    let text = plan_until(d.path(), &store, "eval:f");
    let row = |id: &str| row_of(&text, id);
    assert!(
        row("eval:f").ends_with("stale: new; 4 (method, task) results to score"),
        "{text}"
    );
    assert!(
        row("eval:e").contains("stale, not run by --until eval:f"),
        "{text}"
    );
    assert!(
        !row("eval:e").contains("to score"),
        "no preview outside the selection: {text}"
    );
}

fn sampled_eval(settings: &str) -> String {
    // `routing` is keyed by the eval and read by no method here: a setting that
    // makes the last eval another step with the same parts.
    let (settings, routing) = match settings.split_once(" | ") {
        Some((s, r)) => (s, r),
        None => (settings, ""),
    };
    format!(
        r#"
eval "e" pool="p" {settings} {{
    methods "merged"
    task "arrange" dataset="arrange"
    {routing}
}}
"#
    )
}

/// An eval's `seed` and `max-examples` key its results by the sample they draw: a
/// seed or a cap that cuts nothing (the task has 12 examples) scores what no cap
/// scores, and is reused; a cap that cuts is scored, once per seed (and reused by an
/// eval that draws the same sample).
#[test]
fn a_seed_or_cap_that_cuts_nothing_rescores_nothing() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let mut reuses = vec![];
    for settings in [
        "",
        "seed=7",
        "max-examples=12",
        "max-examples=500 seed=3",
        "max-examples=5 seed=7",
        "max-examples=5 seed=8",
        "max-examples=5 seed=7 | routing top-k=1",
    ] {
        write(d.path(), &sampled_eval(settings));
        reuses.push((settings, reused(&run(d.path(), &store))));
    }
    assert_eq!(
        reuses,
        [
            ("", 0),
            ("seed=7", 1),
            ("max-examples=12", 1),
            ("max-examples=500 seed=3", 1),
            ("max-examples=5 seed=7", 0),
            ("max-examples=5 seed=8", 0),
            ("max-examples=5 seed=7 | routing top-k=1", 1),
        ]
    );
}

/// A task no cap cut is keyed with the schema's default seed (what every key said
/// before the sample was keyed): the two must agree.
#[test]
fn the_unsampled_seed_is_the_schemas_default() {
    use goosepipe::manifest::value::Value;
    let schema = goosepipe::manifest::schema::Schema::embedded();
    let seed = schema
        .node("eval")
        .and_then(|n| n.prop("seed"))
        .expect("eval seed");
    assert_eq!(
        seed.default,
        Some(Value::Int(goosepipe::steps::eval::UNSAMPLED_SEED as i64))
    );
}

/// Before a task's dataset is built, `plan` cannot count an eval's parts (they are
/// keyed by its examples): it says what they wait for instead of saying nothing.
#[test]
fn plan_says_what_an_eval_s_count_waits_for() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    write(d.path(), EVAL_A);
    run(d.path(), &store);
    let m = d.path().join("reuse.kdl");
    let text = std::fs::read_to_string(&m).unwrap().replace(
        "task=\"arrange\" format=\"choice\" examples=12 seed=5",
        "task=\"arrange\" format=\"choice\" examples=13 seed=5",
    );
    std::fs::write(&m, text).unwrap();
    assert_eq!(
        plan_says(d.path(), &store, "eval:e"),
        "(method, task) results to score counted once dataset:arrange is built"
    );
}

/// A selection may run a step a plain run would not (one no stale step needs, whose
/// artifact left the store): `plan --until` says it runs it, and counts it.
#[test]
fn plan_says_a_selection_runs_a_step_not_needed_otherwise() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    write(d.path(), EVAL_A);
    run(d.path(), &store);
    let plan = support::plan_of(&d.path().join("reuse.kdl"), &goosepipe::steps::registry());
    let key = plan.get("tokenize:sort").unwrap().spec.key;
    std::fs::remove_dir_all(Store::open(&store).unwrap().object_dir(&key)).unwrap();
    let text = plan_until(d.path(), &store, "tokenize:sort");
    assert!(text.contains("--until tokenize:sort runs 1 step(s)\n"), "{text}");
    let row = row_of(&text, "tokenize:sort");
    assert!(row.contains("not needed, run by --until tokenize:sort"), "{text}");
}

/// `plan --until STEP` of the manifest in `dir`: its table.
fn plan_until(dir: &Path, store: &Path, step: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_goosepipe"))
        .args(["plan", "reuse.kdl", "--until", step, "--store"])
        .arg(store)
        .current_dir(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The row of step `id` (`KIND:NAME`) in a plan table.
fn row_of<'t>(table: &'t str, id: &str) -> &'t str {
    table
        .lines()
        .find(|l| l.split_whitespace().take(2).eq(id.split(':')))
        .unwrap_or_else(|| panic!("no row {id}: {table}"))
}
