//! Canonical step parameters from validated manifest blocks.
//!
//! Labels (names) and references never enter parameters: references become inputs
//! (keyed by their own content keys) and local paths become externals (keyed by their
//! bytes). Sets are sorted, repeated records are keyed by their name, so node order and
//! formatting never change a key.

use std::collections::BTreeMap;

use crate::manifest::schema::{BlockSpec, ChildKind, PathRule, Schema, Type};
use crate::manifest::{Block, Child, Loc, Origin, Value};

/// A reference found while collecting params: `path` is where it sits in the block.
#[derive(Debug, Clone)]
pub struct RefUse {
    pub path: String,
    pub kind: String,
    pub name: String,
    pub loc: Option<Loc>,
}

/// A local path found while collecting params.
#[derive(Debug, Clone)]
pub struct PathUse {
    pub path: String,
    pub value: String,
    pub loc: Option<Loc>,
    /// What the schema says it must name.
    pub rule: PathRule,
}

#[derive(Debug, Clone, Default)]
pub struct Collected {
    pub keyed: BTreeMap<String, Value>,
    pub settings: BTreeMap<String, Value>,
    pub refs: Vec<RefUse>,
    pub paths: Vec<PathUse>,
    /// param path -> where its value came from (for `explain`).
    pub origins: BTreeMap<String, (Origin, Option<Loc>)>,
}

/// Collects the params of `block` (spec `spec`); `only` limits to these props/children.
pub fn collect(schema: &Schema, block: &Block, spec: &BlockSpec, only: Option<&[&str]>) -> Collected {
    let mut c = Collected::default();
    let mut maps = Maps::default();
    let at = Place {
        prefix: "",
        keyed: spec.keyed,
    };
    walk(schema, block, spec, at, only, &mut maps, &mut c);
    c.keyed = maps.keyed;
    c.settings = maps.settings;
    c
}

/// The values of one block: those that enter the key and those that do not.
#[derive(Default)]
struct Maps {
    keyed: BTreeMap<String, Value>,
    settings: BTreeMap<String, Value>,
}

impl Maps {
    /// Where a value goes: the key's map where its block is keyed.
    fn target(&mut self, keyed: bool) -> &mut BTreeMap<String, Value> {
        if keyed {
            &mut self.keyed
        } else {
            &mut self.settings
        }
    }
}

/// Where the walk is: the parameter path so far, and whether values here are keyed.
#[derive(Clone, Copy)]
struct Place<'a> {
    prefix: &'a str,
    keyed: bool,
}

impl Place<'_> {
    /// The parameter path of `name` here.
    fn join(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }
}

/// Whether `only` (a top-level filter; None below it) lets `name` through.
fn allowed(only: Option<&[&str]>, name: &str) -> bool {
    only.is_none_or(|o| o.contains(&name))
}

/// The values of `block` (spec `spec`) at `at`: its props, then its children
/// (groups and records recursively).
fn walk(
    schema: &Schema,
    block: &Block,
    spec: &BlockSpec,
    at: Place<'_>,
    only: Option<&[&str]>,
    out: &mut Maps,
    c: &mut Collected,
) {
    walk_props(block, spec, at, only, out, c);
    walk_children(schema, block, spec, at, only, out, c);
}

