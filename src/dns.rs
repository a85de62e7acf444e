//! Resolving the cloud's KMS host names (`spec.kms.resolveDns`). Injectable, so tests never
//! touch the network.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// Why a name did not resolve (timed out, refused, no such host), as the resolver said it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DnsError(pub String);

impl From<&str> for DnsError {
    fn from(s: &str) -> Self {
        DnsError(s.into())
    }
}

#[async_trait::async_trait]
pub trait Resolver: Send + Sync + std::fmt::Debug {
    /// The IPv4 addresses `host` resolves to, or why it did not.
    async fn resolve(&self, host: &str) -> Result<Vec<Ipv4Addr>, DnsError>;
}

/// The system resolver (getaddrinfo through tokio), 5 s per name.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

#[async_trait::async_trait]
impl Resolver for SystemResolver {
    async fn resolve(&self, host: &str) -> Result<Vec<Ipv4Addr>, DnsError> {
        let lookup = tokio::net::lookup_host((host, 1688));
        let addrs = tokio::time::timeout(Duration::from_secs(5), lookup)
            .await
            .map_err(|_| DnsError(format!("resolving {host} timed out")))?
            .map_err(|e| DnsError(format!("resolving {host}: {e}")))?;
        let mut v4: Vec<Ipv4Addr> = addrs
            .filter_map(|a| match a.ip() {
                IpAddr::V4(ip) => Some(ip),
                IpAddr::V6(_) => None,
            })
            .collect();
        v4.sort();
        v4.dedup();
        Ok(v4)
    }
}

/// A fixed answer per name, for tests and the demo.
#[derive(Debug, Default, Clone)]
pub struct StaticResolver {
    pub answers: std::collections::BTreeMap<String, Result<Vec<Ipv4Addr>, DnsError>>,
}

#[async_trait::async_trait]
impl Resolver for StaticResolver {
    async fn resolve(&self, host: &str) -> Result<Vec<Ipv4Addr>, DnsError> {
        self.answers
            .get(&host.to_ascii_lowercase())
            .cloned()
            .unwrap_or_else(|| Err(DnsError(format!("{host}: no such host"))))
    }
}
