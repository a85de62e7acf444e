//! Credentials as production runs them, on the emulator's Entra ID: workload identity whose
//! projected token kubelet rotates (laid out and swapped as kubelet does) with a lifetime of
//! seconds, access tokens that expire in seconds, Entra's refusals named with their fix, and an
//! outage of the token endpoint the controller rides out.

mod support;

use kmsroute::api::KmsRoutePolicy;
use kmsroute::azure::client::{AzureNetworkApi, ClientSettings};
use kmsroute::azure::credential::{AuthMode, credential_from};
use kmsroute::azure::identity::EntraRetry;
use kmsroute::azure::identity::jwt;
use kmsroute::azure::policy::RetrySettings;
use kmsroute::azure::{ErrorClass, NetworkApi};
use kmsroute::catalog::Cloud;
use kmsroute::controller::metrics::ControllerMetrics;
use kmsroute::controller::{self, Probes};
use kmsroute::emulator::entra::{App, Entra, Federated};
use kmsroute::emulator::{Config, EmulatorHandle, OtherWrite};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::fake_kube::FakeKube;
use support::wait::wait_for;
use tokio::sync::watch;

const S1: &str = "11111111-1111-1111-1111-111111111111";
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT: &str = "0b6c3a2e-6f4e-4f71-9d55-3f0c6f1f8a11";
const ISSUER: &str = "https://oidc.prod-aks.azure.com/5f3a/";
const SUBJECT: &str = "system:serviceaccount:kmsroute:kmsroute";
const SECRET: &str = "Zx8Q~not-the-secret-id";

fn entra(access_token_seconds: u64) -> Entra {
    Entra {
        tenants: vec![TENANT.into()],
        apps: vec![App {
            tenant: TENANT.into(),
            client_id: CLIENT.into(),
            secrets: vec![SECRET.into()],
            federated: vec![Federated {
                issuer: ISSUER.into(),
                subject: SUBJECT.into(),
            }],
            name: None,
        }],
        access_token_seconds,
        subscription_tenants: Default::default(),
    }
}

