//! Contested route tables in the controller: after each pass, the policy's writes go through
//! its [`Ledger`] (a repair that restores what was kmsroute's, written or found in sync, is a
//! revert), and what the pass found in sync is recorded as kmsroute's; a table reverted often
//! enough is contested. The Activity Log says who did it, searched from the time the restored
//! marks were last kmsroute's, read only when a revert is seen (and again, at most once a
//! minute, while the log has not caught up, until `give_up_secs`); the controller's own
//! principals never count. Status problems (`Contested`, on the table's subnets), a Warning
//! Event once per table per window, and metrics tell the user.
//!
//! Each policy's ledger lives in its own [`PolicyState`](super::state::PolicyState) (behind the
//! lock that is never held across an `await`): the Activity Log is read with no lock held, so a
//! slow log delays only the policy whose revert it explains.
//!
//! Repairs themselves are untouched: every revert is still repaired at the planner's minimum.

use super::state::Policies;
use crate::api::Problem;
use crate::azure::{ActivityEvent, ArmError, NetworkApi};
use crate::executor::{Reason, Report};
use crate::plan::contest::{ContestSettings, Contested, Ledger, Undone};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Who undid kmsroute's write, as far as the Activity Log says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribution {
    /// The log has not shown another writer's change since the marks were kmsroute's yet (it
    /// lags).
    NotYet,
    Found(ActivityEvent),
    /// The log cannot be read (no `Microsoft.Insights/eventtypes/values/read`, or an error).
    Unreadable(String),
    /// `give_up_secs` went by and the log never showed a write in the window.
    GaveUp {
        after_secs: i64,
    },
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
    /// When the last revert was seen, and since when its marks had been kmsroute's (the start
    /// of the Activity Log search: a write before it is never named).
    reverted_at: i64,
    since: i64,
    attribution: Attribution,
    looked: Option<Instant>,
}

/// One policy's ledger and what the Activity Log said of its tables (kept in the policy's
/// [`PolicyState`](super::state::PolicyState)).
#[derive(Debug, Default)]
pub struct PolicyContests {
    ledger: Ledger,
    tables: BTreeMap<String, Table>,
}

/// An Activity Log read due for one table, taken out of the policy's state so the read runs
/// with no lock held.
#[derive(Debug, Clone)]
struct Look {
    key: String,
    id: String,
    resources: BTreeSet<String>,
    since: i64,
    reverted_at: i64,
}

/// The contest settings, and the work that runs between a policy's state and the Activity Log.
#[derive(Debug)]
pub struct Contests {
    settings: ContestSettings,
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
        Attribution::GaveUp { after_secs } => format!(
            " (who did it is unknown: the Activity Log showed no other writer's change to it in the {} after the revert)",
            span(*after_secs)
        ),
    };
    format!(
        "route table {name}: {what} {} times since {}{by}; add the KMS routes to that definition (Terraform: separate azurerm_route resources or lifecycle ignore_changes on route; Bicep/ARM: declare them in routes), or give kmsroute a table of its own",
        c.reverts,
        clock(c.since)
    )
}

