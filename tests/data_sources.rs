//! Dataset sources against real third-party files: promptsource 0.2.3's templates and
//! BIG-bench 1.0.0's task.json files (fetched from PyPI by scripts/fetch-test-data.sh).

use crate::support;

use goosepipe::data::bigbench::read_task;
use goosepipe::data::promptsource::{Renderer, Selection, find_root, load, templates_file};
use serde_json::Value;

fn promptsource_root() -> std::path::PathBuf {
    find_root(Some(&support::test_data("promptsource-0.2.3"))).unwrap()
}

/// Every template of the fixture renders exactly as promptsource's own Template.apply
/// (Jinja2) rendered it (scripts/make_promptsource_fixture.py made the fixture).
#[test]
fn promptsource_rendering_matches_jinja2() {
    let root = promptsource_root();
    let fixture: Value = serde_json::from_str(include_str!("fixtures/promptsource/rendered.json")).unwrap();
    let r = Renderer::default();
    let mut checked = 0;
    for case in fixture["rendered"].as_array().unwrap() {
        let set_name = case["templates"].as_str().unwrap();
        let set = load(&templates_file(&root, set_name)).unwrap();
        let t = set
            .templates
            .iter()
            .find(|t| t.name == case["template"].as_str().unwrap())
            .unwrap();
        let row = fixture["rows"][set_name][case["row"].as_u64().unwrap() as usize]
            .as_object()
            .unwrap();
        let parts: Vec<&str> = case["parts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        let got = r.apply(t, row, 0).unwrap();
        let what = format!("{set_name} / {}", t.name);
        match parts.as_slice() {
            [input, target] if !input.is_empty() && !target.is_empty() => {
                let ex = got.unwrap_or_else(|| panic!("{what}: no example"));
                assert_eq!(ex.input, *input, "{what}");
                assert_eq!(ex.target, *target, "{what}");
            }
            _ => assert!(got.is_none(), "{what}: promptsource yields {parts:?}"),
        }
        let want_choices: Option<Vec<String>> = case["choices"]
            .as_array()
            .map(|c| c.iter().map(|x| x.as_str().unwrap().to_string()).collect());
        assert_eq!(r.answer_choices(t, row).unwrap(), want_choices, "{what}");
        checked += 1;
    }
    assert!(checked > 150, "{checked}");
}

/// The T0 held-out evaluation's template counts (METHOD.md section 5).
#[test]
fn t0_held_out_original_task_template_counts() {
    let root = promptsource_root();
    let copa_ignored = [
        "…which may be caused by",
        "…What could happen next, C1 or C2?",
        "…As a result, C1 or C2?",
        "…why? C1 or C2",
    ];
    for (name, ignore, want) in [
        ("super_glue/rte", &[][..], 10),
        ("hellaswag", &[][..], 4),
        ("super_glue/copa", &copa_ignored[..], 8),
        ("super_glue/wic", &[][..], 10),
        ("winogrande/winogrande_xl", &[][..], 5),
        ("super_glue/cb", &[][..], 15),
        ("story_cloze/2016", &[][..], 5),
        ("anli", &[][..], 15),
        ("super_glue/wsc.fixed", &[][..], 10),
    ] {
        let set = load(&templates_file(&root, name)).unwrap();
        let sel = Selection {
            original_task: true,
            include: vec![],
            ignore: ignore.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(set.select(&sel).unwrap().len(), want, "{name}");
    }
    // A misspelt template name is an error that lists the real names.
    let set = load(&templates_file(&root, "super_glue/rte")).unwrap();
    let e = set
        .select(&Selection {
            ignore: vec!["can we infers".into()],
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no template named \"can we infers\"") && e.contains("\"can we infer\""),
        "{e}"
    );
}

/// Every template of the 36 held-in P3 datasets parses (promptsource 0.2.3 has 302).
#[test]
fn held_in_template_sets_parse() {
    let root = promptsource_root();
    let names = [
        "ag_news",
        "amazon_polarity",
        "cosmos_qa",
        "samsum",
        "quartz",
        "ropes",
        "wiki_bio",
        "paws/labeled_final",
        "wiki_qa",
        "social_i_qa",
        "qasc",
        "quail",
        "dream",
        "wiqa",
        "quarel",
        "sciq",
        "quoref",
        "duorc/ParaphraseRC",
        "rotten_tomatoes",
        "yelp_review_full",
        "common_gen",
        "gigaword",
        "xsum",
        "glue/mrpc",
        "glue/qqp",
        "commonsense_qa",
        "cos_e/v1.11",
        "wiki_hop/original",
        "hotpot_qa/fullwiki",
        "app_reviews",
        "trec",
        "multi_news",
        "imdb",
        "adversarial_qa/adversarialQA",
        "cnn_dailymail/3.0.0",
        "dbpedia_14",
    ];
    let mut total = 0;
    for n in names {
        let set = load(&templates_file(&root, n)).unwrap();
        assert!(!set.templates.is_empty(), "{n}");
        total += set.templates.len();
    }
    assert_eq!(total, 302);
}

fn bb(task: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/bigbench")
        .join(task)
        .join("task.json")
}

/// BIG-bench JSON tasks as the paper's code formats them (`+ "\nAnswer:"`), on
/// project-made tasks in BIG-bench's format (tests/fixtures/bigbench/README.md says
/// why not the real files).
#[test]
fn bigbench_tasks_read_as_the_paper_formats_them() {
    // Choices scored, not appended to the input; the answer is the top score; the
    // default prefixes.
    let ex = read_task(&bb("yes_no")).unwrap();
    assert_eq!(ex.len(), 3);
    assert_eq!(ex[0].choices, vec!["Yes", "No"]);
    assert_eq!(ex[0].target, "No");
    assert_eq!(ex[1].target, "Yes");
    assert_eq!(
        ex[0].input,
        "\nQ: Is a kilometre longer than a mile?\nA: \nAnswer:"
    );

    // Generation with several accepted answers; the task's own prefixes.
    let ex = read_task(&bb("counting")).unwrap();
    assert_eq!(ex.len(), 2);
    assert!(ex[0].choices.is_empty());
    assert_eq!(ex[0].accepted(), vec!["four", "4"]);
    assert_eq!(ex[1].accepted(), vec!["two"]);
    assert_eq!(
        ex[1].input,
        "Count carefully.\n\nQuestion: I have a chair and a table. How many pieces of furniture do I have?\nA: \nAnswer:"
    );

    // A parent task: every sub-task, in folder-name order (five, seven, three), the
    // choices appended in BIG-bench's order: sorted, then numpy's
    // RandomState(42).permutation (for 5: [1, 4, 2, 0, 3]).
    let ex = read_task(&bb("deduction")).unwrap();
    assert_eq!(ex.len(), 2 + 1 + 3);
    assert!(ex.iter().all(|e| e.answer_index().is_some()));
    assert_eq!(ex[0].target, "The red book");
    assert_eq!(ex[2].target, "The crow");
    assert_eq!(ex[3].target, "The cup");
    assert_eq!(ex[5].target, "The pen");
    let c = "\n  choice: ";
    assert_eq!(
        ex[0].input,
        format!(
            "\nQ: Five books stand in a row; the red one is second from the left. Which is second from the left?\
             {c}The blue book{c}The red book{c}The green book{c}The black book{c}The grey book\nA: \nAnswer:"
        )
    );
}

/// A parent task whose sub-task folders are missing, and a malformed example, are
/// refused naming the file (and the example).
#[test]
fn bigbench_tasks_that_cannot_be_read_say_where() {
    let t = tempfile::tempdir().unwrap();
    let parent = t.path().join("task.json");
    std::fs::write(&parent, r#"{"name": "empty parent"}"#).unwrap();
    let err = read_task(&parent).unwrap_err().to_string();
    assert!(err.contains("no sub-task folders"), "{err}");
    assert!(err.contains(&parent.display().to_string()), "{err}");
    std::fs::write(
        &parent,
        r#"{"examples": [{"input": "a", "target": "b"}, {"target": "c"}]}"#,
    )
    .unwrap();
    let err = read_task(&parent).unwrap_err().to_string();
    assert!(err.contains("example 2: no string `input`"), "{err}");
}

/// `goosepipe run MANIFEST` in `dir` with the store at `dir/store`, offline, reading the
/// HF cache at `cache` (and the fetched promptsource templates when `templates`).
fn run_offline(
    dir: &std::path::Path,
    manifest: &str,
    cache: &std::path::Path,
    templates: bool,
) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_goosepipe"));
    cmd.args(["run", manifest, "--store"])
        .arg(dir.join("store"))
        .current_dir(dir)
        .env("HF_HUB_CACHE", cache)
        .env("HF_HUB_OFFLINE", "1");
    if templates {
        cmd.env("GOOSEPIPE_PROMPTSOURCE", support::test_data("promptsource-0.2.3"));
    }
    cmd.output().unwrap()
}

/// Runs `manifest` in `dir` offline (no templates), which must succeed, and gives the
/// payload folder of its step `id` in `dir/store`.
fn built_dataset(
    dir: &std::path::Path,
    manifest: &str,
    cache: &std::path::Path,
    id: &str,
) -> std::path::PathBuf {
    let out = run_offline(dir, manifest, cache, false);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = goosepipe::store::Store::open(dir.join("store")).unwrap();
    let plan = goosepipe::app::load_plan(
        &dir.join(manifest),
        &goosepipe::steps::registry(),
        &st.hash_cache(),
    )
    .unwrap();
    st.files_dir(&plan.get(id).unwrap().spec.key)
}

/// The output of a run of `manifest` (written to f.kdl in `dir`) that must fail.
fn failed_run(dir: &std::path::Path, manifest: &str, cache: &std::path::Path) -> String {
    std::fs::write(dir.join("f.kdl"), manifest).unwrap();
    let out = run_offline(dir, "f.kdl", cache, false);
    assert_eq!(out.status.code(), Some(1), "{manifest}");
    String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout)
}

/// Lays out `files` (repo path -> bytes) as the HF cache holds a dataset repo at a
/// commit that `revision` points to: refs/, snapshots/COMMIT/ symlinks, blobs/.
fn hf_cache_dataset(
    cache: &std::path::Path,
    repo: &str,
    revision: &str,
    commit: &str,
    files: &[(&str, &[u8])],
) {
    let root = cache.join(format!("datasets--{}", repo.replace('/', "--")));
    let refp = root.join("refs").join(revision);
    std::fs::create_dir_all(refp.parent().unwrap()).unwrap();
    std::fs::write(&refp, commit).unwrap();
    std::fs::create_dir_all(root.join("blobs")).unwrap();
    for (path, bytes) in files {
        let blob = blake3::hash(bytes).to_hex().to_string();
        std::fs::write(root.join("blobs").join(&blob), bytes).unwrap();
        let link = root.join("snapshots").join(commit).join(path);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(root.join("blobs").join(&blob), &link).unwrap();
    }
}

/// The `dataset` step end to end, offline: a hub split read from a folder laid out as
/// the HF cache and rendered with promptsource templates (the lockfile pins the
/// commit), and a local parquet file with list columns mapped to fields.
#[test]
fn dataset_step_reads_an_offline_hub_cache_and_local_parquet() {
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("hf");
    let commit = "7c3bd8ea35b2e3d1f4e5e7b9c2d8a0f1e2d3c4b5";
    let rte = std::fs::read("tests/fixtures/data/rte-validation.parquet").unwrap();
    hf_cache_dataset(
        &cache,
        "aps/super_glue",
        "refs/convert/parquet",
        commit,
        &[("rte/validation/0000.parquet", &rte)],
    );
    std::fs::copy(
        "tests/fixtures/data/bigbench-mixed.parquet",
        t.path().join("bb.parquet"),
    )
    .unwrap();
    let manifest = t.path().join("d.kdl");
    std::fs::write(
        &manifest,
        r#"pipeline "data"
dataset "rte" hub="aps/super_glue" config="rte" split="validation" revision="refs/convert/parquet" {
    templates name="super_glue/rte" original-task=#true
}
dataset "bb" path="bb.parquet" input-field="inputs" target-field="targets" choices-field="multiple_choice_targets" input-suffix="\nAnswer:"
"#,
    )
    .unwrap();
    let store = t.path().join("store");
    let out = run_offline(t.path(), "d.kdl", &cache, true);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let lock = std::fs::read_to_string(t.path().join("d.kdl.lock")).unwrap();
    assert!(
        lock.contains(commit),
        "the lockfile pins the resolved commit: {lock}"
    );

    let st = goosepipe::store::Store::open(&store).unwrap();
    let plan = goosepipe::app::load_plan(&manifest, &goosepipe::steps::registry(), &st.hash_cache()).unwrap();
    let files = |id: &str| st.files_dir(&plan.get(id).unwrap().spec.key);
    let rte = goosepipe::data::read_jsonl(&files("dataset:rte").join("examples.jsonl")).unwrap();
    // 3 labeled rows x 10 original-task templates; the unlabeled row yields no target.
    assert_eq!(rte.len(), 30);
    assert!(rte.iter().all(|e| e.answer_index().is_some()), "{:?}", rte[0]);
    assert!(
        rte.iter()
            .any(|e| e.input.contains("Dana Reeve") && e.target == "No")
    );
    let data: serde_json::Value =
        serde_json::from_slice(&std::fs::read(files("dataset:rte").join("data.json")).unwrap()).unwrap();
    assert_eq!(data["commit"], commit);
    assert_eq!(data["files"][0], "rte/validation/0000.parquet");
    assert_eq!(data["pairs"], 40);
    assert_eq!(data["dropped"], 10);

    let bb = goosepipe::data::read_jsonl(&files("dataset:bb").join("examples.jsonl")).unwrap();
    assert_eq!(bb.len(), 3);
    assert_eq!(bb[0].input, "Q: Is the sky blue?\nA:\nAnswer:");
    assert_eq!(bb[0].choices, vec!["Yes", "No"]);
    assert!(bb[1].choices.is_empty() && bb[1].accepted() == vec!["eight", "8"]);
    assert!(bb[2].choice_is_right(2) && !bb[2].choice_is_right(1));

    // Offline with the files missing: a clear error naming the cache folder, exit 1.
    std::fs::remove_dir_all(cache.join("datasets--aps--super_glue")).unwrap();
    std::fs::write(
        &manifest,
        std::fs::read_to_string(&manifest)
            .unwrap()
            .replace("split=\"validation\"", "split=\"train\""),
    )
    .unwrap();
    let out = run_offline(t.path(), "d.kdl", &cache, true);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("datasets--aps--super_glue") && err.contains("offline"),
        "{err}"
    );
}

