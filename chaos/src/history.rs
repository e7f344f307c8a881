//! The history of a run: every client operation when it was sent, to which node, and how it
//! ended, plus what the runner learnt afterwards (an async invocation's final record, the
//! node processes that ended). Written as JSON lines next to the report, so a failed run can
//! be read by hand and checked again.

use serde::{Deserialize, Serialize};

/// How an invocation was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Sync,
    Async,
    Map,
}

/// How an operation ended, as its client saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// An answer with output (sync and map), from the node that ran it.
    Ok { output: String, ran_on: String },
    /// An async invocation accepted with this id (202).
    Accepted { id: String },
    /// A typed error: the API's error code and the HTTP status.
    Failed { code: String, status: u16 },
    /// No answer: the connection broke or the client gave up. The operation may or may not
    /// have run (Jepsen's "info").
    Unknown { reason: String },
}

/// How a deploy the runner sent during the load ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum DeployOutcome {
    /// 201: the node stored it as `version`, deployed at `deployed_at_ms` (its wall clock).
    Acknowledged { version: u64, deployed_at_ms: u64 },
    /// A typed error: the API's error code and the HTTP status.
    Failed { code: String, status: u16 },
    /// No answer: it may or may not have been stored.
    Unknown { reason: String },
}

/// A function's registry entry as one node showed it (`GET /v1/functions/{name}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryView {
    pub hash: String,
    pub version: u64,
    pub deployed_at_ms: u64,
}

/// Whether a fault began or healed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Start,
    End,
}

/// One line of the history. Times are microseconds since the run started.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// An operation for `node`, at the time the open-loop schedule gave it (a late send does
    /// not hide its delay from the latency).
    Invoke {
        op: u64,
        at_us: u64,
        node: String,
        mode: Mode,
        input: String,
    },
    /// How operation `op` ended.
    Complete {
        op: u64,
        at_us: u64,
        outcome: Outcome,
    },
    /// The final record of the async invocation accepted by `op`, read after the run:
    /// `status` as the API says (`succeeded`, `failed`, `pending`), `attempts` runs.
    Finished {
        op: u64,
        at_us: u64,
        status: String,
        attempts: u32,
        output: Option<String>,
    },
    /// A node process ended; `scheduled` when the fault schedule killed it (a restart that
    /// failed is an unscheduled end).
    NodeExit {
        node: String,
        at_us: u64,
        scheduled: bool,
    },
    /// What a `partition` or `link` fault did to the datagrams from `from` to `to` while it
    /// held, recorded as it healed: passed on (of which `held` back for others to overtake and
    /// `duplicated`), and dropped.
    Link {
        from: String,
        to: String,
        at_us: u64,
        passed: u64,
        dropped: u64,
        held: u64,
        duplicated: u64,
    },
    /// What `observer`'s cluster view said of `peer` (whether it is up) at `at_us`, when the
    /// runner's polls first saw it or saw it change (each poll is timed when it was sent).
    View {
        observer: String,
        peer: String,
        up: bool,
        at_us: u64,
    },
    /// The runner stopped polling the nodes' cluster views at `at_us` (what happened after
    /// it is not in the history).
    ViewsWatched { until_us: u64 },
    /// `node` asked its supervisor for a restart (it exited with 75, as `tern up` does when
    /// its store must be opened again and its sockets came from socket activation), and the
    /// runner, its supervisor, started it again.
    Restarted { node: String, at_us: u64 },
    /// An impostor (a `tern up` process with a bad identity: `credential`, claiming to be node
    /// `claimed`) dialled every member for a while from `at_us`, then was stopped (not a fault
    /// window: it excuses no error of the cluster). `answered`: its HTTP API
    /// answered, so it really ran; `max_peers_up`: the most members its own view ever had up
    /// (any is admission); `rejected_handshakes`: the members' refused mesh handshakes, summed,
    /// over its life.
    Impostor {
        at_us: u64,
        credential: String,
        claimed: String,
        answered: bool,
        max_peers_up: u32,
        rejected_handshakes: u64,
    },
    /// A fault on `node` began or healed, when the runner did it (`what`: the fault's kind).
    /// Errors are judged against these, not against the schedule.
    Fault {
        node: String,
        at_us: u64,
        phase: Phase,
        what: String,
    },
    /// What a `corrupt` fault damaged on `node` (for a sled log: which bit of which byte).
    Damaged {
        node: String,
        at_us: u64,
        what: String,
    },
    /// `node` refused to start on its damaged store (it exited with 65, as `tern up` does
    /// when its store lost writes it had acknowledged); `detail` is its last error line. What
    /// a node must do with a damaged store: refuse, never start silently without them.
    StoreRefused {
        node: String,
        at_us: u64,
        detail: String,
    },
    /// The load generator's account, once the load ended: operations the schedule asked for
    /// and the longest delay of a send behind its time.
    Load { scheduled_ops: u64, max_lag_us: u64 },
    /// The runner's `number`th deploy of a new version of the function it redeploys during
    /// the load (`module` its SHA-256, hex), sent to `node` at `sent_us`, ended at `at_us`.
    Deploy {
        number: u64,
        node: String,
        sent_us: u64,
        at_us: u64,
        module: String,
        outcome: DeployOutcome,
    },
    /// What `node` showed of that function's registry entry at `at_us` (`None`: not
    /// deployed, or no answer), when the runner's polls after the run first saw it or saw it
    /// change.
    Registry {
        node: String,
        at_us: u64,
        entry: Option<EntryView>,
    },
    /// The runner stopped polling the registries at `until_us`. `live`: the nodes it polled
    /// (running, not under a fault); `settled_us`: when the last fault healed or the last
    /// deploy ended, whichever was later (convergence is timed from it).
    RegistriesWatched {
        until_us: u64,
        settled_us: u64,
        live: Vec<String>,
    },
}

/// A run's events in the order the runner recorded them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub events: Vec<Event>,
}

impl History {
    pub fn push(&mut self, e: Event) {
        self.events.push(e);
    }

    /// One JSON object per line.
    pub fn to_json_lines(&self) -> String {
        let mut out = String::new();
        for e in &self.events {
            // Serialising these plain types cannot fail.
            if let Ok(line) = serde_json::to_string(e) {
                out.push_str(&line);
                out.push('\n');
            }
        }
        out
    }

    /// Reads [`History::to_json_lines`] back; the error names the line.
    pub fn from_json_lines(text: &str) -> Result<Self, String> {
        let mut events = Vec::new();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            events.push(
                serde_json::from_str(line).map_err(|e| format!("history line {}: {e}", i + 1))?,
            );
        }
        Ok(Self { events })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_history_survives_its_json_lines_and_a_bad_line_is_named() {
        let mut h = History::default();
        h.push(Event::Invoke {
            op: 1,
            at_us: 10,
            node: "a".into(),
            mode: Mode::Sync,
            input: "x".into(),
        });
        h.push(Event::Complete {
            op: 1,
            at_us: 900,
            outcome: Outcome::Failed {
                code: "unavailable".into(),
                status: 503,
            },
        });
        h.push(Event::NodeExit {
            node: "b".into(),
            at_us: 5,
            scheduled: true,
        });
        let text = h.to_json_lines();
        assert_eq!(text.lines().count(), 3);
        assert!(text.contains(r#""event":"complete""#), "{text}");
        assert_eq!(History::from_json_lines(&text).unwrap(), h);
        let err = History::from_json_lines(&format!("{text}{{\"event\":\"nope\"}}\n")).unwrap_err();
        assert!(err.starts_with("history line 4"), "{err}");
    }
}
