//! `validate()`: a `KmsRoutePolicySpec` in, a checked [`DesiredState`] out, or every problem at
//! once, each with its field path. Everything the CRD schema cannot say is checked here, and so
//! is everything it can, since files given to `kmsroute validate/plan/apply` never met a schema.

use super::selector::{Selector, check_selector};
use super::{ConflictPolicy, DeletionPolicy, FieldError, KmsRoutePolicy, KmsRoutePolicySpec, Mode};
use crate::catalog::Cloud;
use crate::ids::{Invalid, SubnetId, check_route_name, is_guid};
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

/// A spec that passed validation, plus warnings that do not stop it (a retired cloud, say).
#[derive(Debug, Clone)]
pub struct Validated {
    pub desired: DesiredState,
    pub warnings: Vec<String>,
}

/// A KMS destination: the host address and the name of the route this policy owns for it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Destination {
    pub address: Ipv4Addr,
    pub route_name: String,
}

impl Destination {
    /// The ARM `addressPrefix` of the route: always a `/32`.
    pub fn prefix(&self) -> String {
        format!("{}/32", self.address)
    }
}

/// What one policy wants, checked and normalised. The planner's input.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredState {
    pub name: crate::model::Text,
    /// Creation time; with the name, it decides which of two overlapping policies owns a subnet.
    pub created: Option<Timestamp>,
    pub cloud: Cloud,
    /// Sorted by address, no duplicates.
    pub destinations: Vec<Destination>,
    pub subnets: BTreeSet<SubnetId>,
    pub selector: Option<Selector>,
    pub create_if_missing: bool,
    pub name_template: String,
    pub disable_bgp_route_propagation: bool,
    pub route_name_prefix: String,
    pub conflict_policy: ConflictPolicy,
    pub mode: Mode,
    pub deletion_policy: DeletionPolicy,
    pub resync: Duration,
    /// `spec.verification.effectiveRoutes`, and its per-pass cap.
    pub verify_effective_routes: bool,
    pub verify_max_per_pass: usize,
    /// `spec.kms.resolveDns` / `routeResolvedAddresses`.
    pub resolve_dns: bool,
    pub route_resolved_addresses: bool,
    /// `spec.azure.identity`: the identity that reads and writes this policy's subscriptions
    /// (the controller's when `None`).
    pub identity: Option<crate::ids::Identity>,
}

impl DesiredState {
    /// The subscriptions whose inventory the planner needs for this policy.
    pub fn subscriptions(&self) -> BTreeSet<String> {
        let mut subs: BTreeSet<String> = self
            .subnets
            .iter()
            .map(|s| s.subscription().to_ascii_lowercase())
            .collect();
        if let Some(sel) = &self.selector {
            subs.extend(sel.subscriptions.iter().cloned());
        }
        subs
    }

    /// True when the policy selects this subnet (by ID, or by its selector with the VNet's tags).
    pub fn selects(&self, subnet: &SubnetId, vnet_tags: &crate::model::Tags) -> bool {
        self.subnets.contains(subnet)
            || self
                .selector
                .as_ref()
                .is_some_and(|s| s.matches(subnet, vnet_tags))
    }

    /// True when `route_name` is in this policy's ownership namespace.
    pub fn owns_route_name(&self, route_name: &str) -> bool {
        route_name.len() > self.route_name_prefix.len()
            && route_name.as_bytes()[..self.route_name_prefix.len()]
                .eq_ignore_ascii_case(self.route_name_prefix.as_bytes())
    }

    /// The name of a table created for a subnet, or why the template cannot make one.
    pub fn render_table_name(
        &self,
        vnet: &str,
        subnet: &str,
        location: &str,
    ) -> Result<String, Invalid> {
        let name = render_template(&self.name_template, vnet, subnet, location, &self.name);
        check_route_name(&name).map(|()| name)
    }

    /// Order in which overlapping policies claim subnets: oldest first, then by name.
    pub fn seniority(&self) -> (bool, Option<Timestamp>, &str) {
        (self.created.is_none(), self.created, &self.name)
    }
}

/// The route name a policy uses for an address: `kms-20-118-99-224`.
pub fn route_name_for(prefix: &str, address: Ipv4Addr) -> String {
    format!("{prefix}{}", address.to_string().replace('.', "-"))
}

const PLACEHOLDERS: [&str; 4] = ["vnet", "subnet", "location", "policy"];

