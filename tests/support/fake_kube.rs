//! An in-process fake Kubernetes API server over real HTTP, for kube's real `Client`. It keeps
//! the semantics the controller relies on: resourceVersion (409 on a stale one), generation
//! bumps on spec changes, the status subresource, finalizers and deletionTimestamp, list +
//! watch from a resourceVersion with bookmarks, merge / JSON / apply patches, events.k8s.io
//! Events, coordination.k8s.io Leases, and rejection of objects that fail the CRD's schema.

#![allow(dead_code)]
// An HTTP error response is the natural error value of a request handler here.
#![allow(clippy::result_large_err)]

/// Kubernetes RBAC for impersonated requests.
#[path = "rbac.rs"]
pub mod rbac;

use axum::Router;
use axum::body::{Body, Bytes, to_bytes};
use axum::extract::State;
use axum::http::{Method, Request, Response, StatusCode};
use kmsroute::api::KmsRoutePolicy;
use kube::CustomResourceExt;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;

const POLICIES: &str = "/apis/kmsroute.io/v1alpha1/kmsroutepolicies";

#[derive(Default)]
struct Store {
    rv: u64,
    /// (collection, name) -> object; collection = path up to the resource plural.
    objects: BTreeMap<(String, String), Value>,
    /// Policy watch history: (rv, type, object).
    history: Vec<(u64, String, Value)>,
    /// Kubernetes faults: the next N status writes answer 409 (issue 8 uses this too).
    conflict_status_writes: u32,
    /// Event creations still to be answered 500 (an API server hiccup).
    failing_event_creates: u32,
    /// While true, every request answers 503.
    unavailable: bool,
    /// Namespaces that do not exist: creating anything in one answers 404, as the real API
    /// server does (every other namespace is taken to exist).
    missing_namespaces: std::collections::BTreeSet<String>,
}

pub struct FakeKube {
    pub addr: SocketAddr,
    state: Arc<Shared>,
}

struct Shared {
    store: Mutex<Store>,
    events: broadcast::Sender<(u64, String, Value)>,
    /// Bumping this ends every open watch (a dropped connection).
    cut: broadcast::Sender<()>,
    schema: Value,
    /// The CRD's CEL rules, compiled once.
    rules: kube_cel::CompiledSchema,
}

/// What the real API server checks of an events.k8s.io/v1 Event
/// (`k8s.io/kubernetes/pkg/apis/core/validation/events.go`, `ValidateEventCreate` for the
/// events.k8s.io group): the required fields, `type` Normal or Warning, `reason`, `action`,
/// `reportingController` and `reportingInstance` at most 128 characters, and `note` at most
/// 1,024 bytes (`NoteLengthLimit`). The 422's message names every field as the server does.
fn check_event(obj: &Value) -> Result<(), Response<Body>> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let text = |k: &str| obj.get(k).and_then(Value::as_str).unwrap_or_default();
    let mut causes: Vec<String> = Vec::new();
    if obj.get("eventTime").is_none_or(Value::is_null) {
        causes.push("eventTime: Required value".into());
    }
    for field in [
        "reportingController",
        "reportingInstance",
        "action",
        "reason",
    ] {
        let v = text(field);
        if v.is_empty() {
            causes.push(format!("{field}: Required value"));
        } else if v.len() > 128 {
            causes.push(format!("{field}: Too long: may not be more than 128 bytes"));
        }
    }
    if !matches!(text("type"), "Normal" | "Warning") {
        causes.push(format!(
            "type: Unsupported value: {:?}: supported values: \"Normal\", \"Warning\"",
            text("type")
        ));
    }
    if text("note").len() > 1024 {
        causes.push("note: Too long: may not be more than 1024 bytes".into());
    }
    if obj.get("regarding").is_none_or(Value::is_null) {
        causes.push("regarding: Required value".into());
    }
    if causes.is_empty() {
        return Ok(());
    }
    Err(status_error(
        422,
        "Invalid",
        format!(
            "Event.events.k8s.io {name:?} is invalid: [{}]",
            causes.join(", ")
        ),
    ))
}

