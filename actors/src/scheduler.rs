//! SchedulerAgent: picks the node for each MEU through the [`Placement`] seam (single node for
//! now; the cluster and the learned PPO policy plug in behind the same trait).
//!
//! [`Placement`]: crate::placement::Placement

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::pipeline::forward;
use crate::placement::{MeuView, NodeView};
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
        let warm = services
            .runtime
            .get(&meu.function)
            .is_some_and(|d| services.runtime.is_loaded(&d.info.hash));
        let nodes = [NodeView {
            name: services.config.node_name.clone(),
            alive: true,
            queue_depth: services.metrics.in_flight.load(Relaxed).max(0) as usize,
            warm,
        }];
        let view = MeuView {
            function: meu.function.as_str(),
            items: meu.items,
        };
        match services.placement.place(&view, &nodes) {
            // Index 0 is this node; remote placement arrives with the cluster.
            Ok(_) => {
                forward(
                    services,
                    ActorKind::RuntimePool,
                    RuntimePoolMsg::Execute(meu, reply),
                );
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
        Ok(())
    }
}
