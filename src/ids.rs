//! Azure Resource Manager resource identifiers for the three resource kinds kmsroute touches.
//!
//! ARM compares resource IDs case-insensitively (`/resourcegroups/` and `/resourceGroups/` name
//! the same group), so equality, ordering and hashing here use a lower-cased key while `Display`
//! keeps the casing the user or the service gave. Nothing here does I/O.

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// The text of an ID held once, as given, in one shared allocation, with the name segments as
/// offsets. A clone is a reference count, so the verdicts, writes and inventory of a pass share
/// one copy of each ID (three strings and four segment strings per ID before: the largest part
/// of the heap at 100,000 subnets). Its comparison key ([`IdKey`]) is the same text compared
/// without case: a lower-cased copy beside it was half of every ID (22 MB at 100,000 subnets).
#[derive(Clone)]
struct IdText {
    text: Arc<str>,
    /// `(start, end)` of each name segment in the raw half (an ARM ID is at most a few hundred
    /// characters; `build` refuses longer ones). 16 bytes, where `u32` pairs and a stored length
    /// made the ID 56 bytes: five IDs a subnet at 100,000 subnets.
    parts: [(u16, u16); 4],
}

/// The longest ID text kept: far above what ARM's name limits allow (subscription 36, resource
/// group 90, VNet 64, subnet 80, table 80 characters, with the fixed segments about 350).
const MAX_ID_LEN: usize = u16::MAX as usize / 2;

impl IdText {
    /// `/{literal}/{value}…`: fixed path segments and the names between them; the names become
    /// the parts (at most four). A text over `MAX_ID_LEN` is cut there (its parse already failed
    /// ARM's name limits; the parsers refuse it before this).
    fn build(segments: &[(&str, Option<&str>)]) -> IdText {
        let mut raw = String::new();
        let mut parts = [(0u16, 0u16); 4];
        let mut n = 0;
        for (literal, value) in segments {
            raw.push('/');
            raw.push_str(literal);
            if let Some(v) = value {
                raw.push('/');
                let start = raw.len();
                raw.push_str(v);
                if n < parts.len() {
                    parts[n] = (clamp(start), clamp(raw.len()));
                    n += 1;
                }
            }
        }
        if raw.len() > MAX_ID_LEN {
            let mut cut = MAX_ID_LEN;
            while !raw.is_char_boundary(cut) {
                cut -= 1;
            }
            raw.truncate(cut);
        }
        IdText {
            text: Arc::from(raw),
            parts,
        }
    }
    fn raw(&self) -> &str {
        &self.text
    }
    fn key(&self) -> IdKey<'_> {
        IdKey(&self.text)
    }
    fn part(&self, i: usize) -> &str {
        let raw = self.raw();
        let (a, b) = self.parts[i];
        raw.get(a as usize..b as usize).unwrap_or("")
    }
}

/// An ID's comparison key: its text as ARM compares it, without regard to ASCII case
/// (`/resourcegroups/` and `/resourceGroups/` name the same group). Equal, hashed and ordered as
/// the lower-cased text would be, and shown lower-cased, without a lower-cased copy.
#[derive(Clone, Copy)]
pub struct IdKey<'a>(&'a str);

impl PartialEq for IdKey<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0.eq_ignore_ascii_case(other.0)
    }
}

impl Eq for IdKey<'_> {}

impl Hash for IdKey<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // The lower-cased bytes in fixed chunks (the same text always hashes the same way),
        // then the terminator `str` hashes with.
        let mut buf = [0u8; 64];
        for chunk in self.0.as_bytes().chunks(buf.len()) {
            let lower = &mut buf[..chunk.len()];
            lower.copy_from_slice(chunk);
            lower.make_ascii_lowercase();
            state.write(lower);
        }
        state.write_u8(0xff);
    }
}

impl PartialOrd for IdKey<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for IdKey<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        // IDs share long prefixes: skip the bytes that are equal as they are, then compare the
        // rest lower-cased.
        let same = a.iter().zip(b).take_while(|(x, y)| x == y).count();
        a[same..]
            .iter()
            .map(u8::to_ascii_lowercase)
            .cmp(b[same..].iter().map(u8::to_ascii_lowercase))
    }
}

