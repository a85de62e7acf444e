//! `kmsroute demo`: the zero-setup tour. An in-process ARM emulator seeded with a
//! forced-tunneled hub-and-spoke estate (`examples/estate.json`), the example policy
//! (`examples/kmsroutepolicy.yaml`), and the real client and executor walking through
//! plan → apply → status → drift by "a colleague" → repair → steady state.

use crate::api::{parse_policies, validate_policy};
use crate::azure::client::{AzureNetworkApi, ClientSettings};
use crate::azure::credential::StaticToken;
use crate::catalog::Cloud;
use crate::emulator::{self, Config, OtherWrite, Seed};
use crate::executor::{self, PassDeps, PassParams, Progress, RunMode};
use crate::output::{plan_table, problems_text, status_table};
use crate::plan::Write as PlanWrite;
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
    #[error("the colleague's edit was refused: {0}")]
    OtherWrite(#[from] crate::emulator::OtherWriteError),
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
    let mut tour = Tour::start(out).await?;
    let before = tour.the_estate().await?;
    tour.the_policy()?;
    tour.plan().await?;
    let applied = tour.apply(&before).await?;
    tour.drift(&applied)?;
    tour.repair().await?;
    tour.steady_state().await?;
    writeln!(
        tour.out,
        "\nDone. Next: `kmsroute plan -f your-policy.yaml` against Azure, or install the controller."
    )?;
    Ok(())
}

/// The route each KMS address takes on a NIC: (address, winning route described, verified).
type NextHops = Vec<(std::net::Ipv4Addr, String, bool)>;

/// The tour's stage: the emulator, the client on it, the example policy, the NIC whose
/// effective routes it shows, and where it narrates.
struct Tour<'a> {
    out: &'a mut dyn Write,
    em: emulator::EmulatorHandle,
    api: AzureNetworkApi,
    policies: [crate::api::DesiredState; 1],
    nic: String,
}

