//! Listing a subscription: its VNets (subnets inline) and route tables (routes inline), page by
//! page, as raw GETs through the shared pipeline. Each page is hashed as it arrives; when every
//! page is byte for byte the one the last listing saw ([`Fingerprint`]), the listing is
//! `Unchanged` and nothing is parsed: a steady estate costs its transfers and a hash. Otherwise
//! the pages are parsed with the generated models and converted ([`super::convert`]).

use super::AzureNetworkApi;
use super::convert::{convert_table, convert_vnet};
use super::transport::{arm_err, http_error};
use crate::azure::{ArmError, ErrorClass, Fingerprint, Relisted};
use crate::model::Inventory;
use azure_core::{Method, Url};
use azure_mgmt_network::models;
use std::hash::Hasher;

/// The two listings of a subscription, in the order they are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    VirtualNetworks,
    RouteTables,
}

impl Kind {
    fn operation(self) -> &'static str {
        match self {
            Kind::VirtualNetworks => "VirtualNetworks_ListAll",
            Kind::RouteTables => "RouteTables_ListAll",
        }
    }
    fn path(self, sub: &str) -> String {
        match self {
            Kind::VirtualNetworks => {
                format!("/subscriptions/{sub}/providers/Microsoft.Network/virtualNetworks")
            }
            Kind::RouteTables => {
                format!("/subscriptions/{sub}/providers/Microsoft.Network/routeTables")
            }
        }
    }
}

/// A page's hash: its length and SipHash of its bytes.
fn hash(body: &[u8]) -> (u64, usize) {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(body);
    (h.finish(), body.len())
}

/// The `nextLink` of a page, read without building the page's models.
#[derive(serde::Deserialize)]
struct NextLink {
    #[serde(rename = "nextLink")]
    next_link: Option<String>,
}

impl AzureNetworkApi {
    /// One subscription's listing, or [`Relisted::Unchanged`] when every page is the one
    /// `previous` fingerprinted.
    pub(super) async fn relist_subscription(
        &self,
        sub: &str,
        previous: Option<&Fingerprint>,
    ) -> Result<Relisted, ArmError> {
        let resource = format!("/subscriptions/{sub}");
        let mut fingerprint = Fingerprint::default();
        // Pages kept until it is known whether anything changed; dropped on return.
        let mut bodies: Vec<(Kind, Vec<u8>)> = Vec::new();
        let mut same = previous.is_some();
        for kind in [Kind::VirtualNetworks, Kind::RouteTables] {
            let mut url = self.url(&kind.path(sub));
            loop {
                let (status, _, body) = self
                    .raw(Method::Get, url.clone(), None, &[])
                    .await
                    .map_err(|e| arm_err(kind.operation(), &resource, e))?;
                if status != 200 {
                    return Err(http_error(kind.operation(), &resource, status, &body));
                }
                let (h, len) = hash(&body);
                let at = fingerprint.pages.len();
                let known = previous
                    .and_then(|p| p.pages.get(at))
                    .filter(|m| m.hash == h && m.len == len && m.kind == kind as u8);
                // The same bytes carry the same nextLink.
                let next = match known {
                    Some(m) => m.next.clone(),
                    None => {
                        same = false;
                        serde_json::from_slice::<NextLink>(&body)
                            .map_err(|e| unreadable(kind, &resource, e))?
                            .next_link
                    }
                };
                fingerprint.pages.push(crate::azure::PageMark {
                    kind: kind as u8,
                    hash: h,
                    len,
                    next: next.clone(),
                });
                bodies.push((kind, body));
                match next {
                    Some(next) => url = self.checked_next(kind, &resource, &next)?,
                    None => break,
                }
            }
        }
        let pages = fingerprint.pages.len() as u64;
        if same && previous.is_some_and(|p| p.pages.len() == fingerprint.pages.len()) {
            return Ok(Relisted::Unchanged { pages });
        }
        let inventory = parse(sub, &resource, bodies, pages)?;
        Ok(Relisted::Changed {
            inventory,
            fingerprint,
        })
    }

    /// A `nextLink` that stays on the ARM endpoint (where the token goes).
    fn checked_next(&self, kind: Kind, resource: &str, next: &str) -> Result<Url, ArmError> {
        let refused = |m: String| {
            ArmError::local(
                ErrorClass::NeedsUserAction,
                kind.operation(),
                resource,
                None,
                m,
            )
        };
        let url = Url::parse(next).map_err(|e| refused(format!("nextLink: {e}")))?;
        if url.origin() != self.endpoint.origin() {
            return Err(refused(format!("nextLink {url} leaves the ARM endpoint")));
        }
        Ok(url)
    }
}

/// The listing's pages in our model: entries outside the subscription dropped, texts shared.
fn parse(
    sub: &str,
    resource: &str,
    bodies: Vec<(Kind, Vec<u8>)>,
    pages: u64,
) -> Result<Inventory, ArmError> {
    let mut inv = Inventory {
        list_pages: pages,
        ..Inventory::default()
    };
    for (kind, body) in bodies {
        match kind {
            Kind::VirtualNetworks => {
                let page: models::VirtualNetworkListResult =
                    serde_json::from_slice(&body).map_err(|e| unreadable(kind, resource, e))?;
                inv.virtual_networks
                    .extend(page.value.into_iter().filter_map(|v| convert_vnet(v, sub)));
            }
            Kind::RouteTables => {
                let page: models::RouteTableListResult =
                    serde_json::from_slice(&body).map_err(|e| unreadable(kind, resource, e))?;
                inv.route_tables
                    .extend(page.value.into_iter().filter_map(|t| convert_table(t, sub)));
            }
        }
    }
    inv.subscriptions.insert(sub.to_ascii_lowercase());
    inv.share_ids();
    inv.virtual_networks.shrink_to_fit();
    inv.route_tables.shrink_to_fit();
    Ok(inv)
}

/// A page that is not the listing it claims to be: worth another try.
fn unreadable(kind: Kind, resource: &str, e: serde_json::Error) -> ArmError {
    ArmError::local(
        ErrorClass::Retryable,
        kind.operation(),
        resource,
        None,
        format!("unreadable list page: {e}"),
    )
}
