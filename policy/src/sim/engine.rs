//! The event engine: arrivals in time order and quota intervals; completions, keep-alive
//! expiry and evictions resolved lazily from timestamps (see the module above).

use crate::baselines::{DispatchCtx, Dispatcher, IdleHistogram, QuotaAction, QuotaPolicy};
use crate::features::{NodeFeatures, QuotaFeatures};
use crate::policy::QuotaDecision;
use crate::rng::Rng;
use crate::trace::Arrival;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use super::{FunctionSpec, NodeClass, SimConfig, SimReport};

#[derive(Debug, Clone)]
struct Instance {
    func: usize,
    mem_mb: f32,
    busy_until: f64,
    keep_until: f64,
}

#[derive(Debug, Clone)]
struct Node {
    class: NodeClass,
    slots: Vec<f64>,
    /// Start times of admitted requests not yet started (non-decreasing).
    pending_starts: VecDeque<f64>,
    /// End times of admitted requests not yet finished.
    ends: BinaryHeap<Reverse<OrdF64>>,
    instances: BTreeMap<usize, Vec<Instance>>,
    mem_used: f32,
    modules: VecDeque<usize>,
    ewma_latency: f64,
    busy_core_ms: f64,
}

/// Total order on f64 (times are always finite here) so end times can live in a heap.
#[derive(Debug, Clone, Copy)]
struct OrdF64(f64);
impl PartialEq for OrdF64 {
    fn eq(&self, o: &Self) -> bool {
        self.0.total_cmp(&o.0).is_eq()
    }
}
impl Eq for OrdF64 {}
impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for OrdF64 {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0)
    }
}

#[derive(Debug, Clone, Default)]
struct FnStats {
    requests: u32,
    cold: u32,
    latency_sum: f64,
    reward_sum: f64,
    last_arrival: Option<f64>,
    idle: Vec<f32>,
    action: Option<QuotaAction>,
    quota_index: Option<usize>,
    quota_energy_j: f64,
    quiet_intervals: u32,
    /// Start times of this function's admitted requests that were queued (pruned each tick).
    pending: Vec<f64>,
    /// Queue depth H at the last tick.
    queue_depth: usize,
}

/// Idle memory power, W per GiB held by idle warm instances.
const IDLE_W_PER_GIB: f64 = 0.4;

/// The simulator. Deterministic: same config, workload and (deterministic) policies → same report.
#[derive(Debug, Clone)]
pub struct Simulator {
    cfg: SimConfig,
    functions: Vec<FunctionSpec>,
    nodes: Vec<Node>,
    rng: Rng,
    fstats: Vec<FnStats>,
    hist: Vec<IdleHistogram>,
    report: SimReport,
    candidates: Vec<NodeFeatures>,
    /// The class a timed-out request is retried on: the cluster's first `standard` node's
    /// (calibrated if the cluster is), or the assumed standard class.
    reference: NodeClass,
}

fn default_action() -> QuotaAction {
    QuotaAction {
        decision: crate::baselines::DEFAULT_DECISION,
        keep_alive_ms: 600_000.0,
    }
}

impl Simulator {
    /// New simulator with an empty (cold) cluster.
    pub fn new(cfg: SimConfig, functions: Vec<FunctionSpec>) -> Self {
        let nodes = cfg
            .nodes
            .iter()
            .map(|c| Node {
                class: c.clone(),
                slots: vec![0.0; c.concurrency.max(1)],
                pending_starts: VecDeque::new(),
                ends: BinaryHeap::new(),
                instances: BTreeMap::new(),
                mem_used: 0.0,
                modules: VecDeque::new(),
                ewma_latency: 0.0,
                busy_core_ms: 0.0,
            })
            .collect();
        let n = functions.len();
        let reference = cfg
            .nodes
            .iter()
            .find(|c| c.name == "standard")
            .cloned()
            .unwrap_or_else(NodeClass::standard);
        Simulator {
            reference,
            rng: Rng::new(cfg.seed),
            cfg,
            functions,
            nodes,
            fstats: vec![FnStats::default(); n],
            hist: vec![IdleHistogram::new(240); n],
            report: SimReport::default(),
            candidates: Vec::new(),
        }
    }

    fn action(&self, f: usize) -> QuotaAction {
        self.fstats[f].action.unwrap_or_else(default_action)
    }

