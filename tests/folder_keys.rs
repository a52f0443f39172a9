//! A local folder's key covers what goosepipe reads from it: a README, a `.git`, a
//! training log or an optimizer state beside a model, a PEFT adapter or a retrieval
//! embedder changes no key (a `git status` that rewrites `.git/index` would otherwise
//! retrain every expert), while an edit to a file that is read changes the key of the
//! step that reads it. A BIG-bench parent task is named by its folder, whose key covers
//! its sub-tasks.

use crate::support;

use std::collections::BTreeMap;
use std::path::Path;

use goosepipe::store::HashCache;

const MANIFEST: &str = r#"
model "t" path="base"
dataset "d" bigbench="bb"
expert "e" model="t" dataset="d" peft="adapter"
pool "p" { experts "e"; }
eval "x" pool="p" {
    methods "retrieval"
    task "d" dataset="d"
    routing embedder="./emb"
}
"#;

/// Every step's key, by id.
fn keys(dir: &Path) -> BTreeMap<String, String> {
    let plan = goosepipe::app::load_plan(
        &dir.join("f.kdl"),
        &goosepipe::steps::registry(),
        &HashCache::in_memory(),
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    plan.steps
        .iter()
        .map(|s| (s.id().to_string(), s.spec.key.to_string()))
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The manifest above with its folders: the tiny T5.1.1 (its config, weights and
/// tokenizer), a PEFT adapter, a BIG-bench parent task and an embedder folder (only
/// hashed here, never loaded).
fn project() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let root = support::repo_root();
    let base = t.path().join("base");
    std::fs::create_dir(&base).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(support::t5_fixture("v1_1").join(f), base.join(f)).unwrap();
    }
    copy_dir(&root.join("tests/fixtures/peft/alpha"), &t.path().join("adapter"));
    copy_dir(
        &root.join("tests/fixtures/bigbench/deduction"),
        &t.path().join("bb"),
    );
    let emb = t.path().join("emb");
    std::fs::create_dir(&emb).unwrap();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::write(emb.join(f), f).unwrap();
    }
    std::fs::write(t.path().join("f.kdl"), MANIFEST).unwrap();
    t
}

