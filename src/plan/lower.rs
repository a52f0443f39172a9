//! Lowering: manifest entities -> steps.
//!
//! model M        -> model:M
//! dataset D      -> dataset:D
//! expert E       -> tokenize:D (model, dataset D), expert:E (model, data = tokenize:D)
//!                   and gate:E (model, expert, data = tokenize:D)
//! expert E peft=    -> expert:E (model; the adapter folder or hub repo as an external:
//!                   an import, not training) and gate:E as above
//! pool P         -> pool:P (expert:E and gate:E of every member)
//! eval V         -> eval:V (model, pool, task datasets, per-method baseline steps)
//!   average-activation -> average-activation:E per member (model, expert, data = tokenize:D)
//!   retrieval          -> retrieval-index:E per member (data)
//!   multitask          -> multitask:P (model, every member's tokenize:D)
//!
//! Per-expert steps (gate, average activation, retrieval index) depend only on that
//! expert, never on the pool, so growing a pool never rebuilds them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use petgraph::graph::DiGraph;
use rayon::prelude::*;

use super::params::{self, Collected};
use super::{Catalog, KnownOutputs, LocalPath, LocalPaths, MemberData, MethodInfo, Needed, Plan, Step, key};
use crate::manifest::diag::did_you_mean;
use crate::manifest::schema::{PathRule, Schema};
use crate::manifest::source::Sources;
use crate::manifest::{Entity, Loc, Manifest, ManifestError, ManifestErrors, Origin, Value};
use crate::store::spec::{member_role, step_id};
use crate::store::{External, HashCache, SpecInput, StepSpec};

#[derive(Debug, Clone, PartialEq)]
struct Proto {
    id: String,
    kind: String,
    name: String,
    params: BTreeMap<String, Value>,
    settings: BTreeMap<String, Value>,
    inputs: Vec<(String, String)>,
    externals: Vec<External>,
    loc: Option<Loc>,
    origins: BTreeMap<String, (Origin, Option<Loc>)>,
}

impl Proto {
    fn new(kind: &str, name: &str, loc: Option<Loc>) -> Proto {
        Proto {
            id: step_id(kind, name),
            kind: kind.into(),
            name: name.into(),
            params: BTreeMap::new(),
            settings: BTreeMap::new(),
            inputs: vec![],
            externals: vec![],
            loc,
            origins: BTreeMap::new(),
        }
    }

    fn absorb(&mut self, c: Collected) {
        self.params.extend(c.keyed);
        self.settings.extend(c.settings);
        self.origins.extend(c.origins);
    }

    /// Same ingredients (ignoring labels), so one step can serve several consumers.
    fn same_work(&self, other: &Proto) -> bool {
        self.kind == other.kind
            && self.params == other.params
            && self.inputs == other.inputs
            && self.externals == other.externals
    }
}

struct Lowerer<'a> {
    manifest: &'a Manifest,
    catalog: &'a dyn Catalog,
    schema: &'static Schema,
    hashes: &'a HashCache,
    protos: Vec<Proto>,
    ids: HashMap<String, usize>,
    errors: Vec<ManifestError>,
    warnings: Vec<ManifestError>,
}

/// Reads, validates and plans the manifest at `path`. Where validation finds errors,
/// lowering still checks the rest on what is valid, so that every error comes at once.
/// Left out are the errors that may only follow from validation's: one where
/// validation already pointed, and, unless it judges a value as written (a path, a
/// method name), one in a node that has validation errors or names a node that has,
/// or anywhere when the `pipeline` or `defaults` node has (a value validation refused
/// is planned with its default, and a misspelt pool member would make every user of
/// it "not in the pool").
pub fn load(
    path: &std::path::Path,
    catalog: &dyn Catalog,
    hashes: &HashCache,
) -> Result<Plan, ManifestErrors> {
    load_with(path, catalog, hashes, &KnownOutputs::none())
}

/// [`load`], keying the consumers of content-keyed steps (under early cutoff) on the
/// outputs `outputs` knows.
pub fn load_with(
    path: &std::path::Path,
    catalog: &dyn Catalog,
    hashes: &HashCache,
    outputs: &KnownOutputs,
) -> Result<Plan, ManifestErrors> {
    let (manifest, mut errors) = crate::manifest::validate::load_lenient(path)?;
    if errors.is_empty() {
        // The planner finds errors node kind by node kind; they are shown top to
        // bottom, as validation's are.
        let files = crate::manifest::validate::file_order(&manifest.sources);
        return build_with(manifest, catalog, hashes, outputs).map_err(|mut e| {
            crate::manifest::validate::sort_by_files(&mut e.errors, &files);
            e
        });
    }
    let more = lowering_errors(&manifest, catalog, hashes);
    let kept = independent_errors(&manifest, &errors, more);
    errors.extend(kept);
    crate::manifest::validate::sort_in_source_order(&mut errors, &manifest.sources);
    Err(ManifestErrors {
        file: manifest.display.clone(),
        errors,
    })
}

/// Codes of lowering errors that judge a value as the manifest writes it, whatever
/// else is wrong around it.
const VERBATIM: [&str; 5] = [
    "manifest::missing-file",
    "manifest::wrong-value",
    "manifest::wrong-path",
    "manifest::unknown-method",
    "plan::unknown-step-kind",
];

/// Codes of lowering errors about what the members of an eval's pool hold (their
/// datasets), not about the eval's own names: they follow from an error in any node
/// down the chain of names.
const THROUGH_MEMBERS: [&str; 1] = ["manifest::method-needs-data"];

/// Of lowering's errors `more`, those that cannot be consequences of validation's
/// `errors` (see [`load`]).
fn independent_errors(
    manifest: &Manifest,
    errors: &[ManifestError],
    more: Vec<ManifestError>,
) -> Vec<ManifestError> {
    let at = |e: &ManifestError| e.labels.first().map(|l| (e.src.name().to_string(), l.offset()));
    let inside = |loc: &Loc, (file, offset): &(String, usize)| {
        manifest.sources.get(loc.file).display == *file
            && (loc.span.offset()..loc.span.offset() + loc.span.len()).contains(offset)
    };
    let node_of = |place: &(String, usize)| manifest.entities.iter().position(|n| inside(&n.loc, place));
    let flagged: std::collections::HashSet<(String, usize)> = errors.iter().filter_map(at).collect();
    let settings_troubled = flagged
        .iter()
        .any(|place| manifest.settings_locs.iter().any(|l| inside(l, place)));
    let troubled: std::collections::HashSet<usize> = flagged.iter().filter_map(node_of).collect();
    // Each node -> the nodes it names.
    let named: Vec<Vec<usize>> = manifest
        .entities
        .iter()
        .map(|e| {
            crate::manifest::validate::references(e)
                .into_iter()
                .filter_map(|kind_name| manifest.index.get(&kind_name).copied())
                .collect()
        })
        .collect();
    // `set`, with the nodes that name one of it.
    let naming = |set: &std::collections::HashSet<usize>| -> std::collections::HashSet<usize> {
        (0..named.len())
            .filter(|n| set.contains(n) || named[*n].iter().any(|m| set.contains(m)))
            .collect()
    };
    // Nodes with errors, and the nodes that name one.
    let tainted = naming(&troubled);
    // The same through any chain of names, for the errors that read what the named
    // nodes name (an eval's pool's experts: a misspelt `dataset=` on one made the
    // eval's "one expert has no dataset" follow from it).
    let mut deep = tainted.clone();
    loop {
        let wider = naming(&deep);
        if wider.len() == deep.len() {
            break;
        }
        deep = wider;
    }
    more.into_iter()
        .filter(|e| {
            let Some(place) = at(e) else { return true };
            if flagged.contains(&place) {
                return false;
            }
            let taint = if THROUGH_MEMBERS.contains(&e.code) {
                &deep
            } else {
                &tainted
            };
            VERBATIM.contains(&e.code)
                || !(settings_troubled || node_of(&place).is_some_and(|n| taint.contains(&n)))
        })
        .collect()
}

/// Builds the plan: lowers entities to steps, hashes local inputs, computes keys.
/// Semantic errors (unknown method, unreadable data file, ...) come back as manifest
/// diagnostics, all at once.
pub fn build(manifest: Manifest, catalog: &dyn Catalog, hashes: &HashCache) -> Result<Plan, ManifestErrors> {
    build_with(manifest, catalog, hashes, &KnownOutputs::none())
}

/// [`build`], keying the consumers of content-keyed steps (under early cutoff) on the
/// outputs `outputs` knows.
pub fn build_with(
    manifest: Manifest,
    catalog: &dyn Catalog,
    hashes: &HashCache,
    outputs: &KnownOutputs,
) -> Result<Plan, ManifestErrors> {
    let mut l = Lowerer::new(&manifest, catalog, hashes);
    l.lower_all();
    if !l.errors.is_empty() {
        let errors = std::mem::take(&mut l.errors);
        return Err(ManifestErrors {
            file: manifest.display.clone(),
            errors,
        });
    }
    let protos = std::mem::take(&mut l.protos);
    let mut warnings = std::mem::take(&mut l.warnings);
    drop(l);
    if manifest.entities.is_empty() {
        warnings.push(
            ManifestError::new(
                &manifest.sources,
                "plan::empty",
                Loc::new(0, (0..0).into()),
                "the manifest defines no steps",
                "nothing here",
            )
            .help("a pipeline needs at least a model or a dataset; see pipelines/quickstart.kdl")
            .as_warning(),
        );
    }
    let mut plan = finish(manifest, protos, catalog, outputs)?;
    warnings.extend(same_pool_replicates(&plan));
    warnings.extend(unread_experts(&plan));
    warnings.extend(multitask_unlike_its_experts(&plan));
    plan.warnings = warnings;
    Ok(plan)
}