impl<'a> Tour<'a> {
    async fn start(out: &'a mut dyn Write) -> Result<Tour<'a>, DemoError> {
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
        let nic = em
            .dump()
            .resources
            .iter()
            .filter_map(|r| r["id"].as_str())
            .find(|id| id.contains("/networkInterfaces/"))
            .ok_or("the demo estate has no NIC")?
            .to_string();
        writeln!(
            out,
            "kmsroute demo — KMS activation routes for force-tunneled Azure subnets"
        )?;
        writeln!(
            out,
            "Azure is played by the built-in ARM emulator at {} (nothing leaves this machine).",
            em.url()
        )?;
        Ok(Tour {
            out,
            em,
            api,
            policies: [policy],
            nic,
        })
    }

    fn step(&mut self, n: u32, title: &str) -> std::io::Result<()> {
        step(self.out, n, title)
    }

    fn nic_name(&self) -> &str {
        self.nic.rsplit('/').next().unwrap_or_default()
    }

    async fn next_hops(&self) -> Result<NextHops, DemoError> {
        next_hops(&self.api, &self.nic, &self.policies[0]).await
    }

    /// A pass, with one line per write it made.
    async fn pass(
        &self,
        mode: RunMode,
    ) -> Result<(crate::executor::Report, Vec<String>), DemoError> {
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
        let params = PassParams {
            mode,
            ..PassParams::default()
        };
        let report = executor::pass(
            &self.api,
            &self.policies,
            &params,
            &PassDeps::default(),
            &log,
        )
        .await?;
        let lines = lines.into_inner().map_err(|e| e.to_string())?;
        Ok((report, lines))
    }

    /// Step 1: the VNets, the BGP routes that force the tunnel, and where KMS traffic goes.
    async fn the_estate(&mut self) -> Result<NextHops, DemoError> {
        self.step(
            1,
            "The estate: a hub and two spokes in two subscriptions, force-tunneled",
        )?;
        let dump = self.em.dump();
        for r in &dump.resources {
            let id = r["id"].as_str().unwrap_or_default();
            if id.contains("/virtualNetworks/") {
                let subnets: Vec<&str> = r["properties"]["subnets"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|s| s["name"].as_str()).collect())
                    .unwrap_or_default();
                writeln!(
                    self.out,
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
                self.out,
                "  BGP learned on {vnet}: {} -> {} (forced tunnel: KMS traffic would leave on-premises)",
                l["addressPrefix"].as_str().unwrap_or_default(),
                l["nextHopType"].as_str().unwrap_or_default()
            )?;
        }
        let before = self.next_hops().await?;
        let nic = self.nic_name().to_string();
        writeln!(
            self.out,
            "  Effective routes of {nic} (vnet-spoke1/app), the route each KMS address takes:"
        )?;
        for (ip, route, _) in &before {
            writeln!(self.out, "    {ip:<15} {route}")?;
        }
        if before.iter().any(|(_, _, ok)| *ok) {
            return Err("before kmsroute, a KMS address already left through a user route".into());
        }
        Ok(before)
    }

    /// Step 2.
    fn the_policy(&mut self) -> Result<(), DemoError> {
        self.step(2, "The policy (examples/kmsroutepolicy.yaml)")?;
        for line in POLICY.lines().filter(|l| !l.starts_with('#')) {
            writeln!(self.out, "  {line}")?;
        }
        Ok(())
    }

    /// Step 3.
    async fn plan(&mut self) -> Result<(), DemoError> {
        self.step(3, "kmsroute plan: what would change (reads only)")?;
        let (planned, _) = self.pass(RunMode::PlanOnly).await?;
        write!(self.out, "{}", plan_table(&planned.plan))?;
        Ok(())
    }

    /// Steps 4 and 5: the writes, the status, what the subnet write kept, the routes after.
    async fn apply(&mut self, before: &NextHops) -> Result<crate::executor::Report, DemoError> {
        self.step(4, "kmsroute apply: carry the plan out")?;
        let data_before = subnet_properties(&self.em.dump(), "vnet-spoke1", "data");
        self.em.reset_stats();
        let (applied, lines) = self.pass(RunMode::Write).await?;
        for l in &lines {
            writeln!(self.out, "{l}")?;
        }
        let stats = self.em.stats();
        writeln!(
            self.out,
            "  {} write(s) done, {} failed; ARM saw {} reads and {} writes.",
            applied.writes_done(),
            applied.writes_failed(),
            stats.reads,
            stats.writes
        )?;
        self.step(
            5,
            "Status (what `kubectl get krp` and `kubectl describe krp` show)",
        )?;
        write!(self.out, "{}", status_table(&applied))?;
        write!(self.out, "{}", problems_text(&applied))?;
        let mut data_after = subnet_properties(&self.em.dump(), "vnet-spoke1", "data");
        let table = data_after
            .as_object_mut()
            .and_then(|p| p.remove("routeTable"));
        if data_after != data_before || table.is_none() {
            return Err("vnet-spoke1/data changed beyond its routeTable".into());
        }
        writeln!(
            self.out,
            "  Checked: vnet-spoke1/data gained its routeTable and kept its NSG, service endpoints and"
        )?;
        writeln!(
            self.out,
            "  delegation byte for byte. The conflict on vnet-spoke2/legacy is reported, not fought."
        )?;
        let after = self.next_hops().await?;
        let nic = self.nic_name().to_string();
        writeln!(
            self.out,
            "  Effective routes of {nic}, before -> after (what spec.verification.effectiveRoutes checks):"
        )?;
        for ((ip, b, _), (_, a, _)) in before.iter().zip(&after) {
            writeln!(self.out, "    {ip:<15} {b}\n    {:<15} -> {a}", "")?;
        }
        if !after.iter().all(|(_, _, ok)| *ok) {
            return Err(
                "after kmsroute, a KMS address still does not leave through its route".into(),
            );
        }
        Ok(applied)
    }

    /// Step 6: a colleague undoes two of the writes by hand.
    fn drift(&mut self, applied: &crate::executor::Report) -> Result<(), DemoError> {
        self.step(
            6,
            "Drift: a colleague deletes a KMS route and detaches a route table in the portal",
        )?;
        let writes = &applied.plan.writes;
        let created = writes
            .iter()
            .find_map(|w| match &w.write {
                PlanWrite::AssociateSubnet { subnet, table } => {
                    Some((subnet.clone(), table.clone()))
                }
                _ => None,
            })
            .ok_or("the demo expected an association")?;
        let shared = writes
            .iter()
            .find_map(|w| match &w.write {
                PlanWrite::PutRoute { table, route, .. } => {
                    Some((table.clone(), route.name.clone()))
                }
                _ => None,
            })
            .ok_or("the demo expected a route write")?;
        self.em.other_writer(OtherWrite::DeleteRoute {
            route_table: shared.0.to_string(),
            route: shared.1.to_string(),
        })?;
        writeln!(
            self.out,
            "  deleted route {} from {}",
            shared.1,
            shared.0.name()
        )?;
        self.em.other_writer(OtherWrite::SetSubnetRouteTable {
            subnet: created.0.to_string(),
            route_table: None,
        })?;
        writeln!(
            self.out,
            "  detached {} from {}/{}",
            created.1.name(),
            created.0.vnet_name(),
            created.0.name()
        )?;
        Ok(())
    }

    /// Step 7.
    async fn repair(&mut self) -> Result<(), DemoError> {
        self.step(7, "The next pass finds the drift and repairs it")?;
        self.em.reset_stats();
        let (repaired, lines) = self.pass(RunMode::Write).await?;
        for l in &lines {
            writeln!(self.out, "{l}")?;
        }
        write!(self.out, "{}", status_table(&repaired))?;
        Ok(())
    }

    /// Step 8: a resync that finds nothing to do writes nothing.
    async fn steady_state(&mut self) -> Result<(), DemoError> {
        self.step(8, "Steady state: a resync is reads only")?;
        self.em.reset_stats();
        let (steady, _) = self.pass(RunMode::Write).await?;
        let stats = self.em.stats();
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
            self.out,
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
        Ok(())
    }
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
