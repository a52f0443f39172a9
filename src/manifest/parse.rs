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

use crate::kdl_text::{Skip, skipped};

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
