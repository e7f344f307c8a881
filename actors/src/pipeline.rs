//! The front door of the actors: admission, then the chain, with re-submission if an actor
//! dies holding the invocation.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use tern_runtime::isolation::IsolationMode;
use tern_runtime::{Lease, Meu};
use tern_wire::FunctionName;

use crate::admission::{Admission, Permit};
use crate::delivery::{place_until_answered, send_until_answered};
use crate::ingress::IngressMsg;
use crate::message::{Invocation, Outcome, single_meu};
use crate::scheduler::SchedulerMsg;
use crate::{ActorKind, Error, Services};

/// The front door used by the HTTP server: admission, then the actors, with re-submission
/// if an actor dies while holding the invocation.
#[derive(Clone)]
pub struct Pipeline {
    services: Arc<Services>,
    admission: Arc<Admission>,
}

impl Pipeline {
    pub fn new(services: Arc<Services>) -> Self {
        let admission = Admission::new(services.config.queue_cap, services.metrics.clone());
        Self {
            services,
            admission,
        }
    }

    pub fn services(&self) -> &Arc<Services> {
        &self.services
    }

    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    /// Reserves a place in the admission queue; hold it for as long as the work is accepted
    /// but unanswered (async invocations hold it across their journaled lifetime).
    pub fn admit(&self) -> Result<Permit, Error> {
        self.admission.try_admit().inspect_err(|e| {
            self.services.metrics.request_errors[e.code().index()].fetch_add(1, Relaxed);
        })
    }

    /// Whether this node knows the cluster's registry (always, outside a cluster; see
    /// [`crate::remote::Remote::registry_synced`]). Read it *before* looking a function up,
    /// so a sync that installs the function in between cannot turn "retry" into "not found".
    pub fn registry_synced(&self) -> bool {
        self.services
            .remote
            .get()
            .is_none_or(|r| r.registry_synced())
    }

    /// The error for a function this node does not have: `FunctionNotFound`, unless the
    /// node had not synced the cluster registry (`synced`, read before the lookup) when the
    /// function may exist elsewhere and the answer is a retryable `Unavailable`.
    pub fn missing_function(function: FunctionName, synced: bool) -> Error {
        if synced {
            Error::Runtime(tern_runtime::Error::FunctionNotFound(function))
        } else {
            Error::RegistryNotSynced(function)
        }
    }

    /// [`Pipeline::missing_function`] for an invocation, counted as a request error.
    pub fn unknown_function(&self, function: FunctionName, synced: bool) -> Error {
        let err = Self::missing_function(function, synced);
        self.services.metrics.request_errors[err.code().index()].fetch_add(1, Relaxed);
        err
    }

    /// Admits and runs one invocation.
    pub async fn invoke(&self, inv: Invocation) -> Result<Outcome, Error> {
        let permit = self.admit()?;
        self.invoke_admitted(inv, permit).await
    }

    /// Runs an invocation that already holds an admission permit. The permit is released
    /// when the invocation is answered and its last guest has ended, whichever is later; if
    /// the caller drops this future, its MEUs are cancelled (guests included) and the permit
    /// goes with the last of them.
    pub async fn invoke_admitted(&self, inv: Invocation, permit: Permit) -> Result<Outcome, Error> {
        let accepted_at = tokio::time::Instant::now().into_std();
        let lease: Lease = Arc::new(permit);
        let synced = self.registry_synced();
        let Some(deployed) = self.services.runtime.get(&inv.function) else {
            return Err(self.unknown_function(inv.function, synced));
        };
        let started = Instant::now();
        let span = tracing::debug_span!(
            "invocation",
            function = %inv.function,
            request_id = %inv.request_id,
            map = inv.map
        );
        let result = tracing::Instrument::instrument(
            self.submit_until_answered(inv, accepted_at, lease),
            span,
        )
        .await;
        let m = &deployed.metrics;
        m.latency.observe_us(started.elapsed().as_micros() as u64);
        match &result {
            Ok(_) => m.record_ok(),
            Err(e) => m.record_error(e.code()),
        }
        result
    }

    /// Runs one MEU that another node placed here, on this node (the sender already
    /// decomposed and placed it; placing it again could bounce it between nodes). It runs in
    /// the caller's task: the peer request already has one, so no actor hop is needed.
    /// The permit is the MEU's lease, held until its guest ends; dropping the future (the
    /// peer gave up on it) cancels the guest.
    pub async fn execute_for_peer(&self, mut meu: Meu, permit: Permit) -> Result<Outcome, Error> {
        self.services.metrics.served_for_peers.fetch_add(1, Relaxed);
        meu.lease = Some(Arc::new(permit));
        crate::runtime_pool::run_meu(&self.services, meu).await
    }

    /// A plain call is one MEU: admission has run above, and decomposing a plain call is the
    /// identity, so the Ingress actor and the Decomposer would only pass it on. Each mailbox
    /// hop is a task wake, and tokio runs at most three woken tasks in a row on one worker
    /// before it queues the next and wakes another worker thread; through all four actors,
    /// every forwarded request paid such a wake (about one futex wake and two context
    /// switches, `bench/reports/cluster`). A `map` goes through the Ingress and the
    /// Decomposer, which splits it.
    ///
    /// With cells, a plain call is also placed and run in the caller's task
    /// ([`place_until_answered`]): its guest runs in the cell, so the node's part is to wait,
    /// and the SchedulerAgent's and the RuntimePool's hand-offs only cost wakes (measured:
    /// 1.15–1.26x echo's throughput at 64 connections, 0.82–0.90x the CPU per request).
    /// Guests in the node's process keep them: on the caller's task they measured 0.85–0.89x
    /// the throughput at 64 connections (more context switches per request; why is not known).
    async fn submit_until_answered(
        &self,
        inv: Invocation,
        accepted_at: Instant,
        lease: Lease,
    ) -> Result<Outcome, Error> {
        if !inv.map {
            let meu = single_meu(inv, accepted_at, lease);
            if self.services.sandbox.mode() == IsolationMode::Lci {
                return place_until_answered(&self.services, meu).await;
            }
            return send_until_answered(&self.services, ActorKind::Scheduler, |reply| {
                SchedulerMsg::Dispatch(meu.clone(), reply)
            })
            .await;
        }
        send_until_answered(&self.services, ActorKind::Ingress, |reply| {
            IngressMsg::SubmitMap(inv.clone(), lease.clone(), reply)
        })
        .await
    }
}
