//! The CRD's own OpenAPI schema, applied to a policy the way the API server applies it, so
//! `kmsroute validate` and `kubectl apply` agree on every bound: one source (the `schemars`
//! attributes in `api/mod.rs`), checked in two places. The CEL rules beside the schema are
//! mirrored by `validate()` itself; `tests/validate.rs` feeds one corpus to both and to a CEL
//! evaluator with Kubernetes' libraries.
//!
//! Keywords: `type`, `nullable`, `enum`, `pattern`, `minLength`/`maxLength` (in characters, as
//! the API server counts them), `minItems`/`maxItems`, `minimum`/`maximum`, `maxProperties`,
//! `properties` (an unknown field is an error, as under `kubectl apply`'s default
//! `--validate=strict`), `additionalProperties` and `items`.

use super::{FieldError, KmsRoutePolicy};
use kube::CustomResourceExt;
use regex::Regex;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// The generated schema of `spec`, built once.
pub fn spec_schema() -> Option<&'static Value> {
    static SCHEMA: OnceLock<Option<Value>> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let crd = serde_json::to_value(KmsRoutePolicy::crd()).ok()?;
            crd.pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec")
                .cloned()
        })
        .as_ref()
}

/// Every way `value` breaks `schema`, with field paths under `path`.
pub fn check(value: &Value, schema: &Value, path: &str, out: &mut Vec<FieldError>) {
    let mut err = |message: String| {
        out.push(FieldError {
            path: path.to_string(),
            message,
        })
    };
    if value.is_null() {
        if !schema
            .get("nullable")
            .and_then(Value::as_bool)
            .unwrap_or(false)
        {
            err("must not be null".into());
        }
        return;
    }
    let ty = schema.get("type").and_then(Value::as_str).unwrap_or("");
    let type_ok = match ty {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        _ => true,
    };
    if !type_ok {
        err(format!("must be of type {ty}, not {}", kind_of(value)));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let names: Vec<String> = allowed.iter().map(Value::to_string).collect();
        err(format!(
            "{value} is not one of the supported values: {}",
            names.join(", ")
        ));
    }
    let count = |k: &str| schema.get(k).and_then(Value::as_u64);
    for message in bounds(value, schema) {
        err(message);
    }
    match value {
        Value::Array(items) => {
            if let Some(max) = count("maxItems")
                && items.len() as u64 > max
            {
                err(format!(
                    "must have at most {max} items ({} given)",
                    items.len()
                ));
            }
            if let Some(min) = count("minItems")
                && (items.len() as u64) < min
            {
                err(format!("must have at least {min} items"));
            }
            if let Some(s) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    check(v, s, &format!("{path}[{i}]"), out);
                }
            }
        }
        Value::Object(map) => {
            if let Some(max) = count("maxProperties")
                && map.len() as u64 > max
            {
                err(format!(
                    "must have at most {max} entries ({} given)",
                    map.len()
                ));
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|v| v.is_object());
            for (k, v) in map {
                let p = if additional.is_some() {
                    format!("{path}[{k}]")
                } else {
                    format!("{path}.{k}")
                };
                match (props.and_then(|p| p.get(k)), additional) {
                    (Some(s), _) | (None, Some(s)) => check(v, s, &p, out),
                    (None, None) => {
                        out.push(unknown_field(&p, props.unwrap_or(&Default::default())))
                    }
                }
            }
        }
        _ => {}
    }
}

/// What a string's or a number's schema bounds say of it: lengths in characters (as
/// Kubernetes counts them), the pattern, the minimum and maximum.
fn bounds(value: &Value, schema: &Value) -> Vec<String> {
    let num = |k: &str| schema.get(k).and_then(Value::as_f64);
    let count = |k: &str| schema.get(k).and_then(Value::as_u64);
    let mut out = Vec::new();
    let mut err = |m: String| out.push(m);
    match value {
        Value::String(s) => {
            let chars = s.chars().count() as u64;
            if let Some(max) = count("maxLength")
                && chars > max
            {
                err(format!(
                    "may not be longer than {max} characters (is {chars})"
                ));
            }
            if let Some(min) = count("minLength")
                && chars < min
            {
                err(format!("must be at least {min} characters long"));
            }
            if let Some(p) = schema.get("pattern").and_then(Value::as_str)
                && !matches(p, s)
            {
                err(format!("{s:?} does not match the pattern {p}"));
            }
        }
        Value::Number(n) => {
            let v = n.as_f64().unwrap_or(0.0);
            if let Some(max) = num("maximum")
                && v > max
            {
                err(format!("must be at most {max}, not {n}"));
            }
            if let Some(min) = num("minimum")
                && v < min
            {
                err(format!("must be at least {min}, not {n}"));
            }
        }
        _ => {}
    }
    out
}

