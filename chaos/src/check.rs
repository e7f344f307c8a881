//! The checkers: what a run promised and whether it held. Each broken promise is a
//! [`Violation`] naming the invariant and the operations that broke it; a run with any
//! violation fails.
//!
//! The invariants (the README's guarantees, as a tester reads them):
//! - `answered_once`: every operation sent has exactly one outcome, and no outcome belongs to
//!   an operation never sent;
//! - `right_output`: every answer, and every finished async invocation's result, carries the
//!   output the function gives for that input;
//! - `errors_only_under_faults`: errors (429, 5xx) and unknown outcomes are excused only when
//!   the operation was sent or ended while its own node was under a fault (or within the
//!   recovery bound after it healed), or within the detection and recovery bounds after
//!   another node's fault began or healed; any other 4xx never. Through `tern-client`
//!   (`via = "client"`) a call can move to any node, so any node's fault window excuses it;
//! - `async_finished`: every accepted async invocation has succeeded by the end and was
//!   counted as run at least once; reruns are counted as duplicates (at-least-once allows them).
//!   The one exception: work accepted by a node that then refused to start on its damaged
//!   store (a `corrupt` sled fault; the refusal names the loss) is counted as stranded, not
//!   broken — refusing is what a node must do when its store lost acknowledged writes; a node
//!   that starts anyway and has lost them breaks this invariant;
//! - `no_unscheduled_deaths`: no node process ended except by the schedule (such a refusal
//!   is not a death);
//! - `impostors_refused`: every impostor ran, no member let it in (its own view never had a
//!   member up), and the members counted its refused handshakes;
//! - `load_kept_its_rate`: the load generator sent every operation its schedule asked for,
//!   none later than `expect.send_lag_ms` (100 ms unless set; otherwise the run measured the
//!   generator, not the cluster);
//! - `membership_followed_faults`: every node saw a killed or paused node, and the nodes a
//!   (two-way) partition cut it off from (those sharing none of its groups), go within the
//!   detection bound, and come back
//!   within the recovery bound after the fault healed, as the runner's polls of the nodes'
//!   cluster views saw it (with [`VIEW_POLL_SLACK_US`] for the polls' period). Not judged: a
//!   fault shorter than the detection bound, an observer under a fault of its own, a node
//!   added after the fault began, what the polls did not watch;
//! - `nodes_added`: every node an `add_node` fault adds joined (it started, the members were
//!   restarted with it among its peers, it saw every member up that was not under a fault,
//!   and it showed the workload's function), every starting member whose faults had all healed saw it up, and over HTTP it
//!   answered the workload's calls (at least one, if any were sent to it);
//! - `registries_converged` ([`crate::convergence`]): after the run, every live node shows
//!   the same entry for the function redeployed during the load, within the convergence
//!   bound, and no acknowledged deploy orders above it.
//!
//! Fault windows come from the runner's `Fault` events (what it did, when), not from the
//! schedule: a restart that takes longer than planned stretches its window.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::history::{Event, History, Mode, Outcome, Phase};
use crate::scenario::{Scenario, Via};

/// How much later than a change of a node's cluster view the runner's polls may see it: a
/// poll every 100 ms, and its answer.
pub const VIEW_POLL_SLACK_US: u64 = 200_000;

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
    /// p99 latency of every completed operation (answered, failed or given up on) sent or
    /// ended while a fault excused errors, and of the others, µs.
    pub p99_us_under_faults: Option<u64>,
    pub p99_us_otherwise: Option<u64>,
    /// The longest a send trailed its schedule, µs.
    pub max_send_lag_us: u64,
    /// Each impostor's attempt, in a line.
    pub impostors: Vec<String>,
    /// What each `corrupt` fault damaged, and each node that then refused to start on its
    /// damaged store, in a line.
    pub damage: Vec<String>,
    /// Accepted async invocations held by a node that refused to start on its damaged
    /// store: not run, and not lost without a word either (reported here, not as a
    /// violation; the node names the loss and an operator restores or accepts it).
    pub async_stranded: u64,
    /// How long each node took to see a node go after a fault began and come back after it
    /// healed, in a line per observer and fault.
    pub membership: Vec<String>,
    /// The longest of those, ms.
    pub detection_ms_max: Option<u64>,
    pub recovery_ms_max: Option<u64>,
    /// The deploys during the run and what the registries converged on, in a line.
    pub registry: Option<String>,
    /// Each node added during the run: how long its join took, who saw it, what it served.
    pub added: Vec<String>,
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

/// The `nodes_added` invariant (see the module's docs) and the report's line per added node.
fn nodes_added(history: &History, scenario: &Scenario, report: &mut Report) {
    let starting = scenario.nodes();
    for &node in scenario.all_nodes().iter().skip(starting.len()) {
        let fault = |phase: Phase| {
            history.events.iter().find_map(|e| match e {
                Event::Fault {
                    node: n,
                    at_us,
                    phase: p,
                    what,
                } if n == node && *p == phase && what == "add_node" => Some(*at_us),
                _ => None,
            })
        };
        let (Some(start), end) = (fault(Phase::Start), fault(Phase::End)) else {
            report.violations.push(Violation {
                invariant: "nodes_added",
                detail: format!("node {node} was never added (its fault did not run)"),
                ops: Vec::new(),
            });
            continue;
        };
        let Some(end) = end else {
            report.violations.push(Violation {
                invariant: "nodes_added",
                detail: format!(
                    "node {node} did not join: it did not start, died while the members \
                     restarted, never saw every member up or never showed the function \
                     (its log says why)"
                ),
                ops: Vec::new(),
            });
            continue;
        };
        // A member whose last fault event is a start is still under it: not judged.
        let healed = |member: &str| {
            history
                .events
                .iter()
                .rev()
                .find_map(|e| match e {
                    Event::Fault { node: n, phase, .. } if n == member => {
                        Some(*phase == Phase::End)
                    }
                    _ => None,
                })
                .unwrap_or(true)
        };
        let saw_it = |member: &str| {
            history.events.iter().any(|e| {
                matches!(e, Event::View { observer, peer, up: true, at_us }
                    if observer == member && peer == node && *at_us >= start)
            })
        };
        let blind: Vec<&str> = starting
            .iter()
            .copied()
            .filter(|m| healed(m) && !saw_it(m))
            .collect();
        if !blind.is_empty() {
            report.violations.push(Violation {
                invariant: "nodes_added",
                detail: format!("{} never saw node {node} up", blind.join(", ")),
                ops: Vec::new(),
            });
        }
        let ops: HashSet<u64> = history
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Invoke { op, node: n, .. } if n == node => Some(*op),
                _ => None,
            })
            .collect();
        let answered = history
            .events
            .iter()
            .filter(|e| {
                matches!(e, Event::Complete { op, outcome: Outcome::Ok { .. } | Outcome::Accepted { .. }, .. }
                    if ops.contains(op))
            })
            .count();
        if !ops.is_empty() && answered == 0 {
            let mut ops: Vec<u64> = ops.iter().copied().collect();
            ops.sort_unstable();
            report.violations.push(Violation {
                invariant: "nodes_added",
                detail: format!(
                    "node {node} answered none of the {} calls sent to it",
                    ops.len()
                ),
                ops,
            });
        }
        let via = match scenario.workload.via {
            Via::Http => "sent to it",
            Via::Client => "sent through its own client",
        };
        report.stats.added.push(format!(
            "{node} joined {} ms after it started (the members restarted with it); answered \
             {answered} of {} calls {via}",
            (end - start) / 1000,
            ops.len(),
        ));
    }
}