fn status_error(code: u16, reason: &str, message: impl Into<String>) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message.into(), "reason": reason, "code": code});
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    let mut r = Response::new(Body::from(v.to_string()));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .unwrap()
        .to_string()
}

/// One field error as the API server words it (`field: Detail`), with its cause reason.
struct Cause {
    field: String,
    reason: &'static str,
    message: String,
}

impl Cause {
    fn new(field: &str, reason: &'static str, message: String) -> Cause {
        Cause {
            field: field.to_string(),
            reason,
            message,
        }
    }
}

/// A value quoted as the API server quotes it in `Invalid value: …`.
fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => other.to_string(),
    }
}

/// Checks a value against a structural schema, worded like the API server's field errors
/// (k8s.io/apiextensions-apiserver); prunes unknown fields as it does.
fn validate(v: &mut Value, schema: &Value, path: &str, errors: &mut Vec<Cause>) {
    if v.is_null() {
        if schema.get("nullable") != Some(&json!(true)) {
            errors.push(Cause::new(
                path,
                "FieldValueRequired",
                "Required value".into(),
            ));
        }
        return;
    }
    let ty = schema.get("type").and_then(Value::as_str).unwrap_or("");
    let ok = match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        _ => true,
    };
    if !ok {
        errors.push(Cause::new(
            path,
            "FieldValueTypeInvalid",
            format!(
                "Invalid value: {}: {path} in body must be of type {ty}",
                shown(v)
            ),
        ));
        return;
    }
    if let Some(en) = schema.get("enum").and_then(Value::as_array)
        && !en.contains(v)
    {
        let supported: Vec<String> = en.iter().map(shown).collect();
        errors.push(Cause::new(
            path,
            "FieldValueNotSupported",
            format!(
                "Unsupported value: {}: supported values: {}",
                shown(v),
                supported.join(", ")
            ),
        ));
    }
    if let Some(s) = v.as_str() {
        if let Some(p) = schema.get("pattern").and_then(Value::as_str)
            && !regex::Regex::new(p).map(|r| r.is_match(s)).unwrap_or(true)
        {
            errors.push(Cause::new(
                path,
                "FieldValueInvalid",
                format!("Invalid value: {s:?}: {path} in body should match '{p}'"),
            ));
        }
        if let Some(m) = schema.get("maxLength").and_then(Value::as_u64)
            && s.chars().count() as u64 > m
        {
            errors.push(Cause::new(
                path,
                "FieldValueTooLong",
                format!("Too long: may not be more than {m} bytes"),
            ));
        }
        if let Some(m) = schema.get("minLength").and_then(Value::as_u64)
            && (s.chars().count() as u64) < m
        {
            errors.push(Cause::new(
                path,
                "FieldValueInvalid",
                format!("Invalid value: {s:?}: {path} in body should be at least {m} chars long"),
            ));
        }
    }
    if let Some(a) = v.as_array_mut() {
        if let Some(m) = schema.get("maxItems").and_then(Value::as_u64)
            && a.len() as u64 > m
        {
            errors.push(Cause::new(
                path,
                "FieldValueTooMany",
                format!("Too many: {}: must have at most {m} items", a.len()),
            ));
        }
        if let Some(m) = schema.get("minItems").and_then(Value::as_u64)
            && (a.len() as u64) < m
        {
            errors.push(Cause::new(
                path,
                "FieldValueInvalid",
                format!(
                    "Invalid value: {}: {path} in body should have at least {m} items",
                    a.len()
                ),
            ));
        }
        if let Some(items) = schema.get("items") {
            for (i, item) in a.iter_mut().enumerate() {
                validate(item, items, &format!("{path}[{i}]"), errors);
            }
        }
    }
    if let Some(o) = v.as_object_mut() {
        for r in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(k) = r.as_str()
                && !o.contains_key(k)
            {
                errors.push(Cause::new(
                    &format!("{path}.{k}"),
                    "FieldValueRequired",
                    "Required value".into(),
                ));
            }
        }
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            o.retain(|k, _| props.contains_key(k));
            for (k, val) in o.iter_mut() {
                validate(val, &props[k], &format!("{path}.{k}"), errors);
            }
        } else if let Some(ap) = schema.get("additionalProperties").filter(|a| a.is_object()) {
            for (k, val) in o.iter_mut() {
                validate(val, ap, &format!("{path}.{k}"), errors);
            }
        }
    }
}