/// `3600` as "1 h", `90` as "90 s".
fn span(secs: i64) -> String {
    if secs >= 3600 && secs % 3600 == 0 {
        format!("{} h", secs / 3600)
    } else if secs >= 60 && secs % 60 == 0 {
        format!("{} min", secs / 60)
    } else {
        format!("{secs} s")
    }
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Contests {
    pub fn new(settings: ContestSettings) -> Contests {
        Contests {
            settings,
            relook: Duration::from_secs(settings.relook_secs),
        }
    }

    /// A new policy's contest state.
    pub fn empty(&self) -> PolicyContests {
        PolicyContests {
            ledger: Ledger::new(self.settings),
            tables: BTreeMap::new(),
        }
    }

    /// After `policy`'s pass (started at `started`, Unix seconds): its successful writes go
    /// through the ledger, reverts are counted, what it found in sync becomes kmsroute's
    /// (`route_names`: the policy's routes), the Activity Log is read where a revert was seen,
    /// and what to say is returned. The policy's contest state is taken under its lock twice;
    /// no lock is held while the log is read.
    pub async fn after_pass(
        &self,
        api: &dyn NetworkApi,
        policies: &Policies,
        policy: &str,
        report: &Report,
        route_names: &[String],
        started: i64,
    ) -> Outcome {
        let now = unix_now();
        let (reverts, looks) = policies.contest(
            policy,
            || self.empty(),
            |c| {
                let reverts = c.take_pass(policy, report, route_names, started, now);
                (reverts, c.due(self.relook, self.settings.give_up_secs, now))
            },
        );
        // The log, where a revert was seen and who did it is not known yet: no lock held.
        let mut found: Vec<(Look, Attribution)> = Vec::new();
        for look in looks {
            let who = attribute(api, &look).await;
            tracing::debug!(policy, table = %look.key, attribution = ?who, "read the Activity Log");
            found.push((look, who));
        }
        policies.contest(
            policy,
            || self.empty(),
            |c| {
                c.attributed(&found);
                c.outcome(reverts, now)
            },
        )
    }
}

impl PolicyContests {
    /// The pass's writes and what it found in sync, through the ledger: how many tables were
    /// reverted.
    fn take_pass(
        &mut self,
        policy: &str,
        report: &Report,
        route_names: &[String],
        started: i64,
        now: i64,
    ) -> usize {
        let writes: Vec<&crate::plan::Write> = report
            .outcomes()
            .filter(|(w, e)| w.policy == policy && e.is_none())
            .map(|(w, _)| &w.write)
            .collect();
        let reverts = self.ledger.reverts(writes.iter().copied());
        writes.iter().for_each(|w| self.ledger.wrote(w, now));
        // What is in sync now is kmsroute's, however it came to be (after a restart too): seen
        // at the pass's start at the latest (its observations are older than the pass).
        for v in report.final_verdicts() {
            if v.policy == policy
                && v.verdict == crate::plan::Verdict::InSync
                && let Some(table) = &v.route_table
            {
                self.ledger.seen_in_place(
                    &table.key().to_string(),
                    &v.subnet.key().to_string(),
                    route_names.iter().map(String::as_str),
                    started,
                );
            }
        }
        self.ledger.record(&reverts, now);
        for (key, revert) in &reverts {
            let Some(tp) = report
                .plan
                .tables
                .iter()
                .find(|t| t.table.as_str().eq_ignore_ascii_case(key))
            else {
                continue;
            };
            let table = self.tables.entry(key.clone()).or_insert_with(|| Table {
                name: tp.table.name().to_string(),
                id: tp.table.to_string(),
                subnets: BTreeSet::new(),
                resources: BTreeSet::new(),
                reverted_at: now,
                since: revert.since,
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
                    } if t.as_str().eq_ignore_ascii_case(key) => {
                        table.resources.insert(format!("{t}/routes/{}", route.name));
                    }
                    crate::plan::Write::AssociateSubnet { subnet, table: t }
                        if t.as_str().eq_ignore_ascii_case(key) =>
                    {
                        table.resources.insert(subnet.to_string());
                    }
                    _ => {}
                }
            }
            // A new revert: who did it this time is a new question, asked of the log from the
            // time what it undid was last kmsroute's.
            table.reverted_at = now;
            table.since = revert.since;
            table.attribution = Attribution::NotYet;
            table.looked = None;
        }
        let contested: BTreeSet<String> = self
            .ledger
            .contested(now)
            .into_iter()
            .map(|c| c.table)
            .collect();
        self.tables
            .retain(|k, _| contested.contains(k) || reverts.contains_key(k));
        reverts.len()
    }

    /// The tables whose log is due for a read; one past `give_up_secs` is given up.
    fn due(&mut self, relook: Duration, give_up_secs: i64, now: i64) -> Vec<Look> {
        let mut looks = Vec::new();
        for (key, table) in self.tables.iter_mut() {
            if table.attribution != Attribution::NotYet {
                continue;
            }
            if now - table.reverted_at > give_up_secs {
                table.attribution = Attribution::GaveUp {
                    after_secs: give_up_secs,
                };
                continue;
            }
            if table.looked.is_some_and(|t| t.elapsed() < relook) {
                continue;
            }
            table.looked = Some(Instant::now());
            looks.push(Look {
                key: key.clone(),
                id: table.id.clone(),
                resources: table.resources.clone(),
                since: table.since,
                reverted_at: table.reverted_at,
            });
        }
        looks
    }

    /// What the log said, for the tables whose revert it was read for (a newer revert since
    /// asks anew).
    fn attributed(&mut self, found: &[(Look, Attribution)]) {
        for (look, who) in found {
            if let Some(table) = self.tables.get_mut(&look.key)
                && table.reverted_at == look.reverted_at
            {
                table.attribution = who.clone();
            }
        }
    }

    /// The contested tables' problems and the Events due now.
    fn outcome(&mut self, reverts: usize, now: i64) -> Outcome {
        let contested = self.ledger.contested(now);
        let mut out = Outcome {
            reverts,
            contested: contested.len(),
            ..Outcome::default()
        };
        for c in &contested {
            let Some(table) = self.tables.get(&c.table) else {
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
            if self.ledger.announce(&c.table, now) {
                out.announcements.push(text);
            }
        }
        out
    }
}

/// The latest write by someone else that undid ours: in the table's log and those of the
/// routes and subnets the last revert restored (at most four reads), made after the restored
/// marks were last kmsroute's (`since`). Nothing before that is ever named.
async fn attribute(api: &dyn NetworkApi, look: &Look) -> Attribution {
    let mut found: Vec<ActivityEvent> = Vec::new();
    let uris = std::iter::once(look.id.clone()).chain(look.resources.iter().cloned());
    for uri in uris.take(4) {
        match api.activity_log(&uri, look.since).await {
            Ok(events) => found.extend(
                events
                    .into_iter()
                    .filter(|e| e.succeeded && e.at >= look.since),
            ),
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

    /// A revert the log never explains is said to be unattributed after `give_up_secs`, and no
    /// more reads are spent on it; until then it is read again at most every `relook`.
    #[test]
    fn an_unexplained_revert_is_given_up_after_its_time() {
        let mut c = PolicyContests::default();
        c.tables.insert(
            "t".into(),
            Table {
                name: "rt".into(),
                id: "/x/rt".into(),
                subnets: BTreeSet::new(),
                resources: BTreeSet::new(),
                reverted_at: 1_000,
                since: 990,
                attribution: Attribution::NotYet,
                looked: None,
            },
        );
        let relook = Duration::from_secs(60);
        let looks = c.due(relook, 3600, 1_010);
        assert_eq!(looks.len(), 1);
        assert_eq!(
            looks[0].since, 990,
            "searched from kmsroute's own last write"
        );
        assert!(
            c.due(relook, 3600, 1_020).is_empty(),
            "not again within relook"
        );
        assert!(c.due(relook, 3600, 4_601).is_empty());
        assert_eq!(
            c.tables["t"].attribution,
            Attribution::GaveUp { after_secs: 3600 }
        );
        let m = message("rt", &contested(), &c.tables["t"].attribution);
        assert!(
            m.contains("showed no other writer's change to it in the 1 h after the revert"),
            "{m}"
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