/// Props: references and paths are collected apart, labels dropped, values kept.
fn walk_props(
    block: &Block,
    spec: &BlockSpec,
    at: Place<'_>,
    only: Option<&[&str]>,
    out: &mut Maps,
    c: &mut Collected,
) {
    for p in &spec.props {
        if !allowed(only, &p.name) {
            continue;
        }
        let Some(f) = block.props.get(&p.name) else {
            continue;
        };
        let path = at.join(&p.name);
        match &p.ty {
            Type::Ref(kind) => {
                if let Value::Str(name) = &f.value {
                    c.refs.push(RefUse {
                        path,
                        kind: kind.clone(),
                        name: name.clone(),
                        loc: f.loc,
                    });
                }
            }
            Type::Path => {
                if let Value::Str(v) = &f.value {
                    c.paths.push(PathUse {
                        path,
                        value: v.clone(),
                        loc: f.loc,
                        rule: p.path_rule.clone(),
                    });
                }
            }
            Type::Name => {}
            // A keyless default stays out of the key, written or filled in alike.
            _ if p.keyless_default && p.default.as_ref() == Some(&f.value) => {}
            // Unkeyed: the key takes the default (the schema requires one), the step
            // the value, through its settings (when it is another).
            _ if !p.keyed => {
                c.origins.insert(path.clone(), (f.origin, f.loc));
                if let Some(d) = &p.default {
                    out.target(at.keyed).insert(p.name.clone(), d.clone());
                    if *d != f.value {
                        out.settings.insert(p.name.clone(), f.value.clone());
                    }
                }
            }
            _ => {
                c.origins.insert(path.clone(), (f.origin, f.loc));
                out.target(at.keyed).insert(p.name.clone(), f.value.clone());
            }
        }
    }
}

/// Children: lists (references collected, sets sorted), groups and named records.
fn walk_children(
    schema: &Schema,
    block: &Block,
    spec: &BlockSpec,
    at: Place<'_>,
    only: Option<&[&str]>,
    out: &mut Maps,
    c: &mut Collected,
) {
    for ch in &spec.children {
        if !allowed(only, &ch.name) {
            continue;
        }
        let path = at.join(&ch.name);
        match (&ch.kind, block.children.get(&ch.name)) {
            (ChildKind::List(l), Some(Child::List(items))) => {
                if let Type::Ref(kind) = &l.ty {
                    for f in items {
                        if let Value::Str(name) = &f.value {
                            c.refs.push(RefUse {
                                path: path.clone(),
                                kind: kind.clone(),
                                name: name.clone(),
                                loc: f.loc,
                            });
                        }
                    }
                    continue;
                }
                let mut vals: Vec<Value> = items.iter().map(|f| f.value.clone()).collect();
                if !l.ordered {
                    vals.sort_by_key(|a| a.canonical());
                }
                let origin = items
                    .first()
                    .map(|f| (f.origin, f.loc))
                    .unwrap_or((Origin::Schema, None));
                c.origins.insert(path.clone(), origin);
                out.target(at.keyed).insert(ch.name.clone(), Value::List(vals));
            }
            (_, Some(Child::Group(g))) => {
                let Some(inner) = schema.child_block(ch) else {
                    continue;
                };
                let at = Place {
                    prefix: &path,
                    keyed: at.keyed && inner.keyed,
                };
                let mut sub = Maps::default();
                walk(schema, g, inner, at, None, &mut sub, c);
                if !sub.keyed.is_empty() {
                    out.keyed.insert(ch.name.clone(), Value::Map(sub.keyed));
                }
                if !sub.settings.is_empty() {
                    out.settings.insert(ch.name.clone(), Value::Map(sub.settings));
                }
            }
            (_, Some(Child::Records(rs))) => {
                let Some(inner) = schema.child_block(ch) else {
                    continue;
                };
                let mut by_name_k = BTreeMap::new();
                let mut by_name_s = BTreeMap::new();
                for (i, r) in rs.iter().enumerate() {
                    let rname = r
                        .arg
                        .as_ref()
                        .and_then(|a| a.value.as_str().map(str::to_string))
                        .unwrap_or_else(|| i.to_string());
                    let rpath = format!("{path}.{rname}");
                    let at = Place {
                        prefix: &rpath,
                        keyed: at.keyed,
                    };
                    let mut sub = Maps::default();
                    walk(schema, r, inner, at, None, &mut sub, c);
                    by_name_k.insert(rname.clone(), Value::Map(sub.keyed));
                    if !sub.settings.is_empty() {
                        by_name_s.insert(rname, Value::Map(sub.settings));
                    }
                }
                out.keyed.insert(ch.name.clone(), Value::Map(by_name_k));
                if !by_name_s.is_empty() {
                    out.settings.insert(ch.name.clone(), Value::Map(by_name_s));
                }
            }
            _ => {}
        }
    }
}