fn render_template(
    template: &str,
    vnet: &str,
    subnet: &str,
    location: &str,
    policy: &str,
) -> String {
    template
        .replace("{vnet}", vnet)
        .replace("{subnet}", subnet)
        .replace("{location}", location)
        .replace("{policy}", policy)
}

fn check_template(template: &str) -> Result<(), Invalid> {
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        if rest.as_bytes()[open] == b'}' {
            return Err(Invalid(format!(
                "{template:?} has a '}}' without a matching '{{'"
            )));
        }
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("{template:?} has an unclosed '{{'"))?;
        let key = &after[..close];
        if !PLACEHOLDERS.contains(&key) {
            return Err(Invalid(format!(
                "unknown placeholder {{{key}}} in {template:?}; allowed: {{vnet}}, {{subnet}}, {{location}}, {{policy}}"
            )));
        }
        rest = &after[close + 1..];
    }
    // Shortest rendering: if that breaks ARM's rules (leading '-', trailing '.', bad characters),
    // every rendering does.
    let sample = render_template(template, "a", "a", "a", "a");
    check_route_name(&sample).map_err(|e| format!("{template:?} renders invalid names: {e}"))?;
    Ok(())
}

/// Parses a Go-style duration made of `h`, `m`, `s` parts: `30s`, `10m`, `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, Invalid> {
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => {
                return Err(Invalid(format!(
                    "{s:?}: unknown unit {c:?}; use h, m or s (e.g. 10m)"
                )));
            }
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{s:?}: a number must come before {c:?}"))?;
        total = total.saturating_add(n.saturating_mul(unit));
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(Invalid(format!(
            "{s:?}: {digits:?} has no unit (h, m or s)"
        )));
    }
    Ok(Duration::from_secs(total))
}

/// Why an address may not be routed to the Internet, if it may not.
pub fn check_host_address(input: &str) -> Result<Ipv4Addr, Invalid> {
    let s = input.trim();
    if s.contains(':') {
        return Err(Invalid(format!(
            "{input:?} is IPv6; Azure KMS endpoints are IPv4 and only IPv4 /32 routes are written"
        )));
    }
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    if let Some(l) = len {
        match l.parse::<u8>() {
            Ok(32) => {}
            Ok(n) if n < 32 => {
                let count = 1u64 << (32 - u32::from(n));
                return Err(Invalid(format!(
                    "{input:?} is a /{n} ({count} addresses); only /32 host routes are allowed: a broad prefix with next hop Internet would bypass the forced tunnel"
                )));
            }
            _ => {
                return Err(Invalid(format!(
                    "{input:?} has an invalid prefix length {l:?}"
                )));
            }
        }
    }
    let ip: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("{input:?} is not an IPv4 address"))?;
    let not_public = super::rules::NON_PUBLIC
        .iter()
        .any(|cidr| in_cidr(ip, cidr));
    if not_public {
        return Err(Invalid(format!(
            "{ip} is not a public address; KMS servers have public Azure addresses and a route with next hop Internet to {ip} would misroute it"
        )));
    }
    Ok(ip)
}

