//! The emulator's Entra ID (opt-in, `Config::entra`): the v2.0 token endpoint
//! (`POST /{tenant}/oauth2/v2.0/token`) for the client-credentials grant with a client secret or
//! a federated client assertion, and ARM's check of the access tokens it issued.
//!
//! Held to Entra's documented behaviour (`docs/identity.md`): the assertion's `exp` and `nbf`,
//! its audience `api://AzureADTokenExchange`, and its issuer and subject against the app's
//! federated credentials; refusals as Entra words them (`error`, `error_description` starting
//! `AADSTSnnnnn:`, `error_codes`, `timestamp`, `trace_id`, `correlation_id`, `error_uri`). Token
//! signatures are not checked (the emulator issues unsigned tokens and trusts the assertion's
//! claims); everything else a misconfiguration trips on is.
//!
//! In this mode ARM accepts only access tokens the emulator issued, until they expire:
//! `401 ExpiredAuthenticationToken` after, `401 InvalidAuthenticationToken` for any other.

use super::Reply;
use super::token::{self, iso, now};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};

/// What the emulator reads of an assertion.
struct Claims {
    issuer: Option<String>,
    subject: Option<String>,
    audience: Vec<String>,
    expires: Option<i64>,
    not_before: Option<i64>,
}

fn claims(token: &str) -> Option<Claims> {
    let m = token::payload(token)?;
    let text = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
    Some(Claims {
        issuer: text("iss"),
        subject: text("sub"),
        audience: match m.get("aud") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            _ => Vec::new(),
        },
        expires: m.get("exp").and_then(Value::as_i64),
        not_before: m.get("nbf").and_then(Value::as_i64),
    })
}

/// The audience a federated assertion must carry.
pub const EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";

/// Tenants, app registrations and how long access tokens live.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entra {
    pub tenants: Vec<String>,
    pub apps: Vec<App>,
    /// Seconds an access token lives (Entra: 60–90 minutes).
    #[serde(default = "default_lifetime")]
    pub access_token_seconds: u64,
    /// Subscription ID → the tenant it belongs to: ARM refuses a token of another tenant there
    /// (`InvalidAuthenticationTokenTenant`). Subscriptions not listed take any tenant's token.
    #[serde(default)]
    pub subscription_tenants: BTreeMap<String, String>,
}

fn default_lifetime() -> u64 {
    3600
}

/// An app registration (or user-assigned managed identity).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct App {
    pub tenant: String,
    pub client_id: String,
    /// Secret values it accepts.
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default)]
    pub federated: Vec<Federated>,
    /// The name its access tokens carry as `upn` (what ARM's Activity Log shows as the
    /// caller); the client ID (`appid`) when absent.
    #[serde(default)]
    pub name: Option<String>,
}

/// A federated identity credential: the issuer and subject an assertion must name.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Federated {
    pub issuer: String,
    pub subject: String,
}

/// What the token endpoint saw.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntraStats {
    pub token_requests: u64,
    pub tokens_issued: u64,
    /// Refusals by AADSTS code.
    pub refused: BTreeMap<String, u64>,
    /// Assertions presented after their `exp` (a client that holds a stale one).
    pub expired_assertions: u64,
    /// ARM requests refused for their token, by ARM code.
    pub arm_refused: BTreeMap<String, u64>,
    /// ARM requests a token of the emulator's let through.
    pub arm_accepted: u64,
}

/// The issued tokens and the counters.
#[derive(Debug, Default)]
pub(crate) struct EntraState {
    /// Token → (expiry, tenant).
    issued: HashMap<String, (f64, String)>,
    pub stats: EntraStats,
    /// Answer token requests with this status (an outage), when set.
    pub outage: Option<u16>,
}

/// Entra's error body.
fn refusal(status: StatusCode, error: &str, code: u32, message: String) -> Reply {
    let trace = uuid::Uuid::new_v4();
    let correlation = uuid::Uuid::new_v4();
    let stamp = iso(now());
    Reply::json(
        status,
        json!({
            "error": error,
            "error_description": format!(
                "AADSTS{code}: {message} Trace ID: {trace} Correlation ID: {correlation} Timestamp: {stamp}"
            ),
            "error_codes": [code],
            "timestamp": stamp,
            "trace_id": trace.to_string(),
            "correlation_id": correlation.to_string(),
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
        }),
    )
}

