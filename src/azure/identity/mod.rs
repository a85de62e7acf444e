//! Credentials on the GA identity library (`azure_identity` / `azure_core` 1.x), bridged to the
//! `azure_core` 0.21 trait the generated Microsoft.Network bindings take.
//!
//! - [`Authority`]: where token requests go: `AZURE_AUTHORITY_HOST` (the SDKs' convention, set
//!   by the workload-identity webhook) over the cloud's default; `http://` only on loopback.
//! - [`assertion::ProjectedToken`]: workload identity's assertion, read fresh at every token
//!   request (never an expired one).
//! - [`Bridge`]: holds the access token and refreshes it before it expires (five minutes
//!   before, or a fifth of its lifetime for short-lived ones); [`Bridge::refresh_after`] gets
//!   one fresh token after ARM refused the one it was shown.
//! - [`explain`]: Entra ID's refusals (AADSTS codes) named with what to do, and outages told
//!   apart from them, as an [`EntraFailure`] the ARM client turns into its error.

pub mod assertion;
pub mod jwt;
pub mod transport;

use crate::azure::ErrorClass;
use azure_core::auth::{AccessToken, Secret, TokenCredential};
use azure_core_ga::credentials::TokenCredential as GaCredential;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;

/// The token endpoint's host: the cloud's, or `AZURE_AUTHORITY_HOST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    /// As configured (`https://login.microsoftonline.com/`, or `http://127.0.0.1:8080/`).
    pub url: url::Url,
}

/// Why an authority host is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    #[error("AZURE_AUTHORITY_HOST {0:?} is not a URL: {1}")]
    NotUrl(String, String),
    #[error(
        "AZURE_AUTHORITY_HOST {0} must use https (plain http is allowed only on loopback, for the \
         emulator)"
    )]
    NotHttps(String),
}

impl Authority {
    /// `AZURE_AUTHORITY_HOST` when set (the workload-identity webhook injects it; private and
    /// sovereign setups use it), else the cloud's default.
    pub fn choose(cloud_default: &str, env: Option<&str>) -> Result<Authority, AuthorityError> {
        let given = env.map(str::trim).filter(|v| !v.is_empty());
        let text = given.unwrap_or(cloud_default);
        let url = url::Url::parse(text)
            .map_err(|e| AuthorityError::NotUrl(text.to_string(), e.to_string()))?;
        match url.scheme() {
            "https" => Ok(Authority { url }),
            "http" if is_loopback(&url) => Ok(Authority { url }),
            _ => Err(AuthorityError::NotHttps(text.to_string())),
        }
    }

    /// The `https://` form the library accepts, and the `host:port` the transport must reach
    /// in plain HTTP when the authority was given as `http://` on loopback.
    pub fn for_library(&self) -> (String, Option<String>) {
        let host = self.url.host_str().unwrap_or_default();
        match self.url.scheme() {
            "http" => {
                let port = self.url.port_or_known_default().unwrap_or(80);
                (
                    format!("https://{host}:{port}"),
                    Some(format!("{host}:{port}")),
                )
            }
            _ => (self.url.as_str().trim_end_matches('/').to_string(), None),
        }
    }

    /// The library's client options: this authority, token requests through
    /// [`transport::IdentityHttp`], and retries of Entra's 429s and 5xx with backoff.
    pub fn client_options(&self, retry: &EntraRetry) -> azure_core_ga::http::ClientOptions {
        use azure_core_ga::cloud::{CloudConfiguration, CustomConfiguration};
        use azure_core_ga::http::{ExponentialRetryOptions, RetryOptions, Transport};
        let (host, plain) = self.for_library();
        let mut custom = CustomConfiguration::default();
        custom.authority_host = host;
        let ms = |d: Duration| azure_core_ga::time::Duration::milliseconds(d.as_millis() as i64);
        azure_core_ga::http::ClientOptions {
            transport: Some(Transport::new(Arc::new(transport::IdentityHttp::new(
                plain,
            )))),
            cloud: Some(Arc::new(CloudConfiguration::Custom(custom))),
            retry: RetryOptions::exponential(ExponentialRetryOptions {
                initial_delay: ms(retry.initial_delay),
                max_retries: retry.max_retries,
                max_total_elapsed: ms(retry.max_elapsed),
                max_delay: ms(retry.max_delay),
            }),
            ..Default::default()
        }
    }
}

/// How token requests are retried when Entra ID throttles (429) or fails (5xx, no answer).
#[derive(Debug, Clone)]
pub struct EntraRetry {
    pub initial_delay: Duration,
    pub max_retries: u32,
    pub max_elapsed: Duration,
    pub max_delay: Duration,
}

