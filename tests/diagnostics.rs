//! Golden tests of rendered diagnostics: one manifest per error class under
//! tests/manifests/errors/, rendered exactly as `goosepipe check` prints them (without
//! colours), snapshotted with insta.

use std::path::Path;

use miette::{GraphicalReportHandler, GraphicalTheme};

fn render(name: &str) -> (String, Vec<&'static str>) {
    let path = format!("tests/manifests/errors/{name}.kdl");
    let reg = goosepipe::steps::registry();
    let err = match goosepipe::plan::load(Path::new(&path), &reg, &goosepipe::store::HashCache::in_memory()) {
        Err(e) => e,
        Ok(_) => panic!("{path} should not validate"),
    };
    let mut out = String::new();
    GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
        .with_width(100)
        .render_report(&mut out, &err)
        .unwrap();
    (out, err.codes())
}

use crate::support::one_line;

macro_rules! golden {
    ($name:ident, $($code:literal),+) => {
        #[test]
        fn $name() {
            let (text, codes) = render(stringify!($name));
            let expected: Vec<&str> = vec![$($code),+];
            assert_eq!(codes, expected, "{text}");
            insta::assert_snapshot!(text);
        }
    };
}

golden!(syntax, "manifest::syntax");
golden!(unknown_node, "manifest::unknown-node");
golden!(
    unknown_property,
    "manifest::unknown-property",
    "manifest::unknown-property"
);
// A group's setting written on the node is pointed to its group.
golden!(
    group_setting_on_node,
    "manifest::unknown-property",
    "manifest::unknown-property"
);
golden!(wrong_type, "manifest::wrong-type", "manifest::wrong-type");
golden!(
    out_of_range,
    "manifest::out-of-range",
    "manifest::out-of-range",
    "manifest::out-of-range",
    "manifest::out-of-range",
    "manifest::wrong-type"
);
golden!(wrong_value, "manifest::wrong-value", "manifest::wrong-value");
golden!(
    undefined_reference,
    "manifest::undefined-reference",
    "manifest::undefined-reference",
    "manifest::undefined-reference",
    "manifest::undefined-reference",
    "manifest::undefined-reference"
);
golden!(
    duplicate,
    "manifest::duplicate",
    "manifest::duplicate",
    "manifest::duplicate"
);
golden!(include_cycle, "manifest::include-cycle");
golden!(
    include_missing,
    "manifest::include-missing",
    "manifest::include-escapes"
);
golden!(
    missing_property,
    "manifest::one-of",
    "manifest::one-of",
    "manifest::missing-file",
    "manifest::missing-argument",
    "manifest::missing-property",
    "manifest::missing-property"
);
golden!(
    unknown_method,
    "manifest::unknown-method",
    "manifest::undefined-reference"
);
golden!(missing_file, "manifest::missing-file", "manifest::missing-file");
golden!(
    wrong_path,
    "manifest::wrong-path",
    "manifest::wrong-path",
    "manifest::wrong-path"
);
golden!(mixed_models, "manifest::mixed-models");
golden!(
    many_errors,
    "manifest::unknown-property",
    "manifest::out-of-range",
    "manifest::undefined-reference",
    "manifest::wrong-type",
    "manifest::out-of-range"
);

#[test]
fn unreadable_manifest_is_a_diagnostic_not_a_panic() {
    let err = goosepipe::manifest::load(Path::new("tests/manifests/errors/does-not-exist.kdl")).unwrap_err();
    assert_eq!(err.codes(), vec!["manifest::unreadable"]);
}
golden!(list_continuation, "manifest::unknown-node");
golden!(too_deep, "manifest::too-deep");
golden!(
    bad_name,
    "manifest::bad-name",
    "manifest::bad-name",
    "manifest::undefined-reference",
    "manifest::bad-name"
);
golden!(path_escapes, "manifest::path-escapes", "manifest::path-escapes");
golden!(
    unknown_synthetic,
    "manifest::wrong-value",
    "manifest::wrong-value"
);

/// `goosepipe check` of a manifest in a temporary project folder.
fn check_text(files: &[(&str, &str)]) -> (Result<String, String>, tempfile::TempDir) {
    let d = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(d.path().join(name), text).unwrap();
    }
    let mut out = Vec::new();
    let r = goosepipe::app::check(
        &d.path().join(files[0].0),
        &goosepipe::steps::registry(),
        &mut out,
    );
    let text = String::from_utf8(out).unwrap();
    (
        match r {
            Ok(_) => Ok(text),
            Err(e) => Err(format!("{e:?}")),
        },
        d,
    )
}

/// A value out of range beside values sbatch could not read, in one `resources`:
/// every one is said at once (the range error hid the other two: fix it, check
/// again, find the next).
#[test]
fn every_wrong_resource_is_said_beside_an_out_of_range_one() {
    let qs = std::fs::read_to_string("pipelines/quickstart.kdl").unwrap();
    let good = "resources cpus=2 memory=\"4G\" time=\"1:00:00\"";
    assert!(qs.contains(good));
    let bad = qs.replace(good, "resources cpus=0 memory=\"lots\" time=\"forever\"");
    let (r, _d) = check_text(&[("m.kdl", &bad)]);
    let err = r.unwrap_err();
    assert!(err.contains("3 errors in manifest"), "{err}");
    for said in [
        "`cpus` = 0 is out of range",
        "memory=\"lots\" is not a size sbatch reads",
        "time=\"forever\" is not a time limit sbatch reads",
    ] {
        assert!(err.contains(said), "{said}: {err}");
    }
}

#[test]
fn nesting_one_level_too_deep_is_a_diagnostic_and_any_depth_is_safe() {
    let nest = |n: usize| "x {".repeat(n) + &"}".repeat(n);
    let limit = goosepipe::kdl_text::MAX_DEPTH;
    // At the limit the parser runs (and the schema rejects `x`), just over it and far
    // over it (1,281 levels overflowed the stack before) it is refused unparsed.
    let (r, _d) = check_text(&[("m.kdl", &nest(limit))]);
    assert!(r.unwrap_err().contains("unknown node"));
    for n in [limit + 1, 1281, 100_000] {
        let (r, _d) = check_text(&[("m.kdl", &nest(n))]);
        assert!(r.unwrap_err().contains("blocks nest deeper than"), "{n}");
    }
    let comments = "/*".repeat(5000) + &"*/".repeat(5000);
    let (r, _d) = check_text(&[("m.kdl", &comments)]);
    assert!(r.unwrap_err().contains("blocks nest deeper than"));
}

/// A batch past any sense is out of range at once: a prime one near 10^15 with a
/// micro-batch just below it hung `check` (the uneven-batch hint searched every
/// number below it for a divisor).
#[test]
fn batch_sizes_have_a_bound() {
    let (r, _d) = check_text(&[(
        "m.kdl",
        "defaults {\n    train batch=1000000000000037 micro-batch=1000000000000036\n}\n",
    )]);
    let err = r.unwrap_err();
    assert!(
        err.contains("`batch` = 1000000000000037 is out of range")
            && err.contains("must be between 1 and 1048576"),
        "{err}"
    );
}

