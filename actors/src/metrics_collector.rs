//! MetricsCollector: renders the node's metrics as Prometheus text. Recording happens lock-free
//! wherever the work is done ([`tern_metrics`]); this actor only reads.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;

use crate::Services;

pub enum MetricsMsg {
    Render(oneshot::Sender<String>),
}
impl ractor::Message for MetricsMsg {}

pub struct MetricsCollector;

/// Renders `services`' metrics (also used directly when the actor is restarting).
pub fn render(services: &Services) -> String {
    let mut text = services.metrics.render(
        &services.config.node_name,
        services.runtime.config().max_instances,
    );
    text.push_str("# HELP tern_isolation_mode Isolation mode in force (label), always 1.\n");
    text.push_str("# TYPE tern_isolation_mode gauge\n");
    text.push_str(&format!(
        "tern_isolation_mode{{mode=\"{}\"}} 1\n",
        services.sandbox.mode().as_str()
    ));
    text.push_str(
        "# HELP tern_memory_profile How guests' memories are bounds-checked and recycled (label), always 1.\n\
         # TYPE tern_memory_profile gauge\n",
    );
    text.push_str(&format!(
        "tern_memory_profile{{profile=\"{}\"}} 1\n",
        services.runtime.config().memory_profile.as_str()
    ));
    text.push_str(
        "# HELP tern_runtime_profile How functions get from a deploy to an instance: optimised or baseline (label), always 1.\n\
         # TYPE tern_runtime_profile gauge\n",
    );
    text.push_str(&format!(
        "tern_runtime_profile{{profile=\"{}\"}} 1\n",
        services.runtime.config().runtime_profile.as_str()
    ));
    let joules = services.energy.joules();
    let source = services.energy.source().as_str();
    let finished = services.metrics.finished_invocations();
    text.push_str(&format!(
        "# HELP tern_energy_joules_total Energy used since start (RAPL, or a CPU-time model: {} W per busy core).\n\
         # TYPE tern_energy_joules_total counter\n\
         tern_energy_joules_total{{source=\"{source}\"}} {joules}\n\
         # HELP tern_requests_per_joule Eq. 8: finished invocations per joule since start.\n\
         # TYPE tern_requests_per_joule gauge\n\
         tern_requests_per_joule{{source=\"{source}\"}} {}\n",
        crate::energy::MODEL_WATTS_PER_CORE,
        crate::energy::requests_per_joule(finished, joules).unwrap_or(0.0)
    ));
    text
}

impl Actor for MetricsCollector {
    type Msg = MetricsMsg;
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
        let MetricsMsg::Render(reply) = msg;
        let _ = reply.send(render(services));
        Ok(())
    }
}