async fn emulator_with_entra(access_token_seconds: u64) -> EmulatorHandle {
    support::arm::emulator(
        Config {
            entra: Some(entra(access_token_seconds)),
            ..Config::default()
        },
        support::arm::demo_estate(),
    )
    .await
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// A projected service-account token volume as kubelet writes it: `token -> ..data/token`,
/// `..data -> ..<n>`; each rotation writes a new directory, swaps `..data` and deletes the old
/// one. Rotates every `every` with tokens that live `life`, until dropped.
struct Kubelet {
    dir: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Kubelet {
    fn write(dir: &Path, n: u64, subject: &str, life: Duration) {
        let claims = json!({
            "iss": ISSUER, "sub": subject, "aud": ["api://AzureADTokenExchange"],
            "iat": unix_now(), "nbf": unix_now() - 1,
            "exp": unix_now() + life.as_secs() as i64,
            "kubernetes.io": {"namespace": "kmsroute", "serviceaccount": {"name": "kmsroute"}},
        });
        let data = dir.join(format!("..{n}"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("token"), jwt::unsigned(&claims)).unwrap();
        let tmp = dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(format!("..{n}"), &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
        if n > 0 {
            let _ = std::fs::remove_dir_all(dir.join(format!("..{}", n - 1)));
        }
    }

    fn start(subject: &'static str, every: Duration, life: Duration) -> Kubelet {
        let dir = std::env::temp_dir().join(format!("kmsroute-sa-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Kubelet::write(&dir, 0, subject, life);
        std::os::unix::fs::symlink("..data/token", dir.join("token")).unwrap();
        let d = dir.clone();
        let task = tokio::spawn(async move {
            for n in 1.. {
                tokio::time::sleep(every).await;
                Kubelet::write(&d, n, subject, life);
            }
        });
        Kubelet { dir, task }
    }

    fn token_file(&self) -> String {
        self.dir.join("token").display().to_string()
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn quick_entra() -> EntraRetry {
    EntraRetry {
        initial_delay: Duration::from_millis(50),
        max_retries: 2,
        max_elapsed: Duration::from_secs(2),
        max_delay: Duration::from_millis(200),
    }
}

fn client_settings() -> ClientSettings {
    ClientSettings {
        retry: RetrySettings {
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
            max_attempts: 3,
            ..RetrySettings::default()
        },
        ..ClientSettings::default()
    }
}

/// The real client on the emulator, authenticating as `mode` with `env`.
fn client(em: &EmulatorHandle, mode: AuthMode, env: &[(&str, &str); 5]) -> AzureNetworkApi {
    let url = url::Url::parse(&em.url()).unwrap();
    let cred = credential_from(mode, &url, Cloud::AzurePublic, env, &quick_entra()).unwrap();
    AzureNetworkApi::new(url, cred, client_settings()).unwrap()
}

/// The real client on `em` with workload identity as `CLIENT`, presenting `subject`'s
/// projected token (one that lives an hour).
fn workload_client(em: &EmulatorHandle, subject: &'static str) -> (Kubelet, AzureNetworkApi) {
    let kubelet = Kubelet::start(
        subject,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    );
    let authority = em.url();
    let file = kubelet.token_file();
    let api = client(
        em,
        AuthMode::WorkloadIdentity,
        &workload_env(&authority, &file, CLIENT),
    );
    (kubelet, api)
}

fn workload_env<'a>(authority: &'a str, file: &'a str, client: &'a str) -> [(&'a str, &'a str); 5] {
    [
        ("AZURE_AUTHORITY_HOST", authority),
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_CLIENT_ID", client),
        ("AZURE_FEDERATED_TOKEN_FILE", file),
        ("AZURE_CLIENT_SECRET", ""),
    ]
}

fn subs() -> BTreeSet<String> {
    BTreeSet::from([S1.to_string()])
}

fn start_controller(
    kube: &FakeKube,
    api: Arc<AzureNetworkApi>,
    allowed: &[(&str, &str)],
) -> (watch::Sender<bool>, Arc<ControllerMetrics>, Probes) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut settings = support::settings::controller("a");
    settings.allowed_identities = allowed
        .iter()
        .map(|(t, c)| kmsroute::ids::Identity {
            tenant_id: t.to_string(),
            client_id: c.to_string(),
        })
        .collect();
    let metrics = Arc::new(ControllerMetrics::default());
    let probes = Probes::default();
    // Readiness follows the credential, as `kmsroute run` wires it.
    let checker = api.clone();
    tokio::spawn(controller::probes::watch_credentials(
        move || {
            let api = checker.clone();
            async move { api.check_credentials().await }
        },
        probes.credentials_ok.clone(),
        Duration::from_millis(300),
    ));
    let (stop, stop_rx) = watch::channel(false);
    let dyn_api: Arc<dyn NetworkApi> = api;
    tokio::spawn(controller::run(
        kube.client(),
        dyn_api,
        settings,
        metrics.clone(),
        probes.clone(),
        stop_rx,
    ));
    (stop, metrics, probes)
}

fn policy(name: &str) -> KmsRoutePolicy {
    serde_json::from_value(
        json!({"apiVersion": "kmsroute.io/v1alpha1", "kind": "KmsRoutePolicy",
        "metadata": {"name": name},
        "spec": {"selector": {"subscriptions": [S1], "virtualNetworkTags": {"kms": "enabled"}}}}),
    )
    .unwrap()
}

/// A controller with workload identity on `em`, kubelet rotating `subject`'s token every
/// `every` with tokens that live `life`, and the policy `spokes` created.
struct Running {
    _kubelet: Kubelet,
    kube: FakeKube,
    stop: watch::Sender<bool>,
    metrics: Arc<ControllerMetrics>,
    probes: Probes,
}

async fn controller_with_workload_identity(
    em: &EmulatorHandle,
    subject: &'static str,
    every: Duration,
    life: Duration,
) -> Running {
    let kubelet = Kubelet::start(subject, every, life);
    let authority = em.url();
    let file = kubelet.token_file();
    let api = Arc::new(client(
        em,
        AuthMode::WorkloadIdentity,
        &workload_env(&authority, &file, CLIENT),
    ));
    let kube = FakeKube::start().await;
    let (stop, metrics, probes) = start_controller(&kube, api, &[]);
    Api::<KmsRoutePolicy>::all(kube.client())
        .create(&PostParams::default(), &policy("spokes"))
        .await
        .unwrap();
    Running {
        _kubelet: kubelet,
        kube,
        stop,
        metrics,
        probes,
    }
}

async fn wait_ready(kube: &FakeKube, name: &str) {
    wait_for(
        &format!("{name} Ready=True"),
        Duration::from_secs(20),
        || {
            kube.policy(name)
                .filter(|o| condition(o, "Ready").is_some_and(|c| c.0 == "True"))
        },
    )
    .await;
}

fn condition(obj: &Value, type_: &str) -> Option<(String, String, String)> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or("").into(),
                c["reason"].as_str().unwrap_or("").into(),
                c["message"].as_str().unwrap_or("").into(),
            )
        })
}

const SHARED: &str = "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/rg-spoke1/providers/Microsoft.Network/routeTables/rt-spoke1-shared";

fn has_kms_route(em: &EmulatorHandle) -> bool {
    em.dump().resources.iter().any(|r| {
        r["name"] == "rt-spoke1-shared"
            && r["properties"]["routes"]
                .as_array()
                .is_some_and(|rs| rs.iter().any(|x| x["name"] == "kms-20-118-99-224"))
    })
}

async fn delete_and_wait_repaired(em: &EmulatorHandle, limit: Duration) {
    em.other_writer(OtherWrite::DeleteRoute {
        route_table: SHARED.into(),
        route: "kms-20-118-99-224".into(),
    })
    .unwrap();
    wait_for("the KMS route repaired", limit, || {
        has_kms_route(em).then_some(())
    })
    .await;
}

/// The issue's scenario: kubelet rotates a projected token that lives 3 s every second, ARM's
/// access tokens live 2 s; over a dozen refreshes the controller keeps repairing drift, never
/// presents an expired assertion and never fails a pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_identity_keeps_repairing_across_many_token_rotations() {
    let em = emulator_with_entra(2).await;
    let c = controller_with_workload_identity(
        &em,
        SUBJECT,
        Duration::from_secs(1),
        Duration::from_secs(3),
    )
    .await;
    let (kube, metrics, probes) = (&c.kube, &c.metrics, &c.probes);
    wait_ready(kube, "spokes").await;
    let started = std::time::Instant::now();
    let mut repairs = 0;
    // At least 12 s: six access-token lifetimes, four projected-token lifetimes.
    while started.elapsed() < Duration::from_secs(12) || repairs < 4 {
        delete_and_wait_repaired(&em, Duration::from_secs(15)).await;
        repairs += 1;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let stats = em.entra_stats();
    assert!(stats.tokens_issued >= 5, "{stats:?}");
    assert_eq!(stats.expired_assertions, 0, "{stats:?}");
    assert!(stats.refused.is_empty(), "{stats:?}");
    assert!(stats.arm_accepted > 0, "{stats:?}");
    assert_eq!(metrics.reconciles("error"), 0, "a pass failed");
    assert_eq!(metrics.refreshes("error"), 0, "an inventory refresh failed");
    assert!(probes.credentials_ok.load(Ordering::SeqCst));
    let obj = kube.policy("spokes").unwrap();
    assert_eq!(condition(&obj, "Ready").unwrap().0, "True");
    let _ = c.stop.send(true);
}

/// ARM refuses a token that expired before the client thought (clock skew, revocation): one
/// fresh token, one retry, no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_token_arm_refuses_is_replaced_once_and_the_call_succeeds() {
    let em = emulator_with_entra(3600).await;
    let (_kubelet, api) = workload_client(&em, SUBJECT);
    api.inventory(&subs()).await.unwrap();
    assert_eq!(em.entra_stats().tokens_issued, 1);
    em.expire_access_tokens();
    api.inventory(&subs()).await.unwrap();
    let stats = em.entra_stats();
    assert_eq!(stats.tokens_issued, 2, "one fresh token: {stats:?}");
    assert_eq!(
        stats.arm_refused.get("ExpiredAuthenticationToken"),
        Some(&1),
        "{stats:?}"
    );
    // The fresh one is kept: the next call asks Entra ID nothing.
    api.inventory(&subs()).await.unwrap();
    assert_eq!(em.entra_stats().tokens_issued, 2);
}

/// Access tokens that live a second are refreshed ahead of their expiry, call after call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_access_tokens_are_refreshed_before_they_expire() {
    let em = emulator_with_entra(1).await;
    let (_kubelet, api) = workload_client(&em, SUBJECT);
    api.inventory(&subs()).await.unwrap();
    // The held token lives 1 s and is refreshed at 0.8 s; calls around its end meet ARM's 401.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(450)).await;
        api.inventory(&subs()).await.unwrap();
    }
    let stats = em.entra_stats();
    assert!(stats.tokens_issued >= 3, "{stats:?}");
    assert_eq!(stats.expired_assertions, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_refusals_are_named_with_what_to_do() {
    let em = emulator_with_entra(3600).await;
    let authority = em.url();
    // A ServiceAccount the federated credential does not name.
    let (_wrong, api) = workload_client(&em, "system:serviceaccount:default:default");
    let e = api.inventory(&subs()).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::NeedsUserAction, "{e}");
    assert_eq!(e.code.as_deref(), Some("AADSTS70021"));
    for part in [
        ISSUER,
        "system:serviceaccount:default:default",
        "system:serviceaccount:<namespace>:<serviceaccount>",
        "OIDC issuer",
    ] {
        assert!(e.message.contains(part), "{part:?} not in {e}");
    }
    let ready = api.check_credentials().await.unwrap_err().to_string();
    assert!(ready.contains("AADSTS70021"), "{ready}");

    // An app the tenant does not have.
    let good = Kubelet::start(
        SUBJECT,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    );
    let file = good.token_file();
    let wrong_client = "00000000-0000-0000-0000-00000000dead";
    let api = client(
        &em,
        AuthMode::WorkloadIdentity,
        &workload_env(&authority, &file, wrong_client),
    );
    let e = api.inventory(&subs()).await.unwrap_err();
    assert_eq!(e.code.as_deref(), Some("AADSTS700016"), "{e}");
    assert!(e.message.contains(wrong_client), "{e}");

    // A secret's ID where its value belongs.
    let secret_env = [
        ("AZURE_AUTHORITY_HOST", authority.as_str()),
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_CLIENT_ID", CLIENT),
        ("AZURE_CLIENT_SECRET", "8f5a1c9e-secret-id"),
        ("AZURE_FEDERATED_TOKEN_FILE", ""),
    ];
    let api = client(&em, AuthMode::ClientSecret, &secret_env);
    let e = api.inventory(&subs()).await.unwrap_err();
    assert_eq!(e.code.as_deref(), Some("AADSTS7000215"), "{e}");
    assert!(e.message.contains("not its secret ID"), "{e}");
    // The right secret works.
    let right = [
        ("AZURE_AUTHORITY_HOST", authority.as_str()),
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_CLIENT_ID", CLIENT),
        ("AZURE_CLIENT_SECRET", SECRET),
        ("AZURE_FEDERATED_TOKEN_FILE", ""),
    ];
    client(&em, AuthMode::ClientSecret, &right)
        .inventory(&subs())
        .await
        .unwrap();

    // A tenant that does not exist.
    let wrong_tenant = [
        ("AZURE_AUTHORITY_HOST", authority.as_str()),
        ("AZURE_TENANT_ID", "contoso-typo.onmicrosoft.com"),
        ("AZURE_CLIENT_ID", CLIENT),
        ("AZURE_CLIENT_SECRET", SECRET),
        ("AZURE_FEDERATED_TOKEN_FILE", ""),
    ];
    let e = client(&em, AuthMode::ClientSecret, &wrong_tenant)
        .inventory(&subs())
        .await
        .unwrap_err();
    assert_eq!(e.code.as_deref(), Some("AADSTS90002"), "{e}");
    // Nothing was written, nothing read past the front door.
    assert_eq!(em.stats().writes, 0);
}

