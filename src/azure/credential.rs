//! Picking the Azure credential: workload identity, managed identity, client secret from the
//! environment, or the Azure CLI, in that order, or the one `--auth` names. A static token is
//! accepted only for loopback ARM endpoints (the emulator), never for a real cloud.
//!
//! Every credential but the static token comes from the GA identity library, through
//! [`identity::Bridge`](super::identity::Bridge): workload identity as a client-assertion
//! credential whose assertion is the projected token read fresh at every token request
//! ([`ProjectedToken`]), not the library's `WorkloadIdentityCredential`, which keeps its copy of
//! the file for 10 minutes.

use super::SetupError;
use super::identity::assertion::ProjectedToken;
pub use super::identity::is_loopback;
use super::identity::{Authority, Bridge, EntraRetry, Setup};
use crate::catalog::Cloud;
use azure_core::auth::{AccessToken, Secret, TokenCredential};
use azure_core_ga::credentials::TokenCredential as GaCredential;
use azure_identity::{
    AzureCliCredential, ClientAssertionCredential, ClientAssertionCredentialOptions,
    ClientSecretCredential, ClientSecretCredentialOptions, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId,
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
    /// AKS workload identity: the projected service-account token (AZURE_FEDERATED_TOKEN_FILE)
    /// exchanged for AZURE_CLIENT_ID in AZURE_TENANT_ID, re-read at every token request.
    WorkloadIdentity,
    /// The node's or pod's managed identity through IMDS (169.254.169.254) or IDENTITY_ENDPOINT;
    /// a user-assigned one when AZURE_CLIENT_ID is set.
    ManagedIdentity,
    /// A service principal's secret: AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET.
    ClientSecret,
    /// The signed-in Azure CLI (`az login`), for running plan and apply from a workstation.
    AzureCli,
    /// A fixed token (`KMSROUTE_STATIC_TOKEN`, default `emulator`): loopback endpoints only.
    StaticToken,
}

impl AuthMode {
    /// How the mode is named in messages.
    pub fn describe(self) -> &'static str {
        match self {
            AuthMode::Auto => "automatic",
            AuthMode::WorkloadIdentity => "workload identity",
            AuthMode::ManagedIdentity => "managed identity",
            AuthMode::ClientSecret => "client secret",
            AuthMode::AzureCli => "Azure CLI",
            AuthMode::StaticToken => "static token",
        }
    }
}

/// A credential ARM requests carry: a token, and one fresh token after ARM refused one
/// (`401 ExpiredAuthenticationToken` / `InvalidAuthenticationToken`).
#[async_trait::async_trait]
pub trait ArmCredential: TokenCredential {
    /// A token other than `rejected` if one can be had (the static token has no other).
    async fn refresh_after(
        &self,
        scopes: &[&str],
        rejected: &str,
    ) -> azure_core::Result<AccessToken>;
}

#[async_trait::async_trait]
impl ArmCredential for Bridge {
    async fn refresh_after(
        &self,
        scopes: &[&str],
        rejected: &str,
    ) -> azure_core::Result<AccessToken> {
        Bridge::refresh_after(self, scopes, rejected).await
    }
}

/// A policy's identity that cannot be built: every request to its scopes fails with why.
#[derive(Debug)]
pub struct Unusable(String);

#[async_trait::async_trait]
impl TokenCredential for Unusable {
    async fn get_token(&self, _scopes: &[&str]) -> azure_core::Result<AccessToken> {
        Err(azure_core::Error::new(
            azure_core::error::ErrorKind::Credential,
            super::identity::EntraFailure {
                class: super::ErrorClass::NeedsUserAction,
                code: None,
                message: self.0.clone(),
            },
        ))
    }
    async fn clear_cache(&self) -> azure_core::Result<()> {
        Ok(())
    }
}

#[async_trait::async_trait]
impl ArmCredential for Unusable {
    async fn refresh_after(&self, scopes: &[&str], _: &str) -> azure_core::Result<AccessToken> {
        self.get_token(scopes).await
    }
}

/// What the generated client is given: every request passes through `ArmPolicy`, which sets
/// the token of the credential routed to the request's scope, so this one is never sent.
#[derive(Debug)]
pub struct SetByPolicy;

