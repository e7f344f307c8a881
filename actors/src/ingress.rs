//! Ingress: the entry of the actor chain for invocations that need decomposing (`map`). The
//! HTTP server (node crate) authenticates and applies admission through [`crate::Pipeline`],
//! which submits a `map` here; the Ingress hands it to the Decomposer. A plain call skips the
//! Ingress and the Decomposer (they would only pass it on) and goes to the SchedulerAgent, so
//! tenant authentication and per-tenant admission (the paper's Eq. 6 weighted quotas) belong in the Pipeline, which
//! every invocation passes, not here.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::decomposer::DecomposerMsg;
use crate::delivery::forward;
use crate::{ActorKind, Invocation, Reply, Services};
use tern_runtime::Lease;

pub enum IngressMsg {
    /// A `map` invocation, admitted by the Pipeline, with the lease its MEUs hold.
    SubmitMap(Invocation, Lease, Reply),
}
impl ractor::Message for IngressMsg {}

pub struct Ingress;

impl Actor for Ingress {
    type Msg = IngressMsg;
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
        let IngressMsg::SubmitMap(inv, lease, reply) = msg;
        // If the Decomposer is down, the message (and its reply channel) is dropped here and
        // the Pipeline re-submits once it is back.
        forward(
            services,
            ActorKind::Decomposer,
            DecomposerMsg::Map(inv, lease, reply),
        );
        Ok(())
    }
}