/// An expert that nothing reads but its own gate (in no pool) trains for nothing any
/// eval shows: most often a pool that was meant to list it. Said at its name, once
/// per expert.
fn unread_experts(plan: &Plan) -> Vec<ManifestError> {
    use crate::store::spec::step_id;
    let read: std::collections::HashSet<&str> = plan
        .steps
        .iter()
        .filter(|s| s.spec.kind != "gate")
        .flat_map(|s| s.spec.inputs.iter().map(|i| i.id.as_str()))
        .collect();
    let mut out = vec![];
    for s in plan.steps.iter().filter(|s| s.spec.kind == "expert") {
        let gate = step_id("gate", &s.spec.name);
        if read.contains(s.spec.id.as_str()) || read.contains(gate.as_str()) {
            continue;
        }
        let Some(e) = plan.manifest.entity("expert", &s.spec.name) else {
            continue;
        };
        out.push(
            ManifestError::new(
                &plan.manifest.sources,
                "plan::unread-expert",
                e.name_loc,
                format!(
                    "expert \"{}\" is in no pool: it trains, and no eval reads it",
                    s.spec.name
                ),
                "read by nothing",
            )
            .help("list it in a pool's `experts` (or remove it)")
            .as_warning(),
        );
    }
    out
}

/// The multitask baseline has no node of its own: its `lora` and `train` settings are
/// `defaults`' (else the schema's). Where its pool's experts set theirs on each expert
/// instead, it trained silently with other settings (1000 steps of 1024 at rank 16
/// beside experts of 4 steps at rank 2), and a comparison with it meant little. Said
/// at the eval's `methods` where every trained expert of the pool agrees on a setting
/// the baseline has otherwise (their seeds are theirs to differ in).
fn multitask_unlike_its_experts(plan: &Plan) -> Vec<ManifestError> {
    use crate::store::spec::{member_of, step_id};
    let mut out = vec![];
    for mt in plan.steps.iter().filter(|s| s.spec.kind == "multitask") {
        let Some(pool) = plan.get(&step_id("pool", &mt.spec.name)) else {
            continue;
        };
        let experts: Vec<&serde_json::Value> = pool
            .spec
            .inputs
            .iter()
            .filter(|i| member_of(&i.role, "expert").is_some())
            .filter_map(|i| plan.get(&i.id))
            .map(|e| &e.spec.params)
            .filter(|p| p.get("train").is_some())
            .collect();
        let Some(first) = experts.first() else { continue };
        let mut unlike = vec![];
        for group in ["train", "lora"] {
            let Some(theirs) = first.get(group).and_then(|g| g.as_object()) else {
                continue;
            };
            for (name, value) in theirs {
                if name == "seed" || experts.iter().any(|e| e[group].get(name) != Some(value)) {
                    continue;
                }
                let own = &mt.spec.params[group][name];
                if own != value {
                    unlike.push(format!("{group}.{name} {own} (theirs {value})"));
                }
            }
        }
        if unlike.is_empty() {
            continue;
        }
        // Said once per pool, at the first eval whose `methods` asks for it.
        let Some((eval, loc)) = plan
            .steps
            .iter()
            .filter(|s| s.spec.kind == "eval")
            .find_map(|ev| {
                ev.spec.inputs.iter().any(|i| i.id == mt.spec.id).then_some(())?;
                let e = plan.manifest.entity("eval", &ev.spec.name)?;
                let loc = e
                    .block
                    .list("methods")
                    .iter()
                    .find_map(|f| (f.value.as_str() == Some("multitask")).then_some(f.loc).flatten());
                Some((ev.spec.name.clone(), loc.unwrap_or(e.name_loc)))
            })
        else {
            continue;
        };
        let shown = crate::plan::listing::first_few(&unlike, 6);
        out.push(
            ManifestError::new(
                &plan.manifest.sources,
                "plan::multitask-unlike-experts",
                loc,
                format!(
                    "eval \"{eval}\": the multitask baseline of pool \"{}\" trains otherwise than its experts: {shown}",
                    mt.spec.name
                ),
                "trained with `defaults`' settings",
            )
            .help("the multitask baseline has no node of its own and takes `lora` and `train` from `defaults` (else the schema's): set what the experts share in `defaults { train ...; lora ... }` instead of on each expert")
            .as_warning(),
        );
    }
    out
}

/// A study's replicates are to differ in what training draws. Two whose evals score
/// one pool (every expert and gate one artifact: the seeds of `train` and `gate` were
/// left alike, or one eval is listed twice) add no training variation, and their
/// interval would look like one that has it: said at the study's `evals`.
fn same_pool_replicates(plan: &Plan) -> Vec<ManifestError> {
    use crate::store::spec::member_of;
    let mut out = vec![];
    for study in plan.steps.iter().filter(|s| s.spec.kind == "study") {
        // By the keys of the experts and gates an eval reads (a pool's key also holds
        // its members' names, which are no training).
        let mut by_pool: BTreeMap<Vec<crate::store::Key>, Vec<&str>> = BTreeMap::new();
        for input in &study.spec.inputs {
            let Some(name) = member_of(&input.role, "eval") else {
                continue;
            };
            let Some(ev) = plan.get(&input.id) else { continue };
            let mut trained: Vec<crate::store::Key> = ev
                .spec
                .inputs
                .iter()
                .filter(|i| member_of(&i.role, "expert").is_some() || member_of(&i.role, "gate").is_some())
                .map(|i| i.key)
                .collect();
            trained.sort();
            if !trained.is_empty() {
                by_pool.entry(trained).or_default().push(name);
            }
        }
        let alike: Vec<&Vec<&str>> = by_pool.values().filter(|evals| evals.len() > 1).collect();
        let Some(first) = alike.first() else { continue };
        let entity = plan.manifest.entity("study", &study.spec.name);
        let loc = entity
            .and_then(|e| e.block.list("evals").first().and_then(|f| f.loc))
            .or_else(|| entity.map(|e| e.name_loc));
        let Some(loc) = loc else { continue };
        let named = first
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", ");
        out.push(
            ManifestError::new(
                &plan.manifest.sources,
                "plan::same-replicates",
                loc,
                format!(
                    "study \"{}\": replicates {named} score one pool (the same experts and gates){}",
                    study.spec.name,
                    if alike.len() > 1 {
                        format!(", and {} more such group(s)", alike.len() - 1)
                    } else {
                        String::new()
                    }
                ),
                "no training variation between them",
            )
            .help("each replicate's pool needs its own experts: give them another `train seed=` and `gate seed=` (or list each eval once)")
            .as_warning(),
        );
    }
    out
}

/// The errors lowering finds in a manifest in which validation found errors already
/// (its nodes with errors kept, what was wrong left out), so that `check` says every
/// error at once. Nothing is built: the steps of such a manifest are never keyed.
pub fn lowering_errors(manifest: &Manifest, catalog: &dyn Catalog, hashes: &HashCache) -> Vec<ManifestError> {
    let mut l = Lowerer::new(manifest, catalog, hashes);
    l.lower_all();
    l.errors
}