/// FLAN as the paper reads it: the `save_to_disk` Arrow file of one task folder in
/// r-three/Phatgoose_flanv2_offline (from an offline HF cache), zero-shot template
/// types only, empty targets dropped, and FLAN's numpy RandomState(1234) holdout.
#[test]
fn flan_arrow_folder_with_template_filter_and_flan_holdout() {
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("hf");
    let commit = "19f179d0000000000000000000000000000000ab";
    let arrow = std::fs::read("tests/fixtures/data/flan-data.arrow").unwrap();
    let folder = "FLANV2/Flan2021/number_words:1.0.0";
    hf_cache_dataset(
        &cache,
        "r-three/Phatgoose_flanv2_offline",
        "main",
        commit,
        &[
            (&format!("{folder}/train/data-00000-of-00001.arrow"), &arrow),
            (&format!("{folder}/train/state.json"), b"{}"),
        ],
    );
    std::fs::write(
        t.path().join("f.kdl"),
        format!(
            r#"dataset "numbers" hub="r-three/Phatgoose_flanv2_offline" config="{folder}" split="train" input-field="inputs" target-field="targets" keep-field="_template_type" drop-empty=#true holdout="flan" {{
    keep-values "zs_opt" "zs_noopt"
}}
"#
        ),
    )
    .unwrap();
    let files = built_dataset(t.path(), "f.kdl", &cache, "dataset:numbers");
    let all = goosepipe::data::read_jsonl(&files.join("examples.jsonl")).unwrap();
    // 40 rows, 20 zero-shot, one with an empty target.
    assert_eq!(all.len(), 19);
    let valid = goosepipe::data::read_jsonl(&files.join("validation.jsonl")).unwrap();
    let train = goosepipe::data::read_jsonl(&files.join("train.jsonl")).unwrap();
    // numpy: RandomState(1234).choice(19, 19, replace=False)[0] == 3 -> the 4th kept row (i = 8).
    assert_eq!(valid.len(), 1);
    assert_eq!(valid[0].input, "Translate number 8 to words.");
    assert_eq!(train.len(), 18);
    assert!(!train.contains(&valid[0]));
}