    /// Execution time of `f` on `node` under decision `d` (without noise).
    fn exec_ms(&self, f: usize, class: &NodeClass, d: &QuotaDecision) -> f64 {
        let spec = &self.functions[f];
        // More CPU share helps sub-linearly (serial parts); too little memory means paging.
        let share = (d.cpu_share() as f64).powf(0.6);
        let mem_penalty = if d.mem_mb() < spec.mem_mb { 1.5 } else { 1.0 };
        spec.exec_ms as f64 * mem_penalty / (class.speed as f64 * share)
    }

    fn prune(node: &mut Node, now: f64, energy: &mut f64) {
        while node.pending_starts.front().is_some_and(|&s| s <= now) {
            node.pending_starts.pop_front();
        }
        while node.ends.peek().is_some_and(|e| e.0.0 <= now) {
            node.ends.pop();
        }
        let mut freed = 0.0;
        for list in node.instances.values_mut() {
            list.retain(|i| {
                let dead = i.busy_until <= now && i.keep_until < now;
                if dead {
                    freed += i.mem_mb;
                    *energy += idle_energy(i, i.keep_until);
                }
                !dead
            });
        }
        node.instances.retain(|_, l| !l.is_empty());
        node.mem_used -= freed;
    }

    fn features(&self, f: usize, ni: usize, entry: usize, now: f64) -> NodeFeatures {
        let node = &self.nodes[ni];
        let c = &node.class;
        let act = self.action(f);
        let warm = node.instances.get(&f).map_or(0, |l| {
            l.iter()
                .filter(|i| i.busy_until <= now && i.keep_until >= now)
                .count()
        });
        let queued = node.pending_starts.len();
        let in_system = node.ends.len();
        let running = in_system.saturating_sub(queued);
        let cached = node.modules.contains(&f);
        let cold = if warm > 0 {
            0.0
        } else if cached {
            c.reuse_cost_ms()
        } else {
            c.cold_start_ms
        };
        let need = act.decision.mem_mb();
        let idle_mem: f32 = node
            .instances
            .values()
            .flatten()
            .filter(|i| i.busy_until <= now)
            .map(|i| i.mem_mb)
            .sum();
        let fits = warm > 0 || c.mem_mb - node.mem_used + idle_mem >= need;
        let conc = c.concurrency.max(1) as f32;
        let exec = self.exec_ms(f, c, &act.decision) as f32;
        let feasible = !self.cfg.mask_infeasible || exec <= c.time_limit_ms;
        NodeFeatures {
            warm_instances: warm as f32,
            queue_depth: queued as f32,
            concurrency: conc,
            cpu_util: running as f32 / conc,
            mem_util: node.mem_used / c.mem_mb,
            expected_cold_ms: cold,
            recent_latency_ms: node.ewma_latency as f32,
            rtt_ms: if ni == entry {
                0.0
            } else {
                self.cfg.hop_rtt_ms as f32
            },
            expected_exec_ms: exec,
            time_limit_ms: c.time_limit_ms,
            speed: c.speed,
            class: c.index,
            alive: true,
            has_capacity: feasible && fits && (queued as f32) < self.cfg.max_queue_per_slot * conc,
        }
    }

    /// Quota features of function `f` for the interval that just ended.
    fn quota_features(&self, f: usize) -> QuotaFeatures {
        let s = &self.fstats[f];
        let n = s.requests.max(1) as f32;
        let mem: f32 = self
            .nodes
            .iter()
            .filter_map(|nd| nd.instances.get(&f))
            .flatten()
            .map(|i| i.mem_mb)
            .sum();
        let total_mem: f32 = self.cfg.nodes.iter().map(|c| c.mem_mb).sum();
        let queued = s.queue_depth as f32;
        let mut idle = s.idle.clone();
        let idle_p50 = if idle.is_empty() {
            self.cfg.interval_ms as f32
        } else {
            idle.sort_by(|a, b| a.total_cmp(b));
            idle[idle.len() / 2]
        };
        QuotaFeatures {
            latency_ms: (s.latency_sum / n as f64) as f32,
            queue_depth: queued,
            tenant_weight: self
                .cfg
                .tenant_weights
                .get(self.functions[f].tenant)
                .copied()
                .unwrap_or(1.0),
            mem_use: mem / total_mem.max(1.0),
            cold_start_rate: s.cold as f32 / n,
            arrival_rate: s.requests as f32 / (self.cfg.interval_ms as f32 / 1000.0),
            mean_exec_ms: self.functions[f].exec_ms,
            idle_p50_ms: idle_p50,
        }
    }

