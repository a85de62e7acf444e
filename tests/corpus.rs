//! One source of truth for what is valid: a corpus of good and bad policies goes through
//! `kmsroute validate` (parse + `Document::check`) and through what the API server does with
//! the generated CRD (strict field validation, the OpenAPI schema's bounds, defaulting, then
//! the `x-kubernetes-validations` rules run by a CEL evaluator with Kubernetes' libraries,
//! `kube-cel`). Both must give every policy the same verdict, and `validate` must name the
//! field at fault.

use kmsroute::api::{KmsRoutePolicy, check_schema, parse_policies, spec_schema};
use kmsroute::catalog::Cloud;
use kube::CustomResourceExt;
use serde_json::Value;

const SUB: &str = "00000000-0000-0000-0000-000000000001";

fn subnet(i: usize) -> String {
    format!(
        "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/s{i}"
    )
}

fn list(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.map(|s| format!("{s:?}")).collect();
    format!("[{}]", items.join(", "))
}

fn sel() -> String {
    format!("selector: {{subscriptions: [{SUB:?}]}}\n")
}

fn with_sel(rest: &str) -> String {
    format!("{}{rest}", sel())
}

fn sel_with(field: &str) -> String {
    format!("selector:\n  subscriptions: [{SUB:?}]\n  {field}\n")
}

