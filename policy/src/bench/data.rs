//! The benchmark's results as plain data: every number the report and the charts print, and the
//! setup they describe, with a JSON form so a committed report can be re-rendered later without
//! re-running the protocol.
//!
//! Statistics and load shapes are the simulator's own [`Summary`] and [`Profile`], which derive
//! serde only with the `candle` feature (the serving path builds without serde). A change to
//! either type is a change to this file format too.

use super::protocol::Options;
use crate::error::{PolicyError, Result};
use crate::sim::{SimConfig, Summary};
use crate::trace::Profile;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Everything one run of the protocol produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchData {
    /// What was run: options, windows, cluster, guard and thresholds.
    pub setup: Setup,
    /// One entry per seed, in the order of `setup.options.seeds`.
    pub seeds: Vec<SeedResult>,
    /// Cross-seed checkpoint selection.
    pub selection: Selection,
    /// The synthetic load profiles, run with the committed weights.
    pub synthetic: Synthetic,
    /// Wall time of the whole protocol (training, evaluation, selection, synthetic runs), s.
    pub total_s: f64,
}

/// The configuration the report describes, recorded so its prose follows the run, not the code
/// that renders it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Setup {
    /// The options after `--quick` caps and default seeds were applied.
    pub options: Options,
    /// Trace minutes training episodes are drawn from.
    pub train: Span,
    /// Validation window (model and checkpoint selection).
    pub validation: Span,
    /// Test window (never used for training or selection).
    pub test: Span,
    /// Seed of every evaluation's arrivals and execution noise.
    pub eval_seed: u64,
    /// λ of Eq. 1 used by every learned dispatcher.
    pub lambda_dispatch: f32,
    /// The simulated cluster.
    pub cluster: Cluster,
    /// Settings of the rolling-reward guard.
    pub guard: GuardSetup,
    /// Target (1): PPO's p99 at least this many percent below least-loaded's.
    pub target_p99_cut_pct: f64,
    /// Hop RTTs, ms, at which each seed's local-vs-remote preference is probed.
    pub hop_probe_rtts_ms: [f32; 2],
}

/// A half-open range of trace minutes, `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    /// First minute.
    pub from: usize,
    /// End (exclusive).
    pub to: usize,
}

/// The simulated cluster, as consecutive runs of nodes of one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    /// Node groups in node order.
    pub groups: Vec<NodeGroup>,
    /// RTT a request pays when placed off its entry node, ms.
    pub hop_rtt_ms: f64,
    /// Queued requests per slot at which a node stops admitting.
    pub max_queue_per_slot: f32,
    /// Where the classes' constants were measured (`None`: the assumed classes).
    #[serde(default)]
    pub calibrated_by: Option<String>,
}

/// `nodes` consecutive nodes of one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeGroup {
    /// Class name (`edge`, `standard`, `burst`).
    pub class: String,
    /// Nodes in the group.
    pub nodes: usize,
    /// Full cold-start cost, ms.
    pub cold_start_ms: f32,
    /// Execution time limit, ms.
    pub time_limit_ms: f32,
    /// CPU speed relative to the reference (1.0).
    pub speed: f32,
    /// Access RTT of the class, ms.
    pub access_rtt_ms: f32,
    /// Concurrency slots per node.
    pub slots_per_node: usize,
    /// Cost of a request that finds the module compiled but no idle instance, ms.
    #[serde(default)]
    pub reuse_ms: f32,
    /// Time every request costs on top of its execution, ms.
    #[serde(default)]
    pub overhead_ms: f32,
    /// Power of one busy core, W.
    #[serde(default)]
    pub busy_w_per_core: f32,
}

impl Cluster {
    /// The cluster of a simulator configuration, grouping consecutive nodes of the same class.
    pub fn of(sim: &SimConfig, calibrated_by: Option<String>) -> Self {
        let mut groups: Vec<NodeGroup> = Vec::new();
        for n in &sim.nodes {
            match groups.last_mut() {
                Some(g) if g.class == n.name => g.nodes += 1,
                _ => groups.push(NodeGroup {
                    class: n.name.to_string(),
                    nodes: 1,
                    cold_start_ms: n.cold_start_ms,
                    time_limit_ms: n.time_limit_ms,
                    speed: n.speed,
                    access_rtt_ms: n.rtt_ms,
                    slots_per_node: n.concurrency,
                    reuse_ms: n.reuse_cost_ms(),
                    overhead_ms: n.overhead_ms,
                    busy_w_per_core: n.busy_w_per_core,
                }),
            }
        }
        Cluster {
            groups,
            hop_rtt_ms: sim.hop_rtt_ms,
            max_queue_per_slot: sim.max_queue_per_slot,
            calibrated_by,
        }
    }

    /// Concurrency slots over all nodes.
    pub fn slots(&self) -> usize {
        self.groups.iter().map(|g| g.nodes * g.slots_per_node).sum()
    }
}

/// Settings of the rolling-reward guard the guarded rows ran with.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GuardSetup {
    /// Rewards kept per arm.
    pub window: usize,
    /// How far the learned arm's mean may fall below the heuristic's before it loses charge.
    pub margin: f32,
    /// One decision in every block of this many probes the arm not in charge.
    pub probe_every: u64,
    /// Rewards recorded after a switch before the next one may happen.
    pub min_between_switches: usize,
}

/// One policy's run on a seed's test window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyRow {
    /// Policy name as printed (also the key the report looks rows up by).
    pub name: String,
    /// Test-window statistics.
    pub stats: Summary,
    /// Wall time of the run, s.
    pub wall_s: f64,
    /// For a policy behind the guard: how the guard shared the decisions.
    pub guard: Option<GuardStats>,
}

