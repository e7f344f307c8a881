//! SchedulerAgent: picks the node for each MEU through the [`Placement`] seam, over this node
//! and the live peers the [`Remote`] seam offers, and re-places an MEU when the node running
//! it is lost (at-least-once: functions are stateless).
//!
//! The handler only decides: a local MEU goes straight to the RuntimePool, a remote one is
//! handed to a task that waits for the peer, so a slow peer never blocks the mailbox.
//!
//! [`Placement`]: tern_placement::Placement
//! [`Remote`]: crate::remote::Remote

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tern_wire::FunctionInfo;
use tokio::sync::oneshot;

use crate::delivery::forward;
use crate::message::Outcome;
use crate::remote::{Remote, RemoteFailure, Reservation};
use crate::runtime_pool::RuntimePoolMsg;
use crate::{ActorKind, Reply, Services};
use tern_metrics::Metrics;
use tern_placement::failover::{Failover, Next};
use tern_placement::{Decision, Fate, MeuView, NodeView, Observed, Placement};
use tern_runtime::Meu;

pub enum SchedulerMsg {
    Dispatch(Meu, Reply),
}
impl ractor::Message for SchedulerMsg {}

pub struct SchedulerAgent;

impl Actor for SchedulerAgent {
    type Msg = SchedulerMsg;
    type State = Arc<Services>;
    type Arguments = Arc<Services>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        services: Arc<Services>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(services)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        services: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let SchedulerMsg::Dispatch(meu, reply) = msg;
        if let Some((meu, reply)) = place(services, meu, reply) {
            run_here(services, meu, reply);
        }
        Ok(())
    }
}

/// Places `meu` among this node and its live peers, in the calling task: the SchedulerAgent's
/// handler, or a plain call's own task ([`crate::delivery::place_until_answered`]), which
/// then runs it without a mailbox hop. `Some` gives the MEU back, with the reply to answer,
/// when it runs on this node; `None` when a task now waits for the peer chosen or the reply
/// was answered (a placement error).
pub(crate) fn place(services: &Arc<Services>, meu: Meu, reply: Reply) -> Option<(Meu, Reply)> {
    // An unknown function is answered by the RuntimePool (typed NotFound), and a node
    // without peers has nothing to decide: both take the direct path.
    let (Some(deployed), Some(remote)) =
        (services.runtime.get(&meu.function), services.remote.get())
    else {
        return Some((meu, reply));
    };
    let placing = services
        .placing
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // This node's queue: what it admitted, less what it forwarded (that runs elsewhere)
    // and less this MEU's own permit (it is being placed, not waiting here yet).
    let mut here = local_view(services, &deployed.info);
    here.queue_depth = here
        .queue_depth
        .saturating_sub(remote.forwarding())
        .saturating_sub(1);
    let mut nodes = vec![here];
    remote.candidates(&deployed.info, &mut nodes);
    let meu_view = MeuView {
        function: meu.function.as_str(),
        items: meu.items,
        memory_mb: deployed.info.memory_mb,
        timeout_ms: deployed.info.timeout_ms,
        mean_exec_us: deployed
            .metrics
            .t_exec
            .sum_us()
            .checked_div(deployed.metrics.t_exec.count())
            .unwrap_or(0),
    };
    let span = placement_span(&meu.trace, services.placement.name(), nodes.len());
    let decision = match span.in_scope(|| services.placement.decide(&meu_view, &nodes)) {
        Ok(d) => d,
        Err(e) => {
            span.record("otel.status_code", "ERROR");
            let _ = reply.send(Err(e.into()));
            return None;
        }
    };
    span.record("chosen", nodes[decision.node].name.as_str());
    drop(span);
    let reply = if services.placement.observes() {
        observed_reply(services, &meu_view, nodes.clone(), decision, reply)
    } else {
        reply
    };
    match decision.node {
        0 => Some((meu, reply)),
        chosen => {
            let exec_us = meu_view.mean_exec_us;
            let reserved = remote.reserve(&nodes[chosen].name);
            drop(placing);
            tokio::spawn(run_remote(
                services.clone(),
                meu,
                deployed.info.clone(),
                exec_us,
                nodes,
                chosen,
                reply,
                reserved,
            ));
            None
        }
    }
}