/// When errors are excused, from the runner's fault events.
struct Excuses {
    /// Per node: `[start, heal + recovery)`; a fault never healed lasts to the end.
    own: HashMap<String, Vec<(u64, u64)>>,
    /// For every node: `[start, start + detection + recovery)` and `[heal, heal + recovery)`
    /// of any node's fault (a forwarded call, a registry sync, a membership change).
    everyone: Vec<(u64, u64)>,
}

impl Excuses {
    fn from(history: &History, scenario: &Scenario) -> Self {
        let recovery = scenario.expect.recovery_ms.saturating_mul(1000);
        let detection = scenario.expect.detection_ms.saturating_mul(1000);
        let mut open: HashMap<&str, u64> = HashMap::new();
        let mut own: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
        let mut everyone = Vec::new();
        // Through tern-client a call may be on any node (the client fails over and stays
        // where it went), so every node's own windows are everyone's.
        let anywhere = scenario.workload.via == Via::Client;
        for e in &history.events {
            let Event::Fault {
                node, at_us, phase, ..
            } = e
            else {
                continue;
            };
            match phase {
                Phase::Start => {
                    open.entry(node).or_insert(*at_us);
                    everyone.push((*at_us, at_us.saturating_add(detection + recovery)));
                }
                Phase::End => {
                    let start = open.remove(node.as_str()).unwrap_or(*at_us);
                    let window = (start, at_us.saturating_add(recovery));
                    own.entry(node.clone()).or_default().push(window);
                    if anywhere {
                        everyone.push(window);
                    }
                    everyone.push((*at_us, at_us.saturating_add(recovery)));
                }
            }
        }
        for (node, start) in open {
            own.entry(node.to_owned())
                .or_default()
                .push((start, u64::MAX));
            if anywhere {
                everyone.push((start, u64::MAX));
            }
        }
        Self { own, everyone }
    }

    /// Whether an operation for `node`, sent at `sent` and ended at `ended`, may have failed.
    fn excuse(&self, node: &str, sent: u64, ended: u64) -> bool {
        let inside = |periods: &[(u64, u64)]| {
            periods
                .iter()
                .any(|&(s, e)| (s..e).contains(&sent) || (s..e).contains(&ended))
        };
        self.own.get(node).is_some_and(|p| inside(p)) || inside(&self.everyone)
    }
}

/// A node that should see another go, and come back.
struct Separation<'a> {
    observer: &'a str,
    peer: &'a str,
    what: &'a str,
    start_us: u64,
    end_us: Option<u64>,
}

