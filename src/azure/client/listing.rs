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
use azure_mgmt_network::models;
use bytes::Bytes;
use std::hash::{BuildHasher, Hasher};

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

/// A page's hash: its length and SipHash of its bytes (fed chunk by chunk as they arrived, the
/// same as over the whole), keyed at random once per process (so no page can be made to collide
/// with another on purpose).
fn hash(chunks: &[Bytes]) -> (u64, usize) {
    static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    let mut h = KEYS.get_or_init(Default::default).build_hasher();
    for c in chunks {
        h.write(c);
    }
    (h.finish(), chunks.iter().map(Bytes::len).sum())
}

/// A page's chunks as one body (only for a page that changed, or an error).
fn join(chunks: &[Bytes]) -> Vec<u8> {
    let mut body = Vec::with_capacity(chunks.iter().map(Bytes::len).sum());
    for c in chunks {
        body.extend_from_slice(c);
    }
    body
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
        // Never closed; a closed semaphore would only mean "no cap".
        let _listing = self.listings.acquire().await.ok();
        self.bounded(
            Kind::VirtualNetworks.operation(),
            &resource,
            self.relist_within(sub, &resource, previous),
        )
        .await
    }

    /// [`Self::relist_subscription`] without its wall-clock bound.
    async fn relist_within(
        &self,
        sub: &str,
        resource: &str,
        previous: Option<&Fingerprint>,
    ) -> Result<Relisted, ArmError> {
        let resource = resource.to_string();
        let mut fingerprint = Fingerprint::default();
        // Pages kept until it is known whether anything changed; dropped on return.
        let mut bodies: Vec<(Kind, Vec<Bytes>)> = Vec::new();
        let mut same = previous.is_some();
        for kind in [Kind::VirtualNetworks, Kind::RouteTables] {
            let mut url = self.url(&kind.path(sub));
            let mut pages = self.pages(kind.operation(), &resource);
            loop {
                let (status, chunks) = self
                    .raw_get_chunks(url.clone())
                    .await
                    .map_err(|e| arm_err(kind.operation(), &resource, e))?;
                if status != 200 {
                    return Err(http_error(
                        kind.operation(),
                        &resource,
                        status,
                        &join(&chunks),
                    ));
                }
                let (h, len) = hash(&chunks);
                let at = fingerprint.pages.len();
                let known = previous
                    .and_then(|p| p.pages.get(at))
                    .filter(|m| m.hash == h && m.len == len && m.kind == kind as u8);
                // The same bytes carry the same nextLink.
                let next = match known {
                    Some(m) => m.next.clone(),
                    None => {
                        same = false;
                        serde_json::from_slice::<NextLink>(&join(&chunks))
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
                bodies.push((kind, chunks));
                match next {
                    Some(next) => {
                        pages.follow(&next)?;
                        url = self.parse_next_link(kind.operation(), &resource, &next)?
                    }
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
}

/// The listing's pages in our model: entries outside the subscription dropped, texts shared.
fn parse(
    sub: &str,
    resource: &str,
    bodies: Vec<(Kind, Vec<Bytes>)>,
    pages: u64,
) -> Result<Inventory, ArmError> {
    let mut inv = Inventory {
        list_pages: pages,
        ..Inventory::default()
    };
    for (kind, chunks) in bodies {
        let body = join(&chunks);
        drop(chunks);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A page arrives in chunks cut wherever the connection cut them: its hash is that of its
    /// bytes, however they were cut.
    #[test]
    fn a_pages_hash_does_not_depend_on_how_it_was_chunked() {
        let page: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let whole = hash(&[Bytes::from(page.clone())]);
        for cut in [1, 7, 4096, 39_999] {
            let (a, b) = page.split_at(cut);
            let chunks = [Bytes::copy_from_slice(a), Bytes::copy_from_slice(b)];
            assert_eq!(hash(&chunks), whole, "cut at {cut}");
            assert_eq!(join(&chunks), page);
        }
        let mut other = page.clone();
        other[20_000] ^= 1;
        assert_ne!(hash(&[Bytes::from(other)]), whole);
    }
}
