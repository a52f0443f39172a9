//! `goosepipe score`: log-probabilities of a target text given an input text
//! under a base model, optionally with LoRA experts (single, merged, or routed
//! with PHATGOOSE). The CLI calls [`score`] and prints [`render_text`] or the
//! JSON of [`ScoreReport`].

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use candle_core::DType;
use serde::Serialize;

use crate::hub::{HubOptions, resolve_model_dir};
use crate::model::adapter::AdapterSet;
use crate::model::checkpoint::expert_file::{GateVectors, LoraExpert};
use crate::model::checkpoint::load::{load_tokenizer, locate};
use crate::model::checkpoint::peft;
use crate::model::device::parse_device;
use crate::model::error::{ModelError, Result};
use crate::model::t5::T5Model;
use crate::model::t5::generate::ChoiceItem;
use crate::route::{self, Method, Scoring};

use super::token_routing::RoutingTrace;

/// How several experts are combined: a method of the evaluation list that runs
/// with adapters and needs no steps of its own (`phatgoose`, `merged`, `arrow`,
/// `base`), or none.
#[derive(Clone, Copy)]
pub enum RouterChoice {
    /// No routing: zero experts (base model) or exactly one (its LoRA alone, as an
    /// eval's `expert:NAME` and PEFT run it: at inference a gate is a router, never
    /// applied).
    Single,
    /// Exactly one expert with its gate applied, `W u + sigmoid(v . u) B A u`: the
    /// model the gate was trained in.
    Gated,
    Method(&'static dyn Method),
}

impl RouterChoice {
    pub fn parse(s: &str) -> Result<Self> {
        fn usable(m: &&'static dyn Method) -> bool {
            m.scoring() == Scoring::Adapters && m.needs().is_empty()
        }
        match s {
            "single" | "none" => Ok(RouterChoice::Single),
            "gated" => Ok(RouterChoice::Gated),
            "merge" => Ok(RouterChoice::Method(&crate::route::merged::Merged)),
            _ => route::find(route::METHODS, s)
                .filter(usable)
                .map(RouterChoice::Method)
                .ok_or_else(|| {
                    let names: Vec<&str> = route::METHODS
                        .iter()
                        .copied()
                        .filter(usable)
                        .map(|m| m.name())
                        .collect();
                    ModelError::Input(format!(
                        "unknown router `{s}` (expected {}, single or gated)",
                        names.join(", ")
                    ))
                }),
        }
    }

    /// Whether this router can take `experts` experts and `gates` gate files given by
    /// hand: a flag combination that cannot run, said before anything is loaded (a
    /// usage error of the command line).
    pub fn takes(&self, experts: usize, gates: usize) -> std::result::Result<(), String> {
        match (self, experts) {
            (_, 0) if gates > 0 => Err(
                "--gates given without --experts: a gate routes the expert it was trained for; give the experts the gates belong to (--experts FILE, PEFT_DIR or expert:NAME)".into(),
            ),
            (RouterChoice::Gated, 0) => Err(
                "--router gated runs one expert with its gate, and no expert was given: give one with --experts".into(),
            ),
            // Without experts it scored the base model, as if that had been asked.
            (RouterChoice::Method(m), 0) if m.name() != "base" => Err(format!(
                "--router {} combines experts, and none was given: give them with --experts, or leave --router out to score the model alone",
                m.name()
            )),
            (RouterChoice::Single, _) if gates > 0 => Err(
                "--gates given, and --router single runs each expert's LoRA alone (a gate is a router, never applied): pass --router gated, or a routed method such as phatgoose".into(),
            ),
            (RouterChoice::Single, n) if n > 1 => Err(format!(
                "--router single runs one expert's LoRA alone, and {n} experts were given; pass a router that combines them (--router phatgoose, merged or arrow), or one expert"
            )),
            (RouterChoice::Gated, n) if n > 1 => Err(format!(
                "--router gated takes one expert, {n} were given; pass --router phatgoose or merged"
            )),
            _ => Ok(()),
        }
    }

