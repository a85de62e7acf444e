//! The `KmsRoutePolicy` custom resource (`kmsroute.io/v1alpha1`) that users write, its status,
//! and `validate()`, which turns a spec into a checked [`DesiredState`] or every error at once.
//!
//! The OpenAPI schema (with CEL rules) catches what types and patterns can express so
//! `kubectl apply` rejects it early; `validate()` re-checks everything, because `kmsroute
//! validate/plan/apply` read files that never met an API server. No I/O here.

mod file;
pub mod rules;
mod schema;
mod selector;
mod validate;

pub use file::{Document, NotYaml, parse_policies};
pub use schema::{check as check_schema, spec_schema};
pub use selector::Selector;
pub use validate::{
    DesiredState, Destination, Validated, check_host_address, parse_duration, route_name_for,
    validate, validate_policy,
};

use crate::catalog::Cloud;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One problem in a policy, with the path of the field at fault (`spec.kms.additionalAddresses[1]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Finalizer that carries out `deletionPolicy` before a policy goes away.
pub const FINALIZER: &str = "kmsroute.io/cleanup";
/// Tag on route tables kmsroute created, naming the owning policy.
pub const TAG_POLICY: &str = "kmsroute.io-policy";
/// Tag on route tables kmsroute created.
pub const TAG_MANAGED_BY: &str = "managed-by";
pub const MANAGED_BY_VALUE: &str = "kmsroute";
/// Most problems kept in status, so the object stays small at 10,000 subnets.
pub const MAX_PROBLEMS: usize = 50;

pub const DEFAULT_ROUTE_NAME_PREFIX: &str = "kms-";
pub const DEFAULT_NAME_TEMPLATE: &str = "{vnet}-{subnet}-kms";
pub const DEFAULT_RESYNC: &str = "10m";

/// Which subnets must carry `/32` routes to the KMS addresses with next hop `Internet`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kmsroute.io",
    version = "v1alpha1",
    kind = "KmsRoutePolicy",
    plural = "kmsroutepolicies",
    singular = "kmsroutepolicy",
    shortname = "krp",
    category = "kmsroute",
    category = "azure",
    status = "KmsRoutePolicyStatus",
    doc = "KmsRoutePolicy declares which Azure subnets must route Windows KMS activation (TCP 1688) to the Internet with /32 user-defined routes.",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Subnets","type":"integer","jsonPath":".status.summary.subnetsMatched"}"#,
    printcolumn = r#"{"name":"InSync","type":"integer","jsonPath":".status.summary.inSync"}"#,
    printcolumn = r#"{"name":"Conflicts","type":"integer","jsonPath":".status.summary.conflicts"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"description":"Why the policy is or is not Ready","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"description":"The Ready condition's message","jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(has(self.subnets) && size(self.subnets) > 0) || has(self.selector)",
     "message": "at least one of spec.subnets or spec.selector is required"}
]), transform = rules::spec)]
pub struct KmsRoutePolicySpec {
    /// Which KMS endpoints to route.
    #[serde(default)]
    pub kms: KmsSpec,
    /// Explicit ARM subnet IDs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5000), inner(regex(pattern = rules::SUBNET_ID_PATTERN)))]
    pub subnets: Vec<String>,
    /// Discovery of subnets by subscription, resource group, VNet tags and subnet name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<SubnetSelector>,
    /// Route tables created for subnets that have none.
    #[serde(default)]
    pub route_table: RouteTableSpec,
    /// Name prefix of the routes this policy owns (e.g. `kms-20-118-99-224`).
    #[serde(default = "default_route_name_prefix")]
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    )]
    pub route_name_prefix: String,
    /// What to do when a foreign route sends a KMS address elsewhere.
    #[serde(default)]
    pub conflict_policy: ConflictPolicy,
    /// `Enforce` writes; `Audit` only observes and reports.
    #[serde(default)]
    pub mode: Mode,
    /// What deleting the policy does in Azure.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// How often Azure is re-read to repair drift (Go duration: `30s`, `10m`, `1h`).
    #[serde(default = "default_resync")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(s|m|h))+$"))]
    pub resync_interval: String,
    /// Effective-route verification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<VerificationSpec>,
    /// How this policy reaches Azure (another tenant's subscriptions through an identity of
    /// their own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureSpec>,
}

/// How a policy reaches Azure.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureSpec {
    /// The app registration (or user-assigned managed identity) that reads and writes this
    /// policy's subscriptions, through workload identity with the controller's own
    /// service-account token (federated to that app too); the controller's identity when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentitySpec>,
}

/// A tenant and a client ID.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.tenantID.lowerAscii() != self.clientID.lowerAscii()",
     "message": "tenantID and clientID are the same GUID: the client ID is the app registration's (Application (client) ID), not the directory's"}
]))]
pub struct IdentitySpec {
    /// The tenant (directory) ID the app is registered in.
    #[serde(rename = "tenantID")]
    #[schemars(length(max = 36), regex(pattern = rules::GUID_PATTERN))]
    pub tenant_id: String,
    /// The app registration's Application (client) ID.
    #[serde(rename = "clientID")]
    #[schemars(length(max = 36), regex(pattern = rules::GUID_PATTERN))]
    pub client_id: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = rules::kms)]
pub struct KmsSpec {
    /// The cloud whose KMS addresses are routed; when absent, the controller's `--cloud` (the
    /// schema's description is `Cloud`'s, which says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<Cloud>,
    /// Extra IPv4 host addresses to route (`a.b.c.d` or `a.b.c.d/32`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(
            length(max = 18),
            regex(pattern = r"^[0-9]{1,3}(\.[0-9]{1,3}){3}(/32)?$")
        )
    )]
    pub additional_addresses: Vec<String>,
    /// Resolve the cloud's KMS host names each pass and report addresses they resolve to that
    /// are not routed (`KmsAddressDrift`). DNS failures are reported, never fatal.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resolve_dns: bool,
    /// With `resolveDns`, also route the public IPv4 addresses the names resolve to.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub route_resolved_addresses: bool,
}

/// Checking that traffic really leaves through the routes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerificationSpec {
    /// Read one running NIC's effective routes per managed route table each pass (a
    /// long-running ARM POST per table; off by default because it costs ARM calls).
    #[serde(default)]
    pub effective_routes: bool,
    /// Most effective-route reads per pass for this policy; tables beyond it are checked in
    /// later passes (the sample rotates).
    #[serde(default = "default_max_nics_per_pass")]
    #[schemars(range(min = 1, max = 100), extend("format" = "int32"))]
    pub max_nics_per_pass: u32,
}

fn default_max_nics_per_pass() -> u32 {
    10
}

impl Default for VerificationSpec {
    fn default() -> Self {
        VerificationSpec {
            effective_routes: false,
            max_nics_per_pass: default_max_nics_per_pass(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(has(self.subscriptions) && size(self.subscriptions) > 0) || (has(self.managementGroups) && size(self.managementGroups) > 0)",
     "message": "the selector needs subscriptions, managementGroups, or both"}
]), transform = rules::selector)]
pub struct SubnetSelector {
    /// Subscription IDs to search. With `managementGroups`, these are added to theirs; at
    /// least one of the two is required.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 100),
        inner(
            length(max = 36),
            regex(
                pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
            )
        )
    )]
    pub subscriptions: Vec<String>,
    /// Management group names (IDs): every subscription under them, at all levels, read with
    /// ARM's management-group descendants API at every pass (a new landing-zone subscription
    /// is covered without editing the policy).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 20),
        inner(length(min = 1, max = 90), regex(pattern = r"^[A-Za-z0-9_().-]+$"))
    )]
    pub management_groups: Vec<String>,
    /// Only these resource groups (any, when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 100),
        inner(length(min = 1, max = 90), regex(pattern = rules::RESOURCE_GROUP_PATTERN))
    )]
    pub resource_groups: Vec<String>,
    /// VNet tags that must all match (names case-insensitive, values exact; Azure allows 50
    /// tags of 256-character values).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub virtual_network_tags: BTreeMap<String, String>,
    /// Only subnets with these names (any, when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 100),
        inner(length(min = 1, max = 80), regex(pattern = rules::SUBNET_NAME_PATTERN))
    )]
    pub subnet_names: Vec<String>,
    /// Never subnets with these names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 100),
        inner(length(min = 1, max = 80), regex(pattern = rules::SUBNET_NAME_PATTERN))
    )]
    pub exclude_subnet_names: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = rules::route_table)]
pub struct RouteTableSpec {
    /// Create and associate a route table for selected subnets that have none.
    #[serde(default = "default_true")]
    pub create_if_missing: bool,
    /// Name of created tables; placeholders `{vnet}`, `{subnet}`, `{location}`, `{policy}`.
    #[serde(default = "default_name_template")]
    #[schemars(length(min = 1, max = 80), regex(pattern = r"^[A-Za-z0-9_.{}-]+$"))]
    pub name_template: String,
    /// `disableBgpRoutePropagation` on tables kmsroute creates.
    #[serde(default)]
    pub disable_bgp_route_propagation: bool,
}

impl Default for RouteTableSpec {
    fn default() -> Self {
        Self {
            create_if_missing: true,
            name_template: default_name_template(),
            disable_bgp_route_propagation: false,
        }
    }
}

/// What to do with a foreign route that sends a KMS address elsewhere.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ConflictPolicy {
    /// Report a foreign route to a KMS address with another next hop; never touch it.
    #[default]
    Report,
    /// Overwrite such a route's next hop with `Internet`.
    Replace,
}

/// Whether the policy writes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Mode {
    /// Write what is missing and repair drift.
    #[default]
    Enforce,
    /// Only observe and report what Enforce would write (Ready=False reason Drift when
    /// something would be written).
    Audit,
}

/// What deleting the policy does in Azure.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Remove owned routes, and tables the policy created once nothing else uses them.
    #[default]
    Delete,
    /// Leave everything in Azure as it is.
    Orphan,
}

/// What the controller last observed and did.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KmsRoutePolicyStatus {
    /// The `metadata.generation` (spec version) the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (every selected subnet in sync, or why not: its reason and message are the
    /// `-o wide` columns), `Progressing` (the last pass wrote), `Degraded` (conflicts, errors,
    /// Azure unreachable or refusing), `EgressReady` (the subnets have a way out for next hop
    /// Internet), `Verified` (with `spec.verification.effectiveRoutes`: sampled NICs' effective
    /// routes send the KMS addresses to Internet), `KmsAddressesRouted` (with
    /// `spec.kms.resolveDns`: the KMS names resolve only to routed addresses).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Counts over every subnet the policy selects, from the last pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
    /// The `/32` destinations the policy routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub destinations: Vec<String>,
    /// RFC 3339 time of the last completed pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub last_sync_time: Option<String>,
    /// At most 50 subnets that need attention.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub problems: Vec<Problem>,
}

/// Counts over every subnet the policy selects.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Subnets the policy selects (by ID and by its selector).
    pub subnets_matched: i64,
    /// Subnets whose route table carries every KMS route to Internet.
    pub in_sync: i64,
    /// Subnets the last pass repaired (routes written, a table created or associated).
    pub repaired: i64,
    /// Subnets where a foreign route sends a KMS address elsewhere (`conflictPolicy: Report`).
    pub conflicts: i64,
    /// Subnets left alone on purpose: platform subnets (GatewaySubnet, AzureFirewallSubnet,
    /// ...), another policy's (the older one wins), no table and `createIfMissing: false`.
    pub skipped: i64,
    /// Subnets where a write failed or the planner could not act (see `problems`).
    pub errors: i64,
    /// Subnets whose sampled NIC's effective routes send every KMS address to `Internet`
    /// through a user route (with `spec.verification.effectiveRoutes`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub verified: i64,
    /// Sampled subnets where some KMS address takes another route (see `problems`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub not_verified: i64,
    /// Subnets that left the selection and whose tables this pass released (owned routes
    /// removed, or the table the policy created dissociated and deleted); under `mode: Audit`,
    /// those it would release.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub released: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
/// One subnet (or scope) that needs attention.
pub struct Problem {
    /// The subnet's ARM ID, or the scope at fault (a subscription, a management group, a route
    /// table, `spec.azure.identity`).
    pub subnet_id: String,
    /// Machine-readable reason, e.g. `Conflict`, `NoInternetEgress`, `RouteLimitExceeded`.
    pub reason: String,
    /// What is wrong and what to do about it.
    pub message: String,
}

fn default_route_name_prefix() -> String {
    DEFAULT_ROUTE_NAME_PREFIX.into()
}
fn default_resync() -> String {
    DEFAULT_RESYNC.into()
}
fn default_name_template() -> String {
    DEFAULT_NAME_TEMPLATE.into()
}
fn default_true() -> bool {
    true
}

/// The CRD as YAML, exactly what `kmsroute crd` prints and `crds/` holds.
pub fn crd_yaml() -> Result<String, serde_saphyr::ser::Error> {
    use kube::CustomResourceExt;
    serde_saphyr::to_string(&KmsRoutePolicy::crd())
}
