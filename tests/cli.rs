//! The command line as users and CI call it: exit codes, outputs, formats.

use std::process::{Command, Output};

fn goosepipe(args: &[&str], store: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_goosepipe"))
        .args(args)
        .env("GOOSEPIPE_STORE", store)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

const GOLDEN: &str = "tests/manifests/golden.kdl";

#[test]
fn check_reports_success_and_every_error_with_exit_1() {
    let t = tempfile::tempdir().unwrap();
    let ok = goosepipe(&["check", GOLDEN], t.path());
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    assert!(
        text(&ok.stdout).contains("is valid: 1 files, 17 steps"),
        "{}",
        text(&ok.stdout)
    );

    let bad = goosepipe(&["check", "tests/manifests/errors/many_errors.kdl"], t.path());
    assert_eq!(bad.status.code(), Some(1));
    let err = text(&bad.stderr);
    assert!(err.contains("5 errors in manifest"), "{err}");
    assert!(err.contains("did you mean `revision`?"), "{err}");
    assert!(
        err.contains("bad_datasets.kdl"),
        "errors of included files are reported too: {err}"
    );
}

#[test]
fn plan_json_and_check_cached_for_ci() {
    let t = tempfile::tempdir().unwrap();
    // A dry run leaves no trace: the store folder it is pointed at is not created.
    let store = t.path().join("not-yet");
    let out = goosepipe(&["plan", GOLDEN, "--json"], &store);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["summary"]["steps"], 17);
    assert_eq!(j["summary"]["to_run"], 17);
    assert_eq!(j["summary"]["to_build"], 17, "no two steps share a key");
    let first = &j["steps"][0];
    assert_eq!(first["id"], "model:base");
    assert_eq!(first["state"], "stale");
    assert_eq!(first["reasons"][0]["reason"], "new");
    assert_eq!(first["key"].as_str().unwrap().len(), 64);

    let guard = goosepipe(&["plan", GOLDEN, "--check-cached"], &store);
    assert_eq!(guard.status.code(), Some(2), "work pending exits 2");
    let explained = goosepipe(&["explain", GOLDEN, "eval:e"], &store);
    assert_eq!(explained.status.code(), Some(0), "{}", text(&explained.stderr));
    assert!(!store.exists(), "plan and explain created the store folder");
    // A file given as the store: every step new, said once (each step read
    // "artifact corrupt (meta.json unreadable: Not a directory)").
    let file = t.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let out = goosepipe(&["plan", GOLDEN, "--json"], &file);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["steps"][0]["reasons"][0]["reason"], "new");
    assert!(
        text(&out.stderr).contains("is a file, not a store folder"),
        "{}",
        text(&out.stderr)
    );
    // A mistyped store is an error for verify and gc (verify passed, finding nothing),
    // and even a dry run of gc created the folder.
    for args in [
        &["verify", GOLDEN][..],
        &["verify", "--all"],
        &["gc", "--dry-run", GOLDEN],
        &["gc", GOLDEN],
    ] {
        let out = goosepipe(args, &store);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            text(&out.stderr).contains("nothing was ever built there"),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    assert!(!store.exists(), "verify or gc created the store folder");
    // An empty folder is no store: read, it is left empty (report and show made it one).
    let empty = t.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for args in [
        &["report", GOLDEN][..],
        &["show", "expert:a"],
        &["verify", GOLDEN],
        &["gc", "--dry-run", GOLDEN],
    ] {
        let out = goosepipe(args, &empty);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            crate::support::one_line(&text(&out.stderr))
                .contains("the folder is empty, nothing was ever built there"),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0, "{args:?}");
    }
    let table = text(&guard.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().take(2).collect::<Vec<_>>() == ["eval", "e"]),
        "{table}"
    );
}

