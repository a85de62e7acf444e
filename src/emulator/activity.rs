//! The emulator's Activity Log: every write ARM answers is recorded as Azure records it
//! (`EventData`: caller, claims, operation name, status, correlation ID, event and submission
//! timestamps), and `ActivityLogs_List`
//! (`GET /subscriptions/{s}/providers/microsoft.insights/eventtypes/management/values`,
//! api-version 2015-04-01) serves it with the documented `$filter` patterns, `$select` and
//! paging, held to the official example (`tests/fixtures/insights/`).
//!
//! The caller is taken from the bearer token: a JWT's `upn`, `unique_name` or `appid` claim;
//! any other token is its own caller, so a test can write as `pipeline-sp@contoso.example`.
//! An event becomes visible `delay` after it happened (Azure: seconds to minutes).

use super::Reply;
use super::token::{iso, now};
use axum::http::{Method, StatusCode};
use serde_json::{Map, Value, json};
use std::time::Duration;

/// The api-version of `ActivityLogs_List`.
pub const API_VERSION: &str = "2015-04-01";

/// At most this many events are kept (the oldest are dropped).
const KEEP: usize = 20_000;

/// One recorded write.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub at: f64,
    pub visible_at: f64,
    pub subscription: String,
    pub resource_id: String,
    pub operation: String,
    pub succeeded: bool,
    pub status_code: u16,
    pub method: String,
    pub caller: String,
    pub claims: Map<String, Value>,
    pub correlation: String,
    pub client_request: String,
}

fn parse_iso(s: &str) -> Option<f64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some(t.unix_timestamp_nanos() as f64 / 1e9)
}

/// Who the token says the caller is, and the claims ARM would log.
pub(crate) fn caller(token: &str) -> (String, Map<String, Value>) {
    match super::token::payload(token) {
        Some(claims) => {
            let name = ["upn", "unique_name", "appid"]
                .iter()
                .find_map(|k| claims.get(*k).and_then(Value::as_str))
                .unwrap_or("unknown")
                .to_string();
            (name, claims)
        }
        None => (token.to_string(), Map::new()),
    }
}

/// ARM's operation name for a write (`Microsoft.Network/routeTables/routes/delete`).
pub(crate) fn operation_name(method: &Method, segs: &[String]) -> Option<String> {
    let verb = match *method {
        Method::PUT | Method::PATCH => "write",
        Method::DELETE => "delete",
        Method::POST => "action",
        _ => return None,
    };
    // /subscriptions/{s}/resourceGroups/{g}/providers/{ns}/{type}/{name}[/{child}/{name}]
    let ns = segs.get(5)?;
    let mut types = vec![segs.get(6)?.clone()];
    if let Some(child) = segs.get(8) {
        types.push(child.clone());
    }
    Some(format!("{ns}/{}/{verb}", types.join("/")))
}

/// The log, and how long an event takes to become visible.
#[derive(Debug, Default)]
pub(crate) struct ActivityLog {
    pub events: std::collections::VecDeque<Event>,
    pub delay: Duration,
}

/// What a write's request said of itself.
pub(crate) struct Written<'a> {
    pub subscription: &'a str,
    pub path: &'a str,
    pub method: &'a Method,
    pub segs: &'a [String],
    pub status: StatusCode,
    pub token: &'a str,
    pub correlation: Option<&'a str>,
    pub client_request: Option<&'a str>,
}

impl ActivityLog {
    /// Records a write ARM answered (accepted or refused).
    pub fn record(&mut self, w: Written<'_>) {
        let Some(operation) = operation_name(w.method, w.segs) else {
            return;
        };
        let (caller, claims) = caller(w.token);
        let at = now();
        self.events.push_back(Event {
            at,
            visible_at: at + self.delay.as_secs_f64(),
            subscription: w.subscription.to_string(),
            resource_id: w.path.to_string(),
            operation,
            succeeded: w.status.is_success(),
            status_code: w.status.as_u16(),
            method: w.method.as_str().to_string(),
            caller,
            claims,
            correlation: w
                .correlation
                .map(str::to_string)
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            client_request: w
                .client_request
                .map(str::to_string)
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        });
        while self.events.len() > KEEP {
            self.events.pop_front();
        }
    }

