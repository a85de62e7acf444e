//! `validate()` and policy files: every class of bad input gets a clear error with its field
//! path, all errors at once, and nothing is accepted that could tear a hole in a forced tunnel.

use kmsroute::api::{FieldError, KmsRoutePolicySpec, parse_policies, validate, validate_policy};
use kmsroute::catalog::Cloud;

const SUB: &str = "00000000-0000-0000-0000-000000000001";

fn policy_yaml(spec: &str) -> String {
    format!(
        "apiVersion: kmsroute.io/v1alpha1\nkind: KmsRoutePolicy\nmetadata:\n  name: test\nspec:\n{}",
        spec.lines().map(|l| format!("  {l}\n")).collect::<String>()
    )
}

fn check(spec: &str) -> Result<kmsroute::api::Validated, Vec<FieldError>> {
    let docs = parse_policies(&policy_yaml(spec)).unwrap();
    assert_eq!(docs.len(), 1);
    docs[0].check(Cloud::AzurePublic)
}

fn errors(spec: &str) -> Vec<FieldError> {
    check(spec).expect_err("spec should be invalid")
}

fn assert_error(spec: &str, path: &str, needle: &str) {
    let errs = errors(spec);
    assert!(
        errs.iter()
            .any(|e| e.path == path && e.message.contains(needle)),
        "expected {path}: …{needle}… in {errs:#?}"
    );
}

fn selector() -> String {
    format!("selector:\n  subscriptions: [\"{SUB}\"]\n")
}

#[test]
fn a_minimal_selector_policy_is_valid_with_the_catalog_destinations() {
    let v = check(&selector()).unwrap();
    let addrs: Vec<String> = v.desired.destinations.iter().map(|d| d.prefix()).collect();
    assert_eq!(
        addrs,
        ["20.118.99.224/32", "23.102.135.246/32", "40.83.235.53/32"]
    );
    assert_eq!(v.desired.destinations[0].route_name, "kms-20-118-99-224");
    assert_eq!(v.desired.resync.as_secs(), 600);
    assert!(v.warnings.is_empty());
}

#[test]
fn no_targets_is_an_error() {
    assert_error(
        "mode: Enforce\n",
        "spec",
        "at least one of spec.subnets or spec.selector",
    );
    assert_error("subnets: []\n", "spec", "at least one of");
}

#[test]
fn a_default_route_to_the_internet_is_refused() {
    let s = format!(
        "{}kms:\n  additionalAddresses: [\"0.0.0.0/0\"]\n",
        selector()
    );
    assert_error(
        &s,
        "spec.kms.additionalAddresses[0]",
        "only /32 host routes",
    );
}

#[test]
fn a_broad_prefix_is_refused_with_its_size() {
    let s = format!(
        "{}kms:\n  additionalAddresses: [\"10.0.0.0/8\"]\n",
        selector()
    );
    assert_error(&s, "spec.kms.additionalAddresses[0]", "16777216 addresses");
}

#[test]
fn private_and_special_host_addresses_are_refused() {
    for a in [
        "10.1.2.3",
        "192.168.1.1",
        "172.16.0.1",
        "127.0.0.1",
        "169.254.169.254",
        "0.0.0.0",
        "100.64.0.1",
        "255.255.255.255",
        "224.0.0.1",
    ] {
        let s = format!("{}kms:\n  additionalAddresses: [\"{a}\"]\n", selector());
        assert_error(
            &s,
            "spec.kms.additionalAddresses[0]",
            "not a public address",
        );
    }
}

#[test]
fn ipv6_is_refused_clearly() {
    let s = format!(
        "{}kms:\n  additionalAddresses: [\"2001:db8::1\"]\n",
        selector()
    );
    assert_error(&s, "spec.kms.additionalAddresses[0]", "IPv6");
}

