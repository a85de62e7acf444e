//! `kmsroute demo`: the zero-setup tour. An in-process ARM emulator seeded with a
//! forced-tunneled hub-and-spoke estate (`examples/estate.json`), the example policy
//! (`examples/kmsroutepolicy.yaml`), and the real client and executor walking through
//! plan → apply → status → drift by "a colleague" → repair → steady state.

use crate::api::{parse_policies, validate_policy};
use crate::azure::client::{AzureNetworkApi, ClientSettings};
use crate::azure::credential::StaticToken;
use crate::catalog::Cloud;
use crate::emulator::{self, Config, OtherWrite, Seed};
use crate::output::{plan_table, problems_text, status_table};
use crate::plan::Write as PlanWrite;
use crate::reconcile::{Options, Progress, RunMode, reconcile};
use std::io::Write;
use std::sync::Arc;

pub const ESTATE: &str = include_str!("../examples/estate.json");
pub const POLICY: &str = include_str!("../examples/kmsroutepolicy.yaml");

fn step(out: &mut dyn Write, n: u32, title: &str) -> std::io::Result<()> {
    writeln!(out, "\n━━ {n}. {title}")
}

/// Why the tour stopped: its output could not be written, the emulator or the client could
/// not start, or what the tour shows did not happen (the product is broken).
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("writing the tour: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Emulator(#[from] crate::emulator::StartError),
    #[error(transparent)]
    Setup(#[from] crate::azure::SetupError),
    #[error(transparent)]
    Arm(#[from] crate::azure::ArmError),
    #[error("the demo went wrong: {0}")]
    Broken(String),
}

impl From<String> for DemoError {
    fn from(s: String) -> Self {
        DemoError::Broken(s)
    }
}

impl From<&str> for DemoError {
    fn from(s: &str) -> Self {
        DemoError::Broken(s.into())
    }
}

/// Runs the tour, narrating to `out`. Returns an error only if something is broken.
pub async fn run(out: &mut dyn Write) -> Result<(), DemoError> {
    let seed: Seed =
        serde_json::from_str(ESTATE).map_err(|e| format!("examples/estate.json: {e}"))?;
    let em = emulator::start(
        Config::default(),
        seed,
        "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?,
    )
    .await?;
    let url = url::Url::parse(&em.url()).map_err(|e| e.to_string())?;
    let api = AzureNetworkApi::new(
        url,
        Arc::new(StaticToken::new("demo")),
        ClientSettings::default(),
    )?;
    let docs = parse_policies(POLICY).map_err(|e| e.to_string())?;
    let policy = docs
        .into_iter()
        .next()
        .ok_or("no policy in the example")?
        .policy
        .and_then(|p| validate_policy(&p, Cloud::AzurePublic))
        .map_err(|e| format!("example policy invalid: {e:?}"))?
        .desired;
    let policies = [policy];

    writeln!(
        out,
        "kmsroute demo — KMS activation routes for force-tunneled Azure subnets"
    )?;
    writeln!(
        out,
        "Azure is played by the built-in ARM emulator at {} (nothing leaves this machine).",
        em.url()
    )?;

    step(
        out,
        1,
        "The estate: a hub and two spokes in two subscriptions, force-tunneled",
    )?;
    let dump = em.dump();
    for r in &dump.resources {
        let id = r["id"].as_str().unwrap_or_default();
        if id.contains("/virtualNetworks/") {
            let subnets: Vec<&str> = r["properties"]["subnets"]
                .as_array()
                .map(|a| a.iter().filter_map(|s| s["name"].as_str()).collect())
                .unwrap_or_default();
            writeln!(
                out,
                "  VNet {:<12} tags {:<28} subnets: {}",
                r["name"].as_str().unwrap_or_default(),
                r["tags"].to_string(),
                subnets.join(", ")
            )?;
        }
    }
    for l in &dump.learned_routes {
        let vnet = l["virtualNetworkId"]
            .as_str()
            .unwrap_or_default()
            .rsplit('/')
            .next()
            .unwrap_or_default();
        writeln!(
            out,
            "  BGP learned on {vnet}: {} -> {} (forced tunnel: KMS traffic would leave on-premises)",
            l["addressPrefix"].as_str().unwrap_or_default(),
            l["nextHopType"].as_str().unwrap_or_default()
        )?;
    }
    let nic = dump
        .resources
        .iter()
        .filter_map(|r| r["id"].as_str())
        .find(|id| id.contains("/networkInterfaces/"))
        .ok_or("the demo estate has no NIC")?
        .to_string();
    let nic_name = nic.rsplit('/').next().unwrap_or_default().to_string();
    let before = next_hops(&api, &nic, &policies[0]).await?;
    writeln!(
        out,
        "  Effective routes of {nic_name} (vnet-spoke1/app), the route each KMS address takes:"
    )?;
    for (ip, route, _) in &before {
        writeln!(out, "    {ip:<15} {route}")?;
    }
    if before.iter().any(|(_, _, ok)| *ok) {
        return Err("before kmsroute, a KMS address already left through a user route".into());
    }

    step(out, 2, "The policy (examples/kmsroutepolicy.yaml)")?;
    for line in POLICY.lines().filter(|l| !l.starts_with('#')) {
        writeln!(out, "  {line}")?;
    }

    step(out, 3, "kmsroute plan: what would change (reads only)")?;
    let quiet = |_: Progress| {};
    let planned = reconcile(
        &api,
        &policies,
        &Options {
            mode: RunMode::PlanOnly,
            ..Options::default()
        },
        &quiet,
    )
    .await
    .map_err(|e| e.to_string())?;
    write!(out, "{}", plan_table(&planned.plan))?;

    step(out, 4, "kmsroute apply: carry the plan out")?;
    let data_before = subnet_properties(&em.dump(), "vnet-spoke1", "data");
    em.reset_stats();
    let lines = std::sync::Mutex::new(Vec::new());
    let log = |p: Progress| {
        if let Progress::Wrote {
            done,
            total,
            write,
            error,
        } = p
            && let Ok(mut l) = lines.lock()
        {
            l.push(format!(
                "  [{done}/{total}] {write}{}",
                error.map(|e| format!("  FAILED: {e}")).unwrap_or_default()
            ));
        }
    };
    let applied = reconcile(&api, &policies, &Options::default(), &log)
        .await
        .map_err(|e| e.to_string())?;
    for l in lines.lock().map_err(|e| e.to_string())?.iter() {
        writeln!(out, "{l}")?;
    }
    let stats = em.stats();
    writeln!(
        out,
        "  {} write(s) done, {} failed; ARM saw {} reads and {} writes.",
        applied.writes_done(),
        applied.writes_failed(),
        stats.reads,
        stats.writes
    )?;

    step(
        out,
        5,
        "Status (what `kubectl get krp` and `kubectl describe krp` show)",
    )?;
    write!(out, "{}", status_table(&applied))?;
    write!(out, "{}", problems_text(&applied))?;
    let mut data_after = subnet_properties(&em.dump(), "vnet-spoke1", "data");
    let table = data_after
        .as_object_mut()
        .and_then(|p| p.remove("routeTable"));
    if data_after != data_before || table.is_none() {
        return Err("vnet-spoke1/data changed beyond its routeTable".into());
    }
    writeln!(
        out,
        "  Checked: vnet-spoke1/data gained its routeTable and kept its NSG, service endpoints and"
    )?;
    writeln!(
        out,
        "  delegation byte for byte. The conflict on vnet-spoke2/legacy is reported, not fought."
    )?;
    let after = next_hops(&api, &nic, &policies[0]).await?;
    writeln!(
        out,
        "  Effective routes of {nic_name}, before -> after (what spec.verification.effectiveRoutes checks):"
    )?;
    for ((ip, b, _), (_, a, _)) in before.iter().zip(&after) {
        writeln!(out, "    {ip:<15} {b}\n    {:<15} -> {a}", "")?;
    }
    if !after.iter().all(|(_, _, ok)| *ok) {
        return Err("after kmsroute, a KMS address still does not leave through its route".into());
    }

    step(
        out,
        6,
        "Drift: a colleague deletes a KMS route and detaches a route table in the portal",
    )?;
    let created = applied
        .plan
        .writes
        .iter()
        .find_map(|w| match &w.write {
            PlanWrite::AssociateSubnet { subnet, table } => Some((subnet.clone(), table.clone())),
            _ => None,
        })
        .ok_or("the demo expected an association")?;
    let shared = applied
        .plan
        .writes
        .iter()
        .find_map(|w| match &w.write {
            PlanWrite::PutRoute { table, route, .. } => Some((table.clone(), route.name.clone())),
            _ => None,
        })
        .ok_or("the demo expected a route write")?;
    em.other_writer(OtherWrite::DeleteRoute {
        route_table: shared.0.to_string(),
        route: shared.1.to_string(),
    })?;
    writeln!(out, "  deleted route {} from {}", shared.1, shared.0.name())?;
    em.other_writer(OtherWrite::SetSubnetRouteTable {
        subnet: created.0.to_string(),
        route_table: None,
    })?;
    writeln!(
        out,
        "  detached {} from {}/{}",
        created.1.name(),
        created.0.vnet_name(),
        created.0.name()
    )?;

    step(out, 7, "The next pass finds the drift and repairs it")?;
    em.reset_stats();
    lines.lock().map_err(|e| e.to_string())?.clear();
    let repaired = reconcile(&api, &policies, &Options::default(), &log)
        .await
        .map_err(|e| e.to_string())?;
    for l in lines.lock().map_err(|e| e.to_string())?.iter() {
        writeln!(out, "{l}")?;
    }
    write!(out, "{}", status_table(&repaired))?;

    step(out, 8, "Steady state: a resync is reads only")?;
    em.reset_stats();
    let steady = reconcile(&api, &policies, &Options::default(), &quiet)
        .await
        .map_err(|e| e.to_string())?;
    let stats = em.stats();
    let lists = |suffix: &str| -> u64 {
        stats
            .by_operation
            .iter()
            .filter(|(op, _)| op.contains(suffix))
            .map(|(_, n)| n)
            .sum()
    };
    let egress = lists("NetworkInterfaces_ListAll")
        + lists("PublicIPAddresses_ListAll")
        + lists("LoadBalancers_ListAll");
    writeln!(
        out,
        "  {} write(s) planned; ARM saw {} reads ({} list calls of VNets and route tables: 2 per subscription; {} of NICs, public IPs and load balancers for the private subnet's egress check) and {} writes.",
        steady.plan.writes.len(),
        stats.reads,
        stats.reads - egress,
        egress,
        stats.writes
    )?;
    if stats.writes != 0 {
        return Err(format!("a steady-state pass wrote {} time(s)", stats.writes).into());
    }
    writeln!(
        out,
        "\nDone. Next: `kmsroute plan -f your-policy.yaml` against Azure, or install the controller."
    )?;
    Ok(())
}

/// A subnet's `properties` from an emulator dump (`Null` when absent).
fn subnet_properties(dump: &Seed, vnet: &str, subnet: &str) -> serde_json::Value {
    dump.resources
        .iter()
        .filter(|r| r["name"] == vnet)
        .flat_map(|r| {
            r["properties"]["subnets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .find(|s| s["name"] == subnet)
        .map(|s| s["properties"].clone())
        .unwrap_or_default()
}

/// For each of the policy's KMS addresses: the route that wins on this NIC, described, and
/// whether it is a user route to `Internet`.
async fn next_hops(
    api: &AzureNetworkApi,
    nic: &str,
    policy: &crate::api::DesiredState,
) -> Result<Vec<(std::net::Ipv4Addr, String, bool)>, DemoError> {
    use crate::azure::NetworkApi;
    let routes = api.effective_routes(nic).await.map_err(|e| e.to_string())?;
    Ok(policy
        .destinations
        .iter()
        .map(|d| {
            let ok = crate::effective::check(&routes, &[d.address]).is_empty();
            let route = crate::effective::winning_route(&routes, d.address)
                .map_or_else(|| "no route".to_string(), |r| r.describe());
            (d.address, route, ok)
        })
        .collect())
}