fn form(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The ARM audience a scope asks for (`https://management.azure.com/.default` →
/// `https://management.azure.com/`).
fn audience_of(scope: &str) -> String {
    scope.trim_end_matches(".default").to_string()
}

impl EntraState {
    fn refused(&mut self, code: u32) {
        *self
            .stats
            .refused
            .entry(format!("AADSTS{code}"))
            .or_insert(0) += 1;
    }

    /// `POST /{tenant}/oauth2/v2.0/token`.
    pub fn token(&mut self, config: &Entra, tenant: &str, body: &[u8]) -> Reply {
        self.stats.token_requests += 1;
        if let Some(status) = self.outage {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return refusal(
                status,
                "temporarily_unavailable",
                90033,
                "A transient error has occurred. Please try again.".into(),
            )
            .header("retry-after", "1");
        }
        let f = form(body);
        let field = |k: &str| f.get(k).map(String::as_str).unwrap_or_default();
        if !config
            .tenants
            .iter()
            .any(|t| t.eq_ignore_ascii_case(tenant))
        {
            self.refused(90002);
            return refusal(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                90002,
                format!(
                    "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
                ),
            );
        }
        if field("grant_type") != "client_credentials" {
            self.refused(70003);
            return refusal(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                70003,
                format!(
                    "The app requested an unsupported grant type '{}'.",
                    field("grant_type")
                ),
            );
        }
        let client = field("client_id");
        let Some(app) = config
            .apps
            .iter()
            .find(|a| a.client_id == client && a.tenant.eq_ignore_ascii_case(tenant))
        else {
            self.refused(700016);
            return refusal(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                700016,
                format!(
                    "Application with identifier '{client}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
                ),
            );
        };
        if let Some(secret) = f.get("client_secret") {
            if !app.secrets.iter().any(|s| s == secret) {
                self.refused(7000215);
                return refusal(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    7000215,
                    format!(
                        "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client}'."
                    ),
                );
            }
        } else if let Some(reply) = self.check_assertion(app, &f) {
            return reply;
        }
        self.issue(config, app, tenant, field("scope"))
    }

    /// A federated assertion: well formed, in its time range, for the exchange audience, and
    /// matching one of the app's federated credentials.
    fn check_assertion(&mut self, app: &App, f: &HashMap<String, String>) -> Option<Reply> {
        let assertion = f
            .get("client_assertion")
            .map(String::as_str)
            .unwrap_or_default();
        if assertion.is_empty() {
            self.refused(7000218);
            return Some(refusal(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.".into(),
            ));
        }
        let Some(claims) = claims(assertion) else {
            self.refused(50027);
            return Some(refusal(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                50027,
                "JWT token is invalid or malformed.".into(),
            ));
        };
        let t = now();
        let exp = claims.expires.unwrap_or(0) as f64;
        let nbf = claims.not_before.unwrap_or(0) as f64;
        if t >= exp || t < nbf {
            self.stats.expired_assertions += u64::from(t >= exp);
            self.refused(700024);
            return Some(refusal(
                StatusCode::BAD_REQUEST,
                "invalid_client",
                700024,
                format!(
                    "Client assertion is not within its valid time range. Current time: {}, assertion valid from {}, expiry time of assertion {}. Review the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials .",
                    iso(t),
                    iso(nbf),
                    iso(exp)
                ),
            ));
        }
        let iss = claims.issuer.clone().unwrap_or_default();
        let sub = claims.subject.clone().unwrap_or_default();
        let matched = claims.audience.iter().any(|a| a == EXCHANGE_AUDIENCE)
            && app
                .federated
                .iter()
                .any(|fc| fc.issuer == iss && fc.subject == sub);
        if !matched {
            self.refused(70021);
            return Some(refusal(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                70021,
                format!(
                    "No matching federated identity record found for presented assertion. Assertion Issuer: '{iss}'. Assertion Subject: '{sub}'. Assertion Audience: '{}'.",
                    claims.audience.join(",")
                ),
            ));
        }
        None
    }

    fn issue(&mut self, config: &Entra, app: &App, tenant: &str, scope: &str) -> Reply {
        let t = now();
        let life = config.access_token_seconds.max(1) as f64;
        let exp = t + life;
        let mut claims = json!({
            "aud": audience_of(scope),
            "iss": format!("https://sts.windows.net/{tenant}/"),
            "iat": t as i64, "nbf": t as i64, "exp": exp.ceil() as i64,
            "appid": app.client_id, "tid": tenant, "oid": uuid::Uuid::new_v4().to_string(),
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        if let Some(name) = &app.name {
            claims["upn"] = json!(name);
        }
        let token = token::unsigned(&claims);
        // Forget tokens long expired: a months-long run issues one an hour per identity.
        self.issued.retain(|_, (e, _)| *e + 3600.0 > t);
        self.issued
            .insert(token.clone(), (exp, tenant.to_ascii_lowercase()));
        self.stats.tokens_issued += 1;
        Reply::json(
            StatusCode::OK,
            json!({
                "token_type": "Bearer",
                "expires_in": life as u64,
                "ext_expires_in": life as u64,
                "access_token": token,
            }),
        )
    }

    /// Every access token issued so far expires now (ARM then answers
    /// `ExpiredAuthenticationToken`): what a client holding one past its time meets.
    pub fn expire_all(&mut self) {
        let t = now();
        for (exp, _) in self.issued.values_mut() {
            *exp = exp.min(t);
        }
    }

    /// ARM's check of a bearer token, in Entra mode, for a request to `subscription` ("" for
    /// none).
    pub fn check_arm_token(
        &mut self,
        config: &Entra,
        token: &str,
        subscription: &str,
    ) -> Option<Reply> {
        let t = now();
        let refuse = |code: &str, message: String| {
            Reply::error(StatusCode::UNAUTHORIZED, code, message).header(
                "www-authenticate",
                format!(
                    "Bearer authorization_uri=\"https://login.microsoftonline.com/common\", error=\"invalid_token\", error_description=\"{code}\""
                ),
            )
        };
        let home = config
            .subscription_tenants
            .iter()
            .find(|(s, _)| s.eq_ignore_ascii_case(subscription))
            .map(|(_, t)| t.to_ascii_lowercase());
        let (code, message) = match self.issued.get(token) {
            None => (
                "InvalidAuthenticationToken",
                "The access token is invalid.".to_string(),
            ),
            Some((exp, _)) if *exp <= t => (
                "ExpiredAuthenticationToken",
                format!(
                    "The access token expiry UTC time '{}' is earlier than current UTC time '{}'.",
                    iso(*exp),
                    iso(t)
                ),
            ),
            Some((_, tid)) if home.as_ref().is_some_and(|h| h != tid) => (
                "InvalidAuthenticationTokenTenant",
                format!(
                    "The access token is from the wrong issuer 'https://sts.windows.net/{tid}/'. It must match the tenant 'https://sts.windows.net/{}/' associated with this subscription. Please use the authority (URL) 'https://login.windows.net/{}' to get the token.",
                    home.as_deref().unwrap_or_default(),
                    home.as_deref().unwrap_or_default()
                ),
            ),
            Some(_) => {
                self.stats.arm_accepted += 1;
                return None;
            }
        };
        *self.stats.arm_refused.entry(code.to_string()).or_insert(0) += 1;
        Some(refuse(code, message))
    }
}

/// The tenant of a token-endpoint path (`/{tenant}/oauth2/v2.0/token`).
pub fn token_path(path: &str) -> Option<&str> {
    let rest = path.strip_prefix('/')?;
    let (tenant, tail) = rest.split_once('/')?;
    (tail.eq_ignore_ascii_case("oauth2/v2.0/token") && !tenant.is_empty()).then_some(tenant)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Entra {
        Entra {
            tenants: vec!["t1".into()],
            apps: vec![App {
                tenant: "t1".into(),
                client_id: "c1".into(),
                secrets: vec!["s3cret".into()],
                federated: vec![Federated {
                    issuer: "https://oidc".into(),
                    subject: "system:serviceaccount:kmsroute:kmsroute".into(),
                }],
                name: None,
            }],
            access_token_seconds: 60,
            subscription_tenants: BTreeMap::from([("s-other".to_string(), "t2".to_string())]),
        }
    }

    fn body(pairs: &[(&str, &str)]) -> Vec<u8> {
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish()
            .into_bytes()
    }

    fn code_of(r: &Reply) -> Option<i64> {
        r.body.as_ref()?.pointer("/error_codes/0")?.as_i64()
    }

    fn assertion(iss: &str, sub: &str, exp_in: i64) -> String {
        token::unsigned(&json!({"iss": iss, "sub": sub, "aud": [EXCHANGE_AUDIENCE],
            "exp": now() as i64 + exp_in, "nbf": now() as i64 - 10}))
    }

    #[test]
    fn each_misconfiguration_gets_entras_code() {
        let c = config();
        let mut s = EntraState::default();
        let wi = |a: &str, client: &str| {
            body(&[
                ("grant_type", "client_credentials"),
                ("client_id", client),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", a),
                ("scope", "https://management.azure.com/.default"),
            ])
        };
        let good = assertion(
            "https://oidc",
            "system:serviceaccount:kmsroute:kmsroute",
            60,
        );
        assert_eq!(code_of(&s.token(&c, "t2", &wi(&good, "c1"))), Some(90002));
        assert_eq!(code_of(&s.token(&c, "t1", &wi(&good, "c9"))), Some(700016));
        let other = assertion("https://oidc", "system:serviceaccount:default:other", 60);
        let r = s.token(&c, "t1", &wi(&other, "c1"));
        assert_eq!(code_of(&r), Some(70021));
        let text = r.body.as_ref().unwrap()["error_description"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(text.starts_with("AADSTS70021: "), "{text}");
        assert!(
            text.contains("system:serviceaccount:default:other"),
            "{text}"
        );
        let old = assertion(
            "https://oidc",
            "system:serviceaccount:kmsroute:kmsroute",
            -1,
        );
        assert_eq!(code_of(&s.token(&c, "t1", &wi(&old, "c1"))), Some(700024));
        assert_eq!(s.stats.expired_assertions, 1);
        assert_eq!(code_of(&s.token(&c, "t1", &wi("x.y", "c1"))), Some(50027));
        let secret = |v: &str| {
            body(&[
                ("grant_type", "client_credentials"),
                ("client_id", "c1"),
                ("client_secret", v),
                ("scope", "x/.default"),
            ])
        };
        let r = s.token(&c, "t1", &secret("secret-id"));
        assert_eq!(
            (r.status, code_of(&r)),
            (StatusCode::UNAUTHORIZED, Some(7000215))
        );
        let ok = s.token(&c, "t1", &secret("s3cret"));
        assert_eq!(ok.status, StatusCode::OK);
        let ok = s.token(&c, "t1", &wi(&good, "c1"));
        assert_eq!(ok.status, StatusCode::OK);
        let token = ok.body.as_ref().unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(s.check_arm_token(&c, &token, "s-home").is_none());
        let foreign = s.check_arm_token(&c, &token, "S-OTHER").unwrap();
        assert_eq!(
            foreign.body.unwrap()["error"]["code"],
            "InvalidAuthenticationTokenTenant"
        );
        let bad = s.check_arm_token(&c, "made-up", "").unwrap();
        assert_eq!(
            bad.body.unwrap()["error"]["code"],
            "InvalidAuthenticationToken"
        );
        assert_eq!(s.stats.refused.get("AADSTS70021"), Some(&1));
        s.outage = Some(503);
        let down = s.token(&c, "t1", &wi(&good, "c1"));
        assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn an_expired_access_token_is_refused_as_expired() {
        let mut s = EntraState::default();
        s.issued.insert("old".into(), (now() - 1.0, "t1".into()));
        let r = s.check_arm_token(&config(), "old", "").unwrap();
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.body.unwrap()["error"]["code"],
            "ExpiredAuthenticationToken"
        );
        assert_eq!(
            s.stats.arm_refused.get("ExpiredAuthenticationToken"),
            Some(&1)
        );
    }

    #[test]
    fn the_token_path_names_the_tenant() {
        assert_eq!(token_path("/t1/oauth2/v2.0/token"), Some("t1"));
        assert_eq!(token_path("/subscriptions/x"), None);
        assert_eq!(token_path("//oauth2/v2.0/token"), None);
    }
}
