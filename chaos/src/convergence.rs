//! `registries_converged`: after the faults heal, every live node shows the same registry
//! entry for the function the runner redeployed during the load, soon enough, and it is the
//! entry the registry's documented order makes the winner.
//!
//! The registry orders a function's entries by (version, deploy time, node name), the higher
//! winning everywhere (README "Registry"): a deploy acknowledged on one side of a partition
//! can lose to one numbered higher on the other side, and that is the promise, not a
//! violation. What is a violation:
//! - a live node shows no entry, or the live nodes do not all show the same one, when the
//!   runner stopped polling;
//! - they agreed later than `convergence_ms` (plus the polls' slack) after the run settled
//!   (the last heal or the last deploy's end, whichever was later);
//! - the entry they agree on is not one the runner sent, or was refused (a 4xx);
//! - an acknowledged deploy orders above the entry they agree on: it was lost.
//!
//! A deploy with no answer, or a 5xx, may or may not have been stored; it may win.

use std::collections::HashMap;

use crate::check::{Report, VIEW_POLL_SLACK_US, Violation};
use crate::history::{DeployOutcome, EntryView, Event, History};
use crate::scenario::Scenario;

const INVARIANT: &str = "registries_converged";

struct Sent<'a> {
    number: u64,
    node: &'a str,
    at_us: u64,
    module: &'a str,
    outcome: &'a DeployOutcome,
}