    /// Close the interval: reward past quota decisions, take new ones, apply keep-warm.
    fn quota_tick(&mut self, now: f64, quota: &mut dyn QuotaPolicy) {
        for f in 0..self.functions.len() {
            let s = &mut self.fstats[f];
            s.pending.retain(|&start| start > now);
            s.queue_depth = s.pending.len();
            // Reward of the decision taken at the previous tick: mean request reward of the
            // interval (0 if idle) minus the energy of keeping instances warm.
            if let Some(qi) = self.fstats[f].quota_index {
                let s = &self.fstats[f];
                let mean = if s.requests > 0 {
                    s.reward_sum / s.requests as f64
                } else {
                    0.0
                };
                let r = mean - self.cfg.reward.mu as f64 * s.quota_energy_j / 100.0;
                if let Some(slot) = self.report.quota_rewards.get_mut(qi) {
                    *slot = (r as f32).clamp(-10.0, 0.0);
                }
            }
            let active = self.fstats[f].requests > 0;
            if active {
                self.fstats[f].quiet_intervals = 0;
            } else {
                self.fstats[f].quiet_intervals += 1;
            }
            // Only functions seen recently get a decision: the rest keep the default.
            let decide =
                self.fstats[f].last_arrival.is_some() && self.fstats[f].quiet_intervals < 10;
            let feats = self.quota_features(f);
            let s = &mut self.fstats[f];
            s.requests = 0;
            s.cold = 0;
            s.latency_sum = 0.0;
            s.reward_sum = 0.0;
            s.idle.clear();
            s.quota_energy_j = 0.0;
            s.quota_index = None;
            if !decide {
                s.action = None;
                continue;
            }
            let act = quota.decide(&feats, &self.hist[f]);
            self.fstats[f].action = Some(act);
            self.fstats[f].quota_index = Some(self.report.quota_rewards.len());
            self.report.quota_rewards.push(0.0);
            self.prewarm(f, now, act);
        }
    }

    /// Make sure `keep_warm` instances of `f` exist, placed on the nodes with most free memory.
    fn prewarm(&mut self, f: usize, now: f64, act: QuotaAction) {
        let want = act.decision.keep_warm_count() as usize;
        let have: usize = self
            .nodes
            .iter()
            .filter_map(|n| n.instances.get(&f))
            .map(|l| l.len())
            .sum();
        for _ in have..want {
            let Some(ni) = (0..self.nodes.len())
                .filter(|&i| {
                    let n = &self.nodes[i];
                    n.class.mem_mb - n.mem_used >= act.decision.mem_mb()
                })
                .max_by(|&a, &b| {
                    let fa = self.nodes[a].class.mem_mb - self.nodes[a].mem_used;
                    let fb = self.nodes[b].class.mem_mb - self.nodes[b].mem_used;
                    fa.total_cmp(&fb).then(b.cmp(&a))
                })
            else {
                return;
            };
            let node = &mut self.nodes[ni];
            let ready = now + node.class.cold_start_ms as f64;
            let energy =
                node.class.busy_w_per_core as f64 * node.class.cold_start_ms as f64 / 1000.0;
            node.mem_used += act.decision.mem_mb();
            node.instances.entry(f).or_default().push(Instance {
                func: f,
                mem_mb: act.decision.mem_mb(),
                busy_until: ready,
                keep_until: ready + act.keep_alive_ms.max(self.cfg.interval_ms),
            });
            touch_module(node, f, self.cfg.module_cache);
            self.report.energy_j += energy;
            self.fstats[f].quota_energy_j += energy;
        }
    }

