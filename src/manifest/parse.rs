//! KDL parsing, in parallel for large manifests.
//!
//! The kdl crate's parser runs at roughly 1 MB/s, so a 10,000-expert manifest would
//! spend most of `plan` parsing. A large document is cut at top-level node boundaries
//! (found by a small scanner that knows KDL's strings, raw strings, comments, braces and
//! line continuations) and the pieces are parsed on all cores, spans shifted back.
//! If any piece fails to parse, the whole document is parsed serially instead, so
//! diagnostics are always the parser's own, on the real text.

use kdl::{KdlDocument, KdlError, KdlNode};
use miette::SourceSpan;
use rayon::prelude::*;

/// Documents below this size are parsed in one piece.
const SPLIT_ABOVE: usize = 128 * 1024;

/// The nodes of a parsed document, moved out (cloning them costs as much as a third
/// of parsing).
fn into_nodes(mut doc: KdlDocument) -> Vec<KdlNode> {
    std::mem::take(doc.nodes_mut())
}

pub fn parse_nodes(text: &str) -> Result<Vec<KdlNode>, KdlError> {
    let pieces = rayon::current_num_threads().max(1) * 2;
    if text.len() < SPLIT_ABOVE || pieces < 2 {
        return Ok(into_nodes(text.parse::<KdlDocument>()?));
    }
    let cuts = cut_points(text, pieces);
    if cuts.is_empty() {
        return Ok(into_nodes(text.parse::<KdlDocument>()?));
    }
    let mut ranges = vec![];
    let mut start = 0;
    for c in cuts {
        ranges.push(start..c);
        start = c;
    }
    ranges.push(start..text.len());
    let parsed: Vec<Result<Vec<KdlNode>, KdlError>> = ranges
        .par_iter()
        .map(|r| {
            let doc: KdlDocument = text[r.clone()].parse()?;
            let mut nodes = into_nodes(doc);
            for n in &mut nodes {
                shift_node(n, r.start);
            }
            Ok(nodes)
        })
        .collect();
    let mut out = vec![];
    for p in parsed {
        match p {
            Ok(nodes) => out.extend(nodes),
            // Re-parse whole for diagnostics that point into the real document.
            Err(_) => return Ok(into_nodes(text.parse::<KdlDocument>()?)),
        }
    }
    Ok(out)
}

fn shift(span: SourceSpan, by: usize) -> SourceSpan {
    SourceSpan::from(span.offset() + by..span.offset() + by + span.len())
}

fn shift_node(n: &mut KdlNode, by: usize) {
    n.set_span(shift(n.span(), by));
    let name_span = shift(n.name().span(), by);
    n.name_mut().set_span(name_span);
    if let Some(ty) = n.ty_mut() {
        let s = shift(ty.span(), by);
        ty.set_span(s);
    }
    for e in n.entries_mut() {
        let s = shift(e.span(), by);
        e.set_span(s);
        if let Some(name) = e.name_mut() {
            let s = shift(name.span(), by);
            name.set_span(s);
        }
    }
    if let Some(children) = n.children_mut() {
        let s = shift(children.span(), by);
        children.set_span(s);
        for c in children.nodes_mut() {
            shift_node(c, by);
        }
    }
}

/// Byte offsets (starts of lines) where a top-level node begins, about `pieces` apart.
/// Only unambiguous boundaries qualify: brace depth 0, outside strings and comments, the
/// previous line not continued (`\`) or slashdashed (`/-`), and the next line starting a
/// plain node name.
fn cut_points(text: &str, pieces: usize) -> Vec<usize> {
    let b = text.as_bytes();
    let target = text.len() / pieces;
    let mut next_target = target;
    let mut cuts = vec![];
    let mut depth: i64 = 0;
    let mut i = 0;
    let mut line_start = 0;
    let mut last_token_end = 0; // end of the last non-comment, non-space byte on this line
    while i < b.len() {
        match skipped(b, i) {
            Skip::Code => {}
            Skip::LineComment(end) => {
                i = end;
                continue;
            }
            // A block comment spanning lines makes this line's state unclear.
            Skip::BlockComment { end, .. } | Skip::Str(end) => {
                i = end;
                last_token_end = i;
                continue;
            }
        }
        let c = b[i];
        match c {
            b'\n' => {
                let prev = text[line_start..last_token_end.max(line_start)].trim_end();
                let clean = !prev.ends_with('\\') && !prev.ends_with("/-");
                let next = i + 1;
                if depth == 0
                    && clean
                    && next >= next_target
                    && next < b.len()
                    && b[next].is_ascii_alphabetic()
                {
                    cuts.push(next);
                    next_target = next + target;
                }
                i += 1;
                line_start = i;
                last_token_end = i;
                continue;
            }
            b'{' => depth += 1,
            b'}' => depth -= 1,
            _ => {}
        }
        if !c.is_ascii_whitespace() {
            last_token_end = i + 1;
        }
        i += 1;
    }
    if depth != 0 { vec![] } else { cuts }
}

/// Deepest nesting of children blocks (and of block comments) a manifest may have.
/// The schema nests three levels; the KDL parser recurses once per level, so unbounded
/// nesting would overflow the stack (`x {` 1,281 times did, in 5 KB of input).
pub const MAX_DEPTH: usize = 64;

