//! promptsource templates: a dataset's `templates.yaml` (the P3 prompts), rendered with
//! minijinja the way promptsource 0.2.3's `Template.apply` renders them with Jinja2.
//!
//! What is reproduced, because it changes the text the model sees:
//! - every `}}` of the template gets `| string | truncate(2048)` (apply's truncate=True),
//!   with Jinja2's truncate (leeway 5, cut at a space, "..." appended);
//! - `|||` inside example fields is protected while rendering, then restored;
//! - answer choices are their own template, split on `|||` and stripped;
//! - output uses Python's `str()` (None, True, lists as `['a', 'b']`);
//! - Python methods the templates call (`split`, `lower`, `index`, `join`, ...).
//!
//! One deliberate difference: promptsource's `choice` filter draws from Python's unseeded
//! global RNG, so its prompts differ run to run. Here it draws from a generator seeded
//! per (example, template), so a rendered dataset is reproducible byte for byte.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use minijinja::value::{Serde, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

use super::example::{DataError, Example};

/// The promptsource release whose templates goosepipe reads (the paper's).
pub const VERSION: &str = "0.2.3";
/// promptsource's TEXT_VAR_LENGTH.
const TRUNCATE: usize = 2048;
const PIPE: &str = "|||";
const PIPE_PROTECTOR: &str = "3ed2dface8203c4c9dfb1a5dc58e41e0";

#[derive(Debug, Clone, Deserialize)]
pub struct Template {
    pub id: String,
    pub name: String,
    pub jinja: String,
    #[serde(default)]
    pub answer_choices: Option<String>,
    #[serde(default)]
    pub metadata: Metadata,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub original_task: Option<bool>,
    #[serde(default)]
    pub choices_in_prompt: Option<bool>,
}

/// The templates of one dataset (or one dataset subset), in file order.
#[derive(Debug, Clone)]
pub struct TemplateSet {
    pub file: PathBuf,
    pub templates: Vec<Template>,
}

/// `ROOT/templates/NAME/templates.yaml`, where ROOT is a promptsource source tree
/// (the folder that holds `templates/`, i.e. `promptsource-0.2.3/promptsource`) and NAME
/// is `dataset` or `dataset/subset`.
pub fn templates_file(root: &Path, name: &str) -> PathBuf {
    root.join("templates").join(name).join("templates.yaml")
}