/// What the guard did in one guarded run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GuardStats {
    /// Share of decisions served by the learned (or deliberately bad) arm, 0–1.
    pub learned_share: f64,
    /// Changes of the arm in charge.
    pub switches: u64,
}

/// A heuristic's validation p99, the reference lines of the learning-curve chart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationRef {
    /// Policy name.
    pub policy: String,
    /// Validation p99, ms.
    pub p99_ms: f64,
}

/// The greedy policy on the validation window after one PPO iteration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Iterations done; 0 = the initial weights.
    pub iteration: usize,
    /// Validation p99, ms.
    pub p99_ms: f64,
    /// Validation mean reward.
    pub mean_reward: f64,
}

/// The last PPO iteration's training statistics.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LastIteration {
    /// p99 of the sampling rollout, ms.
    pub rollout_p99_ms: f64,
    /// Dispatch policy entropy.
    pub entropy: f32,
    /// Dispatch approximate KL of the update.
    pub approx_kl: f32,
}

/// Everything one seed's run of the protocol produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedResult {
    /// The seed.
    pub seed: u64,
    /// Test-window rows, every policy, in the order they ran.
    pub rows: Vec<PolicyRow>,
    /// Validation p99 of least-loaded and warm affinity.
    pub validation_refs: Vec<ValidationRef>,
    /// Learning curve; the first point is the initial weights.
    pub curve: Vec<CurvePoint>,
    /// Statistics of the last training iteration (none with zero iterations).
    pub last_iteration: Option<LastIteration>,
    /// Iteration whose weights were selected on validation.
    pub chosen_iteration: usize,
    /// Validation mean reward of the selected weights on this seed's scenario.
    pub chosen_val_reward: f64,
    /// Training wall time, s.
    pub train_s: f64,
    /// Dispatch logit of an idle warm node on the entry node minus that of the same node one hop
    /// away, for an edge / standard / burst node, at each of `Setup::hop_probe_rtts_ms` (none if
    /// the weights did not load into the scorer).
    pub hop_preference: [Option<[f32; 3]>; 2],
}

impl SeedResult {
    /// Statistics of the policy named `name`, if it ran.
    pub fn get(&self, name: &str) -> Option<Summary> {
        self.row(name).map(|r| r.stats)
    }

    /// The row of the policy named `name`, if it ran.
    pub fn row(&self, name: &str) -> Option<&PolicyRow> {
        self.rows.iter().find(|r| r.name == name)
    }
}

/// Cross-seed checkpoint selection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    /// One row per seed's selected weights, in seed order.
    pub cross: Vec<CrossRow>,
    /// Seed whose weights are committed.
    pub committed_seed: u64,
    /// Iteration the committed weights come from.
    pub committed_iteration: usize,
}

/// One seed's selected weights, scored on every seed's validation scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrossRow {
    /// Seed whose weights these are.
    pub seed: u64,
    /// Validation mean reward on each seed's scenario, in seed order.
    pub per_seed: Vec<f64>,
    /// Mean of `per_seed`.
    pub mean: f64,
}

/// Synthetic profiles run with the committed weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Synthetic {
    /// Simulated seconds of each profile.
    pub duration_s: f64,
    /// Functions (Zipf popularity), the first ones of the committed seed's specs.
    pub functions: usize,
    /// One row per profile.
    pub rows: Vec<SyntheticRow>,
}

/// One synthetic profile's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyntheticRow {
    /// Name as printed.
    pub name: String,
    /// The load shape.
    pub profile: Profile,
    /// Arrivals generated.
    pub requests: usize,
    /// Least-loaded + fixed quota.
    pub least_loaded: Summary,
    /// Warm affinity + fixed quota.
    pub warm_affinity: Summary,
    /// Warm affinity + 2 cores, keep-warm 1.
    pub warm_affinity_2_cores: Summary,
    /// PPO dispatch + PPO quota.
    pub ppo: Summary,
}

impl BenchData {
    /// Pretty JSON. Floats are written in their shortest exact form, so [`BenchData::from_json`]
    /// gets the same values back. Non-finite floats would be written as `null` and not read
    /// back; the protocol produces none (empty runs give 0, not NaN).
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| PolicyError::BenchData(e.to_string()))
    }

    /// Parse what [`BenchData::to_json`] wrote.
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| PolicyError::BenchData(e.to_string()))
    }

    /// The result of the seed whose weights are committed.
    pub fn committed(&self) -> Option<&SeedResult> {
        self.seeds
            .iter()
            .find(|s| s.seed == self.selection.committed_seed)
    }

    /// Metadata stored with the committed weights in `ppo-weights.safetensors`.
    pub fn checkpoint_metadata(&self) -> BTreeMap<String, String> {
        let o = &self.setup.options;
        let v = self.setup.validation;
        let mut meta = BTreeMap::new();
        meta.insert(
            "seed".to_string(),
            self.selection.committed_seed.to_string(),
        );
        meta.insert("seeds".to_string(), o.seeds_csv());
        meta.insert("iterations".to_string(), o.iterations.to_string());
        meta.insert(
            "iteration".to_string(),
            self.selection.committed_iteration.to_string(),
        );
        meta.insert(
            "lambda_dispatch".to_string(),
            self.setup.lambda_dispatch.to_string(),
        );
        meta.insert(
            "selected_on".to_string(),
            format!(
                "validation minutes {}-{}, mean reward over all seeds' scenarios",
                v.from, v.to
            ),
        );
        // The measured constants it was trained with, for whoever serves it.
        if let Some(cal) = &o.calibration {
            meta.extend(cal.to_metadata());
        }
        meta
    }
}