    /// `ActivityLogs_List`.
    pub fn list(&self, subscription: &str, query: &str, base: &str, page_size: usize) -> Reply {
        let params: std::collections::HashMap<String, String> =
            url::form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
        if params.get("api-version").map(String::as_str) != Some(API_VERSION) {
            return Reply::error(
                StatusCode::BAD_REQUEST,
                "InvalidApiVersionParameter",
                format!("The api-version is invalid. The supported versions are '{API_VERSION}'."),
            );
        }
        // Code inferred: ARM's message names the allowed patterns.
        let filter = match params.get("$filter").map(|f| Filter::parse(f)) {
            Some(Ok(f)) => f,
            Some(Err(m)) => {
                return Reply::error(StatusCode::BAD_REQUEST, "BadRequest", m.to_string());
            }
            None => {
                return Reply::error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "The $filter query parameter is required.",
                );
            }
        };
        let select: Option<Vec<String>> = params
            .get("$select")
            .map(|s| s.split(',').map(|f| f.trim().to_string()).collect());
        let skip: usize = params
            .get("$skiptoken")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let t = now();
        let matching: Vec<&Event> = self
            .events
            .iter()
            .filter(|e| e.subscription.eq_ignore_ascii_case(subscription))
            .filter(|e| e.visible_at <= t && filter.matches(e))
            .collect();
        let page: Vec<Value> = matching
            .iter()
            .skip(skip)
            .take(page_size)
            .map(|e| shape(e, select.as_deref()))
            .collect();
        let mut body = json!({ "value": page });
        if skip + page_size < matching.len() {
            let mut pairs = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in &params {
                if k != "$skiptoken" {
                    pairs.append_pair(k, v);
                }
            }
            pairs.append_pair("$skiptoken", &(skip + page_size).to_string());
            body["nextLink"] = json!(format!(
                "{base}/subscriptions/{subscription}/providers/microsoft.insights/eventtypes/management/values?{}",
                pairs.finish()
            ));
        }
        Reply::json(StatusCode::OK, body)
    }
}

/// The `$filter` patterns ARM allows: a time range, and optionally one of `resourceUri`,
/// `resourceGroupName`, `resourceProvider` or `correlationId`.
/// A `$filter` the Activity Log does not take (ARM's message names the allowed patterns).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "The $filter '{0}' is not supported: use eventTimestamp ge '<time>' and eventTimestamp le '<time>', optionally followed by and resourceUri eq, resourceGroupName eq, resourceProvider eq or correlationId eq '<value>'"
)]
struct UnsupportedFilter(String);

#[derive(Debug, Default)]
struct Filter {
    from: f64,
    to: f64,
    key: Option<(String, String)>,
}

impl Filter {
    fn parse(f: &str) -> Result<Filter, UnsupportedFilter> {
        let refuse = || UnsupportedFilter(f.to_string());
        let clauses: Vec<&str> = f.split(" and ").map(str::trim).collect();
        let quoted = |c: &str, prefix: &str| -> Option<String> {
            let rest = c.strip_prefix(prefix)?.trim();
            rest.strip_prefix('\'')?
                .strip_suffix('\'')
                .map(str::to_string)
        };
        let (Some(from), Some(to)) = (
            clauses.first().and_then(|c| quoted(c, "eventTimestamp ge")),
            clauses.get(1).and_then(|c| quoted(c, "eventTimestamp le")),
        ) else {
            return Err(refuse());
        };
        let (Some(from), Some(to)) = (parse_iso(&from), parse_iso(&to)) else {
            return Err(refuse());
        };
        let key = match clauses.get(2) {
            None => None,
            Some(c) => {
                let found = [
                    "resourceUri",
                    "resourceGroupName",
                    "resourceProvider",
                    "correlationId",
                ]
                .iter()
                .find_map(|k| quoted(c, &format!("{k} eq")).map(|v| (k.to_string(), v)));
                Some(found.ok_or_else(refuse)?)
            }
        };
        if clauses.len() > 3 {
            return Err(refuse());
        }
        Ok(Filter { from, to, key })
    }

    fn matches(&self, e: &Event) -> bool {
        if e.at < self.from || e.at > self.to {
            return false;
        }
        let segs: Vec<&str> = e.resource_id.split('/').collect();
        match &self.key {
            None => true,
            Some((k, v)) => match k.as_str() {
                "resourceUri" => e.resource_id.eq_ignore_ascii_case(v),
                "resourceGroupName" => segs.get(4).is_some_and(|g| g.eq_ignore_ascii_case(v)),
                "resourceProvider" => segs.get(6).is_some_and(|p| p.eq_ignore_ascii_case(v)),
                _ => e.correlation.eq_ignore_ascii_case(v),
            },
        }
    }
}