/// True when `ip` is inside `cidr` (`a.b.c.d/n`, from [`super::rules::NON_PUBLIC`]).
fn in_cidr(ip: Ipv4Addr, cidr: &str) -> bool {
    let Some((net, len)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(net), Ok(len)) = (net.parse::<Ipv4Addr>(), len.parse::<u32>()) else {
        return false;
    };
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

/// Checks a whole object: its name and its spec.
pub fn validate_policy(
    policy: &KmsRoutePolicy,
    default_cloud: Cloud,
) -> Result<Validated, Vec<FieldError>> {
    let name = policy.metadata.name.clone().unwrap_or_default();
    let created = policy.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let mut errors = Vec::new();
    let valid_name = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !valid_name {
        errors.push(FieldError {
            path: "metadata.name".into(),
            message: format!(
                "{name:?} is not a valid Kubernetes name (lowercase letters, digits, '-', '.')"
            ),
        });
    }
    let semantic = validate(&name, created, &policy.spec, default_cloud);
    // The CRD's own bounds (maxItems, patterns, lengths), as the API server applies them; a
    // field `validate` already faulted keeps its more specific message.
    let mut bounds = Vec::new();
    if let (Ok(spec), Some(schema)) = (serde_json::to_value(&policy.spec), super::spec_schema()) {
        super::schema::check(&spec, schema, "spec", &mut bounds);
    }
    let known = |e: &FieldError| match &semantic {
        Err(s) => s.iter().any(|x| x.path == e.path),
        Ok(_) => false,
    };
    bounds.retain(|e| !known(e));
    errors.append(&mut bounds);
    match semantic {
        Ok(v) if errors.is_empty() => Ok(v),
        Ok(_) => Err(errors),
        Err(mut e) => {
            errors.append(&mut e);
            Err(errors)
        }
    }
}

/// Checks a spec; returns all errors, never just the first.
pub fn validate(
    name: &str,
    created: Option<Timestamp>,
    spec: &KmsRoutePolicySpec,
    default_cloud: Cloud,
) -> Result<Validated, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let err = |errors: &mut Vec<FieldError>, path: String, message: String| {
        errors.push(FieldError { path, message })
    };

    let cloud = spec.kms.cloud.unwrap_or(default_cloud);
    if let Some(retired) = cloud.endpoints().retired {
        warnings.push(format!("spec.kms.cloud: {cloud} is deprecated: {retired}"));
    }

    // Route name prefix first: destinations' route names depend on it.
    let prefix = &spec.route_name_prefix;
    check_prefix(prefix, &mut errors);

    let destinations = check_destinations(spec, cloud, &mut errors, &mut warnings);

    let subnets = check_subnets(&spec.subnets, &mut errors, &mut warnings);

    let selector = spec
        .selector
        .as_ref()
        .map(|sel| check_selector(sel, &mut errors, &mut warnings));
    if spec.subnets.is_empty() && spec.selector.is_none() {
        err(
            &mut errors,
            "spec".into(),
            "at least one of spec.subnets or spec.selector is required".into(),
        );
    }

    let template = &spec.route_table.name_template;
    if let Err(m) = check_template(template) {
        err(&mut errors, "spec.routeTable.nameTemplate".into(), m.0);
    }

    let resync = check_resync(&spec.resync_interval, &mut errors);

    check_kms_and_verification(spec, &mut errors);

    let identity = spec
        .azure
        .as_ref()
        .and_then(|a| a.identity.as_ref())
        .map(|i| check_identity(i, &mut errors));

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Validated {
        desired: DesiredState {
            name: name.into(),
            created,
            cloud,
            destinations,
            subnets,
            selector: selector.flatten(),
            create_if_missing: spec.route_table.create_if_missing,
            name_template: template.clone(),
            disable_bgp_route_propagation: spec.route_table.disable_bgp_route_propagation,
            route_name_prefix: prefix.clone(),
            conflict_policy: spec.conflict_policy,
            mode: spec.mode,
            deletion_policy: spec.deletion_policy,
            resync,
            verify_effective_routes: spec
                .verification
                .as_ref()
                .is_some_and(|v| v.effective_routes),
            verify_max_per_pass: spec
                .verification
                .as_ref()
                .map_or(10, |v| v.max_nics_per_pass.clamp(1, 100) as usize),
            resolve_dns: spec.kms.resolve_dns,
            route_resolved_addresses: spec.kms.resolve_dns && spec.kms.route_resolved_addresses,
            identity: identity.flatten(),
        },
        warnings,
    })
}

/// `spec.kms.routeResolvedAddresses` needs `resolveDns`; `maxNicsPerPass` is 1-100.
fn check_kms_and_verification(spec: &KmsRoutePolicySpec, errors: &mut Vec<FieldError>) {
    if spec.kms.route_resolved_addresses && !spec.kms.resolve_dns {
        push(
            errors,
            "spec.kms.routeResolvedAddresses".into(),
            "needs spec.kms.resolveDns: true (there is nothing resolved to route)".into(),
        );
    }
    if let Some(v) = &spec.verification
        && !(1..=100).contains(&v.max_nics_per_pass)
    {
        push(
            errors,
            "spec.verification.maxNicsPerPass".into(),
            format!("must be between 1 and 100, not {}", v.max_nics_per_pass),
        );
    }
}

/// `spec.azure.identity`: two GUIDs (the schema's patterns) that differ (the CRD's CEL rule).
fn check_identity(
    i: &super::IdentitySpec,
    errors: &mut Vec<FieldError>,
) -> Option<crate::ids::Identity> {
    let mut ok = true;
    for (field, value) in [("tenantID", &i.tenant_id), ("clientID", &i.client_id)] {
        if !crate::ids::is_guid(value) {
            ok = false;
            push(
                errors,
                format!("spec.azure.identity.{field}"),
                format!("{value:?} is not a GUID"),
            );
        }
    }
    if ok && i.tenant_id.eq_ignore_ascii_case(&i.client_id) {
        push(
            errors,
            "spec.azure.identity".into(),
            "tenantID and clientID are the same GUID: the client ID is the app registration's (Application (client) ID), not the directory's".into(),
        );
        ok = false;
    }
    ok.then(|| crate::ids::Identity {
        tenant_id: i.tenant_id.to_ascii_lowercase(),
        client_id: i.client_id.to_ascii_lowercase(),
    })
}

