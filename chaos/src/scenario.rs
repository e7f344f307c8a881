//! A scenario, as data (TOML): the cluster, the workload and the fault schedule, checked
//! before anything starts so a typo fails in a second, not after a ten-minute run.
//!
//! ```toml
//! name = "kill-one-under-load"
//! description = "kill -9 of one node of three under steady load, then a restart"
//! [cluster]
//! nodes = 3
//! [workload]
//! function = "echo"
//! rate_per_s = 200
//! duration_s = 30
//! [[fault]]
//! at_s = 10
//! kind = "kill"
//! node = "b"
//! restart_after_s = 5
//! ```

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::ChaosError;

/// Node names, in order: a cluster of `n` nodes is `a`, `b`, … (as the tests and
/// `tern cluster init` name them).
pub const NODE_NAMES: [&str; 9] = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];

/// Seconds between the restarts of members that an `add_node` makes (each member learns of
/// the new node when it starts again: membership is configured, not discovered).
pub const ADD_NODE_GAP_S: f64 = 2.0;

/// Most requests per second a scenario may ask for: one load generator on the test machine.
pub const MAX_RATE: u32 = 100_000;

/// Longest run: soaks are hours, not days.
pub const MAX_DURATION_S: u32 = 24 * 3600;

/// Most operations in one run (`rate_per_s` × `duration_s`): the history is kept in memory.
pub const MAX_OPERATIONS: u64 = 2_000_000;

/// Largest weight of one mode in the workload's mix.
pub const MAX_MIX_WEIGHT: u32 = 1000;

/// Node settings the runner sets for each node itself.
pub const RUNNER_KEYS: [&str; 10] = [
    "listen",
    "client_listen",
    "data_dir",
    "node_name",
    "examples_dir",
    "examples",
    "cluster_dir",
    "cluster_listen",
    "peers",
    "node_class",
];

/// Largest bound in `[expect]`, ms.
pub const MAX_EXPECT_MS: u64 = 3_600_000;

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ChaosError {
    ChaosError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The seed of the workload's randomness unless `--seed` gives another.
    #[serde(default = "one")]
    pub seed: u64,
    pub cluster: ClusterSpec,
    pub workload: Workload,
    #[serde(default, rename = "fault")]
    pub faults: Vec<Fault>,
    #[serde(default)]
    pub expect: Expect,
}

fn one() -> u64 {
    1
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// 1 to 9 nodes, named `a`, `b`, …
    pub nodes: usize,
    /// Each node's class (`standard`, `edge-small`, `cpu-burst`); missing ones are standard.
    #[serde(default)]
    pub classes: Vec<String>,
    /// Node settings for every node, as in a node's TOML file.
    #[serde(default)]
    pub config: toml::Table,
}

/// How invocations are sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// `POST /v1/functions/{name}/invoke` to each node in turn, one request per call, no
    /// retry: a call to a down node has no answer.
    #[default]
    Http,
    /// Through `tern-client` over each node's client API (QUIC): one client per node, its
    /// seeds every node starting with that one, so a call for a down node is retried with
    /// the same idempotency key and fails over to the next, as the client does for its users.
    Client,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// An example function (`functions/dist/<name>.wasm`), deployed before the load starts.
    pub function: String,
    /// Open-loop arrivals per second (no coordinated omission: a slow answer does not delay
    /// the next request). Leave it out with `trace`.
    #[serde(default)]
    pub rate_per_s: u32,
    /// The load's length (with `trace`, arrivals past it are not sent).
    pub duration_s: u32,
    /// Open-loop arrivals replayed from a per-minute invocation trace instead of a rate.
    #[serde(default)]
    pub trace: Option<TraceReplay>,
    #[serde(default)]
    pub mix: Mix,
    #[serde(default)]
    pub via: Via,
    /// Every this many seconds during the load, the runner deploys a new version of the
    /// function (the same module with a numbered custom section) as
    /// [`VERSIONS_FUNCTION`], through the nodes in turn; after the run every live node must
    /// show the winning one (`registries_converged`). Off when absent.
    #[serde(default)]
    pub deploy_every_s: Option<f64>,
    /// The tenant the workload belongs to: the runner creates it (its request rate, burst and
    /// stored results past anything a scenario sends, its other quotas the defaults) with a
    /// developer token, and deploys, calls and reads results with that token, so tenant and
    /// token replication, authentication and the tenant's cluster-wide quotas are under the
    /// faults too. Without it, the workload uses each node's admin token (tenant `default`).
    #[serde(default)]
    pub tenant: Option<String>,
}

/// A workload's arrivals from a per-minute invocation trace (the Azure Functions 2019 layout,
/// as `tern bench --trace` replays it): every traced invocation of the replayed minutes, of
/// any trace function, becomes one call of the workload's function (`scale` calls), at a
/// seeded random time within its minute, minutes compressed by `speedup`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceReplay {
    /// The trace file, relative to the directory `tern chaos run` runs in (the repository
    /// ships `traces/azure2019-http-12h.csv`).
    pub file: String,
    /// `A-B` (minutes A to B, B excluded) or one minute `A`.
    pub minutes: String,
    #[serde(default = "one_u32")]
    pub scale: u32,
    /// A trace minute lasts `60 / speedup` seconds.
    #[serde(default = "one_f64")]
    pub speedup: f64,
}

fn one_u32() -> u32 {
    1
}

fn one_f64() -> f64 {
    1.0
}

/// Most times a traced invocation is repeated, and most a trace minute is compressed.
pub const MAX_TRACE_SCALE: u32 = 10_000;
pub const MAX_TRACE_SPEEDUP: f64 = 3600.0;