    /// Whether `--routing` can show this router's per-token routing: only a method
    /// that routes each token among the experts has any.
    pub fn traces(&self) -> std::result::Result<(), String> {
        match self {
            RouterChoice::Method(m) if m.routes_tokens() => Ok(()),
            other => Err(format!(
                "--routing shows where each token is routed, and --router {} routes no token (it {}); pass --router phatgoose or arrow",
                other.name(),
                match other {
                    RouterChoice::Single => "runs one expert's LoRA alone",
                    RouterChoice::Gated => "runs one expert with its gate",
                    RouterChoice::Method(m) if m.name() == "base" => "applies no adapter",
                    RouterChoice::Method(_) => "gives every token the same adapters",
                }
            )),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            RouterChoice::Single => "single",
            RouterChoice::Gated => "gated",
            RouterChoice::Method(m) => m.name(),
        }
    }
}

impl std::fmt::Debug for RouterChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl PartialEq for RouterChoice {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Serialize for RouterChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

#[derive(Debug, Clone)]
pub struct ScoreRequest {
    /// A local HF model folder, or a hub repo id (`org/name`).
    pub model: String,
    pub revision: String,
    pub experts: Vec<PathBuf>,
    /// Gate files: matched to the experts by name, else one per expert in the order
    /// of `experts`; when empty, `<expert>.gates.safetensors` beside each expert file
    /// is used if it exists.
    pub gates: Vec<PathBuf>,
    pub router: RouterChoice,
    pub top_k: usize,
    pub input: String,
    pub target: String,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    pub hub: HubOptions,
    /// Longest input or target scored, in tokens: memory grows with the square of
    /// the length, so a longer text is refused rather than exhausting it.
    pub max_len: usize,
    /// Also record where each token is routed (a router that routes tokens only).
    pub routing: bool,
}

impl ScoreRequest {
    /// Experts kept per token by a routed method, unless asked otherwise (the paper's).
    pub const DEFAULT_TOP_K: usize = 2;