fn push(errors: &mut Vec<FieldError>, path: String, message: String) {
    errors.push(FieldError { path, message });
}

/// `spec.routeNamePrefix`: the names of the routes the policy owns start with it.
fn check_prefix(prefix: &str, errors: &mut Vec<FieldError>) {
    let err = push;
    let prefix_ok = !prefix.is_empty()
        && prefix.len() <= 40
        && prefix.starts_with(|c: char| c.is_ascii_alphanumeric())
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !prefix_ok {
        err(
            errors,
            "spec.routeNamePrefix".into(),
            format!(
                "{prefix:?} must be 1-40 letters, digits, '_', '.' or '-', starting with a letter or digit"
            ),
        );
    }
}

/// The cloud's catalog and `spec.kms.additionalAddresses`, each a /32 with its route name.
fn check_destinations(
    spec: &KmsRoutePolicySpec,
    cloud: Cloud,
    errors: &mut Vec<FieldError>,
    warnings: &mut Vec<String>,
) -> Vec<Destination> {
    let err = push;
    let prefix = &spec.route_name_prefix;
    let catalog: BTreeSet<Ipv4Addr> = cloud.endpoints().kms_addresses.iter().copied().collect();
    let mut addresses = catalog.clone();
    let mut seen = BTreeMap::new();
    for (i, a) in spec.kms.additional_addresses.iter().enumerate() {
        let path = format!("spec.kms.additionalAddresses[{i}]");
        match check_host_address(a) {
            Ok(ip) => {
                if let Some(first) = seen.insert(ip, i) {
                    err(
                        errors,
                        path,
                        format!("{ip} duplicates additionalAddresses[{first}]"),
                    );
                } else if catalog.contains(&ip) {
                    warnings.push(format!(
                        "{path}: {ip} is already in the {cloud} catalog; the entry is redundant"
                    ));
                } else {
                    addresses.insert(ip);
                }
            }
            Err(m) => err(errors, path, m.0),
        }
    }
    addresses
        .into_iter()
        .map(|address| Destination {
            address,
            route_name: route_name_for(prefix, address),
        })
        .collect()
}

/// `spec.subnets`: subnet IDs in subscriptions given by ID, each counted once.
fn check_subnets(
    ids: &[String],
    errors: &mut Vec<FieldError>,
    warnings: &mut Vec<String>,
) -> BTreeSet<SubnetId> {
    let err = push;
    let mut subnets = BTreeSet::new();
    for (i, s) in ids.iter().enumerate() {
        let path = format!("spec.subnets[{i}]");
        match SubnetId::parse(s) {
            Ok(id) if !is_guid(id.subscription()) => err(
                errors,
                path,
                format!(
                    "subscription {:?} is not a subscription ID (a GUID)",
                    id.subscription()
                ),
            ),
            Ok(id) => {
                // Harmless (the entry counts once), and the CRD cannot afford to compare
                // 5,000 IDs pairwise, so a warning on both sides.
                if let Some(dup) = subnets.get(&id) {
                    warnings.push(format!(
                        "{path}: duplicates {dup} (ARM IDs are case-insensitive); counted once"
                    ));
                } else {
                    subnets.insert(id);
                }
            }
            Err(e) => err(errors, path, e.to_string()),
        }
    }

    subnets
}

/// `spec.resyncInterval`: 30s to 24h.
fn check_resync(interval: &str, errors: &mut Vec<FieldError>) -> Duration {
    let err = push;
    match parse_duration(interval) {
        Ok(d) if d < Duration::from_secs(30) => {
            err(
                errors,
                "spec.resyncInterval".into(),
                format!("{:?} is below the minimum of 30s", interval),
            );
            d
        }
        Ok(d) if d > Duration::from_secs(24 * 3600) => {
            err(
                errors,
                "spec.resyncInterval".into(),
                format!("{:?} is above the maximum of 24h", interval),
            );
            d
        }
        Ok(d) => d,
        Err(m) => {
            err(errors, "spec.resyncInterval".into(), m.0);
            Duration::ZERO
        }
    }
}