    /// Run a workload. `arrivals` must be sorted by time. Quota decisions are taken at every
    /// interval boundary; the dispatcher is called once per arrival.
    pub fn run(
        &mut self,
        arrivals: &[Arrival],
        dispatch: &mut dyn Dispatcher,
        quota: &mut dyn QuotaPolicy,
    ) -> SimReport {
        let mut next_tick = 0.0;
        let mut energy = 0.0;
        // Dispatch feedback: (completion time, decision number, reward), earliest first.
        let mut done: BinaryHeap<Reverse<(OrdF64, u64, OrdF64)>> = BinaryHeap::new();
        let mut decision: u64 = 0;
        for a in arrivals {
            let now = a.t_ms;
            let f = a.function;
            if f >= self.functions.len() || !now.is_finite() {
                continue;
            }
            while now >= next_tick {
                self.quota_tick(next_tick, quota);
                next_tick += self.cfg.interval_ms;
            }
            for n in &mut self.nodes {
                Self::prune(n, now, &mut energy);
            }
            let mut cands = std::mem::take(&mut self.candidates);
            cands.clear();
            let entry = (decision % self.nodes.len().max(1) as u64) as usize;
            cands.extend((0..self.nodes.len()).map(|ni| self.features(f, ni, entry, now)));
            while let Some(Reverse((t, k, r))) = done.peek().copied()
                && t.0 <= now
            {
                done.pop();
                dispatch.on_complete(k, r.0 as f32);
            }
            let ctx = DispatchCtx {
                function_key: self.functions[f].key,
                now_ms: now,
            };
            let choice = dispatch.dispatch(&ctx, &cands);
            let seq = decision;
            decision += 1;
            let chosen = choice.filter(|&i| i < cands.len() && cands[i].selectable());
            let any_selectable = cands.iter().any(NodeFeatures::selectable);
            self.candidates = cands;
            let Some(ni) = chosen else {
                self.report.rejected += 1;
                self.report.dispatch_rewards.push(-10.0);
                // A rejection is the dispatcher's doing only if it had a selectable node.
                if any_selectable {
                    dispatch.on_complete(seq, -10.0);
                }
                continue;
            };
            let hop = if ni == entry {
                0.0
            } else {
                self.report.off_entry += 1;
                self.cfg.hop_rtt_ms
            };
            let (latency, reward) = self.admit(f, ni, now, hop, &mut energy);
            done.push(Reverse((OrdF64(now + latency), seq, OrdF64(reward as f64))));
        }
        // Requests still in flight at the end complete after the last arrival.
        while let Some(Reverse((_, k, r))) = done.pop() {
            dispatch.on_complete(k, r.0 as f32);
        }
        // Flush: account idle energy of every instance still alive at the end of the run.
        let end = arrivals.last().map_or(0.0, |a| a.t_ms);
        for n in &self.nodes {
            for i in n.instances.values().flatten() {
                energy += idle_energy(i, i.keep_until.min(end));
            }
        }
        self.report.energy_j += energy;
        self.report.sim_ms = end;
        std::mem::take(&mut self.report)
    }

