//! Delivering messages to the node's actors by name, and re-sending when an actor of the chain
//! dies holding one: an accepted invocation is answered, never silently dropped.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use ractor::{ActorRef, Message};
use tokio::sync::oneshot;

use crate::message::{Outcome, Reply};
use crate::{ActorKind, Error, Services};
use tern_runtime::Meu;

/// How long an invocation is re-submitted while pipeline actors are being restarted.
const RESUBMIT_WINDOW: Duration = Duration::from_secs(10);

/// Sends a message to the actor of `kind`. If it is not running, the message is dropped, and
/// with it the reply channel it carries: the waiting side sees the channel close and submits
/// again, so a drop here never loses an accepted invocation.
pub(crate) fn forward<M: Message>(services: &Services, kind: ActorKind, msg: M) -> bool {
    match ActorRef::<M>::where_is(services.name(kind)) {
        Some(actor) => actor.cast(msg).is_ok(),
        None => false,
    }
}

/// Sends the message built by `make` to the actor of `kind` and waits for the answer. If the
/// reply channel closes unanswered (an actor of the chain died holding the message, or was
/// being restarted), the message is sent again, for up to [`RESUBMIT_WINDOW`].
///
/// Sending again is safe: work reaches a guest only after the RuntimePool has handed it to
/// its own task, and that task holds the reply channel until it answers.
pub(crate) async fn send_until_answered<M: Message>(
    services: &Services,
    kind: ActorKind,
    mut make: impl FnMut(Reply) -> M,
) -> Result<Outcome, Error> {
    until_answered(services, kind, |reply| {
        std::future::ready(forward(services, kind, make(reply)))
    })
    .await
}

/// Places one MEU and, when it stays on this node, runs it, all in the calling task: what
/// the SchedulerAgent and the RuntimePool would do for it, without their two mailbox hops
/// and the hand-off to a task of its own (each a task wake, often of the other worker
/// thread). Sent to a peer, a task waits for it as the SchedulerAgent's would. If failover
/// brings it back while the RuntimePool is restarting, the reply closes unanswered and the
/// MEU is placed again, as [`send_until_answered`] does.
pub(crate) async fn place_until_answered(
    services: &Arc<Services>,
    meu: Meu,
) -> Result<Outcome, Error> {
    let meu = &meu;
    until_answered(services, ActorKind::Scheduler, |reply| async move {
        if let Some((meu, reply)) = crate::scheduler::place(services, meu.clone(), reply) {
            crate::runtime_pool::run_in_caller(services, meu, reply).await;
        }
        true
    })
    .await
}

/// Submits through `submit` (false: it could not be handed over) until the reply carries an
/// answer, for up to [`RESUBMIT_WINDOW`]; `kind` is the actor named if it never does.
async fn until_answered<F: Future<Output = bool>>(
    services: &Services,
    kind: ActorKind,
    mut submit: impl FnMut(Reply) -> F,
) -> Result<Outcome, Error> {
    let give_up = Instant::now() + RESUBMIT_WINDOW;
    let mut backoff = Duration::from_millis(1);
    loop {
        let (tx, rx) = oneshot::channel();
        if submit(tx).await
            && let Ok(result) = rx.await
        {
            return result;
        }
        services.metrics.resubmissions.fetch_add(1, Relaxed);
        if Instant::now() >= give_up {
            return Err(Error::ActorDown {
                actor: kind.label(),
                window: RESUBMIT_WINDOW,
            });
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(50));
    }
}
