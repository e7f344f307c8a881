//! The checkers: what a run promised and whether it held. Each broken promise is a
//! [`Violation`] naming the invariant and the operations that broke it; a run with any
//! violation fails.
//!
//! The invariants (the README's guarantees, as a tester reads them):
//! - `answered_once`: every operation sent has exactly one outcome, and no outcome belongs to
//!   an operation never sent;
//! - `right_output`: every answer carries the output the function gives for that input;
//! - `errors_only_under_faults`: errors (429, 5xx) and unknown outcomes happen only while a
//!   fault is in force, or within the recovery bound after it heals; any other 4xx never;
//! - `async_finished`: every accepted async invocation has finished (not pending) by the end,
//!   and ran at least once; reruns are counted as duplicates (at-least-once allows them);
//! - `no_unscheduled_deaths`: no node process ended except by the schedule.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::history::{Event, History, Mode, Outcome};
use crate::scenario::Scenario;

/// A broken promise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
    /// The operations involved (empty for node-level invariants).
    pub ops: Vec<u64>,
}

/// What a run did, for the report.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Stats {
    pub operations: u64,
    pub ok: u64,
    /// Typed errors by code.
    pub failed: BTreeMap<String, u64>,
    pub unknown: u64,
    pub async_accepted: u64,
    /// Async invocations that ran more than once (at-least-once), and the extra runs.
    pub async_rerun: u64,
    pub duplicate_runs: u64,
    /// p99 latency of answered operations sent while a fault was in force (or recovering),
    /// and of the others, µs.
    pub p99_us_under_faults: Option<u64>,
    pub p99_us_otherwise: Option<u64>,
}

/// The checkers' verdict.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Report {
    pub violations: Vec<Violation>,
    pub stats: Stats,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// The cluster-wide periods under a fault, each extended by the recovery bound: `[start,
/// end + recovery)`. A fault anywhere may slow or fail calls everywhere (a forwarded call, a
/// registry not yet synced), so an error is excused by any node's fault.
fn excused_periods(scenario: &Scenario) -> Vec<(u64, u64)> {
    let recovery = scenario.expect.recovery_ms.saturating_mul(1000);
    scenario
        .fault_windows()
        .into_iter()
        .map(|w| (w.start_us, w.end_us.saturating_add(recovery)))
        .collect()
}

fn overlaps(periods: &[(u64, u64)], from: u64, to: u64) -> bool {
    periods.iter().any(|&(s, e)| from < e && to >= s)
}

fn p99(mut v: Vec<u64>) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let rank = (v.len() * 99).div_ceil(100).max(1);
    Some(v[rank - 1])
}