    pub fn new(model: impl Into<String>, input: impl Into<String>, target: impl Into<String>) -> Self {
        ScoreRequest {
            model: model.into(),
            revision: "main".into(),
            experts: Vec::new(),
            gates: Vec::new(),
            router: RouterChoice::Single,
            top_k: Self::DEFAULT_TOP_K,
            input: input.into(),
            target: target.into(),
            device: "cpu".into(),
            hub: HubOptions::default(),
            max_len: 512,
            routing: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoredToken {
    pub id: u32,
    pub piece: String,
    pub logprob: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreReport {
    pub model_dir: PathBuf,
    pub experts: Vec<String>,
    pub router: RouterChoice,
    pub input_ids: Vec<u32>,
    /// Target tokens including the final EOS.
    pub tokens: Vec<ScoredToken>,
    pub total: f64,
    pub mean: f64,
    /// Where each token went, when asked (`--routing`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing: Option<RoutingTrace>,
    /// What was asked that the scoring could not do as written (`--top-k` above the
    /// experts given, or for a router that keeps no top k).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// An expert given on the command line: a goosepipe expert file (its gates beside it
/// as `NAME.gates.safetensors`, if there) or a PEFT adapter folder (named as its
/// export recorded, else after the folder; gates exported beside it, if there).
fn load_expert(path: &Path, cfg: &crate::model::T5Config, device: &candle_core::Device) -> Result<Loaded> {
    if peft::is_peft_dir(path) {
        // The expert an export recorded (its phatgoose.json, its weights' metadata),
        // else the folder's name.
        let name = peft::recorded_expert(path).unwrap_or_else(|| {
            path.file_name()
                .and_then(|s| s.to_str())
                .unwrap_or("adapter")
                .to_owned()
        });
        let imported = peft::import(path, &name, cfg, device)?;
        let gates = peft::import_gates(path, &name, cfg, device)?;
        return Ok(Loaded {
            expert: imported.expert,
            gates,
            recorded: peft::recorded_expert(path),
        });
    }
    if path.is_dir() {
        if let Some(why) = crate::file_kind::not_a_file(&path.join(peft::CONFIG_FILE)) {
            return Err(ModelError::Input(format!(
                "{}: its {} {why}",
                path.display(),
                peft::CONFIG_FILE
            )));
        }
        return Err(ModelError::Input(format!(
            "{} is a folder without {}: an expert is a goosepipe expert file or a PEFT adapter folder",
            path.display(),
            peft::CONFIG_FILE
        )));
    }
    if !path.exists() {
        let hint = if path.to_string_lossy().contains(':') {
            format!(
                "; a step of the store is given by its file: `goosepipe show {} --path` prints its folder",
                path.display()
            )
        } else {
            String::new()
        };
        return Err(ModelError::Input(format!(
            "--experts: {} does not exist{hint}",
            path.display()
        )));
    }
    let mut expert = LoraExpert::load(path, cfg, device, DType::F32).map_err(|e| {
        // A data file or anything else given by mistake: say what an expert is.
        match crate::model::checkpoint::expert_file::not_an_expert(path, cfg, &e) {
            Some(why) => ModelError::Input(format!(
                "--experts: {why}; an expert is a goosepipe expert file (expert.safetensors in a store folder) or a PEFT adapter folder"
            )),
            None => e,
        }
    })?;
    let mut gates = GateVectors::load_beside(path, cfg, device, DType::F32)?;
    // A file taken from a store is named by the step that built it.
    let store_name = crate::store::step_name_of_file(path);
    if let Some(name) = &store_name {
        expert.name = name.clone();
        if let Some(g) = gates.as_mut() {
            g.name = expert.name.clone();
        }
    }
    let recorded = store_name.or_else(|| peft::recorded_name(path));
    Ok(Loaded {
        expert,
        gates,
        recorded,
    })
}

/// One expert given on the command line, its gate found beside it, and the name its
/// files record it by (a store step's, or the metadata's), which a gate given apart
/// must not contradict.
struct Loaded {
    expert: LoraExpert,
    gates: Option<GateVectors>,
    recorded: Option<String>,
}

/// Experts given as files or PEFT folders, and the gates found beside them.
pub fn load_pool(
    paths: &[PathBuf],
    cfg: &crate::model::T5Config,
    device: &candle_core::Device,
) -> Result<(Vec<LoraExpert>, Vec<GateVectors>)> {
    let (experts, gates, _) = load_recorded_pool(paths, cfg, device)?;
    Ok((experts, gates))
}

/// Per expert, the name its files record (see [`Loaded`]).
type Recorded = Vec<Option<String>>;

/// [`load_pool`], and the name each expert's files record (see [`Loaded`]).
fn load_recorded_pool(
    paths: &[PathBuf],
    cfg: &crate::model::T5Config,
    device: &candle_core::Device,
) -> Result<(Vec<LoraExpert>, Vec<GateVectors>, Recorded)> {
    let loaded = paths
        .iter()
        .map(|p| load_expert(p, cfg, device))
        .collect::<Result<Vec<_>>>()?;
    // Experts are told apart by name (gates are matched to them by it).
    for (i, a) in loaded.iter().enumerate() {
        if let Some(j) = loaded[..i].iter().position(|b| b.expert.name == a.expert.name) {
            return Err(ModelError::Input(format!(
                "--experts {} and {} are both named `{}` (an expert file's or store step's name, or for an adapter folder the expert its export recorded, else the folder's name): give experts of different names, or copy one to a folder of another name",
                paths[j].display(),
                paths[i].display(),
                a.expert.name
            )));
        }
    }
    let gates = loaded.iter().filter_map(|l| l.gates.clone()).collect();
    let recorded = loaded.iter().map(|l| l.recorded.clone()).collect();
    Ok((loaded.into_iter().map(|l| l.expert).collect(), gates, recorded))
}

/// The adapters `router` makes of `experts` (with `gates`): none for no expert, one
/// expert's LoRA without a router (gated by its gate with `gated`), else the method's.
pub fn adapters_for(
    router: RouterChoice,
    experts: &[LoraExpert],
    gates: &[GateVectors],
    cfg: &crate::model::T5Config,
    device: &candle_core::Device,
    top_k: usize,
) -> Result<AdapterSet> {
    match (router, experts.len()) {
        (_, 0) => Ok(AdapterSet::new()),
        (RouterChoice::Single, 1) => Ok(AdapterSet::from_lora(&experts[0])),
        (RouterChoice::Gated, 1) => match gates.first() {
            Some(g) => AdapterSet::from_gated(&experts[0], g),
            None => Err(ModelError::Input(format!(
                "--router gated applies an expert's gate, and expert `{}` has none (a gate file beside it, or --gates)",
                experts[0].name
            ))),
        },
        (RouterChoice::Single | RouterChoice::Gated, n) => {
            Err(ModelError::Input(router.takes(n, 0).err().unwrap_or_else(|| {
                format!("--router {} takes one expert, {n} were given", router.name())
            })))
        }
        (RouterChoice::Method(m), _)
            if m.uses_gates()
                && let Some(e) = experts.iter().find(|e| !gates.iter().any(|g| g.name == e.name)) =>
        {
            Err(ModelError::Input(format!(
                "--router {} routes by every expert's gate, and expert `{}` has none: give the gate files with --gates (a store's `gate:NAME`), or experts as `expert:NAME`, which bring their gates",
                m.name(),
                e.name
            )))
        }
        (RouterChoice::Method(m), _) => m.adapters(
            &route::Pool {
                experts,
                gates,
                needed: &Default::default(),
                config: cfg,
                device,
                top_k,
                arrow_temperature: Some(route::arrow::DEFAULT_TEMPERATURE),
            }
            .given_to(m),
        ),
    }
}

fn tokenize(tok: &tokenizers::Tokenizer, text: &str, path: &Path) -> Result<Vec<u32>> {
    let enc = tok.encode(text, true).map_err(|e| ModelError::Tokenizer {
        path: path.to_path_buf(),
        message: format!("cannot encode {text:?}: {e}"),
    })?;
    Ok(enc.get_ids().to_vec())
}

/// The payload folder of a model step's store artifact, when `path` is one (its
/// folder or `files/`, as `goosepipe show model:NAME --path` prints it): the model
/// itself is where the artifact's pointer says (`files/model/`, or the HF cache).
fn store_model_files(path: &Path) -> Option<PathBuf> {
    [path.to_path_buf(), path.join("files")]
        .into_iter()
        .find(|f| f.join(crate::artifact_files::MODEL_JSON).is_file() && !f.join("config.json").exists())
}

/// Refuses an expert that records a base model other than `model`, when `model` is a
/// store artifact (known by its key, which expert files record): the same shapes
/// with other weights would pass every other check.
pub(super) fn check_store_base(model: &Path, experts: &[LoraExpert]) -> Result<()> {
    if let Some(k) = crate::store::artifact_key_of(model) {
        for e in experts.iter().filter(|e| e.base_model.is_some()) {
            e.check_base_model(&k.hex())?;
        }
    }
    Ok(())
}

/// [`check_store_base`] for gate files: a gate trained in another base routes by
/// directions of another model's activations, with the same shapes.
fn check_gate_bases(model: &Path, gates: &[GateVectors], experts: &[LoraExpert]) -> Result<()> {
    let store_base = crate::store::artifact_key_of(model).map(|k| k.hex());
    for g in gates {
        let Some(b) = &g.base_model else { continue };
        let expected = store_base
            .clone()
            .or_else(|| experts.iter().find(|e| e.name == g.name)?.base_model.clone());
        if let Some(expected) = expected
            && *b != expected
        {
            return Err(ModelError::Input(format!(
                "the gate of `{}` was trained in base model `{b}`, not `{expected}`",
                g.name
            )));
        }
    }
    Ok(())
}

/// Gate files given with --gates, named after their experts: by name when any of
/// their names (a store file's step name, else the file's) is an expert's or when
/// they come from a store (`named`), every expert then needing exactly one; else one
/// per expert in the order of --experts (`sort-gates.safetensors` for `sort`).
///
/// `recorded`: per gate file and per expert, the expert name its files record, if
/// any: paired by order, a gate that records another expert than its partner does is
/// refused (`--gates sort-gates --experts rev`).
fn pair_gates(
    mut gates: Vec<GateVectors>,
    experts: &[LoraExpert],
    named: bool,
    recorded: (&[Option<String>], &[Option<String>]),
) -> Result<Vec<GateVectors>> {
    let listed = |names: &mut dyn Iterator<Item = &str>| names.collect::<Vec<_>>().join(", ");
    let is_expert = |n: &str| experts.iter().any(|e| e.name == n);
    if named || gates.iter().any(|g| is_expert(&g.name)) {
        for e in experts {
            let n = gates.iter().filter(|g| g.name == e.name).count();
            if n != 1 {
                return Err(ModelError::Input(format!(
                    "--gates: expert `{}` has {n} gate files by name (gate files: {}); give each expert one, named after it, or give the gate files in the order of --experts under other names",
                    e.name,
                    listed(&mut gates.iter().map(|g| g.name.as_str()))
                )));
            }
        }
        if let Some(g) = gates.iter().find(|g| !is_expert(&g.name)) {
            return Err(ModelError::Input(format!(
                "--gates: gate file `{}` names no expert given (experts: {})",
                g.name,
                listed(&mut experts.iter().map(|e| e.name.as_str()))
            )));
        }
        return Ok(gates);
    }
    if gates.len() != experts.len() {
        return Err(ModelError::Input(format!(
            "--gates gives {} file(s) for {} expert(s), and their names ({}) are not the experts' ({}): \
             give one gate file per expert, in the order of --experts",
            gates.len(),
            experts.len(),
            listed(&mut gates.iter().map(|g| g.name.as_str())),
            listed(&mut experts.iter().map(|e| e.name.as_str()))
        )));
    }
    for (i, (g, e)) in gates.iter_mut().zip(experts).enumerate() {
        if let (Some(Some(gate)), Some(Some(expert))) = (recorded.0.get(i), recorded.1.get(i))
            && gate != expert
        {
            return Err(ModelError::Input(format!(
                "--gates: gate file {} records expert `{gate}`, and the expert given in its place (`{}`) records `{expert}`: one expert's gate would route another's LoRA",
                i + 1,
                e.name
            )));
        }
        g.name = e.name.clone();
    }
    Ok(gates)
}

pub fn score(req: &ScoreRequest) -> Result<ScoreReport> {
    // An empty text encodes to the end-of-sequence token alone: scored, it reads as
    // a result about nothing.
    for (flag, text) in [("--input", &req.input), ("--target", &req.target)] {
        if text.trim().is_empty() {
            return Err(ModelError::Input(format!(
                "{flag} is empty: give the text to score"
            )));
        }
    }
    // Gate files given by hand and then not used would be a silent no-op; several
    // experts for a router of one, an error after loading them all.
    req.router
        .takes(req.experts.len(), req.gates.len())
        .map_err(ModelError::Input)?;
    if req.routing {
        req.router.traces().map_err(ModelError::Input)?;
    }
    let device = parse_device(&req.device)?;
    let given = Path::new(&req.model);
    let artifact = store_model_files(given);
    let dir = match &artifact {
        Some(files) => crate::steps::common::read_model_pointer(files, &req.model)
            .map(|(_, dir)| dir)
            .map_err(|e| ModelError::Input(e.to_string()))?,
        None => resolve_model_dir(&req.model, &req.revision, &req.hub)?,
    };
    let files = locate(&dir)?;
    let tok_path = files.tokenizer.clone().ok_or_else(|| ModelError::Tokenizer {
        path: dir.join("tokenizer.json"),
        message: "the model folder has no tokenizer.json".into(),
    })?;
    let tok = load_tokenizer(&tok_path)?;
    let mut model = T5Model::load(&dir, &device, DType::F32)?;
    let cfg = model.config.clone();

    let (experts, mut gates, experts_recorded) = load_recorded_pool(&req.experts, &cfg, &device)?;
    let model_dir = artifact.as_deref().unwrap_or(&dir);
    check_store_base(model_dir, &experts)?;
    if !req.gates.is_empty() {
        // A gate file taken from a store is named by the step that built it: a name
        // that says whose gate it is, never to be paired by order instead.
        let mut from_store = false;
        let mut gates_recorded = vec![];
        gates = req
            .gates
            .iter()
            .map(|p| {
                let mut g = GateVectors::load(p, &cfg, &device, DType::F32)?;
                let store_name = crate::store::step_name_of_file(p);
                if let Some(name) = &store_name {
                    g.name = name.clone();
                    from_store = true;
                }
                gates_recorded.push(store_name.or_else(|| peft::recorded_name(p)));
                Ok(g)
            })
            .collect::<Result<Vec<_>>>()?;
        gates = pair_gates(gates, &experts, from_store, (&gates_recorded, &experts_recorded))?;
    }
    check_gate_bases(model_dir, &gates, &experts)?;
    model.set_adapters(adapters_for(
        req.router, &experts, &gates, &cfg, &device, req.top_k,
    )?)?;

    let input_ids = tokenize(&tok, &req.input, &tok_path)?;
    let mut target = tokenize(&tok, &req.target, &tok_path)?;
    // score_choices appends EOS itself; T5 tokenizers already add one.
    if target.last() == Some(&cfg.eos_token_id) {
        target.pop();
    }
    if input_ids.is_empty() {
        return Err(ModelError::Input("the input text encodes to no tokens".into()));
    }
    for (what, n) in [("input", input_ids.len()), ("target", target.len() + 1)] {
        if n > req.max_len {
            return Err(ModelError::Input(format!(
                "the {what} is {n} tokens, more than --max-len {} (memory grows with the square of the length; raise --max-len to score it anyway)",
                req.max_len
            )));
        }
    }
    // A length --max-len lets through can still be more than this process may hold:
    // refused here with the sizes, rather than aborted by the allocator. (A GPU's
    // memory is its own, and running out of it is an error candle returns.)
    let need = cfg.scoring_bytes(input_ids.len(), target.len() + 1);
    if device.is_cpu()
        && let Some((limit, what)) = crate::process::alloc::memory_limit()
        && need > u128::from(limit)
    {
        let size = |b: u128| crate::store::fsutil::human_size(b.min(u128::from(u64::MAX)) as u64);
        return Err(ModelError::Input(format!(
            "scoring a {}-token input with a {}-token target needs at least {} (attention grows with the square of the length), more than {} ({}); shorten the input",
            input_ids.len(),
            target.len() + 1,
            size(need),
            what,
            size(u128::from(limit))
        )));
    }
    let mut notes = unknown_word_notes(
        &tok,
        [
            ("input", &req.input, &input_ids),
            ("target", &req.target, &target),
        ],
    );
    let item = ChoiceItem {
        input: input_ids.clone(),
        choices: vec![target],
    };
    if req.routing {
        model.start_routing_log(true);
    }
    let scores = model.score_choices(&[item], 1)?;
    let log = model.take_routing_log();
    let s = scores
        .into_iter()
        .next()
        .and_then(|v| v.into_iter().next())
        .ok_or_else(|| ModelError::Input("scoring returned nothing".into()))?;
    // Non-finite scores were refused by `score_choices` (NaN printed with exit 0
    // would read as a result).
    let piece = |id: u32| tok.id_to_token(id).unwrap_or_else(|| format!("<id {id}>"));
    let tokens: Vec<ScoredToken> = s
        .token_ids
        .iter()
        .zip(&s.logprobs)
        .map(|(&id, &lp)| ScoredToken {
            id,
            piece: piece(id),
            logprob: lp,
        })
        .collect();
    let routing = log
        .map(|log| {
            let input: Vec<String> = input_ids.iter().map(|&id| piece(id)).collect();
            let target: Vec<String> = tokens.iter().map(|t| t.piece.clone()).collect();
            // The router keeps at most the pool: the k that was used, not the one asked.
            let k = req.top_k.min(experts.len());
            RoutingTrace::from_log(&log, k, &input, &target).map_err(ModelError::Input)
        })
        .transpose()?;
    let mut names: Vec<String> = experts.iter().map(|e| e.name.clone()).collect();
    names.sort();
    notes.extend(top_k_notes(req.router, req.top_k, experts.len()));
    Ok(ScoreReport {
        model_dir: dir,
        experts: names,
        router: req.router,
        input_ids,
        tokens,
        total: s.sum,
        mean: s.mean,
        routing,
        notes,
    })
}

/// Words of the input or target the tokenizer reads as `<unk>` (a pipeline-built
/// tokenizer is word-level): they all read alike to the model, as the tokenize step and
/// an eval say of their data.
fn unknown_word_notes<'a>(
    tok: &tokenizers::Tokenizer,
    texts: impl IntoIterator<Item = (&'a str, &'a String, &'a Vec<u32>)>,
) -> Vec<String> {
    use crate::data::unknown_words::{UnknownWords, unknown_id};
    let Some(unk) = unknown_id(tok) else {
        return vec![];
    };
    texts
        .into_iter()
        .filter_map(|(what, text, ids)| {
            let mut words = UnknownWords::default();
            words.count(tok, unk, text, ids);
            words.describe(5).map(|d| format!("the {what}: {d}"))
        })
        .collect()
}

/// `--top-k` where it does not do what it says: above the experts given (each token
/// takes all of them), or given to a router that keeps no top k (its default, 2, is
/// no request and draws nothing).
fn top_k_notes(router: RouterChoice, top_k: usize, experts: usize) -> Vec<String> {
    let routes = matches!(router, RouterChoice::Method(m) if m.routes_tokens());
    if routes && top_k > experts {
        vec![format!(
            "--top-k {top_k} is more than the {experts} expert(s) given: each token is routed to all {experts}"
        )]
    } else if !routes && top_k != ScoreRequest::DEFAULT_TOP_K {
        vec![format!(
            "--top-k {top_k} does nothing here: --router {} keeps no top k per token (phatgoose does)",
            router.name()
        )]
    } else {
        vec![]
    }
}

/// A plain-text table of the report.
pub fn render_text(r: &ScoreReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "model: {}", r.model_dir.display());
    if !r.experts.is_empty() {
        let _ = writeln!(out, "experts ({:?}): {}", r.router, r.experts.join(", "));
    }
    let width = r
        .tokens
        .iter()
        .map(|t| t.piece.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    let _ = writeln!(out, "{:>6}  {:<width$}  {:>10}", "id", "piece", "logprob");
    for t in &r.tokens {
        let _ = writeln!(out, "{:>6}  {:<width$}  {:>10.4}", t.id, t.piece, t.logprob);
    }
    let _ = writeln!(
        out,
        "total {:.4}  mean {:.4}  ({} tokens)",
        r.total,
        r.mean,
        r.tokens.len()
    );
    if let Some(trace) = &r.routing {
        let _ = write!(out, "\n{}", trace.render(r.router.name()));
    }
    for n in &r.notes {
        let _ = writeln!(out, "note: {n}");
    }
    out
}

/// `score` takes store steps by id as well as paths: `--model model:NAME`,
/// `--experts expert:NAME...`, `--gates gate:NAME...`, each the artifact the last run
/// found for that step (as `show ID --path`). Experts given so bring their gates
/// (`gate:NAME`, where built) to a router that reads gates, when no `--gates` are
/// given. A value that is an
/// existing path is left as it is.
pub fn resolve_step_ids(
    req: &mut ScoreRequest,
    store_root: &Path,
) -> std::result::Result<Vec<String>, String> {
    use crate::artifact_files::{EXPERT_FILE, GATES_FILE};
    use crate::store::spec::{member_of, step_id};
    // `KIND:NAME` is a step id, even where a file of that name is here (it is
    // `./KIND:NAME`): which one is scored must not depend on the working folder.
    let is_id = |value: &str, kind: &str| member_of(value, kind).is_some();
    // Neither a folder nor `org/name` nor a step id: most often a model step's bare name.
    if !req.model.contains(['/', ':']) && !Path::new(&req.model).exists() {
        return Err(format!(
            "--model {m}: no such folder, and not a hub repo id (org/name); a model step of the store is given as model:{m}",
            m = req.model
        ));
    }
    // A step of another kind where a model goes (`--model expert:sort`) was taken
    // for a malformed hub repo id.
    if let Some((kind, _)) = req.model.split_once(':')
        && !req.model.contains('/')
        && !Path::new(&req.model).exists()
        && kind != "model"
    {
        let hint = if kind == "expert" || kind == "gate" {
            format!("; {kind}s go in --{kind}s")
        } else {
            String::new()
        };
        return Err(format!(
            "--model {}: a model step is given as model:NAME, not {kind}:NAME{hint}",
            req.model
        ));
    }
    // One expert twice would route between two copies of itself.
    let mut seen = std::collections::HashSet::new();
    if let Some(twice) = req.experts.iter().find(|e| !seen.insert(*e)) {
        return Err(format!("--experts names {} twice", twice.display()));
    }
    let wanted = is_id(&req.model, "model")
        || req.experts.iter().any(|e| is_id(&e.to_string_lossy(), "expert"))
        || req.gates.iter().any(|g| is_id(&g.to_string_lossy(), "gate"));
    if !wanted {
        return Ok(vec![]);
    }
    if !store_root.is_dir() {
        return Err(format!(
            "no store at {}: step ids (model:NAME, expert:NAME, gate:NAME) are read from a store; pass --store DIR",
            store_root.display()
        ));
    }
    let store = crate::store::Store::at(store_root);
    // Re-hashed as `export` and `show` do: a damaged or collected artifact is said,
    // not read.
    // The names/ index first; without a record for the id (lost, damaged: the next run
    // writes it again), the artifacts' own metadata, as `show` finds them.
    // Taken by metadata where the store holds several builds of the id (earlier
    // settings): the newest, said in a note as `show` says it.
    let notes = std::cell::RefCell::new(Vec::new());
    for (value, kind) in std::iter::once((req.model.clone(), "model"))
        .chain(
            req.experts
                .iter()
                .map(|e| (e.to_string_lossy().into_owned(), "expert")),
        )
        .chain(
            req.gates
                .iter()
                .map(|g| (g.to_string_lossy().into_owned(), "gate")),
        )
    {
        if is_id(&value, kind) {
            notes.borrow_mut().extend(super::shadowed_id_note(&value));
        }
    }
    let built = |id: &str| -> Option<crate::store::Key> {
        store.named(id).or_else(|| {
            let m = store.find(id).ok().filter(|m| m.spec.id == id)?;
            let others = store.others_of(id, &m.key);
            let note = format!(
                "{others} other artifact(s) of {id} are in the store, and its record in names/ (which one the last run used) is lost or damaged (the next run writes it again): took the newest, {}",
                m.key.short()
            );
            if others > 0 && !notes.borrow().contains(&note) {
                notes.borrow_mut().push(note);
            }
            Some(m.key)
        })
    };
    let files = |id: &str| -> std::result::Result<PathBuf, String> {
        let key = built(id).ok_or_else(|| {
            // Suggested from the index and, for ids whose record is lost, the artifacts'.
            let mut ids = store.named_ids();
            ids.extend(
                store
                    .keys()
                    .iter()
                    .filter_map(|k| store.meta(k).map(|m| m.spec.id)),
            );
            ids.sort_unstable();
            ids.dedup();
            let near = crate::manifest::diag::did_you_mean(id, ids.iter().map(String::as_str))
                .map(|n| format!("; did you mean {n}?"))
                .unwrap_or_default();
            format!(
                "{id} is in no run of the store at {}{near} (run its manifest first, or give a path)",
                store_root.display()
            )
        })?;
        crate::plan::integrity::verify(&store, &key).map_err(|e| match store.presence(&key) {
            crate::store::Presence::Missing => format!(
                "{id}: its artifact {} is no longer in the store (collected by gc, or deleted); `goosepipe run MANIFEST --until {id}` rebuilds it (a plain run leaves it out while nothing that runs reads it)",
                key.short()
            ),
            _ => format!("{id}: {e}; {}", crate::store::corrupt_help(&store.root)),
        })?;
        Ok(store.files_dir(&key))
    };
    if is_id(&req.model, "model") {
        req.model = files(&req.model)?.to_string_lossy().into_owned();
    }
    let mut names = vec![];
    for e in &mut req.experts {
        let text = e.to_string_lossy().into_owned();
        if is_id(&text, "expert") {
            names.push(member_of(&text, "expert").expect("checked").to_string());
            *e = files(&text)?.join(EXPERT_FILE);
        }
    }
    for g in &mut req.gates {
        let text = g.to_string_lossy().into_owned();
        if is_id(&text, "gate") {
            *g = files(&text)?.join(GATES_FILE);
        }
    }
    // The gates built for them (paired by their recorded names; an expert without
    // one is named by the router that needs it).
    let routed = !matches!(req.router, RouterChoice::Single);
    if routed && req.gates.is_empty() {
        for n in &names {
            let id = step_id("gate", n);
            if built(&id).is_some() {
                req.gates.push(files(&id)?.join(GATES_FILE));
            }
        }
    }
    Ok(notes.into_inner())
}
