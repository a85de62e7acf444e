//! Which identity reads and writes which scope, from the policies' `spec.azure.identity`: pure.
//!
//! A subscription (or management group) is reached with one identity: the identity of the
//! oldest policy that names it (the order overlapping policies claim subnets in), or the controller's own when
//! that policy names none. A younger policy naming the same scope with another identity is
//! told so as an `Overlap` problem; its identity is not used there.

use crate::api::{DesiredState, Problem};
use crate::azure::IdentityRoutes;
use crate::ids::Identity;
use std::collections::BTreeMap;

/// A scope two policies want reached with different identities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConflict {
    /// `/subscriptions/{id}` or `/providers/Microsoft.Management/managementGroups/{group}`.
    pub scope: String,
    /// The policy whose identity is used, and that identity (`None`: the controller's).
    pub winner: String,
    pub used: Option<Identity>,
    /// The policy whose identity is not used there, and its identity.
    pub loser: String,
    pub wanted: Option<Identity>,
}

impl IdentityConflict {
    pub fn problem(&self) -> Problem {
        let name = |i: &Option<Identity>| {
            i.as_ref()
                .map(|i| i.to_string())
                .unwrap_or_else(|| "the controller's own identity".into())
        };
        Problem {
            subnet_id: self.scope.clone(),
            reason: super::Reason::Overlap.code().into(),
            message: format!(
                "{} is reached as {} for the older policy {}, not as {} (this policy's \
                 spec.azure.identity): a scope is read and written with one identity; give both \
                 policies the same spec.azure.identity",
                self.scope,
                name(&self.used),
                self.winner,
                name(&self.wanted)
            ),
        }
    }
}

/// Routes every scope of `policies` to its identity, as far as the port can build it.
pub fn route(
    api: &dyn crate::azure::NetworkApi,
    policies: &[DesiredState],
) -> Result<Vec<IdentityConflict>, crate::azure::ArmError> {
    let (r, conflicts) = routes(policies);
    api.route_identities(&r)?;
    Ok(conflicts)
}

/// The routes to hand the port, and the conflicts to report.
pub fn routes(policies: &[DesiredState]) -> (IdentityRoutes, Vec<IdentityConflict>) {
    let mut order: Vec<&DesiredState> = policies.iter().collect();
    order.sort_by(|a, b| a.seniority().cmp(&b.seniority()));
    // Scope → (its policy, its identity).
    let mut claims: BTreeMap<String, (&str, &Option<Identity>)> = BTreeMap::new();
    let mut conflicts = Vec::new();
    let mut out = IdentityRoutes::default();
    for p in order {
        let subs = p
            .subscriptions()
            .into_iter()
            .map(|s| (format!("/subscriptions/{s}"), s, false));
        let groups = p
            .selector
            .iter()
            .flat_map(|s| s.management_groups.iter())
            .map(|g| {
                let g = g.to_ascii_lowercase();
                (
                    format!("/providers/Microsoft.Management/managementGroups/{g}"),
                    g,
                    true,
                )
            });
        for (scope, key, group) in subs.chain(groups) {
            match claims.get(&scope) {
                Some((winner, used)) if *used != &p.identity => {
                    conflicts.push(IdentityConflict {
                        scope,
                        winner: winner.to_string(),
                        used: (*used).clone(),
                        loser: p.name.to_string(),
                        wanted: p.identity.clone(),
                    });
                }
                Some(_) => {}
                None => {
                    let map = if group {
                        &mut out.management_groups
                    } else {
                        &mut out.subscriptions
                    };
                    map.insert(key, p.identity.clone());
                    claims.insert(scope, (&p.name, &p.identity));
                }
            }
        }
    }
    (out, conflicts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{KmsRoutePolicySpec, validate};
    use crate::catalog::Cloud;
    use k8s_openapi::jiff::Timestamp;

    const A: &str = "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa";
    const B: &str = "bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb";

    fn policy(
        name: &str,
        secs: i64,
        subs: &[&str],
        groups: &[&str],
        client: Option<&str>,
    ) -> DesiredState {
        let mut spec: KmsRoutePolicySpec = serde_json::from_value(serde_json::json!({
            "selector": {"subscriptions": subs, "managementGroups": groups}
        }))
        .unwrap();
        if let Some(c) = client {
            spec.azure = Some(crate::api::AzureSpec {
                identity: Some(crate::api::IdentitySpec {
                    tenant_id: "11111111-2222-3333-4444-555555555555".into(),
                    client_id: c.into(),
                }),
            });
        }
        let created = Timestamp::from_second(1_700_000_000 + secs).ok();
        validate(name, created, &spec, Cloud::AzurePublic)
            .unwrap()
            .desired
    }

    fn identity(client: &str) -> Identity {
        Identity {
            tenant_id: "11111111-2222-3333-4444-555555555555".into(),
            client_id: client.into(),
        }
    }

    #[test]
    fn a_policy_with_an_identity_routes_its_subscriptions_and_groups() {
        let (r, c) = routes(&[
            policy(
                "tenant-b",
                0,
                &[B],
                &["Landing-Zones"],
                Some("cccccccc-cccc-cccc-cccc-cccccccccccc"),
            ),
            policy("home", 1, &[A], &[], None),
        ]);
        assert!(c.is_empty());
        let id = identity("cccccccc-cccc-cccc-cccc-cccccccccccc");
        assert_eq!(
            r.subscriptions,
            BTreeMap::from([(A.to_string(), None), (B.to_string(), Some(id.clone()))])
        );
        assert_eq!(
            r.management_groups,
            BTreeMap::from([("landing-zones".to_string(), Some(id))])
        );
    }

    #[test]
    fn the_older_policy_decides_a_shared_scope_and_the_younger_is_told() {
        let older = policy("older", 0, &[A], &[], None);
        let younger = policy(
            "younger",
            5,
            &[A, B],
            &[],
            Some("cccccccc-cccc-cccc-cccc-cccccccccccc"),
        );
        for order in [
            vec![older.clone(), younger.clone()],
            vec![younger.clone(), older.clone()],
        ] {
            let (r, c) = routes(&order);
            // A stays with the controller's identity; B, named by the younger alone, is routed.
            assert_eq!(r.subscriptions[A], None);
            assert!(r.subscriptions[B].is_some());
            assert_eq!(c.len(), 1, "{c:?}");
            assert_eq!(
                (c[0].winner.as_str(), c[0].loser.as_str()),
                ("older", "younger")
            );
            let p = c[0].problem();
            assert_eq!(p.reason, "Overlap");
            assert_eq!(p.subnet_id, format!("/subscriptions/{A}"));
            assert!(
                p.message.contains("the controller's own identity"),
                "{}",
                p.message
            );
        }
        // The same identity twice is no conflict.
        let twin = policy(
            "twin",
            9,
            &[B],
            &[],
            Some("cccccccc-cccc-cccc-cccc-cccccccccccc"),
        );
        let (_, c) = routes(&[younger, twin]);
        assert!(c.is_empty());
    }
}
