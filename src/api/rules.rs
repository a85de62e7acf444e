//! The CEL rules (`x-kubernetes-validations`) of the CRD: what the API server checks that
//! types, patterns and limits cannot say. Each one is the API server's copy of a check in
//! `validate()`, named beside it; `tests/validate.rs` runs both on one corpus (the rules with
//! Kubernetes' CEL libraries) and requires the same verdict. The CEL IP and CIDR libraries need
//! Kubernetes 1.31 or later.
//!
//! Every string a rule walks has a `maxLength` and every list a `maxItems`, so the API
//! server's cost estimate stays bounded.

use schemars::Schema;
use serde_json::{Value, json};

/// Address ranges that are not public, in CIDR form: the one list both `check_host_address`
/// and the CRD rule use.
pub const NON_PUBLIC: [&str; 12] = [
    "0.0.0.0/8",       // "this network", unspecified
    "10.0.0.0/8",      // private
    "100.64.0.0/10",   // shared address space (carrier-grade NAT)
    "127.0.0.0/8",     // loopback
    "169.254.0.0/16",  // link-local
    "172.16.0.0/12",   // private
    "192.0.2.0/24",    // documentation (TEST-NET-1)
    "192.168.0.0/16",  // private
    "198.51.100.0/24", // documentation (TEST-NET-2)
    "203.0.113.0/24",  // documentation (TEST-NET-3)
    "224.0.0.0/4",     // multicast
    "240.0.0.0/4",     // reserved, broadcast
];

/// `resourceGroups[*]`: letters and digits of any script, `_ - . ( )`, not ending in `.`.
pub const RESOURCE_GROUP_PATTERN: &str = r"^[-\p{L}\p{N}_.()]*[-\p{L}\p{N}_()]$";
/// Subnet (and route) names: ASCII letters, digits, `_ . -`; starts with a letter or digit,
/// ends with a letter, digit or `_`.
pub const SUBNET_NAME_PATTERN: &str = r"^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$";
/// ARM subnet IDs; the subscription is a GUID, no segment is empty or holds a space or a
/// control character.
pub const SUBNET_ID_PATTERN: &str = concat!(
    r"^/[Ss][Uu][Bb][Ss][Cc][Rr][Ii][Pp][Tt][Ii][Oo][Nn][Ss]/",
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
    r"/[Rr][Ee][Ss][Oo][Uu][Rr][Cc][Ee][Gg][Rr][Oo][Uu][Pp][Ss]/[^/ \x00-\x1f\x7f]+",
    r"/[Pp][Rr][Oo][Vv][Ii][Dd][Ee][Rr][Ss]/[Mm][Ii][Cc][Rr][Oo][Ss][Oo][Ff][Tt]\.[Nn][Ee][Tt][Ww][Oo][Rr][Kk]",
    r"/[Vv][Ii][Rr][Tt][Uu][Aa][Ll][Nn][Ee][Tt][Ww][Oo][Rr][Kk][Ss]/[^/ \x00-\x1f\x7f]+",
    r"/[Ss][Uu][Bb][Nn][Ee][Tt][Ss]/[^/ \x00-\x1f\x7f]+$"
);

/// A GUID (tenant, client and subscription IDs).
pub const GUID_PATTERN: &str =
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";

/// Names compared the way Azure compares them: no two entries differ only in case.
const UNIQUE_CI: &str = "self.all(x, self.exists_one(y, y.lowerAscii() == x.lowerAscii()))";

fn add(schema: &mut Schema, pointer: &str, rule: &str, message: &str) {
    let node = if pointer.is_empty() {
        schema.as_object_mut()
    } else {
        schema.pointer_mut(pointer).and_then(Value::as_object_mut)
    };
    // A missing node is a renamed field: the CRD test then finds the rule missing.
    let Some(node) = node else { return };
    let list = node
        .entry("x-kubernetes-validations")
        .or_insert_with(|| json!([]));
    if let Some(list) = list.as_array_mut() {
        list.push(json!({"rule": rule, "message": message}));
    }
}

/// `spec`: `validate()`'s resync bounds.
pub fn spec(s: &mut Schema) {
    add(
        s,
        "/properties/resyncInterval",
        "duration(self) >= duration('30s') && duration(self) <= duration('24h')",
        "must be between 30s and 24h",
    );
}

/// `spec.kms`: `check_host_address` and the duplicate check in `validate()`.
pub fn kms(s: &mut Schema) {
    let addr = "self.replace('/32', '')";
    add(
        s,
        "/properties/additionalAddresses/items",
        &format!("isIP({addr}) && ip({addr}).family() == 4"),
        "must be an IPv4 address (a.b.c.d or a.b.c.d/32)",
    );
    let ranges: Vec<String> = NON_PUBLIC.iter().map(|c| format!("'{c}'")).collect();
    add(
        s,
        "/properties/additionalAddresses/items",
        &format!(
            "!isIP({addr}) || ![{}].exists(c, cidr(c).containsIP({addr}))",
            ranges.join(", ")
        ),
        "must be a public address: a route with next hop Internet to a private, shared, loopback, link-local, documentation, multicast or reserved address would misroute it",
    );
    add(
        s,
        "/properties/additionalAddresses",
        "self.all(a, self.exists_one(b, b.replace('/32', '') == a.replace('/32', '')))",
        "an address is listed twice",
    );
    add(
        s,
        "",
        "!has(self.routeResolvedAddresses) || !self.routeResolvedAddresses || (has(self.resolveDns) && self.resolveDns)",
        "routeResolvedAddresses needs resolveDns: true (there is nothing resolved to route)",
    );
}

/// `spec.selector`: `check_selector`'s duplicate and overlap checks.
pub fn selector(s: &mut Schema) {
    for list in [
        "subscriptions",
        "managementGroups",
        "resourceGroups",
        "subnetNames",
        "excludeSubnetNames",
    ] {
        add(
            s,
            &format!("/properties/{list}"),
            UNIQUE_CI,
            "an entry is listed twice (names are case-insensitive)",
        );
    }
    add(
        s,
        "",
        "!has(self.subnetNames) || !has(self.excludeSubnetNames) || self.subnetNames.all(n, !self.excludeSubnetNames.exists(e, e.lowerAscii() == n.lowerAscii()))",
        "a subnet name cannot be both included and excluded (names are case-insensitive)",
    );
    if let Some(tags) = s
        .pointer_mut("/properties/virtualNetworkTags")
        .and_then(Value::as_object_mut)
    {
        tags.insert("maxProperties".into(), json!(50));
        if let Some(v) = tags
            .get_mut("additionalProperties")
            .and_then(Value::as_object_mut)
        {
            v.insert("maxLength".into(), json!(256));
        }
    }
    add(
        s,
        "/properties/virtualNetworkTags",
        "self.all(k, size(k) >= 1 && size(k) <= 512)",
        "tag names are 1-512 characters",
    );
}

/// `spec.routeTable`: `check_template`.
pub fn route_table(s: &mut Schema) {
    add(
        s,
        "/properties/nameTemplate",
        r"self.matches('^([A-Za-z0-9_.-]|\\{(vnet|subnet|location|policy)\\})+$')",
        "only the placeholders {vnet}, {subnet}, {location} and {policy} may appear in braces",
    );
    add(
        s,
        "/properties/nameTemplate",
        r"self.replace('{vnet}', 'a').replace('{subnet}', 'a').replace('{location}', 'a').replace('{policy}', 'a').matches('^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$')",
        "renders invalid route table names (they must start with a letter or digit and end with a letter, digit or '_')",
    );
}
