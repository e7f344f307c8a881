//! What the dispatch network sees of a candidate node: a [`NodeView`] mapped to tern-policy's
//! per-node [`NodeFeatures`], and a Tern node class mapped to the simulator's class.

use tern_policy::features::NodeFeatures;
use tern_policy::sim::{Calibration, NodeClass as SimClass};
use tern_wire::NodeClass;

use super::LearnedPlacement;
use crate::{MeuView, NodeView};

/// Memory assumed when `/proc/meminfo` cannot be read (the features need a fraction).
const DEFAULT_MEMORY_BYTES: u64 = 8 << 30;

impl LearnedPlacement {
    /// The per-node features the dispatch network sees for placing `meu` on `n`.
    pub fn features(&self, meu: &MeuView<'_>, n: &NodeView) -> NodeFeatures {
        let class = class_index(n.class);
        NodeFeatures {
            warm_instances: if n.warm { 1.0 } else { 0.0 },
            queue_depth: n.queue_depth as f32,
            concurrency: self.slots,
            cpu_util: n.cpu_percent as f32 / (100.0 * self.slots),
            mem_util: (n.memory_bytes as f64 / self.memory_total_bytes) as f32,
            // A ready module is compiled on that node: a cold start there is a load and
            // instantiation, costed as in the cluster the network was trained in (measured
            // if its checkpoint carries a calibration).
            expected_cold_ms: if n.warm {
                0.0
            } else {
                self.classes.get(class).cold_start_ms
            },
            recent_latency_ms: n.recent_mean_us as f32 / 1000.0,
            rtt_ms: n.rtt_us as f32 / 1000.0,
            expected_exec_ms: meu.mean_exec_us as f32 / 1000.0,
            time_limit_ms: n.max_timeout_ms as f32,
            // Nodes are not benchmarked: all run at the reference speed.
            speed: 1.0,
            class,
            alive: n.alive,
            has_capacity: n.fits && n.queue_depth < n.queue_cap,
        }
    }

    /// Features of candidate `i` (the same for every position: the SchedulerAgent already
    /// leaves the MEU being placed out of this node's queue depth).
    pub(super) fn candidate_features(
        &self,
        meu: &MeuView<'_>,
        _i: usize,
        n: &NodeView,
    ) -> NodeFeatures {
        self.features(meu, n)
    }

    pub(super) fn all_features(&self, meu: &MeuView<'_>, nodes: &[NodeView]) -> Vec<NodeFeatures> {
        nodes
            .iter()
            .enumerate()
            .map(|(i, n)| self.candidate_features(meu, i, n))
            .collect()
    }
}

/// tern-policy's class index of a Tern node class: 0 edge, 1 standard, 2 CPU-burst.
pub fn class_index(class: NodeClass) -> u8 {
    match class {
        NodeClass::EdgeSmall => 0,
        NodeClass::Standard => 1,
        NodeClass::CpuBurst => 2,
    }
}

/// The simulator classes a checkpoint was trained in, by tern-policy class index: the
/// assumed ones, or those with a calibration's measured constants. The node gives the networks
/// the same cold starts and powers they learned with.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainedClasses([SimClass; 3]);

impl TrainedClasses {
    /// The simulator's assumed classes (a checkpoint without a calibration).
    pub fn assumed() -> Self {
        TrainedClasses([SimClass::edge(), SimClass::standard(), SimClass::burst()])
    }

    /// The classes of a checkpoint trained with `calibration` (assumed if `None`).
    pub fn of(calibration: Option<&Calibration>) -> Self {
        let mut classes = Self::assumed();
        if let Some(cal) = calibration {
            for c in &mut classes.0 {
                *c = cal.apply(c);
            }
        }
        classes
    }

    /// The class of tern-policy index `class` (0 edge, 1 standard, 2 CPU-burst; anything
    /// else is taken as standard).
    pub fn get(&self, class: u8) -> &SimClass {
        match class {
            0 => &self.0[0],
            2 => &self.0[2],
            _ => &self.0[1],
        }
    }

    /// Power of one busy core of a node of `class`, W (the rewards of both networks use it).
    pub fn busy_watts_per_core(&self, class: NodeClass) -> f32 {
        self.get(class_index(class)).busy_w_per_core
    }
}

/// `MemTotal` of `/proc/meminfo`, or 8 GiB when unknown.
pub(super) fn system_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(DEFAULT_MEMORY_BYTES, |kib| kib * 1024)
        .max(1)
}
