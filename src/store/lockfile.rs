//! The lockfile (`FILE.lock` beside the manifest): what external inputs resolved to
//! (hub revision -> commit, local file -> blake3) and each step's key and output
//! digest. Meant to be committed; `run --locked` refuses to change it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use kdl::{KdlDocument, KdlValue};

use super::fsutil::write_atomic;
use super::key::Key;

pub const LOCK_VERSION: i64 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedStep {
    pub key: Key,
    pub digest: Option<String>,
    /// Under early cutoff, for a content-keyed step (a dataset): the content digest of
    /// its output, which its consumers' keys are computed from. With it, `plan` knows
    /// those keys on a store that has not built the step yet.
    pub content: Option<String>,
    /// What set the last bits of the pinned artifact (`process::numerics`, recorded by
    /// the step that built it): a rebuild on other numerics may differ in its digest
    /// and still be the same result.
    pub numerics: Option<String>,
    /// For a kind with results tables (an eval, a study): the blake3 of those tables as
    /// a person reads them (rounded), which other numerics reproduce where the digest
    /// does not.
    pub tables: Option<String>,
}

/// How an artifact of a pinned key compares with the pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reproduction {
    /// The pinned digest, or nothing pinned to compare.
    Same,
    /// Another digest from other numerics (or numerics that do not fix the bytes: a
    /// GPU, a mixture): last bits, expected. `tables`: whether its results tables are
    /// the pinned ones (None: no tables pinned, or none of this kind).
    OtherNumerics { tables: Option<bool> },
    /// Another digest from the same numerics, or against a pin that records none (a
    /// lockfile written before they were: as then, the digest must match): the build
    /// did not reproduce.
    Differs,
    /// Under early cutoff, another content than the pinned one: the steps after it
    /// are keyed by it, and data is exact on every machine.
    Content,
}

impl Reproduction {
    /// Whether `--locked` must refuse it: the same numerics gave other bytes, or
    /// other numerics gave other tables.
    pub fn refused(&self) -> bool {
        matches!(
            self,
            Reproduction::Differs
                | Reproduction::Content
                | Reproduction::OtherNumerics { tables: Some(false) }
        )
    }
}

/// "built on X, pinned on Y" for artifacts (`built`) that differ from their pins,
/// each label once: what a message about other last bits says of where they came from.
pub fn built_and_pinned_on<'a>(pairs: impl IntoIterator<Item = (&'a LockedStep, &'a LockedStep)>) -> String {
    let (mut here, mut before): (Vec<String>, Vec<String>) = pairs
        .into_iter()
        .map(|(pin, built)| {
            let on = built
                .numerics
                .clone()
                .unwrap_or_else(|| "numerics not recorded".into());
            (on, pin.pinned_on())
        })
        .unzip();
    for v in [&mut here, &mut before] {
        v.sort();
        v.dedup();
    }
    format!("built on {}, {}", here.join("; "), before.join("; "))
}

impl LockedStep {
    /// An artifact of this key, as a run would pin it (`built`: its digest, numerics,
    /// results tables and, under early cutoff, content), against this pin.
    pub fn reproduced_by(&self, built: &LockedStep) -> Reproduction {
        use crate::process::numerics::reproducible;
        // Under early cutoff the content comes first: the steps after it are keyed by
        // the pinned one (or by none, if the pin has none), whatever the digest says.
        if built.content.is_some() && self.content != built.content {
            return Reproduction::Content;
        }
        match (&self.digest, &built.digest) {
            (None, _) | (_, None) => Reproduction::Same,
            (Some(pinned), Some(digest)) if pinned == digest => Reproduction::Same,
            _ => match (self.numerics.as_deref(), built.numerics.as_deref()) {
                (None, _) => Reproduction::Differs,
                (Some(pinned), Some(on)) if pinned == on && reproducible(on) => Reproduction::Differs,
                _ => Reproduction::OtherNumerics {
                    tables: self
                        .tables
                        .as_ref()
                        .zip(built.tables.as_ref())
                        .map(|(a, b)| a == b),
                },
            },
        }
    }

    /// Whether this pin leaves out what the artifact `built` (of the pinned digest)
    /// records: its numerics or results tables (a lockfile written before they were
    /// recorded, or edited). Not another pin: `--locked` accepts it, and says so; a
    /// plain run records them.
    pub fn records_less_than(&self, built: &LockedStep) -> bool {
        // A pin of its key alone (a step a partial run did not build) pins no
        // artifact: nothing it records could be less.
        self.digest.is_some()
            && self.digest == built.digest
            && ((self.numerics.is_none() && built.numerics.is_some())
                || (self.tables.is_none() && built.tables.is_some()))
    }

