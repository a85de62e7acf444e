//! Picking the Azure credential: workload identity, managed identity, client secret from the
//! environment, or the Azure CLI, in that order, or the one `--auth` names. A static token is
//! accepted only for loopback ARM endpoints (the emulator), never for a real cloud.

use super::SetupError;
use crate::catalog::Cloud;
use azure_core::auth::{AccessToken, Secret, TokenCredential};
use azure_identity::{
    AppServiceManagedIdentityCredential, AzureCliCredential, ClientSecretCredential,
    TokenCredentialOptions, VirtualMachineManagedIdentityCredential, WorkloadIdentityCredential,
};
use std::sync::Arc;
use time::OffsetDateTime;

/// How to authenticate to ARM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// The first that applies: a static token on a loopback endpoint; workload identity
    /// (AZURE_FEDERATED_TOKEN_FILE); client secret (AZURE_CLIENT_SECRET); managed identity
    /// (IDENTITY_ENDPOINT, MSI_ENDPOINT or AZURE_CLIENT_ID); Azure CLI.
    Auto,
    WorkloadIdentity,
    ManagedIdentity,
    ClientSecret,
    AzureCli,
    /// A fixed token (`KMSROUTE_STATIC_TOKEN`, default `emulator`): loopback endpoints only.
    StaticToken,
}

/// A fixed bearer token for the emulator. Its `Debug` never shows the token.
pub struct StaticToken(Secret);

impl std::fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StaticToken(<redacted>)")
    }
}

impl StaticToken {
    pub fn new(token: impl Into<String>) -> Self {
        StaticToken(Secret::new(token.into()))
    }
}

