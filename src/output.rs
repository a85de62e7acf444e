//! Human output of plans and pass reports: the plan grouped by route table, and the
//! `kubectl get krp`-shaped summary. Pure string building, tested through the CLI.

use crate::executor::Report;
use crate::plan::{Plan, Verdict};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The plan grouped by route table: each table's subnets with verdicts, then its writes.
pub fn plan_table(plan: &Plan) -> String {
    let mut groups: BTreeMap<String, (String, Vec<String>, Vec<String>)> = BTreeMap::new();
    let none = "~".to_string();
    for v in &plan.verdicts {
        let (key, title) = match &v.route_table {
            Some(t) => (
                t.key().to_string(),
                format!(
                    "route table {} (resource group {}, subscription {})",
                    t.name(),
                    t.resource_group(),
                    t.subscription()
                ),
            ),
            None => (none.clone(), "no route table".to_string()),
        };
        let g = groups
            .entry(key)
            .or_insert_with(|| (title, Vec::new(), Vec::new()));
        let mut why = match &v.verdict {
            Verdict::InSync => String::new(),
            other => other.message(),
        };
        for w in &v.warnings {
            why.push_str(&format!(
                "{}warning {}: {}",
                if why.is_empty() { "" } else { "; " },
                w.code(),
                w.message()
            ));
        }
        g.1.push(format!(
            "  {:<34} {:<11} {:<16} {}",
            format!("{}/{}", v.subnet.vnet_name(), v.subnet.name()),
            v.policy,
            verdict_label(&v.verdict),
            why
        ));
    }
    for w in &plan.writes {
        let key = w.write.table().key().to_string();
        let g = groups.entry(key).or_insert_with(|| {
            (
                format!("route table {}", w.write.table().name()),
                Vec::new(),
                Vec::new(),
            )
        });
        g.2.push(format!("    + {}", w.write));
    }
    let mut out = String::new();
    for (title, subnets, writes) in groups.into_values() {
        let _ = writeln!(out, "{title}");
        let _ = writeln!(
            out,
            "  {:<34} {:<11} {:<16} WHY",
            "SUBNET", "POLICY", "VERDICT"
        );
        for s in subnets {
            let _ = writeln!(out, "{}", s.trim_end());
        }
        if !writes.is_empty() {
            let _ = writeln!(out, "  writes:");
            for w in writes {
                let _ = writeln!(out, "{w}");
            }
        }
        out.push('\n');
    }
    let _ = writeln!(out, "{} write(s) planned.", plan.writes.len());
    out
}

pub fn verdict_label(v: &Verdict) -> String {
    match v {
        Verdict::InSync => "InSync".into(),
        Verdict::Drift { .. } => "Drift".into(),
        Verdict::Conflict { .. } => "Conflict".into(),
        Verdict::Skipped { reason } => format!("Skipped:{}", reason.code()),
        Verdict::Error { reason, .. } => format!("Error:{}", reason.code()),
    }
}

/// `kubectl get krp` columns, one line per policy.
pub fn status_table(report: &Report) -> String {
    let mut out = format!(
        "{:<20} {:<6} {:<8} {:>7} {:>7} {:>9} {:>8} {:>7} {:>6}\n",
        "NAME", "READY", "MODE", "SUBNETS", "INSYNC", "CONFLICTS", "REPAIRED", "SKIPPED", "ERRORS"
    );
    for p in &report.policies {
        let s = &p.summary;
        let _ = writeln!(
            out,
            "{:<20} {:<6} {:<8} {:>7} {:>7} {:>9} {:>8} {:>7} {:>6}",
            p.name,
            if p.ready() { "True" } else { "False" },
            format!("{:?}", p.mode),
            s.subnets_matched,
            s.in_sync,
            s.conflicts,
            s.repaired,
            s.skipped,
            s.errors
        );
    }
    out
}

/// The problems of every policy, as `kubectl describe` would list them.
pub fn problems_text(report: &Report) -> String {
    problems_text_limited(report, usize::MAX)
}

/// [`problems_text`] with at most `limit` problems per policy (`plan --summary`).
pub fn problems_text_limited(report: &Report, limit: usize) -> String {
    let mut out = String::new();
    for p in &report.policies {
        if p.nothing_selected() {
            let _ = writeln!(
                out,
                "{}: warning NothingSelected: the selector matches no subnet in its subscriptions",
                p.name
            );
        }
        if p.problems.is_empty() {
            continue;
        }
        let total = p.problems_total.max(p.problems.len());
        let shown = p.problems.len().min(limit);
        if shown < total {
            let _ = writeln!(
                out,
                "{}: {total} problem(s), showing {shown} of {total} (the most serious first)",
                p.name
            );
        } else {
            let _ = writeln!(out, "{}: {total} problem(s)", p.name);
        }
        for pr in p.problems.iter().take(limit) {
            let id = pr
                .subnet_id
                .split("/virtualNetworks/")
                .nth(1)
                .unwrap_or(&pr.subnet_id)
                .replace("/subnets/", "/");
            let _ = writeln!(out, "  {:<18} {:<28} {}", pr.reason, id, pr.message);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Mode, Problem, Summary};
    use crate::executor::{PolicyReport, Reason};

    fn report(problems: usize, total: usize) -> Report {
        Report::unwritten(
            Plan::default(),
            vec![PolicyReport {
                name: "spokes".into(),
                mode: Mode::Enforce,
                summary: Summary {
                    subnets_matched: 5,
                    ..Summary::default()
                },
                problems: (0..problems)
                    .map(|i| Problem {
                        subnet_id: format!("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/s{i}"),
                        reason: Reason::Conflict.code().into(),
                        message: "a foreign route".into(),
                    })
                    .collect(),
                problems_total: total,
                ..PolicyReport::default()
            }],
            false,
        )
    }

    #[test]
    fn a_cut_problem_list_says_how_many_it_shows_of_how_many() {
        let text = problems_text(&report(50, 2812));
        assert!(
            text.starts_with("spokes: 2812 problem(s), showing 50 of 2812"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 51);
    }

    #[test]
    fn the_summary_shows_the_first_ten() {
        let text = problems_text_limited(&report(50, 50), 10);
        assert!(
            text.starts_with("spokes: 50 problem(s), showing 10 of 50"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 11);
        let all = problems_text(&report(3, 3));
        assert!(all.starts_with("spokes: 3 problem(s)\n"), "{all}");
    }
}
