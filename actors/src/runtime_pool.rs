//! RuntimePool: runs MEUs on this node. The handler only spawns a task per MEU — the guest runs
//! there (see [`tern_runtime`]) and the task answers the reply channel — so the mailbox
//! never waits on WebAssembly.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::{Outcome, Reply, Services};
use tern_runtime::Meu;

pub enum RuntimePoolMsg {
    Execute(Meu, Reply),
}
impl ractor::Message for RuntimePoolMsg {}

pub struct RuntimePool;

impl Actor for RuntimePool {
    type Msg = RuntimePoolMsg;
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
        let RuntimePoolMsg::Execute(meu, reply) = msg;
        let services = services.clone();
        let span = meu_span(&meu);
        // The caller going away cancels the MEU, waiting or running.
        let task = async move {
            if !crate::message::answer_unless_abandoned(reply, run_meu(&services, meu)).await {
                services.metrics.abandoned_meus.fetch_add(1, Relaxed);
            }
        };
        tokio::spawn(tracing::Instrument::instrument(task, span));
        Ok(())
    }
}

fn meu_span(meu: &Meu) -> tracing::Span {
    tracing::debug_span!(
        "meu",
        function = %meu.function,
        request_id = %meu.request_id,
        items = meu.items
    )
}

/// Runs `meu` in the calling task, a plain call's own, and answers `reply`: what the
/// RuntimePool's per-MEU task does, without the mailbox hop and the task hand-off. Dropped
/// before it answers (the caller went away), the MEU goes with it, waiting or running, and is
/// counted as abandoned. A panic here would end the caller's connection rather than a task of
/// its own (whose dropped reply made the caller send again): nothing on this path unwraps
/// input.
pub(crate) async fn run_in_caller(services: &Services, meu: Meu, reply: Reply) {
    let span = meu_span(&meu);
    let unanswered = AbandonedIfDropped(Some(&services.metrics.abandoned_meus));
    let result = tracing::Instrument::instrument(run_meu(services, meu), span).await;
    unanswered.answered();
    let _ = reply.send(result);
}

/// Counts an MEU as abandoned if dropped before [`AbandonedIfDropped::answered`].
struct AbandonedIfDropped<'a>(Option<&'a AtomicU64>);

impl AbandonedIfDropped<'_> {
    fn answered(mut self) {
        self.0 = None;
    }
}

impl Drop for AbandonedIfDropped<'_> {
    fn drop(&mut self) {
        if let Some(counter) = self.0 {
            counter.fetch_add(1, Relaxed);
        }
    }
}

/// Runs one MEU on this node and records its cost: the body of the RuntimePool's per-MEU task,
/// also called directly by the cluster link for MEUs another node placed here (that request
/// already has its own task, so a mailbox hop would only add latency).
pub async fn run_meu(services: &Services, meu: Meu) -> Result<Outcome, crate::Error> {
    let function = meu.function.clone();
    let items = meu.items;
    let result = services.runtime.execute(meu, &*services.sandbox).await;
    let result = result.map(|o| {
        services.observe_cost(
            function.as_str(),
            items,
            o.timings.inst_us,
            o.timings.exec_us,
        );
        Outcome {
            output: o.output,
            cold_start: o.cold_start,
            meus: 1,
            timings: o.timings,
            node: services.config.node_name.as_str().into(),
        }
    });
    if let Err(e) = &result {
        tracing::debug!(error = %e, "meu failed");
    }
    Ok(result?)
}
