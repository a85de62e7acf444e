//! The claims of a JSON Web Token, read without checking its signature: what kmsroute needs to
//! know of a service-account token before presenting it to Entra ID (its `exp`, and its issuer
//! and subject to name in an error), and what the emulator reads of an assertion or an access
//! token. Nothing here trusts a token: Entra ID and ARM do the checking.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

/// The registered claims kmsroute reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    pub issuer: Option<String>,
    pub subject: Option<String>,
    /// `aud`: a string or a list of strings.
    pub audience: Vec<String>,
    /// `exp`, seconds since the Unix epoch.
    pub expires: Option<i64>,
    /// `nbf`, seconds since the Unix epoch.
    pub not_before: Option<i64>,
    /// Every claim, for what the emulator reads beyond these (`appid`, `upn`, `tid`).
    pub all: serde_json::Map<String, Value>,
}

/// Why a text is not a JWT kmsroute can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAJwt {
    #[error("it has {0} dot-separated part(s), a JWT has 3")]
    Parts(usize),
    #[error("its payload is not base64url: {0}")]
    Encoding(String),
    #[error("its payload is not a JSON object: {0}")]
    Json(String),
}

impl Claims {
    /// A claim's string value.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.all.get(name).and_then(Value::as_str)
    }
}

/// The claims of `token` (surrounding whitespace ignored, as in a projected token file).
pub fn claims(token: &str) -> Result<Claims, NotAJwt> {
    let parts: Vec<&str> = token.trim().split('.').collect();
    if parts.len() != 3 {
        return Err(NotAJwt::Parts(parts.len()));
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(parts[1].trim_end_matches('='))
        .map_err(|e| NotAJwt::Encoding(e.to_string()))?;
    let all = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => m,
        Ok(other) => return Err(NotAJwt::Json(format!("found {other}"))),
        Err(e) => return Err(NotAJwt::Json(e.to_string())),
    };
    let text = |k: &str| all.get(k).and_then(Value::as_str).map(str::to_string);
    let audience = match all.get("aud") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    };
    Ok(Claims {
        issuer: text("iss"),
        subject: text("sub"),
        audience,
        expires: all.get("exp").and_then(Value::as_i64),
        not_before: all.get("nbf").and_then(Value::as_i64),
        all,
    })
}

/// An unsigned JWT (`alg: none`) with these claims: what the emulator issues and what tests lay
/// out as a projected service-account token. Never accepted by a real Entra ID or ARM.
pub fn unsigned(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn claims_round_trip_through_an_unsigned_token() {
        let t = unsigned(&json!({
            "iss": "https://oidc.example/abc", "sub": "system:serviceaccount:kmsroute:kmsroute",
            "aud": ["api://AzureADTokenExchange"], "exp": 1_900_000_000, "nbf": 1_800_000_000,
            "appid": "app"
        }));
        let c = claims(&format!("  {t}\n")).unwrap();
        assert_eq!(c.issuer.as_deref(), Some("https://oidc.example/abc"));
        assert_eq!(
            c.subject.as_deref(),
            Some("system:serviceaccount:kmsroute:kmsroute")
        );
        assert_eq!(c.audience, ["api://AzureADTokenExchange"]);
        assert_eq!(c.expires, Some(1_900_000_000));
        assert_eq!(c.not_before, Some(1_800_000_000));
        assert_eq!(c.text("appid"), Some("app"));
        let single = claims(&unsigned(&json!({"aud": "x"}))).unwrap();
        assert_eq!(single.audience, ["x"]);
    }

    #[test]
    fn what_is_not_a_jwt_is_named() {
        assert_eq!(claims("abc"), Err(NotAJwt::Parts(1)));
        assert!(matches!(claims("a.!!!.c"), Err(NotAJwt::Encoding(_))));
        let not_object = format!("a.{}.c", URL_SAFE_NO_PAD.encode("[1]"));
        assert!(matches!(claims(&not_object), Err(NotAJwt::Json(_))));
    }
}
