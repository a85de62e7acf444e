//! Contested route tables: someone keeps undoing kmsroute's writes. Pure, like the planner.
//!
//! A *revert* is a pass whose writes to a route table restore something that was kmsroute's
//! there before: an owned route (deleted, or replaced with another prefix or next hop), a
//! subnet's association with the table, or the table itself (deleted). What is kmsroute's is
//! what it wrote and what it found in place (a subnet in sync: its association and the
//! policy's routes in its table), so a route found in sync when the controller started is
//! kmsroute's from the first pass, and its first removal is a revert. One pass counts at most
//! one revert per table, however many routes the other writer removed at once (a template that
//! PUTs the table whole removes all of them). A table with `threshold` reverts within `window`
//! is *contested*; it stops being contested once a whole window passes without a revert.
//!
//! Each mark keeps when kmsroute last wrote it or saw it in place: the revert happened after
//! that, so the Activity Log is searched from there ([`Revert::since`]) and a write before it
//! is never named.

use super::Write;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// What kmsroute wrote to a table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mark {
    /// The table itself (kmsroute created it).
    Table,
    /// An owned route, by lower-cased name.
    Route(String),
    /// A subnet's association with the table, by the subnet's lower-cased ID.
    Association(String),
}

/// What one revert undid, for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Undone {
    Routes,
    Association,
    Table,
}

impl Undone {
    pub fn describe(self) -> &'static str {
        match self {
            Undone::Routes => "routes removed or replaced",
            Undone::Association => "subnet association removed",
            Undone::Table => "table deleted",
        }
    }
}

/// The thresholds: `threshold` reverts within `window` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContestSettings {
    pub threshold: usize,
    pub window_secs: i64,
    /// How soon the Activity Log is read again for a revert it has not shown yet.
    pub relook_secs: u64,
    /// How long after a revert the Activity Log is still searched for who did it (Azure
    /// documents minutes of lag; default an hour); after that the revert is said to be
    /// unattributed.
    pub give_up_secs: i64,
    /// Taken off a mark's time before it bounds the search: what was seen in place was read
    /// up to one inventory refresh earlier, and ARM's clock is not ours (default 30 s).
    pub margin_secs: i64,
}

impl Default for ContestSettings {
    fn default() -> Self {
        ContestSettings {
            threshold: 3,
            window_secs: 6 * 3600,
            relook_secs: 60,
            give_up_secs: 3600,
            margin_secs: 30,
        }
    }
}

/// One table's revert in one pass: what was undone, and since when it had been kmsroute's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revert {
    pub undone: BTreeSet<Undone>,
    /// The earliest time (Unix seconds) at which one of the restored marks was last written
    /// or seen in place by kmsroute, less the margin: the other writer acted after it.
    pub since: i64,
}

/// One table's reverts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Tally {
    /// When each revert within the window was seen (Unix seconds), oldest first.
    times: VecDeque<i64>,
    /// Reverts since the table became contested (or since the first one, if it is not).
    episode: usize,
    /// When the current episode's first revert was seen.
    since: Option<i64>,
    contested: bool,
    /// What the last revert undid.
    last: BTreeSet<Undone>,
    /// When the table was last announced (the Warning Event), in this episode.
    announced: Option<i64>,
}

/// A table's state, for status and Events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contested {
    pub table: String,
    /// Reverts since the episode began.
    pub reverts: usize,
    pub since: i64,
    pub last: i64,
    pub undone: BTreeSet<Undone>,
}

/// What is kmsroute's (written or found in place) and the reverts of it, per table (by
/// lower-cased ID).
///
/// The marks are kept as 64-bit hashes of (table, mark) with a 32-bit time: at 100,000 subnets
/// a first convergence writes 150,000 routes and associations, which as strings would cost tens
/// of MB for as long as the process lives.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    settings: ContestSettings,
    /// Table hash → mark hash → when kmsroute last wrote it or saw it in place ([`stamp`]).
    own: HashMap<u64, HashMap<u64, u32>>,
    tallies: BTreeMap<String, Tally>,
}

/// Unix seconds as 32 bits (until 2106); earlier times count as 0.
fn stamp(t: i64) -> u32 {
    u32::try_from(t.max(0)).unwrap_or(u32::MAX)
}

