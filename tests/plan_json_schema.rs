//! `goosepipe plan --json` is read by scripts: its layout is documented in
//! schemas/plan.schema.json, and this test keeps the output and the document naming
//! the same fields (a field added to one and not the other fails here).

use crate::support;

use std::collections::BTreeSet;

use goosepipe::exec::RunOptions;
use goosepipe::plan::render::{PLAN_JSON_SCHEMA, PLAN_JSON_VERSION, plan_json};
use goosepipe::plan::status::{Change, FileChange, ParamChange, Reason};
use serde_json::Value;
use support::{BASE, Behaviour, Log, Project, registry};

fn schema() -> Value {
    serde_json::from_str(PLAN_JSON_SCHEMA).expect("schemas/plan.schema.json is JSON")
}

fn names(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

/// An object's fields are among the schema's properties, and its required ones are there.
fn conforms(object: &Value, spec: &Value, what: &str) {
    let props = names(&spec["properties"]);
    let have = names(object);
    let extra: Vec<&String> = have.difference(&props).collect();
    assert!(
        extra.is_empty(),
        "{what}: fields the schema does not document: {extra:?}"
    );
    for r in spec["required"].as_array().unwrap() {
        assert!(
            have.contains(r.as_str().unwrap()),
            "{what}: no required field {r}"
        );
    }
}

#[test]
fn plan_json_names_exactly_the_fields_its_schema_documents() {
    let schema = schema();
    assert_eq!(schema["properties"]["format_version"]["const"], PLAN_JSON_VERSION);

    // A plan with several reasons: parameters changed, inputs changed, new steps.
    let reg = registry(&Log::default(), &Behaviour::default());
    let p = Project::new(BASE);
    assert_eq!(p.run(&reg, &RunOptions::default()).0, 0);
    p.write(
        &BASE
            .replace(
                "methods \"phatgoose\" \"base\"",
                "methods \"phatgoose\" \"merged\"",
            )
            .replace(
                "expert \"b\" model=\"base\" dataset=\"b\"",
                "expert \"b\" model=\"base\" dataset=\"b\" { train lr=0.001; }",
            ),
    );
    let (plan, status) = p.status(&reg);
    let json = plan_json(&plan, &status, &p.store());

    // Top level and summary: every field documented, none documented and absent.
    assert_eq!(names(&json), names(&schema["properties"]));
    assert_eq!(
        names(&json["store"]),
        names(&schema["properties"]["store"]["properties"])
    );
    assert_eq!(json["store"]["exists"], p.store().is_dir(), "{}", json["store"]);
    assert_eq!(json["format"], schema["properties"]["format"]["const"]);
    let summary = &schema["properties"]["summary"];
    assert_eq!(names(&json["summary"]), names(&summary["properties"]));
    let step_spec = &schema["properties"]["steps"]["items"];
    let reason_spec = &step_spec["properties"]["reasons"]["items"];
    let input_spec = &step_spec["properties"]["inputs"]["items"];
    let mut seen_reasons = BTreeSet::new();
    for step in json["steps"].as_array().unwrap() {
        assert_eq!(names(step), names(&step_spec["properties"]), "{step}");
        for input in step["inputs"].as_array().unwrap() {
            conforms(input, input_spec, "input");
        }
        for reason in step["reasons"].as_array().unwrap() {
            conforms(reason, reason_spec, "reason");
            seen_reasons.insert(reason["reason"].as_str().unwrap().to_string());
        }
    }
    assert!(seen_reasons.contains("params-changed") && seen_reasons.contains("input-changed"));

    // Every kind of reason serializes with a documented name and documented fields.
    let reasons = every_reason();
    let documented: BTreeSet<String> = reason_spec["properties"]["reason"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let mut serialized = BTreeSet::new();
    for r in &reasons {
        let v = serde_json::to_value(r).unwrap();
        conforms(&v, reason_spec, "reason");
        for change in v["changes"].as_array().into_iter().flatten() {
            conforms(change, &reason_spec["properties"]["changes"]["items"], "change");
        }
        for file in v["files"].as_array().into_iter().flatten() {
            conforms(file, &reason_spec["properties"]["files"]["items"], "file change");
        }
        serialized.insert(v["reason"].as_str().unwrap().to_string());
    }
    assert_eq!(serialized, documented);
}

/// One of every kind of stale reason. The match has no catch-all arm, so a kind added
/// to `Reason` does not compile here until it is listed (and then must be documented).
fn every_reason() -> Vec<Reason> {
    let all = vec![
        Reason::New,
        Reason::Missing,
        Reason::Interrupted,
        Reason::Corrupt { detail: "x".into() },
        Reason::ParamsChanged {
            changes: vec![ParamChange {
                param: "lora.rank".into(),
                old: Some(8.into()),
                new: None,
            }],
        },
        Reason::InputChanged {
            inputs: vec!["a".into()],
        },
        Reason::InputsAdded {
            inputs: vec!["a".into()],
        },
        Reason::InputsRemoved {
            inputs: vec!["a".into()],
        },
        Reason::ExternalChanged {
            externals: vec!["path:m".into()],
            files: vec![FileChange {
                external: "path:m".into(),
                file: "config.json".into(),
                change: Change::Changed,
            }],
        },
        Reason::VersionChanged { old: 1, new: 2 },
        Reason::KeyChanged { old: "abc".into() },
        Reason::InputsMovedSinceLock {
            inputs: vec!["a".into()],
        },
        Reason::NeverBuilt,
        Reason::Building,
        Reason::SameArtifact { with: "a".into() },
        Reason::CutoffChanged { on: true },
        Reason::AwaitsOutput { of: vec!["a".into()] },
    ];
    for r in &all {
        match r {
            Reason::New
            | Reason::Missing
            | Reason::Interrupted
            | Reason::Building
            | Reason::Corrupt { .. }
            | Reason::ParamsChanged { .. }
            | Reason::InputChanged { .. }
            | Reason::InputsAdded { .. }
            | Reason::InputsRemoved { .. }
            | Reason::ExternalChanged { .. }
            | Reason::VersionChanged { .. }
            | Reason::KeyChanged { .. }
            | Reason::InputsMovedSinceLock { .. }
            | Reason::NeverBuilt
            | Reason::SameArtifact { .. }
            | Reason::CutoffChanged { .. }
            | Reason::AwaitsOutput { .. } => {}
        }
    }
    all
}