#[async_trait::async_trait]
impl TokenCredential for SetByPolicy {
    async fn get_token(&self, _scopes: &[&str]) -> azure_core::Result<AccessToken> {
        Ok(AccessToken::new(
            Secret::new("set-by-policy"),
            OffsetDateTime::now_utc() + time::Duration::hours(1),
        ))
    }
    async fn clear_cache(&self) -> azure_core::Result<()> {
        Ok(())
    }
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

#[async_trait::async_trait]
impl ArmCredential for StaticToken {
    async fn refresh_after(&self, scopes: &[&str], _: &str) -> azure_core::Result<AccessToken> {
        self.get_token(scopes).await
    }
}

/// What `Auto` means here, in the order `AuthMode::Auto`'s help text gives.
fn choose_mode(mode: AuthMode, loopback: bool, set: impl Fn(&str) -> bool) -> AuthMode {
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

/// Where a credential reads its settings: the process environment in production, a map in
/// tests.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment (empty values count as unset).
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Env for Vec<(String, String)> {
    fn var(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.clone())
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, v)| *k == name && !v.is_empty())
            .map(|(_, v)| v.to_string())
    }
}

pub use crate::ids::Identity;

/// The credential for `mode` against `endpoint`, or why there is none.
pub fn credential(
    mode: AuthMode,
    endpoint: &url::Url,
    cloud: Cloud,
) -> Result<Arc<dyn ArmCredential>, SetupError> {
    credential_from(mode, endpoint, cloud, &ProcessEnv, &EntraRetry::default())
}

/// [`credential`] with its environment and Entra ID retries given.
pub fn credential_from(
    mode: AuthMode,
    endpoint: &url::Url,
    cloud: Cloud,
    env: &dyn Env,
    retry: &EntraRetry,
) -> Result<Arc<dyn ArmCredential>, SetupError> {
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
    let mode = choose_mode(mode, loopback, |k| env.var(k).is_some());
    if mode == AuthMode::StaticToken {
        if !loopback {
            return Err(SetupError::Refused(format!(
                "a static token is only allowed for a loopback ARM endpoint (the emulator), not {endpoint}"
            )));
        }
        let token = env
            .var("KMSROUTE_STATIC_TOKEN")
            .unwrap_or_else(|| "emulator".into());
        return Ok(Arc::new(StaticToken(Secret::new(token))));
    }
    let authority = Authority::choose(
        cloud.endpoints().authority_host,
        env.var("AZURE_AUTHORITY_HOST").as_deref(),
    )
    .map_err(|e| SetupError::Refused(e.to_string()))?;
    let identity = match (env.var("AZURE_TENANT_ID"), env.var("AZURE_CLIENT_ID")) {
        (Some(tenant_id), Some(client_id)) => Some(Identity {
            tenant_id,
            client_id,
        }),
        _ => None,
    };
    build(mode, &authority, identity.as_ref(), env, retry).map(|b| b as Arc<dyn ArmCredential>)
}

/// A workload-identity credential for another app registration, presenting the same
/// projected service-account token (a policy's `spec.azure.identity`).
pub fn workload_identity_for(
    identity: &Identity,
    cloud: Cloud,
    env: &dyn Env,
    retry: &EntraRetry,
) -> Result<Arc<Bridge>, SetupError> {
    let authority = Authority::choose(
        cloud.endpoints().authority_host,
        env.var("AZURE_AUTHORITY_HOST").as_deref(),
    )
    .map_err(|e| SetupError::Refused(e.to_string()))?;
    build(
        AuthMode::WorkloadIdentity,
        &authority,
        Some(identity),
        env,
        retry,
    )
}

/// Builds the credential of a policy's `spec.azure.identity`.
pub type IdentityFactory =
    Arc<dyn Fn(&Identity) -> Result<Arc<dyn ArmCredential>, SetupError> + Send + Sync>;

/// What `spec.azure.identity` means under `mode`: workload identity for that app with the same
/// projected token; the emulator's static token stands for every identity; any other mode
/// cannot act as another app, and says so.
pub fn identity_factory(
    mode: AuthMode,
    endpoint: &url::Url,
    cloud: Cloud,
    env: Arc<dyn Env + Send + Sync>,
    retry: EntraRetry,
    default: Arc<dyn ArmCredential>,
) -> IdentityFactory {
    let mode = choose_mode(mode, is_loopback(endpoint), |k| env.var(k).is_some());
    Arc::new(move |identity: &Identity| match mode {
        AuthMode::WorkloadIdentity => workload_identity_for(identity, cloud, env.as_ref(), &retry)
            .map(|b| b as Arc<dyn ArmCredential>),
        AuthMode::StaticToken => Ok(default.clone()),
        other => Err(SetupError::Credential(format!(
            "spec.azure.identity ({identity}) is used through workload identity, but this \
             controller authenticates with {}: run it with workload identity \
             (AZURE_FEDERATED_TOKEN_FILE) and federate its ServiceAccount to that app",
            other.describe()
        ))),
    })
}

/// The credentials of one ARM client: the controller's own, and one per identity a policy
/// names (each with its own token), routed by the scope a request addresses.
pub struct Credentials {
    default: Arc<dyn ArmCredential>,
    factory: std::sync::Mutex<Option<IdentityFactory>>,
    /// One credential (one token cache) per identity, kept across passes.
    made: std::sync::Mutex<std::collections::HashMap<Identity, Arc<dyn ArmCredential>>>,
    /// Lower-cased subscription ID or `mg:{group}` → the credential for it.
    routes: std::sync::RwLock<std::collections::HashMap<String, Arc<dyn ArmCredential>>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({:?})", self.default)
    }
}