impl Default for EntraRetry {
    fn default() -> Self {
        EntraRetry {
            initial_delay: Duration::from_millis(800),
            max_retries: 4,
            max_elapsed: Duration::from_secs(30),
            max_delay: Duration::from_secs(10),
        }
    }
}

/// What a token request's failure means: Entra ID refused it (a human must fix the setup), or
/// it could not be had (throttled, an outage, no connection: it comes back by itself).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct EntraFailure {
    pub class: ErrorClass,
    /// `AADSTS70021`, when Entra ID said.
    pub code: Option<String>,
    pub message: String,
}

/// What [`explain`] may name besides Entra's own words.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    /// `workload identity`, `client secret`, ...
    pub mode: &'static str,
    pub tenant: Option<String>,
    pub client_id: Option<String>,
    pub authority: Option<String>,
    pub token_file: Option<String>,
    /// The issuer and subject of the last assertion presented (workload identity).
    pub presented: Option<assertion::Presented>,
}

/// The AADSTS number in Entra's error text (`AADSTS70021: No matching ...`).
pub fn aadsts_code(text: &str) -> Option<String> {
    let at = text.find("AADSTS")?;
    let digits: String = text[at + 6..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    (!digits.is_empty()).then(|| format!("AADSTS{digits}"))
}

/// What to do about an AADSTS code, given what kmsroute knows of the setup.
pub fn remedy(code: &str, s: &Setup) -> Option<String> {
    let client = s.client_id.as_deref().unwrap_or("(not set)");
    let tenant = s.tenant.as_deref().unwrap_or("(not set)");
    let text = match code {
        "AADSTS70021" => {
            let (iss, sub) = s
                .presented
                .as_ref()
                .map(|p| {
                    (
                        p.issuer.as_deref().unwrap_or("(none)"),
                        p.subject.as_deref().unwrap_or("(none)"),
                    )
                })
                .unwrap_or(("(unknown)", "(unknown)"));
            format!(
                "no federated identity credential of application {client} matches the token \
                 presented (issuer {iss}, subject {sub}, audience api://AzureADTokenExchange): \
                 add one to the app registration or managed identity whose issuer is the \
                 cluster's OIDC issuer URL and whose subject is \
                 system:serviceaccount:<namespace>:<serviceaccount> of kmsroute's \
                 ServiceAccount (this pod presented {sub})"
            )
        }
        "AADSTS700024" => format!(
            "the service-account token presented was not within its valid time range (expired, \
             or the node's clock is skewed): kmsroute reads {} at every token request, so check \
             that kubelet refreshes the projected volume and that the node's clock is right",
            s.token_file.as_deref().unwrap_or("the token file")
        ),
        "AADSTS700016" => format!(
            "application {client} was not found in tenant {tenant}: check the client ID \
             (AZURE_CLIENT_ID, the ServiceAccount's azure.workload.identity/client-id, or \
             spec.azure.identity.clientID) and that the app is registered in that tenant"
        ),
        "AADSTS7000215" => format!(
            "the client secret of application {client} is wrong: AZURE_CLIENT_SECRET must hold \
             the secret's value, not its secret ID (the value is shown once, when the secret is \
             created; create a new one if it is lost)"
        ),
        "AADSTS7000222" => format!(
            "the client secret of application {client} has expired: create a new secret and \
             update AZURE_CLIENT_SECRET"
        ),
        "AADSTS90002" => format!(
            "tenant {tenant} was not found at {}: check the tenant ID (AZURE_TENANT_ID, or \
             spec.azure.identity.tenantID) and the cloud (--cloud, AZURE_AUTHORITY_HOST)",
            s.authority.as_deref().unwrap_or("the authority")
        ),
        "AADSTS50027" => "the token presented is not a valid JWT: check the token file \
                          (AZURE_FEDERATED_TOKEN_FILE)"
            .to_string(),
        _ => return None,
    };
    Some(text)
}

/// The HTTP status of the library's error, where Entra answered.
fn status_of(e: &azure_core_ga::Error) -> Option<u16> {
    use azure_core_ga::error::ErrorKind;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(ga) = err.downcast_ref::<azure_core_ga::Error>()
            && let ErrorKind::HttpResponse { status, .. } = ga.kind()
        {
            return Some(u16::from(*status));
        }
        cur = err.source();
    }
    None
}

/// The whole text of an error and its causes.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

/// kmsroute's own refusal to present the projected token, if that is what failed.
fn assertion_error(e: &azure_core_ga::Error) -> Option<&assertion::AssertionError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(a) = err.downcast_ref::<assertion::AssertionError>() {
            return Some(a);
        }
        cur = err.source();
    }
    None
}

