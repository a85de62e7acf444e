//! The controller's settings in tests: quick backoffs, a 1 s resync cap, a 300 ms inventory
//! refresh with the whole read budget, and a 2 s lease in the `kmsroute` namespace.

use kmsroute::catalog::Cloud;
use kmsroute::controller::Settings;
use kmsroute::controller::inventory::InventorySettings;
use kmsroute::controller::leader::LeaseSettings;
use std::time::Duration;

/// Test settings for the replica `identity`.
pub fn controller(identity: &str) -> Settings {
    Settings {
        cloud: Cloud::AzurePublic,
        concurrency: 4,
        slow_retry: Duration::from_secs(2),
        base_backoff: Duration::from_millis(200),
        resync_cap: Some(Duration::from_secs(1)),
        resolver: None,
        inventory: InventorySettings {
            refresh_every: Duration::from_millis(300),
            read_share: 1.0,
        },
        contest: Default::default(),
        allowed_identities: Default::default(),
        lease: LeaseSettings {
            namespace: "kmsroute".into(),
            name: "kmsroute-leader".into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(2),
            renew_every: Duration::from_millis(300),
        },
    }
}
