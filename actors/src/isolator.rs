//! Isolator: owns how tenants are separated on this node. No MEU passes through it — the
//! RuntimePool asks the [`Sandbox`](tern_runtime::isolation::Sandbox) directly on the hot
//! path, and with `lci` the runtime's `CellRunner` (tern-isolator's `Cells`) starts, feeds and
//! replaces tenants' cells — so the actor announces the mode in force when it starts and runs
//! the mode's periodic work ([`Upkeep`]): with cells, stopping idle ones, pinging the others
//! and replacing those that hang, and each interval's tenant quotas. Each chore schedules its
//! next run when it ends, so slow runs never pile up; a restarted Isolator schedules them
//! afresh.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::Services;
use tern_runtime::isolation::{Chore, IsolationMode, Upkeep};

pub enum IsolatorMsg {
    /// Time for a chore of the isolation mode's upkeep.
    Run(Chore),
}
impl ractor::Message for IsolatorMsg {}

/// The longest one run of a chore may take (health checks and quota decisions take
/// milliseconds; a chore stuck on a wedged cell must not stop the others).
const CHORE_LIMIT: Duration = Duration::from_secs(30);

pub struct Isolator;

pub struct IsolatorState {
    upkeep: Option<Arc<dyn Upkeep>>,
    chores: Vec<(Chore, Duration)>,
}

impl Actor for Isolator {
    type Msg = IsolatorMsg;
    type State = IsolatorState;
    type Arguments = Arc<Services>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
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
        let upkeep = services.sandbox.upkeep();
        let chores = upkeep.as_ref().map(|u| u.chores()).unwrap_or_default();
        for &(chore, every) in &chores {
            myself.send_after(every, move || IsolatorMsg::Run(chore));
        }
        Ok(IsolatorState { upkeep, chores })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            IsolatorMsg::Run(chore) => {
                if let Some(upkeep) = &state.upkeep
                    && tokio::time::timeout(CHORE_LIMIT, upkeep.run(chore))
                        .await
                        .is_err()
                {
                    // Its next run starts afresh; the other chores are not held up for good.
                    tracing::warn!(
                        ?chore,
                        "an isolation chore ran past its time limit and was stopped"
                    );
                }
                if let Some(&(_, every)) = state.chores.iter().find(|(c, _)| *c == chore) {
                    myself.send_after(every, move || IsolatorMsg::Run(chore));
                }
            }
        }
        Ok(())
    }
}