/// A failed token request, explained.
pub fn explain(e: &azure_core_ga::Error, s: &Setup) -> EntraFailure {
    // Nothing was sent: the token file is missing, not a JWT, or holds only an expired token
    // (kubelet may still replace that one: retried).
    if let Some(a) = assertion_error(e) {
        return EntraFailure {
            class: match a {
                assertion::AssertionError::Expired { .. } => ErrorClass::Retryable,
                _ => ErrorClass::NeedsUserAction,
            },
            code: None,
            message: format!("cannot get a {} token: {a}", s.mode),
        };
    }
    let text = chain(e);
    // The library's troubleshooting link and line breaks make a condition message hard to read.
    let text = text
        .split("\nTo troubleshoot")
        .next()
        .unwrap_or_default()
        .replace('\n', " ");
    let status = status_of(e);
    let code = aadsts_code(&text);
    let throttled_or_down = matches!(status, Some(429) | Some(500..=599));
    if let Some(c) = code.as_deref().filter(|_| !throttled_or_down) {
        let what = remedy(c, s).unwrap_or_else(|| "see Entra ID's message".to_string());
        return EntraFailure {
            class: ErrorClass::NeedsUserAction,
            code: code.clone(),
            message: format!(
                "Entra ID refused the {} token request ({c}): {what}. Entra ID said: {text}",
                s.mode
            ),
        };
    }
    let refused = matches!(status, Some(400..=499)) && !throttled_or_down;
    EntraFailure {
        class: if refused {
            ErrorClass::NeedsUserAction
        } else {
            ErrorClass::Retryable
        },
        code,
        message: match status {
            Some(st) if refused => format!(
                "Entra ID refused the {} token request (HTTP {st}): {text}",
                s.mode
            ),
            Some(st) => format!(
                "cannot get a token from Entra ID ({}; HTTP {st}, retried): {text}",
                s.authority.as_deref().unwrap_or("authority")
            ),
            None => format!("cannot get a {} token: {text}", s.mode),
        },
    }
}

#[derive(Debug, Clone)]
struct Held {
    token: Secret,
    expires_on: OffsetDateTime,
    refresh_at: OffsetDateTime,
}

/// When a token that lives until `expires_on` should be replaced: five minutes before it
/// expires, or after four fifths of its life when it lives less than 25 minutes.
pub fn refresh_at(now: OffsetDateTime, expires_on: OffsetDateTime) -> OffsetDateTime {
    let life: time::Duration = expires_on - now;
    let margin = (life / 5_i32).min(time::Duration::minutes(5));
    expires_on - margin.max(time::Duration::ZERO)
}

type Factory = dyn Fn() -> azure_core_ga::Result<Arc<dyn GaCredential>> + Send + Sync;

/// A GA credential behind the 0.21 `TokenCredential` trait, with its own token held and
/// refreshed ahead of expiry.
pub struct Bridge {
    setup: Setup,
    make: Box<Factory>,
    inner: Mutex<Arc<dyn GaCredential>>,
    held: tokio::sync::Mutex<Option<Held>>,
    presented: Option<Arc<Mutex<Option<assertion::Presented>>>>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bridge({} credential)", self.setup.mode)
    }
}

impl Bridge {
    /// A bridge over the credential `make` builds (again, to drop the library's cache, when
    /// ARM refuses a token).
    pub fn new(
        setup: Setup,
        make: Box<Factory>,
        presented: Option<Arc<Mutex<Option<assertion::Presented>>>>,
    ) -> azure_core_ga::Result<Bridge> {
        let inner = make()?;
        Ok(Bridge {
            setup,
            make,
            inner: Mutex::new(inner),
            held: tokio::sync::Mutex::new(None),
            presented,
        })
    }

    fn failure(&self, e: &azure_core_ga::Error) -> azure_core::Error {
        let mut setup = self.setup.clone();
        setup.presented = self
            .presented
            .as_ref()
            .and_then(|p| p.lock().ok().and_then(|p| p.clone()));
        let f = explain(e, &setup);
        azure_core::Error::new(azure_core::error::ErrorKind::Credential, f)
    }

