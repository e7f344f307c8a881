//! SchedulerAgent: picks the node for each MEU through the [`Placement`] seam, over this node
//! and the live peers the [`Remote`] seam offers, and re-places an MEU when the node running
//! it is lost (at-least-once: functions are stateless).
//!
//! The handler only decides: a local MEU goes straight to the RuntimePool, a remote one is
//! handed to a task that waits for the peer, so a slow peer never blocks the mailbox.
//!
//! [`Placement`]: crate::placement::Placement
//! [`Remote`]: crate::remote::Remote

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tern_wire::FunctionInfo;

use crate::pipeline::forward;
use crate::placement::{MeuView, NodeView};
use crate::remote::RemoteFailure;
use crate::runtime::Meu;
use crate::runtime_pool::RuntimePoolMsg;
use crate::{ActorKind, Reply, Services};

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
        // An unknown function is answered by the RuntimePool (typed NotFound), and a node
        // without peers has nothing to decide: both take the direct path.
        let (Some(deployed), Some(_)) =
            (services.runtime.get(&meu.function), services.remote.get())
        else {
            run_here(services, meu, reply);
            return Ok(());
        };
        let mut nodes = vec![local_view(services, &deployed.info)];
        if let Some(remote) = services.remote.get() {
            remote.candidates(&deployed.info, &mut nodes);
        }
        match place(services, &meu, &nodes) {
            Ok(0) => run_here(services, meu, reply),
            Ok(chosen) => {
                tokio::spawn(run_remote(
                    services.clone(),
                    meu,
                    deployed.info.clone(),
                    nodes,
                    chosen,
                    reply,
                ));
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
        Ok(())
    }
}

/// This node as a placement candidate. It is always alive; whether it fits the function and
/// has room is checked like any other node.
fn local_view(services: &Services, info: &FunctionInfo) -> NodeView {
    let c = &services.config;
    NodeView {
        name: c.node_name.clone(),
        alive: true,
        fits: info.memory_mb <= c.class_max_memory_mb && info.timeout_ms <= c.class_max_timeout_ms,
        queue_depth: services.metrics.in_flight.load(Relaxed).max(0) as usize,
        // The local MEU already holds an admission permit, so the local node is never "full"
        // for it.
        queue_cap: usize::MAX,
        warm: services.runtime.is_loaded(&info.hash),
    }
}

fn place(services: &Services, meu: &Meu, nodes: &[NodeView]) -> Result<usize, crate::Error> {
    let view = MeuView {
        function: meu.function.as_str(),
        items: meu.items,
    };
    services.placement.place(&view, nodes)
}

fn run_here(services: &Services, meu: Meu, reply: Reply) {
    forward(
        services,
        ActorKind::RuntimePool,
        RuntimePoolMsg::Execute(meu, reply),
    );
}

/// Runs `meu` on `nodes[chosen]`; when that node is lost or refuses, marks it dead and places
/// the MEU again among the rest (this node included), until it is answered.
async fn run_remote(
    services: Arc<Services>,
    meu: Meu,
    info: FunctionInfo,
    mut nodes: Vec<NodeView>,
    mut chosen: usize,
    reply: Reply,
) {
    let Some(remote) = services.remote.get() else {
        run_here(&services, meu, reply);
        return;
    };
    let mut attempt = 1;
    loop {
        if chosen == 0 {
            run_here(&services, meu, reply);
            return;
        }
        services.metrics.forwarded.fetch_add(1, Relaxed);
        let failure = match remote
            .execute(&nodes[chosen].name, meu.clone(), &info, attempt)
            .await
        {
            Ok(outcome) => {
                let _ = reply.send(Ok(outcome));
                return;
            }
            Err(RemoteFailure::Failed(e)) => {
                let _ = reply.send(Err(e));
                return;
            }
            Err(RemoteFailure::Lost(e) | RemoteFailure::Refused(e)) => e,
        };
        tracing::info!(
            request_id = %meu.request_id,
            node = %nodes[chosen].name,
            attempt,
            error = %failure,
            "re-placing an MEU after its node failed"
        );
        services.metrics.failover_reruns.fetch_add(1, Relaxed);
        nodes[chosen].alive = false;
        attempt += 1;
        // The local node can always take it back (it holds the admission permit); only an
        // unfit class stops it, and then the error says why.
        chosen = match place(&services, &meu, &nodes) {
            Ok(i) => i,
            Err(_) if nodes[0].fits => 0,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
    }
}
