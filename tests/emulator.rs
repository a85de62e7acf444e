//! The ARM emulator over real HTTP: the official examples replay against it, and it keeps the
//! ARM behaviours the client must cope with (auth, LROs, ETags, the subnet-PUT trap, paging,
//! throttling, one write per VNet).

#[path = "support/arm.rs"]
mod harness;

use kmsroute::emulator::{self, Config, EmulatorHandle, FaultRule, OtherWrite, Seed, Throttle};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::time::Duration;

const FIXTURES: &str = "tests/fixtures/arm/2024-03-01";
const SUB: &str = "00000000-0000-0000-0000-000000000001";
const V: &str = "api-version=2024-03-01";

async fn start(config: Config, resources: Vec<Value>) -> EmulatorHandle {
    let seed = Seed {
        resources,
        learned_routes: vec![],
        ..Seed::default()
    };
    harness::emulator(config, seed).await
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

async fn call(
    em: &EmulatorHandle,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    call_with(em, method, path, body, &[]).await
}

async fn call_with(
    em: &EmulatorHandle,
    method: &str,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let sep = if path.contains('?') { '&' } else { '?' };
    let url = if path.starts_with("http") {
        path.to_string()
    } else {
        format!("{}{path}{sep}{V}", em.url())
    };
    let mut req = http()
        .request(method.parse().unwrap(), url)
        .bearer_auth("test-token");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

fn rt_id(name: &str) -> String {
    format!("/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Network/routeTables/{name}")
}
fn vnet_id(name: &str) -> String {
    format!(
        "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/{name}"
    )
}

fn table(name: &str, routes: Value) -> Value {
    json!({"id": rt_id(name), "location": "westeurope", "properties": {"routes": routes}})
}

fn vnet(name: &str, subnets: Value) -> Value {
    json!({"id": vnet_id(name), "location": "westeurope", "properties": {"addressSpace": {"addressPrefixes": ["10.0.0.0/16"]}, "subnets": subnets}})
}

fn subnet(vnet: &str, name: &str, props: Value) -> Value {
    json!({"id": format!("{}/subnets/{name}", vnet_id(vnet)), "name": name, "properties": props})
}

#[test]
fn fixture_files_match_their_manifest_hashes() {
    let manifest = std::fs::read_to_string(format!("{FIXTURES}/MANIFEST.txt")).unwrap();
    let mut checked = 0;
    for line in manifest
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let cols: Vec<&str> = line.split('\t').collect();
        let bytes = std::fs::read(format!("{FIXTURES}/{}", cols[0])).unwrap();
        let hash = format!("{:x}", Sha256::digest(&bytes));
        assert_eq!(hash, cols[3], "{}", cols[0]);
        checked += 1;
    }
    assert_eq!(checked, 32);
}

/// Keys and JSON types of `expected` must be present in `actual` (extra keys allowed).
fn assert_shape(expected: &Value, actual: &Value, path: &str) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                let av = a
                    .get(k)
                    .unwrap_or_else(|| panic!("{path}.{k} missing in {actual}"));
                assert_shape(ev, av, &format!("{path}.{k}"));
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            if let (Some(e0), Some(a0)) = (e.first(), a.first()) {
                assert_shape(e0, a0, &format!("{path}[0]"));
            }
        }
        (e, a) => {
            let kind = |v: &Value| std::mem::discriminant(v);
            assert!(kind(e) == kind(a), "{path}: expected {e}, got {a}");
        }
    }
}

fn example(name: &str) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(format!("{FIXTURES}/examples/{name}.json")).unwrap(),
    )
    .unwrap()
}

/// The resource path an example addresses, from its parameters.
fn example_path(p: &Value, list: bool, kind: &str) -> String {
    let s = |k: &str| p[k].as_str().unwrap_or_default().to_string();
    let base = format!("/subscriptions/{}", s("subscriptionId"));
    let rg = format!(
        "{base}/resourceGroups/{}/providers/Microsoft.Network",
        s("resourceGroupName")
    );
    if p.get("routeTableName").is_some() {
        let t = format!("{rg}/routeTables/{}", s("routeTableName"));
        match (p.get("routeName"), list) {
            (Some(_), _) => format!("{t}/routes/{}", s("routeName")),
            (None, true) => format!("{t}/routes"),
            (None, false) => t,
        }
    } else if p.get("virtualNetworkName").is_some() {
        let v = format!("{rg}/virtualNetworks/{}", s("virtualNetworkName"));
        match (p.get("subnetName"), list) {
            (Some(_), _) => format!("{v}/subnets/{}", s("subnetName")),
            (None, true) => format!("{v}/subnets"),
            (None, false) => v,
        }
    } else if p.get("resourceGroupName").is_some() {
        format!("{rg}/{kind}")
    } else {
        format!("{base}/providers/Microsoft.Network/{kind}")
    }
}