impl Shared {
    fn emit(&self, store: &mut Store, kind: &str, obj: &Value) {
        let rv = store.rv;
        store.history.push((rv, kind.to_string(), obj.clone()));
        let _ = self.events.send((rv, kind.to_string(), obj.clone()));
    }

    /// The API server's validation of a policy write: the structural schema of spec and
    /// status, then the CRD's CEL rules (`x-kubernetes-validations`), answered as `422 Invalid`
    /// with the message and `details.causes` a real one sends. On an update, a part left as it
    /// was stored is not held to today's rules (validation ratcheting, on by default since
    /// Kubernetes 1.30): an object written under an older CRD can still get its status.
    fn check_policy(&self, obj: &mut Value, stored: Option<&Value>) -> Result<(), Response<Body>> {
        let mut errors = Vec::new();
        let unchanged =
            |obj: &Value, part: &str| stored.is_some_and(|o| o.get(part) == obj.get(part));
        for part in ["spec", "status"] {
            if unchanged(obj, part) {
                continue;
            }
            if let (Some(v), Some(s)) = (
                obj.get_mut(part),
                self.schema.pointer(&format!("/properties/{part}")),
            ) {
                validate(v, s, part, &mut errors);
            }
        }
        if obj.get("spec").is_none() {
            errors.push(Cause::new(
                "spec",
                "FieldValueRequired",
                "Required value".into(),
            ));
        }
        // CEL runs only on what is structurally valid, as on a real API server.
        if errors.is_empty()
            && !unchanged(obj, "spec")
            && let Err(cel) = kube_cel::Validator::new().validate_compiled(&self.rules, obj, None)
        {
            for e in cel.into_vec() {
                errors.push(Cause::new(
                    &e.field_path,
                    "FieldValueInvalid",
                    format!("Invalid value: \"object\": {}", e.message),
                ));
            }
        }
        if errors.is_empty() {
            return Ok(());
        }
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let listed: Vec<String> = errors
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let listed = match listed.as_slice() {
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        let causes: Vec<Value> = errors
            .iter()
            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
            .collect();
        let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("KmsRoutePolicy.kmsroute.io {name:?} is invalid: {listed}"),
            "reason": "Invalid",
            "details": {"name": name, "group": "kmsroute.io", "kind": "KmsRoutePolicy", "causes": causes},
            "code": 422});
        Err(json_response(422, &body))
    }
}