/// The byte offset of the first `{` (or `/*`) that opens a level deeper than
/// [`MAX_DEPTH`], outside strings and comments; None when the text nests less.
pub fn too_deep(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match skipped(b, i) {
            Skip::Code => {}
            Skip::BlockComment {
                too_deep: Some(at), ..
            } => return Some(at),
            Skip::LineComment(end) | Skip::BlockComment { end, .. } | Skip::Str(end) => {
                i = end;
                continue;
            }
        }
        match b[i] {
            b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some(i);
                }
            }
            b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// What starts at byte `i` of a KDL text: a comment or a string (with where it ends),
/// or code. Both scanners above skip the same things the same way.
enum Skip {
    LineComment(usize),
    /// Block comments nest; `too_deep` is where nesting first passes [`MAX_DEPTH`].
    BlockComment {
        end: usize,
        too_deep: Option<usize>,
    },
    Str(usize),
    Code,
}

fn skipped(b: &[u8], mut i: usize) -> Skip {
    match b[i] {
        b'/' if b.get(i + 1) == Some(&b'/') => {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            Skip::LineComment(i)
        }
        b'/' if b.get(i + 1) == Some(&b'*') => {
            let (mut nest, mut too_deep) = (0usize, None);
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    nest += 1;
                    if nest > MAX_DEPTH && too_deep.is_none() {
                        too_deep = Some(i);
                    }
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    nest -= 1;
                    i += 2;
                    if nest == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            Skip::BlockComment { end: i, too_deep }
        }
        b'"' => Skip::Str(skip_string(b, i, 0)),
        b'#' => {
            let mut h = 0;
            while b.get(i + h) == Some(&b'#') {
                h += 1;
            }
            if b.get(i + h) == Some(&b'"') {
                Skip::Str(skip_string(b, i + h, h))
            } else {
                Skip::Code
            }
        }
        _ => Skip::Code,
    }
}

/// Skips a string starting at the `"` at `i`; `hashes` > 0 for raw strings. Returns the
/// index after its end (or the end of input for an unterminated one).
fn skip_string(b: &[u8], i: usize, hashes: usize) -> usize {
    let triple = b.get(i..i + 3) == Some(b"\"\"\"");
    let open = if triple { 3 } else { 1 };
    let mut j = i + open;
    while j < b.len() {
        if hashes == 0 && b[j] == b'\\' {
            j += 2;
            continue;
        }
        let closes = if triple {
            b.get(j..j + 3) == Some(b"\"\"\"")
        } else {
            b[j] == b'"'
        };
        if closes {
            let end = j + open;
            if (0..hashes).all(|k| b.get(end + k) == Some(&b'#')) {
                return end + hashes;
            }
        }
        j += 1;
    }
    b.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn big(body: &str) -> String {
        let mut s = String::new();
        while s.len() < SPLIT_ABOVE * 2 {
            s.push_str(body);
        }
        s
    }

    fn same_as_serial(text: &str) {
        // The parallel path is really taken: cuts exist and every piece parses alone.
        let cuts = cut_points(text, 4);
        assert!(!cuts.is_empty());
        let mut start = 0;
        for c in cuts.iter().copied().chain(std::iter::once(text.len())) {
            assert!(
                text[start..c].parse::<KdlDocument>().is_ok(),
                "piece {start}..{c}"
            );
            start = c;
        }
        let serial = text.parse::<KdlDocument>().unwrap().nodes().to_vec();
        let parallel = parse_nodes(text).unwrap();
        assert_eq!(serial.len(), parallel.len());
        for (a, b) in serial.iter().zip(&parallel) {
            assert_eq!(a.to_string(), b.to_string());
            assert_eq!(a.span(), b.span());
            assert_eq!(a.name().span(), b.name().span());
            for (x, y) in a.entries().iter().zip(b.entries()) {
                assert_eq!(x.span(), y.span());
            }
        }
    }

    #[test]
    fn nesting_depth_is_found_outside_strings_and_comments() {
        let nest = |n: usize| "x {".repeat(n) + &"}".repeat(n);
        assert_eq!(too_deep(&nest(MAX_DEPTH)), None);
        assert_eq!(too_deep(&nest(MAX_DEPTH + 1)), Some(3 * MAX_DEPTH + 2));
        let quoted = format!(
            "x \"{}\" // {}\n#\"{}\"#",
            "{".repeat(500),
            "{".repeat(500),
            "{".repeat(500)
        );
        assert_eq!(too_deep(&quoted), None);
        let comments = "/*".repeat(MAX_DEPTH + 1) + &"*/".repeat(MAX_DEPTH + 1);
        assert_eq!(too_deep(&comments), Some(2 * MAX_DEPTH));
        assert_eq!(
            too_deep(&("/*".repeat(MAX_DEPTH) + &"*/".repeat(MAX_DEPTH))),
            None
        );
    }

    #[test]
    fn parallel_parse_equals_serial_parse() {
        same_as_serial(&big("dataset \"d\" hub=\"x\" config=\"c\" // comment { \"\n\
             expert \"e\" model=\"m\" dataset=\"d\" {\n    train steps=10\n}\n\
             /* block\n comment */ model \"m\" hub=#\"raw \" string\"#\n\
             raw #\"\"\"\n  raw { multi\n  \"\"\"#\n\
             note \"\"\"\n  multi\n  line {\n  \"\"\"\n\
             cont \"a\" \\\n    b=1\n\
             /-\nskipped \"x\"\n"));
    }
}
