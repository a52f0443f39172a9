//! Manifest values: the typed, schema-checked form of KDL entry values.
//!
//! Values are what content keys are computed from, so their canonical form (see
//! `plan::key`) must not depend on how the user spelled them: `5e-3` and `0.005` are
//! the same float, and an int given where the schema wants a float becomes a float.

use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    List(Vec<Value>),
    Map(BTreeMap<String, Value>),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    pub fn as_float(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }
    pub fn as_map(&self) -> Option<&BTreeMap<String, Value>> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// Canonical JSON text: maps sorted by key (BTreeMap), floats in shortest
    /// round-trip form with `-0.0` folded into `0.0`, no whitespace. This is the exact
    /// byte string content keys hash, so it must never change for a given value.
    pub fn canonical(&self) -> String {
        let mut out = String::new();
        self.write_canonical(&mut out);
        out
    }

    fn write_canonical(&self, out: &mut String) {
        match self {
            Value::Str(s) => out.push_str(&serde_json::to_string(s).expect("string encodes")),
            Value::Int(i) => out.push_str(&i.to_string()),
            Value::Float(f) => out.push_str(&canonical_float(*f)),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::List(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    v.write_canonical(out);
                }
                out.push(']');
            }
            Value::Map(m) => {
                out.push('{');
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::to_string(k).expect("string encodes"));
                    out.push(':');
                    v.write_canonical(out);
                }
                out.push('}');
            }
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Str(s) => serde_json::Value::String(s.clone()),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::List(l) => serde_json::Value::Array(l.iter().map(Value::to_json).collect()),
            Value::Map(m) => {
                serde_json::Value::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
        }
    }

    /// Inverse of [`Value::to_json`] for values read back from the store or lockfile.
    /// JSON numbers with a fraction or exponent become floats, the rest ints.
    pub fn from_json(j: &serde_json::Value) -> Option<Value> {
        Some(match j {
            serde_json::Value::String(s) => Value::Str(s.clone()),
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Value::Int(i)
                } else {
                    Value::Float(n.as_f64()?)
                }
            }
            serde_json::Value::Array(a) => {
                Value::List(a.iter().map(Value::from_json).collect::<Option<_>>()?)
            }
            serde_json::Value::Object(o) => Value::Map(
                o.iter()
                    .map(|(k, v)| Some((k.clone(), Value::from_json(v)?)))
                    .collect::<Option<_>>()?,
            ),
            serde_json::Value::Null => return None,
        })
    }

    /// The name of this value's type as the schema and diagnostics spell it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "string",
            Value::Int(_) => "integer",
            Value::Float(_) => "float",
            Value::Bool(_) => "boolean",
            Value::List(_) => "list",
            Value::Map(_) => "map",
        }
    }
}

/// Shortest round-trip decimal for an f64, always with a fraction or exponent so it
/// can never be confused with an integer; `-0.0` is folded into `0.0`.
pub fn canonical_float(f: f64) -> String {
    if f == 0.0 {
        return "0.0".into();
    }
    if !f.is_finite() {
        return if f.is_nan() {
            "NaN".into()
        } else if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let mut buf = ryu::Buffer::new();
    buf.format_finite(f).to_string()
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{}", canonical_float(*x)),
            Value::Bool(b) => write!(f, "#{b}"),
            Value::List(l) => {
                write!(f, "[")?;
                for (i, v) in l.iter().enumerate() {
                    if i > 0 {
                        write!(f, " ")?;
                    }
                    write!(f, "{v}")?;
                }
                write!(f, "]")
            }
            Value::Map(_) => write!(f, "{}", self.canonical()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_normalized() {
        assert_eq!(Value::Float(5e-3).canonical(), Value::Float(0.005).canonical());
        assert_eq!(Value::Float(-0.0).canonical(), "0.0");
        assert_eq!(Value::Float(1000.0).canonical(), "1000.0");
        assert_ne!(Value::Float(1.0).canonical(), Value::Int(1).canonical());
    }

    #[test]
    fn maps_are_sorted() {
        let mut a = BTreeMap::new();
        a.insert("b".to_string(), Value::Int(1));
        a.insert("a".to_string(), Value::Bool(true));
        assert_eq!(Value::Map(a).canonical(), r#"{"a":true,"b":1}"#);
    }
}