#[test]
fn graph_explain_schema_and_show() {
    let t = tempfile::tempdir().unwrap();
    let dot = text(&goosepipe(&["graph", GOLDEN], t.path()).stdout);
    assert!(
        dot.starts_with("digraph") && dot.contains("\"pool:p\" -> \"eval:e\""),
        "{dot}"
    );
    let mm = text(&goosepipe(&["graph", GOLDEN, "--format", "mermaid", "--status"], t.path()).stdout);
    assert!(
        mm.starts_with("flowchart LR") && mm.contains("class s0 stale"),
        "{mm}"
    );

    // Names are text: a quote or markup in one never breaks a graph or renders.
    // Beside, not in, the store folder: a folder of other files is no store.
    let elsewhere = tempfile::tempdir().unwrap();
    let odd = elsewhere.path().join("odd.kdl");
    std::fs::write(
        &odd,
        "pipeline \"p\\\"q\"\ndataset \"a\\\"b<i>&c#\" { synthetic task=\"corpus\" examples=10; }\n",
    )
    .unwrap();
    let dot = text(&goosepipe(&["graph", odd.to_str().unwrap()], t.path()).stdout);
    assert!(dot.starts_with("digraph \"p\\\"q\" {"), "{dot}");
    assert!(
        dot.contains("  \"dataset:a\\\"b<i>&c#\" [label=\"dataset\\na\\\"b<i>&c#\\n"),
        "{dot}"
    );
    let mm = text(&goosepipe(&["graph", odd.to_str().unwrap(), "--format", "mermaid"], t.path()).stdout);
    assert!(mm.contains("[\"dataset a#34;b#60;i#62;#38;c#35;<br/>"), "{mm}");

    let ex = goosepipe(&["explain", GOLDEN, "gate:a"], t.path());
    let ex = text(&ex.stdout);
    assert!(
        ex.contains("gate.steps") && ex.contains("from `defaults`"),
        "{ex}"
    );
    assert!(ex.contains("expert                       expert:a"), "{ex}");

    let schema = text(&goosepipe(&["schema"], t.path()).stdout);
    assert_eq!(schema, goosepipe::manifest::schema::SCHEMA_TEXT);

    let show = goosepipe(&["show", "expert:a"], t.path());
    assert_eq!(show.status.code(), Some(1));
    // An empty folder given as the store is said as that (it was made a store, then
    // searched: "no artifact in").
    assert!(
        text(&show.stderr).contains("the folder is empty"),
        "{}",
        text(&show.stderr)
    );
    let file = t.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let out = goosepipe(&["export", "expert:a", file.to_str().unwrap()], t.path());
    assert_eq!(out.status.code(), Some(1));
    let said = text(&out.stderr)
        .replace('│', " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        said.contains("a-file is a regular file, not a folder; give a folder to export into"),
        "{said}"
    );
    // A file given as the store is said to be one (it was "File exists (os error 17)").
    let elsewhere = tempfile::tempdir().unwrap();
    let store_file = elsewhere.path().join("a-file");
    std::fs::write(&store_file, "").unwrap();
    let run = goosepipe(&["run", GOLDEN], &store_file);
    assert_eq!(run.status.code(), Some(1));
    assert!(
        text(&run.stderr).contains("a-file is a file, not a store folder"),
        "{}",
        text(&run.stderr)
    );
    // A mistyped store is said to be one, and not created empty.
    let typo = t.path().join("no-such-store");
    for args in [
        &["show", "expert:a"][..],
        &["report", GOLDEN][..],
        &["export", "expert:a", "out"][..],
    ] {
        let out = goosepipe(args, &typo);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            text(&out.stderr).contains("no store at") && text(&out.stderr).contains("no-such-store"),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(!typo.exists(), "{args:?} created the store");
    }
}