/// The `membership_followed_faults` checker (see the module's doc).
fn membership(history: &History, scenario: &Scenario, report: &mut Report) {
    let Some(until_us) = history.events.iter().find_map(|e| match e {
        Event::ViewsWatched { until_us } => Some(*until_us),
        _ => None,
    }) else {
        return;
    };
    let detection = scenario.expect.detection_ms.saturating_mul(1000);
    let recovery = scenario.expect.recovery_ms.saturating_mul(1000);
    // Every kill, pause and partition as the runner did it: (node, what, start, heal); and
    // every stop for a restart (rolling, or to add a node), when a node sees nothing either.
    let mut open: HashMap<(&str, &str), u64> = HashMap::new();
    let mut spans: Vec<(&str, &str, u64, Option<u64>)> = Vec::new();
    let mut restarts: Vec<(&str, u64, Option<u64>)> = Vec::new();
    for e in &history.events {
        let Event::Fault {
            node,
            at_us,
            phase,
            what,
        } = e
        else {
            continue;
        };
        if !matches!(
            what.as_str(),
            "kill" | "pause" | "partition" | "rolling_restart" | "add_node"
        ) {
            continue;
        }
        match phase {
            Phase::Start => {
                open.insert((node, what), *at_us);
            }
            Phase::End => {
                if let Some(start) = open.remove(&(node.as_str(), what.as_str())) {
                    if matches!(what.as_str(), "rolling_restart" | "add_node") {
                        restarts.push((node, start, Some(*at_us)));
                    } else {
                        spans.push((node, what, start, Some(*at_us)));
                    }
                }
            }
        }
    }
    for ((n, w), s) in open {
        if matches!(w, "rolling_restart" | "add_node") {
            restarts.push((n, s, None));
        } else {
            spans.push((n, w, s, None));
        }
    }
    spans.sort_by_key(|s| s.2);
    let names = scenario.nodes();
    // A node an `add_node` fault added watches from when it joined (the end of its add).
    let joined: Vec<(&str, u64)> = history
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Fault {
                node,
                at_us,
                phase: Phase::End,
                what,
            } if what == "add_node" && !names.contains(&node.as_str()) => {
                Some((node.as_str(), *at_us))
            }
            _ => None,
        })
        .collect();
    let mut expected = Vec::new();
    for &(node, what, start_us, end_us) in &spans {
        if what == "partition" {
            continue;
        }
        let added = joined
            .iter()
            .filter(|&&(_, at)| at <= start_us)
            .map(|&(n, _)| n);
        for observer in names.iter().copied().chain(added).filter(|o| *o != node) {
            expected.push(Separation {
                observer,
                peer: node,
                what,
                start_us,
                end_us,
            });
        }
    }
    // Partitions: across a two-way cut each side should see the other go (nodes that share a
    // group — a bridge and each of its groups — stay in touch). Across a one-way cut (the first
    // group's datagrams to the others dropped) the nodes that stop hearing the first group
    // should see it go; the first group's own view is not judged, since it still hears the
    // others and learns of the cut only when they give up on it (1.9 s after the cut in a
    // shipped run, past the detection bound).
    for f in &scenario.faults {
        let crate::scenario::FaultKind::Partition {
            groups, one_way, ..
        } = &f.kind
        else {
            continue;
        };
        let Some(first) = groups.first().and_then(|g| g.first()) else {
            continue;
        };
        let scheduled = (f.at_s * 1e6) as u64;
        let Some(&(_, _, start_us, end_us)) = spans
            .iter()
            .find(|s| s.0 == first.as_str() && s.1 == "partition" && s.2 >= scheduled)
        else {
            continue;
        };
        for (g, group) in groups.iter().enumerate() {
            for (h, other) in groups.iter().enumerate() {
                if g == h || (*one_way && h != 0) {
                    continue;
                }
                for observer in group {
                    for peer in other {
                        let share = groups
                            .iter()
                            .any(|g| g.contains(observer) && g.contains(peer));
                        let listed = expected.iter().any(|e| {
                            e.observer == observer.as_str()
                                && e.peer == peer.as_str()
                                && e.what == "partition"
                                && e.start_us == start_us
                        });
                        if share || listed {
                            continue;
                        }
                        expected.push(Separation {
                            observer,
                            peer,
                            what: "partition",
                            start_us,
                            end_us,
                        });
                    }
                }
            }
        }
    }
    // Whether `node` was killed, paused or stopped for a restart at some time in `[from, to)`.
    let away = |node: &str, from: u64, to: u64| {
        spans.iter().any(|&(n, w, s, e)| {
            n == node && w != "partition" && s < to && e.is_none_or(|e| e > from)
        }) || restarts
            .iter()
            .any(|&(n, s, e)| n == node && s < to && e.is_none_or(|e| e > from))
    };
    for sep in expected {
        let detect_by = sep.start_us + detection + VIEW_POLL_SLACK_US;
        let long_enough = sep.end_us.is_none_or(|e| e >= sep.start_us + detection);
        if !long_enough || detect_by > until_us || away(sep.observer, sep.start_us, detect_by) {
            continue;
        }
        let views: Vec<(u64, bool)> = history
            .events
            .iter()
            .filter_map(|e| match e {
                Event::View {
                    observer,
                    peer,
                    up,
                    at_us,
                } if observer == sep.observer && peer == sep.peer => Some((*at_us, *up)),
                _ => None,
            })
            .collect();
        let up_at = |t: u64| views.iter().rev().find(|v| v.0 <= t).map(|v| v.1);
        let gone = if up_at(sep.start_us) == Some(false) {
            Some(sep.start_us)
        } else {
            views
                .iter()
                .find(|v| v.0 >= sep.start_us && !v.1)
                .map(|v| v.0)
        };
        let who = format!(
            "{} and {} ({} at {} ms)",
            sep.observer,
            sep.peer,
            sep.what,
            sep.start_us / 1000
        );
        let Some(gone) = gone.filter(|g| *g <= detect_by) else {
            report.violations.push(Violation {
                invariant: "membership_followed_faults",
                detail: format!(
                    "{who}: {} did not see {} go within {} ms",
                    sep.observer,
                    sep.peer,
                    detection / 1000
                ),
                ops: Vec::new(),
            });
            continue;
        };
        let detected_ms = gone.saturating_sub(sep.start_us) / 1000;
        let stats = &mut report.stats;
        stats.detection_ms_max = Some(stats.detection_ms_max.unwrap_or(0).max(detected_ms));
        let mut line = format!(
            "{} saw {} go {detected_ms} ms after the {} began",
            sep.observer, sep.peer, sep.what
        );
        if let Some(end) = sep.end_us {
            let back_by = end + recovery + VIEW_POLL_SLACK_US;
            let back = views.iter().find(|v| v.0 >= gone && v.1).map(|v| v.0);
            match back {
                Some(back) if back <= back_by => {
                    let recovered_ms = back.saturating_sub(end) / 1000;
                    stats.recovery_ms_max =
                        Some(stats.recovery_ms_max.unwrap_or(0).max(recovered_ms));
                    line += &format!(", back {recovered_ms} ms after it healed");
                }
                _ if back_by > until_us || away(sep.observer, end, back_by) => {}
                _ => {
                    report.violations.push(Violation {
                        invariant: "membership_followed_faults",
                        detail: format!(
                            "{who}: {} did not see {} back within {} ms of the heal",
                            sep.observer,
                            sep.peer,
                            recovery / 1000
                        ),
                        ops: Vec::new(),
                    });
                }
            }
        }
        report.stats.membership.push(line);
    }
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
        node: &'a str,
        outcomes: Vec<(u64, &'a Outcome)>,
    }
    let mut sent: BTreeMap<u64, Sent<'_>> = BTreeMap::new();
    let mut finished: HashMap<u64, (&str, u32, Option<&str>)> = HashMap::new();
    let mut orphans = Vec::new();
    let mut load = None;
    let mut refused: HashSet<&str> = HashSet::new();
    for e in &history.events {
        match e {
            Event::Invoke {
                op,
                at_us,
                node,
                mode,
                input,
            } => {
                let first = Sent {
                    at_us: *at_us,
                    mode: *mode,
                    input,
                    node,
                    outcomes: Vec::new(),
                };
                if sent.insert(*op, first).is_some() {
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
                output,
                ..
            } => {
                finished.insert(*op, (status.as_str(), *attempts, output.as_deref()));
            }
            Event::NodeExit {
                node,
                at_us,
                scheduled: false,
            } => v(
                "no_unscheduled_deaths",
                format!(
                    "node {node} ended (or did not come back) at {} ms, not by the schedule",
                    at_us / 1000
                ),
                Vec::new(),
            ),
            Event::Load {
                scheduled_ops,
                max_lag_us,
            } => load = Some((*scheduled_ops, *max_lag_us)),
            Event::Impostor {
                credential,
                claimed,
                answered,
                max_peers_up,
                rejected_handshakes,
                ..
            } => {
                let who = format!("the {credential} impostor claiming to be {claimed}");
                report.stats.impostors.push(format!(
                    "{credential} claiming to be {claimed}: {}, {max_peers_up} member(s) up in \
                     its view, {rejected_handshakes} refused handshake(s) counted",
                    if *answered { "ran" } else { "never answered" }
                ));
                if !answered {
                    v(
                        "impostors_refused",
                        format!("{who} never answered: nothing was tested"),
                        Vec::new(),
                    );
                } else if *max_peers_up > 0 {
                    v(
                        "impostors_refused",
                        format!("{who} saw {max_peers_up} member(s) up: it was let in"),
                        Vec::new(),
                    );
                } else if *rejected_handshakes == 0 {
                    v(
                        "impostors_refused",
                        format!("no member counted a refused handshake from {who}"),
                        Vec::new(),
                    );
                }
            }
            Event::Damaged { node, at_us, what } => report
                .stats
                .damage
                .push(format!("{node} at {} ms: {what}", at_us / 1000)),
            Event::StoreRefused {
                node,
                at_us,
                detail,
            } => {
                refused.insert(node);
                report.stats.damage.push(format!(
                    "{node} refused to start at {} ms: {detail}",
                    at_us / 1000
                ));
            }
            Event::NodeExit { .. }
            | Event::Fault { .. }
            | Event::Restarted { .. }
            | Event::Link { .. }
            | Event::View { .. }
            | Event::ViewsWatched { .. }
            | Event::Deploy { .. }
            | Event::Registry { .. }
            | Event::RegistriesWatched { .. } => {}
        }
    }
    if !orphans.is_empty() {
        v(
            "answered_once",
            format!("{} outcomes of operations never sent", orphans.len()),
            orphans,
        );
    }
    match load {
        None => v(
            "load_kept_its_rate",
            "the history has no account of the load generator".into(),
            Vec::new(),
        ),
        Some((scheduled, lag)) => {
            report.stats.max_send_lag_us = lag;
            if scheduled != sent.len() as u64 {
                v(
                    "load_kept_its_rate",
                    format!("{scheduled} operations scheduled, {} sent", sent.len()),
                    Vec::new(),
                );
            }
            let bound_us = scenario.expect.send_lag_ms.saturating_mul(1000);
            if lag > bound_us {
                v(
                    "load_kept_its_rate",
                    format!(
                        "a send trailed its schedule by {} ms (at most {} ms, expect.send_lag_ms)",
                        lag / 1000,
                        scenario.expect.send_lag_ms
                    ),
                    Vec::new(),
                );
            }
        }
    }
    let excuses = Excuses::from(history, scenario);
    let mut lost = Vec::new();
    let mut twice = Vec::new();
    let mut wrong = Vec::new();
    let mut unexcused = Vec::new();
    let mut client_errors = Vec::new();
    let mut unfinished = Vec::new();
    let mut failed_async = Vec::new();
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
        let excused = excuses.excuse(s.node, s.at_us, done_at);
        let latency = done_at.saturating_sub(s.at_us);
        if excused { &mut under } else { &mut otherwise }.push(latency);
        match outcome {
            Outcome::Ok { output, .. } => {
                stats.ok += 1;
                if expected(s.mode, s.input).is_some_and(|want| want != *output) {
                    wrong.push(op);
                }
            }
            Outcome::Accepted { .. } => {
                stats.async_accepted += 1;
                // Finished means succeeded here: a workload function that fails is a wrong
                // answer; still pending, unreadable (its node is gone) or never read is not
                // finished.
                match finished.get(&op) {
                    None | Some(("unreadable", _, _)) if refused.contains(s.node) => {
                        stats.async_stranded += 1
                    }
                    None => unfinished.push(op),
                    Some((status, attempts, output)) => match *status {
                        "succeeded" => {
                            if *attempts == 0 {
                                uncounted.push(op);
                            } else if *attempts > 1 {
                                stats.async_rerun += 1;
                                stats.duplicate_runs += u64::from(attempts - 1);
                            }
                            if expected(Mode::Async, s.input)
                                .is_some_and(|want| Some(want.as_str()) != *output)
                            {
                                wrong.push(op);
                            }
                        }
                        "failed" => failed_async.push(op),
                        _ => unfinished.push(op),
                    },
                }
            }
            Outcome::Failed { code, status } => {
                *stats.failed.entry(code.clone()).or_default() += 1;
                let server_side = *status == 429 || *status >= 500;
                if !server_side {
                    client_errors.push(op);
                } else if !excused {
                    unexcused.push(op);
                }
            }
            Outcome::Unknown { .. } => {
                stats.unknown += 1;
                if !excused {
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
            "errors or unknown outcomes while no fault excused them",
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
            "accepted async invocations that finished failed",
            failed_async,
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
    membership(history, scenario, &mut report);
    nodes_added(history, scenario, &mut report);
    crate::convergence::registries(history, scenario, &mut report);
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
            detection_ms = 1500
            recovery_ms = 2000
            "#,
        )
        .unwrap()
    }

    fn echo(_: Mode, input: &str) -> Option<String> {
        Some(input.to_owned())
    }

    fn us(s: f64) -> u64 {
        (s * 1e6).round() as u64
    }

    /// b killed at 10 s and back at 15 s, as the runner records it.
    fn with_kill_of_b(healed: bool) -> History {
        let mut h = History::default();
        let fault = |at: f64, phase| Event::Fault {
            node: "b".into(),
            at_us: us(at),
            phase,
            what: "kill".into(),
        };
        h.push(fault(10.0, Phase::Start));
        h.push(Event::NodeExit {
            node: "b".into(),
            at_us: us(10.0),
            scheduled: true,
        });
        if healed {
            h.push(fault(15.0, Phase::End));
        }
        h
    }

    fn sent_to(h: &mut History, op: u64, node: &str, at_s: f64, mode: Mode) {
        h.push(Event::Invoke {
            op,
            at_us: us(at_s),
            node: node.into(),
            mode,
            input: format!("in-{op}"),
        });
    }

    fn sent(h: &mut History, op: u64, at_s: f64, mode: Mode) {
        sent_to(h, op, "a", at_s, mode);
    }

    fn done(h: &mut History, op: u64, at_s: f64, outcome: Outcome) {
        h.push(Event::Complete {
            op,
            at_us: us(at_s),
            outcome,
        });
    }

    /// The load generator's account: every operation sent, on time.
    fn load_ok(h: &mut History) {
        let n = h
            .events
            .iter()
            .filter(|e| matches!(e, Event::Invoke { .. }))
            .count() as u64;
        h.push(Event::Load {
            scheduled_ops: n,
            max_lag_us: 3000,
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

    fn finished(h: &mut History, op: u64, status: &str, attempts: u32, output: Option<&str>) {
        h.push(Event::Finished {
            op,
            at_us: us(59.0),
            status: status.into(),
            attempts,
            output: output.map(str::to_owned),
        });
    }

    fn invariants(r: &Report) -> Vec<(&'static str, Vec<u64>)> {
        r.violations
            .iter()
            .map(|v| (v.invariant, v.ops.clone()))
            .collect()
    }

    fn view(h: &mut History, observer: &str, peer: &str, up: bool, at_s: f64) {
        h.push(Event::View {
            observer: observer.into(),
            peer: peer.into(),
            up,
            at_us: us(at_s),
        });
    }

    fn membership_of(h: &History, s: &Scenario) -> Report {
        let mut r = Report::default();
        membership(h, s, &mut r);
        r
    }

    #[test]
    fn a_killed_node_seen_going_and_coming_back_in_time_by_every_other_node_passes() {
        let mut h = with_kill_of_b(true);
        for o in ["a", "c"] {
            view(&mut h, o, "b", true, 0.5);
        }
        // a sees b go 1.2 s after the kill, c 1.6 s after (within 1.5 s + the poll slack);
        // both see it back within 2 s of the restart.
        view(&mut h, "a", "b", false, 11.2);
        view(&mut h, "c", "b", false, 11.6);
        view(&mut h, "a", "b", true, 15.4);
        view(&mut h, "c", "b", true, 16.9);
        h.push(Event::ViewsWatched { until_us: us(40.0) });
        let r = membership_of(&h, &scenario());
        assert_eq!(r.violations, []);
        assert_eq!(r.stats.detection_ms_max, Some(1600));
        assert_eq!(r.stats.recovery_ms_max, Some(1900));
        assert_eq!(
            r.stats.membership,
            [
                "a saw b go 1200 ms after the kill began, back 400 ms after it healed",
                "c saw b go 1600 ms after the kill began, back 1900 ms after it healed",
            ]
        );
    }

    fn with_add_of_d() -> Scenario {
        Scenario::parse(
            r#"
            name = "add-d"
            [cluster]
            nodes = 3
            [workload]
            function = "echo"
            rate_per_s = 10
            duration_s = 60
            [[fault]]
            at_s = 10
            kind = "add_node"
            "#,
        )
        .unwrap()
    }

    fn added_of(h: &History) -> Report {
        let mut r = Report::default();
        nodes_added(h, &with_add_of_d(), &mut r);
        r
    }

    fn fault(h: &mut History, node: &str, what: &str, phase: Phase, at_s: f64) {
        h.push(Event::Fault {
            node: node.into(),
            at_us: us(at_s),
            phase,
            what: what.into(),
        });
    }

    #[test]
    fn an_added_node_that_joined_was_seen_by_every_member_and_answered_passes() {
        let mut h = History::default();
        fault(&mut h, "d", "add_node", Phase::Start, 10.0);
        for (k, m) in ["a", "b", "c"].into_iter().enumerate() {
            let at = 11.0 + 2.0 * k as f64;
            fault(&mut h, m, "add_node", Phase::Start, at);
            fault(&mut h, m, "add_node", Phase::End, at + 1.0);
            view(&mut h, m, "d", true, at + 1.2);
        }
        fault(&mut h, "d", "add_node", Phase::End, 17.0);
        sent_to(&mut h, 1, "d", 18.0, Mode::Sync);
        done(
            &mut h,
            1,
            18.1,
            Outcome::Ok {
                output: "in-1".into(),
                ran_on: "d".into(),
            },
        );
        let r = added_of(&h);
        assert_eq!(r.violations, []);
        assert_eq!(
            r.stats.added,
            [
                "d joined 7000 ms after it started (the members restarted with it); answered 1 of 1 calls sent to it"
            ]
        );
    }

    #[test]
    fn an_added_node_that_never_joined_was_not_seen_or_answered_nothing_breaks_nodes_added() {
        // Never joined.
        let mut h = History::default();
        fault(&mut h, "d", "add_node", Phase::Start, 10.0);
        let r = added_of(&h);
        assert_eq!(r.violations.len(), 1);
        assert!(r.violations[0].detail.starts_with("node d did not join"));
        // Joined, but b never saw it, and it answered none of its calls.
        fault(&mut h, "d", "add_node", Phase::End, 17.0);
        view(&mut h, "a", "d", true, 16.0);
        view(&mut h, "c", "d", true, 16.0);
        view(&mut h, "b", "d", true, 5.0); // before the add: not the new node
        sent_to(&mut h, 1, "d", 18.0, Mode::Sync);
        done(
            &mut h,
            1,
            33.0,
            Outcome::Unknown {
                reason: "timed out".into(),
            },
        );
        let r = added_of(&h);
        let details: Vec<&str> = r.violations.iter().map(|v| v.detail.as_str()).collect();
        assert_eq!(
            details,
            [
                "b never saw node d up",
                "node d answered none of the 1 calls sent to it"
            ]
        );
        assert!(r.violations.iter().all(|v| v.invariant == "nodes_added"));
        // Never added at all (the fault did not run).
        let r = added_of(&History::default());
        assert!(r.violations[0].detail.contains("never added"));
    }

    #[test]
    fn a_node_seen_going_late_or_never_coming_back_breaks_membership_followed_faults() {
        let mut h = with_kill_of_b(true);
        view(&mut h, "a", "b", true, 0.5);
        view(&mut h, "c", "b", true, 0.5);
        view(&mut h, "a", "b", false, 12.0); // 2 s: past 1.5 s + 0.2 s
        view(&mut h, "c", "b", false, 11.0);
        view(&mut h, "a", "b", true, 15.5);
        // c never sees b back, and its polls went on long enough to tell.
        h.push(Event::ViewsWatched { until_us: us(40.0) });
        let r = membership_of(&h, &scenario());
        let details: Vec<&str> = r.violations.iter().map(|v| v.detail.as_str()).collect();
        assert_eq!(
            details,
            [
                "a and b (kill at 10000 ms): a did not see b go within 1500 ms",
                "c and b (kill at 10000 ms): c did not see b back within 2000 ms of the heal",
            ]
        );
        assert!(
            r.violations
                .iter()
                .all(|v| v.invariant == "membership_followed_faults")
        );
    }

    #[test]
    fn what_the_polls_did_not_watch_or_an_observer_under_its_own_fault_is_not_judged() {
        // The polls stopped before the detection bound: nothing to judge.
        let mut h = with_kill_of_b(true);
        h.push(Event::ViewsWatched { until_us: us(11.0) });
        assert_eq!(membership_of(&h, &scenario()).violations, []);
        // No polls at all (an old history): not judged either.
        assert_eq!(
            membership_of(&with_kill_of_b(true), &scenario()).violations,
            []
        );
        // a paused over the same time cannot see anything go.
        let mut h = with_kill_of_b(false);
        h.push(Event::Fault {
            node: "a".into(),
            at_us: us(9.0),
            phase: Phase::Start,
            what: "pause".into(),
        });
        view(&mut h, "c", "b", false, 11.0);
        view(&mut h, "c", "a", false, 10.0);
        h.push(Event::ViewsWatched { until_us: us(40.0) });
        let r = membership_of(&h, &scenario());
        assert_eq!(r.violations, [], "{:?}", r.stats.membership);
        // c judges both; b, killed a second into a's pause, judges neither.
        assert_eq!(
            r.stats.membership,
            [
                "c saw a go 1000 ms after the pause began",
                "c saw b go 1000 ms after the kill began",
            ]
        );
        // a stopped to be restarted (for an added node) while b came back: a is not judged
        // on seeing b back, c is.
        let mut h = with_kill_of_b(true);
        fault(&mut h, "a", "add_node", Phase::Start, 14.5);
        fault(&mut h, "a", "add_node", Phase::End, 18.0);
        view(&mut h, "a", "b", false, 11.0);
        view(&mut h, "c", "b", false, 11.0);
        view(&mut h, "c", "b", true, 15.5);
        h.push(Event::ViewsWatched { until_us: us(40.0) });
        let r = membership_of(&h, &scenario());
        assert_eq!(r.violations, [], "{:?}", r.stats.membership);
        assert_eq!(
            r.stats.membership,
            [
                "a saw b go 1000 ms after the kill began",
                "c saw b go 1000 ms after the kill began, back 500 ms after it healed",
            ]
        );
    }

    #[test]
    fn an_added_node_is_judged_on_the_faults_after_it_joined_and_not_on_those_before() {
        let s = Scenario::parse(
            r#"
            name = "add-then-kill"
            [cluster]
            nodes = 3
            [workload]
            function = "echo"
            rate_per_s = 10
            duration_s = 60
            [[fault]]
            at_s = 1
            kind = "kill"
            node = "c"
            restart_after_s = 3
            [[fault]]
            at_s = 5
            kind = "add_node"
            [[fault]]
            at_s = 20
            kind = "kill"
            node = "b"
            restart_after_s = 5
            [expect]
            detection_ms = 1500
            recovery_ms = 2000
            "#,
        )
        .unwrap();
        let mut h = History::default();
        fault(&mut h, "c", "kill", Phase::Start, 1.0);
        fault(&mut h, "c", "kill", Phase::End, 4.0);
        for o in ["a", "b"] {
            view(&mut h, o, "c", false, 2.0);
            view(&mut h, o, "c", true, 5.0);
        }
        fault(&mut h, "d", "add_node", Phase::Start, 5.0);
        fault(&mut h, "d", "add_node", Phase::End, 12.0);
        fault(&mut h, "b", "kill", Phase::Start, 20.0);
        fault(&mut h, "b", "kill", Phase::End, 25.0);
        for o in ["a", "c", "d"] {
            view(&mut h, o, "b", true, 12.5);
            view(&mut h, o, "b", false, 21.0);
        }
        // a and c see b back; d, which joined before the kill, never does.
        view(&mut h, "a", "b", true, 26.0);
        view(&mut h, "c", "b", true, 26.0);
        h.push(Event::ViewsWatched { until_us: us(40.0) });
        let r = membership_of(&h, &s);
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
        assert_eq!(
            r.violations[0].detail,
            "d and b (kill at 20000 ms): d did not see b back within 2000 ms of the heal"
        );
        // Not judged on c's kill, which came before it joined.
        assert!(
            r.stats.membership.iter().all(|l| !l.starts_with("d saw c")),
            "{:?}",
            r.stats.membership
        );
        assert!(
            r.stats
                .membership
                .contains(&"d saw b go 1000 ms after the kill began".to_owned()),
            "{:?}",
            r.stats.membership
        );
    }

    #[test]
    fn both_sides_of_a_two_way_partition_must_see_each_other_go_and_a_one_way_cuts_receivers_must_see_its_sender_go()
     {
        let text = |one_way: bool| {
            format!(
                r#"
                name = "p"
                [cluster]
                nodes = 3
                [workload]
                function = "echo"
                rate_per_s = 10
                duration_s = 60
                [[fault]]
                at_s = 10
                kind = "partition"
                groups = [["a"], ["b", "c"]]
                one_way = {one_way}
                for_s = 5
                "#
            )
        };
        let mut h = History::default();
        for (node, phase, at) in [
            ("a", Phase::Start, 10.0),
            ("b", Phase::Start, 10.0),
            ("c", Phase::Start, 10.0),
            ("a", Phase::End, 15.0),
            ("b", Phase::End, 15.0),
            ("c", Phase::End, 15.0),
        ] {
            h.push(Event::Fault {
                node: node.into(),
                at_us: us(at),
                phase,
                what: "partition".into(),
            });
        }
        // a sees both go and come back; b sees a go and come back; c never sees a go.
        for (o, p) in [("a", "b"), ("a", "c"), ("b", "a")] {
            view(&mut h, o, p, true, 1.0);
            view(&mut h, o, p, false, 11.0);
            view(&mut h, o, p, true, 15.5);
        }
        view(&mut h, "c", "a", true, 1.0);
        h.push(Event::ViewsWatched { until_us: us(40.0) });
        let two_way = Scenario::parse(&text(false)).unwrap();
        let r = membership_of(&h, &two_way);
        let details: Vec<&str> = r.violations.iter().map(|v| v.detail.as_str()).collect();
        assert_eq!(
            details,
            ["c and a (partition at 10000 ms): c did not see a go within 1500 ms"]
        );
        assert_eq!(r.stats.membership.len(), 3);
        // One way (a's datagrams to b and c dropped): only b and c are judged, on seeing a go.
        let one_way = Scenario::parse(&text(true)).unwrap();
        let r = membership_of(&h, &one_way);
        let details: Vec<&str> = r.violations.iter().map(|v| v.detail.as_str()).collect();
        assert_eq!(
            details,
            ["c and a (partition at 10000 ms): c did not see a go within 1500 ms"]
        );
        assert_eq!(r.stats.membership.len(), 1, "{:?}", r.stats.membership);
        // Once c sees a go and come back, the cut passes, whatever a saw of b and c (here a
        // sees them go late: not judged).
        let mut late = History::default();
        for e in &h.events {
            match e {
                Event::View { observer, .. } if observer == "a" => {}
                Event::ViewsWatched { .. } => {}
                other => late.push(other.clone()),
            }
        }
        for p in ["b", "c"] {
            view(&mut late, "a", p, true, 1.0);
            view(&mut late, "a", p, false, 11.9);
            view(&mut late, "a", p, true, 15.5);
        }
        view(&mut late, "c", "a", false, 11.1);
        view(&mut late, "c", "a", true, 15.3);
        late.push(Event::ViewsWatched { until_us: us(40.0) });
        let r = membership_of(&late, &one_way);
        assert_eq!(r.violations, [], "{:?}", r.violations);
        assert_eq!(r.stats.membership.len(), 2, "{:?}", r.stats.membership);
        assert!(
            r.stats.membership.iter().all(|l| !l.starts_with("a saw")),
            "{:?}",
            r.stats.membership
        );
    }

    #[test]
    fn across_a_bridged_partition_only_the_nodes_that_share_no_group_must_see_each_other_go() {
        let text = r#"
            name = "p"
            [cluster]
            nodes = 3
            [workload]
            function = "echo"
            rate_per_s = 10
            duration_s = 60
            [[fault]]
            at_s = 10
            kind = "partition"
            groups = [["a", "b"], ["b", "c"]]
            for_s = 5
            "#;
        let mut h = History::default();
        for node in ["a", "b", "c"] {
            for (phase, at) in [(Phase::Start, 10.0), (Phase::End, 15.0)] {
                h.push(Event::Fault {
                    node: node.into(),
                    at_us: us(at),
                    phase,
                    what: "partition".into(),
                });
            }
        }
        // a and c see each other go and come back; b, the bridge, sees no one go.
        for (o, p) in [("a", "c"), ("c", "a")] {
            view(&mut h, o, p, true, 1.0);
            view(&mut h, o, p, false, 11.0);
            view(&mut h, o, p, true, 15.5);
        }
        for (o, p) in [("b", "a"), ("b", "c"), ("a", "b"), ("c", "b")] {
            view(&mut h, o, p, true, 1.0);
        }
        h.push(Event::ViewsWatched { until_us: us(40.0) });
        let bridged = Scenario::parse(text).unwrap();
        let r = membership_of(&h, &bridged);
        assert_eq!(r.violations, [], "{:?}", r.violations);
        assert_eq!(r.stats.membership.len(), 2, "{:?}", r.stats.membership);
        // c that never sees a go breaks it.
        let mut blind = History::default();
        for e in &h.events {
            match e {
                Event::View { observer, .. } if observer == "c" => {}
                Event::ViewsWatched { .. } => {}
                other => blind.push(other.clone()),
            }
        }
        view(&mut blind, "c", "a", true, 1.0);
        blind.push(Event::ViewsWatched { until_us: us(40.0) });
        let r = membership_of(&blind, &bridged);
        let details: Vec<&str> = r.violations.iter().map(|v| v.detail.as_str()).collect();
        assert_eq!(
            details,
            ["c and a (partition at 10000 ms): c did not see a go within 1500 ms"]
        );
    }

    #[test]
    fn a_run_whose_errors_all_fall_in_the_fault_and_its_recovery_passes() {
        let mut h = with_kill_of_b(true);
        sent(&mut h, 1, 1.0, Mode::Sync);
        done(&mut h, 1, 1.001, ok(1));
        // On a, within detection + recovery of b's kill (10-13.5 s) and recovery of its
        // return (15-17 s): excused.
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
        // On b while it was down: excused.
        sent_to(&mut h, 5, "b", 14.0, Mode::Sync);
        done(
            &mut h,
            5,
            14.0,
            Outcome::Unknown {
                reason: "refused".into(),
            },
        );
        sent(&mut h, 4, 12.0, Mode::Async);
        done(&mut h, 4, 12.1, Outcome::Accepted { id: "x".into() });
        finished(&mut h, 4, "succeeded", 2, Some("in-4"));
        load_ok(&mut h);
        let r = check(&h, &scenario(), echo);
        assert!(r.passed(), "{:?}", r.violations);
        let s = &r.stats;
        assert_eq!(
            (s.operations, s.ok, s.unknown, s.async_accepted),
            (5, 1, 2, 1)
        );
        assert_eq!((s.async_rerun, s.duplicate_runs), (1, 1));
        assert_eq!(s.failed["unavailable"], 1);
        assert_eq!(s.p99_us_otherwise, Some(1000));
        assert_eq!(s.p99_us_under_faults, Some(1_500_000));
        assert_eq!(s.max_send_lag_us, 3000);
    }

    #[test]
    fn a_node_that_never_returns_excuses_its_own_errors_only() {
        let mut h = with_kill_of_b(false);
        sent_to(&mut h, 1, "b", 40.0, Mode::Sync);
        done(
            &mut h,
            1,
            40.0,
            Outcome::Unknown {
                reason: "refused".into(),
            },
        );
        sent_to(&mut h, 2, "a", 40.0, Mode::Sync);
        done(&mut h, 2, 40.1, failed("unavailable", 503));
        load_ok(&mut h);
        let found = invariants(&check(&h, &scenario(), echo));
        assert_eq!(found, [("errors_only_under_faults", vec![2])]);
    }

    #[test]
    fn lost_doubled_and_orphaned_outcomes_break_answered_once() {
        let mut h = History::default();
        sent(&mut h, 1, 1.0, Mode::Sync);
        sent(&mut h, 2, 1.0, Mode::Sync);
        done(&mut h, 2, 1.1, ok(2));
        done(&mut h, 2, 1.2, ok(2));
        done(&mut h, 9, 1.3, ok(9));
        load_ok(&mut h);
        let r = check(&h, &scenario(), echo);
        let found = invariants(&r);
        assert!(found.contains(&("answered_once", vec![9])), "{found:?}");
        assert!(found.contains(&("answered_once", vec![1])), "{found:?}");
        assert!(found.contains(&("answered_once", vec![2])), "{found:?}");
    }

    #[test]
    fn through_tern_client_any_nodes_fault_excuses_an_error_but_never_a_client_error() {
        let mut h = with_kill_of_b(true);
        // For a, while b was down but past the bounds after the kill began (13.5 s).
        sent_to(&mut h, 1, "a", 14.0, Mode::Sync);
        done(
            &mut h,
            1,
            14.1,
            Outcome::Unknown {
                reason: "no node could be reached".into(),
            },
        );
        // The client refused to send: never excused.
        sent_to(&mut h, 2, "a", 14.0, Mode::Sync);
        done(&mut h, 2, 14.1, failed("client_rejected", 401));
        load_ok(&mut h);
        let over_http = scenario();
        let found = invariants(&check(&h, &over_http, echo));
        assert!(
            found.contains(&("errors_only_under_faults", vec![1])),
            "{found:?}"
        );
        let mut via_client = scenario();
        via_client.workload.via = Via::Client;
        let found = invariants(&check(&h, &via_client, echo));
        assert_eq!(found, [("errors_only_under_faults", vec![2])]);
    }

    #[test]
    fn a_wrong_output_an_error_outside_faults_and_a_client_error_are_each_named() {
        let mut h = with_kill_of_b(true);
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
        // An async result that is not what was sent.
        sent(&mut h, 5, 2.0, Mode::Async);
        done(&mut h, 5, 2.1, Outcome::Accepted { id: "5".into() });
        finished(&mut h, 5, "succeeded", 1, Some("in-6"));
        load_ok(&mut h);
        let found = invariants(&check(&h, &scenario(), echo));
        assert!(found.contains(&("right_output", vec![1, 5])), "{found:?}");
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
    fn unfinished_failed_or_uncounted_async_work_and_an_unscheduled_death_fail_the_run() {
        let mut h = History::default();
        for op in 1..=5 {
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
        finished(&mut h, 1, "pending", 1, None);
        finished(&mut h, 2, "succeeded", 0, Some("in-2"));
        finished(&mut h, 4, "unreadable", 0, None);
        finished(&mut h, 5, "failed", 1, None);
        h.push(Event::NodeExit {
            node: "c".into(),
            at_us: us(20.0),
            scheduled: false,
        });
        load_ok(&mut h);
        let r = check(&h, &scenario(), echo);
        let found = invariants(&r);
        assert!(
            found.contains(&("async_finished", vec![1, 3, 4])),
            "{found:?}"
        );
        assert!(found.contains(&("async_finished", vec![2])), "{found:?}");
        assert!(found.contains(&("async_finished", vec![5])), "{found:?}");
        assert!(
            r.violations
                .iter()
                .any(|v| v.invariant == "no_unscheduled_deaths" && v.detail.contains("node c")),
            "{found:?}"
        );
        assert!(!r.passed());
    }

    /// A node that refused to start on its damaged store strands the async work it accepted:
    /// counted, not a violation. The same work on a node that started (and lost it) fails,
    /// and so does the other nodes' unfinished work.
    #[test]
    fn a_refusal_to_start_on_a_damaged_store_strands_that_nodes_async_work_and_nothing_else() {
        let accepted = |h: &mut History, op: u64, node: &str| {
            sent_to(h, op, node, 1.0, Mode::Async);
            let id = format!("{op}");
            done(h, op, 1.1, Outcome::Accepted { id });
        };
        let mut h = History::default();
        accepted(&mut h, 1, "b");
        accepted(&mut h, 2, "b");
        accepted(&mut h, 3, "a");
        finished(&mut h, 1, "unreadable", 0, None);
        finished(&mut h, 3, "unreadable", 0, None);
        h.push(Event::Damaged {
            node: "b".into(),
            at_us: us(5.0),
            what: "bit 3 of byte 7 of db flipped".into(),
        });
        let refused = h.events.len();
        h.push(Event::StoreRefused {
            node: "b".into(),
            at_us: us(6.0),
            detail: "error: the store lost writes it had acknowledged".into(),
        });
        load_ok(&mut h);
        let r = check(&h, &scenario(), echo);
        assert_eq!(r.stats.async_stranded, 2);
        assert_eq!(invariants(&r), vec![("async_finished", vec![3])]);
        assert_eq!(r.stats.damage.len(), 2, "{:?}", r.stats.damage);
        assert!(r.stats.damage[1].contains("b refused to start"));

        // Without the refusal, b's records are simply gone.
        h.events.remove(refused);
        let r = check(&h, &scenario(), echo);
        assert_eq!(r.stats.async_stranded, 0);
        assert_eq!(invariants(&r), vec![("async_finished", vec![1, 2, 3])]);
    }

    #[test]
    fn an_impostor_let_in_uncounted_or_never_started_fails_the_run_and_a_refused_one_passes() {
        let impostor = |credential: &str, answered: bool, up: u32, rejected: u64| Event::Impostor {
            at_us: us(5.0),
            credential: credential.into(),
            claimed: "b".into(),
            answered,
            max_peers_up: up,
            rejected_handshakes: rejected,
        };
        let mut refused = History::default();
        sent(&mut refused, 1, 1.0, Mode::Sync);
        done(&mut refused, 1, 1.1, ok(1));
        refused.push(impostor("wrong_ca", true, 0, 4));
        load_ok(&mut refused);
        assert!(check(&refused, &scenario(), echo).passed());

        let mut h = History::default();
        h.push(impostor("wrong_ca", true, 1, 4));
        h.push(impostor("expired", true, 0, 0));
        h.push(impostor("unknown_name", false, 0, 0));
        load_ok(&mut h);
        let r = check(&h, &scenario(), echo);
        let details: Vec<_> = r
            .violations
            .iter()
            .filter(|v| v.invariant == "impostors_refused")
            .map(|v| v.detail.as_str())
            .collect();
        assert_eq!(details.len(), 3, "{details:?}");
        assert!(details[0].contains("wrong_ca") && details[0].contains("let in"));
        assert!(details[1].contains("expired") && details[1].contains("no member counted"));
        assert!(details[2].contains("unknown_name") && details[2].contains("never answered"));
    }

    #[test]
    fn a_load_generator_that_fell_behind_or_skipped_operations_invalidates_the_run() {
        let mut h = History::default();
        sent(&mut h, 1, 1.0, Mode::Sync);
        done(&mut h, 1, 1.1, ok(1));
        h.push(Event::Load {
            scheduled_ops: 2,
            max_lag_us: 250_000,
        });
        let r = check(&h, &scenario(), echo);
        let details: Vec<_> = r
            .violations
            .iter()
            .filter(|v| v.invariant == "load_kept_its_rate")
            .map(|v| v.detail.as_str())
            .collect();
        assert_eq!(details.len(), 2, "{details:?}");
        let mut silent = History::default();
        sent(&mut silent, 1, 1.0, Mode::Sync);
        done(&mut silent, 1, 1.1, ok(1));
        assert!(
            invariants(&check(&silent, &scenario(), echo))
                .iter()
                .any(|(i, _)| *i == "load_kept_its_rate")
        );
    }

    #[test]
    fn a_scenario_sets_how_far_behind_its_schedule_the_load_generator_may_send() {
        let mut h = History::default();
        sent(&mut h, 1, 1.0, Mode::Sync);
        done(&mut h, 1, 1.1, ok(1));
        h.push(Event::Load {
            scheduled_ops: 1,
            max_lag_us: 150_000,
        });
        let late = |r: &Report| {
            invariants(r)
                .iter()
                .any(|(i, _)| *i == "load_kept_its_rate")
        };
        assert!(late(&check(&h, &scenario(), echo)), "100 ms by default");
        let mut roomy = scenario();
        roomy.expect.send_lag_ms = 200;
        assert!(!late(&check(&h, &roomy, echo)));
        roomy.expect.send_lag_ms = 149;
        assert!(late(&check(&h, &roomy, echo)));
    }

    #[test]
    fn p99_is_the_rank_99_value_split_by_fault_periods() {
        assert_eq!(p99(Vec::new()), None);
        assert_eq!(p99((1..=100).collect()), Some(99));
        assert_eq!(p99(vec![5]), Some(5));
        let mut h = with_kill_of_b(true);
        for op in 0..10u64 {
            sent(&mut h, op, 12.0, Mode::Sync);
            done(&mut h, op, 12.0 + op as f64 / 1000.0, ok(op));
        }
        load_ok(&mut h);
        let r = check(&h, &scenario(), echo);
        assert_eq!(r.stats.p99_us_under_faults, Some(9000));
        assert_eq!(r.stats.p99_us_otherwise, None);
    }
}