impl Workload {
    /// When each operation is sent, from the start of the load, in order: `rate_per_s`
    /// evenly for `duration_s`, or the trace's arrivals (`trace_text`: its file's contents)
    /// that fall within `duration_s`, drawn with `seed`.
    pub fn schedule(
        &self,
        trace_text: Option<&str>,
        seed: u64,
    ) -> Result<Vec<std::time::Duration>, ChaosError> {
        use std::time::Duration;
        let Some(t) = &self.trace else {
            let ops = u64::from(self.rate_per_s) * u64::from(self.duration_s);
            return Ok((0..ops)
                .map(|op| Duration::from_secs_f64(op as f64 / f64::from(self.rate_per_s)))
                .collect());
        };
        let bad = |reason: String| invalid("workload.trace", reason);
        let text = trace_text.ok_or_else(|| bad("no trace text given".into()))?;
        let trace =
            tern_bench::replay::Trace::parse(text).map_err(|e| bad(format!("{}: {e}", t.file)))?;
        let mut minutes =
            tern_bench::replay::parse_minutes(&t.minutes).map_err(|e| bad(e.to_string()))?;
        // Only the minutes `duration_s` reaches are planned, and no more arrivals than a run
        // may send are drawn: a long trace at a large scale would otherwise be planned whole
        // before it is cut.
        let reached = (f64::from(self.duration_s) * t.speedup / 60.0).ceil() as usize;
        minutes.end = minutes
            .end
            .min(minutes.start.saturating_add(reached.max(1)));
        let drawn: u64 = trace
            .functions
            .iter()
            .flat_map(|f| f.per_minute.get(minutes.clone()).unwrap_or_default())
            .map(|&c| u64::from(c) * u64::from(t.scale))
            .sum();
        // Twice a run's bound: the last minute planned may reach past duration_s.
        let most = 2 * MAX_OPERATIONS;
        if drawn > most {
            return Err(bad(format!(
                "{drawn} arrivals in the minutes duration_s reaches, more than a run sends \
                 ({most} planned at most, {MAX_OPERATIONS} sent)"
            )));
        }
        let spec = tern_bench::replay::ReplaySpec {
            minutes,
            scale: t.scale,
            speedup: t.speedup,
            seed,
            function_template: self.function.clone(),
            work: tern_bench::replay::Work::Fixed(bytes::Bytes::new()),
        };
        let plan = tern_bench::replay::ReplayPlan::new(&trace, &spec)
            .map_err(|e| bad(format!("{}: {e}", t.file)))?;
        let end = Duration::from_secs(u64::from(self.duration_s));
        let at: Vec<Duration> = plan
            .requests
            .iter()
            .map(|r| r.at)
            .take_while(|at| *at < end)
            .collect();
        if at.len() as u64 > MAX_OPERATIONS {
            return Err(bad(format!(
                "{} operations within duration_s, more than {MAX_OPERATIONS}",
                at.len()
            )));
        }
        if at.is_empty() {
            return Err(bad(format!(
                "no arrival in minutes {} within duration_s: nothing would be sent",
                t.minutes
            )));
        }
        Ok(at)
    }

    /// What the load is, in words: its rate or its trace.
    pub fn load(&self) -> String {
        match &self.trace {
            None => format!("{} calls a second", self.rate_per_s),
            Some(t) => format!(
                "minutes {} of the trace `{}` (each invocation {} time(s), {}x faster)",
                t.minutes, t.file, t.scale, t.speedup
            ),
        }
    }
}

/// The function the runner redeploys during the load when `deploy_every_s` is set.
pub const VERSIONS_FUNCTION: &str = "versions";

/// The shortest gap between the runner's deploys during the load.
pub const MIN_DEPLOY_EVERY_S: f64 = 0.5;

/// Relative weights of the invocation modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mix {
    #[serde(default)]
    pub sync: u32,
    #[serde(default, rename = "async")]
    pub asynchronous: u32,
    #[serde(default)]
    pub map: u32,
}

impl Default for Mix {
    fn default() -> Self {
        Self {
            sync: 1,
            asynchronous: 0,
            map: 0,
        }
    }
}

/// One fault at `at_s` seconds into the run. (Unknown fields are refused by the kind's
/// variant: serde cannot deny them on a struct with a flattened field.)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    pub at_s: f64,
    #[serde(flatten)]
    pub kind: FaultKind,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultKind {
    /// `kill -9`; restarted with its data after `restart_after_s` if given.
    Kill {
        node: String,
        restart_after_s: Option<f64>,
    },
    /// `SIGSTOP` for `for_s`, then `SIGCONT`.
    Pause { node: String, for_s: f64 },
    /// No traffic between nodes that share no group, for `for_s` (`one_way`: only from the
    /// first group to the others). Every node is in a group; a node in two or more groups is
    /// a bridge, which reaches the nodes of each (two-way only: `groups = [["a", "b"], ["b",
    /// "c"]]` cuts a from c, and b talks to both).
    Partition {
        groups: Vec<Vec<String>>,
        #[serde(default)]
        one_way: bool,
        for_s: f64,
    },
    /// Loss, delay, reorder and duplication on the link from `from` to `to` for `for_s`.
    Link {
        from: String,
        to: String,
        #[serde(default)]
        loss_percent: f64,
        #[serde(default)]
        delay_ms: u32,
        #[serde(default)]
        reorder_percent: f64,
        #[serde(default)]
        duplicate_percent: f64,
        for_s: f64,
    },
    /// The node's wall clock moves by `by_s` (negative: back) for the rest of the run.
    ClockJump { node: String, by_s: f64 },
    /// The node's data directory is full for `for_s`.
    DiskFull { node: String, for_s: f64 },
    /// The node is killed, `what` (an artifact or the sled log) is damaged, and it restarts.
    Corrupt { node: String, what: Corruption },
    /// Every node restarted in turn, `gap_s` apart.
    RollingRestart { gap_s: f64 },
    /// A new node of `class` joins: it starts with every member as its peer, then each member
    /// is restarted in turn ([`ADD_NODE_GAP_S`] apart) with the new node among its peers,
    /// which is how a Tern cluster grows. The new node takes the next free name.
    AddNode {
        #[serde(default = "standard")]
        class: String,
    },
    /// A process with a bad identity tries to join the mesh (it must be refused, counted, and
    /// change no membership).
    Impostor { credential: BadCredential },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadCredential {
    /// A certificate from another cluster's CA.
    WrongCa,
    /// A certificate of this CA past its validity.
    Expired,
    /// A certificate of this CA for a name that is not in the cluster.
    UnknownName,
}

fn standard() -> String {
    "standard".to_owned()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Corruption {
    /// A compiled artifact truncated.
    Artifact,
    /// A bit flipped in the sled log.
    Sled,
}

/// The bounds the checkers hold the run to.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Expect {
    /// A dead or paused node is declared down by every other node within this.
    pub detection_ms: u64,
    /// After a fault heals, requests succeed again within this.
    pub recovery_ms: u64,
    /// After the last fault heals, every node's registry is the same within this.
    pub convergence_ms: u64,
    /// The load generator sends every operation within this of its open-loop schedule
    /// (later, and the run measured the generator rather than the cluster).
    pub send_lag_ms: u64,
}

impl Default for Expect {
    fn default() -> Self {
        Self {
            detection_ms: 1500,
            recovery_ms: 2000,
            convergence_ms: 5000,
            send_lag_ms: 100,
        }
    }
}

/// When faults are in force on a node, from the schedule: `[start, end)` in microseconds
/// since the run started (`u64::MAX`: to the end).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub node: usize,
    pub start_us: u64,
    pub end_us: u64,
}