/// (name, spec YAML, the field `validate` must fault, or None when valid).
fn corpus() -> Vec<(&'static str, String, Option<&'static str>)> {
    let subs = |n: usize| list((0..n).map(|i| format!("00000000-0000-0000-0000-{i:012}")));
    let names = |n: usize| list((0..n).map(|i| format!("snet{i}")));
    let tags = |n: usize| {
        let t: Vec<String> = (0..n).map(|i| format!("t{i}: v")).collect();
        format!("virtualNetworkTags: {{{}}}", t.join(", "))
    };
    vec![
        // Valid.
        ("minimal selector", sel(), None),
        (
            "an identity of its own",
            with_sel(
                "azure:\n  identity: {tenantID: 72f988bf-86f1-41af-91ab-2d7cd011db47, clientID: 0b6c3a2e-6f4e-4f71-9d55-3f0c6f1f8a11}\n",
            ),
            None,
        ),
        (
            "identity: the tenant ID as the client ID",
            with_sel(
                "azure:\n  identity: {tenantID: 72f988bf-86f1-41af-91ab-2d7cd011db47, clientID: 72F988BF-86F1-41AF-91AB-2D7CD011DB47}\n",
            ),
            Some("spec.azure.identity"),
        ),
        (
            "identity: a client ID that is no GUID",
            with_sel(
                "azure:\n  identity: {tenantID: 72f988bf-86f1-41af-91ab-2d7cd011db47, clientID: kmsroute-app}\n",
            ),
            Some("spec.azure.identity.clientID"),
        ),
        (
            "identity: no tenant",
            with_sel("azure:\n  identity: {clientID: 0b6c3a2e-6f4e-4f71-9d55-3f0c6f1f8a11}\n"),
            Some("spec.azure.identity"),
        ),
        (
            "explicit subnets",
            format!("subnets: [{:?}]\n", subnet(1)),
            None,
        ),
        (
            "management groups only",
            "selector: {managementGroups: [corp, lz]}\n".into(),
            None,
        ),
        (
            "subscriptions and groups",
            format!("selector: {{subscriptions: [{SUB:?}], managementGroups: [corp]}}\n"),
            None,
        ),
        (
            "public address",
            with_sel("kms: {additionalAddresses: [\"52.1.2.3\"]}\n"),
            None,
        ),
        (
            "public /32",
            with_sel("kms: {additionalAddresses: [\"52.1.2.3/32\", \"20.1.1.1\"]}\n"),
            None,
        ),
        ("resync 30s", with_sel("resyncInterval: 30s\n"), None),
        ("resync 24h", with_sel("resyncInterval: 24h\n"), None),
        ("resync 1h30m", with_sel("resyncInterval: 1h30m\n"), None),
        (
            "template with all placeholders",
            with_sel("routeTable: {nameTemplate: \"{policy}.{location}-{vnet}_{subnet}_\"}\n"),
            None,
        ),
        (
            "include and exclude disjoint",
            sel_with("subnetNames: [app, web]\n  excludeSubnetNames: [GatewaySubnet]"),
            None,
        ),
        (
            "vnet tags",
            sel_with("virtualNetworkTags: {env: prod, kms: enabled}"),
            None,
        ),
        ("50 vnet tags", sel_with(&tags(50)), None),
        (
            "verification 100",
            with_sel("verification: {effectiveRoutes: true, maxNicsPerPass: 100}\n"),
            None,
        ),
        (
            "resolved addresses",
            with_sel("kms: {resolveDns: true, routeResolvedAddresses: true}\n"),
            None,
        ),
        (
            "unicode resource group",
            sel_with("resourceGroups: [\"rg-réseau\", \"rg_(prod)\"]"),
            None,
        ),
        (
            "100 subscriptions",
            format!("selector: {{subscriptions: {}}}\n", subs(100)),
            None,
        ),
        (
            "5,000 subnets",
            format!("subnets: {}\n", list((0..5000).map(subnet))),
            None,
        ),
        (
            "a subnet twice (warning)",
            format!(
                "subnets: [{:?}, {:?}]\n",
                subnet(1),
                subnet(1)
                    .to_uppercase()
                    .replace("SUBSCRIPTIONS", "subscriptions")
            ),
            None,
        ),
        (
            "a tag twice in two cases (warning)",
            sel_with("virtualNetworkTags: {env: a, Env: b}"),
            None,
        ),
        (
            "audit orphan replace",
            with_sel("mode: Audit\ndeletionPolicy: Orphan\nconflictPolicy: Replace\n"),
            None,
        ),
        (
            "prefix with underscore",
            with_sel("routeNamePrefix: kms_\n"),
            None,
        ),
        (
            "100 subnet names",
            sel_with(&format!("subnetNames: {}", names(100))),
            None,
        ),
        // Invalid.
        (
            "resync 1s",
            with_sel("resyncInterval: 1s\n"),
            Some("spec.resyncInterval"),
        ),
        (
            "resync 25h",
            with_sel("resyncInterval: 25h\n"),
            Some("spec.resyncInterval"),
        ),
        (
            "resync without unit",
            with_sel("resyncInterval: \"10\"\n"),
            Some("spec.resyncInterval"),
        ),
        (
            "address 999.1.1.1",
            with_sel("kms: {additionalAddresses: [\"999.1.1.1\"]}\n"),
            Some("spec.kms.additionalAddresses[0]"),
        ),
        (
            "private address",
            with_sel("kms: {additionalAddresses: [\"10.1.2.3\"]}\n"),
            Some("spec.kms.additionalAddresses[0]"),
        ),
        (
            "shared address space",
            with_sel("kms: {additionalAddresses: [\"100.64.0.1\"]}\n"),
            Some("spec.kms.additionalAddresses[0]"),
        ),
        (
            "documentation address",
            with_sel("kms: {additionalAddresses: [\"203.0.113.9\"]}\n"),
            Some("spec.kms.additionalAddresses[0]"),
        ),
        (
            "multicast address",
            with_sel("kms: {additionalAddresses: [\"224.0.0.1\"]}\n"),
            Some("spec.kms.additionalAddresses[0]"),
        ),
        (
            "broadcast address",
            with_sel("kms: {additionalAddresses: [\"255.255.255.255\"]}\n"),
            Some("spec.kms.additionalAddresses[0]"),
        ),
        (
            "default route",
            with_sel("kms: {additionalAddresses: [\"0.0.0.0/0\"]}\n"),
            Some("spec.kms.additionalAddresses[0]"),
        ),
        (
            "a /24",
            with_sel("kms: {additionalAddresses: [\"52.1.2.0/24\"]}\n"),
            Some("spec.kms.additionalAddresses[0]"),
        ),
        (
            "an address twice",
            with_sel("kms: {additionalAddresses: [\"52.1.2.3\", \"52.1.2.3/32\"]}\n"),
            Some("spec.kms.additionalAddresses[1]"),
        ),
        (
            "33 addresses",
            with_sel(&format!(
                "kms: {{additionalAddresses: {}}}\n",
                list((1..=33).map(|i| format!("52.1.2.{i}")))
            )),
            Some("spec.kms.additionalAddresses"),
        ),
        (
            "5,001 subnets",
            format!("subnets: {}\n", list((0..5001).map(subnet))),
            Some("spec.subnets"),
        ),
        (
            "101 subnet names",
            sel_with(&format!("subnetNames: {}", names(101))),
            Some("spec.selector.subnetNames"),
        ),
        (
            "101 subscriptions",
            format!("selector: {{subscriptions: {}}}\n", subs(101)),
            Some("spec.selector.subscriptions"),
        ),
        (
            "21 management groups",
            format!(
                "selector: {{managementGroups: {}}}\n",
                list((0..21).map(|i| format!("mg{i}")))
            ),
            Some("spec.selector.managementGroups"),
        ),
        (
            "51 vnet tags",
            sel_with(&tags(51)),
            Some("spec.selector.virtualNetworkTags"),
        ),
        (
            "a 257-character tag value",
            sel_with(&format!("virtualNetworkTags: {{env: {}}}", "v".repeat(257))),
            Some("spec.selector.virtualNetworkTags[env]"),
        ),
        (
            "included and excluded in two cases",
            sel_with("subnetNames: [App]\n  excludeSubnetNames: [app]"),
            Some("spec.selector.excludeSubnetNames"),
        ),
        (
            "a subscription twice in two cases",
            format!(
                "selector: {{subscriptions: [\"{}\", \"{}\"]}}\n",
                "0000000a-0000-0000-0000-000000000001", "0000000A-0000-0000-0000-000000000001"
            ),
            Some("spec.selector.subscriptions[1]"),
        ),
        (
            "a management group twice in two cases",
            "selector: {managementGroups: [Corp, corp]}\n".into(),
            Some("spec.selector.managementGroups[1]"),
        ),
        (
            "a resource group twice in two cases",
            sel_with("resourceGroups: [RG, rg]"),
            Some("spec.selector.resourceGroups[1]"),
        ),
        (
            "resource group with a space",
            sel_with("resourceGroups: [\"my rg\"]"),
            Some("spec.selector.resourceGroups[0]"),
        ),
        (
            "resource group ending in a dot",
            sel_with("resourceGroups: [\"rg.\"]"),
            Some("spec.selector.resourceGroups[0]"),
        ),
        (
            "subnet name starting with a dash",
            sel_with("subnetNames: [\"-app\"]"),
            Some("spec.selector.subnetNames[0]"),
        ),
        (
            "unknown placeholder",
            with_sel("routeTable: {nameTemplate: \"{vnet}-{zone}\"}\n"),
            Some("spec.routeTable.nameTemplate"),
        ),
        (
            "unclosed placeholder",
            with_sel("routeTable: {nameTemplate: \"{vnet\"}\n"),
            Some("spec.routeTable.nameTemplate"),
        ),
        (
            "template ending in a dash",
            with_sel("routeTable: {nameTemplate: \"{vnet}-\"}\n"),
            Some("spec.routeTable.nameTemplate"),
        ),
        (
            "routed without resolving",
            with_sel("kms: {routeResolvedAddresses: true}\n"),
            Some("spec.kms.routeResolvedAddresses"),
        ),
        (
            "verification 0",
            with_sel("verification: {maxNicsPerPass: 0}\n"),
            Some("spec.verification.maxNicsPerPass"),
        ),
        (
            "verification 101",
            with_sel("verification: {maxNicsPerPass: 101}\n"),
            Some("spec.verification.maxNicsPerPass"),
        ),
        (
            "no subnets, no selector",
            "mode: Enforce\n".into(),
            Some("spec"),
        ),
        (
            "selector with tags only",
            "selector: {virtualNetworkTags: {a: b}}\n".into(),
            Some("spec.selector.subscriptions"),
        ),
        (
            "subnet ID without a GUID",
            format!("subnets: [{:?}]\n", subnet(1).replace(SUB, "my-sub")),
            Some("spec.subnets[0]"),
        ),
        (
            "subnet ID with a space",
            format!("subnets: [{:?}]\n", subnet(1).replace("/v/", "/v net/")),
            Some("spec.subnets[0]"),
        ),
        (
            "unknown field",
            with_sel("conflictPolicyy: Replace\n"),
            Some("spec.conflictPolicyy"),
        ),
        (
            "enum in the wrong case",
            with_sel("conflictPolicy: replace\n"),
            Some("spec.conflictPolicy"),
        ),
        (
            "prefix starting with a dash",
            with_sel("routeNamePrefix: \"-kms\"\n"),
            Some("spec.routeNamePrefix"),
        ),
    ]
}