/// A memory or time limit sbatch cannot read is an error of `check`, once, where it
/// is written (it passed, and failed at submission mid-run).
#[test]
fn resources_sbatch_cannot_read_are_errors_where_they_are_written() {
    let text = "defaults {\n    resources memory=\"lots\" time=\"forever\"\n    train steps=10\n}\ndataset \"c\" { synthetic task=\"corpus\" examples=50; }\nmodel \"t\" { init corpus=\"c\" d-model=16 d-ff=32 d-kv=8 heads=2 layers=1; }\ndataset \"s\" { synthetic task=\"sort\" examples=50; }\ndataset \"r\" { synthetic task=\"reverse\" examples=50; }\nexpert \"s\" model=\"t\" dataset=\"s\"\nexpert \"r\" model=\"t\" dataset=\"r\"\n";
    let (r, _d) = check_text(&[("m.kdl", text)]);
    let err = r.unwrap_err();
    assert!(err.contains("2 errors in manifest"), "{err}");
    assert!(
        err.contains("memory=\"lots\" is not a size sbatch reads")
            && err.contains("time=\"forever\" is not a time limit sbatch reads")
            && err.contains("m.kdl:2:"),
        "{err}"
    );
    // On an eval node (the steps its methods need ask the same), too.
    let on_eval = format!(
        "{}pool \"p\" {{ experts \"s\" \"r\"; }}\neval \"e\" pool=\"p\" {{\n    methods \"merged\"\n    task \"t\" dataset=\"s\"\n    resources time=\"1h\"\n}}\n",
        text.replace("    resources memory=\"lots\" time=\"forever\"\n", "")
    );
    let (r, _d) = check_text(&[("m.kdl", &on_eval)]);
    let err = r.unwrap_err();
    assert!(
        err.contains("time=\"1h\" is not a time limit sbatch reads"),
        "{err}"
    );
    let fine = text.replace(
        "memory=\"lots\" time=\"forever\"",
        "memory=\"32G\" time=\"1-12:00\"",
    );
    let (r, _d) = check_text(&[("m.kdl", &fine)]);
    assert!(r.is_ok(), "{r:?}");
}

/// A LoRA rank above the width of a model the pipeline builds adds parameters and
/// no rank: a warning, once, where the rank is written.
#[test]
fn a_lora_rank_above_the_models_width_is_a_warning() {
    let text = "defaults {\n    lora rank=64\n}\ndataset \"c\" { synthetic task=\"corpus\" examples=50; }\nmodel \"t\" { init corpus=\"c\" d-model=16 d-ff=32 d-kv=8 heads=2 layers=1; }\ndataset \"s\" { synthetic task=\"sort\" examples=50; }\ndataset \"r\" { synthetic task=\"reverse\" examples=50; }\nexpert \"s\" model=\"t\" dataset=\"s\"\nexpert \"r\" model=\"t\" dataset=\"r\"\n";
    let (r, _d) = check_text(&[("m.kdl", text)]);
    let out = r.unwrap();
    assert_eq!(
        out.matches("lora rank=64 is above the d-model (16) of model \"t\"")
            .count(),
        1,
        "{out}"
    );
    let (r, _d) = check_text(&[("m.kdl", &text.replace("rank=64", "rank=16"))]);
    assert!(!r.unwrap().contains("rank-above-width"));
}

/// An empty `targets` list adapted nothing: every expert failed at run time, with
/// no line to look at.
#[test]
fn an_empty_lora_targets_list_is_an_error_of_check() {
    let (r, _d) = check_text(&[(
        "m.kdl",
        "defaults {\n    lora rank=4 {\n        targets\n    }\n}\n",
    )]);
    let err = r.unwrap_err();
    assert!(err.contains("targets") && err.contains("m.kdl:3:"), "{err}");
}

#[test]
fn include_chains_are_bounded() {
    let files: Vec<(String, String)> = (0..40)
        .map(|i| (format!("f{i}.kdl"), format!("include \"f{}.kdl\"\n", i + 1)))
        .chain([(
            "f40.kdl".to_string(),
            "dataset \"d\" { synthetic task=\"sort\"; }\n".to_string(),
        )])
        .collect();
    let refs: Vec<(&str, &str)> = files.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let (r, _d) = check_text(&refs);
    assert!(r.unwrap_err().contains("includes nest deeper than 32 files"));
}

#[test]
fn an_empty_manifest_is_valid_with_a_warning() {
    for text in ["", "   \n\t\n", "// only a comment\n"] {
        let (r, _d) = check_text(&[("m.kdl", text)]);
        let out = r.unwrap();
        assert!(out.contains("the manifest defines no steps"), "{out}");
        assert!(out.contains("0 steps"), "{out}");
    }
}

/// Runs `f` on its own thread; a hang fails the test after `secs` instead of blocking it.
fn within(secs: u64, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(std::time::Duration::from_secs(secs)) {
        Ok(Ok(())) => {}
        Ok(Err(p)) => std::panic::resume_unwind(p),
        Err(_) => panic!("blocked for {secs} s"),
    }
}

#[test]
fn special_files_are_refused_not_read() {
    within(20, special_files_body);
}

fn special_files_body() {
    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("pipe.jsonl");
    let status = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    let inc = d.path().join("inc.kdl");
    std::process::Command::new("mkfifo").arg(&inc).status().unwrap();
    std::fs::write(
        d.path().join("m.kdl"),
        "pipeline \"p\" allow-outside-paths=#true\n\
         dataset \"fifo\" path=\"pipe.jsonl\" input-field=\"q\" target-field=\"a\"\n\
         dataset \"zero\" path=\"/dev/zero\" input-field=\"q\" target-field=\"a\"\n",
    )
    .unwrap();
    let reg = goosepipe::steps::registry();
    let err = goosepipe::app::check(&d.path().join("m.kdl"), &reg, &mut Vec::new()).unwrap_err();
    let text = format!("{err:?}");
    assert!(
        text.contains("it is a FIFO, not a regular file or folder"),
        "{text}"
    );
    assert!(text.contains("it is a character device"), "{text}");
    std::fs::write(d.path().join("n.kdl"), "include \"inc.kdl\"\n").unwrap();
    let err = goosepipe::app::check(&d.path().join("n.kdl"), &reg, &mut Vec::new()).unwrap_err();
    assert!(
        format!("{err:?}").contains("it is not a regular file (a FIFO)"),
        "{err:?}"
    );
    let err = goosepipe::app::check(&inc, &reg, &mut Vec::new()).unwrap_err();
    assert!(format!("{err:?}").contains("not a regular file"), "{err:?}");
}

#[test]
fn paths_outside_the_project_need_the_pipeline_to_allow_them() {
    let outer = tempfile::tempdir().unwrap();
    std::fs::write(outer.path().join("data.jsonl"), "{\"q\": \"x\", \"a\": \"y\"}\n").unwrap();
    let project = outer.path().join("project");
    std::fs::create_dir(&project).unwrap();
    // Through a symlink inside the project.
    std::os::unix::fs::symlink(outer.path().join("data.jsonl"), project.join("link.jsonl")).unwrap();
    let body = "dataset \"a\" path=\"../data.jsonl\" input-field=\"q\" target-field=\"a\"\n\
                dataset \"b\" path=\"link.jsonl\" input-field=\"q\" target-field=\"a\"\n";
    std::fs::write(project.join("m.kdl"), body).unwrap();
    let reg = goosepipe::steps::registry();
    let errors = errors_of(&project.join("m.kdl"));
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].1.ends_with("it is outside the project folder"),
        "{errors:?}"
    );
    assert!(errors[1].1.ends_with("through a symlink"), "{errors:?}");
    assert!(errors.iter().all(|e| e.0 == "manifest::path-escapes"));
    std::fs::write(
        project.join("m.kdl"),
        format!("pipeline \"p\" allow-outside-paths=#true\n{body}"),
    )
    .unwrap();
    let mut out = Vec::new();
    goosepipe::app::check(&project.join("m.kdl"), &reg, &mut out).unwrap();
}

