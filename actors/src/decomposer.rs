//! Decomposer: turns a `map` invocation into minimum execution units, split by
//! [`crate::decompose`] and joined by a task of its own (never in the handler). A plain call
//! is one MEU (see `Pipeline`) and never comes here: the
//! Pipeline sends it to the SchedulerAgent itself.

use std::sync::Arc;

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::decompose::{MapPlan, join_map, plan_map};
use crate::delivery::send_until_answered;
use crate::scheduler::SchedulerMsg;
use crate::{ActorKind, Error, Invocation, Outcome, Reply, Services};
use tern_runtime::{Lease, Meu, Timings};

pub enum DecomposerMsg {
    /// A `map` invocation to split, run and join; each of its MEUs holds the lease.
    Map(Invocation, Lease, Reply),
}
impl ractor::Message for DecomposerMsg {}

pub struct Decomposer;

impl Actor for Decomposer {
    type Msg = DecomposerMsg;
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
        let DecomposerMsg::Map(inv, lease, reply) = msg;
        let cost = services.cost_of(inv.function.as_str());
        match plan_map(&inv.input, cost, services.config.map_parallelism) {
            Err(e) => {
                let _ = reply.send(Err(e));
            }
            Ok(plan) => {
                let services = services.clone();
                tokio::spawn(async move {
                    // A caller that goes away cancels the chunks not answered yet.
                    let join = run_map(services, inv, plan, lease);
                    crate::message::answer_unless_abandoned(reply, join).await;
                });
            }
        }
        Ok(())
    }
}

/// Runs the chunks of `plan` and joins their outputs. Dropped, it aborts the chunks still
/// running, and their MEUs are cancelled.
async fn run_map(
    services: Arc<Services>,
    inv: Invocation,
    plan: MapPlan,
    lease: Lease,
) -> Result<Outcome, Error> {
    let sizes: Vec<usize> = plan.chunks.iter().map(|c| c.items).collect();
    let handles: Vec<_> = plan
        .chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            let meu = Meu {
                lease: Some(lease.clone()),
                trace: inv.trace.clone(),
                ..Meu::new(
                    format!("{}.{i}", inv.request_id),
                    inv.function.clone(),
                    Bytes::from(chunk.input),
                    chunk.items,
                )
            };
            AbortOnDrop(tokio::spawn(dispatch_until_answered(services.clone(), meu)))
        })
        .collect();
    let mut outputs = Vec::with_capacity(handles.len());
    let mut cold_start = false;
    let mut timings = Timings::default();
    let mut node: Arc<str> = services.config.node_name.as_str().into();
    let mut first_error = None;
    for mut h in handles {
        match (&mut h.0).await {
            Ok(Ok(o)) => {
                cold_start |= o.cold_start;
                timings.load_us += o.timings.load_us;
                timings.reuse_us += o.timings.reuse_us;
                timings.inst_us += o.timings.inst_us;
                timings.exec_us += o.timings.exec_us;
                node = o.node;
                outputs.push(o.output);
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(Error::MapChunkFailed(e.to_string()));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => join_map(&sizes, &outputs).map(|joined| Outcome {
            output: Bytes::from(joined),
            cold_start,
            meus: sizes.len(),
            timings,
            node,
        }),
    }
}

/// A chunk's task, aborted if the map is dropped before it is joined.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Dispatches one MEU of a map, re-sending it if the scheduler or runtime pool dies holding it.
async fn dispatch_until_answered(services: Arc<Services>, meu: Meu) -> Result<Outcome, Error> {
    send_until_answered(&services, ActorKind::Scheduler, |reply| {
        SchedulerMsg::Dispatch(meu.clone(), reply)
    })
    .await
}