    /// What the pin says about where it was made, for messages: `on NUMERICS`, or
    /// that it does not say.
    pub fn pinned_on(&self) -> String {
        match &self.numerics {
            Some(n) => format!("pinned on {n}"),
            None => "pinned where the lockfile does not record the numerics".to_string(),
        }
    }

    /// A step pinned by its key alone (not built yet).
    pub fn key_only(key: Key) -> LockedStep {
        LockedStep {
            key,
            digest: None,
            content: None,
            numerics: None,
            tables: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lockfile {
    /// External name (see `External::lock_name`) -> resolved identity.
    pub externals: BTreeMap<String, String>,
    /// Step id -> key and digest.
    pub steps: BTreeMap<String, LockedStep>,
}

#[derive(Debug, thiserror::Error)]
#[error("lockfile {path} is unreadable: {reason} (delete it and `goosepipe run` writes a fresh one)")]
pub struct LockfileError {
    pub path: PathBuf,
    pub reason: String,
}

/// `pipelines/t0.kdl` -> `pipelines/t0.kdl.lock`.
pub fn lock_path(manifest: &Path) -> PathBuf {
    let mut s = manifest.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

impl Lockfile {
    /// Reads a lockfile; a missing file is an empty lockfile.
    pub fn read(path: &Path) -> Result<Lockfile, LockfileError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Lockfile::default()),
            Err(e) => {
                return Err(LockfileError {
                    path: path.into(),
                    reason: e.to_string(),
                });
            }
        };
        let bad = |reason: String| LockfileError {
            path: path.into(),
            reason,
        };
        // "line L, column C" of a byte offset, for errors a person can find.
        let at = |offset: usize| {
            let mut end = offset.min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            let before = &text[..end];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}")
        };
        // A merge left both sides in: said as that, not as a syntax error.
        if let Some(n) = text.lines().position(|l| {
            l.starts_with("<<<<<<< ") || l.starts_with(">>>>>>> ") || l == "<<<<<<<" || l == "======="
        }) {
            return Err(bad(format!(
                "it has merge-conflict markers (line {}): keep one side of each conflict, then run the manifest to re-pin what changed",
                n + 1
            )));
        }
        // A lockfile nests no block; one nested thousands deep overflowed the parser's
        // stack (an abort, whatever was running).
        if let Some(offset) = crate::kdl_text::too_deep(&text) {
            return Err(bad(format!(
                "{}: blocks nest deeper than {} levels",
                at(offset),
                crate::kdl_text::MAX_DEPTH
            )));
        }
        let doc: KdlDocument = text.parse().map_err(|e: kdl::KdlError| {
            let first = e.diagnostics.first();
            let msg = first
                .and_then(|d| d.message.clone().or_else(|| d.label.clone()))
                .unwrap_or_else(|| "invalid KDL".into());
            let place = first.map_or_else(String::new, |d| format!("{}: ", at(d.span.offset())));
            bad(format!("{place}{msg}"))
        })?;
        let mut lock = Lockfile::default();
        for node in doc.nodes() {
            let bad = |reason: String| bad(format!("{}: {reason}", at(node.span().offset())));
            let name = match node.get(0) {
                Some(KdlValue::String(s)) => s.clone(),
                _ => String::new(),
            };
            let s = |k: &str| match node.get(k) {
                Some(KdlValue::String(s)) => Some(s.clone()),
                _ => None,
            };
            check_entries(node).map_err(|(offset, reason)| {
                let place = at(offset);
                LockfileError {
                    path: path.into(),
                    reason: format!("{place}: {reason}"),
                }
            })?;
            match node.name().value() {
                "lockfile" => match node.get("version") {
                    Some(KdlValue::Integer(v)) if *v as i64 == LOCK_VERSION => {}
                    Some(v) => {
                        return Err(bad(format!(
                            "lockfile version {v} is not one this goosepipe reads ({LOCK_VERSION})"
                        )));
                    }
                    None => return Err(bad("the lockfile node has no version=".to_string())),
                },
                "external" => {
                    let v = s("resolved").ok_or_else(|| bad(format!("external {name} has no resolved=")))?;
                    if lock.externals.insert(name.clone(), v).is_some() {
                        return Err(bad(format!(
                            "external {name} is pinned twice: keep one line (a merge that kept both sides?)"
                        )));
                    }
                }
                "step" => {
                    let key = s("key")
                        .ok_or_else(|| bad(format!("step {name} has no key=")))?
                        .parse()
                        .map_err(bad)?;
                    // Each pin is a blake3 hex digest: anything else (a hand edit, a
                    // provisional marker) is refused here rather than trusted. (A
                    // content pin keys every step after the dataset; a digest that is
                    // no digest made --locked call a faithful build "not reproducible".)
                    let digest = |attr: &str| match s(attr) {
                        Some(d) if !(d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit())) => {
                            Err(bad(format!(
                                "step {name} has {attr}={d:?}, which is not a blake3 digest (64 hex digits)"
                            )))
                        }
                        d => Ok(d),
                    };
                    let pinned = LockedStep {
                        key,
                        digest: digest("digest")?,
                        content: digest("content")?,
                        numerics: s("numerics"),
                        tables: digest("tables")?,
                    };
                    if lock.steps.insert(name.clone(), pinned).is_some() {
                        return Err(bad(format!(
                            "step {name} is pinned twice: keep one line (a merge that kept both sides?)"
                        )));
                    }
                }
                other => return Err(bad(format!("unknown lockfile node {other}"))),
            }
        }
        Ok(lock)
    }

    pub fn render(&self, manifest_name: &str) -> String {
        let q = |s: &str| serde_json::to_string(s).expect("string encodes");
        let mut out = String::new();
        let _ = writeln!(
            out,
            "// goosepipe lockfile for {manifest_name}: what external inputs resolved to, and each\n// step's key and output digest. Written by `goosepipe run`; commit it.\nlockfile version={LOCK_VERSION}"
        );
        for (name, v) in &self.externals {
            let _ = writeln!(out, "external {} resolved={}", q(name), q(v));
        }
        for (id, s) in &self.steps {
            let _ = write!(out, "step {} key={}", q(id), q(&s.key.hex()));
            if let Some(d) = &s.digest {
                let _ = write!(out, " digest={}", q(d));
            }
            if let Some(c) = &s.content {
                let _ = write!(out, " content={}", q(c));
            }
            if let Some(t) = &s.tables {
                let _ = write!(out, " tables={}", q(t));
            }
            if let Some(n) = &s.numerics {
                let _ = write!(out, " numerics={}", q(n));
            }
            out.push('\n');
        }
        out
    }

    pub fn write(&self, path: &Path, manifest_name: &str) -> std::io::Result<()> {
        write_atomic(path, self.render(manifest_name).as_bytes())
    }
}

