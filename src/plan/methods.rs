//! The evaluation methods a manifest may list, and which extra steps each needs.
//! The names are the manifest's spelling; `steps::eval` implements them.

pub const METHODS: &[&str] = &[
    "phatgoose",
    "base",
    "merged",
    "average-activation",
    "retrieval",
    "arrow",
    "multitask",
    "best-individual",
    "oracle",
];

/// A method as parsed from the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Named(&'static str),
    /// `expert:NAME`: one expert everywhere.
    Expert(String),
}

pub fn parse(s: &str) -> Option<Method> {
    if let Some(name) = s.strip_prefix("expert:") {
        return (!name.is_empty()).then(|| Method::Expert(name.to_string()));
    }
    METHODS.iter().find(|m| **m == s).map(|m| Method::Named(m))
}
