//! Reading policies from text: multi-document YAML (or JSON), as `kubectl apply -f` takes it.
//! Unknown fields are reported (an API server would silently prune a typo such as
//! `conflictPolicyy`), by walking each document against the CRD's own OpenAPI schema.

use super::{FieldError, KmsRoutePolicy};
use kube::CustomResourceExt;
use serde::Deserialize;
use serde_json::Value;

/// One document of a policy file: the parsed policy, or why it is not one.
#[derive(Debug)]
pub struct Document {
    /// 1-based position in the file.
    pub index: usize,
    /// `metadata.name` when it could be read.
    pub name: Option<String>,
    pub policy: Result<KmsRoutePolicy, Vec<FieldError>>,
}

/// Parses every non-empty document in `text`. A key given twice in one mapping is an error
/// (YAML parsers keep the last one silently), and so is a `metadata.name` that an earlier
/// document already used (one of the two would overwrite the other in a cluster).
pub fn parse_policies(text: &str) -> Result<Vec<Document>, String> {
    let schema = spec_schema();
    let mut docs: Vec<Document> = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let value = match StrictValue::deserialize(de) {
            Ok(StrictValue(Value::Null)) => continue,
            Ok(StrictValue(v)) => v,
            Err(e) => return Err(format!("document {index}: not valid YAML: {e}")),
        };
        let name = value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .map(str::to_string);
        let mut policy = parse_one(value, schema);
        if let Some(n) = &name
            && let Some(first) = docs.iter().find(|d| d.name.as_deref() == Some(n))
        {
            policy = Err(vec![FieldError {
                path: "metadata.name".into(),
                message: format!("{n:?} is also the name of document {}", first.index),
            }]);
        }
        docs.push(Document {
            index,
            name,
            policy,
        });
    }
    Ok(docs)
}

/// A JSON value read from YAML that refuses a mapping with the same key twice.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.into()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        StrictValue::deserialize(d).map(|v| v.0)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let StrictValue(v) = map.next_value()?;
            if out.insert(key.clone(), v).is_some() {
                return Err(serde::de::Error::custom(format!(
                    "duplicate key {key:?} (YAML would keep only the last one)"
                )));
            }
        }
        Ok(Value::Object(out))
    }
}

fn parse_one(value: Value, schema: Option<&Value>) -> Result<KmsRoutePolicy, Vec<FieldError>> {
    let err = |path: &str, message: String| {
        vec![FieldError {
            path: path.into(),
            message,
        }]
    };
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
    if kind != "KmsRoutePolicy" {
        return Err(err("kind", format!("{kind:?} is not KmsRoutePolicy")));
    }
    if api_version != "kmsroute.io/v1alpha1" {
        return Err(err(
            "apiVersion",
            format!("{api_version:?} is not kmsroute.io/v1alpha1"),
        ));
    }
    let mut unknown = Vec::new();
    if let (Some(spec), Some(schema)) = (value.get("spec"), schema) {
        unknown_fields(spec, schema, "spec", &mut unknown);
    }
    if !unknown.is_empty() {
        return Err(unknown);
    }
    // The path of the offending field (`spec.conflictPolicy`), not just `spec`.
    serde_path_to_error::deserialize::<_, KmsRoutePolicy>(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path.is_empty() || path == "." {
            "spec".to_string()
        } else {
            path
        };
        err(&path, e.into_inner().to_string())
    })
}

/// The CRD's OpenAPI schema for `spec`, generated once (schema generation dominated the cost
/// of parsing a small policy: 41 inputs/s under the fuzzer).
fn spec_schema() -> Option<&'static Value> {
    static SCHEMA: std::sync::OnceLock<Option<Value>> = std::sync::OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let crd = serde_json::to_value(KmsRoutePolicy::crd()).ok()?;
            crd.pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec")
                .cloned()
        })
        .as_ref()
}

fn unknown_fields(value: &Value, schema: &Value, path: &str, out: &mut Vec<FieldError>) {
    match value {
        Value::Object(map) => {
            let Some(props) = schema.get("properties").and_then(Value::as_object) else {
                return; // a free-form map (tags)
            };
            for (k, v) in map {
                let p = format!("{path}.{k}");
                match props.get(k) {
                    Some(s) => unknown_fields(v, s, &p, out),
                    None => out.push(FieldError {
                        path: p,
                        message: format!(
                            "unknown field; known fields here: {}",
                            props.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    }),
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    unknown_fields(v, s, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}
