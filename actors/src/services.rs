use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::decompose::ItemCost;
use crate::energy::EnergyMeter;
use crate::remote::Remote;
use tern_metrics::Metrics;
use tern_placement::Placement;
use tern_runtime::Runtime;
use tern_runtime::isolation::Sandbox;

/// The actors of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActorKind {
    Ingress,
    Decomposer,
    Scheduler,
    RuntimePool,
    Isolator,
    MetricsCollector,
}

impl ActorKind {
    pub const ALL: [ActorKind; 6] = [
        ActorKind::MetricsCollector,
        ActorKind::Isolator,
        ActorKind::RuntimePool,
        ActorKind::Scheduler,
        ActorKind::Decomposer,
        ActorKind::Ingress,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ActorKind::Ingress => "ingress",
            ActorKind::Decomposer => "decomposer",
            ActorKind::Scheduler => "scheduler",
            ActorKind::RuntimePool => "runtime_pool",
            ActorKind::Isolator => "isolator",
            ActorKind::MetricsCollector => "metrics_collector",
        }
    }
}

/// Settings of the pipeline that are not the runtime's.
#[derive(Clone, Debug)]
pub struct ServicesConfig {
    pub node_name: String,
    /// Most invocations in flight before 429.
    pub queue_cap: usize,
    /// Workers a `map` is spread over (chunk sizing).
    pub map_parallelism: usize,
    /// This node's class limits (the paper's platforms, Eq. 2): functions needing more run elsewhere.
    pub class_max_memory_mb: u32,
    pub class_max_timeout_ms: u32,
    /// This node's class, as peers see it.
    pub class: tern_wire::NodeClass,
}

/// What the actors of one node share. Survives actor restarts.
pub struct Services {
    pub config: ServicesConfig,
    pub runtime: Arc<Runtime>,
    pub metrics: Arc<Metrics>,
    pub sandbox: Arc<dyn Sandbox>,
    pub placement: Arc<dyn Placement>,
    /// Other nodes, once the node has joined a cluster (set at most once).
    pub remote: OnceLock<Arc<dyn Remote>>,
    /// Energy since the node started (for the paper's Eq. 8, requests per joule).
    pub energy: EnergyMeter,
    names: HashMap<ActorKind, String>,
    costs: Mutex<HashMap<String, ItemCost>>,
    /// Held while one MEU is placed among peers: reading their room, deciding and reserving
    /// are one step, so two calls placed at once (each in its caller's task) cannot both take
    /// a peer's last room.
    pub(crate) placing: Mutex<()>,
}

impl Services {
    pub fn new(
        config: ServicesConfig,
        runtime: Arc<Runtime>,
        metrics: Arc<Metrics>,
        sandbox: Arc<dyn Sandbox>,
        placement: Arc<dyn Placement>,
    ) -> Arc<Self> {
        // ractor's registry is process-global; a unique prefix lets several nodes share a
        // process (tests, embedded use) without their actors' names colliding.
        static INSTANCE: AtomicU64 = AtomicU64::new(0);
        let instance = INSTANCE.fetch_add(1, Ordering::Relaxed);
        let names = ActorKind::ALL
            .into_iter()
            .map(|k| {
                let name = format!("tern/{}/{instance}/{}", config.node_name, k.label());
                (k, name)
            })
            .collect();
        Arc::new(Self {
            config,
            runtime,
            metrics,
            sandbox,
            placement,
            remote: OnceLock::new(),
            energy: EnergyMeter::start(),
            names,
            costs: Mutex::default(),
            placing: Mutex::default(),
        })
    }

    /// The registered name of this node's actor of `kind`.
    pub fn name(&self, kind: ActorKind) -> &str {
        self.names.get(&kind).map(String::as_str).unwrap_or("")
    }

    pub(crate) fn cost_of(&self, function: &str) -> ItemCost {
        let costs = self.costs.lock().unwrap_or_else(|p| p.into_inner());
        costs.get(function).copied().unwrap_or(ItemCost::UNKNOWN)
    }

    pub(crate) fn observe_cost(&self, function: &str, items: usize, inst_us: u64, exec_us: u64) {
        let mut costs = self.costs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = costs.get_mut(function) {
            c.observe(items, inst_us, exec_us);
        } else {
            let mut c = ItemCost::UNKNOWN;
            c.observe(items, inst_us, exec_us);
            costs.insert(function.to_owned(), c);
        }
    }
}