/// A local JSONL file honours the row filters as hub data does (they were ignored
/// there: every row was kept, silently), and a filter that keeps nothing is an error.
#[test]
fn local_jsonl_rows_are_filtered_like_hub_rows() {
    let t = tempfile::tempdir().unwrap();
    let rows: String = (0..10)
        .map(|i| {
            let kind = if i % 2 == 0 { "zs" } else { "fs" };
            let target = if i == 4 { "" } else { "y" };
            format!("{{\"input\": \"x {i}\", \"target\": \"{target}\", \"kind\": \"{kind}\"}}\n")
        })
        .collect();
    std::fs::write(t.path().join("d.jsonl"), rows).unwrap();
    let manifest = |values: &str| {
        format!(
            "dataset \"d\" path=\"d.jsonl\" keep-field=\"kind\" drop-empty=#true {{\n    keep-values {values}\n}}\n"
        )
    };
    std::fs::write(t.path().join("f.kdl"), manifest("\"zs\"")).unwrap();
    let cache = t.path().join("hf");
    let files = built_dataset(t.path(), "f.kdl", &cache, "dataset:d");
    let all = goosepipe::data::read_jsonl(&files.join("examples.jsonl")).unwrap();
    // Five rows of kind zs (0, 2, 4, 6, 8), one of them (4) with an empty target.
    let inputs: Vec<&str> = all.iter().map(|e| e.input.as_str()).collect();
    assert_eq!(inputs, vec!["x 0", "x 2", "x 6", "x 8"]);
    let err = failed_run(t.path(), &manifest("\"none\""), &cache);
    assert!(err.contains("no row has kind in [\"none\"]"), "{err}");
    // drop-empty leaving nothing is refused, not published empty (every method would
    // score 0 on it and the mean count it).
    std::fs::write(
        t.path().join("e.jsonl"),
        "{\"input\": \"\", \"target\": \"\"}\n{\"input\": \"x\", \"target\": \" \"}\n",
    )
    .unwrap();
    let err = failed_run(
        t.path(),
        "dataset \"e\" path=\"e.jsonl\" drop-empty=#true\n",
        &cache,
    );
    assert!(
        err.contains("e.jsonl: drop-empty=#true dropped all 2 examples (each has a blank input or target)"),
        "{err}"
    );
}