/// The span of a placement decision among `candidates` nodes, a child of `parent` when the
/// invocation is traced; `Span::none()` otherwise, at no cost.
fn placement_span(parent: &tracing::Span, policy: &str, candidates: usize) -> tracing::Span {
    if parent.is_disabled() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        target: "tern::trace",
        parent: parent,
        "placement",
        policy,
        candidates,
        chosen = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

/// The span of one attempt to run an MEU on `peer`, as [`placement_span`].
fn forward_span(parent: &tracing::Span, peer: &str, attempt: u32) -> tracing::Span {
    if parent.is_disabled() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        target: "tern::trace",
        parent: parent,
        "forward",
        otel.kind = "client",
        peer,
        attempt,
        error = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

/// A reply channel that measures what becomes of `decision`: the answer goes on to `reply`
/// first, then the placement observes it. If the chain drops the channel (an actor was
/// restarting), `reply` is dropped with it and the caller re-submits, as without observing.
fn observed_reply(
    services: &Arc<Services>,
    meu: &MeuView<'_>,
    nodes: Vec<NodeView>,
    decision: Decision,
    reply: Reply,
) -> Reply {
    let (tx, rx) = oneshot::channel::<Result<Outcome, crate::Error>>();
    let placement = services.placement.clone();
    let function = meu.function.to_owned();
    let (items, memory_mb, timeout_ms, mean_exec_us) =
        (meu.items, meu.memory_mb, meu.timeout_ms, meu.mean_exec_us);
    let started = Instant::now();
    let mut reply = reply;
    tokio::spawn(async move {
        // Dropping `rx` when the caller has gone passes the cancellation on to the MEU.
        let result = tokio::select! {
            biased;
            result = rx => result,
            () = reply.closed() => return,
        };
        let Ok(result) = result else { return };
        let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        // Timings may come from a peer: saturate rather than trust them to be sane.
        let observed = match &result {
            Ok(o) => Observed {
                latency_us,
                cold_start: o.cold_start,
                cold_us: o.timings.load_us.saturating_add(o.timings.inst_us),
                exec_us: o.timings.exec_us,
                fate: Fate::Answered,
            },
            Err(e) => Observed {
                latency_us,
                fate: Fate::of_error(e.code()),
                ..Observed::default()
            },
        };
        let _ = reply.send(result);
        let view = MeuView {
            function: &function,
            items,
            memory_mb,
            timeout_ms,
            mean_exec_us,
        };
        placement.observe(&view, &nodes, decision, &observed);
    });
    tx
}

/// This node as a placement candidate. It is always alive; whether it fits the function and
/// has room is checked like any other node.
fn local_view(services: &Services, info: &FunctionInfo) -> NodeView {
    let c = &services.config;
    let m = &services.metrics;
    NodeView {
        name: c.node_name.clone(),
        alive: true,
        fits: info.memory_mb <= c.class_max_memory_mb && info.timeout_ms <= c.class_max_timeout_ms,
        queue_depth: m.in_flight.load(Relaxed).max(0) as usize,
        // The local MEU already holds an admission permit, so the local node is never "full"
        // for it.
        queue_cap: usize::MAX,
        warm: services.runtime.is_loaded(&info.hash),
        class: c.class,
        max_memory_mb: c.class_max_memory_mb,
        max_timeout_ms: c.class_max_timeout_ms,
        // Same measurements as the status this node publishes to its peers.
        cpu_percent: m.status_cpu_percent.load(Relaxed).min(u64::from(u32::MAX)) as u32,
        memory_bytes: m.status_memory_bytes.load(Relaxed),
        recent_mean_us: m.status_recent_mean_us.load(Relaxed),
        rtt_us: 0,
    }
}

fn run_here(services: &Services, meu: Meu, reply: Reply) {
    forward(
        services,
        ActorKind::RuntimePool,
        RuntimePoolMsg::Execute(meu, reply),
    );
}

/// Runs `meu` on `nodes[chosen]`; when that node is lost or refuses, [`Failover`] marks it
/// dead and places the MEU again among the rest (this node included), until it is answered.
#[allow(clippy::too_many_arguments)]
async fn run_remote(
    services: Arc<Services>,
    meu: Meu,
    info: FunctionInfo,
    mean_exec_us: u64,
    nodes: Vec<NodeView>,
    chosen: usize,
    reply: Reply,
    reserved: Option<Reservation>,
) {
    let Some(remote) = services.remote.get() else {
        run_here(&services, meu, reply);
        return;
    };
    let mut reply = reply;
    // A caller that goes away drops the exchange: the lane is reset and the peer cancels the
    // MEU it runs.
    let placed = tokio::select! {
        biased;
        placed = run_on_peers(
            remote.as_ref(),
            services.placement.as_ref(),
            &services.metrics,
            meu,
            &info,
            mean_exec_us,
            nodes,
            chosen,
            reserved,
        ) => placed,
        () = reply.closed() => {
            services.metrics.abandoned_meus.fetch_add(1, Relaxed);
            return;
        }
    };
    match placed {
        Placed::Here(meu) => run_here(&services, meu, reply),
        Placed::Answered(result) => {
            let _ = reply.send(result);
        }
    }
}

/// What became of an MEU sent to other nodes.
#[derive(Debug)]
pub enum Placed {
    /// Failover brought it back to this node: run it here.
    Here(Meu),
    /// A node answered it (an outcome or the function's own failure), or no node can take
    /// it.
    Answered(Result<Outcome, crate::Error>),
}

/// The failover loop of one MEU placed on `nodes[chosen]` (a peer): sends it through
/// `remote`, and each time the node is lost or refuses it, lets [`Failover`] re-place it with
/// `placement` among the nodes that have not failed it, until a node answers or it comes back
/// here. Free of actors, so the cluster link's tests drive it over an in-memory mesh.
#[allow(clippy::too_many_arguments)]
pub async fn run_on_peers(
    remote: &dyn Remote,
    placement: &dyn Placement,
    metrics: &Metrics,
    meu: Meu,
    info: &FunctionInfo,
    mean_exec_us: u64,
    nodes: Vec<NodeView>,
    chosen: usize,
    reserved: Option<Reservation>,
) -> Placed {
    let mut reserved = reserved;
    let mut meu = meu;
    let mut failover = Failover::new(nodes, chosen);
    let mut next = failover.next();
    loop {
        let (chosen, attempt) = match next {
            Next::Here => return Placed::Here(meu),
            Next::GiveUp(e) => return Placed::Answered(Err(e.into())),
            Next::Peer { node, attempt } => (node, attempt),
        };
        let node = failover.nodes()[chosen].name.clone();
        metrics.forwarded.fetch_add(1, Relaxed);
        // Each attempt is a span of its own; the peer's spans are its children.
        let span = forward_span(&meu.trace, node.as_str(), attempt);
        let mut sent = meu.clone();
        if !span.is_disabled() {
            sent.trace = span.clone();
        }
        let exchange = remote.execute(&node, sent, info, attempt);
        // The attempt counts itself from here on (`reserve`).
        drop(reserved.take());
        let answer = tracing::Instrument::instrument(exchange, span.clone()).await;
        if let Err(RemoteFailure::Failed(e) | RemoteFailure::Lost(e) | RemoteFailure::Refused(e)) =
            &answer
        {
            span.record("error", tracing::field::display(e));
            span.record("otel.status_code", "ERROR");
        }
        drop(span);
        let failure = match answer {
            Ok(outcome) => return Placed::Answered(Ok(outcome)),
            Err(RemoteFailure::Failed(e)) => return Placed::Answered(Err(e)),
            // The lost run may have used any part of the time limit: the rerun gets all of
            // it again (a refusal did not run, and its time stays spent).
            Err(RemoteFailure::Lost(e)) => {
                meu.accepted_at = tokio::time::Instant::now().into_std();
                e
            }
            Err(RemoteFailure::Refused(e)) => e,
        };
        tracing::info!(
            request_id = %meu.request_id,
            node = %node,
            attempt,
            error = %failure,
            "re-placing an MEU after its node failed"
        );
        metrics.failover_reruns.fetch_add(1, Relaxed);
        let view = MeuView {
            function: meu.function.as_str(),
            items: meu.items,
            memory_mb: info.memory_mb,
            timeout_ms: info.timeout_ms,
            mean_exec_us,
        };
        next = failover.failed(placement, &view);
    }
}