impl fmt::Display for IdKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        for c in self.0.chars() {
            f.write_char(c.to_ascii_lowercase())?;
        }
        Ok(())
    }
}

impl fmt::Debug for IdKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

fn clamp(n: usize) -> u16 {
    n.min(MAX_ID_LEN) as u16
}

/// Why a name or a value is not acceptable: the message shown beside the field or flag (its
/// own type, so a validation message is told apart from any other string).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl From<String> for Invalid {
    fn from(s: String) -> Self {
        Invalid(s)
    }
}

impl From<&str> for Invalid {
    fn from(s: &str) -> Self {
        Invalid(s.into())
    }
}

/// Why a string is not the ARM resource ID that was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a {kind} ID: {why} (expected {shape})")]
pub struct IdError {
    pub input: String,
    pub kind: &'static str,
    pub shape: &'static str,
    pub why: String,
}

const SUBNET_SHAPE: &str = "/subscriptions/{subscriptionId}/resourceGroups/{rg}/providers/Microsoft.Network/virtualNetworks/{vnet}/subnets/{subnet}";
const VNET_SHAPE: &str = "/subscriptions/{subscriptionId}/resourceGroups/{rg}/providers/Microsoft.Network/virtualNetworks/{vnet}";
const TABLE_SHAPE: &str = "/subscriptions/{subscriptionId}/resourceGroups/{rg}/providers/Microsoft.Network/routeTables/{name}";

/// Splits `input` against a pattern of literal keywords (matched case-insensitively) and `*`
/// placeholders, returning the placeholder values in order.
fn parse_segments(
    input: &str,
    pattern: &[&str],
    kind: &'static str,
    shape: &'static str,
) -> Result<Vec<String>, IdError> {
    let err = |why: String| IdError {
        input: input.to_string(),
        kind,
        shape,
        why,
    };
    if input.len() > MAX_ID_LEN {
        return Err(err(format!(
            "is {} characters long, more than any ARM ID",
            input.len()
        )));
    }
    let rest = input
        .strip_prefix('/')
        .ok_or_else(|| err("must start with '/'".into()))?;
    let segments: Vec<&str> = rest.split('/').collect();
    if segments.len() != pattern.len() {
        return Err(err(format!(
            "has {} path segments, expected {}",
            segments.len(),
            pattern.len()
        )));
    }
    let mut values = Vec::new();
    for (seg, pat) in segments.iter().zip(pattern) {
        if *pat == "*" {
            if seg.is_empty() {
                return Err(err("has an empty name segment".into()));
            }
            // As the CRD's pattern says it: no space, no ASCII control character.
            if seg.chars().any(|c| c == ' ' || c.is_ascii_control()) {
                return Err(err(format!(
                    "segment {seg:?} contains a space or a control character"
                )));
            }
            values.push((*seg).to_string());
        } else if !seg.eq_ignore_ascii_case(pat) {
            return Err(err(format!("found {seg:?} where {pat:?} belongs")));
        }
    }
    Ok(values)
}

/// A tenant and an app registration (or user-assigned managed identity) to authenticate as,
/// lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Identity {
    pub tenant_id: String,
    pub client_id: String,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} in tenant {}", self.client_id, self.tenant_id)
    }
}

/// True when `s` has the 8-4-4-4-12 hexadecimal shape of an Azure subscription ID.
pub fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

macro_rules! case_insensitive_id {
    ($ty:ident) => {
        impl PartialEq for $ty {
            fn eq(&self, other: &Self) -> bool {
                self.id.key() == other.id.key()
            }
        }
        impl Eq for $ty {}
        impl Hash for $ty {
            fn hash<H: Hasher>(&self, state: &mut H) {
                self.id.key().hash(state)
            }
        }
        impl PartialOrd for $ty {
            fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
                Some(self.cmp(other))
            }
        }
        impl Ord for $ty {
            fn cmp(&self, other: &Self) -> Ordering {
                self.id.key().cmp(&other.id.key())
            }
        }
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.id.raw())
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.id.raw())
            }
        }
        impl std::str::FromStr for $ty {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }
        impl TryFrom<String> for $ty {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::parse(&s)
            }
        }
        impl From<$ty> for String {
            fn from(id: $ty) -> String {
                id.id.raw().to_string()
            }
        }
        impl $ty {
            /// The ID as ARM spells it (original casing).
            pub fn as_str(&self) -> &str {
                self.id.raw()
            }
            /// The comparison key (the text without regard to case).
            pub fn key(&self) -> IdKey<'_> {
                self.id.key()
            }
            pub fn subscription(&self) -> &str {
                self.id.part(0)
            }
            pub fn resource_group(&self) -> &str {
                self.id.part(1)
            }
        }
    };
}