/// Mistakes in a local file's field settings are said by the dataset step (or by
/// `check`), naming the setting, before any expert trains on the data.
#[test]
fn local_field_settings_that_match_nothing_are_said_at_the_data() {
    let t = tempfile::tempdir().unwrap();
    let rows: String = (0..6)
        .map(|i| {
            format!(
                "{{\"input\": \"x {i}\", \"target\": \"b\", \"opts\": [\"a\", \"b\"], \"fold\": {}}}\n",
                i % 2
            )
        })
        .collect();
    std::fs::write(t.path().join("d.jsonl"), rows).unwrap();
    let cache = t.path().join("hf");
    let failure = |manifest: &str| failed_run(t.path(), manifest, &cache);
    // An integer column is kept by the value as written (no row matched "0").
    std::fs::write(
        t.path().join("f.kdl"),
        "dataset \"d\" path=\"d.jsonl\" choices-field=\"opts\" keep-field=\"fold\" {\n    keep-values \"0\"\n}\n",
    )
    .unwrap();
    let files = built_dataset(t.path(), "f.kdl", &cache, "dataset:d");
    let kept = goosepipe::data::read_jsonl(&files.join("examples.jsonl")).unwrap();
    let inputs: Vec<&str> = kept.iter().map(|e| e.input.as_str()).collect();
    assert_eq!(inputs, vec!["x 0", "x 2", "x 4"]);
    assert!(kept.iter().all(|e| e.choices == ["a", "b"]));
    // A column with text in it matches text only, as it always did (same key, same rows).
    std::fs::write(
        t.path().join("mixed.jsonl"),
        "{\"input\": \"s\", \"target\": \"b\", \"fold\": \"0\"}\n{\"input\": \"n\", \"target\": \"b\", \"fold\": 0}\n",
    )
    .unwrap();
    std::fs::write(
        t.path().join("f.kdl"),
        "dataset \"d\" path=\"mixed.jsonl\" keep-field=\"fold\" {\n    keep-values \"0\"\n}\n",
    )
    .unwrap();
    let files = built_dataset(t.path(), "f.kdl", &cache, "dataset:d");
    let kept = goosepipe::data::read_jsonl(&files.join("examples.jsonl")).unwrap();
    assert_eq!(kept.iter().map(|e| e.input.as_str()).collect::<Vec<_>>(), ["s"]);
    // A field no row has is named as such.
    let err = failure("dataset \"d\" path=\"d.jsonl\" keep-field=\"folds\" {\n    keep-values \"0\"\n}\n");
    assert!(
        err.contains("keep-field=\"folds\": no row has that field (6 rows read; the first has fold, input, opts, target)"),
        "{err}"
    );
    // A mistyped choices field turned the data into generation data, silently.
    let err = failure("dataset \"d\" path=\"d.jsonl\" choices-field=\"optz\"\n");
    assert!(
        err.contains("choices-field=\"optz\": no row holds answer choices there"),
        "{err}"
    );
    // A validation file of its own: checkpoints are chosen on it, and the whole
    // file trains (10% of it was held back, and validation-split was ignored).
    std::fs::write(
        t.path().join("v.jsonl"),
        "{\"input\": \"v 0\", \"target\": \"a\"}\n",
    )
    .unwrap();
    std::fs::write(
        t.path().join("f.kdl"),
        "dataset \"d\" path=\"d.jsonl\" validation-path=\"v.jsonl\"\n",
    )
    .unwrap();
    let files = built_dataset(t.path(), "f.kdl", &cache, "dataset:d");
    let validation = goosepipe::data::read_jsonl(&files.join("validation.jsonl")).unwrap();
    assert_eq!(
        validation.iter().map(|e| e.input.as_str()).collect::<Vec<_>>(),
        ["v 0"]
    );
    assert_eq!(
        goosepipe::data::read_jsonl(&files.join("examples.jsonl"))
            .unwrap()
            .len(),
        6
    );
    assert!(!files.join("train.jsonl").exists(), "the examples all train");
    // Provenance counts the rows of both files (a JSONL file said 0 rows).
    let data: serde_json::Value =
        serde_json::from_slice(&std::fs::read(files.join("data.json")).unwrap()).unwrap();
    assert_eq!(
        (data["rows"].as_u64(), data["examples"].as_u64()),
        (Some(7), Some(6)),
        "{data}"
    );
    // A spreadsheet's CSV export: the same fields, answer choices as a JSON list.
    std::fs::write(
        t.path().join("d.csv"),
        "input,target,opts\n\"x, 0\",b,\"[\"\"a\"\", \"\"b\"\"]\"\n",
    )
    .unwrap();
    std::fs::write(
        t.path().join("f.kdl"),
        "dataset \"d\" path=\"d.csv\" choices-field=\"opts\"\n",
    )
    .unwrap();
    let files = built_dataset(t.path(), "f.kdl", &cache, "dataset:d");
    let rows = goosepipe::data::read_jsonl(&files.join("examples.jsonl")).unwrap();
    assert_eq!(
        (rows[0].input.as_str(), rows[0].choices.clone()),
        ("x, 0", vec!["a".to_string(), "b".into()])
    );
    // The same rows as TSV (a quoted field, as pandas writes it), end to end; the
    // reader's version is in its key (the first reader merged rows after a stray
    // quote: such datasets are read again), and in no other dataset's.
    std::fs::write(
        t.path().join("d.tsv"),
        "input\ttarget\topts\n\"x\t0\"\tb\t\"[\"\"a\"\", \"\"b\"\"]\"\n",
    )
    .unwrap();
    std::fs::write(
        t.path().join("f.kdl"),
        "dataset \"d\" path=\"d.tsv\" choices-field=\"opts\"\ndataset \"c\" path=\"d.csv\" choices-field=\"opts\"\n",
    )
    .unwrap();
    let files = built_dataset(t.path(), "f.kdl", &cache, "dataset:d");
    let rows = goosepipe::data::read_jsonl(&files.join("examples.jsonl")).unwrap();
    assert_eq!(
        (rows[0].input.as_str(), rows[0].choices.clone()),
        ("x\t0", vec!["a".to_string(), "b".into()])
    );
    let plan = goosepipe::app::load_plan(
        &t.path().join("f.kdl"),
        &goosepipe::steps::registry(),
        &goosepipe::store::hashing::HashCache::in_memory(),
    )
    .unwrap();
    assert_eq!(plan.get("dataset:d").unwrap().spec.params["tsv-reader"], 2);
    assert_eq!(plan.get("dataset:c").unwrap().spec.params["path-format"], "csv");
    assert!(
        plan.get("dataset:c")
            .unwrap()
            .spec
            .params
            .get("tsv-reader")
            .is_none()
    );
    // Half a row filter, or a validation file without a data file, is refused at check.
    for (manifest, said) in [
        (
            "dataset \"d\" hub=\"org/d\" validation-path=\"v.jsonl\"\n",
            "sets validation-path without path=",
        ),
        (
            "dataset \"d\" path=\"d.jsonl\" keep-field=\"fold\"\n",
            "sets keep-field without keep-values",
        ),
        (
            "dataset \"d\" path=\"d.jsonl\" {\n    keep-values \"0\"\n}\n",
            "lists keep-values without keep-field",
        ),
    ] {
        std::fs::write(t.path().join("f.kdl"), manifest).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_goosepipe"))
            .args(["check", "f.kdl"])
            .current_dir(t.path())
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{manifest}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(said), "{err}");
    }
}

