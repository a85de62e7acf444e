//! What the emulator reads of a bearer token or an assertion, and its clock. It shares no code
//! with the client it plays against: a JWT's payload, signature unchecked; unsigned tokens of
//! its own; Unix time and RFC 3339.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};
use std::time::{SystemTime, UNIX_EPOCH};

/// The claims of a JWT, if `token` is one.
pub(crate) fn payload(token: &str) -> Option<Map<String, Value>> {
    let parts: Vec<&str> = token.trim().split('.').collect();
    let [_, payload, _] = parts[..] else {
        return None;
    };
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    match serde_json::from_slice::<Value>(&bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// An unsigned JWT (`alg: none`): what the emulator issues.
pub(crate) fn unsigned(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    format!("{header}.{}.", URL_SAFE_NO_PAD.encode(claims.to_string()))
}

/// Seconds since the Unix epoch.
pub(crate) fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// RFC 3339, as ARM and Entra ID write times.
pub(crate) fn iso(t: f64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos((t * 1e9) as i128)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
