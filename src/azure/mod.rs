//! The ARM port: the few Microsoft.Network operations the planner and executor need, behind one
//! trait ([`NetworkApi`]) with one real implementation ([`client::AzureNetworkApi`]) on
//! `azure_mgmt_network` 0.21, with credentials from the GA `azure_identity` 1.x ([`identity`],
//! [`credential`]). Errors are classified so callers know whether
//! to retry, back off, or tell the user; every error names the resource and the ARM code.

pub mod client;
pub mod credential;
pub mod identity;
pub mod metrics;
pub mod policy;

use crate::ids::{RouteTableId, SubnetId};
use crate::model::{Inventory, Route};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Why the port cannot be set up: what the user gave is refused (an endpoint's scheme, a
/// static token for a real endpoint), or a credential cannot be built or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Credential(String),
}

impl SetupError {
    /// The user's input is wrong (not Azure or the identity).
    pub fn is_input(&self) -> bool {
        matches!(self, SetupError::Refused(_))
    }
}

/// Which identity reads and writes which scope: the subscriptions and management groups of a
/// pass's policies, each with its policy's `spec.azure.identity` (`None`: the controller's
/// own). Scopes not listed keep the identity routed to them before.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityRoutes {
    pub subscriptions: BTreeMap<String, Option<crate::ids::Identity>>,
    pub management_groups: BTreeMap<String, Option<crate::ids::Identity>>,
}

/// A write someone else made, as the Activity Log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityEvent {
    /// Who: a UPN, an application ID or a service principal.
    pub caller: String,
    /// What: `Microsoft.Network/routeTables/write`, `.../routes/delete`, ...
    pub operation: String,
    pub resource_id: String,
    pub succeeded: bool,
    /// When it happened (`eventTimestamp`), Unix seconds.
    pub at: i64,
    /// Shared by the writes of one operation or template deployment.
    pub correlation_id: String,
}

/// The Activity Log's api-version (`ActivityLogs_List`).
pub const ACTIVITY_LOG_API_VERSION: &str = "2015-04-01";

/// The error code the port gives when its effective-route read budget is spent (the verifier
/// tells that apart from a failed read).
pub const BUDGET_EXHAUSTED: &str = "VerificationBudgetExhausted";

/// What a caller should do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Transient (5xx, timeouts, another operation in progress): retry later.
    Retryable,
    /// ARM throttled the subscription: slow down.
    Throttled,
    /// Authentication, permissions or a request ARM refuses: a human must act.
    NeedsUserAction,
    /// The resource is gone.
    NotFound,
    /// Someone else changed it first (412, or state not what the plan assumed): re-plan.
    Conflict,
}

impl ErrorClass {
    pub fn label(self) -> &'static str {
        match self {
            ErrorClass::Retryable => "retryable",
            ErrorClass::Throttled => "throttled",
            ErrorClass::NeedsUserAction => "needs_user_action",
            ErrorClass::NotFound => "not_found",
            ErrorClass::Conflict => "conflict",
        }
    }
}

/// An ARM call that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ArmError {
    pub class: ErrorClass,
    pub operation: &'static str,
    pub resource: String,
    pub status: Option<u16>,
    pub code: Option<String>,
    pub message: String,
}

impl fmt::Display for ArmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} failed", self.operation, self.resource)?;
        if let Some(s) = self.status {
            write!(f, " with HTTP {s}")?;
        }
        if let Some(c) = &self.code {
            write!(f, " {c}")?;
        }
        write!(f, ": {} [{}]", self.message, self.class.label())
    }
}

impl ArmError {
    /// An error kmsroute decides itself, without an HTTP answer behind it (a bad URL, a spent
    /// budget, a precondition seen before writing): its class and, where it has one, an
    /// ARM-style code.
    pub fn local(
        class: ErrorClass,
        operation: &'static str,
        resource: impl Into<String>,
        code: Option<&str>,
        message: impl Into<String>,
    ) -> ArmError {
        ArmError {
            class,
            operation,
            resource: resource.into(),
            status: None,
            code: code.map(str::to_string),
            message: message.into(),
        }
    }

    /// ARM's answer: the class follows the status and the code.
    pub fn http(
        operation: &'static str,
        resource: impl Into<String>,
        status: u16,
        code: Option<String>,
        message: impl Into<String>,
    ) -> ArmError {
        ArmError {
            class: ArmError::classify(Some(status), code.as_deref()),
            operation,
            resource: resource.into(),
            status: Some(status),
            code,
            message: message.into(),
        }
    }

    /// ARM refused the scope itself (403, 404): it does not exist or the identity has no role
    /// there. That is the policy's problem to report while the rest converges; any other
    /// failure (401, throttling, 5xx, no connection) fails the observation as a whole.
    pub fn refuses_scope(&self) -> bool {
        matches!(self.status, Some(403 | 404))
    }