impl<'a> Lowerer<'a> {
    fn new(manifest: &'a Manifest, catalog: &'a dyn Catalog, hashes: &'a HashCache) -> Lowerer<'a> {
        Lowerer {
            manifest,
            catalog,
            schema: Schema::embedded(),
            hashes,
            protos: vec![],
            ids: HashMap::new(),
            errors: vec![],
            warnings: vec![],
        }
    }

    /// Every entity to its steps, collecting errors and warnings.
    fn lower_all(&mut self) {
        // Collecting a node's parameters (schema walk, defaults, origins) is most of
        // lowering and independent per node: done for all nodes in parallel first.
        let (manifest, schema, catalog) = (self.manifest, self.schema, self.catalog);
        let mut pre: Vec<Vec<Collected>> = manifest
            .entities
            .par_iter()
            .map(|e| {
                let spec = |k: &str| schema.node(k).expect("validated kind");
                let c = |only: Option<&[&str]>| params::collect(schema, &e.block, spec(&e.kind), only);
                match e.kind.as_str() {
                    "model" | "dataset" => vec![c(None)],
                    // Popped from the back: the expert's groups first, then the gate's.
                    // A shipped gate is read, not trained: no gate settings.
                    "expert" if imported(&e.block) && ships_gate(&e.block) => {
                        vec![c(Some(&["resources"])), c(Some(&["peft", "resources"]))]
                    }
                    "expert" if imported(&e.block) => {
                        vec![c(Some(&["gate", "resources"])), c(Some(&["peft", "resources"]))]
                    }
                    "expert" => vec![
                        c(Some(&["gate", "resources"])),
                        c(Some(&["lora", "train", "resources"])),
                    ],
                    _ => vec![],
                }
            })
            .collect();
        for (e, pre) in manifest.entities.iter().zip(pre.iter_mut()) {
            match e.kind.as_str() {
                "model" => self.model(e, pre.pop().expect("collected")),
                "dataset" => self.dataset(e, pre.pop().expect("collected")),
                "expert" => {
                    let x = pre.pop().expect("collected");
                    self.expert(e, x, pre.pop().expect("collected"))
                }
                "pool" => self.pool(e),
                _ => {}
            }
        }
        for e in manifest.of_kind("eval") {
            self.eval(e);
        }
        for e in manifest.of_kind("study") {
            self.study(e);
        }
        for p in &self.protos {
            if catalog.version(&p.kind).is_none() {
                let loc = p.loc.unwrap_or(Loc::new(0, (0..0).into()));
                self.errors.push(
                    ManifestError::new(
                        &manifest.sources,
                        "plan::unknown-step-kind",
                        loc,
                        format!("this build of goosepipe has no step kind `{}`", p.kind),
                        "needs it",
                    )
                    .help("upgrade goosepipe, or remove the node"),
                );
            }
        }
    }
}

/// Whether an expert node imports an existing adapter instead of training one.
fn imported(block: &crate::manifest::Block) -> bool {
    block.props.contains_key("peft") || block.props.contains_key("peft-hub")
}

/// Whether an expert uses the gate its imported adapter ships (`peft-gate=#true`).
fn ships_gate(block: &crate::manifest::Block) -> bool {
    block.get("peft-gate").and_then(Value::as_bool) == Some(true)
}

/// What a level's steps are built from: the steps of earlier levels (their keys, and
/// under early cutoff what those wait for and whether readers key on their content),
/// and per proto (by index) whether its readers will key on its content.
struct Earlier<'a> {
    built: &'a [Option<Step>],
    /// Per proto, under early cutoff, the files left out of its content when its
    /// readers key on it (see `Catalog::content_keyed`).
    content: &'a [Option<&'static [&'static str]>],
    ids: &'a HashMap<String, usize>,
    versions: &'a HashMap<String, u32>,
    outputs: &'a KnownOutputs<'a>,
}

/// Step `i` from its proto, once its inputs (on earlier levels) are built.
fn build_step(i: usize, p: Proto, e: &Earlier) -> Step {
    let content_keyed = e.content[i];
    let mut waits_for: BTreeSet<String> = BTreeSet::new();
    let mut inputs: Vec<SpecInput> = p
        .inputs
        .into_iter()
        .map(|(role, id)| {
            let input = e.built[e.ids[id.as_str()]]
                .as_ref()
                .expect("inputs are on earlier levels");
            let key = input.spec.key;
            waits_for.extend(input.waits_for.iter().cloned());
            let digest = input.content_keyed.map(|leave_out| {
                e.outputs.content(&id, &key, leave_out).unwrap_or_else(|| {
                    waits_for.insert(id.clone());
                    format!("{}{}", crate::store::spec::PENDING_DIGEST, key.hex())
                })
            });
            SpecInput {
                role,
                id,
                key,
                digest,
            }
        })
        .collect();
    inputs.sort_by(|a, b| a.role.cmp(&b.role));
    let mut externals = p.externals;
    externals.sort_by(|a, b| a.role().cmp(b.role()));
    let version = e.versions[p.kind.as_str()];
    let params = Value::Map(p.params);
    let k = key::compute(&p.kind, version, &params, &externals, &inputs);
    Step {
        spec: StepSpec {
            key: k,
            id: p.id,
            kind: p.kind,
            name: p.name,
            version,
            params: params.to_json(),
            settings: Value::Map(p.settings).to_json(),
            inputs,
            externals,
        },
        loc: p.loc,
        origins: p.origins,
        waits_for: waits_for.into_iter().collect(),
        content_keyed,
        tables_file: None,
    }
}

fn finish(
    manifest: Manifest,
    protos: Vec<Proto>,
    catalog: &dyn Catalog,
    outputs: &KnownOutputs,
) -> Result<Plan, ManifestErrors> {
    let mut g: DiGraph<usize, ()> = DiGraph::new();
    let nodes: Vec<_> = (0..protos.len()).map(|i| g.add_node(i)).collect();
    let ids: HashMap<String, usize> = protos
        .iter()
        .enumerate()
        .map(|(i, p)| (p.id.clone(), i))
        .collect();
    for (i, p) in protos.iter().enumerate() {
        for (_, id) in &p.inputs {
            let j = ids[id.as_str()];
            g.add_edge(nodes[j], nodes[i], ());
        }
    }
    let order = match ordered_toposort(&g, &protos, catalog) {
        Some(o) => o,
        None => {
            // Unreachable for validated manifests (entity cycles are rejected there),
            // but a derived graph could still close a loop: report, never hang.
            let p = &protos[0];
            let loc = p.loc.unwrap_or(Loc::new(0, (0..0).into()));
            return Err(ManifestErrors {
                file: manifest.display.clone(),
                errors: vec![
                    ManifestError::new(
                        &manifest.sources,
                        "manifest::cycle",
                        loc,
                        "the steps of this manifest depend on each other in a cycle".to_string(),
                        "part of a cycle",
                    )
                    .help("break the cycle between these nodes"),
                ],
            });
        }
    };
    // Keys depend only on input keys: compute them level by level (a step's level is
    // one more than its deepest input's), each level in parallel; 10,000-expert plans
    // have a handful of levels of thousands of steps each.
    let versions: HashMap<&str, u32> = protos
        .iter()
        .map(|p| (p.kind.as_str(), catalog.version(&p.kind).expect("checked above")))
        .collect();
    let mut depth = vec![0usize; protos.len()];
    for &n in &order {
        let i = g[n];
        depth[i] = protos[i]
            .inputs
            .iter()
            .map(|(_, id)| depth[ids[id.as_str()]] + 1)
            .max()
            .unwrap_or(0);
    }
    let mut levels: Vec<Vec<usize>> = vec![vec![]; depth.iter().max().map_or(0, |d| d + 1)];
    for (i, d) in depth.iter().enumerate() {
        levels[*d].push(i);
    }
    let versions: HashMap<String, u32> = versions.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let content: Vec<Option<&'static [&'static str]>> = protos
        .iter()
        .map(|p| {
            if manifest.early_cutoff {
                catalog.content_keyed(&p.kind)
            } else {
                None
            }
        })
        .collect();
    let mut slots: Vec<Option<Proto>> = protos.into_iter().map(Some).collect();
    let mut built: Vec<Option<Step>> = (0..slots.len()).map(|_| None).collect();
    for level in levels {
        let items: Vec<(usize, Proto)> = level
            .iter()
            .map(|&i| (i, slots[i].take().expect("each proto is built once")))
            .collect();
        let done: Vec<(usize, Step)> = {
            let earlier = Earlier {
                built: &built,
                content: &content,
                ids: &ids,
                versions: &versions,
                outputs,
            };
            items
                .into_par_iter()
                .map(|(i, p)| (i, build_step(i, p, &earlier)))
                .collect()
        };
        for (i, step) in done {
            built[i] = Some(step);
        }
    }
    let mut steps = Vec::with_capacity(built.len());
    let mut index = HashMap::new();
    for n in order {
        let mut step = built[g[n]].take().expect("built above");
        step.tables_file = catalog.tables_file(&step.spec.kind);
        index.insert(step.spec.id.clone(), steps.len());
        steps.push(step);
    }
    let mut graph: DiGraph<usize, ()> = DiGraph::new();
    let nodes: Vec<_> = (0..steps.len()).map(|i| graph.add_node(i)).collect();
    for (i, s) in steps.iter().enumerate() {
        for inp in &s.spec.inputs {
            graph.add_edge(nodes[index[&inp.id]], nodes[i], ());
        }
    }
    Ok(Plan {
        manifest,
        steps,
        index,
        graph,
        nodes,
        warnings: vec![],
    })
}

/// Kahn's algorithm, always taking the ready step that reads best (kind, then name),
/// so plans print in a stable, pipeline-shaped order. None on a cycle.
fn ordered_toposort(
    g: &DiGraph<usize, ()>,
    protos: &[Proto],
    catalog: &dyn Catalog,
) -> Option<Vec<petgraph::graph::NodeIndex>> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut indeg: Vec<usize> = g
        .node_indices()
        .map(|n| g.neighbors_directed(n, petgraph::Direction::Incoming).count())
        .collect();
    let rank = |n: petgraph::graph::NodeIndex| {
        let p = &protos[g[n]];
        Reverse((
            catalog.order(&p.kind).unwrap_or(u32::MAX),
            p.name.clone(),
            p.id.clone(),
            n,
        ))
    };
    let mut heap: BinaryHeap<_> = g
        .node_indices()
        .filter(|n| indeg[n.index()] == 0)
        .map(rank)
        .collect();
    let mut out = Vec::with_capacity(protos.len());
    while let Some(Reverse((_, _, _, n))) = heap.pop() {
        out.push(n);
        for m in g.neighbors_directed(n, petgraph::Direction::Outgoing) {
            indeg[m.index()] -= 1;
            if indeg[m.index()] == 0 {
                heap.push(rank(m));
            }
        }
    }
    (out.len() == protos.len()).then_some(out)
}

