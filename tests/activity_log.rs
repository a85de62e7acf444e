//! The emulator's Activity Log (`ActivityLogs_List`, api-version 2015-04-01) against the official
//! example in `tests/fixtures/insights/` and the documented `$filter` patterns.

#[path = "support/arm.rs"]
mod harness;

use kmsroute::emulator::{Config, EmulatorHandle, Seed};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::time::Duration;

const SUB: &str = "00000000-0000-0000-0000-000000000001";
const FIXTURE: &str = "tests/fixtures/insights/2015-04-01";

fn table() -> String {
    format!(
        "/subscriptions/{SUB}/resourceGroups/rg-net/providers/Microsoft.Network/routeTables/rt-spoke1"
    )
}

async fn send(
    em: &EmulatorHandle,
    method: &str,
    url: &str,
    token: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method.parse().unwrap(), url)
        .bearer_auth(token);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let _ = em;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn arm(em: &EmulatorHandle, path: &str) -> String {
    format!("{}{path}?api-version=2024-03-01", em.url())
}

fn log_url(em: &EmulatorHandle, filter: &str, extra: &[(&str, &str)]) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    q.append_pair("api-version", "2015-04-01");
    q.append_pair("$filter", filter);
    for (k, v) in extra {
        q.append_pair(k, v);
    }
    format!(
        "{}/subscriptions/{SUB}/providers/microsoft.insights/eventtypes/management/values?{}",
        em.url(),
        q.finish()
    )
}

fn range() -> String {
    let now = time::OffsetDateTime::now_utc();
    let f = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    format!(
        "eventTimestamp ge '{}' and eventTimestamp le '{}'",
        f(now - time::Duration::hours(1)),
        f(now + time::Duration::hours(1))
    )
}

async fn emulator(page_size: usize, delay: Duration) -> EmulatorHandle {
    harness::emulator(
        Config {
            page_size,
            activity_log_delay: delay,
            ..Config::default()
        },
        Seed {
            subscriptions: vec![SUB.into()],
            ..Seed::default()
        },
    )
    .await
}

/// A pipeline PUTs the table whole, a colleague deletes a route: both are in the log with who,
/// what, when and the correlation ID, in the official example's shape.
#[tokio::test]
async fn writes_are_logged_with_their_caller_and_operation_in_the_official_shape() {
    let em = emulator(100, Duration::ZERO).await;
    let body = json!({"location": "westeurope", "properties": {"routes": [
        {"name": "kms-20-118-99-224", "properties": {"addressPrefix": "20.118.99.224/32", "nextHopType": "Internet"}}
    ]}});
    let (s, _) = send(
        &em,
        "PUT",
        &arm(&em, &table()),
        "pipeline-sp@contoso.example",
        &[(
            "x-ms-correlation-request-id",
            "7d1e5c1a-0000-4000-8000-000000000001",
        )],
        Some(body),
    )
    .await;
    assert!(s == 200 || s == 201, "{s}");
    let (s, _) = send(
        &em,
        "DELETE",
        &arm(&em, &format!("{}/routes/kms-20-118-99-224", table())),
        "alice@contoso.example",
        &[],
        None,
    )
    .await;
    assert!(s == 200 || s == 202 || s == 204, "{s}");

    let (s, page) = send(
        &em,
        "GET",
        &log_url(
            &em,
            &format!("{} and resourceUri eq '{}'", range(), table()),
            &[],
        ),
        "reader",
        &[],
        None,
    )
    .await;
    assert_eq!(s, 200, "{page}");
    let events = page["value"].as_array().unwrap();
    assert_eq!(events.len(), 1, "the table's own events only: {page}");
    let e = &events[0];
    assert_eq!(e["caller"], "pipeline-sp@contoso.example");
    assert_eq!(
        e["operationName"]["value"],
        "Microsoft.Network/routeTables/write"
    );
    assert_eq!(e["status"]["value"], "Succeeded");
    assert_eq!(e["correlationId"], "7d1e5c1a-0000-4000-8000-000000000001");
    assert_eq!(e["httpRequest"]["method"], "PUT");

    // Every field of the official example's event is there, with the same JSON types.
    let example: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{FIXTURE}/examples/GetActivityLogsFiltered.json"))
            .unwrap(),
    )
    .unwrap();
    let official = &example["responses"]["200"]["body"]["value"][0];
    let kind = |v: &Value| std::mem::discriminant(v);
    for (k, v) in official.as_object().unwrap() {
        assert!(e.get(k).is_some(), "{k} missing from {e}");
        assert_eq!(kind(&e[k]), kind(v), "{k}: {} vs {v}", e[k]);
    }

    // The route's deletion, by the whole subscription's range and the provider.
    let (_, all) = send(
        &em,
        "GET",
        &log_url(
            &em,
            &format!("{} and resourceProvider eq 'Microsoft.Network'", range()),
            &[],
        ),
        "reader",
        &[],
        None,
    )
    .await;
    let ops: Vec<(&str, &str)> = all["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["caller"].as_str().unwrap(),
                e["operationName"]["value"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ops,
        [
            (
                "pipeline-sp@contoso.example",
                "Microsoft.Network/routeTables/write"
            ),
            (
                "alice@contoso.example",
                "Microsoft.Network/routeTables/routes/delete"
            )
        ]
    );
    // By correlation ID.
    let (_, one) = send(
        &em,
        "GET",
        &log_url(
            &em,
            &format!(
                "{} and correlationId eq '7d1e5c1a-0000-4000-8000-000000000001'",
                range()
            ),
            &[],
        ),
        "reader",
        &[],
        None,
    )
    .await;
    assert_eq!(one["value"].as_array().unwrap().len(), 1);
    // $select keeps only the fields asked for.
    let (_, sel) = send(
        &em,
        "GET",
        &log_url(
            &em,
            &range(),
            &[("$select", "caller,operationName,correlationId")],
        ),
        "reader",
        &[],
        None,
    )
    .await;
    let keys: Vec<&String> = sel["value"][0].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["caller", "correlationId", "operationName"]);
}