fn document(spec: &str) -> String {
    let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "apiVersion: kmsroute.io/v1alpha1\nkind: KmsRoutePolicy\nmetadata:\n  name: corpus\nspec:\n{spec}"
    )
}

fn crd_schema() -> Value {
    let crd = serde_json::to_value(KmsRoutePolicy::crd()).unwrap();
    crd.pointer("/spec/versions/0/schema/openAPIV3Schema")
        .unwrap()
        .clone()
}

/// What the API server says: the schema's bounds and strict fields, then the CEL rules on the
/// defaulted object. `Err` lists the messages.
fn api_server(object: &Value, schema: &Value) -> Result<(), Vec<String>> {
    let mut errors: Vec<String> = Vec::new();
    let mut bounds = Vec::new();
    check_schema(&object["spec"], spec_schema().unwrap(), "spec", &mut bounds);
    errors.extend(bounds.iter().map(|e| e.to_string()));
    if let Err(e) = kube_cel::Validator::new().validate(schema, object, None) {
        errors.extend(e.into_vec().iter().map(|e| e.to_string()));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

#[test]
fn validate_and_the_api_server_agree_on_every_policy_of_the_corpus() {
    let schema = crd_schema();
    let corpus = corpus();
    assert!(corpus.len() >= 40, "{} policies", corpus.len());
    // Bounds only CEL can say: the schema alone passes these, so the evaluator must be what
    // refuses them (proof that the rules really run here).
    let cel_only = [
        "resync 1s",
        "resync 25h",
        "address 999.1.1.1",
        "private address",
        "an address twice",
        "included and excluded in two cases",
        "a subscription twice in two cases",
        "unknown placeholder",
        "template ending in a dash",
        "routed without resolving",
    ];
    let mut disagreements = Vec::new();
    for (name, spec, fault) in &corpus {
        if cel_only.contains(name) {
            let object: Value = serde_saphyr::from_str(&document(spec)).unwrap();
            let mut bounds = Vec::new();
            check_schema(&object["spec"], spec_schema().unwrap(), "spec", &mut bounds);
            assert!(
                bounds.is_empty(),
                "{name}: the schema alone refuses it: {bounds:?}"
            );
            let cel = kube_cel::Validator::new().validate(&schema, &object, None);
            assert!(cel.is_err(), "{name}: the CEL rules pass it");
        }
        let text = document(spec);
        let object: Value = serde_saphyr::from_str(&text).unwrap();
        let server = api_server(&object, &schema);
        let docs = parse_policies(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let ours = docs[0].check(Cloud::AzurePublic);
        match (fault, &ours, &server) {
            (None, Ok(_), Ok(())) => {}
            (Some(path), Err(e), Err(_)) if e.iter().any(|e| e.path == *path) => {}
            _ => disagreements.push(format!(
                "{name}: expected {fault:?}\n  validate:   {:?}\n  API server: {server:?}",
                ours.as_ref()
                    .map(|_| "valid")
                    .map_err(|e| e.iter().map(|e| e.to_string()).collect::<Vec<_>>())
            )),
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} of {} disagree:\n{}",
        disagreements.len(),
        corpus.len(),
        disagreements.join("\n")
    );
}

#[test]
fn every_error_comes_at_once_even_beside_an_unknown_field() {
    let text = document(&format!(
        "selector: {{subscriptions: [{SUB:?}], subnetNames: [App], excludeSubnetNames: [app]}}\nconflictPolicyy: Replace\nresyncInterval: 1s\nkms: {{additionalAddresses: [\"10.0.0.1\"]}}\nverification: {{maxNicsPerPass: 0}}\n"
    ));
    let docs = parse_policies(&text).unwrap();
    let errors = docs[0].check(Cloud::AzurePublic).unwrap_err();
    let mut paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "spec.conflictPolicyy",
            "spec.kms.additionalAddresses[0]",
            "spec.resyncInterval",
            "spec.selector.excludeSubnetNames",
            "spec.verification.maxNicsPerPass",
        ],
        "{errors:#?}"
    );
}

/// Every rule compiles with Kubernetes' libraries, and none risks the API server's per-rule
/// cost budget (which would make it refuse the CRD).
#[test]
fn every_cel_rule_compiles_and_fits_the_cost_budget() {
    fn walk(node: &Value, path: &str, out: &mut Vec<String>) {
        if let Some(rules) = node
            .get("x-kubernetes-validations")
            .and_then(Value::as_array)
        {
            let compiled = kube_cel::compile_schema(node);
            for e in compiled.compilation_errors() {
                out.push(format!("{path}: {e:?}"));
            }
            for r in rules {
                let rule = r["rule"].as_str().unwrap_or_default();
                for w in kube_cel::estimate_rule_cost(rule, &compiled) {
                    out.push(format!("{path}: {rule}: {}", w.message));
                }
            }
        }
        for (key, sub) in [
            ("properties", true),
            ("items", false),
            ("additionalProperties", false),
        ] {
            match node.get(key) {
                Some(Value::Object(m)) if sub => {
                    for (k, v) in m {
                        walk(v, &format!("{path}.{k}"), out);
                    }
                }
                Some(v @ Value::Object(_)) => walk(v, &format!("{path}[]"), out),
                _ => {}
            }
        }
    }
    let mut problems = Vec::new();
    walk(&crd_schema(), "", &mut problems);
    assert!(problems.is_empty(), "{problems:#?}");
}

/// `kubectl apply` warns about formats the API server does not know (`uint32`, say).
#[test]
fn every_format_in_the_crd_is_one_kubernetes_knows() {
    fn walk(node: &Value, out: &mut Vec<String>) {
        match node {
            Value::Object(m) => {
                if let Some(Value::String(f)) = m.get("format") {
                    out.push(f.clone());
                }
                m.values().for_each(|v| walk(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut formats = Vec::new();
    walk(&crd_schema(), &mut formats);
    let known = [
        "int32",
        "int64",
        "float",
        "double",
        "byte",
        "date",
        "date-time",
        "password",
    ];
    let unknown: Vec<&String> = formats
        .iter()
        .filter(|f| !known.contains(&f.as_str()))
        .collect();
    assert!(unknown.is_empty(), "{unknown:?}");
    assert!(
        formats.iter().any(|f| f == "int32"),
        "maxNicsPerPass is an int32"
    );
}