#[test]
fn a_model_too_large_for_this_machine_is_a_warning_at_check() {
    let text = "dataset \"c\" { synthetic task=\"corpus\"; }\n\
                model \"huge\" { init corpus=\"c\" d-model=16384 d-ff=65536 heads=128 d-kv=128 layers=128 vocab=262144; }\n";
    let (r, d) = check_text(&[("m.kdl", text)]);
    let out = r.unwrap();
    assert!(out.contains("plan::model-too-large"), "{out}");
    let plan = goosepipe::app::load_plan(
        &d.path().join("m.kdl"),
        &goosepipe::steps::registry(),
        &goosepipe::store::HashCache::in_memory(),
    )
    .unwrap();
    assert_eq!(plan.warnings.len(), 1);
    let w = &plan.warnings[0];
    assert!(w.warning);
    assert!(
        w.message.starts_with(
            "model \"huge\" has about 1245554319360 parameters: pretraining it needs at least 18.1 TiB"
        ),
        "{}",
        w.message
    );
}

/// Names that read as another name (blank, white space at an end, bidirectional text
/// controls that display them reordered) are refused at their node.
#[test]
fn names_that_read_as_other_names_are_refused() {
    for (name, why) in [
        (" ", "is blank"),
        ("sort ", "starts or ends with white space"),
        ("a\\u{202e}b", "contains a bidirectional text control character"),
    ] {
        let text = format!("dataset \"{name}\" {{ synthetic task=\"sort\"; }}\n");
        let (r, _d) = check_text(&[("m.kdl", &text)]);
        let err = r.unwrap_err();
        assert!(
            err.contains("manifest::bad-name") && err.contains(why),
            "{name:?}: {err}"
        );
    }
}

/// A syntax error in an included file is the error said: the references to what that
/// file defines are not each called undefined ("this manifest defines no dataset; add
/// `dataset ...`"), which buried it.
#[test]
fn a_syntax_error_in_an_included_file_is_not_followed_by_undefined_names() {
    let (r, _d) = check_text(&[
        (
            "m.kdl",
            "include \"data.kdl\"\n\
             model \"m\" { init corpus=\"c\" d-model=16 d-ff=32 d-kv=8 heads=2 layers=1; }\n\
             expert \"r\" model=\"m\" dataset=\"r\"\n\
             expert \"s\" model=\"m\" dataset=\"nowhere\"\n",
        ),
        (
            "data.kdl",
            "dataset \"c\" { synthetic task=\"corpus\"; }\ndataset \"r\" { synthetic task=\"reverse\" \n",
        ),
    ]);
    let err = r.unwrap_err();
    assert!(
        err.contains("manifest::syntax") && err.contains("data.kdl"),
        "{err}"
    );
    assert!(
        !err.contains("undefined-reference") && !err.contains("defines no"),
        "{err}"
    );
}

/// A revision of a model that reads nothing from the hub is refused, as an expert's
/// without peft-hub= is (it was keyed, read by nothing, and rebuilt every step after).
#[test]
fn a_model_revision_without_hub_is_refused() {
    let (r, _d) = check_text(&[(
        "m.kdl",
        "dataset \"c\" { synthetic task=\"corpus\"; }\n\
         model \"m\" revision=\"v2\" { init corpus=\"c\" d-model=16 d-ff=32 d-kv=8 heads=2 layers=1; }\n\
         dataset \"d\" { synthetic task=\"sort\"; }\n\
         expert \"x\" model=\"m\" dataset=\"d\" revision=\"v1\"\n",
    )]);
    let err = r.unwrap_err();
    assert_eq!(err.matches("manifest::revision-without-hub").count(), 2, "{err}");
    assert!(
        err.contains("model \"m\" sets revision= but reads nothing from the hub")
            && err.contains("expert \"x\" sets revision= but imports nothing from the hub"),
        "{err}"
    );
}

/// A child of a `defaults` group (`lora { targets ... }`) is said by `explain` to come
/// from `defaults`, as the group's own settings are (it said "set at" its line, as if
/// written on the expert).
#[test]
fn explain_says_an_inherited_child_setting_comes_from_defaults() {
    let text = "dataset \"c\" { synthetic task=\"corpus\" examples=100; }\n\
                model \"m\" { init corpus=\"c\" d-model=16 d-ff=32 d-kv=8 heads=2 layers=1; }\n\
                dataset \"r\" { synthetic task=\"reverse\" examples=50; }\n\
                defaults {\n    lora rank=2 {\n        targets \"ffn\"\n    }\n}\n\
                expert \"r\" model=\"m\" dataset=\"r\"\n";
    let (r, d) = check_text(&[("m.kdl", text)]);
    r.unwrap();
    let mut out = Vec::new();
    goosepipe::app::explain(
        &d.path().join("m.kdl"),
        "expert:r",
        &d.path().join("store"),
        &goosepipe::steps::registry(),
        "cpu",
        &mut out,
    )
    .unwrap();
    let out = String::from_utf8(out).unwrap();
    let line = |p: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(p))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        line("lora.targets").ends_with("from `defaults` at m.kdl:6"),
        "{out}"
    );
    assert!(line("lora.rank").ends_with("from `defaults` at m.kdl:5"), "{out}");
}

/// The multitask baseline takes its training from `defaults`: where the pool's experts
/// set theirs each on their own, it trained silently with the schema's (1000 steps of
/// 1024 at rank 16 beside experts of 4 steps at rank 2). Said at the eval's method;
/// seeds that differ between experts, or settings in `defaults`, are not.
#[test]
fn a_multitask_baseline_trained_otherwise_than_its_experts_is_a_warning() {
    let text = |each: &str, lora: &str, defaults: &str| {
        format!(
            "dataset \"c\" {{ synthetic task=\"corpus\" examples=100; }}\n\
             model \"m\" {{ init corpus=\"c\" d-model=16 d-ff=32 d-kv=8 heads=2 layers=1; }}\n\
             dataset \"r\" {{ synthetic task=\"reverse\" format=\"choice\" examples=50; }}\n\
             dataset \"s\" {{ synthetic task=\"sort\" format=\"choice\" examples=50; }}\n\
             {defaults}\n\
             expert \"r\" model=\"m\" dataset=\"r\" {{ train {each} seed=1; {lora} }}\n\
             expert \"s\" model=\"m\" dataset=\"s\" {{ train {each} seed=2; {lora} }}\n\
             pool \"p\" {{ experts \"r\" \"s\"; }}\n\
             eval \"e\" pool=\"p\" {{\n    methods \"phatgoose\" \"multitask\"\n    task \"t\" dataset=\"s\"\n}}\n"
        )
    };
    let warnings = |text: String| {
        let (r, d) = check_text(&[("m.kdl", &text)]);
        r.unwrap();
        goosepipe::app::load_plan(
            &d.path().join("m.kdl"),
            &goosepipe::steps::registry(),
            &goosepipe::store::HashCache::in_memory(),
        )
        .unwrap()
        .warnings
    };
    let w = warnings(text("steps=4 batch=8 micro-batch=8", "lora rank=2;", ""));
    let w: Vec<_> = w
        .iter()
        .filter(|w| w.code == "plan::multitask-unlike-experts")
        .collect();
    assert_eq!(w.len(), 1);
    assert_eq!(
        w[0].message,
        "eval \"e\": the multitask baseline of pool \"p\" trains otherwise than its experts: train.batch 1024 (theirs 8), train.steps 1000 (theirs 4), lora.rank 16 (theirs 2)"
    );
    assert!(w[0].warning);
    // The same settings in `defaults`: both train alike, nothing said.
    let w = warnings(text(
        "",
        "",
        "defaults { train steps=4 batch=8 micro-batch=8; lora rank=2; }",
    ));
    assert!(
        w.iter().all(|w| w.code != "plan::multitask-unlike-experts"),
        "{w:?}"
    );
}

