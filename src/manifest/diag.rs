//! Diagnostics for everything a user can get wrong in a manifest.
//!
//! Each error carries its file, exact span, a label and a help line, and all errors of
//! one manifest are reported together (see [`ManifestErrors`]). The `code` names the
//! error class so tests and tools can match on it without parsing prose.

use std::fmt;
use std::sync::Arc;

use miette::{Diagnostic, LabeledSpan, NamedSource, SourceCode};

use super::source::{Loc, Sources};

#[derive(Debug, Clone)]
pub struct ManifestError {
    pub code: &'static str,
    pub message: String,
    pub src: NamedSource<Arc<String>>,
    pub labels: Vec<LabeledSpan>,
    pub help: Option<String>,
}

impl ManifestError {
    pub fn new(
        sources: &Sources,
        code: &'static str,
        loc: Loc,
        message: impl Into<String>,
        label: impl Into<String>,
    ) -> Self {
        ManifestError {
            code,
            message: message.into(),
            src: sources.named(loc.file),
            labels: vec![LabeledSpan::new_primary_with_span(Some(label.into()), loc.span)],
            help: None,
        }
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// A secondary label in the same file (e.g. "first defined here").
    pub fn also(mut self, loc: Loc, label: impl Into<String>) -> Self {
        self.labels
            .push(LabeledSpan::new_with_span(Some(label.into()), loc.span));
        self
    }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ManifestError {}

impl Diagnostic for ManifestError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(format!("goosepipe::{}", self.code)))
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h.clone()) as Box<dyn fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn SourceCode> {
        Some(&self.src)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        Some(Box::new(self.labels.iter().cloned()))
    }
}

/// Every error found in one manifest, rendered as one report.
#[derive(Debug, Clone)]
pub struct ManifestErrors {
    pub file: String,
    pub errors: Vec<ManifestError>,
}

impl ManifestErrors {
    pub fn codes(&self) -> Vec<&'static str> {
        self.errors.iter().map(|e| e.code).collect()
    }
}

impl fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "{} {} in manifest {}",
            n,
            if n == 1 { "error" } else { "errors" },
            self.file
        )
    }
}

impl std::error::Error for ManifestErrors {}

impl Diagnostic for ManifestErrors {
    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        Some(Box::new(self.errors.iter().map(|e| e as &dyn Diagnostic)))
    }
}

/// "did you mean" for a misspelled name: the closest candidate by Jaro-Winkler
/// similarity, if it is close enough to be a plausible typo.
pub fn did_you_mean<'a>(wrong: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<(&str, f64)> = None;
    for c in candidates {
        let s = strsim::jaro_winkler(wrong, c);
        if s >= 0.8 && best.is_none_or(|(_, b)| s > b) {
            best = Some((c, s));
        }
    }
    best.map(|(c, _)| c)
}
