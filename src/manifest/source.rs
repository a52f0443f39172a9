//! Manifest source files. Every value the validator produces keeps a [`Loc`] into one
//! of these, so any later layer (plan, run) can point a diagnostic at the exact text.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use miette::{NamedSource, SourceSpan};

pub type FileId = usize;

/// A position in a manifest source: which file, which byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub file: FileId,
    pub span: SourceSpan,
}

impl Loc {
    pub fn new(file: FileId, span: SourceSpan) -> Self {
        Loc { file, span }
    }
}

#[derive(Debug)]
pub struct SourceFile {
    /// Absolute path on disk.
    pub path: PathBuf,
    /// The name diagnostics show: the path relative to the project folder.
    pub display: String,
    pub text: Arc<String>,
    /// Byte offsets where lines start, computed once on first use (diagnostics find
    /// their line by binary search instead of scanning the file each time).
    lines: OnceLock<Arc<Vec<usize>>>,
}

impl SourceFile {
    pub fn line_starts(&self) -> Arc<Vec<usize>> {
        self.lines
            .get_or_init(|| Arc::new(line_starts(&self.text)))
            .clone()
    }

    /// The 1-based line and column (in characters) of byte `offset`, as an editor
    /// counts them.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let lines = self.line_starts();
        let at = offset.min(self.text.len());
        let line = lines.partition_point(|&s| s <= at).saturating_sub(1);
        let col = self.text.get(lines[line]..at).map_or(0, |t| t.chars().count());
        (line + 1, col + 1)
    }
}

/// Byte offsets of the starts of the lines of `text`.
pub fn line_starts(text: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(
            text.bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i + 1),
        )
        .collect()
}

/// All files of one manifest: the root file first, then its includes.
#[derive(Debug, Default)]
pub struct Sources {
    files: Vec<SourceFile>,
}

impl Sources {
    pub fn add(&mut self, path: PathBuf, display: String, text: String) -> FileId {
        self.files.push(SourceFile {
            path,
            display,
            text: Arc::new(text),
            lines: OnceLock::new(),
        });
        self.files.len() - 1
    }

    pub fn get(&self, id: FileId) -> &SourceFile {
        &self.files[id]
    }

    pub fn iter(&self) -> impl Iterator<Item = (FileId, &SourceFile)> {
        self.files.iter().enumerate()
    }

    pub fn find(&self, path: &Path) -> Option<FileId> {
        self.files.iter().position(|f| f.path == path)
    }

    pub fn named(&self, id: FileId) -> NamedSource<Arc<String>> {
        let f = &self.files[id];
        NamedSource::new(f.display.clone(), f.text.clone()).with_language("kdl")
    }

    /// The source text a location covers (for messages that quote the user's spelling).
    pub fn snippet(&self, loc: Loc) -> &str {
        let text = &self.files[loc.file].text;
        let start = loc.span.offset().min(text.len());
        let end = (start + loc.span.len()).min(text.len());
        &text[start..end]
    }
}