/// Finds the promptsource template tree: `explicit` (a manifest path), else
/// `$GOOSEPIPE_PROMPTSOURCE`, else `~/.cache/goosepipe/promptsource-0.2.3`. Each may
/// point at the unpacked sdist (`promptsource-0.2.3/`) or its inner `promptsource/`.
/// The sdist's PKG-INFO must name version 0.2.3 when it is there.
pub fn find_root(explicit: Option<&Path>) -> Result<PathBuf, DataError> {
    let candidates: Vec<PathBuf> = match explicit {
        Some(p) => vec![p.to_path_buf()],
        None => std::env::var_os("GOOSEPIPE_PROMPTSOURCE")
            .map(PathBuf::from)
            .into_iter()
            .chain(std::env::var_os("HOME").map(|h| {
                PathBuf::from(h)
                    .join(".cache/goosepipe")
                    .join(format!("promptsource-{VERSION}"))
            }))
            .collect(),
    };
    for c in &candidates {
        for root in [c.join("promptsource"), c.clone()] {
            if root.join("templates").is_dir() {
                check_version(&root)?;
                return Ok(root);
            }
        }
    }
    Err(DataError::Other(format!(
        "the promptsource {VERSION} templates were not found (looked in: {}). Get them with \
         `scripts/fetch-test-data.sh` (it unpacks the PyPI sdist), or set GOOSEPIPE_PROMPTSOURCE to an \
         unpacked promptsource-{VERSION} folder",
        if candidates.is_empty() {
            "nowhere: HOME is unset".to_string()
        } else {
            candidates
                .iter()
                .map(|c| c.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
    )))
}

fn check_version(root: &Path) -> Result<(), DataError> {
    let Some(pkg) = root.parent().map(|p| p.join("PKG-INFO")) else {
        return Ok(());
    };
    let Ok(text) = std::fs::read_to_string(&pkg) else {
        return Ok(());
    };
    match text.lines().find_map(|l| l.strip_prefix("Version: ")) {
        Some(v) if v.trim() == VERSION => Ok(()),
        Some(v) => Err(DataError::Other(format!(
            "{} is promptsource {}, but goosepipe's keys assume promptsource {VERSION}",
            pkg.display(),
            v.trim()
        ))),
        None => Ok(()),
    }
}

/// Removes YAML tags (`!Template`, `!TemplateMetadata`): they only name Python classes.
fn untag(v: serde_yaml_ng::Value) -> serde_yaml_ng::Value {
    use serde_yaml_ng::Value as Y;
    match v {
        Y::Tagged(t) => untag(t.value),
        Y::Mapping(m) => Y::Mapping(m.into_iter().map(|(k, v)| (k, untag(v))).collect()),
        Y::Sequence(s) => Y::Sequence(s.into_iter().map(untag).collect()),
        other => other,
    }
}

/// Reads a promptsource `templates.yaml`.
pub fn load(file: &Path) -> Result<TemplateSet, DataError> {
    let shown = file.display().to_string();
    let text = std::fs::read_to_string(file).map_err(|source| DataError::Io {
        path: shown.clone(),
        source,
    })?;
    let bad = |reason: String| DataError::Other(format!("{shown}: {reason}"));
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).map_err(|e| bad(format!("not YAML: {e}")))?;
    let doc = untag(doc);
    let map = doc
        .get("templates")
        .and_then(|t| t.as_mapping())
        .ok_or_else(|| bad("no `templates:` mapping".into()))?;
    let mut templates = Vec::with_capacity(map.len());
    for (_, t) in map {
        let t: Template =
            serde_yaml_ng::from_value(t.clone()).map_err(|e| bad(format!("a template is malformed: {e}")))?;
        templates.push(t);
    }
    Ok(TemplateSet {
        file: file.to_path_buf(),
        templates,
    })
}

/// Which templates of a set are used.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Only templates whose metadata says `original_task: true` (the T0 evaluation).
    pub original_task: bool,
    /// Template names to use; all when empty.
    pub include: Vec<String>,
    /// Template names to leave out.
    pub ignore: Vec<String>,
}