impl FakeKube {
    pub async fn start() -> FakeKube {
        let crd = serde_json::to_value(KmsRoutePolicy::crd()).unwrap();
        let schema = crd
            .pointer("/spec/versions/0/schema/openAPIV3Schema")
            .unwrap()
            .clone();
        let (events, _) = broadcast::channel(1024);
        let (cut, _) = broadcast::channel(16);
        let rules = kube_cel::compile_schema(&schema);
        let state = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            events,
            cut,
            schema,
            rules,
        });
        let app = Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeKube { addr, state }
    }

    /// Writes a kubeconfig pointing at this server into `dir` (for a `kmsroute run` process)
    /// and returns its path.
    pub fn write_kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(&path, format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\nusers:\n- name: fake\n  user:\n    token: fake\n",
            self.addr
        ))
        .unwrap();
        path
    }

    /// A kube `Client` talking to this server over HTTP.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// A client that acts as `user` in `groups` (impersonation): its requests are authorized
    /// with the RBAC objects created on this server, as a real API server would.
    pub fn client_as(&self, user: &str, groups: &[&str]) -> kube::Client {
        let mut config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        config.auth_info.impersonate = Some(user.to_string());
        config.auth_info.impersonate_groups = Some(groups.iter().map(|g| g.to_string()).collect());
        kube::Client::try_from(config).unwrap()
    }

    pub fn policy(&self, name: &str) -> Option<Value> {
        self.state
            .store
            .lock()
            .unwrap()
            .objects
            .get(&(POLICIES.to_string(), name.to_string()))
            .cloned()
    }

    /// Events recorded (events.k8s.io/v1), in creation order of their names.
    pub fn events(&self) -> Vec<Value> {
        self.state
            .store
            .lock()
            .unwrap()
            .objects
            .iter()
            .filter(|((c, _), _)| c.contains("/events.k8s.io/"))
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn lease_holder(&self, ns: &str, name: &str) -> Option<String> {
        let key = (
            format!("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"),
            name.to_string(),
        );
        self.state
            .store
            .lock()
            .unwrap()
            .objects
            .get(&key)
            .and_then(|l| {
                l.pointer("/spec/holderIdentity")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
    }

    /// Ends every open watch, as a dropped connection would.
    /// Makes a namespace not exist (creating objects in it answers 404).
    pub fn remove_namespace(&self, ns: &str) {
        self.state
            .store
            .lock()
            .unwrap()
            .missing_namespaces
            .insert(ns.to_string());
    }

    pub fn drop_watches(&self) {
        let _ = self.state.cut.send(());
    }

    /// Stores a policy as a cluster holds one written under an older, looser CRD: not checked
    /// against today's schema or CEL rules (the way an invalid spec reaches a controller).
    pub fn store_unchecked(&self, policy: &KmsRoutePolicy) {
        let mut obj = serde_json::to_value(policy).unwrap();
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        let mut store = self.state.store.lock().unwrap();
        store.rv += 1;
        let meta = obj["metadata"].as_object_mut().unwrap();
        meta.insert("resourceVersion".into(), json!(store.rv.to_string()));
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("generation".into(), json!(1));
        meta.insert("creationTimestamp".into(), json!(now()));
        store
            .objects
            .insert((POLICIES.to_string(), name), obj.clone());
        self.state.emit(&mut store, "ADDED", &obj);
    }

    /// The next `n` Event creations fail with 500 InternalError.
    pub fn fail_event_creates(&self, n: u32) {
        self.state.store.lock().unwrap().failing_event_creates = n;
    }

    pub fn fail_status_writes_with_conflict(&self, n: u32) {
        self.state.store.lock().unwrap().conflict_status_writes = n;
    }

    pub fn set_unavailable(&self, down: bool) {
        self.state.store.lock().unwrap().unavailable = down;
    }

    /// Another replica takes the Lease behind the holder's back (a network partition healed
    /// the wrong way): `holder`, renewed now, for `seconds`. The old holder's next renewal
    /// meets a new resourceVersion and another holder.
    pub fn steal_lease(&self, ns: &str, name: &str, holder: &str, seconds: i64) {
        let key = (
            format!("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"),
            name.to_string(),
        );
        let mut store = self.state.store.lock().unwrap();
        store.rv += 1;
        let rv = store.rv.to_string();
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        if let Some(lease) = store.objects.get_mut(&key) {
            lease["metadata"]["resourceVersion"] = serde_json::json!(rv);
            lease["spec"]["holderIdentity"] = serde_json::json!(holder);
            lease["spec"]["renewTime"] = serde_json::json!(now);
            lease["spec"]["acquireTime"] = serde_json::json!(now);
            lease["spec"]["leaseDurationSeconds"] = serde_json::json!(seconds);
        }
    }
}

/// Splits a request path into (collection, name, subresource).
fn parse(path: &str) -> (String, Option<String>, Option<String>) {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    // /apis/{group}/{version}[/namespaces/{ns}]/{plural}[/{name}[/{sub}]]
    let base = if segs.get(4) == Some(&"namespaces") {
        7
    } else {
        5
    };
    let collection = segs[..base.min(segs.len())].join("/");
    (
        collection,
        segs.get(base).map(|s| s.to_string()),
        segs.get(base + 1).map(|s| s.to_string()),
    )
}

fn query(uri: &axum::http::Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}

async fn handle(State(s): State<Arc<Shared>>, req: Request<Body>) -> Response<Body> {
    let method = req.method().clone();
    let uri = req.uri().clone();
    // Impersonation (kubectl --as / kube's Config::auth_info.impersonate): the request is
    // authorized as that user with the RBAC objects stored here. Without it: cluster-admin.
    let impersonated = req
        .headers()
        .get("impersonate-user")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let impersonated_groups: Vec<String> = req
        .headers()
        .get_all("impersonate-group")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body: Bytes = to_bytes(req.into_body(), 8 << 20).await.unwrap_or_default();
    if s.store.lock().unwrap().unavailable {
        return status_error(503, "ServiceUnavailable", "the API server is unavailable");
    }
    let (collection, name, sub) = parse(uri.path());
    let is_policy = collection == POLICIES;
    if let Some(user) = &impersonated {
        let watching = query(&uri, "watch").as_deref() == Some("true");
        let Some(attrs) = rbac::attributes(
            method.as_str(),
            uri.path(),
            watching,
            user,
            &impersonated_groups,
        ) else {
            return status_error(
                404,
                "NotFound",
                "the server could not find the requested resource",
            );
        };
        let rbac: Vec<Value> = {
            let store = s.store.lock().unwrap();
            store
                .objects
                .iter()
                .filter(|((c, _), _)| c.contains("/rbac.authorization.k8s.io/"))
                .map(|(_, v)| v.clone())
                .collect()
        };
        if !rbac::allowed(&rbac, &attrs) {
            return status_error(403, "Forbidden", rbac::forbidden(&attrs));
        }
    }
    if method == Method::GET && name.is_none() && query(&uri, "watch").as_deref() == Some("true") {
        return watch(s, &uri);
    }
    let parsed_body = || -> Result<Value, Response<Body>> {
        if content_type.contains("yaml") {
            serde_saphyr::from_slice(&body)
                .map_err(|e| status_error(400, "BadRequest", e.to_string()))
        } else {
            serde_json::from_slice(&body)
                .map_err(|e| status_error(400, "BadRequest", e.to_string()))
        }
    };
    let mut store = s.store.lock().unwrap();
    let key = (collection.clone(), name.clone().unwrap_or_default());
    match (method.as_str(), name.as_deref(), sub.as_deref()) {
        ("GET", None, _) => {
            let items: Vec<Value> = store
                .objects
                .iter()
                .filter(|((c, _), _)| c == &collection)
                .map(|(_, v)| v.clone())
                .collect();
            let list = json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": store.rv.to_string()}, "items": items});
            json_response(200, &list)
        }
        ("GET", Some(n), _) => match store.objects.get(&key) {
            Some(o) => json_response(200, o),
            None => status_error(404, "NotFound", format!("{n} not found")),
        },
        ("POST", None, _) => {
            let mut obj = match parsed_body() {
                Ok(v) => v,
                Err(e) => return e,
            };
            let Some(n) = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .map(str::to_string)
            else {
                return status_error(422, "Invalid", "metadata.name is required");
            };
            let key = (collection.clone(), n.clone());
            if store.objects.contains_key(&key) {
                return status_error(409, "AlreadyExists", format!("{n} already exists"));
            }
            if let Some(ns) = collection
                .split("/namespaces/")
                .nth(1)
                .and_then(|rest| rest.split('/').next())
                && store.missing_namespaces.contains(ns)
            {
                return status_error(404, "NotFound", format!("namespaces \"{ns}\" not found"));
            }
            // Like the real API server: an Event about a cluster-scoped object (no namespace in
            // `regarding`) lives in `default`, where `kubectl describe` looks for it.
            if collection.contains("/events.k8s.io/")
                && obj
                    .pointer("/regarding/namespace")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                && !collection.contains("/namespaces/default/")
            {
                return status_error(
                    422,
                    "Invalid",
                    "regarding.namespace: does not match event.namespace (an Event about a cluster-scoped object belongs in \"default\")",
                );
            }
            if collection.contains("/events.k8s.io/")
                && let Err(e) = check_event(&obj)
            {
                return e;
            }
            if collection.contains("/events.k8s.io/") && store.failing_event_creates > 0 {
                store.failing_event_creates -= 1;
                return status_error(500, "InternalError", "etcdserver: request timed out");
            }
            // Like the real API server, a namespaced object takes its namespace from the URL.
            if let Some(ns) = collection
                .split("/namespaces/")
                .nth(1)
                .and_then(|rest| rest.split('/').next())
            {
                obj["metadata"]["namespace"] = json!(ns);
            }
            if is_policy {
                obj.as_object_mut().unwrap().remove("status");
                if let Err(e) = s.check_policy(&mut obj, None) {
                    return e;
                }
            }
            store.rv += 1;
            let rv = store.rv.to_string();
            let meta = obj["metadata"].as_object_mut().unwrap();
            meta.insert("resourceVersion".into(), json!(rv));
            meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            meta.insert("creationTimestamp".into(), json!(now()));
            meta.insert("generation".into(), json!(1));
            store.objects.insert(key, obj.clone());
            if is_policy {
                s.emit(&mut store, "ADDED", &obj);
            }
            json_response(201, &obj)
        }
        ("PUT" | "PATCH", Some(n), sub) => {
            let Some(current) = store.objects.get(&key).cloned() else {
                return status_error(404, "NotFound", format!("{n} not found"));
            };
            let status_write = sub == Some("status");
            if status_write && store.conflict_status_writes > 0 {
                store.conflict_status_writes -= 1;
                return status_error(
                    409,
                    "Conflict",
                    "the object has been modified; please apply your changes to the latest version and try again",
                );
            }
            let incoming = match parsed_body() {
                Ok(v) => v,
                Err(e) => return e,
            };
            let mut next = current.clone();
            if method == Method::PUT {
                next = incoming.clone();
            } else if content_type.contains("json-patch") {
                // Like the real API server (evanphx/json-patch), a `test` for null passes on a
                // missing path: kube's finalizer helper relies on it for the first finalizer.
                let ops: Vec<Value> = incoming
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|op| {
                        !(op["op"] == "test"
                            && op["value"].is_null()
                            && op["path"]
                                .as_str()
                                .is_some_and(|p| next.pointer(p).is_none()))
                    })
                    .collect();
                let patch: json_patch::Patch = match serde_json::from_value(Value::Array(ops)) {
                    Ok(p) => p,
                    Err(e) => return status_error(400, "BadRequest", e.to_string()),
                };
                if let Err(e) = json_patch::patch(&mut next, &patch) {
                    return status_error(422, "Invalid", format!("json patch failed: {e}"));
                }
            } else if content_type.contains("apply-patch") && status_write {
                // Server-side apply by the status manager: it owns the whole status.
                next["status"] = incoming.get("status").cloned().unwrap_or(Value::Null);
            } else {
                json_patch::merge(&mut next, &incoming);
            }
            // Optimistic concurrency: a resourceVersion in the request must be current.
            if let Some(rv) = incoming
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                && rv
                    != current["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap_or_default()
            {
                return status_error(
                    409,
                    "Conflict",
                    "the object has been modified; please apply your changes to the latest version and try again",
                );
            }
            if collection.contains("/events.k8s.io/")
                && let Err(e) = check_event(&next)
            {
                return e;
            }
            // The subresource decides which half of the object a write may change.
            if is_policy {
                if status_write {
                    let status = next.get("status").cloned();
                    next = current.clone();
                    match status {
                        Some(st) => next["status"] = st,
                        None => {
                            next.as_object_mut().unwrap().remove("status");
                        }
                    }
                } else {
                    match current.get("status") {
                        Some(st) => next["status"] = st.clone(),
                        None => {
                            next.as_object_mut().unwrap().remove("status");
                        }
                    }
                    for ro in [
                        "uid",
                        "creationTimestamp",
                        "deletionTimestamp",
                        "generation",
                    ] {
                        match current["metadata"].get(ro) {
                            Some(v) => next["metadata"][ro] = v.clone(),
                            None => {
                                next["metadata"].as_object_mut().unwrap().remove(ro);
                            }
                        }
                    }
                    if next.get("spec") != current.get("spec") {
                        let g = current["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
                        next["metadata"]["generation"] = json!(g);
                    }
                }
                if let Err(e) = s.check_policy(&mut next, Some(&current)) {
                    return e;
                }
            }
            // managedFields are the server's: kept from the stored object whatever was sent.
            match current.pointer("/metadata/managedFields") {
                Some(m) => next["metadata"]["managedFields"] = m.clone(),
                None => {
                    next["metadata"]
                        .as_object_mut()
                        .unwrap()
                        .remove("managedFields");
                }
            }
            if next == current {
                return json_response(200, &current);
            }
            // Like the real API server: every write is recorded under its field manager, or
            // under a placeholder when the request named none.
            let manager = query(&uri, "fieldManager").unwrap_or_else(|| "unknown".into());
            let operation = if content_type.contains("apply-patch") {
                "Apply"
            } else {
                "Update"
            };
            let entry = json!({"manager": manager, "operation": operation, "subresource": sub.unwrap_or_default()});
            let fields = next["metadata"]
                .as_object_mut()
                .unwrap()
                .entry("managedFields")
                .or_insert_with(|| json!([]));
            if let Some(list) = fields.as_array_mut()
                && !list.contains(&entry)
            {
                list.push(entry);
            }
            store.rv += 1;
            next["metadata"]["resourceVersion"] = json!(store.rv.to_string());
            let gone = next.pointer("/metadata/deletionTimestamp").is_some()
                && next
                    .pointer("/metadata/finalizers")
                    .and_then(Value::as_array)
                    .is_none_or(|f| f.is_empty());
            if gone {
                store.objects.remove(&key);
                if is_policy {
                    s.emit(&mut store, "DELETED", &next);
                }
            } else {
                store.objects.insert(key, next.clone());
                if is_policy {
                    s.emit(&mut store, "MODIFIED", &next);
                }
            }
            json_response(200, &next)
        }
        ("DELETE", Some(n), None) => {
            let Some(mut obj) = store.objects.get(&key).cloned() else {
                return status_error(404, "NotFound", format!("{n} not found"));
            };
            store.rv += 1;
            obj["metadata"]["resourceVersion"] = json!(store.rv.to_string());
            let has_finalizers = obj
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty());
            if has_finalizers {
                if obj.pointer("/metadata/deletionTimestamp").is_none() {
                    obj["metadata"]["deletionTimestamp"] = json!(now());
                }
                store.objects.insert(key, obj.clone());
                if is_policy {
                    s.emit(&mut store, "MODIFIED", &obj);
                }
            } else {
                store.objects.remove(&key);
                if is_policy {
                    s.emit(&mut store, "DELETED", &obj);
                }
            }
            json_response(200, &obj)
        }
        _ => status_error(405, "MethodNotAllowed", format!("{method} {}", uri.path())),
    }
}

/// A watch stream: history after `resourceVersion`, then live events, bookmarks every second,
/// until `timeoutSeconds` or a dropped connection.
fn watch(s: Arc<Shared>, uri: &axum::http::Uri) -> Response<Body> {
    let from: u64 = query(uri, "resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = query(uri, "timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(300u64);
    let bookmarks = query(uri, "allowWatchBookmarks").as_deref() == Some("true");
    let (backlog, mut live, mut cut) = {
        let store = s.store.lock().unwrap();
        let backlog: Vec<(u64, String, Value)> = store
            .history
            .iter()
            .filter(|(rv, _, _)| *rv > from)
            .cloned()
            .collect();
        (backlog, s.events.subscribe(), s.cut.subscribe())
    };
    let line = |kind: &str, obj: &Value| {
        Ok::<Bytes, Infallible>(Bytes::from(format!(
            "{}\n",
            json!({"type": kind, "object": obj})
        )))
    };
    let stream = async_stream(move |tx| async move {
        let mut last = from;
        for (rv, kind, obj) in backlog {
            last = rv;
            if tx.send(line(&kind, &obj)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = cut.recv() => return,
                ev = live.recv() => match ev {
                    Ok((rv, kind, obj)) if rv > last => {
                        last = rv;
                        if tx.send(line(&kind, &obj)).await.is_err() { return; }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                },
                _ = tick.tick(), if bookmarks => {
                    let bm = json!({"apiVersion": "kmsroute.io/v1alpha1", "kind": "KmsRoutePolicy", "metadata": {"resourceVersion": last.to_string()}});
                    if tx.send(line("BOOKMARK", &bm)).await.is_err() { return; }
                }
            }
        }
    });
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

/// A stream fed by a spawned task through a channel.
fn async_stream<F, Fut>(f: F) -> impl futures::Stream<Item = Result<Bytes, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Bytes, Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