#[tokio::test]
async fn the_log_pages_lags_and_refuses_undocumented_filters() {
    let em = emulator(2, Duration::from_millis(400)).await;
    for i in 0..5 {
        let route = format!("{}/routes/r{i}", table());
        let body = json!({"properties": {"addressPrefix": format!("20.0.0.{i}/32"), "nextHopType": "Internet"}});
        if i == 0 {
            send(
                &em,
                "PUT",
                &arm(&em, &table()),
                "ops",
                &[],
                Some(json!({"location": "westeurope", "properties": {}})),
            )
            .await;
        }
        let (s, _) = send(&em, "PUT", &arm(&em, &route), "ops", &[], Some(body)).await;
        assert!(s < 300, "{s}");
    }
    // Not yet submitted: an empty page.
    let (_, early) = send(
        &em,
        "GET",
        &log_url(&em, &range(), &[]),
        "reader",
        &[],
        None,
    )
    .await;
    assert_eq!(early["value"], json!([]), "{early}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut url = log_url(&em, &range(), &[]);
    let mut seen = 0;
    let mut pages = 0;
    loop {
        let (s, page) = send(&em, "GET", &url, "reader", &[], None).await;
        assert_eq!(s, 200, "{page}");
        seen += page["value"].as_array().unwrap().len();
        pages += 1;
        match page["nextLink"].as_str() {
            Some(next) => url = next.to_string(),
            None => break,
        }
    }
    assert_eq!((seen, pages), (6, 3));
    // A submission comes after its event.
    let (_, one) = send(
        &em,
        "GET",
        &log_url(&em, &range(), &[]),
        "reader",
        &[],
        None,
    )
    .await;
    let e = &one["value"][0];
    assert!(
        e["submissionTimestamp"].as_str() > e["eventTimestamp"].as_str(),
        "{e}"
    );

    for bad in [
        format!("resourceUri eq '{}'", table()),
        format!("{} and caller eq 'ops'", range()),
    ] {
        let (s, body) = send(&em, "GET", &log_url(&em, &bad, &[]), "reader", &[], None).await;
        assert_eq!(s, 400, "{bad}: {body}");
    }
    let (s, _) = send(
        &em,
        "GET",
        &format!("{}/subscriptions/{SUB}/providers/microsoft.insights/eventtypes/management/values?api-version=2015-04-01", em.url()),
        "reader",
        &[],
        None,
    )
    .await;
    assert_eq!(s, 400, "a $filter is required");
}

/// The fixture is the one the manifest names.
#[test]
fn the_insights_fixture_matches_its_manifest() {
    let manifest = std::fs::read_to_string(format!("{FIXTURE}/MANIFEST.txt")).unwrap();
    let line = manifest
        .lines()
        .find(|l| l.starts_with("examples/"))
        .unwrap();
    let cols: Vec<&str> = line.split('\t').collect();
    let bytes = std::fs::read(format!("{FIXTURE}/{}", cols[0])).unwrap();
    assert_eq!(format!("{:x}", Sha256::digest(&bytes)), cols[3]);
}