    async fn fetch(&self, scopes: &[&str]) -> azure_core::Result<Held> {
        let inner = self.inner.lock().map(|c| c.clone()).map_err(|_| {
            azure_core::Error::message(azure_core::error::ErrorKind::Credential, "poisoned")
        })?;
        let t = inner
            .get_token(scopes, None)
            .await
            .map_err(|e| self.failure(&e))?;
        let now = OffsetDateTime::now_utc();
        tracing::debug!(credential = self.setup.mode, expires_on = %t.expires_on, "got an ARM access token");
        Ok(Held {
            token: Secret::new(t.token.secret().to_string()),
            expires_on: t.expires_on,
            refresh_at: refresh_at(now, t.expires_on),
        })
    }

    /// A fresh token after ARM refused `rejected` (expired, or not valid): unless another
    /// request already replaced it, the library's credential is built again (dropping its
    /// cache) and asked once.
    pub async fn refresh_after(
        &self,
        scopes: &[&str],
        rejected: &str,
    ) -> azure_core::Result<AccessToken> {
        let mut held = self.held.lock().await;
        if let Some(h) = held.as_ref().filter(|h| h.token.secret() != rejected) {
            return Ok(AccessToken::new(h.token.clone(), h.expires_on));
        }
        let fresh = (self.make)().map_err(|e| self.failure(&e))?;
        if let Ok(mut inner) = self.inner.lock() {
            *inner = fresh;
        }
        let h = self.fetch(scopes).await?;
        let out = AccessToken::new(h.token.clone(), h.expires_on);
        *held = Some(h);
        Ok(out)
    }
}

#[async_trait::async_trait]
impl TokenCredential for Bridge {
    async fn get_token(&self, scopes: &[&str]) -> azure_core::Result<AccessToken> {
        let mut held = self.held.lock().await;
        if let Some(h) = held
            .as_ref()
            .filter(|h| OffsetDateTime::now_utc() < h.refresh_at)
        {
            return Ok(AccessToken::new(h.token.clone(), h.expires_on));
        }
        let h = self.fetch(scopes).await?;
        let out = AccessToken::new(h.token.clone(), h.expires_on);
        *held = Some(h);
        Ok(out)
    }

    async fn clear_cache(&self) -> azure_core::Result<()> {
        *self.held.lock().await = None;
        let fresh = (self.make)().map_err(|e| self.failure(&e))?;
        if let Ok(mut inner) = self.inner.lock() {
            *inner = fresh;
        }
        Ok(())
    }
}