/// The steps whose keys differ between two plans.
fn changed(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<String> {
    before
        .iter()
        .filter(|(id, k)| after.get(*id) != Some(k))
        .map(|(id, _)| id.clone())
        .collect()
}

#[test]
fn files_a_folder_holds_beside_what_is_read_change_no_key() {
    let t = project();
    let dir = t.path();
    let before = keys(dir);
    assert!(
        before.contains_key("model:t") && before.contains_key("expert:e"),
        "{before:?}"
    );
    // A git clone's metadata (with a symlink that leads nowhere), a model card, a
    // trainer's leftovers, a sentence-transformers pooling folder.
    for folder in ["base", "adapter", "emb"] {
        let f = dir.join(folder);
        std::fs::create_dir_all(f.join(".git/lfs/objects")).unwrap();
        std::fs::write(f.join(".git/index"), b"index").unwrap();
        std::os::unix::fs::symlink("/nonexistent", f.join(".git/broken")).unwrap();
        std::fs::write(f.join("README.md"), b"# card").unwrap();
    }
    std::fs::write(dir.join("base/training_args.bin"), b"args").unwrap();
    std::fs::write(dir.join("base/generation_config.json"), b"{}").unwrap();
    // A trainer's checkpoint below the model (weights by the same names, not read).
    std::fs::create_dir(dir.join("base/checkpoint-100")).unwrap();
    std::fs::write(dir.join("base/checkpoint-100/model.safetensors"), b"older").unwrap();
    std::fs::write(dir.join("base/checkpoint-100/config.json"), b"{}").unwrap();
    std::fs::write(dir.join("adapter/optimizer.pt"), b"state").unwrap();
    // The base model folder `goosepipe export` writes beside an exported adapter.
    std::fs::create_dir(dir.join("adapter/base-model")).unwrap();
    std::fs::write(dir.join("adapter/base-model/config.json"), b"{}").unwrap();
    std::fs::create_dir(dir.join("emb/1_Pooling")).unwrap();
    std::fs::write(dir.join("emb/1_Pooling/config.json"), b"{}").unwrap();
    std::fs::write(dir.join("emb/modules.json"), b"[]").unwrap();
    assert_eq!(changed(&before, &keys(dir)), Vec::<String>::new());
    // The same edits to the .git index again, as `git status` makes them.
    std::fs::write(dir.join("base/.git/index"), b"index, refreshed").unwrap();
    assert_eq!(changed(&before, &keys(dir)), Vec::<String>::new());
}

#[test]
fn an_edit_to_a_file_that_is_read_changes_the_key_of_its_reader() {
    for (file, reader) in [
        ("base/config.json", "model:t"),
        ("base/tokenizer.json", "model:t"),
        ("adapter/adapter_config.json", "expert:e"),
        ("adapter/phatgoose.json", "expert:e"),
        ("emb/sentence_bert_config.json", "retrieval-index:e"),
        ("bb/three_objects/task.json", "dataset:d"),
    ] {
        let t = project();
        let before = keys(t.path());
        let path = t.path().join(file);
        let mut bytes = std::fs::read(&path).unwrap_or_default();
        bytes.extend_from_slice(b" ");
        std::fs::write(&path, bytes).unwrap();
        let after = keys(t.path());
        let moved = changed(&before, &after);
        assert!(moved.contains(&reader.to_string()), "{file}: {moved:?}");
    }
}

/// A local file edited while a run reads it is not built under the key of the content
/// it had when the run planned: the step that reads it fails (nothing published), and
/// the next run keys it on what it holds.
#[test]
fn a_file_edited_during_a_run_is_not_published_under_its_old_key() {
    let opts = goosepipe::exec::RunOptions {
        jobs: Some(1),
        ..Default::default()
    };
    for (editor, file, reader, when) in [
        // The step reading the file edits it: changed while it read it.
        ("model:t", "base/config.json", "model:t", "while the step read it"),
        // An earlier step edits a later step's file: changed before that one started.
        (
            "model:t",
            "adapter/adapter_config.json",
            "expert:e",
            "since the run planned",
        ),
    ] {
        let t = project();
        let path = t.path().join(file);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push('\n');
        let log = support::Log::default();
        let behaviour = support::Behaviour {
            edits: vec![(editor.to_string(), path.clone(), text)],
            ..Default::default()
        };
        let reg = support::registry(&log, &behaviour);
        let manifest = t.path().join("f.kdl");
        let store = t.path().join(".goosepipe");
        let planned = support::plan_of(&manifest, &reg);
        let old_key = planned.get(reader).unwrap().spec.key;
        let (code, out) = support::run_manifest(&manifest, &store, &reg, &opts, &Default::default());
        assert_ne!(code, 0, "{out}");
        assert!(
            out.contains(&format!("{file} (now ")) && out.contains(&format!("changed {when}")),
            "{file}: {out}"
        );
        let s = goosepipe::store::Store::at(&store);
        assert!(s.meta(&old_key).is_none(), "{reader} published under the old key");
        // The next run keys the step on the edited file, and builds it.
        let (code, out) = support::run_manifest(&manifest, &store, &reg, &opts, &Default::default());
        assert_eq!(code, 0, "{out}");
        let now = support::plan_of(&manifest, &reg).get(reader).unwrap().spec.key;
        assert_ne!(now, old_key);
        assert!(s.meta(&now).is_some());
    }
}

/// `goosepipe ARGS` in `dir`.
fn goosepipe(dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_goosepipe"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env("GOOSEPIPE_NO_SLURM", "1")
        .output()
        .unwrap()
}

/// `goosepipe run f.kdl --until dataset:d` in `dir`.
fn build_dataset(dir: &Path) -> std::process::Output {
    goosepipe(dir, &["run", "f.kdl", "--until", "dataset:d"])
}

#[test]
fn plan_names_the_files_of_a_folder_that_changed() {
    let t = project();
    let dir = t.path();
    let base = dir.join("base");
    std::fs::write(base.join("pytorch_model.bin"), "older weights").unwrap();
    let out = goosepipe(dir, &["run", "f.kdl", "--only", "model:t"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One file read is edited, one comes, one goes; a README (not read) comes too.
    let mut config = std::fs::read_to_string(base.join("config.json")).unwrap();
    config.push('\n');
    std::fs::write(base.join("config.json"), config).unwrap();
    std::fs::copy(base.join("model.safetensors"), base.join("more.safetensors")).unwrap();
    std::fs::remove_file(base.join("pytorch_model.bin")).unwrap();
    std::fs::write(base.join("README.md"), "# card").unwrap();
    let out = goosepipe(dir, &["plan", "f.kdl"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("model "))
        .unwrap_or_else(|| panic!("{text}{}", String::from_utf8_lossy(&out.stderr)));
    assert!(
        line.contains(
            "external input changed: path:base (config.json changed, more.safetensors added, \
             pytorch_model.bin removed)"
        ),
        "{text}"
    );
    // As data in plan --json.
    let out = goosepipe(dir, &["plan", "f.kdl", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let step = json["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "model:t")
        .unwrap();
    let files: Vec<String> = step["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["reason"] == "external-changed")
        .flat_map(|r| r["files"].as_array().unwrap().clone())
        .map(|f| {
            format!(
                "{} {} {}",
                f["external"].as_str().unwrap(),
                f["file"].as_str().unwrap(),
                f["change"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        files,
        [
            "path:base config.json changed",
            "path:base more.safetensors added",
            "path:base pytorch_model.bin removed",
        ]
    );
    // Another folder in its place: named as the input that changed, not as edits to
    // the new folder's files.
    copy_dir(&base, &dir.join("other"));
    std::fs::write(
        dir.join("f.kdl"),
        MANIFEST.replace("path=\"base\"", "path=\"other\""),
    )
    .unwrap();
    let out = goosepipe(dir, &["plan", "f.kdl"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("model "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.ends_with("stale: external input changed: path:other"),
        "{text}"
    );
}

#[test]
fn a_bigbench_parent_task_is_named_by_its_folder() {
    let t = project();
    let dir = t.path();
    // Named as a file, its sub-tasks would be read but not keyed: refused by `check`
    // and before a run builds anything, at the setting, naming the folder to give.
    std::fs::write(
        dir.join("f.kdl"),
        MANIFEST.replace("bigbench=\"bb\"", "bigbench=\"bb/task.json\""),
    )
    .unwrap();
    for out in [goosepipe(dir, &["check", "f.kdl"]), build_dataset(dir)] {
        let err = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("bigbench \"bb/task.json\" is a parent task")
                && err.contains("(bigbench=\"bb\")")
                && err.contains("f.kdl:3:22"),
            "{err}"
        );
    }
    let objects = dir.join(".goosepipe/objects");
    let built = std::fs::read_dir(&objects).map(|d| d.count()).unwrap_or(0);
    assert_eq!(built, 0, "nothing was built");
    // A sub-task's own task.json, and the parent's folder, read.
    for source in ["bb/three_objects/task.json", "bb"] {
        std::fs::write(
            dir.join("f.kdl"),
            MANIFEST.replace("bigbench=\"bb\"", &format!("bigbench=\"{source}\"")),
        )
        .unwrap();
        let out = build_dataset(dir);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{source}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