fn localized(v: &str) -> Value {
    json!({"value": v, "localizedValue": v})
}

/// An event as ARM serves it (the official example's fields), cut to `$select`.
fn shape(e: &Event, select: Option<&[String]>) -> Value {
    let segs: Vec<&str> = e.resource_id.split('/').collect();
    let group = segs.get(4).copied().unwrap_or_default();
    let provider = segs.get(6).copied().unwrap_or_default();
    let status = if e.succeeded { "Succeeded" } else { "Failed" };
    let id = uuid::Uuid::new_v4().to_string();
    let full = json!({
        "authorization": {"action": e.operation, "scope": e.resource_id},
        "caller": e.caller,
        "claims": e.claims,
        "correlationId": e.correlation,
        "description": "",
        "eventDataId": id,
        "eventName": {"value": "EndRequest", "localizedValue": "End request"},
        "httpRequest": {"clientRequestId": e.client_request, "clientIpAddress": "127.0.0.1", "method": e.method},
        "id": format!("{}/events/{id}/ticks/{}", e.resource_id, (e.at * 1e7) as u64),
        "level": if e.succeeded { "Informational" } else { "Error" },
        "resourceGroupName": group,
        "resourceProviderName": localized(provider),
        "resourceId": e.resource_id,
        "operationId": e.correlation,
        "operationName": localized(&e.operation),
        "properties": {"statusCode": e.status_code.to_string()},
        "status": localized(status),
        "subStatus": localized(&format!("HTTP Status Code: {}", e.status_code)),
        "eventTimestamp": iso(e.at),
        "submissionTimestamp": iso(e.visible_at),
        "subscriptionId": e.subscription,
    });
    match (select, full) {
        (Some(fields), Value::Object(m)) => Value::Object(
            m.into_iter()
                .filter(|(k, _)| fields.iter().any(|f| f.eq_ignore_ascii_case(k)))
                .collect(),
        ),
        (_, v) => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(path: &str) -> Vec<String> {
        path.trim_start_matches('/')
            .split('/')
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn operation_names_are_arms() {
        let t = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Network/routeTables/rt";
        assert_eq!(
            operation_name(&Method::PUT, &segs(t)).as_deref(),
            Some("Microsoft.Network/routeTables/write")
        );
        assert_eq!(
            operation_name(&Method::DELETE, &segs(&format!("{t}/routes/kms"))).as_deref(),
            Some("Microsoft.Network/routeTables/routes/delete")
        );
        let s = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Network/virtualNetworks/v/subnets/a";
        assert_eq!(
            operation_name(&Method::PUT, &segs(s)).as_deref(),
            Some("Microsoft.Network/virtualNetworks/subnets/write")
        );
        assert_eq!(operation_name(&Method::GET, &segs(s)), None);
    }

    #[test]
    fn the_caller_comes_from_the_token() {
        assert_eq!(
            caller("pipeline-sp@contoso.example").0,
            "pipeline-sp@contoso.example"
        );
        use base64::Engine;
        let enc = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let jwt = format!(
            "{}.{}.",
            enc(json!({"alg": "none"})),
            enc(json!({"appid": "app-1", "upn": "alice@contoso.example"}))
        );
        assert_eq!(caller(&jwt).0, "alice@contoso.example");
        let sp = format!(
            "{}.{}.",
            enc(json!({"alg": "none"})),
            enc(json!({"appid": "app-1"}))
        );
        assert_eq!(caller(&sp).0, "app-1");
    }

    #[test]
    fn only_the_documented_filters_are_accepted() {
        let ok =
            "eventTimestamp ge '2026-12-03T09:00:00Z' and eventTimestamp le '2026-12-03T10:00:00Z'";
        assert!(Filter::parse(ok).is_ok());
        for k in [
            "resourceUri",
            "resourceGroupName",
            "resourceProvider",
            "correlationId",
        ] {
            assert!(
                Filter::parse(&format!("{ok} and {k} eq 'x'")).is_ok(),
                "{k}"
            );
        }
        assert!(Filter::parse("resourceUri eq 'x'").is_err());
        assert!(Filter::parse(&format!("{ok} and caller eq 'x'")).is_err());
        assert!(
            Filter::parse(&format!(
                "{ok} and resourceUri eq 'x' and correlationId eq 'y'"
            ))
            .is_err()
        );
    }
}
