//! Issue 32, trusted at the edges: where the token may go (only to the ARM endpoint's origin,
//! whatever a response points at), and listings that end (a page limit, a repeated `nextLink`,
//! a wall-clock limit), against the real client over HTTP. A second loopback address
//! (127.0.0.2) plays a foreign host.

#[path = "support/arm.rs"]
mod harness;
#[path = "support/wait.rs"]
mod wait;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, Response};
use kmsroute::azure::client::{
    AzureNetworkApi, ClientSettings, LISTING_LOOP, LISTING_TIMED_OUT, LISTING_TOO_LONG, ListLimits,
};
use kmsroute::azure::credential::StaticToken;
use kmsroute::azure::policy::FOREIGN_ORIGIN;
use kmsroute::azure::{ArmError, ErrorClass, NetworkApi};
use kmsroute::emulator::{Config, ManagementGroup, Seed};
use kmsroute::ids::RouteTableId;
use kmsroute::model::{NextHopType, Route};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SUB: &str = "00000000-0000-0000-0000-000000000001";
const TOKEN: &str = "the-arm-token-7f3a";

fn rg() -> String {
    format!("/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Network")
}

/// What a stand-in server saw: method, path and query, and the `Authorization` header.
#[derive(Debug, Clone)]
struct Seen {
    what: String,
    authorization: Option<String>,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// A stand-in on `addr` (port 0) answering every request with `answer(path_and_query)`;
/// returns its base URL and what it saw.
async fn stand_in(addr: &str, answer: fn(&str) -> Value) -> (String, Log) {
    #[derive(Clone)]
    struct S {
        log: Log,
        answer: fn(&str) -> Value,
        base: Arc<Mutex<String>>,
    }
    async fn handle(State(s): State<S>, req: Request<Body>) -> Response<Body> {
        let what = format!(
            "{} {}",
            req.method(),
            req.uri().path_and_query().map_or("", |p| p.as_str())
        );
        let authorization = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        s.log.lock().unwrap().push(Seen {
            what: what.clone(),
            authorization,
        });
        let base = s.base.lock().unwrap().clone();
        let body = (s.answer)(&what).to_string().replace("{base}", &base);
        Response::builder()
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap()
    }
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let base = format!("http://{}", listener.local_addr().unwrap());
    let log: Log = Arc::default();
    let state = S {
        log: log.clone(),
        answer,
        base: Arc::new(Mutex::new(base.clone())),
    };
    let router = Router::new().fallback(handle).with_state(state);
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (base, log)
}

fn client_on(url: &str, listing: ListLimits) -> AzureNetworkApi {
    AzureNetworkApi::new(
        url::Url::parse(url).unwrap(),
        Arc::new(StaticToken::new(TOKEN)),
        ClientSettings {
            retry: harness::quick_retry(),
            listing,
            ..ClientSettings::default()
        },
    )
    .unwrap()
}

/// Two of every kind a listing reads, so a page size of 1 makes every listing hand out a
/// `nextLink`.
fn estate() -> Seed {
    let r = rg();
    let mut resources = Vec::new();
    for i in 0..2 {
        resources.push(json!({"id": format!("{r}/virtualNetworks/vnet{i}"), "location": "westeurope",
            "properties": {"addressSpace": {"addressPrefixes": [format!("10.{i}.0.0/16")]},
            "subnets": [{"name": "app", "properties": {"addressPrefix": format!("10.{i}.1.0/24")}}]}}));
        resources.push(
            json!({"id": format!("{r}/routeTables/rt{i}"), "location": "westeurope",
            "properties": {"routes": []}}),
        );
        resources.push(
            json!({"id": format!("{r}/networkInterfaces/nic{i}"), "location": "westeurope",
            "properties": {"ipConfigurations": [{"name": "ipconfig1", "properties": {
                "subnet": {"id": format!("{r}/virtualNetworks/vnet{i}/subnets/app")}}}]}}),
        );
        resources.push(
            json!({"id": format!("{r}/publicIPAddresses/pip{i}"), "location": "westeurope",
            "properties": {}}),
        );
        resources.push(
            json!({"id": format!("{r}/loadBalancers/lb{i}"), "location": "westeurope",
            "properties": {}}),
        );
    }
    Seed {
        resources,
        management_groups: vec![ManagementGroup {
            name: "corp".into(),
            parent: None,
            subscriptions: vec![SUB.into(), "00000000-0000-0000-0000-000000000002".into()],
        }],
        ..Seed::default()
    }
}

fn kms_route() -> Route {
    Route {
        name: "kms-20-118-99-224".into(),
        address_prefix: "20.118.99.224/32".into(),
        next_hop_type: NextHopType::Internet,
        next_hop_ip_address: None,
    }
}

fn assert_foreign(e: &ArmError, host: &str, what: &str) {
    assert_eq!(e.code.as_deref(), Some(FOREIGN_ORIGIN), "{what}: {e}");
    assert_eq!(e.class, ErrorClass::Retryable, "{what}: {e}");
    assert!(e.message.contains(host), "{what} names the host: {e}");
}

/// A misbehaving ARM (the emulator with its links pointed at 127.0.0.2) hands out `nextLink`s
/// for every listing kind, raw and generated, and `Azure-AsyncOperation` for a write: the
/// foreign origin sees no request at all, every call fails naming its host, and the write is
/// not reported done although the foreign host would have said `Succeeded`.
#[tokio::test]
async fn the_token_never_leaves_the_arm_endpoints_origin() {
    let (foreign, seen) = stand_in(
        "127.0.0.2:0",
        |_| json!({"status": "Succeeded", "value": [{"id": "/subscriptions/x", "name": "x"}]}),
    )
    .await;
    let host = foreign.trim_start_matches("http://").to_string();
    let em = harness::emulator(
        Config {
            page_size: 1,
            link_base: Some(foreign.clone()),
            ..Config::default()
        },
        estate(),
    )
    .await;
    let api = client_on(&em.url(), ListLimits::default());
    let subs = BTreeSet::from([SUB.to_string()]);

    let e = api.inventory(&subs).await.unwrap_err();
    assert_foreign(&e, &host, "VirtualNetworks_ListAll (raw pages)");
    let e = api.relist(SUB, None).await.unwrap_err();
    assert_foreign(&e, &host, "relist");
    let e = api.network_interfaces(&subs).await.unwrap_err();
    assert_foreign(&e, &host, "NetworkInterfaces_ListAll (generated pager)");
    assert_eq!(e.operation, "NetworkInterfaces_ListAll");
    let e = api.egress_facts(&subs).await.unwrap_err();
    assert_foreign(&e, &host, "PublicIPAddresses_ListAll (generated pager)");
    let e = api
        .management_group_subscriptions("corp")
        .await
        .unwrap_err();
    assert_foreign(&e, &host, "ManagementGroups_GetDescendants");

    // The write: ARM accepts it (201) and points its status at the foreign host.
    let table = RouteTableId::parse(&format!("{}/routeTables/rt0", rg())).unwrap();
    let e = api.put_route(&table, &kms_route()).await.unwrap_err();
    assert_foreign(&e, &host, "Routes_CreateOrUpdate's Azure-AsyncOperation");
    assert!(
        e.message.contains("not reported done"),
        "the write is not reported done: {e}"
    );
    // The Activity Log's pages too (two writes by someone else on the same table).
    let other = harness::client_with_token(&em, "alice@contoso.example", harness::quick());
    for _ in 0..2 {
        let _ = other.put_route(&table, &kms_route()).await;
    }
    let route = format!("{table}/routes/{}", kms_route().name);
    let e = api
        .activity_log(&route, 0)
        .await
        .expect_err("a second page off the ARM endpoint");
    assert_foreign(&e, &host, "ActivityLogs_List");

    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.is_empty(),
        "the foreign origin saw requests (the token went with {} of them): {:?}",
        seen.iter().filter(|s| s.authorization.is_some()).count(),
        seen.iter().map(|s| &s.what).collect::<Vec<_>>()
    );
}