/// Judges the history's deploys and registry polls (nothing to judge without deploys).
pub fn registries(history: &History, scenario: &Scenario, report: &mut Report) {
    let mut deploys = Vec::new();
    let mut last: HashMap<&str, (u64, Option<&EntryView>)> = HashMap::new();
    let mut watched = None;
    for e in &history.events {
        match e {
            Event::Deploy {
                number,
                node,
                at_us,
                module,
                outcome,
                ..
            } => deploys.push(Sent {
                number: *number,
                node,
                at_us: *at_us,
                module,
                outcome,
            }),
            Event::Registry { node, at_us, entry } => {
                last.insert(node, (*at_us, entry.as_ref()));
            }
            Event::RegistriesWatched {
                until_us,
                settled_us,
                live,
            } => watched = Some((*until_us, *settled_us, live)),
            _ => {}
        }
    }
    if deploys.is_empty() {
        return;
    }
    let mut violate = |detail: String| {
        report.violations.push(Violation {
            invariant: INVARIANT,
            detail,
            ops: Vec::new(),
        })
    };
    let count = |f: fn(&DeployOutcome) -> bool| deploys.iter().filter(|d| f(d.outcome)).count();
    let acknowledged = count(|o| matches!(o, DeployOutcome::Acknowledged { .. }));
    let mut line = format!(
        "{} deploys during the run: {acknowledged} acknowledged, {} failed, {} unanswered",
        deploys.len(),
        count(|o| matches!(o, DeployOutcome::Failed { .. })),
        count(|o| matches!(o, DeployOutcome::Unknown { .. })),
    );
    // The acknowledged deploy the registry's order puts first.
    let winner = deploys
        .iter()
        .filter_map(|d| match d.outcome {
            DeployOutcome::Acknowledged {
                version,
                deployed_at_ms,
            } => Some(((*version, *deployed_at_ms, d.node), d)),
            _ => None,
        })
        .max_by(|a, b| a.0.cmp(&b.0));
    let Some((until_us, settled_us, live)) = watched else {
        violate("the runner never polled the registries after the run".into());
        report.stats.registry = Some(line);
        return;
    };
    if winner.is_none() {
        violate(format!("{line}: none was acknowledged, nothing was tested"));
    }
    let mut shown: Vec<(&str, u64, Option<&EntryView>)> = live
        .iter()
        .map(|n| {
            let (at, entry) = last.get(n.as_str()).copied().unwrap_or((until_us, None));
            (n.as_str(), at, entry)
        })
        .collect();
    shown.sort_by_key(|s| s.0);
    let named = |e: Option<&EntryView>| match e {
        None => "nothing".to_owned(),
        Some(e) => {
            let deploy = deploys
                .iter()
                .find(|d| d.module == e.hash)
                .map_or("a module the runner never sent".to_owned(), |d| {
                    format!("deploy {} via {}", d.number, d.node)
                });
            format!("version {} ({deploy})", e.version)
        }
    };
    let first = shown.first().and_then(|s| s.2);
    if live.is_empty() {
        violate("no node was live to poll after the run".into());
    } else if first.is_none()
        || shown
            .iter()
            .any(|s| s.2.map(|e| (&e.hash, e.version)) != first.map(|e| (&e.hash, e.version)))
    {
        let each: Vec<String> = shown
            .iter()
            .map(|(n, _, e)| format!("{n} shows {}", named(*e)))
            .collect();
        violate(format!(
            "the live nodes did not show one entry by {} ms: {}",
            until_us / 1000,
            each.join(", ")
        ));
    } else if let Some(entry) = first {
        let agreed_us = shown.iter().map(|s| s.1).max().unwrap_or(until_us);
        let took_ms = agreed_us.saturating_sub(settled_us) / 1000;
        line.push_str(&format!(
            "; every live node showed {} by {took_ms} ms after the run settled",
            named(Some(entry))
        ));
        let bound_us = scenario.expect.convergence_ms.saturating_mul(1000) + VIEW_POLL_SLACK_US;
        if agreed_us.saturating_sub(settled_us) > bound_us {
            violate(format!(
                "the live nodes agreed {took_ms} ms after the run settled (at most {} ms)",
                scenario.expect.convergence_ms
            ));
        }
        match deploys.iter().find(|d| d.module == entry.hash) {
            None => violate(format!(
                "the live nodes agree on module {}, which the runner never deployed",
                entry.hash
            )),
            Some(d) => {
                if let DeployOutcome::Failed { status, code } = d.outcome
                    && *status < 500
                {
                    violate(format!(
                        "the live nodes agree on deploy {}, which was refused ({status} {code})",
                        d.number
                    ));
                }
                if let Some((key, w)) = winner
                    && (entry.version, entry.deployed_at_ms, d.node) < key
                {
                    violate(format!(
                        "deploy {} via {} was acknowledged at {} ms as version {} and lost to \
                         version {} (deploy {} via {}), which the registry's order puts below it",
                        w.number,
                        w.node,
                        w.at_us / 1000,
                        key.0,
                        entry.version,
                        d.number,
                        d.node
                    ));
                }
            }
        }
    }
    report.stats.registry = Some(line);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn scenario() -> Scenario {
        Scenario::parse(
            r#"
            name = "deploys"
            [cluster]
            nodes = 3
            [workload]
            function = "echo"
            rate_per_s = 10
            duration_s = 20
            deploy_every_s = 2
            "#,
        )
        .unwrap()
    }

    fn ms(v: u64) -> u64 {
        v * 1000
    }

    fn acked(h: &mut History, number: u64, node: &str, at_ms: u64, version: u64) {
        h.push(Event::Deploy {
            number,
            node: node.into(),
            sent_us: ms(at_ms - 10),
            at_us: ms(at_ms),
            module: format!("m{number}"),
            outcome: DeployOutcome::Acknowledged {
                version,
                deployed_at_ms: 1_000_000 + at_ms,
            },
        });
    }

    fn shows(h: &mut History, node: &str, at_ms: u64, number: u64, version: u64, when: u64) {
        h.push(Event::Registry {
            node: node.into(),
            at_us: ms(at_ms),
            entry: Some(EntryView {
                hash: format!("m{number}"),
                version,
                deployed_at_ms: 1_000_000 + when,
            }),
        });
    }

    /// Every node of the three shows deploy `number` as `version`.
    fn all_show(h: &mut History, at_ms: u64, number: u64, version: u64, when: u64) {
        for n in ["a", "b", "c"] {
            shows(h, n, at_ms, number, version, when);
        }
    }

    fn watched(h: &mut History, until_ms: u64, settled_ms: u64) {
        h.push(Event::RegistriesWatched {
            until_us: ms(until_ms),
            settled_us: ms(settled_ms),
            live: vec!["a".into(), "b".into(), "c".into()],
        });
    }

    fn judge(h: &History) -> Report {
        let mut r = Report::default();
        registries(h, &scenario(), &mut r);
        r
    }

    fn details(r: &Report) -> Vec<&str> {
        r.violations
            .iter()
            .inspect(|v| assert_eq!(v.invariant, INVARIANT))
            .map(|v| v.detail.as_str())
            .collect()
    }

    #[test]
    fn every_node_showing_the_highest_acknowledged_deploy_in_time_passes() {
        let mut h = History::default();
        acked(&mut h, 1, "a", 2_000, 1);
        acked(&mut h, 2, "b", 4_000, 2);
        all_show(&mut h, 6_000, 2, 2, 4_000);
        watched(&mut h, 6_100, 4_000);
        let r = judge(&h);
        assert_eq!(details(&r), Vec::<&str>::new());
        assert_eq!(
            r.stats.registry.as_deref(),
            Some(
                "2 deploys during the run: 2 acknowledged, 0 failed, 0 unanswered; every live \
                 node showed version 2 (deploy 2 via b) by 2000 ms after the run settled"
            )
        );
    }

    #[test]
    fn a_higher_version_from_the_other_side_of_a_partition_beats_a_later_acknowledged_deploy() {
        // Deploy 1 (version 1) reached every node; then a was cut off. b and c took deploys 2
        // and 3 as versions 2 and 3, a took deploy 4 as its version 2, acknowledged last.
        // Version 3 orders first: the registry's promise, not a loss.
        let mut h = History::default();
        acked(&mut h, 1, "a", 1_000, 1);
        acked(&mut h, 2, "b", 2_000, 2);
        acked(&mut h, 3, "c", 3_000, 3);
        acked(&mut h, 4, "a", 4_000, 2);
        all_show(&mut h, 7_000, 3, 3, 3_000);
        watched(&mut h, 7_100, 6_000);
        assert_eq!(details(&judge(&h)), Vec::<&str>::new());

        // Had a's deploy been numbered 3 too, its later deploy time would order it first.
        let mut h = History::default();
        acked(&mut h, 3, "c", 3_000, 3);
        acked(&mut h, 4, "a", 4_000, 3);
        all_show(&mut h, 7_000, 3, 3, 3_000);
        watched(&mut h, 7_100, 6_000);
        assert_eq!(
            details(&judge(&h)),
            [
                "deploy 4 via a was acknowledged at 4000 ms as version 3 and lost to version 3 \
              (deploy 3 via c), which the registry's order puts below it"
            ]
        );
    }

    #[test]
    fn an_acknowledged_deploy_that_orders_above_the_agreed_entry_was_lost() {
        let mut h = History::default();
        acked(&mut h, 1, "a", 2_000, 1);
        acked(&mut h, 2, "b", 4_000, 2);
        all_show(&mut h, 6_000, 1, 1, 2_000);
        watched(&mut h, 6_100, 4_000);
        assert_eq!(
            details(&judge(&h)),
            [
                "deploy 2 via b was acknowledged at 4000 ms as version 2 and lost to version 1 \
              (deploy 1 via a), which the registry's order puts below it"
            ]
        );
    }

    #[test]
    fn nodes_that_disagree_or_agree_too_late_break_registries_converged() {
        let mut h = History::default();
        acked(&mut h, 1, "a", 2_000, 1);
        acked(&mut h, 2, "b", 4_000, 2);
        shows(&mut h, "a", 6_000, 2, 2, 4_000);
        shows(&mut h, "b", 6_000, 2, 2, 4_000);
        shows(&mut h, "c", 6_000, 1, 1, 2_000);
        watched(&mut h, 10_000, 4_000);
        assert_eq!(
            details(&judge(&h)),
            [
                "the live nodes did not show one entry by 10000 ms: a shows version 2 (deploy 2 \
              via b), b shows version 2 (deploy 2 via b), c shows version 1 (deploy 1 via a)"
            ]
        );

        // c gets there, 5.5 s after the run settled: past 5 s plus the polls' 200 ms.
        shows(&mut h, "c", 9_500, 2, 2, 4_000);
        let r = judge(&h);
        assert_eq!(
            details(&r),
            ["the live nodes agreed 5500 ms after the run settled (at most 5000 ms)"]
        );
    }

    #[test]
    fn a_node_showing_nothing_or_an_unsent_module_and_no_acknowledged_deploy_are_violations() {
        let mut h = History::default();
        h.push(Event::Deploy {
            number: 1,
            node: "a".into(),
            sent_us: 0,
            at_us: ms(15_000),
            module: "m1".into(),
            outcome: DeployOutcome::Unknown {
                reason: "no answer within 15 s".into(),
            },
        });
        shows(&mut h, "a", 16_000, 9, 1, 2_000);
        shows(&mut h, "b", 16_000, 9, 1, 2_000);
        shows(&mut h, "c", 16_000, 9, 1, 2_000);
        watched(&mut h, 16_100, 15_000);
        assert_eq!(
            details(&judge(&h)),
            [
                "1 deploys during the run: 0 acknowledged, 0 failed, 1 unanswered: none was \
                 acknowledged, nothing was tested",
                "the live nodes agree on module m9, which the runner never deployed",
            ]
        );

        let mut h = History::default();
        acked(&mut h, 1, "a", 2_000, 1);
        shows(&mut h, "a", 6_000, 1, 1, 2_000);
        shows(&mut h, "b", 6_000, 1, 1, 2_000);
        watched(&mut h, 6_100, 2_000);
        assert_eq!(
            details(&judge(&h)),
            [
                "the live nodes did not show one entry by 6100 ms: a shows version 1 (deploy 1 \
              via a), b shows version 1 (deploy 1 via a), c shows nothing"
            ]
        );
    }

    #[test]
    fn without_deploys_there_is_nothing_to_judge() {
        let mut h = History::default();
        watched(&mut h, 6_100, 2_000);
        let r = judge(&h);
        assert_eq!(r.violations, []);
        assert_eq!(r.stats.registry, None);
    }
}