/// An included file may not name the pipeline (nor, through it, let the project read
/// outside its folder).
#[test]
fn an_included_file_may_not_have_a_pipeline_node() {
    let (r, _d) = check_text(&[
        (
            "m.kdl",
            "include \"inner.kdl\"\ndataset \"c\" { synthetic task=\"corpus\"; }\n",
        ),
        ("inner.kdl", "pipeline \"inner\" allow-outside-paths=#true\n"),
    ]);
    let err = r.unwrap_err();
    assert!(
        err.contains("manifest::pipeline-in-include")
            && err.contains("an included file may not have a `pipeline` node"),
        "{err}"
    );
}

/// `split=` and `validation-split=` say nothing about a local file (one split): a
/// warning each, not silence.
#[test]
fn split_settings_on_a_local_file_are_a_warning() {
    let (r, _d) = check_text(&[
        (
            "m.kdl",
            "dataset \"d\" path=\"d.jsonl\" split=\"test\" validation-split=\"dev\"\n",
        ),
        ("d.jsonl", "{\"input\": \"a\", \"target\": \"b\"}\n"),
    ]);
    let out = r.unwrap();
    assert_eq!(out.matches("plan::ignored-settings").count(), 2, "{out}");
    assert!(out.contains("reads a local file: `split` is not used"), "{out}");
    let (r, _d) = check_text(&[
        ("m.kdl", "dataset \"d\" path=\"d.jsonl\"\n"),
        ("d.jsonl", "{\"input\": \"a\", \"target\": \"b\"}\n"),
    ]);
    assert!(!r.unwrap().contains("ignored-settings"));
    // How validation is held back, beside a validation file of its own (and a hub
    // split beside its validation split): nothing is held back.
    let (r, _d) = check_text(&[
        (
            "m.kdl",
            "dataset \"d\" path=\"d.jsonl\" validation-path=\"d.jsonl\" holdout=\"flan\"\n\
             dataset \"h\" hub=\"org/data\" validation-split=\"dev\" holdout=\"flan\"\n\
             dataset \"k\" hub=\"org/data\" holdout=\"flan\"\n",
        ),
        ("d.jsonl", "{\"input\": \"a\", \"target\": \"b\"}\n"),
    ]);
    let out = one_line(&r.unwrap());
    assert_eq!(out.matches("plan::ignored-settings").count(), 2, "{out}");
    assert!(
        out.contains(
            "dataset \"d\" has validation examples of its own (validation-path=): `holdout` is not used"
        ) && out.contains(
            "dataset \"h\" has validation examples of its own (validation-split=): `holdout` is not used"
        ),
        "{out}"
    );
    // A field mapping beside templates, which write the whole example from the row.
    let (r, _d) = check_text(&[(
        "m.kdl",
        "dataset \"h\" hub=\"super_glue\" config=\"rte\" input-field=\"premise\" {\n    choices \"yes\" \"no\"\n    templates name=\"super_glue/rte\"\n}\n",
    )]);
    let out = one_line(&r.unwrap());
    assert_eq!(out.matches("plan::ignored-settings").count(), 2, "{out}");
    assert!(
        out.contains("dataset \"h\" renders its rows with templates: `input-field` is not used")
            && out.contains("dataset \"h\" renders its rows with templates: `choices` is not used"),
        "{out}"
    );
}

/// A setting the dataset's source does not read (a field mapping on a synthetic task,
/// a hub revision on a BIG-bench task) is a warning at the setting; the ones it reads
/// (a synthetic task's split, which seeds it; max-examples) say nothing.
#[test]
fn settings_a_dataset_source_does_not_read_are_a_warning() {
    let (r, _d) = check_text(&[
        (
            "m.kdl",
            "dataset \"s\" input-field=\"q\" split=\"test\" max-examples=10 {\n    synthetic task=\"sort\"\n    templates name=\"super_glue/rte\"\n}\n\
         dataset \"b\" bigbench=\"task.json\" revision=\"v2\" holdout=\"flan\"\n",
        ),
        (
            "task.json",
            "{\"examples\": [{\"input\": \"a\", \"target\": \"b\"}]}\n",
        ),
    ]);
    let out = r.unwrap();
    assert_eq!(out.matches("plan::ignored-settings").count(), 3, "{out}");
    assert!(
        out.contains("dataset \"s\" is a synthetic task: `input-field` is not used"),
        "{out}"
    );
    assert!(
        out.contains("dataset \"s\" is a synthetic task: `templates` is not used"),
        "{out}"
    );
    assert!(
        out.contains("dataset \"b\" reads a BIG-bench task: `revision` is not used"),
        "{out}"
    );
    assert!(out.contains("m.kdl:1:"), "placed at the setting: {out}");
}

#[test]
fn a_top_k_above_the_pool_size_is_a_warning() {
    let text = "model \"t5\" hub=\"google/t5-small-lm-adapt\"\n\
                dataset \"d\" hub=\"org/data\"\n\
                expert \"a\" model=\"t5\" dataset=\"d\"\n\
                expert \"b\" model=\"t5\" dataset=\"d\"\n\
                pool \"p\" { experts \"a\" \"b\"; }\n\
                eval \"e\" pool=\"p\" {\n    methods \"phatgoose\"\n    task \"t\" dataset=\"d\"\n    routing top-k=3\n}\n";
    let (r, _d) = check_text(&[("m.kdl", text)]);
    let out = r.unwrap();
    assert!(out.contains("plan::top-k-above-pool"), "{out}");
    assert!(
        out.contains("top-k=3 is more than the 2 expert(s) of pool \"p\": every token is routed to")
            && out.contains("m.kdl:9:19"),
        "{out}"
    );
    let (r, _d) = check_text(&[("m.kdl", &text.replace("top-k=3", "top-k=2"))]);
    assert!(!r.unwrap().contains("top-k-above-pool"));
    // Methods that route no token do not read top-k: nothing to warn of.
    let unrouted = text.replace(
        "methods \"phatgoose\"",
        "methods \"base\" \"merged\" \"expert:a\"",
    );
    assert_ne!(unrouted, text);
    let (r, _d) = check_text(&[("m.kdl", &unrouted)]);
    assert!(!r.unwrap().contains("top-k-above-pool"));
}

