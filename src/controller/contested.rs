//! Contested route tables in the controller: after each pass, the policy's writes go through
//! its [`Ledger`] (a repair that restores kmsroute's own earlier write is a revert); a table
//! reverted often enough is contested. The Activity Log says who did it, read only when a
//! revert is seen (and again, at most once a minute, while the log has not caught up); the
//! controller's own principals never count. Status problems (`Contested`, on the table's
//! subnets), a Warning Event once per table per window, and metrics tell the user.
//!
//! Repairs themselves are untouched: every revert is still repaired at the planner's minimum.

use crate::api::Problem;
use crate::azure::{ActivityEvent, ArmError, NetworkApi};
use crate::executor::{Reason, Report};
use crate::plan::contest::{ContestSettings, Contested, Ledger, Undone};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// Who undid kmsroute's write, as far as the Activity Log says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribution {
    /// The log has not shown another writer's change yet (it lags).
    NotYet,
    Found(ActivityEvent),
    /// The log cannot be read (no `Microsoft.Insights/eventtypes/values/read`, or an error).
    Unreadable(String),
}

/// What kmsroute knows of one table it has seen reverted.
#[derive(Debug, Clone)]
struct Table {
    name: String,
    id: String,
    subnets: BTreeSet<String>,
    /// Other resources whose writes undid ours (the routes and subnets the last revert
    /// restored).
    resources: BTreeSet<String>,
    first_revert: i64,
    attribution: Attribution,
    looked: Option<Instant>,
}

#[derive(Debug, Default)]
struct PolicyContests {
    ledger: Ledger,
    tables: BTreeMap<String, Table>,
}

/// Every policy's ledger and what the Activity Log said.
#[derive(Debug)]
pub struct Contests {
    settings: ContestSettings,
    by_policy: tokio::sync::Mutex<HashMap<String, PolicyContests>>,
    /// How soon an unattributed table's log is read again.
    relook: Duration,
}

/// What a pass's writes meant.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Tables reverted in this pass.
    pub reverts: usize,
    /// `Contested` problems, one per subnet of each contested table.
    pub problems: Vec<Problem>,
    /// Messages of the Warning Events due now (once per table per window).
    pub announcements: Vec<String>,
    /// How many of the policy's tables are contested now.
    pub contested: usize,
}

/// How an operation reads in a message.
pub fn doing(operation: &str) -> &'static str {
    let op = operation.to_ascii_lowercase();
    if op.ends_with("/routetables/write") {
        "rewriting the whole table"
    } else if op.ends_with("/routetables/routes/delete") {
        "deleting a route"
    } else if op.ends_with("/routetables/routes/write") {
        "replacing a route"
    } else if op.ends_with("/virtualnetworks/subnets/write") {
        "changing the subnet's route table"
    } else if op.ends_with("/routetables/delete") {
        "deleting the table"
    } else {
        "writing to it"
    }
}

fn clock(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .map(|t| {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02} UTC",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute()
            )
        })
        .unwrap_or_default()
}

