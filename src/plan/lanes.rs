//! Lanes: one route table's writes in order, tables side by side.

use super::{PlannedWrite, TablePlan, is_prerequisite};
use crate::ids::{RouteTableId, SubnetId};
use std::collections::HashMap;

/// Puts one table's writes in that table's lane (a new one, or the one an earlier policy's
/// writes to the table opened: one table's writes never run side by side).
pub(super) struct Lanes {
    pub(super) tables: Vec<TablePlan>,
    pub(super) at: HashMap<RouteTableId, usize>,
}

impl Lanes {
    pub(super) fn new() -> Lanes {
        Lanes {
            tables: Vec::new(),
            at: HashMap::new(),
        }
    }

    /// Puts `writes[range]`, all of them writes to `table`, in the table's lane, and the
    /// `subnets` they concern beside them (consumed only when there is a write).
    pub(super) fn add(
        &mut self,
        writes: &[PlannedWrite],
        range: std::ops::Range<usize>,
        table: &RouteTableId,
        subnets: impl IntoIterator<Item = SubnetId>,
    ) {
        let Some(added) = writes.get(range.clone()).filter(|w| !w.is_empty()) else {
            return;
        };
        let (lane, opened) = match self.at.get(table) {
            Some(&lane) => (lane, false),
            None => {
                self.at.insert(table.clone(), self.tables.len());
                self.tables.push(TablePlan {
                    table: table.clone(),
                    writes: Vec::new(),
                    prerequisites: Vec::new(),
                    subnets: Vec::new(),
                });
                (self.tables.len() - 1, true)
            }
        };
        let lane = &mut self.tables[lane];
        for (i, w) in range.zip(added) {
            lane.writes.push(i);
            if is_prerequisite(&w.write) {
                lane.prerequisites.push(i);
            }
        }
        if opened {
            // One caller's subnets are distinct already; only a second one's need checking.
            lane.subnets.extend(subnets);
        } else {
            for s in subnets {
                if !lane.subnets.contains(&s) {
                    lane.subnets.push(s);
                }
            }
        }
    }
}
