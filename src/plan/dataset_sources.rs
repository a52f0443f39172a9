//! Which of a dataset node's settings its source reads. The schema fills every
//! setting's default on every dataset (they are all keyed), but a synthetic task
//! generates its own examples, a BIG-bench task.json brings its own inputs, targets and
//! prefixes, and a local file is one split: a setting such a source does not read is
//! said by `check`/`plan` where it is written (it would otherwise change the key and
//! nothing else), and left out of `show`.

/// Where a dataset's rows come from (the schema's one-of).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Hub,
    Path,
    BigBench,
    Synthetic,
}

/// How a row becomes an example without templates (which write all of it themselves).
pub const FIELD_MAPPING: [&str; 5] = [
    "input-field",
    "target-field",
    "choices-field",
    "input-suffix",
    "choices",
];

/// The field mapping and row shaping that only rows (hub and local files) go through.
const ROW_SETTINGS: [&str; 9] = [
    "input-field",
    "target-field",
    "choices-field",
    "input-suffix",
    "choices",
    "keep-field",
    "keep-values",
    "drop-empty",
    "templates",
];

impl Source {
    /// The source of a dataset whose step records these externals' roles and
    /// parameters (a frozen spec, as `show` reads it).
    pub fn of_spec(roles: &[&str], params: &serde_json::Value) -> Option<Source> {
        if params.pointer("/synthetic/task").is_some_and(|t| t.is_string()) {
            return Some(Source::Synthetic);
        }
        [
            ("bigbench", Source::BigBench),
            ("hub", Source::Hub),
            ("path", Source::Path),
        ]
        .into_iter()
        .find_map(|(role, s)| roles.contains(&role).then_some(s))
    }

    /// What the rows come from: "a local file".
    pub fn noun(self) -> &'static str {
        match self {
            Source::Hub => "a hub dataset",
            Source::Path => "a local file",
            Source::BigBench => "a BIG-bench task",
            Source::Synthetic => "a synthetic task",
        }
    }

    /// How a message names the source: `dataset "d" {phrase}: ...`.
    pub fn phrase(self) -> String {
        match self {
            Source::Synthetic => format!("is {}", self.noun()),
            _ => format!("reads {}", self.noun()),
        }
    }

    /// The settings (top-level properties, lists and groups of the dataset node) this
    /// source never reads, in the schema's order.
    pub fn unread(self) -> Vec<&'static str> {
        let hub_only = ["config", "revision"];
        match self {
            Source::Hub => vec![],
            Source::Path => ["split", "validation-split"]
                .into_iter()
                .chain(hub_only)
                .collect(),
            // Its task.json's examples, each with its own prefixes and choices.
            Source::BigBench => ["split", "validation-split"]
                .into_iter()
                .chain(hub_only)
                .chain(ROW_SETTINGS)
                .collect(),
            // Generated with a validation set of its own (`split` and
            // `validation-split` seed the two), so nothing is held back either.
            Source::Synthetic => hub_only
                .into_iter()
                .chain(ROW_SETTINGS)
                .chain(["holdout"])
                .collect(),
        }
    }

    /// Why its unread settings are not read, for the diagnostic's help.
    pub fn why_unread(self) -> &'static str {
        match self {
            Source::Hub => "",
            Source::Path => {
                "a local file is one split: an eval scores all of it, training holds back 10% of it for validation; give another file for another split (validation-path= for validation); config= and revision= name a hub dataset's subset and commit"
            }
            Source::BigBench => {
                "a BIG-bench task.json brings its inputs, targets, choices and prefixes (an eval scores all of it, training holds back a share for validation); these settings map and shape the rows of hub datasets and local files"
            }
            Source::Synthetic => {
                "the suite generates its inputs, targets and choices, and a validation set of its own (validation-split= seeds it); these settings map and shape the rows of hub datasets and local files"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_names_its_source() {
        let syn = serde_json::json!({"synthetic": {"task": "sort", "seed": 0}});
        assert_eq!(Source::of_spec(&[], &syn), Some(Source::Synthetic));
        // The schema fills the group's defaults on every dataset: no task, no synthetic.
        let filled = serde_json::json!({"synthetic": {"seed": 0}});
        assert_eq!(Source::of_spec(&["hub"], &filled), Some(Source::Hub));
        assert_eq!(
            Source::of_spec(&["path", "validation-path"], &filled),
            Some(Source::Path)
        );
        assert_eq!(Source::of_spec(&["bigbench"], &filled), Some(Source::BigBench));
        assert_eq!(Source::of_spec(&[], &filled), None);
    }
}