/// Entra ID goes down: once the held token expires, passes fail as AzureUnavailable and the
/// pod turns unready while it keeps running; when Entra answers again it comes back by itself
/// and repairs what drifted meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entra_outage_leaves_the_controller_unready_and_it_recovers_by_itself() {
    let em = emulator_with_entra(2).await;
    let c = controller_with_workload_identity(
        &em,
        SUBJECT,
        Duration::from_secs(1),
        Duration::from_secs(3),
    )
    .await;
    let (kube, probes) = (&c.kube, &c.probes);
    wait_ready(kube, "spokes").await;
    em.set_entra_outage(Some(503));
    em.other_writer(OtherWrite::DeleteRoute {
        route_table: SHARED.into(),
        route: "kms-20-118-99-224".into(),
    })
    .unwrap();
    wait_for("unready during the outage", Duration::from_secs(20), || {
        (!probes.credentials_ok.load(Ordering::SeqCst)).then_some(())
    })
    .await;
    let obj = wait_for("AzureUnavailable", Duration::from_secs(20), || {
        kube.policy("spokes")
            .filter(|o| condition(o, "Ready").is_some_and(|c| c.1 == "AzureUnavailable"))
    })
    .await;
    let message = condition(&obj, "Ready").unwrap().2;
    assert!(
        message.contains("Entra ID") && message.contains("503"),
        "{message}"
    );
    em.set_entra_outage(None);
    wait_for(
        "the KMS route repaired after the outage",
        Duration::from_secs(30),
        || has_kms_route(&em).then_some(()),
    )
    .await;
    wait_for("ready again", Duration::from_secs(20), || {
        probes.credentials_ok.load(Ordering::SeqCst).then_some(())
    })
    .await;
    wait_for("Ready=True again", Duration::from_secs(20), || {
        kube.policy("spokes")
            .filter(|o| condition(o, "Ready").is_some_and(|c| c.0 == "True"))
    })
    .await;
    assert_eq!(em.entra_stats().expired_assertions, 0);
    let _ = c.stop.send(true);
}

