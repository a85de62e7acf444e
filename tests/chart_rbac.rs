//! Issue 33: the chart's RBAC exercised, not just rendered: its objects are created on the fake
//! API server with Kubernetes' built-in `view` and `edit` aggregating ClusterRoles, and people
//! and the controller's ServiceAccount make requests through impersonation, authorized as a
//! real API server would (`tests/support/rbac.rs`).

#[path = "support/charts.rs"]
mod charts;
mod support;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kmsroute::api::KmsRoutePolicy;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::fake_kube::FakeKube;

/// Kubernetes' bootstrap `view` and `edit` ClusterRoles: empty, filled by aggregation.
fn builtin(name: &str) -> ClusterRole {
    serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name},
        "aggregationRule": {"clusterRoleSelectors": [
            {"matchLabels": {format!("rbac.authorization.k8s.io/aggregate-to-{name}"): "true"}}
        ]},
        "rules": []
    }))
    .unwrap()
}

fn bind(user: &str, role: &str) -> ClusterRoleBinding {
    serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": format!("{user}-{role}")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user}]
    }))
    .unwrap()
}

fn policy(name: &str) -> KmsRoutePolicy {
    serde_json::from_value(json!({
        "apiVersion": "kmsroute.io/v1alpha1", "kind": "KmsRoutePolicy", "metadata": {"name": name},
        "spec": {"selector": {"subscriptions": ["11111111-1111-1111-1111-111111111111"]}}
    }))
    .unwrap()
}

fn event(ns: &str) -> Event {
    serde_json::from_value(json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": format!("spokes.{ns}"), "namespace": ns},
        "eventTime": "2026-12-06T10:00:00.000000Z", "reportingController": "kmsroute",
        "reportingInstance": "kmsroute-0", "action": "Reconcile", "reason": "Repaired",
        "type": "Normal", "note": "3 write(s)",
        "regarding": {"apiVersion": "kmsroute.io/v1alpha1", "kind": "KmsRoutePolicy", "name": "spokes"}
    }))
    .unwrap()
}

fn forbidden<T: std::fmt::Debug>(r: Result<T, kube::Error>, what: &str) {
    match r {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_and_edit_users_and_the_controller_get_what_the_chart_grants() {
    let Some(helm) = charts::helm() else { return };
    let kube = FakeKube::start().await;
    let admin = kube.client();
    let pp = PostParams::default();
    // The chart's RBAC, as `helm install` would create it.
    for o in charts::render(&helm, &[]).unwrap() {
        let ns = o["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        match o["kind"].as_str() {
            Some("ClusterRole") => {
                let r: ClusterRole = serde_json::from_value(o).unwrap();
                Api::<ClusterRole>::all(admin.clone())
                    .create(&pp, &r)
                    .await
                    .unwrap();
            }
            Some("ClusterRoleBinding") => {
                let r: ClusterRoleBinding = serde_json::from_value(o).unwrap();
                Api::<ClusterRoleBinding>::all(admin.clone())
                    .create(&pp, &r)
                    .await
                    .unwrap();
            }
            Some("Role") => {
                let r: Role = serde_json::from_value(o).unwrap();
                Api::<Role>::namespaced(admin.clone(), &ns)
                    .create(&pp, &r)
                    .await
                    .unwrap();
            }
            Some("RoleBinding") => {
                let r: RoleBinding = serde_json::from_value(o).unwrap();
                Api::<RoleBinding>::namespaced(admin.clone(), &ns)
                    .create(&pp, &r)
                    .await
                    .unwrap();
            }
            _ => {}
        }
    }
    for role in ["view", "edit"] {
        Api::<ClusterRole>::all(admin.clone())
            .create(&pp, &builtin(role))
            .await
            .unwrap();
    }
    for (user, role) in [("alice", "view"), ("bob", "edit")] {
        Api::<ClusterRoleBinding>::all(admin.clone())
            .create(&pp, &bind(user, role))
            .await
            .unwrap();
    }
    Api::<KmsRoutePolicy>::all(admin.clone())
        .create(&pp, &policy("spokes"))
        .await
        .unwrap();

    // A viewer reads policies, and cannot change them.
    let alice = Api::<KmsRoutePolicy>::all(kube.client_as("alice", &[]));
    let seen = alice.list(&ListParams::default()).await.unwrap();
    assert_eq!(seen.items.len(), 1);
    assert!(alice.get("spokes").await.is_ok());
    forbidden(alice.create(&pp, &policy("mine")).await, "alice creates");
    forbidden(
        alice.delete("spokes", &DeleteParams::default()).await,
        "alice deletes",
    );
    // An editor writes them; status stays the controller's.
    let bob = Api::<KmsRoutePolicy>::all(kube.client_as("bob", &[]));
    bob.create(&pp, &policy("bobs")).await.unwrap();
    bob.patch(
        "bobs",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"resyncInterval": "5m"}})),
    )
    .await
    .unwrap();
    forbidden(
        bob.patch_status(
            "bobs",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"destinations": ["20.118.99.224/32"]}})),
        )
        .await,
        "bob writes status",
    );
    bob.delete("bobs", &DeleteParams::default()).await.unwrap();
    // Nobody else.
    let carol = Api::<KmsRoutePolicy>::all(kube.client_as("carol", &[]));
    forbidden(carol.list(&ListParams::default()).await, "carol lists");

    // The controller: its policies and their status, Events in `default` (where the API server
    // files Events about cluster-scoped objects), its Lease, and nothing else.
    let sa = kube.client_as(
        "system:serviceaccount:kmsroute:kmsroute",
        &["system:serviceaccounts"],
    );
    let policies = Api::<KmsRoutePolicy>::all(sa.clone());
    assert_eq!(
        policies
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    policies
        .patch_status(
            "spokes",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"destinations": ["20.118.99.224/32"]}})),
        )
        .await
        .unwrap();
    forbidden(
        policies.create(&pp, &policy("own")).await,
        "the controller creates a policy",
    );
    Api::<Event>::namespaced(sa.clone(), "default")
        .create(&pp, &event("default"))
        .await
        .unwrap();
    forbidden(
        Api::<Event>::namespaced(sa.clone(), "kmsroute")
            .create(&pp, &event("kmsroute"))
            .await,
        "Events outside default",
    );
    let lease: Lease = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "kmsroute-leader", "namespace": "kmsroute"},
        "spec": {"holderIdentity": "kmsroute-0"}
    }))
    .unwrap();
    Api::<Lease>::namespaced(sa.clone(), "kmsroute")
        .create(&pp, &lease)
        .await
        .unwrap();
    forbidden(
        Api::<Secret>::namespaced(sa.clone(), "kmsroute")
            .list(&ListParams::default())
            .await,
        "the controller lists Secrets",
    );
    forbidden(
        Api::<Lease>::namespaced(sa, "default")
            .list(&ListParams::default())
            .await,
        "Leases elsewhere",
    );
}
