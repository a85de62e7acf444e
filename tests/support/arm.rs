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