fn hash_of(x: &impl std::hash::Hash) -> u64 {
    use std::hash::Hasher;
    let mut h = std::hash::DefaultHasher::new();
    x.hash(&mut h);
    h.finish()
}

/// The mark a write leaves (or restores), and the table it is in.
fn mark(w: &Write) -> Option<(String, Mark)> {
    match w {
        Write::CreateRouteTable { table, .. } => Some((table.key().to_string(), Mark::Table)),
        Write::PutRoute { table, route, .. } => Some((
            table.key().to_string(),
            Mark::Route(route.name.to_ascii_lowercase()),
        )),
        Write::AssociateSubnet { subnet, table } => Some((
            table.key().to_string(),
            Mark::Association(subnet.key().to_string()),
        )),
        _ => None,
    }
}

fn undone(m: &Mark) -> Undone {
    match m {
        Mark::Table => Undone::Table,
        Mark::Route(_) => Undone::Routes,
        Mark::Association(_) => Undone::Association,
    }
}

impl Ledger {
    pub fn new(settings: ContestSettings) -> Ledger {
        Ledger {
            settings,
            ..Ledger::default()
        }
    }

    /// The tables whose pending writes restore something that was kmsroute's, with what was
    /// undone and since when it had been kmsroute's: each is one revert. Call before
    /// [`Ledger::wrote`] records the same writes.
    pub fn reverts<'a>(
        &self,
        writes: impl IntoIterator<Item = &'a Write>,
    ) -> BTreeMap<String, Revert> {
        let mut out: BTreeMap<String, Revert> = BTreeMap::new();
        for (table, m) in writes.into_iter().filter_map(mark) {
            let Some(&at) = self
                .own
                .get(&hash_of(&table))
                .and_then(|own| own.get(&hash_of(&m)))
            else {
                continue;
            };
            let since = i64::from(at) - self.settings.margin_secs;
            let r = out.entry(table).or_insert_with(|| Revert {
                undone: BTreeSet::new(),
                since,
            });
            r.undone.insert(undone(&m));
            r.since = r.since.min(since);
        }
        out
    }

    /// A write of kmsroute's went through at `at`.
    pub fn wrote(&mut self, w: &Write, at: i64) {
        // The ledger's tables are hashed by their lower-cased key text, as `mark` gives it.
        let table_hash = |t: &crate::ids::RouteTableId| hash_of(&t.key().to_string());
        match w {
            Write::DeleteRoute { table, name, .. } => {
                if let Some(own) = self.own.get_mut(&table_hash(table)) {
                    own.remove(&hash_of(&Mark::Route(name.to_ascii_lowercase())));
                }
            }
            Write::DissociateSubnet { subnet, table } => {
                if let Some(own) = self.own.get_mut(&table_hash(table)) {
                    own.remove(&hash_of(&Mark::Association(subnet.key().to_string())));
                }
            }
            Write::DeleteRouteTable { table } => self.forget(&table.key().to_string()),
            _ => {
                if let Some((table, m)) = mark(w) {
                    self.own
                        .entry(hash_of(&table))
                        .or_default()
                        .insert(hash_of(&m), stamp(at));
                }
            }
        }
    }

    /// A subnet was seen in sync at `at`: its association with `table` and the policy's
    /// routes there (`route_names`) are kmsroute's, whoever put them there.
    pub fn seen_in_place<'a>(
        &mut self,
        table: &str,
        subnet: &str,
        route_names: impl IntoIterator<Item = &'a str>,
        at: i64,
    ) {
        let own = self.own.entry(hash_of(&table)).or_default();
        let at = stamp(at);
        own.insert(hash_of(&Mark::Association(subnet.to_string())), at);
        for name in route_names {
            own.insert(hash_of(&Mark::Route(name.to_ascii_lowercase())), at);
        }
    }

    /// Records the reverts seen at `now`; returns the tables that became contested now.
    pub fn record(&mut self, reverts: &BTreeMap<String, Revert>, now: i64) -> Vec<String> {
        self.expire(now);
        let mut became = Vec::new();
        for (table, what) in reverts {
            let t = self.tallies.entry(table.clone()).or_default();
            t.times.push_back(now);
            t.episode += 1;
            t.since.get_or_insert(now);
            t.last = what.undone.clone();
            if !t.contested && t.times.len() >= self.settings.threshold {
                t.contested = true;
                became.push(table.clone());
            }
        }
        became
    }

    /// Drops reverts older than the window; a table with none left is no longer contested.
    fn expire(&mut self, now: i64) {
        let cutoff = now - self.settings.window_secs;
        self.tallies.retain(|_, t| {
            while t.times.front().is_some_and(|&at| at <= cutoff) {
                t.times.pop_front();
            }
            !t.times.is_empty()
        });
    }

    /// The contested tables at `now`.
    pub fn contested(&mut self, now: i64) -> Vec<Contested> {
        self.expire(now);
        self.tallies
            .iter()
            .filter(|(_, t)| t.contested)
            .map(|(table, t)| Contested {
                table: table.clone(),
                reverts: t.episode,
                since: t.since.unwrap_or(now),
                last: t.times.back().copied().unwrap_or(now),
                undone: t.last.clone(),
            })
            .collect()
    }

    /// Whether a Warning Event should say that `table` is contested: once per table per
    /// window, not once per revert.
    pub fn announce(&mut self, table: &str, now: i64) -> bool {
        let window = self.settings.window_secs;
        match self.tallies.get_mut(table) {
            Some(t) if t.contested && t.announced.is_none_or(|at| now - at >= window) => {
                t.announced = Some(now);
                true
            }
            _ => false,
        }
    }

    /// The policy let the table go (released, or deleted with it).
    pub fn forget(&mut self, table: &str) {
        self.own.remove(&hash_of(&table));
        self.tallies.remove(table);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{RouteTableId, SubnetId};
    use crate::model::{NextHopType, Route};
    use crate::plan::RouteChange;

    const T: &str = "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/rg/providers/Microsoft.Network/routeTables/rt-spoke1";
    const S: &str = "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/app";

    fn table() -> RouteTableId {
        RouteTableId::parse(T).unwrap()
    }

    fn put(name: &str) -> Write {
        Write::PutRoute {
            table: table(),
            route: Route {
                name: name.into(),
                address_prefix: "20.118.99.224/32".into(),
                next_hop_type: NextHopType::Internet,
                next_hop_ip_address: None,
            },
            change: RouteChange::Create,
        }
    }

    fn associate() -> Write {
        Write::AssociateSubnet {
            subnet: SubnetId::parse(S).unwrap(),
            table: table(),
        }
    }

    fn key() -> String {
        table().key().to_string()
    }

    fn settings() -> ContestSettings {
        ContestSettings {
            threshold: 3,
            window_secs: 100,
            margin_secs: 0,
            ..ContestSettings::default()
        }
    }

    fn undone_of(r: &BTreeMap<String, Revert>) -> BTreeSet<Undone> {
        r[&key()].undone.clone()
    }

    #[test]
    fn a_first_write_is_no_revert_and_restoring_our_own_write_is_one() {
        let mut l = Ledger::new(settings());
        let first = [put("kms-a"), put("kms-b")];
        assert!(l.reverts(&first).is_empty());
        first.iter().for_each(|w| l.wrote(w, 10));
        // Someone rewrote the table whole: both routes come back in one pass, one revert.
        let r = l.reverts(&first);
        assert_eq!(r.len(), 1);
        assert_eq!(undone_of(&r), BTreeSet::from([Undone::Routes]));
        assert_eq!(r[&key()].since, 10, "searched from kmsroute's own write");
        // A route kmsroute never wrote is no revert (another policy's, or a new address).
        assert!(l.reverts(&[put("kms-new")]).is_empty());
    }

    #[test]
    fn an_association_is_told_apart_from_routes() {
        let mut l = Ledger::new(settings());
        l.wrote(&associate(), 0);
        l.wrote(&put("kms-a"), 0);
        let r = l.reverts(&[associate()]);
        assert_eq!(undone_of(&r), BTreeSet::from([Undone::Association]));
        let both = l.reverts(&[associate(), put("kms-a")]);
        assert_eq!(
            undone_of(&both),
            BTreeSet::from([Undone::Association, Undone::Routes])
        );
    }

    #[test]
    fn threshold_reverts_within_the_window_contest_a_table_until_a_window_passes_without() {
        let mut l = Ledger::new(settings());
        let w = [put("kms-a")];
        l.wrote(&w[0], 0);
        let r = l.reverts(&w);
        assert!(l.record(&r, 0).is_empty());
        assert!(l.record(&r, 10).is_empty());
        assert!(l.contested(20).is_empty());
        assert_eq!(l.record(&r, 20), vec![key()]);
        assert!(l.record(&r, 30).is_empty(), "contested once, not again");
        let c = l.contested(31);
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].reverts, c[0].since, c[0].last), (4, 0, 30));
        // Still contested while reverts keep coming within the window.
        assert_eq!(l.contested(129).len(), 1);
        // A whole window without a revert ends it.
        assert!(l.contested(131).is_empty());
        // Spread-out reverts (fewer than 3 per window) never contest it.
        let mut slow = Ledger::new(settings());
        slow.wrote(&w[0], 0);
        for t in [0, 60, 120, 180, 240] {
            assert!(slow.record(&slow.reverts(&w), t).is_empty());
        }
        assert!(slow.contested(241).is_empty());
    }

    #[test]
    fn a_contested_table_is_announced_once_per_window() {
        let mut l = Ledger::new(settings());
        let w = [put("kms-a")];
        l.wrote(&w[0], 0);
        for t in [0, 1, 2] {
            l.record(&l.reverts(&w), t);
        }
        assert!(l.announce(&key(), 2));
        assert!(!l.announce(&key(), 3));
        l.record(&l.reverts(&w), 50);
        assert!(
            !l.announce(&key(), 50),
            "a revert is no news while contested"
        );
        l.record(&l.reverts(&w), 101);
        assert!(l.announce(&key(), 102), "once more after a window");
        assert!(!l.announce("another table", 102));
    }

    #[test]
    fn what_kmsroute_itself_removes_or_lets_go_is_no_longer_its_own() {
        let mut l = Ledger::new(settings());
        l.wrote(&put("kms-a"), 0);
        l.wrote(
            &Write::DeleteRoute {
                table: table(),
                name: "KMS-A".into(),
                address_prefix: "20.118.99.224/32".into(),
            },
            1,
        );
        assert!(l.reverts(&[put("kms-a")]).is_empty());
        l.wrote(&associate(), 2);
        l.wrote(
            &Write::DissociateSubnet {
                subnet: SubnetId::parse(S).unwrap(),
                table: table(),
            },
            3,
        );
        assert!(l.reverts(&[associate()]).is_empty());
        l.wrote(&put("kms-b"), 4);
        l.forget(&key());
        assert!(l.reverts(&[put("kms-b")]).is_empty());
    }

    /// Issue 32, item 8: a route and an association found in sync (never written by this
    /// process, as after a restart) are kmsroute's: their first restoration is a revert, and
    /// the search for who did it starts when they were last seen in place.
    #[test]
    fn what_was_found_in_sync_is_kmsroutes_from_the_first_pass() {
        let mut l = Ledger::new(settings());
        let subnet = SubnetId::parse(S).unwrap();
        l.seen_in_place(&key(), &subnet.key().to_string(), ["KMS-A", "kms-b"], 500);
        let r = l.reverts(&[put("kms-a")]);
        assert_eq!(undone_of(&r), BTreeSet::from([Undone::Routes]));
        assert_eq!(r[&key()].since, 500);
        assert_eq!(
            undone_of(&l.reverts(&[associate()])),
            BTreeSet::from([Undone::Association])
        );
        // A route the policy never had there (a new KMS address) is no revert.
        assert!(l.reverts(&[put("kms-new")]).is_empty());
        // Seen again later: the search starts from the later sighting.
        l.seen_in_place(&key(), &subnet.key().to_string(), ["kms-a"], 900);
        assert_eq!(l.reverts(&[put("kms-a")])[&key()].since, 900);
        // Several marks restored at once: from the earliest of them.
        assert_eq!(l.reverts(&[put("kms-a"), put("kms-b")])[&key()].since, 500);
        let margin = Ledger::new(ContestSettings {
            margin_secs: 30,
            ..settings()
        });
        let mut margin = margin;
        margin.wrote(&put("kms-a"), 1000);
        assert_eq!(margin.reverts(&[put("kms-a")])[&key()].since, 970);
    }
}