/// `/subscriptions/…/resourceGroups/…/providers/Microsoft.Network/virtualNetworks/…/subnets/…`
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SubnetId {
    id: IdText,
}

/// `/subscriptions/…/resourceGroups/…/providers/Microsoft.Network/virtualNetworks/…`
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VnetId {
    id: IdText,
}

/// `/subscriptions/…/resourceGroups/…/providers/Microsoft.Network/routeTables/…`
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RouteTableId {
    id: IdText,
}

case_insensitive_id!(SubnetId);
case_insensitive_id!(VnetId);
case_insensitive_id!(RouteTableId);

impl SubnetId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let v = parse_segments(
            s,
            &[
                "subscriptions",
                "*",
                "resourceGroups",
                "*",
                "providers",
                "Microsoft.Network",
                "virtualNetworks",
                "*",
                "subnets",
                "*",
            ],
            "subnet",
            SUBNET_SHAPE,
        )?;
        Ok(Self::new(&v[0], &v[1], &v[2], &v[3]))
    }
    pub fn new(subscription: &str, rg: &str, vnet: &str, subnet: &str) -> Self {
        Self {
            id: IdText::build(&[
                ("subscriptions", Some(subscription)),
                ("resourceGroups", Some(rg)),
                ("providers/Microsoft.Network/virtualNetworks", Some(vnet)),
                ("subnets", Some(subnet)),
            ]),
        }
    }
    pub fn vnet_name(&self) -> &str {
        self.id.part(2)
    }
    pub fn name(&self) -> &str {
        self.id.part(3)
    }
    pub fn vnet(&self) -> VnetId {
        VnetId::new(self.id.part(0), self.id.part(1), self.id.part(2))
    }
}

impl VnetId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let v = parse_segments(
            s,
            &[
                "subscriptions",
                "*",
                "resourceGroups",
                "*",
                "providers",
                "Microsoft.Network",
                "virtualNetworks",
                "*",
            ],
            "virtual network",
            VNET_SHAPE,
        )?;
        Ok(Self::new(&v[0], &v[1], &v[2]))
    }
    pub fn new(subscription: &str, rg: &str, name: &str) -> Self {
        Self {
            id: IdText::build(&[
                ("subscriptions", Some(subscription)),
                ("resourceGroups", Some(rg)),
                ("providers/Microsoft.Network/virtualNetworks", Some(name)),
            ]),
        }
    }
    pub fn name(&self) -> &str {
        self.id.part(2)
    }
    pub fn subnet(&self, name: &str) -> SubnetId {
        SubnetId::new(self.id.part(0), self.id.part(1), self.id.part(2), name)
    }
}

impl RouteTableId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let v = parse_segments(
            s,
            &[
                "subscriptions",
                "*",
                "resourceGroups",
                "*",
                "providers",
                "Microsoft.Network",
                "routeTables",
                "*",
            ],
            "route table",
            TABLE_SHAPE,
        )?;
        Ok(Self::new(&v[0], &v[1], &v[2]))
    }
    pub fn new(subscription: &str, rg: &str, name: &str) -> Self {
        Self {
            id: IdText::build(&[
                ("subscriptions", Some(subscription)),
                ("resourceGroups", Some(rg)),
                ("providers/Microsoft.Network/routeTables", Some(name)),
            ]),
        }
    }
    pub fn name(&self) -> &str {
        self.id.part(2)
    }
}