impl TemplateSet {
    /// The selected templates, in file order. Names in `include`/`ignore` that the set
    /// does not have are errors (a typo would otherwise silently change the data).
    pub fn select(&self, sel: &Selection) -> Result<Vec<&Template>, DataError> {
        let names: Vec<&str> = self.templates.iter().map(|t| t.name.as_str()).collect();
        for n in sel.include.iter().chain(&sel.ignore) {
            if !names.contains(&n.as_str()) {
                return Err(DataError::Other(format!(
                    "{}: no template named {n:?}; it has: {}",
                    self.file.display(),
                    names
                        .iter()
                        .map(|n| format!("{n:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let out: Vec<&Template> = self
            .templates
            .iter()
            .filter(|t| !sel.original_task || t.metadata.original_task == Some(true))
            .filter(|t| sel.include.is_empty() || sel.include.contains(&t.name))
            .filter(|t| !sel.ignore.contains(&t.name))
            .collect();
        if out.is_empty() {
            return Err(DataError::Other(format!(
                "{}: the selection leaves no template",
                self.file.display()
            )));
        }
        Ok(out)
    }
}

thread_local! {
    /// The generator behind `choice`, reset before each rendering (see the module doc).
    static CHOICE_RNG: RefCell<ChaCha8Rng> = RefCell::new(ChaCha8Rng::seed_from_u64(0));
}

/// Python's `str()` of a value, as Jinja2 prints it.
fn py_str(v: &Value) -> String {
    match v.kind() {
        ValueKind::Undefined => String::new(),
        _ => py_repr_inner(v, false),
    }
}

fn py_repr_inner(v: &Value, quoted: bool) -> String {
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => "None".into(),
        ValueKind::Bool => if v.is_true() { "True" } else { "False" }.into(),
        ValueKind::String => {
            let s = v.as_str().unwrap_or_default();
            if quoted {
                if s.contains('\'') && !s.contains('"') {
                    format!("\"{s}\"")
                } else {
                    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
                }
            } else {
                s.to_string()
            }
        }
        ValueKind::Number => match f64::try_from(v.clone()) {
            Ok(f) if v.as_i64().is_none() => {
                let s = format!("{f:?}");
                if s == "inf" || s == "-inf" || s == "NaN" {
                    s.to_lowercase()
                } else {
                    s
                }
            }
            _ => v.to_string(),
        },
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<String> = v
                .try_iter()
                .map(|it| it.map(|x| py_repr_inner(&x, true)).collect())
                .unwrap_or_default();
            format!("[{}]", items.join(", "))
        }
        ValueKind::Map => {
            let items: Vec<String> = v
                .try_iter()
                .map(|it| {
                    it.map(|k| {
                        let val = v.get_item(&k).unwrap_or_default();
                        format!("{}: {}", py_repr_inner(&k, true), py_repr_inner(&val, true))
                    })
                    .collect()
                })
                .unwrap_or_default();
            format!("{{{}}}", items.join(", "))
        }
        _ => v.to_string(),
    }
}

/// Jinja2's `truncate(length, killwords=False, end='...', leeway=5)`, in characters.
fn truncate(s: String, length: Option<usize>) -> String {
    let length = length.unwrap_or(255);
    let n = s.chars().count();
    if n <= length + 5 {
        return s;
    }
    let head: String = s.chars().take(length.saturating_sub(3)).collect();
    let cut = match head.rfind(' ') {
        Some(i) => head[..i].to_string(),
        None => head,
    };
    cut + "..."
}

/// Methods Python lists and strings have that minijinja-contrib's pycompat lacks.
fn extra_methods(state: &mut State, value: &Value, method: &str, args: &[Value]) -> Result<Value, Error> {
    match (value.kind(), method) {
        (ValueKind::Seq, "index") => {
            let [what] = args else {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "index() takes one argument",
                ));
            };
            for (i, item) in value.try_iter()?.enumerate() {
                if item == *what {
                    return Ok(Value::from(i));
                }
            }
            Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("{} is not in list", py_repr_inner(what, true)),
            ))
        }
        (ValueKind::String, "index") => {
            let [what] = args else {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "index() takes one argument",
                ));
            };
            let (s, w) = (
                value.as_str().unwrap_or_default(),
                what.as_str().unwrap_or_default(),
            );
            match s.find(w) {
                Some(b) => Ok(Value::from(s[..b].chars().count())),
                None => Err(Error::new(ErrorKind::InvalidOperation, "substring not found")),
            }
        }
        _ => minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args),
    }
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_unknown_method_callback(extra_methods);
    env.set_formatter(|out, _state, value| {
        out.write_str(&py_str(value))
            .map_err(|e| Error::new(ErrorKind::WriteFailure, e.to_string()))
    });
    env.add_filter("string", |v: Value| py_str(&v));
    env.add_filter("truncate", |s: String, n: Option<usize>| truncate(s, n));
    env.add_filter("choice", |v: Value| -> Result<Value, Error> {
        let items: Vec<Value> = v.try_iter()?.collect();
        if items.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "choice() of an empty sequence",
            ));
        }
        let i = CHOICE_RNG.with(|r| r.borrow_mut().random_range(0..items.len()));
        Ok(items[i].clone())
    });
    env.add_filter("most_frequent", |v: Value| -> Result<Value, Error> {
        let items: Vec<Value> = v.try_iter()?.collect();
        if items.is_empty() {
            return Ok(Value::from(()));
        }
        let mut counts: Vec<(Value, usize)> = vec![];
        for it in items {
            match counts.iter_mut().find(|(k, _)| *k == it) {
                Some((_, c)) => *c += 1,
                None => counts.push((it, 1)),
            }
        }
        let max = counts.iter().map(|(_, c)| *c).max().unwrap_or(0);
        Ok(Value::from(
            counts
                .into_iter()
                .filter(|(_, c)| *c == max)
                .map(|(k, _)| k)
                .collect::<Vec<_>>(),
        ))
    });
    env.add_function("zip", |a: Value, b: Value| -> Result<Value, Error> {
        let pairs: Vec<Value> = a
            .try_iter()?
            .zip(b.try_iter()?)
            .map(|(x, y)| Value::from(vec![x, y]))
            .collect();
        Ok(Value::from(pairs))
    });
    env
}