/// Seeds what an example needs to exist, from its own response bodies.
fn example_seed(ex: &Value) -> Vec<Value> {
    let body = ex["responses"]["200"]["body"].clone();
    let items: Vec<Value> = match body.get("value") {
        Some(v) => v.as_array().cloned().unwrap_or_default(),
        None if body.is_object() => vec![body],
        None => vec![],
    };
    let p = &ex["parameters"];
    let rg_base = format!(
        "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Network",
        p["subscriptionId"].as_str().unwrap(),
        p["resourceGroupName"].as_str().unwrap_or("rg1")
    );
    let mut seed = Vec::new();
    for item in items {
        let id = item["id"].as_str().unwrap_or_default().to_string();
        if id.contains("/routes/") || id.contains("/subnets/") {
            // A child: seed its parent around it.
            let (parent, _) = id
                .rsplit_once(if id.contains("/routes/") {
                    "/routes/"
                } else {
                    "/subnets/"
                })
                .unwrap();
            let child_key = if id.contains("/routes/") {
                "routes"
            } else {
                "subnets"
            };
            if let Some(existing) = seed.iter_mut().find(|r: &&mut Value| r["id"] == parent) {
                existing["properties"][child_key]
                    .as_array_mut()
                    .unwrap()
                    .push(item);
            } else {
                seed.push(
                    json!({"id": parent, "location": "westus", "properties": {child_key: [item]}}),
                );
            }
        } else if id.contains("/Microsoft.Network/") {
            seed.push(item);
        }
    }
    // Parents that PUT/DELETE examples need.
    if p.get("routeTableName").is_some() && seed.is_empty() && p.get("routeName").is_some() {
        seed.push(json!({"id": format!("{rg_base}/routeTables/{}", p["routeTableName"].as_str().unwrap()), "location": "westus", "properties": {"routes": []}}));
    }
    if p.get("virtualNetworkName").is_some() && seed.is_empty() {
        seed.push(json!({"id": format!("{rg_base}/virtualNetworks/{}", p["virtualNetworkName"].as_str().unwrap()), "location": "westus", "properties": {"subnets": []}}));
    }
    seed
}

fn body_props(ex: &Value) -> Option<serde_json::Map<String, Value>> {
    let body = ex["parameters"]
        .as_object()?
        .values()
        .find(|v| v.is_object())?;
    body.get("properties")?.as_object().cloned()
}

#[tokio::test]
async fn the_official_examples_replay_with_matching_status_codes_and_shapes() {
    let cases = [
        ("RouteTableGet", "GET", false),
        ("RouteTableList", "GET", true),
        ("RouteTableListAll", "GET", true),
        ("RouteTableCreate", "PUT", false),
        ("RouteTableCreateWithRoute", "PUT", false),
        ("RouteTableUpdateTags", "PATCH", false),
        ("RouteTableDelete", "DELETE", false),
        ("RouteTableRouteGet", "GET", false),
        ("RouteTableRouteList", "GET", true),
        ("RouteTableRouteCreate", "PUT", false),
        ("RouteTableRouteDelete", "DELETE", false),
        ("SubnetGet", "GET", false),
        ("SubnetGetWithDelegation", "GET", false),
        ("SubnetGetWithSharingScope", "GET", false),
        ("SubnetList", "GET", true),
        ("SubnetCreate", "PUT", false),
        ("SubnetCreateServiceEndpoint", "PUT", false),
        ("SubnetCreateWithDelegation", "PUT", false),
        ("VirtualNetworkGet", "GET", false),
        ("VirtualNetworkGetWithServiceAssociationLink", "GET", false),
        ("VirtualNetworkGetWithSubnetDelegation", "GET", false),
        ("VirtualNetworkList", "GET", true),
        ("VirtualNetworkListAll", "GET", true),
    ];
    for (name, method, list) in cases {
        let ex = example(name);
        let kind = if name.starts_with("RouteTable") {
            "routeTables"
        } else {
            "virtualNetworks"
        };
        let mut seed = example_seed(&ex);
        if matches!(method, "PUT") && name.starts_with("RouteTableCreate") {
            seed.clear();
        }
        if name == "RouteTableUpdateTags" || name == "RouteTableDelete" {
            let id = example_path(&ex["parameters"], false, kind);
            seed = vec![json!({"id": id, "location": "westus", "properties": {"routes": []}})];
        }
        if name == "RouteTableRouteDelete" {
            let route = example_path(&ex["parameters"], false, kind);
            let (t, r) = route.rsplit_once("/routes/").unwrap();
            seed = vec![
                json!({"id": t, "location": "westus", "properties": {"routes": [{"name": r, "properties": {"addressPrefix": "10.0.0.0/8", "nextHopType": "None"}}]}}),
            ];
        }
        let em = start(Config::default(), seed).await;
        let path = example_path(&ex["parameters"], list, kind);
        // The body parameter is the one object-valued parameter (`parameters`, `routeParameters`, …).
        let body = ex["parameters"]
            .as_object()
            .unwrap()
            .values()
            .find(|v| v.is_object())
            .cloned();
        let (status, _, actual) = call(
            &em,
            method,
            &path,
            body.filter(|_| method != "GET" && method != "DELETE"),
        )
        .await;
        let responses = ex["responses"].as_object().unwrap();
        assert!(
            responses.contains_key(&status.to_string()),
            "{name}: status {status} not in {:?}: {actual}",
            responses.keys()
        );
        if let Some(expected) = responses[&status.to_string()].get("body") {
            let mut expected = expected.clone();
            // Some official PUT examples answer with properties their request never sent
            // (SubnetCreateWithDelegation shows a delegation); a faithful service echoes what
            // it was given, so only the properties the request carried are compared.
            if method == "PUT"
                && let (Some(sent), Some(props)) = (
                    body_props(&ex),
                    expected
                        .get_mut("properties")
                        .and_then(Value::as_object_mut),
                )
            {
                props.retain(|k, _| k == "provisioningState" || sent.contains_key(k));
            }
            assert_shape(&expected, &actual, name);
        }
    }
}