/// (code, message) of every error of a manifest, from loading and planning it.
fn errors_of(path: &Path) -> Vec<(&'static str, String)> {
    let reg = goosepipe::steps::registry();
    let err = match goosepipe::manifest::load(path) {
        Err(e) => e,
        Ok(m) => match goosepipe::plan::build(m, &reg, &goosepipe::store::HashCache::in_memory()) {
            Err(e) => e,
            Ok(_) => return vec![],
        },
    };
    err.errors.iter().map(|e| (e.code, e.message.clone())).collect()
}

/// 20,000 errors in one manifest: reported in linear time, the first 50 shown with a
/// count of the rest; 4,000 on one long line: each excerpt bounded, not the line.
#[test]
fn many_errors_render_in_linear_time_with_bounded_output() {
    let d = tempfile::tempdir().unwrap();
    let nodes: String = (0..20_000).map(|i| format!("unknown{i} \"x\"\n")).collect();
    std::fs::write(d.path().join("nodes.kdl"), &nodes).unwrap();
    let props: String = format!(
        "dataset \"d\" {}{{ synthetic task=\"sort\"; }}\n",
        (0..4000).map(|i| format!("p{i}=1 ")).collect::<String>()
    );
    std::fs::write(d.path().join("props.kdl"), &props).unwrap();
    let render = |name: &str| {
        let err = goosepipe::manifest::load(&d.path().join(name)).unwrap_err();
        let n = err.errors.len();
        let mut out = String::new();
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
            .with_width(100)
            .render_report(&mut out, &err)
            .unwrap();
        (n, out)
    };
    // Best of three, so a busy machine does not fail a linear-time renderer.
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t0 = std::time::Instant::now();
        let (n, out) = render("nodes.kdl");
        best = best.min(t0.elapsed().as_secs_f64());
        assert_eq!(n, 20_000);
        assert!(out.contains("20000 errors in manifest"), "{}", &out[..200]);
        assert!(out.contains("the first 50 are shown, 19950 more not"));
        assert_eq!(out.matches("unknown node").count(), 50);
        if best < 1.0 {
            break;
        }
    }
    assert!(best < 1.0, "20,000 errors took {best:.2} s");
    let (n, out) = render("props.kdl");
    assert_eq!(n, 4000);
    // Each of the 50 shown errors quotes at most a few hundred bytes of the 24 KB line.
    assert!(out.len() < 50 * 2_000, "{} bytes of output", out.len());
    assert!(out.contains("unknown property `p3999`") || out.contains("unknown property `p49`"));
}

/// Settings that run but cannot show what the user wants: a study of one replicate
/// (no seed variation in its intervals), a synthetic task on one letter (its skills
/// ask the same thing). Warnings, placed at the setting.
#[test]
fn one_replicate_studies_and_one_letter_suites_are_warnings() {
    let text = "model \"t5\" hub=\"google/t5-small-lm-adapt\"\n\
                dataset \"d\" { synthetic task=\"sort\" examples=100 letters=\"aa\"; }\n\
                expert \"a\" model=\"t5\" dataset=\"d\"\n\
                pool \"p\" { experts \"a\"; }\n\
                eval \"e\" pool=\"p\" {\n    methods \"phatgoose\"\n    task \"t\" dataset=\"d\" metric=\"exact-match\"\n}\n\
                study \"s\" { evals \"e\"; }\n";
    let (r, _d) = check_text(&[("m.kdl", text)]);
    let out = r.unwrap();
    assert!(
        out.contains("plan::one-replicate") && out.contains("study \"s\" has one replicate (eval \"e\")"),
        "{out}"
    );
    assert!(
        out.contains("plan::few-letters") && out.contains("letters=\"aa\": one letter"),
        "{out}"
    );
    let (r, _d) = check_text(&[(
        "m.kdl",
        &text
            .replace("letters=\"aa\"", "letters=\"ab\"")
            .replace("evals \"e\"", "evals \"e\" \"e2\"")
            .replace(
                "study",
                "eval \"e2\" pool=\"p\" {\n    methods \"phatgoose\"\n    task \"t\" dataset=\"d\" metric=\"exact-match\"\n}\nstudy",
            ),
    )]);
    let out = r.unwrap();
    assert!(
        !out.contains("one-replicate") && !out.contains("few-letters"),
        "{out}"
    );
    // Counting still asks something of its own on one letter (the length).
    let (r, _d) = check_text(&[("m.kdl", &text.replace("task=\"sort\"", "task=\"count\""))]);
    assert!(!r.unwrap().contains("few-letters"));
    // A letter written twice counts once: the draws of the letters without it, under
    // another key.
    let (r, _d) = check_text(&[("m.kdl", &text.replace("letters=\"aa\"", "letters=\"abca\""))]);
    let out = one_line(&r.unwrap());
    assert!(
        out.contains("plan::repeated-letters")
            && out.contains("synthetic letters=\"abca\" repeats a letter: it counts once, so this draws what letters=\"abc\" draws (under another key)")
            && !out.contains("few-letters"),
        "{out}"
    );
}

/// A batch its micro-batch does not divide trains on more sequences than it says:
/// a warning at the micro-batch, said once for a `defaults` setting every expert
/// inherits, none when it divides.
#[test]
fn a_batch_the_micro_batch_does_not_divide_is_a_warning_said_once() {
    let text = "model \"t5\" hub=\"google/t5-small-lm-adapt\"\n\
                defaults {\n    train batch=10 micro-batch=4\n}\n\
                dataset \"d\" { synthetic task=\"sort\" examples=100; }\n\
                expert \"a\" model=\"t5\" dataset=\"d\"\n\
                expert \"b\" model=\"t5\" dataset=\"d\" { gate batch=12 micro-batch=8; }\n";
    let (r, _d) = check_text(&[("m.kdl", text)]);
    // As one line: the renderer wraps long messages.
    let out = one_line(&r.unwrap());
    assert_eq!(out.matches("plan::uneven-batch").count(), 2, "{out}");
    assert_eq!(
        out.matches("train batch=10 is not a multiple of micro-batch=4: each step trains on 12 sequences (3 micro-batches of 4)").count(),
        1,
        "{out}"
    );
    assert!(
        out.contains("gate batch=12 is not a multiple of micro-batch=8: each step trains on 16 sequences")
            && out.contains("give a micro-batch that divides 12 (the largest below 8: 6)"),
        "{out}"
    );
    let (r, _d) = check_text(&[(
        "m.kdl",
        &text
            .replace("micro-batch=4", "micro-batch=5")
            .replace("micro-batch=8", "micro-batch=6"),
    )]);
    assert!(!r.unwrap().contains("uneven-batch"));
    // A batch the schema's micro-batch (8) does not divide: said once too, though no
    // field holds the micro-batch to point at.
    let (r, _d) = check_text(&[(
        "m.kdl",
        &text
            .replace("train batch=10 micro-batch=4", "train batch=100")
            .replace(" { gate batch=12 micro-batch=8; }", ""),
    )]);
    let out = one_line(&r.unwrap());
    assert_eq!(out.matches("plan::uneven-batch").count(), 1, "{out}");
    assert!(
        out.contains("train batch=100 is not a multiple of micro-batch=8"),
        "{out}"
    );
}