/// ARM naming rule for route tables and routes ("Naming rules and restrictions for Azure
/// resources"): 1–80 characters of letters, digits, `_`, `.`, `-`; starts with a letter or
/// digit; ends with a letter, digit or `_`. Returns why a name breaks it.
pub fn check_route_name(name: &str) -> Result<(), Invalid> {
    let bad = |m: String| Err(Invalid(m));
    if name.is_empty() || name.len() > 80 {
        return bad(format!(
            "{name:?} must be 1-80 characters long (is {})",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return bad(format!(
            "{name:?} contains {c:?}; only letters, digits, '_', '.' and '-' are allowed"
        ));
    }
    let first = name.chars().next().unwrap_or('-');
    if !first.is_ascii_alphanumeric() {
        return bad(format!("{name:?} must start with a letter or digit"));
    }
    let last = name.chars().last().unwrap_or('-');
    if !(last.is_ascii_alphanumeric() || last == '_') {
        return bad(format!("{name:?} must end with a letter, digit or '_'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUB: &str = "00000000-0000-0000-0000-000000000001";

    proptest::proptest! {
        /// A key is equal, ordered, hashed and shown as the lower-cased text would be
        /// (names long enough to span the hash's 64-byte chunks, non-ASCII letters too).
        #[test]
        fn a_key_behaves_as_the_lower_cased_text(
            a in "[a-zA-Z0-9éÉ-]{0,90}",
            b in "[a-zA-Z0-9éÉ-]{0,90}",
        ) {
            let state = std::collections::hash_map::RandomState::new();
            let (la, lb) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
            let (ka, kb) = (IdKey(&a), IdKey(&b));
            proptest::prop_assert_eq!(ka == kb, la == lb);
            proptest::prop_assert_eq!(ka.cmp(&kb), la.cmp(&lb));
            proptest::prop_assert_eq!(ka.to_string(), la.clone());
            use std::hash::BuildHasher;
            if la == lb {
                proptest::prop_assert_eq!(state.hash_one(ka), state.hash_one(kb));
            }
            let upper = a.to_ascii_uppercase();
            proptest::prop_assert_eq!(state.hash_one(ka), state.hash_one(IdKey(&upper)));
        }
    }

    #[test]
    fn subnet_ids_compare_case_insensitively_and_keep_their_spelling() {
        let a = SubnetId::parse(&format!(
            "/subscriptions/{SUB}/resourceGroups/RG/providers/Microsoft.Network/virtualNetworks/Hub/subnets/App"
        ))
        .unwrap();
        let b = SubnetId::parse(&format!(
            "/SUBSCRIPTIONS/{SUB}/resourcegroups/rg/providers/microsoft.network/virtualnetworks/hub/subnets/app"
        ))
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.name(), "App");
        assert_eq!(a.vnet_name(), "Hub");
        assert_eq!(a.resource_group(), "RG");
        assert!(a.to_string().contains("/resourceGroups/RG/"));
    }

    #[test]
    fn malformed_subnet_ids_are_rejected_with_the_reason() {
        for bad in [
            "",
            "subscriptions/x/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/s",
            "/subscriptions/x/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v",
            "/subscriptions/x/resourceGroups/rg/providers/Microsoft.Compute/virtualNetworks/v/subnets/s",
            "/subscriptions/x/resourceGroups//providers/Microsoft.Network/virtualNetworks/v/subnets/s",
            "/subscriptions/x/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/s/",
        ] {
            let e = SubnetId::parse(bad).unwrap_err();
            assert!(!e.why.is_empty(), "{bad}");
        }
    }

    #[test]
    fn route_table_ids_round_trip_through_serde() {
        let id = RouteTableId::new(SUB, "rg", "rt1");
        let json = serde_json::to_string(&id).unwrap();
        let back: RouteTableId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
        assert_eq!(back.name(), "rt1");
    }

    #[test]
    fn guid_shape_is_checked() {
        assert!(is_guid(SUB));
        assert!(!is_guid("subid"));
        assert!(!is_guid("00000000-0000-0000-0000-00000000000g"));
    }

    #[test]
    fn route_names_follow_arm_rules() {
        assert!(check_route_name("kms-20-118-99-224").is_ok());
        assert!(check_route_name("a_").is_ok());
        assert!(check_route_name("-a").is_err());
        assert!(check_route_name("a-").is_err());
        assert!(check_route_name("a b").is_err());
        assert!(check_route_name(&"a".repeat(81)).is_err());
        assert!(check_route_name("").is_err());
    }
}