/// Renders templates on dataset rows.
pub struct Renderer {
    env: Environment<'static>,
}

impl Default for Renderer {
    fn default() -> Self {
        Renderer { env: environment() }
    }
}

/// A row with `|||` protected in its top-level strings (promptsource's `_escape_pipe`).
fn protect(row: &serde_json::Map<String, serde_json::Value>) -> serde_json::Map<String, serde_json::Value> {
    row.iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => (
                k.clone(),
                serde_json::Value::String(s.replace(PIPE, PIPE_PROTECTOR)),
            ),
            other => (k.clone(), other.clone()),
        })
        .collect()
}

/// The template's Jinja with apply's truncation added to every `}}`.
fn truncating(jinja: &str) -> String {
    jinja.replace("}}", &format!(" | string | truncate({TRUNCATE}) }}}}"))
}

impl Renderer {
    /// Compiles `t` once, so that rendering it on many rows does not re-parse it.
    pub fn prepare(&mut self, t: &Template) -> Result<(), DataError> {
        self.env
            .add_template_owned(format!("{}:jinja", t.id), truncating(&t.jinja))
            .map_err(|e| render_err(t, "jinja", e))?;
        if let Some(c) = &t.answer_choices {
            self.env
                .add_template_owned(format!("{}:answer_choices", t.id), c.clone())
                .map_err(|e| render_err(t, "answer_choices", e))?;
        }
        Ok(())
    }

    /// Renders part `what` of `t`: the prepared template, else `source()` parsed now.
    fn render(
        &self,
        t: &Template,
        what: &str,
        source: impl FnOnce() -> String,
        ctx: Value,
    ) -> Result<String, DataError> {
        match self.env.get_template(&format!("{}:{what}", t.id)) {
            Ok(tpl) => tpl.render(ctx),
            Err(_) => self.env.render_str(&source(), ctx),
        }
        .map_err(|e| render_err(t, what, e))
    }

    /// The answer choices of `t` for `row` (None when the template has none).
    pub fn answer_choices(
        &self,
        t: &Template,
        row: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Option<Vec<String>>, DataError> {
        self.choices_of(t, &protect(row))
    }

    /// The answer choices of `t` for an already pipe-protected row.
    fn choices_of(
        &self,
        t: &Template,
        protected: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Option<Vec<String>>, DataError> {
        let Some(expr) = &t.answer_choices else {
            return Ok(None);
        };
        let out = self.render(
            t,
            "answer_choices",
            || expr.clone(),
            Value::from(Serde(protected)),
        )?;
        Ok(Some(
            out.split(PIPE)
                .map(|c| c.trim().replace(PIPE_PROTECTOR, PIPE))
                .collect(),
        ))
    }

    /// Applies `t` to `row`: `Some(example)` when the template yields an input and a
    /// non-empty target (promptsource yields an empty target for rows a template does
    /// not apply to, e.g. unlabeled ones, and P3 drops those), else `None`.
    /// `seed` seeds the `choice` filter.
    pub fn apply(
        &self,
        t: &Template,
        row: &serde_json::Map<String, serde_json::Value>,
        seed: u64,
    ) -> Result<Option<Example>, DataError> {
        if row.contains_key("answer_choices") {
            return Err(DataError::Other(
                "a row has a field named `answer_choices`, which promptsource reserves".into(),
            ));
        }
        CHOICE_RNG.with(|r| *r.borrow_mut() = ChaCha8Rng::seed_from_u64(seed));
        let mut ctx = protect(row);
        let choices = self.choices_of(t, &ctx)?;
        ctx.insert(
            "answer_choices".into(),
            match &choices {
                Some(c) => serde_json::Value::from(c.clone()),
                None => serde_json::Value::Null,
            },
        );
        let out = self.render(t, "jinja", || truncating(&t.jinja), Value::from(Serde(&ctx)))?;
        let parts: Vec<String> = out
            .split(PIPE)
            .map(|p| p.replace(PIPE_PROTECTOR, PIPE).trim().to_string())
            .collect();
        let (input, target) = match parts.as_slice() {
            [input, target] => (input.clone(), target.clone()),
            _ => return Ok(None),
        };
        if input.is_empty() || target.is_empty() {
            return Ok(None);
        }
        let choices = match choices {
            Some(c) if c.contains(&target) => c,
            _ => vec![],
        };
        Ok(Some(Example {
            input,
            target,
            choices,
            answers: vec![],
        }))
    }
}

fn render_err(t: &Template, what: &str, e: Error) -> DataError {
    DataError::Other(format!(
        "template {:?} ({}): {what} failed to render: {e}",
        t.name, t.id
    ))
}

/// The seed of one (row, template) pair: stable across runs and thread counts.
pub fn pair_seed(seed: u64, row: usize, template: usize) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(&(row as u64).to_le_bytes());
    h.update(&(template as u64).to_le_bytes());
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().unwrap().clone()
    }

