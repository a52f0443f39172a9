//! KDL text -> validated [`Manifest`], driven by the schema.
//!
//! The validator never stops at the first problem: it keeps walking and collects every
//! error of every file, so one `goosepipe check` shows the whole list.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use kdl::{KdlEntry, KdlNode, KdlValue};
use miette::SourceSpan;

use super::diag::{ManifestError, ManifestErrors, did_you_mean};
use super::model::{Block, Child, Entity, Field, Manifest, Origin};
use super::schema::{BlockSpec, ChildKind, ChildSpec, ListSpec, PropSpec, Schema, Type, quote_list};
use super::source::{FileId, Loc, Sources};
use super::value::Value;

/// Reads, parses and validates a manifest and everything it includes.
pub fn load(path: &Path) -> Result<Manifest, ManifestErrors> {
    let (manifest, errors) = load_lenient(path)?;
    if errors.is_empty() {
        Ok(manifest)
    } else {
        Err(ManifestErrors {
            file: manifest.display,
            errors,
        })
    }
}

/// The manifest as far as it is valid (a node with errors is kept, what was wrong in
/// it left out), and its errors in source order; `Err` only when the file itself
/// cannot be read. What the planner checks beyond the schema can then be checked on
/// it too, so that one `check` shows every error.
pub fn load_lenient(path: &Path) -> Result<(Manifest, Vec<ManifestError>), ManifestErrors> {
    let schema = Schema::embedded();
    let display_root = path.display().to_string();
    let abs = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) => {
            return Err(ManifestErrors {
                file: display_root,
                errors: vec![io_error(path, &e)],
            });
        }
    };
    let root = abs.parent().map(Path::to_path_buf).unwrap_or_default();
    let text = match read_regular(&abs) {
        Ok(t) => t,
        Err(e) => {
            return Err(ManifestErrors {
                file: display_root,
                errors: vec![io_error(path, &e)],
            });
        }
    };
    let mut v = Validator {
        schema,
        sources: Sources::default(),
        errors: vec![],
        root: root.clone(),
        raw: vec![],
        include_stack: vec![],
        depths: HashMap::new(),
        refused_names: Default::default(),
        unparsed: vec![],
    };
    let name = abs
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| display_root.clone());
    let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
    let id = v.sources.add(abs.clone(), name.clone(), text);
    v.load_file(id);
    let (manifest, errors) = v.finish(abs, root, display_root.clone());
    // A data file or a log given by mistake would be said as thousands of errors
    // that all say the same thing: one error instead, when the file is not named
    // .kdl and errors stand on half of its lines or more (a manifest named otherwise
    // with a mistake or two gets its errors, with their places).
    let kdl = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("kdl"));
    let own = errors.iter().filter(|e| e.src.name() == name).count();
    if !kdl && own >= 10 && 2 * own >= lines {
        let mut s = Sources::default();
        let id = s.add(path.to_path_buf(), display_root.clone(), String::new());
        let error = ManifestError::new(
            &s,
            "manifest::not-kdl",
            Loc::new(id, SourceSpan::from(0..0)),
            format!("{display_root} is not a .kdl file and does not read as a manifest ({own} errors): is it the manifest?"),
            "here",
        )
        .help("give the pipeline's manifest, such as pipelines/quickstart.kdl (a data file is named by a dataset's path=)");
        return Err(ManifestErrors {
            file: display_root,
            errors: vec![error],
        });
    }
    Ok((manifest, errors))
}

/// Errors in source order, file by file, so that the output reads top to bottom.
pub fn sort_in_source_order(errors: &mut [ManifestError], sources: &Sources) {
    sort_by_files(errors, &file_order(sources));
}

/// The manifest's files as errors name them, root first.
pub fn file_order(sources: &Sources) -> Vec<String> {
    sources.iter().map(|(_, s)| s.display.clone()).collect()
}

/// Errors by file (in `files`' order), then by offset.
pub fn sort_by_files(errors: &mut [ManifestError], files: &[String]) {
    errors.sort_by_key(|e| {
        let l = e.labels.first().map(|l| l.offset()).unwrap_or(0);
        let f = files.iter().position(|n| n == e.src.name()).unwrap_or(0);
        (f, l)
    });
}

/// How many files deep includes may nest (a chain of includes recurses once per file).
const MAX_INCLUDE_DEPTH: usize = 32;

/// Reads a manifest file, refusing anything but a regular file: a FIFO or a device
/// would block the read forever (or never end, as /dev/zero).
fn read_regular(path: &Path) -> std::io::Result<String> {
    let md = std::fs::metadata(path)?;
    if !md.is_file() {
        return Err(std::io::Error::other(format!(
            "it is not a regular file (a {})",
            crate::store::fsutil::file_kind(&md)
        )));
    }
    let bytes = std::fs::read(path)?;
    String::from_utf8(bytes).map_err(|e| {
        // Where, so the character can be found (a latin-1 "é" in a comment).
        let at = e.utf8_error().valid_up_to();
        let b = e.as_bytes();
        let line = b[..at].iter().filter(|&&c| c == b'\n').count() + 1;
        let col = at - b[..at].iter().rposition(|&c| c == b'\n').map_or(0, |p| p + 1) + 1;
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "it is not UTF-8 text: line {line}, byte {col} of the line (0x{:02x})",
                b[at]
            ),
        )
    })
}

/// A manifest file that cannot even be read: no source to point into, so a plain
/// diagnostic with the path and the OS reason.
fn io_error(path: &Path, e: &std::io::Error) -> ManifestError {
    let mut s = Sources::default();
    let id = s.add(path.to_path_buf(), path.display().to_string(), String::new());
    ManifestError::new(
        &s,
        "manifest::unreadable",
        Loc::new(id, SourceSpan::from(0..0)),
        format!("cannot read manifest {}: {e}", path.display()),
        "here",
    )
    .help(if e.kind() == std::io::ErrorKind::InvalidData {
        "KDL files are UTF-8: save the manifest as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
    } else {
        "check the path; manifests are KDL v2 files such as pipelines/quickstart.kdl"
    })
}

/// What the top-level nodes of a manifest say, gathered before defaults apply.
#[derive(Default)]
struct TopLevel {
    pipeline: Option<(String, Loc)>,
    allow_outside_paths: bool,
    early_cutoff: bool,
    jobs: Option<usize>,
    /// Every `defaults` node, with the include depth of its file (1: the manifest
    /// given on the command line) and where it is: a file's own defaults override
    /// those of the files it includes.
    defaults: Vec<(usize, Block, Loc)>,
    /// The whole `pipeline` and `defaults` nodes.
    settings_locs: Vec<Loc>,
    entities: Vec<Entity>,
    index: HashMap<(String, String), usize>,
}

struct RawNode {
    file: FileId,
    node: KdlNode,
}

