//! The manifest schema, read from `schemas/manifest.kdl` (embedded at build time).
//!
//! The validator is driven entirely by this data: node kinds, their properties, types,
//! ranges, defaults and docs. A unit test checks that the embedded file parses, so a
//! broken schema never ships.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use kdl::{KdlDocument, KdlNode, KdlValue};

use super::value::Value;

/// The schema text exactly as shipped; `goosepipe schema` prints it.
pub const SCHEMA_TEXT: &str = include_str!("../../schemas/manifest.kdl");

#[derive(Debug, Clone, PartialEq)]
pub enum Type {
    Str,
    Int,
    Float,
    Bool,
    Path,
    Name,
    Enum(Vec<String>),
    Ref(String),
}

impl Type {
    pub fn describe(&self) -> String {
        match self {
            Type::Str => "a string".into(),
            Type::Int => "an integer".into(),
            Type::Float => "a number".into(),
            Type::Bool => "#true or #false".into(),
            Type::Path => "a path string".into(),
            Type::Name => "a name string".into(),
            Type::Enum(v) => format!("one of {}", quote_list(v)),
            Type::Ref(kind) => format!("the name of a {kind}"),
        }
    }
}

pub fn quote_list(v: &[String]) -> String {
    v.iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, Clone)]
pub struct PropSpec {
    pub name: String,
    pub ty: Type,
    pub default: Option<Value>,
    pub required: bool,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// An exclusive lower bound (`above=0.0`: any positive value), for settings that
    /// divide by themselves.
    pub above: Option<f64>,
    pub doc: String,
    /// The default is left out of content keys (`keyless-default=#true`): a setting
    /// added after keys were published, whose default is the behaviour from before,
    /// so adding it invalidates no artifact. The step's typed struct defaults the
    /// absent value to the same (a test keeps the two equal).
    pub keyless_default: bool,
    /// Whether the value enters content keys. A prop with `keyed=#false` changes how a
    /// step runs, never what it publishes (how often a resumable checkpoint is
    /// written): the key takes its default whatever is written, so keys published
    /// before it was unkeyed stand, and the written value travels in the step's
    /// settings (`StepSpec::settings`), which its parameters are read through.
    pub keyed: bool,
    /// What a `path` must name, checked when the plan reads it.
    pub path_rule: PathRule,
}

/// What a `path` prop must name (`is="file"` or `is="folder"`; `extensions="jsonl
/// parquet"`): checked when the plan hashes it, so a wrong kind of path is said by
/// `check`, at the manifest's line, not by the step that reads it after the steps
/// before it have run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PathRule {
    pub is: Option<PathIs>,
    /// File name endings accepted (without the dot); empty: any.
    pub extensions: Vec<String>,
    /// Files a folder must hold: each entry is one file, or alternatives (`a|b`), any
    /// one of which will do. Found at check, not when the step that reads it fails.
    pub holds: Vec<Vec<String>>,
    /// The files of a folder that enter its key (`keys="config.json *.safetensors
    /// */task.json"`: names relative to the folder, `*` any run of characters within
    /// one name); empty: every file. What the step reads, so a README, a `.git` or a
    /// training log beside it changes no key.
    pub keys: Vec<String>,
}

