//! Golden tests of rendered diagnostics: one manifest per error class under
//! tests/manifests/errors/, rendered exactly as `goosepipe check` prints them (without
//! colours), snapshotted with insta.

use std::path::Path;

use miette::{GraphicalReportHandler, GraphicalTheme};

fn render(name: &str) -> (String, Vec<&'static str>) {
    let path = format!("tests/manifests/errors/{name}.kdl");
    let reg = goosepipe::steps::registry();
    let err = match goosepipe::manifest::load(Path::new(&path)) {
        Err(e) => e,
        Ok(m) => match goosepipe::plan::build(m, &reg, &goosepipe::store::HashCache::in_memory()) {
            Err(e) => e,
            Ok(_) => panic!("{path} should not validate"),
        },
    };
    let mut out = String::new();
    GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
        .with_width(100)
        .render_report(&mut out, &err)
        .unwrap();
    (out, err.codes())
}

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
golden!(wrong_type, "manifest::wrong-type", "manifest::wrong-type");
golden!(out_of_range, "manifest::out-of-range", "manifest::out-of-range");
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
golden!(mixed_models, "manifest::mixed-models");
golden!(mixed_ranks, "manifest::mixed-ranks");
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