struct Validator {
    schema: &'static Schema,
    sources: Sources,
    errors: Vec<ManifestError>,
    root: PathBuf,
    raw: Vec<RawNode>,
    include_stack: Vec<PathBuf>,
    /// How deep each file is included (1: the manifest given on the command line).
    depths: HashMap<FileId, usize>,
    /// (kind, name) of nodes whose name was refused (`manifest::bad-name`): a
    /// reference to one is not a second error (the node is defined; its name is what
    /// is wrong).
    refused_names: std::collections::HashSet<(String, String)>,
    /// Included files that could not be parsed: what they define is unknown, so a
    /// reference to something undefined may be defined there (not a second error).
    unparsed: Vec<String>,
}

impl Validator {
    fn err(
        &mut self,
        code: &'static str,
        loc: Loc,
        msg: impl Into<String>,
        label: impl Into<String>,
        help: impl Into<String>,
    ) {
        let e = ManifestError::new(&self.sources, code, loc, msg, label).help(help);
        self.errors.push(e);
    }

    fn load_file(&mut self, id: FileId) {
        let path = self.sources.get(id).path.clone();
        self.include_stack.push(path.clone());
        self.depths.insert(id, self.include_stack.len());
        let text = self.sources.get(id).text.clone();
        if let Some(at) = crate::kdl_text::too_deep(&text) {
            self.err(
                "manifest::too-deep",
                Loc::new(id, SourceSpan::from(at..at + 1)),
                format!("blocks nest deeper than {} levels", crate::kdl_text::MAX_DEPTH),
                "this block is one level too deep",
                "goosepipe manifests nest at most three levels (node { group { ... } }); close the open blocks",
            );
            self.include_stack.pop();
            return;
        }
        let nodes = match super::parse::parse_nodes(&text) {
            Ok(d) => d,
            Err(e) => {
                self.syntax_errors(id, &e);
                if self.include_stack.len() > 1 {
                    self.unparsed.push(self.sources.get(id).display.clone());
                }
                self.include_stack.pop();
                return;
            }
        };
        let included = self.include_stack.len() > 1;
        for node in nodes {
            if node.name().value() == "include" {
                self.include(id, &node);
            } else if included && node.name().value() == "pipeline" {
                // The pipeline node speaks for the project (its jobs, and which paths
                // outside the project folder it may read): only the file given on the
                // command line may say it.
                self.err(
                    "manifest::pipeline-in-include",
                    Loc::new(id, node.span()),
                    "an included file may not have a `pipeline` node",
                    "only the manifest given on the command line names the pipeline",
                    "move this node (and settings such as allow-outside-paths) into the including manifest",
                );
            } else {
                self.raw.push(RawNode { file: id, node });
            }
        }
        self.include_stack.pop();
    }

    fn syntax_errors(&mut self, id: FileId, e: &kdl::KdlError) {
        if e.diagnostics.is_empty() {
            self.err(
                "manifest::syntax",
                Loc::new(id, SourceSpan::from(0..0)),
                "invalid KDL",
                "the parser gave up here",
                "manifests are KDL v2: https://kdl.dev",
            );
        }
        for d in &e.diagnostics {
            let msg = d.message.clone().unwrap_or_else(|| "invalid KDL syntax".into());
            let label = d.label.clone().unwrap_or_else(|| "here".into());
            let help = d.help.clone().unwrap_or_else(|| {
                "manifests are KDL v2 (strings in double quotes, #true/#false, props as key=value)".into()
            });
            let span = narrow_span(&self.sources.get(id).text, d.span);
            self.err(
                "manifest::syntax",
                Loc::new(id, span),
                format!("syntax error: {msg}"),
                label,
                help,
            );
        }
    }