#[tokio::test]
async fn requests_without_a_bearer_token_or_api_version_are_refused() {
    let em = start(
        Config {
            token: Some("right".into()),
            ..Config::default()
        },
        vec![table("rt", json!([]))],
    )
    .await;
    let url = format!("{}{}?{V}", em.url(), rt_id("rt"));
    let r = http().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http().get(&url).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http().get(&url).bearer_auth("right").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = http()
        .get(format!("{}{}", em.url(), rt_id("rt")))
        .bearer_auth("right")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "MissingApiVersionParameter");
}

#[tokio::test]
async fn put_creates_with_201_and_an_async_operation_then_updates_with_200() {
    let em = start(
        Config {
            lro_duration: Duration::from_millis(300),
            ..Config::default()
        },
        vec![table("rt", json!([]))],
    )
    .await;
    let route = format!("{}/routes/kms-1", rt_id("rt"));
    let body =
        json!({"properties": {"addressPrefix": "20.118.99.224/32", "nextHopType": "Internet"}});
    let (status, headers, resp) = call(&em, "PUT", &route, Some(body.clone())).await;
    assert_eq!(status, 201);
    assert_eq!(resp["properties"]["provisioningState"], "Updating");
    let op = headers["azure-asyncoperation"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        op.contains("/providers/Microsoft.Network/locations/westeurope/operations/"),
        "{op}"
    );
    let (_, h, first) = call(&em, "GET", &op, None).await;
    assert_eq!(first["status"], "InProgress");
    assert!(h.contains_key("retry-after"));
    // Wait for the operation by polling it, as a client does.
    let mut status_now = first["status"].clone();
    for _ in 0..50 {
        if status_now == "Succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        status_now = call(&em, "GET", &op, None).await.2["status"].clone();
    }
    assert_eq!(status_now, "Succeeded");
    let (status, _, _) = call(&em, "PUT", &route, Some(body)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn every_write_changes_the_etag_shared_by_a_table_and_its_routes() {
    let em = start(Config::default(), vec![table("rt", json!([{"name": "a", "properties": {"addressPrefix": "10.0.0.0/8", "nextHopType": "None"}}]))]).await;
    let (_, h, t1) = call(&em, "GET", &rt_id("rt"), None).await;
    assert_eq!(h["etag"].to_str().unwrap(), t1["etag"].as_str().unwrap());
    assert!(t1["etag"].as_str().unwrap().starts_with("W/\""));
    assert_eq!(t1["properties"]["routes"][0]["etag"], t1["etag"]);
    let (_, _, r) = call(
        &em,
        "PUT",
        &format!("{}/routes/b", rt_id("rt")),
        Some(json!({"properties": {"addressPrefix": "52.1.2.3/32", "nextHopType": "Internet"}})),
    )
    .await;
    let (_, _, t2) = call(&em, "GET", &rt_id("rt"), None).await;
    assert_ne!(t1["etag"], t2["etag"]);
    assert_eq!(r["etag"], t2["etag"]);
}

#[tokio::test]
async fn if_match_with_a_stale_etag_is_412_and_changes_nothing() {
    let s = subnet("v", "app", json!({"addressPrefix": "10.0.1.0/24"}));
    let em = start(
        Config::default(),
        vec![vnet("v", json!([s])), table("rt", json!([]))],
    )
    .await;
    let path = format!("{}/subnets/app", vnet_id("v"));
    let body =
        json!({"properties": {"addressPrefix": "10.0.1.0/24", "routeTable": {"id": rt_id("rt")}}});
    let (status, _, err) = call_with(
        &em,
        "PUT",
        &path,
        Some(body),
        &[("if-match", "W/\"stale\"")],
    )
    .await;
    assert_eq!(status, 412);
    assert_eq!(err["error"]["code"], "PreconditionFailed");
    assert_eq!(
        err["error"]["details"][0]["code"],
        "PreconditionFailedEtagMismatch"
    );
    let (_, _, now) = call(&em, "GET", &path, None).await;
    assert!(now["properties"].get("routeTable").is_none());
    let (status, _, _) = call_with(
        &em,
        "PUT",
        &rt_id("rt"),
        Some(json!({"location": "westeurope"})),
        &[("if-none-match", "*")],
    )
    .await;
    assert_eq!(status, 412, "If-None-Match: * on an existing table");
}

#[tokio::test]
async fn a_subnet_put_replaces_the_whole_subnet_which_is_the_trap() {
    let nsg = json!({"id": format!("/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Network/networkSecurityGroups/nsg"), "location": "westeurope", "properties": {}});
    let s = subnet(
        "v",
        "app",
        json!({"addressPrefix": "10.0.1.0/24", "networkSecurityGroup": {"id": nsg["id"]}, "serviceEndpoints": [{"service": "Microsoft.Storage"}]}),
    );
    let em = start(
        Config::default(),
        vec![vnet("v", json!([s])), nsg, table("rt", json!([]))],
    )
    .await;
    let path = format!("{}/subnets/app", vnet_id("v"));
    let (status, _, _) = call(&em, "PUT", &path, Some(json!({"properties": {"addressPrefix": "10.0.1.0/24", "routeTable": {"id": rt_id("rt")}}}))).await;
    assert_eq!(status, 200);
    let (_, _, now) = call(&em, "GET", &path, None).await;
    assert!(
        now["properties"].get("networkSecurityGroup").is_none(),
        "omitted NSG means dissociated"
    );
    assert!(now["properties"].get("serviceEndpoints").is_none());
    let (_, _, t) = call(&em, "GET", &rt_id("rt"), None).await;
    assert_eq!(
        t["properties"]["subnets"][0]["id"], now["id"],
        "a table lists its subnets"
    );
}

#[tokio::test]
async fn a_route_table_in_use_cannot_be_deleted() {
    let s = subnet(
        "v",
        "app",
        json!({"addressPrefix": "10.0.1.0/24", "routeTable": {"id": rt_id("rt")}}),
    );
    let em = start(
        Config::default(),
        vec![
            vnet("v", json!([s])),
            table("rt", json!([])),
            table("free", json!([])),
        ],
    )
    .await;
    let (status, _, err) = call(&em, "DELETE", &rt_id("rt"), None).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (400, Some("InUseRouteTableCannotBeDeleted"))
    );
    let (status, h, _) = call(&em, "DELETE", &rt_id("free"), None).await;
    assert_eq!(status, 202);
    let (status, _, _) = call(&em, "GET", h["location"].to_str().unwrap(), None).await;
    assert_eq!(status, 204);
    assert_eq!(
        call(&em, "DELETE", &rt_id("free"), None).await.0,
        204,
        "deleting what is absent"
    );
}

#[tokio::test]
async fn lists_page_with_next_links() {
    let tables: Vec<Value> = (0..5)
        .map(|i| table(&format!("rt{i}"), json!([])))
        .collect();
    let em = start(
        Config {
            page_size: 2,
            ..Config::default()
        },
        tables,
    )
    .await;
    let mut url = format!("/subscriptions/{SUB}/providers/Microsoft.Network/routeTables");
    let mut names = Vec::new();
    let mut pages = 0;
    loop {
        let (_, _, body) = call(&em, "GET", &url, None).await;
        pages += 1;
        names.extend(
            body["value"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["name"].as_str().unwrap().to_string()),
        );
        match body["nextLink"].as_str() {
            Some(next) => url = next.to_string(),
            None => break,
        }
    }
    assert_eq!((pages, names.len()), (3, 5));
}

#[tokio::test]
async fn validation_refuses_bad_names_prefixes_and_hops() {
    let em = start(Config::default(), vec![table("rt", json!([]))]).await;
    let put = |name: &str, props: Value| {
        let em = &em;
        let path = format!("{}/routes/{name}", rt_id("rt"));
        async move { call(em, "PUT", &path, Some(json!({"properties": props}))).await }
    };
    let (s, _, e) = put(
        "-bad",
        json!({"addressPrefix": "1.2.3.4/32", "nextHopType": "Internet"}),
    )
    .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (400, Some("InvalidResourceName"))
    );
    let (s, _, _) = put(
        "ok",
        json!({"addressPrefix": "1.2.3.4/40", "nextHopType": "Internet"}),
    )
    .await;
    assert_eq!(s, 400);
    let (s, _, _) = put(
        "ok",
        json!({"addressPrefix": "1.2.3.4/32", "nextHopType": "VirtualAppliance"}),
    )
    .await;
    assert_eq!(s, 400, "VirtualAppliance needs an IP");
    let (s, _, _) = put("ok", json!({"addressPrefix": "1.2.3.4/32", "nextHopType": "Internet", "nextHopIpAddress": "10.0.0.4"})).await;
    assert_eq!(s, 400, "an IP only with VirtualAppliance");
}