/// The message of a contested table: how often, since when, who, and how to end the fight.
pub fn message(name: &str, c: &Contested, who: &Attribution) -> String {
    let what = c
        .undone
        .iter()
        .map(|u| match u {
            Undone::Routes => "our KMS routes were removed or replaced",
            Undone::Association => "the subnet's association with it was removed",
            Undone::Table => "the table was deleted",
        })
        .collect::<Vec<_>>()
        .join(" and ");
    let by = match who {
        Attribution::Found(e) => format!(
            ", last by {} {} ({}, correlation ID {})",
            e.caller,
            doing(&e.operation),
            e.operation,
            e.correlation_id
        ),
        Attribution::NotYet => {
            " (not yet attributed: the Activity Log has not shown who yet)".into()
        }
        Attribution::Unreadable(why) => {
            format!(" (who did it is unknown: the Activity Log cannot be read: {why})")
        }
    };
    format!(
        "route table {name}: {what} {} times since {}{by}; add the KMS routes to that definition (Terraform: separate azurerm_route resources or lifecycle ignore_changes on route; Bicep/ARM: declare them in routes), or give kmsroute a table of its own",
        c.reverts,
        clock(c.since)
    )
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Contests {
    pub fn new(settings: ContestSettings) -> Contests {
        Contests {
            settings,
            by_policy: tokio::sync::Mutex::default(),
            relook: Duration::from_secs(settings.relook_secs),
        }
    }

    /// After `policy`'s pass: its successful writes go through the ledger, reverts are counted,
    /// the Activity Log read where a revert was seen, and what to say is returned.
    pub async fn after_pass(&self, api: &dyn NetworkApi, policy: &str, report: &Report) -> Outcome {
        let now = unix_now();
        let mut all = self.by_policy.lock().await;
        let state = all
            .entry(policy.to_string())
            .or_insert_with(|| PolicyContests {
                ledger: Ledger::new(self.settings),
                ..PolicyContests::default()
            });
        let writes: Vec<&crate::plan::Write> = report
            .outcomes()
            .filter(|(w, e)| w.policy == policy && e.is_none())
            .map(|(w, _)| &w.write)
            .collect();
        let reverts = state.ledger.reverts(writes.iter().copied());
        writes.iter().for_each(|w| state.ledger.wrote(w));
        state.ledger.record(&reverts, now);
        for key in reverts.keys() {
            let Some(tp) = report.plan.tables.iter().find(|t| t.table.key() == key) else {
                continue;
            };
            let table = state.tables.entry(key.clone()).or_insert_with(|| Table {
                name: tp.table.name().to_string(),
                id: tp.table.to_string(),
                subnets: BTreeSet::new(),
                resources: BTreeSet::new(),
                first_revert: now,
                attribution: Attribution::NotYet,
                looked: None,
            });
            table
                .subnets
                .extend(tp.subnets.iter().map(|s| s.to_string()));
            // What this revert restored: where its author's writes are logged.
            table.resources.clear();
            for w in &writes {
                match w {
                    crate::plan::Write::PutRoute {
                        table: t, route, ..
                    } if t.key() == key => {
                        table.resources.insert(format!("{t}/routes/{}", route.name));
                    }
                    crate::plan::Write::AssociateSubnet { subnet, table: t } if t.key() == key => {
                        table.resources.insert(subnet.to_string());
                    }
                    _ => {}
                }
            }
            // A new revert: who did it this time is a new question.
            table.attribution = Attribution::NotYet;
            table.looked = None;
        }
        let contested = state.ledger.contested(now);
        let keep: BTreeSet<&String> = contested.iter().map(|c| &c.table).collect();
        let reverted: BTreeSet<&String> = reverts.keys().collect();
        state
            .tables
            .retain(|k, _| keep.contains(k) || reverted.contains(k));
        // The log, where a revert was seen and who did it is not known yet.
        for (key, table) in state.tables.iter_mut() {
            let due = table.looked.is_none_or(|t| t.elapsed() >= self.relook);
            if table.attribution != Attribution::NotYet || !due {
                continue;
            }
            table.looked = Some(Instant::now());
            table.attribution = attribute(api, table, self.settings.window_secs, now).await;
            tracing::debug!(policy, table = %key, attribution = ?table.attribution, "read the Activity Log");
        }
        let mut out = Outcome {
            reverts: reverts.len(),
            contested: contested.len(),
            ..Outcome::default()
        };
        for c in &contested {
            let Some(table) = state.tables.get(&c.table) else {
                continue;
            };
            let text = message(&table.name, c, &table.attribution);
            out.problems.extend(
                table
                    .subnets
                    .iter()
                    .map(|s| Reason::Contested.problem(s.clone(), text.clone())),
            );
            if table.subnets.is_empty() {
                out.problems
                    .push(Reason::Contested.problem(table.id.clone(), text.clone()));
            }
            if state.ledger.announce(&c.table, now) {
                out.announcements.push(text);
            }
        }
        out
    }

    /// The policy is gone: forget its ledger.
    pub async fn forget(&self, policy: &str) {
        self.by_policy.lock().await.remove(policy);
    }
}

/// The latest write by someone else that undid ours: in the table's log and those of the
/// routes and subnets the last revert restored (at most four reads).
async fn attribute(api: &dyn NetworkApi, table: &Table, window: i64, now: i64) -> Attribution {
    let since = (now - window).max(table.first_revert - window);
    let mut found: Vec<ActivityEvent> = Vec::new();
    let uris = std::iter::once(table.id.clone()).chain(table.resources.iter().cloned());
    for uri in uris.take(4) {
        match api.activity_log(&uri, since).await {
            Ok(events) => found.extend(events.into_iter().filter(|e| e.succeeded)),
            Err(e) => return Attribution::Unreadable(reason(&e)),
        }
    }
    found
        .into_iter()
        .max_by_key(|e| e.at)
        .map(Attribution::Found)
        .unwrap_or(Attribution::NotYet)
}

fn reason(e: &ArmError) -> String {
    if e.refuses_scope() {
        format!(
            "{} (grant Microsoft.Insights/eventtypes/values/read, part of the kmsroute role)",
            e.code.as_deref().unwrap_or("refused")
        )
    } else {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contested() -> Contested {
        Contested {
            table: "t".into(),
            reverts: 4,
            since: 1_796_288_000,
            last: 1_796_290_000,
            undone: BTreeSet::from([Undone::Routes]),
        }
    }

    #[test]
    fn the_message_names_who_what_and_how_to_stop_it() {
        let e = ActivityEvent {
            caller: "pipeline-sp@contoso.example".into(),
            operation: "Microsoft.Network/routeTables/write".into(),
            resource_id: "/x".into(),
            succeeded: true,
            at: 1_796_290_000,
            correlation_id: "c-1".into(),
        };
        let m = message("rt-spoke1", &contested(), &Attribution::Found(e));
        for part in [
            "route table rt-spoke1: our KMS routes were removed or replaced 4 times since 2026-12-03",
            "last by pipeline-sp@contoso.example rewriting the whole table (Microsoft.Network/routeTables/write",
            "c-1",
            "add the KMS routes to that definition",
            "give kmsroute a table of its own",
        ] {
            assert!(m.contains(part), "{part:?} not in {m}");
        }
        assert!(message("rt", &contested(), &Attribution::NotYet).contains("not yet attributed"));
        assert!(
            message(
                "rt",
                &contested(),
                &Attribution::Unreadable("AuthorizationFailed".into())
            )
            .contains("cannot be read")
        );
    }

    #[test]
    fn operations_read_as_what_they_did() {
        assert_eq!(
            doing("Microsoft.Network/routeTables/routes/delete"),
            "deleting a route"
        );
        assert_eq!(
            doing("microsoft.network/virtualNetworks/subnets/write"),
            "changing the subnet's route table"
        );
        assert_eq!(
            doing("Microsoft.Network/routeTables/write"),
            "rewriting the whole table"
        );
    }
}