/// A wrong subject reaches the policy's status and Events as AzureAuthFailed, naming the
/// subject presented and the federated credential to create.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federated_credential_mismatch_is_shown_on_the_policy() {
    let em = emulator_with_entra(3600).await;
    let c = controller_with_workload_identity(
        &em,
        "system:serviceaccount:kube-system:default",
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    )
    .await;
    let (kube, probes) = (&c.kube, &c.probes);
    let obj = wait_for("AzureAuthFailed", Duration::from_secs(20), || {
        kube.policy("spokes")
            .filter(|o| condition(o, "Ready").is_some_and(|c| c.1 == "AzureAuthFailed"))
    })
    .await;
    let message = condition(&obj, "Ready").unwrap().2;
    for part in [
        "AADSTS70021",
        "system:serviceaccount:kube-system:default",
        ISSUER,
    ] {
        assert!(message.contains(part), "{part:?} not in {message}");
    }
    let event = wait_for("the AzureAuthFailed event", Duration::from_secs(20), || {
        kube.events()
            .into_iter()
            .find(|e| e["reason"] == "AzureAuthFailed")
    })
    .await;
    assert!(
        event["note"]
            .as_str()
            .unwrap_or_default()
            .contains("AADSTS70021"),
        "{event}"
    );
    assert!(!probes.credentials_ok.load(Ordering::SeqCst));
    assert_eq!(em.stats().writes, 0);
    let _ = c.stop.send(true);
}

