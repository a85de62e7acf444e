//! Shipping: the Helm chart (rendered by the real `helm`), the plain-manifest install, and the
//! Azure custom role. `.ci/run` installs helm with `scripts/install-test-tools.sh`; outside CI
//! the helm tests are skipped with a message when no helm binary is found.

use kmsroute::azure::NetworkApi;
use kmsroute::azure::client::{AzureNetworkApi, ClientSettings};
use kmsroute::azure::credential::StaticToken;
use kmsroute::emulator::{self, Config, Seed};
use kmsroute::ids::{RouteTableId, SubnetId};
use kmsroute::model::{NextHopType, Route};
use kube::CustomResourceExt;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Arc;

#[path = "support/charts.rs"]
mod charts;

use charts::{docs, helm, render, undescribed};

fn find<'a>(docs: &'a [Value], kind: &str) -> Option<&'a Value> {
    docs.iter().find(|d| d["kind"] == kind)
}

fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter()
        .map(|d| d["kind"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn the_chart_ships_the_generated_crd() {
    let file: Value = serde_saphyr::from_str(
        &std::fs::read_to_string("charts/kmsroute/files/kmsroutepolicies.kmsroute.io.yaml")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        file,
        serde_json::to_value(kmsroute::api::KmsRoutePolicy::crd()).unwrap(),
        "run: cargo run -- crd > charts/kmsroute/files/kmsroutepolicies.kmsroute.io.yaml"
    );
}

#[test]
fn helm_lint_passes_for_every_value_set() {
    let Some(helm) = helm() else { return };
    for sets in [
        vec![],
        vec!["azure.identity.clientId=11111111-2222-3333-4444-555555555555"],
        vec!["azure.identity.mode=managedIdentity"],
        vec![
            "azure.identity.mode=servicePrincipal",
            "azure.identity.secretName=kmsroute-sp",
        ],
        vec![
            "replicaCount=2",
            "metrics.serviceMonitor.enabled=true",
            "networkPolicy.enabled=true",
        ],
    ] {
        let mut cmd = Command::new(&helm);
        cmd.args(["lint", "--strict", "charts/kmsroute"]);
        for s in &sets {
            cmd.args(["--set", s]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{sets:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn the_default_render_is_restricted_least_privilege_and_single_replica() {
    let Some(helm) = helm() else { return };
    let d = render(&helm, &[]).unwrap();
    assert_eq!(
        kinds(&d),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "Deployment",
            "Pod",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
        .map(String::from)
        .into()
    );
    let dep = find(&d, "Deployment").unwrap();
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(
        pod["securityContext"],
        json!({"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}})
    );
    let c = &pod["containers"][0];
    assert_eq!(
        c["securityContext"],
        json!({"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]}})
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "run");
    assert!(
        args.contains(&"--auth=workload-identity") && args.contains(&"--cloud=AzurePublic"),
        "{args:?}"
    );
    assert_eq!(pod["serviceAccountName"], "kmsroute");
    assert_eq!(
        dep["spec"]["template"]["metadata"]["labels"]["azure.workload.identity/use"],
        "true"
    );

    let cluster_rules = &d
        .iter()
        .find(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == "kmsroute")
        .unwrap()["rules"];
    assert_eq!(
        cluster_rules,
        &json!([
            {"apiGroups": ["kmsroute.io"], "resources": ["kmsroutepolicies"], "verbs": ["get", "list", "watch", "patch", "update"]},
            {"apiGroups": ["kmsroute.io"], "resources": ["kmsroutepolicies/status"], "verbs": ["get", "patch", "update"]},
            {"apiGroups": ["kmsroute.io"], "resources": ["kmsroutepolicies/finalizers"], "verbs": ["update", "patch"]}
        ])
    );
    let roles: Vec<&Value> = d.iter().filter(|o| o["kind"] == "Role").collect();
    assert_eq!(roles.len(), 2, "one Role for the Lease, one for Events");
    let lease = roles
        .iter()
        .find(|r| r["metadata"]["namespace"] == "kmsroute")
        .unwrap();
    assert_eq!(
        lease["rules"],
        json!([
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update", "patch"]}
        ])
    );
    // Events of the cluster-scoped policies live in `default` (where kubectl describe looks).
    let events = roles
        .iter()
        .find(|r| r["metadata"]["namespace"] == "default")
        .unwrap();
    assert_eq!(
        events["rules"],
        json!([
            {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]}
        ])
    );
    let binding = d
        .iter()
        .find(|o| o["kind"] == "RoleBinding" && o["metadata"]["namespace"] == "default")
        .unwrap();
    assert_eq!(binding["roleRef"]["name"], events["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["namespace"], "kmsroute");
    let all = serde_json::to_string(&d).unwrap();
    assert!(!all.contains("\"secrets\""), "no access to Secrets");
}

#[test]
fn each_identity_mode_wires_the_right_labels_annotations_and_env() {
    let Some(helm) = helm() else { return };
    let wi = render(
        &helm,
        &["azure.identity.clientId=11111111-2222-3333-4444-555555555555"],
    )
    .unwrap();
    assert_eq!(
        find(&wi, "ServiceAccount").unwrap()["metadata"]["annotations"]["azure.workload.identity/client-id"],
        "11111111-2222-3333-4444-555555555555"
    );

    let mi = render(
        &helm,
        &[
            "azure.identity.mode=managedIdentity",
            "azure.identity.clientId=11111111-2222-3333-4444-555555555555",
        ],
    )
    .unwrap();
    let dep = find(&mi, "Deployment").unwrap();
    assert!(
        dep["spec"]["template"]["metadata"]["labels"]
            .get("azure.workload.identity/use")
            .is_none()
    );
    let env = &dep["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        env.as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "AZURE_CLIENT_ID"
                && e["value"] == "11111111-2222-3333-4444-555555555555")
    );
    assert!(
        serde_json::to_string(&dep)
            .unwrap()
            .contains("--auth=managed-identity")
    );

    let sp = render(
        &helm,
        &[
            "azure.identity.mode=servicePrincipal",
            "azure.identity.secretName=kmsroute-sp",
        ],
    )
    .unwrap();
    let env = find(&sp, "Deployment").unwrap()["spec"]["template"]["spec"]["containers"][0]["env"]
        .clone();
    for (name, key) in [
        ("AZURE_TENANT_ID", "tenantId"),
        ("AZURE_CLIENT_ID", "clientId"),
        ("AZURE_CLIENT_SECRET", "clientSecret"),
    ] {
        let e = env
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("{name}"));
        assert_eq!(
            e["valueFrom"]["secretKeyRef"],
            json!({"name": "kmsroute-sp", "key": key}),
            "from the Secret, never a value"
        );
    }
    assert!(
        find(&sp, "Secret").is_none(),
        "the chart never holds a secret value"
    );
    let missing = render(&helm, &["azure.identity.mode=servicePrincipal"]).unwrap_err();
    assert!(missing.contains("secretName is required"), "{missing}");

    // Issue 32, item 9: policyIdentities is the list the controller enforces.
    let env_of = |docs: &[Value]| {
        find(docs, "Deployment").unwrap()["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "KMSROUTE_ALLOWED_IDENTITIES")
            .map(|e| e["value"].as_str().unwrap().to_string())
    };
    assert_eq!(env_of(&wi), None, "none listed: only the controller's own");
    let listed = render(
        &helm,
        &[
            "azure.identity.policyIdentities[0].tenantId=72F988BF-86f1-41af-91ab-2d7cd011db47",
            "azure.identity.policyIdentities[0].clientId=0b6c3a2e-6f4e-4f71-9d55-3f0c6f1f8a11",
            "azure.identity.policyIdentities[1].tenantId=11111111-2222-3333-4444-555555555555",
            "azure.identity.policyIdentities[1].clientId=66666666-7777-8888-9999-000000000000",
        ],
    )
    .unwrap();
    assert_eq!(
        env_of(&listed).as_deref(),
        Some(
            "72f988bf-86f1-41af-91ab-2d7cd011db47/0b6c3a2e-6f4e-4f71-9d55-3f0c6f1f8a11,11111111-2222-3333-4444-555555555555/66666666-7777-8888-9999-000000000000"
        )
    );
}

#[test]
fn optional_objects_appear_only_when_asked_for() {
    let Some(helm) = helm() else { return };
    let two = render(&helm, &["replicaCount=2"]).unwrap();
    assert_eq!(
        find(&two, "PodDisruptionBudget").unwrap()["spec"],
        json!({"maxUnavailable": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": "kmsroute", "app.kubernetes.io/instance": "kmsroute"}}})
    );
    let min = render(
        &helm,
        &["replicaCount=3", "podDisruptionBudget.minAvailable=2"],
    )
    .unwrap();
    let pdb = &find(&min, "PodDisruptionBudget").unwrap()["spec"];
    assert_eq!(
        (pdb["minAvailable"].clone(), pdb.get("maxUnavailable")),
        (json!(2), None)
    );
    let off = render(
        &helm,
        &["replicaCount=2", "podDisruptionBudget.enabled=false"],
    )
    .unwrap();
    assert!(find(&off, "PodDisruptionBudget").is_none());
    assert_eq!(find(&two, "Deployment").unwrap()["spec"]["replicas"], 2);
    let one = render(&helm, &[]).unwrap();
    assert!(
        find(&one, "PodDisruptionBudget").is_none()
            && find(&one, "ServiceMonitor").is_none()
            && find(&one, "NetworkPolicy").is_none()
    );
    let extras = render(
        &helm,
        &[
            "metrics.serviceMonitor.enabled=true",
            "networkPolicy.enabled=true",
        ],
    )
    .unwrap();
    assert_eq!(
        find(&extras, "ServiceMonitor").unwrap()["spec"]["endpoints"][0]["path"],
        "/metrics"
    );
    assert!(find(&extras, "NetworkPolicy").is_some());
}

#[test]
fn bad_values_are_rejected_by_the_schema() {
    let Some(helm) = helm() else { return };
    for bad in [
        "foo=bar",
        "azure.identity.mode=bogus",
        "azure.cloud=Mars",
        "logging.format=xml",
        "azure.armEndpoint=http://insecure",
        "replicaCount=0",
    ] {
        let err = render(&helm, &[bad]).unwrap_err();
        assert!(
            err.contains("schema") || err.contains("values don't meet"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn the_plain_manifest_install_is_the_default_rendering() {
    let Some(helm) = helm() else { return };
    let out = Command::new(&helm)
        .args([
            "template",
            "kmsroute",
            "charts/kmsroute",
            "--namespace",
            "kmsroute",
            "--skip-tests",
        ])
        .output()
        .unwrap();
    let rendered = docs(&String::from_utf8_lossy(&out.stdout));
    let file = docs(&std::fs::read_to_string("deploy/kmsroute.yaml").unwrap());
    assert_eq!(
        file, rendered,
        "deploy/kmsroute.yaml is stale: run scripts/render-deploy.sh"
    );
}

#[test]
fn the_example_policies_in_deploy_are_valid() {
    for entry in std::fs::read_dir("deploy/examples").unwrap() {
        let path = entry.unwrap().path();
        let docs = kmsroute::api::parse_policies(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert!(!docs.is_empty());
        for d in docs {
            d.policy
                .and_then(|p| {
                    kmsroute::api::validate_policy(&p, kmsroute::catalog::Cloud::AzurePublic)
                })
                .unwrap_or_else(|e| panic!("{path:?}: {e:?}"));
        }
    }
}

/// The Azure actions behind each ARM call the client makes (its metrics labels).
fn actions_for(operation: &str) -> Vec<&'static str> {
    match operation {
        "GET virtualNetworks" => vec!["Microsoft.Network/virtualNetworks/read"],
        "GET subnets" => vec!["Microsoft.Network/virtualNetworks/subnets/read"],
        // Setting a subnet's routeTable also needs join on the table.
        "PUT subnets" => vec![
            "Microsoft.Network/virtualNetworks/subnets/write",
            "Microsoft.Network/routeTables/join/action",
        ],
        "GET routeTables" => vec!["Microsoft.Network/routeTables/read"],
        "PUT routeTables" => vec!["Microsoft.Network/routeTables/write"],
        "DELETE routeTables" => vec!["Microsoft.Network/routeTables/delete"],
        "PUT routes" => vec!["Microsoft.Network/routeTables/routes/write"],
        "DELETE routes" => vec!["Microsoft.Network/routeTables/routes/delete"],
        // Effective-route verification (spec.verification.effectiveRoutes).
        "GET networkInterfaces" => vec!["Microsoft.Network/networkInterfaces/read"],
        // The private-subnet egress check: a VM's public IP, a load balancer's outbound rule.
        "GET publicIPAddresses" => vec!["Microsoft.Network/publicIPAddresses/read"],
        "GET loadBalancers" => vec!["Microsoft.Network/loadBalancers/read"],
        // spec.selector.managementGroups.
        "GET descendants" => vec!["Microsoft.Management/managementGroups/descendants/read"],
        // Who undid our routes (contested tables): the Activity Log.
        "GET activityLog" => vec!["Microsoft.Insights/eventtypes/values/read"],
        "POST effectiveRouteTable" => {
            vec!["Microsoft.Network/networkInterfaces/effectiveRouteTable/action"]
        }
        // Monitor URLs: Azure-AsyncOperation (operations) or Location (operationResults).
        "GET operation" => vec![
            "Microsoft.Network/locations/operations/read",
            "Microsoft.Network/locations/operationResults/read",
        ],
        other => panic!("no Azure action known for {other:?}: add it to the role and here"),
    }
}

#[tokio::test]
async fn the_azure_role_holds_exactly_the_actions_the_client_uses() {
    const S: &str = "00000000-0000-0000-0000-000000000001";
    let rg = format!("/subscriptions/{S}/resourceGroups/rg/providers/Microsoft.Network");
    let seed = Seed {
        resources: vec![
            json!({"id": format!("{rg}/virtualNetworks/v"), "location": "westeurope", "properties": {"addressSpace": {"addressPrefixes": ["10.0.0.0/16"]}, "subnets": [
                {"id": format!("{rg}/virtualNetworks/v/subnets/s"), "name": "s", "properties": {"addressPrefix": "10.0.0.0/24"}}
            ]}}),
            json!({"id": format!("{rg}/networkInterfaces/nic"), "location": "westeurope", "properties": {
                "virtualMachine": {"id": format!("/subscriptions/{S}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm")},
                "ipConfigurations": [{"name": "ipconfig1", "properties": {"subnet": {"id": format!("{rg}/virtualNetworks/v/subnets/s")}}}]}}),
        ],
        learned_routes: vec![],
        management_groups: vec![kmsroute::emulator::ManagementGroup {
            name: "corp".into(),
            parent: None,
            subscriptions: vec![S.into()],
        }],
        ..Seed::default()
    };
    let em = emulator::start(Config::default(), seed, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let api = AzureNetworkApi::new(
        url::Url::parse(&em.url()).unwrap(),
        Arc::new(StaticToken::new("t")),
        ClientSettings::default(),
    )
    .unwrap();
    // Every operation of the port, as reconcile and cleanup use them.
    let t = RouteTableId::new(S, "rg", "rt");
    let s = SubnetId::new(S, "rg", "v", "s");
    let route = Route {
        name: "kms-20-118-99-224".into(),
        address_prefix: "20.118.99.224/32".into(),
        next_hop_type: NextHopType::Internet,
        next_hop_ip_address: None,
    };
    api.inventory(&[S.to_string()].into()).await.unwrap();
    api.create_route_table(&t, "westeurope", &BTreeMap::new(), false, &[])
        .await
        .unwrap();
    api.put_route(&t, &route).await.unwrap();
    api.set_subnet_route_table(&s, None, Some(&t))
        .await
        .unwrap();
    api.set_subnet_route_table(&s, Some(&t), None)
        .await
        .unwrap();
    api.delete_route(&t, &route.name).await.unwrap();
    api.delete_route_table(&t).await.unwrap();
    let nics = api
        .network_interfaces(&[S.to_string()].into())
        .await
        .unwrap();
    assert_eq!(nics.len(), 1);
    api.effective_routes(&nics[0].id).await.unwrap();
    api.egress_facts(&[S.to_string()].into()).await.unwrap();
    let under = api.management_group_subscriptions("corp").await.unwrap();
    assert_eq!(under, BTreeSet::from([S.to_string()]));
    api.activity_log(&t.to_string(), 0).await.unwrap();
    let used: BTreeSet<&str> = api
        .metrics
        .operations()
        .iter()
        .flat_map(|op| actions_for(op))
        .collect();
    let role: Value =
        serde_json::from_str(&std::fs::read_to_string("deploy/azure/kmsroute-role.json").unwrap())
            .unwrap();
    let granted: BTreeSet<&str> = role["Actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        granted, used,
        "deploy/azure/kmsroute-role.json must list exactly what the client calls"
    );
    assert!(role["DataActions"].as_array().unwrap().is_empty());
}

#[test]
fn the_dashboard_and_the_alerts_render_from_the_chart_only_when_enabled() {
    let Some(helm) = helm() else { return };
    let off = render(&helm, &[]).unwrap();
    assert!(find(&off, "PrometheusRule").is_none());
    assert!(
        off.iter()
            .all(|d| d["metadata"]["labels"]["grafana_dashboard"].is_null())
    );
    let on = render(
        &helm,
        &[
            "metrics.dashboard.enabled=true",
            "metrics.prometheusRule.enabled=true",
            "metrics.prometheusRule.labels.release=prom",
        ],
    )
    .unwrap();
    let cm = on
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["labels"]["grafana_dashboard"] == "1")
        .expect("the dashboard ConfigMap");
    let shipped: Value = serde_json::from_str(
        &std::fs::read_to_string("deploy/monitoring/kmsroute-dashboard.json").unwrap(),
    )
    .unwrap();
    let rendered: Value =
        serde_json::from_str(cm["data"]["kmsroute-dashboard.json"].as_str().unwrap()).unwrap();
    assert_eq!(rendered, shipped);
    let rule = find(&on, "PrometheusRule").unwrap();
    assert_eq!(rule["metadata"]["labels"]["release"], "prom");
    let rules: Value = serde_saphyr::from_str(
        &std::fs::read_to_string("deploy/monitoring/kmsroute.rules.yaml").unwrap(),
    )
    .unwrap();
    assert_eq!(rule["spec"]["groups"], rules["groups"]);
    // Alert templates reach Prometheus unrendered by helm.
    assert!(
        serde_json::to_string(&rule["spec"])
            .unwrap()
            .contains("{{ $labels.policy }}")
    );
}

/// SECURITY.md's permissions table names exactly the role's actions, each once: a security
/// review reads the table, Azure grants the role.
#[test]
fn the_security_permissions_table_is_the_role() {
    let role: Value =
        serde_json::from_str(&std::fs::read_to_string("deploy/azure/kmsroute-role.json").unwrap())
            .unwrap();
    let granted: BTreeSet<String> = role["Actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let security = std::fs::read_to_string("SECURITY.md").unwrap();
    let section = security
        .split("## Permissions")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a Permissions section");
    let rows: Vec<String> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect();
    let listed: BTreeSet<String> = rows.iter().cloned().collect();
    assert_eq!(rows.len(), listed.len(), "an action listed twice: {rows:?}");
    assert_eq!(listed, granted, "SECURITY.md's table and the role differ");
}

fn deployment(docs: &[Value]) -> &Value {
    find(docs, "Deployment").expect("a Deployment")
}

fn pod_spec(docs: &[Value]) -> &Value {
    &deployment(docs)["spec"]["template"]["spec"]
}

/// Issue 33: the CRD is a template (so `helm upgrade` upgrades it), equal to what
/// `kmsroute crd` generates, kept on uninstall unless asked otherwise, and left out when the
/// user manages it.
#[test]
fn the_chart_templates_the_generated_crd_and_keeps_it() {
    let Some(helm) = helm() else { return };
    let generated = serde_json::to_value(kmsroute::api::KmsRoutePolicy::crd()).unwrap();
    let d = render(&helm, &[]).unwrap();
    let mut crd = find(&d, "CustomResourceDefinition").unwrap().clone();
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    assert_eq!(
        crd["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "Helm"
    );
    let meta = crd["metadata"].as_object_mut().unwrap();
    meta.remove("labels");
    meta.remove("annotations");
    // Helm reads numbers as floats (`maximum: 100.0` and `100` are one number to the API server).
    fn numbers_as_floats(v: &mut Value) {
        match v {
            Value::Number(n) => {
                *v = json!(n.as_f64().unwrap_or_default());
            }
            Value::Array(a) => a.iter_mut().for_each(numbers_as_floats),
            Value::Object(o) => o.values_mut().for_each(numbers_as_floats),
            _ => {}
        }
    }
    let mut expected = generated.clone();
    numbers_as_floats(&mut crd);
    numbers_as_floats(&mut expected);
    assert_eq!(crd, expected, "the templated CRD is the generated one");
    let file: Value = serde_saphyr::from_str(
        &std::fs::read_to_string("charts/kmsroute/files/kmsroutepolicies.kmsroute.io.yaml")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        file, generated,
        "run: cargo run -- crd > charts/kmsroute/files/kmsroutepolicies.kmsroute.io.yaml"
    );
    let unkept = render(&helm, &["crds.keep=false"]).unwrap();
    assert!(
        find(&unkept, "CustomResourceDefinition").unwrap()["metadata"]
            .get("annotations")
            .is_none()
    );
    let none = render(&helm, &["crds.enabled=false"]).unwrap();
    assert!(find(&none, "CustomResourceDefinition").is_none());
    // The CRD tells kubectl why: categories and the -o wide columns.
    assert_eq!(
        generated["spec"]["names"]["categories"],
        json!(["kmsroute", "azure"])
    );
    let columns = generated["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .unwrap();
    let wide: Vec<(&str, &str)> = columns
        .iter()
        .filter(|c| c["priority"] == 1)
        .map(|c| (c["name"].as_str().unwrap(), c["jsonPath"].as_str().unwrap()))
        .collect();
    assert_eq!(
        wide,
        [
            ("Reason", ".status.conditions[?(@.type==\"Ready\")].reason"),
            (
                "Message",
                ".status.conditions[?(@.type==\"Ready\")].message"
            )
        ]
    );
}

/// Issue 33: Linux nodes only by default; the knobs platform teams expect.
#[test]
fn the_pod_runs_on_linux_and_takes_the_usual_knobs() {
    let Some(helm) = helm() else { return };
    let d = render(&helm, &[]).unwrap();
    assert_eq!(
        pod_spec(&d)["nodeSelector"],
        json!({"kubernetes.io/os": "linux"})
    );
    assert_eq!(
        pod_spec(&d)["containers"][0]["image"],
        "ghcr.io/kmsroute/kmsroute:0.1.0"
    );
    let digest = "sha256:".to_string() + &"ab".repeat(32);
    let knobs = render(
        &helm,
        &[
            &format!("image.digest={digest}"),
            "podSecurityContext.fsGroup=65532",
            "securityContext.readOnlyRootFilesystem=true",
            "strategy.type=Recreate",
            "revisionHistoryLimit=3",
            "commonLabels.team=network",
            "extraVolumes[0].name=ca",
            "extraVolumes[0].configMap.name=corp-ca",
            "extraVolumeMounts[0].name=ca",
            "extraVolumeMounts[0].mountPath=/etc/corp-ca",
            "proxy.httpsProxy=http://proxy.corp:3128",
            "proxy.noProxy=.corp.example",
        ],
    )
    .unwrap();
    let dep = deployment(&knobs);
    let pod = pod_spec(&knobs);
    assert_eq!(
        pod["containers"][0]["image"],
        format!("ghcr.io/kmsroute/kmsroute@{digest}")
    );
    assert_eq!(pod["securityContext"]["fsGroup"], 65532);
    assert_eq!(
        pod["securityContext"]["runAsUser"], 65532,
        "defaults merged"
    );
    assert_eq!(dep["spec"]["strategy"]["type"], "Recreate");
    assert_eq!(dep["spec"]["revisionHistoryLimit"], 3);
    assert_eq!(pod["volumes"][0]["configMap"]["name"], "corp-ca");
    assert_eq!(
        pod["containers"][0]["volumeMounts"][0]["mountPath"],
        "/etc/corp-ca"
    );
    for o in &knobs {
        if o["kind"] != "Pod" {
            assert_eq!(o["metadata"]["labels"]["team"], "network", "{}", o["kind"]);
        }
    }
    assert_eq!(
        dep["spec"]["template"]["metadata"]["labels"]["team"],
        "network"
    );
    let env = pod["containers"][0]["env"].as_array().unwrap();
    let var = |n: &str| {
        env.iter()
            .find(|e| e["name"] == n)
            .and_then(|e| e["value"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(var("HTTPS_PROXY"), "http://proxy.corp:3128");
    assert!(
        var("NO_PROXY").starts_with(".corp.example,169.254.169.254,"),
        "{}",
        var("NO_PROXY")
    );
    // A bad digest is refused.
    let err = render(&helm, &["image.digest=latest"]).unwrap_err();
    assert!(
        err.contains("values don't meet") || err.contains("schema"),
        "{err}"
    );
}

/// Issue 33: the NetworkPolicy lets each identity mode's traffic through: IMDS (port 80) for
/// managed identity, the API server's ports as a value, the scrapers named.
#[test]
fn the_network_policy_fits_each_identity_mode() {
    let Some(helm) = helm() else { return };
    let egress_ports = |docs: &[Value]| -> Vec<(Option<String>, i64)> {
        find(docs, "NetworkPolicy").unwrap()["spec"]["egress"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|rule| {
                let to = rule["to"][0]["ipBlock"]["cidr"]
                    .as_str()
                    .map(str::to_string);
                rule["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(move |p| (to.clone(), p["port"].as_i64().unwrap()))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let wi = render(&helm, &["networkPolicy.enabled=true"]).unwrap();
    let ports = egress_ports(&wi);
    for p in [53, 443, 6443] {
        assert!(ports.iter().any(|(_, q)| *q == p), "{p}: {ports:?}");
    }
    assert!(
        !ports.iter().any(|(_, q)| *q == 80),
        "no IMDS without managed identity"
    );
    let mi = render(
        &helm,
        &[
            "networkPolicy.enabled=true",
            "azure.identity.mode=managedIdentity",
        ],
    )
    .unwrap();
    assert!(
        egress_ports(&mi).contains(&(Some("169.254.169.254/32".into()), 80)),
        "{:?}",
        egress_ports(&mi)
    );
    let custom = render(
        &helm,
        &[
            "networkPolicy.enabled=true",
            "networkPolicy.apiServerPorts={443,8443}",
            "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name=monitoring",
            "networkPolicy.extraEgress[0].ports[0].port=3128",
        ],
    )
    .unwrap();
    let ports = egress_ports(&custom);
    assert!(ports.iter().any(|(_, p)| *p == 8443) && !ports.iter().any(|(_, p)| *p == 6443));
    assert!(ports.iter().any(|(_, p)| *p == 3128), "{ports:?}");
    let np = find(&custom, "NetworkPolicy").unwrap();
    assert_eq!(
        np["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["name"],
        "monitoring"
    );
}

/// Issue 33: monitoring knobs: the ServiceMonitor's namespace, timeout and relabelings; every
/// alert's runbook_url; and the install notes hold no placeholder URL or blocking command chain.
#[test]
fn monitoring_knobs_runbook_urls_and_notes() {
    let Some(helm) = helm() else { return };
    let d = render(
        &helm,
        &[
            "metrics.serviceMonitor.enabled=true",
            "metrics.serviceMonitor.namespace=monitoring",
            "metrics.serviceMonitor.scrapeTimeout=5s",
            "metrics.serviceMonitor.relabelings[0].targetLabel=cluster",
            "metrics.serviceMonitor.relabelings[0].replacement=aks-prod",
            "metrics.prometheusRule.enabled=true",
            "metrics.prometheusRule.runbookBaseUrl=https://wiki.corp/kmsroute",
        ],
    )
    .unwrap();
    let sm = find(&d, "ServiceMonitor").unwrap();
    assert_eq!(sm["metadata"]["namespace"], "monitoring");
    assert_eq!(
        sm["spec"]["namespaceSelector"]["matchNames"],
        json!(["kmsroute"])
    );
    assert_eq!(sm["spec"]["endpoints"][0]["scrapeTimeout"], "5s");
    assert_eq!(
        sm["spec"]["endpoints"][0]["relabelings"][0]["replacement"],
        "aks-prod"
    );
    let rule = find(&d, "PrometheusRule").unwrap();
    let alerts: Vec<&Value> = rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter(|r| r["alert"].is_string())
        .collect();
    assert!(alerts.len() >= 8);
    for a in alerts {
        let name = a["alert"].as_str().unwrap();
        assert_eq!(
            a["annotations"]["runbook_url"],
            format!("https://wiki.corp/kmsroute#{}", name.to_lowercase())
        );
    }
    let out = Command::new(&helm)
        .args([
            "install",
            "kmsroute",
            "charts/kmsroute",
            "--dry-run",
            "-n",
            "kmsroute",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let notes = text.split("NOTES:").nth(1).expect("install notes");
    assert!(!notes.contains('…'), "a placeholder in the notes: {notes}");
    assert!(
        !notes.contains("port-forward") || !notes.contains("&& curl"),
        "{notes}"
    );
    assert!(notes.contains("helm test kmsroute"), "{notes}");
    assert!(notes.contains("https://raw.githubusercontent.com/kmsroute/kmsroute/v0.1.0/deploy/examples/selector-by-tags.yaml"), "{notes}");
}

/// Issue 33: `helm test` is a pod of the same image that checks /readyz through the Service.
#[test]
fn helm_test_checks_readyz_through_the_service() {
    let Some(helm) = helm() else { return };
    let d = render(&helm, &[]).unwrap();
    let test = find(&d, "Pod").expect("the test pod");
    assert_eq!(test["metadata"]["annotations"]["helm.sh/hook"], "test");
    let c = &test["spec"]["containers"][0];
    assert_eq!(c["image"], pod_spec(&d)["containers"][0]["image"]);
    assert_eq!(
        c["args"],
        json!(["probe", "http://kmsroute-metrics.kmsroute.svc:8080/readyz"])
    );
    assert_eq!(test["spec"]["securityContext"]["runAsNonRoot"], true);
    let off = render(&helm, &["tests.enabled=false"]).unwrap();
    assert!(find(&off, "Pod").is_none());
}

/// Issue 33: every value in the schema says what it is (`helm show values`, IDEs), and the
/// aggregated ClusterRoles carry the labels Kubernetes aggregates by.
#[test]
fn every_chart_value_is_described_and_roles_aggregate() {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string("charts/kmsroute/values.schema.json").unwrap(),
    )
    .unwrap();
    let missing = undescribed(&schema);
    assert!(
        missing.is_empty(),
        "values without a description: {missing:?}"
    );
    let values: Value =
        serde_saphyr::from_str(&std::fs::read_to_string("charts/kmsroute/values.yaml").unwrap())
            .unwrap();
    for key in values.as_object().unwrap().keys() {
        assert!(
            schema["properties"].get(key).is_some(),
            "{key} not in the schema"
        );
    }
    let Some(helm) = helm() else { return };
    let d = render(&helm, &[]).unwrap();
    let role = |name: &str| {
        d.iter()
            .find(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{name}"))
    };
    let view = role("kmsroute-view");
    for agg in ["view", "edit", "admin", "cluster-reader"] {
        assert_eq!(
            view["metadata"]["labels"][format!("rbac.authorization.k8s.io/aggregate-to-{agg}")],
            "true"
        );
    }
    assert_eq!(view["rules"][0]["verbs"], json!(["get", "list", "watch"]));
    let edit = role("kmsroute-edit");
    assert!(edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"].is_null());
    let off = render(&helm, &["rbac.aggregateClusterRoles=false"]).unwrap();
    assert_eq!(off.iter().filter(|o| o["kind"] == "ClusterRole").count(), 1);
}
