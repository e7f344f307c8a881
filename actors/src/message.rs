//! What travels with an invocation between the actors: the invocation, its answer, and the
//! reply channel.

use std::sync::Arc;

use bytes::Bytes;
use std::time::Instant;

use tern_runtime::{AnswerStream, Lease, Meu, Timings};
use tern_wire::FunctionName;
use tokio::sync::oneshot;

use crate::Error;

/// One request to run a function, as the Ingress accepts it.
#[derive(Clone, Debug)]
pub struct Invocation {
    pub request_id: Arc<str>,
    pub function: FunctionName,
    pub input: Bytes,
    /// Split a JSON array input into MEUs and join the results (`?map=1`).
    pub map: bool,
    /// The invocation's root span when it is traced, else `Span::none()` (see [`Meu::trace`]).
    pub trace: tracing::Span,
    /// Where a component's answer goes as it is written ([`Meu::stream`]); empty for an
    /// answer wanted whole. Only a plain invocation's one MEU carries it.
    pub stream: AnswerStream,
}

/// The one MEU of a plain (not `map`) invocation accepted at `accepted_at`, holding `lease`.
pub(crate) fn single_meu(inv: Invocation, accepted_at: Instant, lease: Lease) -> Meu {
    Meu {
        request_id: inv.request_id,
        function: inv.function,
        input: inv.input,
        items: 1,
        accepted_at,
        lease: Some(lease),
        trace: inv.trace,
        stream: inv.stream,
    }
}

/// The answer to an invocation.
#[derive(Debug)]
pub struct Outcome {
    pub output: Bytes,
    /// Whether any MEU had to compile or load its module.
    pub cold_start: bool,
    pub meus: usize,
    /// Summed over MEUs.
    pub timings: Timings,
    /// Node that ran the (last) MEU.
    pub node: Arc<str>,
}

/// The reply channel that travels with an invocation through the actor chain. Whoever holds
/// it while work runs also watches it: once the caller has gone (`closed`), the work is
/// cancelled, guest included.
pub type Reply = oneshot::Sender<Result<Outcome, Error>>;

/// Runs `work` and sends its result on `reply`, unless the caller goes away first: then
/// `work` is dropped (a running guest is cancelled with it) and `false` is returned.
pub(crate) async fn answer_unless_abandoned<F>(mut reply: Reply, work: F) -> bool
where
    F: std::future::Future<Output = Result<Outcome, Error>>,
{
    let work = std::pin::pin!(work);
    let result = tokio::select! {
        biased;
        result = work => Some(result),
        () = reply.closed() => None,
    };
    match result {
        Some(result) => {
            let _ = reply.send(result);
            true
        }
        None => false,
    }
}