fn us(s: f64) -> u64 {
    (s * 1e6).round() as u64
}

impl Scenario {
    /// Reads and checks a scenario.
    pub fn parse(text: &str) -> Result<Self, ChaosError> {
        let s: Scenario = toml::from_str(text).map_err(|e| ChaosError::Parse(e.to_string()))?;
        s.check()?;
        Ok(s)
    }

    /// The node names of the cluster as it starts. Faults name these, and kills, pauses and
    /// corruptions the nodes added during the run too ([`Scenario::all_nodes`]).
    pub fn nodes(&self) -> &[&'static str] {
        &NODE_NAMES[..self.cluster.nodes.min(NODE_NAMES.len())]
    }

    /// The classes of the nodes `add_node` faults add, in the order they join.
    pub fn added(&self) -> Vec<&str> {
        let mut adds: Vec<_> = self
            .faults
            .iter()
            .filter_map(|f| match &f.kind {
                FaultKind::AddNode { class } => Some((f.at_s, class.as_str())),
                _ => None,
            })
            .collect();
        adds.sort_by(|a, b| a.0.total_cmp(&b.0));
        adds.into_iter().map(|(_, class)| class).collect()
    }

    /// Every node name of the run: the cluster's, then the nodes added during it (named on
    /// from the last, in the order they join).
    pub fn all_nodes(&self) -> &[&'static str] {
        let all = self.cluster.nodes + self.added().len();
        &NODE_NAMES[..all.min(NODE_NAMES.len())]
    }

    /// Refuses a fault that comes after the load's last send (a trace that ends early): it
    /// would be injected with nothing to judge it by.
    pub fn check_schedule(&self, schedule: &[std::time::Duration]) -> Result<(), ChaosError> {
        let last = schedule
            .last()
            .map_or(0.0, std::time::Duration::as_secs_f64);
        for (i, f) in self.faults.iter().enumerate() {
            if f.at_s > last {
                return Err(invalid(
                    format!("fault[{i}].at_s"),
                    format!("after the load's last send at {last:.1} s"),
                ));
            }
        }
        Ok(())
    }

    fn node_index(&self, field: &str, name: &str) -> Result<usize, ChaosError> {
        self.nodes().iter().position(|n| *n == name).ok_or_else(|| {
            invalid(
                field,
                format!("no node {name:?} in a cluster of {}", self.cluster.nodes),
            )
        })
    }

    /// The index of `name` among every node of the run, for a fault at `at_s` that may name a
    /// node added during the run: then only once its add is through (every member before it
    /// restarted, [`ADD_NODE_GAP_S`] apart; the fault waits for the add anyway, as faults are
    /// injected one after another).
    fn member_index(&self, field: &str, name: &str, at_s: f64) -> Result<usize, ChaosError> {
        let i = self
            .all_nodes()
            .iter()
            .position(|n| *n == name)
            .ok_or_else(|| {
                invalid(
                    field,
                    format!(
                        "no node {name:?} in a cluster of {} with {} added",
                        self.cluster.nodes,
                        self.added().len()
                    ),
                )
            })?;
        if let Some(joined_s) = self.joined_at_s(i)
            && at_s < joined_s
        {
            return Err(invalid(
                field,
                format!("{name:?} before its add is through (at {joined_s} s at the earliest)"),
            ));
        }
        Ok(i)
    }

    /// The adds' times, in the order the nodes join (the `k`-th is node `cluster.nodes + k`).
    fn add_times(&self) -> Vec<f64> {
        let mut at: Vec<f64> = self
            .faults
            .iter()
            .filter(|f| matches!(f.kind, FaultKind::AddNode { .. }))
            .map(|f| f.at_s)
            .collect();
        at.sort_by(f64::total_cmp);
        at
    }

    /// For a node added during the run, when its add is through at the earliest: its start
    /// plus a restart gap for every node that was a member before it. `None` for a node the
    /// cluster starts with.
    fn joined_at_s(&self, i: usize) -> Option<f64> {
        let k = i.checked_sub(self.cluster.nodes)?;
        let at = *self.add_times().get(k)?;
        Some(at + ADD_NODE_GAP_S * (self.cluster.nodes + k) as f64)
    }

    /// The members at `at_s` in the order they are restarted: the starting nodes, then those
    /// added before it.
    fn members_at(&self, at_s: f64) -> Vec<usize> {
        let added = self.add_times().iter().filter(|&&t| t < at_s).count();
        (0..self.cluster.nodes + added).collect()
    }

    /// Whether a fault needs root (a tmpfs for a disk that fills; partitions and bad links go
    /// through the runner's relays, clock jumps through libfaketime).
    pub fn needs_root(&self) -> bool {
        self.faults
            .iter()
            .any(|f| matches!(f.kind, FaultKind::DiskFull { .. }))
    }

