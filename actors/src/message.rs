//! What travels with an invocation between the actors: the invocation, its answer, and the
//! reply channel.

use std::sync::Arc;

use bytes::Bytes;
use tern_runtime::{Meu, Timings};
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
}

/// The one MEU of a plain (not `map`) invocation.
pub(crate) fn single_meu(inv: Invocation) -> Meu {
    Meu {
        request_id: inv.request_id,
        function: inv.function,
        input: inv.input,
        items: 1,
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

/// The reply channel that travels with an invocation through the actor chain.
pub type Reply = oneshot::Sender<Result<Outcome, Error>>;