    fn tpl(jinja: &str, choices: Option<&str>) -> Template {
        Template {
            id: "t".into(),
            name: "t".into(),
            jinja: jinja.into(),
            answer_choices: choices.map(String::from),
            metadata: Metadata::default(),
        }
    }

    #[test]
    fn renders_like_promptsource() {
        let r = Renderer::default();
        let t = tpl(
            "{{premise}} Is \"{{hypothesis}}\" true? ||| {% if label != -1 %}{{ answer_choices[label] }}{% endif %}",
            Some("Yes ||| No"),
        );
        let ex = r
            .apply(
                &t,
                &row(serde_json::json!({"premise": "A |||b", "hypothesis": "c", "label": 1})),
                0,
            )
            .unwrap()
            .unwrap();
        assert_eq!(ex.input, "A |||b Is \"c\" true?");
        assert_eq!(ex.target, "No");
        assert_eq!(ex.choices, vec!["Yes", "No"]);
        // Unlabeled rows give an empty target and are dropped.
        assert!(
            r.apply(
                &t,
                &row(serde_json::json!({"premise": "p", "hypothesis": "h", "label": -1})),
                0
            )
            .unwrap()
            .is_none()
        );
    }

    #[test]
    fn python_str_methods_and_truncation() {
        let r = Renderer::default();
        let t = tpl(
            "{{ words.split(' ')[1].lower() }} {{ opts.index('b') }} {{ flag }} {{ none }} {{ opts }} ||| {{ \", \".join(opts) }}",
            None,
        );
        let ex = r
            .apply(
                &t,
                &row(
                    serde_json::json!({"words": "A Big cat", "opts": ["a", "b"], "flag": true, "none": null}),
                ),
                0,
            )
            .unwrap()
            .unwrap();
        assert_eq!(ex.input, "big 1 True None ['a', 'b']");
        assert_eq!(ex.target, "a, b");
        let long = "word ".repeat(600);
        let t = tpl("{{ text }} ||| x", None);
        let ex = r
            .apply(&t, &row(serde_json::json!({"text": long})), 0)
            .unwrap()
            .unwrap();
        assert!(
            ex.input.ends_with("word..."),
            "{}",
            &ex.input[ex.input.len() - 20..]
        );
        assert!(ex.input.chars().count() <= 2048);
    }

    #[test]
    fn choice_is_seeded() {
        let r = Renderer::default();
        let t = tpl("{{ [\"a\", \"b\", \"c\", \"d\", \"e\"] | choice }} ||| x", None);
        let row = row(serde_json::json!({}));
        let a: Vec<String> = (0..20)
            .map(|s| r.apply(&t, &row, s).unwrap().unwrap().input)
            .collect();
        let b: Vec<String> = (0..20)
            .map(|s| r.apply(&t, &row, s).unwrap().unwrap().input)
            .collect();
        assert_eq!(a, b);
        assert!(a.iter().collect::<std::collections::BTreeSet<_>>().len() > 1);
    }
}
