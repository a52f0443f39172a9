//! The layering of src/, checked against the rules in ARCHITECTURE.md ("Layers"):
//! every `crate::` or `super::` path of every file under src/ is resolved to the
//! top-level module it names, and a module may only reach the modules its rule
//! lists (and, through them, what those may reach). Files may not import each
//! other in a circle (a module's own re-exports of its submodules excepted).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use petgraph::algo::tarjan_scc;
use petgraph::graph::DiGraph;

/// `module: allowed allowed ...` lines of the ```layers block in ARCHITECTURE.md.
fn rules(architecture: &str) -> BTreeMap<String, BTreeSet<String>> {
    let block = architecture
        .split("```layers\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("ARCHITECTURE.md has a ```layers block");
    block
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| {
            let (m, deps) = l
                .split_once(':')
                .unwrap_or_else(|| panic!("rule without ':': {l}"));
            (
                m.trim().to_string(),
                deps.split_whitespace().map(str::to_string).collect(),
            )
        })
        .collect()
}

/// Every module a module may reach: its rule's, and theirs, transitively. A rule
/// that reaches itself is a circle in the diagram.
fn reach(rules: &BTreeMap<String, BTreeSet<String>>) -> Result<BTreeMap<String, BTreeSet<String>>, String> {
    let mut out = BTreeMap::new();
    for m in rules.keys() {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<&String> = rules[m].iter().collect();
        while let Some(d) = todo.pop() {
            if d == m {
                return Err(format!("the layer rules put `{m}` in a circle"));
            }
            if seen.insert(d.clone()) {
                todo.extend(rules.get(d).into_iter().flatten());
            }
        }
        out.insert(m.clone(), seen);
    }
    Ok(out)
}

/// The module path of a source file (`src/a/b.rs` and `src/a/b/mod.rs` are `a::b`).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if parts == ["lib"] || parts == ["main"] {
        parts.clear();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without its comments and string literals, so that a path
/// written in a doc comment or a message is not an import.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' && (i == 0 || b[i - 1] != b'\'') {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Each `crate::...` / `super::...` / `self::...` path in `code`, resolved to an
/// absolute module path (segments only; items included), with its line.
fn paths(code: &str, module: &[String]) -> Vec<(Vec<String>, usize)> {
    let mut out = vec![];
    for (n, line) in code.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = ["crate::", "super::", "self::"]
            .iter()
            .filter_map(|k| rest.find(k).map(|i| (i, *k)))
            .min()
        {
            let (i, kw) = at;
            let preceded = rest[..i]
                .chars()
                .last()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
            let tail = &rest[i + kw.len()..];
            rest = tail;
            if preceded {
                continue;
            }
            let mut segs: Vec<String> = vec![kw.trim_end_matches("::").to_string()];
            segs.extend(
                tail.split("::")
                    .map(|s| {
                        s.chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect::<String>()
                    })
                    .take_while(|s| !s.is_empty()),
            );
            let mut base: Vec<String> = match segs[0].as_str() {
                "crate" => vec![],
                _ => module.to_vec(),
            };
            let mut k = 0;
            if segs[0] == "crate" || segs[0] == "self" {
                k = 1;
            }
            while k < segs.len() && segs[k] == "super" {
                base.pop();
                k += 1;
            }
            base.extend(segs[k..].iter().cloned());
            out.push((base, n + 1));
        }
    }
    out
}

/// Everything wrong with the layering of the tree at `src` under `rules_text`.
fn violations(src: &Path, rules_text: &str) -> Vec<String> {
    let rules = rules(rules_text);
    let reach = match reach(&rules) {
        Ok(r) => r,
        Err(e) => return vec![e],
    };
    let mut files = vec![];
    rust_files(src, &mut files);
    files.sort();
    let modules: BTreeMap<Vec<String>, PathBuf> =
        files.iter().map(|f| (module_of(src, f), f.clone())).collect();
    let mut errors = vec![];
    for top in modules.keys().filter(|m| m.len() == 1) {
        if !rules.contains_key(&top[0]) {
            errors.push(format!(
                "src/{}: a top-level module with no rule in ARCHITECTURE.md's layers",
                top[0]
            ));
        }
    }
    let mut graph = DiGraph::<&Vec<String>, ()>::new();
    let nodes: BTreeMap<&Vec<String>, _> = modules.keys().map(|m| (m, graph.add_node(m))).collect();
    for (module, file) in &modules {
        if module.is_empty() {
            continue; // lib.rs and main.rs: the crate roots wire everything
        }
        let text = std::fs::read_to_string(file).unwrap();
        let shown = file
            .strip_prefix(src.parent().unwrap())
            .unwrap()
            .display()
            .to_string();
        for (path, line) in paths(&code_only(&text), module) {
            let Some(target) = (0..=path.len())
                .rev()
                .map(|i| path[..i].to_vec())
                .find(|p| modules.contains_key(p))
            else {
                continue;
            };
            if target.is_empty() {
                continue;
            }
            let (from, to) = (&module[0], &target[0]);
            if from != to && !reach.get(from).is_some_and(|r| r.contains(to)) {
                errors.push(format!(
                    "{shown}:{line}: `{from}` uses `{}`, but the layers let `{from}` use only: {}",
                    target.join("::"),
                    reach
                        .get(from)
                        .map(|r| r.iter().cloned().collect::<Vec<_>>().join(" "))
                        .unwrap_or_default()
                ));
            }
            // A module re-exporting its own submodules is not a circle.
            if target != *module && !target.starts_with(module) {
                graph.update_edge(nodes[module], nodes[&target], ());
            }
        }
    }
    for scc in tarjan_scc(&graph) {
        if scc.len() > 1 {
            let mut names: Vec<String> = scc.iter().map(|n| graph[*n].join("::")).collect();
            names.sort();
            errors.push(format!(
                "files import each other in a circle: {}",
                names.join(", ")
            ));
        }
    }
    errors
}

#[test]
fn the_source_tree_keeps_the_documented_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let arch = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let errors = violations(&root.join("src"), &arch);
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// A scratch tree: (path under src, contents).
fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (p, text) in files {
        let p = dir.path().join("src").join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    dir
}

const RULES: &str = "```layers\nsteps: model\nmodel: kernels\nkernels:\n```\n";

#[test]
fn an_upward_import_is_caught_and_a_downward_one_is_not() {
    let ok = tree(&[
        ("lib.rs", "pub mod steps; pub mod model; pub mod kernels;"),
        ("steps/mod.rs", "use crate::model::T5;\nuse crate::kernels::gemm;"),
        ("model/mod.rs", "pub mod t5;\npub use t5::T5;"),
        (
            "model/t5.rs",
            "use super::super::kernels::gemm; // crate::steps in a comment\nfn f() { let _ = \"crate::steps::x\"; }",
        ),
        ("kernels/mod.rs", "pub fn gemm() {}"),
    ]);
    assert_eq!(violations(&ok.path().join("src"), RULES), Vec::<String>::new());

    let upward = tree(&[
        ("steps/mod.rs", ""),
        ("model/mod.rs", "pub mod t5;"),
        ("model/t5.rs", "use super::super::steps::Thing;"),
        ("kernels/mod.rs", "fn f() { crate::model::t5::go(); }"),
    ]);
    let errors = violations(&upward.path().join("src"), RULES);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(
        errors[0].contains("src/kernels/mod.rs:1: `kernels` uses `model::t5`"),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].contains("src/model/t5.rs:1: `model` uses `steps`"),
        "{}",
        errors[1]
    );
}

#[test]
fn a_circle_of_files_and_an_unplaced_module_are_caught() {
    let circle = tree(&[
        ("model/mod.rs", "pub mod a; pub mod b;"),
        ("model/a.rs", "use super::b::B;"),
        ("model/b.rs", "use crate::model::a::A;"),
        ("extra/mod.rs", ""),
    ]);
    let errors = violations(&circle.path().join("src"), RULES);
    assert!(
        errors.iter().any(|e| e.contains("circle: model::a, model::b")),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("src/extra: a top-level module with no rule")),
        "{errors:#?}"
    );
    assert!(
        violations(Path::new("."), "```layers\na: b\nb: a\n```")
            .iter()
            .any(|e| e.contains("circle")),
        "a circle in the rules themselves"
    );
}