impl Credentials {
    pub fn new(default: Arc<dyn ArmCredential>) -> Credentials {
        Credentials {
            default,
            factory: std::sync::Mutex::new(None),
            made: std::sync::Mutex::default(),
            routes: std::sync::RwLock::default(),
        }
    }

    /// The controller's own credential (readiness checks it).
    pub fn default_credential(&self) -> &Arc<dyn ArmCredential> {
        &self.default
    }

    pub fn set_factory(&self, factory: IdentityFactory) {
        if let Ok(mut f) = self.factory.lock() {
            *f = Some(factory);
        }
    }

    /// The credential for a request to `path`: the identity routed to its subscription or
    /// management group, else the controller's.
    pub fn for_path(&self, path: &str) -> Arc<dyn ArmCredential> {
        let key = scope_key(path);
        key.and_then(|k| self.routes.read().ok()?.get(&k).cloned())
            .unwrap_or_else(|| self.default.clone())
    }

    /// Routes the scopes listed to their identities (`None`: the controller's own); other
    /// scopes keep theirs. Builds a credential the first time an identity is seen; one that
    /// cannot be built answers every request to its scopes with why.
    pub fn route(&self, routes: &super::IdentityRoutes) -> Result<(), SetupError> {
        let mut changes = Vec::new();
        let scopes = routes
            .subscriptions
            .iter()
            .map(|(s, i)| (s.to_ascii_lowercase(), i))
            .chain(
                routes
                    .management_groups
                    .iter()
                    .map(|(g, i)| (format!("mg:{}", g.to_ascii_lowercase()), i)),
            );
        for (key, identity) in scopes {
            // An identity that cannot be built fails the requests to its scopes, saying why,
            // and nothing else: other policies' scopes go on.
            let credential = identity.as_ref().map(|i| {
                self.credential_for(i)
                    .unwrap_or_else(|e| Arc::new(Unusable(e.to_string())) as Arc<dyn ArmCredential>)
            });
            changes.push((key, credential));
        }
        if let Ok(mut r) = self.routes.write() {
            for (key, credential) in changes {
                match credential {
                    Some(c) => r.insert(key, c),
                    None => r.remove(&key),
                };
            }
        }
        Ok(())
    }

    fn credential_for(&self, identity: &Identity) -> Result<Arc<dyn ArmCredential>, SetupError> {
        if let Some(c) = self.made.lock().ok().and_then(|m| m.get(identity).cloned()) {
            return Ok(c);
        }
        let factory = self.factory.lock().ok().and_then(|f| f.clone());
        let made = match factory {
            Some(f) => f(identity)?,
            None => {
                return Err(SetupError::Credential(format!(
                    "spec.azure.identity ({identity}): this client was built without identities"
                )));
            }
        };
        if let Ok(mut m) = self.made.lock() {
            m.insert(identity.clone(), made.clone());
        }
        Ok(made)
    }
}

/// The routing key of a request path: its subscription, or `mg:{group}` for the management
/// group API.
pub fn scope_key(path: &str) -> Option<String> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        [s, id, ..] if s.eq_ignore_ascii_case("subscriptions") => Some(id.to_ascii_lowercase()),
        [p, ns, mgs, g, ..]
            if p.eq_ignore_ascii_case("providers")
                && ns.eq_ignore_ascii_case("Microsoft.Management")
                && mgs.eq_ignore_ascii_case("managementGroups") =>
        {
            Some(format!("mg:{}", g.to_ascii_lowercase()))
        }
        _ => None,
    }
}

fn missing(mode: AuthMode, what: &str) -> SetupError {
    SetupError::Credential(format!("{} credential: {what} is not set", mode.describe()))
}

