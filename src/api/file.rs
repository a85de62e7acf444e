//! Reading policies from text: multi-document YAML (or JSON), as `kubectl apply -f` takes it.
//! Unknown fields are reported (an API server would prune a typo such as `conflictPolicyy`,
//! `kubectl apply` refuses it), by walking each document against the CRD's own OpenAPI schema,
//! and the rest of the document is still read and checked: every error at once.

use super::schema::{self, spec_schema};
use super::{FieldError, KmsRoutePolicy, Validated, validate_policy};
use crate::catalog::Cloud;
use serde::Deserialize;
use serde_json::Value;

/// One document of a policy file: the parsed policy, or why it is not one.
#[derive(Debug)]
pub struct Document {
    /// 1-based position in the file.
    pub index: usize,
    /// `metadata.name` when it could be read.
    pub name: Option<String>,
    /// The policy, or why the document is not one (unknown fields, wrong types).
    pub policy: Result<KmsRoutePolicy, Vec<FieldError>>,
    /// The policy read with unknown fields pruned, when that much could be read: what
    /// [`Document::check`] validates so the other errors are not hidden behind those.
    read: Option<KmsRoutePolicy>,
}

impl Document {
    /// How messages name the document: its `metadata.name`, or its place in the file.
    pub fn label(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("document {}", self.index))
    }
}

impl Document {
    /// Every error in this document: those found reading it and those `validate_policy` finds
    /// in what could be read (one per field path; the more specific message wins).
    pub fn check(&self, cloud: Cloud) -> Result<Validated, Vec<FieldError>> {
        match (&self.policy, &self.read) {
            (Ok(p), _) => validate_policy(p, cloud),
            (Err(e), None) => Err(e.clone()),
            (Err(e), Some(p)) => {
                let mut errors = e.clone();
                if let Err(more) = validate_policy(p, cloud) {
                    // A field already faulted, or one inside it, keeps its first message.
                    let covered = |m: &FieldError, x: &FieldError| {
                        x.path == m.path
                            || x.path.starts_with(&format!("{}.", m.path))
                            || x.path.starts_with(&format!("{}[", m.path))
                    };
                    for m in more {
                        if !errors.iter().any(|x| covered(&m, x)) {
                            errors.push(m);
                        }
                    }
                }
                Err(errors)
            }
        }
    }
}

/// The text is not YAML at all (a policy that is YAML but not valid is a [`Document`] with
/// its errors instead).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not valid YAML: {0}")]
pub struct NotYaml(pub String);

/// Parses every non-empty document in `text`. A key given twice in one mapping is an error
/// (YAML parsers keep the last one silently), and so is a `metadata.name` that an earlier
/// document already used (one of the two would overwrite the other in a cluster).
pub fn parse_policies(text: &str) -> Result<Vec<Document>, NotYaml> {
    let schema = spec_schema();
    let mut docs: Vec<Document> = Vec::new();
    // The parser refuses a key given twice in one mapping (YAML parsers often keep the
    // last one silently); `StrictValue` says so too, for any other source of a value.
    let values =
        serde_saphyr::from_multiple::<StrictValue>(text).map_err(|e| NotYaml(e.to_string()))?;
    // What `kubectl get krp -o yaml` prints is one `kind: List` holding the policies: its items
    // are read as documents of their own.
    let values = values
        .into_iter()
        .flat_map(|StrictValue(v)| match list_items(&v) {
            Some(items) => items,
            None => vec![v],
        });
    for (i, value) in values.enumerate() {
        let index = i + 1;
        if value.is_null() {
            continue;
        }
        let name = value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .map(str::to_string);
        let (mut policy, mut read) = parse_one(value, schema);
        if let Some(n) = &name
            && let Some(first) = docs.iter().find(|d| d.name.as_deref() == Some(n))
        {
            policy = Err(vec![FieldError {
                path: "metadata.name".into(),
                message: format!("{n:?} is also the name of document {}", first.index),
            }]);
            read = None;
        }
        docs.push(Document {
            index,
            name,
            policy,
            read,
        });
    }
    Ok(docs)
}

