//! Whether next hop `Internet` leads anywhere, per NIC. A route to `Internet` on a private
//! subnet (`defaultOutboundAccess: false`, no NAT gateway) only works for a VM that has another
//! way out: an instance-level public IP on its NIC, or membership of a Standard load balancer's
//! backend pool that has an outbound rule. Pure: the executor lists the NICs, public IPs and
//! load balancers and asks this module.

use crate::model::{EgressFacts, NetworkInterface, Subnet};

/// How many of a subnet's running NICs have no outbound path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EgressCount {
    pub without: usize,
    pub total: usize,
}

/// The path a NIC's Internet-bound packets take, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundPath {
    NatGateway,
    DefaultOutboundAccess,
    PublicIp,
    LoadBalancerOutboundRule,
}

/// The NIC's way out (the subnet's first: a NAT gateway wins over everything else in Azure).
pub fn outbound_path(
    subnet: &Subnet,
    nic: &NetworkInterface,
    facts: &EgressFacts,
) -> Option<OutboundPath> {
    if subnet.nat_gateway {
        Some(OutboundPath::NatGateway)
    } else if nic
        .public_ip
        .as_ref()
        .is_some_and(|ip| facts.public_ips.contains(ip))
    {
        Some(OutboundPath::PublicIp)
    } else if nic
        .backend_pools
        .iter()
        .any(|p| facts.outbound_pools.contains(p))
    {
        Some(OutboundPath::LoadBalancerOutboundRule)
    } else if subnet.default_outbound_access != Some(false) {
        Some(OutboundPath::DefaultOutboundAccess)
    } else {
        None
    }
}

/// Counts the running (VM-attached) NICs in `subnet` and those without an outbound path.
pub fn count<'a>(
    subnet: &Subnet,
    nics: impl IntoIterator<Item = &'a NetworkInterface>,
    facts: &EgressFacts,
) -> EgressCount {
    let mut c = EgressCount::default();
    for nic in nics
        .into_iter()
        .filter(|n| n.attached && n.subnet.as_ref() == Some(&subnet.id))
    {
        c.total += 1;
        if outbound_path(subnet, nic, facts).is_none() {
            c.without += 1;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::SubnetId;
    use std::collections::BTreeSet;

    const SUB: &str = "00000000-0000-0000-0000-000000000001";

    fn private() -> Subnet {
        Subnet {
            id: SubnetId::new(SUB, "rg", "v", "private"),
            route_table: None,
            nat_gateway: false,
            default_outbound_access: Some(false),
        }
    }

    fn nic(name: &str, public_ip: Option<&str>, pools: &[&str]) -> NetworkInterface {
        NetworkInterface {
            id: format!(
                "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Network/networkInterfaces/{name}"
            ),
            subnet: Some(private().id),
            attached: true,
            public_ip: public_ip.map(str::to_string),
            backend_pools: pools.iter().map(|p| p.to_string()).collect(),
        }
    }

    fn facts() -> EgressFacts {
        EgressFacts {
            public_ips: BTreeSet::from(["pip-1".to_string()]),
            outbound_pools: BTreeSet::from(["pool-out".to_string()]),
        }
    }

    #[test]
    fn a_private_subnet_nic_without_anything_has_no_path() {
        assert_eq!(
            outbound_path(&private(), &nic("a", None, &[]), &facts()),
            None
        );
    }

    #[test]
    fn an_instance_public_ip_that_exists_is_a_path_and_a_dangling_one_is_not() {
        assert_eq!(
            outbound_path(&private(), &nic("a", Some("pip-1"), &[]), &facts()),
            Some(OutboundPath::PublicIp)
        );
        assert_eq!(
            outbound_path(&private(), &nic("a", Some("pip-gone"), &[]), &facts()),
            None
        );
    }

    #[test]
    fn only_a_pool_with_an_outbound_rule_is_a_path() {
        assert_eq!(
            outbound_path(
                &private(),
                &nic("a", None, &["pool-in", "pool-out"]),
                &facts()
            ),
            Some(OutboundPath::LoadBalancerOutboundRule)
        );
        assert_eq!(
            outbound_path(&private(), &nic("a", None, &["pool-in"]), &facts()),
            None
        );
    }

    #[test]
    fn the_subnets_nat_gateway_or_default_outbound_access_serve_every_nic() {
        let mut natted = private();
        natted.nat_gateway = true;
        assert_eq!(
            outbound_path(&natted, &nic("a", None, &[]), &facts()),
            Some(OutboundPath::NatGateway)
        );
        let mut open = private();
        open.default_outbound_access = None;
        assert_eq!(
            outbound_path(&open, &nic("a", None, &[]), &facts()),
            Some(OutboundPath::DefaultOutboundAccess)
        );
    }

    #[test]
    fn a_mix_counts_running_nics_of_the_subnet_only() {
        let mut stopped = nic("stopped", None, &[]);
        stopped.attached = false;
        let mut elsewhere = nic("elsewhere", None, &[]);
        elsewhere.subnet = Some(SubnetId::new(SUB, "rg", "v", "other"));
        let nics = [
            nic("none-1", None, &[]),
            nic("pip", Some("pip-1"), &[]),
            nic("lb", None, &["pool-out"]),
            nic("none-2", None, &["pool-in"]),
            stopped,
            elsewhere,
        ];
        assert_eq!(
            count(&private(), &nics, &facts()),
            EgressCount {
                without: 2,
                total: 4
            }
        );
    }
}