    /// Checks every field against the others.
    pub fn check(&self) -> Result<(), ChaosError> {
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(invalid(
                "name",
                "lower-case letters, digits and '-', not empty",
            ));
        }
        let n = self.cluster.nodes;
        if !(1..=NODE_NAMES.len()).contains(&n) {
            return Err(invalid("cluster.nodes", "1 to 9"));
        }
        if self.cluster.classes.len() > n {
            return Err(invalid("cluster.classes", "more classes than nodes"));
        }
        for c in &self.cluster.classes {
            if !["standard", "edge-small", "cpu-burst"].contains(&c.as_str()) {
                return Err(invalid(
                    "cluster.classes",
                    format!("{c:?} is not standard, edge-small or cpu-burst"),
                ));
            }
        }
        for key in self.cluster.config.keys() {
            if RUNNER_KEYS.contains(&key.as_str()) {
                return Err(invalid(
                    format!("cluster.config.{key}"),
                    "set by the runner for each node",
                ));
            }
        }
        let w = &self.workload;
        if w.function.is_empty() {
            return Err(invalid("workload.function", "empty"));
        }
        match &w.trace {
            None if !(1..=MAX_RATE).contains(&w.rate_per_s) => {
                return Err(invalid("workload.rate_per_s", format!("1 to {MAX_RATE}")));
            }
            None => {}
            Some(_) if w.rate_per_s != 0 => {
                return Err(invalid(
                    "workload.rate_per_s",
                    "leave it out with workload.trace (the trace gives the arrivals)",
                ));
            }
            Some(t) => {
                if t.file.is_empty() {
                    return Err(invalid("workload.trace.file", "empty"));
                }
                let minutes = tern_bench::replay::parse_minutes(&t.minutes)
                    .map_err(|e| invalid("workload.trace.minutes", e.to_string()))?;
                if minutes.start >= minutes.end {
                    return Err(invalid(
                        "workload.trace.minutes",
                        "A-B with B above A (B is excluded)",
                    ));
                }
                if !(1..=MAX_TRACE_SCALE).contains(&t.scale) {
                    return Err(invalid(
                        "workload.trace.scale",
                        format!("1 to {MAX_TRACE_SCALE}"),
                    ));
                }
                if !(t.speedup.is_finite() && t.speedup > 0.0 && t.speedup <= MAX_TRACE_SPEEDUP) {
                    return Err(invalid(
                        "workload.trace.speedup",
                        format!("above 0, at most {MAX_TRACE_SPEEDUP}"),
                    ));
                }
            }
        }
        if !(1..=MAX_DURATION_S).contains(&w.duration_s) {
            return Err(invalid(
                "workload.duration_s",
                format!("1 to {MAX_DURATION_S}"),
            ));
        }
        if u64::from(w.rate_per_s) * u64::from(w.duration_s) > MAX_OPERATIONS {
            return Err(invalid(
                "workload",
                format!("rate_per_s x duration_s is more than {MAX_OPERATIONS} operations"),
            ));
        }
        if let Some(every) = w.deploy_every_s
            && !(every.is_finite()
                && every >= MIN_DEPLOY_EVERY_S
                && every < f64::from(w.duration_s))
        {
            return Err(invalid(
                "workload.deploy_every_s",
                format!("{MIN_DEPLOY_EVERY_S} s or more, and shorter than the run"),
            ));
        }
        if let Some(tenant) = &w.tenant {
            match tenant.parse::<tern_tenancy::TenantName>() {
                Err(e) => return Err(invalid("workload.tenant", e.to_string())),
                Ok(t) if t.as_str() == tern_tenancy::TenantName::DEFAULT => {
                    return Err(invalid(
                        "workload.tenant",
                        "a tenant the runner creates (leave it out for `default`)",
                    ));
                }
                Ok(_) => {}
            }
        }
        if w.function == VERSIONS_FUNCTION {
            return Err(invalid(
                "workload.function",
                format!("{VERSIONS_FUNCTION:?} is the runner's, for its deploys during the load"),
            ));
        }
        let weights = [w.mix.sync, w.mix.asynchronous, w.mix.map];
        if weights.iter().all(|&x| x == 0) || weights.iter().any(|&x| x > MAX_MIX_WEIGHT) {
            return Err(invalid(
                "workload.mix",
                format!("weights of 0 to {MAX_MIX_WEIGHT}, not all 0"),
            ));
        }
        let e = &self.expect;
        if [
            e.detection_ms,
            e.recovery_ms,
            e.convergence_ms,
            e.send_lag_ms,
        ]
        .iter()
        .any(|&ms| ms == 0 || ms > MAX_EXPECT_MS)
        {
            return Err(invalid(
                "expect",
                format!("bounds of 1 to {MAX_EXPECT_MS} ms"),
            ));
        }
        let added = self
            .faults
            .iter()
            .filter(|f| matches!(f.kind, FaultKind::AddNode { .. }))
            .count();
        if n + added > NODE_NAMES.len() {
            return Err(invalid("fault", "adding nodes past 9"));
        }
        // An added node dials its peers directly, so it would bridge a partition of the
        // relays: the two are not run together.
        if added > 0
            && self
                .faults
                .iter()
                .any(|f| matches!(f.kind, FaultKind::Partition { .. } | FaultKind::Link { .. }))
        {
            return Err(invalid(
                "fault",
                "add_node with partition or link faults (an added node is not behind the relays)",
            ));
        }
        let duration = f64::from(w.duration_s);
        for (i, f) in self.faults.iter().enumerate() {
            let field = |name: &str| format!("fault[{i}].{name}");
            if !(f.at_s.is_finite() && f.at_s >= 0.0 && f.at_s < duration) {
                return Err(invalid(field("at_s"), "within the run's duration"));
            }
            let positive = |name: &str, v: f64| {
                if v.is_finite() && v > 0.0 && v <= f64::from(MAX_DURATION_S) {
                    Ok(())
                } else {
                    Err(invalid(
                        field(name),
                        format!("a positive number of seconds, at most {MAX_DURATION_S}"),
                    ))
                }
            };
            let percent = |name: &str, v: f64| {
                if (0.0..=100.0).contains(&v) {
                    Ok(())
                } else {
                    Err(invalid(field(name), "0 to 100"))
                }
            };
            match &f.kind {
                FaultKind::Kill {
                    node,
                    restart_after_s,
                } => {
                    self.member_index(&field("node"), node, f.at_s)?;
                    if let Some(r) = restart_after_s {
                        positive("restart_after_s", *r)?;
                    }
                }
                FaultKind::Pause { node, for_s } => {
                    self.member_index(&field("node"), node, f.at_s)?;
                    positive("for_s", *for_s)?;
                }
                // The disk and the clock are set up when the run starts: a node the cluster
                // starts with only.
                FaultKind::DiskFull { node, for_s } => {
                    self.node_index(&field("node"), node)?;
                    positive("for_s", *for_s)?;
                }
                FaultKind::Partition {
                    groups,
                    one_way,
                    for_s,
                } => {
                    positive("for_s", *for_s)?;
                    if groups.len() < 2 {
                        return Err(invalid(field("groups"), "at least two groups"));
                    }
                    let mut indices = Vec::new();
                    for group in groups {
                        if group.is_empty() {
                            return Err(invalid(field("groups"), "an empty group"));
                        }
                        let mut members = BTreeSet::new();
                        for name in group {
                            let i = self.node_index(&field("groups"), name)?;
                            if !members.insert(i) {
                                return Err(invalid(
                                    field("groups"),
                                    format!("{name:?} twice in one group"),
                                ));
                            }
                        }
                        indices.push(members.into_iter().collect::<Vec<_>>());
                    }
                    let seen: BTreeSet<usize> = indices.iter().flatten().copied().collect();
                    if seen.len() != n {
                        return Err(invalid(field("groups"), "every node in a group"));
                    }
                    let bridged = seen.len() != indices.iter().map(Vec::len).sum::<usize>();
                    if bridged && *one_way {
                        return Err(invalid(
                            field("groups"),
                            "a node in two groups (a bridge) with one_way",
                        ));
                    }
                    if crate::links::cuts(&indices, *one_way).is_empty() {
                        return Err(invalid(
                            field("groups"),
                            "groups that cut no link (every two nodes share a group)",
                        ));
                    }
                }
                FaultKind::Link {
                    from,
                    to,
                    loss_percent,
                    reorder_percent,
                    duplicate_percent,
                    for_s,
                    ..
                } => {
                    let (a, b) = (
                        self.node_index(&field("from"), from)?,
                        self.node_index(&field("to"), to)?,
                    );
                    if a == b {
                        return Err(invalid(field("to"), "a link joins two different nodes"));
                    }
                    percent("loss_percent", *loss_percent)?;
                    percent("reorder_percent", *reorder_percent)?;
                    percent("duplicate_percent", *duplicate_percent)?;
                    positive("for_s", *for_s)?;
                }
                FaultKind::ClockJump { node, by_s } => {
                    self.node_index(&field("node"), node)?;
                    if !by_s.is_finite() || *by_s == 0.0 || by_s.abs() > 10.0 * 365.0 * 86400.0 {
                        return Err(invalid(field("by_s"), "a non-zero number of seconds"));
                    }
                }
                FaultKind::Corrupt { node, .. } => {
                    self.member_index(&field("node"), node, f.at_s)?;
                }
                FaultKind::RollingRestart { gap_s } => positive("gap_s", *gap_s)?,
                FaultKind::Impostor { .. } => {}
                FaultKind::AddNode { class } => {
                    if !["standard", "edge-small", "cpu-burst"].contains(&class.as_str()) {
                        return Err(invalid(field("class"), format!("{class:?} is not a class")));
                    }
                }
            }
        }
        // Two faults on one node at once (a pause of a killed node, a kill during a rolling
        // restart) have no defined meaning: refused.
        let windows = self.fault_windows();
        for (i, a) in windows.iter().enumerate() {
            for b in &windows[i + 1..] {
                let meets = |x: &Window, y: &Window| {
                    x.start_us >= y.start_us && (x.start_us < y.end_us || x.start_us == y.start_us)
                };
                if a.node == b.node && (meets(a, b) || meets(b, a)) {
                    return Err(invalid(
                        "fault",
                        format!(
                            "two faults on node {} at once (from {} s)",
                            NODE_NAMES[a.node],
                            a.start_us.max(b.start_us) / 1_000_000
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// When each node is under a fault (killed and not yet back, paused, cut off, on a bad
    /// link, out of disk, restarting): errors and unknown outcomes from a node are excused
    /// only inside its windows (plus the recovery bound, which the checkers add).
    pub fn fault_windows(&self) -> Vec<Window> {
        let end = u64::MAX;
        let mut out = Vec::new();
        let index = |name: &str| self.all_nodes().iter().position(|n| *n == name);
        for f in &self.faults {
            let start = us(f.at_s);
            let mut push = |node: usize, end_us: u64| {
                out.push(Window {
                    node,
                    start_us: start,
                    end_us,
                })
            };
            match &f.kind {
                FaultKind::Kill {
                    node,
                    restart_after_s,
                } => {
                    if let Some(i) = index(node) {
                        push(
                            i,
                            restart_after_s.map_or(end, |r| start.saturating_add(us(r))),
                        );
                    }
                }
                FaultKind::Pause { node, for_s } | FaultKind::DiskFull { node, for_s } => {
                    if let Some(i) = index(node) {
                        push(i, start.saturating_add(us(*for_s)));
                    }
                }
                FaultKind::Partition { groups, for_s, .. } => {
                    // Every node is in a group, and every group is cut off from some node (a
                    // bridge's calls too may go to a node that cannot answer its peers): all
                    // are under the fault, once each.
                    let members: BTreeSet<usize> =
                        groups.iter().flatten().filter_map(|n| index(n)).collect();
                    for i in members {
                        push(i, start.saturating_add(us(*for_s)));
                    }
                }
                FaultKind::Link {
                    from, to, for_s, ..
                } => {
                    for i in [from, to].into_iter().filter_map(|n| index(n)) {
                        push(i, start.saturating_add(us(*for_s)));
                    }
                }
                // A restart after a corruption takes as long as a start: until the end of
                // the recovery bound, which the checkers add.
                FaultKind::Corrupt { node, .. } | FaultKind::ClockJump { node, .. } => {
                    if let Some(i) = index(node) {
                        push(i, start);
                    }
                }
                FaultKind::RollingRestart { gap_s } => {
                    for (k, i) in self.members_at(f.at_s).into_iter().enumerate() {
                        out.push(Window {
                            node: i,
                            start_us: start.saturating_add(us(gap_s * k as f64)),
                            end_us: start.saturating_add(us(gap_s * (k + 1) as f64)),
                        });
                    }
                }
                // Each member restarted with the new node among its peers, one after another
                // (the starting nodes, then those added earlier).
                FaultKind::AddNode { .. } => {
                    for (k, i) in self.members_at(f.at_s).into_iter().enumerate() {
                        out.push(Window {
                            node: i,
                            start_us: start.saturating_add(us(ADD_NODE_GAP_S * k as f64)),
                            end_us: start.saturating_add(us(ADD_NODE_GAP_S * (k + 1) as f64)),
                        });
                    }
                }
                FaultKind::Impostor { .. } => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    const KILL: &str = r#"
        name = "kill-one-under-load"
        [cluster]
        nodes = 3
        [workload]
        function = "echo"
        rate_per_s = 200
        duration_s = 30
        [[fault]]
        at_s = 10
        kind = "kill"
        node = "b"
        restart_after_s = 5
    "#;

    /// The fault windows starting at `from_s` or later, as (node, start, end) in whole seconds.
    fn windows_from(s: &Scenario, from_s: u64) -> Vec<(usize, u64, u64)> {
        s.fault_windows()
            .into_iter()
            .filter(|w| w.start_us >= from_s * 1_000_000)
            .map(|w| (w.node, w.start_us / 1_000_000, w.end_us / 1_000_000))
            .collect()
    }

    #[test]
    fn a_scenario_reads_with_defaults_and_its_fault_windows_follow_the_schedule() {
        let s = Scenario::parse(KILL).unwrap();
        assert_eq!(s.nodes(), ["a", "b", "c"]);
        assert_eq!(s.seed, 1);
        assert_eq!(s.workload.mix, Mix::default());
        assert_eq!(s.workload.via, Via::Http);
        assert_eq!(s.expect.detection_ms, 1500);
        assert!(!s.needs_root());
        assert_eq!(
            s.fault_windows(),
            [Window {
                node: 1,
                start_us: 10_000_000,
                end_us: 15_000_000
            }]
        );
    }

    #[test]
    fn every_fault_kind_reads_and_root_is_needed_only_for_namespaces_and_disks() {
        let text = format!(
            "{KILL}{}",
            r#"
            [[fault]]
            at_s = 1
            kind = "pause"
            node = "a"
            for_s = 1
            [[fault]]
            at_s = 2
            kind = "partition"
            groups = [["a"], ["b", "c"]]
            one_way = true
            for_s = 1
            [[fault]]
            at_s = 3.5
            kind = "link"
            from = "a"
            to = "c"
            loss_percent = 5
            delay_ms = 20
            for_s = 0.4
            [[fault]]
            at_s = 4
            kind = "clock_jump"
            node = "c"
            by_s = -3600
            [[fault]]
            at_s = 5
            kind = "disk_full"
            node = "c"
            for_s = 0.5
            [[fault]]
            at_s = 6
            kind = "corrupt"
            node = "a"
            what = "sled"
            [[fault]]
            at_s = 16
            kind = "rolling_restart"
            gap_s = 2
            "#
        );
        let s = Scenario::parse(&text).unwrap();
        assert_eq!(s.faults.len(), 8);
        assert!(s.needs_root());
        let rolling = windows_from(&s, 16);
        assert_eq!(rolling, [(0, 16, 18), (1, 18, 20), (2, 20, 22)]);
    }

    #[test]
    fn added_nodes_take_the_next_names_in_the_order_they_join_and_restart_each_member_before_them()
    {
        let text = format!(
            "{KILL}{}",
            r#"
            [[fault]]
            at_s = 25
            kind = "add_node"
            [[fault]]
            at_s = 18
            kind = "add_node"
            class = "edge-small"
            "#
        );
        let s = Scenario::parse(&text).unwrap();
        assert_eq!(s.nodes(), ["a", "b", "c"]);
        assert_eq!(s.all_nodes(), ["a", "b", "c", "d", "e"]);
        assert_eq!(s.added(), ["edge-small", "standard"]);
        let restarts = windows_from(&s, 18);
        // Each member in turn, `ADD_NODE_GAP_S` apart, for each add: d, added at 18 s, too
        // when e is added.
        assert_eq!(
            restarts,
            [
                (0, 25, 27),
                (1, 27, 29),
                (2, 29, 31),
                (3, 31, 33),
                (0, 18, 20),
                (1, 20, 22),
                (2, 22, 24)
            ]
        );
    }

    #[test]
    fn faults_may_name_an_added_node_once_its_add_is_through_and_later_restarts_include_it() {
        let with = |extra: &str| {
            format!(
                "{}{}{extra}",
                KILL.replace("duration_s = 30", "duration_s = 60"),
                r#"
            [[fault]]
            at_s = 16
            kind = "add_node"
            "#
            )
        };
        // d starts at 16 s and each of a, b and c is restarted 2 s apart: through at 22 s.
        let s = Scenario::parse(&with(
            "[[fault]]\nat_s = 23\nkind = \"kill\"\nnode = \"d\"\nrestart_after_s = 2\n\
             [[fault]]\nat_s = 26\nkind = \"pause\"\nnode = \"d\"\nfor_s = 1\n\
             [[fault]]\nat_s = 30\nkind = \"rolling_restart\"\ngap_s = 1",
        ))
        .unwrap();
        let windows = windows_from(&s, 23);
        assert_eq!(
            windows,
            [
                (3, 23, 25),
                (3, 26, 27),
                (0, 30, 31),
                (1, 31, 32),
                (2, 32, 33),
                (3, 33, 34)
            ]
        );
        let refused = |extra: &str| match Scenario::parse(&with(extra)) {
            Err(ChaosError::Invalid { field, reason }) => format!("{field}: {reason}"),
            other => panic!("{extra}: {other:?}"),
        };
        let early = refused("[[fault]]\nat_s = 21\nkind = \"kill\"\nnode = \"d\"");
        assert!(
            early.starts_with("fault[2].node") && early.contains("22"),
            "{early}"
        );
        let unknown = refused("[[fault]]\nat_s = 25\nkind = \"pause\"\nnode = \"e\"\nfor_s = 1");
        assert!(unknown.starts_with("fault[2].node"), "{unknown}");
        // The disk and the clock are set up at the start: not for an added node.
        let disk = refused("[[fault]]\nat_s = 25\nkind = \"disk_full\"\nnode = \"d\"\nfor_s = 1");
        assert!(disk.starts_with("fault[2].node"), "{disk}");
        // Two faults on d at once are refused as on any node.
        let both = refused(
            "[[fault]]\nat_s = 23\nkind = \"kill\"\nnode = \"d\"\nrestart_after_s = 5\n\
             [[fault]]\nat_s = 24\nkind = \"pause\"\nnode = \"d\"\nfor_s = 1",
        );
        assert!(both.contains("node d at once"), "{both}");
    }

    #[test]
    fn mistakes_are_refused_naming_the_field() {
        let refused = |from: &str, to: &str| match Scenario::parse(&KILL.replace(from, to)) {
            Err(ChaosError::Invalid { field, .. }) => field,
            other => panic!("{to}: {other:?}"),
        };
        assert_eq!(
            refused(
                "restart_after_s = 5",
                "restart_after_s = 5\n[[fault]]\nat_s = 20\nkind = \"add_node\"\n\
                 [[fault]]\nat_s = 25\nkind = \"link\"\nfrom = \"a\"\nto = \"c\"\nfor_s = 1"
            ),
            "fault"
        );
        assert_eq!(refused("nodes = 3", "nodes = 0"), "cluster.nodes");
        assert_eq!(refused("nodes = 3", "nodes = 10"), "cluster.nodes");
        assert_eq!(refused("node = \"b\"", "node = \"z\""), "fault[0].node");
        assert_eq!(refused("at_s = 10", "at_s = 30"), "fault[0].at_s");
        assert_eq!(
            refused("restart_after_s = 5", "restart_after_s = -1"),
            "fault[0].restart_after_s"
        );
        assert_eq!(
            refused("rate_per_s = 200", "rate_per_s = 0"),
            "workload.rate_per_s"
        );
        assert_eq!(refused("kill-one-under-load", "Kill One"), "name");
        for every in ["0.1", "30", "nan"] {
            assert_eq!(
                refused(
                    "duration_s = 30",
                    &format!("duration_s = 30\ndeploy_every_s = {every}")
                ),
                "workload.deploy_every_s"
            );
        }
        assert!(
            Scenario::parse(
                &KILL.replace("duration_s = 30", "duration_s = 30\ndeploy_every_s = 2")
            )
            .is_ok()
        );
        assert_eq!(
            refused("function = \"echo\"", "function = \"versions\""),
            "workload.function"
        );
        for bad in ["Acme", "default", "-x", ""] {
            assert_eq!(
                refused(
                    "function = \"echo\"",
                    &format!("function = \"echo\"\ntenant = {bad:?}")
                ),
                "workload.tenant",
                "{bad:?}"
            );
        }
        assert!(
            Scenario::parse(&KILL.replace(
                "function = \"echo\"",
                "function = \"echo\"\ntenant = \"acme\""
            ))
            .is_ok()
        );
        let partition = |groups: &str, one_way: bool| {
            Scenario::parse(&KILL.replace(
                "kind = \"kill\"\n        node = \"b\"\n        restart_after_s = 5",
                &format!(
                    "kind = \"partition\"\n        groups = {groups}\n        one_way = {one_way}\n        for_s = 1"
                ),
            ))
        };
        let refused_groups = |groups: &str, one_way: bool| match partition(groups, one_way) {
            Err(ChaosError::Invalid { field, reason }) if field == "fault[0].groups" => reason,
            other => panic!("{groups}: {other:?}"),
        };
        // a bridges the first two groups; c is cut off from both.
        assert!(partition(r#"[["a"], ["b", "a"], ["c"]]"#, false).is_ok());
        assert!(refused_groups(r#"[["a"], ["b", "a"], ["c"]]"#, true).contains("bridge"));
        assert!(refused_groups(r#"[["a", "b", "c"], ["b", "a"]]"#, false).contains("cut no link"));
        assert!(refused_groups(r#"[["a", "a"], ["b", "c"]]"#, false).contains("twice"));
        assert!(refused_groups(r#"[["a"], ["b"]]"#, false).contains("every node"));
        assert!(refused_groups(r#"[[], ["a"], ["b", "c"]]"#, false).contains("empty"));
        assert_eq!(
            refused(
                "restart_after_s = 5",
                "restart_after_s = 5\n[expect]\nsend_lag_ms = 0"
            ),
            "expect"
        );
        assert!(matches!(
            Scenario::parse(&KILL.replace("kind = \"kill\"", "kind = \"meteor\"")),
            Err(ChaosError::Parse(_))
        ));
        assert!(matches!(
            Scenario::parse(&format!("{KILL}\nsurprise = 1")),
            Err(ChaosError::Parse(_))
        ));
        assert_eq!(
            refused("restart_after_s = 5", "restart_after_s = 1e300"),
            "fault[0].restart_after_s"
        );
        assert_eq!(
            refused(
                "duration_s = 30",
                "duration_s = 86400\nmix = { sync = 1 }\n"
            ),
            "workload"
        );
        // Two faults on one node at once: a pause of the killed node.
        let both =
            format!("{KILL}\n[[fault]]\nat_s = 12\nkind = \"pause\"\nnode = \"b\"\nfor_s = 1\n");
        assert!(matches!(
            Scenario::parse(&both),
            Err(ChaosError::Invalid { field, reason }) if field == "fault" && reason.contains("node b")
        ));
        // A misspelt field of a fault is refused too, not ignored.
        assert!(matches!(
            Scenario::parse(&KILL.replace("restart_after_s", "restart_afer_s")),
            Err(ChaosError::Parse(_))
        ));
    }

    #[test]
    fn a_rate_is_sent_evenly_and_a_trace_as_it_arrives_within_the_duration() {
        let even = Scenario::parse(KILL).unwrap().workload;
        let at = even.schedule(None, 1).unwrap();
        assert_eq!(at.len() as u32, even.rate_per_s * even.duration_s);
        assert_eq!(
            at[1] - at[0],
            Duration::from_secs_f64(1.0 / f64::from(even.rate_per_s))
        );
        // Two trace functions: 3 + 1 calls in minute 0, 2 + 0 in minute 1.
        let text = "o,a,f,http,3,2\no,a,g,http,1,0\n";
        let traced = |minutes: &str, scale: u32, speedup: f64, duration_s: u32| {
            let mut w = even.clone();
            w.rate_per_s = 0;
            w.duration_s = duration_s;
            w.trace = Some(TraceReplay {
                file: "t.csv".into(),
                minutes: minutes.into(),
                scale,
                speedup,
            });
            w
        };
        let both = traced("0-2", 1, 1.0, 120).schedule(Some(text), 7).unwrap();
        assert_eq!(both.len(), 6);
        assert!(both.windows(2).all(|p| p[0] <= p[1]), "in order");
        assert_eq!(both.iter().filter(|t| t.as_secs() < 60).count(), 4);
        // The same seed, the same times; scale repeats each call; speedup compresses time.
        assert_eq!(
            traced("0-2", 1, 1.0, 120).schedule(Some(text), 7).unwrap(),
            both
        );
        let fast = traced("0-2", 2, 4.0, 120).schedule(Some(text), 7).unwrap();
        assert_eq!(fast.len(), 12);
        assert!(fast.iter().all(|t| t.as_secs() < 30));
        // Cut at duration_s.
        assert_eq!(
            traced("0-2", 1, 1.0, 60)
                .schedule(Some(text), 7)
                .unwrap()
                .len(),
            4
        );
        // Only the minutes duration_s reaches are planned (here minute 0 of 0-2), drawn as
        // they are when both are, and cut at 30 s.
        let half = traced("0-2", 1, 1.0, 30).schedule(Some(text), 7).unwrap();
        let before_30: Vec<Duration> = both.iter().copied().filter(|t| t.as_secs() < 30).collect();
        assert_eq!(half, before_30);
        // Nothing within duration_s: refused, not a run without load.
        let quiet = "o,a,f,http,0,5\n";
        assert!(matches!(
            traced("0-2", 1, 1.0, 60).schedule(Some(quiet), 7),
            Err(ChaosError::Invalid { field, .. }) if field == "workload.trace"
        ));
        // Arrivals bounded before they are drawn: 5 a minute at scale 10,000 over 100,000
        // minutes of a long run would be 5 billion.
        let long = format!("o,a,f,http{}\n", ",5".repeat(100_000));
        let huge = traced("0-100000", 10_000, 1.0, 24 * 3600);
        assert!(matches!(
            huge.schedule(Some(&long), 7),
            Err(ChaosError::Invalid { field, reason }) if field == "workload.trace" && reason.contains("more than a run sends")
        ));
        // A fault after the last send is refused.
        let s = Scenario::parse(KILL).unwrap();
        let short = [Duration::from_secs(1), Duration::from_secs(9)];
        assert!(matches!(
            s.check_schedule(&short),
            Err(ChaosError::Invalid { field, .. }) if field == "fault[0].at_s"
        ));
        assert!(s.check_schedule(&[Duration::from_secs(29)]).is_ok());
        // Past the trace's end, or unreadable: the field is named.
        for (w, text) in [
            (traced("0-3", 1, 1.0, 180), text),
            (traced("0-2", 1, 1.0, 120), "o,a,f,http,x\n"),
        ] {
            assert!(matches!(
                w.schedule(Some(text), 7),
                Err(ChaosError::Invalid { field, .. }) if field == "workload.trace"
            ));
        }
    }

    #[test]
    fn a_trace_workload_is_checked_before_anything_starts() {
        let with = |trace: &str| {
            KILL.replace("rate_per_s = 200\n", "").replace(
                "function = \"echo\"",
                &format!("function = \"echo\"\ntrace = {trace}"),
            )
        };
        let good = r#"{ file = "traces/azure2019-http-12h.csv", minutes = "0-1", speedup = 4 }"#;
        let s = Scenario::parse(&with(good)).unwrap();
        assert_eq!(s.workload.trace.as_ref().unwrap().scale, 1);
        let field = |text: &str| match Scenario::parse(text) {
            Err(ChaosError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            field(&with(good).replace("duration_s", "rate_per_s = 5\nduration_s")),
            "workload.rate_per_s"
        );
        assert_eq!(
            field(&with(&good.replace("0-1", "x"))),
            "workload.trace.minutes"
        );
        assert_eq!(
            field(&with(&good.replace("0-1", "5-3"))),
            "workload.trace.minutes"
        );
        assert_eq!(
            field(&with(&good.replace("speedup = 4", "speedup = 0"))),
            "workload.trace.speedup"
        );
        assert_eq!(
            field(&with(&good.replace("speedup = 4", "scale = 0"))),
            "workload.trace.scale"
        );
        assert_eq!(
            field(&KILL.replace("rate_per_s = 200\n", "")),
            "workload.rate_per_s"
        );
    }

    #[test]
    fn the_shipped_scenarios_all_read() {
        for (name, text) in crate::SHIPPED {
            let s = Scenario::parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(&s.name, name);
        }
        assert!(crate::SHIPPED.len() >= 8);
    }
}