/// Why kmsroute reads the projected token itself: the GA library's own
/// `WorkloadIdentityCredential` keeps its copy of the file for 10 minutes, so once a short-lived
/// projected token has expired it keeps presenting it, and Entra ID refuses every refresh with
/// AADSTS700024 (with tokens of an hour, the same happens an hour in). If a later library
/// version re-reads the file in time, this test fails and the workaround can go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_librarys_own_workload_identity_credential_presents_an_expired_assertion() {
    use azure_core_ga::credentials::TokenCredential;
    use azure_identity::{
        ClientAssertionCredentialOptions, WorkloadIdentityCredential,
        WorkloadIdentityCredentialOptions,
    };
    let em = emulator_with_entra(1).await;
    let kubelet = Kubelet::start(SUBJECT, Duration::from_millis(500), Duration::from_secs(2));
    let authority =
        kmsroute::azure::identity::Authority::choose("https://x", Some(&em.url())).unwrap();
    let library = WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
        credential_options: ClientAssertionCredentialOptions {
            client_options: authority.client_options(&quick_entra()),
        },
        client_id: Some(CLIENT.into()),
        tenant_id: Some(TENANT.into()),
        token_file_path: Some(kubelet.token_file().into()),
    }))
    .unwrap();
    let scope = format!("{}/.default", em.url());
    library.get_token(&[&scope], None).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let e = library.get_token(&[&scope], None).await.unwrap_err();
    assert!(e.to_string().contains("AADSTS700024"), "{e}");
    assert_eq!(em.entra_stats().expired_assertions, 1);

    // kmsroute's credential on the same file at the same moment: a fresh assertion.
    let file = kubelet.token_file();
    let ours = client(
        &em,
        AuthMode::WorkloadIdentity,
        &workload_env(&em.url(), &file, CLIENT),
    );
    ours.inventory(&subs()).await.unwrap();
    assert_eq!(em.entra_stats().expired_assertions, 1);
}

