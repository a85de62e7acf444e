//! The ARM side most integration tests start from: the emulator on a free loopback port, the
//! real client on it (a static token, retries short enough for tests), the demo estate and the
//! example policy. Included by path (`#[path = "support/arm.rs"]`) where the fake Kubernetes
//! server is not needed.
#![allow(dead_code)]

use kmsroute::api::{DesiredState, parse_policies, validate_policy};
use kmsroute::azure::client::{AzureNetworkApi, ClientSettings};
use kmsroute::azure::credential::StaticToken;
use kmsroute::azure::policy::RetrySettings;
use kmsroute::catalog::Cloud;
use kmsroute::emulator::{self, Config, EmulatorHandle, Seed};
use std::sync::Arc;
use std::time::Duration;

/// The emulator with `seed`, on a free loopback port.
pub async fn emulator(config: Config, seed: Seed) -> EmulatorHandle {
    emulator::start(config, seed, "127.0.0.1:0".parse().expect("loopback"))
        .await
        .expect("the emulator starts")
}

/// The real ARM client on `em`, with a static token.
pub fn client(em: &EmulatorHandle, settings: ClientSettings) -> AzureNetworkApi {
    client_with_token(em, "t", settings)
}

pub fn client_with_token(
    em: &EmulatorHandle,
    token: &str,
    settings: ClientSettings,
) -> AzureNetworkApi {
    AzureNetworkApi::new(
        url::Url::parse(&em.url()).expect("the emulator's URL"),
        Arc::new(StaticToken::new(token)),
        settings,
    )
    .expect("a client on the emulator")
}

/// Retries that wait milliseconds, not seconds.
pub fn quick_retry() -> RetrySettings {
    RetrySettings {
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        ..RetrySettings::default()
    }
}

/// Client settings with [`quick_retry`].
pub fn quick() -> ClientSettings {
    ClientSettings {
        retry: quick_retry(),
        ..ClientSettings::default()
    }
}

/// The emulator and a client on it.
pub async fn emulator_and_client(
    config: Config,
    seed: Seed,
    settings: ClientSettings,
) -> (EmulatorHandle, AzureNetworkApi) {
    let em = emulator(config, seed).await;
    let api = client(&em, settings);
    (em, api)
}

/// `examples/estate.json`: the demo's estate.
pub fn demo_estate() -> Seed {
    serde_json::from_str(&std::fs::read_to_string("examples/estate.json").expect("the estate"))
        .expect("the estate parses")
}

/// `examples/kmsroutepolicy.yaml` with `extra` YAML appended, checked.
pub fn example_policy(extra: &str) -> DesiredState {
    let yaml =
        std::fs::read_to_string("examples/kmsroutepolicy.yaml").expect("the example") + extra;
    let docs = parse_policies(&yaml).expect("the example parses");
    let policy = docs[0].policy.as_ref().expect("the example is a policy");
    validate_policy(policy, Cloud::AzurePublic)
        .expect("the example validates")
        .desired
}

/// The tenant and app of [`workload_entra`].
pub const WI_TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const WI_CLIENT: &str = "0b6c3a2e-6f4e-4f71-9d55-3f0c6f1f8a11";
const WI_ISSUER: &str = "https://oidc.example/";
const WI_SUBJECT: &str = "system:serviceaccount:kmsroute:kmsroute";

/// The emulator's Entra ID with one app ([`WI_CLIENT`] in [`WI_TENANT`]) federated to the
/// controller's ServiceAccount, issuing access tokens that live `access_token_seconds`.
pub fn workload_entra(access_token_seconds: u64) -> kmsroute::emulator::entra::Entra {
    use kmsroute::emulator::entra::{App, Entra, Federated};
    Entra {
        tenants: vec![WI_TENANT.into()],
        apps: vec![App {
            tenant: WI_TENANT.into(),
            client_id: WI_CLIENT.into(),
            secrets: vec![],
            federated: vec![Federated {
                issuer: WI_ISSUER.into(),
                subject: WI_SUBJECT.into(),
            }],
            name: None,
        }],
        access_token_seconds,
        subscription_tenants: Default::default(),
    }
}

/// The projected service-account token [`workload_entra`] accepts (an unsigned JWT, valid
/// until 2100), written to `dir/token`; returns the token and the file's path.
pub fn projected_token(dir: &std::path::Path) -> (String, String) {
    std::fs::create_dir_all(dir).expect("the token's directory");
    let token = kmsroute::azure::identity::jwt::unsigned(&serde_json::json!({
        "iss": WI_ISSUER, "sub": WI_SUBJECT,
        "aud": "api://AzureADTokenExchange", "exp": 4_102_444_800_i64
    }));
    let file = dir.join("token");
    std::fs::write(&file, &token).expect("the token file");
    (token, file.to_string_lossy().to_string())
}