/// A micro-batch above its batch trains as one of the batch's size, under another key:
/// a warning where it is written, none for the schema's default above a small batch.
#[test]
fn a_micro_batch_above_the_batch_is_a_warning_where_written() {
    let text = "model \"t5\" hub=\"google/t5-small-lm-adapt\"\n\
                dataset \"d\" { synthetic task=\"sort\" examples=100; }\n\
                expert \"a\" model=\"t5\" dataset=\"d\" { train batch=4 micro-batch=16; }\n\
                expert \"b\" model=\"t5\" dataset=\"d\" { gate batch=12 micro-batch=32; }\n\
                expert \"c\" model=\"t5\" dataset=\"d\" { train batch=4; }\n";
    let (r, _d) = check_text(&[("m.kdl", text)]);
    let out = one_line(&r.unwrap());
    assert_eq!(out.matches("plan::micro-batch-above-batch").count(), 2, "{out}");
    assert!(
        out.contains("train micro-batch=16 is above batch=4: each pass takes the batch's 4 sequences, so this trains as micro-batch=4 does (under another key)")
            && out.contains("write micro-batch=4, or leave it out (the default, 8, also takes the whole batch)")
            && out.contains("gate micro-batch=32 is above batch=12")
            && out.contains("write micro-batch=12"),
        "{out}"
    );
    assert_eq!(out.matches("or leave it out").count(), 1, "{out}");
}

/// Replicates whose evals score one pool (seeds left alike) measure no training
/// variation: a warning at the study's `evals`; pools of experts trained with another
/// seed are replicates.
#[test]
fn replicates_that_score_one_pool_are_a_warning() {
    let eval = |name: &str, pool: &str| {
        format!(
            "eval \"{name}\" pool=\"{pool}\" {{\n    methods \"phatgoose\"\n    task \"t\" dataset=\"d\" metric=\"exact-match\"\n}}\n"
        )
    };
    let head = "model \"t5\" hub=\"google/t5-small-lm-adapt\"\n\
                dataset \"d\" { synthetic task=\"sort\" examples=100; }\n\
                expert \"a\" model=\"t5\" dataset=\"d\"\n";
    let text = format!(
        "{head}expert \"a2\" model=\"t5\" dataset=\"d\"\npool \"p\" {{ experts \"a\"; }}\npool \"p2\" {{ experts \"a2\"; }}\n{}{}study \"s\" {{ evals \"e\" \"e2\"; }}\n",
        eval("e", "p"),
        eval("e2", "p2")
    );
    let (r, _d) = check_text(&[("m.kdl", &text)]);
    let out = one_line(&r.unwrap());
    assert!(
        out.contains("plan::same-replicates")
            && out.contains(
                "study \"s\": replicates \"e\", \"e2\" score one pool (the same experts and gates)"
            ),
        "{out}"
    );
    let seeded = text.replace(
        "expert \"a2\" model=\"t5\" dataset=\"d\"",
        "expert \"a2\" model=\"t5\" dataset=\"d\" { train seed=2; gate seed=2; }",
    );
    let (r, _d) = check_text(&[("m.kdl", &seeded)]);
    assert!(!r.unwrap().contains("same-replicates"));
}

/// An expert in no pool trains for nothing an eval shows: a warning at its name; in a
/// pool (or once its pool lists it), none.
#[test]
fn an_expert_in_no_pool_is_a_warning() {
    let text = "model \"t5\" hub=\"google/t5-small-lm-adapt\"\n\
                dataset \"d\" { synthetic task=\"sort\" examples=100; }\n\
                expert \"a\" model=\"t5\" dataset=\"d\"\n\
                expert \"b\" model=\"t5\" dataset=\"d\"\n\
                pool \"p\" { experts \"a\"; }\n";
    let (r, _d) = check_text(&[("m.kdl", text)]);
    let out = one_line(&r.unwrap());
    assert_eq!(out.matches("plan::unread-expert").count(), 1, "{out}");
    assert!(
        out.contains("expert \"b\" is in no pool: it trains, and no eval reads it")
            && out.contains("m.kdl:4:8"),
        "{out}"
    );
    let (r, _d) = check_text(&[("m.kdl", &text.replace("experts \"a\"", "experts \"a\" \"b\""))]);
    assert!(!r.unwrap().contains("unread-expert"));
}

/// An eval task on the very dataset a pool member trains on scores memory: a warning
/// at its `dataset`; on a test split of its own, none.
#[test]
fn an_eval_on_a_members_training_data_is_a_warning() {
    let text = "model \"t5\" hub=\"google/t5-small-lm-adapt\"\n\
                dataset \"d\" { synthetic task=\"sort\" examples=100 format=\"choice\"; }\n\
                dataset \"t\" split=\"test\" { synthetic task=\"sort\" examples=100 seed=2 format=\"choice\"; }\n\
                expert \"a\" model=\"t5\" dataset=\"d\"\n\
                pool \"p\" { experts \"a\"; }\n\
                eval \"e\" pool=\"p\" { methods \"base\"; task \"sort\" dataset=\"d\"; }\n";
    let (r, _d) = check_text(&[("m.kdl", text)]);
    let out = one_line(&r.unwrap());
    assert!(
        out.contains("plan::eval-on-training-data")
            && out.contains("task \"sort\" scores dataset \"d\", which expert \"a\" trains on")
            && out.contains("m.kdl:6:"),
        "{out}"
    );
    let (r, _d) = check_text(&[(
        "m.kdl",
        &text.replace("task \"sort\" dataset=\"d\"", "task \"sort\" dataset=\"t\""),
    )]);
    assert!(!r.unwrap().contains("eval-on-training-data"));
}

/// A data file included by mistake is one error at the include, not thousands of
/// syntax errors from parsing CSV as KDL.
#[test]
fn including_a_file_that_is_not_kdl_is_one_error() {
    let csv = "input,target\n".to_string() + &"a b,b a\n".repeat(500);
    let (r, _d) = check_text(&[("m.kdl", "include \"data.csv\"\n"), ("data.csv", &csv)]);
    let err = r.unwrap_err();
    assert!(err.contains("include \"data.csv\" is not a .kdl file"), "{err}");
    assert!(!err.contains("syntax"), "{err}");
    // The extension as written, in any case.
    let (r, _d) = check_text(&[("m.kdl", "include \"common.KDL\"\n"), ("common.KDL", "")]);
    r.unwrap();
}

/// The same for the file given on the command line (`report run.log`): one error that
/// asks whether it is the manifest. A manifest named otherwise that reads as KDL is
/// read.
#[test]
fn a_manifest_that_is_not_kdl_is_one_error() {
    let log = "[    0.1s] start eval:bad [f9aa509ae3e3]\n".repeat(200);
    let (r, _d) = check_text(&[("run.log", &log)]);
    let err = one_line(&r.unwrap_err());
    assert!(
        err.contains("run.log is not a .kdl file and does not read as a manifest"),
        "{err}"
    );
    assert_eq!(err.matches("goosepipe::manifest::").count(), 1, "{err}");
    let (r, _d) = check_text(&[(
        "m.pipeline",
        "dataset \"d\" { synthetic task=\"sort\" examples=10; }\n",
    )]);
    r.unwrap();
    // One mistake in such a file is said where it is, as in any manifest.
    let one_typo = "dataset \"d\" { synthetic task=\"sort\" examples=10; }\n".repeat(3) + "dataset \"e\" {\n";
    let (r, _d) = check_text(&[("m.pipeline", &one_typo)]);
    let err = one_line(&r.unwrap_err());
    assert!(!err.contains("not-kdl") && err.contains("m.pipeline:"), "{err}");
}