/// Checks `history` against `scenario`'s promises. `expected(mode, input)` is the output the
/// workload's function gives (`None`: not checked).
pub fn check(
    history: &History,
    scenario: &Scenario,
    expected: impl Fn(Mode, &str) -> Option<String>,
) -> Report {
    let mut report = Report::default();
    let mut v = |invariant: &'static str, detail: String, ops: Vec<u64>| {
        report.violations.push(Violation {
            invariant,
            detail,
            ops,
        })
    };
    struct Sent<'a> {
        at_us: u64,
        mode: Mode,
        input: &'a str,
        outcomes: Vec<(u64, &'a Outcome)>,
    }
    let mut sent: BTreeMap<u64, Sent<'_>> = BTreeMap::new();
    let mut finished: HashMap<u64, (&str, u32)> = HashMap::new();
    let mut orphans = Vec::new();
    for e in &history.events {
        match e {
            Event::Invoke {
                op,
                at_us,
                mode,
                input,
                ..
            } => {
                if sent
                    .insert(
                        *op,
                        Sent {
                            at_us: *at_us,
                            mode: *mode,
                            input,
                            outcomes: Vec::new(),
                        },
                    )
                    .is_some()
                {
                    v(
                        "answered_once",
                        format!("operation {op} sent twice"),
                        vec![*op],
                    );
                }
            }
            Event::Complete { op, at_us, outcome } => match sent.get_mut(op) {
                Some(s) => s.outcomes.push((*at_us, outcome)),
                None => orphans.push(*op),
            },
            Event::Finished {
                op,
                status,
                attempts,
                ..
            } => {
                finished.insert(*op, (status.as_str(), *attempts));
            }
            Event::NodeExit {
                node,
                at_us,
                scheduled: false,
            } => v(
                "no_unscheduled_deaths",
                format!(
                    "node {node} ended at {} ms, not by the schedule",
                    at_us / 1000
                ),
                Vec::new(),
            ),
            Event::NodeExit { .. } => {}
        }
    }
    if !orphans.is_empty() {
        v(
            "answered_once",
            format!("{} outcomes of operations never sent", orphans.len()),
            orphans,
        );
    }
    let excused = excused_periods(scenario);
    let mut lost = Vec::new();
    let mut twice = Vec::new();
    let mut wrong = Vec::new();
    let mut unexcused = Vec::new();
    let mut client_errors = Vec::new();
    let mut unfinished = Vec::new();
    let mut uncounted = Vec::new();
    let (mut under, mut otherwise) = (Vec::new(), Vec::new());
    let stats = &mut report.stats;
    for (&op, s) in &sent {
        stats.operations += 1;
        let (done_at, outcome) = match s.outcomes.as_slice() {
            [] => {
                lost.push(op);
                continue;
            }
            [one] => *one,
            [first, ..] => {
                twice.push(op);
                *first
            }
        };
        let in_fault = overlaps(&excused, s.at_us, done_at);
        match outcome {
            Outcome::Ok { output, .. } => {
                stats.ok += 1;
                let latency = done_at.saturating_sub(s.at_us);
                if in_fault { &mut under } else { &mut otherwise }.push(latency);
                if expected(s.mode, s.input).is_some_and(|want| want != *output) {
                    wrong.push(op);
                }
            }
            Outcome::Accepted { .. } => {
                stats.async_accepted += 1;
                // Finished means a final status the API gives (`succeeded`, `failed`); still
                // pending, unreadable (its node is gone) or never read is not finished.
                match finished.get(&op) {
                    Some((status, _)) if !matches!(*status, "succeeded" | "failed") => {
                        unfinished.push(op)
                    }
                    None => unfinished.push(op),
                    Some((_, 0)) => uncounted.push(op),
                    Some((_, attempts)) if *attempts > 1 => {
                        stats.async_rerun += 1;
                        stats.duplicate_runs += u64::from(attempts - 1);
                    }
                    Some(_) => {}
                }
            }
            Outcome::Failed { code, status } => {
                *stats.failed.entry(code.clone()).or_default() += 1;
                let server_side = *status == 429 || *status >= 500;
                if !server_side {
                    client_errors.push(op);
                } else if !in_fault {
                    unexcused.push(op);
                }
            }
            Outcome::Unknown { .. } => {
                stats.unknown += 1;
                if !in_fault {
                    unexcused.push(op);
                }
            }
        }
    }
    stats.p99_us_under_faults = p99(under);
    stats.p99_us_otherwise = p99(otherwise);
    for (invariant, what, ops) in [
        ("answered_once", "operations sent and never answered", lost),
        ("answered_once", "operations answered more than once", twice),
        ("right_output", "answers with the wrong output", wrong),
        (
            "errors_only_under_faults",
            "errors or unknown outcomes while no fault was in force",
            unexcused,
        ),
        (
            "errors_only_under_faults",
            "client errors (4xx other than 429): the workload or the node is wrong",
            client_errors,
        ),
        (
            "async_finished",
            "accepted async invocations not finished by the end",
            unfinished,
        ),
        (
            "async_finished",
            "async invocations finished with 0 attempts counted",
            uncounted,
        ),
    ] {
        if !ops.is_empty() {
            v(invariant, format!("{} {what}", ops.len()), ops);
        }
    }
    report
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn scenario() -> Scenario {
        Scenario::parse(
            r#"
            name = "kill-b"
            [cluster]
            nodes = 3
            [workload]
            function = "echo"
            rate_per_s = 10
            duration_s = 60
            [[fault]]
            at_s = 10
            kind = "kill"
            node = "b"
            restart_after_s = 5
            [expect]
            recovery_ms = 2000
            "#,
        )
        .unwrap()
    }

    fn echo(_: Mode, input: &str) -> Option<String> {
        Some(input.to_owned())
    }

    fn sent(h: &mut History, op: u64, at_s: f64, mode: Mode) {
        h.push(Event::Invoke {
            op,
            at_us: (at_s * 1e6).round() as u64,
            node: "a".into(),
            mode,
            input: format!("in-{op}"),
        });
    }

    fn done(h: &mut History, op: u64, at_s: f64, outcome: Outcome) {
        h.push(Event::Complete {
            op,
            at_us: (at_s * 1e6).round() as u64,
            outcome,
        });
    }

    fn ok(op: u64) -> Outcome {
        Outcome::Ok {
            output: format!("in-{op}"),
            ran_on: "a".into(),
        }
    }

    fn failed(code: &str, status: u16) -> Outcome {
        Outcome::Failed {
            code: code.into(),
            status,
        }
    }

    fn invariants(r: &Report) -> Vec<(&'static str, Vec<u64>)> {
        r.violations
            .iter()
            .map(|v| (v.invariant, v.ops.clone()))
            .collect()
    }

    #[test]
    fn a_run_whose_errors_all_fall_in_the_fault_and_its_recovery_passes() {
        let mut h = History::default();
        sent(&mut h, 1, 1.0, Mode::Sync);
        done(&mut h, 1, 1.001, ok(1));
        // During the kill (10-15 s) and its recovery (to 17 s): excused.
        sent(&mut h, 2, 11.0, Mode::Sync);
        done(&mut h, 2, 11.5, failed("unavailable", 503));
        sent(&mut h, 3, 16.5, Mode::Sync);
        done(
            &mut h,
            3,
            18.0,
            Outcome::Unknown {
                reason: "reset".into(),
            },
        );
        sent(&mut h, 4, 12.0, Mode::Async);
        done(&mut h, 4, 12.1, Outcome::Accepted { id: "x".into() });
        h.push(Event::Finished {
            op: 4,
            at_us: 60_000_000,
            status: "succeeded".into(),
            attempts: 2,
            output: Some("in-4".into()),
        });
        h.push(Event::NodeExit {
            node: "b".into(),
            at_us: 10_000_000,
            scheduled: true,
        });
        let r = check(&h, &scenario(), echo);
        assert!(r.passed(), "{:?}", r.violations);
        let s = &r.stats;
        assert_eq!(
            (s.operations, s.ok, s.unknown, s.async_accepted),
            (4, 1, 1, 1)
        );
        assert_eq!((s.async_rerun, s.duplicate_runs), (1, 1));
        assert_eq!(s.failed["unavailable"], 1);
        assert_eq!(s.p99_us_otherwise, Some(1000));
        assert_eq!(s.p99_us_under_faults, None);
    }

    #[test]
    fn lost_doubled_and_orphaned_outcomes_break_answered_once() {
        let mut h = History::default();
        sent(&mut h, 1, 1.0, Mode::Sync);
        sent(&mut h, 2, 1.0, Mode::Sync);
        done(&mut h, 2, 1.1, ok(2));
        done(&mut h, 2, 1.2, ok(2));
        done(&mut h, 9, 1.3, ok(9));
        let r = check(&h, &scenario(), echo);
        let found = invariants(&r);
        assert!(found.contains(&("answered_once", vec![9])), "{found:?}");
        assert!(found.contains(&("answered_once", vec![1])), "{found:?}");
        assert!(found.contains(&("answered_once", vec![2])), "{found:?}");
    }

    #[test]
    fn a_wrong_output_an_error_outside_faults_and_a_client_error_are_each_named() {
        let mut h = History::default();
        sent(&mut h, 1, 1.0, Mode::Sync);
        done(
            &mut h,
            1,
            1.1,
            Outcome::Ok {
                output: "someone else's".into(),
                ran_on: "c".into(),
            },
        );
        // Well after the kill's recovery ended (17 s).
        sent(&mut h, 2, 30.0, Mode::Sync);
        done(&mut h, 2, 30.1, failed("overloaded", 429));
        sent(&mut h, 3, 31.0, Mode::Map);
        done(
            &mut h,
            3,
            31.1,
            Outcome::Unknown {
                reason: "timeout".into(),
            },
        );
        // A 4xx is never excused, even during the fault.
        sent(&mut h, 4, 11.0, Mode::Sync);
        done(&mut h, 4, 11.1, failed("not_found", 404));
        let found = invariants(&check(&h, &scenario(), echo));
        assert!(found.contains(&("right_output", vec![1])), "{found:?}");
        assert!(
            found.contains(&("errors_only_under_faults", vec![2, 3])),
            "{found:?}"
        );
        assert!(
            found.contains(&("errors_only_under_faults", vec![4])),
            "{found:?}"
        );
    }

    #[test]
    fn unfinished_or_uncounted_async_work_and_an_unscheduled_death_fail_the_run() {
        let mut h = History::default();
        for op in 1..=4 {
            sent(&mut h, op, 1.0, Mode::Async);
            done(
                &mut h,
                op,
                1.1,
                Outcome::Accepted {
                    id: format!("{op}"),
                },
            );
        }
        h.push(Event::Finished {
            op: 1,
            at_us: 59_000_000,
            status: "pending".into(),
            attempts: 1,
            output: None,
        });
        h.push(Event::Finished {
            op: 2,
            at_us: 59_000_000,
            status: "succeeded".into(),
            attempts: 0,
            output: Some("in-2".into()),
        });
        h.push(Event::Finished {
            op: 4,
            at_us: 59_000_000,
            status: "unreadable".into(),
            attempts: 0,
            output: None,
        });
        h.push(Event::NodeExit {
            node: "c".into(),
            at_us: 20_000_000,
            scheduled: false,
        });
        let r = check(&h, &scenario(), echo);
        let found = invariants(&r);
        assert!(
            found.contains(&("async_finished", vec![1, 3, 4])),
            "{found:?}"
        );
        assert!(found.contains(&("async_finished", vec![2])), "{found:?}");
        assert!(
            r.violations
                .iter()
                .any(|v| v.invariant == "no_unscheduled_deaths" && v.detail.contains("node c")),
            "{found:?}"
        );
        assert!(!r.passed());
    }

    #[test]
    fn p99_is_the_rank_99_value_split_by_fault_periods() {
        assert_eq!(p99(Vec::new()), None);
        assert_eq!(p99((1..=100).collect()), Some(99));
        assert_eq!(p99(vec![5]), Some(5));
        let mut h = History::default();
        for op in 0..10u64 {
            sent(&mut h, op, 12.0, Mode::Sync);
            done(&mut h, op, 12.0 + op as f64 / 1000.0, ok(op));
        }
        let r = check(&h, &scenario(), echo);
        assert_eq!(r.stats.p99_us_under_faults, Some(9000));
        assert_eq!(r.stats.p99_us_otherwise, None);
    }
}
