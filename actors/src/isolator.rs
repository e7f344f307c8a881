//! Isolator: owns how tenants are separated on this node. Neither mode needs per-MEU work
//! from the actor — the RuntimePool asks the [`Sandbox`](tern_runtime::isolation::Sandbox)
//! directly on the hot path, and with `lci` the runtime's `CellRunner` (tern-isolator's
//! `Cells`) starts, feeds and replaces tenants' cells — so today the actor only announces the
//! mode in force when it starts, and takes no messages. Health checks and reaping idle cells
//! are to come here.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::Services;
use tern_runtime::isolation::IsolationMode;

/// No messages yet: in-process isolation has no per-MEU work for the actor (uninhabited, so
/// nothing can be sent that would go unanswered).
pub enum IsolatorMsg {}
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
        match mode {
            IsolationMode::InProcess => tracing::info!(
                "isolation: in-process (WebAssembly SFI, store limits, deadlines); \
                 no OS-level tenant isolation on this node"
            ),
            IsolationMode::Lci => tracing::info!(
                "isolation: lci (each tenant's guests in a cell of its own, besides \
                 WebAssembly SFI, store limits and deadlines)"
            ),
        }
        Ok(services)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        _services: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {}
    }
}