const TENANT_B: &str = "c0ffee00-1111-4222-8333-444455556666";
const CLIENT_B: &str = "b0b0b0b0-2222-4333-8444-555566667777";
const S2: &str = "22222222-2222-2222-2222-222222222222";

/// Two tenants: the controller's home tenant owns S1, a partner tenant owns S2. A policy naming
/// the partner's app (`spec.azure.identity`) reaches S2 as that app, with the same projected
/// token federated to it; the home policy keeps the controller's identity; each identity keeps
/// its own token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_reaches_another_tenant_through_its_own_identity() {
    let mut config = entra(2);
    config.tenants.push(TENANT_B.into());
    config.apps.push(App {
        tenant: TENANT_B.into(),
        client_id: CLIENT_B.into(),
        secrets: vec![],
        federated: vec![Federated {
            issuer: ISSUER.into(),
            subject: SUBJECT.into(),
        }],
        name: None,
    });
    config.subscription_tenants = [
        (S1.to_string(), TENANT.to_string()),
        (S2.to_string(), TENANT_B.to_string()),
    ]
    .into();
    let em = support::arm::emulator(
        Config {
            entra: Some(config),
            ..Config::default()
        },
        support::arm::demo_estate(),
    )
    .await;
    let kubelet = Kubelet::start(SUBJECT, Duration::from_secs(1), Duration::from_secs(3));
    let authority = em.url();
    let file = kubelet.token_file();
    let env = workload_env(&authority, &file, CLIENT);
    let api = client(&em, AuthMode::WorkloadIdentity, &env);
    // Without the partner's identity, ARM refuses the home tenant's token on S2.
    let e = api
        .inventory(&BTreeSet::from([S2.to_string()]))
        .await
        .unwrap_err();
    assert_eq!(
        e.code.as_deref(),
        Some("InvalidAuthenticationTokenTenant"),
        "{e}"
    );
    let owned: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let url = url::Url::parse(&em.url()).unwrap();
    let default = credential_from(
        AuthMode::WorkloadIdentity,
        &url,
        Cloud::AzurePublic,
        &env,
        &quick_entra(),
    )
    .unwrap();
    api.set_identity_factory(kmsroute::azure::credential::identity_factory(
        AuthMode::WorkloadIdentity,
        &url,
        Cloud::AzurePublic,
        Arc::new(owned),
        quick_entra(),
        default,
    ));
    let api = Arc::new(api);
    let kube = FakeKube::start().await;
    // The installer allows the partner's app (`--allowed-identity`).
    let (stop, metrics, _probes) = start_controller(&kube, api, &[(TENANT_B, CLIENT_B)]);
    let mut partner = policy("partner");
    partner.spec.selector.as_mut().unwrap().subscriptions = vec![S2.into()];
    partner.spec.azure = Some(kmsroute::api::AzureSpec {
        identity: Some(kmsroute::api::IdentitySpec {
            tenant_id: TENANT_B.into(),
            client_id: CLIENT_B.into(),
        }),
    });
    for p in [policy("home"), partner] {
        Api::<KmsRoutePolicy>::all(kube.client())
            .create(&PostParams::default(), &p)
            .await
            .unwrap();
    }
    wait_for("home Ready=True", Duration::from_secs(30), || {
        kube.policy("home")
            .filter(|o| condition(o, "Ready").is_some_and(|c| c.0 == "True"))
    })
    .await;
    // The demo's spoke2 has a foreign route (a Conflict): the partner converges, not Ready.
    let partner = wait_for("partner converged", Duration::from_secs(30), || {
        kube.policy("partner").filter(|o| {
            o.pointer("/status/summary/subnetsMatched") == Some(&json!(2))
                && o.pointer("/status/summary/errors") == Some(&json!(0))
        })
    })
    .await;
    assert_eq!(condition(&partner, "Ready").unwrap().1, "Conflict");
    // Across a few token lifetimes (each identity refreshes its 2-s token at least twice),
    // nothing is refused and both tenants' tables hold the routes.
    let issued = em.entra_stats().tokens_issued;
    wait_for(
        "two more refreshes per identity",
        Duration::from_secs(20),
        || (em.entra_stats().tokens_issued >= issued + 4).then_some(()),
    )
    .await;
    let legacy = em
        .dump()
        .resources
        .iter()
        .find(|r| r["name"] == "rt-spoke2-legacy")
        .cloned()
        .unwrap();
    let routes: Vec<&str> = legacy["properties"]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert!(routes.contains(&"kms-20-118-99-224"), "{routes:?}");
    let stats = em.entra_stats();
    // Only the one refusal provoked above: every later request to S2 carried the partner's token.
    assert_eq!(
        stats.arm_refused.get("InvalidAuthenticationTokenTenant"),
        Some(&1),
        "{stats:?}"
    );
    assert_eq!(stats.expired_assertions, 0, "{stats:?}");
    assert!(stats.refused.is_empty(), "{stats:?}");
    assert_eq!(metrics.reconciles("error"), 0);
    let _ = stop.send(true);
}

