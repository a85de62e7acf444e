//! Kubernetes RBAC (rbac.authorization.k8s.io/v1) as the API server evaluates it, for the fake
//! API server's impersonated requests (`Impersonate-User`, `Impersonate-Group`): the request's
//! attributes (verb, API group, resource and subresource, namespace, name), the subjects of
//! ClusterRoleBindings and RoleBindings, ClusterRole aggregation by label selectors (what the
//! controller manager fills in), and rule matching with `*` and `resourceNames`. A request
//! nothing allows is answered 403 with the API server's message.

use serde_json::Value;

/// What an authorizer sees of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    pub user: String,
    pub groups: Vec<String>,
    pub verb: String,
    pub api_group: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

/// The attributes of a request to `path` (`/api/v1/...` or `/apis/{group}/{version}/...`).
pub fn attributes(
    method: &str,
    path: &str,
    watch: bool,
    user: &str,
    groups: &[String],
) -> Option<Attributes> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api_group, rest) = match segs.as_slice() {
        ["api", _version, rest @ ..] => (String::new(), rest),
        ["apis", group, _version, rest @ ..] => (group.to_string(), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        rest => (None, rest),
    };
    let (resource, name, subresource) = match rest {
        [r] => (r.to_string(), None, None),
        [r, n] => (r.to_string(), Some(n.to_string()), None),
        [r, n, s] => (r.to_string(), Some(n.to_string()), Some(s.to_string())),
        _ => return None,
    };
    let verb = match (method, name.is_some()) {
        ("GET", true) => "get",
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return None,
    }
    .to_string();
    let mut groups = groups.to_vec();
    groups.push("system:authenticated".into());
    Some(Attributes {
        user: user.to_string(),
        groups,
        verb,
        api_group,
        resource,
        subresource,
        namespace,
        name,
    })
}

/// The API server's words for a refusal.
pub fn forbidden(a: &Attributes) -> String {
    let resource = match &a.subresource {
        Some(s) => format!("{}/{s}", a.resource),
        None => a.resource.clone(),
    };
    let qualified = if a.api_group.is_empty() {
        a.resource.clone()
    } else {
        format!("{}.{}", a.resource, a.api_group)
    };
    let scope = match &a.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".into(),
    };
    format!(
        "{qualified}{} is forbidden: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
        a.name
            .as_ref()
            .map(|n| format!(" \"{n}\""))
            .unwrap_or_default(),
        a.user,
        a.verb,
        a.api_group
    )
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn labels_match(labels: &Value, selector: &Value) -> bool {
    selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .is_some_and(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// A ClusterRole's rules: its own, or, with an `aggregationRule`, those of every ClusterRole its
/// selectors match.
fn cluster_role_rules<'a>(objects: &'a [Value], name: &str) -> Vec<&'a Value> {
    let Some(role) = objects
        .iter()
        .find(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == name)
    else {
        return Vec::new();
    };
    let mut rules: Vec<&Value> = role["rules"]
        .as_array()
        .map(|r| r.iter().collect())
        .unwrap_or_default();
    if let Some(selectors) = role
        .pointer("/aggregationRule/clusterRoleSelectors")
        .and_then(Value::as_array)
    {
        for other in objects.iter().filter(|o| o["kind"] == "ClusterRole") {
            let labels = &other["metadata"]["labels"];
            if selectors.iter().any(|s| labels_match(labels, s))
                && let Some(r) = other["rules"].as_array()
            {
                rules.extend(r.iter());
            }
        }
    }
    rules
}

fn subject_matches(subject: &Value, a: &Attributes) -> bool {
    let name = subject["name"].as_str().unwrap_or_default();
    match subject["kind"].as_str() {
        Some("User") => name == a.user,
        Some("Group") => a.groups.iter().any(|g| g == name),
        Some("ServiceAccount") => {
            let ns = subject["namespace"].as_str().unwrap_or_default();
            a.user == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    let verbs = strings(&rule["verbs"]);
    let groups = strings(&rule["apiGroups"]);
    let resources = strings(&rule["resources"]);
    let names = strings(&rule["resourceNames"]);
    let wanted = match &a.subresource {
        Some(s) => format!("{}/{s}", a.resource),
        None => a.resource.clone(),
    };
    let sub_any = a.subresource.as_ref().map(|s| format!("*/{s}"));
    (verbs.contains(&"*") || verbs.contains(&a.verb.as_str()))
        && (groups.contains(&"*") || groups.contains(&a.api_group.as_str()))
        && (resources.contains(&"*")
            || resources.contains(&wanted.as_str())
            || sub_any.as_deref().is_some_and(|s| resources.contains(&s)))
        && (names.is_empty() || a.name.as_deref().is_some_and(|n| names.contains(&n)))
}

/// Whether the RBAC objects in `objects` allow the request.
pub fn allowed(objects: &[Value], a: &Attributes) -> bool {
    let bound = |o: &Value| {
        o["subjects"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| subject_matches(s, a)))
    };
    // ClusterRoleBindings: everywhere.
    let cluster = objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRoleBinding" && bound(o))
        .filter(|o| o["roleRef"]["kind"] == "ClusterRole")
        .flat_map(|o| cluster_role_rules(objects, o["roleRef"]["name"].as_str().unwrap_or("")))
        .any(|r| rule_allows(r, a));
    if cluster {
        return true;
    }
    // RoleBindings: only in their namespace.
    let Some(ns) = &a.namespace else {
        return false;
    };
    objects
        .iter()
        .filter(|o| {
            o["kind"] == "RoleBinding"
                && o["metadata"]["namespace"].as_str() == Some(ns.as_str())
                && bound(o)
        })
        .flat_map(|o| {
            let name = o["roleRef"]["name"].as_str().unwrap_or("");
            match o["roleRef"]["kind"].as_str() {
                Some("ClusterRole") => cluster_role_rules(objects, name),
                _ => objects
                    .iter()
                    .find(|r| {
                        r["kind"] == "Role"
                            && r["metadata"]["name"] == name
                            && r["metadata"]["namespace"].as_str() == Some(ns.as_str())
                    })
                    .and_then(|r| r["rules"].as_array())
                    .map(|r| r.iter().collect())
                    .unwrap_or_default(),
            }
        })
        .any(|r| rule_allows(r, a))
}