/// The schema lists the synthetic suite's tasks (so `check` refuses an unknown one);
/// the list and the suite must not drift apart.
#[test]
fn the_schema_knows_every_synthetic_task_and_no_other() {
    let schema = goosepipe::manifest::Schema::embedded();
    let task = schema.group("synthetic").unwrap().prop("task").unwrap();
    let goosepipe::manifest::schema::Type::Enum(values) = &task.ty else {
        panic!("synthetic task is not an enum: {:?}", task.ty)
    };
    let mut listed: Vec<&str> = values.iter().map(String::as_str).collect();
    let mut suite = goosepipe::data::synthetic::task_ids();
    listed.sort();
    suite.sort();
    assert_eq!(listed, suite);
}

/// A damaged Arrow file that makes its decoder panic fails its dataset step with the
/// file named, as bad input: no panic message on stderr, no "internal error".
#[test]
fn a_data_file_whose_decoder_panics_fails_its_step_quietly() {
    let d = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(support::repo_root().join("tests/fixtures/data/flan-data.arrow")).unwrap();
    bytes[2373] = 0xEE;
    std::fs::write(d.path().join("bad.arrow"), bytes).unwrap();
    std::fs::write(
        d.path().join("p.kdl"),
        "dataset \"x\" path=\"bad.arrow\" input-field=\"inputs\" target-field=\"targets\"\n",
    )
    .unwrap();
    let out = run_offline(d.path(), "p.kdl", &d.path().join("cache"), false);
    let said = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("bad.arrow: not a readable Arrow file: its reader stopped at malformed content"),
        "{said}"
    );
    assert!(
        !said.contains("panicked") && !said.contains("internal error"),
        "{said}"
    );
}