/// Validating on the training file itself is no validation: a warning at the setting.
#[test]
fn a_validation_file_that_is_the_training_file_is_a_warning() {
    let data = "{\"input\": \"a\", \"target\": \"b\"}\n";
    let text = "dataset \"d\" path=\"d.jsonl\" validation-path=\"./d.jsonl\"\n";
    let (r, _d) = check_text(&[("m.kdl", text), ("d.jsonl", data), ("v.jsonl", data)]);
    let out = r.unwrap();
    assert!(
        out.contains("plan::validation-is-training")
            && out.contains("dataset \"d\" validates on its training file"),
        "{out}"
    );
    let (r, _d) = check_text(&[
        ("m.kdl", &text.replace("./d.jsonl", "v.jsonl")),
        ("d.jsonl", data),
        ("v.jsonl", data),
    ]);
    assert!(!r.unwrap().contains("validation-is-training"));
}

// Validation's errors and planning's, in source order, in one report.
golden!(
    every_stage,
    "manifest::unknown-property",
    "manifest::missing-file",
    "manifest::undefined-reference",
    "manifest::unknown-method"
);

// Validation's errors, and of the planner's only those that do not follow from them.
golden!(
    no_cascades,
    "manifest::unknown-property",
    "manifest::wrong-type",
    "manifest::undefined-reference",
    "manifest::undefined-reference",
    "manifest::undefined-reference",
    "manifest::out-of-range",
    "manifest::wrong-value"
);

/// A misspelt `dataset=` on a pool member is its error alone: the eval two names away
/// whose method reads every member's data did not say "one has no dataset" besides
/// (the eval names the pool, which names the expert).
#[test]
fn a_members_misspelt_dataset_is_not_followed_by_the_evals_method_error() {
    let text = "model \"t5\" hub=\"google/t5-small-lm-adapt\"\n\
                dataset \"d\" { synthetic task=\"sort\" examples=100; }\n\
                expert \"a\" model=\"t5\" dataset=\"d\"\n\
                expert \"b\" model=\"t5\" datset=\"d\"\n\
                pool \"p\" { experts \"a\" \"b\"; }\n\
                eval \"e\" pool=\"p\" {\n    methods \"average-activation\"\n    task \"t\" dataset=\"d\" expert=\"zzz\"\n}\n";
    let (r, _d) = check_text(&[("m.kdl", text)]);
    let out = one_line(&r.unwrap_err());
    assert!(out.contains("unknown property `datset` on `expert`"), "{out}");
    assert!(!out.contains("method-needs-data"), "{out}");
    // The eval's own names are still judged (zzz is no expert of the pool).
    assert!(out.contains("zzz"), "{out}");
}

// The planner's errors in source order too.
golden!(
    planner_order,
    "manifest::undefined-reference",
    "manifest::undefined-reference"
);
golden!(no_choices_to_rank, "manifest::no-choices-to-rank");
golden!(
    keep_field_alone,
    "manifest::keep-field-alone",
    "manifest::keep-field-alone"
);

/// A manifest saved in latin-1 says where its first byte that is not UTF-8 is and
/// how to convert it (it said "stream did not contain valid UTF-8" and "check the
/// path").
#[test]
fn a_manifest_that_is_not_utf8_says_where_and_how_to_convert_it() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("lat.kdl");
    std::fs::write(&path, b"// ok\ndataset \"d\" path=\"caf\xe9.jsonl\"\n").unwrap();
    let mut out = Vec::new();
    let err = goosepipe::app::check(&path, &goosepipe::steps::registry(), &mut out).unwrap_err();
    let err = format!("{err:?}");
    assert!(
        err.contains("it is not UTF-8 text: line")
            && err.contains("2, byte 22 of the line (0xe9)")
            && err.contains("save the manifest as UTF-8"),
        "{err}"
    );
}