/// The path of a request a stand-in saw (`GET /path?query`).
fn path_of(what: &str) -> String {
    what.split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .split('?')
        .next()
        .unwrap_or("/")
        .to_string()
}

/// A same-origin ARM whose listing never ends: each page links to the next (`?page=N+1`).
fn endless(what: &str) -> Value {
    let n: u64 = what
        .split("page=")
        .nth(1)
        .and_then(|s| s.split('&').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let path = path_of(what);
    json!({"value": [], "nextLink": format!("{{base}}{path}?api-version=2024-03-01&page={}", n + 1)})
}

/// A same-origin ARM whose second page links back to the first.
fn looping(what: &str) -> Value {
    let path = path_of(what);
    let second = what.contains("page=1");
    let next = if second { 0 } else { 1 };
    json!({"value": [], "nextLink": format!("{{base}}{path}?api-version=2024-03-01&page={next}")})
}

/// Every listing ends: an endless chain of distinct `nextLink`s is cut at the page limit, a
/// chain that comes back to a page is cut at once, each with a named error, for the raw
/// listings and the generated pagers alike; a listing that outlasts its time is cut too. The
/// subscription is free again afterwards (a second call is answered, not stuck).
#[tokio::test]
async fn every_listing_ends_with_a_named_error() {
    let limits = ListLimits {
        max_pages: 50,
        max_time: Duration::from_secs(60),
    };
    let subs = BTreeSet::from([SUB.to_string()]);
    let (url, seen) = stand_in("127.0.0.1:0", endless).await;
    let api = client_on(&url, limits);
    let e = api.relist(SUB, None).await.unwrap_err();
    assert_eq!(e.code.as_deref(), Some(LISTING_TOO_LONG), "{e}");
    assert!(e.message.contains("more than 50 pages"), "{e}");
    let pages = seen.lock().unwrap().len();
    assert_eq!(pages, 50, "the raw listing stops at its limit");
    let e = api.network_interfaces(&subs).await.unwrap_err();
    assert_eq!(e.code.as_deref(), Some(LISTING_TOO_LONG), "{e}");
    assert_eq!(e.operation, "NetworkInterfaces_ListAll");
    let e = api
        .management_group_subscriptions("corp")
        .await
        .unwrap_err();
    assert_eq!(e.code.as_deref(), Some(LISTING_TOO_LONG), "{e}");
    // The Activity Log keeps its own cut (20 pages): it ends without an error.
    assert!(
        api.activity_log(&format!("{}/routeTables/rt", rg()), 0)
            .await
            .is_ok()
    );

    let (url, seen) = stand_in("127.0.0.1:0", looping).await;
    let api = client_on(&url, limits);
    let e = api.relist(SUB, None).await.unwrap_err();
    assert_eq!(e.code.as_deref(), Some(LISTING_LOOP), "{e}");
    assert!(e.message.contains("already read"), "{e}");
    assert!(
        seen.lock().unwrap().len() <= 3,
        "a loop is seen when it closes"
    );
    let e = api.egress_facts(&subs).await.unwrap_err();
    assert_eq!(e.code.as_deref(), Some(LISTING_LOOP), "{e}");

    // A wall-clock limit: with pages this slow to come (a stand-in that answers every page,
    // but the limit is shorter than the listing), the listing is stopped.
    let (url, _) = stand_in("127.0.0.1:0", endless).await;
    let api = client_on(
        &url,
        ListLimits {
            max_pages: 1_000_000,
            max_time: Duration::from_millis(300),
        },
    );
    let e = api.relist(SUB, None).await.unwrap_err();
    assert_eq!(e.code.as_deref(), Some(LISTING_TIMED_OUT), "{e}");
    let e = api.relist(SUB, None).await.unwrap_err();
    assert_eq!(
        e.code.as_deref(),
        Some(LISTING_TIMED_OUT),
        "a second listing runs"
    );
}

/// `kmsroute plan` as a process with `RUST_LOG` set to `filter`, against `url`; its stderr.
fn plan_logging(url: &str, filter: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kmsroute"));
    cmd.args([
        "plan",
        "-f",
        "examples/kmsroutepolicy.yaml",
        "--arm-endpoint",
        url,
    ])
    .env_clear()
    .env("PATH", std::env::var("PATH").unwrap_or_default())
    .env("RUST_LOG", filter);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("kmsroute runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// The `RUST_LOG` values a user or a support engineer might set: global levels, the SDK's
/// modules (which outrank a crate-level cap when it is only a directive), a span, the GA
/// line's crates, the HTTP stack at trace.
const LOG_MATRIX: &[&str] = &[
    "trace",
    "debug",
    "azure_core::policies=debug",
    "azure_core::policies::transport=debug",
    "azure_core=trace,azure_mgmt_network=trace",
    "[pass]=trace,[reconciling object]=debug",
    "azure_identity=trace,typespec=trace,typespec_client_core=trace,azure_core=trace",
    "reqwest=trace,hyper=trace,hyper_util=trace",
];

/// Issue 32, item 2: no `RUST_LOG` prints the bearer token. The emulator accepts only this
/// token, so every ARM request carries it; each filter of the matrix runs `plan` and its
/// stderr is searched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_rust_log_setting_prints_the_token() {
    const STATIC: &str = "s3cret-static-token-91c2";
    let em = harness::emulator(
        Config {
            token: Some(STATIC.into()),
            ..Config::default()
        },
        harness::demo_estate(),
    )
    .await;
    let url = em.url();
    for filter in LOG_MATRIX {
        let url = url.clone();
        let (code, err) = tokio::task::spawn_blocking(move || {
            plan_logging(
                &url,
                filter,
                &[
                    ("KMSROUTE_AUTH", "static-token"),
                    ("KMSROUTE_STATIC_TOKEN", STATIC),
                ],
            )
        })
        .await
        .unwrap();
        assert!(matches!(code, Some(1 | 3)), "{filter}: {code:?} {err}");
        if matches!(*filter, "trace" | "debug") {
            assert!(err.lines().count() > 5, "{filter}: logging was on: {err}");
        }
        let leak: Vec<&str> = err.lines().filter(|l| l.contains(STATIC)).take(2).collect();
        assert!(
            leak.is_empty(),
            "RUST_LOG={filter} printed the token: {leak:#?}"
        );
    }
}

/// The same with workload identity on the emulator's Entra ID: neither the projected token
/// (the client assertion) nor any access token it is exchanged for is printed, whatever the
/// filter. Every JWT starts `eyJ`; none may appear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_rust_log_setting_prints_a_workload_identity_token() {
    let em = harness::emulator(
        Config {
            entra: Some(harness::workload_entra(3600)),
            ..Config::default()
        },
        harness::demo_estate(),
    )
    .await;
    let dir = std::env::temp_dir().join(format!("kmsroute-edges-wi-{}", std::process::id()));
    let (_, file) = harness::projected_token(&dir);
    let url = em.url();
    for filter in LOG_MATRIX {
        let (url, file) = (url.clone(), file.clone());
        let (code, err) = tokio::task::spawn_blocking(move || {
            plan_logging(
                &url,
                filter,
                &[
                    ("KMSROUTE_AUTH", "workload-identity"),
                    ("AZURE_AUTHORITY_HOST", &url),
                    ("AZURE_TENANT_ID", harness::WI_TENANT),
                    ("AZURE_CLIENT_ID", harness::WI_CLIENT),
                    ("AZURE_FEDERATED_TOKEN_FILE", &file),
                ],
            )
        })
        .await
        .unwrap();
        assert!(matches!(code, Some(1 | 3)), "{filter}: {code:?} {err}");
        let leak: Vec<&str> = err.lines().filter(|l| l.contains("eyJ")).take(2).collect();
        assert!(
            leak.is_empty(),
            "RUST_LOG={filter} printed a token: {leak:#?}"
        );
    }
    assert!(em.entra_stats().tokens_issued >= LOG_MATRIX.len() as u64);
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 32, item 7: the CLI reads at most 16 MiB of a policy file or stdin (`/dev/zero` is an
/// input error, exit 2, not an allocator failure), and the emulator refuses a request body
/// over ARM's 4 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_are_bounded() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    for cmd in [
        vec!["validate", "-f", "/dev/zero"],
        vec![
            "plan",
            "-f",
            "/dev/zero",
            "--arm-endpoint",
            "http://127.0.0.1:9",
        ],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kmsroute"))
            .args(&cmd)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd:?}: {err}");
        assert!(
            err.contains("/dev/zero: more than 16 MiB"),
            "{cmd:?}: {err}"
        );
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_kmsroute"))
        .args(["validate", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let chunk = vec![b'a'; 1 << 20];
        // kmsroute stops reading at its limit: the pipe breaks, as it should.
        for _ in 0..64 {
            if pipe.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let out = child.wait_with_output().unwrap();
    let _ = feeder.join();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("stdin: more than 16 MiB"), "{err}");

    let em = harness::emulator(Config::default(), estate()).await;
    let big = vec![b' '; kmsroute::emulator::MAX_REQUEST_BODY + 1];
    let resp = reqwest::Client::new()
        .put(format!(
            "{}{}/routeTables/rt0?api-version=2024-03-01",
            em.url(),
            rg()
        ))
        .bearer_auth("t")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "RequestContentTooLarge");
}