/// `pattern` (where `*` is any run of characters) against the whole of `name`,
/// ignoring ASCII case: on a case-insensitive file system a `Config.json` is what a
/// loader opening `config.json` reads, so it must be keyed (keying a file on Linux
/// that is not read costs nothing).
fn glob_matches(pattern: &str, name: &str) -> bool {
    let (pattern, name) = (pattern.to_ascii_lowercase(), name.to_ascii_lowercase());
    let name = name.as_str();
    let mut pieces = pattern.split('*');
    let first = pieces.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let pieces: Vec<&str> = pieces.collect();
    let Some((last, middle)) = pieces.split_last() else {
        return rest.is_empty();
    };
    for piece in middle {
        match rest.find(piece) {
            Some(i) => rest = &rest[i + piece.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PathIs {
    File,
    Folder,
}

impl PathRule {
    fn parse(node: &KdlNode) -> Result<PathRule, String> {
        let is = match str_prop(node, "is").as_deref() {
            None => None,
            Some("file") => Some(PathIs::File),
            Some("folder") => Some(PathIs::Folder),
            Some(other) => return Err(format!("is=\"{other}\": a path is a \"file\" or a \"folder\"")),
        };
        let extensions = str_prop(node, "extensions")
            .map(|e| e.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        let holds = str_prop(node, "holds")
            .map(|h| {
                h.split_whitespace()
                    .map(|alts| alts.split('|').map(str::to_string).collect())
                    .collect()
            })
            .unwrap_or_default();
        let keys: Vec<String> = str_prop(node, "keys")
            .map(|k| k.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        if let Some(bad) = keys.iter().find(|k| {
            k.split('/')
                .any(|part| part.is_empty() || part == "." || part == "..")
        }) {
            return Err(format!("keys: `{bad}` is not a file name inside the folder"));
        }
        Ok(PathRule {
            is,
            extensions,
            holds,
            keys,
        })
    }

    /// Whether the entry at `rel` (relative to the folder; a folder when `is_dir`)
    /// is keyed: a file matching one of `keys`, or a folder that may hold one.
    pub fn keys_entry(&self, rel: &std::path::Path, is_dir: bool) -> bool {
        if self.keys.is_empty() {
            return true;
        }
        let parts: Vec<&str> = rel.iter().filter_map(|p| p.to_str()).collect();
        if parts.len() != rel.iter().count() {
            return false;
        }
        self.keys.iter().any(|k| {
            let pattern: Vec<&str> = k.split('/').collect();
            let fits = |n: usize| parts.iter().zip(&pattern[..n]).all(|(p, g)| glob_matches(g, p));
            if is_dir {
                pattern.len() > parts.len() && fits(parts.len())
            } else {
                pattern.len() == parts.len() && fits(parts.len())
            }
        })
    }

    /// Why `path` (which exists, a folder when `is_dir`) is not what the rule asks
    /// for, if it is not.
    pub fn violation(&self, path: &std::path::Path, is_dir: bool) -> Option<String> {
        match self.is {
            Some(PathIs::File) if is_dir => {
                return Some(match self.ending_list().as_str() {
                    "" => "it is a folder; expected a file".to_string(),
                    endings => format!("it is a folder; expected a{endings} file"),
                });
            }
            Some(PathIs::Folder) if !is_dir => return Some("it is a file; expected a folder".into()),
            _ => {}
        }
        // Every file it lacks at once: one fixed, the next found at the next check.
        let missing: Vec<&Vec<String>> = if is_dir {
            self.holds
                .iter()
                .filter(|alts| !alts.iter().any(|f| path.join(f).is_file()))
                .collect()
        } else {
            vec![]
        };
        if !missing.is_empty() {
            // One there under the name, but not a file (a folder of that name).
            if let Some(odd) = missing
                .iter()
                .flat_map(|m| m.iter())
                .find(|f| path.join(f).exists())
            {
                return Some(format!("its {odd} is not a file"));
            }
            let said: Vec<String> = missing
                .iter()
                .map(|alts| match alts.split_last() {
                    Some((last, rest)) if !rest.is_empty() => {
                        format!("none of {} or {last}", rest.join(", "))
                    }
                    _ => format!("no {}", alts.join("")),
                })
                .collect();
            return Some(format!("it holds {}", said.join(", and ")));
        }
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !is_dir && !self.extensions.is_empty() && !self.extensions.iter().any(|x| x == ext) {
            return Some(format!(
                "not a type of file this reads; expected{}",
                self.ending_list()
            ));
        }
        None
    }

    /// " .a, .b or .c", or nothing when any ending is accepted.
    fn ending_list(&self) -> String {
        let dotted: Vec<String> = self.extensions.iter().map(|e| format!(".{e}")).collect();
        match dotted.split_last() {
            None => String::new(),
            Some((last, [])) => format!(" {last}"),
            Some((last, rest)) => format!(" {} or {last}", rest.join(", ")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ListSpec {
    pub ty: Type,
    pub min: usize,
    pub ordered: bool,
    pub default: Option<Vec<Value>>,
}

#[derive(Debug, Clone)]
pub enum ChildKind {
    /// A reusable group (settable in `defaults`).
    Group(String),
    /// A node whose arguments are a list of values.
    List(ListSpec),
    /// An inline block, possibly repeated.
    Block(Box<BlockSpec>),
}

#[derive(Debug, Clone)]
pub struct ChildSpec {
    pub name: String,
    pub kind: ChildKind,
    pub required: bool,
    pub repeat: bool,
    pub doc: String,
}

#[derive(Debug, Clone, Default)]
pub struct BlockSpec {
    pub name: String,
    pub doc: String,
    pub arg: Option<PropSpec>,
    pub props: Vec<PropSpec>,
    pub children: Vec<ChildSpec>,
    pub one_of: Vec<Vec<String>>,
    /// The first argument names an entity other nodes can refer to.
    pub named: bool,
    /// At most one such node per manifest.
    pub unique: bool,
    /// Whether the values enter content keys.
    pub keyed: bool,
}

impl BlockSpec {
    pub fn prop(&self, name: &str) -> Option<&PropSpec> {
        self.props.iter().find(|p| p.name == name)
    }
    pub fn child(&self, name: &str) -> Option<&ChildSpec> {
        self.children.iter().find(|c| c.name == name)
    }
}

#[derive(Debug, Clone)]
pub struct Schema {
    pub version: i64,
    pub nodes: Vec<BlockSpec>,
    pub groups: BTreeMap<String, BlockSpec>,
}

impl Schema {
    pub fn embedded() -> &'static Schema {
        static SCHEMA: OnceLock<Schema> = OnceLock::new();
        SCHEMA.get_or_init(|| {
            Schema::parse(SCHEMA_TEXT).unwrap_or_else(|e| panic!("embedded schema is invalid: {e}"))
        })
    }

    pub fn node(&self, name: &str) -> Option<&BlockSpec> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn group(&self, name: &str) -> Option<&BlockSpec> {
        self.groups.get(name)
    }

    /// The block spec a child resolves to (its group, or its inline block).
    pub fn child_block<'a>(&'a self, child: &'a ChildSpec) -> Option<&'a BlockSpec> {
        match &child.kind {
            ChildKind::Group(g) => self.groups.get(g),
            ChildKind::Block(b) => Some(b),
            ChildKind::List(_) => None,
        }
    }

    pub fn parse(text: &str) -> Result<Schema, String> {
        let doc: KdlDocument = text.parse().map_err(|e| format!("{e:?}"))?;
        let mut schema = Schema {
            version: 0,
            nodes: vec![],
            groups: BTreeMap::new(),
        };
        for node in doc.nodes() {
            match node.name().value() {
                "schema" => schema.version = int_prop(node, "version")?.ok_or("schema needs version=")?,
                "node" => schema.nodes.push(parse_block(node)?),
                "group" => {
                    let b = parse_block(node)?;
                    schema.groups.insert(b.name.clone(), b);
                }
                other => return Err(format!("unknown schema node {other}")),
            }
        }
        // Every group reference must resolve.
        let check = |b: &BlockSpec| -> Result<(), String> {
            for c in &b.children {
                if let ChildKind::Group(g) = &c.kind
                    && !schema.groups.contains_key(g)
                {
                    return Err(format!("{}: unknown group {g}", b.name));
                }
            }
            Ok(())
        };
        for n in &schema.nodes {
            check(n)?;
        }
        for g in schema.groups.values() {
            check(g)?;
        }
        Ok(schema)
    }
}

fn first_arg(node: &KdlNode) -> Result<String, String> {
    match node.get(0) {
        Some(KdlValue::String(s)) => Ok(s.clone()),
        _ => Err(format!("{} needs a string argument", node.name().value())),
    }
}

fn str_prop(node: &KdlNode, key: &str) -> Option<String> {
    match node.get(key) {
        Some(KdlValue::String(s)) => Some(s.clone()),
        _ => None,
    }
}

fn int_prop(node: &KdlNode, key: &str) -> Result<Option<i64>, String> {
    match node.get(key) {
        Some(KdlValue::Integer(i)) => Ok(Some(*i as i64)),
        None => Ok(None),
        Some(v) => Err(format!("{key} must be an integer, got {v}")),
    }
}

fn num_prop(node: &KdlNode, key: &str) -> Option<f64> {
    match node.get(key) {
        Some(KdlValue::Integer(i)) => Some(*i as f64),
        Some(KdlValue::Float(f)) => Some(*f),
        _ => None,
    }
}

fn bool_prop(node: &KdlNode, key: &str) -> bool {
    matches!(node.get(key), Some(KdlValue::Bool(true)))
}

fn doc_of(node: &KdlNode) -> String {
    node.children()
        .and_then(|c| c.get("doc"))
        .and_then(|d| d.get(0))
        .and_then(|v| v.as_string())
        .map(str::to_string)
        .or_else(|| str_prop(node, "doc"))
        .unwrap_or_default()
}

fn enum_values(node: &KdlNode) -> Vec<String> {
    node.children()
        .and_then(|c| c.get("values"))
        .map(|v| {
            v.entries()
                .iter()
                .filter(|e| e.name().is_none())
                .filter_map(|e| e.value().as_string().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn parse_type(node: &KdlNode) -> Result<Type, String> {
    let t = str_prop(node, "type")
        .ok_or_else(|| format!("{} needs type=", first_arg(node).unwrap_or_default()))?;
    Ok(match t.as_str() {
        "string" => Type::Str,
        "integer" => Type::Int,
        "float" => Type::Float,
        "boolean" => Type::Bool,
        "path" => Type::Path,
        "name" => Type::Name,
        "enum" => {
            let values = enum_values(node);
            if values.is_empty() {
                return Err(format!("enum {} has no values", first_arg(node)?));
            }
            Type::Enum(values)
        }
        r if r.starts_with("ref:") => Type::Ref(r[4..].to_string()),
        other => return Err(format!("unknown type {other}")),
    })
}

/// A schema default written as a KDL value, converted to the declared type.
pub fn schema_value(v: &KdlValue, ty: &Type) -> Option<Value> {
    Some(match (v, ty) {
        (KdlValue::Integer(i), Type::Float) => Value::Float(*i as f64),
        (KdlValue::Integer(i), _) => Value::Int(i64::try_from(*i).ok()?),
        (KdlValue::Float(f), _) => Value::Float(*f),
        (KdlValue::Bool(b), _) => Value::Bool(*b),
        (KdlValue::String(s), _) => Value::Str(s.clone()),
        (KdlValue::Null, _) => return None,
    })
}

fn parse_prop(node: &KdlNode) -> Result<PropSpec, String> {
    let name = first_arg(node)?;
    let ty = parse_type(node)?;
    let default = node.get("default").and_then(|d| schema_value(d, &ty));
    let keyless_default = bool_prop(node, "keyless-default");
    if keyless_default && default.is_none() {
        return Err(format!("{name}: keyless-default needs a default"));
    }
    let keyed = !matches!(node.get("keyed"), Some(KdlValue::Bool(false)));
    if !keyed && default.is_none() {
        return Err(format!(
            "{name}: keyed=#false needs a default (what the key takes)"
        ));
    }
    Ok(PropSpec {
        default,
        keyless_default,
        keyed,
        required: bool_prop(node, "required"),
        min: num_prop(node, "min"),
        max: num_prop(node, "max"),
        above: num_prop(node, "above"),
        path_rule: PathRule::parse(node).map_err(|e| format!("{name}: {e}"))?,
        doc: str_prop(node, "doc").unwrap_or_else(|| doc_of(node)),
        name,
        ty,
    })
}

fn parse_block(node: &KdlNode) -> Result<BlockSpec, String> {
    let mut b = BlockSpec {
        name: first_arg(node)?,
        doc: doc_of(node),
        named: bool_prop(node, "named"),
        unique: bool_prop(node, "unique"),
        keyed: !matches!(node.get("keyed"), Some(KdlValue::Bool(false))),
        ..Default::default()
    };
    let Some(children) = node.children() else {
        return Ok(b);
    };
    for c in children.nodes() {
        match c.name().value() {
            "doc" | "values" | "default" => {}
            "arg" => b.arg = Some(parse_prop(c)?),
            "prop" => b.props.push(parse_prop(c)?),
            "one-of" => b.one_of.push(
                c.entries()
                    .iter()
                    .filter_map(|e| e.value().as_string().map(str::to_string))
                    .collect(),
            ),
            "child" => b.children.push(parse_child(c)?),
            other => return Err(format!("{}: unknown schema entry {other}", b.name)),
        }
    }
    Ok(b)
}

fn parse_child(c: &KdlNode) -> Result<ChildSpec, String> {
    let name = first_arg(c)?;
    let kind = if let Some(g) = str_prop(c, "group") {
        ChildKind::Group(g)
    } else if bool_prop(c, "list") {
        let ty = parse_type(c)?;
        let default = c.children().and_then(|d| d.get("default")).map(|d| {
            d.entries()
                .iter()
                .filter_map(|e| schema_value(e.value(), &ty))
                .collect()
        });
        ChildKind::List(ListSpec {
            min: int_prop(c, "min")?.unwrap_or(0) as usize,
            ordered: bool_prop(c, "ordered"),
            default,
            ty,
        })
    } else {
        let mut inner = parse_block(c)?;
        inner.keyed = true;
        ChildKind::Block(Box::new(inner))
    };
    Ok(ChildSpec {
        doc: str_prop(c, "doc").unwrap_or_else(|| doc_of(c)),
        required: bool_prop(c, "required"),
        repeat: bool_prop(c, "repeat"),
        name,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_schema_parses_and_documents_everything() {
        let s = Schema::parse(SCHEMA_TEXT).unwrap();
        assert_eq!(s.version, 1);
        for kind in [
            "pipeline", "include", "model", "defaults", "dataset", "expert", "pool", "eval",
        ] {
            assert!(s.node(kind).is_some(), "schema lacks node {kind}");
        }
        let mut blocks: Vec<&BlockSpec> = s.nodes.iter().chain(s.groups.values()).collect();
        while let Some(b) = blocks.pop() {
            assert!(!b.doc.is_empty(), "{} has no doc", b.name);
            for p in b.props.iter().chain(b.arg.iter()) {
                assert!(!p.doc.is_empty(), "{}.{} has no doc", b.name, p.name);
            }
            for c in &b.children {
                if let ChildKind::Block(inner) = &c.kind {
                    blocks.push(inner);
                }
                if !matches!(c.kind, ChildKind::Group(_)) {
                    assert!(!c.doc.is_empty(), "{}.{} has no doc", b.name, c.name);
                }
            }
        }
    }

    #[test]
    fn a_folders_keys_cover_every_file_it_must_hold() {
        let s = Schema::parse(SCHEMA_TEXT).unwrap();
        let mut keyed = 0;
        for b in s.nodes.iter().chain(s.groups.values()) {
            for p in &b.props {
                let rule = &p.path_rule;
                if rule.keys.is_empty() {
                    continue;
                }
                keyed += 1;
                for file in rule.holds.iter().flatten() {
                    assert!(
                        rule.keys_entry(std::path::Path::new(file), false),
                        "{}.{}: holds {file} but leaves it out of the key",
                        b.name,
                        p.name
                    );
                }
            }
        }
        assert_eq!(keyed, 2, "model path= and expert peft= name their keyed files");
    }

    /// The unkeyed props are exactly the ones that change no output, each with the
    /// default its key takes; one without a default is a schema error.
    #[test]
    fn unkeyed_props_have_a_default_for_the_key() {
        let s = Schema::parse(SCHEMA_TEXT).unwrap();
        let mut unkeyed = vec![];
        for b in s.nodes.iter().chain(s.groups.values()) {
            for p in b.props.iter().filter(|p| !p.keyed) {
                assert!(p.default.is_some(), "{}.{}", b.name, p.name);
                unkeyed.push(format!("{}.{}", b.name, p.name));
            }
        }
        assert_eq!(unkeyed, ["train.checkpoint-every"]);
        let err = Schema::parse(
            "schema version=1\nnode \"x\" {\n    doc \"d\"\n    prop \"n\" type=\"integer\" keyed=#false doc=\"d\"\n}\n",
        )
        .unwrap_err();
        assert!(err.contains("n: keyed=#false needs a default"), "{err}");
    }

    #[test]
    fn keys_match_names_by_pattern_and_depth() {
        let rule = PathRule {
            keys: vec!["config.json".into(), "*.safetensors".into(), "*/task.json".into()],
            ..PathRule::default()
        };
        let file = |p: &str| rule.keys_entry(std::path::Path::new(p), false);
        let dir = |p: &str| rule.keys_entry(std::path::Path::new(p), true);
        assert!(file("config.json") && file("model-00001-of-00002.safetensors") && file(".safetensors"));
        assert!(file("sub/task.json") && dir("sub") && dir(".git"));
        assert!(!file("README.md") && !file("config.json.bak") && !file("a/config.json"));
        assert!(!file("task.json") && !file("a/b/task.json") && !dir("a/b"));
        assert!(!file("model.safetensors.index.json"));
        assert!(PathRule::default().keys_entry(std::path::Path::new("anything/at/all"), false));
        assert!(
            glob_matches("a*b*c", "aXbYc") && !glob_matches("a*b*c", "aXc") && !glob_matches("ab*b", "ab")
        );
        assert!(
            file("Config.JSON") && file("MODEL.SafeTensors"),
            "case-insensitive file systems"
        );
    }
}