#[test]
fn garbage_addresses_and_prefix_lengths_are_refused() {
    let s = format!(
        "{}kms:\n  additionalAddresses: [\"52.1.2\", \"52.1.2.3/33\"]\n",
        selector()
    );
    let errs = errors(&s);
    assert!(
        errs.iter()
            .any(|e| e.path.ends_with("[0]") && e.message.contains("not an IPv4"))
    );
    assert!(
        errs.iter()
            .any(|e| e.path.ends_with("[1]") && e.message.contains("invalid prefix length"))
    );
}

#[test]
fn duplicate_addresses_are_errors_and_catalog_repeats_are_warnings() {
    let s = format!(
        "{}kms:\n  additionalAddresses: [\"52.1.2.3\", \"52.1.2.3/32\"]\n",
        selector()
    );
    assert_error(
        &s,
        "spec.kms.additionalAddresses[1]",
        "duplicates additionalAddresses[0]",
    );
    let s = format!(
        "{}kms:\n  additionalAddresses: [\"20.118.99.224\"]\n",
        selector()
    );
    let v = check(&s).unwrap();
    assert_eq!(v.desired.destinations.len(), 3);
    assert!(
        v.warnings
            .iter()
            .any(|w| w.contains("already in the AzurePublic catalog"))
    );
}

#[test]
fn malformed_subnet_ids_are_refused_with_the_reason() {
    let s = "subnets:\n- /subscriptions/x/resourceGroups/rg\n- /subscriptions/not-a-guid/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/s\n";
    assert_error(s, "spec.subnets[0]", "path segments");
    assert_error(s, "spec.subnets[1]", "not a subscription ID");
}

#[test]
fn duplicate_subnet_ids_differing_only_in_case_are_counted_once_with_a_warning() {
    let id = format!(
        "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/s"
    );
    let s = format!(
        "subnets:\n- {id}\n- {}\n",
        id.to_uppercase().replace("SUBSCRIPTIONS", "subscriptions")
    );
    // A warning, as the CRD cannot compare 5,000 IDs pairwise within its CEL cost budget.
    let v = check(&s).unwrap();
    assert_eq!(v.desired.subnets.len(), 1);
    assert!(
        v.warnings
            .iter()
            .any(|w| w.starts_with("spec.subnets[1]") && w.contains("case-insensitive")),
        "{:?}",
        v.warnings
    );
}

#[test]
fn bad_name_templates_are_refused() {
    for (t, needle) in [
        ("\"{vnet}-{sub}\"", "unknown placeholder {sub}"),
        ("\"{vnet\"", "unclosed"),
        ("\"-{subnet}\"", "must start with a letter or digit"),
        ("\"{subnet}.\"", "must end with"),
        ("\"a b\"", "contains"),
    ] {
        let s = format!("{}routeTable:\n  nameTemplate: {t}\n", selector());
        assert_error(&s, "spec.routeTable.nameTemplate", needle);
    }
}

#[test]
fn the_retired_german_cloud_is_accepted_with_a_deprecation_warning() {
    let s = format!("{}kms:\n  cloud: AzureGermany\n", selector());
    let v = check(&s).unwrap();
    assert_eq!(v.desired.cloud, Cloud::AzureGermany);
    assert!(
        v.warnings
            .iter()
            .any(|w| w.contains("deprecated") && w.contains("2021-10-29"))
    );
}

#[test]
fn an_unknown_cloud_is_refused() {
    let s = format!("{}kms:\n  cloud: AzureMars\n", selector());
    let errs = errors(&s);
    assert!(errs[0].message.contains("unknown variant"), "{errs:?}");
}

#[test]
fn resync_interval_bounds_and_syntax_are_checked() {
    assert_error(
        &format!("{}resyncInterval: 10s\n", selector()),
        "spec.resyncInterval",
        "minimum of 30s",
    );
    assert_error(
        &format!("{}resyncInterval: 48h\n", selector()),
        "spec.resyncInterval",
        "maximum of 24h",
    );
    assert_error(
        &format!("{}resyncInterval: 10 minutes\n", selector()),
        "spec.resyncInterval",
        "unknown unit",
    );
    let v = check(&format!("{}resyncInterval: 1h30m\n", selector())).unwrap();
    assert_eq!(v.desired.resync.as_secs(), 5400);
}