impl Lowerer<'_> {
    /// An error placed at `loc`, with a label there and a help line (the twin of
    /// [`warn`](Self::warn)).
    fn error(
        &mut self,
        code: &'static str,
        loc: Loc,
        message: impl Into<String>,
        label: impl Into<String>,
        help: impl Into<String>,
    ) {
        let e = ManifestError::new(&self.manifest.sources, code, loc, message, label).help(help);
        self.errors.push(e);
    }

    /// A LoRA rank above the width of a model the pipeline builds (`init d-model=`):
    /// every adapted linear has d_model on one side, so the update's rank is at most
    /// that; the rest is parameters and memory for nothing. (A hub or folder model's
    /// width is not known before it is read.) Said once where the rank is written.
    fn rank_above_width(&mut self, e: &Entity) {
        let Some(lora) = e.block.group("lora") else {
            return;
        };
        let Some(rank) = lora.get("rank").and_then(Value::as_int) else {
            return;
        };
        let model = e.block.str("model").unwrap_or_default();
        let width = self
            .manifest
            .entities
            .iter()
            .find(|m| m.kind == "model" && m.name == model)
            .and_then(|m| m.block.group("init"))
            .and_then(|i| i.get("d-model"))
            .and_then(Value::as_int);
        let Some(width) = width.filter(|w| rank > *w) else {
            return;
        };
        let loc = lora.props.get("rank").and_then(|f| f.loc).unwrap_or(e.name_loc);
        let message = format!("lora rank={rank} is above the d-model ({width}) of model \"{model}\"");
        if self.warnings.iter().any(|w| w.message == message) {
            return;
        }
        self.warn(
            "plan::rank-above-width",
            loc,
            message,
            "more than the model's width",
            "an adapted linear's update has rank at most min(d_in, d_out), and every one has d_model on a side: a higher rank only adds parameters; the paper's is 16",
        );
    }

    /// A warning at `loc`: reported with the plan, it stops nothing.
    fn warn(&mut self, code: &'static str, loc: Loc, message: String, label: &str, help: &str) {
        let w = ManifestError::new(&self.manifest.sources, code, loc, message, label)
            .help(help)
            .as_warning();
        self.warnings.push(w);
    }

    fn push(&mut self, mut p: Proto, disambiguator: &str) -> String {
        if let Some(&i) = self.ids.get(&p.id) {
            if self.protos[i].same_work(&p) {
                return p.id;
            }
            // Same step name, different work (e.g. two evals asking for different
            // example counts): keep both, told apart by the node that asked.
            let base = format!("{}@{disambiguator}", p.id);
            p.id = base.clone();
            let mut n = 2;
            while let Some(&j) = self.ids.get(&p.id) {
                if self.protos[j].same_work(&p) {
                    return p.id;
                }
                p.id = format!("{base}{n}");
                n += 1;
            }
        }
        let id = p.id.clone();
        self.ids.insert(id.clone(), self.protos.len());
        self.protos.push(p);
        id
    }

    fn file_dir(&self, loc: Option<Loc>) -> PathBuf {
        match loc {
            Some(l) => self
                .manifest
                .sources
                .get(l.file)
                .path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| self.manifest.root.clone()),
            None => self.manifest.root.clone(),
        }
    }

    /// Turns the local paths of a block into hashed externals.
    fn paths(&mut self, p: &mut Proto, c: &Collected) {
        for u in &c.paths {
            let abs = self.file_dir(u.loc).join(&u.value);
            let abs = crate::manifest::validate::normalize(&abs);
            let loc = u.loc.or(p.loc).unwrap_or(Loc::new(0, (0..0).into()));
            if let Some(why) = self.escapes(&abs) {
                self.errors
                    .push(escape_error(&self.manifest.sources, loc, &u.path, &u.value, why));
                continue;
            }
            // Special files and missing paths are said by the hashing below.
            let plain = std::fs::metadata(&abs).ok().filter(|m| m.is_file() || m.is_dir());
            if let Some(why) = plain.and_then(|m| u.rule.violation(&abs, m.is_dir())) {
                self.error(
                    "manifest::wrong-path",
                    loc,
                    format!("{} \"{}\": {why}", u.path, u.value),
                    "not what this setting reads",
                    format!("`goosepipe schema` says what `{}` reads", u.path),
                );
                continue;
            }
            match self
                .hashes
                .path_selected(&abs, &|rel, is_dir| u.rule.keys_entry(rel, is_dir))
            {
                Ok(h) => {
                    let display = abs
                        .strip_prefix(&self.manifest.root)
                        .map(|r| r.display().to_string())
                        .unwrap_or_else(|_| abs.display().to_string());
                    p.externals.push(External::Path {
                        role: u.path.clone(),
                        path: abs.display().to_string(),
                        display,
                        blake3: h.hash.to_hex().to_string(),
                        files: h.files,
                    });
                }
                Err(e) => {
                    let (msg, label) = if e.kind() == std::io::ErrorKind::NotFound {
                        (
                            format!("{} \"{}\" does not exist", u.path, u.value),
                            "no such file or folder".to_string(),
                        )
                    } else {
                        (
                            format!("cannot read {} \"{}\": {e}", u.path, u.value),
                            "unreadable".to_string(),
                        )
                    };
                    self.error(
                        "manifest::missing-file",
                        loc,
                        msg,
                        label,
                        format!(
                            "paths are relative to the file that names them; looked for {}",
                            abs.strip_prefix(&self.manifest.root).unwrap_or(&abs).display()
                        ),
                    );
                }
            }
        }
    }

    /// The catalog's findings about a node's step, placed at the fields they name.
    fn review(&mut self, e: &Entity, p: &Proto) {
        // Settings outside the key (resources) are reviewed too: a time limit sbatch
        // cannot read is a manifest error, whatever the key.
        // Merged deep: an unkeyed prop's value (`train.checkpoint-every`) replaces the
        // default its group's keyed params hold, and the rest of the group stays.
        fn merge(into: &mut BTreeMap<String, Value>, from: &BTreeMap<String, Value>) {
            for (k, v) in from {
                match (into.get_mut(k), v) {
                    (Some(Value::Map(a)), Value::Map(b)) => merge(a, b),
                    _ => {
                        into.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        let mut all = p.params.clone();
        merge(&mut all, &p.settings);
        let params = Value::Map(all).to_json();
        let paths: LocalPaths = p
            .externals
            .iter()
            .filter_map(|x| match x {
                External::Path {
                    role, path, display, ..
                } => Some((
                    role.clone(),
                    LocalPath {
                        abs: PathBuf::from(path),
                        display: display.clone(),
                    },
                )),
                External::Hub { .. } => None,
            })
            .collect();
        for r in self.catalog.review(&p.kind, &e.name, &params, &paths) {
            let placed = field_loc(&e.block, &r.at);
            let loc = placed.unwrap_or(e.name_loc);
            let d = ManifestError::new(&self.manifest.sources, r.code, loc, r.message, r.label).help(r.help);
            // Inherited (from `defaults`): said once, not for every step it reaches.
            let same = |x: &ManifestError| {
                x.code == d.code
                    && x.message == d.message
                    && (placed.is_none()
                        || x.labels.first().map(|l| l.offset()) == d.labels.first().map(|l| l.offset()))
            };
            if !r.warning && self.errors.iter().any(same) {
                continue;
            }
            if r.warning {
                // A setting in `defaults` reaches every expert: said once, where it is
                // (by code and message: a schema default has no field to point at, and
                // each step would be placed at its own node).
                let d = d.as_warning();
                let said = |w: &ManifestError| w.code == d.code && w.message == d.message;
                if !self.warnings.iter().any(said) {
                    self.warnings.push(d);
                }
            } else {
                self.errors.push(d);
            }
        }
    }

    /// Why a local path may not be read (it leaves the project folder, as written or
    /// through a symlink, and the manifest did not allow that), or None.
    fn escapes(&self, abs: &Path) -> Option<&'static str> {
        if self.manifest.allow_outside_paths {
            return None;
        }
        let root = &self.manifest.root;
        if !abs.starts_with(root) {
            return Some("it is outside the project folder");
        }
        match std::fs::canonicalize(abs) {
            Ok(real) if !real.starts_with(root) => {
                Some("it leads outside the project folder through a symlink")
            }
            _ => None,
        }
    }

    fn collect(&self, e: &Entity, only: Option<&[&str]>) -> Collected {
        let spec = self.schema.node(&e.kind).expect("validated kind");
        params::collect(self.schema, &e.block, spec, only)
    }

    /// The hub repo the node's `prop` names (at its `revision`, default main), as an
    /// external of that role.
    fn hub(&self, e: &Entity, prop: &str, repo_type: &str, p: &mut Proto) {
        if let Some(repo) = e.block.str(prop) {
            p.externals.push(External::Hub {
                role: prop.into(),
                repo_type: repo_type.into(),
                repo: repo.into(),
                revision: e.block.str("revision").unwrap_or("main").into(),
            });
        }
    }

    fn model(&mut self, e: &Entity, c: Collected) {
        let mut p = Proto::new("model", &e.name, Some(e.name_loc));
        self.paths(&mut p, &c);
        for r in &c.refs {
            // init.corpus -> the corpus dataset
            p.inputs.push((r.path.clone(), step_id(&r.kind, &r.name)));
        }
        self.hub(e, "hub", "model", &mut p);
        // A revision of nothing from the hub: in the key, read by nothing (every step
        // after the model rebuilt for it), as an expert's without peft-hub= is refused.
        if e.block.props.get("hub").is_none() {
            self.revision_without_hub(
                e,
                format!("model \"{}\" sets revision= but reads nothing from the hub", e.name),
                "only with hub=",
                "revision= picks the commit of a hub= model; a local folder (path=) or a model the pipeline builds (init) has none: remove it",
            );
        }
        p.absorb(c);
        self.review(e, &p);
        self.push(p, &e.name);
    }

    /// A `revision=` written on `e`, which reads nothing from the hub: in the key and
    /// read by nothing, so refused at the setting (a model without hub=, a trained
    /// expert).
    fn revision_without_hub(&mut self, e: &Entity, message: String, label: &str, help: &str) {
        if let Some(f) = e
            .block
            .props
            .get("revision")
            .filter(|f| f.origin != Origin::Schema)
        {
            let loc = f.loc.unwrap_or(e.name_loc);
            self.error("manifest::revision-without-hub", loc, message, label, help);
        }
    }

    fn dataset(&mut self, e: &Entity, c: Collected) {
        let mut p = Proto::new("dataset", &e.name, Some(e.name_loc));
        self.paths(&mut p, &c);
        for r in &c.refs {
            p.inputs.push((r.path.clone(), step_id(&r.kind, &r.name)));
        }
        self.hub(e, "hub", "dataset", &mut p);
        // Validating on the training file itself picks the checkpoint that fits its
        // training data best, which is no validation at all.
        let local = |role: &str| {
            p.externals.iter().find_map(|x| match x {
                External::Path { role: r, path, .. } if r == role => Some(path.clone()),
                _ => None,
            })
        };
        if let (Some(train), Some(valid)) = (local("path"), local("validation-path"))
            && train == valid
            && let Some(f) = e.block.props.get("validation-path")
        {
            self.warn(
                "plan::validation-is-training",
                f.loc.unwrap_or(e.name_loc),
                format!("dataset \"{}\" validates on its training file", e.name),
                "the same file as path=",
                "give a file of held-back examples, or leave validation-path out (training then holds back 10% of path= for validation)",
            );
        }
        // A setting its source does not read (a split of a local file, a field
        // mapping on a synthetic task) would change the key and nothing else.
        if let Some(source) = dataset_source(&e.block) {
            use super::dataset_sources::{FIELD_MAPPING, Source};
            // (setting, why it is not read, help)
            let mut unread: Vec<(&str, String, &str)> = source
                .unread()
                .into_iter()
                .map(|setting| (setting, source.phrase(), source.why_unread()))
                .collect();
            // With validation of its own nothing is held back, so how is moot. (Only
            // the sources with rows have their own; the others were said above.)
            let own = match source {
                Source::Path => Some("validation-path"),
                Source::Hub => Some("validation-split"),
                _ => None,
            };
            if let Some(own) = own
                && written(&e.block, own).is_some()
            {
                unread.push((
                    "holdout",
                    format!("has validation examples of its own ({own}=)"),
                    "holdout= says how validation is held back from the examples when the dataset has none of its own; remove it, or remove the validation to hold some back",
                ));
            }
            // Templates make each example from a row themselves: the field mapping
            // (of a source with rows, again) is not read.
            if own.is_some() && written(&e.block, "templates").is_some() {
                unread.extend(FIELD_MAPPING.map(|setting| {
                    (
                        setting,
                        "renders its rows with templates".to_string(),
                        "a template writes each example's input, target and answer choices from the row; the field mapping is for rows without templates",
                    )
                }));
            }
            for (setting, why, help) in unread {
                if let Some(loc) = written(&e.block, setting) {
                    self.warn(
                        "plan::ignored-settings",
                        loc.unwrap_or(e.name_loc),
                        format!("dataset \"{}\" {why}: `{setting}` is not used", e.name),
                        "ignored",
                        help,
                    );
                }
            }
        }
        // A TSV file's rows depend on the reader: the first one merged rows after a
        // stray leading quote. Its version is an ingredient of a TSV dataset's key
        // alone, so such datasets are read again and no other key changes.
        let tsv = ["path", "validation-path"]
            .iter()
            .any(|r| local(r).is_some_and(|f| f.to_ascii_lowercase().ends_with(".tsv")));
        if tsv {
            p.params.insert("tsv-reader".into(), Value::Int(2));
        }
        // A file's reader is chosen by its extension, not its bytes: the same bytes
        // saved as .jsonl and as .csv are two datasets, and must be two keys (one
        // store held the other's examples under the first's key). A CSV, Parquet or
        // Arrow file's format is an ingredient; JSON Lines (by far the most common)
        // and TSV (keyed by its reader's version above) keep the keys they had.
        for role in ["path", "validation-path"] {
            let format = local(role).and_then(|f| {
                let ext = Path::new(&f).extension()?.to_str()?.to_ascii_lowercase();
                ["csv", "parquet", "arrow"].contains(&ext.as_str()).then_some(ext)
            });
            if let Some(format) = format {
                p.params.insert(format!("{role}-format"), Value::Str(format));
            }
        }
        if let Some(f) = e.block.props.get("validation-path")
            && !e.block.props.contains_key("path")
        {
            self.error("manifest::validation-path-alone", f.loc.unwrap_or(e.name_loc), format!("dataset \"{}\" sets validation-path without path=", e.name), "only with a local file", "validation-path= is the validation file of a local path= dataset; a hub dataset names its validation split with validation-split=");
        }
        // One without the other filters every row out, or none: said at check, not
        // by the run ("no row has FIELD in []") after the data of every other step.
        let keep_field = e
            .block
            .props
            .get("keep-field")
            .filter(|f| f.origin != Origin::Schema);
        let keep_values = e.block.children.contains_key("keep-values");
        if keep_field.is_some() != keep_values {
            let (message, help) = if keep_values {
                (
                    format!("dataset \"{}\" lists keep-values without keep-field", e.name),
                    "add keep-field=\"FIELD\": the field whose values are kept",
                )
            } else {
                (
                    format!("dataset \"{}\" sets keep-field without keep-values", e.name),
                    "add `keep-values \"A\" \"B\"` inside the node: the values of the field that are kept",
                )
            };
            // Underlined where the half that is written stands (the list's first value).
            let written = keep_field.or_else(|| e.block.list("keep-values").first());
            let loc = written.and_then(|f| f.loc).unwrap_or(e.name_loc);
            self.error(
                "manifest::keep-field-alone",
                loc,
                message,
                "half of a row filter",
                help,
            );
        }
        p.absorb(c);
        self.review(e, &p);
        self.push(p, &e.name);
    }

    /// `cx`: the expert's groups (lora, train, resources; or peft, resources for an
    /// imported adapter); `cg`: the gate's.
    fn expert(&mut self, e: &Entity, cx: Collected, cg: Collected) {
        let model = step_id("model", e.block.str("model").unwrap_or_default());
        let mut x = Proto::new("expert", &e.name, Some(e.name_loc));
        let shipped_gate = imported(&e.block) && ships_gate(&e.block);
        if ships_gate(&e.block) && !imported(&e.block) {
            let loc = e
                .block
                .props
                .get("peft-gate")
                .and_then(|f| f.loc)
                .unwrap_or(e.name_loc);
            self.error("manifest::peft-gate-without-import", loc, format!("expert \"{}\" sets peft-gate but imports no adapter", e.name), "only with peft= or peft-hub=", "a trained expert's gate is trained after it; remove peft-gate, or import the adapter with peft=\"DIR\"");
        }
        let data = match e.block.str("dataset") {
            Some(d) => Some(self.tokens(d, e.block.str("model").unwrap_or_default())),
            None if shipped_gate => None,
            None => {
                self.error("manifest::missing-property", e.name_loc, format!("expert \"{}\" has no dataset=", e.name), "needs its training data", "add dataset=\"NAME\" (the expert trains on it, and its gate after it); an imported adapter that ships its gate needs none with peft-gate=#true");
                return;
            }
        };
        if imported(&e.block) {
            self.import_source(e, &cx, &mut x);
            x.absorb(cx);
            // The adapter's files (or hub commit) and the base are all it depends on.
            x.params.insert("import".into(), Value::Str("peft".into()));
            x.inputs = vec![("model".into(), model.clone())];
        } else {
            self.revision_without_hub(
                e,
                format!(
                    "expert \"{}\" sets revision= but imports nothing from the hub",
                    e.name
                ),
                "only with peft-hub=",
                "add peft-hub=\"org/name\" to import a PEFT adapter, or remove revision=",
            );
            x.absorb(cx);
            let data = data.clone().expect("a trained expert has its data");
            x.inputs = vec![("model".into(), model.clone()), ("data".into(), data)];
            self.review(e, &x);
            self.rank_above_width(e);
        }
        // Read from the same adapter as the expert: its content (or hub commit).
        let adapter = x.externals.clone();
        let expert_id = self.push(x, &e.name);
        let mut g = Proto::new("gate", &e.name, Some(e.name_loc));
        g.absorb(cg);
        g.inputs = vec![("model".into(), model), ("expert".into(), expert_id)];
        match data {
            Some(data) if !shipped_gate => {
                g.inputs.push(("data".into(), data));
                self.review(e, &g);
            }
            _ => {
                g.params.insert("import".into(), Value::Str("peft".into()));
                g.externals = adapter;
                self.review(e, &g);
                self.warn_unused_group(
                    e,
                    "gate",
                    "uses its adapter's gate",
                    "a shipped gate is read, not trained; remove the group, or remove peft-gate to train a gate on the expert's dataset",
                );
            }
        }
        self.push(g, &e.name);
    }

    /// Warns about a `group` of settings written on expert `e` itself (not inherited
    /// from `defaults`) that its steps do not use, saying why (`because`).
    fn warn_unused_group(&mut self, e: &Entity, group: &str, because: &str, help: &str) {
        if let Some(b) = e.block.group(group)
            && b.props.values().any(|f| f.origin == Origin::Explicit)
        {
            self.warn(
                "plan::ignored-settings",
                b.loc,
                format!(
                    "expert \"{}\" {because}: its `{group}` settings are not used",
                    e.name
                ),
                "ignored",
                help,
            );
        }
    }

    /// An imported expert's source: the hashed folder (`peft=`) or the hub repo
    /// (`peft-hub=`), exactly one; `lora`/`train` settings written on it are ignored,
    /// which the user is told.
    fn import_source(&mut self, e: &Entity, cx: &Collected, x: &mut Proto) {
        let (local, hub) = (e.block.props.get("peft"), e.block.props.get("peft-hub"));
        if let (Some(_), Some(h)) = (local, hub) {
            self.error(
                "manifest::two-sources",
                h.loc.unwrap_or(e.name_loc),
                format!("expert \"{}\" names both peft= and peft-hub=", e.name),
                "a second source",
                "an imported expert comes from one adapter: keep one of them",
            );
            return;
        }
        self.paths(x, cx);
        self.hub(e, "peft-hub", "peft", x);
        for group in ["lora", "train"] {
            self.warn_unused_group(
                e,
                group,
                "is imported",
                "an imported adapter is not trained; remove the group, or remove peft= to train the expert",
            );
        }
    }

    /// The sentence embedder of the retrieval method as a keyed external: a local
    /// folder (relative to the manifest) by content, else a hub repo whose commit the
    /// lockfile pins. Its name alone would let a changed folder or a moved branch
    /// reuse stale libraries.
    fn embedder(&mut self, spec: &str, loc: Option<Loc>) -> Option<External> {
        if spec.is_empty() {
            return None;
        }
        let local = self.manifest.root.join(spec);
        let looks_local = spec.starts_with('.') || spec.starts_with('/') || local.is_dir();
        if !looks_local {
            return Some(External::Hub {
                role: "embedder".into(),
                repo_type: "model".into(),
                repo: spec.into(),
                revision: "main".into(),
            });
        }
        let abs = crate::manifest::validate::normalize(&local);
        if let Some(why) = self.escapes(&abs) {
            let loc = loc.unwrap_or(Loc::new(0, (0..0).into()));
            self.errors.push(escape_error(
                &self.manifest.sources,
                loc,
                "routing.embedder",
                spec,
                why,
            ));
            return None;
        }
        let rule = embedder_files();
        match self
            .hashes
            .path_selected(&abs, &|rel, is_dir| rule.keys_entry(rel, is_dir))
        {
            Ok(h) => Some(External::Path {
                role: "embedder".into(),
                path: abs.display().to_string(),
                display: spec.into(),
                blake3: h.hash.to_hex().to_string(),
                files: h.files,
            }),
            Err(e) => {
                let loc = loc.unwrap_or(Loc::new(0, (0..0).into()));
                self.error(
                    "manifest::missing-file",
                    loc,
                    format!("the retrieval embedder folder \"{spec}\" cannot be read: {e}"),
                    "embedder",
                    "routing.embedder is a hub id (org/name) or a folder relative to the manifest",
                );
                None
            }
        }
    }

    /// The `tokenize` step of (dataset, model): one per pair, shared by every trainer.
    fn tokens(&mut self, dataset: &str, model: &str) -> String {
        let loc = self.manifest.entity("dataset", dataset).map(|d| d.name_loc);
        let mut t = Proto::new("tokenize", dataset, loc);
        t.inputs = vec![
            ("model".into(), step_id("model", model)),
            ("data".into(), step_id("dataset", dataset)),
        ];
        self.push(t, model)
    }

    fn pool(&mut self, e: &Entity) {
        // Members may differ in LoRA rank: a pool pads each module's experts to the
        // largest rank exactly (`model::adapter::pool`), as for imported adapters.
        let mut p = Proto::new("pool", &e.name, Some(e.name_loc));
        let mut members: Vec<String> = e
            .block
            .list("experts")
            .iter()
            .filter_map(|f| f.value.as_str().map(str::to_string))
            .collect();
        members.sort();
        for m in &members {
            p.inputs.push((member_role("expert", m), step_id("expert", m)));
            p.inputs.push((member_role("gate", m), step_id("gate", m)));
        }
        // Member names label routing decisions and reports, so they are part of the
        // pool's identity; their order is not.
        p.params.insert(
            "members".into(),
            Value::List(members.into_iter().map(Value::Str).collect()),
        );
        self.push(p, &e.name);
    }
}

impl Lowerer<'_> {
    /// A task scored by rank classification on synthetic data generated without
    /// answer choices fails only when the eval runs, after every expert and gate has
    /// trained: said at check, where the manifest already shows it.
    /// `max-new-tokens` on a rank-classification task: nothing is generated, yet the
    /// setting is an ingredient of the eval's key (changing it re-scores). Said.
    fn generation_settings_on_ranked_tasks(&mut self, e: &Entity) {
        for t in e.block.records("task") {
            let Some(f) = t
                .props
                .get("max-new-tokens")
                .filter(|f| f.origin == Origin::Explicit)
            else {
                continue;
            };
            if t.str("metric") == Some("rank-classification") {
                let name = t.arg.as_ref().and_then(|a| a.value.as_str()).unwrap_or_default();
                self.warn(
                    "plan::ignored-settings",
                    f.loc.unwrap_or(e.name_loc),
                    format!("task \"{name}\" is scored by rank classification: `max-new-tokens` is not used"),
                    "ignored",
                    "nothing is generated when answer choices are ranked; remove it (changing it still re-scores the task), or set metric=\"exact-match\"",
                );
            }
        }
    }

    /// Two tasks of one eval that score the same thing (one dataset, one metric, and
    /// for generation one length limit) under two names: the eval scores it twice and
    /// the mean over tasks counts it twice. Said at the second one.
    fn duplicate_tasks(&mut self, e: &Entity) {
        let mut seen: HashMap<(&str, &str, Option<i64>), &str> = HashMap::new();
        for t in e.block.records("task") {
            let (Some(data), Some(metric)) = (t.str("dataset"), t.str("metric")) else {
                continue;
            };
            let name = t.arg.as_ref().and_then(|a| a.value.as_str()).unwrap_or_default();
            let limit = (metric != "rank-classification")
                .then(|| t.get("max-new-tokens").and_then(Value::as_int))
                .flatten();
            let Some(first) = seen.get(&(data, metric, limit)).copied() else {
                seen.insert((data, metric, limit), name);
                continue;
            };
            let loc = t.arg.as_ref().and_then(|a| a.loc).unwrap_or(e.name_loc);
            let (limit, or) = match limit {
                Some(n) => (format!(", max-new-tokens {n}"), ", metric or max-new-tokens"),
                None => (String::new(), " or metric"),
            };
            self.warn(
                "plan::duplicate-task",
                loc,
                format!("task \"{name}\" of eval \"{}\" scores what task \"{first}\" scores (dataset \"{data}\", {metric}{limit})", e.name),
                "scored twice",
                &format!("the mean over tasks counts it twice; remove one, or give it another dataset{or}"),
            );
        }
    }

    fn choice_tasks_have_choices(&mut self, e: &Entity) {
        for t in e.block.records("task") {
            let (Some(metric), Some(data)) = (t.str("metric"), t.str("dataset")) else {
                continue;
            };
            let generated = self
                .manifest
                .entity("dataset", data)
                .and_then(|d| d.block.group("synthetic"))
                // The group is there, defaults filled in, on every dataset: only one
                // that names a task generates data.
                .filter(|g| g.str("task").is_some())
                .and_then(|g| g.str("format"));
            if metric != "rank-classification" || generated != Some("generation") {
                continue;
            }
            let loc = t
                .props
                .get("metric")
                .and_then(|f| f.loc)
                .or(t.props.get("dataset").and_then(|f| f.loc));
            let name = t.arg.as_ref().and_then(|f| f.value.as_str()).unwrap_or_default();
            self.error("manifest::no-choices-to-rank", loc.unwrap_or(e.name_loc), format!(
                        "task \"{name}\" of eval \"{}\" is scored by rank classification, but dataset \"{data}\" is synthetic generation data: it has no answer choices to rank",
                        e.name
                    ), "needs answer choices", format!(
                    "set format=\"choice\" in dataset \"{data}\"'s synthetic group, or metric=\"exact-match\" on the task"
                ));
        }
    }
}

/// The experts of a pool, sorted by name.
fn members_of<'m>(manifest: &'m Manifest, pool: &str) -> Vec<&'m Entity> {
    {
        let Some(p) = manifest.entity("pool", pool) else {
            return vec![];
        };
        let mut out: Vec<&Entity> = p
            .block
            .list("experts")
            .iter()
            .filter_map(|f| f.value.as_str())
            .filter_map(|n| manifest.entity("expert", n))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

impl Lowerer<'_> {
    /// A study reads its evals' per-example scores; they must be replicates of one
    /// design (same tasks on the same datasets, same methods), or the comparison is
    /// meaningless.
    fn study(&mut self, e: &Entity) {
        let c = self.collect(e, Some(&["compare", "samples", "seed"]));
        let mut p = Proto::new("study", &e.name, Some(e.name_loc));
        p.absorb(c);
        let mut first: Option<(&str, Design)> = None;
        let mut names = vec![];
        for f in e.block.list("evals") {
            let Some(name) = f.value.as_str() else { continue };
            let Some(ev) = self.manifest.entity("eval", name) else {
                continue;
            };
            // The design: tasks with their datasets and metrics, and the methods.
            let tasks: Vec<(String, String)> = ev
                .block
                .records("task")
                .iter()
                .map(|t| {
                    (
                        t.arg
                            .as_ref()
                            .and_then(|a| a.value.as_str())
                            .unwrap_or_default()
                            .to_string(),
                        format!(
                            "{}/{}",
                            t.str("dataset").unwrap_or_default(),
                            t.str("metric").unwrap_or_default()
                        ),
                    )
                })
                .collect();
            let methods: Vec<&str> = ev
                .block
                .list("methods")
                .iter()
                .filter_map(|m| m.value.as_str())
                .collect();
            // Sampling decides which examples are scored: replicates must sample alike.
            let sampling = format!(
                "max-examples {}, seed {}",
                ev.block
                    .get("max-examples")
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "all".into()),
                ev.block.get("seed").map(|v| v.to_string()).unwrap_or_default()
            );
            // So do the length limits: they decide what is scored of each example.
            let limits = ["max-input-len", "max-target-len"]
                .map(|p| {
                    format!(
                        "{p} {}",
                        ev.block.get(p).map(|v| v.to_string()).unwrap_or_default()
                    )
                })
                .join(", ");
            // And how the routed methods route (a top-k of 1 against 2 is another
            // method), over a pool of as many experts.
            let mut routing: Vec<String> = ev
                .block
                .group("routing")
                .map(|g| g.props.iter().map(|(k, f)| format!("{k}={}", f.value)).collect())
                .unwrap_or_default();
            routing.sort();
            let experts = ev
                .block
                .str("pool")
                .map_or(0, |pool| members_of(self.manifest, pool).len());
            let design = Design {
                tasks,
                methods: methods.iter().map(|m| m.to_string()).collect(),
                sampling,
                limits,
                routing: routing.join(" "),
                experts,
            };
            match &first {
                None => first = Some((name, design)),
                Some((fname, fdesign)) if *fdesign != design => {
                    self.error(
                        "manifest::study-mismatch",
                        f.loc.unwrap_or(e.name_loc),
                        format!("eval \"{name}\" is not a replicate of eval \"{fname}\""),
                        "different design",
                        format!(
                            "a study's evals must have the same tasks (name, dataset, metric), methods, example sampling, length limits, routing settings and pool size; against \"{fname}\", \"{name}\" {}",
                            fdesign.differences(&design).join("; ")
                        ),
                    );
                }
                _ => {}
            }
            let methods_set: Vec<&str> = methods.clone();
            let compare = p
                .params
                .get("compare")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if first.as_ref().is_some_and(|(n, _)| *n == name) && !methods_set.contains(&compare) {
                self.error(
                    "manifest::undefined-reference",
                    e.block
                        .props
                        .get("compare")
                        .and_then(|f| f.loc)
                        .unwrap_or(e.name_loc),
                    format!("the compared method \"{compare}\" is not a method of eval \"{name}\""),
                    "not evaluated",
                    format!("its methods are: {}", methods_set.join(", ")),
                );
            }
            names.push(name.to_string());
            p.inputs.push((format!("eval:{name}"), format!("eval:{name}")));
        }
        if let [only] = names.as_slice() {
            let loc = e
                .block
                .list("evals")
                .first()
                .and_then(|f| f.loc)
                .unwrap_or(e.name_loc);
            self.warn(
                "plan::one-replicate",
                loc,
                format!("study \"{}\" has one replicate (eval \"{only}\")", e.name),
                "one eval",
                "its intervals then cover the sampling of examples only, not what another training seed would change; list evals of pools trained with other seeds",
            );
        }
        // Replicates are named in the order the manifest lists them.
        p.params.insert(
            "evals".into(),
            Value::List(names.into_iter().map(Value::Str).collect()),
        );
        self.push(p, &e.name);
    }

    /// Each task's owning expert (`task ... expert=NAME`, or the one pool member trained
    /// on the task's dataset), checked against the pool and written into the task's
    /// parameters so the eval can measure routing to it.
    fn task_owners(&mut self, e: &Entity, members: &[&Entity], pool: &str, v: &mut Proto) {
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        let Some(Value::Map(tasks)) = v.params.get_mut("task") else {
            return;
        };
        for t in e.block.records("task") {
            let Some(name) = t.arg.as_ref().and_then(|a| a.value.as_str()) else {
                continue;
            };
            let Some(Value::Map(params)) = tasks.get_mut(name) else {
                continue;
            };
            // Scoring what a member trained on measures memory, not generalisation:
            // almost always a test split forgotten.
            let data = t.str("dataset").unwrap_or_default();
            let trained: Vec<&str> = members
                .iter()
                .filter(|m| m.block.str("dataset") == Some(data))
                .map(|m| m.name.as_str())
                .collect();
            if let Some(first) = trained.first() {
                let loc = t.props.get("dataset").and_then(|f| f.loc).unwrap_or(e.name_loc);
                let who = if trained.len() == 1 {
                    format!("expert \"{first}\" trains")
                } else {
                    format!(
                        "experts {} train",
                        trained
                            .iter()
                            .map(|n| format!("\"{n}\""))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                self.warnings.push(
                    ManifestError::new(
                        &self.manifest.sources,
                        "plan::eval-on-training-data",
                        loc,
                        format!("task \"{name}\" scores dataset \"{data}\", which {who} on"),
                        "training data",
                        )
                    .help("its score counts examples the expert has seen (all but the held-back slice): score data of its own (a dataset with `split=\"test\"`, or a test file), and name the task's owner with `expert=NAME`")
                    .as_warning(),
                );
            }
            match t.props.get("expert") {
                Some(f) => {
                    let owner = f.value.as_str().unwrap_or_default();
                    if !names.contains(&owner) {
                        let help = match did_you_mean(owner, names.iter().copied()) {
                            Some(d) => format!("did you mean \"{d}\"?"),
                            None => format!("pool \"{pool}\" has: {}", names.join(", ")),
                        };
                        self.error(
                            "manifest::undefined-reference",
                            f.loc.unwrap_or(e.name_loc),
                            format!("expert \"{owner}\" is not in pool \"{pool}\""),
                            "not a pool member",
                            help,
                        );
                    }
                }
                None => {
                    if let [owner] = trained.as_slice() {
                        params.insert("expert".into(), Value::Str(owner.to_string()));
                    }
                }
            }
        }
    }

    fn eval(&mut self, e: &Entity) {
        let pool = e.block.str("pool").unwrap_or_default().to_string();
        let manifest = self.manifest;
        let members = members_of(manifest, &pool);
        let model = members
            .first()
            .and_then(|m| m.block.str("model"))
            .unwrap_or_default()
            .to_string();
        let mut v = Proto::new("eval", &e.name, Some(e.name_loc));
        let c = self.collect(
            e,
            Some(&[
                "batch",
                "max-input-len",
                "max-target-len",
                "max-examples",
                "seed",
                "methods",
                "task",
                "routing",
                "resources",
            ]),
        );
        for r in &c.refs {
            // task.NAME.dataset -> role task:NAME
            let role = r
                .path
                .strip_prefix("task.")
                .and_then(|rest| rest.strip_suffix(".dataset"))
                .map(|t| format!("task:{t}"))
                .unwrap_or_else(|| r.path.clone());
            v.inputs.push((role, step_id(&r.kind, &r.name)));
        }
        v.absorb(c);
        self.task_owners(e, &members, &pool, &mut v);
        v.inputs.push(("pool".into(), step_id("pool", &pool)));
        v.inputs.push(("model".into(), step_id("model", &model)));
        // The eval reads the members' files itself, so they are declared inputs too
        // (verified before use); their keys add nothing the pool's key lacks.
        for m in &members {
            v.inputs
                .push((member_role("expert", &m.name), step_id("expert", &m.name)));
            v.inputs
                .push((member_role("gate", &m.name), step_id("gate", &m.name)));
        }
        self.choice_tasks_have_choices(e);
        self.generation_settings_on_ranked_tasks(e);
        self.duplicate_tasks(e);
        let methods = self.catalog.methods();
        // A top-k above the pool's size is not an error (every token takes all the
        // experts) but is rarely meant; said where a listed method reads it.
        let routed = e.block.list("methods").iter().any(|f| {
            methods
                .iter()
                .any(|m| m.routes_tokens && Some(m.name) == f.value.as_str())
        });
        if routed
            && let Some(f) = e.block.group("routing").and_then(|r| r.props.get("top-k"))
            && let Some(k) = f.value.as_int()
            && k as usize > members.len()
            && !members.is_empty()
        {
            self.warn(
                "plan::top-k-above-pool",
                f.loc.unwrap_or(e.name_loc),
                format!(
                    "top-k={k} is more than the {} expert(s) of pool \"{pool}\": every token is routed to all of them",
                    members.len()
                ),
                "above the pool's size",
                "lower top-k, or grow the pool",
            );
        }
        for f in e.block.list("methods") {
            let loc = f.loc.unwrap_or(e.name_loc);
            let Some(method) = self.method(
                f.value.as_str().unwrap_or_default(),
                loc,
                &members,
                &pool,
                &methods,
            ) else {
                continue;
            };
            // Every step a method needs reads the members' data: an expert that
            // ships its gate and came without it cannot take part.
            let dataless: Vec<&str> = members
                .iter()
                .filter(|m| m.block.str("dataset").is_none())
                .map(|m| m.name.as_str())
                .collect();
            if !method.needs.is_empty() && !dataless.is_empty() {
                self.error("manifest::method-needs-data", loc, format!(
                            "method \"{}\" reads the data of every expert of pool \"{pool}\", and {} no dataset: {}",
                            method.name,
                            if dataless.len() == 1 { "one has" } else { "some have" },
                            dataless.join(", ")
                        ), "needs the experts' data", "give those experts dataset=\"NAME\" (their training data), or leave the method out of this eval");
                continue;
            }
            for kind in method.needs {
                let Some(needed) = self.catalog.needed(kind) else {
                    self.error(
                        "plan::unknown-step-kind",
                        loc,
                        format!(
                            "method \"{}\" needs step kind `{kind}`, which this build cannot lower",
                            method.name
                        ),
                        "needs it",
                        "upgrade goosepipe, or remove the method",
                    );
                    continue;
                };
                let needs = Needs {
                    eval: e,
                    members: &members,
                    pool: &pool,
                    model: &model,
                };
                match needed {
                    Needed::PerMember { .. } => self.per_member_steps(&needs, kind, needed, &mut v),
                    Needed::Pooled => self.pooled_step(&needs, kind, &mut v),
                }
            }
        }
        // Its resources too (the steps its methods need ask the same of Slurm).
        self.review(e, &v);
        self.push(v, &e.name);
    }

    /// The method a manifest names in an eval's `methods` (None, with the error
    /// pushed, for an unknown one; `expert:NAME` needs no steps and is checked
    /// against the pool).
    fn method(
        &mut self,
        s: &str,
        loc: Loc,
        members: &[&Entity],
        pool: &str,
        methods: &[MethodInfo],
    ) -> Option<MethodInfo> {
        if let Some(name) = s.strip_prefix("expert:") {
            let member_names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
            if !member_names.contains(&name) {
                let help = match did_you_mean(name, member_names.iter().copied()) {
                    Some(d) => format!("did you mean \"expert:{d}\"?"),
                    None => format!("pool \"{pool}\" has: {}", member_names.join(", ")),
                };
                self.error(
                    "manifest::undefined-reference",
                    loc,
                    format!("expert \"{name}\" is not in pool \"{pool}\""),
                    "not a pool member",
                    help,
                );
            }
            return None;
        }
        let found = methods.iter().find(|m| m.name == s).copied();
        if found.is_none() {
            let names: Vec<&str> = methods.iter().map(|m| m.name).collect();
            let help = match did_you_mean(s, names.iter().copied()) {
                Some(d) => format!("did you mean \"{d}\"?"),
                None => format!("methods are {}, or expert:NAME", names.join(", ")),
            };
            self.error(
                "manifest::unknown-method",
                loc,
                format!("unknown method \"{s}\""),
                "not a method",
                help,
            );
        }
        found
    }

    /// The eval's `resources` (its own or inherited from `defaults`): the steps its
    /// methods need ask the same of Slurm (settings, outside every key).
    fn eval_resources(&self, n: &Needs) -> BTreeMap<String, Value> {
        params::collect(
            self.schema,
            &n.eval.block,
            self.schema.node("eval").expect("eval kind"),
            Some(&["resources"]),
        )
        .settings
    }

    /// One step of a needed kind per pool member (`KIND:MEMBER` inputs of the eval).
    fn per_member_steps(&mut self, n: &Needs, kind: &str, needed: Needed, v: &mut Proto) {
        let Needed::PerMember {
            settings,
            data,
            expert,
            model: reads_model,
            embedder,
        } = needed
        else {
            return;
        };
        // The eval's `routing` group: validation filled in every setting's default.
        let routing = n.eval.block.group("routing");
        let setting = |k: &str| routing.and_then(|r| r.get(k)).cloned();
        // A named embedder is resolved (and hashed, or refused) once, for
        // every member's step and the eval's queries.
        let (spec, own) = embedder.map_or((String::new(), true), |(k, own)| {
            let spec = setting(k)
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let is_own = spec == own;
            (spec, is_own)
        });
        let external = if own {
            None
        } else {
            self.embedder(&spec, Some(n.eval.name_loc))
        };
        let resources = self.eval_resources(n);
        for m in n.members {
            let mut a = Proto::new(kind, &m.name, Some(m.name_loc));
            a.settings = resources.clone();
            for (param, name) in settings {
                if let Some(v) = setting(name) {
                    a.params.insert((*param).into(), v);
                }
            }
            let dataset = m.block.str("dataset").unwrap_or_default();
            if reads_model || (embedder.is_some() && own) {
                a.inputs.push(("model".into(), step_id("model", n.model)));
            }
            if expert {
                a.inputs.push(("expert".into(), step_id("expert", &m.name)));
            }
            let data = match data {
                MemberData::Tokens => self.tokens(dataset, n.model),
                MemberData::Examples => step_id("dataset", dataset),
            };
            a.inputs.push(("data".into(), data));
            a.externals.extend(external.clone());
            let id = self.push(a, &n.eval.name);
            v.inputs.push((member_role(kind, &m.name), id));
        }
        v.externals.extend(external);
    }

    /// One step of a needed kind for the whole pool (the eval's `KIND` input).
    fn pooled_step(&mut self, n: &Needs, kind: &str, v: &mut Proto) {
        let mut a = Proto::new(kind, n.pool, Some(n.eval.name_loc));
        a.settings = self.eval_resources(n);
        for g in ["lora", "train"] {
            if let Some(b) = self.manifest.default_groups.get(g) {
                let spec = self.schema.group(g).expect("schema group");
                let c = params::collect(self.schema, b, spec, None);
                if !c.settings.is_empty() {
                    a.settings.insert(g.into(), Value::Map(c.settings));
                }
                a.params.insert(g.into(), Value::Map(c.keyed));
                // `explain` says where each value comes from: the `defaults` node or
                // the schema (a pooled step belongs to no node of its own).
                a.origins
                    .extend(c.origins.into_iter().map(|(path, o)| (format!("{g}.{path}"), o)));
            }
        }
        a.inputs.push(("model".into(), step_id("model", n.model)));
        let mut datasets: Vec<&str> = n.members.iter().filter_map(|m| m.block.str("dataset")).collect();
        datasets.sort();
        datasets.dedup();
        for d in datasets {
            let t = self.tokens(d, n.model);
            a.inputs.push((member_role("data", d), t));
        }
        let id = self.push(a, &n.eval.name);
        v.inputs.push(((*kind).into(), id));
    }
}

/// What makes evals replicates of each other (a study's evals must share it).
#[derive(PartialEq)]
struct Design {
    /// (name, `dataset/metric`), in the manifest's order.
    tasks: Vec<(String, String)>,
    methods: Vec<String>,
    sampling: String,
    limits: String,
    /// The eval's `routing` settings, `name=value` sorted.
    routing: String,
    /// How many experts its pool has.
    experts: usize,
}

/// The items of `a` that `b` lacks.
fn only_in<'a>(a: &'a [String], b: &[String]) -> Vec<&'a String> {
    a.iter().filter(|x| !b.contains(x)).collect()
}