/// True when the URL's host is a loopback address (or `localhost`).
pub fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authority_host_variable_wins_and_plain_http_stays_on_loopback() {
        let d = "https://login.microsoftonline.us";
        assert_eq!(
            Authority::choose(d, None).unwrap().url.as_str(),
            "https://login.microsoftonline.us/"
        );
        assert_eq!(
            Authority::choose(d, Some("  ")).unwrap().url.as_str(),
            "https://login.microsoftonline.us/"
        );
        let a = Authority::choose(d, Some("https://login.contoso.example/")).unwrap();
        assert_eq!(
            a.for_library(),
            ("https://login.contoso.example".to_string(), None)
        );
        let local = Authority::choose(d, Some("http://127.0.0.1:8123/")).unwrap();
        assert_eq!(
            local.for_library(),
            (
                "https://127.0.0.1:8123".to_string(),
                Some("127.0.0.1:8123".to_string())
            )
        );
        assert!(matches!(
            Authority::choose(d, Some("http://login.contoso.example")),
            Err(AuthorityError::NotHttps(_))
        ));
        assert!(matches!(
            Authority::choose(d, Some("not a url")),
            Err(AuthorityError::NotUrl(..))
        ));
        assert!(matches!(
            Authority::choose(d, Some("ftp://127.0.0.1")),
            Err(AuthorityError::NotHttps(_))
        ));
    }

    #[test]
    fn tokens_are_refreshed_before_they_expire() {
        let now = OffsetDateTime::now_utc();
        let hour = refresh_at(now, now + time::Duration::minutes(75));
        assert_eq!(hour, now + time::Duration::minutes(70));
        let short = refresh_at(now, now + time::Duration::seconds(10));
        assert_eq!(short, now + time::Duration::seconds(8));
        let gone = refresh_at(now, now - time::Duration::seconds(10));
        assert!(gone <= now);
    }

    #[test]
    fn aadsts_codes_are_found_and_explained() {
        assert_eq!(
            aadsts_code("x. AADSTS70021: No matching federated identity record found"),
            Some("AADSTS70021".into())
        );
        assert_eq!(aadsts_code("AADSTS: nothing"), None);
        let s = Setup {
            mode: "workload identity",
            tenant: Some("t1".into()),
            client_id: Some("c1".into()),
            authority: Some("https://login.microsoftonline.com/".into()),
            token_file: Some("/var/run/secrets/azure/tokens/azure-identity-token".into()),
            presented: Some(assertion::Presented {
                issuer: Some("https://oidc.example/x".into()),
                subject: Some("system:serviceaccount:kmsroute:kmsroute".into()),
                expires: None,
            }),
        };
        let m = remedy("AADSTS70021", &s).unwrap();
        for part in [
            "https://oidc.example/x",
            "system:serviceaccount:kmsroute:kmsroute",
            "system:serviceaccount:<namespace>:<serviceaccount>",
            "OIDC issuer",
            "c1",
        ] {
            assert!(m.contains(part), "{part} not in {m}");
        }
        assert!(
            remedy("AADSTS7000215", &s)
                .unwrap()
                .contains("not its secret ID")
        );
        assert!(
            remedy("AADSTS700016", &s)
                .unwrap()
                .contains("c1 was not found in tenant t1")
        );
        assert!(
            remedy("AADSTS90002", &s)
                .unwrap()
                .contains("tenant t1 was not found")
        );
        assert!(
            remedy("AADSTS700024", &s)
                .unwrap()
                .contains("azure-identity-token")
        );
        assert!(remedy("AADSTS7000222", &s).unwrap().contains("expired"));
        assert_eq!(remedy("AADSTS1", &s), None);
    }

    fn http_error(status: u16, description: &str) -> azure_core_ga::Error {
        use azure_core_ga::error::ErrorKind;
        let inner = azure_core_ga::Error::with_message(
            ErrorKind::HttpResponse {
                status: status.into(),
                error_code: None,
                raw_response: None,
            },
            description.to_string(),
        );
        azure_core_ga::Error::with_error(
            ErrorKind::Credential,
            inner,
            format!(
                "ClientAssertionCredential authentication failed. {description}\nTo troubleshoot, visit https://aka.ms/x"
            ),
        )
    }

    #[test]
    fn a_token_file_kmsroute_refuses_to_present_is_not_called_entras_refusal() {
        let a = assertion::AssertionError::Expired {
            path: "/var/run/secrets/azure/tokens/azure-identity-token".into(),
            expired: "2026-12-03 13:36:17".into(),
        };
        let inner = azure_core_ga::Error::with_error(
            azure_core_ga::error::ErrorKind::Credential,
            a.clone(),
            a.to_string(),
        );
        let e = azure_core_ga::Error::with_error(
            azure_core_ga::error::ErrorKind::Credential,
            inner,
            format!("ClientAssertionCredential authentication failed. {a}"),
        );
        let s = Setup {
            mode: "workload identity",
            ..Setup::default()
        };
        let f = explain(&e, &s);
        assert_eq!(f.class, ErrorClass::Retryable);
        assert_eq!(f.code, None);
        assert!(!f.message.contains("Entra ID refused"), "{}", f.message);
        assert!(f.message.contains("has not been replaced"), "{}", f.message);
        let missing = assertion::AssertionError::Unreadable {
            path: "/x".into(),
            reason: "No such file".into(),
        };
        let e = azure_core_ga::Error::with_error(
            azure_core_ga::error::ErrorKind::Credential,
            missing.clone(),
            missing.to_string(),
        );
        assert_eq!(explain(&e, &s).class, ErrorClass::NeedsUserAction);
    }

    #[test]
    fn refusals_need_a_human_and_outages_come_back_by_themselves() {
        let s = Setup {
            mode: "client secret",
            client_id: Some("c1".into()),
            ..Setup::default()
        };
        let refused = explain(
            &http_error(401, "AADSTS7000215: Invalid client secret provided."),
            &s,
        );
        assert_eq!(refused.class, ErrorClass::NeedsUserAction);
        assert_eq!(refused.code.as_deref(), Some("AADSTS7000215"));
        assert!(
            refused.message.contains("not its secret ID"),
            "{}",
            refused.message
        );
        assert!(
            !refused.message.contains("troubleshoot"),
            "{}",
            refused.message
        );
        let down = explain(
            &http_error(503, "AADSTS90033: A transient error has occurred."),
            &s,
        );
        assert_eq!(down.class, ErrorClass::Retryable);
        assert!(down.message.contains("HTTP 503"), "{}", down.message);
        let throttled = explain(&http_error(429, "too many"), &s);
        assert_eq!(throttled.class, ErrorClass::Retryable);
        let io = azure_core_ga::Error::with_message(
            azure_core_ga::error::ErrorKind::Connection,
            "connection refused",
        );
        let unreachable = explain(&io, &s);
        assert_eq!(unreachable.class, ErrorClass::Retryable);
        assert!(unreachable.message.contains("connection refused"));
    }
}