/// Removes the fields `schema` does not know, as the API server prunes them, so the rest can
/// still be read and checked, and reports each one (what `kubectl apply` refuses).
pub fn prune_unknown(value: &mut Value, schema: &Value, path: &str, out: &mut Vec<FieldError>) {
    match value {
        Value::Object(map) => {
            let Some(props) = schema.get("properties").and_then(Value::as_object) else {
                return; // a free-form map (tags)
            };
            map.retain(|k, _| {
                let known = props.contains_key(k);
                if !known {
                    out.push(unknown_field(&format!("{path}.{k}"), props));
                }
                known
            });
            for (k, v) in map.iter_mut() {
                if let Some(s) = props.get(k) {
                    prune_unknown(v, s, &format!("{path}.{k}"), out);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, v) in items.iter_mut().enumerate() {
                    prune_unknown(v, s, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

fn unknown_field(path: &str, known: &serde_json::Map<String, Value>) -> FieldError {
    FieldError {
        path: path.to_string(),
        message: format!(
            "unknown field; known fields here: {}",
            known.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `pattern` as the API server runs it (Go's RE2: no look-around or back-references, which
/// Rust's `regex` does not have either). Compiled once per pattern.
fn matches(pattern: &str, s: &str) -> bool {
    static CACHE: OnceLock<Mutex<HashMap<String, Option<Regex>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    cache
        .entry(pattern.to_string())
        .or_insert_with(|| Regex::new(pattern).ok())
        .as_ref()
        .is_some_and(|re| re.is_match(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(value: Value, schema: Value) -> Vec<String> {
        let mut out = Vec::new();
        check(&value, &schema, "spec", &mut out);
        out.into_iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn every_keyword_reports_at_its_path_and_all_errors_come_at_once() {
        let schema = json!({"type": "object", "properties": {
            "a": {"type": "array", "maxItems": 2, "items": {"type": "string", "maxLength": 3, "pattern": "^[a-z]+$"}},
            "n": {"type": "integer", "minimum": 1.0, "maximum": 5.0},
            "e": {"type": "string", "enum": ["X", "Y"]},
            "m": {"type": "object", "maxProperties": 1, "additionalProperties": {"type": "string", "maxLength": 2}},
        }});
        let e = errors(
            json!({"a": ["abcd", "B", "c"], "n": 9, "e": "Z", "m": {"k": "vvv", "j": "x"}, "zz": 1}),
            schema,
        );
        let want = [
            "spec.a: must have at most 2 items (3 given)",
            "spec.a[0]: may not be longer than 3 characters (is 4)",
            "spec.a[1]: \"B\" does not match the pattern ^[a-z]+$",
            "spec.n: must be at most 5, not 9",
            "spec.e: \"Z\" is not one of the supported values: \"X\", \"Y\"",
            "spec.m: must have at most 1 entries (2 given)",
            "spec.m[k]: may not be longer than 2 characters (is 3)",
        ];
        for w in want {
            assert!(e.iter().any(|x| x == w), "missing {w:?} in {e:#?}");
        }
        assert!(e.iter().any(|x| x.starts_with("spec.zz: unknown field")));
        assert_eq!(e.len(), want.len() + 1, "{e:#?}");
    }

    #[test]
    fn lengths_count_characters_not_bytes_and_types_are_checked() {
        let s = json!({"type": "string", "maxLength": 2});
        assert!(errors(json!("éé"), s.clone()).is_empty());
        assert_eq!(
            errors(json!(3), s),
            ["spec: must be of type string, not number"]
        );
        assert_eq!(
            errors(json!(null), json!({"type": "string"})),
            ["spec: must not be null"]
        );
        assert!(errors(json!(null), json!({"type": "string", "nullable": true})).is_empty());
    }

    #[test]
    fn pruning_keeps_known_fields_only_and_names_the_others() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}}}}});
        let mut v = json!({"a": {"b": "x", "c": 1}, "d": 2});
        let mut out = Vec::new();
        prune_unknown(&mut v, &schema, "spec", &mut out);
        assert_eq!(v, json!({"a": {"b": "x"}}));
        let paths: Vec<&str> = out.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["spec.d", "spec.a.c"]);
    }
}