/// `--version` says what sets this binary's numerics, the labels a lockfile pins; `-V`
/// is the version alone.
#[test]
fn version_says_the_numerics_this_build_computes() {
    let t = tempfile::tempdir().unwrap();
    let out = goosepipe(&["--version"], t.path());
    assert!(out.status.success());
    let here = goosepipe::process::numerics::numerics("cpu");
    let on = |yes: bool| if yes { "on" } else { "off" };
    assert_eq!(
        text(&out.stdout),
        format!(
            "goosepipe {}\nnumerics on this CPU: {here}\nbuild features: avx512 {}, cuda {}\n",
            env!("CARGO_PKG_VERSION"),
            on(cfg!(feature = "avx512")),
            on(cfg!(feature = "cuda"))
        )
    );
    let short = goosepipe(&["-V"], t.path());
    assert_eq!(
        text(&short.stdout),
        format!("goosepipe {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn bad_flags_are_clear_errors() {
    let t = tempfile::tempdir().unwrap();
    // A usage error is 64, never 2 (`plan --check-cached`'s "something would run").
    let out = goosepipe(&["plan"], t.path());
    assert_eq!(out.status.code(), Some(goosepipe::app::EXIT_USAGE));
    let out = goosepipe(&["plan", GOLDEN, "--check-cahced"], t.path());
    assert_eq!(out.status.code(), Some(goosepipe::app::EXIT_USAGE));
    assert!(text(&out.stderr).contains("<FILE>"), "{}", text(&out.stderr));
    let out = goosepipe(&["run", GOLDEN, "--only", "x", "--until", "y"], t.path());
    assert!(
        text(&out.stderr).contains("cannot be used with"),
        "{}",
        text(&out.stderr)
    );
    // Slurm flags with values no scheduler takes are refused before anything runs
    // (NaN and negative seconds became 0, --max-jobs 0 became 1, --array-throttle 0
    // reached sbatch as %0).
    for (flag, value, says) in [
        ("--poll-max", "nan", "from 0 to a year"),
        ("--latency-wait", "-1", "from 0 to a year"),
        ("--pending-grace", "inf", "from 0 to a year"),
        ("--max-jobs", "0", "must be at least 1"),
        ("--array-throttle", "0", "must be at least 1"),
        ("--max-array-size", "-3", "must be at least 1"),
    ] {
        let out = goosepipe(&["run", GOLDEN, flag, value], t.path());
        assert_eq!(out.status.code(), Some(goosepipe::app::EXIT_USAGE), "{flag}");
        assert!(text(&out.stderr).contains(says), "{flag}: {}", text(&out.stderr));
    }
    // A dry run is `plan`, said where a user looks for it.
    let out = goosepipe(&["run", GOLDEN, "--dry-run"], t.path());
    assert_eq!(out.status.code(), Some(goosepipe::app::EXIT_USAGE));
    assert!(
        text(&out.stderr).contains("`run` has no --dry-run") && text(&out.stderr).contains("goosepipe plan"),
        "{}",
        text(&out.stderr)
    );
    // Flag combinations found wrong after parsing are usage errors too (they exited
    // 1, as a failed run does).
    for (args, says) in [
        (&["run", "--only", "expert:a", GOLDEN][..], "--only took `"),
        (
            &["report", GOLDEN, "--examples", "t", "--format", "csv"][..],
            "has no CSV form",
        ),
        (
            &[
                "score",
                "--model",
                "m",
                "--input",
                "a",
                "--target",
                "b",
                "--router",
                "retrieval",
            ][..],
            "unknown router `retrieval`",
        ),
        (
            &[
                "score",
                "--model",
                "m",
                "--experts",
                "a",
                "b",
                "--input",
                "a",
                "--target",
                "b",
            ][..],
            "--router single runs one expert's LoRA alone, and 2 experts were given",
        ),
        // Gates without their experts were blamed on the default router; a router that
        // combines experts, given none, scored the base model as if asked.
        (
            &[
                "score", "--model", "m", "--gates", "g", "--input", "a", "--target", "b",
            ][..],
            "--gates given without --experts",
        ),
        (
            &[
                "score",
                "--model",
                "m",
                "--router",
                "phatgoose",
                "--input",
                "a",
                "--target",
                "b",
            ][..],
            "--router phatgoose combines experts, and none was given",
        ),
    ] {
        let out = goosepipe(args, t.path());
        assert_eq!(
            out.status.code(),
            Some(goosepipe::app::EXIT_USAGE),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(says),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    let out = goosepipe(&["verify"], t.path());
    assert!(
        text(&out.stderr).contains("goosepipe verify --all"),
        "{}",
        text(&out.stderr)
    );
    let out = goosepipe(&["explain", GOLDEN, "expert:zz"], t.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no step named \"expert:zz\""),
        "{}",
        text(&out.stderr)
    );
    // Suggestions compare names within the kind asked for: the shared `expert:` of
    // every expert's id is no likeness.
    let out = goosepipe(&["explain", GOLDEN, "expert:nope"], t.path());
    assert!(
        !text(&out.stderr).contains("did you mean"),
        "{}",
        text(&out.stderr)
    );
    let out = goosepipe(&["explain", GOLDEN, "expert:aa"], t.path());
    assert!(
        text(&out.stderr).contains("did you mean expert:a?"),
        "{}",
        text(&out.stderr)
    );
    // A misspelt kind compares whole ids; a bare name several steps share is
    // suggested as their ids.
    let out = goosepipe(&["explain", GOLDEN, "exprt:a"], t.path());
    assert!(
        text(&out.stderr).contains("did you mean expert:a?"),
        "{}",
        text(&out.stderr)
    );
    // A kind alone suggests its steps.
    let out = goosepipe(&["explain", GOLDEN, "pool"], t.path());
    assert!(
        text(&out.stderr).contains("did you mean pool:p?"),
        "{}",
        text(&out.stderr)
    );
    let out = goosepipe(&["explain", GOLDEN, "aa"], t.path());
    // As one line: the renderer wraps long messages.
    let said = text(&out.stderr)
        .replace('│', " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        said.contains("did you mean one of dataset:a, tokenize:a, expert:a, gate:a"),
        "{said}"
    );
    // Checked when the command line is read, before any step runs (nothing is built).
    for (args, says) in [
        (
            &["run", GOLDEN, "--device", "gpu"][..],
            "expected cpu, cuda or cuda:N",
        ),
        (&["run", GOLDEN, "-j", "0"][..], "must be at least 1"),
        (&["run", GOLDEN, "-j", "-1"][..], "must be at least 1"),
        (
            &["exec", "--device", "cuda:x", "--key", "00"][..],
            "expected cpu, cuda or cuda:N",
        ),
    ] {
        let out = goosepipe(args, t.path());
        assert_eq!(out.status.code(), Some(goosepipe::app::EXIT_USAGE), "{args:?}");
        assert!(
            text(&out.stderr).contains(says),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    if !cfg!(feature = "cuda") {
        let out = goosepipe(&["run", GOLDEN, "--device", "cuda"], t.path());
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out.stderr).contains("--device cuda: ") && text(&out.stderr).contains("--features cuda"),
            "{}",
            text(&out.stderr)
        );
        // Into a store not made yet: refused before it is made.
        let fresh = t.path().join("fresh-store");
        let out = goosepipe(&["run", GOLDEN, "--device", "cuda"], &fresh);
        assert_eq!(out.status.code(), Some(1));
        assert!(!fresh.exists(), "the refused run made a store");
    }
    let built = std::fs::read_dir(t.path().join("objects")).map_or(0, |d| d.count());
    assert_eq!(built, 0, "nothing ran");
    let out = Command::new(env!("CARGO_BIN_EXE_goosepipe"))
        .args(["exec", "--keys-file", GOLDEN])
        .env("GOOSEPIPE_STORE", t.path())
        .env_remove("SLURM_ARRAY_TASK_ID")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(goosepipe::app::EXIT_USAGE));
    assert!(
        text(&out.stderr).contains("needs --index N"),
        "{}",
        text(&out.stderr)
    );
}

/// `goosepipe check bad.kdl 2>&1 | head -1`: the reader is gone before the error is
/// written; the exit code stays the error's (1), not a panic's (101).
#[test]
fn a_closed_pipe_does_not_turn_an_error_into_a_panic() {
    let t = tempfile::tempdir().unwrap();
    let bad = t.path().join("bad.kdl");
    std::fs::write(
        &bad,
        "pipeline \"p\"\nexpert \"e\" model=\"nope\" dataset=\"nope\"\n",
    )
    .unwrap();
    for (args, stream) in [
        (vec!["check", bad.to_str().unwrap()], "stderr"),
        (vec!["schema"], "stdout"),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_goosepipe"));
        cmd.args(&args).env("GOOSEPIPE_STORE", t.path());
        // The pipe's read end is closed before the process can write to it.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        if stream == "stderr" {
            cmd.stderr(writer).stdout(std::process::Stdio::null());
        } else {
            cmd.stdout(writer).stderr(std::process::Stdio::null());
        }
        let code = cmd.status().unwrap().code();
        let want = if stream == "stderr" { 1 } else { 0 };
        assert_eq!(code, Some(want), "{args:?}");
    }
}

/// `exec --keys-file /dev/zero` read until memory ran out: refused, saying what it is.
#[test]
fn exec_refuses_a_key_list_that_is_no_file() {
    let t = tempfile::tempdir().unwrap();
    let out = goosepipe(&["exec", "--keys-file", "/dev/zero", "--index", "0"], t.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("cannot read the key list /dev/zero: it is a character device"),
        "{}",
        text(&out.stderr)
    );
}

/// `show` of a dataset prints the settings its source reads, and names apart the keyed
/// defaults it does not (a synthetic task reads no field mapping).
#[test]
fn show_of_a_dataset_names_apart_the_settings_its_source_does_not_read() {
    let t = tempfile::tempdir().unwrap();
    let m = t.path().join("m.kdl");
    std::fs::write(&m, "dataset \"d\" { synthetic task=\"sort\" examples=40; }\n").unwrap();
    let run = goosepipe(&["run", m.to_str().unwrap()], &t.path().join("store"));
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    let show = goosepipe(&["show", "dataset:d"], &t.path().join("store"));
    let shown = text(&show.stdout);
    assert_eq!(show.status.code(), Some(0), "{shown}");
    let params = shown.lines().find(|l| l.starts_with("params")).unwrap();
    assert!(
        params.contains("\"task\":\"sort\"") && params.contains("\"split\":\"train\""),
        "{shown}"
    );
    assert!(!params.contains("input-field"), "{shown}");
    assert!(
        shown.contains(
            "(also keyed, and not read for a synthetic task: choices-field, drop-empty, holdout, input-field, revision, target-field, templates)"
        ),
        "{shown}"
    );
}

/// `plan --until STEP` / `--only STEP...` preview what `run` with that selection
/// would run: the same steps (the rest marked as staying stale, in text and JSON),
/// the same refusals, and `--check-cached` about the selection alone.
#[test]
fn plan_previews_a_runs_selection() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let out = goosepipe(&["plan", GOLDEN, "--until", "gate:a", "--json"], &store);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs: Vec<&str> = j["selection"]["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        runs,
        ["model:base", "dataset:a", "tokenize:a", "expert:a", "gate:a"]
    );
    assert_eq!(j["selection"]["flag"], "--until gate:a");
    for step in j["steps"].as_array().unwrap() {
        let id = step["id"].as_str().unwrap();
        assert_eq!(step["selected"], runs.contains(&id), "{id}");
        assert_eq!(step["will_run"], true, "{id}: nothing is built");
    }
    let out = goosepipe(&["plan", GOLDEN, "--until", "gate:a"], &store);
    let plan = text(&out.stdout);
    assert!(
        plan.contains("--until gate:a runs 5 step(s); the 12 other stale step(s) stay stale"),
        "{plan}"
    );
    let row = |id: &str| {
        let (kind, name) = id.split_once(':').unwrap();
        plan.lines()
            .find(|l| l.split_whitespace().take(2).eq([kind, name]))
            .unwrap_or_else(|| panic!("no row {id}: {plan}"))
            .to_string()
    };
    assert!(
        row("gate:b").contains("stale, not run by --until gate:a: new"),
        "{plan}"
    );
    assert!(
        row("gate:a").contains("stale: new") && !row("gate:a").contains("not run"),
        "{plan}"
    );
    // Without a selection every step is selected.
    let out = goosepipe(&["plan", GOLDEN, "--json"], &store);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(j["selection"].is_null());
    assert!(
        j["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["selected"] == s["will_run"])
    );
    // Refused as run refuses it: --only a step whose inputs are not built.
    let out = goosepipe(&["plan", GOLDEN, "--only", "gate:a"], &store);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("gate:a needs tokenize:a, which is not built"),
        "{}",
        text(&out.stderr)
    );
    let out = goosepipe(&["plan", GOLDEN, "--only", "x", "--until", "y"], &store);
    assert_eq!(out.status.code(), Some(goosepipe::app::EXIT_USAGE));
    let out = goosepipe(&["plan", GOLDEN, "--until", "gate:zz"], &store);
    assert!(
        text(&out.stderr).contains("no step named \"gate:zz\""),
        "{}",
        text(&out.stderr)
    );
    // --check-cached about the selection: work pending exits 2.
    let out = goosepipe(&["plan", GOLDEN, "--until", "gate:a", "--check-cached"], &store);
    assert_eq!(out.status.code(), Some(2));
}