/// `kmsroute plan` as a user runs it with workload identity: the emulator's Entra answers, and a
/// misconfiguration is an exit 4 naming the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_authenticates_with_workload_identity_and_names_a_wrong_subject() {
    let em = emulator_with_entra(3600).await;
    let run = |subject: &'static str, mode: &'static str, secret: &'static str| {
        let url = em.url();
        async move {
            let kubelet = Kubelet::start(
                subject,
                Duration::from_secs(3600),
                Duration::from_secs(3600),
            );
            let file = kubelet.token_file();
            tokio::task::spawn_blocking(move || {
                let out = std::process::Command::new(env!("CARGO_BIN_EXE_kmsroute"))
                    .args([
                        "plan",
                        "-f",
                        "examples/kmsroutepolicy.yaml",
                        "--arm-endpoint",
                        &url,
                        "--auth",
                        mode,
                    ])
                    .env_clear()
                    .env("PATH", std::env::var("PATH").unwrap_or_default())
                    .env("AZURE_AUTHORITY_HOST", &url)
                    .env("AZURE_TENANT_ID", TENANT)
                    .env("AZURE_CLIENT_ID", CLIENT)
                    .env("AZURE_FEDERATED_TOKEN_FILE", &file)
                    .env("AZURE_CLIENT_SECRET", secret)
                    .output()
                    .unwrap();
                drop(kubelet);
                out
            })
            .await
            .unwrap()
        }
    };
    let ok = run(SUBJECT, "workload-identity", "").await;
    let text =
        String::from_utf8_lossy(&ok.stdout).to_string() + &String::from_utf8_lossy(&ok.stderr);
    // Changes pending (1) or problems found (3: the demo estate's conflict); not 4.
    assert!(
        matches!(ok.status.code(), Some(1 | 3)),
        "{:?}: {text}",
        ok.status
    );
    assert!(text.contains("vnet-spoke1-app-kms"), "{text}");

    let wrong = run(
        "system:serviceaccount:default:builder",
        "workload-identity",
        "",
    )
    .await;
    let err = String::from_utf8_lossy(&wrong.stderr).to_string();
    assert_eq!(wrong.status.code(), Some(4), "{err}");
    for part in [
        "AADSTS70021",
        "system:serviceaccount:default:builder",
        ISSUER,
        "system:serviceaccount:<namespace>:<serviceaccount>",
    ] {
        assert!(err.contains(part), "{part:?} not in {err}");
    }

    let secret = run(SUBJECT, "client-secret", "the-secret-id").await;
    let err = String::from_utf8_lossy(&secret.stderr).to_string();
    assert_eq!(secret.status.code(), Some(4), "{err}");
    assert!(
        err.contains("AADSTS7000215") && err.contains("not its secret ID"),
        "{err}"
    );
    assert_eq!(em.stats().writes, 0);
}