    fn include(&mut self, file: FileId, node: &KdlNode) {
        let loc = Loc::new(file, node.span());
        // Validate the include node's own shape first (one path argument, nothing else).
        let spec = self.schema.node("include").expect("schema has include");
        let (block, _) = self.block(file, node, spec, false);
        let Some(Field {
            value: Value::Str(p),
            loc: ploc,
            ..
        }) = block.arg
        else {
            return;
        };
        let ploc = ploc.unwrap_or(loc);
        let base = self
            .sources
            .get(file)
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let target = normalize(&base.join(&p));
        if !target.starts_with(&self.root) {
            self.err(
                "manifest::include-escapes",
                ploc,
                format!("include \"{p}\" leaves the project folder"),
                "this path resolves outside the project",
                "includes must stay inside the project folder (the folder of the manifest given on the command line)",
            );
            return;
        }
        let real = match std::fs::canonicalize(&target) {
            Ok(r) => r,
            Err(_) => {
                self.err(
                    "manifest::include-missing",
                    ploc,
                    format!("included file \"{p}\" does not exist"),
                    "no such file",
                    format!(
                        "looked for {} in the project folder",
                        target.strip_prefix(&self.root).unwrap_or(&target).display()
                    ),
                );
                return;
            }
        };
        if !real.starts_with(&self.root) {
            self.err(
                "manifest::include-escapes",
                ploc,
                format!("include \"{p}\" leaves the project folder (through a symlink)"),
                "this path resolves outside the project",
                "includes must stay inside the project folder (the folder of the manifest given on the command line)",
            );
            return;
        }
        // A data file included by mistake would be parsed as KDL and give thousands
        // of syntax errors that all say the same thing.
        // As written (a symlink may point at a file named otherwise), in any case.
        if !target
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("kdl"))
        {
            self.err(
                "manifest::include-not-kdl",
                ploc,
                format!("include \"{p}\" is not a .kdl file"),
                "not a manifest",
                "include reads manifest files (.kdl); a data file is named by a dataset's path=",
            );
            return;
        }
        if self.include_stack.len() >= MAX_INCLUDE_DEPTH {
            self.err(
                "manifest::too-deep",
                ploc,
                format!("includes nest deeper than {MAX_INCLUDE_DEPTH} files"),
                "one include too many",
                "flatten the include chain: include the files from fewer levels",
            );
            return;
        }
        if self.include_stack.contains(&real) {
            self.err(
                "manifest::include-cycle",
                ploc,
                format!("include \"{p}\" forms a cycle"),
                "this file is already being included",
                "remove one of the includes in the cycle",
            );
            return;
        }
        if self.sources.find(&real).is_some() {
            self.err(
                "manifest::include-twice",
                ploc,
                format!("\"{p}\" is included more than once"),
                "included again here",
                "include each file once; its nodes would otherwise be defined twice",
            );
            return;
        }
        let text = match read_regular(&real) {
            Ok(t) => t,
            Err(e) => {
                self.err(
                    "manifest::include-missing",
                    ploc,
                    format!("cannot read included file \"{p}\": {e}"),
                    "unreadable",
                    "an include names a regular KDL file the user can read",
                );
                return;
            }
        };
        let display = real
            .strip_prefix(&self.root)
            .map(|r| r.display().to_string())
            .unwrap_or_else(|_| real.display().to_string());
        let id = self.sources.add(real, display, text);
        self.load_file(id);
    }

    fn finish(mut self, path: PathBuf, root: PathBuf, display: String) -> (Manifest, Vec<ManifestError>) {
        let raw = std::mem::take(&mut self.raw);
        let mut top = TopLevel::default();
        for RawNode { file, node } in &raw {
            self.top_node(*file, node, &mut top);
        }
        let TopLevel {
            pipeline,
            allow_outside_paths,
            early_cutoff,
            jobs,
            defaults,
            mut entities,
            index,
            settings_locs,
            ..
        } = top;
        let defaults = self.merge_defaults(defaults);
        // Inherit `defaults` groups, then the schema's defaults.
        let mut templates = GroupTemplates::default();
        for e in &mut entities {
            apply_defaults(self.schema, &mut e.block, defaults.as_ref(), &mut templates);
        }
        self.check_refs(&entities);
        self.check_pools(&entities, &index);
        self.check_cycles(&entities);
        sort_in_source_order(&mut self.errors, &self.sources);
        let default_groups = default_groups(self.schema, defaults.as_ref());
        let manifest = Manifest {
            path,
            display,
            root,
            sources: self.sources,
            pipeline: pipeline.map(|p| p.0),
            allow_outside_paths,
            early_cutoff,
            jobs,
            entities,
            default_groups,
            index,
            settings_locs,
        };
        (manifest, self.errors)
    }

    /// The `defaults` of every file as one block: a setting nearer the manifest given
    /// on the command line (fewer includes away) overrides the same setting further
    /// away; two files at the same distance that both set a setting, with no nearer
    /// file setting it, are an error (neither overrides the other).
    fn merge_defaults(&mut self, mut layers: Vec<(usize, Block, Loc)>) -> Option<Block> {
        // Stable: files at one depth keep their order.
        layers.sort_by_key(|l| std::cmp::Reverse(l.0));
        let mut layers = layers.into_iter();
        let (first_depth, mut merged, _) = layers.next()?;
        // Every place each (group, setting) is set, with its depth.
        type Places = Vec<(usize, Option<Loc>)>;
        let mut set: BTreeMap<(String, String), Places> = BTreeMap::new();
        let mut note = |group: &str, name: &str, depth: usize, loc: Option<Loc>| {
            set.entry((group.to_string(), name.to_string()))
                .or_default()
                .push((depth, loc));
        };
        let entries = |b: &Block| -> Vec<(String, String, Option<Loc>)> {
            let mut out: Vec<(String, String, Option<Loc>)> = b
                .props
                .iter()
                .map(|(k, f)| (String::new(), k.clone(), f.loc))
                .collect();
            for (g, c) in b.children.iter() {
                match c {
                    Child::Group(gb) => {
                        out.extend(gb.props.iter().map(|(k, f)| (g.clone(), k.clone(), f.loc)))
                    }
                    Child::List(items) => {
                        out.push((String::new(), g.clone(), items.first().and_then(|f| f.loc)))
                    }
                    Child::Records(_) => {}
                }
            }
            out
        };
        for (g, k, loc) in entries(&merged) {
            note(&g, &k, first_depth, loc);
        }
        for (depth, layer, _) in layers {
            for (g, k, loc) in entries(&layer) {
                note(&g, &k, depth, loc);
            }
            Arc::make_mut(&mut merged.props).extend(Arc::unwrap_or_clone(layer.props));
            let merged_children = Arc::make_mut(&mut merged.children);
            for (name, child) in Arc::unwrap_or_clone(layer.children) {
                match (merged_children.get_mut(&name), child) {
                    (Some(Child::Group(into)), Child::Group(from)) => {
                        Arc::make_mut(&mut into.props).extend(Arc::unwrap_or_clone(from.props));
                        Arc::make_mut(&mut into.children).extend(Arc::unwrap_or_clone(from.children));
                    }
                    (_, child) => {
                        merged_children.insert(name, child);
                    }
                }
            }
        }
        // The nearest files that set each setting: more than one is a conflict.
        for ((group, name), places) in set {
            let nearest = places.iter().map(|p| p.0).min().unwrap_or_default();
            let locs: Vec<Loc> = places
                .iter()
                .filter(|p| p.0 == nearest)
                .filter_map(|p| p.1)
                .collect();
            let [first, again, ..] = locs.as_slice() else {
                continue;
            };
            let shown = if group.is_empty() {
                name
            } else {
                format!("{group}.{name}")
            };
            self.errors.push(
                ManifestError::new(
                    &self.sources,
                    "manifest::defaults-conflict",
                    *again,
                    format!("`defaults` sets {shown} in two files included at the same depth"),
                    "set again here",
                )
                .also(&self.sources, *first, "first set here")
                .help("set it in one of them, or in a file nearer the manifest (the including file's defaults override theirs)"),
            );
        }
        Some(merged)
    }

    /// One top-level node: validated against its kind, then recorded as the pipeline
    /// label, the defaults, or a named entity (errors are recorded, never fatal here).
    fn top_node(&mut self, file: FileId, node: &KdlNode, top: &mut TopLevel) {
        let kind = node.name().value();
        let nloc = Loc::new(file, node.name().span());
        let Some(spec) = self.schema.node(kind) else {
            let kinds: Vec<&str> = self.schema.nodes.iter().map(|n| n.name.as_str()).collect();
            let help = match did_you_mean(kind, kinds.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("node kinds are: {}", kinds.join(", ")),
            };
            self.err(
                "manifest::unknown-node",
                nloc,
                format!("unknown node `{kind}`"),
                "not a goosepipe node",
                help,
            );
            return;
        };
        // A node with errors still defines its name, so references to it and
        // duplicates of it are judged correctly instead of cascading.
        let (block, _) = self.block(file, node, spec, false);
        if spec.named
            && block.arg.is_none()
            && let Some(name) = node
                .entries()
                .iter()
                .find(|e| e.name().is_none())
                .and_then(|e| e.value().as_string())
            && unfit_name(name).is_some()
        {
            self.refused_names.insert((kind.to_string(), name.to_string()));
        }
        if spec.unique {
            // One `defaults` per file: included files may each have theirs.
            let prev = if kind == "pipeline" {
                top.pipeline.as_ref().map(|p| p.1)
            } else {
                top.defaults.iter().find(|d| d.2.file == file).map(|d| d.2)
            };
            if let Some(prev) = prev {
                let mut e = ManifestError::new(
                    &self.sources,
                    "manifest::duplicate",
                    nloc,
                    format!("`{kind}` is given more than once"),
                    "second one here",
                )
                .help(if kind == "defaults" {
                    "a file has at most one `defaults` node (an included file may have its own: the including file's settings override it)".to_string()
                } else {
                    format!("a manifest has at most one `{kind}` node")
                });
                if prev.file == nloc.file {
                    e = e.also(&self.sources, prev, "first one here");
                }
                self.errors.push(e);
                return;
            }
        }
        let node_loc = Loc::new(file, node.span());
        if spec.unique {
            top.settings_locs.push(node_loc);
        }
        match kind {
            "pipeline" => {
                if let Some(Field {
                    value: Value::Str(s), ..
                }) = &block.arg
                {
                    top.pipeline = Some((s.clone(), nloc));
                }
                top.allow_outside_paths = matches!(
                    block.props.get("allow-outside-paths").map(|f| &f.value),
                    Some(Value::Bool(true))
                );
                top.early_cutoff = matches!(
                    block.props.get("early-cutoff").map(|f| &f.value),
                    Some(Value::Bool(true))
                );
                if let Some(Value::Int(n)) = block.props.get("jobs").map(|f| &f.value) {
                    top.jobs = usize::try_from(*n).ok();
                }
            }
            "defaults" => {
                let depth = self.depths.get(&file).copied().unwrap_or(1);
                top.defaults.push((depth, block, nloc));
            }
            _ if spec.named => self.add_entity(kind, block, node_loc, top),
            _ => {}
        }
    }

    /// A named node becomes an entity, unless its kind already has one of that name.
    fn add_entity(&mut self, kind: &str, block: Block, loc: Loc, top: &mut TopLevel) {
        let Some(Field {
            value: Value::Str(name),
            loc: Some(name_loc),
            ..
        }) = block.arg.clone()
        else {
            return;
        };
        let key = (kind.to_string(), name.clone());
        if let Some(prev) = top.index.get(&key).map(|&i| &top.entities[i]) {
            let mut e = ManifestError::new(
                &self.sources,
                "manifest::duplicate",
                name_loc,
                format!("{kind} \"{name}\" is defined twice"),
                "defined again here",
            );
            if prev.name_loc.file == name_loc.file {
                e = e
                    .also(&self.sources, prev.name_loc, "first defined here")
                    .help(format!("rename one of them; {kind} names must be unique"));
            } else {
                e = e.help(format!(
                    "it is first defined in {}; {kind} names must be unique",
                    self.sources.get(prev.name_loc.file).display
                ));
            }
            self.errors.push(e);
            return;
        }
        top.index.insert(key, top.entities.len());
        top.entities.push(Entity {
            kind: kind.to_string(),
            name,
            name_loc,
            loc,
            block,
        });
    }

    /// Validates one node (or group/record) against its spec. Returns None when the
    /// node is too broken to use (errors are recorded either way).
    fn block(&mut self, file: FileId, node: &KdlNode, spec: &BlockSpec, in_defaults: bool) -> (Block, bool) {
        let loc = Loc::new(file, node.span());
        let name_loc = Loc::new(file, node.name().span());
        let mut block = Block {
            name: spec.name.clone(),
            loc,
            arg: None,
            props: Default::default(),
            children: Default::default(),
        };
        let mut given_bad: Vec<String> = vec![];
        let (props_ok, args) = self.props(file, node, spec, &mut block, &mut given_bad);
        let arg_ok = self.positional(file, name_loc, spec, &args, &mut block);
        let children_ok = self.children(file, node, spec, in_defaults, &mut block);
        let required_ok =
            in_defaults || spec.name == "defaults" || self.required(name_loc, spec, &block, &given_bad);
        let ok = props_ok && arg_ok && children_ok && required_ok;
        (block, ok)
    }

    /// The node's properties, typed against the schema, into `block`; `given_bad`
    /// gets those given with a bad value (reported already, so not "missing" too).
    /// Returns whether all were good, and the positional arguments.
    fn props<'n>(
        &mut self,
        file: FileId,
        node: &'n KdlNode,
        spec: &BlockSpec,
        block: &mut Block,
        given_bad: &mut Vec<String>,
    ) -> (bool, Vec<&'n KdlEntry>) {
        let mut ok = true;
        let mut args: Vec<&'n KdlEntry> = vec![];
        for entry in node.entries() {
            match entry.name() {
                None => args.push(entry),
                Some(key) => {
                    let key = key.value();
                    let vloc = value_loc(&self.sources, file, entry);
                    let Some(pspec) = spec.prop(key) else {
                        let names: Vec<&str> = spec.props.iter().map(|p| p.name.as_str()).collect();
                        // A group's setting written on the node (`expert ... steps=100`).
                        let groups: Vec<&str> = spec
                            .children
                            .iter()
                            .filter(|c| match &c.kind {
                                ChildKind::Group(g) => {
                                    self.schema.group(g).is_some_and(|g| g.prop(key).is_some())
                                }
                                _ => false,
                            })
                            .map(|c| c.name.as_str())
                            .collect();
                        let help = match (did_you_mean(key, names.iter().copied()), groups.first()) {
                            (None, Some(first)) => format!(
                                "`{key}` is a setting of the {} group{}: write it in a block, `{} ... {{ {first} {key}=... }}`",
                                groups
                                    .iter()
                                    .map(|g| format!("`{g}`"))
                                    .collect::<Vec<_>>()
                                    .join(" or "),
                                if groups.len() > 1 { "s" } else { "" },
                                spec.name
                            ),
                            (Some(s), _) => format!("did you mean `{s}`?"),
                            (None, None) if names.is_empty() => {
                                format!("`{}` takes no properties", spec.name)
                            }
                            (None, None) => format!("`{}` accepts: {}", spec.name, names.join(", ")),
                        };
                        self.err(
                            "manifest::unknown-property",
                            Loc::new(file, entry.span()),
                            format!("unknown property `{key}` on `{}`", spec.name),
                            "not in the schema",
                            help,
                        );
                        ok = false;
                        continue;
                    };
                    if block.props.contains_key(key) {
                        self.err(
                            "manifest::duplicate",
                            Loc::new(file, entry.span()),
                            format!("property `{key}` is given twice"),
                            "given again here",
                            "KDL keeps only the last one; remove one of them",
                        );
                        ok = false;
                        continue;
                    }
                    if let Some(v) = self.typed(entry.value(), pspec, vloc, &spec.name) {
                        Arc::make_mut(&mut block.props).insert(
                            key.to_string(),
                            Field {
                                value: v,
                                loc: Some(vloc),
                                origin: Origin::Explicit,
                            },
                        );
                    } else {
                        // Reported already; not "missing" as well.
                        given_bad.push(key.to_string());
                        ok = false;
                    }
                }
            }
        }
        (ok, args)
    }

    /// The node's argument, when its spec takes one; extra arguments are errors.
    fn positional(
        &mut self,
        file: FileId,
        name_loc: Loc,
        spec: &BlockSpec,
        args: &[&KdlEntry],
        block: &mut Block,
    ) -> bool {
        let mut ok = true;
        // Positional arguments.
        match (&spec.arg, args) {
            (Some(aspec), [a, rest @ ..]) => {
                let vloc = Loc::new(file, a.span());
                if let Some(v) = self.typed(a.value(), aspec, vloc, &spec.name) {
                    block.arg = Some(Field {
                        value: v,
                        loc: Some(vloc),
                        origin: Origin::Explicit,
                    });
                } else {
                    ok = false;
                }
                for extra in rest {
                    self.extra_arg(file, extra, spec);
                    ok = false;
                }
            }
            (Some(aspec), []) => {
                if aspec.required {
                    self.err(
                        "manifest::missing-argument",
                        name_loc,
                        format!("`{}` needs its {} argument", spec.name, aspec.name),
                        format!("{} missing", aspec.name),
                        format!(
                            "write it as: {} \"{}\" ...  ({})",
                            spec.name, aspec.name, aspec.doc
                        ),
                    );
                    ok = false;
                }
            }
            (None, extra) => {
                for e in extra {
                    self.extra_arg(file, e, spec);
                    ok = false;
                }
            }
        }
        ok
    }

    /// The node's children: lists and groups (validated recursively).
    fn children(
        &mut self,
        file: FileId,
        node: &KdlNode,
        spec: &BlockSpec,
        in_defaults: bool,
        block: &mut Block,
    ) -> bool {
        let mut ok = true;
        let Some(children) = node.children() else {
            return ok;
        };
        for c in children.nodes() {
            let cname = c.name().value();
            let cloc = Loc::new(file, c.name().span());
            let Some(cspec) = spec.child(cname) else {
                self.unknown_child(c, cloc, spec);
                ok = false;
                continue;
            };
            if !cspec.repeat && block.children.contains_key(cname) {
                self.err(
                    "manifest::duplicate",
                    cloc,
                    format!("`{cname}` is given twice in `{}`", spec.name),
                    "given again here",
                    "merge the two into one node",
                );
                ok = false;
                continue;
            }
            ok &= match &cspec.kind {
                ChildKind::List(lspec) => self.list_child(file, c, cspec, lspec, spec, block),
                ChildKind::Group(_) | ChildKind::Block(_) => {
                    self.block_child(file, c, cspec, in_defaults, block)
                }
            };
        }
        ok
    }

    /// A child the schema does not know: the closest name, or the list-continuation
    /// hint (`experts "a" "b"` continued on a new line without a trailing `\` makes
    /// the next line a node named by its first quoted value).
    fn unknown_child(&mut self, c: &KdlNode, cloc: Loc, spec: &BlockSpec) {
        let cname = c.name().value();
        let names: Vec<&str> = spec.children.iter().map(|c| c.name.as_str()).collect();
        let quoted = c.name().repr().is_some_and(|r| r.starts_with('"'));
        let lists: Vec<&str> = spec
            .children
            .iter()
            .filter(|c| matches!(c.kind, ChildKind::List(_)))
            .map(|c| c.name.as_str())
            .collect();
        let help = match did_you_mean(cname, names.iter().copied()) {
            None if quoted && !lists.is_empty() => format!(
                "a line that starts with a quoted value is a new node; to continue the `{}` list from the line above, end that line with `\\`",
                lists.join("`/`")
            ),
            Some(s) => format!("did you mean `{s}`?"),
            None if names.is_empty() => format!("`{}` takes no child nodes", spec.name),
            None => {
                format!("`{}` accepts the children: {}", spec.name, names.join(", "))
            }
        };
        self.err(
            "manifest::unknown-node",
            cloc,
            format!("unknown child `{cname}` in `{}`", spec.name),
            "not in the schema",
            help,
        );
    }

    /// A list child (`experts "a" "b"`): typed values, no repeats, at least its minimum.
    fn list_child(
        &mut self,
        file: FileId,
        c: &KdlNode,
        cspec: &ChildSpec,
        lspec: &ListSpec,
        spec: &BlockSpec,
        block: &mut Block,
    ) -> bool {
        let cname = c.name().value();
        let cloc = Loc::new(file, c.name().span());
        let mut ok = true;
        let mut items = vec![];
        let mut seen = std::collections::HashSet::new();
        let pspec = PropSpec {
            name: cname.to_string(),
            ty: lspec.ty.clone(),
            default: None,
            required: false,
            min: None,
            max: None,
            above: None,
            doc: cspec.doc.clone(),
            keyless_default: false,
            keyed: true,
            path_rule: Default::default(),
        };
        for e in c.entries() {
            let eloc = Loc::new(file, e.span());
            if let Some(k) = e.name() {
                self.err(
                    "manifest::unknown-property",
                    eloc,
                    format!("unknown property `{}` on `{cname}`", k.value()),
                    "lists take values only",
                    format!("write the values as arguments: {cname} \"a\" \"b\""),
                );
                ok = false;
                continue;
            }
            let Some(v) = self.typed(e.value(), &pspec, eloc, &spec.name) else {
                ok = false;
                continue;
            };
            if !seen.insert(v.canonical()) {
                self.err(
                    "manifest::duplicate",
                    eloc,
                    format!("{v} is listed twice in `{cname}`"),
                    "listed again here",
                    "remove the repeated entry",
                );
                ok = false;
                continue;
            }
            items.push(Field {
                value: v,
                loc: Some(eloc),
                origin: Origin::Explicit,
            });
        }
        if items.len() < lspec.min {
            self.err(
                "manifest::out-of-range",
                cloc,
                format!("`{cname}` needs at least {} value(s)", lspec.min),
                if items.is_empty() {
                    "empty list".to_string()
                } else {
                    format!("{} given", items.len())
                },
                cspec.doc.clone(),
            );
            ok = false;
        }
        if c.children().is_some() {
            self.err(
                "manifest::unknown-node",
                cloc,
                format!("`{cname}` takes no child nodes"),
                "has a block",
                format!("write the values as arguments: {cname} \"a\" \"b\""),
            );
            ok = false;
        }
        Arc::make_mut(&mut block.children).insert(cname.to_string(), Child::List(items));
        ok
    }

    /// A group or block child; a repeated one (`task`) is a record, refused when its
    /// name repeats an earlier record's.
    fn block_child(
        &mut self,
        file: FileId,
        c: &KdlNode,
        cspec: &ChildSpec,
        in_defaults: bool,
        block: &mut Block,
    ) -> bool {
        let cname = c.name().value();
        let cloc = Loc::new(file, c.name().span());
        let schema: &'static Schema = self.schema;
        let inner_spec = schema.child_block(cspec).expect("schema checked");
        let (b, ok) = self.block(file, c, inner_spec, in_defaults);
        if !cspec.repeat {
            Arc::make_mut(&mut block.children).insert(cname.to_string(), Child::Group(b));
            return ok;
        }
        let recs = Arc::make_mut(&mut block.children)
            .entry(cname.to_string())
            .or_insert_with(|| Child::Records(vec![]));
        let Child::Records(r) = recs else {
            return ok;
        };
        let dup = b
            .arg
            .as_ref()
            .filter(|_| inner_spec.arg.is_some())
            .and_then(|newname| {
                r.iter()
                    .find(|p| p.arg.as_ref().map(|a| &a.value) == Some(&newname.value))
                    .map(|prev| (newname.clone(), prev.arg.as_ref().and_then(|a| a.loc)))
            });
        let Some((newname, prev_loc)) = dup else {
            r.push(b);
            return ok;
        };
        let mut e = ManifestError::new(
            &self.sources,
            "manifest::duplicate",
            newname.loc.unwrap_or(cloc),
            format!("{cname} {} is given twice", newname.value),
            "given again here",
        )
        .help(format!("each `{cname}` needs its own name"));
        if let Some(pl) = prev_loc {
            e = e.also(&self.sources, pl, "first given here");
        }
        self.errors.push(e);
        false
    }

    /// Required props and children, one-of constraints (not inside `defaults`,
    /// which only sets what it sets).
    fn required(&mut self, name_loc: Loc, spec: &BlockSpec, block: &Block, given_bad: &[String]) -> bool {
        let mut ok = true;
        for p in &spec.props {
            if p.required && !block.props.contains_key(&p.name) && !given_bad.contains(&p.name) {
                self.err(
                    "manifest::missing-property",
                    name_loc,
                    format!("`{}` needs `{}`", spec.name, p.name),
                    format!("{} missing", p.name),
                    format!("add {}=... ({}): {}", p.name, p.ty.describe(), p.doc),
                );
                ok = false;
            }
        }
        for c in &spec.children {
            if c.required && !block.children.contains_key(&c.name) {
                self.err(
                    "manifest::missing-property",
                    name_loc,
                    format!("`{}` needs a `{}` child", spec.name, c.name),
                    format!("{} missing", c.name),
                    format!("add a child node `{}`: {}", c.name, c.doc),
                );
                ok = false;
            }
        }
        for group in &spec.one_of {
            let present: Vec<&String> = group
                .iter()
                .filter(|n| block.props.contains_key(*n) || block.children.contains_key(*n))
                .collect();
            if present.len() != 1 {
                let (msg, label) = if present.is_empty() {
                    (
                        format!("`{}` needs one of {}", spec.name, quote_list(group)),
                        "source missing".to_string(),
                    )
                } else {
                    (
                        format!("`{}` takes only one of {}", spec.name, quote_list(group)),
                        format!(
                            "has {}",
                            present
                                .iter()
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(" and ")
                        ),
                    )
                };
                self.err(
                    "manifest::one-of",
                    name_loc,
                    msg,
                    label,
                    format!(
                        "say where the {} comes from with exactly one of: {}",
                        spec.name,
                        group.join(", ")
                    ),
                );
                ok = false;
            }
        }
        ok
    }

    fn extra_arg(&mut self, file: FileId, e: &KdlEntry, spec: &BlockSpec) {
        let help = match &spec.arg {
            Some(a) => format!(
                "`{}` takes one argument ({}); properties are written key=value",
                spec.name, a.name
            ),
            None => format!(
                "`{}` takes no arguments; properties are written key=value",
                spec.name
            ),
        };
        self.err(
            "manifest::unexpected-argument",
            Loc::new(file, e.span()),
            format!("unexpected argument on `{}`", spec.name),
            "extra value",
            help,
        );
    }

    /// Converts a KDL value to the declared type, checking ranges and enum values.
    fn typed(&mut self, v: &KdlValue, spec: &PropSpec, loc: Loc, owner: &str) -> Option<Value> {
        let wrong = |this: &mut Self, got: &str| {
            this.err(
                "manifest::wrong-type",
                loc,
                format!("`{}` on `{owner}` must be {}", spec.name, spec.ty.describe()),
                format!("this is {got}"),
                if spec.doc.is_empty() {
                    spec.ty.describe()
                } else {
                    spec.doc.clone()
                },
            );
            None
        };
        let got = match v {
            KdlValue::String(_) => "a string",
            KdlValue::Integer(_) => "an integer",
            KdlValue::Float(f) if !f.is_finite() => "not a finite number (#nan, #inf or too large)",
            KdlValue::Float(_) => "a float",
            KdlValue::Bool(_) => "a boolean",
            KdlValue::Null => "#null",
        };
        let value = match (&spec.ty, v) {
            (Type::Int, KdlValue::Integer(i)) => match i64::try_from(*i) {
                Ok(i) => Value::Int(i),
                Err(_) => return wrong(self, "an integer too large"),
            },
            (Type::Float, KdlValue::Integer(i)) => Value::Float(*i as f64),
            (Type::Float, KdlValue::Float(f)) if f.is_finite() => Value::Float(*f),
            (Type::Bool, KdlValue::Bool(b)) => Value::Bool(*b),
            (Type::Str | Type::Path | Type::Name | Type::Ref(_), KdlValue::String(s)) => {
                if s.is_empty() && !matches!(spec.ty, Type::Str) {
                    return wrong(self, "an empty string");
                }
                if matches!(spec.ty, Type::Name)
                    && let Some(why) = unfit_name(s)
                {
                    self.err(
                        "manifest::bad-name",
                        loc,
                        format!("\"{}\" cannot be a name", s.escape_debug()),
                        why,
                        "names become step ids (KIND:NAME) and folder and file names (report --plots, exports): no `:`, `/`, `\\`, control characters or leading `.`, at most 200 bytes",
                    );
                    return None;
                }
                Value::Str(s.clone())
            }
            (Type::Enum(values), KdlValue::String(s)) => {
                if !values.contains(s) {
                    let help = match did_you_mean(s, values.iter().map(String::as_str)) {
                        Some(d) => {
                            format!("did you mean \"{d}\"? (allowed: {})", quote_list(values))
                        }
                        None => format!("allowed: {}", quote_list(values)),
                    };
                    self.err(
                        "manifest::wrong-value",
                        loc,
                        format!("\"{s}\" is not a valid `{}`", spec.name),
                        "not one of the allowed values",
                        help,
                    );
                    return None;
                }
                Value::Str(s.clone())
            }
            _ => return wrong(self, got),
        };
        let num = value
            .as_float()
            .filter(|_| matches!(spec.ty, Type::Int | Type::Float));
        if let Some(x) = num {
            let below = spec.min.is_some_and(|m| x < m) || spec.above.is_some_and(|m| x <= m);
            let above = spec.max.is_some_and(|m| x > m);
            if below || above {
                let range = match (spec.above, spec.min, spec.max) {
                    (Some(a), _, Some(b)) => format!("above {a} and at most {b}"),
                    (Some(a), _, None) => format!("above {a}"),
                    (None, Some(a), Some(b)) => format!("between {a} and {b}"),
                    (None, Some(a), None) => format!("at least {a}"),
                    (None, None, Some(b)) => format!("at most {b}"),
                    (None, None, None) => unreachable!(),
                };
                self.err(
                    "manifest::out-of-range",
                    loc,
                    format!("`{}` = {value} is out of range", spec.name),
                    format!("must be {range}"),
                    spec.doc.clone(),
                );
                return None;
            }
        }
        Some(value)
    }

    fn check_refs(&mut self, entities: &[Entity]) {
        let mut names: HashMap<&str, std::collections::HashSet<&str>> = HashMap::new();
        for e in entities {
            names.entry(&e.kind).or_default().insert(&e.name);
        }
        let mut refs = vec![];
        for e in entities {
            let spec = self.schema.node(&e.kind).expect("validated kind");
            collect_refs(self.schema, &e.block, spec, &mut refs);
        }
        // An included file with syntax errors defines what it defines unseen: a name
        // not found may be one of them, and "add `dataset ...`" would mislead. Its
        // syntax errors say what to fix first.
        if !self.unparsed.is_empty() {
            return;
        }
        for (kind, name, loc) in refs {
            let known_set = names.get(kind.as_str());
            if known_set.is_some_and(|k| k.contains(name.as_str()))
                || self.refused_names.contains(&(kind.clone(), name.clone()))
            {
                continue;
            }
            let mut known: Vec<&str> = known_set.map(|k| k.iter().copied().collect()).unwrap_or_default();
            known.sort();
            let help = match did_you_mean(&name, known.iter().copied()) {
                Some(s) => format!("did you mean \"{s}\"?"),
                None if known.is_empty() => {
                    format!("this manifest defines no {kind}; add `{kind} \"{name}\" ...`")
                }
                None => format!(
                    "defined {kind}s: {}",
                    known
                        .iter()
                        .map(|k| format!("\"{k}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            self.err(
                "manifest::undefined-reference",
                loc,
                format!("no {kind} named \"{name}\""),
                format!("undefined {kind}"),
                help,
            );
        }
    }

    /// A pool routes among experts of one base model; mixing models is meaningless.
    fn check_pools(&mut self, entities: &[Entity], index: &HashMap<(String, String), usize>) {
        for pool in entities.iter().filter(|e| e.kind == "pool") {
            let mut first: Option<(&str, &str)> = None;
            for f in pool.block.list("experts") {
                let Some(ename) = f.value.as_str() else {
                    continue;
                };
                let Some(exp) = index
                    .get(&("expert".to_string(), ename.to_string()))
                    .map(|&i| &entities[i])
                else {
                    continue;
                };
                // An undefined model is said once, as such, not also as a mix.
                let Some(model) = exp
                    .block
                    .str("model")
                    .filter(|m| index.contains_key(&("model".to_string(), m.to_string())))
                else {
                    continue;
                };
                match first {
                    None => first = Some((ename, model)),
                    Some((fe, fm)) if fm != model => {
                        self.err(
                            "manifest::mixed-models",
                            f.loc.unwrap_or(pool.name_loc),
                            format!("pool \"{}\" mixes base models", pool.name),
                            format!("expert \"{ename}\" is on model \"{model}\""),
                            format!("expert \"{fe}\" is on model \"{fm}\"; all experts of a pool must share one base model"),
                        );
                    }
                    _ => {}
                }
            }
        }
    }

    /// References between entities must form a DAG (e.g. a model pretrained on a
    /// dataset that is tokenized by that same model would never be buildable).
    fn check_cycles(&mut self, entities: &[Entity]) {
        let index: HashMap<(&str, &str), usize> = entities
            .iter()
            .enumerate()
            .map(|(i, e)| ((e.kind.as_str(), e.name.as_str()), i))
            .collect();
        let mut edges: Vec<Vec<(usize, Loc)>> = vec![vec![]; entities.len()];
        for (i, e) in entities.iter().enumerate() {
            let spec = self.schema.node(&e.kind).expect("validated kind");
            let mut refs = vec![];
            collect_refs(self.schema, &e.block, spec, &mut refs);
            for (kind, name, loc) in refs {
                if let Some(&j) = index.get(&(kind.as_str(), name.as_str())) {
                    edges[i].push((j, loc));
                }
            }
        }
        // Iterative DFS with colours; report each cycle once, at the edge closing it.
        let mut colour = vec![0u8; entities.len()];
        let mut reported = BTreeSet::new();
        for start in 0..entities.len() {
            if colour[start] != 0 {
                continue;
            }
            let mut stack = vec![(start, 0usize)];
            let mut path = vec![start];
            colour[start] = 1;
            while let Some((node, next)) = stack.pop() {
                if next < edges[node].len() {
                    stack.push((node, next + 1));
                    let (to, loc) = edges[node][next];
                    match colour[to] {
                        0 => {
                            colour[to] = 1;
                            path.push(to);
                            stack.push((to, 0));
                        }
                        1 => {
                            let pos = path.iter().position(|&p| p == to).unwrap_or(0);
                            let cycle: Vec<usize> = path[pos..].to_vec();
                            let mut key = cycle.clone();
                            key.sort();
                            if reported.insert(key) {
                                let desc = cycle
                                    .iter()
                                    .chain(std::iter::once(&to))
                                    .map(|&c| format!("{} \"{}\"", entities[c].kind, entities[c].name))
                                    .collect::<Vec<_>>()
                                    .join(" -> ");
                                self.err(
                                    "manifest::cycle",
                                    loc,
                                    format!("reference cycle: {desc}"),
                                    "this reference closes the cycle",
                                    "a step cannot depend on its own output; break the cycle",
                                );
                            }
                        }
                        _ => {}
                    }
                } else {
                    colour[node] = 2;
                    path.pop();
                }
            }
        }
    }
}

/// The (kind, name) pairs an entity refers to (its `model=`, `pool=`, a pool's
/// experts, a study's evals, ...).
pub fn references(entity: &Entity) -> Vec<(String, String)> {
    let schema = Schema::embedded();
    let mut refs = vec![];
    if let Some(spec) = schema.node(&entity.kind) {
        collect_refs(schema, &entity.block, spec, &mut refs);
    }
    refs.into_iter().map(|(kind, name, _)| (kind, name)).collect()
}

/// Every reference-typed value in a block (recursively): (kind, name, where).
fn collect_refs(schema: &Schema, block: &Block, spec: &BlockSpec, out: &mut Vec<(String, String, Loc)>) {
    for p in &spec.props {
        if let (Type::Ref(kind), Some(f)) = (&p.ty, block.props.get(&p.name))
            && let (Value::Str(name), Some(loc)) = (&f.value, f.loc)
        {
            out.push((kind.clone(), name.clone(), loc));
        }
    }
    for c in &spec.children {
        match (&c.kind, block.children.get(&c.name)) {
            (ChildKind::List(l), Some(Child::List(items))) => {
                if let Type::Ref(kind) = &l.ty {
                    for f in items {
                        if let (Value::Str(name), Some(loc)) = (&f.value, f.loc) {
                            out.push((kind.clone(), name.clone(), loc));
                        }
                    }
                }
            }
            (_, Some(Child::Group(b))) => {
                if let Some(inner) = schema.child_block(c) {
                    collect_refs(schema, b, inner, out);
                }
            }
            (_, Some(Child::Records(rs))) => {
                if let Some(inner) = schema.child_block(c) {
                    for r in rs {
                        collect_refs(schema, r, inner, out);
                    }
                }
            }
            _ => {}
        }
    }
}

/// The `defaults` node's groups, each filled with the schema's defaults.
fn default_groups(schema: &Schema, defaults: Option<&Block>) -> BTreeMap<String, Block> {
    let spec = schema.node("defaults").expect("schema has defaults");
    let loc = defaults
        .map(|d| d.loc)
        .unwrap_or(Loc::new(0, SourceSpan::from(0..0)));
    let mut block = empty_group("defaults", loc);
    // `fill` inherits from `defaults` into the groups of a block, then the schema.
    fill(schema, &mut block, spec, defaults, &mut GroupTemplates::default());
    Arc::unwrap_or_clone(block.children)
        .into_iter()
        .filter_map(|(name, child)| match child {
            Child::Group(g) => Some((name, g)),
            _ => None,
        })
        .collect()
}

/// Fills every group a node accepts: first from `defaults`, then from the schema.
fn apply_defaults(
    schema: &Schema,
    block: &mut Block,
    defaults: Option<&Block>,
    templates: &mut GroupTemplates,
) {
    let name = block.name.clone();
    if let Some(spec) = schema.node(&name) {
        fill(schema, block, spec, defaults, templates);
    }
}

/// The filled-in form of each group a node leaves unwritten, made once per manifest
/// and shared by every such node: its content depends only on the schema and on the
/// `defaults` group it inherits, if any (keyed by group name and that group's address).
#[derive(Default)]
struct GroupTemplates(HashMap<(String, Option<usize>), Block>);

fn fill(
    schema: &Schema,
    block: &mut Block,
    spec: &BlockSpec,
    defaults: Option<&Block>,
    templates: &mut GroupTemplates,
) {
    let missing = spec
        .props
        .iter()
        .any(|p| p.default.is_some() && !block.props.contains_key(&p.name));
    if missing {
        let props = Arc::make_mut(&mut block.props);
        for p in &spec.props {
            if !props.contains_key(&p.name)
                && let Some(d) = &p.default
            {
                props.insert(
                    p.name.clone(),
                    Field {
                        value: d.clone(),
                        loc: None,
                        origin: Origin::Schema,
                    },
                );
            }
        }
    }
    for c in &spec.children {
        match &c.kind {
            ChildKind::Group(gname) => {
                let gspec = schema.group(gname).expect("schema checked");
                let inherited = defaults.and_then(|d| d.group(&c.name));
                if !block.children.contains_key(&c.name) {
                    // Unwritten: the shared template, which differs from a written
                    // group filled the same way only in where it points (the node).
                    let from = inherited.map(|b| b as *const Block as usize);
                    let template = templates.0.entry((gname.clone(), from)).or_insert_with(|| {
                        let mut g = empty_group(gname, block.loc);
                        inherit(&mut g, inherited);
                        fill(schema, &mut g, gspec, None, &mut GroupTemplates::default());
                        g
                    });
                    let group = Block {
                        loc: block.loc,
                        ..template.clone()
                    };
                    Arc::make_mut(&mut block.children).insert(c.name.clone(), Child::Group(group));
                    continue;
                }
                if let Some(Child::Group(g)) = Arc::make_mut(&mut block.children).get_mut(&c.name) {
                    inherit(g, inherited);
                    fill(schema, g, gspec, None, templates);
                }
            }
            ChildKind::List(l) => {
                if !block.children.contains_key(&c.name)
                    && let Some(d) = &l.default
                {
                    Arc::make_mut(&mut block.children).insert(
                        c.name.clone(),
                        Child::List(
                            d.iter()
                                .map(|v| Field {
                                    value: v.clone(),
                                    loc: None,
                                    origin: Origin::Schema,
                                })
                                .collect(),
                        ),
                    );
                }
            }
            ChildKind::Block(inner) => {
                if !block.children.contains_key(&c.name) {
                    continue;
                }
                match Arc::make_mut(&mut block.children).get_mut(&c.name) {
                    Some(Child::Records(rs)) => {
                        for r in rs {
                            fill(schema, r, inner, None, templates);
                        }
                    }
                    Some(Child::Group(g)) => fill(schema, g, inner, None, templates),
                    _ => {}
                }
            }
        }
    }
}

/// A block with nothing in it yet (a group to fill, the `defaults` node's stand-in).
fn empty_group(name: &str, loc: Loc) -> Block {
    Block {
        name: name.to_string(),
        loc,
        arg: None,
        props: Default::default(),
        children: Default::default(),
    }
}

/// What the `defaults` node sets in a group, under what the node itself writes.
fn inherit(group: &mut Block, inherited: Option<&Block>) {
    let Some(inh) = inherited else {
        return;
    };
    let props = Arc::make_mut(&mut group.props);
    for (k, f) in inh.props.iter() {
        props.entry(k.clone()).or_insert_with(|| Field {
            origin: Origin::Defaults,
            ..f.clone()
        });
    }
    let children = Arc::make_mut(&mut group.children);
    for (k, ch) in inh.children.iter() {
        children.entry(k.clone()).or_insert_with(|| inherited_child(ch));
    }
}

/// A child of a `defaults` group as a node inherits it: every value in it marked as
/// from `defaults` (`explain` said "set at" the defaults' line, as if written on the
/// node, for `lora { targets ... }`).
fn inherited_child(ch: &Child) -> Child {
    let mark = |f: &Field| Field {
        origin: Origin::Defaults,
        ..f.clone()
    };
    match ch {
        Child::List(items) => Child::List(items.iter().map(mark).collect()),
        Child::Group(g) => Child::Group(inherited_block(g)),
        Child::Records(rs) => Child::Records(rs.iter().map(inherited_block).collect()),
    }
}

fn inherited_block(b: &Block) -> Block {
    let mut b = b.clone();
    for f in Arc::make_mut(&mut b.props).values_mut() {
        f.origin = Origin::Defaults;
    }
    for ch in Arc::make_mut(&mut b.children).values_mut() {
        *ch = inherited_child(ch);
    }
    b
}

/// Why `name` cannot be used as a name (every name may end up as a file or folder
/// name), or None when it can.
fn unfit_name(name: &str) -> Option<&'static str> {
    if name.contains(['/', '\\']) {
        Some("contains a path separator")
    } else if name.contains(':') {
        // Step ids are KIND:NAME: `dataset "expert:x"` would be `dataset:expert:x`,
        // and `expert:x` on a command line would find it where no expert x exists.
        Some("contains `:`, which separates a step's kind from its name")
    } else if name.chars().any(char::is_control) {
        Some("contains a control character")
    } else if name.trim().is_empty() {
        Some("is blank")
    } else if name.trim() != name {
        // `expert "sort "` beside `expert "sort"`: two steps that read as one.
        Some("starts or ends with white space")
    } else if name
        .chars()
        .any(|c| matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}'))
    {
        // Shown reordered on a terminal: the name read is not the name written.
        Some("contains a bidirectional text control character")
    } else if name.starts_with('.') {
        Some("starts with `.`")
    } else if name.len() > 200 {
        Some("is longer than 200 bytes")
    } else {
        None
    }
}

/// The KDL parser sometimes reports a span from the start of the document to the
/// offending token; point at the last token of such a span, where the problem is.
fn narrow_span(text: &str, span: SourceSpan) -> SourceSpan {
    let start = span.offset().min(text.len());
    let end = (start + span.len()).min(text.len());
    let covered = &text[start..end];
    if !covered.trim_end().contains('\n') {
        return span;
    }
    let trimmed = covered.trim_end();
    let tok_start = trimmed.rfind(char::is_whitespace).map(|i| i + 1).unwrap_or(0);
    SourceSpan::from(start + tok_start..start + trimmed.len())
}

/// The span of an entry's value alone (for `key=value`, the part after `=`), so labels
/// point at what is wrong rather than at the key.
fn value_loc(sources: &Sources, file: FileId, entry: &KdlEntry) -> Loc {
    let span = entry.span();
    let loc = Loc::new(file, span);
    let text = sources.snippet(loc);
    match text.find('=') {
        Some(eq) if entry.name().is_some() => {
            let start = span.offset() + eq + 1;
            let trimmed = text[eq + 1..].trim_end();
            let lead = trimmed.len() - trimmed.trim_start().len();
            Loc::new(file, SourceSpan::from(start + lead..start + trimmed.len()))
        }
        _ => loc,
    }
}

/// Lexical normalization (no filesystem access): resolves `.` and `..` so an include
/// that escapes the project is caught even when the target does not exist.
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}