#[test]
fn a_bad_route_name_prefix_is_refused() {
    assert_error(
        &format!("{}routeNamePrefix: \"-kms\"\n", selector()),
        "spec.routeNamePrefix",
        "starting with a letter",
    );
}

#[test]
fn selector_mistakes_are_each_reported() {
    let s = "selector:\n  subscriptions: [\"sub1\", \"00000000-0000-0000-0000-000000000001\", \"00000000-0000-0000-0000-000000000001\"]\n  resourceGroups: [\"rg.\"]\n  subnetNames: [\"app\"]\n  excludeSubnetNames: [\"APP\"]\n";
    let errs = errors(s);
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert!(
        paths.contains(&"spec.selector.subscriptions[0]"),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"spec.selector.subscriptions[2]"),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"spec.selector.resourceGroups[0]"),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"spec.selector.excludeSubnetNames"),
        "{paths:?}"
    );
}

#[test]
fn empty_selector_subscriptions_are_refused() {
    assert_error(
        "selector:\n  subscriptions: []\n",
        "spec.selector.subscriptions",
        "at least one",
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let s = "subnets: [\"nope\"]\nkms:\n  additionalAddresses: [\"0.0.0.0/0\", \"::1\"]\nrouteTable:\n  nameTemplate: \"{x}\"\nresyncInterval: 1s\n";
    let errs = errors(s);
    assert!(errs.len() >= 5, "{errs:#?}");
}

#[test]
fn unknown_fields_are_reported_with_their_path() {
    let s = format!(
        "{}conflictPolicyy: Replace\nrouteTable:\n  createIfMising: false\n",
        selector()
    );
    let errs = errors(&s);
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["spec.conflictPolicyy", "spec.routeTable.createIfMising"]
    );
}

#[test]
fn wrong_kind_or_api_version_is_refused() {
    let docs = parse_policies("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n").unwrap();
    assert_eq!(docs[0].policy.as_ref().unwrap_err()[0].path, "kind");
    let docs = parse_policies(
        "apiVersion: kmsroute.io/v1\nkind: KmsRoutePolicy\nmetadata:\n  name: x\nspec: {}\n",
    )
    .unwrap();
    assert_eq!(docs[0].policy.as_ref().unwrap_err()[0].path, "apiVersion");
}

#[test]
fn multi_document_files_yield_every_policy_and_skip_empty_documents() {
    let text = format!(
        "---\n{}---\n---\n{}",
        policy_yaml(&selector()),
        policy_yaml(&selector()).replace("name: test", "name: second")
    );
    let docs = parse_policies(&text).unwrap();
    let names: Vec<_> = docs.iter().map(|d| d.name.clone().unwrap()).collect();
    assert_eq!(names, ["test", "second"]);
}

#[test]
fn invalid_metadata_names_are_refused() {
    let text = policy_yaml(&selector()).replace("name: test", "name: Bad_Name");
    let docs = parse_policies(&text).unwrap();
    let errs = docs
        .into_iter()
        .next()
        .unwrap()
        .policy
        .and_then(|p| validate_policy(&p, Cloud::AzurePublic))
        .unwrap_err();
    assert_eq!(errs[0].path, "metadata.name");
}

#[test]
fn the_example_policies_are_valid() {
    for entry in std::fs::read_dir("examples").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let docs = parse_policies(&std::fs::read_to_string(&path).unwrap()).unwrap();
            assert!(!docs.is_empty(), "{path:?}");
            for d in docs {
                d.policy
                    .and_then(|p| validate_policy(&p, Cloud::AzurePublic))
                    .unwrap_or_else(|e| panic!("{path:?}: {e:?}"));
            }
        }
    }
}

