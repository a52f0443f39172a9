//! Diagnostics for everything a user can get wrong in a manifest.
//!
//! Each error carries its file, exact span, a label and a help line, and all errors of
//! one manifest are reported together (see [`ManifestErrors`]). The `code` names the
//! error class so tests and tools can match on it without parsing prose.

use std::fmt;
use std::sync::Arc;

use miette::{
    Diagnostic, LabeledSpan, MietteError, MietteSpanContents, SourceCode, SourceSpan, SpanContents,
};

use super::source::{Loc, Sources};

/// Bytes of context an excerpt keeps on each side of what it labels.
const CONTEXT_BYTES: usize = 160;
/// A label longer than this is cut (a whole node with many children, say).
const MAX_LABEL_BYTES: usize = 2000;
/// Labels of one diagnostic further apart than this are not shown in one excerpt.
const MAX_EXCERPT_BYTES: usize = 8192;
/// How many diagnostics of one manifest are printed; the rest are counted.
pub const MAX_SHOWN: usize = 50;

/// The part of a manifest file a diagnostic shows: a contiguous slice around its
/// labels, with the line and column where it starts, so rendering an error costs the
/// size of its excerpt, never the size of the file (a 1 MB line with 4,000 errors on it
/// would otherwise be printed 4,000 times, and each error's line number found by
/// scanning the file from its start).
#[derive(Debug, Clone)]
pub struct Excerpt {
    name: String,
    text: Arc<String>,
    lines: Arc<Vec<usize>>,
    /// The excerpt's byte range in `text`.
    start: usize,
    end: usize,
}

impl Excerpt {
    pub fn name(&self) -> &str {
        &self.name
    }

    fn floor(&self, mut i: usize) -> usize {
        i = i.min(self.text.len());
        while !self.text.is_char_boundary(i) {
            i -= 1;
        }
        i
    }

    fn ceil(&self, mut i: usize) -> usize {
        i = i.min(self.text.len());
        while !self.text.is_char_boundary(i) {
            i += 1;
        }
        i
    }

    /// The line (0-based) holding byte `i`, and that line's first byte.
    fn line_of(&self, i: usize) -> (usize, usize) {
        let line = self.lines.partition_point(|&s| s <= i).saturating_sub(1);
        (line, self.lines[line])
    }

    /// Sets the range to cover `[from, to)` plus context: the line before and after
    /// where they are short, at most CONTEXT_BYTES of them.
    fn cover(&mut self, from: usize, to: usize) {
        let (line, line_start) = self.line_of(from);
        let before = if line > 0 {
            self.lines[line - 1]
        } else {
            line_start
        };
        self.start = self.floor(before.max(from.saturating_sub(CONTEXT_BYTES)));
        let (eline, _) = self.line_of(to.saturating_sub(1).max(from));
        let after = self
            .lines
            .get(eline + 2)
            .map(|&s| s.saturating_sub(1))
            .unwrap_or(self.text.len());
        self.end = self.ceil(after.min(to + CONTEXT_BYTES));
    }
}

impl SourceCode for Excerpt {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn SpanContents<'a> + 'a>, MietteError> {
        let slice = &self.text[self.start..self.end];
        let local_start = span.offset().clamp(self.start, self.end) - self.start;
        let local_len = span.len().min(slice.len() - local_start);
        let inner = slice.read_span(
            &SourceSpan::from(local_start..local_start + local_len),
            context_lines_before,
            context_lines_after,
        )?;
        let (first_line, first_line_start) = self.line_of(self.start);
        // Columns of the excerpt's first line count from the real line's start.
        let col_shift = if inner.line() == 0 {
            self.text[first_line_start..self.start].chars().count()
        } else {
            0
        };
        let data: &'a [u8] = inner.data();
        let offset = inner.span().offset() + self.start;
        Ok(Box::new(MietteSpanContents::new_named(
            self.name.clone(),
            data,
            SourceSpan::from(offset..offset + inner.span().len()),
            inner.line() + first_line,
            inner.column() + col_shift,
            inner.line_count(),
        )))
    }
}

#[derive(Debug, Clone)]
pub struct ManifestError {
    pub code: &'static str,
    pub message: String,
    pub src: Excerpt,
    pub labels: Vec<LabeledSpan>,
    pub help: Option<String>,
    /// A warning: said, but it does not stop anything.
    pub warning: bool,
}

/// A label's span cut to MAX_LABEL_BYTES.
fn bounded(span: SourceSpan) -> SourceSpan {
    SourceSpan::from(span.offset()..span.offset() + span.len().min(MAX_LABEL_BYTES))
}

impl ManifestError {
    pub fn new(
        sources: &Sources,
        code: &'static str,
        loc: Loc,
        message: impl Into<String>,
        label: impl Into<String>,
    ) -> Self {
        let file = sources.get(loc.file);
        let mut src = Excerpt {
            name: file.display.clone(),
            text: file.text.clone(),
            lines: file.line_starts(),
            start: 0,
            end: 0,
        };
        let span = bounded(loc.span);
        src.cover(span.offset(), span.offset() + span.len());
        ManifestError {
            code,
            message: message.into(),
            src,
            labels: vec![LabeledSpan::new_primary_with_span(Some(label.into()), span)],
            help: None,
            warning: false,
        }
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn as_warning(mut self) -> Self {
        self.warning = true;
        self
    }

    /// A secondary label (e.g. "first defined here"). When it is too far from the
    /// others to share one excerpt, its line is named in the message; when it is in
    /// another file than the error (a setting of an included file), its file, line
    /// and column are (a label is drawn on the error's own file's text only).
    pub fn also(mut self, sources: &Sources, loc: Loc, label: impl Into<String>) -> Self {
        let label = label.into();
        let file = sources.get(loc.file);
        if file.display != self.src.name {
            let (line, col) = file.line_col(loc.span.offset());
            self.message = format!("{} ({label}: {}:{line}:{col})", self.message, file.display);
            return self;
        }
        let span = bounded(loc.span);
        let from = self
            .labels
            .iter()
            .map(|l| l.offset())
            .chain([span.offset()])
            .min()
            .unwrap_or(0);
        let to = self
            .labels
            .iter()
            .map(|l| l.offset() + l.len())
            .chain([span.offset() + span.len()])
            .max()
            .unwrap_or(0);
        if to - from <= MAX_EXCERPT_BYTES {
            self.src.cover(from, to);
            self.labels.push(LabeledSpan::new_with_span(Some(label), span));
        } else {
            let (line, _) = self.src.line_of(span.offset());
            self.message = format!("{} ({label}: line {})", self.message, line + 1);
        }
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
    fn severity(&self) -> Option<miette::Severity> {
        Some(if self.warning {
            miette::Severity::Warning
        } else {
            miette::Severity::Error
        })
    }
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
        )?;
        if n > MAX_SHOWN {
            write!(f, "; the first {MAX_SHOWN} are shown, {} more not", n - MAX_SHOWN)?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestErrors {}

impl Diagnostic for ManifestErrors {
    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        Some(Box::new(
            self.errors.iter().take(MAX_SHOWN).map(|e| e as &dyn Diagnostic),
        ))
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