#[tokio::test]
async fn a_table_holds_at_most_400_routes() {
    let routes: Vec<Value> = (0..400).map(|i| json!({"name": format!("r{i}"), "properties": {"addressPrefix": format!("10.{}.{}.0/24", i / 256, i % 256), "nextHopType": "None"}})).collect();
    let em = start(Config::default(), vec![table("rt", json!(routes))]).await;
    let (s, _, _) = call(
        &em,
        "PUT",
        &format!("{}/routes/one-more", rt_id("rt")),
        Some(json!({"properties": {"addressPrefix": "52.1.2.3/32", "nextHopType": "Internet"}})),
    )
    .await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn throttling_answers_429_with_retry_after_and_remaining_headers() {
    let t = Throttle {
        read_capacity: 3.0,
        read_refill: 0.5,
        write_capacity: 1.0,
        write_refill: 0.5,
        provider: None,
    };
    let em = start(
        Config {
            throttle: Some(t),
            ..Config::default()
        },
        vec![table("rt", json!([]))],
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let (s, h, _) = call(&em, "GET", &rt_id("rt"), None).await;
        statuses.push(s);
        assert!(h.contains_key("x-ms-ratelimit-remaining-subscription-reads"));
        if s == 429 {
            assert_eq!(h["retry-after"], "2");
        }
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    assert_eq!(em.stats().throttled, 1);
}

#[tokio::test]
async fn a_second_write_to_a_vnet_while_one_is_in_progress_is_retryable() {
    let a = subnet("v", "a", json!({"addressPrefix": "10.0.1.0/24"}));
    let b = subnet("v", "b", json!({"addressPrefix": "10.0.2.0/24"}));
    let em = start(
        Config {
            lro_duration: Duration::from_secs(5),
            ..Config::default()
        },
        vec![vnet("v", json!([a, b]))],
    )
    .await;
    let (s1, _, _) = call(
        &em,
        "PUT",
        &format!("{}/subnets/a", vnet_id("v")),
        Some(json!({"properties": {"addressPrefix": "10.0.1.0/24"}})),
    )
    .await;
    let (s2, h, e) = call(
        &em,
        "PUT",
        &format!("{}/subnets/b", vnet_id("v")),
        Some(json!({"properties": {"addressPrefix": "10.0.2.0/24"}})),
    )
    .await;
    assert_eq!(s1, 200);
    assert_eq!(
        (s2, e["error"]["code"].as_str()),
        (429, Some("RetryableError"))
    );
    assert_eq!(
        e["error"]["details"][0]["code"],
        "RetryableErrorDueToAnotherOperation"
    );
    assert!(h.contains_key("retry-after"));
}

#[tokio::test]
async fn faults_and_the_other_writer_act_as_configured() {
    let em = start(Config::default(), vec![table("rt", json!([{"name": "a", "properties": {"addressPrefix": "10.0.0.0/8", "nextHopType": "None"}}]))]).await;
    em.add_fault(FaultRule {
        method: Some("GET".into()),
        status: Some(503),
        count: Some(1),
        ..FaultRule::default()
    });
    assert_eq!(call(&em, "GET", &rt_id("rt"), None).await.0, 503);
    assert_eq!(
        call(&em, "GET", &rt_id("rt"), None).await.0,
        200,
        "count-limited fault is spent"
    );
    let before = call(&em, "GET", &rt_id("rt"), None).await.2;
    em.other_writer(OtherWrite::DeleteRoute {
        route_table: rt_id("rt"),
        route: "a".into(),
    })
    .unwrap();
    let after = call(&em, "GET", &rt_id("rt"), None).await.2;
    assert_eq!(after["properties"]["routes"], json!([]));
    assert_ne!(
        before["etag"], after["etag"],
        "the other writer's edit moves the etag too"
    );
    let stats = em.stats();
    assert_eq!(stats.by_operation.get("RouteTables_Get 503"), Some(&1));
}

#[tokio::test]
async fn a_table_lists_its_subnets_after_every_change() {
    // The table→subnets index is cached between changes; each change to a VNet must show.
    let s = subnet("v", "app", json!({"addressPrefix": "10.0.1.0/24"}));
    let em = start(
        Config::default(),
        vec![
            vnet("v", json!([s])),
            vnet(
                "w",
                json!([subnet(
                    "w",
                    "db",
                    json!({"addressPrefix": "10.1.1.0/24", "routeTable": {"id": rt_id("rt")}})
                )]),
            ),
            table("rt", json!([])),
            table("rt2", json!([])),
        ],
    )
    .await;
    let path = format!("{}/subnets/app", vnet_id("v"));
    let users = |t: &Value| {
        t["properties"]["subnets"]
            .as_array()
            .map(|a| a.len())
            .unwrap_or(0)
    };
    let (_, _, t) = call(&em, "GET", &rt_id("rt"), None).await;
    assert_eq!(users(&t), 1, "the seeded association of w/db");
    let (status, _, _) = call(&em, "PUT", &path, Some(json!({"properties": {"addressPrefix": "10.0.1.0/24", "routeTable": {"id": rt_id("rt")}}}))).await;
    assert_eq!(status, 200);
    let (_, _, t) = call(&em, "GET", &rt_id("rt"), None).await;
    assert_eq!(users(&t), 2, "association shows after a cached read");
    // Moving w/db to another table moves it, and v/app stays (the index is kept per VNet).
    let other = format!("{}/subnets/db", vnet_id("w"));
    let (status, _, _) = call(&em, "PUT", &other, Some(json!({"properties": {"addressPrefix": "10.1.1.0/24", "routeTable": {"id": rt_id("rt2")}}}))).await;
    assert_eq!(status, 200);
    let (_, _, t) = call(&em, "GET", &rt_id("rt"), None).await;
    assert_eq!(users(&t), 1, "{t}");
    let (_, _, t2) = call(&em, "GET", &rt_id("rt2"), None).await;
    assert_eq!(users(&t2), 1, "{t2}");
    let (status, _, _) = call(
        &em,
        "PUT",
        &path,
        Some(json!({"properties": {"addressPrefix": "10.0.1.0/24"}})),
    )
    .await;
    assert_eq!(status, 200);
    let (_, _, t) = call(&em, "GET", &rt_id("rt"), None).await;
    assert_eq!(users(&t), 0, "dissociation shows too");
    let (status, _, _) = call(&em, "DELETE", &rt_id("rt"), None).await;
    assert!(status == 200 || status == 202 || status == 204, "{status}");
}

#[tokio::test]
async fn two_routes_with_one_prefix_are_a_route_conflict() {
    let em = start(
        Config::default(),
        vec![table(
            "rt",
            json!([{"name": "legacy-kms", "properties": {"addressPrefix": "23.102.135.246/32", "nextHopType": "VirtualAppliance", "nextHopIpAddress": "10.0.0.4"}}]),
        )],
    )
    .await;
    let (status, _, err) = call(
        &em,
        "PUT",
        &format!("{}/routes/kms-23-102-135-246", rt_id("rt")),
        Some(json!({"properties": {"addressPrefix": "23.102.135.246/32", "nextHopType": "Internet"}})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["code"], "RouteConflict");
    // Rewriting the same route under its own name is fine.
    let (status, _, _) = call(
        &em,
        "PUT",
        &format!("{}/routes/legacy-kms", rt_id("rt")),
        Some(json!({"properties": {"addressPrefix": "23.102.135.246/32", "nextHopType": "Internet"}})),
    )
    .await;
    assert_eq!(status, 200);
    // A table PUT with two routes for one prefix is refused as a whole.
    let (status, _, err) = call(
        &em,
        "PUT",
        &rt_id("rt2"),
        Some(json!({"location": "westeurope", "properties": {"routes": [
            {"name": "a", "properties": {"addressPrefix": "10.0.0.0/8", "nextHopType": "None"}},
            {"name": "b", "properties": {"addressPrefix": "10.0.0.0/8", "nextHopType": "VirtualNetworkGateway"}}
        ]}})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["code"], "RouteConflict");
}

#[tokio::test]
async fn the_control_endpoint_shows_one_resource_without_counting_an_arm_read() {
    let em = start(
        Config::default(),
        vec![table("rt", json!([{"name": "a", "properties": {"addressPrefix": "10.0.0.0/8", "nextHopType": "None"}}]))],
    )
    .await;
    let url = format!("{}/_emulator/resource{}", em.url(), rt_id("RT"));
    let got: Value = http().get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(got["properties"]["routes"][0]["name"], "a");
    let missing = http()
        .get(format!("{}/_emulator/resource{}", em.url(), rt_id("nope")))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(em.stats().reads, 0);
}

const OTHER: &str = "99999999-9999-9999-9999-999999999999";

#[tokio::test]
async fn an_unknown_subscription_answers_404_subscription_not_found_for_reads_and_writes() {
    let em = start(Config::default(), vec![table("rt", json!([]))]).await;
    let list = format!("/subscriptions/{OTHER}/providers/Microsoft.Network/virtualNetworks");
    let (status, _, body) = call(&em, "GET", &list, None).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "SubscriptionNotFound");
    assert!(body["error"]["message"].as_str().unwrap().contains(OTHER));
    let put = format!(
        "/subscriptions/{OTHER}/resourceGroups/rg/providers/Microsoft.Network/routeTables/rt"
    );
    let (status, _, body) = call(&em, "PUT", &put, Some(json!({"location": "westeurope"}))).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "SubscriptionNotFound");
    assert!(
        em.dump()
            .resources
            .iter()
            .all(|r| !r["id"].as_str().unwrap().contains(OTHER))
    );
    // The seeded subscription itself is known.
    let (status, _, _) = call(
        &em,
        "GET",
        &format!("/subscriptions/{SUB}/providers/Microsoft.Network/routeTables"),
        None,
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn seeded_empty_and_unauthorized_subscriptions_behave_as_in_azure() {
    let seed = Seed {
        resources: vec![table("rt", json!([]))],
        subscriptions: vec![OTHER.into()],
        unauthorized_subscriptions: vec!["88888888-8888-8888-8888-888888888888".into()],
        ..Seed::default()
    };
    let em = emulator::start(Config::default(), seed, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (status, _, body) = call(
        &em,
        "GET",
        &format!("/subscriptions/{OTHER}/providers/Microsoft.Network/virtualNetworks"),
        None,
    )
    .await;
    assert_eq!(status, 200, "an empty subscription lists nothing");
    assert_eq!(body["value"], json!([]));
    let (status, _, body) = call(
        &em,
        "GET",
        "/subscriptions/88888888-8888-8888-8888-888888888888/providers/Microsoft.Network/virtualNetworks",
        None,
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "AuthorizationFailed");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Microsoft.Network/virtualNetworks/read"),
        "{body}"
    );
}

#[tokio::test]
async fn an_emulator_seeded_with_nothing_accepts_any_subscription() {
    let em = start(Config::default(), vec![]).await;
    let (status, _, _) = call(
        &em,
        "GET",
        &format!("/subscriptions/{OTHER}/providers/Microsoft.Network/virtualNetworks"),
        None,
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn route_prefixes_are_cidrs_or_known_service_tags() {
    let em = start(Config::default(), vec![table("rt", json!([]))]).await;
    let route = |name: &str| format!("{}/routes/{name}", rt_id("rt"));
    for (name, prefix, expected) in [
        ("storage", "Storage.WestEurope", 201),
        ("cloud", "azurecloud", 201),
        ("cidr", "10.1.0.0/16", 201),
        ("bad-tag", "nonsense", 400),
        ("bad-region", "Storage.West Europe", 400),
    ] {
        let (status, _, body) = call(
            &em,
            "PUT",
            &route(name),
            Some(json!({"properties": {"addressPrefix": prefix, "nextHopType": "Internet"}})),
        )
        .await;
        assert_eq!(status, expected, "{prefix}: {body}");
        if expected == 400 {
            assert_eq!(body["error"]["code"], "InvalidAddressPrefix", "{prefix}");
        }
    }
    let dump = em.dump();
    let t = dump.resources.iter().find(|r| r["name"] == "rt").unwrap();
    let names: Vec<&str> = t["properties"]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(!names.contains(&"bad-tag"));
}

fn deny_internet(scope: &str) -> kmsroute::emulator::PolicyAssignment {
    kmsroute::emulator::PolicyAssignment {
        name: "deny-udr-internet".into(),
        display_name: "Deny UDR with next hop Internet".into(),
        scope: scope.into(),
        definition_name: "Deny-UDR-With-Specific-NextHop".into(),
        definition_display_name:
            "User Defined Routes with 'Next Hop Type' set to 'Internet' should be denied".into(),
        denied_next_hop_types: vec!["Internet".into()],
    }
}

#[tokio::test]
async fn a_deny_assignment_refuses_internet_routes_with_arms_policy_violation_body() {
    let seed = Seed {
        resources: vec![table("rt", json!([]))],
        policy_assignments: vec![deny_internet(&format!("/subscriptions/{SUB}"))],
        ..Seed::default()
    };
    let em = emulator::start(Config::default(), seed, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let route = format!("{}/routes/kms", rt_id("rt"));
    let (status, _, body) = call(
        &em,
        "PUT",
        &route,
        Some(
            json!({"properties": {"addressPrefix": "20.118.99.224/32", "nextHopType": "Internet"}}),
        ),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "RequestDisallowedByPolicy");
    let info = &body["error"]["additionalInfo"][0];
    assert_eq!(info["type"], "PolicyViolation");
    for (k, v) in [
        ("policyAssignmentName", "deny-udr-internet"),
        (
            "policyAssignmentDisplayName",
            "Deny UDR with next hop Internet",
        ),
        (
            "policyAssignmentScope",
            &format!("/subscriptions/{SUB}") as &str,
        ),
        ("policyDefinitionName", "Deny-UDR-With-Specific-NextHop"),
        ("policyDefinitionEffect", "Deny"),
    ] {
        assert_eq!(info["info"][k], v, "{k}");
    }
    assert!(
        info["info"]["policyAssignmentId"]
            .as_str()
            .unwrap()
            .ends_with("/policyAssignments/deny-udr-internet")
    );
    // Another next hop is allowed; a table PUT carrying an Internet route is denied too.
    let (status, _, _) = call(
        &em,
        "PUT",
        &format!("{}/routes/nva", rt_id("rt")),
        Some(json!({"properties": {"addressPrefix": "10.0.0.0/8", "nextHopType": "VirtualAppliance", "nextHopIpAddress": "10.0.0.4"}})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _, body) = call(
        &em,
        "PUT",
        &rt_id("rt2"),
        Some(json!({"location": "westeurope", "properties": {"routes": [{"name": "kms", "properties": {"addressPrefix": "20.118.99.224/32", "nextHopType": "Internet"}}]}})),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "RequestDisallowedByPolicy");
    assert!(em.dump().resources.iter().all(|r| r["name"] != "rt2"));
}

#[tokio::test]
async fn the_network_providers_window_throttles_on_top_of_arms_buckets() {
    // ARM's buckets are roomy here; the provider allows 2 writes per (long) window.
    let t = Throttle {
        read_capacity: 100.0,
        read_refill: 10.0,
        write_capacity: 100.0,
        write_refill: 10.0,
        provider: Some(kmsroute::emulator::ProviderWindow {
            reads: 1000.0,
            writes: 2.0,
            window: Duration::from_secs(3600),
        }),
    };
    let em = start(
        Config {
            throttle: Some(t),
            ..Config::default()
        },
        vec![table("rt", json!([]))],
    )
    .await;
    let mut statuses = Vec::new();
    for i in 0..3 {
        let (s, h, body) = call(
            &em,
            "PUT",
            &format!("{}/routes/r{i}", rt_id("rt")),
            Some(json!({"properties": {"addressPrefix": format!("10.{i}.0.0/16"), "nextHopType": "None"}})),
        )
        .await;
        if s == 429 {
            assert_eq!(body["error"]["code"], "SubscriptionRequestsThrottled");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("Microsoft.Network")
            );
            let wait: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
            assert!(wait >= 1000, "a window's worth of wait: {wait}");
        }
        statuses.push(s);
    }
    assert_eq!(statuses, vec![201, 201, 429]);
    // Reads have their own window and still go through.
    let (s, _, _) = call(&em, "GET", &rt_id("rt"), None).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn management_group_descendants_list_every_level_with_paging() {
    use kmsroute::emulator::ManagementGroup;
    let group = |name: &str, parent: Option<&str>, subs: &[&str]| ManagementGroup {
        name: name.into(),
        parent: parent.map(str::to_string),
        subscriptions: subs.iter().map(|s| s.to_string()).collect(),
    };
    let seed = Seed {
        resources: vec![table("rt", json!([]))],
        management_groups: vec![
            group("corp", None, &[]),
            group(
                "landing-zones",
                Some("corp"),
                &["00000000-0000-0000-0000-0000000000a1"],
            ),
            group(
                "online",
                Some("landing-zones"),
                &[
                    "00000000-0000-0000-0000-0000000000a2",
                    "00000000-0000-0000-0000-0000000000a3",
                ],
            ),
            group("sandbox", None, &["00000000-0000-0000-0000-0000000000b1"]),
        ],
        ..Seed::default()
    };
    let em = emulator::start(
        Config {
            page_size: 2,
            ..Config::default()
        },
        seed,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let mut url = format!(
        "{}/providers/Microsoft.Management/managementGroups/corp/descendants?api-version=2020-05-01",
        em.url()
    );
    let mut subs = Vec::new();
    let mut groups = Vec::new();
    let mut pages = 0;
    loop {
        let page: Value = http()
            .get(&url)
            .bearer_auth("t")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        pages += 1;
        for d in page["value"].as_array().unwrap() {
            match d["type"].as_str().unwrap() {
                "Microsoft.Management/managementGroups/subscriptions" => {
                    subs.push(d["name"].as_str().unwrap().to_string())
                }
                "Microsoft.Management/managementGroups" => {
                    groups.push(d["name"].as_str().unwrap().to_string())
                }
                other => panic!("{other}"),
            }
        }
        match page["nextLink"].as_str() {
            Some(n) => url = n.to_string(),
            None => break,
        }
    }
    subs.sort();
    assert_eq!(
        subs,
        [
            "00000000-0000-0000-0000-0000000000a1",
            "00000000-0000-0000-0000-0000000000a2",
            "00000000-0000-0000-0000-0000000000a3"
        ]
    );
    groups.sort();
    assert_eq!(groups, ["landing-zones", "online"]);
    assert_eq!(pages, 3, "5 entries at 2 a page");
    // A subscription placed under a group exists (it can be listed); an unknown group is 404.
    let (s, _, _) = call(&em, "GET", "/subscriptions/00000000-0000-0000-0000-0000000000a2/providers/Microsoft.Network/virtualNetworks", None).await;
    assert_eq!(s, 200);
    let missing = http()
        .get(format!("{}/providers/Microsoft.Management/managementGroups/nope/descendants?api-version=2020-05-01", em.url()))
        .bearer_auth("t")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

/// ARM sends its remaining-budget headers on every answer, throttled or not (issue 27, defect
/// 7): with throttling off the emulator sends them too, counting down from ARM's documented
/// buckets without ever refusing, so `kmsroute_arm_ratelimit_remaining` is filled in the demo.
#[tokio::test]
async fn the_remaining_budget_headers_come_on_every_answer_even_without_throttling() {
    let em = start(Config::default(), vec![table("rt-a", json!([]))]).await;
    let path = rt_id("rt-a");
    let (status, h, _) = call(&em, "GET", &path, None).await;
    assert_eq!(status, 200);
    let first: f64 = h["x-ms-ratelimit-remaining-subscription-reads"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let (_, h, _) = call(&em, "GET", &path, None).await;
    let second: f64 = h["x-ms-ratelimit-remaining-subscription-reads"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(first <= 249.0 && second <= first, "{first} then {second}");
    let route =
        json!({"properties": {"addressPrefix": "20.118.99.224/32", "nextHopType": "Internet"}});
    let (status, h, _) = call(
        &em,
        "PUT",
        &format!("{}/routes/kms", rt_id("rt-a")),
        Some(route),
    )
    .await;
    assert!(status == 200 || status == 201, "{status}");
    assert!(
        h.contains_key("x-ms-ratelimit-remaining-subscription-writes"),
        "{h:?}"
    );
}