    /// Place request `f` on node `ni`, `hop_ms` away from its entry node; returns its latency (ms)
    /// and reward.
    fn admit(
        &mut self,
        f: usize,
        ni: usize,
        now: f64,
        hop_ms: f64,
        energy: &mut f64,
    ) -> (f64, f32) {
        let act = self.action(f);
        let class = self.nodes[ni].class.clone();
        let base = self.exec_ms(f, &class, &act.decision);
        let noise = (self.cfg.exec_noise * self.rng.normal()).exp();
        let exec = base * noise;
        let node = &mut self.nodes[ni];
        // Earliest free slot (lowest index on ties, for determinism).
        let (slot, free_at) = node
            .slots
            .iter()
            .copied()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
            .unwrap_or((0, now));
        let start = now.max(free_at);
        // Warm hit: an instance of f idle at `start` and not expired; take the most recently used.
        let mut warm_idx = None;
        if let Some(list) = node.instances.get(&f) {
            let mut best = f64::NEG_INFINITY;
            for (k, i) in list.iter().enumerate() {
                if i.busy_until <= start && i.keep_until >= start && i.busy_until > best {
                    best = i.busy_until;
                    warm_idx = Some(k);
                }
            }
        }
        let cached = node.modules.contains(&f);
        let cold_ms = match warm_idx {
            Some(_) => 0.0,
            None if cached => class.reuse_cost_ms_f64(),
            None => class.cold_start_ms as f64,
        };
        let limit = class.time_limit_ms as f64;
        let timed_out = exec > limit;
        let service = f64::from(class.overhead_ms) + cold_ms + exec.min(limit);
        let end = start + service;
        let mut latency = class.rtt_ms as f64 + hop_ms + (start - now) + service;
        if timed_out {
            // Retry once on the reference node: full cold start and reference-speed execution.
            let reference = &self.reference;
            latency += f64::from(reference.overhead_ms)
                + reference.cold_start_ms as f64
                + base * class.speed as f64;
        }
        node.slots[slot] = end;
        if start > now {
            node.pending_starts.push_back(start);
        }
        node.ends.push(Reverse(OrdF64(end)));
        let keep_until = end + act.keep_alive_ms;
        match warm_idx {
            Some(k) => {
                if let Some(i) = node.instances.get_mut(&f).and_then(|l| l.get_mut(k)) {
                    *energy += idle_energy(i, start);
                    i.busy_until = end;
                    i.keep_until = keep_until;
                }
            }
            None => {
                let need = act.decision.mem_mb();
                evict_for(node, need, start, energy);
                node.mem_used += need;
                node.instances.entry(f).or_default().push(Instance {
                    func: f,
                    mem_mb: need,
                    busy_until: end,
                    keep_until,
                });
            }
        }
        touch_module(node, f, self.cfg.module_cache);
        let cores = act.decision.cpu_share() as f64;
        let e = class.busy_w_per_core as f64 * cores * service / 1000.0;
        *energy += e;
        node.busy_core_ms += service;
        node.ewma_latency = 0.9 * node.ewma_latency + 0.1 * latency;

        // Credit assignment: a request that creates an instance commits the cluster to holding
        // its memory for the keep-alive window; charge that expected idle energy to it (the
        // accounting above charges it later, when the instance is reclaimed).
        let commit = if warm_idx.is_none() {
            IDLE_W_PER_GIB * (act.decision.mem_mb() as f64 / 1024.0) * act.keep_alive_ms / 1000.0
        } else {
            0.0
        };
        let r = self.cfg.reward.reward(latency, cold_ms, e + commit);
        let rep = &mut self.report;
        rep.latencies_ms.push(latency as f32);
        rep.dispatch_rewards.push(r);
        if warm_idx.is_none() {
            rep.cold_starts += 1;
        }
        if warm_idx.is_some() || cached {
            rep.reuse_hits += 1;
        }
        if timed_out {
            rep.timeouts += 1;
        }
        if latency > self.cfg.reward.sla_ms as f64 {
            rep.sla_misses += 1;
        }
        let s = &mut self.fstats[f];
        if let Some(prev) = s.last_arrival {
            let idle = now - prev;
            s.idle.push(idle as f32);
            self.hist[f].record(idle);
        }
        s.last_arrival = Some(now);
        if start > now {
            s.pending.push(start);
        }
        s.requests += 1;
        if warm_idx.is_none() {
            s.cold += 1;
        }
        s.latency_sum += latency;
        s.reward_sum += r as f64;
        (latency, r)
    }
}

fn idle_energy(i: &Instance, until: f64) -> f64 {
    let idle_ms = (until - i.busy_until).max(0.0);
    IDLE_W_PER_GIB * (i.mem_mb as f64 / 1024.0) * idle_ms / 1000.0
}

fn touch_module(node: &mut Node, f: usize, cap: usize) {
    if let Some(p) = node.modules.iter().position(|&m| m == f) {
        node.modules.remove(p);
    }
    node.modules.push_back(f);
    while node.modules.len() > cap.max(1) {
        node.modules.pop_front();
    }
}

/// Free memory for `need` MiB by evicting idle instances, least recently used first.
fn evict_for(node: &mut Node, need: f32, now: f64, energy: &mut f64) {
    while node.class.mem_mb - node.mem_used < need {
        let mut victim: Option<(usize, usize, f64)> = None;
        for (&f, list) in &node.instances {
            for (k, i) in list.iter().enumerate() {
                if i.busy_until <= now && victim.is_none_or(|(_, _, t)| i.busy_until < t) {
                    victim = Some((f, k, i.busy_until));
                }
            }
        }
        let Some((f, k, _)) = victim else {
            // Nothing idle to evict: over-commit rather than fail (the node reported capacity
            // when the dispatcher looked; this is rare and bounded by one instance).
            return;
        };
        if let Some(list) = node.instances.get_mut(&f) {
            let inst = list.swap_remove(k);
            *energy += idle_energy(&inst, now);
            node.mem_used -= inst.mem_mb;
            debug_assert_eq!(inst.func, f);
            if list.is_empty() {
                node.instances.remove(&f);
            }
        }
    }
}
