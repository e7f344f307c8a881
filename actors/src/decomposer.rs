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
use tern_runtime::{Meu, Timings};

pub enum DecomposerMsg {
    /// A `map` invocation to split, run and join.
    Map(Invocation, Reply),
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
        let DecomposerMsg::Map(inv, reply) = msg;
        let cost = services.cost_of(inv.function.as_str());
        match plan_map(&inv.input, cost, services.config.map_parallelism) {
            Err(e) => {
                let _ = reply.send(Err(e));
            }
            Ok(plan) => {
                tokio::spawn(run_map(services.clone(), inv, plan, reply));
            }
        }
        Ok(())
    }
}

async fn run_map(services: Arc<Services>, inv: Invocation, plan: MapPlan, reply: Reply) {
    let sizes: Vec<usize> = plan.chunks.iter().map(|c| c.items).collect();
    let handles: Vec<_> = plan
        .chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            let meu = Meu {
                request_id: format!("{}.{i}", inv.request_id).into(),
                function: inv.function.clone(),
                input: Bytes::from(chunk.input),
                items: chunk.items,
            };
            tokio::spawn(dispatch_until_answered(services.clone(), meu))
        })
        .collect();
    let mut outputs = Vec::with_capacity(handles.len());
    let mut cold_start = false;
    let mut timings = Timings::default();
    let mut node: Arc<str> = services.config.node_name.as_str().into();
    let mut first_error = None;
    for h in handles {
        match h.await {
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
    let result = match first_error {
        Some(e) => Err(e),
        None => join_map(&sizes, &outputs).map(|joined| Outcome {
            output: Bytes::from(joined),
            cold_start,
            meus: sizes.len(),
            timings,
            node,
        }),
    };
    let _ = reply.send(result);
}

/// Dispatches one MEU of a map, re-sending it if the scheduler or runtime pool dies holding it.
async fn dispatch_until_answered(services: Arc<Services>, meu: Meu) -> Result<Outcome, Error> {
    send_until_answered(&services, ActorKind::Scheduler, |reply| {
        SchedulerMsg::Dispatch(meu.clone(), reply)
    })
    .await
}
