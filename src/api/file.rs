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

/// Parses every non-empty document in `text`.
pub fn parse_policies(text: &str) -> Result<Vec<Document>, String> {
    let schema = spec_schema();
    let mut docs = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let value = match Value::deserialize(de) {
            Ok(Value::Null) => continue,
            Ok(v) => v,
            Err(e) => return Err(format!("document {index}: not valid YAML: {e}")),
        };
        let name = value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .map(str::to_string);
        docs.push(Document {
            index,
            name,
            policy: parse_one(value, schema),
        });
    }
    Ok(docs)
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
    serde_json::from_value::<KmsRoutePolicy>(value).map_err(|e| err("spec", format!("{e}")))
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
