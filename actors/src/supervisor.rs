//! The node supervisor: starts the six actors linked to itself and restarts any that fails or
//! is killed, under the same registered name, with the same shared [`Services`] (so a
//! restarted RuntimePool keeps every preheated module).
//!
//! Restarts are bounded: more than [`MAX_RESTARTS`] within [`RESTART_WINDOW`] means something
//! is structurally wrong, and the supervisor stops (the node reports `unavailable`) rather
//! than spin.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SpawnErr, SupervisionEvent};
use tokio::sync::oneshot;

use crate::decomposer::Decomposer;
use crate::ingress::Ingress;
use crate::isolator::Isolator;
use crate::metrics_collector::MetricsCollector;
use crate::runtime_pool::RuntimePool;
use crate::scheduler::SchedulerAgent;
use crate::{ActorKind, Services};

pub const MAX_RESTARTS: usize = 50;
pub const RESTART_WINDOW: Duration = Duration::from_secs(10);

pub enum SupervisorMsg {
    /// Stops the children, then the supervisor; answers when the children have stopped.
    Shutdown(oneshot::Sender<()>),
}
impl ractor::Message for SupervisorMsg {}

pub struct NodeSupervisor;

pub struct SupervisorState {
    services: Arc<Services>,
    children: HashMap<ActorId, (ActorKind, ActorCell)>,
    recent_restarts: VecDeque<Instant>,
    shutting_down: bool,
}

async fn spawn_child(
    kind: ActorKind,
    services: &Arc<Services>,
    supervisor: ActorCell,
) -> Result<ActorCell, SpawnErr> {
    let name = Some(services.name(kind).to_owned());
    let args = services.clone();
    Ok(match kind {
        ActorKind::Ingress => Actor::spawn_linked(name, Ingress, args, supervisor)
            .await?
            .0
            .get_cell(),
        ActorKind::Decomposer => Actor::spawn_linked(name, Decomposer, args, supervisor)
            .await?
            .0
            .get_cell(),
        ActorKind::Scheduler => Actor::spawn_linked(name, SchedulerAgent, args, supervisor)
            .await?
            .0
            .get_cell(),
        ActorKind::RuntimePool => Actor::spawn_linked(name, RuntimePool, args, supervisor)
            .await?
            .0
            .get_cell(),
        ActorKind::Isolator => Actor::spawn_linked(name, Isolator, args, supervisor)
            .await?
            .0
            .get_cell(),
        ActorKind::MetricsCollector => {
            Actor::spawn_linked(name, MetricsCollector, args, supervisor)
                .await?
                .0
                .get_cell()
        }
    })
}

/// Spawns `kind`, retrying briefly while the dead actor's name is still being unregistered.
async fn respawn(
    kind: ActorKind,
    services: &Arc<Services>,
    supervisor: ActorCell,
) -> Result<ActorCell, SpawnErr> {
    let mut last = None;
    for _ in 0..200 {
        match spawn_child(kind, services, supervisor.clone()).await {
            Ok(cell) => return Ok(cell),
            Err(SpawnErr::ActorAlreadyRegistered(name)) => {
                last = Some(SpawnErr::ActorAlreadyRegistered(name));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or(SpawnErr::ActorAlreadyStarted))
}

impl Actor for NodeSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = Arc<Services>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        services: Arc<Services>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut children = HashMap::new();
        for kind in ActorKind::ALL {
            let cell = spawn_child(kind, &services, myself.get_cell()).await?;
            children.insert(cell.get_id(), (kind, cell));
        }
        Ok(SupervisorState {
            services,
            children,
            recent_restarts: VecDeque::new(),
            shutting_down: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let SupervisorMsg::Shutdown(done) = msg;
        state.shutting_down = true;
        // Stop the entry first so that nothing new flows into actors that are going away.
        for kind in ActorKind::ALL.iter().rev() {
            if let Some((_, cell)) = state.children.values().find(|(k, _)| k == kind) {
                let _ = cell.stop_and_wait(None, Some(Duration::from_secs(5))).await;
            }
        }
        state.children.clear();
        let _ = done.send(());
        myself.stop(None);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            SupervisionEvent::ActorFailed(cell, err) => (cell, format!("failed: {err}")),
            _ => return Ok(()),
        };
        let Some((kind, _)) = state.children.remove(&cell.get_id()) else {
            return Ok(());
        };
        if state.shutting_down {
            return Ok(());
        }
        let now = Instant::now();
        state.recent_restarts.push_back(now);
        while state
            .recent_restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > RESTART_WINDOW)
        {
            state.recent_restarts.pop_front();
        }
        if state.recent_restarts.len() > MAX_RESTARTS {
            tracing::error!(
                actor = kind.label(),
                "restart limit reached; supervisor stops"
            );
            return Err(format!("more than {MAX_RESTARTS} restarts in {RESTART_WINDOW:?}").into());
        }
        tracing::warn!(actor = kind.label(), reason = %why, "actor stopped; restarting");
        let cell = respawn(kind, &state.services, myself.get_cell()).await?;
        state.services.metrics.record_restart(kind.label());
        state.children.insert(cell.get_id(), (kind, cell));
        Ok(())
    }
}