/// The items of a list document: `kind: List` (`apiVersion: v1`, what `kubectl get -o yaml`
/// prints) or `kind: KmsRoutePolicyList` (the API's own list). `None` for any other document.
fn list_items(value: &Value) -> Option<Vec<Value>> {
    let kind = value.get("kind").and_then(Value::as_str)?;
    let api_version = value.get("apiVersion").and_then(Value::as_str)?;
    let is_list = (kind == "List" && api_version == "v1")
        || (kind == "KmsRoutePolicyList" && api_version == "kmsroute.io/v1alpha1");
    if !is_list {
        return None;
    }
    Some(
        value
            .get("items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
    )
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

/// The policy (or why not), and the policy read with unknown fields pruned.
fn parse_one(
    mut value: Value,
    schema: Option<&Value>,
) -> (
    Result<KmsRoutePolicy, Vec<FieldError>>,
    Option<KmsRoutePolicy>,
) {
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
        return (
            Err(err("kind", format!("{kind:?} is not KmsRoutePolicy"))),
            None,
        );
    }
    if api_version != "kmsroute.io/v1alpha1" {
        return (
            Err(err(
                "apiVersion",
                format!("{api_version:?} is not kmsroute.io/v1alpha1"),
            )),
            None,
        );
    }
    // The rest of the schema is applied by `validate_policy`, on what is left.
    let mut unknown = Vec::new();
    if let (Some(spec), Some(schema)) = (value.get_mut("spec"), schema) {
        schema::prune_unknown(spec, schema, "spec", &mut unknown);
    }
    match typed(value.clone()) {
        Ok(p) if unknown.is_empty() => (Ok(p), None),
        Ok(p) => (Err(unknown), Some(p)),
        Err(e) => {
            // A field serde cannot read (a wrong enum value) would hide every other error: the
            // schema names them all, as the API server does, and the policy is read again
            // without the fields it refused so the rest is still checked.
            let mut refused = Vec::new();
            if let (Some(spec), Some(schema)) = (value.get("spec"), schema) {
                schema::check(spec, schema, "spec", &mut refused);
            }
            let mut without = value;
            let mut paths: Vec<Vec<Step>> = refused.iter().map(|e| steps(&e.path)).collect();
            // Later array items first, so removing one does not shift the next.
            paths.sort_by(|a, b| b.cmp(a));
            for path in &paths {
                remove(&mut without, path);
            }
            let read = typed(without).ok();
            // serde's own words for the field it stopped at, the schema's for the others.
            refused.retain(|r| !e.iter().any(|x| x.path == r.path));
            unknown.extend(e);
            unknown.extend(refused);
            (Err(unknown), read)
        }
    }
}

/// The policy, or the path of the field that stops serde (`spec.conflictPolicy`, not just
/// `spec`).
fn typed(value: Value) -> Result<KmsRoutePolicy, Vec<FieldError>> {
    serde_path_to_error::deserialize::<_, KmsRoutePolicy>(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path.is_empty() || path == "." {
            "spec".to_string()
        } else {
            path
        };
        vec![FieldError {
            path,
            message: e.into_inner().to_string(),
        }]
    })
}

/// One step of a field path: `.name`, `[3]` or `[key]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Key(String),
    Index(usize),
}

/// `spec.selector.subscriptions[0]` as steps.
fn steps(path: &str) -> Vec<Step> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (name, rest) = part.split_once('[').unwrap_or((part, ""));
        if !name.is_empty() {
            out.push(Step::Key(name.to_string()));
        }
        for index in rest.split('[').map(|i| i.trim_end_matches(']')) {
            if index.is_empty() {
                continue;
            }
            out.push(match index.parse() {
                Ok(i) => Step::Index(i),
                Err(_) => Step::Key(index.to_string()),
            });
        }
    }
    out
}

/// Removes the field at `path` (an array item or an object member), if it is there.
fn remove(value: &mut Value, path: &[Step]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut at = value;
    for step in parents {
        let next = match (step, at) {
            (Step::Key(k), Value::Object(m)) => m.get_mut(k),
            (Step::Index(i), Value::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(v) => at = v,
            None => return,
        }
    }
    match (last, at) {
        (Step::Key(k), Value::Object(m)) => {
            m.remove(k);
        }
        (Step::Index(i), Value::Array(a)) if *i < a.len() => {
            a.remove(*i);
        }
        _ => {}
    }
}