impl Design {
    /// How `other` differs from this design, each difference said once.
    fn differences(&self, other: &Design) -> Vec<String> {
        let names = |d: &Design| d.tasks.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        let (mine, theirs) = (names(self), names(other));
        let quoted = |v: Vec<&String>| {
            v.iter()
                .map(|t| format!("\"{t}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut out = vec![];
        let (lacks, adds) = (only_in(&mine, &theirs), only_in(&theirs, &mine));
        if !lacks.is_empty() {
            out.push(format!("lacks task {}", quoted(lacks)));
        }
        if !adds.is_empty() {
            out.push(format!("adds task {}", quoted(adds)));
        }
        for (name, data) in other.tasks.iter().filter(|t| !self.tasks.contains(t)) {
            if let Some((_, was)) = self.tasks.iter().find(|(n, _)| n == name) {
                out.push(format!(
                    "has task {name}={data} (dataset/metric) where it has {name}={was}"
                ));
            }
        }
        if out.is_empty() && mine != theirs {
            out.push(format!(
                "lists the tasks as {} (not {})",
                theirs.join(", "),
                mine.join(", ")
            ));
        }
        if self.methods != other.methods {
            let same_set = only_in(&self.methods, &other.methods).is_empty()
                && only_in(&other.methods, &self.methods).is_empty();
            let (theirs, mine) = (other.methods.join(", "), self.methods.join(", "));
            out.push(if same_set {
                format!("lists the methods as {theirs} (not {mine})")
            } else {
                format!("has methods {theirs} where it has {mine}")
            });
        }
        if self.sampling != other.sampling {
            out.push(format!("samples {} (not {})", other.sampling, self.sampling));
        }
        if self.routing != other.routing {
            out.push(format!("routes with {} (not {})", other.routing, self.routing));
        }
        if self.experts != other.experts {
            out.push(format!(
                "reads a pool of {} experts (not {})",
                other.experts, self.experts
            ));
        }
        if self.limits != other.limits {
            out.push(format!("cuts at {} (not {})", other.limits, self.limits));
        }
        out
    }
}

/// The eval whose methods need steps, and its pool.
struct Needs<'a> {
    eval: &'a Entity,
    members: &'a [&'a Entity],
    pool: &'a str,
    model: &'a str,
}

/// The files of a local embedder folder that the embedder reads, and so its key: a
/// sentence-transformers folder also holds modules.json, pooling folders, ONNX and
/// OpenVINO exports, a README, which change nothing it computes.
fn embedder_files() -> PathRule {
    PathRule {
        keys: [
            "config.json",
            "tokenizer.json",
            "sentence_bert_config.json",
            "*.safetensors",
            "model.safetensors.index.json",
            "pytorch_model.bin",
        ]
        .map(String::from)
        .to_vec(),
        ..PathRule::default()
    }
}

/// The diagnostic for a local path that leaves the project folder.
fn escape_error(sources: &Sources, loc: Loc, what: &str, value: &str, why: &str) -> ManifestError {
    ManifestError::new(
        sources,
        "manifest::path-escapes",
        loc,
        format!("{what} \"{value}\" is not inside the project: {why}"),
        "outside the project folder",
    )
    .help(
        "keep data inside the folder of the manifest given on the command line (so a checkout carries what it \
         reads), or allow it for this pipeline: pipeline \"NAME\" allow-outside-paths=#true",
    )
}

/// Where the field at `path` ("group.prop", "group" or "prop") of a node is written.
/// A dataset node's source, as the schema's one-of has it written.
fn dataset_source(block: &crate::manifest::Block) -> Option<super::dataset_sources::Source> {
    use super::dataset_sources::Source;
    let set = |p: &str| block.props.get(p).is_some_and(|f| f.origin != Origin::Schema);
    if written(block, "synthetic").is_some() {
        Some(Source::Synthetic)
    } else if set("bigbench") {
        Some(Source::BigBench)
    } else if set("hub") {
        Some(Source::Hub)
    } else if set("path") {
        Some(Source::Path)
    } else {
        None
    }
}

/// Where a setting of `block` is written (a property, a list or a group), or inherited
/// from `defaults`: None where only the schema's default fills it. The inner Option is
/// the location, when known.
fn written(block: &crate::manifest::Block, setting: &str) -> Option<Option<Loc>> {
    use crate::manifest::model::Child;
    if let Some(f) = block.props.get(setting) {
        return (f.origin != Origin::Schema).then_some(f.loc);
    }
    match block.children.get(setting)? {
        Child::List(l) => l.first().map(|f| f.loc),
        Child::Records(r) => r.first().map(|b| Some(b.loc)),
        Child::Group(g) => g
            .props
            .values()
            .any(|f| f.origin != Origin::Schema)
            .then_some(Some(g.loc)),
    }
}

fn field_loc(block: &crate::manifest::Block, path: &str) -> Option<Loc> {
    match path.split_once('.') {
        Some((group, prop)) => block.group(group)?.props.get(prop)?.loc,
        None => block
            .props
            .get(path)
            .and_then(|f| f.loc)
            .or_else(|| block.group(path).map(|g| g.loc)),
    }
}