/// The GA credential for `mode`, behind a [`Bridge`].
fn build(
    mode: AuthMode,
    authority: &Authority,
    identity: Option<&Identity>,
    env: &dyn Env,
    retry: &EntraRetry,
) -> Result<Arc<Bridge>, SetupError> {
    let options = authority.client_options(retry);
    let mut setup = Setup {
        mode: mode.describe(),
        tenant: identity.map(|i| i.tenant_id.clone()),
        client_id: identity.map(|i| i.client_id.clone()),
        authority: Some(authority.url.to_string()),
        ..Setup::default()
    };
    let err = move |e: azure_core_ga::Error| {
        SetupError::Credential(format!("{} credential: {e}", mode.describe()))
    };
    type Make = Box<dyn Fn() -> azure_core_ga::Result<Arc<dyn GaCredential>> + Send + Sync>;
    let (make, presented): (Make, _) = match mode {
        AuthMode::WorkloadIdentity => {
            let id = identity
                .cloned()
                .ok_or_else(|| missing(mode, "AZURE_TENANT_ID or AZURE_CLIENT_ID"))?;
            let file = env
                .var("AZURE_FEDERATED_TOKEN_FILE")
                .ok_or_else(|| missing(mode, "AZURE_FEDERATED_TOKEN_FILE"))?;
            setup.token_file = Some(file.clone());
            let token = ProjectedToken::new(file);
            let presented = token.presented();
            let make: Make = Box::new(move || {
                let c: Arc<dyn GaCredential> = ClientAssertionCredential::new(
                    id.tenant_id.clone(),
                    id.client_id.clone(),
                    token.clone(),
                    Some(ClientAssertionCredentialOptions {
                        client_options: options.clone(),
                    }),
                )?;
                Ok(c)
            });
            (make, Some(presented))
        }
        AuthMode::ClientSecret => {
            let id = identity
                .cloned()
                .ok_or_else(|| missing(mode, "AZURE_TENANT_ID or AZURE_CLIENT_ID"))?;
            let secret = env
                .var("AZURE_CLIENT_SECRET")
                .ok_or_else(|| missing(mode, "AZURE_CLIENT_SECRET"))?;
            let make: Make = Box::new(move || {
                let c: Arc<dyn GaCredential> = ClientSecretCredential::new(
                    &id.tenant_id,
                    id.client_id.clone(),
                    secret.clone().into(),
                    Some(ClientSecretCredentialOptions {
                        client_options: options.clone(),
                    }),
                )?;
                Ok(c)
            });
            (make, None)
        }
        AuthMode::ManagedIdentity => {
            // A user-assigned identity by client ID when one is given (AZURE_CLIENT_ID), else
            // the system-assigned one.
            let user = env.var("AZURE_CLIENT_ID").map(UserAssignedId::ClientId);
            setup.client_id = env.var("AZURE_CLIENT_ID");
            let make: Make = Box::new(move || {
                let c: Arc<dyn GaCredential> =
                    ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                        user_assigned_id: user.clone(),
                        client_options: options.clone(),
                    }))?;
                Ok(c)
            });
            (make, None)
        }
        AuthMode::AzureCli | AuthMode::Auto | AuthMode::StaticToken => {
            let make: Make = Box::new(|| {
                let c: Arc<dyn GaCredential> = AzureCliCredential::new(None)?;
                Ok(c)
            });
            (make, None)
        }
    };
    Bridge::new(setup, make, presented)
        .map(Arc::new)
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> url::Url {
        url::Url::parse(s).unwrap()
    }

    /// A policy identity that cannot be built fails its own scopes' requests, saying why; the
    /// other scopes keep the controller's credential.
    #[tokio::test]
    async fn an_unusable_identity_fails_only_its_own_scopes() {
        let c = Credentials::new(Arc::new(StaticToken::new("home")));
        c.set_factory(Arc::new(|_: &Identity| {
            Err(SetupError::Credential("needs workload identity".into()))
        }));
        let id = Identity {
            tenant_id: "t".into(),
            client_id: "c".into(),
        };
        let routes = super::super::IdentityRoutes {
            subscriptions: [
                ("s-partner".to_string(), Some(id)),
                ("s-home".to_string(), None),
            ]
            .into(),
            management_groups: Default::default(),
        };
        c.route(&routes).unwrap();
        let e = c
            .for_path("/subscriptions/S-PARTNER/providers/x")
            .get_token(&["x"])
            .await
            .unwrap_err();
        let f = e
            .downcast_ref::<super::super::identity::EntraFailure>()
            .unwrap();
        assert_eq!(f.class, super::super::ErrorClass::NeedsUserAction);
        assert!(f.message.contains("needs workload identity"));
        let home = c
            .for_path("/subscriptions/s-home/providers/x")
            .get_token(&["x"])
            .await
            .unwrap();
        assert_eq!(home.token.secret(), "home");
        assert_eq!(
            scope_key("/providers/Microsoft.Management/managementGroups/Corp/descendants")
                .as_deref(),
            Some("mg:corp")
        );
        assert_eq!(scope_key("/other"), None);
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
        let mut order = vec![choose_mode(AuthMode::Auto, true, |_| true)];
        let mut unset: Vec<&str> = Vec::new();
        for k in all {
            order.push(choose_mode(AuthMode::Auto, false, |v| {
                all.contains(&v) && !unset.contains(&v)
            }));
            unset.push(k);
        }
        order.push(choose_mode(AuthMode::Auto, false, |_| false));
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
            choose_mode(AuthMode::AzureCli, true, |_| true),
            AuthMode::AzureCli
        );
    }
}
