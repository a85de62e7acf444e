//! The subnet selector: which subnets a policy covers, checked (`spec.selector`) and matched.

use super::{FieldError, SubnetSelector};
use crate::ids::{Invalid, SubnetId, check_route_name, is_guid};
use std::collections::{BTreeMap, BTreeSet};

/// A checked selector, names lower-cased for ARM's case-insensitive comparisons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// Listed subscriptions, plus (once resolved by the executor) those under the management
    /// groups.
    pub subscriptions: BTreeSet<String>,
    /// Management group names still to resolve into subscriptions (case as given).
    pub management_groups: BTreeSet<String>,
    pub resource_groups: BTreeSet<String>,
    /// Tag keys lower-cased (ARM tag names are case-insensitive); values compared exactly.
    pub vnet_tags: BTreeMap<String, String>,
    pub subnet_names: BTreeSet<String>,
    pub exclude_subnet_names: BTreeSet<String>,
}

impl Selector {
    /// True when a subnet with this identity, in a VNet with these tags, is selected.
    pub fn matches(&self, subnet: &SubnetId, vnet_tags: &crate::model::Tags) -> bool {
        let lc = |s: &str| s.to_ascii_lowercase();
        self.subscriptions.contains(&lc(subnet.subscription()))
            && (self.resource_groups.is_empty()
                || self.resource_groups.contains(&lc(subnet.resource_group())))
            && (self.subnet_names.is_empty() || self.subnet_names.contains(&lc(subnet.name())))
            && !self.exclude_subnet_names.contains(&lc(subnet.name()))
            && self.vnet_tags.iter().all(|(k, v)| {
                vnet_tags
                    .iter()
                    .any(|(tk, tv)| tk.eq_ignore_ascii_case(k) && tv == v)
            })
    }
}

pub(super) fn check_selector(
    sel: &SubnetSelector,
    errors: &mut Vec<FieldError>,
    warnings: &mut Vec<String>,
) -> Option<Selector> {
    let before = errors.len();
    let mut err = |path: String, message: String| errors.push(FieldError { path, message });
    if sel.subscriptions.is_empty() && sel.management_groups.is_empty() {
        err(
            "spec.selector.subscriptions".into(),
            "at least one subscription ID or management group (spec.selector.managementGroups) is required".into(),
        );
    }
    if sel.subscriptions.len() > 100 {
        err(
            "spec.selector.subscriptions".into(),
            format!(
                "at most 100 subscriptions ({} given); select more with managementGroups",
                sel.subscriptions.len()
            ),
        );
    }
    let management_groups = check_groups(&sel.management_groups, &mut err);
    let mut subscriptions = BTreeSet::new();
    for (i, s) in sel.subscriptions.iter().enumerate() {
        let path = format!("spec.selector.subscriptions[{i}]");
        if !is_guid(s) {
            err(path, format!("{s:?} is not a subscription ID (a GUID)"));
        } else if !subscriptions.insert(s.to_ascii_lowercase()) {
            err(path, format!("{s} is listed twice"));
        }
    }
    let mut resource_groups = BTreeSet::new();
    for (i, rg) in sel.resource_groups.iter().enumerate() {
        let path = format!("spec.selector.resourceGroups[{i}]");
        if let Err(m) = check_resource_group(rg) {
            err(path, m.0);
        } else if !resource_groups.insert(rg.to_ascii_lowercase()) {
            err(path, format!("{rg:?} is listed twice"));
        }
    }
    let mut names = |list: &[String], field: &str| {
        let mut set = BTreeSet::new();
        for (i, n) in list.iter().enumerate() {
            let path = format!("spec.selector.{field}[{i}]");
            if let Err(m) = check_subnet_name(n) {
                err(path, m.0);
            } else if !set.insert(n.to_ascii_lowercase()) {
                err(path, format!("{n:?} is listed twice"));
            }
        }
        set
    };
    let subnet_names = names(&sel.subnet_names, "subnetNames");
    let exclude_subnet_names = names(&sel.exclude_subnet_names, "excludeSubnetNames");
    for both in subnet_names.intersection(&exclude_subnet_names) {
        err(
            "spec.selector.excludeSubnetNames".into(),
            format!("{both:?} is both included (subnetNames) and excluded"),
        );
    }
    let mut vnet_tags = BTreeMap::new();
    for (k, v) in &sel.virtual_network_tags {
        if k.is_empty() || k.chars().count() > 512 {
            err(
                format!("spec.selector.virtualNetworkTags[{k}]"),
                "tag names are 1-512 characters".into(),
            );
        } else if let Some(other) = vnet_tags.insert(k.to_ascii_lowercase(), v.clone()) {
            // Surely a mistake, but it widens nothing. The CRD cannot compare map keys within
            // its cost budget, so a warning on both sides.
            warnings.push(format!(
                "spec.selector.virtualNetworkTags[{k}]: tag names are case-insensitive in Azure; given twice, so {v:?} is matched and {other:?} ignored"
            ));
        }
    }
    (errors.len() == before).then_some(Selector {
        subscriptions,
        management_groups,
        resource_groups,
        vnet_tags,
        subnet_names,
        exclude_subnet_names,
    })
}

/// `spec.selector.managementGroups`: names Azure accepts, each once, at most 20.
fn check_groups(groups: &[String], err: &mut impl FnMut(String, String)) -> BTreeSet<String> {
    let mut management_groups = BTreeSet::new();
    for (i, g) in groups.iter().enumerate() {
        let path = format!("spec.selector.managementGroups[{i}]");
        let valid = !g.is_empty()
            && g.len() <= 90
            && g.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_().-".contains(c));
        if !valid {
            err(
                path,
                format!("{g:?} is not a management group name (1-90 letters, digits, _ ( ) . -)"),
            );
        } else if groups[..i].iter().any(|h| h.eq_ignore_ascii_case(g)) {
            err(
                path,
                format!("{g} is listed twice (names are case-insensitive)"),
            );
        } else {
            management_groups.insert(g.clone());
        }
    }
    if groups.len() > 20 {
        err(
            "spec.selector.managementGroups".into(),
            "at most 20 management groups".into(),
        );
    }
    management_groups
}

/// The CRD's resource group rule ([`super::rules::RESOURCE_GROUP_PATTERN`], 1-90 characters)
/// with a message that says it in words.
fn check_resource_group(name: &str) -> Result<(), Invalid> {
    static RE: std::sync::OnceLock<Option<regex::Regex>> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| regex::Regex::new(super::rules::RESOURCE_GROUP_PATTERN).ok());
    let ok = re.as_ref().is_some_and(|re| re.is_match(name));
    if !ok || name.chars().count() > 90 {
        return Err(Invalid(format!(
            "{name:?} is not a valid resource group name (1-90 letters, digits, '_', '-', '.', '(', ')'; not ending in '.')"
        )));
    }
    Ok(())
}

fn check_subnet_name(name: &str) -> Result<(), Invalid> {
    check_route_name(name).map_err(|e| Invalid(format!("not a valid subnet name: {e}")))
}
