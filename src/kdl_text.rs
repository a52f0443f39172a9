//! Scanning KDL text without parsing it: how deep its blocks nest (the kdl crate's
//! parser recurses once per level, so a manifest or lockfile nested thousands deep
//! would overflow the stack), and what is a string or a comment, for the manifest's
//! parallel parser to cut at node boundaries.

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
/// or code. The manifest's cut-point scanner and [`too_deep`] skip the same things the same way.
pub(crate) enum Skip {
    LineComment(usize),
    /// Block comments nest; `too_deep` is where nesting first passes [`MAX_DEPTH`].
    BlockComment {
        end: usize,
        too_deep: Option<usize>,
    },
    Str(usize),
    Code,
}

pub(crate) fn skipped(b: &[u8], mut i: usize) -> Skip {
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
}