#[test]
fn a_selector_by_management_group_needs_no_subscription_list() {
    let spec: KmsRoutePolicySpec =
        serde_saphyr::from_str("selector:\n  managementGroups: [corp, landing-zones]\n").unwrap();
    let v = validate("mg", None, &spec, Cloud::AzurePublic).unwrap();
    let sel = v.desired.selector.unwrap();
    assert!(sel.subscriptions.is_empty());
    assert_eq!(
        sel.management_groups,
        ["corp".to_string(), "landing-zones".to_string()].into()
    );
}

#[test]
fn a_selector_with_neither_subscriptions_nor_management_groups_is_refused() {
    assert_error(
        "selector:\n  virtualNetworkTags: {kms: enabled}\n",
        "spec.selector.subscriptions",
        "management group",
    );
}

#[test]
fn bad_and_repeated_management_group_names_are_refused() {
    let errs = errors("selector:\n  managementGroups: [\"corp\", \"has space\", \"corp\"]\n");
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert!(
        paths.contains(&"spec.selector.managementGroups[1]"),
        "{errs:?}"
    );
    assert!(
        paths.contains(&"spec.selector.managementGroups[2]"),
        "{errs:?}"
    );
}

#[test]
fn the_crd_requires_subscriptions_or_management_groups_with_a_cel_rule() {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(kmsroute::api::KmsRoutePolicy::crd()).unwrap();
    let selector = crd
        .pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/selector")
        .unwrap();
    let rules = selector["x-kubernetes-validations"].as_array().unwrap();
    assert!(
        rules
            .iter()
            .any(|r| r["rule"].as_str().unwrap().contains("managementGroups")
                && r["rule"].as_str().unwrap().contains("subscriptions")),
        "{rules:?}"
    );
    assert_eq!(selector["properties"]["managementGroups"]["maxItems"], 20);
}

#[test]
fn a_key_given_twice_is_an_error_not_a_silent_overwrite() {
    let text = format!(
        "apiVersion: kmsroute.io/v1alpha1\nkind: KmsRoutePolicy\nmetadata:\n  name: a\nspec:\n  selector:\n    subscriptions: [\"{SUB}\"]\n  conflictPolicy: Report\n  conflictPolicy: Replace\n"
    );
    let e = parse_policies(&text).unwrap_err().to_string();
    assert!(e.contains("duplicate mapping key: conflictPolicy"), "{e}");
    assert!(e.contains("line 9"), "the error says where: {e}");
}

#[test]
fn two_documents_with_one_name_are_an_error() {
    let doc = format!(
        "apiVersion: kmsroute.io/v1alpha1\nkind: KmsRoutePolicy\nmetadata:\n  name: same\nspec:\n  selector:\n    subscriptions: [\"{SUB}\"]\n"
    );
    let docs = parse_policies(&format!("{doc}---\n{doc}")).unwrap();
    assert!(docs[0].policy.is_ok());
    let errs = docs[1].policy.as_ref().unwrap_err();
    assert_eq!(errs[0].path, "metadata.name");
    assert!(errs[0].message.contains("document 1"), "{errs:?}");
}

#[test]
fn a_wrong_enum_value_names_its_field() {
    let text = format!(
        "apiVersion: kmsroute.io/v1alpha1\nkind: KmsRoutePolicy\nmetadata:\n  name: a\nspec:\n  selector:\n    subscriptions: [\"{SUB}\"]\n  conflictPolicy: replace\n"
    );
    let docs = parse_policies(&text).unwrap();
    let errs = docs[0].policy.as_ref().unwrap_err();
    assert_eq!(errs[0].path, "spec.conflictPolicy", "{errs:?}");
    assert!(
        errs[0].message.contains("unknown variant `replace`"),
        "{errs:?}"
    );
}