/// Shared settings in an included file, overridden by the manifest that includes it
/// (it was "`defaults` is given more than once"); two files included side by side
/// that set one setting are an error, and one file still has one `defaults`.
#[test]
fn an_included_file_s_defaults_are_overridden_by_the_including_file() {
    let d = tempfile::tempdir().unwrap();
    let w = |name: &str, text: &str| std::fs::write(d.path().join(name), text).unwrap();
    w(
        "base.kdl",
        "defaults {\n    train steps=10 lr=0.001\n    gate steps=7\n}\ndataset \"c\" { synthetic task=\"corpus\" examples=50; }\nmodel \"t\" { init corpus=\"c\" d-model=16 d-ff=32 d-kv=8 heads=2 layers=1; }\ndataset \"s\" { synthetic task=\"sort\" examples=50; }\n",
    );
    w(
        "m.kdl",
        "include \"base.kdl\"\ndefaults {\n    train steps=20\n}\nexpert \"e\" model=\"t\" dataset=\"s\"\n",
    );
    let reg = goosepipe::steps::registry();
    let plan = goosepipe::plan::load(
        &d.path().join("m.kdl"),
        &reg,
        &goosepipe::store::HashCache::in_memory(),
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    let expert = &plan.get("expert:e").unwrap().spec.params;
    assert_eq!(expert["train"]["steps"], 20, "the including file's setting wins");
    assert_eq!(expert["train"]["lr"], 0.001, "the included file's setting stays");
    assert_eq!(plan.get("gate:e").unwrap().spec.params["gate"]["steps"], 7);
    // Side by side, both setting train.steps: neither overrides the other.
    w("other.kdl", "defaults {\n    train steps=30\n}\n");
    w(
        "m.kdl",
        "include \"base.kdl\"\ninclude \"other.kdl\"\nexpert \"e\" model=\"t\" dataset=\"s\"\n",
    );
    let mut out = Vec::new();
    let err = goosepipe::app::check(&d.path().join("m.kdl"), &reg, &mut out).unwrap_err();
    let err = format!("{err:?}");
    assert!(
        err.contains("manifest::defaults-conflict")
            && err.contains("sets train.steps in two files included at the same depth"),
        "{err}"
    );
    // The first setting is in the other file: named by file, line and column, not
    // drawn on this file's text at that file's offset (it underlined an unrelated line).
    let one_line = err
        .replace('│', " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        one_line.contains("same depth (first set here: base.kdl:2:17)") && err.contains("set again here"),
        "{err}"
    );
    assert!(!err.contains("╰── first set here"), "{err}");
    // The including file settles it: its setting overrides both.
    w(
        "m.kdl",
        "include \"base.kdl\"\ninclude \"other.kdl\"\ndefaults {\n    train steps=40\n}\nexpert \"e\" model=\"t\" dataset=\"s\"\n",
    );
    let plan = goosepipe::plan::load(
        &d.path().join("m.kdl"),
        &reg,
        &goosepipe::store::HashCache::in_memory(),
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(plan.get("expert:e").unwrap().spec.params["train"]["steps"], 40);
    // Two in one file stay an error.
    w(
        "m.kdl",
        "include \"base.kdl\"\ndefaults {\n    train steps=20\n}\ndefaults {\n    train lr=0.1\n}\n",
    );
    let err = format!(
        "{:?}",
        goosepipe::app::check(&d.path().join("m.kdl"), &reg, &mut out).unwrap_err()
    );
    assert!(err.contains("`defaults` is given more than once"), "{err}");
}

/// A generation setting on a task that generates nothing is a warning, at the setting.
#[test]
fn max_new_tokens_on_a_ranked_task_is_a_warning() {
    let text = "model \"t5\" hub=\"google/t5-small-lm-adapt\"\n\
                dataset \"d\" hub=\"org/data\"\n\
                expert \"a\" model=\"t5\" dataset=\"d\"\n\
                pool \"p\" { experts \"a\"; }\n\
                eval \"e\" pool=\"p\" {\n    methods \"phatgoose\"\n    task \"t\" dataset=\"d\" max-new-tokens=10\n    task \"g\" dataset=\"d\" metric=\"exact-match\" max-new-tokens=10\n}\n";
    let (r, _d) = check_text(&[("m.kdl", text)]);
    let out = r.unwrap();
    assert_eq!(out.matches("plan::ignored-settings").count(), 1, "{out}");
    assert!(
        out.contains("task \"t\" is scored by rank classification: `max-new-tokens` is not used"),
        "{out}"
    );
}

/// A folder a setting reads must hold what it reads: found at check, not when the step
/// that opens it fails after the steps before it ran.
#[test]
fn folders_missing_the_files_their_setting_reads_are_errors_at_check() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("adapter")).unwrap();
    std::fs::write(d.path().join("adapter/adapter_model.safetensors"), "{}").unwrap();
    std::fs::create_dir_all(d.path().join("base")).unwrap();
    std::fs::write(d.path().join("base/config.json"), "{}").unwrap();
    let text = "model \"t\" path=\"base\"\nexpert \"e\" model=\"t\" peft=\"adapter\" peft-gate=#true\n";
    std::fs::write(d.path().join("m.kdl"), text).unwrap();
    let mut out = Vec::new();
    let err =
        goosepipe::app::check(&d.path().join("m.kdl"), &goosepipe::steps::registry(), &mut out).unwrap_err();
    let err = one_line(&format!("{err:?}"));
    assert!(
        err.contains("path \"base\": it holds no tokenizer.json, and none of model.safetensors, model.safetensors.index.json or pytorch_model.bin"),
        "{err}"
    );
    assert!(
        err.contains("peft \"adapter\": it holds no adapter_config.json"),
        "{err}"
    );
    // A folder under the weights' name is said as that, not as nothing there.
    std::fs::create_dir_all(d.path().join("base/model.safetensors")).unwrap();
    let mut out = Vec::new();
    let err =
        goosepipe::app::check(&d.path().join("m.kdl"), &goosepipe::steps::registry(), &mut out).unwrap_err();
    let err = one_line(&format!("{err:?}"));
    assert!(
        err.contains("path \"base\": its model.safetensors is not a file"),
        "{err}"
    );
    std::fs::remove_dir(d.path().join("base/model.safetensors")).unwrap();
    // With the files there but the gate peft-gate=#true reads: that is said at check
    // (it was the gate step's failure, after the other steps ran).
    std::fs::write(d.path().join("adapter/adapter_config.json"), "{}").unwrap();
    std::fs::write(d.path().join("base/pytorch_model.bin"), "").unwrap();
    std::fs::write(d.path().join("base/tokenizer.json"), "{}").unwrap();
    let gate = d.path().join("adapter/phatgoose_gates.safetensors");
    std::fs::create_dir(&gate).unwrap();
    let check = || {
        let mut out = Vec::new();
        goosepipe::app::check(&d.path().join("m.kdl"), &goosepipe::steps::registry(), &mut out)
            .map_err(|e| one_line(&format!("{e:?}")))
    };
    let err = check().unwrap_err();
    assert!(
        err.contains("expert \"e\" uses the gate its adapter ships, but in the folder \"adapter\" phatgoose_gates.safetensors is a folder, not a file"),
        "{err}"
    );
    std::fs::remove_dir(&gate).unwrap();
    let err = check().unwrap_err();
    assert!(
        err.contains("but in the folder \"adapter\" there is no phatgoose_gates.safetensors"),
        "{err}"
    );
    // With everything there, the manifest is valid.
    std::fs::write(&gate, "").unwrap();
    check().unwrap();
}

/// One fixed answer choice is an error at the manifest's `choices`, not at every row
/// of the data that lacks its own.
#[test]
fn one_fixed_choice_is_an_error_at_the_manifest() {
    let text = "dataset \"d\" path=\"d.jsonl\" {\n    choices \"yes\"\n}\n";
    let (r, _d) = check_text(&[
        ("m.kdl", text),
        ("d.jsonl", "{\"input\": \"a\", \"target\": \"yes\"}\n"),
    ]);
    let err = one_line(&r.unwrap_err());
    assert!(
        err.contains("`choices` needs at least 2 value(s)")
            && err.contains("1 given")
            && err.contains("m.kdl:2:5"),
        "{err}"
    );
}

/// Two tasks of one eval that score the same thing (one dataset and metric, and for
/// generation one length limit) count twice in the mean over tasks: a warning at the
/// second one's name; the same dataset under another metric or length limit, none.
#[test]
fn a_task_that_scores_what_another_scores_is_a_warning() {
    let text = "model \"t5\" hub=\"google/t5-small-lm-adapt\"\n\
                dataset \"d\" { synthetic task=\"sort\" examples=100; }\n\
                dataset \"t\" split=\"test\" { synthetic task=\"sort\" examples=20 format=\"choice\"; }\n\
                expert \"a\" model=\"t5\" dataset=\"d\"\n\
                pool \"p\" { experts \"a\"; }\n\
                eval \"e\" pool=\"p\" {\n    methods \"base\"\n    task \"one\" dataset=\"t\"\n    task \"two\" dataset=\"t\"\n    \
                task \"gen\" dataset=\"t\" metric=\"exact-match\" max-new-tokens=8\n    \
                task \"gen-longer\" dataset=\"t\" metric=\"exact-match\" max-new-tokens=16\n}\n";
    let (r, _d) = check_text(&[("m.kdl", text)]);
    let out = one_line(&r.unwrap());
    assert_eq!(out.matches("plan::duplicate-task").count(), 1, "{out}");
    assert!(
        out.contains("task \"two\" of eval \"e\" scores what task \"one\" scores (dataset \"t\",")
            && out.contains("m.kdl:9:10"),
        "{out}"
    );
    let twice = text.replace("max-new-tokens=16", "max-new-tokens=8");
    let (r, _d) = check_text(&[("m.kdl", &twice)]);
    let out = one_line(&r.unwrap());
    assert_eq!(out.matches("plan::duplicate-task").count(), 2, "{out}");
    assert!(
        out.contains("task \"gen-longer\" of eval \"e\" scores what task \"gen\" scores (dataset \"t\", exact-match, max-new-tokens 8)")
            && out.contains("another dataset, metric or max-new-tokens"),
        "{out}"
    );
}
