//! The checked-in CRD is what the code generates, and it is a structural schema a real
//! kube-apiserver accepts.

#[path = "support/charts.rs"]
mod charts;

use kmsroute::api::KmsRoutePolicy;
use kube::CustomResourceExt;
use serde_json::Value;

fn generated() -> Value {
    serde_json::to_value(KmsRoutePolicy::crd()).unwrap()
}

fn checked_in(path: &str) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_saphyr::from_str(&text).unwrap()
}

#[test]
fn checked_in_crd_matches_the_generated_one() {
    assert_eq!(
        checked_in("crds/kmsroutepolicies.kmsroute.io.yaml"),
        generated(),
        "crds/ is stale: run `cargo run -- crd > crds/kmsroutepolicies.kmsroute.io.yaml`"
    );
}

#[test]
fn crd_names_scope_and_subresources_are_the_public_interface() {
    let crd = generated();
    let spec = &crd["spec"];
    assert_eq!(crd["metadata"]["name"], "kmsroutepolicies.kmsroute.io");
    assert_eq!(spec["group"], "kmsroute.io");
    assert_eq!(spec["scope"], "Cluster");
    assert_eq!(spec["names"]["kind"], "KmsRoutePolicy");
    assert_eq!(spec["names"]["plural"], "kmsroutepolicies");
    assert_eq!(spec["names"]["shortNames"], serde_json::json!(["krp"]));
    let version = &spec["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(version["subresources"]["status"], serde_json::json!({}));
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        [
            "Ready",
            "Mode",
            "Subnets",
            "InSync",
            "Conflicts",
            "Age",
            "Reason",
            "Message"
        ]
    );
    assert_eq!(
        spec["names"]["categories"],
        serde_json::json!(["kmsroute", "azure"])
    );
}

/// Issue 33: `kubectl explain` has something to say for every field, and the conditions'
/// description names every condition type the controller writes.
#[test]
fn every_field_is_described_and_the_conditions_name_all_six_types() {
    let crd = serde_json::to_value(KmsRoutePolicy::crd()).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let missing = charts::undescribed(schema);
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:?}"
    );
    let conditions = schema["properties"]["status"]["properties"]["conditions"]["description"]
        .as_str()
        .unwrap();
    for t in [
        "Ready",
        "Progressing",
        "Degraded",
        "EgressReady",
        "Verified",
        "KmsAddressesRouted",
    ] {
        assert!(
            conditions.contains(&format!("`{t}`")),
            "{t} not in {conditions}"
        );
    }
    let cloud =
        schema["properties"]["spec"]["properties"]["kms"]["properties"]["cloud"]["description"]
            .as_str()
            .unwrap();
    assert!(cloud.contains("--cloud"), "{cloud}");
}

/// Kubernetes' structural schema rules: every node has a type (or an explicit escape hatch),
/// and no `$ref`, `anyOf`/`oneOf`/`allOf`/`not` carry types of their own.
fn assert_structural(node: &Value, path: &str) {
    let obj = node
        .as_object()
        .unwrap_or_else(|| panic!("{path}: not an object"));
    for banned in [
        "$ref",
        "anyOf",
        "oneOf",
        "allOf",
        "not",
        "definitions",
        "$defs",
    ] {
        assert!(!obj.contains_key(banned), "{path}: has {banned}");
    }
    let escape = obj.contains_key("x-kubernetes-int-or-string")
        || obj.contains_key("x-kubernetes-preserve-unknown-fields");
    assert!(escape || obj.contains_key("type"), "{path}: no type");
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            assert_structural(v, &format!("{path}.{k}"));
        }
    }
    if let Some(items) = obj.get("items") {
        assert_structural(items, &format!("{path}[]"));
    }
    if let Some(ap) = obj.get("additionalProperties").filter(|v| v.is_object()) {
        assert_structural(ap, &format!("{path}{{}}"));
    }
}

#[test]
fn the_schema_is_structural() {
    let crd = generated();
    assert_structural(&crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"], "");
}

#[test]
fn conditions_are_a_map_list_keyed_by_type_and_problems_are_capped() {
    let crd = generated();
    let status = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
    assert_eq!(status["conditions"]["x-kubernetes-list-type"], "map");
    assert_eq!(
        status["conditions"]["x-kubernetes-list-map-keys"],
        serde_json::json!(["type"])
    );
    assert_eq!(status["problems"]["maxItems"], 50);
}

#[test]
fn cel_rules_guard_what_types_cannot_say() {
    let crd = generated();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let rules = spec["x-kubernetes-validations"].as_array().unwrap();
    assert!(
        rules
            .iter()
            .any(|r| r["rule"].as_str().unwrap().contains("has(self.selector)"))
    );
    let addr = &spec["properties"]["kms"]["properties"]["additionalAddresses"]["items"]["pattern"];
    let re = addr.as_str().unwrap();
    assert!(
        re.ends_with("(/32)?$"),
        "only /32 prefixes pass the schema: {re}"
    );
}