/// The same bytes saved as JSON Lines and as CSV are two datasets (their readers
/// differ): two keys, never one artifact for both whichever a store built first.
#[test]
fn the_same_bytes_in_two_file_formats_are_two_keys() {
    let t = tempfile::tempdir().unwrap();
    let rows = "{\"input\":\"q1\",\"target\":\"a1\"}\n";
    for f in ["d.jsonl", "d.ndjson", "d.csv", "d.parquet", "d.arrow"] {
        std::fs::write(t.path().join(f), rows).unwrap();
    }
    std::fs::write(
        t.path().join("f.kdl"),
        "dataset \"j\" path=\"d.jsonl\"\ndataset \"n\" path=\"d.ndjson\"\ndataset \"c\" path=\"d.csv\"\n\
         dataset \"p\" path=\"d.parquet\"\ndataset \"a\" path=\"d.arrow\"\n\
         dataset \"v\" path=\"d.jsonl\" validation-path=\"d.csv\"\n",
    )
    .unwrap();
    let plan = goosepipe::app::load_plan(
        &t.path().join("f.kdl"),
        &goosepipe::steps::registry(),
        &goosepipe::store::hashing::HashCache::in_memory(),
    )
    .unwrap();
    let key = |id: &str| plan.get(id).unwrap().spec.key;
    // .jsonl and .ndjson are read alike: one dataset.
    assert_eq!(key("dataset:j"), key("dataset:n"));
    let keys: std::collections::BTreeSet<_> = ["j", "c", "p", "a", "v"]
        .iter()
        .map(|n| key(&format!("dataset:{n}")))
        .collect();
    assert_eq!(keys.len(), 5, "one key per reader");
}