#[async_trait::async_trait]
impl TokenCredential for StaticToken {
    async fn get_token(&self, _scopes: &[&str]) -> azure_core::Result<AccessToken> {
        Ok(AccessToken::new(
            self.0.clone(),
            OffsetDateTime::now_utc() + time::Duration::hours(1),
        ))
    }
    async fn clear_cache(&self) -> azure_core::Result<()> {
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

/// What `Auto` means here, in the order `AuthMode::Auto`'s help text gives.
fn resolve(mode: AuthMode, loopback: bool, set: impl Fn(&str) -> bool) -> AuthMode {
    match mode {
        AuthMode::Auto if loopback => AuthMode::StaticToken,
        AuthMode::Auto if set("AZURE_FEDERATED_TOKEN_FILE") => AuthMode::WorkloadIdentity,
        AuthMode::Auto if set("AZURE_CLIENT_SECRET") => AuthMode::ClientSecret,
        AuthMode::Auto
            if set("IDENTITY_ENDPOINT") || set("MSI_ENDPOINT") || set("AZURE_CLIENT_ID") =>
        {
            AuthMode::ManagedIdentity
        }
        AuthMode::Auto => AuthMode::AzureCli,
        m => m,
    }
}

/// The credential for `mode` against `endpoint`, or why there is none.
pub fn credential(
    mode: AuthMode,
    endpoint: &url::Url,
    cloud: Cloud,
) -> Result<Arc<dyn TokenCredential>, SetupError> {
    let loopback = is_loopback(endpoint);
    if !matches!(endpoint.scheme(), "https" | "http") {
        return Err(SetupError::Refused(format!(
            "ARM endpoint {endpoint}: unsupported scheme {:?} (use https, or http on loopback)",
            endpoint.scheme()
        )));
    }
    if !loopback && endpoint.scheme() != "https" {
        return Err(SetupError::Refused(format!(
            "ARM endpoint {endpoint} must use https (plain http is allowed only on loopback)"
        )));
    }
    let mut options = TokenCredentialOptions::default();
    options.set_authority_host(cloud.endpoints().authority_host.to_string());
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let mode = resolve(mode, loopback, |k| env(k).is_some());
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let err = |e: azure_core::Error| SetupError::Credential(format!("{mode:?} credential: {e}"));
    Ok(match mode {
        AuthMode::StaticToken if !loopback => {
            return Err(SetupError::Refused(format!(
                "a static token is only allowed for a loopback ARM endpoint (the emulator), not {endpoint}"
            )));
        }
        AuthMode::StaticToken => {
            let token = env("KMSROUTE_STATIC_TOKEN").unwrap_or_else(|| "emulator".into());
            Arc::new(StaticToken(Secret::new(token)))
        }
        AuthMode::WorkloadIdentity => {
            Arc::new(WorkloadIdentityCredential::create(options).map_err(err)?)
        }
        AuthMode::ClientSecret => Arc::new(ClientSecretCredential::create(options).map_err(err)?),
        AuthMode::ManagedIdentity if env("IDENTITY_ENDPOINT").is_some() => {
            Arc::new(AppServiceManagedIdentityCredential::create(options).map_err(err)?)
        }
        AuthMode::ManagedIdentity => {
            Arc::new(VirtualMachineManagedIdentityCredential::new(options))
        }
        AuthMode::AzureCli | AuthMode::Auto => Arc::new(AzureCliCredential::new()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> url::Url {
        url::Url::parse(s).unwrap()
    }

    #[test]
    fn a_static_token_is_refused_for_a_real_endpoint() {
        let e = credential(
            AuthMode::StaticToken,
            &url("https://management.azure.com"),
            Cloud::AzurePublic,
        )
        .unwrap_err();
        assert!(e.to_string().contains("only allowed for a loopback"), "{e}");
        assert!(e.is_input());
    }

    #[test]
    fn plain_http_is_refused_off_loopback() {
        let e = credential(
            AuthMode::Auto,
            &url("http://management.azure.com"),
            Cloud::AzurePublic,
        )
        .unwrap_err();
        assert!(e.to_string().contains("must use https"), "{e}");
    }

    #[tokio::test]
    async fn loopback_endpoints_get_the_static_token_by_default_and_debug_hides_it() {
        let c = credential(
            AuthMode::Auto,
            &url("http://127.0.0.1:8080"),
            Cloud::AzurePublic,
        )
        .unwrap();
        let t = c.get_token(&["x"]).await.unwrap();
        assert!(!t.token.secret().is_empty());
        assert!(!format!("{c:?}").contains(t.token.secret()));
    }

    /// The help text of `--auth auto` lists the credentials in the order `resolve` tries them.
    #[test]
    fn auto_tries_credentials_in_the_order_its_help_text_gives() {
        use clap::ValueEnum;
        let all = [
            "AZURE_FEDERATED_TOKEN_FILE",
            "AZURE_CLIENT_SECRET",
            "IDENTITY_ENDPOINT",
            "MSI_ENDPOINT",
            "AZURE_CLIENT_ID",
        ];
        let mut order = vec![resolve(AuthMode::Auto, true, |_| true)];
        let mut unset: Vec<&str> = Vec::new();
        for k in all {
            order.push(resolve(AuthMode::Auto, false, |v| {
                all.contains(&v) && !unset.contains(&v)
            }));
            unset.push(k);
        }
        order.push(resolve(AuthMode::Auto, false, |_| false));
        order.dedup();
        assert_eq!(
            order,
            [
                AuthMode::StaticToken,
                AuthMode::WorkloadIdentity,
                AuthMode::ClientSecret,
                AuthMode::ManagedIdentity,
                AuthMode::AzureCli
            ]
        );
        let help = AuthMode::Auto
            .to_possible_value()
            .and_then(|v| v.get_help().map(|h| h.to_string()))
            .unwrap_or_default();
        let at = |s: &str| {
            help.find(s)
                .unwrap_or_else(|| panic!("{s:?} not in {help:?}"))
        };
        let positions = [
            at("static token"),
            at("workload identity"),
            at("client secret"),
            at("managed identity"),
            at("Azure CLI"),
        ];
        assert!(positions.is_sorted(), "{help}");
        assert_eq!(
            resolve(AuthMode::AzureCli, true, |_| true),
            AuthMode::AzureCli
        );
    }
}