/// A short Entra hiccup (503s for a moment) is retried with backoff inside one token request:
/// the ARM call succeeds and nothing is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brief_entra_outage_is_retried_within_the_token_request() {
    let em = emulator_with_entra(3600).await;
    let kubelet = Kubelet::start(
        SUBJECT,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    );
    let authority = em.url();
    let file = kubelet.token_file();
    let url = url::Url::parse(&em.url()).unwrap();
    let retry = EntraRetry {
        initial_delay: Duration::from_millis(200),
        max_retries: 5,
        max_elapsed: Duration::from_secs(10),
        max_delay: Duration::from_secs(2),
    };
    let env = workload_env(&authority, &file, CLIENT);
    let cred = credential_from(
        AuthMode::WorkloadIdentity,
        &url,
        Cloud::AzurePublic,
        &env,
        &retry,
    )
    .unwrap();
    let api = AzureNetworkApi::new(url, cred, client_settings()).unwrap();
    em.set_entra_outage(Some(503));
    let wanted = subs();
    let (result, ()) = tokio::join!(api.inventory(&wanted), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        em.set_entra_outage(None);
    });
    result.unwrap();
    let stats = em.entra_stats();
    assert!(stats.token_requests >= 2, "retried: {stats:?}");
    assert_eq!(stats.tokens_issued, 1, "{stats:?}");
}