/// The properties each lockfile node may carry, and whether it names something (its one
/// argument). `render` writes exactly these: anything else is a hand edit or a typo
/// (`digset=`) that would otherwise be dropped unsaid, the pin read as if it lacked it.
fn known_entries(node: &str) -> Option<(bool, &'static [&'static str])> {
    match node {
        "lockfile" => Some((false, &["version"])),
        "external" => Some((true, &["resolved"])),
        "step" => Some((true, &["key", "digest", "content", "tables", "numerics"])),
        _ => None,
    }
}

/// A node's entries held to `known_entries`: an unknown property, a property given twice, a
/// value of another type than a string where one is read, a stray argument or a block, each
/// refused at its place (a byte offset).
fn check_entries(node: &kdl::KdlNode) -> Result<(), (usize, String)> {
    let kind = node.name().value();
    let Some((named, props)) = known_entries(kind) else {
        return Ok(()); // said by the caller, with the node's name
    };
    let what = match node.get(0) {
        Some(KdlValue::String(s)) if named => format!("{kind} {s}"),
        _ => kind.to_string(),
    };
    if node.children().is_some() {
        return Err((
            node.span().offset(),
            format!("{what} has a block {{ ... }}; lockfile lines have none"),
        ));
    }
    let mut seen = Vec::new();
    let mut args = 0;
    // As written: a string quoted, so `"x"` and `x` are told apart.
    let shown = |v: &KdlValue| match v {
        KdlValue::String(s) => format!("{s:?}"),
        other => other.to_string(),
    };
    let a = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    for entry in node.entries() {
        let offset = entry.span().offset();
        match entry.name() {
            None => {
                args += 1;
                let wanted = usize::from(named);
                if args > wanted || !matches!(entry.value(), KdlValue::String(_)) {
                    return Err((
                        offset,
                        if named {
                            format!(
                                "{what} has a stray value {}: {a} {kind} line names one (a string) and then has properties",
                                shown(entry.value())
                            )
                        } else {
                            format!(
                                "{what} has a stray value {}: it has properties only",
                                shown(entry.value())
                            )
                        },
                    ));
                }
            }
            Some(name) => {
                let name = name.value();
                if !props.contains(&name) {
                    return Err((
                        offset,
                        format!(
                            "{what} has an unknown property {name}= ({a} {kind} line has {})",
                            props
                                .iter()
                                .map(|p| format!("{p}="))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
                if seen.contains(&name) {
                    return Err((offset, format!("{what} has {name}= twice")));
                }
                seen.push(name);
                if name != "version" && !matches!(entry.value(), KdlValue::String(_)) {
                    return Err((
                        offset,
                        format!(
                            "{what} has {name}={}, which is not a string",
                            shown(entry.value())
                        ),
                    ));
                }
            }
        }
    }
    if named && args == 0 {
        return Err((
            node.span().offset(),
            format!("{a} {kind} line names nothing: it starts {kind} \"NAME\""),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let mut l = Lockfile::default();
        l.externals
            .insert("hub:model:google/t5-xl-lm-adapt@main".into(), "abc".into());
        l.steps.insert(
            "expert:x".into(),
            LockedStep {
                key: Key([7; 32]),
                digest: Some("d".repeat(64)),
                content: None,
                numerics: Some("cpu x86_64 fma".into()),
                tables: Some("e".repeat(64)),
            },
        );
        l.steps.insert(
            "dataset:x".into(),
            LockedStep {
                key: Key([8; 32]),
                digest: Some("f".repeat(64)),
                content: Some("c".repeat(64)),
                numerics: None,
                tables: None,
            },
        );
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("m.kdl.lock");
        l.write(&p, "m.kdl").unwrap();
        assert_eq!(Lockfile::read(&p).unwrap(), l);
    }

    #[test]
    fn a_digest_from_other_numerics_is_judged_by_its_tables() {
        let pin = LockedStep {
            digest: Some("d".into()),
            numerics: Some("cpu x86_64 avx512f".into()),
            tables: Some("t".into()),
            ..LockedStep::key_only(Key([1; 32]))
        };
        // An artifact as a run pins it.
        let built =
            |digest: &str, numerics: Option<&str>, tables: Option<&str>, content: Option<&str>| LockedStep {
                digest: Some(digest.into()),
                numerics: numerics.map(String::from),
                tables: tables.map(String::from),
                content: content.map(String::from),
                ..LockedStep::key_only(Key([1; 32]))
            };
        let avx512 = Some("cpu x86_64 avx512f");
        let fma = Some("cpu x86_64 fma");
        assert_eq!(
            pin.reproduced_by(&built("d", fma, None, None)),
            Reproduction::Same
        );
        assert_eq!(
            pin.reproduced_by(&built("e", avx512, Some("t"), None)),
            Reproduction::Differs
        );
        let other = pin.reproduced_by(&built("e", fma, Some("t"), None));
        assert_eq!(other, Reproduction::OtherNumerics { tables: Some(true) });
        assert!(!other.refused());
        let other = pin.reproduced_by(&built("e", fma, Some("u"), None));
        assert!(other.refused(), "other tables are another result");
        // A GPU or a mixture does not fix the bytes: judged by the tables.
        for label in ["cuda", "mixed: cpu x86_64 avx512f; cpu x86_64 fma"] {
            let on = LockedStep {
                numerics: Some(label.into()),
                ..pin.clone()
            };
            assert_eq!(
                on.reproduced_by(&built("e", Some(label), Some("t"), None)),
                Reproduction::OtherNumerics { tables: Some(true) },
                "{label}"
            );
        }
        // An exact kind must match everywhere; so must a pin that records no numerics
        // (a lockfile from before they were recorded), as it had to then.
        let exact = LockedStep {
            numerics: Some("exact".into()),
            ..pin.clone()
        };
        assert_eq!(
            exact.reproduced_by(&built("e", Some("exact"), None, None)),
            Reproduction::Differs
        );
        let old = LockedStep {
            numerics: None,
            tables: None,
            ..pin.clone()
        };
        assert_eq!(
            old.reproduced_by(&built("e", avx512, None, None)),
            Reproduction::Differs
        );
        // Under early cutoff, another content is refused whatever the numerics, and so
        // is content the pin does not hold (written before early cutoff was on).
        let data = LockedStep {
            content: Some("c".into()),
            ..pin.clone()
        };
        assert_eq!(
            data.reproduced_by(&built("e", fma, None, Some("x"))),
            Reproduction::Content
        );
        assert_eq!(
            pin.reproduced_by(&built("d", fma, None, Some("x"))),
            Reproduction::Content
        );
        assert!(Reproduction::Differs.refused() && Reproduction::Content.refused());
    }

    #[test]
    fn errors_say_where() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("m.kdl.lock");
        let err = |text: &str| {
            std::fs::write(&p, text).unwrap();
            Lockfile::read(&p).unwrap_err().to_string()
        };
        let e = err("lockfile version=1\nstep \"expert:x\" key=\"00\" {\n");
        assert!(e.contains("line 2, column"), "{e}");
        let e = err("lockfile version=99\n");
        assert!(
            e.contains("line 1, column 1: lockfile version 99 is not one this goosepipe reads (1)"),
            "{e}"
        );
        let e = err("lockfile version=1\nstep \"expert:x\"\n");
        assert!(e.contains("line 2, column 1: step expert:x has no key="), "{e}");
        let key = "0".repeat(64);
        let e = err(&format!(
            "lockfile version=1\nstep \"dataset:x\" key=\"{key}\" content=\"pending:{key}\"\n"
        ));
        assert!(
            e.contains("line 2, column 1: step dataset:x has content=\"pending:"),
            "{e}"
        );
        // A digest or tables pin that is no digest (`run --locked` called the build
        // that reproduced everything else "not reproducible"), and a step or an
        // external pinned twice (the last line won, unsaid).
        for attr in ["digest", "tables"] {
            let e = err(&format!(
                "lockfile version=1\nstep \"expert:x\" key=\"{key}\" {attr}=\"\"\n"
            ));
            assert!(
                e.contains(&format!(
                    "line 2, column 1: step expert:x has {attr}=\"\", which is not a blake3 digest"
                )),
                "{e}"
            );
        }
        let e = err(&format!(
            "lockfile version=1\nstep \"expert:x\" key=\"{key}\"\nstep \"expert:x\" key=\"{key}\"\n"
        ));
        assert!(
            e.contains("line 3, column 1: step expert:x is pinned twice"),
            "{e}"
        );
        let e =
            err("lockfile version=1\nexternal \"hub:a\" resolved=\"x\"\nexternal \"hub:a\" resolved=\"y\"\n");
        assert!(
            e.contains("line 3, column 1: external hub:a is pinned twice"),
            "{e}"
        );
        // A property render never writes (a typo: the pin was read as lacking it), one
        // given twice, a number where a string is read, a stray value, a block: each
        // refused at its place rather than dropped unsaid.
        for (line, said) in [
            (
                format!("step \"expert:x\" key=\"{key}\" digset=\"{key}\""),
                "line 2, column 88: step expert:x has an unknown property digset= (a step line has key=, digest=, content=, tables=, numerics=)",
            ),
            (
                format!("step \"expert:x\" key=\"{key}\" key=\"{key}\""),
                "line 2, column 88: step expert:x has key= twice",
            ),
            (
                "step \"expert:x\" key=5".to_string(),
                "line 2, column 17: step expert:x has key=5, which is not a string",
            ),
            (
                "external \"hub:a\" \"hub:b\" resolved=\"x\"".to_string(),
                "line 2, column 18: external hub:a has a stray value \"hub:b\"",
            ),
            (
                format!("step key=\"{key}\""),
                "line 2, column 1: a step line names nothing",
            ),
            (
                format!("step \"expert:x\" key=\"{key}\" {{ digest \"{key}\" }}"),
                "line 2, column 1: step expert:x has a block { ... }",
            ),
        ] {
            let e = err(&format!("lockfile version=1\n{line}\n"));
            assert!(e.contains(said), "{line}\n{e}");
        }
        // Nested past any sense: an error, not a stack overflow (run and plan aborted).
        let deep = format!(
            "lockfile version=1\n{}{}",
            "a {".repeat(200_000),
            "}".repeat(200_000)
        );
        let e = err(&deep);
        assert!(
            e.contains("line 2, column 195: blocks nest deeper than 64 levels"),
            "{e}"
        );
    }
}