    /// Classifies an HTTP status and ARM error code.
    pub fn classify(status: Option<u16>, code: Option<&str>) -> ErrorClass {
        match (status, code) {
            (
                _,
                Some(
                    "AnotherOperationInProgress"
                    | "RetryableError"
                    | "RetryableErrorDueToAnotherOperation"
                    | "ReferencedResourceNotProvisioned",
                ),
            ) => ErrorClass::Retryable,
            (Some(429), _) => ErrorClass::Throttled,
            (Some(401 | 403), _) => ErrorClass::NeedsUserAction,
            (Some(404), _) => ErrorClass::NotFound,
            (Some(409 | 412), _) => ErrorClass::Conflict,
            (Some(400..=499), _) => ErrorClass::NeedsUserAction,
            _ => ErrorClass::Retryable,
        }
    }
}

/// How much of a subscription's ARM read budget there is, as far as the client knows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReadBudget {
    /// Reads a subscription may burst (ARM: 250).
    pub capacity: f64,
    /// Reads the budget regains per second (ARM: 25).
    pub refill_per_sec: f64,
    /// What ARM last reported as left (`x-ms-ratelimit-remaining-subscription-reads`), if known.
    pub remaining: Option<f64>,
}

/// What a subscription's last listing looked like, page by page: enough to recognize an
/// identical listing from its bytes, without parsing it again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fingerprint {
    pub pages: Vec<PageMark>,
}

/// One list page as it was received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageMark {
    /// Which listing (VNets, route tables) the page belongs to.
    pub kind: u8,
    pub hash: u64,
    pub len: usize,
    /// The page's `nextLink`: the same bytes carry the same one.
    pub next: Option<String>,
}

/// A subscription listed again.
#[derive(Debug, Clone)]
pub enum Relisted {
    /// Every page was byte for byte the one fingerprinted: nothing was parsed.
    Unchanged { pages: u64 },
    /// The listing as it is now, and its fingerprint.
    Changed {
        inventory: Inventory,
        fingerprint: Fingerprint,
    },
}

/// The port: everything kmsroute asks of ARM. No method has a default: a wrapper or a test
/// double that forgets one does not compile (a default once hid that the fault campaign's
/// wrapper skipped verification).
#[async_trait::async_trait]
pub trait NetworkApi: Send + Sync {
    /// VNets (subnets inline) and route tables (routes inline) of each subscription, by listing.
    async fn inventory(&self, subscriptions: &BTreeSet<String>) -> Result<Inventory, ArmError>;
    /// One subscription listed again: `Unchanged` when every page is the one `previous`
    /// fingerprinted (then nothing is parsed), else its inventory and fingerprint. A
    /// subscription ARM refuses (403, 404) is an error here (`refuses_scope`).
    async fn relist(
        &self,
        subscription: &str,
        previous: Option<&Fingerprint>,
    ) -> Result<Relisted, ArmError>;
    /// Creates a route table with its routes; refuses to overwrite one that exists.
    async fn create_route_table(
        &self,
        table: &RouteTableId,
        location: &str,
        tags: &BTreeMap<String, String>,
        disable_bgp_route_propagation: bool,
        routes: &[Route],
    ) -> Result<(), ArmError>;
    /// PUTs one route through the `routes/{name}` child.
    async fn put_route(&self, table: &RouteTableId, route: &Route) -> Result<(), ArmError>;
    async fn delete_route(&self, table: &RouteTableId, name: &str) -> Result<(), ArmError>;
    /// Sets a subnet's `routeTable` only if it is still `expected`, keeping every other
    /// property of the subnet exactly as ARM returned it.
    async fn set_subnet_route_table(
        &self,
        subnet: &SubnetId,
        expected: Option<&RouteTableId>,
        new: Option<&RouteTableId>,
    ) -> Result<(), ArmError>;
    async fn delete_route_table(&self, table: &RouteTableId) -> Result<(), ArmError>;
    /// The subscription's read budget: the shared inventory paces its refreshes by it.
    fn read_budget(&self, subscription: &str) -> ReadBudget;
    /// The network interfaces of these subscriptions (only for effective-route verification).
    async fn network_interfaces(
        &self,
        subscriptions: &BTreeSet<String>,
    ) -> Result<Vec<crate::model::NetworkInterface>, ArmError>;
    /// Public IP addresses and load balancers of these subscriptions, as far as a NIC's egress
    /// is concerned (the private-subnet check: is there another way out than the subnet's).
    async fn egress_facts(
        &self,
        subscriptions: &BTreeSet<String>,
    ) -> Result<crate::model::EgressFacts, ArmError>;
    /// Every subscription under a management group, at all levels (ARM's management-group
    /// descendants API), as lower-cased IDs.
    async fn management_group_subscriptions(
        &self,
        group: &str,
    ) -> Result<BTreeSet<String>, ArmError>;
    /// Writes to `resource_uri` since `since` (Unix seconds) that the Activity Log has made
    /// visible so far, oldest first, without kmsroute's own (its principals' writes).
    async fn activity_log(
        &self,
        resource_uri: &str,
        since: i64,
    ) -> Result<Vec<ActivityEvent>, ArmError>;
    /// From now on, requests to these scopes authenticate as these identities (other scopes
    /// keep theirs). Fails when an identity's credential cannot be built.
    fn route_identities(&self, routes: &IdentityRoutes) -> Result<(), ArmError>;
    /// `POST {nic}/effectiveRouteTable`, waited for: the routes the NIC's packets follow.
    async fn effective_routes(
        &self,
        nic: &str,
    ) -> Result<Vec<crate::effective::EffectiveRoute>, ArmError>;
}
