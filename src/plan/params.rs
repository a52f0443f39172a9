//! Canonical step parameters from validated manifest blocks.
//!
//! Labels (names) and references never enter parameters: references become inputs
//! (keyed by their own content keys) and local paths become externals (keyed by their
//! bytes). Sets are sorted, repeated records are keyed by their name, so node order and
//! formatting never change a key.

use std::collections::BTreeMap;

use crate::manifest::schema::{BlockSpec, ChildKind, Schema, Type};
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
    let mut keyed = BTreeMap::new();
    let mut settings = BTreeMap::new();
    walk(
        schema,
        block,
        spec,
        "",
        spec.keyed,
        only,
        &mut keyed,
        &mut settings,
        &mut c,
    );
    c.keyed = keyed;
    c.settings = settings;
    c
}

#[allow(clippy::too_many_arguments)]
fn walk(
    schema: &Schema,
    block: &Block,
    spec: &BlockSpec,
    prefix: &str,
    keyed_here: bool,
    only: Option<&[&str]>,
    keyed: &mut BTreeMap<String, Value>,
    settings: &mut BTreeMap<String, Value>,
    c: &mut Collected,
) {
    let allowed = |n: &str| only.is_none_or(|o| o.contains(&n));
    let join = |n: &str| {
        if prefix.is_empty() {
            n.to_string()
        } else {
            format!("{prefix}.{n}")
        }
    };
    for p in &spec.props {
        if !allowed(&p.name) {
            continue;
        }
        let Some(f) = block.props.get(&p.name) else {
            continue;
        };
        let path = join(&p.name);
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
                    });
                }
            }
            Type::Name => {}
            _ => {
                c.origins.insert(path.clone(), (f.origin, f.loc));
                let target = if keyed_here { &mut *keyed } else { &mut *settings };
                target.insert(p.name.clone(), f.value.clone());
            }
        }
    }
    for ch in &spec.children {
        if !allowed(&ch.name) {
            continue;
        }
        let path = join(&ch.name);
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
                let target = if keyed_here { &mut *keyed } else { &mut *settings };
                target.insert(ch.name.clone(), Value::List(vals));
            }
            (_, Some(Child::Group(g))) => {
                let Some(inner) = schema.child_block(ch) else {
                    continue;
                };
                let k = keyed_here && inner.keyed;
                let mut sub_k = BTreeMap::new();
                let mut sub_s = BTreeMap::new();
                walk(schema, g, inner, &path, k, None, &mut sub_k, &mut sub_s, c);
                if !sub_k.is_empty() {
                    keyed.insert(ch.name.clone(), Value::Map(sub_k));
                }
                if !sub_s.is_empty() {
                    settings.insert(ch.name.clone(), Value::Map(sub_s));
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
                    let mut sub_k = BTreeMap::new();
                    let mut sub_s = BTreeMap::new();
                    walk(
                        schema, r, inner, &rpath, keyed_here, None, &mut sub_k, &mut sub_s, c,
                    );
                    by_name_k.insert(rname.clone(), Value::Map(sub_k));
                    if !sub_s.is_empty() {
                        by_name_s.insert(rname, Value::Map(sub_s));
                    }
                }
                keyed.insert(ch.name.clone(), Value::Map(by_name_k));
                if !by_name_s.is_empty() {
                    settings.insert(ch.name.clone(), Value::Map(by_name_s));
                }
            }
            _ => {}
        }
    }
}
