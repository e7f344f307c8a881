//! Isolator: owns how tenants are separated on this node. In-process mode (wasm SFI, store
//! limits, deadlines) needs no per-MEU work from the actor — the RuntimePool asks the
//! [`Sandbox`](crate::isolation::Sandbox) directly on the hot path. The actor is the home of
//! the worker-process mode to come (pre-forked sandboxes to manage and replace), and answers
//! which mode is in force.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;

use crate::Services;
use crate::isolation::IsolationMode;

pub enum IsolatorMsg {
    Mode(oneshot::Sender<IsolationMode>),
}
impl ractor::Message for IsolatorMsg {}

pub struct Isolator;

impl Actor for Isolator {
    type Msg = IsolatorMsg;
    type State = Arc<Services>;
    type Arguments = Arc<Services>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        services: Arc<Services>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mode = services.sandbox.mode();
        if mode == IsolationMode::InProcess {
            tracing::info!(
                "isolation: in-process (WebAssembly SFI, store limits, deadlines); \
                 no OS-level tenant isolation on this node"
            );
        }
        Ok(services)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        services: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let IsolatorMsg::Mode(reply) = msg;
        let _ = reply.send(services.sandbox.mode());
        Ok(())
    }
}
